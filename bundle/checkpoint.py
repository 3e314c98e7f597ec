"""Loading the Glance and Focus weights safely, and saying plainly when there are none."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

__all__ = ["WeightsError", "load_weights", "read_weights", "weights_sha256"]

logger = logging.getLogger("gf_screen.checkpoint")


class WeightsError(RuntimeError):
    """The weights file is missing, unreadable or does not fit the configured networks."""


def weights_sha256(path: str | Path) -> str:
    """The file's sha256: how findings, calibration and training records name the weights they used."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_weights(path: str | Path) -> dict:
    """The ``{"glance": state_dict, "focus": state_dict}`` in ``path``, read with ``weights_only=True``.

    Raises ``WeightsError`` for an unreadable or unsafe file, another structure, or a tensor holding NaN or infinity.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for missing, corrupt or unsafe pickles
        raise WeightsError(f"cannot read weights {path}: {e}") from e
    if not isinstance(state, dict) or not {"glance", "focus"} <= state.keys():
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise WeightsError(f"{path} must hold a dict with 'glance' and 'focus' state dicts, found {found}.")
    for name in ("glance", "focus"):
        broken = [
            k for k, v in state[name].items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()
        ]
        if broken:
            raise WeightsError(f"{path}: {len(broken)} {name} tensor(s) hold NaN or infinity (first: {broken[0]}).")
    return state


def load_weights(
    path: str | Path, glance: torch.nn.Module, focus: torch.nn.Module, allow_untrained: bool = False
) -> dict:
    """Load ``{"glance": state_dict, "focus": state_dict}`` from ``path`` with ``weights_only=True``.

    Returns the weights' status for the findings. A missing file is an error unless ``allow_untrained``; then the
    networks keep their seeded random initialisation and every output is labelled untrained.
    """
    path = Path(path)
    if not path.is_file():
        if not allow_untrained:
            raise WeightsError(
                f"no weights at {path}. Train them (configs/train.yaml) or pass --allow_untrained true to run the "
                "pipeline with random weights (its findings are then meaningless and labelled so)."
            )
        logger.warning("No weights at %s: the networks are UNTRAINED; findings are not results.", path)
        return {"status": "untrained", "file": None, "note": "random initialisation; these findings are not results"}
    state = read_weights(path)
    for name, net in (("glance", glance), ("focus", focus)):
        try:
            net.load_state_dict(state[name])
        except RuntimeError as e:
            raise WeightsError(f"{path}: the {name} weights do not fit the configured {name} network: {e}") from e
    digest = weights_sha256(path)
    logger.info("Loaded weights %s (sha256 %s)", path, digest[:12])
    return {"status": "trained", "file": str(path), "sha256": digest}
