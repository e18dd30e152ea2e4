"""
The faces of ``smtpsend``: its command-line options, shared by
``python -m twisted_smtpconn`` and ``twistd -n --pidfile= smtpsend``, and
the twistd service.

Parsing turns text into values and checks what concerns the flags alone:
which ways of saying what to send were combined, an address flag with a
comma in it, a ``--header`` that is not ``Name: value``.  Everything a
script may also say (ports, timeouts, limits, TLS settings, DSN values) is
checked once, after the merge with the script, in :mod:`._settings` and
:mod:`._messages`.  Options that may also come from a script default to
``None`` here, so that the merge can tell "not given" from "given as the
default".

twistd has no way for a service to choose the process exit status: after
the reactor stops, ``twistd`` returns normally and the interpreter exits
with 0.  So the service

1. runs :func:`._run.main` once the reactor is running, with a console that
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
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from ._messages import parse_header
from ._output import EX_SOFTWARE, EX_USAGE, LoggerConsole

__all__ = ["EnqueueOptions", "Options", "QUIT_AFTER_STAGES", "SendOptions", "SendService", "makeService", "package_version"]

#: ``--quit-after`` stages, in the order a session goes through them.
QUIT_AFTER_STAGES = ("connect", "greeting", "ehlo", "tls", "auth", "mail", "rcpt")


def package_version() -> str:
    """This package's version, as installed."""
    try:
        return version("twisted_smtpconn")
    except PackageNotFoundError:  # pragma: no cover - run from a bare source tree
        return "unknown (not installed)"


def _number(kind: type[int] | type[float], flag: str) -> Any:
    """A parser for a numeric flag whose error names the flag (ranges: ``_settings``)."""

    def parse(value: str) -> int | float:
        try:
            return kind(value)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"--{flag} must be {what}, not {value!r}") from None

    return parse


def _quit_after(value: str) -> str:
    stage = value.strip().lower()
    if stage not in QUIT_AFTER_STAGES:
        raise ValueError(f"--quit-after takes one of {', '.join(QUIT_AFTER_STAGES)}, not {value!r}")
    return stage


