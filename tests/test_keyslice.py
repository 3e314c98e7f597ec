"""The key-slice PNG against SimpleITK's reading of the same real scan: slice choice, window, orientation, outline."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from bundle.findings import LESION_COLOURS, lesion_colour
from bundle.keyslice import main, render_key_slice
from bundle.writers import atomic_write_nifti
from PIL import Image
from scipy import ndimage

from tests.conftest import ROOT

LUNG1 = ROOT / "sample_data" / "lung1"


def test_key_slice_png_matches_simpleitk_in_radiological_orientation(tmp_path):
    from monai.transforms import LoadImage

    image_path = LUNG1 / "lung1_image.nrrd"
    label = LoadImage(image_only=True, reader="ITKReader")(str(LUNG1 / "lung1_label.nrrd"))
    case_dir = tmp_path / "lung1_image"
    atomic_write_nifti((label > 0).to(dtype=label.dtype), label.affine, case_dir / "lung1_image_lesion.nii.gz")
    findings = {"region": "chest", "lesions": [{"number": 1, "max_probability": 0.9, "voxels": int((label > 0).sum())}]}
    (case_dir / "lung1_image_findings.json").write_text(json.dumps(findings))

    main([str(image_path), str(tmp_path)])
    png_path = case_dir / "lung1_image_key_slice.png"
    assert png_path.stat().st_mode & 0o777 == 0o644  # atomic writes stay readable by others
    assert [p.name for p in case_dir.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    png = np.asarray(Image.open(png_path).convert("RGB"))

    # Reference: SimpleITK's arrays are [z, y, x] in LPS index order; with an identity direction, row = posterior
    # and column = patient left, which is exactly the radiological display.
    ref_image, ref_label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(LUNG1 / "lung1_label.nrrd"))
    assert np.allclose(ref_image.GetDirection(), np.eye(3).ravel())
    hu, lab = sitk.GetArrayFromImage(ref_image).astype(float), sitk.GetArrayFromImage(ref_label) > 0
    k = int(lab.sum(axis=(1, 2)).argmax())
    outline = lab[k] & ~ndimage.binary_erosion(lab[k])
    red = np.all(png == lesion_colour(1), axis=-1)  # lesion 1's colour, as in the SEG
    assert png.shape == (*hu.shape[1:], 3)
    assert outline.sum() > 10 and np.array_equal(red, outline)
    grey = np.clip((hu[k] + 900.0) / 1550.0, 0, 1) * 255  # the chest window, -900 to 650 HU
    assert np.abs(png[..., 0][~red].astype(float) - grey[~red]).max() <= 1.0
    # the nodule is in the right upper lobe (SOURCE.md): patient right is the image's left half
    assert np.argwhere(red)[:, 1].mean() < png.shape[1] / 2


def test_each_lesion_is_outlined_in_its_own_colour():
    """Two lesions on one slice: each outline in its number's colour, the same colours the SEG recommends."""
    lesion_map = np.zeros((40, 30, 3), np.uint8)
    lesion_map[5:12, 5:12, 1] = 1
    lesion_map[20:30, 15:25, 1] = 12  # past the palette: colour of lesion 2
    rgb = render_key_slice(np.zeros((40, 30, 3)), lesion_map, 1, (0.0, 1.0))
    colours = {tuple(c) for c in rgb.reshape(-1, 3)} - {(0, 0, 0)}
    assert colours == {lesion_colour(1), lesion_colour(12)} and lesion_colour(12) == lesion_colour(2)
    # ten colours, far apart from each other (RGB distance) and from grey, so that neighbours stay distinguishable
    rgb_ = np.asarray(LESION_COLOURS, float)
    distances = np.linalg.norm(rgb_[:, None] - rgb_[None], axis=-1)[np.triu_indices(10, 1)]
    assert len(LESION_COLOURS) == 10 and distances.min() > 60
    assert (rgb_.max(1) - rgb_.min(1)).min() > 100  # saturated: none is a grey a CT could show


def test_the_colour_table_in_the_deploy_docs_is_the_palette():
    (row,) = [line for line in (ROOT / "docs/deploy.md").read_text().splitlines() if line.startswith("| RGB |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")[1:]]
    assert [tuple(int(v) for v in cell.split(",")) for cell in cells] == list(LESION_COLOURS)
