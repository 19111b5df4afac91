"""The study's Cox model fitted over Flower messages (query.cox) against the same sums in process.

A test copy of the network's definitions carries a study spec whose target is every SCLC
patient (the stage I-II cohort is too rare for small synthetic sites to have events).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flwr.clientapp import ClientApp

from coordinator.demo.sites import DemoSite
from coordinator.flower.cox_rounds import cox_section, fit_network_cox
from coordinator.flower.inprocess import InProcessGrid
from coordinator.flower.study import send_study
from coordinator.store import ResultsStore
from optima_common import protocol as P
from optima_common.errors import CoordinatorError
from site_agent import client_app as site_app
from site_agent.analyses.cox import site_score_information
from site_agent.analyses.study_run import site_cox_data, study_patients
from site_agent.audit import AuditLog
from site_agent.config import load_config
from site_agent.study_spec import load_study
from tests.conftest import REPO
from tests.federation_sites import build_network
from tests.test_federated_cox import reference_fit


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("netcox")
    defs = root / "definitions"
    shutil.copytree(REPO / "cohort_definitions", defs)
    spec = json.loads((defs / "studies" / "sclc_stage_i_ii.json").read_text())
    spec.update(study_id="sclc_all_stages", title="all SCLC (test)")
    spec["cohorts"]["target"] = "sclc"
    spec["cox"] = {**spec.get("cox", {}), "min_events": 5, "max_iterations": 30}
    (defs / "studies" / "sclc_all.json").write_text(json.dumps(spec, indent=2))
    sites = (DemoSite("cox_north", "oncology", 12000, 31), DemoSite("cox_south", "oncology", 9000, 32))
    return build_network(root / "sites", sites, catalog=defs / "catalog.json", spec=defs / "studies" / "sclc_all.json")


def site_data(net, site):
    config = load_config(net.configs[site])
    study = load_study(net.spec)
    with config.open_cdm() as cdm:
        patients, _ = study_patients(cdm, study)
    return site_cox_data(study, patients)


def test_network_cox_equals_the_in_process_fit(net, tmp_path):
    manifest = net.manifest(analyses=("sclc_study",))
    grid = InProcessGrid(site_app.app, net.node_configs())
    store = ResultsStore.open(tmp_path / "store.sqlite3")
    outcome = send_study(grid, manifest, store=store, trust_dir=net.trust, reply_timeout=300)
    assert outcome.done == 2
    fit, notes = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120)
    assert fit is not None and fit.converged, notes
    datas = [site_data(net, s) for s in ("cox_north", "cox_south")]
    assert fit.names == datas[0].columns and sum(d.n_events for d in datas) >= 20
    free = ~np.isnan(fit.coef)
    coef, se = reference_fit([(d.X[:, free], d.time, d.event) for d in datas], int(free.sum()))
    np.testing.assert_allclose(fit.coef[free], coef, atol=1e-6)
    np.testing.assert_allclose(fit.se[free], se, atol=1e-5)
    # what crossed the network per evaluation is the plain site sums (nothing else is needed)
    ll = sum(site_score_information(d, np.zeros(d.p))[0] for d in datas)
    assert fit.loglik_null == pytest.approx(ll, rel=1e-12)
    assert "Hazard ratios" in cox_section(fit, notes)
    events = [e for e in AuditLog(net.configs["cox_north"].parent / "state" / "audit.jsonl").entries()
              if e["event"] == "cox_answered" and e["manifest_id"] == manifest.manifest_id]
    assert len(events) == fit.evaluations and events[-1]["detail"]["answers"] == fit.evaluations
    # one round per evaluation: the design request carries each site's answer at beta = 0
    for node in grid.get_node_ids():
        asked = [m for m in grid.sent if m.metadata.message_type == P.QUERY_COX and m.metadata.dst_node_id == node]
        assert len(asked) == fit.evaluations and list(asked[0].content[P.COX_RECORD][P.BETA]) == []


def legacy_cox_agent() -> ClientApp:
    """An agent of the release before: it answers the design request with its columns only."""
    legacy = ClientApp()

    @legacy.query(P.COX_ACTION)
    def cox(msg, context):
        request = msg.content[P.COX_RECORD]
        if list(request[P.BETA]):
            return site_app.query_cox(msg, context)
        site = site_app.site_for(context)
        return site_app.reply(msg, site.name, P.DONE,
                              **{P.COLUMNS: list(site.cox_columns(str(request[P.MANIFEST_ID])))})

    return legacy


def test_sites_of_the_release_before_get_beta_zero_asked_separately(net, tmp_path):
    """A network upgrades site by site: a site that names only its columns in the first round is
    asked at beta = 0 in a round of its own, and the fit is the same."""
    manifest = net.manifest(analyses=("sclc_study",))
    grid = InProcessGrid(site_app.app, net.node_configs())
    send_study(grid, manifest, store=ResultsStore.open(tmp_path / "s.sqlite3"), trust_dir=net.trust,
               reply_timeout=300)
    new, _ = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120)
    nodes = sorted(net.node_configs())
    old = InProcessGrid(legacy_cox_agent(), net.node_configs())
    fit, notes = fit_network_cox(old, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120)
    assert fit is not None and fit.converged, notes
    np.testing.assert_allclose(fit.coef, new.coef, rtol=0, atol=0, equal_nan=True)
    assert fit.evaluations == new.evaluations
    per_node = [sum(m.metadata.dst_node_id == n for m in old.sent) for n in nodes]
    assert per_node == [fit.evaluations + 1] * len(nodes)  # the extra round: beta = 0 on its own


def test_cox_requests_are_budgeted_and_need_a_released_study(net, tmp_path):
    manifest = net.manifest(analyses=("sclc_study",))
    grid = InProcessGrid(site_app.app, net.node_configs())
    # not yet accepted or released here: every site refuses, nothing is fitted
    fit, notes = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=60)
    assert fit is None and notes[-1] == "no site answered the Cox design request"
    assert sorted(n.split(":")[0] for n in notes[:-1]) == ["cox_north", "cox_south"]  # each site's reason
    assert all("was not accepted and released at this site" in n for n in notes[:-1]), notes
    send_study(grid, manifest, store=ResultsStore.open(tmp_path / "s.sqlite3"), trust_dir=net.trust,
               reply_timeout=300)
    used, stopped = 0, ""
    # the real reason reaches the coordinator: the site's refusal (its budget), not "stopped answering",
    # whether the budget runs out inside a fit (the fit is abandoned) or between fits (sites left out)
    for _ in range(12):  # the spec allows 30 answers per manifest; each fit takes several
        try:
            fit, notes = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120)
        except CoordinatorError as exc:
            stopped = str(exc)
            break
        if fit is None:
            stopped = " ".join(notes)
            break
        used += fit.evaluations
    assert "refused" in stopped and "budget 30" in stopped, stopped
    assert 23 <= used <= 30  # refused once the budget would be exceeded, not before
    refused = [e for e in AuditLog(net.configs["cox_south"].parent / "state" / "audit.jsonl").entries()
               if e["event"] == "cox_refused" and e["manifest_id"] == manifest.manifest_id]
    assert refused and "budget" in refused[-1]["detail"]["reason"]


def test_site_answers_later_evaluations_from_its_design_cache(net, tmp_path):
    """The study run keeps the design of the manifest's Cox fit (its own patients), so no Cox
    request needs the CDM; a site without the kept design (released by an earlier version)
    builds it from the CDM at the first request."""
    from site_agent.cox_service import cox_cache_path, read_cox_cache

    manifest = net.manifest(analyses=("sclc_study",))
    grid = InProcessGrid(site_app.app, net.node_configs())
    send_study(grid, manifest, store=ResultsStore.open(tmp_path / "s.sqlite3"), trust_dir=net.trust,
               reply_timeout=300)
    sha = manifest.parameters["sclc_study"]["spec_sha256"]
    for site in ("cox_north", "cox_south"):  # kept by the study run, before any Cox request
        config = load_config(net.configs[site])
        cache = cox_cache_path(config.state_dir, manifest.manifest_id)
        assert cache.stat().st_mode & 0o077 == 0  # owner-only: person-level data
        assert read_cox_cache(cache, "another spec") is None  # a design is reused only for its own spec
        (cached, max_iterations, min_events), fresh = read_cox_cache(cache, sha), site_data(net, site)
        assert (max_iterations, min_events) == (30, 5)  # the test spec's limits, kept beside the design
        np.testing.assert_array_equal(cached.X, fresh.X)
        np.testing.assert_array_equal(cached.time, fresh.time)
        assert cached.columns == fresh.columns
    south = cox_cache_path(load_config(net.configs["cox_south"]).state_dir, manifest.manifest_id)
    south.unlink()  # as if released before designs were kept: the first request rebuilds it
    first, _ = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120)
    assert first is not None and first.converged
    np.testing.assert_array_equal(read_cox_cache(south, sha)[0].X, site_data(net, "cox_south").X)
    # an answer from the cache, as a fresh ClientApp process gives it per message, imports no
    # cohort, dataframe or database code (a second or more per message before they were lazy)
    probe = ("import sys; from site_agent.service import Site; s = Site.from_file(sys.argv[1]); "
             "s.cox(sys.argv[2], [0.0] * len(s.cox_columns(sys.argv[2]))); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'circe', 'pandas', 'duckdb', 'psycopg', "
             "'sqlalchemy', 'sklearn', 'torch', 'scipy', 'matplotlib'}))")
    heavy = subprocess.run([sys.executable, "-c", probe, str(net.configs["cox_north"]), manifest.manifest_id],
                           capture_output=True, text=True, cwd=REPO)
    assert heavy.returncode == 0 and heavy.stdout.strip() == "[]", heavy.stdout + heavy.stderr[-500:]
    # with every site's CDM out of reach, a second fit of the same manifest gives the same answer
    cdms = {s: load_config(net.configs[s]).cdm.url.removeprefix("duckdb:///") for s in ("cox_north", "cox_south")}
    moved = {s: shutil.move(p, p + ".away") for s, p in cdms.items()}
    try:
        second, notes = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120)
    finally:
        for s, p in moved.items():
            shutil.move(p, cdms[s])
    assert second is not None, notes
    np.testing.assert_allclose(second.coef, first.coef, rtol=0, atol=0, equal_nan=True)


def test_the_first_cox_answer_comes_with_the_release(net, tmp_path):
    """With ``cox_first`` the study round also carries each site's answer at beta = 0: the fit
    asks one round less, spends the same budget and finds the same model. A site whose study
    reply has no such answer (an agent of the release before) gets the design request itself."""
    manifest = net.manifest(analyses=("sclc_study",))
    grid = InProcessGrid(site_app.app, net.node_configs())
    first: dict[int, dict] = {}
    outcome = send_study(grid, manifest, store=ResultsStore.open(tmp_path / "s.sqlite3"), trust_dir=net.trust,
                         reply_timeout=300, cox_first=first)
    assert outcome.done == 2 and sorted(first) == sorted(grid.get_node_ids())
    assert all(r["status"] == P.DONE and len(r[P.SCORE]) == len(r[P.COLUMNS]) for r in first.values())
    datas = {s: site_data(net, s) for s in ("cox_north", "cox_south")}
    for r in first.values():  # the plain sums at beta = 0 of that site's own patients
        d = datas[r["site"]]
        assert r[P.LOGLIK] == pytest.approx(site_score_information(d, np.zeros(d.p))[0], rel=1e-12)
    fit, notes = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120, first=first)
    assert fit is not None and fit.converged, notes
    again, _ = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120)
    np.testing.assert_allclose(fit.coef, again.coef, rtol=0, atol=0, equal_nan=True)
    assert fit.evaluations == again.evaluations
    cox_asked = [m for m in grid.sent if m.metadata.message_type == P.QUERY_COX]
    assert len(cox_asked) == 2 * (fit.evaluations - 1) + 2 * again.evaluations  # no design round for the first fit
    events = [e for e in AuditLog(net.configs["cox_north"].parent / "state" / "audit.jsonl").entries()
              if e["event"] == "cox_answered" and e["manifest_id"] == manifest.manifest_id]
    assert len(events) == fit.evaluations + again.evaluations  # the answer with the release was budgeted
    # one site's release came without the answer: only that site's node gets the design request
    north = next(n for n, r in first.items() if r["site"] == "cox_north")
    partial = {n: r for n, r in first.items() if n != north}
    grid.sent.clear()
    mixed, notes = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120,
                                   first=partial)
    assert mixed is not None, notes
    design = [m.metadata.dst_node_id for m in grid.sent
              if m.metadata.message_type == P.QUERY_COX and list(m.content[P.COX_RECORD][P.BETA]) == []]
    assert design == [north]
    np.testing.assert_allclose(mixed.coef, fit.coef, rtol=0, atol=0, equal_nan=True)


def test_a_study_without_the_cox_request_spends_no_cox_budget(net, tmp_path):
    manifest = net.manifest(analyses=("sclc_study",))
    grid = InProcessGrid(site_app.app, net.node_configs())
    send_study(grid, manifest, store=ResultsStore.open(tmp_path / "s.sqlite3"), trust_dir=net.trust,
               reply_timeout=300)
    replies = [m for m in grid.sent if m.metadata.message_type == P.QUERY]
    assert replies and all(P.COX_FIRST not in m.content[P.MANIFEST_RECORD] for m in replies)
    events = [e for e in AuditLog(net.configs["cox_north"].parent / "state" / "audit.jsonl").entries()
              if e["event"].startswith("cox_") and e["manifest_id"] == manifest.manifest_id]
    assert events == []


def test_a_failing_cox_answer_does_not_cost_the_release(net, tmp_path, monkeypatch):
    """The Cox answer rides on the study reply: if it fails at a site (here: the design cannot be
    read), the bundle still arrives and the fit says why the site is left out."""
    from site_agent.service import Site

    def broken(self, manifest_id):
        raise OSError("design file unreadable")

    monkeypatch.setattr(Site, "cox_columns", broken)
    manifest = net.manifest(analyses=("sclc_study",))
    grid = InProcessGrid(site_app.app, net.node_configs())
    first: dict[int, dict] = {}
    outcome = send_study(grid, manifest, store=ResultsStore.open(tmp_path / "s.sqlite3"), trust_dir=net.trust,
                         reply_timeout=300, cox_first=first)
    assert outcome.done == 2
    assert sorted(r[P.STATUS] for r in first.values()) == [P.FAILED, P.FAILED]
    fit, notes = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=60, first=first)
    # the reason as the site words failures: the kind of error, its details kept in the site's log
    assert fit is None and sum("OSError (details in the site's log)" in n for n in notes) == 2, notes
    assert not [m for m in grid.sent if m.metadata.message_type == P.QUERY_COX]  # nothing asked again


def test_a_site_answering_from_two_nodes_counts_once(net, tmp_path):
    """A site whose SuperNode runs twice (two Flower nodes, one site) answers the design request
    twice; its stratum enters the sums once, so the fit is the one of two nodes."""
    manifest = net.manifest(analyses=("sclc_study",))
    configs = net.node_configs()
    grid = InProcessGrid(site_app.app, configs)
    send_study(grid, manifest, store=ResultsStore.open(tmp_path / "s.sqlite3"), trust_dir=net.trust,
               reply_timeout=300)
    once, _ = fit_network_cox(grid, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120)
    doubled = InProcessGrid(site_app.app, {**configs, max(configs) + 1: configs[min(configs)]})
    fit, notes = fit_network_cox(doubled, manifest.manifest_id, {"cox_north", "cox_south"}, timeout=120)
    assert fit is not None and any("more than one Flower node" in n for n in notes), notes
    np.testing.assert_allclose(fit.coef, once.coef, rtol=0, atol=0, equal_nan=True)
