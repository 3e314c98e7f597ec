"""The cheap levers of CPU (and GPU) inference, measured on real windows of one scan, each against the same baseline.

    python -m bundle.levers --input ../shared/data/tcia_pancreatic_ct_cbct_seg_full_series/dicom \\
        --config_file configs/inference.yaml --config_file configs/small.yaml --windows 8 --output levers.json

For Glance and for Focus it times the networks on ``--windows`` windows of the preprocessed scan (the config's own
preprocessing and tiling, the middle windows of the scan), in eval mode, with each lever alone: ``torch.no_grad``
instead of ``torch.inference_mode``, batch sizes, one thread instead of all, channels-last 3D memory format,
bfloat16 autocast, and ``torch.compile`` (its compile time reported apart). Each lever is reported as the ratio of
its seconds per window to the baseline's (below 1 is faster) and the largest absolute difference of its
probabilities from the baseline's, so that a lever is kept only where it helps without changing results beyond a
stated tolerance (``--tolerance``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from bundle.data import list_inputs
from bundle.networks import select_probability
from bundle.pipeline import ScreeningPipeline, build_pipeline
from bundle.writers import print_and_record

__all__ = ["LEVERS", "main", "measure_lever"]

logger = logging.getLogger("gf_screen.levers")


def _probabilities(name: str, out: torch.Tensor) -> torch.Tensor:
    return select_probability(out) if name == "glance" else torch.softmax(out.float(), dim=1)[:, 1]


def measure_lever(
    net: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int,
    context: Callable[[], contextlib.AbstractContextManager],
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    repeats: int = 3,
) -> tuple[float, torch.Tensor]:
    """Median seconds per window over ``repeats`` passes (after one warm-up pass) and the outputs of the last."""
    seconds = []
    for _ in range(repeats + 1):
        outputs = []
        t0 = time.perf_counter()
        with context():
            for start in range(0, len(windows), batch_size):
                outputs.append(net(prepare(windows[start : start + batch_size])).float())
        seconds.append((time.perf_counter() - t0) / len(windows))
    return statistics.median(seconds[1:]), torch.cat(outputs)


def _threads(n: int) -> Callable[[], contextlib.AbstractContextManager]:
    @contextlib.contextmanager
    def context():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(before)

    return context


def _autocast(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    @contextlib.contextmanager
    def context():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            yield

    return context


LEVERS = ("no_grad", "batch_1", "batch_4", "one_thread", "channels_last_3d", "bfloat16_autocast", "torch_compile")


def _lever(name: str, net: torch.nn.Module, batch: int, device: torch.device) -> dict:
    """What lever ``name`` changes: the network, the batch size, the context or the input's memory format."""
    base = {"net": net, "batch_size": batch, "context": torch.inference_mode, "prepare": lambda x: x}
    if name == "no_grad":
        return base | {"context": torch.no_grad}
    if name.startswith("batch_"):
        return base | {"batch_size": int(name.split("_")[1])}
    if name == "one_thread":
        return base | {"context": _threads(1)}
    if name == "channels_last_3d":
        return base | {
            "net": net.to(memory_format=torch.channels_last_3d),
            "prepare": lambda x: x.contiguous(memory_format=torch.channels_last_3d),
        }
    if name == "bfloat16_autocast":
        return base | {"context": _autocast(device)}
    if name == "torch_compile":
        return base | {"net": torch.compile(net)}
    raise ValueError(f"unknown lever {name!r}; known: {LEVERS}")


def _windows(pipeline: ScreeningPipeline, scan: str, count: int) -> torch.Tensor:
    """``count`` windows from the middle of the scan's tiling (the body, not the air around it)."""
    (item,) = list_inputs(scan)
    image = pipeline.preprocessing(item)["image"].as_tensor()[None]
    padded, tiling = pipeline.inferer.pad(image)
    middle = len(tiling.slices) // 2
    chosen = tiling.slices[max(0, middle - count // 2) : max(0, middle - count // 2) + count]
    return torch.cat([padded[(slice(None), slice(None), *s)] for s in chosen]).to(pipeline.device)


def _measure_network(
    name: str, net: torch.nn.Module, windows: torch.Tensor, batch: int, device, levers, repeats: int
) -> dict:
    base_seconds, base_out = measure_lever(net, windows, batch, torch.inference_mode, repeats=repeats)
    base_prob = _probabilities(name, base_out)
    rows = {"inference_mode": {"seconds_per_window": base_seconds, "ratio": 1.0, "max_abs_diff": 0.0}}
    for lever in levers:
        spec = _lever(lever, net, batch, device)
        t0 = time.perf_counter()
        try:
            seconds, out = measure_lever(
                spec["net"], windows, spec["batch_size"], spec["context"], spec["prepare"], repeats=repeats
            )
        except Exception as e:  # a lever this machine cannot use (e.g. torch.compile without a compiler)
            rows[lever] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        finally:
            net.to(memory_format=torch.contiguous_format)
        rows[lever] = {
            "seconds_per_window": seconds,
            "ratio": seconds / base_seconds,
            "max_abs_diff": float((_probabilities(name, out) - base_prob).abs().max()),
            "wall_seconds_including_warm_up": time.perf_counter() - t0,
        }
        logger.info("%s %s: %.3f s/window (%.2f of baseline)", name, lever, seconds, seconds / base_seconds)
    return rows


def _table(results: dict, tolerance: float) -> str:
    lines = [f"{'network':<8}{'lever':<22}{'s/window':>10}{'ratio':>8}{'max |diff|':>12}  verdict"]
    for name, rows in results["networks"].items():
        for lever, r in rows.items():
            if "error" in r:
                lines.append(f"{name:<8}{lever:<22}{'':>10}{'':>8}{'':>12}  not available: {r['error']}")
                continue
            verdict = "baseline" if lever == "inference_mode" else (
                "keep" if r["ratio"] < 0.95 and r["max_abs_diff"] <= tolerance else "no gain" if r["ratio"] >= 0.95
                else "changes results")  # fmt: skip
            lines.append(
                f"{name:<8}{lever:<22}{r['seconds_per_window']:>10.3f}{r['ratio']:>8.2f}{r['max_abs_diff']:>12.2e}  "
                f"{verdict}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bundle.levers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--input", required=True, help="one scan: a NIfTI/NRRD/MHA file or a DICOM series folder")
    parser.add_argument("--config_file", action="append", help="bundle configs, merged in order")
    parser.add_argument("--windows", type=int, default=8, help="windows to time each lever on (default 8)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed passes after the warm-up pass; the median counts (default 3)"
    )
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS)
    parser.add_argument("--networks", nargs="+", default=["glance", "focus"], choices=("glance", "focus"))
    parser.add_argument(
        "--tolerance", type=float, default=1e-2, help="largest probability change a kept lever may make"
    )
    parser.add_argument("--allow_untrained", action="store_true")
    parser.add_argument("--output", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    configs = args.config_file or ["configs/inference.yaml"]
    pipeline = build_pipeline(configs, {"allow_untrained": args.allow_untrained, "inferer#progress": False})
    windows = _windows(pipeline, args.input, args.windows)
    results = {
        "configs": configs,
        "input": args.input,
        "windows": len(windows),
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(pipeline.device),
        "tolerance": args.tolerance,
        "networks": {
            name: _measure_network(
                name, net, windows, pipeline.get(f"{name}_batch_size"), pipeline.device, args.levers, args.repeats
            )
            for name, net in (("glance", pipeline.glance), ("focus", pipeline.focus))
            if name in args.networks
        },
    }
    print_and_record(_table(results, args.tolerance), results, args.output)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    main()
