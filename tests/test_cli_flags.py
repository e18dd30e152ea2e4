"""
The flags and behaviours people coming from swaks reach for, each proved
by what a real server received (aiosmtpd, the private Postfix), through
real ``python -m twisted_smtpconn`` and ``twistd -n smtpsend`` processes.

Runs are grouped: one run checks as many flags as its server can show.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from clitools import FRONT_ENDS, read_report, run, start
from realservers.aiosmtpd_peer import AiosmtpdServer, ReceivedMessage
from realservers.ports import free_port
from tls_peers import Certs, make_certs, server_ssl_context
from twisted_smtpconn._cli import EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE

PASSWORD = "s3cret pass-phrase"


def parse(content: bytes) -> Any:
    return email.message_from_bytes(content, policy=email.policy.default)


def usage_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("smtpsend: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


# -- composing a message ----------------------------------------------------------------


@dataclass
class _Files:
    blob: Path
    csv: Path
    png: Path
    body: Path
    html: Path


def _files(tmp_path: Path) -> _Files:
    files = _Files(
        blob=tmp_path / "blob.bin",
        csv=tmp_path / "table.txt",
        png=tmp_path / "dot.png",
        body=tmp_path / "body.txt",
        html=tmp_path / "body.html",
    )
    files.blob.write_bytes(os.urandom(3000) + b"\r\n.\r\n\x00\xff")
    files.csv.write_bytes(b"a,b\nc,d\n")
    files.png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    files.body.write_text("Grüße from the body file.\n.leading dot line\n", encoding="utf-8")
    files.html.write_text("<p>Gr&uuml;&szlig;e <b>from</b> HTML</p>\n", encoding="utf-8")
    return files


def _check_composed(message: ReceivedMessage, content: bytes, files: _Files) -> None:
    """What every composed-message run must have delivered."""
    assert message.mail_from == "alice@example.test"  # the bare address of --from
    assert list(message.rcpt_tos) == [
        "bob@example.test", "carol@example.test", "dave@example.test", "eve@example.test",
    ]
    parsed = parse(content)
    assert parsed["From"].addresses[0].display_name == "Alice Example"
    assert parsed["From"].addresses[0].addr_spec == "alice@example.test"
    assert [a.addr_spec for a in parsed["To"].addresses] == ["bob@example.test", "carol@example.test"]
    assert [a.addr_spec for a in parsed["Cc"].addresses] == ["dave@example.test"]
    # Bcc: a recipient, never a field, never named.
    assert parsed["Bcc"] is None and b"eve@example.test" not in content
    assert parsed["X-Campaign"] == "swaks-parity 1"
    assert parsed["Reply-To"] == "replies@example.test"
    assert parsed["Subject"] == "Flags"
    assert parsed.get_content_type() == "multipart/mixed"
    alternative, *attachments = parsed.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    text, html = alternative.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content().replace("\r\n", "\n") == files.body.read_text(encoding="utf-8")
    assert html.get_content_type() == "text/html"
    assert html.get_content().replace("\r\n", "\n") == files.html.read_text(encoding="utf-8")
    got = {a.get_filename(): (a.get_content_type(), a.get_payload(decode=True)) for a in attachments}
    assert got == {
        "blob.bin": ("application/octet-stream", files.blob.read_bytes()),
        "table.txt": ("text/csv", files.csv.read_bytes()),  # PATH;type=TYPE
        "dot.png": ("image/png", files.png.read_bytes()),  # guessed
    }
    assert b"\r\n" in content and b"\n" not in content.replace(b"\r\n", b"")


@pytest_twisted.ensureDeferred
async def test_composed_message_long_flags_python_m(tmp_path: Path, aiosmtpd_server: AiosmtpdServer) -> None:
    """
    --from "Name <addr>", --to twice, --cc, --bcc, --header twice,
    --body-file - (standard input), --html-body-file, --attach three times
    (guessed, generic and overridden types): all in one message.  A display
    name in --to stays in the field; the envelope takes the address.
    """
    files = _files(tmp_path)
    result = await run(
        "python -m",
        ["--host", "127.0.0.1", "--port", str(aiosmtpd_server.port), "--from", "Alice Example <alice@example.test>",
         "--to", "Bob Example <bob@example.test>", "--to", "carol@example.test", "--cc", "dave@example.test",
         "--bcc", "eve@example.test", "--header", "X-Campaign: swaks-parity 1",
         "--header", "Reply-To: replies@example.test", "--subject", "Flags", "--body-file", "-",
         "--html-body-file", str(files.html), "--attach", str(files.blob),
         "--attach", f"{files.csv};type=text/csv", "--attach", str(files.png)],
        tmp_path,
        stdin=files.body.read_bytes(),
    )
    assert result.code == EX_OK, result.out + result.err
    [message] = aiosmtpd_server.messages
    _check_composed(message, message.content, files)
    assert parse(message.content)["To"].addresses[0].display_name == "Bob Example"


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_composed_message_short_flags_twistd_through_postfix(tmp_path: Path, postfix_server: Any) -> None:
    """
    The same message with swaks' short forms (-s -p -f -t -a), --body-file
    FILE and --html-body, through twistd and the private Postfix (which is
    set up to keep a Bcc field if one came): what Postfix relays is what we
    composed.
    """
    from twisted.internet import reactor

    files = _files(tmp_path)
    result = await run(
        "twistd",
        ["-s", "127.0.0.1", "-p", str(postfix_server.port), "-f", "Alice Example <alice@example.test>",
         "-t", "bob@example.test", "-t", "carol@example.test", "--cc", "dave@example.test",
         "--bcc", "eve@example.test", "--header", "X-Campaign: swaks-parity 1",
         "--header", "Reply-To: replies@example.test", "--subject", "Flags", "--body-file", str(files.body),
         "--html-body", files.html.read_text(encoding="utf-8"), "-a", str(files.blob),
         "-a", f"{files.csv};type=text/csv", "-a", str(files.png)],
        tmp_path,
    )
    assert result.code == EX_OK, result.out + result.err
    relayed = await postfix_server.recorder.when_match(
        lambda m: m.mail_from == "alice@example.test" and b"swaks-parity" in m.content, reactor, timeout=30.0
    )
    _check_composed(relayed, postfix_server.strip_received(relayed.content), files)


# -- mistakes are found before anything is sent ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_mistake_is_64_and_nothing_is_sent(tmp_path: Path, aiosmtpd_server: AiosmtpdServer) -> None:
    """
    A mistake anywhere -- in a flag, in the second message of a script or
    the last file of a spool -- ends the run with exit 64 and one line,
    before the first connection: the server receives nothing.
    """
    good = {"to": "ok@example.test", "subject": "first", "body": "fine"}

    def script(name: str, second: dict[str, Any], **top: Any) -> str:
        import json

        path = tmp_path / name
        path.write_text(json.dumps({**top, "messages": [good, second]}))
        return str(path)

    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "1.eml").write_bytes(b"From: a@example.test\r\nTo: ok@example.test\r\n\r\nfine\r\n")
    (spool / "2.eml").write_bytes(b"From: a@example.test\r\nSubject: nobody to send to\r\n\r\nx\r\n")
    server = ["--host", "127.0.0.1", "--port", str(aiosmtpd_server.port)]
    composed = [*server, "--subject", "s", "--body", "b"]
    cases: list[tuple[list[str], str]] = [
        ([*composed, "--to", "a@example.test,b@example.test"], "repeat --to"),
        ([*composed, "--to", "a@example.test", "--cc", "c@example.test, d@example.test"], "repeat --cc"),
        ([*composed, "--to", "a@example.test", "--header", "X Bad: v"], "field name"),
        ([*composed, "--to", "a@example.test", "--header", "Tëst: v"], "field name"),
        ([*composed, "--to", "a@example.test", "--attach", str(tmp_path / "absent.pdf")], "absent.pdf"),
        ([*composed, "--to", "a@example.test", "--from", "Ann <ann@example.test"], "not 'Name <address>'"),
        ([*composed, "--to", "Bob <bob@example.test> <x@example.test>"], "not 'Name <address>'"),
        ([*server, "--script", script("addr.json", {"to": "bad address@example.test", "body": "b"})],
         "messages[1]"),
        ([*server, "--script", script("dsn.json", {"to": "b@example.test", "body": "b", "dsn": {"ret": "ALL"}})],
         "dsn.ret"),
        ([*server, "--script", script("eml.json", {"eml": "absent.eml"})], "absent.eml"),
        ([*server, "--script", script("key.json", {"to": "b@example.test", "body": "b", "colour": "red"})],
         "unknown key 'colour'"),
        ([*server, "--script", script("hdr.json", {"to": "b@example.test", "body": "b", "headers": {"Bcc:": "x"}})],
         "field name"),
        ([*server, "--spool", str(spool)], "2.eml: no recipients"),
        ([*server, "--quit-after", "rcpt"], "needs --to"),
    ]
    for args, words in cases:
        result = await run("python -m", args, tmp_path)
        assert result.code == EX_USAGE, (args, result.out + result.err)
        assert words in usage_line(result.err), (words, result.err)
        assert result.out == ""
    assert aiosmtpd_server.messages == ()


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_script_cc_and_bcc_headers_are_recipients(tmp_path: Path, postfix_server: Any) -> None:
    """
    A script's ``headers`` Cc and Bcc become recipients; the Bcc field is
    not sent (the private Postfix would pass one through).
    """
    from twisted.internet import reactor

    path = tmp_path / "s.toml"
    path.write_text(
        """
