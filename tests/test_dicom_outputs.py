"""The app's DICOM SEG and SR (app/dicom_outputs.py) on the real LIDC series: character sets, colours, conformance.

No network runs here: the outputs are built from the real series' headers and a lesion map, written, and read back
with pydicom and highdicom (and checked by dciodvfy where the fix is about conformance)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from bundle.findings import lesion_colour

from app.dicom_outputs import LESION_COUNT, SCHEME, build_seg, build_sr, unicode_headers

NAMES = {
    # PS3.5 annex H and I examples: the first value empty is how Japanese and Korean studies usually declare them
    ("", "ISO 2022 IR 87"): "Yamada^Tarou=山田^太郎=やまだ^たろう",
    ("", "ISO 2022 IR 149"): "Hong^Gildong=洪^吉洞=홍^길동",
    "": "Doe^John",
    "ISO_IR 192": "Wang^XiaoDong=王^小東",
    "ISO_IR 100": "Müller^Zoë",
}


def _series(shared_data: Path, charset, name: str) -> list[pydicom.Dataset]:
    """The LIDC slab's headers with this character set and patient name, encoded to bytes and read back."""
    out = []
    for path in sorted((shared_data / "lidc_idri_0314_nodule/dicom").glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ds.SpecificCharacterSet, ds.PatientName = list(charset) if isinstance(charset, tuple) else charset, name
        buffer = io.BytesIO()
        ds.save_as(buffer)
        out.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return sorted(out, key=lambda d: float(d.ImagePositionPatient[2]))


def _box(n: int) -> tuple[slice, slice, slice]:
    """Lesion n of the test lesion maps: 8 x 8 pixels (columns, rows) on 3 slices."""
    return slice(20 * n, 20 * n + 8), slice(200, 208), slice(10 + n, 13 + n)


def _lps(ds: pydicom.Dataset, column: float, row: float) -> np.ndarray:
    """The patient position (mm) of a (column, row) pixel index on a slice (pixel centres at integers)."""
    row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, dtype=float).reshape(2, 3)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return np.asarray(ds.ImagePositionPatient, float) + column * column_spacing * row_dir + row * row_spacing * col_dir


def _findings(count: int, datasets: list[pydicom.Dataset]) -> dict:
    lesions = []
    for n in range(1, count + 1):
        columns, rows, slices = _box(n)
        ds = datasets[slices.start]  # the caliper: the box's diagonal, corner to corner, on its first slice
        ends = [_lps(ds, columns.start - 0.5, rows.start - 0.5), _lps(ds, columns.stop - 0.5, rows.stop - 0.5)]
        diameter = float(np.linalg.norm(ends[1] - ends[0]))
        lesions.append(
            {"number": n, "volume_mm3": 100.0 * n, "longest_axial_diameter_mm": diameter, "max_probability": 0.9,
             "longest_axial_diameter_ends_mm": [list(map(float, e)) for e in ends], "mean_probability": 0.8}
        )  # fmt: skip
    return {"region": "chest", "weights": {"status": "trained"}, "lesion_count": count, "suspicion_score": 0.9,
            "lesions": lesions}  # fmt: skip


def _lesion_map(datasets: list[pydicom.Dataset], count: int) -> np.ndarray:
    labels = np.zeros((datasets[0].Columns, datasets[0].Rows, len(datasets)), np.uint8)
    for n in range(1, count + 1):
        labels[_box(n)] = n
    return labels


def _written(dataset: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    dataset.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.mark.parametrize("charset", list(NAMES), ids=lambda c: "/".join(c) if isinstance(c, tuple) else c or "empty")
def test_patient_name_round_trips_in_every_character_set(shared_data, tmp_path, charset):
    name = NAMES[charset]
    series = _series(shared_data, charset, name)
    assert str(series[0].PatientName) == name  # the source really holds the name in that character set
    before = [d.SpecificCharacterSet for d in series]
    seg = _written(build_seg(series, _lesion_map(series, 1), _findings(1, series), "0.3.0"), tmp_path / "seg.dcm")
    sr = _written(build_sr(series, seg, _findings(1, series), "0.3.0"), tmp_path / "sr.dcm")
    for output in (seg, sr):
        assert str(output.PatientName) == name and output.SpecificCharacterSet == "ISO_IR 192"
        assert output.StudyInstanceUID == series[0].StudyInstanceUID
    assert [d.SpecificCharacterSet for d in series] == before  # the inputs are not touched
    headers = unicode_headers(series)
    assert all(a is b for a, b in zip(unicode_headers(headers), headers))  # made once per case for both writers


def test_each_segment_recommends_its_lesion_colour(shared_data, tmp_path):
    series = _series(shared_data, "ISO_IR 100", "Doe^John")
    labels = _lesion_map(series, 3)
    build_seg(series, labels, _findings(3, series), "0.3.0").save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    colours = {}
    for item in seg.SegmentSequence:
        lab = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue)
        colours[item.SegmentNumber] = lab.to_rgb()
    assert set(colours) == {1, 2, 3}
    for number, rgb in colours.items():
        assert np.abs(np.subtract(rgb, lesion_colour(number))).max() <= 1, number
    assert len(set(colours.values())) == 3
    # the segments still hold their lesions voxel for voxel (frames are source slices, rows are y)
    volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
    assert volume.array.sum() > 0 and sorted(np.unique(volume.array)) == [0, 1, 2, 3]


