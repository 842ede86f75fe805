"""The smoke sweep on a 3-node local Ray cluster with storage on a local S3 server, against a local-storage run.

Every sweep runs as a user runs it: `synthray run|resume` in a fresh process, from an empty working folder. The
smoke experiment is shrunk to test size (`SMALL`: fewer images and epochs) so the suite stays in its time budget;
`SYNTHRAY_FULL_SMOKE=1 pytest -s tests/test_cluster_storage.py` runs the full-size smoke experiment instead.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from synthray.core import storage
from synthray.core.artifacts import MANIFEST
from tests.conftest import TINY
from tests.rig import BUCKET, bucket_objects, run_cli

pytestmark = pytest.mark.slow

SECRET = "hf_synthray_test_token_do_not_leak_7f3a"
# Test size: tiny-sd, the generator whose images the digest compares (real-holdout copies real images).
SMALL = [] if os.environ.get("SYNTHRAY_FULL_SMOKE") else [*TINY, "grid.generator=[tiny-sd]"]
TRIALS = 2 if os.environ.get("SYNTHRAY_FULL_SMOKE") else 1
METRICS = ["generator", "synth_to_real_acc", "real_to_synth_acc", "real_to_real_acc", "synth_to_real_acc_last",
           "best_epoch", "density", "coverage", "fd", "n_synthetic"]


def _results(text: str) -> pd.DataFrame:
    uri = re.search(r"^results: (\S+)$", text, re.M).group(1)
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def _digests(table: pd.DataFrame, root: str) -> dict[str, str]:
    """generator -> digest of its synthetic images, read from the dataset artifacts' metadata."""
    import json

    return {g: json.loads(storage.read_text(f"{root}/synthetic/{key}/meta.json"))["digest"]
            for g, key in zip(table["generator"], table["dataset"])}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The smoke sweep on local storage and a plain local Ray (no GPUs): the reference."""
    work = tmp_path_factory.mktemp("local-cwd")
    root = tmp_path_factory.mktemp("local-storage")
    done = run_cli("run", f"storage={root}", *SMALL, cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    table = _results(done.stdout)
    return {"root": str(root), "table": table, "digests": _digests(table, str(root))}


def test_rerun_on_a_cluster_with_gpus_recomputes_nothing(local_run, three_nodes, tmp_path):
    """Keys depend on the spec alone: the same sweep against a cluster that reports 2 GPUs reuses everything."""
    done = run_cli("run", "-v", f"storage={local_run['root']}", f"ray.address={three_nodes['address']}", *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert f"plan: {TRIALS} trials, {TRIALS} already complete" in log
    assert "building" not in log
    pd.testing.assert_frame_equal(_results(done.stdout)[METRICS], local_run["table"][METRICS])


def _kill_trial_mid_generation(args: list[str], cwd: Path) -> str:
    """Start the sweep; SIGKILL the trial process that builds the tiny-sd dataset once its first shard is stored."""
    env = dict(os.environ, HF_TOKEN=SECRET)
    proc = subprocess.Popen([sys.executable, "-m", "synthray", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, builder, killed = [], None, False
    for line in proc.stdout:
        lines.append(line)
        found = re.search(r"pid=(\d+)\S*\s+\[synthray\] building synthetic \w+ \(tiny-sd", line)
        if found:
            builder = int(found.group(1))
        if builder and not killed and re.search(r"generate tiny-sd.*shard 1/", line):
            os.kill(builder, signal.SIGKILL)  # the builder dies mid-artifact: one shard stored, no manifest
            killed = True
    proc.wait(600)
    assert killed, "".join(lines)[-3000:]
    return "".join(lines)


def test_s3_smoke_on_three_nodes_survives_a_killed_builder_and_matches_local(local_run, three_nodes, s3_server, tmp_path):
    root = f"s3://{BUCKET}/runs"
    # Smaller shards than the local run's: more of them, so the builder is surely killed mid-artifact. The images,
    # and so the digest and every metric, do not depend on the shard size.
    args = ["run", "-v", f"storage={root}", f"ray.address={three_nodes['address']}", "lease_s=10", *SMALL, "generation.shard_size=8"]
    log = _kill_trial_mid_generation(args, tmp_path)
    assert "1 trial(s) did not finish" in log

    # The killed builder left shards but no manifest: nothing reads its dataset as complete.
    synthetic = bucket_objects(s3_server, prefix="runs/synthetic/")
    keys = {k.split("/")[2] for k in synthetic}
    unfinished = [k for k in keys if f"runs/synthetic/{k}/{MANIFEST}" not in synthetic]
    assert len(unfinished) == 1 and any(k.endswith(".parquet") for k in synthetic if f"/{unfinished[0]}/" in k)

    # Resume from storage alone: the unfinished dataset resumes from its stored shards and completes.
    done = run_cli("resume", "-v", f"storage={root}", cwd=tmp_path, env={"HF_TOKEN": SECRET})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already in storage, resuming" in done.stdout + done.stderr
    table = _results(done.stdout)
    assert _digests(table, root) == local_run["digests"]  # byte-identical images
    pd.testing.assert_frame_equal(table[METRICS], local_run["table"][METRICS])

    # A warm rerun reuses everything.
    start = time.perf_counter()
    warm = run_cli(*args, cwd=tmp_path, env={"HF_TOKEN": SECRET})
    seconds = time.perf_counter() - start
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert "building" not in warm.stdout + warm.stderr and f"plan: {TRIALS} trials, {TRIALS} already complete" in warm.stdout + warm.stderr
    assert seconds < 90, f"warm rerun took {seconds:.0f} s"
    print(f"warm rerun on S3, 3 nodes: {seconds:.1f} s")

    # Nothing outside the bucket and the nodes' scratch folders; the token is nowhere in what synthray wrote.
    assert list(tmp_path.iterdir()) == []
    for folder in three_nodes["scratch"].values():  # a node that loaded no model has no scratch folder at all
        assert not folder.exists() or {p.name for p in folder.iterdir()} <= {"build", "downloads"}, folder
        assert not any(p.is_file() for p in folder.glob("build/**/*"))  # build folders are emptied once uploaded
    objects = bucket_objects(s3_server, prefix="runs/")
    assert not any(SECRET.encode() in data for data in objects.values())
    assert SECRET not in log + done.stdout + done.stderr + warm.stdout + warm.stderr


def test_a_driver_forwards_where_the_bucket_is_but_no_secret(three_nodes, tmp_path):
    """A driver that joins a cluster (`ray.address`) hands its workers where the bucket is (AWS_ENDPOINT_URL, a
    setting) but none of its secrets: Ray would keep them in plain text in its job table and logs. The workers read
    secrets from their own node's environment, which the cluster files fill from the cloud's secret store."""
    code = (
        "import os, ray\n"
        "from synthray.config import compose\n"
        "from synthray.sweep.runner import init_ray\n"
        f"init_ray(compose(['ray.address={three_nodes['address']}', 'captioner.openai.api_key_env=MY_CAPTION_KEY']))\n"
        "@ray.remote(num_cpus=1)\n"
        "def seen(): return os.environ.get('HF_TOKEN'), os.environ.get('MY_CAPTION_KEY'), os.environ.get('AWS_ENDPOINT_URL')\n"
        "got = ray.get([seen.remote() for _ in range(6)])\n"
        "print('secrets', any(t[0] == os.environ['EXPECTED'] or t[1] for t in got))\n"
        "print('endpoint', all(t[2] == os.environ['AWS_ENDPOINT_URL'] for t in got))\n"
        "print('runtime env', os.environ['EXPECTED'] in str(ray.get_runtime_context().runtime_env))\n"
    )
    env = dict(os.environ, HF_TOKEN=SECRET, MY_CAPTION_KEY=SECRET + "-openai", EXPECTED=SECRET)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "secrets False" in done.stdout and "runtime env False" in done.stdout, (done.stdout + done.stderr)[-2000:]
    assert "endpoint True" in done.stdout, (done.stdout + done.stderr)[-2000:]
    assert SECRET not in done.stdout + done.stderr


def test_a_gpu_worker_without_cuda_fails_in_one_line(three_nodes, tmp_path):
    """The cluster's fake GPUs have no CUDA behind them: a gpu-configured generation actor says so, once, clearly."""
    done = run_cli("run", f"storage={tmp_path / 'runs'}", f"ray.address={three_nodes['address']}", *TINY,
                   "grid.generator=[tiny-sd]", "generation.device=gpu", cwd=tmp_path)
    assert done.returncode == 1
    failed = [line for line in (done.stdout + done.stderr).splitlines() if "trial tiny-sd/classname/tiny-cnn/rgb failed:" in line]
    assert len(failed) == 1 and "torch sees no CUDA device" in failed[0] and "set device=cpu" in failed[0], failed


