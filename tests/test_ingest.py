"""`coordinator ingest FILE`: verified bundles are stored and the site marked done; refusals store nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.cli.ingest import ingest_bundle_file
from coordinator.store import ResultsStore, StoreError
from coordinator.trust.manifest import sign_manifest
from optima_common.bundle import BundleError, sign, write_bundle, write_manifest
from tests.conftest import REPO
from tests.factories import bundle_doc as make_bundle
from tests.factories import manifest_doc as make_manifest

COORD = Ed25519PrivateKey.generate()
KEYS = {"site_a": Ed25519PrivateKey.generate(), "site_b": Ed25519PrivateKey.generate()}


def ingest(*args: str) -> subprocess.CompletedProcess:
    if "--manifest" in args and "--coordinator-key" not in args:  # the coordinator's own public key
        manifest = args[args.index("--manifest") + 1]
        args = (*args, "--coordinator-key", str(Path(manifest).parent / "coordinator.pub"))
    return subprocess.run([sys.executable, "-m", "coordinator.cli.main", "ingest", *args], capture_output=True, text=True,
                          cwd=REPO, check=False)


@pytest.fixture()
def setup(tmp_path):
    trust = tmp_path / "trust"
    trust.mkdir()
    for name, key in KEYS.items():
        (trust / f"{name}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "coordinator.pub").write_bytes(COORD.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    manifest = sign_manifest(make_manifest(), COORD)
    mfile = write_manifest(manifest, tmp_path / "manifest.json")
    files = {}
    for name, key in KEYS.items():
        files[name] = write_bundle(sign(make_bundle(manifest, site=name), key), tmp_path / f"{name}.bundle")
    return tmp_path, trust, manifest, mfile, files


def test_ingest_cli_stores_once_and_marks_done(setup):
    tmp, trust, manifest, mfile, files = setup
    store = tmp / "results.sqlite3"
    p = ingest(str(files["site_a"]), "--store", str(store), "--trust", str(trust), "--manifest", str(mfile))
    assert p.returncode == 0 and p.stdout.startswith("stored bundle from site site_a"), p.stderr
    again = ingest(str(files["site_a"]), "--store", str(store), "--trust", str(trust))  # manifest now known
    assert again.returncode == 0 and "already stored" in again.stdout, again.stderr
    p = ingest(str(files["site_b"]), "--store", str(store), "--trust", str(trust))
    assert p.returncode == 0, p.stderr
    with ResultsStore.open(store) as s:
        assert [b.site for b in s.bundles(manifest.manifest_id)] == ["site_a", "site_b"]
        assert [(x.site, x.status, x.has_bundle) for x in s.site_statuses(manifest.manifest_id)] == \
            [("site_a", "done", True), ("site_b", "done", True)]
        assert [h.status for h in s.status_history(manifest.manifest_id, "site_a")] == ["pending", "done"]


def test_ingest_refusals_are_one_line_and_store_nothing(setup):
    tmp, trust, _manifest, mfile, files = setup
    store = tmp / "results.sqlite3"
    data = files["site_a"].read_bytes()
    bad = tmp / "tampered.bundle"
    bad.write_bytes(data[:200] + bytes([data[200] ^ 0x01]) + data[201:])
    cases = [
        ([str(bad), "--manifest", str(mfile)], "bundle"),
        ([str(files["site_a"])], "not in the results store"),  # no manifest known, none given
        ([str(tmp / "nope.bundle"), "--manifest", str(mfile)], "cannot read"),
        ([str(files["site_a"]), "--manifest", str(tmp / "missing.json")], "cannot read"),
        ([str(mfile), "--manifest", str(mfile)], "not a result bundle"),
    ]
    for args, words in cases:
        p = ingest(*args, "--store", str(store), "--trust", str(trust))
        assert p.returncode != 0 and p.stdout == "", args
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("coordinator: error:") and words in p.stderr, \
            (args, p.stderr)
    other = tmp / "other_trust"
    other.mkdir()
    (other / "site_a.pub").write_bytes((trust / "site_b.pub").read_bytes())  # wrong key pinned for site_a
    p = ingest(str(files["site_a"]), "--store", str(store), "--trust", str(other), "--manifest", str(mfile))
    assert p.returncode != 0 and p.stderr.count("\n") == 1
    p = ingest(str(files["site_a"]), "--store", str(tmp / "no" / "dir.sqlite3"), "--trust", str(trust),
               "--manifest", str(mfile))
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "does not exist" in p.stderr
    with ResultsStore.open(store) as s:
        assert s.manifests() == []  # nothing half-stored by any refusal


def test_ingest_api_refuses_a_second_different_answer(setup):
    tmp, trust, manifest, _, files = setup
    with ResultsStore.open(tmp / "r.sqlite3") as store:
        assert ingest_bundle_file(files["site_a"], store, trust, manifest=manifest,
                                  coordinator_key=tmp / "coordinator.pub").site == "site_a"
        changed = sign(make_bundle(manifest, site="site_a", method="another method"), KEYS["site_a"])
        with pytest.raises(StoreError, match="already answered"):
            ingest_bundle_file(write_bundle(changed, tmp / "changed.bundle"), store, trust)
        other = sign_manifest(make_manifest(), COORD)
        with pytest.raises(BundleError, match="answers manifest"):
            ingest_bundle_file(files["site_b"], store, trust, manifest=other, coordinator_key=tmp / "coordinator.pub")
        assert len(store.bundles(manifest.manifest_id)) == 1


def test_ingest_refuses_a_manifest_the_coordinator_did_not_sign(setup):
    tmp, trust, _manifest, _mfile, _files = setup
    rogue = Ed25519PrivateKey.generate()
    forged = sign_manifest(make_manifest(), rogue)
    ffile = write_manifest(forged, tmp / "forged.json")
    bundle = write_bundle(sign(make_bundle(forged, site="site_a"), KEYS["site_a"]), tmp / "forged.bundle")
    store = tmp / "results.sqlite3"
    p = ingest(str(bundle), "--store", str(store), "--trust", str(trust), "--manifest", str(ffile))
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "not signed by this coordinator" in p.stderr, p.stderr
    p = ingest(str(bundle), "--store", str(store), "--trust", str(trust), "--manifest", str(ffile),
               "--coordinator-key", str(trust / "site_a.pub"))  # any other key: refused too
    assert p.returncode != 0 and p.stderr.count("\n") == 1
    with ResultsStore.open(store) as s:
        assert s.manifests() == []


def test_correctly_signed_bundle_with_small_counts_is_refused(setup):
    from tests.factories import CSV

    tmp, trust, manifest, mfile, _files = setup
    small = CSV.replace('"42"', '"3"', 1)  # a count of 3 under a signature that verifies
    leaky = write_bundle(sign(make_bundle(manifest, site="site_a").model_copy(update={"results_csv": small}),
                              KEYS["site_a"]), tmp / "leaky.bundle")
    store = tmp / "results.sqlite3"
    p = ingest(str(leaky), "--store", str(store), "--trust", str(trust), "--manifest", str(mfile))
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "between 1 and 4" in p.stderr, p.stderr
    v = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "verify", str(leaky), "--trust", str(trust)],
                       capture_output=True, text=True, cwd=REPO, check=False)
    assert v.returncode != 0 and v.stderr.count("\n") == 1 and "disclosure audit" in v.stderr, v.stderr
    with ResultsStore.open(store) as s:
        assert s.manifests() == []


def test_ingest_several_files_verifies_in_parallel_and_stores_all_or_none(setup):
    tmp, trust, manifest, mfile, files = setup
    store = tmp / "results.sqlite3"
    data = files["site_b"].read_bytes()
    bad = tmp / "tampered.bundle"
    bad.write_bytes(data[:200] + bytes([data[200] ^ 0x01]) + data[201:])
    p = ingest(str(files["site_a"]), str(bad), "--store", str(store), "--trust", str(trust), "--manifest", str(mfile),
               "--workers", "2")
    assert p.returncode != 0 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    with ResultsStore.open(store) as s:
        assert s.manifests() == []  # site_a verified, but nothing is stored when one file is refused
    p = ingest(str(files["site_a"]), "--store", str(store), "--trust", str(trust), "--manifest", str(mfile),
               "--workers", "0")
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "--workers" in p.stderr, p.stderr
    p = ingest(str(files["site_a"]), str(files["site_b"]), "--store", str(store), "--trust", str(trust),
               "--manifest", str(mfile), "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert [ln.split()[4] for ln in p.stdout.splitlines()] == ["site_a", "site_b"]  # in the order given
    with ResultsStore.open(store) as s:
        assert [(x.site, x.status, x.has_bundle) for x in s.site_statuses(manifest.manifest_id)] == \
            [("site_a", "done", True), ("site_b", "done", True)]
        assert [b.site for b in s.bundles(manifest.manifest_id)] == ["site_a", "site_b"]
