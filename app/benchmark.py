"""End-to-end seconds of the app, from a DICOM folder to the SEG, split into loading, inference and writing.

    python -m app.benchmark -i ../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom -m <bundle folder>

Runs the real app once in this process (the same operators as ``python app``) into a temporary output folder and
prints the stage seconds the operators recorded: loading (DICOM loader, series selection, series to volume),
inference (preprocessing, Glance, Focus with the bundle's postprocessing) and writing (SEG, SR, findings JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from app.app import main
from app.cases import RunReport

GROUPS = {
    "loading": ("load", "select", "series_to_volume"),
    "inference": ("preprocessing", "glance", "focus"),
    "writing": ("write_seg", "write_sr", "write_findings"),
}


def run(input_path: str, model_path: str) -> dict:
    """One app run; the stage seconds grouped, plus the wall clock of the whole call (model loading included)."""
    report = RunReport()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        status = main(["app", "-i", input_path, "-o", out, "-m", model_path], report=report)
        wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"the app exited with status {status}; see its log above")
    stages = report.stage_seconds
    result = {group: round(sum(stages.get(s, 0.0) for s in names), 2) for group, names in GROUPS.items()}
    result["total_stages"] = round(sum(result.values()), 2)
    result["wall_including_model_setup"] = round(wall, 2)
    result["stages"] = stages
    result["cases"] = [  # the lesion count sets the SEG's size and writing time
        {**c.screened.findings["glance_focus"], "lesion_count": c.screened.findings["lesion_count"]}
        for c in report.cases
        if c.ok
    ]
    result["machine"] = {"cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    return result


def main_cli(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-i", "--input", required=True, help="DICOM folder")
    ap.add_argument("-m", "--model", required=True, help="bundle folder (configs/ + models/model.pt)")
    args = ap.parse_args(argv)
    result = run(args.input, args.model)
    print(json.dumps(result, indent=2))
    print(
        f"end to end {result['total_stages']:.1f} s: loading {result['loading']:.1f} s, "
        f"inference {result['inference']:.1f} s, writing {result['writing']:.1f} s "
        f"(wall with model setup {result['wall_including_model_setup']:.1f} s)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main_cli()