LEASE_CODE = """
import json, os, signal, sys, time, uuid
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=sys.argv[1], log_to_driver=False)
workers = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]

@ray.remote(num_cpus=1)
def build(root, spec, die):
    from synthray.core.artifacts import Artifact, Store
    from synthray.core import storage
    made = []
    def make(out):
        made.append(ray.get_runtime_context().get_node_id())
        storage.write_bytes(out.uri + "/part-0", b"x")
        if die:
            os.kill(os.getpid(), signal.SIGKILL)  # a builder lost mid-artifact, holding its lease
        time.sleep(3)
        return {}
    start = time.time()
    Artifact(Store(root, lease_s=5), "things", spec).build(make)
    return {"built": bool(made), "seconds": time.time() - start}

def on(node, *args):
    return build.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False), max_retries=0).remote(*args)

root = sys.argv[2]
together = ray.get([on(w, root, {"case": "together-" + sys.argv[3]}, False) for w in workers])
spec = {"case": "dead-" + sys.argv[3]}
dead = on(workers[0], root, spec, True)
time.sleep(2)
taken = on(workers[1], root, spec, False)
try:
    ray.get(dead)
except Exception:
    pass
print("RESULT" + json.dumps({"together": together, "taken": ray.get(taken)}))
"""


def test_builders_on_two_nodes_build_once_and_a_dead_builder_loses_its_lease(three_nodes, s3_server, tmp_path):
    import json
    import uuid

    root = f"s3://{BUCKET}/leases"
    done = subprocess.run([sys.executable, "-c", LEASE_CODE, three_nodes["address"], root, uuid.uuid4().hex[:8]],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")]
    assert line, done.stderr[-3000:]
    result = json.loads(line[0][6:])
    assert sorted(r["built"] for r in result["together"]) == [False, True]  # one node built, the other waited
    taken = result["taken"]
    assert taken["built"] and 4 <= taken["seconds"] < 30, taken  # took over once the dead builder's 5 s lease lapsed
    print(f"dead builder's lease taken over after {taken['seconds']:.1f} s")
