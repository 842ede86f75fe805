"""What the study's training input costs on the CPU: decode + augment per image, side by side in one run.

  (a) synthray's earlier input (`recipe.load_size=256`, `antialias=false`, `color_jitter_order=fixed`): Pillow decodes
      each JPEG to a 256 px centre square, then the paper recipe's augmentation runs batched (one grid_sample crop);
  (b) the study's input (`recipe=paper` now): Pillow decodes each JPEG at its native size, then each image is cropped
      and resized with antialiasing on its own, and the colour jitter takes a random order per image.

Both on one CPU thread (torch.set_num_threads(1)), on ImageNet-shaped 500x375 JPEGs and on 512 px generated-size
ones. It prints images/s of each part and b/a. On a GPU the augmentation runs on the device and decoding stays on
Ray Data's CPU tasks (or nvjpeg); `bench/training.py --load-size native` measures that (see bench/RESULTS.md).

  python bench/native_input.py                 # 256 images of each shape, batch 64
  python bench/native_input.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def jpegs(rng: np.random.Generator, n: int, width: int, height: int) -> list[bytes]:
    """Smooth random pictures with some fine detail, JPEG q90 (an ImageNet file's typical quality)."""
    from synthray.core.images import encode

    out = []
    for _ in range(n):
        low = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        out.append(encode(Image.fromarray(img), "jpeg", 90, "4:2:0"))
    return out


def run(data: list[bytes], recipe: dict, native: bool, batch: int) -> tuple[float, float]:
    """(decode seconds, augment seconds) over `data` in batches, as the training loop would see them."""
    from synthray.core.images import decode_array
    from synthray.training.augment import train_batch

    rng = np.random.default_rng(0)
    decode_s = augment_s = 0.0
    for start in range(0, len(data), batch):
        t0 = time.perf_counter()
        arrays = [decode_array(b, None if native else 256) for b in data[start:start + batch]]
        images = [torch.tensor(a) for a in arrays] if native else torch.from_numpy(np.stack(arrays))
        t1 = time.perf_counter()
        out = train_batch(images, recipe, rng)
        assert out.shape[1:] == (3, 224, 224)
        decode_s, augment_s = decode_s + t1 - t0, augment_s + time.perf_counter() - t1
    return decode_s, augment_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from omegaconf import OmegaConf

    from synthray.config import compose

    study = OmegaConf.to_container(compose(["recipe=paper"]).recipe, resolve=True)
    earlier = OmegaConf.to_container(compose(["recipe=paper", "recipe.load_size=256",
                                              "recipe.train_transform.random_resized_crop.antialias=false",
                                              "recipe.train_transform.color_jitter_order=fixed"]).recipe, resolve=True)
    rng = np.random.default_rng(0)
    rows = []
    for width, height in ((500, 375), (512, 512)):
        data = jpegs(rng, args.images, width, height)
        run(data[:args.batch], earlier, False, args.batch)  # warm-up: first calls allocate
        a = run(data, earlier, False, args.batch)
        b = run(data, study, True, args.batch)
        row = {"shape": f"{width}x{height}", "images": args.images, "threads": 1}
        for name, (d, g) in (("square_256", a), ("native", b)):
            row[name] = {"decode_img_s": round(args.images / d, 1), "augment_img_s": round(args.images / g, 1),
                         "total_img_s": round(args.images / (d + g), 1)}
        row["ratio_total"] = round(row["native"]["total_img_s"] / row["square_256"]["total_img_s"], 3)
        rows.append(row)
        print(f"{width}x{height}: (a) load_size 256: decode {row['square_256']['decode_img_s']:.0f} img/s, augment "
              f"{row['square_256']['augment_img_s']:.0f} img/s, total {row['square_256']['total_img_s']:.0f} img/s | "
              f"(b) native: decode {row['native']['decode_img_s']:.0f}, augment {row['native']['augment_img_s']:.0f}, "
              f"total {row['native']['total_img_s']:.0f} img/s | b/a = {row['ratio_total']:.2f}  [cpu, 1 thread]", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
