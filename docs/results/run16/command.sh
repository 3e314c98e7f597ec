#!/usr/bin/env bash
# Stage 9 (run 16): Glance's supervised stage (configs/train_glance.yaml, as runs 11-12) on run 15's best checkpoint:
# Glance alone (strided stem), the GRL objective's class-balanced window CE on 4 scans x 8 windows of the inference
# size per step, 3 background crops per lesion crop, the synthesis hosts 8 times; Focus written back unchanged. A
# fixed 20-epoch cosine schedule sized to end inside its 35-minute limit (runs 11-12 needed 22 epochs over two
# sessions); final weights, committed as models/stages/run16.pt.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
python -m monai.bundle run training \
    --config_file "['configs/train.yaml','configs/small.yaml','configs/train_glance.yaml']" \
    --dataset_dir ../shared/data --glance_stem_stride 2 --synthesis_prob 0.5 --synthesis_max_lesions 2 \
    --learning_rate 0.0005 --warmup_iterations 10 --max_epochs 20 --time_limit_seconds 2100 --seed 16 \
    --num_workers 1 --init_weights models/stages/run15.pt --ckpt_dir runs/model16/models --output_dir runs/model16
