"""Sweeps from a laptop: submit, list, follow, stop and fetch results of Ray Jobs on a remote cluster.

The laptop needs no GPU and no Ray cluster of its own: it talks to the head's job API (`--address`, else
`$RAY_ADDRESS`; through `ray dashboard cluster.yaml`, a port-forward to the head's 127.0.0.1:8265). Token auth
is Ray's own (RAY_AUTH_MODE=token): the token comes from `$RAY_AUTH_TOKEN`, `$RAY_AUTH_TOKEN_PATH` or Ray's token
file `~/.ray/auth_token`, and is sent only over https or to a loopback or private address, unless `--insecure`.

A job packages the project's working dir (where `synthray submit` runs) with `experiments/` and any experiment file
named on the command line, and runs `python -m synthray run ...` on the head. It carries no secret: Ray keeps a
job's environment in plain text in its job table and in every node's runtime_env_agent.log, so the nodes read
secrets from the cloud's secret store instead (`synthray.core.secrets`). `--send-secrets NAME...` sends named ones
anyway, with a warning.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from synthray.core.registry import SynthrayError

# Credentials that expire within hours: a sweep runs for days, so the nodes' own roles read the bucket instead.
EXPIRING = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
# Never uploaded with the working dir: environments, run outputs (local trackers' too), caches, version control and
# built wheels (the nodes' own synthray comes from dist/cluster through the cluster file, not from the job).
EXCLUDES = [".git", ".venv", "venv", ".whl", "*.whl", "synthray-runs", "mlruns", "wandb", "__pycache__", "*.pyc",
            "*.egg-info", ".pytest_cache", ".ruff_cache", "build", "dist"]
RESULTS_LINE = re.compile(r"^results: (\S+)$", re.M)


def auth_token() -> str | None:
    """The cluster token: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token; None without one."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        return token.strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    return path.read_text().strip() if path.is_file() else None


def client(address: str | None, insecure: bool = False) -> Any:
    """A `JobSubmissionClient` for `address` (or $RAY_ADDRESS) with the token; one line when unreachable or refused,
    or when the token would go over plain http to a public address (unless `insecure`)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SynthrayError("no cluster address: pass --address http://127.0.0.1:8265 (after `ray dashboard cluster.yaml`) "
                            "or set RAY_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    token = auth_token()
    headers = None
    if token:
        from synthray.core.secrets import safe_to_send_secrets

        if not insecure and not safe_to_send_secrets(address):
            raise SynthrayError(f"refusing to send the cluster token over plain http to {address}: use https://, a "
                                "port-forward to 127.0.0.1 (`ray dashboard cluster.yaml`), or --insecure")
        # Ray's own token mechanism: its client adds the header when RAY_AUTH_MODE=token (read once, when Ray loads),
        # with the token it finds where `auth_token` looks, in the same order. A process that loaded Ray earlier (a
        # notebook, a test session) has fixed its mode and cached a token already: it sends this one explicitly.
        if "ray._raylet" in sys.modules:
            headers = {"Authorization": f"Bearer {token}"}
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    try:
        jobs = JobSubmissionClient(address, headers=headers)
        jobs.list_jobs()  # proves both the address and the token
    except ConnectionError:
        raise SynthrayError(f"cannot reach the Ray job API at {address}; is `ray dashboard cluster.yaml` running?") from None
    except Exception as err:  # noqa: BLE001 - Ray raises several types for a refused token
        if "401" in str(err) or "403" in str(err) or "uthentication" in type(err).__name__ + str(err):
            raise SynthrayError(f"the cluster at {address} refused the token; set RAY_AUTH_TOKEN to the output of "
                                "`ray get-auth-token` on the head") from None
        raise SynthrayError(f"cannot use the Ray job API at {address}: {str(err).splitlines()[0]}") from None
    return jobs


def _check_storage_for_cluster(overrides: Sequence[str]) -> None:
    """A submitted sweep's storage must be one the cluster reaches: a URI or an absolute path, never a relative one."""
    from synthray.config import compose

    given = [o.split("=", 1)[1] for o in overrides if o.startswith("storage=")]
    if not given:
        storage = compose(list(overrides)).storage
        if "://" in storage:
            return
        raise SynthrayError("synthray submit needs storage=<URI or absolute path the cluster reaches>, "
                            "e.g. storage=s3://my-bucket/synthray")
    if "://" not in given[-1] and not Path(given[-1]).expanduser().is_absolute():
        raise SynthrayError(f"storage={given[-1]} is relative to the laptop; give a URI or an absolute path the cluster reaches")


