"""
A throwaway certificate authority and server certificate for the sink.

The capture server must offer STARTTLS so that clients exercise the same
path they take against a real submission server, and the embedded
``smtpsend`` run must keep certificate verification *on*.  Both needs are
met by minting a private CA for this one run and a leaf certificate for
``localhost``, ``127.0.0.1`` and ``::1`` signed by it; the client is then
told to trust exactly that CA (``tls={"ca_certs": ca_path}``).

The keys are generated with ``cryptography`` (already a dependency of
pyOpenSSL), not ``trustme``, which is a test-only package.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["ThrowawayCertificate", "make_throwaway_certificate"]

#: How long the throwaway certificates are valid.  Long enough for a sink
#: left running over a weekend, short enough that a leaked CA is useless.
_VALIDITY = datetime.timedelta(days=7)

#: Clock skew tolerated by back-dating ``not_valid_before``.
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class ThrowawayCertificate:
    """
    Paths of the PEM files of one throwaway CA and its server certificate.

    :ivar directory: the directory holding all three files.
    :ivar ca_path: the CA certificate; give it to clients as ``ca_certs``.
    :ivar cert_path: the server certificate.
    :ivar key_path: the server's private key (mode 0600).
    """

    directory: Path
    ca_path: Path
    cert_path: Path
    key_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "twisted_smtpconn smtpsink"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_names(
    hostnames: Sequence[str], addresses: Sequence[str]
) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names.extend(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses)
    return names


def make_throwaway_certificate(
    directory: Path,
    hostnames: Sequence[str] = ("localhost",),
    addresses: Sequence[str] = ("127.0.0.1", "::1"),
) -> ThrowawayCertificate:
    """
    Create a new CA and a server certificate signed by it in ``directory``.

    :param directory: an existing directory; ``ca.pem``, ``server.pem`` and
        ``server.key`` are written into it (overwriting earlier ones).
    :param hostnames: DNS names the server certificate is valid for.
    :param addresses: IP addresses the server certificate is valid for.
    :returns: the paths of the files written.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("smtpsink throwaway CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    common = hostnames[0] if hostnames else addresses[0]
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName(_alt_names(hostnames, addresses)),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    result = ThrowawayCertificate(
        directory=directory,
        ca_path=directory / "ca.pem",
        cert_path=directory / "server.pem",
        key_path=directory / "server.key",
    )
    result.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    result.cert_path.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create the key file private from the start rather than chmod-ing a
    # world-readable file after the fact.
    fd = os.open(result.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as key_file:
        key_file.write(key_pem)
    return result
