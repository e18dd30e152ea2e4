"""
Real runs of ``python -m twisted_smtpconn`` and ``twistd -n smtpsend`` in
subprocesses, against the embedded capture server, an in-process capture
server, aiosmtpd, a server that holds its reply (Ctrl-C), and nothing at
all (connection refused).

The subprocesses find the package and the twistd dropin through
``PYTHONPATH`` set to the repository root: Twisted merges every
``twisted/plugins`` directory on ``sys.path`` into ``twisted.plugins``.
"""

from __future__ import annotations

import hashlib
import itertools
import mailbox
import re
import shutil
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from realservers.ports import free_port
from clitools import FRONT_ENDS, RUN_LIMIT, read_report, run, start
from runtools import REPO
from twisted_smtpconn._cli import EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE
from twisted_smtpconn._sink import RunningSink, SinkConfig, start_sink

EXAMPLES = REPO / "docs" / "examples"


def maildir_from_output(output: str) -> Path:
    match = re.search(r"smtpsend: Maildir (\S+)", output)
    assert match, output
    return Path(match.group(1))


def read_maildir(path: Path) -> list[Any]:
    """The messages of a Maildir, parsed with the modern policy (decoded headers)."""
    import email
    import email.policy

    box = mailbox.Maildir(
        str(path),
        factory=lambda f: email.message_from_binary_file(f, policy=email.policy.default),
        create=False,
    )
    return list(box)


def stored_body(path: Path) -> bytes:
    """A Maildir file without the sink's ``Received:`` header."""
    lines = path.read_bytes().split(b"\n")
    assert lines[0].startswith(b"Received: ")
    i = 1
    while lines[i].startswith(b"\t"):
        i += 1
    return b"\n".join(lines[i:])


# -- servers -----------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def sink(tmp_path: Path) -> AsyncIterator[RunningSink]:
    """An in-process capture server without TLS that refuses some recipients."""
    from twisted.internet import reactor

    running = await start_sink(
        reactor,
        SinkConfig(
            maildir=tmp_path / "sink-maildir",
            reject=frozenset({"refused@example.test"}),
            defer=frozenset({"later@example.test"}),
        ),
    )
    yield running
    await running.stop()


class Recorder:
    """aiosmtpd handler: refuses ``refused@`` (550) and ``later@`` (450)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("refused@"):
            return "550 5.1.1 No such user here"
        if address.startswith("later@"):
            return "450 4.2.1 Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Queued"


@pytest.fixture
def aiosmtpd_recorder() -> Iterator[tuple[Recorder, int]]:
    """
    aiosmtpd in its own thread on a port picked here (``port=0`` fails).

    To be replaced by ``tests/realservers``' ``aiosmtpd_server`` fixture
    once it exists.
    """
    from aiosmtpd.controller import Controller

    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield recorder, port
    finally:
        controller.stop()


class SessionCounter:
    """
    aiosmtpd's view of the client's connections: how many were open at
    once, at most, and how many messages each one that carried mail
    carried.  (The controller's own start-up probe is a connection too,
    before any test traffic, that carries none.)
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.serials = itertools.count(1)
        self.open: set[int] = set()
        self.most_at_once = 0
        self.messages: dict[int, int] = {}

    def opened(self) -> int:
        with self.lock:
            session = next(self.serials)
            self.open.add(session)
            self.most_at_once = max(self.most_at_once, len(self.open))
            return session

    def closed(self, session: int) -> None:
        with self.lock:
            self.open.discard(session)

    def carried(self, session: int) -> None:
        with self.lock:
            self.messages[session] = self.messages.get(session, 0) + 1


