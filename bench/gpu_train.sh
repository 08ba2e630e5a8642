#!/usr/bin/env bash
# One lent-GPU visit against one deadline (BUDGET seconds, 520 by default, inside the
# device tool's 540 s call), in this order:
#   1. resume the strongest DDPM in models/ from its EMA weights (a new architecture only
#      when its card stopped improving: bench/lineage.py) and train it on the GPU-resident
#      data: batch 1,024, bf16 autocast and channels_last, a compiled step, fused Adam,
#      EMA; register it with its lineage (GPU-seconds and updates so far, TFLOP/s, card)
#      and pack it into $OUT at once;
#   2. the same for the strongest EBM (denoising score matching, float32), in the time left;
#   3. purification throughput at the paper's settings, eager against compiled;
#   4. the training step's TFLOP/s, eager against compiled;
#   5. the CUDA tests.
# Trainings are bounded by `--max-seconds` (their learning rate runs on time) and
# checkpoint every CHECKPOINT_SECONDS; a training cut by its stage's hard limit is
# registered from its last checkpoint, so a cut visit still brings weights back.
# What comes back: at most 6 files under 15 MiB (the tool returns 8 of 16 MiB):
#   $OUT/<name>.tar.partNN   one registry entry each (split at 15 MiB)
#   $OUT/logs.tar            training logs, throughput.json, train_step.json, CUDA tests
# Register: `cat $OUT/<name>.tar.part* | tar -x -C models/` adds <name>/<version>/ and
# _weights/<sha256>/ (the registry here was a copy of models/, so the version numbers
# follow on); move the presets that should use it, then drop the replaced weights so
# that `python -m bench.travel_size .whl` stays under 60 MiB.
#
# Prepare once, here: `bench/gpu_wheels.sh` puts the wheels the device machine lacks
# (pydantic, diffusers, pytest and what they need) in .whl/, which the run carries;
# `python -m bench.travel_size .whl` checks what travels.
# Smoke-test on the CPU, through the same commands with tiny budgets:
#   SMOKE=1 OUT=/tmp/out bench/gpu_train.sh
# Then, through the device tool, with carry [".whl"] and a 540 s timeout:
#   bench/gpu_train.sh
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
mkdir -p "$OUT"
if [ -n "${SMOKE:-}" ]; then  # tiny budgets, the same code path
  : "${BUDGET:=400}" "${DDPM_SECONDS:=3}" "${EBM_SECONDS:=3}" "${NEW_DDPM_CHANNELS:=8 16}"
  : "${CHECKPOINT_SECONDS:=2}" "${BATCH:=8}" "${CROPS:=64}" "${CALIBRATE:=8}"
  : "${BENCH_IMAGES:=16}" "${BENCH_BATCH:=8}" "${BENCH_EBM_STEPS:=2}" "${BENCH_DDPM_STEPS:=2}"
  : "${STEP_CHANNELS:=8 16}" "${STEP_STEPS:=2}" "${RESERVE:=240}"
  COMPILE=${COMPILE-}  # compiling the 5.5 M U-Net's step takes minutes on 2 CPU cores
fi
COMPILE=${COMPILE---compile}
BUDGET=${BUDGET:-520}              # seconds for the whole script
DDPM_SECONDS=${DDPM_SECONDS:-180}  # DDPM updates; the EBM gets what is left
RESERVE=${RESERVE:-150}            # kept for throughput, the step bench, the tests, packing
CHECKPOINT_SECONDS=${CHECKPOINT_SECONDS:-45}
if [ -d .whl ] && [ -z "${SMOKE:-}" ]; then  # the wheels are for the device's Python
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-15}  # a progress line every 15 s in the logs
WORK=$(mktemp -d)
LOGS=$WORK/logs
mkdir -p "$LOGS"
REGISTRY=$WORK/registry  # a copy of models/: resumed entries are found, versions follow on
cp -r models "$REGISTRY"
DATA=${DATA:-../shared/datasets/cifar10-part-train.npz}
[ -f "$DATA" ] || DATA=shared/datasets/cifar10-part-train.npz  # carried into the tree
DDPM_NAME=${DDPM_NAME:-cifar10-ddpm}
EBM_NAME=${EBM_NAME:-cifar10-resnet}
EMA=${EMA:-0.999}

left() { echo $((BUDGET - SECONDS)); }
latest() { ls "$REGISTRY/$1" 2>/dev/null | sort -n | tail -n 1; }

