"""What the report's figures share: the subset a figure shows, the rows it drew, and the reasons it cannot draw.

A figure function takes the merged results table (one row per trial; `synthray.sweep.runner.collect`) and returns a
`Drawn`: the matplotlib figure (or an HTML table) and `rows`, one per point or cell shown, with the axes that pick
them (generator, prompt_style, arch, probe), so a reader's CSV and a test can count exactly what a figure holds. It
raises `Skip` with the reason a reader sees on the page (a missing column, no trial of the paper's architecture):
a report never fails for lack of a column.

Results with no ResNet-50 at all (the offline smoke run's tiny-cnn, the dress rehearsal's timm test_resnet) draw
the ResNet-50 figures with a stand-in (`main_arch`): the first architecture of the figure's own rows by name, a
ResNet-like name (containing "resnet") first, then ARCH_ORDER, then alphabetical. The figure names the stand-in in
its title and axes, its CSV's `arch` column records it, and a note under it says so (`stand_in_note`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

ACC = "synth_to_real_acc"
PAPER_ARCH = "tv:resnet50"  # the paper's main classifier, ResNet-50
ARCH_ORDER = ["tv:resnet50", "vit_tiny_patch16_224", "tv:convnext_tiny", "tv:swin_t", "bagnet9"]
PROBE_ORDER = ["rgb", "depth", "texture", "lowpass", "highpass"]  # structure, texture, frequency
STYLE_ORDER = ["classname", "caption"]
# The paper's 13 generators, by release date (experiment=paper)
PAPER_GENERATORS = ["sd15", "sd21", "sdxl", "sdxl-turbo", "sd3-medium", "flux1-dev", "flux1-schnell", "sd35-large",
                    "sd35-large-turbo", "sd35-medium", "sana", "lumina2", "qwen-image"]
# prompt style -> (colour, marker, legend label): the same look in every figure
STYLE_LOOK = {"classname": ("C0", "o", "class-name prompts"), "caption": ("C1", "s", "caption prompts")}
ARCH_NAMES = {"tv:resnet50": "ResNet-50", "vit_tiny_patch16_224": "ViT-Tiny", "tv:convnext_tiny": "ConvNeXt-T",
              "tv:swin_t": "Swin-T", "bagnet9": "BagNet-9"}
WORDS = {"released": "release dates", "clipscore": "CLIPScore (metrics.clipscore.model)",
         "geneval": "GenEval scores (metrics.geneval)", "synth_to_real_per_class": "per-class accuracies",
         "real_to_synth_acc": "Real→Synth accuracies", ACC: "Synth→Real accuracies", "probe": "probes",
         "density": "density", "coverage": "coverage"}


class Skip(Exception):
    """A figure that cannot be drawn from this table; the message says why."""


@dataclass
class Drawn:
    """A drawn figure: `rows` holds one row per point (or table cell) shown, `figure` a matplotlib Figure (None for
    an HTML table, then in `html`), `note` what a point averages when it averages more than one trial."""

    rows: pd.DataFrame
    figure: Any = None
    html: str | None = None
    note: str | None = None


def plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as pyplot

    return pyplot


def need(table: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The rows of `table` with every one of `columns`; Skip when a column is absent or empty."""
    missing = [c for c in columns if c not in table or table[c].isna().all()]
    if missing:
        raise Skip(f"the results have no {', '.join(WORDS.get(c, c) for c in missing)}")
    return table.dropna(subset=list(columns))


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Rank correlation (Pearson on average ranks), NaN when either side is constant."""
    rx, ry = x.rank(), y.rank()
    return float(np.corrcoef(rx, ry)[0, 1]) if rx.nunique() > 1 and ry.nunique() > 1 else float("nan")


def ordered(values: Iterable[Any], order: Sequence[str]) -> list[str]:
    """`values` in `order`, the others after them, sorted."""
    present = {str(v) for v in values}
    return [v for v in order if v in present] + sorted(present - set(order))


def arch_name(arch: str) -> str:
    return f"{ARCH_NAMES[arch]} ({arch})" if arch in ARCH_NAMES else arch


def stand_in(archs: Iterable[Any]) -> str:
    """The architecture that shows ResNet-50's place: the first of `archs` whose name contains "resnet" (the
    ResNet family's own small stand-ins, e.g. timm's test_resnet), else the first by ARCH_ORDER then alphabetical.
    tv:resnet50 itself, when among `archs`, comes first."""
    names = ordered(archs, ARCH_ORDER)
    return next((a for a in names if "resnet" in a.lower()), names[0])


def stand_in_note(arch: str) -> str:
    return f"The paper shows {arch_name(PAPER_ARCH)}; these results have none, so {arch_name(arch)} stands in."


def main_arch(table: pd.DataFrame, rows: pd.DataFrame) -> tuple[str, str | None]:
    """The architecture a ResNet-50 figure shows, and the note saying when it is not ResNet-50: PAPER_ARCH whenever
    the results (`table`) hold a trial of it (the figure then draws it, or says what is missing); otherwise the
    stand-in among `rows`, the trials the figure could draw from."""
    if "arch" not in table or (table["arch"] == PAPER_ARCH).any() or "arch" not in rows or rows["arch"].isna().all():
        return PAPER_ARCH, None
    arch = stand_in(rows["arch"].dropna().unique())
    return arch, stand_in_note(arch)


def notes(*parts: str | None) -> str | None:
    """The notes under a figure, in order, None when there is none."""
    return " ".join(p for p in parts if p) or None


def look(style: str) -> tuple[str, str, str]:
    """(colour, marker, label) of a prompt style."""
    return STYLE_LOOK.get(style, ("C2", "^", f"{style} prompts"))


def generators_only(table: pd.DataFrame) -> pd.DataFrame:
    """`table` without the control generators (real-holdout, collapsed, vae-reencode:<generator>): the paper's
    figures show generators only."""
    from synthray.graph.synthetic import control_generators

    controls = control_generators(table["generator"].unique())
    return table[~table["generator"].isin(controls)]


def controls_only(table: pd.DataFrame) -> pd.DataFrame:
    from synthray.graph.synthetic import control_generators

    return table[table["generator"].isin(control_generators(table["generator"].unique()))]


def subset(table: pd.DataFrame, what: str, **axes: str) -> pd.DataFrame:
    """The rows whose axes equal `axes` (arch=..., probe=..., prompt_style=...); Skip naming the paper's subset
    (`what`) and what the results hold instead when there is none."""
    rows = table
    for axis, value in axes.items():
        rows = rows[rows[axis] == value] if axis in rows else rows.iloc[:0]
    if rows.empty:
        held = "; ".join(f"{axis}: {', '.join(ordered(table[axis].dropna().unique(), [])) or 'none'}"
                         for axis in axes if axis in table)
        raise Skip(f"the paper's figure shows {what}; these results have no such trial ({held})")
    return rows


def one_per(rows: pd.DataFrame, keys: Sequence[str], values: Sequence[str], first: Sequence[str] = ()) -> pd.DataFrame:
    """One row per `keys`: the mean of `values` over the trials that share them (several merged sweeps or extra
    grid axes), `first` taken as is, and `n`, how many trials each row averages."""
    agg: dict[str, tuple[str, str]] = {v: (v, "mean") for v in values}
    agg.update({f: (f, "first") for f in first})
    agg["n"] = (keys[0], "size")
    return rows.groupby(list(keys), sort=False).agg(**agg).reset_index()


def averaged(points: pd.DataFrame) -> str | None:
    """The note for points that average several trials, None when each is one trial."""
    if "n" not in points or points["n"].max() <= 1:
        return None
    return (f"Some points average up to {int(points['n'].max())} trials with the same generator, prompt style, "
            "architecture and probe (several merged sweeps, or extra grid axes).")


def label_points(ax: Any, xs: Iterable[Any], ys: Iterable[float], names: Iterable[str]) -> None:
    for x, y, name in zip(xs, ys, names):
        ax.annotate(str(name), (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points", color="#444")


def diagonal(ax: Any, xs: np.ndarray, ys: np.ndarray) -> None:
    """y = x across the points' range, with a margin, on equal scales."""
    lo, hi = float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max()))
    pad = max(0.02, 0.08 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle=":", linewidth=1)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal")


