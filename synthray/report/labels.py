"""The pseudo-label gallery: the label stage's boxes and instance masks drawn over their images, real and synthetic
rows side by side, so a person can judge the labels that detectors and segmenters will train and be scored on.

`labelled_images` reads a labels artifact and its source split; `overlay` draws one image's labels; `gallery_html`
lays the groups out as thumbnails; `write_page` makes it a page of its own (the report embeds `gallery_html`).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Distinct instance colours (Sasha Trubetskoy's list, the first six): masks tinted, boxes outlined in the same one.
COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))
TINT = 0.45      # a mask's share of its pixels' colour
SIZE = 160       # px of a drawn thumbnail's longer side: small images are scaled up so their boxes show


@dataclass(frozen=True)
class Labelled:
    """One image with its labels: `pixels` uint8 (H, W, 3); `boxes` float32 (N, 4) xyxy; `scores` (N,); `masks`
    bool (N, H, W); `label` its class index; `id` its row id."""

    id: str
    label: int
    pixels: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray


def labelled_images(labels_folder: str, images_folder: str, n: int) -> list[Labelled]:
    """The first `n` labelled images of a labels artifact's folder, in shard order, joined by id to their images
    in the source split's folder (a labels shard has the name of the image shard it labels)."""
    from synthray.core import storage
    from synthray.core.images import decode_array, read_shard, shard_files
    from synthray.labels.segmenter import label_arrays

    out: list[Labelled] = []
    for labels_file in shard_files(labels_folder):
        rows = read_shard(labels_file).to_pandas()
        if rows.empty:
            continue
        images = read_shard(storage.join(images_folder, labels_file.rsplit("/", 1)[1]), columns=["id", "image"]).to_pandas()
        by_id = dict(zip(images["id"].astype(str), images["image"]))
        for _, row in rows.iterrows():
            arrays = label_arrays(row)
            out.append(Labelled(str(row["id"]), int(row["label"]), decode_array(by_id[str(row["id"])]), **arrays))
            if len(out) == n:
                return out
    return out


def overlay(item: Labelled) -> np.ndarray:
    """uint8 (h, w, 3): the image scaled to SIZE px on its longer side, each instance's mask tinted and its box
    outlined in the instance's colour, its score written at the box's corner."""
    from PIL import Image, ImageDraw

    height, width = item.pixels.shape[:2]
    out = item.pixels.astype(np.float32)
    for i, mask in enumerate(item.masks):
        colour = np.asarray(COLOURS[i % len(COLOURS)], np.float32)
        out[mask] = (1 - TINT) * out[mask] + TINT * colour
    scale = SIZE / max(height, width)
    img = Image.fromarray(out.round().clip(0, 255).astype(np.uint8)).resize((round(width * scale), round(height * scale)),
                                                                            Image.NEAREST)
    pen = ImageDraw.Draw(img)
    for i, (box, score) in enumerate(zip(item.boxes, item.scores)):
        colour = COLOURS[i % len(COLOURS)]
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        pen.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=2)
        pen.text((x0 + 2, y0 + 1), f"{score:.2f}", fill=colour)
    return np.asarray(img)


def png_uri(pixels: np.ndarray) -> str:
    """A data URI of `pixels` as PNG, whole: the report's thumbnails crop to a square, which would cut boxes off."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gallery_html(groups: Mapping[str, Sequence[Labelled]], class_names: Sequence[str] | None = None) -> str:
    """A table: one row per group (e.g. "real", "tiny-sd, classname"), its labelled images drawn as thumbnails, each
    titled with its class, box count and scores."""
    def name(label: int) -> str:
        return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)

    rows = []
    for group, items in groups.items():
        cells = []
        for item in items:
            title = f"{name(item.label)}: {len(item.boxes)} box(es)" + (
                f", scores {', '.join(f'{s:.2f}' for s in item.scores)}" if len(item.scores) else ", none above the threshold")
            alt = f"{group} {item.id}"
            cells.append(f'<img alt="{html.escape(alt)}" title="{html.escape(title)}" src="{png_uri(overlay(item))}">')
        rows.append(f"<tr><th>{html.escape(group)}</th><td>{''.join(cells) or '<i>no labelled image</i>'}</td></tr>")
    return ("<div class='labels'><p>Pseudo-labels (the label stage): each instance's mask tinted and its box outlined "
            "in one colour, with its score.</p><table class='labels'>" + "".join(rows) + "</table></div>")


PER_GROUP = 6  # labelled images per row of the report's label gallery
MAX_GROUPS = 8  # synthetic rows shown (generator and prompt-style pairs), after the real row


def draw(table: Any, locations: Sequence[str], root: str) -> Any:
    """The report's pseudo-label gallery: the real test split's labels, then each dense trial's synthetic dataset's,
    read from the label artifacts its results name (`labels_real`, `labels_synthetic`); Skip when there are none."""
    from synthray.core import storage
    from synthray.report.common import Drawn, Skip
    from synthray.report.gallery import Stored, roots_of

    if "labels_synthetic" not in table or table["labels_synthetic"].isna().all():
        raise Skip("the results have no dense trial (grid.task=[detection] or [segmentation]), so no pseudo-labels")
    stored = Stored(roots_of(locations, root))
    rows = table.dropna(subset=["labels_synthetic"]).drop_duplicates(["generator", "prompt_style"])
    groups: dict[str, list[Labelled]] = {}
    first = rows.iloc[0]
    labels, real = stored.find("labels", str(first["labels_real"])), stored.find("real", str(first["real"]))
    if labels and real:
        groups["real (test)"] = labelled_images(storage.join(labels, "data"), storage.join(real, "test"), PER_GROUP)
    for _, row in rows.head(MAX_GROUPS).iterrows():
        labels, images = stored.find("labels", str(row["labels_synthetic"])), stored.find("synthetic", str(row["dataset"]))
        if labels and images:
            groups[f"{row['generator']}, {row['prompt_style']}"] = labelled_images(storage.join(labels, "data"),
                                                                                   storage.join(images, "data"), PER_GROUP)
    if not groups:
        raise Skip(f"no label artifact the results name is stored under {', '.join(stored.roots)}")
    shown = pd.DataFrame([{"group": g, "id": item.id, "label": item.label, "boxes": len(item.boxes)}
                          for g, items in groups.items() for item in items])
    return Drawn(shown, html="<style>table.labels img { margin: 2px; image-rendering: pixelated; }</style>" + gallery_html(groups))


def _spec() -> Any:
    from synthray.report.figures import Spec

    return Spec(
        "Pseudo-labels of real and synthetic images",
        f"The label stage's boxes and masks (a promptable segmenter, labels.model, prompted with each image's class), "
        f"which the detection and segmentation trials train and are scored on: {PER_GROUP} images of the real test split "
        "(first row), then of each generator and prompt style's dataset. Hover a thumbnail for its class and scores.",
        "Labels that miss the object, cover the whole image or find nothing make a dense trial's numbers measure the "
        "labeller, not the generator: judge them before the mAP and mIoU.", draw, paper=False)


def write_page(groups: Mapping[str, Sequence[Labelled]], path: Path, title: str = "synthray pseudo-labels",
               class_names: Sequence[str] | None = None) -> Path:
    """`gallery_html` as a page of its own at `path`, with the report's self-check."""
    from synthray.report.common import SELF_CHECK, STYLE

    style = STYLE + "table.labels img { margin: 2px; image-rendering: pixelated; }"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{gallery_html(groups, class_names)}"
            f"<pre id='selfcheck' hidden></pre><script>{SELF_CHECK}</script></body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


SPEC = _spec()
