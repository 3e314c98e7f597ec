#!/usr/bin/env bash
# Stage 20 (run 27): run 26's Glance stage continued. Run 26 reached window ROC AUC 0.930 on the test split with
# 7 of 24 lesion-free windows kept at 95 % of lesion windows (the target: at most 6) after 20 epochs whose CE had not
# flattened. Same data and settings (both mining rounds' points, half of the scans' crops on them, Glance alone, the
# class-balanced window CE), a new 20-epoch cosine schedule from half of run 26's learning rate (2.5e-4), seed 27;
# Focus written back unchanged (run 25's). Written and committed before it runs; reported whatever it gives. Then,
# unchanged: NEW=runs/model27/models/model.pt OUT=runs/model27 docs/results/run14/after.sh (its shipping rule).
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
[ -f runs/model26/models/model.pt ] || docs/results/run26/command.sh
python -m monai.bundle run training \
    --config_file "['configs/train.yaml','configs/small.yaml','configs/train_glance.yaml']" \
    --datalist docs/results/run25/hard_negatives_datalist.json --dataset_dir ../shared/data \
    --glance_stem_stride 2 --synthesis_prob 0.5 --synthesis_max_lesions 2 --hard_negative_prob 0.5 \
    --learning_rate 0.00025 --warmup_iterations 10 --max_epochs 20 --time_limit_seconds 3000 --seed 27 \
    --num_workers 1 --init_weights runs/model26/models/model.pt --ckpt_dir runs/model27/models --output_dir runs/model27
