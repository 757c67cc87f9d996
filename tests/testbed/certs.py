"""Throw-away X.509 material for the test registries: a CA with a server certificate, and token signers.

EC P-256 keys throughout: generating one takes microseconds where RSA-2048 takes tens of milliseconds,
and Go's TLS stack, skopeo, httpx and distribution's JWT verifier all accept ECDSA.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Backdated so a few seconds of clock skew between Python and Go never makes a fresh cert "not yet valid".
_NOT_BEFORE_SLACK = dt.timedelta(hours=1)
_LIFETIME = dt.timedelta(days=2)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class ServerCertificate:
    """A server certificate (PEM files on disk) issued by a :class:`CertificateAuthority`."""

    cert_file: Path
    key_file: Path


def _self_signed(key: ec.EllipticCurvePrivateKey, name: str, *, path_length: int | None) -> x509.CertificateBuilder:
    """A CA certificate for ``key`` naming itself as issuer, ready for more extensions and signing."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _NOT_BEFORE_SLACK)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
    )


class CertificateAuthority:
    """A self-signed CA; clients trust :attr:`ca_file`, servers get certificates from :meth:`issue_server`."""

    def __init__(self, directory: Path, name: str = "imagesync test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _self_signed(self.key, name, path_length=0)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        )
        self.cert = builder.sign(self.key, hashes.SHA256())
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(_cert_pem(self.cert))

    def issue_server(self, name: str = "server", *, ips: tuple[str, ...] = ("127.0.0.1",),
                     dns_names: tuple[str, ...] = ("localhost",)) -> ServerCertificate:
        """A TLS server certificate for ``ips`` and ``dns_names``, written next to the CA file."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        alt_names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        alt_names += [x509.DNSName(dns) for dns in dns_names]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0] if dns_names
                                                        else ips[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _NOT_BEFORE_SLACK)
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file = self.directory / f"{name}.pem"
        key_file = self.directory / f"{name}-key.pem"
        cert_file.write_bytes(_cert_pem(cert))
        key_file.write_bytes(_key_pem(key))
        key_file.chmod(0o600)
        return ServerCertificate(cert_file=cert_file, key_file=key_file)


class TokenSigningKey:
    """The key a token server signs JWTs with, and the self-signed certificate the registry trusts.

    The registry's ``rootcertbundle`` holds :attr:`cert_file`; every JWT carries the same certificate in its
    ``x5c`` header, so distribution finds a chain (of length one) ending in a trusted root.
    """

    def __init__(self, directory: Path, name: str = "token-signer") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _self_signed(self.private_key, name, path_length=None).sign(self.private_key, hashes.SHA256())
        self.cert_file = directory / f"{name}.pem"
        self.cert_file.write_bytes(_cert_pem(self.cert))
        self.algorithm = "ES256"

    @property
    def x5c(self) -> list[str]:
        """The JWS ``x5c`` header value: standard base64 (not URL-safe) DER, leaf first."""
        return [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode("ascii")]
