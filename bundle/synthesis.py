"""Lesion synthesis: paint parametric lesions into real CT (HU) with exact masks (docs/synthesis.md).

Real abdominal lesion masks are missing from the project's data, so lesions are painted into real scans: a randomly
deformed ellipsoid placed inside a host organ, filled with an attenuation drawn relative to the organ (table
``LESION_TYPES``), textured with noise matched to the scan, and blended through a soft margin. The mask is the set
of voxels whose blend weight is >= 0.5; outside it only the margin band (outside voxels closer than ``margin_mm / 2``
to the mask) changes.

- ``synthesize_lesion``: the pure function (numpy in, numpy out, one ``numpy.random.Generator``).
- ``RandSynthLesiond``: the MONAI randomizable dictionary transform for training (HU images, before windowing).
- ``python -m bundle.synthesis --out DIR --count N --seed S``: a synthetic validation set with an MSD-style datalist.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from bundle.transforms import BODY_HU, RegionWindowd, body_mask
from bundle.writers import atomic_write_json, atomic_write_nifti
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirst, LoadImage, MapTransform, Orientation, RandomizableTransform
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation

__all__ = [
    "ORGANS",
    "LESION_TYPES",
    "LesionType",
    "NoRoomError",
    "RandSynthLesiond",
    "synthesize_lesion",
    "organ_masks_from_map",
    "hu_organ_masks",
    "host_statistics",
    "blend_weight",
    "lesion_signed_distance",
    "feret_diameter_mm",
    "make_synthetic_set",
    "insert_before_window",
]

logger = logging.getLogger("gf_screen.synthesis")


@dataclass(frozen=True)
class Organ:
    labels: tuple[int, ...]  # TotalSegmentator v2 label ids
    reference_hu: tuple[float, float]  # host voxels in this HU range give the reference attenuation (and noise)
    noise_from_soft_tissue: bool = False  # lung: measure noise in nearby soft tissue, not in the lung's texture


# TotalSegmentator v2 ids, checked against the label table stored in example_seg.nii.gz (tests/test_synthesis.py).
ORGANS: dict[str, Organ] = {
    "spleen": Organ((1,), (-20.0, 300.0)),
    "kidney": Organ((2, 3), (-20.0, 300.0)),
    "liver": Organ((5,), (-20.0, 300.0)),
    "pancreas": Organ((7,), (-20.0, 300.0)),  # -20: fat between the lobules and at the edge is not parenchyma
    "lung": Organ((10, 11, 12, 13, 14), (-1000.0, -400.0), noise_from_soft_tissue=True),
    "colon": Organ((20,), (-20.0, 300.0)),  # the colon label includes gas and stool: the wall is the reference
    # muscle and fat of the body wall and limbs, from HU thresholds (``hu_organ_masks``), not from an organ map
    "soft_tissue": Organ((), (0.0, 100.0)),
}
AORTA_LABEL = 52  # TotalSegmentator v2 "aorta": its attenuation tells an enhanced scan from an unenhanced one
SOFT_TISSUE_HU = (-50.0, 150.0)


@dataclass(frozen=True)
class LesionType:
    """One row of the attenuation table; the rationale for every number is in docs/synthesis.md."""

    organ: str
    reference: str  # "host": mean_hu is added to the host's median HU; "absolute": mean_hu is in HU
    mean_hu: tuple[float, float]  # lesion mean attenuation (difference to host, or absolute), contrast-enhanced
    mean_hu_unenhanced: tuple[float, float]  # the same on unenhanced CT
    bounds_hu: tuple[float, float]  # the lesion mean always lies here (keeps "host" lesions physical)
    heterogeneity_hu: tuple[float, float]  # std of the smooth internal texture
    diameter_mm: tuple[float, float]  # longest diameter, before intersecting with the requested range
    edge_contact_prob: float = 0.0  # chance that the lesion is placed against the organ's edge (pleura, mediastinum)
    necrosis_prob: float = 0.0  # chance of a low-attenuation necrotic centre
    necrosis_drop_hu: tuple[float, float] = (0.0, 0.0)  # the necrotic centre is this much below the lesion mean


# fmt: off
LESION_TYPES: dict[str, LesionType] = {
    #                                 organ      reference  enhanced          unenhanced        bounds
    #                                 heterogeneity  diameter (mm)
    "liver_metastasis": LesionType("liver", "host", (-70.0, -20.0), (-30.0, -10.0), (-10.0, 150.0),
                                   (3.0, 10.0), (3.0, 50.0)),
    "pancreatic_tumour": LesionType("pancreas", "host", (-50.0, -15.0), (-15.0, -5.0), (-10.0, 150.0),
                                    (3.0, 8.0), (3.0, 40.0)),
    "kidney_mass": LesionType("kidney", "host", (-60.0, -15.0), (-15.0, 10.0), (-10.0, 200.0),
                              (5.0, 15.0), (3.0, 50.0)),
    "splenic_lesion": LesionType("spleen", "host", (-50.0, -15.0), (-20.0, -5.0), (-10.0, 150.0),
                                 (3.0, 8.0), (3.0, 40.0)),
    "colon_tumour": LesionType("colon", "absolute", (60.0, 110.0), (30.0, 50.0), (30.0, 110.0),
                               (3.0, 10.0), (10.0, 50.0)),
    "lung_nodule_solid": LesionType("lung", "absolute", (-50.0, 60.0), (-50.0, 60.0), (-50.0, 60.0),
                                    (5.0, 15.0), (3.0, 30.0)),
    "lung_nodule_subsolid": LesionType("lung", "absolute", (-750.0, -300.0), (-750.0, -300.0), (-750.0, -300.0),
                                       (10.0, 40.0), (5.0, 30.0)),
    # large solid lung masses, half of them against the pleura or the mediastinum, half with a necrotic centre
    "lung_mass": LesionType("lung", "absolute", (25.0, 70.0), (25.0, 50.0), (20.0, 70.0),
                            (8.0, 20.0), (30.0, 70.0), edge_contact_prob=0.5, necrosis_prob=0.5,
                            necrosis_drop_hu=(25.0, 50.0)),
    # soft-tissue masses (sarcoma-like) in the muscle and fat of the body wall and limbs
    "soft_tissue_mass": LesionType("soft_tissue", "absolute", (30.0, 70.0), (25.0, 50.0), (20.0, 70.0),
                                   (6.0, 15.0), (20.0, 80.0), edge_contact_prob=0.3, necrosis_prob=0.4,
                                   necrosis_drop_hu=(25.0, 45.0)),
}
# fmt: on
PHASES = ("enhanced", "unenhanced")

DEFORMATION = 0.15  # largest boundary displacement, as a fraction of the longest semi-axis
AXIS_RATIO = (0.7, 1.0)  # the two shorter semi-axes relative to the longest
TEXTURE_SCALE_MM = 2.0  # correlation length of the internal (heterogeneity) texture
STATS_REACH_MM = 60.0  # host statistics come from the host within this distance (per axis) of the centre


class NoRoomError(ValueError):
    """The host organ is too thin or too small for a lesion of the requested size."""


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (column norms of the affine's linear part)."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def organ_masks_from_map(organ_map: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean host masks from a TotalSegmentator v2 label map (3D); organs absent from the map are left out."""
    masks = {name: np.isin(organ_map, organ.labels) for name, organ in ORGANS.items() if organ.labels}
    return {name: mask for name, mask in masks.items() if mask.any()}


