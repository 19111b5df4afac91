"""Signed manifests and result bundles: canonical bytes, sign/verify, file IO, key files."""

from __future__ import annotations

import datetime as dt
import json
import random
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.trust.manifest import sign_manifest, verify_bundle_file
from optima_common.bundle import (
    BundleError,
    ResultBundle,
    StudyManifest,
    canonical_bytes,
    key_id,
    manifest_sha256,
    read_bundle,
    read_manifest,
    render,
    sign,
    verify,
    write_bundle,
    write_manifest,
)
from optima_common.errors import ConfigError, ExitCode, OptimaError
from optima_common.keys import (
    generate_keypair,
    load_private_key,
    load_public_key,
    load_trust_dir,
)
from tests.factories import NOW, bundle_doc, manifest_doc


@pytest.fixture(scope="module")
def coord_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def site_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture()
def signed(coord_key, site_key):
    manifest = sign_manifest(manifest_doc(), coord_key)
    return manifest, sign(bundle_doc(manifest), site_key)


def trust(*keys: Ed25519PrivateKey) -> dict:
    return {key_id(k.public_key()): k.public_key() for k in keys}


# --- canonical bytes and manifest building ---------------------------------------------------

def test_canonical_bytes_ignore_key_order_and_signature(coord_key):
    m = manifest_doc()
    data = m.model_dump(mode="json")
    shuffled = dict(reversed(list(data.items())))
    shuffled["cohorts"] = [dict(reversed(list(c.items()))) for c in data["cohorts"]]
    other = StudyManifest.model_validate(shuffled)
    assert canonical_bytes(other) == canonical_bytes(m)
    assert canonical_bytes(sign(m, coord_key)) == canonical_bytes(m)
    text = canonical_bytes(m).decode("utf-8")
    assert " " not in text.replace("SCLC stage I-II", "") and json.loads(text)["study_id"] == "sclc"
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_build_manifest_fields():
    a, b = manifest_doc(), manifest_doc()
    assert a.manifest_id != b.manifest_id and a.nonce != b.nonce and len(a.nonce) == 32
    assert a.issued_at == NOW and a.expires_at - a.issued_at == dt.timedelta(days=7)
    assert a.expires_at.tzinfo is not None and a.signature is None
    cet = dt.timezone(dt.timedelta(hours=1))
    assert manifest_doc(now=NOW.astimezone(cet)).issued_at.utcoffset() == dt.timedelta(0)
    for bad, msg in [(dict(valid_for=dt.timedelta(0)), "valid_for"), (dict(now=NOW.replace(tzinfo=None)), "time zone"),
                     (dict(min_sites=3), "min_sites"), (dict(target_sites=["a", "a"]), "distinct"),
                     (dict(cohorts=[{"cohort_definition_id": 1, "name": "x", "sha256": "zz", "expression": {}}]),
                      "cohorts.0.sha256")]:
        with pytest.raises(BundleError, match=msg):
            manifest_doc(**bad)


def test_manifest_sha256_binds_the_signature(coord_key):
    m = manifest_doc()
    with pytest.raises(BundleError, match="unsigned"):
        manifest_sha256(m)
    s1, s2 = sign(m, coord_key), sign(m, Ed25519PrivateKey.generate())
    assert manifest_sha256(s1) == manifest_sha256(sign(m, coord_key))  # Ed25519 is deterministic
    assert manifest_sha256(s1) != manifest_sha256(s2)


# --- sign / verify ---------------------------------------------------------------------------

def test_round_trip_in_memory_and_on_disk(signed, coord_key, site_key, tmp_path):
    manifest, bundle = signed
    verify(manifest, trust(coord_key))
    verify(bundle, trust(site_key))
    mpath, bpath = write_manifest(manifest, tmp_path / "m.json"), write_bundle(bundle, tmp_path / "b.json")
    assert read_manifest(mpath) == manifest and read_bundle(bpath) == bundle
    verify(read_manifest(mpath), trust(coord_key))
    verify(read_bundle(bpath), trust(site_key))
    assert bpath.read_bytes() == render(bundle) and "Müller" in bpath.read_text("utf-8")
    assert stat.S_IMODE(bpath.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "m.json"]  # no temp files left


def test_unsigned_refused(signed, coord_key, site_key):
    with pytest.raises(BundleError, match="study manifest is unsigned"):
        verify(manifest_doc(), trust(coord_key))
    with pytest.raises(BundleError, match="result bundle is unsigned"):
        verify(signed[1].model_copy(update={"signature": None}), trust(site_key))


def test_unknown_signer_refused(signed, coord_key):
    manifest, bundle = signed
    with pytest.raises(BundleError, match="unknown key"):
        verify(bundle, trust(coord_key))


