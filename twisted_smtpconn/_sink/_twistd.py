"""
``twistd -n --pidfile= smtpsink``: the capture server as a twistd service.

For people testing their own applications: point the application at
``127.0.0.1:2525``, trust the printed CA file (or turn verification off in
the application), log in with the printed user and password, and read what
arrived in the printed Maildir.

The dropin in ``twisted/plugins/twisted_smtpconn_smtpsend.py`` names this
module; twistd imports it only when the ``smtpsink`` subcommand is used.
"""

from __future__ import annotations

# twisted.application and twisted.python.usage are not annotated.
# mypy: disable-error-code="no-untyped-call"

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from .._passwords import PasswordSourceError, read_password
from ._cert import make_throwaway_certificate
from ._config import DEFAULT_MAX_SIZE, CapturedMessage, CaptureLog, SinkConfig

__all__ = ["Options", "makeService"]


def _port_number(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


class Options(usage.Options):
    """Command-line options of ``twistd smtpsink``."""

    synopsis = "[options]"
    longdesc = (
        "Run a local ESMTP capture server: STARTTLS with a throwaway "
        "certificate, AUTH PLAIN/LOGIN after STARTTLS, every accepted "
        "message written to a Maildir."
    )

    optParameters: list[list[Any]] = [
        ["port", "p", 2525, "TCP port to listen on.", _port_number],
        ["interface", "i", "127.0.0.1", "Address to listen on."],
        ["maildir", "m", None, "Maildir to write messages to (default: a new temporary one)."],
        ["hostname", None, "localhost", "Name used in the greeting and Received headers."],
        ["user", "u", "smtpsink", "AUTH user name."],
        ["password-file", None, None, "Read the AUTH password from this file."],
        ["password-env", None, None, "Read the AUTH password from this environment variable."],
        ["tls-cert", None, None, "PEM certificate (chain) for STARTTLS (default: throwaway)."],
        ["tls-key", None, None, "PEM private key for --tls-cert."],
        ["max-size", None, DEFAULT_MAX_SIZE, "Largest message accepted (bytes).", _positive],
    ]
    optFlags: list[list[Any]] = [
        ["no-tls", None, "Offer no STARTTLS (and therefore no AUTH)."],
        ["require-auth", None, "Refuse MAIL FROM until the client has authenticated."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["reject"] = []
        self["defer"] = []

    def opt_reject(self, address: str) -> None:
        """Refuse this recipient with 550 (may be repeated)."""
        self["reject"].append(address.lower())

    def opt_defer(self, address: str) -> None:
        """Refuse this recipient with 450 (may be repeated)."""
        self["defer"].append(address.lower())

    def postOptions(self) -> None:
        if (self["tls-cert"] is None) != (self["tls-key"] is None):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if self["no-tls"] and self["tls-cert"] is not None:
            raise usage.UsageError("--no-tls contradicts --tls-cert")
        if self["no-tls"] and self["require-auth"]:
            raise usage.UsageError(
                "--require-auth needs TLS: AUTH is only offered after STARTTLS"
            )
        if self["password-file"] is not None and self["password-env"] is not None:
            raise usage.UsageError("give --password-file or --password-env, not both")
        try:
            self["password"] = read_password(self["password-file"], self["password-env"])
        except PasswordSourceError as e:
            raise usage.UsageError(str(e)) from None


class _SinkInfo(MultiService):
    """
    Says where things are once listening, logs each capture, and removes
    the throwaway key material when the service stops.
    """

    log = Logger()

    def __init__(
        self,
        config: SinkConfig,
        capture_log: CaptureLog,
        where: str,
        password_note: str,
        throwaway_dir: Path | None,
        ca_path: Path | None,
    ) -> None:
        super().__init__()
        self._config = config
        self._capture_log = capture_log
        self._where = where
        self._password_note = password_note
        self._throwaway_dir = throwaway_dir
        self._ca_path = ca_path

    def _captured(self, message: CapturedMessage) -> None:
        self.log.info("smtpsink: arrived {summary}", summary=message.summary())

    def privilegedStartService(self) -> None:
        # The port is bound here; if it is taken, twistd exits: take the
        # throwaway key along.
        try:
            super().privilegedStartService()
        except BaseException:
            self._remove_throwaway()
            raise

    def startService(self) -> None:
        self._capture_log.observers.append(self._captured)
        try:
            super().startService()
        except BaseException:
            self._remove_throwaway()
            raise
        config = self._config
        self.log.info("smtpsink: listening on {where}", where=self._where)
        self.log.info("smtpsink: Maildir {maildir}", maildir=str(config.maildir))
        if config.cert_path is None:
            self.log.info("smtpsink: no STARTTLS, no AUTH")
        elif self._ca_path is not None:
            self.log.info(
                "smtpsink: STARTTLS with a throwaway certificate; trust CA file {ca}",
                ca=str(self._ca_path),
            )
        else:
            self.log.info("smtpsink: STARTTLS with {cert}", cert=str(config.cert_path))
        if config.cert_path is not None:
            for user, _ in config.users:
                self.log.info(
                    "smtpsink: AUTH PLAIN/LOGIN after STARTTLS as {user} ({note}){req}",
                    user=user,
                    note=self._password_note,
                    req=", required" if config.require_auth else "",
                )

    def stopService(self) -> Any:
        result = super().stopService()
        self._remove_throwaway()
        return result

    def _remove_throwaway(self) -> None:
        if self._throwaway_dir is not None:
            shutil.rmtree(self._throwaway_dir, ignore_errors=True)


def makeService(options: Options) -> IService:
    """Build the ``smtpsink`` service from parsed options."""
    from twisted.internet import reactor

    from ._server import build_sink_factory

    throwaway_dir: Path | None = None
    ca_path: Path | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    if options["tls-cert"] is not None:
        cert_path, key_path = Path(options["tls-cert"]), Path(options["tls-key"])
    elif not options["no-tls"]:
        throwaway_dir = Path(tempfile.mkdtemp(prefix="smtpsink-tls-"))
        cert = make_throwaway_certificate(throwaway_dir)
        cert_path, key_path, ca_path = cert.cert_path, cert.key_path, cert.ca_path

    password = options["password"]
    if password is None:
        password = secrets.token_urlsafe(12)
        # A throwaway password for a loopback test server: printing it is
        # the point (the person testing needs it for their application).
        note = f"throwaway password {password}"
    else:
        note = "password as given"

    if options["maildir"] is not None:
        maildir = Path(options["maildir"]).absolute()
    else:
        maildir = Path(tempfile.mkdtemp(prefix="smtpsink-")) / "Maildir"

    config = SinkConfig(
        maildir=maildir,
        hostname=options["hostname"],
        cert_path=cert_path,
        key_path=key_path,
        users=((options["user"], password),),
        require_auth=bool(options["require-auth"]),
        reject=frozenset(options["reject"]),
        defer=frozenset(options["defer"]),
        max_size=options["max-size"],
    )
    capture_log = CaptureLog()
    factory = build_sink_factory(reactor, config, capture_log)
    interface: str = options["interface"]
    endpoint: IStreamServerEndpoint
    if ":" in interface:
        endpoint = TCP6ServerEndpoint(reactor, options["port"], interface=interface)
    else:
        endpoint = TCP4ServerEndpoint(reactor, options["port"], interface=interface)
    listener = StreamServerEndpointService(endpoint, factory)
    # Fail twistd's startup (instead of logging and idling) if the port is taken.
    listener._raiseSynchronously = True

    where = f"[{interface}]:{options['port']}" if ":" in interface else f"{interface}:{options['port']}"
    top = _SinkInfo(config, capture_log, where, note, throwaway_dir, ca_path)
    listener.setServiceParent(top)
    return top
