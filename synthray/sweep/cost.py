"""`synthray plan`: what a sweep would run, reuse and cost, from its config and throughput figures alone.

Nothing here starts Ray, builds an artifact or writes a file. The cost is read off the planner's stage graph
(`graph.planner.plan`), the same graph the sweep runs: every spec says its work (`work()`, image passes) and what it
asks Ray for (`resources()`). `estimate` and `format_plan` are pure: the config, its graph, the throughput figures
(`synthray/conf/throughputs.yaml`, images per second on one GPU), the refs already complete and the real image
counts go in; rows and text lines come out. `plan_lines` gathers those inputs for the CLI.

Units: images are counted per image pass (training: images x epochs); rates are images per second on one GPU;
cost is GPU-hours = images / rate / 3600, counted only for stages configured to run on `gpu`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from synthray.core.registry import SynthrayError

THROUGHPUTS = Path(__file__).resolve().parent.parent / "conf" / "throughputs.yaml"
SECTIONS = ("generators", "archs", "probes", "encoders", "labels")
STAGES = ("generate", "view", "train", "features", "clipscore", "evaluate", "label")
FORWARD_SPEEDUP = 3.0  # evaluation: a forward pass costs about a third of a training step


@dataclass(frozen=True)
class Figure:
    """A throughput: `img_s` images per second on one GPU of `device`; `source` says whether it was measured."""

    img_s: float
    device: str
    source: str

    def __str__(self) -> str:
        rate = f"{self.img_s:.3g}" if self.img_s < 1000 else f"{self.img_s:.0f}"
        return f"{rate} img/s, {self.device}, {self.source}"


@dataclass
class Row:
    """One line of the cost table: a stage's work for one name (generator, probe, architecture or encoder)."""

    stage: str                  # one of STAGES
    name: str
    work: str                   # the work in words
    images: int                 # image passes
    figure: Figure | None       # None: the stage runs on CPU and costs no GPU-hours
    jobs: int = 0               # units of the stage that can run at once (datasets, views, models, feature sets)
    gpus_per_job: float = 0.0   # GPUs one unit requests from Ray
    job_words: str = ""         # "8 actors x 1 GPU": how gpus_per_job is made

    @property
    def gpu_hours(self) -> float:
        """GPU-hours: images / (img/s) / 3600; 0 on CPU."""
        return self.images / self.figure.img_s / 3600 if self.figure else 0.0


