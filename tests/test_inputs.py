"""Bad inputs, built from real scans, stop with a clear error naming the scan and the reason, and write nothing.

Every case copies or rewrites a real scan from the shared data into pytest's tmp_path, then goes through what the
inference config uses: ``bundle.data.list_inputs`` (DICOM checks up front), the config's ``preprocessing`` chain
(``ValidateCTd`` after loading), ``bundle.checkpoint.load_weights``, and the whole inference workflow.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from bundle import validation, writers
from bundle.checkpoint import WeightsError, load_weights
from bundle.cohort import SUMMARY
from bundle.data import REFUSED, list_inputs, screening_inputs
from bundle.screening import output_folder_problem
from bundle.transforms import ValidateCTd
from bundle.validation import InvalidScanError
from bundle.writers import SaveScanOutputsd, atomic_write_json
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor

from tests.conftest import WritesAMarker

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [str(ROOT / "configs" / "inference.yaml"), str(ROOT / "configs" / "small.yaml")]
ROI_SIZE = (96, 96, 64)


def _parser(small: bool = True) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS if small else [CONFIGS[0], str(ROOT / "configs/paper_size.yaml")])
    parser["bundle_root"] = str(ROOT)
    return parser


def _in_chain(exc: BaseException, error_type: type[BaseException]) -> BaseException:
    """The first exception of ``error_type`` in ``exc``'s cause chain (MONAI's Compose wraps transform errors)."""
    seen = []
    while exc is not None and exc not in seen:
        if isinstance(exc, error_type):
            return exc
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    pytest.fail(f"no {error_type.__name__} in the error chain: {' <- '.join(f'{type(e).__name__}: {e}' for e in seen)}")


def _chain_text(exc: BaseException) -> str:
    parts, seen = [], []
    while exc is not None and exc not in seen:
        seen.append(exc)
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def preprocessing():
    """The real preprocessing chain of configs/inference.yaml (+ small.yaml)."""
    return _parser().get_parsed_content("preprocessing")


@pytest.fixture(scope="module")
def example_ct(shared_data) -> nib.Nifti1Image:
    """TotalSegmentator's example CT: 122 x 101 x 112 voxels at 3 mm, RAS, HU."""
    img = nib.load(shared_data / "totalsegmentator_example" / "example_ct.nii.gz")
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.int16), img.affine)


