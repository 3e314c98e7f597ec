"""Input checks that turn bad scans into clear errors before anything is computed or written."""

from __future__ import annotations

import filecmp
import logging
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk  # noqa: N813

__all__ = [
    "DicomFiles",
    "ExitStatus",
    "InvalidScanError",
    "check_image_file",
    "check_complete",
    "check_series_headers",
    "check_ct_volume",
    "duplicate_slices",
    "is_dicom_file",
    "read_header",
    "series_rank",
    "sort_dicom_files",
    "stacking_angle_degrees",
    "DERIVED_MODALITIES",
    "MAX_VOXELS",
    "MIN_EXTENT_MM",
    "REQUIRED_UIDS",
]

MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0
# The most the slice stacking may deviate from the slice normal (gantry tilt) before a series is refused.
MAX_TILT_DEGREES = 1.0
HU_RANGE = (-1024.0, 3071.0)
HU_MARGIN = 1000.0
# CT values lie in ``HU_RANGE`` (12-bit CT); more than this fraction of voxels beyond it by ``HU_MARGIN`` (one padding
# value below the range aside: the outside of the reconstruction circle) is a wrong rescale, not a scan.
MAX_OUT_OF_RANGE_FRACTION = 0.01
# The largest scan screened (voxels on its own grid), so that memory stays within what app/app.yaml declares (12 GiB):
# the app peaked at 8.4 GiB on a 512 x 512 x 432 series (113 M voxels; docs/deploy.md, "Memory"). A larger series is
# refused; in a study the selector then takes the next screenable series (a thicker reconstruction).
MAX_VOXELS = 512 * 512 * 500
# The least extent along every axis (and, for DICOM, along the slice axis) that is worth screening.
MIN_EXTENT_MM = 30.0


class ExitStatus:
    """Exit statuses of both front doors, ``python app`` and bundle inference (docs/deploy.md lists them)."""

    OK = 0
    INTERNAL_ERROR = 1
    USAGE = 2
    NO_SCREENABLE_SERIES = 3
    PARTIAL = 4
    WEIGHTS = 5
    OUTPUT_IN_USE = 6


class InvalidScanError(ValueError):
    """A scan the screening cannot process; the message says which scan and why."""


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble (Part 10), whatever its suffix."""
    try:
        with open(path, "rb") as f:
            return f.seek(128) == 128 and f.read(4) == b"DICM"
    except OSError:
        return False


def read_header(path: Path) -> pydicom.Dataset:
    """The DICOM header of ``path`` (no pixel data); any failure to parse it is an ``InvalidScanError``.

    A file can begin like DICOM (preamble and ``DICM``) and continue with garbage; pydicom then raises one of several
    exception types (``BytesLengthException``, ``struct.error``, ``KeyError``, ...), none of which may escape."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # noqa: BLE001 - see above
        raise InvalidScanError(f"{path}: unreadable DICOM file ({type(e).__name__}: {e}).") from e


def check_complete(header: pydicom.Dataset, path: Path) -> None:
    """Reject a truncated file: pydicom returns what it could read of a cut header, ITK silently skips cut pixels."""
    image_tags = ("Rows", "Columns", "BitsAllocated")
    if "SeriesInstanceUID" not in header or (
        str(getattr(header, "Modality", "")) == "CT" and any(t not in header for t in image_tags)
    ):
        raise InvalidScanError(f"{path}: truncated or incomplete DICOM header (no SeriesInstanceUID or image size).")
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if "Rows" not in header or syntax is None or syntax.is_deflated:
        return
    if syntax.is_compressed:
        with warnings.catch_warnings():  # pydicom warns, then leaves out the pixel data of a cut encapsulated file
            warnings.simplefilter("ignore")
            try:
                complete = "PixelData" in pydicom.dcmread(path)
            except Exception as e:  # noqa: BLE001 - any parse failure of the pixel data is a broken file
                raise InvalidScanError(f"{path}: unreadable compressed pixel data ({type(e).__name__}: {e}).") from e
        if not complete:
            raise InvalidScanError(f"{path}: truncated DICOM file (its compressed pixel data ends before its end).")
        return
    frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    samples = int(getattr(header, "SamplesPerPixel", 1) or 1)
    expected = int(header.Rows) * int(header.Columns or 0) * frames * samples * int(header.BitsAllocated or 0) // 8
    size = path.stat().st_size
    if size < expected:
        raise InvalidScanError(
            f"{path}: truncated DICOM file ({size} bytes, but its uncompressed pixel data alone needs {expected})."
        )


# UIDs every usable instance has: the outputs reference them (the Deploy SDK's loader drops instances without).
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# Series that are results about images, not images: routine in a study (earlier runs' SEG and SR among them).
DERIVED_MODALITIES = frozenset({"SEG", "SR", "KO", "PR", "RTSTRUCT", "REG"})


