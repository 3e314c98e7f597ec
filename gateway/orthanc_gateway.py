"""GF-Screen behind a PACS without the MONAI Deploy Informatics Gateway: an Orthanc Python plugin.

Orthanc (Debian packages ``orthanc``, ``orthanc-python``, ``orthanc-dicomweb``) is the DICOM router: the PACS or the
modality C-STOREs CT studies to it. When a study is stable (no new instance for Orthanc's ``StableAge`` seconds), this
plugin queues it; one worker thread exports the study's CT series that have not been screened yet (and the study's
earlier SR outputs, so that a new SR names the one it replaces), runs the Deploy app on them in a child process
(``python app -i ... -o ... -m ...``: the same command as the MAP, so a crash or a hung model never takes the router
down), stores the SEG and SR back into Orthanc (same study) and forwards them to the configured DICOM destination.

Every CT series gets the ``GFScreen`` metadata in Orthanc (``screened``, ``not screened`` or ``failed``, the app's
reason, the outputs' SOP Instance UIDs and the seconds of each step), so a study re-stabilising after its outputs are
stored back is not screened again, and a restart re-queues the studies that were never finished. The study itself is
never modified or deleted: on any failure it stays in Orthanc, the failure is logged with its Orthanc ID and Study
Instance UID (never patient identifiers), and ``POST /gf-screen/studies/<orthanc id>/screen`` queues it again.

Configuration: the ``GFScreen`` section of the Orthanc configuration (``gateway/orthanc.json``; docs/deploy.md,
"PACS integration"). The plugin uses the standard library only: the embedded interpreter is the system Python.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import orthanc

METADATA = "GFScreen"
SCREENED, NOT_SCREENED, FAILED = "screened", "not screened", "failed"
# ``python app`` exit statuses (app.cases.ExitStatus): what the gateway does with each
APP_OK, APP_NO_SCREENABLE_SERIES, APP_PARTIAL = 0, 3, 4


def _settings() -> dict:
    section = json.loads(orthanc.GetConfiguration()).get("GFScreen", {})
    missing = [key for key in ("Python", "AppDir", "ModelPath", "WorkDir") if not section.get(key)]
    if missing:
        raise RuntimeError(f"GFScreen configuration lacks {', '.join(missing)}")
    return {
        "python": section["Python"],
        "app_dir": section["AppDir"],
        "model_path": section["ModelPath"],
        "work_dir": Path(section["WorkDir"]),
        "output_dir": Path(section["OutputDir"]) if section.get("OutputDir") else None,
        "destination": section.get("Destination") or None,
        "timeout": float(section.get("TimeoutSeconds", 3600)),
        "environment": {str(k): str(v) for k, v in section.get("Environment", {}).items()},
    }


def _get(uri: str):
    return json.loads(orthanc.RestApiGet(uri))


def _status(series_id: str) -> dict | None:
    """The series' GFScreen record, or None when the gateway has never finished it."""
    try:
        return json.loads(orthanc.RestApiGet(f"/series/{series_id}/metadata/{METADATA}"))
    except orthanc.OrthancException:
        return None


def _mark(series_id: str, record: dict) -> None:
    orthanc.RestApiPut(f"/series/{series_id}/metadata/{METADATA}", json.dumps(record))


