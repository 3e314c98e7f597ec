#!/usr/bin/env bash
# Stage 25 (run 32): Focus sees whole-trunk lesion-free anatomy under the abdomen window. Every Focus since run 19
# reports 19-37 findings on the 134-slice abdominal series (the shipping rule allows 14): under the abdomen window
# Focus has only ever trained on one 30-slice abdominal host, because the thorax-abdomen TotalSegmentator scan was a
# chest host (runs 30-31 gave that scan to Glance under the abdomen window; Focus has not had it). This stage is run
# 19's GRL (the stage that trains Focus) with run 30's datalist (that scan listed again with region "abdomen"; the
# pancreatic-cancer series' own thorax slab stays a chest host only) and run 20's chest weighting (host_repeat 6,
# synthesis on 70 % of items: it moved lung1's nodule from no component to 0.820), without hard negatives (run 22,
# which used them, lost lung1). Run 19 continued: learning rate 2e-4, a 10-epoch cosine schedule validated on the
# tuning split at epochs 5 and 10 inside a 65-minute limit, seed 32. The best tuning checkpoint's Focus then goes with
# run 27's Glance (the one that meets the test-split Glance target; `bundle.interpolate --alpha 0 --networks focus`).
# Written and committed before it runs; reported whatever it gives. Then, unchanged:
# NEW=runs/model32/models/model.pt OUT=runs/model32 docs/results/run14/after.sh (its shipping rule).
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
echo "5073dff15e768fb3531cb75fd1373b35b6cf374761687e2a990939427d7f1195  models/stages/run19.pt" | sha256sum -c -
[ -f runs/model27/models/model.pt ] || docs/results/run27/command.sh
[ -f docs/results/run30/datalist.json ]
python -m monai.bundle run training --config_file "['configs/train.yaml','configs/small.yaml']" \
    --datalist docs/results/run30/datalist.json --dataset_dir ../shared/data --roi_size "[64,64,32]" \
    --scans_per_step 2 --windows_per_scan 4 --synthesis_prob 0.7 --synthesis_max_lesions 2 --alpha 1.0 \
    --learning_rate 0.0002 --warmup_iterations 10 --glance_stem_stride 2 --host_repeat 6 --crop_neg 2 \
    --max_epochs 10 --val_interval 5 --time_limit_seconds 3900 --seed 32 --num_workers 1 \
    --init_weights models/stages/run19.pt --ckpt_dir runs/model32/train --output_dir runs/model32
mkdir -p runs/model32/models
python -m bundle.interpolate --base runs/model32/train/model.pt --tuned runs/model27/models/model.pt --alpha 0 \
    --networks focus --output runs/model32/models/model.pt
