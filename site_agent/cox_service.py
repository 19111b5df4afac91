"""The site's answers to federated Cox requests (Flower ``query.cox``), behind its guard.

A coordinator fitting the site-stratified Cox model of a study asks each site, at its current
coefficients, for the log partial likelihood, score and information of the site's stratum
(:func:`site_agent.analyses.cox.site_score_information`). The site answers only:

- for a manifest it accepted, whose bundle it has already released (in review mode: after a
  person approved it), and which ran ``sclc_study`` with a study spec it approved;
- within the spec's budget of answers per manifest (counted on disk, so a restarted node or
  a new ClientApp process per message does not reset it), with at least the spec's minimum
  number of events, and for a finite ``beta`` of the right length with no |beta| above 20
  (:class:`site_agent.analyses.cox.CoxGuard`).

Each answer and refusal is audited (counts and reasons only).
"""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path

import numpy as np

from optima_common.bundle import StudyManifest
from optima_common.fileio import write_atomic
from site_agent.analyses.cox import CoxGuard, CoxRefusal, SiteCoxData
from site_agent.audit import MAX_STR, AuditLog
from site_agent.config import SiteConfig
from site_agent.governance.released import accepted_path, released_path
from site_agent.policy import AUDIT_FILE, PolicyRefusal, approved_study_spec

BUDGET_FILE = "cox_budget.sqlite3"
CACHE_DIR = "cox_cache"  # per-manifest design matrices (person-level: never leave the site)


class CoxBudget:
    """Answers given per manifest, persisted in the site's state folder."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / BUDGET_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.path) as con:
            con.execute("CREATE TABLE IF NOT EXISTS cox_answers (manifest_id TEXT PRIMARY KEY, answers INTEGER)")

    def used(self, manifest_id: str) -> int:
        with sqlite3.connect(self.path) as con:
            row = con.execute("SELECT answers FROM cox_answers WHERE manifest_id = ?", (manifest_id,)).fetchone()
        return int(row[0]) if row else 0

    def set(self, manifest_id: str, answers: int) -> None:
        with sqlite3.connect(self.path) as con:
            con.execute("INSERT INTO cox_answers VALUES (?, ?) ON CONFLICT(manifest_id) DO UPDATE SET answers = ?",
                        (manifest_id, answers, answers))


def cox_columns(config: SiteConfig, manifest_id: str) -> tuple[str, ...]:
    """The design's column names (no data, no budget used): what the coordinator fits."""
    manifest = _released_study_manifest(config, manifest_id, released_path(config.state_dir, manifest_id))
    guard, _ = _guard(config, manifest)
    return guard.data.columns


def answer_cox(config: SiteConfig, manifest_id: str, beta: list[float]) -> tuple[float, np.ndarray, np.ndarray]:
    """(loglik, score, information) of this site's stratum, or :class:`CoxRefusal` (audited)."""
    audit = AuditLog(config.state_dir / AUDIT_FILE)
    started = time.perf_counter()
    try:
        manifest = _released_study_manifest(config, manifest_id, released_path(config.state_dir, manifest_id))
        guard, study_id = _guard(config, manifest)
        budget = CoxBudget(config.state_dir)
        guard._answers[manifest_id] = budget.used(manifest_id)
        out = guard.answer(manifest_id, np.asarray(beta, dtype=float))
        budget.set(manifest_id, guard.answers_given(manifest_id))
    except (CoxRefusal, PolicyRefusal) as exc:
        audit.append("cox_refused", manifest_id=manifest_id[:80], detail={"reason": str(exc)[:MAX_STR]})
        raise CoxRefusal(str(exc)) from None
    audit.append("cox_answered", manifest_id=manifest_id, study_id=study_id,
                 detail={"answers": guard.answers_given(manifest_id), "budget": guard.max_iterations,
                         "site_ms": round(1000 * (time.perf_counter() - started), 2)})  # this answer's cost here
    return out


