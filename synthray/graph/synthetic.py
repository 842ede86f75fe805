"""The synthetic dataset's spec, read from the config: its prompt table (or the captions it is made from), the
generator's settings by its kind's record, and where the generation stage runs."""

from __future__ import annotations

from typing import Any

import pandas as pd

from synthray.core.artifacts import Artifact, DatasetRef, Store
from synthray.core.images import jpeg_subsampling, old_subsampling
from synthray.core.registry import SynthrayError
from synthray.data.real import load_classes
from synthray.generation.kinds import PLACEMENT_FIELDS, kind_of, sampling_params, unconditional_at_cfg0, zoo_entry
from synthray.generation.throughput import batch_size_setting, overlap_setting
from synthray.graph.specs import RealSpec, SyntheticSpec, placed
from synthray.prompts.table import load_captions, prompt_table


def generator_entry(cfg: Any, name: str) -> dict[str, Any]:
    """The zoo entry of generator `name` (`generators`), with `generation.dtype` applied when set."""
    from omegaconf import OmegaConf

    return zoo_entry(cfg.generators, name, OmegaConf.select(cfg, "generation.dtype", default=None))


def control_generators(names: Any, zoo: Any = None) -> set[str]:
    """The names among `names` whose kind is a control (held-out real images, changed or not), by `zoo` (default:
    the shipped `conf/generators.yaml`); names the zoo does not know are generators."""
    from pathlib import Path

    from omegaconf import OmegaConf

    if zoo is None:
        zoo = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "generators.yaml")
    out = set()
    for name in names:
        try:
            if kind_of(zoo_entry(zoo, str(name))).control:
                out.add(str(name))
        except SynthrayError:
            continue
    return out


def uses_captioner(cfg: Any, style: str) -> bool:
    """Whether `style`'s captions come from the captioner stage (`prompts.captions=captioner`), so its prompt table
    exists only once that stage has run: inside the trial, never at planning time."""
    return style == "caption" and cfg.prompts.captions == "captioner"


def style_captions(cfg: Any, style: str, class_ids: list[str]) -> pd.DataFrame | None:
    """The validated captions table when `style` needs one (caption), else None."""
    if style != "caption":
        return None
    if not cfg.prompts.captions:
        raise SynthrayError("prompt_style=caption needs prompts.captions=<CSV, JSONL or parquet with class_id, caption> "
                            "or prompts.captions=captioner")
    if uses_captioner(cfg, style):
        from synthray.graph.captions import read_captions

        return read_captions(cfg)
    return load_captions(cfg.prompts.captions, class_ids)


def check_captions(cfg: Any, style: str, class_ids: list[str], dry: bool = False) -> None:
    """Before launch: the captions file is valid, or (captioner) the captioner's settings are; it runs later.
    `dry`: a plan, which neither reads storage nor needs the captioner's API key here."""
    if uses_captioner(cfg, style):
        from synthray.graph.captions import check_captioner

        check_captioner(cfg, dry)
    else:
        style_captions(cfg, style, class_ids)


def build_prompt_table(cfg: Any, generator: str, style: str) -> pd.DataFrame:
    classes = load_classes(cfg.data.classes)
    return prompt_table(
        classes, generator=generator, style=style, n_per_class=int(cfg.prompts.n_per_class),
        template=cfg.prompts.template, caption_template=cfg.prompts.caption_template,
        captions=style_captions(cfg, style, classes["id"].tolist()),
    )


def synthetic_settings(cfg: Any, entry: dict[str, Any]) -> dict[str, Any]:
    """What a dataset's key records besides its generator, prompts and real data: everything that changes its
    bytes, and nothing that does not (actors, resumes, the device, the storage root).

    The batch size is in it: float kernels are not batch-invariant (a batch of 3 and three batches of 1 can differ
    by one grey level in a pixel), so a new batch size makes a new dataset rather than a silent mix. `auto` is
    keyed as `auto`: its batch is chosen per actor from free GPU memory, so, like the GPU model, it may move low
    bits. Overlapping the encoding with the next batch (`generation.overlap`) changes no bit and stays out.
    """
    g = cfg.generation
    kind = kind_of(entry)
    spec: dict[str, Any] = {
        "kind": entry["kind"],
        "protocol": g.protocol,
        "params": sampling_params(entry, g.protocol, g),
        "format": g.image_format, "quality": int(g.jpeg_quality) if g.image_format == "jpeg" else None,
        "stored_size": g.stored_size, "shard_size": int(g.shard_size), "batch_size": batch_size_setting(g.batch_size),
    }
    overlap_setting(g)
    if g.image_format == "jpeg" and jpeg_subsampling(g) != old_subsampling(int(g.jpeg_quality)):
        spec["subsampling"] = jpeg_subsampling(g)  # the keys of datasets encoded as before stay as they were
    if entry.get("variant"):
        spec["variant"] = entry["variant"]
    spec.update(kind.identity(entry, g))  # the kind's own part: model, pipeline, kernels; a control's settings
    return spec


