"""coordinator certs: the network CA, the SuperLink certificate and SuperNode keys."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from optima_common.errors import ExitCode
from tests.conftest import REPO


def certs(*args: str):
    return subprocess.run([sys.executable, "-m", "coordinator.cli.main", "certs", *args], capture_output=True, text=True,
                          cwd=REPO)


def test_certs_chain_names_and_key_modes(tmp_path):
    out = tmp_path / "pki"
    proc = certs("--out", str(out), "--host", "link.example.org", "--host", "10.1.2.3", "--site", "site_a")
    assert proc.returncode == 0, proc.stderr
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "superlink.crt").read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "link.example.org"} <= set(san.get_values_for_type(x509.DNSName))
    assert ipaddress.ip_address("10.1.2.3") in san.get_values_for_type(x509.IPAddress)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for secret in ("ca.key", "superlink.key", "supernodes/site_a"):
        assert stat.S_IMODE((out / secret).stat().st_mode) == 0o600, secret
    node = serialization.load_ssh_private_key((out / "supernodes" / "site_a").read_bytes(), password=None)
    assert isinstance(node, ec.EllipticCurvePrivateKey) and node.curve.name == "secp384r1"
    pub = (out / "supernodes" / "site_a.pub").read_text()
    assert pub.startswith("ecdsa-sha2-nistp384 ")


def test_certs_refuse_to_overwrite_and_bad_site_names(tmp_path):
    out = tmp_path / "pki"
    assert certs("--out", str(out)).returncode == 0
    before = (out / "ca.crt").read_bytes()
    proc = certs("--out", str(out))
    assert proc.returncode == ExitCode.PKI and "exists; refusing to overwrite" in proc.stderr and proc.stderr.count("\n") == 1
    assert (out / "ca.crt").read_bytes() == before
    proc = certs("--out", str(tmp_path / "other"), "--site", "../evil")
    assert proc.returncode == ExitCode.PKI and "site name" in proc.stderr
