"""Calibrate the Glance threshold on labelled validation scans for a target window-level sensitivity.

method.md section 4 makes ``glance_threshold`` a calibrated bundle parameter. This command scores every window of
every labelled scan of a datalist split with Glance exactly as inference tiles and scores them (the config's
preprocessing, the inferer's ``tile`` and ``glance_scores``), calls a window a lesion window when it holds a lesion
voxel of the label resampled onto the preprocessed grid, and picks the largest threshold that keeps at least the
target fraction of lesion windows. With ``--lesion_target_sensitivity`` or ``--lesion_max_fp_per_scan`` it then
screens the same scans with that threshold, as inference does, and picks the detection operating point
``lesion_min_score`` (a predicted lesion is reported when its ``lesion_score`` reaches it): the largest that
still finds the target fraction of the labelled lesions, or the smallest that leaves at most the given false
positives per scan; the FROC table (sensitivity at 1/8 to 8 false positives per scan) is printed and recorded.
The scores, the choices and how they were made go to a JSON record; with ``--write_config`` the
``glance_threshold:`` (and ``lesion_min_score:``) line of the machine-written operating-point config
(``configs/operating_point.yaml``, which ``configs/small.yaml`` reads) is set to the value, with a comment pointing at
the record. Example (run from the bundle root)::

    python -m bundle.calibrate --config_file configs/inference.yaml --config_file configs/small.yaml \\
        --split validation --target_sensitivity 0.97 --lesion_max_fp_per_scan 1 --output calibration.json \\
        --write_config configs/operating_point.yaml
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from bundle.data import list_inputs
from bundle.findings import LESION_SCORES
from bundle.metrics import froc, lesion_scores, min_score_for_fp_budget
from bundle.pipeline import ScreeningPipeline, build_pipeline
from bundle.writers import atomic_path, print_and_record
from monai.metrics import compute_roc_auc
from monai.transforms import LoadImage, ResampleToMatch

__all__ = [
    "choose_lesion_score",
    "choose_threshold",
    "format_threshold",
    "main",
    "rewrite_threshold_line",
    "window_labels",
]

logger = logging.getLogger("gf_screen.calibrate")

DEFAULT_CONFIGS = ("configs/inference.yaml",)


def choose_threshold(scores: Sequence[float], labels: Sequence[bool], target_sensitivity: float) -> dict:
    """The largest t with window sensitivity (lesion windows with p >= t) >= target, and the figures at t.

    The largest such t keeps the fewest windows for Focus; it is always a lesion window's score (the k-th highest,
    k = ceil(target * lesion windows)), so ties at t are all kept and the sensitivity may exceed the target. The
    window-level ROC AUC (MONAI's ``compute_roc_auc``) says whether Glance ranks lesion windows first at all: a
    threshold can be found for any scores, a useful one only when the AUC is well above 0.5.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels.")
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}.")
    positive, negative = scores[labels], scores[~labels]
    if positive.size == 0:
        raise ValueError("no lesion windows: a sensitivity cannot be calibrated without lesions in the data.")
    # round() so that e.g. 0.97 * 100 = 97.00000000000001 asks for 97 windows, not 98.
    k = math.ceil(round(target_sensitivity * positive.size, 9))
    threshold = float(np.sort(positive)[::-1][k - 1])
    pos_kept = int((positive >= threshold).sum())
    neg_dropped = int((negative < threshold).sum())
    kept = int((scores >= threshold).sum())
    auc = (
        float(compute_roc_auc(torch.as_tensor(scores), torch.as_tensor(labels, dtype=torch.long)))
        if negative.size
        else None
    )
    return {
        "threshold": threshold,
        "target_sensitivity": target_sensitivity,
        "sensitivity": pos_kept / positive.size,
        "specificity": neg_dropped / negative.size if negative.size else None,
        "keep_fraction": kept / scores.size,
        "roc_auc": auc,
        "windows": int(scores.size),
        "windows_kept": kept,
        "lesion_windows": int(positive.size),
        "lesion_windows_kept": pos_kept,
        "lesion_free_windows": int(negative.size),
        "lesion_free_windows_dropped": neg_dropped,
    }


