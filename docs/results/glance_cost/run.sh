#!/usr/bin/env bash
# Issue 15 measurements; run from the bundle root on an otherwise idle machine: bash docs/results/glance_cost/run.sh
set -euo pipefail
OUT=docs/results/glance_cost
SERIES=../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom
SCAN400=runs/series_400.nii.gz  # made here, not committed: the 134 real slices interpolated to 400
mkdir -p runs
[ -f $SCAN400 ] || python $OUT/make_400_slices.py $SERIES $SCAN400
SMALL="--config_file configs/inference.yaml --config_file configs/small.yaml --config_file $OUT/untrained_batchnorm.yaml"
PAPER="--config_file configs/inference.yaml --config_file $OUT/untrained.yaml"
SWEEP="--keep_fraction 0.05 0.1 0.167 0.3 --glance_modes windows shared --end_to_end --allow_untrained"
python -m bundle.benchmark --input $SERIES $SMALL $SWEEP --output $OUT/small_134.json > $OUT/small_134.log 2>&1
python -m bundle.benchmark --input $SCAN400 $SMALL $SWEEP --output $OUT/small_400.json > $OUT/small_400.log 2>&1
python -m bundle.levers --input $SERIES $SMALL --allow_untrained --windows 8 --output $OUT/levers_small.json \
    > $OUT/levers_small.log 2>&1
python -m bundle.benchmark --input $SERIES $PAPER --keep_fraction 0.05 --glance_modes windows shared --end_to_end \
    --allow_untrained --output $OUT/paper_134.json > $OUT/paper_134.log 2>&1
