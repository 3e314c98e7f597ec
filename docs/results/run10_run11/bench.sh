#!/usr/bin/env bash
# Run 11 at its calibrated Glance threshold (issue 15: a trained strided-stem Glance), one process at a time: the
# 134-slice series end to end, and its lesion-free lung-base slab. Records in docs/results/run11_benchmark/.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
OUT=docs/results/run11_benchmark
mkdir -p $OUT
SERIES=../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom
CFG="--config_file configs/inference.yaml --config_file configs/small.yaml --config_file runs/model11/bench.yaml"
T=0.6938769221305847
python -m bundle.benchmark --input $SERIES $CFG --threshold $T --end_to_end --glance_modes windows \
    --output $OUT/series_134.json > $OUT/series_134.log 2>&1
python -m bundle.benchmark --input $SERIES $CFG --threshold $T --axial_range_mm 385 500 \
    --output $OUT/lung_base_slab.json > $OUT/lung_base_slab.log 2>&1
echo "== done $(date)"
