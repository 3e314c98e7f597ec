"""Glance threshold calibration: the choice rule, the config line rewrite, and one real run on the validation scan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bundle.calibrate import choose_lesion_score, choose_threshold, main, rewrite_threshold_line
from bundle.checkpoint import WeightsError
from bundle.pipeline import build_pipeline
from bundle.screening import ExitStatus
from monai.bundle import ConfigParser

from tests.conftest import ROOT, held_by_another_process, reduced_datalist

INFERENCE = ROOT / "configs/inference.yaml"
SMALL = ROOT / "configs/small.yaml"

# 4 lesion windows, 4 lesion-free ones.
SCORES = [0.9, 0.8, 0.3, 0.6, 0.1, 0.5, 0.85, 0.2]
LABELS = [True, True, True, True, False, False, False, False]


@pytest.mark.parametrize(
    "target,threshold,sensitivity,specificity,kept",
    [
        (1.0, 0.3, 1.0, 0.5, 6),  # target 1: the smallest lesion score
        (0.97, 0.3, 1.0, 0.5, 6),  # ceil(0.97 * 4) = 4 lesion windows needed
        (0.5, 0.8, 0.5, 0.75, 3),  # 2 lesion windows: the second highest lesion score
    ],
)
def test_choose_threshold_known_answers(target, threshold, sensitivity, specificity, kept):
    r = choose_threshold(SCORES, LABELS, target)
    assert r["threshold"] == threshold
    assert r["sensitivity"] == sensitivity and r["specificity"] == specificity
    assert r["windows_kept"] == kept and r["keep_fraction"] == kept / 8
    assert (r["windows"], r["lesion_windows"], r["lesion_free_windows"]) == (8, 4, 4)
    assert r["roc_auc"] == pytest.approx(12 / 16)  # lesion above lesion-free in 12 of the 16 pairs


def test_choose_threshold_exact_target_is_not_lost_to_rounding():
    """0.97 * 100 is 97.00000000000001 in floating point: 97 lesion windows must suffice, not 98."""
    r = choose_threshold(np.arange(1, 101) / 100, np.ones(100, bool), 0.97)
    assert r["threshold"] == 0.04 and r["sensitivity"] == 0.97 and r["lesion_windows_kept"] == 97
    assert r["roc_auc"] is None  # no lesion-free windows to rank against


@pytest.mark.parametrize(
    "target,min_score,found,fp_per_scan",
    [
        (0.5, 0.9, 2, 1 / 2),  # 2 of 4 lesions: the second highest lesion score; one false positive (0.95) is left
        (0.75, 0.6, 3, 3 / 2),  # 3 of 4: the third highest; 0.95, 0.7 and 0.6 are left
    ],
)
def test_choose_lesion_score_known_answers(target, min_score, found, fp_per_scan):
    r = choose_lesion_score([0.99, 0.6, 0.0, 0.9], [0.95, 0.3, 0.7, 0.6, 0.5], 2, target)
    assert r["min_score"] == min_score and r["lesions_found"] == found and r["sensitivity"] == found / 4
    assert r["false_positives_per_scan"] == fp_per_scan
    assert r["without_min_score"] == {"sensitivity": 3 / 4, "false_positives_per_scan": 5 / 2}


def test_choose_lesion_score_refuses_a_target_the_missed_lesions_rule_out():
    with pytest.raises(ValueError, match="out of reach: 3 of 4"):
        choose_lesion_score([0.99, 0.6, 0.0, 0.9], [0.5], 1, 1.0)
    with pytest.raises(ValueError, match="no labelled lesions"):
        choose_lesion_score([], [0.5], 1, 0.9)


@pytest.mark.parametrize(
    "budget,min_score,found,fp_per_scan",
    [
        (0.0, 0.99, 1, 0.0),  # no false positive allowed: just above the highest (0.95)
        (0.5, 0.9, 2, 0.5),  # 1 of the 2 scans' false positives allowed: the next score above 0.7
        (1.0, 0.7, 2, 1.0),  # 2 allowed: 0.95 and 0.7 stay
        (4.0, 0.3, 3, 2.5),  # all 5 allowed: the smallest score
    ],
)
def test_choose_lesion_score_by_false_positive_budget(budget, min_score, found, fp_per_scan):
    r = choose_lesion_score([0.99, 0.6, 0.0, 0.9], [0.95, 0.3, 0.7, 0.6, 0.5], 2, max_fp_per_scan=budget)
    assert r["min_score"] == min_score and r["lesions_found"] == found
    assert r["false_positives_per_scan"] == fp_per_scan <= budget
    froc = {p["fp_per_scan"]: p["sensitivity"] for p in r["froc"]}
    assert froc == {0.125: 0.25, 0.25: 0.25, 0.5: 0.5, 1.0: 0.5, 2.0: 0.75, 4.0: 0.75, 8.0: 0.75}


def test_fp_budget_with_a_lesion_tied_to_a_false_positive_keeps_neither():
    r = choose_lesion_score([0.9], [0.9], 1, max_fp_per_scan=0)
    assert r["min_score"] > 0.9 and r["lesions_found"] == 0 and r["false_positives_per_scan"] == 0
    with pytest.raises(ValueError, match="exactly one"):
        choose_lesion_score([0.9], [0.9], 1, target_sensitivity=0.5, max_fp_per_scan=1)


def test_choose_threshold_ties_are_all_kept():
    """Windows tied at t are all kept (p >= t), so sensitivity may exceed the target."""
    r = choose_threshold([0.7, 0.7, 0.7, 0.2, 0.7, 0.1], [True, True, True, True, False, False], 0.5)
    assert r["threshold"] == 0.7
    assert r["sensitivity"] == 0.75 and r["lesion_windows_kept"] == 3
    assert r["specificity"] == 0.5 and r["windows_kept"] == 4


def test_choose_threshold_is_the_largest_that_reaches_the_target():
    rng = np.random.default_rng(0)
    for target in (0.5, 0.9, 0.97, 1.0):
        scores, labels = rng.random(200).astype(np.float32), rng.random(200) < 0.3
        r = choose_threshold(scores, labels, target)
        assert r["sensitivity"] >= target
        assert (scores[labels] >= np.nextafter(r["threshold"], 2)).mean() < target


def test_choose_threshold_without_lesion_windows_or_bad_target_fails():
    with pytest.raises(ValueError, match="no lesion windows"):
        choose_threshold([0.2, 0.9], [False, False], 0.97)
    with pytest.raises(ValueError, match="target sensitivity"):
        choose_threshold(SCORES, LABELS, 0.0)


@pytest.mark.parametrize("value", [0.123456789, 1e-05, 1.0])
def test_rewrite_changes_only_the_threshold_line(tmp_path, value):
    config = tmp_path / "inference.yaml"
    shutil.copy(INFERENCE, config)
    before = INFERENCE.read_text().splitlines()
    rewrite_threshold_line(config, value, "calibrated: test, see calibration.json")
    after = config.read_text().splitlines()
    assert len(after) == len(before)
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert len(changed) == 1 and before[changed[0]].startswith("glance_threshold:")
    assert after[changed[0]].endswith("  # calibrated: test, see calibration.json")
    parser = ConfigParser()
    parser.read_config([str(config)])
    parsed = parser.get_parsed_content("glance_threshold")
    assert isinstance(parsed, float) and parsed == value


@pytest.mark.parametrize("edit", ["duplicate", "missing"])
def test_rewrite_refuses_without_exactly_one_threshold_line(tmp_path, edit):
    lines = INFERENCE.read_text().splitlines(keepends=True)
    if edit == "duplicate":
        lines.append("glance_threshold: 0.3\n")
    else:
        lines = [line for line in lines if not line.startswith("glance_threshold:")]
    config = tmp_path / "inference.yaml"
    config.write_text("".join(lines))
    with pytest.raises(ValueError, match="exactly one"):
        rewrite_threshold_line(config, 0.4, "calibrated")
    assert config.read_text() == "".join(lines)


def _args(shared_data, tmp_path, *extra):
    return [
        "--config_file",
        str(INFERENCE),
        "--config_file",
        str(SMALL),
        "--datalist",
        str(reduced_datalist(tmp_path / "datalist_reduced.json")),
        "--dataset_dir",
        str(shared_data),
        "--split",
        "validation",
        "--ckpt_path",
        str(tmp_path / "no_weights.pt"),
        "--write_config",
        str(tmp_path / "inference.yaml"),
        "--output",
        str(tmp_path / "calibration.json"),
        *extra,
    ]


def test_real_calibration_on_the_validation_scan(shared_data, tmp_path, capsys):
    """STS_003 (a thigh crop, 4 windows) with the small networks, untrained: JSON record and the config's line."""
    config = tmp_path / "inference.yaml"
    shutil.copy(INFERENCE, config)
    with pytest.raises(WeightsError):  # build_pipeline unwraps it from the config parser's error
        main(_args(shared_data, tmp_path))  # untrained weights need --allow_untrained, to run or to write
    assert config.read_text() == INFERENCE.read_text()

    main(_args(shared_data, tmp_path, "--allow_untrained"))
    out = capsys.readouterr()
    record = json.loads((tmp_path / "calibration.json").read_text())
    parser = ConfigParser()
    parser.read_config([str(INFERENCE), str(SMALL)])
    inferer = parser.get_parsed_content("inferer")
    (case,) = record["cases"]
    assert case["id"] == "STS_003"
    assert len(case["scores"]) == len(case["labels"]) == len(inferer.tile(case["preprocessed_shape"]).slices)
    assert any(case["labels"])
    result = record["result"]
    assert result["windows"] == len(case["scores"]) and result["lesion_windows"] == sum(case["labels"])
    assert result["sensitivity"] >= record["result"]["target_sensitivity"] == 0.97
    assert record["weights"]["status"] == "untrained" and record["split"] == "validation"
    assert "WARNING" in out.err and "UNTRAINED" in out.err
    parsed = ConfigParser()
    parsed.read_config([str(config)])
    assert parsed.get_parsed_content("glance_threshold") == result["threshold"]
    (line,) = [line for line in config.read_text().splitlines() if line.startswith("glance_threshold:")]
    assert "UNTRAINED" in line and "validation" in line and str(tmp_path / "calibration.json") in line