from = "Script Sender <script@example.test>"
[[messages]]
to = "main@example.test"
subject = "script cc/bcc"
body = "hello"
headers = { Cc = "Copy <copy@example.test>", Bcc = "hidden@example.test, hidden2@example.test", X-Run = "cc-bcc" }
"""
    )
    report = tmp_path / "r.jsonl"
    result = await run(
        "python -m",
        ["--host", "127.0.0.1", "--port", str(postfix_server.port), "--script", str(path), "--report", str(report)],
        tmp_path,
    )
    assert result.code == EX_OK, result.out + result.err
    relayed = await postfix_server.recorder.when_match(lambda m: b"cc-bcc" in m.content, reactor, timeout=30.0)
    assert relayed.mail_from == "script@example.test"
    assert sorted(relayed.rcpt_tos) == sorted(
        ["main@example.test", "copy@example.test", "hidden@example.test", "hidden2@example.test"]
    )
    content = postfix_server.strip_received(relayed.content)
    parsed = parse(content)
    assert parsed["Cc"] == "Copy <copy@example.test>" and parsed["Bcc"] is None
    assert b"hidden" not in content
    [line] = read_report(report)
    assert sorted(line["accepted"]) == sorted(relayed.rcpt_tos)


# -- --quit-after, TLS flags, certificate and AUTH errors, --debug ---------------------


@dataclass
class _Event:
    command: str
    tls: bool
    authenticated: bool


@dataclass
class _Probe:
    """aiosmtpd with STARTTLS and AUTH that notes each command it handles."""

    port: int
    events: list[_Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def commands(self) -> list[str]:
        with self.lock:
            return [e.command for e in self.events]

    def clear(self) -> None:
        with self.lock:
            self.events.clear()


@pytest.fixture
def probe_server(certs: Certs) -> Iterator[_Probe]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    probe = _Probe(port=free_port())

    class Handler:
        def note(self, command: str, session: Any) -> None:
            with probe.lock:
                probe.events.append(_Event(command, session.ssl is not None, bool(session.authenticated)))

        async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
            self.note("EHLO", session)
            session.host_name = hostname
            return responses

        async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
            self.note("MAIL", session)
            envelope.mail_from = address
            return "250 OK"

        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
            self.note("RCPT", session)
            if address.startswith("nobody@"):
                return "550 5.1.1 no such user"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
            self.note("RSET", session)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.note("DATA", session)
            return "250 OK"

        async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
            self.note("QUIT", session)
            return "221 Bye"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"probe", PASSWORD.encode())
        return AuthResult(success=ok, handled=False)

    handler = Handler()

    class ProbeSMTP(SMTP):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if self.session.ssl is None:  # (STARTTLS calls it again)
                handler.note("CONNECT", self.session)

    class ProbeController(Controller):
        def factory(self) -> SMTP:
            return ProbeSMTP(self.handler, **self.SMTP_kwargs)

    controller = ProbeController(
        handler,
        hostname="127.0.0.1",
        port=probe.port,
        tls_context=server_ssl_context(certs.server),
        authenticator=authenticator,
        auth_require_tls=True,
    )
    controller.start()
    probe.clear()  # the controller's own readiness check
    try:
        yield probe
    finally:
        controller.stop()


@pytest_twisted.ensureDeferred
async def test_quit_after_each_stage(tmp_path: Path, certs: Certs, probe_server: _Probe) -> None:
    """
    --quit-after STAGE goes exactly as far as STAGE and sends nothing;
    --debug shows the dialogue on stderr without the password.
    """
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    base = ["--host", "127.0.0.1", "--port", str(probe_server.port), "--ca-certs", certs.ca_file,
            "--user", "probe", "--password-file", str(tmp_path / "pw")]
    expected = {
        "connect": ["CONNECT"],  # connected and closed: not even EHLO
        "greeting": ["CONNECT", "EHLO", "QUIT"],  # the library reads the greeting and says EHLO in one step
        "ehlo": ["CONNECT", "EHLO", "QUIT"],
        "tls": ["CONNECT", "EHLO", "EHLO", "QUIT"],
        "auth": ["CONNECT", "EHLO", "EHLO", "QUIT"],
        # MAIL (and RCPT) tried, then reset; never DATA.
        "mail": ["CONNECT", "EHLO", "EHLO", "MAIL", "RSET", "QUIT"],
        "rcpt": ["CONNECT", "EHLO", "EHLO", "MAIL", "RCPT", "RCPT", "RSET", "QUIT"],
    }
    envelope = ["--from", "Probe <probe@example.test>", "--to", "you@example.test", "--cc", "nobody@example.test"]
    for stage, commands in expected.items():
        probe_server.clear()
        extra = ["--debug"] if stage == "auth" else envelope if stage in ("mail", "rcpt") else []
        result = await run("python -m", [*base, "--quit-after", stage, *extra], tmp_path)
        output = result.out + result.err
        if stage == "auth":
            debug_run = result
        assert result.code == EX_OK, (stage, output)
        assert f"quit after {stage}: every step succeeded" in result.out
        await _settle(lambda: probe_server.commands() == commands)
        events = probe_server.events
        assert [e.command for e in events] == commands, stage
        if stage in ("tls", "auth", "mail", "rcpt"):
            assert events[-1].tls
        else:
            assert not any(e.tls for e in events)
        if stage == "rcpt":
            assert "rcpt: <you@example.test>: 250" in result.out
            assert "rcpt: <nobody@example.test>: 550 5.1.1 no such user" in result.out
        logged_in = stage in ("auth", "mail", "rcpt")
        assert events[-1].authenticated if logged_in else not any(e.authenticated for e in events)
    # The --debug run: the wire on stderr, the password nowhere.
    output = debug_run.out + debug_run.err
    assert "EHLO" in debug_run.err and "AUTH" in debug_run.err
    # After STARTTLS, as swaks shows it: version, cipher, the certificate.
    assert "TLS handshake with 127.0.0.1 completed: TLSv1." in debug_run.err
    assert "server certificate 'OU=Testing cert" in debug_run.err and "issued by '" in debug_run.err
    assert PASSWORD not in output
    import base64

    assert base64.b64encode(f"\0probe\0{PASSWORD}".encode()).decode() not in output


async def _settle(done: Any) -> None:
    """aiosmtpd runs in its own thread: give its last hook a moment."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(100):
        if done():
            return
        await deferLater(reactor, 0.05)


