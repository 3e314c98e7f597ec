"""Glance-Focus inference: score every sliding window with Glance, segment only the kept ones with Focus.

The tiling, the importance map and the blending are MONAI's own (``dense_patch_slices``, ``compute_importance_map``,
the scan interval of ``sliding_window_inference``), so that dense mode (every window kept) reproduces
``monai.inferers.sliding_window_inference`` exactly; the only change is that windows Glance discards are never
segmented and add nothing to the blend (voxels that no kept window covers are background).

Like MONAI's inferers it keeps no per-call state: each scan's selection (its tiling, Glance scores, keep decisions and
seconds) travels with the prediction, in its metadata under ``GLANCE_FOCUS_KEY``, so that findings, validation
metrics and the benchmark read them from the scan they belong to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from bundle.glance import shared_window_logits
from bundle.networks import select_probability
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
from monai.inferers import Inferer
from monai.networks.utils import eval_mode
from monai.utils import BlendMode
from tqdm import tqdm

__all__ = [
    "GLANCE_FOCUS_KEY",
    "GlanceFocusInferer",
    "GlanceFocusStats",
    "Tiling",
    "scan_interval",
    "stats_meta",
    "stats_of",
]

logger = logging.getLogger("gf_screen.inferer")

GLANCE_MODES = ("windows", "shared")
EXTENT_DEPENDENT_NORMS = (torch.nn.GroupNorm, torch.nn.InstanceNorm3d, torch.nn.LayerNorm)

# Metadata key of a prediction's Glance-Focus statistics (``stats_meta``; read them with ``stats_of``).
GLANCE_FOCUS_KEY = "glance_focus"


@dataclass
class Tiling:
    """The windows of one (padded) volume: ``slices[i]`` indexes window i in the spatial dims."""

    image_size: tuple[int, ...]
    pad: list[int]
    slices: list[tuple[slice, ...]]


@dataclass
class GlanceFocusStats:
    """One scan's Glance-Focus pass: each window's Glance score and keep decision, and the seconds of each stage."""

    scores: torch.Tensor
    keep: torch.Tensor
    threshold: float | None
    glance_seconds: float
    focus_seconds: float = 0.0

    @property
    def windows_total(self) -> int:
        return int(self.keep.numel())

    @property
    def windows_kept(self) -> int:
        return int(self.keep.sum())

    @property
    def keep_fraction(self) -> float:
        return self.windows_kept / self.windows_total

    def as_dict(self) -> dict:
        """The accounting the findings JSON records (no per-window values)."""
        return {
            "windows_total": self.windows_total,
            "windows_kept": self.windows_kept,
            "keep_fraction": self.keep_fraction,
            "threshold": self.threshold,
            "glance_max_p": float(self.scores.max()) if self.threshold is not None and self.scores.numel() else None,
            "glance_seconds": self.glance_seconds,
            "focus_seconds": self.focus_seconds,
        }


def stats_meta(stats: Sequence[GlanceFocusStats]) -> dict:
    """The batch's statistics as prediction metadata: tensors with the batch first, so that MONAI's
    ``decollate_batch`` hands each scan its own row (the scans of a batch share their shape, hence their windows)."""
    return {
        "scores": torch.stack([s.scores.float() for s in stats]),
        "keep": torch.stack([s.keep for s in stats]),
        "glance_seconds": torch.tensor([s.glance_seconds for s in stats], dtype=torch.float64),
        "focus_seconds": torch.tensor([s.focus_seconds for s in stats], dtype=torch.float64),
        "threshold": stats[0].threshold,
    }


def stats_of(pred: torch.Tensor) -> list[GlanceFocusStats]:
    """The ``GlanceFocusStats`` a prediction carries: one per scan of a batch, or the one of a decollated scan."""
    meta = pred.meta.get(GLANCE_FOCUS_KEY) if isinstance(pred, MetaTensor) else None
    if meta is None:
        raise ValueError("the prediction carries no Glance-Focus statistics: it was not made by GlanceFocusInferer.")
    scores, keep = torch.as_tensor(meta["scores"]), torch.as_tensor(meta["keep"])
    glance_s, focus_s = (torch.as_tensor(meta[k]).reshape(-1) for k in ("glance_seconds", "focus_seconds"))
    if scores.ndim == 1:
        scores, keep = scores[None], keep[None]
    return [
        GlanceFocusStats(scores[i], keep[i].bool(), meta["threshold"], float(glance_s[i]), float(focus_s[i]))
        for i in range(len(scores))
    ]


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> tuple[int, ...]:
    """The window step of ``sliding_window_inference``: ``roi * (1 - overlap)`` (at least 1), or the roi where the
    image is exactly one window wide."""
    return tuple(int(r) if int(s) == int(r) else max(int(r * (1 - overlap)), 1) for s, r in zip(image_size, roi_size))


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
        glance_mode: ``windows`` runs Glance on every window (the paper's); ``shared`` runs its convolutional trunk
            once over the volume and pools each window's score from it (``bundle.glance``): same weights, one select
            probability per window, a fraction of the cost. It needs a normalisation that does not depend on the
            input's extent (batch norm, evaluated with its running statistics).
        glance_slab: ``shared`` mode computes the trunk in axial slabs of this many voxels (None: the whole volume at
            once), which bounds its memory on long scans.
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
        glance_mode: str = "windows",
        glance_slab: int | None = None,
    ) -> None:
        super().__init__()
        if glance_mode not in GLANCE_MODES:
            raise ValueError(f"glance_mode must be one of {GLANCE_MODES}, got {glance_mode!r}.")
        if glance_mode == "shared" and any(isinstance(m, EXTENT_DEPENDENT_NORMS) for m in glance.modules()):
            raise ValueError(
                "glance_mode 'shared' needs a Glance whose normalisation does not depend on the input's extent "
                "(batch norm); group, instance or layer norm over the whole volume is not the window's computation."
            )
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
        self.glance_mode = glance_mode
        self.glance_slab = glance_slab

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
        interval = scan_interval(image_size, self.roi_size, self.overlap)
        slices = dense_patch_slices(image_size, self.roi_size, interval, return_slice=True)
        return Tiling(image_size=image_size, pad=pad, slices=list(slices))

    def _windows(self, image: torch.Tensor, slices: Sequence[tuple[slice, ...]]) -> torch.Tensor:
        return torch.cat([image[(slice(None), slice(None), *s)] for s in slices]).to(self._device(image))

    def _device(self, image: torch.Tensor) -> torch.device:
        return torch.device(self.device) if self.device is not None else image.device

    @torch.no_grad()
    def glance_scores(self, image: torch.Tensor, tiling: Tiling) -> torch.Tensor:
        """Glance's p_i for every window of ``image`` (shape (1, C, *image_size)), in batches, in eval mode; in
        ``shared`` mode from one trunk pass over the volume."""
        if self.glance_mode == "shared":
            with eval_mode(self.glance):
                logits = shared_window_logits(
                    self.glance, image.to(self._device(image)), tiling.slices, self.glance_slab
                )
            return select_probability(logits).cpu()
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

    def pad(self, image: torch.Tensor) -> tuple[torch.Tensor, Tiling]:
        """Tile a volume (1, C, *spatial) and pad it to the tiling's size: the input of ``select`` and ``segment``."""
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

    def select(self, image: torch.Tensor, tiling: Tiling) -> GlanceFocusStats:
        """The Glance stage on a padded volume: each window's score (all ones in dense mode, where Glance does not
        run) and keep decision, timed; ``focus_seconds`` is filled in by ``segment``."""
        t0 = time.perf_counter()
        scores = self.glance_scores(image, tiling) if self.threshold is not None else torch.ones(len(tiling.slices))
        return GlanceFocusStats(scores, self.keep_mask(scores), self.threshold, time.perf_counter() - t0)

    @torch.no_grad()
    def segment(
        self, image: torch.Tensor, tiling: Tiling, stats: GlanceFocusStats, network: torch.nn.Module
    ) -> torch.Tensor:
        """The Focus stage: softmax on the windows ``stats`` keeps, blended with MONAI's importance map (uncovered
        voxels are background); sets ``stats.focus_seconds`` and logs the scan's accounting."""
        t0 = time.perf_counter()
        out_device = image.device
        importance = compute_importance_map(
            get_valid_patch_size(tiling.image_size, self.roi_size),
            mode=self.mode,
            sigma_scale=self.sigma_scale,
            device=out_device,
            dtype=torch.float32,
        )[None, None]
        kept = [s for s, k in zip(tiling.slices, stats.keep.tolist()) if k]
        prob = torch.zeros((1, 2, *tiling.image_size), dtype=torch.float32, device=out_device)
        count = torch.zeros((1, 1, *tiling.image_size), dtype=torch.float32, device=out_device)
        starts = range(0, len(kept), self.focus_batch_size)
        for start in tqdm(starts, desc="Focus", unit="batch", leave=False) if self.progress else starts:
            batch_slices = kept[start : start + self.focus_batch_size]
            seg = torch.softmax(network(self._windows(image, batch_slices)).float(), dim=1).to(out_device)
            for window, s in zip(seg, batch_slices):
                idx = (slice(None), slice(None), *s)
                prob[idx] += window[None] * importance
                count[idx] += importance
        covered = count > 0
        prob = torch.where(covered, prob / count.clamp_min(torch.finfo(torch.float32).tiny), prob)
        prob[:, :1] = torch.where(covered, prob[:, :1], torch.ones_like(prob[:, :1]))
        stats.focus_seconds = time.perf_counter() - t0
        logger.info(
            "Glance kept %d of %d windows (%.1f%%); Glance %.2f s, Focus %.2f s",
            stats.windows_kept,
            stats.windows_total,
            100 * stats.keep_fraction,
            stats.glance_seconds,
            stats.focus_seconds,
        )
        return prob

    def infer_one(self, image: torch.Tensor, network: torch.nn.Module) -> tuple[torch.Tensor, GlanceFocusStats]:
        """Glance then Focus on one volume (1, C, *spatial): the stages the Deploy app runs as separate operators."""
        spatial = image.shape[2:]
        image, tiling = self.pad(image)
        stats = self.select(image, tiling)
        prob = self.segment(image, tiling, stats, network)
        return self.crop(prob, tiling, spatial), stats

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> MetaTensor:
        """Segment ``inputs`` (B, 1, H, W, D): per-class probabilities (B, 2, H, W, D) as a MetaTensor with the input's
        metadata and, under ``GLANCE_FOCUS_KEY``, each scan's ``GlanceFocusStats``."""
        if inputs.ndim != 2 + len(self.roi_size):
            raise ValueError(f"expected input of shape (B, C, {len(self.roi_size)} spatial dims), got {inputs.shape}.")
        results = [self.infer_one(item[None], network) for item in inputs]
        out = self.prediction(torch.cat([prob for prob, _ in results]), [stats for _, stats in results], inputs)
        out.is_batch = True
        return out

    @staticmethod
    def prediction(prob: torch.Tensor, stats: Sequence[GlanceFocusStats], like: torch.Tensor) -> MetaTensor:
        """Probabilities as the inferer hands them on: a MetaTensor with ``like``'s metadata and transform trace (what
        ``Invertd`` needs) and each scan's statistics under ``GLANCE_FOCUS_KEY`` (what ``stats_of`` reads)."""
        if isinstance(like, MetaTensor):
            out = MetaTensor(prob, meta=dict(like.meta), applied_operations=like.applied_operations)
        else:
            out = MetaTensor(prob)
        out.meta[GLANCE_FOCUS_KEY] = stats_meta(list(stats))
        return out
