"""The lesion-free stretch of the 134-slice abdominal series as a scan of its own: the slices whose patient z lies in
the datalist's `lesion_free_region` of it (385-500 mm, the lung bases, far from the pancreatic cancer), unchanged,
written as NIfTI, so that the benchmark times loading, inversion and writing of that stretch alone (end to end).
    python docs/results/glance_cost/make_stretch.py <series folder> runs/series_stretch.nii.gz
"""

import sys

import numpy as np
import SimpleITK as sitk  # noqa: N813

LOW, HIGH = 385.0, 500.0

reader = sitk.ImageSeriesReader()
reader.SetFileNames(reader.GetGDCMSeriesFileNames(sys.argv[1]))
image = reader.Execute()
z = np.array([image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(image.GetSize()[2])])
inside = np.nonzero((z >= LOW) & (z <= HIGH))[0]
stretch = image[:, :, int(inside[0]) : int(inside[-1]) + 1]
sitk.WriteImage(stretch, sys.argv[2], useCompression=True)
print(stretch.GetSize(), stretch.GetSpacing(), f"z {z[inside].min():.1f} to {z[inside].max():.1f} mm")
