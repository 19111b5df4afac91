"""Database safety: every statement the agent runs on the CDM has a time limit."""

from __future__ import annotations

import time

import pytest
from psycopg2.errors import QueryCanceled

from site_agent.cdm import connect_cdm
from site_agent.cdm.connection import StatementTimeoutError
from site_agent.config import load_config
from tests.factories import make_keys, write_site_config

SLOW_DUCKDB = "SELECT count(*) FROM range(100000000000) a"  # minutes of work


def test_postgres_statement_timeout_cancels_pg_sleep(pg_url, tmp_path):
    # the site config's setting reaches the connection (SiteConfig.open_cdm)
    keys = make_keys(tmp_path / "keys")
    cfg = load_config(write_site_config(tmp_path, keys, cdm_url=pg_url, extra="statement_timeout_seconds = 0.5"))
    cfg = cfg.model_copy(update={"cdm": cfg.cdm.model_copy(update={"cdm_schema": "public"})})
    with cfg.open_cdm() as cdm:
        assert cdm.scalar("SHOW statement_timeout") == "500ms"
        started = time.perf_counter()
        with pytest.raises(QueryCanceled, match="statement timeout"):
            cdm.scalar("SELECT pg_sleep(20)")
        assert time.perf_counter() - started < 5
        cdm.connection().connection.rollback()
        assert cdm.scalar("SELECT 1 FROM pg_sleep(0.05)") == 1  # short statements still run
        with pytest.raises(QueryCanceled, match="statement timeout"):  # also inside a write transaction
            with cdm.transaction() as script:
                script.execute("SELECT pg_sleep(20)")
    with connect_cdm(pg_url, cdm_schema="public") as cdm:  # no setting: the server default (none)
        assert cdm.scalar("SHOW statement_timeout") == "0"


def test_duckdb_statement_timeout_interrupts(tmp_path):
    from site_agent.cdm.synth import generate_site

    path = tmp_path / "cdm.duckdb"
    generate_site(out=path, persons=50, site="site_a", profile="oncology", seed=2)
    with connect_cdm(f"duckdb:///{path}", statement_timeout_seconds=0.5) as cdm:
        started = time.perf_counter()
        with pytest.raises(StatementTimeoutError, match="statement timeout of 0.5 s") as exc:
            cdm.scalar(SLOW_DUCKDB)
        assert time.perf_counter() - started < 5 and "\n" not in str(exc.value)
        assert cdm.scalar("SELECT count(*) FROM person") == 50  # the connection is still usable
        with pytest.raises(StatementTimeoutError):
            cdm.query_df(SLOW_DUCKDB)
        with pytest.raises(StatementTimeoutError), cdm.transaction() as script:
            script.execute("CREATE TABLE results_scratch AS SELECT 1 AS x")
            script.execute(SLOW_DUCKDB)
        assert cdm.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'results_scratch'") == 0
        time.sleep(0.7)  # a timer from a finished statement must not hit the next one
        assert cdm.scalar("SELECT 42") == 42
