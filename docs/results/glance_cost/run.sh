#!/usr/bin/env bash
# Issue 15 measurements; run from the bundle root on an otherwise idle machine: bash docs/results/glance_cost/run.sh
set -euo pipefail
OUT=docs/results/glance_cost
SERIES=../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom
SCAN400=runs/series_400.nii.gz  # made here, not committed: the 134 real slices interpolated to 400
mkdir -p runs
[ -f $SCAN400 ] || python $OUT/make_400_slices.py $SERIES $SCAN400
SMALL="--config_file configs/inference.yaml --config_file configs/small.yaml --config_file $OUT/untrained_batchnorm.yaml"
# the paper sizes come from configs/paper_size.yaml (inference.yaml built them itself when the slab records were made,
# at 7a2955a; it now builds the shipped CPU sizes)
PAPER="--config_file configs/inference.yaml --config_file configs/paper_size.yaml --config_file $OUT/untrained.yaml"
SWEEP="--keep_fraction 0.05 0.1 0.167 0.3 --glance_modes windows shared --end_to_end --allow_untrained"
python -m bundle.benchmark --input $SERIES $SMALL $SWEEP --output $OUT/small_134.json > $OUT/small_134.log 2>&1
python -m bundle.benchmark --input $SCAN400 $SMALL --keep_fraction 0.05 0.167 --glance_modes shared --end_to_end \
    --allow_untrained --output $OUT/small_400.json > $OUT/small_400.log 2>&1
# the paper-size networks on CPU: the lesion-free slab (48 windows) keeps the dense run to minutes
python -m bundle.benchmark --input $SERIES $PAPER --axial_range_mm 385 500 --keep_fraction 0.05 \
    --glance_modes shared --allow_untrained --output $OUT/paper_slab.json > $OUT/paper_slab.log 2>&1
# a strided stem (glance_stem_stride 2), small networks: Glance per window and shared, against dense Focus
STEM2="--config_file configs/inference.yaml --config_file configs/small.yaml --config_file $OUT/untrained_batchnorm_stem2.yaml"
python -m bundle.benchmark --input $SERIES $STEM2 --keep_fraction 0.05 0.1 --glance_modes windows shared --end_to_end \
    --allow_untrained --output $OUT/small_stem2_134.json > $OUT/small_stem2_134.log 2>&1
# the cheap levers, small networks: the exact ones on both networks
python -m bundle.levers --input $SERIES $SMALL --allow_untrained --windows 4 \
    --levers no_grad batch_1 batch_4 one_thread channels_last_3d --output $OUT/levers_small.json > $OUT/levers_small.log 2>&1
# bfloat16 autocast (no native bfloat16 on this CPU: emulated, slow) and torch.compile, on one window and one timed
# pass after the warm-up, the shipped weights (so the probability change is a trained network's)
for NET in glance focus; do
    python -m bundle.levers --input $SERIES --config_file configs/inference.yaml --windows 1 --repeats 1 \
        --networks $NET --levers bfloat16_autocast torch_compile --output $OUT/levers_bf16_compile_$NET.json \
        > $OUT/levers_bf16_compile_$NET.log 2>&1
done
# the paper-size networks with a strided stem, same slab
PAPER2="--config_file configs/inference.yaml --config_file configs/paper_size.yaml --config_file $OUT/untrained_stem2.yaml"
python -m bundle.benchmark --input $SERIES $PAPER2 --axial_range_mm 385 500 --keep_fraction 0.05 \
    --glance_modes windows shared --allow_untrained --output $OUT/paper_stem2_slab.json > $OUT/paper_stem2_slab.log 2>&1
# the small strided-stem run again after the postprocessing's two exact speed-ups (commit c0c97f3: lesion scores over
# the labelled voxels, axial hole filling in one labelling), on both scans
python -m bundle.benchmark --input $SERIES $STEM2 --keep_fraction 0.05 0.1 --glance_modes windows --end_to_end \
    --allow_untrained --output $OUT/small_stem2_134_post.json > $OUT/small_stem2_134_post.log 2>&1
python -m bundle.benchmark --input $SCAN400 $STEM2 --keep_fraction 0.05 0.1 --glance_modes windows --end_to_end \
    --allow_untrained --output $OUT/small_stem2_400_post.json > $OUT/small_stem2_400_post.log 2>&1
# the paper-size networks with a strided stem on the whole 134-slice series and on its 400-slice copy (144 windows
# each at the 3 mm inference grid; about 20 minutes of dense Focus each on this CPU): Glance's cost as a fraction of
# dense, both Glance modes, a forced keep fraction of 0.05, end to end
python -m bundle.benchmark --input $SERIES $PAPER2 --keep_fraction 0.05 --glance_modes windows shared \
    --end_to_end --allow_untrained --output $OUT/paper_stem2_134.json > $OUT/paper_stem2_134.log 2>&1
python -m bundle.benchmark --input $SCAN400 $PAPER2 --keep_fraction 0.05 --glance_modes windows shared \
    --end_to_end --allow_untrained --output $OUT/paper_stem2_400.json > $OUT/paper_stem2_400.log 2>&1
# the lesion-free stretch (the series' lung bases, 385-500 mm: 34 slices) as a scan of its own, end to end, each run's
# postprocessing and writing timed on its own output: keep fraction 0 is a Glance that keeps nothing on a stretch
# without lesions, 0.05 one that keeps two or three windows
STRETCH=runs/series_stretch.nii.gz  # made here, not committed
python $OUT/make_stretch.py $SERIES $STRETCH
python -m bundle.benchmark --input $STRETCH $STEM2 --keep_fraction 0 0.05 --glance_modes windows --end_to_end \
    --allow_untrained --output $OUT/small_stem2_stretch.json > $OUT/small_stem2_stretch.log 2>&1
python -m bundle.benchmark --input $STRETCH $PAPER2 --keep_fraction 0 0.05 --glance_modes windows --end_to_end \
    --allow_untrained --output $OUT/paper_stem2_stretch.json > $OUT/paper_stem2_stretch.log 2>&1
