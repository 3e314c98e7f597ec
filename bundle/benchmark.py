"""Dense against Glance-Focus inference on one scan, same weights, same process: is Glance-Focus worth it here?

Everything is built from the bundle configs by ``bundle.pipeline.build_pipeline`` (``preprocessing``, ``glance``,
``network``, ``weights`` and the inferer parameters), so the figures are those of what ``configs/inference.yaml``
runs, on this machine. Example (small CPU networks, no trained weights, the paper's average keep fraction)::

    python -m bundle.benchmark --input ../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom \\
        --config_file configs/inference.yaml --config_file configs/small.yaml --allow_untrained \\
        --keep_fraction 0.167 --output results.json

Per mode it reports windows total and kept, keep fraction, Glance, Focus and total seconds (the wall clock of the
inferer call) and peak memory, then the speed-up dense / Glance-Focus and the compute floor of method.md section 4,
c_glance / c_focus + k, from the measured seconds per window.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import psutil
import torch
from bundle.data import list_inputs
from bundle.inferer import GlanceFocusInferer, Tiling, stats_of
from bundle.metrics import dice
from bundle.pipeline import ScreeningPipeline, build_pipeline
from bundle.transforms import CropAxialRanged
from bundle.writers import SaveScanOutputsd, print_and_record
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImage, Orientationd

__all__ = ["main", "top_fraction_mask", "PeakMemory", "MeasuredInferer"]

logger = logging.getLogger("gf_screen.benchmark")

DEFAULT_CONFIGS = ("configs/inference.yaml",)
MODES = ("dense", "glance_focus")


def top_fraction_mask(scores: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """Keep exactly ``round(keep_fraction * n)`` windows, those with the highest Glance scores.

    A probability threshold cannot do that when scores tie, so the windows are ranked (a stable sort: among equal
    scores the lower window index wins) and the top ones kept.
    """
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}.")
    if scores.ndim != 1:
        raise ValueError(f"expected one score per window (1D), got shape {tuple(scores.shape)}.")
    n_keep = round(keep_fraction * scores.numel())
    keep = torch.zeros(scores.shape, dtype=torch.bool)
    keep[torch.sort(scores, descending=True, stable=True).indices[:n_keep]] = True
    return keep


class MeasuredInferer(GlanceFocusInferer):
    """The bundle's inferer, unchanged except that it can keep a fixed fraction of the windows.

    With ``keep_fraction`` the kept windows are the top ``round(k * n)`` by Glance score (``top_fraction_mask``).
    That is for measuring compute at a given keep fraction with untrained weights, where a probability threshold
    means nothing; Glance still runs on every window, so its cost is measured too.
    """

    def __init__(self, *args, keep_fraction: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if keep_fraction is not None and self.threshold is None:
            raise ValueError("keep_fraction needs Glance to run: give a threshold, not None (dense).")
        self.keep_fraction = keep_fraction

    def keep_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """The bundle's rule (p >= threshold, or all in dense mode), or the top fraction when one is set."""
        if self.keep_fraction is None:
            return super().keep_mask(scores)
        return top_fraction_mask(scores, self.keep_fraction)


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _release_freed_memory() -> None:
    """Give freed heap back to the OS, so that a mode's RSS increase is not hidden by what the previous one left."""
    gc.collect()
    libc_name = ctypes.util.find_library("c") if platform.system() == "Linux" else None
    if libc_name:
        ctypes.CDLL(libc_name).malloc_trim(0)


class PeakMemory:
    """Peak memory of a block: RSS sampled every ``interval`` s by a thread, and on CUDA the allocator's peak."""

    def __init__(self, device: torch.device, interval: float = 0.05) -> None:
        self.device = device
        self.interval = interval
        self.rss_before = 0
        self.rss_peak = 0
        self.cuda_peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.rss_peak = max(self.rss_peak, _rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss_before = self.rss_peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.rss_peak = max(self.rss_peak, _rss())
        if self.device.type == "cuda":
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device)

    def as_dict(self) -> dict:
        mib = 2**20
        out = {"peak_rss_mib": self.rss_peak / mib, "rss_increase_mib": (self.rss_peak - self.rss_before) / mib}
        if self.cuda_peak is not None:
            out["cuda_max_allocated_mib"] = self.cuda_peak / mib
        return out


