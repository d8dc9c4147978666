#!/usr/bin/env bash
# The imagen_jax vs imagen-pytorch comparison on one NVIDIA GPU, bf16 on both sides.
# Installs nothing from the network: the machine needs JAX (CUDA),
# flax, optax, torch + torchvision; whatever else is missing travels as wheels made on a
# machine with PyPI by `bash benchmarks/fetch_bench_wheels.sh .whl` (imagen-pytorch 2.1.0
# and its pure dependencies, ml_collections).
#
#   bash benchmarks/gpu_recipe.sh OUT_DIR [WHEEL_DIR [all]]   (run from the repository root)
#
# Without `all` it runs the base 64x64 train step and input pipeline beside imagen-pytorch
# (under 8 minutes); `all` adds sampling and the SR stage (about 12 minutes).
#
# Writes OUT_DIR/{env.txt,base64_small.json,base64_small.log,sr256_small.json,...}; each
# run is bounded by `timeout` so a slow one cannot eat the next one's time.
set -uo pipefail
OUT=${1:?usage: gpu_recipe.sh OUT_DIR [WHEEL_DIR]}
WHL=${2:-.whl}
PY=${PYTHON:-python3}
SITE=${TMPDIR:-/tmp}/imagen_bench_site
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

if compgen -G "$WHL/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHL"/*.whl || exit 1
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi
# Our package against the machine's flax/optax; if that fails, the versions we test with.
if ! "$PY" -c "from imagen_jax.train import benchmark" 2>"$OUT/import_error.txt"; then
  if compgen -G "$WHL/fallback/*.whl" >/dev/null; then
    echo "imagen_jax did not import with the machine's packages; using $WHL/fallback"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHL"/fallback/*.whl || exit 1
  fi
  "$PY" -c "from imagen_jax.train import benchmark" || exit 1
fi

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" - <<'EOF'
import importlib.metadata as md
for name in ("jax", "jaxlib", "flax", "optax", "torch", "torchvision", "imagen-pytorch",
             "numpy"):
  try:
    print(f"{name}=={md.version(name)}")
  except md.PackageNotFoundError:
    print(f"{name}: not installed")
EOF
} | tee "$OUT/env.txt"

bench() {  # name, seconds, config, extra flags...
  local name=$1 limit=$2 config=$3
  shift 3
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$PY" scripts/benchmark.py --config "$config" --config.optim.name=adam \
      --peer imagen-pytorch --peer_python "$PY" --json "$OUT/$name.json" "$@" \
      >"$OUT/$name.log" 2>&1
  local status=$?
  echo "exit status $status"
  if [ "$status" -eq 0 ]; then
    sed -n '/ imagen_jax /,$p' "$OUT/$name.log"
  else
    grep -v -e '-> P(' "$OUT/$name.log" | tail -n 25
  fi
}

# The issue's headline: Imagen's base U-Net at one-GPU size (135M), 64x64, bf16. On the
# first H100 run (2026-11-26) our train step had not finished compiling after 270 s (170 s
# with --xla_gpu_enable_triton_gemm=false), so it gets most of the time here; sampling
# adds two more compiles and is measured only with `all`.
# IMAGEN_BENCH_XLA_FLAGS (e.g. --xla_gpu_autotune_level=0) is passed to XLA as XLA_FLAGS.
parts=train,input
[ "${3:-}" = all ] && parts=train,sample,input
XLA_FLAGS="${IMAGEN_BENCH_XLA_FLAGS:-}" bench base64_small 440 \
    configs/base64.py:variant=small,data=shapes --batch 64 --only "$parts" \
    --sample_batch 16 --sample_steps 32 --repeats 5 --inner 5
# The 64->256 Efficient U-Net (SR) at one-GPU size (compiled in 82 s on the H100).
if [ "${3:-}" = all ]; then
  XLA_FLAGS="${IMAGEN_BENCH_XLA_FLAGS:-}" bench sr256_small 240 \
      configs/sr256.py:variant=small,data=shapes --batch 32 \
      --sample_batch 8 --sample_steps 16 --repeats 3 --inner 3 --input_seconds 3
fi
