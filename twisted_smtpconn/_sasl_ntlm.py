"""
NTLM ([MS-SMTPNTLM]) through ``pyspnego``, installed with the optional
extra ``ntlm`` (``pip install twisted_smtpconn[ntlm]``).

The import of ``spnego`` happens when an NTLM exchange starts, not when this
module is imported, so that the library works without the extra and the
missing extra is reported as an ``EAUTH`` error that names it.

The exchange is NTLM's three messages: NEGOTIATE as the initial response,
CHALLENGE from the server in a ``334``, AUTHENTICATE in answer.  pyspnego's
pure-Python NTLM is forced (``use_ntlm``), so that the result does not depend
on whether a system GSSAPI happens to be installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._errors import AuthenticationError

__all__ = ["NTLMMechanism", "NTLM_EXTRA"]

#: The name of the optional extra that installs pyspnego.
NTLM_EXTRA = "ntlm"

#: The environment variable through which pyspnego takes the workstation
#: name (it has no parameter for it).
_WORKSTATION_VARIABLE = "NETBIOS_COMPUTER_NAME"


def _load_spnego() -> Any:
    try:
        import spnego
    except ImportError:
        raise AuthenticationError(
            f"NTLM needs the pyspnego package: install the {NTLM_EXTRA!r} extra "
            f"(pip install 'twisted_smtpconn[{NTLM_EXTRA}]')"
        ) from None
    return spnego


@contextmanager
def _workstation(name: str | None) -> Iterator[None]:
    """
    Make pyspnego send ``name`` as the workstation, for one synchronous step.

    pyspnego reads the workstation from the environment only.  The step that
    reads it is synchronous and runs on the reactor thread, and the previous
    value is put back at once, so nothing else observes the change.
    """
    if name is None:
        yield
        return
    previous = os.environ.get(_WORKSTATION_VARIABLE)
    os.environ[_WORKSTATION_VARIABLE] = name
    try:
        yield
    finally:
        if previous is None:
            del os.environ[_WORKSTATION_VARIABLE]
        else:
            os.environ[_WORKSTATION_VARIABLE] = previous


class NTLMMechanism:
    """
    NTLM: NEGOTIATE, CHALLENGE, AUTHENTICATE.

    :param user: the account name; with ``domain`` it is sent as
        ``DOMAIN\\user``; a UPN (``user@example.com``) works without one.
    :param domain: the Windows domain, or ``None``.
    :param workstation: the workstation name to send, or ``None`` for
        pyspnego's default (this host's name).
    :raises AuthenticationError: pyspnego is not installed.
    """

    name = "NTLM"
    strict_challenges = True

    def __init__(self, user: str, password: str, *, domain: str | None = None, workstation: str | None = None) -> None:
        spnego = _load_spnego()
        self.server_error: str | None = None
        self._workstation = workstation
        self._answered = False
        username = f"{domain}\\{user}" if domain else user
        self._context = spnego.client(
            username,
            password,
            protocol="ntlm",
            options=spnego.NegotiateOptions.use_ntlm,
        )
        self._errors: tuple[type[BaseException], ...] = (spnego.exceptions.SpnegoError, ValueError, KeyError)

    def initial_response(self) -> bytes | None:
        token = self._context.step()
        return bytes(token) if token else b""

    def respond(self, challenge: bytes) -> bytes:
        if self._answered:
            raise AuthenticationError("the server sent a second NTLM challenge")
        self._answered = True
        try:
            with _workstation(self._workstation):
                token = self._context.step(challenge)
        except self._errors as error:
            raise AuthenticationError(f"the server's NTLM challenge is unusable: {type(error).__name__}") from None
        return bytes(token) if token else b""

    def finish(self) -> None:
        pass
