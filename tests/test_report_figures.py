"""The paper's figures, one to one, on a full paper-shaped results table (tests/paper_table.py): each figure holds
exactly the paper's subset (architecture, probe, prompt-style split), and the page has them all and renders."""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from synthray.report import paper
from synthray.report.common import Skip, spearman, stand_in
from synthray.report.figures import FIGURES as ALL_FIGURES
from synthray.report.page import write_report
from tests.browser import assert_renders
from tests.paper_table import ARCHS, CONTROLS, GENERATORS, HOLDOUT_CONTROLS, STYLES, paper_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import rehearsal_checks  # noqa: E402  (scripts/ is not a package)

# The classification figures: these results have no dense task (the dense figure: tests/test_dense_trials.py)
FIGURES = {n: s for n, s in ALL_FIGURES.items() if s.when is None}

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


VAE_ROWS = ["sd15 VAE (vae-reencode:sd15)", "sdxl VAE (vae-reencode:sdxl)", "flux1-dev VAE (vae-reencode:flux1-dev)"]


def test_vae_table_real_and_each_vae_on_three_views(table):
    """experiment=paper-controls: the baseline is the real model on the same training images (Real->Real)."""
    drawn = paper.vae_bottleneck(table)
    assert drawn.figure is None and len(drawn.rows) == 4 * 3 and set(drawn.rows["arch"]) == {"tv:resnet50"}
    assert set(drawn.rows["generator"]) == {"real", *CONTROLS} and set(drawn.rows["probe"]) == {"rgb", "highpass", "lowpass"}
    shown = re.findall(r"<tr><td>([^<]+)</td>", drawn.html)
    assert shown == ["real images, the full training set (Real→Real)", *VAE_ROWS]  # real first, then release order
    real = _value(table, "real_to_real_acc", generator="vae-reencode:sd15", arch="tv:resnet50", probe="highpass")
    vae = _value(table, generator="vae-reencode:sdxl", arch="tv:resnet50", probe="highpass")
    assert f"{vae:.3f} ({vae - real:+.3f})" in drawn.html and f"<td class=\"num\">{real:.3f}</td>" in drawn.html
    assert drawn.note is None


def test_vae_table_of_the_holdout_switch_compares_real_holdout():
    """experiment=paper-controls-holdout: the held-out real images (real-holdout) are the baseline, as before."""
    table = paper_table(controls="holdout")
    drawn = paper.vae_bottleneck(table)
    assert len(drawn.rows) == 4 * 3 and set(drawn.rows["generator"]) == set(HOLDOUT_CONTROLS)
    assert re.findall(r"<tr><td>([^<]+)</td>", drawn.html) == ["held-out real images (real-holdout)", *VAE_ROWS]
    real = _value(table, generator="real-holdout", arch="tv:resnet50", probe="lowpass")
    vae = _value(table, generator="vae-reencode:flux1-dev", arch="tv:resnet50", probe="lowpass")
    assert f"{vae:.3f} ({vae - real:+.3f})" in drawn.html


def test_missing_inputs_are_notes_naming_the_papers_subset(table):
    # ResNet-50 is in the results but not on rgb (or not on the controls): no stand-in, the paper's subset is named
    no_rgb = table[(table["arch"] != "tv:resnet50") | (table["probe"] != "rgb")]
    for draw in (paper.release_date, paper.asymmetry):
        with pytest.raises(Skip, match=r"ResNet-50 \(tv:resnet50\).*no such trial \(arch: tv:convnext_tiny"):
            draw(no_rgb)
    no_controls = table[(table["arch"] != "tv:resnet50") | table["generator"].isin(GENERATORS)]
    with pytest.raises(Skip, match=r"ResNet-50 \(tv:resnet50\) trials of the controls.*no such trial \(arch: tv:conv"):
        paper.vae_bottleneck(no_controls)
    assert len(paper.geneval(table[table["arch"] != "tv:resnet50"]).figure.axes) == 3  # the other panels stay
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_full_paper_page_renders_in_a_real_browser(page, tmp_path):
    assert_renders(page, tmp_path / "shot.png", min_images=len(FIGURES) - 1)


