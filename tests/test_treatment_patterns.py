"""Treatment pathways (site_agent.analyses.treatment_patterns): a hand-built CDM with
pathways written by hand, and a 200k-person synthetic site checked against a plain-Python
re-implementation fed with raw rows and concept ids expanded from the vocabulary CSVs."""

from __future__ import annotations

import csv
import datetime as dt
from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from site_agent.analyses.treatment_patterns import (
    patient_pathways,
    plot_pathways,
    summarise_treatment_patterns,
)
from site_agent.cdm import connect_cdm
from site_agent.cdm.ddl import cdm_ddl, results_ddl
from site_agent.suppression import suppress
from tests.conftest import DEFINITIONS, REPO

VOCAB = REPO / "site_agent" / "cdm" / "synth" / "vocab"
EVENT_KEYS = {"lobectomy": "LOBECTOMY", "sleeve_resection": "SLEEVE_RESECTION", "pneumonectomy": "PNEUMONECTOMY",
              "lung_excision": "LUNG_EXCISION", "carboplatin": "CARBOPLATIN", "cisplatin": "CISPLATIN",
              "etoposide": "ETOPOSIDE", "stereotactic_rt": "RT_STEREOTACTIC", "conformal_rt": "RT_CONFORMAL",
              "imrt": "RT_IMRT"}


def _vocab() -> tuple[dict[str, int], dict[str, set[str]]]:
    with open(VOCAB / "concepts.csv", newline="") as f:
        ids = {r["key"]: int(r["concept_id"]) for r in csv.DictReader(f)}
    children: dict[str, set[str]] = defaultdict(set)
    with open(VOCAB / "hierarchy.csv", newline="") as f:
        for r in csv.DictReader(f):
            children[r["parent_key"]].add(r["child_key"])
    return ids, children


def _descendants(key: str, children: dict[str, set[str]]) -> set[str]:
    out, todo = {key}, [key]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _events(schema: str = "main") -> tuple[dict[str, str], dict[str, set[int]]]:
    """Event subqueries (via concept_ancestor) and, independently, their concept-id sets.
    ``lung_excision`` is the bare concept so that it does not also catch lobectomies."""
    ids, children = _vocab()
    sql, sets = {}, {}
    for name, key in EVENT_KEYS.items():
        if name == "lung_excision":
            sql[name] = f"SELECT concept_id FROM {schema}.concept WHERE concept_id IN ({ids[key]})"
            sets[name] = {ids[key]}
        else:
            sql[name] = f"SELECT descendant_concept_id FROM {schema}.concept_ancestor WHERE ancestor_concept_id IN ({ids[key]})"
            sets[name] = {ids[k] for k in _descendants(key, children)}
    return sql, sets


# ---------------------------------------------------------------- hand-built CDM
D0 = dt.date(2020, 1, 1)


def _d(days: int) -> str:
    return f"DATE '{D0 + dt.timedelta(days=days)}'"


