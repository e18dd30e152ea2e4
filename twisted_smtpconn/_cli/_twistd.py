"""
``twistd -n --pidfile= smtpsend [options]``: ``main`` as a twistd service.

twistd has no way for a service to choose the process exit status: after
the reactor stops, ``twistd`` returns normally and the interpreter exits
with 0.  So the service

1. runs :func:`main` once the reactor is running, with a console that
   writes log events (twistd owns stdout/stderr);
2. records the status main returns and stops the reactor;
3. at interpreter exit (an ``atexit`` handler registered by
   :func:`makeService`), if the recorded status is not 0, flushes stdout and
   stderr and ends the process with ``os._exit(status)``.  ``sys.exit``
   cannot be used there: a ``SystemExit`` raised by an exit handler is
   ignored.  Exit handlers registered before ours (it runs first: they run
   in reverse order) are skipped in that case; twistd has removed its
   pidfile and flushed its log by then.

Usage errors would normally make twistd print its whole help and exit 1;
:class:`Options` instead keeps the error, and the service prints the
one-line message to the original stderr and exits 64, like ``python -m``.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from ._console import LoggerConsole
from ._exitcodes import EX_SOFTWARE, EX_USAGE
from ._options import SendOptions

__all__ = ["Options", "makeService", "SendService"]


class Options(SendOptions):
    """``SendOptions`` that keep a usage error for the service to report."""

    # twistd prefixes "Usage: twistd [options] smtpsend".
    synopsis = "[options]"
    usage_error: str | None = None

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            self.usage_error = str(e)


class SendService(Service):
    """
    Runs ``main`` once, then stops the reactor.

    :ivar exit_code: ``None`` until ``main`` has returned.
    """

    log = Logger(namespace="smtpsend")

    def __init__(self, options: Options) -> None:
        self._options = options
        self.exit_code: int | None = None
        self._run: Deferred[None] | None = None

    def startService(self) -> None:
        from twisted.internet import reactor

        super().startService()  # type: ignore[no-untyped-call]
        reactor.callWhenRunning(self._start, reactor)

    def _start(self, reactor: Any) -> None:
        self._run = Deferred.fromCoroutine(self._main(reactor))

    async def _main(self, reactor: Any) -> None:
        from ._main import main

        if self._options.usage_error is not None:
            LoggerConsole().usage_error(f"smtpsend: {self._options.usage_error}")
            code = EX_USAGE
        else:
            try:
                code = await main(reactor, self._options, console=LoggerConsole())
            except BaseException:
                self.log.failure("smtpsend failed")
                code = EX_SOFTWARE
        self.exit_code = code
        try:
            reactor.stop()
        except Exception:
            # Already stopping (Ctrl-C): main ran inside the shutdown.
            pass

    def exit_at_interpreter_exit(self) -> None:
        """The ``atexit`` handler: end the process with the recorded status."""
        code = self.exit_code
        if not code:
            return
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass
        os._exit(code)


def makeService(options: Options) -> IService:
    """Build the ``smtpsend`` service (see the module docstring for exit codes)."""
    service = SendService(options)
    atexit.register(service.exit_at_interpreter_exit)
    return service
