"""
What the sink is told (:class:`SinkConfig`) and what it records
(:class:`CapturedMessage`).

Both are frozen values: the configuration is decided once when the server
starts, and a capture record describes something that already happened.
Keeping them free of Twisted imports lets the command-line code and the
tests build and inspect them without importing ``twisted.mail.smtp``
(which installs the global reactor as an import side effect).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SinkConfig", "CapturedMessage", "CaptureLog", "DEFAULT_MAX_SIZE"]

#: Default for the ``SIZE`` the sink advertises and enforces (bytes).
DEFAULT_MAX_SIZE = 35 * 1024 * 1024


@dataclass(frozen=True)
class SinkConfig:
    """
    How a capture server behaves.

    :ivar maildir: where accepted messages are written.
    :ivar hostname: the name in the greeting and EHLO reply.
    :ivar cert_path: PEM server certificate for STARTTLS, or ``None`` to
        offer no STARTTLS (and therefore no AUTH).
    :ivar key_path: PEM private key matching ``cert_path``.
    :ivar users: ``(user, password)`` pairs accepted by AUTH PLAIN/LOGIN.
    :ivar require_auth: refuse MAIL FROM (530) until the client has
        authenticated.  Needs TLS, since AUTH is only offered after STARTTLS.
    :ivar reject: recipient addresses refused with a permanent 550.
    :ivar defer: recipient addresses refused with a temporary 450.
    :ivar max_size: the ``SIZE`` limit advertised and enforced.
    """

    maildir: Path
    hostname: str = "localhost"
    cert_path: Path | None = None
    key_path: Path | None = None
    users: tuple[tuple[str, str], ...] = ()
    require_auth: bool = False
    reject: frozenset[str] = frozenset()
    defer: frozenset[str] = frozenset()
    max_size: int = DEFAULT_MAX_SIZE

    def __post_init__(self) -> None:
        if (self.cert_path is None) != (self.key_path is None):
            raise ValueError("cert_path and key_path go together")
        if self.require_auth and self.cert_path is None:
            raise ValueError("require_auth needs TLS: AUTH is only offered after STARTTLS")
        if self.require_auth and not self.users:
            raise ValueError("require_auth needs at least one user")
        if self.max_size < 1:
            raise ValueError("max_size must be positive")

    def __repr__(self) -> str:
        # Never show the passwords, even in a traceback.
        users = ", ".join(repr(u) for u, _ in self.users)
        return (
            f"SinkConfig(maildir={str(self.maildir)!r}, hostname={self.hostname!r}, "
            f"tls={self.cert_path is not None}, users=[{users}], "
            f"require_auth={self.require_auth}, max_size={self.max_size})"
        )


@dataclass(frozen=True)
class CapturedMessage:
    """
    One message the sink accepted and wrote to the Maildir.

    :ivar path: the message file under ``new/``.
    :ivar mail_from: the reverse path (``""`` for the null sender).
    :ivar rcpt_to: the accepted recipients, in RCPT order.
    :ivar mail_parameters: the ESMTP parameters of MAIL FROM, as sent.
    :ivar rcpt_parameters: the ESMTP parameters of each RCPT TO, as sent.
    :ivar size: bytes of message data received (CRLF line ends, after
        dot-unstuffing, before the sink's ``Received:`` header).
    :ivar tls: whether the transaction ran over TLS.
    :ivar user: the authenticated user, or ``None``.
    :ivar helo: the name the client gave in EHLO/HELO.
    :ivar peer: the client's address.
    """

    path: Path
    mail_from: str
    rcpt_to: tuple[str, ...]
    mail_parameters: tuple[str, ...]
    rcpt_parameters: tuple[tuple[str, ...], ...]
    size: int
    tls: bool
    user: str | None
    helo: str
    peer: str

    def summary(self) -> str:
        """A one-line description for logs and the ``smtpsend`` output."""
        via = "TLS" if self.tls else "cleartext"
        who = f", AUTH as {self.user}" if self.user is not None else ""
        return (
            f"<{self.mail_from}> -> {', '.join(f'<{r}>' for r in self.rcpt_to)}: "
            f"{self.size} bytes over {via}{who}, saved as {self.path.name}"
        )


@dataclass
class CaptureLog:
    """
    The messages one sink has captured, in arrival order, plus observers.

    Not frozen: it is the one piece of the sink that changes while it runs,
    owned by the running server (never module-level).
    """

    messages: list[CapturedMessage] = field(default_factory=list)
    observers: list[Callable[[CapturedMessage], None]] = field(default_factory=list)

    def add(self, message: CapturedMessage) -> None:
        """Record ``message`` and tell every observer."""
        self.messages.append(message)
        for observer in list(self.observers):
            observer(message)
