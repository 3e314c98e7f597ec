#!/usr/bin/env bash
# Dense against Glance-Focus with trained weights on a full-size scan with a lesion: the 134-slice series with one
# synthetic lung mass (make_lesion_scan.py, its exact mask as --label), so the DSC that Glance-Focus loses is measured
# beside the end-to-end speed-up. First at the weights' calibrated operating point (their Glance threshold and
# lesion_min_score, from the tuning split), then at forced keep fractions (the engineering, with the DSC at the first).
# Usage from the project root: NEW=<weights> OP=<operating_point.yaml> NAME=<record name> docs/results/glance_cost/trained_lesion.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
NEW=${NEW:?the trained weights, e.g. models/stages/run19.pt}
OP=${OP:?their operating point, e.g. runs/model19/operating_point.yaml}
NAME=${NAME:?a record name, e.g. run19}
OUT=docs/results/glance_cost
SCAN=runs/series_lesion.nii.gz LABEL=runs/series_lesion_label.nii.gz  # made here, not committed
python $OUT/make_lesion_scan.py ../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom $SCAN $LABEL
WEIGHTS=runs/trained_lesion_weights.yaml
echo "ckpt_path: $NEW" > $WEIGHTS
CFGS="--config_file configs/inference.yaml --config_file docs/results/run14/stride2.yaml --config_file $OP --config_file $WEIGHTS"
python -m bundle.benchmark --input $SCAN $CFGS --label $LABEL --glance_modes windows --end_to_end \
    --output $OUT/trained_${NAME}_lesion.json > $OUT/trained_${NAME}_lesion.log 2>&1
python -m bundle.benchmark --input $SCAN $CFGS --label $LABEL --keep_fraction 0.05 0.1 0.167 0.3 --end_to_end \
    --output $OUT/trained_${NAME}_lesion_k.json > $OUT/trained_${NAME}_lesion_k.log 2>&1
