#!/usr/bin/env bash
# Stage 17 (run 24): weight-space interpolation of Focus (WiSE-FT, Wortsman et al., CVPR 2022), no training.
# Every stage since 0.2.0 descends from the 0.2.0 weights (run 14 started from models/model.pt; runs 15-19 each from
# the one before). 0.2.0 finds lung1's nodule (DSC 0.818) and reports 7 findings on the pancreatic-cancer series but
# no sarcoma; run 19 finds 6 of 11 test lesions (7 of 9 tuning sarcomas at 1 FP/scan) but misses lung1 and reports 19
# abdominal findings. Focus = (1 - alpha) * 0.2.0 + alpha * run 19 for alpha in 0.2, 0.35, 0.5, 0.65, 0.8; Glance is
# run 19's (trained with the strided stem, AUC 0.739 against 0.2.0's 0.501).
# Choice of alpha on the tuning split only (written before any figure of these models was seen): the smallest alpha
# whose calibration finds at least 5 of the 9 tuning sarcomas at <= 1 false positive per scan (as much of 0.2.0's
# chest and abdomen behaviour as the sarcomas allow); if none does, the alpha that finds the most (ties: the
# smaller). Only that alpha is screened on the test split, by the unchanged docs/results/run14/after.sh and its
# shipping rule. Written and committed before it runs.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
OUT=runs/model24
STRIDE=docs/results/run14/stride2.yaml
mkdir -p "$OUT"
for A in 0.2 0.35 0.5 0.65 0.8; do
    [ -f "$OUT/a$A/calibration.json" ] && continue
    mkdir -p "$OUT/a$A"
    python -m bundle.interpolate --base models/model.pt --tuned models/stages/run19.pt --alpha "$A" \
        --networks focus --output "$OUT/a$A/model.pt"
    echo "== alpha $A: operating point on the tuning split $(date)"
    python -m bundle.calibrate --config_file configs/inference.yaml --config_file "$STRIDE" \
        --ckpt_path "$OUT/a$A/model.pt" --split validation --target_sensitivity 0.95 --lesion_max_fp_per_scan 1 \
        --output "$OUT/a$A/calibration.json" > "$OUT/a$A/calibration.log" 2>&1 || echo "calibration exit $?"
done
CHOSEN=$(python - "$OUT" <<'PY'
import json, sys
found = {}
for a in ("0.2", "0.35", "0.5", "0.65", "0.8"):
    r = json.load(open(f"{sys.argv[1]}/a{a}/calibration.json"))["lesion_result"]
    found[a] = r["lesions_found"]
    print(f"alpha {a}: {r['lesions_found']} of {r['lesions']} tuning lesions at {r['false_positives_per_scan']:.2f} "
          f"FP/scan (lesion_min_score {r['min_score']})", file=sys.stderr)
enough = [a for a in found if found[a] >= 5]
print(enough[0] if enough else max(found, key=lambda a: (found[a], -float(a))))
PY
)
echo "== chosen alpha $CHOSEN $(date)"
echo "$CHOSEN" > "$OUT/chosen_alpha"
NEW="$OUT/a$CHOSEN/model.pt" OUT="$OUT/a$CHOSEN" docs/results/run14/after.sh
