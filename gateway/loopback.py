"""A real Orthanc running the GF-Screen gateway, reachable from this process only: for the integration test and for
``python -m gateway.measure``.

Orthanc listens on every interface and has no bind address setting, so it runs in a private network namespace
(``unshare --net``, loopback only); the PACS destination the gateway forwards to (dcmtk ``storescp``) runs in the same
namespace, and every client call (``storescu``, DICOMweb over HTTP) is made from inside it: a worker thread that has
joined the namespace (``setns``), so that nothing outside this machine, or outside that namespace, can reach either
server. Needs root (or CAP_SYS_ADMIN) and the Debian packages ``orthanc orthanc-python orthanc-dicomweb dcmtk``.
"""

from __future__ import annotations

import ctypes
import email.parser
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom

GATEWAY = Path(__file__).resolve().parent
CLONE_NEWNET = 0x40000000
HTTP_PORT, DICOM_PORT, DESTINATION_PORT = 8042, 4242, 11112
CLIENT_AET, DESTINATION_AET = "PACS", "PACS"
REQUIRED_TOOLS = ("Orthanc", "storescu", "storescp", "unshare", "nsenter")


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


class LoopbackOrthanc:
    """Orthanc + the gateway plugin (``gateway/orthanc.json`` with local paths and a short ``StableAge``) and a
    ``storescp`` destination, in one private network namespace; a context manager that stops both."""

    def __init__(self, folder: Path, python: str, app_dir: Path, model_path: Path, stable_age: int = 2) -> None:
        self.folder = Path(folder)
        self.received = self.folder / "destination"
        self.outputs = self.folder / "outputs"
        config = json.loads((GATEWAY / "orthanc.json").read_text())
        config.update(
            StorageDirectory=str(self.folder / "db"),
            IndexDirectory=str(self.folder / "db"),
            PythonScript=str(GATEWAY / "orthanc_gateway.py"),
            StableAge=stable_age,
            HttpPort=HTTP_PORT,
            DicomPort=DICOM_PORT,
            DicomModalities={"PACS": [DESTINATION_AET, "127.0.0.1", DESTINATION_PORT]},
        )
        config["GFScreen"].update(
            Python=python,
            AppDir=str(app_dir),
            ModelPath=str(model_path),
            WorkDir=str(self.folder / "work"),
            OutputDir=str(self.outputs),
        )
        self.config = self.folder / "orthanc.json"
        self.log = self.folder / "orthanc.log"
        self.orthanc: subprocess.Popen | None = None
        self.destination: subprocess.Popen | None = None
        self.client: ThreadPoolExecutor | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(config, indent=2))

    def __enter__(self) -> LoopbackOrthanc:
        self.received.mkdir(exist_ok=True)
        with open(self.log, "wb") as log:
            self.orthanc = subprocess.Popen(
                ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec Orthanc --verbose "$0"', self.config],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.namespace = f"/proc/{self.orthanc.pid}/ns/net"
        own = self.host_namespace = os.readlink("/proc/self/ns/net")
        try:
            # until the child has called unshare its namespace is still ours: joining it then would reach the host
            self.wait(lambda: os.readlink(self.namespace) != own, 60, "Orthanc's private network namespace", 0.05)
            self.destination = subprocess.Popen(
                ["nsenter", f"--net={self.namespace}", "storescp", "-aet", DESTINATION_AET, "-od", str(self.received)]
                + ["-uf", str(DESTINATION_PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.client = ThreadPoolExecutor(1, initializer=self._join_namespace)
            self.wait(lambda: self.get("/gf-screen/status") is not None, 120, "Orthanc with the gateway to start")
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for process in (self.destination, self.orthanc):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.client is not None:
            self.client.shutdown()

    def _join_namespace(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self.namespace, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into Orthanc's network namespace")
        finally:
            os.close(fd)
        if os.readlink(f"/proc/self/task/{threading.get_native_id()}/ns/net") == self.host_namespace:
            raise RuntimeError("the client thread is still in the host's network namespace")

    def _in_namespace(self, fn, *args):
        return self.client.submit(fn, *args).result()

    def http(self, path: str, accept: str = "application/json", data: bytes | None = None) -> tuple[bytes, str]:
        """One HTTP request to Orthanc from inside the namespace: (body, content type)."""

        def call():
            request = urllib.request.Request(
                f"http://127.0.0.1:{HTTP_PORT}{path}", data=data, headers={"Accept": accept}
            )
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.read(), answer.headers.get("Content-Type", "")

        return self._in_namespace(call)

    def get(self, path: str):
        """GET a JSON resource; None when Orthanc is not answering (yet) or the resource does not exist."""
        try:
            return json.loads(self.http(path)[0])
        except (OSError, ValueError):
            return None

    def c_store(self, files: list[Path]) -> None:
        """C-STORE with dcmtk's storescu, as the PACS would send a study to the gateway."""
        command = ["storescu", "-aet", CLIENT_AET, "-aec", "GFSCREEN", "127.0.0.1", str(DICOM_PORT)]
        self._in_namespace(lambda: subprocess.run(command + [str(f) for f in files], check=True, capture_output=True))

    def qido(self, path: str) -> list[dict]:
        return json.loads(self.http(f"/dicom-web/{path}", accept="application/dicom+json")[0])

    def wado(self, study: str, series: str, instance: str) -> pydicom.Dataset:
        """WADO-RS retrieve of one instance (multipart/related; type="application/dicom"), read with pydicom."""
        body, content_type = self.http(
            f"/dicom-web/studies/{study}/series/{series}/instances/{instance}",
            accept='multipart/related; type="application/dicom"',
        )
        message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        parts = [part.get_payload(decode=True) for part in message.walk() if not part.is_multipart()]
        if len(parts) != 1:
            raise ValueError(f"WADO-RS answered {len(parts)} parts for one instance")
        return pydicom.dcmread(pydicom.filebase.DicomBytesIO(parts[0]))

    @staticmethod
    def wait(condition, timeout: float, what: str, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            time.sleep(interval)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}")

    def screened(self, study_uid: str, timeout: float = 900) -> list[dict]:
        """Wait until the gateway has a record on every CT series of the study; returns the records."""

        def records():
            found = json.loads(self.http("/tools/lookup", data=study_uid.encode())[0])
            if not found:
                return None
            series = self.get(f"/studies/{found[0]['ID']}/series") or []
            ct = [s for s in series if s["MainDicomTags"].get("Modality") == "CT"]
            marks = [self.get(f"/series/{s['ID']}/metadata/GFScreen") for s in ct]
            return marks if ct and all(marks) else None

        return self.wait(records, timeout, f"the gateway to screen study {study_uid}", interval=2)
