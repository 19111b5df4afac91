"""The table each bundle's disclosure re-check read at ingest is kept beside the bundle and pooled from,
bound to that bundle's digest; a stale, damaged or edited kept table is not used (the signed text is read)."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.cli.ingest import ingest_bundle_files
from coordinator.pooling import site_tables as T
from coordinator.pooling.cache import pooled_result
from coordinator.pooling.results import network_result
from coordinator.store import ResultsStore
from coordinator.store.site_tables import get_site_tables, put_site_table
from coordinator.store.tables import site_tables
from coordinator.trust.manifest import sign_manifest
from optima_common.bundle import sign, write_bundle
from optima_common.results import SummarisedResult
from tests.factories import bundle_doc, manifest_doc

COORD = Ed25519PrivateKey.generate()
KEYS = {s: Ed25519PrivateKey.generate() for s in ("site_a", "site_b")}


@pytest.fixture()
def ingested(tmp_path):
    trust = tmp_path / "trust"
    trust.mkdir()
    for name, key in KEYS.items():
        (trust / f"{name}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    manifest = sign_manifest(manifest_doc(), COORD)
    files = [write_bundle(sign(bundle_doc(manifest, site=s), k), tmp_path / f"{s}.bundle") for s, k in KEYS.items()]
    store = ResultsStore.open(tmp_path / "store.sqlite3")
    store.add_manifest(manifest)
    done = ingest_bundle_files(files, store, trust, workers=2)  # verified in spawned workers
    yield store, manifest.manifest_id, [b for b, _ in done], files
    store.close()


def _same(a: SummarisedResult, b: SummarisedResult) -> bool:
    return all(x.equals(y) and list(x.dtypes) == list(y.dtypes) and list(x.columns) == list(y.columns)
               for x, y in ((a.data, b.data), (a.settings, b.settings)))


def test_the_kept_table_is_the_table_read_from_the_signed_text_and_bound_to_the_bundle(ingested):
    store, mid, bundles, files = ingested
    rows = get_site_tables(store, [(mid, b.site) for b in bundles])
    assert set(rows) == {(mid, "site_a"), (mid, "site_b")}
    kept = T.kept_tables(store, mid)
    for b, f in zip(bundles, files, strict=True):
        assert rows[(mid, b.site)].bundle_sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
        assert _same(kept[b.site].table, SummarisedResult.from_csv_text(b.results_csv))
        assert kept[b.site].bundle == b.model_copy(update={"results_csv": ""})  # the header: all but the text
    bundles_in, tables = T.pooling_input(store, mid)
    assert bundles_in == [k.bundle for k in kept.values()] and set(tables) == {"site_a", "site_b"}
    pooled = pooled_result(store, mid)  # from the kept tables, no bundle read in full
    fresh = network_result(bundles)  # every table read from its text
    assert pooled.result.to_csv_text() == fresh.result.to_csv_text() and _same(pooled.result, fresh.result)


def _edit(store, mid, site, **values):
    with store.engine.begin() as conn:
        conn.execute(sa.update(site_tables).where(site_tables.c.manifest_id == mid, site_tables.c.site == site)
                     .values(**values))


def test_an_edited_stale_or_damaged_kept_table_is_not_used(ingested):
    store, mid, bundles, _ = ingested
    truth = SummarisedResult.from_csv_text(bundles[0].results_csv)
    row = get_site_tables(store, [(mid, "site_a")])[(mid, "site_a")]
    # edited: other numbers in the Parquet, digest left as it was
    forged = truth.data.assign(estimate_value=truth.data["estimate_value"].where(
        truth.data["estimate_value"].isna(), "999"))
    _edit(store, mid, "site_a", data=T.to_parquet(forged))
    assert "site_a" not in T.kept_tables(store, mid) and "site_b" in T.kept_tables(store, mid)
    # damaged bytes
    _edit(store, mid, "site_a", data=row.data[:-7] + b"garbage")
    assert "site_a" not in T.kept_tables(store, mid)
    # stale: a consistent row, but read from another bundle than the one stored for the site
    other = T.encode(bundles[0], truth, "0" * 64)
    put_site_table(store, mid, "site_a", other)
    assert "site_a" not in T.kept_tables(store, mid)
    # another site's header under this site's row (digest and bundle digest as for site_a)
    b_head = T.encode(bundles[1], truth, row.bundle_sha256)
    put_site_table(store, mid, "site_a", b_head)
    assert "site_a" not in T.kept_tables(store, mid)
    assert T.pooling_input(store, mid)[0] == sorted(bundles, key=lambda b: b.site)  # read in full
    # another reader's row
    put_site_table(store, mid, "site_a", row._replace(reader="f" * 64))
    assert "site_a" not in T.kept_tables(store, mid)
    # the pooled result is still the one from the signed texts, not the forged numbers
    pooled = pooled_result(store, mid)
    assert pooled.result.to_csv_text() == network_result(bundles).result.to_csv_text()
    assert not (pooled.result.data["estimate_value"] == "999").any()
    # the untouched row is used again once restored
    put_site_table(store, mid, "site_a", row)
    assert _same(T.kept_tables(store, mid)["site_a"].table, truth)


def test_decode_checks_the_digest_over_every_part():
    b = bundle_doc(sign_manifest(manifest_doc(), COORD))
    r = SummarisedResult.from_csv_text(b.results_csv)
    row = T.encode(b, r, "a" * 64)
    assert _same(T.decode(row, "a" * 64).table, r) and T.decode(row, "a" * 64).bundle.site == b.site
    assert T.decode(row, "b" * 64) is None
    assert T.decode(row._replace(header=row.header.replace("site_a", "site_b")), "a" * 64) is None
    for field in ("data", "settings"):
        assert T.decode(row._replace(**{field: getattr(row, field) + b"x"}), "a" * 64) is None
    swapped = row._replace(data=row.settings, settings=row.data)
    assert T.decode(swapped, "a" * 64) is None
