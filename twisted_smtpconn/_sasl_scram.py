"""
SCRAM (RFC 5802, RFC 7677) through the ``scramp`` library, with the -PLUS
variants bound to the TLS channel by ``tls-server-end-point`` (RFC 5929).

SCRAM is the strongest password mechanism we speak: the password never
crosses the wire, the server stores only a salted verifier, and the server
must prove that it knows that verifier (its signature in the final message),
so a server that merely *accepts* us has not yet proved anything.  That is
why :meth:`ScramMechanism.finish` refuses a ``235`` that arrives before the
server's signature was checked.

With -PLUS, the client's proof also covers a hash of the certificate the
server presented in the TLS handshake; a man in the middle who terminates
TLS with another certificate cannot relay the exchange.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from scramp import ScramClient, ScramException

from ._errors import AuthenticationError

__all__ = [
    "ScramMechanism",
    "SCRAM_MECHANISMS",
    "MAX_ITERATIONS",
    "tls_server_end_point",
    "peer_certificate_der",
]

#: The SCRAM mechanisms we speak, strongest first (RFC 7677's SHA-256
#: before RFC 5802's SHA-1; the -PLUS variants need TLS).
SCRAM_MECHANISMS = (
    "SCRAM-SHA-512-PLUS",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-512",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
)

#: The most PBKDF2 iterations a server may ask for.  The key derivation
#: runs on the reactor thread; a hostile server asking for scramp's own
#: limit (ten million) would freeze the process for seconds.  A million
#: takes about 0.2 s, far above what servers use (Dovecot: 4096).
MAX_ITERATIONS = 1_000_000

_CHANNEL_BINDING = "tls-server-end-point"


def tls_server_end_point(certificate_der: bytes) -> bytes | None:
    """
    The ``tls-server-end-point`` channel binding of a server certificate
    (RFC 5929, section 4.1): the certificate hashed with the hash of its
    signature algorithm, SHA-256 instead of MD5 or SHA-1.

    :param certificate_der: the server's certificate, DER-encoded.
    :returns: the binding data, or ``None`` when the certificate's signature
        has no hash of its own (Ed25519, Ed448): RFC 5929 does not define a
        binding for it, so -PLUS cannot be used.
    """
    certificate = x509.load_der_x509_certificate(certificate_der)
    algorithm = certificate.signature_hash_algorithm
    if algorithm is None:
        return None
    if isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return digest.finalize()


def peer_certificate_der(transport: Any) -> bytes | None:
    """
    The DER bytes of the certificate the server presented, or ``None``
    when the transport is not TLS or the server sent none.

    Accepts what Twisted's TLS transports return from
    ``getPeerCertificate()``: a pyOpenSSL ``X509`` (today) or a
    ``cryptography`` certificate.
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        certificate = get()
    except Exception:  # a transport that is not (or no longer) TLS
        return None
    if certificate is None:
        return None
    if hasattr(certificate, "to_cryptography"):
        certificate = certificate.to_cryptography()
    if isinstance(certificate, x509.Certificate):
        from cryptography.hazmat.primitives.serialization import Encoding

        return certificate.public_bytes(Encoding.DER)
    return None


def _iterations(server_first: str) -> int | None:
    """The ``i=`` attribute of a server-first message, if it parses."""
    for attribute in server_first.split(","):
        if attribute.startswith("i=") and attribute[2:].isascii() and attribute[2:].isdigit():
            return int(attribute[2:])
    return None


class ScramMechanism:
    """
    One SCRAM exchange: client-first as the initial response, client-final
    in answer to server-first, and an empty response once the server's
    signature (server-final) verified.

    :param name: one of :data:`SCRAM_MECHANISMS`.
    :param channel_binding: the ``tls-server-end-point`` data of the TLS
        connection, or ``None`` when not on TLS.  Required for -PLUS.  For a
        plain SCRAM mechanism it makes the client say "I support channel
        binding but you do not seem to" (GS2 flag ``y``), which lets a server
        that does offer -PLUS detect a downgrade.
    :param server_offers_plus: whether the server offered the -PLUS variant
        of ``name``.  When it did and plain SCRAM was chosen anyway (the
        caller asked for it), the client must say ``n``, or the server would
        take the choice for a downgrade attack and refuse.
    :raises AuthenticationError: -PLUS without channel binding data, or a
        password SASLprep prohibits.
    """

    strict_challenges = True

    def __init__(
        self,
        name: str,
        user: str,
        password: str,
        *,
        channel_binding: bytes | None = None,
        server_offers_plus: bool = False,
    ) -> None:
        if name not in SCRAM_MECHANISMS:
            raise ValueError(f"not a SCRAM mechanism we speak: {name!r}")
        plus = name.endswith("-PLUS")
        if plus and channel_binding is None:
            raise AuthenticationError(f"{name} needs TLS channel binding, which this connection does not have")
        binding = None
        if channel_binding is not None and (plus or not server_offers_plus):
            binding = (_CHANNEL_BINDING, channel_binding)
        self.name = name
        self.server_error: str | None = None
        self._verified = False
        self._stage = 0
        self._first: bytes | None = None
        try:
            self._client = ScramClient([name], user, password, channel_binding=binding)
        except ScramException as error:
            # scramp's messages name the rule broken, never the password.
            raise AuthenticationError(f"cannot use {name} with these credentials: {error}") from None

    def initial_response(self) -> bytes | None:
        if self._first is None:
            first: str = self._client.get_client_first()
            self._first = first.encode("utf-8")
        return self._first

    def respond(self, challenge: bytes) -> bytes:
        self._stage += 1
        try:
            message = challenge.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthenticationError(f"the server's {self.name} message is not UTF-8") from None
        try:
            if self._stage == 1:
                iterations = _iterations(message)
                if iterations is not None and iterations > MAX_ITERATIONS:
                    raise AuthenticationError(
                        f"the server asked for {iterations} {self.name} iterations; "
                        f"more than {MAX_ITERATIONS} are refused"
                    )
                self._client.set_server_first(message)
                final: str = self._client.get_client_final()
                return final.encode("utf-8")
            if self._stage == 2:
                self._client.set_server_final(message)
                self._verified = True
                return b""
        except ScramException as error:
            if message.startswith("e="):
                self.server_error = message[2:100]
            raise AuthenticationError(f"{self.name} failed: {error}") from None
        raise AuthenticationError(f"the server sent too many {self.name} challenges")

    def finish(self) -> None:
        if not self._verified:
            raise AuthenticationError(
                f"the server accepted {self.name} without proving that it knows the password "
                "(no valid server signature); it may be an impostor"
            )
