# -*- test-case-name: tests.test_pipelined_sends, tests.test_wire -*-
"""
The operation queue of one connection: operations run one at a time, in
call order, with one exception, the hand-over.

**The hand-over rule.**  With PIPELINING, once a send has written its final
dot and only awaits the server's final reply, the next send may start: its
MAIL, RCPT and DATA follow the dot without waiting a round trip (RFC 2920).
Whatever that final reply says, the server's transaction ends with it,
nothing of ours is written in between (no RSET follows a refused message),
and replies pair with commands in the order written.  Only a send starts
early: QUIT, RSET and AUTH gain nothing from it, and must not run while a
reply is outstanding.

This object is the one place that rule lives; the pool asks it whether a
connection can take one more send (:meth:`OperationQueue.accepts_overlap`).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred

__all__ = ["OperationQueue", "Ticket"]

_SEND = "send"


class Ticket:
    """One operation's place in the queue."""

    __slots__ = ("action", "go", "dot_written")

    def __init__(self, action: str) -> None:
        self.action = action
        #: Fires when the operation may start (None: it started at once).
        self.go: Deferred[None] | None = None
        #: A send holding this ticket has written its final dot.
        self.dot_written = False


class OperationQueue:
    """Turn-taking for one connection's operations."""

    def __init__(self) -> None:
        self._running: list[Ticket] = []
        self._waiting: deque[Ticket] = deque()

    @property
    def busy(self) -> bool:
        """Whether an operation runs or waits."""
        return bool(self._running or self._waiting)

    def _may_start(self, ticket: Ticket) -> bool:
        if not self._running:
            return True
        return ticket.action == _SEND and all(
            running.action == _SEND and running.dot_written for running in self._running
        )

    def enter(self, action: str) -> Ticket:
        """
        Take a place.  The returned ticket's ``go`` is ``None`` when the
        operation may start now, else a Deferred firing when it may.
        """
        ticket = Ticket(action)
        if not self._waiting and self._may_start(ticket):
            self._running.append(ticket)
        else:
            ticket.go = Deferred()
            self._waiting.append(ticket)
        return ticket

    def dot_written(self, ticket: Ticket) -> None:
        """The send holding ``ticket`` wrote its final dot: the next send may go."""
        ticket.dot_written = True
        self._advance()

    def leave(self, ticket: Ticket) -> None:
        """The operation holding ``ticket`` ended (whichever way)."""
        if ticket in self._running:
            self._running.remove(ticket)
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
        self._advance()

    def accepts_overlap(self) -> bool:
        """
        Whether one more send given now would run alongside the one running
        (after its final dot) rather than behind a queue: nothing waits,
        and at most one send runs.  The caller checks that the server offers
        PIPELINING.
        """
        return not self._waiting and len(self._running) <= 1 and all(
            running.action == _SEND for running in self._running
        )

    def _advance(self) -> None:
        while self._waiting and self._may_start(self._waiting[0]):
            ticket = self._waiting.popleft()
            self._running.append(ticket)
            go, ticket.go = ticket.go, None
            assert go is not None
            go.callback(None)
