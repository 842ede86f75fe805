"""The control generators show the study's mechanism on the embedded digits: what matters is coverage."""

import pytest

from synthray.sweep.trial import run_point
from tests.conftest import tiny_cfg


@pytest.mark.slow
@pytest.mark.deep  # a minute on 2 cores; the controls' plumbing is checked in CI by test_controls_study and test_reencode
def test_collapsed_control_has_low_coverage_and_transfers_worse_than_real_holdout(ray_cluster, shared_storage):
    cfg = tiny_cfg(shared_storage, "prompts.n_per_class=30", "recipe.epochs=12", "recipe.batch_size=32",
                   "metrics.max_samples=300")
    rows = {g: run_point(cfg, {"generator": g, "prompt_style": "classname", "arch": "tiny-cnn", "probe": "rgb"})
            for g in ("real-holdout", "collapsed")}
    held, collapsed = rows["real-holdout"], rows["collapsed"]
    # Collapsed images are the most typical real images, so they sit in dense real regions (density > 1) ...
    assert collapsed["density"] > 1.2 and 0.7 < held["density"] < 1.3
    # ... but cover little of it, and a classifier trained on them transfers worse to real test images.
    assert collapsed["coverage"] < held["coverage"] - 0.3
    assert collapsed["synth_to_real_acc"] < held["synth_to_real_acc"] - 0.05
    assert held["synth_to_real_acc"] > 0.6
