"""
One client, one scenario, in a process of its own.

Run by ``bench.py`` as ``python _clients.py CLIENT SCENARIO HOST PORT
COUNT SIZE``; prints one JSON object: ``elapsed`` (seconds from before
connecting to after the last connection closed), ``cpu`` (this process's
CPU time, :func:`time.process_time`, over the same span), ``messages`` and
``bytes`` (the CRLF size of what was sent); twisted_smtpconn's also
``library``, the checkout its package was imported from
(``SMTPCONN_BENCH_LIBRARY``, else this one).  Peak RSS is measured by the
parent, so it covers everything this process did.

Scenarios:

``one``
    ``COUNT`` small messages over one connection.
``large``
    One 20 MiB message as one ``bytes`` object (``SIZE`` is ignored).
``large-gen``
    The same 20 MiB message as a generator of 64 KiB chunks (cut before the
    clock starts; twisted_smtpconn only).
``pool``
    ``COUNT`` small messages over 10 connections.
``huge``
    One generated message of ``SIZE`` bytes, each client sending it the way
    it can: ours and twisted.mail.smtp stream it, smtplib and aiosmtplib
    take it whole, as ``bytes``.

``twisted_smtpconn`` is run in the calling styles its users write, named
``twisted_smtpconn/STYLE``:

``awaited``
    each ``send()`` awaited before the next is called (in ``pool``: ten
    :class:`SMTPConnection` objects side by side, each awaiting its sends);
``queued``
    every ``send()`` of a connection called at once, then all awaited
    (in ``pool``: the same on each of ten connections);
``pool``
    ``SMTPPool(max_connections=10)``, every ``send()`` called at once (in
    ``one`` the pool is free to open up to ten connections, as it would for
    such a caller).

``twisted_smtpconn``'s clients use its public API only.  The others use
their libraries the way their documentation shows; ``python-pipelining``
uses none, as a yardstick of what Python itself costs.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import smtplib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The twisted_smtpconn to measure: bench.py names the checkout (this one,
# or the one given with --before-tree).
sys.path.insert(
    1, os.environ.get("SMTPCONN_BENCH_LIBRARY") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)

from _messages import (  # noqa: E402
    RECIPIENT,
    SENDER,
    generated_chunks,
    generated_lf_chunks,
    generated_size,
    large_message,
    small_message,
    to_lf,
)

CONNECTIONS = 10
CLIENT_NAME = "client.example"


def _message(scenario: str, size: int) -> bytes:
    """
    The message of ``scenario`` as bytes, made before the clock starts (the
    generated one only for the clients that need it whole in memory).
    """
    if scenario == "large":
        return large_message()
    if scenario == "huge":
        return b"".join(generated_chunks(size))
    return small_message()


def _sent(scenario: str, count: int, size: int) -> int:
    """The CRLF bytes of the messages of ``scenario``."""
    if scenario == "huge":
        return generated_size(size)
    if scenario in ("large", "large-gen"):
        return len(large_message())
    return count * len(small_message())


# -- twisted_smtpconn ----------------------------------------------------------------


STYLES = ("awaited", "queued", "pool")
LARGE_CHUNK = 64 * 1024


def _bodies(scenario: str, size: int) -> Callable[[], object]:
    """
    A function that returns the message for one send, all its bytes made
    before the clock starts (the generated one excepted: it is made as it
    is read, which is the point of it).
    """
    if scenario == "huge":
        return lambda: generated_chunks(size)
    if scenario == "large-gen":
        whole = large_message()
        pieces = [whole[at : at + LARGE_CHUNK] for at in range(0, len(whole), LARGE_CHUNK)]

        def chunks() -> Iterator[bytes]:
            yield from pieces

        return chunks
    message = _message(scenario, size)
    return lambda: message


def run_ours(style: str, scenario: str, host: str, port: int, count: int, size: int) -> dict[str, Any]:
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred, gatherResults

    import twisted_smtpconn
    from twisted_smtpconn import Envelope, SMTPConnection, SMTPPool

    if style not in STYLES:
        raise SystemExit(f"unknown style {style!r}: one of {', '.join(STYLES)}")
    body = _bodies(scenario, size)
    envelope = Envelope(SENDER, [RECIPIENT])
    messages = count if scenario in ("one", "pool") else 1
    shares = _shares(messages) if scenario == "pool" else [messages]

    async def one_connection(reactor: Any, n: int) -> None:
        conn = SMTPConnection(host, port, name=CLIENT_NAME, reactor=reactor)
        await conn.connect()
        if style == "awaited":
            for _ in range(n):
                await conn.send(envelope, body())
        else:
            await gatherResults([conn.send(envelope, body()) for _ in range(n)], consumeErrors=True)
        await conn.quit()

    async def main(reactor: Any) -> None:
        started, cpu_started = time.perf_counter(), time.process_time()
        if style == "pool":
            # max_messages: no connection is replaced halfway through a run
            # (the default, 100, would add reconnections to scenario 1).
            pool = SMTPPool(
                host,
                port,
                max_connections=CONNECTIONS,
                max_messages=max(messages, 1),
                name=CLIENT_NAME,
                reactor=reactor,
            )
            try:
                await gatherResults([pool.send(envelope, body()) for _ in range(messages)], consumeErrors=True)
            finally:
                await pool.close()
        else:
            runs = [ensureDeferred(one_connection(reactor, n)) for n in shares]
            await gatherResults(runs, consumeErrors=True)
        result = _result(started, cpu_started, scenario, count, size)
        result["library"] = os.path.dirname(os.path.dirname(os.path.abspath(twisted_smtpconn.__file__)))
        _emit(result)

    task.react(lambda reactor: ensureDeferred(main(reactor)))  # exits the process
    raise AssertionError("unreachable")  # pragma: no cover


def _result(started: float, cpu_started: float, scenario: str, count: int, size: int) -> dict[str, Any]:
    """What every client reports: wall time, CPU time, messages, bytes."""
    return {
        "elapsed": time.perf_counter() - started,
        "cpu": time.process_time() - cpu_started,
        "messages": count if scenario in ("one", "pool") else 1,
        "bytes": _sent(scenario, count, size),
    }


# -- smtplib ---------------------------------------------------------------------------


def _shares(count: int) -> list[int]:
    """``count`` messages split over :data:`CONNECTIONS` connections."""
    base, extra = divmod(count, CONNECTIONS)
    return [base + (1 if n < extra else 0) for n in range(CONNECTIONS)]


def run_smtplib(scenario: str, host: str, port: int, count: int, size: int) -> dict[str, Any]:
    message = _message(scenario, size)

    def one_connection(n: int) -> None:
        with smtplib.SMTP(host, port, local_hostname=CLIENT_NAME) as client:
            for _ in range(n):
                client.sendmail(SENDER, [RECIPIENT], message)

    started, cpu_started = time.perf_counter(), time.process_time()
    if scenario == "pool":
        # One thread per connection, as smtplib is blocking.
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                one_connection(n)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(n,)) for n in _shares(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    else:
        one_connection(count if scenario == "one" else 1)
    return _result(started, cpu_started, scenario, count, size)


# -- aiosmtplib ------------------------------------------------------------------------


def run_aiosmtplib(scenario: str, host: str, port: int, count: int, size: int) -> dict[str, Any]:
    import aiosmtplib

    message = _message(scenario, size)

    async def one_connection(n: int) -> None:
        client = aiosmtplib.SMTP(hostname=host, port=port, local_hostname=CLIENT_NAME, start_tls=False)
        async with client:
            for _ in range(n):
                await client.sendmail(SENDER, [RECIPIENT], message)

    async def main() -> None:
        if scenario == "pool":
            await asyncio.gather(*(one_connection(n) for n in _shares(count)))
        else:
            await one_connection(count if scenario == "one" else 1)

    started, cpu_started = time.perf_counter(), time.process_time()
    asyncio.run(main())
    return _result(started, cpu_started, scenario, count, size)


# -- a minimal pipelining writer, no library ----------------------------------------


def _stuffed(message: bytes) -> bytes:
    """``message`` (CRLF, ending with CRLF) dot-stuffed, with its final dot."""
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def run_python_pipelining(scenario: str, host: str, port: int, count: int, size: int) -> dict[str, Any]:
    """
    What plain Python can do with no library at all: asyncio streams, the
    message dot-stuffed before the clock starts, and each envelope written
    right after the previous message's final dot (RFC 2920), so a message
    costs one round trip.  No error handling beyond checking each reply's
    code: a yardstick, not a client.
    """
    if scenario not in ("one", "large", "pool"):
        raise SystemExit(f"python-pipelining has no {scenario} scenario")
    body = _stuffed(_message(scenario, size))
    envelope = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()

    async def reply(reader: asyncio.StreamReader, expected: int) -> None:
        while True:
            line = await reader.readline()
            if len(line) < 4:
                raise ConnectionError(f"connection lost or bad reply: {line!r}")
            if line[3:4] != b"-":
                break
        if int(line[:3]) != expected:
            raise RuntimeError(f"expected {expected}, got {line!r}")

    async def one_connection(n: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        await reply(reader, 220)
        writer.write(f"EHLO {CLIENT_NAME}\r\n".encode())
        await reply(reader, 250)
        writer.write(envelope)
        for left in range(n - 1, -1, -1):
            for code in (250, 250, 354):
                await reply(reader, code)
            writer.write(body + (envelope if left else b"QUIT\r\n"))
            await writer.drain()
            await reply(reader, 250)
        await reply(reader, 221)
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        if scenario == "pool":
            await asyncio.gather(*(one_connection(n) for n in _shares(count)))
        else:
            await one_connection(count if scenario == "one" else 1)

    started, cpu_started = time.perf_counter(), time.process_time()
    asyncio.run(main())
    return _result(started, cpu_started, scenario, count, size)


# -- twisted.mail.smtp ----------------------------------------------------------------------


class _GeneratedFile(io.RawIOBase):
    """A read-only file whose content is generated as it is read."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def run_twisted_mail(scenario: str, host: str, port: int, count: int, size: int) -> dict[str, Any]:
    from twisted.internet import defer, protocol, task
    from twisted.mail import smtp

    # twisted.mail.smtp turns every LF into CRLF itself: give it LF.
    lf = b"" if scenario == "huge" else to_lf(_message(scenario, size))

    def make_file() -> Any:
        if scenario == "huge":
            return _GeneratedFile(generated_lf_chunks(size))
        return io.BytesIO(lf)

    class Sender(smtp.ESMTPClient):
        """Sends ``n`` messages over one connection, then QUIT."""

        def __init__(self, n: int, done: defer.Deferred[None]) -> None:
            super().__init__(  # type: ignore[no-untyped-call]
                secret=None, contextFactory=None, identity=CLIENT_NAME
            )
            self.requireAuthentication = False
            self.requireTransportSecurity = False
            self._left = n
            self._done = done
            self._failure: Exception | None = None

        def connectionMade(self) -> None:
            # Not done by twisted.mail.smtp itself: without it every command
            # waits ~40 ms for the server's delayed ACK (Nagle), and the
            # 2,000-message run takes minutes.
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
            super().connectionMade()  # type: ignore[no-untyped-call]

        def getMailFrom(self) -> str | None:
            return SENDER if self._left > 0 else None

        def getMailTo(self) -> list[str]:
            return [RECIPIENT]

        def getMailData(self) -> Any:
            return make_file()

        def sentMail(self, code: int, resp: bytes, numOk: int, addresses: Any, log: Any) -> None:
            self._left -= 1
            if code not in smtp.SUCCESS:
                self._failure = RuntimeError(f"message refused: {code} {resp!r}")

        def smtpTransferFailed(self, code: int, resp: bytes) -> None:
            self._failure = RuntimeError(f"transfer failed: {code} {resp!r}")

        def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
            if not self._done.called:
                if self._failure is not None:
                    self._done.errback(self._failure)
                elif self._left:
                    self._done.errback(RuntimeError(f"connection lost with {self._left} messages unsent"))
                else:
                    self._done.callback(None)

    def one_connection(reactor: Any, n: int) -> defer.Deferred[None]:
        done: defer.Deferred[None] = defer.Deferred()
        factory = protocol.ClientFactory()
        factory.buildProtocol = lambda addr: Sender(n, done)  # type: ignore[method-assign]
        failed = lambda connector, reason: done.errback(reason)  # noqa: E731
        factory.clientConnectionFailed = failed  # type: ignore[method-assign]
        reactor.connectTCP(host, port, factory)
        return done

    async def main(reactor: Any) -> None:
        started, cpu_started = time.perf_counter(), time.process_time()
        if scenario == "pool":
            await defer.gatherResults([one_connection(reactor, n) for n in _shares(count)])
        else:
            await one_connection(reactor, count if scenario == "one" else 1)
        _emit(_result(started, cpu_started, scenario, count, size))

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    raise AssertionError("unreachable")  # pragma: no cover


RUNNERS: dict[str, Callable[[str, str, int, int, int], dict[str, Any]]] = {
    "smtplib": run_smtplib,
    "aiosmtplib": run_aiosmtplib,
    "twisted.mail.smtp": run_twisted_mail,
    "python-pipelining": run_python_pipelining,
}


def _peak_rss_kib() -> int | None:
    """This process's own peak RSS (``VmHWM``), in KiB, where /proc has it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _emit(result: dict[str, Any]) -> None:
    result["vmhwm_kib"] = _peak_rss_kib()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    client, scenario, host, port, count, size = argv
    if scenario == "large-gen" and not client.startswith("twisted_smtpconn/"):
        raise SystemExit(f"{client} has no large-gen scenario")
    if client.startswith("twisted_smtpconn/"):
        run_ours(client.partition("/")[2], scenario, host, int(port), int(count), int(size))
    result = RUNNERS[client](scenario, host, int(port), int(count), int(size))
    _emit(result)


if __name__ == "__main__":
    main(sys.argv[1:])
