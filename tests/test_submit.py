"""Sweeps from a laptop: `synthray submit` to a local token-auth head, followed to its results."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from synthray.core.artifacts import MANIFEST
from tests.conftest import TINY
from tests.rig import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bad_cluster_input_is_one_line(tmp_path):
    done = run_cli("jobs", "--address", "http://127.0.0.1:9", cwd=tmp_path, env={"RAY_ADDRESS": ""})
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "cannot reach" in done.stderr
    done = run_cli("submit", "storage=relative/runs", "--address", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 2 and "relative to the laptop" in done.stderr
    # Secrets: none is sent unless named; a named one must be set here and must not expire; the old flag is refused.
    cases = [
        (["submit", "--send-secrets", "NOPE_NOT_SET", "storage=s3://bucket/runs"], {}, "--send-secrets NOPE_NOT_SET: it is not set here"),
        (["submit", "--send-secrets", "AWS_SESSION_TOKEN", "storage=s3://bucket/runs"], {"AWS_SESSION_TOKEN": "x"},
         "--send-secrets AWS_SESSION_TOKEN: it expires within hours"),
        (["submit", "--with-credentials", "storage=s3://bucket/runs"], {}, "--with-credentials is gone"),
        # The token goes only over https or to a loopback or private address, unless --insecure.
        (["jobs"], {"RAY_AUTH_TOKEN": "0" * 64}, "refusing to send the cluster token over plain http to http://ray-head.example.com:8265"),
    ]
    for args, env, needle in cases:
        done = run_cli(*args, "--address", "http://ray-head.example.com:8265" if args == ["jobs"] else "http://127.0.0.1:9",
                       cwd=tmp_path, env={"RAY_ADDRESS": "", **env})
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, done.stderr)
    done = run_cli("submit", "--send-secrets", "MY_TOKEN", "storage=s3://bucket/runs", "--address", "http://127.0.0.1:9",
                   cwd=tmp_path, env={"RAY_ADDRESS": "", "MY_TOKEN": "v"})
    warning, error = done.stderr.strip().splitlines()
    assert "warning: sending MY_TOKEN with the job: Ray keeps a job's environment in plain text" in warning
    assert done.returncode == 2 and "cannot reach" in error and "v" not in warning.split("MY_TOKEN")[0]


@pytest.mark.slow
def test_submit_with_the_token_survives_a_killed_driver_through_resume_submit(token_head, tmp_path):
    url, token = token_head["url"], token_head["token"]
    # The job API refuses a request without the token, and synthray says so in one line.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/jobs/", timeout=10)
    assert refused.value.code == 401
    no_token = {"RAY_AUTH_TOKEN": "", "HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    for env in (no_token, dict(no_token, RAY_AUTH_TOKEN="0" * 64)):
        done = run_cli("jobs", "--address", url, cwd=tmp_path, env=env)
        assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "refused the token" in done.stderr, done.stderr
    with_token = {"RAY_AUTH_TOKEN": token}
    done = run_cli("logs", "raysubmit_no_such_job", "--address", url, cwd=tmp_path, env=with_token)
    assert done.returncode == 2 and "no job 'raysubmit_no_such_job'" in done.stderr

    # A second shell submits the smoke experiment (shrunk to test size: 2 trials, one at a time) from the project
    # folder. Once the first trial is done, the job's driver is SIGKILLed on the head (chaos case 3, on a cluster).
    storage = tmp_path / "runs"
    args = [f"storage={storage}", *TINY, "grid.generator=[real-holdout,tiny-sd]", "tune.max_concurrent_trials=1", "lease_s=5"]
    done = run_cli("submit", *args, "--address", url, cwd=ROOT, env=with_token)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    job = re.search(r"submitted (raysubmit_\w+)", done.stdout).group(1)
    deadline = time.time() + 400
    while not list(storage.glob(f"results/*/{MANIFEST}")) and time.time() < deadline:
        time.sleep(0.5)
    first = list(storage.glob(f"results/*/{MANIFEST}"))
    assert len(first) == 1, run_cli("logs", job, "--address", url, cwd=tmp_path, env=with_token).stdout[-3000:]
    driver = [p for p in psutil.process_iter(["cmdline"])
              if "synthray" in (p.info["cmdline"] or []) and f"storage={storage}" in (p.info["cmdline"] or [])]
    assert len(driver) == 1, driver
    driver[0].kill()
    killed_at = time.time()
    while time.time() < deadline and "FAILED" not in run_cli("jobs", "--address", url, cwd=tmp_path, env=with_token).stdout:
        time.sleep(1)
    mtime = first[0].stat().st_mtime_ns

    resumed = run_cli("resume", "--submit", "--follow", f"storage={storage}", "--address", url, cwd=ROOT, env=with_token)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    again = re.search(r"submitted (raysubmit_\w+)", resumed.stdout).group(1)
    assert f"job {again}: SUCCEEDED" in resumed.stdout and "resuming sweep" in resumed.stdout
    print(f"[figure] resume --submit finished {time.time() - killed_at:.0f} s after the driver was killed")
    assert first[0].stat().st_mtime_ns == mtime, "the finished trial was not redone"
    listed = run_cli("jobs", "--address", url, cwd=tmp_path, env=with_token)
    assert job in listed.stdout and "FAILED" in listed.stdout and "SUCCEEDED" in listed.stdout
    results = run_cli("results", again, "--address", url, cwd=tmp_path, env=with_token)
    assert results.returncode == 0, results.stderr[-2000:]
    assert "real-holdout" in results.stdout and "tiny-sd" in results.stdout and f"results: {storage}/sweeps/" in results.stdout
    assert results.stdout.count(" done") == 2 and "missing" not in results.stdout
    by_name = run_cli("results", "smoke", f"storage={storage}", cwd=tmp_path)
    assert by_name.returncode == 0 and "tiny-sd" in by_name.stdout


def test_the_jobs_working_dir_carries_the_project_and_no_environment_or_output(tmp_path, monkeypatch):
    """What `synthray submit` uploads: the project's sources and experiments, never .venv, run outputs or wheels."""
    from synthray.submit import stage_working_dir

    project = tmp_path / "project"
    for path in ("synthray/__init__.py", "experiments/mine.yaml", "pyproject.toml", ".venv/lib/site.py",
                 "synthray-runs/sweeps/x/config.yaml", "dist/cluster/synthray-0.1.0-py3-none-any.whl", ".whl/torch.whl",
                 "mlruns/0/meta.yaml", "wandb/offline-run/run.wandb", "synthray/__pycache__/x.pyc", ".git/HEAD"):
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text("x")
    monkeypatch.chdir(project)
    staged, args = stage_working_dir(["tracking=wandb"])
    try:
        found = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    finally:
        shutil.rmtree(staged.parent)
    assert found == {"synthray/__init__.py", "experiments/mine.yaml", "pyproject.toml"}, found
    assert args == ["tracking=wandb"]
