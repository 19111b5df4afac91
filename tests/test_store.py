"""The coordinator's results store on SQLite and on a real PostgreSQL; a v1 store is upgraded."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.store import ResultsStore, StoreError, migrate
from coordinator.trust.manifest import sign_manifest
from optima_common.bundle import render, sign
from tests.factories import bundle_doc as make_bundle
from tests.factories import manifest_doc as make_manifest

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
COORD, SITE_A, SITE_B = (Ed25519PrivateKey.generate() for _ in range(3))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield str(tmp_path / "results.sqlite3")
        return
    base = sa.engine.make_url(request.getfixturevalue("pg_url"))
    name = f"store_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield base.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def signed_pair(site="site_a", key=SITE_A, manifest=None):
    manifest = manifest or sign_manifest(make_manifest(), COORD)
    bundle = sign(make_bundle(manifest, site=site), key)
    return manifest, bundle, render(bundle)


def test_manifest_status_and_bundle_roundtrip(store_url):
    manifest, bundle, raw = signed_pair()
    with ResultsStore.open(store_url) as store:
        assert store.revision == migrate.HEAD
        store.add_manifest(manifest, spec_name="sclc_stage_i_ii", at=T0)
        store.add_manifest(manifest, spec_name="sclc_stage_i_ii", at=T0)  # idempotent
        assert store.manifest(manifest.manifest_id) == manifest
        rows = store.manifests("sclc")
        assert [r.manifest_id for r in rows] == [manifest.manifest_id] and rows[0].target_sites == ("site_a", "site_b")
        assert store.manifests("other") == []
        assert [(s.site, s.status) for s in store.site_statuses(manifest.manifest_id)] == \
            [("site_a", "pending"), ("site_b", "pending")]

        store.set_site_status(manifest.manifest_id, "site_a", "sent", at=T0 + dt.timedelta(minutes=1))
        store.set_site_status(manifest.manifest_id, "site_b", "sent", at=T0 + dt.timedelta(minutes=1))
        store.set_site_status(manifest.manifest_id, "site_a", "sent", at=T0 + dt.timedelta(minutes=5))  # re-send
        store.set_site_status(manifest.manifest_id, "site_b", "refused", "cohort hash not approved",
                              at=T0 + dt.timedelta(minutes=2))
        assert store.add_bundle(bundle, raw, at=T0 + dt.timedelta(minutes=9)) is True
        assert store.add_bundle(bundle, raw) is False  # the same answer again: no duplicate
        store.set_site_status(manifest.manifest_id, "site_a", "done", at=T0 + dt.timedelta(minutes=9))

    with ResultsStore.open(store_url) as store:  # reopened: everything persisted
        a, b = store.site_statuses(manifest.manifest_id)
        assert (a.status, a.has_bundle, a.first_sent_at, a.updated_at) == \
            ("done", True, T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=9))
        assert a.bundle_received_at == T0 + dt.timedelta(minutes=9)
        assert (b.status, b.reason, b.has_bundle) == ("refused", "cohort hash not approved", False)
        hist = store.status_history(manifest.manifest_id, "site_a")
        assert [h.status for h in hist] == ["pending", "sent", "sent", "done"]
        assert store.bundles(manifest.manifest_id) == [bundle]
        assert store.bundles_raw(manifest.manifest_id)[0][1] == raw
        assert store.manifests()[0].n_bundles == 1
        assert store.sites_to_ask(manifest.manifest_id) == []  # a answered, b refused: nobody to re-ask


def test_refusals(store_url):
    manifest, bundle, raw = signed_pair()
    with ResultsStore.open(store_url) as store:
        with pytest.raises(StoreError, match="not in the results store"):
            store.add_bundle(bundle, raw)
        store.add_manifest(manifest)
        other = sign_manifest(make_manifest(), COORD).model_copy(update={"manifest_id": manifest.manifest_id})
        with pytest.raises(StoreError, match="different content"):
            store.add_manifest(sign_manifest(other, COORD))
        with pytest.raises(StoreError, match="unknown site status"):
            store.set_site_status(manifest.manifest_id, "site_a", "finished")
        with pytest.raises(StoreError, match="different bundle"):
            store.add_bundle(bundle, render(sign(make_bundle(manifest, site="site_b"), SITE_B)))
        assert store.add_bundle(bundle, raw)
        changed = sign(bundle.model_copy(update={"results_csv": bundle.results_csv + "\n"}), SITE_A)
        with pytest.raises(StoreError, match="already answered"):
            store.add_bundle(changed, render(changed))
        assert store.bundles(manifest.manifest_id) == [bundle]
        assert store.sites_to_ask(manifest.manifest_id) == ["site_b"]
        with pytest.raises(StoreError, match="not in the results store"):
            store.manifest("nope")


def test_bad_locations(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        ResultsStore.open(tmp_path / "missing" / "results.sqlite3")
    with pytest.raises(StoreError, match="is a folder"):
        ResultsStore.open(tmp_path)
    (tmp_path / "junk.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open results store"):
        ResultsStore.open(tmp_path / "junk.sqlite3")


def test_v1_store_is_upgraded(store_url):
    """A store written by the first schema (no history, no first-sent time) opens and keeps its rows."""
    manifest, bundle, raw = signed_pair()
    url = store_url if "://" in store_url else f"sqlite:///{store_url}"
    engine = sa.create_engine(url)
    migrate.upgrade(engine, "0001")
    assert migrate.current_revision(engine) == "0001"
    with engine.begin() as conn:
        assert "site_status_history" not in sa.inspect(conn).get_table_names()
        conn.execute(sa.text(
            "INSERT INTO manifests (manifest_id, study_id, study_version, spec_name, manifest_sha256, issued_at, "
            "expires_at, min_sites, target_sites, document, added_at) VALUES (:id, 'sclc', '1.0', NULL, :sha, "
            ":t, :t, 2, '[\"site_a\", \"site_b\"]', :doc, :t)"),
            {"id": manifest.manifest_id, "sha": __import__("optima_common.bundle", fromlist=["x"]).manifest_sha256(
                manifest), "t": T0.replace(tzinfo=None), "doc": render(manifest).decode()})
        conn.execute(sa.text("INSERT INTO site_status (manifest_id, site, status, reason, updated_at) "
                             "VALUES (:id, 'site_a', 'failed', 'timed out', :t)"),
                     {"id": manifest.manifest_id, "t": T0.replace(tzinfo=None)})
    engine.dispose()

    with ResultsStore.open(store_url) as store:
        assert store.revision == migrate.HEAD
        (a,) = store.site_statuses(manifest.manifest_id)
        assert (a.status, a.reason, a.first_sent_at, a.created_at) == ("failed", "timed out", T0, T0)
        assert [(h.status, h.at) for h in store.status_history(manifest.manifest_id)] == [("failed", T0)]
        assert store.manifest(manifest.manifest_id) == manifest
        store.set_site_status(manifest.manifest_id, "site_a", "sent", at=T0 + dt.timedelta(hours=1))
        assert store.add_bundle(bundle, raw)
        assert store.sites_to_ask(manifest.manifest_id) == ["site_b"]
        assert len(store.status_history(manifest.manifest_id)) == 2


def test_bundles_are_stored_compressed_and_old_rows_are_compressed_by_0004(store_url):
    """New bundles are stored gzip-compressed and read back byte for byte; a 0003 store's uncompressed
    row reads as it is and the 0004 migration compresses it (sha256 of the signed bytes unchanged)."""
    import gzip
    import hashlib

    manifest, bundle_a, raw_a = signed_pair()
    _, bundle_b, raw_b = signed_pair("site_b", SITE_B, manifest)
    url = store_url if "://" in store_url else f"sqlite:///{store_url}"
    engine = sa.create_engine(url)
    migrate.upgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO manifests (manifest_id, study_id, study_version, spec_name, manifest_sha256, issued_at, "
            "expires_at, min_sites, target_sites, document, added_at) VALUES (:id, 'sclc', '1.0', NULL, :sha, "
            ":t, :t, 2, '[\"site_a\", \"site_b\"]', :doc, :t)"),
            {"id": manifest.manifest_id, "sha": __import__("optima_common.bundle", fromlist=["x"]).manifest_sha256(
                manifest), "t": T0.replace(tzinfo=None), "doc": render(manifest).decode()})
        conn.execute(sa.text("INSERT INTO bundles (manifest_id, site, sha256, cdm_name, created_at, received_at, raw) "
                             "VALUES (:id, 'site_a', :sha, 'site_a', :t, :t, :raw)"),
                     {"id": manifest.manifest_id, "sha": hashlib.sha256(raw_a).hexdigest(),
                      "t": T0.replace(tzinfo=None), "raw": raw_a})
    with ResultsStore.open(store_url) as store:  # opening upgrades to the newest (0004 compresses)
        assert store.revision == migrate.HEAD == "0006"
        assert store.add_bundle(bundle_b, raw_b)
        assert not store.add_bundle(bundle_b, raw_b)  # the same bytes again: recognised by their sha256
        got = store.bundles_raw(manifest.manifest_id)
        assert [r for _, r in got] == [raw_a, raw_b] and [b for b, _ in got] == [bundle_a, bundle_b]
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT site, sha256, raw FROM bundles ORDER BY site")).all()
    engine.dispose()
    for (site, sha, stored), raw in zip(rows, (raw_a, raw_b), strict=True):
        stored = bytes(stored)
        assert stored[:2] == b"\x1f\x8b", f"{site} not compressed"
        assert gzip.decompress(stored) == raw and sha == hashlib.sha256(raw).hexdigest()
    # and the downgrade gives the uncompressed bytes back
    from alembic import command

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        command.downgrade(migrate._config(conn), "0003")
    with engine.connect() as conn:
        back = [bytes(r) for r in conn.execute(sa.text("SELECT raw FROM bundles ORDER BY site")).scalars()]
    engine.dispose()
    assert back == [raw_a, raw_b]


def test_packed_bytes_given_by_the_caller_must_unpack_to_the_raw_bundle(store_url):
    from coordinator.store.packing import pack

    manifest, bundle_a, raw_a = signed_pair()
    _, bundle_b, raw_b = signed_pair("site_b", SITE_B, manifest)
    with ResultsStore.open(store_url) as store:
        store.add_manifest(manifest)
        with pytest.raises(StoreError, match="packed bytes"):
            store.add_bundle(bundle_a, raw_a, packed=pack(raw_b))
        assert not store.answered_sites(manifest.manifest_id)
        assert store.add_bundle(bundle_a, raw_a, packed=pack(raw_a))
        assert store.bundles_raw(manifest.manifest_id) == [(bundle_a, raw_a)]


def test_a_bundle_vouched_for_by_its_verifier_skips_only_the_second_parse(store_url, monkeypatch):
    """``verified_sha256`` spares the checks only for the very bytes it names: another digest (a
    file that changed after verification) still gets the full checks and is refused."""
    from coordinator.store import repository
    from coordinator.store.packing import pack

    manifest, bundle_a, raw_a = signed_pair()
    _, bundle_b, raw_b = signed_pair("site_b", SITE_B, manifest)
    checks: list[str] = []
    monkeypatch.setattr(repository, "unpack", lambda b, f=repository.unpack: checks.append("unpack") or f(b))
    parse = repository.ResultBundle.model_validate_json
    monkeypatch.setattr(repository.ResultBundle, "model_validate_json",
                        lambda raw: checks.append("parse") or parse(raw))
    with ResultsStore.open(store_url) as store:
        store.add_manifest(manifest)
        with pytest.raises(StoreError, match="different bundle"):  # the digest of other bytes: checked in full
            store.add_bundle(bundle_a, raw_b, packed=pack(raw_b), verified_sha256=hashlib.sha256(raw_a).hexdigest())
        with pytest.raises(StoreError, match="packed bytes"):
            store.add_bundle(bundle_a, raw_a, packed=pack(raw_b), verified_sha256="0" * 64)
        assert not store.answered_sites(manifest.manifest_id)
        assert checks == ["parse", "parse", "unpack"]
        checks.clear()
        assert store.add_bundle(bundle_a, raw_a, packed=pack(raw_a), verified_sha256=hashlib.sha256(raw_a).hexdigest())
        assert checks == []  # the bytes the verifier parsed and packed: neither parsed nor unpacked again
        assert store.add_bundle(bundle_b, raw_b, verified_sha256=hashlib.sha256(raw_b).hexdigest())  # packed here
        assert store.bundles_raw(manifest.manifest_id) == [(bundle_a, raw_a), (bundle_b, raw_b)]
