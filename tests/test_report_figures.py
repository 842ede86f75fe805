"""The paper's figures, one to one, on a full paper-shaped results table (tests/paper_table.py): each figure holds
exactly the paper's subset (architecture, probe, prompt-style split), and the page has them all and renders."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from synthray.report import paper
from synthray.report.common import Skip, spearman
from synthray.report.figures import FIGURES
from synthray.report.page import write_report
from tests.browser import assert_renders
from tests.paper_table import ARCHS, CONTROLS, GENERATORS, STYLES, paper_table

ACC = "synth_to_real_acc"
UNSCORED = {"sd35-large-turbo"}  # no published GenEval (synthray/conf/geneval.csv)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return paper_table()


@pytest.fixture(scope="module")
def page(table, tmp_path_factory):
    folder = tmp_path_factory.mktemp("paper")
    table.to_parquet(folder / "paper.parquet", index=False)
    return write_report([str(folder / "paper.parquet")], folder / "report", str(folder), per_class=True)


def _value(table: pd.DataFrame, column: str = ACC, **axes: str) -> float:
    rows = table
    for axis, v in axes.items():
        rows = rows[rows[axis] == v]
    assert len(rows) == 1, axes
    return float(rows[column].iloc[0])


def _pairs(rows: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(rows["generator"], rows["prompt_style"]))


def test_release_date_is_resnet50_rgb_one_point_per_generator_and_style(table):
    drawn = paper.release_date(table)
    rows = drawn.rows
    assert len(rows) == 13 * 2 and _pairs(rows) == {(g, s) for g in GENERATORS for s in STYLES}
    assert set(rows["arch"]) == {"tv:resnet50"} and set(rows["probe"]) == {"rgb"} and set(rows["n"]) == {1}
    assert rows.set_index(["generator", "prompt_style"]).at[("sana", "caption"), ACC] == pytest.approx(
        _value(table, generator="sana", prompt_style="caption", arch="tv:resnet50", probe="rgb"))
    ax = drawn.figure.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 26  # what is on the canvas, too
    labels = [line.get_label() for line in ax.get_lines()]
    assert sum(label.startswith("trend") for label in labels) == 2 and any("Real→Real" in label for label in labels)


@pytest.mark.parametrize("name, column, per_panel", [("geneval", "geneval", 12), ("clipscore", "clipscore", 13)])
def test_geneval_and_clipscore_one_panel_per_architecture_classname_rgb(table, name, column, per_panel):
    drawn = getattr(paper, name)(table)
    rows = drawn.rows
    assert len(drawn.figure.axes) == 4 and list(rows["arch"].unique()) == ARCHS
    assert set(rows["prompt_style"]) == {"classname"} and set(rows["probe"]) == {"rgb"}
    assert rows.groupby("arch").size().to_dict() == {a: per_panel for a in ARCHS}
    assert not {"real-holdout", *CONTROLS} & set(rows["generator"])
    if name == "geneval":
        assert not UNSCORED & set(rows["generator"]) and "No GenEval for: sd35-large-turbo." in drawn.note
    for arch, panel in rows.groupby("arch"):
        source = table[(table["arch"] == arch) & (table["probe"] == "rgb") & (table["prompt_style"] == "classname")]
        source = source[source["generator"].isin(GENERATORS)].dropna(subset=[column])
        assert panel["spearman"].iloc[0] == pytest.approx(spearman(source[column], source[ACC]))
        assert f"ρ = {panel['spearman'].iloc[0]:.2f}" in drawn.figure.axes[ARCHS.index(arch)].get_title()


@pytest.mark.parametrize("name, probes", [("structure_texture", ["depth", "texture"]), ("frequency", ["highpass", "lowpass"])])
def test_probe_figures_are_probe_against_resnet50_rgb_by_style(table, name, probes):
    rows = getattr(paper, name)(table).rows
    assert list(rows["probe"].unique()) == probes and len(rows) == len(probes) * 13 * 2
    assert set(rows["arch"]) == {"tv:resnet50"} and set(rows["rgb_arch"]) == {"tv:resnet50"}
    for probe in probes:
        assert _pairs(rows[rows["probe"] == probe]) == {(g, s) for g in GENERATORS for s in STYLES}
    row = rows[(rows["probe"] == probes[1]) & (rows["generator"] == "sdxl") & (rows["prompt_style"] == "classname")].iloc[0]
    assert row["probe_acc"] == pytest.approx(_value(table, generator="sdxl", prompt_style="classname",
                                                    arch="tv:resnet50", probe=probes[1]))
    assert row["rgb_acc"] == pytest.approx(_value(table, generator="sdxl", prompt_style="classname",
                                                  arch="tv:resnet50", probe="rgb"))


def test_texture_is_bagnet9_where_the_results_have_it(table):
    bagnet = table[(table["probe"] == "texture") & (table["arch"] == "tv:resnet50")].assign(arch="bagnet9")
    rows = paper.structure_texture(pd.concat([table, bagnet], ignore_index=True)).rows
    assert set(rows.loc[rows["probe"] == "texture", "arch"]) == {"bagnet9"}
    assert set(rows.loc[rows["probe"] == "depth", "arch"]) == {"tv:resnet50"}


def test_density_coverage_one_point_per_generator_coloured_by_resnet50_rgb(table):
    drawn = paper.density_coverage(table)
    rows = drawn.rows
    assert len(rows) == 13 * 2 and set(rows["arch"]) == {"tv:resnet50"} and set(rows["probe"]) == {"rgb"}
    assert [ax.get_title() for ax in drawn.figure.axes[:2]] == ["class-name prompts", "caption prompts"]
    colour = rows.set_index(["generator", "prompt_style"]).at[("flux1-dev", "classname"), ACC]
    assert colour == pytest.approx(_value(table, generator="flux1-dev", prompt_style="classname", arch="tv:resnet50", probe="rgb"))


def test_asymmetry_is_resnet50_rgb_by_style(table):
    rows = paper.asymmetry(table).rows
    assert len(rows) == 26 and set(rows["arch"]) == {"tv:resnet50"} and set(rows["probe"]) == {"rgb"}
    assert set(rows["prompt_style"]) == set(STYLES)


def test_vae_table_real_and_each_vae_on_three_views(table):
    drawn = paper.vae_bottleneck(table)
    assert drawn.figure is None and len(drawn.rows) == 4 * 3 and set(drawn.rows["arch"]) == {"tv:resnet50"}
    assert set(drawn.rows["generator"]) == set(CONTROLS) and set(drawn.rows["probe"]) == {"rgb", "highpass", "lowpass"}
    shown = re.findall(r"<tr><td>([^<]+)</td>", drawn.html)
    assert shown == ["real images (real-holdout)", "sd15 VAE (vae-reencode:sd15)", "sdxl VAE (vae-reencode:sdxl)",
                     "flux1-dev VAE (vae-reencode:flux1-dev)"]  # real first, then the VAEs in release order
    real = _value(table, generator="real-holdout", arch="tv:resnet50", probe="highpass")
    vae = _value(table, generator="vae-reencode:sdxl", arch="tv:resnet50", probe="highpass")
    assert f"{vae:.3f} ({vae - real:+.3f})" in drawn.html


def test_missing_inputs_are_notes_naming_the_papers_subset(table):
    no_resnet = table[table["arch"] != "tv:resnet50"]
    for draw in (paper.release_date, paper.asymmetry, paper.vae_bottleneck):
        with pytest.raises(Skip, match=r"ResNet-50 \(tv:resnet50\).*no such trial \(arch: tv:convnext_tiny"):
            draw(no_resnet)
    assert len(paper.geneval(no_resnet).figure.axes) == 3  # the other architectures' panels stay
    with pytest.raises(Skip, match="no VAE control"):
        paper.vae_bottleneck(table[table["generator"].isin(GENERATORS)])
    rgb_only = table[table["probe"] == "rgb"]
    with pytest.raises(Skip, match="no highpass or lowpass trial"):
        paper.frequency(rgb_only)
    partial = paper.structure_texture(table[table["probe"] != "texture"])
    assert set(partial.rows["probe"]) == {"depth"} and "No panel for texture" in partial.note


def test_duplicate_trials_are_averaged_and_said(table):
    twice = pd.concat([table, table.assign(synth_to_real_acc=table[ACC] + 0.1)], ignore_index=True)
    drawn = paper.release_date(twice)
    assert len(drawn.rows) == 26 and set(drawn.rows["n"]) == {2} and "average up to 2 trials" in drawn.note
    one = drawn.rows.set_index(["generator", "prompt_style"]).at[("sd15", "classname"), ACC]
    assert one == pytest.approx(_value(table, generator="sd15", prompt_style="classname", arch="tv:resnet50", probe="rgb") + 0.05)


def test_the_full_paper_page_has_every_figure_with_caption_and_reading(page):
    text = page.read_text()
    assert "Not drawn" not in text
    for name, spec in FIGURES.items():
        section = re.search(rf'<section id="{name}">(.*?)</section>', text, re.S)
        assert section, name
        assert spec.title in section.group(1) and "How to read it:" in section.group(1), name
        rows = pd.read_csv(page.parent / "figures" / f"{name}.csv")
        assert f"the CSV holds the {len(rows)} points" in section.group(1), name
    assert text.count("data:image/png;base64,") == len(FIGURES) - 1  # the VAE table is HTML
    assert len(pd.read_csv(page.parent / "figures" / "release-date.csv")) == 26
    assert text.index('id="vae-bottleneck"') < text.index("Beyond the paper") < text.index('id="per-class"')
    print(f"[figure] full paper-shaped report: {page.stat().st_size / 1e6:.2f} MB (one self-contained file)")


def test_the_full_paper_page_renders_in_a_real_browser(page, tmp_path):
    assert_renders(page, tmp_path / "shot.png", min_images=len(FIGURES) - 1)
