"""Policy before data: a manifest the site refuses never opens the CDM and writes nothing there."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest

import site_agent.cdm as cdm_pkg
from coordinator.trust.manifest import sign_manifest
from optima_common import protocol as P
from optima_common.bundle import load_private_key
from site_agent.service import Site
from tests.federation_sites import SITES, build_network


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return build_network(tmp_path_factory.mktemp("policy_first"), sites=SITES[2:])


def unapproved_study(net):
    m = net.manifest(sites=["site_east"], min_sites=1, analyses=("cohort_counts", "sclc_study"))
    fake = hashlib.sha256(b"a study spec this site never approved").hexdigest()
    m = m.model_copy(update={"parameters": {"sclc_study": {"spec_sha256": fake}}, "signature": None})
    return sign_manifest(m, load_private_key(net.coordinator_key))


def db_state(path):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return sorted(con.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall())
    finally:
        con.close()


def test_unapproved_study_opens_no_connection_and_writes_nothing(net, monkeypatch):
    cfg = net.configs["site_east"]
    site = Site.from_file(str(cfg))
    cdm_file = site.config.cdm.url.removeprefix("duckdb:///")
    before_tables, before_bytes = db_state(cdm_file), Path(cdm_file).read_bytes()
    opened = []
    real = cdm_pkg.connect_cdm
    monkeypatch.setattr(cdm_pkg, "connect_cdm", lambda *a, **k: opened.append(a) or real(*a, **k))
    status, reason, text = site.answer_manifest(unapproved_study(net).model_dump_json())
    assert status == P.REFUSED and "study_not_approved" in reason and text == ""
    assert opened == []
    assert db_state(cdm_file) == before_tables  # no cohort table, no diagnostics cache
    assert Path(cdm_file).read_bytes() == before_bytes
    state = site.config.state_dir
    assert not (state / "released").exists() or not any((state / "released").iterdir())


def test_unreachable_cdm_and_unapproved_manifest_is_refused_not_failed(net, tmp_path):
    cfg = net.configs["site_east"]
    text = cfg.read_text().replace(".duckdb", "_missing_dir/none.duckdb")
    moved = cfg.parent / "site_unreachable.toml"
    moved.write_text(text)
    site = Site.from_file(str(moved))
    status, reason, _ = site.answer_manifest(unapproved_study(net).model_dump_json())
    assert status == P.REFUSED, reason
