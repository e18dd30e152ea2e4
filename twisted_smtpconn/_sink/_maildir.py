"""
Writing captured messages into a Maildir.

Maildir is the format every mail tool can read (``mutt -f``, Python's
``mailbox.Maildir``, Dovecot) and the one whose delivery protocol is safe
without locks: a message is written under ``tmp/`` and only renamed into
``new/`` once complete, so a reader never sees half a message.  The stdlib
``mailbox.Maildir`` creates the layout; the message is streamed line by
line to ``tmp/`` rather than collected in memory, because the sink may be
fed large messages by the application under test.
"""

from __future__ import annotations

import itertools
import mailbox
import os
import re
import socket
import time
from pathlib import Path
from typing import BinaryIO

__all__ = ["MaildirStore", "MaildirDraft"]


class MaildirDraft:
    """
    One message being written to ``tmp/``; :meth:`commit` moves it to ``new/``.
    """

    def __init__(self, tmp_path: Path, final_path: Path) -> None:
        self._tmp_path = tmp_path
        self._final_path = final_path
        self._file: BinaryIO | None = open(tmp_path, "xb")
        self.size = 0

    def write_line(self, line: bytes) -> None:
        """
        Append one line (without its line ending).

        Maildir files use the local convention, LF, as ``mailbox.Maildir``
        does when it writes messages.
        """
        assert self._file is not None, "draft already finished"
        self._file.write(line + b"\n")
        self.size += len(line) + 1

    def commit(self) -> Path:
        """
        Make the message visible in ``new/``.

        :returns: the final path of the message file.
        """
        assert self._file is not None, "draft already finished"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.rename(self._tmp_path, self._final_path)
        return self._final_path

    def discard(self) -> None:
        """Forget the message: the transaction failed or the client left."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        try:
            os.unlink(self._tmp_path)
        except FileNotFoundError:
            pass


class MaildirStore:
    """
    A Maildir that drafts can be opened in.

    :ivar path: the Maildir directory (holding ``tmp``, ``new`` and ``cur``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # Only for its side effect: create tmp/, new/ and cur/ if missing.
        mailbox.Maildir(str(path), create=True)
        self._sequence = itertools.count(1)
        self._host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")

    def _unique_name(self) -> str:
        # The classic Maildir unique name: time, microseconds, process id
        # and a per-process delivery counter, then the host name.
        now = time.time()
        seconds = int(now)
        micro = int((now - seconds) * 1_000_000)
        return f"{seconds}.M{micro}P{os.getpid()}Q{next(self._sequence)}.{self._host}"

    def open_message(self) -> MaildirDraft:
        """Start writing a new message."""
        name = self._unique_name()
        return MaildirDraft(self.path / "tmp" / name, self.path / "new" / name)

    def messages(self) -> list[Path]:
        """The files of every delivered message, oldest name first."""
        found = list((self.path / "new").iterdir()) + list((self.path / "cur").iterdir())
        return sorted(found, key=_delivery_order)


_NAME = re.compile(r"^(\d+)\.M(\d+)P\d+Q(\d+)\.")


def _delivery_order(path: Path) -> tuple[int, int, int, str]:
    # Names written by other programs sort after ours, by name.
    match = _NAME.match(path.name)
    if match is None:
        return (1 << 62, 0, 0, path.name)
    seconds, micro, sequence = (int(g) for g in match.groups())
    return (seconds, micro, sequence, path.name)
