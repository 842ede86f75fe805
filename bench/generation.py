"""GPU benchmark of the generation stage: synthray's Ray Data stage against a plain diffusers loop, same GPU, same run.

It builds a *real architecture* (SD1.5, SDXL or FLUX.1-dev) with random weights (the compute of the real
checkpoint; hub downloads are not needed), saves it with `save_pretrained`, then measures:
  (a) a plain diffusers pipeline loop: bf16, eager, PIL output;
  (b) synthray's generation stage end to end: Ray Data actor pool -> JPEG -> parquet shards on disk, with the
      speed settings given (compile, compile_vae, fuse_qkv, channels_last).
It prints images/s for both, the ratio b/a, the fraction of the bf16 FLOP limit (SD1.5), and with --compile the
cold compile and the warm start: the first shard's extra time against a steady shard, in (b) (compiling from an
empty cache with --cold-cache) and in a second, two-shard stage whose new actor loads the compiled code from the
cache folder (--cache-dir).
With --profile it then runs the actor's own shard loop in this process, warms it up, and profiles steady shards
with the torch profiler: the GPU's idle share (no kernel running) against the target of 5 %.

  python bench/generation.py                  # SD1.5 architecture, 512 px, 25 steps, CFG 7.5, batch 16
  python bench/generation.py --compile        # (b) with the UNet compiled (inductor default mode, node cache)
  python bench/generation.py --compile --compile-vae --cold-cache   # compile from nothing, VAE decoder too
  python bench/generation.py --compile --cold-cache --compile-scope whole    # the earlier whole-UNet compile
  python bench/generation.py --attention cudnn        # (b) with one SDPA backend (flash, cudnn, efficient, math)
  python bench/generation.py --family sdxl    # SDXL base architecture, 1024 px (flux: FLUX.1-dev, 1024 px)
  python bench/generation.py --compile --compile-vae --fuse-qkv --batch auto --profile   # all speed settings
  python bench/generation.py --profile --no-overlap    # the idle share with encoding after each batch, as before
  python bench/generation.py --tiny --images 32 --batch 4 --steps 2   # CPU smoke run of the same code path
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from synthray.core.registry import SynthrayError
from synthray.generation.throughput import AUTO_CAP, AUTO_FALLBACK, batch_size_setting

# SD1.5 cost per image (BASELINES.md): UNet 1.607 TFLOP per CFG step (both halves) + VAE decode 2.5 TFLOP.
UNET_TFLOP_PER_STEP, VAE_TFLOP = 1.607, 2.5
PEAK_TFLOPS = 747.0  # bf16 dense matmul measured on the H100 of BASELINES.md
IDLE_TARGET = 0.05  # issue 14: in steady state the GPU is idle at most 5 % of the time


def _batch(value: str) -> int | str:
    try:
        return batch_size_setting(value if value == "auto" else int(value))
    except (ValueError, SynthrayError) as err:
        raise argparse.ArgumentTypeError(f"a whole number >= 1 or auto, got {value!r}") from err


# Per family: the pipeline class, and the model's own size, steps, guidance, and a batch that fits one GPU.
FAMILIES = {
    "sd15": {"pipeline": "StableDiffusionPipeline", "tiny": "sd", "resolution": 512, "steps": 25, "guidance": 7.5, "batch": 16},
    "sdxl": {"pipeline": "StableDiffusionXLPipeline", "tiny": "sdxl", "resolution": 1024, "steps": 25, "guidance": 5.0, "batch": 8},
    "flux": {"pipeline": "FluxPipeline", "tiny": "flux", "resolution": 1024, "steps": 28, "guidance": 3.5, "batch": 4},
}


def plain_diffusers(model: Path, images: int, batch: int, steps: int, resolution: int, guidance: float) -> float:
    """(a): images/s of the bare pipeline (the class its model_index.json names) after one warm-up batch."""
    from diffusers import DiffusionPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(str(model), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"a photo of class {i}" for i in range(batch)]

    def run() -> None:
        pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, height=resolution, width=resolution)

    run()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(max(1, images // batch)):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    rate = max(1, images // batch) * batch / (time.perf_counter() - start)
    pipe = None  # noqa: F841  (frees the GPU memory before the next measurement)
    release_gpu_memory()
    return rate


def release_gpu_memory(wait_s: float = 0.0) -> None:
    """Give this process's cached GPU memory back (a pipeline kept alive by a reference cycle goes too); with
    `wait_s`, also wait up to that long until other processes have released theirs: `ray.shutdown()` kills the
    stage's actor without waiting for its process to free the GPU, and `batch_size=auto` measures what is free."""
    gc.collect()
    if not torch.cuda.is_available():
        return
    torch.cuda.empty_cache()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        free, total = torch.cuda.mem_get_info()
        if free + torch.cuda.memory_reserved() >= 0.9 * total:
            return
        time.sleep(0.5)


