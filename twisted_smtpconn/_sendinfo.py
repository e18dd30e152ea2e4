"""The result of a successful send."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._errors import SMTPConnectionError

__all__ = ["SendInfo"]


@dataclass(frozen=True)
class SendInfo:
    """
    What happened to one message: who got it and what the server said.

    :ivar accepted: recipients the server accepted (for LMTP: accepted after
        the message, too).
    :ivar rejected: recipients refused at RCPT, or (LMTP) after the message.
    :ivar rejected_errors: one error per rejected recipient, each with its
        ``recipient`` set, in the order of ``rejected``.
    :ivar response: the server's final reply to the message, e.g.
        ``"250 2.0.0 Ok: queued as 4Xz"``.
    :ivar envelope_time: seconds spent on MAIL FROM and RCPT TO.
    :ivar message_time: seconds spent sending the message and waiting for
        the final reply.
    :ivar message_size: bytes of the normalised message (CRLF line ends,
        before dot-stuffing, without the terminating ``.`` line).
    :ivar recipient_replies: what the server answered to each ``RCPT TO``,
        as ``(address, code, text)`` in the order sent, accepted and
        refused alike (``text`` joins a multi-line reply with newlines).
    """

    accepted: list[str]
    rejected: list[str]
    rejected_errors: list[SMTPConnectionError] = field(repr=False)
    response: str
    envelope_time: float
    message_time: float
    message_size: int
    recipient_replies: list[tuple[str, int, str]] = field(default_factory=list, repr=False)
