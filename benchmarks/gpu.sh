#!/usr/bin/env bash
# The GPU numbers of BENCHMARKS.md, on one CUDA machine (sd15 size, random init, 640x384, bf16).
#   benchmarks/gpu.sh OUT_DIR [train|generate|strategies|all]
# train:      training throughput through the real DataModule + LightningModule + Trainer
#             (with and without gradient checkpointing) and the eager diffusers yardstick, same run.
# generate:   generation speed (25 steps) against the eager loop that re-runs the reference net.
# strategies: `cyberhost fit` on 1 GPU with DDP, FSDP2 and FSDP (stage 1) and FSDP2 (stage 2),
#             a few steps each on synthetic shards, proving the code paths (checkpoint included).
set -euo pipefail
out=$(realpath -m "${1:-bench-out}")
what=${2:-all}
mkdir -p "$out"
py=${PYTHON:-python3}

if [[ $what == train || $what == all ]]; then
  $py -m cyberhost.training.bench --size sd15 --device cuda --steps 20 --warmup 5 --workers 8 \
      --output "$out/train.json" 2>&1 | tee "$out/train.log"
  $py -m cyberhost.training.bench --size sd15 --device cuda --steps 20 --warmup 5 --workers 8 \
      --gradient-checkpointing --output "$out/train_ckpt.json" 2>&1 | tee "$out/train_ckpt.log"
  $py -m cyberhost.training.bench --size sd15 --device cuda --steps 20 --warmup 5 --workers 8 \
      --channels-last --output "$out/train_channels_last.json" 2>&1 | tee "$out/train_channels_last.log"
  $py -m cyberhost.bench --size sd15 --device cuda --only yard1,yard2 --steps 8 --warmup 3 \
      --json "$out/yardstick.json" 2>&1 | tee "$out/yardstick.log"
fi

if [[ $what == generate || $what == all ]]; then
  $py -m cyberhost.inference.bench --size sd15 --device cuda --steps 25 --segments 2 \
      --json "$out/generate.json" 2>&1 | tee "$out/generate.log"
fi

if [[ $what == strategies || $what == all ]]; then
  data=$(mktemp -d)/clips  # 96 clips: each of the 4 loader workers fills batches of 12
  runs=$(mktemp -d)
  $py -m cyberhost.training.synthetic --output "$data" --clips 96 --frames 24 --size 400 672
  # no validation (val_check_interval > max_steps): one checkpoint (last) per run, removed after it
  common=(--config conf/debug/random_init.yaml --data.init_args.train_shards "$data"
          --data.init_args.num_workers 4 --data.init_args.samples_per_epoch 100000 --data.init_args.val_batches 1
          --trainer.devices 1 --trainer.max_steps 6 --trainer.val_check_interval 1000 --trainer.log_every_n_steps 1
          --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir "$runs")
  s2=(--config conf/debug/random_init_stage2.yaml)
  for run in "1 ddp" "1 fsdp2" "1 fsdp" "2 fsdp2"; do
    set -- $run
    extra=(); [[ $1 == 2 ]] && extra=("${s2[@]}")
    start=$(date +%s)
    rc=0
    $py -m cyberhost.cli fit --config conf/stage$1.yaml --config conf/trainer/$2.yaml "${common[@]}" "${extra[@]}" \
        --trainer.logger.init_args.version "$2" > "$out/fit_stage$1_$2.log" 2>&1 || rc=$?
    grep -v "^\s*$" "$out/fit_stage$1_$2.log" | tail -25
    echo "stage $1 $2: exit $rc in $(( $(date +%s) - start )) s" | tee -a "$out/strategies.txt"
    du -sh "$runs/stage$1/$2/checkpoints" "$runs/stage$1/$2/export" 2>&1 | tee -a "$out/strategies.txt" || true
    mkdir -p "$out/tb/stage$1_$2" && cp "$runs/stage$1/$2"/events.* "$runs/stage$1/$2/config.yaml" "$out/tb/stage$1_$2/" || true
    rm -rf "$runs/stage$1/$2/checkpoints" "$runs/stage$1/$2/export"
  done
fi
