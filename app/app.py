"""GF-Screen as a MONAI Deploy application: DICOM CT in; DICOM SEG, DICOM SR (TID 1500) and findings JSON out.

Operator graph (each stage its own operator, timed, replaceable)::

    DICOM loader -> CT series selector -> series to volume -> preprocessing -> Glance selector
        -> Focus segmenter -> SEG writer -> SR writer -> findings writer (atomic publish)

The stages call the bundle's code (``bundle.inferer.GlanceFocusInferer.pad/select/segment/crop``, the config's
``preprocessing_core`` and ``postprocessing_core``, built by ``bundle.pipeline.build_pipeline`` from the bundle folder
given as the model path): one implementation, two front doors (``python -m monai.bundle run`` and this app). A NIfTI
file or folder of NIfTI files as input takes the research path: NIfTI loader -> the same stages -> findings JSON and
NIfTI lesion map.

Run: ``python app -i <dicom folder> -o <output> -m <bundle folder>`` (or HOLOSCAN_INPUT_PATH, HOLOSCAN_OUTPUT_PATH,
HOLOSCAN_MODEL_PATH). Exit statuses: docs/deploy.md. Measured on a 2-core CPU with the small config: the model card,
docs/README.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from bundle.screening import output_folder_problem
from bundle.validation import is_dicom_file
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, init_app_context

from app.cases import ExitStatus, RunReport
from app.dicom_outputs import device_uid
from app.model import BundleModel, ModelPathError, WeightsError, load_bundle
from app.operators import (
    CheckedDICOMLoaderOperator,
    CTSeriesSelectorOperator,
    FocusSegmenterOperator,
    GlanceSelectorOperator,
    NiftiCasesOperator,
    PreprocessOperator,
    SeriesToVolumeOperator,
    is_nifti,
)
from app.writers import FindingsWriterOperator, SegWriterOperator, SRWriterOperator

__all__ = ["GFScreenApp", "main", "is_nifti_input"]

logger = logging.getLogger("gf_screen.app")


def is_nifti_input(path: Path) -> bool:
    """NIfTI research path: a NIfTI file, or a folder with NIfTI files and no DICOM file anywhere below it."""
    if path.is_file():
        return is_nifti(path)
    if any(is_dicom_file(p) for p in path.rglob("*") if p.is_file()):
        return False
    return any(is_nifti(p) for p in path.iterdir())


class GFScreenApp(Application):
    """Glance-Focus lesion screening of CT; the bundle (configs + weights) is the model path."""

    def __init__(self, app_context: AppContext, model: BundleModel, report: RunReport | None = None) -> None:
        self.app_context = app_context
        self.model = model
        self.report = report or RunReport()
        super().__init__([sys.argv[0]])

    def compose(self) -> None:
        ctx, model, report = self.app_context, self.model, self.report
        input_path, output = Path(ctx.input_path), Path(ctx.output_path)
        common = {"report": report}
        if is_nifti_input(input_path):
            source = NiftiCasesOperator(
                self, CountCondition(self, 1), input_path=input_path, name="nifti_loader", **common
            )
        else:
            loader = CheckedDICOMLoaderOperator(
                self, CountCondition(self, 1), input_folder=input_path, name="dicom_loader", **common
            )
            selector = CTSeriesSelectorOperator(self, name="series_selector", **common)
            source = SeriesToVolumeOperator(self, name="series_to_volume", **common)
            self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(selector, source, {("cases", "cases")})
        chain = [
            source,
            PreprocessOperator(self, model=model, name="preprocessing", **common),
            GlanceSelectorOperator(self, model=model, name="glance_selector", **common),
            FocusSegmenterOperator(self, model=model, name="focus_segmenter", **common),
            SegWriterOperator(self, output=output, version=model.version, name="seg_writer", **common),
            SRWriterOperator(self, output=output, version=model.version, name="sr_writer", **common),
            FindingsWriterOperator(self, output=output, version=model.version, name="findings_writer", **common),
        ]
        for upstream, downstream in zip(chain, chain[1:]):
            self.add_flow(upstream, downstream, {("cases", "cases")})


def main(argv: list[str] | None = None, report: RunReport | None = None) -> int:
    """Run the app once; return the exit status (docs/deploy.md): 0 all screened, 3 nothing screenable, 4 some."""
    argv = list(sys.argv if argv is None else argv)
    try:
        ctx = init_app_context(argv)
    except OSError as e:  # the SDK's argument parser creates -o (and a missing -w) itself, before the app sees them
        logger.error("Cannot create %s: %s (give a writable -o or HOLOSCAN_OUTPUT_PATH).", e.filename, e.strerror)
        return ExitStatus.USAGE
    input_path = Path(ctx.input_path)
    if not input_path.exists():
        logger.error("Input %s does not exist (give -i or HOLOSCAN_INPUT_PATH).", input_path)
        return ExitStatus.USAGE
    try:
        device_uid()
    except ValueError as e:
        logger.error("%s", e)
        return ExitStatus.USAGE
    problem = output_folder_problem(ctx.output_path)  # writable, and ours: before the model is loaded
    if problem is not None:
        logger.error("%s", problem[0])
        return problem[1]
    try:
        model = load_bundle(ctx.model_path)
    except (ModelPathError, WeightsError) as e:
        logger.error("Cannot load the model: %s", e)
        return ExitStatus.WEIGHTS
    report = report if report is not None else RunReport()
    GFScreenApp(ctx, model, report).run()
    for message in report.rejected_series:
        logger.info("Not screened: %s", message)
    for case in report.cases:
        if not case.ok:
            logger.info("Not screened: %s: %s", case.case_id, case.error)
    status = report.exit_status()
    screened = [c.case_id for c in report.cases if c.ok]
    logger.info("Screened %d case(s), %d output folder(s); exit status %d.", len(screened), len(report.written), status)
    return status
