"""The waiting message: a request that no node can hold, with no node starting, gets one line after the threshold.

On the session's real local Ray (no mocks): a task asks for a GPU this GPU-less Ray does not have, another one for a
label no node carries, and a third for what the node has (it runs, and is never named).
"""

from __future__ import annotations

import time

import pytest

from synthray.sweep.waiting import WaitWatcher, describe, warning_minutes


@pytest.mark.slow
def test_a_request_no_node_has_gets_one_line_after_the_threshold(ray_cluster):
    import ray

    @ray.remote
    def nothing() -> int:
        return 1

    label = {"synthray.io/gpu-memory-gb": "in(80,141)"}
    stuck = [nothing.options(num_gpus=1).remote(), nothing.options(num_cpus=1, label_selector=label).remote()]
    assert ray.get(nothing.remote(), timeout=120) == 1  # what the node has runs: never waited on
    lines: list[str] = []
    watcher = WaitWatcher(ray_cluster, minutes=4 / 60, interval=1, say=lines.append).start()
    try:
        deadline = time.time() + 90
        while len(lines) < 2 and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # more polls: each request is said once
    finally:
        watcher.stop()
        for ref in stuck:
            ray.cancel(ref, force=True)
    gpu = [line for line in lines if "{GPU: 1, CPU: 1}" in line]
    labelled = [line for line in lines if "synthray.io/gpu-memory-gb in(80,141)" in line]
    assert len(gpu) == 1 and len(labelled) == 1 and len(lines) == 2, lines
    for line in lines:
        assert "\n" not in line and line.startswith("waiting ") and "no node of the cluster has it and none has started" in line
    # No launch failed here, so the likely cause named is the cloud's GPU quota, pointing at the README's checklist.
    assert "likely a cloud GPU quota of 0" in gpu[0] and "Before your first `ray up`" in gpu[0], gpu[0]


@pytest.mark.parametrize("shape, text", [
    (((("CPU", 1.0), ("GPU", 1.0)), (("synthray.io/gpu-memory-gb", "in", ("80", "141")),)),
     "{GPU: 1, CPU: 1, synthray.io/gpu-memory-gb in(80,141)}"),
    (((("CPU", 0.5), ("nosuch", 2.0)), ()), "{CPU: 0.5, nosuch: 2}"),
])
def test_describe(shape, text):
    assert describe(shape) == text


@pytest.mark.slow
def test_threshold_comes_from_the_config(tmp_path):
    from synthray.config import compose

    assert warning_minutes(compose([f"storage={tmp_path}"])) == 10
    assert warning_minutes(compose([f"storage={tmp_path}", "tune.wait_warning_minutes=0.5"])) == 0.5
