#!/usr/bin/env bash
# Stage 5 completed (run 12): run 11's Glance supervised stage resumed from its checkpoint_last.pt (stopped by the
# 30-minute limit in epoch 15 of 22) and run to the end of its fixed 22-epoch cosine schedule, same command otherwise.
cd "$(dirname "$0")/../.."
python -m monai.bundle run training \
    --config_file "['configs/train.yaml','configs/small.yaml','configs/train_glance.yaml']" \
    --dataset_dir ../shared/data --glance_stem_stride 2 --synthesis_prob 0.5 --synthesis_max_lesions 2 \
    --learning_rate 0.0005 --warmup_iterations 10 --max_epochs 22 --seed 11 --num_workers 1 \
    --init_weights runs/model11/models/model.pt --resume true \
    --ckpt_dir runs/model12/models --output_dir runs/model12
