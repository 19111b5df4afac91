"""Orphan and unmapped codes of a cohort's codelists (CodelistGenerator layouts).

* ``orphan_code_use`` mirrors ``CodelistGenerator::summariseOrphanCodes()``: concepts *not*
  in a codelist that are related to it and used in the data, in the
  ``summariseAchillesCodeUse`` layout (strata ``domain_id`` = lower-case concept domain,
  ``variable_name``/``variable_level`` = concept name/id, ``record_count`` and
  ``person_count``). Candidates, found by two methods:

  - vocabulary graph (method ``vocabulary``): descendants of the codelist's concepts
    (relationship ``Descendant``), their direct parents (``concept_ancestor`` with
    ``min_levels_of_separation = 1``, relationship ``Ancestor``) and concepts linked to them
    by any valid ``concept_relationship`` (relationship = its ``relationship_id``);
  - names (method ``name``, relationship ``Name match``): standard concepts of the same domain
    whose ``concept_name`` or a ``concept_synonym_name`` contains (case-insensitive) the name of
    a codelist concept, or is contained in it (then only names of 4+ characters).

  Codelist concepts are removed, and a candidate is kept when it is used: at least one record
  with it in the standard concept column of any of the seven domain tables. Counts are taken
  from the clinical tables (not Achilles); ``person_count`` counts distinct persons over all
  tables (Achilles-based R sums per-analysis person counts). Additional columns:
  ``vocabulary_id &&& relationship &&& method`` (several relationships/methods joined by
  ``", "``), e.g. ``SNOMED &&& Ancestor, Name match &&& name, vocabulary``.

* ``unmapped_codes`` mirrors ``summariseUnmappedCodes()``: source codes on records whose
  standard concept id is 0 (in the domain tables of the codelist's domains) that belong to
  the codelist, with ``record_count`` summed over the tables. ``variable_name`` is the source
  concept name (or the source value when there is no source concept), ``variable_level`` the
  source concept id; additional ``source_concept_value &&& match_method``. Match methods:

  - ``maps_to`` (CodelistGenerator's only rule): the source concept ``'Maps to'`` a codelist
    concept;
  - ``source_value``: no source concept (id 0/NULL) but the source value equals the
    ``concept_code`` of a concept that ``'Maps to'`` a codelist concept;
  - ``name``: a truly unmapped code has no ``'Maps to'`` at all, so we also compare the source
    concept name (or source value) with the names and synonyms of the codelist concepts: both
    are split into words (lower case, hyphenated words kept whole, ``cancer`` read as
    ``carcinoma`` and ``tumour`` as ``tumor``, words in :data:`STOP_WORDS` dropped), and they
    match when the smaller word set (2+ words) is contained in the other. This heuristic runs
    in Python on the per-code aggregate only.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pandas as pd

from optima_common.results import SEP, SummarisedResult
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.diagnostics.base import Diagnostic, DiagnosticContext
from site_agent.diagnostics.codelists import (
    GROUP_NAME,
    DomainTable,
    codelist_ctes,
    cohort_codelists,
    present_tables,
    settings_for,
    text,
)

ORPHAN = "orphan_code_use"
UNMAPPED = "unmapped_codes"
ORPHAN_ADDITIONAL = SEP.join(["vocabulary_id", "relationship", "method"])
UNMAPPED_ADDITIONAL = SEP.join(["source_concept_value", "match_method"])
NAME_MATCH = "Name match"
MIN_CONTAINED_NAME = 4
STOP_WORDS = frozenset({"of", "the", "and", "or", "in", "with", "nos", "unspecified", "code", "hospital",
                        "local"})
WORD_SYNONYMS = {"cancer": "carcinoma", "tumour": "tumor"}
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


# ---------------------------------------------------------------- orphans
def _candidates_sql(ctx: DiagnosticContext) -> str:
    v = ctx.vocab_schema
    name_hit = ("(strpos(lower({c}), lower(n.concept_name)) > 0 OR "
                f"(length({{c}}) >= {MIN_CONTAINED_NAME} AND strpos(lower(n.concept_name), lower({{c}})) > 0))")
    return (
        "cand AS ("
        f"SELECT cl.codelist_id, ca.descendant_concept_id AS concept_id, 'Descendant' AS relationship FROM cl "
        f"JOIN {v}.concept_ancestor ca ON ca.ancestor_concept_id = cl.concept_id "
        f"UNION SELECT cl.codelist_id, ca.ancestor_concept_id, 'Ancestor' FROM cl "
        f"JOIN {v}.concept_ancestor ca ON ca.descendant_concept_id = cl.concept_id AND ca.min_levels_of_separation = 1 "
        f"UNION SELECT cl.codelist_id, cr.concept_id_2, cr.relationship_id FROM cl "
        f"JOIN {v}.concept_relationship cr ON cr.concept_id_1 = cl.concept_id AND cr.invalid_reason IS NULL "
        f"UNION SELECT cl.codelist_id, c.concept_id, '{NAME_MATCH}' FROM cl "
        f"JOIN {v}.concept n ON n.concept_id = cl.concept_id "
        f"JOIN {v}.concept c ON c.standard_concept = 'S' AND c.domain_id = n.domain_id "
        f"AND {name_hit.format(c='c.concept_name')} "
        f"UNION SELECT cl.codelist_id, c.concept_id, '{NAME_MATCH}' FROM cl "
        f"JOIN {v}.concept n ON n.concept_id = cl.concept_id "
        f"JOIN {v}.concept c ON c.standard_concept = 'S' AND c.domain_id = n.domain_id "
        f"JOIN {v}.concept_synonym s ON s.concept_id = c.concept_id AND {name_hit.format(c='s.concept_synonym_name')}"
        "),\n"
        "orphan AS (SELECT DISTINCT k.codelist_id, k.concept_id, k.relationship FROM cand k "
        "WHERE NOT EXISTS (SELECT 1 FROM cl WHERE cl.codelist_id = k.codelist_id AND cl.concept_id = k.concept_id))"
    )


def orphan_counts(ctx: DiagnosticContext, codelists: list[tuple[str, list[dict]]]) -> pd.DataFrame:
    """One row per (codelist, used orphan concept, relationship) with its counts and names."""
    tables = present_tables(ctx)
    if not codelists or not tables:
        return pd.DataFrame()
    v = ctx.vocab_schema
    orphans = ctx.cdm.query_df(
        f"WITH {codelist_ctes(ctx, codelists)},\n{_candidates_sql(ctx)}\n"
        "SELECT o.codelist_id, o.concept_id, o.relationship, c.concept_name, c.domain_id, c.vocabulary_id "
        f"FROM orphan o LEFT JOIN {v}.concept c ON c.concept_id = o.concept_id")
    if orphans.empty:
        return orphans
    orphans["concept_id"] = orphans["concept_id"].astype("int64")
    return orphans.merge(concept_usage(ctx, tables, set(orphans["concept_id"])), on="concept_id")  # used ones only


def concept_usage(ctx: DiagnosticContext, tables: list[DomainTable], concept_ids: set[int]) -> pd.DataFrame:
    """(concept_id, record_count, person_count) of the given concepts that have records in their
    standard concept column of any domain table; persons distinct over all tables.

    The ids are written into the SQL, so each table is read through its concept index (as
    ``IN (SELECT concept_id FROM orphan)`` PostgreSQL read every row of the seven tables: 4 s a
    cohort at 1M persons), and each concept is counted once per run (``ctx.memo``): the cohorts
    of a study share most codelists, so their orphans are mostly the same concepts."""
    memo: dict[int, tuple[int, int]] = ctx.memo.setdefault(("concept_usage", ctx.cdm_schema), {})
    missing = sorted(int(c) for c in concept_ids if int(c) not in memo)
    if missing:
        ids = ", ".join(str(c) for c in missing)
        uses = " UNION ALL ".join(
            f"SELECT t.{t.col('concept_id')} AS concept_id, t.person_id FROM {ctx.cdm_schema}.{t.table} t "
            f"WHERE t.{t.col('concept_id')} IN ({ids})" for t in tables)
        got = ctx.cdm.query_df(f"SELECT concept_id, COUNT(*) AS record_count, COUNT(DISTINCT person_id) AS person_count "
                               f"FROM ({uses}) u GROUP BY concept_id")
        memo.update({c: (0, 0) for c in missing})  # unused concepts too: not asked again
        memo.update({int(c): (int(r), int(p)) for c, r, p in got.itertuples(index=False)})
    rows = [(c, *memo[int(c)]) for c in sorted(concept_ids) if memo[int(c)][0] > 0]
    return pd.DataFrame(rows, columns=["concept_id", "record_count", "person_count"]).astype("int64")


def run_orphan_codes(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``summariseOrphanCodes()`` of the cohort's concept sets (see module docstring)."""
    (cohort,) = unit
    codelists = cohort_codelists(cohort)
    df = orphan_counts(ctx, codelists)
    records: list[dict] = []
    if len(df):
        df = df.assign(method=df["relationship"].map(lambda r: "name" if r == NAME_MATCH else "vocabulary"))
        keys = ["codelist_id", "concept_id", "concept_name", "domain_id", "vocabulary_id",
                "record_count", "person_count"]
        df[keys[2:5]] = df[keys[2:5]].fillna("NA")
        grouped = df.groupby(keys, dropna=False).agg(
            relationship=("relationship", lambda s: ", ".join(sorted(set(s)))),
            method=("method", lambda s: ", ".join(sorted(set(s))))).reset_index()
        for row in grouped.itertuples(index=False):  # one row per used orphan concept
            base = {"result_id": 1, "cdm_name": ctx.cdm_name, "group_name": GROUP_NAME,
                    "group_level": f"{cohort.cohort_name}{SEP}{codelists[int(row.codelist_id)][0]}",
                    "strata_name": "domain_id", "strata_level": str(row.domain_id).lower(),
                    "variable_name": text(row.concept_name), "variable_level": text(row.concept_id),
                    "estimate_type": "integer", "additional_name": ORPHAN_ADDITIONAL,
                    "additional_level": SEP.join([text(row.vocabulary_id), row.relationship, row.method])}
            for est in ("record_count", "person_count"):
                records.append({**base, "estimate_name": est, "estimate_value": str(int(getattr(row, est)))})
    settings = settings_for(ORPHAN, strata="domain_id", additional=ORPHAN_ADDITIONAL)
    return SummarisedResult.from_records(records, settings)