def choose_lesion_score(
    lesion_scores: Sequence[float],
    false_positive_scores: Sequence[float],
    scans: int,
    target_sensitivity: float | None = None,
    max_fp_per_scan: float | None = None,
) -> dict:
    """The detection operating point: a minimum lesion score t, by a sensitivity target or a false-positive budget.

    ``lesion_scores`` holds, per labelled lesion, the highest score of the predicted lesions touching it (0 when
    none does: missed at any t); ``false_positive_scores`` the scores of predicted lesions touching none. With
    ``target_sensitivity``, t is the largest that finds the target fraction (the k-th highest lesion score,
    k = ceil(target * lesions), as for the Glance threshold); a target that missed lesions rule out is an error. With
    ``max_fp_per_scan``, t is the smallest that leaves at most that many false positives per scan (the most sensitive
    point within the budget, as CAD systems are set on their FROC curve). The FROC table (sensitivity at 1/8 to 8
    false positives per scan) comes with either.
    """
    found = np.asarray(lesion_scores, dtype=np.float64).ravel()
    false = np.asarray(false_positive_scores, dtype=np.float64).ravel()
    if found.size == 0:
        raise ValueError("no labelled lesions: a lesion sensitivity cannot be calibrated without lesions.")
    if (target_sensitivity is None) == (max_fp_per_scan is None):
        raise ValueError("give exactly one of target_sensitivity and max_fp_per_scan.")
    if target_sensitivity is not None:
        if not 0 < target_sensitivity <= 1:
            raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}.")
        k = math.ceil(round(target_sensitivity * found.size, 9))
        threshold = float(np.sort(found)[::-1][k - 1])
        if threshold <= 0:
            raise ValueError(
                f"lesion sensitivity {target_sensitivity} is out of reach: {int((found > 0).sum())} of {found.size} "
                "lesions are found at all at the voxel threshold."
            )
    else:
        if max_fp_per_scan < 0:
            raise ValueError(f"max_fp_per_scan must be >= 0, got {max_fp_per_scan}.")
        threshold = min_score_for_fp_budget(false, found, max_fp_per_scan * scans)

    def found_at(t: float) -> int:
        return int(((found >= t) & (found > 0)).sum())

    kept, dropped = found[(found >= threshold) & (found > 0)], false[false < threshold]

    return {
        "min_score": threshold,
        "target_sensitivity": target_sensitivity,
        "max_fp_per_scan": max_fp_per_scan,
        "sensitivity": found_at(threshold) / found.size,
        "false_positives_per_scan": float((false >= threshold).sum() / scans),
        "lesions": int(found.size),
        "lesions_found": found_at(threshold),
        "scans": int(scans),
        # the margin on each side of the operating point: how far a new scan's scores may move before it matters
        "nearest_kept_lesion_score": float(kept.min()) if kept.size else None,
        "nearest_dropped_false_positive_score": float(dropped.max()) if dropped.size else None,
        "without_min_score": {
            "sensitivity": float((found > 0).mean()),
            "false_positives_per_scan": float(false.size / scans),
        },
        "froc": froc(found, false, scans),
    }


def window_labels(label: torch.Tensor, slices: Sequence[tuple[slice, ...]]) -> list[bool]:
    """Window i is a lesion window when it holds any lesion voxel of ``label`` (C, *spatial) on the image grid."""
    lesion = label > 0
    return [bool(lesion[(slice(None), *s)].any()) for s in slices]


def format_threshold(value: float) -> str:
    """Positional decimal that reads back as exactly ``value``: PyYAML reads ``1e-05`` (no dot) as a string."""
    text = np.format_float_positional(float(value), unique=True, trim="0")
    assert float(text) == float(value), (text, value)
    return text


