"""Screening a cohort: skip what is already screened, share the rest among processes, and summarise every scan.

Bundle inference over thousands of scans (``configs/inference.yaml``; under ``torchrun`` with
``configs/multi_gpu_inference.yaml``) is resumable: a scan whose outputs are complete and whose findings record the
same weights (sha256) and the same operating point is not screened again (``pending``), so a killed run restarted
with the same command finishes the rest, and a new model or threshold screens everything again. ``CohortSummary``
writes ``<output_dir>/cohort_summary.csv``, one row per scan, after every scan (readable while the run goes on) and
at the end; under ``torchrun`` each rank writes its own rows and rank 0 merges them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from bundle.data import REFUSED
from bundle.validation import ExitStatus
from bundle.writers import CaseOutputs, atomic_path

__all__ = ["CohortSummary", "FIELDS", "SUMMARY", "operating_point", "pending", "summary_row"]

logger = logging.getLogger("gf_screen.screening")

SUMMARY = "cohort_summary.csv"
FIELDS = ("case_id", "status", "lesions", "suspicion_score", "keep_fraction", "seconds", "weights_sha256", "reason")
SCREENED, SCREENED_BEFORE, REFUSED_STATUS, FAILED = "screened", "screened before", "refused", "failed"


def operating_point(glance_threshold, lesion_probability_threshold, lesion_min_score, lesion_score) -> dict:
    """The settings that change a scan's findings besides the weights; a scan screened with others is redone."""
    return {
        "glance_threshold": glance_threshold,
        "lesion_probability_threshold": lesion_probability_threshold,
        "lesion_min_score": lesion_min_score,
        "lesion_score": lesion_score,
    }


def _point_of(findings: dict) -> dict:
    return operating_point(
        findings.get("glance_focus", {}).get("threshold"),
        findings.get("lesion_probability_threshold"),
        findings.get("lesion_min_score"),
        findings.get("lesion_score"),
    )


