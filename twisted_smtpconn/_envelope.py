"""
The envelope of one message: sender, recipients and the ESMTP options that
go with them (SIZE, BODY=8BITMIME, SMTPUTF8, DSN, REQUIRETLS).

An :class:`Envelope` is checked completely when it is built, so that an
unusable one fails with ``EENVELOPE`` before anything is sent, never half
way through a transaction.  The checks that matter most are the ones that
keep every value inside its command line: an address or DSN value with a
CR, LF or NUL would otherwise let a caller's input (often a web form's) end
our ``MAIL FROM`` and start commands of its own.  Addresses must also be
RFC 5321 mailboxes (:mod:`twisted_smtpconn._address`), so that ``"a@x,b@x"``
or ``"Name <a@b>"`` fail here with advice rather than at the server with a
501.

Wrong *types* (``size="x"``, ``rcpt_to=5``) are programming errors and raise
``TypeError``; unusable *values* raise
:class:`~twisted_smtpconn._errors.EnvelopeError`, whose message names the
field and shows the value with ``repr()``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType

from ._address import mailbox_problem, split_mailbox
from ._errors import EnvelopeError
from ._xtext import utf8_addr_xtext, xtext_encode

__all__ = ["DSN", "Envelope", "coerce_dsn", "coerce_envelope", "check_address", "NOTIFY_VALUES", "RET_VALUES"]

#: RFC 5321 4.5.3.1.1: at most 64 octets of local part.
MAX_LOCAL_PART_OCTETS = 64
#: RFC 5321 4.5.3.1.3: a path is at most 256 octets, angle brackets included.
MAX_ADDRESS_OCTETS = 254
#: RFC 3461 4.4: an ENVID is at most 100 characters.
MAX_ENVID_CHARS = 100
#: RFC 3461 4.2: an ORCPT value is at most 500 characters.
MAX_ORCPT_CHARS = 500

#: The values of DSN's RET= (RFC 3461 4.3).
RET_VALUES = frozenset({"FULL", "HDRS"})
#: The values of DSN's NOTIFY= (RFC 3461 4.1).
NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})

#: Characters that may never appear in an envelope value: C0 controls (CR,
#: LF, NUL, TAB...), DEL, C1 controls and lone surrogates (which cannot even
#: be encoded as UTF-8).
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

#: An ORCPT address type (RFC 3461 addr-type, restricted to what registered
#: types look like: "rfc822", "utf-8", "x400", "unknown").
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")

#: How much of a bad value an error message shows.
_SHOWN_CHARS = 300


def _shown(value: object) -> str:
    """``repr(value)``, cut short for absurdly long strings."""
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"
    return repr(value)


def _invalid(field: str, value: object, problem: str) -> EnvelopeError:
    return EnvelopeError(f"{field} {problem}: {_shown(value)}")


def _check_chars(field: str, value: str, text: str) -> None:
    match = _FORBIDDEN.search(text)
    if match is None:
        return
    char = match.group()
    if "\ud800" <= char <= "\udfff":
        raise _invalid(field, value, "contains a lone surrogate")
    raise _invalid(field, value, f"contains the control character {char!r}")


def check_address(field: str, value: object, *, allow_empty: bool = False, postmaster: bool = False) -> str:
    """
    Check one envelope address and return it without surrounding ``<>``.

    One pair of angle brackets around the whole address is removed (callers
    often copy ``<a@example.com>`` from a header); what remains must be an
    RFC 5321 Mailbox (see :mod:`twisted_smtpconn._address`): a dot-atom or
    quoted local part, ``@``, and a domain or an address literal, without
    control characters, within RFC 5321's limits of 64 octets of local part
    and 254 octets in all.  Non-ASCII addresses are accepted here; whether
    they can be sent depends on the server's SMTPUTF8 (see
    :func:`twisted_smtpconn._commands.use_smtputf8`).

    :param field: the name shown in errors, e.g. ``"rcpt_to[2]"``.
    :param allow_empty: whether ``""`` (the null reverse-path) is allowed.
    :param postmaster: whether the bare ``Postmaster`` is allowed (a
        recipient, RFC 5321 4.1.1.3).
    :raises TypeError: ``value`` is not a ``str``.
    :raises EnvelopeError: the address is unusable; the message says how to
        write it instead.
    """
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, not {type(value).__name__}")
    address = value
    if len(address) >= 2 and address[0] == "<" and address[-1] == ">":
        address = address[1:-1]
    if not address:
        if allow_empty:
            return ""
        raise _invalid(field, value, "is empty")
    _check_chars(field, value, address)
    problem = mailbox_problem(address, postmaster=postmaster)
    if problem is not None:
        raise _invalid(field, value, problem)
    local = split_mailbox(address)[0] if "@" in address else address
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        raise _invalid(field, value, f"has a local part longer than {MAX_LOCAL_PART_OCTETS} octets")
    if len(address.encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise _invalid(field, value, f"is longer than {MAX_ADDRESS_OCTETS} octets")
    return address


def _optional_text(field: str, value: object) -> str | None:
    """``None`` and ``""`` both mean "not set"; anything else must be a str."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str or None, not {type(value).__name__}")
    if not value:
        return None
    _check_chars(field, value, value)
    return value