def rewrite_threshold_line(
    config_file: str | os.PathLike, value: float, comment: str, key: str = "glance_threshold"
) -> Path:
    """Set ``<key>:`` in a YAML config, leaving every other line (comments included) as it is.

    Text surgery rather than a YAML dump, which would drop the comments. Refuses unless the top-level line occurs
    exactly once; the new file replaces the old one atomically (temporary file beside it, then ``os.replace``).
    """
    path = Path(config_file)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    pattern = re.compile(rf"^{re.escape(key)}\s*:")
    hits = [i for i, line in enumerate(lines) if pattern.match(line)]
    if len(hits) != 1:
        raise ValueError(f"{path}: expected exactly one top-level '{key}:' line, found {len(hits)}.")
    i = hits[0]
    ending = lines[i][len(lines[i].rstrip("\r\n")) :]
    lines[i] = f"{key}: {format_threshold(value)}  # {comment}{ending}"
    with atomic_path(path, ".tmp") as tmp:
        tmp.write_text("".join(lines), encoding="utf-8", newline="")
        shutil.copymode(path, tmp)
    return path


OPERATING_POINT_HEADER = """\
# The operating point of the shipped weights, machine-written by `python -m bundle.calibrate --write_config`
# (each value's comment names its record). Do not edit by hand: recalibrate. configs/inference.yaml reads this file.
"""


def write_operating_point_line(
    config_file: str | os.PathLike, value: float, comment: str, key: str = "glance_threshold"
) -> Path:
    """``rewrite_threshold_line``, or the line appended when the file lacks it (a new file starts with a header)."""
    path = Path(config_file)
    text = path.read_text(encoding="utf-8") if path.exists() else OPERATING_POINT_HEADER
    if any(line.startswith(f"{key}:") for line in text.splitlines()):
        return rewrite_threshold_line(path, value, comment, key)
    line = f"{key}: {format_threshold(value)}  # {comment}\n"
    with atomic_path(path, ".tmp") as tmp:
        tmp.write_text(text + ("" if text.endswith("\n") else "\n") + line, encoding="utf-8")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bundle.calibrate",
        description=(
            "Pick glance_threshold: the largest Glance probability threshold that keeps at least the target fraction "
            "of lesion windows on a labelled datalist split (method.md section 4). Run from the bundle root."
        ),
        epilog=(
            "example: python -m bundle.calibrate --config_file configs/inference.yaml --config_file "
            "configs/small.yaml --target_sensitivity 0.97 --write_config configs/operating_point.yaml"
        ),
    )
    parser.add_argument(
        "--config_file",
        action="append",
        help="bundle config, repeatable, merged in order (default: configs/inference.yaml); add configs/small.yaml "
        "for the CPU-size networks",
    )
    parser.add_argument("--datalist", help="datalist JSON (default: configs/datalist.json under the bundle root)")
    parser.add_argument("--dataset_dir", help="root of the datalist's paths (default: the config's dataset_dir)")
    parser.add_argument("--split", default="validation", help="datalist split to calibrate on (default: validation)")
    parser.add_argument(
        "--target_sensitivity", type=float, default=0.97, help="window-level sensitivity to reach (default 0.97)"
    )
    lesion = parser.add_mutually_exclusive_group()
    lesion.add_argument(
        "--lesion_target_sensitivity",
        type=float,
        help="also screen the split with the calibrated glance_threshold and pick lesion_min_score, the largest "
        "minimum lesion score that finds this fraction of the labelled lesions",
    )
    lesion.add_argument(
        "--lesion_max_fp_per_scan",
        type=float,
        help="as --lesion_target_sensitivity, but pick the smallest lesion_min_score that leaves at most this many "
        "false positives per scan",
    )
    parser.add_argument("--ckpt_path", help="weights file (default: the config's ckpt_path, models/model.pt)")
    parser.add_argument(
        "--allow_untrained",
        action="store_true",
        help="run with seeded random weights when there is no checkpoint; also needed to write such a "
        "(meaningless) threshold into a config",
    )
    parser.add_argument(
        "--write_config",
        help="set the glance_threshold line (and lesion_min_score with a lesion option) of this YAML config, "
        "normally configs/operating_point.yaml (created when missing)",
    )
    parser.add_argument("--output", default="calibration.json", help="JSON record (default: calibration.json)")
    return parser


