"""
``send_message`` and ``twisted_smtpconn.send`` end to end, with the job a
Twisted application such as Buildbot does: an ``EmailMessage`` with text,
an HTML alternative and a binary attachment, To/Cc/Bcc, a non-ASCII
subject and display names.  Sent to aiosmtpd (plain, and STARTTLS + AUTH
with a private CA) and to the private Postfix (plain, and STARTTLS + AUTH
through Dovecot), then parsed back at the server: the Bcc recipient got
it, no Bcc field in the bytes, the attachment bytes identical, the subject
and names decode back.

Also: wrong message types fail with TypeError before any command is
written (byte-exact fake wire), and ``send()`` leaves no connection behind
whatever fails, cancellation included.
"""

from __future__ import annotations

import email.policy
import os
import random
import ssl
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
import pytest_twisted
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

import twisted_smtpconn
from realservers.ports import LOOPBACK, free_port
from test_auth_postfix import OUTSIDE, USERS, Submission, submission  # noqa: F401  (a fixture)
from tls_peers import guard
from twisted_smtpconn import (
    Auth,
    AuthenticationError,
    ConnectionFailedError,
    Envelope,
    EnvelopeError,
    SendInfo,
    SMTPConnection,
    SMTPPool,
)
from wiretools import Wire, failure, result

ATTACHMENT = random.Random(12).randbytes(150_000)
SUBJECT = "Build ✓ succeeded on “main” — Grüße"
TEXT = "The build succeeded.\n.\n..two dots\nGrüße aus Köln\n"
HTML = "<html><body><p>The build <b>succeeded</b>. Grüße</p></body></html>\n"
TO = ["dev@example.test", "zoe@example.test"]
CC = ["qa@example.test"]
BCC = ["audit@example.test"]


def buildbot_message(marker: str, *, sender: str = "buildbot@example.test", to: list[str] | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Büildbot Ünit <{sender}>"
    to = TO if to is None else to
    message["To"] = ", ".join([f"Dev Team <{to[0]}>", *(f"Zoë Ärger <{a}>" for a in to[1:])])
    if to is TO:
        message["Cc"] = CC[0]
        message["Bcc"] = BCC[0]
    message["Subject"] = f"{SUBJECT} {marker}"
    message["Message-ID"] = f"<{marker}@example.test>"
    message.set_content(TEXT)
    message.add_alternative(HTML, subtype="html")
    message.add_attachment(ATTACHMENT, maintype="application", subtype="octet-stream", filename="build-log.bin")
    return message


def check_delivered(content: bytes, marker: str) -> None:
    """The delivered bytes parse back to what was sent, without Bcc."""
    assert b"\nBcc:" not in content and not content.startswith(b"Bcc:")
    assert b"audit@" not in content
    parsed = BytesParser(policy=email.policy.default).parsebytes(content)
    assert parsed["Subject"] == f"{SUBJECT} {marker}"
    assert parsed["From"].addresses[0].display_name == "Büildbot Ünit"
    assert parsed["To"].addresses[1].display_name == "Zoë Ärger"
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == TEXT
    html = parsed.get_body(("html",))
    assert html is not None and "<b>succeeded</b>" in html.get_content()
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == "build-log.bin"
    assert attachment.get_content() == ATTACHMENT


def starttls_context() -> tuple[ssl.SSLContext, str, trustme.CA]:
    ca = trustme.CA(organization_name="send_message test CA")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context, ca.cert_pem.bytes().decode(), ca


def authenticator(server: object, session: object, envelope: object, mechanism: str, data: object) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"builder", b"Build-Pw-1")
    # handled=False on failure, or aiosmtpd sends no reply at all.
    return AuthResult(success=ok, handled=False, auth_data="builder" if ok else None)


