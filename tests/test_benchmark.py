"""The benchmark (bundle/benchmark.py): its keep-fraction selection, and one real run of both modes on a small scan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bundle.benchmark import main, top_fraction_mask
from bundle.inferer import GlanceFocusInferer
from monai.bundle import ConfigParser

from tests.conftest import ROOT

CONFIGS = ["configs/inference.yaml", "configs/small.yaml"]


@pytest.mark.parametrize("k", [0.0, 0.1, 0.167, 0.25, 0.5, 0.9, 1.0])
def test_top_fraction_keeps_exactly_round_k_n_highest_scores(k):
    scores = torch.rand(137, generator=torch.Generator().manual_seed(0))
    keep = top_fraction_mask(scores, k)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    assert int(keep.sum()) == round(k * 137)
    if 0 < k < 1:
        assert scores[keep].min() > scores[~keep].max()


def test_top_fraction_with_ties_keeps_exactly_round_k_n_lowest_index_first():
    scores = torch.tensor([0.2, 0.9, 0.5, 0.5, 0.5, 0.5, 0.1, 0.9])
    keep = top_fraction_mask(scores, 0.5)  # the two 0.9 and the first two of four tied 0.5
    assert keep.tolist() == [False, True, True, True, False, False, False, True]
    assert top_fraction_mask(torch.full((6,), 0.7), 0.5).tolist() == [True] * 3 + [False] * 3


def test_top_fraction_edges():
    scores = torch.tensor([1.0, 1.0, 0.0])
    assert not top_fraction_mask(scores, 0.0).any()
    assert top_fraction_mask(scores, 1.0).all()
    assert top_fraction_mask(torch.zeros(0), 0.5).numel() == 0
    with pytest.raises(ValueError):
        top_fraction_mask(scores, 1.5)


def test_benchmark_on_a_small_real_scan(shared_data, tmp_path, monkeypatch, capsys):
    """A thigh CT crop that preprocesses to 4 windows: dense runs Focus on 4, Glance-Focus on the top 1."""
    monkeypatch.chdir(ROOT)
    scan = shared_data / "mirp_sts_sarcoma_ct" / "STS_003" / "nifti" / "image" / "image.nii.gz"
    output = tmp_path / "bench.json"
    argv = ["--input", str(scan), "--allow_untrained", "--keep_fraction", "0.25", "0.5", "--output", str(output)]
    argv += ["--glance_modes", "windows", "--end_to_end", "--label", str(scan.parents[1] / "mask" / "mask.nii.gz")]
    results = main(argv + [arg for config in CONFIGS for arg in ("--config_file", config)])

    parser = ConfigParser()
    parser.read_config(CONFIGS)
    tiler = GlanceFocusInferer(torch.nn.Identity(), roi_size=parser["roi_size"], overlap=parser["overlap"])
    n_windows = len(tiler.tile(results["scan"]["preprocessed_shape"][1:]).slices)
    assert n_windows == 4
    dense, gf = results["dense"], results["glance_focus"]
    assert dense["windows_total"] == gf["windows_total"] == n_windows
    assert dense["windows_kept"] == n_windows and dense["keep_fraction"] == 1.0
    assert gf["windows_kept"] == round(0.25 * n_windows) and gf["keep_fraction"] == pytest.approx(0.25)
    assert dense["glance_seconds"] < gf["glance_seconds"]  # dense mode never runs Glance
    assert results["speedup"] > 0 and results["compute_floor"]["fraction_of_dense"] > 0.25
    assert results["agreement"]["voxels"] > 0 and results["agreement"]["max_abs_diff"] < 1e-4
    assert json.loads(output.read_text())["glance_focus"]["windows_kept"] == gf["windows_kept"]
    assert "speed-up dense / Glance-Focus total" in capsys.readouterr().out
    # the keep-fraction sweep, the parts outside the networks and Glance's own cost, measured in the same run
    assert [r["keep_fraction"] for r in results["sweep"]] == [0.25, 0.5]
    assert results["runs"]["glance_focus_k0.5"][0]["windows_kept"] == 2
    # each run's postprocessing and writing timed on its own output; loading and preprocessing are shared
    by_run = results["outside_networks_by_run"]
    assert set(by_run) == set(results["runs"]) and results["outside_networks"] == by_run["dense"]
    assert {outside["preprocessing_seconds"] for outside in by_run.values()} == {results["preprocessing_seconds"]}
    assert results["first_preprocessing_seconds"] > 0
    assert all(outside["postprocessing_seconds"] > 0 and outside["writing_seconds"] > 0 for outside in by_run.values())
    for row in results["sweep"]:
        assert row["outside_seconds"] == pytest.approx(sum(by_run[row["run"]].values()))
        end_to_end = (dense["total_seconds"] + sum(by_run["dense"].values())) / (
            row["total_seconds"] + row["outside_seconds"]
        )
        assert row["speedup_end_to_end"] == pytest.approx(end_to_end)
    cost = results["glance_cost"]["windows"]
    assert cost["fraction_of_dense_focus"] == pytest.approx(cost["glance_seconds"] / dense["focus_seconds"])
    # --label: the reported lesions of both modes, after the whole postprocessing, against the reference mask
    acc = results["accuracy"]
    assert 0 <= acc["glance_focus_dsc"] <= 1 and 0 <= acc["dense_dsc"] <= 1
    assert acc["dsc_loss_points"] == pytest.approx(100 * (acc["dense_dsc"] - acc["glance_focus_dsc"]))


def test_axial_range_screens_only_that_slab():
    """--axial_range_mm crops the real sample scan to the slab right after Orientationd: fewer slices, all in range."""
    from bundle.benchmark import with_axial_crop
    from bundle.transforms import CropAxialRanged
    from monai.bundle import ConfigParser
    from monai.transforms import Orientationd

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs/inference.yaml"), str(ROOT / "configs/small.yaml")])
    preprocessing = with_axial_crop(parser.get_parsed_content("preprocessing"))
    names = [type(t) for t in preprocessing.transforms]
    assert names[names.index(Orientationd) + 1] is CropAxialRanged
    item = {"image": str(ROOT / "sample_data/lung1/lung1_image.nrrd")}
    whole = parser.get_parsed_content("preprocessing")(dict(item))["image"]
    slab = preprocessing({**item, "axial_range_mm": [-640.0, -580.0]})["image"]
    z = (slab.affine[2, 3] + slab.affine[2, 2] * np.arange(slab.shape[-1])).numpy()
    content = z[slab[0].abs().sum(dim=(0, 1)).numpy() > 0]  # SpatialPadd adds empty slices up to one window
    assert 0 < len(content) < whole.shape[-1]
    assert content.min() >= -640.0 - 3.0 and content.max() <= -580.0 + 3.0  # within one 3 mm voxel