def hu_organ_masks(hu: np.ndarray, spacing: Sequence[float], min_lung_ml: float = 50.0) -> dict[str, np.ndarray]:
    """Body and lung masks from HU thresholds, for scans without an organ map (axis 2 must be the axial axis).

    Body: each axial slice's tissue (> -500 HU) with holes filled, largest 3D component. Lung: air-density voxels
    (< -400 HU) inside the body, in components of at least ``min_lung_ml`` whose median is above -950 HU, which
    keeps aerated parenchyma and drops pure gas (bowel, trachea alone).
    """
    hu = np.asarray(hu)
    body = body_mask(hu > BODY_HU)
    if not body.any():
        return {}
    air = ndimage.binary_opening(body & (hu < -400))
    components, count = ndimage.label(air)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lung = np.zeros_like(air)
    for index, found in enumerate(ndimage.find_objects(components), start=1):
        part = components[found] == index
        if part.sum() * voxel_ml >= min_lung_ml and np.median(hu[found][part]) > -950:
            lung[found] |= part
    masks = {"body": body}
    if lung.any():
        masks["lung"] = lung
    soft = soft_tissue_mask(hu, body, lung, spacing)
    if soft.any():
        masks["soft_tissue"] = soft
    return masks


def soft_tissue_mask(
    hu: np.ndarray,
    body: np.ndarray,
    lung: np.ndarray,
    spacing: Sequence[float],
    depth_mm: tuple[float, float] = (4.0, 45.0),
) -> np.ndarray:
    """Muscle and fat (-150 to 120 HU) of the body wall or limb: between ``depth_mm`` below the skin, away from bone
    (> 200 HU, 4 mm around it) and lung (4 mm around it). Where soft-tissue masses such as sarcomas grow."""
    depth = _coarse_distance_mm(body, spacing)
    soft = body & (depth >= depth_mm[0]) & (depth <= depth_mm[1]) & (hu > -150) & (hu < 120)
    keep_out = (hu > 200) | lung
    if keep_out.any():
        soft &= _coarse_distance_mm(~keep_out, spacing) > 4.0
    return ndimage.binary_opening(soft, iterations=2)


