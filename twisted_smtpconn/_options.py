"""
Validation of :class:`~twisted_smtpconn.SMTPConnection`'s keyword options.

The options are checked once, at construction, and kept in one frozen value
so that a bad value fails where the caller wrote it rather than minutes later
inside the dialogue, and so that the rest of the code can trust them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._commands import validate_client_name
from ._proxy import ProxySettings, parse_proxy

__all__ = ["ConnectionOptions", "TLS_SETTING_KEYS", "validate_options", "default_reactor"]

#: The keys a ``tls`` dict may hold.
TLS_SETTING_KEYS = frozenset(
    {"reject_unauthorized", "servername", "ca_certs", "min_version", "client_cert", "client_key"}
)

_IMPLICIT_TLS_PORT = 465
_SMTP_PORT = 25


@dataclass(frozen=True)
class ConnectionOptions:
    """The validated, normalised options of one connection."""

    host: str
    port: int
    secure: bool
    ignore_tls: bool
    require_tls: bool
    opportunistic_tls: bool
    name: str | None
    local_address: str | None
    connection_timeout: float
    greeting_timeout: float
    socket_timeout: float
    debug: bool
    auth_method: str | None
    allow_insecure_auth: bool
    tls: Any
    endpoint: Any
    connection: socket.socket | None
    lmtp: bool
    #: Send with DATA even when the server offers CHUNKING (BDAT).
    prefer_data: bool = False
    #: The proxy to tunnel through (its password hidden from repr).
    proxy: ProxySettings | None = None


def _check_bool(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{option} must be a bool, not {type(value).__name__}")
    return value


def _check_timeout(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be a number of seconds, not {type(value).__name__}")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{option} must be a positive, finite number of seconds, not {value!r}")
    return float(value)


def _check_optional_text(option: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{option} must be a str or None, not {type(value).__name__}")
    if not value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{option} must be non-empty without spaces or control characters: {value!r}")
    return value


def _check_local_address(value: object) -> str | None:
    """
    An IP address to bind to, or None.  Checked here because a bind to a
    name that is not an address fails only inside the connect, as an
    unhelpful ``ECONNECTION``.
    """
    text = _check_optional_text("local_address", value)
    if text is None:
        return None
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"local_address must be an IP address of this host, not {text!r}") from None
    return text


def _check_port(port: object, secure: bool) -> int:
    if port is None:
        return _IMPLICIT_TLS_PORT if secure else _SMTP_PORT
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int or None, not {type(port).__name__}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535, not {port!r}")
    return port


def _check_tls(tls: object) -> object:
    if tls is None:
        return None
    if isinstance(tls, Mapping):
        unknown = set(tls) - TLS_SETTING_KEYS
        if unknown:
            raise TypeError(
                f"unknown tls setting(s) {sorted(map(str, unknown))}; "
                f"known: {sorted(TLS_SETTING_KEYS)}"
            )
        from ._tls_settings import check_tls_settings

        return check_tls_settings(tls)
    if hasattr(tls, "clientConnectionForTLS"):
        return tls
    raise TypeError(
        "tls must be a dict of TLS settings or an IOpenSSLClientConnectionCreator, "
        f"not {type(tls).__name__}"
    )


def _check_conflicts(secure: bool, ignore_tls: bool, require_tls: bool, opportunistic_tls: bool) -> None:
    if ignore_tls and require_tls:
        raise ValueError("ignore_tls and require_tls contradict each other")
    if ignore_tls and opportunistic_tls:
        raise ValueError("ignore_tls and opportunistic_tls contradict each other")
    if require_tls and opportunistic_tls:
        raise ValueError(
            "require_tls (fail without TLS) and opportunistic_tls (go on without TLS) contradict each other"
        )
    if secure and ignore_tls:
        raise ValueError("secure=True uses TLS from the first byte; ignore_tls=True contradicts it")
    if secure and opportunistic_tls:
        raise ValueError("secure=True uses TLS from the first byte; opportunistic_tls does not apply")


def validate_options(
    *,
    host: object = "localhost",
    port: object = None,
    secure: object = False,
    ignore_tls: object = False,
    require_tls: object = False,
    opportunistic_tls: object = False,
    name: object = None,
    local_address: object = None,
    connection_timeout: object = 120.0,
    greeting_timeout: object = 30.0,
    socket_timeout: object = 600.0,
    debug: object = False,
    auth_method: object = None,
    allow_insecure_auth: object = False,
    tls: object = None,
    endpoint: object = None,
    connection: object = None,
    lmtp: object = False,
    prefer_data: object = False,
    proxy: object = None,
) -> ConnectionOptions:
    """
    Check every option and return them normalised: the one place where a
    connection's options are checked, for :class:`SMTPConnection` and, with
    the options it was given, for :class:`SMTPPool` (the defaults are
    :class:`SMTPConnection`'s).

    :raises TypeError: for a value of the wrong type.
    :raises ValueError: for a value out of range or options that contradict
        each other.
    """
    if not isinstance(host, str) or not host:
        raise TypeError(f"host must be a non-empty str, not {host!r}")
    checked_host = _check_optional_text("host", host)
    assert checked_host is not None
    secure_b = _check_bool("secure", secure)
    ignore_b = _check_bool("ignore_tls", ignore_tls)
    require_b = _check_bool("require_tls", require_tls)
    opportunistic_b = _check_bool("opportunistic_tls", opportunistic_tls)
    _check_conflicts(secure_b, ignore_b, require_b, opportunistic_b)
    checked_name = _check_optional_text("name", name)
    if checked_name is not None:
        checked_name = validate_client_name(checked_name)
    method = _check_optional_text("auth_method", auth_method)
    if endpoint is not None and not hasattr(endpoint, "connect"):
        raise TypeError(f"endpoint must provide IStreamClientEndpoint, not {type(endpoint).__name__}")
    if connection is not None and not isinstance(connection, socket.socket):
        raise TypeError(f"connection must be a connected socket.socket, not {type(connection).__name__}")
    if endpoint is not None and connection is not None:
        raise ValueError("give either endpoint or connection, not both")
    proxy_settings = parse_proxy(proxy)
    if proxy_settings is not None and (endpoint is not None or connection is not None):
        raise ValueError("proxy goes through its own TCP connection: give it without endpoint or connection")
    return ConnectionOptions(
        host=checked_host.strip("[]") if ":" in checked_host else checked_host,
        port=_check_port(port, secure_b),
        secure=secure_b,
        ignore_tls=ignore_b,
        require_tls=require_b,
        opportunistic_tls=opportunistic_b,
        name=checked_name,
        local_address=_check_local_address(local_address),
        connection_timeout=_check_timeout("connection_timeout", connection_timeout),
        greeting_timeout=_check_timeout("greeting_timeout", greeting_timeout),
        socket_timeout=_check_timeout("socket_timeout", socket_timeout),
        debug=_check_bool("debug", debug),
        auth_method=method.upper() if method else None,
        allow_insecure_auth=_check_bool("allow_insecure_auth", allow_insecure_auth),
        tls=_check_tls(tls),
        endpoint=endpoint,
        connection=connection,
        lmtp=_check_bool("lmtp", lmtp),
        prefer_data=_check_bool("prefer_data", prefer_data),
        proxy=proxy_settings,
    )


def default_reactor(reactor: Any) -> Any:
    """
    ``reactor``, or the global reactor when it is ``None``.

    Imported only when needed: importing ``twisted.internet.reactor`` installs
    the default reactor, which a program that picks another one must be able
    to avoid by passing its own.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return reactor
