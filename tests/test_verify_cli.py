"""`coordinator verify FILE --trust DIR` and the key commands, as a coordinator operator uses them."""

from __future__ import annotations

import subprocess
import sys

from coordinator.trust.manifest import sign_manifest
from optima_common.bundle import load_private_key, sign, write_bundle
from tests.conftest import REPO
from tests.factories import bundle_doc as make_bundle
from tests.factories import manifest_doc as make_manifest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)


def test_keys_bundle_verify_and_one_byte_tamper(tmp_path):
    coord_dir, site_dir, trust = tmp_path / "coord", tmp_path / "site", tmp_path / "trust"
    p = run("-m", "coordinator.cli.main", "keys", "generate", "--out", str(coord_dir))
    assert p.returncode == 0 and "key id" in p.stdout, p.stderr
    p = run("-m", "site_agent", "keys", "generate", "--out", str(site_dir), "--name", "site_a")
    assert p.returncode == 0, p.stderr
    again = run("-m", "site_agent", "keys", "generate", "--out", str(site_dir), "--name", "site_a")
    assert again.returncode != 0 and again.stderr.count("\n") == 1  # never overwrites a key silently
    trust.mkdir()
    (trust / "site_a.pub").write_bytes((site_dir / "site_a.pub").read_bytes())

    manifest = sign_manifest(make_manifest(), load_private_key(coord_dir / "coordinator.key"))
    bundle = sign(make_bundle(manifest), load_private_key(site_dir / "site_a.key"))
    path = tmp_path / "site_a.bundle"
    write_bundle(bundle, path)
    ok = run("-m", "coordinator.cli.main", "verify", str(path), "--trust", str(trust))
    assert ok.returncode == 0 and ok.stdout.startswith("OK: bundle from site site_a"), ok.stderr

    data = path.read_bytes()
    for pos in (10, len(data) // 2, len(data) - 20):
        tampered = tmp_path / f"t{pos}.bundle"
        tampered.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:])
        bad = run("-m", "coordinator.cli.main", "verify", str(tampered), "--trust", str(trust))
        assert bad.returncode != 0 and bad.stdout == ""
        assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("coordinator: error:"), bad.stderr

    other = tmp_path / "other_trust"
    other.mkdir()
    (other / "site_a.pub").write_bytes((coord_dir / "coordinator.pub").read_bytes())  # wrong key pinned
    unknown = run("-m", "coordinator.cli.main", "verify", str(path), "--trust", str(other))
    assert unknown.returncode != 0 and "unknown" in unknown.stderr.lower()
