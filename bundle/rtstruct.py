"""Convert one RTSTRUCT ROI into a label volume on the grid of its CT series.

Lesion outlines often arrive as RTSTRUCT contours (the sarcoma cases do), while the bundle trains and scores on voxel
labels. Rasterising on the exact geometry of the CT series keeps the label aligned with the image the model sees.

    python -m bundle.rtstruct --rtstruct RS.dcm --series CT_DIR --output label.nii.gz [--roi NAME]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk  # noqa: N813
from skimage.draw import polygon

# A contour may sit this far (in slices) from a slice centre; DICOM decimal strings round to ~1e-3 mm, while a contour
# drawn on another series is typically off by a large part of a slice.
SLICE_TOLERANCE = 0.1
FRAME_OF_REFERENCE_TAG = "0020|0052"


def _read_series(series_dir: Path, referenced_series: set[str]) -> sitk.Image:
    """Read the CT series, choosing the one the RTSTRUCT references when the folder holds several."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(series_dir))
    if not series_ids:
        raise FileNotFoundError(f"no DICOM series found in {series_dir}")
    if len(series_ids) > 1:
        series_ids = [uid for uid in series_ids if uid in referenced_series]
        if len(series_ids) != 1:
            raise ValueError(f"{series_dir} holds several DICOM series and the RTSTRUCT references none or several")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series_dir), series_ids[0]))
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    if reader.HasMetaDataKey(0, FRAME_OF_REFERENCE_TAG):
        image.SetMetaData(FRAME_OF_REFERENCE_TAG, reader.GetMetaData(0, FRAME_OF_REFERENCE_TAG).strip())
    return image


def _find_roi(structure_set: pydicom.Dataset, roi_name: str | None, source: Path) -> pydicom.Dataset:
    """Return the StructureSetROISequence item asked for; an unclear request must not silently pick a structure."""
    rois = list(structure_set.get("StructureSetROISequence", []))
    names = sorted(str(roi.ROIName) for roi in rois)
    if roi_name is None:
        if len(rois) != 1:
            raise ValueError(f"{source} holds {len(rois)} ROIs, name one with roi_name/--roi; available: {names}")
        return rois[0]
    matches = [roi for roi in rois if str(roi.ROIName) == roi_name]
    if len(matches) != 1:
        raise ValueError(f"ROI {roi_name!r} matches {len(matches)} ROIs in {source}; available: {names}")
    return matches[0]


