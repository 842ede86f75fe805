"""Chaos on the local multi-node cluster: nodes die or drain, storage goes down, sweeps race, scratch fills.

Marked `chaos` (and `slow`): the CI tier runs cases 3 and 5 (tests/test_sweep.py, tests/test_submit.py,
tests/test_integrity.py); these run with `pytest -m chaos -s tests/test_chaos.py` and print a `[figure]` line
each, the figures of docs/RELIABILITY.md.

Each test gets its own `ray.cluster_utils.Cluster` whose head has no CPU or GPU, so that every stage runs on a
worker node that can be killed, and drivers run in their own processes, as `synthray run` does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthray.core import storage
from synthray.core.artifacts import MANIFEST
from tests.conftest import TINY
from tests.outage import TcpRelay, small_disk
from tests.rig import BUCKET, bucket_keys, bucket_objects, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.chaos]
ROOT = Path(__file__).resolve().parents[1]


class Nodes:
    """A head (no CPUs, no GPUs) and worker nodes that a test kills and replaces, as spot capacity comes and goes."""

    def __init__(self, root: Path, workers: int, gpus: int):
        from ray.cluster_utils import Cluster

        self.root, self.gpus, self.count = root, gpus, 0
        self.env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "SYNTHRAY_FAKE_GPUS": "1"}
        self.cluster = Cluster(initialize_head=True, connect=False,
                               head_node_args={"num_cpus": 0, "env_vars": dict(self.env, SYNTHRAY_SCRATCH=str(root / "head"))})
        self.workers = [self.add() for _ in range(workers)]
        self.cluster.wait_for_nodes()

    def add(self):
        self.count += 1
        return self.cluster.add_node(num_cpus=3, num_gpus=self.gpus,
                                     env_vars=dict(self.env, SYNTHRAY_SCRATCH=str(self.root / f"worker{self.count}")))

    def kill_and_replace(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)
        self.workers.append(self.add())

    @property
    def address(self) -> str:
        return self.cluster.address


@pytest.fixture
def nodes(request, tmp_path, s3_server):
    made: list[Nodes] = []

    def make(workers: int = 2, gpus: int = 0) -> Nodes:
        made.append(Nodes(tmp_path / "scratch", workers, gpus))
        return made[-1]

    yield make
    for n in made:
        n.cluster.shutdown()


def driver(script: str, address: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, RAY_ADDRESS=address)
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.Popen([sys.executable, "-c", script, address, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def finish(proc: subprocess.Popen, timeout: float = 600) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def objects_exist(endpoint: str, prefix: str, pattern: str) -> list[str]:
    return [key for key in bucket_keys(endpoint, prefix=prefix) if re.search(pattern, key)]


def checkpoints(endpoint: str, prefix: str) -> set[str]:
    """Names of the Ray Train checkpoints stored under `prefix` now (Train keeps only the newest two)."""
    return {re.search(r"checkpoint_[^/]+", k).group(0) for k in objects_exist(endpoint, f"{prefix}/train-runs/", r"checkpoint_[^/]+/")}


GENERATE = """
import json, sys, ray
from synthray.core.logs import setup_logging
setup_logging()
ray.init(address=sys.argv[1])
from synthray.config import compose
from synthray.graph.synthetic import build_prompt_table, generate_dataset
from synthray.core.images import dataset_digest, read_images
cfg = compose(sys.argv[2:])
table = build_prompt_table(cfg, "tiny-sd", "classname")
data = generate_dataset(cfg, "tiny-sd", "classname", table)
art = data.artifact
ids = read_images(data.uri, columns=["id"], usable_only=False)["id"]
print(json.dumps({"digest": dataset_digest(data.uri), "rows": len(ids), "unique": int(ids.nunique()),
                  "expected": len(table), "key": art.key, "verify": art.verify()}))
