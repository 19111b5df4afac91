"""Pool once: the results store keeps a manifest's pooled network result; the report and the
viewer read it instead of pooling again, and a new bundle or other pooling code pools anew."""

from __future__ import annotations

import sqlalchemy as sa

import coordinator.pooling.cache as cache
from coordinator.pooling.results import network_result
from coordinator.report import render_report
from coordinator.store import ResultsStore
from optima_common.bundle import render
from optima_common.results import SummarisedResult
from tests.test_network_results import network_sites


def _store(path, bundles):
    manifest = network_sites()[0]
    store = ResultsStore.open(path)
    store.add_manifest(manifest)
    for b in bundles:
        assert store.add_bundle(b, render(b))
    return store, manifest.manifest_id


def _counting(monkeypatch) -> list[int]:
    calls = []

    def counted(bundles, **kw):
        calls.append(len(bundles))
        return network_result(bundles, **kw)

    monkeypatch.setattr(cache, "network_result", counted)
    return calls


def test_pooled_once_kept_result_equals_a_fresh_pooling(tmp_path, monkeypatch):
    _, bundles, _, _ = network_sites()
    fresh = network_result(bundles)
    calls = _counting(monkeypatch)
    store, mid = _store(tmp_path / "s.sqlite3", bundles)
    first = cache.pooled_result(store, mid)
    kept = cache.pooled_result(store, mid)
    assert calls == [2]  # pooled once, then read back
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pooled_results")).scalar_one() == 1
    for net in (first, kept):
        assert net.result.to_csv_text() == fresh.result.to_csv_text()
        assert net.result.data.equals(fresh.result.data) and net.result.settings.equals(fresh.result.settings)
        assert net.sites == fresh.sites and net.notes == fresh.notes and net.pooled_name == fresh.pooled_name
    # what is read back is a canonical, valid summarised_result (validated again here, from scratch)
    assert SummarisedResult(kept.result.data, kept.result.settings) == kept.result
    # the report and the viewer read the kept result: no pooling, the same CSV as the fresh pooling
    page, csv_bytes = render_report(store, mid)
    assert calls == [2] and csv_bytes == fresh.result.to_csv_text().encode("utf-8") and "site_b" in page
    store.close()


def test_new_bundle_or_other_pooling_code_pools_again(tmp_path, monkeypatch):
    _, bundles, _, _ = network_sites()
    calls = _counting(monkeypatch)
    store, mid = _store(tmp_path / "s.sqlite3", bundles[:1])
    one = cache.pooled_result(store, mid)
    assert set(one.result.data["cdm_name"]) == {"site_a", "network"}
    assert store.add_bundle(bundles[1], render(bundles[1]))  # site_b answers: another set of bundles
    two = cache.pooled_result(store, mid)
    assert calls == [1, 2] and set(two.result.data["cdm_name"]) == {"site_a", "site_b", "network"}
    cache.pooled_result(store, mid)
    assert calls == [1, 2]
    monkeypatch.setattr(cache, "code_hash", lambda: "other pooling code")
    again = cache.pooled_result(store, mid)
    assert calls == [1, 2, 2] and again.result == two.result
    with store.engine.connect() as conn:  # one kept result per manifest: the older ones replaced
        assert conn.execute(sa.text("SELECT count(*) FROM pooled_results")).scalar_one() == 1
    store.close()


def test_no_bundle_nothing_pooled(tmp_path):
    import pytest

    from coordinator.store import StoreError

    store, mid = _store(tmp_path / "s.sqlite3", [])
    with pytest.raises(StoreError, match="no stored site bundles"):
        cache.pooled_result(store, mid)
    store.close()