@dataclass
class DicomFiles:
    """The files of a DICOM input as both front doors sort them before grouping series: the usable instances with
    their headers, and what was left out. A left-out slice shows up as a gap in its series, which is then refused."""

    usable: list[tuple[Path, pydicom.Dataset]] = field(default_factory=list)
    corrupt: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """Reason -> names of the files that begin like DICOM but cannot be used (cut, unreadable, no UIDs)."""
    copies: list[str] = field(default_factory=list)
    """Byte-identical copies of a usable file (same instance twice): dropped, an exact repair."""
    not_dicom: Counter = field(default_factory=Counter)
    """Suffix -> count of files without the DICOM preamble (sidecars, READMEs)."""

    def log(self, logger: logging.Logger) -> None:
        """One line per reason (not one per file of a whole broken series), then the routine ones at info level."""
        for reason, names in self.corrupt.items():
            shown = ", ".join(names[:3]) + (f", ... ({len(names)} files)" if len(names) > 3 else "")
            logger.warning("Ignored corrupt DICOM file(s) %s: %s", shown, reason)
        if self.copies:
            shown = ", ".join(self.copies[:3]) + (", ..." if len(self.copies) > 3 else "")
            logger.info("Ignored %d byte-identical copies of other files: %s.", len(self.copies), shown)
        if self.not_dicom:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.not_dicom.items()))
            logger.info("Ignored %d file(s) that are not DICOM: %s.", sum(self.not_dicom.values()), kinds)

    def by_study_and_series(self) -> dict[str, dict[str, list[tuple[Path, pydicom.Dataset]]]]:
        """Study Instance UID -> Series Instance UID -> the series' usable files, in input order."""
        studies: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for path, header in self.usable:
            studies[str(header.StudyInstanceUID)][str(header.SeriesInstanceUID)].append((path, header))
        return studies


def sort_dicom_files(paths: Iterable[str | Path]) -> DicomFiles:
    """Read the header of every file (no pixel data) and sort it: usable, corrupt (``read_header``,
    ``check_complete``, an empty ``REQUIRED_UIDS`` or no SeriesNumber), a byte-identical copy, or not DICOM."""
    files, first_of = DicomFiles(), {}
    for path in sorted(Path(p) for p in paths):
        if not is_dicom_file(path):
            files.not_dicom["".join(path.suffixes[-2:]) or path.name] += 1  # e.g. the gateway's .dcm.json sidecars
            continue
        try:
            header = read_header(path)
            check_complete(header, path)
            missing = [t for t in REQUIRED_UIDS if not str(getattr(header, t, "") or "").strip()]
            if missing:
                raise InvalidScanError(f"empty {', '.join(missing)}: outputs could not reference it")
            if getattr(header, "SeriesNumber", None) is None:
                raise InvalidScanError("no SeriesNumber (the Deploy SDK's loader drops such instances)")
        except (InvalidScanError, ValueError, TypeError, AttributeError) as e:  # the last: senseless values
            files.corrupt[str(e).replace(f"{path}: ", "").replace(str(path), path.name)].append(path.name)
            continue
        uid = str(header.SOPInstanceUID)
        if uid in first_of and filecmp.cmp(first_of[uid], path, shallow=False):
            files.copies.append(path.name)
            continue
        first_of.setdefault(uid, path)
        files.usable.append((path, header))
    return files


def series_rank(facts: dict, series_uid: str) -> tuple:
    """Which screenable series of a study both front doors screen: the thinnest slices, then the most slices
    (the smallest rank wins; the UID breaks ties so the choice never depends on file order)."""
    return (facts["slice_spacing_mm"], -facts["n_slices"], series_uid)


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
    slopes = {float(h.RescaleSlope) if h.get("RescaleSlope") not in (None, "") else 1.0 for h in headers}
    if any(not np.isfinite(v) or v == 0 for v in slopes):
        raise InvalidScanError(f"{folder}: RescaleSlope {sorted(slopes)}: a slope of 0 gives every voxel one value.")
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
    check_size((int(first.Columns), int(first.Rows), len(headers)), folder)
    tilt = stacking_angle_degrees([h.ImagePositionPatient for h in headers], normal)
    if tilt > MAX_TILT_DEGREES:
        raise InvalidScanError(
            f"{folder}: gantry tilt: the slices are stacked {tilt:.1f} degrees off their normal (sheared volume); "
            "resample it onto an axial grid first."
        )
    if duplicate_slices(headers) is not None:
        raise InvalidScanError(f"{folder}: duplicate slice positions.")
    positions = np.sort([float(np.dot(np.asarray(h.ImagePositionPatient, dtype=float), normal)) for h in headers])
    gaps = np.diff(positions)
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


