#!/usr/bin/env bash
# The GPU numbers of BENCHMARKS.md, on one CUDA machine (sd15 size, random init, 640x384, bf16).
#   benchmarks/gpu.sh OUT_DIR [tests] [model] [train] [generate] [profile]   (default: all but profile)
# tests:      the GPU tests (`make test-gpu`): tests/gpu (bf16 model, benchmarks on CUDA, EMA resume) and
#             tests/training/test_gpu_strategies.py (fit, resume and stage-2 hand-off through the
#             DDP, FSDP2 and FSDP v1 overlays on one GPU).
# model:      one training step of the network against the eager diffusers yardstick (benchmarks.model_step):
#             stage 1 (B=12) and stage 2 (12 + 4 frames), with and without gradient checkpointing.
# train:      training throughput through the real DataModule + LightningModule + Trainer
#             (benchmarks.train), with the eager yardstick in the same process; then the
#             same with gradient checkpointing.
# generate:   generation speed (25 steps) against the eager loop that re-runs the reference net, with
#             bf16 weights and with regional compilation too (its first run is the compile).
# profile:    (only when named) torch.profiler table of one sd15 stage-2 step.
# trainable:  (only when named) stage 2 through the Trainer with every parameter trainable (the paper's
#             end to end, conf/stage2.yaml) and with only the stage-2 additions (conf/stage2_added.yaml),
#             each with and without gradient checkpointing: step time and peak memory.
# fast:       (only when named) stage 2 (additions only) through the Trainer: plain (with the eager yardsticks
#             in the same process) against regional compilation + bf16 frozen weights, compiled with a cold
#             and then a warm inductor cache; then tests/gpu/test_fast_path.py.
# compiled:   (only when named) stage 2 (additions only) through the Trainer: plain with the eager yardsticks,
#             then regional compilation (every region class, VAE eager) + bf16 frozen weights in a first
#             process (cold inductor cache) and a second one (warm cache, INDUCTOR_CACHE, default /tmp).
# memory:     (only when named) stage 2 (additions only) through the Trainer with bf16 frozen weights and
#             selective checkpointing of the top-resolution blocks (CKPT_PATTERN): step time and peak memory.
# guard:      (only when named) stage 2 (additions only) through the Trainer with the NaN/Inf guard's host check
#             (`--host-nan-check`, a sync per step) and with its device-side skip (the default).
# losses:     (only when named) Eq. 6's diffusion and heatmap terms at init (benchmarks/loss_terms.py).
# Everything goes to OUT_DIR/all.log (and a line per part to OUT_DIR/summary.txt), JSON rows to
# OUT_DIR/<part>.json. Each part has a time limit (LIMIT_<PART> seconds) so one hang cannot eat the rest.
set -uo pipefail
out=$(realpath -m "${1:-bench-out}")
shift || true
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # python -m benchmarks.* needs the repository root
parts=("$@")
[[ ${#parts[@]} -eq 0 ]] && parts=(tests model train generate)
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log="$out/all.log"

part() {  # part NAME LIMIT CMD...: run with a time limit, log, and record the exit code and duration
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "=== $name: $*" | tee -a "$log"
  timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc in $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt" "$log"
}

want() { [[ " ${parts[*]} " == *" $1 "* ]]; }

# the issue-12 parts (fast, compiled, memory): stage 2 with the additions-only trainable set through the Trainer
stage2_added=(--size sd15 --device cuda --stages 2 --steps 8 --warmup 3 --workers 8 --stage2-trainable added)

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c 'import torch, diffusers, lightning; print("torch", torch.__version__, "diffusers", diffusers.__version__, "lightning", lightning.__version__)'
} 2>&1 | tee -a "$log" "$out/summary.txt"

if want tests; then
  part tests "${LIMIT_TESTS:-300}" $py -m pytest -q -m gpu tests/gpu tests/training/test_gpu_strategies.py \
      -p no:cacheprovider
fi

if want model; then
  part model "${LIMIT_MODEL:-420}" $py -m benchmarks.model_step --size sd15 --device cuda --steps 10 --warmup 3 \
      --json "$out/model.json"
fi

if want profile; then  # where a stage-2 step spends its device time (not in the default parts)
  part profile "${LIMIT_PROFILE:-120}" $py -m benchmarks.model_step --size sd15 --device cuda --only stage2 --steps 3 \
      --warmup 2 --profile
fi

if want generate; then
  part generate "${LIMIT_GENERATE:-560}" $py -m benchmarks.generate --size sd15 --device cuda --steps 25 \
      --segments 2 --compile --json "$out/generate.json"
fi

if want trainable; then
  for which in all added; do
    for ckpt in "--gradient-checkpointing" ""; do
      tag=${which}${ckpt:+_ckpt}
      part "trainable_$tag" "${LIMIT_TRAIN:-300}" $py -m benchmarks.train --size sd15 --device cuda --stages 2 \
          --steps 8 --warmup 3 --workers 8 --stage2-trainable "$which" $ckpt --output "$out/trainable_$tag.json"
    done
  done
fi

if want fast; then  # issue 12: stage 2 (added set) plain vs regional compile + bf16 frozen weights, cold then warm cache
  export TORCHINDUCTOR_CACHE_DIR="$out/inductor-cache"
  part fast_cold "${LIMIT_FAST:-250}" $py -m benchmarks.train "${stage2_added[@]}" --compile --compile-dynamic true \
      --frozen-bf16 --output "$out/fast_cold.json"
  part plain "${LIMIT_TRAIN:-170}" $py -m benchmarks.train "${stage2_added[@]}" --yardstick --output "$out/plain.json"
  part bf16_frozen "${LIMIT_TRAIN:-140}" $py -m benchmarks.train "${stage2_added[@]}" --frozen-bf16 --output "$out/bf16_frozen.json"
  if [[ -n "${FAST_WARM:-}" ]]; then
    part fast_warm "${LIMIT_FAST:-330}" $py -m benchmarks.train "${stage2_added[@]}" --compile --compile-dynamic true \
        --frozen-bf16 --output "$out/fast_warm.json"
    part fast_test "${LIMIT_TESTS:-200}" $py -m pytest -q -m gpu tests/gpu/test_fast_path.py -p no:cacheprovider
  fi
fi

if want compiled; then  # issue 12: compile cold, then warm, against plain in one run
  export TORCHINDUCTOR_CACHE_DIR="${INDUCTOR_CACHE:-/tmp/cyberhost-inductor}"
  part plain "${LIMIT_PLAIN:-100}" $py -m benchmarks.train "${stage2_added[@]}" --yardstick --output "$out/plain.json"
  for run in cold warm; do
    part "compiled_$run" "${LIMIT_COMPILED:-320}" $py -m benchmarks.train "${stage2_added[@]}" --compile --compile-vae false \
        --frozen-bf16 --output "$out/compiled_$run.json"
  done
fi

if want memory; then  # issue 12 item 2: the added set under 40 GiB without full checkpointing
  part memory_bf16_top "${LIMIT_TRAIN:-140}" $py -m benchmarks.train "${stage2_added[@]}" --frozen-bf16 \
      --checkpoint "${CKPT_PATTERN:-^unet\.(down_blocks\.0|up_blocks\.3)\.}" --output "$out/memory_bf16_top.json"
fi

if want guard; then  # the NaN/Inf guard: host check (a sync per step) against the device-side skip, stage 2 plain
  for how in host device; do
    flag=(); [[ $how == host ]] && flag=(--host-nan-check)
    part "guard_$how" "${LIMIT_TRAIN:-140}" $py -m benchmarks.train "${stage2_added[@]}" "${flag[@]}" \
        --output "$out/guard_$how.json"
  done
fi

if want losses; then
  part losses "${LIMIT_LOSSES:-200}" $py benchmarks/loss_terms.py --size sd15 --device cuda 2>&1 | tee "$out/losses.json"
fi

if want train; then
  part train "${LIMIT_TRAIN:-300}" $py -m benchmarks.train --size sd15 --device cuda --steps 10 --warmup 3 \
      --workers 8 --yardstick --output "$out/train.json"
  part train_ckpt "${LIMIT_TRAIN:-300}" $py -m benchmarks.train --size sd15 --device cuda --steps 10 \
      --warmup 3 --workers 8 --gradient-checkpointing --output "$out/train_ckpt.json"
fi