@pytest.fixture
def counting_aiosmtpd() -> Iterator[tuple[SessionCounter, Recorder, int]]:
    """aiosmtpd (a Recorder) that also counts the client's sessions."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    counter = SessionCounter()

    class CountingRecorder(Recorder):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            counter.carried(server.counted_as)
            return await super().handle_DATA(server, session, envelope)

    class CountingSMTP(SMTP):
        counted_as = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if not self.counted_as:  # (STARTTLS calls it again)
                self.counted_as = counter.opened()

        def connection_lost(self, error: Exception | None) -> None:
            counter.closed(self.counted_as)
            super().connection_lost(error)

    class CountingController(Controller):
        def factory(self) -> SMTP:
            return CountingSMTP(self.handler, **self.SMTP_kwargs)

    recorder = CountingRecorder()
    port = free_port()
    controller = CountingController(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield counter, recorder, port
    finally:
        controller.stop()


class _Holding:
    """
    A scripted SMTP server that withholds its reply to the first message's
    final "." until told to answer; later messages are answered at once.
    """

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.first_data: Deferred[None] = Deferred()
        self.held: Any = None
        self.messages = 0
        self.quits = 0

    def factory(self) -> Any:
        from twisted.internet.protocol import Factory
        from twisted.protocols.basic import LineOnlyReceiver

        server = self

        class Protocol(LineOnlyReceiver):
            delimiter = b"\r\n"

            def connectionMade(self) -> None:
                self.in_data = False
                self.sendLine(b"220 holding ESMTP")

            def lineReceived(self, line: bytes) -> None:
                if self.in_data:
                    if line == b".":
                        self.in_data = False
                        server.messages += 1
                        if server.held is None:
                            server.held = self
                            server.first_data.callback(None)
                        else:
                            self.sendLine(b"250 2.0.0 ok")
                    return
                verb = line[:4].upper()
                if verb == b"EHLO":
                    self.sendLine(b"250-holding\r\n250 8BITMIME")
                elif verb == b"DATA":
                    self.in_data = True
                    self.sendLine(b"354 go ahead")
                elif verb == b"QUIT":
                    server.quits += 1
                    self.sendLine(b"221 bye")
                    self.transport.loseConnection()
                else:
                    self.sendLine(b"250 ok")

        return Factory.forProtocol(Protocol)


@pytest_twisted.async_yield_fixture
async def holding_server() -> AsyncIterator[tuple[_Holding, int]]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    server = _Holding()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.factory())
    yield server, port.getHost().port
    if server.held is not None and server.held.transport is not None:
        server.held.transport.loseConnection()
    await port.stopListening()


# -- the embedded default -----------------------------------------------------------


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest_twisted.ensureDeferred
async def test_embedded_default_cleartext(front_end: str, tmp_path: Path) -> None:
    """Without --host: a local sink is started, the message lands in its Maildir."""
    result = await run(
        front_end,
        ["--subject", "hi", "--body", "hello", "--to", "you@example.test", "--ignore-tls",
         "--report", str(tmp_path / "r.jsonl")],
        tmp_path,
    )
    output = result.out + result.err
    assert result.code == EX_OK, output
    maildir = maildir_from_output(output)
    [message] = read_maildir(maildir)
    assert message["Subject"] == "hi"
    assert message["To"] == "you@example.test"
    assert message["Message-ID"] and message["Date"]
    assert message.get_content().strip() == "hello"
    assert "1 message(s) arrived in" in output
    assert "-> <you@example.test>" in output
    [line] = read_report(tmp_path / "r.jsonl")
    assert line["status"] == "sent" and line["accepted"] == ["you@example.test"]
    # The throwaway key material is gone; the Maildir stays (until we
    # clean up after ourselves here).
    assert maildir.parent.name.startswith("smtpsend-")
    assert [p.name for p in maildir.parent.iterdir()] == ["Maildir"]
    shutil.rmtree(maildir.parent)


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest_twisted.ensureDeferred
async def test_embedded_default_full_path(front_end: str, tmp_path: Path) -> None:
    """The README's first command: STARTTLS (verified) and AUTH to the embedded sink."""
    result = await run(
        front_end,
        ["--subject", "hi", "--body", "hello", "--to", "you@example.test", "--maildir", str(tmp_path / "md")],
        tmp_path,
    )
    output = result.out + result.err
    assert result.code == EX_OK, output
    assert "over TLS, AUTH as smtpsend" in output
    [message] = read_maildir(maildir_from_output(output))
    assert message["Subject"] == "hi"
    assert "ESMTPSA" in message["Received"]


