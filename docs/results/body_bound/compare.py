"""The body bound before and after the table fix (version 0.5.3), on the original grids of the project's real scans:
body voxels each keeps, what the fix removes, and the lesion voxels that lie outside the bound (the body grown 2
voxels in-plane, as `BoundToBodyd` grows it) with each. `previous_body_mask` is version 0.5.2's `body_mask`, kept here
only for this comparison.
    python docs/results/body_bound/compare.py > docs/results/body_bound/compare.log
"""

import glob

import numpy as np
from bundle.synthesis import load_ras
from bundle.transforms import BODY_HU, BODY_PART_FRACTION, body_mask, fill_axial_holes
from scipy import ndimage

DATA = "../shared/data"
MARGIN = np.zeros((3, 3, 1), bool)
MARGIN[:, :, 0] = ndimage.generate_binary_structure(2, 1)


def previous_body_mask(tissue: np.ndarray) -> np.ndarray:
    body = fill_axial_holes(tissue)
    components, count = ndimage.label(body)
    if count <= 1:
        return body
    sizes = ndimage.sum_labels(body, components, index=np.arange(1, count + 1))
    return np.concatenate([[False], sizes >= BODY_PART_FRACTION * sizes.max()])[components]


scans = [
    (f"{DATA}/tcia_pancreatic_ct_cbct_seg_full_series/dicom", None),
    (f"{DATA}/mirp_crlm_ct_1004_nomask/image", None),
    (f"{DATA}/pyradiomics_lung1/lung1_image.nrrd", f"{DATA}/pyradiomics_lung1/lung1_label.nrrd"),
    (f"{DATA}/lidc_idri_0314_nodule/image_slab.nii.gz", f"{DATA}/lidc_idri_0314_nodule/mask_consensus50.nii.gz"),
] + [
    (p, p.replace("ct.nii.gz", "mask_gtv.nii.gz")) for p in sorted(glob.glob(f"{DATA}/ibsi_sts_sarcoma_ct/*/ct.nii.gz"))
]
print("scan | body voxels 0.5.2 | 0.5.3 | removed | added | lesion voxels | outside the bound 0.5.2 | 0.5.3")
for image_path, label_path in scans:
    tissue = load_ras(image_path)[0].numpy() > BODY_HU
    old, new = previous_body_mask(tissue), body_mask(tissue)
    row = [
        image_path.removeprefix(DATA + "/"),
        int(old.sum()),
        int(new.sum()),
        int((old & ~new).sum()),
        int((new & ~old).sum()),
    ]
    if label_path:
        lesion = load_ras(label_path)[0].numpy() > 0
        outside = [int((lesion & ~ndimage.binary_dilation(b, MARGIN, iterations=2)).sum()) for b in (old, new)]
        row += [int(lesion.sum()), *outside]
    print(" | ".join(map(str, row)), flush=True)
