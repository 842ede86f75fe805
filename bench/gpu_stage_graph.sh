#!/usr/bin/env bash
# Every stage's GPU path after the stage-graph redesign, on the lent GPU machine (no network, no Ray dashboard
# packages): the smoke experiment with device=gpu, the depth probe and CLIP features and CLIPScore on tiny twins,
# so generation (a diffusers pipeline on CUDA), the depth probe, the encoders and Ray Train all run on the GPU.
# A second run must reuse every result. Logs go to $OUT (or ./gpu-out).
#   bash ../shared/gpu/prepare-wheels.sh   # here, once: fills .whl/
#   device run, carry [".whl"]:  bash bench/gpu_stage_graph.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "import torch, ray, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"
# The host has no dashboard packages: a head without it, which synthray joins (ray.address=auto).
python3 -m ray.scripts.scripts start --head --include-dashboard=false --num-cpus=16 --disable-usage-stats > "$OUT/ray-start.log" 2>&1 || { cat "$OUT/ray-start.log"; exit 1; }
ARGS=(device=gpu ray.address=auto "storage=/tmp/gpu-runs" "grid.probe=[rgb,depth]" tune.max_concurrent_trials=4 "metrics.features=[pixels,clip]"
      metrics.encoders.clip.model=tiny:clip metrics.clipscore.model=tiny:clip)
start=$(date +%s)
python3 -m synthray run "${ARGS[@]}" 2>&1 | tee "$OUT/cold.log"
cold=$?
echo "cold run: exit $cold, $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
start=$(date +%s)
python3 -m synthray run "${ARGS[@]}" 2>&1 | tee "$OUT/warm.log"
echo "warm run: exit $?, $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
grep -c "building" /tmp/gpu-runs/sweeps/*/logs/sweep.log 2>/dev/null | tail -2 | tee -a "$OUT/summary.txt"
# Where each stage ran: the artifacts' meta say (generation timing per shard, training device and speed).
python3 - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import glob, json
for meta in sorted(glob.glob("/tmp/gpu-runs/models/*/meta.json")):
    m = json.load(open(meta))
    print("model", meta.split("/")[-2], m["arch"], "epochs", m["epochs"], "img/s", round(m["images_per_s"]))
spec = [json.load(open(p)) for p in glob.glob("/tmp/gpu-runs/synthetic/*/spec.json")]
print("datasets:", [(s["generator"], s.get("kernels")) for s in spec])
print("views:", [json.load(open(p))["params"].get("device") for p in glob.glob("/tmp/gpu-runs/views/*/spec.json")])
print("features:", [json.load(open(p)).get("device") for p in glob.glob("/tmp/gpu-runs/features/*/spec.json")])
EOF
cp /tmp/gpu-runs/sweeps/*/results.parquet "$OUT/" 2>/dev/null | head -1
python3 -m ray.scripts.scripts stop > /dev/null 2>&1
exit $cold
