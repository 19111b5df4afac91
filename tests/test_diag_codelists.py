"""Codelist diagnostics (code_use, cohort_code_use, orphan_code_use, unmapped_codes).

Checked on the synthetic site against plain pandas over the fetched tables (concept sets
resolved by hand from the generator's vocabulary CSVs, and by Circe's own concept-set SQL),
and on Eunomia (DuckDB and PostgreSQL) against hand-written SQL for the GI bleed codelist.
"""

from __future__ import annotations

import shutil
from collections import defaultdict

import pandas as pd
import pytest
from circe.sqlrender import render, translate
from circe.vocabulary.concept import ConceptSetExpression
from circe.vocabulary.concept_set_expression_query_builder import (
    ConceptSetExpressionQueryBuilder,
)

from optima_common.results import SEP
from site_agent.cdm import connect_cdm
from site_agent.cdm.synth.vocabulary import LOCAL_CONCEPTS
from site_agent.cohorts import build_cohorts, collect_definitions
from site_agent.cohorts.concept_sets import resolve_concept_set_sql
from site_agent.diagnostics import codelists, orphans
from site_agent.diagnostics.base import DiagnosticContext
from tests.conftest import DEFINITIONS, REPO

VOCAB_DIR = REPO / "site_agent" / "cdm" / "synth" / "vocab"
LUNG = DEFINITIONS / "lung"
COHORTS = ("lung_cancer_broad", "nsclc", "sclc_stage_i_ii")
# domain -> (table, column prefix, date column), written out here independently of the module
TABLES = {"Condition": ("condition_occurrence", "condition", "condition_start_date"),
          "Drug": ("drug_exposure", "drug", "drug_exposure_start_date"),
          "Procedure": ("procedure_occurrence", "procedure", "procedure_date"),
          "Measurement": ("measurement", "measurement", "measurement_date"),
          "Observation": ("observation", "observation", "observation_date"),
          "Device": ("device_exposure", "device", "device_exposure_start_date"),
          "Visit": ("visit_occurrence", "visit", "visit_start_date")}
C34_90 = 2000000033  # ICD10CM C34.90, 'Maps to' Malignant tumor of lung (443388)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def site(synth_site, tmp_path_factory):
    """The synthetic site with three lung cohorts, plus two concept-0 records added on purpose:
    one with a mapped source concept, one with only a mapped source value (both C34.90)."""
    path = tmp_path_factory.mktemp("diag_codelists") / "site.duckdb"
    shutil.copy(synth_site.out, path)
    defs = [d for d in collect_definitions([LUNG]) if d.cohort_name in COHORTS]
    with connect_cdm(str(path), write_schema="results") as cdm:
        build_cohorts(cdm, defs)
        with cdm.transaction() as s:
            s.execute("INSERT INTO main.condition_occurrence (condition_occurrence_id, person_id, "
                      "condition_concept_id, condition_start_date, condition_type_concept_id, "
                      "condition_source_value, condition_source_concept_id) "
                      f"SELECT max(condition_occurrence_id) + 1, min(person_id), 0, DATE '2015-06-01', 32817, "
                      f"'C34.90', {C34_90} FROM main.condition_occurrence")
            s.execute("INSERT INTO main.condition_occurrence (condition_occurrence_id, person_id, "
                      "condition_concept_id, condition_start_date, condition_type_concept_id, "
                      "condition_source_value, condition_source_concept_id) "
                      "SELECT max(condition_occurrence_id) + 1, min(person_id), 0, DATE '2016-06-01', 32817, "
                      "'C34.90', 0 FROM main.condition_occurrence")
        tables = {t: cdm.query_df(f"SELECT * FROM main.{t}")
                  for t in ["concept", "concept_ancestor", "concept_relationship", "concept_synonym"]}
        for table, prefix, date in TABLES.values():
            tables[table] = cdm.query_df(
                f"SELECT person_id, {prefix}_concept_id AS concept_id, "
                f"{prefix}_source_concept_id AS source_concept_id, "
                f"{prefix}_source_value AS source_value, {prefix}_type_concept_id AS type_concept_id, "
                f"{date} AS start_date FROM main.{table}")
        tables["cohort"] = cdm.query_df("SELECT * FROM results.cohort")
        yield cdm, DiagnosticContext(cdm, "synth", tuple(defs)), {d.cohort_name: d for d in defs}, tables


