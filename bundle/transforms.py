"""Dictionary transforms of the GF-Screen preprocessing (method.md section 1) that MONAI does not have as such."""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from bundle.findings import RAS_TO_LPS
from bundle.validation import MIN_EXTENT_MM, InvalidScanError, check_ct_volume
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, ScaleIntensityRange, SpatialCrop, Transform
from scipy import ndimage

__all__ = [
    "BODY_HU",
    "body_mask",
    "fill_axial_holes",
    "BoundToBodyd",
    "CropAxialRanged",
    "ValidateCTd",
    "SelectRegiond",
    "RegionWindowd",
    "StampTimed",
    "EnsureLabeld",
    "HardNegativeWeightsd",
    "HU_WINDOWS",
    "region_window",
]

# HU windows by body region; every region other than chest uses the abdomen window (method.md 1.3).
HU_WINDOWS: dict[str, tuple[float, float]] = {"chest": (-900.0, 650.0), "abdomen": (-175.0, 250.0)}

_BODY_PART_REGION = {
    "CHEST": "chest",
    "THORAX": "chest",
    "LUNG": "chest",
    "ABDOMEN": "abdomen",
    "PELVIS": "abdomen",
    "ABDOMENPELVIS": "abdomen",
    "LIVER": "abdomen",
    "PANCREAS": "abdomen",
    "KIDNEY": "abdomen",
}


def region_window(region: str) -> tuple[float, float]:
    """The HU window of ``region``."""
    return HU_WINDOWS.get(region, HU_WINDOWS["abdomen"])


def lung_fraction(hu: np.ndarray) -> float:
    """Fraction of the body (C, X, Y, Z in RAS) that has lung density: large on chest CT, small elsewhere.

    The body is each axial slice's soft tissue with its holes filled, so air outside the patient (and the noise
    around it) never counts, while the lungs, enclosed by the chest wall, do.
    """
    vol = np.asarray(hu)[0, ::2, ::2, :]
    tissue = vol > -500
    body = np.stack([ndimage.binary_fill_holes(tissue[..., z]) for z in range(vol.shape[-1])], axis=-1)
    lung = body & ~tissue
    return float(lung.sum()) / max(int(body.sum()), 1)


class ValidateCTd(MapTransform):
    """Reject what cannot be screened (2D, absurd spacing, too small, not HU) with a message naming the scan."""

    def __init__(
        self, keys: KeysCollection, min_extent_mm: float = MIN_EXTENT_MM, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_extent_mm = min_extent_mm

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor):
                raise InvalidScanError(f"{key}: expected a MetaTensor from LoadImaged, got {type(img).__name__}.")
            source = str(img.meta.get("filename_or_obj", key))
            spacing = img.pixdim.tolist() if img.ndim == 4 else [float("nan")] * 3
            check_ct_volume(img.numpy(), spacing, source, self.min_extent_mm)
        return d


class SelectRegiond(MapTransform):
    """Decide the body region of each scan and record where the decision came from.

    Runs after ``Orientationd`` (RAS), so that the automatic choice sees axial slices. Priority: the data item's
    ``region`` (datalist), a fixed ``region`` from the config, the DICOM BodyPartExamined
    (``body_part`` in the item), then an automatic choice from the lung-density fraction of the scan. The result goes
    into ``region`` and ``region_source``; the findings report both.
    """

    def __init__(
        self, keys: KeysCollection, region: str = "auto", region_key: str = "region", lung_fraction_chest: float = 0.15
    ) -> None:
        super().__init__(keys)
        if region != "auto" and region not in HU_WINDOWS:
            raise ValueError(f"region must be 'auto' or one of {sorted(HU_WINDOWS)}, got {region!r}.")
        self.region = region
        self.region_key = region_key
        self.lung_fraction_chest = lung_fraction_chest

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        body_part = str(d.get("body_part", "")).replace(" ", "").upper()
        if d.get(self.region_key):
            source = "datalist"
        elif self.region != "auto":
            d[self.region_key], source = self.region, "config"
        elif body_part in _BODY_PART_REGION:
            d[self.region_key], source = _BODY_PART_REGION[body_part], "dicom"
        else:
            key = self.first_key(d)
            frac = lung_fraction(d[key])
            d[self.region_key] = "chest" if frac >= self.lung_fraction_chest else "abdomen"
            source = f"auto (lung-density fraction {frac:.2f})"
        d[f"{self.region_key}_source"] = source
        return d