def test_real_lesion_calibration_screens_with_the_calibrated_threshold(shared_data, tmp_path):
    """--lesion_target_sensitivity: STS_003 screened as inference does, lesion_min_score from its one lesion's score.

    Untrained Focus gives probabilities near 0.5 everywhere; a voxel threshold of 0.2 (a third config) makes the
    sarcoma part of a predicted lesion, so the plumbing, not the model, is what is checked.
    """
    config = tmp_path / "inference.yaml"
    shutil.copy(INFERENCE, config)
    low = tmp_path / "low_threshold.yaml"
    low.write_text("lesion_probability_threshold: 0.2\n")
    args = _args(shared_data, tmp_path, "--allow_untrained", "--lesion_target_sensitivity", "1.0")
    args[4:4] = ["--config_file", str(low)]
    main(args)
    record = json.loads((tmp_path / "calibration.json").read_text())
    (screened,) = record["screened_cases"]
    (case,) = record["cases"]
    kept = sum(score >= record["result"]["threshold"] for score in case["scores"])
    assert screened["keep_fraction"] == pytest.approx(kept / len(case["scores"]))  # the calibrated Glance threshold
    (score,) = screened["lesion_scores"]  # STS_003 holds one sarcoma
    lesion = record["lesion_result"]
    assert 0.2 <= score <= 1 and lesion["min_score"] == score and lesion["sensitivity"] == 1.0
    assert lesion["false_positives_per_scan"] == sum(s >= score for s in screened["false_positive_scores"])
    parsed = ConfigParser()
    parsed.read_config([str(config)])
    assert parsed.get_parsed_content("lesion_min_score") == score
    assert parsed.get_parsed_content("glance_threshold") == record["result"]["threshold"]
    (line,) = [line for line in config.read_text().splitlines() if line.startswith("lesion_min_score:")]
    assert "UNTRAINED" in line and "lesion sensitivity >= 1.0" in line


def test_in_memory_pipeline_claims_no_output_folder(tmp_path):
    """Calibration, the benchmark and the Deploy app screen in memory: building their pipeline neither creates the
    config's output folder, nor needs it writable (a read-only bundle folder), nor is refused one that a screening run
    holds (flock(1) here), as `run` is."""
    missing, held = tmp_path / "missing", tmp_path / "held"
    held.mkdir()
    with held_by_another_process(held):
        for folder in (missing, Path("/proc/no-such-folder/eval"), held):
            pipeline = build_pipeline([INFERENCE], {"output_dir": str(folder)})
            assert pipeline.weights["status"] == "trained"  # the shipped weights, loaded
        assert not missing.exists()
        with pytest.raises(SystemExit) as refused:  # what `run` does first: the held folder is refused
            pipeline.parser.get_parsed_content("setup")
        assert refused.value.code == ExitStatus.OUTPUT_IN_USE
