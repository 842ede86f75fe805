"""The label stage's building blocks on the tiny random-weight SAM 3 twin, saved and loaded like a hub checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from synthray.core.artifacts import Store
from synthray.core.images import decode, encode
from synthray.core.models import Models
from synthray.core.registry import SynthrayError
from synthray.labels.segmenter import LABEL_TYPES, PromptSegmenter, check_spec, decode_mask, label_arrays, union_mask
from synthray.tiny.sam3 import IMAGE_SIZE, build_tiny_sam3

PROMPTS = {0: "zero", 1: "one", 2: "two", 3: "three"}
SIZES = [(40, 48), (64, 32), (37, 53), (56, 56), (24, 80), (48, 40)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_sam3(tmp_path_factory.mktemp("tiny-sam3"))


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Real handwritten digits, tinted and scaled to odd sizes, as JPEG and PNG bytes: columns id, image, label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i, (h, w) in enumerate(SIZES):
        grey = (digits.images[i] * 255 / 16).astype(np.uint8)
        rgb = np.stack([grey, 255 - grey, np.full_like(grey, 40 * i)], axis=-1)
        image = Image.fromarray(rgb).resize((w, h), Image.BILINEAR)
        out.append({"id": f"img{i}", "image": encode(image, "jpeg" if i % 2 else "png"), "label": int(digits.target[i]) % 4})
    return pd.DataFrame(out)


def spec(tiny_dir: Path, **kw) -> dict:
    # 0.05: low enough that the random twin keeps detections on every one of these images
    return {"model": str(tiny_dir), "prompts": PROMPTS, "threshold": 0.05, **kw}


@pytest.fixture(scope="module")
def segmenter(tiny_dir) -> PromptSegmenter:
    return PromptSegmenter(spec(tiny_dir))


def test_tiny_twin_is_sam3_loaded_from_disk(tiny_dir, tmp_path):
    from transformers import AutoModel, AutoProcessor, Sam3Model, Sam3Processor

    model = AutoModel.from_pretrained(str(tiny_dir))
    processor = AutoProcessor.from_pretrained(str(tiny_dir))
    assert type(model) is Sam3Model and type(processor) is Sam3Processor
    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert model.config.image_size == IMAGE_SIZE and processor.image_processor.size.height == IMAGE_SIZE
    # Recent transformers can hand back a 2-token tokenizer offline: the twin's is the 514-symbol byte-level CLIP one.
    assert len(processor.tokenizer) == 514 == model.config.text_config.vocab_size
    assert (tiny_dir / "model.safetensors").is_file() and (tiny_dir / "processor_config.json").is_file()
    # The resolver builds it as a tiny-models artifact and hands back a loadable folder, like every other twin.
    folder = Models(Store(str(tmp_path / "store"), scratch=str(tmp_path / "scratch"))).locate("tiny:sam3", "segmenter")
    assert type(Sam3Model.from_pretrained(folder)) is Sam3Model
    assert (Path(folder) / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()


def test_one_processor_call_pads_nothing(tiny_dir, rows):
    """Each image's pixels and token ids are the same in a batched processor call as in a call of its own."""
    from transformers import Sam3Processor

    processor = Sam3Processor.from_pretrained(str(tiny_dir))
    images = [decode(b) for b in rows["image"]]
    texts = [PROMPTS[label] for label in rows["label"]]
    together = processor(images=images, text=texts, return_tensors="pt")
    for i, (image, text) in enumerate(zip(images, texts)):
        alone = processor(images=image, text=text, return_tensors="pt")
        for key in ("pixel_values", "input_ids", "attention_mask", "original_sizes"):
            assert np.array_equal(together[key][i].numpy(), alone[key][0].numpy()), key


def test_labels_have_documented_shapes_and_types(segmenter, rows):
    out = segmenter(rows)
    assert list(out.columns) == ["id", "label", *LABEL_TYPES]  # the image bytes are not copied into the labels
    assert out["id"].tolist() == rows["id"].tolist()
    table = pa.Table.from_pandas(out, preserve_index=False)
    assert {name: table.schema.field(name).type for name in LABEL_TYPES} == LABEL_TYPES
    for row, (h, w) in zip(out.to_dict("records"), SIZES):
        assert (row["height"], row["width"]) == (h, w)
        labels = label_arrays(row)
        n = row["n"]
        assert n > 0 and labels["boxes"].shape == (n, 4) and labels["scores"].shape == (n,) and labels["masks"].shape == (n, h, w)
        assert labels["boxes"].dtype == np.float32 and labels["scores"].dtype == np.float32 and labels["masks"].dtype == bool
        assert (labels["scores"] > 0.05).all() and (labels["scores"] <= 1).all()
        boxes = labels["boxes"]
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        for data in row["masks"]:
            png = Image.open(io.BytesIO(data))
            assert png.format == "PNG" and png.mode == "1" and png.size == (w, h)  # single channel, 1 bit
            assert decode_mask(data).shape == (h, w)
        assert union_mask(labels["masks"], h, w).shape == (h, w)


