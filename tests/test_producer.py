"""
Tests of the back-pressure producer: byte-exact on a StringTransport with
pauses driven by hand, and one real loopback transfer whose memory must stay
flat while the reader is slow.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from twisted_smtpconn._dotstuff import BodyEncoder
from twisted_smtpconn._errors import ConnectionFailedError, StreamError
from twisted_smtpconn._producer import BodyProducer, encoded
from twisted_smtpconn._source import iterate_message


class BufferingTransport(StringTransport):
    """
    A StringTransport that behaves like a real one under load: once more
    than ``limit`` bytes are "buffered" (written since the last drain) it
    pauses its streaming producer, and :meth:`drain` empties the buffer and
    resumes it.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.buffered = 0
        self.writes_while_paused = 0
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        if self.producer_paused:
            self.writes_while_paused += 1
        super().write(data)
        self.buffered += len(data)
        if self.producer is not None and self.buffered > self.limit and not self.producer_paused:
            self.producer_paused = True
            self.producer.pauseProducing()

    def drain(self) -> None:
        self.buffered = 0
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()


async def pieces_of(items: list[bytes], log: list[str] | None = None) -> AsyncIterator[bytes]:
    try:
        for item in items:
            if log is not None:
                log.append(f"yield {item!r}")
            yield item
    finally:
        if log is not None:
            log.append("closed")


def outcome(d: Deferred[Any]) -> list[Any]:
    """The results a Deferred has fired with so far (consuming a failure)."""
    results: list[Any] = []
    d.addBoth(results.append)
    return results


def test_provides_push_producer() -> None:
    assert verifyObject(IPushProducer, BodyProducer(StringTransport()))


def test_writes_everything_and_unregisters() -> None:
    transport = StringTransport()
    producer = BodyProducer(transport)
    seen_registration: list[tuple[object, object]] = []

    async def pieces() -> AsyncIterator[bytes]:
        seen_registration.append((transport.producer, transport.streaming))
        yield b"hello "
        yield b""
        yield b"world"

    results = outcome(Deferred.fromCoroutine(producer.write_all(pieces())))
    assert results == [11]
    assert transport.value() == b"hello world"
    assert seen_registration == [(producer, True)]
    assert transport.producer is None


def test_nothing_is_written_while_paused() -> None:
    transport = BufferingTransport(limit=10)
    producer = BodyProducer(transport)
    items = [b"x" * 6 for _ in range(10)]
    results = outcome(Deferred.fromCoroutine(producer.write_all(pieces_of(items))))

    # Two pieces pass the 10-byte limit: the producer is paused and waits,
    # although its (synchronous) source has more ready.
    assert results == []
    assert producer.paused
    assert transport.value() == b"x" * 12
    assert transport.producer is producer

    for expected in (24, 36, 48, 60):
        transport.drain()
        assert len(transport.value()) == expected
    assert results == [60]
    assert transport.writes_while_paused == 0
    assert transport.producer is None


def test_pause_and_resume_by_hand() -> None:
    transport = StringTransport()
    producer = BodyProducer(transport)
    producer.pauseProducing()
    results = outcome(Deferred.fromCoroutine(producer.write_all(pieces_of([b"a", b"b", b"c"]))))
    # Paused before the start: nothing goes out.
    assert transport.value() == b""
    assert results == []
    producer.resumeProducing()
    assert results == [3]
    assert transport.value() == b"abc"


def test_resume_without_pause_is_harmless() -> None:
    transport = StringTransport()
    producer = BodyProducer(transport)
    producer.resumeProducing()
    results = outcome(Deferred.fromCoroutine(producer.write_all(pieces_of([b"a"]))))
    assert results == [1]


def test_stop_while_paused_fails_with_connection_error() -> None:
    transport = BufferingTransport(limit=5)
    producer = BodyProducer(transport)
    log: list[str] = []
    results = outcome(Deferred.fromCoroutine(producer.write_all(pieces_of([b"abcdef", b"ghi", b"jkl"], log))))
    assert results == []
    producer.stopProducing()

    [failure] = results
    assert isinstance(failure, Failure)
    error = failure.value
    assert isinstance(error, ConnectionFailedError)
    assert error.code == "ECONNECTION"
    assert "connection closed while sending the message" in str(error)
    assert transport.value() == b"abcdef"
    assert transport.producer is None
    # The piece in hand was dropped and the source closed at once, not left
    # to the garbage collector.
    assert log == ["yield b'abcdef'", "yield b'ghi'", "closed"]