def _check_ret(value: object) -> str | None:
    ret = _optional_text("dsn.ret", value)
    if ret is None:
        return None
    if ret.upper() not in RET_VALUES:
        raise _invalid("dsn.ret", value, "must be 'FULL' or 'HDRS'")
    return ret.upper()


def _check_envid(value: object) -> str | None:
    envid = _optional_text("dsn.envid", value)
    if envid is None:
        return None
    # RFC 3461 4.4: printable US-ASCII (graphic and white space).
    if not envid.isascii():
        raise _invalid("dsn.envid", value, "must be printable ASCII")
    if len(envid) > MAX_ENVID_CHARS:
        raise _invalid("dsn.envid", value, f"is longer than {MAX_ENVID_CHARS} characters")
    return envid


def _check_notify(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    items: list[object]
    if isinstance(value, str):
        if not value.strip():
            return None
        items = list(value.split(","))
    elif isinstance(value, (bytes, bytearray, memoryview, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(
            f"dsn.notify must be a list of str or a comma-separated str, not {type(value).__name__}"
        )
    else:
        items = list(value)
        if not items:
            return None
    notify: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"dsn.notify items must be str, not {type(item).__name__}")
        _check_chars("dsn.notify", item, item)
        word = item.strip().upper()
        if word not in NOTIFY_VALUES:
            raise _invalid("dsn.notify", item, "must be NEVER, SUCCESS, FAILURE or DELAY")
        if word not in notify:
            notify.append(word)
    if "NEVER" in notify and len(notify) > 1:
        raise _invalid("dsn.notify", value, "may not combine NEVER with other values")
    return tuple(notify)


def _split_orcpt(orcpt: str) -> tuple[str, str]:
    """``(address type, address)``; the type is ``"rfc822"`` when none is given."""
    addr_type, separator, address = orcpt.partition(";")
    if separator and _ADDR_TYPE.fullmatch(addr_type):
        return addr_type, address
    return "rfc822", orcpt


def _orcpt_parameter(orcpt: str) -> str:
    """
    The ORCPT parameter value: ``type;encoded-address``.

    The address, without surrounding ``<>``, is xtext-encoded.  A non-ASCII
    address of type ``rfc822`` (which RFC 3461 defines as ASCII) and any
    address of type ``utf-8`` use RFC 6533's ``utf-8`` type and its ASCII
    encoding, so ORCPT never needs SMTPUTF8 by itself.
    """
    addr_type, address = _split_orcpt(orcpt)
    if len(address) >= 2 and address[0] == "<" and address[-1] == ">":
        # RFC 3461 carries the bare address, as in "rfc822;bob@example.com".
        address = address[1:-1]
    kind = addr_type.lower()
    if kind == "utf-8" or (kind == "rfc822" and not address.isascii()):
        return "utf-8;" + utf8_addr_xtext(address)
    return f"{addr_type};{xtext_encode(address)}"


def _check_orcpt(value: object) -> str | None:
    orcpt = _optional_text("dsn.orcpt", value)
    if orcpt is None:
        return None
    if _split_orcpt(orcpt)[1] in ("", "<>"):
        raise _invalid("dsn.orcpt", value, "has no address")
    if len(_orcpt_parameter(orcpt)) > MAX_ORCPT_CHARS:
        raise _invalid("dsn.orcpt", value, f"is longer than {MAX_ORCPT_CHARS} characters once encoded")
    return orcpt


@dataclass(frozen=True, slots=True, init=False)
class DSN:
    """
    Delivery status notification options (RFC 3461), sent only when the
    server offers DSN.

    ``None`` and ``""`` (or an empty list for ``notify``) mean "not set".

    :ivar ret: ``"FULL"`` (return the whole message) or ``"HDRS"`` (headers
        only); accepted in any case, stored upper-case.
    :ivar envid: the sender's envelope identifier, printable ASCII, at most
        100 characters; xtext-encoded on the wire.
    :ivar notify: when to report: ``("NEVER",)`` or any of ``"SUCCESS"``,
        ``"FAILURE"``, ``"DELAY"``; given as a list or a comma-separated
        string, stored upper-case without duplicates.
    :ivar orcpt: the original recipient, stored as given; sent as
        :attr:`orcpt_parameter`.
    """

    ret: str | None
    envid: str | None
    notify: tuple[str, ...] | None
    orcpt: str | None

    def __init__(
        self,
        ret: str | None = None,
        envid: str | None = None,
        notify: str | Iterable[str] | None = None,
        orcpt: str | None = None,
    ) -> None:
        object.__setattr__(self, "ret", _check_ret(ret))
        object.__setattr__(self, "envid", _check_envid(envid))
        object.__setattr__(self, "notify", _check_notify(notify))
        object.__setattr__(self, "orcpt", _check_orcpt(orcpt))

    @property
    def orcpt_parameter(self) -> str | None:
        """
        The value for ``ORCPT=``: the address type (``rfc822`` when
        :attr:`orcpt` has none), ``;`` and the encoded address; ``None``
        without an orcpt.
        """
        return None if self.orcpt is None else _orcpt_parameter(self.orcpt)


_DSN_KEYS = frozenset({"ret", "envid", "notify", "orcpt"})


def coerce_dsn(value: DSN | Mapping[str, object] | None) -> DSN | None:
    """
    A :class:`DSN` from a ``DSN``, a mapping with the same keys, or ``None``.

    :raises TypeError: another type, or a mapping with an unknown key.
    :raises EnvelopeError: a value is unusable.
    """
    if value is None or isinstance(value, DSN):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"dsn must be a DSN, a mapping or None, not {type(value).__name__}")
    unknown = [key for key in value if key not in _DSN_KEYS]
    if unknown:
        raise TypeError(f"unknown dsn key(s): {', '.join(repr(key) for key in unknown)}")
    return DSN(
        ret=value.get("ret"),  # type: ignore[arg-type]
        envid=value.get("envid"),  # type: ignore[arg-type]
        notify=value.get("notify"),  # type: ignore[arg-type]
        orcpt=value.get("orcpt"),  # type: ignore[arg-type]
    )


def _check_recipients(value: object) -> tuple[str, ...]:
    items: list[object]
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, (bytes, bytearray, memoryview, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"rcpt_to must be a str or an iterable of str, not {type(value).__name__}")
    else:
        items = list(value)
    if not items:
        raise EnvelopeError(f"rcpt_to has no recipients: {_shown(value)}")
    return tuple(check_address(f"rcpt_to[{index}]", item, postmaster=True) for index, item in enumerate(items))


@dataclass(frozen=True, slots=True, init=False)
class Envelope:
    """
    Who a message is from and to, and how it is to be sent.

    :ivar mail_from: the sender (reverse-path); ``""`` is the null sender
        ``<>`` of bounces.  Surrounding ``<>`` given by the caller are
        removed.
    :ivar rcpt_to: the recipients, at least one; given as one ``str`` or an
        iterable of them.
    :ivar size: the message size in bytes, sent as ``SIZE=`` when the
        server offers SIZE; ``None`` if unknown.
    :ivar use_8bit_mime: send ``BODY=8BITMIME`` when the server offers it.
    :ivar dsn: delivery status notification options, given as a
        :class:`DSN` or a mapping with its keys.
    :ivar smtputf8: ``True`` to require SMTPUTF8, ``False`` to refuse it,
        ``None`` to use it exactly when an address is non-ASCII.
    :ivar binary: the message is binary content (RFC 3030 BINARYMIME): it
        is sent byte for byte, line ends untouched, as BDAT chunks with
        ``BODY=BINARYMIME``.  The server must offer CHUNKING and BINARYMIME,
        else the send fails with ``EENVELOPE`` before anything is sent.
    :ivar require_tls: send ``REQUIRETLS`` on MAIL (RFC 8689): every server
        on the way must relay the message over verified TLS, or return it.
        The send fails with ``ETLS`` before MAIL when this session cannot
        honour it (not TLS with a verified certificate, or the server does
        not offer REQUIRETLS).
    """

    mail_from: str
    rcpt_to: tuple[str, ...]
    size: int | None
    use_8bit_mime: bool
    dsn: DSN | None
    smtputf8: bool | None
    binary: bool
    require_tls: bool

    def __init__(
        self,
        mail_from: str,
        rcpt_to: str | Iterable[str],
        size: int | None = None,
        use_8bit_mime: bool = False,
        dsn: DSN | Mapping[str, object] | None = None,
        smtputf8: bool | None = None,
        binary: bool = False,
        require_tls: bool = False,
    ) -> None:
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int):
                raise TypeError(f"size must be an int or None, not {type(size).__name__}")
            if size < 0:
                raise _invalid("size", size, "must not be negative")
        if not isinstance(use_8bit_mime, bool):
            raise TypeError(f"use_8bit_mime must be a bool, not {type(use_8bit_mime).__name__}")
        if smtputf8 is not None and not isinstance(smtputf8, bool):
            raise TypeError(f"smtputf8 must be a bool or None, not {type(smtputf8).__name__}")
        if not isinstance(binary, bool):
            raise TypeError(f"binary must be a bool, not {type(binary).__name__}")
        if not isinstance(require_tls, bool):
            raise TypeError(f"require_tls must be a bool, not {type(require_tls).__name__}")
        object.__setattr__(self, "mail_from", check_address("mail_from", mail_from, allow_empty=True))
        object.__setattr__(self, "rcpt_to", _check_recipients(rcpt_to))
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "use_8bit_mime", use_8bit_mime)
        object.__setattr__(self, "dsn", coerce_dsn(dsn))
        object.__setattr__(self, "smtputf8", smtputf8)
        object.__setattr__(self, "binary", binary)
        object.__setattr__(self, "require_tls", require_tls)

    def __repr__(self) -> str:
        # ``binary`` and ``require_tls`` are shown only when set, so that
        # the repr of every envelope made before they existed stays what it was.
        shown = [
            f"{item.name}={getattr(self, item.name)!r}"
            for item in fields(self)
            if item.name not in _SHOWN_WHEN_SET or getattr(self, item.name)
        ]
        return f"Envelope({', '.join(shown)})"

    @property
    def has_non_ascii(self) -> bool:
        """Whether an address (local part or domain) is non-ASCII."""
        return not self.mail_from.isascii() or not all(address.isascii() for address in self.rcpt_to)

    @property
    def needs_smtputf8(self) -> bool:
        """
        Whether an address has a non-ASCII local part, so that the
        transaction can only be sent with SMTPUTF8 (RFC 6531).  A non-ASCII
        domain alone does not need it: it can be sent as A-labels (IDNA).
        The DSN's ORCPT never needs it: a non-ASCII one is sent in RFC
        6533's ASCII form.
        """
        return any(
            not split_mailbox(address)[0].isascii() for address in (self.mail_from, *self.rcpt_to)
        )


