"""
``smtpsend --queue`` (workers fed by RabbitMQ) and ``enqueue``, against a
private RabbitMQ node (the ``rabbitmq`` fixture) and real SMTP servers.

The workers are real subprocesses (``python -m twisted_smtpconn --queue``),
stopped with SIGTERM (exit status 0) or killed with SIGKILL; the messages
are checked where they arrive (aiosmtpd records each message's bytes, and
the test compares them with what was queued), and the result records on
the ``Q.results`` exchange are read back through a queue bound to it.

``SMTPCONN_QUEUE_MESSAGES`` scales the big run (default 5000 messages over
three workers); the fault runs (``kill -9``, broker restart) use a fifth of
it, at least 300.  Each test prints its figures (sent, delivered,
duplicated, lost); run with ``-s`` to see them.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]

from realservers.aiosmtpd_peer import AiosmtpdServer, RecordingHandler
from realservers.rabbitmq_peer import RabbitNode
from runtools import subprocess_env, twistd_command

pika = pytest.importorskip("pika")

#: Messages of the big run.
SCALE = int(os.environ.get("SMTPCONN_QUEUE_MESSAGES", "5000"))

#: Messages of each fault run.
FAULT_SCALE = max(300, SCALE // 5)

#: Upper bound of any wait in these tests, seconds.
LIMIT = 180.0


# -- helpers: the broker, seen from the test ------------------------------------------


def _blocking(node: RabbitNode) -> Any:
    return pika.BlockingConnection(pika.URLParameters(node.url))


def bind_results(node: RabbitNode, queue: str) -> str:
    """A queue of our own bound to ``queue``'s results exchange (declared as the worker does)."""
    name = f"test-results-{uuid.uuid4().hex[:8]}"
    with _blocking(node) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange=f"{queue}.results", exchange_type="fanout", durable=True)
        channel.queue_declare(queue=name, durable=True)
        channel.queue_bind(queue=name, exchange=f"{queue}.results")
    return name


def drain(node: RabbitNode, queue: str) -> list[tuple[Any, bytes]]:
    """Take every message now in ``queue``: (properties, body)."""
    out = []
    with _blocking(node) as connection:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue=queue, auto_ack=True)
            if method is None:
                return out
            out.append((properties, body))


def depth(node: RabbitNode, queue: str) -> int:
    """Messages ready in ``queue`` (0 if it does not exist)."""
    with _blocking(node) as connection:
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0


def publish(node: RabbitNode, queue: str, messages: list[tuple[bytes, dict[str, Any], str]]) -> None:
    """Publish in the queue format, as a producer in another language would (plain pika).

    Each message gets ``correlation_id`` ``"corr-" + message_id`` (a property
    the worker's copies keep).
    """
    with _blocking(node) as connection:
        channel = connection.channel()
        channel.queue_declare(queue=queue, durable=True)
        channel.confirm_delivery()
        for body, headers, message_id in messages:
            channel.basic_publish(
                exchange="",
                routing_key=queue,
                body=body,
                properties=pika.BasicProperties(
                    message_id=message_id, headers=headers, delivery_mode=2, correlation_id=f"corr-{message_id}"
                ),
            )


class Results:
    """The result records read so far from a bound queue."""

    def __init__(self, node: RabbitNode, queue: str) -> None:
        self._node = node
        self._queue = queue
        self.records: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        self.records += [json.loads(body) for _, body in drain(self._node, self._queue)]
        return self.records

    def final(self) -> dict[str, dict[str, Any]]:
        """The last final record of each message id."""
        out: dict[str, dict[str, Any]] = {}
        for record in self.records:
            if record["final"]:
                out[record["message_id"]] = record
        return out


def wait_until(condition: Callable[[], bool], what: str, limit: float = LIMIT, step: float = 0.25) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:.0f}s waiting for {what}")
        time.sleep(step)


# -- helpers: workers ------------------------------------------------------------------


