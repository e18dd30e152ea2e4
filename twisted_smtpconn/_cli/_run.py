"""
Running the work: ``async def main(reactor, options) -> int``, the one
implementation behind ``twistd smtpsend`` and ``python -m twisted_smtpconn``.

Steps: load the script, the settings and every job, checking all of them
(any problem: one line, exit 64, nothing sent); start the embedded capture
server if no host is configured; send the jobs through one
:class:`~twisted_smtpconn.SMTPPool` of up to ``--connections`` connections
(:func:`deliver_all`), recording each outcome; print one summary line; and
return the sysexits status.  ``--quit-after STAGE`` runs :func:`probe`
instead: one connection, as far as STAGE, and nothing sent.

Two seams for other modes (a queue worker, say): :func:`deliver_all` takes
any iterable of jobs -- *a source of jobs* -- and a ``record`` callable --
*what to do with a result*.

The pool decides which connection carries which message: it opens up to
``--connections`` of them, replaces each after
``--max-messages-per-connection`` messages, keeps to ``--rate`` and retries
(``--retries``) only what failed before the server could have the message.
:func:`deliver_all` decides what to hand it and what to say about each job:

* at most :data:`WINDOW_PER_CONNECTION` sends per connection are handed to
  the pool at a time, so that a spool of any size costs memory (and open
  files) for that many messages only, while a connection that comes free
  finds its next message already waiting;
* every job gets exactly one :class:`Outcome`, through ``record``;
* a message whose last attempt got no connection (connecting, TLS or AUTH
  failed) is reported *not sent*, with that error;
* the run gives up after one such failure per connection in a row, or
  :data:`BROKEN_PER_CONNECTION` per connection of messages in a row that
  lost theirs, saying which step failed: a server that is down or refuses
  the login is not fed the whole spool.  The pool is closed and the jobs
  left are reported not sent with the last error;
* on :meth:`RunControl.stop` (Ctrl-C) the pool is closed at once: the
  messages it had not started are reported not sent (``EINTERRUPTED``),
  the running ones finish; :meth:`RunControl.abort` cuts those too.

Ctrl-C: a "before shutdown" trigger prints the notice, stops the run taking
new jobs and holds the reactor's shutdown until the sends in flight have
finished (at most :data:`INTERRUPT_GRACE` seconds, then the connections are
dropped); the jobs never started go to the report (and to the terminal
only with ``--verbose``), and the summary line gives the counts.

With no ``--host``, the embedded capture server is started on 127.0.0.1
with a throwaway CA and certificate and a throwaway AUTH password; the
client is given exactly that CA (verification stays on) and that password,
and is made to require STARTTLS, so a successful run proves STARTTLS,
certificate verification and AUTH all worked.  With ``--ignore-tls`` the
client sends in cleartext without AUTH instead.  The Maildir outlives the
run; the key material is deleted when the run ends.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python import usage

from .._auth import Auth
from .._connection import SMTPConnection
from .._envelope import Envelope
from .._errors import ConnectionFailedError, SMTPConnectionError, StreamError
from .._pool import SendTrace, SMTPPool
from .._sink import RunningSink, SinkConfig, make_throwaway_certificate, start_sink
from ._messages import Job, Script, bare_address, collect_jobs, default_sender, load_script
from ._queue import queue_config, run_worker
from ._output import (
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    FAILED,
    PARTIAL,
    SENT,
    Console,
    ErrorInfo,
    Outcome,
    ProgressMeter,
    ReportWriter,
    StreamConsole,
    Tally,
    classify,
    describe_outcome,
    summary_line,
)
from ._settings import ConnectionSettings, replace, resolve_settings

__all__ = [
    "BROKEN_PER_CONNECTION",
    "INTERRUPT_GRACE",
    "EmbeddedSink",
    "RunControl",
    "WINDOW_PER_CONNECTION",
    "deliver_all",
    "failure_stage",
    "main",
    "probe",
    "start_embedded",
]

#: Seconds after Ctrl-C that sends in flight may take before being cut.
INTERRUPT_GRACE = 15.0

#: Least seconds between two redraws of the progress line.
_REDRAW = 0.2

#: What failed, by error code: the step named when the run gives up.
_STAGE_FAILED = {
    "ECONNECTION": "could not connect",
    "ETIMEDOUT": "timed out",
    "ETLS": "TLS failed",
    "EAUTH": "authentication failed",
    "EPROTOCOL": "the server answered in a way that makes no sense",
    "ESOCKET": "the connection broke",
}


def failure_stage(error: BaseException) -> str:
    """A few words for what failed, from the error's code."""
    code = getattr(error, "code", None)
    return _STAGE_FAILED.get(code or "", "the connection failed")


