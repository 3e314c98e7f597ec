"""One screening pipeline, built from the bundle configs by config id.

The configs declare every piece once: ``prepare`` (seed, then ``weights``: both networks' weights loaded with
``weights_only=True``; ``setup`` claims the output folder before it, for the runs that write there), ``preprocessing``
(a scan path in) and its ``preprocessing_core`` (a loaded volume in), ``inferer``, ``postprocessing_core`` (lesion map
and findings on the scan's grid) and ``save`` (the writer). ``python -m monai.bundle run`` runs them through the
config's ``evaluator``; the Deploy app, calibration and the benchmark get them from ``build_pipeline``, which reads the
same ids in the same order, so all four screen alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from bundle.checkpoint import WeightsError
from bundle.inferer import GlanceFocusInferer
from monai.bundle import ConfigParser
from monai.data import decollate_batch
from monai.transforms import Compose

__all__ = ["ScreeningPipeline", "build_pipeline"]


@dataclass
class ScreeningPipeline:
    """The parsed pieces of a screening config, networks in eval mode and weights loaded."""

    parser: ConfigParser
    device: torch.device
    amp: bool
    glance: torch.nn.Module
    focus: torch.nn.Module
    weights: dict
    inferer: GlanceFocusInferer
    preprocessing: Compose
    preprocessing_core: Compose
    postprocessing_core: Compose

    def get(self, config_id: str):
        """Any other parsed config value (``roi_size``, ``lesion_score``, ``save``...)."""
        return self.parser.get_parsed_content(config_id)

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """The inferer on one preprocessed volume (C, *spatial): the probabilities with their metadata and
        Glance-Focus statistics, as the config's evaluator hands them to the postprocessing."""
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
            pred = self.inferer(image[None].to(self.device), self.focus)
        return decollate_batch(pred)[0].to(image.device)

    def screen(self, item: Mapping) -> dict:
        """Screen one datalist item in memory: the data with ``pred`` (the lesion map) and ``findings``."""
        data = self.preprocessing(dict(item))
        data["pred"] = self.predict(data["image"])
        return self.postprocessing_core(data)


def _parsed(parser: ConfigParser, config_id: str):
    """``get_parsed_content``, re-raising a ``WeightsError`` plainly (the parser wraps what its expressions raise)."""
    try:
        return parser.get_parsed_content(config_id)
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, WeightsError):
            cause = cause.__cause__ or cause.__context__
        raise (cause or e) from None


def build_pipeline(
    config_files: Sequence[str | os.PathLike], overrides: Mapping[str, object] | None = None
) -> ScreeningPipeline:
    """Parse ``config_files`` (merged in order) with ``overrides``, run their ``prepare`` (seed, weights) and
    return the pieces. No output folder is claimed: the callers screen in memory and write where they were told.
    Raises ``WeightsError`` when the weights are missing (unless ``allow_untrained``) or unusable.
    """
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    parser.update(dict(overrides or {}))
    _parsed(parser, "prepare")
    weights = _parsed(parser, "weights")
    return ScreeningPipeline(
        parser=parser,
        device=torch.device(parser.get_parsed_content("device")),
        amp=bool(parser.get_parsed_content("amp")),
        glance=parser.get_parsed_content("glance").eval(),
        focus=parser.get_parsed_content("network").eval(),
        weights=weights,
        inferer=parser.get_parsed_content("inferer"),
        preprocessing=parser.get_parsed_content("preprocessing"),
        preprocessing_core=parser.get_parsed_content("preprocessing_core"),
        postprocessing_core=parser.get_parsed_content("postprocessing_core"),
    )