"""
GEN_ARGS = [*TINY, "prompts.n_per_class=12", "generation.shard_size=6", "generation.batch_size=3", "device=gpu",
            "generation.num_actors=2", "metrics.device=cpu", "training.device=cpu", "probes.depth.device=cpu"]


def test_1_a_node_dies_mid_generation(nodes, s3_server):
    """Two generation actors on two fake-GPU nodes; one node is killed once shards are landing. The dataset
    completes on the survivor and the replacement node, byte-identical to an uninterrupted run."""
    cluster = nodes(workers=2, gpus=1)
    whole = finish(driver(GENERATE, cluster.address, f"storage=s3://{BUCKET}/chaos1-whole", *GEN_ARGS))
    prefix = "chaos1-killed"
    proc = driver(GENERATE, cluster.address, f"storage=s3://{BUCKET}/{prefix}", *GEN_ARGS)
    deadline = time.time() + 300
    while len(objects_exist(s3_server, f"{prefix}/synthetic/", r"data/.*\.parquet$")) < 2 and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    landed = len(objects_exist(s3_server, f"{prefix}/synthetic/", r"data/.*\.parquet$"))
    killed_at = time.time()
    cluster.kill_and_replace(cluster.workers[0])
    got = finish(proc)
    recovered = time.time() - killed_at
    assert got["key"] == whole["key"] and got["digest"] == whole["digest"] and got["verify"] == []
    assert got["rows"] == got["unique"] == got["expected"], "no row lost or duplicated"
    shards = -(-got["expected"] // 6)
    print(f"[figure] case 1: node killed with {landed}/{shards} shards stored; finished {recovered:.0f} s later, "
          f"digest equal to the uninterrupted run")


TRAIN = """
import json, sys, hashlib, ray, torch, io
from synthray.core.logs import setup_logging
setup_logging()
ray.init(address=sys.argv[1])
from synthray.core.artifacts import DatasetRef
from synthray.config import compose
from synthray.graph.real import real_data
from synthray.core.storage import read_bytes
from synthray.graph.planner import train
cfg = compose(sys.argv[2:])
art = train(cfg, "tiny-cnn", DatasetRef(real_data(cfg), "train"), 10, label="chaos")
print(json.dumps({"key": art.key, "meta": art.meta(),
                  "weights": {w: hashlib.sha256(read_bytes(art.file(w))).hexdigest() for w in ("model.pt", "last.pt")}}))