@pytest.fixture
def lidc_series(shared_data, tmp_path) -> Path:
    """32 consecutive 1 mm slices of the LIDC-IDRI-0314 DICOM series, copied (the 30 mm a series needs to be screened,
    enough for the header checks)."""
    src = sorted((shared_data / "lidc_idri_0314_nodule" / "dicom").glob("*.dcm"))[8:40]
    folder = tmp_path / "lidc_0314"
    folder.mkdir()
    for f in src:
        shutil.copyfile(f, folder / f.name)
    assert list_inputs(folder) == [{"image": str(folder), "id": "lidc_0314", "body_part": "CHEST"}]  # a valid series
    return folder


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _rewrite(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


# -------------------------------------------------------------------------------------------------- DICOM series checks


def test_not_ct_modality(lidc_series, tmp_path):
    for f in lidc_series.iterdir():
        _rewrite(f, Modality="MR")
    with pytest.raises(InvalidScanError) as err:
        list_inputs(lidc_series)
    assert str(lidc_series) in str(err.value)
    assert "modality MR, not CT" in str(err.value)
    # the same series as a sub-folder of a folder of scans is checked before anything runs
    with pytest.raises(InvalidScanError, match="modality MR, not CT") as err:
        list_inputs(tmp_path)
    assert str(lidc_series) in str(err.value)


def test_missing_slice(lidc_series):
    middle = sorted(lidc_series.iterdir())[6]
    middle.unlink()
    with pytest.raises(InvalidScanError) as err:
        list_inputs(lidc_series)
    assert str(lidc_series) in str(err.value)
    assert "uneven slice spacing or missing slices" in str(err.value)
    assert "gap of 2.000 mm" in str(err.value)


def _split_series(folder: Path, new_study: bool = False, **tags) -> str:
    """Every other file of ``folder`` into a new series (2 mm apart: still a screenable 32 mm series), edited by
    ``tags``, in the same study or a new one; returns the new series' UID."""
    other, study = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for f in sorted(folder.iterdir())[::2]:
        _rewrite(f, SeriesInstanceUID=other, **({"StudyInstanceUID": study} if new_study else {}), **tags)
    return other


def _linked_files(item: dict) -> list[Path]:
    return sorted(p.resolve() for p in Path(item["image"]).iterdir())


def test_two_series_of_one_study_in_one_folder(lidc_series, caplog):
    """As the Deploy app chooses: one series per study (equal spacing and count: the smaller UID), read from a folder
    of links to exactly its files, so ITK cannot pick the other; the other is named as not selected."""
    files = sorted(lidc_series.iterdir())
    other = _split_series(lidc_series)
    first = str(pydicom.dcmread(files[1], stop_before_pixels=True).SeriesInstanceUID)
    chosen, left = sorted([first, other])
    with caplog.at_level("INFO"):
        (item,) = list_inputs(lidc_series)
    assert item["id"] == f"lidc_0314_{chosen}"
    members = files[::2] if chosen == other else files[1::2]
    assert _linked_files(item) == [f.resolve() for f in members]
    assert f"lidc_0314_{left}" in caplog.text and "Not selected" in caplog.text


def test_invalid_series_beside_a_valid_one(lidc_series, caplog):
    """An MR series in the CT's study is skipped with its reason and the CT screened (the app's choice); in a study of
    its own it is refused with its reason, and the CT is still screened."""
    mr = _split_series(lidc_series, Modality="MR")
    with caplog.at_level("INFO"):
        (item,) = screening_inputs(lidc_series)
    assert REFUSED not in item and mr not in item["id"]
    assert f"series {mr}: modality MR, not CT" in caplog.text and "Skipped" in caplog.text
    study = pydicom.uid.generate_uid()
    for f in lidc_series.iterdir():
        if str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) == mr:
            _rewrite(f, StudyInstanceUID=study)
    items = {it["id"]: it for it in screening_inputs(lidc_series)}
    assert REFUSED not in items[next(i for i in items if mr not in i)]
    assert "modality MR, not CT" in items[f"lidc_0314_{mr}"][REFUSED]


def test_corrupt_file_and_exact_copy_beside_a_series(lidc_series, caplog):
    """A file that begins like DICOM and continues with garbage, and a byte-identical copy of a slice: both left out
    with one line each (the app's loader does the same), and the series screened from exactly its own files."""
    files = sorted(lidc_series.iterdir())
    (lidc_series / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(4096))
    shutil.copyfile(files[5], lidc_series / "copy_of_05.dcm")
    with caplog.at_level("INFO"):
        (item,) = list_inputs(lidc_series)
    assert item["id"] == "lidc_0314" and _linked_files(item) == [f.resolve() for f in files]
    assert "Ignored corrupt DICOM file(s) garbage.dcm" in caplog.text
    assert "Ignored 1 byte-identical copies of other files: copy_of_05.dcm" in caplog.text
    # a copy that differs (another instance at the same position) is no repair: the series is refused
    ds = pydicom.dcmread(files[5])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(lidc_series / "copy_of_05.dcm")
    with pytest.raises(InvalidScanError, match="duplicate slice positions"):
        list_inputs(lidc_series)


def test_too_large_scans_are_refused_from_their_headers(lidc_series, example_ct, tmp_path, monkeypatch):
    """Above ``MAX_VOXELS`` (what the app's declared memory holds) a scan is refused before its pixels are read: a
    NIfTI whose header says 512 x 512 x 600 (its data cut short: never read), and, with the limit lowered below
    the LIDC slab's 512 x 512 x 32, the DICOM series."""
    huge = tmp_path / "huge.nii"
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 600))
    header.set_data_dtype(np.int16)
    header.set_zooms((0.8, 0.8, 1.0))
    huge.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1024)
    with pytest.raises(InvalidScanError, match=r"too large to screen: 512 x 512 x 600 = 157 M voxels, more than 131 M"):
        list_inputs(huge)
    monkeypatch.setattr(validation, "MAX_VOXELS", 512 * 512 * 31)
    with pytest.raises(InvalidScanError, match=r"too large to screen: 512 x 512 x 32"):
        list_inputs(lidc_series)


