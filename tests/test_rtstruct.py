"""RTSTRUCT -> label conversion, checked against the voxel masks shipped with the sarcoma cases."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from bundle.rtstruct import main, rtstruct_to_label

CASES = ("STS_001", "STS_002", "STS_003")
# Measured: Dice 1.000 and identical voxel counts on all three cases (117145 / 17090 / 25693); margins absorb small
# rasterisation differences (e.g. a scikit-image update) but not a misplaced slice or a flipped axis.
MIN_DICE = 0.99
MAX_COUNT_DIFFERENCE = 0.01


def _paths(shared_data, case):
    folder = shared_data / "mirp_sts_sarcoma_ct" / case
    return folder / "dicom" / "mask" / "RS.dcm", folder / "dicom" / "image", folder / "nifti" / "mask" / "mask.nii.gz"


def _count(image: sitk.Image) -> int:
    return int(sitk.GetArrayViewFromImage(image).astype(bool).sum())


@pytest.mark.parametrize("case", CASES)
def test_matches_shipped_mask(shared_data, case):
    rtstruct, series, reference_path = _paths(shared_data, case)
    label = rtstruct_to_label(rtstruct, series)

    assert label.GetPixelID() == sitk.sitkUInt8
    series_image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    assert label.GetSize() == series_image.GetSize()
    np.testing.assert_allclose(label.GetOrigin(), series_image.GetOrigin())
    np.testing.assert_allclose(label.GetSpacing(), series_image.GetSpacing())
    np.testing.assert_allclose(label.GetDirection(), series_image.GetDirection())

    # Compare in physical space: put the NIfTI mask on the DICOM grid by nearest neighbour.
    reference = sitk.Resample(
        sitk.ReadImage(str(reference_path)), label, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    ours, theirs = sitk.GetArrayFromImage(label).astype(bool), sitk.GetArrayFromImage(reference).astype(bool)
    dice = 2 * np.logical_and(ours, theirs).sum() / (ours.sum() + theirs.sum())
    assert dice > MIN_DICE, f"{case}: Dice {dice:.4f}"
    assert abs(int(ours.sum()) - int(theirs.sum())) <= MAX_COUNT_DIFFERENCE * theirs.sum()


def _edited_rtstruct(shared_data, tmp_path, edit):
    """Copy of the STS_002 RTSTRUCT after edit(first contour, its contour sequence); returns (path, series)."""
    rtstruct, series, _ = _paths(shared_data, "STS_002")
    dataset = pydicom.dcmread(rtstruct)
    contours = dataset.ROIContourSequence[0].ContourSequence
    edit(contours[0], contours)
    path = tmp_path / "RS_edited.dcm"
    dataset.save_as(path)
    return path, series


def test_inner_contour_cuts_a_hole(shared_data, tmp_path):
    """Two nested contours on a slice follow the even-odd rule: the inner one is a hole, not more ROI."""
    centre = {}

    def add_hole(contour, contours):
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        centre["xyz"] = points.mean(axis=0)
        inner = centre["xyz"] + 0.4 * (points - centre["xyz"])
        hole = pydicom.Dataset()
        hole.ContourGeometricType = "CLOSED_PLANAR"
        hole.NumberOfContourPoints = len(inner)
        hole.ContourData = [f"{value:.3f}" for value in inner.ravel()]
        contours.append(hole)

    rtstruct, series = _edited_rtstruct(shared_data, tmp_path, add_hole)
    original = rtstruct_to_label(_paths(shared_data, "STS_002")[0], series)
    holed = rtstruct_to_label(rtstruct, series)

    index = original.TransformPhysicalPointToIndex(centre["xyz"].tolist())
    assert original[index] == 1 and holed[index] == 0
    assert 0 < _count(original) - _count(holed) < 0.4 * _count(original)


def test_contour_off_the_slice_grid_is_refused(shared_data, tmp_path):
    def shift_half_a_slice(contour, contours):
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        points[:, 2] += 3.27 / 2
        contour.ContourData = [f"{value:.3f}" for value in points.ravel()]

    rtstruct, series = _edited_rtstruct(shared_data, tmp_path, shift_half_a_slice)
    with pytest.raises(ValueError, match="off the slice grid"):
        rtstruct_to_label(rtstruct, series)


def test_unknown_roi_name_lists_the_available_ones(shared_data):
    rtstruct, series, _ = _paths(shared_data, "STS_002")
    with pytest.raises(ValueError, match=r"'Liver'.*available: \['GTV_Mass_CT'\]"):
        rtstruct_to_label(rtstruct, series, roi_name="Liver")
    assert _count(rtstruct_to_label(rtstruct, series, roi_name="GTV_Mass_CT")) == 17090


def test_cli_writes_the_label(shared_data, tmp_path, capsys):
    rtstruct, series, _ = _paths(shared_data, "STS_002")
    output = tmp_path / "new" / "folder" / "STS_002_label.nii.gz"
    main(["--rtstruct", str(rtstruct), "--series", str(series), "--output", str(output), "--roi", "GTV_Mass_CT"])

    assert "17090 voxels" in capsys.readouterr().out
    written = sitk.ReadImage(str(output))
    assert written.GetPixelID() == sitk.sitkUInt8 and _count(written) == 17090
    assert sorted(path.name for path in output.parent.iterdir()) == [output.name]  # no temporary file left behind


@pytest.mark.parametrize("target", ["rtstruct", "series_file"])
def test_cli_refuses_to_overwrite_an_input(shared_data, tmp_path, capsys, target):
    source_rtstruct, source_series, _ = _paths(shared_data, "STS_002")
    rtstruct = tmp_path / "RS.dcm"
    rtstruct.write_bytes(source_rtstruct.read_bytes())
    series = tmp_path / "series"
    series.mkdir()
    for path in source_series.iterdir():
        (series / path.name).symlink_to(path)
    output = rtstruct if target == "rtstruct" else series / sorted(path.name for path in series.iterdir())[0]
    before = output.read_bytes()

    with pytest.raises(SystemExit) as raised:
        main(["--rtstruct", str(rtstruct), "--series", str(series), "--output", str(output)])
    assert raised.value.code == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert output.read_bytes() == before