# -- aiosmtpd --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_send_message_to_aiosmtpd(aiosmtpd_server: Any) -> None:
    from twisted.internet import reactor

    marker = uuid.uuid4().hex
    message = buildbot_message(marker)
    headers_before = list(message.items())
    conn = SMTPConnection(aiosmtpd_server.host, aiosmtpd_server.port, reactor=reactor, name="client.test")
    await guard(conn.connect())
    try:
        info: SendInfo = await guard(conn.send_message(message))
    finally:
        await guard(conn.quit())
    assert info.accepted == [*TO, *CC, *BCC]
    [received] = aiosmtpd_server.recorder.wait_for(1)
    assert received.mail_from == "buildbot@example.test"
    assert list(received.rcpt_tos) == [*TO, *CC, *BCC]
    assert "BODY=8BITMIME" in received.mail_options
    assert f"SIZE={info.message_size}" in received.mail_options
    check_delivered(received.content, marker)
    assert list(message.items()) == headers_before and message["Bcc"] == BCC[0]


@pytest_twisted.ensureDeferred
async def test_send_over_starttls_with_auth_to_aiosmtpd(make_aiosmtpd: Callable[..., Any], tmp_path: Any) -> None:
    """The one call: connect, STARTTLS verified against a private CA, AUTH, send, quit."""
    from twisted.internet import reactor

    context, ca_pem, _ = starttls_context()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca_pem)
    server = make_aiosmtpd(
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
        auth_required=True,
    )
    marker = uuid.uuid4().hex
    info = await guard(
        twisted_smtpconn.send(
            buildbot_message(marker),
            host=server.host,
            port=server.port,
            auth=Auth(user="builder", password="Build-Pw-1"),
            require_tls=True,
            tls={"ca_certs": str(ca_file)},
            reactor=reactor,
        )
    )
    assert isinstance(info, SendInfo) and info.accepted == [*TO, *CC, *BCC]
    [received] = server.recorder.wait_for(1)
    assert received.tls and received.authenticated and received.auth_data == "builder"
    assert list(received.rcpt_tos) == [*TO, *CC, *BCC]
    check_delivered(received.content, marker)


@pytest_twisted.ensureDeferred
async def test_pool_send_message(aiosmtpd_server: Any) -> None:
    from twisted.internet import reactor

    pool = SMTPPool(aiosmtpd_server.host, aiosmtpd_server.port, reactor=reactor, max_connections=2)
    markers = [uuid.uuid4().hex for _ in range(3)]
    try:
        infos = [await guard(pool.send_message(buildbot_message(marker))) for marker in markers]
    finally:
        await guard(pool.close())
    assert all(info.accepted == [*TO, *CC, *BCC] for info in infos)
    received = aiosmtpd_server.recorder.wait_for(3)
    for marker in markers:
        [match] = [m for m in received if marker.encode() in m.content]
        check_delivered(match.content, marker)


@pytest_twisted.ensureDeferred
async def test_send_message_given_envelope_and_raw_bytes(aiosmtpd_server: Any) -> None:
    from twisted.internet import reactor

    raw = b"From: a@example.test\nTo: b@example.test\nBcc: hidden@example.test\nSubject: raw\n\n.dot\nbody\n"
    conn = SMTPConnection(aiosmtpd_server.host, aiosmtpd_server.port, reactor=reactor)
    await guard(conn.connect())
    try:
        await guard(conn.send_message(raw))
        await guard(conn.send_message(raw.decode(), mail_from="", rcpt_to=["other@example.test"]))
    finally:
        await guard(conn.quit())
    first, second = aiosmtpd_server.recorder.wait_for(2)
    expected = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: raw\r\n\r\n.dot\r\nbody\r\n"
    assert (first.mail_from, first.rcpt_tos, first.content) == (
        "a@example.test",
        ("b@example.test", "hidden@example.test"),
        expected,
    )
    assert (second.mail_from, second.rcpt_tos, second.content) == ("<>", ("other@example.test",), expected)


