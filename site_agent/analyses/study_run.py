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
from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.fingerprint import cdm_fingerprint
from site_agent.cohorts import build_cohorts
from site_agent.cohorts.build import ensure_results_tables
from site_agent.cohorts.concept_sets import resolve_concept_set_sql
from site_agent.cohorts.state import stale_cohorts
from site_agent.diagnostics.runner import default_cdm_name
from site_agent.disclosure import horizon_days, release_control
from site_agent.study_spec import LoadedStudy

log = logging.getLogger(__name__)
SITE_FLOOR = 5  # a site never releases a cell below this, whatever the spec asks
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
    """(patients with their pathway and sequence, pathways): site-internal, never released."""
    definitions = [study.target, study.progression, study.death]
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
    return patients, pathways


def run_study(cdm: CdmConnection, study: LoadedStudy, out_dir: Path, *, cdm_name: str | None = None,
              site_min_cell_count: int = SITE_FLOOR) -> StudyRun:
    spec = study.spec
    minimum = max(spec.min_cell_count, site_min_cell_count)
    cdm_name = cdm_name or default_cdm_name(cdm)
    out_dir.mkdir(parents=True, exist_ok=True)
    patients, pathways = study_patients(cdm, study)
    tp = spec.treatment_patterns
    target = study.target.cohort_name
    grid = spec.survival.grid
    strata = {OVERALL: patients, **{s: g for s, g in patients.groupby("sequence", sort=True)}}
    survival = summarise_survival(
        cdm_name, target, study.death.cohort_name,
        {k: pd.DataFrame({"time": g["time_death"], "event": g["death"]}) for k, g in strata.items()},
        grid, horizons=[int(round(y * 365.25)) for y in spec.survival.summary_years])
    windows = [(label, kind, days) for label, (kind, days) in spec.outcome_horizons_days.items()]
    outcomes = summarise_outcomes(
        cdm_name, target,
        {k: pd.DataFrame({"time_to_progression": g["time_progression"].where(g["progression"] == 1),
                          "time_to_death": g["time_death"].where(g["death"] == 1),
                          "followup_end": g["time_followup"]})
         for k, g in strata.items()},
        grid, progression_name=study.progression.cohort_name, death_name=study.death.cohort_name, windows=windows)
    patterns = summarise_pathway_frame(pathways, cdm_name, study.target.cohort_definition_id, target,
                                       max_lines=tp.max_lines,
                                       extra_settings={"study_id": spec.study_id, "study_version": spec.version})
    bound = bind_frames([(r.data, r.settings) for r in (patterns, outcomes, survival)])
    protection = release_control(bound, minimum, time_tables=True)  # primary + secondary, audited
    released = protection.result
    results_csv = released.to_csv(out_dir / "results.csv")
    plots = (plot_km(_visible_curves(released), out_dir / "km_by_sequence.png"),
             plot_pathways(released, out_dir / "treatment_pathways.png"),
             plot_horizon_table(released, out_dir / "outcome_horizons.png", minimum))
    log.info("study %s at %s: %d patients", spec.study_id, cdm_name, len(patients))
    return StudyRun(out_dir, results_csv, plots, len(patients), minimum, released, protection.secondary_frame())


def _visible_curves(result: SummarisedResult) -> SummarisedResult:
    """Only the strata whose curve is released beyond day 0 (the rest would be empty lines)."""
    d = result.data
    est = d[d["estimate_name"] == "estimate"]
    shown = est[(est["estimate_value"] != "-") & (pd.to_numeric(est["additional_level"], errors="coerce") > 0)]
    keep = set(zip(shown["strata_name"], shown["strata_level"]))
    mask = [(n, lv) in keep for n, lv in zip(d["strata_name"], d["strata_level"])]
    return result.with_data(d[mask])


def plot_horizon_table(result: SummarisedResult, png: Path, min_cell_count: int) -> Path:
    """The overall horizon table (count and % per outcome and horizon) as a PNG table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = result.settings.loc[result.settings["result_type"] == "outcome_horizons", "result_id"]
    d = result.data[result.data["result_id"].isin(ids) & (result.data["strata_level"] == OVERALL)
                    & result.data["estimate_name"].isin(["count", "percentage"])
                    & (result.data["variable_name"] != "Number subjects")]
    shown = d["estimate_value"].fillna("").replace("-", f"<{min_cell_count}")
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
