#!/usr/bin/env bash
# Wheels for benchmarks/gpu_recipe.sh on a GPU machine without network (Python 3.12,
# x86-64 Linux; PYVER / PLATFORM change that): imagen-pytorch 2.1.0 and the dependencies
# such a machine usually lacks, plus in WHEEL_DIR/fallback the flax / optax / orbax versions
# imagen_jax is tested with (used only when the machine's own fail to import it).
#
#   bash benchmarks/fetch_bench_wheels.sh .whl      (on a machine that reaches PyPI)
set -euo pipefail
DIR=${1:?usage: fetch_bench_wheels.sh WHEEL_DIR}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-python3}
mkdir -p "$DIR/fallback"
get() {  # dest, requirement...
  local dest=$1
  shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
      --implementation cp --platform "${PLATFORM:-manylinux2014_x86_64}" \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$dest" "$@"
}
for req in imagen-pytorch==2.1.0 beartype ema-pytorch kornia kornia-rs pytorch-warmup \
    pydantic pydantic-core annotated-types typing-inspection typing-extensions \
    ml-collections; do
  get "$DIR" "$req"
done
for req in flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 etils; do
  get "$DIR/fallback" "$req"
done
ls -l "$DIR" "$DIR/fallback"
