"""
Turning TLS failures into ``ETLS`` errors that say what went wrong.

OpenSSL reports every rejected certificate as the same "certificate verify
failed"; a person reading the error needs to know whether to install a CA
(unknown CA), fix a configuration (name mismatch) or renew a certificate
(expired).  :func:`certificate_error` words the X.509 verification result
that our creator (:mod:`._tls_creator`) sees in its verify callback;
:func:`describe_tls_failure` maps whatever reason a transport closed with
during or after a handshake (our own error, a service_identity mismatch
from a caller's creator, a raw OpenSSL error) to a :class:`TLSError`.
"""

from __future__ import annotations

from twisted.python.failure import Failure

from ._errors import TLSError

__all__ = ["certificate_error", "describe_tls_failure", "name_mismatch_error", "x509_reason"]

# OpenSSL's X509_V_ERR_* numbers (stable across 1.1 and 3.x).
_UNABLE_TO_GET_ISSUER_CERT = 2
_CERT_SIGNATURE_FAILURE = 7
_CERT_NOT_YET_VALID = 9
_CERT_HAS_EXPIRED = 10
_DEPTH_ZERO_SELF_SIGNED_CERT = 18
_SELF_SIGNED_CERT_IN_CHAIN = 19
_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
_CERT_CHAIN_TOO_LONG = 22
_CERT_REVOKED = 23
_INVALID_CA = 24
_PATH_LENGTH_EXCEEDED = 25
_INVALID_PURPOSE = 26
_CERT_UNTRUSTED = 27
_CERT_REJECTED = 28
_HOSTNAME_MISMATCH = 62
_IP_ADDRESS_MISMATCH = 64
_EE_KEY_TOO_SMALL = 66
_CA_KEY_TOO_SMALL = 67
_CA_MD_TOO_WEAK = 68

_X509_REASONS: dict[int, str] = {
    _UNABLE_TO_GET_ISSUER_CERT: "unknown CA (the issuer certificate is not trusted)",
    _UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "unknown CA (unable to get local issuer certificate)",
    _UNABLE_TO_VERIFY_LEAF_SIGNATURE: "unknown CA (unable to verify the first certificate)",
    _SELF_SIGNED_CERT_IN_CHAIN: "unknown CA (self-signed certificate in the chain)",
    _DEPTH_ZERO_SELF_SIGNED_CERT: "unknown CA (self-signed certificate)",
    _CERT_UNTRUSTED: "unknown CA (the root is not trusted for this purpose)",
    _CERT_HAS_EXPIRED: "expired certificate",
    _CERT_NOT_YET_VALID: "certificate not yet valid",
    _CERT_REVOKED: "certificate revoked",
    _CERT_SIGNATURE_FAILURE: "bad certificate signature",
    _INVALID_CA: "invalid CA certificate in the chain",
    _CERT_CHAIN_TOO_LONG: "certificate chain too long",
    _PATH_LENGTH_EXCEEDED: "CA path length exceeded",
    _INVALID_PURPOSE: "certificate not valid for a TLS server",
    _CERT_REJECTED: "certificate rejected for this purpose",
    _HOSTNAME_MISMATCH: "name mismatch",
    _IP_ADDRESS_MISMATCH: "name mismatch (IP address)",
    _EE_KEY_TOO_SMALL: "certificate key too small",
    _CA_KEY_TOO_SMALL: "CA key too small",
    _CA_MD_TOO_WEAK: "CA signature digest too weak",
}

