"""Weight-space interpolation (bundle.interpolate): the arithmetic, the shipped weights and the inputs left alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from bundle.checkpoint import load_weights
from bundle.interpolate import interpolate_state, main
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
BASE, TUNED = ROOT / "models/model.pt", ROOT / "models/stages/run19.pt"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_interpolate_state_is_the_line_between_the_two_and_refuses_other_networks():
    base = {"w": torch.tensor([0.0, 2.0]), "steps": torch.tensor(3)}
    tuned = {"w": torch.tensor([4.0, -2.0]), "steps": torch.tensor(10)}
    assert torch.equal(interpolate_state(base, tuned, 0.0)["w"], base["w"])
    assert torch.equal(interpolate_state(base, tuned, 1.0)["w"], tuned["w"])
    half = interpolate_state(base, tuned, 0.25)
    assert torch.allclose(half["w"], torch.tensor([1.0, 1.0]))
    assert half["steps"].item() == 10  # integer buffers are not averaged
    with pytest.raises(ValueError, match="different parameters"):
        interpolate_state(base, {"w": tuned["w"]}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state(base, {**tuned, "w": torch.zeros(3)}, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate_state(base, tuned, 1.5)


def test_interpolating_the_shipped_focus_towards_run19(tmp_path):
    """Focus moves a quarter of the way, Glance is run 19's, the result loads into the configured networks, the
    record names both inputs, and neither input changes."""
    before = sha(BASE), sha(TUNED)
    out = tmp_path / "quarter.pt"
    assert (
        main(
            ["--base", str(BASE), "--tuned", str(TUNED), "--alpha", "0.25", "--networks", "focus", "--output", str(out)]
        )
        == 0
    )
    assert (sha(BASE), sha(TUNED)) == before
    base, tuned = (torch.load(p, weights_only=True) for p in (BASE, TUNED))
    mixed = torch.load(out, weights_only=True)
    for key, t in tuned["glance"].items():
        assert torch.equal(mixed["glance"][key], t), key
    moved = 0
    for key, t in tuned["focus"].items():
        expected = 0.75 * base["focus"][key] + 0.25 * t if t.is_floating_point() else t  # Swin's position index
        assert torch.allclose(mixed["focus"][key], expected, atol=1e-6), key
        moved += not torch.equal(base["focus"][key], t)
    assert moved > 100  # run 19's Focus differs from 0.2.0's in most tensors, so this checked real movement

    p = ConfigParser()
    p.read_config(str(ROOT / "configs/inference.yaml"))
    status = load_weights(out, p.get_parsed_content("glance_def"), p.get_parsed_content("network_def"))
    record = json.loads(out.with_name("quarter.pt.json").read_text())
    assert record["output"]["sha256"] == status["sha256"] == sha(out)
    assert (record["base"]["sha256"], record["tuned"]["sha256"]) == before
    assert record["alpha"] == 0.25 and record["networks"] == ["focus"]
    assert record["command"].startswith("python -m bundle.interpolate --base ") and "--alpha 0.25" in record["command"]


def test_bad_inputs_are_refused_and_nothing_is_written(tmp_path, capsys):
    before = sha(BASE)
    assert main(["--base", str(BASE), "--tuned", str(TUNED), "--alpha", "0.5", "--output", str(BASE)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert sha(BASE) == before
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(BASE.read_bytes()[:1000])
    out = tmp_path / "out.pt"
    assert main(["--base", str(corrupt), "--tuned", str(TUNED), "--alpha", "0.5", "--output", str(out)]) == 2
    assert "cannot read weights" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [corrupt]