@pytest_twisted.ensureDeferred
async def test_failures_say_what_failed(tmp_path: Path, certs: Certs, probe_server: _Probe) -> None:
    """
    A refused login says "authentication failed", not "could not get a
    connection"; a certificate error names the CA file used, or says the
    system store was used; the other messages of the run are in the
    report, not on the terminal.
    """
    spool = tmp_path / "spool"
    spool.mkdir()
    for i in range(3):
        (spool / f"{i}.eml").write_bytes(f"From: a@example.test\r\nTo: b{i}@example.test\r\n\r\nx\r\n".encode())
    (tmp_path / "wrong").write_text("not the password\n")
    server = ["--host", "127.0.0.1", "--port", str(probe_server.port), "--spool", str(spool)]
    report = tmp_path / "r.jsonl"
    result = await run(
        "python -m",
        [*server, "--ca-certs", certs.ca_file, "--user", "probe", "--password-file", str(tmp_path / "wrong"),
         "--report", str(report)],
        tmp_path,
    )
    assert result.code == EX_UNAVAILABLE, result.out + result.err
    assert "giving up after 1 connection attempt(s) in a row: authentication failed" in result.err
    assert "could not get a connection" not in result.err
    assert "not-sent" not in result.err  # per-message lines: the report only
    assert [line["status"] for line in read_report(report)] == ["not-sent"] * 3
    assert {line["error"]["code"] for line in read_report(report)} == {"EAUTH"}

    for ca_flags, words in (
        (["--ca-certs", certs.unknown_ca_file], f"trusted CAs from --ca-certs {certs.unknown_ca_file}"),
        ([], "trusted CAs from the system store"),
    ):
        result = await run("twistd", [*server, *ca_flags], tmp_path)
        assert result.code == EX_UNAVAILABLE, result.out + result.err
        assert "TLS failed" in result.out and words in result.out, result.out
    assert "MAIL" not in probe_server.commands()


