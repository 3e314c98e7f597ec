#!/usr/bin/env bash
# Stage 10 (run 17): run 16's model (run 15's Focus, Glance after its supervised stage) back under GRL with the data
# and settings of runs 14-15, learning rate 3e-4, a 10-epoch cosine schedule sized to end inside its 48-minute limit
# (what this session had left beside the benchmarks), because Focus is what misses lesions and reports false
# positives. Checkpoint chosen on the tuning split; committed as models/stages/run17.pt for the next stage.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
python -m monai.bundle run training --config_file "['configs/train.yaml','configs/small.yaml']" \
    --dataset_dir ../shared/data --roi_size "[64,64,32]" --scans_per_step 2 --windows_per_scan 4 \
    --synthesis_prob 0.5 --synthesis_max_lesions 2 --alpha 1.0 --learning_rate 0.0003 --warmup_iterations 10 \
    --glance_stem_stride 2 --host_repeat 2 --crop_neg 2 --max_epochs 10 --val_interval 5 \
    --time_limit_seconds 2880 --seed 17 --num_workers 1 \
    --init_weights models/stages/run16.pt --ckpt_dir runs/model17/models --output_dir runs/model17
