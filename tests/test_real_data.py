import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synthray.core.images import decode, read_images
from synthray.core.registry import SynthrayError
from synthray.data.real import load_classes
from synthray.graph.real import real_artifact, real_data
from synthray.sweep.plan import validate
from tests.conftest import tiny_cfg


def test_digits_splits_are_real_deterministic_and_disjoint(tmp_path):
    cfg = tiny_cfg(tmp_path)
    art = real_data(cfg)
    assert art.is_complete() and art.verify() == []
    splits = {s: read_images(art.file(s)) for s in ("train", "control", "test")}
    assert sum(len(t) for t in splits.values()) == 1797  # every real digit, once
    ids = [set(t["id"]) for t in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert 0.28 < len(splits["test"]) / 1797 < 0.32
    assert set(splits["train"]["label"]) == set(range(10))
    img = decode(splits["train"]["image"][0])
    assert img.size == (32, 32) and img.mode == "RGB"
    # Same spec in another storage root: the same bytes.
    other = real_artifact(tiny_cfg(tmp_path / "other"))
    assert other.key == art.key and other.uri != art.uri
    real_data(tiny_cfg(tmp_path / "other"))
    pd.testing.assert_frame_equal(read_images(other.file("test")), splits["test"])
    assert other.manifest()["files"] == art.manifest()["files"]  # every file, byte for byte


def test_class_list_errors(tmp_path):
    assert len(load_classes("tiny-imagenet-200")) == 200
    bad = tmp_path / "classes.csv"
    bad.write_text("id,name\na,x\nb,y\na,z\n")
    with pytest.raises(SynthrayError, match="duplicate ids"):
        load_classes(str(bad))
    bad.write_text("wnid,label\na,x\n")
    with pytest.raises(SynthrayError, match="needs columns id,name"):
        load_classes(str(bad))


def _imagefolder(root, classes, per_split=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cid in classes:
            (root / split / cid).mkdir(parents=True)
            for i in range(per_split):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / split / cid / f"{i}.JPEG")


def test_imagefolder_loader(tmp_path):
    root = tmp_path / "imagenet"
    _imagefolder(root, ["n01", "n02"])
    (tmp_path / "classes.csv").write_text("id,name\nn01,cat\nn02,dog\n")
    cfg = tiny_cfg(tmp_path / "runs", "data.source=imagefolder", f"data.root={root}", f"data.classes={tmp_path / 'classes.csv'}",
                   "data.image_size=24", "data.control_fraction=0.5")
    art = real_data(cfg)
    assert art.meta()["counts"] == {"train": 4, "control": 4, "test": 8}
    test = read_images(art.file("test"))
    assert decode(test["image"][0]).size == (24, 24)
    assert sorted(set(test["class_id"])) == ["n01", "n02"]


def test_imagefolder_corrupt_image_is_named(tmp_path):
    root = tmp_path / "imagenet"
    _imagefolder(root, ["n01"], per_split=2)
    (root / "val" / "n01" / "broken.JPEG").write_bytes(b"not a jpeg")
    (tmp_path / "classes.csv").write_text("id,name\nn01,cat\n")
    cfg = tiny_cfg(tmp_path / "runs", "data.source=imagefolder", f"data.root={root}", f"data.classes={tmp_path / 'classes.csv'}")
    with pytest.raises(SynthrayError, match="broken.JPEG"):
        real_data(cfg)
    assert not real_artifact(cfg).is_complete()


def test_imagefolder_corrupt_image_can_be_skipped(tmp_path):
    root = tmp_path / "imagenet"
    _imagefolder(root, ["n01"], per_split=2)
    (root / "val" / "n01" / "broken.JPEG").write_bytes(b"not a jpeg")
    (tmp_path / "classes.csv").write_text("id,name\nn01,cat\n")
    cfg = tiny_cfg(tmp_path / "runs", "data.source=imagefolder", f"data.root={root}",
                   f"data.classes={tmp_path / 'classes.csv'}", "data.on_corrupt=skip")
    art = real_data(cfg)
    assert art.meta()["counts"]["test"] == 2
    assert len(art.meta()["skipped"]) == 1 and "broken.JPEG" in art.meta()["skipped"][0]


def test_parquet_source_reads_a_hugging_face_datasets_export(tmp_path):
    """Real data from parquet as `datasets` writes it: Image structs and ClassLabel ints named in the metadata."""
    import datasets

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["n01", "n02", "n03"])})
    for split, n in (("train", 12), ("validation", 6)):
        rows = {"image": [Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)) for _ in range(n)],
                "label": [i % 3 for i in range(n)]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "hf" / "data" / f"{split}-00000-of-00001.parquet"))
    (tmp_path / "classes.csv").write_text("id,name\nn01,cat\nn03,dog\n")  # a subset, in another order
    cfg = tiny_cfg(tmp_path / "runs", "data.source=parquet", f"data.root={tmp_path / 'hf'}", "data.image_size=16",
                   f"data.classes={tmp_path / 'classes.csv'}", "data.control_fraction=0.5")
    validate(cfg)
    art = real_data(cfg)
    assert art.meta()["counts"] == {"train": 4, "control": 4, "test": 4}
    test = read_images(art.file("test"))
    assert sorted(set(zip(test["class_id"], test["label"]))) == [("n01", 0), ("n03", 1)]
    assert decode(test["image"][0]).size == (16, 16)

    with pytest.raises(SynthrayError, match="no column picture"):
        bad = tiny_cfg(tmp_path / "runs2", "data.source=parquet", f"data.root={tmp_path / 'hf'}", "data.image_column=picture",
                       f"data.classes={tmp_path / 'classes.csv'}")
        real_data(bad)
    with pytest.raises(SynthrayError, match="no test parquet files"):
        (tmp_path / "hf" / "data" / "validation-00000-of-00001.parquet").unlink()
        validate(cfg)