class SendOptions(usage.Options):
    """
    Options of ``smtpsend``.

    After parsing, ``self["to"]``, ``["cc"]``, ``["bcc"]`` and
    ``["attach"]`` are lists, ``self["header"]`` a list of ``(name, value)``,
    and ``self["password-file"]``/``self["password-env"]`` say where the
    password is; it is read later, never from argv.
    """

    synopsis = "Usage: python -m twisted_smtpconn [options]"

    #: ``enqueue``: the options describe mail to put on a queue.
    producer = False
    longdesc = (
        "Send mail through twisted_smtpconn.  With no --host (and no host in "
        "the script), a local capture server is started on 127.0.0.1 and the "
        "messages go to it through STARTTLS and AUTH, then land in a Maildir "
        "whose path is printed.  Exit status: 0 all accepted, 64 usage, "
        "65 message/envelope refused, 69 server refused or unavailable, "
        "75 temporary failure."
    )

    optParameters: list[list[Any]] = [
        # Where to connect (default: the embedded capture server).
        ["host", "s", None, "SMTP server host name or address (default: embedded server)."],
        ["port", "p", None, "Server port (default 465 with --secure, else 25).", _number(int, "port")],
        ["unix-socket", None, None, "Connect to this UNIX socket instead of TCP (e.g. --lmtp to a delivery agent)."],
        ["proxy", None, None, "Tunnel through a proxy: socks5://, socks5h://, socks4a:// or http:// [user:pass@]host:port."],
        ["name", None, None, "EHLO/LHLO name (default: this host's name)."],
        ["local-address", None, None, "Local address to connect from."],
        ["connection-timeout", None, None, "Seconds to connect (default 120).", _number(float, "connection-timeout")],
        ["greeting-timeout", None, None, "Seconds to wait for the greeting (default 30).", _number(float, "greeting-timeout")],
        ["socket-timeout", None, None, "Seconds of inactivity allowed (default 600).", _number(float, "socket-timeout")],
        # TLS.
        ["ca-certs", None, None, "PEM file of CA certificates to trust (default: the system store)."],
        ["tls-servername", None, None, "Name to verify the certificate against (default: host)."],
        ["client-cert", None, None, "PEM client certificate to present."],
        ["client-key", None, None, "PEM key of --client-cert (default: in the certificate file)."],
        ["tls-min-version", None, None, "Lowest TLS version to accept: 1.2 or 1.3."],
        # Authentication.
        ["user", None, None, "AUTH user name."],
        ["password-file", None, None, "Read the AUTH password from this file."],
        ["password-env", None, None, "Read the AUTH password from this environment variable."],
        ["auth-method", None, None, "Preferred SASL mechanism (e.g. PLAIN)."],
        # What to send.
        ["from", "f", None, "Sender: 'Name <addr>' or addr; the envelope takes the address."],
        ["subject", None, None, "Build a message with this subject."],
        ["body", None, None, "Build a message with this body text."],
        ["body-file", None, None, "Build a message with the text of this file ('-': standard input)."],
        ["html-body", None, None, "Add this HTML alternative (multipart/alternative)."],
        ["html-body-file", None, None, "Add the HTML of this file ('-': standard input)."],
        ["message", None, None, "Send this RFC 5322 file ('-' for standard input)."],
        ["script", None, None, "JSON or TOML script of connection settings and messages."],
        ["spool", None, None, "Send every *.eml file of this directory."],
        ["dsn-ret", None, None, "DSN RET: FULL or HDRS."],
        ["dsn-notify", None, None, "DSN NOTIFY: NEVER or a comma list of SUCCESS,FAILURE,DELAY."],
        ["dsn-envid", None, None, "DSN ENVID."],
        # How.
        ["connections", None, None, "Parallel connections (1-100, default 1).", _number(int, "connections")],
        ["max-messages-per-connection", None, None,
         "Messages over one connection before it is replaced (default 100).",
         _number(int, "max-messages-per-connection")],
        ["rate", None, None, "Start at most LIMIT messages per SECONDS, e.g. 10/1 (default: no limit)."],
        ["retries", None, None,
         "Retries of a message that failed before the server had it, 0-10 (default 0; 3 with --queue).",
         _number(int, "retries")],
        ["quit-after", None, None,
         "Test the server without sending: stop after connect, greeting, ehlo, tls or auth.", _quit_after],
        ["report", None, None, "Write one JSON line per message to this file."],
        # Queue mode.
        ["queue", None, None,
         "Be a worker: deliver the mail of this RabbitMQ queue, amqp://USER@HOST:PORT/VHOST"
         " (amqps:// for TLS; see docs/scaling.rst)."],
        ["queue-name", None, None, "The queue (default smtpsend); also names Q.dead, Q.review, Q.results."],
        ["queue-password-file", None, None, "Read the password of the --queue URL's user from this file."],
        ["queue-password-env", None, None, "Read the password of the --queue URL's user from this environment variable."],
        ["retry-delay", None, None,
         "Queue mode: seconds before the first retry, doubling after (default 60).", _number(float, "retry-delay")],
        ["worker-id", None, None, "Queue mode: this worker's name in result records (default host:pid)."],
        ["grace", None, None,
         "Queue mode: seconds the messages in flight may take after SIGTERM (default 15).", _number(float, "grace")],
        ["maildir", None, None, "Maildir of the embedded server (default: a new temporary one)."],
    ]
    optFlags: list[list[Any]] = [
        ["secure", None, "TLS from the first byte (implicit TLS)."],
        ["require-tls", None, "Fail unless STARTTLS succeeds."],
        ["ignore-tls", None, "Never use STARTTLS."],
        ["opportunistic-tls", None, "Try STARTTLS; on failure go on in cleartext."],
        ["insecure", None, "Do not verify the server certificate."],
        ["allow-insecure-auth", None, "Allow a password over cleartext to a non-loopback host."],
        ["lmtp", None, "Speak LMTP instead of SMTP."],
        ["8bitmime", None, "Send BODY=8BITMIME when offered."],
        ["debug", None, "Log every SMTP line (credentials redacted)."],
        ["verbose", "v", "One line per message on the terminal (always in --report)."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        for name in ("to", "cc", "bcc", "attach", "header"):
            self[name] = []

    def _address(self, kind: str, address: str) -> None:
        if not address.strip():
            raise usage.UsageError(f"--{kind} needs an address")
        if "," in address:
            raise usage.UsageError(
                f"--{kind} takes one address; repeat --{kind} for each (got {address!r})"
            )
        self[kind].append(address.strip())

    def opt_to(self, address: str) -> None:
        """Recipient, in the To field (repeat for more; short: -t)."""
        self._address("to", address)

    opt_t = opt_to

    def opt_cc(self, address: str) -> None:
        """Recipient, in the Cc field (repeat for more)."""
        self._address("cc", address)

    def opt_bcc(self, address: str) -> None:
        """Recipient in no field: gets the message, is never named in it (repeat for more)."""
        self._address("bcc", address)

    def opt_attach(self, spec: str) -> None:
        """Attach PATH; type guessed, or PATH;type=TYPE (repeat for more; short: -a)."""
        self["attach"].append(spec)

    opt_a = opt_attach

    def opt_header(self, text: str) -> None:
        """Add the field "Name: value" (repeat for more)."""
        try:
            self["header"].append(parse_header(text))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def opt_password(self, value: str) -> None:
        """Refused: use --password-file or --password-env."""
        raise usage.UsageError(
            "passwords are not taken from the command line (other users can read it); "
            "use --password-file FILE or --password-env VARIABLE"
        )

    def opt_version(self) -> None:
        """Print this package's version and exit."""
        print(f"smtpsend (twisted_smtpconn) {package_version()}")
        sys.exit(0)

    def opt_help(self) -> None:
        """Display this help and exit (short: -h)."""
        print(self.__str__())
        sys.exit(0)

    opt_h = opt_help

    def postOptions(self) -> None:
        composed = any(
            self[name] for name in ("subject", "body", "body-file", "html-body", "html-body-file", "attach", "header")
        )
        sources = [
            name
            for name, given in (
                ("--message", self["message"] is not None),
                ("--subject/--body/--attach/--header", composed),
                ("--script", self["script"] is not None),
                ("--spool", self["spool"] is not None),
            )
            if given
        ]
        if self["queue"] is None:
            for flag in ("queue-name", "queue-password-file", "queue-password-env", "retry-delay", "worker-id", "grace"):
                if self[flag] is not None:
                    raise usage.UsageError(f"--{flag} is for --queue")
        elif not self.producer:
            if sources:
                raise usage.UsageError(
                    f"--queue makes a worker that sends what the queue holds: it contradicts {sources[0]}"
                    " (to put mail on the queue: python -m twisted_smtpconn enqueue)"
                )
            if self["quit-after"] is not None:
                raise usage.UsageError("--quit-after contradicts --queue")
            if self["maildir"] is not None:
                raise usage.UsageError("--maildir contradicts --queue: a worker needs --host or --unix-socket")
            return
        if self["quit-after"] is not None:
            if sources:
                raise usage.UsageError(f"--quit-after sends nothing: it contradicts {sources[0]}")
            return
        if len(sources) > 1:
            raise usage.UsageError(f"choose one of {', '.join(sources)}")
        if not sources:
            raise usage.UsageError(
                "nothing to send: give --subject/--body, --message FILE, --script FILE or --spool DIR"
            )
        if self["body"] is not None and self["body-file"] is not None:
            raise usage.UsageError("give --body or --body-file, not both")
        if self["html-body"] is not None and self["html-body-file"] is not None:
            raise usage.UsageError("give --html-body or --html-body-file, not both")
        if self["body-file"] == "-" and self["html-body-file"] == "-":
            raise usage.UsageError("only one of --body-file and --html-body-file can read standard input")
        if composed and not (self["to"] or self["cc"] or self["bcc"]):
            raise usage.UsageError("a composed message needs at least one --to, --cc or --bcc")
        if self["script"] is not None and (self["cc"] or self["bcc"]):
            raise usage.UsageError("--cc/--bcc do not apply to --script: put Cc/Bcc in its headers")


class EnqueueOptions(SendOptions):
    """
    ``python -m twisted_smtpconn enqueue --queue URL``: the message sources
    of sending (``--message``, ``--spool``, ``--script``, ``--subject`` /
    ``--body``...) put on a RabbitMQ queue instead of sent.
    """

    synopsis = "Usage: python -m twisted_smtpconn enqueue --queue URL [--queue-name Q] [message options]"
    longdesc = (
        "Put mail on the RabbitMQ queue that smtpsend --queue workers consume, "
        "each message confirmed by the broker.  Exit status: 0 all queued, "
        "64 usage, 75 the broker could not be reached or refused a message."
    )
    producer = True

    #: Flags about delivering (connection, TLS, AUTH, pool): a worker's business.
    _SENDING_FLAGS = (
        "host", "port", "unix-socket", "proxy", "name", "local-address", "connection-timeout",
        "greeting-timeout", "socket-timeout", "ca-certs", "tls-servername", "client-cert", "client-key",
        "tls-min-version", "user", "password-file", "password-env", "auth-method", "connections",
        "max-messages-per-connection", "rate", "retries", "quit-after", "report", "maildir",
        "retry-delay", "worker-id", "grace",
    )

    #: Switches about delivering, refused likewise.
    _SENDING_SWITCHES = (
        "secure", "require-tls", "ignore-tls", "opportunistic-tls", "insecure", "allow-insecure-auth", "lmtp", "debug",
        "8bitmime",
    )

    def getUsage(self, width: int | None = None) -> str:
        """The help without the flags about delivering (they are refused here)."""
        hidden = {*self._SENDING_FLAGS, *self._SENDING_SWITCHES, "password"}
        every = self.longOpt
        self.longOpt = [name for name in every if name.rstrip("=") not in hidden]
        try:
            return str(super().getUsage(width))
        finally:
            self.longOpt = every

    def postOptions(self) -> None:
        if self["queue"] is None:
            raise usage.UsageError("enqueue needs --queue amqp://USER:PASS@HOST:PORT/VHOST")
        for flag in self._SENDING_FLAGS:
            if self[flag] is not None:
                raise usage.UsageError(f"--{flag} is about delivering; the workers take care of it, not enqueue")
        for flag in self._SENDING_SWITCHES:
            if self[flag]:
                raise usage.UsageError(f"--{flag} is about delivering; the workers take care of it, not enqueue")
        super().postOptions()


# -- the twistd service ------------------------------------------------------------


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
        from ._run import main

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
        if code == 0 and self._options["queue"] is not None:
            # A queue worker stopped by SIGTERM has finished its work: exit
            # 0, as with python -m.  twistd would otherwise kill itself
            # with the signal that stopped the reactor (to report it to its
            # parent); that signal is recorded on the reactor.
            if getattr(reactor, "_exitSignal", None) is not None:
                reactor._exitSignal = None
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
