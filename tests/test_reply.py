"""Tests for twisted_smtpconn._reply: the Reply value and the line parser."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_smtpconn._errors import ProtocolError, SMTPConnectionError
from twisted_smtpconn._reply import Reply, ReplyParser, describe_line, parse_enhanced_status


def feed_all(parser: ReplyParser, lines: list[bytes]) -> list[Reply]:
    replies = []
    for line in lines:
        reply = parser.feed_line(line)
        if reply is not None:
            replies.append(reply)
    return replies


# -- Reply ------------------------------------------------------------------------


def test_reply_properties() -> None:
    reply = Reply(250, ("mail.example greets you", "SIZE 1000"), None)
    assert reply.text == "mail.example greets you\nSIZE 1000"
    assert str(reply) == "250 mail.example greets you SIZE 1000"
    assert reply.is_positive
    assert not (reply.is_intermediate or reply.is_transient or reply.is_permanent)


@pytest.mark.parametrize(
    ("code", "flags"),
    [
        (220, (True, False, False, False)),
        (354, (False, True, False, False)),
        (421, (False, False, True, False)),
        (550, (False, False, False, True)),
    ],
)
def test_reply_classes(code: int, flags: tuple[bool, bool, bool, bool]) -> None:
    reply = Reply(code, ("x",))
    assert (reply.is_positive, reply.is_intermediate, reply.is_transient, reply.is_permanent) == flags


def test_reply_is_a_frozen_comparable_value() -> None:
    a = Reply(550, ("5.1.1 no such user",), "5.1.1")
    b = Reply(550, ("5.1.1 no such user",), "5.1.1")
    assert a == b and hash(a) == hash(b)
    assert a != Reply(551, ("5.1.1 no such user",), "5.1.1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.code = 250  # type: ignore[misc]
    assert repr(a) == "Reply(code=550, lines=('5.1.1 no such user',), enhanced_status='5.1.1')"


def test_str_of_a_bare_code() -> None:
    assert str(Reply(250, ("",))) == "250"


def test_str_escapes_control_characters() -> None:
    reply = Reply(550, ("evil \x1b[2J text\r", "\x85next"))
    assert str(reply) == "550 evil \\x1b[2J text\\x0d \\x85next"
    # The text itself is kept as the server sent it.
    assert reply.lines[0] == "evil \x1b[2J text\r"


@pytest.mark.parametrize(
    ("code", "lines", "error"),
    [
        (99, ("x",), ValueError),
        (600, ("x",), ValueError),
        (250, (), ValueError),
        ("250", ("x",), TypeError),
        (True, ("x",), TypeError),
        (250, ["x"], TypeError),
        (250, (b"x",), TypeError),
    ],
)
def test_reply_rejects_impossible_values(code: object, lines: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        Reply(code, lines)  # type: ignore[arg-type]


# -- enhanced status -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (250, "2.1.0 Sender ok", "2.1.0"),
        (550, "5.1.1 <x@y>: no such user", "5.1.1"),
        (451, "4.7.1 try later", "4.7.1"),
        (250, "2.0.0", "2.0.0"),
        (535, "5.7.8\tbad credentials", "5.7.8"),
        (554, "5.123.456 long", "5.123.456"),
        (550, "2.1.0 wrong class", None),
        (250, "5.1.1 wrong class", None),
        (354, "3.0.0 no status on 3xx", None),
        (250, "ok 2.1.0", None),
        (250, "2.1.0ok", None),
        (250, "2.1 short", None),
        (250, "2.1.0.1 extra", None),
        (250, "2.1234.0 too many digits", None),
        (250, "", None),
        (250, "２.1.0 fullwidth", None),
    ],
)
def test_parse_enhanced_status(code: int, text: str, expected: str | None) -> None:
    assert parse_enhanced_status(code, text) == expected


def test_enhanced_status_is_taken_from_the_first_line_only() -> None:
    parser = ReplyParser()
    reply = feed_all(parser, [b"250-first", b"250 2.0.0 second"])[0]
    assert reply.enhanced_status is None
    reply = feed_all(parser, [b"250-2.0.0 first", b"250 second"])[0]
    assert reply.enhanced_status == "2.0.0"


# -- the parser ---------------------------------------------------------------------


def test_single_line_reply() -> None:
    parser = ReplyParser()
    reply = parser.feed_line(b"250 2.1.5 Ok")
    assert reply == Reply(250, ("2.1.5 Ok",), "2.1.5")
    assert not parser.in_progress


def test_trailing_cr_is_stripped_but_only_one() -> None:
    parser = ReplyParser()
    assert parser.feed_line(b"250 ok\r") == Reply(250, ("ok",))
    assert parser.feed_line(b"250 ok\r\r") == Reply(250, ("ok\r",))


def test_multi_line_reply() -> None:
    parser = ReplyParser()
    assert parser.feed_line(b"250-mail.example\r") is None
    assert parser.in_progress
    assert parser.feed_line(b"250-SIZE 1000") is None
    assert parser.buffered_lines == 2
    assert parser.buffered_bytes == len(b"250-mail.example") + len(b"250-SIZE 1000")
    reply = parser.feed_line(b"250 8BITMIME")
    assert reply == Reply(250, ("mail.example", "SIZE 1000", "8BITMIME"))
    assert not parser.in_progress
    assert parser.buffered_lines == 0 and parser.buffered_bytes == 0


def test_bare_code_ends_a_reply() -> None:
    parser = ReplyParser()
    assert parser.feed_line(b"250-first") is None
    assert parser.feed_line(b"250") == Reply(250, ("first", ""))
    assert parser.feed_line(b"354") == Reply(354, ("",))


def test_empty_continuation_text() -> None:
    parser = ReplyParser()
    assert feed_all(parser, [b"250-", b"250 "]) == [Reply(250, ("", ""))]


def test_invalid_utf8_is_replaced() -> None:
    reply = ReplyParser().feed_line(b"550 caf\xe9 \xc3\xa9")
    assert reply is not None
    assert reply.lines == ("caf\ufffd \xe9",)


def test_parser_reusable_across_replies() -> None:
    parser = ReplyParser()
    replies = feed_all(parser, [b"220 hi", b"250-a", b"250 b", b"354 go", b"550 5.1.1 no"])
    assert [r.code for r in replies] == [220, 250, 354, 550]
    assert replies[1].lines == ("a", "b")
    assert replies[3].enhanced_status == "5.1.1"


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\r",
        b"25",
        b"hello there",
        b"abc def",
        b"199 too low",
        b"100 continue",
        b"600 too high",
        b"999 nonsense",
        b"099 x",
        b"2x0 letters",
        b" 250 leading space",
        b"250x",
        b"2500 four digits",
        b"250\tab",
        b"250_x",
        b"250=x",
        "２５０ fullwidth".encode(),
        b"\x00\x00\x00",
    ],
)
def test_malformed_lines_raise_protocol_error(line: bytes) -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed_line(line)
    assert info.value.code == "EPROTOCOL"
    assert repr(line.rstrip(b"\r")) in str(info.value)


def test_code_change_within_a_reply() -> None:
    parser = ReplyParser()
    parser.feed_line(b"250-ok")
    with pytest.raises(ProtocolError, match="250 to 550"):
        parser.feed_line(b"550 no")


def test_unusable_after_an_error() -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError):
        parser.feed_line(b"garbage")
    assert not parser.in_progress
    with pytest.raises(ProtocolError, match="failed earlier"):
        parser.feed_line(b"250 ok")


def test_error_message_escapes_control_characters_and_truncates() -> None:
    parser = ReplyParser()
    line = b"\x1b[31m" + b"A" * 5000
    with pytest.raises(ProtocolError) as info:
        parser.feed_line(line)
    message = str(info.value)
    assert "\x1b" not in message
    assert "\\x1b[31m" in message
    assert len(message) < 300
    assert "5000" not in message and "5005 bytes" in message


def test_describe_line() -> None:
    assert describe_line(b"250 ok\x00") == "b'250 ok\\x00'"
    assert describe_line(b"x" * 101) == repr(b"x" * 100) + "... (101 bytes)"


def test_line_cap_is_checked_before_storing() -> None:
    parser = ReplyParser(max_lines=3)
    assert feed_all(parser, [b"250-a", b"250-b", b"250 c"]) == [Reply(250, ("a", "b", "c"))]
    feed_all(parser, [b"250-a", b"250-b", b"250-c"])
    assert parser.buffered_lines == 3
    with pytest.raises(ProtocolError, match="more than 3 lines"):
        parser.feed_line(b"250 d")
    assert parser.buffered_lines == 0


def test_byte_cap_is_checked_before_storing() -> None:
    parser = ReplyParser(max_reply_bytes=20)
    # Exactly 20 bytes (CRs are not counted) is fine.
    assert feed_all(parser, [b"250-abcdef\r", b"250 ghijkl"]) == [Reply(250, ("abcdef", "ghijkl"))]
    parser.feed_line(b"250-abcdef")
    with pytest.raises(ProtocolError, match="longer than 20 bytes"):
        parser.feed_line(b"250 ghijklm")
    assert parser.buffered_bytes == 0


def test_single_huge_line_is_refused() -> None:
    parser = ReplyParser(max_reply_bytes=100)
    with pytest.raises(ProtocolError):
        parser.feed_line(b"250 " + b"x" * 97)


def test_endless_multiline_reply_is_stopped_by_the_default_caps() -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError):
        for _ in range(2000):
            parser.feed_line(b"250-" + b"y" * 10)
    assert parser.buffered_lines == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_reply_bytes": 0}, ValueError),
        ({"max_lines": 0}, ValueError),
        ({"max_lines": -5}, ValueError),
        ({"max_lines": 1.5}, TypeError),
        ({"max_reply_bytes": True}, TypeError),
    ],
)
def test_parser_rejects_bad_limits(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        ReplyParser(**kwargs)  # type: ignore[arg-type]


# -- properties ------------------------------------------------------------------------

# Reply text: anything a server could put in a line, except the line ends.
line_text = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=40)


@settings(deadline=None, max_examples=300)
@given(
    code=st.integers(200, 599),
    texts=st.lists(line_text, min_size=1, max_size=12),
    with_cr=st.booleans(),
    bare_last=st.booleans(),
)
def test_round_trip(code: int, texts: list[str], with_cr: bool, bare_last: bool) -> None:
    """Render a random reply, feed it line by line, get the same Reply back."""
    if bare_last and texts[-1] == "":
        rendered_last = str(code)
    else:
        rendered_last = f"{code} {texts[-1]}"
    rendered = [f"{code}-{text}" for text in texts[:-1]] + [rendered_last]
    ending = b"\r" if with_cr else b""
    parser = ReplyParser()
    results = [parser.feed_line(line.encode("utf-8") + ending) for line in rendered]
    assert results[:-1] == [None] * (len(texts) - 1)
    expected = Reply(code, tuple(texts), parse_enhanced_status(code, texts[0]))
    assert results[-1] == expected
    assert not parser.in_progress


@settings(deadline=None, max_examples=300)
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.builds(
                lambda code, sep, text: code + sep + text,
                st.sampled_from([b"250", b"550", b"354", b"199", b"600", b"25x"]),
                st.sampled_from([b"-", b" ", b"", b"x", b"\r"]),
                st.binary(max_size=20),
            ),
        ),
        max_size=40,
    ),
    max_lines=st.integers(1, 8),
    max_bytes=st.integers(1, 120),
)
def test_arbitrary_bytes(lines: list[bytes], max_lines: int, max_bytes: int) -> None:
    """Only ProtocolError ever escapes, and the caps always hold."""
    parser = ReplyParser(max_reply_bytes=max_bytes, max_lines=max_lines)
    failed = False
    current: list[bytes] = []
    for line in lines:
        try:
            reply = parser.feed_line(line)
        except ProtocolError:
            failed = True
        else:
            assert not failed, "a failed parser must keep failing"
            current.append(line[:-1] if line.endswith(b"\r") else line)
            if reply is not None:
                assert 200 <= reply.code <= 599
                assert all(raw[:3] == str(reply.code).encode() for raw in current)
                assert len(current) <= max_lines
                assert sum(len(raw) for raw in current) <= max_bytes
                assert reply.lines == tuple(raw[4:].decode("utf-8", "replace") for raw in current)
                current = []
        assert parser.buffered_lines <= max_lines
        assert parser.buffered_bytes <= max_bytes


def test_protocol_error_is_a_library_error() -> None:
    with pytest.raises(SMTPConnectionError):
        ReplyParser().feed_line(b"x")
