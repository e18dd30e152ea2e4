"""
What ``smtpsend`` says: exit statuses, per-message outcomes, the
``--report`` file, the console and the progress line.

Exit statuses are the BSD ``sysexits.h`` codes: a script driving
``smtpsend`` needs to tell apart "fix the invocation" (64), "fix this
message" (65), "the server refuses: retrying will not help" (69) and "try
again later" (75).  Each message's :class:`Outcome` carries its own
contribution, and the run's status is the most serious one.

Per-message lines go to the ``--report`` file (JSON lines, flushed as each
message settles, so an interrupted run still leaves a complete report); on
the terminal only with ``--verbose``, except for messages the server
refused or that failed on their connection, which are always shown.  A run
ends with one summary line.

Two consoles: :class:`StreamConsole` for ``python -m`` (stdout for results,
stderr for problems, and a self-overwriting progress line when stderr is a
terminal) and :class:`LoggerConsole` for ``twistd``, where everything is a
log event (twistd owns stdout and stderr).  The progress arithmetic
(:class:`ProgressMeter`) takes times as arguments, so it is testable
without clocks.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from twisted.logger import Logger
from twisted.python import usage

from .._errors import SMTPConnectionError
from ._messages import Job

__all__ = [
    "EX_DATAERR",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "Console",
    "ErrorInfo",
    "LoggerConsole",
    "Outcome",
    "ProgressMeter",
    "RecipientRefusal",
    "ReportWriter",
    "StreamConsole",
    "Tally",
    "classify",
    "combine",
    "describe",
    "describe_outcome",
    "format_duration",
    "summary_line",
]


# -- exit statuses ------------------------------------------------------------


EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75

# From most to least serious: when several messages fail differently, the
# most serious kind decides the exit status.
_SEVERITY = (EX_SOFTWARE, EX_USAGE, EX_UNAVAILABLE, EX_DATAERR, EX_TEMPFAIL, EX_OK)

_DESCRIPTIONS = {
    EX_OK: "all messages accepted",
    EX_USAGE: "usage error",
    EX_DATAERR: "a message or envelope was refused or unusable",
    EX_UNAVAILABLE: "the server refused or is unavailable",
    EX_SOFTWARE: "internal error",
    EX_TEMPFAIL: "temporary failure: try again later",
}

_DATA_CODES = frozenset({"EENVELOPE", "EMESSAGE", "ESTREAM"})


def classify_reply(response_code: int | None) -> int:
    """The status for one refused recipient: 4xx temporary, else data error."""
    if response_code is not None and 400 <= response_code < 500:
        return EX_TEMPFAIL
    return EX_DATAERR


def classify(error: BaseException, *, connected: bool) -> int:
    """
    The exit status one failed message contributes.

    :param error: what the library raised.
    :param connected: whether the connection had been established (greeting,
        EHLO, TLS and AUTH done) before the failure; an ``ECONNECTION`` before
        that means the server is unavailable, after it a dropped link.
    """
    if not isinstance(error, SMTPConnectionError):
        return EX_SOFTWARE
    reply = error.response_code
    if reply is not None and 400 <= reply < 500:
        return EX_TEMPFAIL
    if error.code in _DATA_CODES:
        return EX_DATAERR
    if reply is not None and reply >= 500:
        return EX_UNAVAILABLE
    if error.code == "ECONNECTION":
        return EX_TEMPFAIL if connected else EX_UNAVAILABLE
    if error.code in ("ETIMEDOUT", "ESOCKET"):
        return EX_TEMPFAIL
    # ETLS, EAUTH and EPROTOCOL without a reply code: a broken or
    # misconfigured peer that retrying will not fix.
    return EX_UNAVAILABLE


def combine(codes: Iterable[int]) -> int:
    """The most serious of ``codes`` (``EX_OK`` for none)."""
    present = set(codes)
    for code in _SEVERITY:
        if code in present:
            return code
    return EX_OK if not present else max(present)


def describe(code: int) -> str:
    """A few words for the final summary line."""
    return _DESCRIPTIONS.get(code, "unknown")


# -- outcomes -----------------------------------------------------------------


SENT = "sent"
PARTIAL = "partial"
FAILED = "failed"
NOT_SENT = "not-sent"


@dataclass(frozen=True)
class RecipientRefusal:
    """One recipient the server refused."""

    recipient: str
    response_code: int | None
    enhanced_status: str | None
    response: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "code": self.response_code,
            "enhanced_status": self.enhanced_status,
            "response": self.response,
        }


@dataclass(frozen=True)
class ErrorInfo:
    """The parts of a library error worth reporting (never credentials)."""

    code: str
    message: str
    response_code: int | None = None
    enhanced_status: str | None = None
    response: str | None = None

    @classmethod
    def from_exception(cls, error: BaseException, note: str | None = None) -> ErrorInfo:
        """
        :param note: appended to the message (e.g. which CAs were trusted,
            for a certificate error).
        """
        if isinstance(error, SMTPConnectionError):
            return cls(
                code=error.code,
                message=str(error) if note is None else f"{error} ({note})",
                response_code=error.response_code,
                enhanced_status=error.enhanced_status,
                response=error.response,
            )
        return cls(code="INTERNAL", message=f"{type(error).__name__}: {error}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "response_code": self.response_code,
            "enhanced_status": self.enhanced_status,
            "response": self.response,
        }


@dataclass(frozen=True)
class Outcome:
    """
    How one job ended.

    :ivar status: ``sent`` (every recipient accepted), ``partial`` (some
        refused), ``failed`` (the send failed) or ``not-sent`` (never on a
        connection: interrupted, or no connection could be made).
    :ivar exit_code: this message's contribution to the exit status.
    :ivar started: wall-clock start (Unix time), ``None`` if never tried.
    :ivar elapsed: seconds from start to settlement.
    :ivar connection: the pool's connection that carried the last attempt,
        numbered from 1 in the order they were opened; 0 for none.
    :ivar attempts: how many times sending it was started (retries
        included); 0 if never.
    """

    job: Job
    status: str
    exit_code: int
    accepted: tuple[str, ...] = ()
    rejected: tuple[RecipientRefusal, ...] = ()
    response: str | None = None
    error: ErrorInfo | None = None
    message_size: int | None = None
    envelope_time: float | None = None
    message_time: float | None = None
    started: float | None = None
    elapsed: float | None = None
    connection: int = 0
    attempts: int = 0

    @classmethod
    def sent(
        cls,
        job: Job,
        info: Any,
        *,
        started: float,
        elapsed: float,
        connection: int,
        attempts: int = 1,
    ) -> Outcome:
        """From a ``SendInfo``: ``sent``, or ``partial`` if some were refused."""
        errors = list(getattr(info, "rejected_errors", []) or [])
        by_address = {e.recipient: e for e in errors if getattr(e, "recipient", None)}
        refusals = []
        for address in info.rejected:
            e = by_address.get(address)
            refusals.append(
                RecipientRefusal(
                    recipient=address,
                    response_code=None if e is None else e.response_code,
                    enhanced_status=None if e is None else e.enhanced_status,
                    response=None if e is None else e.response,
                )
            )
        code = combine(classify_reply(r.response_code) for r in refusals)
        return cls(
            job=job,
            status=PARTIAL if refusals else SENT,
            exit_code=code,
            accepted=tuple(info.accepted),
            rejected=tuple(refusals),
            response=info.response,
            message_size=info.message_size,
            envelope_time=info.envelope_time,
            message_time=info.message_time,
            started=started,
            elapsed=elapsed,
            connection=connection,
            attempts=attempts,
        )

    @classmethod
    def failed(
        cls,
        job: Job,
        error: BaseException,
        *,
        connected: bool,
        started: float,
        elapsed: float,
        connection: int,
        attempts: int = 1,
        note: str | None = None,
    ) -> Outcome:
        """The send raised ``error`` (``note``: see :meth:`ErrorInfo.from_exception`)."""
        refusals = tuple(
            RecipientRefusal(
                recipient=e.recipient or "",
                response_code=e.response_code,
                enhanced_status=e.enhanced_status,
                response=e.response,
            )
            for e in getattr(error, "rejected_errors", [])
        )
        return cls(
            job=job,
            status=FAILED,
            exit_code=classify(error, connected=connected),
            rejected=refusals,
            response=getattr(error, "response", None),
            error=ErrorInfo.from_exception(error, note),
            started=started,
            elapsed=elapsed,
            connection=connection,
            attempts=attempts,
        )

    @classmethod
    def not_sent(
        cls, job: Job, *, reason: ErrorInfo, exit_code: int, attempts: int = 0
    ) -> Outcome:
        """A job that never got onto a connection (``attempts``: tries to get one)."""
        return cls(job=job, status=NOT_SENT, exit_code=exit_code, error=reason, attempts=attempts)

    def as_report(self) -> dict[str, Any]:
        """The JSON object of this outcome's ``--report`` line."""
        job = self.job
        started = (
            None
            if self.started is None
            else datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        return {
            "index": job.index,
            "source": job.source,
            "from": job.mail_from,
            "to": list(job.rcpt_to),
            "dsn": job.dsn_report(),
            "status": self.status,
            "accepted": list(self.accepted),
            "rejected": [r.as_dict() for r in self.rejected],
            "response": self.response,
            "error": None if self.error is None else self.error.as_dict(),
            "message_size": self.message_size,
            "envelope_time": self.envelope_time,
            "message_time": self.message_time,
            "started": started,
            "elapsed": self.elapsed,
            "connection": self.connection,
            "attempts": self.attempts,
            "exit_code": self.exit_code,
        }


@dataclass
class Tally:
    """Running counts for the progress line and the summary."""

    total: int
    counts: dict[str, int] = field(
        default_factory=lambda: {SENT: 0, PARTIAL: 0, FAILED: 0, NOT_SENT: 0}
    )
    codes: list[int] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        self.codes.append(outcome.exit_code)

    @property
    def done(self) -> int:
        return self.counts[SENT] + self.counts[PARTIAL] + self.counts[FAILED]

    @property
    def settled(self) -> int:
        return self.done + self.counts[NOT_SENT]

    def exit_code(self) -> int:
        return combine(self.codes) if self.codes else EX_OK


# -- the --report file --------------------------------------------------------


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
        self.write_record(outcome.as_report())

    def write_record(self, record: dict[str, Any]) -> None:
        """One JSON line (a queue worker's result record, say)."""
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


# -- the console and the progress line ----------------------------------------


class Console(Protocol):
    """What ``main`` needs from its output."""

    #: Whether a self-overwriting progress line makes sense.
    interactive: bool

    def info(self, text: str) -> None:
        """A line of normal output."""

    def problem(self, text: str) -> None:
        """A line about something that went wrong."""

    def status(self, text: str) -> None:
        """Replace the progress line (interactive consoles only)."""

    def usage_error(self, text: str) -> None:
        """The one line of a usage error: always on the process's stderr."""

    def library_logger(self) -> object:
        """The ``logger=`` for ``SMTPConnection`` when ``--debug`` is on."""


class StreamConsole:
    """Plain text to two streams (``python -m``)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout
        self._err = err if err is not None else sys.stderr
        isatty = getattr(self._err, "isatty", None)
        self.interactive = bool(isatty and isatty())
        self._status_shown = False

    def _clear_status(self) -> None:
        if self._status_shown:
            self._err.write("\r\x1b[K")
            self._err.flush()
            self._status_shown = False

    def info(self, text: str) -> None:
        self._clear_status()
        self._out.write(text + "\n")
        self._out.flush()

    def problem(self, text: str) -> None:
        self._clear_status()
        self._err.write(text + "\n")
        self._err.flush()

    def usage_error(self, text: str) -> None:
        self.problem(text)

    def status(self, text: str) -> None:
        if not self.interactive:
            return
        self._err.write("\r\x1b[K" + text)
        self._err.flush()
        self._status_shown = True

    def library_logger(self) -> object:
        return True


class LoggerConsole:
    """Everything as ``twisted.logger`` events (``twistd``)."""

    interactive = False

    def __init__(self) -> None:
        # An instance attribute: a class-level Logger would take the class
        # name as its namespace.
        self.log = Logger(namespace="smtpsend")

    def info(self, text: str) -> None:
        self.log.info("{text}", text=text)

    def problem(self, text: str) -> None:
        self.log.warn("{text}", text=text)

    def status(self, text: str) -> None:
        pass

    def usage_error(self, text: str) -> None:
        # Logged like everything else, and also written to the stderr twistd
        # started with, so that a script sees it as with ``python -m``.
        self.log.error("{text}", text=text)
        stderr = sys.__stderr__
        if stderr is not None:
            stderr.write(text + "\n")
            stderr.flush()

    def library_logger(self) -> object:
        return Logger(namespace="twisted_smtpconn")


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` for an ETA."""
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressMeter:
    """
    Sent/failed counts, rate and ETA from a :class:`Tally` and two times.

    :param started: the reactor time the run began.
    """

    def __init__(self, tally: Tally, started: float) -> None:
        self._tally = tally
        self._started = started

    def rate(self, now: float) -> float:
        """Messages settled per second so far (0 before the first)."""
        elapsed = now - self._started
        return self._tally.done / elapsed if elapsed > 0 else 0.0

    def line(self, now: float) -> str:
        t = self._tally
        rate = self.rate(now)
        remaining = t.total - t.settled
        eta = format_duration(remaining / rate) if rate > 0 else "-:--:--"
        return (
            f"sent {t.counts['sent'] + t.counts['partial']}/{t.total}"
            f"  failed {t.counts['failed']}"
            f"  {rate:.1f} msg/s  ETA {eta}"
        )


def describe_outcome(outcome: Outcome) -> str:
    """One line about one message, for the terminal."""
    job = outcome.job
    if outcome.status in (SENT, PARTIAL):
        text = f"{outcome.status} {job.source}: {len(outcome.accepted)} accepted"
        if outcome.rejected:
            refused = ", ".join(
                f"<{r.recipient}> {r.response or r.response_code}" for r in outcome.rejected
            )
            text += f", refused {refused}"
        if outcome.response:
            text += f" ({outcome.response})"
        return text
    error = outcome.error
    return f"{outcome.status} {job.source}: {error.message if error else 'unknown error'}"


def summary_line(tally: Tally, elapsed: float, rate: float, status: int) -> str:
    """The one line that ends every run: counts, time, rate and exit status."""
    c = tally.counts
    return (
        f"smtpsend: {tally.total} message(s): {c[SENT]} sent, {c[PARTIAL]} partly refused, "
        f"{c[FAILED]} failed, {c[NOT_SENT]} not sent; "
        f"{format_duration(elapsed)}, {rate:.1f} msg/s; exit status {status} ({describe(status)})"
    )
