"""``site-agent run-study``: the whole SCLC study at one site, aggregates only.

Flow: spec (validated, pinned to the catalog) -> cohorts (rebuilt only when stale) ->
per-patient frame and treatment pathways (site-internal) -> treatment patterns, outcomes
at horizons, cumulative incidence, Kaplan-Meier per treatment sequence -> disclosure
control (time tables, horizons, cell suppression) -> ``results.csv`` + plots.
The federated Cox fit needs the coordinator's iterations and runs over the network (or
in process in tests); a single site's run does not release Cox pieces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from optima_common.results import OVERALL, SummarisedResult, bind_frames
from site_agent.analyses.cox import SiteCoxData, design_matrix
from site_agent.analyses.outcomes import summarise_outcomes
from site_agent.analyses.patients import patient_frame
from site_agent.analyses.survival import plot_km, summarise_survival
from site_agent.analyses.treatment_patterns import (
    patient_pathways,
    plot_pathways,
    summarise_pathway_frame,
)
from site_agent.cdm.check import validate_cdm
from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.fingerprint import cdm_fingerprint
from site_agent.cohorts import build_cohorts, cohort_attrition
from site_agent.cohorts.build import ensure_results_tables
from site_agent.cohorts.concept_sets import resolve_concept_set_sql
from site_agent.cohorts.state import stale_cohorts
from site_agent.diagnostics.base import settings_row
from site_agent.diagnostics.runner import default_cdm_name
from site_agent.disclosure import ATTRITION, horizon_days, release_control
from site_agent.study_spec import LoadedStudy

log = logging.getLogger(__name__)
DEFAULT_SITE_MIN_CELL_COUNT = 5  # used when a caller passes no site minimum; a site's own floor is in its site.toml
SEQUENCE_LINES = 2  # survival strata: the first two treatment lines


@dataclass(frozen=True)
class StudyRun:
    out_dir: Path
    results_csv: Path
    plots: tuple[Path, ...]
    patients: int
    min_cell_count: int
    result: SummarisedResult
    secondary: pd.DataFrame | None = None  # secondary suppressions and the relation behind each
    cox_design: SiteCoxData | None = None  # person-level, site-internal: kept for the network's Cox fit


def sequence_of(pathway: str, lines: int = SEQUENCE_LINES) -> str:
    return "-".join(pathway.split("-")[:lines])


def first_line_class(pathway: str, classes: dict[str, tuple[str, ...]], levels: tuple[str, ...]) -> str:
    """The class of a pathway's first line ("none" when untreated, "other" when not a level)."""
    if not pathway or pathway == "None":
        return "none"
    events = pathway.split("-")[0].split("+")
    found = [c for c, members in classes.items() if any(e in members for e in events)]
    label = "+".join(found) if found else "other"
    return label if label in levels else "other"


def site_cox_data(study: LoadedStudy, patients: pd.DataFrame) -> SiteCoxData:
    """The site's Cox design (first line, age per 10 years, sex, stage); time to death."""
    cox = study.spec.cox
    df = patients.assign(first_line=patients["pathway"].fillna("None").map(
        lambda p: first_line_class(p, cox.treatment_classes, cox.levels["first_line"])))
    df = df[df["sex"].isin(cox.levels["sex"])]
    X, names = design_matrix(df, cox.covariates, cox.levels, {"age": cox.age_scale_years})
    return SiteCoxData(X=X, time=df["time_death"].to_numpy(float), event=df["death"].to_numpy(),
                       columns=tuple(names))


def study_patients(cdm: CdmConnection, study: LoadedStudy) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(patients with their pathway and sequence, pathways): site-internal, never released.
    Only patients who meet the spec's age rule on their diagnosis date."""
    patients, pathways, _ = study_population(cdm, study)
    return patients, pathways


