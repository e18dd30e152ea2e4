"""
CHUNKING and pipelined sends against a real server: a private Postfix
(which offers PIPELINING and CHUNKING) relaying to an aiosmtpd recorder, so
that the bytes delivered can be compared with the bytes sent.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.logger import LogEvent, Logger, formatEvent

from realservers.aiosmtpd_peer import ReceivedMessage
from realservers.postfix_peer import PostfixRelay, strip_postfix_received
from tls_peers import guard
from twisted_smtpconn import Envelope, EnvelopeError, MessageError, SMTPConnection

pytestmark = pytest.mark.postfix

SENDER = "sender@example.org"
RCPT = "rcpt@example.net"


def message(marker: str, body_lines: int = 20) -> bytes:
    """A message with what dot-stuffing and line-end handling get wrong."""
    lines = [
        "From: Sender <sender@example.org>",
        "To: rcpt@example.net",
        f"Subject: bdat {marker}",
        f"Message-ID: <{marker}@example.org>",
        "",
        ".leading dot",
        ".",
        "..two dots",
    ]
    lines += [f"line {n} of {marker}" for n in range(body_lines)]
    return ("\r\n".join(lines) + "\r\n").encode()


def big_message(marker: str, size: int) -> Iterator[bytes]:
    """About ``size`` bytes in 10 000-byte pieces, bare LF line ends."""
    yield f"Subject: big {marker}\n\n".encode()
    line = b".dot-led line of a big message, cut anywhere by the pieces" + b"-" * 40 + b"\n"
    block = line * (10_000 // len(line) + 1)
    for _ in range(size // 10_000):
        yield block[:10_000]


def transcript() -> tuple[Logger, Callable[[], str]]:
    events: list[LogEvent] = []
    log = Logger(observer=events.append)  # type: ignore[arg-type]
    return log, lambda: "\n".join(formatEvent(event) for event in events)


async def delivered(relay: PostfixRelay, marker: str) -> ReceivedMessage:
    from twisted.internet import reactor

    found: ReceivedMessage = await guard(
        relay.recorder.when_match(lambda m: marker.encode() in m.content[:2000], reactor, timeout=20.0),
        30.0,
    )
    return found


def connection(relay: PostfixRelay, **options: Any) -> SMTPConnection:
    return SMTPConnection(relay.host, relay.port, name="client.test", ignore_tls=True, **options)


@pytest_twisted.ensureDeferred
async def test_bdat_through_postfix_delivers_the_normalised_bytes(postfix_server: PostfixRelay) -> None:
    marker = uuid.uuid4().hex
    log, text = transcript()
    conn = connection(postfix_server, logger=log, debug=True)
    await guard(conn.connect())
    assert "CHUNKING" in conn.extensions and "PIPELINING" in conn.extensions
    sent = message(marker)
    lf_only = sent.replace(b"\r\n", b"\n")
    info = await guard(conn.send(Envelope(SENDER, [RCPT]), lf_only))
    await guard(conn.quit())
    assert info.accepted == [RCPT]
    assert info.message_size == len(sent)
    assert f"BDAT {len(sent)} LAST" in text()
    assert "DATA" not in text().replace("BDAT", "")
    got = await delivered(postfix_server, marker)
    assert strip_postfix_received(got.content) == sent


@pytest_twisted.ensureDeferred
async def test_large_streamed_message_in_many_chunks(postfix_server: PostfixRelay) -> None:
    marker = uuid.uuid4().hex
    log, text = transcript()
    conn = connection(postfix_server, logger=log, debug=True)
    await guard(conn.connect())
    expected = b"".join(big_message(marker, 3_000_000)).replace(b"\n", b"\r\n") + b"\r\n"
    info = await guard(conn.send(Envelope(SENDER, [RCPT]), big_message(marker, 3_000_000)), 60.0)
    await guard(conn.quit())
    assert info.message_size == len(expected)
    assert text().count("C: BDAT") > 10
    assert text().count(" LAST") == 1
    got = await delivered(postfix_server, marker)
    digest = hashlib.sha256(strip_postfix_received(got.content)).hexdigest()
    assert digest == hashlib.sha256(expected).hexdigest()


@pytest_twisted.ensureDeferred
async def test_prefer_data_through_postfix(postfix_server: PostfixRelay) -> None:
    marker = uuid.uuid4().hex
    log, text = transcript()
    conn = connection(postfix_server, logger=log, debug=True, prefer_data=True)
    await guard(conn.connect())
    sent = message(marker)
    await guard(conn.send(Envelope(SENDER, [RCPT]), sent))
    await guard(conn.quit())
    assert "C: DATA" in text() and "BDAT" not in text()
    got = await delivered(postfix_server, marker)
    assert strip_postfix_received(got.content) == sent


@pytest_twisted.ensureDeferred
async def test_binary_is_refused_before_sending_without_binarymime(postfix_server: PostfixRelay) -> None:
    conn = connection(postfix_server)
    await guard(conn.connect())
    assert "BINARYMIME" not in conn.extensions
    with pytest.raises(EnvelopeError):
        await guard(conn.send(Envelope(SENDER, [RCPT], binary=True), b"\x00binary"))
    # Nothing was sent: the connection is as good as new.
    marker = uuid.uuid4().hex
    await guard(conn.send(Envelope(SENDER, [RCPT]), message(marker)))
    await guard(conn.quit())
    await delivered(postfix_server, marker)


@pytest.mark.parametrize("prefer_data", [False, True], ids=["bdat", "data"])
@pytest_twisted.ensureDeferred
async def test_queued_sends_pipelined_back_to_back(postfix_server: PostfixRelay, prefer_data: bool) -> None:
    """Each send's commands follow the previous message; every message arrives intact."""
    conn = connection(postfix_server, prefer_data=prefer_data)
    await guard(conn.connect())
    markers = [uuid.uuid4().hex for _ in range(15)]
    infos = await guard(
        gatherResults([conn.send(Envelope(SENDER, [RCPT]), message(m, 3)) for m in markers]), 60.0
    )
    await guard(conn.quit())
    assert [info.accepted for info in infos] == [[RCPT]] * len(markers)
    for marker in markers:
        got = await delivered(postfix_server, marker)
        assert strip_postfix_received(got.content) == message(marker, 3)


