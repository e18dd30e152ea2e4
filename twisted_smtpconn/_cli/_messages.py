"""
What ``smtpsend`` sends: message sources and composition.

Three ways of saying what to send -- the flags (``--subject``/``--body``/
``--attach``... or ``--message FILE``), a ``--script`` file, or a
``--spool`` directory of ``.eml`` files -- become one list of :class:`Job`.
Every job is checked here, before anything connects: its envelope is built
with the library's own :class:`~twisted_smtpconn.Envelope` (addresses and
DSN values), every file it names is found, and every header name and value
is checked.  Any mistake is a :class:`usage.UsageError` naming the file and
the entry, so that a script or spool with a bad tenth message sends
nothing at all (exit 64) rather than nine messages and a failure.

A job holds its envelope and *where* the content is, not the content: a
spool of thousands of files is listed and checked up front but each file
is opened only when its turn comes, and streamed from disk.

Composed messages are built with the standard library's ``email`` package
(:class:`~email.message.EmailMessage`, ``add_alternative`` for an HTML
body, ``add_attachment`` with a type from :mod:`mimetypes`), serialised with
CRLF line ends.  The envelope comes from the flags: the bare address of
``--from`` and every ``--to``/``--cc``/``--bcc``; a ``Bcc`` field is never
written into the message.

When an ``.eml`` message's envelope is not given, it is taken from its
header fields the way ``sendmail -t`` does: the sender from ``Sender:`` or
else ``From:``, the recipients from ``To:``, ``Cc:`` and ``Bcc:``, and the
``Bcc:`` field is then removed from what is sent.
"""

from __future__ import annotations

import datetime
import email.policy
import email.utils
import getpass
import io
import json
import mimetypes
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, BinaryIO

from twisted.python import usage

from .._envelope import DSN, Envelope
from .._errors import EnvelopeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (setup.cfg pulls in tomli there)
    import tomli as tomllib

__all__ = [
    "Attachment",
    "Job",
    "MessageContent",
    "Script",
    "ScriptMessage",
    "collect_jobs",
    "compose_message",
    "default_sender",
    "envelope_from_headers",
    "load_script",
    "message_id_domain",
    "parse_attachment",
    "parse_header",
    "without_bcc_bytes",
]


# -- header fields -----------------------------------------------------------


#: NUL and everything ``str.splitlines`` (and so the email package) treats
#: as a line break.
_BREAKS = frozenset("\0\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def check_header(name: str, value: str) -> None:
    """
    Refuse a header field the message could not carry as given.

    The name must be RFC 5322 ``ftext``: printable US-ASCII (33-126)
    without a colon.  A line break (or NUL) in the value would start a new
    field -- header injection -- so it is refused too; the email package
    folds long values itself.

    :raises ValueError: with a message fit for a usage error.
    """
    if not name or any(not 33 <= ord(c) <= 126 or c == ":" for c in name):
        raise ValueError(
            f"bad header field name {name!r}: RFC 5322 allows printable ASCII without ':' or spaces"
        )
    if any(c in _BREAKS for c in value):
        raise ValueError(f"the {name} field value may not contain line breaks")


def parse_header(text: str) -> tuple[str, str]:
    """
    ``"Name: value"`` (``--header``) as ``(name, value)``, checked.

    :raises ValueError: with a message fit for a usage error.
    """
    name, colon, value = text.partition(":")
    if not colon:
        raise ValueError(f"--header needs 'Name: value', not {text!r}")
    value = value.strip()
    check_header(name, value)
    return name, value


# -- composition ----------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    """A file to attach, read before anything connects."""

    path: Path
    content_type: str
    data: bytes = b""


def parse_attachment(spec: str) -> Attachment:
    """
    ``PATH`` or ``PATH;type=TYPE`` (``--attach``), read into memory.

    Without ``type=``, the type is guessed from the file name with
    :mod:`mimetypes` (``application/octet-stream`` when it has no idea).

    :raises ValueError: for an unreadable file or a malformed type.
    """
    path_text, marker, override = spec.rpartition(";type=")
    if not marker:
        path_text, override = spec, ""
    path = Path(path_text)
    if override:
        content_type = override.strip().lower()
        maintype, slash, subtype = content_type.partition("/")
        if not slash or not maintype or not subtype or any(c.isspace() for c in content_type):
            raise ValueError(f"--attach {spec}: the type must be TYPE/SUBTYPE, e.g. text/csv")
    else:
        guessed, _ = mimetypes.guess_type(path.name)
        content_type = guessed or "application/octet-stream"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"--attach {path}: {e.strerror or e}") from None
    return Attachment(path=path, content_type=content_type, data=data)


