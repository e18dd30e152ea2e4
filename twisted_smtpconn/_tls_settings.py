"""
The values of the ``tls`` option's dict, checked and normalised.

Checked at construction (from :func:`twisted_smtpconn._options._check_tls`)
so that a typo such as ``min_version="1.2"`` or a missing CA bundle fails
where the caller wrote it, not at the first STARTTLS minutes later; the
OpenSSL objects are built only when a handshake needs them
(:mod:`._tls_creator`).

Pure Python: no OpenSSL import, so that validating options stays cheap.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TLSSettings", "MIN_VERSIONS", "check_tls_settings", "is_ip_literal"]

#: The accepted ``min_version`` strings (Node's spelling, as in nodemailer).
#: Older versions are deliberately not offered: RFC 8996 deprecates them.
MIN_VERSIONS = ("TLSv1.2", "TLSv1.3")

_PATH_KEYS = ("ca_certs", "client_cert", "client_key")


@dataclass(frozen=True)
class TLSSettings:
    """
    The ``tls`` dict as a value.

    :ivar reject_unauthorized: verify the chain and the server's name.
    :ivar servername: the name to verify and to send as SNI; ``None`` means
        the connection's ``host``.
    :ivar ca_certs: a PEM bundle to trust instead of the platform store.
    :ivar min_version: ``"TLSv1.2"`` or ``"TLSv1.3"``, or ``None`` for the
        library's floor (TLS 1.2).
    :ivar client_cert: a PEM file with our certificate (and its chain).
    :ivar client_key: a PEM file with its key; ``None`` means the key is in
        ``client_cert``.
    """

    reject_unauthorized: bool = True
    servername: str | None = None
    ca_certs: str | None = None
    min_version: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @classmethod
    def from_mapping(cls, tls: Mapping[str, Any] | None) -> TLSSettings:
        """Build from a dict already passed through :func:`check_tls_settings`."""
        return cls(**dict(tls or {}))

    def server_name(self, host: str) -> str:
        """The name the server's certificate must carry."""
        return self.servername if self.servername is not None else host


def is_ip_literal(name: str) -> bool:
    """Whether ``name`` is an IPv4 or IPv6 address (no SNI, IP SAN check)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _check_path(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"tls[{key!r}] must be a path (str or os.PathLike), not {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"tls[{key!r}] must be a text path, not {type(path).__name__}")
    if not os.path.isfile(path):
        raise ValueError(f"tls[{key!r}]: no such file: {path!r}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"tls[{key!r}]: file is not readable: {path!r}")
    return path


def _check_servername(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"tls['servername'] must be a str, not {type(value).__name__}")
    name = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not name or any(ord(c) < 0x21 or ord(c) == 0x7F for c in name):
        raise ValueError(f"tls['servername'] must be a host name or IP address: {value!r}")
    return name


def check_tls_settings(tls: Mapping[str, Any]) -> dict[str, Any]:
    """
    Check the values of a ``tls`` dict whose keys are already known to be valid.

    :returns: a new dict with the same keys, paths as ``str``.
    :raises TypeError: for a value of the wrong type.
    :raises ValueError: for an unknown ``min_version``, a missing file, or a
        ``client_key`` without ``client_cert``.
    """
    checked: dict[str, Any] = {}
    if "reject_unauthorized" in tls:
        value = tls["reject_unauthorized"]
        if not isinstance(value, bool):
            raise TypeError(f"tls['reject_unauthorized'] must be a bool, not {type(value).__name__}")
        checked["reject_unauthorized"] = value
    if "servername" in tls:
        checked["servername"] = _check_servername(tls["servername"])
    if "min_version" in tls:
        version = tls["min_version"]
        if version is not None and version not in MIN_VERSIONS:
            raise ValueError(f"tls['min_version'] must be one of {', '.join(MIN_VERSIONS)}, not {version!r}")
        checked["min_version"] = version
    for key in _PATH_KEYS:
        if key in tls:
            checked[key] = _check_path(key, tls[key])
    if checked.get("client_key") is not None and checked.get("client_cert") is None:
        raise ValueError("tls['client_key'] needs tls['client_cert']")
    return checked