def _numeric_values(sr: pydicom.Dataset) -> dict[str, str]:
    out, stack = {}, list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        stack.extend(item.get("ContentSequence", []))
        if item.ValueType == "NUM":
            out[item.ConceptNameCodeSequence[0].CodeValue] = str(item.MeasuredValueSequence[0].NumericValue)
    return out


def test_conformance_details(shared_data, tmp_path):
    """ContentCreatorName, SeriesDate/Time, the private scheme declared, a count written as an integer, no dciodvfy
    error. (dciodvfy still warns "unrecognized defined term <99GFSCREEN>" for every private code, declared or not:
    it does not read CodingSchemeIdentificationSequence.)"""
    series = _series(shared_data, "ISO_IR 100", "Doe^John")
    seg = _written(build_seg(series, _lesion_map(series, 2), _findings(2, series), "0.3.0"), tmp_path / "seg.dcm")
    sr = _written(build_sr(series, seg, _findings(2, series), "0.3.0"), tmp_path / "sr.dcm")
    assert str(seg.ContentCreatorName)
    for output in (seg, sr):
        assert output.SeriesDate == output.ContentDate and output.SeriesTime == output.ContentTime
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == [SCHEME]
    assert _numeric_values(sr)[LESION_COUNT.value] == "2"
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (dicom3tools) is not installed; the README test command installs it")
    for path in (tmp_path / "seg.dcm", tmp_path / "sr.dcm"):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        lines = (report.stdout + report.stderr).splitlines()
        assert not [line for line in lines if line.startswith("Error")], (path.name, lines)


def test_each_lesion_has_its_diameter_as_a_line_on_its_slice(shared_data, tmp_path):
    """TID 1410 per lesion: a two-point POLYLINE on the source slice holding the caliper, in SCOORD's pixel
    convention (top left corner of the top left pixel is 0.0), with the diameter and the lesion's tracking UID."""
    series = _series(shared_data, "ISO_IR 100", "Doe^John")
    findings = _findings(2, series)
    seg = _written(build_seg(series, _lesion_map(series, 2), findings, "0.3.0"), tmp_path / "seg.dcm")
    build_sr(series, seg, findings, "0.3.0").save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    planar = sr.content.get_planar_roi_measurement_groups()
    volumetric = {g.tracking_identifier: g.tracking_uid for g in sr.content.get_volumetric_roi_measurement_groups()}
    assert len(planar) == 2
    for group, les in zip(planar, findings["lesions"]):
        columns, rows, slices = _box(les["number"])
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(
            region.value, [[columns.start, rows.start], [columns.stop, rows.stop]], atol=1e-3
        )  # corners of the box's pixels: 0.5 from the centres
        (source,) = region.ContentSequence
        assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == series[slices.start].SOPInstanceUID
        (length,) = group.get_measurements()
        assert length.value == pytest.approx(les["longest_axial_diameter_mm"], abs=0.01)
        assert group.tracking_uid == volumetric[group.tracking_identifier]  # the same lesion as its segment's group


def test_a_rerun_continues_its_series_and_names_the_report_it_replaces(shared_data, tmp_path, monkeypatch):
    """Run 2 sees run 1's SEG and SR in the study (as a PACS returns it): same series, next instance, the same
    tracking UIDs, and the new SR names the old one in PredecessorDocumentsSequence; another version is another
    series; the Device Observer UID is the configured one, the same on every run."""
    monkeypatch.setenv("GF_SCREEN_DEVICE_UID", "1.2.826.0.1.3680043.10.511.99.1")
    series = _series(shared_data, "ISO_IR 100", "Doe^John")
    findings, labels = _findings(2, series), _lesion_map(series, 2)

    def run(version, earlier=()):
        seg = _written(build_seg(series, labels, findings, version, earlier), tmp_path / f"seg{len(earlier)}.dcm")
        sr = _written(build_sr(series, seg, findings, version, earlier), tmp_path / f"sr{len(earlier)}.dcm")
        return seg, sr

    seg1, sr1 = run("0.3.0")
    seg2, sr2 = run("0.3.0", [seg1, sr1])
    for first, second in ((seg1, seg2), (sr1, sr2)):
        assert second.SeriesInstanceUID == first.SeriesInstanceUID and second.SeriesNumber == first.SeriesNumber
        assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
        assert second.SOPInstanceUID != first.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in sr1
    (study,) = sr2.PredecessorDocumentsSequence
    (old,) = study.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert old.ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    assert [s.TrackingUID for s in seg2.SegmentSequence] == [s.TrackingUID for s in seg1.SegmentSequence]
    for sr in (sr1, sr2):
        observer = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121012"]
        assert observer and observer[0].UID == "1.2.826.0.1.3680043.10.511.99.1"
    seg3, sr3 = run("0.4.0", [seg1, sr1, seg2, sr2])
    assert seg3.SeriesInstanceUID != seg1.SeriesInstanceUID and seg3.InstanceNumber == 1
    assert "PredecessorDocumentsSequence" not in sr3
    monkeypatch.setenv("GF_SCREEN_DEVICE_UID", "not-a-uid")
    with pytest.raises(ValueError, match="GF_SCREEN_DEVICE_UID"):
        build_sr(series, seg1, findings, "0.3.0")
