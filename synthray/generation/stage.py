"""The generation stage: a prompt table mapped through a generator on a Ray Data actor pool into parquet shards.

Artifact layout: `<storage>/synthetic/<key>/data/part-NNNNN.parquet` with columns
id, image (encoded bytes), label, class_id, class_name, prompt, prompt_id, replicate, seed, generator, protocol.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable

import pandas as pd
from PIL import Image

from synthray.artifacts import Artifact, BuildDir, DatasetRef, Store
from synthray.data.real import load_classes
from synthray.generation.compiled import kernels_identity
from synthray.generation.generators import build_generator, generator_entry, sampling_params
from synthray.generation.prompts import load_captions, prompt_table
from synthray.generation.throughput import AUTO, AUTO_FALLBACK, batch_size_setting, overlap_setting
from synthray.images import dataset_digest, encode, jpeg_subsampling, read_images, square, to_uint8
from synthray.models import Models, model_identity
from synthray.registry import SynthrayError
from synthray.shards import Pool, map_shards, record_shards

MODEL_KINDS = ("diffusers", "vae-reencode")  # generator kinds that load a model and run on generation.device
IN_FLIGHT = 2  # batches whose host-side tail may still be running when the next one is launched

log = logging.getLogger(__name__)


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
        from synthray.captioning.stage import read_captions

        return read_captions(cfg)
    return load_captions(cfg.prompts.captions, class_ids)


def check_captions(cfg: Any, style: str, class_ids: list[str]) -> None:
    """Before launch: the captions file is valid, or (captioner) the captioner's settings are; it runs later."""
    if uses_captioner(cfg, style):
        from synthray.captioning.stage import check_captioner

        check_captioner(cfg)
    else:
        style_captions(cfg, style, class_ids)


def _old_subsampling(quality: int) -> str:
    """What `encode` chose before `generation.jpeg_subsampling` existed."""
    return "4:4:4" if quality >= 90 else "4:2:0"


def build_prompt_table(cfg: Any, generator: str, style: str) -> pd.DataFrame:
    classes = load_classes(cfg.data.classes)
    return prompt_table(
        classes, generator=generator, style=style, n_per_class=int(cfg.prompts.n_per_class),
        template=cfg.prompts.template, caption_template=cfg.prompts.caption_template,
        captions=style_captions(cfg, style, classes["id"].tolist()),
    )


def control_params(entry: dict[str, Any]) -> dict[str, Any]:
    """A control generator's own settings (e.g. collapsed: prototypes, noise, shift), part of its dataset key."""
    return {k: v for k, v in dict(entry).items() if k not in ("kind", "released")}


def synthetic_settings(cfg: Any, generator: str) -> dict[str, Any]:
    """What a dataset's key records besides its generator, prompts and real data: everything that changes its
    bytes, and nothing that does not (actors, resumes, the device, the storage root).

    The batch size is in it: float kernels are not batch-invariant (a batch of 3 and three batches of 1 can differ
    by one grey level in a pixel), so a new batch size makes a new dataset rather than a silent mix. `auto` is
    keyed as `auto`: its batch is chosen per actor from free GPU memory, so, like the GPU model, it may move low
    bits. Overlapping the encoding with the next batch (`generation.overlap`) changes no bit and stays out.
    """
    entry = generator_entry(cfg, generator)
    g = cfg.generation
    spec: dict[str, Any] = {
        "kind": entry["kind"],
        "protocol": g.protocol,
        "params": sampling_params(entry, g.protocol, g),
        "format": g.image_format, "quality": int(g.jpeg_quality) if g.image_format == "jpeg" else None,
        "stored_size": g.stored_size, "shard_size": int(g.shard_size), "batch_size": batch_size_setting(g.batch_size),
    }
    overlap_setting(g)
    if g.image_format == "jpeg" and jpeg_subsampling(g) != _old_subsampling(int(g.jpeg_quality)):
        spec["subsampling"] = jpeg_subsampling(g)  # the keys of datasets encoded as before stay as they were
    if entry.get("variant"):
        spec["variant"] = entry["variant"]
    if entry["kind"] == "diffusers":
        spec.update(pipeline=entry["pipeline"], model=model_identity(str(entry["model"]), **_tiny_params(entry)), dtype=entry["dtype"],
                    call=dict(entry.get("call") or {}), guidance_kwarg=entry.get("guidance_kwarg"),
                    # These can change low bits of the output; CPU offload only moves weights, so it is left out.
                    kernels=kernels_identity(g, entry["pipeline"]))
    elif entry["kind"] == "vae-reencode":  # the real images and the VAE that re-encodes them (batch size: above)
        spec.update(pipeline=entry["pipeline"], dtype=entry["dtype"], model=model_identity(str(entry["model"]), **_tiny_params(entry)))
    else:
        spec["control"] = control_params(entry)
    return spec


