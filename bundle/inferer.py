"""Glance-Focus inference: score every sliding window with Glance, segment only the kept ones with Focus.

The tiling, the importance map and the blending are MONAI's own (``dense_patch_slices``, ``compute_importance_map``,
the scan interval of ``sliding_window_inference``), so that dense mode (every window kept) reproduces
``monai.inferers.sliding_window_inference`` exactly; the only change is that windows Glance discards are never
segmented and add nothing to the blend (voxels that no kept window covers are background).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
from monai.inferers import Inferer
from monai.inferers.utils import _get_scan_interval
from monai.networks.utils import eval_mode
from monai.utils import BlendMode, ensure_tuple_rep
from tqdm import tqdm

from bundle.networks import select_probability

__all__ = ["GlanceFocusInferer", "GlanceFocusStats", "Tiling"]

logger = logging.getLogger("gf_screen.inferer")


@dataclass
class GlanceFocusStats:
    """Per-scan accounting of one Glance-Focus pass (what the findings and the benchmark report)."""

    windows_total: int
    windows_kept: int
    keep_fraction: float
    threshold: float | None
    glance_max_p: float | None
    glance_seconds: float
    focus_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Tiling:
    """The windows of one (padded) volume: ``slices[i]`` indexes window i in the spatial dims."""

    image_size: tuple[int, ...]
    pad: list[int]
    slices: list[tuple[slice, ...]]


class GlanceFocusInferer(Inferer):
    """MONAI ``Inferer`` for GF-Screen; ``network`` is Focus, Glance is held by the inferer.

    Args:
        glance: the Glance classifier (2 logits per window).
        roi_size: window size in voxels, (96, 96, 64) in the paper.
        overlap: window overlap as in ``sliding_window_inference`` (0.25 in the FLARE25 report).
        threshold: keep window i when Glance's p_i >= threshold. ``None`` keeps every window (dense mode: the same
            code path, used as the baseline and for equivalence with ``sliding_window_inference``).
        glance_batch_size, focus_batch_size: windows per forward pass; peak memory is bounded by these, not by the
            number of windows.
        mode, sigma_scale: blending, as in ``sliding_window_inference``.
        device: where the networks run (windows are moved there batch by batch); the output stays on the input's device.
        progress: show a progress bar over the Focus batches (useful on CPU, where a scan takes minutes).
    """

    def __init__(
        self,
        glance: torch.nn.Module,
        roi_size: Sequence[int] = (96, 96, 64),
        overlap: float = 0.25,
        threshold: float | None = 0.5,
        glance_batch_size: int = 8,
        focus_batch_size: int = 2,
        mode: str = BlendMode.GAUSSIAN,
        sigma_scale: float = 0.125,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        if threshold is not None and not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a probability in [0, 1] or None (dense), got {threshold}.")
        self.glance = glance
        self.roi_size = tuple(int(s) for s in roi_size)
        self.overlap = overlap
        self.threshold = threshold
        self.glance_batch_size = glance_batch_size
        self.focus_batch_size = focus_batch_size
        self.mode = mode
        self.sigma_scale = sigma_scale
        self.device = device
        self.progress = progress
        self.last_stats: GlanceFocusStats | None = None
        self.last_tiling: Tiling | None = None
        self.last_scores: torch.Tensor | None = None

    def tile(self, spatial_shape: Sequence[int]) -> Tiling:
        """Pad (as ``sliding_window_inference`` does) to at least one window and list the windows."""
        nd = len(self.roi_size)
        if len(spatial_shape) != nd:
            raise ValueError(f"expected a {nd}D volume, got spatial shape {tuple(spatial_shape)}.")
        image_size = tuple(max(int(s), r) for s, r in zip(spatial_shape, self.roi_size))
        pad: list[int] = []
        for s, r in reversed(list(zip(spatial_shape, self.roi_size))):
            diff = max(r - int(s), 0)
            pad.extend([diff // 2, diff - diff // 2])
        interval = _get_scan_interval(image_size, self.roi_size, nd, ensure_tuple_rep(self.overlap, nd))
        slices = dense_patch_slices(image_size, self.roi_size, interval, return_slice=True)
        return Tiling(image_size=image_size, pad=pad, slices=list(slices))

    def _windows(self, image: torch.Tensor, slices: Sequence[tuple[slice, ...]]) -> torch.Tensor:
        return torch.cat([image[(slice(None), slice(None), *s)] for s in slices]).to(self._device(image))

    def _device(self, image: torch.Tensor) -> torch.device:
        return torch.device(self.device) if self.device is not None else image.device

    @torch.no_grad()
    def glance_scores(self, image: torch.Tensor, tiling: Tiling) -> torch.Tensor:
        """Glance's p_i for every window of ``image`` (shape (1, C, *image_size)), in batches, in eval mode."""
        scores = []
        with eval_mode(self.glance):
            for start in range(0, len(tiling.slices), self.glance_batch_size):
                batch = self._windows(image, tiling.slices[start : start + self.glance_batch_size])
                scores.append(select_probability(self.glance(batch)).cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def keep_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """Which windows Focus sees: p_i >= threshold, or all of them in dense mode."""
        if self.threshold is None:
            return torch.ones_like(scores, dtype=torch.bool)
        return scores >= self.threshold

    @torch.no_grad()
    def focus_blend(
        self, image: torch.Tensor, tiling: Tiling, keep: torch.Tensor, network: torch.nn.Module
    ) -> torch.Tensor:
        """Focus softmax on the kept windows, blended with MONAI's importance map; uncovered voxels are background."""
        out_device = image.device
        importance = compute_importance_map(
            get_valid_patch_size(tiling.image_size, self.roi_size),
            mode=self.mode,
            sigma_scale=self.sigma_scale,
            device=out_device,
            dtype=torch.float32,
        )[None, None]
        kept = [s for s, k in zip(tiling.slices, keep.tolist()) if k]
        prob = None
        count = torch.zeros((1, 1, *tiling.image_size), dtype=torch.float32, device=out_device)
        starts = range(0, len(kept), self.focus_batch_size)
        for start in tqdm(starts, desc="Focus", unit="batch", leave=False) if self.progress else starts:
            batch_slices = kept[start : start + self.focus_batch_size]
            seg = torch.softmax(network(self._windows(image, batch_slices)).float(), dim=1).to(out_device)
            if prob is None:
                prob = torch.zeros((1, seg.shape[1], *tiling.image_size), dtype=torch.float32, device=out_device)
            for window, s in zip(seg, batch_slices):
                idx = (slice(None), slice(None), *s)
                prob[idx] += window[None] * importance
                count[idx] += importance
        if prob is None:
            prob = torch.zeros((1, 2, *tiling.image_size), dtype=torch.float32, device=out_device)
        covered = count > 0
        prob = torch.where(covered, prob / count.clamp_min(torch.finfo(torch.float32).tiny), prob)
        prob[:, :1] = torch.where(covered, prob[:, :1], torch.ones_like(prob[:, :1]))
        return prob

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        """Segment ``inputs`` (B, 1, H, W, D): per-class probabilities (B, 2, H, W, D); sets ``last_stats``."""
        if inputs.ndim != 2 + len(self.roi_size):
            raise ValueError(f"expected input of shape (B, C, {len(self.roi_size)} spatial dims), got {inputs.shape}.")
        outputs, stats = [], []
        for item in inputs:
            prob, item_stats = self.infer_one(item[None], network)
            outputs.append(prob)
            stats.append(item_stats)
        self.last_stats = stats[-1]
        out = torch.cat(outputs)
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out, affine=inputs.affine, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return out

    def pad(self, image: torch.Tensor) -> tuple[torch.Tensor, Tiling]:
        """Tile a volume (1, C, *spatial) and pad it to the tiling's size: the input of ``glance_scores``."""
        image = image.as_tensor() if isinstance(image, MetaTensor) else image
        tiling = self.tile(image.shape[2:])
        if any(tiling.pad):
            image = F.pad(image, tiling.pad, mode="constant", value=0.0)
        return image, tiling

    def crop(self, prob: torch.Tensor, tiling: Tiling, spatial_shape: Sequence[int]) -> torch.Tensor:
        """Undo ``pad`` on the blended probabilities: back to the volume's own spatial shape."""
        if not any(tiling.pad):
            return prob
        nd = len(spatial_shape)
        starts = [tiling.pad[2 * (nd - 1 - d)] for d in range(nd)]
        return prob[(slice(None), slice(None), *[slice(b, b + int(s)) for b, s in zip(starts, spatial_shape)])]

    def select(self, image: torch.Tensor, tiling: Tiling) -> tuple[torch.Tensor, torch.Tensor]:
        """The Glance stage: each window's score (all ones in dense mode: Glance does not run) and the keep mask."""
        scores = self.glance_scores(image, tiling) if self.threshold is not None else torch.ones(len(tiling.slices))
        return scores, self.keep_mask(scores)

    def record(
        self, tiling: Tiling, scores: torch.Tensor, keep: torch.Tensor, glance_seconds: float, focus_seconds: float
    ) -> GlanceFocusStats:
        """Set ``last_tiling``, ``last_scores`` and ``last_stats`` (what the findings report) for one volume."""
        self.last_tiling, self.last_scores = tiling, scores
        n_kept = int(keep.sum())
        stats = GlanceFocusStats(
            windows_total=len(tiling.slices),
            windows_kept=n_kept,
            keep_fraction=n_kept / len(tiling.slices),
            threshold=self.threshold,
            glance_max_p=float(scores.max()) if self.threshold is not None and len(scores) else None,
            glance_seconds=glance_seconds,
            focus_seconds=focus_seconds,
        )
        self.last_stats = stats
        logger.info(
            "Glance kept %d of %d windows (%.1f%%); Glance %.2f s, Focus %.2f s",
            n_kept,
            stats.windows_total,
            100 * stats.keep_fraction,
            stats.glance_seconds,
            stats.focus_seconds,
        )
        return stats

    def infer_one(self, image: torch.Tensor, network: torch.nn.Module) -> tuple[torch.Tensor, GlanceFocusStats]:
        """Glance then Focus on one volume (1, C, *spatial): the stages the Deploy app runs as separate operators."""
        spatial = image.shape[2:]
        image, tiling = self.pad(image)
        t0 = time.perf_counter()
        scores, keep = self.select(image, tiling)
        t1 = time.perf_counter()
        prob = self.focus_blend(image, tiling, keep, network)
        t2 = time.perf_counter()
        return self.crop(prob, tiling, spatial), self.record(tiling, scores, keep, t1 - t0, t2 - t1)
