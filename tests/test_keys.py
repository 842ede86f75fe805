"""Stored artifacts stay valid: the planner gives every artifact of the smoke, probes and paper experiments the
kind/key that synthray gave it at 28018d9 (`tests/data/artifact_keys.json`, from `tests/data/capture_keys.py`).

The two exceptions, both leaks of a path into keys, are keyed anew and their old keys are still read:
- the real data's absolute folder (`data.root`): now a fingerprint of its files' names and sizes;
- the GenEval CSV's path (`metrics.geneval`): it only joins a column into the table, so it is keyed as unset.
"""

import json
from pathlib import Path

import pytest

from synthray.config import compose
from synthray.graph.planner import plan, tiny_models

GOLDEN = json.loads((Path(__file__).parent / "data" / "artifact_keys.json").read_text())


def graph_of(name, tmp_path):
    return plan(compose([*GOLDEN["experiments"][name], f"storage={tmp_path}"]))


@pytest.mark.parametrize("name", ["smoke", "probes"])
def test_planner_keys_equal_the_stored_ones(name, tmp_path):
    graph = graph_of(name, tmp_path)
    assert graph.artifacts() == GOLDEN["artifacts"][name]
    assert all(spec.legacy_key == spec.key for spec in graph.specs.values())  # nothing of theirs was a leak


@pytest.mark.slow
def test_paper_keys_equal_the_stored_ones_under_their_legacy_keys(tmp_path):
    """data.root=/mnt/data/imagenet is not on this machine: its fingerprint reads `unread <root>`, so every spec
    downstream of the real data has a new key; each one's legacy key is the one stored at 28018d9."""
    graph = graph_of("paper", tmp_path)
    legacy = {f"{s.kind}/{s.legacy_key}" for s in graph.specs.values()}
    for spec in graph.specs.values():
        legacy |= tiny_models(spec.identity(legacy=True))
    assert sorted(legacy) == GOLDEN["artifacts"]["paper"]
    moved = {s.kind for s in graph.specs.values() if s.key != s.legacy_key}
    kept = {s.kind for s in graph.specs.values() if s.key == s.legacy_key}
    assert "real" in moved and "synthetic" in kept  # diffusers datasets never read the real data: kept
