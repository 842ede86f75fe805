"""`synthray stage-data` and sweeps that read its copy: real files, the local S3 server (moto), real subprocesses.

What must hold: the staged copy's key comes from its content and never from a path; a second run copies nothing;
the real data read from the copy has the folder's key and the folder's rows (ids, labels, bytes); bad input is
one line and exit code 2.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synthray.core import storage
from synthray.core.artifacts import MANIFEST, Store
from synthray.core.images import read_images
from synthray.core.registry import SynthrayError
from synthray.data.staged import INDEX
from synthray.data.staging import stage_data
from synthray.graph.real import real_data, real_spec
from synthray.sweep.plan import validate
from tests.conftest import tiny_cfg
from tests.rig import BUCKET, run_cli, s3_client

CLASSES = ["n01", "n02", "n03"]


def _tree(root: Path, classes=CLASSES, per_split: int = 3) -> Path:
    """An ImageNet-like tree with what a real one has besides class images: a stray file, a class the class list
    leaves out, a `test/` folder that `val/` shadows, and images of odd sizes (JPEG and PNG)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cid in [*classes, "n99"]:
            (root / split / cid).mkdir(parents=True)
            for i in range(per_split + (cid == "n02")):
                pixels = rng.integers(0, 255, (20 + i, 24 + 2 * i, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cid / (f"{i}.JPEG" if i % 2 == 0 else f"img-{i}.png"))
    (root / "train" / "n01" / "notes.txt").write_text("not an image")
    (root / "test" / "n01").mkdir(parents=True)
    (root / "test" / "n01" / "shadowed.JPEG").write_bytes((root / "val" / "n01" / "0.JPEG").read_bytes())
    return root


def _classes_csv(tmp_path: Path) -> Path:
    path = tmp_path / "classes.csv"
    path.write_text("id,name\n" + "".join(f"{c},class {c}\n" for c in CLASSES))
    return path


def _upload(endpoint: str, folder: Path, prefix: str) -> str:
    client = s3_client(endpoint)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{file.relative_to(folder).as_posix()}", Body=file.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def _split_frames(art) -> dict[str, pd.DataFrame]:
    return {s: read_images(art.file(s))[["id", "label", "class_id", "image"]] for s in ("train", "control", "test")}


def test_the_staged_copy_gives_the_folders_key_and_rows(tmp_path, s3_server):
    """A real artifact read from the staged copy on S3 has the key of one read from the folder (so nothing downstream
    is recomputed when a sweep moves to the copy) and the same rows: ids, labels and bytes."""
    root = _tree(tmp_path / "imagenet")
    store = Store(f"s3://{BUCKET}/stage-keys")
    staged, copied = stage_data(str(root), store, shard_files=4)  # several shards, a class across two of them
    assert copied and staged.is_complete() and staged.verify() == []
    meta = staged.meta()
    assert meta["counts"] == {"train": 13, "test": 13} and meta["shards"] == 7 and meta["test_dir"] == "val"
    index = pd.read_parquet(io.BytesIO(storage.read_bytes(staged.file(INDEX))))
    assert "train/n01/notes.txt" not in set(index["path"]) and not index["path"].str.startswith("test/").any()
    for path, size in zip(index["path"], index["size"]):
        assert (root / path).stat().st_size == size

    args = ["data.source=imagefolder", f"data.classes={_classes_csv(tmp_path)}", "data.control_fraction=0.5",
            "data.image_size=null"]  # null: the files' own bytes, so equal rows mean the copy is byte for byte
    from_folder = tiny_cfg(tmp_path / "runs", *args, f"data.root={root}")
    from_copy = tiny_cfg(f"s3://{BUCKET}/runs-from-copy", *args, f"data.root={staged.uri}")
    assert from_copy.data.root == staged.uri  # a URI stays a URI: never `./s3:/...`
    validate(from_copy)  # RealSpec.check reads the copy's manifest and meta, never a local folder
    assert real_spec(from_copy).files == real_spec(from_folder).files
    assert real_spec(from_copy).key == real_spec(from_folder).key
    folder_art, copy_art = real_data(from_folder), real_data(from_copy)
    assert copy_art.key == folder_art.key and copy_art.uri.startswith("s3://")
    folder_rows, copy_rows = _split_frames(folder_art), _split_frames(copy_art)
    for split in ("train", "control", "test"):
        pd.testing.assert_frame_equal(copy_rows[split], folder_rows[split])
    assert len(copy_rows["test"]) == 10 and copy_rows["train"]["id"].iloc[0].startswith("train/n01/")
    assert folder_rows["test"]["image"].iloc[0] == (root / folder_rows["test"]["id"].iloc[0]).read_bytes()
    assert copy_art.manifest()["files"] == folder_art.manifest()["files"]  # every shard, byte for byte

    # A class list other than the staged classes: the fingerprint comes from the index, still the folder's.
    two = tmp_path / "two.csv"
    two.write_text("id,name\nn02,b\nn03,c\n")
    folder_two = tiny_cfg(tmp_path / "runs", *args, f"data.root={root}", f"data.classes={two}")
    copy_two = tiny_cfg(tmp_path / "runs", *args, f"data.root={staged.uri}", f"data.classes={two}")
    assert real_spec(copy_two).key == real_spec(folder_two).key != real_spec(from_folder).key


@pytest.mark.slow
def test_the_key_is_the_content_and_a_second_run_copies_nothing(tmp_path, s3_server):
    """From a bucket prefix (the CLI, as a user runs it) and from a local folder with the same files: one key.
    A second run finds it complete and says so; other bytes of the same size make another key."""
    root = _tree(tmp_path / "imagenet", per_split=1)
    prefix = _upload(s3_server, root, "sources/imagenet")
    store = f"s3://{BUCKET}/stage-cli"
    first = run_cli("stage-data", prefix, f"storage={store}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    setting = re.search(r"data\.root=(\S+)", first.stdout).group(1)
    assert setting.startswith(f"{store}/staged/") and "staged 10 images" in first.stdout
    assert re.search(r"stage-data: shard 1/1, 10/10 files, .* files/s, ETA", first.stderr)  # progress, on stderr
    again = run_cli("stage-data", prefix, f"storage={store}", cwd=tmp_path)
    assert again.returncode == 0 and "already staged" in again.stdout and setting in again.stdout
    assert "shard" not in again.stderr

    art, copied = stage_data(str(root), Store(store))  # the same files from a local folder: found, not copied
    assert art.uri == setting and not copied
    assert not [k for k in storage.list_files(storage.join(store, "staged")) if ".partial-" in k]
    # Only what the sweep reads is staged: a class list stages fewer files, under another key.
    fewer, _ = stage_data(str(root), Store(store), ["n01", "n02"])
    assert fewer.key != art.key and fewer.meta()["classes"] == {"train": ["n01", "n02"], "test": ["n01", "n02"]}
    # Same names and sizes, other bytes: another key (the checksums are in it).
    file = root / "train" / "n01" / "0.JPEG"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF
    file.write_bytes(bytes(data))
    changed, copied = stage_data(str(root), Store(store))
    assert copied and changed.key != art.key


RUN = """
import sys
from synthray.core.artifacts import Store
from synthray.core.logs import setup_logging
from synthray.data.staging import stage_data
setup_logging()
art, copied = stage_data(sys.argv[1], Store(sys.argv[2]), shard_files=1, threads=1)
print(art.uri, copied)
"""


@pytest.mark.slow
def test_a_killed_staging_resumes_from_its_shards(tmp_path, s3_server):
    """A staging killed mid-way (SIGKILL) leaves whole shards; the next run reads only the rest, and the artifact is
    the one an uninterrupted run makes."""
    import subprocess
    import sys
    import time

    prefix = _upload(s3_server, _tree(tmp_path / "imagenet", per_split=12), "sources/killed")
    store = tmp_path / "store"
    first = subprocess.Popen([sys.executable, "-c", RUN, prefix, str(store)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if len(list((store / "staged").glob(".partial-*/shards/*.parquet"))) >= 3:
            first.kill()
            break
        time.sleep(0.02)
    first.communicate(timeout=30)
    assert first.returncode == -9, "killed mid-way (the run had not finished)"
    written = len(list((store / "staged").glob(".partial-*/shards/*.parquet")))
    assert 3 <= written < 98
    second = subprocess.run([sys.executable, "-c", RUN, prefix, str(store)], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"{written} of 98 shards already written by an interrupted run, resuming" in second.stderr
    assert second.stderr.count("stage-data: shard ") == 98
    clean, _ = stage_data(prefix, Store(str(tmp_path / "clean")), shard_files=1)
    uri, copied = second.stdout.split()
    assert copied == "True" and uri == str(store / "staged" / clean.key)
    files = {k: v for k, v in json.loads(storage.read_text(storage.join(uri, MANIFEST)))["files"].items() if k != "meta.json"}
    assert files == {k: v for k, v in clean.manifest()["files"].items() if k != "meta.json"}  # meta: its time differs
    assert not list((store / "staged").glob(".partial-*"))


def _one_line(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("synthray: error:"), done.stderr
    return lines[0]


def _main(capsys, *args: str) -> str:
    """The CLI's error path in this process (`cli.main`: a SynthrayError is one line and exit code 2); a fresh
    process per case costs ~8 s of imports on CI, so one case of each test runs as a subprocess."""
    from synthray.cli import main

    capsys.readouterr()
    code = main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("[synthray]")]  # log lines: progress
    assert code == 2 and len(lines) == 1 and lines[0].startswith("synthray: error:"), err
    return lines[0]


@pytest.mark.slow
def test_bad_stage_data_inputs_are_one_line_and_exit_2(tmp_path, s3_server, capsys):
    empty = tmp_path / "empty"
    (empty / "train" / "n01").mkdir(parents=True)
    (empty / "val" / "n01").mkdir(parents=True)
    no_train = _upload(s3_server, _tree(tmp_path / "tree", per_split=1), "sources/flat") + "/val"  # class folders only
    store = f"storage=s3://{BUCKET}/stage-bad"
    cases = [
        ([str(tmp_path / "no-such-folder"), store], "no such folder"),
        ([f"s3://{BUCKET}/no/such/prefix", store], "no such folder"),
        ([str(empty), store], "no images under"),
        ([no_train, store], "has no train/ folder"),
        (["ftp://host/imagenet", store], "unknown URI scheme 'ftp://'"),
        ([str(tmp_path / "tree"), store, "data.classes=tiny-imagenet-200"], "class folders missing"),
        ([str(tmp_path / "tree"), str(empty), store], "stage-data takes one folder or URI"),
    ]
    assert cases[0][1] in _one_line(run_cli("stage-data", *cases[0][0], cwd=tmp_path))  # as a user meets it
    for words, needle in cases:
        assert needle in _main(capsys, "stage-data", *words), words
    assert not [k for k in storage.list_files(f"s3://{BUCKET}/stage-bad")], "bad input writes nothing"


@pytest.mark.slow
def test_storage_uris_in_the_config_are_read_or_refused_in_one_line(tmp_path, s3_server, capsys):
    """data.root: a staged copy is read, any other URI refused naming stage-data; prompts.captions: refused (a
    local file); metrics.geneval: read through the storage layer. None is ever turned into a local path."""
    from synthray.sweep.geneval import load_geneval

    s3_client(s3_server).put_object(Bucket=BUCKET, Key="tables/geneval.csv", Body=b"generator,geneval\ntiny-sd,0.25\n")
    cfg = tiny_cfg(tmp_path / "runs", f"metrics.geneval=s3://{BUCKET}/tables/geneval.csv")
    assert cfg.metrics.geneval == f"s3://{BUCKET}/tables/geneval.csv" and load_geneval(cfg) == {"tiny-sd": 0.25}
    with pytest.raises(SynthrayError, match="metrics.geneval: no such file s3://"):
        load_geneval(tiny_cfg(tmp_path / "runs", f"metrics.geneval=s3://{BUCKET}/tables/nope.csv"))
    from synthray.prompts.table import load_captions

    s3_client(s3_server).put_object(Bucket=BUCKET, Key="tables/captions.csv", Body=b"class_id,caption\n0,a zero\n1,a one\n")
    cfg = tiny_cfg(tmp_path / "runs", f"prompts.captions=s3://{BUCKET}/tables/captions.csv")
    assert cfg.prompts.captions == f"s3://{BUCKET}/tables/captions.csv"  # never mangled into a local path
    assert load_captions(cfg.prompts.captions, ["0", "1"])["caption"].tolist() == ["a zero", "a one"]
    not_staged = tiny_cfg(tmp_path / "runs", "data.source=imagefolder", f"data.root=s3://{BUCKET}/sources/imagenet")
    with pytest.raises(SynthrayError, match="is not a staged artifact .*synthray stage-data"):
        validate(not_staged)

    runs = tmp_path / "runs"
    cases = [
        (["data.source=imagefolder", f"data.root=s3://{BUCKET}/no/such/thing"], "is not a staged artifact"),
        (["data.source=imagefolder", "data.root=gopher://host/imagenet"], "data.root=gopher://host/imagenet: unknown URI scheme"),
        (["data.source=imagefolder", "data.root=s3:/bucket/imagenet"], "write the URI with two slashes"),
        ([f"prompts.captions=s3://{BUCKET}/captions.csv", "grid.prompt_style=[caption]"], "captions table not found: s3://"),
        (["metrics.geneval=s3://x/g.csv"], "bucket name 'x' is too short"),
    ]
    assert cases[0][1] in _one_line(run_cli("run", f"storage={runs}", *cases[0][0], cwd=tmp_path))
    for args, needle in cases:
        assert needle in _main(capsys, "run", f"storage={runs}", *args), args
    staged, _ = stage_data(str(_tree(tmp_path / "imagenet", per_split=1)), Store(f"s3://{BUCKET}/stage-config"))
    parquet = tiny_cfg(runs, "data.source=parquet", f"data.root={staged.uri}")
    with pytest.raises(SynthrayError, match="read it with data.source=imagefolder"):
        validate(parquet)
    more = tiny_cfg(runs, "data.source=imagefolder", f"data.root={staged.uri}", "data.classes=tiny-imagenet-200")
    with pytest.raises(SynthrayError, match="200 of 200 classes were not staged in train/"):
        validate(more)
    assert not runs.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["imagenet"]
