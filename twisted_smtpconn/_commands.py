"""
Rendering of the command lines whose arguments come from outside: the
hello, ``MAIL FROM`` and ``RCPT TO``; the checks that decide, before MAIL,
whether the transaction can be sent at all (SMTPUTF8, REQUIRETLS); and the
one place where a command is turned into loggable text with its credentials
hidden.

An internationalised domain is written as A-labels (IDNA, ``xn--``) when
the transaction does not use SMTPUTF8, so that ``user@bücher.example``
reaches a server without SMTPUTF8; only a non-ASCII *local part* needs
SMTPUTF8.

Commands are returned as ``bytes`` without the final CRLF.  The values in
them were already checked (:mod:`twisted_smtpconn._envelope`,
:func:`validate_client_name`), and every rendered line is checked once more
for CR, LF and NUL before it is returned: a line that could carry a second
command must never reach the wire, whatever bug let it be built.

Parameters are only added for extensions the server offered in its EHLO
reply; ``extensions`` is the mapping from
:func:`twisted_smtpconn._ehlo.parse_ehlo` (upper-cased keywords).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from ._address import ascii_domain_address
from ._ehlo import offers
from ._envelope import DSN, Envelope
from ._errors import EnvelopeError, TLSError
from ._xtext import xtext_encode

__all__ = [
    "validate_client_name",
    "ehlo_command",
    "use_smtputf8",
    "check_require_tls",
    "mail_from_command",
    "rcpt_to_command",
    "redact_auth_command",
]

_HELLO_VERBS = frozenset({"EHLO", "HELO", "LHLO"})

#: A domain label (RFC 5321 sub-domain): letters, digits and inner hyphens.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_MAX_DOMAIN = 255

#: BODY= values (RFC 6152, RFC 3030) and anything else shaped like one.
_BODY_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")

_UNSAFE = (b"\r", b"\n", b"\x00")

#: RFC 1870: ``size-value ::= 1*20DIGIT``.
_SIZE_VALUE_LIMIT = 10**20


def validate_client_name(name: str) -> str:
    """
    Check the name we give in EHLO/HELO/LHLO and return it unchanged.

    It must be a domain (ASCII letters, digits and hyphens, labels of 1 to
    63 characters not starting or ending with a hyphen, at most 255
    characters, one final dot allowed) or an address literal: ``[192.0.2.1]``
    or ``[IPv6:2001:db8::1]`` (RFC 5321 4.1.3).

    :raises TypeError: ``name`` is not a ``str``.
    :raises ValueError: anything else: spaces, control characters, a
        non-ASCII (not punycode-encoded) name, a bad address literal.
    """
    if not isinstance(name, str):
        raise TypeError(f"the client name must be a str, not {type(name).__name__}")
    if name.startswith("[") and name.endswith("]"):
        literal = name[1:-1]
        try:
            if literal[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            raise ValueError(f"the client name is not a valid address literal: {name!r}") from None
        return name
    domain = name[:-1] if name.endswith(".") else name
    if (
        not domain
        or len(domain) > _MAX_DOMAIN
        or not domain.isascii()
        or not all(_LABEL.fullmatch(label) for label in domain.split("."))
    ):
        raise ValueError(f"the client name must be a domain or an address literal, not {name!r}")
    return name


def _guarded(line: bytes, error: type[Exception] = EnvelopeError) -> bytes:
    """The final check before a line leaves this module."""
    for byte in _UNSAFE:
        if byte in line:
            raise error(f"refusing to build a command line containing {byte!r}: {line!r}")
    return line


def ehlo_command(verb: str, name: str) -> bytes:
    """
    ``b"EHLO name"`` (or HELO, LHLO).

    :raises ValueError: an unknown verb or a bad name (see
        :func:`validate_client_name`).
    """
    upper = verb.upper() if isinstance(verb, str) else verb
    if upper not in _HELLO_VERBS:
        raise ValueError(f"the hello verb must be EHLO, HELO or LHLO, not {verb!r}")
    return _guarded(f"{upper} {validate_client_name(name)}".encode("ascii"), ValueError)


def use_smtputf8(envelope: Envelope, extensions: Mapping[str, str]) -> bool:
    """
    Whether this transaction uses SMTPUTF8 (RFC 6531).

    ``envelope.smtputf8`` ``True`` requires it, ``False`` refuses it, and
    ``None`` uses it when an address is non-ASCII and the server offers it.
    Without SMTPUTF8 a non-ASCII domain goes as A-labels; only a non-ASCII
    local part has no ASCII form and cannot be sent.

    :raises EnvelopeError: SMTPUTF8 is needed (a non-ASCII local part) or
        required but the server does not offer it, or it is refused but a
        local part is non-ASCII.
    """
    offered = offers(extensions, "SMTPUTF8")
    needed = envelope.needs_smtputf8
    if envelope.smtputf8 is False:
        if needed:
            raise EnvelopeError(
                f"smtputf8 is False but the local part of an address is not ASCII: "
                f"{_non_ascii_locals(envelope)!r}"
            )
        return False
    if envelope.smtputf8:
        if not offered:
            raise EnvelopeError("smtputf8 is True but the server does not offer SMTPUTF8")
        return True
    if needed and not offered:
        raise EnvelopeError(
            "the server does not offer SMTPUTF8, needed for the non-ASCII local part(s) of: "
            f"{_non_ascii_locals(envelope)!r}"
        )
    return offered and envelope.has_non_ascii


def _non_ascii_locals(envelope: Envelope) -> list[str]:
    """The addresses that have no ASCII form (a non-ASCII local part)."""
    return [
        address for address in (envelope.mail_from, *envelope.rcpt_to) if not ascii_domain_address(address).isascii()
    ]


def check_require_tls(envelope: Envelope, extensions: Mapping[str, str], *, tls_verified: bool) -> None:
    """
    Refuse, before MAIL, a REQUIRETLS transaction (RFC 8689) that this
    session cannot honour.

    RFC 8689 section 4.1 lets a client send REQUIRETLS only over TLS whose
    certificate it verified, and only to a server that offers the extension;
    anything else would silently downgrade the sender's demand, so the send
    fails instead.  Nothing to check when ``envelope.require_tls`` is false.

    :param tls_verified: the session runs over TLS (implicit or STARTTLS)
        and the server's certificate chain and name were verified.
    :raises TLSError: (``ETLS``) REQUIRETLS is asked for and the session is
        not verified TLS, or the server does not offer REQUIRETLS.
    """
    if not envelope.require_tls:
        return
    if not tls_verified:
        error = TLSError(
            "require_tls is set but this session is not TLS with a verified certificate "
            "(REQUIRETLS, RFC 8689, needs one: use STARTTLS or implicit TLS with certificate checks on)"
        )
    elif not offers(extensions, "REQUIRETLS"):
        error = TLSError("require_tls is set but the server does not offer REQUIRETLS (RFC 8689)")
    else:
        return
    # Nothing was sent: this message cannot go over this session, but the
    # connection is as good as before for one that does not ask for it.
    error.closes_connection = False
    raise error


#: What may never stand inside ``<...>`` of a path: it would end the path
#: and let the rest be read as parameters or commands.
_PATH_BREAKERS = re.compile(r"[<>\s\x00-\x1f\x7f]")


def _path_address(address: str, field: str, *, allow_empty: bool = False) -> str:
    """``address`` without one pair of surrounding ``<>``, safe inside a path."""
    if len(address) >= 2 and address[0] == "<" and address[-1] == ">":
        address = address[1:-1]
    if not address and not allow_empty:
        raise EnvelopeError(f"{field} is empty")
    if _PATH_BREAKERS.search(address) is not None:
        raise EnvelopeError(f"{field} holds characters that would end the path: {address!r}")
    return address


def _path(verb: str, address: str, smtputf8: bool, field: str) -> bytes:
    """
    ``VERB:<address>`` as bytes: UTF-8 with SMTPUTF8, else ASCII with the
    domain as A-labels.
    """
    if smtputf8:
        return f"{verb}:<{address}>".encode("utf-8")
    try:
        return f"{verb}:<{ascii_domain_address(address)}>".encode("ascii")
    except UnicodeError:
        raise EnvelopeError(f"{field} is not ASCII and SMTPUTF8 is not used: {address!r}") from None


def mail_from_command(envelope: Envelope, extensions: Mapping[str, str], *, body: str | None = None) -> bytes:
    """
    ``b"MAIL FROM:<sender>"`` with the parameters the server supports, in
    this order: ``SIZE=`` (SIZE offered and ``envelope.size`` known),
    ``BODY=8BITMIME`` (``envelope.use_8bit_mime`` and 8BITMIME offered),
    ``SMTPUTF8`` (see :func:`use_smtputf8`), ``REQUIRETLS``
    (``envelope.require_tls``), ``RET=`` and ``ENVID=`` (DSN offered).
    UTF-8 encoded when SMTPUTF8 is used, else ASCII with an internationalised
    domain as A-labels.

    :param body: a ``BODY=`` value to send instead, e.g. ``"BINARYMIME"``
        for BDAT (RFC 3030); the caller has checked that the server offers
        it.
    :raises EnvelopeError: see :func:`use_smtputf8`.
    :raises TLSError: ``envelope.require_tls`` and the server does not offer
        REQUIRETLS (the caller should have run :func:`check_require_tls`
        first, which also checks the TLS session; this is the last guard
        against a MAIL that would silently drop the demand).
    :raises ValueError: ``body`` is not a plausible BODY value.
    """
    smtputf8 = use_smtputf8(envelope, extensions)
    params: list[str] = []
    if envelope.size is not None and offers(extensions, "SIZE"):
        if envelope.size >= _SIZE_VALUE_LIMIT:
            raise EnvelopeError(
                f"size {envelope.size} cannot be sent: RFC 1870's SIZE= takes at most 20 digits"
            )
        params.append(f"SIZE={envelope.size}")
    if body is not None:
        if not isinstance(body, str) or not _BODY_VALUE.fullmatch(body):
            raise ValueError(f"body must be a BODY= keyword such as 'BINARYMIME', not {body!r}")
        params.append(f"BODY={body.upper()}")
    elif envelope.use_8bit_mime and offers(extensions, "8BITMIME"):
        params.append("BODY=8BITMIME")
    if smtputf8:
        params.append("SMTPUTF8")
    if envelope.require_tls:
        if not offers(extensions, "REQUIRETLS"):
            raise TLSError("require_tls is set but the server does not offer REQUIRETLS (RFC 8689)")
        params.append("REQUIRETLS")
    dsn = envelope.dsn
    if dsn is not None and offers(extensions, "DSN"):
        if dsn.ret is not None:
            params.append(f"RET={dsn.ret}")
        if dsn.envid is not None:
            params.append(f"ENVID={xtext_encode(dsn.envid)}")
    # The Envelope checked its addresses' syntax when it was made; here only
    # that nothing in them can end the path (what a tampered envelope could
    # smuggle), which costs one search rather than a parse per send.
    address = _path_address(envelope.mail_from, "mail_from", allow_empty=True)
    line = _path("MAIL FROM", address, smtputf8, "mail_from")
    if params:
        line += b" " + " ".join(params).encode("ascii")
    return _guarded(line)


def rcpt_to_command(address: str, dsn: DSN | None, extensions: Mapping[str, str], *, smtputf8: bool) -> bytes:
    """
    ``b"RCPT TO:<address>"``, with ``NOTIFY=`` and ``ORCPT=`` when the server
    offers DSN.

    :param smtputf8: whether the transaction uses SMTPUTF8 (the result of
        :func:`use_smtputf8` for its envelope).
    :param address: an address an :class:`Envelope` checked (surrounding
        ``<>`` are removed).
    :raises EnvelopeError: the address is empty or holds what would end
        the path (``<``, ``>``, white space, control characters), or its
        local part is non-ASCII without SMTPUTF8 (a non-ASCII domain is sent
        as A-labels).
    """
    line = _path("RCPT TO", _path_address(address, "rcpt_to"), smtputf8, "rcpt_to")
    params: list[str] = []
    if dsn is not None and offers(extensions, "DSN"):
        if dsn.notify is not None:
            params.append("NOTIFY=" + ",".join(dsn.notify))
        orcpt = dsn.orcpt_parameter
        if orcpt is not None:
            params.append(f"ORCPT={orcpt}")
    if params:
        line += b" " + " ".join(params).encode("ascii")
    return _guarded(line)


def redact_auth_command(line: bytes) -> str:
    """
    A command as text for logs and error messages, credentials hidden.

    ``AUTH <mechanism> <initial response>`` becomes ``AUTH <mechanism>
    ****``; the SASL continuation lines that follow carry no verb, so the
    caller, which knows it is in an AUTH exchange, redacts those itself.
    Every other command is decoded as UTF-8 (invalid bytes replaced).
    """
    text = bytes(line).decode("utf-8", "replace")
    parts = text.split(None, 2)
    if len(parts) == 3 and parts[0].upper() == "AUTH":
        return f"{parts[0]} {parts[1]} ****"
    return text
