import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GF_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the real CT data folder {SHARED_DATA} is missing (set GF_SHARED_DATA)")
    return SHARED_DATA


def reduced_datalist(path: Path) -> Path:
    """The committed datalist with one lesion scan in training (LIDC) and one in validation (STS_003), the size the
    training and calibration tests are made for; the full split (25 training, 9 tuning scans) is for real runs."""
    full = json.loads((ROOT / "configs" / "datalist.json").read_text())
    reduced = {
        **full,
        "training": [item for item in full["training"] if item["id"] == "lidc_idri_0314"],
        "validation": [item for item in full["validation"] if item["id"] == "STS_003"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reduced))
    return path


@contextmanager
def held_by_another_process(folder: Path) -> Iterator[None]:
    """``folder`` locked by flock(1) in another process, as a running screening holds its output folder; unlocked
    (the holder ended) on leaving."""
    holder = subprocess.Popen(["flock", "--close", str(folder), "sleep", "60"])
    try:
        deadline = time.monotonic() + 30
        while not any(row.split()[4] == str(holder.pid) for row in Path("/proc/locks").read_text().splitlines()):
            assert time.monotonic() < deadline, "flock(1) did not take the lock"
            time.sleep(0.1)
        yield
    finally:
        holder.kill()
        holder.wait()


class WritesAMarker:
    """A pickle that runs code when loaded unsafely: it would create ``path`` (weights tests check it never runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))
