"""Per-scan outputs written atomically: the lesion mask (NIfTI, original geometry) and the findings JSON."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.transforms import MapTransform

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_nifti", "case_id_of", "SaveScanOutputsd"]

logger = logging.getLogger("gf_screen.writers")

_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def case_id_of(image_path: str | os.PathLike) -> str:
    """Case id from a scan path: the file name without its image suffix, or the DICOM folder's name."""
    name = Path(image_path).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


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


def atomic_write_nifti(array: torch.Tensor, affine: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a 3D array with its affine as NIfTI through MONAI's ``NibabelWriter``, atomically."""
    with atomic_path(path, ".nii.gz") as tmp:
        writer = NibabelWriter(output_dtype=array.dtype)
        writer.set_data_array(array, channel_dim=None)
        writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
        writer.write(tmp, verbose=False)
    return Path(path)


class SaveScanOutputsd(MapTransform):
    """Write ``<output_dir>/<case_id>/<case_id>_lesion.nii.gz`` and ``<case_id>_findings.json`` for one scan.

    The findings get the case id, the input path and the end-to-end seconds (from ``StampTimed``). Nothing is
    written until both outputs are ready, and an output path that is the input itself is refused.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        findings_key: str = "findings",
        id_key: str = "id",
        start_time_key: str = "start_time",
    ) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.findings_key = findings_key
        self.id_key = id_key
        self.start_time_key = start_time_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        key = self.first_key(d)
        mask = d[key]
        source = str(mask.meta.get("filename_or_obj", ""))
        case_id = str(d.get(self.id_key) or case_id_of(source))
        folder = self.output_dir / case_id
        mask_path = folder / f"{case_id}_lesion.nii.gz"
        findings_path = folder / f"{case_id}_findings.json"
        if source and Path(source).resolve() in (mask_path.resolve(), findings_path.resolve()):
            raise ValueError(f"{case_id}: the output path {mask_path} is the input scan; choose another output_dir.")
        findings = {"case_id": case_id, "image": source, **d[self.findings_key]}
        start = d.get(self.start_time_key)
        findings["timings"] = {
            "glance_seconds": round(findings["glance_focus"].get("glance_seconds", 0.0), 3),
            "focus_seconds": round(findings["glance_focus"].get("focus_seconds", 0.0), 3),
            "total_seconds": round(time.perf_counter() - float(start), 3) if start is not None else None,
        }
        atomic_write_nifti(mask[0], mask.affine, mask_path)
        atomic_write_json(findings, findings_path)
        d[self.findings_key] = findings
        gf = findings["glance_focus"]
        logger.info(
            "%s: %d lesion(s), suspicion score %.3f, region %s [%s], Focus on %s of %s windows, %.1f s -> %s",
            case_id,
            findings["lesion_count"],
            findings["suspicion_score"],
            findings["region"],
            findings["region_source"],
            gf.get("windows_kept"),
            gf.get("windows_total"),
            findings["timings"]["total_seconds"] or 0.0,
            findings_path,
        )
        if findings["weights"].get("status") == "untrained":
            logger.warning("%s: UNTRAINED WEIGHTS - these findings are not results.", case_id)
        return d
