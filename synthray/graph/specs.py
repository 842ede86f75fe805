"""The stage graph's nodes: one frozen spec per artifact kind.

A spec holds what its stage computes, and nothing about where it runs. Its key is the hash of `identity()`, which
reads the spec's own fields and the keys of the specs it takes as inputs, so nothing outside the spec can enter a
key. `identity(legacy=True)` is the identity an earlier synthray gave the same artifact (the absolute data folder,
the GenEval path); artifacts stored under that key are still read (`legacy_key`, `Artifact(legacy=...)`).

Every spec also says what it costs (`work()`: image passes, the unit `synthray plan` prices) and what it needs to
run (`resources()`: device, units that can run at once, GPUs per unit). Execution settings that change no bit
(actors, batch `auto` probes, CPU offload) are fields marked `key=False`: stages read them, keys never do.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from synthray.core.artifacts import Artifact, Store, spec_key
from synthray.graph.resources import Resources, Work, placed  # noqa: F401 - placed: the planner's readers take it from here

Json = dict[str, Any]


def run_field(default: Any = None) -> Any:
    """A field a stage reads that is not part of the key: where or how fast it runs, never what it computes."""
    return field(default=default, compare=False, metadata={"key": False})


class Spec(abc.ABC):
    """Base of every spec: the key from `identity()`, the legacy key, the artifact in a store."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def identity(self, legacy: bool = False) -> Json:
        """The JSON the key hashes: this spec's fields and its inputs' keys (`legacy`: their legacy keys)."""

    @functools.cached_property
    def key(self) -> str:
        return spec_key(self.identity())

    @functools.cached_property
    def legacy_key(self) -> str:
        """The key an earlier synthray gave this artifact (equal to `key` when nothing of it changed)."""
        return spec_key(self.identity(legacy=True))

    def key_for(self, legacy: bool) -> str:
        return self.legacy_key if legacy else self.key

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.key}"

    def label(self) -> str:
        return self.kind

    def inputs(self) -> tuple[Spec, ...]:
        """The specs this one reads: its spec fields, and the specs of its `Split` fields."""
        values = [getattr(self, f.name) for f in fields(self)]  # type: ignore[arg-type]
        return tuple(v.spec if isinstance(v, Split) else v for v in values if isinstance(v, (Spec, Split)))

    def work(self) -> Work | None:
        return None

    def resources(self) -> Resources:
        """What one unit of its stage asks Ray for: the planner's `resources_`, or one CPU actor."""
        return getattr(self, "resources_", Resources())

    def check(self) -> None:
        """One line for what would stop this spec's stage, found before anything launches. A spec whose fields
        were checked as they were read from the config (its kind record's, its backend's) has nothing more."""
        return None

    def check_key(self) -> str:
        """Specs with equal check keys pass or fail `check()` together: a sweep checks each key once."""
        return self.ref

    def artifact(self, store: Store) -> Artifact:
        """This spec's artifact in `store` (not built): found under its key, or under its legacy key."""
        legacy = (self.legacy_key,) if self.legacy_key != self.key else ()
        return Artifact(store, self.kind, self.identity(), label=self.label(), legacy=legacy)


def walk_specs(tops: Any) -> Any:
    """Every spec under `tops` (None entries skipped), inputs first, each once: a trial's specs in build order."""
    seen: set[int] = set()

    def walk(spec: Spec) -> Any:
        for child in spec.inputs():
            yield from walk(child)
        if id(spec) not in seen:
            seen.add(id(spec))
            yield spec

    for top in tops:
        if top is not None:
            yield from walk(top)


@dataclass(frozen=True)
class Split:
    """One split of a dataset spec (`data`, or real data's `train`/`control`/`test`)."""

    spec: Spec
    split: str

    def ref_for(self, legacy: bool = False) -> str:
        return f"{self.spec.kind}/{self.spec.key_for(legacy)}/{self.split}"

    @property
    def ref(self) -> str:
        return self.ref_for()


