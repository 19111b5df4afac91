"""``site-agent nlp metastasis``: the extractor over the CDM's ``note`` table, aggregates only.

1. The catalog's ``breast_cancer`` cohort is built into ``<write_schema>.cohort``; its start date is
   the person's first breast cancer diagnosis.
2. Each note gets its fate in SQL: kept, or filtered (person not in the cohort, modality outside
   mammography/CT/MRI/ultrasound/nuclear medicine, dated before the diagnosis).
3. Kept notes lose their system header lines and go through the extractor; with
   ``--write-note-nlp`` every metastasis mention becomes a ``note_nlp`` row in the write schema.
4. Structured labels: condition records under "Secondary malignant neoplastic disease" (432851)
   and Cancer Modifier measurements under "Metastasis" (36769180), from 30 days before the
   diagnosis on; their site from the concept name.
5. Released (suppressed, audited): reports read/kept/filtered by reason (``nlp_report_counts``),
   and per site the persons with NLP metastasis, with a structured label, TP/FP/FN, precision,
   recall, F1 and CIs (``nlp_metastasis_agreement``) over the cohort's persons with a kept report.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from optima_common.agreement import metrics
from optima_common.errors import ConfigError
from optima_common.fileio import write_atomic
from optima_common.results import SummarisedResult
from site_agent import __version__
from site_agent.nlp import lexicon as L
from site_agent.nlp.concepts import METASTASIS_MODIFIER

REPORT_COUNTS = "nlp_report_counts"
AGREEMENT = "nlp_metastasis_agreement"
NLP_SYSTEM = f"optima-federated site_agent.nlp {__version__} (medspaCy ConText)"
SECONDARY_MALIGNANT = 432851  # Secondary malignant neoplastic disease (cohort_definitions/vocab_evidence.csv)
# structured labels: conditions under 432851 and Cancer Modifier measurements under "Metastasis" (36769180)
BREAST_COHORT = "breast_cancer"
MODALITY_SQL = r"""CASE
  WHEN t LIKE '%DENTAL%' OR t LIKE '%PANORAMIC%' OR t LIKE '%OPG%' THEN 'dental'
  WHEN t LIKE '%MAMMO%' OR t LIKE '%TOMOSYNTH%' THEN 'mammography'
  WHEN t LIKE '%PET%' OR t LIKE 'NM %' OR t LIKE '%BONE SCAN%' OR t LIKE '%SCINT%' OR t LIKE '%SPECT%' THEN 'nuclear medicine'
  WHEN t LIKE 'CT %' OR t LIKE 'CT' OR t LIKE '% CT %' OR t LIKE '%COMPUTED TOMO%' THEN 'ct'
  WHEN t LIKE 'MR%' OR t LIKE '%MAGNETIC%' THEN 'mri'
  WHEN t LIKE 'US %' OR t LIKE '%ULTRASOUND%' OR t LIKE '%SONO%' THEN 'ultrasound'
  ELSE 'other' END"""
KEPT_MODALITIES = ("mammography", "nuclear medicine", "ct", "mri", "ultrasound")
SITE_NAME_SQL = """CASE
  WHEN n LIKE '%liver%' OR n LIKE '%hepat%' THEN 'liver'
  WHEN n LIKE '%bone%' OR n LIKE '%skelet%' OR n LIKE '%vertebra%' THEN 'bone'
  WHEN n LIKE '%brain%' OR n LIKE '%cerebr%' OR n LIKE '%mening%' THEN 'brain'
  WHEN n LIKE '%pleura%' THEN 'pleura'
  WHEN n LIKE '%lung%' OR n LIKE '%pulmon%' THEN 'lung'
  WHEN n LIKE '%lymph%' THEN 'lymph_node'
  WHEN n LIKE '%skin%' OR n LIKE '%cutaneous%' THEN 'skin'
  WHEN n LIKE '%adrenal%' THEN 'adrenal'
  WHEN n LIKE '%peritone%' THEN 'peritoneum'
  WHEN n IN ('secondary malignant neoplastic disease', 'metastasis') THEN 'unspecified'
  ELSE 'other' END"""


BREAST_FILE = Path(__file__).resolve().parents[2] / "cohort_definitions" / "breast" / "breast_cancer.json"


def nlp_preflight(config) -> None:
    """A manifest asking for ``nlp_metastasis`` is refused unless the nlp extra is installed and the
    site approved the breast_cancer definition the analysis builds (policy before data)."""
    from optima_common.errors import PolicyRefusal

    try:
        from site_agent.nlp.deps import require_nlp

        require_nlp()
    except ConfigError as exc:
        raise PolicyRefusal("analysis", f"nlp_metastasis: {exc}") from None
    require_breast_approved(config, "nlp_metastasis")


def require_breast_approved(config, analysis: str) -> None:
    """Refuse (policy before data) unless the site approved the breast_cancer definition file."""
    import hashlib

    from optima_common.errors import PolicyRefusal

    sha = hashlib.sha256(BREAST_FILE.read_bytes()).hexdigest()
    if sha not in config.approved_cohort_files():
        raise PolicyRefusal("cohort_not_approved", f"{analysis} builds the breast_cancer cohort, which this site "
                                                   "has not approved")


def _breast_cohort_id(cdm) -> int:
    from site_agent.cohorts import build_cohorts, collect_definitions

    defs = [d for d in collect_definitions([BREAST_FILE]) if d.cohort_name == BREAST_COHORT]
    if not defs:
        raise ConfigError("the catalog has no breast_cancer cohort", hint="reinstall optima-federated")
    build_cohorts(cdm, defs)
    return defs[0].cohort_definition_id


build_breast_cohort = _breast_cohort_id  # also the diagnosis date of ``genomics profile --cdm``


def _note_fates(cdm, cohort_id: int) -> str:
    s, w = cdm.cdm_schema, cdm.write_schema
    return f"""
      WITH c AS (SELECT subject_id, min(cohort_start_date) AS dx FROM {w}.cohort
                 WHERE cohort_definition_id = {cohort_id} GROUP BY subject_id),
           -- modality from the title, and from the note class concept's name (e.g. a LOINC document class)
           n AS (SELECT x.note_id, x.person_id, x.note_date,
                        upper(trim(coalesce(x.note_title, '') || ' ' || coalesce(k.concept_name, ''))) AS t
                 FROM {s}.note x LEFT JOIN {cdm.vocab_schema}.concept k
                   ON k.concept_id = x.note_class_concept_id AND x.note_class_concept_id <> 0)
      SELECT n.note_id, n.person_id, n.note_date, c.dx,
             CASE WHEN c.subject_id IS NULL THEN 'filtered: not in the breast_cancer cohort'
                  WHEN ({MODALITY_SQL}) NOT IN ({", ".join(f"'{m}'" for m in KEPT_MODALITIES)})
                       THEN 'filtered: modality (' || ({MODALITY_SQL}) || ')'
                  WHEN n.note_date < c.dx THEN 'filtered: dated before the breast cancer diagnosis'
                  ELSE 'kept' END AS fate
      FROM n LEFT JOIN c ON c.subject_id = n.person_id"""


def _structured(cdm, cohort_id: int) -> pd.DataFrame:
    s, v, w = cdm.cdm_schema, cdm.vocab_schema, cdm.write_schema
    return cdm.query_df(f"""
      WITH c AS (SELECT subject_id, min(cohort_start_date) AS dx FROM {w}.cohort
                 WHERE cohort_definition_id = {cohort_id} GROUP BY subject_id),
           sec AS (SELECT ca.descendant_concept_id AS concept_id, lower(k.concept_name) AS n
                   FROM {v}.concept_ancestor ca JOIN {v}.concept k ON k.concept_id = ca.descendant_concept_id
                   WHERE ca.ancestor_concept_id = {SECONDARY_MALIGNANT}),
           modi AS (SELECT ca.descendant_concept_id AS concept_id, lower(k.concept_name) AS n
                    FROM {v}.concept_ancestor ca JOIN {v}.concept k ON k.concept_id = ca.descendant_concept_id
                    WHERE ca.ancestor_concept_id = {METASTASIS_MODIFIER}),
           events AS (SELECT co.person_id, co.condition_start_date AS d, sec.n FROM {s}.condition_occurrence co
                      JOIN sec ON sec.concept_id = co.condition_concept_id
                      UNION ALL
                      SELECT m.person_id, m.measurement_date AS d, modi.n FROM {s}.measurement m
                      JOIN modi ON modi.concept_id = m.measurement_concept_id)
      SELECT DISTINCT e.person_id, {SITE_NAME_SQL} AS site
      FROM events e JOIN c ON c.subject_id = e.person_id
      WHERE e.d >= c.dx - INTERVAL '30' DAY""")


def _note_nlp_rows(results, note_ids, start_id: int) -> pd.DataFrame:
    from site_agent.nlp.concepts import concept_for

    rows = []
    today = dt.date.today()
    for r, note_id in zip(results, note_ids):
        for m in r.mentions:
            if m.kind != "metastasis":
                continue
            for site in (m.linked_sites or [None]):
                rows.append({"note_id": int(note_id), "section_concept_id": 0, "snippet": m.sentence[:250],
                             "offset": str(m.start_char), "lexical_variant": m.text[:250],
                             "note_nlp_concept_id": concept_for(site), "note_nlp_source_concept_id": 0,
                             "nlp_system": NLP_SYSTEM[:250], "nlp_date": today,
                             "term_exists": "Y" if m.counted else "N",
                             "term_temporal": "past" if m.historical else "present",
                             "term_modifiers": (m.modifiers + (f";site={site}" if site else ""))[:2000]})
    df = pd.DataFrame(rows)
    if len(df):
        df.insert(0, "note_nlp_id", range(start_id, start_id + len(df)))
    return df


def write_note_nlp(cdm, frame: pd.DataFrame) -> int:
    """Replace this system's rows of ``<write_schema>.note_nlp`` (never the CDM schema)."""
    from site_agent.cdm.ddl import cdm_ddl

    w = cdm.write_schema
    if w == cdm.cdm_schema:
        raise ConfigError("the write schema is the CDM schema; note_nlp is never written into the CDM")
    ddl = [d for d in cdm_ddl(cdm.dialect, "5.4", w) if f"{w}.note_nlp " in d or f"{w}.note_nlp(" in d]
    have = "note_nlp" in cdm.table_columns(w) if cdm.schema_exists(w) else False
    with cdm.transaction() as tx:
        tx.execute(f"CREATE SCHEMA IF NOT EXISTS {w}")
        if not have:
            tx.execute(ddl[0])
        tx.execute(f"DELETE FROM {w}.note_nlp WHERE nlp_system = '{NLP_SYSTEM}'")
    if len(frame):
        from sqlalchemy import text

        cols = list(frame.columns)
        sql = text(f"INSERT INTO {w}.note_nlp ({', '.join(chr(34) + c + chr(34) for c in cols)}) "
                   f"VALUES ({', '.join(':' + c for c in cols)})")
        conn = cdm.connection()
        conn.execute(sql, frame.to_dict("records"))  # bound parameters, one prepared statement
        conn.commit()
    return len(frame)


