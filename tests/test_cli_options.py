"""
Tests for ``smtpsend``'s option parsing, script loading, job building,
exit-status mapping and worker policy: everything short of a real run
(those are in ``test_cli_run.py``).
"""

from __future__ import annotations

import email
import email.policy
import io
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python import usage

from twisted_smtpconn import (
    AuthenticationError,
    ConnectionFailedError,
    EnvelopeError,
    MessageError,
    ProtocolError,
    SMTPTimeoutError,
    SocketError,
    StreamError,
    TLSError,
)
from twisted_smtpconn._cli import EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, SendOptions
from twisted_smtpconn._cli._compose import compose_message, message_id_domain
from twisted_smtpconn._cli._console import ProgressMeter, StreamConsole, format_duration
from twisted_smtpconn._cli._exitcodes import EX_SOFTWARE, classify, combine
from twisted_smtpconn._cli._jobs import (
    DSNSpec,
    Job,
    MessageContent,
    _without_bcc,
    envelope_from_headers,
)
from twisted_smtpconn._cli._results import Outcome, Tally
from twisted_smtpconn._cli._script import load_script
from twisted_smtpconn._cli._settings import resolve_settings
from twisted_smtpconn._cli._sources import collect_jobs
from twisted_smtpconn._cli._workers import JobQueue, RunControl, deliver_all

DOCS = Path(__file__).resolve().parent.parent / "docs" / "examples"


def parse(*argv: str) -> SendOptions:
    options = SendOptions()
    options.parseOptions(list(argv))
    return options


# -- SendOptions ---------------------------------------------------------------


def test_minimal_composed_message() -> None:
    options = parse("--subject", "hi", "--body", "hello", "--to", "a@x.test", "--to", "b@x.test")
    assert options["to"] == ["a@x.test", "b@x.test"]
    assert options["host"] is None
    assert options["connections"] == 1


def test_typed_values() -> None:
    options = parse(
        "--host", "mail.example.test", "--port", "587", "--connections", "4",
        "--connection-timeout", "2.5", "--dsn-notify", "failure,delay", "--dsn-ret", "hdrs",
        "--spool", "somewhere",
    )
    assert options["port"] == 587
    assert options["connections"] == 4
    assert options["connection-timeout"] == 2.5
    assert options["dsn-notify"] == ["FAILURE", "DELAY"]
    assert options["dsn-ret"] == "HDRS"


