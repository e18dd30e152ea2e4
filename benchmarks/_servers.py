"""
The servers of the benchmark: Postfix's ``smtp-sink`` for the timings, and
an aiosmtpd recorder for the correctness check.

Both listen on 127.0.0.1 only.  ``smtp-sink`` is started with
:class:`subprocess.Popen` (no shell, so the PID is the program's own) and
stopped by that PID; the recorder runs in a thread of the benchmark process
and keeps only a SHA-256 and a size per message.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["free_port", "SmtpSink", "Recorder", "find_program"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def find_program(name: str) -> str | None:
    """Postfix's test programs live in /usr/sbin on Debian."""
    for directory in ("/usr/sbin", "/usr/lib/postfix/sbin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"smtp-sink exited with status {process.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"smtp-sink did not listen on port {port} within {timeout:g} s")


class SmtpSink:
    """
    ``smtp-sink`` on a free loopback port: it answers everything and keeps
    nothing, so what is measured is the client.

    It offers PIPELINING and 8BITMIME (and not CHUNKING), so every client
    sends with DATA.
    """

    def __init__(self) -> None:
        program = find_program("smtp-sink")
        if program is None:
            raise RuntimeError("smtp-sink not found (Debian package postfix)")
        self.port = free_port()
        argv = [program]
        if os.geteuid() == 0:
            # smtp-sink refuses to run as root without a user to switch to.
            argv += ["-u", "nobody"]
        argv += ["-h", "sink.example", f"{LOOPBACK}:{self.port}", "256"]
        self._process: subprocess.Popen[bytes] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _wait_for_port(self.port, self._process)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self) -> None:
        """Stop this smtp-sink, by its PID, and reap it."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        if self._process.stderr is not None:
            self._process.stderr.close()


@dataclass
class Received:
    """One message as the recorder received it."""

    sha256: str
    size: int


@dataclass
class _Log:
    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: list[Received] = field(default_factory=list)


class _Handler:
    def __init__(self, log: _Log) -> None:
        self._log = log

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        with self._log.lock:
            self._log.messages.append(Received(hashlib.sha256(content).hexdigest(), len(content)))
        return "250 2.0.0 recorded"


class Recorder:
    """
    An aiosmtpd server that records each message's SHA-256 and size.

    aiosmtpd undoes the dot-stuffing and keeps the CRLF line ends, so what
    it hashes is the message as the client meant it: exactly the CRLF form
    of :mod:`_messages`' messages.
    """

    def __init__(self, data_size_limit: int = 64 * 1024 * 1024) -> None:
        from aiosmtpd.controller import Controller

        self._log = _Log()
        self.port = free_port()
        self._controller = Controller(
            _Handler(self._log),
            hostname=LOOPBACK,
            port=self.port,
            server_hostname="recorder.example",
            data_size_limit=data_size_limit,
            decode_data=False,
            ready_timeout=10.0,
        )
        self._controller.start()

    def take(self) -> list[Received]:
        """The messages received since the last call, in arrival order."""
        with self._log.lock:
            messages, self._log.messages = self._log.messages, []
        return messages

    def stop(self) -> None:
        self._controller.stop()