def _hand_vocab(concept: pd.DataFrame) -> tuple[dict[str, int], dict[int, set[int]], dict[int, set[int]]]:
    """key -> id, id -> descendants (incl. itself) and standard id -> source ids mapping to it,
    from the generator's CSVs and its local-code list only."""
    c = pd.read_csv(VOCAB_DIR / "concepts.csv")
    key = dict(zip(c["key"], c["concept_id"].astype(int)))
    local_ids = dict(zip(concept["concept_code"], concept["concept_id"]))
    key.update({k: int(local_ids[code]) for k, code, _, _ in LOCAL_CONCEPTS})
    parents: dict[int, set[int]] = defaultdict(set)
    for child, parent in pd.read_csv(VOCAB_DIR / "hierarchy.csv").itertuples(index=False):
        parents[key[child]].add(key[parent])
    desc: dict[int, set[int]] = defaultdict(set)
    for cid in set(key.values()):
        todo = [cid]
        while todo:
            node = todo.pop()
            desc[node].add(cid)
            todo.extend(parents[node])
    mapped_from: dict[int, set[int]] = defaultdict(set)
    m = pd.read_csv(VOCAB_DIR / "maps_to.csv")
    pairs = list(zip(m["source_key"], m["standard_key"])) + [(k, s) for k, _, _, s in LOCAL_CONCEPTS if s]
    for src, std in pairs:
        mapped_from[key[std]].add(key[src])
    return key, desc, mapped_from


def _hand_resolve(items: list[dict], desc, mapped_from, existing: set[int]) -> set[int]:
    def part(excluded: bool) -> set[int]:
        out: set[int] = set()
        for it in items:
            if bool(it.get("isExcluded")) != excluded:
                continue
            cid = int(it["concept"]["CONCEPT_ID"])
            got = {cid} | (desc[cid] if it.get("includeDescendants") else set())
            out |= got & existing
            if it.get("includeMapped"):
                for std in got & existing:
                    out |= mapped_from[std] | {std}  # standard concepts also 'Maps to' themselves
        return out
    return part(False) - part(True)


def _codelists(defn) -> dict[str, list[dict]]:
    return {name: items for name, items in codelists.cohort_codelists(defn)}


def _resolved(cdm, ctx, items) -> set[int]:
    return set(cdm.query_df(resolve_concept_set_sql(ctx, items))["concept_id"].astype(int))


# ---------------------------------------------------------------- concept sets
def test_resolve_concept_set_matches_circe_and_hand(site):
    cdm, ctx, _, t = site
    key, desc, mapped_from = _hand_vocab(t["concept"])
    existing = set(t["concept"]["concept_id"].astype(int))
    item = lambda k, exc=False, d=True, m=False: {"concept": {"CONCEPT_ID": key[k]}, "isExcluded": exc,
                                                  "includeDescendants": d, "includeMapped": m}
    sets = [cs["expression"]["items"] for d in collect_definitions([LUNG]) for cs in d.expression["ConceptSets"]]
    sets += [[item("LUNG_MALIGNANT", m=True), item("SCLC", exc=True), item("ICD10CM_C34_10", exc=True, d=False)],
             [item("MALIGNANT_NEOPLASM", d=False, m=True), item("SKIN_MALIGNANT", exc=True, m=True)],
             [item("NSCLC", d=False), item("NSCLC", exc=True, d=False)], []]
    for items in sets:
        ours = _resolved(cdm, ctx, items)
        circe_sql = ConceptSetExpressionQueryBuilder().build_expression_query(
            ConceptSetExpression.model_validate({"items": items}))
        circe = set(cdm.query_df(translate(render(circe_sql, vocabulary_database_schema="main"), "duckdb"))
                    .iloc[:, 0].astype(int))
        assert ours == circe == _hand_resolve(items, desc, mapped_from, existing), items
    lung = _resolved(cdm, ctx, sets[-4])  # Circe: mapped codes come from the set before exclusion
    assert {key[k] for k in ("LUNG_MALIGNANT", "NSCLC", "LUNG_SQUAMOUS", "ICD10CM_C34_90", "ICD10_C34_9",
                             "ICDO3_8140_3_C34_9", "ICDO3_8041_3_C34_9")} <= lung
    assert not {key["SCLC"], key["ICD10CM_C34_10"], key["LUNG_PRIMARY_MALIGNANT"], key["LOCAL_LUNG_CA"]} & lung


