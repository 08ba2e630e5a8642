#!/usr/bin/env bash
# One lent-GPU visit for the defence evaluation: the attack suite against the
# candidate purifiers, as many `pureebm eval` runs side by side as the GPU takes,
# all against one deadline (BUDGET seconds, inside the device tool's 540 s call).
#
# One run per (attack, seed), each over targets 0 1 2 and every defence in
# DEFENCES. An attack is ATTACK:EPS[:POISON_FRACTION] (2% unless given); ATTACKS
# (space-separated) replaces the list, whose first two are the shares at which
# patch and the defence-aware Narcissus hold (measured on the CPU for seed 0, the
# DDPM's rows too). Runs share a cache of defended sets (`--cache`), so the clean
# training set is purified once per defence, not once per run. Each run rewrites its
# results.json after every target, so a run cut at the deadline keeps the targets
# it finished. The tuning seeds (SEEDS) go first; the held-out seed (HELD_OUT)
# runs only in the slots left and lands in heldout-* folders, to be read once, after
# the default is chosen. Every 30 s and at the end, all of it is packed into
# $OUT/eval.tar (results, logs, nvidia-smi): a cut call still brings it back.
#
# Prepare once, here: `bench/gpu_wheels.sh`. Smoke-test on the CPU (tiny set, one
# epoch, cheap defences, the same commands):
#   SMOKE=1 OUT=/tmp/out DATA=data/cifar10-part-train.npz bench/gpu_eval.sh
# Then, through the device tool, carrying the wheels and the data set, 540 s:
#   DATA=data/cifar10-part-train.npz OUT=$OUT bench/gpu_eval.sh
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
mkdir -p "$OUT"
DDPM=${DDPM:-cifar10-ddpm:3}
EBM=${EBM:-cifar10-resnet:2}
# DEFENCES (space-separated) replaces this list, for instance with the purifiers that
# need no ranking: reps:ddpm_model=$DDPM, langevin:steps=3,init_noise=0.05, jpeg:50,
# and filt:0.5:3:1 (the rest purified lightly, not passed through raw)
read -r -a DEFENCES <<< "${DEFENCES:-none filt:0.5:3 jpeg:75 ddpm:model=$DDPM,steps=75 \
ddpm:model=$DDPM,steps=125 langevin:model=$EBM}"
read -r -a ATTACKS <<< "${ATTACKS:-patch:16:0.1 narcissus-adaptive:16:0.05 narcissus:16 \
narcissus:8 narcissus-x3:16 narcissus-adaptive:16 gradient-matching:16 patch:16 blend:16}"
if [ -n "${SMOKE:-}" ]; then  # tiny budgets, the same code path
  : "${BUDGET:=300}" "${PARALLEL:=2}" "${EXTRA:=--limit 300 --epochs 1}" "${DEVICE:=cpu}"
  DEFENCES=(none filt:0.5:3 jpeg:75 "ddpm:model=$DDPM,steps=2" "langevin:model=$EBM,steps=1")
  ATTACKS=(narcissus:16 gradient-matching:16 patch:16:0.1)
  : "${SEEDS:=0}" "${TARGETS:=0}"
fi
BUDGET=${BUDGET:-500}
PARALLEL=${PARALLEL:-14}
SEEDS=${SEEDS:-0 1}
HELD_OUT=${HELD_OUT:-2}
TARGETS=${TARGETS:-0 1 2}
DATA=${DATA:-../shared/datasets/cifar10-part-train.npz}
if [ -d .whl ] && [ -z "${SMOKE:-}" ]; then  # the wheels are for the device's Python
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export TQDM_DISABLE=1
WORK=$(mktemp -d)
mkdir -p "$WORK/eval" "$WORK/logs"
DEADLINE=$((SECONDS + BUDGET))

pack() {
  nvidia-smi > "$WORK/logs/nvidia-smi.txt" 2>&1 || true
  tar -C "$WORK" -cf "$OUT/eval.tar.partial" eval logs && mv "$OUT/eval.tar.partial" "$OUT/eval.tar"
}

# evaluate FOLDER ATTACK:EPS[:FRACTION] SEED: one `pureebm eval`, killed at the deadline.
evaluate() {
  local folder=$1 attack eps fraction seed=$3
  IFS=: read -r attack eps fraction <<< "$2"
  local left=$((DEADLINE - SECONDS - 10))
  [ "$left" -gt 20 ] || return 0
  local started=$SECONDS
  timeout -s KILL "$left" python3 -m pureebm eval "$DATA" --attack "$attack" --eps "$eps/255" \
    --poison-fraction "${fraction:-0.02}" --targets $TARGETS --seeds "$seed" --defences "${DEFENCES[@]}" \
    --no-test-defence --device "${DEVICE:-cuda}" --purify-batch "${PURIFY_BATCH:-512}" \
    --cache "$WORK/cache" --out "$WORK/eval/$folder" ${EXTRA:-} \
    > "$WORK/logs/$folder.log" 2>&1 || echo "exit $? after $((SECONDS - started)) s" >> "$WORK/logs/$folder.log"
  echo "== $folder: $((SECONDS - started)) s"
}

runs=()
for seed in $SEEDS; do
  for attack in "${ATTACKS[@]}"; do runs+=("${attack//:/-}-seed$seed $attack $seed"); done
done
for attack in "${ATTACKS[@]}"; do runs+=("heldout-${attack//:/-}-seed$HELD_OUT $attack $HELD_OUT"); done

(while sleep 30; do pack; done) &
packer=$!
running=0
for run in "${runs[@]}"; do
  read -r folder attack seed <<< "$run"
  evaluate "$folder" "$attack" "$seed" &
  running=$((running + 1))
  if [ "$running" -ge "$PARALLEL" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait $(jobs -rp | grep -vx "$packer") 2>/dev/null || true
kill "$packer" 2>/dev/null || true
pack
ls -la "$OUT"
echo "== done in $SECONDS s"
