"""The generation stage: a prompt table mapped through a generator on a Ray Data actor pool into parquet shards.

Artifact layout: `<storage>/synthetic/<key>/data/part-NNNNN.parquet` with columns
id, image (encoded bytes), label, class_id, class_name, prompt, prompt_id, replicate, seed, generator, protocol.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import pandas as pd
from omegaconf import OmegaConf
from PIL import Image

from synthray.core.artifacts import Artifact, BuildDir, DatasetRef
from synthray.core.images import dataset_digest, encode, old_subsampling, read_images, square, to_uint8
from synthray.core.models import Models
from synthray.core.registry import SynthrayError
from synthray.core.shards import Pool, map_shards, placements, record_shards
from synthray.generation.kinds import KINDS, build_generator
from synthray.generation.throughput import AUTO, AUTO_FALLBACK, batch_size_setting, overlap_setting

IN_FLIGHT = 2  # batches whose host-side tail may still be running when the next one is launched

log = logging.getLogger(__name__)


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

    if KINDS.get(gen_spec["kind"]).loads_model:
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


def worker_factory(spec: Any, real: Artifact | None, models: Models) -> Callable[[], Callable[[dict], dict]]:
    """What each actor runs for the dataset `spec` (a `SyntheticSpec`): `factory()` loads the generator and
    returns `work(task) -> columns`. `real`: the real data, for kinds that draw held-out real images."""
    g, settings = spec.run, spec.settings
    kind = KINDS.get(settings["kind"])
    gen_spec = {"name": spec.generator, "kind": kind.name, "protocol": g["protocol"], "params": settings["params"],
                "subsampling": settings.get("subsampling", old_subsampling(int(g["jpeg_quality"]))),
                "gpu_share": float(g["gpus_per_actor"]) if g["device"] == "gpu" else 1.0, "shard_size": int(g["shard_size"]),
                **kind.worker(spec.entry, OmegaConf.create(g)), **settings.get("kernels", {})}
    for key in ("call", "guidance_kwarg", "control", "reencode_split"):  # keyed settings the worker reads as keyed
        if key in settings:
            gen_spec[key] = settings[key]
    if kind.draws_real:  # the split it draws: held out (control), or the whole training split (reencode_split: train)
        gen_spec["control_uri"] = DatasetRef(real, settings.get("reencode_split", "control")).uri
    return functools.partial(_shard_worker, gen_spec, models, g["image_format"], int(g["jpeg_quality"]),
                             g["stored_size"], batch_size_setting(g["batch_size"]), overlap_setting(g))


def shard_tasks(table: pd.DataFrame, size: int) -> list[dict[str, Any]]:
    return [{"name": f"part-{i:05d}.parquet", "rows": len(chunk), "table": chunk.to_dict(orient="list")}
            for i, chunk in enumerate(table.iloc[s:s + size] for s in range(0, len(table), size))]


def generate(spec: Any, table: pd.DataFrame, real: Artifact | None, models: Models) -> DatasetRef:
    """The generation stage: build (or reuse) the synthetic dataset `spec` (a `SyntheticSpec`) of the prompt rows
    `table`. `real`: the real data, for kinds that draw held-out real images."""
    art = spec.artifact(models.store)
    g = spec.run
    kind = KINDS.get(spec.settings["kind"])

    def make(out: BuildDir) -> dict[str, Any]:
        size = int(g["shard_size"])
        tasks = shard_tasks(table, size)
        # Controls that only copy real images run on CPU whatever the device setting; a VAE runs where pipelines do.
        pool = (Pool.from_cfg(g, spec.resources().label_selector) if kind.loads_model
                else Pool("cpu", actors=int(g["num_actors"]), max_actors=g.get("max_actors")))
        data = f"{out.uri}/data"
        shards = map_shards(tasks, worker_factory(spec, real, models), data, what=f"generate {art.label}", pool=pool)
        record_shards(out, "data", shards)
        quality = read_images(data, columns=["quality"], usable_only=False)["quality"].value_counts()
        counts = {k: int(v) for k, v in quality.items()}
        bad = len(table) - counts.get("ok", 0)
        check_bad_images(spec.generator, g, len(table), bad, counts)
        return {"rows": len(table), "shards": math.ceil(len(table) / size), "digest": dataset_digest(data),
                "quality": counts, "bad": bad, "bad_images": bad_images(g), "timing": shards,
                "placement": placements(shards)}

    built = art.build(make)
    meta = built.meta() if bad_images(g) == "drop" else {}
    if meta.get("bad_images") == "keep":
        # Built by a run that keeps them, so never guarded: a run that drops them holds it to its own guard.
        check_bad_images(spec.generator, g, int(meta["rows"]), int(meta["bad"]), meta["quality"], quiet=True)
    return DatasetRef(built, "data")


def bad_images(g: Any) -> str:
    """`generation.bad_images` of the generation section `g`: drop (synthray's) or keep (the study's)."""
    return str(g.get("bad_images") or "drop")


def check_bad_images(generator: str, g: Any, rows: int, bad: int, counts: dict[str, int], quiet: bool = False) -> None:
    """The quality guard on a generated dataset: NaN and all-black images are counted (the dataset's meta holds
    the counts) and logged; with `bad_images: drop` more than `max_bad_fraction` of them fail the stage, with
    `keep` (the study's, which saves every image and trains on it) nothing does."""
    keep = bad_images(g) == "keep"
    if bad and not quiet:
        log.info("generate %s: %d of %d images are NaN or all black (%s), %s", generator, bad, rows, counts,
                 "kept for training (generation.bad_images=keep)" if keep else "left out of training")
    if not keep and bad > float(g["max_bad_fraction"]) * rows:
        raise SynthrayError(
            f"generate {generator}: {bad} of {rows} images are NaN or all black ({counts}), over "
            f"generation.max_bad_fraction={g['max_bad_fraction']}; try dtype=float32/bfloat16 for this generator, "
            f"or generation.bad_images=keep to train on them"
        )
