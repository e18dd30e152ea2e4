"""
Where the connection's log events go, and the wire transcript.

The ``logger`` option: ``None`` (the default) sends events to Twisted's
global log publisher, as every Twisted library does, under the namespace
``twisted_smtpconn.connection`` (so twistd's log, or any observer a program
installed with ``globalLogBeginner.beginLoggingTo``, shows them); a
:class:`twisted.logger.Logger` is used as it is; ``True`` logs to standard
error; ``False`` is silent.

The wire transcript (``debug=True``) goes through the same logger, one event
per line, each naming its connection (``#3 mail.example:587``) so that the
transcripts of several connections can be read apart.  Lines we send are
already redacted by the code that sends credentials; lines the server sends
have their control characters escaped (:func:`~._reply.escape_controls`), as
does every other server-provided text in an event, so that a hostile server
cannot rewrite the terminal of whoever reads the log.
"""

from __future__ import annotations

import itertools
import sys

from twisted.logger import ILogObserver, LogEvent, Logger, textFileLogObserver
from zope.interface import implementer

from ._reply import escape_controls

__all__ = ["make_logger", "WireLog", "connection_label", "NAMESPACE"]

#: The namespace of the connection's events under the global publisher.
NAMESPACE = "twisted_smtpconn.connection"

_numbers = itertools.count(1)


@implementer(ILogObserver)
class _Discard:
    """An observer that drops every event: ``logger=False``."""

    def __call__(self, event: LogEvent) -> None:
        pass


def make_logger(option: object) -> Logger:
    """
    Turn the ``logger`` option into a :class:`Logger`.

    :raises TypeError: for anything other than a Logger, a bool or None.
    """
    if isinstance(option, Logger):
        return option
    if option is None:
        # No observer given: Logger then emits to the global publisher.
        return Logger(namespace=NAMESPACE)
    if option is True:
        return Logger(namespace=NAMESPACE, observer=textFileLogObserver(sys.stderr))
    if option is False:
        return Logger(namespace=NAMESPACE, observer=_Discard())
    raise TypeError(f"logger must be a twisted.logger.Logger, True, False or None, not {option!r}")


def connection_label(host: str, port: int) -> str:
    """``#N host:port``: a short name for one connection, unique in this process."""
    shown = f"[{host}]" if ":" in host else host
    return f"#{next(_numbers)} {escape_controls(shown)}:{port}"


class WireLog:
    """
    The wire transcript: every line sent and received, when ``debug`` is on.

    Kept apart from the connection's other events so that the cost of
    decoding and formatting a line is paid only when somebody asked for the
    transcript (callers test :attr:`enabled` first).
    """

    def __init__(self, log: Logger, enabled: bool, label: str = "") -> None:
        self._log = log
        self.enabled = enabled
        self.label = label

    def sent(self, text: str) -> None:
        """Log a line we sent; ``text`` must already be redacted."""
        if self.enabled:
            self._log.debug("{connection} C: {line}", connection=self.label, line=escape_controls(text))

    def received(self, line: bytes) -> None:
        """Log a line the server sent (decoded as UTF-8, controls escaped)."""
        if self.enabled:
            text = escape_controls(line.decode("utf-8", "replace"))
            self._log.debug("{connection} S: {line}", connection=self.label, line=text)
