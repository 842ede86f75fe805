"""A non-editable install works: build the wheel, install it into a fresh venv, and run the CLI from elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_install_runs_outside_the_source_tree(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SYNTHRAY_EXPERIMENTS", "VIRTUAL_ENV")}
    elsewhere = tmp_path / "elsewhere"  # a working directory with no experiments/ folder
    elsewhere.mkdir()

    # Build from a copy, so the build leaves no build/ or egg-info behind in the source tree.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("synthray", "experiments"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
         cwd=elsewhere, env=env)
    (wheel,) = dist.glob("synthray-*.whl")

    # Every module and data file of the source tree is in the wheel (pyproject lists the packages by hand).
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(src).as_posix() for p in (src / "synthray").rglob("*") if p.is_file()}
    expected |= {f"synthray/experiments/{p.name}" for p in (src / "experiments").glob("*.yaml")}
    assert expected - names == set()
    assert {"synthray/experiments/smoke.yaml", "synthray/conf/recipes/smoke.yaml"} <= names

    # A fresh venv that borrows this interpreter's site-packages (torch, ray, ...; plain paths, so the
    # source tree's editable-install hook there is not run) but gets synthray only from the wheel.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=elsewhere, env=env)
    vpy = venv / "bin" / "python"
    vsite = Path(_run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], elsewhere, env).strip())
    outer = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (vsite / "_outer_site.pth").write_text("".join(f"{p}\n" for p in outer))
    _run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
         cwd=elsewhere, env=env)

    where = _run([str(vpy), "-c", "import synthray; print(synthray.__file__)"], elsewhere, env).strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    assert not Path(where).resolve().is_relative_to(ROOT), where

    cli = str(venv / "bin" / "synthray")
    generators = _run([cli, "list", "generators"], elsewhere, env)
    assert "tiny-sd " in generators
    recipes = _run([cli, "list", "recipes"], elsewhere, env)
    assert "paper" in recipes and "smoke" in recipes
    experiments = _run([cli, "list", "experiments"], elsewhere, env)
    listed = dict(line.split(None, 1) for line in experiments.splitlines() if line.strip())
    assert {"smoke", "probes", "paper"} <= set(listed)
    for path in listed.values():
        assert Path(path.strip()).resolve().is_relative_to(venv.resolve()), experiments


@pytest.mark.slow  # about 5 s alone, 16 s beside a CI run on 2 cores
def test_cluster_wheel_holds_the_tracked_files_of_head_only(tmp_path):
    """scripts/build-wheel.sh, in a clone with an untracked module, an uncommitted edit and a .venv: the wheel has
    exactly HEAD's tracked package files, its version names the commit, and a second build is byte-identical (so
    Ray's hash of dist/cluster, and the head, stay as they are)."""
    import hashlib

    clone = tmp_path / "clone"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    _run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], cwd=tmp_path, env=env)
    (clone / "synthray" / "untracked_module.py").write_text("X = 1\n")
    (clone / ".venv" / "lib").mkdir(parents=True)
    (clone / ".venv" / "lib" / "big.py").write_text("# an environment\n")
    with open(clone / "synthray" / "__init__.py", "a") as f:
        f.write("\nUNCOMMITTED = True\n")
    env["PYTHON"] = sys.executable
    script = clone / "scripts" / "build-wheel.sh"
    built = _run(["bash", str(script)], cwd=clone, env=env).strip()
    wheel = clone / built
    assert wheel.parent == clone / "dist" / "cluster" and len(list(wheel.parent.glob("*.whl"))) == 1, built
    sha = _run(git + ["rev-parse", "--short=12", "HEAD"], cwd=clone, env=env).strip()
    assert wheel.name == f"synthray-0.1.0+g{sha}-py3-none-any.whl", wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = set(_run(git + ["ls-files", "synthray"], cwd=clone, env=env).split())
    modules = {n for n in names if n.startswith("synthray/") and not n.startswith("synthray/experiments/")}
    assert modules <= tracked, modules - tracked
    assert {t for t in tracked if t.endswith((".py", ".yaml", ".csv"))} <= modules
    assert "synthray/untracked_module.py" not in names and not [n for n in names if ".venv" in n]
    assert b"UNCOMMITTED" not in zipfile.ZipFile(wheel).read("synthray/__init__.py")
    assert _run(git + ["status", "--porcelain", "dist"], cwd=clone, env=env) == "", "dist/cluster ignores itself"

    first = hashlib.sha256(wheel.read_bytes()).hexdigest()
    again = clone / _run(["bash", str(script)], cwd=clone, env=env).strip()
    assert again == wheel and hashlib.sha256(again.read_bytes()).hexdigest() == first