def test_non_axial_series(lidc_series):
    for f in lidc_series.iterdir():
        _rewrite(f, ImageOrientationPatient=[0.0, 1.0, 0.0, 0.0, 0.0, -1.0])  # sagittal
    with pytest.raises(InvalidScanError) as err:
        list_inputs(lidc_series)
    assert str(lidc_series) in str(err.value)
    assert "not an axial series" in str(err.value)


def test_single_dicom_file_is_refused(lidc_series):
    one = sorted(lidc_series.iterdir())[0]
    with pytest.raises(InvalidScanError) as err:
        list_inputs(one)
    assert str(one) in str(err.value)
    assert "single DICOM file; give the folder of its series" in str(err.value)


def test_missing_input():
    missing = ROOT / "no_such_scan.nii.gz"
    with pytest.raises(FileNotFoundError) as err:
        list_inputs(missing)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)


@pytest.mark.parametrize(
    "size, reason",
    [
        (1000, "truncated or incomplete DICOM header"),  # cut inside the header: pydicom returns a partial dataset
        (2000, "truncated DICOM file"),  # header complete, pixel data cut (ITK would silently skip the slice)
    ],
)
def test_truncated_dicom_file(lidc_series, size, reason, caplog):
    """The cut file is left out with one line naming it and why (as the app's loader does); its series then has a
    gap and is refused for it."""
    victim = sorted(lidc_series.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:size])
    with pytest.raises(InvalidScanError, match="uneven slice spacing or missing slices") as err:
        list_inputs(lidc_series)
    assert str(lidc_series) in str(err.value)
    (line,) = [r.getMessage() for r in caplog.records if "Ignored corrupt DICOM file(s)" in r.getMessage()]
    assert f"Ignored corrupt DICOM file(s) {victim.name}: {reason}" in line


def test_garbage_nifti(preprocessing, tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InvalidScanError, match="unreadable or incomplete NIfTI file") as err:
        list_inputs(garbage)  # NIfTI files are read once up front: garbage is refused before the run
    assert str(garbage) in str(err.value)
    garbage.rename(tmp_path / "garbage.nrrd")  # other formats are left to the reader, which must fail
    with pytest.raises(RuntimeError) as err:
        preprocessing(list_inputs(tmp_path / "garbage.nrrd")[0])
    text = _chain_text(err.value)
    assert "garbage.nrrd" in text and "cannot find a suitable reader" in text


# ------------------------------------------------------------------------------------------ volume checks (ValidateCTd)


def test_2d_slice(preprocessing, example_ct, tmp_path):
    axial = np.asarray(example_ct.dataobj)[:, :, 60]
    path = _save_nifti(axial, example_ct.affine, tmp_path / "one_slice_2d.nii.gz")
    with pytest.raises(RuntimeError) as err:
        preprocessing({"image": str(path)})
    error = _in_chain(err.value, InvalidScanError)
    assert str(path) in str(error)
    assert "expected one 3D CT volume" in str(error)


def test_single_slice_volume(preprocessing, example_ct, tmp_path):
    slab = np.asarray(example_ct.dataobj)[:, :, 60:61]
    path = _save_nifti(slab, example_ct.affine, tmp_path / "one_slice_3d.nii.gz")
    with pytest.raises(RuntimeError) as err:
        preprocessing({"image": str(path)})
    error = _in_chain(err.value, InvalidScanError)
    assert str(path) in str(error)
    assert "too small to screen" in str(error)


def test_validate_ct_rejects_plain_tensor():
    with pytest.raises(InvalidScanError, match="expected a MetaTensor"):
        ValidateCTd(keys="image")({"image": torch.zeros(1, 8, 8, 8)})


def test_three_slice_series_too_small(shared_data, tmp_path):
    folder = tmp_path / "ct3slice"
    shutil.copytree(shared_data / "dcmqi_ct3slice_seg" / "ct", folder)
    with pytest.raises(InvalidScanError) as err:  # a valid, evenly spaced series, but 3 mm thick: refused up front
        list_inputs(folder)
    error = err.value
    assert str(folder) in str(error)
    assert "too small to screen" in str(error)


