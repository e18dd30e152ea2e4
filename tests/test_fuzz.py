"""
Property-based fuzzing (hypothesis) of everything that reads hostile input
or writes command lines, at the level of the whole client stack.

The codec modules have their own unit properties (``test_reply.py``,
``test_ehlo.py``, ``test_xtext.py``, ``test_dotstuff.py``); the properties
here cross module boundaries, where bugs hide between correct parts:

- the reply parser *behind the line receiver*: any byte stream, cut
  anywhere, gives the same replies, or fails with a contract error, with
  the buffers inside their caps;
- the EHLO parser *behind a connection*: whatever a server claims about
  itself, the session stays sane and the next command is one clean line;
- xtext and the RFC 6533 form: any text decodes or fails with
  ``ValueError``; what goes on the wire is always a single parameter;
- the dot-stuffer *behind the message sources and the producer*: any
  message, in any chunks, reaches a model server's DATA reader intact,
  ending exactly at our terminator;
- command rendering: no caller input, even one forced past the value
  objects' checks, yields a second command line;
- the transaction *under any sequence of replies*: it ends, with a result
  or a contract error, and never writes a command after a 421.

Run with ``--hypothesis-show-statistics`` to see the example counts; the
longer, coverage-guided run is ``tests/fuzz_atheris.py``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_smtpconn import DSN, Envelope, SMTPConnectionError
from twisted_smtpconn._commands import mail_from_command, rcpt_to_command, redact_auth_command
from twisted_smtpconn._ehlo import auth_mechanisms, size_limit
from twisted_smtpconn._errors import ERROR_CODES, EnvelopeError
from twisted_smtpconn._logging import WireLog
from twisted_smtpconn._protocol import MAX_LINE_LENGTH, SMTPClientProtocol
from twisted_smtpconn._reply import Reply, parse_enhanced_status
from twisted_smtpconn._xtext import utf8_addr_xtext, xtext_decode, xtext_encode
from wiretools import ClosingTransport, Wire

FUZZ = settings(deadline=None, max_examples=600, suppress_health_check=[HealthCheck.too_slow])
FUZZ_HEAVY = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])

#: Characters that make trouble: line ends of every kind, NUL, controls,
#: angle brackets, quotes, spaces, xtext's specials, non-ASCII and the
#: Unicode line separators.
_NASTY = "\r\n\x00\t\x0b\x0c\x1b\x7f\x85 <>\"\\+=:;,@.\u2028\u2029é€😀"
nasty_text = st.text(
    st.one_of(st.sampled_from(list(_NASTY)), st.characters(exclude_categories=["Cs"])),
    max_size=40,
)
#: Mostly plausible address parts with the troublemakers mixed in, so that
#: many examples get past the checks and onto the wire.
_part = st.text(st.sampled_from(list("abcxyz019.-_+") * 12 + list(_NASTY)), min_size=1, max_size=12)
_plain = st.text(st.sampled_from(list("abcxyz019.-_+")), min_size=1, max_size=10)
addresses = st.one_of(
    nasty_text,
    st.builds(lambda local, domain: f"{local}@{domain}", _part, _part),
    st.builds(lambda local, domain: f"<{local}@{domain}>", _part, _plain),
    st.builds(lambda local, domain: f"{local}@{domain}.example", _plain, _plain),
    st.builds(lambda local, domain: f'"{local}"@{domain}', _part, _plain),
)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` split at ``points`` (any order, any value)."""
    edges = sorted({min(p, len(data)) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(edges, edges[1:])]


cut_points = st.lists(st.integers(min_value=0, max_value=4000), max_size=20)


# -- the reply parser behind the line receiver ---------------------------------------------


def bare_protocol() -> tuple[SMTPClientProtocol, ClosingTransport]:
    protocol = SMTPClientProtocol(
        clock=MemoryReactorClock(),
        wire_log=WireLog(Logger(observer=lambda event: None), False),
        greeting_timeout=30.0,
        socket_timeout=30.0,
    )
    transport = ClosingTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def settled(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


reply_text = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=30)
# 421 is left out: it is not a reply to pair but the end of the connection
# (see test_421_fails_every_waiter_at_once).
replies = st.lists(
    st.tuples(st.integers(200, 599).filter(lambda code: code != 421), st.lists(reply_text, min_size=1, max_size=5), st.booleans()),
    min_size=1,
    max_size=8,
)


@FUZZ
@given(replies=replies, points=cut_points)
def test_reply_stream_is_the_same_however_it_is_cut(
    replies: list[tuple[int, list[str], bool]], points: list[int]
) -> None:
    rendered = b""
    for code, texts, bare_lf in replies:
        end = b"\n" if bare_lf else b"\r\n"
        lines = [f"{code}-{t}" for t in texts[:-1]] + [f"{code} {texts[-1]}"]
        rendered += b"".join(line.encode() + end for line in lines)
    protocol, transport = bare_protocol()
    waiters = [protocol.wait_greeting()] + [protocol.expect_reply() for _ in replies[1:]]
    results = [settled(w) for w in waiters]
    for piece in cut(rendered, points):
        protocol.dataReceived(piece)
    for (code, texts, _), got in zip(replies, results):
        assert got == [Reply(code, tuple(texts), parse_enhanced_status(code, texts[0]))]
    assert protocol.failure is None


@FUZZ
@given(before=st.integers(0, 3), after=st.integers(1, 3), points=cut_points)
def test_421_fails_every_waiter_at_once(before: int, after: int, points: list[int]) -> None:
    protocol, transport = bare_protocol()
    waiters = [protocol.wait_greeting()] + [protocol.expect_reply() for _ in range(before + after - 1)]
    results = [settled(w) for w in waiters]
    stream = b"250 ok\r\n" * before + b"421 4.3.2 closing\r\n250 never read\r\n"
    for piece in cut(stream, points):
        protocol.dataReceived(piece)
    # A reply read before the 421 is handed on, unless it came in the same
    # read as the 421: then it fails with it (and so does every one after).
    outcomes = [got[0] if not isinstance(got[0], Failure) else got[0].value for got in results]
    failed = [isinstance(value, Exception) for value in outcomes]
    assert failed == sorted(failed), outcomes
    assert all(value == Reply(250, ("ok",)) for value in outcomes if not isinstance(value, Exception))
    assert all(value is protocol.failure for value in outcomes if isinstance(value, Exception))
    assert all(failed[before:])
    assert protocol.failure is not None and protocol.failure.code == "ECONNECTION"
    assert protocol.failure.response_code == 421
    assert transport.aborted


hostile_bytes = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"250-", b"250 ", b"\r\n", b"\n", b"\r", b"550 x\r\n", b"220 ok\r\n", b"354 go\r\n"]),
        st.builds(lambda n: b"y" * n, st.integers(0, 3 * MAX_LINE_LENGTH)),
        st.builds(lambda n: b"250-z\r\n" * n, st.integers(0, 1200)),
    ),
    max_size=25,
).map(b"".join)


