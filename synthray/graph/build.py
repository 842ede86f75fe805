"""Building the stage graph: every stage is `stage(spec, inputs, ctx) -> Artifact`, registered by its spec's kind.

`build(spec, ctx)` builds the spec's inputs first (each spec once per context, and nothing that is complete in
storage), then its stage. `inputs` maps each input field of the spec to what was built for it: an `Artifact` for
a spec field, a `DatasetRef` for a `Split` field (an unset optional input is absent). `ctx` carries what is not the
spec's: the store, the model resolver, and which model reports its epochs to Ray Tune. Where the stage's units
run is in the spec (`resources()`, its run fields), so no stage sees the composed config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import pandas as pd

from synthray.core.artifacts import Artifact, DatasetRef, Store
from synthray.core.models import Models
from synthray.core.registry import Registry
from synthray.graph.specs import Spec, Split

Inputs = dict[str, Any]
STAGES = Registry("stage")


@dataclass
class Context:
    """What every stage may use besides its spec: `store`, `models` (the hub/tiny resolver), and `report` (the ref
    of the model whose epochs go to Ray Tune, the trial's own synthetic model; None: none)."""

    store: Store
    models: Models
    report: str | None = None
    built: dict[str, Artifact] = field(default_factory=dict)  # by ref: each spec is built once per context


def build(spec: Spec, ctx: Context) -> Artifact:
    """The built artifact of `spec`: its inputs built first, then its stage (`STAGES[spec.kind]`)."""
    if spec.ref not in ctx.built:
        ctx.built[spec.ref] = STAGES.get(spec.kind)(spec, built_inputs(spec, ctx), ctx)
    return ctx.built[spec.ref]


def built_inputs(spec: Spec, ctx: Context) -> Inputs:
    """{field: Artifact | DatasetRef} for every spec or split field of `spec` that is set."""
    out: Inputs = {}
    for f in fields(spec):  # type: ignore[arg-type]
        value = getattr(spec, f.name)
        if isinstance(value, Spec):
            out[f.name] = build(value, ctx)
        elif isinstance(value, Split):
            out[f.name] = DatasetRef(build(value.spec, ctx), value.split)
    return out  # an unset optional input (no real data, no selection split) is absent: stages read it with .get


def built_split(split: Split, ctx: Context) -> DatasetRef:
    """A planned split, built: a probe's view of it, or the dataset's own split (identity probes)."""
    return DatasetRef(build(split.spec, ctx), split.split)


def stage(kind: str) -> Callable[[Callable[[Any, Inputs, Context], Artifact]], Callable[[Any, Inputs, Context], Artifact]]:
    return STAGES.register(kind)


@stage("real")
def _real(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.data.real import build_real

    return build_real(spec, ctx.store)


@stage("captions")
def _captions(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.prompts.captions import build_captions

    return build_captions(spec, inputs["real"], ctx.models)


@stage("synthetic")
def _synthetic(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.generation.stage import generate

    if spec.table is not None:
        table = spec.table
    elif spec.captions is not None:
        table = captioned_rows(spec, inputs["captions"])
    else:  # reencode_split: train: a row per real training image, known once the real data is built
        table = training_rows(spec, inputs["real"])
    return generate(spec, table, inputs.get("real"), ctx.models).artifact


def training_rows(spec: Any, real: Artifact) -> pd.DataFrame:
    """The rows of a dataset that re-encodes every image of the built real data's training split."""
    from synthray.generation.controls import split_rows

    return split_rows(spec.generator, DatasetRef(real, "train").uri, spec.prompts["names"], spec.prompts["template"])


def captioned_rows(spec: Any, captions: Artifact) -> pd.DataFrame:
    """The prompt table of a dataset whose prompts come from the captioner stage's built `captions`."""
    from synthray.core.images import read_images
    from synthray.prompts.captions import CAPTION_COLUMNS
    from synthray.prompts.table import prompt_table

    classes = pd.DataFrame({"id": list(spec.captions.real.classes), "name": spec.prompts["names"]})
    return prompt_table(classes, generator=spec.generator, style=spec.style, n_per_class=int(spec.prompts["n_per_class"]),
                        caption_template=spec.prompts["template"],
                        captions=read_images(captions.file("data"), columns=CAPTION_COLUMNS))


@stage("views")
def _views(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.probes.stage import view

    view(ctx.store, ctx.models, spec.setup, inputs["source"], {s: Split(spec, s) for s in spec.subdirs})
    return spec.artifact(ctx.store)


@stage("models")
def _models(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.training.trainer import train_model

    return train_model(spec, inputs["data"], ctx.store, ctx.report == spec.ref, inputs.get("selection"))


@stage("evaluations")
def _evaluations(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.metrics.evaluation import evaluate

    return evaluate(spec, inputs["model"], inputs["data"], ctx.store)


@stage("features")
def _features(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.metrics.features import build_features

    return build_features(spec, inputs["source"], ctx.models)


@stage("clipscores")
def _clipscores(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.metrics.features import build_clipscores

    return build_clipscores(spec, inputs["source"], ctx.models)


@stage("labels")
def _labels(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.labels.stage import build_labels

    return build_labels(spec, inputs["source"], ctx.store, ctx.models)


@stage("dense-models")
def _dense_models(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.training.dense import train_dense

    return train_dense(spec, inputs["data"], inputs["labels"], ctx.store, ctx.report == spec.ref)


@stage("dense-evaluations")
def _dense_evaluations(spec: Any, inputs: Inputs, ctx: Context) -> Artifact:
    from synthray.metrics.dense_eval import evaluate_dense

    return evaluate_dense(spec, inputs["model"], inputs["data"], inputs["labels"], ctx.store)
