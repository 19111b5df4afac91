"""The contract between coordinator and sites: signed study manifests and signed result bundles.

Shared by both sides (the coordinator imports only this module and ``results``). Both
documents are JSON with a ``signature`` block over their *canonical* bytes (sorted keys,
no whitespace, UTF-8): Ed25519 from ``cryptography``, no home-made primitives. A key is
identified by the sha256 fingerprint of its raw public bytes.

Canonical bytes of a document: ``json.dumps(doc.model_dump(mode="json", exclude={"signature"}),
sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` encoded as
UTF-8. The signature covers them, so key order in the input never matters.

A bundle binds to the exact manifest it answers through ``manifest_sha256``: the sha256 of the
manifest's canonical JSON *including* its signature block (see :func:`manifest_sha256`), so a
re-signed or re-issued manifest, even with equal content, is a different manifest.

On disk a document is one self-contained UTF-8 file, its full JSON pretty-printed with sorted
keys (:func:`render`). Reading refuses a file that is not byte for byte that rendering, so any
edit after writing, even one JSON would call insignificant (whitespace, escapes, duplicate
keys), fails before the signature is even looked at. Key files: :mod:`optima_common.keys`, whose
loaders are re-exported here for the coordinator.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from optima_common import protocol
from optima_common.errors import BundleError
from optima_common.fileio import write_atomic
from optima_common.keys import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    load_trust_dir,
)

__all__ = [
    "ALGORITHM",
    "REPLY_STATUSES",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "BundleError",
    "ManifestCohort",
    "Provenance",
    "ResultBundle",
    "Signature",
    "StudyManifest",
    "SuppressionRecord",
    "canonical_bytes",
    "check_suppression",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trust_dir",
    "manifest_sha256",
    "read_bundle",
    "read_manifest",
    "render",
    "sign",
    "verify",
    "write_bundle",
    "write_manifest",
]

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
ALGORITHM = "ed25519"
ABSOLUTE_MIN_CELL = 2  # below this a released count can be a single person
# what a site answers to a manifest over Flower (``content["reply"]["status"]``)
REPLY_STATUSES = protocol.REPLY_STATUSES


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Signature(_Doc):
    algorithm: str = "ed25519"
    key_id: str = Field(pattern=r"^[0-9a-f]{64}$")  # sha256 of the raw public key
    value: str  # base64 of the 64-byte signature


class ManifestCohort(_Doc):
    cohort_definition_id: int
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    expression: dict  # the ATLAS JSON itself, so a site runs exactly what it approved by hash


class StudyManifest(_Doc):
    """What the coordinator asks a site to run (signed by the coordinator)."""

    schema_version: int = SCHEMA_VERSION
    kind: str = "study_manifest"
    study_id: str
    study_version: str
    manifest_id: str  # unique per send: sites refuse a manifest id they have seen (replay)
    nonce: str = Field(min_length=16)
    issued_at: dt.datetime
    expires_at: dt.datetime
    analyses: tuple[str, ...]  # e.g. ("cohort_counts", "diagnostics", "sclc_study")
    parameters: dict = Field(default_factory=dict)
    cohorts: tuple[ManifestCohort, ...]
    min_cell_count: int = Field(5, ge=0)
    target_sites: tuple[str, ...]
    min_sites: int = Field(1, ge=1)
    signature: Signature | None = None


class SuppressionRecord(_Doc):
    """How the released tables were protected (a bundle without it is refused)."""

    min_cell_count: int = Field(ge=0)
    site_floor: int = Field(ge=0)
    method: str  # e.g. "optima-federated suppress + disclosure v1"


class Provenance(_Doc):
    cdm_name: str
    cdm_release_date: str | None = None
    vocabulary_version: str | None = None
    package_version: str


class ResultBundle(_Doc):
    """What a site releases for one manifest (signed by the site)."""

    schema_version: int = SCHEMA_VERSION
    kind: str = "result_bundle"
    site: str
    manifest_id: str
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # canonical bytes of the signed manifest
    created_at: dt.datetime
    provenance: Provenance
    suppression: SuppressionRecord
    results_csv: str  # the summarised_result CSV text, already suppressed
    signature: Signature | None = None


Doc = StudyManifest | ResultBundle
D = TypeVar("D", StudyManifest, ResultBundle)
_KINDS: dict[type[BaseModel], str] = {StudyManifest: "study_manifest", ResultBundle: "result_bundle"}
_LABEL = {"study_manifest": "study manifest", "result_bundle": "result bundle"}


#: a string field this long (a bundle's ``results_csv``, tens of MB) is escaped once and spliced into
#: each JSON form of its document (the file's indented one, the signature's compact one)
SPLICE_MIN = 1 << 20


@functools.lru_cache(maxsize=1)
def _escaped(text: str) -> str:
    """``text`` as a JSON string literal (json's own escaping); the last one is kept, since reading
    a bundle writes its JSON twice (the file check, then the signature check)."""
    return json.dumps(text, ensure_ascii=False)


def _json_bytes(obj: object, **kw: object) -> bytes:
    """``json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, **kw)`` as UTF-8.

    A document's ``results_csv`` of :data:`SPLICE_MIN` characters or more is dumped as a random
    token and its escaped text put in the token's place: the same characters, since json
    escapes a string the same way wherever it stands (``tests/test_bundle.py`` compares)."""
    try:
        big = obj.get("results_csv") if isinstance(obj, dict) else None
        if isinstance(big, str) and len(big) >= SPLICE_MIN:
            token = json.dumps(f"optima-splice-{secrets.token_hex(16)}")
            small = json.dumps({**obj, "results_csv": json.loads(token)}, sort_keys=True, ensure_ascii=False,
                               allow_nan=False, **kw)
            if small.count(token) == 1:
                head, tail = small.split(token)
                return (head + _escaped(big) + tail).encode("utf-8")
        return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, **kw).encode("utf-8")
    except (ValueError, TypeError) as exc:  # NaN/inf, lone surrogates, odd objects
        raise BundleError(f"document cannot be serialised canonically: {exc}") from None


def canonical_bytes(doc: Doc) -> bytes:
    """The bytes a signature covers: compact sorted JSON of everything but ``signature``."""
    return _json_bytes(doc.model_dump(mode="json", exclude={"signature"}), separators=(",", ":"))


def manifest_sha256(manifest: StudyManifest) -> str:
    """sha256 hex of the *signed* manifest's canonical JSON, signature block included.

    Including the signature binds a bundle to one exact signed manifest; an unsigned
    manifest has no identity yet and is refused.
    """
    if manifest.signature is None:
        raise BundleError("manifest is unsigned; a bundle can only bind to a signed manifest")
    return hashlib.sha256(_json_bytes(manifest.model_dump(mode="json"), separators=(",", ":"))).hexdigest()


def sign(doc: D, private_key: Ed25519PrivateKey) -> D:
    """A copy of ``doc`` carrying an Ed25519 signature over its canonical bytes (any old one replaced)."""
    value = base64.b64encode(private_key.sign(canonical_bytes(doc))).decode("ascii")
    signature = Signature(algorithm=ALGORITHM, key_id=key_id(private_key.public_key()), value=value)
    return doc.model_copy(update={"signature": signature})


def check_suppression(bundle: ResultBundle, *, allow_small_cells: bool = False) -> None:
    """Refuse a bundle whose suppression record is missing or weaker than the rules allow."""
    rec = getattr(bundle, "suppression", None)
    where = f"result bundle from site {bundle.site!r}"
    if not isinstance(rec, SuppressionRecord):
        raise BundleError(f"{where} has no suppression record; refused")
    if not rec.method.strip():
        raise BundleError(f"{where}: suppression record names no method; refused")
    if rec.min_cell_count < rec.site_floor:
        raise BundleError(f"{where}: min_cell_count {rec.min_cell_count} is below the site's own floor "
                          f"{rec.site_floor}; refused")
    if rec.min_cell_count < ABSOLUTE_MIN_CELL and not allow_small_cells:
        raise BundleError(f"{where}: min_cell_count {rec.min_cell_count} < {ABSOLUTE_MIN_CELL} can release "
                          "single-person cells; refused", hint="allow_small_cells overrides")


def verify(doc: Doc, trusted: Mapping[str, Ed25519PublicKey | tuple[str, Ed25519PublicKey]], *,
           allow_small_cells: bool = False) -> None:
    """Raise :class:`BundleError` unless ``doc`` is signed by a trusted key and safe to use.

    ``trusted`` maps key id to public key, or to ``(name, public_key)`` as
    :func:`load_trust_dir` returns. Checked in order: schema version, kind, signature present,
    algorithm, signer known, signature valid; for a result bundle also its suppression record.
    """
    kind = _KINDS.get(type(doc))
    if kind is None:
        raise BundleError(f"not a study manifest or result bundle: {type(doc).__name__}")
    label = _LABEL[kind]
    if doc.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(f"{label} schema_version {doc.schema_version} is not supported "
                          f"(supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})", hint="upgrade optima-federated")
    if doc.kind != kind:
        raise BundleError(f"{label} has kind {doc.kind!r}, expected {kind!r}")
    sig = doc.signature
    if sig is None:
        raise BundleError(f"{label} is unsigned; refused")
    if sig.algorithm != ALGORITHM:
        raise BundleError(f"{label} signed with algorithm {sig.algorithm!r}; only {ALGORITHM!r} is accepted")
    entry = trusted.get(sig.key_id)
    if entry is None:
        raise BundleError(f"{label} signed by unknown key {sig.key_id}; refused",
                          hint="not among the trusted public keys")
    name, public_key = entry if isinstance(entry, tuple) else (sig.key_id[:12], entry)
    try:
        raw = base64.b64decode(sig.value, validate=True)
        if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != sig.value:
            raise ValueError("not canonical base64 of 64 bytes")
        public_key.verify(raw, canonical_bytes(doc))
    except (ValueError, binascii.Error, InvalidSignature):
        raise BundleError(f"bad signature on {label} (signer {name!r}): altered after signing, "
                          "or not signed by that key") from None
    if isinstance(doc, ResultBundle):
        check_suppression(doc, allow_small_cells=allow_small_cells)


def render(doc: Doc) -> bytes:
    """The file form of a document: full JSON, 2-space indent, sorted keys, UTF-8, final newline."""
    return _json_bytes(doc.model_dump(mode="json"), indent=2) + b"\n"


def _write_doc(doc: Doc, path: str | Path) -> Path:
    path = Path(path)
    try:
        write_atomic(path, render(doc), mode=0o644)
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _validation_line(exc: ValidationError) -> str:
    errs = exc.errors()
    def loc(e: dict) -> str:  # keys come from the file: escape anything non-printable
        text = ".".join(map(str, e["loc"])) or "(top)"
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

    parts = [f"{loc(e)}: {e['msg']}" for e in errs[:3]]
    return "; ".join(parts) + (f"; and {len(errs) - 3} more" if len(errs) > 3 else "")


GZIP_MAGIC = b"\x1f\x8b"
MAX_DOC_BYTES = 2 * 1024**3  # a compressed file never expands beyond this (no zip bomb)


def _gunzip(raw: bytes, path: Path, label: str) -> bytes:
    import gzip
    import io

    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
            out = fh.read(MAX_DOC_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise BundleError(f"{path}: damaged gzip-compressed {label} ({exc})") from None
    if len(out) > MAX_DOC_BYTES:
        raise BundleError(f"{path}: compressed {label} expands beyond {MAX_DOC_BYTES // 1024**3} GiB; refused")
    return out


def _read_doc(path: str | Path, model: type[D]) -> D:
    return _read_doc_raw(path, model)[0]


def _read_doc_raw(path: str | Path, model: type[D]) -> tuple[D, bytes]:
    """The document and its canonical bytes (the file's, gunzipped if it was compressed)."""
    path = Path(path)
    kind = _KINDS[model]
    label = _LABEL[kind]
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {label} {path}: {exc.strerror or exc}") from None
    if raw[:2] == GZIP_MAGIC:  # a gzip-compressed copy (the coordinator's bundles/ folder): same document
        raw = _gunzip(raw, path, label)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text (byte {exc.start}); not a {label}") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    found = data.get("kind") if isinstance(data, dict) else None
    if found != kind:
        what = _LABEL.get(found, f"kind {found!r}") if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise BundleError(f"{path} is not a {label} (found {what})")
    version = data.get("schema_version")
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(f"{path}: {label} schema_version {version!r} is not supported "
                          f"(supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})", hint="upgrade optima-federated")
    try:
        doc = model.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{path}: not a valid {label}: {_validation_line(exc)}") from None
    if render(doc) != raw:
        raise BundleError(f"{path}: {label} file is not byte-identical to its canonical form "
                          "(edited or reformatted after writing); refused")
    return doc, raw


def write_bundle(bundle: ResultBundle, path: str | Path) -> Path:
    """Write ``bundle`` as one self-contained JSON file, atomically (temp file + rename)."""
    return _write_doc(bundle, path)


def read_bundle(path: str | Path) -> ResultBundle:
    """Parse a result bundle file; one-line :class:`BundleError` if unreadable, malformed or not a bundle.

    Parsing is not trusting: call :func:`verify` next.
    """
    return _read_doc(path, ResultBundle)


def read_bundle_raw(path: str | Path) -> tuple[ResultBundle, bytes]:
    """:func:`read_bundle`, and the bundle's canonical bytes (``render(bundle)``, which the file holds)."""
    return _read_doc_raw(path, ResultBundle)


def write_manifest(manifest: StudyManifest, path: str | Path) -> Path:
    """Write ``manifest`` as one self-contained JSON file, atomically (temp file + rename)."""
    return _write_doc(manifest, path)


def read_manifest(path: str | Path) -> StudyManifest:
    """Parse a study manifest file (same rules as :func:`read_bundle`); call :func:`verify` next."""
    return _read_doc(path, StudyManifest)
