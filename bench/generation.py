"""GPU benchmark of the generation stage: synthray's Ray Data stage against a plain diffusers loop, same GPU, same run.

It builds a *real architecture* (SD1.5, SDXL or FLUX.1-dev) with random weights (the compute of the real
checkpoint; hub downloads are not needed), saves it with `save_pretrained`, then measures:
  (a) a plain diffusers pipeline loop: bf16, eager, PIL output;
  (b) synthray's generation stage end to end: Ray Data actor pool -> JPEG -> parquet shards on disk, with the
      speed settings given (compile, compile_vae, fuse_qkv, channels_last).
It prints images/s for both, the ratio b/a, the fraction of the bf16 FLOP limit (SD1.5), and with --compile the
first shard's extra time (compiling, or loading compiled code from the node cache) against a steady shard.
With --profile it then runs the actor's own shard loop in this process, warms it up, and profiles steady shards
with the torch profiler: the GPU's idle share (no kernel running) against the target of 5 %.

  python bench/generation.py                  # SD1.5 architecture, 512 px, 25 steps, CFG 7.5, batch 16
  python bench/generation.py --compile        # (b) with the UNet compiled (inductor default mode, node cache)
  python bench/generation.py --compile --compile-vae --cold-cache   # compile from nothing, VAE decoder too
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


def build_sd15_architecture(path: Path) -> Path:
    """The SD1.5 UNet (860M), 4-level VAE and 12-layer CLIP text model, random weights, saved for from_pretrained."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from synthray.tiny.tokenizers import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as tok_dir:
        vocab = write_clip_tokenizer(Path(tok_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                        vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    return path


# Per family: the pipeline class, and the model's own size, steps, guidance, and a batch that fits one GPU.
FAMILIES = {
    "sd15": {"pipeline": "StableDiffusionPipeline", "tiny": "sd", "resolution": 512, "steps": 25, "guidance": 7.5, "batch": 16},
    "sdxl": {"pipeline": "StableDiffusionXLPipeline", "tiny": "sdxl", "resolution": 1024, "steps": 25, "guidance": 5.0, "batch": 8},
    "flux": {"pipeline": "FluxPipeline", "tiny": "flux", "resolution": 1024, "steps": 28, "guidance": 3.5, "batch": 4},
}


def _clip_text(vocab: int, hidden: int, layers: int, heads: int, act: str, projection: bool = False) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=heads, num_hidden_layers=layers,
                            hidden_act=act, projection_dim=hidden, vocab_size=vocab, bos_token_id=vocab - 2,
                            eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _tokenizer() -> tuple:
    from transformers import CLIPTokenizer

    from synthray.tiny.tokenizers import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as tok_dir:
        vocab = write_clip_tokenizer(Path(tok_dir))
        return CLIPTokenizer.from_pretrained(tok_dir), vocab


def _save_bf16(pipe, path: Path) -> Path:
    """Weights stored in bf16, as run: half the disk and load time of float32 (FLUX is 12B + 4.7B parameters)."""
    pipe.to(torch.bfloat16).save_pretrained(str(path))
    return path


def build_sdxl_architecture(path: Path) -> Path:
    """SDXL base 1.0: the 2.6B UNet (text_time conditioning), CLIP-L + OpenCLIP-bigG text encoders, the SDXL VAE."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, vocab = _tokenizer()
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on the GPU: seconds, not minutes
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        )
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            scaling_factor=0.13025)
        text = _clip_text(vocab, 768, 12, 12, "quick_gelu")
        text_2 = _clip_text(vocab, 1280, 32, 20, "gelu", projection=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                       timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
                                     unet=unet, scheduler=scheduler, add_watermarker=False)
    return _save_bf16(pipe, path)


def build_flux_architecture(path: Path) -> Path:
    """FLUX.1-dev: the 12B MMDiT (19 double + 38 single blocks, guidance-embedded), CLIP-L, T5-v1.1-XXL, the
    16-channel VAE. Needs about 70 GB of GPU memory to build and 34 GB of disk."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from synthray.tiny.tokenizers import t5_tokenizer

    tokenizer, vocab = _tokenizer()
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                                             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                             guidance_embeds=True, axes_dims_rope=(16, 56, 56)).to(torch.bfloat16)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, sample_size=1024,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
        text = _clip_text(vocab, 768, 12, 12, "quick_gelu")
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                     feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1)).to(torch.bfloat16)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text, tokenizer=tokenizer, text_encoder_2=t5,
                        tokenizer_2=t5_tokenizer(), transformer=transformer)
    return _save_bf16(pipe, path)


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
    p.add_argument("--cold-cache", action="store_true", help="a fresh scratch folder: compile from nothing (default: "
                   "<workdir>/scratch, so a second run loads the compiled code)")
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
            {"sd15": build_sd15_architecture, "sdxl": build_sdxl_architecture, "flux": build_flux_architecture}[args.family](model)
        release_gpu_memory()  # the builder's modules, before (a) and (b) measure
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    a = plain_diffusers(model, images if args.tiny else min(images, 160), plain_batch, steps, resolution, guidance)
    storage = Path(tempfile.mkdtemp(dir=args.workdir, prefix="storage-"))
    scratch = Path(tempfile.mkdtemp(dir=args.workdir, prefix="scratch-")) if args.cold_cache else args.workdir / "scratch"
    settings = [f"scratch={scratch}", f"generation.channels_last={args.channels_last}", f"generation.fuse_qkv={str(args.fuse_qkv).lower()}",
                f"generation.compile={args.compile or 'false'}", f"generation.compile_vae={str(args.compile_vae).lower()}",
                f"generation.overlap={str(not args.no_overlap).lower()}",
                "generation.compile_cpu=true"]  # --compile on a CPU-only machine (the tiny smoke run) compiles too
    b, made = synthray_stage(model, storage, images, batch, shard, steps, resolution, guidance, family["pipeline"], settings)
    tflop = UNET_TFLOP_PER_STEP * steps + VAE_TFLOP  # SD1.5 only: the other families' FLOPs are not in BASELINES.md
    result = {
        "device": device, "model": model.name, "steps": steps, "batch": batch, "plain_batch": plain_batch,
        "overlap": not args.no_overlap, "resolution": resolution, "images": b["rows"],
        "kernels": b["kernels"], "cache": "cold" if args.cold_cache else "warm if run before",
        "a_plain_img_s": round(a, 3), "b_synthray_img_s": round(b["end_to_end"], 3),
        "b_steady_img_s": round(b["steady"], 3), "ratio_b_over_a": round(b["end_to_end"] / a, 3),
        "ratio_steady_over_a": round(b["steady"] / a, 3),
        "first_shard_s": round(b["first_shard_s"], 2), "steady_shard_s": round(b["steady_shard_s"], 2),
        "first_shard_extra_s": round(b["first_shard_extra_s"], 2),
        "flop_fraction_b_steady": None if args.tiny or args.family != "sd15" else round(b["steady"] * tflop / PEAK_TFLOPS, 3),
    }
    if args.profile is not None:
        result["profile"] = profile_steady(*made, min(args.profile, images // shard - 1), args.workdir)
    print(json.dumps(result, indent=1))
    print(f"(a) plain diffusers {a:.2f} img/s | (b) synthray {b['end_to_end']:.2f} img/s end to end, "
          f"{b['steady']:.2f} img/s steady | b/a = {b['end_to_end'] / a:.2f} (steady {b['steady'] / a:.2f}) | "
          f"first shard {b['first_shard_s']:.1f} s, steady shard {b['steady_shard_s']:.1f} s")
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
