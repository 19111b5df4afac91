"""coordinator sites add|remove|list: pinned keys, the expected minimum cell count on the verification
path (Flower collection, ingest and verify all use verify_bundle_file), archived keys of offboarded sites."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time

import pytest

from coordinator.cli.main import main
from coordinator.trust.manifest import sign_manifest, verify_bundle_file
from coordinator.trust.pki import create_pki
from coordinator.trust.site_registry import load_registry
from optima_common.bundle import (
    BundleError,
    generate_keypair,
    load_private_key,
    sign,
    write_bundle,
)
from tests.conftest import REPO
from tests.factories import bundle_doc as make_bundle
from tests.factories import manifest_doc as make_manifest


@pytest.fixture()
def keys(tmp_path):
    out = {}
    for name in ("coordinator", "site_a", "site_b"):
        priv, pub = generate_keypair(tmp_path / "keys", name)
        out[name] = (load_private_key(priv), pub)
    return out


def subprocess_cli(*argv: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli.main", *argv], capture_output=True, text=True, cwd=REPO, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture()
def cli(capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def bundle_file(tmp_path, keys, *, site="site_a", min_cell=5, created_at=None, name="b.bundle"):
    manifest = sign_manifest(make_manifest(min_cell_count=2), keys["coordinator"][0])
    b = make_bundle(manifest, site=site, min_cell_count=min_cell, site_floor=min(min_cell, 5))
    if created_at is not None:
        b = b.model_copy(update={"created_at": created_at})
    return manifest, write_bundle(sign(b, keys[site][0]), tmp_path / name)


def test_add_pins_key_and_expected_min_cell_count_is_enforced(tmp_path, keys):
    trust = tmp_path / "trust"
    assert main(["sites", "add", "site_a", "--key", str(keys["site_a"][1]), "--min-cell-count", "10",
                 "--trust", str(trust)]) == 0
    assert (trust / "site_a.pub").read_bytes() == keys["site_a"][1].read_bytes()
    assert load_registry(trust).sites["site_a"].min_cell_count == 10
    manifest, low = bundle_file(tmp_path, keys, min_cell=5)  # the site suppressed below what it agreed to
    with pytest.raises(BundleError, match="min cell count 5, below the 10 the site was onboarded with"):
        verify_bundle_file(low, trust, manifest=manifest)
    code, _, err = subprocess_cli("verify", str(low), "--trust", str(trust))  # the real command line
    assert code != 0 and "below the 10 the site was onboarded with" in err and len(err.strip().splitlines()) == 1
    manifest, ok = bundle_file(tmp_path, keys, min_cell=10, name="ok.bundle")
    assert verify_bundle_file(ok, trust, manifest=manifest).site == "site_a"
    # lowering the expectation by re-adding the same key is allowed (idempotent re-onboarding)
    assert main(["sites", "add", "site_a", "--key", str(keys["site_a"][1]), "--min-cell-count", "5",
                 "--trust", str(trust)]) == 0
    assert verify_bundle_file(low, trust).suppression.min_cell_count == 5


def test_remove_archives_the_key_old_bundles_verify_new_ones_refused(tmp_path, keys, cli):
    trust = tmp_path / "trust"
    for site in ("site_a", "site_b"):
        assert main(["sites", "add", site, "--key", str(keys[site][1]), "--min-cell-count", "5",
                     "--trust", str(trust)]) == 0
    _, old = bundle_file(tmp_path, keys, created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    time.sleep(0.01)
    code, out, _ = cli("sites", "remove", "site_a", "--trust", str(trust))
    assert code == 0 and "archived" in out
    assert not (trust / "site_a.pub").exists() and len(list((trust / "archive").glob("site_a.*.pub"))) == 1
    assert verify_bundle_file(old, trust).site == "site_a"  # made before removal: still verifiable
    code, out, _ = cli("verify", str(old), "--trust", str(trust))
    assert code == 0 and out.startswith("OK: bundle from site site_a")
    _, new = bundle_file(tmp_path, keys, created_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
                         name="new.bundle")
    with pytest.raises(BundleError, match="unknown|not trusted|no trusted|untrusted"):
        verify_bundle_file(new, trust)
    manifest, _ = bundle_file(tmp_path, keys, name="x.bundle")
    with pytest.raises(BundleError):  # a live collection never accepts an archived key
        verify_bundle_file(old, trust, manifest=manifest)
    code, out, _ = cli("sites", "list", "--trust", str(trust), "--json")
    doc = json.loads(out)
    assert [r["site"] for r in doc["sites"]] == ["site_b"] and doc["archived"][0]["site"] == "site_a"


def test_supernode_key_and_bad_input_one_line(tmp_path, keys, cli):
    trust = tmp_path / "trust"
    pki = create_pki(tmp_path / "pki", ["site_a"])
    code, out, _ = cli("sites", "add", "site_a", "--key", str(keys["site_a"][1]), "--min-cell-count", "5",
                       "--supernode-key", str(pki.node_pub("site_a")), "--trust", str(trust))
    assert code == 0 and "flwr supernode register" in out
    assert (trust / "supernodes" / "site_a.pub").read_bytes() == pki.node_pub("site_a").read_bytes()
    cases = [
        (["--key", str(keys["site_b"][1]), "--min-cell-count", "1"], "below 2"),
        (["--key", str(tmp_path / "nope.pub"), "--min-cell-count", "5"], "not found"),
        (["--key", str(tmp_path / "keys" / "site_b.key"), "--min-cell-count", "5"], "PRIVATE key"),
        (["--key", str(keys["site_a"][1]), "--min-cell-count", "5"], "already pinned for site 'site_a'"),
        (["--key", str(keys["site_b"][1]), "--min-cell-count", "5", "--supernode-key", str(keys["site_b"][1])],
         "not an OpenSSH public key"),
    ]
    for extra, message in cases:
        code, out, err = cli("sites", "add", "site_b", *extra, "--trust", str(trust))
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not (trust / "site_b.pub").exists()  # nothing half-written
    code, _, err = cli("sites", "add", "site_a", "--key", str(keys["site_b"][1]), "--min-cell-count", "5",
                       "--trust", str(trust))
    assert code != 0 and "--replace" in err
    code, _, err = cli("sites", "remove", "site_zzz", "--trust", str(trust))
    assert code != 0 and "no pinned key" in err
    (trust / "sites.json").write_text("{not json")
    code, _, err = cli("sites", "list", "--trust", str(trust))
    assert code != 0 and "not a site registry" in err and len(err.strip().splitlines()) == 1


def test_replace_rotates_and_archives_the_old_key(tmp_path, keys):
    trust = tmp_path / "trust"
    main(["sites", "add", "site_a", "--key", str(keys["site_a"][1]), "--min-cell-count", "5", "--trust", str(trust)])
    _, old = bundle_file(tmp_path, keys, created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    _, new_pub = generate_keypair(tmp_path / "keys2", "site_a")
    assert main(["sites", "add", "site_a", "--key", str(new_pub), "--min-cell-count", "5", "--trust", str(trust),
                 "--replace"]) == 0
    assert (trust / "site_a.pub").read_bytes() == new_pub.read_bytes()
    assert verify_bundle_file(old, trust).site == "site_a"
