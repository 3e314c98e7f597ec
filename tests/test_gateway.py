"""The two PACS routes on real DICOM: the Orthanc gateway (``gateway/``) against a real Orthanc, and the MONAI Deploy
Informatics Gateway's payload layout through the app.

Orthanc (Debian's, with its Python and DICOMweb plugins) runs the project's gateway plugin in a private network
namespace (``gateway.loopback``); the test C-STOREs the LIDC slab into it as a PACS would, waits for the gateway to
screen the stable study, finds the SEG and SR by QIDO-RS in the same study, retrieves them by WADO-RS and compares
the SEG with the bundle's own mask voxel for voxel, and checks what reached the forwarding destination. The networks
are the seeded small ones of ``tests/test_app.py`` (the weights do not matter here, the plumbing does).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from gateway.loopback import LoopbackOrthanc, missing_tools
from tests.conftest import ROOT
from tests.test_app import (
    PATIENT_NAME,
    TEST_OVERRIDES,
    bundle_lesion_mask,
    copy_series,
    make_bundle,
    output_of,
    run_app,
    sorted_slices,
)

STABLE_AGE = 2


@pytest.fixture(scope="module")
def lidc(tmp_path_factory, shared_data) -> Path:
    return copy_series(shared_data / "lidc_idri_0314_nodule/dicom", tmp_path_factory.mktemp("lidc") / "dicom")


@pytest.fixture(scope="module")
def gapped(tmp_path_factory, shared_data) -> Path:
    """A CT series of its own study with its 11th slice missing: the app refuses it (a gap, not a thinner slice)."""
    files = sorted((shared_data / "lidc_idri_0314_nodule/dicom").glob("*.dcm"))[:20]
    return copy_series(
        files[0].parent, tmp_path_factory.mktemp("gapped") / "dicom", files[:10] + files[11:], new_uids=True
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "gf_screen", TEST_OVERRIDES)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, lidc, gapped, model_dir):
    """Orthanc with the gateway; both studies C-STOREd and screened (or refused) before the tests look."""
    missing = missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the README test command installs orthanc, orthanc-python, dcmtk")
    folder = tmp_path_factory.mktemp("orthanc")
    with LoopbackOrthanc(folder, sys.executable, ROOT, model_dir, stable_age=STABLE_AGE) as orthanc:
        for series in (lidc, gapped):
            orthanc.c_store(sorted(series.glob("*.dcm")))
        for series in (lidc, gapped):
            orthanc.screened(study_uid(series))
        yield orthanc


def study_uid(series: Path) -> str:
    return str(pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)


def records(orthanc: LoopbackOrthanc, series: Path) -> list[dict]:
    return orthanc.screened(study_uid(series), timeout=10)


def outputs_in(orthanc: LoopbackOrthanc, study: str, modality: str) -> list[dict]:
    return orthanc.qido(f"studies/{study}/instances?Modality={modality}")


def uid(item: dict, tag: str) -> str:
    return item[tag]["Value"][0]


def test_stable_study_is_screened_and_its_seg_is_the_bundle_mask(pacs, lidc, model_dir, tmp_path):
    (record,) = records(pacs, lidc)
    assert record["status"] == "screened", record
    study = study_uid(lidc)
    (seg_item,) = outputs_in(pacs, study, "SEG")
    (sr_item,) = outputs_in(pacs, study, "SR")
    assert {uid(seg_item, "00080018"), uid(sr_item, "00080018")} == set(record["outputs"].values())
    seg = pacs.wado(study, uid(seg_item, "0020000E"), uid(seg_item, "00080018"))
    assert seg.StudyInstanceUID == study and str(seg.PatientName) == PATIENT_NAME
    slices = sorted_slices(lidc)
    labels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in slices], combine_segments=True
    )
    mask = bundle_lesion_mask(lidc, model_dir, tmp_path)
    assert mask.sum() > 0, "the test weights should give some lesions"
    assert np.array_equal(np.transpose(labels > 0, (2, 1, 0)), mask > 0)
    sr = pacs.wado(study, uid(sr_item, "0020000E"), uid(sr_item, "00080018"))
    referenced = {
        r.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for r in se.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in referenced and {s.SOPInstanceUID for s in slices} <= referenced


def test_outputs_are_forwarded_to_the_destination_unchanged(pacs, lidc):
    (record,) = records(pacs, lidc)
    assert record["forwarded"] is True
    received = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, pacs.received.iterdir())}
    assert set(received) == set(record["outputs"].values())
    study = study_uid(lidc)
    for item in outputs_in(pacs, study, "SEG") + outputs_in(pacs, study, "SR"):
        kept = pacs.wado(study, uid(item, "0020000E"), uid(item, "00080018"))
        assert received[kept.SOPInstanceUID] == kept


def test_stored_outputs_do_not_trigger_another_screening(pacs, lidc):
    """The study re-stabilises after its SEG and SR are stored; the gateway's record stops a second run."""
    time.sleep(STABLE_AGE + 3)
    assert pacs.get("/gf-screen/status") == {
        "queued": [],
        "current": None,
        "finished": {"screened": 1, "not screened": 1, "failed": 0},
    }
    study = study_uid(lidc)
    assert len(outputs_in(pacs, study, "SEG")) == 1 and len(outputs_in(pacs, study, "SR")) == 1


