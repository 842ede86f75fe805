"""`synthray report`: the study's figures from results tables, merged sweeps, skipped figures, and a real browser."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from synthray.report.figures import FIGURES as ALL_FIGURES
from synthray.report.figures import _spearman
from synthray.report.page import write_report
from tests.browser import assert_renders
from tests.rig import run_cli

# The classification figures: these results have no dense task (the dense figure: tests/test_dense_trials.py)
FIGURES = {n: s for n, s in ALL_FIGURES.items() if s.when is None}

RELEASED = {"sd15": "2022-10-20", "sd21": "2022-12-07", "sdxl": "2023-07-26", "flux1-dev": "2024-08-01"}


def _results(probes=("rgb", "depth", "lowpass", "highpass"), archs=("tv:resnet50", "vit_tiny_patch16_224")) -> pd.DataFrame:
    """A results table shaped like `collect` writes it: 4 generators x archs x probes, 10 classes."""
    rng = np.random.default_rng(0)
    rows = []
    for (i, gen), arch, probe in itertools.product(enumerate(RELEASED), archs, probes):
        acc = 0.3 + 0.1 * i + rng.normal(0, 0.02)
        per_class = np.clip(acc + rng.normal(0, 0.1, 10), 0, 1)
        rows.append({"generator": gen, "prompt_style": "classname", "arch": arch, "probe": probe,
                     "synth_to_real_acc": acc, "real_to_synth_acc": acc + 0.2, "real_to_real_acc": 0.8,
                     "density": 0.5 + 0.1 * i, "coverage": 0.4 + 0.1 * i, "clipscore": 25 + i, "geneval": 0.4 + 0.05 * i,
                     "released": RELEASED[gen], "synth_to_real_per_class": list(per_class),
                     "clip_per_class": {"coverage": {str(c): float(v) for c, v in enumerate(per_class)},
                                        "density": {str(c): float(v) * 1.5 for c, v in enumerate(per_class)}},
                     "status": "done"})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_every_figure_from_a_full_table_as_png_svg_and_embedded(tmp_path):
    main, texture = tmp_path / "main.parquet", tmp_path / "texture.parquet"
    _results().to_parquet(main)
    _results(probes=("texture",), archs=("bagnet9",)).to_parquet(texture)
    page = write_report([str(main), str(texture)], tmp_path / "report", str(tmp_path), heatmap=("sdxl", "tv:resnet50"),
                        per_class=True)
    text = page.read_text()
    drawn = [name for name in FIGURES if name != "vae-bottleneck"]  # no VAE control in these results
    for name in drawn:
        assert (tmp_path / "report" / "figures" / f"{name}.png").stat().st_size > 1000, name
        assert (tmp_path / "report" / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml"), name
        assert (tmp_path / "report" / "figures" / f"{name}.csv").stat().st_size > 0, name
        assert f'alt="{name}"' in text
    assert text.count("data:image/png;base64,") == len(drawn)  # self-contained: every figure embedded
    assert text.count("Not drawn") == 1 and "Not drawn: the results have no VAE control" in text
    means = _results().groupby("generator")[["clipscore", "synth_to_real_acc"]].mean()
    assert _spearman(means["clipscore"], means["synth_to_real_acc"]) == pytest.approx(1.0)  # the toy scores rank alike
    assert f"{4 * 2 * 4 + 4} trials from main, texture" in text  # both sweeps, merged
    texture_rows = pd.read_csv(tmp_path / "report" / "figures" / "structure-texture.csv")
    assert set(texture_rows.loc[texture_rows["probe"] == "texture", "arch"]) == {"bagnet9"}  # the paper's texture model
    assert "texture" in text and 'class="sortable"' in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.tmp")]


def test_a_missing_column_skips_its_figure_with_a_note(tmp_path):
    table = _results(probes=("rgb",)).drop(columns=["clipscore", "geneval", "released"])
    table.to_parquet(tmp_path / "r.parquet")
    text = write_report([str(tmp_path / "r.parquet")], tmp_path / "out", str(tmp_path)).read_text()
    assert "Not drawn: the results have no release dates." in text
    assert "Not drawn: the results have no CLIPScore (metrics.clipscore.model)." in text
    assert "Not drawn: the results have no depth or texture trial" in text
    assert text.count("data:image/png;base64,") == 3  # density-coverage, asymmetry, per-class
    assert "density-coverage-per-class" not in text  # only with --per-class


def test_a_smoke_shaped_table_draws_with_its_own_classifier_standing_in(tmp_path):
    """No ResNet-50 (the smoke run's tiny-cnn, rgb only): the ResNet-50 figures show tiny-cnn and say so; only the
    figures that need probes or VAE controls are notes."""
    _results(probes=("rgb",), archs=("tiny-cnn",)).to_parquet(tmp_path / "r.parquet")
    text = write_report([str(tmp_path / "r.parquet")], tmp_path / "out", str(tmp_path)).read_text()
    assert text.count("Not drawn") == 3 and "Not drawn: the results have no depth or texture trial" in text
    assert "Not drawn: the results have no highpass or lowpass trial" in text and "no VAE control" in text
    assert text.count("these results have none, so tiny-cnn stands in.") == 3  # release date, density, asymmetry
    assert text.count("data:image/png;base64,") == 6
    assert set(pd.read_csv(tmp_path / "out" / "figures" / "release-date.csv")["arch"]) == {"tiny-cnn"}


@pytest.mark.slow
def test_report_reads_sweeps_from_storage_uris(tmp_path, s3_server):
    """A results file in a bucket is an input like a local one."""
    from synthray.core import storage

    uri = "s3://synthray-test/report/sweeps/main-20260101-000000/results.parquet"
    buf = _results().to_parquet()
    storage.write_bytes(uri, buf)
    page = write_report([uri], tmp_path / "out", str(tmp_path))
    assert "main-20260101-000000" in page.read_text()


@pytest.mark.parametrize("args, needle", [
    (["report", "storage={tmp}"], "no sweep under"),
    (["report", "{tmp}/missing.parquet"], "report: no results file"),
    (["report", "--heatmap", "sd15", "{tmp}/r.parquet"], "--heatmap takes GENERATOR/ARCH"),
])
@pytest.mark.slow
def test_bad_report_input_is_one_line_and_writes_nothing(tmp_path, args, needle):
    _results().to_parquet(tmp_path / "r.parquet")
    done = run_cli(*[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_report_renders_in_a_real_browser(tmp_path):
    _results().to_parquet(tmp_path / "r.parquet")
    page = write_report([str(tmp_path / "r.parquet")], tmp_path / "out", str(tmp_path))
    check = assert_renders(page, tmp_path / "shot.png", min_images=7)  # every figure but the VAE table and --per-class
    assert json.dumps(check)  # the figures loaded, no console error, not blank