def test_cancel_while_paused() -> None:
    """Cancelling the write (a timeout, say) unregisters and closes the source."""
    transport = BufferingTransport(limit=1)
    producer = BodyProducer(transport)
    log: list[str] = []
    writing = Deferred.fromCoroutine(producer.write_all(pieces_of([b"ab", b"cd"], log)))
    writing.cancel()
    [failure] = outcome(writing)
    assert failure.check(CancelledError)
    assert transport.value() == b"ab"
    assert transport.producer is None
    assert log[-1] == "closed"


def test_stop_while_waiting_for_the_source() -> None:
    """The loop stops at its next step: the piece that arrives late is not written."""
    transport = StringTransport()
    producer = BodyProducer(transport)
    gate: Deferred[bytes] = Deferred()

    async def pieces() -> AsyncIterator[bytes]:
        yield b"first"
        yield await gate
        yield b"never"

    results = outcome(Deferred.fromCoroutine(producer.write_all(pieces())))
    assert transport.value() == b"first"
    producer.stopProducing()
    [failure] = results
    assert gate.called
    assert failure.check(ConnectionFailedError)
    assert transport.value() == b"first"
    assert transport.producer is None


def test_stop_after_the_last_piece() -> None:
    """A connection lost as the source ends is still a failed write."""
    transport = StringTransport()
    producer = BodyProducer(transport)

    async def pieces() -> AsyncIterator[bytes]:
        yield b"all of it"
        producer.stopProducing()

    [failure] = outcome(Deferred.fromCoroutine(producer.write_all(pieces())))
    assert failure.check(ConnectionFailedError)
    assert transport.value() == b"all of it"
    assert transport.producer is None


def test_already_disconnected_transport() -> None:
    """A transport that is gone stops the producer inside registerProducer."""

    class Gone(StringTransport):
        def registerProducer(self, producer: Any, streaming: bool) -> None:
            producer.stopProducing()

        def unregisterProducer(self) -> None:
            pass

    transport = Gone()
    results = outcome(Deferred.fromCoroutine(BodyProducer(transport).write_all(pieces_of([b"a"]))))
    [failure] = results
    assert failure.check(ConnectionFailedError)
    assert transport.value() == b""


def test_source_error_propagates_unchanged() -> None:
    transport = StringTransport()
    producer = BodyProducer(transport)
    error = StreamError("reading the message failed: boom")

    async def pieces() -> AsyncIterator[bytes]:
        yield b"part"
        raise error

    [failure] = outcome(Deferred.fromCoroutine(producer.write_all(pieces())))
    assert failure.value is error
    assert transport.value() == b"part"
    assert transport.producer is None


def test_source_error_while_paused_is_raised_at_once() -> None:
    transport = BufferingTransport(limit=3)
    producer = BodyProducer(transport)

    def chunks() -> Iterator[bytes]:
        yield b"abcd"
        raise OSError("read failed")

    pieces = encoded(iterate_message(chunks()), BodyEncoder())
    [failure] = outcome(Deferred.fromCoroutine(producer.write_all(pieces)))
    assert failure.check(StreamError)
    assert isinstance(failure.value.__cause__, OSError)
    assert transport.value() == b"abcd"
    assert transport.producer is None


def test_write_all_only_once() -> None:
    producer = BodyProducer(StringTransport())
    outcome(Deferred.fromCoroutine(producer.write_all(pieces_of([b"a"]))))
    [failure] = outcome(Deferred.fromCoroutine(producer.write_all(pieces_of([b"a"]))))
    assert failure.check(RuntimeError)


def test_encoded_skips_empty_results_and_finishes() -> None:
    async def collect() -> list[bytes]:
        chunks = iterate_message([b"a\r", b"\n", b".b"])
        return [piece async for piece in encoded(chunks, BodyEncoder())]

    [pieces] = outcome(Deferred.fromCoroutine(collect()))
    # "a\r" yields "a" (the CR is held back); "\n" completes it.
    assert pieces == [b"a", b"\r\n", b"..b", b"\r\n.\r\n"]


