"""The refusal policy of bundle inference (``python -m monai.bundle run``), the same as the Deploy app's.

A scan that cannot be screened (``bundle.validation``: wrong modality, gaps, gantry tilt, values no CT produces,
unreadable file, ...) is refused with one line naming it and the reason; the other scans of the input are still
screened, and the run ends with the app's exit status: 0 all screened, 3 none, 4 some (docs/deploy.md). Refusals
found from headers are listed up front by ``bundle.data.screening_inputs``; those found once the pixels are read
(the value checks of ``ValidateCTd``) by ``ScreeningDataset``; ``ScreeningEvaluator`` skips refused items, logs
them and ends the run with the status.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import torch.distributed as dist
from bundle.checkpoint import WeightsError
from bundle.cohort import CohortSummary
from bundle.data import REFUSED, refused_item
from bundle.validation import ExitStatus, InvalidScanError
from bundle.writers import recover_interrupted
from monai.data import Dataset
from monai.engines import SupervisedEvaluator

__all__ = [
    "ScreeningDataset",
    "ScreeningEvaluator",
    "claim_output_folder",
    "output_folder_problem",
    "refusal_of",
    "writable_problem",
    "weights_errors_in_one_line",
]

logger = logging.getLogger("gf_screen.screening")


def _in_chain(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def refusal_of(error: BaseException) -> InvalidScanError | None:
    """The ``InvalidScanError`` behind an error (MONAI's ``Compose`` wraps a transform's error in a RuntimeError)."""
    return _in_chain(error, InvalidScanError)


def weights_errors_in_one_line() -> None:
    """Bundle inference ends on unusable weights (missing, empty, cut, NaN, another architecture, an unsafe pickle)
    as the app does: one line and exit status 5, not a traceback of the config parser. Any other error keeps its
    traceback. Called first by ``configs/inference.yaml``'s ``setup``."""
    default = sys.excepthook

    def hook(kind, error, trace):
        problem = _in_chain(error, WeightsError)
        if problem is None:
            default(kind, error, trace)
            return
        logger.error("Cannot load the model: %s", problem)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ExitStatus.WEIGHTS)  # the interpreter would exit 1 after any hook

    sys.excepthook = hook


class ScreeningDataset(Dataset):
    """``monai.data.Dataset`` whose refused items (listed up front, or failing a value check once read) come out as
    ``{image, id, refused, status}`` instead of raising, so one bad scan does not stop the others."""

    def _transform(self, index: int):
        item = self.data[index]
        if REFUSED in item:
            return dict(item)
        try:
            return super()._transform(index)
        except Exception as e:
            refusal = refusal_of(e)
            if refusal is None:  # not a scan problem: a bug or the environment, which must not pass for a refusal
                raise
            return refused_item(item["image"], item["id"], str(refusal))


class ScreeningEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that passes refused items by (one log line each, nothing written for them) and ends
    the run with the front doors' exit status."""

    def __init__(self, *args, summary: CohortSummary | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.refused: list[tuple[str, str, int]] = []
        self.screened = 0
        self.summary = summary

    def run(self) -> None:
        """SIGTERM (a scheduler's stop, ``kill``) ends the run as Ctrl-C does, with an exception: the scan being
        written loses its staging folder in the writer's ``finally``, so nothing half-written or empty stays."""

        def stop(signum, frame):
            raise SystemExit(128 + signum)

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, stop) if main else None
        try:
            super().run()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _iteration(self, engine, batchdata):
        if REFUSED in batchdata:
            for case_id, reason, status in zip(batchdata["id"], batchdata[REFUSED], batchdata["status"]):
                logger.error("Not screened: %s: %s", case_id, reason)
                self.refused.append((str(case_id), str(reason), int(status)))
                if self.summary is not None:
                    self.summary.add(str(case_id), reason=str(reason))
            return {}
        try:
            output = super()._iteration(engine, batchdata)
        except Exception as e:
            failure = _in_chain(e, OSError)  # the writer's: disk full, folder gone; the staging is already removed
            if failure is None:
                raise
            case_id, reason = str(batchdata["id"][0]), f"its outputs could not be written ({failure})"
            logger.error("Not screened: %s: %s", case_id, reason)
            self.refused.append((case_id, reason, ExitStatus.NO_SCREENABLE_SERIES))
            if self.summary is not None:
                self.summary.add(case_id, reason=reason, failed=True)
            return {}
        self.screened += 1
        if self.summary is not None:
            for item in output if isinstance(output, list) else [output]:
                self.summary.add(str(item["findings"]["case_id"]), findings=item["findings"])
        return output

    def exit_status(self) -> int:
        if not self.refused:
            return ExitStatus.OK
        if self.screened:
            return ExitStatus.PARTIAL
        return max(status for _, _, status in self.refused)

    def finish(self) -> None:
        """Say what was screened and refused; leave with the exit status when it is not 0 (with a cohort summary:
        the whole run's, on rank 0; ``CohortSummary.finish``)."""
        status = self.exit_status()
        logger.info("Screened %d scan(s), refused %d.", self.screened, len(self.refused))
        if self.summary is not None:
            status = self.summary.finish(status)
        logger.info("Exit status %d.", status)
        if status != ExitStatus.OK:
            raise SystemExit(status)


def writable_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot take outputs (created if missing, then a file written and removed), or None."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        return f"output folder {folder} is not writable: {e.strerror or e}"
    return None


_claimed: dict[str, int] = {}  # output folder -> the open descriptor holding its lock until the process ends


def output_folder_problem(folder: str | os.PathLike) -> tuple[str, int] | None:
    """Why this run cannot write into ``folder``, with the exit status (2 not writable, 6 in use); None when it can,
    and then the folder is this process's until it ends.

    Two runs into one folder would both find a scan unscreened, screen it and publish over each other; an exclusive
    ``flock`` on the folder itself (no lock file left among the outputs) lets the first run have it. The kernel drops
    the lock when the process ends, however it ends, so a killed run never leaves the folder locked; what such a run
    left half-done (``bundle.writers.recover_interrupted``) is undone by the next run that holds the folder."""
    problem = writable_problem(folder)
    if problem is not None:
        return problem, ExitStatus.USAGE
    key = os.path.realpath(folder)
    if key in _claimed:
        return None
    descriptor = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return (
            f"output folder {folder} is in use by another screening run; wait for it to end or give another folder",
            ExitStatus.OUTPUT_IN_USE,
        )
    _claimed[key] = descriptor
    left = recover_interrupted(folder)
    if left:
        logger.info("Cleaned up after an interrupted run in %s: %s", folder, ", ".join(left))
    return None


def claim_output_folder(folder: str | os.PathLike, shared: bool = False) -> str:
    """The output folder, proven writable and held by this run before anything is screened (a read-only or missing
    mount, or another run writing there, is found now, not after an hour of inference); else one line and exit
    status 2 (not writable) or 6 (in use). ``shared``: the processes of one ``torchrun`` share it; rank 0 holds it
    (and cleans up after an interrupted run) before any rank goes on."""
    distributed = shared and dist.is_initialized()
    if distributed and dist.get_rank() != 0:
        found = writable_problem(folder)
        found = (found, ExitStatus.USAGE) if found is not None else None
    else:
        found = output_folder_problem(folder)
    if found is not None:
        logger.error("%s", found[0])
        raise SystemExit(found[1])
    if distributed:
        dist.barrier()
    return str(folder)
