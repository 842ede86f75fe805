"""`synthray plan`: what a sweep would run, reuse and cost, from its config and throughput figures alone.

Nothing here starts Ray, builds an artifact or writes a file. `estimate` and `format_plan` are pure: the config,
the throughput figures (`synthray/conf/throughputs.yaml`, images per second on one GPU), what is already complete
and the real image counts go in; rows and text lines come out. `plan_lines` gathers those inputs for the CLI.

Units: images are counted per image pass (training: images x epochs); rates are images per second on one GPU;
cost is GPU-hours = images / rate / 3600, counted only for stages configured to run on `gpu`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

from omegaconf import OmegaConf

from synthray.registry import SynthrayError

THROUGHPUTS = Path(__file__).resolve().parent.parent / "conf" / "throughputs.yaml"
SECTIONS = ("generators", "archs", "probes", "encoders")
STAGES = ("generate", "view", "train", "features", "clipscore", "evaluate")
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
        return lambda label: False
    return reused if callable(reused) else (lambda label: label in reused)


def _actors(section: Any, shards: int) -> int:
    """Actors a pool runs for `shards` shards: num_actors, growing to max_actors, never more than the shards."""
    most = max(int(section.get("num_actors", 1)), int(section.get("max_actors") or 0))
    return max(1, min(most, shards))


def _gpus(device: Any, per: Any) -> float:
    return float(per) if str(device) == "gpu" else 0.0


def _pool(n: int, what: str, gpus: float) -> str:
    return f"{n} {what}{'s' if n != 1 else ''} x {gpus:g} GPU"


def estimate(cfg: Any, throughputs: dict[str, dict[str, Figure]], reused: Collection[str] | Callable[[str], bool] | None = None,
             real: dict[str, int] | None = None, notes: list[str] | None = None) -> list[Row]:
    """The cost of the grid's work that is not reused, one Row per stage and name.

    reused: labels already complete, as a collection or a test `label -> bool`: a trial `generator/style/arch/probe`
      (its result record) or a dataset `generator/style` (its synthetic images). Views, models and feature sets are
      counted unless every trial that uses them is complete.
    real: real images per split, {"train": n, "test": n}; default: n_classes x prompts.n_per_class and a tenth of that.
    notes: receives "no figure for X: default used" lines.
    """
    from synthray.data.real import load_classes
    from synthray.generation.kinds import generator_entry, sampling_params
    from synthray.metrics.features import PIXELS, encoder_names
    from synthray.probes.transforms import PROBES
    from synthray.sweep.plan import grid_axes, point_label, trials

    notes = notes if notes is not None else []
    done = _reuse_test(reused)
    axes, points = grid_axes(cfg), trials(cfg)
    g, t, m = cfg.generation, cfg.training, cfg.metrics
    n_synth = len(load_classes(cfg.data.classes)) * int(cfg.prompts.n_per_class)
    real = real or {"train": n_synth, "test": n_synth // 10}
    shards = max(1, math.ceil(n_synth / int(g.shard_size)))
    todo = [p for p in points if not done(point_label(p))]
    pairs = sorted({(p["generator"], p["prompt_style"]) for p in todo})  # datasets some unfinished trial needs
    rows: list[Row] = []

    for name in axes["generator"]:
        entry = generator_entry(cfg, name)
        params = sampling_params(entry, str(g.protocol), g)
        new = [s for s in axes["prompt_style"] if (name, s) in pairs and not done(f"{name}/{s}")]
        work = f"{len(new)} dataset(s) x {n_synth:,} images"
        if entry["kind"] != "diffusers":
            rows.append(Row("generate", name, work + " (control: real images, CPU)", len(new) * n_synth, None))
            continue
        fig = None
        if g.device == "gpu":
            fig = figure(throughputs, "generators", name, notes)
            ref_steps = 4 if entry.get("distilled") else 50  # the figures are at the paper protocol, 512 px
            size = params["resolution"] or int(entry["resolution"])  # None: the model's own size
            scale = ref_steps / params["steps"] * (512 / size) ** 2
            if abs(scale - 1) > 1e-9:
                fig = Figure(fig.img_s * scale, fig.device, f"{fig.source}; scaled to {params['steps']} steps at {size} px")
        actors = _actors(g, shards)
        rows.append(Row("generate", name, work, len(new) * n_synth, fig, len(new), actors * _gpus(g.device, g.gpus_per_actor),
                        _pool(actors, "actor", _gpus(g.device, g.gpus_per_actor))))

    for probe in axes["probe"]:
        if PROBES.get(probe).identity:
            continue
        users = [p for p in todo if p["probe"] == probe]
        views = sorted({(p["generator"], p["prompt_style"]) for p in users})
        real_view = (real["train"] + real["test"]) if users else 0
        images = len(views) * n_synth + real_view
        work = f"{len(views)} synthetic view(s) x {n_synth:,} + real {real_view:,} images"
        section = cfg.probes.get(probe) or {}
        if PROBES.get(probe).worker is None or section.get("device") != "gpu":
            rows.append(Row("view", probe, work + " (CPU)", images, None))
            continue
        actors = _actors(section, shards)
        per = _gpus(section.get("device"), section.get("gpus_per_actor", 1))
        rows.append(Row("view", probe, work, images, figure(throughputs, "probes", probe, notes), len(views) + bool(users),
                        actors * per, _pool(actors, "actor", per)))

    per_worker = int(t.num_workers) * _gpus(t.device, t.gpus_per_worker)
    for arch in axes["arch"]:
        users = [p for p in todo if p["arch"] == arch]
        real_models = sorted({p["probe"] for p in users})
        epochs = {p: int(OmegaConf.select(cfg, f"probes.{p}.recipe.epochs", default=None) or cfg.recipe.epochs) for p in axes["probe"]}
        images = sum(n_synth * epochs[p["probe"]] for p in users) + sum(real["train"] * epochs[p] for p in real_models)
        fig = figure(throughputs, "archs", arch, notes) if t.device == "gpu" else None
        ep = "/".join(str(e) for e in sorted(set(epochs.values())))
        rows.append(Row("train", arch, f"{len(users)} synth x {n_synth:,} + {len(real_models)} real x {real['train']:,} images, {ep} epochs",
                        images, fig, len(users) + len(real_models), per_worker,
                        _pool(int(t.num_workers), "worker", _gpus(t.device, t.gpus_per_worker))))
        if users:
            fwd = Figure(fig.img_s * FORWARD_SPEEDUP, fig.device, f"{FORWARD_SPEEDUP:g}x the training figure (forward only)") if fig else None
            rows.append(Row("evaluate", arch, f"{len(users)} trial(s) x ({n_synth:,} synth + 2 x {real['test']:,} real test images)",
                            len(users) * (n_synth + 2 * real["test"]), fwd))

    sample = max(n_synth, real["train"]) if m.max_samples is None else int(m.max_samples)  # null: every row
    seen = lambda probe: "source" if PROBES.get(probe).identity else probe  # noqa: E731 - rgb, texture: the images themselves
    sets = {(p["generator"], p["prompt_style"], seen(p["probe"])) for p in todo}
    n_sets = len(sets) + len({seen(p["probe"]) for p in todo})  # each synthetic view, and the real train view of each probe
    feat_images = len(sets) * min(sample, n_synth) + (n_sets - len(sets)) * min(sample, real["train"])
    actors = max(1, int(m.get("num_actors", 1)))
    per = _gpus(m.device, m.gpus_per_actor)
    for i, enc in enumerate(e for e in encoder_names(cfg) if e != PIXELS):
        fig = figure(throughputs, "encoders", enc, notes) if m.device == "gpu" else None
        rows.append(Row("features", enc, f"{n_sets} feature set(s), up to {sample:,} images each", feat_images, fig,
                        n_sets if i == 0 else 0, actors * per, _pool(actors, "actor", per)))  # one pool runs every encoder
    if m.clipscore.model:
        fig = figure(throughputs, "encoders", "clip", notes) if m.device == "gpu" else None
        rows.append(Row("clipscore", "clip", f"{len(pairs)} dataset(s), up to {sample:,} images each",
                        len(pairs) * min(sample, n_synth), fig, len(pairs), actors * per, _pool(actors, "actor", per)))
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
            test_dir = r._test_dir(root)
            train = test = 0
            for cid in ids:
                n = len(r._list_images(root / "train" / cid)) if (root / "train" / cid).is_dir() else 0
                keep = n - round(d.control_fraction * n)
                n_test = len(r._list_images(test_dir / cid)) if (test_dir / cid).is_dir() else 0
                train, test = train + min(keep, cap or keep), test + min(n_test, cap or n_test)
            return {"train": train, "test": test}, f"counted in {root}"
        except (SynthrayError, OSError):
            pass
    return None, f"data.root {d.root} not readable here" if d.root else f"data.source={d.source} not counted"


def plan_lines(overrides: Sequence[str], throughputs_path: str | None = None) -> list[str]:
    """Everything `synthray plan` prints: the grid, what is reused (when storage is reachable), cost and peak GPUs."""
    from synthray.config import compose
    from synthray.data.real import load_classes
    from synthray.devices import check_device_name
    from synthray.generation.kinds import generator_entry, sampling_params
    from synthray.generation.prompts import PROMPT_STYLES
    from synthray.probes.transforms import PROBES
    from synthray.registry import unknown_name
    from synthray.storage import check_storage
    from synthray.sweep.plan import grid_axes, trials
    from synthray.training.archs import check_arch

    cfg = compose(list(overrides))
    throughputs = load_throughputs(throughputs_path)
    axes, points = grid_axes(cfg), trials(cfg)
    for key in ("generation.device", "training.device", "metrics.device"):
        check_device_name(key, OmegaConf.select(cfg, key))
    for name in axes["generator"]:
        sampling_params(generator_entry(cfg, name), str(cfg.generation.protocol), cfg.generation)
    for style in axes["prompt_style"]:
        if style not in PROMPT_STYLES:
            raise unknown_name("prompt style", style, PROMPT_STYLES)
    for arch in axes["arch"]:
        check_arch(arch)
    for probe in axes["probe"]:
        PROBES.get(probe)

    words = {"generator": "generator", "prompt_style": "prompt style", "arch": "arch", "probe": "probe"}
    shape = " x ".join(f"{len(v)} {words[k]}{'s' if len(v) != 1 else ''}" for k, v in axes.items())
    lines = [f"experiment {cfg.experiment}: {len(points)} trials ({shape}); dry run: nothing launched, nothing written"]
    lines += [f"  {k}: {', '.join(v)}" for k, v in axes.items()]
    reused, real_meta = None, None
    try:
        check_storage(cfg.storage)
    except SynthrayError as err:
        reason = str(err).split(": ", 1)[1] if str(err).startswith("storage ") else str(err)
        lines.append(f"storage {cfg.storage} not reachable ({reason}): every trial counted as to run")
    else:
        from synthray.sweep.runner import plan_summary
        from synthray.sweep.trial import plan_trials

        lines += plan_summary(cfg)
        planned = plan_trials(cfg)
        reused = {t.label for t in planned if t.result.is_complete()}
        reused |= {"/".join((t.point["generator"], t.point["prompt_style"])) for t in planned if t.synthetic.is_complete()}
        if planned and planned[0].real.is_complete():
            real_meta = planned[0].real.meta()
    real, how = count_real(cfg, real_meta)
    notes: list[str] = []
    rows = estimate(cfg, throughputs, reused, real, notes)
    if real:
        notes.append(f"real images: train {real['train']:,}, test {real['test']:,} ({how})")
    else:
        n = len(load_classes(cfg.data.classes)) * int(cfg.prompts.n_per_class)
        notes.append(f"real images: {how}; assumed train = classes x prompts.n_per_class = {n:,}, test = a tenth of that")
    notes.append("reuse is known per synthetic dataset and per trial result; views, models and feature sets are "
                 "counted unless every trial that uses them is complete")
    notes.append("training: one epoch = one pass over a training set at the figure's step throughput (data on the GPU); "
                 "BASELINES.md measured synthray end to end at 0.76x of it (cached) and 0.37x (streaming) on an H200")
    notes.append("evaluate runs in the trial process, which requests no GPU from Ray: in the GPU-hours, not in the peak")
    return lines + [""] + format_plan(cfg, rows, notes, throughputs_path)
