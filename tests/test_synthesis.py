"""Lesion synthesis on real scans: exact masks, placement, sizes, attenuation, determinism, transform, command.

Scans: the TotalSegmentator example with its organ map (3 mm), and a 16-slice crop of the pyradiomics lung1 chest CT
(0.57 x 0.57 x 5 mm, its nodule included) for the HU-threshold path.
"""

from __future__ import annotations

import dataclasses
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle import synthesis
from bundle.synthesis import (
    AORTA_LABEL,
    DEFORMATION,
    LESION_TYPES,
    ORGANS,
    RandSynthLesiond,
    blend_weight,
    contrast_phase,
    host_masks,
    host_statistics,
    hu_organ_masks,
    load_ras,
    spacing_of,
    synthesize_lesion,
    unit_noise,
)
from monai.bundle import ConfigParser
from monai.data import MetaTensor, load_decathlon_datalist
from scipy import ndimage

from tests.conftest import ROOT

TS = "totalsegmentator_example"
MARGIN = 3.0


@pytest.fixture(scope="module")
def abdomen(shared_data):
    image = load_ras(shared_data / TS / "example_ct_sm.nii.gz")
    organ_map = load_ras(shared_data / TS / "example_seg.nii.gz")
    hu = image[0].numpy().astype(np.float32)
    return hu, image.affine.numpy(), host_masks(hu, image.affine.numpy(), organ_map[0].numpy()), organ_map


@pytest.fixture(scope="module")
def chest(shared_data):
    image = load_ras(shared_data / "pyradiomics_lung1" / "lung1_image.nrrd")[..., 24:40]
    label = load_ras(shared_data / "pyradiomics_lung1" / "lung1_label.nrrd")[..., 24:40]
    hu = image[0].numpy().astype(np.float32)
    return hu, image.affine.numpy(), hu_organ_masks(hu, spacing_of(image.affine.numpy())), image, label


def _check_exact_mask(hu, new, mask, host, spacing):
    """Every mask voxel changed; changed voxels outside the mask only in the band within MARGIN / 2 of it."""
    changed = new != hu
    assert mask.any()
    assert changed[mask].all(), "a mask voxel is unchanged"
    outside = changed & ~mask
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
    assert (distance[outside] < MARGIN / 2).all(), "a voxel changed outside the margin band"
    assert not (changed & ~host).any(), "a voxel changed outside the host organ"


def test_organ_ids_match_the_maps_label_table(shared_data):
    """The ids in ORGANS are the names stored in example_seg.nii.gz's own label table, not remembered ones."""
    extension = nib.load(shared_data / TS / "example_seg.nii.gz").header.extensions[0].get_content().decode()
    names = {int(k): v for k, v in re.findall(r'Key="(\d+)"[^>]*><!\[CDATA\[(\w+)\]\]>', extension)}
    expected = {
        "spleen": {"spleen"},
        "kidney": {"kidney_right", "kidney_left"},
        "liver": {"liver"},
        "pancreas": {"pancreas"},
        "lung": {f"lung_{lobe}" for lobe in ("upper_lobe_left", "lower_lobe_left", "upper_lobe_right")}
        | {"lung_middle_lobe_right", "lung_lower_lobe_right"},
        "colon": {"colon"},
        "soft_tissue": set(),  # from HU thresholds, not from the map
    }
    assert {organ: {names[i] for i in ORGANS[organ].labels} for organ in ORGANS} == expected
    assert names[AORTA_LABEL] == "aorta"


@pytest.mark.parametrize("lesion_type", sorted(set(LESION_TYPES) - {"lung_mass"}))  # the example's lung bases are thin
def test_every_type_is_exact_and_inside_its_organ(abdomen, lesion_type):
    hu, affine, hosts, organ_map = abdomen
    phase = contrast_phase(hu, organ_map[0].numpy())
    new, mask, info = synthesize_lesion(hu, affine, hosts, np.random.default_rng(1), [lesion_type], phase=phase)
    assert info["lesion_type"] == lesion_type and info["organ"] == LESION_TYPES[lesion_type].organ
    host = hosts[info["organ"]]
    assert not (mask & ~host).any(), "lesion voxels outside the host organ"
    _check_exact_mask(hu, new, mask, host, spacing_of(affine))
    spec = LESION_TYPES[lesion_type]
    offset = info["host_reference_hu"] if spec.reference == "host" else 0.0
    table = spec.mean_hu if phase == "enhanced" else spec.mean_hu_unenhanced
    assert table[0] + offset <= info["mean_hu"] <= table[1] + offset
    assert spec.bounds_hu[0] <= info["mean_hu"] <= spec.bounds_hu[1]
    assert hu.dtype == np.float32 and not np.shares_memory(new, hu)


