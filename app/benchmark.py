"""End-to-end seconds and peak memory of the app, from a DICOM folder to the SEG.

    python -m app.benchmark -i ../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom -m <bundle folder>
    python -m app.benchmark -i ../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom -m <bundle folder> \
        --slices 432   # the same anatomy as a 432-slice series (thinner slices), made first in a temporary folder

Runs the real app once in this process (the same operators as ``python app``) into a temporary output folder and
prints the stage seconds the operators recorded: loading (DICOM loader, series selection, series to volume),
inference (preprocessing, Glance, Focus with the bundle's postprocessing) and writing (SEG, SR, findings JSON), and
the process's peak resident memory (what a MAP's memory limit must allow).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
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
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    result["peak_rss_mib_after_stage"] = report.peak_rss_mib
    result["machine"] = {"cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    return result


def thinner_series(source: str | Path, target: str | Path, slices: int) -> Path:
    """``source``'s series resampled (linear, SimpleITK) to ``slices`` slices over the same extent and written as a
    new DICOM series: each slice keeps the headers of the nearest source slice, with new UIDs, position, number and
    thickness. A long scan for memory measurements from the real data (which hold no series this long)."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source))
    image = sitk.ReadImage(files)
    spacing, size = list(image.GetSpacing()), list(image.GetSize())
    new_spacing = spacing[2] * (size[2] - 1) / (slices - 1)
    grid = ([size[0], size[1], slices], sitk.Transform(), sitk.sitkLinear, image.GetOrigin())
    thin = sitk.Resample(image, *grid, [*spacing[:2], new_spacing], image.GetDirection(), -1024.0, sitk.sitkFloat32)
    hu = sitk.GetArrayFromImage(thin)  # (slice, row, column), in the order of ``files``
    target = Path(target)
    target.mkdir(parents=True)
    series = pydicom.uid.generate_uid()
    for k in range(slices):
        ds = pydicom.dcmread(files[min(round(k * new_spacing / spacing[2]), size[2] - 1)])
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        stored = np.round((hu[k] - intercept) / slope)
        dtype = np.int16 if int(ds.PixelRepresentation) else np.uint16
        ds.PixelData = np.clip(stored, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype).tobytes()
        ds.ImagePositionPatient = [float(v) for v in thin.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.SliceThickness, ds.InstanceNumber, ds.SeriesInstanceUID = new_spacing, k + 1, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(target / f"{k:04d}.dcm", enforce_file_format=True)
    return target


def main_cli(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-i", "--input", required=True, help="DICOM folder")
    ap.add_argument("-m", "--model", required=True, help="bundle folder (configs/ + models/model.pt)")
    ap.add_argument("--slices", type=int, help="screen the input resampled to this many slices (same extent)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        source = thinner_series(args.input, Path(folder) / "series", args.slices) if args.slices else args.input
        result = run(str(source), args.model)
    result["input"] = {"folder": args.input, "slices": args.slices or "as given"}
    print(json.dumps(result, indent=2))
    print(
        f"end to end {result['total_stages']:.1f} s: loading {result['loading']:.1f} s, "
        f"inference {result['inference']:.1f} s, writing {result['writing']:.1f} s "
        f"(wall with model setup {result['wall_including_model_setup']:.1f} s); "
        f"peak memory {result['peak_rss_mib']} MiB",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main_cli()
