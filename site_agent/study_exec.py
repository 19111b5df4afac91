"""Run an accepted study manifest against the site's CDM and seal the result in a signed bundle.

This is the one road from a manifest to a release, shared by the Flower query handler
(:mod:`site_agent.client_app`) and the offline command ``site-agent run-manifest``:

1. the policy has accepted the manifest (:class:`site_agent.policy.Decision`); nothing here
   runs for a refused one;
2. each requested analysis runs through the same code as the command line (cohorts and
   diagnostics through :func:`run_diagnostics`, the SCLC study through :func:`run_study`),
   with ``max(manifest minimum, site floor)`` as the minimum cell count, so every table is
   suppressed before it is bound;
3. the release history withholds any count that an earlier release would reveal by
   subtraction (:mod:`site_agent.governance.release_history`), and the site's statement
   timeout bounds every query;
4. the bound result becomes a :class:`ResultBundle` with the CDM's provenance and the
   suppression record, signed with the site key.

Analyses: ``cohort_counts`` (cohort count and attrition), ``diagnostics`` (the whole cohort
diagnostics suite) and ``sclc_study`` (``parameters["sclc_study"]["spec_sha256"]`` names a
study spec that must lie, byte for byte, in a ``studies/`` folder next to an approved catalog;
its cohorts must be among the manifest's cohorts) and ``nlp_metastasis`` (radiology-report NLP over
``note``, aggregates only: :mod:`site_agent.nlp.cdm_run`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
from pathlib import Path

import pandas as pd

from optima_common import bundle
from optima_common.errors import ConfigError
from optima_common.fileio import write_atomic
from optima_common.results import SummarisedResult, bind_frames
from site_agent import __version__
from site_agent.cdm.connection import CdmConnection
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.config import SiteConfig
from site_agent.disclosure import (
    drop_extremes,
    release_with_history,
    site_facts,
)
from site_agent.policy import (  # noqa: F401
    ANALYSES,
    Decision,
    approved_study_spec,
    cohort_file_bytes,
    preflight,
)

log = logging.getLogger(__name__)

SUPPRESSION_METHOD = "optima-federated suppress + audit v2 (declared relations, LP)"


def manifest_definitions(decision: Decision, config: SiteConfig) -> list[CohortDefinition]:
    """The manifest's cohorts as definitions; the text is the approved file's when the site has it."""
    approved = config.approved_cohort_files()
    out = []
    for c in decision.cohorts:
        local = approved.get(c.sha256)
        text = local.read_text(encoding="utf-8") if local is not None else cohort_file_bytes(c.expression).decode()
        out.append(CohortDefinition(c.cohort_definition_id, c.name, local or Path(f"manifest:{c.name}"), c.sha256,
                                    text))
    return out


def provenance(cdm: CdmConnection, cdm_name: str) -> bundle.Provenance:
    from site_agent.cdm.check import describe_cdm

    report = describe_cdm(cdm)
    return bundle.Provenance(cdm_name=cdm_name, cdm_release_date=report.cdm_release_date,
                             vocabulary_version=report.vocabulary_version, package_version=__version__)


def run_analyses(cdm: CdmConnection, decision: Decision, config: SiteConfig, cdm_name: str,
                 secondary: list | None = None) -> SummarisedResult:
    """Every requested analysis, each suppressed at ``decision.effective_min_cell_count``, bound."""
    from site_agent.diagnostics import cohort_summary
    from site_agent.diagnostics.runner import run_diagnostics

    minimum = decision.effective_min_cell_count
    spec_path = preflight(decision, config)  # again: run_analyses is also called on its own
    definitions = manifest_definitions(decision, config)
    quiet = lambda _msg: None
    runs = []
    if "diagnostics" in decision.analyses:
        runs.append(run_diagnostics(cdm, definitions, out=None, min_cell_count=minimum, cdm_name=cdm_name,
                                    progress=quiet))
    elif "cohort_counts" in decision.analyses:
        runs.append(run_diagnostics(cdm, definitions, out=None, min_cell_count=minimum, cdm_name=cdm_name,
                                    diagnostics=cohort_summary.DIAGNOSTICS[:2], progress=quiet))
    if "sclc_study" in decision.analyses:
        from site_agent.cox_service import keep_study_design

        run, cox_spec = _run_sclc(cdm, spec_path, cdm_name, minimum)
        runs.append(run)
        keep_study_design(config, decision.manifest, run.cox_design, cox_spec)
    if "genomics_profile" in decision.analyses:
        runs.append(_run_genomics(config, cdm, cdm_name, minimum))
    if "nlp_metastasis" in decision.analyses:  # radiology-report NLP (needs the nlp extra)
        from site_agent.nlp.cdm_run import run_for_manifest

        runs.append(run_for_manifest(cdm, cdm_name, minimum))
    parts = [r.result for r in runs]
    if secondary is not None:
        secondary.extend(r.secondary for r in runs if r.secondary is not None)
    if not parts:
        return SummarisedResult.empty()
    return bind_frames([(p.data, p.settings) for p in parts])


def _run_sclc(cdm: CdmConnection, spec_path: Path | None, cdm_name: str, minimum: int):
    from site_agent.analyses.study_run import run_study
    from site_agent.study_spec import load_study

    assert spec_path is not None  # preflight found the approved spec
    study = load_study(spec_path)
    with tempfile.TemporaryDirectory(prefix="optima-study-") as tmp:  # only the released tables are used
        return (run_study(cdm, study, Path(tmp), cdm_name=cdm_name, site_min_cell_count=minimum, plots=False),
                study.spec.cox)


def _run_genomics(config: SiteConfig, cdm: CdmConnection, cdm_name: str, minimum: int):
    from types import SimpleNamespace

    from site_agent.genomics.profile import run_profile

    g = config.genomics
    assert g is not None  # preflight refused a site without [genomics]
    run = run_profile(g.maf, g.expression, g.linkage, clinical=g.clinical, cdm=cdm if g.clinical is None else None,
                      cdm_name=cdm_name, min_cell_count=minimum, actionability=g.actionability,
                      top_genes=g.top_genes, pair_genes=g.pair_genes)
    return SimpleNamespace(result=run.result, secondary=None)


def execute(decision: Decision, config: SiteConfig, *, cdm_name: str | None = None) -> bundle.ResultBundle:
    """Run the accepted manifest and return the signed bundle (not yet released)."""
    from site_agent.diagnostics.runner import default_cdm_name
    from site_agent.governance.release_history import ReleaseHistory

    preflight(decision, config)  # policy before data: nothing below runs for a refused manifest
    try:
        conn = config.open_cdm()  # with the site's statement timeout
    except ConfigError as exc:
        raise ConfigError(f"site {config.site}: cannot open its CDM: {exc}") from None
    with conn as cdm:
        name = cdm_name or default_cdm_name(cdm)
        part_secondary: list = []
        result = run_analyses(cdm, decision, config, name, part_secondary)
        facts = site_facts(cdm, {c.cohort_definition_id: c.name for c in decision.cohorts})
        prov = provenance(cdm, name)
    minimum = decision.effective_min_cell_count
    if not config.release_extremes:
        result = drop_extremes(result, config.exact_quantiles_min_group)
    # rounding (site option), then the release history on the table as it will be released: nothing
    # released earlier may be subtracted from it to reveal a small count (rounded counts compared as
    # the intervals they stand for); then the audit over the whole bundle: tables of different
    # analyses, what the site knows (cohort overlap from its cohort table) and the history's cells
    history = ReleaseHistory(config.state_dir)
    protection, exact, guarded = release_with_history(result, minimum, history, round_to=config.round_counts_to,
                                                      facts=facts)
    if guarded.changed:
        log.info("release history withheld %d count(s) of manifest %s", len(guarded.blocked),
                 decision.manifest.manifest_id)
    result = protection.result
    if "genomics_profile" in decision.analyses:  # estimates tied to counts the bundle audit withheld
        from site_agent.genomics.release import linked_rules

        result = linked_rules(result)
    secondary_path(config.state_dir, decision.manifest.manifest_id).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(secondary_path(config.state_dir, decision.manifest.manifest_id),  # site-internal, no values
                 pd.concat([*part_secondary, protection.secondary_frame()], ignore_index=True)
                 .to_csv(index=False).encode("utf-8"))
    unsigned = bundle.ResultBundle(
        site=config.site, manifest_id=decision.manifest.manifest_id, manifest_sha256=decision.manifest_sha256,
        created_at=dt.datetime.now(dt.UTC), provenance=prov,
        suppression=bundle.SuppressionRecord(min_cell_count=decision.effective_min_cell_count,
                                             site_floor=config.min_cell_count, method=SUPPRESSION_METHOD),
        results_csv=result_csv_text(result))
    signed = bundle.sign(unsigned, config.site_private_key())
    history.record(result, decision.manifest.manifest_id, minimum=minimum,  # queued for review counts as released
                   exact=exact if len(exact.data) == len(result.data) else None)
    return signed


def secondary_path(state_dir: Path, manifest_id: str) -> Path:
    """Where the bundle-level secondary suppressions of a manifest are kept for the reviewer."""
    return Path(state_dir) / "secondary" / f"{hashlib.sha256(manifest_id.encode()).hexdigest()[:32]}.csv"


def result_csv_text(result: SummarisedResult) -> str:
    with tempfile.TemporaryDirectory(prefix="optima-csv-") as tmp:
        path = result.to_csv(Path(tmp) / "results.csv")
        return path.read_text(encoding="utf-8")
