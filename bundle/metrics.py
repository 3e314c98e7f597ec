"""Evaluation metrics for binary lesion masks (method.md section 5).

Pure functions: numpy arrays in, plain Python numbers out. Every mask is a 3D array (bool or integer); voxels > 0 are
lesion. Accuracy follows the FLARE convention (DSC and NSD via the DeepMind ``surface_distance`` package), detection
is counted per lesion (connected component) and, on lesion-free scans, per scan.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage
from surface_distance import compute_surface_dice_at_tolerance, compute_surface_distances

__all__ = [
    "dice",
    "nsd",
    "flare_dsc_nsd",
    "lesion_detection",
    "lesion_scores",
    "FROC_FP_PER_SCAN",
    "min_score_for_fp_budget",
    "froc",
    "healthy_scan_is_fp",
    "CONNECTIVITY_TO_RANK",
]

# Voxel neighbourhood -> rank argument of scipy.ndimage.generate_binary_structure(3, rank).
CONNECTIVITY_TO_RANK = {6: 1, 18: 2, 26: 3}

FLARE_MIN_DSC_FOR_NSD = 0.2


def _as_mask(name: str, array: np.ndarray) -> np.ndarray:
    """Return ``array > 0`` as a bool array, after checking it is 3D (all metrics here are defined on volumes)."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got shape {array.shape}")
    return array > 0


def _as_mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binarise a prediction and a ground truth, which must be 3D and on the same grid to be compared voxel-wise."""
    pred_mask = _as_mask("pred", pred)
    gt_mask = _as_mask("gt", gt)
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred_mask.shape} and {gt_mask.shape}")
    return pred_mask, gt_mask


def _as_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    """Check the voxel spacing: NSD distances are in mm, so a wrong or missing spacing silently changes the result."""
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be 3 positive finite numbers (one per array axis), got {spacing_mm!r}")
    return spacing


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Volumetric Dice similarity coefficient 2|P∩G| / (|P| + |G|).

    Two empty masks agree perfectly, so they score 1.0 (the FLARE convention) instead of the undefined 0/0.
    """
    pred_mask, gt_mask = _as_mask_pair(pred, gt)
    volume_sum = int(pred_mask.sum()) + int(gt_mask.sum())
    if volume_sum == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred_mask, gt_mask).sum()) / volume_sum


