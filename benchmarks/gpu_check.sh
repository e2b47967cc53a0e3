#!/usr/bin/env bash
# GPU acceptance: one command that proves every CUDA path of synthtl on any CUDA machine (<= 9 min on an H100,
# set-up included). Runs from source; writes gpu_check.log, results_rows.md (rows for benchmarks/RESULTS.md) and
# the benchmarks' JSON into OUT. Every step is timed and reported PASS/FAIL; a failing step does not stop the
# others; the exit code is non-zero if any step failed.
#
#   bash benchmarks/gpu_check.sh OUT                          # from the repository root
#   WHEELS=.whl bash benchmarks/gpu_check.sh OUT              # no network: install missing packages from wheels
#                                                             # (benchmarks/wheels.sh downloads them beforehand)
#   GPU_CHECK_ALLOW_CPU=1 bash benchmarks/gpu_check.sh OUT    # CPU: proves the plumbing, tiny sizes, GPU steps skip
#
# Steps: environment; pytest -m gpu; full-size smoke test (random SD v1.5 weights + the real CLIP tokenizer at
# 512 px: generate 8 images, learn a style for 20 steps, generate with it, fine-tune ResNet-50 bridged++ for 2
# epochs); the three throughput benchmarks in short settings; the peers' features (peers_throughput.py: CLIP filter,
# img2img beside text-to-image, LoRA beside textual inversion; estimated ~100 s on an H100, limit 240 s).
set -u -o pipefail

OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/synthtl_gpu_check.XXXXXX")
LOG=$OUT/gpu_check.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export SYNTHTL_CACHE="$WORK/cache"

declare -a SUMMARY=()
FAILED=0
T_START=$(date +%s)

# step NAME TIMEOUT_S CMD...: runs CMD with a time limit, prints and records PASS/FAIL and seconds.
step() {
  local name=$1 limit=$2
  shift 2
  echo
  echo "=== $name ($(date +%H:%M:%S), limit ${limit}s)"
  local t0=$(date +%s.%N) rc
  if declare -F "$1" >/dev/null; then
    "$@"  # a function of this script (its own commands are short)
  else
    timeout --kill-after=10 "$limit" "$@"
  fi
  rc=$?
  local dt
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  if [ $rc -eq 0 ]; then
    SUMMARY+=("PASS  ${dt}s  $name")
    echo "=== PASS $name (${dt} s)"
  else
    FAILED=$((FAILED + 1))
    [ $rc -eq 124 ] && name="$name (timed out)"
    SUMMARY+=("FAIL  ${dt}s  $name (exit $rc)")
    echo "=== FAIL $name (${dt} s, exit $rc)"
  fi
}

# ------------------------------------------------------------------------------------------------------ set-up
if [ -n "${WHEELS:-}" ]; then
  # --no-deps --target: exactly the carried wheels, in front of the system packages, nothing else replaced.
  step "install wheels from $WHEELS" 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$WORK/site" "$WHEELS"/*.whl
  export PYTHONPATH="$WORK/site:$PYTHONPATH"
fi

HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
CPU_MODE=0
if [ "$HAS_CUDA" != "1" ]; then
  if [ "${GPU_CHECK_ALLOW_CPU:-0}" = "1" ]; then
    CPU_MODE=1
    echo "No CUDA device: GPU_CHECK_ALLOW_CPU=1, so tiny sizes on the CPU (plumbing only; no GPU figure is measured)."
  else
    echo "FAIL: no CUDA device visible to $PY (torch.cuda.is_available() is false). Run on a CUDA machine, or set"
    echo "GPU_CHECK_ALLOW_CPU=1 to check this script's plumbing on the CPU."
    exit 2
  fi
fi

env_report() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
  "$PY" - <<'PYEOF'
import platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, bf16 "
          f"{torch.cuda.is_bf16_supported()}")
for name in ("torchvision", "diffusers", "transformers", "timm", "accelerate", "omegaconf", "safetensors"):
    try:
        print(f"{name} {__import__(name).__version__}")
    except Exception as e:  # a missing package is reported here and fails the steps that need it
        print(f"{name} MISSING ({type(e).__name__}: {e})")