def test_refused_series_is_recorded_with_its_reason_and_the_study_kept(pacs, gapped):
    (record,) = records(pacs, gapped)
    assert record["status"] == "not screened" and "slice" in record["reason"].lower(), record
    study = study_uid(gapped)
    assert outputs_in(pacs, study, "SEG") == [] and outputs_in(pacs, study, "SR") == []
    assert len(outputs_in(pacs, study, "CT")) == len(list(gapped.glob("*.dcm")))


def test_outputs_are_kept_per_study_without_patient_identifiers_in_the_log(pacs, lidc):
    (folder,) = (pacs.outputs / study_uid(lidc)).iterdir()
    findings = json.loads(next(folder.glob("*.json")).read_text())
    assert findings["source_series_instance_uid"] == sorted_slices(lidc)[0].SeriesInstanceUID
    assert sorted(p.name for p in (folder / "dicom").iterdir()) == ["seg.dcm", "sr.dcm"]
    log = pacs.log.read_text(errors="replace")
    assert "GF-Screen: study" in log and PATIENT_NAME not in log and "GFS-PID" not in log


def informatics_gateway_payload(series: Path, payload: Path) -> Path:
    """The layout the MONAI Deploy Informatics Gateway writes: ``dcm/<study>/<series>/<sop>.dcm`` and beside each
    file its DICOM JSON metadata (``<sop>.dcm.json``, bulk data left out)."""
    for path in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        folder = payload / "dcm" / ds.StudyInstanceUID / ds.SeriesInstanceUID
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        (folder / f"{ds.SOPInstanceUID}.dcm.json").write_text(
            json.dumps(ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda e: ""))
        )
    return payload


def test_informatics_gateway_payload_gives_dicom_only_outputs(tmp_path, lidc, model_dir):
    payload = informatics_gateway_payload(lidc, tmp_path / "payload")
    proc = run_app(payload, tmp_path / "out", model_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert sum(".dcm.json" in line for line in log.splitlines()) <= 1, "sidecars logged more than once"
    folder = output_of(tmp_path / "out")
    exported = sorted((folder / "dicom").iterdir())
    assert [p.name for p in exported] == ["seg.dcm", "sr.dcm"]
    for path in exported:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == study_uid(lidc) and ds.file_meta.TransferSyntaxUID
    assert sorted(p.name for p in folder.iterdir()) == sorted(["dicom", f"{folder.name}_findings.json"])


def test_retry_endpoint_queues_a_refused_study_again(pacs, gapped):
    """``POST /gf-screen/studies/<id>/screen`` drops the study's 'not screened' record and screens it anew."""
    (found,) = json.loads(pacs.http("/tools/lookup", data=study_uid(gapped).encode())[0])
    assert json.loads(pacs.http(f"/gf-screen/studies/{found['ID']}/screen", data=b"")[0]) == {"queued": found["ID"]}
    status = pacs.wait(
        lambda: (s := pacs.get("/gf-screen/status"))["finished"]["not screened"] == 2 and not s["current"] and s,
        300,
        "the second screening of the refused study",
    )
    assert status["queued"] == [] and status["finished"]["screened"] == 1
    (record,) = records(pacs, gapped)
    assert record["status"] == "not screened"
