"""Calibrate the Glance threshold on labelled validation scans for a target window-level sensitivity.

method.md section 4 makes ``glance_threshold`` a calibrated bundle parameter. This command scores every window of
every labelled scan of a datalist split with Glance exactly as inference tiles and scores them (the config's
preprocessing, the inferer's ``tile`` and ``glance_scores``), calls a window a lesion window when it holds a lesion
voxel of the label resampled onto the preprocessed grid, and picks the largest threshold that keeps at least the
target fraction of lesion windows. The scores, the choice and how it was made go to a JSON record; with
``--write_config`` the ``glance_threshold:`` line of a config is rewritten to the value, with a comment pointing
at the record. Example (run from the bundle root)::

    python -m bundle.calibrate --config_file configs/inference.yaml --config_file configs/small.yaml \\
        --split validation --target_sensitivity 0.97 --output calibration.json --write_config configs/inference.yaml
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
from monai.bundle import ConfigParser
from monai.metrics import compute_roc_auc
from monai.transforms import LoadImage, ResampleToMatch
from monai.utils import set_determinism

from bundle.data import list_inputs
from bundle.writers import atomic_path, atomic_write_json

__all__ = ["choose_threshold", "format_threshold", "main", "rewrite_threshold_line", "window_labels"]

logger = logging.getLogger("gf_screen.calibrate")

DEFAULT_CONFIGS = ("configs/inference.yaml",)
THRESHOLD_LINE = re.compile(r"^glance_threshold\s*:")


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


def window_labels(label: torch.Tensor, slices: Sequence[tuple[slice, ...]]) -> list[bool]:
    """Window i is a lesion window when it holds any lesion voxel of ``label`` (C, *spatial) on the image grid."""
    lesion = label > 0
    return [bool(lesion[(slice(None), *s)].any()) for s in slices]


def format_threshold(value: float) -> str:
    """Positional decimal that reads back as exactly ``value``: PyYAML reads ``1e-05`` (no dot) as a string."""
    text = np.format_float_positional(float(value), unique=True, trim="0")
    assert float(text) == float(value), (text, value)
    return text


def rewrite_threshold_line(config_file: str | os.PathLike, value: float, comment: str) -> Path:
    """Set ``glance_threshold:`` in a YAML config, leaving every other line (comments included) as it is.

    Text surgery rather than a YAML dump, which would drop the comments. Refuses unless the top-level line occurs
    exactly once; the new file replaces the old one atomically (temporary file beside it, then ``os.replace``).
    """
    path = Path(config_file)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if THRESHOLD_LINE.match(line)]
    if len(hits) != 1:
        raise ValueError(f"{path}: expected exactly one top-level 'glance_threshold:' line, found {len(hits)}.")
    i = hits[0]
    ending = lines[i][len(lines[i].rstrip("\r\n")) :]
    lines[i] = f"glance_threshold: {format_threshold(value)}  # {comment}{ending}"
    with atomic_path(path, ".tmp") as tmp:
        tmp.write_text("".join(lines), encoding="utf-8", newline="")
        shutil.copymode(path, tmp)
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
            "configs/small.yaml --target_sensitivity 0.97 --write_config configs/inference.yaml"
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
    parser.add_argument("--ckpt_path", help="weights file (default: the config's ckpt_path, models/model.pt)")
    parser.add_argument(
        "--allow_untrained",
        action="store_true",
        help="run with seeded random weights when there is no checkpoint; also needed to write such a "
        "(meaningless) threshold into a config",
    )
    parser.add_argument("--write_config", help="rewrite the glance_threshold line of this YAML config in place")
    parser.add_argument("--output", default="calibration.json", help="JSON record (default: calibration.json)")
    return parser


def _score_split(parser: ConfigParser, items: list[dict]) -> list[dict]:
    """Glance's score and the lesion label of every window of every item, tiled and scored as inference does."""
    device = torch.device(parser.get_parsed_content("device"))
    amp = bool(parser.get_parsed_content("amp"))
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    load_label = LoadImage(image_only=True, ensure_channel_first=True, reader="ITKReader")
    cases = []
    for item in items:
        data = preprocessing(dict(item))
        image = data["image"]
        label = ResampleToMatch(mode="nearest")(load_label(item["label"]), image)
        tiling = inferer.tile(image.shape[1:])
        # SpatialPadd pads every scan to >= roi_size, so the inferer pads nothing and window slices index the label.
        assert not any(tiling.pad), f"{item['id']}: preprocessed shape {tuple(image.shape[1:])} is below the roi"
        with torch.autocast(device.type, enabled=amp):  # as the evaluator (amp) runs the inferer
            scores = inferer.glance_scores(image.as_tensor()[None].to(device), tiling)
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
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict:
    """Calibrate; prints the figures, writes the JSON record (and the config if asked) and returns the record."""
    args = build_parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    configs = args.config_file or list(DEFAULT_CONFIGS)
    parser = ConfigParser()
    parser.read_config(configs)
    if args.ckpt_path:
        parser["ckpt_path"] = args.ckpt_path
    parser["allow_untrained"] = args.allow_untrained
    bundle_root = Path(parser.get_parsed_content("bundle_root"))
    datalist = Path(args.datalist) if args.datalist else bundle_root / "configs/datalist.json"
    dataset_dir = args.dataset_dir or parser.get_parsed_content("dataset_dir")
    items = [it for it in list_inputs(datalist, dataset_dir, args.split) if it.get("label")]
    if not items:
        raise SystemExit(f"{datalist} ({args.split}): no labelled scans to calibrate on.")

    # Seed before the networks are built, so that untrained weights are the same every run.
    set_determinism(seed=parser.get_parsed_content("seed"))
    parser.get_parsed_content("glance")
    parser.get_parsed_content("network")
    # Without weights load_weights stops here unless --allow_untrained: nothing untrained reaches a config unasked.
    weights = parser.get_parsed_content("weights")
    untrained = weights.get("status") != "trained"

    cases = _score_split(parser, items)
    result = choose_threshold(
        [s for c in cases for s in c["scores"]], [lab for c in cases for lab in c["labels"]], args.target_sensitivity
    )
    now = datetime.now(timezone.utc)
    record = {
        "date": now.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bundle.calibrate", *argv]),
        "configs": configs,
        "datalist": str(datalist),
        "dataset_dir": str(dataset_dir),
        "split": args.split,
        "weights": weights,
        "inferer": {key: parser.get_parsed_content(key) for key in ("pixdim", "roi_size", "overlap", "amp")},
        "rule": "largest t with (lesion windows with Glance p >= t) / lesion windows >= target_sensitivity; "
        "a lesion window holds a lesion voxel of the label resampled (nearest) onto the preprocessed grid",
        "result": result,
        "written_to_config": args.write_config,
        "cases": cases,
    }
    print(_summary(record), flush=True)
    atomic_write_json(record, args.output)
    print(f"wrote {args.output}")
    if args.write_config:
        trained_note = "calibrated on UNTRAINED weights" if untrained else "calibrated"
        comment = f"{trained_note}: window sensitivity >= {args.target_sensitivity}, {args.split}, {now.date()}, see "
        rewrite_threshold_line(args.write_config, result["threshold"], comment + str(args.output))
        if untrained:
            banner = "!" * 100
            print(
                f"{banner}\nWARNING: {args.write_config} now holds a glance_threshold calibrated on UNTRAINED "
                f"(random) weights: it means nothing for a trained model. Recalibrate once weights exist.\n{banner}",
                file=sys.stderr,
                flush=True,
            )
        print(f"set glance_threshold: {format_threshold(result['threshold'])} in {args.write_config}")
    return record


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    main()
