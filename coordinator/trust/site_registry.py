"""Onboarding and offboarding sites: pinned keys in the trust folder plus ``sites.json`` beside them.

``coordinator sites add NAME --key site.pub --min-cell-count N`` pins the site's Ed25519
bundle-signing key as ``<trust>/<NAME>.pub`` and records, in ``<trust>/sites.json``, the
minimum cell count the site agreed to release with: a bundle from that site whose
suppression minimum is below it is refused wherever bundles are verified
(:func:`coordinator.trust.manifest.verify_bundle_file`, so Flower collection, ``coordinator ingest``
and ``coordinator verify`` alike). An optional SuperNode key (the site's Flower node
authentication key, OpenSSH ECDSA) is kept in ``<trust>/supernodes/`` for ``flwr supernode
register``.

``coordinator sites remove NAME`` unpins the key (new bundles from the site are refused) but
archives it in ``<trust>/archive/``: a bundle the site signed *before* it was removed still
verifies (``coordinator verify``), so old results stay checkable. The trust loader reads only
``*.pub``/``*.pem`` directly in the folder, so ``sites.json`` and the sub-folders never count
as pinned keys.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, Field, ValidationError

from optima_common.bundle import (
    ABSOLUTE_MIN_CELL,
    BundleError,
    ResultBundle,
    key_id,
    load_public_key,
)
from optima_common.errors import CoordinatorError

REGISTRY = "sites.json"
ARCHIVE = "archive"
SUPERNODES = "supernodes"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SiteEntry(BaseModel):
    name: str
    key_id: str
    min_cell_count: int = Field(ge=ABSOLUTE_MIN_CELL)
    supernode_key: str | None = None  # file name under supernodes/
    added_at: dt.datetime


class ArchivedKey(BaseModel):
    site: str
    key_id: str
    file: str  # under archive/
    archived_at: dt.datetime


class Registry(BaseModel):
    sites: dict[str, SiteEntry] = Field(default_factory=dict)
    archived: list[ArchivedKey] = Field(default_factory=list)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_registry(trust_dir: str | Path) -> Registry:
    path = Path(trust_dir) / REGISTRY
    if not path.is_file():
        return Registry()
    try:
        return Registry.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CoordinatorError(f"{path}: not a site registry ({'.'.join(map(str, first['loc']))}: {first['msg']}); "
                               "restore it from a backup or remove it and add the sites again") from None
    except OSError as exc:
        raise CoordinatorError(f"cannot read {path}: {exc.strerror or exc}") from None


def _save(trust_dir: Path, reg: Registry) -> None:
    _write_atomic(trust_dir / REGISTRY, (reg.model_dump_json(indent=2) + "\n").encode("utf-8"))


def _check_supernode_key(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CoordinatorError(f"cannot read SuperNode key {path}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        raise CoordinatorError(f"{path} holds a PRIVATE key; give the SuperNode's public key (.pub)")
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CoordinatorError(f"{path} is not an OpenSSH public key; make one with "
                               "`coordinator certs` or `ssh-keygen -t ecdsa -b 384`") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CoordinatorError(f"{path}: Flower SuperNode keys are ECDSA; this is {type(key).__name__}")
    return data


def add_site(trust_dir: str | Path, name: str, key_path: str | Path, min_cell_count: int, *,
             supernode_key: str | Path | None = None, replace: bool = False) -> SiteEntry:
    """Pin a site's key and record its expected minimum cell count (see the module doc)."""
    trust = Path(trust_dir)
    if not _NAME.match(name):
        raise CoordinatorError(f"invalid site name {name!r}: use letters, digits, '_', '.', '-'")
    if min_cell_count < ABSOLUTE_MIN_CELL:
        raise CoordinatorError(f"--min-cell-count {min_cell_count} is below {ABSOLUTE_MIN_CELL}: such a site could "
                               "release single-person cells")
    key = load_public_key(key_path)  # one-line ConfigError for a missing/private/non-Ed25519 file
    kid = key_id(key)
    node_data = _check_supernode_key(Path(supernode_key)) if supernode_key else None
    trust.mkdir(parents=True, exist_ok=True)
    reg = load_registry(trust)
    pinned = trust / f"{name}.pub"
    for other in trust.glob("*.pub"):
        if other != pinned and key_id(load_public_key(other)) == kid:
            raise CoordinatorError(f"this key is already pinned for site {other.stem!r}; each site needs its own key")
    now = dt.datetime.now(dt.UTC)
    if pinned.exists() and key_id(load_public_key(pinned)) != kid:
        if not replace:
            raise CoordinatorError(f"site {name!r} is pinned with another key ({pinned}); pass --replace to rotate "
                                   "it (the old key is archived so its bundles stay verifiable)")
        _archive(trust, reg, name, pinned, now)
    data = Path(key_path).read_bytes()
    entry = SiteEntry(name=name, key_id=kid, min_cell_count=min_cell_count, added_at=now,
                      supernode_key=f"{name}.pub" if node_data is not None else
                      (reg.sites[name].supernode_key if name in reg.sites else None))
    if node_data is not None:
        _write_atomic(trust / SUPERNODES / f"{name}.pub", node_data)
    _write_atomic(pinned, data)
    reg.sites[name] = entry
    _save(trust, reg)
    return entry