@pytest.mark.parametrize(
    "argv",
    [
        [],  # nothing to send
        ["--to", "a@x.test"],  # still nothing to send
        ["--subject", "s"],  # composed without --to
        ["--subject", "s", "--to", "a@x.test", "--script", "s.toml"],
        ["--message", "m.eml", "--spool", "dir"],
        ["--message", "m.eml", "--body", "b", "--to", "a@x.test"],
        ["--spool", "d", "--port", "0"],
        ["--spool", "d", "--port", "65536"],
        ["--spool", "d", "--port", "smtp"],
        ["--spool", "d", "--connections", "0"],
        ["--spool", "d", "--connections", "101"],
        ["--spool", "d", "--socket-timeout", "0"],
        ["--spool", "d", "--socket-timeout", "-1"],
        ["--spool", "d", "--socket-timeout", "nan"],
        ["--spool", "d", "--dsn-notify", "NEVER,SUCCESS"],
        ["--spool", "d", "--dsn-notify", "SOMETIMES"],
        ["--spool", "d", "--dsn-ret", "ALL"],
        ["--spool", "d", "--ignore-tls", "--require-tls"],
        ["--spool", "d", "--ignore-tls", "--opportunistic-tls"],
        ["--spool", "d", "--secure", "--ignore-tls"],
        ["--spool", "d", "--insecure", "--ca-certs", "ca.pem"],
        ["--spool", "d", "--password-file", "f", "--password-env", "V"],
        ["--spool", "d", "--host", "h", "--maildir", "m"],
        ["--spool", "d", "--password", "hunter2"],
        ["--spool", "d", "--no-such-option"],
        ["--subject", "s", "--to", " "],
    ],
)
def test_bad_usage(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_password_refusal_says_where_to_put_it() -> None:
    with pytest.raises(usage.UsageError) as caught:
        parse("--spool", "d", "--password", "hunter2")
    assert "--password-file" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_twistd_options_keep_the_usage_error() -> None:
    from twisted_smtpconn._cli._twistd import Options, SendService, makeService

    options = Options()
    options.parseOptions(["--port", "0", "--spool", "d"])
    assert options.usage_error is not None and "port" in options.usage_error
    good = Options()
    good.parseOptions(["--spool", "d"])
    assert good.usage_error is None
    service = makeService(good)
    assert isinstance(service, SendService)
    assert service.exit_code is None


# -- settings ---------------------------------------------------------------


def test_flags_override_the_script(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("file secret\n")
    options = parse("--spool", "d", "--port", "2525", "--debug", "--password-file", str(secret))
    script = {"host": "mail.example.test", "port": 25, "user": "u", "password_env": "X", "connections": 3}
    s = resolve_settings(options, script)
    assert (s.host, s.port, s.debug, s.user, s.password, s.connections) == (
        "mail.example.test", 2525, True, "u", "file secret", 3,
    )
    assert "file secret" not in repr(s)


def test_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTPSEND_TEST_PW", "env secret")
    options = parse("--spool", "d", "--host", "h", "--user", "u", "--password-env", "SMTPSEND_TEST_PW")
    assert resolve_settings(options, {}).password == "env secret"


@pytest.mark.parametrize(
    "argv, script",
    [
        (["--host", "h", "--user", "u"], {}),  # no password source
        (["--host", "h", "--user", "u", "--password-env", "SMTPSEND_SURELY_UNSET"], {}),
        (["--host", "h", "--user", "u", "--password-file", "/nonexistent/pw"], {}),
        (["--port", "2525"], {}),  # embedded server chooses its port
        (["--secure"], {}),
        ([], {"user": "u", "password_env": "HOME"}),  # embedded makes its own credentials
        ([], {"lmtp": True}),
        ([], {"nonsense": 1}),
        ([], {"port": "25", "host": "h"}),
        ([], {"port": True, "host": "h"}),
        ([], {"host": "h", "password_file": "a", "password_env": "b"}),
        ([], {"host": "h", "ignore_tls": True, "require_tls": True}),
        ([], {"host": "h", "connections": 0}),
        ([], {"host": "h", "socket_timeout": 0}),
    ],
)
def test_bad_settings(argv: list[str], script: dict[str, Any]) -> None:
    options = parse("--spool", "d", *argv)
    with pytest.raises(usage.UsageError):
        resolve_settings(options, script)


def test_connection_kwargs() -> None:
    options = parse("--spool", "d", "--host", "h", "--insecure", "--tls-servername", "mx.test", "--lmtp")
    kwargs = resolve_settings(options, {}).connection_kwargs()
    assert kwargs["tls"] == {"servername": "mx.test", "reject_unauthorized": False}
    assert kwargs["lmtp"] is True
    assert "connection_timeout" not in kwargs  # library default
    embedded = resolve_settings(parse("--spool", "d"), {})
    assert embedded.embedded and embedded.connection_kwargs()["tls"] is None


# -- scripts -------------------------------------------------------------------


def test_toml_script(tmp_path: Path) -> None:
    (tmp_path / "m.eml").write_bytes(b"From: f@x.test\r\nTo: t@x.test\r\n\r\nbody\r\n")
    path = tmp_path / "s.toml"
    path.write_text(
        """
from = "default@x.test"
[connection]
host = "127.0.0.1"
port = 2525
require_tls = true
[[messages]]
eml = "m.eml"
[[messages]]
to = ["a@x.test", "b@x.test"]
subject = "inline"
body = "text"
headers = { "X-Tag" = "1" }
dsn = { notify = "failure,delay", ret = "hdrs", envid = "e1" }
use_8bit_mime = true
"""
    )
    script = load_script(path)
    assert script.connection == {"host": "127.0.0.1", "port": 2525, "require_tls": True}
    first, second = script.messages
    assert first.eml == tmp_path / "m.eml"
    assert second.rcpt_to == ("a@x.test", "b@x.test")
    assert second.dsn == DSNSpec(ret="HDRS", envid="e1", notify=("FAILURE", "DELAY"))
    jobs = collect_jobs(parse("--script", str(path)), script)
    assert [j.rcpt_to for j in jobs] == [("t@x.test",), ("a@x.test", "b@x.test")]
    # The script's default sender beats the eml's From header (explicit
    # settings beat headers); the recipients come from the headers.
    assert jobs[0].mail_from == "default@x.test"
    assert jobs[1].mail_from == "default@x.test"
    assert jobs[1].use_8bit_mime is True
    with jobs[1].content.open() as f:
        parsed = email.message_from_binary_file(f, policy=email.policy.default)
    assert parsed["X-Tag"] == "1" and parsed["Subject"] == "inline"


def test_json_script_equivalent(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"messages": [{"to": "a@x.test", "body": "hi"}]}))
    [message] = load_script(path).messages
    assert message.rcpt_to == ("a@x.test",) and message.body == "hi"


