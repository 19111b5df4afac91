"""Coordinator side of the contract: build and sign study manifests, verify returned bundles.

Only :mod:`optima_common.bundle` is imported from the site agent (it re-exports the key-file
loaders). A manifest gets a fresh ``manifest_id`` (uuid4 hex) and ``nonce``
(``secrets.token_hex(16)``) each time it is built, so sites can refuse replays; its validity
window is ``[now, now + valid_for]`` in UTC.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from optima_common.bundle import (
    BundleError,
    ResultBundle,
    StudyManifest,
    load_trust_dir,
    manifest_sha256,
    read_bundle_raw,
    sign,
    verify,
)

if TYPE_CHECKING:  # pandas is imported only when a table is re-checked
    from optima_common.results import SummarisedResult

__all__ = ["Checked", "build_manifest", "sign_manifest", "verify_bundle_checked", "verify_bundle_file"]


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise BundleError(f"manifest time {value.isoformat()} has no time zone; give an aware datetime")
    return value.astimezone(dt.UTC)


def build_manifest(
    study_id: str,
    study_version: str,
    cohorts: Iterable[Mapping[str, Any]],
    analyses: Iterable[str],
    parameters: Mapping[str, Any] | None,
    min_cell_count: int,
    target_sites: Iterable[str],
    min_sites: int,
    valid_for: dt.timedelta,
    now: dt.datetime | None = None,
) -> StudyManifest:
    """An unsigned manifest; ``cohorts`` are dicts of cohort_definition_id, name, sha256, expression.

    Raises :class:`BundleError` (one line) for an invalid field, a non-positive ``valid_for``,
    a naive ``now``, duplicate cohort ids or sites, or ``min_sites`` above the number of sites.
    """
    if valid_for <= dt.timedelta(0):
        raise BundleError(f"valid_for must be positive, got {valid_for}")
    issued = _utc(now) if now is not None else dt.datetime.now(dt.UTC)
    sites = tuple(target_sites)
    try:
        manifest = StudyManifest(
            study_id=study_id, study_version=study_version, manifest_id=uuid.uuid4().hex,
            nonce=secrets.token_hex(16), issued_at=issued, expires_at=issued + valid_for,
            analyses=tuple(analyses), parameters=dict(parameters or {}), cohorts=tuple(dict(c) for c in cohorts),  # type: ignore[arg-type]
            min_cell_count=min_cell_count, target_sites=sites, min_sites=min_sites,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(map(str, first["loc"])) or "(top)"
        raise BundleError(f"invalid manifest field {loc}: {first['msg']}") from None
    ids = [c.cohort_definition_id for c in manifest.cohorts]
    if len(set(ids)) != len(ids):
        raise BundleError(f"duplicate cohort_definition_id in manifest: {sorted(ids)}")
    if len(set(sites)) != len(sites) or not sites:
        raise BundleError(f"target_sites must be non-empty and distinct, got {list(sites)}")
    if min_sites > len(sites):
        raise BundleError(f"min_sites {min_sites} exceeds the {len(sites)} target site(s)")
    return manifest


def sign_manifest(manifest: StudyManifest, private_key: Ed25519PrivateKey) -> StudyManifest:
    """The manifest signed with the coordinator's key (see :func:`optima_common.bundle.sign`)."""
    return sign(manifest, private_key)


def verify_bundle_file(
    path: str | Path,
    trust_dir: str | Path,
    *,
    manifest: StudyManifest | None = None,
    allow_small_cells: bool = False,
) -> ResultBundle:
    """Read, verify and return the result bundle at ``path``; :class:`BundleError` otherwise.

    The signer must be a key in ``trust_dir`` whose name (file stem) equals the bundle's
    ``site``, so one trusted site cannot release results in another's name. With
    ``manifest``, the bundle must also answer exactly that signed manifest, come from one of
    its target sites and use at least its ``min_cell_count``. A site onboarded with
    ``coordinator sites add`` must also meet its recorded minimum cell count; without
    ``manifest``, an archived key of an offboarded site verifies bundles made before removal.
    """
    return verify_bundle_checked(path, trust_dir, manifest=manifest, allow_small_cells=allow_small_cells).bundle


class Checked(NamedTuple):
    """A verified bundle, its signed bytes and their sha256, and its table as the disclosure re-check
    read it (None if this process had re-checked the same table before and did not read it again)."""

    bundle: ResultBundle
    raw: bytes
    sha256: str
    table: SummarisedResult | None


def verify_bundle_checked(path: str | Path, trust_dir: str | Path, *, manifest: StudyManifest | None = None,
                          allow_small_cells: bool = False) -> Checked:
    """:func:`verify_bundle_file` (every check the same), keeping what it computed on the way."""
    from coordinator.trust.site_registry import (
        archived_keys_for,
        check_expected_min_cell,
    )

    bundle, raw = read_bundle_raw(path)  # raw: the canonical bytes, checked equal to render(bundle)
    trusted = load_trust_dir(trust_dir)
    if manifest is None:  # a file check: keys of offboarded sites still verify what they signed before
        trusted = {**archived_keys_for(trust_dir, bundle), **trusted}
    verify(bundle, trusted, allow_small_cells=allow_small_cells)
    signer = trusted[bundle.signature.key_id][0]  # type: ignore[union-attr]  # verify() checked it
    if signer != bundle.site:
        raise BundleError(f"{path}: bundle claims site {bundle.site!r} but is signed by key {signer!r}; refused")
    check_expected_min_cell(trust_dir, bundle)  # the minimum the site was onboarded with (coordinator sites add)
    table = _recheck_tables(path, bundle)
    if manifest is not None:
        if bundle.manifest_id != manifest.manifest_id:
            raise BundleError(f"{path}: bundle answers manifest {bundle.manifest_id}, not {manifest.manifest_id}")
        if bundle.manifest_sha256 != manifest_sha256(manifest):
            raise BundleError(f"{path}: bundle's manifest_sha256 does not match the signed manifest "
                              f"{manifest.manifest_id} (altered or re-signed manifest); refused")
        if bundle.site not in manifest.target_sites:
            raise BundleError(f"{path}: site {bundle.site!r} is not a target of manifest {manifest.manifest_id}")
        if bundle.suppression.min_cell_count < manifest.min_cell_count:
            raise BundleError(f"{path}: bundle min_cell_count {bundle.suppression.min_cell_count} is below the "
                              f"manifest's {manifest.min_cell_count}; refused")
    return Checked(bundle, raw, hashlib.sha256(raw).hexdigest(), table)


def _recheck_tables(path: str | Path, bundle: ResultBundle) -> SummarisedResult | None:
    """The same audit the site ran before signing: no count 1..min-1, every withheld count stays
    unnarrowable under the declared relations, no estimate derived from a withheld count."""
    from optima_common.disclosure import audit_bundle_table
    from optima_common.errors import DisclosureError, ResultFormatError

    try:
        return audit_bundle_table(bundle.results_csv, bundle.suppression.min_cell_count, f"{path}")
    except (DisclosureError, ResultFormatError) as exc:
        raise BundleError(str(exc).splitlines()[0]) from None
