"""Treatment pathways of a target cohort, after the R package TreatmentPatterns (DARWIN EU).

Mirrors ``TreatmentPatterns::computePathways()`` + ``export()`` in a simplified form:

1. **Target**: per person the earliest entry of ``target_cohort_id`` in ``<write>.cohort``
   (index date, cohort end). TreatmentPatterns treats every cohort entry separately; our
   disease cohorts have one entry per person, so we keep one row per person.
2. **Events** (SQL): ``drug_exposure`` (drug_concept_id, start .. coalesce(end, start))
   and ``procedure_occurrence`` (procedure_concept_id, one-day records) whose concept is
   in an event's subquery and whose **start lies in [index date, cohort end]**
   (TreatmentPatterns: ``startDate`` within the target period). A concept in several
   events' subqueries counts for each of them.
3. **Eras** (SQL, TreatmentPatterns ``eraCollapseSize``): per person and event, records
   whose start is at most ``era_gap`` days after the latest end so far join one era.
4. **Lines** (pandas, at the site): eras sorted by (start, name); an era whose start lies
   within ``combination_window`` days of the first start of the current line joins it,
   otherwise it opens a new line. A line is the sorted set of its event names joined by
   ``"+"``. Deviation: TreatmentPatterns builds combinations from *overlap* of at least
   ``combinationWindow`` days and splits eras (``minPostCombinationDuration``); we use
   start dates only, which is what a chemo-radiotherapy protocol's start defines.
5. Consecutive identical lines collapse into one (TreatmentPatterns
   ``filterTreatments = "First"``/ collapse of repeats); the pathway is the first
   ``max_lines`` lines joined by ``"-"`` (``maxPathLength``); no event gives ``"None"``
   (TreatmentPatterns counts the untreated separately; we keep them as a pathway).

Result types (``summarise_treatment_patterns``), all with ``group`` = target_cohort_name
and ``additional`` = target_cohort_id (TreatmentPatterns uses ``analysis_id`` as group):

* ``treatment_pathways``: variable ``pathway`` / <path>, estimates ``count`` and
  ``percentage`` (of the target) plus ``number subjects``/``count``. Deviation: the R
  package writes ``freq`` (not caught by suppression) and strata age/sex/index_year "all";
  we write ``count`` and no strata.
* ``treatment_line_frequency`` (ours): strata ``line`` / k, variable ``treatment`` /
  <line label or "None"> with ``count``/``percentage``, plus ``number subjects``.
* ``time_to_first_treatment`` (ours, in place of ``summary_event_duration``): variable
  ``days_to_first_treatment``: ``count`` (treated persons), ``min``, ``q25``,
  ``median``, ``q75``, ``max`` (quantiles as R ``quantile(type = 7)``).

Per-person rows never leave the site; results are returned unsuppressed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from optima_common.results import SummarisedResult
from site_agent.cdm.connection import CdmConnection
from site_agent.diagnostics.base import fmt_float, settings_row

UNTREATED = "None"
RESULT_TYPES = ("treatment_pathways", "treatment_line_frequency", "time_to_first_treatment")
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_ ]+$")


def _check_events(events: Mapping[str, str]) -> None:
    if not events:
        raise ValueError("events must name at least one event")
    for name, sql in events.items():
        if not _EVENT_NAME.match(name):
            raise ValueError(f"event name {name!r} must be letters, digits, '_' or spaces ('+'/'-' are separators)")
        if not sql or not sql.strip():
            raise ValueError(f"event {name!r} has an empty concept subquery")


def eras_sql(cdm: CdmConnection, target_cohort_id: int, events: Mapping[str, str], era_gap: int) -> str:
    """SQL returning the target (person, index, end) joined to each person's event eras."""
    cs, ws = cdm.cdm_schema, cdm.write_schema
    parts = []
    for name, sub in sorted(events.items()):
        parts.append(
            f"SELECT person_id, '{name}' AS event_name, drug_exposure_start_date AS start_date, "
            f"COALESCE(drug_exposure_end_date, drug_exposure_start_date) AS end_date "
            f"FROM {cs}.drug_exposure WHERE drug_concept_id IN ({sub})")
        parts.append(
            f"SELECT person_id, '{name}' AS event_name, procedure_date AS start_date, procedure_date AS end_date "
            f"FROM {cs}.procedure_occurrence WHERE procedure_concept_id IN ({sub})")
    records = "\n  UNION ALL\n  ".join(parts)
    return f"""
WITH entries AS (
  SELECT subject_id AS person_id, cohort_start_date AS index_date, cohort_end_date AS end_date,
         ROW_NUMBER() OVER (PARTITION BY subject_id ORDER BY cohort_start_date, cohort_end_date DESC) AS rn
  FROM {ws}.cohort WHERE cohort_definition_id = {int(target_cohort_id)}
), target AS (
  SELECT person_id, index_date, end_date FROM entries WHERE rn = 1
), rec AS (
  {records}
), ev AS (
  SELECT r.person_id, r.event_name, r.start_date,
         CASE WHEN r.end_date < r.start_date THEN r.start_date ELSE r.end_date END AS end_date
  FROM rec r JOIN target t ON t.person_id = r.person_id
  WHERE r.start_date >= t.index_date AND r.start_date <= t.end_date
), marked AS (
  SELECT person_id, event_name, start_date, end_date,
         CASE WHEN start_date - MAX(end_date) OVER (PARTITION BY person_id, event_name
                ORDER BY start_date, end_date ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) <= {int(era_gap)}
              THEN 0 ELSE 1 END AS new_era
  FROM ev
), numbered AS (
  SELECT person_id, event_name, start_date, end_date,
         SUM(new_era) OVER (PARTITION BY person_id, event_name ORDER BY start_date, end_date
                            ROWS UNBOUNDED PRECEDING) AS era_id
  FROM marked
), eras AS (
  SELECT person_id, event_name, MIN(start_date) AS era_start, MAX(end_date) AS era_end
  FROM numbered GROUP BY person_id, event_name, era_id
)
SELECT t.person_id, t.index_date, t.end_date AS cohort_end_date, e.event_name, e.era_start, e.era_end
FROM target t LEFT JOIN eras e ON e.person_id = t.person_id
ORDER BY t.person_id, e.era_start, e.event_name
"""


