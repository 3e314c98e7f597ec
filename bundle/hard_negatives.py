"""Hard lesion-free windows: where a model reports lesions on its own training scans that hold none there.

Screens the ``training`` and ``training_synthesis_hosts`` scans of a datalist as inference does (in memory, the
config's Glance threshold or ``--glance_threshold '$None'`` for Focus on every window, nothing dropped by
``lesion_min_score``), takes the predicted lesions that touch no labelled lesion (the false positives that
``bundle.metrics.lesion_scores`` counts for calibration), and writes a copy of the datalist in which each of those
scans lists its strongest ones as ``hard_negatives_mm``: ``[x, y, z, score]`` with the centroid in DICOM patient
coordinates (LPS mm, the findings' ``centroid_mm``) and the lesion's ``max_probability``. Training with that datalist
and ``--hard_negative_prob q`` centres a scan's crops on them with probability q
(``bundle.transforms.HardNegativeWeightsd`` and MONAI's ``RandWeightedCropd``): the normal anatomy the model confuses
with lesions, shown to both networks as lesion-free windows (method.md 3: the reward and the class-balanced CE;
Focus's Dice-CE on a zero label).

``--accumulate`` keeps the input datalist's points after the new ones: a second round mines with the model trained on
the first round's points and adds its own false positives (bootstrapping).

A synthesis host has no label: every lesion it reports is taken as a false positive, so only hosts whose known disease
lies outside the sampled region (``axial_range_mm``) or that hold none belong in that list. Example::

    python -m bundle.hard_negatives --config_file configs/inference.yaml --ckpt_path models/model.pt \\
        --glance_threshold '$None' --output runs/hard_negatives/datalist.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from bundle.data import load_datalist
from bundle.pipeline import build_pipeline
from bundle.writers import atomic_path
from monai.transforms import LoadImage

__all__ = ["SPLITS", "hard_negatives", "main"]

logger = logging.getLogger("gf_screen.hard_negatives")

# the lists whose scans training samples crops from (bundle.data.training_items)
SPLITS = ("training", "training_synthesis_hosts")


def hard_negatives(
    findings: Sequence[dict],
    numbers: np.ndarray,
    gt: np.ndarray | None,
    top: int,
    axial_range_mm: Sequence[float] | None = None,
) -> list[list]:
    """The ``top`` strongest predicted lesions of one scan that touch no lesion of ``gt`` (None: the scan has no
    label, every prediction is lesion-free), as ``[x, y, z, max_probability]`` (LPS mm), strongest first. With
    ``axial_range_mm`` (a host's lesion-free slab, ``bundle.transforms.CropAxialRanged``) only those whose centroid
    lies in the slab: training samples nothing else of that scan."""
    touching = set() if gt is None else set(np.unique(numbers[np.asarray(gt, dtype=bool)]).tolist())
    low, high = sorted(axial_range_mm) if axial_range_mm is not None else (-np.inf, np.inf)
    chosen = sorted(
        (les for les in findings if les["number"] not in touching and low <= les["centroid_mm"][2] <= high),
        key=lambda les: -les["max_probability"],
    )
    return [[*map(float, les["centroid_mm"]), float(les["max_probability"])] for les in chosen[:top]]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bundle.hard_negatives", description=__doc__.split("\n\n")[0])
    p.add_argument("--config_file", action="append", help="screening configs, merged in order (repeatable)")
    p.add_argument("--ckpt_path", required=True, help="the model whose false positives to mine")
    p.add_argument("--glance_threshold", default=None, help="override; '$None' runs Focus on every window")
    p.add_argument("--datalist", default="configs/datalist.json")
    p.add_argument("--dataset_dir", default="../shared/data")
    p.add_argument("--top", type=int, default=8, help="at most this many hard negatives per scan")
    p.add_argument(
        "--accumulate",
        action="store_true",
        help="keep the input datalist's hard_negatives_mm after the new ones (bootstrapping rounds: a later model's "
        "false positives join the earlier model's instead of replacing them)",
    )
    p.add_argument("--output", required=True, help="the datalist copy to write (JSON, atomically)")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = {"ckpt_path": args.ckpt_path, "lesion_min_score": "@lesion_probability_threshold"}
    if args.glance_threshold is not None:
        overrides["glance_threshold"] = args.glance_threshold
    pipeline = build_pipeline(args.config_file or ["configs/inference.yaml"], overrides)
    load = LoadImage(image_only=True, reader="ITKReader")
    datalist = json.loads(Path(args.datalist).read_text())
    per_scan = {}
    for split in SPLITS:
        if split not in datalist:
            continue
        for raw, item in zip(datalist[split], load_datalist(args.datalist, split, args.dataset_dir)):
            out = pipeline.screen({k: item[k] for k in ("image", "id", "region") if k in item})
            numbers = np.asarray(out["pred"][0])
            gt = np.asarray(load(item["label"])) > 0 if "label" in item else None
            if gt is not None and gt.shape != numbers.shape:
                raise ValueError(f"{item['id']}: label grid {gt.shape} is not the scan's {numbers.shape}")
            points = hard_negatives(out["findings"]["lesions"], numbers, gt, args.top, item.get("axial_range_mm"))
            previous = raw.get("hard_negatives_mm", []) if args.accumulate else []
            raw["hard_negatives_mm"] = points + [p for p in previous if p not in points]
            per_scan[item["id"]] = len(points)
            logger.info(
                "%s: %d predicted lesion(s), %d hard negative(s) kept",
                item["id"],
                len(out["findings"]["lesions"]),
                len(points),
            )
    record = {
        "command": shlex.join(["python", "-m", "bundle.hard_negatives", *(argv if argv is not None else sys.argv[1:])]),
        "weights": pipeline.weights,
        "glance_threshold": pipeline.get("glance_threshold"),
        "made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "per_scan": per_scan,
    }
    if args.accumulate and "hard_negatives" in datalist:
        record["previous"] = datalist["hard_negatives"]
    datalist["hard_negatives"] = record
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output) as tmp:
        Path(tmp).write_text(json.dumps(datalist, indent=1) + "\n")
    return datalist


if __name__ == "__main__":
    main()
