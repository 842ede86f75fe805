import multiprocessing as mp
import time

from synthray.artifacts import Artifact, seed_hash, spec_key


def test_keys_ignore_dict_order_and_seeds_are_stable():
    assert spec_key({"a": 1, "b": [1, 2]}) == spec_key({"b": [1, 2], "a": 1})
    assert spec_key({"a": 1}) != spec_key({"a": 2})
    assert seed_hash("g", "p", 0) == seed_hash("g", "p", 0) != seed_hash("g", "p", 1)
    assert 0 <= seed_hash("x") < 2**63


def _build(storage, log):
    def make(workdir):
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # long enough for the other process to be waiting on the lock
        (workdir / "out.txt").write_text("ok")
        return {"n": 1}

    Artifact(storage, "things", {"x": 1}).build(make)


def test_concurrent_builders_build_once(tmp_path):
    log = tmp_path / "log.txt"
    procs = [mp.get_context("spawn").Process(target=_build, args=(tmp_path / "s", log)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert log.read_text().count("built") == 1
    art = Artifact(tmp_path / "s", "things", {"x": 1})
    assert art.is_complete() and art.meta() == {"n": 1} and (art.path / "out.txt").read_text() == "ok"
    assert not art.partial.exists()


def test_failed_build_leaves_no_complete_artifact_and_resumes(tmp_path):
    art = Artifact(tmp_path, "things", {"x": 2})

    def crash(workdir):
        (workdir / "part-0").write_text("done")
        raise RuntimeError("stopped")

    try:
        art.build(crash)
    except RuntimeError:
        pass
    assert not art.is_complete() and (art.partial / "part-0").exists()
    seen = []
    art.build(lambda w: seen.extend(sorted(p.name for p in w.iterdir())))
    assert seen == ["part-0"] and art.is_complete()
