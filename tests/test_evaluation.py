"""The evaluation's detection operating point and lesion scores (bundle/evaluation.py), on hand-made predictions."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from bundle.evaluation import LesionEvaluation
from bundle.findings import lesion_findings


@pytest.fixture
def case(tmp_path):
    """One labelled lesion; the prediction covers it (mean probability 0.9) and adds a false positive (0.6)."""
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    gt = np.zeros((24, 24, 12), np.uint8)
    gt[4:9, 4:9, 3:6] = 1
    prob = np.zeros(gt.shape, np.float32)
    prob[4:9, 4:9, 3:6] = 0.9
    prob[15:19, 15:19, 6:9] = 0.6
    lesion_map, lesions = lesion_findings(prob, prob >= 0.5, affine, "chest", "mean_probability")
    nib.save(nib.Nifti1Image(gt, affine), tmp_path / "label.nii.gz")
    case_dir = tmp_path / "preds" / "c1"
    case_dir.mkdir(parents=True)
    nib.save(nib.Nifti1Image(lesion_map, affine), case_dir / "c1_lesion.nii.gz")
    findings = {
        "case_id": "c1",
        "lesion_score": "mean_probability",
        "lesions": lesions,
        "glance_focus": {"keep_fraction": 0.5},
        "timings": {"total_seconds": 1.0},
    }
    (case_dir / "c1_findings.json").write_text(json.dumps(findings))
    item = {"id": "c1", "image": "label.nii.gz", "label": "label.nii.gz", "region": "chest", "lesion_type": "t"}
    (tmp_path / "datalist.json").write_text(json.dumps({"test": [item]}))
    return tmp_path


@pytest.mark.parametrize(
    "min_score, found, false_positives, dsc",
    [(None, 1, 1, 2 * 75 / (75 + 75 + 48)), (0.7, 1, 0, 1.0), (0.95, 0, 0, 0.0)],
)
def test_operating_point_applied_to_written_predictions(case, min_score, found, false_positives, dsc):
    report = LesionEvaluation(
        str(case / "datalist.json"), str(case), str(case / "preds"), str(case / "out.json"), min_score=min_score
    ).run()
    (result,) = report["per_case"]
    assert (result["found"], result["false_positives"]) == (found, false_positives)
    assert result["dsc"] == pytest.approx(dsc)
    # the scores cover every written lesion whatever the operating point: the FROC reaches below it
    assert result["lesion_scores"] == [pytest.approx(0.9)] and result["false_positive_scores"] == [pytest.approx(0.6)]
    assert report["froc"][-1]["sensitivity"] == 1.0 and report["settings"]["min_score"] == min_score
