"""The app's operators: each stage of the screening is one operator that calls the bundle's own code.

Every operator after the loader receives the list of ``Case`` objects on its ``cases`` port, works on the cases that
have not failed, times itself (per case and in total, into the ``RunReport``) and emits the list. A case that fails
keeps its reason and is skipped downstream, so one bad series never stops the others.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom
import torch
from bundle.data import IMAGE_SUFFIXES, case_id_of
from bundle.screening import refusal_of
from bundle.validation import (
    DERIVED_MODALITIES,
    InvalidScanError,
    check_image_file,
    check_series_headers,
    duplicate_slices,
    series_rank,
    sort_dicom_files,
)
from monai.data import MetaTensor
from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.operators import DICOMDataLoaderOperator, DICOMSeriesToVolumeOperator

from app.cases import Case, DicomSource, RunReport, Screened, Selection
from app.model import BundleModel

__all__ = [
    "StageOperator",
    "CheckedDICOMLoaderOperator",
    "CTSeriesSelectorOperator",
    "SeriesToVolumeOperator",
    "NiftiCasesOperator",
    "PreprocessOperator",
    "GlanceSelectorOperator",
    "FocusSegmenterOperator",
    "describe_series",
    "series_problem",
]

logger = logging.getLogger("gf_screen.app")


class StageOperator(Operator):
    """Base of the per-case stages: ``cases`` in, ``process(case)`` on each healthy case, timed, ``cases`` out.

    The one per-case loop of the app: a case whose stage raises is failed with the reason and skipped downstream,
    so one bad series never stops the others. A sink (``emits = False``) has no output port.
    """

    stage = "stage"
    emits = True

    def __init__(self, fragment: Fragment, *args, report: RunReport, **kwargs) -> None:
        self.report = report
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("cases")
        if self.emits:
            spec.output("cases")

    def compute(self, op_input, op_output, context) -> None:
        cases = op_input.receive("cases")
        t0 = time.perf_counter()
        for case in cases:
            if not case.ok:
                continue
            t = time.perf_counter()
            try:
                self.process(case)
            except Exception as e:  # one case's failure is reported and must not stop the others
                refusal = refusal_of(e)  # a refused scan (MONAI's Compose wraps it): its reason, no traceback
                if refusal is None:
                    logger.debug("%s: %s failed", case.case_id, self.stage, exc_info=True)
                case.fail(self.stage, str(refusal) if refusal is not None else f"{type(e).__name__}: {e}")
            case.timings[self.stage] = round(time.perf_counter() - t, 3)
        self.finish(cases)
        self.report.stage_seconds[self.stage] = round(time.perf_counter() - t0, 3)
        self.report.peak_rss_mib[self.stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB
        if self.emits:
            op_output.emit(cases, "cases")

    def process(self, case: Case) -> None:
        raise NotImplementedError

    def finish(self, cases: list[Case]) -> None:
        """After every case: nothing, unless the stage has cleaning up to do."""


class CheckedDICOMLoaderOperator(DICOMDataLoaderOperator):
    """The SDK's DICOM loader, after dropping files it would choke on (cut, unreadable) with a message for each.

    The SDK loader reads every file of the folder tree; a truncated file would otherwise crash it or give a slice
    with missing pixels. Dropped slices then show up as a gap in their series, which the selector rejects.
    """

    def __init__(self, fragment: Fragment, *args, report: RunReport, **kwargs) -> None:
        self.report = report
        super().__init__(fragment, *args, must_load=False, **kwargs)

    def compute(self, op_input, op_output, context) -> None:
        t0 = time.perf_counter()
        super().compute(op_input, op_output, context)
        self.report.stage_seconds["load"] = round(time.perf_counter() - t0, 3)

    def _load_data(self, files: list[str]):
        sorted_files = sort_dicom_files(files)
        sorted_files.log(logger)
        return super()._load_data(self._without_duplicate_slices(sorted_files.usable))

    def _without_duplicate_slices(self, usable: list[tuple[Path, pydicom.Dataset]]) -> list[str]:
        """Drop every series with two files at one slice position (``bundle.validation.duplicate_slices``, the
        check of the series policy): the SDK keeps one of them silently, so the selector would never see it."""
        by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
        for name, header in usable:
            by_series[str(header.SeriesInstanceUID)].append((name, header))
        kept = []
        for uid, members in by_series.items():
            headers = [header for _, header in members]
            placed = all("ImagePositionPatient" in h and "ImageOrientationPatient" in h for h in headers)
            pair = duplicate_slices(headers) if placed else None  # unplaced slices: the selector refuses them
            if pair is None:
                kept.extend(str(name) for name, _ in members)
                continue
            first, second = (Path(members[i][0]).name for i in pair)
            message = f"series {uid} ({len(members)} files): duplicate slice positions ({first} and {second})"
            self.report.rejected_series.append(message)
            logger.warning("Skipped %s", message)
        return kept


def _modality(series) -> str:
    instances = series.get_sop_instances()
    return str(getattr(instances[0].get_native_sop_instance(), "Modality", "")) if instances else ""


def describe_series(series) -> str:
    """A series as the log names it: its UID and number (no patient or free-text fields)."""
    return f"series {series.SeriesInstanceUID} (number {series.SeriesNumber}, {len(series.get_sop_instances())} files)"


def series_problem(series) -> tuple[str | None, dict]:
    """Why ``series`` cannot be screened (None if it can), and its header facts: the bundle's own DICOM series policy
    (``bundle.validation.check_series_headers``), so both entry points accept and refuse the same series."""
    headers = [inst.get_native_sop_instance() for inst in series.get_sop_instances()]
    if not headers:
        return "no image instances", {}
    files = [Path(getattr(h, "filename", "") or "instance") for h in headers]
    try:
        return None, check_series_headers(headers, files, f"series {series.SeriesInstanceUID}")
    except InvalidScanError as e:
        return str(e).split(": ", 1)[-1].rstrip("."), {}


class CTSeriesSelectorOperator(Operator):
    """Choose, per study, the series to screen: the thinnest complete axial CT series (ties: more slices).

    Rejected series are logged with their reason; a study with none left is recorded in the report. Emits one
    ``Case`` per study, holding the SDK's study and series objects.
    """

    def __init__(self, fragment: Fragment, *args, report: RunReport, **kwargs) -> None:
        self.report = report
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("dicom_study_list")
        spec.output("cases")

    def compute(self, op_input, op_output, context) -> None:
        t0 = time.perf_counter()
        studies = op_input.receive("dicom_study_list") or []
        cases = []
        if not studies:
            logger.error("No DICOM study in the input.")
        for study in studies:
            candidates, derived, earlier = [], Counter(), []
            for series in study.get_all_series():
                problem, info = series_problem(series)
                modality = _modality(series)
                if problem and modality in DERIVED_MODALITIES:  # routine: earlier results (ours, others') in the study
                    derived[modality] += 1
                    earlier += [inst.get_native_sop_instance() for inst in series.get_sop_instances()]
                elif problem:
                    message = f"{describe_series(series)}: {problem}"
                    self.report.rejected_series.append(message)
                    logger.warning("Skipped %s", message)
                else:
                    candidates.append((series_rank(info, series.SeriesInstanceUID), series))
            if derived:
                kinds = ", ".join(f"{n} {modality}" for modality, n in sorted(derived.items()))
                logger.info("Study %s: not images, not screened: %s series.", study.StudyInstanceUID, kinds)
            if not candidates:
                self.report.studies_without_series.append(study.StudyInstanceUID)
                logger.error("Study %s: no CT series that can be screened.", study.StudyInstanceUID)
                continue
            series = min(candidates, key=lambda c: c[0])[1]
            logger.info("Study %s: screening %s", study.StudyInstanceUID, describe_series(series))
            source = DicomSource(study, series, earlier_outputs=earlier)
            cases.append(Case(case_id=series.SeriesInstanceUID, source="DICOM", dicom=source))
        self.report.cases.extend(cases)
        self.report.stage_seconds["select"] = round(time.perf_counter() - t0, 3)
        op_output.emit(cases, "cases")


class SeriesToVolumeOperator(StageOperator):
    """DICOM series to the volume the bundle's ``LoadImaged`` (ITK) would give: (x, y, slice) in HU, RAS affine.

    Sorting and rescaling are the SDK's (``DICOMSeriesToVolumeOperator.prepare_series`` / ``generate_voxel_data``);
    the affine is built as ITK builds it (origin the first slice, slice step from the first to the last slice), so the
    volume, and with it the mask, is identical to the bundle run on the same folder (tested).
    """

    stage = "series_to_volume"

    def __init__(self, fragment: Fragment, *args, report: RunReport, **kwargs) -> None:
        self.sdk = DICOMSeriesToVolumeOperator(fragment, name="sdk_series_to_volume_helper")
        super().__init__(fragment, *args, report=report, **kwargs)

    def process(self, case: Case) -> None:
        series = case.dicom.series
        self.sdk.prepare_series(series)
        datasets = [inst.get_native_sop_instance() for inst in series.get_sop_instances()]
        voxels = self.sdk.generate_voxel_data(series)
        array = np.ascontiguousarray(np.asarray(voxels, dtype=np.float32).transpose(2, 1, 0))
        first = datasets[0]
        row, col = (np.asarray(first.ImageOrientationPatient[i : i + 3], dtype=float) for i in (0, 3))
        p0, pn = (np.asarray(d.ImagePositionPatient, dtype=float) for d in (datasets[0], datasets[-1]))
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1] = row * col_spacing, col * row_spacing
        lps[:3, 2] = (pn - p0) / max(len(datasets) - 1, 1)
        lps[:3, 3] = p0
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
        meta = {
            "affine": torch.as_tensor(affine, dtype=torch.float64),
            "original_affine": affine,
            "spacing": np.sqrt((affine[:3, :3] ** 2).sum(axis=0)),
            "spatial_shape": np.asarray(array.shape),
            "space": "RAS",
            "original_channel_dim": "no_channel",
            "filename_or_obj": case.case_id,
        }
        case.dicom.datasets = datasets
        case.data = {
            "image": MetaTensor(torch.from_numpy(array), meta=meta),
            "id": case.case_id,
            "body_part": str(getattr(first, "BodyPartExamined", "")).upper(),
        }


class NiftiCasesOperator(Operator):
    """The research input path: one case per NIfTI file (the input file, or each NIfTI file of the input folder)."""

    def __init__(self, fragment: Fragment, *args, input_path: Path, report: RunReport, **kwargs) -> None:
        self.input_path = Path(input_path)
        self.report = report
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("cases")

    def compute(self, op_input, op_output, context) -> None:
        path = self.input_path
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if is_nifti(p))
        cases = [Case(case_id=case_id_of(f), source=str(f), data={"image": str(f), "id": case_id_of(f)}) for f in files]
        for case, file in zip(cases, files):
            try:
                check_image_file(file)  # the bundle's own up-front NIfTI checks (bundle.data.screening_inputs)
            except InvalidScanError as e:
                case.fail("input", str(e))
        if not cases:
            logger.error("No NIfTI scan in %s.", path)
        self.report.cases.extend(cases)
        op_output.emit(cases, "cases")


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(tuple(s for s in IMAGE_SUFFIXES if ".nii" in s))


class ModelStageOperator(StageOperator):
    """A stage that runs a piece of the bundle's screening pipeline."""

    def __init__(self, fragment: Fragment, *args, model: BundleModel, report: RunReport, **kwargs) -> None:
        self.pipeline = model.pipeline
        super().__init__(fragment, *args, report=report, **kwargs)