def study_population(cdm: CdmConnection, study: LoadedStudy) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(patients, pathways, patients removed by the age rule): site-internal, never released."""
    definitions = [study.target, study.progression, study.death]
    validate_cdm(cdm)  # a CDM without the OMOP tables fails here in one line, before anything is written
    ensure_results_tables(cdm)
    stale = stale_cohorts(cdm, definitions, cdm_fingerprint(cdm))
    if stale:
        build_cohorts(cdm, stale)
    events = {name: resolve_concept_set_sql(cdm, items) for name, items in study.event_concept_sets.items()}
    tp = study.spec.treatment_patterns
    pathways = patient_pathways(cdm, study.target.cohort_definition_id, events,
                                combination_window=tp.combination_window_days, era_gap=tp.era_gap_days,
                                max_lines=tp.max_lines)
    patients = patient_frame(cdm, target_id=study.target.cohort_definition_id,
                             death_id=study.death.cohort_definition_id,
                             progression_id=study.progression.cohort_definition_id,
                             stage_sets=study.stage_concept_sets)
    patients = patients.merge(pathways[["person_id", "pathway"]], on="person_id", how="left")
    patients["sequence"] = patients["pathway"].fillna("None").map(sequence_of)
    young = patients["age"] < study.spec.min_age_years
    removed = patients[young]
    if len(removed):
        log.info("age rule: %d patient(s) younger than %d on the diagnosis date left out",
                 len(removed), study.spec.min_age_years)
    kept = patients[~young].reset_index(drop=True)
    return kept, pathways[pathways["person_id"].isin(kept["person_id"])].reset_index(drop=True), removed


def age_rule_reason(min_age: int) -> str:
    return f"Age >= {min_age} on the diagnosis date (study rule, full date of birth)"


def study_attrition(cdm: CdmConnection, study: LoadedStudy, cdm_name: str, kept: pd.DataFrame
                    ) -> SummarisedResult:
    """The target cohort's attrition (``summarise_cohort_attrition``) with the study's age rule as
    its last step: how many the rule removed. Unsuppressed."""
    target = study.target
    steps = [(s.reason, s.number_records, s.number_subjects) for s in cohort_attrition(cdm, target)]
    per_person = cdm.query_df(
        f"SELECT subject_id AS person_id, count(*) AS n FROM {cdm.write_schema}.cohort "
        f"WHERE cohort_definition_id = {int(target.cohort_definition_id)} GROUP BY subject_id")
    records = int(per_person.loc[per_person["person_id"].isin(kept["person_id"]), "n"].sum())
    steps.append((age_rule_reason(study.spec.min_age_years), records, len(kept)))
    rows, prev = [], steps[0]
    for i, (reason, r, s) in enumerate(steps):
        values = {"number_records": r, "number_subjects": s, "excluded_records": prev[1] - r,
                  "excluded_subjects": prev[2] - s}
        prev = (reason, r, s)
        for var, v in values.items():
            rows.append({"result_id": 1, "cdm_name": cdm_name, "group_name": "cohort_name",
                         "group_level": target.cohort_name, "strata_name": "reason", "strata_level": reason,
                         "variable_name": var, "variable_level": None, "estimate_name": "count",
                         "estimate_type": "integer", "estimate_value": str(int(v)),
                         "additional_name": "reason_id", "additional_level": str(i + 1)})
    settings = [settings_row(1, ATTRITION, cohort_definition_id=target.cohort_definition_id,
                             study_id=study.spec.study_id, study_version=study.spec.version)]
    return SummarisedResult(pd.DataFrame(rows), pd.DataFrame(settings))


def run_study(cdm: CdmConnection, study: LoadedStudy, out_dir: Path, *, cdm_name: str | None = None,
              site_min_cell_count: int = DEFAULT_SITE_MIN_CELL_COUNT, plots: bool = True) -> StudyRun:
    """The study's released tables in ``out_dir`` (``results.csv``) and, with ``plots``, its figures
    there (for the site's own eyes; a manifest's run makes none, as nothing but the bundle leaves)."""
    minimum = max(study.spec.min_cell_count, site_min_cell_count)
    validate_cdm(cdm)
    cdm_name = cdm_name or default_cdm_name(cdm)
    bound, patients = study_tables(cdm, study, cdm_name, minimum)
    protection = release_control(bound, minimum, time_tables=True)  # primary + secondary, audited
    released = protection.result
    out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    results_csv = released.to_csv(out_dir / "results.csv")
    figures = (plot_km(_visible_curves(released), out_dir / "km_by_sequence.png"),
               plot_pathways(released, out_dir / "treatment_pathways.png"),
               plot_horizon_table(released, out_dir / "outcome_horizons.png", minimum)) if plots else ()
    log.info("study %s at %s: %d patients", study.spec.study_id, cdm_name, len(patients))
    return StudyRun(out_dir, results_csv, figures, len(patients), minimum, released, protection.secondary_frame(),
                    site_cox_data(study, patients))


def study_tables(cdm: CdmConnection, study: LoadedStudy, cdm_name: str, minimum: int
                 ) -> tuple[SummarisedResult, pd.DataFrame]:
    """The study's tables before suppression (site-internal), shaped for a release at ``minimum``:
    small treatment sequences merged into "other" and risk tables from rounded cumulative
    counts (when ``minimum >= 2``); and the patients."""
    spec = study.spec
    patients, pathways, _ = study_population(cdm, study)
    attrition = study_attrition(cdm, study, cdm_name, patients)
    tp = spec.treatment_patterns
    target = study.target.cohort_name
    grid = spec.survival.grid
    sequence = merge_small_sequences(patients["sequence"], minimum)
    strata = {OVERALL: patients, **{s: g for s, g in patients.groupby(sequence, sort=True)}}
    survival = summarise_survival(
        cdm_name, target, study.death.cohort_name,
        {k: pd.DataFrame({"time": g["time_death"], "event": g["death"]}) for k, g in strata.items()},
        grid, horizons=spec.survival.horizons, estimator=spec.survival.estimator,
        count_rounding=minimum if minimum >= 2 else 0)
    windows = [(label, kind, days) for label, (kind, days) in spec.outcome_horizons_days.items()]
    outcomes = summarise_outcomes(
        cdm_name, target,
        {k: pd.DataFrame({"time_to_progression": g["time_progression"].where(g["progression"] == 1),
                          "time_to_death": g["time_death"].where(g["death"] == 1),
                          "followup_end": g["time_followup"]})
         for k, g in strata.items()},
        grid, progression_name=study.progression.cohort_name, death_name=study.death.cohort_name, windows=windows,
        count_rounding=minimum if minimum >= 2 else 0)
    patterns = summarise_pathway_frame(pathways, cdm_name, study.target.cohort_definition_id, target,
                                       max_lines=tp.max_lines,
                                       extra_settings={"study_id": spec.study_id, "study_version": spec.version})
    if patients.empty:  # an empty target cohort releases its count, never a curve of S = 1
        survival, outcomes = _counts_only(survival), _counts_only(outcomes)
    bound = bind_frames([(r.data, r.settings) for r in (attrition, patterns, outcomes, survival)])
    return bound, patients


OTHER_SEQUENCE = "other"


def merge_small_sequences(sequence: pd.Series, minimum: int) -> pd.Series:
    """Treatment sequences with fewer than ``2 x minimum`` patients at this site become one
    ``"other"`` stratum (a stratum that small would have its curves and horizons withheld almost
    entirely, and its few patients would only force more withholding in the overall curve)."""
    if minimum < 2:
        return sequence
    size = sequence.map(sequence.value_counts())
    return sequence.where(size >= 2 * minimum, OTHER_SEQUENCE)


def _counts_only(result: SummarisedResult) -> SummarisedResult:
    """The cohort-size rows of a result computed on an empty cohort: no estimates, no time tables."""
    d = result.data
    keep = (d["estimate_name"] == "number_records_count") | (d["variable_name"] == "Number subjects")
    return result.with_data(d[keep])


def _visible_curves(result: SummarisedResult) -> SummarisedResult:
    """Only the strata whose curve is released beyond day 0 (the rest would be empty lines)."""
    d = result.data
    est = d[d["estimate_name"] == "estimate"]
    shown = est[(est["estimate_value"] != "-") & (pd.to_numeric(est["additional_level"], errors="coerce") > 0)]
    keep = set(zip(shown["strata_name"], shown["strata_level"]))
    mask = [(n, lv) in keep for n, lv in zip(d["strata_name"], d["strata_level"])]
    return result.with_data(d[mask])


def monotone_labels(d: pd.DataFrame, min_cell_count: int) -> pd.Series:
    """Cell labels: suppressed counts as "<N", except a withheld 'within' horizon after a visible
    count c, which is "&gt;c" ('within' counts are cumulative: it was withheld because it adds
    fewer than N to c, so "<N" there would be impossible)."""
    shown = d["estimate_value"].fillna("").replace("-", f"<{min_cell_count}")
    within = d["variable_level"].astype(str).str.startswith("within") & (d["estimate_name"] == "count")
    order = d[within].assign(_days=d.loc[within, "variable_level"].map(horizon_days)).sort_values("_days",
                                                                                                    kind="mergesort")
    for _, g in order.groupby("variable_name", sort=False):
        last = 0.0
        for idx in g.index:
            v = pd.to_numeric(d.at[idx, "estimate_value"], errors="coerce")
            if pd.notna(v):
                last = float(v)
            elif d.at[idx, "estimate_value"] == "-" and last > 0:
                shown.at[idx] = f">{int(last)}"
    return shown


def plot_horizon_table(result: SummarisedResult, png: Path, min_cell_count: int) -> Path:
    """The overall horizon table (count and % per outcome and horizon) as a PNG table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = result.settings.loc[result.settings["result_type"] == "outcome_horizons", "result_id"]
    d = result.data[result.data["result_id"].isin(ids) & (result.data["strata_level"] == OVERALL)
                    & result.data["estimate_name"].isin(["count", "percentage"])
                    & (result.data["variable_name"] != "Number subjects")]
    shown = monotone_labels(d, min_cell_count)
    table = d.assign(v=shown).pivot_table(index="variable_level", columns=["variable_name", "estimate_name"],
                                          values="v", aggfunc="first").fillna("")
    table = table.loc[sorted(table.index, key=lambda lbl: (lbl.split()[0], horizon_days(lbl)))]
    fig, ax = plt.subplots(figsize=(8, 0.4 * (len(table) + 3)))
    ax.axis("off")
    if len(table):
        cells = [[str(v)[:8] for v in row] for row in table.to_numpy()]
        cols = [f"{a} {'n' if b == 'count' else '%'}" for a, b in table.columns]
        ax.table(cellText=cells, rowLabels=list(table.index), colLabels=cols, loc="center")
    ax.set_title("Outcomes at the study horizons (overall)")
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return png
