"""GPU benchmark of the generation stage: synthray's Ray Data stage against a plain diffusers loop, same GPU, same run.

It builds the *real SD1.5 architecture* with random weights (the compute of the real checkpoint; hub downloads
are not needed), saves it with `save_pretrained`, then measures:
  (a) a plain `StableDiffusionPipeline` loop: bf16, batch 16, PIL output;
  (b) synthray's generation stage end to end: Ray Data actor pool -> JPEG -> parquet shards on disk.
It prints images/s for both, the ratio b/a, and the fraction of the bf16 FLOP limit.

  python bench/generation.py                  # SD1.5 architecture, 512 px, 25 steps, CFG 7.5, batch 16
  python bench/generation.py --compile        # (b) with torch.compile of the UNet
  python bench/generation.py --tiny --images 32 --batch 4 --steps 2   # CPU smoke run of the same code path
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

# SD1.5 cost per image (BASELINES.md): UNet 1.607 TFLOP per CFG step (both halves) + VAE decode 2.5 TFLOP.
UNET_TFLOP_PER_STEP, VAE_TFLOP = 1.607, 2.5
PEAK_TFLOPS = 747.0  # bf16 dense matmul measured on the H100 of BASELINES.md


def build_sd15_architecture(path: Path) -> Path:
    """The SD1.5 UNet (860M), 4-level VAE and 12-layer CLIP text model, random weights, saved for from_pretrained."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from synthray.generation.tiny import write_clip_tokenizer

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


def plain_diffusers(model: Path, images: int, batch: int, steps: int, resolution: int, guidance: float) -> float:
    """(a): images/s of the bare pipeline after one warm-up batch."""
    from diffusers import StableDiffusionPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(str(model), dtype=dtype).to(device)
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
    if device == "cuda":
        torch.cuda.empty_cache()
    return rate


def synthray_stage(model: Path, storage: Path, images: int, batch: int, steps: int, resolution: int, guidance: float,
                   compile_unet: bool) -> dict[str, float]:
    """(b): synthray's generation stage, from the prompt table to parquet shards on disk."""
    import ray

    from synthray.config import compose
    from synthray.data.real import real_artifact
    from synthray.generation.stage import build_prompt_table, generate, synthetic_artifact

    classes = max(1, images // 40)
    csv = storage / "classes.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("id,name\n" + "".join(f"c{i},object {i}\n" for i in range(classes)))
    entry = (f"{{kind:diffusers,pipeline:StableDiffusionPipeline,model:'{model}',dtype:bfloat16,steps:{steps},"
             f"guidance:{guidance},resolution:{resolution},released:null}}")
    device = "gpu" if torch.cuda.is_available() else "cpu"
    cfg = compose([f"storage={storage}", f"device={device}", f"data.classes={csv}", f"prompts.n_per_class={images // classes}",
                   "prompts.template='a photo of {name}'", f"generation.batch_size={batch}", f"generation.shard_size={2 * batch}",
                   f"generation.compile={str(compile_unet).lower()}", f"+generators.bench={entry}"])
    if not ray.is_initialized():
        ray.init(include_dashboard=False)  # one GPU: the stage's pool is one actor, like (a)
    start = time.perf_counter()
    table, real = build_prompt_table(cfg, "bench", "classname"), real_artifact(cfg)
    data = generate(cfg, synthetic_artifact(cfg, "bench", "classname", table, real), table, real)
    total = time.perf_counter() - start
    meta = data.artifact.meta()
    # Steady state: rows over the time the one actor spent inside shards (excludes actor start and model load).
    steady = sum(t["rows"] for t in meta["timing"]) / sum(t["seconds"] for t in meta["timing"])
    return {"end_to_end": meta["rows"] / total, "steady": steady, "rows": meta["rows"], "seconds": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--tiny", action="store_true", help="tiny-sd instead of the SD1.5 architecture (CPU smoke run)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "synthray-bench")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / ("tiny-sd" if args.tiny else "sd15-architecture")
    resolution = 32 if args.tiny else 512
    if not (model / "model_index.json").exists():
        if args.tiny:
            from synthray.generation.tiny import build_tiny_sd

            build_tiny_sd(model)
        else:
            build_sd15_architecture(model)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    a = plain_diffusers(model, args.images if args.tiny else min(args.images, 160), args.batch, args.steps, resolution, args.guidance)
    storage = Path(tempfile.mkdtemp(dir=args.workdir, prefix="storage-"))
    b = synthray_stage(model, storage, args.images, args.batch, args.steps, resolution, args.guidance, args.compile)
    tflop = UNET_TFLOP_PER_STEP * args.steps + VAE_TFLOP
    result = {
        "device": device, "model": model.name, "steps": args.steps, "batch": args.batch, "images": b["rows"],
        "compile": args.compile, "a_plain_img_s": round(a, 3), "b_synthray_img_s": round(b["end_to_end"], 3),
        "b_steady_img_s": round(b["steady"], 3), "ratio_b_over_a": round(b["end_to_end"] / a, 3),
        "ratio_steady_over_a": round(b["steady"] / a, 3),
        "flop_fraction_b_steady": None if args.tiny else round(b["steady"] * tflop / PEAK_TFLOPS, 3),
    }
    print(json.dumps(result, indent=1))
    print(f"(a) plain diffusers {a:.2f} img/s | (b) synthray {b['end_to_end']:.2f} img/s end to end, "
          f"{b['steady']:.2f} img/s steady | b/a = {b['end_to_end'] / a:.2f} (steady {b['steady'] / a:.2f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
