"""Lesion findings of a screening result (method.md section 6): one entry per connected component of the mask."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from bundle.inferer import GLANCE_FOCUS_KEY, stats_of
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist, squareform

__all__ = [
    "component_scores",
    "label_lesions",
    "longest_axial_diameter",
    "lesion_findings",
    "drop_low_score_lesions",
    "LESION_SCORES",
    "GlanceFocusStatsd",
    "LesionFindingsd",
    "lesion_map_dtype",
    "RAS_TO_LPS",
    "LESION_COLOURS",
    "lesion_colour",
]

# MONAI affines are RAS; DICOM patient coordinates (what PACS and viewers show) are LPS.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

# Display colours (RGB) of lesions 1, 2, ...: distinct on a grey CT, green left to the plots' reference outlines.
LESION_COLOURS = (
    (255, 40, 40),
    (245, 130, 48),
    (255, 225, 25),
    (240, 50, 230),
    (70, 240, 240),
    (0, 130, 200),
    (145, 30, 180),
    (255, 105, 180),
    (170, 110, 40),
    (128, 128, 255),
)


def lesion_colour(number: int) -> tuple[int, int, int]:
    """The colour of lesion ``number`` (1-based) wherever it is shown: the SEG segment's recommended display colour,
    the key slice's outline, docs/deploy.md's table. Lesions past the tenth reuse the palette in order."""
    if number < 1:
        raise ValueError(f"lesion numbers start at 1, got {number}")
    return LESION_COLOURS[(number - 1) % len(LESION_COLOURS)]


# 26-connectivity: voxels touching by a face, an edge or a corner belong to the same lesion (as in bundle.metrics).
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a 3D binary mask."""
    labels, n = ndimage.label(mask, structure=CONNECTIVITY)
    return labels, int(n)


# What a lesion's detection score can be: its highest or its mean voxel probability. Where a network's maxima saturate
# at 1.0 on false positives too, the mean may still keep lesions and false positives apart; the calibration record
# reports the margin on both, so the choice is measured, not assumed.
LESION_SCORES = {"max_probability": ndimage.maximum, "mean_probability": ndimage.mean}


def component_scores(lesion_prob: np.ndarray, labels: np.ndarray, n: int, score: str) -> np.ndarray:
    """Each connected component's ``score`` (``LESION_SCORES``), rounded to the 4 decimals the findings report.

    Measured over the labelled voxels only: scipy sorts every voxel it is given by label, and on a whole scan the
    background is almost all of them (on the 134-slice series 35 M voxels, most of the postprocessing's time)."""
    if score not in LESION_SCORES:
        raise ValueError(f"score must be one of {sorted(LESION_SCORES)}, got {score!r}")
    if n == 0:
        return np.zeros(0)
    inside = labels > 0
    return np.round(np.asarray(LESION_SCORES[score](lesion_prob[inside], labels[inside], index=np.arange(1, n + 1))), 4)


def drop_low_score_lesions(
    lesion_prob: np.ndarray, mask: np.ndarray, min_score: float, score: str = "max_probability"
) -> np.ndarray:
    """The mask without the lesions (connected components) whose ``score`` (``LESION_SCORES``) is below ``min_score``.

    The voxel threshold decides a lesion's extent, this one whether it is reported at all: a detection operating point
    (``python -m bundle.calibrate --lesion_max_fp_per_scan`` or ``--lesion_target_sensitivity``) that drops weak
    components whole instead of eroding every lesion, as a higher voxel threshold would.
    """
    labels, n = label_lesions(mask)
    keep = np.concatenate([[False], component_scores(lesion_prob, labels, n, score) >= min_score])
    return keep[labels]


