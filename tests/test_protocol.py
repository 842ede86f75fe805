"""experiment=paper is the study, point by point: every row of PROTOCOL.md holds in the composed config."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from synthray.config import compose
from synthray.protocol import mismatches, render, rows
from synthray.sweep.plan import trials
from tests.rig import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_protocol_row_holds_for_experiment_paper():
    cfg = compose(["experiment=paper"])
    assert mismatches(cfg) == []
    assert len(rows()) >= 20 and all(r["paper"] and r["file"] and r["switch"] for r in rows())


def test_protocol_md_is_the_table_the_test_checks():
    assert (ROOT / "PROTOCOL.md").read_text() == render(), "regenerate: python -m synthray.protocol > PROTOCOL.md"


def test_synthray_config_shows_every_row(tmp_path):
    """What `synthray config experiment=paper` prints holds every key of the table, with the study's value."""
    printed = OmegaConf.create(yaml.safe_load(run_cli("config", "experiment=paper", cwd=tmp_path).stdout))
    assert mismatches(printed) == []


def test_the_switches_move_off_the_study():
    """A deliberate deviation is a named switch, and the check notices it."""
    off = compose(["experiment=paper", "generation.dtype=bfloat16", "generation.stored_size=256",
                   "generators.sd21.scheduler=null"])
    found = "\n".join(mismatches(off))
    assert "generation.dtype is 'bfloat16'" in found and "generation.stored_size is 256" in found
    assert "generators.sd21.scheduler is None" in found


def test_the_full_grids():
    paper, texture = compose(["experiment=paper"]), compose(["experiment=paper-texture"])
    # The paper's figures show 13 generators; SD2.0 and PixArt-α are the named extension (paper-extended).
    assert list(paper.grid.generator) == ["sd15", "sd21", "sdxl", "sdxl-turbo", "sd3-medium", "flux1-dev", "flux1-schnell",
                                          "sd35-large", "sd35-large-turbo", "sd35-medium", "sana", "lumina2", "qwen-image"]
    assert list(paper.grid.prompt_style) == ["classname", "caption"]
    assert list(paper.grid.probe) == ["rgb", "depth", "lowpass", "highpass"] and len(paper.grid.arch) == 4
    assert len(trials(paper)) == 13 * 2 * 4 * 4
    extended = compose(["experiment=paper-extended"])
    assert set(extended.grid.generator) - set(paper.grid.generator) == {"sd20", "pixart-alpha"}
    assert len(extended.grid.generator) == 15 and mismatches(extended) == []
    assert list(texture.grid.arch) == ["bagnet9"] and list(texture.grid.probe) == ["texture"]
    assert list(texture.grid.generator) == list(paper.grid.generator)
    assert mismatches(texture) == []  # the texture sweep is the paper's protocol with another grid


def test_every_row_has_a_status_and_the_audits_points_are_rows():
    from synthray.protocol import STATUSES

    found = {r["item"]: r["status"] for r in rows()}
    assert set(found.values()) <= set(STATUSES)
    for item, status in {"Test geometry": "same", "Data order": "same", "RGB augmentation details": "same", "Training input": "same",
                         "Bad images": "same", "CFG 0": "same", "Captions per class": "not pinned down",
                         "PRDC reference set": "not pinned down", "Turbo and schnell steps and CFG": "not pinned down",
                         "Checkpoints": "not pinned down", "Class-name template": "same",
                         "CLIP feature dtype": "not pinned down", "CLIPScore": "not pinned down",
                         "GenEval": "not pinned down"}.items():
        assert found.get(item) == status, item
    assert found["VAE control"] == "same"  # experiment=paper-controls; the earlier one: paper-controls-holdout
    assert "| Status |" in render()


def test_published_geneval_scores_have_sources_and_are_never_keyed(tmp_path):
    """synthray/conf/geneval.csv: a score only with its source and link; none estimated (empty where no citable
    score was found); joined into the table, never part of a key; CLIPScore's scale likewise only rescales the column."""
    import pandas as pd

    from synthray.graph.identity import metrics_identity
    from synthray.sweep.geneval import PUBLISHED, load_geneval

    table = pd.read_csv(PUBLISHED, dtype=str, keep_default_na=False)
    paper = compose(["experiment=paper-extended"])
    assert set(table["generator"]) == set(paper.grid.generator)
    scored = table[table["geneval"] != ""]
    assert (scored["source"] != "").all() and scored["link"].str.startswith("https://").all()
    assert set(table["generator"]) - set(scored["generator"]) == {"sd20", "sd35-large-turbo"}
    assert load_geneval(paper) == {g: float(v) for g, v in zip(scored["generator"], scored["geneval"])}
    assert metrics_identity(paper) == metrics_identity(compose(["experiment=paper-extended", "metrics.geneval=null",
                                                                "metrics.clipscore.scale=torchmetrics"]))


def test_clipscore_in_the_paper_table_is_the_raw_cosine(tmp_path):
    """Results keep torchmetrics' 100 cos (floored at 0); `scale: cosine` (experiment=paper) shows the cosine."""
    from synthray.sweep.runner import collect

    rows = [{"generator": "sd15", "prompt_style": "classname", "arch": "tv:resnet50", "probe": "rgb", "clipscore": 16.25}]
    for scale, expected in (("cosine", 0.1625), ("torchmetrics", 16.25)):
        cfg = compose(["experiment=paper", f"storage={tmp_path}", f"metrics.clipscore.scale={scale}"])
        table, _ = collect(cfg, str(tmp_path / scale), rows=[dict(r) for r in rows])
        assert table["clipscore"].tolist() == [expected]
