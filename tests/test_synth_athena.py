"""``cdm synth --vocabulary DIR``: patients on an Athena vocabulary's concepts and hierarchy.

Fixture: ``tests/data/athena_small``. Expectations, written before running:

* roles whose id the download holds keep it (SKIN_BCC 4112752); a local role with a parent in the
  download takes an unused standard descendant of that parent (SEC_BONE, below "Secondary
  malignant neoplastic disease", gets 4248073, the only free one); a local role without one stays
  local (STAGE_1A);
* the CDM's concept_ancestor agrees with the download for every pair of its concepts;
* on a copy of the download where "Adenocarcinoma of lung" is no longer below "Non-small cell lung
  cancer", the generator's truth follows that hierarchy (fewer NSCLC patients than with the
  built-in vocabulary) and Circe's counts on the written CDM equal the truth.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb

from site_agent.cdm import connect_cdm
from site_agent.cdm.synth import generate_site
from site_agent.cohorts import build_cohorts, collect_definitions

FIXTURE = Path(__file__).resolve().parent / "data" / "athena_small"
LUNG = Path(__file__).resolve().parents[1] / "cohort_definitions" / "lung"


def _athena_pairs(folder: Path) -> dict[tuple[int, int], tuple[int, int]]:
    lines = (folder / "CONCEPT_ANCESTOR.csv").read_text().splitlines()[1:]
    return {(int(a), int(d)): (int(lo), int(hi)) for a, d, lo, hi in (line.split("\t") for line in lines)}


def _circe(path: Path, ids: tuple[int, ...]) -> dict[str, int]:
    defs = [d for d in collect_definitions([LUNG]) if d.cohort_definition_id in ids]
    with connect_cdm(f"duckdb:///{path}") as cdm:
        return {c.cohort_name: c.number_subjects for c in build_cohorts(cdm, defs)}


def test_roles_and_hierarchy_come_from_the_download(tmp_path):
    from site_agent.cdm.synth.athena import vocabulary_from_athena

    v = vocabulary_from_athena(FIXTURE)
    assert v.id["SKIN_BCC"] == 4112752 and v.id["SEC_BONE"] == 4248073 and v.id["STAGE_1A"] >= 2_000_000_000
    res = generate_site(tmp_path / "a.duckdb", persons=3000, site="site_a", profile="oncology", seed=5, vocabulary=FIXTURE)
    con = duckdb.connect(str(res.out), read_only=True)
    cdm_ids = {r[0] for r in con.execute("select concept_id from concept").fetchall()}
    cdm_pairs = {(a, d): (lo, hi) for a, d, lo, hi in con.execute("select * from concept_ancestor").fetchall()}
    name = con.execute("select concept_name from concept where concept_id = 4248073").fetchone()[0]
    n_bone = con.execute("select count(*) from condition_occurrence where condition_concept_id = 4248073").fetchone()[0]
    con.close()
    assert name == "Secondary malignant neoplasm of main bronchus" and n_bone > 0
    athena = _athena_pairs(FIXTURE)
    athena_ids = {a for a, _ in athena} | {d for _, d in athena}
    for (a, d), lv in athena.items():
        if a in cdm_ids and d in cdm_ids:
            assert cdm_pairs.get((a, d)) == lv, (a, d)
    extra = [p for p in cdm_pairs if p[0] in athena_ids and p[1] in athena_ids and p not in athena]
    assert not extra


def test_truth_follows_the_downloads_hierarchy(tmp_path):
    changed = tmp_path / "athena"
    shutil.copytree(FIXTURE, changed)
    # adenocarcinoma of lung (4112738) loses every ancestor but itself
    keep = [ln for ln in (changed / "CONCEPT_ANCESTOR.csv").read_text().splitlines(keepends=True)
            if not (ln.split("\t")[1] == "4112738" and ln.split("\t")[0] != "4112738")]
    (changed / "CONCEPT_ANCESTOR.csv").write_text("".join(keep))
    builtin = generate_site(tmp_path / "b.duckdb", persons=4000, site="site_a", profile="oncology", seed=5)
    res = generate_site(tmp_path / "c.duckdb", persons=4000, site="site_a", profile="oncology", seed=5, vocabulary=changed)
    assert res.truth["nsclc"]["subjects"] < builtin.truth["nsclc"]["subjects"]
    assert res.truth["sclc"] == builtin.truth["sclc"]
    got = _circe(res.out, (1, 2, 3, 4))
    assert got == {k: res.truth[k]["subjects"] for k in ("lung_cancer_broad", "lung_cancer_narrow", "nsclc", "sclc")}