def _coarse_distance_mm(mask: np.ndarray, spacing: Sequence[float], step: int = 3) -> np.ndarray:
    """Distance (mm) to the nearest voxel outside ``mask``, on a grid ``step`` times coarser in-plane, repeated back
    to full size: a host mask needs millimetres, not sub-voxel accuracy, and this is ~10x faster on whole scans."""
    coarse = mask[::step, ::step, :]
    distance = ndimage.distance_transform_edt(coarse, sampling=np.asarray(spacing, float) * [step, step, 1])
    full = np.repeat(np.repeat(distance, step, axis=0), step, axis=1)
    return full[: mask.shape[0], : mask.shape[1]]


def contrast_phase(hu: np.ndarray, organ_map: np.ndarray | None) -> str:
    """ "enhanced" when the aorta of the organ map is above 100 HU, "unenhanced" below; "enhanced" without a map.

    Unenhanced blood is about 40 HU and enhanced blood well above 100 HU, so the aorta separates the two reliably.
    """
    if organ_map is None:
        return "enhanced"
    aorta = np.asarray(organ_map) == AORTA_LABEL
    if not aorta.any():
        return "enhanced"
    return "enhanced" if float(np.median(np.asarray(hu)[aorta])) >= 100.0 else "unenhanced"


def host_statistics(
    hu: np.ndarray, host: np.ndarray, reference_hu: tuple[float, float], noise_region: np.ndarray | None = None
) -> dict[str, object]:
    """Reference attenuation, noise std and noise correlation of the host organ.

    Reference: the median of host voxels inside ``reference_hu`` (drops fat and gas at the organ's edge). Noise: the
    robust std (1.4826 MAD) of the high-pass residual (image minus a 3-voxel Gaussian blur, which removes anatomy but
    barely touches voxel-scale noise) on the eroded host, or on the eroded ``noise_region`` when given (the lung's
    own texture is not noise). Correlation: the lag-1 autocorrelation rho of that residual
    along each axis, turned into the per-axis sigma of the Gaussian filter that gives white noise the same rho
    (filtered white noise has rho = exp(-1 / (4 sigma^2))).
    """
    hu = np.asarray(hu, dtype=np.float32)
    window = host & (hu >= reference_hu[0]) & (hu <= reference_hu[1])
    if not window.any():
        raise NoRoomError("the host organ has no voxel in its reference HU range")
    reference = float(np.median(hu[window]))
    if noise_region is not None and noise_region.sum() >= 50:
        window = noise_region
    core = ndimage.binary_erosion(window)
    if core.sum() < 50:
        core = window
    found = ndimage.find_objects(core.astype(np.uint8))[0]
    found = tuple(slice(max(s.start - 6, 0), s.stop + 6) for s in found)
    sub, sub_core = hu[found], core[found]
    residual = sub - ndimage.gaussian_filter(sub, 3.0)
    values = residual[sub_core]
    noise = float(1.4826 * np.median(np.abs(values - np.median(values))))
    sigmas = []
    for axis in range(3):
        a = np.take(residual, np.arange(sub.shape[axis] - 1), axis=axis)
        b = np.take(residual, np.arange(1, sub.shape[axis]), axis=axis)
        both = np.take(sub_core, np.arange(sub.shape[axis] - 1), axis=axis) & np.take(
            sub_core, np.arange(1, sub.shape[axis]), axis=axis
        )
        rho = float(np.corrcoef(a[both], b[both])[0, 1]) if both.sum() > 10 else 0.0
        rho = min(max(rho, 0.0), 0.9)
        sigmas.append(float(np.sqrt(-1.0 / (4.0 * np.log(rho)))) if rho > 0.05 else 0.0)
    return {"reference_hu": reference, "noise_std": noise, "noise_sigma_voxels": tuple(sigmas)}


