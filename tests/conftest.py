"""Shared fixtures: one local Ray cluster for the whole session, and tiny configs rooted in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthray.config import compose
from tests.rig import s3_server, three_nodes, token_head  # noqa: F401  (fixtures: one instance each, defined once here)

# Small enough for a 2-core CI machine; every stage still runs for real.
TINY = [
    "prompts.n_per_class=6",
    "generation.shard_size=16",
    "generation.batch_size=4",
    "recipe.epochs=2",
    "recipe.batch_size=32",
    "metrics.max_samples=200",
]


def tiny_cfg(storage: Path, *overrides: str):
    return compose([f"storage={storage}", *TINY, *overrides])


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray for every test that needs it: 8 logical CPUs so Tune, Train and Data run side by side."""
    import ray

    from synthray.core.logs import setup_logging
    from synthray.sweep.runner import start_local_ray

    setup_logging()
    yield start_local_ray(num_cpus=8)
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module of tiny models: they have nothing to split across threads, and on a busy
    2-core machine two OpenMP threads made a tiny conv step ~100x slower (2 s against 3 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_storage(tmp_path_factory):
    """A storage root shared across tests, so expensive artifacts (the tiny pipeline, real digits) build once."""
    return tmp_path_factory.mktemp("storage")
