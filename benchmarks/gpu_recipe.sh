#!/usr/bin/env bash
# The imagen_jax vs imagen-pytorch comparison on one NVIDIA GPU, bf16 on both sides.
# Installs nothing from the network: the machine needs JAX (CUDA),
# flax, optax, torch + torchvision; whatever else is missing travels as wheels made on a
# machine with PyPI by `bash benchmarks/fetch_bench_wheels.sh .whl` (imagen-pytorch 2.1.0
# and its pure dependencies, ml_collections).
#
#   bash benchmarks/gpu_recipe.sh OUT_DIR [WHEEL_DIR [quick|tuned|sr|all]]   (from the repo root)
#
# The headline is Imagen's base U-Net at one-GPU size (configs/base64.py:variant=small,
# 135M, 64x64, batch 64). On the first H100 run our train step had not finished compiling
# after 270 s with XLA's default autotuning, so the phases put a guaranteed figure first:
#   quick  (default, ~5 min) imagen-pytorch, then ours with --xla_gpu_autotune_level=0
#          (cuDNN/cuBLAS heuristics, no autotuning): train step, sampling, input pipeline.
#   tuned  (<= 9.5 min) ours alone with XLA's default flags (autotuned): train step and
#          sampling, to compare with `quick` on the same machine.
#   sr     (~4 min) the 64->256 Efficient U-Net beside imagen-pytorch.
#   all    quick, then sr.
# Each run is bounded by `timeout`, so a slow one cannot eat the next one's time, and every
# JSON is written after each part, so a stopped run keeps what it measured.
# JAX's persistent compilation cache is kept in $IMAGEN_BENCH_CACHE (default
# .jax_cache_bench in the repository, which git ignores): a rerun of a phase on the same
# machine skips its compiles. IMAGEN_BENCH_XLA_FLAGS, if set (even empty), replaces the XLA_FLAGS of `quick`.
#
# Writes OUT_DIR/{env.txt,base64_small_autotune0.json,base64_small.json,sr256_small.json}
# and a .log beside each.
set -uo pipefail
OUT=${1:?usage: gpu_recipe.sh OUT_DIR [WHEEL_DIR [quick|tuned|sr|all]]}
WHL=${2:-.whl}
PHASE=${3:-quick}
case "$PHASE" in quick|tuned|sr|all) ;; *)
  echo "gpu_recipe.sh: unknown phase '$PHASE'; expected quick, tuned, sr or all" >&2; exit 2;;
esac
PY=${PYTHON:-python3}
SITE=${TMPDIR:-/tmp}/imagen_bench_site
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
export JAX_COMPILATION_CACHE_DIR=${IMAGEN_BENCH_CACHE:-$PWD/.jax_cache_bench}
# Threefry as one CUDA kernel instead of its unrolled 20 rounds per call: the same bits, and a
# much smaller program for the state's initialiser, which hashes once per parameter tensor
# (770 of them in base64 small; on CPU that initialiser alone compiles in ~40 s).
export JAX_THREEFRY_GPU_KERNEL_LOWERING=${JAX_THREEFRY_GPU_KERNEL_LOWERING:-1}

if compgen -G "$WHL/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHL"/*.whl || exit 1
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi
# Our package against the machine's flax/optax; if that fails, the versions we test with.
if ! "$PY" -c "from imagen_jax.perf import benchmark" 2>"$OUT/import_error.txt"; then
  if compgen -G "$WHL/fallback/*.whl" >/dev/null; then
    echo "imagen_jax did not import with the machine's packages; using $WHL/fallback"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHL"/fallback/*.whl || exit 1
  fi
  "$PY" -c "from imagen_jax.perf import benchmark" || exit 1
fi

{
  date -u +%FT%TZ
  echo "JAX_THREEFRY_GPU_KERNEL_LOWERING=$JAX_THREEFRY_GPU_KERNEL_LOWERING"
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

bench() {  # name, seconds, XLA_FLAGS, config, extra flags...
  local name=$1 limit=$2 xla_flags=$3 config=$4
  shift 4
  echo "== $name (at most ${limit}s; XLA_FLAGS='$xla_flags')"
  XLA_FLAGS="$xla_flags" timeout "$limit" "$PY" scripts/benchmark.py --config "$config" \
      --config.optim.name=adam --json "$OUT/$name.json" "$@" >"$OUT/$name.log" 2>&1
  local status=$?
  echo "exit status $status"
  if [ "$status" -eq 0 ]; then
    sed -n '/ imagen_jax /,$p' "$OUT/$name.log"
  else
    grep -v -e '-> P(' "$OUT/$name.log" | tail -n 25
  fi
}

BASE=(configs/base64.py:variant=small,data=shapes --batch_size 64 --sample_batch 16
      --sample_steps 32 --repeats 5 --inner 5 --input_seconds 3)
PEER=(--peer imagen-pytorch --peer_python "$PY" --peer_timeout 150)
if [ "$PHASE" = quick ] || [ "$PHASE" = all ]; then
  bench base64_small_autotune0 360 "${IMAGEN_BENCH_XLA_FLAGS---xla_gpu_autotune_level=0}" \
      "${BASE[@]}" "${PEER[@]}"
fi
if [ "$PHASE" = tuned ]; then
  bench base64_small 570 "" "${BASE[@]}" --only train,sample
fi
# The 64->256 Efficient U-Net (SR) at one-GPU size (compiled in 82 s on the H100).
if [ "$PHASE" = sr ] || [ "$PHASE" = all ]; then
  bench sr256_small 240 "" configs/sr256.py:variant=small,data=shapes --batch_size 32 \
      --sample_batch 8 --sample_steps 16 --repeats 3 --inner 3 --input_seconds 3 "${PEER[@]}"
fi
