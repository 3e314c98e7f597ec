"""A PNG of the key axial slice of a screened scan with the lesion outline, for a person to look at.

    python -m bundle.keyslice sample_data/lung1/lung1_image.nrrd eval

The key slice is the axial slice where the most suspicious lesion of the findings JSON (lesion 1 of the lesion map)
has its largest area; with no lesion, the slice of the scan's centre. The image is shown in the HU window of the
region the bundle used, in radiological orientation (patient right on the image's left, anterior at the top), with
each lesion's outline in its own colour (``bundle.findings.lesion_colour``, as in the DICOM SEG). Written atomically
beside the findings as
``<case_id>_key_slice.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bundle.data import case_id_of
from bundle.findings import lesion_colour
from bundle.transforms import region_window
from bundle.writers import CaseOutputs, atomic_path
from monai.transforms import LoadImage, Orientation
from PIL import Image
from scipy import ndimage

__all__ = ["key_slice_index", "render_key_slice", "main"]


def _load_ras(path: Path) -> np.ndarray:
    """Image or mask on its own grid, axes reoriented to RAS (axis 2 runs inferior to superior)."""
    reader = None if path.name.endswith((".nii", ".nii.gz")) else "ITKReader"
    image = LoadImage(image_only=True, ensure_channel_first=True, reader=reader)(str(path))
    return np.asarray(Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)[0])


def key_slice_index(lesion_map: np.ndarray, number: int = 1) -> int:
    """Axial index where lesion ``number`` of a lesion map (the findings' numbering) has its largest area; the middle
    slice when the map holds no such lesion."""
    lesion = lesion_map == number
    if not lesion.any():
        return lesion_map.shape[2] // 2
    return int(lesion.sum(axis=(0, 1)).argmax())


def render_key_slice(image: np.ndarray, lesion_map: np.ndarray, index: int, window: tuple[float, float]) -> np.ndarray:
    """RGB array of axial slice ``index``: windowed grey values, each lesion's outline in its colour (a mask counts as
    lesion 1), radiological orientation."""
    lo, hi = window
    grey = np.clip((image[:, :, index] - lo) / (hi - lo), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)
    numbers = np.asarray(lesion_map[:, :, index]).astype(np.int64)
    for number in np.unique(numbers[numbers > 0]):
        slab = numbers == number
        rgb[slab & ~ndimage.binary_erosion(slab)] = lesion_colour(int(number))
    # array axes are (R, A): rows must run anterior to posterior and columns patient right to left
    return rgb.transpose(1, 0, 2)[::-1, ::-1]


def write_key_slice(image_path: Path, output_dir: Path) -> Path:
    """Render the key slice of the case screened from ``image_path`` into its output folder; returns the PNG path."""
    outputs = CaseOutputs(output_dir, case_id_of(image_path))
    findings = json.loads(outputs.findings.read_text())
    image, lesion_map = _load_ras(image_path), _load_ras(outputs.lesion_map)
    if image.shape != lesion_map.shape:
        raise ValueError(f"{image_path}: image {image.shape} and lesion map {lesion_map.shape} are not on one grid")
    index = key_slice_index(lesion_map, number=1)  # lesion 1: the most suspicious
    rgb = render_key_slice(image, lesion_map, index, region_window(findings["region"]))
    png = outputs.folder / f"{outputs.case_id}_key_slice.png"
    with atomic_path(png, ".png") as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG")
    return png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path, help="the screened scan (file or DICOM series folder)")
    parser.add_argument("output_dir", type=Path, help="the inference output_dir")
    args = parser.parse_args(argv)
    print(f"key slice: {write_key_slice(args.image, args.output_dir)}")


if __name__ == "__main__":
    main()
