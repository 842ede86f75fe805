"""The dress rehearsal: the study's whole shape at toy scale, submitted to a simulated mixed cluster, then checked.

    .venv/bin/python scripts/rehearsal.py                 # the full rehearsal (experiments/rehearsal*.yaml)
    .venv/bin/python scripts/rehearsal.py --cut-down      # the CI version: 3 generator families, class names only

What it does, as a user would from a laptop (every synthray step is the CLI in its own process):
1. starts moto's S3 server and a local cluster (scripts/rehearsal_cluster.py): a CPU-only token-auth head, two
   worker nodes labelled as 24 GB GPUs and one as 80 GB, all with fake GPUs;
2. exports scikit-learn's digits as an ImageFolder tree and stages it into the bucket (`synthray stage-data`);
3. submits `experiment=rehearsal` (`synthray submit`), kills a 24 GB worker once a third of its trials are done,
   waits for the job to end and finishes it with `synthray resume --submit`;
4. submits the siblings (rehearsal-probes, -texture, -controls) into the same storage, and reports all four together;
5. checks the figures (rehearsal_checks.py) and prints them, one `[figure]` line each; exit 1 if one fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rehearsal_checks import check_all  # noqa: E402  (a sibling module: scripts/ is not a package)
from rehearsal_cluster import LabelledCluster, S3Server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "synthray-rehearsal"
SIBLINGS = {"rehearsal-probes": 16, "rehearsal-texture": 1, "rehearsal-controls": 2}
CUT_DOWN = ["sd15", "sd3-medium", "flux1-schnell"]  # three families; FLUX (36 GB declared) must land on the 80 GB node


def cli(*args: str, env: dict, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`synthray <args>` in a fresh process from the project folder, as a user's shell would run it."""
    full = dict(os.environ, **env)
    full.pop("PYTEST_CURRENT_TEST", None)
    done = subprocess.run([sys.executable, "-m", "synthray", *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"synthray {' '.join(args[:2])} failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")
    return done


def export_digits(folder: Path, train: int, test: int) -> Path:
    """scikit-learn's digits as an ImageFolder tree (train/<id>/, val/<id>/), 32 px PNGs, `train` and `test` a class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[tuple[str, int], int] = {}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        split = "train" if counts.get(("train", label), 0) < train else "val"
        if counts.get((split, label), 0) >= (train if split == "train" else test):
            continue
        counts[(split, label)] = counts.get((split, label), 0) + 1
        (folder / split / str(label)).mkdir(parents=True, exist_ok=True)
        grey = (pixels * (255 / 16)).astype(np.uint8)
        Image.fromarray(grey).resize((32, 32), Image.BICUBIC).convert("RGB").save(folder / split / str(label) / f"{i}.png")
    return folder


def stage_real_data(tree: Path, storage: str, env: dict) -> list[str]:
    """The data overrides for the sweeps: the tree staged into storage by `synthray stage-data` when this synthray has
    it, else the embedded digits (data.source=digits), which every node can make for itself."""
    if "stage-data" not in cli("--help", env=env).stdout:
        return ["data.source=digits"]
    done = cli("stage-data", str(tree), f"storage={storage}", env=env)
    found = re.search(r"data\.root=(\S+)", done.stdout)
    if not found:
        raise RuntimeError(f"stage-data printed no data.root: {done.stdout[-1000:]}")
    return ["data.source=imagefolder", f"data.root={found.group(1)}"]


def job_id(done: subprocess.CompletedProcess) -> str:
    return re.search(r"submitted (raysubmit_\w+)", done.stdout).group(1)


def job_state(job: str, env: dict, address: str) -> str:
    """The job's status, asked in this process: a `synthray jobs` process every 2 s (an interpreter importing
    synthray and Ray each time) took most of a core from the rehearsal on a 2-core machine."""
    from ray.job_submission import JobSubmissionClient

    try:
        status = JobSubmissionClient(address, headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}).get_job_status(job)
    except Exception:  # noqa: BLE001 - the head busy or restarting: ask again on the next poll
        return "UNKNOWN"
    return str(getattr(status, "value", status))


def result_manifests(s3: S3Server) -> dict[str, str]:
    """Every complete artifact's manifest in the bucket: key -> ETag (a rebuilt artifact writes a new manifest)."""
    return {o["Key"]: f"{o['ETag']}@{o['LastModified'].isoformat()}" for o in s3.objects() if o["Key"].endswith("_MANIFEST.json")}