def test_real_splits_are_written_in_bounded_shards(tmp_path, monkeypatch):
    """Native ImageNet JPEGs make a split tens of GB: it is written (and read) shard by shard, with the same rows."""
    import synthray.data.real as real_module
    from synthray.core.artifacts import DatasetRef

    whole = read_images(DatasetRef(real_data(tiny_cfg(tmp_path / "a")), "train").uri).sort_values("id").reset_index(drop=True)
    monkeypatch.setattr(real_module, "SHARD_ROWS", 100)
    art = real_data(tiny_cfg(tmp_path / "b"))
    parts = sorted(p.name for p in (tmp_path / "b" / "real" / art.key / "train").glob("part-*.parquet"))
    assert len(parts) == -(-len(whole) // 100) > 1
    sharded = read_images(DatasetRef(art, "train").uri).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(sharded, whole)
    assert art.meta()["counts"]["train"] == len(whole)


def test_a_moved_data_folder_keeps_its_key_and_old_keys_are_still_read(tmp_path):
    """The real data's key follows its files (names and sizes), not the folder's path; a copy stored under the
    key synthray gave it before (with the absolute path) is read in place, and aliased under the new key."""
    import shutil

    from synthray.core import storage
    from synthray.core.artifacts import MANIFEST
    from synthray.graph.real import real_spec

    root = tmp_path / "imagenet"
    _imagefolder(root, ["n01", "n02"], per_split=2)
    (tmp_path / "classes.csv").write_text("id,name\nn01,cat\nn02,dog\n")
    args = ["data.source=imagefolder", f"data.classes={tmp_path / 'classes.csv'}", "data.control_fraction=0.5"]
    cfg = tiny_cfg(tmp_path / "runs", *args, f"data.root={root}")
    spec = real_spec(cfg)
    assert spec.key != spec.legacy_key and spec.identity(legacy=True)["root"] == str(root)
    # A store written by the earlier synthray: the artifact under the legacy key only.
    legacy = real_data(cfg)
    shutil.move(legacy.uri, legacy.store.uri("real", spec.legacy_key))
    again = real_data(cfg)
    assert again.uri.endswith(spec.legacy_key) and again.meta()["counts"]["train"] == 2
    assert '"alias"' in storage.read_text(storage.join(legacy.store.uri("real", spec.key), MANIFEST))
    # Moved elsewhere: the legacy key changes with the path, the key does not; the alias still finds the data.
    moved = tmp_path / "elsewhere" / "imagenet"
    shutil.move(root, moved)
    cfg2 = tiny_cfg(tmp_path / "runs", *args, f"data.root={moved}")
    assert real_spec(cfg2).key == spec.key and real_spec(cfg2).legacy_key != spec.legacy_key
    assert real_artifact(cfg2).is_complete() and real_data(cfg2).uri == again.uri
    # Other contents, another key.
    (moved / "train" / "n01" / "0.JPEG").write_bytes(b"x" * 10)
    assert real_spec(cfg2).key != spec.key


def test_a_trial_keys_its_real_data_with_the_plans_fingerprint(tmp_path, monkeypatch):
    """Tune trials get the fingerprints the driver's plan computed (`_trainable`), so a trial does not list a folder
    of hundreds of thousands of images again, and keys its real data as the plan did."""
    from synthray.graph import identity
    from synthray.graph.real import real_spec

    monkeypatch.setattr(identity, "_PLANNED", {})
    root = tmp_path / "imagenet"
    _imagefolder(root, ["n01"], per_split=1)
    (tmp_path / "classes.csv").write_text("id,name\nn01,cat\n")
    cfg = tiny_cfg(tmp_path / "runs", "data.source=imagefolder", f"data.root={root}", f"data.classes={tmp_path / 'classes.csv'}")
    planned = real_spec(cfg)
    identity.planned_fingerprints([(planned.source, planned.root, planned.classes, planned.files)])
    (root / "train" / "n01" / "0.JPEG").write_bytes(b"changed after planning")
    assert real_spec(cfg).key == planned.key  # as the plan keyed it, without listing the folder
    monkeypatch.setattr(identity, "_PLANNED", {})
    assert real_spec(cfg).key != planned.key  # listed afresh: the contents changed


def test_a_copy_staged_in_local_storage_is_read_as_its_folder(tmp_path):
    """`data.root` may name a staged copy in local storage too (one machine is a cluster's smallest case): the
    same key and rows as the folder; its test split comes from test/ when the tree has no val/."""
    import shutil

    from synthray.core.artifacts import Store
    from synthray.data.staging import stage_data
    from synthray.graph.real import real_spec

    root = tmp_path / "imagenet"
    _imagefolder(root, ["n01", "n02"], per_split=2)
    shutil.move(root / "val", root / "test")
    (tmp_path / "classes.csv").write_text("id,name\nn01,cat\nn02,dog\n")
    staged, copied = stage_data(str(root), Store(str(tmp_path / "store")))
    assert copied and staged.meta()["test_dir"] == "test"
    args = ["data.source=imagefolder", f"data.classes={tmp_path / 'classes.csv'}", "data.control_fraction=0.5"]
    folder = tiny_cfg(tmp_path / "runs", *args, f"data.root={root}")
    copy = tiny_cfg(tmp_path / "other-runs", *args, f"data.root={staged.uri}")
    validate(copy)
    assert real_spec(copy).key == real_spec(folder).key
    a, b = real_data(folder), real_data(copy)
    for split in ("train", "control", "test"):
        pd.testing.assert_frame_equal(read_images(a.file(split)), read_images(b.file(split)))
    with pytest.raises(SynthrayError, match="is not a staged artifact"):  # an artifact of another kind
        validate(tiny_cfg(tmp_path / "runs", *args, f"data.root={a.uri}"))
