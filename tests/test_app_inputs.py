"""The app on bad, empty and other inputs: clear messages, documented exit statuses, no partial output.

Bad series are real DICOM copied into tmp and modified there. The model is the small config with Glance threshold 1
(Glance scores every window, Focus runs on none), which keeps these runs short and is also the "nothing found" case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from app.cases import ExitStatus
from app.dicom_outputs import LESION_COUNT, SUSPICION_SCORE, build_seg, build_sr
from tests.test_app import (
    PATIENT_ID,
    PATIENT_NAME,
    TEST_OVERRIDES,
    copy_series,
    dciodvfy_errors,
    make_bundle,
    output_of,
    run_app,
    scan_values,
)

LIDC = "lidc_idri_0314_nodule/dicom"


def lidc_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / LIDC).iterdir())


@pytest.fixture(scope="module")
def quiet_model(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle_quiet") / "gf", {"glance_threshold": 1.0})


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, shared_data, quiet_model):
    """One input holding a valid series (study A) and one bad series per kind of fault (each its own study).

    Study A also holds a thicker copy (every second slice), a derived copy and a localizer: the selector must
    screen the original series only.
    """
    inp = tmp_path_factory.mktemp("mixed")
    files = lidc_files(shared_data)
    copy_series(shared_data / LIDC, inp / "valid")

    def same_study(image_type=None):
        series = pydicom.uid.generate_uid()

        def edit(ds, i):
            ds.SeriesInstanceUID, ds.SeriesNumber = series, int(ds.SeriesNumber) + 1
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            if image_type:
                ds.ImageType = image_type

        return edit

    derived, localizer = ["DERIVED", "SECONDARY", "AXIAL"], ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    copy_series(shared_data / LIDC, inp / "thicker", files=files[::2], edit=same_study())
    copy_series(shared_data / LIDC, inp / "derived", files=files[:40], edit=same_study(derived))
    copy_series(shared_data / LIDC, inp / "scout", files=files[:3], edit=same_study(localizer))
    copy_series(shared_data / LIDC, inp / "missing_slice", files=files[:20] + files[21:], new_uids=True)

    def shift(ds, i):
        if i == 30:
            ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.6

    copy_series(shared_data / LIDC, inp / "uneven", edit=shift, new_uids=True)

    def coronal(ds, i):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [0.0, float(i), 0.0]

    copy_series(shared_data / LIDC, inp / "coronal", edit=coronal, new_uids=True)
    copy_series(shared_data / LIDC, inp / "small", files=files[:10], new_uids=True)

    def mr(ds, i):
        ds.Modality = "MR"

    copy_series(shared_data / LIDC, inp / "not_ct", files=files[:40], edit=mr, new_uids=True)
    corrupt = copy_series(shared_data / LIDC, inp / "corrupt", new_uids=True)
    victim = sorted(corrupt.iterdir())[24]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    (corrupt / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x13\x37" * 500)
    (inp / "notes.txt").write_text("not DICOM")
    # routine in a gateway's payload: a JSON sidecar per instance, and an earlier run's SEG and SR in study A
    for path in sorted((inp / "valid").iterdir()):
        path.with_name(path.name + ".json").write_text("{}")
    valid = sorted((pydicom.dcmread(p) for p in (inp / "valid").glob("*.dcm")), key=lambda d: d.InstanceNumber)
    labels = np.zeros((valid[0].Columns, valid[0].Rows, len(valid)), np.uint8)
    labels[200:210, 200:210, 20:23] = 1
    start = np.asarray(valid[20].ImagePositionPatient, dtype=float)
    ends = [list(start), list(start + [10.0, 0, 0])]
    lesion = {"number": 1, "volume_mm3": 1.0, "longest_axial_diameter_mm": 10.0, "max_probability": 0.9,
              "longest_axial_diameter_ends_mm": ends, "mean_probability": 0.9}  # fmt: skip
    findings = {"region": "chest", "weights": {"status": "trained"}, "lesion_count": 1, "suspicion_score": 0.9,
                "lesions": [lesion]}  # fmt: skip
    (inp / "earlier_results").mkdir()
    seg = build_seg(valid, labels, findings, "0.0.1")
    seg.save_as(inp / "earlier_results" / "seg.dcm", enforce_file_format=True)
    build_sr(valid, seg, findings, "0.0.1").save_as(inp / "earlier_results" / "sr.dcm", enforce_file_format=True)
    out = tmp_path_factory.mktemp("out_mixed")
    return run_app(inp, out, quiet_model), out, inp


def test_bad_series_are_named_and_the_valid_one_is_screened(mixed_run):
    proc, out, inp = mixed_run
    logs = proc.stdout + proc.stderr
    assert proc.returncode == ExitStatus.PARTIAL, logs[-3000:]
    for reason in (
        "uneven slice spacing or missing slices",  # missing slice, uneven spacing, and the dropped corrupt file
        "not an axial series",
        "too small to screen",
        "modality MR, not CT",
        "Ignored corrupt DICOM file",
        "no CT series that can be screened",
        "a derived series",
        "a localizer (scout), not a volume",
    ):
        assert reason in logs, reason
    assert logs.count("uneven slice spacing or missing slices") >= 3
    assert leftovers(out) == []  # no staging folder of a failed case survives
    folder = output_of(out)  # only the valid series has outputs: the thinnest of its study, not the thicker copy
    assert folder.name == pydicom.dcmread(next((inp / "valid").glob("*.dcm"))).SeriesInstanceUID
    thicker = pydicom.dcmread(next((inp / "thicker").iterdir())).SeriesInstanceUID
    assert f"Skipped series {thicker}" not in logs  # a valid candidate, passed over for the thinner one


def test_routine_inputs_are_logged_once(mixed_run):
    """The sidecars are one line, the earlier SEG and SR one line for their study, neither a warning."""
    proc, _, inp = mixed_run
    lines = (proc.stdout + proc.stderr).splitlines()
    sidecars = len(list((inp / "valid").glob("*.dcm.json")))
    ignored = [line for line in lines if "that are not DICOM" in line]
    assert len(ignored) == 1 and f"{sidecars} .dcm.json" in ignored[0] and "1 .txt" in ignored[0], ignored
    assert not [line for line in lines if ".dcm.json" in line and line not in ignored]
    derived = [line for line in lines if "not images, not screened" in line]
    assert len(derived) == 1 and "1 SEG, 1 SR series" in derived[0] and "WARNING" not in derived[0], derived
    for name in ("seg.dcm", "sr.dcm"):
        uid = pydicom.dcmread(inp / "earlier_results" / name).SeriesInstanceUID
        assert not [line for line in lines if uid in line]


def test_both_entry_points_accept_and_refuse_the_same_series(mixed_run):
    """One DICOM series policy: every series folder of the mixed input that bundle inference refuses, the app skips
    with the same reason; the two it accepts, the app does not skip (it screens the thinner one)."""
    from bundle.data import list_inputs
    from bundle.validation import InvalidScanError

    proc, _, inp = mixed_run
    skipped = [line for line in (proc.stdout + proc.stderr).splitlines() if "Skipped series" in line]
    for folder in sorted(p for p in inp.iterdir() if p.is_dir() and p.name not in ("corrupt", "earlier_results")):
        uid = pydicom.dcmread(next(folder.glob("*.dcm"))).SeriesInstanceUID
        app_lines = [line for line in skipped if f"Skipped series {uid} " in line]
        try:
            list_inputs(folder)
        except InvalidScanError as e:
            reason = str(e).split(": ", 1)[1].rstrip(".")
            assert len(app_lines) == 1 and app_lines[0].endswith(reason), (folder.name, reason, app_lines)
        else:
            assert folder.name in ("valid", "thicker") and app_lines == [], folder.name
    with pytest.raises(InvalidScanError, match="missing slices"):  # both drop the cut file, then see the gap
        list_inputs(inp / "corrupt")


def test_nothing_found_is_stated_in_json_and_sr_without_seg(mixed_run):
    """Glance keeps no window: no lesion. No SEG is written (a SEG needs a segment); JSON and SR say so."""
    proc, out, _ = mixed_run
    folder = output_of(out)
    assert not (folder / "dicom/seg.dcm").exists()
    findings = json.loads(next(folder.glob("*_findings.json")).read_text())
    assert findings["lesion_count"] == 0 and findings["lesions"] == [] and findings["outputs"]["seg"] is None
    assert findings["glance_focus"]["windows_kept"] == 0 and findings["glance_focus"]["glance_max_p"] is not None
    sr = hd.sr.srread(folder / "dicom/sr.dcm")
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    values = scan_values(sr)
    assert values[LESION_COUNT.value] == 0 and values[SUSPICION_SCORE.value] == pytest.approx(
        findings["suspicion_score"]
    )
    finding = [i for i in sr.ContentSequence[-1].ContentSequence[0].ContentSequence if i.ValueType == "CODE"][
        0
    ].ConceptCodeSequence[0]
    assert finding.CodeMeaning == "Clinical finding absent"
    assert (sr.PatientName, sr.PatientID) == (PATIENT_NAME, PATIENT_ID)
    assert dciodvfy_errors(folder / "dicom/sr.dcm") == []
    assert PATIENT_ID not in proc.stdout + proc.stderr


def test_only_bad_series_exit_3_and_write_nothing(tmp_path, shared_data, quiet_model):
    files = lidc_files(shared_data)
    copy_series(shared_data / LIDC, tmp_path / "in" / "small", files=files[:10])
    out = tmp_path / "out"
    proc = run_app(tmp_path / "in", out, quiet_model)
    assert proc.returncode == ExitStatus.NO_SCREENABLE_SERIES
    assert "too small to screen" in proc.stderr + proc.stdout
    assert list(out.iterdir()) == []


def test_folder_without_dicom_exit_3(tmp_path, quiet_model):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("nothing here")
    proc = run_app(tmp_path / "in", tmp_path / "out", quiet_model)
    assert proc.returncode == ExitStatus.NO_SCREENABLE_SERIES
    assert "No DICOM study in the input" in proc.stdout + proc.stderr


def test_no_weights_refused_unless_untrained_mode(tmp_path, shared_data):
    model = make_bundle(tmp_path / "gf", {"glance_threshold": 1.0}, weights=False)
    inp = copy_series(shared_data / LIDC, tmp_path / "in")
    proc = run_app(inp, tmp_path / "out", model)
    assert proc.returncode == ExitStatus.WEIGHTS
    assert "no weights at" in proc.stdout + proc.stderr and "GF_SCREEN_ALLOW_UNTRAINED=1" in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    proc = run_app(inp, tmp_path / "out", model, untrained=True, env_paths=True)  # HOLOSCAN_* paths this time
    assert proc.returncode == ExitStatus.OK, proc.stderr[-2000:]
    findings = json.loads(next(output_of(tmp_path / "out").glob("*_findings.json")).read_text())
    assert findings["weights"]["status"] == "untrained"
    assert pydicom.dcmread(output_of(tmp_path / "out") / "dicom/sr.dcm").SeriesDescription.startswith(
        "GF-Screen AI lesions, UNTRAINED"
    )


def test_series_without_uids_is_rejected_and_compressed_series_screens(tmp_path, shared_data, tmp_path_factory):
    """The 20-slice JPEG 2000 series ships with empty UIDs: as is, a clear refusal; with UIDs, SEG + SR.

    Glance threshold 0.9: the test weights score 2 of its 35 windows above it (none above 0.97), so Focus runs and
    the SEG is written.
    """
    src = shared_data / "totalsegmentator_example/example_ct_dicom"
    raw = tmp_path / "raw"
    shutil.copytree(src, raw)
    model = make_bundle(tmp_path / "gf", {**TEST_OVERRIDES, "glance_threshold": 0.9})
    proc = run_app(raw, tmp_path / "out_raw", model)
    assert proc.returncode == ExitStatus.NO_SCREENABLE_SERIES
    assert "empty SOPClassUID, SOPInstanceUID, StudyInstanceUID" in proc.stdout + proc.stderr

    def uids(ds, i):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        ds.FrameOfReferenceUID = ds.get("FrameOfReferenceUID") or "1.2.826.0.1.3680043.8.498.1"
        ds.SeriesNumber = 3

    fixed = copy_series(src, tmp_path / "fixed", files=sorted(src.iterdir()), edit=uids, new_uids=True)
    assert pydicom.dcmread(next(fixed.iterdir())).file_meta.TransferSyntaxUID.is_compressed
    out = tmp_path / "out"
    proc = run_app(fixed, out, model)
    assert proc.returncode == ExitStatus.OK, proc.stderr[-3000:]
    folder = output_of(out)
    findings = json.loads(next(folder.glob("*_findings.json")).read_text())
    assert findings["glance_focus"]["windows_kept"] >= 1 and findings["lesion_count"] >= 1
    seg = hd.seg.segread(folder / "dicom/seg.dcm")
    assert seg.number_of_segments == findings["lesion_count"]
    assert dciodvfy_errors(folder / "dicom/seg.dcm") == []
    assert dciodvfy_errors(folder / "dicom/sr.dcm") == []


def test_nifti_research_path(tmp_path, shared_data, quiet_model):
    out = tmp_path / "out"
    proc = run_app(shared_data / "lidc_idri_0314_nodule/image_slab.nii.gz", out, quiet_model)
    assert proc.returncode == ExitStatus.OK, proc.stderr[-3000:]
    folder = output_of(out)
    assert folder.name == "image_slab"
    assert sorted(p.name for p in folder.iterdir()) == ["image_slab_findings.json", "image_slab_lesion.nii.gz"]
    findings = json.loads((folder / "image_slab_findings.json").read_text())
    assert findings["lesion_count"] == 0 and findings["image"].endswith("image_slab.nii.gz")


def test_full_134_slice_series(tmp_path, shared_data):
    """The complete abdominal series end to end (one run, about a minute on 2 cores): SEG frames on its slices.

    Glance threshold 0.85: the test weights score 6 of its 144 windows above it (none above 0.97).
    """
    src = shared_data / "tcia_pancreatic_ct_cbct_seg_full_series/dicom"
    model = make_bundle(tmp_path / "gf", {**TEST_OVERRIDES, "glance_threshold": 0.85})
    out = tmp_path / "out"
    proc = run_app(src, out, model)
    assert proc.returncode == ExitStatus.OK, proc.stderr[-3000:]
    folder = output_of(out)
    findings = json.loads(next(folder.glob("*_findings.json")).read_text())
    assert findings["glance_focus"]["windows_total"] > 100
    assert findings["glance_focus"]["windows_kept"] >= 1 and findings["lesion_count"] >= 1
    assert dciodvfy_errors(folder / "dicom/sr.dcm") == []
    seg = pydicom.dcmread(folder / "dicom/seg.dcm")
    assert len(seg.SegmentSequence) == findings["lesion_count"]
    assert dciodvfy_errors(folder / "dicom/seg.dcm") == []
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in src.iterdir()]
    positions = {h.SOPInstanceUID: h.ImagePositionPatient for h in headers}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient], [float(v) for v in positions[uid]]
        )
    for name in ("Pancreas-CT-CB_001",):
        assert name not in proc.stdout + proc.stderr