def _archive(trust: Path, reg: Registry, name: str, pinned: Path, when: dt.datetime) -> ArchivedKey:
    kid = key_id(load_public_key(pinned))
    target = trust / ARCHIVE / f"{name}.{kid[:16]}.pub"
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(target, pinned.read_bytes())
    pinned.unlink()
    entry = ArchivedKey(site=name, key_id=kid, file=target.name, archived_at=when)
    reg.archived.append(entry)
    return entry


def remove_site(trust_dir: str | Path, name: str) -> ArchivedKey:
    """Unpin a site's key, archiving it; the site's later bundles are refused, older ones verify."""
    trust = Path(trust_dir)
    pinned = trust / f"{name}.pub"
    if not pinned.is_file():
        raise CoordinatorError(f"site {name!r} has no pinned key in {trust}; `coordinator sites list --trust {trust}` "
                               "shows the sites")
    reg = load_registry(trust)
    entry = _archive(trust, reg, name, pinned, dt.datetime.now(dt.UTC))
    site = reg.sites.pop(name, None)
    if site is not None and site.supernode_key:
        node = trust / SUPERNODES / site.supernode_key
        if node.is_file():
            _write_atomic(trust / ARCHIVE / f"{name}.supernode.pub", node.read_bytes())
            node.unlink()
    _save(trust, reg)
    return entry


def list_sites(trust_dir: str | Path) -> tuple[list[dict], list[ArchivedKey]]:
    """Pinned sites (with their registry entry where there is one) and archived keys."""
    trust = Path(trust_dir)
    if not trust.is_dir():
        raise CoordinatorError(f"trust folder {trust} not found; add a site with `coordinator sites add`")
    reg = load_registry(trust)
    rows = []
    for path in sorted(trust.glob("*.pub")):
        e = reg.sites.get(path.stem)
        rows.append({"site": path.stem, "key_id": key_id(load_public_key(path)),
                     "min_cell_count": e.min_cell_count if e else None,
                     "supernode_key": e.supernode_key if e else None,
                     "added_at": e.added_at.isoformat() if e else None})
    return rows, reg.archived


# ---------- the verification path (coordinator.trust.manifest.verify_bundle_file) ----------
def archived_keys_for(trust_dir: str | Path, bundle: ResultBundle) -> dict:
    """``{key_id: (site, key)}`` of archived keys of the bundle's site that were pinned when it was made."""
    trust = Path(trust_dir)
    out = {}
    for a in load_registry(trust).archived:
        if a.site == bundle.site and bundle.created_at <= a.archived_at:
            path = trust / ARCHIVE / a.file
            if path.is_file():
                out[a.key_id] = (a.site, load_public_key(path))
    return out


def check_expected_min_cell(trust_dir: str | Path, bundle: ResultBundle) -> None:
    """Refuse a bundle released with a smaller minimum cell count than its site agreed to on onboarding."""
    entry = load_registry(trust_dir).sites.get(bundle.site)
    if entry is not None and bundle.suppression.min_cell_count < entry.min_cell_count:
        raise BundleError(f"bundle from site {bundle.site!r} used min cell count {bundle.suppression.min_cell_count}, "
                          f"below the {entry.min_cell_count} the site was onboarded with; refused")


def _json_default(o):
    return o.isoformat() if isinstance(o, dt.datetime) else str(o)


def registry_json(trust_dir: str | Path) -> str:
    rows, archived = list_sites(trust_dir)
    return json.dumps({"sites": rows, "archived": [a.model_dump(mode="json") for a in archived]}, indent=2,
                      default=_json_default)
