"""The shared Glance (bundle/glance.py): one trunk pass over the volume, each window pooled from it, against running
the same network window by window (bundle/inferer.py's per-window Glance)."""

from __future__ import annotations

import pytest
import torch
from bundle.glance import feature_stride, receptive_radius, shared_window_logits, trunk_features, window_cells
from bundle.inferer import GlanceFocusInferer
from bundle.networks import GlanceNet

from tests.conftest import ROOT

ROI = (32, 32, 16)


@pytest.fixture(scope="module")
def glance() -> GlanceNet:
    torch.manual_seed(0)
    net = GlanceNet(layers=(1, 1, 1, 1), block_inplanes=(8, 8, 16, 16), norm="batch").eval()
    for m in net.modules():  # non-trivial running statistics, as a trained network has
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net


def test_one_window_volume_gives_the_per_window_score(glance):
    """A volume that is exactly one window: the shared pass and the per-window pass are the same computation."""
    image = torch.randn(1, 1, *ROI)
    per_window = GlanceFocusInferer(glance, roi_size=ROI, glance_mode="windows")
    shared = GlanceFocusInferer(glance, roi_size=ROI, glance_mode="shared")
    tiling = per_window.tile(ROI)
    assert len(tiling.slices) == 1
    torch.testing.assert_close(shared.glance_scores(image, tiling), per_window.glance_scores(image, tiling))


def test_each_window_pools_the_cells_whose_centres_it_holds(glance):
    stride = feature_stride(glance)
    assert stride == (16, 16, 16)  # conv1 stride 1, max pool 2, layers 2-4 stride 2
    # the stride is read from the modules: it is the ratio of input to feature map, with a strided stem too
    strided = GlanceNet(layers=(1, 1, 1, 1), block_inplanes=(8, 8, 16, 16), conv1_t_stride=2).eval()
    with torch.no_grad():
        for net, expected in ((glance, 16), (strided, 32)):
            assert feature_stride(net) == (expected,) * 3
            assert trunk_features(net, torch.zeros(1, 1, 64, 64, 128), feature_stride(net)).shape[2:] == tuple(
                n // expected for n in (64, 64, 128)
            )
    cells = window_cells([(slice(0, 96), slice(72, 168), slice(48, 112))], stride, (11, 11, 8))
    assert cells == [(slice(0, 6), slice(4, 10), slice(3, 7))]  # cell k's centre is 16 k + 8
    # a window narrower than a cell still gets the cell it lies in, and none past the map's edge
    assert window_cells([(slice(170, 176), slice(0, 8), slice(120, 128))], stride, (11, 11, 8)) == [
        (slice(10, 11), slice(0, 1), slice(7, 8))
    ]


def test_slabs_with_the_receptive_radius_give_the_whole_volume_feature_map(glance):
    """Memory-bounded slabs, each read with the trunk's receptive radius of context, reproduce the whole-volume
    feature map: bounded memory changes nothing. With less context the slabs' edges differ (the halo matters)."""
    radius = receptive_radius(glance)
    assert radius == 3 + 1 + 2 + 2 + 2 + 4 + 4 + 8 + 8 + 16  # conv1 7, max pool, then two 3x3x3 convs per stage
    image = torch.randn(1, 1, 40, 40, 192)
    stride = feature_stride(glance)
    with torch.no_grad():
        whole = trunk_features(glance, image, stride)
        slabs = trunk_features(glance, image, stride, slab=48)
        short = trunk_features(glance, image, stride, slab=48, halo=16)
    assert slabs.shape == short.shape == whole.shape == (1, 16, 3, 3, 12)
    torch.testing.assert_close(slabs, whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(short, whole, atol=1e-3)


def test_shared_scores_of_a_real_scan_in_slabs(glance):
    """A real CT, many windows: one select probability per window, the same whether the trunk ran over the whole
    volume or in slabs (the inferer's glance_slab)."""
    from monai.transforms import LoadImage, Spacing

    image = LoadImage(image_only=True, ensure_channel_first=True, reader="ITKReader")(
        str(ROOT / "sample_data" / "lung1" / "lung1_image.nrrd")
    )
    image = Spacing(pixdim=(2.0, 2.0, 1.0))(image)
    image = ((image.clamp(-1000, 400) + 300) / 700).as_tensor()[None]
    whole = GlanceFocusInferer(glance, roi_size=ROI, glance_mode="shared")
    slabs = GlanceFocusInferer(glance, roi_size=ROI, glance_mode="shared", glance_slab=96)
    padded, tiling = whole.pad(image)
    assert padded.shape[-1] > 2 * 96 and len(tiling.slices) > 20
    a, b = whole.glance_scores(padded, tiling), slabs.glance_scores(padded, tiling)
    assert a.shape == (len(tiling.slices),) and ((a >= 0) & (a <= 1)).all()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_shared_mode_refuses_extent_dependent_normalisation():
    """Group norm normalises over whatever it is given: over the whole volume it is not the window's computation."""
    net = GlanceNet(layers=(1, 1, 1, 1), block_inplanes=(8, 8, 16, 16), norm=("group", {"num_groups": 4}))
    with pytest.raises(ValueError, match="normalisation"):
        GlanceFocusInferer(net, roi_size=ROI, glance_mode="shared")
    with pytest.raises(ValueError, match="glance_mode"):
        GlanceFocusInferer(net, roi_size=ROI, glance_mode="pyramid")
    with torch.no_grad():
        logits = shared_window_logits(
            GlanceNet(layers=(1, 1, 1, 1), block_inplanes=(8, 8, 16, 16)).eval(),
            torch.randn(1, 1, *ROI),
            [(slice(0, 32), slice(0, 32), slice(0, 16))],
        )
    assert logits.shape == (1, 2)
