#!/usr/bin/env bash
# After stage 7 (run 14) and its continuations (runs 15, 16), written before any of their test figures was seen: the
# operating point on the tuning split only, then the test split with the same command as the shipped model (screen
# with nothing dropped, evaluate at the calibrated lesion_min_score), then Glance's window ranking on the test split.
# One torch process at a time.
# Shipping rule (the one of runs 11 and 12, unchanged): the new model ships when, on the test split, its lesion
# sensitivity and mean DSC are both above the shipped model's (1/11, 0.074) at <= 1.0 false positives per scan, and
# it still finds lung1's nodule (the split's one chest lesion: this is a chest and abdomen screening model).
# Added after run 21 (which met the rule above with half of lung1's nodule, two 4-5 ml false positives beside it and
# 34 findings on the abdominal series), before any later stage runs: its NSD is not below the shipped model's (0.087),
# lung1's nodule is found with a DSC >= 0.5 on that scan, and it reports at most twice the shipped model's 7 findings
# on the unlabelled pancreatic-cancer series.
# Usage from the project root: NEW=<weights> OUT=<folder> docs/results/run14/after.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
NEW=${NEW:?the weights to evaluate, e.g. models/stages/run16.pt}
OUT=${OUT:?a folder for the records, e.g. runs/model16}
STRIDE=docs/results/run14/stride2.yaml
CFGS="--config_file configs/inference.yaml --config_file $STRIDE"
mkdir -p "$OUT/eval_test"
echo "== operating point on the tuning split $(date)"
rm -f "$OUT/operating_point.yaml"
python -m bundle.calibrate $CFGS --ckpt_path "$NEW" --split validation --target_sensitivity 0.95 \
    --lesion_max_fp_per_scan 1 --output "$OUT/calibration.json" --write_config "$OUT/operating_point.yaml" \
    > "$OUT/calibration.log" 2>&1 || echo "calibration exit $?"
G=$(python -c "import yaml; print(yaml.safe_load(open('$OUT/operating_point.yaml'))['glance_threshold'])")
T=$(python -c "import yaml; print(yaml.safe_load(open('$OUT/operating_point.yaml')).get('lesion_min_score', 0.5))")
echo "== test split (glance_threshold $G, lesion_min_score $T) $(date)"
python -m monai.bundle run evaluating \
    --config_file "['configs/inference.yaml','$STRIDE','configs/evaluate.yaml']" \
    --ckpt_path "$NEW" --glance_threshold "$G" --lesion_min_score 0.5 --evaluation_min_score "$T" \
    --output_dir "$OUT/eval_test" > "$OUT/eval_test/log.txt" 2>&1
echo "== Glance on the test split $(date)"
python -m bundle.calibrate $CFGS --ckpt_path "$NEW" --split test --target_sensitivity 0.95 \
    --output "$OUT/eval_test/glance_test.json" > "$OUT/eval_test/glance_test.log" 2>&1
echo "== done $(date)"