@pytest.fixture(scope="module")
def tiny_cdm(tmp_path_factory):
    ids, children = _vocab()
    path = tmp_path_factory.mktemp("tp") / "tiny.duckdb"
    con = duckdb.connect(str(path))
    for s in cdm_ddl("duckdb", "5.4", "main") + results_ddl("results"):
        con.execute(s)
    for key, cid in ids.items():
        con.execute(f"INSERT INTO main.concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, "
                    f"concept_code, valid_start_date, valid_end_date) VALUES ({cid}, '{key}', 'x', 'x', 'x', 'x', "
                    f"DATE '1970-01-01', DATE '2099-12-31')")
        for d in _descendants(key, children):
            con.execute(f"INSERT INTO main.concept_ancestor VALUES ({cid}, {ids[d]}, {int(d != key)}, {int(d != key)})")
    drugs: list[tuple[int, str, int, int]] = []  # person, concept key, start day, end day
    procs: list[tuple[int, str, int]] = []
    # P1: etoposide (day 1) starts before carboplatin (injection, day 2): one alphabetical combination
    # line; 4 cycles 21 days apart collapse into eras; conformal RT at day 100 is a second line.
    for c in range(4):
        drugs += [(1, "CARBOPLATIN_INJ", 2 + 21 * c, 2 + 21 * c), (1, "ETOPOSIDE", 1 + 21 * c, 3 + 21 * c)]
    procs += [(1, "RT_CONFORMAL", 100 + k) for k in range(5)]
    # P2: lobectomy at index; chemo at 40 and again at 150 (new eras, same line -> collapsed)
    procs += [(2, "LOBECTOMY", 0)]
    drugs += [(2, "CARBOPLATIN", 40, 40), (2, "ETOPOSIDE", 40, 42), (2, "CARBOPLATIN", 150, 150), (2, "ETOPOSIDE", 151, 151)]
    # P3: untreated
    # P4: drugs before the index date are ignored; cisplatin 10 days after index
    drugs += [(4, "CARBOPLATIN", -10, -10), (4, "ETOPOSIDE", -5, -5), (4, "CISPLATIN_INJ", 10, 10)]
    # P5: cohort ends at day 60: etoposide at day 90 is ignored
    drugs += [(5, "CARBOPLATIN", 20, 20), (5, "ETOPOSIDE", 90, 90)]
    # P6: boundaries: carboplatin 0 and 30 (gap 30: one era), etoposide at 30 (window 30: combined),
    # carboplatin at 61 (gap 31: new era, new line)
    drugs += [(6, "CARBOPLATIN", 0, 0), (6, "CARBOPLATIN", 30, 30), (6, "ETOPOSIDE", 30, 30), (6, "CARBOPLATIN", 61, 61)]
    # P7: the exposure end date extends the era: carboplatin 0-50 and 75 form one era; IMRT at 60
    drugs += [(7, "CARBOPLATIN", 0, 50), (7, "CARBOPLATIN", 75, 75)]
    procs += [(7, "RT_IMRT", 60)]
    # P8: three lines; truncated with max_lines=2
    procs += [(8, "LOBECTOMY", 3), (8, "RT_STEREOTACTIC", 200)]
    drugs += [(8, "CISPLATIN", 45, 45)]
    # P9: two entries in the target, the earliest (day 0) counts; P10: another cohort only
    drugs += [(9, "ETOPOSIDE", 5, 5), (10, "CARBOPLATIN", 5, 5)]
    for i, (p, k, s, e) in enumerate(drugs):
        con.execute(f"INSERT INTO main.drug_exposure (drug_exposure_id, person_id, drug_concept_id, "
                    f"drug_exposure_start_date, drug_exposure_end_date, drug_type_concept_id) "
                    f"VALUES ({i + 1}, {p}, {ids[k]}, {_d(s)}, {_d(e)}, 0)")
    for i, (p, k, s) in enumerate(procs):
        con.execute(f"INSERT INTO main.procedure_occurrence (procedure_occurrence_id, person_id, procedure_concept_id, "
                    f"procedure_date, procedure_type_concept_id) VALUES ({i + 1}, {p}, {ids[k]}, {_d(s)}, 0)")
    for p in range(1, 10):
        con.execute(f"INSERT INTO results.cohort VALUES (3, {p}, {_d(0)}, {_d(60 if p == 5 else 700)})")
    con.execute(f"INSERT INTO results.cohort VALUES (3, 9, {_d(300)}, {_d(700)})")
    con.execute(f"INSERT INTO results.cohort VALUES (99, 10, {_d(0)}, {_d(700)})")
    con.close()
    return path


EXPECTED = {1: ("carboplatin+etoposide-conformal_rt", 1), 2: ("lobectomy-carboplatin+etoposide", 0),
            3: ("None", None), 4: ("cisplatin", 10), 5: ("carboplatin", 20),
            6: ("carboplatin+etoposide-carboplatin", 0), 7: ("carboplatin-imrt", 0),
            8: ("lobectomy-cisplatin-stereotactic_rt", 3), 9: ("etoposide", 5)}


