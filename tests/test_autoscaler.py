"""GPU demand comes from configuration, so Ray's autoscaler starts GPU nodes from zero and releases them after."""

from __future__ import annotations

import time

import pytest

from tests.conftest import TINY
from tests.rig import LocalAutoscalingCluster, nodes, run_cli

pytestmark = pytest.mark.slow


def _gpu_nodes(cluster: LocalAutoscalingCluster) -> list[dict]:
    """The launched GPU workers, released ones included (Ray reports a dead node with no resources, and the idle
    node may be released before the sweep ends): every node but the CPU-only head."""
    return [n for n in nodes(cluster.address, cluster.client_env)
            if "node:__internal_head__" not in n["resources"] and (n["resources"].get("GPU", 0) > 0 or not n["alive"])]


def test_gpu_stage_demand_launches_a_gpu_node_that_is_released_when_idle(tmp_path):
    cluster = LocalAutoscalingCluster(
        head_cpus=8,
        worker_types={"gpu.fake": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1}},
        idle_timeout_minutes=0.1,
        # The fake node's "GPU" is a resource label: torch there has no CUDA, and synthray is told so.
        env={"SYNTHRAY_FAKE_GPUS": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},
    )
    cluster.start(tmp_path)
    try:
        assert _gpu_nodes(cluster) == []  # a CPU-only head; GPU workers start at zero
        done = run_cli("run", f"storage={tmp_path / 'runs'}", f"ray.address={cluster.address}", *TINY,
                       "grid.generator=[tiny-sd]", "generation.device=gpu", "generation.gpus_per_actor=1",
                       cwd=tmp_path, env=cluster.client_env)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert "tiny-sd" in done.stdout and "did not finish" not in done.stderr
        launched = _gpu_nodes(cluster)
        assert len(launched) == 1, launched  # the generation actor's GPU request made the autoscaler add one
        deadline = time.time() + 180
        while any(n["alive"] for n in _gpu_nodes(cluster)):
            assert time.time() < deadline, "the idle GPU node was not released"
            time.sleep(5)
    finally:
        cluster.shutdown()
