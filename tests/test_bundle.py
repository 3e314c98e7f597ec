"""The bundle as MONAI tooling sees it: metadata, network I/O, the inference and evaluation configs on real scans."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata, verify_net_in_out
from monai.transforms import AsDiscrete, Invertd, LoadImage, ResampleToMatch

from tests.conftest import ROOT

META = ROOT / "configs/metadata.json"
SCHEMA = ROOT.parent / "shared/schemas/meta_schema_20240725.json"
INFERENCE = [str(ROOT / "configs/inference.yaml"), str(ROOT / "configs/small.yaml")]


def test_metadata_passes_the_schema_and_root_file_is_the_same_file():
    if not SCHEMA.is_file():
        pytest.fail(f"schema {SCHEMA} missing")
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA))
    assert (ROOT / "metadata.json").resolve() == META.resolve()
    meta = json.loads(META.read_text())
    assert meta["version"] in meta["changelog"]
    assert set(meta["network_data_format"]["inputs"]) == {"image"}
    assert set(meta["network_data_format"]["outputs"]) == {"pred"}
    assert meta["focus_data_format"] == meta["network_data_format"]


def test_metadata_versions_are_the_installed_ones():
    meta = json.loads(META.read_text())
    assert meta["monai_version"] == version("monai")
    assert torch.__version__.split("+")[0] == meta["pytorch_version"]
    assert meta["numpy_version"] == np.__version__
    assert "optional_packages_version" not in meta  # MONAI would replace the required list with it
    for name, pinned in meta["required_packages_version"].items():
        assert version(name) == pinned, name


@pytest.mark.parametrize(
    "net_id,data_format,extra", [("network_def", "network_data_format", []), ("glance_def", "glance_data_format", [])]
)
@pytest.mark.parametrize("small", [False, True])
def test_verify_net_in_out_for_both_networks(net_id, data_format, extra, small):
    configs = INFERENCE if small else INFERENCE[:1]
    meta = json.loads(META.read_text())
    verify_net_in_out(
        net_id=net_id,
        meta_file=str(META),
        config_file=configs,
        device="cpu",
        **{"_meta_#network_data_format": meta[data_format]},
    )


def test_network_sizes_match_the_documented_ones():
    """inference.yaml alone builds the shipped (CPU-size) networks, and every shipped tensor fits them; paper_size.yaml
    builds the paper's."""
    count = lambda net: sum(t.numel() for t in net.parameters()) / 1e6  # noqa: E731
    p = ConfigParser()
    p.read_config(INFERENCE[:1])
    glance, focus = p.get_parsed_content("glance_def"), p.get_parsed_content("network_def")
    assert count(glance) == pytest.approx(0.9, abs=0.05)
    assert count(focus) == pytest.approx(4.7, abs=0.1)
    shipped = torch.load(ROOT / "models/model.pt", weights_only=True)
    glance.load_state_dict(shipped["glance"])  # strict: every tensor, every shape
    focus.load_state_dict(shipped["focus"])
    p.read_config([INFERENCE[0], str(ROOT / "configs/paper_size.yaml")])
    assert count(p.get_parsed_content("glance_def")) == pytest.approx(33.2, abs=0.1)
    assert count(p.get_parsed_content("network_def")) == pytest.approx(72.8, abs=0.1)


