"""Scheduled studies: ``schedules.toml`` (spec, sites, cron, quorum) and the ``coordinator serve`` loop.

A schedule file lists studies to run again as the sites' databases refresh::

    [[study]]
    name = "sclc-monthly"                       # unique; the runs of this entry are versioned
    spec = "cohort_definitions/studies/sclc_stage_i_ii.json"   # relative to this file
    sites = ["site_north", "site_south"]
    cron = "0 3 1 * *"                          # 03:00 UTC on the 1st of every month
    min_sites = 2                               # default: all sites
    analyses = ["cohort_counts", "sclc_study"]

An entry is *due* when it has never run, or when its cron fired since its last run (missed
fires are not replayed one by one: one run catches up). Each run signs a fresh manifest and
records it in the store as the study's next version (:func:`coordinator.store.ops.start_run`);
the outcome (complete, incomplete, failed) is recorded when it ends. The site's study spec
itself is not changed: the schedule lives only at the coordinator.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from coordinator.store import ResultsStore, ops
from optima_common.errors import CoordinatorError
from optima_common.fileio import read_document, validate_document

log = logging.getLogger(__name__)


class ScheduledStudy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    spec: Path
    sites: list[str] = Field(min_length=1)
    cron: str
    min_sites: int | None = Field(None, ge=1)
    analyses: list[str] = Field(default_factory=lambda: ["cohort_counts", "sclc_study"])
    extra_cohorts: list[str] = Field(default_factory=list)
    min_cell_count: int | None = Field(None, ge=2)
    valid_hours: float = Field(48, gt=0)
    reply_timeout: float = Field(1800, gt=0)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a cron expression (minute hour day month weekday, e.g. '0 3 * * 1')")
        return v

    @model_validator(mode="after")
    def _quorum(self) -> ScheduledStudy:
        if self.min_sites is not None and self.min_sites > len(self.sites):
            raise ValueError(f"min_sites {self.min_sites} exceeds the {len(self.sites)} sites")
        return self


class ScheduleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study: list[ScheduledStudy] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ScheduleFile:
        names = [s.name for s in self.study]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"study names must be unique; repeated: {', '.join(dup)}")
        return self


class RunResult(BaseModel):
    name: str
    study_id: str
    manifest_id: str
    version: int
    state: str
    detail: str | None = None


def load_schedule(path: str | Path) -> ScheduleFile:
    path = Path(path)
    doc = read_document(path, fmt="toml", what="schedule file", error=CoordinatorError)
    sched = validate_document(ScheduleFile, doc, path, what="schedule", error=CoordinatorError)
    for s in sched.study:
        s.spec = (path.parent / s.spec).resolve()
        if not s.spec.is_file():
            raise CoordinatorError(f"{path}: study {s.name!r}: spec file {s.spec} not found")
    return sched


def _utc(now: dt.datetime | None) -> dt.datetime:
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise CoordinatorError("times must carry a time zone (e.g. 2026-12-01T03:00:00+00:00)")
    return now.astimezone(dt.UTC)


def next_run(entry: ScheduledStudy, store: ResultsStore, now: dt.datetime | None = None) -> dt.datetime:
    """When the entry is next due: now if it never ran, else the first cron fire after its last run."""
    past = ops.runs(store, schedule_name=entry.name)
    if not past:
        return _utc(now)
    return croniter(entry.cron, past[-1].started_at).get_next(dt.datetime).astimezone(dt.UTC)


def due(schedule: ScheduleFile, store: ResultsStore, now: dt.datetime | None = None) -> list[ScheduledStudy]:
    now = _utc(now)
    return [s for s in schedule.study if next_run(s, store, now) <= now]


#: runs one signed manifest over the network; returns (complete, one-line detail)
Runner = Callable[[object, ScheduledStudy, ops.StudyRun], tuple[bool, str]]


def run_due(schedule: ScheduleFile, store: ResultsStore, *, key, runner: Runner,
            now: dt.datetime | None = None) -> list[RunResult]:
    """Run every due entry once: sign a fresh manifest, record the next version, run, record the end."""
    from coordinator.flower.study import manifest_from_spec
    from coordinator.trust.manifest import sign_manifest

    now = _utc(now)
    results = []
    for entry in due(schedule, store, now):
        manifest = manifest_from_spec(entry.spec, target_sites=entry.sites, min_sites=entry.min_sites or len(entry.sites),
                                      analyses=entry.analyses, extra_cohorts=entry.extra_cohorts,
                                      min_cell_count=entry.min_cell_count, valid_for=dt.timedelta(hours=entry.valid_hours))
        signed = sign_manifest(manifest, key)
        run = ops.start_run(store, signed, schedule_name=entry.name, at=now)
        log.info("running %s as %s version %d", entry.name, signed.study_id, run.version)
        try:
            complete, detail = runner(signed, entry, run)
            state = "complete" if complete else "incomplete"
        except Exception as exc:  # noqa: BLE001 - one failed run must not stop the schedule
            state, detail = "failed", (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        ops.finish_run(store, signed.manifest_id, state, detail or None)
        results.append(RunResult(name=entry.name, study_id=signed.study_id, manifest_id=signed.manifest_id,
                                 version=run.version, state=state, detail=detail or None))
    return results


def serve(schedule: ScheduleFile, store: ResultsStore, *, key, runner: Runner, once: bool = False,
          until: dt.datetime | None = None, poll: float = 60.0,
          clock: Callable[[], dt.datetime] | None = None, sleep: Callable[[float], None] = time.sleep,
          report: Callable[[RunResult], None] = lambda r: None) -> list[RunResult]:
    """Run due studies once (``once``) or until ``until``, sleeping until the next one is due."""
    if not once and until is None:
        raise CoordinatorError("give --once or --until TIME (serve never runs unbounded from a test or a cron job)")
    clock = clock or (lambda: dt.datetime.now(dt.UTC))
    done: list[RunResult] = []
    while True:
        now = _utc(clock())
        if until is not None and now >= _utc(until):
            return done
        for r in run_due(schedule, store, key=key, runner=runner, now=now):
            report(r)
            done.append(r)
        if once:
            return done
        now = _utc(clock())
        wake = min([next_run(s, store, now) for s in schedule.study] + [_utc(until)])
        sleep(max(0.0, min(poll, (wake - now).total_seconds())) or 0.01)