@pytest_twisted.ensureDeferred
async def test_idn_domain_reaches_a_server_as_a_labels(make_aiosmtpd: Callable[..., Any]) -> None:
    from twisted.internet import reactor

    server = make_aiosmtpd(enable_SMTPUTF8=False)
    message = EmailMessage()
    message["From"] = "Jörg <joerg@bücher.example>"
    message["To"] = "user@例子.example"
    message["Subject"] = "idn"
    message.set_content("x\n")
    conn = SMTPConnection(server.host, server.port, reactor=reactor)
    await guard(conn.connect())
    try:
        assert "SMTPUTF8" not in conn.extensions
        info = await guard(conn.send_message(message))
    finally:
        await guard(conn.quit())
    [received] = server.recorder.wait_for(1)
    assert received.mail_from == "joerg@xn--bcher-kva.example"
    assert received.rcpt_tos == ("user@xn--fsqu00a.example",)
    assert info.accepted == ["user@例子.example"]


# -- Postfix ---------------------------------------------------------------------------------


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_send_message_through_postfix(postfix_server: Any) -> None:
    from twisted.internet import reactor

    marker = uuid.uuid4().hex
    conn = SMTPConnection(postfix_server.host, postfix_server.port, reactor=reactor, name="client.test")
    await guard(conn.connect())
    try:
        info = await guard(conn.send_message(buildbot_message(marker)))
    finally:
        await guard(conn.quit())
    assert info.accepted == [*TO, *CC, *BCC]
    delivered = await guard(
        postfix_server.recorder.when_match(lambda m: marker.encode() in m.content, reactor, timeout=20)
    )
    assert sorted(delivered.rcpt_tos) == sorted([*TO, *CC, *BCC])
    check_delivered(postfix_server.strip_received(delivered.content), marker)


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_send_through_postfix_over_starttls_with_auth(submission: Submission) -> None:  # noqa: F811
    """Postfix submission: STARTTLS with a private CA, AUTH through Dovecot."""
    from twisted.internet import reactor

    marker = f"send-{uuid.uuid4().hex}"
    info = await guard(
        twisted_smtpconn.send(
            buildbot_message(marker, sender="alice@example.org", to=[OUTSIDE, "second@elsewhere.example"]),
            host=submission.postfix.host,
            port=submission.postfix.port,
            auth={"user": "alice", "pass": USERS["alice"]},
            require_tls=True,
            tls={"ca_certs": submission.certs.ca_file},
            name="client.test",
            reactor=reactor,
        )
    )
    assert info.accepted == [OUTSIDE, "second@elsewhere.example"]
    delivered = await guard(
        submission.postfix.recorder.when_match(lambda m: marker.encode() in m.content, reactor, timeout=20)
    )
    content = submission.postfix.strip_received(delivered.content)
    assert "Authenticated sender: alice" in delivered.content.decode(errors="replace")
    parsed = BytesParser(policy=email.policy.default).parsebytes(content)
    assert parsed["Subject"] == f"{SUBJECT} {marker}"
    assert [a.display_name for a in parsed["To"].addresses] == ["Dev Team", "Zoë Ärger"]
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_content() == ATTACHMENT


# -- wrong message types: nothing written ----------------------------------------------------


class IntChunks:
    def __iter__(self) -> Any:
        return iter([1, 2, 3])


@pytest.mark.parametrize("wrong", [5, {"From": "a@x.org"}, IntChunks(), [b"From: a@x.org\r\n"], None])
def test_send_message_refuses_other_types_before_any_command(wrong: object) -> None:
    wire = Wire()
    wire.connect()
    err = failure(wire.conn.send_message(wrong, mail_from="a@x.org", rcpt_to="b@x.org"))
    assert isinstance(err, TypeError)
    assert "email.message.Message, str or bytes" in str(err)
    assert wire.client() == b""