def test_the_example_scan_is_unenhanced_and_lesions_are_hypodense(abdomen):
    """The example's aorta is ~40 HU (no contrast); liver lesions then sit 10-30 HU below the liver."""
    hu, affine, hosts, organ_map = abdomen
    assert contrast_phase(hu, organ_map[0].numpy()) == "unenhanced"
    assert contrast_phase(hu, None) == "enhanced"
    painted = []
    for seed in range(5):
        new, mask, info = synthesize_lesion(
            hu, affine, hosts, np.random.default_rng(seed), ["liver_metastasis"], (12.0, 50.0), phase="unenhanced"
        )
        painted.append(new[mask])
    assert np.concatenate(painted).mean() < np.median(hu[hosts["liver"]]) - 5  # pooled: noise is ~15 HU a voxel


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_chest_hu_threshold_path_sizes_and_margin(chest, seed):
    """Lung nodules on the fine chest grid: inside the HU lungs, exact mask, size within the requested range."""
    hu, affine, hosts, *_ = chest
    spacing = spacing_of(affine)
    new, mask, info = synthesize_lesion(
        hu, affine, hosts, np.random.default_rng(seed), ["lung_nodule_solid", "lung_nodule_subsolid"], (8.0, 20.0)
    )
    assert info["organ"] == "lung"
    _check_exact_mask(hu, new, mask, hosts["lung"], spacing)
    d = info["diameter_mm"]
    assert 8.0 <= d <= 20.0
    offsets = (np.argwhere(mask) - np.array(info["centre_voxel"])) * spacing
    assert np.linalg.norm(offsets, axis=1).max() <= d / 2 + 1e-6, "lesion reaches beyond its diameter"
    shortest_longest_axis = d * (1 - DEFORMATION) / (1 + DEFORMATION)
    assert info["feret_diameter_mm"] >= shortest_longest_axis - 2 * spacing.max()
    assert info["feret_diameter_mm"] <= d


@pytest.mark.parametrize("lesion_type", ["lung_nodule_solid", "lung_nodule_subsolid"])
def test_lung_nodule_attenuation(chest, lesion_type):
    hu, affine, hosts, *_ = chest
    spec = LESION_TYPES[lesion_type]
    for seed in range(3):
        new, mask, info = synthesize_lesion(
            hu, affine, hosts, np.random.default_rng(seed), [lesion_type], diameter_mm=(15.0, 25.0)
        )
        assert spec.mean_hu[0] <= info["mean_hu"] <= spec.mean_hu[1]
        core = ndimage.distance_transform_edt(mask, sampling=spacing_of(affine)) >= MARGIN / 2  # weight 1 there
        assert core.sum() > 100
        tolerance = 3 * spec.heterogeneity_hu[1]
        assert spec.mean_hu[0] - tolerance <= new[core].mean() <= spec.mean_hu[1] + tolerance
        assert abs(new[core].mean() - info["mean_hu"]) <= tolerance


@pytest.mark.parametrize("lesion_type", ["lung_mass", "soft_tissue_mass"])
def test_masses_against_the_edge_and_with_a_necrotic_centre(chest, lesion_type):
    """Large masses on a real chest CT: exact masks inside their host, 30-70 mm (lung) or 20-80 mm (soft tissue);
    an edge-contact mass reaches the host's edge (pleura, mediastinum); a necrotic centre is darker than the rim."""
    hu, affine, hosts, *_ = chest
    spacing = spacing_of(affine)
    spec = LESION_TYPES[lesion_type]
    seen = {"edge_contact": set(), "necrotic_centre": set()}
    for seed in range(8):
        new, mask, info = synthesize_lesion(hu, affine, hosts, np.random.default_rng(seed), [lesion_type])
        host = hosts[spec.organ]
        assert info["organ"] == spec.organ and not (mask & ~host).any()
        _check_exact_mask(hu, new, mask, host, spacing)
        assert spec.diameter_mm[0] <= info["diameter_mm"] <= spec.diameter_mm[1]
        touches_edge = (ndimage.binary_dilation(mask) & ~host).any()
        if info["edge_contact"]:
            assert touches_edge, "an edge-contact mass does not reach its host's edge"
        for key in seen:
            seen[key].add(info[key])
    assert seen == {"edge_contact": {True, False}, "necrotic_centre": {True, False}}


