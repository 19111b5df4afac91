"""The agent's own PostgreSQL session settings (``pg_session_options``), set per connection.

JIT stays off whatever the server's default (PostgreSQL's is on, above a plan cost of 100,000):
at 1M persons that default made the suite's PostgreSQL time 33-42% longer (docs/performance.md,
session 19). These tests read the settings back from a real server and check that the planner
honours them."""

from __future__ import annotations

import pytest

from site_agent.cdm import connect_cdm

# the planner estimates generate_series's rows from its bounds (PostgreSQL 12+): a count over
# 10^9 rows is costed far above PostgreSQL's default JIT threshold (100,000)
HUGE = "SELECT count(*) FROM generate_series(1, 1000000000) g WHERE mod(g, 7) = 3"


def _plan(cdm, sql: str) -> str:
    return "\n".join(r[0] for r in cdm.connection().exec_driver_sql(f"EXPLAIN {sql}").fetchall())


def test_session_settings_and_no_jit_by_default(pg_url, monkeypatch):
    for name in ("OPTIMA_PG_WORK_MEM", "OPTIMA_PG_TEMP_BUFFERS", "OPTIMA_PG_JIT"):
        monkeypatch.delenv(name, raising=False)  # the defaults, whatever the caller's environment holds
    with connect_cdm(pg_url, cdm_schema="public") as cdm:
        assert cdm.scalar("SHOW work_mem") == "256MB"
        assert cdm.scalar("SHOW temp_buffers") == "256MB"
        assert cdm.scalar("SHOW jit") == "off"
        assert "JIT:" not in _plan(cdm, HUGE)
        assert cdm.scalar("SELECT count(*) FROM generate_series(1, 10000) g WHERE mod(g, 7) = 3") == sum(
            1 for g in range(1, 10001) if g % 7 == 3)


def test_environment_overrides_reach_the_session(pg_url, monkeypatch):
    monkeypatch.setenv("OPTIMA_PG_WORK_MEM", "64MB")
    monkeypatch.setenv("OPTIMA_PG_TEMP_BUFFERS", "32MB")
    monkeypatch.setenv("OPTIMA_PG_JIT", "on")
    with connect_cdm(pg_url, cdm_schema="public") as cdm:
        assert cdm.scalar("SHOW work_mem") == "64MB"
        assert cdm.scalar("SHOW temp_buffers") == "32MB"
        assert cdm.scalar("SHOW jit") == "on"
        if cdm.scalar("SELECT pg_jit_available()") is not True:
            pytest.fail("this PostgreSQL has no JIT provider (Debian's postgresql package ships llvmjit)")
        assert "JIT:" in _plan(cdm, HUGE)  # the server's own threshold applies once JIT is on
