"""What the inference config screens: a datalist, a folder of scans, a DICOM series folder, or one scan file."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from bundle.validation import (
    DERIVED_MODALITIES,
    ExitStatus,
    InvalidScanError,
    check_image_file,
    check_series_headers,
    is_dicom_file,
    series_rank,
    sort_dicom_files,
)
from monai.data import load_decathlon_datalist

__all__ = [
    "case_id_of",
    "dicom_folder_items",
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

logger = logging.getLogger("gf_screen.screening")


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


# The key of a refused scan's reason in its item (``screening_inputs``, ``bundle.screening.ScreeningDataset``).
REFUSED = "refused"


def refused_item(image: str | os.PathLike, case_id: str, reason: str, status: int = ExitStatus.NO_SCREENABLE_SERIES):
    """A scan that will not be screened: its path, case id, the reason (one line) and the exit status it implies."""
    return {"image": str(image), "id": case_id, REFUSED: reason, "status": status}


_series_links: list[tempfile.TemporaryDirectory] = []  # removed when the process ends


def _linked_series(files: list[Path], case_id: str) -> Path:
    """A folder of links to exactly ``files``: what ITK reads when the input folder holds more than that series (its
    reader takes a folder and would pick one series itself, or read a corrupt file or a copy beside it)."""
    staging = tempfile.TemporaryDirectory(prefix="gf-screen-series-")
    _series_links.append(staging)
    folder = Path(staging.name) / case_id
    folder.mkdir()
    for i, path in enumerate(files):
        (folder / f"{i:05d}_{path.name}").symlink_to(path.resolve())
    return folder


def dicom_folder_items(folder: str | os.PathLike, case_id: str | None = None) -> list[dict]:
    """The series a DICOM folder holds, chosen as the Deploy app chooses them: files sorted by
    ``bundle.validation.sort_dicom_files`` (cut or unreadable files and exact copies left out, one line per
    reason), then per study the best screenable CT series (``series_rank``). A study without one gives a refused item
    per series, with its reason; a refused series beside a chosen one in its study is logged, as the app logs it.

    Case ids: ``case_id`` (default the folder's name) when the folder yields one series, else ``<case_id>_<Series
    Instance UID>``. An item's ``image`` is the folder itself when the series is all it holds, else a folder of links
    to the series' files."""
    folder = Path(folder)
    case_id = case_id or folder.name
    files = sort_dicom_files(p for p in folder.iterdir() if p.is_file())
    files.log(logger)
    studies = {
        study: {uid: m for uid, m in series.items() if str(getattr(m[0][1], "Modality", "")) not in DERIVED_MODALITIES}
        for study, series in files.by_study_and_series().items()
    }
    n_series = sum(len(series) for series in studies.values())
    if n_series == 0:
        reasons = "; ".join(f"{', '.join(names[:3])}: {reason}" for reason, names in files.corrupt.items())
        return [
            refused_item(
                folder, case_id, f"{folder}: no usable DICOM image series" + (f" ({reasons})." if reasons else ".")
            )
        ]
    items = []
    for series in studies.values():
        ranked, refused = [], []
        for uid, members in series.items():
            name = case_id if n_series == 1 else f"{case_id}_{uid}"
            label = folder if n_series == 1 else f"{folder} series {uid}"
            try:
                facts = check_series_headers([h for _, h in members], [p for p, _ in members], label)
            except InvalidScanError as e:
                refused.append(refused_item(folder, name, str(e)))
                continue
            ranked.append((series_rank(facts, uid), name, members, facts))
        if not ranked:
            items += refused
            continue
        for item in refused:
            logger.warning("Skipped %s (another series of its study is screened)", item[REFUSED])
        ranked.sort(key=lambda r: r[0])
        _, name, members, facts = ranked[0]
        for _, other, _, _ in ranked[1:]:
            logger.info("Not selected: %s (its study's series %s has thinner or more slices).", other, name)
        whole = len(members) == sum(1 for p in folder.iterdir() if p.is_file())
        image = folder if whole else _linked_series([p for p, _ in members], name)
        item = {"image": str(image), "id": name, "body_part": facts["body_part"]}
        items.append(item if whole else dict(item, source=str(folder)))
    return items


def _checked(item: dict) -> list[dict]:
    """The item, checked from its headers (a DICOM folder: its chosen series) or refused with the reason."""
    image = Path(item["image"])
    if item.pop("series_folder", False):  # a folder of a folder of scans: every study in it
        return dicom_folder_items(image, item["id"])
    if image.is_dir():
        found = dicom_folder_items(image, item["id"])
        if len(found) == 1 and REFUSED not in found[0]:
            return [dict(item, **{k: v for k, v in found[0].items() if k in ("image", "body_part", "source")})]
        if any(REFUSED not in f for f in found):  # a datalist item names one series, to match its label
            reason = f"{image}: {len(found)} DICOM series in one folder; a datalist item names one series."
            return [refused_item(image, item["id"], reason)]
        return found
    try:
        if not image.is_file():
            raise InvalidScanError(f"scan {image} does not exist.")
        check_image_file(image)
    except InvalidScanError as e:
        return [refused_item(image, item["id"], str(e))]
    return [item]


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
        return dicom_folder_items(path)
    else:
        items = [{"image": str(p), "id": case_id_of(p)} for p in sorted(path.iterdir()) if _is_image_file(p)]
        items += [
            {"image": str(p), "id": p.name, "series_folder": True}
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
    return [checked for item in items for checked in _checked(item)]


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


TRAINING_KEYS = ("id", "image", "label", "organ", "region", "axial_range_mm", "hard_negatives_mm")


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
