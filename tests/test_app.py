"""End-to-end tests of the MONAI Deploy app (``python app``) on real DICOM, small networks, on CPU.

The bundle folder given as the model path is built in tmp: the project's configs, ``configs/small.yaml``, a test
override (a high Glance threshold so that few windows run, a high lesion threshold so that random weights give a
handful of lesions) and seeded random weights saved as ``models/model.pt``. The same folder drives the bundle's own
``python -m monai.bundle run``, so the SEG can be compared with the bundle's mask voxel for voxel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser

from app.dicom_outputs import LESION_COUNT, SUSPICION_SCORE
from tests.conftest import ROOT

PATIENT_NAME = "Testperson^Gfscreen"
PATIENT_ID = "GFS-PID-90817"
TEST_OVERRIDES = {
    "glance_threshold": 0.97,
    "lesion_probability_threshold": 0.98,
    "lesion_min_score": 0.98,
    "focus_batch_size": 1,
}


def make_bundle(folder: Path, overrides: dict, weights: bool = True) -> Path:
    """A bundle folder: the project's configs + small.yaml + ``overrides``; seeded random weights if asked."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    for name in ("inference.yaml", "small.yaml", "operating_point.yaml", "metadata.json", "logging.conf"):
        shutil.copy(ROOT / "configs" / name, folder / "configs" / name)
    (folder / "configs" / "test.json").write_text(json.dumps(overrides))
    (folder / "configs" / "app_configs.json").write_text(json.dumps(["inference.yaml", "small.yaml", "test.json"]))
    if weights:
        parser = ConfigParser()
        parser.read_config([str(folder / "configs" / n) for n in ("inference.yaml", "small.yaml")])
        torch.manual_seed(1234)
        state = {
            "glance": parser.get_parsed_content("glance_def").state_dict(),
            "focus": parser.get_parsed_content("network_def").state_dict(),
        }
        torch.save(state, folder / "models" / "model.pt")
    return folder


def copy_series(src: Path, dst: Path, files: list[Path] | None = None, edit=None, new_uids: bool = False) -> Path:
    """Copy real DICOM slices into tmp, optionally editing each dataset (never touching ../shared)."""
    dst.mkdir(parents=True)
    files = files if files is not None else sorted(p for p in src.iterdir() if p.suffix == ".dcm")
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        if new_uids:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if edit is not None:
            edit(ds, i)
        ds.save_as(dst / f"{i:03d}.dcm")
    return dst


