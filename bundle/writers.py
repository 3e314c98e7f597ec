"""Per-scan outputs: where they go, the findings record as written, and publishing a case folder atomically."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from bundle.data import case_id_of
from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.transforms import MapTransform

__all__ = [
    "atomic_path",
    "atomic_write_json",
    "atomic_write_nifti",
    "CaseOutputs",
    "finalize_findings",
    "log_findings",
    "print_and_record",
    "publish_folder",
    "refuse_input_folder",
    "SaveScanOutputsd",
    "recover_interrupted",
    "staging_folder",
]

logger = logging.getLogger("gf_screen.writers")


def _temp_beside(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would survive the rename and hide outputs from other users
    return Path(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary file beside ``path`` to write; renamed onto ``path`` when the block succeeds, removed otherwise.

    Readers never see half a file, and a failed write leaves the old file (or none) in place.
    """
    tmp = _temp_beside(Path(path), suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(obj: object, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write JSON atomically (``atomic_path``)."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n", encoding="utf-8")
    return Path(path)


def print_and_record(summary: str, record: dict, output: str | os.PathLike | None) -> None:
    """How a measuring command ends: its summary on stdout, and every figure as JSON at ``output`` (atomically)."""
    print(summary, flush=True)
    if output:
        atomic_write_json(record, output)
        print(f"wrote {output}")


def atomic_write_nifti(array: torch.Tensor, affine: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a 3D array with its affine as NIfTI through MONAI's ``NibabelWriter``, atomically."""
    with atomic_path(path, ".nii.gz") as tmp:
        writer = NibabelWriter(output_dtype=array.dtype)
        writer.set_data_array(array, channel_dim=None)
        writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
        writer.write(tmp, verbose=False)
    return Path(path)


@dataclass(frozen=True)
class CaseOutputs:
    """Where one case's outputs go: ``<output_dir>/<case_id>/<case_id>_lesion.nii.gz`` and ``..._findings.json``
    (the layout the bundle, the app, calibration and evaluation all read and write)."""

    output_dir: Path
    case_id: str

    @property
    def folder(self) -> Path:
        return Path(self.output_dir) / self.case_id

    @property
    def lesion_map(self) -> Path:
        return self.folder / f"{self.case_id}_lesion.nii.gz"

    @property
    def findings(self) -> Path:
        return self.folder / f"{self.case_id}_findings.json"


def staging_folder(output_dir: str | os.PathLike, case_id: str) -> Path:
    """A private folder beside the case's final one (same file system, so ``publish_folder``'s rename is atomic)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".staging-{case_id}-", dir=output_dir))


def refuse_input_folder(folder: Path, source: str | os.PathLike | None) -> None:
    """Raise when replacing ``folder`` would touch ``source``, the input scan (the file or a folder above it)."""
    if source and Path(folder).resolve() in (Path(source).resolve(), *Path(source).resolve().parents):
        raise ValueError(f"{source} is the input scan and lies in the output folder {folder}; choose another output "
                         "folder.")  # fmt: skip


def publish_folder(staging: Path, final: Path, source: str | os.PathLike | None = None) -> Path:
    """Make ``staging`` the case folder ``final`` in one rename, replacing an older one whole; readers see the old
    outputs or the new ones, never a mix. Refused (staging removed) when ``source``, the input, lies in ``final``."""
    staging, final = Path(staging), Path(final)
    try:
        refuse_input_folder(final, source)
    except ValueError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.chmod(0o755)  # mkdtemp's private mode is for the staging only
    for f in staging.iterdir():
        f.chmod(0o644)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".replaced-{final.name}-", dir=final.parent))
        os.replace(final, old / "old")
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    return final


def recover_interrupted(output_dir: str | os.PathLike) -> list[str]:
    """Undo what a killed run left in ``output_dir`` (call it only while holding the folder,
    ``bundle.screening.output_folder_problem``): staging folders are removed, and a case folder caught between the
    two renames of ``publish_folder`` gets its old outputs back. Returns the names it removed or restored."""
    done = []
    for path in sorted(Path(output_dir).glob(".replaced-*")):
        name = path.name[len(".replaced-") :].rsplit("-", 1)[0]
        if (path / "old").is_dir() and not (Path(output_dir) / name).exists():
            os.replace(path / "old", Path(output_dir) / name)
            done.append(f"{name} (restored)")
        shutil.rmtree(path, ignore_errors=True)
        done.append(path.name)
    for path in sorted(Path(output_dir).glob(".staging-*")):
        shutil.rmtree(path, ignore_errors=True)
        done.append(path.name)
    return done


def finalize_findings(
    findings: dict, case_id: str, source: str, started: float | None, stages: dict | None = None
) -> dict:
    """The findings record as written: case id and input first, then the screening's findings, then the seconds
    (Glance and Focus from the inferer, the app's ``stages`` when given, end to end since ``started``)."""
    gf = findings.get("glance_focus", {})
    timings = {
        "glance_seconds": round(gf.get("glance_seconds", 0.0), 3),
        "focus_seconds": round(gf.get("focus_seconds", 0.0), 3),
    }
    if stages is not None:
        timings["stages_seconds"] = dict(stages)
    timings["total_seconds"] = round(time.perf_counter() - float(started), 3) if started is not None else None
    return {"case_id": case_id, "image": source, **findings, "timings": timings}


def log_findings(findings: dict, destination: Path) -> None:
    """The one log line of a screened case (and a warning when its weights were untrained)."""
    gf = findings.get("glance_focus", {})
    logger.info(
        "%s: %d lesion(s), suspicion score %.3f, region %s [%s], Focus on %s of %s windows, %.1f s -> %s",
        findings["case_id"],
        findings["lesion_count"],
        findings["suspicion_score"],
        findings.get("region"),
        findings.get("region_source"),
        gf.get("windows_kept"),
        gf.get("windows_total"),
        findings["timings"]["total_seconds"] or 0.0,
        destination,
    )
    if findings["weights"].get("status") == "untrained":
        logger.warning("%s: UNTRAINED WEIGHTS - these findings are not results.", findings["case_id"])


class SaveScanOutputsd(MapTransform):
    """Write ``CaseOutputs``: the lesion map (NIfTI, original geometry, lesion k = the findings' lesion k) and the
    findings JSON of one scan, staged and published as one folder (``publish_folder``).

    The findings get the case id, the input path (``source_key`` when the item has it: the folder a series was
    chosen from, not the links it was read through) and the end-to-end seconds (from ``StampTimed``). An output
    folder that holds the input scan is refused.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        findings_key: str = "findings",
        id_key: str = "id",
        start_time_key: str = "start_time",
        source_key: str = "source",
    ) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.findings_key = findings_key
        self.id_key = id_key
        self.start_time_key = start_time_key
        self.source_key = source_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        key = self.first_key(d)
        lesion_map = d[key]
        source = str(d.get(self.source_key) or lesion_map.meta.get("filename_or_obj", ""))
        case_id = str(d.get(self.id_key) or case_id_of(source))
        final = CaseOutputs(self.output_dir, case_id)
        refuse_input_folder(final.folder, source)
        findings = finalize_findings(d[self.findings_key], case_id, source, d.get(self.start_time_key))
        staging = staging_folder(self.output_dir, case_id)
        try:
            atomic_write_nifti(lesion_map[0], lesion_map.affine, staging / final.lesion_map.name)
            atomic_write_json(findings, staging / final.findings.name)
            publish_folder(staging, final.folder, source)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        d[self.findings_key] = findings
        log_findings(findings, final.findings)
        return d
