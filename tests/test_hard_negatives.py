"""Hard lesion-free windows: mining a model's false positives on training scans, and crops centred on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bundle.findings import RAS_TO_LPS
from bundle.hard_negatives import hard_negatives, main
from bundle.transforms import HardNegativeWeightsd
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImage, RandWeightedCropd

from tests.conftest import ROOT

# a flipped, anisotropic, shifted grid: voxel -> RAS world
AFFINE = np.array([[-0.8, 0, 0, 40.0], [0, 0.8, 0, -25.0], [0, 0, 3.0, 100.0], [0, 0, 0, 1]])


def _lps(affine: np.ndarray, voxel) -> list[float]:
    return list(RAS_TO_LPS @ (affine[:3, :3] @ np.asarray(voxel, dtype=float) + affine[:3, 3]))


def test_weight_map_puts_each_point_on_its_voxel_and_crops_centre_there():
    image = MetaTensor(torch.zeros(1, 40, 30, 20), affine=torch.as_tensor(AFFINE))
    points = [[*_lps(AFFINE, (20, 12, 9)), 0.9], [*_lps(AFFINE, (5, 28, 1)), 0.6], [*_lps(AFFINE, (80, 5, 5)), 1.0]]
    d = HardNegativeWeightsd("image", (8, 8, 4))({"image": image, "hard_negatives_mm": points})
    w = d["hard_negative"]
    assert w.shape == (1, 40, 30, 20)
    # the second, near the border, moves inwards to the nearest voxel an 8 x 8 x 4 crop can be centred on
    assert w[0, 20, 12, 9] == pytest.approx(0.9) and w[0, 5, 25, 2] == pytest.approx(0.6)
    assert float(w.sum()) == pytest.approx(1.5)  # the third point lies outside the grid: dropped
    # no hard negatives (the key missing or empty): an all-zero map, on which RandWeightedCropd samples uniformly
    assert float(HardNegativeWeightsd("image", (8, 8, 4))({"image": image})["hard_negative"].sum()) == 0
    # RandWeightedCropd centres its crops on the weighted voxels, and every crop holds one of the two points
    crop = RandWeightedCropd(["image"], w_key="hard_negative", spatial_size=(8, 8, 4), num_samples=6)
    crop.set_random_state(0)
    centres = set()
    for c in crop(d):
        start = np.rint(np.linalg.inv(AFFINE) @ np.asarray(c["image"].affine)[:, 3])[:3].astype(int)
        centres.add(tuple(int(v) for v in start + [4, 4, 2]))
    assert centres <= {(20, 12, 9), (5, 25, 2)} and (20, 12, 9) in centres


def test_hard_negatives_are_the_predictions_that_touch_no_lesion_strongest_first():
    numbers = np.zeros((10, 10, 10), dtype=np.uint8)
    numbers[1:3, 1:3, 1:3] = 1
    numbers[5:7, 5:7, 5:7] = 2
    numbers[8:, 8:, 8:] = 3
    gt = np.zeros_like(numbers, dtype=bool)
    gt[6:9, 6:8, 6:8] = True  # touches lesion 2 only
    findings = [
        {"number": 1, "centroid_mm": [1.0, 2.0, 3.0], "max_probability": 0.7},
        {"number": 2, "centroid_mm": [4.0, 5.0, 6.0], "max_probability": 0.99},
        {"number": 3, "centroid_mm": [7.0, 8.0, 9.0], "max_probability": 0.8},
    ]
    assert hard_negatives(findings, numbers, gt, top=8) == [[7.0, 8.0, 9.0, 0.8], [1.0, 2.0, 3.0, 0.7]]
    assert hard_negatives(findings, numbers, gt, top=1) == [[7.0, 8.0, 9.0, 0.8]]
    assert [p[3] for p in hard_negatives(findings, numbers, None, top=8)] == [0.99, 0.8, 0.7]  # a host: no label
    # a host's slab (z 2.5 to 6.5 mm): lesions 1 and 2 lie in it, lesion 3 does not
    assert [p[3] for p in hard_negatives(findings, numbers, None, top=8, axial_range_mm=[6.5, 2.5])] == [0.99, 0.7]


def test_mining_a_real_sarcoma_scan_with_the_shipped_weights(shared_data, tmp_path):
    """The shipped model on a real training sarcoma: the points it writes lie outside the tumour, strongest first,
    at most ``--top`` per scan, an earlier round's point and record kept after them (``--accumulate``), and the
    input datalist is left as it was."""
    source = json.loads((ROOT / "configs/datalist.json").read_text())
    earlier = [1.0, 2.0, 3.0, 0.42]
    item = {**next(i for i in source["training"] if i["id"] == "STS_018"), "hard_negatives_mm": [earlier]}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [item], "hard_negatives": {"command": "round 1"}}))
    before = datalist.read_bytes()
    out = tmp_path / "mined" / "datalist.json"
    main(
        [
            "--config_file", str(ROOT / "configs/inference.yaml"),
            "--ckpt_path", str(ROOT / "models/model.pt"),
            "--glance_threshold", "$None",
            "--datalist", str(datalist),
            "--dataset_dir", str(shared_data),
            "--top", "3",
            "--accumulate",
            "--output", str(out),
        ]
    )  # fmt: skip
    assert datalist.read_bytes() == before
    mined = json.loads(out.read_text())
    *points, kept = mined["training"][0]["hard_negatives_mm"]
    assert kept == earlier and mined["hard_negatives"]["previous"] == {"command": "round 1"}
    assert 1 <= len(points) <= 3 and mined["hard_negatives"]["per_scan"] == {"STS_018": len(points)}
    scores = [p[3] for p in points]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.5
    label = LoadImage(image_only=True, reader="ITKReader")(str(shared_data / item["label"]))
    affine = np.asarray(label.affine)
    for x, y, z, _ in points:
        voxel = np.rint(np.linalg.inv(affine) @ [*(RAS_TO_LPS @ [x, y, z]), 1.0])[:3].astype(int)
        assert np.all(voxel >= 0) and np.all(voxel < label.shape)
        assert not label[tuple(voxel)], "a hard negative inside the tumour"


def test_training_pipeline_centres_crops_on_hard_negatives(shared_data, tmp_path):
    """configs/train.yaml with --hard_negative_prob 1: every crop of a scan holds its hard negative, after the
    flips and rotations too (their affines follow); at the default 0 the crop step is RandCropByPosNegLabeld."""
    source = json.loads((ROOT / "configs/datalist.json").read_text())
    item = dict(next(i for i in source["training"] if i["id"] == "STS_018"))
    load = LoadImage(image_only=True, reader="ITKReader")
    image, label = load(str(shared_data / item["image"])), load(str(shared_data / item["label"]))
    inner = np.zeros(image.shape, dtype=bool)
    inner[20:-20, 20:-20, 5:-5] = True  # the border case is the first test's
    body = np.argwhere((np.asarray(image) > 0) & (np.asarray(label) == 0) & inner)  # soft tissue, not the tumour
    centre = np.argwhere(np.asarray(label)).mean(0)
    far = body[np.argmax(((body - centre) * np.abs(np.diag(np.asarray(label.affine))[:3])) ** 2 @ np.ones(3))]
    point = _lps(np.asarray(label.affine), far)
    item["hard_negatives_mm"] = [[*point, 0.9]]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [item], "validation": []}))
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs/train.yaml"), str(ROOT / "configs/small.yaml")])
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert "RandCropByPosNegLabeld" in names and "OneOf" not in names
    parser.update(
        {
            "bundle_root": str(ROOT),
            "dataset_dir": str(shared_data),
            "datalist": str(tmp_path / "datalist.json"),
            "roi_size": [64, 64, 32],
            "hard_negative_prob": 1.0,
        }
    )
    preprocessing = parser.get_parsed_content("train#preprocessing")
    assert "OneOf" in [type(t).__name__ for t in preprocessing.transforms]
    preprocessing.set_random_state(0)
    (data,) = parser.get_parsed_content("train#data")
    assert data["hard_negatives_mm"] == [[*point, 0.9]]
    crops = Compose(preprocessing.transforms[:-1])(data)  # the last step drops the metadata (affines) for the batch
    assert len(crops) == parser.get_parsed_content("windows_per_scan")
    assert type(preprocessing.transforms[-1]).__name__ == "EnsureTyped"
    ras = RAS_TO_LPS @ np.asarray(point)
    for c in crops:
        assert "hard_negative" not in c and "hard_negatives_mm" not in c
        voxel = np.linalg.inv(np.asarray(c["image"].affine)) @ [*ras, 1.0]
        assert np.all(voxel[:3] > -0.5) and np.all(voxel[:3] < np.array(c["image"].shape[1:]) - 0.5), voxel
