"""Metrics (bundle/metrics.py) and the evaluation loop (bundle/evaluation.py) on hand-made masks with known answers."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from bundle.evaluation import LesionEvaluation
from bundle.metrics import dice, flare_dsc_nsd, healthy_scan_is_fp, lesion_detection, lesion_scores, nsd

SHAPE = (24, 24, 24)


def box(lo: tuple[int, int, int], hi: tuple[int, int, int], shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Bool mask with the half-open box [lo, hi) set."""
    mask = np.zeros(shape, dtype=bool)
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return mask


def test_dice_of_two_overlapping_boxes():
    a = box((2, 2, 2), (8, 6, 5))  # 6 x 4 x 3 = 72 voxels
    b = box((5, 3, 2), (11, 9, 5))  # 6 x 6 x 3 = 108 voxels
    overlap = (8 - 5) * (6 - 3) * (5 - 2)  # 3 x 3 x 3 = 27 voxels
    assert dice(a, b) == pytest.approx(2 * overlap / (6 * 4 * 3 + 6 * 6 * 3))
    assert dice(a.astype(np.uint8), b.astype(np.int16)) == pytest.approx(54 / 180)
    assert dice(a, a) == 1.0


def test_nsd_identical_masks_is_one():
    a = box((3, 4, 5), (12, 10, 9))
    assert nsd(a, a, (0.7, 0.7, 2.5)) == pytest.approx(1.0)


def test_nsd_shift_within_and_beyond_tolerance():
    # A translation by t moves every surface point by |t|, so all distances are <= |t| mm: NSD = 1 when |t| <= tol.
    a = box((6, 6, 6), (18, 18, 18))
    one = np.roll(a, 1, axis=0)
    five = np.roll(a, 5, axis=0)
    assert nsd(one, a, (1.0, 1.0, 1.0), tolerance_mm=2.0) == pytest.approx(1.0)
    # 5 mm: the centre of the face the shape moved away from is 5 mm from the other surface.
    shifted_5mm = nsd(five, a, (1.0, 1.0, 1.0), tolerance_mm=2.0)
    assert 0.0 < shifted_5mm < 1.0
    # Larger tolerance can only add surface within reach.
    assert nsd(five, a, (1.0, 1.0, 1.0), tolerance_mm=3.0) > shifted_5mm
    assert nsd(five, a, (1.0, 1.0, 1.0), tolerance_mm=5.0) == pytest.approx(1.0)


def test_nsd_uses_spacing_per_axis():
    # The same 5-voxel shift along axis 0 is 2 mm at 0.4 mm spacing on that axis (within tolerance) ...
    a = box((6, 6, 6), (18, 18, 18))
    along_0 = np.roll(a, 5, axis=0)
    assert nsd(along_0, a, (0.4, 1.0, 1.0), tolerance_mm=2.0) == pytest.approx(1.0)
    # ... but the same shift along axis 1 is 5 mm there, so the spacing must be applied in array-axis order.
    along_1 = np.roll(a, 5, axis=1)
    assert nsd(along_1, a, (0.4, 1.0, 1.0), tolerance_mm=2.0) < 1.0
    assert nsd(along_1, a, (1.0, 0.4, 1.0), tolerance_mm=2.0) == pytest.approx(1.0)


