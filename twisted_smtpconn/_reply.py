"""
Server replies: the :class:`Reply` value object and the incremental
:class:`ReplyParser` that builds one from received lines.

An SMTP reply (RFC 5321, 4.2) is one or more lines that each start with the
same three-digit code; every line but the last has a ``-`` after the code.
The parser is fed one line at a time by the protocol and never sees the
socket, so it can be tested byte for byte without Twisted.

It is deliberately strict about the *shape* of a reply and deliberately
bounded in what it keeps: a server (or anybody injecting bytes on the path)
that sends garbage, mixes codes within one reply or never ends a multi-line
reply must make the connection fail with ``EPROTOCOL`` rather than let the
client pair a later line with the wrong command, or grow memory without end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import ProtocolError

__all__ = ["Reply", "ReplyParser", "parse_enhanced_status", "describe_line", "escape_controls"]

#: RFC 3463 / RFC 2034 enhanced status code at the start of a reply's text:
#: class "." subject "." detail, followed by white space or the end.
_ENHANCED_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?=[ \t]|$)")

#: Characters replaced in the one-line summary: C0 controls, DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: How much of an offending line an error message shows.
_SHOWN_LINE_BYTES = 100


def _escape_control(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def escape_controls(text: str) -> str:
    """
    ``text`` with every control character (C0, DEL, C1) shown as ``\\xNN``:
    what a server sent must never reach a terminal or a log raw, where an
    escape sequence could rewrite what the reader sees.
    """
    return _CONTROL.sub(_escape_control, text)


def describe_line(line: bytes) -> str:
    """
    Show a received line in an error message: ``repr``-escaped, so that
    control characters sent by a hostile server never reach a terminal or
    log raw, and truncated, so that a huge line does not make a huge message.
    """
    if len(line) > _SHOWN_LINE_BYTES:
        return f"{line[:_SHOWN_LINE_BYTES]!r}... ({len(line)} bytes)"
    return repr(line)


def parse_enhanced_status(code: int, text: str) -> str | None:
    """
    The enhanced status code (``"5.1.1"``) at the start of ``text``, or
    ``None``.

    Only a status whose class agrees with the reply code counts (a ``2.x.y``
    on a 550 is ordinary text, not a status), and intermediate (3xx) replies
    never carry one (RFC 2034, section 4).

    :param code: the three-digit reply code.
    :param text: the text of the reply's first line.
    """
    if not text or text[0] not in "245":
        return None
    match = _ENHANCED_STATUS.match(text)
    if match is None or match.group(1) != str(code // 100):
        return None
    return match.group(0)


@dataclass(frozen=True, slots=True)
class Reply:
    """
    One complete server reply.

    :ivar code: the reply code, 100 to 599.
    :ivar lines: the text after ``"NNN-"`` / ``"NNN "`` of each line, in
        order, decoded as UTF-8 with invalid bytes replaced; ``""`` for a line
        that holds only the code.
    :ivar enhanced_status: the RFC 3463 status (``"2.1.0"``) found at the
        start of the first line, when its class matches the code; else
        ``None``.
    """

    code: int
    lines: tuple[str, ...]
    enhanced_status: str | None = None

    def __post_init__(self) -> None:
        # Replies are built by the parser, but tests and higher layers may
        # build their own; an impossible one would only confuse the
        # is_positive/... classification below.
        if isinstance(self.code, bool) or not isinstance(self.code, int):
            raise TypeError(f"code must be an int, not {type(self.code).__name__}")
        if not 100 <= self.code <= 599:
            raise ValueError(f"code must be in 100..599, not {self.code!r}")
        if not isinstance(self.lines, tuple) or not all(isinstance(x, str) for x in self.lines):
            raise TypeError("lines must be a tuple of str")
        if not self.lines:
            raise ValueError("a reply has at least one line")

    @property
    def text(self) -> str:
        """All lines' text joined with ``"\\n"``."""
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        """A 2xx reply: the command succeeded."""
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        """A 3xx reply: the server waits for more (DATA's 354, SASL's 334)."""
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        """A 4xx reply: refused for now; the same command may work later."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """A 5xx reply: refused; repeating the command will not help."""
        return 500 <= self.code < 600

    def __str__(self) -> str:
        """
        A one-line summary such as ``"250 2.1.0 Ok"``, all lines joined with
        spaces.  Control characters a server may have put in its text are
        shown escaped (``\\x1b``): this string ends up in error messages and
        logs, where raw escapes could rewrite a terminal.
        """
        joined = escape_controls(" ".join(self.lines))
        return f"{self.code} {joined}" if joined else str(self.code)


class ReplyParser:
    """
    Assemble :class:`Reply` objects from received lines.

    Memory is bounded: a reply may have at most ``max_lines`` lines and
    ``max_reply_bytes`` bytes in all (the sum of the lengths of its lines,
    code and separator included), and the limits are checked *before* a line
    is stored, so a server that never ends a multi-line reply cannot make the
    parser hold more than that.

    After :meth:`feed_line` has raised :class:`ProtocolError` the parser is
    unusable and every further call raises again: the stream is out of step
    (a later line could be taken as the reply to the wrong command), so the
    only safe thing the caller can do is close the connection.

    :param max_reply_bytes: most bytes of one reply.
    :param max_lines: most lines of one reply.
    """

    __slots__ = ("_max_bytes", "_max_lines", "_code", "_lines", "_size", "_failed")

    def __init__(self, *, max_reply_bytes: int = 64 * 1024, max_lines: int = 1000) -> None:
        for name, value in (("max_reply_bytes", max_reply_bytes), ("max_lines", max_lines)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value!r}")
        self._max_bytes = max_reply_bytes
        self._max_lines = max_lines
        self._code: int | None = None
        self._lines: list[bytes] = []
        self._size = 0
        self._failed = False

    @property
    def in_progress(self) -> bool:
        """Whether a multi-line reply has been partially received."""
        return self._code is not None

    @property
    def buffered_lines(self) -> int:
        """Lines of the unfinished reply held now (never above ``max_lines``)."""
        return len(self._lines)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the unfinished reply held now (never above ``max_reply_bytes``)."""
        return self._size

    def _fail(self, message: str) -> ProtocolError:
        self._failed = True
        self._code = None
        self._lines = []
        self._size = 0
        return ProtocolError(message)

    def feed_line(self, line: bytes) -> Reply | None:
        """
        Take one received line.

        :param line: the line without its line ending; one trailing ``\\r``
            (left by a reader that splits on ``\\n``) is removed.
        :returns: the :class:`Reply` that this line completes, or ``None``
            when it continues a multi-line reply.
        :raises ProtocolError: the line is not part of a well-formed reply
            (no 200..599 code, a fourth character other than space or
            ``-``, a code other than the reply's first line's) or the reply
            exceeds the limits.  The parser cannot be used afterwards.
        """
        if self._failed:
            raise ProtocolError("the reply parser failed earlier; the connection must be closed")
        line = bytes(line)
        if line.endswith(b"\r"):
            line = line[:-1]

        head = line[:3]
        if len(head) != 3 or not head.isdigit() or not b"200" <= head <= b"599":
            raise self._fail(f"the server sent a line that is not an SMTP reply: {describe_line(line)}")
        separator = line[3:4]
        if separator not in (b"", b" ", b"-"):
            raise self._fail(f"the server sent a malformed reply line: {describe_line(line)}")
        code = int(head)
        if self._code is not None and code != self._code:
            raise self._fail(
                f"the server changed the code from {self._code} to {code} within one reply: "
                f"{describe_line(line)}"
            )
        if len(self._lines) >= self._max_lines:
            raise self._fail(
                f"the server's reply has more than {self._max_lines} lines; last line: {describe_line(line)}"
            )
        if self._size + len(line) > self._max_bytes:
            raise self._fail(
                f"the server's reply is longer than {self._max_bytes} bytes; last line: {describe_line(line)}"
            )

        self._lines.append(line[4:])
        self._size += len(line)
        if separator == b"-":
            self._code = code
            return None

        lines = self._lines
        texts = (lines[0].decode("utf-8", "replace"),) if len(lines) == 1 else tuple(
            raw.decode("utf-8", "replace") for raw in lines
        )
        self._code = None
        self._lines = []
        self._size = 0
        return _parsed_reply(code, texts, parse_enhanced_status(code, texts[0]))


_set = object.__setattr__


def _parsed_reply(code: int, lines: tuple[str, ...], enhanced_status: str | None) -> Reply:
    """
    A :class:`Reply` from the parser, whose values are right by
    construction: the checks of ``Reply.__post_init__`` (for replies built
    elsewhere) are skipped on this path, which every reply takes.
    """
    reply = object.__new__(Reply)
    _set(reply, "code", code)
    _set(reply, "lines", lines)
    _set(reply, "enhanced_status", enhanced_status)
    return reply