# ---------------------------------------------------------------- pandas reference
def _records(t: dict, ids: set[int], entry: pd.DataFrame | None = None) -> pd.DataFrame:
    concept = t["concept"].set_index("concept_id")
    frames = []
    for domain, (table, _, _) in TABLES.items():
        df = t[table]
        df = df[df["concept_id"].isin(ids)]
        df = df[df["concept_id"].map(concept["domain_id"]) == domain].assign(table=table)
        if entry is not None:
            df = df.merge(entry, left_on=["person_id", "start_date"], right_on=["subject_id", "cohort_start_date"])
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["year"] = pd.to_datetime(out["start_date"]).dt.year.astype(str)
    out["source_value"] = out["source_value"].fillna("NA").astype(str)
    return out


def _expected_use(rec: pd.DataFrame, by_year: bool) -> dict:
    exp: dict = {}
    if rec.empty:  # a codelist without records gives no rows (as in CodelistGenerator)
        return exp
    keys = ["concept_id", "source_concept_id", "source_value", "type_concept_id", "table"]
    strata = [("overall", None)] + ([("year", y) for y in sorted(rec["year"].unique())] if by_year else [])
    for sname, level in strata:
        sub = rec if level is None else rec[rec["year"] == level]
        slevel = "overall" if level is None else level
        exp[(sname, slevel, None, "record_count")] = len(sub)
        exp[(sname, slevel, None, "person_count")] = sub["person_id"].nunique()
        for k, g in sub.groupby(keys):
            ck = tuple(str(x) for x in k)
            exp[(sname, slevel, ck, "record_count")] = len(g)
            exp[(sname, slevel, ck, "person_count")] = g["person_id"].nunique()
    return exp


def _got_use(data: pd.DataFrame, group_level: str) -> dict:
    got = {}
    for r in data[data["group_level"] == group_level].itertuples(index=False):
        ck = None
        if r.variable_name != "overall":
            a = r.additional_level.split(SEP)
            ck = (r.variable_level, a[1], a[2], a[3], a[6])
        got[(r.strata_name, r.strata_level, ck, r.estimate_name)] = int(r.estimate_value)
    return got


def test_code_use_matches_pandas(site):
    cdm, ctx, defs, t = site
    for name in COHORTS:
        res = codelists.run_code_use(ctx, (defs[name],))
        assert list(res.settings["result_type"]) == ["code_use"]
        assert res.settings.loc[0, "date_range_start"] == "none"
        for cl_name, items in _codelists(defs[name]).items():
            rec = _records(t, _resolved(cdm, ctx, items))
            got = _got_use(res.data, f"{name}{SEP}{cl_name}")
            assert got == _expected_use(rec, by_year=True), (name, cl_name)
    row = res.data[(res.data["variable_level"] == "4110591") & (res.data["strata_name"] == "overall")].iloc[0]
    assert row["variable_name"] == "Small cell carcinoma of lung"
    assert row["additional_name"].split(SEP)[-1] == "table" and row["additional_level"].endswith(
        "EHR &&& condition &&& condition_occurrence")


