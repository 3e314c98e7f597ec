"""A corpus of bad inputs built from the real series of ``../shared/data`` at test time (``tests/test_bad_inputs.py``).

Two folders, each with one valid scan beside the bad ones, so a run shows that a bad scan is refused *and* the valid
one is still screened:

- ``dicom/<case>/``: one DICOM series per folder (32 slices of the LIDC slab, new UIDs each), re-headered or cut;
  ``truncated_jpeg2000`` is the 20-slice JPEG 2000 series of the TotalSegmentator example with one file cut inside
  its pixel data; ``garbage_after_preamble`` holds a file that begins like DICOM and continues with garbage.
  Two folders hold more than one thing: ``two_series`` a valid CT series and an MR series of another study (the CT
  is screened, the MR refused), ``exact_copy`` a valid series with a byte-identical copy of one file (an exact
  repair: the copy is dropped and the series screened).
- ``nifti/<case>.nii[.gz]``: TotalSegmentator's example CT (3 mm) re-written or patched.

``CASES`` says what each front door must do with each case: ``None`` for screened, else a phrase of the reason.
docs/deploy.md ("Bad input") lists the same table.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

LIDC = "lidc_idri_0314_nodule/dicom"
JPEG2000 = "totalsegmentator_example/example_ct_dicom"
EXAMPLE_CT = "totalsegmentator_example/example_ct.nii.gz"
LABEL_MAP = "totalsegmentator_example/example_seg.nii.gz"

DICOM_CASES = {
    "valid": None,
    "mr": "modality MR, not CT",
    "secondary_capture": "modality OT, not CT",
    "missing_slice": "missing slices",
    "one_slice": "single slice",
    "duplicate_position": "duplicate slice positions",
    "rescale_slope_zero": "RescaleSlope",
    "rescale_slope_absurd": "which no CT produces",
    "pixel_representation_flipped": "which no CT produces",
    "gantry_tilt": "gantry tilt",
    "truncated_jpeg2000": "missing slices",  # the cut file is left out with its own line; its series has a gap
    "garbage_after_preamble": "incomplete DICOM header",
    "exact_copy": None,
}
TWO_SERIES = {"CT": None, "MR": "modality MR, not CT"}
"""``dicom/two_series/``: what each of its two series gets."""
NIFTI_CASES = {
    "valid": None,
    "nan_voxels": "NaN or infinite",
    "truncated_gzip": "incomplete NIfTI file",
    "zero_spacing": "must be positive",
    "negative_spacing": "must be positive",
    "one_value": "same value",
    "label_map_as_image": "do not look like CT",
    "absurd_values": "which no CT produces",
}


def _series(src: Path, dst: Path, edit=None, files: list[Path] | None = None) -> Path:
    """Copy a real series with new UIDs (a series of its own in the corpus), each dataset edited by ``edit``."""
    dst.mkdir(parents=True)
    files = files if files is not None else sorted(src.glob("*.dcm"))[8:40]
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        if edit is not None:
            edit(ds, i)
        ds.save_as(dst / f"{i:03d}.dcm", enforce_file_format=True)
    return dst


def _signed_then_read_unsigned(ds: pydicom.Dataset, i: int) -> None:
    """Signed pixels (HU stored directly) whose PixelRepresentation then says unsigned: -1000 reads as 64536."""
    hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    ds.PixelData = hu.astype(np.int16).tobytes()
    ds.BitsStored, ds.HighBit, ds.RescaleIntercept, ds.PixelRepresentation = 16, 15, 0, 0


def _tilt(ds: pydicom.Dataset, i: int, degrees: float = 15.0) -> None:
    angle = np.radians(degrees)
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle))]


def _set(**values):
    def edit(ds: pydicom.Dataset, i: int) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return edit


def build_dicom(shared_data: Path, root: Path) -> Path:
    lidc = shared_data / LIDC
    slab = sorted(lidc.glob("*.dcm"))[8:40]
    _series(lidc, root / "valid")
    _series(lidc, root / "mr", _set(Modality="MR"))
    _series(lidc, root / "secondary_capture", _set(Modality="OT", SOPClassUID=pydicom.uid.SecondaryCaptureImageStorage))
    _series(lidc, root / "missing_slice", files=slab[:16] + slab[17:])
    _series(lidc, root / "one_slice", files=slab[:1])
    _series(lidc, root / "duplicate_position", files=slab + slab[10:11])
    _series(lidc, root / "rescale_slope_zero", _set(RescaleSlope=0))
    _series(lidc, root / "rescale_slope_absurd", _set(RescaleSlope=1000))
    _series(lidc, root / "pixel_representation_flipped", _signed_then_read_unsigned)
    _series(lidc, root / "gantry_tilt", _tilt)
    jpeg_files = sorted((shared_data / JPEG2000).iterdir())
    ct_image = _set(SOPClassUID=pydicom.uid.CTImageStorage, SeriesNumber=1)  # the example series lacks both
    jpeg = _series(shared_data / JPEG2000, root / "truncated_jpeg2000", ct_image, files=jpeg_files)
    victim = sorted(jpeg.iterdir())[10]
    victim.write_bytes(victim.read_bytes()[: int(victim.stat().st_size * 0.8)])
    _series(lidc, root / "two_series")
    _series(lidc, root / "two_series_mr", _set(Modality="MR"))
    for path in (root / "two_series_mr").iterdir():
        path.rename(root / "two_series" / f"mr_{path.name}")
    (root / "two_series_mr").rmdir()
    copy = _series(lidc, root / "exact_copy")
    shutil.copyfile(copy / "005.dcm", copy / "005_copy.dcm")
    garbage = root / "garbage_after_preamble"
    garbage.mkdir()
    (garbage / "000.dcm").write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(4096))
    return root


def _patched_nifti(image: nib.Nifti1Image, path: Path, z_spacing: float) -> Path:
    """An uncompressed NIfTI whose header says ``z_spacing`` (pixdim[3]) with the sform off, as a broken exporter
    writes it; nibabel itself would refuse to write it."""
    nib.save(image, path)
    header = bytearray(path.read_bytes())
    header[88:92] = struct.pack("<f", z_spacing)  # pixdim[3]: pixdim starts at byte 76
    header[254:256] = struct.pack("<h", 0)  # sform_code 0: the readers take qform and pixdim
    path.write_bytes(bytes(header))
    return path


def build_nifti(shared_data: Path, root: Path) -> Path:
    root.mkdir(parents=True)
    source = nib.load(shared_data / EXAMPLE_CT)
    hu = np.asarray(source.dataobj, dtype=np.int16)
    ct = nib.Nifti1Image(hu, source.affine)
    nib.save(ct, root / "valid.nii.gz")
    nan = hu.astype(np.float32)
    nan[40:60, 40:60, 40:60] = np.nan
    nib.save(nib.Nifti1Image(nan, source.affine), root / "nan_voxels.nii.gz")
    whole = (root / "valid.nii.gz").read_bytes()
    (root / "truncated_gzip.nii.gz").write_bytes(whole[: len(whole) // 2])
    _patched_nifti(ct, root / "zero_spacing.nii", 0.0)
    _patched_nifti(ct, root / "negative_spacing.nii", -3.0)
    nib.save(nib.Nifti1Image(np.full_like(hu, -1000), source.affine), root / "one_value.nii.gz")
    shutil.copyfile(shared_data / LABEL_MAP, root / "label_map_as_image.nii.gz")
    nib.save(nib.Nifti1Image(hu.astype(np.float32) * 100, source.affine), root / "absurd_values.nii.gz")
    return root
