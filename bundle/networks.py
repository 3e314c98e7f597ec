"""Glance, the GF-Screen window classifier (a 3D ResNet).

Focus is MONAI's SwinUNETR v2 as it is: the configs' ``network_def``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet

__all__ = ["GlanceNet", "select_probability"]


class GlanceNet(ResNet):
    """3D ResNet that scores one window with 2 logits (0 = discard, 1 = select).

    MONAI's ``ResNet`` ends in global average pooling; the paper pools with global *max* so that a small lesion
    anywhere in the window can dominate the decision, hence ``pooling="max"`` by default. With the defaults this is
    MONAI's ``resnet18`` (33 M parameters). ``norm`` is any MONAI norm spec: batch norm as in the paper (groups of 16
    windows on a GPU); the CPU-size variant uses group norm, because with 2-4 windows per step the batch statistics
    normalise the lesion signal away (a step of lesion windows only) and eval-mode running statistics drift from
    the training ones.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        conv1_t_stride: int = 1,
        pooling: str = "max",
        in_channels: int = 1,
        num_classes: int = 2,
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__(
            block="basic",
            layers=list(layers),
            block_inplanes=list(block_inplanes),
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_stride=conv1_t_stride,
            num_classes=num_classes,
            norm=norm,
        )
        if pooling == "max":
            self.avgpool = torch.nn.AdaptiveMaxPool3d(1)
        elif pooling != "avg":
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}.")


def select_probability(logits: torch.Tensor) -> torch.Tensor:
    """p_i = softmax(z_i)[1], the Glance probability that window i deserves a Focus pass."""
    return torch.softmax(logits.float(), dim=1)[:, 1]
