"""
The OAuth 2.0 bearer-token mechanisms: Google's XOAUTH2 and its standard
successor OAUTHBEARER (RFC 7628).

Both send the access token in the initial response.  When the server
refuses the token it does not answer 535 at once: it sends a ``334``
challenge holding a JSON error (``{"status":"401",...}``) and waits for the
client to acknowledge it (an empty line for XOAUTH2, a single ``\\x01`` for
OAUTHBEARER) before it sends the final error.  A client that answered the
challenge with anything else would be out of step with the server; handling
it here, inside the mechanism, keeps that rule out of the generic exchange.

Renewing a refused token is policy, not mechanism: it is done in
:mod:`twisted_smtpconn._auth`, with a new mechanism object per attempt.
"""

from __future__ import annotations

import json

from ._errors import AuthenticationError

__all__ = ["XOAuth2Mechanism", "OAuthBearerMechanism", "describe_oauth_error"]

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
