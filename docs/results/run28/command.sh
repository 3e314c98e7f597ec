#!/usr/bin/env bash
# Stage 21 (run 28, no training): the shipped model's Focus (0.2.0, the only Focus that finds lung1's nodule and
# reports 7 findings on the abdominal series) with run 27's Glance (test window AUC 0.944, 5 of 24 lesion-free windows
# kept at 95 % of lesion windows; the Glance stage trains Glance alone on ground-truth window labels, so it does not
# depend on the Focus it was written beside). Every stage since run 19 lost lung1 and gave 19-37 abdominal findings
# through Focus; the shipped model's misses and false positives at a low threshold come from windows a Glance of AUC
# 0.67 kept. The swap is `bundle.interpolate` at alpha 0 on Focus (Focus from --base, Glance from --tuned), with its
# record. Run 26's weights come from the committed stage file (sha256 checked), run 27 is remade by its own script.
# Written and committed before it runs; reported whatever it gives. Then, unchanged:
# NEW=runs/model28/models/model.pt OUT=runs/model28 docs/results/run14/after.sh (its shipping rule).
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
if [ ! -f runs/model26/models/model.pt ]; then
    mkdir -p runs/model26/models
    echo "565c3637fe1c6ec2c5df73b7b3f8ea7bc1c69880699079cf8297d523c6ee85f0  models/stages/run26.pt" | sha256sum -c -
    cp models/stages/run26.pt runs/model26/models/model.pt
fi
[ -f runs/model27/models/model.pt ] || docs/results/run27/command.sh
mkdir -p runs/model28/models
python -m bundle.interpolate --base models/model.pt --tuned runs/model27/models/model.pt --alpha 0 \
    --networks focus --output runs/model28/models/model.pt
