"""The 134-slice abdominal series with one synthetic solid lung mass painted in (bundle.synthesis, the lesion kind the
models train on), written with its exact mask on the same grid, so that `python -m bundle.benchmark --label` can
measure the DSC that Glance-Focus loses against dense Focus at a trained operating point on a full-size scan. The
series' own pancreatic cancer is unlabelled, so the DSC counts only the painted mass.
    python docs/results/glance_cost/make_lesion_scan.py <series folder> <image.nii.gz> <label.nii.gz>
"""

import json
import sys

import numpy as np
import torch
from bundle.synthesis import atomic_write_nifti, host_masks, load_ras, synthesize_lesion

SEED, LESION_TYPE, DIAMETER_MM = 15, "lung_mass", (25.0, 40.0)

series, image_out, label_out = sys.argv[1:4]
image = load_ras(series)
affine = image.affine.numpy()
hu = image[0].numpy()
hosts = host_masks(hu, affine, None)
new, mask, info = synthesize_lesion(hu, affine, hosts, np.random.default_rng(SEED), [LESION_TYPE], DIAMETER_MM)
atomic_write_nifti(torch.from_numpy(np.round(new).astype(np.int16)), image.affine, image_out)
atomic_write_nifti(torch.from_numpy(mask.astype(np.uint8)), image.affine, label_out)
print(json.dumps({"seed": SEED, "voxels": int(mask.sum()), **info}, default=str))
