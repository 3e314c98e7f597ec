"""The datalist builder against the real data, an incomplete data root, and the committed configs/datalist.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bundle.datalist import build_datalist, main
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

COMMITTED = Path(__file__).resolve().parents[1] / "configs" / "datalist.json"

# The split, written down before any training on the IBSI sarcomas (bundle.datalist.IBSI_BLOCK's volume-ordered rule).
IBSI_TRAINING = ["STS_025", "STS_035", "STS_041", "STS_015", "STS_018", "STS_050", "STS_051", "STS_023", "STS_028",
                 "STS_004", "STS_036", "STS_048", "STS_033", "STS_014", "STS_031", "STS_005", "STS_044", "STS_039",
                 "STS_037", "STS_046", "STS_022", "STS_027", "STS_009", "STS_020"]  # fmt: skip
IBSI_TUNING = ["STS_042", "STS_032", "STS_047", "STS_030", "STS_040", "STS_016", "STS_017", "STS_049"]
IBSI_TEST = ["STS_019", "STS_012", "STS_043", "STS_006", "STS_026", "STS_034", "STS_011", "STS_021"]
EXPECTED_SPLITS = {
    "training": ["lidc_idri_0314", *IBSI_TRAINING],
    "training_synthesis_hosts": [
        "totalsegmentator_example_sm",
        "totalsegmentator_example",
        "pancreas_ct_cb_001_thorax",
    ],
    "validation": ["STS_003", *IBSI_TUNING],
    "test": ["pyradiomics_lung1", "STS_001", "STS_002", "pancreas_ct_cb_001", "crlm_ct_1004", *IBSI_TEST],
}
# id: (region, lesion_type, lesion_status); a lesion_status is given exactly when there is no label.
EXPECTED_CASES = {
    "lidc_idri_0314": ("chest", "lung_nodule", None),
    "STS_001": ("extremity", "soft_tissue_sarcoma", None),
    "STS_002": ("extremity", "soft_tissue_sarcoma", None),
    "STS_003": ("extremity", "soft_tissue_sarcoma", None),
    "pyradiomics_lung1": ("chest", "lung_nodule", None),
    "totalsegmentator_example": ("chest", None, "unknown"),
    "pancreas_ct_cb_001_thorax": ("chest", None, "lesion_free_region"),
    "totalsegmentator_example_sm": ("abdomen", None, "unknown"),
    "pancreas_ct_cb_001": ("abdomen", None, "present_unlabelled"),
    "crlm_ct_1004": ("abdomen", None, "present_unlabelled"),
    **{case: ("extremity", "soft_tissue_sarcoma", None) for case in IBSI_TRAINING + IBSI_TUNING + IBSI_TEST},
}


@pytest.fixture(scope="module")
def datalist(shared_data):
    return build_datalist(shared_data)


def _items(datalist):
    return [item for split in EXPECTED_SPLITS for item in datalist[split]]


def test_ids_per_split(datalist):
    assert {split: [item["id"] for item in datalist[split]] for split in EXPECTED_SPLITS} == EXPECTED_SPLITS
    assert set(datalist) == {"description", "data_root_hint", *EXPECTED_SPLITS}
    assert datalist["data_root_hint"] == "../shared/data"
    assert not any(item["source"] == "dcmqi_ct3slice_seg" for item in _items(datalist))


def test_regions_and_lesion_information(datalist):
    for item in _items(datalist):
        region, lesion_type, lesion_status = EXPECTED_CASES[item["id"]]
        assert item["region"] == region
        assert item.get("lesion_type") == lesion_type
        assert item.get("lesion_status") == lesion_status
        assert ("label" in item) == (lesion_status is None)
        assert item["image"].split("/")[0] == item["source"]
        # only the abdominal synthesis host carries an organ map, on its image's grid (checked by the builder)
        assert ("organ" in item) == (item["id"] == "totalsegmentator_example_sm")


def test_split_by_patient_with_the_test_split_the_issue_asks_for(shared_data, datalist):
    """Every IBSI case in exactly one split; test holds lung1 and at least 8 sarcomas; each split spans the volumes."""
    ids = [item["id"] for split in ("training", "validation", "test") for item in datalist[split]]
    assert len(ids) == len(set(ids))
    table = (shared_data / "ibsi_sts_sarcoma_ct" / "cases.tsv").read_text().splitlines()
    volume = {row.split("\t")[0]: float(row.split("\t")[6]) for row in table[1:]}
    assert set(volume) == set(IBSI_TRAINING + IBSI_TUNING + IBSI_TEST)
    test = [item for item in datalist["test"] if item.get("lesion_type") == "soft_tissue_sarcoma"]
    assert len(test) >= 8 and "pyradiomics_lung1" in ids
    for split in (IBSI_TRAINING, IBSI_TUNING, IBSI_TEST):
        sizes = sorted(volume[case] for case in split)
        assert sizes[0] < 60 and sizes[-1] > 800  # small and large tumours in every split


def test_paths_are_relative_and_exist(shared_data, datalist):
    for item in _items(datalist):
        for key in ("image", "label"):
            if key in item:
                assert not Path(item[key]).is_absolute() and ".." not in Path(item[key]).parts
                assert (shared_data / item[key]).exists(), item[key]


def test_labels_load_on_the_grid_of_their_image(shared_data, datalist):
    def load(path: Path):
        reader = None if path.name.endswith(".nii.gz") else "ITKReader"  # DICOM folders and NRRD through ITK
        return LoadImage(image_only=True, reader=reader)(str(path))

    labelled = [item for item in _items(datalist) if "label" in item]
    assert len(labelled) == 5 + 40  # lung1, LIDC, the 3 MIRP sarcomas and the 40 IBSI sarcomas
    for item in labelled:
        image, label = load(shared_data / item["image"]), load(shared_data / item["label"])
        assert image.shape == label.shape, item["id"]
        np.testing.assert_allclose(image.affine, label.affine, atol=1e-3, err_msg=item["id"])
        assert label.sum() > 0, item["id"]


def test_lidc_uses_its_dicom_series(datalist):
    (lidc,) = [item for item in datalist["training"] if item["id"] == "lidc_idri_0314"]
    assert lidc["image"] == "lidc_idri_0314_nodule/dicom"


@pytest.mark.parametrize(
    "folder, missing", [("lidc_idri_0314_nodule", "mask_consensus50.nii.gz"), ("mirp_crlm_ct_1004_nomask", "image")]
)
def test_incomplete_data_root_names_the_missing_file(shared_data, tmp_path, folder, missing):
    """A linked copy of the data root lacking one entry; the error must name that entry."""
    for entry in shared_data.iterdir():
        if entry.name != folder:
            (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / folder).mkdir()
    for entry in (shared_data / folder).iterdir():
        if entry.name != missing:
            (tmp_path / folder / entry.name).symlink_to(entry)

    with pytest.raises(FileNotFoundError, match=f"{folder}/{missing} is missing"):
        build_datalist(tmp_path)


def test_committed_datalist_is_what_the_cli_writes(shared_data, tmp_path, datalist):
    output = tmp_path / "configs" / "datalist.json"
    main(["--data_root", str(shared_data), "--output", str(output)])

    assert json.loads(output.read_text()) == datalist
    assert COMMITTED.read_text() == output.read_text(), "configs/datalist.json is stale: regenerate it with the CLI"
    for split in EXPECTED_SPLITS:  # the way the bundle reads it
        items = load_decathlon_datalist(str(COMMITTED), data_list_key=split, base_dir=str(shared_data))
        assert all(Path(item["image"]).exists() for item in items)


def test_training_items_collate_across_lists(shared_data):
    """Real lesion scans and synthesis hosts go into one batch: same keys, hosts without label, one with an organ map
    (abdominal lesions) and one without (lung nodules in its HU-threshold lungs)."""
    from bundle.data import training_items

    items = training_items(COMMITTED, shared_data)
    by_id = {item["id"]: item for item in items}
    assert set(by_id) == {
        *IBSI_TRAINING,
        "lidc_idri_0314",
        "totalsegmentator_example_sm",
        "totalsegmentator_example",
        "pancreas_ct_cb_001_thorax",
    }
    host = by_id["totalsegmentator_example_sm"]
    assert "label" not in host and Path(host["organ"]).is_file() and Path(host["image"]).is_file()
    chest = by_id["totalsegmentator_example"]
    assert "label" not in chest and "organ" not in chest and chest["region"] == "chest"
    assert all(set(item) <= {"id", "image", "label", "organ", "region", "axial_range_mm"} for item in items)
    assert by_id["pancreas_ct_cb_001_thorax"]["axial_range_mm"] == [385.0, 500.0]
    # host_repeat lists each host that many times, as separate dicts, and nothing else more often
    repeated = training_items(COMMITTED, shared_data, host_repeat=3)
    hosts = [i for i in repeated if "label" not in i]
    assert len(repeated) == len(items) + 2 * len(hosts) // 3 and len(hosts) == 3 * 3
    assert len({id(i) for i in hosts}) == len(hosts)


def test_thorax_slab_host_has_lungs_and_ends_above_the_abdomen(shared_data):
    """The pancreatic-cancer series is a host only above z 385 mm: lungs in every slice of the slab (so synthetic
    nodules have room) and nothing of the scan below, where its unlabelled tumour lies."""
    from bundle.data import training_items
    from bundle.synthesis import hu_organ_masks, spacing_of
    from bundle.transforms import CropAxialRanged
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    (item,) = [i for i in training_items(COMMITTED, shared_data) if i["id"] == "pancreas_ct_cb_001_thorax"]
    load = Compose(
        [
            LoadImaged("image", reader="ITKReader"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        ]
    )
    loaded = load(item)
    full = loaded["image"]
    slab = CropAxialRanged("image")(loaded)["image"]
    affine = slab.affine.numpy()
    z = affine[2, 3] + affine[2, 2] * np.arange(slab.shape[-1])
    assert z.min() >= 385 and z.max() <= 500 and slab.shape[-1] < full.shape[-1] / 2
    np.testing.assert_array_equal(slab.numpy(), full.numpy()[..., -slab.shape[-1] :])
    lung = hu_organ_masks(slab[0].numpy(), spacing_of(affine))["lung"]
    assert lung.any(axis=(0, 1)).all()


def test_crop_axial_range_on_a_known_grid():
    import torch
    from bundle.transforms import CropAxialRanged
    from monai.data import MetaTensor

    affine = torch.diag(torch.tensor([1.0, 1.0, 3.0, 1.0]))
    affine[2, 3] = 100.0  # slices at z = 100, 103, ..., 127 mm
    image = MetaTensor(torch.arange(160.0).reshape(1, 4, 4, 10), affine=affine)
    label = MetaTensor(torch.ones(1, 4, 4, 10), affine=affine)
    out = CropAxialRanged(["image", "label"])({"image": image, "label": label, "axial_range_mm": [115, 106]})
    assert out["image"].shape == out["label"].shape == (1, 4, 4, 4)  # z 106, 109, 112, 115
    assert float(out["image"].affine[2, 3]) == pytest.approx(106.0)
    assert torch.equal(out["image"].as_tensor(), image.as_tensor()[..., 2:6])
    assert CropAxialRanged("image")({"image": image})["image"] is image
    with pytest.raises(ValueError, match="misses the scan"):
        CropAxialRanged("image")({"image": image, "axial_range_mm": [200, 300]})
    tilted = MetaTensor(image.as_tensor(), affine=affine[[0, 2, 1, 3]])
    with pytest.raises(ValueError, match="axial axis"):
        CropAxialRanged("image")({"image": tilted, "axial_range_mm": [0, 10]})


def test_ids_stay_as_written_even_when_they_name_a_data_folder(shared_data):
    """`pyradiomics_lung1` is also a folder under the data root: MONAI's loader would turn the id into that path, and
    outputs named by it would land in the data folder. Every reader of the datalist keeps ids as written."""
    from bundle.data import list_inputs, load_datalist

    assert (shared_data / "pyradiomics_lung1").is_dir()
    raw = json.loads(COMMITTED.read_text())
    for split in EXPECTED_SPLITS:
        assert [item["id"] for item in load_datalist(COMMITTED, split, shared_data)] == EXPECTED_SPLITS[split]
        assert all(Path(item["image"]).is_absolute() for item in load_datalist(COMMITTED, split, shared_data))
    assert [item["id"] for item in list_inputs(COMMITTED, shared_data, "test")] == [i["id"] for i in raw["test"]]
