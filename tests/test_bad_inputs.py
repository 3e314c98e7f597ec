"""Both front doors on the bad-input corpus (``tests/bad_inputs.py``): the Deploy app and bundle inference refuse
each bad scan with one line naming it and the reason, without a traceback, screen the valid scan beside them, write
nothing for the refused ones and exit with status 4 (some screened). Seeded small networks (the weights do not
matter for refusals)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import torch
from bundle.cohort import SUMMARY

from tests.bad_inputs import DICOM_CASES, NIFTI_CASES, TWO_SERIES, build_dicom, build_nifti
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


def bundle_command(inputs: Path, out: Path, model_dir: Path) -> list[str]:
    cfg = [str(model_dir / "configs" / n) for n in ("inference.yaml", "small.yaml", "test.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(cfg), "--input_path", str(inputs)]
    cmd += ["--output_dir", str(out), "--ckpt_path", str(model_dir / "models/model.pt")]
    return cmd + ["--bundle_root", str(ROOT)]


def run_bundle(inputs: Path, out: Path, model_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(bundle_command(inputs, out, model_dir), cwd=ROOT, capture_output=True, text=True, timeout=900)


def lines_about(log: str, name: str, phrase: str) -> list[str]:
    return [line for line in log.splitlines() if name in line and phrase in line]


def series_uid(folder: Path, modality: str | None = None) -> str:
    """The UID of the (first) series of ``folder``, or of its series of ``modality``."""
    headers = (pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir()))
    return next(str(h.SeriesInstanceUID) for h in headers if modality in (None, h.Modality))


def screened_names(corpus: Path, door: str, kind: str) -> list[str]:
    """The output folders a run must leave: one per screened scan, none for a refused one. The app names a DICOM
    case by its Series Instance UID; bundle inference by the folder, and a series of a folder with several by
    ``<folder>_<Series Instance UID>``."""
    cases = DICOM_CASES if kind == "dicom" else NIFTI_CASES
    names = [case for case, reason in cases.items() if reason is None]
    if kind == "nifti":
        return sorted(names)
    two = corpus / "dicom" / "two_series"
    if door == "app":
        return sorted([series_uid(corpus / "dicom" / case) for case in names] + [series_uid(two, "CT")])
    return sorted(names + [f"two_series_{series_uid(two, 'CT')}"])


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
    """The scans' output folders (bundle inference's cohort summary aside)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name != SUMMARY)


@pytest.mark.parametrize("door", ["bundle", "app"])
@pytest.mark.parametrize("kind", ["dicom", "nifti"])
def test_valid_scan_screened_beside_the_refused_ones(runs, corpus, door, kind):
    proc, out = runs[door, kind]
    log = proc.stdout + proc.stderr
    assert proc.returncode == PARTIAL, log[-3000:]
    assert "Traceback" not in log
    assert outputs(out) == screened_names(corpus, door, kind)  # nothing for a refused scan, not even an empty folder


@pytest.mark.parametrize("case", [c for c, reason in DICOM_CASES.items() if reason])
def test_bundle_refuses_bad_dicom_by_name(runs, case):
    proc, _ = runs["bundle", "dicom"]
    assert lines_about(proc.stdout + proc.stderr, f"Not screened: {case}:", DICOM_CASES[case]), case


@pytest.mark.parametrize("case", [c for c, reason in NIFTI_CASES.items() if reason])
@pytest.mark.parametrize("door", ["bundle", "app"])
def test_both_refuse_bad_nifti_by_name(runs, door, case):
    proc, _ = runs[door, "nifti"]
    assert lines_about(proc.stdout + proc.stderr, f"Not screened: {case}:", NIFTI_CASES[case]), (door, case)


@pytest.mark.parametrize("case", [c for c, reason in DICOM_CASES.items() if reason and c != "garbage_after_preamble"])
def test_app_refuses_bad_dicom_by_series(runs, corpus, case):
    proc, _ = runs["app", "dicom"]
    log = proc.stdout + proc.stderr
    uid = series_uid(corpus / "dicom" / case)
    assert [line for line in lines_about(log, uid, DICOM_CASES[case]) if "Not screened: " in line], case


