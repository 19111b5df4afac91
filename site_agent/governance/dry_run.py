"""What a manifest would run here, and whether the policy would accept it: nothing is run.

:func:`dry_run` reads a manifest, applies the site's policy through
:meth:`ManifestPolicy.evaluate` (same rules as a real query, but the nonce is only looked up,
never claimed, so the real query can still come), renders each cohort's SQL for the site's
dialect with the same code the agent runs (:func:`site_agent.cohorts.sql.cohort_sql`), and
writes one ``dry_run`` audit entry. It never opens the CDM: the dialect comes from the URL.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from optima_common.bundle import StudyManifest, read_manifest
from optima_common.errors import ConfigError, OptimaError
from site_agent.audit import MAX_STR
from site_agent.cdm.connection import (
    DEFAULT_CDM_SCHEMA,
    DEFAULT_WRITE_SCHEMA,
    resolve_cdm_url,
)
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.cohorts.sql import cohort_sql
from site_agent.config import SiteConfig
from site_agent.policy import ManifestPolicy, PolicyRefusal


@dataclass(frozen=True)
class CohortPlan:
    cohort_definition_id: int
    name: str
    sha256: str
    approved: bool  # the hash is one the site approved
    problem: str | None  # why the policy would refuse this cohort (hash or approval), else None
    sql: tuple[str, ...]  # statements for the site's dialect ('' if they cannot be rendered)
    sql_error: str | None = None


@dataclass(frozen=True)
class DryRunReport:
    manifest: StudyManifest
    accepted: bool
    check: str | None  # the policy rule that refuses it
    reason: str | None
    effective_min_cell_count: int
    analyses: tuple[tuple[str, bool], ...]  # (analysis, allowed here)
    cohorts: tuple[CohortPlan, ...]
    dialect: str
    cdm_schema: str
    write_schema: str

    def to_json(self) -> dict:
        return {
            "manifest_id": self.manifest.manifest_id, "study_id": self.manifest.study_id,
            "study_version": self.manifest.study_version, "accepted": self.accepted, "check": self.check,
            "reason": self.reason, "effective_min_cell_count": self.effective_min_cell_count,
            "expires_at": self.manifest.expires_at.isoformat(), "target_sites": list(self.manifest.target_sites),
            "analyses": [{"name": a, "allowed": ok} for a, ok in self.analyses],
            "dialect": self.dialect, "cdm_schema": self.cdm_schema, "write_schema": self.write_schema,
            "cohorts": [{"cohort_definition_id": c.cohort_definition_id, "name": c.name, "sha256": c.sha256,
                         "approved": c.approved, "problem": c.problem, "sql": list(c.sql),
                         "sql_error": c.sql_error} for c in self.cohorts],
        }


def site_dialect(config: SiteConfig) -> tuple[str, str, str]:
    """(dialect, cdm schema, write schema) from the settings alone, without connecting."""
    try:
        dialect = make_url(resolve_cdm_url(config.cdm.url)).get_backend_name()
    except ArgumentError as exc:
        raise ConfigError(f"cdm.url cannot be parsed: {exc}") from None
    if dialect not in DEFAULT_CDM_SCHEMA:
        raise ConfigError(f"cdm.url: database {dialect!r} is not supported (duckdb or postgresql)")
    cdm_schema = (config.cdm.cdm_schema or DEFAULT_CDM_SCHEMA[dialect]).lower()
    return dialect, cdm_schema, (config.cdm.write_schema or DEFAULT_WRITE_SCHEMA).lower()


def _plan(policy: ManifestPolicy, c, dialect: str, cdm_schema: str, vocab_schema: str, write_schema: str) -> CohortPlan:
    try:
        policy._check_cohort(c)
        problem = None
    except PolicyRefusal as refusal:
        problem = f"{refusal.check}: {refusal.reason}"
    definition = CohortDefinition(c.cohort_definition_id, c.name, Path(f"manifest cohort {c.name}"), c.sha256,
                                  json.dumps(c.expression))
    try:
        sql, err = tuple(cohort_sql(definition, dialect=dialect, cdm_schema=cdm_schema, vocab_schema=vocab_schema,
                                    write_schema=write_schema)), None
    except OptimaError as exc:
        sql, err = (), str(exc)
    return CohortPlan(c.cohort_definition_id, c.name, c.sha256, c.sha256 in policy.approved, problem, sql, err)


def dry_run(config: SiteConfig, manifest: str | Path | StudyManifest, *, now: dt.datetime | None = None,
            audit: bool = True) -> DryRunReport:
    """Describe what ``manifest`` would run at this site and the policy's verdict (see module doc)."""
    m = manifest if isinstance(manifest, StudyManifest) else read_manifest(manifest)
    policy = ManifestPolicy.from_config(config)
    try:
        policy.evaluate(m, now=now)
        accepted, check, reason = True, None, None
    except PolicyRefusal as refusal:
        accepted, check, reason = False, refusal.check, refusal.reason
    dialect, cdm_schema, write_schema = site_dialect(config)
    vocab_schema = (config.cdm.vocab_schema or cdm_schema).lower()
    cohorts = tuple(_plan(policy, c, dialect, cdm_schema, vocab_schema, write_schema) for c in m.cohorts)
    report = DryRunReport(m, accepted, check, reason, config.effective_min_cell_count(m.min_cell_count),
                          tuple((a, a in config.allowed_analyses) for a in m.analyses), cohorts, dialect,
                          cdm_schema, write_schema)
    if audit:
        policy.audit.append("dry_run", manifest_id=m.manifest_id[:MAX_STR], study_id=m.study_id[:MAX_STR],
                            detail={"would_accept": accepted, "check": check,
                                    "reason": None if reason is None else reason[:MAX_STR]})
    return report


def format_report(r: DryRunReport, *, sql: bool = True) -> str:
    """The dry run as text for the operator."""
    m = r.manifest
    lines = [f"manifest {m.manifest_id}: study {m.study_id} {m.study_version}, issued {m.issued_at.isoformat()}, "
             f"expires {m.expires_at.isoformat()}",
             f"target sites: {', '.join(m.target_sites)}; min cell count: manifest {m.min_cell_count}, "
             f"effective here {r.effective_min_cell_count}",
             "verdict: " + ("WOULD BE ACCEPTED" if r.accepted else f"WOULD BE REFUSED ({r.check}): {r.reason}"),
             "analyses:"]
    lines += [f"  {a:<28} {'allowed' if ok else 'NOT ALLOWED at this site'}" for a, ok in r.analyses]
    lines.append(f"cohorts ({r.dialect}; CDM schema {r.cdm_schema}, cohorts written to {r.write_schema}.cohort):")
    for c in r.cohorts:
        state = "approved" if c.approved and c.problem is None else (c.problem or "not approved")
        lines.append(f"  {c.cohort_definition_id:>6} {c.name:<30} sha256 {c.sha256}  {state}")
        if c.sql_error:
            lines.append(f"         SQL cannot be rendered: {c.sql_error}")
        elif sql:
            lines.append(f"         -- {len(c.sql)} SQL statements:")
            lines += [f"         {s.strip()};" for s in c.sql]
        else:
            lines.append(f"         {len(c.sql)} SQL statements (--sql shows them)")
    lines.append("nothing was run against the CDM; the manifest id and nonce were not consumed")
    return "\n".join(lines)
