"""Input checks that turn bad scans into clear errors before anything is computed or written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

__all__ = [
    "InvalidScanError",
    "check_complete",
    "check_dicom_series",
    "check_series_headers",
    "check_ct_volume",
    "is_dicom_file",
    "MIN_EXTENT_MM",
]

MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0
MIN_EXTENT_MM = 30.0
"""The least extent along every axis (and, for DICOM, along the slice axis) that is worth screening."""


class InvalidScanError(ValueError):
    """A scan the screening cannot process; the message says which scan and why."""


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble (Part 10), whatever its suffix."""
    try:
        with open(path, "rb") as f:
            return f.seek(128) == 128 and f.read(4) == b"DICM"
    except OSError:
        return False


def check_complete(header: pydicom.Dataset, path: Path) -> None:
    """Reject a truncated file: pydicom returns what it could read of a cut header, ITK silently skips cut pixels."""
    image_tags = ("Rows", "Columns", "BitsAllocated")
    if "SeriesInstanceUID" not in header or (
        str(getattr(header, "Modality", "")) == "CT" and any(t not in header for t in image_tags)
    ):
        raise InvalidScanError(f"{path}: truncated or incomplete DICOM header (no SeriesInstanceUID or image size).")
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if "Rows" not in header or syntax is None or syntax.is_compressed or syntax.is_deflated:
        return
    frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    samples = int(getattr(header, "SamplesPerPixel", 1) or 1)
    expected = int(header.Rows) * int(header.Columns or 0) * frames * samples * int(header.BitsAllocated or 0) // 8
    size = path.stat().st_size
    if size < expected:
        raise InvalidScanError(
            f"{path}: truncated DICOM file ({size} bytes, but its uncompressed pixel data alone needs {expected})."
        )


def check_dicom_series(folder: str | Path, spacing_tolerance: float = 0.05) -> dict:
    """Check that ``folder`` holds exactly one screenable CT series (``check_series_headers``); return its facts.

    The readers would otherwise load a wrong modality, a localizer, or a series with missing slices (ITK warns and
    assumes uniform spacing), silently producing a distorted volume.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))
    if not files:
        raise InvalidScanError(f"{folder}: no DICOM files found.")
    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError, EOFError) as e:
            raise InvalidScanError(f"{path}: unreadable DICOM file ({e}).") from e
        check_complete(headers[-1], path)
    return check_series_headers(headers, files, folder, spacing_tolerance)


def check_series_headers(
    headers: Sequence[pydicom.Dataset], files: Sequence[Path], folder: str | Path, spacing_tolerance: float = 0.05
) -> dict:
    """The one DICOM series policy of both entry points (bundle inference and the Deploy app), on headers read:
    one CT series, not a localizer and not derived (ImageType), axial, complete and evenly spaced, and at least
    ``MIN_EXTENT_MM`` along the slice axis. Raises ``InvalidScanError`` naming ``folder`` and the reason."""
    series = {str(getattr(h, "SeriesInstanceUID", "")) for h in headers}
    if len(series) != 1:
        raise InvalidScanError(f"{folder}: {len(series)} DICOM series in one folder; give one series per folder.")
    first = headers[0]
    modality = str(getattr(first, "Modality", ""))
    if modality != "CT":
        raise InvalidScanError(f"{folder}: modality {modality or 'missing'}, not CT.")
    image_types = [[str(v).upper() for v in (getattr(h, "ImageType", None) or ["ORIGINAL"])] for h in headers]
    if any("LOCALIZER" in t for t in image_types):
        raise InvalidScanError(f"{folder}: a localizer (scout), not a volume.")
    if any(t[0] == "DERIVED" for t in image_types):
        raise InvalidScanError(f"{folder}: a derived series (ImageType DERIVED: reformat, MIP or processed copy).")
    for h, path in zip(headers, files):
        if not hasattr(h, "ImagePositionPatient") or not hasattr(h, "ImageOrientationPatient"):
            raise InvalidScanError(f"{path}: no ImagePositionPatient/ImageOrientationPatient; not a CT slice.")
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    if abs(normal[2]) < 0.9:
        raise InvalidScanError(f"{folder}: not an axial series (slice normal {np.round(normal, 3).tolist()}).")
    orientations = np.asarray([h.ImageOrientationPatient for h in headers], dtype=float)
    if not np.allclose(orientations, orientation, atol=1e-3):
        raise InvalidScanError(f"{folder}: slices have different orientations.")
    if len(headers) < 2:
        raise InvalidScanError(f"{folder}: a single slice is a 2D image, not a CT volume.")
    positions = np.sort([float(np.dot(np.asarray(h.ImagePositionPatient, dtype=float), normal)) for h in headers])
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        raise InvalidScanError(f"{folder}: duplicate slice positions.")
    step = float(np.median(gaps))
    if np.any(np.abs(gaps - step) > spacing_tolerance * step):
        worst = float(gaps[np.argmax(np.abs(gaps - step))])
        raise InvalidScanError(
            f"{folder}: uneven slice spacing or missing slices "
            f"(median gap {step:.3f} mm, found a gap of {worst:.3f} mm)."
        )
    extent = len(headers) * step
    if extent < MIN_EXTENT_MM:
        raise InvalidScanError(
            f"{folder}: too small to screen: {len(headers)} slices cover {extent:.1f} mm along the slice axis, at "
            f"least {MIN_EXTENT_MM:.0f} mm are needed."
        )
    return {
        "series_instance_uid": str(first.SeriesInstanceUID),
        "n_slices": len(headers),
        "slice_spacing_mm": step,
        "body_part": str(getattr(first, "BodyPartExamined", "")).upper(),
    }


def check_ct_volume(
    image: np.ndarray, spacing: Sequence[float], source: str, min_extent_mm: float = MIN_EXTENT_MM
) -> None:
    """Check a loaded volume (C, X, Y, Z) in Hounsfield units: 3D, sane spacing, big enough, HU-like values."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise InvalidScanError(f"{source}: expected one 3D CT volume, got array of shape {tuple(image.shape)}.")
    spacing = np.asarray(spacing, dtype=float)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)):
        raise InvalidScanError(f"{source}: invalid voxel spacing {spacing.tolist()}.")
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise InvalidScanError(
            f"{source}: voxel spacing {np.round(spacing, 4).tolist()} mm is outside "
            f"[{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm; the header is probably wrong."
        )
    extent = np.asarray(image.shape[1:]) * spacing
    if np.any(extent < min_extent_mm):
        raise InvalidScanError(
            f"{source}: the scan covers {np.round(extent, 1).tolist()} mm, less than {min_extent_mm} mm along an "
            "axis; too small to screen (a window is 96 x 96 x 192 mm)."
        )
    values = np.asarray(image)
    low, high = np.percentile(values[:, :: max(1, values.shape[1] // 64), :: max(1, values.shape[2] // 64)], [1, 99])
    if not (low < -500 and high > -200):
        raise InvalidScanError(
            f"{source}: intensities (1st-99th percentile {low:.0f} to {high:.0f}) do not look like CT in Hounsfield "
            "units (air near -1000 HU and soft tissue near 0 HU are expected)."
        )
