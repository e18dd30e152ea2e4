"""
Benchmark: stream a large generated message through BodyEncoder and
BodyProducer to a local discard server and report throughput and peak RSS.

Not a test (pytest does not collect it: no ``test_`` prefix).  Run it as::

    python tests/bench_body_memory.py                  # 1 GiB of CRLF text
    python tests/bench_body_memory.py --size 4096 --lf # 4 GiB, LF line ends

The discard server runs in a child process, so the peak RSS printed is the
client's alone: with back-pressure working it stays near the interpreter's
baseline (tens of MiB) whatever ``--size`` is.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.internet import task, threads
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted_smtpconn._dotstuff import BodyEncoder  # noqa: E402
from twisted_smtpconn._producer import BodyProducer, encoded  # noqa: E402
from twisted_smtpconn._source import iterate_message  # noqa: E402

# A plain-socket discard server: prints its port, counts bytes until EOF,
# prints the count.
DISCARD_SERVER = """
import socket
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
total = 0
while True:
    data = conn.recv(1 << 20)
    if not data:
        break
    total += len(data)
print(total, flush=True)
"""

MIB = 1024 * 1024


def generated(total: int, chunk: int, line_end: bytes) -> Iterator[bytes]:
    """``total`` bytes of text lines made lazily, never held whole."""
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstu" + line_end
    block = line * (chunk // len(line) + 1)
    for offset in range(0, total, chunk):
        size = min(chunk, total - offset)
        yield (b"%016d" % offset + block[16:size])[:size]


class Client(Protocol):
    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed.callback(None)


def max_rss_mib() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB


async def main(reactor: Any, options: argparse.Namespace) -> None:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    server = subprocess.Popen(
        [sys.executable, "-c", DISCARD_SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Client())
        baseline = max_rss_mib()

        total = options.size * MIB
        encoder = BodyEncoder()
        chunks = iterate_message(
            generated(total, options.chunk_size, b"\n" if options.lf else b"\r\n"),
            chunk_size=options.chunk_size,
        )
        started = time.perf_counter()
        written = await BodyProducer(client.transport).write_all(encoded(chunks, encoder))
        client.transport.loseConnection()
        await client.closed
        elapsed = time.perf_counter() - started
        out, _ = await threads.deferToThread(server.communicate, timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    received = int(out.strip())

    print(f"message size:   {encoder.message_size / MIB:10.1f} MiB (normalised)")
    print(f"bytes written:  {written / MIB:10.1f} MiB, server received {received / MIB:.1f} MiB")
    print(f"time:           {elapsed:10.2f} s  ({written / MIB / elapsed:.0f} MiB/s)")
    print(f"peak RSS:       {max_rss_mib():10.1f} MiB (before streaming: {baseline:.1f} MiB)")
    if received != written:
        raise SystemExit("byte count mismatch")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="message size in MiB (default 1024)")
    parser.add_argument("--chunk-size", type=int, default=64 * 1024, help="source chunk size in bytes")
    parser.add_argument("--lf", action="store_true", help="generate LF line ends (exercise normalisation)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    task.react(main, [parse(sys.argv[1:])])
