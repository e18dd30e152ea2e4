"""
Find what a test left behind in the global reactor.

The reactor runs once for the whole pytest session, so a timer or a socket
that one test forgets keeps running into the next tests, where it fires at
random and makes failures that are hard to trace back.  ``conftest.py``
takes a :func:`snapshot` before each test and, after it, asks for
:func:`leftovers`: delayed calls and readers/writers that exist now but did
not before.  The reactor's own internal readers (its waker and the SIGCHLD
waker installed on first run) are never counted.

Everything here takes the reactor as an argument; this module does not
import the global reactor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = [
    "LEFTOVER_ALLOWLIST",
    "Leftovers",
    "ReactorSnapshot",
    "allow_reactor_leftover",
    "clean_up",
    "leftovers",
    "snapshot",
]

#: Where a long-lived fixture registers objects (delayed calls, ports,
#: transports) that may outlive the test that first created them.
LEFTOVER_ALLOWLIST = pytest.StashKey[list[object]]()


def allow_reactor_leftover(config: pytest.Config, thing: object) -> None:
    """
    Never report ``thing`` as a leftover: for session- or module-scoped
    fixtures whose listening port or timer is created during some test and
    legitimately outlives it.
    """
    config.stash.setdefault(LEFTOVER_ALLOWLIST, []).append(thing)


@dataclass(frozen=True)
class ReactorSnapshot:
    """
    What the reactor held at one moment (compared by identity).
    """

    delayed: tuple[Any, ...]
    readers: tuple[Any, ...]
    writers: tuple[Any, ...]


@dataclass(frozen=True)
class Leftovers:
    """
    Delayed calls, readers and writers that a test added and did not remove.
    """

    delayed: tuple[Any, ...]
    readers: tuple[Any, ...]
    writers: tuple[Any, ...]

    def __bool__(self) -> bool:
        return bool(self.delayed or self.readers or self.writers)

    def describe(self) -> str:
        """
        A report naming every leftover, for the failure message.
        """
        lines: list[str] = []
        for call in self.delayed:
            lines.append(f"  delayed call: {call!r}")
        for reader in self.readers:
            lines.append(f"  reader: {_describe_selectable(reader)}")
        for writer in self.writers:
            if writer not in self.readers:
                lines.append(f"  writer: {_describe_selectable(writer)}")
        return "\n".join(lines)


def _describe_selectable(selectable: object) -> str:
    text = repr(selectable)
    protocol = getattr(selectable, "protocol", None)
    if protocol is not None:
        text += f" (protocol {protocol!r})"
    return text


def snapshot(reactor: Any) -> ReactorSnapshot:
    """
    Record the reactor's active delayed calls, readers and writers.
    """
    return ReactorSnapshot(
        delayed=tuple(call for call in reactor.getDelayedCalls() if call.active()),
        readers=tuple(reactor.getReaders()),
        writers=tuple(reactor.getWriters()),
    )


def _new(current: Iterable[object], before: Iterable[object], ignored: Iterable[object]) -> tuple[object, ...]:
    known = {id(thing) for thing in before} | {id(thing) for thing in ignored}
    return tuple(thing for thing in current if id(thing) not in known)


def leftovers(reactor: Any, before: ReactorSnapshot, allowed: Iterable[object] = ()) -> Leftovers:
    """
    What the reactor holds now that it did not hold at ``before``.

    :param allowed: objects never to report (see
        :func:`allow_reactor_leftover`); a transport's protocol or a port's
        factory may be given instead of the transport or port itself.
    """
    allowed = list(allowed)
    internal = list(getattr(reactor, "_internalReaders", ()))
    now = snapshot(reactor)
    allowed_ids = {id(thing) for thing in allowed}

    def keep(selectable: object) -> bool:
        related = (getattr(selectable, "protocol", None), getattr(selectable, "factory", None))
        return not any(id(thing) in allowed_ids for thing in related if thing is not None)

    return Leftovers(
        delayed=_new(now.delayed, before.delayed, allowed),
        readers=tuple(r for r in _new(now.readers, before.readers, [*allowed, *internal]) if keep(r)),
        writers=tuple(w for w in _new(now.writers, before.writers, [*allowed, *internal]) if keep(w)),
    )


def clean_up(reactor: Any, found: Leftovers) -> None:
    """
    Cancel the leftover delayed calls and drop the leftover connections and
    ports, so that one leaking test does not make the following ones fail.
    """
    for call in found.delayed:
        if call.active():
            call.cancel()
    for selectable in {id(s): s for s in (*found.readers, *found.writers)}.values():
        reactor.removeReader(selectable)
        reactor.removeWriter(selectable)
        for method in ("abortConnection", "stopListening", "loseConnection"):
            close = getattr(selectable, method, None)
            if close is not None:
                try:
                    close()
                except Exception:
                    # Best effort: the test has already been reported.
                    pass
                break
