"""
Real proxies as test peers: Dante (``danted``, SOCKS4a and SOCKS5) and
tinyproxy (HTTP CONNECT).

Each instance is a private process started here: its own configuration
file in a directory the caller owns, listening on 127.0.0.1:<free port>
only, allowing clients from 127.0.0.1 only, run in the foreground (so the
PID we hold is the daemon's own) and stopped by that PID.  The Debian
packages' system services are never used or touched.

Dante:

* ``socksmethod: none`` or ``socksmethod: username``; with ``username``
  Dante checks the RFC 1929 user name and password against the system's
  password database, so the fixture creates a dedicated system user
  (:func:`create_system_user`, as root) and removes it afterwards;
* ``blocked_port``: a ``socks block`` rule for 127.0.0.1 on that port, so
  that a test can see Dante refuse (reply 0x02, "connection not allowed by
  ruleset");
* ``log: connect`` on the pass rule: the log (stderr, kept in a file)
  names every tunnel it opened, so a test can prove that its connection
  went through the proxy.

tinyproxy:

* ``ConnectPort`` lines allow CONNECT to the listed ports only (tinyproxy
  answers anything else with ``403 Access violation``);
* ``BasicAuth user password``: tinyproxy then wants
  ``Proxy-Authorization`` (``407`` without it);
* the log (``LogLevel Connect``, to stderr, kept in a file) shows each
  CONNECT request line.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ports import LOOPBACK, free_port, wait_for_port

__all__ = [
    "DANTED",
    "ProxyProcess",
    "SystemUser",
    "create_system_user",
    "dante_unavailable_reason",
    "start_dante",
    "start_tinyproxy",
    "tinyproxy_unavailable_reason",
]

#: Where Debian's dante-server package installs the daemon.
DANTED = "/usr/sbin/danted"

#: How long a proxy may take to listen after it was started.
_STARTUP_TIMEOUT = 15.0


class ProxyStartError(RuntimeError):
    """The proxy did not come up; the message carries its log."""


def dante_unavailable_reason() -> str | None:
    """Why a private Dante cannot be started here, or ``None`` if it can."""
    if not os.access(DANTED, os.X_OK):
        return f"Dante is not installed ({DANTED}; apt-get install dante-server)"
    if os.geteuid() != 0:
        return "a private Dante has to be started as root (it changes to 'nobody' itself)"
    return None


def tinyproxy_unavailable_reason() -> str | None:
    """Why a private tinyproxy cannot be started here, or ``None`` if it can."""
    if shutil.which("tinyproxy") is None and not os.access("/usr/bin/tinyproxy", os.X_OK):
        return "tinyproxy is not installed (apt-get install tinyproxy)"
    return None


@dataclass
class ProxyProcess:
    """
    A running private proxy.

    :ivar name: ``"dante"`` or ``"tinyproxy"``.
    :ivar host: the address it listens on (127.0.0.1).
    :ivar port: the port it listens on.
    :ivar pid: the daemon's PID (its main process).
    :ivar log_path: where its stderr goes.
    :ivar blocked_port: Dante refuses CONNECT to 127.0.0.1 on this port.
    :ivar credentials: ``(user, password)`` the proxy wants, if any.
    """

    name: str
    host: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path = field(repr=False)
    blocked_port: int | None = None
    credentials: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Everything it logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def url(self, scheme: str, credentials: tuple[str, str] | None = None) -> str:
        """
        The ``proxy`` option for this proxy, e.g. ``url("socks5h")``, with
        ``credentials`` (default: the ones the proxy wants) percent-encoded.
        """
        from urllib.parse import quote

        credentials = credentials or self.credentials
        userinfo = f"{quote(credentials[0], safe='')}:{quote(credentials[1], safe='')}@" if credentials else ""
        return f"{scheme}://{userinfo}{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """
        SIGTERM to the daemon's PID, SIGKILL if it is still there after
        ``timeout``; then reap it.  Safe to call twice.
        """
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def _start(name: str, argv: Sequence[str], port: int, log_path: Path) -> ProxyProcess:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True
        )
    proxy = ProxyProcess(name=name, host=LOOPBACK, port=port, process=process, log_path=log_path)
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while True:
        if process.poll() is not None:
            raise ProxyStartError(f"{name} exited with {process.returncode} at start-up:\n{proxy.log()[-4000:]}")
        try:
            wait_for_port(LOOPBACK, port, timeout=min(0.5, max(deadline - time.monotonic(), 0.05)))
            return proxy
        except TimeoutError:
            if time.monotonic() >= deadline:
                proxy.stop()
                raise ProxyStartError(
                    f"{name} did not listen on {LOOPBACK}:{port} within {_STARTUP_TIMEOUT:g} s:\n"
                    f"{proxy.log()[-4000:]}"
                ) from None


# -- Dante ------------------------------------------------------------------------


def _dante_config(port: int, *, username_auth: bool, blocked_port: int | None) -> str:
    method = "username" if username_auth else "none"
    block = ""
    if blocked_port is not None:
        block = f"""