PYEOF
}
step "environment" 60 env_report

# ------------------------------------------------------------------------------------------------------ tests
step "pytest -m gpu" 300 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider

# ------------------------------------------------------------------------------------------------------ smoke
if [ $CPU_MODE = 1 ]; then
  RES=32; MODEL=tiny; CLS=test_resnet; IMG=32; DEVICE=cpu; GEN_STEPS=2; STYLE_STEPS=2
else
  RES=512; MODEL="$WORK/models/sd15"; CLS=resnet50; IMG=224; DEVICE=cuda; GEN_STEPS=25; STYLE_STEPS=20
fi

make_data() {
  # 4 classes x 6 train / 2 test photo-sized JPEGs (smooth random content), class-per-folder.
  "$PY" - "$WORK/data" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for split, n in (("train", 6), ("test", 2)):
    for c, name in enumerate(("boeing_737", "cessna_172", "airbus_a320", "spitfire")):
        for i in range(n):
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            small[..., c % 3] = 200  # a class colour, so the classifier has something to learn
            path = root / split / name / f"{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC).save(path, quality=90)
print(f"image folder: {root}")
PYEOF
}
step "smoke: image folder" 60 make_data
if [ $CPU_MODE = 0 ]; then
  step "smoke: random SD v1.5 folder + real CLIP tokenizer" 240 "$PY" -m tests.fullsize.sd15 "$WORK/models"
fi
DATA=(data.name=folder "data.root=$WORK/data")
step "smoke: generate 8 images (${RES} px)" 240 "$PY" -m synthtl generate "generator.model=$MODEL" \
  "generator.height=$RES" "generator.width=$RES" "generator.steps=$GEN_STEPS" generator.batch_size=8 \
  "generator.device=$DEVICE" "${DATA[@]}" per_class=2 "out_dir=$WORK/gen" progress=false
step "smoke: learn a style ($STYLE_STEPS steps, ${RES} px)" 240 "$PY" -m synthtl learn-style \
  "generator.model=$MODEL" "generator.device=$DEVICE" "${DATA[@]}" "resolution=$RES" "steps=$STYLE_STEPS" \
  batch_size=4 validate_every=0 validation_classes=2 validation_images=2 validation_steps=10 progress=false \
  "out_dir=$WORK/style"
step "smoke: generate 8 images with the learned style" 240 "$PY" -m synthtl generate "generator.model=$MODEL" \
  "generator.height=$RES" "generator.width=$RES" "generator.steps=$GEN_STEPS" generator.batch_size=8 \
  "generator.device=$DEVICE" "${DATA[@]}" per_class=2 prompts.templates=style \
  "prompts.style_embedding=$WORK/style" "out_dir=$WORK/gen_style" progress=false
step "smoke: fine-tune $CLS bridged++ (2 epochs per stage)" 300 "$PY" -m synthtl finetune strategy=bridged++ \
  "${DATA[@]}" "synthetic.path=$WORK/gen_style" "model.name=$CLS" model.pretrained=false "model.img_size=$IMG" \
  "device=$DEVICE" real_stage.epochs=2 synth_stage.epochs=2 real_stage.batch_size=8 synth_stage.batch_size=8 \
  data.num_workers=2 leep.enabled=false "out_dir=$WORK/runs" progress=false

# ------------------------------------------------------------------------------------------------------ benchmarks
if [ $CPU_MODE = 1 ]; then
  TRAIN_ARGS=(--model test_resnet --size 32 --images 128 --epochs 1 --batch 32 --workers 2)
  GEN_ARGS=(--tiny --steps 2 --images 8 --batch 4 --plain-batches 4)
  STYLE_ARGS=(--tiny --steps 3 --warmup 1)
  PEERS_ARGS=(--tiny)
else
  TRAIN_ARGS=(--model resnet50 --images 1024 --epochs 1 --batch 64 --workers 12)
  GEN_ARGS=(--images 32 --batch 16 --plain-batches 16)
  STYLE_ARGS=(--steps 20 --warmup 5)
  PEERS_ARGS=(--filter-images 384 --images 48 --style-steps 16 --style-warmup 2)
