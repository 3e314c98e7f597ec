"""DICOM outputs built with highdicom: a Segmentation with one segment per lesion, and a TID 1500 measurement report.

Why one segment per lesion (docs/deploy.md has the longer argument): each SR measurement group can then reference
exactly its lesion's segment, viewers (OHIF, 3D Slicer, most PACS SEG plug-ins) list segments by label so a reader
can show, hide and jump to "Lesion 2", and the segment numbers equal the lesion numbers of the findings JSON.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from bundle.findings import lesion_colour
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

__all__ = [
    "SCHEME",
    "SUSPICION_SCORE",
    "LESION_COUNT",
    "MAX_PROBABILITY",
    "REGION_CODES",
    "frames_of",
    "on_slice",
    "unicode_headers",
    "build_seg",
    "build_sr",
    "not_for_clinical_use",
]

SCHEME = "99GFSCREEN"
"""Private coding scheme (DICOM PS3.16 8.2: designators starting with 99 are local) for what SNOMED/LOINC lack."""

SUSPICION_SCORE = CodedConcept("GFS001", SCHEME, "Scan suspicion score (maximum lesion probability)")
LESION_COUNT = CodedConcept("GFS002", SCHEME, "Number of lesions detected")
MAX_PROBABILITY = CodedConcept("GFS003", SCHEME, "Maximum lesion probability")
MEAN_PROBABILITY = CodedConcept("GFS004", SCHEME, "Mean lesion probability")
FINDING_ABSENT = CodedConcept("373572006", "SCT", "Clinical finding absent")
FINDING_PRESENT = CodedConcept("373573001", "SCT", "Clinical finding present")

REGION_CODES = {"chest": codes.SCT.Thorax, "abdomen": codes.SCT.Abdomen}

MANUFACTURER = "GF-Screen"
MODEL_NAME = "GF-Screen MONAI Deploy app"
CONTENT_CREATOR = "GF-Screen^Glance-Focus"
"""ContentCreatorName of the SEG (type 2; dcmqi warns when it is absent): the algorithm, as a person name."""


def not_for_clinical_use(findings: dict) -> str:
    """Series description: research use, and untrained weights said loudly."""
    untrained = findings.get("weights", {}).get("status") == "untrained"
    return (
        "GF-Screen AI lesions, UNTRAINED weights, not results"
        if untrained
        else "GF-Screen AI lesions, not for clinical use"
    )


def frames_of(volume: np.ndarray) -> np.ndarray:
    """(x, y, slice) on the DICOM grid to (slice, row, column): frame k is source slice k."""
    return np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))


def unicode_headers(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Copies of the source headers (no pixel data) with every text decoded and declared UTF-8 (ISO_IR 192).

    highdicom copies the patient and study attributes into its outputs together with the source's
    SpecificCharacterSet, and refuses the usual form of the Japanese and Korean ones (``\\ISO 2022 IR 87``: an empty
    first value) and an empty one. Decoded by pydicom and written in UTF-8, every name round-trips whatever the
    source's character set; the inputs themselves are not touched. Headers made by this function are returned as
    they are (``DicomSource.headers`` makes them once per case for both writers).
    """
    if all("PixelData" not in ds and ds.get("SpecificCharacterSet") == "ISO_IR 192" for ds in datasets):
        return list(datasets)
    headers = []
    for ds in datasets:
        header = pydicom.Dataset()
        for element in ds:
            if element.tag != pydicom.tag.Tag("PixelData"):
                header.add(copy.deepcopy(element))
        if hasattr(ds, "file_meta"):
            header.file_meta = copy.deepcopy(ds.file_meta)
        header.decode()  # every text value to str, read with the source's own character set
        header.SpecificCharacterSet = "ISO_IR 192"
        headers.append(header)
    return headers


def _algorithm(findings: dict, version: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name="GF-Screen Glance-Focus",
        version=version,
        family=codes.DCM.ArtificialIntelligence,
        parameters={"weights": str(findings.get("weights", {}).get("status", "unknown"))},
    )


SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 9001, 9002
"""The series numbers of the SEG and the SR: the same for every run and version of this algorithm."""

DEVICE_UID_VARIABLE = "GF_SCREEN_DEVICE_UID"


def device_uid() -> str:
    """The SR's Device Observer UID: ``GF_SCREEN_DEVICE_UID`` (one per installation, so that reports of two devices
    can be told apart), else one fixed UID of this algorithm; the same on every run either way."""
    configured = os.environ.get(DEVICE_UID_VARIABLE, "").strip()
    if configured:
        if not pydicom.uid.UID(configured).is_valid:
            raise ValueError(f"{DEVICE_UID_VARIABLE}={configured!r} is not a valid DICOM UID.")
        return configured
    return pydicom.uid.generate_uid(entropy_srcs=[MANUFACTURER, MODEL_NAME])