@dataclass
class Worker:
    """A ``python -m twisted_smtpconn --queue`` subprocess."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, and the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)


@dataclass
class Workers:
    """Starts workers; kills any left at teardown."""

    directory: Path
    started: list[Worker] = field(default_factory=list)

    def start(
        self,
        node: RabbitNode,
        queue: str,
        server_port: int,
        *extra: str,
        name: str = "w",
        twistd: bool = False,
        url: str | None = None,
    ) -> Worker:
        log = self.directory / f"{name}-{len(self.started)}.log"
        front = [*twistd_command(), "-n", "--pidfile=", "smtpsend"] if twistd else [sys.executable, "-m", "twisted_smtpconn"]
        argv = [
            *front,
            "--queue", url or node.url, "--queue-name", queue,
            "--host", "127.0.0.1", "--port", str(server_port),
            "--worker-id", f"{name}{len(self.started)}",
            *extra,
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.directory, env=subprocess_env(),
            )
        worker = Worker(process, log)
        self.started.append(worker)
        return worker


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        for worker in pool.started:
            if worker.process.poll() is None:
                worker.kill()


def _queue_name() -> str:
    return f"mail-{uuid.uuid4().hex[:8]}"


def _make_spool(directory: Path, count: int, tag: str) -> dict[int, bytes]:
    """``count`` messages as .eml files; their bytes by sequence number."""
    directory.mkdir()
    contents = {}
    for seq in range(count):
        data = (
            f"From: Sender <sender@example.test>\r\n"
            f"To: rcpt{seq % 17}@example.test\r\n"
            f"Message-ID: <{seq}.{tag}@example.test>\r\n"
            f"X-Seq: {seq}\r\n"
            f"Subject: queue test {seq}\r\n"
            f"\r\n"
            f"body of {seq} {hashlib.sha256(f'{tag}{seq}'.encode()).hexdigest()}\r\n"
        ).encode()
        (directory / f"{seq:06d}.eml").write_bytes(data)
        contents[seq] = data
    return contents


def _enqueue_spool(node: RabbitNode, queue: str, spool: Path, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "twisted_smtpconn", "enqueue", "--queue", node.url, "--queue-name", queue,
         "--spool", str(spool)],
        capture_output=True, text=True, cwd=cwd, env=subprocess_env(), timeout=LIMIT,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def _census(server: AiosmtpdServer, contents: dict[int, bytes]) -> tuple[collections.Counter[int], int]:
    """How often each sequence number arrived, and how many arrived with other bytes."""
    seen: collections.Counter[int] = collections.Counter()
    altered = 0
    for message in server.messages:
        seq_header = message.header("X-Seq")
        if seq_header is None:
            continue
        seq = int(seq_header)
        seen[seq] += 1
        if message.sha256 != hashlib.sha256(contents[seq]).hexdigest():
            altered += 1
    return seen, altered


def _figures(label: str, sent: int, seen: collections.Counter[int]) -> tuple[int, int]:
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    lost = sum(1 for seq in range(sent) if seen[seq] == 0)
    print(
        f"\n[queue figures] {label}: sent {sent}, delivered {sum(seen.values())} "
        f"({len(seen)} distinct), duplicated {duplicated}, lost {lost}"
    )
    return duplicated, lost


# -- the message format, without a broker -----------------------------------------------


def test_parse_mail_envelope_from_headers_and_table() -> None:
    from twisted_smtpconn._cli._queue import parse_mail

    body = b"From: a@example.test\r\nTo: b@example.test\r\nBcc: hidden@example.test\r\n\r\nhi\r\n"
    parsed = parse_mail(body, None, "m1")
    assert parsed.envelope.mail_from == "a@example.test"
    assert set(parsed.envelope.rcpt_to) == {"b@example.test", "hidden@example.test"}
    assert b"Bcc" not in parsed.data and b"hidden" not in parsed.data
    explicit = parse_mail(body, {"mail_from": "bounce@example.test", "rcpt_to": ["x@example.test"], "dsn": {"notify": ["FAILURE"], "envid": "e1"}}, "m2")
    assert explicit.envelope.mail_from == "bounce@example.test"
    assert explicit.envelope.rcpt_to == ("x@example.test",)
    assert explicit.data == body  # sent unchanged when the envelope is given
    assert explicit.envelope.dsn is not None and explicit.envelope.dsn.notify == ("FAILURE",)


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"", None, "empty"),
        (b"Subject: nobody\r\n\r\nx\r\n", None, "no usable envelope"),
        (b"To: b@example.test\r\n\r\nx\r\n", {"rcpt_to": 42}, "rcpt_to must be an array"),
        (b"To: b@example.test\r\n\r\nx\r\n", {"rcpt_to": []}, "rcpt_to is empty"),
        (b"To: b@example.test\r\n\r\nx\r\n", {"dsn": {"colour": "red"}}, "unknown key"),
        (b"To: b@example.test\r\n\r\nx\r\n", {"dsn": {"ret": "EVERYTHING"}}, "dsn"),
        (b"To: b@example.test\r\n\r\nx\r\n", {"rcpt_to": ["not an address"]}, "no usable envelope"),
    ],
)
def test_parse_mail_refuses_malformed(body: bytes, headers: dict[str, Any] | None, reason: str) -> None:
    from twisted_smtpconn._cli._queue import Malformed, parse_mail

    with pytest.raises(Malformed, match=reason):
        parse_mail(body, headers, "m")


def _trace(error: Exception, *, attempts: int = 1, connection: int = 1, unknown: bool = False) -> Any:
    from twisted_smtpconn import SendTrace

    if unknown:
        error.delivery_unknown = True  # type: ignore[attr-defined]
    return SendTrace(None, error, attempts, connection)


def _decisions() -> list[tuple[str, Any, dict[str, Any], str]]:
    from twisted_smtpconn import (
        ConnectionFailedError,
        EnvelopeError,
        MessageError,
        ProtocolError,
        StreamError,
        TLSError,
    )

    def reply(cls: type, code: int) -> Exception:
        error: Exception = cls(f"refused {code}", response=f"{code} no", response_code=code)
        return error

    lost = ConnectionFailedError("connection lost")
    return [
        ("final dot, no reply", _trace(ConnectionFailedError("gone"), unknown=True), {}, "review"),
        ("never started, stopping", _trace(ProtocolError("closed"), attempts=0, connection=0), {"stopping": True}, "requeued"),
        ("cut by our grace period", _trace(ConnectionFailedError("cut")), {"aborted": True}, "requeued"),
        ("TLS failed: not the message's fault", _trace(TLSError("bad cert"), connection=0), {}, "hold"),
        ("refused connection, retries left", _trace(ConnectionFailedError("refused"), connection=0), {"attempts": 3}, "retry"),
        ("refused connection, none left", _trace(ConnectionFailedError("refused"), connection=0), {"attempts": 4}, "dead"),
        ("lost mid-transaction", _trace(lost), {}, "retry"),
        ("451 after DATA", _trace(reply(MessageError, 451)), {}, "retry"),
        ("554 after DATA", _trace(reply(MessageError, 554)), {}, "refused"),
        ("553 sender", _trace(reply(EnvelopeError, 553)), {}, "refused"),
        ("unreadable message", _trace(StreamError("cannot read")), {}, "dead"),
    ]


@pytest.mark.parametrize(("label", "trace", "given", "expected"), _decisions(), ids=[d[0] for d in _decisions()])
def test_decide(label: str, trace: Any, given: dict[str, Any], expected: str) -> None:
    from twisted_smtpconn._cli._queue import decide

    arguments = {"attempts": 1, "retries": 3, "stopping": False, "aborted": False, **given}
    assert decide(trace, **arguments).kind == expected


# -- the library function ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_enqueue_function_publishes_the_format(rabbitmq: RabbitNode) -> None:
    from twisted.internet import reactor

    import twisted_smtpconn

    queue = _queue_name()
    body = b"From: a@example.test\r\nTo: b@example.test\r\n\r\nhello\r\n"
    d = twisted_smtpconn.enqueue(
        rabbitmq.url, body, rcpt_to=["c@example.test"], dsn={"notify": "SUCCESS,FAILURE"},
        message_id="my-id-1", queue_name=queue, reactor=reactor,
    )
    d.addTimeout(30, reactor)
    assert await d == "my-id-1"
    (properties, got), = drain(rabbitmq, queue)
    assert got == body
    assert properties.message_id == "my-id-1"
    assert properties.delivery_mode == 2
    headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in properties.headers.items()}
    assert headers["rcpt_to"] == ["c@example.test"]
    assert "mail_from" not in headers
    assert properties.headers["dsn"]["notify"] == ["SUCCESS", "FAILURE"]


@pytest_twisted.ensureDeferred
async def test_enqueue_over_tls_verifies_the_broker(rabbitmq: RabbitNode) -> None:
    """amqps:// with RabbitMQ's cacertfile parameter; the system store does not know the test CA."""
    from twisted.internet import reactor

    import twisted_smtpconn

    queue = _queue_name()
    d = twisted_smtpconn.enqueue(rabbitmq.tls_url, b"To: b@example.test\r\n\r\nx\r\n", queue_name=queue, reactor=reactor)
    d.addTimeout(30, reactor)
    message_id = await d
    assert [p.message_id for p, _ in drain(rabbitmq, queue)] == [message_id]
    untrusted = rabbitmq.tls_url.split("?")[0]
    d = twisted_smtpconn.enqueue(untrusted, b"To: b@example.test\r\n\r\nx\r\n", queue_name=queue, reactor=reactor)
    d.addTimeout(30, reactor)
    with pytest.raises(twisted_smtpconn.TLSError, match="(?i)certificate"):
        await d
    assert depth(rabbitmq, queue) == 0


