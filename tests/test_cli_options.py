"""
Tests for ``smtpsend``'s option parsing, script loading, job building,
exit-status mapping and delivery policy (over a real ``SMTPPool`` and a
scripted server): everything short of a real run (those are in
``test_cli_run.py``).
"""

from __future__ import annotations

import email
import email.policy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.python import usage
from twisted.python.failure import Failure

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
from twisted_smtpconn import DSN
from twisted_smtpconn._cli._messages import (
    Job,
    MessageContent,
    without_bcc_bytes,
    collect_jobs,
    compose_message,
    envelope_from_headers,
    load_script,
    message_id_domain,
    parse_attachment,
    parse_header,
)
from twisted_smtpconn._cli._output import (
    EX_SOFTWARE,
    ErrorInfo,
    Outcome,
    ProgressMeter,
    StreamConsole,
    Tally,
    classify,
    combine,
    format_duration,
)
from twisted_smtpconn._cli._run import (
    BROKEN_PER_CONNECTION,
    WINDOW_PER_CONNECTION,
    RunControl,
    _prepare,
    deliver_all,
)
from twisted_smtpconn._cli._settings import resolve_settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "examples"


def parse(*argv: str) -> SendOptions:
    options = SendOptions()
    options.parseOptions(list(argv))
    return options


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A spool of one good message."""
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "1.eml").write_bytes(b"From: a@x.test\r\nTo: b@x.test\r\n\r\nhi\r\n")
    return directory


def prepare(*argv: str) -> Any:
    """Parse and check everything, as ``main`` does before connecting."""
    return _prepare(None, parse(*argv), None)


# -- SendOptions ---------------------------------------------------------------


def test_minimal_composed_message() -> None:
    options = parse("--subject", "hi", "--body", "hello", "--to", "a@x.test", "--to", "b@x.test")
    assert options["to"] == ["a@x.test", "b@x.test"]
    assert options["host"] is None
    assert options["connections"] is None  # a script may set it; the default is the settings'
    assert resolve_settings(options, {}).connections == 1


def test_typed_values() -> None:
    options = parse(
        "--host", "mail.example.test", "--port", "587", "--connections", "4",
        "--connection-timeout", "2.5", "--dsn-notify", "failure,delay", "--dsn-ret", "hdrs",
        "--spool", "somewhere",
    )
    assert options["port"] == 587
    assert options["connections"] == 4
    assert options["connection-timeout"] == 2.5
    # DSN values are checked once, by the library's DSN, when jobs are made.
    assert (options["dsn-notify"], options["dsn-ret"]) == ("failure,delay", "hdrs")


def test_short_forms_and_repeatable_flags(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x")
    options = parse(
        "-s", "mx.test", "-p", "2525", "-f", "Ann <ann@x.test>", "-t", "b@x.test", "-t", "c@x.test",
        "-a", str(tmp_path / "a.bin"), "--cc", "d@x.test", "--bcc", "e@x.test", "--header", "X-A:  1 ",
        "--subject", "s", "-v",
    )
    assert (options["host"], options["port"], options["from"]) == ("mx.test", 2525, "Ann <ann@x.test>")
    assert options["to"] == ["b@x.test", "c@x.test"]
    assert (options["cc"], options["bcc"]) == (["d@x.test"], ["e@x.test"])
    assert options["attach"] == [str(tmp_path / "a.bin")]
    assert options["header"] == [("X-A", "1")]
    assert options["verbose"]


@pytest.mark.parametrize(
    "name, ok",
    [("X-Tag", True), ("x!#$%&'*+-.^_`|~", True), ("Bad Name", False), ("Bäd", False), ("", False),
     ("A\tB", False), ("A\x7f", False)],
)
def test_header_field_names_follow_rfc_5322(name: str, ok: bool) -> None:
    if ok:
        assert parse_header(f"{name}: v") == (name, "v")
    else:
        with pytest.raises(ValueError):
            parse_header(f"{name}: v")


def test_attachment_type_guessed_or_given(tmp_path: Path) -> None:
    (tmp_path / "r.pdf").write_bytes(b"%PDF")
    (tmp_path / "data").write_bytes(b"\0\1")
    assert parse_attachment(str(tmp_path / "r.pdf")).content_type == "application/pdf"
    assert parse_attachment(str(tmp_path / "data")).content_type == "application/octet-stream"
    given = parse_attachment(f"{tmp_path / 'data'};type=Text/CSV")
    assert (given.content_type, given.data) == ("text/csv", b"\0\1")
    for bad in (f"{tmp_path / 'data'};type=csv", str(tmp_path / "absent")):
        with pytest.raises(ValueError):
            parse_attachment(bad)


@pytest.mark.parametrize(
    "argv",
    [
        [],  # nothing to send
        ["--to", "a@x.test"],  # still nothing to send
        ["--subject", "s"],  # composed without --to
        ["--subject", "s", "--to", "a@x.test", "--script", "s.toml"],
        ["--message", "m.eml", "--spool", "SPOOL"],
        ["--message", "m.eml", "--body", "b", "--to", "a@x.test"],
        ["--spool", "SPOOL", "--port", "0"],
        ["--spool", "SPOOL", "--port", "65536"],
        ["--spool", "SPOOL", "--port", "smtp"],
        ["--spool", "SPOOL", "--connections", "0"],
        ["--spool", "SPOOL", "--connections", "101"],
        ["--spool", "SPOOL", "--max-messages-per-connection", "0"],
        ["--spool", "SPOOL", "--max-messages-per-connection", "many"],
        ["--spool", "SPOOL", "--retries", "-1"],
        ["--spool", "SPOOL", "--retries", "11"],
        ["--spool", "SPOOL", "--rate", "0/1"],
        ["--spool", "SPOOL", "--rate", "10/0"],
        ["--spool", "SPOOL", "--rate", "10/-1"],
        ["--spool", "SPOOL", "--rate", "10/inf"],
        ["--spool", "SPOOL", "--rate", "fast"],
        ["--spool", "SPOOL", "--rate", "1.5/1"],
        ["--spool", "SPOOL", "--socket-timeout", "0"],
        ["--spool", "SPOOL", "--socket-timeout", "-1"],
        ["--spool", "SPOOL", "--socket-timeout", "nan"],
        ["--spool", "SPOOL", "--dsn-notify", "NEVER,SUCCESS"],
        ["--spool", "SPOOL", "--dsn-notify", "SOMETIMES"],
        ["--spool", "SPOOL", "--dsn-ret", "ALL"],
        ["--spool", "SPOOL", "--host", "h", "--ignore-tls", "--require-tls"],
        ["--spool", "SPOOL", "--host", "h", "--ignore-tls", "--opportunistic-tls"],
        ["--spool", "SPOOL", "--host", "h", "--secure", "--ignore-tls"],
        ["--spool", "SPOOL", "--host", "h", "--insecure", "--ca-certs", "ca.pem"],
        ["--spool", "SPOOL", "--host", "h", "--ca-certs", "/nonexistent/ca.pem"],
        ["--spool", "SPOOL", "--host", "h", "--tls-min-version", "1.1"],
        ["--spool", "SPOOL", "--host", "h", "--client-key", "k.pem"],  # a key without a certificate
        ["--spool", "SPOOL", "--host", "h", "--client-cert", "/nonexistent/c.pem"],
        ["--spool", "SPOOL", "--password-file", "f", "--password-env", "V"],
        ["--spool", "SPOOL", "--host", "h", "--maildir", "m"],
        ["--script", "HOSTSCRIPT", "--maildir", "m"],
        ["--spool", "SPOOL", "--password", "hunter2"],
        ["--spool", "SPOOL", "--no-such-option"],
        ["--spool", "SPOOL", "--to", "a@x.test,b@x.test"],
        ["--spool", "SPOOL", "--to", "not an address"],
        ["--spool", "SPOOL", "--from", "Ann <ann@x.test"],
        ["--subject", "s", "--to", " "],
        ["--subject", "s", "--to", "a@x.test", "--header", "Bad Name: v"],
        ["--subject", "s", "--to", "a@x.test", "--header", "no colon"],
        ["--subject", "s", "--to", "a@x.test", "--attach", "/nonexistent/file"],
        ["--subject", "s", "--to", "a@x.test", "--body", "b", "--body-file", "f"],
        ["--subject", "s", "--to", "a@x.test", "--body-file", "/nonexistent/body.txt"],
        ["--to", "a@x.test", "--body-file", "-", "--html-body-file", "-"],
        ["--quit-after", "mail", "--host", "h", "--from", "not an address"],
        ["--quit-after", "rcpt", "--host", "h"],  # no --to
        ["--quit-after", "rcpt", "--host", "h", "--to", "a@@x.test"],
        ["--quit-after", "data", "--host", "h"],
        ["--quit-after", "ehlo"],  # the embedded server is no server to probe
        ["--quit-after", "auth", "--host", "h"],  # no --user
        ["--quit-after", "ehlo", "--host", "h", "--spool", "SPOOL"],
    ],
)
def test_bad_usage(argv: list[str], spool: Path) -> None:
    script = spool.parent / "host.json"
    script.write_text(json.dumps({"connection": {"host": "h"}, "messages": [{"to": "a@x.test", "body": "b"}]}))
    prepare("--spool", str(spool))  # the baselines are fine
    prepare("--script", str(script))
    places = {"SPOOL": str(spool), "HOSTSCRIPT": str(script)}
    with pytest.raises(usage.UsageError):
        prepare(*[places.get(a, a) for a in argv])


def test_pool_options() -> None:
    options = parse("--spool", "d", "--max-messages-per-connection", "5", "--rate", "600/60", "--retries", "2")
    assert options["max-messages-per-connection"] == 5
    assert options["rate"] == "600/60"
    assert options["retries"] == 2
    s = resolve_settings(parse("--spool", "d", "--rate", "10"), {})
    assert (s.rate_limit, s.rate_interval) == (10, 1.0)
    defaults = parse("--spool", "d")
    assert (defaults["max-messages-per-connection"], defaults["rate"], defaults["retries"]) == (None, None, None)


def test_password_refusal_says_where_to_put_it() -> None:
    with pytest.raises(usage.UsageError) as caught:
        parse("--spool", "d", "--password", "hunter2")
    assert "--password-file" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_twistd_options_keep_the_usage_error() -> None:
    from twisted_smtpconn._cli._twistd import Options, SendService, makeService

    options = Options()
    options.parseOptions(["--port", "smtp", "--spool", "d"])
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


def test_pool_settings_from_flags_script_and_defaults() -> None:
    from twisted_smtpconn import SMTPPool

    defaults = resolve_settings(parse("--spool", "d", "--host", "h"), {}).pool_kwargs()
    assert defaults == {
        "max_connections": 1, "max_messages": 100, "rate_limit": None, "rate_interval": 1.0, "max_retries": 0,
    }
    # SMTPPool's own default for max_messages is what smtpsend keeps.
    import inspect

    assert inspect.signature(SMTPPool).parameters["max_messages"].default == 100
    script = {"host": "h", "connections": 3, "max_messages_per_connection": 7, "rate": "20/2", "retries": 1}
    s = resolve_settings(parse("--spool", "d"), script)
    assert s.pool_kwargs() == {
        "max_connections": 3, "max_messages": 7, "rate_limit": 20, "rate_interval": 2.0, "max_retries": 1,
    }
    flags = parse("--spool", "d", "--max-messages-per-connection", "9", "--rate", "5/1", "--retries", "0")
    s = resolve_settings(flags, script)
    assert s.pool_kwargs() == {
        "max_connections": 3, "max_messages": 9, "rate_limit": 5, "rate_interval": 1.0, "max_retries": 0,
    }


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
        ([], {"host": "h", "max_messages_per_connection": 0}),
        ([], {"host": "h", "retries": -1}),
        ([], {"host": "h", "retries": 11}),
        ([], {"host": "h", "rate": "fast"}),
        ([], {"host": "h", "rate": 10}),
        ([], {"host": "h", "rate": "0/1"}),
    ],
)
def test_bad_settings(argv: list[str], script: dict[str, Any]) -> None:
    options = parse("--spool", "d", *argv)
    with pytest.raises(usage.UsageError):
        resolve_settings(options, script)


def test_connection_kwargs() -> None:
    options = parse("--spool", "d", "--host", "h", "--insecure", "--tls-servername", "mx.test", "--lmtp")
    kwargs = resolve_settings(options, {}).connection_kwargs(None)
    assert kwargs["tls"] == {"servername": "mx.test", "reject_unauthorized": False}
    assert kwargs["lmtp"] is True
    assert "connection_timeout" not in kwargs  # library default
    embedded = resolve_settings(parse("--spool", "d"), {})
    assert embedded.embedded and embedded.connection_kwargs(None)["tls"] is None
    tls = parse("--spool", "d", "--host", "h", "--tls-min-version", "1.3", "--client-cert", __file__)
    assert resolve_settings(tls, {}).connection_kwargs(None)["tls"] == {
        "min_version": "TLSv1.3", "client_cert": __file__,
    }
    unix = resolve_settings(parse("--spool", "d", "--unix-socket", "/run/lmtp", "--lmtp"), {})
    assert not unix.embedded
    assert unix.connection_kwargs(None)["endpoint"]._path == "/run/lmtp"


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
    assert second.dsn == DSN(ret="HDRS", envid="e1", notify=("FAILURE", "DELAY"))
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
        (".json", '{"messages": [{"to": "a@x,b@x", "body": "b"}]}', "use a list"),
        (".json", '{"messages": [{"to": "a@x", "body": "b", "dsn": {"notify": "NEVER,DELAY"}}]}', "NEVER"),
        (".json", '{"messages": [{"to": "a@x", "body": "b", "dsn": {"ret": "X"}}]}', "'FULL' or 'HDRS'"),
        (".json", '{"messages": [{"to": "a@x", "body": "b", "headers": {"a": 1}}]}', "headers"),
        (".json", '{"messages": [{"to": "a@x", "body": "b", "headers": {"Bad Name": "1"}}]}', "field name"),
        (".json", '{"messages": [{"to": "a@x", "body": "b", "dsn": {"envid": "é"}}]}', "envid"),
        (".json", '{"messages": [{"to": "a@x", "body": "b", "dsn": {"when": "x"}}]}', "unknown dsn key"),
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
    assert all(j.rcpt_to for j in jobs)


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
    (tmp_path / "ignored.txt").write_bytes(b"To: nobody@x.test\r\n\r\n")
    jobs = collect_jobs(parse("--spool", str(tmp_path)), None)
    assert [Path(j.source).name for j in jobs] == ["a.eml", "b.eml"]
    a, b = jobs
    assert (a.mail_from, a.rcpt_to) == ("s@x.test", ("r@x.test",))
    assert b.rcpt_to == ("t1@x.test", "t2@x.test", "c@x.test", "hidden@x.test", "hidden2@x.test")
    with b.content.open() as f:
        sent = f.read()
    assert b"hidden" not in sent.split(b"\r\n\r\n")[0]
    assert sent.endswith(b"\r\n\r\nBcc: not a header\r\n")
    flagged = collect_jobs(parse("--spool", str(tmp_path), "--to", "over@x.test", "--from", "me@x.test"), None)
    assert {(j.mail_from, j.rcpt_to) for j in flagged} == {("me@x.test", ("over@x.test",))}
    assert len(flagged) == 2
    # A message without recipients is a mistake in the spool: found before
    # anything is sent.
    (tmp_path / "c.eml").write_bytes(b"Subject: no recipients\r\n\r\nx\r\n")
    with pytest.raises(usage.UsageError, match="c.eml: no recipients"):
        collect_jobs(parse("--spool", str(tmp_path)), None)
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
    out = without_bcc_bytes(head + tail)
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
    # Header whitespace is not significant beyond separating words (RFC 5322
    # folding; parsers drop the blanks after the colon).
    assert " ".join(parsed["Subject"].split()) == " ".join(subject.split())
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
    tally.add(Outcome.not_sent(_job(5), reason=ErrorInfo("EX", "x"), exit_code=EX_DATAERR))
    tally.counts["failed"], tally.counts["not-sent"] = 1, 0
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


# -- delivery through the pool ------------------------------------------------------


def _pool(endpoint: Any, reactor: Any, connections: int, **options: Any) -> Any:
    from twisted_smtpconn import SMTPPool

    options.setdefault("max_retries", 0)
    return SMTPPool(
        endpoint=endpoint, reactor=reactor, name="client.example", max_connections=connections, **options
    )


def _deliver(reactor: Any, pool: Any, jobs: Any, connections: int, control: RunControl | None = None,
             ) -> tuple[Any, list[Outcome], list[str]]:
    from twisted.internet.defer import Deferred

    outcomes: list[Outcome] = []
    notices: list[str] = []
    d = Deferred.fromCoroutine(deliver_all(
        reactor, pool, jobs, connections=connections, record=outcomes.append, notice=notices.append,
        control=control if control is not None else RunControl(),
    ))
    return d, outcomes, notices


def _summary(outcomes: list[Outcome]) -> list[tuple[int, str, int, int, int]]:
    """(index, status, exit code, connection, attempts), in job order."""
    return sorted((o.job.index, o.status, o.exit_code, o.connection, o.attempts) for o in outcomes)


def test_delivery_reports_every_job_once_and_replaces_a_broken_connection() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from wiretools import AutoEndpoint, AutoServer, result

    server = AutoServer()
    endpoint = AutoEndpoint(server)

    def rcpt(address: str, n: int) -> bytes:
        if address == "drop@x.test":  # the server goes away mid-envelope
            endpoint.transports[-1].disconnecting = True
            endpoint.transports[-1].protocol.connectionLost(Failure(ConnectionLost()))
        if address == "refused@x.test":
            return b"550 5.1.1 no such user"
        return b"250 ok"

    server.rcpt = rcpt
    reactor = MemoryReactorClock()
    jobs = [
        _job(1),
        _job(2, rcpt_to=("drop@x.test",)),
        _job(3, rcpt_to=("refused@x.test",)),
        _job(4),
        _job(5),
        _job(6, content=MessageContent(path=Path("/nonexistent/removed-since-checked.eml"))),
    ]
    d, outcomes, notices = _deliver(reactor, _pool(endpoint, reactor, 1), jobs, 1)
    result(d)
    assert _summary(outcomes) == [
        (1, "sent", EX_OK, 1, 1),
        (2, "failed", EX_TEMPFAIL, 1, 1),  # an established connection broke
        (3, "failed", EX_DATAERR, 2, 1),  # refused: connection 2 stays
        (4, "sent", EX_OK, 2, 1),
        (5, "sent", EX_OK, 2, 1),
        (6, "failed", EX_DATAERR, 0, 0),
    ]
    assert notices == []
    assert server.connections == 2
    assert server.commands[-1] == b"QUIT"
    assert reactor.getDelayedCalls() == []
    line = outcomes[0].as_report()
    assert (line["connection"], line["attempts"]) == (1, 1)


def test_delivery_gives_up_when_no_connection_can_be_made() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from wiretools import RefusingEndpoint
    from wiretools import result

    endpoint = RefusingEndpoint()
    reactor = MemoryReactorClock()
    d, outcomes, notices = _deliver(reactor, _pool(endpoint, reactor, 3), [_job(i) for i in range(1, 11)], 3)
    result(d)
    # One failed connection per connection in a row, then nothing more is tried.
    assert endpoint.attempts == 3
    assert _summary(outcomes) == (
        [(i, "not-sent", EX_UNAVAILABLE, 0, 1) for i in (1, 2, 3)]
        + [(i, "not-sent", EX_UNAVAILABLE, 0, 0) for i in range(4, 11)]
    )
    assert {o.error.code for o in outcomes if o.error} == {"ECONNECTION"}
    [notice] = notices
    assert notice.startswith("giving up after 3 connection attempt(s) in a row: could not connect: ")
    assert reactor.getDelayedCalls() == []


def test_delivery_gives_up_on_a_server_that_keeps_dropping_us() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from wiretools import AutoEndpoint, AutoServer, result

    server = AutoServer()
    server.drop_after_dot = 1000
    reactor = MemoryReactorClock()
    pool = _pool(AutoEndpoint(server), reactor, 2)
    d, outcomes, notices = _deliver(reactor, pool, [_job(i) for i in range(1, 21)], 2)
    result(d)
    limit = BROKEN_PER_CONNECTION * 2
    assert len(server.messages) == limit  # each one may have arrived: never retried
    statuses = [o.status for o in sorted(outcomes, key=lambda o: o.job.index)]
    assert statuses == ["failed"] * limit + ["not-sent"] * (20 - limit)
    assert len(notices) == 1 and "lost their connection" in notices[0]


def test_delivery_hands_the_pool_a_bounded_window() -> None:
    """A long run takes jobs from its source only as sends finish."""
    from twisted.internet.testing import MemoryReactorClock

    from wiretools import HoldingServer
    from wiretools import AutoEndpoint, result

    pulled: list[int] = []

    def source() -> Any:
        for i in range(1, 31):
            pulled.append(i)
            yield _job(i)

    server = HoldingServer()
    reactor = MemoryReactorClock()
    d, outcomes, notices = _deliver(reactor, _pool(AutoEndpoint(server), reactor, 3), source(), 3)
    window = WINDOW_PER_CONNECTION * 3
    assert len(pulled) == window and len(server.held) == 3
    for _ in range(30):
        if not server.held:
            break
        server.answer()
        in_hand = len(pulled) - len(outcomes)
        assert in_hand <= window
    result(d)
    assert sorted(o.job.index for o in outcomes) == list(range(1, 31))
    assert {(o.status, o.attempts) for o in outcomes} == {("sent", 1)}
    assert {o.connection for o in outcomes} == {1, 2, 3}
    assert server.connections == 3
    assert reactor.getDelayedCalls() == []


def test_stop_finishes_the_messages_in_flight_and_reports_the_rest() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from wiretools import HoldingServer
    from wiretools import AutoEndpoint, pending, result

    server = HoldingServer()
    reactor = MemoryReactorClock()
    control = RunControl()
    d, outcomes, notices = _deliver(
        reactor, _pool(AutoEndpoint(server), reactor, 2), [_job(i) for i in range(1, 8)], 2, control
    )
    # Jobs 1 and 2 are being sent; 3 and 4 wait in the pool for a connection.
    assert len(server.held) == 2 and outcomes == []
    control.stop()  # Ctrl-C
    assert [(o.job.index, o.status) for o in outcomes] == [(3, "not-sent"), (4, "not-sent")]
    assert pending(d)
    server.answer()
    result(d)
    assert _summary(outcomes) == [
        (1, "sent", EX_OK, 1, 1),
        (2, "sent", EX_OK, 2, 1),
        *[(i, "not-sent", EX_TEMPFAIL, 0, 0) for i in range(3, 8)],
    ]
    assert {o.error.code for o in outcomes if o.error} == {"EINTERRUPTED"}
    assert server.commands.count(b"QUIT") == 2
    assert reactor.getDelayedCalls() == []


def test_abort_cuts_the_messages_in_flight() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from wiretools import HoldingServer
    from wiretools import AutoEndpoint, result

    server = HoldingServer()
    reactor = MemoryReactorClock()
    endpoint = AutoEndpoint(server)
    control = RunControl()
    d, outcomes, notices = _deliver(reactor, _pool(endpoint, reactor, 1), [_job(i) for i in range(1, 4)], 1, control)
    control.stop()
    control.abort()  # the grace period is over
    result(d)
    assert [(i, status) for i, status, *_ in _summary(outcomes)] == [
        (1, "failed"), (2, "not-sent"), (3, "not-sent"),
    ]
    cut = next(o for o in outcomes if o.job.index == 1)
    assert cut.exit_code == EX_TEMPFAIL and cut.connection == 1
    assert cut.error is not None and cut.error.code == "EINTERRUPTED"
    assert "the server may have it" in cut.error.message  # the final dot had gone out
    assert endpoint.transports[0].aborted and b"QUIT" not in server.commands
    assert reactor.getDelayedCalls() == []


def test_stop_before_the_pool_exists() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from wiretools import AutoEndpoint, AutoServer, result

    server = AutoServer()
    reactor = MemoryReactorClock()
    control = RunControl()
    control.stop()  # Ctrl-C while the embedded server was starting
    d, outcomes, notices = _deliver(reactor, _pool(AutoEndpoint(server), reactor, 2), [_job(i) for i in range(1, 4)],
                                    2, control)
    result(d)
    assert [o.status for o in outcomes] == ["not-sent"] * 3
    assert server.connections == 0


def test_delivery_retries_through_the_pool() -> None:
    """--retries: a 4xx before the dot is tried again; the report counts the attempts."""
    from twisted.internet.testing import MemoryReactorClock

    from wiretools import AutoEndpoint, AutoServer, pending, result

    server = AutoServer()
    refusals = [b"451 4.3.0 greylisted"]
    server.rcpt = lambda address, n: refusals.pop() if refusals else b"250 ok"
    reactor = MemoryReactorClock()
    pool = _pool(AutoEndpoint(server), reactor, 1, max_retries=2, retry_delay=5.0)
    d, outcomes, notices = _deliver(reactor, pool, [_job(1), _job(2)], 1)
    assert pending(d)
    reactor.advance(5)
    result(d)
    assert _summary(outcomes) == [(1, "sent", EX_OK, 1, 2), (2, "sent", EX_OK, 1, 1)]
    assert len(server.messages) == 2


def test_line_breaks_in_header_values_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError):
        collect_jobs(parse("--subject", "hi\r\nBcc: victim@x.test", "--to", "a@x.test"), None)
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"messages": [{"to": "a@x.test", "body": "b", "headers": {"X-A": "1\nX-B: 2"}}]}))
    with pytest.raises(usage.UsageError):
        collect_jobs(parse("--script", str(path)), load_script(path))
