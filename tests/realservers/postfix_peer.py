"""
A private Postfix instance, and Postfix's ``smtp-sink``, as test peers.

Postfix is the reference MTA the client must interoperate with.  Each
instance started here has its own ``config_directory``, ``queue_directory``
and ``data_directory`` under a directory the caller owns, listens only on
127.0.0.1:<free port>, and relays everything it accepts to a loopback
recorder (an aiosmtpd peer), so a test can compare the bytes that arrived
with the bytes it sent.  ``/etc/postfix`` and the system instance are never
touched: every command gets ``-c <private config dir>``.

The configuration makes Postfix change nothing in transit except adding its
own ``Received:`` header; :func:`strip_postfix_received` removes exactly
that header again.  The settings that matter, and why:

* ``local_header_rewrite_clients =`` (empty): by default Postfix rewrites
  addresses in headers, and adds missing ``From:``/``Date:``/
  ``Message-ID:``, for clients on its own interfaces, which includes ours;
* ``message_drop_headers =`` (empty): by default it deletes ``Bcc:``,
  ``Content-Length:``, ``Resent-Bcc:`` and ``Return-Path:``;
* ``disable_mime_output_conversion = yes``: never re-encode 8-bit bodies;
* ``smtp_line_length_limit = 0``: by default the relay client folds lines
  longer than 998 octets;
* ``smtpd_error_sleep_time = 0``, ``in_flow_delay = 0``: no deliberate
  pauses after rejected commands or under load, which would only slow the
  tests.

Postfix refuses to start unless the private directories have the owners
it expects (we run as root; the daemons drop to the ``postfix`` user), and
every directory above them must be searchable by that user.  Unix-domain
socket paths (``<queue>/private/<service>``) must stay under ~100 bytes, so
keep the base directory short (the fixtures use ``/tmp/smtpconn-pf-XXXX``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .aiosmtpd_peer import AiosmtpdServer, MessageRecorder, start_aiosmtpd
from .ports import LOOPBACK, free_port, wait_for_port

__all__ = [
    "DEFAULT_MESSAGE_SIZE_LIMIT",
    "POSTFIX_HOSTNAME",
    "PostfixInstance",
    "PostfixRelay",
    "PostfixStartError",
    "SmtpSink",
    "postfix_unavailable_reason",
    "smtp_sink_path",
    "base_main_cf",
    "start_postfix",
    "start_postfix_relay",
    "start_smtp_sink",
    "strip_postfix_received",
]

#: ``myhostname`` of every private instance; it appears in the greeting,
#: the EHLO reply and the ``Received:`` header Postfix adds.
POSTFIX_HOSTNAME = "postfix.smtpconn.test"

#: ``message_size_limit`` of the default instance: 10 MiB.  Postfix counts
#: the queue file (message plus envelope records and its own Received
#: header), so a message a few hundred bytes under the limit may already be
#: refused.
DEFAULT_MESSAGE_SIZE_LIMIT = 10 * 1024 * 1024

#: Where Debian's postfix package installs the programs used here.
_SBIN_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin")

#: Longest Unix-domain socket path the daemons will create, minus margin.
_MAX_SOCKET_PATH = 100

#: The daemons of Debian's master.cf, minus the pipe(8) examples; chroot off
#: (a chroot would need copies of /etc files in the queue directory).
_MASTER_CF_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

#: Recipient rules (regexp map; patterns are case-insensitive).
_RECIPIENT_ACCESS = """\
/^reject[^@]*@/     550 5.1.1 test rule: local part starts with "reject"
/^tempfail[^@]*@/   451 4.3.0 test rule: local part starts with "tempfail"
"""

#: Sender rule, the same as the aiosmtpd peer's.
_SENDER_ACCESS = """\
/^bad-sender@/      553 5.7.1 test rule: sender is bad-sender
"""


class PostfixStartError(RuntimeError):
    """
    The private Postfix did not come up; the message carries its log.
    """


def _find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def postfix_unavailable_reason() -> str | None:
    """
    Say why a private Postfix cannot be started here, or ``None`` if it can.

    Checked: the ``postfix``, ``postconf`` programs and the ``master``
    daemon exist, the ``postfix`` user exists, and we are root (Postfix
    daemons start as root and drop privileges).
    """
    for program in ("postfix", "postconf"):
        if _find_program(program) is None:
            return f"the Postfix program {program!r} is not installed (apt-get install postfix)"
    if not os.access("/usr/lib/postfix/sbin/master", os.X_OK) and _find_program("master") is None:
        return "the Postfix master daemon is not installed (apt-get install postfix)"
    try:
        import pwd

        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no 'postfix' user (the postfix package was not configured)"
    if os.geteuid() != 0:
        return "a private Postfix instance has to be started as root"
    return None


def smtp_sink_path() -> str | None:
    """
    Path of Postfix's ``smtp-sink`` test server (Debian:
    ``/usr/sbin/smtp-sink``), or ``None`` when it is not installed.
    """
    return _find_program("smtp-sink")


@dataclass(frozen=True)
class PostfixInstance:
    """
    A running private Postfix.

    :ivar base_dir: the directory holding everything of this instance.
    :ivar config_dir: its ``config_directory`` (``main.cf``, ``master.cf``).
    :ivar queue_dir: its ``queue_directory``.
    :ivar host: the address smtpd listens on (always ``127.0.0.1``).
    :ivar port: the port smtpd listens on.
    :ivar relay_port: where it relays everything it accepts (127.0.0.1).
    :ivar master_pid: PID of this instance's master daemon.
    :ivar myhostname: its ``myhostname``.
    :ivar message_size_limit: its ``message_size_limit`` in bytes.
    :ivar maillog_path: its log file.
    """

    base_dir: Path
    config_dir: Path
    queue_dir: Path
    host: str
    port: int
    relay_port: int
    master_pid: int
    myhostname: str
    message_size_limit: int
    maillog_path: Path = field(repr=False)

    def maillog(self) -> str:
        """
        The instance's log so far (empty if there is none yet).
        """
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def postconf(self, name: str) -> str:
        """
        The effective value of a main.cf parameter of this instance.
        """
        return _run(["postconf", "-c", str(self.config_dir), "-h", name], timeout=20).strip()

    def flush_queue(self) -> None:
        """
        Ask for an immediate delivery attempt of deferred mail
        (``postqueue -f``), e.g. after a test made the relay fail.
        """
        _run(["postqueue", "-c", str(self.config_dir), "-f"], timeout=20)

    def is_running(self) -> bool:
        """
        Whether the master daemon of this instance is still alive.
        """
        return _alive(self.master_pid)

    def stop(self, timeout: float = 15.0) -> None:
        """
        Stop exactly this instance: ``postfix -c <dir> stop``, then SIGKILL
        to its master PID if it is still there.  Safe to call twice.
        """
        if not _alive(self.master_pid):
            return
        try:
            subprocess.run(
                [_require_program("postfix"), "-c", str(self.config_dir), "stop"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout
        while _alive(self.master_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(self.master_pid):
            try:
                os.kill(self.master_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _require_program(name: str) -> str:
    path = _find_program(name)
    if path is None:
        raise PostfixStartError(f"{name} is not installed")
    return path


def _run(argv: Sequence[str], timeout: float) -> str:
    program = _require_program(argv[0])
    completed = subprocess.run(
        [program, *argv[1:]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise PostfixStartError(
            f"{' '.join(argv)} exited with {completed.returncode}: "
            f"{completed.stderr.strip() or completed.stdout.strip()}"
        )
    return completed.stdout


def _alive(pid: int) -> bool:
    """
    Whether ``pid`` is a live (not zombie) process.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat_file:
            state = stat_file.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in {"Z", "X"}


