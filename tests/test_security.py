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
from synthray.core.registry import SynthrayError
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