def stage_working_dir(overrides: Sequence[str]) -> tuple[Path, list[str]]:
    """Copy the working dir (less EXCLUDES) into a staging folder, with any experiment file named on the command line
    placed in its `experiments/`; returns (folder, overrides with `experiment=<file>` rewritten to the name)."""
    staging = Path(tempfile.mkdtemp(prefix="synthray-submit-"))
    shutil.copytree(Path.cwd(), staging / "project", ignore=shutil.ignore_patterns(*EXCLUDES), dirs_exist_ok=True)
    out = []
    for text in overrides:
        key, _, value = text.partition("=")
        if key == "experiment" and value.endswith((".yaml", ".yml")):
            path = Path(value).expanduser()
            if not path.is_file():
                raise SynthrayError(f"experiment file not found: {path}")
            (staging / "project" / "experiments").mkdir(exist_ok=True)
            shutil.copy(path, staging / "project" / "experiments" / path.name)
            text = f"experiment={path.stem}"
        out.append(text)
    return staging / "project", out


def secrets_to_send(names: Sequence[str]) -> dict[str, str]:
    """The values of `--send-secrets` names, from this environment; one line for a name not set here or one that
    expires."""
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SynthrayError(f"--send-secrets {name}: not an environment variable name (give NAME or NAME,NAME)")
        if name in EXPIRING:
            raise SynthrayError(f"--send-secrets {name}: it expires within hours and a sweep runs for days; the nodes "
                                "read the bucket with their own role (cluster.yaml's instance profile) instead")
        if not os.environ.get(name):
            raise SynthrayError(f"--send-secrets {name}: it is not set here")
    return {name: os.environ[name] for name in names}


def send_warning(names: Sequence[str]) -> str:
    return (f"synthray: warning: sending {', '.join(names)} with the job: Ray keeps a job's environment in plain text in "
            "its job table (ray job list, the job API) and in runtime_env_agent.log on every node; the cluster's secret "
            "store keeps them out of both (README, \"Secrets\")")


def submit(address: str | None, command: str, args: Sequence[str], send: Sequence[str] = (),
           insecure: bool = False) -> str:
    """Submit `synthray <command> <args>` as a Ray Job; returns its submission id. `send`: names of secrets to put
    in the job's environment (`secrets_to_send`); none by default."""
    from synthray.config import compose

    env = secrets_to_send(send)
    if command == "run":
        compose(list(args))  # a bad override fails here, on the laptop, in one line
        _check_storage_for_cluster(args)
    jobs = client(address, insecure)
    folder, args = stage_working_dir(args) if command == "run" else (stage_working_dir([])[0], list(args))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                return jobs.submit_job(
                    entrypoint=shlex.join(["python", "-m", "synthray", command, *args]),
                    runtime_env={"working_dir": str(folder), "excludes": EXCLUDES, **({"env_vars": env} if env else {})},
                    metadata={"synthray": command},
                )
            except RuntimeError as err:
                # A head that just started (or a busy one) has no job agent yet; Ray says to try again.
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise SynthrayError(f"the cluster did not take the job: {str(err).splitlines()[0]}") from None
                time.sleep(3)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


def job_info(jobs: Any, job: str) -> Any:
    try:
        return jobs.get_job_info(job)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            raise SynthrayError(f"no job '{job}' on this cluster; list them with: synthray jobs") from None
        raise


def list_jobs(jobs: Any) -> list[str]:
    import time

    rows = []
    for info in sorted(jobs.list_jobs(), key=lambda j: j.start_time or 0):
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime((info.start_time or 0) / 1000))
        rows.append(f"{info.submission_id or info.job_id:<28} {str(info.status.value):<10} {started}  {info.entrypoint[:80]}")
    return rows or ["no jobs"]


def follow_logs(jobs: Any, job: str) -> Iterator[str]:
    """The job's log as it is written, until the job ends."""
    job_info(jobs, job)
    loop = asyncio.new_event_loop()
    try:
        agen = jobs.tail_job_logs(job)
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()


def results_uri(jobs: Any, job: str) -> str:
    """The `results.parquet` URI a finished job printed."""
    info = job_info(jobs, job)
    found = RESULTS_LINE.findall(jobs.get_job_logs(job))
    if not found:
        raise SynthrayError(f"job {job} has not printed its results yet (status {info.status.value}); "
                            f"follow it with: synthray logs {job} --follow")
    return found[-1]
