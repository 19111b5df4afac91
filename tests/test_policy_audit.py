"""Site trust model: config loading, the hash-chained audit log and the manifest policy."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import uuid
from pathlib import Path

import pytest

from optima_common.bundle import (
    ManifestCohort,
    StudyManifest,
    generate_keypair,
    load_private_key,
    read_manifest,
    sign,
    write_manifest,
)
from optima_common.errors import ConfigError
from site_agent.audit import MAX_LIST, AuditGuardError, AuditLog
from site_agent.config import SiteConfig, load_config
from site_agent.policy import (
    ManifestPolicy,
    NonceStore,
    PolicyRefusal,
    cohort_file_bytes,
)

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO / "cohort_definitions" / "catalog.json"
UTC = dt.UTC


def _catalog_cohorts() -> list[dict]:
    return json.loads(CATALOG.read_text())["cohorts"]


def cohort(name: str = "sclc") -> ManifestCohort:
    entry = next(c for c in _catalog_cohorts() if c["name"] == name)
    text = (CATALOG.parent / entry["path"]).read_text(encoding="utf-8")
    return ManifestCohort(cohort_definition_id=entry["cohort_definition_id"], name=name,
                          sha256=entry["sha256"], expression=json.loads(text))


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "keys"
    out = {}
    for name in ("coordinator", "site_a", "rogue"):
        out[name], out[name + "_pub"] = generate_keypair(folder, name)
    return out


def write_config(tmp_path: Path, keys: dict[str, Path], extra: str = "", approved: str | None = None) -> Path:
    approved = approved if approved is not None else f'catalogs = ["{CATALOG}"]'
    path = tmp_path / "site.toml"
    path.write_text(f"""
site = "site_a"
state_dir = "state"
site_key = "{keys['site_a']}"
coordinator_keys = ["{keys['coordinator_pub']}"]
allowed_analyses = ["cohort_counts", "diagnostics"]
max_manifest_age = "P7D"
{extra}

[cdm]
url = "duckdb:///site_a.duckdb"
cdm_schema = "main"

