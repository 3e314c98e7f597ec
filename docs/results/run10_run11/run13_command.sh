#!/usr/bin/env bash
# Stage 6 (run 13): run 12's model (strided Glance stem after its supervised stage; run 10's Focus) back under GRL,
# with the chest/abdominal synthesis hosts listed 4 times (half unpainted: real lesion-free anatomy, half with
# synthetic lung nodules, masses and abdominal lesions) and 2 background crops per lesion crop, so that Focus sees
# far more normal chest and abdomen than in runs 9-10 (24 of 28 training scans were limb sarcomas), and Glance keeps
# learning from Focus's hits. Checkpoint chosen on the 9 tuning sarcomas (validation DSC), as before.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
python -m monai.bundle run training --config_file "['configs/train.yaml','configs/small.yaml']" \
    --dataset_dir ../shared/data --roi_size "[64,64,32]" --scans_per_step 2 --windows_per_scan 4 \
    --synthesis_prob 0.5 --synthesis_max_lesions 2 --alpha 1.0 --learning_rate 0.0003 --warmup_iterations 10 \
    --glance_stem_stride 2 --host_repeat 4 --crop_neg 2 --max_epochs 16 --val_interval 4 \
    --time_limit_seconds 6000 --seed 13 --num_workers 1 \
    --init_weights runs/model12/models/model.pt --ckpt_dir runs/model13/models --output_dir runs/model13