@pytest.mark.parametrize("wrong", [5, {"From": "a@x.org"}, None, 1.5])
def test_send_refuses_other_types_before_any_command(wrong: object) -> None:
    wire = Wire()
    wire.connect()
    err = failure(wire.conn.send(Envelope("a@x.org", "b@x.org"), wrong))
    assert isinstance(err, TypeError)
    assert wire.client() == b""


def test_send_takes_an_email_object_as_the_message() -> None:
    wire = Wire()
    wire.connect()
    message = EmailMessage()
    message["Subject"] = "x"
    message.set_content("hello\n")
    d = wire.conn.send(Envelope("a@x.org", "b@x.org"), message)
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n")
    wire.server(b"250 queued\r\n")
    assert isinstance(result(d), SendInfo)
    assert b"\r\nDATA\r\nSubject: x\r\n" in wire.client()


# -- send(): always closes -------------------------------------------------------------------


def test_send_checks_the_envelope_before_connecting() -> None:
    reactor = MemoryReactorClock()
    message = EmailMessage()
    message["To"] = "b@x.org"
    message.set_content("x")
    err = failure(twisted_smtpconn.send(message, host="127.0.0.1", port=25, reactor=reactor))
    assert isinstance(err, EnvelopeError) and "no Sender or From header" in str(err)
    message["From"] = "a@x.org"
    err = failure(twisted_smtpconn.send(message, rcpt_to="a@x.org,b@x.org", port=25, reactor=reactor))
    assert isinstance(err, EnvelopeError) and "one address per recipient" in str(err)
    err = failure(twisted_smtpconn.send(message, port=25, reactor=reactor, size=5))
    assert isinstance(err, TypeError) and "send_message" in str(err)
    err = failure(twisted_smtpconn.send(message, port=25, reactor=reactor, ignore_tls=True, require_tls=True))
    assert isinstance(err, ValueError)
    assert reactor.tcpClients == []


@pytest_twisted.ensureDeferred
async def test_send_when_the_connection_is_refused() -> None:
    from twisted.internet import reactor

    message = buildbot_message("refused")
    d = twisted_smtpconn.send(message, host=LOOPBACK, port=free_port(), reactor=reactor, connection_timeout=10)
    with pytest.raises(ConnectionFailedError):
        await guard(d)


@pytest_twisted.ensureDeferred
async def test_send_when_login_fails_closes(make_aiosmtpd: Callable[..., Any]) -> None:
    from twisted.internet import reactor

    server = make_aiosmtpd(authenticator=authenticator, auth_require_tls=False)
    d = twisted_smtpconn.send(
        buildbot_message("login"),
        host=server.host,
        port=server.port,
        auth=Auth(user="builder", password="wrong"),
        allow_insecure_auth=True,
        reactor=reactor,
    )
    with pytest.raises(AuthenticationError):
        await guard(d)
    assert server.recorder.messages == ()


class _Silent(Protocol):
    """Accepts and never greets; remembers when the client went away."""

    def __init__(self, made: Deferred[None], lost: Deferred[None]) -> None:
        self.made, self.lost = made, lost

    def connectionMade(self) -> None:
        self.made.callback(None)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_cancelling_send_closes_the_connection() -> None:
    from twisted.internet import reactor

    made: Deferred[None] = Deferred()
    lost: Deferred[None] = Deferred()
    factory = Factory.forProtocol(lambda: _Silent(made, lost))
    port = reactor.listenTCP(0, factory, interface=LOOPBACK)
    try:
        d = twisted_smtpconn.send(
            buildbot_message("cancel"), host=LOOPBACK, port=port.getHost().port, reactor=reactor
        )
        await guard(made)
        d.cancel()
        with pytest.raises(CancelledError):
            await d
        await guard(lost)
    finally:
        await port.stopListening()



# -- the documented example ------------------------------------------------------------------


