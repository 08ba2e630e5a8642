#!/usr/bin/env bash
# One lent-GPU visit: train the strongest EBM that fits in about 8 minutes of an
# H100/H200 and bring its registry entry back under $OUT (files under 16 MiB).
#
# Prepare once, here (the device machine fetches nothing; it has torch, numpy,
# safetensors, tqdm, scikit-image and matplotlib, not pydantic):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.* pydantic-core annotated-types typing-inspection
# Smoke-test on the CPU (a few updates, same code path):
#   OUT=/tmp/out ITERATIONS=4 PRETRAIN=2 BATCH=8 CROPS=64 CALIBRATE=8 bench/gpu_train.sh
# Then, through the device tool, with `.whl` carried and a 540 s timeout:
#   bench/gpu_train.sh
# Register what comes back: copy $OUT/<name>-<version>/ to models/<name>/<version>/.
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
NAME=${NAME:-cifar10-resnet-gpu}
REGISTRY=$(mktemp -d)
DATA=${DATA:-../shared/datasets/cifar10-part-train.npz}
[ -f "$DATA" ] || DATA=shared/datasets/cifar10-part-train.npz  # carried into the tree

# The paper's residual EBM (n_f = 128, 1.05 M parameters): denoising score matching
# first (no MCMC: fast), then maximum likelihood with 100-step chains from a
# persistent bank, on the shared images plus photo crops.
python3 -m pureebm train "$DATA" --name "$NAME" --registry "$REGISTRY" \
  --architecture resnet --n-f 128 --recipe dsm+ml \
  --pretrain-iterations "${PRETRAIN:-6000}" --iterations "${ITERATIONS:-7000}" \
  --batch-size "${BATCH:-256}" --mcmc-steps 100 --lr 3e-4 --lr-final 3e-5 --warmup 200 \
  --tau 1 --sigma-min 0.02 --sigma-max 0.25 --holdout 660 \
  --skimage-crops "${CROPS:-20000}" --crop-padding 2 \
  --calibrate-images "${CALIBRATE:-256}" --checkpoint-every 1000 \
  --out-dir "$OUT/run" --device "${DEVICE:-auto}" 2>&1 | tee "$OUT/train.log"

entry=$(ls -d "$REGISTRY/$NAME"/* | tail -n 1)
mkdir -p "$OUT/$NAME-$(basename "$entry")"
cp "$entry"/* "$OUT/$NAME-$(basename "$entry")/"
rm -rf "$OUT/run"  # checkpoints stay on the device: the entry is what comes back
ls -la "$OUT" "$OUT/$NAME-$(basename "$entry")"
