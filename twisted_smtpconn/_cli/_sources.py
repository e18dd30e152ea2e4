"""
Turning the three ways of saying what to send into one list of jobs:
flags (``--subject/--body`` or ``--message``), a script's ``messages``,
or a ``--spool`` directory of ``.eml`` files.
"""

from __future__ import annotations

import getpass
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from twisted.python import usage

from ._compose import compose_message
from ._jobs import DSNSpec, Job, MessageContent, make_job
from ._script import Script

__all__ = ["collect_jobs", "default_sender", "dsn_from_options"]


def default_sender() -> str:
    """
    ``user@host`` of whoever runs the command, like ``mail(1)`` does.

    ``socket.gethostname()`` rather than ``getfqdn()``: no DNS lookup.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "smtpsend"
    host = socket.gethostname() or "localhost"
    return f"{user}@{host}"


def dsn_from_options(options: Mapping[str, Any]) -> DSNSpec | None:
    """The DSN flags as one spec, or ``None`` if none was given."""
    ret, envid, notify = options.get("dsn-ret"), options.get("dsn-envid"), options.get("dsn-notify")
    if ret is None and envid is None and notify is None:
        return None
    return DSNSpec(ret=ret, envid=envid, notify=None if notify is None else tuple(notify))


def _stdin_bytes(stdin: BinaryIO | None) -> bytes:
    stream = stdin if stdin is not None else sys.stdin.buffer
    return stream.read()


def _compose(**kwargs: Any) -> bytes:
    try:
        return compose_message(**kwargs)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def collect_jobs(
    options: Mapping[str, Any],
    script: Script | None,
    *,
    use_8bit_mime: bool = False,
    stdin: BinaryIO | None = None,
) -> list[Job]:
    """
    Every job of this run, in order.

    :param options: parsed ``SendOptions``.
    :param script: the loaded ``--script``, if any.
    :param use_8bit_mime: the merged connection setting.
    :param stdin: where ``--message -`` reads from (default: ``sys.stdin``).
    :raises usage.UsageError: for an unusable spool directory or message
        file, or a header value with a line break.
    """
    flag_from: str | None = options.get("from")
    flag_to: list[str] = list(options.get("to", []))
    dsn = dsn_from_options(options)
    fallback_from = flag_from or (script.default_from if script else None) or default_sender()

    if script is not None:
        jobs = []
        for index, entry in enumerate(script.messages, start=1):
            mail_from = entry.mail_from or flag_from or script.default_from
            rcpt_to = entry.rcpt_to or tuple(flag_to)
            if entry.eml is not None:
                content = MessageContent(path=entry.eml)
                source = str(entry.eml)
            else:
                sender = mail_from if mail_from is not None else fallback_from
                content = MessageContent(
                    data=_compose(
                        sender=sender,
                        recipients=rcpt_to,
                        subject=entry.subject,
                        body=entry.body,
                        headers=dict(entry.headers),
                    )
                )
                source = entry.where
                mail_from = sender
            jobs.append(
                make_job(
                    index=index,
                    source=source,
                    content=content,
                    mail_from=mail_from,
                    rcpt_to=rcpt_to,
                    default_from=fallback_from,
                    dsn=entry.dsn if entry.dsn is not None else dsn,
                    use_8bit_mime=use_8bit_mime or entry.use_8bit_mime,
                )
            )
        return jobs

    if options.get("spool") is not None:
        directory = Path(options["spool"])
        try:
            files = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".eml" and p.is_file())
        except OSError as e:
            raise usage.UsageError(f"cannot read spool {directory}: {e.strerror or e}") from None
        if not files:
            raise usage.UsageError(f"spool {directory} holds no .eml files")
        return [
            make_job(
                index=index,
                source=str(path),
                content=MessageContent(path=path),
                mail_from=flag_from,
                rcpt_to=flag_to,
                default_from=fallback_from,
                dsn=dsn,
                use_8bit_mime=use_8bit_mime,
            )
            for index, path in enumerate(files, start=1)
        ]

    if options.get("message") is not None:
        name = options["message"]
        if name == "-":
            content = MessageContent(data=_stdin_bytes(stdin))
            source = "<stdin>"
        else:
            path = Path(name)
            if not path.is_file():
                raise usage.UsageError(f"--message {name}: no such file")
            content = MessageContent(path=path)
            source = name
        return [
            make_job(
                index=1,
                source=source,
                content=content,
                mail_from=flag_from,
                rcpt_to=flag_to,
                default_from=fallback_from,
                dsn=dsn,
                use_8bit_mime=use_8bit_mime,
            )
        ]

    data = _compose(
        sender=fallback_from,
        recipients=flag_to,
        subject=options.get("subject"),
        body=options.get("body"),
    )
    return [
        Job(
            index=1,
            source="--subject/--body",
            mail_from=fallback_from,
            rcpt_to=tuple(flag_to),
            content=MessageContent(data=data),
            dsn=dsn,
            use_8bit_mime=use_8bit_mime,
        )
    ]
