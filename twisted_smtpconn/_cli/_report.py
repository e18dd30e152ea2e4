"""
``--report FILE``: one JSON object per line, per message.

JSON lines so that a report can be read while it is written, appended to
across runs, and processed with ``jq`` or a line-by-line reader.  Each
line is flushed as soon as its message settles, so an interrupted run
still leaves a report of everything that happened.
"""

from __future__ import annotations

import json
from typing import TextIO

from twisted.python import usage

from ._results import Outcome

__all__ = ["ReportWriter"]


class ReportWriter:
    """Writes outcomes to an open text file, one JSON line each."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    @classmethod
    def open(cls, path: str) -> ReportWriter:
        """
        Open ``path`` for writing (truncating it).

        :raises usage.UsageError: if it cannot be created.
        """
        try:
            stream = open(path, "w", encoding="utf-8")
        except OSError as e:
            raise usage.UsageError(f"cannot write report {path}: {e.strerror or e}") from None
        return cls(stream)

    def write(self, outcome: Outcome) -> None:
        self._stream.write(json.dumps(outcome.as_report(), ensure_ascii=False) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()