# train NAME SECONDS ARGS...: `pureebm train` with --max-seconds SECONDS, cut at
# twice that plus two minutes (data, compilation, card); if cut, the last checkpoint
# is registered (--resume with a spent budget). A new version is packed into $OUT.
train() {
  local name=$1 seconds=$2
  shift 2
  local common=(--name "$name" --registry "$REGISTRY" --out-dir "$WORK/$name"
    --holdout 660 --checkpoint-seconds "$CHECKPOINT_SECONDS" --device "${DEVICE:-auto}"
    --calibrate-images "${CALIBRATE:-256}" --skimage-crops "${CROPS:-20000}" --crop-padding 2
    --ema-decay "$EMA" --iterations 1000000 --batch-size "${BATCH:-1024}" --warmup 100)
  local limit=${STAGE_LIMIT:-$((2 * seconds + 120))} before
  before=$(latest "$name")
  echo "== $name: $seconds s of updates, cut at $limit s ($(left) s left)"
  if ! timeout -s KILL "$limit" python3 -m pureebm train "$DATA" "${common[@]}" "$@" \
    --max-seconds "$seconds" 2>&1 | tee "$LOGS/train-$name.log"; then
    [ -f "$WORK/$name/checkpoint.safetensors" ] || { echo "== $name: cut before a checkpoint"; return 0; }
    echo "== $name was cut: registering its last checkpoint"
    local eager=()  # the checkpoint's budget is spent: no update runs, nothing to compile
    for arg in "$@"; do [ "$arg" = --compile ] || eager+=("$arg"); done
    python3 -m pureebm train "$DATA" "${common[@]}" "${eager[@]}" --resume --max-seconds 0.001 \
      --calibrate-images 0 2>&1 | tee -a "$LOGS/train-$name.log" || return 0
  fi
  local version weights
  version=$(latest "$name")
  [ "$version" != "$before" ] || { echo "== $name: nothing registered"; return 0; }
  weights=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['weights'])" \
    "$REGISTRY/$name/$version/preset.json")
  tar -C "$REGISTRY" -cf - "$name/$version" "_weights/$weights" |
    split -b 15M -d - "$OUT/$name.tar.part"
  python3 -m bench.lineage "$name:$version" --registry "$REGISTRY" | tee -a "$LOGS/lineage.txt" || true
}

# 1. The DDPM, the likelier purifier: resumed while its card improves.
if python3 -m bench.lineage "$DDPM_NAME" --registry "$REGISTRY"; then
  ddpm_start=(--init-from "$DDPM_NAME")
else
  read -r -a CHANNELS <<< "${NEW_DDPM_CHANNELS:-64 128 256}"
  ddpm_start=(--unet-channels "${CHANNELS[@]}")
fi
ddpm_before=$(latest "$DDPM_NAME")
train "$DDPM_NAME" "$DDPM_SECONDS" --recipe ddpm "${ddpm_start[@]}" --bf16 $COMPILE \
  --lr 2e-4 --lr-final 2e-5
# a compiled step that failed before its first checkpoint must not cost the visit its
# DDPM: train eagerly in half the time instead
if [ "$(latest "$DDPM_NAME")" = "$ddpm_before" ] && [ -n "$COMPILE" ] \
  && [ "$(left)" -gt $(( DDPM_SECONDS / 2 + RESERVE )) ]; then
  echo "== $DDPM_NAME: nothing registered with $COMPILE; eager, in half the time"
  rm -rf "${WORK:?}/$DDPM_NAME"
  train "$DDPM_NAME" $(( DDPM_SECONDS / 2 )) --recipe ddpm "${ddpm_start[@]}" --bf16 \
    --lr 2e-4 --lr-final 2e-5
fi

# 2. The paper's residual EBM (n_f = 128), resumed, by denoising score matching (the
# maximum-likelihood stage diverged on the last visit), in float32, in the time left.
EBM_SECONDS=${EBM_SECONDS:-$(( ($(left) - RESERVE - 60) / 2 ))}
if [ "$EBM_SECONDS" -gt 0 ]; then
  train "$EBM_NAME" "$EBM_SECONDS" --recipe dsm --init-from "$EBM_NAME" \
    --lr 1e-4 --lr-final 1e-5 --tau 1 --sigma-min 0.02 --sigma-max 0.25
fi

# 3. Purification throughput at the paper's settings: fp32, bf16, bf16 compiled.
if [ "$(left)" -gt 40 ]; then
  timeout -s KILL $(( $(left) - 30 )) python3 -m bench.throughput --ebm "$EBM_NAME" \
    --ddpm "$DDPM_NAME" --registry "$REGISTRY" --data "$DATA" --images "${BENCH_IMAGES:-2048}" \
    --batch-size "${BENCH_BATCH:-1024}" --ebm-steps "${BENCH_EBM_STEPS:-150}" \
    --ddpm-steps "${BENCH_DDPM_STEPS:-75}" --out "$LOGS/throughput.json" 2>&1 |
    tee "$LOGS/throughput.log" || true
fi

# 4. The training step of the resumed DDPM's size, eager against compiled.
if [ "$(left)" -gt 40 ]; then
  read -r -a STEP <<< "${STEP_CHANNELS:-48 96 192}"
  timeout -s KILL $(( $(left) - 25 )) python3 -m bench.train_step --channels "${STEP[@]}" \
    --batch-sizes "${BATCH:-1024}" --steps "${STEP_STEPS:-30}" --out "$LOGS/train_step.json" \
    2>&1 | tee "$LOGS/train_step.log" || true
fi

# 5. The CUDA tests, the compiled paths' included.
if [ "$(left)" -gt 15 ]; then
  timeout -s KILL $(( $(left) - 8 )) python3 -m pytest -v -p no:cacheprovider \
    -k "cuda or speedups" tests/test_langevin.py tests/test_noise.py tests/test_diffusion.py \
    2>&1 | tee "$LOGS/cuda-tests.log" || true
fi
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1 || true
tar -C "$WORK" -cf "$OUT/logs.tar" logs
ls -la "$OUT"
echo "== done in $SECONDS s"
