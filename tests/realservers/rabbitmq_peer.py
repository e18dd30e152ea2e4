"""
A private RabbitMQ node (the Debian ``rabbitmq-server`` package) as a test
peer for ``smtpsend --queue``.

Nothing of the packaged service is used: the node has its own name
(``smtpconn-<random>@localhost``), its own Erlang cookie (``HOME`` is the
node's directory), its own data and log directories, configuration file and
(empty) plugin list, all in a temporary directory, and it listens on
127.0.0.1 only:

* AMQP on a free port (``listeners.tcp.1 = 127.0.0.1:PORT``: the
  ``RABBITMQ_NODE_IP_ADDRESS`` variable alone is overridden by a listener
  in the configuration file, so the file names the address too), and AMQP
  over TLS on another (``listeners.ssl.1``), with a certificate for
  127.0.0.1 from a throwaway CA (trustme);
* Erlang distribution on ``RABBITMQ_DIST_PORT``, bound to 127.0.0.1
  (``-kernel inet_dist_use_interface``);
* a private ``epmd`` started here in the foreground on its own port and
  address (``ERL_EPMD_PORT``, ``ERL_EPMD_ADDRESS=127.0.0.1``); the node is
  told not to start one (``-start_epmd false``), so no epmd outlives the
  tests.

Both processes are started here and stopped by their PIDs (the server's
start script traps SIGTERM and stops the Erlang VM it started).  The node
keeps its data directory across :meth:`RabbitNode.restart`, so durable
queues and persistent messages survive it, as on a real broker.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ports import LOOPBACK, free_port, wait_for_port

__all__ = ["RABBITMQ_SERVER", "RabbitNode", "rabbitmq_unavailable_reason", "start_rabbitmq"]

#: The server's start script in Debian's package (the /usr/sbin wrapper
#: would switch to the rabbitmq user and the system node's settings).
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"

#: Seconds the node may take to boot (about 3 on an idle machine).
START_TIMEOUT = 90.0


def _epmd() -> str | None:
    found = shutil.which("epmd")
    if found is not None:
        return found
    candidates = sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))
    return str(candidates[-1]) if candidates else None


def rabbitmq_unavailable_reason() -> str | None:
    """Why no node can be started here, or ``None``."""
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        return f"{RABBITMQ_SERVER} is missing (Debian package rabbitmq-server)"
    if _epmd() is None:
        return "epmd is missing (Debian package erlang-base)"
    return None


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM by PID, then SIGKILL to its process group (ours, started with it)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout)


@dataclass
class RabbitNode:
    """
    A running private RabbitMQ node.

    :ivar port: its AMQP port on 127.0.0.1.
    :ivar url: ``amqp://guest:guest@127.0.0.1:PORT/%2F`` (the guest user
        may log in from the loopback address only, which is all there is).
    :ivar base: its directory (data, logs, configuration, cookie).
    """

    base: Path
    port: int
    tls_port: int
    dist_port: int
    epmd_port: int
    nodename: str
    epmd: subprocess.Popen[bytes] = field(repr=False)
    server: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}/%2F"

    @property
    def ca_path(self) -> Path:
        """The PEM file of the CA that issued the TLS listener's certificate."""
        return self.base / "ca.pem"

    @property
    def tls_url(self) -> str:
        """``amqps://`` to the TLS listener, trusting :attr:`ca_path`."""
        return f"amqps://guest:guest@{LOOPBACK}:{self.tls_port}/%2F?cacertfile={self.ca_path}"

    def _environment(self) -> dict[str, str]:
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        base = str(self.base)
        env.update(
            HOME=base,
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=f"{base}/mnesia",
            RABBITMQ_LOG_BASE=f"{base}/log",
            RABBITMQ_CONFIG_FILE=f"{base}/rabbitmq.conf",
            RABBITMQ_ADVANCED_CONFIG_FILE=f"{base}/advanced.config",
            RABBITMQ_ENABLED_PLUGINS_FILE=f"{base}/enabled_plugins",
            RABBITMQ_CONF_ENV_FILE=f"{base}/rabbitmq-env.conf",
            RABBITMQ_PID_FILE=f"{base}/rabbitmq.pid",
            ERL_EPMD_ADDRESS=LOOPBACK,
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the node (again) on the same ports and data; wait until AMQP answers."""
        if self.server is not None and self.server.poll() is None:
            raise RuntimeError("the node is running already")
        log = open(self.base / "server.out", "ab")
        try:
            self.server = subprocess.Popen(
                [RABBITMQ_SERVER],
                env=self._environment(),
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            _wait_for_amqp(self.port, timeout, self.server)
        except BaseException:
            self.stop_server()
            raise

    def stop_server(self, timeout: float = 30.0) -> None:
        """Stop the node (its data stays); epmd keeps running."""
        if self.server is not None:
            _stop(self.server, timeout)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the node, stay down ``down_for`` seconds, start it again."""
        self.stop_server()
        time.sleep(down_for)
        self.start()

    def stop(self) -> None:
        """Stop the node and its epmd, and delete its directory."""
        try:
            self.stop_server()
        finally:
            _stop(self.epmd, 10.0)
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the node's console output, for failure messages."""
        try:
            text = (self.base / "server.out").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _wait_for_amqp(port: int, timeout: float, server: subprocess.Popen[bytes]) -> None:
    """
    Wait until the node speaks AMQP: the listener opens only once the node
    has booted, and it answers a protocol header with its own
    ``Connection.Start`` frame (type 1 method, class 10 method 10).
    """
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited with status {server.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2.0) as conn:
                conn.sendall(b"AMQP\x00\x00\x09\x01")
                frame = conn.recv(11)
                if frame[:1] == b"\x01" and frame[7:11] == b"\x00\x0a\x00\x0a":
                    return
                last = f"unexpected answer {frame!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    raise TimeoutError(f"RabbitMQ on port {port} did not answer within {timeout:.0f}s ({last})")


def start_rabbitmq(base: Path) -> RabbitNode:
    """
    Start epmd and a node in ``base`` (created; it should be short: Erlang
    and Unix sockets dislike long paths).
    """
    import trustme

    base.mkdir(parents=True, exist_ok=True)
    port, tls_port, dist_port, epmd_port = free_port(), free_port(), free_port(), free_port()
    ca = trustme.CA()
    issued = ca.issue_cert(LOOPBACK, "localhost")
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    issued.cert_chain_pems[0].write_to_path(str(base / "server.pem"))
    issued.private_key_pem.write_to_path(str(base / "server.key"))
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.1 = {LOOPBACK}:{port}\n"
        f"listeners.ssl.1 = {LOOPBACK}:{tls_port}\n"
        f"ssl_options.cacertfile = {base / 'ca.pem'}\n"
        f"ssl_options.certfile = {base / 'server.pem'}\n"
        f"ssl_options.keyfile = {base / 'server.key'}\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
        "loopback_users.guest = true\n"
        "log.console = true\n"
        "log.console.level = warning\n"
        "log.file = false\n"
        # The tests' messages are small; the machine's disk is shared.
        "disk_free_limit.absolute = 50MB\n"
    )
    (base / "advanced.config").write_text("[].\n")
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq-env.conf").write_text("")
    epmd_program = _epmd()
    assert epmd_program is not None
    env = {key: value for key, value in os.environ.items() if not key.startswith("ERL_")}
    env["ERL_EPMD_ADDRESS"] = LOOPBACK
    epmd = subprocess.Popen(
        [epmd_program, "-port", str(epmd_port), "-address", LOOPBACK],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    node = RabbitNode(
        base=base,
        port=port,
        tls_port=tls_port,
        dist_port=dist_port,
        epmd_port=epmd_port,
        nodename=f"smtpconn-{secrets.token_hex(4)}@localhost",
        epmd=epmd,
    )
    try:
        wait_for_port(LOOPBACK, epmd_port, 10.0)
        node.start()
    except BaseException:
        tail = node.log_tail()
        node.stop()
        if tail:
            raise RuntimeError(f"RabbitMQ did not start; its output ends:\n{tail}") from None
        raise
    return node