def test_queue_url_checks() -> None:
    from twisted_smtpconn._amqp import check_url

    assert check_url(f"amqps://u:p@mq.example.test/vh?cacertfile={__file__}&heartbeat=10")
    for url, problem in [
        ("http://mq.example.test/", "must start with amqp"),
        ("amqp:///vh", "names no host"),
        ("amqp://mq.example.test:99999/", "bad port"),
        ("amqp://mq.example.test/?cacertfile=/x", "is for amqps"),
        ("amqps://mq.example.test/?verify=maybe", "verify must be"),
        ("amqps://mq.example.test/?cacertfile=/no/such/file.pem", "TLS parameters"),
    ]:
        with pytest.raises(ValueError, match=problem):
            check_url(url)


def test_enqueue_refuses_delivery_flags(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twisted_smtpconn", "enqueue", "--queue", "amqp://127.0.0.1/", "--host", "x",
         "--subject", "s", "--body", "b", "--to", "a@example.test"],
        capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(), timeout=60,
    )
    assert result.returncode == 64
    assert "--host is about delivering" in result.stderr


def test_worker_refuses_message_sources(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twisted_smtpconn", "--queue", "amqp://127.0.0.1/", "--host", "x",
         "--subject", "s", "--body", "b", "--to", "a@example.test"],
        capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(), timeout=60,
    )
    assert result.returncode == 64
    assert "enqueue" in result.stderr


