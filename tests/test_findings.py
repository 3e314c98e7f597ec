"""Lesion findings (bundle/findings.py): the detection operating point that drops weak lesions whole."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from bundle.findings import LesionFindingsd, drop_low_score_lesions, lesion_label_map
from bundle.inferer import GlanceFocusInferer
from bundle.networks import GlanceNet


def two_lesions() -> np.ndarray:
    """Lesion probability with a strong lesion (peak 0.97, 4x4x2 voxels) and a weak one (peak 0.7, 2x2x2)."""
    prob = np.full((20, 20, 10), 0.05, dtype=np.float32)
    prob[2:6, 2:6, 2:4] = 0.8
    prob[3, 3, 3] = 0.97
    prob[12:14, 12:14, 5:7] = 0.6
    prob[12, 12, 5] = 0.7
    return prob


def test_drop_low_score_lesions_keeps_strong_lesions_whole():
    prob = two_lesions()
    mask = prob >= 0.5
    assert drop_low_score_lesions(prob, mask, 0.5).sum() == 32 + 8
    kept = drop_low_score_lesions(prob, mask, 0.9)
    assert kept.sum() == 32 and kept[2:6, 2:6, 2:4].all()  # the strong lesion keeps its full extent
    assert not drop_low_score_lesions(prob, mask, 0.98).any()
    assert not drop_low_score_lesions(prob, np.zeros_like(mask), 0.9).any()


def test_lesion_findings_transform_reports_only_lesions_above_the_min_score():
    prob = torch.from_numpy(two_lesions())
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    pred = MetaTensor(torch.stack([1 - prob, prob]), affine=affine)
    inferer = GlanceFocusInferer(GlanceNet(layers=(1, 1, 1, 1), block_inplanes=(8, 8, 8, 8)), roi_size=(16, 16, 8))
    weights = {"status": "trained"}
    both = LesionFindingsd("pred", inferer, weights, threshold=0.5, min_score=0.5)({"pred": pred})
    strong = LesionFindingsd("pred", inferer, weights, threshold=0.5, min_score=0.9)({"pred": pred})
    assert [les["max_probability"] for les in both["findings"]["lesions"]] == [0.97, 0.7]
    (lesion,) = strong["findings"]["lesions"]
    assert lesion["max_probability"] == 0.97 and lesion["voxels"] == 32
    assert strong["findings"]["lesion_min_score"] == 0.9 and strong["findings"]["lesion_count"] == 1
    mask = strong["pred"][0].numpy()
    assert mask.sum() == 32 and mask[2:6, 2:6, 2:4].all()
    numbers = lesion_label_map(both["pred"][0].numpy() > 0, affine.numpy(), both["findings"]["lesions"])
    assert numbers[3, 3, 3] == 1 and numbers[12, 12, 5] == 2  # numbered by peak probability
