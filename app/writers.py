"""Writer operators: DICOM SEG, DICOM SR, and the findings JSON, all staged in a temporary folder per case.

Each case's outputs are written into ``<output>/.staging-<case>-*``; the last writer renames that folder to
``<output>/<case_id>`` only when every output of the case is complete. A failed case leaves nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import torch
from bundle.writers import (
    CaseOutputs,
    atomic_write_json,
    atomic_write_nifti,
    finalize_findings,
    log_findings,
    publish_folder,
    staging_folder,
)

from app.cases import Case, RunReport
from app.dicom_outputs import build_seg, build_sr
from app.operators import StageOperator

__all__ = [
    "SegWriterOperator",
    "SRWriterOperator",
    "FindingsWriterOperator",
    "DICOM_FOLDER",
    "SEG_NAME",
    "SR_NAME",
    "staging_dir",
]

logger = logging.getLogger("gf_screen.app")

DICOM_FOLDER = "dicom"
"""The case folder's subfolder of DICOM outputs only: what an exporter sends to the PACS, apart from the JSON."""
SEG_NAME = f"{DICOM_FOLDER}/seg.dcm"
SR_NAME = f"{DICOM_FOLDER}/sr.dcm"


def staging_dir(case: Case, output: Path) -> Path:
    """The case's private output folder beside the final one (``bundle.writers.staging_folder``), made once."""
    if case.staging is None:
        case.staging = staging_folder(output, case.case_id)
    return case.staging


def _staged_dicom(case: Case, output: Path, name: str) -> Path:
    path = staging_dir(case, output) / name
    path.parent.mkdir(exist_ok=True)
    return path


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
        screened = case.screened
        if not screened.findings["lesions"]:
            case.outputs["seg"] = None
            return
        seg = build_seg(
            case.dicom.headers, screened.lesion_map, screened.findings, self.version, case.dicom.earlier_outputs
        )
        seg.save_as(_staged_dicom(case, self.output, SEG_NAME), enforce_file_format=True)
        case.outputs["seg"] = seg


class SRWriterOperator(_Writer):
    """DICOM Comprehensive 3D SR, TID 1500: scan-level result and per-lesion measurements referencing the SEG."""

    stage = "write_sr"

    def process(self, case: Case) -> None:
        if case.kind != "dicom":
            return
        seg, findings = case.outputs.get("seg"), case.screened.findings
        sr = build_sr(case.dicom.headers, seg, findings, self.version, case.dicom.earlier_outputs)
        sr.save_as(_staged_dicom(case, self.output, SR_NAME), enforce_file_format=True)
        case.outputs["sr"] = sr


class FindingsWriterOperator(_Writer):
    """The bundle's findings record (and for NIfTI input the bundle's NIfTI lesion map), then the atomic publish of
    the case folder (``bundle.writers.publish_folder``); the graph's sink. Failed cases lose their staging folder."""

    stage = "write_findings"
    emits = False

    def process(self, case: Case) -> None:
        staging = staging_dir(case, self.output)
        final = CaseOutputs(self.output, case.case_id)
        findings = finalize_findings(case.screened.findings, case.case_id, case.source, case.started, case.timings)
        outputs = {}
        if case.kind == "dicom":
            seg, sr = case.outputs.get("seg"), case.outputs["sr"]
            outputs["seg"] = {"file": SEG_NAME, "sop_instance_uid": str(seg.SOPInstanceUID)} if seg else None
            outputs["sr"] = {"file": SR_NAME, "sop_instance_uid": str(sr.SOPInstanceUID)}
            findings["source_series_instance_uid"] = case.case_id
        else:
            lesion_map = torch.from_numpy(case.screened.lesion_map)
            atomic_write_nifti(lesion_map, torch.as_tensor(case.screened.affine), staging / final.lesion_map.name)
            outputs["mask"] = {"file": final.lesion_map.name}
        findings["outputs"] = outputs
        atomic_write_json(findings, staging / final.findings.name)
        publish_folder(staging, final.folder, case.source if case.kind == "nifti" else None)
        case.staging = None
        case.screened.findings = findings
        self.report.written.append(final.folder)
        log_findings(findings, final.folder)

    def finish(self, cases: list[Case]) -> None:
        for case in cases:
            if not case.ok and case.staging is not None:
                shutil.rmtree(case.staging, ignore_errors=True)
