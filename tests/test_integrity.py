"""Chaos case 5, a corrupted object: manifest checksums are verified on every read, and a bad file is named in one
line, removed with the manifest, and rebuilt by the next build; a classifier never trains on it."""

from __future__ import annotations

import pytest

from synthray.core import storage
from synthray.core.artifacts import MANIFEST, Artifact, CorruptArtifact, Store, corruption
from synthray.core.images import read_images, shard_files, write_table

SHARDS = 3


def _dataset(root: str, built: list[str]) -> Artifact:
    """A 3-shard image table built the way stages build theirs: shards already in storage are skipped."""
    art = Artifact(Store(root), "things", {"rows": SHARDS * 4})

    def make(out):
        have = storage.list_files(storage.join(out.uri, "data"))
        for i in range(SHARDS):
            name = f"part-{i:05d}.parquet"
            if name not in have:
                built.append(name)
                rows = range(4 * i, 4 * i + 4)
                out.record(f"data/{name}", write_table(storage.join(out.uri, "data", name),
                                                       {"id": [f"r{j}" for j in rows], "image": [bytes([j]) * 50 for j in rows],
                                                        "label": [j % 2 for j in rows], "class_id": [f"c{j % 2}" for j in rows]}))
        return {"rows": SHARDS * 4}

    return art.build(make)


def _flip_byte(uri: str) -> None:
    data = bytearray(storage.read_bytes(uri))
    data[len(data) // 2] ^= 0x01
    storage.write_bytes(uri, bytes(data))


def _truncate(uri: str) -> None:
    storage.write_bytes(uri, storage.read_bytes(uri)[:-7])


@pytest.mark.parametrize("damage", [_flip_byte, _truncate, storage.delete_file])
def test_a_damaged_shard_is_named_removed_and_rebuilt(tmp_path, damage):
    built: list[str] = []
    art = _dataset(storage.normalize(tmp_path), built)
    whole = read_images(art.file("data"))
    victim = art.file("data", "part-00001.parquet")
    good = storage.read_bytes(victim)
    damage(victim)

    with pytest.raises(CorruptArtifact) as err:
        read_images(art.file("data"))
    line = str(err.value)
    assert "\n" not in line and f"artifact things/{art.key}" in line and "data/part-00001.parquet" in line
    assert ("is missing" if damage is storage.delete_file else "is corrupt") in line
    # Nothing reads the artifact as complete any more, and the bad file is gone; the good shards stay.
    assert not art.is_complete() and "data/part-00001.parquet" not in storage.list_files(art.uri)

    built.clear()
    art = _dataset(storage.normalize(tmp_path), built)
    assert built == ["part-00001.parquet"], "only the removed shard is rebuilt"
    assert storage.read_bytes(victim) == good and art.verify() == []
    assert read_images(art.file("data")).equals(whole)


def test_a_corrupt_manifest_makes_the_artifact_incomplete(tmp_path):
    art = _dataset(storage.normalize(tmp_path), [])
    storage.write_bytes(art.file(MANIFEST), storage.read_bytes(art.file(MANIFEST))[:40])
    with pytest.raises(CorruptArtifact, match=f"things/{art.key}: {MANIFEST} is unreadable"):
        shard_files(art.file("data"))
    assert not art.is_complete()
    built: list[str] = []
    assert _dataset(storage.normalize(tmp_path), built).verify() == [] and built == []


def test_checksums_are_verified_on_s3_too(s3_server, tmp_path):
    root = f"s3://synthray-test/integrity-{tmp_path.name}"
    art = _dataset(root, [])
    _flip_byte(art.file("data", "part-00002.parquet"))
    with pytest.raises(CorruptArtifact, match="data/part-00002.parquet is corrupt"):
        read_images(art.file("data"))
    assert not art.is_complete()


@pytest.mark.slow
def test_a_corrupt_shard_stops_training_data_in_ray_data_with_its_line(ray_cluster, tmp_path):
    """The training pipeline reads shards in Ray Data tasks: the corruption surfaces there, wrapped by Ray, and
    `corruption` finds its line (which the sweep uses to rebuild, and to report)."""
    import ray.data

    from synthray.training.inputs import read_shards

    art = _dataset(storage.normalize(tmp_path), [])
    files = shard_files(art.file("data"))
    _truncate(files[0])
    dataset = ray.data.from_items([{"uri": f} for f in files], override_num_blocks=len(files))
    with pytest.raises(Exception) as err:
        dataset.map_batches(read_shards, fn_kwargs={"columns": ["id", "label"]}, batch_size=1,
                            batch_format="pyarrow").materialize()
    line = corruption(err.value)
    assert line and line.startswith(f"artifact things/{art.key}: data/part-00000.parquet is corrupt"), line


@pytest.fixture
def one_mib_disk(tmp_path):
    from tests.outage import small_disk

    with small_disk(tmp_path / "small-disk", "1m") as folder:
        yield folder


def test_a_full_scratch_folder_is_one_line_that_names_it(tmp_path, one_mib_disk):
    """Chaos case 7 at its core: a build whose local files do not fit in scratch fails with one line naming the
    folder, commits nothing and leaves no half-written build folder behind."""
    from synthray.core.registry import SynthrayError

    art = Artifact(Store(storage.normalize(tmp_path / "runs"), scratch=str(one_mib_disk)), "things", {"big": True})
    with pytest.raises(SynthrayError) as err:
        art.build(lambda out: (out.local / "weights.bin").write_bytes(b"\0" * (3 * 2**20)) and None)
    line = str(err.value)
    assert "\n" not in line and f"scratch folder {one_mib_disk} is full" in line
    assert not art.is_complete() and not storage.list_files(art.uri)
    assert not list((one_mib_disk / "build").iterdir())


def test_storage_down_past_the_retry_budget_is_one_line(monkeypatch):
    """An endpoint that stays unreachable: retried with backoff for SYNTHRAY_STORAGE_RETRY_S, then one line."""
    from synthray.core.retry import StorageUnavailable
    from tests.rig import S3_ENV, free_port

    monkeypatch.setenv("SYNTHRAY_STORAGE_RETRY_S", "2")
    for k, v in dict(S3_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}").items():
        monkeypatch.setenv(k, v)
    storage._cached_filesystem.cache_clear()
    try:
        with pytest.raises(StorageUnavailable) as err:
            storage.read_bytes("s3://synthray-test/runs/x.json")
    finally:
        storage._cached_filesystem.cache_clear()
    line = str(err.value)
    assert "\n" not in line and line.startswith("storage unreachable for") and "SYNTHRAY_STORAGE_RETRY_S" in line


def test_exporting_a_corrupt_dataset_is_one_line_and_writes_nothing(tmp_path):
    from tests.rig import run_cli

    art = _dataset(storage.normalize(tmp_path / "runs"), [])
    _flip_byte(art.file("data", "part-00000.parquet"))
    done = run_cli("export", art.uri, str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert f"synthray: error: artifact things/{art.key}: data/part-00000.parquet is corrupt" in done.stderr
    assert not (tmp_path / "out").exists()
