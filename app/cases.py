"""What flows between the operators: one ``Case`` per selected series (or NIfTI scan), and the run's outcome."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Case", "RunReport", "ExitStatus"]

logger = logging.getLogger("gf_screen.app")


class ExitStatus:
    """Exit statuses of ``python app`` (docs/deploy.md lists them)."""

    OK = 0
    INTERNAL_ERROR = 1
    USAGE = 2
    NO_SCREENABLE_SERIES = 3
    PARTIAL = 4
    WEIGHTS = 5


@dataclass
class Case:
    """One scan on its way through the graph; a failed case keeps its reason and is skipped by later stages.

    ``datasets`` are the series' pydicom datasets sorted along the slice normal (the order of the volume's last axis),
    ``study`` and ``series`` the SDK's domain objects. Nothing here is logged except ``case_id`` (a UID or file name).
    """

    case_id: str
    source: str
    kind: str = "dicom"
    study: Any = None
    series: Any = None
    datasets: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    padded: Any = None
    tiling: Any = None
    scores: Any = None
    keep: Any = None
    findings: dict | None = None
    mask: Any = None
    staging: Path | None = None
    outputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)

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

    def exit_status(self) -> int:
        failed = [c for c in self.cases if not c.ok] + self.studies_without_series
        if not self.written:
            return ExitStatus.NO_SCREENABLE_SERIES
        return ExitStatus.PARTIAL if failed else ExitStatus.OK