@pytest.mark.parametrize(
    "suffix, text, fragment",
    [
        (".toml", "messages = [", "not valid toml"),
        (".json", "{", "not valid json"),
        (".json", "[]", "top level"),
        (".json", '{"messages": []}', "non-empty"),
        (".json", '{"message": [{"to": "a@x", "body": "b"}]}', "unknown top-level key"),
        (".json", '{"messages": [{"to": "a@x", "body": "b", "cc": "c"}]}', "unknown key 'cc'"),
        (".json", '{"messages": [{"body": "b"}]}', "needs to"),
        (".json", '{"messages": [{"to": "a@x"}]}', "needs eml"),
        (".json", '{"messages": [{"to": "a@x", "eml": "m", "subject": "s"}]}', "contradicts"),
        (".json", '{"messages": [{"to": 5, "body": "b"}]}', "to must be"),
        (".json", '{"messages": [{"to": "a@x", "body": "b", "dsn": {"notify": "NEVER,DELAY"}}]}', "NEVER"),
        (".json", '{"messages": [{"to": "a@x", "body": "b", "dsn": {"ret": "X"}}]}', "FULL or HDRS"),
        (".json", '{"messages": [{"to": "a@x", "body": "b", "headers": {"a": 1}}]}', "headers"),
        (".json", '{"messages": [{"to": "a@x", "body": 3}]}', "body must be"),
        (".json", '{"connection": [], "messages": [{"to": "a@x", "body": "b"}]}', "connection"),
    ],
)
def test_bad_scripts(tmp_path: Path, suffix: str, text: str, fragment: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(usage.UsageError) as caught:
        load_script(path)
    message = str(caught.value)
    assert fragment.lower() in message.lower()
    assert "\n" not in message  # one line, for the exit-64 message
    assert path.name in message


def test_missing_script(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError):
        load_script(tmp_path / "absent.toml")


@pytest.mark.parametrize("name", ["script.toml", "script.json"])
def test_documented_examples_load(name: str) -> None:
    script = load_script(DOCS / name)
    assert script.messages
    assert "host" not in script.connection  # they run against the embedded server
    jobs = collect_jobs(parse("--script", str(DOCS / name)), script)
    assert all(j.problem is None for j in jobs)


def test_documented_examples_agree() -> None:
    toml_script = load_script(DOCS / "script.toml")
    json_script = load_script(DOCS / "script.json")
    assert toml_script.connection == json_script.connection
    assert toml_script.default_from == json_script.default_from
    strip = [m.__class__(**{**m.__dict__, "where": ""}) for m in toml_script.messages]
    strip_json = [m.__class__(**{**m.__dict__, "where": ""}) for m in json_script.messages]
    assert strip == strip_json


# -- jobs from flags and spools -----------------------------------------------


def test_composed_message_has_date_and_message_id() -> None:
    [job] = collect_jobs(parse("--subject", "hé", "--body", "hello", "--to", "a@x.test", "--from", "me@y.test"), None)
    assert job.mail_from == "me@y.test" and job.rcpt_to == ("a@x.test",)
    with job.content.open() as f:
        raw = f.read()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == "hé"
    assert message["To"] == "a@x.test"
    assert message["Date"].datetime is not None
    assert message["Message-ID"].endswith("@y.test>")
    assert message.get_content().replace("\r\n", "\n") == "hello\n"
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_message_id_domain() -> None:
    assert message_id_domain("Me <me@example.test>") == "example.test"
    assert message_id_domain("") == "smtpsend.invalid"


def test_message_from_stdin() -> None:
    stdin = io.BytesIO(b"From: s@x.test\nTo: r@x.test\n\nhi\n")
    [job] = collect_jobs(parse("--message", "-"), None, stdin=stdin)
    assert (job.mail_from, job.rcpt_to, job.source) == ("s@x.test", ("r@x.test",), "<stdin>")


def test_spool_envelope_from_headers_and_flags(tmp_path: Path) -> None:
    (tmp_path / "b.eml").write_bytes(
        b"From: Ann <ann@x.test>\r\nTo: t1@x.test, T2 <t2@x.test>\r\nCc: c@x.test\r\n"
        b"Bcc: hidden@x.test,\r\n  hidden2@x.test\r\nSubject: s\r\n\r\nBcc: not a header\r\n"
    )
    (tmp_path / "a.eml").write_bytes(b"Sender: s@x.test\r\nFrom: f@x.test\r\nTo: r@x.test\r\n\r\nx\r\n")
    (tmp_path / "c.eml").write_bytes(b"Subject: no recipients\r\n\r\nx\r\n")
    (tmp_path / "ignored.txt").write_bytes(b"To: nobody@x.test\r\n\r\n")
    jobs = collect_jobs(parse("--spool", str(tmp_path)), None)
    assert [Path(j.source).name for j in jobs] == ["a.eml", "b.eml", "c.eml"]
    a, b, c = jobs
    assert (a.mail_from, a.rcpt_to) == ("s@x.test", ("r@x.test",))
    assert b.rcpt_to == ("t1@x.test", "t2@x.test", "c@x.test", "hidden@x.test", "hidden2@x.test")
    with b.content.open() as f:
        sent = f.read()
    assert b"hidden" not in sent.split(b"\r\n\r\n")[0]
    assert sent.endswith(b"\r\n\r\nBcc: not a header\r\n")
    assert c.problem is not None and "no recipients" in c.problem
    flagged = collect_jobs(parse("--spool", str(tmp_path), "--to", "over@x.test", "--from", "me@x.test"), None)
    assert {(j.mail_from, j.rcpt_to) for j in flagged} == {("me@x.test", ("over@x.test",))}
    assert all(j.problem is None for j in flagged)
    with flagged[1].content.open() as f:
        assert b"Bcc: hidden" in f.read()  # explicit envelope: the file is sent as it is


def test_empty_or_missing_spool(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError):
        collect_jobs(parse("--spool", str(tmp_path)), None)
    with pytest.raises(usage.UsageError):
        collect_jobs(parse("--spool", str(tmp_path / "absent")), None)
    with pytest.raises(usage.UsageError):
        collect_jobs(parse("--message", str(tmp_path / "absent.eml")), None)


header_name = st.sampled_from(["To", "Cc", "Subject", "X-A", "Bcc", "BCC", "bcc"])
header_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@settings(max_examples=200)
@given(
    headers=st.lists(st.tuples(header_name, header_value, st.booleans()), max_size=8),
    body=st.lists(header_value, max_size=5),
)
def test_bcc_removal_property(
    headers: list[tuple[str, str, bool]], body: list[str]
) -> None:
    """No Bcc header survives; every other header line and the body do."""
    lines = []
    for name, value, folded in headers:
        lines.append(f"{name}: {value}\r\n".encode())
        if folded:
            lines.append(f" {value}\r\n".encode())
    head = b"".join(lines)
    tail = b"\r\n" + b"".join(f"{b}\r\n".encode() for b in body)
    out = _without_bcc(head + tail)
    out_head, _, out_body = out.partition(b"\r\n\r\n")
    assert out.endswith(tail)
    kept = [
        (n, v, f) for n, v, f in headers if n.lower() != "bcc"
    ]
    expected = b"".join(
        f"{n}: {v}\r\n".encode() + (f" {v}\r\n".encode() if f else b"") for n, v, f in kept
    )
    assert out[: len(out) - len(tail)] == expected
    assert envelope_from_headers(out[: len(out) - len(tail)] + b"\r\n").has_bcc is False


@settings(max_examples=100)
@given(subject=st.text(max_size=40), body=st.text(max_size=200))
def test_compose_round_trip(subject: str, body: str) -> None:
    """Whatever text goes in comes back out of a standard parser."""
    if "\0" in subject or len((subject + "x").splitlines()) > 1:
        # Refused: a line break in a header value would inject headers.
        with pytest.raises(ValueError):
            compose_message(sender="a@x.test", recipients=["b@x.test"], subject=subject, body=body)
        return
    raw = compose_message(sender="a@x.test", recipients=["b@x.test"], subject=subject, body=body)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == " ".join(subject.split()) or parsed["Subject"] == subject
    expected = body.replace("\r\n", "\n").replace("\r", "\n")
    if expected and not expected.endswith("\n"):
        expected += "\n"
    got = parsed.get_content().replace("\r\n", "\n")
    assert got.rstrip("\n") == expected.rstrip("\n")


# -- exit statuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, connected, expected",
    [
        (EnvelopeError("rcpt", response_code=550), True, EX_DATAERR),
        (EnvelopeError("bad address"), True, EX_DATAERR),
        (EnvelopeError("greylisted", response_code=451), True, EX_TEMPFAIL),
        (MessageError("too big", response_code=552), True, EX_DATAERR),
        (MessageError("too big for SIZE"), True, EX_DATAERR),
        (StreamError("unreadable"), True, EX_DATAERR),
        (ConnectionFailedError("refused"), False, EX_UNAVAILABLE),
        (ConnectionFailedError("dropped"), True, EX_TEMPFAIL),
        (SMTPTimeoutError("slow"), False, EX_TEMPFAIL),
        (SocketError("reset"), True, EX_TEMPFAIL),
        (TLSError("untrusted"), False, EX_UNAVAILABLE),
        (AuthenticationError("no", response_code=535), False, EX_UNAVAILABLE),
        (AuthenticationError("later", response_code=454), False, EX_TEMPFAIL),
        (ProtocolError("554 go away", response_code=554), False, EX_UNAVAILABLE),
        (ProtocolError("421 busy", response_code=421), False, EX_TEMPFAIL),
        (RuntimeError("bug"), True, EX_SOFTWARE),
    ],
)
def test_classify(error: BaseException, connected: bool, expected: int) -> None:
    assert classify(error, connected=connected) == expected


