#!/usr/bin/env bash
# The README's accelerator figures in one run: the benchmark (ecgclip_jax/benchmark.py) on the
# paper-scale config and on the demo model, JAX and the PyTorch reference side by side.
#
#   bash launch/benchmark_gpu.sh [OUT_DIR]        (default results/benchmark)
#
# Needs jax with the accelerator's plugin, flax, optax, ml_collections, and for the reference
# torch and transformers: `pip install -e '.[benchmark]'`. On a machine without internet,
# WHEELS=DIR installs what is missing from local wheel files first. Each run is cut at
# RUN_TIMEOUT_S seconds (default 300); its figures go to OUT_DIR/<name>.{log,json}.
set -euo pipefail
prog=benchmark_gpu.sh
case ${1:-} in
  -h|--help) sed -n '2,10p' "$0" | cut -c3-; exit 0 ;;
esac
cd "$(dirname "$0")/.."
out=${1:-results/benchmark}
python=${PYTHON:-python3}
mkdir -p "$out"
if [[ -n ${WHEELS:-} ]]; then
  packages=(ml_collections absl-py transformers)
  "$python" -m pip install -q --no-index --find-links "$WHEELS" "${packages[@]}" ||
    "$python" -m pip install -q --user --no-index --find-links "$WHEELS" "${packages[@]}" ||
    echo "$prog: could not install from $WHEELS; the reference may be missing" >&2
fi
"$python" -c 'import jax; print("jax", jax.__version__, jax.devices())'
# The PyTorch reference shares the device: JAX takes memory as it needs it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

run() {
  local name=$1
  shift
  timeout "${RUN_TIMEOUT_S:-300}" "$python" -m ecgclip_jax.benchmark --torch \
    --json "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log" ||
    echo "$prog: $name did not finish (exit ${PIPESTATUS[0]})" >&2
}

run paper_scale --config configs/paper_scale.py
# The demo model; its text tower's structure from a config file (no bundled weights needed).
run demo --config configs/demo.py --config.text.encoder_dir=configs/text_encoders/minilm_l6 \
  --config.text.pretrained=False --noparts
