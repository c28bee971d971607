"""A local cluster's bearer tokens (``tokens.json``) and TLS files (``tls/``), made once in its data dir and kept.

``cluster up --auth`` writes ``tokens.json`` (``{"admin": ..., "game": ...}``, mode 0600); ``cluster up --tls``
makes a CA of its own and a server certificate for 127.0.0.1 and localhost signed by it. The CA's key is not
kept: nothing more is ever signed with it, so there is no key to steal that would mint another server.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TOKENS_FILE = "tokens.json"
TLS_DIR = "tls"
_VALID_DAYS = 3650
"""A local cluster's certificates outlive any cluster: a restart years later still serves."""


def ensure_tokens(data_dir: Path) -> Path:
    """The path of `data_dir`'s tokens file, writing one of new random tokens (mode 0600) if it has none."""
    path = data_dir / TOKENS_FILE
    if not path.exists():
        tokens = {"admin": secrets.token_urlsafe(32), "game": secrets.token_urlsafe(32)}
        _write_private(path, (json.dumps(tokens, indent=2) + "\n").encode())
    return path


def admin_token(data_dir: Path) -> str | None:
    """The admin token of `data_dir`'s tokens file (the first, when it lists several); None without one.

    Raises `ValueError` when the file is not a JSON object with a string (or list of strings) under ``admin``.
    """
    path = data_dir / TOKENS_FILE
    if not path.exists():
        return None
    entry = json.loads(path.read_text()).get("admin")
    entry = entry[0] if isinstance(entry, list) and entry else entry
    entry = entry.get("token") if isinstance(entry, dict) else entry
    if not isinstance(entry, str):
        raise ValueError(f"{path} has no admin token")
    return entry


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files of a local cluster's TLS: the CA its clients trust, and the routers' certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def of(cls, data_dir: Path) -> TlsFiles:
        folder = data_dir / TLS_DIR
        return cls(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")

    def exist(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()


def ensure_tls(data_dir: Path) -> TlsFiles:
    """`data_dir`'s TLS files, made (a new CA and server certificate) unless all three exist already."""
    files = TlsFiles.of(data_dir)
    if not files.exist():
        ca_pem, cert_pem, key_pem = make_certificate(("localhost",), ("127.0.0.1", "::1"))
        files.ca.parent.mkdir(parents=True, exist_ok=True)
        _write_private(files.key, key_pem)
        files.cert.write_bytes(cert_pem)
        files.ca.write_bytes(ca_pem)  # last: its presence says the set is whole
    return files


def make_certificate(
    names: tuple[str, ...], addresses: tuple[str, ...], client: bool = False
) -> tuple[bytes, bytes, bytes]:
    """A new CA's certificate, and a certificate it signed for DNS `names` and IP `addresses` with that
    certificate's private key: (ca_pem, cert_pem, key_pem). The certificate is a server's, or with `client` a
    client's (for mutual TLS)."""
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    ca_key, ca_cert = _self_signed_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else addresses[0])])
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = serialization.Encoding.PEM
    return ca_cert.public_bytes(pem), cert.public_bytes(pem), key_pem


def _self_signed_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rankshard local CA")])
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a clock a little behind still accepts it
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
    )


def _write_private(path: Path, data: bytes) -> None:
    """Writes `path` readable by its owner only, from the moment it exists (no window with wider bits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)