#: Envelope fields shown in its repr only when true.
_SHOWN_WHEN_SET = frozenset({"binary", "require_tls"})


#: Mapping keys of the envelope: nodemailer's names and our snake_case names.
_ENVELOPE_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "from": "mail_from",
        "mail_from": "mail_from",
        "to": "rcpt_to",
        "rcpt_to": "rcpt_to",
        "size": "size",
        "use8BitMime": "use_8bit_mime",
        "use_8bit_mime": "use_8bit_mime",
        "dsn": "dsn",
        "smtputf8": "smtputf8",
        "binary": "binary",
        "require_tls": "require_tls",
    }
)


def coerce_envelope(value: Envelope | Mapping[str, object]) -> Envelope:
    """
    An :class:`Envelope` from an ``Envelope`` or a mapping.

    The mapping may use nodemailer's keys (``from``, ``to``, ``size``,
    ``use8BitMime``, ``dsn``) or the attribute names (``mail_from``,
    ``rcpt_to``, ``use_8bit_mime``, ``smtputf8``, ``binary``,
    ``require_tls``).  ``from`` is
    required: unlike nodemailer's smtp-connection, a missing sender is not silently taken as the
    null sender ``<>`` (pass ``""`` for that).  A missing ``to`` is an
    envelope without recipients.

    :raises TypeError: not an Envelope or mapping, an unknown or repeated key,
        no ``from``, or a value of the wrong type.
    :raises EnvelopeError: a value is unusable, or there are no recipients.
    """
    if isinstance(value, Envelope):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"envelope must be an Envelope or a mapping, not {type(value).__name__}")
    arguments: dict[str, object] = {}
    for key, item in value.items():
        name = _ENVELOPE_KEYS.get(key) if isinstance(key, str) else None
        if name is None:
            raise TypeError(f"unknown envelope key {key!r}")
        if name in arguments:
            raise TypeError(f"envelope key {key!r} repeats {name!r}")
        arguments[name] = item
    if "mail_from" not in arguments:
        raise TypeError("the envelope has no 'from' (use '' for the null sender)")
    if arguments.get("rcpt_to") is None:
        raise EnvelopeError(f"rcpt_to has no recipients: {_shown(arguments.get('rcpt_to'))}")
    if arguments.get("use_8bit_mime", False) is None:
        # In nodemailer's loose mapping form a null flag is a missing flag.
        del arguments["use_8bit_mime"]
    return Envelope(
        mail_from=arguments["mail_from"],  # type: ignore[arg-type]
        rcpt_to=arguments["rcpt_to"],  # type: ignore[arg-type]
        size=arguments.get("size"),  # type: ignore[arg-type]
        use_8bit_mime=arguments.get("use_8bit_mime", False),  # type: ignore[arg-type]
        dsn=arguments.get("dsn"),  # type: ignore[arg-type]
        smtputf8=arguments.get("smtputf8"),  # type: ignore[arg-type]
        binary=arguments.get("binary", False),  # type: ignore[arg-type]
        require_tls=arguments.get("require_tls", False),  # type: ignore[arg-type]
    )