@FUZZ_HEAVY
@given(data=hostile_bytes, points=cut_points, waiting=st.integers(1, 6))
def test_hostile_byte_streams_resolve_every_waiter_once(data: bytes, points: list[int], waiting: int) -> None:
    protocol, transport = bare_protocol()
    waiters = [protocol.wait_greeting()] + [protocol.expect_reply() for _ in range(waiting - 1)]
    results = [settled(w) for w in waiters]
    for piece in cut(data, points):
        protocol.dataReceived(piece)  # never raises
        if protocol.failure is None:
            # Memory stays bounded: never more than one line's cap buffered.
            assert len(protocol._buffer) <= MAX_LINE_LENGTH  # type: ignore[attr-defined]
    transport.loseConnection()
    for got in results:
        assert len(got) == 1, "a waiter must be resolved exactly once"
        if isinstance(got[0], Failure):
            error = got[0].value
            assert isinstance(error, SMTPConnectionError) and error.code in ("EPROTOCOL", "ECONNECTION")
            for text in (str(error), repr(error)):
                assert "\r" not in text and "\n" not in text and "\x00" not in text
        else:
            assert isinstance(got[0], Reply) and 200 <= got[0].code <= 599


# -- the EHLO parser behind a connection ---------------------------------------------------

ehlo_line = st.one_of(
    st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=30),
    st.builds(
        lambda kw, rest: f"{kw} {rest}",
        st.sampled_from(["SIZE", "size", "AUTH", "AUTH=", "auth=login", "PIPELINING", "8BITMIME", "DSN", "SMTPUTF8", "X-Y"]),
        st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=25),
    ),
)
_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}")
_KEYWORD = re.compile(r"[A-Z0-9][A-Z0-9-]*")


