"""
What to send: one :class:`Job` per message, whatever the source.

A job holds its envelope and *where* the content is, not the content: a
spool of thousands of files is listed up front but each file is opened only
when its turn comes, and streamed to the connection from disk.

When the envelope is not given (no ``--to``/``--from``, or a script entry
without ``to``/``from``), it is taken from the message's headers the way
``sendmail -t`` does: the sender from ``Sender:`` or else ``From:``, the
recipients from ``To:``, ``Cc:`` and ``Bcc:``, and the ``Bcc:`` header is
then removed from what is sent.
"""

from __future__ import annotations

import email.policy
import email.utils
import io
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "DSNSpec",
    "Job",
    "MessageContent",
    "HeaderEnvelope",
    "envelope_from_headers",
    "read_header_block",
]

#: The header block is read up to this many bytes when deriving an envelope.
_HEADER_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class DSNSpec:
    """DSN parameters as given on the command line or in a script."""

    ret: str | None = None
    envid: str | None = None
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None

    def as_dict(self) -> dict[str, object]:
        """For the report: only the keys that are set."""
        out: dict[str, object] = {}
        if self.ret is not None:
            out["ret"] = self.ret
        if self.envid is not None:
            out["envid"] = self.envid
        if self.notify is not None:
            out["notify"] = list(self.notify)
        if self.orcpt is not None:
            out["orcpt"] = self.orcpt
        return out


@dataclass(frozen=True)
class MessageContent:
    """
    Where a message's bytes come from: a file (streamed) or bytes in memory.

    :ivar strip_bcc: remove the ``Bcc:`` header before sending (the
        envelope was taken from the headers).
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
            return io.BytesIO(_without_bcc(self.data) if self.strip_bcc else self.data)
        assert self.path is not None
        if self.strip_bcc:
            return io.BytesIO(_without_bcc(self.path.read_bytes()))
        return open(self.path, "rb")


@dataclass(frozen=True)
class Job:
    """
    One message to send.

    :ivar index: 1-based position in the run.
    :ivar source: where it came from, for humans and the report.
    :ivar problem: if set, the job is known to be unsendable (e.g. no
        recipients could be found); it is reported as a data error
        without being sent.
    """

    index: int
    source: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    content: MessageContent
    dsn: DSNSpec | None = None
    use_8bit_mime: bool = False
    problem: str | None = None


@dataclass(frozen=True)
class HeaderEnvelope:
    """The envelope found in a message's headers."""

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


def envelope_from_headers(head: bytes) -> HeaderEnvelope:
    """Sender and recipients from a header block (``sendmail -t`` rules)."""
    parsed = BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)

    def addresses(*names: str) -> list[str]:
        values: list[str] = []
        for name in names:
            values.extend(str(v) for v in parsed.get_all(name, []))
        return [a for _, a in email.utils.getaddresses(values) if a]

    senders = addresses("Sender") or addresses("From")
    recipients: list[str] = []
    for address in addresses("To", "Cc", "Bcc"):
        if address.lower() not in (r.lower() for r in recipients):
            recipients.append(address)
    return HeaderEnvelope(
        mail_from=senders[0] if senders else None,
        rcpt_to=tuple(recipients),
        has_bcc=parsed.get("Bcc") is not None,
    )


def _without_bcc(data: bytes) -> bytes:
    """``data`` with every ``Bcc:`` header (and its continuation lines) removed."""
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
    dsn: DSNSpec | None,
    use_8bit_mime: bool,
) -> Job:
    """
    A job whose missing envelope parts are filled from the headers.

    Reading the headers only happens when something is missing.
    """
    problem = None
    strip_bcc = False
    if mail_from is None or not rcpt_to:
        try:
            with content.open() as stream:
                found = envelope_from_headers(read_header_block(stream))
        except OSError as e:
            found = HeaderEnvelope(None, (), False)
            problem = f"cannot read {source}: {e.strerror or e}"
        if not rcpt_to:
            rcpt_to = found.rcpt_to
            strip_bcc = found.has_bcc
            if not rcpt_to and problem is None:
                problem = f"{source}: no recipients (no --to, and no To/Cc/Bcc header)"
        if mail_from is None:
            mail_from = found.mail_from if found.mail_from is not None else default_from
    if strip_bcc:
        content = MessageContent(path=content.path, data=content.data, strip_bcc=True)
    return Job(
        index=index,
        source=source,
        mail_from=mail_from,
        rcpt_to=tuple(rcpt_to),
        content=content,
        dsn=dsn,
        use_8bit_mime=use_8bit_mime,
        problem=problem,
    )
