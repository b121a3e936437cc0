#!/usr/bin/env bash
# Run ON the GPU machine (no TensorFlow there, no internet): capslib on the JAX backend.
#   device run, carry [".whl", ".devdata"], command: bash bench/gpu/run.sh
# Writes every log and JSON to $OUT (or ./gpu-out): throughput in float32 and bfloat16, a measured
# 60k-image epoch, and (unless SKIP_TRAIN=1) full Fashion-MNIST training with test accuracy per epoch.
# QUICK=1 shrinks everything for a smoke test on a CPU machine with capslib's venv.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
if [ -d .whl ] && ! $PY -c "import keras" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
export KERAS_HOME=${KERAS_HOME:-/tmp/keras-home}
mkdir -p "$KERAS_HOME/datasets/fashion-mnist" && cp -n .devdata/fashion-mnist/*.gz "$KERAS_HOME/datasets/fashion-mnist/" 2>/dev/null
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1;
  $PY -c "import jax, keras, numpy; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'numpy', numpy.__version__)"; } | tee "$OUT/env.txt"
$PY -m capslib.doctor --json > "$OUT/doctor.json" 2>"$OUT/doctor.err"

if [ "${QUICK:-0}" = 1 ]; then T="--quick"; E="--epochs 1 --train-size 64 --test-size 32 --batch-size 16"
else T="--batch-sizes 64,128,256,512,1024 --steps 50 --repeats 5 --epoch --shift"; E="--epochs ${EPOCHS:-30} --batch-size ${BATCH:-128}"; fi
for mp in off bfloat16; do
  $PY bench/gpu_throughput.py $T --mixed-precision $mp --data fashion_mnist --json "$OUT/throughput_$mp.json" 2>&1 | tee "$OUT/throughput_$mp.log"
done
if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  $PY -m capslib.train --dataset fashion_mnist $E --mixed-precision ${TRAIN_PRECISION:-bfloat16} \
      --out "$OUT/fashion" --verbose 2 --no-tensorboard 2>&1 | tee "$OUT/train_fashion.log"
  cp "$OUT/fashion/history.json" "$OUT/fashion_history.json" 2>/dev/null
fi
