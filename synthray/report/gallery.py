"""The image gallery, the figure people look at first: what each generator's training images look like.

Two parts, both read from the stored artifacts the results name, never regenerated:
- samples: for a few classes, `PER_CELL` images per generator and prompt style (the `dataset` column of a results row
  is its synthetic dataset's key), beside real training images of the same classes;
- probe views: one image per generator (and one real image), as each probe shows it to a classifier. A view stored
  by the sweep (`views/<key>`: depth, low-pass, high-pass) is shown as stored; the cheap ones not stored are computed
  here with the probe's own code and the sweep's settings (low-pass, high-pass, the texture crop); depth needs its
  model, so without a stored depth view its cell stays empty and a note says so.

Thumbnails are embedded as base64 (`THUMB` px: PNG when the image is that small already, else a JPEG of its centre
square), so the page stays one file: about 3 KB a thumbnail, some 1-2 MB for the paper's 13 generators.
Artifacts are looked up under every storage root the report's inputs come from (a sweep's `<root>/sweeps/<name>`)
and `--storage`, so results on S3 read their datasets from S3.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from synthray.core import storage
from synthray.core.artifacts import MANIFEST
from synthray.report.common import PAPER_GENERATORS, STYLE_ORDER, Drawn, Skip, look, ordered
from synthray.report.figures import Spec

THUMB = 96          # px of a thumbnail's stored square; shown at SHOWN css px
SHOWN = 64
PER_CELL = 3        # images per class, generator and prompt style
N_CLASSES = 4       # classes the samples show
MAX_PAIRS = 40      # generator x prompt-style rows at most: the page stays small whatever the merge
VIEW_PROBES = ("depth", "texture", "lowpass", "highpass")  # PROBE_ORDER less rgb, the image itself
CSS = """
table.gallery { border-collapse: collapse; font-size: 12px; } table.gallery td, table.gallery th { border: 0;
  padding: 2px 4px; vertical-align: middle; cursor: default; background: none; white-space: nowrap; }
