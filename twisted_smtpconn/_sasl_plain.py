"""
The two mechanisms that send the password itself: PLAIN (RFC 4616) and the
never-standardised but ubiquitous LOGIN.

Both put the password on the wire, only base64-encoded; that is why
:mod:`twisted_smtpconn._auth` refuses them (and every other mechanism) over
cleartext to a host that is not loopback unless ``allow_insecure_auth``.
"""

from __future__ import annotations

from ._errors import AuthenticationError

__all__ = ["PlainMechanism", "LoginMechanism"]


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