def _records(cdm_name: str, fates: pd.Series, persons: pd.DataFrame, structured: pd.DataFrame, mcc: int):
    recs = []
    counts = fates.value_counts()
    recs.append(dict(result_id=1, cdm_name=cdm_name, variable_name="reports", variable_level="read",
                     estimate_name="count", estimate_type="integer", estimate_value=str(len(fates))))
    for fate, n in sorted(counts.items()):
        recs.append(dict(result_id=1, cdm_name=cdm_name, variable_name="reports", variable_level=fate,
                         estimate_name="count", estimate_type="integer", estimate_value=str(int(n))))
    n_persons = len(persons)
    recs.append(dict(result_id=2, cdm_name=cdm_name, variable_name="number subjects", estimate_name="count",
                     estimate_type="integer", estimate_value=str(n_persons)))
    evaluated = set(persons["person_id"])
    struct = structured[structured["person_id"].isin(evaluated)]
    for site in ("any", *L.SITES):
        if site == "any":
            nlp_pos = set(persons.loc[persons["metastatic"], "person_id"])
            st_pos = set(struct["person_id"])
        else:
            nlp_pos = set(persons.loc[persons["sites"].map(lambda s, site=site: site in s), "person_id"])
            st_pos = set(struct.loc[struct["site"] == site, "person_id"])
        tp, fp, fn = len(nlp_pos & st_pos), len(nlp_pos - st_pos), len(st_pos - nlp_pos)
        tn = n_persons - tp - fp - fn
        g = dict(result_id=2, cdm_name=cdm_name, group_name="metastasis_site", group_level=site)
        recs.append(g | dict(variable_name="nlp positive", estimate_name="count", estimate_type="integer",
                             estimate_value=str(len(nlp_pos))))
        recs.append(g | dict(variable_name="structured positive", estimate_name="count", estimate_type="integer",
                             estimate_value=str(len(st_pos))))
        for name, val in (("tp_count", tp), ("fp_count", fp), ("fn_count", fn)):
            recs.append(g | dict(variable_name="agreement", estimate_name=name, estimate_type="integer",
                                 estimate_value=str(val)))
        for name, val in metrics(tp, fp, fn, tn).items():
            recs.append(g | dict(variable_name="agreement", estimate_name=name, estimate_type="numeric",
                                 estimate_value=None if pd.isna(val) else f"{val:.4f}"))
    settings = [dict(result_id=1, result_type=REPORT_COUNTS, package_name="optima-federated",
                     package_version=__version__, min_cell_count=mcc),
                dict(result_id=2, result_type=AGREEMENT, package_name="optima-federated", package_version=__version__,
                     min_cell_count=mcc, structured_label="secondary malignant neoplasm (432851 and descendants)",
                     hedges_counted="likely, probable, in keeping with, consistent with, suspicious for",
                     history_counted="yes")]
    return SummarisedResult.from_records(recs, settings)


