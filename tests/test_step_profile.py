"""The opt-in step profile (`bench/training.py --profile`, issue 25): the loop's hook writes a summary of the steps
asked for, on CPU the same code that summarises CUDA kernels on a GPU."""

from __future__ import annotations

import json

import torch

from synthray.training.profile import ENV, STEPS_ENV, StepProfile, format_summary


def test_the_hook_profiles_the_steps_asked_for_on_rank_0_only(tmp_path, monkeypatch):
    path = tmp_path / "steps.json"
    monkeypatch.setenv(ENV, str(path))
    monkeypatch.setenv(STEPS_ENV, "2,1,2")
    assert StepProfile.from_env(rank=1) is None
    profile, cpu = StepProfile.from_env(rank=0), torch.device("cpu")
    model, x = torch.nn.Linear(8, 4), torch.randn(16, 8)
    for epoch in range(2):
        for index in range(4):
            profile.before(epoch, index, cpu)
            model(x).square().mean().backward()
            profile.after(epoch, index, cpu)
        profile.close(cpu)
    summary = json.loads(path.read_text())
    assert summary["steps"] == 2 and summary["device"] == "cpu" and summary["aten_ops_per_step"] > 0
    assert any(row["name"] == "aten::addmm" for row in summary["top"])
    assert set(summary["sync"]) >= {"cudaStreamSynchronize", "aten::item"} and "memcpy_htod_pinned" in summary["h2d"]
    assert len(format_summary("b", summary)) == len(summary["top"]) + 5
