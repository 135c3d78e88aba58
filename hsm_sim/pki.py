"""The deployment's small PKI: a CA made by `hsm-sim ca init`, certificates for the HSM and its clients,
revocation, and the TLS contexts both sides use.

One folder (0700) holds it all:

    ca.pem, ca.key        the CA (keep ca.key offline once the certificates are issued)
    server.pem, .key      the HSM's own certificate, for the host names and addresses it serves
    <name>.pem, .key      one per client; subject O=hsm-sim, OU=<role>, CN=<name>
    crl.pem               the CA's revocation list; `hsm-sim serve` re-reads it when it changes
    issued.json           what was issued: serial, name, role, validity, revoked

Keys are EC P-256, certificates signed with SHA-256, private keys written 0600. TLS is 1.3 only, and a
client certificate is checked by the server against this CA (chain, validity, client-auth usage).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsm_sim.access import Identity, check_name, check_role
from hsm_sim.files import private_dir, write_private

log = logging.getLogger("hsm_sim.pki")

ORGANIZATION = "hsm-sim"
SERVER_NAME = "server"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
REVOCATION_RECHECK_S = 1.0


class PkiError(Exception):
    """A CA operation that cannot be done; the message says what to do."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    serial: str
    name: str
    role: str
    not_before: str
    not_after: str
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What a client presents: the CA that vouches for the HSM, and its own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], name: str) -> "ClientTls":
        """The certificate `hsm-sim ca issue` wrote for `name` in `directory`."""
        folder = Path(directory)
        tls = cls(folder / "ca.pem", folder / f"{check_name(name)}.pem", folder / f"{name}.key")
        if not tls.ca.is_file():
            raise PkiError(f"{tls.ca} does not exist: is {folder} the folder `hsm-sim ca init` made?")
        for path in (tls.cert, tls.key):
            if not path.is_file():
                raise PkiError(f"{path} does not exist: issue it with `hsm-sim ca issue {folder} --role ROLE --name {name}`")
        return tls

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


# ------------------------------------------------------------------ the CA


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str, role: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if role is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PkiError(f"{exc.filename} is missing: create the CA with `hsm-sim ca init {folder}`") from None
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _registry(folder: Path) -> list[IssuedCertificate]:
    path = folder / "issued.json"
    if not path.exists():
        return []
    return [IssuedCertificate(**item) for item in json.loads(path.read_text(encoding="utf-8"))]


def _save_registry(folder: Path, entries: list[IssuedCertificate]) -> None:
    write_private(folder / "issued.json", json.dumps([asdict(e) for e in entries], indent=1).encode())