def message_id_domain(sender: str) -> str:
    """
    The right-hand side for Message-IDs: the sender's domain.

    Using ``email.utils.make_msgid``'s default would call
    ``socket.getfqdn()``, a DNS lookup that can stall for seconds.
    """
    _, address = email.utils.parseaddr(sender)
    domain = address.rpartition("@")[2]
    return domain if domain and "@" in address else "smtpsend.invalid"


def bare_address(text: str) -> str:
    """
    The address of ``"Name <a@b>"`` (or of ``a@b``), for the envelope.

    The display name belongs in the From (or To, Cc) field; the envelope
    takes only the address.

    :raises ValueError: for text that is not one address.
    """
    stripped = text.strip()
    if "<" not in stripped and ">" not in stripped:
        return stripped  # a bare address: the envelope check judges it
    name, address = email.utils.parseaddr(stripped)
    if not address or not stripped.endswith(">") or stripped.count("<") != 1 or stripped.count(">") != 1:
        raise ValueError(f"{text!r} is not 'Name <address>' or an address")
    return address


def compose_message(
    *,
    sender: str,
    recipients: Sequence[str],
    subject: str | None,
    body: str | None,
    cc: Sequence[str] = (),
    html: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    attachments: Sequence[Attachment] = (),
    now: datetime.datetime | None = None,
) -> bytes:
    """
    A complete message as bytes with CRLF line ends.

    :param sender: the ``From:`` field (display name allowed; also the
        Message-ID domain).
    :param recipients: the ``To:`` field.
    :param subject: the ``Subject:``; omitted if ``None``.
    :param body: the text body (UTF-8 when not ASCII); empty if ``None``.
    :param cc: the ``Cc:`` field.
    :param html: an HTML alternative: the message becomes
        ``multipart/alternative`` (inside ``multipart/mixed`` with
        attachments).
    :param headers: extra fields; ``From``, ``To``, ``Cc``, ``Subject``,
        ``Date`` and ``Message-ID`` given here replace the generated ones.
        ``Bcc`` must not be among them: the caller takes it into the
        envelope and leaves it out of the message.
    :param attachments: files to attach, each with its content type.
    :param now: the ``Date:`` (default: now, local time with offset).
    :raises ValueError: if a field name or value is unusable.
    """
    extra = list(headers)
    for name, value in [("From", sender), ("Subject", subject or ""), *extra]:
        check_header(name, value)
    for value in [*recipients, *cc]:
        check_header("To", value)
    message = EmailMessage(policy=email.policy.SMTP)
    given = {name.lower() for name, _ in extra}
    if "bcc" in given:
        raise ValueError("a Bcc field is never written into the message")
    if "from" not in given and sender:
        message["From"] = sender
    if "to" not in given and recipients:
        message["To"] = ", ".join(recipients)
    if "cc" not in given and cc:
        message["Cc"] = ", ".join(cc)
    if "subject" not in given and subject is not None:
        message["Subject"] = subject
    if "date" not in given:
        when = now if now is not None else datetime.datetime.now().astimezone()
        message["Date"] = email.utils.format_datetime(when)
    if "message-id" not in given:
        message["Message-ID"] = email.utils.make_msgid(domain=message_id_domain(sender))
    for name, value in extra:
        message[name] = value
    text = body if body is not None else ""
    if text and not text.endswith("\n"):
        text += "\n"
    message.set_content(text)
    if html is not None:
        message.add_alternative(html if html.endswith("\n") else html + "\n", subtype="html")
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=attachment.path.name
        )
    return message.as_bytes()


# -- jobs --------------------------------------------------------------------------