def output_series_uid(source_series_uid: str, kind: str, version: str) -> str:
    """The SeriesInstanceUID of our ``kind`` (SEG or SR) output for a source series: the same for every run of one
    version on that series, so a re-run adds an instance to the series instead of a look-alike new one."""
    return pydicom.uid.generate_uid(entropy_srcs=[MANUFACTURER, kind, version, source_series_uid])


def lesion_tracking_uid(source_series_uid: str, version: str, number: int) -> str:
    """Lesion ``number``'s Tracking UID (0: the scan-level group's): the same on every run of one version on a source
    series, so a viewer can follow a lesion from one report to its replacement."""
    return pydicom.uid.generate_uid(entropy_srcs=[MANUFACTURER, "lesion", version, source_series_uid, str(number)])


def _in_series(earlier: Sequence[pydicom.Dataset], series_uid: str) -> list[pydicom.Dataset]:
    return [d for d in earlier if str(getattr(d, "SeriesInstanceUID", "")) == series_uid]


def _new_instance(
    series_number: int, series_uid: str, findings: dict, version: str, earlier: Sequence[pydicom.Dataset]
) -> dict:
    """What each output gets of its own: an instance of our series for this source and version (numbered after the
    earlier instances of that series found in the input), whose description names the version and says it is not
    for clinical use."""
    numbers = [int(getattr(d, "InstanceNumber", 0) or 0) for d in _in_series(earlier, series_uid)]
    return {
        "series_instance_uid": series_uid,
        "series_number": series_number,
        "sop_instance_uid": hd.UID(),
        "instance_number": max(numbers, default=0) + 1,
        "manufacturer": MANUFACTURER,
        "series_description": f"{not_for_clinical_use(findings)} ({version})",
    }


def build_seg(
    datasets: list, labels: np.ndarray, findings: dict, version: str, earlier: Sequence[pydicom.Dataset] = ()
) -> hd.seg.Segmentation:
    """BINARY Segmentation of the source series: segment n is lesion n, SNOMED "Lesion" in its body region.

    ``labels`` is the lesion label map (x, y, slice) on the source grid; empty frames are omitted (each kept frame
    references its source slice).
    """
    datasets = unicode_headers(datasets)
    source_uid = str(datasets[0].SeriesInstanceUID)
    region = REGION_CODES.get(findings.get("region", ""), None)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=les["number"],
            segment_label=f"Lesion {les['number']}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_algorithm(findings, version),
            tracking_uid=lesion_tracking_uid(source_uid, version, les["number"]),
            tracking_id=f"Lesion {les['number']}",
            anatomic_regions=[region] if region is not None else None,
            display_color=hd.color.CIELabColor.from_rgb(*lesion_colour(les["number"])),
        )
        for les in sorted(findings["lesions"], key=lambda les: les["number"])
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames_of(labels),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **_new_instance(SEG_SERIES_NUMBER, output_series_uid(source_uid, "SEG", version), findings, version, earlier),
        manufacturer_model_name=MODEL_NAME,
        software_versions=version,
        device_serial_number="0",
        omit_empty_frames=True,
        content_creator_name=CONTENT_CREATOR,
    )
    return _finish(seg)


def _num(name: CodedConcept, value: float | int, unit) -> hd.sr.Measurement:
    """A NUM item; a count stays an integer ("1", not the "1.0" highdicom formats every number as)."""
    measurement = hd.sr.Measurement(name=name, value=value if isinstance(value, int) else float(value), unit=unit)
    if isinstance(value, int):
        measurement[0].MeasuredValueSequence[0].NumericValue = str(value)
    return measurement


def _finish(dataset: pydicom.Dataset, private_codes: bool = False) -> pydicom.Dataset:
    """What highdicom leaves out and viewers or validators look for: the series' date and time (those of its
    content), and where our own codes are used the CodingSchemeIdentificationSequence declaring their scheme."""
    dataset.SeriesDate, dataset.SeriesTime = dataset.ContentDate, dataset.ContentTime
    if not private_codes:
        return dataset
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "GF-Screen local codes"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    dataset.CodingSchemeIdentificationSequence = [scheme]
    return dataset


def _scan_group(findings: dict, algorithm: hd.sr.AlgorithmIdentification, tracking_uid: str):
    """TID 1501 for the whole scan: the suspicion score, the lesion count and whether a lesion was found."""
    found = findings["lesion_count"] > 0
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier="Scan"),
        algorithm_id=algorithm,
        measurements=[
            _num(SUSPICION_SCORE, findings["suspicion_score"], codes.UCUM.NoUnits),
            _num(LESION_COUNT, int(findings["lesion_count"]), codes.UCUM.NoUnits),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=FINDING_PRESENT if found else FINDING_ABSENT)
        ],
    )


