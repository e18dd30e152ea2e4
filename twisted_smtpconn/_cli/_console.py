"""
Where ``smtpsend`` talks to its user, and the progress line.

Two consoles: :class:`StreamConsole` for ``python -m`` (stdout for results,
stderr for problems, and a self-overwriting progress line when stderr is a
terminal) and :class:`LoggerConsole` for ``twistd``, where everything is a
log event (twistd owns stdout and stderr).  The progress arithmetic
(:class:`ProgressMeter`) is separate and takes times as arguments, so it is
testable without clocks.
"""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

from twisted.logger import Logger

from ._results import Tally

__all__ = ["Console", "StreamConsole", "LoggerConsole", "ProgressMeter", "format_duration"]


class Console(Protocol):
    """What ``main`` needs from its output."""

    #: Whether a self-overwriting progress line makes sense.
    interactive: bool

    def info(self, text: str) -> None:
        """A line of normal output."""

    def problem(self, text: str) -> None:
        """A line about something that went wrong."""

    def status(self, text: str) -> None:
        """Replace the progress line (interactive consoles only)."""

    def usage_error(self, text: str) -> None:
        """The one line of a usage error: always on the process's stderr."""

    def library_logger(self) -> object:
        """The ``logger=`` for ``SMTPConnection`` when ``--debug`` is on."""


class StreamConsole:
    """Plain text to two streams (``python -m``)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout
        self._err = err if err is not None else sys.stderr
        isatty = getattr(self._err, "isatty", None)
        self.interactive = bool(isatty and isatty())
        self._status_shown = False

    def _clear_status(self) -> None:
        if self._status_shown:
            self._err.write("\r\x1b[K")
            self._err.flush()
            self._status_shown = False

    def info(self, text: str) -> None:
        self._clear_status()
        self._out.write(text + "\n")
        self._out.flush()

    def problem(self, text: str) -> None:
        self._clear_status()
        self._err.write(text + "\n")
        self._err.flush()

    def usage_error(self, text: str) -> None:
        self.problem(text)

    def status(self, text: str) -> None:
        if not self.interactive:
            return
        self._err.write("\r\x1b[K" + text)
        self._err.flush()
        self._status_shown = True

    def library_logger(self) -> object:
        return True


class LoggerConsole:
    """Everything as ``twisted.logger`` events (``twistd``)."""

    interactive = False

    def __init__(self) -> None:
        # An instance attribute: a class-level Logger would take the class
        # name as its namespace.
        self.log = Logger(namespace="smtpsend")

    def info(self, text: str) -> None:
        self.log.info("{text}", text=text)

    def problem(self, text: str) -> None:
        self.log.warn("{text}", text=text)

    def status(self, text: str) -> None:
        pass

    def usage_error(self, text: str) -> None:
        # Logged like everything else, and also written to the stderr twistd
        # started with, so that a script sees it as with ``python -m``.
        self.log.error("{text}", text=text)
        stderr = sys.__stderr__
        if stderr is not None:
            stderr.write(text + "\n")
            stderr.flush()

    def library_logger(self) -> object:
        return Logger(namespace="twisted_smtpconn")


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` for an ETA."""
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressMeter:
    """
    Sent/failed counts, rate and ETA from a :class:`Tally` and two times.

    :param started: the reactor time the run began.
    """

    def __init__(self, tally: Tally, started: float) -> None:
        self._tally = tally
        self._started = started

    def rate(self, now: float) -> float:
        """Messages settled per second so far (0 before the first)."""
        elapsed = now - self._started
        return self._tally.done / elapsed if elapsed > 0 else 0.0

    def line(self, now: float) -> str:
        t = self._tally
        rate = self.rate(now)
        remaining = t.total - t.settled
        eta = format_duration(remaining / rate) if rate > 0 else "-:--:--"
        return (
            f"sent {t.counts['sent'] + t.counts['partial']}/{t.total}"
            f"  failed {t.counts['failed']}"
            f"  {rate:.1f} msg/s  ETA {eta}"
        )
