"""
Tests of the body codec: CRLF normalisation and dot-stuffing, one chunk at a
time, including every boundary case that broke ``twisted.mail.smtp``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_smtpconn._dotstuff import TERMINATOR, BodyEncoder


def run(chunks: Iterable[bytes], *, dot_stuff: bool = True) -> tuple[bytes, BodyEncoder]:
    """Encode ``chunks`` with one encoder; return the wire bytes and the encoder."""
    encoder = BodyEncoder(dot_stuff=dot_stuff)
    out = b"".join(encoder.encode(chunk) for chunk in chunks) + encoder.finish()
    return out, encoder


def reference_normalise(message: bytes) -> bytes:
    """The obviously-correct normalisation the encoder must agree with."""
    normalised = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if normalised and not normalised.endswith(b"\r\n"):
        normalised += b"\r\n"
    return normalised


def unstuff(wire: bytes) -> bytes:
    """What a receiving SMTP server reconstructs from dot-stuffed DATA."""
    assert wire.endswith(TERMINATOR)
    body = wire[: -len(TERMINATOR)]
    if not body:
        return b""
    assert body.endswith(b"\r\n")
    lines = body[:-2].split(b"\r\n")
    restored = []
    for line in lines:
        if line.startswith(b"."):
            # Every line that starts with "." on the wire must have been stuffed.
            assert line.startswith(b"..")
            line = line[1:]
        restored.append(line)
    return b"\r\n".join(restored) + b"\r\n"


def cut(message: bytes, points: Iterable[int]) -> list[bytes]:
    """Split ``message`` at the given offsets (any order, duplicates give empty chunks)."""
    offsets = sorted(min(max(p, 0), len(message)) for p in points)
    bounds = [0, *offsets, len(message)]
    return [message[a:b] for a, b in zip(bounds, bounds[1:])]


# -- explicit boundary cases ----------------------------------------------------------


def test_dot_line_split_after_crlf() -> None:
    """A "." arriving as the first byte of the next chunk is stuffed."""
    out, _ = run([b"a\r\n", b".x\r\n"])
    assert out == b"a\r\n..x\r\n.\r\n"


def test_lone_dot_line_at_16k_boundary() -> None:
    """
    A "." line placed exactly on a 16 KiB chunk boundary, cut at every
    offset around it, never ends DATA early.
    """
    head = b"a" * (16 * 1024 - 2) + b"\r\n"
    message = head + b".\r\nafter\r\n"
    expected = head + b"..\r\nafter\r\n.\r\n"
    for offset in range(len(head) - 3, len(head) + 5):
        out, encoder = run(cut(message, [offset]))
        assert out == expected, offset
        assert encoder.message_size == len(message)
    # And with the whole message in 16 KiB chunks, as a transport would cut it.
    chunks = [message[i : i + 16 * 1024] for i in range(0, len(message), 16 * 1024)]
    assert chunks[1].startswith(b".\r\n")
    assert run(chunks)[0] == expected


def test_cr_and_lf_in_separate_chunks_make_one_line_end() -> None:
    out, encoder = run([b"a\r", b"\nb\r\n"])
    assert out == b"a\r\nb\r\n.\r\n"
    assert encoder.message_size == 6


def test_held_cr_followed_by_dot_chunk() -> None:
    """A bare CR at a chunk's end is a line end: the next chunk's "." starts a line."""
    assert run([b"a\r", b".b"])[0] == b"a\r\n..b\r\n.\r\n"


def test_cr_cr_lf_is_two_line_ends() -> None:
    assert run([b"a\r\r\nb"])[0] == b"a\r\n\r\nb\r\n.\r\n"
    # Same when cut between the two CRs, or after them.
    assert run([b"a\r", b"\r\nb"])[0] == b"a\r\n\r\nb\r\n.\r\n"
    assert run([b"a\r\r", b"\nb"])[0] == b"a\r\n\r\nb\r\n.\r\n"


def test_lf_dot_lf() -> None:
    out, encoder = run([b"\n.\n"])
    assert out == b"\r\n..\r\n.\r\n"
    assert encoder.message_size == len(b"\r\n.\r\n")


def test_empty_chunks_change_nothing() -> None:
    chunks = [b"", b"a\r", b"", b"", b"\n", b"", b".", b"", b"b", b""]
    assert run(chunks)[0] == run([b"".join(chunks)])[0] == b"a\r\n..b\r\n.\r\n"


def test_message_of_a_single_dot() -> None:
    out, encoder = run([b"."])
    assert out == b"..\r\n.\r\n"
    assert encoder.message_size == 3


def test_message_starting_with_dot() -> None:
    assert run([b".hidden\r\nline\r\n"])[0] == b"..hidden\r\nline\r\n.\r\n"
    # Also when the first chunk is only the dot.
    assert run([b".", b"hidden\n"])[0] == b"..hidden\r\n.\r\n"


def test_dot_not_at_line_start_is_left_alone() -> None:
    assert run([b"a.b\r\n", b"c", b".d\r\n"])[0] == b"a.b\r\nc.d\r\n.\r\n"


def test_empty_message_stays_empty() -> None:
    out, encoder = run([])
    assert out == TERMINATOR
    assert encoder.message_size == 0
    out, encoder = run([b"", b""], dot_stuff=False)
    assert out == b""
    assert encoder.message_size == 0


def test_missing_final_line_end_is_added_once() -> None:
    assert run([b"abc"])[0] == b"abc\r\n.\r\n"
    assert run([b"abc\r\n"])[0] == b"abc\r\n.\r\n"
    assert run([b"abc\n"])[0] == b"abc\r\n.\r\n"
    # A final bare CR is the line end: no second one is added.
    out, encoder = run([b"abc\r"])
    assert out == b"abc\r\n.\r\n"
    assert encoder.message_size == 5


def test_without_dot_stuffing_only_normalises() -> None:
    out, encoder = run([b".a\n.", b"\r", b"\n.\r"], dot_stuff=False)
    assert out == b".a\r\n.\r\n.\r\n"
    assert encoder.message_size == encoder.wire_size == len(out)


def test_sizes() -> None:
    encoder = BodyEncoder()
    first = encoder.encode(b".a\nb\r")
    # The trailing CR is held back and not yet counted.
    assert first == b"..a\r\nb"
    assert encoder.message_size == len(b".a\r\nb")
    assert encoder.wire_size == len(first)
    tail = encoder.finish()
    assert tail == b"\r\n.\r\n"
    assert encoder.message_size == len(b".a\r\nb\r\n")
    assert encoder.wire_size == len(first) + len(tail)


def test_bytes_like_chunks() -> None:
    assert run([bytearray(b"a\n"), memoryview(b".b")])[0] == b"a\r\n..b\r\n.\r\n"  # type: ignore[list-item]


def test_normalised_chunk_is_not_copied() -> None:
    """The common case (CRLF text, no dot lines) costs no copy of the chunk."""
    encoder = BodyEncoder()
    chunk = b"Subject: hi\r\n\r\n" + b"line of text\r\n" * 1000
    assert encoder.encode(chunk) is chunk


def test_encode_after_finish_is_an_error() -> None:
    encoder = BodyEncoder()
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.encode(b"late")
    with pytest.raises(RuntimeError):
        encoder.finish()


# -- properties -----------------------------------------------------------------------

# Messages dense in the bytes that matter, and arbitrary binary ones.
messages = st.one_of(
    st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b".\r\n", b"\n.\n"]), max_size=60).map(b"".join),
    st.binary(max_size=300),
)
cut_points = st.lists(st.integers(min_value=0, max_value=400), max_size=12)

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@settings(max_examples=400)
@given(message=messages, points=cut_points)
def test_any_chunking_round_trips(message: bytes, points: list[int]) -> None:
    out, encoder = run(cut(message, points))
    normalised = reference_normalise(message)
    # (a) undoing the stuffing gives the normalised message
    assert unstuff(out) == normalised
    # (b) no bare CR or LF on the wire
    assert _BARE.search(out) is None
    # (c) the only end-of-data sequence is the terminator (the CRLF before
    # the message is the one ending the 354 reply)
    assert (b"\r\n" + out).find(b"\r\n.\r\n") == len(out) - len(TERMINATOR)
    # (d) sizes
    assert encoder.message_size == len(normalised)
    assert encoder.wire_size == len(out)


@given(message=messages, points=cut_points)
def test_any_chunking_without_stuffing_is_plain_normalisation(message: bytes, points: list[int]) -> None:
    out, encoder = run(cut(message, points), dot_stuff=False)
    assert out == reference_normalise(message)
    assert encoder.message_size == encoder.wire_size == len(out)


@given(message=messages, points=cut_points)
def test_output_does_not_depend_on_chunking(message: bytes, points: list[int]) -> None:
    assert run(cut(message, points))[0] == run([message])[0]