# Results with no ResNet-50 at all: the smoke run (tiny-cnn) and the dress rehearsal (timm's test_resnet).
STAND_IN = "The paper shows ResNet-50 (tv:resnet50); these results have none, so {} stands in."
RESNET_FIGURES = ["release_date", "structure_texture", "frequency", "density_coverage", "asymmetry", "vae_bottleneck"]


@pytest.fixture(scope="module")
def stand_in_table(table) -> pd.DataFrame:
    """The paper table with test_resnet and tiny-cnn in the places of ResNet-50 and ViT-Tiny, and no other."""
    names = {"vit_tiny_patch16_224": "test_resnet", "tv:resnet50": "tiny-cnn"}
    return table[table["arch"].isin(names)].replace({"arch": names}).reset_index(drop=True)


@pytest.mark.parametrize("archs, chosen", [
    (["tv:swin_t", "bagnet9", "test_resnet", "tiny-cnn"], "test_resnet"),  # ResNet-like first (the full rehearsal)
    (["tiny-cnn"], "tiny-cnn"),  # the smoke run
    (["tiny-cnn", "vit_tiny_patch16_224", "tv:swin_t"], "vit_tiny_patch16_224"),  # then ARCH_ORDER, then by name
    (["tv:swin_t", "resnet18", "tv:resnet50"], "tv:resnet50"),
])
def test_the_stand_in_is_resnet_like_first_then_by_arch_order(archs, chosen):
    assert stand_in(archs) == chosen


@pytest.mark.parametrize("name", RESNET_FIGURES)
def test_without_resnet50_each_figure_draws_a_named_stand_in(stand_in_table, name):
    drawn = getattr(paper, name)(stand_in_table)
    assert drawn.note.startswith(STAND_IN.format("test_resnet")), drawn.note
    assert set(drawn.rows["arch"]) == {"test_resnet"} and "tiny-cnn" not in set(drawn.rows.get("rgb_arch", []))
    if name == "vae_bottleneck":
        assert "<caption>Synth→Real of test_resnet</caption>" in drawn.html and len(drawn.rows) == 4 * 3
        return
    fig = drawn.figure
    labels = [t for ax in fig.axes for t in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())]
    labels.append(fig._suptitle.get_text() if fig._suptitle else "")
    assert any("test_resnet" in t for t in labels), labels
    assert not any("tv:resnet50" in t or "tiny-cnn" in t for t in labels), labels
    if name in ("structure_texture", "frequency"):
        assert set(drawn.rows["rgb_arch"]) == {"test_resnet"} and len(drawn.rows) == 2 * 13 * 2
        assert "Synth→Real, rgb (test_resnet)" in labels and "for ResNet-50" in fig._suptitle.get_text()
    else:
        assert len(drawn.rows) == 13 * 2
    source = stand_in_table[(stand_in_table["arch"] == "test_resnet") & (stand_in_table["probe"] == "rgb")]
    value = drawn.rows.get(ACC, drawn.rows.get("rgb_acc")).iloc[0]
    row = drawn.rows.iloc[0]
    assert value == pytest.approx(_value(source, generator=row["generator"], prompt_style=row["prompt_style"]))


def test_the_smoke_runs_tiny_cnn_stands_in_alone(stand_in_table):
    smoke = stand_in_table[stand_in_table["arch"] == "tiny-cnn"]
    drawn = paper.asymmetry(smoke)
    assert set(drawn.rows["arch"]) == {"tiny-cnn"} and drawn.note == STAND_IN.format("tiny-cnn")
    assert drawn.figure.axes[0].get_title() == "Real→Synth against Synth→Real: tiny-cnn, rgb"


