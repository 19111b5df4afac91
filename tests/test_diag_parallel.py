"""The diagnostics suite on several PostgreSQL connections (site_agent/diagnostics/parallel.py).

Real PostgreSQL (the private test cluster), the synthetic oncology site and the lung cohorts:
the release made on 3 connections is byte for byte the release made on 1, the units really ran
on 3 backends at once, and a failing unit fails the run and leaves no connection behind.
"""

from __future__ import annotations

import functools
import threading
import time

import pytest
import sqlalchemy as sa

from site_agent.cdm import connect_cdm, pool
from site_agent.cohorts import collect_definitions
from site_agent.diagnostics import characteristics, database, parallel
from site_agent.diagnostics.base import Diagnostic
from site_agent.diagnostics.runner import registry, run_diagnostics
from tests.conftest import DEFINITIONS


def _traced(diags: list[Diagnostic], seen: list[tuple[str, int, float, float]]) -> list[Diagnostic]:
    """The same diagnostics, each unit recording (family, backend pid, start, end) of the connection it ran on."""

    def wrap(d: Diagnostic):
        run = d.run

        @functools.wraps(run)  # keeps __module__: the family of a diagnostic is unchanged
        def traced(ctx, unit):
            pid = int(ctx.cdm.scalar("SELECT pg_backend_pid()"))
            start = time.monotonic()
            try:
                return run(ctx, unit)
            finally:
                seen.append((parallel.family(d), pid, start, time.monotonic()))
        return traced

    return [Diagnostic(d.name, d.scope, d.result_types, wrap(d), d.params, d.package_name) for d in diags]


