"""`synthray report`: one self-contained HTML page (figures embedded as PNG), each figure as PNG and SVG beside it.

Inputs are sweeps (a name under `storage`, a sweep folder or URI) or `results.parquet` files (paths or storage URIs);
several merge into one report, with a `sweep` column saying where each row came from.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from synthray.core import storage
from synthray.core.registry import SynthrayError
from synthray.report import gallery, labels
from synthray.report.common import SELF_CHECK, STYLE  # noqa: F401 - the page's script and style (report/labels.py's too)
from synthray.report.figures import FIGURES, Drawn, Skip, Spec
from synthray.sweep.columns import shown_columns


def load_results(inputs: Sequence[str], root: str) -> tuple[pd.DataFrame, list[str] | None, list[str]]:
    """The merged results table of `inputs` (default: the newest sweep under `root`), the class names of the
    first sweep whose config is at hand (for the per-class heatmap), and where each input lies (its sweep folder,
    or the folder of its results file: the gallery reads the artifacts stored beside it)."""
    from omegaconf import OmegaConf

    from synthray.data.real import load_classes
    from synthray.sweep.runner import find_sweep, read_results

    tables, names, locations = [], None, []
    for item in inputs or [None]:
        if item is not None and item.endswith(".parquet"):
            uri = storage.normalize(item)
            if not storage.exists(uri):
                raise SynthrayError(f"report: no results file {uri}")
            # A sweep's results.parquet is named by its sweep folder; any other file by its own name.
            label = storage.name(storage.parent(uri)) if storage.name(uri) == "results.parquet" else storage.name(uri)[:-8]
            table = read_results(uri)
            locations.append(storage.parent(uri))
        else:
            sweep = find_sweep(root, item)
            uri = storage.join(sweep, "results.parquet")
            if not storage.exists(uri):
                raise SynthrayError(f"report: sweep {storage.name(sweep)} has no results.parquet yet (still running, or stopped)")
            table, label = read_results(uri), storage.name(sweep)
            locations.append(sweep)
            if names is None:
                cfg = OmegaConf.create(storage.read_text(storage.join(sweep, "config.yaml")))
                try:
                    names = load_classes(cfg.data.classes)["name"].tolist()
                except SynthrayError:
                    names = None  # a class CSV on another machine: the heatmap falls back to class numbers
        tables.append(table.assign(sweep=label))
    return pd.concat(tables, ignore_index=True), names, locations


def _image(fig: Any, name: str, folder: Path) -> str:
    """Save `fig` as PNG and SVG in `folder`; the PNG's bytes as a data URI."""
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(folder / f"{name}.svg", format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    (folder / f"{name}.png").write_bytes(png.getvalue())
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


def _table_html(table: pd.DataFrame) -> str:
    # The results columns in their one order (sweep/columns.py), `sweep` first; those with no value at all left out.
    columns = [c for c in shown_columns(table, first=["sweep"]) if not table[c].isna().all()]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for _, row in table[columns].iterrows():
        cells = []
        for c in columns:
            v = row[c]
            if isinstance(v, float):
                cells.append(f'<td class="num">{"-" if pd.isna(v) else f"{v:.3f}"}</td>')
            else:
                cells.append(f"<td>{html.escape('-' if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div style="overflow-x:auto"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _section(name: str, spec: Spec, drawn: Drawn | None, why: str | None, folder: Path, figure: bool = True) -> str:
    """One figure's section: the figure (PNG embedded) or the table, its caption, how to read it, and what it
    averages; a note instead of the figure when its inputs are missing. `figure=False` (the gallery: images read,
    not drawn) makes it a `div` whose note says "Not shown", so the page's `section`s and "Not drawn" notes, which
    the rehearsal's checks count, stay the figures'."""
    tag, missing = ("section", "Not drawn") if figure else ("div", "Not shown")
    title, caption = html.escape(spec.title), html.escape(spec.caption)
    read = f'<span class="read"><b>How to read it:</b> {html.escape(spec.read)}</span>'
    if drawn is None:
        return (f'<{tag} id="{name}"><h3>{title}</h3><p class="note">{missing}: {html.escape(str(why))}.</p>'
                f"<p>{caption}<br>{read}</p></{tag}>")
    drawn.rows.to_csv(folder / f"{name}.csv", index=False)
    links = [f'<a href="figures/{name}.csv">CSV</a>']
    if drawn.figure is not None:
        body = f'<img alt="{name}" src="{_image(drawn.figure, name, folder)}">'
        links = [f'<a href="figures/{name}.svg">SVG</a>', f'<a href="figures/{name}.png">PNG</a>', *links]
    else:
        body = drawn.html or ""
    note = f'<p class="note">{html.escape(drawn.note)}</p>' if drawn.note else ""
    return (f'<{tag} id="{name}"><h3>{title}</h3><figure>{body}<figcaption>{caption}<br>{read}<br>'
            f'<span class="links">{" · ".join(links)} (the CSV holds the {len(drawn.rows)} points or cells shown)</span>'
            f"</figcaption></figure>{note}</{tag}>")


def write_report(inputs: Sequence[str], out: Path, root: str, heatmap: tuple[str, str] | None = None,
                 per_class: bool = False) -> Path:
    """Write `out/report.html` and `out/figures/<name>.{png,svg,csv}` (the CSV: the rows each figure shows);
    returns the page's path. The folder is built under a temporary name and renamed, so a failed report leaves
    nothing half-written."""
    table, class_names, locations = load_results(inputs, root)
    out = Path(out).expanduser().resolve()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "figures").mkdir(parents=True)
    options = {"per_class": per_class}
    sections: dict[bool, list[str]] = {True: [], False: []}
    try:
        try:
            drawn, why = gallery.draw(table, locations, root, gallery.probe_settings(locations)), None
        except Skip as skipped:
            drawn, why = None, str(skipped)
        samples = _section("gallery", gallery.SPEC, drawn, why, tmp / "figures", figure=False)
        try:
            drawn, why = labels.draw(table, locations, root), None
        except Skip as skipped:
            drawn, why = None, str(skipped)
        if drawn is not None:  # only a sweep with a dense task has pseudo-labels to show
            samples += _section("pseudo-labels", labels.SPEC, drawn, why, tmp / "figures", figure=False)
        for name, spec in FIGURES.items():
            if (spec.flag is not None and not options.get(spec.flag)) or (spec.when is not None and not spec.when(table)):
                continue
            kwargs: dict[str, Any] = {}
            if name == "per-class":
                kwargs.update(generator=heatmap[0] if heatmap else None, arch=heatmap[1] if heatmap else None,
                              class_names=class_names)
            try:
                drawn, why = spec.draw(table, **kwargs), None
            except Skip as skipped:
                drawn, why = None, str(skipped)
            sections[spec.paper].append(_section(name, spec, drawn, why, tmp / "figures"))
        sweeps = ", ".join(sorted(table["sweep"].unique()))
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>synthray report: {html.escape(sweeps)}</title>"
                f"<style>{STYLE}</style></head><body><h1>synthray report</h1>"
                f"<p>{len(table)} trials from {html.escape(sweeps)}. Click a column to sort the table.</p>"
                f"<h2>The images</h2>{samples}"
                "<h2>The paper's figures</h2><p>Each shows the paper's own subset: its architecture, probe and "
                "prompt-style split, nothing averaged over them.</p>" + "".join(sections[True])
                + "<h2>Beyond the paper</h2>" + "".join(sections[False])
                + f"<h2>Results</h2>{_table_html(table)}<pre id='selfcheck' hidden></pre>"
                f"<script>{SELF_CHECK}</script></body></html>")
        (tmp / "report.html").write_text(page, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "report.html"