def test_slab_thinner_than_a_window_is_padded(preprocessing, shared_data):
    folder = shared_data / "lidc_idri_0314_nodule" / "dicom"  # read only: 48 slices of 1 mm
    (item,) = list_inputs(folder)
    out = preprocessing(item)
    image = out["image"]
    assert image.shape[0] == 1
    assert all(s >= r for s, r in zip(image.shape[1:], ROI_SIZE)), image.shape
    assert image.shape[3] == ROI_SIZE[2]  # 48 mm at 3 mm is 16 slices, padded to one window
    assert out["region"] == "chest" and out["region_source"] == "dicom"
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


@pytest.mark.parametrize("spacing", [0.01, 50.0])
def test_absurd_spacing(preprocessing, example_ct, tmp_path, spacing):
    affine = np.diag([spacing, spacing, spacing, 1.0])
    path = _save_nifti(np.asarray(example_ct.dataobj), affine, tmp_path / f"spacing_{spacing}.nii.gz")
    with pytest.raises(RuntimeError) as err:
        preprocessing({"image": str(path)})
    error = _in_chain(err.value, InvalidScanError)
    assert str(path) in str(error)
    assert "voxel spacing" in str(error) and "is outside" in str(error)


def test_not_hounsfield_units(preprocessing, example_ct, tmp_path):
    hu = np.asarray(example_ct.dataobj, dtype=np.float32)
    normalised = (hu - hu.min()) / (hu.max() - hu.min())
    path = _save_nifti(normalised, example_ct.affine, tmp_path / "normalised.nii.gz")
    with pytest.raises(RuntimeError) as err:
        preprocessing({"image": str(path)})
    error = _in_chain(err.value, InvalidScanError)
    assert str(path) in str(error)
    assert "do not look like CT in Hounsfield units" in str(error)


def test_orientation_does_not_change_preprocessing(preprocessing, example_ct, tmp_path):
    ras = _save_nifti(np.asarray(example_ct.dataobj), example_ct.affine, tmp_path / "ras.nii.gz")
    to_psl = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(nib.aff2axcodes(example_ct.affine)), nib.orientations.axcodes2ornt("PSL")
    )
    permuted = example_ct.as_reoriented(to_psl)
    assert nib.aff2axcodes(permuted.affine) == ("P", "S", "L")
    assert permuted.shape == (101, 112, 122)
    other = _save_nifti(np.asarray(permuted.dataobj), permuted.affine, tmp_path / "psl.nii.gz")
    a, b = preprocessing({"image": str(ras)}), preprocessing({"image": str(other)})
    assert a["region"] == b["region"]
    assert a["image"].shape == b["image"].shape
    np.testing.assert_allclose(a["image"].affine.numpy(), b["image"].affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), atol=1e-4)


# -------------------------------------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def networks():
    small, paper = _parser(small=True), _parser(small=False)
    return {
        "small": (small.get_parsed_content("glance_def"), small.get_parsed_content("network_def")),
        "paper": (paper.get_parsed_content("glance_def"), paper.get_parsed_content("network_def")),
    }


def test_weights_missing(networks, tmp_path):
    glance, focus = networks["small"]
    missing = tmp_path / "model.pt"
    with pytest.raises(WeightsError) as err:
        load_weights(missing, glance, focus)
    assert str(missing) in str(err.value) and "--allow_untrained" in str(err.value)
    assert load_weights(missing, glance, focus, allow_untrained=True)["status"] == "untrained"


def test_weights_corrupt(networks, tmp_path):
    corrupt = tmp_path / "model.pt"
    corrupt.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(WeightsError) as err:
        load_weights(corrupt, *networks["small"])
    assert str(corrupt) in str(err.value) and "cannot read weights" in str(err.value)


def test_weights_with_nan_are_refused_and_the_networks_untouched(networks, tmp_path):
    glance, focus = networks["small"]
    state = {"glance": glance.state_dict(), "focus": {k: torch.full_like(v, float("nan")) if v.is_floating_point()
                                                      else v for k, v in focus.state_dict().items()}}  # fmt: skip
    torch.save(state, tmp_path / "model.pt")
    before = [p.clone() for p in focus.parameters()]
    with pytest.raises(WeightsError, match="focus tensor.* hold NaN or infinity"):
        load_weights(tmp_path / "model.pt", glance, focus)
    assert all(torch.equal(a, b) for a, b in zip(before, focus.parameters()))