# -- the embedded capture server ------------------------------------------------


#: The AUTH user of the embedded server.
EMBEDDED_USER = "smtpsend"


@dataclass(frozen=True)
class EmbeddedSink:
    """
    A running embedded server and the client settings that reach it.

    :ivar settings: ``settings`` pointed at the server, with its CA and
        credentials.
    :ivar maildir: where the captured messages are.
    """

    sink: RunningSink
    settings: ConnectionSettings
    maildir: Path
    tls_dir: Path | None

    async def stop(self) -> None:
        """Stop listening and delete the throwaway key material."""
        await self.sink.stop()
        if self.tls_dir is not None:
            shutil.rmtree(self.tls_dir, ignore_errors=True)
            try:
                # The temporary base, if the Maildir was put elsewhere.
                self.tls_dir.parent.rmdir()
            except OSError:
                pass


async def start_embedded(
    reactor: IReactorTCP, settings: ConnectionSettings, maildir: str | None
) -> EmbeddedSink:
    """
    Start the capture server for ``settings`` (which must have no host).

    :param maildir: the Maildir to use, or ``None`` for a new temporary one.
    """
    base = Path(tempfile.mkdtemp(prefix="smtpsend-"))
    target = Path(maildir).absolute() if maildir is not None else base / "Maildir"
    tls_dir = base / "tls"
    tls_dir.mkdir(mode=0o700)
    cert = make_throwaway_certificate(tls_dir)
    use_tls = not settings.ignore_tls
    password = secrets.token_urlsafe(18)
    config = SinkConfig(
        maildir=target,
        hostname="localhost",
        cert_path=cert.cert_path,
        key_path=cert.key_path,
        users=((EMBEDDED_USER, password),),
        require_auth=use_tls,
    )
    sink = await start_sink(reactor, config, port=0, interface="127.0.0.1")
    client = replace(
        settings,
        host="127.0.0.1",
        port=sink.port,
        ca_certs=str(cert.ca_path) if use_tls else None,
        require_tls=use_tls and not settings.opportunistic_tls,
        user=EMBEDDED_USER if use_tls else None,
        password=password if use_tls else None,
    )
    return EmbeddedSink(sink=sink, settings=client, maildir=target, tls_dir=tls_dir)


# -- delivery through the pool ----------------------------------------------------


#: Sends handed to the pool per connection at a time: one running, one
#: ready to start the moment a connection is free.
WINDOW_PER_CONNECTION = 2

#: Messages in a row, per connection, that lost their connection after
#: which the run gives up.
BROKEN_PER_CONNECTION = 3

#: Seconds the final QUITs may take before the connections are dropped.
_QUIT_GRACE = 10.0

_INTERRUPTED = ErrorInfo(code="EINTERRUPTED", message="interrupted before sending")


@dataclass(eq=False)
class RunControl:
    """
    Ctrl-C's handle on a run.

    Made before the pool exists (the embedded server starts first), and
    given the pool by :func:`deliver_all` once it does.

    :ivar stopping: set by :meth:`stop`: no new job is started.
    :ivar aborted: set by :meth:`abort`: the messages in flight were cut.
    """

    stopping: bool = False
    aborted: bool = False
    pool: SMTPPool | None = None

    def stop(self) -> None:
        """Start no new job; let the pool finish the messages it is sending."""
        self.stopping = True
        if self.pool is not None:
            self.pool.close()

    def abort(self) -> None:
        """Drop every connection now: the messages in flight fail."""
        self.stopping = True
        self.aborted = True
        if self.pool is not None:
            self.pool.abort()


def _loses_connection(error: BaseException) -> bool:
    return not isinstance(error, SMTPConnectionError) or error.closes_connection


