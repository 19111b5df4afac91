"""Ed25519 key pairs as PEM files, and the folder of trusted public keys.

A key pair ``<name>`` is two files in one folder: ``<name>.key`` (PKCS#8 PEM, unencrypted,
mode 0600) and ``<name>.pub`` (SubjectPublicKeyInfo PEM). A *trust folder* holds only public
keys (``*.pub`` or ``*.pem``); each key is known by its file name without suffix (by
convention the site name or ``coordinator``) and by its key id, the sha256 hex of its raw
32 public bytes. Every problem is a one-line :class:`ConfigError` naming the file.

The coordinator reaches these functions through :mod:`optima_common.bundle`, which re-exports
them (coordinator code imports only ``optima_common.bundle`` and ``optima_common.results``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from optima_common.errors import ConfigError
from optima_common.fileio import write_atomic

log = logging.getLogger(__name__)

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
TRUST_SUFFIXES = (".pub", ".pem")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's fingerprint: sha256 hex of its raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_keypair(directory: str | Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Create ``<name>.key`` (0600) and ``<name>.pub`` in ``directory``; return both paths.

    Refuses to overwrite an existing key file unless ``force`` (a replaced key cannot be
    recovered, and every party that pinned the old public key must be told).
    """
    if not _NAME.match(name):
        raise ConfigError(f"invalid key name {name!r}", hint="letters, digits, '_', '.', '-'; no path separators")
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create key folder {folder}: {exc.strerror or exc}") from None
    private_path, public_path = folder / f"{name}{PRIVATE_SUFFIX}", folder / f"{name}{PUBLIC_SUFFIX}"
    existing = [p for p in (private_path, public_path) if p.exists()]
    if existing and not force:
        raise ConfigError(f"key file {existing[0]} already exists; refusing to overwrite it", hint="pass force to replace")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        write_atomic(private_path, private_pem, mode=0o600)
        write_atomic(public_path, public_pem, mode=0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write key pair {name!r} in {folder}: {exc.strerror or exc}") from None
    return private_path, public_path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} file {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None


def _kind(key: object) -> str:
    return type(key).__name__.replace("_", "").removesuffix("PrivateKey").removesuffix("PublicKey") or "unknown"


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load an unencrypted Ed25519 private key from a PEM file."""
    path = Path(path)
    data = _read(path, "private key")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise ConfigError(f"{path} holds a public key, not a private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{path}: encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {_kind(key)} key; only Ed25519 keys are accepted")
    try:
        if path.stat().st_mode & 0o077:
            log.warning("private key %s is readable by group or others; chmod 600 it", path)
    except OSError:  # pragma: no cover - the file was just read
        pass
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM file (a private key here is refused)."""
    path = Path(path)
    data = _read(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(f"{path} holds a PRIVATE key; only public keys belong here",
                          hint="remove it and keep private keys out of trust folders")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {_kind(key)} key; only Ed25519 keys are accepted")
    return key


def load_trust_dir(directory: str | Path) -> dict[str, tuple[str, Ed25519PublicKey]]:
    """Every public key of a trust folder, as ``{key_id: (name, public_key)}``.

    ``name`` is the file name without its suffix. Sub-folders and other files are ignored;
    a malformed key file, an empty folder, or the same key under two names is an error.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(f"trust folder {folder} not found or not a directory")
    trusted: dict[str, tuple[str, Ed25519PublicKey]] = {}
    origin: dict[str, Path] = {}
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix in TRUST_SUFFIXES and p.is_file())
    except OSError as exc:
        raise ConfigError(f"cannot list trust folder {folder}: {exc.strerror or exc}") from None
    for path in files:
        key = load_public_key(path)
        kid = key_id(key)
        if kid in trusted:
            raise ConfigError(f"{path} and {origin[kid]} hold the same public key; keep one")
        trusted[kid], origin[kid] = (path.stem, key), path
    if not trusted:
        raise ConfigError(f"trust folder {folder} holds no public keys (*.pub, *.pem)")
    return trusted
