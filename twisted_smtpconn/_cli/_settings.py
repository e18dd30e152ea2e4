"""
Connection settings: where the settings of a run are defined, merged and
validated -- once.

Command-line flags are merged over a script's ``connection`` table (flags
win, so one script can be pointed at another server or run with
``--debug`` without editing it), and the result is checked in one pass,
:func:`resolve_settings`:

* what only ``smtpsend`` knows (its limits on ``connections`` and
  ``retries``, the rate syntax, a password source, what the embedded server
  decides for itself) is checked here;
* what the library knows (contradicting TLS modes, ports, timeouts, TLS
  files and versions) is checked by the library itself: one
  :class:`~twisted_smtpconn.SMTPConnection` is constructed with the
  settings -- construction validates and connects nothing -- and its
  ``ValueError`` or ``TypeError`` becomes the usage error.

The flags' parsers only turn text into numbers; the ranges are checked
here, for flags and script alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.python import usage

from .._connection import SMTPConnection
from .._passwords import PasswordSourceError, read_password

__all__ = [
    "CONNECTION_KEYS",
    "ConnectionSettings",
    "MAX_CONNECTIONS",
    "MAX_RETRIES",
    "TLS_VERSIONS",
    "parse_rate",
    "resolve_settings",
]

#: Upper bound for ``connections``: a sanity limit, not a tuning hint.
MAX_CONNECTIONS = 100

#: Upper bound for ``retries``: the pool's back-off doubles up to a minute,
#: so more than this only makes a run hang on a server that stays unhappy.
MAX_RETRIES = 10

#: ``--tls-min-version`` values and the library's names for them.
TLS_VERSIONS = {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}

#: The pool's own default for messages per connection, kept by smtpsend.
DEFAULT_MAX_MESSAGES = 100

#: Keys of a script's ``connection`` table and the type each must have.
CONNECTION_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "host": str,
    "port": int,
    "unix_socket": str,
    "proxy": str,
    "secure": bool,
    "ignore_tls": bool,
    "require_tls": bool,
    "opportunistic_tls": bool,
    "name": str,
    "local_address": str,
    "connection_timeout": (int, float),
    "greeting_timeout": (int, float),
    "socket_timeout": (int, float),
    "ca_certs": str,
    "tls_servername": str,
    "client_cert": str,
    "client_key": str,
    "tls_min_version": str,
    "insecure": bool,
    "lmtp": bool,
    "debug": bool,
    "user": str,
    "password_file": str,
    "password_env": str,
    "auth_method": str,
    "allow_insecure_auth": bool,
    "use_8bit_mime": bool,
    "connections": int,
    "max_messages_per_connection": int,
    "rate": str,
    "retries": int,
}

#: Flags that take a value, and their setting.
_VALUE_FLAGS = {
    "host": "host",
    "port": "port",
    "unix-socket": "unix_socket",
    "proxy": "proxy",
    "name": "name",
    "local-address": "local_address",
    "connection-timeout": "connection_timeout",
    "greeting-timeout": "greeting_timeout",
    "socket-timeout": "socket_timeout",
    "ca-certs": "ca_certs",
    "tls-servername": "tls_servername",
    "client-cert": "client_cert",
    "client-key": "client_key",
    "tls-min-version": "tls_min_version",
    "user": "user",
    "auth-method": "auth_method",
    "connections": "connections",
    "max-messages-per-connection": "max_messages_per_connection",
    "rate": "rate",
    "retries": "retries",
}

#: On/off flags, and their setting.
_SWITCH_FLAGS = {
    "secure": "secure",
    "ignore-tls": "ignore_tls",
    "require-tls": "require_tls",
    "opportunistic-tls": "opportunistic_tls",
    "insecure": "insecure",
    "lmtp": "lmtp",
    "debug": "debug",
    "allow-insecure-auth": "allow_insecure_auth",
    "8bitmime": "use_8bit_mime",
}


def parse_rate(value: str) -> tuple[int, float]:
    """
    ``LIMIT/SECONDS`` (or ``LIMIT``, per second) as ``(limit, seconds)``.

    :raises ValueError: with a message fit for a usage error.
    """
    limit_text, _, seconds_text = value.partition("/")
    try:
        limit = int(limit_text)
        seconds = float(seconds_text) if seconds_text else 1.0
    except ValueError:
        raise ValueError(f"rate must be LIMIT/SECONDS, e.g. 10/1 or 600/60, not {value!r}") from None
    if limit < 1 or not 0 < seconds < float("inf"):
        raise ValueError(f"rate needs a positive LIMIT and SECONDS, not {value!r}")
    return limit, seconds


@dataclass(frozen=True)
class ConnectionSettings:
    """
    Everything needed to open (and log in on) the run's connections, and
    how many to use and how.

    ``host`` ``None`` (and no ``unix_socket``) means "the embedded capture
    server".  ``rate_limit`` ``None`` means no rate limit.
    """

    host: str | None = None
    port: int | None = None
    unix_socket: str | None = None
    proxy: str | None = field(default=None, repr=False)  # may hold a password
    secure: bool = False
    ignore_tls: bool = False
    require_tls: bool = False
    opportunistic_tls: bool = False
    name: str | None = None
    local_address: str | None = None
    connection_timeout: float | None = None
    greeting_timeout: float | None = None
    socket_timeout: float | None = None
    ca_certs: str | None = None
    tls_servername: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tls_min_version: str | None = None
    insecure: bool = False
    lmtp: bool = False
    debug: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    auth_method: str | None = None
    allow_insecure_auth: bool = False
    use_8bit_mime: bool = False
    connections: int = 1
    max_messages_per_connection: int = DEFAULT_MAX_MESSAGES
    rate_limit: int | None = None
    rate_interval: float = 1.0
    retries: int = 0

    @property
    def embedded(self) -> bool:
        """Whether to start the local capture server and send to it."""
        return self.host is None and self.unix_socket is None

    @property
    def target(self) -> str:
        """Where the connections go, for humans."""
        if self.unix_socket is not None:
            return f"UNIX socket {self.unix_socket}"
        port = self.port or (465 if self.secure else 25)
        return f"{self.host}:{port}"

    def trust_note(self) -> str:
        """Which certificates were trusted: named in certificate errors."""
        if self.insecure:
            return "certificate verification was off (--insecure)"
        if self.ca_certs is not None:
            return f"trusted CAs from --ca-certs {self.ca_certs}"
        return "trusted CAs from the system store (no --ca-certs)"

    def tls_dict(self) -> dict[str, Any] | None:
        """The ``tls=`` argument; ``None`` leaves the library defaults."""
        tls: dict[str, Any] = {}
        if self.ca_certs is not None:
            tls["ca_certs"] = self.ca_certs
        if self.tls_servername is not None:
            tls["servername"] = self.tls_servername
        if self.insecure:
            tls["reject_unauthorized"] = False
        if self.client_cert is not None:
            tls["client_cert"] = self.client_cert
        if self.client_key is not None:
            tls["client_key"] = self.client_key
        if self.tls_min_version is not None:
            tls["min_version"] = TLS_VERSIONS.get(self.tls_min_version, self.tls_min_version)
        return tls or None

    def connection_kwargs(self, reactor: Any) -> dict[str, Any]:
        """
        Keyword arguments for ``SMTPConnection`` and ``SMTPPool`` (no logger).

        :param reactor: the reactor, also for the UNIX endpoint.
        """
        kwargs: dict[str, Any] = {
            "host": self.host if self.host is not None else "localhost" if self.unix_socket else "127.0.0.1",
            "port": self.port,
            "secure": self.secure,
            "ignore_tls": self.ignore_tls,
            "require_tls": self.require_tls,
            "opportunistic_tls": self.opportunistic_tls,
            "name": self.name,
            "local_address": self.local_address,
            "debug": self.debug,
            "auth_method": self.auth_method,
            "allow_insecure_auth": self.allow_insecure_auth,
            "lmtp": self.lmtp,
            "tls": self.tls_dict(),
            "reactor": reactor,
            "proxy": self.proxy,
        }
        for key in ("connection_timeout", "greeting_timeout", "socket_timeout"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = float(value)
        if self.unix_socket is not None:
            kwargs["endpoint"] = UNIXClientEndpoint(  # type: ignore[no-untyped-call]
                reactor, self.unix_socket, timeout=int(self.connection_timeout or 30)
            )
        return kwargs

    def pool_kwargs(self) -> dict[str, Any]:
        """The ``SMTPPool`` keyword arguments of its own (no auth, no reactor)."""
        return {
            "max_connections": self.connections,
            "max_messages": self.max_messages_per_connection,
            "rate_limit": self.rate_limit,
            "rate_interval": self.rate_interval,
            "max_retries": self.retries,
        }


def _check_types(table: Mapping[str, Any], where: str) -> None:
    for key, value in table.items():
        expected = CONNECTION_KEYS.get(key)
        if expected is None:
            raise usage.UsageError(f"{where}: unknown connection setting {key!r}")
        # bool is an int subclass: do not let `port = true` through.
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            raise usage.UsageError(f"{where}: connection.{key} has the wrong type")


def _merge(options: Mapping[str, Any], table: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = dict(table)
    for option, key in _VALUE_FLAGS.items():
        if options.get(option) is not None:
            merged[key] = options[option]
    for option, key in _SWITCH_FLAGS.items():
        if options.get(option):
            merged[key] = True
    # A password source on the command line replaces the script's.
    if options.get("password-file") is not None or options.get("password-env") is not None:
        merged.pop("password_file", None)
        merged.pop("password_env", None)
        if options.get("password-file") is not None:
            merged["password_file"] = options["password-file"]
        if options.get("password-env") is not None:
            merged["password_env"] = options["password-env"]
    return merged


def _label(key: str, where: str) -> str:
    """How to name a setting in a message: the flag, and the script key."""
    flag = "--" + key.replace("_", "-")
    return flag if where == "command line" else f"{flag} (connection.{key} in {where})"


def resolve_settings(
    options: Mapping[str, Any],
    script_connection: Mapping[str, Any],
    where: str = "command line",
    *,
    reactor: Any = None,
) -> ConnectionSettings:
    """
    Merge flags over the script's connection table, read the password and
    validate everything, once.

    :param options: parsed :class:`SendOptions`.
    :param script_connection: the script's ``connection`` table (or ``{}``).
    :param where: the script's name, for error messages.
    :param reactor: for the connection the library validates.
    :raises usage.UsageError: one line: the first problem found.
    """
    _check_types(script_connection, where)
    merged = _merge(options, script_connection)

    rate = merged.pop("rate", None)
    if rate is not None:
        try:
            merged["rate_limit"], merged["rate_interval"] = (
                rate if isinstance(rate, tuple) else parse_rate(rate)
            )
        except ValueError as e:
            raise usage.UsageError(f"{_label('rate', where)}: {e}") from None
    for key, low, high in (
        ("connections", 1, MAX_CONNECTIONS),
        ("max_messages_per_connection", 1, None),
        ("retries", 0, MAX_RETRIES),
    ):
        if key in merged and (merged[key] < low or (high is not None and merged[key] > high)):
            bound = f"{low}-{high}" if high is not None else f"at least {low}"
            raise usage.UsageError(f"{_label(key, where)} must be {bound}, not {merged[key]}")
    version = merged.get("tls_min_version")
    if version is not None and version not in TLS_VERSIONS:
        raise usage.UsageError(f"{_label('tls_min_version', where)} must be 1.2 or 1.3, not {version!r}")

    if "password_file" in merged and "password_env" in merged:
        raise usage.UsageError(f"{where}: give --password-file or --password-env, not both")
    try:
        merged["password"] = read_password(merged.pop("password_file", None), merged.pop("password_env", None))
    except PasswordSourceError as e:
        raise usage.UsageError(str(e)) from None

    settings = ConnectionSettings(**merged)
    _check_own(settings)
    try:
        # Construction checks every option and connects nothing.
        SMTPConnection(**settings.connection_kwargs(reactor))
    except (TypeError, ValueError) as e:
        raise usage.UsageError(str(e)) from None
    return settings


def _check_own(s: ConnectionSettings) -> None:
    """What the library does not know about: smtpsend's own rules."""
    if s.password is not None and s.user is None:
        raise usage.UsageError("a password needs --user")
    if s.user is not None and s.password is None and not s.embedded:
        raise usage.UsageError("--user needs --password-file or --password-env")
    if s.insecure and s.ca_certs is not None:
        raise usage.UsageError("--insecure contradicts --ca-certs")
    if s.unix_socket is not None and s.port is not None:
        raise usage.UsageError("--port contradicts --unix-socket")
    if s.embedded:
        # The embedded server decides these itself.
        for key in ("port", "secure", "lmtp", "user", "ca_certs", "insecure", "tls_servername",
                    "client_cert", "client_key"):
            if getattr(s, key) != getattr(ConnectionSettings, key):
                raise usage.UsageError(
                    f"{_label(key, 'command line')} needs --host: the embedded server chooses its own"
                )


def replace(settings: ConnectionSettings, **changes: Any) -> ConnectionSettings:
    """A copy of ``settings`` with ``changes`` (for the embedded server)."""
    return dataclasses.replace(settings, **changes)