class _Streak:
    """
    Counts the settled messages in a row whose trouble was the connection,
    not the message, and says when to give up.
    """

    def __init__(self, connections: int) -> None:
        self._unreachable_limit = connections
        self._broken_limit = BROKEN_PER_CONNECTION * connections
        self.unreachable = 0
        self.broken = 0

    def add(self, trace: SendTrace) -> bool:
        """Count ``trace``; whether it is time to give up."""
        error = trace.error
        if trace.attempts == 0:
            return False  # never tried: says nothing about the server
        if error is None or (trace.connection != 0 and not _loses_connection(error)):
            self.unreachable = self.broken = 0
            return False
        self.unreachable = self.unreachable + 1 if trace.connection == 0 else 0
        self.broken += 1
        return self.unreachable >= self._unreachable_limit or self.broken >= self._broken_limit


class _Delivery:
    """One run of :func:`deliver_all`."""

    def __init__(
        self,
        clock: IReactorTime,
        pool: SMTPPool,
        jobs: Iterator[Job],
        *,
        connections: int,
        record: Callable[[Outcome], None],
        notice: Callable[[str], None],
        control: RunControl,
        explain: Callable[[BaseException], str | None],
    ) -> None:
        self._explain = explain
        self._clock = clock
        self._pool = pool
        self._jobs = jobs
        self._window = WINDOW_PER_CONNECTION * connections
        self._streak = _Streak(connections)
        self._record = record
        self._notice = notice
        self._control = control
        self._outstanding = 0
        self._filling = False
        self._exhausted = False
        self._gave_up: BaseException | None = None
        self._crash: BaseException | None = None
        self.done: Deferred[None] = Deferred()

    def _stopped(self) -> bool:
        return self._control.stopping or self._gave_up is not None or self._crash is not None

    def _leftover_reason(self) -> tuple[ErrorInfo, int]:
        if self._gave_up is not None:
            error = self._gave_up
            return ErrorInfo.from_exception(error, self._explain(error)), classify(error, connected=False)
        return _INTERRUPTED, EX_TEMPFAIL

    def fill(self) -> None:
        """Hand the pool jobs up to the window; fire :attr:`done` at the end."""
        if self._filling:
            # A send settled while a job was being handed over: the loop
            # below goes on, so no recursion (a spool can be long).
            return
        self._filling = True
        try:
            while not self._stopped() and self._outstanding < self._window:
                job = next(self._jobs, None)
                if job is None:
                    self._exhausted = True
                    break
                self._start(job)
        except Exception as e:
            self._halt(e)
        finally:
            self._filling = False
        if self._outstanding == 0 and (self._exhausted or self._stopped()) and not self.done.called:
            if self._crash is not None:
                self.done.errback(self._crash)
            else:
                self.done.callback(None)

    def _start(self, job: Job) -> None:
        started_wall = time.time()
        started = self._clock.seconds()
        try:
            envelope = job.envelope()
            stream = job.content.open()
        except (SMTPConnectionError, OSError) as e:
            # Checked before the run; a file removed since is still possible.
            error = e if isinstance(e, SMTPConnectionError) else StreamError(
                f"cannot read {job.source}: {e.strerror or e}"
            )
            self._record(
                Outcome.failed(
                    job, error, connected=False, started=started_wall, elapsed=0.0, connection=0, attempts=0
                )
            )
            return
        self._outstanding += 1
        d = self._pool.send_traced(envelope, stream)
        d.addCallback(self._settled, job, stream, started_wall, started)

    def _settled(
        self, trace: SendTrace, job: Job, stream: BinaryIO, started_wall: float, started: float
    ) -> None:
        self._outstanding -= 1
        try:
            stream.close()
            self._record(self._outcome(trace, job, started_wall, self._clock.seconds() - started))
            if self._streak.add(trace) and not self._stopped():
                assert trace.error is not None
                self._give_up(trace.error)
        except Exception as e:
            self._halt(e)
        self.fill()

    def _outcome(self, trace: SendTrace, job: Job, started_wall: float, elapsed: float) -> Outcome:
        if trace.info is not None:
            return Outcome.sent(
                job,
                trace.info,
                started=started_wall,
                elapsed=elapsed,
                connection=trace.connection,
                attempts=trace.attempts,
            )
        error = trace.error
        assert error is not None
        if trace.attempts == 0 and self._stopped():
            # The pool was closed before it started this one.
            reason, code = self._leftover_reason()
            return Outcome.not_sent(job, reason=reason, exit_code=code)
        if trace.attempts > 0 and trace.connection == 0:
            return Outcome.not_sent(
                job,
                reason=ErrorInfo.from_exception(error, self._explain(error)),
                exit_code=classify(error, connected=False),
                attempts=trace.attempts,
            )
        outcome = Outcome.failed(
            job,
            error,
            connected=trace.connection != 0,
            started=started_wall,
            elapsed=elapsed,
            connection=trace.connection,
            attempts=trace.attempts,
            note=self._explain(error),
        )
        if self._control.aborted:
            # Cut by our own Ctrl-C, not refused: try again later.
            unknown = getattr(error, "delivery_unknown", False)
            message = "cut off when the Ctrl-C grace period ended" + (
                " after the whole message was sent: the server may have it" if unknown else ""
            )
            outcome = dataclasses.replace(
                outcome, error=ErrorInfo(code="EINTERRUPTED", message=message), exit_code=EX_TEMPFAIL
            )
        return outcome

    def _give_up(self, error: BaseException) -> None:
        self._gave_up = error
        if self._streak.unreachable:
            what = failure_stage(error)
            why = f"{self._streak.unreachable} connection attempt(s) in a row: {what}"
        else:
            why = f"{self._streak.broken} message(s) in a row lost their connection"
        note = self._explain(error)
        self._notice(f"giving up after {why}: {error}" + (f" ({note})" if note else ""))
        self._pool.close()

    def _halt(self, error: BaseException) -> None:
        """A bug (or an unwritable report): stop, and fail the run once the pool is quiet."""
        if self._crash is None:
            self._crash = error
        self._pool.close()

    def report_leftovers(self) -> None:
        """Every job never handed to the pool is reported not sent."""
        if self._crash is not None:
            return
        reason, code = self._leftover_reason()
        for job in self._jobs:
            self._record(Outcome.not_sent(job, reason=reason, exit_code=code))