def test_necrotic_centre_darkens_only_the_inside(chest, monkeypatch):
    """The same lesion with and without necrosis (same random draws up to the necrosis): the necrotic one is darker
    by the drawn drop at the centre, never brighter, and equal outside the mask."""
    hu, affine, hosts, *_ = chest
    spec = LESION_TYPES["lung_mass"]
    painted = {}
    for prob in (1e-12, 1.0):
        monkeypatch.setitem(
            LESION_TYPES, "lung_mass", dataclasses.replace(spec, edge_contact_prob=0.0, necrosis_prob=prob)
        )
        painted[prob] = synthesize_lesion(hu, affine, hosts, np.random.default_rng(1), ["lung_mass"])
    (plain, mask, info), (necrotic, mask_n, info_n) = painted[1e-12], painted[1.0]
    assert not info["necrotic_centre"] and info_n["necrotic_centre"]
    assert np.array_equal(mask, mask_n)
    difference = necrotic - plain
    assert (difference <= 1e-3).all() and (difference[~mask] == 0).all()
    c = info["centre_voxel"]
    assert spec.necrosis_drop_hu[0] - 1e-3 <= -difference[c[0], c[1], c[2]] <= spec.necrosis_drop_hu[1] + 1e-3


def test_same_seed_same_lesion_other_seed_other_lesion(abdomen):
    hu, affine, hosts, _ = abdomen
    a = synthesize_lesion(hu, affine, hosts, np.random.default_rng(7))
    b = synthesize_lesion(hu, affine, hosts, np.random.default_rng(7))
    c = synthesize_lesion(hu, affine, hosts, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0]) and a[2] != c[2]


def test_hu_threshold_lungs_agree_with_the_organ_map(abdomen):
    """Where the HU path says lung, the TotalSegmentator map says lung too (placement is then safe)."""
    hu, affine, hosts, _ = abdomen
    hu_lung = hu_organ_masks(hu, spacing_of(affine))["lung"]
    assert (hu_lung & hosts["lung"]).sum() / hu_lung.sum() > 0.9
    assert hu_lung.sum() > 0.3 * hosts["lung"].sum()


def test_noise_statistics_recover_known_noise():
    """On a flat organ with Gaussian-filtered noise of known std and correlation, the estimates come back."""
    rng = np.random.default_rng(0)
    noise = 20.0 * unit_noise((60, 60, 40), (0.8, 0.8, 0.0), rng)
    host = np.zeros(noise.shape, bool)
    host[5:55, 5:55, 5:35] = True
    stats = host_statistics(50.0 + noise, host, (-100.0, 300.0))
    assert stats["reference_hu"] == pytest.approx(50.0, abs=1.0)
    assert stats["noise_std"] == pytest.approx(20.0, rel=0.15)
    sx, sy, sz = stats["noise_sigma_voxels"]
    assert sx == pytest.approx(0.8, rel=0.25) and sy == pytest.approx(0.8, rel=0.25) and sz < 0.3


def test_blend_weight_definition():
    d = np.array([-2.0, -1.5, -0.5, 0.5, 1.5, 3.0])
    assert blend_weight(d, 3.0).tolist() == pytest.approx([0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0])


def test_transform_unions_the_label_and_records_the_lesion(chest):
    *_, image, label = chest
    data = {"image": image, "label": label, "region": "chest"}
    t = RandSynthLesiond(keys=("image", "label"), prob=1.0)
    t.set_random_state(seed=5)
    out = t(data)
    assert out["synth_lesion_type"].startswith("lung_nodule") and out["synth_organ"] == "lung"
    assert isinstance(out["image"], MetaTensor) and torch.allclose(out["image"].affine, image.affine)
    old, new = label[0].numpy() > 0, out["label"][0].numpy() > 0
    assert old.any() and (new[old]).all() and new.sum() > old.sum()
    changed = out["image"][0].numpy() != image[0].numpy()
    assert changed[new & ~old].all() and not changed[old].any(), "the existing lesion was painted over"
    again = RandSynthLesiond(keys=("image", "label"), prob=1.0)
    again.set_random_state(seed=5)
    assert torch.equal(again(data)["image"], out["image"])
    skipped = RandSynthLesiond(keys=("image", "label"), prob=0.0)(data)
    assert skipped["synth_lesion_type"] == "" and torch.equal(skipped["image"], image)


