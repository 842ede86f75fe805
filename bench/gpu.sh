#!/usr/bin/env bash
# Every GPU benchmark of bench/ in one run on one H100 or H200, within 8 minutes (issue 25): generation eager, compiled
# by regions (cold and warm start), under each SDPA backend; training cached, streaming with nvjpeg, profiled;
# CLIP ViT-L/14 features; exact PRDC. Each step has its own cap and all share one deadline, so a slow step costs
# the steps after it and never the whole run. Each step's JSON and log go to OUTDIR; the summary table (device
# first) is printed and kept as OUTDIR/summary.txt.
#   here, once:   bash ../shared/gpu/prepare-wheels.sh           # fills .whl/ (Ray without dashboard packages, ...)
#   device run, carry [".whl"]:   bash bench/gpu.sh "$OUT"
#   CPU check:    bash bench/gpu.sh --tiny OUTDIR                # the same steps with tiny twins and sizes, < 5 min
# PYTHON picks the interpreter (default: .venv/bin/python when there is one, else python3). Big files (models,
# datasets, compiled code) go to WORK (default /tmp/synthray-gpu-bench), never to OUTDIR, which comes back.
set -uo pipefail
TINY=0
[[ ${1:-} == --tiny ]] && { TINY=1; shift; }
[[ $# -eq 1 ]] || { echo "usage: bash bench/gpu.sh [--tiny] OUTDIR" >&2; exit 2; }
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
WORK=${WORK:-/tmp/synthray-gpu-bench}
# 8 minutes less the summary on the GPU; the wheel install counts too. --tiny on a CPU shared with other work is
# slower than the GPU run it mirrors (process starts, compiling on 2 cores), so its caps are scaled (CAP_SCALE).
BUDGET_S=${BUDGET_S:-$(( TINY ? 1200 : 470 ))}
CAP_SCALE=${CAP_SCALE:-$(( TINY ? 3 : 1 ))}
DEADLINE=$(( $(date +%s) + BUDGET_S ))
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
mkdir -p "$WORK"
: > "$OUT/steps.tsv"

if (( ! TINY )); then
  # The host's own torch, torchvision, timm, transformers, pandas and pyarrow stay; the rest comes from .whl/.
  if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
      > "$OUT/install.log" 2>&1 || { echo "wheel install failed: see $OUT/install.log" >&2; tail -5 "$OUT/install.log" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
  fi
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device for $PY: run bash bench/gpu.sh --tiny OUTDIR for the CPU check" >&2; exit 1; }
fi
"$PY" - > "$OUT/device.txt" 2>&1 <<'EOF'
import torch, transformers, ray
name = f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB" \
    if torch.cuda.is_available() else "cpu (tiny twins: the figures check the code path, they mean nothing)"
print(f"device: {name}; torch {torch.__version__}, transformers {transformers.__version__}, ray {ray.__version__}")
EOF
(( $? == 0 )) || { cat "$OUT/device.txt" >&2; exit 1; }
cat "$OUT/device.txt"

# step NAME CAP_S SCRIPT ARGS...: runs `PY SCRIPT ARGS --json OUTDIR/NAME.json` under `timeout`, capped at CAP_S or
# what is left of the budget, and records its status in steps.tsv.
step() {
  local name=$1 cap=$(( $2 * CAP_SCALE )); shift 2
  local left=$(( DEADLINE - $(date +%s) - 5 ))  # 5 s for the KILL after an ignored TERM
  if (( left < 15 )); then skip "$name" "budget spent"; return; fi
  (( cap > left )) && cap=$left
  local start=$(date +%s)
  timeout -k 5 "$cap" "$PY" "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  local rc=$? secs=$(( $(date +%s) - start )) status=ok
  (( rc == 124 || rc == 137 )) && status="timeout" || { (( rc != 0 )) && status="fail rc=$rc"; }
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$cap" "$NOTE" >> "$OUT/steps.tsv"
  echo "[$name] $status in ${secs} s (cap ${cap} s)${NOTE:+; $NOTE}"
  [[ $status == ok ]] || tail -3 "$OUT/$name.log" | sed 's/^/    /'
  NOTE=
}
skip() { printf '%s\tskip\t0\t0\t%s\n' "$1" "$2" >> "$OUT/steps.tsv"; echo "[$1] skipped: $2"; NOTE=; }
NOTE=

GEN_HELP=$("$PY" bench/generation.py --help 2>&1)
TRAIN_HELP=$("$PY" bench/training.py --help 2>&1)
has() { grep -q -- "$2" <<< "$1"; }
if (( TINY )); then
  GEN=(--tiny --images 16 --batch 4 --steps 2 --workdir "$WORK/gen")  # two shards of 8: a first and a steady one
  TRAIN=(--tiny) STREAM=(--tiny --cache-gb 0) ENC=(--tiny --images 64) PRDC=(--tiny)
else  # sizes that fit the budget: 4 shards of 16 for a variant, ViT-L/14 on 4096 images, 5000 training images
  GEN=(--images 64 --batch 16 --workdir "$WORK/gen")
  TRAIN=(--images 5000 --epochs 3) STREAM=(--arch resnet50 --images 5000 --epochs 3 --cache-gb 0 --jpeg-decode gpu)
  ENC=(--images 4096) PRDC=(--ref-size 5000)
fi

step encoders 45 bench/encoders.py "${ENC[@]}"
step prdc 45 bench/prdc.py "${PRDC[@]}"
# The eager run builds and saves the architecture once in WORK/gen; the variants load it from there.
step gen-eager 100 bench/generation.py "${GEN[@]}"
if has "$GEN_HELP" "--compile-scope"; then
  step gen-compile-regions 130 bench/generation.py "${GEN[@]}" --compile --cold-cache --compile-scope regions --compile-timeout 110
else
  NOTE="no --compile-scope: the whole-model compile" step gen-compile 130 bench/generation.py "${GEN[@]}" --compile --cold-cache
fi
for backend in flash cudnn; do
  if ! has "$GEN_HELP" "--attention {[^}]*$backend"; then skip "gen-attn-$backend" "bench/generation.py has no --attention $backend"
  elif (( TINY )); then NOTE="cpu: math in place of $backend" step "gen-attn-$backend" 60 bench/generation.py "${GEN[@]}" --attention math
  else step "gen-attn-$backend" 60 bench/generation.py "${GEN[@]}" --attention "$backend"
  fi
done
step train-cached 90 bench/training.py "${TRAIN[@]}"
NOTE=$( (( TINY )) && echo "cpu: JPEGs decoded on CPU workers" ) step train-streaming 70 bench/training.py "${STREAM[@]}"
if has "$TRAIN_HELP" "--profile"; then step train-profile 60 bench/training.py "${TRAIN[@]}" --profile
else skip train-profile "bench/training.py has no --profile"
fi

# The summary: one row per step, figures from its JSON (plain, synthray, ratio; the rest as a note).
"$PY" - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print((out / "device.txt").read_text().strip().splitlines()[-1])
rows = [["step", "status", "s", "cap", "plain", "synthray", "ratio", "note"]]


def figures(name: str, data) -> tuple[str, str, str, str]:
    """(plain, synthray, ratio, note) of one step's JSON, whatever bench wrote it."""
    if isinstance(data, list):  # training: one row per architecture
        parts = [figures(name, row) for row in data]
        return tuple(" / ".join(p[i] for p in parts if p[i]) for i in range(4))
    g = lambda *keys: next((data[k] for k in keys if data.get(k) is not None), None)
    fmt = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, (int, float)) else str(v)
    note = []
    if "arch" in data:
        note.append(str(data["arch"]))
    if name.startswith("gen"):
        note.append(f"steady {fmt(g('b_steady_img_s'))} img/s (x{fmt(g('ratio_steady_over_a'))})")
        note += [f"{k} {fmt(v)}" for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and any(w in k for w in ("compile", "warm", "first_shard_extra"))]
    if name == "prdc":
        a, b = data.get("at_scale", {}), data.get("side_by_side", {})
        return ("", "", "", f"{data.get('real')}x{data.get('fake')}: {fmt(a.get('seconds'))} s, peak {fmt(a.get('peak_gib'))} GiB; "
                f"vs prdc {fmt(b.get('ratio_reference_over_ours'))}x faster, agree {b.get('agree')}")
    if name == "encoders" and "device_vs_cpu_min_cos" in data:
        note.append(f"device vs CPU preprocessing: min cos {data['device_vs_cpu_min_cos']:.7f}")
    return (fmt(g("plain_img_s", "plain_ips", "a_plain_img_s")), fmt(g("synthray_img_s", "synthray_ips", "b_synthray_img_s")),
            fmt(g("ratio", "ratio_b_over_a")), "; ".join(note))


for line in (out / "steps.tsv").read_text().splitlines():
    name, status, secs, cap, note = (line.split("\t") + [""] * 5)[:5]
    path = out / f"{name}.json"
    plain = synthray = ratio = extra = ""
    if status == "ok" and path.exists():
        try:
            plain, synthray, ratio, extra = figures(name, json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            extra = f"unread JSON: {e}"
    rows.append([name, status, secs, cap, plain, synthray, ratio, "; ".join(x for x in (note, extra) if x)])
width = [max(len(r[i]) for r in rows) for i in range(7)]
for r in rows:
    print(" | ".join(c.ljust(w) for c, w in zip(r, width)) + " | " + r[7])
EOF
# exit 0 when every step ran or was skipped for a missing flag or the budget
! cut -f2 "$OUT/steps.tsv" | grep -qv "^ok$\|^skip$"
