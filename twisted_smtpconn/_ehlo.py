"""
What a server's EHLO (or LHLO) reply says about it: the service extensions
(RFC 5321, 4.1.1.1) and the two of them whose parameters the client reads,
AUTH and SIZE.

Servers are sloppy here and the client only needs a few facts, so parsing is
lenient: a line that is not ``keyword [parameters]`` is skipped rather than
failing the connection, keywords are case-insensitive, and the pre-RFC 2554
``AUTH=LOGIN`` advertisement that some servers still send (alone or next to
the standard ``AUTH`` line) is folded into ``AUTH``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._reply import Reply

__all__ = ["ServerInfo", "parse_ehlo", "server_info", "offers", "auth_mechanisms", "size_limit"]

#: RFC 5321 ehlo-keyword.
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")

#: RFC 4422 SASL mechanism name: 1 to 20 of upper-case letters, digits,
#: hyphens and underscores (compared after upper-casing).
_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}")

#: A SIZE limit with more digits than this is treated as "no limit": it is
#: beyond any message anyway, and it keeps ``int()`` cheap on a hostile line.
_MAX_SIZE_DIGITS = 20
_SIZE = re.compile(r"[0-9]{1,%d}" % _MAX_SIZE_DIGITS)

_AUTH_EQUALS = "AUTH="


def _merge_words(existing: str, more: str) -> str:
    """Append the upper-cased words of ``more`` not already in ``existing``."""
    words = existing.split()
    seen = set(words)
    for word in more.split():
        word = word.upper()
        if word not in seen:
            seen.add(word)
            words.append(word)
    return " ".join(words)


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """
    The extensions a positive EHLO/LHLO reply announces.

    The first line (the server's name and greeting) is skipped.  Each further
    line maps its upper-cased keyword to the rest of the line after the first
    white space, stripped (``""`` when there is none).  When a keyword is
    repeated the first line wins, except for ``AUTH`` whose mechanisms from
    every ``AUTH`` and ``AUTH=`` line are merged, upper-cased, without
    duplicates, in the order they appear.

    :param reply: the server's reply to EHLO or LHLO.
    :returns: a new dict, e.g. ``{"SIZE": "10240000", "AUTH": "PLAIN LOGIN"}``.
    """
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        word = parts[0]
        rest = parts[1].strip() if len(parts) > 1 else ""
        if word[: len(_AUTH_EQUALS)].upper() == _AUTH_EQUALS:
            rest = f"{word[len(_AUTH_EQUALS):]} {rest}"
            word = "AUTH"
        elif not _KEYWORD.fullmatch(word):
            continue
        keyword = word.upper()
        if keyword == "AUTH":
            extensions["AUTH"] = _merge_words(extensions.get("AUTH", ""), rest)
        elif keyword not in extensions:
            extensions[keyword] = rest
    return extensions


def _lookup(extensions: Mapping[str, str], keyword: str) -> str | None:
    """``extensions[keyword]``, tolerating a mapping not built by :func:`parse_ehlo`."""
    value = extensions.get(keyword)
    if value is not None:
        return value
    for key, candidate in extensions.items():
        if key.upper() == keyword:
            return candidate
    return None


def offers(extensions: Mapping[str, str], keyword: str) -> bool:
    """Whether the server offered ``keyword`` (upper-case), however the keys are cased."""
    return _lookup(extensions, keyword) is not None


def auth_mechanisms(extensions: Mapping[str, str]) -> list[str]:
    """
    The SASL mechanisms the server offers, upper-cased, in its order,
    without duplicates; empty when it does not offer AUTH.  Words that cannot
    be SASL mechanism names are left out.
    """
    value = _lookup(extensions, "AUTH")
    if value is None:
        return []
    mechanisms: list[str] = []
    for word in value.split():
        name = word.upper()
        if _MECHANISM.fullmatch(name) and name not in mechanisms:
            mechanisms.append(name)
    return mechanisms


def size_limit(extensions: Mapping[str, str]) -> int | None:
    """
    The largest message the server accepts (RFC 1870), or ``None`` when it
    declares no limit.

    ``SIZE`` without a parameter, ``SIZE 0`` (RFC 1870: no fixed maximum)
    and any parameter that is not a plain decimal number (or is absurdly
    long) all mean "no declared limit": a bogus advertisement should not
    stop us sending, the server will still refuse what it cannot take.
    """
    value = _lookup(extensions, "SIZE")
    if value is None:
        return None
    words = value.split()
    if not words or not _SIZE.fullmatch(words[0]):
        return None
    limit = int(words[0])
    return limit if limit > 0 else None


@dataclass(frozen=True)
class ServerInfo:
    """
    What the server told us in its hello reply.

    Replaced whole after STARTTLS (RFC 3207 section 4.2: nothing learned in
    cleartext survives the upgrade), never merged.

    :ivar extensions: upper-cased EHLO keyword -> its parameter string.
    :ivar auth_methods: the SASL mechanisms offered, upper-cased, in order.
    :ivar esmtp: whether the server answered EHLO/LHLO (not only HELO).
    """

    extensions: dict[str, str] = field(default_factory=dict)
    auth_methods: list[str] = field(default_factory=list)
    esmtp: bool = False


def server_info(reply: Reply) -> ServerInfo:
    """The :class:`ServerInfo` of a positive EHLO/LHLO reply."""
    extensions = parse_ehlo(reply)
    return ServerInfo(extensions=extensions, auth_methods=auth_mechanisms(extensions), esmtp=True)
