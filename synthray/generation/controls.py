"""The control generators, `real-holdout` and `collapsed`: held-out real images in place of generated ones.

They register in `generators.py` (the registry imports its members; `reencode.py` builds on `RealHoldoutGenerator`).
`split_rows` and `SplitImages` are the other way to draw real images, for `generation.reencode_split=train`: one row
per image of a whole split, each row reading its own image back (the study re-encodes its whole training folder).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from synthray.core.artifacts import seed_hash
from synthray.core.registry import SynthrayError


class RealHoldoutGenerator:
    """Returns real images of each row's class from the real data's `control` split (never trained on), without
    repeats until a class's pool is used up."""

    def __init__(self, spec: dict[str, Any]):
        from synthray.core.images import read_images

        control = read_images(spec["control_uri"]).sort_values("id", kind="stable")
        self.pools: dict[str, list[bytes]] = {}
        for cid, group in control.groupby("class_id", sort=True):
            order = pd.Series(range(len(group))).sample(frac=1.0, random_state=seed_hash("holdout", cid) % 2**32)
            self.pools[cid] = [group["image"].iloc[i] for i in order]

    def __call__(self, rows: pd.DataFrame) -> list[Image.Image]:
        from synthray.core.images import decode

        out = []
        for cid, k in zip(rows["class_id"], rows["index_in_class"]):
            pool = self.pools.get(cid)
            if not pool:
                raise SynthrayError(f"real-holdout: no held-out real images of class {cid}")
            out.append(decode(pool[int(k) % len(pool)]))
        return out


def split_rows(generator: str, uri: str, names: list[str], template: str) -> pd.DataFrame:
    """One prompt-table row (`PROMPT_COLUMNS`) per image of the real split at `uri`, in the split's order, and where
    the image lies (`source_shard`, `source_row`), so a worker reads back only the shards its rows name. The prompt is
    the class name in `template`; the seed hashes the generator and the real image's id, as a prompt row's does
    its prompt id. `names`: class names by label."""
    from synthray.core.images import read_shard, shard_files
    from synthray.prompts.table import PROMPT_COLUMNS

    parts = []
    for path in shard_files(uri):
        part = read_shard(path, columns=["id", "label", "class_id"]).to_pandas()
        parts.append(part.assign(source_shard=path.rsplit("/", 1)[-1], source_row=range(len(part))))
    real = pd.concat(parts, ignore_index=True)
    if real.empty:
        raise SynthrayError(f"{generator}: the real split {uri} holds no images to draw")
    out = pd.DataFrame({"id": [f"{generator}/{i}/0" for i in real["id"]], "label": real["label"].astype(int),
                        "class_id": real["class_id"], "class_name": [names[int(k)] for k in real["label"]]})
    out["prompt"] = [template.format(name=n) for n in out["class_name"]]
    out["prompt_id"], out["replicate"] = real["id"], 0
    out["index_in_class"] = out.groupby("class_id", sort=False).cumcount()
    out["seed"] = [seed_hash(generator, i, 0) for i in real["id"]]
    return pd.concat([out[PROMPT_COLUMNS], real[["source_shard", "source_row"]]], axis=1)


class SplitImages:
    """Each row's own real image (`split_rows`' `source_shard` and `source_row`) from the split at `uri`. Rows come in
    the split's order, so a task reads one or two shards; only the last is kept (native ImageNet shards are ~200 MB)."""

    def __init__(self, uri: str):
        self.uri, self.shard, self.images = uri.rstrip("/"), None, []

    def __call__(self, rows: pd.DataFrame) -> list[Image.Image]:
        from synthray.core.images import decode, read_shard

        out = []
        for shard, row in zip(rows["source_shard"], rows["source_row"]):
            if shard != self.shard:
                self.images = read_shard(f"{self.uri}/{shard}", columns=["image"]).column("image").to_pylist()
                self.shard = shard
            out.append(decode(self.images[int(row)]))
        return out


class CollapsedGenerator(RealHoldoutGenerator):
    """A mode-collapse control: per class, the `prototypes` held-out real images nearest the class mean (its
    mode), each row one of them with pixel noise and an optional small shift. The set sits in the densest part
    of the real manifold (density above 1) but covers little of it (low coverage), and a classifier trained on
    it transfers worse than one trained on real-holdout."""

    def __init__(self, spec: dict[str, Any]):
        from synthray.core.images import decode_array

        super().__init__(spec)
        control = spec.get("control") or {}
        self.noise = float(control.get("noise", 3.0))
        self.shift = int(control.get("shift", 0))
        count = int(control.get("prototypes", 3))
        for cid, pool in self.pools.items():
            pixels = np.stack([decode_array(b, 32).reshape(-1) for b in pool]).astype(np.float32)
            nearest = np.argsort(((pixels - pixels.mean(axis=0)) ** 2).sum(axis=1), kind="stable")[:count]
            self.pools[cid] = [pool[i] for i in nearest]

    def __call__(self, rows: pd.DataFrame) -> list[Image.Image]:
        out = []
        for image, seed in zip(super().__call__(rows), rows["seed"]):
            rng = np.random.default_rng(int(seed))  # the row's own seed: bytes do not depend on batching
            pixels = np.asarray(image, dtype=np.float32)
            if self.shift:
                pad = self.shift
                dy, dx = rng.integers(0, 2 * pad + 1, 2)
                padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
                pixels = padded[dy:dy + pixels.shape[0], dx:dx + pixels.shape[1]]
            pixels = pixels + rng.normal(0.0, self.noise, pixels.shape)
            out.append(Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)))
        return out
