"""What flows between the operators: one ``Case`` per selected series (or NIfTI scan), and the run's outcome."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pydicom
import torch
from bundle.inferer import GlanceFocusStats, Tiling
from bundle.validation import ExitStatus
from monai.deploy.core.domain import DICOMSeries, DICOMStudy

from app.dicom_outputs import unicode_headers

__all__ = ["Case", "DicomSource", "ExitStatus", "RunReport", "Screened", "Selection"]

logger = logging.getLogger("gf_screen.app")


@dataclass
class DicomSource:
    """Where a DICOM case came from: the SDK's study and series, the series' pydicom datasets sorted along the slice
    normal (the order of the volume's last axis), which the SEG and SR reference, and the study's result objects."""

    study: DICOMStudy
    series: DICOMSeries
    datasets: list[pydicom.Dataset] = field(default_factory=list)
    earlier_outputs: list[pydicom.Dataset] = field(default_factory=list)
    """The study's result objects (SEG, SR, ...) in the input: an earlier run's outputs among them."""

    @cached_property
    def headers(self) -> list[pydicom.Dataset]:
        """The datasets' headers in UTF-8 (``unicode_headers``), made once for the SEG and the SR writer."""
        return unicode_headers(self.datasets)


@dataclass
class Selection:
    """Glance's part: the padded volume, its windows and each window's score and keep decision."""

    padded: torch.Tensor
    tiling: Tiling
    stats: GlanceFocusStats


@dataclass
class Screened:
    """The bundle's result on the scan's own grid: the lesion map (lesion k = the findings' lesion k) and findings."""

    lesion_map: np.ndarray
    affine: np.ndarray
    findings: dict


@dataclass
class Case:
    """One scan on its way through the graph; a failed case keeps its reason and is skipped by later stages.

    ``data`` is the MONAI data dictionary the bundle's transforms read and write. Nothing here is logged except
    ``case_id`` (a UID or file name).
    """

    case_id: str
    source: str
    dicom: DicomSource | None = None
    data: dict = field(default_factory=dict)
    selection: Selection | None = None
    screened: Screened | None = None
    staging: Path | None = None
    outputs: dict[str, pydicom.Dataset | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def kind(self) -> str:
        """``dicom`` (SEG and SR are written) or ``nifti`` (the research path: a NIfTI lesion map)."""
        return "dicom" if self.dicom is not None else "nifti"

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, stage: str, reason: str) -> None:
        """Mark the case failed; the message names the case and the stage, never patient data."""
        self.error = f"{stage}: {reason}"
        logger.error("%s: not screened (%s).", self.case_id, self.error)


@dataclass
class RunReport:
    """Filled by the operators, read by ``main`` for the exit status."""

    rejected_series: list[str] = field(default_factory=list)
    studies_without_series: list[str] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, int] = field(default_factory=dict)
    """The process's peak resident memory when each stage ended (a stage that raises it set a new peak)."""

    def exit_status(self) -> int:
        failed = [c for c in self.cases if not c.ok] + self.studies_without_series
        if not self.written:
            return ExitStatus.NO_SCREENABLE_SERIES
        return ExitStatus.PARTIAL if failed else ExitStatus.OK