def _score_split(pipeline: ScreeningPipeline, items: list[dict]) -> list[dict]:
    """Glance's score and the lesion label of every window of every item, tiled and scored as inference does."""
    load_label = LoadImage(image_only=True, ensure_channel_first=True, reader="ITKReader")
    cases = []
    for item in items:
        data = pipeline.preprocessing(dict(item))
        image = data["image"]
        label = ResampleToMatch(mode="nearest")(load_label(item["label"]), image)
        tiling = pipeline.inferer.tile(image.shape[1:])
        # SpatialPadd pads every scan to >= roi_size, so the inferer pads nothing and window slices index the label.
        assert not any(tiling.pad), f"{item['id']}: preprocessed shape {tuple(image.shape[1:])} is below the roi"
        with torch.autocast(pipeline.device.type, enabled=pipeline.amp):  # as the evaluator (amp) runs the inferer
            scores = pipeline.inferer.glance_scores(image.as_tensor()[None].to(pipeline.device), tiling)
        labels = window_labels(label.as_tensor(), tiling.slices)
        logger.info("%s: %d windows, %d with lesion", item["id"], len(labels), sum(labels))
        cases.append(
            {
                "id": item["id"],
                "image": item["image"],
                "label": item["label"],
                "region": data.get("region"),
                "preprocessed_shape": [int(s) for s in image.shape[1:]],
                "lesion_voxels": int((label > 0).sum()),
                "scores": [float(s) for s in scores.float()],
                "labels": labels,
            }
        )
    return cases


def _screen_split(configs: list[str], overrides: dict, items: list[dict]) -> list[dict]:
    """Screen the items as inference does, in memory, and score each labelled lesion (see ``lesion_scores``).

    A pipeline with the calibrated glance_threshold and nothing dropped by lesion_min_score; its lesion map numbers
    the lesions as the findings do, so each lesion's score is read straight from the findings.
    """
    pipeline = build_pipeline(configs, {**overrides, "lesion_min_score": "@lesion_probability_threshold"})
    score = pipeline.get("lesion_score")
    load = LoadImage(image_only=True, reader="ITKReader")
    cases = []
    for item in items:
        out = pipeline.screen(item)
        findings, numbers = out["findings"], np.asarray(out["pred"][0])
        gt = np.asarray(load(item["label"])) > 0
        case = {"id": item["id"], "keep_fraction": findings["glance_focus"]["keep_fraction"]}
        for name in (score, *sorted(set(LESION_SCORES) - {score})):  # the configured score first
            scores = {les["number"]: les[name] for les in findings["lesions"]}
            found, false_positives = lesion_scores(numbers, scores, gt)
            prefix = "" if name == score else f"{name}_"
            case.update({f"{prefix}lesion_scores": found, f"{prefix}false_positive_scores": false_positives})
        logger.info("%s: %d lesion(s), %d false positive(s)", item["id"], len(found), len(false_positives))
        cases.append(case)
    return cases


def _summary(record: dict) -> str:
    r = record["result"]
    spec = (
        "n/a (no lesion-free windows)"
        if r["specificity"] is None
        else f"{r['specificity']:.3f} ({r['lesion_free_windows_dropped']}/{r['lesion_free_windows']} lesion-free "
        "windows dropped)"
    )
    return "\n".join(
        [
            f"Glance threshold calibration on {record['split']}: {len(record['cases'])} scan(s), {r['windows']} "
            f"windows | configs {' + '.join(record['configs'])} | weights {record['weights']['status']}",
            f"  target window sensitivity {r['target_sensitivity']}",
            f"  threshold     {format_threshold(r['threshold'])}",
            f"  sensitivity   {r['sensitivity']:.3f} ({r['lesion_windows_kept']}/{r['lesion_windows']} lesion windows "
            "kept)",
            f"  specificity   {spec}",
            f"  keep fraction {r['keep_fraction']:.3f} ({r['windows_kept']}/{r['windows']} windows)",
            "  ROC AUC       "
            + ("n/a" if r["roc_auc"] is None else f"{r['roc_auc']:.3f} (window ranking; 0.5 is chance)"),
            *_lesion_summary(record.get("lesion_result"), record.get("lesion_score")),
            *(
                f"  with {name} instead: min score {_score_text(r.get('min_score'))}, sensitivity "
                f"{r.get('sensitivity', float('nan')):.3f}, margin {_score_text(r.get('nearest_kept_lesion_score'))} "
                f"(kept lesion) / {_score_text(r.get('nearest_dropped_false_positive_score'))} (dropped FP)"
                for name, r in (record.get("lesion_result_other_scores") or {}).items()
            ),
        ]
    )