@pytest.mark.parametrize(
    "variant",
    [pytest.param(["--ignore-tls"], id="cleartext"),
     pytest.param([], id="full-path")],
)
@pytest.mark.parametrize("name", ["script.toml", "script.json"])
@pytest_twisted.ensureDeferred
async def test_documented_scripts_run(name: str, variant: list[str], tmp_path: Path) -> None:
    report = tmp_path / "r.jsonl"
    result = await run(
        "python -m",
        ["--script", str(EXAMPLES / name), "--report", str(report), "--maildir", str(tmp_path / "md"), *variant],
        tmp_path,
    )
    assert result.code == EX_OK, result.out + result.err
    maildir = maildir_from_output(result.out)
    subjects = sorted(str(m["Subject"]) for m in read_maildir(maildir))
    assert subjects == sorted(["Welcome", "Your invoice", "Grüße"])
    lines = read_report(report)
    assert [line["status"] for line in lines] == ["sent"] * 3
    invoice = next(line for line in lines if line["from"] == "billing@example.test")
    assert invoice["to"] == ["bob@example.test", "carol@example.test"]
    assert invoice["dsn"] == {"ret": "HDRS", "envid": "invoice-42", "notify": ["FAILURE", "DELAY"]}


@pytest.mark.parametrize(
    "variant",
    [pytest.param(["--ignore-tls"], id="cleartext"),
     pytest.param([], id="full-path")],
)
@pytest_twisted.ensureDeferred
async def test_spool_of_500_over_4_connections(variant: list[str], tmp_path: Path) -> None:
    """
    500 messages, 4 connections: every message arrives intact, exactly once,
    and no connection carries more than the 100 messages a connection is
    used for by default.
    """
    spool = tmp_path / "spool"
    spool.mkdir()
    expected: list[str] = []
    for i in range(500):
        body = "".join(
            f"{'.' if (i + n) % 7 == 0 else ''}line {n} of message {i} {'x' * ((i * 13 + n) % 90)}\r\n"
            for n in range(1 + i % 25)
        )
        data = (
            f"From: sender@example.test\r\nTo: rcpt{i % 10}@example.test\r\n"
            f"Subject: message {i}\r\nMessage-ID: <{i}@spool.example.test>\r\n\r\n{body}"
        ).encode()
        (spool / f"{i:04d}.eml").write_bytes(data)
        expected.append(hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest())
    maildir = tmp_path / "Maildir"
    report = tmp_path / "r.jsonl"
    result = await run(
        "python -m",
        ["--spool", str(spool), "--connections", "4", "--maildir", str(maildir), "--report", str(report), *variant],
        tmp_path,
    )
    assert result.code == EX_OK, result.err[-3000:]
    stored = [hashlib.sha256(stored_body(p)).hexdigest() for p in (maildir / "new").iterdir()]
    assert sorted(stored) == sorted(expected)
    lines = read_report(report)
    assert len(lines) == 500
    assert {line["status"] for line in lines} == {"sent"}
    per_connection = Counter(line["connection"] for line in lines)
    assert max(per_connection.values()) <= 100
    assert len(per_connection) >= 5 and min(per_connection) == 1
    assert {line["attempts"] for line in lines} == {1}
    assert sorted(line["index"] for line in lines) == list(range(1, 501))
    assert "500 message(s): 500 sent" in result.out


