"""
What happened to each message (:class:`Outcome`) and to the run
(:class:`Tally`).

An outcome is a frozen record made once a send settles; it carries its
own exit-status contribution, so the final status is simply the most
serious one (:func:`._exitcodes.combine`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from .._errors import SMTPConnectionError
from ._exitcodes import EX_DATAERR, EX_OK, classify, classify_reply, combine
from ._jobs import Job

__all__ = ["Outcome", "RecipientRefusal", "Tally", "ErrorInfo"]

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
    def from_exception(cls, error: BaseException) -> ErrorInfo:
        if isinstance(error, SMTPConnectionError):
            return cls(
                code=error.code,
                message=str(error),
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
    ) -> Outcome:
        """The send raised ``error``."""
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
            error=ErrorInfo.from_exception(error),
            started=started,
            elapsed=elapsed,
            connection=connection,
            attempts=attempts,
        )

    @classmethod
    def unsendable(cls, job: Job) -> Outcome:
        """A job with a known problem: reported as a data error, never sent."""
        return cls(
            job=job,
            status=FAILED,
            exit_code=EX_DATAERR,
            error=ErrorInfo(code="EENVELOPE", message=job.problem or "unsendable"),
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
            "dsn": None if job.dsn is None else job.dsn.as_dict(),
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