def test_weights_pickle_that_runs_code_never_runs(networks, tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"glance": WritesAMarker(marker), "focus": {}}, tmp_path / "model.pt")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_weights(tmp_path / "model.pt", *networks["small"])
    assert not marker.exists()
    torch.load(tmp_path / "model.pt", weights_only=False)  # the control: loaded unsafely, the code does run
    assert marker.exists()


class _NotATensor:
    """An arbitrary pickled object: ``torch.load(weights_only=True)`` must refuse it."""


def test_weights_unsafe_pickle(networks, tmp_path):
    unsafe = tmp_path / "model.pt"
    torch.save({"glance": _NotATensor(), "focus": {}}, unsafe)
    with pytest.raises(WeightsError) as err:
        load_weights(unsafe, *networks["small"])
    assert str(unsafe) in str(err.value) and "cannot read weights" in str(err.value)


def test_weights_not_a_glance_focus_dict(networks, tmp_path):
    glance, focus = networks["small"]
    wrong = tmp_path / "model.pt"
    torch.save(glance.state_dict(), wrong)
    with pytest.raises(WeightsError) as err:
        load_weights(wrong, glance, focus)
    assert str(wrong) in str(err.value) and "must hold a dict with 'glance' and 'focus'" in str(err.value)


@pytest.mark.parametrize("mismatched", ["glance", "focus"])
def test_weights_wrong_shape(networks, tmp_path, mismatched):
    small_glance, small_focus = networks["small"]
    paper_glance, paper_focus = networks["paper"]
    path = tmp_path / "model.pt"
    torch.save({"glance": small_glance.state_dict(), "focus": small_focus.state_dict()}, path)
    targets = (paper_glance, small_focus) if mismatched == "glance" else (small_glance, paper_focus)
    with pytest.raises(WeightsError) as err:
        load_weights(path, *targets)
    assert str(path) in str(err.value)
    assert f"the {mismatched} weights do not fit the configured {mismatched} network" in str(err.value)


# ------------------------------------------------------------------------------------------------------ nothing partial


def _bad_2d_scan(example_ct, folder: Path) -> Path:
    folder.mkdir()
    return _save_nifti(np.asarray(example_ct.dataobj)[:, :, 60], example_ct.affine, folder / "flat.nii.gz")


def _bad_dicom_folder(shared_data, folder: Path) -> Path:
    """The whole 48 mm LIDC slab (big enough to screen) with the pixel data of one slice cut short; returns the
    series folder (refused for the gap the left-out slice leaves)."""
    src = sorted((shared_data / "lidc_idri_0314_nodule" / "dicom").glob("*.dcm"))
    series = folder / "lidc"
    series.mkdir(parents=True)
    for f in src:
        shutil.copyfile(f, series / f.name)
    victim = series / src[20].name
    victim.write_bytes(src[20].read_bytes()[:2000])
    return series