def run_app(inp: Path, out: Path, model: Path, untrained: bool = False, env_paths: bool = False):
    """``python app`` as a user runs it; returns the completed process (stdout + stderr captured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOLOSCAN_", "GF_SCREEN_"))}
    args = [sys.executable, "app", "-l", "DEBUG"]
    if env_paths:
        env.update(HOLOSCAN_INPUT_PATH=str(inp), HOLOSCAN_OUTPUT_PATH=str(out), HOLOSCAN_MODEL_PATH=str(model))
    else:
        args += ["-i", str(inp), "-o", str(out), "-m", str(model)]
    if untrained:
        env["GF_SCREEN_ALLOW_UNTRAINED"] = "1"
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def output_of(out: Path) -> Path:
    folders = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1, folders
    return folders[0]


def sorted_slices(folder: Path) -> list[pydicom.Dataset]:
    ds = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir() if p.suffix == ".dcm"]
    normal = np.cross(*np.asarray(ds[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    return sorted(ds, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))))


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (dicom3tools) is not installed; the README test command installs it")
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def lidc(tmp_path_factory, shared_data) -> Path:
    """The LIDC slab (48 real slices with a nodule), with test patient identifiers, in tmp."""
    return copy_series(shared_data / "lidc_idri_0314_nodule/dicom", tmp_path_factory.mktemp("lidc") / "dicom")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "gf_screen", TEST_OVERRIDES)


@pytest.fixture(scope="module")
def lidc_run(lidc, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out_lidc")
    proc = run_app(lidc, out, model_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, output_of(out)


def bundle_lesion_mask(series: Path, model_dir: Path, out: Path) -> np.ndarray:
    """The bundle's own inference (``python -m monai.bundle run``) on a DICOM series folder with a test bundle's
    configs and weights: its lesion mask on the bundle's (x, y, slice) grid."""
    cfg = [str(model_dir / "configs" / n) for n in ("inference.yaml", "small.yaml", "test.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(cfg), "--input_path", str(series)]
    cmd += ["--output_dir", str(out), "--ckpt_path", str(model_dir / "models/model.pt"), "--bundle_root", str(ROOT)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.asarray(nib.load(out / series.name / f"{series.name}_lesion.nii.gz").dataobj)


@pytest.fixture(scope="module")
def bundle_mask(lidc, model_dir, tmp_path_factory) -> np.ndarray:
    """The bundle's own inference on the same series with the same weights."""
    return bundle_lesion_mask(lidc, model_dir, tmp_path_factory.mktemp("out_bundle"))


def test_seg_is_the_bundle_mask_on_the_dicom_grid(lidc_run, bundle_mask, lidc):
    _, folder = lidc_run
    seg = hd.seg.segread(folder / "dicom/seg.dcm")
    slices = sorted_slices(lidc)
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in slices], combine_segments=True
    )
    app_mask = np.transpose(labels > 0, (2, 1, 0))  # (slice, row, col) -> (x, y, slice) as the bundle's grid
    assert bundle_mask.sum() > 0, "the test weights should give some lesions"
    assert app_mask.shape == bundle_mask.shape
    assert np.array_equal(app_mask, bundle_mask > 0)


def test_seg_references_and_frame_positions(lidc_run, lidc):
    _, folder = lidc_run
    seg = pydicom.dcmread(folder / "dicom/seg.dcm")
    slices = {s.SOPInstanceUID: s for s in sorted_slices(lidc)}
    first = next(iter(slices.values()))
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert (seg.PatientName, seg.PatientID) == (PATIENT_NAME, PATIENT_ID)
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(slices)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose([float(v) for v in position], [float(v) for v in slices[source].ImagePositionPatient])
    for n, segment in enumerate(seg.SegmentSequence, start=1):
        assert segment.SegmentNumber == n and segment.SegmentLabel == f"Lesion {n}"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # SNOMED CT Lesion
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"


def test_sr_measurements_match_findings(lidc_run):
    _, folder = lidc_run
    findings = json.loads(next(folder.glob("*_findings.json")).read_text())
    seg = pydicom.dcmread(folder / "dicom/seg.dcm")
    sr = hd.sr.srread(folder / "dicom/sr.dcm")
    assert sr.StudyInstanceUID == seg.StudyInstanceUID and (sr.PatientName, sr.PatientID) == (PATIENT_NAME, PATIENT_ID)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert findings["lesion_count"] == len(groups) == len(seg.SegmentSequence) > 0
    by_number = {les["number"]: les for les in findings["lesions"]}
    for group in groups:
        assert referenced_sop_uid(group) == seg.SOPInstanceUID
        les = by_number[referenced_segment_number(group)]
        values = {m.name.value: m.value for m in group.get_measurements()}
        assert values["118565006"] == pytest.approx(les["volume_mm3"])  # SNOMED CT Volume
        assert values["103339001"] == pytest.approx(les["longest_axial_diameter_mm"])  # SNOMED CT Long axis
    assert scan_values(sr)[SUSPICION_SCORE.value] == pytest.approx(findings["suspicion_score"])
    assert scan_values(sr)[LESION_COUNT.value] == findings["lesion_count"]


def _items(ds):
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _items(item)


def referenced_segment(group) -> pydicom.Dataset:
    """The Referenced Segment item of a TID 1411 group: its ReferencedSOPSequence names the SEG and the segment."""
    return next(i.ReferencedSOPSequence[0] for i in _items(group[0]) if "ReferencedSOPSequence" in i)


def referenced_segment_number(group) -> int:
    return int(referenced_segment(group).ReferencedSegmentNumber)


def referenced_sop_uid(group) -> str:
    return referenced_segment(group).ReferencedSOPInstanceUID


def scan_values(sr) -> dict:
    """Numeric values of the private scan-level concepts anywhere in the SR tree."""
    out = {}
    for item in _items(sr):
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == "99GFSCREEN":
            out[item.ConceptNameCodeSequence[0].CodeValue] = float(item.MeasuredValueSequence[0].NumericValue)
    return out


def test_seg_and_sr_pass_dciodvfy(lidc_run):
    _, folder = lidc_run
    assert dciodvfy_errors(folder / "dicom/seg.dcm") == []
    assert dciodvfy_errors(folder / "dicom/sr.dcm") == []


def test_patient_identifiers_never_logged(lidc_run):
    proc, _ = lidc_run
    logs = proc.stdout + proc.stderr
    assert "DEBUG" in logs  # the run logged at its most verbose
    assert PATIENT_NAME not in logs and "Testperson" not in logs and PATIENT_ID not in logs


def test_findings_json_is_the_bundles(lidc_run):
    _, folder = lidc_run
    findings = json.loads(next(folder.glob("*_findings.json")).read_text())
    assert findings["weights"]["status"] == "trained"  # saved (random) weights were loaded
    for key in ("suspicion_score", "lesion_count", "lesions", "region", "glance_focus", "timings"):
        assert key in findings
    assert findings["region"] == "chest" and findings["glance_focus"]["windows_kept"] >= 1
    assert findings["outputs"]["seg"]["file"] == "dicom/seg.dcm"
    # the DICOM outputs have a folder of their own: all an exporter takes, nothing else in it
    assert sorted(p.name for p in (folder / "dicom").iterdir()) == ["seg.dcm", "sr.dcm"]
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [p.name for p in folder.glob("*_findings.json")]


def test_same_input_twice_gives_identical_pixels_and_findings(lidc, model_dir, lidc_run, tmp_path):
    """Screening is deterministic: a second run on the same series gives the same SEG pixel data, segments and
    findings; only the instance's identity (SOP Instance UID, times) is new, in the same output series."""
    _, first = lidc_run
    proc = run_app(lidc, tmp_path / "again", model_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = output_of(tmp_path / "again")
    a, b = (pydicom.dcmread(folder / "dicom/seg.dcm") for folder in (first, second))
    assert a.PixelData == b.PixelData and a.NumberOfFrames == b.NumberOfFrames
    assert [s.SegmentLabel for s in a.SegmentSequence] == [s.SegmentLabel for s in b.SegmentSequence]
    assert a.SeriesInstanceUID == b.SeriesInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    f1, f2 = (json.loads(next(folder.glob("*_findings.json")).read_text()) for folder in (first, second))
    assert f1["lesions"] == f2["lesions"] and f1["suspicion_score"] == f2["suspicion_score"]
