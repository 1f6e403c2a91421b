#!/usr/bin/env bash
# The GPU numbers of BENCHMARKS.md, on one CUDA machine (sd15 size, random init, 640x384, bf16).
#   benchmarks/gpu.sh OUT_DIR [tests] [model] [train] [generate] [strategies]   (default: all of them)
# tests:      the GPU test suite (tests/gpu, `make test-gpu`).
# model:      one training step of the network against the eager diffusers yardstick (cyberhost.bench):
#             stage 1 (B=12) and stage 2 (12 + 4 frames), with and without gradient checkpointing.
# train:      training throughput through the real DataModule + LightningModule + Trainer
#             (cyberhost.training.bench), with the eager yardstick in the same process; then the
#             same with gradient checkpointing.
# generate:   generation speed (25 steps) against the eager loop that re-runs the reference net.
# profile:    (only when named) torch.profiler table of one sd15 stage-2 step.
# strategies: `cyberhost fit` on 1 GPU with DDP and FSDP2 (stage 1) and FSDP2 (stage 2), a few
#             steps each on synthetic shards, proving the code paths (checkpoint included); the
#             tiny size with bf16-mixed by default (STRATEGY_SIZE=sd15 for the real size: each sd15
#             run then builds the network on the CPU and writes a checkpoint of 10-20 GB).
# Everything goes to OUT_DIR/all.log (and a line per part to OUT_DIR/summary.txt), JSON rows to
# OUT_DIR/<part>.json. Each part has a time limit (LIMIT_<PART> seconds) so one hang cannot eat the rest.
set -uo pipefail
out=$(realpath -m "${1:-bench-out}")
shift || true
parts=("$@")
[[ ${#parts[@]} -eq 0 ]] && parts=(tests model train generate strategies)
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log="$out/all.log"

part() {  # part NAME LIMIT CMD...: run with a time limit, log, and record the exit code and duration
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "=== $name: $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc in $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt" "$log"
}

want() { [[ " ${parts[*]} " == *" $1 "* ]]; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c 'import torch, diffusers, lightning; print("torch", torch.__version__, "diffusers", diffusers.__version__, "lightning", lightning.__version__)'
} 2>&1 | tee -a "$log" "$out/summary.txt"

if want tests; then
  part tests "${LIMIT_TESTS:-240}" $py -m pytest -q -m gpu tests/gpu -p no:cacheprovider
fi

if want model; then
  part model "${LIMIT_MODEL:-420}" $py -m cyberhost.bench --size sd15 --device cuda --steps 10 --warmup 3 \
      --json "$out/model.json"
fi

if want profile; then  # where a stage-2 step spends its device time (not in the default parts)
  part profile "${LIMIT_PROFILE:-120}" $py -m cyberhost.bench --size sd15 --device cuda --only stage2 --steps 3 \
      --warmup 2 --profile
fi

if want generate; then
  part generate "${LIMIT_GENERATE:-300}" $py -m cyberhost.inference.bench --size sd15 --device cuda --steps 25 \
      --segments 2 --json "$out/generate.json"
fi

if want train; then
  part train "${LIMIT_TRAIN:-300}" $py -m cyberhost.training.bench --size sd15 --device cuda --steps 15 --warmup 5 \
      --workers 8 --yardstick --output "$out/train.json"
  part train_ckpt "${LIMIT_TRAIN:-300}" $py -m cyberhost.training.bench --size sd15 --device cuda --steps 15 \
      --warmup 5 --workers 8 --gradient-checkpointing --output "$out/train_ckpt.json"
fi

if want strategies; then
  data=$(mktemp -d)/clips  # 48 clips: each of the 4 loader workers fills batches of 12
  runs=$(mktemp -d)
  if [[ ${STRATEGY_SIZE:-tiny} == sd15 ]]; then
    $py -m cyberhost.training.synthetic --output "$data" --clips 48 --frames 24 --size 400 672 >> "$log" 2>&1
    size=(--config conf/debug/random_init.yaml)
  else
    $py -m cyberhost.training.synthetic --output "$data" --clips 48 --frames 24 --size 96 80 >> "$log" 2>&1
    size=(--config conf/debug/tiny.yaml --trainer.accelerator gpu --trainer.precision bf16-mixed)
  fi
  # no validation (val_check_interval > max_steps): one checkpoint (last) per run, removed after it
  common=("${size[@]}" --data.init_args.train_shards "$data"
          --data.init_args.num_workers 4 --data.init_args.samples_per_epoch 100000 --data.init_args.val_batches 1
          --trainer.devices 1 --trainer.max_steps 4 --trainer.val_check_interval 1000 --trainer.log_every_n_steps 1
          --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir "$runs")
  s2=(--config conf/debug/random_init_stage2.yaml)
  [[ ${STRATEGY_SIZE:-tiny} == sd15 ]] || s2=(--config conf/debug/tiny_stage2.yaml --model.init_args.stage1_checkpoint random)
  for run in "1 ddp" "1 fsdp" "2 fsdp"; do
    set -- $run
    extra=(); [[ $1 == 2 ]] && extra=("${s2[@]}")
    part "fit_stage$1_$2" "${LIMIT_FIT:-200}" $py -m cyberhost.cli fit --config conf/stage$1.yaml \
        --config conf/trainer/$2.yaml "${common[@]}" "${extra[@]}" --trainer.logger.init_args.version "$2"
    du -sh "$runs/stage$1/$2/checkpoints" "$runs/stage$1/$2/export" 2>&1 | tee -a "$out/summary.txt" "$log"
    rm -rf "$runs/stage$1/$2/checkpoints" "$runs/stage$1/$2/export"
  done
fi
