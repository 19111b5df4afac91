"""The synthetic CDM generator: determinism, schema, data sanity, ground truth, bad arguments."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from optima_common.errors import ConfigError
from site_agent.cdm.ddl import cdm_ddl
from site_agent.cdm.synth import SynthResult, generate_site, truth
from site_agent.cdm.synth.vocabulary import Vocabulary

CLINICAL = [
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "death",
]


def _gen(tmp: Path, name: str, **kw) -> SynthResult:
    args = {"persons": 2000, "site": "site_a", "profile": "oncology", "seed": 1, "chunk_size": 1000} | kw
    return generate_site(out=tmp / name, **args)


def _hashes(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        for t in CLINICAL + ["concept", "concept_ancestor", "concept_relationship"]:
            df = con.execute(f"SELECT * FROM {t}").df()
            df = df.sort_values(list(df.columns)).reset_index(drop=True)
            out[t] = int(pd.util.hash_pandas_object(df, index=False).sum()) if len(df) else 0
        return out
    finally:
        con.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> SynthResult:
    return _gen(tmp_path_factory.mktemp("synth"), "site.duckdb")


@pytest.fixture(scope="module")
def onc20k(tmp_path_factory) -> SynthResult:
    return generate_site(
        out=tmp_path_factory.mktemp("synth20k") / "onc.duckdb", persons=20_000, site="site_a", profile="oncology", seed=1
    )


def test_result_shape(site: SynthResult):
    assert site.out.is_file()
    assert site.counts["person"] == 2000
    assert set(site.truth) == set(truth.COHORTS) and len(site.truth) == 12
    assert [a["rule"] for a in site.truth_attrition] == list(truth.ATTRITION_RULES)
    assert site.elapsed_seconds > 0
    SynthResult.model_validate_json(site.model_dump_json())


def test_deterministic_and_chunk_invariant(tmp_path, site: SynthResult):
    again = _gen(tmp_path, "again.duckdb")
    other_chunks = _gen(tmp_path, "chunks.duckdb", chunk_size=5000)
    reference = _hashes(site.out)
    assert _hashes(again.out) == reference
    assert _hashes(other_chunks.out) == reference
    assert again.truth == site.truth == other_chunks.truth
    assert again.counts == site.counts
    different = _gen(tmp_path, "seed2.duckdb", seed=2)
    h2 = _hashes(different.out)
    assert h2["person"] != reference["person"] and h2["condition_occurrence"] != reference["condition_occurrence"]
    assert h2["concept"] == reference["concept"]


def test_chunks_give_unique_ids(tmp_path):
    res = _gen(tmp_path, "ten.duckdb", persons=10_000, chunk_size=1000, profile="primary-care")
    con = duckdb.connect(str(res.out), read_only=True)
    n, distinct, lo, hi = con.execute("SELECT count(*), count(DISTINCT person_id), min(person_id), max(person_id) FROM person").fetchone()
    assert (n, distinct, lo, hi) == (10_000, 10_000, 1, 10_000)
    for t, col in [("visit_occurrence", "visit_occurrence_id"), ("condition_occurrence", "condition_occurrence_id"),
                   ("measurement", "measurement_id"), ("drug_exposure", "drug_exposure_id")]:
        n, distinct = con.execute(f"SELECT count(*), count(DISTINCT {col}) FROM {t}").fetchone()
        assert n == distinct > 0


def test_all_cdm_tables_exist(site: SynthResult):
    con = duckdb.connect(str(site.out), read_only=True)
    have = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    expected = {s.split()[2].split(".")[1] for s in cdm_ddl("duckdb", "5.4", "main") if s.upper().startswith("CREATE TABLE")}
    assert expected and expected <= have
    assert con.execute("SELECT cdm_source_name, cdm_version FROM cdm_source").fetchall() == [("site_a", "5.4")]
    ver = con.execute("SELECT vocabulary_version FROM vocabulary WHERE vocabulary_id = 'None'").fetchone()[0]
    assert "synthetic" in ver


def test_concept_ancestor_is_the_closure_of_is_a(site: SynthResult):
    con = duckdb.connect(str(site.out), read_only=True)
    edges = con.execute("SELECT concept_id_1, concept_id_2 FROM concept_relationship WHERE relationship_id = 'Is a'").fetchall()
    std = [r[0] for r in con.execute("SELECT concept_id FROM concept WHERE standard_concept = 'S'").fetchall()]
    children: dict[int, list[int]] = {}
    for child, parent in edges:
        children.setdefault(parent, []).append(child)
    expected: dict[tuple[int, int], tuple[int, int]] = {}
    for a in std:  # enumerate every path down from a (the DAG is small)
        stack = [(a, 0)]
        while stack:
            x, depth = stack.pop()
            lo, hi = expected.get((a, x), (depth, depth))
            expected[(a, x)] = (min(lo, depth), max(hi, depth))
            stack.extend((c, depth + 1) for c in children.get(x, []))
    got = {(a, d): (lo, hi) for a, d, lo, hi in con.execute("SELECT * FROM concept_ancestor").fetchall()}
    assert got == expected
    assert all(got[(c, c)] == (0, 0) for c in std)
    # Subsumes mirrors Is a; every standard concept maps to itself
    subsumes = set(con.execute("SELECT concept_id_2, concept_id_1 FROM concept_relationship WHERE relationship_id = 'Subsumes'").fetchall())
    assert subsumes == set(edges)
    selfmaps = {r[0] for r in con.execute("SELECT concept_id_1 FROM concept_relationship WHERE relationship_id = 'Maps to' AND concept_id_1 = concept_id_2").fetchall()}
    assert selfmaps == set(std)


def test_data_sanity(site: SynthResult):
    con = duckdb.connect(str(site.out), read_only=True)
    one = lambda sql: con.execute(sql).fetchone()[0]
    for t, col in [("condition_occurrence", "condition_start_date"), ("drug_exposure", "drug_exposure_start_date"),
                   ("procedure_occurrence", "procedure_date"), ("measurement", "measurement_date"),
                   ("visit_occurrence", "visit_start_date"), ("observation_period", "observation_period_start_date")]:
        assert one(f"SELECT count(*) FROM {t} x ANTI JOIN person p USING (person_id)") == 0, t
        assert one(f"SELECT count(*) FROM {t} WHERE {col} < DATE '1990-01-01' OR {col} > DATE '2025-12-31'") == 0, t
        assert one(f"SELECT count(*) FROM {t} x JOIN person p USING (person_id) WHERE {col} < p.birth_datetime::DATE") == 0, t
    assert one("SELECT count(*) FROM death d ANTI JOIN person USING (person_id)") == 0
    assert one("SELECT count(*) FROM death d JOIN person p USING (person_id) WHERE d.death_date < p.birth_datetime::DATE") == 0
    assert one("SELECT count(*) - count(DISTINCT person_id) FROM death") == 0
    assert one("SELECT count(*) FROM drug_exposure WHERE drug_exposure_end_date < drug_exposure_start_date") == 0
    assert one("SELECT count(*) FROM visit_occurrence WHERE visit_end_date < visit_start_date") == 0
    assert one("SELECT count(*) FROM observation_period WHERE observation_period_end_date < observation_period_start_date") == 0
    assert one("SELECT count(*) FROM person ANTI JOIN observation_period USING (person_id)") == 0
    # periods of a person never overlap
    assert one("""SELECT count(*) FROM observation_period a JOIN observation_period b USING (person_id)
                  WHERE a.observation_period_id < b.observation_period_id
                  AND a.observation_period_start_date <= b.observation_period_end_date
                  AND b.observation_period_start_date <= a.observation_period_end_date""") == 0
    # visit references exist and belong to the same person
    assert one("""SELECT count(*) FROM condition_occurrence c JOIN visit_occurrence v USING (visit_occurrence_id)
                  WHERE v.person_id <> c.person_id""") == 0
    assert one("SELECT count(*) FROM condition_occurrence WHERE visit_occurrence_id IS NOT NULL AND visit_occurrence_id NOT IN (SELECT visit_occurrence_id FROM visit_occurrence)") == 0
    # every clinical concept exists in concept (0 = unmapped)
    for t, col in [("condition_occurrence", "condition_concept_id"), ("drug_exposure", "drug_concept_id"),
                   ("procedure_occurrence", "procedure_concept_id"), ("measurement", "measurement_concept_id")]:
        assert one(f"SELECT count(*) FROM {t} WHERE {col} <> 0 AND {col} NOT IN (SELECT concept_id FROM concept WHERE standard_concept = 'S')") == 0


def test_unmapped_local_codes(onc20k: SynthResult):
    con = duckdb.connect(str(onc20k.out), read_only=True)
    rows = con.execute("""SELECT DISTINCT c.condition_source_concept_id, c.condition_source_value, k.vocabulary_id, k.standard_concept
                          FROM condition_occurrence c JOIN concept k ON k.concept_id = c.condition_source_concept_id
                          WHERE c.condition_concept_id = 0""").fetchall()
    assert rows
    assert all(cid >= 2_000_000_000 and vocab == "OPTIMA_LOCAL" and std is None and code for cid, code, vocab, std in rows)
    mapped = con.execute("""SELECT count(*) FROM concept_relationship r JOIN concept c ON c.concept_id = r.concept_id_1
                            WHERE c.vocabulary_id = 'OPTIMA_LOCAL' AND r.relationship_id = 'Maps to'""").fetchone()[0]
    assert mapped >= 2


def _sql_truth(path: Path, v: Vocabulary) -> tuple[dict[str, dict[str, int]], list[int]]:
    """An independent SQL reading of the README semantics, to cross-check the Python truth."""
    con = duckdb.connect(str(path), read_only=True)

    def d(*keys: str) -> str:
        return f"(SELECT descendant_concept_id FROM concept_ancestor WHERE ancestor_concept_id IN ({','.join(str(v.id[k]) for k in keys)}))"

    def first(cs: str, prior: int | None = None) -> str:
        extra = f"AND datediff('day', op.observation_period_start_date, f.d) >= {prior}" if prior else ""
        return f"""SELECT f.person_id, f.d AS idx, op.observation_period_start_date AS s, op.observation_period_end_date AS e
                   FROM (SELECT person_id, min(condition_start_date) AS d FROM condition_occurrence
                         WHERE condition_concept_id IN {cs} GROUP BY 1) f
                   JOIN observation_period op ON op.person_id = f.person_id
                    AND f.d BETWEEN op.observation_period_start_date AND op.observation_period_end_date {extra}"""

    one = lambda sql: con.execute(sql).fetchone()[0]
    out: dict[str, dict[str, int]] = {}
    for name, cs, prior in [("lung_cancer_broad", d("LUNG_MALIGNANT", "LUNG_PRIMARY_MALIGNANT"), None),
                            ("lung_cancer_narrow", d("NSCLC", "SCLC"), 365), ("nsclc", d("NSCLC"), None),
                            ("sclc", d("SCLC"), None), ("disease_progression", d("PROGRESSION"), None),
                            ("breast_cancer", d("BREAST_MALIGNANT"), None)]:
        n = one(f"SELECT count(*) FROM ({first(cs, prior)})")
        out[name] = {"records": n, "subjects": n}
    other = (f"({d('MALIGNANT_NEOPLASM')} EXCEPT {d('SKIN_MALIGNANT', 'SKIN_PRIMARY_MALIGNANT', 'SKIN_BCC', 'SKIN_SCC')} "
             f"EXCEPT {d('LUNG_MALIGNANT')} EXCEPT {d('LUNG_PRIMARY_MALIGNANT')})")
    flags = ", ".join(f"bool_or(m.measurement_concept_id IN {d(k, 'P' + k, 'C7_' + k, 'P7_' + k)}) AS {k.lower()}"
                      for k in ("T1", "T2", "T3", "N0", "N1", "M0"))
    stage = d("STAGE_1", "STAGE_2", "P7_STAGE_1", "P7_STAGE_2", "C_STAGE_1", "C_STAGE_2", "P_STAGE_1", "P_STAGE_2")
    base = f"""WITH q AS ({first(d('SCLC'), 365)}),
      a AS (SELECT q.* FROM q JOIN person p USING (person_id) WHERE year(q.idx) - p.year_of_birth >= 18),
      b AS (SELECT * FROM a WHERE NOT EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = a.person_id
            AND c.condition_concept_id IN {other} AND c.condition_start_date <= a.idx - 1)),
      f AS (SELECT b.person_id, bool_or(m.measurement_concept_id IN {stage}) AS st, {flags}
            FROM b JOIN measurement m ON m.person_id = b.person_id
             AND m.measurement_date BETWEEN b.idx - 30 AND b.idx + 60 AND m.measurement_date BETWEEN b.s AND b.e
            GROUP BY 1)"""
    steps = [one(base + f" SELECT count(*) FROM {t}") for t in ("q", "a", "b")]
    steps.append(one(base + " SELECT count(*) FROM f WHERE st OR (m0 AND ((n0 AND (t1 OR t2 OR t3)) OR (n1 AND (t1 OR t2))))"))
    out["sclc_stage_i_ii"] = {"records": steps[-1], "subjects": steps[-1]}
    for name, table, col, date, cs in [
        ("lung_surgery", "procedure_occurrence", "procedure_concept_id", "procedure_date",
         d("LUNG_EXCISION", "LOBECTOMY", "SLEEVE_RESECTION", "PNEUMONECTOMY")),
        ("lung_chemotherapy", "drug_exposure", "drug_concept_id", "drug_exposure_start_date", d("CARBOPLATIN", "CISPLATIN", "ETOPOSIDE")),
        ("lung_radiotherapy", "procedure_occurrence", "procedure_concept_id", "procedure_date",
         d("RADIOTHERAPY", "RT_STEREOTACTIC", "RT_CONFORMAL", "RT_IMRT")),
    ]:
        rec, subj = con.execute(f"""SELECT count(*), count(DISTINCT person_id) FROM (
            SELECT DISTINCT x.person_id, x.{date} FROM {table} x JOIN observation_period op ON op.person_id = x.person_id
            AND x.{date} BETWEEN op.observation_period_start_date AND op.observation_period_end_date
            WHERE x.{col} IN {cs})""").fetchone()
        out[name] = {"records": rec, "subjects": subj}
    n = one("""SELECT count(*) FROM death d JOIN observation_period op ON op.person_id = d.person_id
               AND d.death_date BETWEEN op.observation_period_start_date AND op.observation_period_end_date""")
    out["death"] = {"records": n, "subjects": n}
    n = one(f"""WITH q AS ({first(d('BREAST_MALIGNANT'))}) SELECT count(*) FROM q WHERE EXISTS (
               SELECT 1 FROM condition_occurrence c WHERE c.person_id = q.person_id
               AND c.condition_concept_id IN {d('SECONDARY_MALIGNANT', 'LUNG_SECONDARY')}
               AND c.condition_start_date >= q.idx - 30 AND c.condition_start_date BETWEEN q.s AND q.e)""")
    out["metastatic_breast_cancer"] = {"records": n, "subjects": n}
    con.close()
    return out, steps


def test_truth_matches_an_sql_reading_of_the_spec(onc20k: SynthResult):
    sql, steps = _sql_truth(onc20k.out, Vocabulary.load())
    assert sql == onc20k.truth
    assert steps == [a["subjects"] for a in onc20k.truth_attrition]


def test_truth_sanity(onc20k: SynthResult, site: SynthResult):
    for res in (onc20k, site):
        t = res.truth
        steps = [a["subjects"] for a in res.truth_attrition]
        assert steps == sorted(steps, reverse=True)
        assert steps[-1] == t["sclc_stage_i_ii"]["subjects"]
        assert steps[0] <= t["sclc"]["subjects"] <= t["lung_cancer_narrow"]["subjects"] + t["sclc"]["subjects"]
        assert t["metastatic_breast_cancer"]["subjects"] <= t["breast_cancer"]["subjects"]
        for name in ("lung_surgery", "lung_chemotherapy", "lung_radiotherapy"):
            assert t[name]["records"] >= t[name]["subjects"]
    t = onc20k.truth
    assert 0.03 * 20_000 < t["lung_cancer_broad"]["subjects"] < 0.12 * 20_000
    assert 0.08 < t["sclc"]["subjects"] / t["lung_cancer_broad"]["subjects"] < 0.25
    assert t["lung_chemotherapy"]["records"] > 3 * t["lung_chemotherapy"]["subjects"]
    assert t["metastatic_breast_cancer"]["subjects"] > 0 and t["disease_progression"]["subjects"] > 0
    assert all(v["subjects"] > 0 for k, v in t.items() if k != "sclc_stage_i_ii")


def test_primary_care_has_few_lung_cancers(tmp_path):
    res = _gen(tmp_path, "pc.duckdb", persons=5000, profile="primary-care", site="clinic_b")
    assert res.truth["lung_cancer_broad"]["subjects"] < 0.02 * 5000


def test_sites_differ(tmp_path):
    a = _gen(tmp_path, "a.duckdb", persons=1000, site="site_a")
    b = _gen(tmp_path, "b.duckdb", persons=1000, site="site_b")
    assert a.site_params != b.site_params
    assert _hashes(a.out)["person"] != _hashes(b.out)["person"]


@pytest.mark.parametrize(
    "kw",
    [{"persons": 0}, {"persons": -5}, {"persons": 1.5}, {"profile": "cardiology"}, {"site": ""}, {"seed": -1}, {"chunk_size": 0}],
)
def test_bad_arguments(tmp_path, kw):
    with pytest.raises(ConfigError):
        _gen(tmp_path, "bad.duckdb", **kw)
    assert list(tmp_path.iterdir()) == []


def test_out_is_a_folder(tmp_path):
    (tmp_path / "dir.duckdb").mkdir()
    with pytest.raises(ConfigError):
        _gen(tmp_path, "dir.duckdb")


def test_failure_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
    from site_agent.cdm.synth import writer

    out = tmp_path / "site.duckdb"
    out.write_bytes(b"old")

    def boom(self, chunk, person_offset):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer.CdmWriter, "write_chunk", boom)
    with pytest.raises(RuntimeError):
        _gen(tmp_path, "site.duckdb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.duckdb"]
    assert out.read_bytes() == b"old"
    monkeypatch.undo()
    res = _gen(tmp_path, "site.duckdb", persons=500)
    assert res.counts["person"] == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.duckdb"]
