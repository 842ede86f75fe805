"""The study's figures from a results table (one row per trial; `synthray.sweep.runner.collect`).

Each figure function takes the merged table and returns a matplotlib Figure, or raises `Skip` with the reason a
reader sees on the page (a missing column, a single point): a report never fails for lack of a column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

ACC = "synth_to_real_acc"
PROBE_ORDER = ["rgb", "depth", "texture", "lowpass", "highpass"]  # structure, texture, frequency


class Skip(Exception):
    """A figure that cannot be drawn from this table; the message says why."""


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


WORDS = {"released": "release dates", "clipscore": "CLIPScore (metrics.clipscore.model)",
         "geneval": "GenEval scores (metrics.geneval)", "synth_to_real_per_class": "per-class accuracies"}


def _need(table: pd.DataFrame, *columns: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in table or table[c].isna().all()]
    if missing:
        raise Skip(f"the results have no {', '.join(WORDS.get(c, c) for c in missing)}")
    return table.dropna(subset=list(columns))


def _spearman(x: pd.Series, y: pd.Series) -> float:
    """Rank correlation (Pearson on average ranks), NaN when either side is constant."""
    rx, ry = x.rank(), y.rank()
    return float(np.corrcoef(rx, ry)[0, 1]) if rx.nunique() > 1 and ry.nunique() > 1 else float("nan")


def release_date(table: pd.DataFrame) -> Any:
    """Synth->Real per architecture against the generator's release date, a linear trend per architecture and the
    Real->Real baseline (the study's main figure)."""
    data = _need(table, "released", ACC)
    if data["generator"].nunique() < 2:
        raise Skip("fewer than two generators with a release date (tiny and control generators have none)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    dates = pd.to_datetime(data["released"])
    for i, (arch, rows) in enumerate(data.assign(date=dates).groupby("arch", sort=True)):
        color = f"C{i}"
        mean = rows.groupby("date")[ACC].mean()
        ax.scatter(mean.index, mean.values, color=color, label=arch)
        if len(mean) > 1:
            days = (mean.index - mean.index.min()).days.to_numpy(dtype=float)
            slope, icpt = np.polyfit(days, mean.values, 1)
            ax.plot(mean.index, icpt + slope * days, color=color, linewidth=1)
        if "real_to_real_acc" in rows and rows["real_to_real_acc"].notna().any():
            ax.axhline(rows["real_to_real_acc"].mean(), color=color, linestyle="--", linewidth=1)
    ax.set(xlabel="generator release date", ylabel="Synth→Real accuracy",
           title="Newer generators, better training data? (dashed: Real→Real)")
    ax.legend(fontsize=8)
    return fig


def _against(table: pd.DataFrame, column: str, label: str) -> Any:
    data = _need(table, column, ACC)
    per_gen = data.groupby("generator")[[column, ACC]].mean()
    if len(per_gen) < 2:
        raise Skip(f"fewer than two generators with {column}")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(per_gen[column], per_gen[ACC])
    for name, row in per_gen.iterrows():
        ax.annotate(str(name), (row[column], row[ACC]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    rho = _spearman(per_gen[column], per_gen[ACC])
    ax.set(xlabel=label, ylabel="Synth→Real accuracy", title=f"Synth→Real against {label} (Spearman ρ = {rho:.2f})")
    return fig


def clipscore(table: pd.DataFrame) -> Any:
    return _against(table, "clipscore", "CLIPScore")


def geneval(table: pd.DataFrame) -> Any:
    return _against(table, "geneval", "GenEval")


def density_coverage(table: pd.DataFrame, per_class: bool = False) -> Any:
    """Density against coverage, one point per generator (or, per_class, per generator and class)."""
    data = _need(table, "density", "coverage")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (gen, rows) in enumerate(data.groupby("generator", sort=True)):
        if per_class:
            column = _per_class_prdc_column(rows)
            points = [(v["coverage"][c], v["density"][c]) for v in rows[column] for c in v["coverage"]]
            ax.scatter(*zip(*points), s=8, color=f"C{i}", label=gen, alpha=0.6)
        else:
            ax.scatter(rows["coverage"].mean(), rows["density"].mean(), color=f"C{i}", label=gen)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)  # density 1: as dense as the real data itself
    ax.set(xlabel="coverage", ylabel="density", title="Density against coverage" + (" per class" if per_class else ""))
    ax.legend(fontsize=8)
    return fig


def _per_class_prdc_column(rows: pd.DataFrame) -> str:
    for column in rows.columns:
        if column.endswith("_per_class") and isinstance(rows[column].dropna().iloc[0] if rows[column].notna().any() else None, dict):
            return column
    raise Skip("the results hold no per-class density and coverage (metrics.per_class=false)")


def probes(table: pd.DataFrame) -> Any:
    """Synth->Real per probe and generator: structure (depth), texture and frequency (low/high-pass) against rgb."""
    data = _need(table, "probe", ACC)
    shown = [p for p in PROBE_ORDER if p in set(data["probe"])] + sorted(set(data["probe"]) - set(PROBE_ORDER))
    if len(shown) < 2:
        raise Skip("one probe only: the comparison needs rgb and at least one of depth, texture, lowpass, highpass")
    grid = data.groupby(["generator", "probe"])[ACC].mean().unstack("probe").reindex(columns=shown)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(grid)), 4.5))
    width = 0.8 / len(shown)
    x = np.arange(len(grid))
    for i, probe in enumerate(shown):
        ax.bar(x + i * width - 0.4 + width / 2, grid[probe].to_numpy(), width, label=probe)
    ax.set_xticks(x, grid.index, rotation=30, ha="right")
    ax.set(ylabel="Synth→Real accuracy", title="What the classifiers learn from: Synth→Real per probe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def asymmetry(table: pd.DataFrame) -> Any:
    """Real->Synth against Synth->Real: above the diagonal, real-trained models recognise the synthetic images
    better than synthetic-trained ones recognise real ones."""
    data = _need(table, ACC, "real_to_synth_acc")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, (gen, rows) in enumerate(data.groupby("generator", sort=True)):
        ax.scatter(rows[ACC], rows["real_to_synth_acc"], color=f"C{i}", label=gen)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Synth→Real accuracy", ylabel="Real→Synth accuracy", title="The asymmetry")
    ax.legend(fontsize=8)
    return fig


def per_class_heatmap(table: pd.DataFrame, generator: str | None = None, arch: str | None = None,
                      class_names: list[str] | None = None) -> Any:
    """Per-class Synth->Real accuracy of one generator and architecture, one row per probe and prompt style."""
    data = _need(table, "synth_to_real_per_class")
    generator = generator or _first_synthetic(data)
    arch = arch or sorted(data["arch"].unique())[0]
    rows = data[(data["generator"] == generator) & (data["arch"] == arch)]
    if rows.empty:
        raise Skip(f"no trial of generator {generator} with architecture {arch}")
    matrix = np.array([[np.nan if v is None else float(v) for v in row] for row in rows["synth_to_real_per_class"]])
    labels = [f"{p} / {s}" for p, s in zip(rows["probe"], rows["prompt_style"])]
    names = class_names if class_names and len(class_names) == matrix.shape[1] else [str(i) for i in range(matrix.shape[1])]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(16, 2 + 0.35 * matrix.shape[1]), 1.5 + 0.45 * len(labels)))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(labels)), labels)
    step = max(1, matrix.shape[1] // 40)  # at most ~40 class labels stay readable
    ax.set_xticks(range(0, matrix.shape[1], step), names[::step], rotation=90, fontsize=7)
    fig.colorbar(image, ax=ax, label="Synth→Real accuracy")
    ax.set_title(f"Per-class Synth→Real: {generator}, {arch}")
    fig.tight_layout()
    return fig


def _first_synthetic(data: pd.DataFrame) -> str:
    from synthray.graph.synthetic import control_generators

    names = sorted(data["generator"].unique())
    real = control_generators(names)
    return ([n for n in names if n not in real] or names)[0]


FIGURES: dict[str, tuple[str, Callable[..., Any]]] = {
    "release-date": ("Synth→Real against release date", release_date),
    "clipscore": ("Synth→Real against CLIPScore", clipscore),
    "geneval": ("Synth→Real against GenEval", geneval),
    "density-coverage": ("Density against coverage", density_coverage),
    "probes": ("Synth→Real per probe", probes),
    "asymmetry": ("Real→Synth against Synth→Real", asymmetry),
    "per-class": ("Per-class Synth→Real", per_class_heatmap),
}