#: The header block is read up to this many bytes when deriving an envelope.
_HEADER_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class MessageContent:
    """
    Where a message's bytes come from: a file (streamed) or bytes in memory.

    :ivar strip_bcc: remove the ``Bcc:`` field before sending (the
        envelope was taken from the header fields).
    """

    path: Path | None = None
    data: bytes | None = None
    strip_bcc: bool = False

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("exactly one of path and data")

    def size_hint(self) -> int | None:
        """Bytes on disk or in memory, for ``SIZE=`` (an estimate: line ends change)."""
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        try:
            return self.path.stat().st_size
        except OSError:
            return None

    def open(self) -> BinaryIO:
        """
        A binary file object of the message; the caller closes it.

        :raises OSError: if the file cannot be read.
        """
        if self.data is not None:
            return io.BytesIO(without_bcc_bytes(self.data) if self.strip_bcc else self.data)
        assert self.path is not None
        if self.strip_bcc:
            return io.BytesIO(without_bcc_bytes(self.path.read_bytes()))
        return open(self.path, "rb")


@dataclass(frozen=True)
class Job:
    """
    One message to send, its envelope already checked.

    :ivar index: 1-based position in the run.
    :ivar source: where it came from, for humans and the report.
    :ivar mail_from: the envelope sender (a bare address).
    """

    index: int
    source: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    content: MessageContent
    dsn: DSN | None = None
    use_8bit_mime: bool = False

    def envelope(self) -> Envelope:
        """
        The library's envelope of this job, with the size as it is now.

        :raises EnvelopeError: only if the job was made without
            :func:`make_job`'s check.
        """
        return Envelope(
            self.mail_from,
            list(self.rcpt_to),
            size=self.content.size_hint(),
            use_8bit_mime=self.use_8bit_mime,
            dsn=self.dsn,
        )

    def dsn_report(self) -> dict[str, object] | None:
        """The DSN parameters for the report: only those that are set."""
        if self.dsn is None:
            return None
        out: dict[str, object] = {}
        for key in ("ret", "envid", "notify", "orcpt"):
            value = getattr(self.dsn, key)
            if value is not None:
                out[key] = list(value) if key == "notify" else value
        return out


@dataclass(frozen=True)
class HeaderEnvelope:
    """The envelope found in a message's header fields."""

    mail_from: str | None
    rcpt_to: tuple[str, ...]
    has_bcc: bool


def read_header_block(stream: BinaryIO) -> bytes:
    """The bytes up to and including the first empty line (bounded)."""
    lines = []
    total = 0
    while total < _HEADER_LIMIT:
        line = stream.readline(_HEADER_LIMIT - total)
        if not line:
            break
        lines.append(line)
        total += len(line)
        if line in (b"\r\n", b"\n"):
            break
    return b"".join(lines)


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    """In order, without case-insensitive repeats (one RCPT per mailbox)."""
    seen: set[str] = set()
    out: list[str] = []
    for address in addresses:
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append(address)
    return tuple(out)


def envelope_from_headers(head: bytes) -> HeaderEnvelope:
    """Sender and recipients from a header block (``sendmail -t`` rules)."""
    parsed = BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)

    def addresses(*names: str) -> list[str]:
        values: list[str] = []
        for name in names:
            values.extend(str(v) for v in parsed.get_all(name, []))
        return [a for _, a in email.utils.getaddresses(values) if a]

    senders = addresses("Sender") or addresses("From")
    return HeaderEnvelope(
        mail_from=senders[0] if senders else None,
        rcpt_to=_unique(addresses("To", "Cc", "Bcc")),
        has_bcc=parsed.get("Bcc") is not None,
    )


def without_bcc_bytes(data: bytes) -> bytes:
    """``data`` with every ``Bcc:`` field (and its continuation lines) removed."""
    out: list[bytes] = []
    in_header = True
    skipping = False
    for line in data.splitlines(keepends=True):
        if in_header:
            if line in (b"\r\n", b"\n"):
                in_header = False
            elif skipping and line[:1] in (b" ", b"\t"):
                continue
            else:
                skipping = line[:4].lower() == b"bcc:"
                if skipping:
                    continue
        out.append(line)
    return b"".join(out)


