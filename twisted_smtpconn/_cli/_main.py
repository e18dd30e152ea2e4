"""
``async def main(reactor, options) -> int``: the one implementation behind
``twistd smtpsend`` and ``python -m twisted_smtpconn``.

Steps: load the script and the jobs and check the settings (any problem:
one line, exit 64, nothing sent); start the embedded server if no host is
configured; send the jobs through one ``SMTPPool`` of up to
``--connections`` connections (:mod:`._workers`), reporting each; print
the summary (and, for the embedded server, what arrived); and return the
sysexits status.

Ctrl-C: a "before shutdown" trigger stops the run taking new jobs and
holds the reactor's shutdown until the sends in flight have finished (at
most :data:`INTERRUPT_GRACE` seconds, then the connections are dropped);
the jobs never started are reported as not sent, and the exit status is
75 unless something more serious happened.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python import usage

from .. import Auth, SMTPPool
from ._console import Console, ProgressMeter, StreamConsole, format_duration
from ._embedded import EmbeddedSink, start_embedded
from ._exitcodes import EX_SOFTWARE, EX_USAGE, describe
from ._jobs import Job
from ._report import ReportWriter
from ._results import Outcome, Tally
from ._script import Script, load_script
from ._settings import ConnectionSettings, resolve_settings
from ._sources import collect_jobs
from ._workers import RunControl, deliver_all

__all__ = ["main", "INTERRUPT_GRACE"]

#: Seconds after Ctrl-C that sends in flight may take before being cut.
INTERRUPT_GRACE = 15.0

#: Least seconds between two redraws of the progress line.
_REDRAW = 0.2


def _prepare(
    options: Mapping[str, Any], stdin: BinaryIO | None
) -> tuple[ConnectionSettings, list[Job]]:
    script: Script | None = None
    where = "command line"
    if options.get("script") is not None:
        script = load_script(Path(options["script"]))
        where = script.path.name
    settings = resolve_settings(options, script.connection if script else {}, where)
    jobs = collect_jobs(options, script, use_8bit_mime=settings.use_8bit_mime, stdin=stdin)
    return settings, jobs


def _make_pool(reactor: Any, settings: ConnectionSettings, logger: object = None) -> SMTPPool:
    """The run's pool: every connection made, and logged in, the same way."""
    auth = None if settings.user is None else Auth(user=settings.user, password=settings.password)
    kwargs = settings.connection_kwargs()
    if logger is not None:
        kwargs["logger"] = logger
    return SMTPPool(reactor=reactor, auth=auth, **settings.pool_kwargs(), **kwargs)


def _check_constructible(reactor: Any, settings: ConnectionSettings) -> None:
    """Let ``SMTPPool`` reject contradictory settings before anything starts."""
    try:
        # Never used: it opens nothing until asked to send.
        _make_pool(reactor, settings)
    except (ValueError, TypeError) as e:
        raise usage.UsageError(str(e)) from None


def _describe_outcome(outcome: Outcome) -> str:
    job = outcome.job
    if outcome.status in ("sent", "partial"):
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
    :param stdin: where ``--message -`` reads (default: ``sys.stdin``).
    :returns: 0, or 64, 65, 69, 70 or 75 (see ``docs/twistd.rst``).
    """
    out: Console = console if console is not None else StreamConsole()
    try:
        settings, jobs = _prepare(options, stdin)
        _check_constructible(reactor, settings)
        report = ReportWriter.open(options["report"]) if options.get("report") else None
    except usage.UsageError as e:
        out.usage_error(f"smtpsend: {e}")
        return EX_USAGE

    control = RunControl()
    interrupted: list[Deferred[None]] = []
    abort_call: list[IDelayedCall] = []

    def before_shutdown() -> Deferred[None]:
        # Ctrl-C (or any reactor shutdown): stop taking jobs and hold the
        # shutdown until main has finished and reported.
        control.stop()
        out.problem(
            f"smtpsend: interrupted: finishing the messages in flight (at most {INTERRUPT_GRACE:.0f}s)"
        )
        abort_call.append(reactor.callLater(INTERRUPT_GRACE, control.abort))
        d: Deferred[None] = Deferred()
        interrupted.append(d)
        return d

    trigger = reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
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
        return await _send_all(reactor, settings, jobs, out, report, embedded, control)
    except Exception:
        out.problem("smtpsend: internal error:\n" + traceback.format_exc().rstrip())
        return EX_SOFTWARE
    finally:
        if report is not None:
            report.close()
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
    jobs: list[Job],
    out: Console,
    report: ReportWriter | None,
    embedded: EmbeddedSink | None,
    control: RunControl,
) -> int:
    tally = Tally(total=len(jobs))
    started = reactor.seconds()
    meter = ProgressMeter(tally, started)
    last_redraw = [started - _REDRAW]
    if embedded is None:
        out.info(
            f"smtpsend: {len(jobs)} message(s) to {settings.host}:{settings.port or ('465' if settings.secure else '25')}"
            f" over {min(settings.connections, len(jobs))} connection(s)"
        )

    def record(outcome: Outcome) -> None:
        tally.add(outcome)
        if report is not None:
            report.write(outcome)
        line = f"smtpsend: [{tally.settled}/{tally.total}] {_describe_outcome(outcome)}"
        if out.interactive:
            if outcome.status != "sent":
                out.problem(line)
            now = reactor.seconds()
            if now - last_redraw[0] >= _REDRAW or tally.settled == tally.total:
                last_redraw[0] = now
                out.status(meter.line(now))
        elif outcome.status == "sent":
            out.info(line)
        else:
            out.problem(line)

    pool = _make_pool(reactor, settings, out.library_logger() if settings.debug else None)
    await deliver_all(
        reactor,
        pool,
        jobs,
        connections=settings.connections,
        record=record,
        notice=lambda text: out.problem(f"smtpsend: {text}"),
        control=control,
    )
    elapsed = reactor.seconds() - started
    status = tally.exit_code()
    c = tally.counts
    out.info(
        f"smtpsend: {tally.total} message(s): {c['sent']} sent, {c['partial']} partly refused, "
        f"{c['failed']} failed, {c['not-sent']} not sent; "
        f"{format_duration(elapsed)}, {meter.rate(reactor.seconds()):.1f} msg/s"
    )
    if embedded is not None:
        arrived = embedded.sink.capture_log.messages
        out.info(f"smtpsend: {len(arrived)} message(s) arrived in {embedded.maildir}:")
        for captured in arrived:
            out.info(f"smtpsend:   {captured.summary()}")
    out.info(f"smtpsend: exit status {status} ({describe(status)})")
    return status