def _centroid_lps(comp: np.ndarray, obj: tuple[slice, ...], affine: np.ndarray) -> tuple[float, ...]:
    idx = np.argwhere(comp).mean(axis=0) + [s.start for s in obj]
    return tuple(round(float(v), 2) for v in RAS_TO_LPS @ (affine[:3, :3] @ idx + affine[:3, 3]))


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis that runs most nearly head-foot (superior), i.e. the one axial slices are taken across."""
    return int(np.argmax(np.abs(affine[2, :3])))


def longest_axial_diameter(
    component: np.ndarray, affine: np.ndarray, offset: tuple[int, ...] = (0, 0, 0)
) -> tuple[float, np.ndarray]:
    """Longest in-plane extent (mm) of a voxelised lesion over its axial slices, as a radiologist would caliper it,
    and the caliper's two end points (DICOM patient coordinates, LPS mm; ``offset``: the component's first voxel in
    the image), which a viewer can draw as a line on that slice.

    Each voxel contributes the corners of its footprint, so a one-voxel lesion measures its pixel diagonal. The convex
    hull is taken in index space: an affine map keeps hull vertices, so only those are mapped to mm and compared.
    """
    ax = axial_axis(affine)
    in_plane = [a for a in range(3) if a != ax]
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float) - 0.5
    best, ends = 0.0, np.zeros((2, 3))
    for k in np.unique(np.nonzero(component)[ax]):
        pix = np.argwhere(np.take(component, k, axis=ax)).astype(float)
        pts = (pix[:, None, :] + corners[None]).reshape(-1, 2)
        if len(pix) > 2:
            try:
                pts = pts[ConvexHull(pts).vertices]
            except QhullError:  # collinear voxels: every corner is kept
                pass
        distances = squareform(pdist(pts @ affine[:3, in_plane].T))
        i, j = np.unravel_index(distances.argmax(), distances.shape)
        if distances[i, j] > best:
            best = float(distances[i, j])
            ends[:, in_plane], ends[:, ax] = pts[[i, j]], k
    index = ends + np.asarray(offset, dtype=float)
    return best, (RAS_TO_LPS @ (affine[:3, :3] @ index.T + affine[:3, 3:])).T


def lesion_findings(
    lesion_prob: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    region: str,
    score: str = "max_probability",
    min_score: float | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """The lesions of ``mask`` (both arrays on the original image grid), labelled once: the lesion map (0 background,
    lesion k where the findings' lesion ``number`` is k) and the per-lesion findings, numbered by ``score`` (most
    suspicious first), then volume. Lesions whose score is below ``min_score`` are dropped whole."""
    labels, n = label_lesions(mask)
    scores = component_scores(lesion_prob, labels, n, score)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    lesions = []
    for i, obj in enumerate(ndimage.find_objects(labels), start=1):
        if min_score is not None and scores[i - 1] < min_score:
            continue
        comp = labels[obj] == i
        probs = lesion_prob[obj][comp]
        diameter, ends = longest_axial_diameter(comp, affine, tuple(s.start for s in obj))
        lesions.append(
            {
                "component": i,
                "voxels": int(comp.sum()),
                "centroid_mm": list(_centroid_lps(comp, obj, affine)),
                "volume_mm3": round(int(comp.sum()) * voxel_mm3, 2),
                "longest_axial_diameter_mm": round(diameter, 2),
                "longest_axial_diameter_ends_mm": [[round(float(v), 2) for v in point] for point in ends],
                "mean_probability": round(float(probs.mean()), 4),
                "max_probability": round(float(probs.max()), 4),
                "region": region,
            }
        )
    lesions.sort(key=lambda les: (-les[score], -les["volume_mm3"]))
    number_of = np.zeros(n + 1, dtype=np.uint16)
    for number, les in enumerate(lesions, start=1):
        number_of[les.pop("component")] = number
        les["number"] = number
    return number_of[labels], lesions


def lesion_map_dtype(count: int) -> np.dtype:
    """The smallest unsigned type that numbers ``count`` lesions (uint8 up to 255)."""
    return np.dtype(np.uint8 if count <= np.iinfo(np.uint8).max else np.uint16)


class GlanceFocusStatsd(MapTransform):
    """Lift the prediction's Glance-Focus statistics (``bundle.inferer.stats_of``) into the data as ``stats_key``.

    ``Invertd`` rebuilds the prediction's metadata from the image's, which never held them: this step, before it,
    keeps them with the scan for ``LesionFindingsd``.
    """

    def __init__(self, keys: KeysCollection, stats_key: str = GLANCE_FOCUS_KEY) -> None:
        super().__init__(keys)
        self.stats_key = stats_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, object]:
        d = dict(data)
        (d[self.stats_key],) = stats_of(d[self.first_key(d)])
        return d


class LesionFindingsd(MapTransform):
    """Turn the inverted lesion probability (1 channel, ``BoundToBodyd``'s output) into the numbered lesion map and the
    findings of the scan.

    A voxel is lesion when its probability is >= ``threshold``; a lesion is reported when its ``score`` (maximum or
    mean probability, ``LESION_SCORES``) is >= ``min_score`` (the calibrated detection operating point; at or below
    ``threshold`` it drops nothing). ``pred`` becomes the lesion map (original grid: 0 background, k inside the
    findings' lesion k), so that every later step (writers, SEG, SR, evaluation, calibration, key slices) uses these
    numbers instead of labelling the mask again. ``findings`` holds the lesions (method.md 6), the scan's suspicion
    score (maximum lesion probability), the body region and where it came from, the Glance-Focus accounting
    (``stats_key``, from ``GlanceFocusStatsd``) and the weights' status, so that output from untrained weights
    is labelled as such.
    """

    def __init__(
        self,
        keys: KeysCollection,
        weights: dict,
        threshold: float = 0.5,
        min_score: float = 0.5,
        score: str = "max_probability",
        findings_key: str = "findings",
        region_key: str = "region",
        stats_key: str = GLANCE_FOCUS_KEY,
    ) -> None:
        super().__init__(keys)
        if score not in LESION_SCORES:
            raise ValueError(f"score must be one of {sorted(LESION_SCORES)}, got {score!r}")
        self.score = score
        self.weights = weights
        self.threshold = threshold
        self.min_score = min_score
        self.findings_key = findings_key
        self.region_key = region_key
        self.stats_key = stats_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, object]:
        d = dict(data)
        key = self.first_key(d)
        prob = d[key]
        if not isinstance(prob, MetaTensor) or prob.shape[0] != 1:
            raise ValueError(f"{key}: expected the 1-channel lesion probability from Invertd, got {prob.shape}.")
        affine = prob.affine.numpy()
        lesion_prob = prob[0].numpy().astype(np.float32)
        region = str(d.get(self.region_key, ""))
        numbers, lesions = lesion_findings(
            lesion_prob, lesion_prob >= self.threshold, affine, region, self.score, self.min_score
        )
        stats = d[self.stats_key].as_dict() if self.stats_key in d else {}
        d[self.findings_key] = {
            "weights": self.weights,
            "region": region,
            "region_source": str(d.get(f"{self.region_key}_source", "")),
            "coordinate_system": "DICOM patient coordinates (LPS), mm",
            "suspicion_score": round(float(lesion_prob.max()), 4) if lesion_prob.size else 0.0,
            "lesion_probability_threshold": self.threshold,
            "lesion_min_score": self.min_score,
            "lesion_score": self.score,
            "lesion_count": len(lesions),
            "lesions": lesions,
            "glance_focus": stats,
        }
        lesion_map = torch.from_numpy(numbers[None].astype(lesion_map_dtype(len(lesions))))
        d[key] = MetaTensor(lesion_map, affine=prob.affine, meta=prob.meta)
        return d
