#!/usr/bin/env bash
# After run 12: run 11's after script (run11_after.sh beside this file, runs/model11/after.sh in the project), with
# the same calibration and test-split commands and the same pre-registered shipping rule, on run 12's weights. From
# the project root:
NEW=runs/model12/models/model.pt OUT=runs/model12 runs/model11/after.sh