def _released_study_manifest(config: SiteConfig, manifest_id: str, released: Path) -> StudyManifest:
    path = accepted_path(config.state_dir, manifest_id)
    if not path.is_file() or not released.is_file():
        raise CoxRefusal(f"Cox refused: manifest {manifest_id[:40]} was not accepted and released at this site")
    manifest = StudyManifest.model_validate_json(path.read_text(encoding="utf-8"))
    if "sclc_study" not in manifest.analyses:
        raise CoxRefusal(f"Cox refused: manifest {manifest_id[:40]} did not run sclc_study")
    return manifest


def _spec_sha256(manifest: StudyManifest) -> str:
    return str((manifest.parameters.get("sclc_study") or {}).get("spec_sha256", ""))


def keep_study_design(config: SiteConfig, manifest: StudyManifest, data: SiteCoxData, cox) -> None:
    """Keep the design of this manifest's Cox fit when the study runs (the patients it released;
    ``cox``: the spec's Cox section, for its limits), so the fit's first request costs what the
    others do. Every request still checks the manifest, its release and the spec's approval."""
    write_cox_cache(cox_cache_path(config.state_dir, manifest.manifest_id), data, cox.max_iterations,
                    cox.min_events, spec_sha256=_spec_sha256(manifest))


def _guard(config: SiteConfig, manifest: StudyManifest) -> tuple[CoxGuard, str]:
    """The guard over this manifest's design, from the cache the study run (or the first request)
    wrote; without one it is built from the spec and the CDM (the heavy imports included). Each
    request runs in a fresh ClientApp process."""
    sha = _spec_sha256(manifest)
    spec_path = approved_study_spec(config, sha)  # still an approved spec, on every request
    cache = cox_cache_path(config.state_dir, manifest.manifest_id)
    cached = read_cox_cache(cache, sha)
    if cached is None:  # the first request of this fit builds the design from the CDM, later ones reuse it
        from site_agent.analyses.study_run import site_cox_data, study_patients
        from site_agent.study_spec import load_study

        study = load_study(spec_path)
        with config.open_cdm() as cdm:
            patients, _ = study_patients(cdm, study)
        cached = site_cox_data(study, patients), study.spec.cox.max_iterations, study.spec.cox.min_events
        write_cox_cache(cache, *cached, spec_sha256=sha)
    data, max_iterations, min_events = cached
    return CoxGuard(max_iterations=max_iterations, min_events=min_events, data=data), manifest.study_id


def cox_cache_path(state_dir: Path, manifest_id: str) -> Path:
    safe = "".join(ch for ch in manifest_id if ch.isalnum() or ch in "-_")[:80] or "manifest"
    return Path(state_dir) / CACHE_DIR / f"{safe}.npz"


def write_cox_cache(path: Path, data: SiteCoxData, max_iterations: int, min_events: int, *, spec_sha256: str) -> None:
    """The design matrix of one manifest's fit and its spec's limits, kept at the site (owner-only
    file, never sent)."""
    buf = io.BytesIO()
    np.savez(buf, X=data.X, time=data.time, event=data.event, columns=np.array(data.columns, dtype=str),
             limits=np.array([max_iterations, min_events], dtype=np.int64), spec_sha256=np.array(spec_sha256))
    write_atomic(path, buf.getvalue(), mode=0o600)


def read_cox_cache(path: Path, spec_sha256: str) -> tuple[SiteCoxData, int, int] | None:
    """(design, max_iterations, min_events) cached for this spec, or None (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["spec_sha256"]) != spec_sha256:
                return None
            data = SiteCoxData(X=z["X"], time=z["time"], event=z["event"], columns=tuple(str(c) for c in z["columns"]))
            return data, int(z["limits"][0]), int(z["limits"][1])
    except (OSError, ValueError, KeyError):  # unreadable or from another version: rebuild it
        return None