@pytest.mark.parametrize("password", ["Build-Pw-1", "wrong"])
@pytest_twisted.ensureDeferred
async def test_docs_example_send_email_message(make_aiosmtpd: Callable[..., Any], tmp_path: Any, password: str) -> None:
    """docs/examples/send_email_message.py, run as written, against aiosmtpd with STARTTLS and AUTH."""
    import sys
    from pathlib import Path

    from twisted.internet import utils

    context, ca_pem, _ = starttls_context()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca_pem)
    attachment = tmp_path / "log.gz"
    attachment.write_bytes(ATTACHMENT)
    server = make_aiosmtpd(
        tls_context=context, require_starttls=True, authenticator=authenticator, auth_require_tls=True, auth_required=True
    )
    root = Path(__file__).resolve().parent.parent
    script = root / "docs" / "examples" / "send_email_message.py"
    package_root = str(Path(twisted_smtpconn.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    args = [str(script), "127.0.0.1", str(server.port), str(ca_file), "builder", password, str(attachment)]
    out, err, code = await guard(utils.getProcessOutputAndValue(sys.executable, args, env=env))
    if password == "wrong":
        assert code == 1 and b"not sent (EAUTH)" in err, (out, err)
        assert server.recorder.messages == ()
        return
    assert code == 0, (out, err)
    assert b"accepted for dev@example.test, zoe@example.test, qa@example.test, audit@example.test" in out
    [received] = server.recorder.wait_for(1)
    assert received.tls and received.authenticated
    assert b"audit@" not in received.content
    parsed = BytesParser(policy=email.policy.default).parsebytes(received.content)
    assert parsed["Subject"] == "Build ✓ succeeded — Grüße"
    [part] = list(parsed.iter_attachments())
    assert part.get_content() == ATTACHMENT


# -- the server's extensions decide the encoding (byte-exact) --------------------------------


def _eight_bit_message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "a@x.org"
    message["To"] = "b@x.org"
    message["Subject"] = "8bit"
    message.set_content("Grüße\n.\n")
    return message


def test_send_message_to_a_server_without_8bitmime_goes_seven_bit() -> None:
    wire = Wire()
    wire.connect(b"250-server.example\r\n250 PIPELINING\r\n")
    d = wire.conn.send_message(_eight_bit_message())
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    wire.server(b"250 queued\r\n")
    info = result(d)
    sent = wire.client()
    assert sent.startswith(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n")
    data = sent.split(b"DATA\r\n", 1)[1]
    # The email package re-encodes the UTF-8 text part (base64 for utf-8).
    assert data.isascii() and b"Content-Transfer-Encoding: base64\r\n" in data
    assert data.endswith(b"\r\n.\r\n")
    parsed = BytesParser(policy=email.policy.default).parsebytes(data[: -len(b".\r\n")])
    assert parsed.get_content().replace("\r\n", "\n") == "Grüße\n.\n"
    assert info.message_size == len(data) - len(b".\r\n")


def test_send_message_with_8bitmime_sends_body_8bitmime_and_size() -> None:
    wire = Wire()
    wire.connect(b"250-server.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n")
    d = wire.conn.send_message(_eight_bit_message())
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 queued\r\n")
    info = result(d)
    sent = wire.client()
    assert sent.split(b"\r\n", 1)[0] == b"MAIL FROM:<a@x.org> SIZE=%d BODY=8BITMIME" % info.message_size
    # 8-bit as it is, and the lone "." line dot-stuffed by the transport.
    assert "\r\n\r\nGrüße\r\n..\r\n.\r\n".encode() in sent


def test_send_message_with_utf8_headers_to_a_server_without_smtputf8() -> None:
    wire = Wire()
    wire.connect()
    message = EmailMessage(policy=email.policy.SMTPUTF8)
    message["From"] = "a@x.org"
    message["To"] = "b@x.org"
    message["Subject"] = "Grüße"
    message.set_content("x\n")
    err = failure(wire.conn.send_message(message))
    assert isinstance(err, twisted_smtpconn.MessageError) and err.code == "EMESSAGE"
    assert "need SMTPUTF8" in str(err)
    assert wire.client() == b""
