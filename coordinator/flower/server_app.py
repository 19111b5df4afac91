"""The coordinator's Flower ServerApp: runs one job on the SuperLink's Grid and records the outcome.

``flwr run`` starts it with two run-config values (``coordinator/flower_app/pyproject.toml``):
``mode`` ("study", "collect" or "train") and ``job``, the path of a JSON job file that the
coordinator command wrote (:class:`StudyJob` or a training job). The ServerApp runs on the
coordinator host, next to the results store, so the job names local files. It always writes
``<out>/outcome.json`` (atomically) so the command that started the run can tell what happened:
``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.flower.jobs import StudyJob
from optima_common.errors import CoordinatorError
from optima_common.fileio import write_atomic

log = logging.getLogger(__name__)

app = ServerApp()

OUTCOME_FILE = "outcome.json"


def write_outcome(out: Path, doc: dict) -> Path:
    return write_atomic(out / OUTCOME_FILE, json.dumps(doc, indent=2, default=str).encode("utf-8"))


def run_study_job(grid: Grid, job: StudyJob, *, collect_only: bool = False) -> dict:
    from coordinator.flower.study import require_complete, send_study
    from coordinator.store import ResultsStore
    from optima_common.bundle import read_manifest

    manifest = read_manifest(job.manifest)
    store = ResultsStore.open(job.store)
    with_cox = job.cox and "sclc_study" in manifest.analyses
    cox_first: dict[int, dict] | None = {} if with_cox else None  # the fit's first answers, with the releases
    started = time.perf_counter()
    outcome = send_study(grid, manifest, store=store, trust_dir=job.trust, reply_timeout=job.reply_timeout,
                         node_wait=job.node_wait, bundles_dir=job.out / "bundles", collect_only=collect_only,
                         cox_first=cox_first)
    doc = {"ok": outcome.complete, "outcome": outcome.model_dump(), "study_seconds": round(time.perf_counter() - started, 3)}
    require_complete(outcome)
    sections: tuple[str, ...] = ()
    if with_cox:
        from coordinator.flower.cox_rounds import cox_section, fit_network_cox

        done = {s.site for s in outcome.sites if s.status == "done"}
        started = time.perf_counter()
        fit, notes = fit_network_cox(grid, manifest.manifest_id, done, timeout=job.cox_timeout, first=cox_first)
        doc["cox_seconds"] = round(time.perf_counter() - started, 3)  # the fit's rounds of messages, end to end
        doc["cox_evaluations"] = fit.evaluations if fit is not None else 0
        sections = (cox_section(fit, notes),)
        doc["cox_notes"] = notes
        if fit is not None:
            write_atomic(job.out / "cox.csv", fit.to_frame().to_csv(index=False).encode("utf-8"))
            doc["cox"] = str(job.out / "cox.csv")
    if job.report:
        from coordinator.report import write_report

        paths = write_report(store, manifest.manifest_id, job.out, extra_sections=sections)
        doc["report"] = str(paths.html)
        doc["results"] = str(paths.csv)
    return doc


@app.main()
def main(grid: Grid, context: Context) -> None:
    mode = str(context.run_config.get("mode", "study"))
    job_path = Path(str(context.run_config.get("job", "")))
    try:
        raw = json.loads(job_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CoordinatorError(f"cannot read the job file {job_path}: {exc}") from None
    out = Path(raw.get("out", "."))
    try:
        if mode in ("study", "collect"):
            doc = run_study_job(grid, StudyJob.model_validate(raw), collect_only=mode == "collect")
        elif mode == "train":
            from coordinator.flower.train_job import run_training_job

            doc = run_training_job(grid, raw)
        else:
            raise CoordinatorError(f"unknown mode {mode!r}; expected study, collect or train")
    except Exception as exc:  # the starting command reads this; the ServerApp also logs it
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        write_outcome(out, {"ok": False, "error": first, "error_type": type(exc).__name__,
                            "exit_code": getattr(exc, "exit_code", 1),
                            **({"outcome": exc.outcome} if hasattr(exc, "outcome") else {})})
        raise
    write_outcome(out, doc)