def nlp_metastasis_result(cdm, cdm_name: str, min_cell_count: int, *, write_nlp: bool = False,
                          progress=lambda _m: None) -> tuple[SummarisedResult, dict]:
    """The unsuppressed result (site-internal) and a summary of the run."""
    from site_agent.nlp.pipeline import extract_many, strip_system_lines

    if "note" not in cdm.table_columns(cdm.cdm_schema):
        raise ConfigError(f"the CDM schema {cdm.cdm_schema} has no note table", hint="load the OMOP note table first")
    cohort_id = _breast_cohort_id(cdm)
    progress("breast_cancer cohort built")
    fates = cdm.query_df(f"SELECT note_id, person_id, fate FROM ({_note_fates(cdm, cohort_id)}) f")
    kept = fates[fates["fate"] == "kept"]
    texts = cdm.query_df(f"SELECT f.note_id, f.person_id, n.note_text FROM ({_note_fates(cdm, cohort_id)}) f "
                         f"JOIN {cdm.cdm_schema}.note n ON n.note_id = f.note_id WHERE f.fate = 'kept' "
                         "ORDER BY f.note_id")
    progress(f"{len(texts)} reports kept of {len(fates)}")
    # no kept report (e.g. a site whose note table is empty): the spaCy pipeline is not even loaded
    pairs = zip(texts["note_id"].astype(str), texts["note_text"].fillna("").map(strip_system_lines))
    results = list(extract_many(pairs)) if len(texts) else []
    per_note = pd.DataFrame({"person_id": texts["person_id"].to_numpy(),
                             "metastatic": [r.metastatic for r in results],
                             "sites": [set(r.sites) for r in results]})
    persons = per_note.groupby("person_id").agg(metastatic=("metastatic", "any"),
                                                sites=("sites", lambda s: set().union(*s))).reset_index()
    structured = _structured(cdm, cohort_id)
    raw = _records(cdm_name, fates["fate"], persons, structured, min_cell_count)
    written = 0
    if write_nlp:
        start = 1
        frame = _note_nlp_rows(results, texts["note_id"], start)
        written = write_note_nlp(cdm, frame)
    return raw, {"reports_read": len(fates), "reports_kept": len(kept), "persons": len(persons),
                 "note_nlp_rows": written}