class PreprocessOperator(ModelStageOperator):
    """The bundle's ``preprocessing`` for a file, its ``preprocessing_core`` for a volume read from DICOM."""

    stage = "preprocessing"

    def process(self, case: Case) -> None:
        chain = self.pipeline.preprocessing if case.kind == "nifti" else self.pipeline.preprocessing_core
        case.data = chain(case.data)


class GlanceSelectorOperator(ModelStageOperator):
    """Glance: score every window of the scan, keep those at or above the threshold (``GlanceFocusInferer.select``)."""

    stage = "glance"

    def process(self, case: Case) -> None:
        inferer = self.pipeline.inferer
        padded, tiling = inferer.pad(case.data["image"][None].to(self.pipeline.device))
        case.selection = Selection(padded, tiling, inferer.select(padded, tiling))


class FocusSegmenterOperator(ModelStageOperator):
    """Focus on the kept windows (``GlanceFocusInferer.segment``), then the bundle's ``postprocessing_core``.

    The prediction carries the Glance-Focus statistics in its metadata as the inferer's own output does; the
    postprocessing (body bound, ``Invertd`` to the scan's own grid, ``LesionFindingsd``) gives the lesion map on the
    DICOM grid and the findings of the bundle.
    """

    stage = "focus"

    def process(self, case: Case) -> None:
        inferer, image, selection = self.pipeline.inferer, case.data["image"], case.selection
        prob = inferer.segment(selection.padded, selection.tiling, selection.stats, self.pipeline.focus)
        prob = inferer.crop(prob, selection.tiling, image.shape[1:])[0].to(image.device)
        case.selection = None  # the padded volume is no longer needed
        pred = inferer.prediction(prob, [selection.stats], image)
        out = self.pipeline.postprocessing_core({**case.data, "pred": pred})
        lesion_map = out["pred"]
        case.screened = Screened(lesion_map[0].numpy(), lesion_map.affine.numpy(), out["findings"])
        case.data = {}
