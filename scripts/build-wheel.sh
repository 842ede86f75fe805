#!/usr/bin/env bash
# Build the wheel every cluster node installs (cluster.yaml, cluster-gcp.yaml: file_mounts carries dist/cluster/).
#
# Only git-tracked files at HEAD go in: the sources come from `git archive HEAD`, never from the working folder, so
# .venv, synthray-runs/, caches and uncommitted edits stay out. The wheel's version carries the commit
# (0.1.0+g<sha>): a node replaces an older install at the next `ray up`, and keeps the same one. Building the same
# commit again gives the same bytes (SOURCE_DATE_EPOCH is the commit's time), so Ray's hash of dist/cluster/ does
# not change and `ray up` does not restart Ray on the head.
#
# Usage: scripts/build-wheel.sh [OUT]   (OUT defaults to dist/cluster; run from anywhere inside the repository)
# Prints the wheel's path. PYTHON picks the interpreter (default: .venv/bin/python, else python3); it needs pip,
# setuptools and wheel, and builds without network (--no-build-isolation).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
out=${1:-dist/cluster}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
sha=$(git rev-parse --short=12 HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "build-wheel: tracked files have uncommitted changes; the wheel is HEAD ($sha) without them" >&2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git archive --format=tar HEAD | tar -x -C "$work"
# The commit as a PEP 440 local version, in the archived copy only.
sed -i -E "0,/^version = \"([^\"+]+)\"/s//version = \"\\1+g$sha\"/" "$work/pyproject.toml"
grep -q "^version = \".*+g$sha\"" "$work/pyproject.toml" || { echo "build-wheel: no version line in pyproject.toml" >&2; exit 1; }
export SOURCE_DATE_EPOCH
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct HEAD)
"$PY" -m pip wheel -q --no-deps --no-build-isolation --disable-pip-version-check -w "$work/wheel" "$work" \
  2> >(grep -v "^WARNING: Location" >&2)
mkdir -p "$out"
printf '*\n' > "$out/.gitignore"   # the folder ignores itself: git status stays clean, and submit leaves it behind
rm -f "$out"/synthray-*.whl   # one wheel in the folder: setup_commands installs the one it finds
cp "$work"/wheel/synthray-*.whl "$out"/
ls "$out"/synthray-*.whl