async def deliver_all(
    clock: IReactorTime,
    pool: SMTPPool,
    jobs: Iterable[Job],
    *,
    connections: int,
    record: Callable[[Outcome], None],
    notice: Callable[[str], None],
    control: RunControl,
    explain: Callable[[BaseException], str | None] = lambda error: None,
) -> None:
    """
    Send every job through ``pool``, then close it.

    :param clock: for timings and the grace period of the final QUITs.
    :param pool: the run's pool, made with ``max_connections=connections``.
    :param connections: the pool's ``max_connections``: sets how many
        sends are handed over at a time and when to give up.
    :param record: called exactly once for every job, as it settles.
    :param notice: called with a line for the user (giving up).
    :param control: the run's stop switch; given ``pool``.
    :param explain: a note to add to an error's message, or ``None``.
    :raises Exception: what ``record`` raised, once the pool is closed.
    """
    control.pool = pool
    run = _Delivery(
        clock,
        pool,
        iter(jobs),
        connections=connections,
        record=record,
        notice=notice,
        control=control,
        explain=explain,
    )
    if control.stopping:
        pool.close()  # Ctrl-C came before the pool existed.
    try:
        run.fill()
        await run.done
        run.report_leftovers()
    finally:
        closing = pool.close()
        cut = clock.callLater(_QUIT_GRACE, pool.abort)
        try:
            await closing
        finally:
            if cut.active():
                cut.cancel()


# -- main ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything checked before the first connection."""

    settings: ConnectionSettings
    jobs: list[Job]
    report: ReportWriter | None
    #: ``--quit-after mail|rcpt``: the envelope to try.
    probe: Envelope | None = None