@dataclass(frozen=True)
class RealSpec(Spec):
    """The real images in three splits. `files` fingerprints the folder's image files (relative names and sizes),
    so the key follows the data, not the folder's path; `root` is where to read them (not in the key)."""

    kind: ClassVar[str] = "real"
    source: str
    classes: tuple[str, ...]
    image_size: int | None
    test_fraction: float
    control_fraction: float
    max_per_class: int | None
    seed: int
    on_corrupt: str
    image_column: str
    label_column: str
    files: str | None = None
    root: str | None = run_field()
    counts: dict[str, int] | None = run_field()  # real images per split, for `work()`; None: not known

    def identity(self, legacy: bool = False) -> Json:
        out = {"source": self.source, "root": None, "classes": list(self.classes), "image_size": self.image_size,
               "test_fraction": self.test_fraction, "control_fraction": self.control_fraction,
               "max_per_class": self.max_per_class, "seed": self.seed, "on_corrupt": self.on_corrupt,
               "image_column": self.image_column, "label_column": self.label_column}
        if legacy:  # before the fingerprint, the key held the folder's absolute path
            out["root"] = self.root
        elif self.files is not None:
            out["files"] = self.files
        return out

    def check(self) -> None:
        """The folder holds what the real-data stage reads: class folders under train/ and val/ (or test/), or
        train and test parquet files; or data.root is a copy `synthray stage-data` staged into storage, with these
        classes. Reads names only, never an image."""
        from synthray.core.registry import SynthrayError
        from synthray.data.real import parquet_files, test_dir
        from synthray.data.staged import check_staged, is_staged_root

        if self.source == "digits":
            return
        if not self.root:
            what = "train/ and val/ class folders" if self.source == "imagefolder" else "train and test parquet files"
            raise SynthrayError(f"data.source={self.source} needs data.root=<folder with {what}>")
        if is_staged_root(self.root):  # a URI, or a staged copy in local storage: read through the storage layer
            check_staged(self.root, self.source, self.classes)
            return
        root = Path(self.root)
        if not root.is_dir():
            raise SynthrayError(f"real data folder not found: data.root={root}")
        if self.source == "parquet":
            for split in ("train", "test"):
                parquet_files(root, split)
            return
        for split_dir in (root / "train", test_dir(root)):
            missing = [c for c in self.classes if not (split_dir / c).is_dir()]
            if missing:
                raise SynthrayError(f"{split_dir}: {len(missing)} of {len(self.classes)} class folders missing, "
                                    f"e.g. {', '.join(missing[:3])}")

    def build_spec(self) -> Json:
        """What the real-data stage reads: the identity plus where the files are."""
        return dict(self.identity(), root=self.root)

    def label(self) -> str:
        return f"{self.source} {len(self.classes)} classes"

    def work(self) -> Work | None:
        """The images copied into storage; None while the folder has not been counted (a plan's `counts`)."""
        return Work("real", self.source, sum(self.counts.values())) if self.counts else None


@dataclass(frozen=True)
class CaptionsSpec(Spec):
    """Captions of the real training images by one captioner backend."""

    kind: ClassVar[str] = "captions"
    real: RealSpec
    settings: Json  # per_class, backend, the backend's identity, instruction, preprocess, shard_size
    name: str = run_field("")
    section: Json = run_field(None)  # the captioner section: actors, batch size, endpoint, the key's variable

    def identity(self, legacy: bool = False) -> Json:
        return {"real": self.real.key_for(legacy), "split": "train", **self.settings}

    def label(self) -> str:
        return f"{self.settings['backend']} {self.name}"


