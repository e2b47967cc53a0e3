#!/usr/bin/env bash
# Downloads the wheels that benchmarks/gpu_check.sh needs on a GPU machine without network (Python 3.12, with
# torch/timm/transformers/accelerate but no diffusers or omegaconf), into DIR (default .whl, which git ignores and
# the device tool can carry):
#   bash benchmarks/wheels.sh [DIR]
#   WHEELS=.whl bash benchmarks/gpu_check.sh OUT      # on the GPU machine
# Pure-Python packages only, pinned to what this repo is tested with; --no-deps, so every missing dependency is named.
set -euo pipefail
DIR=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$DIR" \
  diffusers==0.42.1 omegaconf==2.4.0 importlib_metadata==10.2.0 \
  clip-anytorch==2.6.0 ftfy==6.3.1 wcwidth==0.9.4
ls -l "$DIR"
