"""What the MAP needs beyond the code: requirements, manifest keys, model folder layouts, and the early exit statuses.

Packaging itself (``monai-deploy package``) needs Docker and network access and is not run here (docs/deploy.md).
"""

from __future__ import annotations

import ast
import logging
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from app.app import main
from app.cases import ExitStatus
from app.model import ModelPathError, bundle_root_of
from tests.conftest import ROOT, held_by_another_process


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines: list[str]) -> dict[str, str]:
    """``name[extras]==version`` lines to {canonical name: version}."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[canonical(name.split("[")[0])] = version.strip()
    return out


def imported_modules(files: list[Path]) -> set[str]:
    """Top-level modules imported by ``files`` and, transitively, by the ``bundle`` modules they import."""
    seen, found, queue = set(), set(), list(files)
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "bundle" and len(parts) > 1 and (ROOT / "bundle" / f"{parts[1]}.py").is_file():
                    queue.append(ROOT / "bundle" / f"{parts[1]}.py")
                found.add(parts[0])
    return found - set(sys.stdlib_module_names) - {"app", "bundle"}


def test_requirements_cover_the_apps_imports_with_the_project_pins():
    """app/requirements.txt is all a MAP installs: it must cover what the app and ``import bundle`` import."""
    required = pins((ROOT / "app" / "requirements.txt").read_text().splitlines())
    project_pins = pins(re.findall(r'"([\w.\-\[\],]+==[^"]+)"', (ROOT / "pyproject.toml").read_text()))
    for name, version in required.items():
        assert project_pins.get(name) == version, f"{name}: {version} here, {project_pins.get(name)} in pyproject"
    files = sorted((ROOT / "app").glob("*.py")) + [ROOT / "bundle" / "__init__.py"]
    distributions = metadata.packages_distributions()
    for module in sorted(imported_modules(files)):
        dists = {canonical(d) for d in distributions.get(module, [])}
        assert dists & set(required), f"module {module} (from {sorted(dists)}) is not in app/requirements.txt"


def test_manifest_uses_the_keys_the_packager_reads():
    manifest = yaml.safe_load((ROOT / "app" / "app.yaml").read_text())
    assert manifest["application"]["title"] and manifest["application"]["version"]
    assert manifest["application"]["input-formats"] == manifest["application"]["output-formats"] == ["file"]
    assert manifest["resources"]["gpu"] == 0  # the app runs on the CPU (app/model.py)


def test_model_path_is_a_bundle_folder_or_holds_one(tmp_path):
    """``-m`` locally names the bundle folder; in a MAP it may be /opt/holoscan/models holding it."""
    bundle = tmp_path / "models" / "gf_screen"
    (bundle / "configs").mkdir(parents=True)
    assert bundle_root_of(bundle) == bundle.resolve()
    assert bundle_root_of(tmp_path / "models") == bundle.resolve()
    (tmp_path / "models" / "other" / "configs").mkdir(parents=True)
    with pytest.raises(ModelPathError, match="not one bundle folder"):
        bundle_root_of(tmp_path / "models")
    with pytest.raises(ModelPathError, match="not a bundle folder"):
        bundle_root_of(tmp_path / "missing")


@pytest.fixture
def root_logging():
    """``main`` in-process lets the SDK configure the root logger; give the test session its own back."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:], logging.root.level = handlers, level


def test_missing_input_exits_2_and_unusable_model_path_exits_5(tmp_path, monkeypatch, root_logging):
    monkeypatch.setenv("HOLOSCAN_INPUT_PATH", str(tmp_path / "missing"))
    assert main(["app", "-o", str(tmp_path / "out"), "-m", str(tmp_path)]) == ExitStatus.USAGE
    monkeypatch.delenv("HOLOSCAN_INPUT_PATH")
    (tmp_path / "in").mkdir()
    status = main(["app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "in")])
    assert status == ExitStatus.WEIGHTS
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_invalid_device_uid_exits_2_before_screening(tmp_path, monkeypatch, root_logging, capfd):
    """A wrong GF_SCREEN_DEVICE_UID is a set-up error found at start (before the model is even loaded: the same
    call with a valid UID stops at the missing weights), not after a scan has been screened."""
    (tmp_path / "in").mkdir()
    args = ["app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "in")]
    monkeypatch.setenv("GF_SCREEN_DEVICE_UID", "1.2.3.x")
    assert main(args) == ExitStatus.USAGE
    assert "GF_SCREEN_DEVICE_UID='1.2.3.x' is not a valid DICOM UID" in capfd.readouterr().err
    monkeypatch.setenv("GF_SCREEN_DEVICE_UID", "1.2.3.4")
    assert main(args) == ExitStatus.WEIGHTS


def test_unwritable_output_exits_2_before_loading_the_model(tmp_path, monkeypatch, root_logging, capfd):
    """As the MAP gets it (``HOLOSCAN_OUTPUT_PATH``); the SDK's own ``-o`` parser creates the folder itself."""
    (tmp_path / "in").mkdir()
    (tmp_path / "file").write_text("a file where a folder of the output path should be")
    monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(tmp_path / "file" / "out"))
    assert main(["app", "-i", str(tmp_path / "in"), "-m", str(tmp_path / "in")]) == ExitStatus.USAGE
    assert f"output folder {tmp_path / 'file' / 'out'} is not writable" in capfd.readouterr().err
    assert (tmp_path / "file").read_text() == "a file where a folder of the output path should be"


def test_output_path_that_cannot_be_made_exits_2(tmp_path, root_logging, caplog):
    """``-o`` under a path that cannot hold folders: the SDK's parser fails to create it; one line, status 2."""
    (tmp_path / "in").mkdir()
    impossible = "/proc/no-such-folder/out"
    assert main(["app", "-i", str(tmp_path / "in"), "-o", impossible, "-m", str(tmp_path)]) == ExitStatus.USAGE
    assert "Cannot create /proc/no-such-folder: No such file or directory" in caplog.text


def test_output_folder_held_by_another_run_exits_6_before_loading_the_model(tmp_path, root_logging, capfd):
    """Another process's lock on the output folder (as a running screening holds it): exit 6 before the model is
    loaded (with the lock gone the same call stops at the missing weights, status 5), the folder untouched."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    args = ["app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "in")]
    with held_by_another_process(tmp_path / "out"):
        assert main(args) == ExitStatus.OUTPUT_IN_USE
        assert "is in use by another screening run" in capfd.readouterr().err
    assert main(args) == ExitStatus.WEIGHTS
    assert list((tmp_path / "out").iterdir()) == []
