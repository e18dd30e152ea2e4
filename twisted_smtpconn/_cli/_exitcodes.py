"""
Exit statuses of ``smtpsend``: the BSD ``sysexits.h`` codes.

A script driving ``smtpsend`` needs to tell apart "fix the invocation"
(64), "fix this message" (65), "the server refuses: retrying will not
help" (69) and "try again later" (75).  The mapping from library errors is
in :func:`classify`; ``docs/twistd.rst`` documents it.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._errors import SMTPConnectionError

__all__ = [
    "EX_OK",
    "EX_USAGE",
    "EX_DATAERR",
    "EX_UNAVAILABLE",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "classify",
    "classify_reply",
    "combine",
    "describe",
]

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75

# From most to least serious: when several messages fail differently, the
# most serious kind decides the exit status.
_SEVERITY = (EX_SOFTWARE, EX_USAGE, EX_UNAVAILABLE, EX_DATAERR, EX_TEMPFAIL, EX_OK)

_DESCRIPTIONS = {
    EX_OK: "all messages accepted",
    EX_USAGE: "usage error",
    EX_DATAERR: "a message or envelope was refused or unusable",
    EX_UNAVAILABLE: "the server refused or is unavailable",
    EX_SOFTWARE: "internal error",
    EX_TEMPFAIL: "temporary failure: try again later",
}

_DATA_CODES = frozenset({"EENVELOPE", "EMESSAGE", "ESTREAM"})


def classify_reply(response_code: int | None) -> int:
    """The status for one refused recipient: 4xx temporary, else data error."""
    if response_code is not None and 400 <= response_code < 500:
        return EX_TEMPFAIL
    return EX_DATAERR


def classify(error: BaseException, *, connected: bool) -> int:
    """
    The exit status one failed message contributes.

    :param error: what the library raised.
    :param connected: whether the connection had been established (greeting,
        EHLO, TLS and AUTH done) before the failure; an ``ECONNECTION`` before
        that means the server is unavailable, after it a dropped link.
    """
    if not isinstance(error, SMTPConnectionError):
        return EX_SOFTWARE
    reply = error.response_code
    if reply is not None and 400 <= reply < 500:
        return EX_TEMPFAIL
    if error.code in _DATA_CODES:
        return EX_DATAERR
    if reply is not None and reply >= 500:
        return EX_UNAVAILABLE
    if error.code == "ECONNECTION":
        return EX_TEMPFAIL if connected else EX_UNAVAILABLE
    if error.code in ("ETIMEDOUT", "ESOCKET"):
        return EX_TEMPFAIL
    # ETLS, EAUTH and EPROTOCOL without a reply code: a broken or
    # misconfigured peer that retrying will not fix.
    return EX_UNAVAILABLE


def combine(codes: Iterable[int]) -> int:
    """The most serious of ``codes`` (``EX_OK`` for none)."""
    present = set(codes)
    for code in _SEVERITY:
        if code in present:
            return code
    return EX_OK if not present else max(present)


def describe(code: int) -> str:
    """A few words for the final summary line."""
    return _DESCRIPTIONS.get(code, "unknown")