def init_ca(directory: str | os.PathLike[str], *, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 3650) -> Path:
    """A new CA in `directory` (created 0700), the HSM's server certificate for `hosts`, an empty CRL."""
    folder = Path(directory)
    if (folder / "ca.pem").exists():
        raise PkiError(f"{folder} already holds a CA; issue certificates with `hsm-sim ca issue {folder} ...`")
    private_dir(folder)
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    subject = _name("hsm-sim CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(folder / "ca.key", _pem_key(ca_key))
    write_private(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _save_registry(folder, [])
    _write_crl(folder, ca, ca_key, [])
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    _issue(folder, ca, ca_key, SERVER_NAME, None, now, now + dt.timedelta(days=days), ExtendedKeyUsageOID.SERVER_AUTH, names)
    return folder


def issue(
    directory: str | os.PathLike[str],
    *,
    role: str,
    name: str,
    days: int = 365,
    valid_from: dt.datetime | None = None,
    valid_until: dt.datetime | None = None,
) -> IssuedCertificate:
    """A client certificate and key, `<name>.pem` and `<name>.key` in the CA's folder."""
    folder = Path(directory)
    check_role(role)
    check_name(name)
    if name in (SERVER_NAME, "ca", "crl"):
        raise PkiError(f"{name!r} is reserved; choose another name")
    ca, ca_key = _load_ca(folder)
    if any(entry.name == name and not entry.revoked for entry in _registry(folder)):
        raise PkiError(f"{name} already has a certificate; revoke it first (`hsm-sim ca revoke {folder} {name}`)")
    start = valid_from or _now() - dt.timedelta(minutes=5)
    end = valid_until or start + dt.timedelta(days=days)
    return _issue(folder, ca, ca_key, name, role, start, end, ExtendedKeyUsageOID.CLIENT_AUTH, [])


def _issue(
    folder: Path,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    role: str | None,
    start: dt.datetime,
    end: dt.datetime,
    usage: x509.ObjectIdentifier,
    alt_names: list[x509.GeneralName],
) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name if role else "hsm-sim server", role))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private(folder / f"{name}.key", _pem_key(key))
    write_private(folder / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    entry = IssuedCertificate(
        f"{cert.serial_number:X}", name, role or "server", start.isoformat(timespec="seconds"), end.isoformat(timespec="seconds")
    )
    _save_registry(folder, [e for e in _registry(folder) if e.name != name or e.revoked] + [entry])
    return entry


def revoke(directory: str | os.PathLike[str], who: str) -> IssuedCertificate:
    """Revoke the certificate of a name (or a serial in hex) and rewrite the CRL the server reads."""
    folder = Path(directory)
    ca, ca_key = _load_ca(folder)
    entries = _registry(folder)
    matches = [e for e in entries if not e.revoked and (e.name == who or e.serial == who.upper())]
    if not matches:
        raise PkiError(f"no valid certificate named {who!r} in {folder} (see `hsm-sim ca list {folder}`)")
    target = matches[0]
    entries = [IssuedCertificate(**{**asdict(e), "revoked": True}) if e == target else e for e in entries]
    _save_registry(folder, entries)
    _write_crl(folder, ca, ca_key, [int(e.serial, 16) for e in entries if e.revoked])
    return IssuedCertificate(**{**asdict(target), "revoked": True})


def issued(directory: str | os.PathLike[str]) -> list[IssuedCertificate]:
    return _registry(Path(directory))


def _write_crl(folder: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, serials: list[int]) -> None:
    now = _now()
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(now).next_update(now + dt.timedelta(days=3650))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    write_private(folder / "crl.pem", crl.public_bytes(serialization.Encoding.PEM), mode=0o644)


# ------------------------------------------------------------------ the server's side


class Revocations:
    """The serials the CA has revoked, re-read (at most once a second) whenever crl.pem changes.

    A CRL that does not parse or is not signed by the CA is ignored with an error in the log, and the
    last good list stays in force.
    """

    def __init__(self, crl_path: Path, ca: x509.Certificate) -> None:
        self.path = crl_path
        self._ca = ca
        self._serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._reload()
        if self._stamp is None:
            raise PkiError(f"{crl_path} cannot be read: `hsm-sim ca init` writes it with the CA")

    def revoked(self, serial_hex: str) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= REVOCATION_RECHECK_S:
            self._checked_at = now
            self._reload()
        return int(serial_hex, 16) in self._serials

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            crl = x509.load_pem_x509_crl(self.path.read_bytes())
            if not crl.is_signature_valid(self._ca.public_key()):  # type: ignore[arg-type]
                raise ValueError("not signed by the CA")
        except (OSError, ValueError) as exc:
            log.error("revocation list %s not loaded (%s): keeping the previous one", self.path, exc)
            return
        self._serials = frozenset(revoked.serial_number for revoked in crl)
        self._stamp = stamp
        log.info("revocation list %s: %d revoked certificate(s)", self.path, len(self._serials))


@dataclass(frozen=True)
class ServerTls:
    """The HSM's certificate and key, the CA its clients' certificates must chain to, and the CRL."""

    context: ssl.SSLContext
    revocations: Revocations

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> "ServerTls":
        folder = Path(directory)
        for name in ("ca.pem", "server.pem", "server.key", "crl.pem"):
            if not (folder / name).is_file():
                raise PkiError(f"{folder / name} is missing: create the deployment's CA with `hsm-sim ca init {folder}`")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(str(folder / "server.pem"), str(folder / "server.key"))
        ctx.load_verify_locations(cafile=str(folder / "ca.pem"))
        # A client without a certificate completes the handshake and is then refused with an answer
        # that says why; a certificate that is presented must verify, or the handshake fails.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.num_tickets = 0
        ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        return cls(ctx, Revocations(folder / "crl.pem", ca))


def identity_of(peercert: dict | None) -> Identity:
    """The client a verified certificate names; ValueError saying why it names no client we serve."""
    if not peercert:
        raise ValueError("no client certificate")
    subject = {key: value for rdn in peercert.get("subject", ()) for key, value in rdn}
    name, role = subject.get("commonName", ""), subject.get("organizationalUnitName", "")
    check_name(name)
    check_role(role)
    return Identity(name, role, peercert.get("serialNumber", ""))