socks block {{
    from: 127.0.0.0/8 to: {LOOPBACK}/32 port = {blocked_port}
    log: error
}}
"""
    return f"""\
# A private test instance; nothing of /etc/danted.conf is used.
logoutput: stderr
internal: {LOOPBACK} port = {port}
external: {LOOPBACK}
clientmethod: none
socksmethod: {method}
# root to read /etc/shadow for socksmethod username; everything else as nobody.
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
    log: error
}}
{block}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    log: connect error
}}
"""


def start_dante(
    directory: Path, *, username_auth: bool = False, blocked_port: int | None = None, attempts: int = 3
) -> ProxyProcess:
    """
    Start a private Dante on 127.0.0.1 for clients on 127.0.0.1, relaying
    TCP to 127.0.0.0/8 only.

    :param directory: holds the configuration file and the log.
    :param username_auth: require RFC 1929 username/password (checked
        against system users) instead of no authentication.
    :param blocked_port: refuse CONNECT to 127.0.0.1 on this port.
    :param attempts: how many free ports to try if binding loses a race.
    """
    last: ProxyStartError | None = None
    for _attempt in range(attempts):
        port = free_port()
        config = directory / f"danted-{port}.conf"
        config.write_text(_dante_config(port, username_auth=username_auth, blocked_port=blocked_port))
        try:
            # -N 1: one mother process is plenty for tests; no -D, so danted
            # stays in the foreground and its PID is ours to stop.
            proxy = _start("dante", [DANTED, "-f", str(config), "-N", "1"], port, directory / f"danted-{port}.log")
            proxy.blocked_port = blocked_port
            return proxy
        except ProxyStartError as error:
            last = error
    assert last is not None
    raise last


@dataclass(frozen=True)
class SystemUser:
    """A system user made for Dante's username check; ``remove()`` deletes it."""

    name: str
    password: str = field(repr=False)

    def remove(self) -> None:
        subprocess.run(["userdel", self.name], capture_output=True, timeout=30, check=False)


def create_system_user(prefix: str = "smtpconn-px") -> SystemUser:
    """
    Create a system user with no home and no login shell and a random
    password (as root), for Dante's ``socksmethod: username``.
    """
    name = f"{prefix}{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    try:
        pwd.getpwnam(name)
    except KeyError:
        pass
    else:
        raise RuntimeError(f"the system user {name} exists already")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        timeout=30,
        check=True,
    )
    user = SystemUser(name, password)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), capture_output=True, timeout=30, check=True)
    except BaseException:
        user.remove()
        raise
    return user


# -- tinyproxy ----------------------------------------------------------------------


def _tinyproxy_config(port: int, connect_ports: Sequence[int], basic_auth: tuple[str, str] | None) -> str:
    lines = ["# A private test instance; nothing of /etc/tinyproxy is used."]
    if os.geteuid() == 0:
        # As root tinyproxy changes to this user; as anybody else it cannot.
        lines += ["User nobody", "Group nogroup"]
    lines += [
        f"Port {port}",
        f"Listen {LOOPBACK}",
        "Timeout 60",
        f"Allow {LOOPBACK}",
        "MaxClients 20",
        "LogLevel Connect",
        # No Via header: nothing is added to the tunnel's bytes anyway, but
        # the refusal pages stay short.
        "DisableViaHeader Yes",
    ]
    lines += [f"ConnectPort {connect_port}" for connect_port in connect_ports]
    if basic_auth is not None:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    return "\n".join(lines) + "\n"


def start_tinyproxy(
    directory: Path,
    *,
    connect_ports: Sequence[int],
    basic_auth: tuple[str, str] | None = None,
    attempts: int = 3,
) -> ProxyProcess:
    """
    Start a private tinyproxy on 127.0.0.1 for clients on 127.0.0.1.

    :param directory: holds the configuration file and the log.
    :param connect_ports: the only ports CONNECT may reach (at least one:
        without ``ConnectPort`` lines tinyproxy would allow every port).
    :param basic_auth: ``(user, password)`` to require.
    :param attempts: how many free ports to try if binding loses a race.
    """
    if not connect_ports:
        raise ValueError("give at least one ConnectPort")
    program = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    last: ProxyStartError | None = None
    for _attempt in range(attempts):
        port = free_port()
        config = directory / f"tinyproxy-{port}.conf"
        config.write_text(_tinyproxy_config(port, connect_ports, basic_auth))
        try:
            # -d: stay in the foreground (and log to stderr).
            proxy = _start("tinyproxy", [program, "-d", "-c", str(config)], port, directory / f"tinyproxy-{port}.log")
            proxy.credentials = basic_auth
            return proxy
        except ProxyStartError as error:
            last = error
    assert last is not None
    raise last
