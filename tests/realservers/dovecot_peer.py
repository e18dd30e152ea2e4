"""
A private Dovecot *authentication service* as the SASL backend of the
private Postfix (``smtpd_sasl_type = dovecot``).

Only Dovecot's auth service runs: no IMAP or POP3 (``protocols =`` empty),
no TLS, users from a ``passwd-file`` with ``{PLAIN}`` passwords (so that
CRAM-MD5 and SCRAM, which need the plain password or its own verifier, work
too).  Everything lives in a directory the caller gives (``base_dir``,
``state_dir``, the log, the users file), the instance has its own name, and
the process is started and stopped by its PID, so that the test run never
touches a system Dovecot.

Dovecot's auth process runs as root here: the directory is normally under
pytest's ``tmp_path``, whose parent is private to root, where the default
``dovecot`` user could not read the users file.  The client socket for
Postfix is created where the caller says (``socket_path``), with mode 0666,
so that Postfix's ``smtpd`` (user ``postfix``) can connect when it can reach
the directory.

Usage::

    peer = start_dovecot_auth(tmp_path / "dovecot", {"alice": "secret"},
                              socket_path=queue_dir / "private" / "auth")
    try:
        ...  # main.cf: smtpd_sasl_type = dovecot, smtpd_sasl_path = <socket_path>
    finally:
        peer.stop()
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MECHANISMS",
    "DovecotAuthPeer",
    "dovecot_available",
    "start_dovecot_auth",
]

#: The SASL mechanisms the peer offers by default.
DEFAULT_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256")

_DOVECOT = "dovecot"

#: Instances started by this process get distinct names (pid + counter in
#: the directory name is enough; the name only has to differ from any
#: system instance and from each other).
_INSTANCE_PREFIX = "smtpconn-test"


def dovecot_available() -> bool:
    """Whether the ``dovecot`` binary (Debian's dovecot-core) is installed."""
    return shutil.which(_DOVECOT) is not None or Path("/usr/sbin/dovecot").exists()


def _binary() -> str:
    found = shutil.which(_DOVECOT)
    return found if found is not None else "/usr/sbin/dovecot"


def _check_field(what: str, value: str) -> str:
    if not value or any(c in value for c in ":\r\n\t\x00"):
        raise ValueError(f"a passwd-file {what} must be non-empty without ':', tabs or line breaks")
    return value


@dataclass
class DovecotAuthPeer:
    """
    A running Dovecot auth service.

    :ivar directory: where its configuration, state, users file and log are.
    :ivar socket_path: the auth client socket (for Postfix's
        ``smtpd_sasl_path``).
    :ivar mechanisms: the mechanisms it offers.
    :ivar process: the Dovecot master process (``dovecot -F``).
    """

    directory: Path
    socket_path: Path
    mechanisms: tuple[str, ...]
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """The PID of the Dovecot master process."""
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.directory / "dovecot.log"

    def log_text(self) -> str:
        """Dovecot's log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def check(self, user: str, password: str, timeout: float = 10.0) -> bool:
        """
        Ask the auth service directly (Dovecot's auth client protocol,
        mechanism PLAIN) whether ``user``/``password`` is accepted: a
        self-test that needs no SMTP server.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(self.socket_path))
            conn.sendall(f"VERSION\t1\t1\nCPID\t{os.getpid()}\n".encode())
            handshake = _read_until(conn, b"DONE\n", timeout)
            if b"VERSION\t1\t" not in handshake:
                raise RuntimeError(f"unexpected Dovecot auth handshake: {handshake[:200]!r}")
            response = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            conn.sendall(f"AUTH\t1\tPLAIN\tservice=smtp\tresp={response}\n".encode())
            answer = _read_until(conn, b"\n", timeout)
        return answer.startswith(b"OK\t1")

    def stop(self, timeout: float = 10.0) -> None:
        """
        Stop Dovecot: SIGTERM to the master (which ends its children), then
        SIGKILL to the master if it has not exited in ``timeout`` seconds.
        Only the process this peer started is signalled.
        """
        if self.process.poll() is not None:
            return
        try:
            os.kill(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


def _read_until(conn: socket.socket, marker: bytes, timeout: float) -> bytes:
    """Read until ``marker`` arrives, the peer closes, or ``timeout`` passes (bounded)."""
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data and len(data) < 65536:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        conn.settimeout(remaining)
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _config(directory: Path, socket_path: Path, mechanisms: Sequence[str]) -> str:
    return f"""\
# A private Dovecot: the auth service only, for a test Postfix.
base_dir = {directory / "run"}
state_dir = {directory / "state"}
instance_name = {_INSTANCE_PREFIX}-{os.getpid()}-{directory.name}
protocols =
ssl = no
log_path = {directory / "dovecot.log"}
auth_mechanisms = {" ".join(m.lower() for m in mechanisms)}
disable_plaintext_auth = no
auth_verbose = yes
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {directory / "users"}
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
# No growing delay after failed logins from one address (Dovecot's "auth
# penalty"): the tests fail on purpose, and all come from 127.0.0.1.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service auth {{
  user = root
  unix_listener {socket_path} {{
    mode = 0666
  }}
}}
"""


def start_dovecot_auth(
    directory: Path,
    users: Mapping[str, str],
    *,
    socket_path: Path | None = None,
    mechanisms: Sequence[str] = DEFAULT_MECHANISMS,
    timeout: float = 20.0,
) -> DovecotAuthPeer:
    """
    Start a private Dovecot auth service and wait until it answers.

    :param directory: a new or empty directory for this instance.
    :param users: user name -> password.
    :param socket_path: where the auth client socket goes (its directory
        must exist); default ``directory / "auth-client"``.
    :param mechanisms: the SASL mechanisms to offer.
    :param timeout: how long to wait for the service to come up.
    :raises RuntimeError: Dovecot is not installed, exited, or did not
        answer in time (with its log in the message).
    """
    if not dovecot_available():
        raise RuntimeError("dovecot is not installed (Debian package dovecot-core)")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state").mkdir(exist_ok=True)
    socket_path = Path(socket_path) if socket_path is not None else directory / "auth-client"
    lines = [f"{_check_field('user', user)}:{{PLAIN}}{_check_field('password', password)}\n"
             for user, password in users.items()]
    users_file = directory / "users"
    users_file.write_text("".join(lines))
    users_file.chmod(0o600)
    config = directory / "dovecot.conf"
    config.write_text(_config(directory, socket_path, mechanisms))
    with open(directory / "stdout.log", "wb") as output:
        # The child keeps its own copy of the descriptor.
        process = subprocess.Popen(
            [_binary(), "-F", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    peer = DovecotAuthPeer(directory, socket_path, tuple(m.upper() for m in mechanisms), process)
    deadline = time.monotonic() + timeout
    problem = "the socket did not appear"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = (directory / "stdout.log").read_text(errors="replace")
            raise RuntimeError(f"dovecot exited with {process.returncode}: {output}\n{peer.log_text()}")
        if socket_path.exists():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(2.0)
                    probe.connect(str(socket_path))
                    probe.sendall(f"VERSION\t1\t1\nCPID\t{os.getpid()}\n".encode())
                    if b"DONE\n" in _read_until(probe, b"DONE\n", 2.0):
                        return peer
                    problem = "no handshake on the socket"
            except OSError as error:
                problem = repr(error)
        time.sleep(0.05)
    peer.stop()
    raise RuntimeError(f"dovecot's auth service did not answer within {timeout:g} s ({problem})\n{peer.log_text()}")
