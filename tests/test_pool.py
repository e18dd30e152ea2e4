"""
SMTPPool on scripted servers: connection and message limits, rate limit,
retry rules, and no second delivery of a message the server may have.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twisted_smtpconn import Envelope, SMTPPool
from wiretools import AutoEndpoint, AutoServer, HoldingServer, RefusingEndpoint, failure, pending, result


def make_pool(server: AutoServer, **options: Any) -> tuple[SMTPPool, MemoryReactorClock, AutoEndpoint]:
    reactor = MemoryReactorClock()
    endpoint = AutoEndpoint(server)
    options.setdefault("name", "client.example")
    pool = SMTPPool(endpoint=endpoint, reactor=reactor, **options)
    return pool, reactor, endpoint


def envelope(n: int) -> Envelope:
    return Envelope("a@x.org", [f"r{n}@x.org"])


def test_messages_share_connections_up_to_the_limit() -> None:
    server = AutoServer()
    pool, reactor, endpoint = make_pool(server, max_connections=2)
    results = [pool.send(envelope(n), f"message {n}") for n in range(6)]
    infos = [result(d) for d in results]
    assert [i.accepted for i in infos] == [[f"r{n}@x.org"] for n in range(6)]
    assert server.connections <= 2
    assert sorted(server.messages) == sorted(f"message {n}\r\n".encode() for n in range(6))
    result(pool.close())
    assert reactor.getDelayedCalls() == []


def test_connection_replaced_after_max_messages() -> None:
    server = AutoServer()
    pool, reactor, endpoint = make_pool(server, max_connections=1, max_messages=2)
    for n in range(5):
        result(pool.send(envelope(n), b"m"))
    assert server.connections == 3
    assert [t.disconnecting for t in endpoint.transports] == [True, True, False]
    result(pool.close())


def test_rate_limit_spaces_message_starts() -> None:
    server = AutoServer()
    pool, reactor, endpoint = make_pool(server, rate_limit=2, rate_interval=10.0)
    results = [pool.send(envelope(n), b"m") for n in range(5)]
    assert [d.called for d in results] == [True, True, False, False, False]
    reactor.advance(10)
    assert [d.called for d in results] == [True, True, True, True, False]
    reactor.advance(10)
    assert all(d.called for d in results)
    result(pool.close())


def test_transient_failure_is_retried_with_backoff() -> None:
    server = AutoServer()
    server.rcpt = lambda address, n: b"451 4.3.0 try later" if n == 1 else b"250 ok"
    pool, reactor, endpoint = make_pool(server, retry_delay=2.0, max_connections=1)
    d = pool.send(envelope(1), b"m")
    assert pending(d)
    reactor.advance(2)
    # Still on connection 1 (not broken by a 4xx): fails again.
    assert pending(d)
    assert server.connections == 1
    server.rcpt = lambda address, n: b"250 ok"
    reactor.advance(4)
    assert result(d).accepted == ["r1@x.org"]
    assert len(server.messages) == 1
    result(pool.close())


def test_retries_are_bounded() -> None:
    server = AutoServer()
    server.rcpt = lambda address, n: b"451 4.3.0 try later"
    pool, reactor, endpoint = make_pool(server, retry_delay=1.0, max_retries=2)
    d = pool.send(envelope(1), b"m")
    reactor.advance(1)
    reactor.advance(2)
    err = failure(d)
    assert err.code == "EENVELOPE" and err.response_code == 451
    assert sum(1 for c in server.commands if c.startswith(b"RCPT")) == 3
    result(pool.close())


def test_permanent_failure_is_never_retried() -> None:
    server = AutoServer()
    server.rcpt = lambda address, n: b"550 5.1.1 no such user"
    pool, reactor, endpoint = make_pool(server)
    d = pool.send(envelope(1), b"m")
    err = failure(d)
    assert err.response_code == 550
    reactor.advance(1000)
    assert sum(1 for c in server.commands if c.startswith(b"RCPT")) == 1
    result(pool.close())


def test_drop_after_final_dot_is_never_retried() -> None:
    server = AutoServer()
    server.drop_after_dot = 1
    pool, reactor, endpoint = make_pool(server, retry_delay=1.0)
    d = pool.send(envelope(1), b"only once")
    err = failure(d)
    assert err.code == "ECONNECTION" and err.delivery_unknown
    reactor.advance(1000)
    assert server.messages == [b"only once\r\n"]
    result(pool.close())


def test_drop_before_final_dot_is_retried_on_a_new_connection() -> None:
    server = AutoServer()
    calls = {"n": 0}

    def rcpt(address: str, n: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 1:
            transport = endpoint.transports[-1]
            transport.disconnecting = True
            transport.protocol.connectionLost(Failure(ConnectionResetLike("reset by peer")))
        return b"250 ok"

    server.rcpt = rcpt
    pool, reactor, endpoint = make_pool(server, retry_delay=1.0)
    d = pool.send(envelope(1), io.BytesIO(b"file body"))
    assert pending(d)
    reactor.advance(1)
    assert result(d).accepted == ["r1@x.org"]
    assert server.messages == [b"file body\r\n"]
    assert server.connections == 2
    result(pool.close())


class ConnectionResetLike(Exception):
    """A socket error unlike a clean close."""


def test_one_shot_iterators_are_not_retried() -> None:
    server = AutoServer()
    server.rcpt = lambda address, n: b"451 later"
    pool, reactor, endpoint = make_pool(server)

    def chunks() -> Iterator[bytes]:
        yield b"x"

    err = failure(pool.send(envelope(1), chunks()))
    assert err.response_code == 451
    result(pool.close())


def test_idle_connections_are_closed_after_idle_timeout() -> None:
    server = AutoServer()
    pool, reactor, endpoint = make_pool(server, idle_timeout=5.0)
    result(pool.send(envelope(1), b"m"))
    assert pool.open_connections == 1
    reactor.advance(5)
    assert endpoint.transports[0].disconnecting
    assert pool.open_connections == 0
    assert server.commands[-1] == b"QUIT"
    result(pool.close())


def test_close_fails_waiting_messages() -> None:
    server = AutoServer()
    pool, reactor, endpoint = make_pool(server, rate_limit=1, rate_interval=60.0)
    first = pool.send(envelope(1), b"m")
    second = pool.send(envelope(2), b"m")
    result(first)
    result(pool.close())
    assert failure(second).code == "EPROTOCOL"
    assert failure(pool.send(envelope(3), b"m")).code == "EPROTOCOL"


@pytest.mark.parametrize(
    "kwargs",
    [{"max_connections": 0}, {"max_messages": -1}, {"rate_limit": 0}, {"idle_timeout": 0}, {"max_retries": -1}],
)
def test_bad_pool_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SMTPPool(**kwargs)


# -- send_traced, close and abort ----------------------------------------------


def test_send_traced_counts_attempts_and_names_the_connection() -> None:
    server = AutoServer()
    refusals = [b"451 4.3.0 try later"]
    server.rcpt = lambda address, n: refusals.pop() if refusals else b"250 ok"
    pool, reactor, endpoint = make_pool(server, max_connections=1, max_messages=2, retry_delay=1.0)
    first = pool.send_traced(envelope(1), b"m")
    assert pending(first)
    reactor.advance(1)
    # The 4xx did not break connection 1: the retry ran on it, and sent.
    traced = result(first)
    assert (traced.attempts, traced.connection, traced.error) == (2, 1, None)
    assert traced.info.accepted == ["r1@x.org"]
    # Connection 1 is spent after two messages sent; the next ones get 2.
    later = [result(pool.send_traced(envelope(n), b"m")) for n in (2, 3, 4)]
    assert [(t.attempts, t.connection) for t in later] == [(1, 1), (1, 2), (1, 2)]
    result(pool.close())


def test_send_traced_says_when_no_connection_was_made() -> None:
    endpoint = RefusingEndpoint()
    reactor = MemoryReactorClock()
    pool = SMTPPool(endpoint=endpoint, reactor=reactor, name="client.example", max_retries=0)
    traced = result(pool.send_traced(envelope(1), b"m"))
    assert traced.info is None and traced.error.code == "ECONNECTION"
    assert (traced.attempts, traced.connection) == (1, 0)
    assert endpoint.attempts == 1
    # Refused before any attempt: no attempt, no connection.
    refused = result(pool.send_traced({"from": "a@x.org", "to": "b@x.org\r\nRSET"}, b"m"))
    assert (refused.error.code, refused.attempts, refused.connection) == ("EENVELOPE", 0, 0)
    # send() gives the same error as a failure.
    assert failure(pool.send(envelope(2), b"m")).code == "ECONNECTION"
    result(pool.close())
    assert reactor.getDelayedCalls() == []


def test_close_fails_a_message_waiting_for_its_retry_with_its_last_error() -> None:
    server = AutoServer()
    server.rcpt = lambda address, n: b"451 4.3.0 try later"
    pool, reactor, endpoint = make_pool(server, retry_delay=30.0)
    d = pool.send_traced(envelope(1), b"m")
    assert pending(d)  # waiting 30 s for its retry
    closing = pool.close()
    traced = result(d)
    assert (traced.error.response_code, traced.attempts, traced.connection) == (451, 1, 1)
    result(closing)
    assert reactor.getDelayedCalls() == []
    assert sum(1 for c in server.commands if c.startswith(b"RCPT")) == 1


def test_close_waits_for_the_running_message_and_its_quit() -> None:
    server = HoldingServer()
    pool, reactor, endpoint = make_pool(server, max_connections=1)
    running = pool.send_traced(envelope(1), b"m")
    waiting = pool.send_traced(envelope(2), b"m")
    closing = pool.close()
    # The message not started fails at once; the running one goes on.
    not_started = result(waiting)
    assert (not_started.error.code, not_started.attempts) == ("EPROTOCOL", 0)
    assert pending(running) and pending(closing)
    assert b"QUIT" not in server.commands
    server.answer()
    assert result(running).info.accepted == ["r1@x.org"]
    assert server.commands[-1] == b"QUIT" and endpoint.transports[0].disconnecting
    result(closing)
    assert pool.open_connections == 0
    # A second close() is for the same, already reached, end.
    result(pool.close())


def test_abort_drops_connections_without_quit() -> None:
    server = HoldingServer()
    pool, reactor, endpoint = make_pool(server, max_connections=2, retry_delay=1.0)
    running = [pool.send_traced(envelope(n), b"m") for n in (1, 2)]
    assert len(server.held) == 2
    closing = pool.abort()
    traces = [result(d) for d in running]
    for traced in traces:
        # The final dot was sent: the server may have it, so no retry.
        assert traced.error is not None and traced.error.delivery_unknown
        assert traced.attempts == 1
    assert sorted(t.connection for t in traces) == [1, 2]
    assert [t.aborted for t in endpoint.transports] == [True, True]
    assert b"QUIT" not in server.commands
    result(closing)
    assert pool.open_connections == 0
    assert reactor.getDelayedCalls() == []


class InOrderHoldingServer(AutoServer):
    """
    Withholds the reply to each final dot until ``answer()``, and every reply
    after it too, as a real server answers in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ehlo = b"250-server.example\r\n250 PIPELINING"
        self.final = lambda data, n: b"HOLD"
        self.queued: list[tuple[Any, bytes]] = []

    def attach(self, transport: Any) -> None:
        super().attach(transport)
        send = transport.reply

        def reply(line: bytes) -> None:
            if line == b"HOLD" or self.queued:
                self.queued.append((send, b"250 2.0.0 queued" if line == b"HOLD" else line))
            else:
                send(line)

        transport.reply = reply

    def answer(self) -> None:
        """Release replies up to and including the next held final reply."""
        while self.queued:
            send, line = self.queued.pop(0)
            send(line)
            if line == b"250 2.0.0 queued":
                return


