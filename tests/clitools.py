"""
Running ``smtpsend`` as real subprocesses (``python -m twisted_smtpconn``
and ``twistd -n --pidfile= smtpsend``) on the test's reactor, for the CLI
tests: start one, wait for a line of its output, signal it, collect its
exit status and output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtools import subprocess_env, twistd_command

__all__ = ["FRONT_ENDS", "RUN_LIMIT", "Result", "read_report", "run", "start"]

#: Seconds any one subprocess run may take before the test fails.
RUN_LIMIT = 180

FRONT_ENDS = {
    "python -m": [sys.executable, "-m", "twisted_smtpconn"],
    "twistd": [*twistd_command(), "-n", "--pidfile=", "smtpsend"],
}


@dataclass
class Result:
    code: int | None
    out: str
    err: str
    signal: int | None = None
    both: str = ""


class _Process:
    """A subprocess run on the reactor, whose output can be waited for."""

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import ProcessProtocol

        outer = self
        self.out = bytearray()
        self.err = bytearray()
        #: Both streams in the order their bytes arrived.
        self.both = bytearray()
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()
        self._waiters: list[tuple[bytes, Deferred[None]]] = []

        class Protocol(ProcessProtocol):
            def outReceived(self, data: bytes) -> None:
                outer.out += data
                outer.both += data
                outer._check()

            def errReceived(self, data: bytes) -> None:
                outer.err += data
                outer.both += data
                outer._check()

            def processEnded(self, reason: Any) -> None:
                outer.ended.callback((reason.value.exitCode, reason.value.signal))

        self.protocol = Protocol()
        self.transport: Any = None

    def _check(self) -> None:
        for needle, d in list(self._waiters):
            if needle in self.out or needle in self.err:
                self._waiters.remove((needle, d))
                d.callback(None)

    async def wait_for(self, needle: bytes) -> None:
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred

        d: Deferred[None] = Deferred()
        self._waiters.append((needle, d))
        self._check()
        d.addTimeout(RUN_LIMIT, reactor)
        await d

    async def finish(self) -> Result:
        from twisted.internet import reactor

        self.ended.addTimeout(RUN_LIMIT, reactor, onTimeoutCancel=self._kill)
        code, signal = await self.ended
        return Result(
            code,
            self.out.decode("utf-8", "replace"),
            self.err.decode("utf-8", "replace"),
            signal,
            self.both.decode("utf-8", "replace"),
        )

    def _kill(self, result: object, timeout: float) -> object:
        self.transport.signalProcess("KILL")
        return result


def start(argv: list[str], cwd: Path, stdin: bytes | None = None) -> _Process:
    from twisted.internet import reactor

    env = subprocess_env()
    process = _Process()
    process.transport = reactor.spawnProcess(process.protocol, argv[0], argv, env=env, path=str(cwd))
    if stdin is not None:
        process.transport.write(stdin)
    process.transport.closeStdin()
    return process


async def run(front_end: str, args: list[str], cwd: Path, stdin: bytes | None = None) -> Result:
    return await start(FRONT_ENDS[front_end] + args, cwd, stdin).finish()


def read_report(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``--report`` file."""
    return [json.loads(line) for line in path.read_text().splitlines()]