@given(st.lists(st.sampled_from([EX_OK, EX_DATAERR, EX_UNAVAILABLE, EX_TEMPFAIL, EX_SOFTWARE, EX_USAGE])))
def test_combine_is_the_most_serious(codes: list[int]) -> None:
    result = combine(codes)
    assert result == combine(list(reversed(codes)))
    assert result in codes or (not codes and result == EX_OK)
    order = [EX_SOFTWARE, EX_USAGE, EX_UNAVAILABLE, EX_DATAERR, EX_TEMPFAIL, EX_OK]
    assert all(order.index(result) <= order.index(c) for c in codes)


def _job(index: int = 1, **kw: Any) -> Job:
    values: dict[str, Any] = dict(
        index=index, source=f"m{index}", mail_from="a@x.test", rcpt_to=("b@x.test",),
        content=MessageContent(data=b"Subject: x\r\n\r\nbody\r\n"),
    )
    values.update(kw)
    return Job(**values)


class _Info:
    def __init__(self, accepted: list[str], rejected_errors: list[EnvelopeError]) -> None:
        self.accepted = accepted
        self.rejected = [e.recipient for e in rejected_errors]
        self.rejected_errors = rejected_errors
        self.response = "250 ok"
        self.message_size = 20
        self.envelope_time = 0.1
        self.message_time = 0.2