def _client_backends(url: str, wait_for: int | None = None) -> int:
    """Client connections to the database but this one's; ``wait_for``: poll up to 10 s for that
    count (a closed connection's backend leaves pg_stat_activity a moment after the close)."""
    deadline = time.monotonic() + (10 if wait_for is not None else 0)
    while True:
        n = _count_backends(url)
        if n == wait_for or wait_for is None or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def _count_backends(url: str) -> int:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            return int(c.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND datname = current_database() AND pid <> pg_backend_pid()")).scalar())
    finally:
        eng.dispose()


def test_families_group_memo_sharing_units():
    fam = {d.name: parallel.family(d) for d in registry()}
    assert fam["incidence"] == fam["prevalence"] == "population"  # one denominator TEMP table
    assert fam["cohort_overlap"] == fam["cohort_timing"] == "cohort_summary"
    assert fam["summarise_characteristics"] == "characteristics"
    assert fam["summarise_large_scale_characteristics"] == "large_scale"
    assert len(set(fam.values())) == 7


@pytest.mark.postgres
def test_suite_on_three_connections_releases_the_same_bytes(pg_url, synth_pg_schema, tmp_path):
    definitions = collect_definitions([DEFINITIONS / "lung"])
    runs = {}
    for n in (1, 3):
        seen: list[tuple[str, int, float, float]] = []
        lines: list[str] = []
        with connect_cdm(pg_url, cdm_schema=synth_pg_schema, write_schema=f"results_par{n}") as cdm:
            main_pid = int(cdm.scalar("SELECT pg_backend_pid()"))
            summary = run_diagnostics(cdm, definitions, out=tmp_path / f"r{n}.csv", connections=n,
                                      diagnostics=_traced(registry(), seen), progress=lines.append)
        runs[n] = (summary, seen, main_pid, lines)
    (one, seen1, main1, _), (three, seen3, main3, lines3) = runs[1], runs[3]
    assert one.cohorts_built == three.cohorts_built == len(definitions)  # both from scratch
    assert one.computed == three.computed == len(seen1) == len(seen3) > 0
    assert (tmp_path / "r1.csv").read_bytes() == (tmp_path / "r3.csv").read_bytes()
    assert one.result == three.result
    # sequential: every unit on the caller's connection
    assert {pid for _, pid, _, _ in seen1} == {main1}
    # parallel: three other backends, and units of different backends overlapping in time
    pids = {pid for _, pid, _, _ in seen3}
    assert len(pids) == 3 and main3 not in pids
    overlapping = [(a, b) for a in seen3 for b in seen3 if a[1] != b[1] and a[2] < b[3] and b[2] < a[3]]
    assert overlapping, "no two units of different connections ran at the same time"
    assert "on 3 PostgreSQL connections" in " ".join(lines3)
    # a family stays on one connection (its memoised TEMP tables and all-cohort frames built once)
    by_family: dict[str, set[int]] = {}
    for fam, pid, _, _ in seen3:
        by_family.setdefault(fam, set()).add(pid)
    assert len(by_family) == 7 and all(len(p) == 1 for p in by_family.values()), by_family
    # re-run with nothing changed on 3 connections: all reused, same bytes
    with connect_cdm(pg_url, cdm_schema=synth_pg_schema, write_schema="results_par3") as cdm:
        again = run_diagnostics(cdm, definitions, out=tmp_path / "again.csv", connections=3, progress=lambda m: None)
    assert again.computed == 0 and (tmp_path / "again.csv").read_bytes() == (tmp_path / "r1.csv").read_bytes()


@pytest.mark.postgres
def test_failing_unit_on_a_worker_fails_the_run_and_closes_every_connection(pg_url, synth_pg_schema, tmp_path):
    definitions = collect_definitions([DEFINITIONS / "lung"])[:2]
    slept = threading.Event()

    def sleeper(ctx, unit):  # a long statement on another worker, to be cancelled
        slept.set()
        ctx.cdm.scalar("SELECT pg_sleep(60)")
        raise AssertionError("the sleeping statement was not cancelled")

    def broken(ctx, unit):
        assert slept.wait(30)
        deadline = time.monotonic() + 30
        while not ctx.cdm.scalar("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' "
                                 "AND state = 'active'") and time.monotonic() < deadline:
            time.sleep(0.05)
        ctx.cdm.scalar(f"SELECT no_such_column FROM {ctx.cdm_schema}.person")

    suite = [*database.DIAGNOSTICS,
             Diagnostic("sleeper", "database", ("summarise_omop_snapshot",), sleeper),
             Diagnostic("broken", "database", ("summarise_omop_snapshot",), broken),
             *characteristics.DIAGNOSTICS]
    with connect_cdm(pg_url, cdm_schema=synth_pg_schema, write_schema="results_parfail") as cdm:
        baseline = _client_backends(pg_url)
        started = time.monotonic()
        with pytest.raises(Exception, match="no_such_column") as err:
            run_diagnostics(cdm, definitions, out=tmp_path / "r.csv", connections=4, diagnostics=suite,
                            progress=lambda m: None)
        assert time.monotonic() - started < 45  # the 60 s sleep was cancelled, not waited for
        assert type(err.value).__name__ == "UndefinedColumn"  # the worker's own error, not a wrapper
        assert _client_backends(pg_url, wait_for=baseline) == baseline  # every worker connection closed
        assert not (tmp_path / "r.csv").exists()
        assert cdm.scalar(f"SELECT count(*) FROM {cdm.write_schema}.optima_release_cache") == 0
        # the caller's connection is still usable, and a sequential run of the sound units works
        ok = run_diagnostics(cdm, definitions, out=tmp_path / "ok.csv", connections=4,
                             diagnostics=[*database.DIAGNOSTICS, *characteristics.DIAGNOSTICS],
                             progress=lambda m: None)
    assert (tmp_path / "ok.csv").exists() and ok.computed + ok.reused == 2 + len(definitions)


def test_connections_option_is_checked(monkeypatch):
    from optima_common.errors import ConfigError

    with pytest.raises(ConfigError):
        pool.check_connections(0)
    monkeypatch.setenv("OPTIMA_PG_CONNECTIONS", "zero")

    class Pg:  # what default_connections reads of a CdmConnection
        is_server = True

    with pytest.raises(ConfigError, match="OPTIMA_PG_CONNECTIONS"):
        pool.default_connections(Pg())
    monkeypatch.setenv("OPTIMA_PG_CONNECTIONS", "3")
    assert pool.default_connections(Pg()) == 3
    Pg.is_server = False  # DuckDB
    assert pool.default_connections(Pg()) == 1


def test_groups_keep_plan_order_heaviest_family_first():
    diags = {d.name: d for d in registry()}
    plan = [parallel.Unit(i, diags[name], ()) for i, name in enumerate(
        ["omop_snapshot", "cohort_count", "cohort_timing", "incidence", "summarise_characteristics",
         "prevalence", "incidence", "cohort_count"], start=1)]
    groups = parallel.groups_of(plan)
    assert [[u.index for u in g] for g in groups] == [[4, 6, 7], [5], [1], [2, 3, 8]]


@pytest.mark.postgres
def test_server_refusing_more_connections_runs_on_the_one(pg_url, synth_pg_schema, tmp_path):
    """A role allowed one connection: the worker connection is refused, the suite runs on the caller's."""
    from sqlalchemy.engine import make_url

    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with admin.begin() as c:
        c.execute(sa.text("DROP SCHEMA IF EXISTS results_one CASCADE"))  # a rerun against OPTIMA_TEST_PG_URL
        c.execute(sa.text("DROP SCHEMA IF EXISTS results_one_ref CASCADE"))
        c.execute(sa.text("DROP ROLE IF EXISTS optima_one"))
        c.execute(sa.text("CREATE ROLE optima_one LOGIN CONNECTION LIMIT 1"))
        c.execute(sa.text("CREATE SCHEMA results_one AUTHORIZATION optima_one"))
        c.execute(sa.text(f"GRANT USAGE ON SCHEMA {synth_pg_schema} TO optima_one"))
        c.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA {synth_pg_schema} TO optima_one"))
    admin.dispose()
    url = make_url(pg_url).set(username="optima_one").render_as_string(hide_password=False)
    definitions = collect_definitions([DEFINITIONS / "lung"])[:2]
    lines: list[str] = []
    suite = [*database.DIAGNOSTICS, *characteristics.DIAGNOSTICS]
    with connect_cdm(url, cdm_schema=synth_pg_schema, write_schema="results_one") as cdm:
        one = run_diagnostics(cdm, definitions, out=tmp_path / "one.csv", connections=3, diagnostics=suite,
                              progress=lines.append)
    assert one.computed == 2 + len(definitions)
    assert any("too many connections" in m and "own connection" in m for m in lines), lines
    assert not any("PostgreSQL connections" in m for m in lines)
    with connect_cdm(pg_url, cdm_schema=synth_pg_schema, write_schema="results_one_ref") as cdm:
        run_diagnostics(cdm, definitions, out=tmp_path / "ref.csv", connections=1, diagnostics=suite,
                        progress=lambda m: None)
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()


_COHORT_TABLES = ("cohort", "cohort_inclusion", "cohort_inclusion_result", "cohort_inclusion_stats",
                  "cohort_summary_stats", "cohort_censor_stats", "optima_cohort_state")


def _tables(cdm) -> dict[str, list[tuple]]:
    """Every row of the cohort tables, sorted (the order rows were written in does not matter)."""
    return {t: sorted(map(tuple, cdm.query_df(f"SELECT * FROM {cdm.write_schema}.{t}").astype(str).values.tolist()))
            for t in _COHORT_TABLES}


@pytest.mark.postgres
def test_cohorts_built_on_several_connections_equal_a_sequential_build(pg_url, synth_pg_schema, monkeypatch):
    """The lung cohorts built on 3 connections: the same rows in every cohort table as built on 1
    (cohorts, inclusion rules, attrition statistics, build state), and really built on other backends."""
    from site_agent.cohorts import build

    definitions = collect_definitions([DEFINITIONS / "lung"])
    seen: list[tuple[int, int, float, float]] = []
    one_build = build._build_one

    def traced(cdm, definition, statements, fingerprint):
        pid, start = int(cdm.scalar("SELECT pg_backend_pid()")), time.monotonic()
        try:
            return one_build(cdm, definition, statements, fingerprint)
        finally:
            seen.append((definition.cohort_definition_id, pid, start, time.monotonic()))

    monkeypatch.setattr(build, "_build_one", traced)
    tables = {}
    for n in (1, 3):
        seen.clear()
        with connect_cdm(pg_url, cdm_schema=synth_pg_schema, write_schema=f"results_cb{n}") as cdm:
            main_pid = int(cdm.scalar("SELECT pg_backend_pid()"))
            counts = build.build_cohorts(cdm, definitions, connections=n)
            tables[n] = _tables(cdm)
        assert sorted(c for c, *_ in seen) == sorted(d.cohort_definition_id for d in definitions)
        pids = {pid for _, pid, _, _ in seen}
        if n == 1:
            assert pids == {main_pid}
        else:
            assert len(pids) == 3 and main_pid not in pids
            assert [(a, b) for a in seen for b in seen if a[1] != b[1] and a[2] < b[3] and b[2] < a[3]], \
                "no two cohorts of different connections were built at the same time"
        assert [c.cohort_name for c in counts] == [d.cohort_name for d in definitions]
    assert tables[1]["cohort"] and tables[1]["cohort_inclusion_stats"]
    for t in _COHORT_TABLES:
        assert tables[1][t] == tables[3][t], t


@pytest.mark.postgres
def test_failing_cohort_on_a_worker_keeps_every_cohort_whole(pg_url, synth_pg_schema, monkeypatch):
    """One cohort's SQL fails half-way on a worker: one line naming it, every worker connection closed,
    the failed cohort keeps the rows it had (its transaction rolled back), no other cohort is half-built."""
    from optima_common.errors import CohortBuildError
    from site_agent.cohorts import build

    definitions = collect_definitions([DEFINITIONS / "lung"])
    victim = definitions[3]
    with connect_cdm(pg_url, cdm_schema=synth_pg_schema, write_schema="results_cbfail") as cdm:
        build.build_cohorts(cdm, definitions, connections=1)
        before = _tables(cdm)
        real_sql = build.cohort_sql

        def broken_sql(d, **kw):  # the victim's cohort rows are deleted and rebuilt, then the SQL fails
            sql = real_sql(d, **kw)
            return [*sql, f"SELECT no_such_column FROM {synth_pg_schema}.person"] if d is victim else sql

        monkeypatch.setattr(build, "cohort_sql", broken_sql)
        baseline = _client_backends(pg_url)
        with pytest.raises(CohortBuildError, match=f"cohort {victim.cohort_definition_id} \\({victim.cohort_name}"):
            build.build_cohorts(cdm, definitions, connections=3)
        assert _client_backends(pg_url, wait_for=baseline) == baseline
        after = _tables(cdm)
    for t in _COHORT_TABLES:  # finished cohorts were rebuilt to the same rows; the others rolled back
        assert after[t] == before[t], t