table.gallery th { text-align: center; font-weight: 600; } table.gallery td.who { text-align: right; }
table.gallery img { width: SHOWNpx; height: SHOWNpx; max-width: none; margin: 1px; border: 1px solid #ddd; image-rendering: pixelated; }
table.gallery tr.real td { background: #f4f8ee; } table.gallery td.none { color: #aaa; text-align: center; }
""".replace("SHOWN", str(SHOWN))


@dataclass
class Image:
    """One chosen image: where it lies (the dataset folder, its shard's name, its row `id`) and its pixels."""

    folder: str
    shard: str
    id: str
    class_id: str
    class_name: str
    prompt: str
    pixels: np.ndarray  # uint8 (H, W, 3)


@dataclass
class Stored:
    """What the storage roots hold: {synthetic key: folder uri}, {real key: uri}, {(source ref, probe): view uri}."""

    roots: list[str]
    views: dict[tuple[str, str], tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def find(self, kind: str, key: str) -> str | None:
        """The committed artifact `<kind>/<key>` under the first root that has it (following a legacy alias)."""
        for root in self.roots:
            try:
                manifest = json.loads(storage.read_text(storage.join(root, kind, key, MANIFEST)))
            except (FileNotFoundError, OSError):
                continue
            alias = manifest.get("alias")
            return storage.join(root, *alias.split("/")) if alias else storage.join(root, kind, key)
        return None

    def spec(self, kind: str, key: str) -> dict[str, Any] | None:
        uri = self.find(kind, key)
        return None if uri is None else json.loads(storage.read_text(storage.join(uri, "spec.json")))

    def scan_views(self) -> None:
        """Every committed view under the roots, by (its source's `<kind>/<key>`, probe): one small read each."""
        for root in self.roots:
            for key in storage.list_dirs(storage.join(root, "views")):
                if (uri := self.find("views", key)) is not None:
                    spec = json.loads(storage.read_text(storage.join(uri, "spec.json")))
                    self.views.setdefault((spec["source"], spec["probe"]), (uri, spec.get("params") or {}))


def roots_of(locations: Sequence[str], root: str) -> list[str]:
    """Storage roots to look in: each sweep folder's root (`<root>/sweeps/<name>`), then `root` (`--storage`)."""
    found = [storage.parent(storage.parent(loc)) for loc in locations if storage.name(storage.parent(loc)) == "sweeps"]
    return list(dict.fromkeys([*found, storage.normalize(root)]))


def probe_settings(locations: Sequence[str]) -> dict[str, Any] | None:
    """The `probes` section of the first sweep config among `locations` (None when none has one)."""
    from omegaconf import OmegaConf

    for loc in locations:
        uri = storage.join(loc, "config.yaml")
        if storage.exists(uri):
            probes = OmegaConf.create(storage.read_text(uri)).get("probes")
            return OmegaConf.to_container(probes, resolve=False) if probes is not None else None
    return None


def thumbnail(pixels: np.ndarray) -> str:
    """A data URI: PNG at its own size when no side exceeds THUMB, else a THUMB-px JPEG of the centre square."""
    from PIL import Image as PIL

    img = PIL.fromarray(pixels)
    buf = io.BytesIO()
    if max(img.size) <= THUMB:
        img.save(buf, format="PNG", optimize=True)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    from synthray.core.images import square

    square(img, THUMB).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def pick(folder: str, classes: Sequence[str] | None, n: int) -> list[Image]:
    """The first `n` usable images of each class in `classes` (None: of the first N_CLASSES classes met), in shard
    order; shards are read one at a time, so a class-sorted dataset is read only as far as its first classes."""
    import pyarrow.parquet as pq

    from synthray.core.images import decode_array, shard_files

    chosen: dict[str, list[Image]] = {c: [] for c in classes or ()}
    for shard in shard_files(folder):
        fs, path = storage.resolve(shard)
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            small = [c for c in ("id", "class_id", "class_name", "prompt", "quality") if c in names]
            rows = parquet.read(columns=small).to_pandas()
            if "quality" in rows:  # the generation guard's flagged rows (black, NaN) are not the generator's look
                rows = rows[rows["quality"] == "ok"]
            take = []
            for i, row in rows.iterrows():
                cid = str(row["class_id"])
                if cid not in chosen and classes is None and len(chosen) < N_CLASSES:
                    chosen[cid] = []
                if cid in chosen and len(chosen[cid]) + sum(t[1] == cid for t in take) < n:
                    take.append((i, cid))
            if take:
                images = parquet.read(columns=["image"]).column("image").to_pylist()
                for i, cid in take:
                    row = rows.loc[i]
                    chosen[cid].append(Image(folder, storage.name(shard), str(row["id"]), cid,
                                             str(row.get("class_name", cid)), str(row.get("prompt", "")),
                                             decode_array(images[i])))
        if len(chosen) >= (len(classes) if classes else N_CLASSES) and all(len(v) >= n for v in chosen.values()):
            break
    return [im for c in chosen for im in chosen[c]]


def view_of(image: Image, uri: str, split: str) -> np.ndarray | None:
    """The stored view of `image`: the row with its id in the view's shard of the same name (views mirror their
    source's shards)."""
    import pyarrow.parquet as pq

    from synthray.core.images import decode_array

    fs, path = storage.resolve(storage.join(uri, split, image.shard))
    try:
        with fs.open_input_file(path) as f:
            rows = pq.read_table(f, columns=["id", "image"]).to_pydict()
    except (FileNotFoundError, OSError):
        return None
    return next((decode_array(b) for i, b in zip(rows["id"], rows["image"]) if i == image.id), None)


def texture_crop(pixels: np.ndarray, resize: int = 256, crop: int = 128) -> np.ndarray:
    """What BagNet sees of an image at test time (`probes.texture.recipe.test_transform`): the short side resized
    to `resize`, a `crop` square cut (here the centre one; the recipe cuts it at random)."""
    from PIL import Image as PIL

    from synthray.core.images import square

    img = square(PIL.fromarray(pixels), resize)
    left = (resize - crop) // 2
    return np.asarray(img.crop((left, left, left + crop, left + crop)))


def compute(probe: str, pixels: np.ndarray, settings: dict[str, Any]) -> np.ndarray | None:
    """The view a probe without a stored view shows, from its own code: None for depth (it needs its model)."""
    from synthray.probes.stage import EXECUTION_KEYS
    from synthray.probes.transforms import PROBES

    if probe == "texture":
        test = ((settings.get("texture") or {}).get("recipe") or {}).get("test_transform") or {}
        return texture_crop(pixels, int(test.get("resize") or 256), int(test.get("crop") or 128))
    if probe in ("lowpass", "highpass"):
        params = {k: v for k, v in (settings.get(probe) or {}).items() if k not in EXECUTION_KEYS}
        return PROBES.get(probe)(pixels, **params)
    return None


def _img(uri: str, alt: str, title: str) -> str:
    return f'<img alt="{html.escape(alt)}" title="{html.escape(title)}" src="{uri}">'


def draw(table: pd.DataFrame, locations: Sequence[str], root: str, settings: dict[str, Any] | None = None) -> Drawn:
    """The gallery of the results `table` (its `dataset` column), read from the artifacts under the roots of
    `locations` (sweep folders) and `root`; `settings`: the sweep's `probes` section (None: the probes' defaults).
    `rows`: one per thumbnail (part, generator, prompt_style, class_id, id, probe, view: stored | computed)."""
    if "dataset" not in table or table["dataset"].isna().all():
        raise Skip("the results name no synthetic dataset (no dataset column: results from before synthray stored it)")
    from synthray.graph.synthetic import control_generators

    stored = Stored(roots_of(locations, root))
    rows = table.dropna(subset=["dataset"])
    pairs = rows.groupby(["generator", "prompt_style"], sort=False)["dataset"].agg(lambda s: list(dict.fromkeys(s)))
    controls = control_generators(rows["generator"].unique())
    gens = ordered([g for g in rows["generator"].unique() if g not in controls], PAPER_GENERATORS)
    gens += ordered([g for g in rows["generator"].unique() if g in controls], [])
    order = [(g, s) for g in gens for s in ordered(rows.loc[rows["generator"] == g, "prompt_style"].unique(), STYLE_ORDER)]
    folders, absent, several = {}, [], []
    for g, s in order[:MAX_PAIRS]:
        keys = pairs[(g, s)]
        uri = next((u for k in keys if (u := stored.find("synthetic", k)) is not None), None)
        if uri is None:
            absent.append(f"{g}/{s}")
        else:
            folders[(g, s)] = storage.join(uri, "data")
            several += [f"{g}/{s}"] if len(keys) > 1 else []
    if not folders:
        pairs_n = f"{len(order)} generator and prompt-style pair{'s' * (len(order) != 1)}"
        raise Skip(f"no synthetic dataset the results name ({pairs_n}) is stored under {', '.join(stored.roots)}")
    samples = _samples(folders)
    classes = list(dict.fromkeys(im.class_id for ims in samples.values() for im in ims))
    names = {im.class_id: im.class_name for ims in samples.values() for im in ims}
    real_key = _real_key(rows, stored)
    real_uri = stored.find("real", real_key) if real_key else None
    real = pick(storage.join(real_uri, "train"), classes, PER_CELL) if real_uri else []
    stored.scan_views()
    shown: list[dict[str, Any]] = []
    body = _samples_table(samples, real, classes, names, shown)
    views, missing_depth = _views_table(samples, real, real_key, folders, stored, settings or {}, shown)
    no_real = (f"the real data ({real_key}) is not stored under {', '.join(stored.roots)}" if real_key
               else "the results do not say which real data they used")
    notes = [f"No real images: {no_real}." if not real else None,
             f"Not stored, so not shown: {', '.join(absent)}." if absent else None,
             f"{', '.join(several)}: several datasets (extra grid axes or merged sweeps); the first is shown." if several else None,
             f"Only the first {MAX_PAIRS} generator and prompt-style pairs are shown." if len(order) > MAX_PAIRS else None,
             "Depth: no stored depth view of these images (the depth probe runs a model; a sweep with probe depth "
             "stores one), so its cells are empty." if missing_depth else None]
    return Drawn(pd.DataFrame(shown), html=f"<style>{CSS}</style>{body}{views}",
                 note=" ".join(n for n in notes if n) or None)


def _samples(folders: dict[tuple[str, str], str]) -> dict[tuple[str, str], list[Image]]:
    """PER_CELL images of the same classes from every dataset: the first dataset's first classes."""
    out: dict[tuple[str, str], list[Image]] = {}
    classes = None
    for pair, folder in folders.items():
        out[pair] = pick(folder, classes, PER_CELL)
        classes = classes or list(dict.fromkeys(im.class_id for im in out[pair]))
    return out


def _real_key(rows: pd.DataFrame, stored: Stored) -> str | None:
    """The real data's key: from the real-trained model's spec (its data is `real/<key>/train`, or a view of it),
    else from a control dataset's spec (controls draw real images)."""
    for key in rows.get("real_model", pd.Series(dtype=object)).dropna().unique()[:3]:
        data = (stored.spec("models", str(key)) or {}).get("data", "")
        if data.startswith("views/"):
            data = (stored.spec("views", data.split("/")[1]) or {}).get("source", "")
        if data.startswith("real/"):
            return data.split("/")[1]
    for key in rows["dataset"].dropna().unique():
        real = (stored.spec("synthetic", str(key)) or {}).get("real")
        if real:
            return str(real)
    return None


def _who(generator: str, style: str | None) -> str:
    return html.escape(generator) + ("" if style is None else f"<br><small>{html.escape(look(style)[2])}</small>")


def _samples_table(samples: dict[tuple[str, str], list[Image]], real: list[Image], classes: list[str],
                   names: dict[str, str], shown: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(names.get(c, c))}</th>" for c in classes)
    lines = []
    for (g, s), images in [(("real", None), real), *samples.items()] if real else samples.items():
        cells = []
        for c in classes:
            ims = [im for im in images if im.class_id == c]
            for im in ims:
                shown.append({"part": "samples", "generator": g, "prompt_style": s, "class_id": c, "id": im.id,
                              "probe": "rgb", "view": "stored"})
            cells.append("<td>" + "".join(_img(thumbnail(im.pixels), f"{g} {c}", im.prompt or im.id) for im in ims) + "</td>")
        lines.append(f'<tr class="{"real" if s is None else ""}"><td class="who">{_who(g, s)}</td>{"".join(cells)}</tr>')
    # A narrow window scrolls the table rather than squeezing its thumbnails.
    return (f'<div style="overflow-x:auto"><table class="gallery"><thead><tr><th></th>{head}</tr></thead>'
            f'<tbody>{"".join(lines)}</tbody></table></div>')


def _views_table(samples: dict[tuple[str, str], list[Image]], real: list[Image], real_key: str | None,
                 folders: dict[tuple[str, str], str], stored: Stored, settings: dict[str, Any],
                 shown: list[dict[str, Any]]) -> tuple[str, bool]:
    """One image per generator (its first prompt style's first image) and one real image, through each probe."""
    firsts: dict[str, tuple[str | None, Image, str, str]] = {}
    if real:
        firsts["real"] = (None, real[0], f"real/{real_key}", "train")
    for (g, s), images in samples.items():
        if g not in firsts and images:
            firsts[g] = (s, images[0], "synthetic/" + storage.name(storage.parent(folders[(g, s)])), "data")
    lines, missing_depth = [], False
    for g, (s, im, source, split) in firsts.items():
        cells = [f"<td>{_img(thumbnail(im.pixels), f'{g} image', im.prompt or im.id)}</td>"]
        for probe in VIEW_PROBES:
            at = stored.views.get((source, probe))
            pixels = view_of(im, at[0], split) if at else None
            how = "stored" if pixels is not None else "computed"
            if pixels is None:
                pixels = compute(probe, im.pixels, settings)
            if pixels is None:
                missing_depth = True
                cells.append('<td class="none">—</td>')
                continue
            shown.append({"part": "views", "generator": g, "prompt_style": s, "class_id": im.class_id, "id": im.id,
                          "probe": probe, "view": how})
            cells.append(f"<td>{_img(thumbnail(pixels), f'{g} {probe}', f'{probe} ({how})')}</td>")
        lines.append(f'<tr class="{"real" if s is None else ""}"><td class="who">{_who(g, s)}</td>{"".join(cells)}</tr>')
    head = "".join(f"<th>{p}</th>" for p in ("image", "depth", "texture crop", "low-pass", "high-pass"))
    return (f'<p><b>Probe views</b>: what each probe shows a classifier of one image.</p><table class="gallery">'
            f'<thead><tr><th></th>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'), missing_depth


SPEC = Spec(
    "Samples per generator and prompt style, and their probe views",
    f"Training images as the sweep stored them: for the first {N_CLASSES} classes, {PER_CELL} images per generator "
    "and prompt style (one row each; controls last), under the real training images of the same classes (green "
    "row). Below, one image per generator and one real image as each probe shows it to a classifier: depth map, "
    "texture crop (what BagNet sees), low-pass and high-pass. A view the sweep stored is shown as stored, the others "
    "computed here with the probe's code and the sweep's settings; hover a thumbnail for its prompt or how its view "
    "was made.",
    "Compare each row with the green real row: a generator whose images look alike across a class, or alike across "
    "the prompt styles, gives a classifier less variety to learn from. Thumbnails are small on purpose: look for "
    "variety of pose, background and colour, not fine detail.",
    draw, paper=False)