def _untrained_inference(input_path: Path, output_dir: Path, tmp_path: Path, **overrides) -> ConfigWorkflow:
    """Bundle inference in-process (configs/inference.yaml + small.yaml) on CPU with untrained networks, initialized."""
    workflow = ConfigWorkflow(
        config_file=CONFIGS,
        meta_file=str(ROOT / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(ROOT),
        input_path=str(input_path),
        output_dir=str(output_dir),
        ckpt_path=str(tmp_path / "no_weights.pt"),
        allow_untrained=True,
        device="cpu",
        amp=False,
        handlers=[],
        **overrides,
    )
    workflow.initialize()
    return workflow


@pytest.mark.parametrize("bad", ["2d_nifti", "truncated_dicom"])
def test_inference_workflow_refuses_and_writes_nothing(shared_data, example_ct, tmp_path, bad):
    inputs, output_dir = tmp_path / "inputs", tmp_path / "out"
    culprit = _bad_2d_scan(example_ct, inputs) if bad == "2d_nifti" else _bad_dicom_folder(shared_data, inputs)
    workflow = _untrained_inference(inputs, output_dir, tmp_path)
    with pytest.raises(SystemExit) as err:  # refused with its reason, nothing screenable: the app's exit status 3
        workflow.run()
    assert err.value.code == 3
    ((case_id, reason, status),) = workflow.parser.get_parsed_content("evaluator").refused
    assert str(culprit) in reason and status == 3
    assert _files_under(output_dir) == [output_dir / SUMMARY]  # the refusal's row, no scan output
    ((row),) = list(csv.DictReader(open(output_dir / SUMMARY, newline="")))
    assert row["status"] == "refused" and str(culprit) in row["reason"]


def test_sigterm_while_writing_leaves_nothing(shared_data, tmp_path, monkeypatch):
    """A SIGTERM that arrives while a scan's outputs are being written ends the run with status 143 and removes the
    staging folder: no empty case folder, no 0-byte temporary file."""
    output_dir = tmp_path / "out"
    example = shared_data / "totalsegmentator_example" / "example_ct.nii.gz"
    workflow = _untrained_inference(example, output_dir, tmp_path, glance_threshold=0.99)
    real_write = writers.atomic_write_json

    def write_then_terminated(*args, **kwargs):
        real_write(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(writers, "atomic_write_json", write_then_terminated)
    with pytest.raises(SystemExit) as err:
        workflow.run()
    assert err.value.code == 128 + signal.SIGTERM
    assert list(output_dir.iterdir()) == []  # not even a hidden staging folder
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the run's only


def test_a_run_killed_between_two_renames_loses_no_outputs(tmp_path):
    """``publish_folder`` replaces a case folder in two renames (old aside, new in). A kill (SIGKILL, power) between
    them leaves the old outputs aside and no case folder; the next run that holds the output folder puts them back,
    and removes any staging folder, before it screens."""
    out = tmp_path / "out"
    (out / "case").mkdir(parents=True)
    (out / "case" / "case_findings.json").write_text('{"lesion_count": 1}')
    staging = writers.staging_folder(out, "case")
    (staging / "case_findings.json").write_text('{"lesion_count": 2}')
    real_replace, calls = os.replace, []

    def killed_after_first_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here: nothing after this line runs
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(writers.os, "replace", killed_after_first_rename)
        with pytest.raises(KeyboardInterrupt):
            writers.publish_folder(staging, out / "case")
    assert not (out / "case").exists()
    assert sorted(p.name.split("-")[0] for p in out.iterdir()) == [".replaced", ".staging"]
    assert output_folder_problem(out) is None  # the next run claims the folder, then recovers it
    assert [p.name for p in out.iterdir()] == ["case"]
    assert (out / "case" / "case_findings.json").read_text() == '{"lesion_count": 1}'


def test_atomic_write_json_leaves_no_temp_files(tmp_path):
    target = tmp_path / "case" / "case_findings.json"
    atomic_write_json({"lesion_count": 0}, target)
    assert _files_under(tmp_path) == [target]
    assert target.read_text().startswith("{")
    before = target.read_bytes()
    with pytest.raises(TypeError):  # not JSON: the old file stays whole and no temp file is left
        atomic_write_json({"lesion_count": object()}, target)
    assert _files_under(tmp_path) == [target]
    assert target.read_bytes() == before


def test_save_outputs_refuses_to_overwrite_the_input(example_ct, tmp_path):
    scan = tmp_path / "case" / "case_lesion.nii.gz"
    scan.parent.mkdir()
    _save_nifti(np.asarray(example_ct.dataobj)[:8, :8, :8], example_ct.affine, scan)
    before = scan.read_bytes()
    affine = torch.as_tensor(example_ct.affine)
    mask = MetaTensor(torch.zeros(1, 8, 8, 8), affine=affine, meta={"filename_or_obj": str(scan)})
    saver = SaveScanOutputsd(keys="pred", output_dir=str(tmp_path))
    with pytest.raises(ValueError) as err:
        saver({"pred": mask, "id": "case", "findings": {}})
    assert "is the input scan" in str(err.value) and str(scan) in str(err.value)
    assert _files_under(tmp_path) == [scan]
    assert scan.read_bytes() == before
