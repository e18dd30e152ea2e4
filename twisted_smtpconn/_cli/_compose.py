"""
Building a minimal RFC 5322 message for ``--subject/--body`` and for a
script's inline messages.

The stdlib ``email`` package writes the headers (encoding non-ASCII
subjects and bodies as RFC 2047 words and quoted-printable where needed);
``Date`` and ``Message-ID`` are always present, since RFC 5322 requires the
first and every mail system expects the second.
"""

from __future__ import annotations

import datetime
import email.policy
import email.utils
from collections.abc import Mapping, Sequence
from email.message import EmailMessage

__all__ = ["compose_message", "message_id_domain"]


def message_id_domain(sender: str) -> str:
    """
    The right-hand side for Message-IDs: the sender's domain.

    Using ``email.utils.make_msgid``'s default would call
    ``socket.getfqdn()``, a DNS lookup that can stall for seconds.
    """
    _, address = email.utils.parseaddr(sender)
    domain = address.rpartition("@")[2]
    return domain if domain and "@" in address else "smtpsend.invalid"


#: NUL and everything ``str.splitlines`` (and so the email package) treats
#: as a line break.
_BREAKS = frozenset("\0\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _check_header(name: str, value: str) -> None:
    # The email package folds long values itself; a line break (or NUL)
    # given by the user would start a new header: refuse it.
    if any(c in _BREAKS for c in value):
        raise ValueError(f"the {name} header value may not contain line breaks")
    if not name or any(c in name for c in ":\r\n\0 \t"):
        raise ValueError(f"bad header name {name!r}")


def compose_message(
    *,
    sender: str,
    recipients: Sequence[str],
    subject: str | None,
    body: str | None,
    headers: Mapping[str, str] | None = None,
    now: datetime.datetime | None = None,
) -> bytes:
    """
    A complete message as bytes with CRLF line ends.

    :param sender: the ``From:`` header (also the Message-ID domain).
    :param recipients: the ``To:`` header.
    :param subject: the ``Subject:``; omitted if ``None``.
    :param body: the text body (UTF-8 when not ASCII); empty if ``None``.
    :param headers: extra headers; ``From``, ``To``, ``Subject``, ``Date``
        and ``Message-ID`` given here replace the generated ones.
    :param now: the ``Date:`` (default: now, local time with offset).
    :raises ValueError: if a header name or value is unusable (a line break
        in a value would inject headers).
    """
    extra = dict(headers or {})
    for name, value in [("From", sender), ("Subject", subject or ""), *extra.items()]:
        _check_header(name, value)
    for value in recipients:
        _check_header("To", value)
    message = EmailMessage(policy=email.policy.SMTP)
    lowered = {k.lower() for k in extra}
    if "from" not in lowered and sender:
        message["From"] = sender
    if "to" not in lowered and recipients:
        message["To"] = ", ".join(recipients)
    if "subject" not in lowered and subject is not None:
        message["Subject"] = subject
    if "date" not in lowered:
        when = now if now is not None else datetime.datetime.now().astimezone()
        message["Date"] = email.utils.format_datetime(when)
    if "message-id" not in lowered:
        message["Message-ID"] = email.utils.make_msgid(domain=message_id_domain(sender))
    for name, value in extra.items():
        message[name] = value
    text = body if body is not None else ""
    if text and not text.endswith("\n"):
        text += "\n"
    message.set_content(text)
    return message.as_bytes()