def on_slice(datasets: list, point_lps) -> tuple[int, float, float]:
    """The source slice nearest to a point (LPS mm) and the point's (column, row) on it in SCOORD's convention
    (PS3.3 C.18.6.1.1: 0.0 is the top left corner of the top left pixel, so a pixel's centre is at index + 0.5)."""
    row_dir, col_dir = np.asarray(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3)
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float)) for d in datasets])
    k = int(np.abs(positions - np.dot(normal, point_lps)).argmin())
    offset = np.asarray(point_lps, dtype=float) - np.asarray(datasets[k].ImagePositionPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in datasets[k].PixelSpacing)
    return k, float(np.dot(offset, row_dir) / column_spacing + 0.5), float(np.dot(offset, col_dir) / row_spacing + 0.5)


def _caliper_group(datasets: list, les: dict, tracking: hd.sr.TrackingIdentifier, algorithm, region):
    """TID 1410 for a lesion: its longest axial diameter as a two-point line on its key slice, so that viewers that
    read measurements from spatial coordinates (OHIF's SR hydration) list and draw it."""
    (k, *first), (_, *second) = (on_slice(datasets, point) for point in les["longest_axial_diameter_ends_mm"])
    source = datasets[k]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.asarray([first, second]),
            source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
        ),
        finding_type=codes.SCT.Lesion,
        finding_sites=[hd.sr.FindingSite(region)] if region is not None else None,
        algorithm_id=algorithm,
        measurements=[_num(codes.SCT.LongAxis, les["longest_axial_diameter_mm"], codes.UCUM.Millimeter)],
    )


def _lesion_groups(datasets: list, seg: hd.seg.Segmentation, findings: dict, algorithm) -> list:
    """Per lesion, TID 1411: its measurements, referencing its segment of the SEG by number and tracking UID; and
    TID 1410: its longest axial diameter as a line (same tracking identifier)."""
    region = REGION_CODES.get(findings.get("region", ""), None)
    tracking = {d.SegmentNumber: d for d in seg.SegmentSequence}
    series_uid = datasets[0].SeriesInstanceUID
    groups = []
    for les in sorted(findings["lesions"], key=lambda les: les["number"]):
        segment = tracking[les["number"]]
        identifier = hd.sr.TrackingIdentifier(uid=segment.TrackingUID, identifier=f"Lesion {les['number']}")
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=identifier,
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=les["number"],
                    source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
                ),
                finding_type=codes.SCT.Lesion,
                finding_sites=[hd.sr.FindingSite(region)] if region is not None else None,
                algorithm_id=algorithm,
                measurements=[
                    _num(codes.SCT.Volume, les["volume_mm3"], codes.UCUM.CubicMillimeter),
                    _num(codes.SCT.LongAxis, les["longest_axial_diameter_mm"], codes.UCUM.Millimeter),
                    _num(MAX_PROBABILITY, les["max_probability"], codes.UCUM.NoUnits),
                    _num(MEAN_PROBABILITY, les["mean_probability"], codes.UCUM.NoUnits),
                ],
            )
        )
        groups.append(_caliper_group(datasets, les, identifier, algorithm, region))
    return groups


def build_sr(
    datasets: list,
    seg: hd.seg.Segmentation | None,
    findings: dict,
    version: str,
    earlier: Sequence[pydicom.Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 Measurement Report: per lesion its volume and longest axial diameter, referencing its segment.

    A scan-level group (TID 1501) always holds the suspicion score, the lesion count and whether a lesion was found,
    so "nothing found" is stated, not implied by an empty report. An earlier report of this version on the same
    series found among ``earlier`` (the study's result objects in the input) is named as the predecessor this one
    replaces (PredecessorDocumentsSequence).
    """
    datasets = unicode_headers(datasets)
    algorithm = hd.sr.AlgorithmIdentification(name="GF-Screen Glance-Focus", version=version)
    source_uid = str(datasets[0].SeriesInstanceUID)
    groups = [_scan_group(findings, algorithm, lesion_tracking_uid(source_uid, version, 0))]
    if seg is not None:
        groups += _lesion_groups(datasets, seg, findings, algorithm)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=device_uid(), name=MODEL_NAME, manufacturer_name=MANUFACTURER, model_name=version
                ),
            )
        ),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    evidence = list(datasets) + ([seg] if seg is not None else [])
    series_uid = output_series_uid(source_uid, "SR", version)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        **_new_instance(SR_SERIES_NUMBER, series_uid, findings, version, earlier),
        previous_versions=_in_series(earlier, series_uid) or None,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    return _finish(sr, private_codes=True)
