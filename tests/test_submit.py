"""Sweeps from a laptop: `synthray submit` to a local token-auth head, followed to its results."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TINY
from tests.rig import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_bad_cluster_input_is_one_line(tmp_path):
    done = run_cli("jobs", "--address", "http://127.0.0.1:9", cwd=tmp_path, env={"RAY_ADDRESS": ""})
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "cannot reach" in done.stderr
    done = run_cli("submit", "storage=relative/runs", "--address", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 2 and "relative to the laptop" in done.stderr


@pytest.mark.slow
def test_submit_with_the_token_follows_the_smoke_sweep_to_its_results(token_head, tmp_path):
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

    # A second shell submits the smoke experiment (shrunk to test size: its real-holdout trial) from the project
    # folder and follows it to the end.
    storage = tmp_path / "runs"
    done = run_cli("submit", f"storage={storage}", *TINY, "grid.generator=[real-holdout]", "--address", url, "--follow",
                   cwd=ROOT, env=with_token)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    job = re.search(r"submitted (raysubmit_\w+)", done.stdout).group(1)
    assert f"job {job}: SUCCEEDED" in done.stdout
    listed = run_cli("jobs", "--address", url, cwd=tmp_path, env=with_token)
    assert job in listed.stdout and "SUCCEEDED" in listed.stdout
    results = run_cli("results", job, "--address", url, cwd=tmp_path, env=with_token)
    assert results.returncode == 0, results.stderr[-2000:]
    assert "real-holdout" in results.stdout and "done" in results.stdout and f"results: {storage}/sweeps/" in results.stdout
    by_name = run_cli("results", "smoke", f"storage={storage}", cwd=tmp_path)
    assert by_name.returncode == 0 and "real-holdout" in by_name.stdout
