#!/usr/bin/env bash
# Stage 13 (run 20): run 19's model under GRL with three times the synthesis hosts (host_repeat 6: the two chest
# hosts and the abdominal one make 18 of 43 training items instead of 6 of 31) and synthesis on 70 % of items, because
# Focus on chest CT is what run 19 fails on alone (lung1's nodule untouched). Learning rate 2e-4 (run 19's tuning
# Dice fell after epoch 5 at 3e-4), a 15-epoch cosine schedule sized to validate at its end inside the 2-hour limit
# (ignite's TimeLimit stops without validating), seed 20, validation on the tuning split every 5 epochs. The best
# tuning checkpoint is committed as models/stages/run20.pt. Then, unchanged:
# NEW=models/stages/run20.pt OUT=runs/model20 docs/results/run14/after.sh, with the shipping rule written there.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
python -m monai.bundle run training --config_file "['configs/train.yaml','configs/small.yaml']" \
    --dataset_dir ../shared/data --roi_size "[64,64,32]" --scans_per_step 2 --windows_per_scan 4 \
    --synthesis_prob 0.7 --synthesis_max_lesions 2 --alpha 1.0 --learning_rate 0.0002 --warmup_iterations 10 \
    --glance_stem_stride 2 --host_repeat 6 --crop_neg 2 --max_epochs 15 --val_interval 5 \
    --time_limit_seconds 7200 --seed 20 --num_workers 1 \
    --init_weights models/stages/run19.pt --ckpt_dir runs/model20/models --output_dir runs/model20
