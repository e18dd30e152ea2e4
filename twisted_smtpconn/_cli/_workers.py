"""
Sending a queue of jobs over N parallel connections.

Everything about *how* connections carry the jobs is inside
:func:`deliver_all`, so that a connection pool can replace the hand-made
workers without touching the rest of ``smtpsend``: it takes the queue, a
way to open a ready connection, a way to send one job on it, and a
callback for each outcome.

Policy, per worker:

* open a connection (connect, STARTTLS, AUTH) lazily, before its first job;
  if that fails, put the job back and stop this worker;
* send jobs one after another over the same connection;
* a failure that closes the connection fails *that* job (it is not retried:
  after DATA the server may already have it) and the next job gets a new
  connection; three such failures in a row stop the worker;
* on stop (Ctrl-C), take no new jobs, let the sends in flight finish,
  then QUIT.

Jobs left in the queue when every worker has stopped are reported by the
caller as not sent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from .._errors import SMTPConnectionError
from ._jobs import Job
from ._results import Outcome

__all__ = ["JobQueue", "RunControl", "SendingConnection", "deliver_all"]

#: Connection-closing failures in a row after which a worker gives up.
_MAX_BROKEN_IN_A_ROW = 3

#: Seconds QUIT may take before the connection is simply closed.
_QUIT_GRACE = 10.0


class SendingConnection(Protocol):
    """The part of ``SMTPConnection`` the workers use."""

    def quit(self) -> Deferred[None]: ...

    def close(self) -> None: ...


class JobQueue:
    """The jobs not yet taken by a worker, in order."""

    def __init__(self, jobs: Iterable[Job]) -> None:
        self._pending: deque[Job] = deque(jobs)

    def take(self) -> Job | None:
        return self._pending.popleft() if self._pending else None

    def put_back(self, job: Job) -> None:
        self._pending.appendleft(job)

    def drain(self) -> list[Job]:
        jobs = list(self._pending)
        self._pending.clear()
        return jobs

    def __len__(self) -> int:
        return len(self._pending)


@dataclass
class RunControl:
    """
    The mutable state of one run shared by its workers and ``main``.

    :ivar stopping: set on Ctrl-C: workers take no new jobs.
    :ivar open: the connections currently open, so that :meth:`abort` can
        close them if finishing in-flight sends takes too long.
    """

    stopping: bool = False
    open: set[Any] = field(default_factory=set)

    def abort(self) -> None:
        """Close every open connection now (in-flight sends fail)."""
        for connection in list(self.open):
            connection.close()


OpenConnection = Callable[[], Awaitable[Any]]
SendJob = Callable[[Any, Job], Awaitable[Any]]


async def _quit(clock: IReactorTime, connection: SendingConnection) -> None:
    d = connection.quit()
    d.addTimeout(_QUIT_GRACE, clock)
    try:
        await d
    except Exception:
        connection.close()


async def _worker(
    number: int,
    clock: IReactorTime,
    queue: JobQueue,
    open_connection: OpenConnection,
    send_job: SendJob,
    record: Callable[[Outcome], None],
    notice: Callable[[str], None],
    control: RunControl,
) -> BaseException | None:
    connection: Any = None
    broken_in_a_row = 0
    try:
        while not control.stopping:
            job = queue.take()
            if job is None:
                return None
            if job.problem is not None:
                record(Outcome.unsendable(job))
                continue
            if connection is None:
                try:
                    connection = await open_connection()
                except Exception as e:
                    queue.put_back(job)
                    notice(f"connection {number}: cannot connect: {e}")
                    return e
                control.open.add(connection)
            started_wall = time.time()
            started = clock.seconds()
            try:
                info = await send_job(connection, job)
            except Exception as e:
                record(
                    Outcome.failed(
                        job,
                        e,
                        connected=True,
                        started=started_wall,
                        elapsed=clock.seconds() - started,
                        connection=number,
                    )
                )
                closes = not isinstance(e, SMTPConnectionError) or e.closes_connection
                if closes:
                    control.open.discard(connection)
                    connection.close()
                    connection = None
                    broken_in_a_row += 1
                    if broken_in_a_row >= _MAX_BROKEN_IN_A_ROW:
                        notice(f"connection {number}: giving up after {broken_in_a_row} broken connections")
                        return e
                continue
            broken_in_a_row = 0
            record(
                Outcome.sent(
                    job,
                    info,
                    started=started_wall,
                    elapsed=clock.seconds() - started,
                    connection=number,
                )
            )
        return None
    finally:
        if connection is not None:
            await _quit(clock, connection)
            control.open.discard(connection)


async def deliver_all(
    clock: IReactorTime,
    queue: JobQueue,
    *,
    connections: int,
    open_connection: OpenConnection,
    send_job: SendJob,
    record: Callable[[Outcome], None],
    notice: Callable[[str], None],
    control: RunControl,
) -> list[BaseException]:
    """
    Send every job of ``queue`` over up to ``connections`` connections.

    :param clock: for timings and the QUIT grace period.
    :param open_connection: returns a connected (and logged in) connection.
    :param send_job: sends one job on a connection, returning ``SendInfo``.
    :param record: called once per job that was tried (or is unsendable).
    :param notice: called with a line for the user about a worker.
    :param control: the run's stop switch.
    :returns: the errors of the workers that gave up, oldest first; jobs
        still in ``queue`` afterwards were never tried.
    """
    workers = [
        Deferred.fromCoroutine(
            _worker(n, clock, queue, open_connection, send_job, record, notice, control)
        )
        for n in range(1, connections + 1)
    ]
    results = await gatherResults(workers)
    return [r for r in results if r is not None]
