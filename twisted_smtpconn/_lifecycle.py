"""
The connection's lifecycle: new -> connecting -> ready -> closing -> closed.

Operations that may only run in some states call :meth:`Lifecycle.require`,
which raises an ``EPROTOCOL`` error at once instead of letting the call hang
or write to a dead socket: a wrong call order fails with EPROTOCOL.
Transactions in progress are not a state of their own: they are serialised by
the connection's operation queue.
"""

from __future__ import annotations

import enum

from ._errors import ProtocolError

__all__ = ["State", "Lifecycle"]


class State(enum.Enum):
    """Where a connection is in its life."""

    NEW = "new"
    CONNECTING = "connecting"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


_WHY = {
    State.NEW: "the connection is not connected yet: call connect() first",
    State.CONNECTING: "the connection is still connecting",
    State.READY: "the connection is already connected",
    State.CLOSING: "the connection is closing",
    State.CLOSED: "the connection is closed",
}


class Lifecycle:
    """The current :class:`State` and the allowed moves between states."""

    _MOVES = {
        State.NEW: {State.CONNECTING, State.CLOSED},
        State.CONNECTING: {State.READY, State.CLOSING, State.CLOSED},
        State.READY: {State.CLOSING, State.CLOSED},
        State.CLOSING: {State.CLOSED},
        State.CLOSED: set(),
    }

    def __init__(self) -> None:
        self.state = State.NEW

    def require(self, action: str, *allowed: State) -> None:
        """
        :raises ProtocolError: ``action`` is not allowed in the current state.
        """
        if self.state not in allowed:
            error = ProtocolError(f"cannot {action}: {_WHY[self.state]}")
            # A call out of order changes nothing: the connection was not
            # usable for it in the first place.
            error.closes_connection = False
            raise error

    def move(self, new: State) -> bool:
        """
        Go to ``new``.

        :returns: whether the state changed (moving to the current state, or
            an impossible move such as leaving CLOSED, changes nothing).
        """
        if new not in self._MOVES[self.state]:
            return False
        self.state = new
        return True