@pytest.mark.slow
def test_the_stand_in_page_draws_every_figure_and_says_so(stand_in_table, tmp_path):
    """GenEval and CLIPScore keep one panel per architecture; every ResNet-50 figure names test_resnet."""
    stand_in_table.to_parquet(tmp_path / "r.parquet", index=False)
    page = write_report([str(tmp_path / "r.parquet")], tmp_path / "report", str(tmp_path), per_class=True)
    text = page.read_text()
    assert "Not drawn" not in text and text.count(html.escape(STAND_IN.format("test_resnet"))) == len(RESNET_FIGURES)
    for name in ("geneval", "clipscore"):
        rows = pd.read_csv(page.parent / "figures" / f"{name}.csv")
        assert list(rows["arch"].unique()) == ["test_resnet", "tiny-cnn"], name
    for name in ("release-date", "structure-texture", "frequency", "density-coverage", "asymmetry", "vae-bottleneck",
                 "per-class"):
        assert set(pd.read_csv(page.parent / "figures" / f"{name}.csv")["arch"]) == {"test_resnet"}, name


def _rehearsal(table: pd.DataFrame, folder, full: bool):
    """The rehearsal's sweeps, shaped from the paper table (test_resnet for ResNet-50, timm's test_vit and
    test_convnext, torchvision's swin_t, bagnet9 on texture), as results files named like its sweeps."""
    names = {"tv:resnet50": "test_resnet", "vit_tiny_patch16_224": "test_vit", "tv:convnext_tiny": "test_convnext"}
    table = table.replace({"arch": names})
    main = table[(table["arch"] == "test_resnet") & (table["probe"] == "rgb") & table["generator"].isin(GENERATORS)]
    sweeps = {"rehearsal": main if full else main[main["generator"].isin(["sd15", "sd3-medium", "flux1-schnell"])
                                                  & (main["prompt_style"] == "classname")]}
    if full:
        sd15 = table[(table["generator"] == "sd15") & (table["prompt_style"] == "classname")]
        sweeps["rehearsal-probes"] = sd15[sd15["probe"].isin(["rgb", "depth", "lowpass", "highpass"])]
        texture = sd15[(sd15["arch"] == "test_resnet") & (sd15["probe"] == "texture")]
        sweeps["rehearsal-texture"] = texture.assign(arch="bagnet9")
        controls = table[(table["arch"] == "test_resnet") & (table["probe"] == "rgb")]
        sweeps["rehearsal-controls"] = controls[controls["generator"].isin(["real-holdout", "vae-reencode:sd15"])]
    for name, rows in sweeps.items():
        rows.to_parquet(folder / f"{name}.parquet", index=False)
    page = write_report([str(folder / f"{name}.parquet") for name in sweeps], folder / "report", str(folder))
    return list(sweeps), page


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True], ids=["cut-down", "full"])
def test_the_rehearsals_report_check_counts_exactly_the_figures_it_cannot_draw(table, tmp_path, full):
    sweeps, page = _rehearsal(table, tmp_path, full)
    figures = rehearsal_checks.report_figures(page.parent)
    assert sorted(figures["not drawn"]) == rehearsal_checks.undrawable(sweeps)
    assert rehearsal_checks.undrawable(sweeps) == ([] if full else ["frequency", "structure-texture", "vae-bottleneck"])
    assert figures["drawn"] == [n for n in FIGURES if n not in figures["not drawn"] and FIGURES[n].flag is None]
    assert set(figures["stand-in"]) == {"release-date", "density-coverage", "asymmetry"} | (
        {"structure-texture", "frequency", "vae-bottleneck"} if full else set())
    if full:  # the probe figures: test_resnet on rgb, depth, high- and low-pass, bagnet9 on texture
        rows = pd.read_csv(page.parent / "figures" / "structure-texture.csv")
        assert dict(zip(rows["probe"], rows["arch"])) == {"depth": "test_resnet", "texture": "bagnet9"}