def synthetic_artifact(cfg: Any, generator: str, style: str, table: pd.DataFrame | None, real: Any) -> Artifact:
    """The dataset artifact (not built) of `generator` on the prompt rows `table` (None: captions made by the
    captioner stage). `real`: the real data's spec or artifact."""
    from synthray.graph.planner import real_spec, synthetic_spec

    return synthetic_spec(cfg, generator, style, table, real_spec(cfg)).artifact(Store.from_cfg(cfg))


def _tiny_params(entry: dict[str, Any]) -> dict[str, Any]:
    """A tiny pipeline twin is built at the generator's resolution; real checkpoints take no build parameters."""
    return {"resolution": int(entry["resolution"])} if str(entry.get("model", "")).startswith("tiny:") else {}


def _shard_worker(gen_spec: dict[str, Any], models: Models, fmt: str, quality: int, stored_size: int | None,
                  batch_size: int | str, overlap: bool = True) -> Callable[[dict], dict]:
    """Runs inside each actor: resolve the model name on this node, load the generator once, then turn shard
    tasks into columns.

    With `overlap`, each batch's host-side tail (waiting for its device-to-host copy, uint8, resize, encode) runs
    on a background thread while this thread launches the next batch, so the GPU does not wait for CPU work (PIL
    and numpy release the GIL). Without it, batches run one after another through the generator's plain call:
    the reference path, with the same bytes in the same order.
    """
    from concurrent.futures import ThreadPoolExecutor

    if gen_spec["kind"] in MODEL_KINDS:
        gen_spec = dict(gen_spec, model_path=models.locate(gen_spec["model"], "pipeline", **gen_spec["tiny_params"]))
    if gen_spec.get("compile"):  # compiled code is cached in this node's scratch, and shared through storage
        gen_spec = dict(gen_spec, scratch=str(models.store.scratch_dir()), storage=models.store.root)
    generate = build_generator(gen_spec)
    batch = _actor_batch(generate, batch_size, gen_spec)
    # One thread: the tails finish in launch order, and one batch's encoding is far shorter than a GPU batch.
    tail = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") if overlap else None
    # Generators without a `launch` (controls, VAE re-encoding) finish on this thread; only their encoding moves.
    launch = getattr(generate, "launch", None) or (lambda rows: functools.partial(list, generate(rows)))

    def finish(images: list) -> list[tuple[bytes, str]]:
        done = []
        for out in images:
            pixels, verdict = to_uint8(out)
            image = Image.fromarray(pixels)
            done.append((encode(square(image, stored_size) if stored_size else image, fmt, quality, gen_spec.get("subsampling")), verdict))
        return done

    def encoded_rows(rows: pd.DataFrame) -> list[tuple[bytes, str]]:
        parts = [rows.iloc[s:s + batch] for s in range(0, len(rows), batch)]
        if tail is None:
            return [item for part in parts for item in finish(generate(part))]
        pending = []
        for k, part in enumerate(parts):
            if k >= IN_FLIGHT:
                pending[k - IN_FLIGHT].result()  # bounds the batches held in host memory
            fetch = launch(part)
            pending.append(tail.submit(lambda fetch=fetch: finish(fetch())))
        return [item for future in pending for item in future.result()]

    def work(task: dict[str, Any]) -> dict[str, list]:
        rows = pd.DataFrame(task["table"])
        encoded = encoded_rows(rows)
        columns = {c: rows[c].tolist() for c in rows.columns}
        columns["image"] = [data for data, _ in encoded]
        columns["quality"] = [verdict for _, verdict in encoded]
        columns["generator"] = [gen_spec["name"]] * len(rows)
        columns["protocol"] = [gen_spec["protocol"]] * len(rows)
        return columns

    work.batch_size = batch  # what this actor runs (`auto` resolved), for the bench
    return work


