"""The opt-in step profile (`bench/training.py --profile`, issue 25): the loop's hook writes a summary of the steps
asked for, on CPU the same code that summarises CUDA kernels on a GPU."""

from __future__ import annotations

import json

import pytest
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side-stream copy is a CUDA path")
def test_prefetched_batches_arrive_on_the_device_unchanged_and_in_order():
    from synthray.training.device_decode import prefetched

    host = [{"image": torch.full((4, 8, 8, 3), i, dtype=torch.uint8).pin_memory(), "label": torch.arange(4).pin_memory()}
            for i in range(5)]
    device = torch.device("cuda", torch.cuda.current_device())
    out = [{k: v.clone() for k, v in b.items()} for b in prefetched(iter(host), device)]
    assert len(out) == 5 and all(b["image"].device == device for b in out)
    assert [int(b["image"][0, 0, 0, 0]) for b in out] == list(range(5)) and all(torch.equal(b["label"].cpu(), torch.arange(4)) for b in out)