# -- against other servers ------------------------------------------------------------


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest_twisted.ensureDeferred
async def test_aiosmtpd_all_accepted(
    front_end: str, tmp_path: Path, aiosmtpd_recorder: tuple[Recorder, int]
) -> None:
    recorder, port = aiosmtpd_recorder
    message = tmp_path / "m.eml"
    message.write_bytes(b"From: a@example.test\nTo: b@example.test\nSubject: plain\n\n.dot line\nend\n")
    result = await run(front_end, ["--host", "127.0.0.1", "--port", str(port), "--message", str(message)], tmp_path)
    assert result.code == EX_OK, result.out + result.err
    [(sender, recipients, content)] = recorder.messages
    assert (sender, recipients) == ("a@example.test", ["b@example.test"])
    assert content.replace(b"\r\n", b"\n") == message.read_bytes()


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest_twisted.ensureDeferred
async def test_aiosmtpd_partial_rejection(
    front_end: str, tmp_path: Path, aiosmtpd_recorder: tuple[Recorder, int]
) -> None:
    """Some recipients refused with 550: the message goes to the others, exit 65."""
    recorder, port = aiosmtpd_recorder
    report = tmp_path / "r.jsonl"
    result = await run(
        front_end,
        ["--host", "127.0.0.1", "--port", str(port), "--from", "a@example.test",
         "--to", "ok@example.test", "--to", "refused@example.test",
         "--subject", "partial", "--body", "b", "--report", str(report)],
        tmp_path,
    )
    assert result.code == EX_DATAERR, result.out + result.err
    assert [r for _, r, _ in recorder.messages] == [["ok@example.test"]]
    [line] = read_report(report)
    assert line["status"] == "partial"
    assert line["accepted"] == ["ok@example.test"]
    [refusal] = line["rejected"]
    assert refusal["recipient"] == "refused@example.test"
    assert refusal["code"] == 550
    assert line["exit_code"] == EX_DATAERR
    assert isinstance(line["message_time"], float) and line["started"].endswith("Z")


@pytest.mark.parametrize("max_messages", [1000, 5])
@pytest_twisted.ensureDeferred
async def test_connections_limit_seen_by_the_server(
    max_messages: int, tmp_path: Path, counting_aiosmtpd: tuple[SessionCounter, Recorder, int]
) -> None:
    """
    --connections 3: the server never sees more than 3 connections at once;
    with --max-messages-per-connection 5 none carries more than 5 messages
    and the pool opens new ones as the old are spent.
    """
    counter, recorder, port = counting_aiosmtpd
    spool = tmp_path / "spool"
    spool.mkdir()
    for i in range(40):
        (spool / f"{i:02d}.eml").write_bytes(
            f"From: a@example.test\r\nTo: r{i}@example.test\r\nSubject: {i}\r\n\r\nbody {i}\r\n".encode()
        )
    report = tmp_path / "r.jsonl"
    result = await run(
        "python -m",
        ["--host", "127.0.0.1", "--port", str(port), "--spool", str(spool), "--report", str(report),
         "--connections", "3", "--max-messages-per-connection", str(max_messages)],
        tmp_path,
    )
    assert result.code == EX_OK, result.out + result.err
    assert sorted(r for _, [r], _ in recorder.messages) == sorted(f"r{i}@example.test" for i in range(40))
    assert 1 <= counter.most_at_once <= 3
    carried = sorted(counter.messages.values())
    assert sum(carried) == 40 and max(carried) <= max_messages
    lines = read_report(report)
    # Each of the pool's connections is one server session.
    assert len({line["connection"] for line in lines}) == len(counter.messages)
    if max_messages == 1000:
        # The first messages were handed over together: all 3 connections
        # opened at once, and none was ever replaced.
        assert len(counter.messages) == 3
    else:
        assert len(counter.messages) >= 40 // 5


@pytest_twisted.ensureDeferred
async def test_retries_option_reaches_the_pool(
    tmp_path: Path, aiosmtpd_recorder: tuple[Recorder, int]
) -> None:
    """--retries 1: a 450 refusal before the data is tried once more, then reported."""
    recorder, port = aiosmtpd_recorder
    report = tmp_path / "r.jsonl"
    result = await run(
        "python -m",
        ["--host", "127.0.0.1", "--port", str(port), "--to", "later@example.test", "--subject", "s",
         "--body", "b", "--retries", "1", "--report", str(report)],
        tmp_path,
    )
    assert result.code == EX_TEMPFAIL, result.out + result.err
    [line] = read_report(report)
    assert (line["status"], line["attempts"], line["error"]["response_code"]) == ("failed", 2, 450)
    assert recorder.messages == []