def unconditional(cfg: Any, entry: dict[str, Any], settings: dict[str, Any], style: str) -> bool:
    """`generation.empty_prompt_at_cfg0`: the class-name rows of a generator the study runs unconditionally (not
    distilled, guidance 0: `unconditional_at_cfg0`) get an empty prompt. Captions keep theirs, as the study's
    gen_images_from_cap.py does."""
    from omegaconf import OmegaConf

    return (bool(OmegaConf.select(cfg, "generation.empty_prompt_at_cfg0", default=False)) and style == "classname"
            and unconditional_at_cfg0(entry, settings["params"]))


def synthetic_spec(cfg: Any, generator: str, style: str, table: pd.DataFrame | None, real: RealSpec) -> SyntheticSpec:
    """The dataset's spec: everything that changes its bytes (`synthetic_settings`)."""
    from omegaconf import OmegaConf

    from synthray.core.shards import Pool
    from synthray.graph.captions import captions_spec

    entry = generator_entry(cfg, generator)
    settings = synthetic_settings(cfg, entry)
    if table is not None and unconditional(cfg, entry, settings, style):
        table = table.assign(prompt="")  # the prompt rows are keyed: only these datasets get new keys
    captions = None
    if settings.get("reencode_split") == "train":
        table, prompts, rows = None, *whole_split(cfg, generator, style, real)
    elif uses_captioner(cfg, style):
        captions = captions_spec(cfg, real)
        # The real data's key holds class ids only; the names go into every prompt.
        prompts = {"template": cfg.prompts.caption_template, "n_per_class": int(cfg.prompts.n_per_class),
                   "names": load_classes(cfg.data.classes)["name"].tolist()}
        rows = len(real.classes) * int(cfg.prompts.n_per_class)
    else:
        prompts = {"ids": table["id"].tolist(), "prompts": table["prompt"].tolist(), "seeds": table["seed"].tolist()}
        rows = len(table)
    # The entry's own placement fields win over the generation section's defaults: FLUX asks for more memory.
    run = {**OmegaConf.to_container(cfg.generation, resolve=True), **{k: entry[k] for k in PLACEMENT_FIELDS if k in entry}}
    kind = kind_of(entry)
    pool = Pool.from_cfg(run) if kind.loads_model else Pool("cpu")
    shards = max(1, -(-rows // int(run["shard_size"])))
    units = max(1, min(max(int(run["num_actors"]), int(run.get("max_actors") or 0)), shards))
    resources = placed(cfg.placement, pool.device, units, pool.gpus, float(run["gpu_memory_gb"]), f"generate {generator}")
    return SyntheticSpec(generator=generator, style=style, settings=settings, prompts=prompts, rows=rows,
                         real=real if kind.draws_real else None, captions=captions, resources_=resources,
                         table=table if captions is None else None, entry=entry, run=run)


def whole_split(cfg: Any, generator: str, style: str, real: RealSpec) -> tuple[dict[str, Any], int]:
    """The prompts and row count of a dataset that re-encodes every real training image once (`reencode_split:
    train`): its rows are read off the built real data in the trial (`graph.build.training_rows`), so its key holds
    the real data's and how each row's prompt is made; the count is the plan's (counted real images, else an estimate
    of classes x prompts.n_per_class, as `synthray plan` notes)."""
    if style != "classname":
        raise SynthrayError(f"{generator} with generation.reencode_split=train re-encodes each real training image "
                            f"once, under its class name: prompt_style={style} has no rows for it; use classname")
    prompts = {"template": cfg.prompts.template, "names": load_classes(cfg.data.classes)["name"].tolist()}
    rows = (real.counts or {}).get("train") or len(real.classes) * int(cfg.prompts.n_per_class)
    return prompts, int(rows)


def synthetic_artifact(cfg: Any, generator: str, style: str, table: pd.DataFrame | None = None) -> Artifact:
    """The dataset artifact (not built) of `generator` and `style`, on the prompt rows `table` (default: the
    config's prompt table; captions made by the captioner stage have none)."""
    return planned_dataset(cfg, generator, style, table).artifact(Store.from_cfg(cfg))


def planned_dataset(cfg: Any, generator: str, style: str, table: pd.DataFrame | None = None) -> SyntheticSpec:
    from synthray.graph.real import real_spec

    if table is None and not uses_captioner(cfg, style):
        table = build_prompt_table(cfg, generator, style)
    return synthetic_spec(cfg, generator, style, table, real_spec(cfg))


def generate_dataset(cfg: Any, generator: str, style: str = "classname", table: pd.DataFrame | None = None) -> DatasetRef:
    """One synthetic dataset, from the config alone: its real data when the generator draws from it, its prompt
    table (or `table`), and the generation stage. `synthray.api.generate` calls this."""
    from synthray.core.models import Models
    from synthray.graph.build import Context, build

    table = table if table is not None else build_prompt_table(cfg, generator, style)
    models = Models.from_cfg(cfg)
    return DatasetRef(build(planned_dataset(cfg, generator, style, table), Context(models.store, models)), "data")


def captioned_prompt_table(cfg: Any, generator: str, style: str, real: Artifact) -> pd.DataFrame:
    """Inside a trial: build (or reuse) the captions, then the prompt table made from them."""
    from synthray.graph.captions import caption

    caption(cfg, real)
    return build_prompt_table(cfg, generator, style)
