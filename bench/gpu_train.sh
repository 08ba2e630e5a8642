#!/usr/bin/env bash
# One lent-GPU visit, bounded by the clock: train the biggest DDPM and then the
# strongest EBM that fit, measure throughput at the paper's settings, run the CUDA
# tests, and bring it all back under $OUT.
#
# Every stage runs against one deadline (BUDGET seconds from the start, 520 by
# default, inside the device tool's 540 s call). Trainings are bounded by
# `--max-seconds` (their learning-rate schedule runs on time) and checkpoint every
# CHECKPOINT_SECONDS; a training cut by its stage's hard limit is registered from
# its last checkpoint. Each entry is packed into $OUT as soon as it is registered,
# so a visit cut later still brings back what it finished. What comes back: at
# most 6 files under 15 MiB (the tool returns 8 of 16 MiB):
#   $OUT/<name>.tar.partNN   one registry entry each (split at 15 MiB)
#   $OUT/logs.tar            training logs, throughput.json, the CUDA tests' output
# Register: `cat $OUT/<name>.tar.part* | tar -x -C models/` adds the preset
# (<name>/<version>/, renumbered by hand if that version exists) and its weights
# (_weights/<sha256>/); models/DEFAULT does not move.
#
# Prepare once, here: `bench/gpu_wheels.sh` puts the wheels the device machine lacks
# (pydantic, diffusers, pytest and what they need) in .whl/, which the run carries.
# Smoke-test on the CPU, through the same commands with tiny budgets:
#   SMOKE=1 OUT=/tmp/out bench/gpu_train.sh
# Then, through the device tool, with carry [".whl"] and a 540 s timeout:
#   bench/gpu_train.sh
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
mkdir -p "$OUT"
if [ -n "${SMOKE:-}" ]; then  # tiny budgets, the same code path
  : "${BUDGET:=150}" "${DDPM_SECONDS:=4}" "${EBM_SECONDS:=4}" "${DDPM_CHANNELS:=8 16}"
  : "${N_F:=8}" "${CHECKPOINT_SECONDS:=2}" "${BATCH:=8}" "${CROPS:=64}" "${CALIBRATE:=8}" "${PRETRAIN:=20}"
  : "${BENCH_IMAGES:=16}" "${BENCH_BATCH:=8}" "${BENCH_EBM_STEPS:=2}" "${BENCH_DDPM_STEPS:=2}"
fi
BUDGET=${BUDGET:-520}            # seconds for the whole script
DDPM_SECONDS=${DDPM_SECONDS:-210}  # DDPM updates; the EBM gets what is left
RESERVE=${RESERVE:-80}           # kept for throughput, the CUDA tests and packing
CHECKPOINT_SECONDS=${CHECKPOINT_SECONDS:-45}
if [ -d .whl ] && [ -z "${SMOKE:-}" ]; then  # the wheels are for the device's Python
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-15}  # a progress line every 15 s in the logs
REGISTRY=${REGISTRY:-$(mktemp -d)}  # may hold an entry to reuse: EBM_SECONDS=0 skips training one
WORK=$(mktemp -d)
LOGS=$WORK/logs
mkdir -p "$LOGS"
DATA=${DATA:-../shared/datasets/cifar10-part-train.npz}
[ -f "$DATA" ] || DATA=shared/datasets/cifar10-part-train.npz  # carried into the tree
DDPM_NAME=${DDPM_NAME:-cifar10-ddpm-gpu}
EBM_NAME=${EBM_NAME:-cifar10-resnet-gpu}

left() { echo $((BUDGET - SECONDS)); }

