import time
from pathlib import Path

import pytest

from synthray.core import storage
from synthray.core.artifacts import MANIFEST, Artifact, Store, seed_hash, spec_key


def test_keys_ignore_dict_order_and_seeds_are_stable():
    assert spec_key({"a": 1, "b": [1, 2]}) == spec_key({"b": [1, 2], "a": 1})
    assert spec_key({"a": 1}) != spec_key({"a": 2})
    assert seed_hash("g", "p", 0) == seed_hash("g", "p", 0) != seed_hash("g", "p", 1)
    assert 0 <= seed_hash("x") < 2**63


def test_key_and_ref_do_not_depend_on_the_storage_root(tmp_path):
    a = Artifact(Store(storage.normalize(tmp_path / "a")), "things", {"x": 1})
    b = Artifact(Store("s3://some-bucket/prefix"), "things", {"x": 1})
    assert a.key == b.key and a.ref == b.ref == f"things/{a.key}"
    assert a.uri == str(tmp_path / "a" / "things" / a.key) and b.uri == f"s3://some-bucket/prefix/things/{a.key}"
    assert b.file("data", "part-0.parquet") == f"{b.uri}/data/part-0.parquet"


@pytest.mark.slow
def test_concurrent_builders_build_once(ray_cluster, tmp_path):
    """Two builders on the cluster (Ray tasks, as trials are) race for one key: the lease lets one build, the
    other waits for the manifest and reuses the artifact."""
    import ray

    from synthray.core.leases import lease_table

    # Defined here so that Ray ships it by value: workers cannot import test modules.
    def _build_in_ray_task(root: str, log: str, ready: str, me: int) -> bool:
        """Build the shared artifact from inside a Ray task; True when this task's `make` ran."""
        ran = []

        def make(out):
            ran.append(True)
            with open(log, "a") as f:
                f.write("built\n")
            time.sleep(3.0)  # long enough for the other task to find the lease taken and wait for the manifest
            (out.local / "out.txt").write_text("ok")
            return {"n": 1}

        # Rendezvous, so both tasks ask for the lease at about the same time (workers start at different speeds).
        Path(ready, str(me)).touch()
        deadline = time.time() + 120
        while len(list(Path(ready).iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.05)
        art = Artifact(Store(root, lease_s=30), "things", {"x": 1}).build(make)
        assert art.is_complete()
        return bool(ran)

    log, ready = tmp_path / "log.txt", tmp_path / "ready"
    ready.mkdir()
    root = storage.normalize(tmp_path / "s")
    task = ray.remote(num_cpus=0)(_build_in_ray_task)
    built = ray.get([task.remote(root, str(log), str(ready), i) for i in range(2)], timeout=180)
    assert sorted(built) == [False, True], "exactly one builder ran make"
    assert log.read_text().count("built") == 1
    art = Artifact(Store(root), "things", {"x": 1})
    assert art.is_complete() and art.meta() == {"n": 1} and storage.read_text(art.file("out.txt")) == "ok"
    assert set(storage.list_files(art.uri)) == {"out.txt", "spec.json", "meta.json", MANIFEST}  # nothing stray
    assert set(art.manifest()["files"]) == {"out.txt", "spec.json", "meta.json"} and art.verify() == []
    assert ray.get(lease_table().holder.remote(art.uri)) is None, "the lease was released"


def test_failed_build_leaves_no_complete_artifact_and_resumes(tmp_path):
    """A crashed `make` leaves the files it wrote but no manifest: not complete. The next build finds them under
    `out.uri` (as a stage finds its finished shards) and commits them with its own."""
    scratch = tmp_path / "scratch"
    art = Artifact(Store(storage.normalize(tmp_path / "s"), scratch=str(scratch)), "things", {"x": 2})

    def crash(out):
        storage.write_bytes(storage.join(out.uri, "part-0"), b"done")  # written straight to the artifact
        (out.local / "unfinished").write_text("lost")  # local files are uploaded only when make returns
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        art.build(crash)
    assert not art.is_complete() and storage.list_files(art.uri) == {"part-0": 4}
    assert not list((art.store.scratch_dir() / "build").iterdir()), "the local build folder is removed"

    seen = []

    def resume(out):
        seen.extend(storage.list_files(out.uri))
        (out.local / "part-1").write_text("new")
        return {"resumed": True}

    assert art.build(resume) is art
    assert seen == ["part-0"] and art.is_complete() and art.meta() == {"resumed": True}
    assert set(art.manifest()["files"]) == {"part-0", "part-1", "spec.json", "meta.json"} and art.verify() == []
    assert storage.read_text(art.file("part-0")) == "done"

    # A complete artifact is reused: make is not called again.
    assert art.build(lambda out: pytest.fail("rebuilt a complete artifact")) is art


def test_verify_names_a_changed_file(tmp_path):
    art = Artifact(Store(storage.normalize(tmp_path)), "things", {"x": 3})
    art.build(lambda out: (out.local / "a.txt").write_text("a") and None)
    assert art.verify() == []
    storage.write_bytes(art.file("a.txt"), b"b")
    assert art.verify() == ["a.txt"]