def test_nsd_does_not_warn_or_crash_on_empty_masks():
    a = box((2, 2, 2), (6, 6, 6))
    empty = np.zeros(SHAPE, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nsd(a, empty, (1.0, 1.0, 1.0)) == 0.0
        assert nsd(empty, a, (1.0, 1.0, 1.0)) == 0.0
        assert nsd(empty, empty, (1.0, 1.0, 1.0)) == 1.0
        assert nsd(a, np.roll(a, 1, axis=2), (1.0, 1.0, 1.0)) == pytest.approx(1.0)


def test_flare_both_empty_is_one_one():
    empty = np.zeros(SHAPE, dtype=np.uint8)
    assert flare_dsc_nsd(empty, empty, (1.0, 1.0, 1.0)) == (1.0, 1.0)


def test_flare_one_empty_is_zero_zero_both_ways():
    a = box((2, 2, 2), (6, 6, 6))
    empty = np.zeros(SHAPE, dtype=bool)
    assert flare_dsc_nsd(a, empty, (1.0, 1.0, 1.0)) == (0.0, 0.0)
    assert flare_dsc_nsd(empty, a, (1.0, 1.0, 1.0)) == (0.0, 0.0)


def test_flare_low_dsc_forces_nsd_to_zero():
    gt = box((2, 2, 2), (12, 12, 12))  # 1000 voxels
    pred = box((11, 2, 2), (21, 12, 12))  # 1000 voxels, one 10 x 10 slab in common
    expected_dsc = 2 * 100 / 2000
    assert expected_dsc < 0.2
    raw_nsd = nsd(pred, gt, (1.0, 1.0, 1.0))
    assert raw_nsd > 0.0  # the touching faces and nearby side walls are within 2 mm
    assert flare_dsc_nsd(pred, gt, (1.0, 1.0, 1.0)) == (pytest.approx(expected_dsc), 0.0)


def test_flare_good_overlap_keeps_nsd():
    gt = box((4, 4, 4), (14, 14, 14))
    pred = np.roll(gt, 1, axis=0)
    assert flare_dsc_nsd(pred, gt, (1.0, 1.0, 1.0)) == (pytest.approx(2 * 900 / 2000), pytest.approx(1.0))


def test_lesion_detection_found_missed_and_false_positive():
    gt = box((2, 2, 2), (6, 6, 6)) | box((14, 14, 14), (18, 18, 18))
    pred = box((3, 3, 3), (5, 5, 5)) | box((2, 16, 2), (5, 20, 5))  # inside lesion 1, and away from both lesions
    assert lesion_detection(pred, gt) == {
        "gt_lesions": 2,
        "found": 1,
        "missed": 1,
        "pred_components": 2,
        "false_positives": 1,
    }


def test_lesion_touched_by_one_voxel_is_found_but_adjacent_is_not():
    gt = box((5, 5, 5), (9, 9, 9))
    pred_one_voxel_overlap = box((8, 8, 8), (12, 12, 12))  # shares only voxel (8, 8, 8)
    assert (pred_one_voxel_overlap & gt).sum() == 1
    result = lesion_detection(pred_one_voxel_overlap, gt)
    assert (result["found"], result["missed"], result["false_positives"]) == (1, 0, 0)
    pred_adjacent = box((9, 5, 5), (12, 9, 9))  # face-adjacent, no common voxel: "touches" means overlaps
    result = lesion_detection(pred_adjacent, gt)
    assert (result["found"], result["missed"], result["false_positives"]) == (0, 1, 1)


def test_one_prediction_overlapping_two_lesions_finds_both():
    gt = box((2, 2, 2), (5, 5, 5)) | box((8, 2, 2), (11, 5, 5))
    pred = box((3, 3, 3), (10, 4, 4))
    assert lesion_detection(pred, gt) == {
        "gt_lesions": 2,
        "found": 2,
        "missed": 0,
        "pred_components": 1,
        "false_positives": 0,
    }


def test_connectivity_of_corner_touching_voxels():
    gt = np.zeros(SHAPE, dtype=bool)
    gt[5, 5, 5] = gt[6, 6, 6] = True  # share only a corner
    empty = np.zeros(SHAPE, dtype=bool)
    assert lesion_detection(empty, gt)["gt_lesions"] == 1  # default 26-connectivity: one lesion
    assert lesion_detection(empty, gt, connectivity=18)["gt_lesions"] == 2
    assert lesion_detection(empty, gt, connectivity=6)["gt_lesions"] == 2
    with pytest.raises(ValueError, match="connectivity"):
        lesion_detection(empty, gt, connectivity=4)


def test_healthy_scan_rule_at_125_and_126_voxels():
    pred = np.zeros(SHAPE, dtype=np.uint8)
    pred[:5, :5, :5] = 1
    assert pred.sum() == 125
    assert not healthy_scan_is_fp(pred)
    pred[10, 10, 10] = 1
    assert healthy_scan_is_fp(pred)
    assert not healthy_scan_is_fp(np.zeros(SHAPE, dtype=bool))


def test_inputs_are_checked():
    a = box((2, 2, 2), (6, 6, 6))
    with pytest.raises(ValueError, match="same shape"):
        dice(a, a[:-1])
    with pytest.raises(ValueError, match="3D"):
        nsd(a[0], a[0], (1.0, 1.0))
    with pytest.raises(ValueError, match="3D"):
        healthy_scan_is_fp(a[None])
    with pytest.raises(ValueError, match="spacing_mm"):
        nsd(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="same shape"):
        lesion_detection(a, a[:, :-1])


def _write_nifti(path, mask: np.ndarray, spacing: tuple[float, float, float]) -> None:
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))