# train NAME SECONDS ARGS...: `pureebm train` with --max-seconds SECONDS, cut at
# twice that plus a minute (data, calibration, card); if cut, the last checkpoint is
# registered (--resume with a spent budget). Then the entry is packed into $OUT.
train() {
  local name=$1 seconds=$2
  shift 2
  local common=(--name "$name" --registry "$REGISTRY" --out-dir "$WORK/$name"
    --holdout 660 --checkpoint-seconds "$CHECKPOINT_SECONDS" --device "${DEVICE:-auto}"
    --calibrate-images "${CALIBRATE:-256}" --skimage-crops "${CROPS:-20000}" --crop-padding 2)
  local limit=${STAGE_LIMIT:-$((2 * seconds + 60))}
  echo "== $name: $seconds s of updates, cut at $limit s ($(left) s left)"
  if ! timeout -s KILL "$limit" python3 -m pureebm train "$DATA" "${common[@]}" "$@" \
    --max-seconds "$seconds" 2>&1 | tee "$LOGS/train-$name.log"; then
    echo "== $name was cut: registering its last checkpoint"
    python3 -m pureebm train "$DATA" "${common[@]}" "$@" --resume --max-seconds 0.001 \
      --calibrate-images 0 2>&1 | tee -a "$LOGS/train-$name.log" || return 0
  fi
  local entry weights
  entry=$(ls -d "$REGISTRY/$name"/* | sort -V | tail -n 1)
  weights=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['weights'])" \
    "$entry/preset.json")
  tar -C "$REGISTRY" -cf - "$name/$(basename "$entry")" "_weights/$weights" |
    split -b 15M -d - "$OUT/$name.tar.part"
}

# 1. The DDPM: the likelier purifier. A 3-level U-Net (48-192 channels, 5.5 M
# parameters, 21 MiB), noise prediction on t <= 250 of the paper's schedule.
read -r -a CHANNELS <<< "${DDPM_CHANNELS:-48 96 192}"
train "$DDPM_NAME" "$DDPM_SECONDS" --recipe ddpm --unet-channels "${CHANNELS[@]}" \
  --iterations 1000000 --batch-size "${BATCH:-256}" --lr 2e-4 --lr-final 2e-5 --warmup 200 --bf16

# 2. The paper's residual EBM (n_f = 128, 1.05 M parameters), in the time left:
# denoising score matching first (no MCMC), then maximum likelihood with
# 100-step chains; registration calibrates within the training's own cost. In
# float32: the maximum-likelihood loss is a small difference of energies.
EBM_SECONDS=${EBM_SECONDS:-$(( ($(left) - RESERVE - 60) / 2 ))}
if [ "$EBM_SECONDS" -gt 0 ]; then
  train "$EBM_NAME" "$EBM_SECONDS" --architecture resnet --n-f "${N_F:-128}" --recipe dsm+ml \
    --pretrain-iterations "${PRETRAIN:-4000}" --iterations 1000000 \
    --batch-size "${BATCH:-256}" --mcmc-steps 100 --lr 3e-4 --lr-final 3e-5 --warmup 200 \
    --tau 1 --sigma-min 0.02 --sigma-max 0.25
fi

# 3. Throughput at the paper's settings, then the CUDA tests, in what is left.
refs=()
[ -d "$REGISTRY/$EBM_NAME" ] && refs+=(--ebm "$EBM_NAME")
[ -d "$REGISTRY/$DDPM_NAME" ] && refs+=(--ddpm "$DDPM_NAME")
if [ "$(left)" -gt 30 ] && [ ${#refs[@]} -gt 0 ]; then
  timeout -s KILL $(( $(left) - 25 )) python3 -m bench.throughput "${refs[@]}" \
    --registry "$REGISTRY" --data "$DATA" --images "${BENCH_IMAGES:-2048}" --batch-size "${BENCH_BATCH:-1024}" \
    --ebm-steps "${BENCH_EBM_STEPS:-150}" --ddpm-steps "${BENCH_DDPM_STEPS:-75}" \
    --out "$LOGS/throughput.json" 2>&1 | tee "$LOGS/throughput.log" || true
fi
if [ "$(left)" -gt 15 ]; then
  timeout -s KILL $(( $(left) - 8 )) python3 -m pytest -m cuda -v -p no:cacheprovider \
    tests/test_langevin.py tests/test_noise.py 2>&1 | tee "$LOGS/cuda-tests.log" || true
fi
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1 || true
tar -C "$WORK" -cf "$OUT/logs.tar" logs
ls -la "$OUT"
echo "== done in $SECONDS s"
