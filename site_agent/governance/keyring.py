"""Keys over time: rotate the site key, pin and revoke coordinator keys (``state_dir/keyring``).

Layout (existing config files need no change; the TOML's ``coordinator_keys`` stay pinned)::

    keyring/coordinator/<name>.<id12>.pub   coordinator keys pinned with `keys pin-coordinator`
    keyring/revoked.json                    key ids revoked with `keys revoke` (with time and reason)
    keyring/site/<key id>.pub               every public key the site has signed with
    keyring/site/history.json               when each site key was used (active_from, retired_at)

The pinned coordinator keys are the TOML's ``coordinator_keys`` plus ``keyring/coordinator``,
minus every revoked id (:meth:`SiteConfig.trusted_keys`). The policy refuses a manifest signed
by a revoked key with the check ``revoked`` (audited). Rotation keeps the old public key in
``keyring/site`` so bundles signed before the rotation stay verifiable with the key that signed
them (:meth:`Keyring.site_trust`); the coordinator must be given the new ``.pub`` to pin, and
keep the old one for old bundles. Every change is written to the audit log.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, ValidationError

from optima_common.errors import ConfigError
from optima_common.fileio import write_atomic
from optima_common.keys import key_id, load_private_key, load_public_key

KEYRING = "keyring"
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Revocation(_Model):
    key_id: str
    revoked_at: dt.datetime
    reason: str = ""


class SiteKeyUse(_Model):
    key_id: str
    active_from: dt.datetime | None = None
    retired_at: dt.datetime | None = None


class _Revoked(_Model):
    revoked: list[Revocation] = []


class _History(_Model):
    keys: list[SiteKeyUse] = []


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class Keyring:
    """The keyring folder of one ``state_dir``; reading a missing keyring gives empty sets."""

    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir) / KEYRING
        self.coordinator_dir = self.root / "coordinator"
        self.site_dir = self.root / "site"
        self.revoked_file = self.root / "revoked.json"
        self.history_file = self.site_dir / "history.json"

    # --- reading ------------------------------------------------------------------------

    def _read_model(self, path: Path, model: type[_Model]) -> _Model:
        try:
            return model.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return model()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValidationError:
            raise ConfigError(f"{path} is damaged (not a valid keyring file)",
                              hint="restore it from a backup; the audit log lists every key change") from None

    def revocations(self) -> list[Revocation]:
        return list(self._read_model(self.revoked_file, _Revoked).revoked)

    def revoked_ids(self) -> set[str]:
        return {r.key_id for r in self.revocations()}

    def pinned_coordinator_keys(self) -> dict[str, tuple[str, Ed25519PublicKey]]:
        """Coordinator keys pinned through the keyring, ``{key_id: (name, key)}`` (revoked ones included)."""
        out: dict[str, tuple[str, Ed25519PublicKey]] = {}
        if self.coordinator_dir.is_dir():
            for path in sorted(self.coordinator_dir.glob("*.pub")):
                pub = load_public_key(path)
                out[key_id(pub)] = (path.stem.rsplit(".", 1)[0], pub)
        return out

    def site_history(self) -> list[SiteKeyUse]:
        return list(self._read_model(self.history_file, _History).keys)

    def site_trust(self) -> dict[str, tuple[str, Ed25519PublicKey]]:
        """Every public key the site has signed with (archived at rotation): for verifying old bundles."""
        out: dict[str, tuple[str, Ed25519PublicKey]] = {}
        if self.site_dir.is_dir():
            for path in sorted(self.site_dir.glob("*.pub")):
                pub = load_public_key(path)
                out[key_id(pub)] = (path.stem[:12], pub)
        return out

    # --- changing -----------------------------------------------------------------------

    def _write_model(self, path: Path, doc: _Model) -> None:
        try:
            write_atomic(path, (json.dumps(doc.model_dump(mode="json"), indent=2) + "\n").encode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None

    def archive_site_key(self, public_key: Ed25519PublicKey, *, active_from: dt.datetime | None = None,
                         retired_at: dt.datetime | None = None) -> Path:
        """Keep ``public_key`` in ``keyring/site`` and note when it was in use."""
        kid = key_id(public_key)
        path = self.site_dir / f"{kid}.pub"
        if not path.exists():
            write_atomic(path, _pem(public_key))
        history = self.site_history()
        entry = next((e for e in history if e.key_id == kid), None)
        if entry is None:
            entry = SiteKeyUse(key_id=kid)
            history.append(entry)
        entry.active_from = entry.active_from or active_from
        entry.retired_at = retired_at or entry.retired_at
        self._write_model(self.history_file, _History(keys=history))
        return path

    def pin_coordinator(self, path: str | Path) -> tuple[str, Path | None]:
        """Copy a coordinator public key into the keyring; ``(key id, stored path or None if already there)``."""
        path = Path(path)
        pub = load_public_key(path)
        kid = key_id(pub)
        if kid in self.revoked_ids():
            raise ConfigError(f"key {kid[:16]}… in {path} was revoked at this site; a revoked key cannot be "
                              "pinned again", hint="ask the coordinator for a new key")
        if kid in self.pinned_coordinator_keys():
            return kid, None
        name = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:40] or "coordinator"
        stored = self.coordinator_dir / f"{name}.{kid[:12]}.pub"
        try:
            write_atomic(stored, _pem(pub))
        except OSError as exc:
            raise ConfigError(f"cannot write {stored}: {exc.strerror or exc}") from None
        return kid, stored

    def revoke(self, kid: str, reason: str = "") -> Revocation:
        """Add ``kid`` (a full key id) to ``revoked.json``; revoking twice keeps the first entry."""
        existing = {r.key_id: r for r in self.revocations()}
        if kid in existing:
            return existing[kid]
        rev = Revocation(key_id=kid, revoked_at=_now(), reason=reason[:200])
        self._write_model(self.revoked_file, _Revoked(revoked=[*existing.values(), rev]))
        return rev


def resolve_key_id(text: str, known: dict[str, object]) -> str:
    """A full key id, or a prefix (8+ hex characters) of exactly one known key id."""
    text = text.strip().lower()
    if not _HEX.match(text):
        raise ConfigError(f"{text[:70]!r} is not a key id (8 to 64 lower-case hex characters)",
                          hint="`site-agent keys list` shows the key ids")
    if len(text) == 64:
        return text
    hits = [k for k in known if k.startswith(text)]
    if len(hits) != 1:
        raise ConfigError(f"key id prefix {text!r} matches {len(hits)} known keys; give more characters "
                          "or the full 64-character id")
    return hits[0]


def rotate_site_key(site_key: Path, keyring: Keyring) -> tuple[str, str, Path]:
    """Replace the site's key pair at ``site_key`` (and its ``.pub``); ``(old id, new id, new .pub path)``.

    The old public key is archived in the keyring first, so a crash never loses it.
    """
    old = load_private_key(site_key).public_key()
    now = _now()
    keyring.archive_site_key(old, retired_at=now)
    new = Ed25519PrivateKey.generate()
    keyring.archive_site_key(new.public_key(), active_from=now)
    public_path = site_key.with_suffix(".pub")
    try:
        write_atomic(site_key, new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), mode=0o600)
        write_atomic(public_path, _pem(new.public_key()))
    except OSError as exc:
        raise ConfigError(f"cannot write the new site key {site_key}: {exc.strerror or exc}") from None
    return key_id(old), key_id(new.public_key()), public_path
