"""
The message body codec: line-ending normalisation and SMTP dot-stuffing.

SMTP's DATA command ends the message at the first line that holds a single
``.``, and every line of the message must end in CRLF (RFC 5321, 2.3.8 and
4.5.2).  Callers hand us messages with whatever line ends their platform or
their generator produced, split into chunks at arbitrary places, so the codec
here is *incremental*: its output is the same however the message was cut.

``twisted.mail.smtp`` shows what goes wrong when this is done per chunk with a
plain ``replace``: the first line is never stuffed, a ``.`` line cut at a
chunk boundary ends DATA early, and CRLF input turns into CR CR LF.  The
encoder avoids all three by remembering exactly two facts between chunks:
whether a ``\\r`` is being held back (the next chunk may start with the
``\\n`` that completes it) and whether the output so far ends at the start of
a line.

Everything is done with whole-chunk ``bytes`` methods (``count``,
``replace``, ``startswith``); there is no Python loop over lines or bytes, so
the cost per chunk is a handful of C-speed passes.
"""

from __future__ import annotations

import re

__all__ = ["BodyEncoder", "TERMINATOR"]

#: The line that ends DATA; sent after the (dot-stuffed) message.
TERMINATOR = b".\r\n"

_CR = b"\r"
_LF = b"\n"
_CRLF = b"\r\n"

# Searches with a literal first byte: the regular expression engine skips to
# each candidate with memchr, which measures faster than the equivalent
# two-byte ``bytes.find``/``count`` on typical text.
_CR_WITHOUT_LF = re.compile(rb"\r(?!\n)")
_LINE_STARTING_WITH_DOT = re.compile(rb"\n\.")


def _normalise(data: bytes) -> bytes:
    """
    Turn every bare LF, bare CR and CRLF of ``data`` into CRLF.

    ``data`` must not end with a CR that a later chunk could complete: the
    caller holds such a CR back.

    The common case is input that is already CRLF-only.  Two single-byte
    ``count`` passes and one search for a CR without its LF prove it (if no
    CR lacks an LF, and there are as many LFs as CRs, every LF has its CR),
    and then ``data`` itself is returned, uncopied.  LF-only input needs one
    ``replace``.
    """
    crs = data.count(_CR)
    if crs == 0:
        return data.replace(_LF, _CRLF)
    if crs == data.count(_LF) and _CR_WITHOUT_LF.search(data) is None:
        return data
    # Mixed: fold CRLF and bare CR into LF first, then widen every LF.
    return data.replace(_CRLF, _LF).replace(_CR, _LF).replace(_LF, _CRLF)


class BodyEncoder:
    """
    Incremental CRLF normaliser and (optionally) SMTP dot-stuffer, correct
    across chunk boundaries.

    Feed the message through :meth:`encode` in chunks of any size, then call
    :meth:`finish` once; the concatenated results are the bytes to send after
    the server's 354 reply (or, without dot-stuffing, the payload of BDAT).

    :ivar dot_stuff: whether lines starting with ``.`` get an extra ``.`` and
        :meth:`finish` appends the ``.`` terminator line.  BDAT (CHUNKING)
        transfers the message by length and needs neither, only the CRLF
        normalisation.
    """

    __slots__ = ("dot_stuff", "_held_cr", "_line_start", "_started", "_finished", "_message_size", "_wire_size")

    def __init__(self, *, dot_stuff: bool = True) -> None:
        self.dot_stuff = dot_stuff
        # A CR that ended the previous chunk: it is CRLF if the next chunk
        # starts with LF, a bare CR (also a line end) otherwise; either way
        # it is emitted only once we know which.
        self._held_cr = False
        # Whether the next byte emitted starts a line (true at the very
        # beginning, so that a first line starting with "." is stuffed).
        self._line_start = True
        # Whether any message byte was seen: an empty message gets no CRLF.
        self._started = False
        self._finished = False
        self._message_size = 0
        self._wire_size = 0

    @property
    def message_size(self) -> int:
        """
        Size of the normalised message: CRLF line ends, before dot-stuffing,
        including the CRLF that :meth:`finish` adds, without the terminator.

        This is the size SMTP's ``SIZE=`` parameter and ``SendInfo`` speak
        of.  Before :meth:`finish` it excludes a held-back CR; after it, it
        is exact.
        """
        return self._message_size

    @property
    def wire_size(self) -> int:
        """Bytes returned so far by :meth:`encode` and :meth:`finish`."""
        return self._wire_size

    def encode(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """
        Encode the next chunk of the message.

        :param chunk: any bytes-like object; may be empty, may cut a line or
            a CRLF anywhere.
        :return: the wire bytes for this chunk, possibly empty (a lone
            trailing CR is held back until the next chunk shows whether an LF
            follows).
        :raises RuntimeError: if called after :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("BodyEncoder.encode() called after finish()")
        if not chunk:
            return b""
        piece = chunk if isinstance(chunk, bytes) else bytes(chunk)
        self._started = True
        data = _CR + piece if self._held_cr else piece
        self._held_cr = data.endswith(_CR)
        if self._held_cr:
            data = data[:-1]
            if not data:
                return b""
        data = _normalise(data)
        self._message_size += len(data)
        if self.dot_stuff:
            data = self._stuff(data)
        self._line_start = data.endswith(_CRLF)
        self._wire_size += len(data)
        return data

    def finish(self) -> bytes:
        """
        End the message.

        :return: the held-back CR (as CRLF), a CRLF if the message did not end
            with a line end (an empty message stays empty), and, when
            dot-stuffing, the terminator ``.\\r\\n``.
        :raises RuntimeError: if called twice.
        """
        if self._finished:
            raise RuntimeError("BodyEncoder.finish() called twice")
        self._finished = True
        tail = b""
        if self._held_cr or (self._started and not self._line_start):
            tail = _CRLF
            self._held_cr = False
            self._line_start = True
            self._message_size += len(_CRLF)
        if self.dot_stuff:
            tail += TERMINATOR
        self._wire_size += len(tail)
        return tail

    def _stuff(self, data: bytes) -> bytes:
        """
        Double the leading ``.`` of every line in normalised ``data``.

        Inside the chunk a line start is "right after CRLF"; the chunk's own
        first byte starts a line when the previous output ended with CRLF.
        Because a trailing CR is held back, a CRLF is never split between two
        normalised chunks, so these two cases are all there is.
        """
        stuffed = data
        if _LINE_STARTING_WITH_DOT.search(data) is not None:
            stuffed = data.replace(b"\r\n.", b"\r\n..")
        if self._line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        return stuffed