def test_twistd_worker_over_tls_delivers_and_exits_0_on_sigterm(
    rabbitmq: RabbitNode, make_aiosmtpd: Callable[..., AiosmtpdServer], workers: Workers, tmp_path: Path
) -> None:
    server = make_aiosmtpd()
    queue = _queue_name()
    contents = _make_spool(tmp_path / "spool", 20, queue)
    _enqueue_spool(rabbitmq, queue, tmp_path / "spool", tmp_path)
    worker = workers.start(rabbitmq, queue, server.port, "--connections", "2", twistd=True, url=rabbitmq.tls_url)
    wait_until(lambda: len(server.messages) >= 20, "20 messages", limit=60)
    wait_until(lambda: depth(rabbitmq, queue) == 0, "an empty queue", limit=60)
    assert worker.stop() == 0, worker.output()[-3000:]
    seen, altered = _census(server, contents)
    assert sorted(seen) == list(range(20)) and set(seen.values()) == {1} and altered == 0
    assert "20 sent" in worker.output()


def test_worker_delivers_to_smtp_sink(
    rabbitmq: RabbitNode, smtp_sink: Any, workers: Workers, tmp_path: Path
) -> None:
    """Postfix's smtp-sink keeps nothing; the records carry its replies."""
    queue = _queue_name()
    results = Results(rabbitmq, bind_results(rabbitmq, queue))
    _make_spool(tmp_path / "spool", 200, queue)
    _enqueue_spool(rabbitmq, queue, tmp_path / "spool", tmp_path)
    worker = workers.start(rabbitmq, queue, smtp_sink.port, "--connections", "4")
    wait_until(lambda: len(results.poll()) >= 200, "200 result records", limit=90)
    assert worker.stop() == 0, worker.output()[-3000:]
    assert len(results.records) == 200
    assert {r["status"] for r in results.records} == {"sent"}
    assert all(r["response"].startswith("250") for r in results.records)
    assert depth(rabbitmq, queue) == 0