class Gateway:
    """The queue of stable studies and the worker that screens them one at a time (the app uses every core)."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.pending: queue.Queue[str | None] = queue.Queue()
        self.queued: set[str] = set()
        self.lock = threading.Lock()
        self.current: str | None = None
        self.counts = {SCREENED: 0, NOT_SCREENED: 0, FAILED: 0}
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self.worker = threading.Thread(target=self._work, name="gf-screen", daemon=True)

    def start(self) -> None:
        self.settings["work_dir"].mkdir(parents=True, exist_ok=True)
        self.worker.start()
        for study_id in _get("/studies"):
            if self._unscreened(study_id):
                self.enqueue(study_id)

    def stop(self) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()
        self.pending.put(None)

    def enqueue(self, study_id: str) -> None:
        with self.lock:
            if study_id in self.queued:
                return
            self.queued.add(study_id)
        self.pending.put(study_id)

    def state(self) -> dict:
        with self.lock:
            return {"queued": sorted(self.queued), "current": self.current, "finished": dict(self.counts)}

    def _unscreened(self, study_id: str) -> list[dict]:
        series = _get(f"/studies/{study_id}/series")
        return [s for s in series if s["MainDicomTags"].get("Modality") == "CT" and _status(s["ID"]) is None]

    def _work(self) -> None:
        while True:
            study_id = self.pending.get()
            if study_id is None or self.stopping:
                return
            with self.lock:
                self.queued.discard(study_id)
                self.current = study_id
            try:
                self.screen(study_id)
            except Exception as e:  # noqa: BLE001 - the router keeps running; the study stays for a retry
                orthanc.LogError(f"GF-Screen: study {study_id} not screened: {type(e).__name__}: {e}")
            finally:
                with self.lock:
                    self.current = None

    def screen(self, study_id: str) -> None:
        ct = self._unscreened(study_id)
        if not ct:
            return
        study_uid = _get(f"/studies/{study_id}")["MainDicomTags"].get("StudyInstanceUID", "?")
        label = f"study {study_id} ({study_uid})"
        timings: dict[str, float] = {}
        work = Path(tempfile.mkdtemp(prefix=f"{study_id[:8]}-", dir=self.settings["work_dir"]))
        try:
            start = time.perf_counter()
            self._export(study_id, ct, work / "input")
            timings["export"] = time.perf_counter() - start
            start = time.perf_counter()
            status, log_tail = self._run_app(work)
            timings["app"] = time.perf_counter() - start
            if self.stopping:
                orthanc.LogWarning(f"GF-Screen: {label} interrupted by shutdown; queued again at the next start.")
                return
            if status not in (APP_OK, APP_PARTIAL, APP_NO_SCREENABLE_SERIES):
                self._fail(ct, label, f"the app exited with status {status}: {log_tail}", timings)
                return
            cases = self._cases(work / "output")
            start = time.perf_counter()
            stored = self._store(study_id, cases)
            timings["store"] = time.perf_counter() - start
            forward_error = None
            if self.settings["destination"] and stored:
                start = time.perf_counter()
                forward_error = self._forward([i for ids in stored.values() for i in ids])
                timings["forward"] = time.perf_counter() - start
            self._record(ct, cases, stored, log_tail, forward_error, timings)
            self._keep(work / "output", study_uid)
            steps = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
            screened = sum(1 for s in ct if s["MainDicomTags"].get("SeriesInstanceUID") in cases)
            orthanc.LogWarning(f"GF-Screen: {label}: {screened}/{len(ct)} CT series screened ({steps}).")
            if forward_error:
                orthanc.LogError(
                    f"GF-Screen: {label}: outputs stored in Orthanc but not forwarded to "
                    f"{self.settings['destination']}: {forward_error}"
                )
        except Exception as e:  # noqa: BLE001 - recorded on the series; the study itself is untouched
            self._fail(ct, label, f"{type(e).__name__}: {e}", timings)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _export(self, study_id: str, ct: list[dict], folder: Path) -> None:
        """The CT series to screen and the study's earlier SR objects (the app links a new SR to the one it
        replaces); other series (SEG, secondary captures) are left in Orthanc."""
        earlier = [s for s in _get(f"/studies/{study_id}/series") if s["MainDicomTags"].get("Modality") == "SR"]
        for number, series in enumerate(ct + earlier):
            target = folder / f"{number:03d}"
            target.mkdir(parents=True)
            for instance_id in series["Instances"]:
                (target / f"{instance_id}.dcm").write_bytes(orthanc.RestApiGet(f"/instances/{instance_id}/file"))

    def _run_app(self, work: Path) -> tuple[int, str]:
        """``python app`` in a child process; returns its exit status and the last lines of its log."""
        s = self.settings
        env = {**os.environ, **s["environment"]}
        args = [s["python"], "app", "-i", str(work / "input"), "-o", str(work / "output"), "-m", s["model_path"]]
        with open(work / "app.log", "wb") as log:
            self.child = subprocess.Popen(args, cwd=s["app_dir"], env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                status = self.child.wait(timeout=s["timeout"])
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
                status = f"timeout after {s['timeout']:.0f} s"
            finally:
                self.child = None
        lines = [line for line in (work / "app.log").read_text(errors="replace").splitlines() if line.strip()]
        reasons = [line for line in lines if "Not screened" in line or "ERROR" in line or "Cannot" in line]
        return status, " | ".join((reasons or lines)[-3:])

    @staticmethod
    def _cases(output: Path) -> dict[str, dict]:
        """The app's published case folders: source Series Instance UID -> findings record and DICOM files."""
        cases = {}
        if not output.is_dir():
            return cases
        for folder in sorted(p for p in output.iterdir() if p.is_dir() and not p.name.startswith(".")):
            findings = json.loads(next(folder.glob("*.json")).read_text())
            cases[findings["source_series_instance_uid"]] = {
                "findings": findings,
                "files": sorted((folder / "dicom").glob("*.dcm")),
            }
        return cases

    @staticmethod
    def _store(study_id: str, cases: dict[str, dict]) -> dict[str, list[str]]:
        """Store each case's SEG and SR in Orthanc; they must land in the screened study."""
        stored = {}
        for series_uid, case in cases.items():
            ids = []
            for path in case["files"]:
                answer = json.loads(orthanc.RestApiPost("/instances", path.read_bytes()))
                if answer["ParentStudy"] != study_id:
                    raise RuntimeError(f"{path.name} of series {series_uid} was stored outside the screened study")
                ids.append(answer["ID"])
            stored[series_uid] = ids
        return stored

    def _forward(self, instance_ids: list[str]) -> str | None:
        destination = self.settings["destination"]
        try:
            body = json.dumps({"Resources": instance_ids, "Synchronous": True})
            orthanc.RestApiPost(f"/modalities/{destination}/store", body)
        except orthanc.OrthancException as e:
            return str(e)
        return None

    def _record(self, ct, cases, stored, log_tail, forward_error, timings) -> None:
        for series in ct:
            uid = series["MainDicomTags"].get("SeriesInstanceUID")
            if uid in cases:
                findings = cases[uid]["findings"]
                record = {
                    "status": SCREENED,
                    "lesions": len(findings.get("lesions", [])),
                    "outputs": {k: v["sop_instance_uid"] for k, v in findings["outputs"].items() if v},
                    "orthanc_instances": stored.get(uid, []),
                    "forwarded": bool(self.settings["destination"]) and forward_error is None,
                }
            else:
                record = {"status": NOT_SCREENED, "reason": log_tail}
            record["seconds"] = {k: round(v, 2) for k, v in timings.items()}
            _mark(series["ID"], record)
            self.counts[record["status"]] += 1

    def _fail(self, ct: list[dict], label: str, reason: str, timings: dict) -> None:
        orthanc.LogError(f"GF-Screen: {label} not screened; the study stays in Orthanc: {reason}")
        for series in ct:
            _mark(series["ID"], {"status": FAILED, "reason": reason, "seconds": timings})
            self.counts[FAILED] += 1  # per series, as _record counts

    def _keep(self, output: Path, study_uid: str) -> None:
        """Move the app's case folders (findings JSON + DICOM) to OutputDir/<StudyInstanceUID>/ when configured."""
        if self.settings["output_dir"] is None or not output.is_dir():
            return
        target = self.settings["output_dir"] / study_uid
        target.mkdir(parents=True, exist_ok=True)
        for folder in output.iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                shutil.rmtree(target / folder.name, ignore_errors=True)
                shutil.move(str(folder), target / folder.name)