def test_coordinator_key_substituted_in_transit(coord_key):
    """A manifest re-signed by key A must not pass where only the coordinator's key B is pinned."""
    attacker = Ed25519PrivateKey.generate()
    forged = sign(manifest_doc(min_cell_count=1), attacker)
    with pytest.raises(BundleError, match="unknown key"):
        verify(forged, trust(coord_key))
    # ... nor when the attacker also copies B's key id into the signature block
    claimed = forged.model_copy(update={"signature": forged.signature.model_copy(
        update={"key_id": key_id(coord_key.public_key())})})
    with pytest.raises(BundleError, match="bad signature"):
        verify(claimed, trust(coord_key))


def test_altered_wrong_algorithm_and_schema_refused(signed, site_key, coord_key):
    manifest, bundle = signed
    altered = bundle.model_copy(update={"results_csv": bundle.results_csv.replace("42", "43")})
    with pytest.raises(BundleError, match="bad signature"):
        verify(altered, trust(site_key))
    rsa_sig = bundle.signature.model_copy(update={"algorithm": "rsa-pss"})
    with pytest.raises(BundleError, match="algorithm 'rsa-pss'"):
        verify(bundle.model_copy(update={"signature": rsa_sig}), trust(site_key))
    v2 = sign(manifest.model_copy(update={"schema_version": 2}), coord_key)
    with pytest.raises(BundleError, match="schema_version 2 is not supported"):
        verify(v2, trust(coord_key))


def test_non_canonical_base64_signature_refused(signed, site_key):
    _, bundle = signed
    value = bundle.signature.value
    assert value.endswith("==")
    # the last data character carries 4 unused bits: flipping them must not verify
    last = value[-3]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = alphabet[alphabet.index(last) ^ 1]
    sig = bundle.signature.model_copy(update={"value": value[:-3] + twin + "=="})
    with pytest.raises(BundleError, match="bad signature"):
        verify(bundle.model_copy(update={"signature": sig}), trust(site_key))


@pytest.mark.parametrize("supp, msg", [
    (dict(min_cell_count=3, site_floor=5), "below the site's own floor 5"),
    (dict(min_cell_count=1, site_floor=0), "< 2"),
    (dict(min_cell_count=0, site_floor=0), "< 2"),
    (dict(method="  "), "no method"),
])
def test_invalid_suppression_refused(coord_key, site_key, supp, msg):
    manifest = sign(manifest_doc(), coord_key)
    bundle = sign(bundle_doc(manifest, **supp), site_key)
    with pytest.raises(BundleError, match=msg):
        verify(bundle, trust(site_key))


def test_small_cells_only_with_flag(coord_key, site_key):
    bundle = sign(bundle_doc(sign(manifest_doc(), coord_key), min_cell_count=1, site_floor=1), site_key)
    verify(bundle, trust(site_key), allow_small_cells=True)
    bad = sign(bundle_doc(sign(manifest_doc(), coord_key), min_cell_count=1, site_floor=5), site_key)
    with pytest.raises(BundleError, match="floor"):
        verify(bad, trust(site_key), allow_small_cells=True)


def test_missing_suppression_refused(signed, site_key, tmp_path):
    _, bundle = signed
    data = bundle.model_dump(mode="json")
    del data["suppression"]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(BundleError, match="suppression: Field required"):
        read_bundle(path)
    hollow = ResultBundle.model_construct(**{k: getattr(bundle, k) for k in ResultBundle.model_fields if k != "suppression"})
    with pytest.raises(BundleError, match="no suppression record"):
        verify(sign(hollow, site_key), trust(site_key))


# --- files -----------------------------------------------------------------------------------

def test_every_single_byte_change_fails(signed, site_key, tmp_path):
    _, bundle = signed
    good = write_bundle(bundle, tmp_path / "good.json").read_bytes()
    text = good.decode("utf-8")
    rng = random.Random(7)
    csv_start, sig_start = text.index('"results_csv"'), text.index('"value"')
    positions = set(rng.sample(range(len(good)), 170))
    positions |= set(range(csv_start, csv_start + 60, 3)) | set(range(sig_start, sig_start + 100, 5))
    positions |= {0, len(good) - 1}
    assert len(positions) >= 200
    path = tmp_path / "bad.json"
    for i in sorted(positions):
        for new in {good[i] ^ 0x01, good[i] ^ 0x20, 0x20 if good[i] != 0x20 else 0x09, 0x0D}:
            if new == good[i]:
                continue
            path.write_bytes(good[:i] + bytes([new]) + good[i + 1:])
            with pytest.raises((BundleError, ValueError)):
                verify(read_bundle(path), trust(site_key))


