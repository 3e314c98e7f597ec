"""Seconds of each preprocessing and postprocessing transform on one scan, the postprocessing on a synthetic lesion
map (30 blobs of p 0.9). What the model card's per-transform figures for commit c0c97f3 came from (before and after
it, while a training stage shared the CPU). From the bundle root:
    python docs/results/glance_cost/time_transforms.py ../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom
"""

import sys
import time

import torch
from bundle.data import list_inputs
from bundle.inferer import GlanceFocusInferer, GlanceFocusStats
from bundle.pipeline import build_pipeline

CONFIGS = ["configs/inference.yaml", "configs/small.yaml", "docs/results/glance_cost/untrained_batchnorm_stem2.yaml"]


def timed(transforms, data, tag):
    for t in transforms:
        t0 = time.perf_counter()
        data = t(data)
        print(f"{tag} {type(t).__name__:28s} {time.perf_counter() - t0:6.2f} s")
    return data


pipeline = build_pipeline(CONFIGS, {"allow_untrained": True})
loading, core = pipeline.preprocessing.transforms[:-1], pipeline.preprocessing_core.transforms
data = timed([*loading, *core], dict(list_inputs(sys.argv[1])[0]), "pre ")
image = data["image"]
prob = torch.zeros((2, *image.shape[1:]))
g = torch.Generator().manual_seed(0)
for _ in range(30):
    c = [int(torch.randint(8, s - 8, (1,), generator=g)) for s in image.shape[1:]]
    prob[1, c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] - 2 : c[2] + 2] = 0.9
prob[0] = 1 - prob[1]
windows = torch.ones(144, dtype=torch.bool)
stats = [GlanceFocusStats(scores=windows.float(), keep=windows, threshold=None, glance_seconds=0.0)]
pred = GlanceFocusInferer.prediction(prob, stats, image)
timed(pipeline.postprocessing_core.transforms, {**data, "pred": pred}, "post")
