"""Both front doors on the bad-input corpus (``tests/bad_inputs.py``): the Deploy app and bundle inference refuse
each bad scan with one line naming it and the reason, without a traceback, screen the valid scan beside them, write
nothing for the refused ones and exit with status 4 (some screened). Seeded small networks (the weights do not
matter for refusals)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import torch

from tests.bad_inputs import DICOM_CASES, NIFTI_CASES, build_dicom, build_nifti
from tests.conftest import ROOT, WritesAMarker
from tests.test_app import TEST_OVERRIDES, make_bundle, run_app

PARTIAL = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    build_dicom(shared_data, root / "dicom")
    build_nifti(shared_data, root / "nifti")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "gf_screen", TEST_OVERRIDES)


def run_bundle(inputs: Path, out: Path, model_dir: Path) -> subprocess.CompletedProcess:
    cfg = [str(model_dir / "configs" / n) for n in ("inference.yaml", "small.yaml", "test.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(cfg), "--input_path", str(inputs)]
    cmd += ["--output_dir", str(out), "--ckpt_path", str(model_dir / "models/model.pt"), "--bundle_root", str(ROOT)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def lines_about(log: str, name: str, phrase: str) -> list[str]:
    return [line for line in log.splitlines() if name in line and phrase in line]


def series_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture(scope="module")
def runs(corpus, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    return {
        ("bundle", "dicom"): (run_bundle(corpus / "dicom", out / "bundle_dicom", model_dir), out / "bundle_dicom"),
        ("bundle", "nifti"): (run_bundle(corpus / "nifti", out / "bundle_nifti", model_dir), out / "bundle_nifti"),
        ("app", "dicom"): (run_app(corpus / "dicom", out / "app_dicom", model_dir), out / "app_dicom"),
        ("app", "nifti"): (run_app(corpus / "nifti", out / "app_nifti", model_dir), out / "app_nifti"),
    }


def outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


@pytest.mark.parametrize("door", ["bundle", "app"])
@pytest.mark.parametrize("kind", ["dicom", "nifti"])
def test_valid_scan_screened_beside_the_refused_ones(runs, corpus, door, kind):
    proc, out = runs[door, kind]
    log = proc.stdout + proc.stderr
    assert proc.returncode == PARTIAL, log[-3000:]
    assert "Traceback" not in log
    valid = series_uid(corpus / "dicom" / "valid") if (door, kind) == ("app", "dicom") else "valid"
    assert outputs(out) == [valid]  # nothing for a refused scan, not even an empty folder


@pytest.mark.parametrize("case", [c for c, reason in DICOM_CASES.items() if reason])
def test_bundle_refuses_bad_dicom_by_name(runs, case):
    proc, _ = runs["bundle", "dicom"]
    assert lines_about(proc.stdout + proc.stderr, f"Not screened: {case}:", DICOM_CASES[case]), case


@pytest.mark.parametrize("case", [c for c, reason in NIFTI_CASES.items() if reason])
@pytest.mark.parametrize("door", ["bundle", "app"])
def test_both_refuse_bad_nifti_by_name(runs, door, case):
    proc, _ = runs[door, "nifti"]
    assert lines_about(proc.stdout + proc.stderr, f"Not screened: {case}:", NIFTI_CASES[case]), (door, case)


APP_DICOM = {
    # the app's loader drops the cut file with its own line; the series then has a gap
    "truncated_jpeg2000": "missing slices",
}


@pytest.mark.parametrize("case", [c for c, reason in DICOM_CASES.items() if reason and c != "garbage_after_preamble"])
def test_app_refuses_bad_dicom_by_series(runs, corpus, case):
    proc, _ = runs["app", "dicom"]
    log = proc.stdout + proc.stderr
    phrase = APP_DICOM.get(case, DICOM_CASES[case])
    uid = series_uid(corpus / "dicom" / case)
    assert [line for line in lines_about(log, uid, phrase) if "Not screened: " in line], case


def test_app_ignores_files_it_cannot_read_with_one_line_each(runs):
    proc, _ = runs["app", "dicom"]
    log = proc.stdout + proc.stderr
    assert len(lines_about(log, "Ignored corrupt DICOM file(s) 000.dcm:", DICOM_CASES["garbage_after_preamble"])) == 1
    assert len(lines_about(log, "Ignored corrupt DICOM file(s) 010.dcm:", "truncated DICOM file")) == 1


def _weights(kind: str, model_dir: Path, folder: Path) -> tuple[Path, Path]:
    """A broken weights file of ``kind`` made from the test bundle's (real, seeded) ones; and a marker path."""
    good, path, marker = model_dir / "models/model.pt", folder / "model.pt", folder / "code_ran"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "nan":
        state = torch.load(good, weights_only=True)
        state["focus"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state["focus"].items()}
        torch.save(state, path)
    elif kind == "code_running_pickle":
        torch.save({"glance": WritesAMarker(marker), "focus": {}}, path)
    return path, marker


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "nan", "code_running_pickle"])
def test_bundle_refuses_unusable_weights_in_one_line(corpus, model_dir, tmp_path, kind):
    weights, marker = _weights(kind, model_dir, tmp_path)
    cfg = [str(model_dir / "configs" / n) for n in ("inference.yaml", "small.yaml", "test.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(cfg), "--bundle_root", str(ROOT)]
    cmd += ["--input_path", str(corpus / "dicom" / "valid"), "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd + ["--ckpt_path", str(weights)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 5 and "Traceback" not in log, log[-3000:]
    assert len(lines_about(log, "Cannot load the model:", str(weights))) == 1
    assert outputs(tmp_path / "out") == [] and not marker.exists()


def test_full_disk_gives_one_line_per_scan_and_nothing_half_written(corpus, model_dir, tmp_path):
    """Outputs on a file system with no room (a 4 KiB tmpfs): each scan's write fails, is named with the reason,
    leaves no staging folder or partial file, and the run exits 3 (nothing screened) without a traceback."""
    out = tmp_path / "full"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(out)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        proc = run_bundle(corpus / "dicom" / "valid", out, model_dir)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 3 and "Traceback" not in log, log[-3000:]
        assert lines_about(log, "Not screened: valid:", "could not be written") and "No space left" in log
        assert list(out.iterdir()) == []
    finally:
        subprocess.run(["umount", str(out)], check=True)
