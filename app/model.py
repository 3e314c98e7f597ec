"""The bundle behind the app: configs, networks, weights, preprocessing and postprocessing from the model path.

The model path (``-m`` / ``HOLOSCAN_MODEL_PATH``) is a bundle folder: ``configs/inference.yaml`` and
``models/model.pt``, or a folder holding exactly one such bundle folder (what ``monai-deploy package --models`` makes of
a bundle folder with files at its top: ``/opt/holoscan/models/<name>/``). An optional ``configs/app_configs.json``
lists the configs to merge, in order (for the CPU-size weights: ``["inference.yaml", "small.yaml"]``); without it the
app reads ``inference.yaml`` alone. ``bundle.pipeline.build_pipeline`` parses them by config id, so the app runs the
bundle's own objects (``preprocessing_core``, ``inferer``, ``postprocessing_core``), not copies of them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bundle.checkpoint import WeightsError
from bundle.pipeline import ScreeningPipeline, build_pipeline

__all__ = [
    "ALLOW_UNTRAINED_ENV",
    "BundleModel",
    "ModelPathError",
    "WeightsError",
    "allow_untrained_from_env",
    "bundle_root_of",
    "load_bundle",
]

logger = logging.getLogger("gf_screen.app.model")

ALLOW_UNTRAINED_ENV = "GF_SCREEN_ALLOW_UNTRAINED"
"""Set to 1 to run without ``models/model.pt`` (random weights, every output labelled untrained): tests and demos."""

CONFIG_LIST = "app_configs.json"


class ModelPathError(ValueError):
    """The model path is not a usable bundle folder."""


def allow_untrained_from_env() -> bool:
    """The explicit untrained mode: only the values 1/true/yes switch it on, anything else keeps it off."""
    return os.environ.get(ALLOW_UNTRAINED_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass
class BundleModel:
    """The bundle behind one app run: its folder, configs, version and the screening pipeline they build."""

    root: Path
    config_files: list[str]
    version: str
    pipeline: ScreeningPipeline


def bundle_root_of(model_path: str | os.PathLike) -> Path:
    """The bundle folder at ``model_path``: the path itself if it has ``configs/``, else its only sub-folder that has.

    A MAP copies a ``--models`` folder with files at its top to ``/opt/holoscan/models/<name>/`` while
    ``HOLOSCAN_MODEL_PATH`` stays ``/opt/holoscan/models``; both layouts must load.
    """
    root = Path(model_path).resolve()
    if not root.is_dir():
        raise ModelPathError(f"model path {root} is not a bundle folder (configs/ + models/model.pt).")
    if (root / "configs").is_dir():
        return root
    inner = [p for p in sorted(root.iterdir()) if (p / "configs").is_dir()]
    if len(inner) != 1:
        found = "none" if not inner else ", ".join(p.name for p in inner)
        raise ModelPathError(f"model path {root}: no configs/ folder, and not one bundle folder inside it ({found}).")
    return inner[0]


def config_files_of(root: Path) -> list[Path]:
    """The configs to merge: ``configs/app_configs.json`` if present, else ``configs/inference.yaml``."""
    configs = root / "configs"
    listing = configs / CONFIG_LIST
    if listing.is_file():
        try:
            names = json.loads(listing.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ModelPathError(f"{listing}: not valid JSON ({e}).") from e
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ModelPathError(f"{listing}: expected a non-empty JSON list of config file names.")
    else:
        names = ["inference.yaml"]
    files = [configs / n for n in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ModelPathError(f"model path {root}: missing bundle config(s) {missing}.")
    return files


def bundle_version(root: Path) -> str:
    """The bundle's version from ``configs/metadata.json`` (written into the DICOM outputs), or "unknown"."""
    meta = root / "configs" / "metadata.json"
    try:
        return str(json.loads(meta.read_text(encoding="utf-8")).get("version", "unknown"))
    except (OSError, json.JSONDecodeError):
        return "unknown"


def load_bundle(model_path: str | os.PathLike, allow_untrained: bool | None = None, device: str = "cpu") -> BundleModel:
    """Parse the bundle at ``model_path`` and load its weights (``weights_only=True``, via ``bundle.checkpoint``).

    Without ``models/model.pt`` this raises ``WeightsError`` unless the untrained mode is on (argument, or
    ``GF_SCREEN_ALLOW_UNTRAINED=1``).
    """
    root = bundle_root_of(model_path)
    files = config_files_of(root)
    if allow_untrained is None:
        allow_untrained = allow_untrained_from_env()
    ckpt = root / "models" / "model.pt"
    if not allow_untrained and not ckpt.is_file():  # the bundle's own message names its flag, not the app's
        raise WeightsError(
            f"no weights at {ckpt}. Put the trained model.pt there, or set {ALLOW_UNTRAINED_ENV}=1 to run with random "
            "weights (every output is then labelled untrained; its findings are not results)."
        )
    pipeline = build_pipeline(
        files,
        {
            "bundle_root": str(root),
            "ckpt_path": str(ckpt),
            "allow_untrained": bool(allow_untrained),
            "device": f"$torch.device('{device}')",
            "inferer#progress": False,
        },
    )
    model = BundleModel(
        root=root, config_files=[f.name for f in files], version=bundle_version(root), pipeline=pipeline
    )
    logger.info(
        "Bundle %s (configs %s), weights %s, device %s",
        root,
        model.config_files,
        pipeline.weights.get("status"),
        pipeline.device,
    )
    return model
