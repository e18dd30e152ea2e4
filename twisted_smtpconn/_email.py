"""
``email.message.Message`` objects (``EmailMessage`` included) as messages:
their envelope read from the headers, their wire form, and what the server
must offer to carry it.

Three separate steps, each usable alone:

- :func:`envelope_from_headers`: the sender and recipients from the
  headers, the way RFC 5322 section 3.6.6 and the standard library's
  ``smtplib.SMTP.send_message`` read them: Sender (else From), and To, Cc
  and Bcc -- or, when the message was resent, the fields of its most recent
  Resent block.  Addresses are parsed by the email package's own header
  parser, so display names (RFC 2047 encoded or not), quoted names with
  commas and groups (``undisclosed-recipients:;``) are handled.
- :func:`prepare_email`: the bytes to send, written by
  :class:`email.generator.BytesGenerator` with CRLF line ends, in the pieces
  the generator writes them (no ``as_bytes()`` copy of the whole message),
  with Bcc and Resent-Bcc left out, and with the facts the transaction needs
  to choose its MAIL parameters: 8-bit body, UTF-8 headers, size.
- :func:`email_parameters`: ``BODY=8BITMIME`` and ``SMTPUTF8`` from what the
  message needs and the server offers, or :class:`MessageError` before
  anything is sent when the server cannot carry the message.

``send_message`` uses :func:`headers_envelope` (the first step, checked
when it is called); the transaction, which knows what the server offers,
uses :func:`fit_to_server` (the other two) before writing ``MAIL``.

The caller's message object is never modified: Bcc is removed from a
shallow copy whose header list is its own.
"""

from __future__ import annotations

import copy
import dataclasses
import email.policy
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import Message
from email.parser import BytesParser
from typing import Any

from ._address import is_dot_atom
from ._ehlo import offers
from ._envelope import Envelope
from ._errors import EnvelopeError, MessageError

__all__ = [
    "PreparedEmail",
    "is_email_message",
    "parse_message_headers",
    "envelope_from_headers",
    "sender_from_headers",
    "recipients_from_headers",
    "without_bcc",
    "prepare_email",
    "prepare_for_server",
    "email_parameters",
    "headers_envelope",
    "fit_to_server",
]

#: Fields never transmitted: they would tell every recipient who got a
#: blind copy.
_BLIND_FIELDS = ("Bcc", "Resent-Bcc")

#: The fields of one Resent block (RFC 5322 3.6.6), lower-case.
_RESENT_FIELDS = frozenset(
    {"resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc", "resent-message-id"}
)

#: A LF not preceded by CR (within one chunk).
_BARE_LF = re.compile(rb"(?<!\r)\n")


def is_email_message(obj: object) -> bool:
    """Whether ``obj`` is an ``email.message.Message`` (``EmailMessage`` included)."""
    return isinstance(obj, Message)


def parse_message_headers(message: object) -> Message:
    """
    ``message`` as a :class:`~email.message.Message`: returned as it is when
    it is one; a ``str`` (encoded as UTF-8) or bytes-like object is parsed
    with the modern policy, headers only, so that the body is sent exactly
    as given.

    :raises TypeError: any other type (a file or an iterable of chunks
        cannot be parsed for headers without consuming it).
    """
    if isinstance(message, Message):
        return message
    if isinstance(message, str):
        data = message.encode("utf-8")
    elif isinstance(message, (bytes, bytearray, memoryview)):
        data = bytes(message)
    else:
        raise TypeError(
            "send_message needs an email.message.Message, str or bytes, not "
            f"{type(message).__name__} (use send(envelope, message) for other message types)"
        )
    return BytesParser(policy=email.policy.default).parsebytes(data, headersonly=True)


def _resent_block(message: Message) -> dict[str, list[Any]]:
    """
    The fields of the most recent Resent block, by lower-case name; empty
    when the message was never resent.

    Resent blocks are prepended, so the first Resent field in the header
    order starts the newest block, which runs until a non-Resent field or
    until a field repeats (the start of the next, older block).
    """
    block: dict[str, list[Any]] = {}
    for name, value in message.items():
        lower = name.lower()
        if lower in _RESENT_FIELDS:
            if lower in block:
                break
            block[lower] = [value]
        elif block:
            break
    return block