@pytest.mark.parametrize("door", ["bundle", "app"])
def test_both_drop_files_they_cannot_read_with_one_line_each(runs, door):
    proc, _ = runs[door, "dicom"]
    log = proc.stdout + proc.stderr
    assert len(lines_about(log, "Ignored corrupt DICOM file(s) 000.dcm:", DICOM_CASES["garbage_after_preamble"])) == 1
    assert len(lines_about(log, "Ignored corrupt DICOM file(s) 010.dcm:", "truncated DICOM file")) == 1
    assert len(lines_about(log, "Ignored 1 byte-identical copies of other files:", "005_copy.dcm")) == 1


@pytest.mark.parametrize("door", ["bundle", "app"])
def test_both_screen_the_ct_series_beside_an_mr_series(runs, corpus, door):
    """``two_series``: the CT screened (the first test), the MR refused with its reason, named by its series."""
    proc, _ = runs[door, "dicom"]
    mr = series_uid(corpus / "dicom" / "two_series", "MR")
    name = mr if door == "app" else f"two_series_{mr}:"
    assert [line for line in lines_about(proc.stdout + proc.stderr, name, TWO_SERIES["MR"]) if "Not screened" in line]


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
        assert [p.name for p in out.iterdir() if p.name != SUMMARY] == []  # the summary row says "failed", if it fit
    finally:
        subprocess.run(["umount", str(out)], check=True)


def holds_folder(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` holds the ``flock`` on ``folder`` (``/proc/locks`` rows: ``FLOCK ... pid dev:inode``)."""
    inode = f":{folder.stat().st_ino}"
    rows = [line.split() for line in Path("/proc/locks").read_text().splitlines() if " FLOCK " in line]
    return any(row[4] == str(pid) and row[5].endswith(inode) for row in rows)


def wait_for(condition, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the run ended first (status {process.returncode})"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_two_runs_into_one_output_folder(corpus, model_dir, tmp_path):
    """While a run screens into a folder, a second run into it stops at once with one line and exit status 6 and
    writes nothing; the first finishes untouched; once it has ended the folder is free again (no stale lock)."""
    out, later = tmp_path / "out", tmp_path / "later.nii.gz"
    out.mkdir()
    shutil.copyfile(corpus / "nifti" / "valid.nii.gz", later)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(bundle_command(corpus / "dicom" / "valid", out, model_dir), cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_for(lambda: holds_folder(first.pid, out), first)
            second = run_bundle(later, out, model_dir)
        finally:
            assert first.wait(timeout=900) == 0, (tmp_path / "first.log").read_text()[-3000:]
    log = second.stdout + second.stderr
    assert second.returncode == 6 and "Traceback" not in log, log[-3000:]
    assert len(lines_about(log, f"output folder {out}", "is in use by another screening run")) == 1
    assert outputs(out) == ["valid"] and sorted(p.name for p in out.iterdir()) == [SUMMARY, "valid"]
    third = run_bundle(later, out, model_dir)
    assert third.returncode == 0, (third.stdout + third.stderr)[-3000:]
    assert outputs(out) == ["later", "valid"]


def test_app_stopped_part_way_leaves_nothing_and_the_next_run_cleans_up(corpus, model_dir, tmp_path):
    """SIGTERM while the app screens (a scheduler's stop): Holoscan stops the graph (forced after 3 s), the status
    is not 0, and no output folder exists for the unfinished scan. Whatever the stop left half-done (a staging folder,
    here also one planted as if a kill had come mid-write) is removed by the next run into the folder, which then
    screens the scan."""
    out = tmp_path / "out"
    out.mkdir()
    with open(tmp_path / "app.log", "w") as log:
        cmd = [sys.executable, "app", "-i", str(corpus / "dicom" / "valid"), "-o", str(out), "-m", str(model_dir)]
        app = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "screening series" in (tmp_path / "app.log").read_text(), app)
        finally:
            app.send_signal(signal.SIGTERM)
            status = app.wait(timeout=120)
    assert status != 0, (tmp_path / "app.log").read_text()[-3000:]
    assert outputs(out) == []
    (out / ".staging-interrupted-abc123").mkdir()
    (out / ".staging-interrupted-abc123" / "findings.json").write_text("{")
    again = run_app(corpus / "dicom" / "valid", out, model_dir)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert [p.name for p in out.iterdir()] == [series_uid(corpus / "dicom" / "valid")]
    assert ".staging-interrupted-abc123" in again.stdout + again.stderr
