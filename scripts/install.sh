#!/usr/bin/env bash
# Create .venv (if missing) and install synthray with its test tools. Safe to run again: it only adds what is missing.
# torch comes first and pinned: a bare "torch" requirement would pull a multi-GB download, and these machines
# cap torch at 2.14.1 (pip constraint). uv and poetry ignore that cap, so this uses pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# This machine's pip config lists local index folders that may be absent; drop those warnings, keep errors.
quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }
quiet .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
quiet .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
# The report's browser test renders in headless Chromium, from Debian's package (root, or sudo without a password).
if ! command -v chromium > /dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium; } > /dev/null 2>&1 \
    || echo "chromium not installed (apt-get failed): the report's browser tests will be skipped" >&2
fi
.venv/bin/python -c "import synthray, torch, ray, diffusers, timm; print(f'synthray ready: torch {torch.__version__}, ray {ray.__version__}, diffusers {diffusers.__version__}, timm {timm.__version__}')"
