#!/usr/bin/env bash
# Stage 7 (run 14): the chain of runs 9, 10 and 13 in one stage, because their checkpoints lived only in runs/ (not in
# git) and were lost with that machine. From the shipped 0.2.0 weights: GRL with the strided Glance stem (issue 15's
# cheap Glance), lesion synthesis (lung masses, soft-tissue masses, abdominal lesions), the chest/abdominal synthesis
# hosts twice per epoch (half unpainted: real lesion-free anatomy) and 2 background crops per lesion crop; one cosine
# schedule of 18 epochs; checkpoint chosen on the tuning split (validation DSC), 100-minute limit. Its best checkpoint
# is committed as models/stages/run14.pt so that a later session continues from it.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
python -m monai.bundle run training --config_file "['configs/train.yaml','configs/small.yaml']" \
    --dataset_dir ../shared/data --roi_size "[64,64,32]" --scans_per_step 2 --windows_per_scan 4 \
    --synthesis_prob 0.5 --synthesis_max_lesions 2 --alpha 1.0 --learning_rate 0.0005 --warmup_iterations 10 \
    --glance_stem_stride 2 --host_repeat 2 --crop_neg 2 --max_epochs 18 --val_interval 6 \
    --time_limit_seconds 6000 --seed 14 --num_workers 1 \
    --init_weights models/model.pt --ckpt_dir runs/model14/models --output_dir runs/model14
