"""The shipped model (models/model.pt): safe loading, its recorded identity, and what it finds on a held-out scan.

The bars come from the measured result in docs/README.md ("Performance") with a margin: they catch a model that no
longer finds the held-out nodule or that floods the scan with false positives, not small numerical drift.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from bundle.findings import label_lesions
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import LoadImage

from tests.conftest import ROOT

MODEL = ROOT / "models/model.pt"
CALIBRATION = ROOT / "models/calibration.json"
CONFIGS = [ROOT / "configs/inference.yaml", ROOT / "configs/small.yaml"]
# Measured on sample_data/lung1 with the shipped operating point (docs/README.md, "Performance"): Dice 0.818, the
# nodule as the only lesion. The bars leave a margin for numerical drift, not for a different model.
MIN_DICE = 0.65
MAX_FALSE_POSITIVES = 2


def test_weights_load_with_weights_only_into_the_shipped_configuration():
    assert MODEL.stat().st_size < 50 * 2**20, "too large for the git repository"
    state = torch.load(MODEL, map_location="cpu", weights_only=True)
    assert set(state) == {"glance", "focus"}
    parser = ConfigParser()
    parser.read_config([str(c) for c in CONFIGS])
    for key, net_id in (("glance", "glance_def"), ("focus", "network_def")):
        net = parser.get_parsed_content(net_id)
        net.load_state_dict(state[key])  # strict: every tensor present and of the configured shape
        assert all(torch.isfinite(p).all() for p in net.parameters())


def test_model_card_sha256_and_calibrated_operating_point_are_the_shipped_ones():
    """docs/README.md names the file by its sha256; the operating point (configs/operating_point.yaml, which
    small.yaml reads) is the calibration record's, made with these weights."""
    digest = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert digest in (ROOT / "docs/README.md").read_text()
    record = json.loads(CALIBRATION.read_text())
    assert record["weights"]["sha256"] == digest and record["weights"]["status"] == "trained"
    parser = ConfigParser()
    parser.read_config([str(c) for c in CONFIGS])
    assert parser.get_parsed_content("glance_threshold") == record["result"]["threshold"]
    assert parser.get_parsed_content("lesion_min_score") == record["lesion_result"]["min_score"]


def test_shipped_model_finds_the_held_out_nodule(tmp_path):
    """sample_data/lung1 (pyradiomics lung1, never used in training or tuning): the README's main job."""
    scan = ROOT / "sample_data/lung1/lung1_image.nrrd"
    wf = ConfigWorkflow(
        config_file=[str(c) for c in CONFIGS],
        meta_file=str(ROOT / "configs/metadata.json"),
        logging_file=str(ROOT / "configs/logging.conf"),
        workflow_type="inference",
        bundle_root=str(ROOT),
        input_path=str(scan),
        output_dir=str(tmp_path),
        device="$torch.device('cpu')",
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    case = tmp_path / "lung1_image"
    findings = json.loads((case / "lung1_image_findings.json").read_text())
    assert findings["weights"]["status"] == "trained"
    assert findings["weights"]["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    pred_image = LoadImage(image_only=True)(str(case / "lung1_image_lesion.nii.gz"))
    numbers = np.asarray(pred_image)
    pred = numbers > 0
    truth = (
        np.asarray(LoadImage(image_only=True, reader="ITKReader")(str(ROOT / "sample_data/lung1/lung1_label.nrrd"))) > 0
    )
    assert pred.shape == truth.shape
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    components, count = label_lesions(pred)
    hits = set(np.unique(components[truth])) - {0}
    false_positives = count - len(hits)
    print(
        f"lung1: Dice {dice:.3f}, {count} components, {false_positives} false positive, "
        f"keep fraction {findings['glance_focus']['keep_fraction']:.3f}"
    )
    assert hits, "the nodule was missed"
    assert dice >= MIN_DICE
    assert false_positives <= MAX_FALSE_POSITIVES
    assert findings["lesion_count"] == count
    assert sorted(set(np.unique(numbers).tolist()) - {0}) == [les["number"] for les in findings["lesions"]]
    assert (numbers[truth] == 1).any(), "the most suspicious finding (lesion 1) is not the nodule"
    assert all(les[findings["lesion_score"]] >= findings["lesion_min_score"] for les in findings["lesions"])


def test_metadata_eval_metrics_are_the_recorded_test_split_figures():
    """eval_metrics repeats the committed records of the shipped model on the test split (docs/results/), computed
    by bundle.evaluation.headline_metrics: a figure changed by hand, or a record of other weights, fails here."""
    from bundle.evaluation import headline_metrics

    evaluation = json.loads((ROOT / "docs/results/evaluation_test.json").read_text())
    glance = json.loads((ROOT / "docs/results/glance_test.json").read_text())
    assert glance["weights"]["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert glance["split"] == evaluation["settings"]["split"] == "test"
    meta = json.loads((ROOT / "configs/metadata.json").read_text())
    assert meta["eval_metrics"]["held_out_real_test_split"] == headline_metrics(evaluation, glance)