def _lesion_goal(target_sensitivity: float | None, max_fp_per_scan: float | None) -> str:
    if target_sensitivity is not None:
        return f"lesion sensitivity >= {target_sensitivity}"
    return f"<= {max_fp_per_scan} false positives per scan"


def _lesion_rule(args: argparse.Namespace) -> str | None:
    if args.lesion_target_sensitivity is None and args.lesion_max_fp_per_scan is None:
        return None
    choice = (
        "largest lesion_min_score t with (lesions with score >= t) / lesions >= lesion_target_sensitivity"
        if args.lesion_target_sensitivity is not None
        else "smallest lesion_min_score t with (false positives with score >= t) / scans <= lesion_max_fp_per_scan"
    )
    return (
        "screen with the calibrated glance_threshold; a labelled lesion's score is the highest lesion_score (the "
        "config's: max_probability or mean_probability) of the predicted lesions overlapping it (0 when none does), a "
        "false positive's its own; " + choice
    )


def _score_text(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def _lesion_summary(r: dict | None, score: str | None = None) -> list[str]:
    if r is None:
        return []
    base = r["without_min_score"]
    froc = ", ".join(f"{p['fp_per_scan']:g}: {p['sensitivity']:.3f}" for p in r["froc"])
    return [
        f"Lesion operating point, screening with that threshold: {r['lesions']} lesion(s) in {r['scans']} scan(s)"
        + (f", score {score}" if score else ""),
        f"  goal: {_lesion_goal(r['target_sensitivity'], r['max_fp_per_scan'])}",
        f"  lesion_min_score {format_threshold(r['min_score'])}",
        f"  sensitivity   {r['sensitivity']:.3f} ({r['lesions_found']}/{r['lesions']} lesions found)",
        f"  FP per scan   {r['false_positives_per_scan']:.2f} (without a minimum score: sensitivity "
        f"{base['sensitivity']:.3f}, {base['false_positives_per_scan']:.2f} FP per scan)",
        f"  margin        nearest kept lesion {_score_text(r['nearest_kept_lesion_score'])}, nearest dropped false "
        f"positive {_score_text(r['nearest_dropped_false_positive_score'])}",
        f"  FROC (FP per scan: sensitivity) {froc}",
    ]


def _lesion_operating_point(args: argparse.Namespace, screened: list[dict], score: str) -> tuple:
    """The lesion_min_score by the asked rule on ``score`` (or the error that rules it out), and the same rule on the
    other scores, for comparison only: which one separates lesions from false positives."""

    def choose(prefix: str) -> dict:
        return choose_lesion_score(
            [s for c in screened for s in c[f"{prefix}lesion_scores"]],
            [s for c in screened for s in c[f"{prefix}false_positive_scores"]],
            len(screened),
            target_sensitivity=args.lesion_target_sensitivity,
            max_fp_per_scan=args.lesion_max_fp_per_scan,
        )

    lesion_result, lesion_error, other_scores = None, None, {}
    try:
        lesion_result = choose("")
    except ValueError as error:  # unreachable target: keep the screening's record, write no config
        lesion_error = str(error)
    for name in sorted(set(LESION_SCORES) - {score}):
        try:
            other_scores[name] = choose(f"{name}_")
        except ValueError as error:
            other_scores[name] = {"error": str(error)}
    return lesion_result, lesion_error, other_scores


def _write_operating_point(args: argparse.Namespace, record: dict) -> None:
    """Write the calibrated values into ``--write_config`` (the machine-written configs/operating_point.yaml)."""
    untrained = record["weights"].get("status") != "trained"
    trained_note = "calibrated on UNTRAINED weights" if untrained else "calibrated"
    day = record["date"][:10]
    result, lesion_result = record["result"], record["lesion_result"]
    comment = f"{trained_note}: window sensitivity >= {args.target_sensitivity}, {args.split}, {day}, see "
    write_operating_point_line(args.write_config, result["threshold"], comment + str(args.output))
    if untrained:
        banner = "!" * 100
        print(
            f"{banner}\nWARNING: {args.write_config} now holds a glance_threshold calibrated on UNTRAINED "
            f"(random) weights: it means nothing for a trained model. Recalibrate once weights exist.\n{banner}",
            file=sys.stderr,
            flush=True,
        )
    print(f"set glance_threshold: {format_threshold(result['threshold'])} in {args.write_config}")
    if lesion_result is not None:
        goal = _lesion_goal(args.lesion_target_sensitivity, args.lesion_max_fp_per_scan)
        comment = f"{trained_note}: {goal}, {args.split}, {day}, see {args.output}"
        write_operating_point_line(args.write_config, lesion_result["min_score"], comment, key="lesion_min_score")
        print(f"set lesion_min_score: {format_threshold(lesion_result['min_score'])} in {args.write_config}")


def main(argv: Sequence[str] | None = None) -> dict:
    """Calibrate; prints the figures, writes the JSON record (and the config if asked) and returns the record."""
    args = build_parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    configs = args.config_file or list(DEFAULT_CONFIGS)
    overrides = {"allow_untrained": args.allow_untrained, **({"ckpt_path": args.ckpt_path} if args.ckpt_path else {})}
    # Without weights this stops here unless --allow_untrained: nothing untrained reaches a config unasked.
    pipeline = build_pipeline(configs, overrides)
    datalist = Path(args.datalist) if args.datalist else Path(pipeline.get("bundle_root")) / "configs/datalist.json"
    dataset_dir = args.dataset_dir or pipeline.get("dataset_dir")
    items = [it for it in list_inputs(datalist, dataset_dir, args.split) if it.get("label")]
    if not items:
        raise SystemExit(f"{datalist} ({args.split}): no labelled scans to calibrate on.")
    cases = _score_split(pipeline, items)
    result = choose_threshold(
        [s for c in cases for s in c["scores"]], [lab for c in cases for lab in c["labels"]], args.target_sensitivity
    )
    lesion_rule, screened, lesion = _lesion_rule(args), None, (None, None, {})
    if lesion_rule is not None:
        screened = _screen_split(configs, {**overrides, "glance_threshold": result["threshold"]}, items)
        lesion = _lesion_operating_point(args, screened, pipeline.get("lesion_score"))
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bundle.calibrate", *argv]),
        "configs": configs,
        "datalist": str(datalist),
        "dataset_dir": str(dataset_dir),
        "split": args.split,
        "weights": pipeline.weights,
        "inferer": {key: pipeline.get(key) for key in ("pixdim", "roi_size", "overlap", "amp")},
        "rule": "largest t with (lesion windows with Glance p >= t) / lesion windows >= target_sensitivity; "
        "a lesion window holds a lesion voxel of the label resampled (nearest) onto the preprocessed grid",
        "result": result,
        "lesion_rule": lesion_rule,
        "lesion_score": pipeline.get("lesion_score"),
        "lesion_result": lesion[0],
        "lesion_result_other_scores": lesion[2],
        "lesion_error": lesion[1],
        "written_to_config": None if lesion[1] else args.write_config,
        "cases": cases,
        "screened_cases": screened,
    }
    print_and_record(_summary(record), record, args.output)
    if lesion[1]:
        raise SystemExit(f"{lesion[1]} Nothing written to a config; the screening is in {args.output}.")
    if args.write_config:
        _write_operating_point(args, record)
    return record


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    main()