@dataclass(frozen=True)
class SyntheticSpec(Spec):
    """A synthetic dataset: a generator's images of a prompt table, encoded and sharded."""

    kind: ClassVar[str] = "synthetic"
    generator: str
    style: str
    settings: Json          # kind, protocol, params, format, quality, sizes, batch, kernels, model, ...
    prompts: Json           # the prompt rows themselves (ids, prompts, seeds), or how captions make them
    rows: int
    real: RealSpec | None = None          # controls and VAE re-encoding read real images
    captions: CaptionsSpec | None = None  # prompts made from the captioner stage's captions
    resources_: Resources = run_field(Resources())
    table: Any = run_field(None)    # the prompt rows (a DataFrame); None: made from the captioner stage's captions
    entry: Json = run_field(None)   # the zoo entry: what the kind's workers load (model name, variant)
    run: Json = run_field(None)     # the generation section: actors, batch size, offload, encoding

    def identity(self, legacy: bool = False) -> Json:
        prompts = dict(self.prompts)
        if self.captions is not None:
            prompts["captions"] = self.captions.key_for(legacy)
        out = {"generator": self.generator, **self.settings, "prompts": prompts}
        if self.real is not None:
            out["real"] = self.real.key_for(legacy)
        return out

    def label(self) -> str:
        return f"{self.generator}, {self.style}, {self.rows} images"

    def check(self) -> None:
        """A control that draws held-out real images has some to draw (one that re-encodes the whole training split,
        `reencode_split: train`, draws none). (Its sampling settings resolved when it was planned.)"""
        from synthray.core.registry import SynthrayError
        from synthray.generation.kinds import KINDS

        kind = KINDS.get(str(self.settings["kind"]))
        held_out = self.settings.get("reencode_split", "control") == "control"
        if kind.draws_real and held_out and not (self.real is not None and float(self.real.control_fraction) > 0):
            fraction = self.real.control_fraction if self.real is not None else None
            raise SynthrayError(f"generator {self.generator} draws held-out real images, but data.control_fraction="
                                f"{fraction} holds none out; set data.control_fraction=0.4")

    def work(self) -> Work:
        return Work("generate", self.generator, self.rows)


@dataclass(frozen=True)
class ViewSpec(Spec):
    """Splits of a dataset seen through a probe (only probes that change the images have views)."""

    kind: ClassVar[str] = "views"
    probe: str
    params: Json
    source: Spec
    subdirs: tuple[str, ...]
    rows: int = run_field(0)
    resources_: Resources = run_field(Resources())
    setup: Any = run_field(None)   # the probe's `ProbeSetup`: its record, transform parameters and actor pool

    def identity(self, legacy: bool = False) -> Json:
        return {"probe": self.probe, "params": self.params, "source": f"{self.source.kind}/{self.source.key_for(legacy)}",
                "subdirs": list(self.subdirs)}

    def label(self) -> str:
        return f"{self.probe} view of {self.source.label()}"

    def work(self) -> Work:
        return Work("view", self.probe, self.rows)


@dataclass(frozen=True)
class ModelSpec(Spec):
    """A classifier trained on one split: the architecture, the recipe and the numerics it ran with."""

    kind: ClassVar[str] = "models"
    arch: Json               # arch_identity: the name, and its version once changed
    num_classes: int
    data: Split
    recipe: Json
    numerics: Json
    selection: Split | None = None   # the real test split a `selection.set: real-test` recipe picks its epoch on
    # generation.bad_images where it matters, on generated rows (None: dropped, as every model before the setting)
    bad_images: str | None = None
    name: str = run_field("")
    rows: int = run_field(0)
    epochs: int = run_field(1)
    resources_: Resources = run_field(Resources(what="worker"))
    run_recipe: Json = run_field(None)   # the whole recipe the loop runs (the key leaves out legacy values)
    training: Json = run_field(None)     # the training section: workers, GPUs, cache, decode, retries

    def identity(self, legacy: bool = False) -> Json:
        out = {**self.arch, "num_classes": self.num_classes, "data": self.data.ref_for(legacy), "recipe": self.recipe,
               "numerics": self.numerics}
        if self.selection is not None:
            out["selection"] = self.selection.ref_for(legacy)
        if self.bad_images is not None:  # keep: NaN and black rows train too, a model of other rows
            out["bad_images"] = self.bad_images
        return out

    def label(self) -> str:
        return self.name or str(self.arch["arch"])

    def check_key(self) -> str:
        from synthray.core.artifacts import canonical_json

        return canonical_json(["models", self.arch, self.run_recipe, self.training])

    def check(self) -> None:
        """The architecture exists, and the recipe and the training section it runs with are valid."""
        from omegaconf import OmegaConf

        from synthray.training.archs import check_arch
        from synthray.training.recipe import check_recipe

        check_arch(str(self.arch["arch"]))
        check_recipe(OmegaConf.create(self.run_recipe), OmegaConf.create(self.training))

    def work(self) -> Work:
        return Work("train", str(self.arch["arch"]), self.rows * self.epochs)