def _run_inference(input_path, output_dir, **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=INFERENCE,
        meta_file=str(META),
        logging_file=str(ROOT / "configs/logging.conf"),
        workflow_type="inference",
        bundle_root=str(ROOT),
        input_path=str(input_path),
        output_dir=str(output_dir),
        allow_untrained=True,
        device="$torch.device('cpu')",
        **{"ckpt_path": str(Path(output_dir) / "no_weights.pt"), **override},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def test_inference_config_writes_mask_on_original_grid_and_findings(shared_data, tmp_path):
    """Keep nothing (threshold 1): Glance runs on every window of the real nodule scan and the outputs are complete."""
    scan = shared_data / "pyradiomics_lung1/lung1_image.nrrd"
    _run_inference(scan, tmp_path, glance_threshold=1.0)
    mask_file = tmp_path / "lung1_image/lung1_image_lesion.nii.gz"
    findings = json.loads((tmp_path / "lung1_image/lung1_image_findings.json").read_text())
    original = LoadImage(image_only=True, reader="ITKReader")(str(scan))
    mask = nib.load(mask_file)
    assert mask.shape == tuple(original.shape)
    np.testing.assert_allclose(mask.affine, original.affine.numpy(), atol=1e-4)
    assert not np.any(np.asarray(mask.dataobj))
    assert findings["weights"]["status"] == "untrained"
    assert findings["region"] == "chest" and findings["region_source"].startswith("auto")
    assert findings["lesion_count"] == 0 and findings["lesions"] == []
    gf = findings["glance_focus"]
    assert gf["windows_kept"] == 0 and gf["windows_total"] > 10 and gf["keep_fraction"] == 0.0
    assert findings["timings"]["total_seconds"] > findings["timings"]["glance_seconds"] > 0
    assert sorted(p.name for p in (tmp_path / "lung1_image").iterdir()) == [
        "lung1_image_findings.json",
        "lung1_image_lesion.nii.gz",
    ]


def test_inversion_round_trip_of_a_real_label_map(shared_data):
    """A label resampled onto the preprocessed grid and inverted by the config's Invertd lands back on the original."""
    p = ConfigParser()
    p.read_config(INFERENCE)
    p["bundle_root"] = str(ROOT)
    pre = p.get_parsed_content("preprocessing")
    scan = shared_data / "pyradiomics_lung1/lung1_image.nrrd"
    data = pre({"image": str(scan)})
    label = LoadImage(image_only=True, ensure_channel_first=True, reader="ITKReader")(
        str(shared_data / "pyradiomics_lung1/lung1_label.nrrd")
    )
    on_grid = ResampleToMatch(mode="nearest")(label, data["image"])
    assert on_grid.sum() > 0
    data["pred"] = AsDiscrete(to_onehot=2)(on_grid)
    data["pred"].applied_operations = data["image"].applied_operations
    back = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(data)["pred"]
    assert tuple(back.shape[1:]) == tuple(label.shape[1:])
    np.testing.assert_allclose(back.affine.numpy(), label.affine.numpy(), atol=1e-4)
    restored = back[1].numpy() >= 0.5
    truth = label[0].numpy() > 0
    dice = 2 * np.logical_and(restored, truth).sum() / (restored.sum() + truth.sum())
    assert dice > 0.85, dice
    centre = lambda m: np.argwhere(m).mean(0) * np.array([0.57, 0.57, 5.0])  # noqa: E731
    assert np.linalg.norm(centre(restored) - centre(truth)) < 1.0


def test_full_abdominal_series_runs_with_bounded_memory(shared_data, tmp_path):
    """The full 134-slice DICOM series through the whole inference config; Glance sees every window."""
    series = shared_data / "tcia_pancreatic_ct_cbct_seg_full_series/dicom"
    before = psutil.Process().memory_info().rss
    _run_inference(series, tmp_path, glance_threshold=1.0)
    findings = json.loads((tmp_path / "dicom/dicom_findings.json").read_text())
    assert findings["glance_focus"]["windows_total"] >= 50
    assert nib.load(tmp_path / "dicom/dicom_lesion.nii.gz").shape == (512, 512, 134)
    peak_gb = psutil.Process().memory_info().rss / 2**30
    assert peak_gb < 8, f"resident memory {peak_gb:.1f} GB (was {before / 2**30:.1f} GB before)"


def test_evaluate_config_on_known_predictions(shared_data, tmp_path):
    """evaluate.yaml scores predictions equal to the labels as perfect and an empty one as a miss."""
    datalist = json.loads((ROOT / "configs/datalist.json").read_text())
    labelled = [it for split in ("training", "validation") for it in datalist[split] if it.get("label")][:2]
    assert len(labelled) == 2
    sub = {"test": labelled}
    (tmp_path / "datalist.json").write_text(json.dumps(sub))
    preds = tmp_path / "preds"
    for i, item in enumerate(labelled):
        label = LoadImage(image_only=True, reader="ITKReader")(str(shared_data / item["label"]))
        mask = (label.numpy() > 0).astype(np.uint8) if i == 0 else np.zeros(label.shape, np.uint8)
        (preds / item["id"]).mkdir(parents=True)
        nib.save(nib.Nifti1Image(mask, label.affine.numpy()), preds / item["id"] / f"{item['id']}_lesion.nii.gz")
        findings = {"case_id": item["id"], "glance_focus": {"keep_fraction": 0.25}, "timings": {"total_seconds": 2.0}}
        (preds / item["id"] / f"{item['id']}_findings.json").write_text(json.dumps(findings))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(ROOT / "configs/evaluate.yaml"),
            "--bundle_root",
            str(ROOT),
            "--datalist",
            str(tmp_path / "datalist.json"),
            "--dataset_dir",
            str(shared_data),
            "--output_dir",
            str(preds),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((preds / "evaluation.json").read_text())
    per_case = {c["id"]: c for c in report["per_case"]}
    assert per_case[labelled[0]["id"]]["dsc"] == pytest.approx(1.0)
    assert per_case[labelled[0]["id"]]["nsd"] == pytest.approx(1.0)
    assert per_case[labelled[1]["id"]]["dsc"] == 0.0
    assert report["overall"]["dsc"] == pytest.approx(0.5)
    assert report["overall"]["keep_fraction"] == pytest.approx(0.25)
    assert "DSC" in out.stdout + out.stderr
    shutil.rmtree(preds)


@pytest.mark.parametrize(
    "scan,item,region,source,window",
    [
        ("pyradiomics_lung1/lung1_image.nrrd", {}, "chest", "auto", (-900, 650)),
        ("mirp_sts_sarcoma_ct/STS_003/nifti/image/image.nii.gz", {}, "abdomen", "auto", (-175, 250)),
        ("mirp_sts_sarcoma_ct/STS_003/nifti/image/image.nii.gz", {"region": "chest"}, "chest", "datalist", (-900, 650)),
        ("mirp_sts_sarcoma_ct/STS_003/nifti/image/image.nii.gz", {"body_part": "CHEST"}, "chest", "dicom", (-900, 650)),
    ],
)
def test_hu_window_follows_the_body_region(shared_data, scan, item, region, source, window):
    """The region decides the window: voxels at the window's bounds map to exactly 0 and 1 after preprocessing."""
    p = ConfigParser()
    p.read_config(INFERENCE)
    p["bundle_root"] = str(ROOT)
    out = p.get_parsed_content("preprocessing")({"image": str(shared_data / scan), **item})
    assert out["region"] == region and out["region_source"].startswith(source)
    raw = LoadImage(image_only=True, reader="ITKReader")(str(shared_data / scan))
    lo, hi = window
    img = out["image"]
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    # the fraction of saturated voxels equals the fraction of body voxels at or beyond the window's upper bound
    inside = img[img > 0]
    assert float((inside >= 1.0).float().mean()) == pytest.approx(float((raw[raw > lo] >= hi).float().mean()), abs=0.03)
