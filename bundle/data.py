"""What the inference config screens: a datalist, a folder of scans, a DICOM series folder, or one scan file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.data import load_decathlon_datalist

from bundle.validation import ExitStatus, InvalidScanError, check_dicom_series, check_image_file, is_dicom_file

__all__ = [
    "case_id_of",
    "list_inputs",
    "load_datalist",
    "refused_item",
    "screening_inputs",
    "training_items",
    "IMAGE_SUFFIXES",
    "PATH_KEYS",
    "REFUSED",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PATH_KEYS = ("image", "label", "organ")  # datalist values resolved against the data root


def case_id_of(image_path: str | os.PathLike) -> str:
    """Case id from a scan path: the file name without its image suffix, or the DICOM folder's name."""
    name = Path(image_path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_datalist(datalist: str | os.PathLike, split: str, base_dir: str | os.PathLike) -> list[dict]:
    """The ``split`` items of an MSD-style datalist with ``PATH_KEYS`` made absolute and every other value as written.

    ``load_decathlon_datalist`` rewrites any string that happens to name an existing path under ``base_dir`` (an
    ``id`` equal to a case folder's name, such as ``pyradiomics_lung1``) into that path; outputs named by the id would
    then land in the data folder. Raises ``ValueError`` when the split is missing.
    """
    items = load_decathlon_datalist(str(datalist), is_segmentation=True, data_list_key=split, base_dir=str(base_dir))
    raw = json.loads(Path(datalist).read_text())[split]
    return [
        {key: item[key] if key in PATH_KEYS else value for key, value in raw_item.items()}
        for raw_item, item in zip(raw, items)
    ]


REFUSED = "refused"
"""The key of a refused scan's reason in its item (``screening_inputs``, ``bundle.screening.ScreeningDataset``)."""


def refused_item(image: str | os.PathLike, case_id: str, reason: str, status: int = ExitStatus.NO_SCREENABLE_SERIES):
    """A scan that will not be screened: its path, case id, the reason (one line) and the exit status it implies."""
    return {"image": str(image), "id": case_id, REFUSED: reason, "status": status}


def _checked(item: dict) -> dict:
    image = Path(item["image"])
    try:
        if image.is_dir():
            return dict(item, body_part=check_dicom_series(image)["body_part"])
        if not image.is_file():
            raise InvalidScanError(f"scan {image} does not exist.")
        check_image_file(image)
    except InvalidScanError as e:
        return refused_item(image, item["id"], str(e))
    return item


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def screening_inputs(
    input_path: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, split: str = "test"
) -> list[dict]:
    """What bundle inference screens, as ``bundle.data.list_inputs`` lists it, with every scan checked from its
    headers first: a scan that fails is an item with its reason under ``REFUSED`` (the run goes on with the others);
    an input that names no scan at all is one such item with the usage status."""
    path = Path(input_path)
    if not path.exists():
        return [refused_item(path, path.name, f"input {path} does not exist.", ExitStatus.USAGE)]
    if path.is_file() and path.suffix.lower() == ".json":
        base = Path(dataset_dir) if dataset_dir is not None else path.parent
        items = [dict(it, id=it.get("id") or case_id_of(it["image"])) for it in load_datalist(path, split, base)]
    elif path.is_file():
        if is_dicom_file(path):
            return [refused_item(path, path.name, f"{path} is a single DICOM file; give the folder of its series.")]
        if not _is_image_file(path):
            reason = f"{path}: not a NIfTI/NRRD/MHA scan, a DICOM folder or a .json datalist."
            return [refused_item(path, path.name, reason, ExitStatus.USAGE)]
        items = [{"image": str(path), "id": case_id_of(path)}]
    elif any(is_dicom_file(p) for p in path.iterdir() if p.is_file()):
        items = [{"image": str(path), "id": path.name}]
    else:
        items = [{"image": str(p), "id": case_id_of(p)} for p in sorted(path.iterdir()) if _is_image_file(p)]
        items += [
            {"image": str(p), "id": p.name}
            for p in sorted(path.iterdir())
            if p.is_dir() and any(is_dicom_file(f) for f in p.iterdir())
        ]
        if not items:
            reason = f"{path}: no scans found (NIfTI, NRRD, MHA files or DICOM series folders)."
            return [refused_item(path, path.name, reason)]
        ids = [it["id"] for it in items]
        if len(set(ids)) != len(ids):
            reason = f"{path}: two scans share a case id ({sorted({i for i in ids if ids.count(i) > 1})})."
            return [refused_item(path, path.name, reason, ExitStatus.USAGE)]
    return [_checked(item) for item in items]


def list_inputs(
    input_path: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, split: str = "test"
) -> list[dict]:
    """``screening_inputs`` for the tools that need every scan (calibration, benchmarks): the first refused scan
    raises (``FileNotFoundError`` for a missing one, else ``InvalidScanError``) instead of being passed over."""
    items = screening_inputs(input_path, dataset_dir, split)
    for item in items:
        if REFUSED in item:
            raise (InvalidScanError if Path(item["image"]).exists() else FileNotFoundError)(item[REFUSED])
    return items


TRAINING_KEYS = ("id", "image", "label", "organ", "region", "axial_range_mm")


def training_items(
    datalist: str | os.PathLike, dataset_dir: str | os.PathLike, lesion_free_repeat: int = 10, host_repeat: int = 1
) -> list[dict]:
    """The ``training`` items, the optional ``training_lesion_free`` items repeated ``lesion_free_repeat`` times, and
    the optional ``training_synthesis_hosts`` repeated ``host_repeat`` times.

    Lesion-free items carry no label (``bundle.transforms.EnsureLabeld`` gives them a zero one). Repeating them
    follows the paper's code, which lists its healthy scans 10 times. Synthesis hosts carry no label; with an
    ``organ`` map ``bundle.synthesis.RandSynthLesiond`` paints lesions into its organs, without one into the
    HU-threshold lungs; an ``axial_range_mm`` limits a host to its lesion-free slab. Unpainted host windows are the
    real lesion-free anatomy of training (the sarcoma crops hold little): repeating the hosts samples more of it.
    """

    def optional(split: str) -> list[dict]:
        try:
            items = load_datalist(datalist, split, dataset_dir)
        except ValueError:  # the datalist has no such list
            return []
        for item in items:
            if "label" in item:
                raise ValueError(f"{datalist}: {split} item {item['image']} has a label; these scans have none.")
        return items

    lesion = load_datalist(datalist, "training", dataset_dir)
    free = optional("training_lesion_free")
    hosts = optional("training_synthesis_hosts")
    # only what the pipeline reads (descriptive fields differ between lists and would break batch collation); each
    # repeat of a lesion-free scan or a host is its own dict
    items = lesion + free * lesion_free_repeat + hosts * host_repeat
    return [{k: v for k, v in item.items() if k in TRAINING_KEYS} for item in items]