@pytest_twisted.ensureDeferred
async def test_client_certificate_and_tls_min_version(
    tmp_path: Path, certs: Certs, make_aiosmtpd: Any
) -> None:
    """
    --client-cert/--client-key: a server that demands a client certificate
    (and speaks at most TLS 1.2) takes the message; without one it refuses
    the handshake; --tls-min-version 1.3 refuses the server.
    """
    server = make_aiosmtpd(
        tls_context=server_ssl_context(certs.server, maximum_version=ssl.TLSVersion.TLSv1_2, client_ca=certs.ca),
        require_starttls=True,
    )
    base = ["--host", "127.0.0.1", "--port", str(server.port), "--require-tls", "--ca-certs", certs.ca_file,
            "--to", "tls@example.test", "--subject", "client cert", "--body", "b"]
    identity = ["--client-cert", certs.client_cert_file, "--client-key", certs.client_key_file]
    result = await run("python -m", [*base, *identity, "--tls-min-version", "1.2"], tmp_path)
    assert result.code == EX_OK, result.out + result.err
    [message] = server.messages
    assert message.tls and message.rcpt_tos == ("tls@example.test",)
    result = await run("python -m", base, tmp_path)
    assert result.code == EX_UNAVAILABLE, result.out + result.err
    result = await run("twistd", [*base, *identity, "--tls-min-version", "1.3"], tmp_path)
    assert result.code == EX_UNAVAILABLE, result.out + result.err
    assert "TLS failed" in result.out
    assert len(server.messages) == 1


