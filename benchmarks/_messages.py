"""
The benchmark's messages, made the same way in every process.

Every client sends the same bytes, so that the correctness check can compare
one SHA-256 per message.  Each message is given in two line-end forms: CRLF
(what goes on the wire, what the recorder sees, what sizes are counted in)
and LF (for the clients that convert local line ends themselves:
``smtp-source -F`` appends CRLF to every line it reads, and
``twisted.mail.smtp`` turns every LF into CRLF, so CRLF input would reach
the server as CR CR LF).

Lines that start with a dot, and a line that is a single dot, are in every
message: a client that dot-stuffs wrongly fails the check.  The large and
the generated messages are what messages that size usually are: a short
text part (with those lines) and a base64 attachment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

__all__ = [
    "SENDER",
    "RECIPIENT",
    "SMALL_SIZE",
    "LARGE_SIZE",
    "small_message",
    "large_message",
    "generated_chunks",
    "generated_lf_chunks",
    "generated_size",
    "to_lf",
]

SENDER = "bench@example.org"
RECIPIENT = "sink@example.net"

#: Scenario (1) and (3): 2 KiB messages.
SMALL_SIZE = 2 * 1024
#: Scenario (2): one 20 MiB message.
LARGE_SIZE = 20 * 1024 * 1024

_HEADER = (
    b"From: Benchmark <bench@example.org>\r\n"
    b"To: Sink <sink@example.net>\r\n"
    b"Subject: twisted_smtpconn benchmark\r\n"
    b"Message-ID: <benchmark@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
)

#: 80 bytes with CRLF: a line starting with a dot, a dot alone, then text.
_LINES = (
    b".a line that starts with a dot, stuffed on the wire and unstuffed after it.\r\n",
    b".\r\n",
    b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n",
)


def _body(size: int) -> bytes:
    """Header and body lines, exactly ``size`` bytes, ending with CRLF."""
    out = bytearray(_HEADER)
    n = 0
    while True:
        line = _LINES[n % len(_LINES)] if n % 7 < 2 else _LINES[2]
        if len(out) + len(line) > size - 3:
            break
        out += line
        n += 1
    # A last line of x's makes the size exact.
    out += b"x" * (size - len(out) - 2) + b"\r\n"
    return bytes(out)


def to_lf(message: bytes) -> bytes:
    """The same message with LF line ends."""
    return message.replace(b"\r\n", b"\n")


def small_message() -> bytes:
    """The 2 KiB message (CRLF line ends)."""
    return _body(SMALL_SIZE)


def _attachment_lines(size: int) -> bytes:
    """
    ``size`` bytes of base64 lines (76 characters and CRLF, the last one
    shorter and without its CRLF), as a MIME attachment is sent;
    deterministic, so every process makes the same.
    """
    import base64

    seed = hashlib.sha256(b"twisted_smtpconn benchmark").digest()
    raw = b"".join(hashlib.sha256(seed + n.to_bytes(4, "big")).digest() for n in range(4096))
    block = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    whole = block * (size // len(block)) + block[: size % len(block)]
    if whole.endswith(b"\r"):
        # Never cut a CRLF in two.
        whole = whole[:-1] + b"A"
    return whole


def large_message() -> bytes:
    """
    The 20 MiB message (CRLF line ends): what a message that large usually
    is, a short text part (with the dot lines) and a base64 attachment.
    """
    text = _body(SMALL_SIZE)
    mime = (
        b"\r\n--BOUNDARY\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    tail = b"\r\n--BOUNDARY--\r\n"
    return text + mime + _attachment_lines(LARGE_SIZE - len(text) - len(mime) - len(tail)) + tail


#: The generated message's first piece: the text part (with the dot lines)
#: and the attachment's MIME header.
_GENERATED_HEAD = _body(SMALL_SIZE) + (
    b"\r\n--BOUNDARY\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
)
#: Then this block over and over: 64 KiB of whole base64 lines.
_BLOCK = _attachment_lines(64 * 1024)
_BLOCK = _BLOCK[: _BLOCK.rindex(b"\r\n") + 2]


def generated_chunks(total: int) -> Iterator[bytes]:
    """
    A message of about ``total`` bytes (whole blocks of lines), generated as
    it is read: the text part, then the same 64 KiB block of the attachment
    over and over.  Nothing is held but one block, so a client that streams
    can send a message of any size in constant memory.
    """
    yield _GENERATED_HEAD
    for _ in range(_blocks(total)):
        yield _BLOCK


def _blocks(total: int) -> int:
    return max(0, (total - len(_GENERATED_HEAD)) // len(_BLOCK))


def generated_lf_chunks(total: int) -> Iterator[bytes]:
    """:func:`generated_chunks` with LF line ends."""
    head, block = to_lf(_GENERATED_HEAD), to_lf(_BLOCK)
    yield head
    for _ in range(_blocks(total)):
        yield block


def generated_size(total: int) -> int:
    """The CRLF size of ``generated_chunks(total)``."""
    return len(_GENERATED_HEAD) + _blocks(total) * len(_BLOCK)
