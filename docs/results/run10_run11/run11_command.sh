#!/usr/bin/env bash
# Stage 5 (run 11): Glance's supervised stage on run 10's best checkpoint: Glance alone (strided stem), window CE on
# 4 scans x 8 windows of the inference size (96 x 96 x 64) per step, 3 background crops per lesion crop, the synthesis
# hosts 8 times (configs/train_glance.yaml); Focus written back unchanged. Fixed schedule, final weights.
cd "$(dirname "$0")/../.."
python -m monai.bundle run training \
    --config_file "['configs/train.yaml','configs/small.yaml','configs/train_glance.yaml']" \
    --dataset_dir ../shared/data --glance_stem_stride 2 --synthesis_prob 0.5 --synthesis_max_lesions 2 \
    --learning_rate 0.0005 --warmup_iterations 10 --max_epochs ${EPOCHS:-22} --time_limit_seconds 1800 --seed 11 --num_workers 1 \
    --init_weights runs/model10/models/model.pt --ckpt_dir runs/model11/models --output_dir runs/model11