def build_lines(eras: pd.DataFrame, combination_window: int) -> list[tuple[str, pd.Timestamp]]:
    """Lines of one person's eras (sorted by start, name): [(label, line start)], repeats collapsed."""
    lines: list[tuple[str, pd.Timestamp]] = []
    names: set[str] = set()
    start: pd.Timestamp | None = None
    for name, s in zip(eras["event_name"], eras["era_start"], strict=True):
        if start is not None and (s - start).days <= combination_window:
            names.add(name)
            continue
        if start is not None:
            lines.append(("+".join(sorted(names)), start))
        names, start = {name}, s
    if start is not None:
        lines.append(("+".join(sorted(names)), start))
    collapsed: list[tuple[str, pd.Timestamp]] = []
    for label, s in lines:
        if not collapsed or collapsed[-1][0] != label:
            collapsed.append((label, s))
    return collapsed


def patient_pathways(cdm: CdmConnection, target_cohort_id: int, events: dict[str, str], *,
                     combination_window: int = 30, era_gap: int = 30, max_lines: int = 5) -> pd.DataFrame:
    """One row per target person (site-internal; never export).

    Columns: person_id, index_date, cohort_end_date, pathway, n_lines, first_treatment_date,
    days_to_first_treatment (NaN when untreated), line_1 .. line_<max_lines> (None when absent).
    """
    _check_events(events)
    if max_lines < 1 or combination_window < 0 or era_gap < 0:
        raise ValueError("max_lines must be >= 1 and combination_window, era_gap >= 0")
    raw = cdm.query_df(eras_sql(cdm, target_cohort_id, events, era_gap))
    line_cols = [f"line_{k}" for k in range(1, max_lines + 1)]
    cols = ["person_id", "index_date", "cohort_end_date", "pathway", "n_lines", "first_treatment_date",
            "days_to_first_treatment", *line_cols]
    if raw.empty:
        return pd.DataFrame(columns=cols)
    for c in ("index_date", "cohort_end_date", "era_start", "era_end"):
        raw[c] = pd.to_datetime(raw[c])
    rows = []
    for pid, g in raw.groupby("person_id", sort=True):
        ev = g[g["event_name"].notna()].sort_values(["era_start", "event_name"], kind="mergesort")
        lines = build_lines(ev, combination_window)[:max_lines]
        labels = [lab for lab, _ in lines]
        first = lines[0][1] if lines else pd.NaT
        index = g["index_date"].iloc[0]
        rows.append([int(pid), index, g["cohort_end_date"].iloc[0],
                     "-".join(labels) if labels else UNTREATED, len(labels), first,
                     float((first - index).days) if lines else np.nan,
                     *(labels + [None] * (max_lines - len(labels)))])
    return pd.DataFrame(rows, columns=cols)


def _quantile(x: np.ndarray, q: float) -> float:
    return float(np.quantile(x, q))  # numpy "linear" = R quantile type 7