@pytest_twisted.ensureDeferred
async def test_sink_temporary_refusal_is_75(tmp_path: Path, sink: RunningSink) -> None:
    result = await run(
        "python -m",
        ["--host", "127.0.0.1", "--port", str(sink.port), "--to", "later@example.test",
         "--subject", "s", "--body", "b"],
        tmp_path,
    )
    assert result.code == EX_TEMPFAIL, result.out + result.err
    assert sink.capture_log.messages == []


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest_twisted.ensureDeferred
async def test_sink_mixed_results(front_end: str, tmp_path: Path, sink: RunningSink) -> None:
    """A spool where one message is refused outright and one is fine: exit 65, both reported."""
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "1.eml").write_bytes(b"From: a@example.test\r\nTo: refused@example.test\r\nSubject: one\r\n\r\nx\r\n")
    (spool / "2.eml").write_bytes(b"From: a@example.test\r\nTo: fine@example.test\r\nSubject: two\r\n\r\ny\r\n")
    (spool / "3.eml").write_bytes(b"From: a@example.test\r\nTo: refused@example.test\r\nSubject: 3\r\n\r\nz\r\n")
    report = tmp_path / "r.jsonl"
    result = await run(
        front_end,
        ["--host", "127.0.0.1", "--port", str(sink.port), "--spool", str(spool), "--report", str(report)],
        tmp_path,
    )
    assert result.code == EX_DATAERR, result.out + result.err
    lines = sorted(read_report(report), key=lambda line: line["index"])
    assert [(line["status"], line["error"] and line["error"]["code"]) for line in lines] == [
        ("failed", "EENVELOPE"),
        ("sent", None),
        ("failed", "EENVELOPE"),
    ]
    assert [m.rcpt_to for m in sink.capture_log.messages] == [("fine@example.test",)]


@pytest_twisted.ensureDeferred
async def test_message_from_stdin(tmp_path: Path, sink: RunningSink) -> None:
    data = b"From: a@example.test\nTo: in@example.test\nSubject: stdin\n\nfrom a pipe\n"
    result = await run("python -m", ["--host", "127.0.0.1", "--port", str(sink.port), "--message", "-"],
                       tmp_path, stdin=data)
    assert result.code == EX_OK, result.out + result.err
    [captured] = sink.capture_log.messages
    assert captured.rcpt_to == ("in@example.test",)
    assert stored_body(captured.path) == data


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest_twisted.ensureDeferred
async def test_connection_refused_is_69(front_end: str, tmp_path: Path) -> None:
    report = tmp_path / "r.jsonl"
    result = await run(
        front_end,
        ["--host", "127.0.0.1", "--port", str(free_port()), "--to", "a@example.test",
         "--subject", "s", "--report", str(report), "--connection-timeout", "20"],
        tmp_path,
    )
    assert result.code == EX_UNAVAILABLE, result.out + result.err
    [line] = read_report(report)
    assert line["status"] == "not-sent"
    assert line["error"]["code"] == "ECONNECTION"


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest.mark.parametrize(
    "args",
    [["--subject", "no recipient"], ["--to", "a@x.test", "--subject", "s", "--password", "x"],
     ["--to", "a@x.test", "--subject", "s", "--port", "99999"], ["--script", "/nonexistent.toml"]],
)
@pytest_twisted.ensureDeferred
async def test_bad_usage_is_64_with_one_line(front_end: str, args: list[str], tmp_path: Path) -> None:
    result = await run(front_end, args, tmp_path)
    assert result.code == EX_USAGE, result.out + result.err
    problem = [line for line in result.err.splitlines() if line.startswith("smtpsend: ")]
    assert len(problem) == 1, result.err
    if front_end == "python -m":
        assert result.err.count("\n") == 1
        assert result.out == ""


