"""
The syntax of one envelope address (RFC 5321 section 4.1.2 ``Mailbox``,
widened by RFC 6531 to UTF-8) and its internationalised domain in A-labels.

An address that a server would refuse with ``501`` (``"no-at-sign"``,
``"a@@b"``) or, worse, take for something else (``"a@x,b@x"`` as one
recipient, ``"Name <a@b>"`` copied from a header) is found here, before
anything is sent, and the error says how to write it instead.

What is checked:

- the local part is a dot-atom (``john.smith``) or a quoted string
  (``"john..smith"``, ``"a b"``); UTF-8 is allowed in both (RFC 6531),
  whether it can be *sent* is decided later, from the server's SMTPUTF8;
- the domain is a host name of letters, digits and inner hyphens (an
  internationalised one must be valid IDNA 2008 with UTS 46 mapping, so that
  it has an A-label form for servers without SMTPUTF8), or an address
  literal ``[192.0.2.1]`` / ``[IPv6:2001:db8::1]``.

Control characters, length limits and the surrounding ``<>`` are handled by
the caller, :func:`twisted_smtpconn._envelope.check_address`; this module
only sees the bare address.
"""

from __future__ import annotations

import ipaddress
import re

import idna

__all__ = ["mailbox_problem", "split_mailbox", "ascii_domain_address", "is_dot_atom"]

#: RFC 5322 atext, plus every non-ASCII character (RFC 6531 UTF8-non-ascii;
#: controls and lone surrogates are refused before this is used).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+")
#: An ASCII domain label (RFC 5321 sub-domain): letters, digits, inner hyphens.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
#: A "Name <address>" or "<address>" form: the address between the brackets.
_NAME_ADDR = re.compile(r"^.*<([^<>]*)>\s*$", re.DOTALL)
#: RFC 5321 4.5.3.1.2: a domain is at most 255 octets.
_MAX_DOMAIN_OCTETS = 255


def _quoted_end(address: str) -> int | None:
    """
    The index of the quote that closes the quoted local part starting at
    index 0, or ``None`` when it is not closed.

    RFC 5321 quoted-pairSMTP: a backslash quotes exactly one printable ASCII
    character or space.
    """
    index = 1
    while index < len(address):
        char = address[index]
        if char == "\\":
            if index + 1 >= len(address) or not " " <= address[index + 1] <= "~":
                return None
            index += 2
            continue
        if char == '"':
            return index
        index += 1
    return None


def is_dot_atom(local: str) -> bool:
    """Whether ``local`` is a dot-atom: atoms (UTF-8 allowed) joined by single dots."""
    return all(_ATOM.fullmatch(part) for part in local.split("."))


def split_mailbox(address: str) -> tuple[str, str]:
    """
    ``(local part, domain)`` of a syntactically valid bare address, split
    at the ``@`` that ends the local part (a quoted local part may hold
    ``@`` itself).  Call it only on an address :func:`mailbox_problem`
    accepted with a domain.
    """
    if address.startswith('"'):
        end = _quoted_end(address)
        if end is not None:
            return address[: end + 1], address[end + 2 :]
    local, _, domain = address.partition("@")
    return local, domain


def _domain_problem(domain: str) -> str | None:
    if not domain:
        return "has no domain after '@': give a full address such as 'user@example.com'"
    if domain.startswith("["):
        literal = domain[1:-1] if domain.endswith("]") else None
        try:
            if literal is None:
                raise ValueError(literal)
            if literal[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return (
                f"has an invalid address literal {domain!r}: write an IPv4 address as "
                "'[192.0.2.1]' and an IPv6 address as '[IPv6:2001:db8::1]'"
            )
        return None
    if len(domain.encode("utf-8")) > _MAX_DOMAIN_OCTETS:
        return f"has a domain longer than {_MAX_DOMAIN_OCTETS} octets"
    labels = domain.split(".")
    if domain.isascii():
        if all(_LABEL.fullmatch(label) for label in labels):
            return None
        return (
            f"has an invalid domain {domain!r}: a domain is labels of letters, digits and "
            "inner hyphens (1 to 63 characters) joined by single dots, without a final dot"
        )
    if any(not label for label in labels):
        return f"has an invalid domain {domain!r}: an empty label (a leading, trailing or doubled dot)"
    try:
        encoded = idna.encode(domain, uts46=True)
    except idna.IDNAError as error:
        return f"has an invalid internationalised domain {domain!r} ({error})"
    if len(encoded) > _MAX_DOMAIN_OCTETS:
        return f"has a domain longer than {_MAX_DOMAIN_OCTETS} octets in its ASCII (A-label) form"
    return None


def mailbox_problem(address: str, *, postmaster: bool = False) -> str | None:
    """
    What is wrong with ``address`` as an RFC 5321 Mailbox, as the end of an
    error message that tells how to fix it, or ``None`` when it is valid.

    :param address: a bare, non-empty address without control characters.
    :param postmaster: accept the bare ``Postmaster`` (any case), the one
        recipient RFC 5321 4.1.1.3 allows without a domain.
    """
    quoted_end = _quoted_end(address) if address.startswith('"') else None
    unquoted = address if quoted_end is None else address[quoted_end + 1 :]
    if "<" in unquoted or ">" in unquoted:
        match = _NAME_ADDR.match(address)
        inner = match.group(1).strip() if match is not None else ""
        example = repr(inner) if inner else "'a@example.com'"
        return f"is not a bare address: give the bare address {example}, not 'Name <a@b>'"

    if address.startswith('"'):
        end = _quoted_end(address)
        if end is None:
            return "has an unterminated quoted local part (a '\"' without its closing '\"')"
        local, rest = address[: end + 1], address[end + 1 :]
        if not rest.startswith("@"):
            return "has text between the quoted local part and '@'"
        domain = rest[1:]
    else:
        local, at, domain = address.partition("@")
        if "," in address or ";" in address:
            parts = [part.strip() for part in re.split(r"[,;]", address) if part.strip()]
            return f"holds more than one address: one address per recipient: split it into {parts!r}"
        if any(char.isspace() for char in address):
            return "contains white space (a local part with spaces must be quoted: '\"john smith\"@example.com')"
        if not at:
            if postmaster and address.lower() == "postmaster":
                return None
            return "has no '@': give a full address such as 'user@example.com'"
        if not local:
            return "has an empty local part before '@'"
        if not is_dot_atom(local):
            return (
                f"has a local part {local!r} that is neither a dot-atom nor a quoted string "
                "(a leading, trailing or doubled dot, or one of ()<>[]:;@\\,\" outside quotes): "
                "quote it, e.g. '\"john..smith\"@example.com'"
            )
        if "@" in domain:
            return (
                "has more than one '@': a local part holding '@' must be quoted, "
                "e.g. '\"a@b\"@example.com'"
            )
    if any(char.isspace() for char in domain):
        return "contains white space in its domain"
    return _domain_problem(domain)


def ascii_domain_address(address: str) -> str:
    """
    ``address`` with an internationalised domain written as A-labels
    (``user@bücher.example`` -> ``user@xn--bcher-kva.example``), so that it
    can be sent to a server without SMTPUTF8.  ASCII domains and address
    literals are returned unchanged; the local part is never touched.

    :param address: an address :func:`mailbox_problem` accepted.
    :raises idna.IDNAError: the domain has no A-label form (not for an
        address that passed :func:`mailbox_problem`).
    """
    if "@" not in address:
        return address
    local, domain = split_mailbox(address)
    if domain.isascii():
        return address
    return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
