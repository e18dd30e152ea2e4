"""
Where the connection's log events go.

API.md's ``logger`` option: a :class:`twisted.logger.Logger` is used as it
is; ``True`` logs to standard error; ``None``/``False`` is silent.  The wire
transcript (``debug=True``) goes through the same logger, with the text of
every line already redacted by the caller when it carries credentials.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, LogEvent, Logger, textFileLogObserver
from zope.interface import implementer

__all__ = ["make_logger", "WireLog"]

_NAMESPACE = "twisted_smtpconn"


@implementer(ILogObserver)
class _Discard:
    """An observer that drops every event: the ``logger=None`` case."""

    def __call__(self, event: LogEvent) -> None:
        pass


def make_logger(option: object) -> Logger:
    """
    Turn the ``logger`` option into a :class:`Logger`.

    :raises TypeError: for anything other than a Logger, a bool or None.
    """
    if isinstance(option, Logger):
        return option
    if option is True:
        return Logger(namespace=_NAMESPACE, observer=textFileLogObserver(sys.stderr))
    if option is None or option is False:
        return Logger(namespace=_NAMESPACE, observer=_Discard())
    raise TypeError(f"logger must be a twisted.logger.Logger, True, False or None, not {option!r}")


class WireLog:
    """
    The wire transcript: every line sent and received, when ``debug`` is on.

    Kept separate from transaction events so that the cost of formatting a
    line is paid only when somebody asked for the transcript.
    """

    def __init__(self, log: Logger, enabled: bool) -> None:
        self._log = log
        self.enabled = enabled

    def sent(self, text: str) -> None:
        """Log a line we sent; ``text`` must already be redacted."""
        if self.enabled:
            self._log.debug("C: {line}", line=text)

    def received(self, text: str) -> None:
        """Log a line the server sent."""
        if self.enabled:
            self._log.debug("S: {line}", line=text)
