"""Writer operators: DICOM SEG, DICOM SR, and the findings JSON, all staged in a temporary folder per case.

Each case's outputs are written into ``<output>/.staging-<case>-*``; the last writer renames that folder to
``<output>/<case_id>`` only when every output of the case is complete. A failed case leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from app.cases import Case, RunReport
from app.dicom_outputs import build_seg, build_sr
from app.operators import StageOperator
from bundle.findings import lesion_label_map
from bundle.writers import atomic_write_json, atomic_write_nifti

__all__ = ["SegWriterOperator", "SRWriterOperator", "FindingsWriterOperator", "SEG_NAME", "SR_NAME", "staging_dir"]

logger = logging.getLogger("gf_screen.app")

SEG_NAME = "seg.dcm"
SR_NAME = "sr.dcm"


def staging_dir(case: Case, output: Path) -> Path:
    """The case's temporary output folder, beside the final one (same file system, so the rename is atomic)."""
    if case.staging is None:
        output.mkdir(parents=True, exist_ok=True)
        case.staging = Path(tempfile.mkdtemp(prefix=f".staging-{case.case_id}-", dir=output))
    return case.staging


class _Writer(StageOperator):
    def __init__(self, fragment, *args, output: Path, version: str, report: RunReport, **kwargs) -> None:
        self.output = Path(output)
        self.version = version
        super().__init__(fragment, *args, report=report, **kwargs)

    def compute(self, op_input, op_output, context) -> None:
        """As every stage, with pydicom's person-name warning silenced: it quotes the PatientName into the log."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*intended person name.*")
            super().compute(op_input, op_output, context)


class SegWriterOperator(_Writer):
    """DICOM Segmentation (highdicom), one segment per lesion; none when no lesion was found (the SR says so)."""

    stage = "write_seg"

    def process(self, case: Case) -> None:
        if case.kind != "dicom":
            return
        lesions = case.findings["lesions"]
        if not lesions:
            case.outputs["seg"] = None
            return
        labels = lesion_label_map(case.mask, case.data["affine"], lesions)
        seg = build_seg(case.datasets, labels, case.findings, self.version)
        path = staging_dir(case, self.output) / SEG_NAME
        seg.save_as(path, enforce_file_format=True)
        case.outputs["seg"] = seg


class SRWriterOperator(_Writer):
    """DICOM Comprehensive 3D SR, TID 1500: scan-level result and per-lesion measurements referencing the SEG."""

    stage = "write_sr"

    def process(self, case: Case) -> None:
        if case.kind != "dicom":
            return
        sr = build_sr(case.datasets, case.outputs.get("seg"), case.findings, self.version)
        sr.save_as(staging_dir(case, self.output) / SR_NAME, enforce_file_format=True)
        case.outputs["sr"] = sr


class FindingsWriterOperator(_Writer):
    """The core bundle's findings JSON (and for NIfTI input the bundle's NIfTI mask), then the atomic publish.

    Emits nothing: it is the graph's sink. Cases that failed anywhere have their staging folder removed here.
    """

    stage = "write_findings"

    def setup(self, spec) -> None:
        spec.input("cases")

    def compute(self, op_input, op_output, context) -> None:
        cases = op_input.receive("cases")
        t0 = time.perf_counter()
        for case in cases:
            if case.ok:
                try:
                    self.publish(case)
                except Exception as e:  # a write error fails this case only
                    case.fail(self.stage, f"{type(e).__name__}: {e}")
            if not case.ok and case.staging is not None:
                shutil.rmtree(case.staging, ignore_errors=True)
        self.report.stage_seconds[self.stage] = round(time.perf_counter() - t0, 3)

    def publish(self, case: Case) -> None:
        staging = staging_dir(case, self.output)
        findings = case.findings
        gf = findings["glance_focus"]
        findings = {"case_id": case.case_id, "image": case.source, **findings}
        findings["timings"] = {
            "glance_seconds": round(gf.get("glance_seconds", 0.0), 3),
            "focus_seconds": round(gf.get("focus_seconds", 0.0), 3),
            "stages_seconds": dict(case.timings),
            "total_seconds": round(time.perf_counter() - case.started, 3),
        }
        outputs = {}
        if case.kind == "dicom":
            seg, sr = case.outputs.get("seg"), case.outputs["sr"]
            outputs["seg"] = {"file": SEG_NAME, "sop_instance_uid": str(seg.SOPInstanceUID)} if seg else None
            outputs["sr"] = {"file": SR_NAME, "sop_instance_uid": str(sr.SOPInstanceUID)}
            findings["source_series_instance_uid"] = case.case_id
        else:
            mask_name = f"{case.case_id}_lesion.nii.gz"
            atomic_write_nifti(torch.from_numpy(case.mask), torch.as_tensor(case.data["affine"]), staging / mask_name)
            outputs["mask"] = {"file": mask_name}
        findings["outputs"] = outputs
        atomic_write_json(findings, staging / f"{case.case_id}_findings.json")
        case.findings = findings
        staging.chmod(0o755)  # mkdtemp's private mode is for the staging only
        for f in staging.iterdir():
            f.chmod(0o644)
        final = self.output / case.case_id
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".replaced-{case.case_id}-", dir=self.output))
            os.replace(final, old / "old")
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
        case.staging = None
        self.report.written.append(final)
        logger.info(
            "%s: %d lesion(s), suspicion score %.3f, Focus on %s of %s windows, %.1f s -> %s",
            case.case_id,
            findings["lesion_count"],
            findings["suspicion_score"],
            gf.get("windows_kept"),
            gf.get("windows_total"),
            findings["timings"]["total_seconds"],
            final,
        )
        if findings["weights"].get("status") == "untrained":
            logger.warning("%s: UNTRAINED WEIGHTS - these findings are not results.", case.case_id)