def load_throughputs(path: str | Path | None = None) -> dict[str, dict[str, Figure]]:
    """{section: {name: Figure}} from `path` (default: the shipped `conf/throughputs.yaml`)."""
    path = Path(path).expanduser() if path else THROUGHPUTS
    if not path.is_file():
        raise SynthrayError(f"throughputs file not found: {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # noqa: BLE001 - any parse error is one line
        raise SynthrayError(f"cannot read throughputs {path}: {str(err).splitlines()[0]}") from None
    out: dict[str, dict[str, Figure]] = {}
    for section in SECTIONS:
        for name, entry in ((raw or {}).get(section) or {}).items():
            ok = isinstance(entry, dict) and isinstance(entry.get("img_s"), (int, float)) and entry["img_s"] > 0
            if not ok or not entry.get("device") or not entry.get("source"):
                raise SynthrayError(f"throughputs {path}: {section}.{name} needs img_s > 0, device and source")
            out.setdefault(section, {})[str(name)] = Figure(float(entry["img_s"]), str(entry["device"]), str(entry["source"]))
    return out


def figure(throughputs: dict[str, dict[str, Figure]], section: str, name: str, notes: list[str]) -> Figure:
    """`name`'s figure, else its section's default (noted once in `notes`)."""
    entries = throughputs.get(section, {})
    if name in entries:
        return entries[name]
    if "default" not in entries:
        raise SynthrayError(f"throughputs: no figure for {name} and no {section}.default")
    note = f"no figure for {name}: default used"
    if note not in notes:
        notes.append(note)
    return entries["default"]


def _reuse_test(reused: Collection[str] | Callable[[str], bool] | None) -> Callable[[str], bool]:
    if reused is None:
        return lambda ref: False
    return reused if callable(reused) else (lambda ref: ref in reused)


def _each(values: Sequence[int]) -> str:
    """`1,000` when every value is 1,000; `up to 1,200` when they differ."""
    return f"{values[0]:,}" if len(set(values)) == 1 else f"up to {max(values):,}"


def _trained_on_real(spec: Any) -> bool:
    """Whether a model spec's training split comes from the real data (directly, or through a probe's view)."""
    source = spec.data.spec
    return source.kind == "real" or getattr(source, "source", None) is not None and source.source.kind == "real"


def _scaled(fig: Figure, spec: Any) -> Figure:
    """A generator's figure at its spec's sampling steps and resolution: the figures are at the paper protocol
    (50 steps, 4 for distilled models) at 512 px, and cost scales with steps and pixels."""
    entry = spec.entry  # the zoo entry the dataset is generated with
    params = spec.settings["params"]
    ref_steps = 4 if entry.get("distilled") else 50
    size = params.get("resolution") or int(entry["resolution"])  # None: the model's own size
    scale = ref_steps / params["steps"] * (512 / size) ** 2
    if abs(scale - 1) <= 1e-9:
        return fig
    return Figure(fig.img_s * scale, fig.device, f"{fig.source}; scaled to {params['steps']} steps at {size} px")


def _gpu(spec: Any) -> bool:
    return spec.resources().device == "gpu"


def estimate(cfg: Any, throughputs: dict[str, dict[str, Figure]], reused: Collection[str] | Callable[[str], bool] | None = None,
             real: dict[str, int] | None = None, notes: list[str] | None = None, graph: Any = None) -> list[Row]:
    """The cost of the graph's work that is not reused, one Row per stage and name.

    graph: the planner's graph (`graph.planner.plan(cfg, real)`; planned here when not given). Every spec of it
      that is not reused is priced by its `work()` (image passes) and `resources()` (device, units, GPUs each).
    reused: the refs (`<kind>/<key>`) of the specs already complete in storage, as a collection or a test
      `ref -> bool`; None: nothing is.
    real: real images per split, {"train": n, "test": n}; default: n_classes x prompts.n_per_class and a tenth of
      that (the planner's default).
    notes: receives "no figure for X: default used" lines.
    """
    from synthray.graph.planner import plan
    from synthray.metrics.features import PIXELS

    notes = notes if notes is not None else []
    done = _reuse_test(reused)
    graph = graph if graph is not None else plan(cfg, real)
    groups: dict[tuple[str, str], list[Any]] = {}  # (stage, name) -> specs, in the graph's order
    for spec in graph.specs.values():
        work = spec.work()
        if work is None or work.stage not in STAGES:  # real data and captions: not priced (CPU, or an API)
            continue
        if work.stage == "features":  # one row per encoder the feature sets pass through (pixels cost nothing)
            for enc in spec.settings.get("encoders", {}):
                if enc != PIXELS:
                    groups.setdefault(("features", enc), []).append(spec)
        else:
            groups.setdefault((work.stage, work.name), []).append(spec)

    rows: list[Row] = []
    first_encoder: dict[str, str] = {}  # feature spec ref -> the encoder row that counts its job (one pool runs all)
    for (stage, name), specs in groups.items():
        todo = [s for s in specs if not done(s.ref)]
        gpu = [s for s in todo if _gpu(s)]
        top = max((s.resources() for s in specs), key=lambda r: r.total_gpus)
        jobs, per, words = len(gpu), top.total_gpus if top.device == "gpu" else 0.0, top.words()
        if stage == "features":
            images = sum(s.rows for s in todo)
            jobs = sum(1 for s in gpu if first_encoder.setdefault(s.ref, name) == name)
        else:
            images = sum(s.work().images for s in todo)
        fig = None
        if stage == "generate":
            control = specs[0].real is not None  # draws real images (real-holdout, collapsed, vae-reencode)
            work = f"{len(todo)} dataset(s) x {_each([s.rows for s in specs])} images"
            if control and _gpu(specs[0]):
                # A VAE round trip: its name's figure, else its kind's (no denoiser, so no steps to scale by).
                own = throughputs.get("generators", {})
                fig = own.get(name) or own.get(str(specs[0].settings["kind"]))
            if control:
                drawn = "the real training split" if specs[0].settings.get("reencode_split") == "train" else "real images"
                where = ", CPU" if not _gpu(specs[0]) else ("" if fig else "; no figure")
                work += f" (control: {drawn}{where})"
            elif _gpu(specs[0]):
                fig = _scaled(figure(throughputs, "generators", name, notes), specs[0])
        elif stage == "view":
            synth = [s for s in todo if s.source.kind != "real"]
            n_real = sum(s.rows for s in todo if s.source.kind == "real")
            n_synth = _each([s.rows for s in specs if s.source.kind != "real"] or [0])
            work = f"{len(synth)} synthetic view(s) x {n_synth} + real {n_real:,} images"
            if _gpu(specs[0]):
                fig = figure(throughputs, "probes", name, notes)
            else:
                work += " (CPU)"
        elif stage == "train":
            synth = [s for s in todo if not _trained_on_real(s)]
            n_synth = _each([s.rows for s in specs if not _trained_on_real(s)] or [0])
            n_real = _each([s.rows for s in specs if _trained_on_real(s)] or [0])
            epochs = "/".join(str(e) for e in sorted({s.epochs for s in specs}))
            work = f"{len(synth)} synth x {n_synth} + {len(todo) - len(synth)} real x {n_real} images, {epochs} epochs"
            fig = figure(throughputs, "archs", name, notes) if _gpu(specs[0]) else None
        elif stage == "features":
            work = f"{len(todo)} feature set(s), up to {max(s.rows for s in specs):,} images each"
            fig = figure(throughputs, "encoders", name, notes) if _gpu(specs[0]) else None
        elif stage == "evaluate":  # a model's best and last epochs, forward only
            epochs = "2 epochs" if specs[0].kind == "evaluations" else "the last epoch"  # dense: the study's final one
            work = f"{len(todo)} evaluation(s) x {epochs} x up to {max(s.rows for s in specs):,} images"
            if _gpu(specs[0]):
                fig = figure(throughputs, "archs", name, notes)
                fig = Figure(fig.img_s * FORWARD_SPEEDUP, fig.device, f"{FORWARD_SPEEDUP:g}x the training figure (forward only)")
        elif stage == "label":  # pseudo-labels of real and synthetic splits for the dense tasks
            work = f"{len(todo)} split(s), up to {max(s.rows for s in specs):,} images each"
            fig = figure(throughputs, "labels", name, notes) if _gpu(specs[0]) else None
        else:  # clipscore
            work = f"{len(todo)} dataset(s), up to {max(s.rows for s in specs):,} images each"
            fig = figure(throughputs, "encoders", "clip", notes) if _gpu(specs[0]) else None
        rows.append(Row(stage, name, work, images, fig, jobs if per else 0, per, words if per else ""))
    return rows


def peak_gpus(cfg: Any, rows: Sequence[Row]) -> dict[str, tuple[float, str]]:
    """GPUs each stage can request at once: min(its units, tune.max_concurrent_trials) x GPUs per unit, with words."""
    from synthray.sweep.plan import trials

    n_trials = max(1, len(trials(cfg)))
    conc = int(cfg.tune.max_concurrent_trials or 0)
    conc = conc if conc > 0 else n_trials
    out = {}
    for stage in STAGES:
        mine = [r for r in rows if r.stage == stage and r.jobs and r.gpus_per_job]
        if not mine:
            continue
        at_once = min(sum(r.jobs for r in mine), conc)
        top = max(mine, key=lambda r: r.gpus_per_job)
        out[stage] = (at_once * top.gpus_per_job, f"{at_once} at once x {top.job_words}")
    return out


def format_plan(cfg: Any, rows: Sequence[Row], notes: Sequence[str] = (), throughputs_path: str | Path | None = None) -> list[str]:
    """The cost table, the total in GPU-hours and the peak GPU demand, as plain text lines."""
    table = [("stage", "name", "work", "GPU-h", "figure (img/s on one GPU, device, source)")]
    for r in sorted(rows, key=lambda r: STAGES.index(r.stage)):
        table.append((r.stage, r.name, r.work, f"{r.gpu_hours:.2f}", str(r.figure) if r.figure else "CPU: no GPU-hours"))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [f"cost of the work not reused, figures from {throughputs_path or THROUGHPUTS}:"]
    for row in table:
        lines.append("  " + "  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]),
                                       row[3].rjust(widths[3]), row[4]]).rstrip())
    by_stage = {s: sum(r.gpu_hours for r in rows if r.stage == s) for s in STAGES if any(r.stage == s for r in rows)}
    total = sum(by_stage.values())
    lines.append(f"total: {total:.1f} GPU-hours (" + ", ".join(f"{s} {h:.1f}" for s, h in by_stage.items()) + ")")
    peaks = peak_gpus(cfg, rows)
    conc = int(cfg.tune.max_concurrent_trials or 0)
    if peaks:
        lines.append(f"GPUs each stage can use at once (tune.max_concurrent_trials={conc}):")
        lines += [f"  {s:<9} {g:g} = {words}" for s, (g, words) in peaks.items()]
        top = max(g for g, _ in peaks.values())
        lines.append(f"peak: {math.ceil(top)} GPUs, set by {', '.join(s for s, (g, _) in peaks.items() if g == top)}")
    else:
        lines.append("peak: 0 GPUs (every stage runs on cpu)")
    return lines + [f"note: {n}" for n in notes]


