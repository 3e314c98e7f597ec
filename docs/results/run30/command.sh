#!/usr/bin/env bash
# Stage 23 (run 30): Glance sees whole-trunk anatomy under the abdomen window. Run 27's Glance keeps 0.944 of the
# 134-slice abdominal series at its tuning-split threshold and scores that series' windows a median 0.994 under the
# abdomen window (mass_glance.sh). Under that window its training holds the limb crops (mostly tumour) and one 30-slice
# abdominal host, painted half the time: whole-trunk lesion-free anatomy under the abdomen window is nearly absent,
# because the thorax-abdomen TotalSegmentator scan (another patient, 112 slices at 3 mm) is listed as a chest host and
# so is only ever seen under the chest window. This stage adds that scan a second time with region "abdomen" (same
# image, same mined hard negatives; `docs/results/run30/datalist.json`, made below from run 25's mined datalist).
# The pancreatic-cancer series' thorax slab is NOT added under the abdomen window: that series is the test of the keep
# fraction. Otherwise run 27's stage unchanged, continued from run 27 (20 epochs, cosine from 2.5e-4, seed 30); Focus
# written back unchanged (run 25's). Written and committed before it runs; reported whatever it gives. Then its Glance
# goes with run 19's Focus (the best Focus at <= 1 FP per scan, as run 29) and, unchanged:
# NEW=runs/model30/models/model.pt OUT=runs/model30 docs/results/run14/after.sh (its shipping rule).
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
echo "5073dff15e768fb3531cb75fd1373b35b6cf374761687e2a990939427d7f1195  models/stages/run19.pt" | sha256sum -c -
if [ ! -f runs/model26/models/model.pt ]; then
    mkdir -p runs/model26/models
    echo "565c3637fe1c6ec2c5df73b7b3f8ea7bc1c69880699079cf8297d523c6ee85f0  models/stages/run26.pt" | sha256sum -c -
    cp models/stages/run26.pt runs/model26/models/model.pt
fi
[ -f runs/model27/models/model.pt ] || docs/results/run27/command.sh
python - <<'PY'
import json

datalist = json.load(open("docs/results/run25/hard_negatives_datalist.json"))
chest = next(item for item in datalist["training_synthesis_hosts"] if item["id"] == "totalsegmentator_example")
datalist["training_synthesis_hosts"].append({**chest, "id": "totalsegmentator_example_abdomen_window", "region": "abdomen"})
datalist["description"] += " Run 30: the thorax-abdomen TotalSegmentator host listed again under the abdomen window."
with open("docs/results/run30/datalist.json", "w") as f:
    json.dump(datalist, f, indent=1)
    f.write("\n")
PY
python -m monai.bundle run training \
    --config_file "['configs/train.yaml','configs/small.yaml','configs/train_glance.yaml']" \
    --datalist docs/results/run30/datalist.json --dataset_dir ../shared/data \
    --glance_stem_stride 2 --synthesis_prob 0.5 --synthesis_max_lesions 2 --hard_negative_prob 0.5 \
    --learning_rate 0.00025 --warmup_iterations 10 --max_epochs 20 --time_limit_seconds 3000 --seed 30 \
    --num_workers 1 --init_weights runs/model27/models/model.pt --ckpt_dir runs/model30/glance --output_dir runs/model30
mkdir -p runs/model30/models
python -m bundle.interpolate --base models/stages/run19.pt --tuned runs/model30/glance/model.pt --alpha 0 \
    --networks focus --output runs/model30/models/model.pt