def _screened_before(case_id: str, output_dir: str | os.PathLike, weights: dict, point: dict) -> dict | None:
    """The findings of ``case_id``'s complete outputs in ``output_dir`` when they came from these weights (sha256)
    and this operating point; else None (not screened, cut short, untrained weights, or another model)."""
    outputs = CaseOutputs(Path(output_dir), case_id)
    if not (outputs.lesion_map.is_file() and outputs.findings.is_file()) or not weights.get("sha256"):
        return None
    try:
        findings = json.loads(outputs.findings.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same_weights = findings.get("weights", {}).get("sha256") == weights["sha256"]
    return findings if same_weights and _point_of(findings) == point else None


def pending(items: list[dict], output_dir: str | os.PathLike, weights: dict, point: dict) -> list[dict]:
    """The items still to screen; the others are marked ``screened_before`` (their findings), to be summarised but
    not screened. One log line says how many were skipped and why."""
    result, skipped = [], 0
    for item in items:
        findings = None if REFUSED in item else _screened_before(str(item["id"]), output_dir, weights, point)
        if findings is not None:
            skipped += 1
        result.append(dict(item, screened_before=findings) if findings is not None else item)
    if skipped:
        logger.info(
            "Already screened with these weights and this operating point: %d of %d scan(s), skipped.",
            skipped,
            len(items),
        )
    return result


def summary_row(findings: dict, status: str = SCREENED) -> dict:
    """A summary row from a scan's findings record (as written by ``bundle.writers.SaveScanOutputsd``)."""
    gf = findings.get("glance_focus", {})
    return {
        "case_id": findings["case_id"],
        "status": status,
        "lesions": findings["lesion_count"],
        "suspicion_score": findings["suspicion_score"],
        "keep_fraction": gf.get("keep_fraction"),
        "seconds": findings.get("timings", {}).get("total_seconds"),
        "weights_sha256": findings.get("weights", {}).get("sha256") or findings.get("weights", {}).get("status"),
        "reason": "",
    }


def _write_csv(rows: list[dict], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path, ".csv") as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


class CohortSummary:
    """One row per scan of the input, in the input's order, in ``<output_dir>/cohort_summary.csv``.

    ``ScreeningEvaluator`` calls ``add`` after every scan it screens or refuses. Each process writes its own rows
    (``.cohort/rank<k>.csv``); rank 0 merges them with the rows of the scans screened before (``pending``) into the
    summary after each of its scans and, after a barrier, once more at the end. Scans that no process has reached
    yet are listed as ``pending``.
    """

    def __init__(self, items: list[dict], output_dir: str | os.PathLike) -> None:
        self.items = items
        self.output_dir = Path(output_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.rows: list[dict] = []
        self.started = time.perf_counter()
        self.unwritable = False
        self._rank_file(self.rank).unlink(missing_ok=True)  # an earlier run's rows of this rank
        if self.rank == 0:
            world = dist.get_world_size() if dist.is_initialized() else 1
            for path in (self.output_dir / ".cohort").glob("rank*.csv"):
                if int(path.stem[4:]) >= world:
                    path.unlink(missing_ok=True)

    @property
    def path(self) -> Path:
        return self.output_dir / SUMMARY

    def _rank_file(self, rank: int) -> Path:
        return self.output_dir / ".cohort" / f"rank{rank}.csv"

    def add(self, case_id: str, findings: dict | None = None, reason: str | None = None, failed: bool = False):
        """Record one scan: screened (its findings) or refused/failed (the reason)."""
        if findings is not None:
            self.rows.append(summary_row(findings))
        else:
            row = dict.fromkeys(FIELDS, "")
            row.update(case_id=case_id, status=FAILED if failed else REFUSED_STATUS, reason=reason or "")
            self.rows.append(row)
        try:
            _write_csv(self.rows, self._rank_file(self.rank))
            if self.rank == 0:
                self.merge()
        except OSError as e:  # a full disk must not stop the screening; the scan's own outputs say what happened
            if not self.unwritable:
                logger.warning("The cohort summary cannot be written (%s); screening goes on.", e)
            self.unwritable = True

    def merge(self) -> list[dict]:
        """Write the summary from every rank's rows so far (rank 0); returns its rows."""
        rows = self._merged()
        _write_csv(rows, self.path)
        return rows

    def _merged(self) -> list[dict]:
        done = {}
        for path in sorted((self.output_dir / ".cohort").glob("rank*.csv")):
            done.update((row["case_id"], row) for row in _read_csv(path))
        rows = []
        for item in self.items:
            case_id = str(item["id"])
            if item.get("screened_before") is not None:
                rows.append(summary_row(item["screened_before"], SCREENED_BEFORE))
            elif case_id in done:
                rows.append(done[case_id])
            else:
                rows.append({**dict.fromkeys(FIELDS, ""), "case_id": case_id, "status": "pending"})
        return rows

    def finish(self, status: int) -> int:
        """At the end of every rank's share: wait for all, merge (rank 0), and agree on the run's exit status (the
        worst of the ranks'). Returns the status this process exits with: the run's on rank 0, 0 on the others (a
        launcher such as torchrun then fails the run once, through rank 0)."""
        if dist.is_initialized():
            worst = torch.tensor([status])
            dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # also the barrier: every rank's rows are written
            status = int(worst)
        if self.rank != 0:
            return ExitStatus.OK
        rows = self._merged()
        try:
            _write_csv(rows, self.path)
        except OSError as e:
            logger.warning("The cohort summary cannot be written (%s).", e)
        finally:
            shutil.rmtree(self.output_dir / ".cohort", ignore_errors=True)
        statuses = [row["status"] for row in rows]
        screened = sum(s in (SCREENED, SCREENED_BEFORE) for s in statuses)
        bad = len(statuses) - screened
        logger.info("Cohort: %d scan(s), %d screened (%d before this run), %d not; summary %s", len(statuses),
                    screened, statuses.count(SCREENED_BEFORE), bad, self.path)  # fmt: skip
        now, hours = statuses.count(SCREENED), (time.perf_counter() - self.started) / 3600
        if now:
            logger.info("This run: %d scan(s) screened in %.1f s, %.1f scans per hour.", now, hours * 3600, now / hours)
        if not bad:
            return ExitStatus.OK
        return ExitStatus.PARTIAL if screened else max(status, ExitStatus.NO_SCREENABLE_SERIES)