def test_labels_match_the_studys_call(segmenter, tiny_dir, rows):
    """The study's `detect_objects` (labelling/run_sam3.py), one image at a time, gives the same scores and masks."""
    import torch
    from transformers import Sam3Model, Sam3Processor

    processor = Sam3Processor.from_pretrained(str(tiny_dir))
    model = Sam3Model.from_pretrained(str(tiny_dir))
    out = segmenter(rows.iloc[:3])
    for data, label, row in zip(rows["image"][:3], rows["label"][:3], out.to_dict("records")):
        image = decode(data)
        inputs = processor(images=image, text=PROMPTS[label], return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        expected = processor.post_process_instance_segmentation(
            outputs, threshold=0.05, mask_threshold=0.3, target_sizes=inputs.get("original_sizes").tolist())[0]
        labels = label_arrays(row)
        assert np.array_equal(labels["scores"], expected["scores"].numpy())
        assert np.array_equal(labels["masks"], expected["masks"].bool().numpy())
        clamped = expected["boxes"].numpy().copy()
        clamped[:, 0::2] = clamped[:, 0::2].clip(0, image.width)
        clamped[:, 1::2] = clamped[:, 1::2].clip(0, image.height)
        assert np.array_equal(labels["boxes"], clamped)


def test_threshold_one_gives_no_detections(tiny_dir, rows):
    out = PromptSegmenter(spec(tiny_dir, threshold=1.0))(rows)
    assert (out["n"] == 0).all()
    assert all(len(b) == 0 for b in out["boxes"]) and all(len(m) == 0 for m in out["masks"])
    # an all-empty batch stores the same column types as any other
    table = pa.Table.from_pandas(out, preserve_index=False)
    assert {name: table.schema.field(name).type for name in LABEL_TYPES} == LABEL_TYPES
    row = out.iloc[0]
    labels = label_arrays(row)
    assert labels["boxes"].shape == (0, 4) and labels["masks"].shape == (0, row["height"], row["width"])
    assert not union_mask(labels["masks"], row["height"], row["width"]).any()  # the study's empty image: all zero


def test_batch_size_does_not_reach_the_bytes(segmenter, rows):
    in_threes = pd.concat([segmenter(rows.iloc[i : i + 3]) for i in range(0, len(rows), 3)], ignore_index=True)
    one_by_one = pd.concat([segmenter(rows.iloc[i : i + 1]) for i in range(len(rows))], ignore_index=True)
    assert pa.Table.from_pandas(in_threes, preserve_index=False).equals(pa.Table.from_pandas(one_by_one, preserve_index=False))


def test_spec_errors_are_one_line(tiny_dir, segmenter, rows):
    assert check_spec({"model": "m", "prompts": {3: "cat"}})["prompts"] == {"3": "cat"}  # class ids as text
    assert check_spec({"model": "m", "prompts": {"3": "cat"}})["mask_threshold"] == 0.3  # the study's
    for bad, match in [({"thresh": 0.3}, "no key 'thresh'"), ({"threshold": 1.5}, "threshold must be"),
                       ({"prompts": {}}, "needs prompts"), ({"dtype": "float64"}, "dtype must be")]:
        with pytest.raises(SynthrayError, match=match):
            check_spec({**spec(tiny_dir), **bad})
    with pytest.raises(SynthrayError, match="no prompt for class 7"):
        segmenter(rows.assign(label=7))
    with pytest.raises(SynthrayError, match="no label"):
        segmenter(rows.drop(columns=["label"]))


@pytest.mark.slow
def test_runs_as_a_ray_data_actor(ray_cluster, tiny_dir, rows, segmenter, tmp_path):
    """`map_batches` with an actor pool: the same rows as a direct call, and plain list columns in parquet."""
    import pyarrow.parquet as pq
    import ray

    ds = ray.data.from_pandas([rows.iloc[:3], rows.iloc[3:]]).map_batches(
        PromptSegmenter, fn_constructor_args=(spec(tiny_dir),), batch_format="pandas", batch_size=2,
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
    )
    ds.write_parquet(str(tmp_path / "labels"))
    stored = pq.read_table(str(tmp_path / "labels")).sort_by("id")
    assert {name: stored.schema.field(name).type for name in LABEL_TYPES} == LABEL_TYPES
    direct = pa.Table.from_pandas(segmenter(rows), preserve_index=False).sort_by("id")
    assert stored.select(direct.column_names).to_pylist() == direct.to_pylist()
