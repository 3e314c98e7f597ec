"""Lesion findings (bundle/findings.py): the detection operating point that drops weak lesions whole, its score, and
the body bound (bundle/transforms.py) that keeps findings inside the patient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bundle.findings import LESION_SCORES, LesionFindingsd, component_scores, drop_low_score_lesions, label_lesions
from bundle.inferer import GLANCE_FOCUS_KEY, GlanceFocusStats, stats_meta
from bundle.transforms import BoundToBodyd
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation

from tests.conftest import ROOT


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
    pred = MetaTensor(prob[None], affine=affine)
    weights = {"status": "trained"}
    both = LesionFindingsd("pred", weights, threshold=0.5, min_score=0.5)({"pred": pred})
    strong = LesionFindingsd("pred", weights, threshold=0.5, min_score=0.9)({"pred": pred})
    assert [les["max_probability"] for les in both["findings"]["lesions"]] == [0.97, 0.7]
    (lesion,) = strong["findings"]["lesions"]
    assert lesion["max_probability"] == 0.97 and lesion["voxels"] == 32
    assert strong["findings"]["lesion_min_score"] == 0.9 and strong["findings"]["lesion_count"] == 1
    mask = strong["pred"][0].numpy()
    assert mask.sum() == 32 and mask[2:6, 2:6, 2:4].all()
    numbers = both["pred"][0].numpy()  # the lesion map numbers lesions as the findings do
    assert numbers[3, 3, 3] == 1 and numbers[12, 12, 5] == 2  # numbered by peak probability


def test_mean_probability_score_drops_by_the_component_mean():
    """The mean score ranks the two lesions of two_lesions() by their mean (0.805 and 0.6125), not their peaks."""
    prob = two_lesions()
    mask = prob >= 0.5
    strong_mean, weak_mean = (31 * 0.8 + 0.97) / 32, (7 * 0.6 + 0.7) / 8
    kept = drop_low_score_lesions(prob, mask, 0.7, score="mean_probability")
    assert kept.sum() == 32 and kept[2:6, 2:6, 2:4].all()  # weak: mean 0.61 < 0.7 <= peak 0.7, dropped only by mean
    assert drop_low_score_lesions(prob, mask, 0.7, score="max_probability").sum() == 32 + 8
    assert drop_low_score_lesions(prob, mask, round(weak_mean, 4), score="mean_probability").sum() == 32 + 8
    assert not drop_low_score_lesions(prob, mask, round(strong_mean, 4) + 1e-4, score="mean_probability").any()
    with pytest.raises(ValueError, match="score must be one of"):
        drop_low_score_lesions(prob, mask, 0.7, score="median")


@pytest.mark.parametrize("score", sorted(LESION_SCORES))
def test_component_scores_equal_scipy_over_the_whole_volume(score):
    """Scores measured over the labelled voxels only equal scipy's over every voxel (the reference), for many
    components in a mostly empty volume, as on a whole scan."""
    rng = np.random.default_rng(3)
    prob = rng.random((60, 50, 20), dtype=np.float32) * 0.5
    prob[rng.random(prob.shape) > 0.97] = 0.9
    labels, n = label_lesions(prob >= 0.5)
    assert n > 50
    reference = np.round(LESION_SCORES[score](prob, labels, index=np.arange(1, n + 1)), 4)
    np.testing.assert_array_equal(component_scores(prob, labels, n, score), reference)


def test_findings_number_lesions_by_the_configured_score():
    """A large lesion with a high peak but a low mean comes first by max, second by mean."""
    prob = np.full((20, 20, 10), 0.05, dtype=np.float32)
    prob[2:8, 2:8, 2:5] = 0.55
    prob[4, 4, 3] = 0.99  # peak 0.99, mean ~0.56
    prob[12:14, 12:14, 5:7] = 0.9  # peak and mean 0.9
    pred = MetaTensor(torch.from_numpy(prob)[None], affine=torch.eye(4))
    first = {}
    for score in ("max_probability", "mean_probability"):
        out = LesionFindingsd("pred", {"status": "trained"}, score=score)({"pred": pred})
        assert out["findings"]["lesion_score"] == score
        first[score] = next(les for les in out["findings"]["lesions"] if les["number"] == 1)["voxels"]
    assert first == {"max_probability": 6 * 6 * 3, "mean_probability": 2 * 2 * 2}


def test_no_finding_on_the_table_of_a_real_scan(shared_data):
    """The pancreatic-cancer series lies on a dense table (up to ~580 HU, below the patient): a confident lesion
    painted into the probability map on the table is removed by the body bound, one inside the patient is kept, and
    the findings of the config's postprocessing report only the inside one."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs/inference.yaml"), str(ROOT / "configs/small.yaml")])
    parser["region"] = "abdomen"
    parser["lesion_min_score"] = 0.5  # the operating point is not under test here
    item = {"image": str(shared_data / "tcia_pancreatic_ct_cbct_seg_full_series" / "dicom")}
    data = parser.get_parsed_content("preprocessing")(item)
    image = data["image"]
    # The table, found independently of the body mask: dense voxels in the rows behind (posterior to) the patient's
    # back, from the raw HU of the original grid, mapped to the preprocessed grid by world coordinates.
    raw = LoadImage(image_only=True, reader="ITKReader", ensure_channel_first=True)(item["image"])
    raw = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(raw)
    hu = raw[0].numpy()
    table = np.argwhere(hu[:, :100, :] > 200)  # posterior rows 0-99: the table (the patient starts at row ~110)
    assert len(table) > 1000
    to_pre = np.linalg.inv(image.affine.numpy()) @ raw.affine.numpy()

    def pre_index(ijk):
        return np.round(to_pre[:3, :3] @ np.asarray(ijk, float) + to_pre[:3, 3]).astype(int)

    on_table = pre_index(table[len(table) // 2])
    inside = pre_index((256, 250, 67))  # the middle of the abdomen
    prob = torch.full(image.shape[1:], 0.01)
    for c in (on_table, inside):
        prob[c[0] - 2 : c[0] + 3, c[1] - 2 : c[1] + 3, c[2] - 1 : c[2] + 2] = 0.99
    dense = GlanceFocusStats(torch.ones(1), torch.ones(1, dtype=torch.bool), None, 0.0)  # as the inferer's output
    data["pred"] = MetaTensor(
        torch.stack([1 - prob, prob]),
        meta={**image.meta, GLANCE_FOCUS_KEY: stats_meta([dense])},
        applied_operations=image.applied_operations,
    )
    bounded = BoundToBodyd("pred")(dict(data))["pred"]
    assert bounded.shape == (1, *image.shape[1:])  # the lesion channel: Invertd resamples one channel, not two
    assert bounded[0][tuple(on_table)] == 0 and bounded[0][tuple(inside)] == pytest.approx(0.99)

    out = parser.get_parsed_content("postprocessing_core")(dict(data))
    lesions = out["findings"]["lesions"]
    assert len(lesions) == 1 and lesions[0]["volume_mm3"] >= 0.8 * 5 * 5 * 3 * 3.0  # the blob's 225 mm3, resampled


def test_bound_to_body_of_an_empty_map_needs_no_body_mask(monkeypatch):
    """Glance kept no window: the lesion channel is all zeros, so bounding it cannot change it and the body mask (a
    labelling of the whole scan) is not computed; the output is still the 1-channel map with its metadata."""

    def no_body(*_):
        raise AssertionError("the body mask was computed for an empty map")

    monkeypatch.setattr(BoundToBodyd, "body", no_body)
    image = MetaTensor(torch.rand(1, 20, 16, 8))
    prob = MetaTensor(torch.stack([torch.ones(20, 16, 8), torch.zeros(20, 16, 8)]), meta={"marker": 7})
    out = BoundToBodyd("pred")({"image": image, "pred": prob, "region": "abdomen"})["pred"]
    assert isinstance(out, MetaTensor) and out.meta["marker"] == 7
    assert out.shape == (1, 20, 16, 8) and not out.any()
    prob[1, 3, 3, 3] = 0.5  # one candidate voxel: now the body is needed
    with pytest.raises(AssertionError, match="body mask was computed"):
        BoundToBodyd("pred")({"image": image, "pred": prob, "region": "abdomen"})


def test_fill_axial_holes_equals_scipy_slice_by_slice():
    """The one-labelling hole filling equals scipy's ``binary_fill_holes`` on every axial slice (the reference), on a
    real chest CT's tissue mask (lungs and airways are its holes) and on a slice whose hole opens onto the edge."""
    from bundle.transforms import BODY_HU, fill_axial_holes
    from scipy import ndimage

    image = LoadImage(image_only=True, reader="ITKReader")(str(ROOT / "sample_data" / "lung1" / "lung1_image.nrrd"))
    tissue = np.asarray(image) > BODY_HU
    ring = np.zeros((30, 30, 2), bool)
    ring[5:25, 5:25] = True
    ring[10:20, 10:20] = False  # a hole: filled
    ring[12:14, 0:12, 1] = False  # in the second slice, a channel from that hole to the edge: not a hole any more
    for mask in (tissue, ring):
        reference = np.stack([ndimage.binary_fill_holes(mask[..., z]) for z in range(mask.shape[-1])], axis=-1)
        assert reference.sum() > mask.sum()
        np.testing.assert_array_equal(fill_axial_holes(mask), reference)


def test_body_mask_keeps_both_legs_and_drops_a_table():
    """Two limbs of equal size are both patient; a slab under them (4 % of their volume) is not."""
    from bundle.transforms import body_mask

    tissue = np.zeros((60, 40, 10), bool)
    tissue[5:25, 10:30, :] = True  # left leg
    tissue[35:55, 10:30, :] = True  # right leg
    tissue[5:55, 2:4, :3] = True  # the table: 50 x 2 x 3 = 300 voxels of 8000
    body = body_mask(tissue)
    assert body[5:25, 10:30].all() and body[35:55, 10:30].all()
    assert not body[5:55, 2:4].any()


def test_body_mask_cuts_a_table_shell_that_touches_the_patient():
    """A patient lying on a table whose thin curved shell touches the back and encloses air under it (as the
    134-slice series' table does): the body is the patient alone, not the shell nor the air it encloses, and the
    patient's own holes (a lung) stay filled."""
    from bundle.transforms import body_mask
    from scipy import ndimage

    rows, cols = np.mgrid[:80, :80]
    patient = ((rows - 30) / 20.0) ** 2 + ((cols - 40) / 30.0) ** 2 <= 1  # back at row 50
    lung = ((rows - 28) / 8.0) ** 2 + ((cols - 30) / 6.0) ** 2 <= 1
    shell = np.zeros((80, 80), bool)
    shell[50, 5:75] = True  # the table top, 1 voxel thick, touching the back
    shell[50:70, 5] = shell[50:70, 74] = shell[70, 5:75] = True  # its sides and bottom: air enclosed under it
    tissue = np.repeat(((patient & ~lung) | shell)[..., None], 6, axis=2)
    body = body_mask(tissue)[..., 3]
    assert body[ndimage.binary_erosion(patient)].all()  # the patient, lung filled, but for outline pixels
    assert not body[~ndimage.binary_dilation(patient)].any()  # neither the shell (beyond the touching pixels)
    assert not body[52:69, 7:73].any()  # nor the air under it


def test_body_mask_of_a_real_scan_leaves_out_its_table(shared_data):
    """On the series' original grid (the grid lesion synthesis uses), neither the table (dense voxels behind the
    patient's back) nor the air its curved shell encloses is body; every voxel of the patient's abdomen is."""
    from bundle.synthesis import load_ras
    from bundle.transforms import BODY_HU, body_mask

    hu = load_ras(shared_data / "tcia_pancreatic_ct_cbct_seg_full_series" / "dicom")[0].numpy()
    body = body_mask(hu > BODY_HU)
    behind_back = np.zeros(hu.shape, bool)
    behind_back[:, :100, :] = True  # posterior rows 0-99: the table (the patient starts at row ~110)
    assert (hu[behind_back] > 200).sum() > 1000 and not body[behind_back].any()
    assert body[200:312, 200:300, 60:75].all()  # the middle of the abdomen


def test_longest_axial_diameter_and_its_ends():
    """A 10 x 4 voxel rectangle on one slice of a 0.8 x 0.8 x 2.5 mm grid: the caliper runs corner to corner of its
    footprint (the diagonal), its ends are that far apart, on the rectangle's slice, in LPS."""
    from bundle.findings import longest_axial_diameter

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-100.0, 50.0, 20.0]
    component = np.zeros((12, 6, 3), bool)
    component[1:11, 1:5, 2] = True
    diameter, ends = longest_axial_diameter(component, affine, offset=(5, 0, 4))
    assert diameter == pytest.approx(np.hypot(10 * 0.8, 4 * 0.8))
    assert np.linalg.norm(ends[1] - ends[0]) == pytest.approx(diameter)
    assert ends[:, 2] == pytest.approx([20.0 + 2.5 * (2 + 4)] * 2)  # the slice, with the component's offset
    ras = sorted(tuple(np.round(np.diag([-1, -1, 1]) @ e, 6)) for e in ends)  # back to RAS: the footprint corners
    assert ras[0][:2] == pytest.approx((-100.0 + 0.8 * (5 + 0.5), 50.0 + 0.8 * 0.5)) or ras[0][:2] == pytest.approx(
        (-100.0 + 0.8 * (5 + 0.5), 50.0 + 0.8 * 4.5)
    )
