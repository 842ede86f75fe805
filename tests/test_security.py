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
