"""A cluster CA and one certificate per service role, for mutual TLS between the services.

Each certificate's common name is its role (what `infermesh_shared.peer_roles` authorises by);
its subject alternative names are the hosts it may serve as (loopback always, plus `hosts`).
Keys are EC P-256 and written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from infermesh_shared.grpc_transport import TlsFiles
from infermesh_shared.peer_roles import ROLES

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"  # certs_command.CA_KEY names the same file


@dataclass(frozen=True, slots=True)
class RoleFiles:
    """Where one role's certificate and key were written."""

    role: str
    cert_file: Path
    key_file: Path
    ca_file: Path

    def as_tls(self) -> TlsFiles:
        """The files as a service's TLS options."""
        return TlsFiles(str(self.cert_file), str(self.key_file), str(self.ca_file))


def role_files(out_dir: Path, role: str) -> RoleFiles:
    """The file names `write_cluster_certs` uses for `role` under `out_dir`."""
    return RoleFiles(role, out_dir / f"{role}.pem", out_dir / f"{role}-key.pem", out_dir / CA_CERT)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*LOOPBACK_HOSTS, *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _load_ca(out_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((out_dir / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((out_dir / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{out_dir / CA_KEY} is not an EC key written by `infermesh certs`")
    return cert, key


def _new_ca(out_dir: Path, days: int, now: datetime.datetime):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "infermesh cluster CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(out_dir / CA_KEY, key)
    _write_cert(out_dir / CA_CERT, cert)
    return cert, key


def write_cluster_certs(
    out_dir: Path,
    hosts: list[str] | None = None,
    *,
    roles: tuple[str, ...] = ROLES,
    days: int = 365,
    reuse_ca: bool = False,
) -> dict[str, RoleFiles]:
    """Writes ca.pem (+ ca-key.pem) and <role>.pem / <role>-key.pem for each role; returns them.

    With `reuse_ca`, the CA already in `out_dir` signs the new certificates (rotation of the
    service certificates without touching the trust anchor).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    if reuse_ca:
        ca_cert, ca_key = _load_ca(out_dir)
    else:
        ca_cert, ca_key = _new_ca(out_dir, max(days, 1) * 2, now)
    written = {}
    for role in roles:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(_san([role, *(hosts or [])]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        files = role_files(out_dir, role)
        _write_key(files.key_file, key)
        _write_cert(files.cert_file, cert)
        written[role] = files
    return written
