"""Builders the tests share: keys, site configs, a site on a real synthetic CDM, manifests, bundles.

The site code run here is the agent's own (cohort building and cohort diagnostics through
``run_diagnostics``, suppression, disclosure control); a database refresh is a real change
of the DuckDB CDM (persons cloned under new ids, with all their clinical rows).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import duckdb

from coordinator.trust.manifest import build_manifest
from optima_common.bundle import (
    ManifestCohort,
    Provenance,
    ResultBundle,
    StudyManifest,
    SuppressionRecord,
    generate_keypair,
    load_private_key,
    manifest_sha256,
    sign,
)
from optima_common.results import SummarisedResult
from site_agent import __version__

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO / "cohort_definitions" / "catalog.json"
UTC = dt.UTC


def make_keys(folder: Path) -> dict[str, Path]:
    out = {}
    for name in ("coordinator", "site_a", "coordinator2"):
        out[name], out[name + "_pub"] = generate_keypair(folder, name)
    return out


def write_site_config(folder: Path, keys: dict[str, Path], cdm_url: str = "duckdb:///missing_cdm.duckdb",
                      extra: str = "") -> Path:
    path = folder / "site.toml"
    path.write_text(f"""
site = "site_a"
state_dir = "state"
site_key = "{keys['site_a']}"
coordinator_keys = ["{keys['coordinator_pub']}"]
allowed_analyses = ["cohort_counts", "diagnostics"]
{extra}

[cdm]
url = "{cdm_url}"
write_schema = "results"

[approved_cohorts]
catalogs = ["{CATALOG}"]
""")
    return path


def catalog_cohort(name: str) -> ManifestCohort:
    entry = next(c for c in json.loads(CATALOG.read_text())["cohorts"] if c["name"] == name)
    text = (CATALOG.parent / entry["path"]).read_text(encoding="utf-8")
    return ManifestCohort(cohort_definition_id=entry["cohort_definition_id"], name=name, sha256=entry["sha256"],
                          expression=json.loads(text))


def make_manifest(keys: dict[str, Path], signer: str = "coordinator", cohorts=("lung_cancer_broad", "sclc"),
                  **over) -> StudyManifest:
    now = dt.datetime.now(UTC)
    fields = dict(study_id="lung-diagnostics", study_version="1.0", manifest_id=str(uuid.uuid4()),
                  nonce=uuid.uuid4().hex, issued_at=now - dt.timedelta(minutes=1),
                  expires_at=now + dt.timedelta(days=1), analyses=("diagnostics",),
                  cohorts=tuple(catalog_cohort(c) for c in cohorts), min_cell_count=5, target_sites=("site_a",))
    fields.update(over)
    return sign(StudyManifest(**fields), load_private_key(keys[signer]))


def result_csv_text(result: SummarisedResult, folder: Path) -> str:
    path = folder / f"results-{uuid.uuid4().hex[:8]}.csv"
    result.to_csv(path)
    text = path.read_text(encoding="utf-8")
    path.unlink()
    return text


def make_bundle(result: SummarisedResult, site_key: Path, manifest_id: str, folder: Path,
                min_cell_count: int = 5) -> ResultBundle:
    b = ResultBundle(site="site_a", manifest_id=manifest_id, manifest_sha256="a" * 64,
                     created_at=dt.datetime.now(UTC), provenance=Provenance(cdm_name="site_a", package_version=__version__),
                     suppression=SuppressionRecord(min_cell_count=min_cell_count, site_floor=5,
                                                   method="optima-federated suppress + disclosure v1"),
                     results_csv=result_csv_text(result, folder))
    return sign(b, load_private_key(site_key))


def run_site(cdm_path: Path, names=("lung_cancer_broad", "sclc"), min_cell_count: int = 5) -> SummarisedResult:
    """The site's real cohort diagnostics (counts, attrition, overlap, timing, characteristics), suppressed."""
    from site_agent.cdm import connect_cdm
    from site_agent.cohorts import collect_definitions
    from site_agent.diagnostics import characteristics, cohort_summary
    from site_agent.diagnostics.runner import run_diagnostics

    entries = {c["name"]: c["path"] for c in json.loads(CATALOG.read_text())["cohorts"]}
    definitions = collect_definitions([CATALOG.parent / entries[n] for n in names])
    with connect_cdm(f"duckdb:///{cdm_path}", write_schema="results") as cdm:
        run = run_diagnostics(cdm, definitions, out=None, min_cell_count=min_cell_count, cdm_name="site_a",
                              diagnostics=[*cohort_summary.DIAGNOSTICS, *characteristics.DIAGNOSTICS],
                              progress=lambda _m: None)
    return run.result