def _check_base_dir(base: Path) -> None:
    """
    Refuse directories the postfix user could not reach, or whose socket
    paths would be too long, with a message that says what to do instead.
    """
    socket_path = base / "spool" / "private" / "proxywrite"
    if len(os.fsencode(str(socket_path))) > _MAX_SOCKET_PATH:
        raise ValueError(
            f"{base} is too long for Postfix's Unix-domain sockets "
            f"({socket_path} exceeds {_MAX_SOCKET_PATH} bytes); use a short "
            "directory such as tempfile.mkdtemp(prefix='smtpconn-pf-', dir='/tmp')"
        )
    for ancestor in [base, *base.parents]:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise ValueError(
                f"{ancestor} is not searchable by the postfix user (mode "
                f"{stat.S_IMODE(mode):o}); Postfix daemons could not reach "
                f"{base}. Use a directory under /tmp made with tempfile.mkdtemp()."
            )


def _render_main_cf(settings: Mapping[str, str]) -> str:
    lines = ["# Written by tests/realservers/postfix_peer.py for one test run."]
    for name, value in settings.items():
        if "\n" in value:
            raise ValueError(f"main.cf value of {name} contains a newline")
        lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n"


def base_main_cf(base: Path, relay_port: int, message_size_limit: int) -> dict[str, str]:
    """
    The main.cf settings of a private instance, before the caller's
    overrides.  Exposed so a test can see what the defaults are.
    """
    config = base / "etc"
    return {
        "compatibility_level": "3.6",
        "config_directory": str(config),
        "queue_directory": str(base / "spool"),
        "data_directory": str(base / "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "maillog_file": str(base / "maillog"),
        "maillog_file_prefixes": str(base),
        "myhostname": POSTFIX_HOSTNAME,
        "mydomain": "smtpconn.test",
        "myorigin": "$myhostname",
        "mydestination": "",
        "relay_domains": "",
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "inet_interfaces": LOOPBACK,
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "relayhost": f"[{LOOPBACK}]:{relay_port}",
        "smtp_host_lookup": "native",
        "lmtp_host_lookup": "native",
        "smtp_dns_support_level": "disabled",
        "smtpd_peername_lookup": "no",
        "smtpd_banner": "$myhostname ESMTP Postfix",
        "biff": "no",
        "append_dot_mydomain": "no",
        "append_at_myorigin": "no",
        "local_header_rewrite_clients": "",
        "remote_header_rewrite_domain": "",
        "always_add_missing_headers": "no",
        "message_drop_headers": "",
        "disable_mime_output_conversion": "yes",
        "smtp_line_length_limit": "0",
        "smtputf8_enable": "yes",
        "message_size_limit": str(message_size_limit),
        "mailbox_size_limit": "0",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        # Sender rules answer MAIL itself, as aiosmtpd does, not the first RCPT.
        "smtpd_delay_reject": "no",
        "smtpd_sender_restrictions": f"check_sender_access regexp:{config / 'sender_access'}",
        "smtpd_recipient_restrictions": (
            f"check_recipient_access regexp:{config / 'recipient_access'}, permit_mynetworks, reject"
        ),
        "smtpd_error_sleep_time": "0",
        "smtpd_soft_error_limit": "100",
        "smtpd_hard_error_limit": "100",
        "in_flow_delay": "0",
        "smtp_tls_security_level": "none",
        "smtp_connect_timeout": "5s",
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "notify_classes": "",
    }


def start_postfix(
    tmpdir: Path | str,
    relay_port: int,
    main_cf: Mapping[str, str] | None = None,
    master_cf_extra: str = "",
    *,
    smtpd_port: int | None = None,
    message_size_limit: int = DEFAULT_MESSAGE_SIZE_LIMIT,
    startup_timeout: float = 30.0,
) -> PostfixInstance:
    """
    Configure and start a private Postfix in ``tmpdir``.

    :param tmpdir: an empty (or new) directory, short and reachable by the
        postfix user (see the module docstring); it is made mode 0755.
    :param relay_port: port on 127.0.0.1 to relay all accepted mail to.
    :param main_cf: extra or overriding main.cf settings, e.g.
        ``{"smtpd_tls_security_level": "may", "smtpd_tls_chain_files": ...}``.
        A value of ``None`` is not allowed; use ``""`` for "empty".
    :param master_cf_extra: lines appended to master.cf, e.g. a second
        smtpd service with ``-o smtpd_tls_wrappermode=yes`` on another port.
    :param smtpd_port: port for the main smtpd (default: a free one).
    :param message_size_limit: ``message_size_limit`` (overridable through
        ``main_cf`` as well).
    :param startup_timeout: bound on start-up plus the wait for the 220
        greeting.
    :return: the running instance.
    :raises PostfixStartError: when it does not come up; the message holds
        the tail of the instance's maillog.
    """
    reason = postfix_unavailable_reason()
    if reason is not None:
        raise PostfixStartError(reason)
    base = Path(tmpdir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    _check_base_dir(base)
    config_dir = base / "etc"
    queue_dir = base / "spool"
    data_dir = base / "data"
    for directory in (config_dir, queue_dir, data_dir):
        directory.mkdir(exist_ok=True)
        directory.chmod(0o755)
    # postfix-script checks: queue and config owned by root, data by postfix.
    shutil.chown(data_dir, user="postfix", group="postfix")
    data_dir.chmod(0o700)

    port = smtpd_port if smtpd_port is not None else free_port(LOOPBACK)
    settings = base_main_cf(base, relay_port, message_size_limit)
    settings.update(main_cf or {})
    effective_limit = int(settings["message_size_limit"])
    (config_dir / "main.cf").write_text(_render_main_cf(settings))
    (config_dir / "master.cf").write_text(
        f"{LOOPBACK}:{port} inet n - n - - smtpd\n" + _MASTER_CF_SERVICES + master_cf_extra.rstrip("\n") + "\n"
    )
    (config_dir / "recipient_access").write_text(_RECIPIENT_ACCESS)
    (config_dir / "sender_access").write_text(_SENDER_ACCESS)
    maillog = base / "maillog"

    def failure(summary: str) -> PostfixStartError:
        log_lines = _tail(maillog, 80)
        start_log = _tail(base / "postfix-start.log", 40)
        return PostfixStartError(
            f"{summary}\n--- {maillog} (last lines) ---\n{log_lines or '(empty)'}"
            f"\n--- postfix start output ---\n{start_log or '(empty)'}"
        )

    # "postfix start" runs master -w, which detaches and reports whether
    # initialisation worked.  Its output goes to a file, not a pipe: the
    # daemon inherits the descriptors, and a pipe would keep us waiting.
    with open(base / "postfix-start.log", "wb") as start_log_file:
        try:
            started = subprocess.run(
                [_require_program("postfix"), "-c", str(config_dir), "start"],
                stdin=subprocess.DEVNULL,
                stdout=start_log_file,
                stderr=subprocess.STDOUT,
                timeout=startup_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            _kill_from_pid_file(queue_dir)
            raise failure(f"postfix start did not finish within {startup_timeout:.0f}s") from None
    if started.returncode != 0:
        _kill_from_pid_file(queue_dir)
        raise failure(f"postfix -c {config_dir} start exited with {started.returncode}")
    master_pid = _read_pid(queue_dir)
    if master_pid is None:
        raise failure(f"postfix started but {queue_dir}/pid/master.pid is missing")
    instance = PostfixInstance(
        base_dir=base,
        config_dir=config_dir,
        queue_dir=queue_dir,
        host=LOOPBACK,
        port=port,
        relay_port=relay_port,
        master_pid=master_pid,
        myhostname=settings["myhostname"],
        message_size_limit=effective_limit,
        maillog_path=maillog,
    )
    try:
        wait_for_port(LOOPBACK, port, startup_timeout, expect_banner=b"220")
    except TimeoutError as error:
        instance.stop()
        raise failure(f"private Postfix did not greet on {LOOPBACK}:{port}: {error}") from None
    return instance


def _read_pid(queue_dir: Path) -> int | None:
    try:
        text = (queue_dir / "pid" / "master.pid").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _kill_from_pid_file(queue_dir: Path) -> None:
    pid = _read_pid(queue_dir)
    if pid is not None and _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_RECEIVED_BY_POSTFIX = re.compile(rb"\bby\s+(\S+)\s+\(Postfix\)", re.IGNORECASE)


def strip_postfix_received(content: bytes, myhostname: str = POSTFIX_HOSTNAME, *, count: int = 1) -> bytes:
    """
    Remove the ``Received:`` header field(s) Postfix added at the top.

    Only leading fields that say ``by <myhostname> (Postfix)`` are removed
    (with their folded continuation lines), so a ``Received:`` the test
    itself wrote stays and is compared like any other header.

    :param content: the message as the relay recorder received it.
    :param myhostname: the instance's ``myhostname``.
    :param count: how many such fields must be there (one per Postfix hop).
    :return: the message as the client sent it, if Postfix changed nothing
        else.
    :raises AssertionError: when fewer than ``count`` leading Received
        fields by that host are found.
    """
    remaining = content
    for number in range(count):
        field_bytes, rest = _first_header_field(remaining)
        if field_bytes is None or not field_bytes.lower().startswith(b"received:"):
            raise AssertionError(
                f"expected Postfix Received header #{number + 1} at the top, found {remaining[:200]!r}"
            )
        by = _RECEIVED_BY_POSTFIX.search(field_bytes)
        if by is None or by.group(1).decode("ascii", "replace").lower() != myhostname.lower():
            raise AssertionError(f"Received header is not by {myhostname} (Postfix): {field_bytes!r}")
        remaining = rest
    return remaining


def _first_header_field(content: bytes) -> tuple[bytes | None, bytes]:
    """
    Split the first header field (with continuation lines) off ``content``.
    """
    if not content or content.startswith((b"\r\n", b"\n")):
        return None, content
    end = 0
    while True:
        newline = content.find(b"\n", end)
        if newline < 0:
            return content, b""
        end = newline + 1
        if end >= len(content) or content[end : end + 1] not in (b" ", b"\t"):
            return content[:end], content[end:]


@dataclass(frozen=True)
class SmtpSink:
    """
    A running ``smtp-sink`` (a fast SMTP server that discards mail; for
    benchmarks).

    :ivar host: listening address.
    :ivar port: listening port.
    :ivar pid: its process id.
    :ivar process: the ``subprocess.Popen`` handle.
    """

    host: str
    port: int
    pid: int
    process: subprocess.Popen[bytes] = field(compare=False, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """
        Stop this smtp-sink by its PID (SIGTERM, then SIGKILL) and reap it.
        """
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def start_smtp_sink(
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    args: Sequence[str] = (),
    backlog: int = 256,
    startup_timeout: float = 10.0,
) -> SmtpSink:
    """
    Start ``smtp-sink`` on a free loopback port.

    :param host: listening address.
    :param port: listening port (default: a free one).
    :param args: extra smtp-sink options, e.g. ``["-L"]`` for LMTP,
        ``["-c"]`` for counters, ``["-p"]`` to not offer PIPELINING.
    :param backlog: listen backlog (smtp-sink's required argument).
    :param startup_timeout: bound on the wait for its 220 greeting.
    :raises PostfixStartError: when smtp-sink is missing or does not answer.
    """
    program = smtp_sink_path()
    if program is None:
        raise PostfixStartError("smtp-sink is not installed (it is part of the postfix package)")
    chosen = port if port is not None else free_port(host)
    argv = [program]
    if os.geteuid() == 0:
        argv += ["-u", "postfix"]  # required when started as root
    argv += [*args, f"{host}:{chosen}", str(backlog)]
    # stderr goes to an unnamed file: read only if start-up fails, and it
    # can never fill up and block smtp-sink the way an unread pipe would.
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        sink = SmtpSink(host=host, port=chosen, pid=process.pid, process=process)
        try:
            wait_for_port(host, chosen, startup_timeout, expect_banner=b"220")
        except TimeoutError as error:
            sink.stop()
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
            raise PostfixStartError(f"smtp-sink did not answer: {error}; stderr: {stderr}") from None
    return sink


@dataclass(frozen=True)
class PostfixRelay:
    """
    A private Postfix together with the aiosmtpd recorder it relays to.

    Send to ``host:port`` (Postfix); read what was delivered from
    ``recorder``.  Postfix delivers asynchronously, so wait with
    ``recorder.when_match(...)`` (Twisted tests) or
    ``recorder.wait_for_match(...)`` (blocking code), and pick your message by
    something unique in it: the recorder is shared by every test that uses
    the session instance, and it also records Postfix's own bounce messages.

    :ivar postfix: the Postfix instance.
    :ivar relay: the aiosmtpd peer Postfix relays to (it accepts DSN, so the
        DSN parameters the client gave arrive too).
    """

    postfix: PostfixInstance
    relay: AiosmtpdServer

    @property
    def host(self) -> str:
        """Address of Postfix's smtpd."""
        return self.postfix.host

    @property
    def port(self) -> int:
        """Port of Postfix's smtpd."""
        return self.postfix.port

    @property
    def recorder(self) -> MessageRecorder:
        """What the relay received from Postfix."""
        return self.relay.recorder

    def strip_received(self, content: bytes) -> bytes:
        """
        :func:`strip_postfix_received` for this instance's host name.
        """
        return strip_postfix_received(content, self.postfix.myhostname)

    def stop(self) -> None:
        """Stop Postfix, then the relay."""
        try:
            self.postfix.stop()
        finally:
            self.relay.stop()


def start_postfix_relay(
    tmpdir: Path | str,
    main_cf: Mapping[str, str] | None = None,
    master_cf_extra: str = "",
    *,
    message_size_limit: int = DEFAULT_MESSAGE_SIZE_LIMIT,
    startup_timeout: float = 30.0,
) -> PostfixRelay:
    """
    Start a relay recorder and a private Postfix that relays to it.

    The recorder accepts DSN and lines and messages far larger than Postfix
    accepts, so that whatever Postfix takes also reaches it unchanged.
    Parameters are those of :func:`start_postfix`.
    """
    limit = int((main_cf or {}).get("message_size_limit", message_size_limit))
    relay = start_aiosmtpd(
        accept_dsn=True,
        data_size_limit=max(2 * limit, 64 * 1024 * 1024),
        line_length_limit=limit + 4096,
        server_hostname="relay.smtpconn.test",
    )
    try:
        instance = start_postfix(
            tmpdir,
            relay.port,
            main_cf,
            master_cf_extra,
            message_size_limit=message_size_limit,
            startup_timeout=startup_timeout,
        )
    except BaseException:
        relay.stop()
        raise
    return PostfixRelay(postfix=instance, relay=relay)
