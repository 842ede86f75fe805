"""The paper's figures, one to one: each shows exactly the paper's subset (architecture, probe, prompt-style split)
and nothing is averaged over probes, prompt styles or architectures. Each returns a `Drawn` (report/common.py).

The figures of ResNet-50 (release date, structure/texture, frequency, density/coverage, asymmetry, the VAE table)
show a stand-in when the results hold no tv:resnet50 trial (common.py's `main_arch`), named in the title, the axes,
the CSV and a note; GenEval and CLIPScore have one panel per architecture, whatever the results hold."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd

from synthray.report.common import (
    ACC,
    ARCH_ORDER,
    PAPER_ARCH,
    PAPER_GENERATORS,
    STYLE_ORDER,
    Drawn,
    Skip,
    arch_name,
    averaged,
    controls_only,
    diagonal,
    generators_only,
    label_points,
    look,
    main_arch,
    need,
    notes,
    one_per,
    ordered,
    plt,
    spearman,
    stand_in,
    subset,
)


def rgb(arch: str) -> str:
    return f"{arch_name(arch)} on the rgb probe"


def _on_rgb(data: pd.DataFrame) -> pd.DataFrame:
    return data[data["probe"] == "rgb"] if "probe" in data else data.iloc[:0]


# The probe's classifier in the paper: texture patches train BagNet-9 (experiment=paper-texture) when the results
# have it; every other probe, and texture without it, ResNet-50 (or its stand-in).
PROBE_ARCHS = {"texture": ("bagnet9",)}
VIEWS = {"rgb": "pixel (rgb)", "highpass": "high-pass", "lowpass": "low-pass"}


def release_date(table: pd.DataFrame) -> Drawn:
    """Synth->Real of ResNet-50 on rgb against the generator's release date: one point per generator and prompt
    style, a linear trend per prompt style, and the Real->Real line."""
    data = generators_only(need(table, "released", ACC))
    arch, stood_in = main_arch(table, _on_rgb(data))
    data = subset(data, f"{rgb(arch)} with release dates", arch=arch, probe="rgb")
    points = one_per(data, ["generator", "prompt_style"], [ACC], first=["released"])
    if points["generator"].nunique() < 2:
        raise Skip("fewer than two generators with a release date (tiny and control generators have none)")
    points = points.assign(arch=arch, probe="rgb", date=pd.to_datetime(points["released"]))
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(8, 4.5))
    for style in ordered(points["prompt_style"].unique(), STYLE_ORDER):
        color, marker, label = look(style)
        rows = points[points["prompt_style"] == style].sort_values("date")
        ax.scatter(rows["date"], rows[ACC], color=color, marker=marker, label=label, zorder=3)
        label_points(ax, rows["date"], rows[ACC], rows["generator"])
        if rows["date"].nunique() > 1:
            days = (rows["date"] - rows["date"].min()).dt.days.to_numpy(dtype=float)
            slope, icpt = np.polyfit(days, rows[ACC].to_numpy(), 1)
            ax.plot(rows["date"], icpt + slope * days, color=color, linewidth=1,
                    label=f"trend, {label} ({slope * 365:+.3f} a year)")
    real = table[(table["arch"] == arch) & (table["probe"] == "rgb")].get("real_to_real_acc")
    if real is not None and real.notna().any():
        ax.axhline(real.mean(), color="black", linestyle="--", linewidth=1, label=f"Real→Real ({real.mean():.3f})")
    ax.set(xlabel="generator release date", ylabel="Synth→Real accuracy",
           title=f"Synth→Real against release date: {arch_name(arch)}, rgb")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return Drawn(points.drop(columns="date"), fig, note=notes(stood_in, averaged(points)))


def _against(table: pd.DataFrame, column: str, label: str) -> Drawn:
    """Synth->Real against `column`, one panel per architecture, class-name prompts, rgb, Spearman rho per panel."""
    data = subset(generators_only(need(table, column, ACC)), "class-name prompts on the rgb probe",
                  prompt_style="classname", probe="rgb")
    archs = ordered(data["arch"].unique(), ARCH_ORDER)
    panels = [(arch, one_per(data[data["arch"] == arch], ["generator"], [column, ACC])) for arch in archs]
    panels = [(arch, p) for arch, p in panels if len(p) > 1]
    if not panels:
        raise Skip(f"fewer than two generators with {label} in any architecture")
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.8), squeeze=False)
    drawn = []
    for ax, (arch, points) in zip(axes[0], panels):
        rho = spearman(points[column], points[ACC])
        ax.scatter(points[column], points[ACC], color=look("classname")[0], zorder=3)
        label_points(ax, points[column], points[ACC], points["generator"])
        ax.set(xlabel=label, title=f"{arch_name(arch)}\nSpearman ρ = {rho:.2f}")
        drawn.append(points.assign(arch=arch, probe="rgb", prompt_style="classname", spearman=rho))
    axes[0][0].set_ylabel("Synth→Real accuracy")
    fig.suptitle(f"Synth→Real against {label}: class-name prompts, rgb", fontsize=11)
    fig.tight_layout()
    rows = pd.concat(drawn, ignore_index=True)
    unscored = sorted(set(generators_only(table.dropna(subset=[ACC]))["generator"]) - set(rows["generator"]))
    return Drawn(rows, fig, note=notes(averaged(rows), f"No {label} for: {', '.join(unscored)}." if unscored else None))


def geneval(table: pd.DataFrame) -> Drawn:
    return _against(table, "geneval", "GenEval")


def clipscore(table: pd.DataFrame) -> Drawn:
    return _against(table, "clipscore", "CLIPScore")


def _probe_arch(data: pd.DataFrame, probe: str, main: str) -> str | None:
    """The probe's classifier: its own (PROBE_ARCHS) where the results have it, else `main` (ResNet-50 or its
    stand-in); None when neither has a trial of the probe."""
    held = set(data.loc[data["probe"] == probe, "arch"])
    return next((a for a in (*PROBE_ARCHS.get(probe, ()), main) if a in held), None)


def _versus_rgb(table: pd.DataFrame, probes: Sequence[str], title: str) -> Drawn:
    """Each probe's Synth->Real (y) against rgb's (x, ResNet-50), one point per generator and prompt style, one
    panel per probe, with the diagonal."""
    data = generators_only(need(table, "probe", ACC))
    if not data["probe"].isin(list(probes)).any():
        raise Skip(f"the results have no {' or '.join(probes)} trial")
    main, stood_in = main_arch(table, _on_rgb(data))
    xs = one_per(subset(data, rgb(main), arch=main, probe="rgb"), ["generator", "prompt_style"], [ACC])
    panels, missing = [], []
    for probe in probes:
        arch = _probe_arch(data, probe, main)
        if arch is None:
            missing.append(probe)
            continue
        ys = one_per(data[(data["probe"] == probe) & (data["arch"] == arch)], ["generator", "prompt_style"], [ACC])
        both = ys.merge(xs, on=["generator", "prompt_style"], suffixes=("", "_rgb"))
        if both.empty:
            missing.append(probe)
            continue
        panels.append(both.rename(columns={ACC: "probe_acc", f"{ACC}_rgb": "rgb_acc"})
                      .assign(probe=probe, arch=arch, rgb_arch=main, n=np.maximum(both["n"], both["n_rgb"]))
                      .drop(columns="n_rgb"))
    if not panels:
        raise Skip(f"the results have no {' or '.join(probes)} trial of a generator that also has {rgb(main)}")
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.6), squeeze=False)
    for ax, points in zip(axes[0], panels):
        probe, arch = points["probe"].iloc[0], points["arch"].iloc[0]
        for style in ordered(points["prompt_style"].unique(), STYLE_ORDER):
            color, marker, label = look(style)
            rows = points[points["prompt_style"] == style]
            ax.scatter(rows["rgb_acc"], rows["probe_acc"], color=color, marker=marker, label=label, zorder=3)
            label_points(ax, rows["rgb_acc"], rows["probe_acc"], rows["generator"])
        diagonal(ax, points["rgb_acc"].to_numpy(), points["probe_acc"].to_numpy())
        ax.set(xlabel=f"Synth→Real, rgb ({arch_name(main)})", ylabel=f"Synth→Real, {probe} ({arch_name(arch)})",
               title=f"{probe} against rgb")
        ax.legend(fontsize=7)
    fig.suptitle(title if stood_in is None else f"{title}: {arch_name(main)} for ResNet-50", fontsize=11)
    fig.tight_layout()
    rows = pd.concat(panels, ignore_index=True)
    return Drawn(rows, fig, note=notes(stood_in, averaged(rows), f"No panel for {', '.join(missing)}: no such trial of "
                                       f"a generator that also has {rgb(main)}." if missing else None))


def structure_texture(table: pd.DataFrame) -> Drawn:
    return _versus_rgb(table, ("depth", "texture"), "Structure (depth) and texture against RGB")


def frequency(table: pd.DataFrame) -> Drawn:
    return _versus_rgb(table, ("highpass", "lowpass"), "High-pass and low-pass against RGB")


def density_coverage(table: pd.DataFrame) -> Drawn:
    """Density against coverage, one point per generator, coloured by its ResNet-50 rgb Synth->Real, one panel per
    prompt style. Density and coverage are of the images: read off the rgb trials (the same for every classifier)."""
    data = subset(generators_only(need(table, "density", "coverage")), "the images' density and coverage (rgb trials)",
                  probe="rgb")
    arch, stood_in = main_arch(table, data)
    if not (data["arch"] == arch).any():  # ResNet-50 trials, none of them rgb with density and coverage
        arch = stand_in(data["arch"].unique())
        stood_in = (f"The paper colours by {arch_name(PAPER_ARCH)}; its trials here have no density and coverage on "
                    f"rgb, so {arch_name(arch)} stands in.")
    values = [ACC] if ACC in data and data.loc[data["arch"] == arch, ACC].notna().any() else []
    points = one_per(data[data["arch"] == arch], ["generator", "prompt_style"], ["density", "coverage", *values])
    points = points.assign(arch=arch, probe="rgb")
    styles = ordered(points["prompt_style"].unique(), STYLE_ORDER)
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(styles), figsize=(4.8 * len(styles) + 1, 4.4), squeeze=False)
    norm = pyplot.Normalize(points[ACC].min(), points[ACC].max()) if values else None
    image = None
    for ax, style in zip(axes[0], styles):
        rows = points[points["prompt_style"] == style]
        colour = {"c": rows[ACC], "cmap": "viridis", "norm": norm} if values else {"color": "grey"}
        image = ax.scatter(rows["coverage"], rows["density"], s=40, edgecolors="black", linewidths=0.5, zorder=3, **colour)
        label_points(ax, rows["coverage"], rows["density"], rows["generator"])
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)  # density 1: as crowded as the real images
        ax.set(xlabel="coverage", ylabel="density", title=look(style)[2])
    if values:
        fig.colorbar(image, ax=list(axes[0]), label=f"Synth→Real ({arch_name(arch)}, rgb)")
    fig.suptitle("Density against coverage" + ("" if values else f" (no Synth→Real of {arch} to colour by)"), fontsize=11)
    return Drawn(points, fig, note=notes(stood_in, averaged(points)))


def asymmetry(table: pd.DataFrame) -> Drawn:
    """Real->Synth against Synth->Real, ResNet-50 on rgb, one point per generator and prompt style, the diagonal."""
    data = generators_only(need(table, ACC, "real_to_synth_acc"))
    arch, stood_in = main_arch(table, _on_rgb(data))
    data = subset(data, rgb(arch), arch=arch, probe="rgb")
    points = one_per(data, ["generator", "prompt_style"], [ACC, "real_to_synth_acc"]).assign(arch=arch, probe="rgb")
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(5.6, 5.4))
    for style in ordered(points["prompt_style"].unique(), STYLE_ORDER):
        color, marker, label = look(style)
        rows = points[points["prompt_style"] == style]
        ax.scatter(rows[ACC], rows["real_to_synth_acc"], color=color, marker=marker, label=label, zorder=3)
        label_points(ax, rows[ACC], rows["real_to_synth_acc"], rows["generator"])
    diagonal(ax, points[ACC].to_numpy(), points["real_to_synth_acc"].to_numpy())
    ax.set(xlabel="Synth→Real accuracy", ylabel="Real→Synth accuracy",
           title=f"Real→Synth against Synth→Real: {arch_name(arch)}, rgb")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return Drawn(points, fig, note=notes(stood_in, averaged(points)))


REAL_HOLDOUT = "real-holdout"
REAL_TRAIN = "real"   # the table's baseline row where it is the real model: Real->Real of the VAE controls' trials


def vae_bottleneck(table: pd.DataFrame) -> Drawn:
    """The VAE-bottleneck table: ResNet-50 Synth->Real on the pixel, high-pass and low-pass views for each VAE control
    (vae-reencode:<generator>, class-name controls) and the real images as the baseline: the real model (Real->Real
    of those trials) trained on the same real training images the VAEs re-encoded (experiment=paper-controls, the
    study's); or, when the results hold real-holdout (experiment=paper-controls-holdout), the held-out real images
    the VAEs re-encoded then, as they are."""
    data = controls_only(need(table, ACC))
    data = data[(data["generator"] == REAL_HOLDOUT) | data["generator"].str.startswith("vae-reencode:")]
    if not data["generator"].str.startswith("vae-reencode:").any():
        raise Skip("the results have no VAE control (vae-reencode:<generator>; experiment=paper-controls)")
    arch, stood_in = main_arch(table, data[data["probe"].isin(list(VIEWS))] if "probe" in data else data.iloc[:0])
    data = subset(data, f"{arch_name(arch)} trials of the controls", arch=arch)
    data = data[data["probe"].isin(list(VIEWS))]
    if "classname" in set(data["prompt_style"]):  # the controls draw real images: the prompt style only names the run
        data = data[data["prompt_style"] == "classname"]
    cells = one_per(data, ["generator", "probe"], [ACC]).assign(arch=arch)
    holdout = REAL_HOLDOUT in set(cells["generator"])
    if not holdout and "real_to_real_acc" in data and data["real_to_real_acc"].notna().any():
        # One real model per view, shared by every VAE trial on it: its accuracy, not an average over trials.
        real_rows = data.dropna(subset=["real_to_real_acc"]).groupby("probe", sort=False)["real_to_real_acc"].first()
        cells = pd.concat([pd.DataFrame({"generator": REAL_TRAIN, "probe": real_rows.index, ACC: real_rows.to_numpy(),
                                         "n": 1, "arch": arch}), cells], ignore_index=True)
    grid = cells.pivot(index="generator", columns="probe", values=ACC)
    base = REAL_HOLDOUT if holdout else REAL_TRAIN
    vaes = ordered((n.split(":", 1)[1] for n in grid.index if n.startswith("vae-reencode:")), PAPER_GENERATORS)
    names = ([base] if base in grid.index else []) + [f"vae-reencode:{v}" for v in vaes]
    views = [v for v in VIEWS if v in grid.columns]
    absent = [VIEWS[v] for v in VIEWS if v not in grid.columns]
    real = grid.loc[base] if base in grid.index else None
    body = []
    for name in names:
        tds = []
        for view in views:
            v = grid.at[name, view]
            text = "-" if pd.isna(v) else f"{v:.3f}"
            if real is not None and name != base and not pd.isna(v) and not pd.isna(real[view]):
                text += f" ({v - real[view]:+.3f})"
            tds.append(f'<td class="num">{text}</td>')
        shown = {REAL_HOLDOUT: "held-out real images (real-holdout)",
                 REAL_TRAIN: "real images, the full training set (Real→Real)"}.get(name, f"{name.split(':', 1)[-1]} VAE ({name})")
        body.append(f"<tr><td>{html.escape(shown)}</td>{''.join(tds)}</tr>")
    head = "".join(f"<th>{html.escape(VIEWS[v])}</th>" for v in views)
    page = (f'<table class="paper"><caption>Synth→Real of {html.escape(arch_name(arch))}</caption>'
            f"<thead><tr><th>training images</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    return Drawn(cells, html=page, note=notes(
        stood_in, averaged(cells),
        None if real is not None else "No real baseline (real-holdout or Real→Real): no differences to the real images.",
        f"No {' or '.join(absent)} trial of the controls." if absent else None))
