"""Pictures of the synthetic lesion kinds in real scans, for docs/synthesis.md.

    python -m bundle.synthesis_examples docs/images/synthesis_masses.png

Each panel paints one lesion with ``bundle.synthesis.synthesize_lesion`` into a real scan of ``../shared/data`` (the
first seed from 0 up whose lesion has the panel's kind: against the host's edge or not, with a necrotic centre or
not) and shows the axial slice through its centre in the region's window, with the mask outlined in red
(``bundle.keyslice.render_key_slice``). Deterministic: the same data give the same picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bundle.keyslice import render_key_slice
from bundle.synthesis import host_masks, load_ras, synthesize_lesion
from bundle.transforms import region_window
from bundle.writers import atomic_path
from PIL import Image, ImageDraw

__all__ = ["PANELS", "find_example", "draw_examples"]

# (title, source scan under the data root, lesion type, edge contact, necrotic centre, region window: the soft-tissue
# window shows a necrotic centre that the lung window hides)
PANELS = (
    ("lung mass against the pleura", "pyradiomics_lung1/lung1_image.nrrd", "lung_mass", True, False, "chest"),
    ("lung mass, necrotic centre", "pyradiomics_lung1/lung1_image.nrrd", "lung_mass", False, True, "abdomen"),
    ("soft-tissue mass, body wall", "totalsegmentator_example/example_ct.nii.gz", "soft_tissue_mass", False, False,
     "abdomen"),
    ("soft-tissue mass, necrotic, limb", "ibsi_sts_sarcoma_ct/STS_004/ct.nii.gz", "soft_tissue_mass", False, True,
     "abdomen"),
)  # fmt: skip


def find_example(hu, affine, hosts, lesion_type, edge_contact, necrotic, max_seed: int = 200):
    """(seed, image, mask, info) of the first seed whose lesion has the asked kind."""
    for seed in range(max_seed):
        new, mask, info = synthesize_lesion(hu, affine, hosts, np.random.default_rng(seed), [lesion_type])
        if info["edge_contact"] == edge_contact and info["necrotic_centre"] == necrotic:
            return seed, new, mask, info
    raise ValueError(f"no {lesion_type} with edge_contact={edge_contact}, necrotic={necrotic} in {max_seed} seeds")


def draw_examples(output: str | Path, data_root: str | Path = "../shared/data", size: int = 320) -> list[dict]:
    """Write the panel picture (PNG, atomically) and return what each panel shows."""
    tiles, shown = [], []
    for title, source, lesion_type, edge_contact, necrotic, region in PANELS:
        image = load_ras(Path(data_root) / source)
        hu, affine = image[0].numpy().astype(np.float32), image.affine.numpy()
        seed, new, mask, info = find_example(hu, affine, host_masks(hu, affine, None), lesion_type, edge_contact,
                                             necrotic)  # fmt: skip
        rgb = render_key_slice(new, mask, int(info["centre_voxel"][2]), region_window(region))
        tile = Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.BILINEAR)
        ImageDraw.Draw(tile).text((6, 6), f"{title}\n{info['diameter_mm']:.0f} mm, {info['mean_hu']:.0f} HU",
                                  fill=(255, 255, 0))  # fmt: skip
        tiles.append(tile)
        shown.append({"title": title, "source": source, "seed": seed, **info})
    sheet = Image.new("RGB", (size * len(tiles), size))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * size, 0))
    with atomic_path(Path(output), ".png") as tmp:
        sheet.save(tmp, format="PNG")
    return shown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bundle.synthesis_examples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("output", type=Path, help="PNG to write")
    parser.add_argument("--data_root", type=Path, default=Path("../shared/data"))
    args = parser.parse_args(argv)
    for panel in draw_examples(args.output, args.data_root):
        print(f"{panel['title']}: {panel['source']} seed {panel['seed']}, {panel['diameter_mm']:.1f} mm, "
              f"{panel['volume_ml']:.1f} ml, mean {panel['mean_hu']:.0f} HU")  # fmt: skip


if __name__ == "__main__":
    main()
