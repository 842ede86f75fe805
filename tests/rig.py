"""The cluster test rig, real parts at small scale: a local S3 server (moto) and a 3-node local Ray cluster.

Both listen on 127.0.0.1 / this machine only. The S3 variables are set before the cluster starts, so every node
(and every worker it forks) reads the same endpoint and credentials, as nodes of a real cluster would from their
environment. Each node has its own scratch folder (`SYNTHRAY_SCRATCH`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BUCKET = "synthray-test"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          # Never ask the cloud metadata address for credentials: nothing outside this machine is a target.
          "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                        region_name="us-east-1")


def bucket_keys(endpoint: str, bucket: str = BUCKET, prefix: str = "") -> list[str]:
    """The key of every object under `prefix` in the bucket."""
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def bucket_objects(endpoint: str, bucket: str = BUCKET, prefix: str = "") -> dict[str, bytes]:
    """Every object under `prefix` in the bucket: key -> bytes."""
    client = s3_client(endpoint)
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in bucket_keys(endpoint, bucket, prefix)}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port, with bucket `synthray-test`; the S3 variables point at it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    from synthray.core.storage import _cached_filesystem

    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    _cached_filesystem.cache_clear()  # filesystems read the endpoint when made
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _cached_filesystem.cache_clear()


@pytest.fixture(scope="module")  # torn down after its module: idle nodes would slow every later test
def three_nodes(s3_server, tmp_path_factory) -> Iterator[dict]:
    """A head and two worker nodes (`ray.cluster_utils.Cluster`), each with its own scratch folder. The workers
    report one fake GPU each, so the cluster has GPUs that no stage of a cpu-configured sweep may use."""
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("nodes")
    storage_module_cache_clear()
    scratch = {name: root / f"scratch-{name}" for name in ("head", "worker1", "worker2")}
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 4, "env_vars": dict(env, SYNTHRAY_SCRATCH=str(scratch["head"]))})
    for name in ("worker1", "worker2"):
        cluster.add_node(num_cpus=3, num_gpus=1, env_vars=dict(env, SYNTHRAY_SCRATCH=str(scratch[name])))
    cluster.wait_for_nodes()
    try:
        yield {"address": cluster.address, "scratch": scratch}
    finally:
        cluster.shutdown()


def storage_module_cache_clear() -> None:
    from synthray.core.storage import _cached_filesystem

    _cached_filesystem.cache_clear()


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`synthray <args>` in a fresh process (as a user would), from `cwd`, capturing its output."""
    full = dict(os.environ, **(env or {}))
    full.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run([sys.executable, "-m", "synthray", *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def token_head(tmp_path_factory) -> Iterator[dict]:
    """A `ray start --head` with token auth (RAY_AUTH_MODE=token) and its dashboard/job API on 127.0.0.1 only."""
    with start_token_head(tmp_path_factory.mktemp("token-head")) as head:
        yield head


@contextlib.contextmanager
def start_token_head(folder: Path, node_env: dict | None = None) -> Iterator[dict]:
    """`token_head`'s head, its logs and session under `folder` (`temp_dir` in the answer); `node_env`: variables
    the head's Ray processes get from the node, as a cluster file's `ray start` gives them."""
    import secrets
    import signal
    import urllib.request

    token = secrets.token_hex(32)
    port, dashboard = free_port(), free_port()
    # Every port of its own: the defaults (e.g. the dashboard agent's 52365) are taken by pytest's shared Ray, and a
    # head whose agent cannot bind answers every job submission with "No available agent".
    ports = [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port")]
    log = folder / "head.log"
    # Ray's own folder: short, since its unix sockets live there and a socket path is limited to 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
               PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **(node_env or {}))  # jobs run `python` from this venv
    with open(log, "w") as out:
        proc = subprocess.Popen([os.path.join(bin_dir, "ray"), "start", "--head", f"--port={port}", "--num-cpus=8",
                                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", *ports,
                                 f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # 401: up, and asking for the token
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError(f"token-auth head did not start: {log.read_text()[-2000:]}") from None
            time.sleep(1)
    try:
        yield {"url": url, "token": token, "temp_dir": temp_dir}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
        shutil.rmtree(temp_dir, ignore_errors=True)


class LocalAutoscalingCluster:
    """Ray's fake multi-node autoscaler (`ray.cluster_utils.AutoscalingCluster`'s mechanism) with a config of our own:
    the pip wheel lacks the base config it reads, and its start/shutdown run `ray stop --force`, which would kill
    every other Ray on this machine. This one starts the head as its own process group and stops only that."""

    def __init__(self, head_cpus: int, worker_types: dict, idle_timeout_minutes: float, env: dict):
        self.port, self.dashboard = free_port(), free_port()
        import ray._private.services

        self.address = f"{ray._private.services.get_node_ip_address()}:{self.port}"
        self.config = {
            "cluster_name": "synthray-fake", "max_workers": sum(t["max_workers"] for t in worker_types.values()),
            "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": self.address},
            "auth": {}, "head_node_type": "ray.head.default",
            "available_node_types": {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
                                     **worker_types},
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": [],
        }
        import secrets

        # Token auth, as on a real cluster: clients (the CLI, `nodes`) get the token through `client_env`.
        self.client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env, self.head_cpus, self.proc = dict(env, **self.client_env), head_cpus, None

    def start(self, workdir: Path) -> None:
        import json

        config = workdir / "autoscaler.json"
        config.write_text(json.dumps(self.config))
        bin_dir = os.path.dirname(sys.executable)
        env = dict(os.environ, AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1", **self.env,
                   PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        with open(workdir / "head.log", "w") as out:
            self.proc = subprocess.Popen(
                [os.path.join(bin_dir, "ray"), "start", "--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
                 "--num-gpus=0", f"--autoscaling-config={config}", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={self.dashboard}", f"--dashboard-agent-listen-port={free_port()}",
                 f"--metrics-export-port={free_port()}", "--disable-usage-stats", "--block"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while not nodes(self.address, self.client_env):
            if time.time() > deadline or self.proc.poll() is not None:
                self.shutdown()
                raise RuntimeError(f"autoscaling head did not start: {(workdir / 'head.log').read_text()[-2000:]}")
            time.sleep(2)

    def shutdown(self) -> None:
        import signal

        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)


def nodes(address: str, env: dict | None = None) -> list[dict]:
    """`ray.nodes()` of the cluster at `address`, dead ones included, from a fresh process ([] if unreachable)."""
    import json

    code = ("import json, ray\n"
            f"ray.init(address='{address}', log_to_driver=False)\n"
            "print('NODES' + json.dumps([{'alive': n['Alive'], 'resources': n['Resources']} for n in ray.nodes()]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))
    for line in done.stdout.splitlines():
        if line.startswith("NODES"):
            return json.loads(line[5:])
    return []
