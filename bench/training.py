"""GPU benchmark of the training stage: synthray's Ray Train loop against a plain PyTorch loop, same GPU, same run.

  (a) a plain PyTorch loop on GPU-resident random tensors: the same model, batch, Adam, bf16 autocast and
      channels_last, no data loading at all (the ceiling);
  (b) synthray's training stage: Ray Train `TorchTrainer` reading a dataset artifact of JPEGs (parquet shards
      as the generation stage writes them) through Ray Data, decoding on CPU workers, augmenting on the GPU
      with the `paper` recipe (RandomResizedCrop, one-of, ColorJitter, flip, CutMix).
It prints images/s of both, and b/a, for each architecture. Target (issue 14): b/a >= 0.9. For each epoch of (b)
it also prints where rank 0's time went: waiting on Ray Data for the next batch, decoding on the worker
(--jpeg-decode gpu), the steps (GPU time included: the loop synchronises once at the end of the epoch), and the
evaluation of the selection rows (none here: selection_fraction 0).

  python bench/training.py                          # resnet50 and vit_tiny, 20k 256px JPEGs, batch 256
  python bench/training.py --compile                # (a) and (b) with torch.compile
  python bench/training.py --cache-gb 0             # (b) streams from the shards instead of a decoded cache
  python bench/training.py --cache-gb 0 --jpeg-decode gpu   # (b) streams JPEG bytes; the GPU worker decodes (nvjpeg)
  python bench/training.py --cache-gb 0 --decode-cpus 12    # (b) streams with at most 12 Ray Data decode tasks
  python bench/training.py --load-size native       # (b) the study's input: each image cropped at its native size
  python bench/training.py --tiny                   # CPU smoke run of the same code path (speeds mean nothing)
  python bench/training.py --profile                # also profile 5 steady steps of (a) and of (b) (epoch 2, rank 0):
                                                    # top CUDA kernels, gaps between them, H2D copies, syncs
  python bench/training.py --tiny --profile         # the same on CPU: top CPU ops, host gaps between aten ops

`--load-size 256` (the default) is the input the GPU baseline in bench/RESULTS.md was measured on: each image a
256 px square, cropped in one batched grid_sample (`antialias=false`, `color_jitter_order=fixed`); `native` is the
study's per-image crop.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_jpeg_dataset(root: Path, images: int, size: int, classes: int, shard: int = 1000):
    """A dataset artifact (`data/` split) of smooth random JPEGs (q95, like generated images; pure noise would be a
    decode worst case), as parquet shards; returns its `DatasetRef`."""
    from PIL import Image

    from synthray.core.artifacts import Artifact, DatasetRef, Store
    from synthray.core.images import encode, write_table

    def make(out):
        rng = np.random.default_rng(0)
        for start in range(0, images, shard):
            n = min(shard, images - start)
            low = rng.integers(0, 256, (n, size // 16, size // 16, 3), dtype=np.uint8)
            data = [encode(Image.fromarray(a).resize((size, size), Image.BICUBIC), "jpeg", 95) for a in low]
            write_table(f"{out.uri}/data/shard-{start // shard:05d}.parquet",
                        {"id": [f"bench/{start + i}" for i in range(n)], "image": data,
                         "label": [int(v) for v in rng.integers(0, classes, n)]})
        return {"rows": images}

    art = Artifact(Store(str(root)), "bench-data", {"images": images, "size": size, "classes": classes})
    return DatasetRef(art.build(make), "data")


def plain_loop(arch: str, batch: int, size: int, classes: int, steps: int, compile_model: bool,
               profile: bool = False) -> tuple[float, dict | None]:
    """(a): images/s of forward+backward+Adam on random GPU tensors, after warm-up steps, and with `profile` the
    `training.profile.summarise` of 5 more steps."""
    from synthray.training.archs import create_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_model(arch, classes).to(device).to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile_model else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(max(3, steps // 5)):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    speed = batch * steps / (time.perf_counter() - start)
    if not profile:
        return speed, None
    from synthray.training.profile import profile_steps

    return speed, profile_steps(step, 5, torch.device(device))


def synthray_loop(arch: str, data, storage: Path, batch: int, epochs: int, cache_gb: float,
                  compile_model: bool, tiny: bool, jpeg_decode: str = "cpu", decode_cpus: int | None = None,
                  load_size: str = "256") -> dict:
    """(b): the training stage on the JPEG dataset; images/s is the median over epochs after the first."""
    from synthray.config import compose
    from synthray.graph.planner import train

    device = "gpu" if torch.cuda.is_available() else "cpu"
    overrides = [f"storage={storage}", f"device={device}", "recipe=paper", f"recipe.epochs={epochs}", f"recipe.batch_size={batch}",
                 "recipe.selection.set=train", "recipe.selection_fraction=0.0", f"training.cache_decoded_gb={cache_gb}",
                 f"training.compile={compile_model}", f"training.jpeg_decode={jpeg_decode}",
                 f"training.decode_cpus={'null' if decode_cpus is None else decode_cpus}",
                 "training.inline_rows=0",  # always Ray Train's worker group, even for --tiny's 256 CPU rows
                 f"recipe.load_size={load_size if load_size == 'native' or not tiny else 72}"]
    if load_size != "native":  # the batched square input of the GPU baseline (RESULTS.md), not a per-image crop
        overrides += ["recipe.train_transform.random_resized_crop.antialias=false",
                      "recipe.train_transform.color_jitter_order=fixed"]
    if tiny:
        overrides += ["recipe.train_transform.random_resized_crop.size=64",
                      "recipe.test_transform.resize=64", "recipe.test_transform.crop=64"]
    art = train(compose(overrides), arch, data, 1000, label=f"bench {arch}")
    return art.meta()


SPLIT = (("data wait", "data_wait_s"), ("decode", "decode_s"), ("step", "step_s"), ("eval", "eval_s"))


def time_split(arch: str, history: list[dict]) -> list[str]:
    """Lines of where each epoch's seconds went, then the totals; records from before the split say so."""
    lines, totals = [], dict.fromkeys([key for _, key in SPLIT], 0.0)
    for h in history:
        if "step_s" not in h:
            lines.append(f"{arch} epoch {h['epoch']}: no time split recorded ({h['images_per_s']:.0f} img/s)")
            continue
        for _, key in SPLIT:
            totals[key] += h[key]
        parts = "  ".join(f"{name} {h[key]:.2f} s" for name, key in SPLIT)
        lines.append(f"{arch} epoch {h['epoch']}: {parts}  ({h['images_per_s']:.0f} img/s)")
    spent = sum(totals.values())
    if spent > 0:
        lines.append(f"{arch} total: " + "  ".join(f"{name} {totals[key]:.2f} s ({100 * totals[key] / spent:.0f}%)"
                                                   for name, key in SPLIT))
    return lines


