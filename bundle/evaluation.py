"""Evaluate saved GF-Screen predictions against labels (method.md section 5).

Loads each labelled case of a data list split, the inference outputs ``<pred_dir>/<id>/<id>_lesion.nii.gz`` and
``<pred_dir>/<id>/<id>_findings.json``, scores them with :mod:`bundle.metrics`, aggregates overall, by region and by
lesion type, writes one JSON report and prints a table. Usable from a bundle config::

    evaluation:
      _target_: bundle.evaluation.LesionEvaluation
      datalist: "@datalist"
      dataset_dir: "@dataset_dir"
      pred_dir: "@output_dir"
      output_file: "$@output_dir + '/evaluation.json'"
    run: "$@evaluation.run()"
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bundle.data import load_datalist
from bundle.findings import label_lesions
from bundle.metrics import flare_dsc_nsd, froc, healthy_scan_is_fp, lesion_detection, lesion_scores
from bundle.writers import CaseOutputs, atomic_write_json
from monai.transforms import LoadImage

__all__ = ["LesionEvaluation", "summarise", "headline_metrics"]

DETECTION_CONNECTIVITY = 26

TABLE_COLUMNS = (
    ("n scans", "n_scans", "{:d}"),
    ("DSC", "dsc", "{:.3f}"),
    ("NSD", "nsd", "{:.3f}"),
    ("sens", "sensitivity", "{:.3f}"),
    ("FP/scan", "fp_per_scan", "{:.2f}"),
    ("healthy FPR", "healthy_fpr", "{:.3f}"),
    ("keep", "keep_fraction", "{:.3f}"),
    ("s/scan", "seconds_per_scan", "{:.1f}"),
)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-case results of one group of scans.

    Means over scans for DSC, NSD, FP count, keep fraction and seconds; sensitivity pools lesions (found / all
    ground-truth lesions of the group, None without lesions); the healthy-scan FPR is the fraction of the group's
    lesion-free scans flagged as false positive (None without lesion-free scans).
    """
    gt_lesions = sum(c["gt_lesions"] for c in cases)
    found = sum(c["found"] for c in cases)
    healthy_flags = [c["healthy_fp"] for c in cases if c["lesion_free"]]
    return {
        "n_scans": len(cases),
        "n_lesion_free_scans": len(healthy_flags),
        "gt_lesions": gt_lesions,
        "found": found,
        "false_positives": sum(c["false_positives"] for c in cases),
        "dsc": _mean([c["dsc"] for c in cases]),
        "nsd": _mean([c["nsd"] for c in cases]),
        "sensitivity": found / gt_lesions if gt_lesions else None,
        "fp_per_scan": _mean([c["false_positives"] for c in cases]),
        "healthy_fpr": _mean([float(flag) for flag in healthy_flags]),
        "keep_fraction": _mean([c["keep_fraction"] for c in cases]),
        "seconds_per_scan": _mean([c["total_seconds"] for c in cases]),
    }