def test_queue_password_kept_out_of_the_command_line(
    rabbitmq: RabbitNode, make_aiosmtpd: Callable[..., AiosmtpdServer], workers: Workers, tmp_path: Path
) -> None:
    """The URL names the user; the password comes from a file or a variable."""
    server = make_aiosmtpd()
    queue = _queue_name()
    bare = rabbitmq.url.replace("guest:guest@", "guest@")
    env = dict(subprocess_env(), QUEUE_SECRET="guest")
    result = subprocess.run(
        [sys.executable, "-m", "twisted_smtpconn", "enqueue", "--queue", bare, "--queue-name", queue,
         "--queue-password-env", "QUEUE_SECRET", "--subject", "s", "--body", "b", "--to", "x@example.test"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=LIMIT,
    )
    assert result.returncode == 0, result.stderr
    (tmp_path / "secret").write_text("guest\n")
    argv = [
        sys.executable, "-m", "twisted_smtpconn", "--queue", bare, "--queue-name", queue,
        "--queue-password-file", str(tmp_path / "secret"), "--host", "127.0.0.1", "--port", str(server.port),
    ]
    with open(tmp_path / "bare.log", "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=subprocess_env())
    bare_worker = Worker(process, tmp_path / "bare.log")
    workers.started.append(bare_worker)
    wait_until(lambda: len(server.messages) >= 1, "the message", limit=60)
    assert bare_worker.stop() == 0, bare_worker.output()
    assert [m.rcpt_tos for m in server.messages] == [("x@example.test",)]
    wrong = subprocess.run(
        [sys.executable, "-m", "twisted_smtpconn", "enqueue", "--queue", rabbitmq.url, "--queue-password-env",
         "QUEUE_SECRET", "--subject", "s", "--body", "b", "--to", "x@example.test"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=LIMIT,
    )
    assert wrong.returncode == 64 and "password in the URL already" in wrong.stderr


def test_refused_login_or_untrusted_broker_is_fatal_at_start(rabbitmq: RabbitNode, tmp_path: Path) -> None:
    """A setting to fix, not an outage to wait out: exit 69 with the reason."""
    wrong = rabbitmq.url.replace("guest:guest@", "guest:wrong@")
    untrusted = rabbitmq.tls_url.split("?")[0]
    for url, reason in [(wrong, "refused the login"), (untrusted, "unknown CA")]:
        worker = subprocess.run(
            [sys.executable, "-m", "twisted_smtpconn", "--queue", url, "--host", "127.0.0.1", "--port", "9"],
            capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(), timeout=LIMIT,
        )
        assert worker.returncode == 69, worker.stdout + worker.stderr
        assert reason in worker.stderr
        assert "wrong" not in worker.stdout + worker.stderr  # the password is never echoed
        producer = subprocess.run(
            [sys.executable, "-m", "twisted_smtpconn", "enqueue", "--queue", url,
             "--subject", "s", "--body", "b", "--to", "x@example.test"],
            capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(), timeout=LIMIT,
        )
        assert producer.returncode == 69, producer.stdout + producer.stderr
        assert reason in producer.stderr


class _SlowHandler(RecordingHandler):
    """Takes a while over each message, like a busy server."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio

        await asyncio.sleep(0.05)
        return await super().handle_DATA(server, session, envelope)


def test_a_slow_server_slows_consumption(
    rabbitmq: RabbitNode, make_aiosmtpd: Callable[..., AiosmtpdServer], workers: Workers, tmp_path: Path
) -> None:
    """
    The worker never holds more unacknowledged messages than its prefetch
    (2 per connection).  Sampled from outside: ready messages first, then
    the server's count; a message is acknowledged only after the server has
    it, so ``total - ready - arrived`` never exceeds what the worker holds.
    """
    server = make_aiosmtpd()
    server.controller.handler = _SlowHandler(server.recorder)
    queue = _queue_name()
    total = 60
    _make_spool(tmp_path / "spool", total, queue)
    _enqueue_spool(rabbitmq, queue, tmp_path / "spool", tmp_path)
    worker = workers.start(rabbitmq, queue, server.port, "--connections", "2")
    held = []
    while len(server.messages) < total:
        ready = depth(rabbitmq, queue)
        held.append(total - ready - len(server.messages))
        assert len(held) < 2000, "the worker did not finish"
        time.sleep(0.05)
    assert worker.stop() == 0
    print(f"\n[queue figures] held by a worker with --connections 2: at most {max(held)} of {total}")
    assert max(held) <= 4
    assert max(held) >= 1  # the samples did see the worker at work


class _StallingHandler(RecordingHandler):
    """
    Stalls (a few seconds) at RCPT for ``stall-rcpt*`` recipients, and
    after the final dot for ``stall-dot*`` ones; ``entered`` counts the
    stalls begun, so the test knows both messages are where it wants them.
    """

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        import threading

        self.entered = 0
        self._lock = threading.Lock()

    async def _stall(self) -> None:
        import asyncio

        with self._lock:
            self.entered += 1
        await asyncio.sleep(6)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address.lower().startswith("stall-rcpt"):
            await self._stall()
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if any(r.lower().startswith("stall-dot") for r in envelope.rcpt_tos):
            await self._stall()
        return await super().handle_DATA(server, session, envelope)


def test_grace_period_ends_review_after_the_dot_requeue_before(
    rabbitmq: RabbitNode, make_aiosmtpd: Callable[..., AiosmtpdServer], workers: Workers, tmp_path: Path
) -> None:
    """
    SIGTERM with two messages stuck at the server and ``--grace 1``: the
    one whose final dot was sent goes to review, the one stuck at RCPT
    goes back to the queue; the worker still exits 0.
    """
    server = make_aiosmtpd()
    handler = _StallingHandler(server.recorder)
    server.controller.handler = handler
    queue = _queue_name()
    results = Results(rabbitmq, bind_results(rabbitmq, queue))
    publish(
        rabbitmq,
        queue,
        [
            (b"From: s@example.test\r\nTo: stall-dot@example.test\r\n\r\ndot\r\n", {}, "after-dot"),
            (b"From: s@example.test\r\nTo: stall-rcpt@example.test\r\n\r\nrcpt\r\n", {}, "before-dot"),
        ],
    )
    worker = workers.start(rabbitmq, queue, server.port, "--connections", "2", "--grace", "1")
    wait_until(lambda: handler.entered >= 2, "both messages stuck at the server", limit=60, step=0.05)
    assert worker.stop() == 0, worker.output()[-3000:]
    review = drain(rabbitmq, f"{queue}.review")
    assert [p.message_id for p, _ in review] == ["after-dot"]
    assert "no reply" in _text_header(review[0][0].headers["x-smtpsend-reason"])
    back = drain(rabbitmq, queue)
    assert [p.message_id for p, _ in back] == ["before-dot"]
    assert [r["status"] for r in results.poll()] == ["review"]
    assert "finishing 2 message(s) in flight (at most 1s)" in worker.output()


# -- many messages, many workers ------------------------------------------------------------


@pytest.mark.slow
def test_three_workers_deliver_every_message_exactly_once(
    rabbitmq: RabbitNode, make_aiosmtpd: Callable[..., AiosmtpdServer], workers: Workers, tmp_path: Path
) -> None:
    server = make_aiosmtpd()
    queue = _queue_name()
    results = Results(rabbitmq, bind_results(rabbitmq, queue))
    contents = _make_spool(tmp_path / "spool", SCALE, queue)
    started = time.monotonic()
    print(_enqueue_spool(rabbitmq, queue, tmp_path / "spool", tmp_path))
    queued = time.monotonic()
    running = [workers.start(rabbitmq, queue, server.port, "--connections", "3", "--report", str(tmp_path / f"r{n}.jsonl")) for n in range(3)]
    wait_until(lambda: len(server.messages) >= SCALE, f"{SCALE} messages at the server")
    delivered = time.monotonic()
    wait_until(lambda: len(results.poll()) >= SCALE, "the result records")
    codes = [w.stop() for w in running]
    assert codes == [0, 0, 0], [w.output()[-2000:] for w in running]

    seen, altered = _census(server, contents)
    duplicated, lost = _figures(f"3 workers x {SCALE}", SCALE, seen)
    print(
        f"[queue figures] enqueue {queued - started:.1f}s, delivery {delivered - queued:.1f}s "
        f"({SCALE / (delivered - queued):.0f} msg/s over 3 workers x 3 connections, aiosmtpd)"
    )
    assert (duplicated, lost, altered) == (0, 0, 0)
    records = results.records
    assert len(records) == SCALE
    assert {r["status"] for r in records} == {"sent"}
    assert len({r["message_id"] for r in records}) == SCALE
    assert {r["worker"] for r in records} == {"w0", "w1", "w2"}
    # The --report files hold the same records.
    reported = [json.loads(line) for n in range(3) for line in (tmp_path / f"r{n}.jsonl").read_text().splitlines()]
    assert sorted(r["message_id"] for r in reported) == sorted(r["message_id"] for r in records)
    assert depth(rabbitmq, queue) == 0
    for worker in running:
        assert "exit status 0" in worker.output()


@pytest.mark.slow
def test_kill_9_of_a_worker_loses_nothing(
    rabbitmq: RabbitNode, make_aiosmtpd: Callable[..., AiosmtpdServer], workers: Workers, tmp_path: Path
) -> None:
    server = make_aiosmtpd()
    queue = _queue_name()
    contents = _make_spool(tmp_path / "spool", FAULT_SCALE, queue)
    _enqueue_spool(rabbitmq, queue, tmp_path / "spool", tmp_path)
    victim = workers.start(rabbitmq, queue, server.port, "--connections", "3")
    survivor = workers.start(rabbitmq, queue, server.port, "--connections", "3")
    wait_until(lambda: len(server.messages) >= FAULT_SCALE // 3, "a third of the messages", step=0.02)
    victim.kill()
    at_kill = len(server.messages)
    wait_until(lambda: len({m.header("X-Seq") for m in server.messages}) >= FAULT_SCALE, "every message")
    wait_until(lambda: depth(rabbitmq, queue) == 0, "an empty queue")
    assert survivor.stop() == 0, survivor.output()[-2000:]
    seen, altered = _census(server, contents)
    duplicated, lost = _figures(f"kill -9 of 1 of 2 workers after {at_kill} messages", FAULT_SCALE, seen)
    assert lost == 0 and altered == 0
    # Only messages in flight at the kill can come twice: at most its prefetch.
    assert duplicated <= 3 * 2


@pytest.mark.slow
def test_sigterm_mid_run_stops_gracefully(
    rabbitmq: RabbitNode, make_aiosmtpd: Callable[..., AiosmtpdServer], workers: Workers, tmp_path: Path
) -> None:
    """SIGTERM: the worker finishes what it holds, acks it, exits 0; nothing twice, nothing lost."""
    server = make_aiosmtpd()
    queue = _queue_name()
    contents = _make_spool(tmp_path / "spool", FAULT_SCALE, queue)
    _enqueue_spool(rabbitmq, queue, tmp_path / "spool", tmp_path)
    stopped = workers.start(rabbitmq, queue, server.port, "--connections", "3")
    other = workers.start(rabbitmq, queue, server.port, "--connections", "3")
    wait_until(lambda: len(server.messages) >= FAULT_SCALE // 3, "a third of the messages", step=0.02)
    assert stopped.stop() == 0, stopped.output()[-2000:]
    at_stop = len(server.messages)
    wait_until(lambda: len({m.header("X-Seq") for m in server.messages}) >= FAULT_SCALE, "every message")
    wait_until(lambda: depth(rabbitmq, queue) == 0, "an empty queue")
    assert other.stop() == 0, other.output()[-2000:]
    seen, altered = _census(server, contents)
    duplicated, lost = _figures(f"SIGTERM of 1 of 2 workers after {at_stop} messages", FAULT_SCALE, seen)
    assert (duplicated, lost, altered) == (0, 0, 0)
    assert "stopping" in stopped.output() and "exit status 0" in stopped.output()


@pytest.mark.slow
def test_broker_restart_mid_run_loses_nothing(
    rabbitmq: RabbitNode, make_aiosmtpd: Callable[..., AiosmtpdServer], workers: Workers, tmp_path: Path
) -> None:
    server = make_aiosmtpd()
    queue = _queue_name()
    results = Results(rabbitmq, bind_results(rabbitmq, queue))
    contents = _make_spool(tmp_path / "spool", FAULT_SCALE, queue)
    _enqueue_spool(rabbitmq, queue, tmp_path / "spool", tmp_path)
    running = [workers.start(rabbitmq, queue, server.port, "--connections", "2") for _ in range(2)]
    wait_until(lambda: len(server.messages) >= FAULT_SCALE // 3, "a third of the messages", step=0.02)
    rabbitmq.restart()
    at_restart = len(server.messages)
    wait_until(lambda: len({m.header("X-Seq") for m in server.messages}) >= FAULT_SCALE, "every message")
    wait_until(lambda: depth(rabbitmq, queue) == 0, "an empty queue")
    codes = [w.stop() for w in running]
    assert codes == [0, 0], [w.output()[-2000:] for w in running]
    seen, altered = _census(server, contents)
    duplicated, lost = _figures(f"broker restart after {at_restart} messages, 2 workers", FAULT_SCALE, seen)
    assert lost == 0 and altered == 0
    # Only what the workers held unacknowledged can come back: their prefetch.
    assert duplicated <= 2 * 2 * 2
    for worker in running:
        assert "reconnected" in worker.output()
    # Records published after the restart arrived (the bound queue is durable).
    assert results.poll()


# -- every way out of the queue ---------------------------------------------------------------


class _ScenarioHandler(RecordingHandler):
    """
    The fixture's rules, plus: a ``flaky*`` recipient gets 451 the first
    time and 250 after; a message to a ``vanish*`` recipient is recorded,
    then the connection is dropped without a reply to the final dot.
    """

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self.rcpt_seen: collections.Counter[str] = collections.Counter()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address.lower().startswith("flaky"):
            self.rcpt_seen[address] += 1
            if self.rcpt_seen[address] == 1:
                return f"451 4.7.1 <{address}>: greylisted, try again later"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if any(r.lower().startswith("vanish") for r in envelope.rcpt_tos):
            server.transport.abort()
        return reply


def _text_header(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@pytest.mark.slow
def test_each_outcome_ends_in_its_queue_with_its_record(
    rabbitmq: RabbitNode, make_aiosmtpd: Callable[..., AiosmtpdServer], workers: Workers, tmp_path: Path
) -> None:
    server = make_aiosmtpd(accept_dsn=True)
    server.controller.handler = _ScenarioHandler(server.recorder)
    queue = _queue_name()
    results = Results(rabbitmq, bind_results(rabbitmq, queue))

    def mail(to: str, tag: str) -> bytes:
        return f"From: s@example.test\r\nTo: {to}\r\nX-Tag: {tag}\r\nSubject: {tag}\r\n\r\n{tag}\r\n".encode()

    messages = [
        (mail("ok@example.test", "ok"), {"dsn": {"notify": ["SUCCESS", "FAILURE"], "envid": "env-ok"}}, "ok"),
        (mail("flaky@example.test", "flaky"), {}, "flaky"),
        (mail("reject@example.test", "refused"), {}, "refused"),
        (mail("ok2@example.test", "partial"), {"rcpt_to": ["ok2@example.test", "reject2@example.test"], "mail_from": "s@example.test"}, "partial"),
        (mail("tempfail@example.test", "tempfail"), {}, "tempfail"),
        (
            b"From: s@example.test\r\nTo: ok4@example.test\r\nBcc: flaky4@example.test\r\n"
            b"X-Tag: partial-retry\r\n\r\nbcc\r\n",
            {},
            "partial-retry",
        ),
        (b"Subject: no recipients anywhere\r\n\r\nx\r\n", {}, "malformed-envelope"),
        (mail("ok@example.test", "bad-table"), {"rcpt_to": 42}, "malformed-table"),
        (mail("vanish@example.test", "vanish"), {}, "vanish"),
    ]
    publish(rabbitmq, queue, messages)
    worker = workers.start(rabbitmq, queue, server.port, "--retries", "2", "--retry-delay", "0.3", "--report", str(tmp_path / "r.jsonl"))
    ids = [m[2] for m in messages]
    wait_until(lambda: set(results.poll() and results.final()) >= set(ids), "a final record for every message", limit=90)
    assert worker.stop() == 0, worker.output()[-3000:]
    final = results.final()
    by_id: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in results.records:
        by_id[record["message_id"]].append(record)

    def arrived(tag: str) -> int:
        return sum(1 for m in server.messages if m.header("X-Tag") == tag)

    # Sent at once, with the DSN table applied.
    assert final["ok"]["status"] == "sent" and final["ok"]["attempts"] == 1
    assert [m.mail_param("ENVID") for m in server.messages if m.header("X-Tag") == "ok"] == ["env-ok"]
    # 451, then through smtpsend.retry.1 and back: sent on the second attempt.
    assert [r["status"] for r in by_id["flaky"]] == ["retry", "sent"]
    assert by_id["flaky"][0]["queue"] == f"{queue}.retry.1"
    assert by_id["flaky"][0]["rejected"][0]["code"] == 451
    assert final["flaky"]["attempts"] == 2 and arrived("flaky") == 1
    # 550 for the only recipient: refused, acknowledged, not dead-lettered.
    assert final["refused"]["status"] == "refused"
    assert final["refused"]["rejected"][0]["code"] == 550 and final["refused"]["queue"] is None
    assert arrived("refused") == 0
    # One of two refused: partial, the refusal reported per recipient.
    assert final["partial"]["status"] == "partial"
    assert final["partial"]["accepted"] == ["ok2@example.test"]
    assert [(r["recipient"], r["code"]) for r in final["partial"]["rejected"]] == [("reject2@example.test", 550)]
    # 451 for the Bcc recipient only: the other is done; the copy for it
    # names it alone and has no Bcc field (nor had the first message).
    assert [r["status"] for r in by_id["partial-retry"]] == ["partial", "sent"]
    assert by_id["partial-retry"][0]["retry_rcpt"] == ["flaky4@example.test"]
    assert by_id["partial-retry"][0]["queue"] == f"{queue}.retry.1"
    assert final["partial-retry"]["to"] == ["flaky4@example.test"]
    copies = [m for m in server.messages if m.header("X-Tag") == "partial-retry"]
    assert [m.rcpt_tos for m in copies] == [("ok4@example.test",), ("flaky4@example.test",)]
    assert all(b"Bcc" not in m.content for m in copies)
    # 451 every time: two retries, then the dead-letter queue.
    assert [r["status"] for r in by_id["tempfail"]] == ["retry", "retry", "dead"]
    assert final["tempfail"]["attempts"] == 3
    # Malformed: dead-lettered at once, never sent.
    assert final["malformed-envelope"]["status"] == "dead"
    assert final["malformed-table"]["status"] == "dead"
    assert len(by_id["malformed-envelope"]) == len(by_id["malformed-table"]) == 1
    # The final dot went, no reply came: review, never retried.
    assert final["vanish"]["status"] == "review" and final["vanish"]["queue"] == f"{queue}.review"
    assert [r["status"] for r in by_id["vanish"]] == ["review"]
    assert arrived("vanish") == 1

    dead = {p.message_id: (p, body) for p, body in drain(rabbitmq, f"{queue}.dead")}
    assert set(dead) == {"tempfail", "malformed-envelope", "malformed-table"}
    reasons = {mid: _text_header(p.headers["x-smtpsend-reason"]) for mid, (p, _) in dead.items()}
    assert reasons["tempfail"].startswith("gave up after 3 attempt(s)")
    assert "451" in reasons["tempfail"]
    assert reasons["malformed-envelope"].startswith("malformed: no usable envelope")
    assert reasons["malformed-table"].startswith("malformed: rcpt_to must be an array")
    assert dead["malformed-table"][1] == mail("ok@example.test", "bad-table")  # the body, unchanged
    assert dead["tempfail"][0].headers["x-smtpsend-attempts"] == 3
    assert dead["tempfail"][0].correlation_id == "corr-tempfail"

    review = drain(rabbitmq, f"{queue}.review")
    assert [p.message_id for p, _ in review] == ["vanish"]
    assert "no reply" in _text_header(review[0][0].headers["x-smtpsend-reason"])
    assert review[0][1] == mail("vanish@example.test", "vanish")

    for name in (queue, f"{queue}.retry.1", f"{queue}.retry.2"):
        assert depth(rabbitmq, name) == 0, name
    reported = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(r["message_id"] for r in reported) == sorted(r["message_id"] for r in results.records)
    print(
        "\n[queue figures] outcomes: "
        + ", ".join(f"{mid}: {' -> '.join(r['status'] for r in by_id[mid])}" for mid in ids)
    )
