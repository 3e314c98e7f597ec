"""A 400-slice version of the 134-slice abdominal series (the shared data hold no longer scan): the same anatomy,
resampled by SimpleITK (linear) from 3.0 mm to 1.0 mm slices, written as NIfTI."""

import sys

import SimpleITK as sitk  # noqa: N813

reader = sitk.ImageSeriesReader()
reader.SetFileNames(reader.GetGDCMSeriesFileNames(sys.argv[1]))
image = reader.Execute()
spacing = list(image.GetSpacing())
size = list(image.GetSize())
new_spacing = [spacing[0], spacing[1], 1.0]
new_size = [size[0], size[1], 400]
out = sitk.Resample(
    image,
    new_size,
    sitk.Transform(),
    sitk.sitkLinear,
    image.GetOrigin(),
    new_spacing,
    image.GetDirection(),
    -1024,
    image.GetPixelID(),
)
sitk.WriteImage(out, sys.argv[2], useCompression=True)
print(out.GetSize(), out.GetSpacing())
