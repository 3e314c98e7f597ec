"""The key-slice PNG against SimpleITK's reading of the same real scan: slice choice, window, orientation, outline."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from bundle.keyslice import OUTLINE_RGB, main
from bundle.writers import atomic_write_nifti
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
    red = np.all(png == OUTLINE_RGB, axis=-1)
    assert png.shape == (*hu.shape[1:], 3)
    assert outline.sum() > 10 and np.array_equal(red, outline)
    grey = np.clip((hu[k] + 900.0) / 1550.0, 0, 1) * 255  # the chest window, -900 to 650 HU
    assert np.abs(png[..., 0][~red].astype(float) - grey[~red]).max() <= 1.0
    # the nodule is in the right upper lobe (SOURCE.md): patient right is the image's left half
    assert np.argwhere(red)[:, 1].mean() < png.shape[1] / 2