def nsd(pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice: the share of both surfaces (by surfel area) within ``tolerance_mm`` of the other.

    Computed the DeepMind way (``surface_distance``: surface elements with areas, spacing-aware distances), as the
    FLARE evaluation does. ``spacing_mm`` is the voxel size along the array axes, in the order of the array axes.
    Empty masks are handled here, not by the package: both empty -> 1.0; exactly one empty -> 0.0 (no surface lies
    within tolerance of a missing one). The package would crash on the latter under numpy 2 (it uses ``np.Inf``).
    """
    pred_mask, gt_mask = _as_mask_pair(pred, gt)
    spacing = _as_spacing(spacing_mm)
    pred_empty, gt_empty = not pred_mask.any(), not gt_mask.any()
    if pred_empty and gt_empty:
        return 1.0
    if pred_empty or gt_empty:
        return 0.0
    with warnings.catch_warnings():
        # surface-distance 0.1 calls scipy.ndimage.filters / .morphology, deprecated aliases (removed in SciPy 2).
        warnings.filterwarnings(
            "ignore", message=r".*scipy\.ndimage\.\w+` namespace is deprecated", category=DeprecationWarning
        )
        distances = compute_surface_distances(gt_mask, pred_mask, spacing)
    return float(compute_surface_dice_at_tolerance(distances, tolerance_mm))


def flare_dsc_nsd(
    pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float = 2.0
) -> tuple[float, float]:
    """Per-scan (DSC, NSD) with the FLARE rules.

    Both empty -> (1, 1); exactly one empty -> (0, 0); NSD is set to 0 when DSC < 0.2, so a barely overlapping
    prediction cannot earn surface credit (and the costly surface computation is skipped).
    """
    pred_mask, gt_mask = _as_mask_pair(pred, gt)
    spacing = _as_spacing(spacing_mm)
    pred_empty, gt_empty = not pred_mask.any(), not gt_mask.any()
    if pred_empty and gt_empty:
        return 1.0, 1.0
    if pred_empty or gt_empty:
        return 0.0, 0.0
    dsc = dice(pred_mask, gt_mask)
    if dsc < FLARE_MIN_DSC_FOR_NSD:
        return dsc, 0.0
    return dsc, nsd(pred_mask, gt_mask, spacing, tolerance_mm)


def lesion_detection(pred: np.ndarray, gt: np.ndarray, connectivity: int = 26) -> dict[str, int]:
    """Lesion-level detection counts for one scan.

    A ground-truth lesion is a connected component of ``gt``; predicted components are labelled the same way.
    ``connectivity`` is the 3D voxel neighbourhood: 26 (default: voxels sharing a face, edge or corner belong to the
    same lesion, so a lesion drawn slice by slice with diagonal steps is not split into pieces), 18 or 6.

    "Touches" means overlaps: a lesion is found when at least one predicted voxel lies inside it (shares a voxel
    with it); a prediction merely adjacent to a lesion, without a common voxel, does not find it. A predicted
    component is a false positive when it shares no voxel with any ground-truth lesion. One predicted component
    overlapping two lesions finds both.

    Returns ``gt_lesions``, ``found``, ``missed``, ``pred_components``, ``false_positives``.
    """
    if connectivity not in CONNECTIVITY_TO_RANK:
        raise ValueError(f"connectivity must be one of {sorted(CONNECTIVITY_TO_RANK)}, got {connectivity!r}")
    pred_mask, gt_mask = _as_mask_pair(pred, gt)
    structure = ndimage.generate_binary_structure(3, CONNECTIVITY_TO_RANK[connectivity])
    gt_labels, n_gt = ndimage.label(gt_mask, structure=structure)
    pred_labels, n_pred = ndimage.label(pred_mask, structure=structure)
    overlap = np.logical_and(pred_mask, gt_mask)
    found = int(np.unique(gt_labels[overlap]).size)
    pred_hits = int(np.unique(pred_labels[overlap]).size)
    return {
        "gt_lesions": int(n_gt),
        "found": found,
        "missed": int(n_gt) - found,
        "pred_components": int(n_pred),
        "false_positives": int(n_pred) - pred_hits,
    }


def lesion_scores(
    pred_labels: np.ndarray, scores: Mapping[int, float], gt: np.ndarray, connectivity: int = 26
) -> tuple[list[float], list[float]]:
    """Per ground-truth lesion, the highest score of the predicted lesions overlapping it (0.0 when none does), and
    the scores of the predicted lesions overlapping no ground-truth lesion (false positives).

    ``pred_labels`` numbers the predicted lesions (0 is background) and ``scores`` maps each number to its score
    (the findings' ``max_probability``); overlap and connectivity as in :func:`lesion_detection`. The input of a
    detection operating point: keeping predicted lesions with score >= t finds the lesions with a value >= t.
    """
    if connectivity not in CONNECTIVITY_TO_RANK:
        raise ValueError(f"connectivity must be one of {sorted(CONNECTIVITY_TO_RANK)}, got {connectivity!r}")
    pred_labels = np.asarray(pred_labels)
    gt_mask = _as_mask("gt", gt)
    if pred_labels.shape != gt_mask.shape:
        raise ValueError(f"pred_labels and gt shapes differ: {pred_labels.shape} vs {gt_mask.shape}")
    numbers = set(np.unique(pred_labels).tolist()) - {0}
    if numbers - set(scores):
        raise ValueError(f"predicted lesions {sorted(numbers - set(scores))} have no score.")
    structure = ndimage.generate_binary_structure(3, CONNECTIVITY_TO_RANK[connectivity])
    gt_labels, n_gt = ndimage.label(gt_mask, structure=structure)
    found, hits = [], set()
    for i in range(1, n_gt + 1):
        touching = set(np.unique(pred_labels[gt_labels == i]).tolist()) - {0}
        hits |= touching
        found.append(max((float(scores[j]) for j in touching), default=0.0))
    false_positives = [float(scores[j]) for j in sorted(numbers - hits)]
    return found, false_positives


# False positives per scan at which the FROC table reports sensitivity (the LUNA16 points).
FROC_FP_PER_SCAN = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def min_score_for_fp_budget(
    false_positive_scores: Sequence[float], other_scores: Sequence[float], budget: float
) -> float:
    """The smallest minimum score t that leaves at most ``budget`` false positives (a count, not per scan).

    With more false positives than the budget, t is the smallest observed score above the (budget+1)-th highest
    false-positive score (just above it if no score lies there); otherwise the smallest observed score.
    """
    false = np.sort(np.asarray(false_positive_scores, dtype=np.float64).ravel())[::-1]
    scores = np.concatenate([false, np.asarray(other_scores, dtype=np.float64).ravel()])
    scores = scores[scores > 0]
    allowed = math.floor(round(budget, 9))
    if false.size <= allowed:
        return float(scores.min()) if scores.size else 0.0
    above = scores[scores > false[allowed]]
    return float(above.min()) if above.size else float(np.nextafter(false[allowed], np.inf))


def froc(lesion_scores: Sequence[float], false_positive_scores: Sequence[float], scans: int) -> list[dict]:
    """Lesion sensitivity at 1/8 to 8 false positives per scan (``FROC_FP_PER_SCAN``), from the per-lesion scores
    (0 for a missed lesion) and the false positives' scores of ``scans`` scans (see :func:`lesion_scores`)."""
    found = np.asarray(lesion_scores, dtype=np.float64).ravel()
    false = np.asarray(false_positive_scores, dtype=np.float64).ravel()
    points = []
    for budget in FROC_FP_PER_SCAN:
        t = min_score_for_fp_budget(false, found, budget * scans)
        points.append({"fp_per_scan": budget, "sensitivity": float(((found >= t) & (found > 0)).sum() / found.size)})
    return points


def healthy_scan_is_fp(pred: np.ndarray, min_voxels: int = 125) -> bool:
    """Whether a lesion-free scan counts as a false-positive scan: more than ``min_voxels`` voxels predicted.

    The paper's healthy-scan false positive rate; the voxel floor ignores specks too small to be reported as a lesion.
    Exactly ``min_voxels`` predicted voxels is not a false positive.
    """
    return int(_as_mask("pred", pred).sum()) > min_voxels
