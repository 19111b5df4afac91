"""The generator's vocabulary re-based on a real Athena download (``cdm synth --vocabulary DIR``).

Each clinical role of the generator (a row key of ``vocab/concepts.csv``) gets a concept of the
Athena vocabulary:

* the role's own id when Athena holds it as a valid standard concept (Athena's name, domain,
  class and code replace ours);
* otherwise (a local row >= 2,000,000,000, or an id this download lacks) a valid standard
  concept of the same domain that Athena places *below* one of the role's parents in
  ``vocab/hierarchy.csv`` and that no other role uses (the smallest such id, so the choice is
  deterministic): e.g. a real sub-stage below "AJCC/UICC 7th clinical Stage 1" for the local
  "Stage 1A";
* otherwise the generator's own row stays (local vocabulary).

Ancestry between two roles with Athena ids comes from Athena's CONCEPT_ANCESTOR (levels
included); the generator's own edges remain for local rows. The ground truth is computed on that
hierarchy, so Circe's counts on the written CDM can be checked against it. The CDM receives the
subset of the vocabulary the roles use (not the whole download; load that with
``site-agent cdm vocab load``).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from site_agent.cdm.synth.vocabulary import Vocabulary
from site_agent.cdm.vocab_load import AthenaFile, _duckdb_select, inspect_download


def _frame(con, f: AthenaFile, where: str = "") -> pd.DataFrame:
    return con.execute(f"SELECT * FROM ({_duckdb_select(f)}) {where}").fetchdf()


def vocabulary_from_athena(folder: str | Path) -> Vocabulary:
    files = {f.table: f for f in inspect_download(folder, "duckdb")}
    base = Vocabulary.load()
    c = base.concepts.copy()
    con = duckdb.connect()
    try:
        con.register("wanted", pd.DataFrame({"concept_id": c["concept_id"].astype(np.int64).unique()}))
        parents: dict[str, set[str]] = {}
        for child, parent in base.edges:
            parents.setdefault(child, set()).add(parent)
        athena = _frame(con, files["concept"], "WHERE concept_id IN (SELECT concept_id FROM wanted)")
        ok = athena[(athena["standard_concept"] == "S") & athena["invalid_reason"].isna()].set_index("concept_id")
        keep_local = [k for k, cid in zip(c["key"], c["concept_id"]) if int(cid) not in ok.index]
        # candidates: standard, valid descendants of the parents of roles without an Athena concept
        parent_ids = sorted({int(base.id[p]) for k in keep_local for p in parents.get(k, ()) if base.id[p] in ok.index})
        cand = pd.DataFrame(columns=["ancestor_concept_id", "concept_id", "domain_id"])
        if parent_ids:
            con.register("parents", pd.DataFrame({"concept_id": parent_ids}))
            anc_sql = _duckdb_select(files["concept_ancestor"])
            con.execute(f"CREATE TEMP TABLE cand AS SELECT a.ancestor_concept_id, a.descendant_concept_id AS concept_id "
                        f"FROM ({anc_sql}) a WHERE a.ancestor_concept_id IN (SELECT concept_id FROM parents) "
                        f"AND a.min_levels_of_separation >= 1")
            cand = con.execute(f"SELECT c.ancestor_concept_id, k.* FROM cand c JOIN ({_duckdb_select(files['concept'])}) k "
                               f"USING (concept_id) WHERE k.standard_concept = 'S' AND k.invalid_reason IS NULL "
                               f"ORDER BY k.concept_id").fetchdf()
        used = {int(x) for x in c["concept_id"] if int(x) in ok.index}
        rows = []
        for _, r in c.iterrows():
            cid = int(r["concept_id"])
            if cid in ok.index:
                a = ok.loc[cid]
                rows.append({**r, "concept_name": a["concept_name"], "domain_id": a["domain_id"],
                             "vocabulary_id": a["vocabulary_id"], "concept_class_id": a["concept_class_id"],
                             "concept_code": a["concept_code"], "standard_concept": "S"})
                continue
            pick = None
            if r["standard_concept"] == "S":
                pids = {int(base.id[p]) for p in parents.get(r["key"], ())}
                sel = cand[cand["ancestor_concept_id"].isin(pids) & (cand["domain_id"] == r["domain_id"])
                           & ~cand["concept_id"].isin(used)]
                if len(sel):
                    pick = sel.iloc[0]
            if pick is None:
                rows.append(dict(r))
                continue
            used.add(int(pick["concept_id"]))
            rows.append({**r, "concept_id": int(pick["concept_id"]), "concept_name": pick["concept_name"],
                         "domain_id": pick["domain_id"], "vocabulary_id": pick["vocabulary_id"],
                         "concept_class_id": pick["concept_class_id"], "concept_code": pick["concept_code"],
                         "standard_concept": "S"})
        concepts = pd.DataFrame(rows)[list(c.columns)]
        concepts["concept_id"] = concepts["concept_id"].astype(np.int64)
        ids = dict(zip(concepts["key"], concepts["concept_id"].astype(int)))
        real = sorted({i for i in ids.values() if i < 2_000_000_000})
        con.register("real", pd.DataFrame({"concept_id": real}))
        anc = con.execute(f"SELECT ancestor_concept_id AS a, descendant_concept_id AS d, min_levels_of_separation AS lo, "
                          f"max_levels_of_separation AS hi FROM ({_duckdb_select(files['concept_ancestor'])}) x "
                          f"WHERE ancestor_concept_id IN (SELECT concept_id FROM real) "
                          f"AND descendant_concept_id IN (SELECT concept_id FROM real)").fetchall()
        version = con.execute(f"SELECT vocabulary_version FROM ({_duckdb_select(files['vocabulary'])}) v "
                              f"WHERE vocabulary_id = 'None'").fetchone()
    finally:
        con.close()
    in_athena = {i for i in ids.values() if i in ok.index} | {int(x) for x in concepts.loc[
        ~concepts["concept_id"].isin(c["concept_id"]), "concept_id"]}
    by_id: dict[int, list[str]] = {}
    for k, i in ids.items():
        by_id.setdefault(i, []).append(k)
    # edges: Athena ancestry between roles with Athena concepts, the generator's edges elsewhere
    edges = [(ch, pa) for ch, pa in base.edges if not (ids[ch] in in_athena and ids[pa] in in_athena)]
    levels: dict[tuple[str, str], tuple[int, int]] = {}
    for a, d, lo, hi in anc:
        if a == d or a not in in_athena or d not in in_athena:
            continue
        for ka in by_id[a]:
            for kd in by_id[d]:
                edges.append((kd, ka))
                levels[(ka, kd)] = (int(lo), int(hi))
    v = Vocabulary(concepts=concepts, edges=sorted(set(edges)), maps=base.maps, id=ids)
    closure = dict(v.closure)
    closure.update({pair: lv for pair, lv in levels.items() if pair in closure})
    v.__dict__["closure"] = closure
    v.version = f"{version[0] if version else 'Athena'} (subset)"
    v.source_folder = str(Path(folder))
    return v