def headline_metrics(evaluation: dict[str, Any], glance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The figures of a test-split evaluation report that the metadata's ``eval_metrics`` repeats (and, from a
    ``bundle.calibrate`` record on the same split, Glance's window ranking): computed here, checked by a test, so
    the metadata cannot drift from the record it came from."""
    overall = evaluation["overall"]
    out = {
        "labelled_scans": overall["n_scans"],
        "mean_dsc": round(overall["dsc"], 3),
        "mean_nsd_2mm": round(overall["nsd"], 3),
        "lesion_sensitivity": round(overall["sensitivity"], 3),
        "false_positives_per_scan": round(overall["fp_per_scan"], 2),
        "keep_fraction": round(overall["keep_fraction"], 3),
        "dsc_by_lesion_type": {k: round(v["dsc"], 3) for k, v in sorted(evaluation["by_lesion_type"].items())},
        "sensitivity_by_lesion_type": {
            k: round(v["sensitivity"], 3) for k, v in sorted(evaluation["by_lesion_type"].items())
        },
        "froc_sensitivity_at_fp_per_scan": {
            f"{p['fp_per_scan']:g}": round(p["sensitivity"], 3) for p in evaluation.get("froc") or []
        },
        "operating_point_min_score": evaluation["settings"].get("min_score"),
        "operating_point_lesion_score": evaluation["settings"].get("lesion_score"),
    }
    if glance is not None:
        result = glance["result"]
        out["glance_window_roc_auc"] = round(result["roc_auc"], 3)
        out["glance_lesion_free_windows_kept_at_95pct_lesion_windows"] = round(1 - result["specificity"], 3)
    return out


def _group(cases: Sequence[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Summaries per value of ``key``; cases without a value for ``key`` are left out of the grouping."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        if case.get(key) is not None:
            groups.setdefault(str(case[key]), []).append(case)
    return {name: summarise(groups[name]) for name in sorted(groups)}


def _format_table(overall: dict[str, Any], by_region: dict[str, Any], by_lesion_type: dict[str, Any]) -> str:
    """Fixed-width text table, one row per group; '-' where a value is undefined for the group."""
    rows = [("overall", overall)]
    rows += [(f"region: {name}", stats) for name, stats in by_region.items()]
    rows += [(f"lesion: {name}", stats) for name, stats in by_lesion_type.items()]
    name_width = max(len(name) for name, _ in rows)
    widths = [max(len(title), 8) for title, _, _ in TABLE_COLUMNS]
    header = f"{'group':<{name_width}}  " + "  ".join(f"{t:>{w}}" for (t, _, _), w in zip(TABLE_COLUMNS, widths))
    lines = [header, "-" * len(header)]
    for name, stats in rows:
        cells = [
            ("-" if stats[key] is None else fmt.format(stats[key])).rjust(width)
            for (_, key, fmt), width in zip(TABLE_COLUMNS, widths)
        ]
        lines.append(f"{name:<{name_width}}  " + "  ".join(cells))
    return "\n".join(lines)


class LesionEvaluation:
    """Score a folder of GF-Screen predictions against the labels of one data list split.

    Args:
        datalist: MSD-style JSON data list; items have ``id``, ``image``, optional ``label``, ``region`` and
            ``lesion_type``. Items without a label are skipped (nothing to score against).
        dataset_dir: folder the data list paths are relative to.
        pred_dir: inference output folder holding ``<id>/<id>_lesion.nii.gz`` and ``<id>/<id>_findings.json``.
        output_file: where the JSON report is written (parent folders are created).
        split: data list key to evaluate.
        tolerance_mm: NSD tolerance.
        healthy_fp_voxels: a lesion-free scan is a false positive when more voxels than this are predicted.
        min_score: the detection operating point applied to the written predictions: predicted lesions scoring below
            it are dropped before every metric (a no-op when inference already applied the same value; predictions
            written with nothing dropped then give the whole FROC curve).
        lesion_score: the findings' field that scores a lesion (``max_probability`` or ``mean_probability``); None:
            the findings' own ``lesion_score``, the one inference thresholded.
    """

    def __init__(
        self,
        datalist: str,
        dataset_dir: str,
        pred_dir: str,
        output_file: str,
        split: str = "test",
        tolerance_mm: float = 2.0,
        healthy_fp_voxels: int = 125,
        min_score: float | None = None,
        lesion_score: str | None = None,
    ) -> None:
        self.datalist = Path(datalist)
        self.dataset_dir = Path(dataset_dir)
        self.pred_dir = Path(pred_dir)
        self.output_file = Path(output_file)
        self.split = split
        self.tolerance_mm = float(tolerance_mm)
        self.healthy_fp_voxels = int(healthy_fp_voxels)
        self._loader = LoadImage(image_only=True, dtype=None)
        self.min_score = None if min_score is None else float(min_score)
        self.lesion_score = lesion_score

    def _labelled_items(self) -> list[dict[str, Any]]:
        """Labelled items of the split: ``id``, ``region``, ``lesion_type`` as written, ``label`` made absolute."""
        items = []
        for index, item in enumerate(load_datalist(self.datalist, self.split, self.dataset_dir)):
            if "label" not in item:
                continue
            if "id" not in item:
                raise ValueError(f"{self.datalist}: item {index} of split {self.split!r} has a label but no 'id'")
            items.append(
                {
                    "id": str(item["id"]),
                    "region": item.get("region"),
                    "lesion_type": item.get("lesion_type"),
                    "label": item["label"],
                    "image": item["image"],
                }
            )
        if not items:
            raise ValueError(f"{self.datalist}: split {self.split!r} has no labelled items to evaluate")
        return items

    def _read_findings(self, case_id: str, path: Path) -> tuple[float, float, list[dict] | None, str]:
        """keep_fraction, total_seconds, lesions and the name of their score (``lesion_score``, the findings' own)
        from a findings JSON, with errors that name the case."""
        findings = json.loads(path.read_text())
        if findings.get("case_id") != case_id:
            raise ValueError(f"case {case_id}: {path} is for case_id {findings.get('case_id')!r}")
        try:
            keep, seconds = (
                float(findings["glance_focus"]["keep_fraction"]),
                float(findings["timings"]["total_seconds"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"case {case_id}: {path} lacks glance_focus.keep_fraction or timings.total_seconds"
            ) from error
        return keep, seconds, findings.get("lesions"), str(findings.get("lesion_score", "max_probability"))

    def _score_lesions(
        self, lesion_map: np.ndarray, lesions: list[dict] | None, score: str, gt: np.ndarray
    ) -> tuple[np.ndarray, list[float], list[float]]:
        """The prediction at the operating point, and the lesion and false-positive scores (``lesion_scores``) of
        every written lesion, so that the FROC curve reaches below the operating point when the predictions hold
        more than it keeps. The written lesion map numbers its lesions as the findings do; findings without a lesion
        list (predictions made elsewhere) have their components labelled here and scored 1.0."""
        if lesions is None:
            numbers, count = label_lesions(lesion_map > 0)
            scores = dict.fromkeys(range(1, count + 1), 1.0)
        else:
            numbers = lesion_map.astype(np.int64)
            scores = {les["number"]: float(les[score]) for les in lesions}
            unknown = sorted(set(np.unique(numbers).tolist()) - {0} - set(scores))
            if unknown:
                raise ValueError(f"the lesion map holds lesion number(s) {unknown} that its findings do not list")
        found, false_positives = lesion_scores(numbers, scores, gt, connectivity=DETECTION_CONNECTIVITY)
        if self.min_score is not None:
            numbers = np.where(np.isin(numbers, [n for n, v in scores.items() if v >= self.min_score]), numbers, 0)
        return numbers > 0, found, false_positives

    def _evaluate_case(self, item: dict[str, Any]) -> dict[str, Any]:
        case_id = item["id"]
        outputs = CaseOutputs(self.pred_dir, case_id)
        pred_path, findings_path = outputs.lesion_map, outputs.findings
        for path in (pred_path, findings_path):
            if not path.is_file():
                raise FileNotFoundError(f"case {case_id}: prediction file {path} is missing")
        label_img = self._loader(item["label"])
        pred_img = self._loader(str(pred_path))
        gt = np.asarray(label_img) > 0
        pred = np.asarray(pred_img)
        if pred.shape != gt.shape:
            raise ValueError(
                f"case {case_id}: prediction {pred_path} has shape {pred.shape} but label {item['label']} has shape "
                f"{gt.shape}; the prediction must be on the grid of the input scan"
            )
        keep_fraction, total_seconds, lesions, score = self._read_findings(case_id, findings_path)
        score = self.lesion_score or score
        try:
            pred, found_scores, false_positive_scores = self._score_lesions(pred, lesions, score, gt)
        except ValueError as error:
            raise ValueError(f"case {case_id}: {pred_path}: {error}") from error
        spacing = [float(s) for s in label_img.pixdim]
        dsc, nsd = flare_dsc_nsd(pred, gt, spacing, self.tolerance_mm)
        detection = lesion_detection(pred, gt, connectivity=DETECTION_CONNECTIVITY)
        lesion_free = not gt.any()
        return {
            "id": case_id,
            "region": item["region"],
            "lesion_type": item["lesion_type"],
            "label": str(item["label"]),
            "image": str(item["image"]),
            "prediction": str(pred_path),
            "spacing_mm": spacing,
            "gt_voxels": int(gt.sum()),
            "pred_voxels": int(pred.sum()),
            "dsc": dsc,
            "nsd": nsd,
            **detection,
            "lesion_free": lesion_free,
            "healthy_fp": healthy_scan_is_fp(pred, self.healthy_fp_voxels) if lesion_free else None,
            "keep_fraction": keep_fraction,
            "total_seconds": total_seconds,
            "lesion_scores": found_scores,
            "false_positive_scores": false_positive_scores,
        }

    def run(self) -> dict[str, Any]:
        """Evaluate every labelled case of the split, write the JSON report, print the table and return the report."""
        per_case = [self._evaluate_case(item) for item in self._labelled_items()]
        found = [s for c in per_case for s in c["lesion_scores"]]
        false_positives = [s for c in per_case for s in c["false_positive_scores"]]
        report = {
            "per_case": per_case,
            "overall": summarise(per_case),
            "by_region": _group(per_case, "region"),
            "by_lesion_type": _group(per_case, "lesion_type"),
            "froc": froc(found, false_positives, len(per_case)) if found else None,
            "settings": {
                "datalist": str(self.datalist),
                "dataset_dir": str(self.dataset_dir),
                "pred_dir": str(self.pred_dir),
                "split": self.split,
                "tolerance_mm": self.tolerance_mm,
                "healthy_fp_voxels": self.healthy_fp_voxels,
                "min_score": self.min_score,
                "lesion_score": self.lesion_score,
                "detection_connectivity": DETECTION_CONNECTIVITY,
                "dsc_nsd_rules": "FLARE: both empty -> 1, 1; one empty -> 0, 0; NSD = 0 when DSC < 0.2",
                "lesion_found_rule": "a ground-truth component is found when a predicted voxel overlaps it",
            },
        }
        atomic_write_json(report, self.output_file, indent=4)
        print(_format_table(report["overall"], report["by_region"], report["by_lesion_type"]))
        return report
