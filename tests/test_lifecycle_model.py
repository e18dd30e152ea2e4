"""
The connection's lifecycle under random call sequences and failure points
(issue 10: the systematic test for faults 1, 2, 7 and 10 and their kin).

A hypothesis :class:`RuleBasedStateMachine` drives one
:class:`~twisted_smtpconn.SMTPConnection` through its public API only
(``connect``, a second ``connect``, ``send`` of a good message or of a
source that breaks mid-message, ``reset``, ``quit``, ``close``,
``when_closed``) while the
other side of the wire misbehaves at random moments: the TCP connect is
slow or refused, the server closes, says 421, goes silent while the clock
runs past every timeout, or sends a reply nobody asked for.

Everything is in memory and deterministic: a ``MemoryReactorClock`` is the
connection's reactor, and the connection's ``endpoint`` is
:class:`ModelEndpoint`, whose connect attempts stay pending until a rule
completes or refuses them, and whose transports feed a small model SMTP
server (:class:`ModelServer`, with or without PIPELINING, answering EHLO,
MAIL, RCPT, DATA, the final dot, RSET, NOOP and QUIT).  The server answers
only when a rule lets it (``server_step``), so any call can land between a
command and its reply.  Closing a transport delivers ``connectionLost``
only when the network moves (``deliver_losses``, ``run_dialogue``, the
clock rules), as with TCP, where it comes a reactor turn or more later; so
calls can land between a close and its ``connectionLost`` too.

The invariants, checked after every step once the reactor has run what was
due (those about "closed" once no ``connectionLost`` is still to come):

* the state is ``closed`` exactly when the transport is gone (or was never
  made and no connect attempt is left to it);
* ``end`` fires at most once, and no event comes after it; ``error`` at
  most once;
* no Deferred the API returned is left unfired once the connection is closed;
* ``quit()`` and ``close()`` never raise, and ``quit()``'s Deferred never
  fails (its job is to end the connection, which ends either way);
  ``quit()`` and ``when_closed()`` fire only once the transport is gone;
* the ``connect`` event fires once for a successful ``connect()``, never
  for a failed one;
* an error whose ``closes_connection`` is true leaves the state ``closing``
  or ``closed``; one whose ``closes_connection`` is false leaves it
  ``ready`` with the transport open, and is not shared with the operations
  queued behind it;
* no delayed call is left in the reactor once the connection is closed;
* nothing is written to a transport after it was closed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from twisted_smtpconn import Envelope, SMTPConnection, SMTPConnectionError, SMTPPool

CONNECTION_TIMEOUT = 5.0
GREETING_TIMEOUT = 7.0
SOCKET_TIMEOUT = 11.0
#: Past every timeout of the connection.
SILENCE = SOCKET_TIMEOUT + GREETING_TIMEOUT + CONNECTION_TIMEOUT + 1.0

ENVELOPE = Envelope("sender@example.org", ["rcpt@example.org"])
GOOD = b"Subject: model\r\n\r\nhello\r\n.dot\r\n"
EHLO_REPLY = b"250-model.example\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n"
EHLO_REPLY_PIPELINING = b"250-model.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n"


def broken_source() -> Iterator[bytes]:
    """A message source that fails half-way through."""
    yield b"Subject: broken\r\n\r\n"
    yield b"a line\r\n"
    raise RuntimeError("the message source broke")


class ModelServer:
    """
    The server side of one model connection: a correct SMTP server (with
    or without PIPELINING) that answers whatever the client wrote so far,
    in order, when told to.
    """

    def __init__(self, pipelining: bool = False, clock: MemoryReactorClock | None = None) -> None:
        self.pipelining = pipelining
        self.clock = clock
        #: When each MAIL command arrived (the clock's time).
        self.mail_times: list[float] = []
        self.unread = b""
        self.greeted = False
        self.in_data = False
        self.quitting = False
        #: Every message whose final dot arrived (dot-stuffed wire form).
        self.messages: list[bytes] = []

    def answer(self, data: bytes) -> bytes:
        """Everything to send back for the client bytes ``data`` (plus what was pending)."""
        out = b""
        if not self.greeted:
            self.greeted = True
            out += b"220 model.example ESMTP\r\n"
        self.unread += data
        while not self.quitting:
            if self.in_data:
                end = self.unread.find(b"\r\n.\r\n")
                if self.unread.startswith(b".\r\n"):
                    self.messages.append(b"")
                    self.unread = self.unread[3:]
                elif end >= 0:
                    self.messages.append(self.unread[: end + 2])
                    self.unread = self.unread[end + 5 :]
                else:
                    break
                self.in_data = False
                out += b"250 2.0.0 queued\r\n"
                continue
            if b"\r\n" not in self.unread:
                break
            line, self.unread = self.unread.split(b"\r\n", 1)
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
            if verb in (b"EHLO", b"HELO", b"LHLO"):
                out += EHLO_REPLY_PIPELINING if self.pipelining else EHLO_REPLY
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                if verb == b"MAIL" and self.clock is not None:
                    self.mail_times.append(self.clock.seconds())
                out += b"250 ok\r\n"
            elif verb == b"DATA":
                self.in_data = True
                out += b"354 go ahead\r\n"
            elif verb == b"QUIT":
                self.quitting = True
                out += b"221 bye\r\n"
            else:
                out += b"502 not implemented\r\n"
        return out


class ModelTransport(StringTransport):
    """
    An in-memory transport: closing it (lose or abort) delivers
    ``connectionLost`` later, like a TCP transport -- when the test lets
    the network move (:meth:`LifecycleMachine.deliver_losses`), so that
    calls can land between a close and its ``connectionLost``.
    """

    def __init__(self, clock: MemoryReactorClock, pipelining: bool = False) -> None:
        super().__init__()
        self.clock = clock
        self.protocol: Any = None
        self.server = ModelServer(pipelining, clock)
        self.served = 0  # bytes of value() the server has answered
        self.lost = False
        self.written_after_close = b""
        self.loss: Failure | None = None

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.lost:
            self.written_after_close += data
        super().write(data)

    def writeSequence(self, seq: Any) -> None:
        for data in seq:
            self.write(data)

    def _schedule_loss(self, reason: Failure) -> None:
        self.disconnecting = True
        if self.loss is None:
            self.loss = reason

    @property
    def loss_pending(self) -> bool:
        return self.loss is not None and not self.lost

    def deliver_loss(self, reason: Failure | None = None) -> None:
        if self.lost:
            return
        reason = reason or self.loss or Failure(ConnectionLost())
        self.lost = True
        self.connected = False
        self.protocol.connectionLost(reason)

    def loseConnection(self) -> None:
        self._schedule_loss(Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        self._schedule_loss(Failure(ConnectionLost()))

    @property
    def live(self) -> bool:
        return not self.lost and not self.disconnecting

    def server_step(self) -> bool:
        """Let the server answer what the client wrote; True if it said something."""
        if not self.live:
            return False
        data = self.value()[self.served :]
        self.served += len(data)
        reply = self.server.answer(data)
        if reply:
            self.protocol.dataReceived(reply)
        if self.server.quitting and not self.disconnecting:
            self._schedule_loss(Failure(ConnectionDone()))
        return bool(reply)

    def has_work(self) -> bool:
        return self.live and (not self.server.greeted or len(self.value()) > self.served)


class ModelEndpoint:
    """
    An ``IStreamClientEndpoint`` whose connect attempts stay pending until
    the test completes (:meth:`complete`) or refuses (:meth:`refuse`) them.
    """

    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock
        self.pending: list[tuple[Any, Deferred[Any]]] = []
        self.transports: list[ModelTransport] = []
        self.cancelled = 0
        self.pipelining = False

    def connect(self, factory: Any) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1
            self.pending[:] = [(f, p) for f, p in self.pending if p is not d]
            d.errback(Failure(CancelledError("connect attempt cancelled")))

        d: Deferred[Any] = Deferred(cancel)
        self.pending.append((factory, d))
        return d

    def complete(self) -> None:
        factory, d = self.pending.pop(0)
        protocol = factory.buildProtocol(None)
        transport = ModelTransport(self.clock, self.pipelining)
        transport.protocol = protocol
        self.transports.append(transport)
        protocol.makeConnection(transport)
        d.callback(protocol)

    def refuse(self) -> None:
        _, d = self.pending.pop(0)
        d.errback(Failure(ConnectionRefusedError("refused by the model")))

    def live(self) -> list[ModelTransport]:
        return [t for t in self.transports if t.live]


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = MemoryReactorClock()
        self.endpoint = ModelEndpoint(self.clock)
        self.conn = SMTPConnection(
            endpoint=self.endpoint,
            reactor=self.clock,
            name="client.example",
            connection_timeout=CONNECTION_TIMEOUT,
            greeting_timeout=GREETING_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
        )
        self.events: list[str] = []
        for name in ("connect", "error", "end"):
            self.conn.on(name, lambda *args, name=name: self.events.append(name))
        #: (what, Deferred, [outcome]) for every Deferred the API returned.
        self.calls: list[tuple[str, Deferred[Any], list[Any]]] = []
        #: (what, error, state, transport still open) when a call failed with
        #: an error saying it leaves the connection open.
        self.kept_open: list[tuple[str, SMTPConnectionError, str, bool]] = []
        #: (what, error, state) when a call failed with an error saying it
        #: closes the connection.
        self.closing_errors: list[tuple[str, SMTPConnectionError, str]] = []
        #: quit()/when_closed() that fired before the connection was gone.
        self.early_closes: list[str] = []
        self.connect_called = False
        self.raised: list[str] = []

    # -- helpers -----------------------------------------------------------------

    def settle(self) -> None:
        """Run what is due now (callLater(0) and the like)."""
        for _ in range(1000):
            due = [c for c in self.clock.getDelayedCalls() if c.active() and c.getTime() <= self.clock.seconds()]
            if not due:
                return
            self.clock.advance(0)
        raise AssertionError("the reactor never settles: something reschedules itself at once")

    @property
    def settled(self) -> bool:
        """No transport has a connectionLost still to come."""
        return not any(t.loss_pending for t in self.endpoint.transports)

    def deliver_pending_losses(self) -> None:
        for transport in self.endpoint.transports:
            if transport.loss_pending:
                transport.deliver_loss()
                self.settle()

    def track(self, what: str, d: Deferred[Any]) -> None:
        box: list[Any] = []
        self.calls.append((what, d, box))
        # Failed already when returned: a call out of order, refused before
        # it touched the connection (EPROTOCOL "cannot ..."), which changes
        # nothing and so says nothing about the connection's state.
        refused_at_once = d.called

        def done(result: object) -> None:
            value = result.value if isinstance(result, Failure) else result
            box.append(value)
            if isinstance(value, SMTPConnectionError) and not value.closes_connection and not refused_at_once:
                transports = self.endpoint.transports
                open_now = bool(transports) and transports[-1].live
                self.kept_open.append((what, value, self.state, open_now))
            if isinstance(value, SMTPConnectionError) and value.closes_connection:
                self.closing_errors.append((what, value, self.state))
            if what == "quit" and isinstance(value, BaseException):
                self.raised.append(f"quit() failed with {value!r} in state {self.state!r}")
            if what in ("quit", "when_closed") and not isinstance(value, BaseException):
                still_open = [t for t in self.endpoint.transports if not t.lost]
                if still_open or self.state != "closed":
                    self.early_closes.append(f"{what}() fired in state {self.state!r} with {len(still_open)} transport(s) not gone")

        d.addBoth(done)

    @property
    def state(self) -> str:
        return str(self.conn.state.value)

    # -- the caller's rules ------------------------------------------------------------

    @initialize(pipelining=st.booleans())
    def choose_server(self, pipelining: bool) -> None:
        self.endpoint.pipelining = pipelining

    @precondition(lambda self: not self.connect_called)
    @rule()
    def connect(self) -> None:
        self.connect_called = True
        self.track("connect", self.conn.connect())
        self.settle()

    @precondition(lambda self: self.connect_called)
    @rule()
    def connect_again(self) -> None:
        """A second connect() fails (wrong call order) and must not disturb the first."""
        self.track("connect-again", self.conn.connect())
        self.settle()

    @precondition(lambda self: self.connect_called)
    @rule()
    def send_good(self) -> None:
        self.track("send", self.conn.send(ENVELOPE, GOOD))
        self.settle()

    @precondition(lambda self: self.connect_called)
    @rule()
    def send_broken_source(self) -> None:
        self.track("send-broken", self.conn.send(ENVELOPE, broken_source()))
        self.settle()

    @precondition(lambda self: self.connect_called)
    @rule()
    def reset(self) -> None:
        self.track("reset", self.conn.reset())
        self.settle()

    @rule()
    def quit(self) -> None:
        try:
            self.track("quit", self.conn.quit())
        except Exception as error:  # noqa: BLE001 -- the invariant reports it
            self.raised.append(f"quit() raised {error!r} in state {self.state}")
        self.settle()

    @rule()
    def close(self) -> None:
        try:
            self.conn.close()
        except Exception as error:  # noqa: BLE001 -- the invariant reports it
            self.raised.append(f"close() raised {error!r} in state {self.state}")
        self.settle()

    @rule()
    def when_closed(self) -> None:
        self.track("when_closed", self.conn.when_closed())
        self.settle()

    # -- the network's and the server's rules ---------------------------------------------

    @precondition(lambda self: bool(self.endpoint.pending))
    @rule()
    def tcp_up(self) -> None:
        self.endpoint.complete()
        self.settle()

    @precondition(lambda self: bool(self.endpoint.pending))
    @rule()
    def tcp_refused(self) -> None:
        self.endpoint.refuse()
        self.settle()

    @precondition(lambda self: any(t.has_work() for t in self.endpoint.transports))
    @rule()
    def server_step(self) -> None:
        for transport in self.endpoint.live():
            transport.server_step()
        self.settle()

    @precondition(lambda self: not self.settled)
    @rule()
    def deliver_losses(self) -> None:
        """The transports being closed report connectionLost."""
        self.deliver_pending_losses()

    @rule()
    def run_dialogue(self) -> None:
        """TCP up and the server answering until nothing moves (a well-behaved network)."""
        for _ in range(200):
            moved = not self.settled
            self.deliver_pending_losses()
            if self.endpoint.pending:
                self.endpoint.complete()
                moved = True
            for transport in self.endpoint.live():
                if transport.has_work():
                    transport.server_step()
                    moved = True
            self.settle()
            if not moved:
                return

    @precondition(lambda self: bool(self.endpoint.live()))
    @rule()
    def server_closes(self) -> None:
        for transport in self.endpoint.live():
            transport.deliver_loss(Failure(ConnectionLost("the server hung up")))
        self.settle()

    @precondition(lambda self: bool(self.endpoint.live()))
    @rule()
    def server_says_421(self) -> None:
        for transport in self.endpoint.live():
            transport.protocol.dataReceived(b"421 4.3.2 shutting down\r\n")
            if not transport.lost:
                transport.deliver_loss(Failure(ConnectionDone()))
        self.settle()

    @precondition(lambda self: bool(self.endpoint.live()))
    @rule()
    def unsolicited_reply(self) -> None:
        for transport in self.endpoint.live():
            transport.protocol.dataReceived(b"250 nobody asked\r\n")
        self.settle()

    @rule()
    def silence_past_every_timeout(self) -> None:
        self.deliver_pending_losses()
        self.clock.advance(SILENCE)
        self.settle()

    @rule()
    def tick(self) -> None:
        self.deliver_pending_losses()
        self.clock.advance(1.0)
        self.settle()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def quit_and_close_never_raise(self) -> None:
        assert not self.raised, self.raised

    @invariant()
    def quit_and_when_closed_fire_once_gone(self) -> None:
        """quit() and when_closed() fire once the transport is gone, not before."""
        assert not self.early_closes, self.early_closes

    @invariant()
    def connect_event_matches_connect(self) -> None:
        """A successful connect() fired the "connect" event, once; a failed one never did."""
        assert self.events.count("connect") <= 1, self.events
        outcomes = [box[0] for what, _, box in self.calls if what == "connect" and box]
        if any(isinstance(o, SMTPConnection) for o in outcomes):
            assert "connect" in self.events, f"connect() succeeded without a 'connect' event: {self.events}"
        elif outcomes and all(isinstance(o, BaseException) for o in outcomes) and self.settled:
            assert "connect" not in self.events, f"connect() failed but 'connect' fired: {self.events}"

    @invariant()
    def end_is_the_last_event(self) -> None:
        """``end`` at most once and last; ``error`` at most once, before ``end``."""
        assert self.events.count("end") <= 1, self.events
        if "end" in self.events:
            assert self.events[-1] == "end", f"events after 'end': {self.events}"
        assert self.events.count("error") <= 1, self.events

    @invariant()
    def closed_iff_the_transport_is_gone(self) -> None:
        if not self.settled:
            return
        transports = self.endpoint.transports
        if any(t.lost for t in transports):
            # Once the (only) transport is gone, the connection is closed.
            assert self.state == "closed", f"the transport is gone but the state is {self.state!r}"
        if self.state == "closed":
            live = [t for t in transports if not t.lost]
            assert not live, f"state 'closed' but a transport is still open (closing requested: {[t.disconnecting for t in live]})"
        elif self.state in ("ready",):
            assert transports and not transports[-1].lost, f"state {self.state!r} without a transport"

    @invariant()
    def nothing_written_after_close(self) -> None:
        for transport in self.endpoint.transports:
            assert transport.written_after_close == b"", f"written after close: {transport.written_after_close!r}"

    @invariant()
    def closing_errors_close(self) -> None:
        """Checked when the Deferred fired: a caller's errback sees the state the error announces."""
        for what, error, state in self.closing_errors:
            # "closing": connectionLost not delivered yet, or a QUIT in flight.
            assert state in ("closing", "closed"), (
                f"{what} failed with {error!r}, which says it closes the connection, but the state was {state!r}"
            )

    @invariant()
    def errors_that_keep_the_connection_keep_it(self) -> None:
        """
        An error whose ``closes_connection`` is false (a refused envelope or
        message, a broken message source) leaves the connection ready for the
        next call, and belongs to its own operation only: the calls queued
        behind it must not fail with it.
        """
        for what, error, state, open_now in self.kept_open:
            assert state == "ready" and open_now, (
                f"{what} failed with {error!r}, which says the connection stays open, "
                f"but at that moment the state was {state!r} and the transport "
                f"{'open' if open_now else 'closed or closing'}"
            )
        seen: dict[int, str] = {}
        for what, _, box in self.calls:
            if box and isinstance(box[0], SMTPConnectionError) and not box[0].closes_connection:
                assert id(box[0]) not in seen, f"{what} failed with the error of {seen[id(box[0])]}: {box[0]!r}"
                seen[id(box[0])] = what

    @invariant()
    def nothing_left_unfired_once_closed(self) -> None:
        if self.state != "closed" or not self.settled:
            return
        unfired = [what for what, d, _ in self.calls if not d.called]
        assert not unfired, f"Deferreds still unfired after close: {unfired}"

    @invariant()
    def no_timers_left_once_closed(self) -> None:
        if self.state != "closed" or not self.settled:
            return
        left = [c for c in self.clock.getDelayedCalls() if c.active()]
        assert not left, f"delayed calls left after close: {left}"

    def teardown(self) -> None:
        # Whatever happened, close() must bring everything to rest.
        try:
            self.conn.close()
        except Exception as error:  # noqa: BLE001
            self.raised.append(f"close() raised {error!r} at teardown")
        self.settle()
        self.deliver_pending_losses()
        while self.endpoint.pending:  # the network gives up on attempts nobody cancelled
            self.endpoint.refuse()
            self.settle()
            self.deliver_pending_losses()
        for check in (
            self.quit_and_close_never_raise,
            self.end_is_the_last_event,
            self.closed_iff_the_transport_is_gone,
            self.nothing_left_unfired_once_closed,
            self.no_timers_left_once_closed,
        ):
            check()


LifecycleMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=30,
    deadline=None,
)
TestLifecycle = LifecycleMachine.TestCase


# -- the pool ----------------------------------------------------------------------------------

MAX_CONNECTIONS = 2
RATE_LIMIT = 2
RATE_INTERVAL = 1.0


def pool_message(number: int) -> bytes:
    return b"Subject: pool message %d\r\n\r\nbody\r\n" % number


def marker_of(message: bytes) -> int | None:
    first = message.split(b"\r\n", 1)[0]
    prefix = b"Subject: pool message "
    return int(first[len(prefix) :]) if first.startswith(prefix) else None


class PoolMachine(RuleBasedStateMachine):
    """
    The same model network under an :class:`~twisted_smtpconn.SMTPPool`
    (one or two connections, three messages each, one retry, with or
    without a rate limit of two per second): messages sent, the
    network and the server failing at random moments, the pool closed or
    aborted.  Invariants: no message reaches the server twice; a message
    the server took was reported sent (or its outcome unknown, or it is
    still running), and a message reported sent was taken; a good message
    never fails with another message's ``ESTREAM``; the rate limit holds
    as the server sees MAIL commands arrive; at most
    ``max_connections`` connections; ``open_connections`` counts the
    connections really open or opening; once ``close()``/``abort()`` fired,
    nothing is open, every send has its outcome and no timer is left.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = MemoryReactorClock()
        self.endpoint = ModelEndpoint(self.clock)
        self.max_connections = MAX_CONNECTIONS
        self.rate_limited = False
        self.make_pool()
        self.sends: dict[int, list[Any]] = {}
        self.deferreds: dict[int, Deferred[Any]] = {}
        self.closings: list[tuple[str, Deferred[Any], list[Any]]] = []
        self.numbers = 0

    def make_pool(self) -> None:
        self.pool = SMTPPool(
            "model.example",
            25,
            max_connections=self.max_connections,
            max_messages=3,
            rate_limit=RATE_LIMIT if self.rate_limited else None,
            rate_interval=RATE_INTERVAL,
            idle_timeout=3.0,
            max_retries=1,
            retry_delay=1.0,
            reactor=self.clock,
            endpoint=self.endpoint,
            name="client.example",
            connection_timeout=CONNECTION_TIMEOUT,
            greeting_timeout=GREETING_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
        )

    @initialize(
        max_connections=st.sampled_from([1, MAX_CONNECTIONS]), pipelining=st.booleans(), rate_limited=st.booleans()
    )
    def choose(self, max_connections: int, pipelining: bool, rate_limited: bool) -> None:
        self.endpoint.pipelining = pipelining
        if (max_connections, rate_limited) != (self.max_connections, self.rate_limited):
            self.max_connections = max_connections
            self.rate_limited = rate_limited
            self.make_pool()

    settle = LifecycleMachine.settle
    deliver_pending_losses = LifecycleMachine.deliver_pending_losses

    @property
    def settled(self) -> bool:
        return not any(t.loss_pending for t in self.endpoint.transports)

    def delivered(self) -> list[int | None]:
        return [marker_of(m) for t in self.endpoint.transports for m in t.server.messages]

    # -- rules -----------------------------------------------------------------------------

    @rule()
    def send(self) -> None:
        self.numbers += 1
        number = self.numbers
        box: list[Any] = []
        d = self.pool.send(ENVELOPE, pool_message(number))
        d.addBoth(lambda r: box.append(r.value if isinstance(r, Failure) else r))
        self.sends[number] = box
        self.deferreds[number] = d
        self.settle()

    @rule()
    def send_broken_source(self) -> None:
        box: list[Any] = []
        d = self.pool.send(ENVELOPE, broken_source())
        d.addBoth(lambda r: box.append(r.value if isinstance(r, Failure) else r))
        self.numbers += 1
        self.sends[-self.numbers] = box
        self.deferreds[-self.numbers] = d
        self.settle()

    @rule(how=st.sampled_from(["close", "abort"]))
    def close_pool(self, how: str) -> None:
        box: list[Any] = []
        d = self.pool.close() if how == "close" else self.pool.abort()
        d.addBoth(lambda r: box.append(r.value if isinstance(r, Failure) else r))
        self.closings.append((how, d, box))
        self.settle()

    @precondition(lambda self: bool(self.endpoint.pending))
    @rule()
    def tcp_up(self) -> None:
        self.endpoint.complete()
        self.settle()

    @precondition(lambda self: bool(self.endpoint.pending))
    @rule()
    def tcp_refused(self) -> None:
        self.endpoint.refuse()
        self.settle()

    @precondition(lambda self: any(t.has_work() for t in self.endpoint.transports))
    @rule()
    def server_step(self) -> None:
        for transport in self.endpoint.live():
            transport.server_step()
        self.settle()

    @precondition(lambda self: not self.settled)
    @rule()
    def deliver_losses(self) -> None:
        self.deliver_pending_losses()

    @rule()
    def run_dialogue(self) -> None:
        LifecycleMachine.run_dialogue(self)  # type: ignore[arg-type]

    @precondition(lambda self: bool(self.endpoint.live()))
    @rule()
    def server_closes_one(self) -> None:
        self.endpoint.live()[0].deliver_loss(Failure(ConnectionLost("the server hung up")))
        self.settle()

    @precondition(lambda self: bool(self.endpoint.live()))
    @rule()
    def server_says_421(self) -> None:
        transport = self.endpoint.live()[0]
        transport.protocol.dataReceived(b"421 4.3.2 shutting down\r\n")
        if not transport.lost:
            transport.deliver_loss(Failure(ConnectionDone()))
        self.settle()

    @rule()
    def silence_past_every_timeout(self) -> None:
        self.deliver_pending_losses()
        self.clock.advance(SILENCE)
        self.settle()

    @rule()
    def tick(self) -> None:
        self.deliver_pending_losses()
        self.clock.advance(1.0)
        self.settle()

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def no_message_twice(self) -> None:
        delivered = [n for n in self.delivered() if n is not None]
        twice = sorted({n for n in delivered if delivered.count(n) > 1})
        assert not twice, f"messages delivered more than once: {twice}"

    @invariant()
    def outcomes_match_the_server(self) -> None:
        delivered = set(self.delivered())
        for number, box in self.sends.items():
            if number < 0 or not box:
                continue
            outcome = box[0]
            if isinstance(outcome, BaseException):
                unknown = getattr(outcome, "delivery_unknown", False)
                assert number not in delivered or unknown, (
                    f"message {number} reached the server but its send failed with {outcome!r}"
                )
            else:
                assert number in delivered, f"message {number} reported sent, never reached the server"

    @invariant()
    def rate_limit_holds_at_the_server(self) -> None:
        """In any window of ``rate_interval``, at most ``rate_limit`` MAIL commands reach the server."""
        if not self.rate_limited:
            return
        times = sorted(t for transport in self.endpoint.transports for t in transport.server.mail_times)
        for start in times:
            within = [t for t in times if start <= t < start + RATE_INTERVAL]
            assert len(within) <= RATE_LIMIT, f"{len(within)} MAIL commands within {RATE_INTERVAL} s from t={start}: {times}"

    @invariant()
    def good_messages_never_fail_with_another_source(self) -> None:
        """A good message fails for its own reasons only: never with another message's ESTREAM."""
        for number, box in self.sends.items():
            if number > 0 and box and isinstance(box[0], SMTPConnectionError):
                assert box[0].code != "ESTREAM", f"good message {number} failed with {box[0]!r}"

    @invariant()
    def connections_within_the_limit(self) -> None:
        MAX_CONNECTIONS = self.max_connections  # noqa: N806
        assert self.pool.open_connections <= MAX_CONNECTIONS, self.pool.open_connections
        open_now = [t for t in self.endpoint.transports if not t.disconnecting and not t.lost]
        assert len(open_now) + len(self.endpoint.pending) <= MAX_CONNECTIONS, (
            f"{len(open_now)} transports open and {len(self.endpoint.pending)} connecting"
        )

    @invariant()
    def open_connections_counts_what_is_open(self) -> None:
        if not self.settled:
            return
        really = len([t for t in self.endpoint.transports if not t.lost]) + len(self.endpoint.pending)
        assert self.pool.open_connections == really, (
            f"open_connections says {self.pool.open_connections}, but {really} are open or opening"
        )

    @invariant()
    def closed_pool_is_at_rest(self) -> None:
        if not any(box for _, _, box in self.closings) or not self.settled:
            return
        assert self.pool.open_connections == 0, f"open_connections {self.pool.open_connections} after the pool closed"
        live = [t for t in self.endpoint.transports if not t.lost]
        assert not live, f"{len(live)} transports still open after the pool closed"
        assert not self.endpoint.pending, "a connect attempt still pending after the pool closed"
        unfired = [n for n, d in self.deferreds.items() if not d.called]
        assert not unfired, f"sends without an outcome after the pool closed: {unfired}"
        left = [c for c in self.clock.getDelayedCalls() if c.active()]
        assert not left, f"delayed calls left after the pool closed: {left}"

    def teardown(self) -> None:
        self.pool.abort()
        self.settle()
        self.deliver_pending_losses()
        while self.endpoint.pending:
            self.endpoint.refuse()
            self.settle()
            self.deliver_pending_losses()


PoolMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
TestPoolLifecycle = PoolMachine.TestCase