def exclusively_kept(tiling: Tiling, keep: torch.Tensor) -> torch.Tensor:
    """Voxels covered by a kept window and by no discarded one: there dense and Glance-Focus blend the same windows."""
    mask = torch.zeros(tiling.image_size, dtype=torch.bool)
    for s, k in zip(tiling.slices, keep.tolist()):
        if k:
            mask[s] = True
    for s, k in zip(tiling.slices, keep.tolist()):
        if not k:
            mask[s] = False
    return mask


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run_mode(
    inferer: MeasuredInferer, image: torch.Tensor, network: torch.nn.Module, device: torch.device, amp: bool
) -> tuple[MetaTensor, torch.Tensor, dict]:
    """One inferer call, timed and memory-sampled; returns the prediction (on CPU, with its statistics), the keep
    mask and the figures."""
    _release_freed_memory()
    with PeakMemory(device) as memory, torch.inference_mode(), torch.autocast(device.type, enabled=amp):
        t0 = time.perf_counter()
        prob = inferer(image, network)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - t0
    (stats,) = stats_of(prob)
    selected = float(stats.scores[stats.keep].min()) if stats.keep.any() else None
    figures = {
        "windows_total": stats.windows_total,
        "windows_kept": stats.windows_kept,
        "keep_fraction": stats.keep_fraction,
        "threshold": selected if inferer.keep_fraction is not None else stats.threshold,
        "glance_seconds": stats.glance_seconds,
        "focus_seconds": stats.focus_seconds,
        "total_seconds": total,
        **memory.as_dict(),
    }
    return prob.cpu(), stats.keep, figures