def test_reformatted_or_duplicated_keys_refused(signed, tmp_path):
    _, bundle = signed
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle.model_dump(mode="json"), sort_keys=True), encoding="utf-8")
    with pytest.raises(BundleError, match="byte-identical"):
        read_bundle(path)
    good = render(bundle).decode("utf-8")
    path.write_text(good.replace('"site": "site_a"', '"site": "site_b",\n  "site": "site_a"'), encoding="utf-8")
    with pytest.raises(BundleError, match="byte-identical"):
        read_bundle(path)


@pytest.mark.parametrize("content, msg", [
    (None, "cannot read result bundle"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"kind": "result_bundle",', "malformed JSON at line 1"),
    (b"[1, 2]", "found a JSON list"),
    (b'{"kind": "study_manifest"}', "found study manifest"),
    (b'{"kind": "result_bundle", "schema_version": 9}', "schema_version 9"),
    (b'{"kind": "result_bundle", "schema_version": 1}', "not a valid result bundle: site: Field required"),
])
def test_read_errors_are_one_line(tmp_path, content, msg):
    path = tmp_path / "x.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BundleError, match=msg) as err:
        read_bundle(path)
    assert "\n" not in str(err.value) and err.value.exit_code == ExitCode.BUNDLE
    assert isinstance(err.value, OptimaError) and isinstance(err.value, ValueError)


def test_read_manifest_refuses_a_bundle(signed, tmp_path):
    _, bundle = signed
    with pytest.raises(BundleError, match="not a study manifest"):
        read_manifest(write_bundle(bundle, tmp_path / "b.json"))


def test_verify_bundle_file(tmp_path, coord_key):
    keys = tmp_path / "keys"
    trust_dir = tmp_path / "trust"
    priv_a, pub_a = generate_keypair(keys, "site_a")
    priv_b, pub_b = generate_keypair(keys, "site_b")
    trust_dir.mkdir()
    for pub in (pub_a, pub_b):
        (trust_dir / pub.name).write_bytes(pub.read_bytes())
    manifest = sign_manifest(manifest_doc(), coord_key)
    path = write_bundle(sign(bundle_doc(manifest), load_private_key(priv_a)), tmp_path / "a.json")
    assert verify_bundle_file(path, trust_dir, manifest=manifest).site == "site_a"
    impostor = write_bundle(sign(bundle_doc(manifest), load_private_key(priv_b)), tmp_path / "b.json")
    with pytest.raises(BundleError, match="claims site 'site_a' but is signed by key 'site_b'"):
        verify_bundle_file(impostor, trust_dir)
    other = sign_manifest(manifest_doc(), coord_key)
    with pytest.raises(BundleError, match=f"answers manifest {manifest.manifest_id}, not {other.manifest_id}"):
        verify_bundle_file(path, trust_dir, manifest=other)
    with pytest.raises(BundleError, match="does not match the signed manifest"):
        verify_bundle_file(path, trust_dir, manifest=sign_manifest(manifest, Ed25519PrivateKey.generate()))
    strict = sign_manifest(manifest_doc(min_cell_count=10), coord_key)
    low = write_bundle(sign(bundle_doc(strict), load_private_key(priv_a)), tmp_path / "low.json")
    with pytest.raises(BundleError, match="below the manifest's 10"):
        verify_bundle_file(low, trust_dir, manifest=strict)
    outsider = sign_manifest(manifest_doc(target_sites=["site_b"], min_sites=1), coord_key)
    stray = write_bundle(sign(bundle_doc(outsider), load_private_key(priv_a)), tmp_path / "stray.json")
    with pytest.raises(BundleError, match="not a target"):
        verify_bundle_file(stray, trust_dir, manifest=outsider)


# --- keys ------------------------------------------------------------------------------------

def test_generate_keypair_modes_and_overwrite(tmp_path):
    priv, pub = generate_keypair(tmp_path, "coordinator")
    assert (priv.name, pub.name) == ("coordinator.key", "coordinator.pub")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600 and stat.S_IMODE(pub.stat().st_mode) == 0o644
    key = load_private_key(priv)
    assert key_id(load_public_key(pub)) == key_id(key.public_key())
    before = priv.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        generate_keypair(tmp_path, "coordinator")
    assert priv.read_bytes() == before
    generate_keypair(tmp_path, "coordinator", force=True)
    assert priv.read_bytes() != before and stat.S_IMODE(priv.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="invalid key name"):
        generate_keypair(tmp_path, "../evil")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coordinator.key", "coordinator.pub"]


def test_key_loading_errors(tmp_path):
    priv, pub = generate_keypair(tmp_path, "k")
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "rsa.key").write_bytes(rsa_pem)
    (tmp_path / "enc.key").write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    (tmp_path / "junk.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    cases = [(load_private_key, tmp_path / "missing.key", "not found"),
             (load_private_key, pub, "holds a public key"),
             (load_private_key, tmp_path / "rsa.key", "holds a RSA key; only Ed25519"),
             (load_private_key, tmp_path / "enc.key", "encrypted private keys are not supported"),
             (load_private_key, tmp_path / "junk.pem", "holds a public key"),
             (load_public_key, priv, "PRIVATE key"),
             (load_public_key, tmp_path / "junk.pem", "not a PEM public key"),
             (load_public_key, tmp_path, "is a directory")]
    for fn, path, msg in cases:
        with pytest.raises(ConfigError, match=msg) as err:
            fn(path)
        assert "\n" not in str(err.value)