def test_hand_built_pathways(tiny_cdm, tmp_path):
    events, _ = _events()
    with connect_cdm(str(tiny_cdm)) as cdm:
        pp = patient_pathways(cdm, 3, events)
        short = patient_pathways(cdm, 3, events, max_lines=2)
        res = summarise_treatment_patterns(cdm, "tiny", 3, "target", events)
    assert list(pp["person_id"]) == list(range(1, 10))
    got = {int(r.person_id): (r.pathway, None if np.isnan(r.days_to_first_treatment) else int(r.days_to_first_treatment))
           for r in pp.itertuples()}
    assert got == EXPECTED
    assert (pp["index_date"] == pd.Timestamp(D0)).all()
    assert pp.loc[pp["person_id"] == 1, ["line_1", "line_2", "line_3"]].iloc[0].tolist() == [
        "carboplatin+etoposide", "conformal_rt", None]
    assert short.loc[short["person_id"] == 8, "pathway"].item() == "lobectomy-cisplatin"
    assert short.loc[short["person_id"] == 1, "pathway"].item() == EXPECTED[1][0]

    d = res.data
    path = d[(d["result_id"] == 1) & (d["variable_name"] == "pathway")]
    counts = dict(zip(path.loc[path["estimate_name"] == "count", "variable_level"],
                      path.loc[path["estimate_name"] == "count", "estimate_value"].astype(int)))
    assert counts == {p: 1 for p, _ in EXPECTED.values()}
    pct = path.loc[path["estimate_name"] == "percentage", "estimate_value"].astype(float)
    assert np.allclose(pct, 100 / 9)
    n = d[(d["result_id"] == 1) & (d["variable_name"] == "number subjects")]["estimate_value"].tolist()
    assert n == ["9"]
    lines = d[(d["result_id"] == 2) & (d["variable_name"] == "treatment") & (d["estimate_name"] == "count")]
    line1 = dict(zip(lines.loc[lines["strata_level"] == "1", "variable_level"],
                     lines.loc[lines["strata_level"] == "1", "estimate_value"].astype(int)))
    assert line1 == {"carboplatin+etoposide": 2, "lobectomy": 2, "None": 1, "cisplatin": 1, "carboplatin": 2,
                     "etoposide": 1}
    line3 = dict(zip(lines.loc[lines["strata_level"] == "3", "variable_level"],
                     lines.loc[lines["strata_level"] == "3", "estimate_value"].astype(int)))
    assert line3 == {"stereotactic_rt": 1, "None": 8}
    assert set(lines["strata_level"]) == {"1", "2", "3"}
    ttf = d[d["result_id"] == 3].set_index("estimate_name")["estimate_value"]
    # days 1, 0, 10, 20, 0, 0, 3, 5 -> R quantile(type = 7): q25 0, median 2, q75 6.25
    assert ttf["count"] == "8" and float(ttf["min"]) == 0 and float(ttf["max"]) == 20
    assert float(ttf["median"]) == 2.0 and float(ttf["q25"]) == 0.0 and float(ttf["q75"]) == 6.25
    assert list(res.settings["result_type"]) == ["treatment_pathways", "treatment_line_frequency",
                                                 "time_to_first_treatment"]
    # suppression: every pathway count (1) is hidden, and its percentage with it
    sup = suppress(res, 5).data
    sp = sup[(sup["result_id"] == 1) & (sup["variable_name"] == "pathway")]
    assert (sp["estimate_value"] == "-").all()
    assert sup.loc[(sup["result_id"] == 1) & (sup["variable_name"] == "number subjects"), "estimate_value"].item() == "9"
    png = plot_pathways(res, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


# ---------------------------------------------------------------- 200k synthetic site
def _reference(con: duckdb.DuckDBPyConnection, target: int, sets: dict[str, set[int]],
               window: int = 30, gap: int = 30) -> dict[int, tuple[str, float]]:
    """Pathways from raw rows, in plain Python (dicts and lists, no SQL windows)."""
    entries = con.execute(f"SELECT subject_id, cohort_start_date, cohort_end_date FROM results.cohort "
                          f"WHERE cohort_definition_id = {target}").fetchall()
    tgt: dict[int, tuple[dt.date, dt.date]] = {}
    for pid, s, e in entries:
        if pid not in tgt or (s, -e.toordinal()) < (tgt[pid][0], -tgt[pid][1].toordinal()):
            tgt[pid] = (s, e)
    by_concept: dict[int, list[str]] = defaultdict(list)
    for name, ids in sets.items():
        for c in ids:
            by_concept[c].append(name)
    cids = ",".join(str(c) for c in by_concept)
    rows = con.execute(f"SELECT person_id, drug_concept_id, drug_exposure_start_date, drug_exposure_end_date "
                       f"FROM main.drug_exposure WHERE drug_concept_id IN ({cids})").fetchall()
    rows += con.execute(f"SELECT person_id, procedure_concept_id, procedure_date, procedure_date "
                        f"FROM main.procedure_occurrence WHERE procedure_concept_id IN ({cids})").fetchall()
    recs: dict[tuple[int, str], list[tuple[dt.date, dt.date]]] = defaultdict(list)
    for pid, cid, s, e in rows:
        if pid in tgt and tgt[pid][0] <= s <= tgt[pid][1]:
            for name in by_concept[cid]:
                recs[(pid, name)].append((s, max(s, e or s)))
    eras: dict[int, list[tuple[dt.date, str]]] = defaultdict(list)
    for (pid, name), rs in recs.items():
        rs.sort()
        cur_start, cur_end = rs[0]
        for s, e in rs[1:]:
            if (s - cur_end).days <= gap:
                cur_end = max(cur_end, e)
            else:
                eras[pid].append((cur_start, name))
                cur_start, cur_end = s, e
        eras[pid].append((cur_start, name))
    out = {}
    for pid, (idx, _) in tgt.items():
        lines: list[str] = []
        anchor, members = None, []
        for s, name in sorted(eras.get(pid, [])):
            if anchor is None or (s - anchor).days > window:
                if members:
                    lines.append("+".join(sorted(set(members))))
                anchor, members = s, []
            members.append(name)
        if members:
            lines.append("+".join(sorted(set(members))))
        dedup = [x for i, x in enumerate(lines) if i == 0 or lines[i - 1] != x][:5]
        first = min((s for s, _ in eras.get(pid, [])), default=None)
        out[pid] = ("-".join(dedup) or "None", np.nan if first is None else float((first - idx).days))
    return out


@pytest.fixture(scope="module")
def big_site(tmp_path_factory):
    from site_agent.cdm.synth import generate_site
    from site_agent.cohorts import build_cohorts, collect_definitions

    out = tmp_path_factory.mktemp("tp200k") / "site.duckdb"
    generate_site(out=out, persons=200_000, site="tp_site", profile="oncology", seed=11)
    defs = [d for d in collect_definitions([DEFINITIONS / "lung"]) if d.cohort_definition_id == 4]
    with connect_cdm(str(out)) as cdm:
        build_cohorts(cdm, defs)
    return out


def test_synthetic_site_matches_plain_python(big_site, tmp_path):
    events, sets = _events()
    with connect_cdm(str(big_site)) as cdm:
        pp = patient_pathways(cdm, 4, events)
        res = summarise_treatment_patterns(cdm, "tp_site", 4, "sclc", events)
    con = duckdb.connect(str(big_site), read_only=True)
    try:
        ref = _reference(con, 4, sets)
    finally:
        con.close()
    assert len(pp) == len(ref) > 1000
    got = {int(r.person_id): (r.pathway, r.days_to_first_treatment) for r in pp.itertuples()}
    assert {p: v[0] for p, v in got.items()} == {p: v[0] for p, v in ref.items()}
    assert all((np.isnan(got[p][1]) and np.isnan(ref[p][1])) or got[p][1] == ref[p][1] for p in ref)

    d = res.data
    c = d[(d["result_id"] == 1) & (d["variable_name"] == "pathway") & (d["estimate_name"] == "count")]
    counts = dict(zip(c["variable_level"], c["estimate_value"].astype(int)))
    assert counts == pd.Series([v[0] for v in ref.values()]).value_counts().to_dict()
    # the generator's plan: platinum (carboplatin ~70 %, cisplatin ~30 %) with etoposide in the first chemo line
    treated = sum(n for p, n in counts.items() if p != "None")
    plat_eto = sum(n for p, n in counts.items()
                   if any("etoposide" in line and ("carboplatin" in line or "cisplatin" in line)
                          for line in p.split("-")))
    assert plat_eto / treated > 0.85
    top = sorted(counts.items(), key=lambda kv: -kv[1])
    assert top[0][0] == "carboplatin+etoposide"
    carbo = sum(n for p, n in counts.items() if "carboplatin+" in p)
    cis = sum(n for p, n in counts.items() if "cisplatin+" in p)
    assert 0.55 < carbo / (carbo + cis) < 0.85
    # early-stage surgical patients: resection first, then chemo
    assert counts.get("lobectomy-carboplatin+etoposide", 0) > 0
    assert not any(p.startswith(("carboplatin", "cisplatin")) and "lobectomy" in p.split("-")[1:] for p in counts)
    ttf = d[d["result_id"] == 3].set_index("estimate_name")["estimate_value"]
    days = np.array([v[1] for v in ref.values() if not np.isnan(v[1])])
    assert int(ttf["count"]) == days.size
    assert float(ttf["median"]) == pytest.approx(np.percentile(days, 50))
    assert float(ttf["q75"]) == pytest.approx(np.percentile(days, 75))
    png = plot_pathways(pp, Path(tmp_path) / "sclc.png", top=10)
    assert png.stat().st_size > 1000


def test_postgresql_gives_the_same_pathways(synth_site, synth_pg_schema, pg_url, tmp_path):
    """The same SQL on PostgreSQL and DuckDB (20k site, sclc target) gives identical results."""
    import shutil

    from site_agent.cohorts import build_cohorts, collect_definitions

    defs = [d for d in collect_definitions([DEFINITIONS / "lung"]) if d.cohort_definition_id == 4]
    local = tmp_path / "site.duckdb"
    shutil.copy(synth_site.out, local)
    frames, results = [], []
    for url, schema, events in ((str(local), None, _events()[0]),
                                (pg_url, synth_pg_schema, _events(synth_pg_schema)[0])):
        with connect_cdm(url, cdm_schema=schema, write_schema="tp_results") as cdm:
            build_cohorts(cdm, defs)
            frames.append(patient_pathways(cdm, 4, events))
            results.append(summarise_treatment_patterns(cdm, "s", 4, "sclc", events))
    assert len(frames[0]) > 50
    pd.testing.assert_frame_equal(frames[0], frames[1], check_dtype=False)
    assert results[0] == results[1]