def duplicate_slices(headers: Sequence[pydicom.Dataset]) -> tuple[int, int] | None:
    """Indices of two slices at one position along the slice normal (a copied file among them), or None."""
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [float(np.dot(np.asarray(h.ImagePositionPatient, dtype=float), normal)) for h in headers]
    order = np.argsort(positions, kind="stable")
    close = np.flatnonzero(np.diff(np.asarray(positions)[order]) < 1e-3)
    return (int(order[close[0]]), int(order[close[0] + 1])) if close.size else None


def stacking_angle_degrees(positions: Sequence[Sequence[float]], normal: np.ndarray) -> float:
    """Angle between the slice normal and the line the slice positions lie on: 0 for a regular volume, the gantry
    tilt for a tilted acquisition (slices sheared along the table), which the readers would take for a regular one."""
    positions = np.asarray(positions, dtype=float)
    along = positions - positions.mean(axis=0)
    direction = np.linalg.svd(along, full_matrices=False)[2][0]
    cosine = abs(float(np.dot(direction, normal))) / float(np.linalg.norm(normal))
    return float(np.degrees(np.arccos(min(1.0, cosine))))


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
    sample = values[:, :: max(1, values.shape[1] // 128), :: max(1, values.shape[2] // 128)]
    if not np.all(np.isfinite(sample)) or not np.all(np.isfinite(values)):
        raise InvalidScanError(f"{source}: the image holds NaN or infinite values; not a CT reconstruction.")
    if float(sample.min()) == float(sample.max()):
        raise InvalidScanError(f"{source}: every voxel has the same value ({float(sample.min()):.0f}); an empty image.")
    above = float(np.mean(sample > HU_RANGE[1] + HU_MARGIN))
    padding = float(sample.min())
    below = float(np.mean((sample < HU_RANGE[0] - HU_MARGIN) & (sample != padding)))
    if max(above, below) > MAX_OUT_OF_RANGE_FRACTION:
        raise InvalidScanError(
            f"{source}: {100 * max(above, below):.1f} % of the voxels lie outside "
            f"[{HU_RANGE[0] - HU_MARGIN:.0f}, {HU_RANGE[1] + HU_MARGIN:.0f}] HU, which no CT produces (wrong "
            "RescaleSlope/RescaleIntercept, or signed pixels read as unsigned)."
        )
    low, high = np.percentile(values[:, :: max(1, values.shape[1] // 64), :: max(1, values.shape[2] // 64)], [1, 99])
    if not (low < -500 and high > -200):
        raise InvalidScanError(
            f"{source}: intensities (1st-99th percentile {low:.0f} to {high:.0f}) do not look like CT in Hounsfield "
            "units (air near -1000 HU and soft tissue near 0 HU are expected)."
        )


def check_size(shape: Sequence[int], source: str | Path) -> None:
    """Refuse a scan of more than ``MAX_VOXELS`` voxels before it is read."""
    voxels = int(np.prod([int(n) for n in shape]))
    if voxels > MAX_VOXELS:
        raise InvalidScanError(
            f"{source}: too large to screen: {' x '.join(str(int(n)) for n in shape)} = {voxels / 1e6:.0f} M voxels, "
            f"more than {MAX_VOXELS / 1e6:.0f} M (the memory the app declares); screen a thicker reconstruction."
        )


def check_image_file(path: Path) -> None:
    """Checks of a scan file before it is read: its size from the header (``check_size``, any format SimpleITK
    reads), and for NIfTI what the readers would paper over: nibabel and ITK read a zero spacing as 1 mm and ITK a
    negative one as a mirror, ITK reads NaN voxels as 0 and a ``.nii.gz`` cut short as zeros."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
        except RuntimeError:
            return  # left to the reader, whose error names the file
        check_size(reader.GetSize(), path)
        return
    try:
        with nib.openers.ImageOpener(path) as f:
            raw = nib.Nifti1Header.from_fileobj(f, check=False)  # as written, before nibabel repairs it
        if int(raw["sizeof_hdr"]) != 348 or raw["magic"].item() not in (b"n+1", b"ni1"):
            raise ValueError("not a NIfTI-1 header")
    except Exception as e:  # noqa: BLE001 - nibabel and gzip raise several types for broken files
        raise InvalidScanError(f"{path}: unreadable or incomplete NIfTI file ({type(e).__name__}: {e}).") from e
    check_size(raw.get_data_shape()[:3], path)
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
    except Exception as e:  # noqa: BLE001 - nibabel and gzip raise several types for broken files
        raise InvalidScanError(f"{path}: unreadable or incomplete NIfTI file ({type(e).__name__}: {e}).") from e
    spacing = np.asarray(raw["pixdim"][1:4], dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidScanError(f"{path}: voxel spacing {spacing.tolist()} in the NIfTI header; it must be positive.")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise InvalidScanError(f"{path}: the image holds NaN or infinite values; not a CT reconstruction.")