def count_real(cfg: Any, real_meta: dict[str, Any] | None = None) -> tuple[dict[str, int] | None, str]:
    """Real images per split ({"train", "test"}) and how they were known; (None, why) when they are not countable.

    Reads only: the real artifact's meta (when given), scikit-learn's digits, or the folders under data.root."""
    from synthray.data import real as r

    d = cfg.data
    if real_meta and "counts" in real_meta:
        c = real_meta["counts"]
        return {"train": int(c["train"]), "test": int(c["test"])}, "counted in the real dataset artifact"
    ids = r.load_classes(d.classes)["id"].tolist()
    cap = int(d.max_per_class) if d.max_per_class else None
    if d.source == "digits":
        from sklearn.datasets import load_digits

        target, train, test = load_digits().target, 0, 0
        for cid in ids:
            n = int((target == int(cid)).sum())
            n_test, n_hold = round(d.test_fraction * n), round((1 - d.test_fraction) * d.control_fraction * n)
            train, test = train + n - n_test - n_hold, test + n_test
        return {"train": train, "test": test}, "counted from scikit-learn's digits and data.test_fraction/control_fraction"
    root = Path(str(d.root or "")).expanduser()
    if d.source == "imagefolder" and d.root and root.is_dir():
        try:
            test_dir = r.test_dir(root)
            train = test = 0
            for cid in ids:
                n = len(r.list_images(root / "train" / cid)) if (root / "train" / cid).is_dir() else 0
                keep = n - round(d.control_fraction * n)
                n_test = len(r.list_images(test_dir / cid)) if (test_dir / cid).is_dir() else 0
                train, test = train + min(keep, cap or keep), test + min(n_test, cap or n_test)
            return {"train": train, "test": test}, f"counted in {root}"
        except (SynthrayError, OSError):
            pass
    return None, f"data.root {d.root} not readable here" if d.root else f"data.source={d.source} not counted"


