"""Screening a cohort (bundle/cohort.py, configs/multi_gpu_inference.yaml): two gloo processes under torchrun give the
same outputs as one process, scan for scan; a killed run restarted with the same command screens only the rest; the
summary has one row per scan. Real scans from ../shared/data, seeded small networks (the weights do not matter)."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle.cohort import SUMMARY, operating_point, pending
from bundle.writers import CaseOutputs

from tests.conftest import ROOT
from tests.test_app import TEST_OVERRIDES, make_bundle

PARTIAL = 4
SCANS = ("example_ct", "lung1_image")  # screened; "organ_map" (a label map) is refused


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, shared_data) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    shutil.copyfile(shared_data / "totalsegmentator_example/example_ct.nii.gz", folder / "example_ct.nii.gz")
    shutil.copyfile(shared_data / "totalsegmentator_example/example_seg.nii.gz", folder / "organ_map.nii.gz")
    shutil.copyfile(shared_data / "pyradiomics_lung1/lung1_image.nrrd", folder / "lung1_image.nrrd")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "gf_screen", TEST_OVERRIDES)


def command(inputs: Path, out: Path, model_dir: Path, ranks: int = 1) -> list[str]:
    names = ["inference.yaml", "small.yaml", "test.json"]
    cfg = [str(model_dir / "configs" / n) for n in names]
    if ranks == 1:
        cmd = [sys.executable, "-m", "monai.bundle", "run"]
    else:
        cfg.append(str(ROOT / "configs" / "multi_gpu_inference.yaml"))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
        cmd += ["--nproc_per_node", str(ranks), "-m", "monai.bundle", "run"]
    cmd += ["--config_file", repr(cfg), "--input_path", str(inputs), "--output_dir", str(out)]
    return cmd + ["--ckpt_path", str(model_dir / "models/model.pt"), "--bundle_root", str(ROOT)]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def summary(out: Path) -> list[dict]:
    with open(out / SUMMARY, newline="") as f:
        return list(csv.DictReader(f))


def findings(out: Path, case: str) -> dict:
    return json.loads(CaseOutputs(out, case).findings.read_text())


def lesion_map(out: Path, case: str) -> np.ndarray:
    return np.asarray(nib.load(CaseOutputs(out, case).lesion_map).dataobj)


@pytest.fixture(scope="module")
def single(cohort, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return run(command(cohort, out, model_dir)), out


def test_one_process_screens_every_scan_and_summarises_them(single):
    proc, out = single
    log = proc.stdout + proc.stderr
    assert proc.returncode == PARTIAL and "Traceback" not in log, log[-3000:]
    rows = {row["case_id"]: row for row in summary(out)}
    assert sorted(rows) == sorted([*SCANS, "organ_map"])
    for case in SCANS:
        written = findings(out, case)
        assert rows[case]["status"] == "screened" and int(rows[case]["lesions"]) == written["lesion_count"]
        assert rows[case]["weights_sha256"] == written["weights"]["sha256"]
        assert float(rows[case]["keep_fraction"]) == written["glance_focus"]["keep_fraction"]
    assert rows["organ_map"]["status"] == "refused" and "do not look like CT" in rows["organ_map"]["reason"]


def test_two_gloo_ranks_give_the_single_process_outputs(single, cohort, model_dir, tmp_path):
    """torchrun, 2 processes on the CPU: each scan screened once, by one rank; the union equals one process's run."""
    _, alone = single
    out = tmp_path / "out"
    proc = run(command(cohort, out, model_dir, ranks=2))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]  # a refused scan: rank 0 exits 4, torchrun reports the failure
    assert "Exit status 4." in log and log.count("Cohort: 3 scan(s), 2 screened") == 1  # rank 0 alone summarises
    assert sorted(p.name for p in out.iterdir()) == sorted([*SCANS, SUMMARY])
    for case in SCANS:
        assert np.array_equal(lesion_map(out, case), lesion_map(alone, case)), case
        ours, theirs = findings(out, case), findings(alone, case)
        for record in (ours, theirs):
            record.pop("timings")
            record["glance_focus"] = {k: v for k, v in record["glance_focus"].items() if not k.endswith("seconds")}
        assert ours == theirs, case
    keep = ("case_id", "status", "lesions", "suspicion_score", "keep_fraction", "weights_sha256", "reason")
    assert [{k: r[k] for k in keep} for r in summary(out)] == [{k: r[k] for k in keep} for r in summary(alone)]
    lines = [line for line in log.splitlines() if "lesion(s), suspicion score" in line]
    assert sorted(line.split(" - ")[-1].split(":")[0] for line in lines) == sorted(SCANS)  # no scan twice


