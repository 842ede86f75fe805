"""The whole data flow under Ray Tune on the shared local cluster: a small sweep, a warm rerun, stop and resume."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from synthray.core import storage
from synthray.core.artifacts import MANIFEST
from synthray.report.page import write_report
from synthray.sweep.runner import find_sweep, read_results, run_sweep
from synthray.sweep.trial import RESULT_COLUMNS
from tests.browser import assert_renders
from tests.conftest import TINY, tiny_cfg
from tests.rig import free_port, run_cli

GRID = ["grid.generator=[real-holdout,tiny-sd]", "grid.probe=[rgb,highpass]", "recipe.epochs=8", "recipe.lr=3e-3",
        "recipe.batch_size=16",
        "prompts.n_per_class=20", "tune.max_concurrent_trials=2"]


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_sweep_end_to_end_then_warm_rerun(ray_cluster, tmp_path):
    # 2 generators x rgb: the probes have their own sweep test below, and the cluster tests rerun and resume on S3.
    grid = [*GRID, "grid.probe=[rgb]"]
    cfg = tiny_cfg(tmp_path, *grid)
    console = io.StringIO()  # not a terminal: plain lines at a bounded rate
    table, path = run_sweep(cfg, stream=console)
    assert isinstance(path, str) and Path(path).is_file() and Path(path).parents[1] == tmp_path / "sweeps"
    assert find_sweep(str(tmp_path), None) == storage.parent(path)
    stored = read_results(path)
    pd.testing.assert_frame_equal(stored, pd.read_parquet(path))  # plain pandas reads it too
    assert len(stored) == 2 and set(RESULT_COLUMNS) - {"released"} <= set(stored.columns)
    assert (stored["status"] == "done").all()
    rgb = stored[stored["probe"] == "rgb"].set_index("generator")
    # The real-holdout control learns from its "synthetic" data; random-weight tiny-sd images teach nothing.
    assert rgb.loc["real-holdout", "synth_to_real_acc"] > rgb.loc["tiny-sd", "synth_to_real_acc"] + 0.2
    assert rgb.loc["real-holdout", "density"] > 0.5 > rgb.loc["tiny-sd", "density"]
    for col in ("synth_to_real_acc", "real_to_synth_acc", "real_to_real_acc", "coverage"):
        assert stored[col].between(0, 1).all()
    # One dataset per generator and one real-trained model per probe, shared by the trials that need them.
    assert len(list((tmp_path / "synthetic").glob(f"*/{MANIFEST}"))) == 2
    real_models = stored.groupby("probe")["real_model"].nunique()
    assert (real_models == 1).all()

    # The smoke report (`synthray report`, the newest sweep), rendered by a real browser.
    check = assert_renders(write_report([], tmp_path / "report", str(tmp_path)), tmp_path / "report.png", min_images=3)
    print(f"[figure] smoke report: {check['images']} figures, no broken image, no console error")

    # The console: each trial's start, stages and end, read from the progress board; Tune's tables and the
    # workers' lines are in the sweep's log instead.
    shown = console.getvalue().splitlines()
    labels = ["real-holdout/classname/tiny-cnn/rgb", "tiny-sd/classname/tiny-cnn/rgb"]
    for label in labels:
        assert f"[synthray] {label}: running" in shown and any(line.startswith(f"[synthray] {label}: done: synth→real") for line in shown)
    assert any(re.fullmatch(r"\[synthray\] tiny-sd/classname/tiny-cnn/rgb: generate tiny-sd, classname, \d+ images", line)
               for line in shown)
    assert any(": train tiny-cnn on tiny-sd/classname/rgb" in line for line in shown)
    assert len(shown) < 40 and not any("Trial status" in line or "pid=" in line for line in shown), shown
    log = (Path(path).parent / "logs" / "sweep.log").read_text()
    assert "Trial status" in log and "tune_trial pid=" in log and "built synthetic" in log
    print(f"[figure] smoke sweep (test size): {len(shown)} console lines, {len(log.splitlines())} in its log")

    # A warm rerun on a (pseudo) terminal: the live view.
    before = _mtimes(tmp_path / "synthetic") | _mtimes(tmp_path / "models")
    with _terminal() as (stream, screen):
        again, _ = run_sweep(tiny_cfg(tmp_path, *grid), stream=stream)
    assert _mtimes(tmp_path / "synthetic") | _mtimes(tmp_path / "models") == before, "a warm rerun rebuilds nothing"
    pd.testing.assert_frame_equal(again.reset_index(drop=True), table.reset_index(drop=True))
    drawn = screen()
    assert "\x1b[" in drawn and "0 running · 2 done · 0 pending · 0 failed" in drawn, drawn[-2000:]
    assert all(label in drawn for label in labels) and "Trial status" not in drawn
    assert "nothing to run, no cluster needed" in drawn

    # Every result reused: the sweep is read from storage and needs no cluster at all. From a fresh process whose
    # ray.address leads nowhere (trying to connect would fail the run), as `synthray run` from a laptop.
    start = time.perf_counter()
    done = run_cli("run", f"storage={tmp_path}", *TINY, *grid, f"ray.address=127.0.0.1:{free_port()}", cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plan: 2 trials, 2 already complete" in done.stdout and "nothing to run" in done.stdout
    assert all(f"[synthray] {label}: done: synth→real" in done.stdout for label in labels), done.stdout
    warm_dir = find_sweep(str(tmp_path), None)
    assert not storage.exists(storage.join(warm_dir, "tuner.pkl")) and storage.exists(storage.join(warm_dir, "logs", "sweep.log"))
    pd.testing.assert_frame_equal(read_results(storage.join(warm_dir, "results.parquet")), stored)
    resumed = run_cli("resume", f"storage={tmp_path}", cwd=tmp_path)  # its config.yaml names the same dead address
    assert resumed.returncode == 0 and "results:" in resumed.stdout, resumed.stderr[-3000:]
    print(f"[figure] warm rerun from a fresh process, every result reused: {seconds:.1f} s")


@contextlib.contextmanager
def _terminal():
    """A pseudo-terminal for the console, and a function that returns all that was drawn on it."""
    import pty

    main, side = pty.openpty()
    os.system(f"stty cols 150 < {os.ttyname(side)}")
    stream = os.fdopen(side, "w", encoding="utf-8")
    chunks = []

    def drain():  # a pty's buffer is small: read as the view redraws, or the writer blocks
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield stream, lambda: b"".join(chunks).decode("utf-8", "replace")
    finally:
        stream.flush()
        time.sleep(0.2)
        stream.close()
        reader.join(timeout=5)
        os.close(main)


@pytest.mark.slow
def test_killed_driver_then_resume_redoes_nothing_and_rebuilds_a_corrupt_shard(ray_cluster, tmp_path):
    """Chaos cases 3 and 5. `synthray run` is killed with SIGKILL once its first trial is done and its second is
    under way; a byte of a stored shard of the real data is flipped; `synthray resume` from another process
    finishes the sweep. The finished trial and its artifacts are not redone, and the flipped shard is found by its
    checksum, removed and rebuilt (the trial retries once), so the table is complete and every artifact verifies."""
    from synthray.core.artifacts import Artifact, Store

    env = dict(os.environ, RAY_ADDRESS=ray_cluster)
    # lease_s: the claims of the killed trial lapse after 5 s instead of 2 minutes, so resume need not wait.
    args = [f"storage={tmp_path}", *TINY, "grid.generator=[real-holdout,tiny-sd]", "tune.max_concurrent_trials=1", "recipe.epochs=3",
            "lease_s=5"]
    run = subprocess.Popen([sys.executable, "-m", "synthray", "run", *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list(tmp_path.glob(f"results/*/{MANIFEST}")) and time.time() < deadline and run.poll() is None:
        time.sleep(0.5)  # kill once the first trial is complete and the second is under way
    assert run.poll() is None, run.stdout.read()
    first = list(tmp_path.glob(f"results/*/{MANIFEST}"))
    assert len(first) == 1
    killed_at = time.time()
    run.kill()
    run.communicate(timeout=60)
    done_before = {p: p.stat().st_mtime_ns for p in tmp_path.glob(f"*/*/{MANIFEST}")}

    shard = sorted(tmp_path.glob("real/*/test/*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))

    resumed = subprocess.run([sys.executable, "-m", "synthray", "resume", f"storage={tmp_path}"], env=env,
                             capture_output=True, text=True, timeout=600)
    recovered_s = time.time() - killed_at
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "resuming sweep" in out
    # The trials' own lines are in the sweep's log, which the resumed run appended to.
    log = (Path(find_sweep(str(tmp_path), None)) / "logs" / "sweep.log").read_text()
    assert log.count("--- synthray ") == 2 and "tune_trial pid=" in log
    corrupt = [line for line in log.splitlines() if "is corrupt" in line]
    assert corrupt and f"{shard.parent.name}/{shard.name} is corrupt" in corrupt[0], log[-3000:]
    table = read_results(storage.join(find_sweep(str(tmp_path), None), "results.parquet"))
    assert (table["status"] == "done").all() and len(table) == 2
    assert first[0].stat().st_mtime_ns == done_before[first[0]], "the finished trial was not redone"
    real = shard.parents[1]
    redone = [p for p, t in done_before.items() if p.stat().st_mtime_ns != t and p.parent != real]
    assert not redone, f"artifacts finished before the kill were rebuilt: {redone}"
    for manifest in tmp_path.glob(f"*/*/{MANIFEST}"):
        kind, key = manifest.parent.parent.name, manifest.parent.name
        art = Artifact(Store(str(tmp_path)), kind, json.loads((manifest.parent / "spec.json").read_text()))
        assert art.key == key and art.verify() == [], manifest
    print(f"[figure] driver SIGKILL + corrupt shard: resume finished in {recovered_s:.0f} s after the kill")


@pytest.mark.slow
def test_every_probe_and_encoder_runs_through_the_sweep(ray_cluster, tmp_path):
    """`experiment=probes` shrunk: depth (tiny Depth-Anything on an actor pool) and texture (BagNet-9
    on random patches), with pixels, CLIP, DINOv2 and Inception features and CLIPScore. rgb and highpass go
    through the sweep in the end-to-end test above; lowpass shares their view stage."""
    from synthray.config import compose
    from synthray.core.images import decode_array, read_images

    (tmp_path / "geneval.csv").write_text("generator,geneval\nreal-holdout,0.5\n")
    cfg = compose(["experiment=probes", f"storage={tmp_path}", *TINY, "grid.generator=[real-holdout]",
                   "grid.probe=[depth,texture]", "recipe.epochs=1", f"metrics.geneval={tmp_path / 'geneval.csv'}"])
    table, _ = run_sweep(cfg)
    assert (table["status"] == "done").all() and sorted(table["probe"]) == ["depth", "texture"]
    for encoder in ("pixels", "clip", "dinov2", "inception"):
        for metric in ("precision", "recall", "density", "coverage", "density_macro"):
            assert table[f"{encoder}_{metric}"].between(0, 10).all(), (encoder, metric)
        assert (table[f"{encoder}_fd"] >= 0).all()
    assert table["clipscore"].between(0, 100).all() and (table["geneval"] == 0.5).all()
    views = {p.parent: json.loads(p.read_text())["probe"] for p in (tmp_path / "views").glob("*/spec.json")}
    assert set(views.values()) == {"depth"}, "texture is an identity probe: its trials read the source, no view"
    depth = [folder / "data" for folder, probe in views.items() if probe == "depth"]
    image = decode_array(read_images(str(depth[0]))["image"][0])
    assert image.shape == (32, 32, 3) and (image[..., 0] == image[..., 1]).all() and image.max() == 255
    texture_models = [p for p in (tmp_path / "models").glob("*/spec.json") if '"crop_at": "random"' in p.read_text()]
    assert len(texture_models) == 2 and all('"bagnet9"' in p.read_text() for p in texture_models)
    # The probes experiment's report (`synthray report`), rendered by a real browser.
    report = write_report([], tmp_path / "report", str(tmp_path))
    text = report.read_text()
    # A control alone: the paper's figures leave controls out (each says so, naming what it needs); the per-class
    # heatmap draws.
    assert "Not drawn" in text, "a control alone draws none of the paper's figures"
    assert_renders(report, tmp_path / "report.png", min_images=1)


def test_plan_trials_names_every_artifact_and_builds_nothing(tmp_path):
    """A trial is planned once from keys alone: datasets shared by the trials of a generator, one result each."""
    from synthray.sweep.plan import trials
    from synthray.sweep.runner import plan_summary
    from synthray.sweep.trial import plan_trial, plan_trials

    cfg = tiny_cfg(tmp_path, *GRID)
    planned = plan_trials(cfg)
    assert [t.point for t in planned] == trials(cfg) and len(planned) == 4
    assert all(t.num_classes == 10 and t.probe.name == t.point["probe"] for t in planned)
    assert len({t.real.key for t in planned}) == 1 and len({t.result.key for t in planned}) == 4
    by_generator = {}
    for t in planned:
        by_generator.setdefault(t.point["generator"], []).append(t)
    for generator, group in by_generator.items():
        assert len({t.synthetic.key for t in group}) == 1, f"{generator}: one dataset for every probe and arch"
        assert all(t.table is group[0].table for t in group), "the prompt table is built once per generator and style"
    assert len({t.synthetic.key for t in planned}) == 2
    for t in planned:  # planning one point alone names the same artifacts
        one = plan_trial(cfg, t.point)
        assert (one.real.key, one.synthetic.key, one.result.key) == (t.real.key, t.synthetic.key, t.result.key)
    assert plan_summary(cfg)[0] == "plan: 4 trials, 0 already complete (reused), 4 to run"
    assert not any(tmp_path.iterdir()), "planning writes nothing"


@pytest.mark.slow
def test_any_config_key_is_a_grid_axis_with_its_own_results_column_and_trials_are_tracked(ray_cluster, tmp_path, monkeypatch):
    """Guidance and sampler become sweepable: one trial per value, one dataset per value, a column per axis. The
    same sweep logs to MLflow and W&B (test_tracking.py's checks), as one sweep is a minute of the suite."""
    from synthray.sweep.runner import format_table
    from tests.test_tracking import assert_tracked, track_offline

    cfg = tiny_cfg(tmp_path / "runs", "grid.generator=[tiny-sd]", "grid.axes.generation.guidance=[1.5,4]",
                   "grid.axes.generation.scheduler=[DDIMScheduler]", *track_offline(tmp_path, monkeypatch))
    table, path = run_sweep(cfg)
    assert_tracked(tmp_path, table, storage.parent(path), epochs=cfg.recipe.epochs)
    tmp_path = tmp_path / "runs"
    stored = read_results(path)
    assert list(stored.columns[:6]) == ["generator", "prompt_style", "arch", "probe", "generation.guidance", "generation.scheduler"]
    assert sorted(stored["generation.guidance"]) == [1.5, 4.0] and (stored["status"] == "done").all()
    assert (stored["generation.scheduler"] == "DDIMScheduler").all()
    datasets = {k: json.loads((tmp_path / "synthetic" / k / "meta.json").read_text()) for k in stored["dataset"]}
    assert len(datasets) == 2, "each guidance value has its own dataset"
    assert len({m["digest"] for m in datasets.values()}) == 2, "and its own images"
    specs = [json.loads((tmp_path / "synthetic" / k / "spec.json").read_text())["params"] for k in stored["dataset"]]
    assert sorted(s["guidance"] for s in specs) == [1.5, 4.0] and {s["scheduler"] for s in specs} == {"DDIMScheduler"}
    assert stored["real_model"].nunique() == 1, "the real model does not depend on the generation axes"
    shown = format_table(stored).splitlines()
    assert "generation.guidance" in shown[0] and "generation.scheduler" in shown[0]