def test_cohort_code_use_matches_pandas(site):
    cdm, ctx, defs, t = site
    for name in COHORTS:
        d = defs[name]
        res = codelists.run_cohort_code_use(ctx, (d,))
        assert res.settings.loc[0, "timing"] == "entry"
        coh = t["cohort"][t["cohort"]["cohort_definition_id"] == d.cohort_definition_id]
        entry = coh[["subject_id", "cohort_start_date"]].drop_duplicates()
        total = 0
        for cl_name, items in _codelists(d).items():
            rec = _records(t, _resolved(cdm, ctx, items), entry)
            assert _got_use(res.data, f"{name}{SEP}{cl_name}") == _expected_use(rec, by_year=False), cl_name
            total += len(rec)
        assert total > 0
    # every NSCLC cohort entry is an NSCLC-codelist record on the index date
    # (first-diagnosis cohort: one entry per person)
    nsclc = codelists.run_cohort_code_use(ctx, (defs["nsclc"],)).data
    n_entries = len(t["cohort"][t["cohort"]["cohort_definition_id"] == defs["nsclc"].cohort_definition_id])
    overall = nsclc[(nsclc["variable_name"] == "overall") & (nsclc["estimate_name"] == "person_count")]
    assert int(overall["estimate_value"].iloc[0]) == n_entries > 0


def test_code_use_one_statement_per_run_same_rows_as_each_cohort_alone(site, monkeypatch):
    """The three cohorts' code use comes from one statement per run that reads the clinical tables (entry
    code use: one per cohort); each cohort's rows equal those of a run holding that cohort alone."""
    cdm, ctx, defs, _ = site
    seen: list[str] = []
    real = cdm.query_df
    monkeypatch.setattr(cdm, "query_df", lambda sql, *a, **k: (seen.append(sql), real(sql, *a, **k))[1])
    run = DiagnosticContext(cdm, "synth", ctx.cohorts)  # a fresh run (empty memo)
    together = {}
    for f, reads in ((codelists.run_code_use, 1), (codelists.run_cohort_code_use, len(COHORTS))):
        seen.clear()
        together.update({(f.__name__, n): f(run, (defs[n],)).data for n in COHORTS})
        assert len([q for q in seen if "condition_occurrence" in q]) == reads, f.__name__
    for (fname, n), data in together.items():
        alone = getattr(codelists, fname)(DiagnosticContext(cdm, "synth", (defs[n],)), (defs[n],)).data
        key = list(data.columns)
        assert len(data) > 0
        pd.testing.assert_frame_equal(data.sort_values(key).reset_index(drop=True),
                                      alone.sort_values(key).reset_index(drop=True))


def _expected_orphans(t: dict, ids: set[int]) -> dict[int, tuple[set[str], int, int]]:
    concept, ca, cr, syn = t["concept"], t["concept_ancestor"], t["concept_relationship"], t["concept_synonym"]
    rel: dict[int, set[str]] = defaultdict(set)
    for c in ca[ca["ancestor_concept_id"].isin(ids)]["descendant_concept_id"]:
        rel[int(c)].add("Descendant")
    for c in ca[ca["descendant_concept_id"].isin(ids) & (ca["min_levels_of_separation"] == 1)]["ancestor_concept_id"]:
        rel[int(c)].add("Ancestor")
    for r in cr[cr["concept_id_1"].isin(ids) & cr["invalid_reason"].isna()].itertuples(index=False):
        rel[int(r.concept_id_2)].add(r.relationship_id)
    std = concept[concept["standard_concept"] == "S"]
    names = concept[concept["concept_id"].isin(ids)][["concept_name", "domain_id"]].to_numpy()
    texts = [(int(c), n, d) for c, n, d in std[["concept_id", "concept_name", "domain_id"]].to_numpy()]
    dom = dict(zip(std["concept_id"], std["domain_id"]))
    texts += [(int(c), n, dom[c]) for c, n in syn[["concept_id", "concept_synonym_name"]].to_numpy() if c in dom]
    for cid, text, domain in texts:
        for name, ndomain in names:
            a, b = name.lower(), text.lower()
            if domain == ndomain and (a in b or (len(b) >= 4 and b in a)):
                rel[cid].add("Name match")
    used = pd.concat([t[tab][["concept_id", "person_id"]] for tab, _, _ in TABLES.values()])
    counts = used.groupby("concept_id")["person_id"].agg(["size", "nunique"])
    return {c: (r, int(counts.loc[c, "size"]), int(counts.loc[c, "nunique"]))
            for c, r in rel.items() if c not in ids and c in counts.index}