# -- --unix-socket (LMTP to a local delivery agent) ------------------------------------


@pytest.fixture
def lmtp_socket() -> Iterator[tuple[Path, Any]]:
    """aiosmtpd's LMTP server on a UNIX socket, recording what it delivers."""
    import tempfile

    from aiosmtpd.controller import UnixSocketController

    from realservers.aiosmtpd_peer import MessageRecorder, RecordingHandler, RecordingLMTP

    recorder = MessageRecorder()
    handler = RecordingHandler(recorder)
    directory = Path(tempfile.mkdtemp(prefix="smtpsend-lmtp-"))
    path = directory / "lmtp.sock"

    class LMTPController(UnixSocketController):
        def factory(self) -> Any:
            return RecordingLMTP(self.handler, **self.SMTP_kwargs)

    controller = LMTPController(handler, unix_socket=str(path), decode_data=False)
    controller.start()
    try:
        yield path, recorder
    finally:
        controller.stop()
        path.unlink(missing_ok=True)
        directory.rmdir()


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest_twisted.ensureDeferred
async def test_unix_socket_lmtp(front_end: str, tmp_path: Path, lmtp_socket: tuple[Path, Any]) -> None:
    """--unix-socket PATH --lmtp: one reply per recipient, as a delivery agent gives them."""
    path, recorder = lmtp_socket
    report = tmp_path / "r.jsonl"
    result = await run(
        front_end,
        ["--unix-socket", str(path), "--lmtp", "--from", "a@example.test", "-t", "box@example.test",
         "-t", "lmtpfail@example.test", "--subject", "lmtp", "--body", "local", "--report", str(report)],
        tmp_path,
    )
    assert result.code == EX_DATAERR, result.out + result.err
    [message] = recorder.messages
    assert message.helo is not None and message.rcpt_tos == ("box@example.test", "lmtpfail@example.test")
    assert message.delivered_to == ("box@example.test",)
    assert parse(message.content)["Subject"] == "lmtp"
    [line] = read_report(report)
    assert (line["status"], line["accepted"]) == ("partial", ["box@example.test"])