fi
step "benchmark: train_throughput ${TRAIN_ARGS[*]}" 240 "$PY" benchmarks/train_throughput.py "${TRAIN_ARGS[@]}" \
  --json "$OUT/train_throughput.json"
step "benchmark: generate_throughput ${GEN_ARGS[*]}" 240 "$PY" benchmarks/generate_throughput.py "${GEN_ARGS[@]}" \
  --json "$OUT/generate_throughput.json"
step "benchmark: style_throughput ${STYLE_ARGS[*]}" 180 "$PY" benchmarks/style_throughput.py "${STYLE_ARGS[@]}" \
  --json "$OUT/style_throughput.json"
step "benchmark: peers_throughput ${PEERS_ARGS[*]}" 240 "$PY" benchmarks/peers_throughput.py "${PEERS_ARGS[@]}" \
  --json "$OUT/peers_throughput.json"

results_rows() {
  "$PY" - "$OUT" "$CPU_MODE" <<'PYEOF'
import datetime, json, math, re, sys
from pathlib import Path
out, cpu = Path(sys.argv[1]), sys.argv[2] == "1"
date = datetime.date.today().isoformat()
note = " (gpu_check.sh, CPU plumbing run)" if cpu else " (gpu_check.sh)"
def load(name):
    p = out / f"{name}.json"
    if not p.is_file():
        return None
    row = json.loads(p.read_text())
    row["command"] = re.sub(r"\s*--json \S+", "", row["command"])
    return row
lines = []
if (r := load("train_throughput")):
    lines += ["## train_throughput.py", "", f"| {date} | {r['device']}{note} | `{r['command']}` | {r['bound']:.1f} | "
              f"{r['plain']:.1f} | {r['ours']:.1f} | {r['ours'] / r['plain']:.2f}x | {100 * r['ours'] / r['bound']:.0f}% |", ""]
if (r := load("generate_throughput")):
    peak = "n/a" if r["percent_of_peak"] is None else f"{r['percent_of_peak']:.0f}%"
    lines += ["## generate_throughput.py", "", f"| {date} | {r['device']}{note} | `{r['command']}` | {r['plain']:.2f} "
              f"({r['plain_batch']}) | {r['ours']:.2f} | {r['ours'] / r['plain']:.2f}x | {peak} |", ""]
if (r := load("style_throughput")):
    mem = "n/a on CPU" if math.isnan(r["ours_gib"]) else f"{r['reference_gib']:.1f} / {r['ours_gib']:.1f} GiB"
    lines += ["## style_throughput.py", "", f"| {date} | {r['device']}{note} | `{r['command']}` | {r['reference']:.2f} | "
              f"{r['ours']:.2f} | {r['ours'] / r['reference']:.2f}x | {mem} |", ""]
if (r := load("peers_throughput")):
    f, g, st = r["filter"], r["img2img"], r["lora"]
    lo, ti = st["lora"], st["inversion"]
    mem = "n/a on CPU" if math.isnan(lo["peak_gib"]) else f"{lo['peak_gib']:.1f} / {ti['peak_gib']:.1f} GiB"
    i2i, t2i = g["img2img"]["images_per_s"], g["txt2img"]["images_per_s"]
    lines += ["## peers_throughput.py", "", f"| {date} | {r['device']}{note} | `{r['command']}` | {f['steady']:.1f} / "
              f"{f['with_load']:.1f} | {i2i:.2f} | {t2i:.2f} | {i2i / t2i:.2f}x | {lo['steps_per_s']:.2f} | "
              f"{ti['steps_per_s']:.2f} | {lo['steps_per_s'] / ti['steps_per_s']:.2f}x | {mem} | "
              f"{lo['moved']} of {lo['matrices']} |", ""]
(out / "results_rows.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
}
step "RESULTS.md rows -> $OUT/results_rows.md" 30 results_rows

echo
echo "=== summary ($(( $(date +%s) - T_START )) s in all; log: $LOG)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
rm -rf "$WORK"
if [ $FAILED -gt 0 ]; then
  echo "$FAILED step(s) FAILED"
  exit 1
fi
echo "all steps passed"