def _write_outputs(pred_dir, case_id: str, mask: np.ndarray, spacing, keep_fraction: float, seconds: float) -> None:
    case_dir = pred_dir / case_id
    case_dir.mkdir(parents=True)
    _write_nifti(case_dir / f"{case_id}_lesion.nii.gz", mask, spacing)
    findings = {
        "case_id": case_id,
        "lesion_count": 0,
        "suspicion_score": 0.5,
        "glance_focus": {
            "windows_total": 10,
            "windows_kept": 5,
            "keep_fraction": keep_fraction,
            "threshold": 0.5,
            "glance_seconds": 1.0,
            "focus_seconds": 2.0,
        },
        "timings": {"total_seconds": seconds},
    }
    (case_dir / f"{case_id}_findings.json").write_text(json.dumps(findings))


def test_lesion_evaluation_end_to_end(tmp_path, capsys):
    data_dir, pred_dir = tmp_path / "data", tmp_path / "preds"
    data_dir.mkdir()
    shape = (20, 20, 20)
    iso = (1.0, 1.0, 1.0)

    # chest_1: one lesion, perfect prediction. Label as NRRD with anisotropic spacing (x, y, z) = (0.8, 0.8, 2.5).
    chest_gt = box((4, 4, 4), (10, 9, 8), shape)
    label = sitk.GetImageFromArray(chest_gt.astype(np.uint8).transpose(2, 1, 0))  # SimpleITK arrays are (z, y, x)
    label.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(label, str(data_dir / "chest_1_label.nrrd"))
    _write_outputs(pred_dir, "chest_1", chest_gt, (0.8, 0.8, 2.5), keep_fraction=0.2, seconds=10.0)

    # abd_1: lesions of 64 and 8 voxels; the prediction is exactly the first one, the second is missed.
    big, small = box((2, 2, 2), (6, 6, 6), shape), box((14, 14, 14), (16, 16, 16), shape)
    _write_nifti(data_dir / "abd_1_label.nii.gz", big | small, iso)
    _write_outputs(pred_dir, "abd_1", big, iso, keep_fraction=0.4, seconds=20.0)

    # abd_2: lesion-free scan with a 200-voxel false positive (5 x 5 x 8).
    _write_nifti(data_dir / "abd_2_label.nii.gz", np.zeros(shape, dtype=bool), iso)
    _write_outputs(pred_dir, "abd_2", box((1, 1, 1), (6, 6, 9), shape), iso, keep_fraction=0.6, seconds=30.0)

    datalist = {
        "test": [
            {
                "id": "chest_1",
                "image": "chest_1.nrrd",
                "label": "chest_1_label.nrrd",
                "region": "chest",
                "lesion_type": "nodule",
            },
            {
                "id": "abd_1",
                "image": "abd_1.nii.gz",
                "label": "abd_1_label.nii.gz",
                "region": "abdomen",
                "lesion_type": "liver",
            },
            {"id": "abd_2", "image": "abd_2.nii.gz", "label": "abd_2_label.nii.gz", "region": "abdomen"},
            {"id": "unlabelled", "image": "unlabelled.nii.gz", "region": "abdomen"},
        ]
    }
    datalist_path = tmp_path / "datalist.json"
    datalist_path.write_text(json.dumps(datalist))
    output_file = tmp_path / "reports" / "eval" / "evaluation.json"

    evaluation = LesionEvaluation(str(datalist_path), str(data_dir), str(pred_dir), str(output_file))
    report = evaluation.run()

    assert json.loads(output_file.read_text()) == report
    assert [c["id"] for c in report["per_case"]] == ["chest_1", "abd_1", "abd_2"]
    chest, abd_1, abd_2 = report["per_case"]
    assert chest["spacing_mm"] == pytest.approx([0.8, 0.8, 2.5])
    assert (chest["dsc"], chest["nsd"]) == (pytest.approx(1.0), pytest.approx(1.0))
    abd_1_dsc = 2 * 64 / (64 + 72)
    assert abd_1["dsc"] == pytest.approx(abd_1_dsc)
    assert (abd_1["found"], abd_1["missed"], abd_1["false_positives"]) == (1, 1, 0)
    assert (abd_2["dsc"], abd_2["nsd"], abd_2["pred_voxels"]) == (0.0, 0.0, 200)
    assert (abd_2["lesion_free"], abd_2["healthy_fp"], abd_2["false_positives"]) == (True, True, 1)
    assert chest["healthy_fp"] is None

    overall = report["overall"]
    assert overall["n_scans"] == 3
    assert overall["dsc"] == pytest.approx((1.0 + abd_1_dsc + 0.0) / 3)
    assert overall["sensitivity"] == pytest.approx(2 / 3)  # 1 of 1 chest lesion + 1 of 2 abdominal lesions
    assert overall["fp_per_scan"] == pytest.approx(1 / 3)
    assert overall["healthy_fpr"] == 1.0
    assert overall["keep_fraction"] == pytest.approx(0.4)
    assert overall["seconds_per_scan"] == pytest.approx(20.0)

    assert sorted(report["by_region"]) == ["abdomen", "chest"]
    chest_stats, abdomen = report["by_region"]["chest"], report["by_region"]["abdomen"]
    assert (chest_stats["n_scans"], chest_stats["sensitivity"], chest_stats["healthy_fpr"]) == (1, 1.0, None)
    assert (abdomen["n_scans"], abdomen["sensitivity"], abdomen["fp_per_scan"]) == (2, 0.5, 0.5)
    assert abdomen["dsc"] == pytest.approx(abd_1_dsc / 2)
    assert abdomen["healthy_fpr"] == 1.0
    assert sorted(report["by_lesion_type"]) == ["liver", "nodule"]  # abd_2 has no lesion type
    assert report["by_lesion_type"]["liver"]["sensitivity"] == 0.5
    assert report["settings"]["tolerance_mm"] == 2.0

    table = capsys.readouterr().out
    for row in ("overall", "region: chest", "region: abdomen", "lesion: liver", "lesion: nodule"):
        assert row in table

    (pred_dir / "abd_1" / "abd_1_lesion.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="abd_1"):
        evaluation.run()


def test_lesion_evaluation_rejects_prediction_on_another_grid(tmp_path):
    data_dir, pred_dir = tmp_path / "data", tmp_path / "preds"
    data_dir.mkdir()
    _write_nifti(data_dir / "c1_label.nii.gz", box((2, 2, 2), (5, 5, 5), (10, 10, 10)), (1.0, 1.0, 1.0))
    _write_outputs(pred_dir, "c1", box((2, 2, 2), (5, 5, 5), (10, 10, 8)), (1.0, 1.0, 1.0), 0.5, 1.0)
    datalist_path = tmp_path / "datalist.json"
    datalist_path.write_text(json.dumps({"test": [{"id": "c1", "image": "c1.nii.gz", "label": "c1_label.nii.gz"}]}))
    evaluation = LesionEvaluation(str(datalist_path), str(data_dir), str(pred_dir), str(tmp_path / "out.json"))
    with pytest.raises(ValueError, match=r"case c1: .*shape"):
        evaluation.run()


def test_lesion_scores_best_touching_score_missed_and_false_positives():
    gt = box((2, 2, 2), (6, 6, 6)) | box((14, 14, 14), (18, 18, 18)) | box((2, 14, 2), (5, 17, 5))
    pred = np.zeros(SHAPE, dtype=np.uint16)
    pred[3:5, 3:5, 3:5] = 1  # inside lesion 1
    pred[5:8, 5:8, 5:8] = 2  # overlaps lesion 1 at one corner voxel: lesion 1 takes the higher score
    pred[15:17, 15:17, 15:17] = 3  # inside lesion 2
    pred[20:22, 2:4, 2:4] = 4  # touches nothing
    pred[10:12, 10:12, 10:12] = 5  # touches nothing
    scores = {1: 0.7, 2: 0.95, 3: 0.6, 4: 0.99, 5: 0.55}
    found, false_positives = lesion_scores(pred, scores, gt)
    assert found == [0.95, 0.0, 0.6]  # ground-truth lesions in scipy's label order; the third is missed
    assert false_positives == [0.99, 0.55]
    with pytest.raises(ValueError, match="no score"):
        lesion_scores(pred, {1: 0.7}, gt)
    with pytest.raises(ValueError, match="shapes differ"):
        lesion_scores(pred[:-1], scores, gt)


def test_froc_hand_counted():
    """Lesions scoring 0.9, 0.8 and a miss; false positives 0.95, 0.7, 0.6, 0.5 over 2 scans."""
    from bundle.metrics import FROC_FP_PER_SCAN, froc

    points = froc([0.9, 0.8, 0.0], [0.95, 0.7, 0.6, 0.5], scans=2)
    assert [p["fp_per_scan"] for p in points] == list(FROC_FP_PER_SCAN)
    # 1/8 and 1/4 per scan allow no false positive: only a score above 0.95 would count, and no lesion has one;
    # from 1/2 per scan (1 false positive) the threshold is 0.8, so both scored lesions count, never the miss
    assert [p["sensitivity"] for p in points] == pytest.approx([0, 0, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