def _addresses(values: Iterable[Any]) -> list[str]:
    """
    The addr-specs of address header values, in order, groups flattened.

    Values already parsed by a modern policy carry their addresses; others
    (a ``compat32`` message's strings or :class:`email.header.Header`) are
    parsed by the modern policy's header factory.
    """
    found: list[str] = []
    for value in values:
        parsed: Sequence[Address] | None = getattr(value, "addresses", None)
        if parsed is None:
            parsed = email.policy.default.header_factory("to", str(value)).addresses
        found.extend(_addr_spec(address) for address in parsed if address.addr_spec not in ("", "<>"))
    return found


def _addr_spec(address: Address) -> str:
    """
    The address as an envelope address.  ``Address.addr_spec`` quotes a
    local part only when it holds special characters, not when it is an
    invalid dot-atom such as ``a..b``; the envelope needs it quoted.
    """
    local = address.username
    if local and not is_dot_atom(local):
        escaped = local.replace("\\", "\\\\").replace('"', '\\"')
        local = f'"{escaped}"'
    return f"{local}@{address.domain}" if address.domain else local


def _field_values(message: Message) -> tuple[str, Callable[[str], list[Any]]]:
    """The prefix (``""`` or ``"Resent-"``) and a getter of the fields that count."""
    resent = _resent_block(message)
    if resent:
        return "Resent-", lambda name: resent.get(f"resent-{name.lower()}", [])
    return "", lambda name: list(message.get_all(name, []))


def sender_from_headers(message: Message) -> str:
    """
    The Sender address, else the first From address (Resent-Sender /
    Resent-From of the most recent Resent block when there is one).

    :raises EnvelopeError: none found; the message names the headers.
    """
    prefix, get = _field_values(message)
    senders = _addresses(get("Sender")) or _addresses(get("From"))
    if not senders:
        raise EnvelopeError(
            f"no sender: the message has no {prefix}Sender or {prefix}From header with an address "
            "(add one, or pass mail_from=...)"
        )
    return senders[0]


def recipients_from_headers(message: Message) -> list[str]:
    """
    Every address of To, Cc and Bcc, each once, in that order (their
    Resent- forms of the most recent Resent block when there is one).

    :raises EnvelopeError: none found; the message names the headers.
    """
    prefix, get = _field_values(message)
    recipients: list[str] = []
    for address in _addresses([*get("To"), *get("Cc"), *get("Bcc")]):
        if address not in recipients:
            recipients.append(address)
    if not recipients:
        raise EnvelopeError(
            f"no recipients: the message has no {prefix}To, {prefix}Cc or {prefix}Bcc header with an "
            "address (add one, or pass rcpt_to=...)"
        )
    return recipients


def envelope_from_headers(message: Message) -> tuple[str, list[str]]:
    """
    ``(sender, recipients)`` as the headers give them, the way RFC 5322
    3.6.6 and ``smtplib`` read them: see :func:`sender_from_headers` and
    :func:`recipients_from_headers`.

    :raises EnvelopeError: no sender or no recipient found.
    """
    return sender_from_headers(message), recipients_from_headers(message)


def without_bcc(message: Message) -> Message:
    """
    ``message`` without its Bcc and Resent-Bcc fields; the message itself
    when it has none.

    The copy is shallow (the body, attachments included, is shared, not
    duplicated); deleting a field gives the copy a header list of its own,
    so the caller's object keeps its Bcc.
    """
    if not any(name in message for name in _BLIND_FIELDS):
        return message
    stripped = copy.copy(message)
    for name in _BLIND_FIELDS:
        del stripped[name]
    return stripped