class RegionWindowd(MapTransform):
    """Clip the HU to the window of the item's body region and rescale to [0, 1] (MONAI ``ScaleIntensityRange``)."""

    def __init__(self, keys: KeysCollection, region_key: str = "region", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.region_key = region_key
        self.scalers = {
            region: ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
            for region, (lo, hi) in HU_WINDOWS.items()
        }

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        region = d.get(self.region_key)
        if not region:
            raise KeyError(f"item has no {self.region_key!r}; put SelectRegiond before RegionWindowd.")
        scaler = self.scalers.get(region, self.scalers["abdomen"])
        for key in self.key_iterator(d):
            d[key] = scaler(d[key])
        return d


class StampTimed(Transform):
    """Record when processing of an item started, so the findings can report seconds per scan end to end."""

    def __init__(self, key: str = "start_time") -> None:
        self.key = key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        d[self.key] = time.perf_counter()
        return d


class EnsureLabeld(MapTransform):
    """Give a lesion-free training scan (no label file) an all-zero label on the image's grid.

    Lesion-free scans teach Glance to discard healthy windows; with a zero label, ``RandCropByPosNegLabeld`` takes
    background crops only and every later transform treats them like any other item.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.keys:
            if key not in d:
                d[key] = torch.zeros_like(d[self.image_key], dtype=torch.uint8)
        return d


class HardNegativeWeightsd(MapTransform):
    """A crop-centre weight map on the image's grid from the item's hard negatives, for ``RandWeightedCropd``.

    ``points_key`` lists ``[x, y, z, weight]`` per hard negative: a lesion-free place (DICOM patient coordinates, LPS
    mm, as the findings' ``centroid_mm``) where a model reported a lesion (``python -m bundle.hard_negatives``). Each
    point that falls inside the grid puts its weight on its nearest voxel, moved inwards to the nearest voxel a crop of
    ``spatial_size`` can be centred on (``RandWeightedCropd`` ignores weights nearer the border than half a crop), so
    every crop drawn for it holds it; points outside (a host's slab cropped away) are dropped. An item with no point
    inside gets an all-zero map, on which ``RandWeightedCropd`` samples crop centres uniformly. Put it after the last
    transform that changes the grid (the affine of the ``MetaTensor`` locates the points).
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        points_key: str = "hard_negatives_mm",
        weight_key: str = "hard_negative",
    ):
        super().__init__(keys)
        self.spatial_size = np.asarray(spatial_size, dtype=int)
        self.points_key = points_key
        self.weight_key = weight_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image = d[self.first_key(d)]
        weights = torch.zeros((1, *image.shape[1:]), dtype=torch.float32)
        points = np.asarray(d.get(self.points_key) or np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4)
        if len(points):
            affine = np.asarray(image.affine, dtype=np.float64)
            ras = points[:, :3] @ RAS_TO_LPS  # LPS -> RAS: the same flip
            voxels = np.rint((np.linalg.inv(affine) @ np.c_[ras, np.ones(len(ras))].T)[:3].T).astype(int)
            shape = np.asarray(image.shape[1:])
            inside = np.all((voxels >= 0) & (voxels < shape), axis=1)
            # RandWeightedCropd's centre range (monai.transforms.utils.weighted_patch_samples); one voxel if smaller
            low = np.where(shape > self.spatial_size, self.spatial_size // 2, shape // 2)
            high = np.where(shape > self.spatial_size, shape - self.spatial_size + self.spatial_size // 2 - 1, low)
            for (i, j, k), w in zip(np.clip(voxels[inside], low, high), points[inside, 3]):
                weights[0, i, j, k] += float(w)
        d[self.weight_key] = weights
        return d


class CropAxialRanged(MapTransform):
    """Crop ``keys`` to the axial slab between two head-foot positions (mm) named by the item's ``range_key``.

    For a training host whose known, unlabelled lesion lies elsewhere: "lesion-free" then means the region far from
    it (``../shared/data/CATALOGUE.md``). The positions are the RAS z world coordinate (DICOM patient z); put it
    after ``Orientationd`` (axis 2 superior). Items without ``range_key`` pass unchanged. A MONAI ``SpatialCrop``, so
    the affine follows.
    """

    def __init__(self, keys: KeysCollection, range_key: str = "axial_range_mm", allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.range_key = range_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if d.get(self.range_key) is None:
            return d
        low, high = sorted(float(v) for v in d[self.range_key])
        first = d[self.first_key(d)]
        affine = first.affine.numpy() if isinstance(first, MetaTensor) else np.eye(4)
        if abs(affine[2, 2]) < 1e-6 or np.abs(affine[2, :2]).max() > 1e-3 * abs(affine[2, 2]):
            raise ValueError(f"{self.range_key}: axis 2 must be the axial axis (after Orientationd RAS)")
        z = affine[2, 3] + affine[2, 2] * np.arange(first.shape[-1])
        inside = np.nonzero((z >= low) & (z <= high))[0]
        if inside.size == 0:
            raise ValueError(
                f"{self.range_key} [{low}, {high}] mm misses the scan (z {z.min():.1f} to {z.max():.1f} mm)"
            )
        crop = SpatialCrop(
            roi_start=[0, 0, int(inside[0])], roi_end=[first.shape[1], first.shape[2], int(inside[-1]) + 1]
        )
        for key in self.key_iterator(d):
            d[key] = crop(d[key])
        return d


# Tissue denser than this is patient (or table, or what lies on it); air, foam and lung are less dense.
BODY_HU = -500.0


# A separate 3D component is patient when it holds at least this fraction of the largest one's voxels: both legs of a
# limb scan are kept; the table (about 4 % of the body on the project's scans) and smaller objects are not.
BODY_PART_FRACTION = 0.1


def fill_axial_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` of every axial slice (axis 2), in one labelling of the volume: a hole is a
    background region, 4-connected within its slice, that does not reach the slice's edge. Same result as filling
    slice by slice, without the per-slice iterative dilation (the most expensive part of the body bound)."""
    mask = np.asarray(mask, dtype=bool)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    regions, count = ndimage.label(~mask, structure=in_plane)
    reaches_edge = np.zeros(count + 1, bool)
    for edge in (regions[0], regions[-1], regions[:, 0], regions[:, -1]):
        reaches_edge[edge] = True
    reaches_edge[0] = False  # label 0 is the mask itself
    return ~reaches_edge[regions]


def body_mask(tissue: np.ndarray) -> np.ndarray:
    """The patient's body from a 3D tissue mask (axis 2 axial): the tissue opened in-plane by a 3 x 3 square, which cuts
    the table's thin shells where they touch the patient's back (unopened, they join the table to the patient and
    enclose the air under it), each axial slice's holes (lungs, bowel gas) filled, then the largest 3D connected
    component and any other of at least ``BODY_PART_FRACTION`` of it, which leaves out the table and what lies on it
    (positioning aids, cables, objects beside the patient) wherever they do not touch the patient."""
    square = np.zeros((3, 3, 3), bool)
    square[:, :, 1] = True  # a 3 x 3 in-plane square: opening keeps rectangles and every body outline but its pixels
    body = fill_axial_holes(ndimage.binary_opening(np.asarray(tissue, dtype=bool), square))
    components, count = ndimage.label(body)
    if count <= 1:
        return body
    sizes = ndimage.sum_labels(body, components, index=np.arange(1, count + 1))
    keep = np.concatenate([[False], sizes >= BODY_PART_FRACTION * sizes.max()])
    return keep[components]


class BoundToBodyd(MapTransform):
    """Set the lesion probability to 0 outside the patient's body, so no finding lies on the table or in the air.

    Runs on the preprocessed grid, before ``Invertd``: the body is ``body_mask`` of the windowed image above the
    window value of ``BODY_HU`` (above 0 where the window starts higher, as the abdomen window does), grown by
    ``margin_voxels`` in-plane so that lesions at the skin are kept. ``keys`` are the 2-channel probability maps; each
    becomes its 1-channel lesion probability (the background channel is 1 minus it), so that ``Invertd`` resamples
    one channel, not two: half the postprocessing time of a full scan.
    """

    def __init__(
        self, keys: KeysCollection, image_key: str = "image", region_key: str = "region", margin_voxels: int = 2
    ) -> None:
        super().__init__(keys)
        self.image_key = image_key
        self.region_key = region_key
        self.margin_voxels = margin_voxels

    def body(self, image: torch.Tensor, region: str) -> np.ndarray:
        lo, hi = region_window(region)
        level = max((BODY_HU - lo) / (hi - lo), 0.0)
        body = body_mask(np.asarray(image[0].detach().cpu()) > level)
        if self.margin_voxels:
            disk = np.zeros((3, 3, 1), bool)
            disk[:, :, 0] = ndimage.generate_binary_structure(2, 1)
            body = ndimage.binary_dilation(body, disk, iterations=self.margin_voxels)
        return body

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        region = d.get(self.region_key)
        if not region:
            raise KeyError(f"item has no {self.region_key!r}: the body threshold depends on the region's window.")
        shape = tuple(d[self.image_key].shape[1:])
        body = None
        for key in self.key_iterator(d):
            prob = d[key]
            if prob.shape[0] != 2 or tuple(prob.shape[1:]) != shape:
                raise ValueError(f"{key}: expected a 2-channel map on the image's grid {shape}")
            if not prob[1].any():  # Focus left the map empty (Glance kept no window): nothing to bound
                bounded = prob[1:].clone()
            else:
                if body is None:
                    body = torch.from_numpy(self.body(d[self.image_key], str(region)))
                bounded = prob[1:] * body.to(prob.device, prob.dtype)
            d[key] = (
                MetaTensor(bounded, meta=prob.meta, applied_operations=prob.applied_operations)
                if isinstance(prob, MetaTensor)
                else bounded
            )
        return d
