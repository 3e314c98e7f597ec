"""The Model Zoo entry (zoo/layout.py) and what a Zoo user does with it: ``monai.bundle.load`` and TorchScript export
by tracing (MONAI's ``ckpt_export``), checked against the shipped weights and eager outputs on a real window."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, load

from tests.conftest import ROOT

NAME = "pancancer_ct_lesion_screening"
SHIPPED = torch.load(ROOT / "models/model.pt", weights_only=True)
SAMPLE = ROOT / "sample_data/lung1/lung1_image.nrrd"


@pytest.fixture(scope="module")
def entry(tmp_path_factory) -> Path:
    """The entry laid out (not committed) into the skeleton of a model-zoo work tree: the files layout.py reads."""
    zoo = tmp_path_factory.mktemp("model-zoo")
    (zoo / "ci/unit_tests").mkdir(parents=True)
    (zoo / "ci/verify_bundle.py").write_text("")
    (zoo / "ci/bundle_custom_data.py").write_text('exclude_verify_torchscript_list = [\n    "vista3d",\n]\n')
    subprocess.run([sys.executable, str(ROOT / "zoo/layout.py"), "--zoo", str(zoo), "--no_commit"], check=True)
    return zoo / "models" / NAME


def test_layout_follows_the_zoo_size_rules_and_formats(entry):
    large = yaml.safe_load((entry / "large_files.yml").read_text())["large_files"]
    over_1mb = sorted(str(p.relative_to(entry)) for p in entry.rglob("*") if p.stat().st_size > 1024 * 1024)
    assert sorted(f["path"] for f in large) == over_1mb == ["models/model.pt", "sample_data/lung1/lung1_image.nrrd"]
    for f in large:
        assert f["hash_type"] == "sha256"
        assert f["hash_val"] == hashlib.sha256((ROOT / f["path"]).read_bytes()).hexdigest()
        assert f["url"].startswith("https://") and f["url"].endswith(Path(f["path"]).name)
    # metadata: the root file's content in the Zoo's JSON format (the pre-commit hook would rewrite anything else)
    text = (entry / "configs/metadata.json").read_text()
    assert json.loads(text) == json.loads((ROOT / "metadata.json").read_text())
    assert text == json.dumps(json.loads(text), indent=4) + "\n"
    assert not (entry / "configs/metadata.json").is_symlink()
    # the JSON inference config monai.bundle.load reads is inference.yaml, value for value
    assert json.loads((entry / "configs/inference.json").read_text()) == yaml.safe_load(
        (ROOT / "configs/inference.yaml").read_text()
    )
    assert not (entry / "app").exists() and not (entry / "tests").exists()
    assert (entry.parents[1] / f"ci/unit_tests/test_{NAME}.py").read_text() == (
        ROOT / f"zoo/test_{NAME}.py"
    ).read_text()
    custom = (entry.parents[1] / "ci/bundle_custom_data.py").read_text()
    assert custom.count(f'"{NAME}"') == 1 and "vista3d" in custom


def test_monai_bundle_load_returns_focus_with_every_shipped_tensor(entry):
    focus = load(NAME, bundle_dir=entry.parent, workflow_type="inference", key_in_ckpt="focus", device="cpu")
    state = focus.state_dict()
    assert state.keys() == SHIPPED["focus"].keys()
    for key, value in SHIPPED["focus"].items():
        assert torch.equal(state[key], value), key
    # Glance, as the model card says: build glance_def from the same config, then load its part of the file
    parser = ConfigParser()
    parser.read_config(entry / "configs/inference.json")
    glance = load(
        NAME, bundle_dir=entry.parent, model=parser.get_parsed_content("glance_def"), key_in_ckpt="glance", device="cpu"
    )
    for key, value in SHIPPED["glance"].items():
        assert torch.equal(glance.state_dict()[key], value), key


def test_zoo_entry_screens_from_another_folder_without_the_package_installed(entry, tmp_path):
    """A Zoo user's first command, run from another folder with --bundle_root, in an interpreter where ``bundle`` is
    importable only from the bundle folder itself: ``-S`` skips the .pth files (this project's editable install),
    PYTHONPATH keeps the installed libraries. MONAI puts the bundle root on sys.path when ``run`` starts."""
    site_packages = sysconfig.get_paths()["purelib"]
    command = [sys.executable, "-S", "-c", "import bundle"]
    env = {**os.environ, "PYTHONPATH": site_packages}
    assert subprocess.run(command, cwd=tmp_path, env=env, capture_output=True).returncode != 0
    command = [sys.executable, "-S", "-m", "monai.bundle", "run", "--bundle_root", str(entry)]
    command += ["--config_file", str(entry / "configs/inference.yaml"), "--output_dir", str(tmp_path / "out")]
    out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    findings = json.loads((tmp_path / "out/lung1_image/lung1_image_findings.json").read_text())
    assert findings["weights"]["status"] == "trained"
    assert findings["weights"]["sha256"] == hashlib.sha256((ROOT / "models/model.pt").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def real_window() -> torch.Tensor:
    """A 96 x 96 x 64 window from the middle of the preprocessed sample scan (the nodule's lung)."""
    parser = ConfigParser()
    parser.read_config(ROOT / "configs/inference.yaml")
    parser["bundle_root"] = str(ROOT)
    image = parser.get_parsed_content("preprocessing")({"image": str(SAMPLE)})["image"]
    starts = [(s - w) // 2 for s, w in zip(image.shape[1:], (96, 96, 64))]
    window = image[:, starts[0] : starts[0] + 96, starts[1] : starts[1] + 96, starts[2] : starts[2] + 64]
    return window.as_tensor()[None].float()


@pytest.mark.parametrize("net_id, part", [("network_def", "focus"), ("glance_def", "glance")])
def test_traced_export_matches_eager_output_on_a_real_window(tmp_path, real_window, net_id, part):
    exported = tmp_path / f"{part}.ts"
    command = [sys.executable, "-m", "monai.bundle", "ckpt_export", net_id, "--filepath", str(exported)]
    command += ["--ckpt_file", str(ROOT / "models/model.pt"), "--key_in_ckpt", part, "--use_trace", "True"]
    command += ["--input_shape", "[1, 1, 96, 96, 64]", "--config_file", str(ROOT / "configs/inference.yaml")]
    command += ["--meta_file", str(ROOT / "configs/metadata.json"), "--bundle_root", str(ROOT)]
    subprocess.run(command, check=True, cwd=tmp_path)
    parser = ConfigParser()
    parser.read_config(ROOT / "configs/inference.yaml")
    eager = parser.get_parsed_content(net_id)
    eager.load_state_dict(SHIPPED[part])
    traced = torch.jit.load(str(exported))
    with torch.no_grad():
        expected, got = eager.eval()(real_window), traced(real_window)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