# Substrings of OpenSSL's reason strings, first match wins, and what they
# mean to somebody configuring a mail client.
_HANDSHAKE_HINTS: tuple[tuple[str, str], ...] = (
    ("certificate verify failed", "the server's certificate could not be verified"),
    ("wrong version number", "the server did not answer with TLS (for a STARTTLS port use secure=False)"),
    ("packet length too long", "the server did not answer with TLS (for a STARTTLS port use secure=False)"),
    ("record layer failure", "the server did not answer with TLS (for a STARTTLS port use secure=False)"),
    ("http request", "the server did not answer with TLS"),
    ("unsupported protocol", "no TLS version in common with the server (see min_version)"),
    ("no protocols available", "no TLS version in common with the server (see min_version)"),
    ("alert protocol version", "no TLS version in common with the server (see min_version)"),
    ("alert unknown ca", "the server does not trust our client certificate"),
    ("alert bad certificate", "the server rejected our client certificate"),
    ("alert certificate required", "the server requires a client certificate"),
    ("alert certificate unknown", "the server rejected our client certificate"),
    ("alert handshake failure", "the server refused the handshake (no common cipher, or a client "
     "certificate is required)"),
    ("unexpected eof", "the server closed the connection during the TLS handshake"),
)


def x509_reason(error_number: int) -> str:
    """Words for an X.509 verification error number (``X509_V_ERR_*``)."""
    return _X509_REASONS.get(error_number, f"certificate verification error {error_number}")


def certificate_error(
    server_name: str, error_number: int, depth: int, subject: str, issuer: str, validity: str = ""
) -> TLSError:
    """
    The error for a certificate OpenSSL refused while verifying the chain.

    :param server_name: the name we expected the server to prove.
    :param error_number: OpenSSL's ``X509_V_ERR_*`` number.
    :param depth: where in the chain the refused certificate is (0: the
        server's own).
    :param subject: the refused certificate's subject, for the message.
    :param issuer: its issuer, for the message.
    :param validity: its validity period, said for the date errors.
    """
    where = "the server's certificate" if depth == 0 else f"the chain certificate at depth {depth}"
    when = f" ({validity})" if validity and error_number in (_CERT_HAS_EXPIRED, _CERT_NOT_YET_VALID) else ""
    return TLSError(
        f"TLS certificate of {server_name} not trusted: {x509_reason(error_number)}{when}; "
        f"{where} is {subject!r}, issued by {issuer!r}"
    )


def name_mismatch_error(server_name: str, detail: str) -> TLSError:
    """The error for a certificate that does not name the server."""
    return TLSError(f"TLS certificate of {server_name} not trusted: name mismatch ({detail}, not {server_name})")


def _openssl_reasons(value: BaseException) -> list[str]:
    reasons: list[str] = []
    for item in value.args[0] if value.args and isinstance(value.args[0], list) else []:
        if isinstance(item, tuple) and item:
            reasons.append(str(item[-1]))
    return reasons


def _from_openssl(value: BaseException) -> TLSError:
    from OpenSSL.SSL import SysCallError

    if isinstance(value, SysCallError):
        return TLSError(f"TLS failed: socket error during TLS ({value.args[-1] if value.args else value})")
    reasons = _openssl_reasons(value)
    text = "; ".join(reasons) if reasons else (str(value) or type(value).__name__)
    lowered = text.lower()
    for needle, hint in _HANDSHAKE_HINTS:
        if needle in lowered:
            return TLSError(f"TLS failed: {hint} ({text})")
    return TLSError(f"TLS failed: {text}")


def describe_tls_failure(reason: Failure) -> TLSError | None:
    """
    The ``ETLS`` error for ``reason`` if it is a TLS failure, else ``None``.

    :param reason: why a transport closed (``connectionLost``'s argument).
    """
    if isinstance(reason.value, TLSError):
        return reason.value
    try:
        from service_identity import CertificateError, VerificationError
    except ImportError:  # pragma: no cover - a dependency of Twisted[tls]
        pass
    else:
        if isinstance(reason.value, (VerificationError, CertificateError)):
            return TLSError(f"TLS certificate not trusted: name mismatch ({reason.value})")
    try:
        from OpenSSL.SSL import Error as OpenSSLError
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
        return None
    if isinstance(reason.value, OpenSSLError):
        return _from_openssl(reason.value)
    return None