[approved_cohorts]
{approved}
""")
    return path


@pytest.fixture()
def config(tmp_path: Path, keys: dict[str, Path]) -> SiteConfig:
    return load_config(write_config(tmp_path, keys))


@pytest.fixture()
def policy(config: SiteConfig) -> ManifestPolicy:
    return ManifestPolicy.from_config(config)


def manifest(keys: dict[str, Path] | None, signer: str = "coordinator", **over) -> StudyManifest:
    """A fresh manifest for site_a; signed by ``signer`` unless ``keys`` is None."""
    now = dt.datetime.now(UTC)
    fields = dict(study_id="sclc-survival", study_version="1.0", manifest_id=str(uuid.uuid4()),
                  nonce=uuid.uuid4().hex, issued_at=now - dt.timedelta(minutes=5),
                  expires_at=now + dt.timedelta(days=1), analyses=("cohort_counts",),
                  cohorts=(cohort("sclc"), cohort("death")), min_cell_count=3, target_sites=("site_a", "site_b"))
    fields.update(over)
    m = StudyManifest(**fields)
    return sign(m, load_private_key(keys[signer])) if keys else m


def last_entry(policy: ManifestPolicy) -> dict:
    return list(policy.audit.entries())[-1]


# --- accepted ---------------------------------------------------------------------------

def test_accepted_manifest(policy: ManifestPolicy, keys):
    m = manifest(keys)
    d = policy.check(m)
    assert d.effective_min_cell_count == 5  # the site floor beats the manifest's 3
    assert [c.name for c in d.cohorts] == ["sclc", "death"]
    e = last_entry(policy)
    assert (e["event"], e["manifest_id"], e["study_id"]) == ("accepted", m.manifest_id, "sclc-survival")
    assert e["detail"]["effective_min_cell_count"] == 5 and e["detail"]["manifest_sha256"] == d.manifest_sha256
    assert policy.check(manifest(keys, min_cell_count=11)).effective_min_cell_count == 11
    assert policy.audit.verify()[0]


def test_cohort_file_bytes_reproduce_every_catalog_hash():
    for entry in _catalog_cohorts():
        expr = json.loads((CATALOG.parent / entry["path"]).read_text(encoding="utf-8"))
        assert hashlib.sha256(cohort_file_bytes(expr)).hexdigest() == entry["sha256"]


def test_manifest_file_with_sorted_keys_uses_the_approved_file(policy, keys, tmp_path, config):
    path = write_manifest(manifest(keys), tmp_path / "m.json")
    policy.check(read_manifest(path))  # key order lost, content equals the catalog file: accepted
    bare = load_config(write_config(tmp_path, keys, approved=f'sha256 = ["{cohort("sclc").sha256}", '
                                                                f'"{cohort("death").sha256}"]'))
    other = ManifestPolicy.from_config(bare.model_copy(update={"state_dir": tmp_path / "state2"}))
    with pytest.raises(PolicyRefusal) as exc:  # bare hash: nothing to compare a reordered expression with
        other.check(read_manifest(write_manifest(manifest(keys), tmp_path / "m2.json")))
    assert exc.value.check == "cohort_hash"


# --- refused ----------------------------------------------------------------------------

def _altered_cohort(keep_hash: bool) -> ManifestCohort:
    c = cohort("sclc")
    expr = json.loads(json.dumps(c.expression))
    expr["PrimaryCriteria"]["ObservationWindow"]["PriorDays"] = 12345
    sha = c.sha256 if keep_hash else hashlib.sha256(cohort_file_bytes(expr)).hexdigest()
    return ManifestCohort(cohort_definition_id=99, name="sclc", sha256=sha, expression=expr)


def _substituted(keys):  # rogue signature relabelled with the pinned coordinator key id
    good = manifest(keys)
    bad = sign(good, load_private_key(keys["rogue"]))
    return good.model_copy(update={"signature": bad.signature.model_copy(update={"key_id": good.signature.key_id})})


now = dt.datetime.now(UTC)
REFUSALS = {
    "unsigned": ("signature", lambda k: manifest(None)),
    "unpinned_key": ("signature", lambda k: manifest(k, signer="rogue")),
    "substituted_signature": ("signature", _substituted),
    "tampered_min_cell": ("signature", lambda k: manifest(k).model_copy(update={"min_cell_count": 1})),
    "tampered_targets": ("signature", lambda k: manifest(k, target_sites=("site_b",)).model_copy(
        update={"target_sites": ("site_a",)})),
    "expired": ("expired", lambda k: manifest(k, issued_at=now - dt.timedelta(days=2),
                                              expires_at=now - dt.timedelta(seconds=1))),
    "issued_in_future": ("future", lambda k: manifest(k, issued_at=now + dt.timedelta(hours=1))),
    "issued_too_long_ago": ("too_old", lambda k: manifest(k, issued_at=now - dt.timedelta(days=8))),
    "unknown_cohort_hash": ("cohort_not_approved", lambda k: manifest(k, cohorts=(_altered_cohort(False),))),
    "altered_expression_kept_hash": ("cohort_hash", lambda k: manifest(k, cohorts=(_altered_cohort(True),))),
    "no_cohorts": ("cohort_not_approved", lambda k: manifest(k, cohorts=())),
    "site_not_targeted": ("site", lambda k: manifest(k, target_sites=("site_b",))),
    "analysis_not_allowed": ("analysis", lambda k: manifest(k, analyses=("cohort_counts", "row_level_export"))),
    "schema_version": ("schema", lambda k: manifest(k, schema_version=2)),
    "malformed": ("malformed", lambda k: {"kind": "study_manifest", "manifest_id": "x"}),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_and_audited(policy: ManifestPolicy, keys, case):
    check, make = REFUSALS[case]
    m = make(keys)
    with pytest.raises(PolicyRefusal) as exc:
        policy.check(m)
    assert isinstance(exc.value, PermissionError) and exc.value.check == check
    assert "\n" not in str(exc.value)
    e = last_entry(policy)
    assert e["event"] == "refused" and e["detail"] == {"check": check, "reason": exc.value.reason}
    if isinstance(m, StudyManifest):
        assert e["manifest_id"] == m.manifest_id
    assert policy.audit.verify() == (True, None, "1 entries, chain intact")


def test_replay_refused_also_after_restart(config: SiteConfig, keys):
    m = manifest(keys)
    first = ManifestPolicy.from_config(config)
    first.check(m)
    with pytest.raises(PolicyRefusal, match="seen before") as exc:
        first.check(m)
    assert exc.value.check == "replay"
    restarted = ManifestPolicy.from_config(config)  # new objects, same state_dir
    with pytest.raises(PolicyRefusal) as exc:
        restarted.check(m)
    assert exc.value.check == "replay"
    with pytest.raises(PolicyRefusal) as exc:  # same nonce under a new id is a replay too
        restarted.check(manifest(keys, nonce=m.nonce))
    assert exc.value.check == "replay"
    events = [e["event"] for e in restarted.audit.entries()]
    assert events == ["accepted", "refused", "refused", "refused"]
    assert restarted.audit.verify()[0]


def test_forged_manifests_do_not_consume_ids(policy, keys):
    m = manifest(keys)
    with pytest.raises(PolicyRefusal):
        policy.check(m.model_copy(update={"signature": None}))
    assert not policy.nonces.seen(m.manifest_id, m.nonce)
    policy.check(m)


# --- audit log --------------------------------------------------------------------------

def _log_with(tmp_path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    for i in range(n):
        log.append("accepted" if i % 2 else "refused", manifest_id=f"m{i}", study_id="s", detail={"i": i})
    return log


def test_audit_chain_verifies(tmp_path):
    log = _log_with(tmp_path)
    assert log.verify() == (True, None, "5 entries, chain intact")
    assert [e["seq"] for e in log.entries()] == [1, 2, 3, 4, 5]
    assert log.head()[0] == 5
    e = log.append("released", manifest_id="m5", rows=12, tables=["counts", "attrition"])
    assert e["detail"] == {"rows": 12, "tables": ["counts", "attrition"]} and e["seq"] == 6


def test_audit_detects_edited_line(tmp_path):
    log = _log_with(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"i":2', '"i":7')
    log.path.write_text("".join(lines))
    ok, seq, msg = log.verify()
    assert (ok, seq) == (False, 3) and "edited" in msg


def test_audit_detects_rehashed_edit_at_next_entry(tmp_path):
    from site_agent.audit import canonical_json, entry_hash
    log = _log_with(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    forged = json.loads(lines[1])
    forged["event"] = "accepted" if forged["event"] == "refused" else "refused"
    forged["hash"] = entry_hash(forged)
    lines[1] = canonical_json(forged) + "\n"
    log.path.write_text("".join(lines))
    assert log.verify()[:2] == (False, 3)


def test_audit_detects_deleted_line(tmp_path):
    log = _log_with(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    del lines[1]
    log.path.write_text("".join(lines))
    ok, seq, msg = log.verify()
    assert (ok, seq) == (False, 2) and "deleted" in msg


def test_audit_refuses_to_extend_a_damaged_tail(tmp_path):
    log = _log_with(tmp_path)
    log.path.write_text(log.path.read_text().replace('"i":4', '"i":9'))
    with pytest.raises(Exception, match="damaged"):
        log.append("refused", manifest_id="m9")


CANARIES = [
    {"person_id": 918273645},
    {"subject_ids": ["918273645", "918273646"]},
    {"PatientId": 918273645},
    {"cohort_member_ids": [1, 2, 3]},
    {"person_source_value": "CANARY-918273645"},
    {"year_of_birth": 1950},
    {"cases": list(range(900_000_000, 900_000_000 + MAX_LIST + 1))},
    {"rows": [[918273645, "2020-01-01"]]},
    {"nested": {"person": 918273645}},
    {"blob": "918273645," * 100},
]


@pytest.mark.parametrize("detail", CANARIES, ids=[next(iter(d)) for d in CANARIES])
def test_audit_guard_refuses_person_level_canaries(tmp_path, detail):
    log = _log_with(tmp_path, 2)
    before = log.path.read_bytes()
    with pytest.raises(AuditGuardError):
        log.append("released", manifest_id="m", detail=detail)
    with pytest.raises(AuditGuardError):  # the same through keyword fields
        log.append("released", manifest_id="m", **detail)
    assert log.path.read_bytes() == before and b"918273645" not in before


def _append_many(path: str, worker: int) -> None:
    log = AuditLog(path)
    for i in range(20):
        log.append("reviewed", manifest_id=f"w{worker}-{i}")


def test_audit_concurrent_writers_keep_the_chain(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    assert AuditLog(path).verify() == (True, None, "80 entries, chain intact")


def test_nonce_store_survives_reopen(tmp_path):
    store = NonceStore(tmp_path / "n.sqlite3")
    assert store.claim("m1", "n" * 16) and not store.claim("m1", "x" * 16)
    assert NonceStore(tmp_path / "n.sqlite3").seen("other", "n" * 16)


# --- config -----------------------------------------------------------------------------

def test_config_loads_and_resolves(config: SiteConfig, tmp_path, keys):
    assert config.state_dir == (tmp_path / "state").resolve()
    assert config.max_manifest_age == dt.timedelta(days=7) and config.min_cell_count == 5
    assert len(config.trusted_keys()) == 1 and cohort("sclc").sha256 in config.approved_cohort_files()
    assert config.effective_min_cell_count(2) == 5 and config.effective_min_cell_count(20) == 20


@pytest.mark.parametrize("extra, field, words", [
    ("site = [", "", "malformed TOML"),
    ("colour = 'blue'", "colour", "unknown field"),
    ("min_cell_count = 1", "min_cell_count", "below 2"),
    ("clock_skew_seconds = -1", "clock_skew_seconds", "greater than or equal to 0"),
    ("review_mode = 'maybe'", "review_mode", "boolean"),
])
def test_config_errors_are_one_line(tmp_path, keys, extra, field, words):
    path = write_config(tmp_path, keys, extra)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and field in msg and words in msg


def test_config_low_floor_needs_testing_flag(tmp_path, keys):
    cfg = load_config(write_config(tmp_path, keys, "min_cell_count = 1\ntesting_allow_low_min_cell_count = true"))
    assert cfg.min_cell_count == 1


def test_config_missing_key_file(tmp_path, keys):
    keys = {**keys, "coordinator_pub": tmp_path / "nope.pub"}
    path = write_config(tmp_path, keys)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and "coordinator_keys[0]" in msg and "nope.pub" in msg


def test_config_missing_catalog(tmp_path, keys):
    path = write_config(tmp_path, keys, approved='catalogs = ["missing/catalog.json"]')
    with pytest.raises(ConfigError, match=r"approved_cohorts\.catalogs\[0\]"):
        load_config(path)