# -- Ctrl-C ---------------------------------------------------------------------------


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest_twisted.ensureDeferred
async def test_interrupt_finishes_in_flight_and_reports_the_rest(
    front_end: str, tmp_path: Path, holding_server: tuple[_Holding, int]
) -> None:
    """
    SIGINT during the first of 5 messages: it completes, 4 are reported not
    sent.  ``python -m`` exits 75; twistd then re-raises SIGINT (its own
    convention, so that a calling shell sees the interrupt).
    """
    server, port = holding_server
    spool = tmp_path / "spool"
    spool.mkdir()
    for i in range(5):
        (spool / f"{i}.eml").write_bytes(f"From: a@example.test\r\nTo: b@example.test\r\nSubject: {i}\r\n\r\nx\r\n".encode())
    report = tmp_path / "r.jsonl"
    process = start(
        FRONT_ENDS[front_end] + ["--host", "127.0.0.1", "--port", str(port), "--spool", str(spool),
                                   "--report", str(report)],
        tmp_path,
    )
    from twisted.internet import reactor

    first = server.first_data
    first.addTimeout(RUN_LIMIT, reactor)
    await first
    process.transport.signalProcess("INT")
    await process.wait_for(b"interrupted: finishing the messages in flight")
    server.held.sendLine(b"250 2.0.0 ok")
    result = await process.finish()
    if front_end == "twistd":
        assert (result.code, result.signal) == (None, 2), result.out + result.err
        assert "exit status 75" in result.out
    else:
        assert result.code == EX_TEMPFAIL, result.out + result.err
    assert server.messages == 1
    assert server.quits == 1  # the connection was closed politely
    lines = sorted(read_report(report), key=lambda line: line["index"])
    assert [line["status"] for line in lines] == ["sent"] + ["not-sent"] * 4
    assert {line["error"]["code"] for line in lines[1:]} == {"EINTERRUPTED"}
    assert "1 sent, 0 partly refused, 0 failed, 4 not sent" in result.out
    # Not sent lines are in the report only (and on the terminal with --verbose).
    assert "interrupted before sending" not in result.out + result.err


@pytest_twisted.ensureDeferred
async def test_embedded_settings_reach_the_embedded_server(tmp_path: Path) -> None:
    """
    The CA, user and password the embedded run hands to its client really
    work: an independent client (smtplib) uses exactly those settings for
    STARTTLS (verified) and AUTH, and the message lands in the Maildir.
    """
    import smtplib
    import ssl

    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    from twisted_smtpconn._cli._run import start_embedded
    from twisted_smtpconn._cli._settings import ConnectionSettings

    embedded = await start_embedded(reactor, ConnectionSettings(), str(tmp_path / "Maildir"))
    s = embedded.settings
    try:
        assert (s.host, s.port, s.require_tls, s.user) == ("127.0.0.1", embedded.sink.port, True, "smtpsend")
        assert s.ca_certs is not None and s.password

        def talk() -> None:
            with smtplib.SMTP(s.host, s.port, timeout=10) as client:
                client.starttls(context=ssl.create_default_context(cafile=s.ca_certs))
                client.login(s.user, s.password)
                client.sendmail("a@example.test", ["b@example.test"], b"Subject: settings\r\n\r\nok\r\n")

        d = deferToThread(talk)
        d.addTimeout(RUN_LIMIT, reactor)
        await d
        [captured] = embedded.sink.capture_log.messages
        assert (captured.tls, captured.user) == (True, "smtpsend")
        assert captured.path.parent.parent == tmp_path / "Maildir"
    finally:
        await embedded.stop()
    assert not Path(s.ca_certs).exists()  # key material removed at stop
    plain = await start_embedded(reactor, ConnectionSettings(ignore_tls=True), str(tmp_path / "plain"))
    try:
        assert (plain.settings.user, plain.settings.require_tls, plain.settings.ca_certs) == (None, False, None)
    finally:
        await plain.stop()
