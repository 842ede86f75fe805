"""Hostile input: storage that holds code, exports that climb out of their folder, secrets that must not be stored.

What an attacker who can write to the bucket can and cannot do is in docs/RELIABILITY.md ("Security").
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from synthray.core.artifacts import MANIFEST
from synthray.core.safe_load import UnsafeCheckpoint, load_tensors
from tests.conftest import tiny_cfg


class _WritesAFile:
    """A pickle that, when loaded with `weights_only=False`, writes the file it names (what an attacker plants)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "pwned"))


def _evil_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(1), "x": _WritesAFile(marker)}, buf)
    return buf.getvalue()


def _plant(artifact: Path, name: str, data: bytes) -> None:
    """Replace `artifact/name` with `data` and fix its manifest entry, as someone with write access to the bucket
    could: the checksums live in the same bucket, so they vouch for nothing."""
    (artifact / name).write_bytes(data)
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["files"][name].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (artifact / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def test_a_planted_pickle_is_refused_and_every_checkpoint_format_loads(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeCheckpoint, match=r"^last.pt: refused to load: .*it would call "):
        load_tensors(_evil_bytes(marker), "last.pt")
    assert not marker.exists()
    # The training loop's RNG states: the current form (tensors only) and the one written before it (an ndarray).
    from synthray.training.loop import rng_state, set_rng_state

    for legacy in (False, True):
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        state = rng_state()
        if legacy:
            state["numpy"] = np.random.get_state()
        buf = io.BytesIO()
        torch.save(state, buf)
        expected = (random.random(), np.random.rand(), torch.rand(1).item())
        set_rng_state(load_tensors(buf.getvalue(), "rng-0.pt"))
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.slow
def test_a_planted_model_file_with_a_matching_manifest_is_refused_on_rerun(ray_cluster, tmp_path):
    """A finished trial, then its stored `last.pt` swapped for a pickle that writes a file, manifest fixed to match;
    its results and evaluations are removed, so the rerun reads the model again. The rerun refuses it in one line
    and the file is never written."""
    from synthray.sweep.runner import run_sweep

    grid = ["grid.generator=[real-holdout]", "grid.probe=[rgb]", "recipe.epochs=1"]
    table, _ = run_sweep(tiny_cfg(tmp_path, *grid), stream=io.StringIO())
    assert (table["status"] == "done").all()
    marker = tmp_path / "pwned"
    models = [p.parent for p in tmp_path.glob(f"models/*/{MANIFEST}")]
    assert models
    for model in models:
        _plant(model, "last.pt", _evil_bytes(marker))
    for kind in ("results", "evaluations"):
        shutil.rmtree(tmp_path / kind)
    console = io.StringIO()
    again, _ = run_sweep(tiny_cfg(tmp_path, *grid), stream=console)
    assert not marker.exists(), "the planted pickle ran"
    assert (again["status"] == "missing").all()
    log = "".join(p.read_text() for p in tmp_path.glob("sweeps/*/logs/sweep.log"))
    refused = [line for line in log.splitlines() if "failed:" in line and "refused to load" in line]
    assert refused and all("last.pt" in line and "it would call" in line for line in refused), log[-3000:]


def _one_line(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stdout[-1500:], done.stderr[-1500:])
    return lines[0]


@pytest.mark.slow
def test_a_missing_bucket_is_one_line_within_seconds_for_every_command(s3_server, tmp_path):
    """Six commands, each given a bucket the (local) S3 server does not have: one line, exit 2, under 10 s each,
    naming the bucket, and no retrying as if the store were down."""
    import time

    from tests.rig import run_cli

    gone = "s3://no-such-bucket-4711"
    commands = {
        "run": ["run", f"storage={gone}/runs"],
        "resume": ["resume", f"storage={gone}/runs"],
        "results": ["results", f"{gone}/runs/sweeps/smoke-20260101-000000"],
        "export": ["export", f"{gone}/runs/synthetic/0123abcd", str(tmp_path / "out")],
        "report": ["report", "--storage", f"{gone}/runs", "--out", str(tmp_path / "report")],
        "stage-weights": ["stage-weights", "sd15", f"hub.cache={gone}/hub"],
    }
    for name, args in commands.items():
        started = time.perf_counter()
        line = _one_line(run_cli(*args, cwd=tmp_path, timeout=120))
        seconds = time.perf_counter() - started
        assert "bucket 'no-such-bucket-4711' does not exist" in line, (name, line)
        assert seconds < 10, (name, seconds)
        print(f"[figure] {name}: {seconds:.1f} s: {line}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "report").exists()


def _node_secrets(cloud: str, *names: str, env: dict) -> tuple[dict, str]:
    """Run the cluster files' fetch as a node does: its stdout evaluated by a shell, which then reports its env."""
    import subprocess
    import sys

    script = f'eval "$({sys.executable} -m synthray.core.node_secrets {cloud} {" ".join(names)})" && env -0'
    done = subprocess.run(["bash", "-c", script], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.split("\0") if "=" in line)
    return {n: seen[n] for n in names if n in seen}, done.stderr


def test_nodes_read_their_secrets_from_the_aws_parameter_store(s3_server):
    """SSM Parameter Store on the local moto server: SecureStrings under /synthray/ reach the shell that starts Ray,
    a value with shell characters intact; a name not in the store stays unset and is named (only named) on stderr."""
    import boto3

    ssm = boto3.client("ssm", endpoint_url=s3_server, region_name="us-east-1")
    odd = "hf_A'b \"$(touch /tmp/x)\" `c`"
    ssm.put_parameter(Name="/synthray/HF_TOKEN", Value=odd, Type="SecureString", Overwrite=True)
    ssm.put_parameter(Name="/synthray/WANDB_API_KEY", Value="wandb-123", Type="SecureString", Overwrite=True)
    got, err = _node_secrets("aws", "HF_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY",
                             env={"AWS_DEFAULT_REGION": "us-east-1", "OPENAI_API_KEY": ""})
    assert got == {"HF_TOKEN": odd, "WANDB_API_KEY": "wandb-123", "OPENAI_API_KEY": ""}
    assert "left unset): OPENAI_API_KEY" in err and odd not in err and "wandb-123" not in err
    # A store that cannot be read: one line, and the node still starts.
    got, err = _node_secrets("aws", "HF_TOKEN", env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "HF_TOKEN": ""})
    assert got == {"HF_TOKEN": ""} and err.count("\n") == 1 and "no secrets from the aws secret store" in err


def test_nodes_read_their_secrets_from_gcp_secret_manager():
    """The metadata server's token, then Secret Manager's REST API (both as local HTTP servers): the same contract."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    stored = {"synthray-openai-api-key": "sk-gcp-42"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/computeMetadata/"):
                ok = self.headers.get("Metadata-Flavor") == "Google"
                body = b"proj-1" if self.path.endswith("project-id") else json.dumps({"access_token": "tok"}).encode()
            else:
                name = self.path.split("/secrets/")[1].split("/")[0]
                ok = self.path.startswith("/v1/projects/proj-1/") and self.headers.get("Authorization") == "Bearer tok"
                if name not in stored:
                    self.send_response(404), self.end_headers()
                    return
                body = json.dumps({"payload": {"data": base64.b64encode(stored[name].encode()).decode()}}).encode()
            self.send_response(200 if ok else 403)
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        got, err = _node_secrets("gcp", "OPENAI_API_KEY", "HF_TOKEN", env={
            "GCE_METADATA_HOST": host, "SYNTHRAY_SECRET_MANAGER_URL": f"http://{host}", "HF_TOKEN": ""})
    finally:
        server.shutdown()
    assert got == {"OPENAI_API_KEY": "sk-gcp-42", "HF_TOKEN": ""} and "left unset): HF_TOKEN" in err


def test_export_keeps_every_file_under_its_folder_and_writes_uris(s3_server, tmp_path):
    """Class and row ids of `..`, `/`, `.` and empty: every file lands under the output folder, no two ids share a
    folder, and ordinary ids keep their names. The same export to an S3 URI writes there."""
    from synthray.core import storage
    from synthray.core.artifacts import Artifact, Store
    from synthray.core.shards import write_table
    from synthray.generation.export import export_imagefolder
    from tests.rig import BUCKET, bucket_keys, run_cli

    hostile = ["..", "../..", "/etc", ".", "", "a/../../b", "n01440764", "..."]
    art = Artifact(Store(storage.normalize(tmp_path / "runs")), "things", {"hostile": 1})

    def make(out):
        rows = range(len(hostile))
        out.record("data/part-00000.parquet", write_table(storage.join(out.uri, "data", "part-00000.parquet"), {
            "id": [f"../r{j}" if j % 2 else f"r{j}" for j in rows], "image": [b"\x89PNG" + bytes([j]) for j in rows],
            "label": list(rows), "class_id": hostile}))
        return {"rows": len(hostile)}

    art.build(make)
    inside = tmp_path / "sandbox" / "out"
    done = run_cli("export", art.uri, str(inside), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    files = [p for p in (tmp_path / "sandbox").rglob("*") if p.is_file()]
    assert len(files) == len(hostile) and all(inside in p.resolve().parents for p in files)
    assert len({p.parent for p in files}) == len(hostile), "no two class ids share a folder"
    assert (inside / "n01440764" / "r6.png").is_file(), "safe ids keep their names"
    assert not list(tmp_path.glob("etc*")) and not (tmp_path / "b").exists()

    assert export_imagefolder(art.uri, f"s3://{BUCKET}/exports/hostile") == len(hostile)
    keys = bucket_keys(s3_server, prefix="exports/hostile/")
    assert len(keys) == len(hostile) and "exports/hostile/n01440764/r6.png" in keys
    assert all(".." not in k.split("/") and "//" not in k for k in keys)
    for bad, needle in ((f"s3:/{BUCKET}/x", "write the URI with two slashes"), ("ftp://host/x", "unknown URI scheme")):
        done = run_cli("export", art.uri, bad, cwd=tmp_path)
        assert done.returncode == 2 and needle in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert not (tmp_path / "s3:").exists()


@pytest.mark.slow
def test_a_submitted_job_stores_no_laptop_secret_and_uses_the_nodes_own(tmp_path_factory, tmp_path, monkeypatch):
    """Known secrets in the laptop's environment, a job submitted to a token-auth head on 127.0.0.1 whose node has its
    own OPENAI_API_KEY (as the cluster files give it, from the secret store). The job captions through the stub
    OpenAI endpoint, which accepts only the node's key: so the worker got the secret the cluster's way. The laptop's
    secrets are nowhere: not in the job's info, not in the job list, not in any file of the Ray session, not in
    storage. Ctrl-C while following says the job keeps running, and it does."""
    import secrets
    import signal
    import subprocess
    import sys
    import threading
    import time
    from http.server import ThreadingHTTPServer

    from ray.job_submission import JobSubmissionClient

    from synthray import submit
    from tests.conftest import TINY
    from tests.rig import start_token_head
    from tests.test_captioner import KEY, Stub, _handler, openai_args

    stub = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    laptop = {name: f"{name.lower()}-laptop-{secrets.token_hex(8)}"
              for name in ("HF_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY")}
    root = Path(__file__).resolve().parents[1]
    storage = tmp_path / "runs"
    try:
        with start_token_head(tmp_path_factory.mktemp("secret-head"), node_env={"OPENAI_API_KEY": KEY}) as head:
            for name, value in laptop.items():
                monkeypatch.setenv(name, value)
            monkeypatch.setenv("RAY_AUTH_TOKEN", head["token"])
            monkeypatch.chdir(root)
            args = [f"storage={storage}", *TINY, *openai_args(stub, "captioner.per_class=2", "captioner.shard_size=8",
                                                              "captioner.batch_size=4")]
            job = submit.submit(head["url"], "caption", args)
            jobs = JobSubmissionClient(head["url"], headers={"Authorization": f"Bearer {head['token']}"})

            follow = subprocess.Popen([sys.executable, "-m", "synthray", "logs", job, "--follow", "--address", head["url"]],
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(6)
            follow.send_signal(signal.SIGINT)
            _, said = follow.communicate(timeout=60)
            assert follow.returncode == 130, said
            assert f"job {job} keeps running on the cluster" in said and f"synthray stop {job}" in said
            assert "synthray resume" not in said
            assert jobs.get_job_status(job).value in ("PENDING", "RUNNING", "SUCCEEDED")

            deadline = time.time() + 600
            while jobs.get_job_status(job).value in ("PENDING", "RUNNING") and time.time() < deadline:
                time.sleep(1)
            log = jobs.get_job_logs(job)
            assert jobs.get_job_status(job).value == "SUCCEEDED", log[-3000:]
            assert "captions: " in log and "(20 rows, openai)" in log
            assert stub.log and all(status == 200 for *_, status in stub.log), "every request carried the node's key"

            stored = {"job info": repr(jobs.get_job_info(job)) + json.dumps(jobs.get_job_info(job).runtime_env or {}),
                      "job list": repr(jobs.list_jobs())}
            for path in [*Path(head["temp_dir"]).rglob("*"), *storage.rglob("*")]:
                if path.is_file() and not path.is_symlink():
                    stored[str(path)] = path.read_bytes().decode("latin-1")
            assert any("runtime_env_agent" in where for where in stored), "the session's logs were read"
            for name, value in laptop.items():
                leaks = [where for where, text in stored.items() if value in text]
                assert not leaks, f"{name} from the laptop is stored in {leaks[:3]}"
            # (tests/test_captioner.py, shipped in the job's working dir, holds the stub's key as source text)
            node_key = [where for where, text in stored.items() if KEY in text and "/working_dir_files/" not in where]
            assert not node_key, f"the node's own key is written in {node_key[:3]}"
            print(f"[figure] secrets: {len(stored)} files and answers searched, none holds a secret; "
                  f"{len(stub.log)} captions asked with the node's key")
    finally:
        server.shutdown()


@pytest.mark.parametrize("args, needle, in_job", [
    (["tracking=wandb"], "tracking=wandb needs $WANDB_API_KEY, which is not set {where}; ", False),
    (["tracking=wandb"], "tracking=wandb needs $WANDB_API_KEY, which is not set {where}; ", True),
    (["grid.generator=[flux1-dev]", "hub.allow_download=true"],
     "generators.flux1-dev.model=black-forest-labs/FLUX.1-dev is gated on the Hugging Face Hub, and downloading it "
     "needs $HF_TOKEN, which is not set {where}; ", True),
])
@pytest.mark.slow
def test_a_secret_the_sweep_needs_and_lacks_is_one_line_before_it_starts(tmp_path, args, needle, in_job):
    """Checked where the driver runs (on a cluster: the head, whose environment the secret store filled), before
    anything is written; the line names the secret and where to put it, and never a value."""
    from tests.rig import run_cli

    env = {"HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "", "WANDB_API_KEY": "",
           "WANDB_MODE": "", "RAY_ADDRESS": ""}
    if in_job:
        env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = "{}"  # what Ray sets in a submitted job's driver, as on the head
    done = run_cli("run", f"storage={tmp_path / 'runs'}", *args, cwd=tmp_path, env=env, timeout=120)
    line = _one_line(done)
    where = "on the cluster's head" if in_job else "on this machine"
    assert needle.format(where=where) in line and "secret store (AWS: SSM parameter /synthray/" in line, line
    assert ("export it here" in line) != in_job
    assert sorted(p.name for p in tmp_path.iterdir()) == []