@dataclass(frozen=True)
class EvalSpec(Spec):
    """A trained model's predictions on one split: the top-1, top-5 and per-class accuracy of its best and last
    epochs (`metrics/evaluation.py`)."""

    kind: ClassVar[str] = "evaluations"
    model: ModelSpec
    data: Split
    rows: int = run_field(0)
    resources_: Resources = run_field(Resources())
    pool: Json = run_field(None)   # the evaluation section: device, actors, batch size
    # generation.bad_images=keep on generated rows: NaN and black rows are predicted too, as the study's eval.py
    # reads every saved image (None: left out, as every evaluation before the setting)
    bad_images: str | None = None

    def identity(self, legacy: bool = False) -> Json:
        out = {"schema": 1, "model": self.model.key_for(legacy), "data": self.data.ref_for(legacy)}
        return {**out, "bad_images": self.bad_images} if self.bad_images is not None else out

    def label(self) -> str:
        return f"{self.model.label()} on {self.data.ref}"

    def work(self) -> Work:
        return Work("evaluate", str(self.model.arch["arch"]), 2 * self.rows)  # the best and the last epoch


@dataclass(frozen=True)
class SampledSpec(Spec):
    """Rows sampled from one split and passed through models: feature vectors (`features`) or CLIPScores."""

    kind: ClassVar[str] = "features"
    source: Split
    settings: Json   # encoders or clipscore model, max_samples, seed, and (with a model) device and models
    rows: int = run_field(0)
    resources_: Resources = run_field(Resources())
    pool: Json = run_field(None)   # where its actors run: metrics.device, gpus_per_actor, num_actors

    def identity(self, legacy: bool = False) -> Json:
        return {**self.settings, "source": self.source.ref_for(legacy)}

    def label(self) -> str:
        return f"{'+'.join(self.settings.get('encoders', {}))} features of {self.source.ref}"

    def work(self) -> Work:
        return Work("features", "+".join(self.settings.get("encoders", {})), self.rows)


@dataclass(frozen=True)
class ClipscoreSpec(SampledSpec):
    kind: ClassVar[str] = "clipscores"

    def label(self) -> str:
        return f"CLIPScore of {self.source.ref}"

    def work(self) -> Work:
        return Work("clipscore", "clip", self.rows)


@dataclass(frozen=True)
class ResultSpec(Spec):
    """One trial's results row: the models, metrics and the settings that made them."""

    kind: ClassVar[str] = "results"
    point: Json
    arch: Json
    synthetic: SyntheticSpec
    real: RealSpec
    training: Json
    probe: Json
    metrics: Json
    legacy_metrics: Json | None = None   # the metrics identity as keyed before (GenEval's path in it)
    name: str = run_field("")

    def identity(self, legacy: bool = False) -> Json:
        metrics = self.legacy_metrics if legacy and self.legacy_metrics is not None else self.metrics
        return {"schema": 4, "point": self.point, **self.arch, "synthetic": self.synthetic.key_for(legacy),
                "real": self.real.key_for(legacy), **self.training, "probe": self.probe, "metrics": metrics}

    def label(self) -> str:
        return self.name