def unit_noise(shape: tuple[int, ...], sigma_voxels: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of unit std, smoothed per axis (sigma in voxels) to give it the scan's correlation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=list(sigma_voxels))
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


def lesion_signed_distance(
    shape: tuple[int, int, int],
    centre: Sequence[float],
    linear: np.ndarray,
    semi_axes_mm: Sequence[float],
    rotation: np.ndarray,
    displacement: np.ndarray,
) -> np.ndarray:
    """Signed distance (mm; > 0 inside, < 0 outside) to a deformed ellipsoid, on a voxel box.

    The ellipsoid (semi-axes ``semi_axes_mm`` along the columns of ``rotation``) is evaluated at p + u(p), where p is
    the voxel's offset from ``centre`` in mm (through the affine's ``linear`` part) and ``displacement`` is u on the
    box grid (3, *shape) in mm. A voxel is inside when its displaced point is in the ellipsoid; the signed distance is
    the Euclidean distance transform (in mm) to the other side, positive inside.
    """
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    offsets = (grid - np.asarray(centre, dtype=np.float64)) @ np.asarray(linear, dtype=np.float64).T
    local = (offsets + np.moveaxis(displacement, 0, -1)) @ np.asarray(rotation)
    inside = np.sum((local / np.asarray(semi_axes_mm)) ** 2, axis=-1) <= 1.0
    spacing = np.linalg.norm(np.asarray(linear, dtype=float), axis=0)
    return ndimage.distance_transform_edt(inside, sampling=spacing) - ndimage.distance_transform_edt(
        ~inside, sampling=spacing
    )


def blend_weight(signed_distance_mm: np.ndarray, margin_mm: float) -> np.ndarray:
    """Blend weight of the soft margin: 0.5 + d / margin_mm, clipped to [0, 1].

    It is 0.5 on the lesion boundary, reaches 1 at margin_mm / 2 inside and 0 at margin_mm / 2 outside. Every inside
    voxel has d > 0, so the mask (weight >= 0.5) is exactly the inside of the shape.
    """
    return np.clip(0.5 + np.asarray(signed_distance_mm) / float(margin_mm), 0.0, 1.0).astype(np.float32)


def feret_diameter_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Largest distance (mm) between two voxel centres of ``mask`` (convex hull of its points, then all pairs)."""
    points = np.argwhere(mask).astype(np.float64) @ np.asarray(affine, dtype=float)[:3, :3].T
    if len(points) < 2:
        return 0.0
    if len(points) > 4:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # flat lesion (one slice): all pairs of its points are still few
            pass
    return float(pdist(points).max())


def _sample_mean_hu(spec: LesionType, reference: float, phase: str, rng: np.random.Generator) -> float:
    """Lesion mean HU from the table, within ``bounds_hu``; NoRoomError when the host makes that impossible."""
    offset = reference if spec.reference == "host" else 0.0
    table = spec.mean_hu if phase == "enhanced" else spec.mean_hu_unenhanced
    lo = max(table[0] + offset, spec.bounds_hu[0])
    hi = min(table[1] + offset, spec.bounds_hu[1])
    if lo > hi:
        raise NoRoomError(f"host reference {reference:.0f} HU leaves no attenuation in the table's range")
    return float(rng.uniform(lo, hi))


def synthesize_lesion(
    hu: np.ndarray,
    affine: np.ndarray,
    hosts: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    lesion_types: Sequence[str] | None = None,
    diameter_mm: tuple[float, float] = (3.0, 80.0),
    margin_mm: float = 3.0,
    phase: str = "enhanced",
) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Paint one lesion into ``hu`` (3D, HU); returns (new image, lesion mask, description). Inputs are not changed.

    The lesion type is drawn among ``lesion_types`` whose organ is in ``hosts`` (boolean masks on the image grid;
    when one has no room the next is tried, in a random order); the longest diameter log-uniformly within the type's
    range intersected with ``diameter_mm`` (small lesions are the common and hard ones). The centre is a host voxel
    at least the lesion's radius plus half the margin from the organ's edge and the image's edge (the diameter
    shrinks to fit thin organs, down to the range's minimum, else NoRoomError), so the whole lesion and its margin
    band lie inside the organ; the weight is also zeroed outside it.
    """
    hu = np.asarray(hu)
    affine = np.asarray(affine, dtype=float)
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    names = [name for name in (lesion_types or LESION_TYPES) if LESION_TYPES[name].organ in hosts]
    if not names:
        raise NoRoomError(f"no host organ for lesion types {list(lesion_types or LESION_TYPES)} in {sorted(hosts)}")
    errors = []
    for name in rng.permutation(names):
        try:
            return _paint(hu, affine, hosts[LESION_TYPES[name].organ], str(name), rng, diameter_mm, margin_mm, phase)
        except NoRoomError as error:
            errors.append(str(error))
    raise NoRoomError("; ".join(errors))


def _place(
    host: np.ndarray,
    spacing: np.ndarray,
    name: str,
    rng: np.random.Generator,
    diameter_mm: tuple[float, float],
    margin_mm: float,
) -> tuple[float, np.ndarray, bool]:
    """A diameter drawn from the type's and the asked range, and a centre deep enough in ``host`` for it (or, for
    a type that may touch its host's edge, near enough to the edge that the edge cuts it)."""
    spec = LESION_TYPES[name]
    if not host.any():
        raise NoRoomError(f"{name}: the {spec.organ} mask is empty")
    d_lo, d_hi = max(spec.diameter_mm[0], diameter_mm[0]), min(spec.diameter_mm[1], diameter_mm[1])
    if d_lo > d_hi:
        raise NoRoomError(f"{name}: its sizes {spec.diameter_mm} miss the requested {diameter_mm}")
    diameter = float(np.exp(rng.uniform(np.log(d_lo), np.log(d_hi))))
    found = ndimage.find_objects(host.astype(np.uint8))[0]
    depth = ndimage.distance_transform_edt(np.pad(host[found], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    room = float(depth.max()) - margin_mm / 2.0
    diameter = min(diameter, 2.0 * room)
    if diameter < d_lo:
        raise NoRoomError(f"{name}: the {spec.organ} is too thin for a {d_lo:g} mm lesion")
    candidates = np.argwhere(depth >= diameter / 2.0 + margin_mm / 2.0)
    edge_contact = spec.edge_contact_prob > 0 and rng.random() < spec.edge_contact_prob
    if edge_contact:  # centre closer to the organ's edge than the radius: the edge cuts the lesion flat
        near_edge = np.argwhere((depth >= max(0.4 * diameter / 2.0, margin_mm)) & (depth <= 0.8 * diameter / 2.0))
        edge_contact = len(near_edge) > 0
        candidates = near_edge if edge_contact else candidates
    centre = candidates[int(rng.integers(len(candidates)))] + np.array([s.start for s in found])
    return diameter, centre, bool(edge_contact)


def _shape(
    hu_shape: tuple[int, ...],
    affine: np.ndarray,
    host: np.ndarray,
    centre: np.ndarray,
    diameter: float,
    margin_mm: float,
    rng: np.random.Generator,
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """The lesion's box around ``centre``, its signed distance (a deformed, rotated ellipsoid) and its blend weight,
    cut by the host's edge together with its margin band."""
    spacing = spacing_of(affine)
    longest = diameter / 2.0 / (1.0 + DEFORMATION)
    semi_axes = longest * np.array([1.0, *rng.uniform(*AXIS_RATIO, size=2)])
    rotation = Rotation.random(rng=rng).as_matrix()
    half = np.ceil((diameter / 2.0 + margin_mm / 2.0) / spacing).astype(int) + 1
    lo, hi = np.maximum(centre - half, 0), np.minimum(centre + half + 1, hu_shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    coarse = rng.standard_normal((3, 4, 4, 4))
    coords = np.meshgrid(*[np.linspace(0, 3, n) for n in box_shape], indexing="ij")
    displacement = np.stack([ndimage.map_coordinates(c, coords, order=3, mode="nearest") for c in coarse])
    displacement *= DEFORMATION * longest / max(float(np.linalg.norm(displacement, axis=0).max()), 1e-6)
    distance = lesion_signed_distance(box_shape, centre - lo, affine[:3, :3], semi_axes, rotation, displacement)
    weight = blend_weight(distance, margin_mm) * host[box]
    inside = weight >= 0.5  # where the host's edge cuts the lesion, its margin band goes too
    weight *= inside | (ndimage.distance_transform_edt(~inside, sampling=spacing) < margin_mm / 2.0)
    return box, distance, weight


def _texture(
    spec: LesionType,
    distance: np.ndarray,
    spacing: np.ndarray,
    mean_hu: float,
    heterogeneity: float,
    stats: dict,
    rng: np.random.Generator,
) -> tuple[np.ndarray, bool]:
    """The lesion's HU in its box: mean, textured heterogeneity and the host's noise; for some types a necrotic
    centre, a low-attenuation core inside a viable rim of 30-60 % of the lesion's depth with a 3 mm transition."""
    lesion = (
        mean_hu
        + heterogeneity * unit_noise(distance.shape, TEXTURE_SCALE_MM / spacing, rng)
        + float(stats["noise_std"]) * unit_noise(distance.shape, stats["noise_sigma_voxels"], rng)
    )
    necrotic = spec.necrosis_prob > 0 and rng.random() < spec.necrosis_prob
    if necrotic:
        rim = rng.uniform(0.3, 0.6) * float(distance.max())
        core = np.clip((distance - rim) / 3.0, 0.0, 1.0).astype(np.float32)
        lesion = lesion - core * float(rng.uniform(*spec.necrosis_drop_hu))
    return lesion, bool(necrotic)


def _paint(
    hu: np.ndarray,
    affine: np.ndarray,
    host: np.ndarray,
    name: str,
    rng: np.random.Generator,
    diameter_mm: tuple[float, float],
    margin_mm: float,
    phase: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """One lesion of type ``name`` in ``host``: see ``synthesize_lesion``."""
    spacing, spec = spacing_of(affine), LESION_TYPES[name]
    host = np.asarray(host, dtype=bool)
    diameter, centre, edge_contact = _place(host, spacing, name, rng, diameter_mm, margin_mm)
    # statistics in a box of STATS_REACH_MM around the centre: local, and cheap on large scans
    near = tuple(slice(max(int(c - r), 0), int(c + r + 1)) for c, r in zip(centre, np.ceil(STATS_REACH_MM / spacing)))
    organ = ORGANS[spec.organ]
    soft = None
    if organ.noise_from_soft_tissue:
        soft = (hu[near] >= SOFT_TISSUE_HU[0]) & (hu[near] <= SOFT_TISSUE_HU[1])
    stats = host_statistics(hu[near], host[near], organ.reference_hu, soft)
    mean_hu = _sample_mean_hu(spec, float(stats["reference_hu"]), phase, rng)
    heterogeneity = float(rng.uniform(*spec.heterogeneity_hu))
    box, distance, weight = _shape(hu.shape, affine, host, centre, diameter, margin_mm, rng)
    lesion, necrotic = _texture(spec, distance, spacing, mean_hu, heterogeneity, stats, rng)
    original = hu[box].astype(np.float32)
    out = hu.astype(np.float32, copy=True)
    out[box] = original + weight * (lesion - original)
    mask = np.zeros(hu.shape, dtype=bool)
    mask[box] = weight >= 0.5
    info = {
        "lesion_type": name,
        "organ": spec.organ,
        "centre_voxel": [int(c) for c in centre],
        "diameter_mm": round(diameter, 3),
        "feret_diameter_mm": round(feret_diameter_mm(mask[box], affine), 3),
        "volume_ml": round(float(mask.sum() * np.prod(spacing)) / 1000.0, 4),
        "mean_hu": round(mean_hu, 2),
        "host_reference_hu": round(float(stats["reference_hu"]), 2),
        "noise_std_hu": round(float(stats["noise_std"]), 2),
        "heterogeneity_hu": round(heterogeneity, 2),
        "margin_mm": margin_mm,
        "phase": phase,
        "edge_contact": edge_contact,
        "necrotic_centre": necrotic,
    }
    return out, mask, info


def host_masks(hu: np.ndarray, affine: np.ndarray, organ_map: np.ndarray | None) -> dict[str, np.ndarray]:
    """Host masks: from the organ map when there is one, else body and lungs from HU thresholds."""
    if organ_map is not None:
        masks = organ_masks_from_map(np.asarray(organ_map))
        soft = hu_organ_masks(hu, spacing_of(affine)).get("soft_tissue")
        return masks if soft is None else {**masks, "soft_tissue": soft}
    return hu_organ_masks(hu, spacing_of(affine))


class RandSynthLesiond(RandomizableTransform, MapTransform):
    """Paint a synthetic lesion into a channel-first HU image and add it to the label (training augmentation).

    Put it after ``Orientationd``/``Spacingd`` (axis 2 axial) and before intensity windowing. ``keys`` are (image,
    label); a missing label becomes all zero. ``organ_key`` names an optional TotalSegmentator organ map on the same
    grid; without it the lesion goes into the HU-threshold lungs. ``phase`` "auto" reads the contrast phase from the
    organ map's aorta (enhanced when there is no map). Existing lesions are kept out of the host, and the
    new label is the union of the old one and the lesion. ``max_lesions`` > 1 paints between 1 and that many lesions
    (uniformly), each kept out of the earlier ones: more lesion windows per training step. The item records
    ``synth_lesion_type`` and ``synth_organ`` (comma-separated, one entry per lesion; empty strings when nothing was
    painted, so that batches collate).
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        organ_key: str | None = "organ",
        prob: float = 0.5,
        lesion_types: Sequence[str] | None = None,
        diameter_mm: tuple[float, float] = (3.0, 80.0),
        margin_mm: float = 3.0,
        phase: str = "auto",
        max_lesions: int = 1,
        allow_missing_keys: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) != 2:
            raise ValueError("keys must be (image, label)")
        unknown = set(lesion_types or ()) - set(LESION_TYPES)
        if unknown:
            raise ValueError(f"unknown lesion types {sorted(unknown)}; known: {sorted(LESION_TYPES)}")
        self.organ_key = organ_key
        self.lesion_types = tuple(lesion_types) if lesion_types else None
        self.diameter_mm = tuple(diameter_mm)
        if phase not in ("auto", *PHASES):
            raise ValueError(f"phase must be 'auto' or one of {PHASES}, got {phase!r}")
        if max_lesions < 1:
            raise ValueError(f"max_lesions must be at least 1, got {max_lesions}")
        self.margin_mm = margin_mm
        self.phase = phase
        self.max_lesions = int(max_lesions)
        self._seed = 0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(2**31))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, object]:
        d = dict(data)
        image_key, label_key = self.keys
        self.randomize()
        image = d[image_key]
        label = d.get(label_key)
        if label is None:
            label = torch.zeros_like(image, dtype=torch.uint8)
        d["synth_lesion_type"], d["synth_organ"] = "", ""
        if self._do_transform:
            affine = image.affine.numpy() if isinstance(image, MetaTensor) else np.eye(4)
            hu = image[0].detach().cpu().numpy()
            organ = d.get(self.organ_key) if self.organ_key else None
            if isinstance(organ, (str, os.PathLike)):
                raise ValueError(
                    f"{self.organ_key!r} is the path {organ}; load it with the image (LoadImaged, Orientationd, "
                    "Spacingd with nearest) before RandSynthLesiond"
                )
            organ_map = None if organ is None else np.asarray(organ)[0]
            hosts = host_masks(hu, affine, organ_map)
            phase = contrast_phase(hu, organ_map) if self.phase == "auto" else self.phase
            existing = np.asarray(label[0].detach().cpu()) > 0
            rng = np.random.default_rng(self._seed)
            painted = []
            for _ in range(int(rng.integers(1, self.max_lesions + 1))):
                free = {name: mask & ~existing for name, mask in hosts.items()}
                try:
                    hu, mask, info = synthesize_lesion(
                        hu, affine, free, rng, self.lesion_types, self.diameter_mm, self.margin_mm, phase
                    )
                except NoRoomError as error:
                    logger.debug("no lesion painted: %s", error)
                    break
                existing |= mask
                painted.append(info)
            if painted:
                d[image_key] = _like(image, torch.from_numpy(hu).to(image.dtype)[None])
                label = _like(label, torch.from_numpy(existing)[None].to(label.dtype))
                d["synth_lesion_type"] = ",".join(str(info["lesion_type"]) for info in painted)
                d["synth_organ"] = ",".join(str(info["organ"]) for info in painted)
        d[label_key] = label
        return d


def insert_before_window(transforms: Sequence[object], synthesis: object) -> list[object]:
    """``transforms`` with ``synthesis`` just before the intensity window, where the image is still in HU."""
    for index, transform in enumerate(transforms):
        if isinstance(transform, RegionWindowd):
            return [*transforms[:index], synthesis, *transforms[index:]]
    raise ValueError("no RegionWindowd among the transforms: lesion synthesis needs the HU image before windowing")


def _like(reference: torch.Tensor, array: torch.Tensor) -> torch.Tensor:
    """``array`` with ``reference``'s metadata (affine, file name) when the reference is a MetaTensor."""
    array = array.to(reference.device)
    if isinstance(reference, MetaTensor):
        return MetaTensor(array, meta=dict(reference.meta), applied_operations=list(reference.applied_operations))
    return array


@dataclass(frozen=True)
class Source:
    image: str  # relative to the data root
    organ_map: str | None
    label: str | None  # an existing lesion mask, kept in the synthetic mask
    region: str


SOURCES: dict[str, Source] = {
    "totalsegmentator": Source(
        "totalsegmentator_example/example_ct_sm.nii.gz", "totalsegmentator_example/example_seg.nii.gz", None, "abdomen"
    ),
    "totalsegmentator_chest": Source("totalsegmentator_example/example_ct.nii.gz", None, None, "chest"),
    "lung1": Source("pyradiomics_lung1/lung1_image.nrrd", None, "pyradiomics_lung1/lung1_label.nrrd", "chest"),
    "lidc": Source(
        "lidc_idri_0314_nodule/image_slab.nii.gz", None, "lidc_idri_0314_nodule/mask_consensus50.nii.gz", "chest"
    ),
}


def load_ras(path: str | os.PathLike) -> MetaTensor:
    """Load a scan or map with ITK, channel first, in RAS (axis 2 axial), as the bundle's preprocessing does."""
    image = EnsureChannelFirst()(LoadImage(image_only=True, reader="ITKReader")(str(path)))
    return Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)


def _load_source(name: str, data_root: Path) -> tuple[MetaTensor, dict[str, np.ndarray], np.ndarray, str]:
    """A synthesis source: its image (RAS), its lesion hosts without its own lesion, that lesion, its contrast phase."""
    source = SOURCES[name]
    image = load_ras(data_root / source.image)
    organ_map = None if source.organ_map is None else load_ras(data_root / source.organ_map)
    label = np.zeros(image.shape[1:], bool)
    if source.label is not None:
        label = np.asarray(load_ras(data_root / source.label)[0]) > 0
    if organ_map is not None and tuple(organ_map.shape) != tuple(image.shape):
        raise ValueError(f"{name}: organ map shape {tuple(organ_map.shape)} != image {tuple(image.shape)}")
    hu = image[0].numpy()
    organs = None if organ_map is None else organ_map[0].numpy()
    hosts = host_masks(hu, image.affine.numpy(), organs)
    return image, {k: v & ~label for k, v in hosts.items()}, label, contrast_phase(hu, organs)


def make_synthetic_set(
    out_dir: str | os.PathLike,
    count: int,
    seed: int,
    sources: Sequence[str] = ("totalsegmentator", "lung1"),
    data_root: str | os.PathLike = "../shared/data",
    lesion_types: Sequence[str] | None = None,
    diameter_mm: tuple[float, float] = (3.0, 80.0),
    margin_mm: float = 3.0,
) -> dict:
    """Write ``count`` synthetic cases (image, mask NIfTI) and ``datalist.json`` under ``out_dir``; return the list.

    Case i uses ``sources[i % len(sources)]`` and the generator ``default_rng([seed, i])``, so a case depends only on
    the seed, its index and its source. Outputs are written atomically and never onto an input.
    """
    data_root, out_dir = Path(data_root), Path(out_dir)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; known: {sorted(SOURCES)}")
    inputs = {
        (data_root / p).resolve()
        for s in sources
        for p in (SOURCES[s].image, SOURCES[s].organ_map, SOURCES[s].label)
        if p is not None
    }
    loaded: dict[str, tuple[MetaTensor, dict[str, np.ndarray], np.ndarray, str]] = {}
    items = []
    for index in range(count):
        name = sources[index % len(sources)]
        if name not in loaded:
            loaded[name] = _load_source(name, data_root)
        image, hosts, label, phase = loaded[name]
        rng = np.random.default_rng([seed, index])
        affine = image.affine.numpy()
        new, mask, info = synthesize_lesion(
            image[0].numpy(), affine, hosts, rng, lesion_types, diameter_mm, margin_mm, phase
        )
        case_id = f"synth_{index:04d}"
        image_rel, label_rel = f"images/{case_id}.nii.gz", f"labels/{case_id}.nii.gz"
        for rel in (image_rel, label_rel):
            if (out_dir / rel).resolve() in inputs:
                raise ValueError(f"refusing to overwrite the input {out_dir / rel}")
        atomic_write_nifti(torch.from_numpy(np.round(new).astype(np.int16)), image.affine, out_dir / image_rel)
        atomic_write_nifti(torch.from_numpy((mask | label).astype(np.uint8)), image.affine, out_dir / label_rel)
        items.append(
            {
                "id": case_id,
                "image": image_rel,
                "label": label_rel,
                "region": SOURCES[name].region,
                "lesion_type": info["lesion_type"],
                "host_organ": info["organ"],  # not "organ": training configs load that key as an organ-map file
                "source": name,
                "synthesis": {"seed": seed, "index": index, **info},
            }
        )
        logger.info("%s: %s in %s, %.1f mm, %.0f HU", case_id, info["lesion_type"], name, info["diameter_mm"],
                    info["mean_hu"])  # fmt: skip
    return _write_synthetic_datalist(out_dir, items, seed, count, sources)


def _write_synthetic_datalist(out_dir: Path, items: list[dict], seed: int, count: int, sources: Sequence[str]) -> dict:
    datalist = {
        "description": (
            "GF-Screen synthetic validation set: parametric lesions painted into real CT by bundle/synthesis.py "
            "(docs/synthesis.md). Labels are the union of the synthetic lesion and the source's own lesion mask. "
            "Paths are relative to this file's folder."
        ),
        "generator": {"seed": seed, "count": count, "sources": {s: asdict(SOURCES[s]) for s in sources}},
        "training": [],
        "validation": items,
        "test": [],
    }
    atomic_write_json(datalist, out_dir / "datalist.json", indent=4)
    return datalist


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bundle.synthesis",
        description="Write a synthetic validation set: real CT with painted lesions, exact masks, and a datalist.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/, labels/, datalist.json)")
    parser.add_argument("--count", type=int, default=10, help="number of cases (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--source", action="append", choices=sorted(SOURCES), help="source scans, repeatable (default: all but lidc)"
    )
    parser.add_argument("--data_root", type=Path, default=Path("../shared/data"), help="shared data folder")
    parser.add_argument("--lesion_type", action="append", choices=sorted(LESION_TYPES), help="repeatable")
    parser.add_argument("--min_diameter_mm", type=float, default=3.0)
    parser.add_argument("--max_diameter_mm", type=float, default=80.0)
    parser.add_argument("--margin_mm", type=float, default=3.0, help="soft margin width (weight 0 to 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        datalist = make_synthetic_set(
            args.out,
            args.count,
            args.seed,
            args.source or ("totalsegmentator", "lung1"),
            args.data_root,
            args.lesion_type,
            (args.min_diameter_mm, args.max_diameter_mm),
            args.margin_mm,
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from error
    print(f"wrote {len(datalist['validation'])} cases and {args.out / 'datalist.json'}")


if __name__ == "__main__":
    main()
