"""The report's image gallery, read from artifacts the real stages built: tiny-sd in two prompt styles, the
real-holdout control, the real digits and a stored depth view (the tiny Depth-Anything twin)."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from synthray.report import gallery
from synthray.report.page import write_report
from tests.browser import assert_renders
from tests.conftest import tiny_cfg

POINTS = [("tiny-sd", "classname"), ("tiny-sd", "caption"), ("real-holdout", "classname")]


def _thumbs(text: str) -> dict[str, list[tuple[str, str]]]:
    """{alt: [(title, data URI)]} of the gallery's thumbnails."""
    out: dict[str, list[tuple[str, str]]] = {}
    for alt, title, src in re.findall(r'<img alt="([^"]*)" title="([^"]*)" src="(data:image/[^"]+)">', text):
        out.setdefault(alt, []).append((title, src))
    return out


def _pixels(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture(scope="module")
def sweep(ray_cluster, shared_storage, tmp_path_factory):
    """A sweep folder holding the results of three trials run by the real trial code (`run_point`), plus the depth
    view of tiny-sd's class-name images built by the real view stage, all stored under `shared_storage`."""
    from synthray.core.models import Models
    from synthray.graph.build import Context, build
    from synthray.sweep.trial import plan_trial, run_point

    folder = tmp_path_factory.mktemp("gallery")
    captions = folder / "captions.csv"
    captions.write_text("class_id,caption\n" + "".join(f"{c},a digit {c} in thick ink\n{c},a thin {c}\n" for c in range(10)))
    cfg = tiny_cfg(shared_storage, f"prompts.captions={captions}", "recipe.epochs=1", "probes.depth.model=tiny:depth")
    rows = [run_point(cfg, {"generator": g, "prompt_style": s, "arch": "tiny-cnn", "probe": "rgb"}) for g, s in POINTS]
    depth = plan_trial(cfg, {"generator": "tiny-sd", "prompt_style": "classname", "arch": "tiny-cnn", "probe": "depth"})
    build(depth.plan.synth_view.spec, Context(depth.store, Models.from_cfg(cfg)))
    sweep = folder / "sweeps" / "gallery-20260101-000000"
    sweep.mkdir(parents=True)
    (sweep / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    pd.DataFrame(rows).assign(status="done").to_parquet(sweep / "results.parquet")
    return sweep, shared_storage, depth


@pytest.mark.slow
def test_gallery_shows_every_generator_and_style_beside_real_images(sweep, tmp_path):
    folder, root, depth = sweep
    page = write_report([str(folder)], tmp_path / "report", str(root))
    text = page.read_text()
    shown = pd.read_csv(tmp_path / "report" / "figures" / "gallery.csv", dtype={"class_id": str})
    samples = shown[shown["part"] == "samples"]
    per_cell = gallery.PER_CELL * gallery.N_CLASSES
    counts = samples.groupby(["generator", samples["prompt_style"].fillna("-")]).size().to_dict()
    assert counts == {("real", "-"): per_cell, ("tiny-sd", "classname"): per_cell, ("tiny-sd", "caption"): per_cell,
                      ("real-holdout", "classname"): per_cell}
    # The same classes in every row: the real row's are the generators' classes.
    classes = samples.groupby("generator")["class_id"].apply(lambda c: sorted(set(c)))
    assert all(c == ["0", "1", "2", "3"] for c in classes)
    assert samples.loc[samples["generator"] == "real", "id"].str.startswith("digits/").all()  # real train images
    thumbs = _thumbs(text)
    assert len(thumbs["real 0"]) == gallery.PER_CELL and len(thumbs["tiny-sd 0"]) == 2 * gallery.PER_CELL
    # The caption style's thumbnails carry their prompts ("zero, a digit 0 in thick ink").
    assert any(title.startswith("zero, a ") for title, _ in thumbs["tiny-sd 0"])
    # Probe views: one image per generator and a real one; tiny-sd's depth is the stored view, pixel for pixel,
    # the others computed from the image by the probe's code; real images have no stored depth view, and say so.
    views = shown[shown["part"] == "views"].set_index(["generator", "probe"])["view"]
    assert views[("tiny-sd", "depth")] == "stored" and views[("tiny-sd", "lowpass")] == "computed"
    assert ("real", "depth") not in views and views[("real", "highpass")] == "computed"
    assert "Depth: no stored depth view" in text
    from synthray.core.images import read_images

    first = samples[(samples["generator"] == "tiny-sd") & (samples["prompt_style"] == "classname")].iloc[0]
    stored = read_images(depth.store.uri("views", depth.plan.synth_view.spec.key, "data"))
    want = np.asarray(Image.open(io.BytesIO(stored.set_index("id").loc[first["id"], "image"])).convert("RGB"))
    got = _pixels(thumbs["tiny-sd depth"][0][1])
    assert got.shape == want.shape and np.abs(got.astype(int) - want).max() == 0  # PNG at its own 32 px: lossless
    # Self-contained: every thumbnail embedded, no file outside the page, and small.
    n = len(shown)
    assert len(re.findall(r'src="data:image/(?:png|jpeg);base64,', text)) >= n
    assert not re.search(r'<img[^>]+src="(?!data:)', text)
    assert page.stat().st_size < 10_000_000
    print(f"[figure] gallery: {len(shown)} thumbnails, page {page.stat().st_size} bytes")
    assert_renders(page, tmp_path / "report.png", min_images=n)


def test_gallery_is_a_note_when_its_inputs_are_missing(tmp_path):
    rows = pd.DataFrame([{"generator": "tiny-sd", "prompt_style": "classname", "arch": "tiny-cnn", "probe": "rgb",
                          "synth_to_real_acc": 0.5, "status": "done"}])
    rows.to_parquet(tmp_path / "old.parquet")
    text = write_report([str(tmp_path / "old.parquet")], tmp_path / "a", str(tmp_path)).read_text()
    assert "Not shown: the results name no synthetic dataset" in text
    rows.assign(dataset="0123456789abcdef").to_parquet(tmp_path / "gone.parquet")
    text = write_report([str(tmp_path / "gone.parquet")], tmp_path / "b", str(tmp_path)).read_text()
    assert "Not shown: no synthetic dataset the results name (1 generator and prompt-style pair) is stored under" in text
    assert not (tmp_path / "b" / "figures" / "gallery.csv").exists()