def test_orphan_codes_match_pandas(site):
    cdm, ctx, defs, t = site
    found_any = False
    for name in COHORTS:
        res = orphans.run_orphan_codes(ctx, (defs[name],))
        assert list(res.settings["result_type"]) == ["orphan_code_use"]
        for cl_name, items in _codelists(defs[name]).items():
            exp = _expected_orphans(t, _resolved(cdm, ctx, items))
            sub = res.data[res.data["group_level"] == f"{name}{SEP}{cl_name}"]
            got: dict[int, tuple[set[str], int, int]] = {}
            for cid, g in sub.groupby("variable_level"):
                est = dict(zip(g["estimate_name"], g["estimate_value"].astype(int)))
                _, relationship, method = g["additional_level"].iloc[0].split(SEP)
                rels = set(relationship.split(", "))
                assert method == ", ".join(sorted({"name" if r == "Name match" else "vocabulary" for r in rels}))
                got[int(cid)] = (rels, est["record_count"], est["person_count"])
            assert got == exp, (name, cl_name)
            found_any |= bool(got)
    assert found_any
    nsclc = orphans.run_orphan_codes(ctx, (defs["nsclc"],)).data
    lung = nsclc[nsclc["variable_level"] == "443388"]  # Malignant tumor of lung: a parent of NSCLC, used
    assert len(lung) == 2 and "Ancestor" in lung["additional_level"].iloc[0]
    assert set(lung["strata_level"]) == {"condition"}


def test_unmapped_codes(site):
    cdm, ctx, defs, t = site
    co = t["condition_occurrence"]
    zero = co[co["concept_id"] == 0]
    n_code = lambda code: int((zero["source_value"] == code).sum())
    n_c34 = int((zero["source_concept_id"] == C34_90).sum())

    def got(name: str) -> dict[tuple[str, str], tuple[int, str]]:
        res = orphans.run_unmapped_codes(ctx, (defs[name],))
        assert list(res.settings["result_type"]) == ["unmapped_codes"]
        return {(r.variable_level, r.additional_level.split(SEP)[0]): (int(r.estimate_value),
                                                                      r.additional_level.split(SEP)[1])
                for r in res.data.itertuples(index=False)}

    ids = dict(zip(t["concept"]["concept_code"], t["concept"]["concept_id"].astype(str)))
    nsclc = got("nsclc")
    assert nsclc == {(ids["LCA-NS-H"], "LCA-NS-H"): (n_code("LCA-NS-H"), "name")}
    assert n_code("LCA-NS-H") > 0
    broad = got("lung_cancer_broad")
    assert broad == {
        (ids["LCA-NS-H"], "LCA-NS-H"): (n_code("LCA-NS-H"), "name"),
        (ids["LCA-SC-H"], "LCA-SC-H"): (n_code("LCA-SC-H"), "name"),
        (ids["LCA-X"], "LCA-X"): (n_code("LCA-X"), "name"),
        (str(C34_90), "C34.90"): (n_c34, "maps_to"),
        ("0", "C34.90"): (1, "source_value"),
    }
    sclc = got("sclc_stage_i_ii")
    assert sclc == {(ids["LCA-SC-H"], "LCA-SC-H"): (n_code("LCA-SC-H"), "name")}


def test_name_words_heuristic():
    w = orphans.name_words
    assert orphans.names_match(w("non-small cell lung carcinoma, hospital code"), w("Non-small cell lung cancer"))
    assert not orphans.names_match(w("non-small cell lung carcinoma"), w("Small cell carcinoma of lung"))
    assert orphans.names_match(w("lung tumour NOS"), w("Malignant tumor of lung"))
    assert not orphans.names_match(w("lung"), w("Malignant tumor of lung"))  # one word is too little


def test_settings_same_with_and_without_data(site):
    """A unit without data rows has the same settings (group/strata/additional) as one with."""
    _, ctx, defs, _ = site
    empty = collect_definitions([LUNG / "death.json"])[0]  # no concept sets
    for diag in [*codelists.DIAGNOSTICS, *orphans.DIAGNOSTICS]:
        full, none = diag.run(ctx, (defs["nsclc"],)), diag.run(ctx, (empty,))
        assert len(full) > 0 and len(none) == 0, diag.name
        assert full.settings.equals(none.settings), diag.name


