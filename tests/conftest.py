"""Shared fixtures: Eunomia and a small synthetic site on DuckDB and on a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.pg_cluster import PgCluster, find_pg_bin

REPO = Path(__file__).resolve().parents[1]
DEFINITIONS = REPO / "cohort_definitions"

# caches of libraries under the temp dir, never the home directory
os.environ.setdefault("MPLCONFIGDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "optima-mpl"))


@pytest.fixture(scope="session")
def pg_url():
    """URL of a PostgreSQL server: OPTIMA_TEST_PG_URL, else a private cluster started here."""
    url = os.environ.get("OPTIMA_TEST_PG_URL")
    if url:
        yield url
        return
    bin_dir = find_pg_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found; .ci/run installs them (apt-get install postgresql)")
        pytest.skip("PostgreSQL server binaries not installed (scripts/test.sh installs them)")
    cluster = PgCluster(bin_dir)
    try:
        url = cluster.start()
    except subprocess.CalledProcessError as exc:
        cluster.stop()
        pytest.fail(f"could not start a private PostgreSQL cluster: {exc.stdout}")
    yield url
    cluster.stop()


@pytest.fixture(scope="session")
def eunomia_duckdb(tmp_path_factory) -> Path:
    from site_agent.cdm.eunomia import write_eunomia

    out = tmp_path_factory.mktemp("eunomia") / "eunomia.duckdb"
    write_eunomia(out)
    return out


@pytest.fixture(scope="session")
def eunomia_pg_schema(pg_url, eunomia_duckdb) -> str:
    """Eunomia loaded into schema ``eunomia`` of the test PostgreSQL."""
    from site_agent.cdm.transfer import copy_duckdb_to_postgres

    copy_duckdb_to_postgres(eunomia_duckdb, pg_url, "eunomia", cdm_version="5.3")
    return "eunomia"


@pytest.fixture(params=["duckdb", "postgresql"])
def empty_db(request, tmp_path) -> tuple[str, str]:
    """(url, schema) of an empty database on each backend: a new DuckDB file, or the test cluster."""
    if request.param == "duckdb":
        import duckdb

        url = str(tmp_path / "empty.duckdb")
        duckdb.connect(url).close()
        return url, "main"
    return request.getfixturevalue("pg_url"), "public"


@pytest.fixture(params=["duckdb", "postgresql"])
def eunomia_cdm(request, tmp_path):
    """(url, cdm_schema, write_schema) of Eunomia on each backend; DuckDB gets a fresh copy."""
    import shutil

    if request.param == "duckdb":
        src = request.getfixturevalue("eunomia_duckdb")
        path = tmp_path / "eunomia.duckdb"
        shutil.copy(src, path)
        return f"duckdb:///{path}", "main", "results"
    url = request.getfixturevalue("pg_url")
    schema = request.getfixturevalue("eunomia_pg_schema")
    write = f"results_{abs(hash(request.node.nodeid)) % 10**8}"
    return url, schema, write


@pytest.fixture(scope="session")
def synth_site(tmp_path_factory):
    """A small oncology site (DuckDB) and the generator's ground truth."""
    from site_agent.cdm.synth import generate_site

    out = tmp_path_factory.mktemp("synth") / "site_a.duckdb"
    return generate_site(out=out, persons=20000, site="site_a", profile="oncology", seed=7)


@pytest.fixture(scope="session")
def synth_pg_schema(pg_url, synth_site) -> str:
    from site_agent.cdm.transfer import copy_duckdb_to_postgres

    copy_duckdb_to_postgres(synth_site.out, pg_url, "synth_cdm")
    return "synth_cdm"