def make_job(
    *,
    index: int,
    source: str,
    content: MessageContent,
    mail_from: str | None,
    rcpt_to: Sequence[str],
    default_from: str,
    dsn: DSN | None,
    use_8bit_mime: bool,
) -> Job:
    """
    A checked job; missing envelope parts are filled from the header fields.

    The file is read only when something is missing; otherwise it is only
    checked to be readable.

    :raises usage.UsageError: naming ``source``: the file cannot be read,
        no recipient can be found, or the library refuses the envelope.
    """
    strip_bcc = False
    try:
        with content.open() as stream:
            found = (
                envelope_from_headers(read_header_block(stream))
                if mail_from is None or not rcpt_to
                else None
            )
    except OSError as e:
        raise usage.UsageError(f"cannot read {source}: {e.strerror or e}") from None
    if found is not None:
        if not rcpt_to:
            rcpt_to = found.rcpt_to
            strip_bcc = found.has_bcc
            if not rcpt_to:
                raise usage.UsageError(f"{source}: no recipients (no --to, and no To/Cc/Bcc field)")
        if mail_from is None:
            mail_from = found.mail_from if found.mail_from is not None else default_from
    assert mail_from is not None
    if strip_bcc:
        content = MessageContent(path=content.path, data=content.data, strip_bcc=True)
    try:
        job = Job(
            index=index,
            source=source,
            mail_from=bare_address(mail_from),
            rcpt_to=_unique(bare_address(r) for r in rcpt_to),
            content=content,
            dsn=dsn,
            use_8bit_mime=use_8bit_mime,
        )
        job.envelope()
    except (EnvelopeError, ValueError, TypeError) as e:
        raise usage.UsageError(f"{source}: {e}") from None
    return job


# -- scripts -------------------------------------------------------------------------

_TOP_KEYS = frozenset({"connection", "from", "messages"})
_MESSAGE_KEYS = frozenset(
    {"from", "to", "eml", "subject", "body", "headers", "dsn", "use_8bit_mime"}
)
_DSN_KEYS = frozenset({"ret", "envid", "notify", "orcpt"})


@dataclass(frozen=True)
class ScriptMessage:
    """One entry of ``messages``; ``eml`` is already resolved against the script's directory."""

    where: str
    mail_from: str | None
    rcpt_to: tuple[str, ...]
    eml: Path | None
    subject: str | None
    body: str | None
    headers: tuple[tuple[str, str], ...]
    dsn: DSN | None
    use_8bit_mime: bool


@dataclass(frozen=True)
class Script:
    """A parsed ``--script`` file."""

    path: Path
    connection: Mapping[str, Any]
    default_from: str | None
    messages: tuple[ScriptMessage, ...]


def _fail(where: str, problem: str) -> usage.UsageError:
    return usage.UsageError(f"{where}: {problem}")


def _string(value: object, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"{key} must be a string")
    return value


def _dsn(value: object, where: str) -> DSN:
    if not isinstance(value, dict):
        raise _fail(where, "dsn must be a table")
    unknown = set(value) - _DSN_KEYS
    if unknown:
        raise _fail(where, f"unknown dsn key {sorted(unknown)[0]!r}")
    try:
        return DSN(**value)
    except (EnvelopeError, TypeError, ValueError) as e:
        raise _fail(where, str(e)) from None


def _message(entry: object, where: str, base: Path) -> ScriptMessage:
    if not isinstance(entry, dict):
        raise _fail(where, "must be a table")
    unknown = set(entry) - _MESSAGE_KEYS
    if unknown:
        raise _fail(where, f"unknown key {sorted(unknown)[0]!r}")
    to = entry.get("to", [])
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not all(isinstance(t, str) and t.strip() for t in to):
        raise _fail(where, "to must be an address or a list of addresses")
    if any("," in t for t in to):
        raise _fail(where, "to takes one address per entry: use a list, not commas")
    eml = entry.get("eml")
    inline = [k for k in ("subject", "body", "headers") if k in entry]
    if eml is not None and inline:
        raise _fail(where, f"eml contradicts {inline[0]}")
    if eml is None and not inline:
        raise _fail(where, "needs eml, or subject/body")
    headers = entry.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise _fail(where, "headers must be a table of strings")
    for name, value in headers.items():
        try:
            check_header(name, value)
        except ValueError as e:
            raise _fail(where, str(e)) from None
    if eml is None and not to and not any(k.lower() in ("to", "cc", "bcc") for k in headers):
        raise _fail(where, "an inline message needs to")
    use_8bit = entry.get("use_8bit_mime", False)
    if not isinstance(use_8bit, bool):
        raise _fail(where, "use_8bit_mime must be true or false")
    mail_from = entry.get("from")
    subject = entry.get("subject")
    body = entry.get("body")
    return ScriptMessage(
        where=where,
        mail_from=None if mail_from is None else _string(mail_from, where, "from"),
        rcpt_to=tuple(to),
        eml=None if eml is None else base / _string(eml, where, "eml"),
        subject=None if subject is None else _string(subject, where, "subject"),
        body=None if body is None else _string(body, where, "body"),
        headers=tuple(headers.items()),
        dsn=None if entry.get("dsn") is None else _dsn(entry["dsn"], where),
        use_8bit_mime=use_8bit,
    )