def summarise_treatment_patterns(cdm: CdmConnection, cdm_name: str, target_cohort_id: int, target_name: str,
                                 events: dict[str, str], **params: int) -> SummarisedResult:
    """Aggregated pathways (result ids 1-3, see the module docstring); unsuppressed."""
    pp = patient_pathways(cdm, target_cohort_id, events, **params)
    return summarise_pathway_frame(pp, cdm_name, target_cohort_id, target_name,
                                   max_lines=params.get("max_lines", 5),
                                   extra_settings={**{k: params.get(k, d) for k, d in
                                                      (("combination_window", 30), ("era_gap", 30), ("max_lines", 5))},
                                                   "events": ";".join(sorted(events))})


def summarise_pathway_frame(pp: pd.DataFrame, cdm_name: str, target_cohort_id: int, target_name: str, *,
                            max_lines: int = 5, extra_settings: dict | None = None) -> SummarisedResult:
    """The summarised_result of a :func:`patient_pathways` frame."""
    n = len(pp)
    base = {"cdm_name": cdm_name, "group_name": "target_cohort_name", "group_level": target_name,
            "additional_name": "target_cohort_id", "additional_level": str(int(target_cohort_id))}
    recs: list[dict] = []

    def add(rid: int, var: str, level: str | None, est: str, typ: str, value: str, **kw: str) -> None:
        recs.append({**base, "result_id": rid, "variable_name": var, "variable_level": level,
                     "estimate_name": est, "estimate_type": typ, "estimate_value": value, **kw})

    def pct(c: int) -> str:
        return fmt_float(100.0 * c / n)

    if n:
        add(1, "number subjects", None, "count", "integer", str(n))
        for path, c in pp["pathway"].value_counts().sort_index().items():
            add(1, "pathway", str(path), "count", "integer", str(int(c)))
            add(1, "pathway", str(path), "percentage", "percentage", pct(int(c)))
        for k in range(1, max_lines + 1):
            col = f"line_{k}"
            if col not in pp.columns or pp[col].isna().all():
                break
            st = {"strata_name": "line", "strata_level": str(k)}
            add(2, "number subjects", None, "count", "integer", str(n), **st)
            for label, c in pp[col].fillna(UNTREATED).value_counts().sort_index().items():
                add(2, "treatment", str(label), "count", "integer", str(int(c)), **st)
                add(2, "treatment", str(label), "percentage", "percentage", pct(int(c)), **st)
        days = pp["days_to_first_treatment"].dropna().to_numpy(dtype=float)
        var = "days_to_first_treatment"
        add(3, var, None, "count", "integer", str(days.size))
        if days.size:
            for est, q in (("min", 0.0), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("max", 1.0)):
                add(3, var, None, est, "numeric", fmt_float(_quantile(days, q)))
    extra = {k: str(v) for k, v in (extra_settings or {}).items()}
    settings = [settings_row(i + 1, rt, target_cohort_id=int(target_cohort_id), **extra)
                for i, rt in enumerate(RESULT_TYPES)]
    return SummarisedResult.from_records(recs, settings)


def _pathway_counts(result_or_df: SummarisedResult | pd.DataFrame) -> pd.Series:
    """Pathway -> persons, from a result (suppressed cells dropped) or a person frame."""
    if isinstance(result_or_df, SummarisedResult):
        d = result_or_df.data
        ids = result_or_df.settings.loc[result_or_df.settings["result_type"] == "treatment_pathways", "result_id"]
        d = d[d["result_id"].isin(ids) & (d["variable_name"] == "pathway") & (d["estimate_name"] == "count")]
        vals = pd.to_numeric(d["estimate_value"], errors="coerce")
        s = pd.Series(vals.to_numpy(), index=d["variable_level"].to_numpy()).dropna()
        return s.groupby(level=0).sum()
    return result_or_df["pathway"].value_counts().astype(float)


def plot_pathways(result_or_df: SummarisedResult | pd.DataFrame, path_png: str | Path, *, top: int = 15,
                  title: str = "Treatment pathways") -> Path:
    """Horizontal bar chart of the ``top`` most frequent pathways, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = _pathway_counts(result_or_df)
    counts = counts.sort_index().sort_values(ascending=False, kind="mergesort").head(top)[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(counts), 2) + 1.2))
    try:
        ax.barh(range(len(counts)), counts.to_numpy(), color="#4C72B0")
        ax.set_yticks(range(len(counts)), [str(p) for p in counts.index], fontsize=8)
        ax.set_xlabel("persons")
        ax.set_title(title if len(counts) else f"{title} (no visible pathways)")
        fig.tight_layout()
        out = Path(path_png)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
