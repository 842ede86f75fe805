"""The dress rehearsal's simulated mixed cluster, on this machine: a moto S3 server and `ray start` nodes.

- a head with no GPUs, token auth (RAY_AUTH_MODE=token), its job API on 127.0.0.1 only;
- worker nodes with fake GPUs (Ray counts them; SYNTHRAY_FAKE_GPUS=1 makes device=gpu stages compute on CPU), each
  labelled `synthray.io/gpu-memory-gb: <tier>` as cluster.yaml's GPU node types are.

Every node is a `ray start --block` in its own process group, so one can be killed (SIGKILL: a lost spot node) without
touching any other Ray on this machine. `ray start` rather than `ray.cluster_utils.Cluster`: the job API with token
auth is what `synthray submit` talks to, and that is a `ray start` head's.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = os.path.dirname(sys.executable)
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a cloud metadata address for credentials


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ok, what: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ok():
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)


class S3Server:
    """moto's S3 server on a free 127.0.0.1 port, with one bucket."""

    def __init__(self, workdir: Path, bucket: str):
        self.port, self.bucket = free_port(), bucket
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "moto.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        _wait(up, "moto S3 server", self.proc, self.log, 30)
        self.client().create_bucket(Bucket=bucket)

    @property
    def env(self) -> dict[str, str]:
        return dict(S3_ENV, AWS_ENDPOINT_URL=self.endpoint)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def objects(self, prefix: str = "") -> list[dict]:
        """Every object under `prefix`: dicts with Key, LastModified, Size, ETag."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def stop(self) -> None:
        _killpg(self.proc)


def _killpg(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(15)


class LabelledCluster:
    """A CPU-only token-auth head and labelled fake-GPU workers, each `ray start --block` in its own process group."""

    LABEL = "synthray.io/gpu-memory-gb"
    NAME = "rehearsal/node"  # which of our processes a Ray node is, so a check can pick the node to kill

    def __init__(self, workdir: Path, env: dict[str, str], head_cpus: int = 4):
        import ray._private.services

        self.workdir, self.nodes = workdir, {}
        self.token = secrets.token_hex(32)
        self.port, self.dashboard = free_port(), free_port()
        self.gcs = f"{ray._private.services.get_node_ip_address()}:{self.port}"
        self.url = f"http://127.0.0.1:{self.dashboard}"
        # Every process of the cluster (and every job's driver on the head) reads storage's endpoint from here, as
        # nodes of a real cluster read it from their environment; the fast Train poll keeps short epochs short.
        self.env = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
                        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # jobs run `python` from this venv
        self._start("head", ["--head", f"--port={self.port}", f"--num-cpus={head_cpus}", "--num-gpus=0",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}"], {})

        def answers() -> bool:
            try:
                urllib.request.urlopen(f"{self.url}/api/version", timeout=2)
            except urllib.error.HTTPError:  # 401: up, and asking for the token
                return True
            except OSError:
                return False
            return True

        _wait(answers, "token-auth head", self.nodes["head"], workdir / "head.log")

    def _start(self, name: str, args: list[str], extra_env: dict[str, str]) -> None:
        # Each node its own ports: two nodes on one machine would otherwise fight over the defaults (52365, ...).
        ports = [f"--{p}={free_port()}" for p in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                   "metrics-export-port", "runtime-env-agent-port", "node-manager-port",
                                                   "object-manager-port")]
        if name == "head":
            ports.append(f"--ray-client-server-port={free_port()}")
        env = dict(os.environ, **self.env, **extra_env, SYNTHRAY_SCRATCH=str(self.workdir / f"scratch-{name}"))
        with open(self.workdir / f"{name}.log", "w") as out:
            self.nodes[name] = subprocess.Popen(
                [os.path.join(BIN, "ray"), "start", *args, *ports, "--object-store-memory=400000000",
                 "--disable-usage-stats", "--block"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def add_worker(self, name: str, tier_gb: int, gpus: int = 1, cpus: int = 3) -> None:
        """A worker node with `gpus` fake GPUs, labelled as a `tier_gb` GB GPU node."""
        before = len(self.alive())
        # Each node its own temp dir, as each machine of a cluster has its own disk. Nodes that share one also share
        # runtime_resources/: when a job starts, every node's agent unpacks the job's working_dir into the same
        # folder at once, and one replaces the folder the driver runs in, so the driver's cwd is gone (Tune then fails
        # in os.getcwd() at the end of the sweep). A short path: Ray's socket paths must stay under 107 characters.
        temp = tempfile.mkdtemp(prefix=f"ray-{name}-", dir="/tmp")
        self._start(name, [f"--address={self.gcs}", f"--temp-dir={temp}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                           f"--labels={self.LABEL}={tier_gb},{self.NAME}={name}"], {"SYNTHRAY_FAKE_GPUS": "1"})
        _wait(lambda: len(self.alive()) > before, f"worker {name}", self.nodes[name], self.workdir / f"{name}.log")

    def busiest(self, names: list[str]) -> str:
        """Of the nodes `names`, the one running the most live actors now (generation, training, Tune's trials):
        killing it interrupts work in flight, so the resume has an errored trial to finish."""
        counts = self.ray_json("from ray.util.state import list_actors\n"
                               "labels = {n['NodeID']: n.get('Labels', {}) for n in ray.nodes()}\n"
                               f"out = [labels.get(a.node_id, {{}}).get('{self.NAME}') for a in "
                               "list_actors(filters=[('state', '=', 'ALIVE')], limit=10000)]")
        return max(names, key=lambda name: (counts.count(name), name == names[-1]))

    def kill(self, name: str) -> None:
        """SIGKILL a node's whole process group: raylet, object store and its workers, as a lost spot node."""
        _killpg(self.nodes.pop(name), signal.SIGKILL)

    def ray_json(self, code: str, timeout: float = 120) -> object:
        """Run `code` (which sets `out`) in a fresh process connected to the cluster; returns `out` from JSON."""
        import json

        script = ("import json, ray\nray.init(address='auto', log_to_driver=False, logging_level='ERROR')\n"
                  f"{code}\nprint('JSON' + json.dumps(out))\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **self.env, RAY_ADDRESS=self.gcs))
        for line in done.stdout.splitlines():
            if line.startswith("JSON"):
                return json.loads(line[4:])
        raise RuntimeError(f"cluster query failed: {done.stderr[-2000:]}")

    def alive(self) -> list[dict]:
        try:
            return self.ray_json("out = [{'id': n['NodeID'], 'labels': n.get('Labels', {}), 'resources': n['Resources']} "
                                 "for n in ray.nodes() if n['Alive']]")
        except RuntimeError:
            return []

    def shutdown(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + (["head"] if "head" in self.nodes else []):
            _killpg(self.nodes.pop(name))