def parse_script(data: Mapping[str, Any], path: Path) -> Script:
    """Validate an already-decoded script document."""
    name = path.name
    if not isinstance(data, dict):
        raise _fail(name, "the top level must be a table/object")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(name, f"unknown top-level key {sorted(unknown)[0]!r}")
    connection = data.get("connection", {})
    if not isinstance(connection, dict):
        raise _fail(name, "connection must be a table")
    default_from = data.get("from")
    if default_from is not None:
        default_from = _string(default_from, name, "from")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail(name, "needs a non-empty messages list")
    base = path.parent
    parsed = tuple(
        _message(entry, f"{name} messages[{i}]", base) for i, entry in enumerate(messages)
    )
    return Script(path=path, connection=connection, default_from=default_from, messages=parsed)


def load_script(path: Path) -> Script:
    """
    Read and validate a script: ``.toml`` as TOML, anything else as JSON.

    The schema is documented with examples in ``docs/twistd.rst``.

    :raises usage.UsageError: one line naming the file and the problem.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _fail(str(path), f"cannot read script: {e.strerror or e}") from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors.
        raise _fail(path.name, f"not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from None
    return parse_script(data, path)


# -- from options to jobs -------------------------------------------------------------


def default_sender() -> str:
    """
    ``user@host`` of whoever runs the command, like ``mail(1)`` does.

    ``socket.gethostname()`` rather than ``getfqdn()``: no DNS lookup.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "smtpsend"
    host = socket.gethostname() or "localhost"
    return f"{user}@{host}"


def _dsn_from_options(options: Mapping[str, Any]) -> DSN | None:
    ret, envid, notify = options.get("dsn-ret"), options.get("dsn-envid"), options.get("dsn-notify")
    if ret is None and envid is None and notify is None:
        return None
    try:
        return DSN(ret=ret, envid=envid, notify=notify)
    except (EnvelopeError, ValueError) as e:
        raise usage.UsageError(f"--dsn-*: {e}") from None


