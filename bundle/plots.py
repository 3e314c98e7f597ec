"""Figures of measured results for the model card, drawn from the records the bundle's commands write.

    python -m bundle.plots froc runs/eval_new_test/evaluation.json docs/images/froc_test.png --label new \
        --compare runs/eval_old_test/evaluation.json --compare_label old
    python -m bundle.plots lesion_types runs/eval_new_test/evaluation.json docs/images/lesion_types_test.png
    python -m bundle.plots key_slices runs/eval_new_test/evaluation.json docs/images/key_slices_test.png
    python -m bundle.plots training runs/model9 docs/images/training_model9.png

``froc``: lesion sensitivity against false positives per scan (``evaluation.json``'s ``froc``, computed by
``bundle.metrics.froc``). ``lesion_types``: DSC, NSD and sensitivity per lesion type (``by_lesion_type``).
``key_slices``: each labelled test lesion's largest axial slice, reference in green, prediction in red.
``training``: the logged GRL terms and validation metrics of a training run (its TensorBoard event files).
Needs matplotlib (the ``plots`` extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from functools import partial
from pathlib import Path

import numpy as np
import torch
from bundle.writers import CaseOutputs, atomic_path

__all__ = ["froc_png", "plot_froc", "plot_lesion_types", "plot_key_slices", "plot_training", "TRAINING_PANELS"]

TRAINING_PANELS = (
    ("Focus segmentation loss (DiceCE)", ("seg",)),
    ("Glance: mean p on lesion / lesion-free crops", ("p_lesion", "p_background")),
    ("Glance class-balanced CE; hit rate", ("ce", "glance_ce", "hit_rate")),
    ("validation (tuning split)", ("val_mean_dice", "keep_fraction", "glance_sensitivity", "glance_specificity")),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, output: str | Path) -> None:
    with atomic_path(Path(output), ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_froc(reports: list[tuple[str, dict]], output: str | Path, title: str = "FROC") -> None:
    """One FROC curve per (label, evaluation report), log-scaled false positives per scan."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, report in reports:
        points = report.get("froc") or []
        if not points:
            continue
        ax.plot([p["fp_per_scan"] for p in points], [p["sensitivity"] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("lesion sensitivity")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend()
    _save(fig, output)
    plt.close(fig)


def froc_png(report: dict, output: str | Path, label: str = "GF-Screen") -> Path | None:
    """The FROC curve of an evaluation report as ``output`` (what ``run evaluating`` writes beside
    evaluation.json); without matplotlib (the ``plots`` extra) one line says so and nothing is drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logging.getLogger("gf_screen.evaluation").warning(
            "No %s: matplotlib is not installed (pip install -e '.[plots]').", output
        )
        return None
    plot_froc([(label, report)], output)
    return Path(output)


def plot_lesion_types(report: dict, output: str | Path, title: str = "by lesion type") -> None:
    """Grouped bars of DSC, NSD and sensitivity per lesion type of an evaluation report."""
    plt = _pyplot()
    groups = {k: v for k, v in report["by_lesion_type"].items() if k not in (None, "None")}
    names = sorted(groups)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 2), 4))
    for offset, (metric, label) in enumerate((("dsc", "DSC"), ("nsd", "NSD"), ("sensitivity", "sensitivity"))):
        values = [groups[n].get(metric) or 0.0 for n in names]
        ax.bar([i + (offset - 1) * 0.27 for i in range(len(names))], values, width=0.27, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n({groups[n]['n_scans']} scans)" for n in names])
    ax.set_ylim(0, 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title)
    ax.legend()
    _save(fig, output)
    plt.close(fig)


def plot_key_slices(report: dict, output: str | Path, columns: int = 4, size: int = 260) -> None:
    """The axial slice where each labelled lesion of an evaluation report is largest: reference outline in green,
    prediction in red, in the region's window, titled with the case, found or missed, and DSC."""
    from bundle.keyslice import render_key_slice
    from bundle.transforms import region_window
    from monai.transforms import LoadImage, Orientation
    from PIL import Image, ImageDraw

    def ras(path: str, reader: str | None = "ITKReader", keep=None):
        image = LoadImage(image_only=True, ensure_channel_first=True, reader=reader)(path)
        if keep is not None:
            image = keep(image)
        return np.asarray(Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)[0])

    min_score = report["settings"].get("min_score")
    tiles = []
    for case in (c for c in report["per_case"] if c["gt_voxels"]):
        label = ras(case["label"]) > 0
        keep = None
        if min_score is not None:  # what the operating point reports, not every written lesion
            keep = partial(_at_operating_point, prediction=case["prediction"], min_score=min_score,
                           score=report["settings"].get("lesion_score"))  # fmt: skip
        pred = ras(case["prediction"], None, keep) > 0
        image = ras(case["image"])
        index = int(label.sum(axis=(0, 1)).argmax())
        window = region_window(case.get("region") or "abdomen")
        rgb = render_key_slice(image, pred, index, window)
        truth = render_key_slice(np.zeros_like(image), label, index, (0.0, 1.0))
        rgb[(truth[..., 0] > 0) & (truth[..., 1] < 100)] = (40, 220, 40)  # the reference outline, drawn over
        tile = Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.BILINEAR)
        state = "found" if case["found"] == case["gt_lesions"] else f"missed {case['missed']}/{case['gt_lesions']}"
        ImageDraw.Draw(tile).text((4, 4), f"{case['id']}: {state}\nDSC {case['dsc']:.2f}", fill=(255, 255, 0))
        tiles.append(tile)
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (size * columns, size * rows))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * size, (i // columns) * size))
    with atomic_path(Path(output), ".png") as tmp:
        sheet.save(tmp, format="PNG")


def _at_operating_point(image, prediction: str, min_score: float, score: str | None):
    """The written lesion map (channel first, on its own grid) without the lesions whose findings score (``score``,
    else the findings' own) is below ``min_score``."""
    case = Path(prediction).parent  # <output_dir>/<case_id>/, the layout of bundle.writers.CaseOutputs
    findings = json.loads(CaseOutputs(case.parent, case.name).findings.read_text())
    score = score or findings.get("lesion_score", "max_probability")
    kept = [les["number"] for les in findings["lesions"] if les[score] >= min_score]
    image = image.clone()
    image[0] = torch.from_numpy(np.isin(np.asarray(image[0]), kept).astype(np.float32))
    return image


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files in ``run_dir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def plot_training(run_dir: str | Path, output: str | Path, smooth: int = 14) -> None:
    """The curves of ``TRAINING_PANELS`` that the run logged (iteration terms as a running mean over ``smooth``
    iterations); a Glance stage logs only its CE, so it gets one panel."""
    plt = _pyplot()
    scalars = read_scalars(run_dir)
    panels = [(title, names) for title, names in TRAINING_PANELS if any(scalars.get(name) for name in names)]
    if not panels:
        raise SystemExit(f"{run_dir}: no logged scalar of the training panels")
    rows, columns = -(-len(panels) // 2), min(len(panels), 2)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.5 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, names) in zip(axes.ravel(), panels):
        for name in names:
            series = scalars.get(name)
            if not series:
                continue
            series = [(step, value) for step, value in sorted(series) if math.isfinite(value)]  # nan: no such crops
            if not series:
                continue
            steps, values = zip(*series)
            if len(values) > smooth:
                values = [sum(values[max(0, i - smooth + 1) : i + 1]) / len(values[max(0, i - smooth + 1) : i + 1])
                          for i in range(len(values))]  # fmt: skip
            ax.plot(steps, values, marker="o" if len(values) < 10 else None, label=name)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, output)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bundle.plots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("kind", choices=("froc", "lesion_types", "key_slices", "training"))
    parser.add_argument("source", type=Path, help="evaluation.json (froc, lesion_types) or a training run folder")
    parser.add_argument("output", type=Path, help="PNG to write")
    parser.add_argument("--label", default="model")
    parser.add_argument("--compare", type=Path, help="froc: a second evaluation.json drawn beside the first")
    parser.add_argument("--compare_label", default="other")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    if args.kind == "training":
        plot_training(args.source, args.output)
    else:
        report = json.loads(args.source.read_text())
        if args.kind == "froc":
            reports = [(args.label, report)]
            if args.compare:
                reports.append((args.compare_label, json.loads(args.compare.read_text())))
            plot_froc(reports, args.output, args.title or "FROC")
        elif args.kind == "key_slices":
            plot_key_slices(report, args.output)
        else:
            plot_lesion_types(report, args.output, args.title or "by lesion type")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
