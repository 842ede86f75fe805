"""GPU benchmark of the CLIP ViT-L/14 feature encoder: synthray's `ClipEncoder` against a plain transformers loop.

  (a) plain: `CLIPModel.get_image_features` on normalised float pixels already on the GPU, bf16 autocast, batch B:
      the model's ceiling (no decoding, no preprocessing, no transfer).
  (b) synthray: `ClipEncoder(folder)(images)` on uint8 images in host memory, as a feature worker holds them after
      decoding a shard: the preprocessing (uint8 upload, then bicubic resize, centre crop and normalise on the
      GPU; on the CPU with --tiny) is included.
  b/a, both in one process on the same device. Targets: (b) >= 1500 images/s on one GPU (issue 14), b/a >= 0.9
  (issue 25). On a GPU it also checks that the device preprocessing gives the CPU path's features on the first
  batch: max |difference| and min cosine, beside the same figures for bf16 against fp32 (the existing noise).

Both use ViT-L/14's real configuration with random weights (its compute), saved with `save_pretrained` and loaded
through the same `from_pretrained` path as a downloaded checkpoint.

  python bench/encoders.py                       # ViT-L/14, 4096 images of 256 px, batch 256
  python bench/encoders.py --size 512            # the study's stored size
  python bench/encoders.py --tiny                # CPU smoke run with the tiny CLIP twin (times mean nothing)
  python bench/encoders.py --json out.json       # also write the figures here
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthray.metrics.encoders import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipEncoder  # noqa: E402
from synthray.tiny.encoders import build_tiny_encoder  # noqa: E402


def save_vit_l14(folder: Path) -> Path:
    """openai/clip-vit-large-patch14's configuration and processor, random weights."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=224, patch_size=14)
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 428M parameters: on the GPU
        model = CLIPModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                       image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD)).save_pretrained(folder)
    return folder


def synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def plain(folder: Path, n: int, batch: int, device: torch.device) -> float:
    """(a) images/s of the bare model on pixels already on the device."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(folder).to(device).eval()
    side = model.config.vision_config.image_size
    pixels = torch.randn(batch, 3, side, side, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        model.get_image_features(pixel_values=pixels)  # warm-up: kernels, cuBLAS workspaces
        start = synced(device)
        for _ in range(max(1, n // batch)):
            model.get_image_features(pixel_values=pixels)
        seconds = synced(device) - start
    return max(1, n // batch) * batch / seconds


def ours(folder: Path, images: list[np.ndarray], batch: int, device: torch.device) -> tuple[float, dict]:
    """(b) images/s of synthray's encoder from uint8 host images (preprocessing included), and how far the device
    preprocessing moves the first batch's features from the CPU path's (empty on the CPU: one path there)."""
    encoder = ClipEncoder(str(folder), device=str(device), batch_size=batch)
    encoder(images[:batch])  # warm-up, as (a)
    start = synced(device)
    features = encoder(images)
    seconds = synced(device) - start
    assert features.shape == (len(images), encoder.dim) and np.isfinite(features).all()
    return len(images) / seconds, (check_paths(encoder, images[:batch]) if device.type == "cuda" else {})


def check_paths(encoder: ClipEncoder, images: list[np.ndarray]) -> dict:
    """Features from the device preprocessing against the CPU path's, in fp32 and in bf16 (what (b) runs)."""
    cos = torch.nn.functional.cosine_similarity
    with torch.inference_mode():
        cpu = torch.stack([encoder.preprocess(im, encoder.device) for im in images])
        dev = encoder.preprocess.on_device(images, encoder.device)
        ref, moved = encoder.embed(cpu).float(), encoder.embed(dev).float()
        with encoder.autocast():
            bf16 = encoder.embed(cpu).float()
    return {"device_vs_cpu_max_abs": float((moved - ref).abs().max()), "device_vs_cpu_min_cos": float(cos(moved, ref).min()),
            "bf16_vs_fp32_max_abs": float((bf16 - ref).abs().max()), "bf16_vs_fp32_min_cos": float(cos(bf16, ref).min())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--size", type=int, default=256, help="side of the stored images fed to (b)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--tiny", action="store_true", help="the tiny CLIP twin on CPU: checks the code path only")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    if args.tiny:
        args.images, args.size, args.batch = min(args.images, 256), min(args.size, 64), min(args.batch, 64)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_encoder("clip", Path(tmp) / "clip") if args.tiny else save_vit_l14(Path(tmp) / "clip")
        a = plain(folder, args.images, args.batch, device)
        b, paths = ours(folder, images, args.batch, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; model: {'tiny CLIP twin' if args.tiny else 'CLIP ViT-L/14 (random weights)'}; "
          f"{args.images} images of {args.size} px, batch {args.batch}")
    print(f"(a) plain transformers, pixels on the device: {a:8.1f} images/s")
    print(f"(b) synthray ClipEncoder from uint8 images:   {b:8.1f} images/s")
    verdict = "not judged (a CPU run: the figures mean nothing)" if device.type == "cpu" else \
        ("met" if b >= 1500 and b / a >= 0.9 else "not met")
    print(f"b/a = {b / a:.2f}; targets (b) >= 1500 images/s and b/a >= 0.9 on one GPU: {verdict}")
    if paths:
        print("device preprocessing against the CPU path (first batch, fp32): max |d| {device_vs_cpu_max_abs:.2e}, "
              "min cos {device_vs_cpu_min_cos:.7f}; bf16 against fp32: max |d| {bf16_vs_fp32_max_abs:.2e}, "
              "min cos {bf16_vs_fp32_min_cos:.7f}".format(**paths))
    result = {"device": name, "images": args.images, "size": args.size, "batch": args.batch,
              "plain_ips": round(a, 1), "synthray_ips": round(b, 1), "ratio": round(b / a, 3), **paths}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
