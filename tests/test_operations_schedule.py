"""Scheduled studies: schedules.toml validation, cron due times (hand-computed), ``serve`` runs each due study
as a new version, and ``version_changes`` checked against the sites' own released CSVs."""

from __future__ import annotations

import datetime as dt
import io

import pandas as pd
import pytest

from coordinator.demo.sites import DemoSite
from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.schedule import load_schedule, next_run, serve
from coordinator.flower.study import send_study
from coordinator.pooling.versions import changes_section, version_changes
from coordinator.store import ResultsStore, ops
from optima_common.bundle import load_private_key
from optima_common.errors import CoordinatorError
from site_agent import client_app as site_app
from tests.federation_sites import SPEC, build_network

UTC = dt.UTC
SITES = (DemoSite("site_north", "oncology", 700, 41), DemoSite("site_south", "primary-care", 600, 42))


def write_schedule(path, sites, cron="0 3 * * *", **extra) -> None:
    more = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in extra.items())
    path.write_text(f'[[study]]\nname = "sclc-nightly"\nspec = "{SPEC}"\nsites = {list(sites)!r}\n'
                    f'cron = "{cron}"\nanalyses = ["cohort_counts"]\n{more}'.replace("'", '"'))


@pytest.mark.parametrize("body,message", [
    ('[[study]]\nname = "a"\nspec = "SPEC"\nsites = ["x"]\ncron = "61 * * * *"\n', "not a cron expression"),
    ('[[study]]\nname = "a"\nspec = "SPEC"\nsites = ["x"]\ncron = "0 3 * * *"\ncolour = 1\n', "colour"),
    ('[[study]]\nname = "a"\nspec = "missing.json"\nsites = ["x"]\ncron = "0 3 * * *"\n', "not found"),
    ('[[study]]\nname = "a"\nspec = "SPEC"\nsites = ["x"]\ncron = "0 3 * * *"\nmin_sites = 2\n', "exceeds"),
    ('[[study]\n', "malformed TOML"),
])
def test_bad_schedule_files_are_one_line_errors(tmp_path, body, message):
    path = tmp_path / "schedules.toml"
    path.write_text(body.replace("SPEC", str(SPEC)))
    with pytest.raises(CoordinatorError, match=message) as err:
        load_schedule(path)
    assert len(str(err.value).splitlines()) == 1


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return build_network(tmp_path_factory.mktemp("ops_sched"), SITES)


def test_serve_runs_due_studies_as_versions_and_reports_changes(net, tmp_path):
    store = ResultsStore.open(tmp_path / "store.sqlite3")
    key = load_private_key(net.coordinator_key)
    names = list(net.configs)

    def runner(manifest, entry, run):
        grid = InProcessGrid(site_app.app, net.node_configs(list(manifest.target_sites)))
        out = send_study(grid, manifest, store=store, trust_dir=net.trust, reply_timeout=120)
        return out.complete, ", ".join(f"{s.site} {s.status}" for s in out.sites)

    sched_path = tmp_path / "schedules.toml"
    write_schedule(sched_path, ["site_north"], min_sites=1)
    t0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    first = serve(load_schedule(sched_path), store, key=key, runner=runner, once=True, clock=lambda: t0)
    assert [(r.version, r.state) for r in first] == [(1, "complete")]
    schedule = load_schedule(sched_path)
    # daily at 03:00 UTC: after a run at 10:00 on 1 Dec the next fire is 03:00 on 2 Dec
    assert next_run(schedule.study[0], store, t0) == dt.datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    assert serve(schedule, store, key=key, runner=runner, once=True, clock=lambda: t0 + dt.timedelta(hours=16)) == []

    # the network grew: site_south joins the schedule; serve until 2 Dec 06:00 with a fake clock
    write_schedule(sched_path, names, min_sites=2)
    clock = [t0 + dt.timedelta(hours=16)]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += dt.timedelta(seconds=seconds)

    second = serve(load_schedule(sched_path), store, key=key, runner=runner, clock=lambda: clock[0], sleep=sleep,
                   until=dt.datetime(2026, 12, 2, 6, 0, tzinfo=UTC), poll=3600)
    assert [(r.version, r.state) for r in second] == [(2, "complete")]
    runs = ops.runs(store, second[0].study_id)
    assert [(r.version, r.schedule_name, r.state) for r in runs] == [(1, "sclc-nightly", "complete"),
                                                                     (2, "sclc-nightly", "complete")]
    assert runs[1].started_at == dt.datetime(2026, 12, 2, 3, 0, tzinfo=UTC)  # woke exactly at the cron fire
    assert slept == [3600.0] * 4  # 02:00 -> 03:00 (run), then hourly polls until 06:00

    changes = version_changes(store, runs[0].study_id)
    assert set(changes["version"]) == {2} and set(changes["previous_version"]) == {1}
    south = next(b for b in store.bundles(runs[1].manifest_id) if b.site == "site_south")
    south_cdm = south.provenance.cdm_name
    assert set(changes.loc[changes["cdm_name"] == south_cdm, "change_kind"]) == {"new"}
    assert "site_north" not in set(changes["cdm_name"]) and south_cdm != "network"
    # independent check: each pooled count rose by exactly site_south's released count
    raw = pd.read_csv(io.StringIO(south.results_csv), dtype=str, keep_default_na=False)
    settings = raw[raw["variable_name"] == "settings"]
    types = settings[settings["estimate_name"] == "result_type"].set_index("result_id")["estimate_value"]
    rows = raw[(raw["variable_name"] != "settings") & (raw["estimate_name"] == "count")].copy()
    rows["result_type"] = rows["result_id"].map(types)
    rows["v"] = pd.to_numeric(rows["estimate_value"], errors="coerce")
    key_cols = ["result_type", "group_level", "strata_level", "variable_name", "variable_level"]
    pooled = changes[(changes["cdm_name"] == "network") & (changes["estimate_name"] == "count")]
    rows[key_cols] = rows[key_cols].replace("NA", "")  # the CSV's missing level; version_cells uses ""
    merged = pooled.merge(rows[key_cols + ["v"]], on=key_cols, how="inner")
    checked = merged.dropna(subset=["v", "change"])
    assert len(checked) >= 2, pooled
    assert (checked["change"] == checked["v"]).all(), checked
    assert (checked["v"] > 0).any()  # at least one real (non-zero) count moved
    html = changes_section(store, runs[0].study_id)
    assert html.startswith("<h2>Changes since the previous version</h2>") and "Version 2 against version 1" in html
    from coordinator.report import (
        write_report,  # the report of the newest version carries that section
    )

    page = write_report(store, runs[-1].manifest_id, tmp_path / "report").html.read_text()
    assert "Changes since the previous version" in page and "Version 2 against version 1" in page
    assert version_changes(store, runs[0].study_id, version=1).empty
    with pytest.raises(CoordinatorError, match="no version 7"):
        version_changes(store, runs[0].study_id, version=7)
