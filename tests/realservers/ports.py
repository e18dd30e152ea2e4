"""
Loopback ports for test servers.

Servers in these fixtures listen on a port the test process picked, not on
port 0: aiosmtpd's ``Controller`` cannot report the port it was given for
``port=0``, and Postfix needs the number written into ``master.cf`` before it
starts.  Picking a port by binding and closing a socket leaves a short window
in which another process could take it; callers that start a server on it
therefore retry with a fresh port when the bind fails.
"""

from __future__ import annotations

import socket
import time

__all__ = ["LOOPBACK", "free_port", "wait_for_port"]

#: The only address the real-server fixtures listen on.
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """
    Return a TCP port on ``host`` that nothing listens on right now.

    The kernel chooses it (bind to port 0), so two calls in a row normally
    give different ports.

    :param host: the local address the port will be used on.
    :return: the port number.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    *,
    expect_banner: bytes | None = None,
    interval: float = 0.05,
) -> bytes | None:
    """
    Wait until ``host:port`` accepts a TCP connection.

    Used for servers that are started as other processes, where "the
    process is running" does not yet mean "the socket is listening".

    :param host: address to connect to.
    :param port: port to connect to.
    :param timeout: give up after this many seconds (bounded wait).
    :param expect_banner: when given, also read the first line the server
        sends and require that it starts with these bytes (e.g. ``b"220"``),
        which proves that the server process behind the socket answers.
    :param interval: pause between attempts.
    :return: the banner line when ``expect_banner`` was given, else ``None``.
    :raises TimeoutError: when the port did not answer in time; the message
        says what the last attempt saw.
    """
    deadline = time.monotonic() + timeout
    last_problem = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"{host}:{port} did not answer within {timeout:.1f}s "
                f"(last attempt: {last_problem})"
            )
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 5.0)) as conn:
                if expect_banner is None:
                    return None
                banner = _read_line(conn, limit=4096)
                if banner.startswith(expect_banner):
                    try:
                        conn.sendall(b"QUIT\r\n")
                    except OSError:
                        pass
                    return banner
                last_problem = f"unexpected banner {banner!r}"
        except OSError as error:
            last_problem = repr(error)
        time.sleep(min(interval, max(deadline - time.monotonic(), 0.0)))


def _read_line(conn: socket.socket, limit: int) -> bytes:
    """
    Read bytes up to and including the first LF (or ``limit`` bytes).
    """
    data = b""
    while b"\n" not in data and len(data) < limit:
        chunk = conn.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data