GATEWAY: Gateway | None = None


def on_change(change_type, level, resource_id) -> None:
    global GATEWAY
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        GATEWAY = Gateway(_settings())
        GATEWAY.start()
        orthanc.LogWarning("GF-Screen gateway started.")
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED and GATEWAY is not None:
        GATEWAY.stop()
    elif change_type == orthanc.ChangeType.STABLE_STUDY and GATEWAY is not None:
        GATEWAY.enqueue(resource_id)


def on_status(output, uri, **request) -> None:
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    output.AnswerBuffer(json.dumps(GATEWAY.state() if GATEWAY else {}), "application/json")


def on_screen(output, uri, **request) -> None:
    """Queue a study again: its failed or not screened CT series lose their record and are screened anew."""
    if request["method"] != "POST":
        output.SendMethodNotAllowed("POST")
        return
    study_id = request["groups"][0]
    for series in _get(f"/studies/{study_id}/series"):
        record = _status(series["ID"])
        if record is not None and record["status"] != SCREENED:
            orthanc.RestApiDelete(f"/series/{series['ID']}/metadata/{METADATA}")
    GATEWAY.enqueue(study_id)
    output.AnswerBuffer(json.dumps({"queued": study_id}), "application/json")


orthanc.RegisterOnChangeCallback(on_change)
orthanc.RegisterRestCallback("/gf-screen/status", on_status)
orthanc.RegisterRestCallback("/gf-screen/studies/([^/]+)/screen", on_screen)
