"""The inference-lever measurements (bundle/levers.py): each lever runs the same network on the same windows."""

from __future__ import annotations

import pytest
import torch
from bundle.levers import _lever, measure_lever
from bundle.networks import GlanceNet


@pytest.mark.parametrize("lever", ["no_grad", "batch_1", "channels_last_3d", "one_thread"])
def test_exact_levers_change_speed_not_results(lever):
    """Levers that only change how the same arithmetic is scheduled keep the outputs (float tolerance), and the
    network is left in its usual memory format afterwards."""
    torch.manual_seed(0)
    net = GlanceNet(layers=(1, 1, 1, 1), block_inplanes=(8, 8, 16, 16)).eval()
    windows = torch.randn(4, 1, 32, 32, 16)
    seconds, base = measure_lever(net, windows, 2, torch.inference_mode, repeats=1)
    spec = _lever(lever, net, 2, torch.device("cpu"))
    lever_seconds, out = measure_lever(spec["net"], windows, spec["batch_size"], spec["context"], spec["prepare"], 1)
    net.to(memory_format=torch.contiguous_format)
    assert seconds > 0 and lever_seconds > 0 and out.shape == base.shape == (4, 2)
    torch.testing.assert_close(out, base, atol=1e-4, rtol=1e-4)
    assert torch.get_num_threads() >= 1 and not torch.is_inference_mode_enabled()


def test_bfloat16_lever_is_measured_against_the_float32_baseline():
    torch.manual_seed(0)
    net = GlanceNet(layers=(1, 1, 1, 1), block_inplanes=(8, 8, 16, 16)).eval()
    windows = torch.randn(2, 1, 32, 32, 16)
    _, base = measure_lever(net, windows, 2, torch.inference_mode, repeats=1)
    spec = _lever("bfloat16_autocast", net, 2, torch.device("cpu"))
    _, out = measure_lever(spec["net"], windows, 2, spec["context"], repeats=1)
    assert out.dtype == torch.float32 and not torch.equal(out, base)  # reduced precision: results move a little
    torch.testing.assert_close(out, base, atol=0.5, rtol=0.1)
    with pytest.raises(ValueError, match="unknown lever"):
        _lever("fp8", net, 2, torch.device("cpu"))
