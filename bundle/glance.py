"""A Glance that shares its computation across windows: one fully convolutional pass, each window pooled from it.

Per-window Glance (the paper's) runs its ResNet on every sliding window; with overlap 0.25 each voxel is seen about
2.6 times and the stem runs at full resolution every time. Here the same ``GlanceNet`` (same weights) runs its
convolutional trunk (``conv1`` ... ``layer4``) once over the whole preprocessed volume, in axial slabs so that memory
stays bounded, and each window's logits are its own pooling (the network's global max or average pool) of the
feature cells under the window, followed by the network's ``fc``. It yields one select probability per window, so
the threshold, calibration and the GRL objective apply unchanged; training runs the network on window crops, which
is this computation with the window as the whole volume.

Where the two differ, and why: a window's border cells are computed from the real neighbourhood instead of the
zero padding a crop has, and the windows' edges fall on the trunk's stride grid (16 voxels) only where the window
starts at a multiple of it; a window is given the cells whose centres lie inside it. For a volume that is exactly
one window, per-window and shared scores are the same computation (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet
from monai.utils import ensure_tuple_rep

__all__ = ["feature_stride", "receptive_radius", "trunk_features", "window_cells", "shared_window_logits"]


def _trunk(net: ResNet, x: torch.Tensor) -> torch.Tensor:
    x = net.act(net.bn1(net.conv1(x)))
    if not net.no_max_pool:
        x = net.maxpool(x)
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _path(net: ResNet) -> list[torch.nn.Module]:
    """The trunk's convolutions and pooling with a kernel above 1, in the order they run (1x1 shortcuts and a
    skipped max pool change neither the stride nor the reach)."""
    path = []
    for module in net.modules():
        if not isinstance(module, (torch.nn.Conv3d, torch.nn.MaxPool3d)) or module is net.avgpool:
            continue
        if module is net.maxpool and net.no_max_pool:
            continue
        if max(ensure_tuple_rep(module.kernel_size, 3)) > 1:
            path.append(module)
    return path


def feature_stride(net: ResNet, spatial_dims: int = 3) -> tuple[int, ...]:
    """The trunk's total stride per axis: the product of its path's strides (no probe pass, so it costs nothing)."""
    stride = [1] * spatial_dims
    for module in _path(net):
        stride = [a * b for a, b in zip(stride, ensure_tuple_rep(module.stride, spatial_dims))]
    return tuple(stride)


def receptive_radius(net: ResNet) -> int:
    """How far (voxels) an output cell of the trunk reaches into its input along the last axis: the sum over its
    path of (kernel - 1) / 2 times the stride so far."""
    radius, jump = 0, 1
    for module in _path(net):
        radius += (ensure_tuple_rep(module.kernel_size, 3)[-1] - 1) // 2 * jump
        jump *= ensure_tuple_rep(module.stride, 3)[-1]
    return radius


def trunk_features(
    net: ResNet, image: torch.Tensor, stride: Sequence[int], slab: int | None = None, halo: int | None = None
) -> torch.Tensor:
    """The trunk's feature map of ``image`` (1, C, *spatial), computed in slabs of ``slab`` voxels along the last
    axis (whole volume when None), each read with ``halo`` voxels of context on both sides (default: the trunk's
    receptive radius, so that the slabs give exactly the whole volume's map); slab and halo are rounded to the stride
    so that every slab's cells lie on the whole volume's grid."""
    depth, step = image.shape[-1], stride[-1]
    if slab is None or slab >= depth:
        return _trunk(net, image)
    halo = receptive_radius(net) if halo is None else halo
    slab, halo = max(step, slab // step * step), -(-halo // step) * step
    pieces = []
    for start in range(0, depth, slab):
        lo, hi = max(start - halo, 0), min(start + slab + halo, depth)
        feats = _trunk(net, image[..., lo:hi])
        first = (start - lo) // step
        pieces.append(feats[..., first : first + -(-(min(start + slab, depth) - start) // step)])
    return torch.cat(pieces, dim=-1)


def window_cells(
    slices: Sequence[tuple[slice, ...]], stride: Sequence[int], feature_shape: Sequence[int]
) -> list[tuple[slice, ...]]:
    """For each window, the feature cells whose centres lie inside it (at least one cell per axis)."""
    cells = []
    for window in slices:
        per_axis = []
        for s, st, n in zip(window, stride, feature_shape):
            first = min(max(-(-(2 * s.start - st) // (2 * st)), 0), n - 1)  # ceil((start - st/2) / st)
            last = min(max(-(-(2 * s.stop - st) // (2 * st)) - 1, first), n - 1)  # centre < stop, inclusive
            per_axis.append(slice(first, last + 1))
        cells.append(tuple(per_axis))
    return cells


def shared_window_logits(
    net: ResNet, image: torch.Tensor, slices: Sequence[tuple[slice, ...]], slab: int | None = None
) -> torch.Tensor:
    """Glance logits (N, 2) of every window of ``image`` (1, C, *spatial) from one trunk pass (see the module)."""
    stride = feature_stride(net, image.ndim - 2)
    features = trunk_features(net, image, stride, slab)
    cells = window_cells(slices, stride, features.shape[2:])
    pooled = torch.cat([net.avgpool(features[(slice(None), slice(None), *c)]) for c in cells])
    return net.fc(pooled.flatten(1))