def _actor_batch(generate: Any, setting: int | str, gen_spec: dict[str, Any]) -> int:
    """The batch this actor runs: the configured one, or for `auto` the one a probe finds fits free GPU memory
    (without CUDA, or with CPU offload where GPU memory says little, `AUTO_FALLBACK`). Logged once per actor."""
    if setting != AUTO:
        return int(setting)
    probe = getattr(generate, "auto_batch_size", None)
    if probe is None or getattr(generate, "device", "cpu") != "cuda" or gen_spec.get("cpu_offload"):
        log.info("generate %s: batch_size=auto -> %d (no GPU memory to measure here)", gen_spec["name"], AUTO_FALLBACK)
        return AUTO_FALLBACK
    batch, figures = probe(float(gen_spec.get("gpu_share", 1.0)), gen_spec.get("shard_size"))
    log.info("generate %s: batch_size=auto -> %d (%.2f GiB per image, %.1f GiB available)", gen_spec["name"], batch,
             figures["per_image_gib"], figures["available_gib"])
    return batch


def worker_factory(cfg: Any, art: Artifact, real: Artifact) -> Callable[[], Callable[[dict], dict]]:
    """What each actor runs for the dataset `art`: `factory()` loads the generator and returns `work(task) -> columns`."""
    g = cfg.generation
    entry = generator_entry(cfg, art.spec["generator"])
    gen_spec = {"name": art.spec["generator"], "kind": entry["kind"], "protocol": g.protocol, "params": art.spec["params"],
                "subsampling": art.spec.get("subsampling", _old_subsampling(int(g.jpeg_quality))),
                "gpu_share": float(g.gpus_per_actor) if g.device == "gpu" else 1.0, "shard_size": int(g.shard_size)}
    if entry["kind"] == "diffusers":
        gen_spec.update(pipeline=entry["pipeline"], dtype=entry["dtype"], variant=entry.get("variant"), model=str(entry["model"]),
                        tiny_params=_tiny_params(entry), call=art.spec["call"], guidance_kwarg=art.spec["guidance_kwarg"],
                        cpu_offload=bool(g.cpu_offload), compile_cpu=bool(g.compile_cpu), compile_cache=g.compile_cache,
                        **art.spec["kernels"])
    elif entry["kind"] == "vae-reencode":
        gen_spec.update(control_uri=DatasetRef(real, "control").uri, pipeline=entry["pipeline"], dtype=entry["dtype"],
                        model=str(entry["model"]), tiny_params=_tiny_params(entry))
    else:
        gen_spec.update(control_uri=DatasetRef(real, "control").uri, control=art.spec["control"])
    return functools.partial(_shard_worker, gen_spec, Models.from_cfg(cfg), g.image_format, int(g.jpeg_quality),
                             g.stored_size, batch_size_setting(g.batch_size), overlap_setting(g))


def shard_tasks(table: pd.DataFrame, size: int) -> list[dict[str, Any]]:
    return [{"name": f"part-{i:05d}.parquet", "rows": len(chunk), "table": chunk.to_dict(orient="list")}
            for i, chunk in enumerate(table.iloc[s:s + size] for s in range(0, len(table), size))]


def generate(cfg: Any, art: Artifact, table: pd.DataFrame, real: Artifact) -> DatasetRef:
    """Build (or reuse) the synthetic dataset `art` (from `synthetic_artifact`) of the prompt rows `table`."""
    generator = art.spec["generator"]
    entry = generator_entry(cfg, generator)

    def make(out: BuildDir) -> dict[str, Any]:
        g = cfg.generation
        size = int(g.shard_size)
        tasks = shard_tasks(table, size)
        # Controls that only copy real images run on CPU whatever the device setting; a VAE runs where pipelines do.
        pool = Pool.from_cfg(g) if entry["kind"] in MODEL_KINDS else Pool("cpu", actors=int(g.num_actors), max_actors=g.max_actors)
        data = f"{out.uri}/data"
        shards = map_shards(tasks, worker_factory(cfg, art, real), data, what=f"generate {art.label}", pool=pool)
        record_shards(out, "data", shards)
        quality = read_images(data, columns=["quality"], usable_only=False)["quality"].value_counts()
        counts = {k: int(v) for k, v in quality.items()}
        bad = len(table) - counts.get("ok", 0)
        if bad > float(g.max_bad_fraction) * len(table):
            raise SynthrayError(
                f"generate {generator}: {bad} of {len(table)} images are NaN or all black ({counts}), over "
                f"generation.max_bad_fraction={g.max_bad_fraction}; try dtype=float32/bfloat16 for this generator"
            )
        return {"rows": len(table), "shards": math.ceil(len(table) / size), "digest": dataset_digest(data),
                "quality": counts, "bad": bad, "timing": shards}

    return DatasetRef(art.build(make), "data")
