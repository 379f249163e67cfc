#!/usr/bin/env bash
# The GPU check of the performance issue, one short run (on an H100: 205 s without the windows part, 256 s without the profile and with a second comparison):
# training throughput in 3D and 2.5D (autocast, channels-last) against the MONAI-tutorial loop on
# the same GPU, each against its pure-compute ceiling (the same network on random tensors already
# on the GPU), and 3D prediction of Colin27 and of a 512×512×300 CT-sized volume against
# MONAI's sliding_window_inference (scores on the CPU, and on the GPU) — one table
# (bench/performance.py does the work); then windows per pass in 3D prediction (bench/window_batch.py).
#
# Prepare here, once (the sample data and pip's registry are needed):
#     bash bench/gpu_check.sh --prepare
# It writes .gpu/ (the volume as .npz, its NIfTI files for the MONAI loop) and .whl/ (the MONAI
# and nibabel wheels the GPU image lacks); git ignores both. On the GPU machine, carrying both:
#     bash bench/gpu_check.sh       # STEPS, WARMUP, CT_DEPTH, DEVICE, PY, RESULTS, PROFILE, WINDOWS may be set
# Nothing is installed there beyond those wheels, into /tmp/site; no network is needed.
# It also runs the tests' CUDA cases and profiles a training step on the card (bench/profile_training.py)
# before the comparison; any failure makes the exit status 1, after the rest has run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ "${1:-}" = "--prepare" ]; then
  PY=${PY/#python3/.venv/bin/python}
  "$PY" bench/gpu_check.py --prepare .gpu
  rm -rf .whl && mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl \
    "monai==$("$PY" -c 'import monai; print(monai.__version__)')" \
    "nibabel==$("$PY" -c 'import nibabel; print(nibabel.__version__)')"
  ls -la .gpu .whl
  exit 0
fi
if ! "$PY" -c "import monai, nibabel" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
date -u +"%Y-%m-%d %H:%M UTC"
status=0
# the CUDA cases of the tests (the GPU image has no SimpleITK, which conftest.py reads volumes with)
"$PY" -m pytest -q -p no:cacheprovider --noconftest Testing/test_performance.py || status=1
# where a step's time goes on the card (PROFILE=0 skips it)
if [ "${PROFILE:-1}" != 0 ]; then
  "$PY" bench/profile_training.py --device "${DEVICE:-cuda}" --data .gpu --steps 20 --out /tmp/mt_profile || status=1
fi
"$PY" bench/performance.py --device "${DEVICE:-cuda}" --data .gpu --ceiling --steps "${STEPS:-100}" \
  --warmup "${WARMUP:-10}" --ct-depth "${CT_DEPTH:-300}" --out "${RESULTS:-runs/bench_gpu}" || status=1
# windows per forward pass in 3D prediction, on the package the comparison trained (WINDOWS=0 skips it)
if [ "${WINDOWS:-2,4,8,16}" != 0 ] && [ -d "${RESULTS:-runs/bench_gpu}/mt_run_3d/model" ]; then
  "$PY" bench/window_batch.py "${RESULTS:-runs/bench_gpu}/mt_run_3d/model" --device "${DEVICE:-cuda}" --data .gpu \
    --ct-depth "${CT_DEPTH:-300}" --windows "${WINDOWS:-2,4,8,16}" || status=1
fi
exit $status