# The page's self-check, which runs in the browser: marks broken images and collects errors, so a headless browser
# (tests/test_report.py) reads the page's own verdict from its DOM; and its style. report/page.py and report/labels.py.
SELF_CHECK = """
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
const consoleError = console.error.bind(console);
console.error = (...args) => { window.__errors.push(args.join(' ')); consoleError(...args); };
window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(im => !(im.complete && im.naturalWidth > 0)).map(im => im.alt);
  const out = document.getElementById('selfcheck');
  out.textContent = JSON.stringify({images: images.length, broken: broken, errors: window.__errors});
});
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const up = th.dataset.order !== 'up';
  th.dataset.order = up ? 'up' : 'down';
  const key = tr => { const t = tr.cells[col].textContent; const n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1))
    .forEach(tr => body.appendChild(tr));
}));
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1100px; color: #222; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { margin-top: 0.4em; font-size: 14px; } .read { color: #444; } .links { font-size: 12px; }
.note { color: #777; font-style: italic; }
table.paper { font-size: 14px; margin: 0.5em 0; } table.paper th { cursor: default; }
table { border-collapse: collapse; font-size: 13px; } th, td { border: 1px solid #ccc; padding: 2px 6px; }
th { cursor: pointer; background: #f3f3f3; } td.num { text-align: right; }
"""
