# Sourced by docs/results/synthetic_{abdomen,chest}/command.sh once their set is written to $SET: screens the set with
# NEW at the operating point in OP as inference runs (Glance-Focus, nothing dropped below 0.5) and evaluates it at that
# point into $OUT/evaluation.json; leaves G (glance_threshold) and T (lesion_min_score) set for the caller.
# STRIDE= (empty) for the shipped 0.2.0 weights (stride-1 Glance stem); the trained stages use the strided stem.
NEW=${NEW:?the weights, e.g. models/model.pt}
OP=${OP:?their operating point, e.g. configs/operating_point.yaml}
OUT=${OUT:?a folder for the record}
STRIDE=${STRIDE-docs/results/run14/stride2.yaml}
CONFIGS="'configs/inference.yaml',${STRIDE:+'$STRIDE',}'configs/evaluate.yaml'"
G=$(python -c "import yaml; print(yaml.safe_load(open('$OP'))['glance_threshold'])")
T=$(python -c "import yaml; print(yaml.safe_load(open('$OP')).get('lesion_min_score', 0.5))")
mkdir -p "$OUT"
echo "== $SET: $NEW, glance_threshold $G, lesion_min_score $T $(date)"
python -m monai.bundle run evaluating \
    --config_file "[$CONFIGS]" \
    --datalist "$SET/datalist.json" --dataset_dir "$SET" --split validation \
    --ckpt_path "$NEW" --glance_threshold "$G" --lesion_min_score 0.5 --evaluation_min_score "$T" \
    --output_dir "$OUT" > "$OUT/log.txt" 2>&1
