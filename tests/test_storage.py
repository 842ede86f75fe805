"""Storage URIs, the manifest commit protocol and bad storage input, on a real local S3 server (moto)."""

from __future__ import annotations

import json
import os

import pytest

from synthray.core import storage
from synthray.core.artifacts import MANIFEST, Artifact, Store
from synthray.core.leases import LeaseTable
from synthray.core.registry import SynthrayError
from tests.rig import BUCKET, bucket_objects, free_port


def test_normalize_keeps_uris_and_refuses_unknown_schemes(tmp_path):
    assert storage.normalize("s3://bucket/a/b/") == "s3://bucket/a/b"
    assert storage.normalize("gs://bucket") == "gs://bucket"
    assert storage.normalize(f"file://{tmp_path}/x") == str(tmp_path / "x")
    assert storage.normalize(str(tmp_path / "y")) == str(tmp_path / "y")
    with pytest.raises(SynthrayError, match=r"unknown URI scheme 'hdfs://'"):
        storage.normalize("hdfs://namenode/x")
    with pytest.raises(SynthrayError, match="two slashes"):
        storage.normalize("s3:/bucket/x")  # what Path() made of s3://bucket/x
    with pytest.raises(SynthrayError, match="too short"):
        storage.normalize("s3://ab/x")


def test_files_on_s3_round_trip(s3_server):
    root = f"s3://{BUCKET}/roundtrip"
    entry = storage.write_bytes(storage.join(root, "a/b.bin"), b"hello")
    assert entry == storage.entry(b"hello") and entry["size"] == 5
    assert storage.read_bytes(f"{root}/a/b.bin") == b"hello"
    assert storage.list_files(root) == {"a/b.bin": 5}
    assert storage.list_dirs(root) == ["a"]
    storage.delete(root)
    assert not storage.exists(f"{root}/a/b.bin") and storage.list_files(root) == {}


def _crash(out):
    storage.write_bytes(f"{out.uri}/data/part-00000.parquet", b"shard 0")
    raise RuntimeError("killed mid-artifact")


def test_artifact_is_complete_only_once_its_manifest_is_written(s3_server, tmp_path):
    store = Store(f"s3://{BUCKET}/artifacts", scratch=str(tmp_path / "scratch"))
    art = Artifact(store, "things", {"x": 1})
    with pytest.raises(RuntimeError):
        art.build(_crash)
    assert storage.list_files(art.uri) == {"data/part-00000.parquet": 7}  # the shard is there ...
    assert not art.is_complete()  # ... but without a manifest nothing reads it as complete
    seen = []

    def resume(out):
        seen.extend(storage.list_files(out.uri))  # the next builder finds the earlier shard and keeps it
        storage.write_bytes(f"{out.uri}/data/part-00001.parquet", b"shard 1")
        (out.local / "model.pt").write_bytes(b"weights")  # local files are uploaded before the manifest
        return {"rows": 2}

    art.build(resume)
    assert seen == ["data/part-00000.parquet"] and art.is_complete() and art.meta() == {"rows": 2}
    files = art.manifest()["files"]
    assert set(files) == {"data/part-00000.parquet", "data/part-00001.parquet", "model.pt", "spec.json", "meta.json"}
    assert files["data/part-00000.parquet"] == storage.entry(b"shard 0")
    assert art.verify() == []
    objects = bucket_objects(s3_server, prefix=f"artifacts/things/{art.key}/")
    assert json.loads(objects[f"artifacts/things/{art.key}/{MANIFEST}"])["key"] == art.key
    storage.write_bytes(art.file("model.pt"), b"tampered")
    assert art.verify() == ["model.pt"]
    assert not list((tmp_path / "scratch" / "build").iterdir())  # the local build folder is cleaned up


def test_lease_table_grants_one_holder_and_lapses_without_heartbeats():
    table = LeaseTable()
    assert table.acquire("k", "a", ttl=60) and not table.acquire("k", "b", ttl=60)
    assert table.acquire("k", "a", ttl=60)  # renewal by the holder
    table.release("k", "a")
    assert table.acquire("k", "b", ttl=0.05) and table.holder("k") == "b"
    import time

    time.sleep(0.1)  # b died: no heartbeat
    assert table.holder("k") is None and table.acquire("k", "c", ttl=60)


def _run_main(args, capsys):
    from synthray.cli import main

    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("uri, message", [
    ("ftp://host/runs", "unknown URI scheme 'ftp://'"),
    (f"s3://no-such-bucket-{os.getpid()}/runs", "does not exist"),
])
@pytest.mark.slow
def test_bad_storage_is_one_line_and_writes_nothing(s3_server, tmp_path, monkeypatch, capsys, uri, message):
    monkeypatch.chdir(tmp_path)
    before = bucket_objects(s3_server)
    code, err = _run_main(["run", f"storage={uri}"], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == [] and bucket_objects(s3_server) == before


def test_unreachable_endpoint_and_missing_credentials_fail_before_ray(tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    storage._cached_filesystem.cache_clear()
    was_up = ray.is_initialized()
    code, err = _run_main(["run", "storage=s3://some-bucket/runs"], capsys)
    assert code == 2 and len(err) == 1 and "cannot reach" in err[0], err
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.aws either
    code, err = _run_main(["run", "storage=s3://some-bucket/runs"], capsys)
    assert code == 2 and len(err) == 1 and "no S3 credentials" in err[0], err
    assert list(tmp_path.iterdir()) == [] and ray.is_initialized() == was_up
    storage._cached_filesystem.cache_clear()


def test_threaded_copy_into_retrying_s3_does_not_deadlock(s3_server, tmp_path):
    """Ray Train and Tune upload with pyarrow's threaded `copy_files`; through the retrying wrapper every upload runs
    on pyarrow's IO pool, so the S3 filesystem must not queue its own writes on that pool (it deadlocked)."""
    import pyarrow.fs as pafs

    for i in range(64):
        (tmp_path / f"f{i}.bin").write_bytes(bytes([i]) * 20000)
    fs, path = storage.resolve(f"s3://synthray-test/copy-{tmp_path.name}")
    pafs.copy_files(str(tmp_path), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs, use_threads=True)
    assert len(storage.list_files(f"s3://synthray-test/copy-{tmp_path.name}")) == 64


@pytest.mark.parametrize("text, refused", [
    ("When getting information for bucket 'b': AWS Error ACCESS_DENIED during HeadBucket operation: No response body.",
     True),
    ("AWS Error UNKNOWN (HTTP status 403) during HeadBucket operation", True),
    ("When getting information for bucket 'some-bucket': AWS Error NETWORK_CONNECTION during HeadBucket operation: "
     "curlCode: 7, Could not connect to server; Details: Failed to connect to 127.0.0.1:40317 after 0 ms", False),
    ("AWS Error NETWORK_CONNECTION: Could not resolve host: nowhere.invalid", False),
])
def test_a_port_number_is_not_read_as_a_refusal(text, refused):
    assert storage.credentials_refused(text) is refused
