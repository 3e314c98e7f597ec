#!/usr/bin/env bash
# Stage 11 (run 18): Glance's supervised stage (configs/train_glance.yaml, as runs 11-12) on run 17's best checkpoint:
# Glance alone (strided stem), the GRL objective's class-balanced window CE on 4 scans x 8 windows of the inference
# size per step, 3 background crops per lesion crop, the synthesis hosts 8 times; Focus written back unchanged. A
# fixed 20-epoch cosine schedule inside a 40-minute limit (run 16's 35-minute limit stopped it in epoch 19 of 20);
# final weights, committed as models/stages/run18.pt. Then: NEW=models/stages/run18.pt OUT=runs/model18
# docs/results/run14/after.sh, with the shipping rule written there.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
python -m monai.bundle run training \
    --config_file "['configs/train.yaml','configs/small.yaml','configs/train_glance.yaml']" \
    --dataset_dir ../shared/data --glance_stem_stride 2 --synthesis_prob 0.5 --synthesis_max_lesions 2 \
    --learning_rate 0.0005 --warmup_iterations 10 --max_epochs 20 --time_limit_seconds 2400 --seed 18 \
    --num_workers 1 --init_weights models/stages/run17.pt --ckpt_dir runs/model18/models --output_dir runs/model18