# ---------------------------------------------------------------- unmapped
def name_words(name: str | None) -> frozenset[str]:
    """Significant words of a concept name (see module docstring)."""
    if not name:
        return frozenset()
    words = (WORD_SYNONYMS.get(w, w) for w in _WORD.findall(name.lower()))
    return frozenset(w for w in words if w not in STOP_WORDS)


def names_match(a: frozenset[str], b: frozenset[str]) -> bool:
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    return len(small) >= 2 and small <= large


def unmapped_counts(ctx: DiagnosticContext, codelists: list[tuple[str, list[dict]]]
                    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(concept-0 records per table/source concept/source value, 'Maps to'-based matches per
    codelist, names and synonyms of the codelist concepts); all aggregated in SQL."""
    empty = pd.DataFrame()
    tables = present_tables(ctx)
    if not codelists or not tables:
        return empty, empty, empty
    v, ctes = ctx.vocab_schema, codelist_ctes(ctx, codelists)
    zero = " UNION ALL ".join(
        f"SELECT '{t.domain}' AS domain_lc, t.{t.col('source_concept_id')} AS source_concept_id, "
        f"CAST(t.{t.col('source_value')} AS VARCHAR) AS source_value, COUNT(*) AS record_count "
        f"FROM {ctx.cdm_schema}.{t.table} t WHERE t.{t.col('concept_id')} = 0 "
        f"AND EXISTS (SELECT 1 FROM cl WHERE cl.domain_lc = '{t.domain}') GROUP BY 2, 3" for t in tables)
    zero_cte = (f"zero AS (SELECT z.*, sc.concept_name AS source_concept_name FROM ({zero}) z "
                f"LEFT JOIN {v}.concept sc ON sc.concept_id = z.source_concept_id)")
    maps = (f"maps AS (SELECT DISTINCT cl.codelist_id, cr.concept_id_1 AS source_concept_id, s.concept_code "
            f"FROM cl JOIN {v}.concept_relationship cr ON cr.concept_id_2 = cl.concept_id "
            f"AND cr.relationship_id = 'Maps to' AND cr.invalid_reason IS NULL "
            f"JOIN {v}.concept s ON s.concept_id = cr.concept_id_1)")
    zero_df = ctx.cdm.query_df(f"WITH {ctes},\n{zero_cte}\nSELECT * FROM zero")
    mapped = ctx.cdm.query_df(
        f"WITH {ctes},\n{zero_cte},\n{maps}\n"
        "SELECT m.codelist_id, z.source_concept_id, z.source_value, 'maps_to' AS match_method FROM zero z "
        "JOIN maps m ON m.source_concept_id = z.source_concept_id "
        "UNION SELECT m.codelist_id, z.source_concept_id, z.source_value, 'source_value' FROM zero z "
        "JOIN maps m ON m.concept_code = z.source_value "
        "WHERE z.source_concept_id = 0 OR z.source_concept_id IS NULL")
    names = ctx.cdm.query_df(
        f"WITH {ctes}\nSELECT cl.codelist_id, c.concept_name AS name FROM cl "
        f"JOIN {v}.concept c ON c.concept_id = cl.concept_id "
        f"UNION SELECT cl.codelist_id, s.concept_synonym_name FROM cl "
        f"JOIN {v}.concept_synonym s ON s.concept_id = cl.concept_id")
    return zero_df, mapped, names


def run_unmapped_codes(ctx: DiagnosticContext, unit: tuple[CohortDefinition, ...]) -> SummarisedResult:
    """``summariseUnmappedCodes()`` of the cohort's concept sets, plus the name method."""
    (cohort,) = unit
    codelists = cohort_codelists(cohort)
    zero, mapped, names = unmapped_counts(ctx, codelists)
    records: list[dict] = []
    if len(zero):
        zero = zero.assign(source_concept_id=zero["source_concept_id"].fillna(0).astype("int64"),
                           source_value=zero["source_value"].map(lambda x: None if pd.isna(x) else str(x)))
        key = lambda cid, val: (int(cid) if not pd.isna(cid) else 0, None if pd.isna(val) else str(val))
        methods: dict[tuple[int, int, str | None], set[str]] = defaultdict(set)
        for row in mapped.itertuples(index=False):  # few rows: matched codes only
            methods[(int(row.codelist_id), *key(row.source_concept_id, row.source_value))].add(row.match_method)
        words_by_list: dict[int, list[frozenset[str]]] = defaultdict(list)
        for row in names.itertuples(index=False):
            words_by_list[int(row.codelist_id)].append(name_words(row.name))
        codes = zero.groupby(["source_concept_id", "source_value"], dropna=False).agg(
            record_count=("record_count", "sum"), source_concept_name=("source_concept_name", "first")).reset_index()
        for row in codes.itertuples(index=False):  # one row per distinct unmapped source code
            cid, val = key(row.source_concept_id, row.source_value)
            label = row.source_concept_name if cid != 0 and not pd.isna(row.source_concept_name) else val
            words = name_words(label if isinstance(label, str) else None)
            for i, (cl_name, _) in enumerate(codelists):
                found = set(methods.get((i, cid, val), set()))
                if words and any(names_match(words, w) for w in words_by_list.get(i, [])):
                    found.add("name")
                if not found:
                    continue
                records.append({
                    "result_id": 1, "cdm_name": ctx.cdm_name, "group_name": GROUP_NAME,
                    "group_level": f"{cohort.cohort_name}{SEP}{cl_name}",
                    "variable_name": text(label), "variable_level": str(cid),
                    "estimate_name": "record_count", "estimate_type": "integer",
                    "estimate_value": str(int(row.record_count)), "additional_name": UNMAPPED_ADDITIONAL,
                    "additional_level": SEP.join([text(val), ", ".join(sorted(found))])})
    settings = settings_for(UNMAPPED, strata="", additional=UNMAPPED_ADDITIONAL)
    return SummarisedResult.from_records(records, settings)


DIAGNOSTICS: list[Diagnostic] = [
    Diagnostic("orphan_code_use", "cohort", (ORPHAN,), run_orphan_codes,
               {"min_contained_name": MIN_CONTAINED_NAME, "version": 1}),
    Diagnostic("unmapped_codes", "cohort", (UNMAPPED,), run_unmapped_codes,
               {"stop_words": sorted(STOP_WORDS), "word_synonyms": WORD_SYNONYMS, "version": 1}),
]