class _ChunkWriter:
    """
    The file object the generator writes to: keeps each piece, with any
    bare LF (from a body given with LF line ends) made CRLF, counting bytes
    and noting 8-bit ones.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.eight_bit = False
        self._last_cr = False

    def write(self, data: bytes) -> int:
        if not data:
            return 0
        if b"\n" in data:
            fixed = _BARE_LF.sub(b"\r\n", data)
            if self._last_cr and data[:1] == b"\n":
                fixed = fixed[1:]
        else:
            fixed = bytes(data)
        self._last_cr = data[-1:] == b"\r"
        self.chunks.append(fixed)
        self.size += len(fixed)
        if not self.eight_bit and not fixed.isascii():
            self.eight_bit = True
        return len(data)


@dataclass(frozen=True, slots=True)
class PreparedEmail:
    """
    An email object in its wire form.

    :ivar chunks: the message as the generator wrote it, CRLF line ends,
        not dot-stuffed, Bcc and Resent-Bcc left out.
    :ivar eight_bit: the body holds 8-bit bytes (``BODY=8BITMIME`` needed).
    :ivar needs_smtputf8: the header section holds raw UTF-8 (a message
        made with ``utf8=True`` policy, or parsed from such bytes): only a
        server offering SMTPUTF8 may carry it (RFC 6532).
    :ivar size: the length in bytes of all chunks together.
    """

    chunks: tuple[bytes, ...]
    eight_bit: bool
    needs_smtputf8: bool
    size: int


def _non_ascii_parts(chunks: Sequence[bytes]) -> tuple[bool, bool]:
    """
    Whether the header section (up to the first empty line) and the body
    hold bytes outside ASCII.  Only the header section is joined, and it is
    small; the body is looked at chunk by chunk.
    """
    head = b""
    for index, chunk in enumerate(chunks):
        head += chunk
        end = 0 if head.startswith(b"\r\n") else head.find(b"\r\n\r\n")
        if end >= 0:
            body_start = end + (2 if end == 0 else 4)
            rest = [head[body_start:], *chunks[index + 1 :]]
            return not head[:body_start].isascii(), not all(part.isascii() for part in rest)
    return not head.isascii(), False


def prepare_email(message: Message, *, seven_bit: bool = False) -> PreparedEmail:
    """
    Serialise ``message`` for DATA or BDAT.

    Written by :class:`~email.generator.BytesGenerator` with the message's
    own policy, its line separator set to CRLF, without mangling ``From``
    lines (SMTP has no mbox to protect) and without Bcc or Resent-Bcc.

    :param seven_bit: re-encode 8-bit text parts as quoted-printable or
        base64 (the policy's ``cte_type="7bit"``), for a server without
        8BITMIME.  Parts the email package cannot re-encode stay 8-bit; the
        result's ``eight_bit`` says so.
    """
    policy = message.policy.clone(linesep="\r\n")
    if seven_bit:
        policy = policy.clone(cte_type="7bit")
    writer = _ChunkWriter()
    BytesGenerator(writer, mangle_from_=False, policy=policy).flatten(without_bcc(message), unixfrom=False)
    chunks = tuple(writer.chunks)
    headers_utf8, body_eight_bit = _non_ascii_parts(chunks) if writer.eight_bit else (False, False)
    return PreparedEmail(chunks, body_eight_bit, headers_utf8, writer.size)


def email_parameters(prepared: PreparedEmail, extensions: Mapping[str, str]) -> tuple[bool, bool]:
    """
    ``(use_8bit_mime, smtputf8)`` for a transaction carrying ``prepared``.

    ``BODY=8BITMIME`` when the body is 8-bit (or the headers are UTF-8,
    which is 8-bit data too); SMTPUTF8 when the headers are UTF-8.

    :param extensions: the server's EHLO keywords.
    :raises MessageError: (``EMESSAGE``) the message needs an extension the
        server does not offer; the message says how to make it fit.
    """
    if prepared.needs_smtputf8 and not offers(extensions, "SMTPUTF8"):
        raise MessageError(
            "the message has UTF-8 header fields, which need SMTPUTF8, and the server does not offer it "
            "(build the message with email.policy.default, not utf8=True, so that its headers are "
            "RFC 2047 encoded)"
        )
    eight_bit = prepared.eight_bit or prepared.needs_smtputf8
    if eight_bit and not offers(extensions, "8BITMIME"):
        raise MessageError(
            "the message body has 8-bit bytes and the server does not offer 8BITMIME "
            "(give the text parts a 7-bit transfer encoding, e.g. quoted-printable or base64)"
        )
    return eight_bit, prepared.needs_smtputf8


def prepare_for_server(message: Message, extensions: Mapping[str, str]) -> tuple[PreparedEmail, bool, bool]:
    """
    :func:`prepare_email` and :func:`email_parameters` together: the wire
    form, ``use_8bit_mime`` and ``smtputf8``.  When the server does not
    offer 8BITMIME, 8-bit text parts are re-encoded as 7-bit first, so
    that only a message that cannot be made 7-bit fails.

    :raises MessageError: as :func:`email_parameters`.
    """
    prepared = prepare_email(message)
    if prepared.eight_bit and not offers(extensions, "8BITMIME"):
        prepared = prepare_email(message, seven_bit=True)
    use_8bit_mime, smtputf8 = email_parameters(prepared, extensions)
    return prepared, use_8bit_mime, smtputf8


def headers_envelope(
    message: object,
    *,
    mail_from: str | None,
    rcpt_to: str | Iterable[str] | None,
    envelope_options: Mapping[str, Any],
) -> tuple[Envelope, Message]:
    """
    The envelope ``send_message`` uses and the message as an email object.

    The sender and recipients come from the headers where ``mail_from`` /
    ``rcpt_to`` are ``None`` (:func:`envelope_from_headers`); the encoding
    (``BODY=8BITMIME``, SMTPUTF8, a 7-bit re-encoding) and the size are
    decided when the message is sent, from what the server offers
    (:func:`fit_to_server`).

    :raises TypeError: ``message`` is not an email object, ``str`` or
        bytes, or an unknown or wrongly typed option.
    :raises EnvelopeError: no sender or recipient in the headers, or an
        unusable address.
    """
    unknown = sorted(set(envelope_options) - {"size", "use_8bit_mime", "dsn", "smtputf8", "require_tls"})
    if unknown:
        raise TypeError(f"send_message() got unexpected keyword argument(s): {', '.join(unknown)}")
    parsed = parse_message_headers(message)
    if mail_from is None:
        mail_from = sender_from_headers(parsed)
    if rcpt_to is None:
        rcpt_to = recipients_from_headers(parsed)
    return Envelope(mail_from, rcpt_to, **envelope_options), parsed


def fit_to_server(envelope: Envelope, message: Message, extensions: Mapping[str, str]) -> tuple[Envelope, PreparedEmail]:
    """
    The envelope and wire form for sending ``message`` to a server that
    offered ``extensions``: ``BODY=8BITMIME`` and SMTPUTF8 switched on when
    the message needs them (8-bit text re-encoded as 7-bit when the server
    has no 8BITMIME), ``SIZE`` set when the caller gave none.

    :raises MessageError: the server cannot carry the message, or
        ``smtputf8=False`` was asked for a message with UTF-8 headers.
    """
    prepared, use_8bit_mime, smtputf8 = prepare_for_server(message, extensions)
    if smtputf8 and envelope.smtputf8 is False:
        raise MessageError("smtputf8 is False but the message has UTF-8 header fields, which need SMTPUTF8")
    if (
        (use_8bit_mime and not envelope.use_8bit_mime)
        or (smtputf8 and envelope.smtputf8 is None)
        or envelope.size is None
    ):
        envelope = dataclasses.replace(
            envelope,
            use_8bit_mime=envelope.use_8bit_mime or use_8bit_mime,
            smtputf8=True if smtputf8 else envelope.smtputf8,
            size=prepared.size if envelope.size is None else envelope.size,
        )
    return envelope, prepared