def test_transform_with_organ_map(abdomen, shared_data):
    hu, affine, hosts, organ_map = abdomen
    image = load_ras(shared_data / TS / "example_ct_sm.nii.gz").float()
    t = RandSynthLesiond(keys=("image", "label"), organ_key="organ", prob=1.0, lesion_types=["liver_metastasis"])
    t.set_random_state(seed=0)
    out = t({"image": image, "organ": organ_map})
    assert out["synth_organ"] == "liver"
    lesion = out["label"][0].numpy() > 0
    assert lesion.any() and not (lesion & ~hosts["liver"]).any()
    with pytest.raises(ValueError, match="load it"):
        t({"image": image, "organ": "example_seg.nii.gz"})


def test_transform_paints_several_separate_lesions(abdomen, shared_data):
    """max_lesions: up to that many lesions, each its own connected component inside its organ, the label their
    union, every voxel outside the lesions and their margin band unchanged; the same seed gives the same image."""
    hu, affine, hosts, organ_map = abdomen
    image = load_ras(shared_data / TS / "example_ct_sm.nii.gz").float()
    counts = set()
    for seed in range(6):
        t = RandSynthLesiond(keys=("image", "label"), organ_key="organ", prob=1.0, max_lesions=4)
        t.set_random_state(seed=seed)
        out = t({"image": image, "organ": organ_map})
        types, organs = out["synth_lesion_type"].split(","), out["synth_organ"].split(",")
        assert 1 <= len(types) == len(organs) <= 4
        counts.add(len(types))
        lesion = out["label"][0].numpy() > 0
        _, components = ndimage.label(lesion)
        assert components == len(types), "lesions touch or one is missing from the label"
        for organ in set(organs):
            assert organ in hosts
        assert not (lesion & ~np.any([hosts[o] for o in organs], axis=0)).any()
        changed = out["image"][0].numpy() != hu
        assert changed[lesion].all()
        band = ndimage.distance_transform_edt(~lesion, sampling=spacing_of(affine)) <= MARGIN / 2 + 1e-6
        assert not (changed & ~band).any(), "voxels changed away from every lesion"
        again = RandSynthLesiond(keys=("image", "label"), organ_key="organ", prob=1.0, max_lesions=4)
        again.set_random_state(seed=seed)
        assert torch.equal(again({"image": image, "organ": organ_map})["image"], out["image"])
    assert len(counts) > 1, f"always {counts} lesions in 6 draws of 1 to 4"
    with pytest.raises(ValueError, match="max_lesions"):
        RandSynthLesiond(max_lesions=0)


def test_command_writes_a_deterministic_validation_set(tmp_path, shared_data):
    args = ["--count", "2", "--seed", "3", "--source", "totalsegmentator", "--data_root", str(shared_data)]
    synthesis.main(["--out", str(tmp_path / "a"), *args])
    synthesis.main(["--out", str(tmp_path / "b"), *args])
    items = load_decathlon_datalist(str(tmp_path / "a" / "datalist.json"), True, "validation")
    assert len(items) == 2
    for item in items:
        assert item["lesion_type"] in LESION_TYPES and item["host_organ"] and item["region"] == "abdomen"
        mask = nib.load(item["label"])
        image = nib.load(item["image"])
        assert mask.shape == image.shape and np.asarray(mask.dataobj).any()
        twin = str(item["label"]).replace(str(tmp_path / "a"), str(tmp_path / "b"))
        assert np.array_equal(np.asarray(mask.dataobj), np.asarray(nib.load(twin).dataobj))
    assert not list((tmp_path / "a").rglob(".*")), "temporary files left behind"


def test_train_preprocessing_with_synthesis_labels_a_lesion_free_scan(shared_data):
    """configs/train.yaml with synthesis_prob 1: a scan without a label gets lesion voxels in its crops."""
    parser = ConfigParser()
    parser.read_config(ROOT / "configs" / "train.yaml")
    parser["synthesis_prob"] = 1.0
    parser["roi_size"] = [64, 64, 32]
    preprocessing = parser.get_parsed_content("train#preprocessing")
    preprocessing.set_random_state(seed=0)
    item = {"image": str(shared_data / TS / "example_ct.nii.gz"), "region": "abdomen"}
    crops = preprocessing(item)
    assert crops[0]["synth_organ"] in ("lung", "soft_tissue")  # the HU-threshold hosts of a scan without organ map
    assert sum(float(c["label"].sum()) for c in crops) > 0
    assert float(crops[0]["image"].max()) <= 1.0  # windowed after synthesis