def test_full_path_on_string_transport() -> None:
    transport = StringTransport()
    encoder = BodyEncoder()
    message = "Subject: hi\n\n.leading dot\nend"
    pieces = encoded(iterate_message(message, chunk_size=4), encoder)
    [written] = outcome(Deferred.fromCoroutine(BodyProducer(transport).write_all(pieces)))
    assert transport.value() == b"Subject: hi\r\n\r\n..leading dot\r\nend\r\n.\r\n"
    assert written == encoder.wire_size == len(transport.value())
    assert encoder.message_size == len(b"Subject: hi\r\n\r\n.leading dot\r\nend\r\n")


# -- a real connection ------------------------------------------------------------------


class SlowReader(Protocol):
    """Hashes what arrives, pausing its reads for a moment every megabyte."""

    def __init__(self, reactor: Any, expected: int, done: Deferred[tuple[int, str]]) -> None:
        self.reactor = reactor
        self.expected = expected
        self.done = done
        self.received = 0
        self.until_pause = 1 << 20
        self.hash = hashlib.sha256()
        self.pending: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.received += len(data)
        self.until_pause -= len(data)
        if self.received >= self.expected:
            self.done.callback((self.received, self.hash.hexdigest()))
            return
        if self.until_pause <= 0:
            self.until_pause = 1 << 20
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.pending = self.reactor.callLater(0.004, self._resume)

    def _resume(self) -> None:
        self.pending = None
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if self.pending is not None and self.pending.active():
            self.pending.cancel()


def generated_message(total: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """``total`` bytes of CRLF text made lazily, every chunk different, ending in CRLF."""
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuv\r\n"
    block = line * (chunk // len(line) + 1)
    for offset in range(0, total, chunk):
        size = min(chunk, total - offset)
        piece = (b"%016d" % offset + block[16:size])[:size]
        if offset + size == total:
            piece = piece[:-2] + b"\r\n"
        yield piece


@pytest_twisted.ensureDeferred
async def test_loopback_memory_stays_bounded() -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol

    total = 200 * 1024 * 1024
    done: Deferred[tuple[int, str]] = Deferred()
    # Generated lines are CRLF text with no dot lines, so the wire carries
    # exactly the message plus the terminator.
    expected = total + 3
    server_end = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await server_end.listen(Factory.forProtocol(lambda: SlowReader(reactor, expected, done)))
    client = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol()
    )
    sent_hash = hashlib.sha256()

    async def hashed(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for piece in pieces:
            sent_hash.update(piece)
            yield piece

    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        encoder = BodyEncoder()
        pieces = hashed(encoded(iterate_message(generated_message(total)), encoder))
        written = await BodyProducer(client.transport).write_all(pieces)
        received, received_hash = await done.addTimeout(60, reactor)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started_tracing:
            tracemalloc.stop()
        client.transport.loseConnection()
        await port.stopListening()

    assert written == expected == received
    assert encoder.message_size == total
    assert received_hash == sent_hash.hexdigest()
    assert peak < 32 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB"


@pytest_twisted.ensureDeferred
async def test_loopback_peer_closing_mid_stream() -> None:
    """The real transport's stopProducing becomes ECONNECTION, and the source is closed."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol

    class Hangup(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.abortConnection()  # type: ignore[union-attr]

    server_end = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await server_end.listen(Factory.forProtocol(Hangup))
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol())
    closed: list[bool] = []

    def plenty() -> Generator[bytes, None, None]:
        # 256 MiB: far more than the socket buffers hold before the peer's
        # reset arrives, so the write cannot finish normally.
        try:
            for _ in range(4096):
                yield b"x" * 65536
        finally:
            closed.append(True)

    source = plenty()
    try:
        with pytest.raises(ConnectionFailedError):
            await Deferred.fromCoroutine(
                BodyProducer(client.transport).write_all(iterate_message(source))
            ).addTimeout(30, reactor)
    finally:
        client.transport.loseConnection()
        await port.stopListening()
    # The library's own generators were closed; the caller's generator is
    # left for the caller to close.
    assert closed == []
    source.close()
    assert closed == [True]