def _prepare(reactor: Any, options: Mapping[str, Any], stdin: BinaryIO | None) -> _Plan:
    """
    Load and check everything: settings, script, every job, the report file.

    :raises usage.UsageError: for the first problem found.
    """
    script: Script | None = None
    where = "command line"
    if options.get("script") is not None:
        script = load_script(Path(options["script"]))
        where = script.path.name
    settings = resolve_settings(options, script.connection if script else {}, where, reactor=reactor)
    if options.get("maildir") is not None and not settings.embedded:
        raise usage.UsageError("--maildir is for the embedded server; it contradicts a host or socket")
    if options.get("quit-after"):
        if options["quit-after"] == "auth" and settings.user is None:
            raise usage.UsageError("--quit-after auth needs --user")
        if options["quit-after"] == "tls" and settings.ignore_tls and not settings.secure:
            raise usage.UsageError("--quit-after tls contradicts --ignore-tls")
        if settings.embedded:
            raise usage.UsageError("--quit-after needs --host or --unix-socket")
        return _Plan(settings, [], None, _probe_envelope(options) if options["quit-after"] in ("mail", "rcpt") else None)
    jobs = collect_jobs(options, script, use_8bit_mime=settings.use_8bit_mime, stdin=stdin)
    report = ReportWriter.open(options["report"]) if options.get("report") else None
    return _Plan(settings, jobs, report)


def _library_options(settings: ConnectionSettings, reactor: Any, out: Console) -> dict[str, Any]:
    kwargs = settings.connection_kwargs(reactor)
    if settings.debug:
        kwargs["logger"] = out.library_logger()
    return kwargs


def _make_pool(reactor: Any, settings: ConnectionSettings, out: Console) -> SMTPPool:
    """The run's pool: every connection made, and logged in, the same way."""
    auth = None if settings.user is None else Auth(user=settings.user, password=settings.password)
    return SMTPPool(auth=auth, **settings.pool_kwargs(), **_library_options(settings, reactor, out))


def _explainer(settings: ConnectionSettings) -> Callable[[BaseException], str | None]:
    """A certificate error says which CAs were trusted."""

    def explain(error: BaseException) -> str | None:
        text = str(error).lower()
        if getattr(error, "code", None) == "ETLS" and ("certificate" in text or "verif" in text):
            return settings.trust_note()
        return None

    return explain


async def main(
    reactor: Any,
    options: Mapping[str, Any],
    *,
    console: Console | None = None,
    stdin: BinaryIO | None = None,
) -> int:
    """
    Run ``smtpsend`` with parsed ``options``; return the exit status.

    :param reactor: the reactor (TCP, time and system event triggers).
    :param options: a parsed :class:`SendOptions`.
    :param console: where to write (default: stdout/stderr).
    :param stdin: where ``-`` reads (default: ``sys.stdin``).
    :returns: 0, or 64, 65, 69, 70 or 75 (see ``docs/twistd.rst``).
    """
    out: Console = console if console is not None else StreamConsole()
    if options.get("queue"):
        return await _queue_main(reactor, options, out)
    try:
        plan = _prepare(reactor, options, stdin)
    except usage.UsageError as e:
        out.usage_error(f"smtpsend: {e}")
        return EX_USAGE
    if options.get("quit-after"):
        return await probe(reactor, plan.settings, options["quit-after"], out, plan.probe)

    control = RunControl()
    interrupted: list[Deferred[None]] = []
    abort_call: list[IDelayedCall] = []

    def before_shutdown() -> Deferred[None]:
        # Ctrl-C (or any reactor shutdown): stop taking jobs and hold the
        # shutdown until main has finished and reported.
        out.problem(
            f"smtpsend: interrupted: finishing the messages in flight (at most {INTERRUPT_GRACE:.0f}s)"
        )
        control.stop()
        abort_call.append(reactor.callLater(INTERRUPT_GRACE, control.abort))
        d: Deferred[None] = Deferred()
        interrupted.append(d)
        return d

    trigger = reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    settings = plan.settings
    embedded: EmbeddedSink | None = None
    try:
        if settings.embedded:
            embedded = await start_embedded(reactor, settings, options.get("maildir"))
            settings = embedded.settings
            tls = "cleartext, no AUTH" if settings.ignore_tls else (
                f"STARTTLS verified against a throwaway CA, AUTH as {settings.user}"
            )
            out.info(
                f"smtpsend: no --host: embedded smtpsink on 127.0.0.1:{embedded.sink.port} ({tls})"
            )
            out.info(f"smtpsend: Maildir {embedded.maildir}")
        return await _send_all(
            reactor, settings, plan, out, embedded, control, verbose=bool(options.get("verbose"))
        )
    except Exception:
        out.problem("smtpsend: internal error:\n" + traceback.format_exc().rstrip())
        return EX_SOFTWARE
    finally:
        if plan.report is not None:
            plan.report.close()
        if embedded is not None:
            await embedded.stop()
        for call in abort_call:
            if call.active():
                call.cancel()
        if interrupted:
            # Let the shutdown go on once main has returned.  The trigger
            # has run, so it must not be removed (Twisted warns about that).
            for d in interrupted:
                reactor.callLater(0, d.callback, None)
        else:
            reactor.removeSystemEventTrigger(trigger)


