"""What the inference config screens: a datalist, a folder of scans, a DICOM series folder, or one scan file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.data import load_decathlon_datalist

from bundle.validation import InvalidScanError, check_dicom_series, is_dicom_file

__all__ = ["case_id_of", "list_inputs", "load_datalist", "training_items", "IMAGE_SUFFIXES", "PATH_KEYS"]

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


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _dicom_item(folder: Path) -> dict:
    info = check_dicom_series(folder)
    return {"image": str(folder), "id": folder.name, "body_part": info["body_part"]}


def list_inputs(
    input_path: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, split: str = "test"
) -> list[dict]:
    """Data items (``image``, ``id``, optional ``label``, ``region``, ``body_part``) for ``input_path``.

    - a ``.json`` datalist: the items of ``split``, paths relative to ``dataset_dir`` (default: the JSON's folder);
    - a folder of DICOM files: that one series;
    - a folder of scans: every NIfTI/NRRD/MHA file and every sub-folder holding a DICOM series;
    - a single scan file.
    DICOM series are checked up front (modality, one series, axial, no missing slices), so a bad input stops the run
    before anything is written.
    """
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist.")
    if path.is_file() and path.suffix.lower() == ".json":
        base = Path(dataset_dir) if dataset_dir is not None else path.parent
        items = load_datalist(path, split, base)
        out = []
        for item in items:
            image = Path(item["image"])
            entry = dict(item, id=item.get("id") or case_id_of(image))
            if image.is_dir():
                entry["body_part"] = check_dicom_series(image)["body_part"]
            elif not image.is_file():
                raise FileNotFoundError(f"{path} ({split}): scan {image} does not exist.")
            out.append(entry)
        return out
    if path.is_file():
        if is_dicom_file(path):
            raise InvalidScanError(f"{path} is a single DICOM file; give the folder of its series.")
        if not _is_image_file(path):
            raise InvalidScanError(f"{path}: not a NIfTI/NRRD/MHA scan, a DICOM folder or a .json datalist.")
        return [{"image": str(path), "id": case_id_of(path)}]
    if any(is_dicom_file(p) for p in path.iterdir() if p.is_file()):
        return [_dicom_item(path)]
    items = [{"image": str(p), "id": case_id_of(p)} for p in sorted(path.iterdir()) if _is_image_file(p)]
    items += [
        _dicom_item(p) for p in sorted(path.iterdir()) if p.is_dir() and any(is_dicom_file(f) for f in p.iterdir())
    ]
    if not items:
        raise InvalidScanError(f"{path}: no scans found (NIfTI, NRRD, MHA files or DICOM series folders).")
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise InvalidScanError(f"{path}: two scans share a case id ({sorted(i for i in ids if ids.count(i) > 1)}).")
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