@dataclass
class ManifestRun:
    result: SummarisedResult
    secondary: pd.DataFrame | None


def run_for_manifest(cdm, cdm_name: str, min_cell_count: int) -> ManifestRun:
    """The ``nlp_metastasis`` analysis of a study manifest: released (suppressed, audited) aggregates."""
    from site_agent.disclosure import release_control
    from site_agent.nlp.deps import require_nlp

    require_nlp()
    raw, _ = nlp_metastasis_result(cdm, cdm_name, min_cell_count)
    protection = release_control(raw, min_cell_count)
    return ManifestRun(protection.result, protection.secondary_frame())


def release(raw: SummarisedResult, min_cell_count: int) -> SummarisedResult:
    from site_agent.disclosure import release_control

    return release_control(raw, min_cell_count).result


def run_metastasis(args) -> str:
    from site_agent.cdm import connect_cdm
    from site_agent.diagnostics.runner import default_cdm_name

    if args.min_cell_count < 0:
        raise ConfigError(f"--min-cell-count must be >= 0, got {args.min_cell_count}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder", hint="give a folder for results.csv")
    with connect_cdm(args.cdm, cdm_schema=args.cdm_schema, vocab_schema=args.vocab_schema,
                     write_schema=args.write_schema) as cdm:
        name = args.cdm_name or default_cdm_name(cdm)
        raw, summary = nlp_metastasis_result(cdm, name, args.min_cell_count, write_nlp=args.write_note_nlp)
    released = release(raw, args.min_cell_count)
    out.mkdir(parents=True, exist_ok=True)
    released.to_csv(out / "results.csv")
    write_atomic(out / "run.json", json.dumps(summary, indent=2).encode("utf-8"))
    return (f"{summary['reports_read']} reports read, {summary['reports_kept']} kept, {summary['persons']} persons "
            f"evaluated; wrote {out / 'results.csv'}" + (f" and {summary['note_nlp_rows']} note_nlp rows"
                                                          if args.write_note_nlp else ""))
