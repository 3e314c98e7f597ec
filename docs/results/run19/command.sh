#!/usr/bin/env bash
# Stage 12 (run 19): run 18's model (run 17's Focus, Glance after its second supervised stage: test-split window AUC
# 0.829) back under GRL with run 17's data and settings, for as long as one session allows beside its evaluation:
# a 30-epoch cosine schedule (run 17: 10 epochs in 38 minutes) inside a 2-hour limit, because Focus is what misses
# lesions (lung1's nodule scores below 24 false positives in run 18) and GRL is the stage that trains Focus. The
# checkpoint is chosen on the tuning split (every 5 epochs); committed as models/stages/run19.pt. Then:
# NEW=models/stages/run19.pt OUT=runs/model19 docs/results/run14/after.sh, with the shipping rule written there.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
python -m monai.bundle run training --config_file "['configs/train.yaml','configs/small.yaml']" \
    --dataset_dir ../shared/data --roi_size "[64,64,32]" --scans_per_step 2 --windows_per_scan 4 \
    --synthesis_prob 0.5 --synthesis_max_lesions 2 --alpha 1.0 --learning_rate 0.0003 --warmup_iterations 10 \
    --glance_stem_stride 2 --host_repeat 2 --crop_neg 2 --max_epochs 30 --val_interval 5 \
    --time_limit_seconds 7200 --seed 19 --num_workers 1 \
    --init_weights models/stages/run18.pt --ckpt_dir runs/model19/models --output_dir runs/model19