async def _send_all(
    reactor: Any,
    settings: ConnectionSettings,
    plan: _Plan,
    out: Console,
    embedded: EmbeddedSink | None,
    control: RunControl,
    *,
    verbose: bool,
) -> int:
    jobs = plan.jobs
    tally = Tally(total=len(jobs))
    started = reactor.seconds()
    meter = ProgressMeter(tally, started)
    last_redraw = [started - _REDRAW]
    if embedded is None:
        out.info(
            f"smtpsend: {len(jobs)} message(s) to {settings.target}"
            f" over {min(settings.connections, len(jobs))} connection(s)"
        )

    def record(outcome: Outcome) -> None:
        # What to do with a result: the report gets every one; the terminal
        # the refusals and failures, a lone message, and all with --verbose.
        tally.add(outcome)
        if plan.report is not None:
            plan.report.write(outcome)
        if verbose or outcome.status in (FAILED, PARTIAL) or (tally.total == 1 and outcome.status == SENT):
            line = f"smtpsend: [{tally.settled}/{tally.total}] {describe_outcome(outcome)}"
            if outcome.status == SENT:
                out.info(line)
            else:
                out.problem(line)
        if out.interactive:
            now = reactor.seconds()
            if now - last_redraw[0] >= _REDRAW or tally.settled == tally.total:
                last_redraw[0] = now
                out.status(meter.line(now))

    await deliver_all(
        reactor,
        _make_pool(reactor, settings, out),
        jobs,
        connections=settings.connections,
        record=record,
        notice=lambda text: out.problem(f"smtpsend: {text}"),
        control=control,
        explain=_explainer(settings),
    )
    elapsed = reactor.seconds() - started
    status = tally.exit_code()
    if embedded is not None:
        arrived = embedded.sink.capture_log.messages
        out.info(f"smtpsend: {len(arrived)} message(s) arrived in {embedded.maildir}:")
        for captured in arrived:
            out.info(f"smtpsend:   {captured.summary()}")
    out.info(summary_line(tally, elapsed, meter.rate(reactor.seconds()), status))
    return status


# -- --queue: a worker -----------------------------------------------------------------


async def _queue_main(reactor: Any, options: Mapping[str, Any], out: Console) -> int:
    """
    ``--queue URL``: deliver what a RabbitMQ queue holds until SIGTERM or
    Ctrl-C (:mod:`._queue`).  The pool never retries by itself: retries go
    through the broker, so that another worker may take them.
    """
    report: ReportWriter | None = None
    try:
        settings = resolve_settings(options, {}, "command line", reactor=reactor)
        if settings.embedded:
            raise usage.UsageError("--queue needs --host or --unix-socket: where to deliver")
        config = queue_config(
            options,
            retries=options.get("retries"),
            connections=settings.connections,
            window=WINDOW_PER_CONNECTION,
            grace=INTERRUPT_GRACE,
        )
        report = ReportWriter.open(options["report"]) if options.get("report") else None
    except usage.UsageError as e:
        out.usage_error(f"smtpsend: {e}")
        return EX_USAGE
    try:
        out.info(
            f"smtpsend: worker {config.worker_id}: delivering to {settings.target} over up to "
            f"{settings.connections} connection(s); {config.retries} retries through {config.names.queue}.retry.N"
        )
        pool = _make_pool(reactor, replace(settings, retries=0), out)
        return await run_worker(reactor, pool, config, out, report, verbose=bool(options.get("verbose")))
    except Exception:
        out.problem("smtpsend: internal error:\n" + traceback.format_exc().rstrip())
        return EX_SOFTWARE
    finally:
        if report is not None:
            report.close()


# -- --quit-after: a probe --------------------------------------------------------------


