"""How many aten ops one training step dispatches, and whether that count grows with the batch size.

A GPU runs one or more kernels per aten op, and each costs a few microseconds of host time to launch, so a
step whose op count grows with its batch is launch-bound on a fast GPU however small its images. This counts, on
any device (CPU here), every aten op dispatched by (1) the augmentation, `augment.train_batch`, (2) the forward
pass with CutMix and the loss, (3) the backward pass, grad clipping and the optimiser step, at each batch size
given, with `TorchDispatchMode` (below autograd: the backward's ops are counted too).

The recipe is `recipe=paper` with the square input the GPU figures in bench/RESULTS.md were measured on
(`recipe.load_size=256`, `antialias=false`, `color_jitter_order=fixed`: the batched path); `--native` counts
the study's per-image input instead, whose crops are one resize per image by design.

  python bench/step_ops.py                       # tiny-cnn, batch 32 and 64, 256 px in, 224 px out
  python bench/step_ops.py --batch 8 32 64 --arch resnet18 --by-op
  python bench/step_ops.py --json out.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SQUARE = ["recipe=paper", "recipe.load_size=256", "recipe.train_transform.random_resized_crop.antialias=false",
          "recipe.train_transform.color_jitter_order=fixed"]


class CountOps(TorchDispatchMode):
    """Counts every aten op dispatched inside it, by name (`aten.add.Tensor`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


class CountTransfers(TorchFunctionMode):
    """Counts the calls that put host data on a device: `torch.tensor`/`torch.as_tensor` with a device, and
    `Tensor.to`/`.cuda`/`.copy_` given a device. On a GPU each is a host-to-device copy, and one from pageable memory
    waits for every kernel queued before it; on CPU they are no-ops, but the calls are the same, so they count here."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        moves = (func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None) or \
            func in (torch.Tensor.cuda, torch.Tensor.copy_) or \
            (func is torch.Tensor.to and ("device" in kwargs or any(isinstance(a, (torch.device, str, torch.Tensor))
                                                                    for a in args[1:])))
        self.calls += bool(moves)
        return func(*args, **kwargs)


def square_recipe(*overrides: str) -> dict:
    """The paper recipe with the batched (square, 256 px) input, as a plain dict."""
    from omegaconf import OmegaConf

    from synthray.config import compose

    return OmegaConf.to_container(compose([*SQUARE, *overrides]).recipe, resolve=True)


def augment_ops(recipe: dict, batch: int, size: int = 256, seed: int = 0) -> Counter[str]:
    """The aten ops of one `train_batch` call on `batch` uint8 (size, size, 3) images (CPU), after a warm-up call."""
    from synthray.training.augment import train_batch

    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    train_batch(images, recipe, rng)  # constants made once per process are not a step's
    with CountOps() as count:
        train_batch(images, recipe, rng)
    return count.ops


def augment_transfers(recipe: dict, batch: int, size: int = 256, seed: int = 0) -> int:
    """How many host-to-device transfers one `train_batch` call asks for (`CountTransfers`), after a warm-up call."""
    from synthray.training.augment import train_batch

    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    train_batch(images, recipe, rng)  # constants made once per process are not a step's
    with CountTransfers() as count:
        train_batch(images, recipe, rng)
    return count.calls


def step_ops(recipe: dict, arch: str, batch: int, size: int = 256, native: bool = False,
             seed: int = 0) -> dict[str, Any]:
    """The aten ops of one training step (augment, forward + loss, backward + clip + Adam) on CPU, by phase, and
    the augmentation's host-to-device transfers (`CountTransfers`: the forward and backward make none; the images'
    and labels' copies are the loop's, not counted here).
    The calls are the loop's, written out here so that the script also counts earlier trees."""
    from synthray.training import loop
    from synthray.training.augment import train_batch
    from synthray.training.recipe import make_optimizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = loop.build_model(arch, 10, channels_last=True)
    optimizer = make_optimizer(model.parameters(), recipe)
    if native:
        shapes = rng.integers(size * 3 // 4, size * 5 // 4, (batch, 2))
        images = [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    else:
        images = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, batch))
    autocast = loop.autocast_for("fp32", torch.device("cpu"))

    def one_step(counts: dict[str, CountOps] | None, transfers: CountTransfers) -> None:
        phase = (lambda name: counts[name]) if counts else (lambda name: CountOps())
        optimizer.zero_grad(set_to_none=True)
        with phase("augment"), transfers:
            x = train_batch(images, recipe, rng).contiguous(memory_format=torch.channels_last)
        with phase("forward"), autocast:
            loss, _ = loop._loss(model, x, labels, recipe, rng)
        with phase("backward+optimizer"):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(recipe["grad_clip"]))
            optimizer.step()

    one_step(None, CountTransfers())  # Adam's first step creates its state: count a steady step
    counts, transfers = {name: CountOps() for name in ("augment", "forward", "backward+optimizer")}, CountTransfers()
    one_step(counts, transfers)
    return {**{name: c.ops for name, c in counts.items()}, "transfers": transfers.calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--arch", default="tiny-cnn")
    parser.add_argument("--size", type=int, default=256, help="input side in px (the recipe's load_size)")
    parser.add_argument("--native", action="store_true", help="the study's per-image input (recipe=paper as is)")
    parser.add_argument("overrides", nargs="*", help="more recipe overrides, e.g. "
                        "recipe.train_transform.random_resized_crop.antialias=true")
    parser.add_argument("--by-op", action="store_true", help="also print the ops whose count differs between batches")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.native:
        from omegaconf import OmegaConf

        from synthray.config import compose

        recipe = OmegaConf.to_container(compose(["recipe=paper", *args.overrides]).recipe, resolve=True)
    else:
        recipe = square_recipe(f"recipe.load_size={args.size}", *args.overrides)
    rows = []
    for batch in args.batch:
        phases = step_ops(recipe, args.arch, batch, args.size, args.native)
        transfers = phases.pop("transfers")
        row = {"batch": batch, "arch": args.arch, "input": "native" if args.native else f"square {args.size}",
               **{name: sum(ops.values()) for name, ops in phases.items()}}
        row["step"] = sum(row[name] for name in phases)
        row["transfers"] = transfers
        row["ops"] = {name: dict(ops) for name, ops in phases.items()}
        rows.append(row)
        print(f"batch {batch}: {row['step']} aten ops per step (augment {row['augment']}, forward {row['forward']}, "
              f"backward+optimizer {row['backward+optimizer']}); augment's host-to-device transfers {transfers}  "
              f"[{args.arch}, {row['input']}, cpu]", flush=True)
    if args.by_op and len(rows) > 1:
        for name in rows[0]["ops"]:
            first, last = Counter(rows[0]["ops"][name]), Counter(rows[-1]["ops"][name])
            for op in sorted(set(first) | set(last)):
                if first[op] != last[op]:
                    print(f"  {name}: {op}: {first[op]} at batch {rows[0]['batch']}, {last[op]} at batch {rows[-1]['batch']}")
    constant = len({(r["step"], r["transfers"]) for r in rows}) == 1
    print(f"constant in the batch size: {'yes' if constant else 'no'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