def test_partial_outcome_and_report() -> None:
    refused = EnvelopeError("no", response_code=550, enhanced_status="5.1.1",
                            response="550 5.1.1 no", recipient="c@x.test")
    later = EnvelopeError("later", response_code=450, response="450 later", recipient="d@x.test")
    outcome = Outcome.sent(_job(), _Info(["b@x.test"], [refused, later]), started=0.0, elapsed=0.3, connection=2)
    assert outcome.status == "partial"
    assert outcome.exit_code == EX_DATAERR
    line = json.loads(json.dumps(outcome.as_report()))
    assert line["rejected"] == [
        {"recipient": "c@x.test", "code": 550, "enhanced_status": "5.1.1", "response": "550 5.1.1 no"},
        {"recipient": "d@x.test", "code": 450, "enhanced_status": None, "response": "450 later"},
    ]
    assert line["started"] == "1970-01-01T00:00:00.000Z"
    only_later = Outcome.sent(_job(), _Info(["b@x.test"], [later]), started=0.0, elapsed=0.1, connection=1)
    assert only_later.exit_code == EX_TEMPFAIL
    clean = Outcome.sent(_job(), _Info(["b@x.test"], []), started=0.0, elapsed=0.1, connection=1)
    assert (clean.status, clean.exit_code) == ("sent", EX_OK)


def test_progress_line() -> None:
    tally = Tally(total=10)
    meter = ProgressMeter(tally, started=100.0)
    assert "ETA -:--:--" in meter.line(100.0)
    for i in range(4):
        tally.add(Outcome.sent(_job(i), _Info(["b@x.test"], []), started=0, elapsed=0, connection=1))
    tally.add(Outcome.unsendable(_job(5, problem="no rcpt")))
    line = meter.line(102.0)
    assert line == "sent 4/10  failed 1  2.5 msg/s  ETA 0:00:02"
    assert format_duration(3725) == "1:02:05"