async def _connect_only(reactor: Any, settings: ConnectionSettings, kwargs: Mapping[str, Any]) -> None:
    """Open the transport (TCP or the endpoint) and close it: nothing is read or written."""
    endpoint = kwargs.get("endpoint")
    if endpoint is None:
        port = settings.port or (465 if settings.secure else 25)
        bind = (settings.local_address, 0) if settings.local_address else None
        endpoint = HostnameEndpoint(
            reactor, kwargs["host"], port, timeout=settings.connection_timeout or 120.0, bindAddress=bind
        )
    try:
        protocol = await connectProtocol(endpoint, Protocol())  # type: ignore[no-untyped-call]
    except Exception as e:
        raise ConnectionFailedError(f"cannot connect to {settings.target}: {e}") from None
    assert protocol.transport is not None
    protocol.transport.loseConnection()


def _probe_envelope(options: Mapping[str, Any]) -> Envelope:
    """The envelope ``--quit-after mail|rcpt`` tries: --from, and --to/--cc/--bcc."""
    recipients = [*options.get("to", []), *options.get("cc", []), *options.get("bcc", [])]
    if options["quit-after"] == "rcpt" and not recipients:
        raise usage.UsageError("--quit-after rcpt needs --to (or --cc, --bcc)")
    try:
        sender = bare_address(options["from"]) if options.get("from") else default_sender()
        return Envelope(sender, [bare_address(address) for address in recipients] or [sender])
    except (ValueError, SMTPConnectionError) as error:
        raise usage.UsageError(f"--quit-after {options['quit-after']}: {error}") from None


async def probe(
    reactor: Any, settings: ConnectionSettings, stage: str, out: Console, envelope: Envelope | None = None
) -> int:
    """
    ``--quit-after STAGE``: go as far as STAGE on one connection, say how
    each step went, then QUIT; send nothing.

    ``connect`` only opens the transport.  ``greeting`` and ``ehlo`` both
    end after EHLO (the library's ``connect()`` reads the greeting and says
    EHLO in one step) without STARTTLS; ``tls`` requires STARTTLS (unless
    ``--secure``); ``auth`` logs in as well; ``mail`` and ``rcpt`` then try
    the envelope (MAIL FROM, and each RCPT TO for ``rcpt``) and reset it,
    with the TLS options as given.  A refused recipient among accepted ones
    is reported and still exits 0 for ``rcpt``; all refused is a failure.

    :returns: 0 when every step up to STAGE succeeded, else the status of
        the error (69 or 75 as for a send).
    """
    kwargs = _library_options(settings, reactor, out)
    explain = _explainer(settings)
    try:
        if stage == "connect":
            await _connect_only(reactor, settings, kwargs)
            out.info(f"smtpsend: connect: ok ({settings.target})")
        else:
            if not settings.secure and stage in ("greeting", "ehlo"):
                kwargs.update(ignore_tls=True, require_tls=False, opportunistic_tls=False)
            elif not settings.secure and stage == "tls":
                kwargs.update(require_tls=True, opportunistic_tls=False)
            connection = SMTPConnection(**kwargs)
            await connection.connect()
            try:
                out.info(f"smtpsend: connect: ok ({settings.target})")
                out.info(f"smtpsend: greeting: {connection.greeting}")
                out.info(f"smtpsend: ehlo: {' '.join(sorted(connection.extensions)) or '(no extensions)'}")
                if stage in ("tls", "auth"):
                    out.info(f"smtpsend: tls: {'on' if connection.secure else 'off'}")
                if stage == "auth" or (stage in ("mail", "rcpt") and settings.user is not None):
                    await connection.login(Auth(user=settings.user, password=settings.password))
                    out.info(f"smtpsend: auth: accepted as {settings.user}")
                if envelope is not None:
                    info = await connection.probe_envelope(envelope, rcpt=stage == "rcpt")
                    out.info(f"smtpsend: mail: <{envelope.mail_from}> accepted")
                    for address, code, text in info.recipient_replies:
                        out.info(f"smtpsend: rcpt: <{address}>: {code} {' '.join(text.splitlines())}")
            finally:
                try:
                    await connection.quit()
                except SMTPConnectionError:
                    connection.close()
    except SMTPConnectionError as e:
        note = explain(e)
        out.problem(
            f"smtpsend: quit-after {stage}: {failure_stage(e)}: {e}" + (f" ({note})" if note else "")
        )
        return classify(e, connected=False)
    out.info(f"smtpsend: quit after {stage}: every step succeeded; exit status 0")
    return EX_OK
