"""The report's figures, in page order: the paper's (report/paper.py), one to one, then synthray's own views, which
say what they show beyond the paper. Each entry: title, the figure's caption, a "how to read it" line, and the
function that draws it from the merged results table (report/common.py's `Drawn`, or `Skip` with the reason).

The earlier pooled figures (Synth→Real per architecture averaged over probes and prompt styles, per probe averaged
over architectures, against CLIPScore and GenEval averaged over everything) are gone: the paper's own subsets
replace them. The per-class views stay: they show what no paper figure does, and average nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from synthray.report import paper
from synthray.report.common import PAPER_GENERATORS, STYLE_ORDER, Drawn, Skip, arch_name, look, need, ordered, plt, stand_in
from synthray.report.common import spearman as _spearman

__all__ = ["FIGURES", "Spec", "Skip", "Drawn", "_spearman"]


def per_class_heatmap(table: pd.DataFrame, generator: str | None = None, arch: str | None = None,
                      class_names: list[str] | None = None) -> Drawn:
    """Per-class Synth->Real accuracy of one generator and architecture, one row per probe and prompt style."""
    data = need(table, "synth_to_real_per_class")
    generator = generator or _first_synthetic(data)
    arch = arch or stand_in(data["arch"].unique())  # ResNet-50, else the paper figures' stand-in
    rows = data[(data["generator"] == generator) & (data["arch"] == arch)]
    if rows.empty:
        raise Skip(f"no trial of generator {generator} with architecture {arch}")
    matrix = np.array([[np.nan if v is None else float(v) for v in row] for row in rows["synth_to_real_per_class"]])
    labels = [f"{p} / {s}" for p, s in zip(rows["probe"], rows["prompt_style"])]
    names = class_names if class_names and len(class_names) == matrix.shape[1] else [str(i) for i in range(matrix.shape[1])]
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(min(16, 2 + 0.35 * matrix.shape[1]), 1.5 + 0.45 * len(labels)))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(labels)), labels)
    step = max(1, matrix.shape[1] // 40)  # at most ~40 class labels stay readable
    ax.set_xticks(range(0, matrix.shape[1], step), names[::step], rotation=90, fontsize=7)
    fig.colorbar(image, ax=ax, label="Synth→Real accuracy")
    ax.set_title(f"Per-class Synth→Real: {generator}, {arch}")
    fig.tight_layout()
    return Drawn(rows[["generator", "prompt_style", "arch", "probe"]].reset_index(drop=True), fig)


def _first_synthetic(data: pd.DataFrame) -> str:
    from synthray.graph.synthetic import control_generators

    names = ordered(data["generator"].unique(), PAPER_GENERATORS)
    real = control_generators(names)
    return ([n for n in names if n not in real] or names)[0]


def density_coverage_per_class(table: pd.DataFrame) -> Drawn:
    """Density against coverage per class: one point per generator and class, rgb trials (density and coverage
    are of the images, the same for every classifier: one trial per generator and prompt style), one panel per
    prompt style."""
    data = need(table, "density", "coverage")
    data = data[data["probe"] == "rgb"] if (data["probe"] == "rgb").any() else data
    column = _per_class_prdc_column(data)
    first = data.dropna(subset=[column]).sort_values("arch").groupby(["generator", "prompt_style"], sort=True).head(1)
    points = pd.DataFrame([{"generator": r.generator, "prompt_style": r.prompt_style, "arch": r.arch, "probe": r.probe,
                            "class": c, "coverage": v["coverage"][c], "density": v["density"][c]}
                           for r in first.itertuples() for v in [getattr(r, column)] for c in v["coverage"]])
    styles = ordered(points["prompt_style"].unique(), STYLE_ORDER)
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(styles), figsize=(5.2 * len(styles), 4.6), squeeze=False)
    for ax, style in zip(axes[0], styles):
        for i, (gen, rows) in enumerate(points[points["prompt_style"] == style].groupby("generator", sort=True)):
            ax.scatter(rows["coverage"], rows["density"], s=8, color=pyplot.get_cmap("tab20")(i % 20), label=gen, alpha=0.6)
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="coverage", ylabel="density", title=look(style)[2])
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Density against coverage per class", fontsize=11)
    fig.tight_layout()
    return Drawn(points, fig)


def _per_class_prdc_column(rows: pd.DataFrame) -> str:
    for column in rows.columns:
        values = rows[column].dropna()
        if column.endswith("_per_class") and len(values) and isinstance(values.iloc[0], dict):
            return column
    raise Skip("the results hold no per-class density and coverage (metrics.per_class=true)")


DENSE_METRICS = {"detection": ("synth_to_real_map", "box mAP@[.5:.95]"), "segmentation": ("synth_to_real_miou", "mIoU")}


def dense_vs_classification(table: pd.DataFrame) -> Drawn:
    """Detection and segmentation Synth→Real against classification Synth→Real, one point per generator and prompt
    style (rgb, the classifier of the ResNet-50 place), one panel per dense task, Spearman's ρ in each."""
    if "task" not in table or table["task"].isna().all():
        raise Skip("the results have no dense trial (grid.task=[detection] or [segmentation])")
    keys = ["generator", "prompt_style"]
    classes = need(table[table["task"].isna() & (table["probe"] == "rgb")], "synth_to_real_acc")
    arch = stand_in(classes["arch"].unique())
    classes = classes[classes["arch"] == arch].groupby(keys, as_index=False)["synth_to_real_acc"].mean()
    tasks = [t for t in DENSE_METRICS if (table["task"] == t).any()]
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.2), squeeze=False)
    shown = []
    for ax, task in zip(axes[0], tasks):
        column, name = DENSE_METRICS[task]
        dense = need(table[table["task"] == task], column).groupby(keys, as_index=False)[column].mean()
        both = classes.merge(dense, on=keys)
        if both.empty:
            raise Skip(f"no generator has both a classification ({arch}, rgb) and a {task} trial")
        for style in ordered(both["prompt_style"].unique(), STYLE_ORDER):
            part = both[both["prompt_style"] == style]
            colour, marker, label = look(style)
            ax.scatter(part["synth_to_real_acc"], part[column], c=colour, marker=marker, label=label)
            for _, r in part.iterrows():
                ax.annotate(r["generator"], (r["synth_to_real_acc"], r[column]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        rho = _spearman(both["synth_to_real_acc"], both[column])
        ax.set(xlabel=f"classification Synth→Real accuracy ({arch_name(arch)})", ylabel=f"{task} Synth→Real {name}",
               title=f"{task}: ρ = {rho:.2f}")
        ax.legend(fontsize=8)
        shown.append(both.rename(columns={column: "dense_synth_to_real"}).assign(task=task, metric=name))
    fig.tight_layout()
    return Drawn(pd.concat(shown, ignore_index=True), fig)


@dataclass(frozen=True)
class Spec:
    """One figure of the page. `paper`: the paper's figure (False: synthray's own view, its caption says what it
    shows beyond the paper); `flag`: the write_report option that turns it on (None: always drawn); `when`: whether
    the results are of its kind at all (the dense figure: a sweep with a dense task), else left off the page."""

    title: str
    caption: str
    read: str
    draw: Callable[..., Drawn]
    paper: bool = True
    flag: str | None = None
    when: Callable[[pd.DataFrame], bool] | None = None  # only for results it applies to (None: always)


R50 = "ResNet-50 (tv:resnet50)"
FIGURES: dict[str, Spec] = {
    "release-date": Spec(
        "Synth→Real against release date",
        f"{R50} classifiers trained only on each generator's images (rgb) and tested on real images, against the "
        "generator's release date: one point per generator and prompt style, a linear trend per prompt style, and "
        "the Real→Real accuracy of the same classifier trained on real images. The paper finds a downward trend: "
        "newer generators make worse training data, despite better-looking images.",
        "A trend line falling to the right means newer generators give worse training data; the gap below the "
        "dashed Real→Real line is what training on synthetic images costs.",
        paper.release_date),
    "geneval": Spec(
        "Synth→Real against GenEval",
        "Synth→Real against each generator's published GenEval score (prompt following), one panel per "
        "architecture, class-name prompts, rgb, with Spearman's rank correlation ρ in each panel.",
        "ρ near +1: generators that follow prompts better also train better classifiers; near 0 or below: the "
        "benchmark does not predict usefulness. The same sign in every panel means it is not one architecture's quirk.",
        paper.geneval),
    "clipscore": Spec(
        "Synth→Real against CLIPScore",
        "Synth→Real against each generator's CLIPScore (the raw CLIP ViT-B/32 cosine between image and prompt), one "
        "panel per architecture, class-name prompts, rgb, with Spearman's ρ in each panel.",
        "As for GenEval: ρ says whether image-text agreement ranks the generators as their training data does.",
        paper.clipscore),
    "structure-texture": Spec(
        "Structure and texture against RGB",
        "Synth→Real of classifiers trained on one cue of each generator's images, structure (depth maps) and "
        "texture (small patches; BagNet-9 where the results have it, else ResNet-50), against the same generator's "
        f"rgb Synth→Real ({R50}), one point per generator and prompt style, with the diagonal.",
        "Above the diagonal the cue alone transfers to real images better than the full image does; a cue whose "
        "points stay up while rgb falls is one newer generators still get right.",
        paper.structure_texture),
    "frequency": Spec(
        "High-pass and low-pass against RGB",
        "Synth→Real of ResNet-50 trained on high-pass and on low-pass filtered images (an FFT box mask at 10% of the "
        "spectrum) against rgb Synth→Real, one point per generator and prompt style, with the diagonal.",
        "Low-pass keeps coarse shape and colour, high-pass the fine detail: generators whose high-pass points fall "
        "further below the diagonal than their low-pass ones lose the fine detail a classifier learns from.",
        paper.frequency),
    "density-coverage": Spec(
        "Density against coverage",
        "Density and coverage of each generator's images against the real training images (k-nearest-neighbour "
        f"balls in CLIP feature space), one point per generator, coloured by its {R50} rgb Synth→Real, one panel per "
        "prompt style. The paper finds newer generators at high density and low coverage: a narrow, "
        "aesthetic-centric slice of the real distribution.",
        "Right: the images cover more of the real distribution; up: they crowd around typical real images (above "
        "the dotted line, more crowded than the real images themselves). Bright points on the right: coverage, "
        "not density, goes with useful data.",
        paper.density_coverage),
    "asymmetry": Spec(
        "Real→Synth against Synth→Real",
        f"Real→Synth ({R50} trained on real images, tested on the generator's images) against Synth→Real (trained "
        "on the generator's images, tested on real ones), rgb, one point per generator and prompt style, with the "
        "diagonal. In the paper, real-trained classifiers recognise the images of newer generators easily, while "
        "classifiers trained on those images transfer poorly to real ones.",
        "Above the diagonal the synthetic images are easy to recognise but do not teach: the further above, the "
        "narrower and more typical the generated set.",
        paper.asymmetry),
    "vae-bottleneck": Spec(
        "The VAE bottleneck",
        f"Synth→Real of {R50} trained on the real training images encoded and decoded by each generator's VAE "
        "(vae-reencode:<generator>; SD1.5, SDXL and FLUX in the paper) and Real→Real of the same images untouched, on "
        "the pixel (rgb), high-pass and low-pass views; in brackets, the difference to the real images. Results of "
        "experiment=paper-controls-holdout compare held-out real images (real-holdout) instead.",
        "A VAE row below the real row is what the autoencoder alone costs, before any diffusion; a drop on "
        "high-pass but not low-pass means it removes the fine detail.",
        paper.vae_bottleneck),
    "per-class": Spec(
        "Per-class Synth→Real",
        "Not in the paper. Per-class Synth→Real of one generator and architecture (--heatmap GENERATOR/ARCH; by "
        "default the first synthetic generator and architecture), one row per probe and prompt style: nothing is "
        "averaged.",
        "Dark columns are classes that synthetic training misses whatever the view; a row darker than rgb's is a "
        "view that loses those classes.",
        per_class_heatmap, paper=False),
    "density-coverage-per-class": Spec(
        "Density against coverage per class",
        "Not in the paper. Density against coverage per class (metrics.per_class=true): one point per generator and "
        "class (the controls too), from each generator's rgb trial, one panel per prompt style.",
        "A generator whose classes spread along the density axis crowds some classes and misses others; the paper's "
        "figure shows only their pool.",
        density_coverage_per_class, paper=False, flag="per_class"),
    "dense-vs-classification": Spec(
        "Dense tasks against classification",
        "The study's detection (Faster R-CNN, box mAP@[.5:.95]) and segmentation (DeepLabV3, mIoU) Synth→Real, each "
        "trained on a generator's images with pseudo-labels and scored on real images' pseudo-labels, against the "
        "classification Synth→Real of the same generator and prompt style (rgb): one point each, Spearman's ρ per task.",
        "ρ near +1: the generators that make good classification data make good dense data too; a generator far off "
        "the trend helps one task and not the other.",
        dense_vs_classification, paper=False, when=lambda table: "task" in table and table["task"].notna().any()),
}

