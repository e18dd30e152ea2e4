"""
The SASL mechanisms that need no library of their own, as pure state
machines, and what every mechanism shares: the :class:`SASLMechanism`
protocol and the base64 framing of RFC 4954.

- PLAIN (RFC 4616) and the never-standardised but ubiquitous LOGIN: both
  put the password on the wire, only base64-encoded; that is why
  :mod:`twisted_smtpconn._auth` refuses them (and every other mechanism)
  over cleartext to a host that is not loopback unless
  ``allow_insecure_auth``.
- CRAM-MD5 (RFC 2195): the password never travels, but an eavesdropper can
  still guess it offline.
- XOAUTH2 and OAUTHBEARER (RFC 7628): a bearer token instead of a password.

SCRAM and NTLM, which stand on scramp and pyspnego, have modules of their
own.  None of these touches the network: :mod:`._sasl_exchange` runs any of
them on the wire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Protocol

from ._errors import AuthenticationError

__all__ = [
    "SASLMechanism",
    "encode_response",
    "decode_challenge",
    "check_credential",
    "PlainMechanism",
    "LoginMechanism",
    "CramMD5Mechanism",
    "cram_md5_response",
    "XOAuth2Mechanism",
    "OAuthBearerMechanism",
    "describe_oauth_error",
]


# -- shared --------------------------------------------------------------------
# What every SASL mechanism of :mod:`twisted_smtpconn._auth` looks like, and
# the base64 framing of RFC 4954 that they all share.
#
# A mechanism here is a *pure* state machine: it is handed the decoded
# challenges and returns the raw responses, and never sees the wire.  The one
# place that talks to the server is :mod:`twisted_smtpconn._sasl_exchange`, so
# that the rules of the AUTH dialogue (initial response, ``334`` rounds,
# cancelling with ``*``, redaction of every client line) are written once and
# each mechanism can be tested byte for byte with no connection at all.
#
# A mechanism that finds a challenge it cannot accept raises
# :class:`~twisted_smtpconn._errors.AuthenticationError`; its message must
# never contain a credential (it ends up in error text and logs).


class SASLMechanism(Protocol):
    """
    One client-side SASL exchange (one attempt: a new object per AUTH).

    :ivar name: the mechanism's registered name, upper-case (``"PLAIN"``).
    :ivar server_error: text the server sent in an error challenge (the JSON
        of a refused XOAUTH2/OAUTHBEARER token), for the error message; else
        ``None``.
    :ivar strict_challenges: whether challenges must be valid base64; a
        mechanism that ignores their content (LOGIN, whose prompts some old
        servers send unencoded) sets it to ``False``.
    """

    name: str
    server_error: str | None
    strict_challenges: bool

    def initial_response(self) -> bytes | None:
        """
        The response sent with the AUTH command itself (RFC 4954 initial
        response), or ``None`` to send none and wait for a challenge.
        """

    def respond(self, challenge: bytes) -> bytes:
        """
        The response to one ``334`` challenge.

        :param challenge: the decoded challenge (``b""`` for an empty one).
        :raises AuthenticationError: the challenge is unacceptable; the
            exchange is cancelled.
        """

    def finish(self) -> None:
        """
        The server said ``235``: check that the exchange really completed.

        Mechanisms with mutual authentication (SCRAM) raise
        :class:`~twisted_smtpconn._errors.AuthenticationError` here when the
        server never proved that it knows the credentials.
        """


def encode_response(response: bytes) -> bytes:
    """
    A response as sent on the wire: base64 without line breaks.

    An *empty initial response* must be sent as ``=`` (RFC 4954, section 4),
    but an empty response to a challenge is an empty line; the caller picks
    (see :mod:`twisted_smtpconn._sasl_exchange`).
    """
    return base64.b64encode(response)


def decode_challenge(text: str) -> bytes:
    """
    Decode the text of a ``334`` reply.

    :raises ValueError: when it is not base64 (characters outside the
        alphabet, inner whitespace or missing padding included): a mechanism
        must never act on a challenge that was guessed at.
    """
    text = text.strip()
    if not text:
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ValueError("the server's challenge is not base64") from error


def check_credential(what: str, value: object) -> str:
    """
    Check one credential string before it is framed into a response.

    SASL responses are built by joining fields with NUL, ``\\x01`` or
    ``,``; a credential holding a separator could smuggle in another field,
    so such values are refused here (without showing them).

    :param what: what the value is, for the message (``"user name"``).
    :raises TypeError: ``value`` is not a ``str``.
    :raises ValueError: it holds NUL, CR, LF or ``\\x01``.
    """
    if not isinstance(value, str):
        raise TypeError(f"the {what} must be a str, not {type(value).__name__}")
    if any(c in value for c in "\x00\r\n\x01"):
        raise ValueError(f"the {what} contains a control character (NUL, CR, LF or \\x01)")
    return value


# -- PLAIN and LOGIN -----------------------------------------------------------
# The two mechanisms that send the password itself: PLAIN (RFC 4616) and the
# never-standardised but ubiquitous LOGIN.
#
# Both put the password on the wire, only base64-encoded; that is why
# :mod:`twisted_smtpconn._auth` refuses them (and every other mechanism) over
# cleartext to a host that is not loopback unless ``allow_insecure_auth``.


class PlainMechanism:
    """
    PLAIN: one initial response ``authzid NUL authcid NUL passwd``.

    The authorisation identity is left empty: the server then acts for the
    authenticated user, which is what SMTP submission expects.  Strings are
    sent as UTF-8 as the RFC says; SASLprep is not applied (servers compare
    the bytes they stored, and so do real-world clients).
    """

    name = "PLAIN"
    strict_challenges = True

    def __init__(self, user: str, password: str) -> None:
        self.server_error: str | None = None
        self._user = user
        self._password = password

    def initial_response(self) -> bytes | None:
        return b"\x00" + self._user.encode("utf-8") + b"\x00" + self._password.encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        # Everything was sent with the command; a challenge after it means
        # the server and we disagree on the mechanism.
        raise AuthenticationError("the server sent a challenge after the PLAIN response")

    def finish(self) -> None:
        pass


class LoginMechanism:
    """
    LOGIN: the user name answers the first challenge and the password the
    second.

    The prompts (``Username:``/``Password:``, or variants some servers use)
    are not interpreted, only counted: their wording is not standard, and a
    client that matched on it would fail on servers that phrase it
    differently.  No initial response is sent, since several servers do not
    accept one for LOGIN.
    """

    name = "LOGIN"
    strict_challenges = False

    def __init__(self, user: str, password: str) -> None:
        self.server_error: str | None = None
        self._answers = [user.encode("utf-8"), password.encode("utf-8")]

    def initial_response(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        if not self._answers:
            raise AuthenticationError("the server asked for more than a user name and a password in LOGIN")
        return self._answers.pop(0)

    def finish(self) -> None:
        # A server may accept before asking for the password (an account
        # without one); nothing was proved to us, and nothing needed to be.
        pass


# -- CRAM-MD5 ------------------------------------------------------------------
# CRAM-MD5 (RFC 2195): the password never crosses the wire, only an
# HMAC-MD5 of the server's one-time challenge keyed with it.
#
# It is weaker than SCRAM (the server must store the password, and an
# eavesdropper can try passwords offline against the challenge and digest) but
# stronger than PLAIN/LOGIN, hence its place in the preference order.


def cram_md5_response(user: str, password: str, challenge: bytes) -> bytes:
    """
    ``user SP hex(HMAC-MD5(password, challenge))``, the whole response.

    :param challenge: the decoded challenge, e.g.
        ``b"<1896.697170952@postoffice.example.net>"``.
    """
    digest = hmac.new(password.encode("utf-8"), challenge, hashlib.md5).hexdigest()
    return user.encode("utf-8") + b" " + digest.encode("ascii")


class CramMD5Mechanism:
    """CRAM-MD5: no initial response, one challenge, one response."""

    name = "CRAM-MD5"
    strict_challenges = True

    def __init__(self, user: str, password: str) -> None:
        self.server_error: str | None = None
        self._user = user
        self._password = password
        self._answered = False

    def initial_response(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        if self._answered:
            raise AuthenticationError("the server sent a second challenge in CRAM-MD5")
        if not challenge:
            # An empty challenge would make the digest a constant that
            # anybody who saw it once could replay.
            raise AuthenticationError("the server sent an empty CRAM-MD5 challenge")
        self._answered = True
        return cram_md5_response(self._user, self._password, challenge)

    def finish(self) -> None:
        pass


# -- XOAUTH2 and OAUTHBEARER ---------------------------------------------------
# The OAuth 2.0 bearer-token mechanisms: Google's XOAUTH2 and its standard
# successor OAUTHBEARER (RFC 7628).
#
# Both send the access token in the initial response.  When the server
# refuses the token it does not answer 535 at once: it sends a ``334``
# challenge holding a JSON error (``{"status":"401",...}``) and waits for the
# client to acknowledge it (an empty line for XOAUTH2, a single ``\\x01`` for
# OAUTHBEARER) before it sends the final error.  A client that answered the
# challenge with anything else would be out of step with the server; handling
# it here, inside the mechanism, keeps that rule out of the generic exchange.
#
# Renewing a refused token is policy, not mechanism: it is done in
# :mod:`twisted_smtpconn._auth`, with a new mechanism object per attempt.


_KVSEP = b"\x01"

#: How much of an error challenge the error message shows.
_MAX_SHOWN = 200


def describe_oauth_error(challenge: bytes) -> str:
    """
    A short text for the JSON error a server sent in place of accepting a
    token, e.g. ``status 401, schemes Bearer, scope https://mail.google.com/``.

    The challenge comes from the server and holds no secret of ours; it is
    still shown only in part and with control characters escaped, since it
    ends up in error messages.
    """
    try:
        data = json.loads(challenge.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if isinstance(data, dict):
        parts = [f"{key} {value}" for key, value in data.items() if isinstance(value, (str, int))]
        text = ", ".join(parts)
    else:
        text = challenge.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text[:_MAX_SHOWN]


class _BearerMechanism:
    """The exchange both bearer mechanisms share: one response, at most one error challenge."""

    name = ""
    strict_challenges = True
    #: What the client sends to acknowledge an error challenge.
    _acknowledgement = b""

    def __init__(self) -> None:
        self.server_error: str | None = None

    def respond(self, challenge: bytes) -> bytes:
        if self.server_error is not None:
            raise AuthenticationError(f"the server sent a second challenge in {self.name}")
        self.server_error = describe_oauth_error(challenge) or "(empty error challenge)"
        return self._acknowledgement

    def finish(self) -> None:
        pass


class XOAuth2Mechanism(_BearerMechanism):
    """
    XOAUTH2: ``user=<user>^Aauth=Bearer <token>^A^A`` as the initial
    response (Google's and Microsoft's SMTP servers).
    """

    name = "XOAUTH2"
    _acknowledgement = b""

    def __init__(self, user: str, token: str) -> None:
        super().__init__()
        self._user = user
        self._token = token

    def initial_response(self) -> bytes | None:
        return (
            b"user=" + self._user.encode("utf-8") + _KVSEP
            + b"auth=Bearer " + self._token.encode("utf-8") + _KVSEP + _KVSEP
        )


def _saslname(user: str) -> bytes:
    """RFC 5801 saslname: ``=`` and ``,`` escaped as ``=3D`` and ``=2C``."""
    return user.replace("=", "=3D").replace(",", "=2C").encode("utf-8")


class OAuthBearerMechanism(_BearerMechanism):
    """
    OAUTHBEARER (RFC 7628): a GS2 header naming the user as the
    authorisation identity, then ``host``, ``port`` and the token as
    key-value pairs.

    :param user: the authorisation identity, or ``None`` to leave it to the
        token (the RFC allows both).
    :param host: the server's host name, sent so that the server can check
        that the token was meant for it.
    :param port: the server's port, sent for the same reason.
    """

    name = "OAUTHBEARER"
    #: RFC 7628 section 3.2.3: the client answers an error challenge with a
    #: dummy ``%x01``.
    _acknowledgement = _KVSEP

    def __init__(self, user: str | None, token: str, *, host: str | None = None, port: int | None = None) -> None:
        super().__init__()
        self._user = user
        self._token = token
        self._host = host
        self._port = port

    def initial_response(self) -> bytes | None:
        authzid = b"a=" + _saslname(self._user) if self._user else b""
        pairs = b""
        if self._host and self._host.isascii():
            # A non-ASCII (not punycode) name cannot be sent; the pair is optional.
            pairs += b"host=" + self._host.encode("ascii") + _KVSEP
        if self._port is not None:
            pairs += b"port=" + str(self._port).encode("ascii") + _KVSEP
        pairs += b"auth=Bearer " + self._token.encode("utf-8") + _KVSEP
        return b"n," + authzid + b"," + _KVSEP + pairs + _KVSEP