"""
# inline_rows=0: the training runs in Ray Train's worker group on the worker node, not in this driver's process.
TRAIN_ARGS = [*TINY, "recipe.epochs=24", "recipe.batch_size=8", "lease_s=5", "training.inline_rows=0"]


@pytest.mark.parametrize("how", ["killed", "drained"])
def test_2_and_8_a_node_dies_or_drains_mid_epoch(nodes, s3_server, how):
    """Training runs on the only worker node; mid-epoch that node is killed (case 2), or first drained with a
    preemption notice and then killed at its deadline (case 8), and a replacement joins. Ray Train resumes from the
    last epoch's checkpoint in storage on the new node; at most one epoch is redone; the weights equal those of an
    uninterrupted run."""
    cluster = nodes(workers=1)
    whole = finish(driver(TRAIN, cluster.address, f"storage=s3://{BUCKET}/chaos2-whole", *TRAIN_ARGS))
    prefix = f"chaos2-{how}"
    proc = driver(TRAIN, cluster.address, f"storage=s3://{BUCKET}/{prefix}", *TRAIN_ARGS)
    deadline, seen = time.time() + 300, set()
    while len(seen) < 3 and time.time() < deadline:  # Ray Train keeps the newest two checkpoints: count as they come
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        seen |= checkpoints(s3_server, prefix)
        time.sleep(0.05)
    epoch_s = whole["meta"]["rows"] / whole["meta"]["images_per_s"]
    time.sleep(0.4 * epoch_s)  # into the next epoch
    node = cluster.workers[0]
    killed_at = time.time()
    if how == "drained":
        drain = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "drain-node", "--address", cluster.address,
                                "--node-id", node.node_id, "--reason", "DRAIN_NODE_REASON_PREEMPTION",
                                "--reason-message", "spot reclaim", "--deadline-remaining-seconds", "2"],
                               capture_output=True, text=True)
        assert drain.returncode == 0, drain.stderr[-2000:]
        time.sleep(2)  # the cloud reclaims the node at its deadline
    seen |= checkpoints(s3_server, prefix)
    done = len(seen)  # epochs checkpointed when the node went away (a drained node keeps working until its deadline)
    cluster.kill_and_replace(node)
    got = finish(proc)
    recovered = time.time() - killed_at
    assert got["key"] == whole["key"] and got["weights"] == whole["weights"], "resumed weights differ"
    resumed = got["meta"]["resumed_from_epoch"]
    assert resumed >= 1 and done - resumed <= 1, (done, resumed)
    print(f"[figure] case {2 if how == 'killed' else 8}: node {how}; resumed from epoch "
          f"{resumed}, the last one stored: only the interrupted epoch is redone ({epoch_s:.1f} s); finished {recovered:.0f} s later; "
          "weights equal")


def test_4_storage_outage_mid_sweep(nodes, s3_server, tmp_path):
    """The S3 endpoint refuses every connection for 20 s mid-sweep (a relay in front of moto goes dark). Reads and
    writes retry with backoff, the sweep completes, and every committed artifact matches its manifest."""
    cluster = nodes(workers=2)
    relay = TcpRelay(int(s3_server.rsplit(":", 1)[1]))
    prefix = "chaos4"
    env = {"AWS_ENDPOINT_URL": relay.endpoint, "RAY_ADDRESS": cluster.address}
    proc = subprocess.Popen([sys.executable, "-m", "synthray", "run", "-v", f"storage=s3://{BUCKET}/{prefix}", *TINY,
                             "recipe.epochs=4", "grid.generator=[real-holdout,tiny-sd]", "tune.max_concurrent_trials=1"],
                            env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    deadline = time.time() + 300
    while not objects_exist(s3_server, f"{prefix}/models/", MANIFEST) and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.5)
    start = time.time()
    relay.outage(20)
    out, _ = proc.communicate(timeout=900)
    after = time.time() - start
    relay.down()
    assert proc.returncode == 0, out[-4000:]
    assert "storage unreachable" in out and "storage is back" in out
    objects = bucket_objects(s3_server, prefix=f"{prefix}/")
    manifests = {k: json.loads(v) for k, v in objects.items() if k.endswith(MANIFEST)}
    assert len([k for k in manifests if "/results/" in k]) == 2
    for key, manifest in manifests.items():
        folder = key[: -len(MANIFEST)]
        for rel, entry in manifest["files"].items():
            assert storage.entry(objects[folder + rel]) == entry, (key, rel)
    print(f"[figure] case 4: 20 s outage; the sweep finished {after:.0f} s after it began; "
          f"{len(manifests)} artifacts verified, all trials done")


def test_6_two_sweeps_at_once_build_shared_artifacts_once(nodes, s3_server, tmp_path):
    cluster = nodes(workers=2)
    env = dict(os.environ, RAY_ADDRESS=cluster.address)
    common = [f"storage=s3://{BUCKET}/chaos6", *TINY, "recipe.epochs=2", "tune.max_concurrent_trials=2"]
    procs = [subprocess.Popen([sys.executable, "-m", "synthray", "run", "-v", *common, f"grid.generator={grid}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
             for grid in ("[real-holdout,tiny-sd]", "[tiny-sd]")]
    start = time.time()
    outs = [p.communicate(timeout=900)[0] for p in procs]
    took = time.time() - start
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    built = re.findall(r"building (\w[\w-]*) ([0-9a-f]{16})", "\n".join(outs))
    assert built and len(built) == len(set(built)), sorted(built)
    waited = sum(out.count("built by a concurrent trial") + out.count("reused") for out in outs)
    assert waited > 0
    print(f"[figure] case 6: two sweeps, {len(set(built))} artifacts built once each, {waited} reuses; both done in {took:.0f} s")


@pytest.fixture
def full_scratch(tmp_path):
    with small_disk(tmp_path / "small-scratch", "256k") as folder:
        yield folder


def test_7_scratch_full_is_one_line(full_scratch, tmp_path):
    fd = os.open(full_scratch / "filler", os.O_WRONLY | os.O_CREAT)  # something else on the node filled the disk
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    done = run_cli("run", f"storage={tmp_path / 'runs'}", f"scratch={full_scratch}", *TINY, "grid.generator=[real-holdout]",
                   cwd=tmp_path, env={"RAY_ADDRESS": ""})
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() + done.stdout.splitlines()
             if f"failed: scratch folder {full_scratch} is full" in line]
    assert lines, (done.stdout + done.stderr)[-3000:]
    # The model whose weights did not fit is not committed, and no half-written build folder is left in scratch.
    assert not list((tmp_path / "runs").glob(f"models/*/{MANIFEST}")) and not list((tmp_path / "runs").glob(f"results/*/{MANIFEST}"))
    assert not [p for p in (full_scratch / "build").rglob("*") if p.is_file()]
    print(f"[figure] case 7: {lines[0].strip()[:160]}")
