"""
nodemailer's smtp-connection event-emitter surface (``on("connect" | "error" | "end", cb)``).

Twisted code prefers Deferreds, and every operation returns one; events exist
for what no Deferred can carry: a failure of an idle connection, and the
moment the connection is gone.  A callback that raises is logged and does
not disturb the connection or the other callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["EventEmitter", "EVENT_NAMES"]

#: The connection's events (those of nodemailer's smtp-connection).
EVENT_NAMES = frozenset({"connect", "error", "end"})


class EventEmitter:
    """Holds the callbacks of one connection and calls them in registration order."""

    def __init__(self, log: Logger) -> None:
        self._log = log
        self._callbacks: dict[str, list[Callable[..., object]]] = {name: [] for name in EVENT_NAMES}

    def on(self, event: str, callback: Callable[..., object]) -> None:
        """
        Register ``callback`` for ``event``.

        :raises ValueError: for an event name that does not exist, so that a
            typo does not silently register a callback that never runs.
        :raises TypeError: if ``callback`` is not callable.
        """
        if event not in EVENT_NAMES:
            raise ValueError(f"unknown event {event!r}; events are {sorted(EVENT_NAMES)}")
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        self._callbacks[event].append(callback)

    def emit(self, event: str, *args: Any) -> None:
        """Call every callback of ``event``; a raising callback is logged."""
        for callback in list(self._callbacks[event]):
            try:
                callback(*args)
            except Exception:
                self._log.failure("{event!r} callback {callback!r} raised", event=event, callback=callback)