def test_stream_console_progress_only_on_terminals() -> None:
    out, err = io.StringIO(), io.StringIO()
    console = StreamConsole(out, err)
    assert console.interactive is False
    console.status("progress")
    console.info("result")
    console.problem("trouble")
    assert (out.getvalue(), err.getvalue()) == ("result\n", "trouble\n")


# -- the worker loop --------------------------------------------------------------


class _Connection:
    """A stand-in for a connection, so the worker *policy* can be tested alone."""

    def __init__(self, log: list[str], number: int) -> None:
        self.log = log
        self.number = number

    def quit(self) -> Any:
        from twisted.internet.defer import succeed

        self.log.append(f"quit {self.number}")
        return succeed(None)

    def close(self) -> None:
        self.log.append(f"close {self.number}")


@pytest_twisted.ensureDeferred
async def test_workers_reconnect_after_a_broken_connection() -> None:
    from twisted.internet import reactor

    log: list[str] = []
    opened: list[_Connection] = []
    outcomes: list[Outcome] = []

    async def open_connection() -> _Connection:
        connection = _Connection(log, len(opened) + 1)
        opened.append(connection)
        return connection

    async def send_job(connection: _Connection, job: Job) -> _Info:
        log.append(f"send {job.index} on {connection.number}")
        if job.index == 2:
            raise ConnectionFailedError("dropped")
        if job.index == 3:
            raise EnvelopeError("refused", response_code=550)
        return _Info(list(job.rcpt_to), [])

    jobs = [_job(i) for i in range(1, 6)] + [_job(6, problem="no recipients")]
    gave_up = await deliver_all(
        reactor, JobQueue(jobs), connections=1, open_connection=open_connection,
        send_job=send_job, record=outcomes.append, notice=log.append, control=RunControl(),
    )
    assert gave_up == []
    assert [(o.job.index, o.status, o.exit_code) for o in outcomes] == [
        (1, "sent", EX_OK),
        (2, "failed", EX_TEMPFAIL),
        (3, "failed", EX_DATAERR),
        (4, "sent", EX_OK),
        (5, "sent", EX_OK),
        (6, "failed", EX_DATAERR),
    ]
    # Job 2 broke connection 1; job 3 failed without breaking connection 2.
    assert log == [
        "send 1 on 1", "send 2 on 1", "close 1",
        "send 3 on 2", "send 4 on 2", "send 5 on 2", "quit 2",
    ]


@pytest_twisted.ensureDeferred
async def test_workers_give_up_when_no_connection_can_be_made() -> None:
    from twisted.internet import reactor

    attempts: list[int] = []
    notices: list[str] = []

    async def open_connection() -> _Connection:
        attempts.append(1)
        raise ConnectionFailedError("refused")

    async def send_job(connection: _Connection, job: Job) -> _Info:
        raise AssertionError("never sent")

    queue = JobQueue([_job(i) for i in range(1, 11)])
    gave_up = await deliver_all(
        reactor, queue, connections=3, open_connection=open_connection, send_job=send_job,
        record=lambda o: None, notice=notices.append, control=RunControl(),
    )
    assert len(gave_up) == 3 and len(attempts) == 3 and len(notices) == 3
    assert [j.index for j in queue.drain()] == list(range(1, 11))  # all put back, in order


@pytest_twisted.ensureDeferred
async def test_stopping_takes_no_new_jobs() -> None:
    from twisted.internet import reactor

    control = RunControl()
    sent: list[int] = []
    log: list[str] = []

    async def open_connection() -> _Connection:
        return _Connection(log, 1)

    async def send_job(connection: _Connection, job: Job) -> _Info:
        sent.append(job.index)
        control.stopping = True  # as Ctrl-C would, while this send is in flight
        return _Info(list(job.rcpt_to), [])

    queue = JobQueue([_job(i) for i in range(1, 4)])
    await deliver_all(
        reactor, queue, connections=1, open_connection=open_connection, send_job=send_job,
        record=lambda o: None, notice=log.append, control=control,
    )
    assert sent == [1]
    assert len(queue) == 2
    assert log == ["quit 1"]


def test_line_breaks_in_header_values_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError):
        collect_jobs(parse("--subject", "hi\r\nBcc: victim@x.test", "--to", "a@x.test"), None)
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"messages": [{"to": "a@x.test", "body": "b", "headers": {"X-A": "1\nX-B: 2"}}]}))
    with pytest.raises(usage.UsageError):
        collect_jobs(parse("--script", str(path)), load_script(path))
