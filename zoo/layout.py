"""Lay this bundle out as a MONAI Model Zoo entry, ``models/<name>/`` of a model-zoo work tree, and commit it there.

The entry holds what a Zoo user runs: ``LICENSE``, the YAML configs (plus ``configs/inference.json``, a JSON copy of
``inference.yaml`` written here, because ``monai.bundle.load`` reads only ``configs/<workflow_type>.json``), the
metadata in the Zoo's JSON format, the ``bundle`` package, the model card and its figures (``docs/``), the weights'
calibration record and the sample scan. Files over the Zoo's 1 MB commit limit (the weights, the sample CT) go into
``large_files.yml`` with their URL and sha256, as the Zoo asks: they are copied into the folder but not committed, as
a Zoo checkout has them after the CI's download step (``monai.apps.download_url`` checks the hash of a file that is
already there and skips the download). The Zoo-style unit test goes to ``ci/unit_tests/`` and the bundle joins
``exclude_verify_torchscript_list`` (SwinUNETR cannot be scripted; the networks export by tracing: docs/README.md).

    python zoo/layout.py --zoo <model-zoo work tree>
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
NAME = "pancancer_ct_lesion_screening"
# where the Zoo hosts its bundles' large files (the spleen and lung nodule bundles' large_files.yml)
FILES_URL = "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo"
# the Zoo's pre-commit hook check-added-large-files --maxkb=1024
MAX_COMMITTED_BYTES = 1024 * 1024
# what the entry holds, relative to the project root; everything else (app/, gateway/, tests/, runs/) stays out
ENTRY = [
    "LICENSE",
    "configs",
    "bundle",
    "docs",
    "models/model.pt",
    "models/calibration.json",
    "models/README.md",
    "sample_data",
]
LEFT_OUT = {"__pycache__", "*.log"}  # run logs: the Zoo's .gitignore ignores *.log


def zoo_json(data) -> str:
    """JSON as the Zoo's pre-commit hook pretty-format-json (--no-sort-keys --indent=4) writes it."""
    return json.dumps(data, indent=4, ensure_ascii=True) + "\n"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_entry(dest: Path) -> list[Path]:
    """Copy the entry's files into ``dest``; return the files over the commit limit (relative to ``dest``)."""
    for item in ENTRY:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns(*LEFT_OUT), symlinks=False)
        else:
            (dest / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / item)
    (dest / "configs/metadata.json").unlink()  # the project links it to the root file; the Zoo wants the file
    shutil.copyfile(ROOT / "metadata.json", dest / "configs/metadata.json")
    for record in dest.rglob("*.json"):  # same values, the Zoo's JSON layout (its pre-commit hook checks it)
        record.write_text(zoo_json(json.loads(record.read_text())))
    inference = ConfigParser.load_config_file(ROOT / "configs/inference.yaml")
    (dest / "configs/inference.json").write_text(zoo_json(inference))
    files = [p for p in dest.rglob("*") if p.is_file()]
    return sorted(p.relative_to(dest) for p in files if p.stat().st_size > MAX_COMMITTED_BYTES)


def large_files_yml(dest: Path, large: list[Path], version: str, files_url: str) -> str:
    lines = ["large_files:"]
    for rel in large:
        lines += [
            f'- path: "{rel.as_posix()}"',
            f'  url: "{files_url}/{NAME}_v{version}_{rel.name}"',
            f'  hash_val: "{sha256(dest / rel)}"',
            '  hash_type: "sha256"',
        ]
    return "\n".join(lines) + "\n"


def exclude_from_torchscript_check(custom_data: Path) -> None:
    """Add the bundle to the Zoo's ``exclude_verify_torchscript_list`` (once)."""
    text = custom_data.read_text()
    anchor = "exclude_verify_torchscript_list = [\n"
    if anchor not in text:
        raise SystemExit(f"{custom_data}: no '{anchor.strip()}' to add {NAME} to")
    if f'"{NAME}"' not in text.split(anchor, 1)[1].split("]", 1)[0]:
        custom_data.write_text(text.replace(anchor, f'{anchor}    "{NAME}",\n', 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, required=True, help="a work tree of Project-MONAI/model-zoo")
    parser.add_argument("--files_url", default=FILES_URL, help="where the large files are published")
    parser.add_argument("--no_commit", action="store_true", help="write the entry but do not commit it")
    args = parser.parse_args()
    zoo = args.zoo.resolve()
    if not (zoo / "ci/verify_bundle.py").is_file():
        raise SystemExit(f"{zoo} is not a model-zoo work tree (no ci/verify_bundle.py)")
    dest = zoo / "models" / NAME
    if dest.exists():
        shutil.rmtree(dest)
    large = copy_entry(dest)
    version = json.loads((ROOT / "metadata.json").read_text())["version"]
    (dest / "large_files.yml").write_text(large_files_yml(dest, large, version, args.files_url))
    shutil.copyfile(ROOT / "zoo" / f"test_{NAME}.py", zoo / "ci/unit_tests" / f"test_{NAME}.py")
    exclude_from_torchscript_check(zoo / "ci/bundle_custom_data.py")
    for rel in large:
        print(f"large file, not committed: {rel} ({(dest / rel).stat().st_size / 2**20:.1f} MiB)")
    if args.no_commit:
        return
    paths = [f"models/{NAME}", f"ci/unit_tests/test_{NAME}.py", "ci/bundle_custom_data.py"]
    git = ["git", "-C", str(zoo)]
    subprocess.run([*git, "add", "--", *paths], check=True)  # what the Zoo's .gitignore ignores (*.log) stays out
    subprocess.run([*git, "rm", "-q", "--cached", "--", *[f"models/{NAME}/{p}" for p in large]], check=True)
    author = ["-c", "user.name=GF-Screen", "-c", "user.email=gf-screen@localhost"]
    subprocess.run([*git, *author, "commit", "-q", "-m", f"Add {NAME} v{version}"], check=True)
    head = subprocess.check_output([*git, "rev-parse", "HEAD"], text=True).strip()
    print(f"{dest}: committed ({head})")


if __name__ == "__main__":
    main()
