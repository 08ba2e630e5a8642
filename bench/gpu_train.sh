#!/usr/bin/env bash
# One lent-GPU visit: train the strongest EBM and the DDPM that fit in about 8
# minutes of an H100/H200 together, and bring their registry entries and training
# logs back under $OUT as one tar split into 15 MiB pieces (the device tool returns
# at most 8 files of 16 MiB): `cat $OUT/entries.tar.part* | tar -x -C back/`.
#
# Prepare once, here (the device machine fetches nothing; it has torch, numpy,
# safetensors, tqdm, scikit-image and matplotlib, not pydantic):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.* pydantic-core annotated-types typing-inspection \
#     diffusers huggingface-hub regex importlib-metadata zipp filelock fsspec pyyaml \
#     packaging requests urllib3 idna certifi charset-normalizer typing-extensions hf-xet
# Smoke-test on the CPU (a few updates, same code path):
#   OUT=/tmp/out ITERATIONS=4 PRETRAIN=2 BATCH=8 CROPS=64 CALIBRATE=8 \
#     DDPM_ITERATIONS=4 DDPM_CHANNELS="16 32" bench/gpu_train.sh
# Then, through the device tool, with `.whl` carried and a 540 s timeout:
#   bench/gpu_train.sh
# Register what comes back: copy back/<name>-<version>/ to models/<name>/<version>/
# (loading checks the weights' sha256). The iteration counts are a guess at the time budget:
# no GPU has run this script yet.
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

# A DDPM U-Net (4 levels, 64-256 channels): noise prediction on t <= 250 of the
# paper's linear 1,000-step schedule, on the same images; its card at t* = 25-150.
DDPM_NAME=${DDPM_NAME:-cifar10-ddpm-gpu}
read -r -a CHANNELS <<< "${DDPM_CHANNELS:-64 128 256 256}"
python3 -m pureebm train "$DATA" --name "$DDPM_NAME" --registry "$REGISTRY" --recipe ddpm \
  --unet-channels "${CHANNELS[@]}" --iterations "${DDPM_ITERATIONS:-5000}" \
  --batch-size "${BATCH:-256}" --lr 2e-4 --lr-final 2e-5 --warmup 200 --holdout 660 \
  --skimage-crops "${CROPS:-20000}" --crop-padding 2 --calibrate-images "${CALIBRATE:-256}" \
  --checkpoint-every 1000 --out-dir "$OUT/ddpm-run" --device "${DEVICE:-auto}" \
  2>&1 | tee "$OUT/train-ddpm.log"

bundle=$(mktemp -d)
for name in "$NAME" "$DDPM_NAME"; do
  entry=$(ls -d "$REGISTRY/$name"/* | tail -n 1)
  cp -r "$entry" "$bundle/$name-$(basename "$entry")"
done
mv "$OUT/train.log" "$OUT/train-ddpm.log" "$bundle/"
rm -rf "$OUT/run" "$OUT/ddpm-run"  # checkpoints stay on the device: the entries come back
tar -C "$bundle" -cf - . | split -b 15M -d - "$OUT/entries.tar.part"
tar -C "$bundle" -tvf <(cat "$OUT"/entries.tar.part*)
ls -la "$OUT"