def rehearse(workdir: Path, generators: list[str] | None, styles: list[str], siblings: dict[str, int], kill: bool,
             train: int = 20, test: int = 10) -> dict:
    """Run the rehearsal in `workdir`; returns the figures (rehearsal_checks.check_all's) with wall times."""
    t0 = time.time()
    s3 = S3Server(workdir, BUCKET)
    cluster, saved = None, {k: os.environ.get(k) for k in s3.env}
    try:
        os.environ.update(s3.env)  # this process reads the bucket too (checks), as every node does
        cluster = LabelledCluster(workdir, s3.env)
        for name, tier in (("gpu24-a", 24), ("gpu24-b", 24), ("gpu80", 80)):
            cluster.add_worker(name, tier)
        nodes = cluster.alive()
        head = next(n["id"] for n in nodes if "node:__internal_head__" in n["resources"])
        env = dict(s3.env, RAY_AUTH_TOKEN=cluster.token, RAY_ADDRESS="")
        storage = f"s3://{BUCKET}/runs"
        t_cluster = time.time()
        data = stage_real_data(export_digits(workdir / "digits", train, test), storage, env)
        s3.client().put_object(Bucket=BUCKET, Key="inputs/geneval.csv", Body=placeholder_geneval().encode())
        common = [f"storage={storage}", *data, f"metrics.geneval=s3://{BUCKET}/inputs/geneval.csv"]
        main = ["experiment=rehearsal", *common, f"grid.prompt_style=[{','.join(styles)}]"]
        if generators:
            main.append(f"grid.generator=[{','.join(generators)}]")
        expected = {"rehearsal": (len(generators) if generators else 15) * len(styles), **siblings}
        t_staged = time.time()

        job = job_id(cli("submit", *main, "--address", cluster.url, env=env))
        before, killed_at, killed = {}, None, None
        while job_state(job, env, cluster.url) in ("RUNNING", "PENDING", "UNKNOWN"):
            done = [k for k in result_manifests(s3) if k.startswith("runs/results/")]
            if kill and killed_at is None and len(done) >= max(1, expected["rehearsal"] // 3):
                before = result_manifests(s3)  # everything finished before the kill
                killed = cluster.busiest(["gpu24-a", "gpu24-b"])
                cluster.kill(killed)
                killed_at = time.time()
            time.sleep(2)
        first_state = job_state(job, env, cluster.url)
        resumed = cli("resume", "--submit", "--follow", f"storage={storage}", "--address", cluster.url, env=env,
                      timeout=3600) if kill else None
        t_main = time.time()
        for name in siblings:
            cli("submit", "--follow", f"experiment={name}", *common, "--address", cluster.url, env=env, timeout=3600)
        t_siblings = time.time()
        report = workdir / "report"
        cli("report", *expected, "--storage", storage, "--out", str(report), env=env)
        t_report = time.time()
        figures = check_all(s3, cluster, head, expected, before, storage, report)
        figures.update({
            "first job": first_state, "resume ran trials": resumed_trials(resumed),
            "resume job": "SUCCEEDED" if resumed and "SUCCEEDED" in resumed.stdout else (
                "not run" if resumed is None else "FAILED"),
            "killed after s": round(killed_at - t_staged, 1) if killed_at else None, "killed node": killed,
            "wall s": {"cluster": round(t_cluster - t0, 1), "stage": round(t_staged - t_cluster, 1),
                       "rehearsal+resume": round(t_main - t_staged, 1), "siblings": round(t_siblings - t_main, 1),
                       "report": round(t_report - t_siblings, 1), "total": round(time.time() - t0, 1)},
            "stage s": stage_seconds(s3)})
        keep_sweep_logs(s3, workdir / "sweeps", failed=False)
        return figures
    except Exception:
        keep_sweep_logs(s3, workdir / "sweeps")  # the bucket goes with the server: keep what explains the failure
        raise
    finally:
        if cluster is not None:
            cluster.shutdown()
        s3.stop()
        for key, value in saved.items():  # the caller (a test session) goes on with its own S3 server
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def resumed_trials(resumed: subprocess.CompletedProcess | None) -> int | None:
    """How many trials the resume ran (its plan line: "N trials, M already complete (reused), K to run")."""
    found = re.search(r"(\d+) to run", resumed.stdout) if resumed is not None else None
    return int(found.group(1)) if found else None


def stage_seconds(s3: S3Server) -> dict[str, str]:
    """Where the sweeps' time went, from their logs' `built <kind> <key> (<label>) in <s> s` lines: per artifact kind,
    how many were built and their seconds in all (each counted from its build's start: concurrent builds overlap)."""
    found: dict[str, list[float]] = {}
    for o in s3.objects("runs/sweeps/"):
        if "/logs/" in o["Key"]:
            for kind, secs in re.findall(r"built (\S+) \S+ \(.*?\) in ([\d.]+) s", s3.read(o["Key"]).decode(errors="replace")):
                found.setdefault(kind, []).append(float(secs))
    return {k: f"{len(v)} built, {sum(v):.0f} s in all, mean {sum(v) / len(v):.1f} s" for k, v in sorted(found.items())}


def keep_sweep_logs(s3: S3Server, out: Path, failed: bool = True) -> None:
    """Copy every sweep's logs and Tune's trial error files from the bucket to `out`, before the server stops."""
    try:
        for o in s3.objects("runs/sweeps/"):
            key = o["Key"]
            if "/logs/" in key or key.endswith(("error.txt", ".json")):
                target = out / key[len("runs/sweeps/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(s3.read(key))
        if failed:
            print(f"rehearsal failed: the sweeps' logs and Tune's error files are in {out}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - diagnostics only: never hide the failure itself
        print(f"rehearsal failed; could not keep the sweeps' logs: {err}", file=sys.stderr)


def placeholder_geneval() -> str:
    """A GenEval CSV for the report's GenEval figure. Placeholder scores, not measurements: GenEval is computed
    elsewhere, and the rehearsal only checks that a CSV in storage is read and joined."""
    names = ["sd15", "sd20", "sd21", "sdxl", "sdxl-turbo", "pixart-alpha", "sd3-medium", "flux1-dev", "flux1-schnell",
             "sd35-large", "sd35-large-turbo", "sd35-medium", "sana", "lumina2", "qwen-image"]
    return "generator,geneval\n" + "".join(f"{n},{0.4 + 0.03 * i:.2f}\n" for i, n in enumerate(names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut-down", action="store_true", help=f"CI size: {', '.join(CUT_DOWN)}, class names, "
                        "no sibling experiments")
    parser.add_argument("--workdir", help="keep the cluster's logs, the data tree and the report here")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="synthray-rehearsal-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.cut_down:
        figures = rehearse(workdir, CUT_DOWN, ["classname"], {}, kill=True, train=10, test=5)
    else:
        figures = rehearse(workdir, None, ["classname", "caption"], SIBLINGS, kill=True)
    for name, value in figures.items():
        print(f"[figure] {name}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    print(f"logs, data and report: {workdir}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
