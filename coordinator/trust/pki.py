"""TLS and SuperNode-authentication material for a Flower deployment (``coordinator certs``).

Everything comes from ``cryptography``'s X.509 and key serialisation (no home-made
primitives):

- ``ca.crt`` / ``ca.key``: the network's private certificate authority (ECDSA P-384). Sites
  get ``ca.crt`` only and pass it to their SuperNode as ``--root-certificates``.
- ``superlink.crt`` / ``superlink.key``: the SuperLink's server certificate, signed by the
  CA, valid for the host names and addresses given (``localhost`` and ``127.0.0.1`` always).
- ``supernodes/<site>`` / ``<site>.pub``: one ECDSA P-384 key pair per site in OpenSSH
  format (what ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode
  register`` take). In production a site makes its own pair and sends only the ``.pub``.

Private keys are written with mode 0600; files are written atomically and nothing is
overwritten unless ``force``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from optima_common.errors import PkiError
from optima_common.fileio import write_atomic

CURVE = ec.SECP384R1()


@dataclass(frozen=True)
class Pki:
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "superlink.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "superlink.key"

    def node_key(self, site: str) -> Path:
        return self.folder / "supernodes" / site

    def node_pub(self, site: str) -> Path:
        return self.folder / "supernodes" / f"{site}.pub"


def _write(path: Path, data: bytes, *, secret: bool, force: bool) -> None:
    if path.exists() and not force:
        raise PkiError(f"{path} exists; refusing to overwrite (pass --force to replace it)")
    write_atomic(path, data, mode=0o600 if secret else 0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "optima-federated"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def create_pki(folder: str | Path, sites: Iterable[str], *, hosts: Iterable[str] = (), days: int = 825,
               force: bool = False) -> Pki:
    """CA, SuperLink certificate for ``hosts`` and one SuperNode key pair per site."""
    pki = Pki(Path(folder))
    sites = list(sites)
    for s in sites:
        if not s or not all(ch.isalnum() or ch in "-_." for ch in s) or s.startswith("."):
            raise PkiError(f"site name {s!r} must be letters, digits, '-', '_' or '.'")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(CURVE)
    ca = (x509.CertificateBuilder().subject_name(_name("optima-federated network CA"))
          .issuer_name(_name("optima-federated network CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))
    server_key = ec.generate_private_key(CURVE)
    server = (x509.CertificateBuilder().subject_name(_name("optima-federated superlink"))
              .issuer_name(ca.subject).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
              .not_valid_after(now + dt.timedelta(days=days))
              .add_extension(_san(hosts), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA384()))
    _write(pki.folder / "ca.key", _pem_key(ca_key), secret=True, force=force)
    _write(pki.ca_cert, ca.public_bytes(serialization.Encoding.PEM), secret=False, force=force)
    _write(pki.server_key, _pem_key(server_key), secret=True, force=force)
    _write(pki.server_cert, server.public_bytes(serialization.Encoding.PEM), secret=False, force=force)
    for site in sites:
        create_node_key(pki, site, force=force)
    return pki


def create_node_key(pki: Pki, site: str, *, force: bool = False) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (OpenSSH format, ECDSA P-384)."""
    key = ec.generate_private_key(CURVE)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(pki.node_key(site), private, secret=True, force=force)
    _write(pki.node_pub(site), public + f" {site}\n".encode(), secret=False, force=force)
    return pki.node_key(site), pki.node_pub(site)