def _summarise(runs: list[dict]) -> dict:
    """Median timings over the repeats, the largest memory peak; counts are the same in every repeat."""
    out = dict(runs[0])
    for key in ("glance_seconds", "focus_seconds", "total_seconds"):
        out[key] = statistics.median(r[key] for r in runs)
    for key in ("peak_rss_mib", "rss_increase_mib", "cuda_max_allocated_mib"):
        if key in out:
            out[key] = max(r[key] for r in runs)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bundle.benchmark",
        description=(
            "Run dense inference (Focus on every window) and Glance-Focus inference on one scan with the same "
            "networks and weights, in one process, and report windows, seconds, peak memory, the speed-up and "
            "the compute floor c_glance/c_focus + k (method.md section 4). Run from the bundle root."
        ),
        epilog=(
            "example: python -m bundle.benchmark --input ../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom "
            "--config_file configs/inference.yaml --config_file configs/small.yaml --allow_untrained "
            "--keep_fraction 0.167 --output results.json"
        ),
    )
    parser.add_argument("--input", required=True, help="one scan: a NIfTI/NRRD/MHA file or a DICOM series folder")
    parser.add_argument(
        "--config_file",
        action="append",
        help="bundle config, repeatable, merged in order (default: configs/inference.yaml); add configs/small.yaml "
        "for the CPU-size networks",
    )
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument(
        "--keep_fraction",
        type=float,
        nargs="+",
        help="keep the top round(k * n) windows by Glance score instead of thresholding: measures compute at a "
        "given keep fraction, e.g. 0.167 (the paper's average); needed with untrained weights, where a "
        "probability threshold means nothing",
    )
    selection.add_argument("--threshold", type=float, help="Glance probability threshold (default: the config's)")
    parser.add_argument(
        "--allow_untrained", action="store_true", help="run with seeded random weights when there is no checkpoint"
    )
    parser.add_argument(
        "--axial_range_mm",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="screen only this head-foot slab of the scan (patient z, mm; bundle.transforms.CropAxialRanged after "
        "Orientationd), e.g. a lesion-free stretch",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode; timings are the median (default 1)")
    parser.add_argument(
        "--glance_modes",
        nargs="+",
        choices=("windows", "shared"),
        default=[],
        help="also time Glance alone in each of these modes (bundle/glance.py) as a fraction of dense Focus",
    )
    parser.add_argument(
        "--end_to_end",
        action="store_true",
        help="also time what lies outside the networks on the dense output (postprocessing: body bound, inversion "
        "to the scan's grid, connected components and findings; writing the outputs)",
    )
    parser.add_argument(
        "--label",
        help="reference lesion mask on the scan's grid: also report the DSC of the lesions dense and Glance-Focus "
        "(the first keep fraction, or the threshold) report, and the DSC points Glance-Focus loses",
    )
    parser.add_argument("--output", help="also write every figure to this JSON file (atomically)")
    return parser


def with_axial_crop(preprocessing: Compose) -> Compose:
    """The preprocessing, flattened, with ``CropAxialRanged`` right after ``Orientationd`` (axis 2: head-foot)."""
    transforms = list(preprocessing.flatten().transforms)
    index = next((i for i, t in enumerate(transforms) if isinstance(t, Orientationd)), None)
    if index is None:
        raise SystemExit("--axial_range_mm needs an Orientationd in the preprocessing.")
    transforms.insert(index + 1, CropAxialRanged(keys="image"))
    return Compose(transforms)


def _format_table(results: dict) -> str:
    dense, gf = results["dense"], results["glance_focus"]
    rows = [
        ("windows total", "d", "windows_total"),
        ("windows kept", "d", "windows_kept"),
        ("keep fraction", ".3f", "keep_fraction"),
        ("Glance s", ".2f", "glance_seconds"),
        ("Focus s", ".2f", "focus_seconds"),
        ("total s", ".2f", "total_seconds"),
        ("peak RSS MiB", ".0f", "peak_rss_mib"),
        ("RSS increase MiB", ".0f", "rss_increase_mib"),
    ]
    if "cuda_max_allocated_mib" in dense:
        rows.append(("CUDA max allocated MiB", ".0f", "cuda_max_allocated_mib"))
    lines = [f"{'':<24}{'dense':>14}{'glance-focus':>14}"]
    lines += [f"{label:<24}{format(dense[key], fmt):>14}{format(gf[key], fmt):>14}" for label, fmt, key in rows]
    return "\n".join(lines)


def _sweep_lines(results: dict) -> list[str]:
    lines = [""]
    for name, outside in results["outside_networks_by_run"].items():
        parts = ", ".join(f"{k.removesuffix('_seconds')} {v:.2f} s" for k, v in outside.items())
        lines.append(f"outside the networks, {name}: {parts}")
    if len(results["sweep"]) > 1 or results["outside_networks"].keys() != {"preprocessing_seconds"}:
        lines.append(
            f"{'run':<26}{'keep':>7}{'Glance s':>10}{'Focus s':>10}{'total s':>10}{'outside s':>11}{'speed-up':>10}"
            f"{'end to end':>12}"
        )
        lines += [
            f"{r['run']:<26}{r['keep_fraction']:>7.3f}{r['glance_seconds']:>10.2f}{r['focus_seconds']:>10.2f}"
            f"{r['total_seconds']:>10.2f}{r['outside_seconds']:>11.2f}{r['speedup']:>9.2f}x"
            f"{r['speedup_end_to_end']:>11.2f}x"
            for r in results["sweep"]
        ]
    for mode, cost in results["glance_cost"].items():
        lines.append(
            f"Glance alone, {mode} mode: {cost['glance_seconds']:.2f} s = "
            f"{100 * cost['fraction_of_dense_focus']:.1f} % of dense Focus "
            f"({results['dense']['focus_seconds']:.2f} s); peak RSS {cost['peak_rss_mib']:.0f} MiB"
        )
    return lines


def report(results: dict) -> str:
    """The human-readable summary the command prints."""
    env, scan, sel, floor = results["environment"], results["scan"], results["selection"], results["compute_floor"]
    selected = results["glance_focus"]["threshold"]
    selected = "n/a" if selected is None else format(selected, ".4f")
    if sel["keep_fraction"] is not None:
        chosen = (
            f"keep fraction {sel['keep_fraction']} -> top {results['glance_focus']['windows_kept']} windows by Glance "
            f"score (smallest kept score {selected})"
        )
    else:
        chosen = f"threshold {selected} from " + ("--threshold" if sel["source"] == "cli" else "the config")
    lines = [
        "GF-Screen benchmark: dense vs Glance-Focus, same weights, one process",
        f"device {env['device']} | torch {env['torch']} | {env['torch_threads']} threads | CPU {env['cpu_model']} "
        f"({env['cpu_count']} logical cores)",
        f"configs: {' + '.join(results['configs'])} | weights: {results['weights']['status']}",
        f"scan: {scan['input']} ({scan['region']})"
        + (f", head-foot slab {scan['axial_range_mm']} mm" if scan.get("axial_range_mm") else ""),
        f"  original shape {scan['original_shape']} spacing {scan['original_spacing']} -> preprocessed "
        f"{scan['preprocessed_shape']} at {scan['pixdim']} mm",
        f"preprocessing {results['preprocessing_seconds']:.2f} s (the process's first: "
        f"{results['first_preprocessing_seconds']:.2f} s) | roi {results['inferer']['roi_size']} overlap "
        f"{results['inferer']['overlap']} | batches Glance {results['inferer']['glance_batch_size']} Focus "
        f"{results['inferer']['focus_batch_size']} | Glance mode {results['inferer']['glance_mode']} | repeats "
        f"{results['repeats']} (median seconds)",
        f"Glance-Focus selection: {chosen}",
        "",
        _format_table(results),
        "",
        f"speed-up dense / Glance-Focus total: {results['speedup']:.2f}x",
        f"compute floor: Glance/Focus s per window {floor['glance_per_window_s']:.3f}/{floor['focus_per_window_s']:.3f}"
        f" = {floor['glance_focus_ratio']:.3f}, + k {floor['keep_fraction']:.3f} = {floor['fraction_of_dense']:.3f} of "
        f"dense Focus (at most {1 / floor['fraction_of_dense']:.2f}x)",
    ]
    lines += _sweep_lines(results)
    agree = results["agreement"]
    if agree["voxels"]:
        lines.append(
            f"outputs on the {agree['voxels']} voxels covered only by kept windows: max |dense - GF| probability "
            f"{agree['max_abs_diff']:.2e}"
        )
    else:
        lines.append("outputs: no voxel is covered only by kept windows, nothing to compare")
    acc = results.get("accuracy")
    if acc:
        lines.append(
            f"reported lesions against {acc['label']}: DSC dense {acc['dense_dsc']:.4f}, Glance-Focus "
            f"{acc['glance_focus_dsc']:.4f} (loss {acc['dsc_loss_points']:.2f} points)"
        )
    return "\n".join(lines)


def _selection(args: argparse.Namespace, pipeline: ScreeningPipeline) -> tuple[float | None, str]:
    """The Glance threshold of the Glance-Focus mode and where it came from."""
    if args.keep_fraction is not None:
        return None, "keep_fraction"
    if args.threshold is not None:
        return args.threshold, "cli"
    return pipeline.get("glance_threshold"), "config"


INFERER_KEYS = ("roi_size", "overlap", "glance_batch_size", "focus_batch_size", "glance_mode", "glance_slab")


def _inferers(args: argparse.Namespace, pipeline: ScreeningPipeline, threshold: float | None) -> dict:
    """The dense inferer and one Glance-Focus inferer per keep fraction (or the one threshold), all from the
    config's inferer settings."""
    params = {key: pipeline.get(key) for key in INFERER_KEYS}
    inferers = {"dense": MeasuredInferer(pipeline.glance, threshold=None, **params)}
    # With a keep fraction the threshold only makes Glance run (not None); the top fraction is what is kept.
    for k in args.keep_fraction or [None]:
        name = "glance_focus" if not len(inferers) - 1 else f"glance_focus_k{k}"
        inferers[name] = MeasuredInferer(
            pipeline.glance, threshold=threshold if k is None else 0.0, keep_fraction=k, **params
        )
    return inferers


def _warm_up(pipeline: ScreeningPipeline, image: torch.Tensor, tiling: Tiling) -> None:
    """One window through each network first, so that no mode pays the one-off start-up costs."""
    with torch.inference_mode(), torch.autocast(pipeline.device.type, enabled=pipeline.amp):
        window = image[(slice(None), slice(None), *tiling.slices[0])]
        pipeline.glance(window)
        pipeline.focus(window)


def _measure(
    inferers: dict,
    image: torch.Tensor,
    pipeline: ScreeningPipeline,
    repeats: int,
    keep_gf: bool = False,
    outside: Callable[[MetaTensor], dict] | None = None,
) -> tuple:
    """Every mode ``repeats`` times; the runs, how far the outputs differ where they must agree, the dense prediction
    of the last repeat, with ``keep_gf`` the Glance-Focus one, and, with ``outside``, what it measured on each run's
    own last prediction (the postprocessing of a map Focus left mostly empty costs less than that of a dense one)."""
    network, device, amp = pipeline.focus, pipeline.device, pipeline.amp
    tiling = inferers["dense"].tile(image.shape[2:])
    _warm_up(pipeline, image, tiling)
    runs: dict[str, list[dict]] = {mode: [] for mode in inferers}
    max_diff, n_voxels = 0.0, 0
    outside_by_run: dict[str, dict] = {}
    for repeat in range(repeats):
        last = repeat == repeats - 1
        # Glance-Focus first: its kept windows say where the two outputs must agree, so only those voxels are held
        # (not a whole dense probability volume) while the other modes run.
        gf_prob, keep, figures = _run_mode(inferers["glance_focus"], image, network, device, amp)
        runs["glance_focus"].append(figures)
        region = exclusively_kept(tiling, keep)
        gf_values = gf_prob[0][:, region].as_tensor()
        if outside and last:
            outside_by_run["glance_focus"] = outside(gf_prob)
        if not keep_gf:
            gf_prob = None
        for name in [n for n in inferers if n.startswith("glance_focus_k")]:
            prob, _, figures = _run_mode(inferers[name], image, network, device, amp)
            runs[name].append(figures)
            if outside and last:
                outside_by_run[name] = outside(prob)
            del prob
        dense_prob, _, figures = _run_mode(inferers["dense"], image, network, device, amp)
        runs["dense"].append(figures)
        if outside and last:
            outside_by_run["dense"] = outside(dense_prob)
        n_voxels = int(region.sum())
        if n_voxels:
            max_diff = max(max_diff, float((dense_prob[0][:, region].as_tensor() - gf_values).abs().max()))
        del gf_values
        logger.info("repeat %d/%d done", repeat + 1, repeats)
    agreement = {"voxels": n_voxels, "max_abs_diff": max_diff if n_voxels else None}
    return runs, agreement, dense_prob, gf_prob, outside_by_run


def _glance_cost(pipeline: ScreeningPipeline, image: torch.Tensor, modes: list[str], repeats: int) -> dict:
    """Glance alone (every window scored) in each mode: median seconds and peak memory."""
    params = {key: pipeline.get(key) for key in INFERER_KEYS if key != "glance_mode"}
    out = {}
    for mode in modes:
        inferer = GlanceFocusInferer(pipeline.glance, threshold=0.0, **{**params, "glance_mode": mode})
        padded, tiling = inferer.pad(image)
        seconds = []
        with PeakMemory(pipeline.device) as memory, torch.inference_mode():
            for _ in range(repeats + 1):  # the first run warms up
                with torch.autocast(pipeline.device.type, enabled=pipeline.amp):
                    seconds.append(inferer.select(padded, tiling).glance_seconds)
        out[mode] = {"glance_seconds": statistics.median(seconds[1:]), **memory.as_dict()}
    return out


def _postprocess(pipeline: ScreeningPipeline, data: dict, prob: MetaTensor) -> dict:
    """The bundle's postprocessing of one benchmark prediction, as inference runs it on the preprocessed scan."""
    pred = GlanceFocusInferer.prediction(prob[0].as_tensor(), stats_of(prob), data["image"])
    return pipeline.postprocessing_core({**data, "pred": pred})


def _outside_timer(pipeline: ScreeningPipeline, data: dict) -> Callable[[MetaTensor], dict]:
    """``_outside_networks`` for each run's prediction; before the first, the postprocessing runs once untimed, so
    that no run pays its one-off start-up costs (as ``_warm_up`` does for the networks)."""
    warm = False

    def timed(prob: MetaTensor) -> dict:
        nonlocal warm
        if not warm:
            _postprocess(pipeline, data, prob)
            warm = True
        return _outside_networks(pipeline, data, prob)

    return timed


def _outside_networks(pipeline: ScreeningPipeline, data: dict, prob: MetaTensor) -> dict:
    """Seconds of the postprocessing (body bound, inversion, connected components, findings) of one prediction and
    of writing the outputs (into a temporary folder)."""
    t0 = time.perf_counter()
    out = _postprocess(pipeline, data, prob)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        SaveScanOutputsd(keys="pred", output_dir=folder)({**out, "id": "benchmark"})
    return {"postprocessing_seconds": t1 - t0, "writing_seconds": time.perf_counter() - t1}


def _accuracy(pipeline: ScreeningPipeline, data: dict, predictions: dict[str, MetaTensor], label: str) -> dict:
    """DSC of each mode's reported lesions (the lesion map after the whole postprocessing, on the scan's grid)
    against a reference mask on that grid, and what Glance-Focus loses against dense, in DSC points."""
    reference = np.asarray(LoadImage(image_only=True, reader="ITKReader")(label)) > 0
    out = {"label": label}
    for name, prob in predictions.items():
        lesion_map = np.asarray(_postprocess(pipeline, data, prob)["pred"][0]) > 0
        if lesion_map.shape != reference.shape:
            raise SystemExit(f"--label {label}: shape {reference.shape}, the scan's {lesion_map.shape}.")
        out[f"{name}_dsc"] = dice(lesion_map, reference)
    out["dsc_loss_points"] = 100 * (out["dense_dsc"] - out["glance_focus_dsc"])
    return out


def _environment(device: torch.device, amp: bool) -> dict:
    return {
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "amp": amp,
    }


def _compute_floor(dense: dict, gf: dict) -> dict:
    """method.md section 4: Glance's cost per window over Focus's, plus the keep fraction, is the fraction of dense
    compute Glance-Focus cannot go below."""
    n = dense["windows_total"]
    glance_per_window, focus_per_window = gf["glance_seconds"] / n, dense["focus_seconds"] / n
    ratio = glance_per_window / focus_per_window
    return {
        "glance_per_window_s": glance_per_window,
        "focus_per_window_s": focus_per_window,
        "glance_focus_ratio": ratio,
        "keep_fraction": gf["keep_fraction"],
        "fraction_of_dense": ratio + gf["keep_fraction"],
    }


def _preprocess(args: argparse.Namespace, pipeline: ScreeningPipeline) -> tuple[dict, dict, float, float]:
    """The scan preprocessed twice: seconds of the first call (with the process's one-off start-up costs: reader
    libraries, first allocations) and of the second, which the end-to-end ratios use, as a screening process pays
    it for every scan after its first."""
    items = list_inputs(args.input)
    if len(items) != 1:
        raise SystemExit(f"--input must be one scan, found {len(items)} under {args.input}.")
    preprocessing = pipeline.preprocessing
    if args.axial_range_mm:
        preprocessing = with_axial_crop(preprocessing)
        items[0]["axial_range_mm"] = list(args.axial_range_mm)
    t0 = time.perf_counter()
    preprocessing(dict(items[0]))
    t1 = time.perf_counter()
    data = preprocessing(dict(items[0]))
    return items[0], data, time.perf_counter() - t1, t1 - t0


def _sweep(runs: dict, dense: dict, outside: dict[str, float]) -> list[dict]:
    """Per Glance-Focus run: keep fraction, seconds, and the speed-up over dense, networks only and end to end
    (``outside``: each run's seconds outside the networks, by run name)."""
    rows = []
    for name in [n for n in runs if n.startswith("glance_focus")]:
        gf = _summarise(runs[name])
        rows.append(
            {
                "run": name,
                "keep_fraction": gf["keep_fraction"],
                "glance_seconds": gf["glance_seconds"],
                "focus_seconds": gf["focus_seconds"],
                "total_seconds": gf["total_seconds"],
                "speedup": dense["total_seconds"] / gf["total_seconds"],
                "outside_seconds": outside[name],
                "speedup_end_to_end": (dense["total_seconds"] + outside["dense"])
                / (gf["total_seconds"] + outside[name]),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; prints the report, writes the JSON if asked, and returns every figure."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1.")
    configs = args.config_file or list(DEFAULT_CONFIGS)
    pipeline = build_pipeline(configs, {"input_path": str(args.input), "allow_untrained": args.allow_untrained})
    threshold, source = _selection(args, pipeline)
    inferers = _inferers(args, pipeline, threshold)
    item, data, preprocessing_seconds, first_preprocessing_seconds = _preprocess(args, pipeline)
    meta_image = data["image"]
    image = meta_image.as_tensor()[None].to(pipeline.device)
    if inferers["dense"].tile(image.shape[2:]).image_size != tuple(image.shape[2:]):
        raise RuntimeError("preprocessing must pad the scan to at least roi_size (SpatialPadd), so windows index it.")
    timed_outside = None
    if args.end_to_end and not args.axial_range_mm:  # a slab has no inversion to the whole scan's grid
        timed_outside = _outside_timer(pipeline, data)
    runs, agreement, dense_prob, gf_prob, post = _measure(
        inferers, image, pipeline, args.repeats, bool(args.label), timed_outside
    )
    dense, gf = _summarise(runs["dense"]), _summarise(runs["glance_focus"])
    outside_by_run = {name: {"preprocessing_seconds": preprocessing_seconds, **post.get(name, {})} for name in runs}
    accuracy = None
    if args.label:
        accuracy = _accuracy(pipeline, data, {"dense": dense_prob, "glance_focus": gf_prob}, args.label)
    del dense_prob, gf_prob
    glance_cost = _glance_cost(pipeline, image, args.glance_modes, args.repeats)
    for figures in glance_cost.values():
        figures["fraction_of_dense_focus"] = figures["glance_seconds"] / dense["focus_seconds"]
    results = {
        "environment": _environment(pipeline.device, pipeline.amp),
        "configs": configs,
        "weights": pipeline.weights,
        "scan": {
            "input": str(args.input),
            "axial_range_mm": args.axial_range_mm,
            "id": item["id"],
            "region": data.get("region"),
            "original_shape": [int(s) for s in meta_image.meta["spatial_shape"]],
            "original_spacing": [round(float(s), 4) for s in meta_image.meta["spacing"]],
            "preprocessed_shape": list(image.shape[1:]),
            "pixdim": pipeline.get("pixdim"),
        },
        "preprocessing_seconds": preprocessing_seconds,
        "first_preprocessing_seconds": first_preprocessing_seconds,
        "outside_networks": outside_by_run["dense"],
        "outside_networks_by_run": outside_by_run,
        "inferer": {key: pipeline.get(key) for key in INFERER_KEYS},
        "selection": {
            "keep_fraction": args.keep_fraction[0] if args.keep_fraction else None,
            "keep_fractions": args.keep_fraction,
            "threshold": threshold,
            "source": source,
        },
        "repeats": args.repeats,
        "dense": dense,
        "glance_focus": gf,
        "runs": runs,
        "speedup": dense["total_seconds"] / gf["total_seconds"],
        "sweep": _sweep(runs, dense, {name: sum(figures.values()) for name, figures in outside_by_run.items()}),
        "glance_cost": glance_cost,
        "compute_floor": _compute_floor(dense, gf),
        "agreement": agreement,
        "accuracy": accuracy,
    }
    print_and_record(report(results), results, args.output)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    main()