@pytest.fixture(scope="module")
def strict_postfix() -> Iterator[PostfixRelay]:
    """A Postfix that refuses one recipient and messages over 200 000 bytes."""
    import shutil
    import tempfile

    from realservers.postfix_peer import postfix_unavailable_reason, start_postfix_relay

    reason = postfix_unavailable_reason()
    if reason is not None:
        from conftest import real_server_unavailable

        real_server_unavailable(reason)
    base = tempfile.mkdtemp(prefix="smtpconn-pfb-", dir="/tmp")
    try:
        relay = start_postfix_relay(
            base,
            {
                "smtpd_recipient_restrictions": (
                    "check_recipient_access inline:{ refused@example.net=REJECT }, permit_mynetworks, reject"
                ),
            },
            message_size_limit=200_000,
        )
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield relay
    finally:
        relay.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_partial_and_total_refusal_in_the_bdat_group(strict_postfix: PostfixRelay) -> None:
    conn = connection(strict_postfix)
    await guard(conn.connect())
    assert "CHUNKING" in conn.extensions
    marker = uuid.uuid4().hex
    info = await guard(conn.send(Envelope(SENDER, [RCPT, "refused@example.net"]), message(marker)))
    assert info.accepted == [RCPT] and info.rejected == ["refused@example.net"]
    assert info.rejected_errors[0].response_code == 554
    with pytest.raises(EnvelopeError) as caught:
        await guard(conn.send(Envelope(SENDER, ["refused@example.net"]), message(uuid.uuid4().hex)))
    assert [e.recipient for e in caught.value.rejected_errors] == ["refused@example.net"]
    # The session was reset and goes on.
    second = uuid.uuid4().hex
    await guard(conn.send(Envelope(SENDER, [RCPT]), message(second)))
    await guard(conn.quit())
    got = await delivered(strict_postfix, marker)
    assert strip_postfix_received(got.content) == message(marker)
    await delivered(strict_postfix, second)


@pytest_twisted.ensureDeferred
async def test_chunk_over_the_size_limit_is_refused_and_the_session_goes_on(
    strict_postfix: PostfixRelay,
) -> None:
    conn = connection(strict_postfix)
    await guard(conn.connect())
    with pytest.raises(MessageError) as caught:
        await guard(conn.send(Envelope(SENDER, [RCPT]), big_message("too-big", 1_000_000)), 60.0)
    assert caught.value.response_code == 552
    assert caught.value.command is not None and caught.value.command.startswith("BDAT ")
    marker = uuid.uuid4().hex
    await guard(conn.send(Envelope(SENDER, [RCPT]), message(marker)))
    await guard(conn.quit())
    got = await delivered(strict_postfix, marker)
    assert strip_postfix_received(got.content) == message(marker)
