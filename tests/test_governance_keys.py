"""Keys over time: rotation keeps old bundles verifiable; pinning and revocation reach the policy."""

from __future__ import annotations

import pytest

from optima_common import bundle as bundles
from optima_common.bundle import load_public_key
from optima_common.keys import key_id
from optima_common.results import SummarisedResult
from site_agent.cli import main
from site_agent.config import load_config
from site_agent.governance.keyring import Keyring
from site_agent.policy import ManifestPolicy, PolicyRefusal
from tests.factories import (
    make_bundle,
    make_keys,
    make_manifest,
    write_site_config,
)


@pytest.fixture()
def site(tmp_path):
    keys = make_keys(tmp_path / "keys")
    return keys, write_site_config(tmp_path, keys)


def _events(cfg_path) -> list[dict]:
    return [e for e in ManifestPolicy.from_config(load_config(cfg_path)).audit.entries()]


def test_rotate_keeps_old_bundles_verifiable(site, tmp_path, capsys):
    keys, cfg_path = site
    result = SummarisedResult.empty()
    old_pub = load_public_key(keys["site_a_pub"])
    old_bundle = make_bundle(result, keys["site_a"], "m-old", tmp_path)
    assert main(["keys", "rotate", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    cfg = load_config(cfg_path)  # the same config file, unchanged, now names the new key
    new_pub = load_public_key(keys["site_a_pub"])
    assert key_id(cfg.site_private_key().public_key()) == key_id(new_pub) != key_id(old_pub)
    assert key_id(new_pub) in out and str(keys["site_a_pub"]) in out
    new_bundle = make_bundle(result, keys["site_a"], "m-new", tmp_path)
    archive = Keyring(cfg.state_dir).site_trust()
    assert set(archive) == {key_id(old_pub), key_id(new_pub)}
    bundles.verify(old_bundle, archive)  # old bundle: verifiable with the key that signed it
    bundles.verify(new_bundle, {key_id(new_pub): new_pub})
    with pytest.raises(bundles.BundleError, match="unknown key"):
        bundles.verify(old_bundle, {key_id(new_pub): new_pub})
    [use_old, use_new] = sorted(Keyring(cfg.state_dir).site_history(), key=lambda u: u.key_id != key_id(old_pub))
    assert use_old.retired_at is not None and use_new.active_from is not None and use_new.retired_at is None
    rotated = [e for e in _events(cfg_path) if e["event"] == "key_rotated"]
    assert rotated[0]["detail"] == {"old_key_id": key_id(old_pub), "new_key_id": key_id(new_pub)}


def test_pin_then_revoke_coordinator_keys(site, capsys):
    keys, cfg_path = site
    cfg = str(cfg_path)
    with pytest.raises(PolicyRefusal) as exc:  # a second coordinator key: not trusted yet
        ManifestPolicy.from_config(load_config(cfg_path)).check(make_manifest(keys, signer="coordinator2"))
    assert exc.value.check == "signature"
    assert main(["keys", "pin-coordinator", str(keys["coordinator2_pub"]), "--config", cfg]) == 0
    assert main(["keys", "pin-coordinator", str(keys["coordinator2_pub"]), "--config", cfg]) == 0
    assert "already pinned" in capsys.readouterr().out
    ManifestPolicy.from_config(load_config(cfg_path)).check(make_manifest(keys, signer="coordinator2"))

    old_id = key_id(load_public_key(keys["coordinator_pub"]))  # the key the TOML pins
    assert main(["keys", "revoke", old_id[:10], "--reason", "laptop stolen", "--config", cfg]) == 0
    capsys.readouterr()
    policy = ManifestPolicy.from_config(load_config(cfg_path))
    m = make_manifest(keys)
    with pytest.raises(PolicyRefusal) as exc:
        policy.check(m)
    assert exc.value.check == "revoked"
    last = list(policy.audit.entries())[-1]
    assert last["event"] == "refused" and last["manifest_id"] == m.manifest_id and last["detail"]["check"] == "revoked"
    assert not policy.nonces.seen(m.manifest_id, m.nonce)  # refused before the nonce is claimed
    policy.check(make_manifest(keys, signer="coordinator2"))  # the other key still works
    assert old_id not in load_config(cfg_path).trusted_keys()

    assert main(["keys", "pin-coordinator", str(keys["coordinator_pub"]), "--config", cfg]) == 2
    assert "was revoked" in capsys.readouterr().err
    site_id = key_id(load_public_key(keys["site_a_pub"]))
    assert main(["keys", "revoke", site_id, "--config", cfg]) == 2
    assert "keys rotate" in capsys.readouterr().err
    assert main(["keys", "revoke", "zz", "--config", cfg]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["keys", "list", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert old_id in out and "laptop stolen" in out
    events = [e["event"] for e in _events(cfg_path)]
    assert events.count("key_pinned") == 1 and events.count("key_revoked") == 1


def test_damaged_keyring_is_one_config_error(site):
    keys, cfg_path = site
    cfg = load_config(cfg_path)
    Keyring(cfg.state_dir).revoke("0" * 64)
    Keyring(cfg.state_dir).revoked_file.write_text("{broken")
    with pytest.raises(Exception) as exc:
        load_config(cfg_path)
    assert "revoked.json is damaged" in str(exc.value) and "\n" not in str(exc.value)