def test_registry():
    names = {d.name: d for d in [*codelists.DIAGNOSTICS, *orphans.DIAGNOSTICS]}
    assert set(names) == {"code_use", "cohort_code_use", "orphan_code_use", "unmapped_codes"}
    assert all(d.scope == "cohort" and len(d.result_types) == 1 for d in names.values())


# ---------------------------------------------------------------- Eunomia, both backends
def test_gi_bleed_code_use_on_eunomia(eunomia_cdm):
    url, schema, write = eunomia_cdm
    defs = collect_definitions([REPO / "tests" / "data" / "gi_bleed_adults.json"])
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        build_cohorts(cdm, defs)
        ctx = DiagnosticContext(cdm, "eunomia", tuple(defs))
        (d,) = defs
        group = f"{d.cohort_name}{SEP}GI bleed"
        codes = (f"SELECT descendant_concept_id FROM {schema}.concept_ancestor WHERE ancestor_concept_id = 192671")
        base = f"FROM {schema}.condition_occurrence WHERE condition_concept_id IN ({codes})"
        data = codelists.run_code_use(ctx, (d,)).data
        data = data[data["group_level"] == group]

        def val(strata: str, level: str, variable: str, est: str) -> int:
            row = data[(data["strata_name"] == strata) & (data["strata_level"] == level)
                       & (data["variable_name"] == variable) & (data["estimate_name"] == est)]
            return int(row["estimate_value"].sum())

        n, p = cdm.query_df(f"SELECT COUNT(*) AS n, COUNT(DISTINCT person_id) AS p {base}").iloc[0]
        assert (val("overall", "overall", "overall", "record_count"), val("overall", "overall", "overall",
                                                                          "person_count")) == (n, p) and n > 400
        years = cdm.query_df(f"SELECT CAST(EXTRACT(YEAR FROM condition_start_date) AS INTEGER) AS y, COUNT(*) AS n, "
                             f"COUNT(DISTINCT person_id) AS p {base} GROUP BY 1")
        for y, yn, yp in years.itertuples(index=False):
            assert val("year", str(y), "overall", "record_count") == yn
            assert val("year", str(y), "overall", "person_count") == yp
        per = cdm.query_df(f"SELECT condition_concept_id AS c, condition_source_concept_id AS s, COUNT(*) AS n {base} "
                           "GROUP BY 1, 2")
        concept_rows = data[(data["strata_name"] == "overall") & (data["variable_name"] != "overall")
                            & (data["estimate_name"] == "record_count")]
        got = {(r.variable_level, r.additional_level.split(SEP)[1]): int(r.estimate_value)
               for r in concept_rows.itertuples(index=False)}
        assert got == {(str(c), str(s)): int(k) for c, s, k in per.itertuples(index=False)}
        # index event breakdown: GI bleed records on the cohort start date of cohort members
        cohort = f"SELECT DISTINCT subject_id, cohort_start_date FROM {write}.cohort WHERE cohort_definition_id = " \
                 f"{d.cohort_definition_id}"
        ne, pe = cdm.query_df(
            f"SELECT COUNT(*) AS n, COUNT(DISTINCT co.person_id) AS p FROM {schema}.condition_occurrence co "
            f"JOIN ({cohort}) e ON e.subject_id = co.person_id AND e.cohort_start_date = co.condition_start_date "
            f"WHERE co.condition_concept_id IN ({codes})").iloc[0]
        entry = codelists.run_cohort_code_use(ctx, (d,)).data
        overall = entry[entry["variable_name"] == "overall"].set_index("estimate_name")["estimate_value"].astype(int)
        assert (overall["record_count"], overall["person_count"]) == (ne, pe) and pe > 0
        # the other two run on both backends and never report a codelist concept
        orph = orphans.run_orphan_codes(ctx, (d,))
        unm = orphans.run_unmapped_codes(ctx, (d,))
        assert list(orph.settings["result_type"]) == ["orphan_code_use"]
        assert list(unm.settings["result_type"]) == ["unmapped_codes"]
        gi = set(cdm.query_df(codes)["descendant_concept_id"].astype(str))
        assert not gi & set(orph.data["variable_level"])
