"""bench/gpu.sh --tiny: the GPU measurement script's every step, on CPU with the tiny twins (issue 25).

The figures mean nothing on CPU; the test holds the script itself: every step runs and writes its JSON and log,
the summary's first line names the device, and each step has a row. Deep tier: about 5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["encoders", "prdc", "gen-eager", "gen-compile-regions", "gen-attn-flash", "gen-attn-cudnn", "train-cached",
         "train-streaming", "train-profile"]


@pytest.mark.slow
@pytest.mark.deep
@pytest.mark.timeout(3000)
def test_gpu_script_runs_every_step_in_tiny_mode(tmp_path):
    out = tmp_path / "out"
    # its own Ray (not the suite's cluster), this interpreter, big files in tmp_path
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTEST_CURRENT_TEST")}
    # Generous caps: the test holds the script's steps and outputs, not its speed on a CPU shared with other work
    # (at load ~30 a step of the default caps timed out).
    env.update(PYTHON=sys.executable, WORK=str(tmp_path / "work"), CAP_SCALE="10", BUDGET_S="2700")
    done = subprocess.run(["bash", "bench/gpu.sh", "--tiny", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=2900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("device: cpu"), summary[0]
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")] for line in summary[2:]}
    assert list(rows) == STEPS, summary
    for name in STEPS:
        assert rows[name][1] == "ok", rows[name]
        assert (out / f"{name}.log").stat().st_size > 0
        json.loads((out / f"{name}.json").read_text())  # each step's figures, readable
    compiled = json.loads((out / "gen-compile-regions.json").read_text())
    assert compiled["compile_scope"] == "regions" and compiled["warm_start_s"] is not None