def test_load_trust_dir(tmp_path):
    keys, trust_dir = tmp_path / "keys", tmp_path / "trust"
    trust_dir.mkdir()
    with pytest.raises(ConfigError, match="no public keys"):
        load_trust_dir(trust_dir)
    with pytest.raises(ConfigError, match="not found"):
        load_trust_dir(tmp_path / "nowhere")
    _, pub_a = generate_keypair(keys, "site_a")
    _, pub_b = generate_keypair(keys, "site_b")
    (trust_dir / "site_a.pub").write_bytes(pub_a.read_bytes())
    (trust_dir / "site_b.pem").write_bytes(pub_b.read_bytes())
    (trust_dir / "README.txt").write_text("ignored")
    trusted = load_trust_dir(trust_dir)
    assert sorted(name for name, _ in trusted.values()) == ["site_a", "site_b"]
    assert all(key_id(k) == kid for kid, (_, k) in trusted.items())
    (trust_dir / "site_c.pub").write_text("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match="site_c.pub is not a PEM public key"):
        load_trust_dir(trust_dir)
    (trust_dir / "site_c.pub").write_bytes(pub_a.read_bytes())
    with pytest.raises(ConfigError, match="same public key"):
        load_trust_dir(trust_dir)
    (trust_dir / "site_c.pub").write_bytes((keys / "site_a.key").read_bytes())
    with pytest.raises(ConfigError, match="site_c.pub holds a PRIVATE key"):
        load_trust_dir(trust_dir)


def test_gzip_compressed_bundle_reads_the_same(tmp_path):
    """The coordinator keeps gzip-compressed copies of bundles; reading them gives the same signed document."""
    import gzip

    from optima_common.bundle import read_bundle, write_bundle

    key = generate_keypair(tmp_path / "k", "site_a")[0]
    bundle = sign(bundle_doc(sign_manifest(manifest_doc(), Ed25519PrivateKey.generate())), load_private_key(key))
    plain = write_bundle(bundle, tmp_path / "plain.bundle")
    packed = tmp_path / "packed.bundle"
    packed.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
    assert packed.stat().st_size < plain.stat().st_size
    assert read_bundle(packed) == read_bundle(plain) == bundle
    (tmp_path / "broken.bundle").write_bytes(gzip.compress(plain.read_bytes())[:40])
    with pytest.raises(BundleError, match="damaged gzip"):
        read_bundle(tmp_path / "broken.bundle")


def test_a_large_results_table_is_written_as_json_writes_it(site_key, tmp_path):
    """A results_csv of SPLICE_MIN characters or more is escaped once and spliced into both JSON
    forms; each form equals the standard library's json.dumps of the whole document, and the
    bundle still signs, writes, reads and verifies (and a one-byte change still fails)."""
    from optima_common import bundle as B

    rng = random.Random(3)
    alphabet = ['"', "\\", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "é", "²", "≥", "😀", "\u2028", "a", ",", " ",
                '"optima-splice-0"', "optima-splice-"]
    text = "".join(rng.choice(alphabet) for _ in range(B.SPLICE_MIN // 3)) + "x" * B.SPLICE_MIN
    doc = bundle_doc(sign_manifest(manifest_doc(), Ed25519PrivateKey.generate())).model_copy(
        update={"results_csv": text})
    data = doc.model_dump(mode="json")
    plain = dict(sort_keys=True, ensure_ascii=False, allow_nan=False)
    assert B.render(doc) == json.dumps(data, indent=2, **plain).encode("utf-8") + b"\n"
    data.pop("signature")
    assert B.canonical_bytes(doc) == json.dumps(data, separators=(",", ":"), **plain).encode("utf-8")
    signed_doc = sign(doc, site_key)
    path = B.write_bundle(signed_doc, tmp_path / "big.bundle")
    back = B.read_bundle(path)
    assert back == signed_doc
    verify(back, trust(site_key))
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"xxxx") + 1] = ord("y")  # inside the spliced text
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="bad signature"):
        verify(B.read_bundle(path), trust(site_key))
    with pytest.raises(BundleError, match="cannot be serialised canonically"):  # a lone surrogate, as before
        B.render(doc.model_copy(update={"results_csv": text + "\ud800"}))