def test_a_killed_run_restarted_screens_only_the_rest(single, cohort, model_dir, tmp_path):
    """SIGKILL once the first scan is published; the same command again skips it (same weights and operating point),
    screens the rest, and ends with the outputs of an uninterrupted run."""
    _, alone = single
    out = tmp_path / "out"
    first = subprocess.Popen(command(cohort, out, model_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    while not CaseOutputs(out, "example_ct").findings.exists():
        assert first.poll() is None and time.monotonic() < deadline, "the first scan was never published"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not CaseOutputs(out, "lung1_image").folder.exists()
    again = run(command(cohort, out, model_dir))
    log = again.stdout + again.stderr
    assert again.returncode == PARTIAL, log[-3000:]
    assert "Already screened with these weights and this operating point: 1 of 3 scan(s), skipped." in log
    assert "example_ct: 0 lesion(s)" not in log and "lung1_image:" in log
    statuses = {row["case_id"]: row["status"] for row in summary(out)}
    assert statuses == {"example_ct": "screened before", "lung1_image": "screened", "organ_map": "refused"}
    for case in SCANS:
        assert np.array_equal(lesion_map(out, case), lesion_map(alone, case)), case
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging, no rank rows left


def test_another_model_or_operating_point_screens_again(single):
    """``pending`` keeps a scan for screening unless its findings name the same weights and operating point."""
    _, out = single
    written = findings(out, "example_ct")
    weights = written["weights"]
    point = operating_point(
        written["glance_focus"]["threshold"],
        written["lesion_probability_threshold"],
        written["lesion_min_score"],
        written["lesion_score"],
    )
    items = [{"image": "x", "id": "example_ct"}, {"image": "y", "id": "never_screened"}]
    assert [i.get("screened_before") is not None for i in pending(items, out, weights, point)] == [True, False]
    changed = dict(point, lesion_min_score=point["lesion_min_score"] + 0.01)
    assert all(i.get("screened_before") is None for i in pending(items, out, weights, changed))
    other = dict(weights, sha256="0" * 64)
    assert all(i.get("screened_before") is None for i in pending(items, out, other, point))
    assert all(i.get("screened_before") is None for i in pending(items, out, {"status": "untrained"}, point))


def test_two_ranks_screen_and_evaluate_a_labelled_split(shared_data, model_dir, tmp_path):
    """``run evaluating`` with the multi-GPU evaluation config: both ranks screen, rank 0 alone writes
    evaluation.json (every labelled scan evaluated once) and the FROC PNG."""
    datalist = tmp_path / "datalist.json"
    items = [
        {"id": "lung1", "image": "pyradiomics_lung1/lung1_image.nrrd", "label": "pyradiomics_lung1/lung1_label.nrrd"},
        {"id": "lidc", "image": "lidc_idri_0314_nodule/image_slab.nii.gz",
         "label": "lidc_idri_0314_nodule/mask_consensus50.nii.gz"},
    ]  # fmt: skip
    datalist.write_text(json.dumps({"test": items}))
    out = tmp_path / "out"
    cmd = command(datalist, out, model_dir, ranks=2)
    cfg = eval(cmd[cmd.index("--config_file") + 1])
    cfg += [str(ROOT / "configs" / name) for name in ("evaluate.yaml", "multi_gpu_evaluate.yaml")]
    cmd[cmd.index("--config_file") + 1] = repr(cfg)
    cmd[cmd.index("run") + 1 : cmd.index("run") + 1] = ["evaluating"]
    cmd += ["--datalist", str(datalist), "--dataset_dir", str(shared_data), "--split", "test"]
    proc = run(cmd)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert sorted(case["id"] for case in report["per_case"]) == ["lidc", "lung1"]
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(row["case_id"] for row in summary(out)) == ["lidc", "lung1"]