# -- --version, -h ------------------------------------------------------------------------


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest_twisted.ensureDeferred
async def test_version_and_short_help(front_end: str, tmp_path: Path) -> None:
    result = await run(front_end, ["--version"], tmp_path)
    assert result.code == EX_OK, result.err
    assert result.out.strip() == f"smtpsend (twisted_smtpconn) {version('twisted_smtpconn')}"
    if front_end == "python -m":
        result = await run(front_end, ["-h"], tmp_path)
        assert result.code == EX_OK and "--quit-after" in result.out and "-t, --to" in result.out


# -- Ctrl-C on a long spool ------------------------------------------------------------------


@pytest.mark.parametrize("front_end, verbose", [("python -m", False), ("twistd", True)])
@pytest_twisted.ensureDeferred
async def test_interrupt_prints_the_notice_then_one_summary(
    front_end: str, verbose: bool, tmp_path: Path, make_aiosmtpd: Any
) -> None:
    """
    Ctrl-C on a 300-message spool sent to a slow server: the notice, then
    one summary line with the counts; the messages not sent get a line in
    the report, and on the terminal only with --verbose (after the notice).
    """
    import asyncio

    from realservers.aiosmtpd_peer import RecordingHandler

    server = make_aiosmtpd()
    handler: RecordingHandler = server.controller.handler
    original = handler.handle_DATA

    async def slow_data(*args: Any) -> Any:
        await asyncio.sleep(0.2)
        return await original(*args)

    handler.handle_DATA = slow_data  # type: ignore[method-assign]
    spool = tmp_path / "spool"
    spool.mkdir()
    for i in range(300):
        (spool / f"{i:03d}.eml").write_bytes(
            f"From: a@example.test\r\nTo: b{i}@example.test\r\nSubject: {i}\r\n\r\nx\r\n".encode()
        )
    report = tmp_path / "r.jsonl"
    process = start(
        FRONT_ENDS[front_end]
        + ["--host", "127.0.0.1", "--port", str(server.port), "--spool", str(spool), "--report", str(report)]
        + (["--verbose"] if verbose else []),
        tmp_path,
    )
    from twisted.internet import reactor

    await server.recorder.when_received(2, reactor, timeout=60.0)
    process.transport.signalProcess("INT")
    result = await process.finish()
    output = result.out + result.err
    if front_end == "twistd":
        assert result.signal == signal.SIGINT, output
    else:
        assert result.code == EX_TEMPFAIL, output
    lines = [line for line in result.both.splitlines() if "smtpsend: " in line]
    notice = [i for i, line in enumerate(lines) if "interrupted: finishing the messages in flight" in line]
    summary = [i for i, line in enumerate(lines) if "300 message(s): " in line]
    assert len(notice) == 1 and len(summary) == 1 and notice[0] < summary[0], output
    assert "exit status 75" in lines[summary[0]]
    statuses = [line["status"] for line in read_report(report)]
    assert len(statuses) == 300
    sent = statuses.count("sent")
    assert sent == len(server.messages) and 2 <= sent < 300
    assert statuses.count("not-sent") == 300 - sent
    assert f"{sent} sent, 0 partly refused, 0 failed, {300 - sent} not sent" in lines[summary[0]]
    not_sent = [i for i, line in enumerate(lines) if "interrupted before sending" in line]
    if verbose:
        assert len(not_sent) == 300 - sent and min(not_sent) > notice[0], output
    else:
        assert not_sent == [], output
