"""
Connection settings: command-line flags merged over a script's
``[connection]`` table, turned into ``SMTPPool`` keyword arguments (its
own, and the ``SMTPConnection`` ones it passes to every connection).

Flags win over the script, so one script can be pointed at another server
or run with ``--debug`` without editing it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.python import usage

from ._options import MAX_CONNECTIONS, MAX_RETRIES, parse_rate
from ._secrets import PasswordSourceError, read_password

__all__ = ["ConnectionSettings", "CONNECTION_KEYS", "resolve_settings"]

#: Keys of a script's ``connection`` table and the type each must have.
CONNECTION_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "host": str,
    "port": int,
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

#: The pool's own default for messages per connection, kept by smtpsend.
DEFAULT_MAX_MESSAGES = 100


@dataclass(frozen=True)
class ConnectionSettings:
    """
    Everything needed to open (and log in on) the run's connections, and
    how many to use and how.

    ``host`` ``None`` means "the embedded capture server".  ``rate_limit``
    ``None`` means no rate limit.
    """

    host: str | None = None
    port: int | None = None
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
        return self.host is None

    def tls_dict(self) -> dict[str, Any] | None:
        """The ``tls=`` argument; ``None`` leaves the library defaults."""
        tls: dict[str, Any] = {}
        if self.ca_certs is not None:
            tls["ca_certs"] = self.ca_certs
        if self.tls_servername is not None:
            tls["servername"] = self.tls_servername
        if self.insecure:
            tls["reject_unauthorized"] = False
        return tls or None

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SMTPConnection`` (no reactor, no logger)."""
        kwargs: dict[str, Any] = {
            "host": self.host if self.host is not None else "127.0.0.1",
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
        }
        for key in ("connection_timeout", "greeting_timeout", "socket_timeout"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = float(value)
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


def _check_connection_table(table: Mapping[str, Any], where: str) -> None:
    for key, value in table.items():
        expected = CONNECTION_KEYS.get(key)
        if expected is None:
            raise usage.UsageError(f"{where}: unknown connection setting {key!r}")
        # bool is an int subclass: do not let `port = true` through.
        if isinstance(value, bool) and expected is not bool:
            raise usage.UsageError(f"{where}: connection.{key} has the wrong type")
        if not isinstance(value, expected):
            raise usage.UsageError(f"{where}: connection.{key} has the wrong type")


def resolve_settings(
    options: Mapping[str, Any], script_connection: Mapping[str, Any], where: str = "script"
) -> ConnectionSettings:
    """
    Merge flags over the script's connection table and read the password.

    :param options: parsed :class:`SendOptions`.
    :param script_connection: the script's ``connection`` table (or ``{}``).
    :param where: the script's name, for error messages.
    :raises usage.UsageError: for contradictions, bad values or a password
        source that yields nothing.
    """
    _check_connection_table(script_connection, where)
    merged: dict[str, Any] = dict(script_connection)

    def flag(option: str, key: str) -> None:
        if options.get(option):
            merged[key] = True

    def value(option: str, key: str) -> None:
        if options.get(option) is not None:
            merged[key] = options[option]

    for option, key in (
        ("host", "host"),
        ("port", "port"),
        ("name", "name"),
        ("local-address", "local_address"),
        ("connection-timeout", "connection_timeout"),
        ("greeting-timeout", "greeting_timeout"),
        ("socket-timeout", "socket_timeout"),
        ("ca-certs", "ca_certs"),
        ("tls-servername", "tls_servername"),
        ("auth-method", "auth_method"),
        ("max-messages-per-connection", "max_messages_per_connection"),
        ("retries", "retries"),
    ):
        value(option, key)
    if options.get("user") is not None:
        merged["user"] = options["user"]
    # A password source on the command line replaces the script's.
    if options.get("password-file") is not None or options.get("password-env") is not None:
        merged.pop("password_file", None)
        merged.pop("password_env", None)
        value("password-file", "password_file")
        value("password-env", "password_env")
    for option, key in (
        ("secure", "secure"),
        ("ignore-tls", "ignore_tls"),
        ("require-tls", "require_tls"),
        ("opportunistic-tls", "opportunistic_tls"),
        ("insecure", "insecure"),
        ("lmtp", "lmtp"),
        ("debug", "debug"),
        ("allow-insecure-auth", "allow_insecure_auth"),
        ("8bitmime", "use_8bit_mime"),
    ):
        flag(option, key)
    if options.get("connections", 1) != 1 or "connections" not in merged:
        merged["connections"] = options.get("connections", 1)
    # --rate arrives parsed; the script's rate is the same text.
    rate = merged.pop("rate", None)
    if options.get("rate") is not None:
        merged["rate_limit"], merged["rate_interval"] = options["rate"]
    elif rate is not None:
        try:
            merged["rate_limit"], merged["rate_interval"] = parse_rate(rate)
        except ValueError as e:
            raise usage.UsageError(f"{where}: connection.rate: {e}") from None

    if "password_file" in merged and "password_env" in merged:
        raise usage.UsageError(f"{where}: give password_file or password_env, not both")
    try:
        password = read_password(merged.pop("password_file", None), merged.pop("password_env", None))
    except PasswordSourceError as e:
        raise usage.UsageError(str(e)) from None
    merged["password"] = password

    settings = ConnectionSettings(**merged)
    _check_settings(settings)
    return settings


def _check_settings(s: ConnectionSettings) -> None:
    if s.password is not None and s.user is None:
        raise usage.UsageError("a password needs --user")
    if s.user is not None and s.password is None and not s.embedded:
        raise usage.UsageError("--user needs --password-file or --password-env")
    if s.ignore_tls and (s.require_tls or s.opportunistic_tls):
        raise usage.UsageError("ignore_tls contradicts require_tls/opportunistic_tls")
    if s.secure and s.ignore_tls:
        raise usage.UsageError("secure contradicts ignore_tls")
    if s.insecure and s.ca_certs is not None:
        raise usage.UsageError("insecure contradicts ca_certs")
    if s.port is not None and not 1 <= s.port <= 65535:
        raise usage.UsageError(f"port must be 1-65535, not {s.port}")
    if not 1 <= s.connections <= MAX_CONNECTIONS:
        raise usage.UsageError(f"connections must be 1-{MAX_CONNECTIONS}")
    if s.max_messages_per_connection < 1:
        raise usage.UsageError("max_messages_per_connection must be at least 1")
    if not 0 <= s.retries <= MAX_RETRIES:
        raise usage.UsageError(f"retries must be 0-{MAX_RETRIES}")
    for key in ("connection_timeout", "greeting_timeout", "socket_timeout"):
        seconds = getattr(s, key)
        if seconds is not None and not seconds > 0:
            raise usage.UsageError(f"{key} must be positive")
    if s.embedded:
        # The embedded server decides these itself.
        for key, label in (
            ("port", "--port"),
            ("secure", "--secure"),
            ("lmtp", "--lmtp"),
            ("user", "--user"),
            ("ca_certs", "--ca-certs"),
            ("insecure", "--insecure"),
            ("tls_servername", "--tls-servername"),
        ):
            default = getattr(ConnectionSettings, key)
            if getattr(s, key) != default:
                raise usage.UsageError(
                    f"{label} needs --host: the embedded server chooses its own"
                )


def replace(settings: ConnectionSettings, **changes: Any) -> ConnectionSettings:
    """A copy of ``settings`` with ``changes`` (for the embedded server)."""
    return dataclasses.replace(settings, **changes)
