#!/usr/bin/env bash
# Scans per hour of the shipped small model with the cohort command, on six real scans of ../shared/data (three
# thigh sarcomas, the LIDC chest slab, lung1, the liver-metastasis abdomen): a folder of links, screened once into a
# fresh folder, then the same command again (everything skipped: the resume path). From the project root.
set -euo pipefail
. .venv/bin/activate
D=../shared/data
IN=runs/cohort_bench/input OUT=runs/cohort_bench/output
rm -rf runs/cohort_bench && mkdir -p $IN
for c in STS_001 STS_002 STS_003; do ln -s "$(realpath $D/mirp_sts_sarcoma_ct/$c/dicom/image)" $IN/$c; done
ln -s "$(realpath $D/lidc_idri_0314_nodule/dicom)" $IN/lidc_0314
ln -s "$(realpath $D/mirp_crlm_ct_1004_nomask/image)" $IN/crlm_1004
ln -s "$(realpath $D/pyradiomics_lung1/lung1_image.nrrd)" $IN/lung1.nrrd
uptime
python -m monai.bundle run --config_file "['configs/inference.yaml','configs/small.yaml']" \
    --input_path $IN --output_dir $OUT 2>&1 | grep -E "gf_screen|Cohort|This run" || true
uptime
python -m monai.bundle run --config_file "['configs/inference.yaml','configs/small.yaml']" \
    --input_path $IN --output_dir $OUT 2>&1 | grep -E "Already|Cohort|This run" || true
cp $OUT/cohort_summary.csv docs/results/cohort/cohort_summary.csv
