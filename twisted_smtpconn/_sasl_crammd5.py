"""
CRAM-MD5 (RFC 2195): the password never crosses the wire, only an
HMAC-MD5 of the server's one-time challenge keyed with it.

It is weaker than SCRAM (the server must store the password, and an
eavesdropper can try passwords offline against the challenge and digest) but
stronger than PLAIN/LOGIN, hence its place in the preference order.
"""

from __future__ import annotations

import hashlib
import hmac

from ._errors import AuthenticationError

__all__ = ["CramMD5Mechanism", "cram_md5_response"]


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
