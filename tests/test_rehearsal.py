"""The dress rehearsal (scripts/rehearsal.py) on a simulated mixed cluster: labelled fake-GPU nodes, a CPU-only
token-auth head, moto S3, staged real data, `synthray submit`, a node killed mid-sweep, `synthray resume --submit`.

The cut-down version (three generator families, FLUX among them, class names only) runs in the default tier. The
full one (15 generators x 2 prompt styles, probes, texture, controls) runs with SYNTHRAY_FULL_REHEARSAL=1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import rehearsal  # noqa: E402

pytestmark = pytest.mark.slow


def _check(figures: dict) -> None:
    print({k: v for k, v in figures.items() if k != "ok"})
    assert figures["ok"], figures["failures"]
    place = figures["placement"]
    assert place["big generations"] >= 1 and not place["big generations off the 80 GB node"]
    assert not place["on the head"] and figures["trial resources"]["with a GPU"] == 0
    assert figures["resume job"] == "SUCCEEDED" and not figures["rebuilt after the resume"]
    # The first job ends FAILED only through trials that the kill interrupted, and the resume ran exactly those.
    assert figures["first job"] == ("FAILED" if figures["resume ran trials"] else "SUCCEEDED")


@pytest.mark.timeout(1800)
def test_cut_down_rehearsal_places_every_stage_and_resumes_after_a_node_dies(tmp_path):
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    figures = rehearsal.rehearse(tmp_path, rehearsal.CUT_DOWN, ["classname"], {}, kill=True, train=10, test=5)
    assert os.environ.get("AWS_ENDPOINT_URL") == endpoint  # the session's own S3 server stays the one tests reach
    assert figures["trials done"] == {"rehearsal": f"{len(rehearsal.CUT_DOWN)}/{len(rehearsal.CUT_DOWN)}"}
    _check(figures)


@pytest.mark.skipif(os.environ.get("SYNTHRAY_FULL_REHEARSAL") != "1", reason="the full rehearsal: SYNTHRAY_FULL_REHEARSAL=1")
@pytest.mark.timeout(3600)
def test_full_rehearsal(tmp_path):
    figures = rehearsal.rehearse(tmp_path, None, ["classname", "caption"], rehearsal.SIBLINGS, kill=True)
    assert set(figures["trials done"]) == {"rehearsal", *rehearsal.SIBLINGS}
    _check(figures)