def cohort_subjects(cdm_path: Path, cohort_definition_id: int) -> list[int]:
    con = duckdb.connect(str(cdm_path), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT DISTINCT subject_id FROM results.cohort WHERE "
                                          f"cohort_definition_id = {int(cohort_definition_id)} ORDER BY 1").fetchall()]
    finally:
        con.close()


def clone_persons(cdm_path: Path, person_ids: list[int], offset: int) -> None:
    """A database refresh that adds persons: copy these persons' rows in every CDM table under
    person_id + offset (their own row ids and visit ids shifted too), and bump the release date."""
    con = duckdb.connect(str(cdm_path))
    try:
        cols = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                           "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall()
        tables: dict[str, list[str]] = {}
        for t, c in cols:
            tables.setdefault(t, []).append(c)
        ids = ", ".join(str(int(p)) for p in person_ids)
        for table, columns in tables.items():
            if "person_id" not in columns:
                continue
            shifted = [c for c in columns if c in ("person_id", f"{table}_id", "visit_occurrence_id",
                                                    "visit_detail_id", "preceding_visit_occurrence_id")]
            replace = ", ".join(f"{c} + {int(offset)} AS {c}" for c in shifted)
            con.execute(f"INSERT INTO main.{table} SELECT * REPLACE ({replace}) FROM main.{table} "
                        f"WHERE person_id IN ({ids})")
        con.execute("UPDATE main.cdm_source SET source_release_date = source_release_date + INTERVAL 1 DAY")
    finally:
        con.close()


def test_clone_persons_adds_exactly_those_persons(tmp_path):
    from site_agent.cdm.synth import generate_site

    path = tmp_path / "cdm.duckdb"
    generate_site(out=path, persons=300, site="site_a", profile="oncology", seed=5)
    con = duckdb.connect(str(path))
    before = {t: con.execute(f"SELECT count(*) FROM {t} WHERE person_id IN (1, 2)").fetchone()[0]
              for t in ("person", "condition_occurrence", "observation_period")}
    total = con.execute("SELECT count(*) FROM person").fetchone()[0]
    con.close()
    clone_persons(path, [1, 2], 10_000_000)
    con = duckdb.connect(str(path))
    assert con.execute("SELECT count(*) FROM person").fetchone()[0] == total + 2
    for t, n in before.items():
        assert con.execute(f"SELECT count(*) FROM {t} WHERE person_id IN (10000001, 10000002)").fetchone()[0] == n
    con.close()


# -- documents without a site: fixed manifests and bundles for the contract tests --

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
# a real summarised_result table (the coordinator audits every table it verifies): cohort counts,
# one withheld; the non-ASCII cohort name checks the canonical bytes
_H = '"result_id","cdm_name","group_name","group_level","strata_name","strata_level","variable_name",' \
     '"variable_level","estimate_name","estimate_type","estimate_value","additional_name","additional_level"\n'
_R = '1,"site_a","cohort_name","{c}","overall","overall","Number {w}",NA,"count","integer","{v}","overall","overall"\n'
_S = '1,NA,"overall","overall","overall","overall","settings",NA,"{k}","character","{v}","overall","overall"\n'
CSV = (_H + "".join(_R.format(c=c, w=w, v=v) for c, w, v in [
    ("Müller, ünï", "records", "-"), ("Müller, ünï", "subjects", "-"),
    ("sclc_stage_i_ii", "records", "42"), ("sclc_stage_i_ii", "subjects", "42")])
    + "".join(_S.format(k=k, v=v) for k, v in [("result_type", "summarise_cohort_count"), ("package_name", "p"),
                                              ("package_version", "1"), ("min_cell_count", "5")]))


def manifest_doc(**kw) -> StudyManifest:
    """An unsigned study manifest with fixed contents (``kw`` overrides any field)."""
    args = dict(
        study_id="sclc", study_version="1.0",
        cohorts=[{"cohort_definition_id": 1, "name": "SCLC stage I-II", "sha256": "a" * 64,
                  "expression": {"PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {}}]}, "x": 1.5}}],
        analyses=["cohort_counts", "sclc_study"], parameters={"km_times": [365, 730]}, min_cell_count=5,
        target_sites=["site_a", "site_b"], min_sites=2, valid_for=dt.timedelta(days=7), now=NOW)
    args.update(kw)
    return build_manifest(**args)


def bundle_doc(manifest: StudyManifest, site: str = "site_a", **supp) -> ResultBundle:
    """An unsigned result bundle answering ``manifest`` with the small table :data:`CSV`."""
    rec = {"min_cell_count": 5, "site_floor": 5, "method": "optima suppress + disclosure v1", **supp}
    return ResultBundle(site=site, manifest_id=manifest.manifest_id, manifest_sha256=manifest_sha256(manifest),
                        created_at=NOW, provenance=Provenance(cdm_name=site, package_version="0.1.0"),
                        suppression=SuppressionRecord(**rec), results_csv=CSV)
