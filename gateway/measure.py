"""Seconds per step of one gateway cycle on a real series, against a real Orthanc (``gateway.loopback``).

    python -m gateway.measure ../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom --model . \
        --output docs/results/gateway_134.json

Steps: C-STORE of the series into Orthanc (dcmtk ``storescu``), the wait for the study to be stable (``StableAge``,
here 2 s; the shipped template says 60 s), the gateway's export, app run, store-back and forward (from its record on
the series), then QIDO-RS of the outputs and WADO-RS of the SEG and the SR, as a viewer or a PACS would fetch them.
Prints the figures and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from gateway.loopback import LoopbackOrthanc

ROOT = Path(__file__).resolve().parents[1]


def measure(series: Path, model: Path, stable_age: int) -> dict:
    files = sorted(p for p in series.iterdir() if p.is_file() and p.suffix == ".dcm")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    seconds: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="gf-screen-gateway-"))  # kept when something fails: orthanc.log is there
    with LoopbackOrthanc(work, sys.executable, ROOT, model, stable_age) as pacs:
        start = time.perf_counter()
        pacs.c_store(files)
        seconds["c_store_in"] = time.perf_counter() - start
        start = time.perf_counter()
        (record,) = pacs.screened(study, timeout=3600)
        seconds["stored_to_screened"] = time.perf_counter() - start
        for step, value in record["seconds"].items():
            seconds[f"gateway_{step}"] = value
        seconds["stable_wait_and_queue"] = seconds["stored_to_screened"] - sum(record["seconds"].values())
        start = time.perf_counter()
        items = pacs.qido(f"studies/{study}/instances?Modality=SEG") + pacs.qido(
            f"studies/{study}/instances?Modality=SR"
        )
        seconds["qido_rs"] = time.perf_counter() - start
        start = time.perf_counter()
        for item in items:
            pacs.wado(study, item["0020000E"]["Value"][0], item["00080018"]["Value"][0])
        seconds["wado_rs_seg_and_sr"] = time.perf_counter() - start
    shutil.rmtree(work)
    return {
        "series": str(series),
        "slices": len(files),
        "model": str(model),
        "stable_age_s": stable_age,
        "status": record["status"],
        "lesions": record.get("lesions"),
        "outputs_found_by_qido": len(items),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("series", type=Path, help="a folder with one DICOM CT series")
    parser.add_argument("--model", type=Path, default=ROOT, help="the bundle folder (default: this project)")
    parser.add_argument("--stable_age", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    result = measure(args.series.resolve(), args.model.resolve(), args.stable_age)
    for step, value in result["seconds"].items():
        print(f"{step:24s} {value:8.2f} s")
    found = result["outputs_found_by_qido"]
    print(f"status {result['status']}, {result['lesions']} lesion(s), {found} outputs by QIDO-RS")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
