"""The Glance-Focus inferer against MONAI's sliding_window_inference, and its window accounting, on a real scan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bundle.inferer import GlanceFocusInferer, stats_of
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from tests.conftest import ROOT

ROI = (96, 96, 64)


@pytest.fixture(scope="module")
def parser() -> ConfigParser:
    p = ConfigParser()
    p.read_config([str(ROOT / "configs/inference.yaml"), str(ROOT / "configs/small.yaml")])
    p["bundle_root"] = str(ROOT)
    p["device"] = "$torch.device('cpu')"
    return p


@pytest.fixture(scope="module")
def networks(parser):
    """The small configuration's real networks, seeded (no weights are needed to test the arithmetic)."""
    torch.manual_seed(0)
    return parser.get_parsed_content("glance_def").eval(), parser.get_parsed_content("network_def").eval()


@pytest.fixture(scope="module")
def volume(parser, shared_data) -> torch.Tensor:
    """A real abdominal CT, preprocessed by the config's chain, cut to a few windows' size to keep the test short."""
    pre = parser.get_parsed_content("preprocessing")
    img = pre({"image": str(shared_data / "totalsegmentator_example/example_ct.nii.gz")})["image"]
    return img.as_tensor()[None, :, :150, :110, :64].contiguous()


class CallCounter:
    """Counts the windows a network is run on (a forward hook, the network itself is untouched)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.windows = 0
        self.calls = 0
        self.handle = net.register_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        self.calls += 1
        self.windows += args[0].shape[0]


def expected_windows(shape, roi=ROI, overlap=0.25) -> int:
    """Window count from first principles: ceil((size - roi) / step) + 1 positions per axis."""
    n = 1
    for s, r in zip(shape, roi):
        s = max(s, r)
        step = int(r * (1 - overlap))
        n *= 1 if s == r else math.ceil((s - r) / step) + 1
    return n


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_dense_mode_equals_monai_sliding_window_inference(networks, volume, mode):
    glance, focus = networks
    inferer = GlanceFocusInferer(glance, roi_size=ROI, overlap=0.25, threshold=None, focus_batch_size=3, mode=mode)
    ours = inferer(volume, focus)
    with torch.no_grad():
        ref = sliding_window_inference(
            volume, ROI, 2, lambda x: torch.softmax(focus(x), dim=1), overlap=0.25, mode=mode, sigma_scale=0.125
        )
    assert ours.shape == ref.shape == (1, 2, *volume.shape[2:])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert stats_of(ours)[0].keep_fraction == 1.0


def test_window_accounting_and_focus_only_on_kept_windows(networks, volume):
    glance, focus = networks
    inferer = GlanceFocusInferer(glance, roi_size=ROI, overlap=0.25, threshold=0.5, glance_batch_size=3)
    tiling = inferer.tile(volume.shape[2:])
    n = expected_windows(volume.shape[2:])
    assert len(tiling.slices) == n > 2
    scores = inferer.glance_scores(volume, tiling)
    # a threshold between the scores keeps exactly the windows above it
    inferer.threshold = float(np.sort(scores.numpy())[n // 2])
    keep = inferer.keep_mask(scores)
    g_count, f_count = CallCounter(glance), CallCounter(focus)
    try:
        prob = inferer(volume, focus)
    finally:
        g_count.handle.remove()
        f_count.handle.remove()
    (stats,) = stats_of(prob)
    assert stats.windows_total == n
    assert stats.windows_kept == int(keep.sum()) == n - n // 2
    assert stats.keep_fraction == pytest.approx(stats.windows_kept / n)
    assert g_count.windows == n and g_count.calls == math.ceil(n / 3)
    assert f_count.windows == stats.windows_kept and f_count.calls == math.ceil(stats.windows_kept / 2)
    # voxels outside every kept window are background; inside, the probabilities sum to one
    covered = torch.zeros(volume.shape[2:], dtype=torch.bool)
    for s, k in zip(tiling.slices, keep.tolist()):
        if k:
            covered[s] = True
    assert torch.all(prob[0, 1][~covered] == 0) and torch.all(prob[0, 0][~covered] == 1)
    torch.testing.assert_close(prob[0].sum(0)[covered], torch.ones(int(covered.sum())))


def test_threshold_that_keeps_nothing_gives_an_empty_mask(networks, volume):
    glance, focus = networks
    inferer = GlanceFocusInferer(glance, roi_size=ROI, threshold=1.0)
    f_count = CallCounter(focus)
    try:
        prob = inferer(volume, focus)
    finally:
        f_count.handle.remove()
    assert f_count.windows == 0
    (stats,) = stats_of(prob)
    assert stats.windows_kept == 0 and stats.keep_fraction == 0.0
    assert stats.windows_total == expected_windows(volume.shape[2:])
    assert not torch.any(prob[0, 1] >= 0.5)


def test_scan_smaller_than_a_window_is_padded_and_cropped_back(networks, volume):
    glance, focus = networks
    small = volume[..., :50, :70, :30]
    inferer = GlanceFocusInferer(glance, roi_size=ROI, threshold=None)
    prob = inferer(small, focus)
    assert prob.shape == (1, 2, 50, 70, 30)
    assert stats_of(prob)[0].windows_total == 1
    with torch.no_grad():
        ref = sliding_window_inference(small, ROI, 1, lambda x: torch.softmax(focus(x), dim=1), overlap=0.25)
    torch.testing.assert_close(prob, ref, atol=1e-5, rtol=1e-5)


def test_invalid_settings_are_rejected(networks):
    glance, _ = networks
    with pytest.raises(ValueError, match="overlap"):
        GlanceFocusInferer(glance, overlap=1.0)
    with pytest.raises(ValueError, match="threshold"):
        GlanceFocusInferer(glance, threshold=1.5)


def test_each_scan_of_a_batch_gets_its_own_statistics(networks, volume):
    """Statistics travel with the prediction, one per scan, and MONAI's decollation hands each scan its own: two
    different scans in one batch keep their own Glance scores and keep decisions (the inferer holds no state)."""
    from monai.data import decollate_batch

    glance, focus = networks
    inferer = GlanceFocusInferer(glance, roi_size=ROI, overlap=0.25, threshold=0.5)
    other = torch.flip(volume, dims=(2, 3))
    tiling = inferer.tile(volume.shape[2:])
    expected = [inferer.glance_scores(v, tiling) for v in (volume, other)]
    assert not torch.equal(*expected)
    threshold = float(torch.cat(expected).median())
    inferer.threshold = threshold
    batch = MetaTensor(torch.cat([volume, other]))
    prob = inferer(batch, focus)
    for stats, scores in zip(stats_of(prob), expected):
        torch.testing.assert_close(stats.scores, scores)
        assert torch.equal(stats.keep, scores >= threshold) and stats.threshold == threshold
        assert stats.windows_kept == int((scores >= threshold).sum()) and stats.focus_seconds > 0
    assert [s.windows_kept for s in stats_of(prob)] != [0, 0]
    for item, scores in zip(decollate_batch(prob), expected):
        (stats,) = stats_of(item)
        torch.testing.assert_close(stats.scores, scores)
    assert not hasattr(inferer, "last_stats")
