#!/usr/bin/env bash
# Stage 4 (run 10): run 9's best checkpoint (tuning DSC 0.400) continued with the cheap Glance of issue 15: a strided
# stem (glance_stem_stride 2, MONAI ResNet conv1_t_stride), Glance's class-balanced CE at weight 1, 18 epochs.
cd "$(dirname "$0")/../.."
python -m monai.bundle run training --config_file "['configs/train.yaml','configs/small.yaml']" \
    --dataset_dir ../shared/data --roi_size "[64,64,32]" --scans_per_step 2 --windows_per_scan 4 \
    --synthesis_prob 0.5 --synthesis_max_lesions 2 --alpha 1.0 --learning_rate 0.0003 --warmup_iterations 10 \
    --glance_stem_stride 2 --max_epochs 18 --val_interval 6 --seed 10 --num_workers 1 \
    --init_weights runs/model9/models/model.pt \
    --ckpt_dir runs/model10/models --output_dir runs/model10