def test_a_busy_pipelining_connection_takes_a_second_message() -> None:
    server = InOrderHoldingServer()
    pool, reactor, endpoint = make_pool(server, max_connections=1)
    first = pool.send(envelope(1), b"one")
    second = pool.send(envelope(2), b"two")
    # The first message's final reply is still outstanding, yet the second
    # envelope already followed its dot on the same connection.
    assert server.connections == 1
    assert server.messages == [b"one\r\n"]
    assert [c for c in server.commands if c.startswith(b"RCPT")] == [b"RCPT TO:<r1@x.org>", b"RCPT TO:<r2@x.org>"]
    assert pending(first) and pending(second)
    server.answer()
    assert result(first).accepted == ["r1@x.org"]
    server.answer()
    assert result(second).accepted == ["r2@x.org"]
    assert server.messages == [b"one\r\n", b"two\r\n"]
    result(pool.close())


def test_no_second_message_without_pipelining() -> None:
    server = InOrderHoldingServer()
    server.ehlo = b"250 server.example"
    pool, reactor, endpoint = make_pool(server, max_connections=1)
    first = pool.send(envelope(1), b"one")
    second = pool.send(envelope(2), b"two")
    assert [c for c in server.commands if c.startswith(b"RCPT")] == [b"RCPT TO:<r1@x.org>"]
    server.answer()
    assert result(first).accepted == ["r1@x.org"]
    server.answer()
    assert result(second).accepted == ["r2@x.org"]
    result(pool.close())


@pytest.mark.parametrize(
    ("options", "error"),
    [({"colour": "blue"}, TypeError), ({"socket_timeout": -1}, ValueError), ({"logger": "stderr"}, TypeError),
     ({"proxy": "ftp://h:1"}, ValueError), ({"secure": True, "ignore_tls": True}, ValueError)],
)
def test_bad_connection_options_fail_when_the_pool_is_made(options: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        SMTPPool("127.0.0.1", 25, **options)  # type: ignore[arg-type]
