#!/usr/bin/env bash
# The CPU table of BENCHMARKS.md: imagen_jax vs imagen-pytorch (float32 both) at 32x32 and
# 64x64, tiny and small U-Nets, run one after another (they share the cores).
#   bash benchmarks/cpu_suite.sh OUT_DIR [PEER_PYTHON]
set -uo pipefail
OUT=${1:?usage: cpu_suite.sh OUT_DIR [PEER_PYTHON]}
PEER=${2:-.venv-peer/bin/python}
PY=${PYTHON:-python}
# Our side's XLA flags (measured in BENCHMARKS.md, "Where the CPU time goes"): one virtual
# device per core, the batch split over them, because jaxlib 0.10.2 runs each YNNPACK
# convolution on one core; and Eigen's convolutions instead of YNNPACK's, which sample faster.
# Set XLA_FLAGS yourself to run otherwise (XLA_FLAGS= runs XLA's defaults on one device).
export XLA_FLAGS=${XLA_FLAGS-"--xla_force_host_platform_device_count=$(nproc) \
--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"}
echo "XLA_FLAGS=$XLA_FLAGS"
mkdir -p "$OUT"
common=(--config.optim.name=adam --peer imagen-pytorch --peer_python "$PEER" --peer_device cpu
        --repeats 3 --inner 3 --sample_batch 8 --sample_steps 16 --input_seconds 3)
run() {  # name, config, flags...
  local name=$1 config=$2
  shift 2
  echo "== $name"
  "$PY" scripts/benchmark.py --config "$config" "${common[@]}" "$@" \
      --json "$OUT/$name.json" >"$OUT/$name.log" 2>&1
  echo "exit status $?"
  sed -n '/ imagen_jax /,$p' "$OUT/$name.log"
}
run base32_tiny configs/shapes.py:stage=base,variant=tiny --batch_size 32 \
    --config.model.name=shapes_base32 --config.input.resolution=32
run base32_small configs/shapes.py:stage=base,variant=small --batch_size 32 \
    --config.model.name=shapes_base32 --config.input.resolution=32
run base64_tiny configs/base64.py:variant=tiny,data=shapes --batch_size 16