def plan_lines(overrides: Sequence[str], throughputs_path: str | None = None, cluster: str | None = None) -> list[str]:
    """Everything `synthray plan` prints: the grid, what is reused (when storage is reachable), cost and peak GPUs;
    with `cluster` (a `ray up` file), the node type each GPU stage lands on (`sweep.placing`).

    The config is checked by `validate(cfg, dry=True)`: every check `synthray run` makes but whether storage, the
    real data folder and hub weights are reachable from here (`sweep.plan.DRY_SKIPS`)."""
    from synthray.config import compose
    from synthray.core.artifacts import Store
    from synthray.core.storage import check_storage
    from synthray.data.real import load_classes
    from synthray.graph.planner import plan
    from synthray.graph.real import real_spec
    from synthray.sweep.plan import check_specs, grid_axes, validate

    cfg = compose(list(overrides))
    throughputs = load_throughputs(throughputs_path)
    points = validate(cfg, dry=True)
    axes = grid_axes(cfg)

    words = {"generator": "generator", "prompt_style": "prompt style", "arch": "arch", "probe": "probe"}
    shape = " x ".join(f"{len(v)} {words[k]}{'s' if len(v) != 1 else ''}" for k, v in axes.items())
    lines = [f"experiment {cfg.experiment}: {len(points)} trials ({shape}); dry run: nothing launched, nothing written"]
    lines += [f"  {k}: {', '.join(v)}" for k, v in axes.items()]
    store, real_meta = None, None
    try:
        check_storage(cfg.storage)
    except SynthrayError as err:
        reason = str(err).split(": ", 1)[1] if str(err).startswith("storage ") else str(err)
        lines.append(f"storage {cfg.storage} not reachable ({reason}): every trial counted as to run")
    else:
        store = Store.from_cfg(cfg)
        real_art = real_spec(cfg).artifact(store)
        if real_art.is_complete():
            real_meta = real_art.meta()
    real, how = count_real(cfg, real_meta)
    graph = plan(cfg, real)
    check_specs(s for s in graph.specs.values() if s.kind != "real")  # its folder may be readable only on the cluster
    complete: set[str] = set()
    if store is not None:
        from synthray.sweep.runner import plan_summary
        from synthray.sweep.trial import Trial

        lines += plan_summary(cfg, [Trial(t, store) for t in graph.trials])
        complete = {ref for ref, spec in graph.specs.items() if spec.artifact(store).is_complete()}
    notes: list[str] = []
    rows = estimate(cfg, throughputs, complete, real, notes, graph)
    if real:
        notes.append(f"real images: train {real['train']:,}, test {real['test']:,} ({how})")
    else:
        n = len(load_classes(cfg.data.classes)) * int(cfg.prompts.n_per_class)
        notes.append(f"real images: {how}; assumed train = classes x prompts.n_per_class = {n:,}, test = a tenth of that")
    notes.append("reuse is known per artifact of the stage graph: each dataset, view, model, evaluation, feature set "
                 "and CLIPScore set is counted unless it is complete in storage")
    notes.append("training: one epoch = one pass over a training set at the figure's step throughput (data on the GPU); "
                 "BASELINES.md measured synthray end to end at 0.76x of it (cached) and 0.37x (streaming) on an H200")
    out = lines + [""] + format_plan(cfg, rows, notes, throughputs_path)
    if cluster:
        from synthray.sweep.placing import placement_lines

        out += [""] + placement_lines(graph, cluster, cfg.placement)
    return out