@FUZZ
@given(lines=st.lists(ehlo_line, max_size=12), size=st.one_of(st.none(), st.integers(0, 10**12)))
def test_whatever_the_ehlo_says_the_next_command_is_one_clean_line(lines: list[str], size: int | None) -> None:
    ehlo = b"".join(f"250-{line}\r\n".encode() for line in ["server.example", *lines]) + b"250 END\r\n"
    wire = Wire()
    conn = wire.connect(ehlo)
    for key, value in conn.extensions.items():
        assert _KEYWORD.fullmatch(key), key
        assert "\r" not in value and "\n" not in value
    assert all(_MECHANISM.fullmatch(m) for m in conn.auth_methods)
    limit = size_limit(conn.extensions)
    assert limit is None or 0 < limit < 10**20
    assert auth_mechanisms(conn.extensions) == conn.auth_methods

    d = wire.conn.send(Envelope("a@example.org", ["b@example.org"], size=size), b"m")
    written = wire.client()
    if d.called:
        # Refused before sending: only the size check may do that.
        failure = settled(d)[0]
        assert failure.value.code == "EMESSAGE" and limit is not None and size is not None and size > limit
        assert written == b""
        return
    commands = written.split(b"\r\n")
    assert commands[-1] == b""
    assert all(line.startswith((b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.org>", b"DATA")) for line in commands[:-1])
    assert re.fullmatch(rb"MAIL FROM:<a@example\.org>( SIZE=\d+)?", commands[0])
    wire.conn.close()
    settled(d)


# -- xtext ---------------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=60))
def test_xtext_decode_of_anything_is_text_or_value_error(value: str) -> None:
    try:
        decoded = xtext_decode(value)
    except ValueError:
        return
    # What decodes re-encodes to the canonical form, which decodes the same.
    assert xtext_decode(xtext_encode(decoded)) == decoded


@FUZZ
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=60))
def test_encoded_forms_are_one_printable_parameter(value: str) -> None:
    for encoded in (xtext_encode(value), utf8_addr_xtext(value)):
        assert all("!" <= c <= "~" for c in encoded), encoded
        assert "=" not in encoded
    assert "+" not in utf8_addr_xtext(value)


# -- the dot-stuffer behind the sources and the producer ------------------------------------

message_bytes = st.one_of(
    st.lists(
        st.sampled_from([b"\r", b"\n", b".", b"..", b"a", b"\r\n", b".\r\n", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"x" * 70]),
        max_size=80,
    ).map(b"".join),
    st.binary(max_size=400),
)


def model_data_reader(wire: bytes) -> tuple[bytes, bytes]:
    """
    What a server's DATA reader makes of ``wire``: lines up to the first
    line holding a single ``.``, un-stuffed; and whatever followed it.
    """
    lines = []
    rest = wire
    while True:
        end = rest.find(b"\r\n")
        assert end >= 0, "the data never ended"
        line, rest = rest[:end], rest[end + 2 :]
        if line == b".":
            return b"".join(lines), rest
        lines.append((line[1:] if line.startswith(b".") else line) + b"\r\n")


def normalise(message: bytes) -> bytes:
    text = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text


@FUZZ_HEAVY
@given(message=message_bytes, points=cut_points, kind=st.sampled_from(["chunks", "bytes", "str"]))
def test_any_message_in_any_chunks_reaches_the_server_intact(message: bytes, points: list[int], kind: str) -> None:
    wire = Wire()
    wire.connect()
    source: object
    if kind == "chunks":
        source = iter(cut(message, points))
    elif kind == "bytes":
        source = message
    else:
        source = message.decode("latin-1")
        message = source.encode("utf-8")
    d = wire.conn.send(Envelope("a@example.org", "b@example.org"), source)
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    written = wire.client()
    head = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    assert written.startswith(head)
    received, after = model_data_reader(written[len(head) :])
    assert received == normalise(message)
    assert after == b"", "bytes after the terminator would be read as commands"
    wire.server(b"250 queued\r\n")
    assert settled(d)[0].message_size == len(normalise(message))


# -- command rendering: never a second command line ---------------------------------------

EXTENSIONS = {"SIZE": "", "8BITMIME": "", "DSN": "", "SMTPUTF8": "", "PIPELINING": ""}


def one_line(line: bytes) -> None:
    assert b"\r" not in line and b"\n" not in line and b"\x00" not in line, line


@FUZZ
@given(
    mail_from=addresses,
    rcpts=st.one_of(addresses, st.lists(addresses, max_size=4)),
    envid=st.one_of(st.none(), st.none(), nasty_text, _part),
    orcpt=st.one_of(st.none(), st.none(), addresses),
    notify=st.one_of(
        st.none(),
        st.none(),
        nasty_text,
        st.lists(st.sampled_from(["SUCCESS", "failure", "Delay", "NEVER", " success", "DELAY\r\n"]), max_size=3),
    ),
    ret=st.one_of(st.none(), st.none(), nasty_text, st.sampled_from(["FULL", "hdrs", "FULL\r\nRSET"])),
)
def test_no_caller_input_yields_a_second_command_line(
    mail_from: str, rcpts: Any, envid: str | None, orcpt: str | None, notify: Any, ret: str | None
) -> None:
    try:
        dsn = DSN(ret=ret, envid=envid, notify=notify, orcpt=orcpt)
        envelope = Envelope(mail_from, rcpts, size=123, use_8bit_mime=True, dsn=dsn)
    except (TypeError, ValueError, EnvelopeError):
        event("refused by Envelope/DSN")
        return
    event("sent to the wire")
    wire = Wire()
    wire.connect(b"250-server.example\r\n" + b"".join(f"250-{k}\r\n".encode() for k in EXTENSIONS) + b"250 END\r\n")
    d = wire.conn.send(envelope, b"m")
    written = wire.client()
    if d.called:
        # Refused locally (SMTPUTF8 rules): nothing at all was written.
        assert settled(d)[0].value.code == "EENVELOPE"
        assert written == b""
        return
    lines = written.split(b"\r\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    # PIPELINING: MAIL, one RCPT per recipient, DATA -- and nothing else.
    assert len(lines) == 2 + len(envelope.rcpt_to)
    assert lines[0].startswith(b"MAIL FROM:<") and lines[-1] == b"DATA"
    assert all(line.startswith(b"RCPT TO:<") for line in lines[1:-1])
    for line in lines:
        one_line(line)
    wire.conn.close()
    settled(d)


@FUZZ
@given(
    mail_from=nasty_text,
    rcpt=nasty_text,
    envid=nasty_text,
    orcpt=nasty_text,
    notify=st.lists(nasty_text, min_size=1, max_size=2),
    ret=nasty_text,
)
def test_renderers_refuse_values_forced_past_the_checks(
    mail_from: str, rcpt: str, envid: str, orcpt: str, notify: list[str], ret: str
) -> None:
    """
    A value object tampered with after its checks (``object.__setattr__``
    on the frozen instance) still cannot make a renderer emit CR, LF or NUL.
    """
    envelope = Envelope("a@example.org", "b@example.org", dsn=DSN(ret="FULL", envid="x", notify="SUCCESS", orcpt="b@example.org"))
    dsn = envelope.dsn
    assert dsn is not None
    object.__setattr__(envelope, "mail_from", mail_from)
    object.__setattr__(dsn, "ret", ret)
    object.__setattr__(dsn, "envid", envid)
    object.__setattr__(dsn, "notify", tuple(notify))
    object.__setattr__(dsn, "orcpt", orcpt)
    for render in (
        lambda: mail_from_command(envelope, EXTENSIONS),
        lambda: rcpt_to_command(rcpt, dsn, EXTENSIONS, smtputf8=True),
        lambda: rcpt_to_command(rcpt, dsn, EXTENSIONS, smtputf8=False),
    ):
        try:
            line = render()
        except (TypeError, ValueError, EnvelopeError):
            continue
        one_line(line)


@FUZZ
@given(
    name=st.one_of(
        nasty_text,
        _part,
        _plain,
        st.builds(lambda a, b: f"{a}.{b}", _plain, _plain),
        st.from_regex(r"\A\[[0-9a-fA-F:.IPv6]{1,20}\]\Z"),
    )
)
def test_client_name_is_one_hello_line_or_refused(name: str) -> None:
    try:
        wire = Wire(name=name)
    except (TypeError, ValueError):
        event("refused")
        return
    event("accepted")
    d = wire.conn.connect()
    wire.server(b"220 server.example\r\n")
    line = wire.client()
    assert line == b"EHLO " + name.encode("ascii") + b"\r\n"
    one_line(line[:-2])
    wire.conn.close()
    settled(d)


@FUZZ
@given(mechanism=st.from_regex(r"\A[A-Z0-9_-]{1,20}\Z"), secret=nasty_text)
def test_redacted_auth_lines_never_show_the_response(mechanism: str, secret: str) -> None:
    token = "S3CR3T" + secret.replace(" ", "_")
    shown = redact_auth_command(f"AUTH {mechanism} {token}".encode("utf-8", "surrogatepass"))
    assert "S3CR3T" not in shown


# -- the transaction under any sequence of replies -----------------------------------------

REPLIES = [
    b"250 ok\r\n",
    b"251 forwarded\r\n",
    b"354 go\r\n",
    b"334 VXNlcm5hbWU6\r\n",
    b"421 4.3.2 bye\r\n",
    b"450 4.2.1 later\r\n",
    b"452 4.5.3 too many\r\n",
    b"500 5.5.1 what\r\n",
    b"550 5.1.1 no\r\n",
    b"554 5.5.1 no valid recipients\r\n",
    b"250-multi\r\n250 line\r\n",
    b"250-mixed\r\n550 codes\r\n",
    b"garbage\r\n",
]
#: Verbs the client may write during a send.
_VERBS = (b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b".")


def run_script(script: list[bytes], pipelining: bool, recipients: int) -> tuple[Wire, Any, list[bytes], list[bytes]]:
    """
    One send against ``script``: a reply from it each time the client has
    written, the connection dropped once it is used up.  Returns the wire,
    the outcome, and what the client wrote after each reply (``writes[0]``
    before any).
    """
    ehlo = b"250-server.example\r\n250 PIPELINING\r\n" if pipelining else b"250 server.example\r\n"
    wire = Wire()
    wire.connect(ehlo)
    rcpts = [f"r{n}@example.org" for n in range(recipients)]
    d = wire.conn.send(Envelope("a@example.org", rcpts), b"body line\r\n")
    script = list(script)
    fed: list[bytes] = []
    writes: list[bytes] = []
    for _ in range(30):  # bounded: at most 30 exchanges
        if d.called:
            break
        writes.append(wire.client())
        if script:
            fed.append(script.pop(0))
            wire.server(fed[-1])
        else:
            wire.drop()  # the server gives up: the send must end too
    assert d.called, "the send neither succeeded nor failed"
    writes.append(wire.client())
    [result] = settled(d)
    return wire, result, fed, writes


@FUZZ_HEAVY
@given(
    script=st.lists(st.sampled_from(REPLIES), max_size=12),
    pipelining=st.booleans(),
    recipients=st.integers(1, 3),
)
def test_any_reply_sequence_ends_the_send_cleanly(script: list[bytes], pipelining: bool, recipients: int) -> None:
    wire, result, fed, writes = run_script(script, pipelining, recipients)
    transcript = b"".join(writes)
    rcpts = [f"r{n}@example.org" for n in range(recipients)]
    event(f"outcome: {type(result.value).__name__}" if isinstance(result, Failure) else "outcome: sent")
    if isinstance(result, Failure):
        error = result.value
        assert isinstance(error, SMTPConnectionError), repr(error)
        assert error.code in ERROR_CODES
        if error.closes_connection:
            assert wire.transport.disconnecting
    else:
        assert result.accepted and set(result.accepted) <= set(rcpts)
        assert b"DATA\r\n" in transcript and transcript.endswith(b"body line\r\n.\r\n")
    # Only whole command lines (and the message) ever went out.
    for line in transcript.replace(b"body line\r\n", b"").split(b"\r\n")[:-1]:
        assert line.startswith(_VERBS), line
    assert transcript.endswith(b"\r\n") or transcript == b""
    # Nothing at all after a 421 (RFC 5321 3.8: the server closes).
    nothing_after_421(fed, writes)
    wire.conn.close()


#: RFC 5321 3.8: after a 421 the server closes the channel; nothing more
#: may be sent.  These two paths once wrote after one: the stepwise
#: envelope (the remaining RCPTs) and the pipelined envelope (RSET after a
#: 421 to the "." that ends a transaction without recipients).
def nothing_after_421(fed: list[bytes], writes: list[bytes]) -> None:
    for index, reply in enumerate(fed):
        if reply.startswith(b"421"):
            assert b"".join(writes[index + 1 :]) == b"", f"wrote {writes[index + 1:]!r} after {reply!r}"


@pytest.mark.parametrize(
    ("script", "pipelining", "recipients"),
    [
        ([b"250 ok\r\n", b"421 4.3.2 bye\r\n", b"250 ok\r\n"], False, 2),
        ([b"250 ok\r\n", b"550 no\r\n", b"354 go\r\n", b"421 4.3.2 bye\r\n"], True, 1),
    ],
    ids=["stepwise-rcpt", "pipelined-empty-dot"],
)
def test_nothing_written_after_a_421(script: list[bytes], pipelining: bool, recipients: int) -> None:
    wire, _, fed, writes = run_script(script, pipelining, recipients)
    nothing_after_421(fed, writes)
    wire.conn.close()
