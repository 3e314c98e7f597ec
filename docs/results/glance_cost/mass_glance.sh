#!/usr/bin/env bash
# Glance's window scores on the 134-slice series with the painted lung mass (make_lesion_scan.py, as in
# trained_lesion.sh), under the chest and the abdomen intensity window: where the mass's windows rank among the
# series' own windows, which hold no painted lesion (the series' pancreatic cancer is unlabelled, so a few of them
# are not lesion-free), and each case's window ROC AUC (the record's overall AUC pools both). Window-level
# only; no Focus.
# Usage from the project root: NEW=<weights> NAME=<record name> docs/results/glance_cost/mass_glance.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
NEW=${NEW:?the trained weights, e.g. runs/model28/models/model.pt}
NAME=${NAME:?a record name, e.g. run28}
OUT=docs/results/glance_cost
[ -f runs/series_lesion.nii.gz ] || python $OUT/make_lesion_scan.py \
    ../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom runs/series_lesion.nii.gz runs/series_lesion_label.nii.gz
mkdir -p runs/mass_glance
python - <<'PY'
import json
case = {"image": "series_lesion.nii.gz", "label": "series_lesion_label.nii.gz", "lesion_type": "lung_mass"}
test = [dict(case, id=f"mass_{region}", region=region, source="painted") for region in ("chest", "abdomen")]
json.dump({"validation": [], "test": test}, open("runs/mass_glance/datalist.json", "w"), indent=1)
PY
python -m bundle.calibrate --config_file configs/inference.yaml --config_file docs/results/run14/stride2.yaml \
    --ckpt_path "$NEW" --datalist runs/mass_glance/datalist.json --dataset_dir runs --split test \
    --target_sensitivity 0.95 --output $OUT/${NAME}_mass_glance.json > $OUT/${NAME}_mass_glance.log 2>&1
python - $OUT/${NAME}_mass_glance.json <<'PY'
import json, sys
import numpy as np
import torch
from monai.metrics import compute_roc_auc
for case in json.load(open(sys.argv[1]))["cases"]:
    scores, lesion = np.array(case["scores"]), np.array(case["labels"], bool)
    rank = int((scores > scores[lesion].max()).sum()) + 1
    auc = compute_roc_auc(torch.as_tensor(scores), torch.as_tensor(lesion, dtype=torch.long))
    print(f"{case['region']:8s} mass windows {np.round(scores[lesion], 3).tolist()}, best ranks {rank} of {scores.size};"
          f" median of the other windows {np.median(scores[~lesion]):.3f}; window ROC AUC {auc:.3f}")
PY