def print_profiles(arch: str, plain: dict | None, synthray_file: Path) -> dict:
    """Prints the profiles of (a) and (b) and their per-step difference; returns both."""
    from synthray.training.profile import format_summary

    ours = json.loads(synthray_file.read_text()) if synthray_file.exists() else None
    for label, summary in ((f"{arch} (a) plain", plain), (f"{arch} (b) synthray", ours)):
        print("\n".join(format_summary(label, summary)) if summary else f"{label}: no profile written", flush=True)
    if plain and ours:
        print(f"{arch}: (b) - (a) = {ours['wall_ms_per_step'] - plain['wall_ms_per_step']:.2f} ms per step "
              "(b's step includes the batch's decode or copy and the augmentation)", flush=True)
    return {"plain": plain, "synthray": ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet50", "vit_tiny_patch16_224"])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=256, help="stored JPEG size")
    parser.add_argument("--batch", type=int, default=256, help="global batch for (a) and (b)")
    parser.add_argument("--epochs", type=int, default=3, help="(b) epochs; the first is excluded as warm-up")
    parser.add_argument("--steps", type=int, default=50, help="(a) timed steps")
    parser.add_argument("--cache-gb", type=float, default=8.0, help="(b) decoded-cache limit; 0 streams")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--jpeg-decode", choices=["cpu", "gpu"], default="cpu",
                        help="(b) training.jpeg_decode: gpu decodes the JPEGs on the training GPU (nvjpeg)")
    parser.add_argument("--decode-cpus", type=int, help="(b) training.decode_cpus: cap on Ray Data decode tasks")
    parser.add_argument("--load-size", default="256", help="(b) recipe.load_size: 256 (the figures in RESULTS.md "
                        "before 2026-12-05, a square first) or native (the study's input, recipe=paper's default now)")
    parser.add_argument("--tiny", action="store_true", help="CPU check: tiny-cnn, 256 images of 72 px, batch 32")
    parser.add_argument("--profile", action="store_true", help="profile 5 steady steps of (a) and of (b) (torch.profiler)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.tiny:
        args.arch, args.images, args.size, args.batch, args.steps, args.epochs = ["tiny-cnn"], 256, 72, 32, 5, 2
    if args.jpeg_decode == "gpu" and not torch.cuda.is_available():
        parser.error("--jpeg-decode gpu decodes on the training GPU (nvjpeg), and torch sees no CUDA device here")

    from synthray.core.logs import setup_logging
    from synthray.sweep.runner import start_local_ray

    profile_file = None
    if args.profile:  # before Ray starts, so the training workers inherit it (training/profile.py)
        from synthray.training.profile import ENV

        profile_file = Path(tempfile.mkdtemp(prefix="synthray-profile-")) / "steps.json"
        os.environ[ENV] = str(profile_file)
    start_local_ray()
    setup_logging()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    crop = 64 if args.tiny else 224
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_jpeg_dataset(Path(tmp) / "data", args.images, args.size, 1000)
        for arch in args.arch:
            a, plain_profile = plain_loop(arch, args.batch, crop, 1000, args.steps, args.compile, args.profile)
            if profile_file is not None:
                profile_file.unlink(missing_ok=True)
            meta = synthray_loop(arch, data, Path(tmp) / f"runs-{arch}", args.batch, args.epochs, args.cache_gb,
                                 args.compile, args.tiny, args.jpeg_decode, args.decode_cpus, args.load_size)
            b = meta["images_per_s"]
            rows.append({"arch": arch, "device": device, "batch": args.batch, "images": args.images, "compile": args.compile,
                         "cache_gb": args.cache_gb, "jpeg_decode": args.jpeg_decode, "decode_cpus": args.decode_cpus,
                         "load_size": args.load_size,
                         "plain_img_s": round(a, 1), "synthray_img_s": round(b, 1),
                         "ratio": round(b / a, 3), "epochs_img_s": [round(h["images_per_s"], 1) for h in meta["history"]],
                         "epochs_split_s": [{key: round(h[key], 3) for _, key in SPLIT if key in h} for h in meta["history"]]})
            print("\n".join(time_split(arch, meta["history"])), flush=True)
            if args.profile:
                rows[-1]["profile"] = print_profiles(arch, plain_profile, profile_file)
            print(f"{arch}: (a) plain {a:.0f} img/s  (b) synthray {b:.0f} img/s  b/a = {b / a:.3f}  [{device}]", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