def synthray_stage(model: Path, storage: Path, images: int, batch: int | str, shard: int, steps: int, resolution: int,
                   guidance: float, pipeline: str, settings: list[str]) -> tuple[dict[str, Any], tuple]:
    """(b): synthray's generation stage, from the prompt table to parquet shards on disk; `settings` are
    `generation.*` overrides (compile, compile_vae, fuse_qkv, channels_last, overlap, scratch). Returns the figures
    and (cfg, dataset, real data) for `profile_steady`."""
    import ray

    from synthray.config import compose
    from synthray.graph.synthetic import generate_dataset

    # About 40 rows per class, and exactly `images` rows: the largest class count that divides them.
    classes = max(n for n in range(1, max(1, images // 40) + 1) if images % n == 0)
    csv = storage / "classes.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("id,name\n" + "".join(f"c{i},object {i}\n" for i in range(classes)))
    entry = (f"{{kind:diffusers,pipeline:{pipeline},model:'{model}',dtype:bfloat16,steps:{steps},"
             f"guidance:{guidance},resolution:{resolution},released:null}}")
    device = "gpu" if torch.cuda.is_available() else "cpu"
    cfg = compose([f"storage={storage}", f"device={device}", f"data.classes={csv}", f"prompts.n_per_class={images // classes}",
                   "prompts.template='a photo of {name}'", f"generation.batch_size={batch}", f"generation.shard_size={shard}",
                   *settings, f"+generators.bench={entry}"])
    if not ray.is_initialized():
        # A fresh local cluster, never one a file in /tmp/ray points at; one GPU: the pool is one actor, like (a)
        ray.init(address="local", include_dashboard=False)
    start = time.perf_counter()
    data = generate_dataset(cfg, "bench", "classname")
    art, real = data.artifact, None  # a diffusers generator reads no real data
    total = time.perf_counter() - start
    meta = data.artifact.meta()
    # Steady state: rows over the time the one actor spent inside shards after its first (excludes actor start,
    # model load, and the first shard: compiling, or loading compiled code from the cache, and warm-up).
    shards = sorted(meta["timing"], key=lambda t: t["done_at"])
    rest = shards[1:] or shards
    steady = sum(t["rows"] for t in rest) / sum(t["seconds"] for t in rest)
    per_shard = sorted(t["seconds"] for t in rest)[len(rest) // 2]
    return {"end_to_end": meta["rows"] / total, "steady": steady, "rows": meta["rows"], "seconds": total,
            "first_shard_s": shards[0]["seconds"], "steady_shard_s": per_shard,
            "first_shard_extra_s": shards[0]["seconds"] - per_shard, "kernels": data.artifact.spec["kernels"]}, (cfg, art, real)


def profile_steady(cfg: Any, art: Any, real: Any, shards: int, workdir: Path) -> dict[str, Any]:
    """The actor's shard loop (`worker_factory`: model load, batches, encoding, parquet writes) in this process:
    one warm-up shard, then `shards` steady shards under the torch profiler (GPU activity only: no per-op host
    records to slow the launching thread). Idle share = 1 - union of kernel intervals / span from the first kernel to the last."""
    import ray

    from synthray.core.images import write_table
    from synthray.core.models import Models
    from synthray.generation.stage import shard_tasks, worker_factory
    from synthray.generation.throughput import idle_share, kernel_intervals
    from synthray.graph.synthetic import build_prompt_table, planned_dataset

    ray.shutdown()  # the stage's actor leaves the GPU to this process
    release_gpu_memory(wait_s=60)
    work = worker_factory(planned_dataset(cfg, "bench", "classname"), real, Models.from_cfg(cfg))()
    size = int(cfg.generation.shard_size)
    table = build_prompt_table(cfg, "bench", "classname")
    tasks = shard_tasks(table.iloc[: size * (shards + 1)], size)
    out = Path(tempfile.mkdtemp(dir=workdir, prefix="profile-"))

    def write(task: dict[str, Any]) -> None:  # what the actor does per shard (shards._ShardWorker)
        write_table(str(out / task["name"]), work(task))

    write(tasks[0])  # warm-up: compiling or loading compiled code, CUDA graphs recorded, allocator warm
    steady, rows = tasks[1:], sum(t["rows"] for t in tasks[1:])
    result: dict[str, Any] = {"profiled_shards": len(steady), "profiled_rows": rows, "actor_batch": work.batch_size}
    if not torch.cuda.is_available():
        start = time.perf_counter()
        for task in steady:
            write(task)
        result["in_process_img_s"] = rows / (time.perf_counter() - start)
        return result
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for task in steady:
            write(task)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    trace = out / "trace.json"
    prof.export_chrome_trace(str(trace))
    kernels = kernel_intervals(json.loads(trace.read_text()))
    if not kernels:
        raise SystemExit(f"--profile: the profiler recorded no GPU kernels (trace {trace}); is CUPTI available?")
    first, last = min(a for a, _ in kernels), max(b for _, b in kernels)
    result.update(in_process_img_s=rows / seconds, idle_share=idle_share(kernels, first, last), kernels=len(kernels),
                  kernel_span_s=(last - first) / 1e6, trace=str(trace))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(FAMILIES), default="sd15", help="the architecture to build (default sd15)")
    p.add_argument("--images", type=int, default=None, help="default: 640 (sd15), 160 (sdxl), 64 (flux)")
    p.add_argument("--batch", type=_batch, default=None, help="a number, or auto: (b) chooses per actor from free GPU "
                   "memory and (a) runs the family's default; default: 16 (sd15), 8 (sdxl), 4 (flux)")
    p.add_argument("--steps", type=int, default=None, help="default: the model's (25, 25, 28)")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's (7.5, 5.0, 3.5)")
    p.add_argument("--compile", nargs="?", const="default", choices=["default", "max-autotune", "reduce-overhead"],
                   help="(b) with the denoiser compiled: generation.compile=<mode> (bare --compile: default)")
    p.add_argument("--compile-vae", action="store_true", help="(b) with the VAE decoder compiled too")
    p.add_argument("--compile-scope", choices=["regions", "whole"], default="regions", help="(b) generation.compile_scope: "
                   "the denoiser's blocks one by one (default), or the whole forward with coordinate descent (the earlier compile)")
    p.add_argument("--compile-timeout", type=float, default=None, metavar="S", help="(b) generation.compile_timeout_s "
                   "(default: the config's, 600)")
    p.add_argument("--cache-dir", type=Path, default=None, help="the folder for compiled code (the node's scratch; "
                   "default <workdir>/scratch)")
    p.add_argument("--cold-cache", action="store_true", help="compile from nothing: a fresh folder inside the cache "
                   "folder (default: the cache folder itself, so a second run loads the compiled code)")
    p.add_argument("--no-warm-start", action="store_true", help="with --compile: skip the second stage that times a warm start")
    p.add_argument("--attention", choices=["default", "flash", "cudnn", "efficient", "math"], default="default",
                   help="(b) generation.attention: the SDPA backend of every pipeline call (CUDA: all; CPU: default, math)")
    p.add_argument("--fuse-qkv", action="store_true", help="(b) with fused QKV projections")
    p.add_argument("--channels-last", choices=["by-pipeline", "true", "false"], default="by-pipeline", help="(b) generation.channels_last")
    p.add_argument("--no-overlap", action="store_true", help="(b) generation.overlap=false: encode after each batch")
    p.add_argument("--profile", nargs="?", type=int, const=3, default=None, metavar="SHARDS",
                   help="then profile SHARDS steady shards (default 3) of the actor's loop in this process: GPU idle share")
    p.add_argument("--tiny", action="store_true", help="the family's tiny twin instead of its architecture (CPU smoke run)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "synthray-bench")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    family = FAMILIES[args.family]
    steps, guidance = args.steps or family["steps"], family["guidance"] if args.guidance is None else args.guidance
    batch = args.batch or family["batch"]
    plain_batch = family["batch"] if batch == "auto" else batch
    images = args.images or {"sd15": 640, "sdxl": 160, "flux": 64}[args.family]
    # Two batches per shard; auto: room for the largest batch it may choose (its CPU fallback without CUDA).
    shard = 2 * (batch if batch != "auto" else AUTO_CAP if torch.cuda.is_available() else AUTO_FALLBACK)
    if not torch.cuda.is_available() and args.attention not in ("default", "math"):
        p.error(f"--attention {args.attention} needs a CUDA GPU; without one use default or math")
    if args.profile is not None and images < 2 * shard:
        p.error(f"--profile needs at least {2 * shard} images (one warm-up shard of {shard}, then steady ones); got {images}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / (f"tiny-{family['tiny']}" if args.tiny else f"{args.family}-architecture")
    resolution = 32 if args.tiny else family["resolution"]
    if not (model / "model_index.json").exists():
        if args.tiny:
            from synthray.tiny.pipelines import TINY_BUILDERS

            TINY_BUILDERS[family["tiny"]](model)
        else:
            # bench/ is this script's folder, so on sys.path when it runs as `python bench/generation.py`
            from architectures import build_flux_architecture, build_sd15_architecture, build_sdxl_architecture

            {"sd15": build_sd15_architecture, "sdxl": build_sdxl_architecture, "flux": build_flux_architecture}[args.family](model)
        release_gpu_memory()  # the builder's modules, before (a) and (b) measure
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    a = plain_diffusers(model, images if args.tiny else min(images, 160), plain_batch, steps, resolution, guidance)
    storage = Path(tempfile.mkdtemp(dir=args.workdir, prefix="storage-"))
    cache_dir = args.cache_dir or args.workdir / "scratch"
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=cache_dir, prefix="cold-")) if args.cold_cache else cache_dir
    settings = [f"scratch={scratch}", f"generation.channels_last={args.channels_last}", f"generation.fuse_qkv={str(args.fuse_qkv).lower()}",
                f"generation.compile={args.compile or 'false'}", f"generation.compile_vae={str(args.compile_vae).lower()}",
                f"generation.compile_scope={args.compile_scope}", f"generation.attention={args.attention}",
                f"generation.overlap={str(not args.no_overlap).lower()}",
                "generation.compile_cpu=true"]  # --compile on a CPU-only machine (the tiny smoke run) compiles too
    if args.compile_timeout is not None:
        settings.append(f"generation.compile_timeout_s={args.compile_timeout:g}")
    b, made = synthray_stage(model, storage, images, batch, shard, steps, resolution, guidance, family["pipeline"], settings)
    warm = None
    if args.compile and not args.no_warm_start:
        # A new stage (new storage, so nothing is reused) on the same cache folder: its new actor process loads the
        # compiled code from disk, as an actor does on a node where another compiled before.
        # A small CPU stage (--tiny) runs inline in this process: forget its in-memory graphs so they load from disk.
        torch._dynamo.reset()
        warm_storage = Path(tempfile.mkdtemp(dir=args.workdir, prefix="storage-warm-"))
        warm, _ = synthray_stage(model, warm_storage, 2 * shard, batch, shard, steps, resolution, guidance, family["pipeline"], settings)
    tflop = UNET_TFLOP_PER_STEP * steps + VAE_TFLOP  # SD1.5 only: the other families' FLOPs are not in BASELINES.md
    result = {
        "device": device, "model": model.name, "steps": steps, "batch": batch, "plain_batch": plain_batch,
        "overlap": not args.no_overlap, "resolution": resolution, "images": b["rows"],
        "kernels": b["kernels"], "cache": "cold" if args.cold_cache else "warm if run before", "cache_dir": str(scratch),
        "compile_scope": args.compile_scope if args.compile else None, "attention": args.attention,
        "a_plain_img_s": round(a, 3), "b_synthray_img_s": round(b["end_to_end"], 3),
        "b_steady_img_s": round(b["steady"], 3), "ratio_b_over_a": round(b["end_to_end"] / a, 3),
        "ratio_steady_over_a": round(b["steady"] / a, 3),
        "first_shard_s": round(b["first_shard_s"], 2), "steady_shard_s": round(b["steady_shard_s"], 2),
        "first_shard_extra_s": round(b["first_shard_extra_s"], 2),
        "compile_cold_s": round(b["first_shard_extra_s"], 2) if args.compile and args.cold_cache else None,
        "warm_start_s": round(warm["first_shard_extra_s"], 2) if warm else None,
        "flop_fraction_b_steady": None if args.tiny or args.family != "sd15" else round(b["steady"] * tflop / PEAK_TFLOPS, 3),
    }
    if args.profile is not None:
        result["profile"] = profile_steady(*made, min(args.profile, images // shard - 1), args.workdir)
    print(json.dumps(result, indent=1))
    print(f"(a) plain diffusers {a:.2f} img/s | (b) synthray {b['end_to_end']:.2f} img/s end to end, "
          f"{b['steady']:.2f} img/s steady | b/a = {b['end_to_end'] / a:.2f} (steady {b['steady'] / a:.2f}) | "
          f"first shard {b['first_shard_s']:.1f} s, steady shard {b['steady_shard_s']:.1f} s | attention {args.attention}")
    if args.compile:
        cold = f"{b['first_shard_extra_s']:.1f} s" + ("" if args.cold_cache else " (cache folder not emptied: use --cold-cache)")
        print(f"compile ({args.compile}, {args.compile_scope}): cold {cold} | warm start "
              f"{'not run' if warm is None else format(warm['first_shard_extra_s'], '.1f') + ' s'} (first shard minus a "
              f"steady shard; cache {scratch})")
    if args.profile is not None:
        prof = result["profile"]
        if "idle_share" in prof:
            verdict = "meets" if prof["idle_share"] <= IDLE_TARGET else "misses"
            print(f"GPU idle share in steady state: {100 * prof['idle_share']:.1f} % (target <= {100 * IDLE_TARGET:.0f} %: "
                  f"{verdict}), over {prof['profiled_shards']} shards, batch {prof['actor_batch']}, "
                  f"{prof['in_process_img_s']:.2f} img/s profiled; trace {prof['trace']}")
        else:
            print(f"GPU idle share: needs a GPU (no CUDA here; target <= {100 * IDLE_TARGET:.0f} %); the profiled loop ran "
                  f"{prof['profiled_shards']} shards at batch {prof['actor_batch']}, {prof['in_process_img_s']:.2f} img/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
