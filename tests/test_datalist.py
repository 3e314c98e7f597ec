"""The datalist builder against the real data, an incomplete data root, and the committed configs/datalist.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

from bundle.datalist import build_datalist, main

COMMITTED = Path(__file__).resolve().parents[1] / "configs" / "datalist.json"

EXPECTED_SPLITS = {
    "training": ["lidc_idri_0314"],
    "training_synthesis_hosts": ["totalsegmentator_example_sm", "totalsegmentator_example"],
    "validation": ["STS_003"],
    "test": ["pyradiomics_lung1", "STS_001", "STS_002", "pancreas_ct_cb_001", "crlm_ct_1004"],
}
# id: (region, lesion_type, lesion_status); a lesion_status is given exactly when there is no label.
EXPECTED_CASES = {
    "lidc_idri_0314": ("chest", "lung_nodule", None),
    "STS_001": ("extremity", "soft_tissue_sarcoma", None),
    "STS_002": ("extremity", "soft_tissue_sarcoma", None),
    "STS_003": ("extremity", "soft_tissue_sarcoma", None),
    "pyradiomics_lung1": ("chest", "lung_nodule", None),
    "totalsegmentator_example": ("chest", None, "unknown"),
    "totalsegmentator_example_sm": ("abdomen", None, "unknown"),
    "pancreas_ct_cb_001": ("abdomen", None, "present_unlabelled"),
    "crlm_ct_1004": ("abdomen", None, "present_unlabelled"),
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
    assert len(labelled) == 5
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
    assert set(by_id) == {"lidc_idri_0314", "totalsegmentator_example_sm", "totalsegmentator_example"}
    host = by_id["totalsegmentator_example_sm"]
    assert "label" not in host and Path(host["organ"]).is_file() and Path(host["image"]).is_file()
    chest = by_id["totalsegmentator_example"]
    assert "label" not in chest and "organ" not in chest and chest["region"] == "chest"
    assert all(set(item) <= {"id", "image", "label", "organ", "region"} for item in items)