def rtstruct_to_label(
    rtstruct_path: str | os.PathLike, series_dir: str | os.PathLike, roi_name: str | None = None
) -> sitk.Image:
    """Rasterise the closed planar contours of one ROI onto the CT grid: uint8 image, 1 inside the ROI.

    Contours on one slice are combined by XOR (even-odd rule), so holes and exclusion contours are cut out.
    """
    rtstruct_path, series_dir = Path(rtstruct_path), Path(series_dir)
    structure_set = pydicom.dcmread(rtstruct_path)
    if structure_set.get("Modality") != "RTSTRUCT":
        raise ValueError(f"{rtstruct_path} is not an RTSTRUCT (Modality {structure_set.get('Modality')!r})")
    roi = _find_roi(structure_set, roi_name, rtstruct_path)
    referenced_series = {
        str(series.SeriesInstanceUID)
        for frame in structure_set.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
    }
    image = _read_series(series_dir, referenced_series)

    roi_frame = str(roi.get("ReferencedFrameOfReferenceUID", ""))
    if roi_frame and image.HasMetaDataKey(FRAME_OF_REFERENCE_TAG):
        if image.GetMetaData(FRAME_OF_REFERENCE_TAG) != roi_frame:
            raise ValueError(f"ROI {roi.ROIName!r} is in another frame of reference than the series in {series_dir}")

    contours = [
        contour
        for roi_contour in structure_set.get("ROIContourSequence", [])
        if int(roi_contour.ReferencedROINumber) == int(roi.ROINumber)
        for contour in roi_contour.get("ContourSequence", [])
        if contour.ContourGeometricType == "CLOSED_PLANAR"
    ]
    if not contours:
        raise ValueError(f"ROI {roi.ROIName!r} in {rtstruct_path} has no closed planar contours")

    label = np.zeros(image.GetSize()[::-1], dtype=np.uint8)  # (z, y, x)
    for number, contour in enumerate(contours):
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        index = np.array([image.TransformPhysicalPointToContinuousIndex(point) for point in points.tolist()])
        z = int(round(float(index[:, 2].mean())))
        if np.abs(index[:, 2] - z).max() > SLICE_TOLERANCE:
            raise ValueError(
                f"contour {number} of ROI {roi.ROIName!r} lies off the slice grid of {series_dir} "
                f"(slice index {index[:, 2].min():.3f}..{index[:, 2].max():.3f})"
            )
        if not 0 <= z < label.shape[0]:
            raise ValueError(
                f"contour {number} of ROI {roi.ROIName!r} is on slice {z}, outside the {label.shape[0]} slices "
                f"of {series_dir}"
            )
        rows, cols = polygon(index[:, 1], index[:, 0], shape=label.shape[1:])
        filled = np.zeros(label.shape[1:], dtype=np.uint8)
        filled[rows, cols] = 1
        label[z] ^= filled

    result = sitk.GetImageFromArray(label)
    result.CopyInformation(image)
    return result


def write_image_atomic(image: sitk.Image, output: Path) -> None:
    """Write via a temporary file in the target folder, so readers never see a half-written label."""
    output.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(output.suffixes[-2:]) if output.suffix == ".gz" else output.suffix  # ITK picks the format by it
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp{suffix}")
    try:
        sitk.WriteImage(image, str(temporary), useCompression=True)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


def _is_input(output: Path, rtstruct: Path, series_dir: Path) -> bool:
    """True when output is the RTSTRUCT or a file of the series folder (also through links)."""
    if not output.is_file():
        return False
    candidates = [rtstruct, *series_dir.iterdir()] if series_dir.is_dir() else [rtstruct]
    return any(candidate.is_file() and os.path.samefile(output, candidate) for candidate in candidates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bundle.rtstruct",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert one ROI of a DICOM RTSTRUCT into a binary label volume (uint8, 1 = ROI) on the grid of\n"
        "its CT series. Closed planar contours are filled slice by slice; contours on the same slice are\n"
        "combined by the even-odd rule, so holes are kept. Prints the number of ROI voxels.",
        epilog="example:\n  python -m bundle.rtstruct \\\n"
        "    --rtstruct ../shared/data/mirp_sts_sarcoma_ct/STS_001/dicom/mask/RS.dcm \\\n"
        "    --series ../shared/data/mirp_sts_sarcoma_ct/STS_001/dicom/image \\\n"
        "    --output /tmp/STS_001_label.nii.gz",
    )
    parser.add_argument("--rtstruct", required=True, type=Path, help="the RTSTRUCT DICOM file")
    parser.add_argument("--series", required=True, type=Path, help="folder holding the referenced CT series")
    parser.add_argument(
        "--output", required=True, type=Path, help="label file to write (.nii.gz, .nrrd, ...); folders are created"
    )
    parser.add_argument("--roi", default=None, help="ROI name; may be left out when the RTSTRUCT holds a single ROI")
    args = parser.parse_args(argv)
    if _is_input(args.output, args.rtstruct, args.series):
        parser.error(f"refusing to overwrite the input file {args.output}")
    try:
        label = rtstruct_to_label(args.rtstruct, args.series, args.roi)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from error
    write_image_atomic(label, args.output)
    print(f"wrote {args.output}: {int(sitk.GetArrayViewFromImage(label).sum())} voxels in the ROI")


if __name__ == "__main__":
    main()
