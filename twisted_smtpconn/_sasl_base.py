"""
What every SASL mechanism of :mod:`twisted_smtpconn._auth` looks like, and
the base64 framing of RFC 4954 that they all share.

A mechanism here is a *pure* state machine: it is handed the decoded
challenges and returns the raw responses, and never sees the wire.  The one
place that talks to the server is :mod:`twisted_smtpconn._sasl_exchange`, so
that the rules of the AUTH dialogue (initial response, ``334`` rounds,
cancelling with ``*``, redaction of every client line) are written once and
each mechanism can be tested byte for byte with no connection at all.

A mechanism that finds a challenge it cannot accept raises
:class:`~twisted_smtpconn._errors.AuthenticationError`; its message must
never contain a credential (it ends up in error text and logs).
"""

from __future__ import annotations

import base64
import binascii
from typing import Protocol

__all__ = ["SASLMechanism", "encode_response", "decode_challenge", "check_credential"]


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