def _read_text(name: str, stdin: BinaryIO | None, flag: str) -> str:
    """A text file (``-``: standard input), UTF-8."""
    try:
        if name == "-":
            raw = (stdin if stdin is not None else sys.stdin.buffer).read()
        else:
            raw = Path(name).read_bytes()
        return raw.decode("utf-8")
    except OSError as e:
        raise usage.UsageError(f"{flag} {name}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise usage.UsageError(f"{flag} {name}: not UTF-8 text") from None


def _split_header_recipients(
    headers: Iterable[tuple[str, str]],
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Fields to write, and the ``Cc``/``Bcc`` addresses among them (Bcc left out)."""
    kept: list[tuple[str, str]] = []
    cc: list[str] = []
    bcc: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in ("to", "cc", "bcc"):
            found = [a for _, a in email.utils.getaddresses([value]) if a]
            (bcc if lowered == "bcc" else cc).extend(found)
        if lowered != "bcc":
            kept.append((name, value))
    return kept, cc, bcc


def _composed_job(
    *,
    index: int,
    source: str,
    sender: str,
    to: Sequence[str],
    cc: Sequence[str],
    bcc: Sequence[str],
    subject: str | None,
    body: str | None,
    html: str | None,
    headers: Iterable[tuple[str, str]],
    attachments: Sequence[Attachment],
    dsn: DSN | None,
    use_8bit_mime: bool,
) -> Job:
    kept, header_cc, header_bcc = _split_header_recipients(headers)
    try:
        data = compose_message(
            sender=sender,
            recipients=to,
            cc=cc,
            subject=subject,
            body=body,
            html=html,
            headers=kept,
            attachments=attachments,
        )
    except ValueError as e:
        raise usage.UsageError(f"{source}: {e}") from None
    recipients = [*to, *cc, *header_cc, *bcc, *header_bcc]
    if not recipients:
        raise usage.UsageError(f"{source}: no recipients")
    return make_job(
        index=index,
        source=source,
        content=MessageContent(data=data),
        mail_from=sender,
        rcpt_to=recipients,
        default_from=sender,
        dsn=dsn,
        use_8bit_mime=use_8bit_mime,
    )


def collect_jobs(
    options: Mapping[str, Any],
    script: Script | None,
    *,
    use_8bit_mime: bool = False,
    stdin: BinaryIO | None = None,
) -> list[Job]:
    """
    Every job of this run, in order, each checked.

    :param options: parsed ``SendOptions``.
    :param script: the loaded ``--script``, if any.
    :param use_8bit_mime: the merged connection setting.
    :param stdin: where ``-`` reads from (default: ``sys.stdin``).
    :raises usage.UsageError: for the first mistake found, naming where.
    """
    flag_from: str | None = options.get("from")
    flag_to: list[str] = list(options.get("to", []))
    flag_cc: list[str] = list(options.get("cc", []))
    flag_bcc: list[str] = list(options.get("bcc", []))
    dsn = _dsn_from_options(options)
    fallback_from = flag_from or (script.default_from if script else None) or default_sender()

    if script is not None:
        jobs = []
        for index, entry in enumerate(script.messages, start=1):
            mail_from = entry.mail_from or flag_from or script.default_from
            rcpt_to = entry.rcpt_to or tuple(flag_to)
            entry_dsn = entry.dsn if entry.dsn is not None else dsn
            use_8bit = use_8bit_mime or entry.use_8bit_mime
            if entry.eml is None:
                jobs.append(
                    _composed_job(
                        index=index,
                        source=entry.where,
                        sender=mail_from if mail_from is not None else fallback_from,
                        to=rcpt_to,
                        cc=(),
                        bcc=(),
                        subject=entry.subject,
                        body=entry.body,
                        html=None,
                        headers=entry.headers,
                        attachments=(),
                        dsn=entry_dsn,
                        use_8bit_mime=use_8bit,
                    )
                )
                continue
            jobs.append(
                make_job(
                    index=index,
                    source=f"{entry.where} ({entry.eml})",
                    content=MessageContent(path=entry.eml),
                    mail_from=mail_from,
                    rcpt_to=rcpt_to,
                    default_from=fallback_from,
                    dsn=entry_dsn,
                    use_8bit_mime=use_8bit,
                )
            )
        return jobs

    if options.get("spool") is not None:
        directory = Path(options["spool"])
        try:
            files = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".eml" and p.is_file())
        except OSError as e:
            raise usage.UsageError(f"cannot read spool {directory}: {e.strerror or e}") from None
        if not files:
            raise usage.UsageError(f"spool {directory} holds no .eml files")
        return [
            make_job(
                index=index,
                source=str(path),
                content=MessageContent(path=path),
                mail_from=flag_from,
                rcpt_to=[*flag_to, *flag_cc, *flag_bcc],
                default_from=fallback_from,
                dsn=dsn,
                use_8bit_mime=use_8bit_mime,
            )
            for index, path in enumerate(files, start=1)
        ]

    if options.get("message") is not None:
        name = options["message"]
        if name == "-":
            content = MessageContent(data=(stdin if stdin is not None else sys.stdin.buffer).read())
            source = "<stdin>"
        else:
            path = Path(name)
            if not path.is_file():
                raise usage.UsageError(f"--message {name}: no such file")
            content = MessageContent(path=path)
            source = name
        return [
            make_job(
                index=1,
                source=source,
                content=content,
                mail_from=flag_from,
                rcpt_to=[*flag_to, *flag_cc, *flag_bcc],
                default_from=fallback_from,
                dsn=dsn,
                use_8bit_mime=use_8bit_mime,
            )
        ]

    body = options.get("body")
    if options.get("body-file") is not None:
        body = _read_text(options["body-file"], stdin, "--body-file")
    html = options.get("html-body")
    if options.get("html-body-file") is not None:
        html = _read_text(options["html-body-file"], stdin, "--html-body-file")
    try:
        attachments = [parse_attachment(spec) for spec in options.get("attach", [])]
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    return [
        _composed_job(
            index=1,
            source="the composed message",
            sender=fallback_from,
            to=flag_to,
            cc=flag_cc,
            bcc=flag_bcc,
            subject=options.get("subject"),
            body=body,
            html=html,
            headers=options.get("header", []),
            attachments=attachments,
            dsn=dsn,
            use_8bit_mime=use_8bit_mime,
        )
    ]
