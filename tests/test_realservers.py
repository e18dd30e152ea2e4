"""
Tests of the real-server fixtures themselves, driven with the standard
library's blocking ``smtplib`` (or raw sockets where smtplib cannot show the
wire), so that they prove the peers independently of our client.

Blocking calls are fine in these tests: the servers run in another thread
(aiosmtpd) or other processes (Postfix, smtp-sink), never on the reactor.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from realservers import leakcheck
from realservers.aiosmtpd_peer import AiosmtpdServer, ReceivedMessage
from realservers.ports import free_port, wait_for_port
from realservers.required import REQUIRE_ENV, real_server_unavailable
from realservers.postfix_peer import (
    DEFAULT_MESSAGE_SIZE_LIMIT,
    POSTFIX_HOSTNAME,
    PostfixRelay,
    SmtpSink,
    strip_postfix_received,
)

#: A message with the features that get mangled in transit: a folded
#: header, a Bcc, lines starting with dots (stuffed on the wire), a line that
#: is only a dot, trailing white space, 8-bit UTF-8, a "From " line, a line
#: longer than 998 octets (for Postfix; aiosmtpd's default limit is 1001),
#: and an empty last line.
def sample_message(marker: str, long_line: int = 990) -> bytes:
    return (
        f"From: Sender <sender@example.org>\r\n"
        f"To: rcpt@example.net\r\n"
        f"Bcc: hidden@example.net\r\n"
        f"Subject: fixture test {marker}\r\n"
        f" folded continuation\r\n"
        f"Message-ID: <{marker}@example.org>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n"
        f"\r\n"
        f".leading dot\r\n"
        f"..two dots\r\n"
        f".\r\n"
        f"From the start of a line\r\n"
        f"trailing space   \r\n"
        f"h\u00e9llo w\u00f6rld \u2603\r\n"
        f"{'x' * long_line}\r\n"
        f"\r\n"
    ).encode("utf-8")


def smtp_client(host: str, port: int) -> smtplib.SMTP:
    return smtplib.SMTP(host, port, local_hostname="client.example", timeout=15)


def lmtp_dialogue(server: AiosmtpdServer, script: bytes, replies: int) -> list[bytes]:
    """
    Send ``script`` after LHLO, read ``replies`` reply lines, then NOOP: its
    reply must come next, proving that nothing else was sent in between.
    """
    with socket.create_connection((server.host, server.port), timeout=15) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"LHLO client.example\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(script)
        lines = [reader.readline() for _ in range(replies)]
        sock.sendall(b"NOOP\r\n")
        noop = reader.readline()
        sock.sendall(b"QUIT\r\n")
        reader.readline()
        reader.close()
    assert noop.startswith(b"250"), (lines, noop)
    return lines


# -- aiosmtpd ------------------------------------------------------------------


def test_aiosmtpd_records_message_byte_exact(aiosmtpd_server: AiosmtpdServer) -> None:
    message = sample_message(uuid.uuid4().hex)
    with smtp_client(aiosmtpd_server.host, aiosmtpd_server.port) as client:
        client.sendmail(
            "sender@example.org",
            ["rcpt@example.net", "second@example.net"],
            message,
            mail_options=["BODY=8BITMIME"],
        )
    (received,) = aiosmtpd_server.recorder.wait_for(1)
    assert received.content == message
    assert received.sha256 == hashlib.sha256(message).hexdigest()
    assert received.mail_from == "sender@example.org"
    assert received.mail_options[-1] == "BODY=8BITMIME"
    assert received.rcpt_tos == ("rcpt@example.net", "second@example.net")
    assert received.rcpt_options == ((), ())
    assert received.delivered_to == received.rcpt_tos
    assert received.helo == "client.example"
    assert received.header("Message-ID") is not None
    with pytest.raises(Exception):  # frozen
        received.content = b""  # type: ignore[misc]


def test_aiosmtpd_rejection_rules(aiosmtpd_server: AiosmtpdServer) -> None:
    with smtp_client(aiosmtpd_server.host, aiosmtpd_server.port) as client:
        client.ehlo()
        code, text = client.mail("bad-sender@example.org")
        assert (code, text[:5]) == (553, b"5.7.1")
        client.rset()
        assert client.mail("ok@example.org")[0] == 250
        code, text = client.rcpt("Reject-this@example.net")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = client.rcpt("tempfail.later@example.net")
        assert (code, text[:5]) == (451, b"4.3.0")
        assert client.rcpt("fine@example.net")[0] == 250
        assert client.data(b"Subject: x\r\n\r\nbody\r\n")[0] == 250
    (received,) = aiosmtpd_server.recorder.wait_for(1)
    assert received.rcpt_tos == ("fine@example.net",)


def test_aiosmtpd_size_limit(make_aiosmtpd: Callable[..., AiosmtpdServer]) -> None:
    server = make_aiosmtpd(data_size_limit=1000)
    with smtp_client(server.host, server.port) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "1000"
        assert client.mail("a@example.org", ["SIZE=1001"])[0] == 552
        assert client.mail("a@example.org")[0] == 250
        assert client.rcpt("b@example.net")[0] == 250
        assert client.data(b"x" * 900 + b"\r\n" + b"y" * 900 + b"\r\n")[0] == 552
    assert server.recorder.messages == ()


def test_aiosmtpd_smtputf8(aiosmtpd_server: AiosmtpdServer) -> None:
    with smtp_client(aiosmtpd_server.host, aiosmtpd_server.port) as client:
        client.ehlo()
        assert client.has_extn("smtputf8") and client.has_extn("8bitmime")
        client.sendmail(
            "s\u00e9nder@example.org",
            ["r\u00e9cipient@\u00e9xample.net"],
            "Subject: \u00e9\r\n\r\n\u00e9\r\n".encode(),
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )
    (received,) = aiosmtpd_server.recorder.wait_for(1)
    assert received.smtputf8
    assert received.mail_from == "s\u00e9nder@example.org"
    assert received.rcpt_tos == ("r\u00e9cipient@\u00e9xample.net",)


def test_stock_aiosmtpd_refuses_dsn_parameters(aiosmtpd_server: AiosmtpdServer) -> None:
    with smtp_client(aiosmtpd_server.host, aiosmtpd_server.port) as client:
        client.ehlo()
        assert not client.has_extn("dsn")
        assert client.mail("a@example.org", ["RET=HDRS"])[0] == 555


def test_dsn_parameters_recorded_raw(aiosmtpd_dsn_server: AiosmtpdServer) -> None:
    server = aiosmtpd_dsn_server
    with smtp_client(server.host, server.port) as client:
        client.ehlo()
        assert client.has_extn("dsn")
        assert client.mail("a@example.org", ["ret=hdrs", "ENVID=Qq+2Bid.1", "SIZE=50"])[0] == 250
        assert client.rcpt("one@example.net", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;One+40example.net"])[0] == 250
        assert client.rcpt("reject@example.net", ["NOTIFY=NEVER"])[0] == 550
        assert client.rcpt("two@example.net")[0] == 250
        assert client.rcpt("three@example.net", ["NOTIFY=never"])[0] == 250
        assert client.data(b"Subject: dsn\r\n\r\nbody\r\n")[0] == 250
    (received,) = server.recorder.wait_for(1)
    assert received.mail_options == ("ret=hdrs", "ENVID=Qq+2Bid.1", "SIZE=50")
    assert received.mail_param("RET") == "hdrs"
    assert received.mail_param("envid") == "Qq+2Bid.1"
    assert received.rcpt_tos == ("one@example.net", "two@example.net", "three@example.net")
    assert received.rcpt_options == (
        ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;One+40example.net"),
        (),
        ("NOTIFY=never",),
    )
    assert received.rcpt_param("one@example.net", "ORCPT") == "rfc822;One+40example.net"
    assert received.rcpt_param("two@example.net", "NOTIFY") is None


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("MAIL FROM:<a@example.org> RET=ALL", 501),
        ("MAIL FROM:<a@example.org> RET=FULL RET=HDRS", 501),
        ("MAIL FROM:<a@example.org> ENVID=bad=xtext", 501),
        ("MAIL FROM:<a@example.org> ENVID=a+2g", 501),
        ("MAIL FROM:<a@example.org> RET=FULL ENVID=ok+2B", 250),
    ],
)
def test_dsn_mail_parameter_validation(aiosmtpd_dsn_server: AiosmtpdServer, command: str, code: int) -> None:
    with smtp_client(aiosmtpd_dsn_server.host, aiosmtpd_dsn_server.port) as client:
        client.ehlo()
        assert client.docmd(command)[0] == code


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ("NOTIFY=NEVER,SUCCESS", 501),
        ("NOTIFY=SOMETIMES", 501),
        ("NOTIFY=DELAY,DELAY", 501),
        ("ORCPT=rfc822", 501),
        ("ORCPT=rfc822;a+40b NOTIFY=DELAY", 250),
    ],
)
def test_dsn_rcpt_parameter_validation(aiosmtpd_dsn_server: AiosmtpdServer, params: str, code: int) -> None:
    with smtp_client(aiosmtpd_dsn_server.host, aiosmtpd_dsn_server.port) as client:
        client.ehlo()
        assert client.mail("a@example.org")[0] == 250
        assert client.docmd(f"RCPT TO:<b@example.net> {params}")[0] == code


def test_lmtp_one_reply_per_recipient(aiosmtpd_lmtp: AiosmtpdServer) -> None:
    script = (
        b"MAIL FROM:<a@example.org>\r\n"
        b"RCPT TO:<one@example.net>\r\n"
        b"RCPT TO:<lmtpfail@example.net>\r\n"
        b"RCPT TO:<reject@example.net>\r\n"
        b"RCPT TO:<three@example.net>\r\n"
        b"DATA\r\n"
    )
    head = lmtp_dialogue(aiosmtpd_lmtp, script + b"Subject: lmtp\r\n\r\n.\r\n", replies=6 + 3)
    codes = [line[:3] for line in head]
    assert codes == [b"250", b"250", b"250", b"550", b"250", b"354", b"250", b"550", b"250"]
    assert b"<one@example.net>" in head[6]
    assert head[7].startswith(b"550 5.2.2 <lmtpfail@example.net>")
    assert b"<three@example.net>" in head[8]
    (received,) = aiosmtpd_lmtp.recorder.wait_for(1)
    assert received.rcpt_tos == ("one@example.net", "lmtpfail@example.net", "three@example.net")
    assert received.delivered_to == ("one@example.net", "three@example.net")
    assert received.content == b"Subject: lmtp\r\n\r\n"


def test_lmtp_server_errors_after_data_are_per_recipient(make_aiosmtpd: Callable[..., AiosmtpdServer]) -> None:
    server = make_aiosmtpd(lmtp=True, data_size_limit=100)
    script = (
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<one@example.net>\r\nRCPT TO:<two@example.net>\r\nDATA\r\n"
        + b"z" * 200
        + b"\r\n.\r\n"
    )
    lines = lmtp_dialogue(server, script, replies=4 + 2)
    assert [line[:3] for line in lines] == [b"250", b"250", b"250", b"354", b"552", b"552"]
    assert server.recorder.messages == ()


def test_lmtp_refused_data_command_gets_one_reply(aiosmtpd_lmtp: AiosmtpdServer) -> None:
    script = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<one@example.net>\r\nRCPT TO:<two@example.net>\r\nDATA now\r\n"
    lines = lmtp_dialogue(aiosmtpd_lmtp, script, replies=4)
    assert [line[:3] for line in lines] == [b"250", b"250", b"250", b"501"]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_recorder_deferred_wait(aiosmtpd_server: AiosmtpdServer) -> None:
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    marker = uuid.uuid4().hex

    def send() -> None:
        with smtp_client(aiosmtpd_server.host, aiosmtpd_server.port) as client:
            client.sendmail("a@example.org", ["b@example.net"], f"Subject: {marker}\r\n\r\nx\r\n")

    waiting = aiosmtpd_server.recorder.when_match(lambda m: marker.encode() in m.content, reactor)
    await deferToThread(send)
    received = await waiting
    assert isinstance(received, ReceivedMessage)
    assert received.header("Subject") == marker
    assert len(await aiosmtpd_server.recorder.when_received(1, reactor)) == 1


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_recorder_deferred_wait_times_out(aiosmtpd_server: AiosmtpdServer) -> None:
    from twisted.internet import reactor

    with pytest.raises(AssertionError, match="recorded so far: nothing"):
        await aiosmtpd_server.recorder.when_received(1, reactor, timeout=0.05)


def test_recorder_blocking_wait_times_out(aiosmtpd_server: AiosmtpdServer) -> None:
    with pytest.raises(AssertionError, match="waited"):
        aiosmtpd_server.recorder.wait_for(1, timeout=0.05)


def test_tls_and_auth_options_pass_through(make_aiosmtpd: Callable[..., AiosmtpdServer]) -> None:
    """
    The hooks the TLS and AUTH tests build on: STARTTLS (required before
    mail), implicit TLS, and an authenticator, all given to the factory.
    """
    import ssl

    import trustme
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    def authenticator(server: object, session: object, envelope: object, mechanism: str, data: object) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"alice", b"s3cret")
        # handled=False on failure: aiosmtpd then sends the 535 itself
        # (with the default handled=True it sends nothing and the client hangs).
        return AuthResult(success=ok, handled=False, auth_data="alice" if ok else None)

    starttls = make_aiosmtpd(
        tls_context=server_context, require_starttls=True, authenticator=authenticator, auth_require_tls=True
    )
    with smtp_client(starttls.host, starttls.port) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.mail("a@example.org")[0] == 530
        client.starttls(context=client_context)
        client.ehlo()
        assert "PLAIN" in client.esmtp_features["auth"].split()
        wrong = base64.b64encode(b"\0alice\0wrong").decode()
        assert client.docmd("AUTH", f"PLAIN {wrong}")[0] == 535
        client.login("alice", "s3cret")
        client.sendmail("a@example.org", ["b@example.net"], b"Subject: tls\r\n\r\nx\r\n")
    (received,) = starttls.recorder.wait_for(1)
    assert received.tls and received.authenticated and received.auth_data == "alice"

    implicit = make_aiosmtpd(ssl_context=server_context)
    assert implicit.implicit_tls
    with smtplib.SMTP_SSL(implicit.host, implicit.port, context=client_context, timeout=15) as client:
        client.sendmail("a@example.org", ["b@example.net"], b"Subject: implicit\r\n\r\nx\r\n")
    (received,) = implicit.recorder.wait_for(1)
    assert received.tls and not received.authenticated


def test_servers_stop_at_teardown(make_aiosmtpd: Callable[..., AiosmtpdServer]) -> None:
    server = make_aiosmtpd()
    wait_for_port(server.host, server.port, 5, expect_banner=b"220")
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=2).close()
    server.stop()  # twice is fine


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- Postfix ---------------------------------------------------------------------


@pytest.mark.postfix
def test_postfix_relays_with_only_received_added(postfix_server: PostfixRelay) -> None:
    marker = uuid.uuid4().hex
    message = sample_message(marker, long_line=2000)
    with smtp_client(postfix_server.host, postfix_server.port) as client:
        client.ehlo()
        for keyword in ("pipelining", "8bitmime", "dsn", "smtputf8", "size"):
            assert client.has_extn(keyword), keyword
        assert client.esmtp_features["size"] == str(DEFAULT_MESSAGE_SIZE_LIMIT)
        client.sendmail(
            "sender@example.org",
            ["rcpt@example.net"],
            message,
            mail_options=["BODY=8BITMIME", "RET=HDRS", "ENVID=Env+2Bid"],
            rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;rcpt@example.net"],
        )
    delivered = postfix_server.recorder.wait_for_match(lambda m: marker.encode() in m.content, timeout=20)
    assert delivered.mail_from == "sender@example.org"
    assert delivered.rcpt_tos == ("rcpt@example.net",)
    assert delivered.content.startswith(b"Received: from ")
    assert postfix_server.strip_received(delivered.content) == message
    assert delivered.mail_param("ENVID") == "Env+2Bid"
    assert delivered.mail_param("RET") == "HDRS"
    assert delivered.rcpt_param("rcpt@example.net", "NOTIFY") == "SUCCESS,DELAY"
    assert delivered.rcpt_param("rcpt@example.net", "ORCPT") == "rfc822;rcpt@example.net"


@pytest.mark.postfix
def test_postfix_rejection_rules(postfix_server: PostfixRelay) -> None:
    with smtp_client(postfix_server.host, postfix_server.port) as client:
        client.ehlo()
        code, text = client.mail("bad-sender@example.org")
        assert (code, text[:5]) == (553, b"5.7.1")
        client.rset()
        assert client.mail("ok@example.org")[0] == 250
        code, text = client.rcpt("reject-me@example.net")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = client.rcpt("REJECT2@example.net")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = client.rcpt("tempfail@example.net")
        assert (code, text[:5]) == (451, b"4.3.0")
        assert client.rcpt("accepted@example.net")[0] == 250


@pytest.mark.postfix
def test_postfix_size_limit(postfix_server: PostfixRelay) -> None:
    with smtp_client(postfix_server.host, postfix_server.port) as client:
        client.ehlo()
        code, _ = client.mail("a@example.org", [f"SIZE={DEFAULT_MESSAGE_SIZE_LIMIT + 1}"])
        assert code == 552


@pytest.mark.postfix
def test_postfix_instance_is_private(postfix_server: PostfixRelay) -> None:
    postfix = postfix_server.postfix
    assert postfix.is_running()
    assert postfix.postconf("config_directory") == str(postfix.config_dir)
    assert postfix.postconf("queue_directory") == str(postfix.queue_dir)
    assert postfix.postconf("inet_interfaces") == "127.0.0.1"
    assert not str(postfix.config_dir).startswith("/etc/postfix")
    assert str(postfix.master_pid) == (postfix.queue_dir / "pid" / "master.pid").read_text().strip()


@pytest.mark.postfix
def test_make_postfix_with_extra_settings(make_postfix: Callable[..., PostfixRelay]) -> None:
    second_port = free_port()
    relay = make_postfix(
        main_cf={"smtpd_banner": "$myhostname ESMTP custom-banner"},
        master_cf_extra=(
            f"127.0.0.1:{second_port} inet n - n - - smtpd\n"
            "  -o smtpd_banner=second-service\n"
        ),
        message_size_limit=200_000,
    )
    assert relay.postfix.message_size_limit == 200_000
    banner = wait_for_port(relay.host, relay.port, 10, expect_banner=b"220")
    assert banner is not None and b"custom-banner" in banner
    second = wait_for_port("127.0.0.1", second_port, 10, expect_banner=b"220")
    assert second is not None and b"second-service" in second
    with smtp_client(relay.host, relay.port) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "200000"
        assert client.mail("a@example.org", ["SIZE=200001"])[0] == 552
    relay.stop()
    assert not relay.postfix.is_running()


def test_strip_postfix_received_keeps_client_received() -> None:
    own = b"Received: from client by client.example; Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: s\r\n\r\nb\r\n"
    added = (
        b"Received: from [127.0.0.1] (unknown [127.0.0.1])\r\n"
        b"\tby " + POSTFIX_HOSTNAME.encode() + b" (Postfix) with ESMTP id ABC\r\n"
        b"\tfor <r@example.net>; Mon, 1 Jan 2024 00:00:01 +0000 (UTC)\r\n"
    )
    assert strip_postfix_received(added + own) == own
    with pytest.raises(AssertionError):
        strip_postfix_received(own)
    with pytest.raises(AssertionError):
        strip_postfix_received(added + own, count=2)


@given(
    st.lists(
        st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b and b[:1] not in b" \t"),
        max_size=6,
    )
)
def test_strip_postfix_received_only_removes_its_header(lines: list[bytes]) -> None:
    content = b"".join(line + b"\r\n" for line in lines) + b"\r\nbody\r\n"
    added = b"Received: by " + POSTFIX_HOSTNAME.encode() + b" (Postfix)\r\n\tid X; date\r\n"
    assert strip_postfix_received(added + content) == content


@pytest.mark.postfix
def test_smtp_sink(smtp_sink: SmtpSink) -> None:
    with smtp_client(smtp_sink.host, smtp_sink.port) as client:
        refused = client.sendmail("a@example.org", ["b@example.net"], b"Subject: sink\r\n\r\nx\r\n")
    assert refused == {}
    smtp_sink.stop()
    assert smtp_sink.process.returncode is not None


def test_unavailable_server_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no postfix here"):
        real_server_unavailable("no postfix here")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="required .*no postfix here"):
        real_server_unavailable("no postfix here")


# -- leak checker ------------------------------------------------------------------


def test_leakcheck_finds_and_cancels_delayed_call() -> None:
    from twisted.internet import reactor

    before = leakcheck.snapshot(reactor)
    call = reactor.callLater(3600, lambda: None)
    found = leakcheck.leftovers(reactor, before)
    assert found.delayed == (call,)
    assert "delayed call" in found.describe()
    assert not leakcheck.leftovers(reactor, before, allowed=[call])
    leakcheck.clean_up(reactor, found)
    assert not call.active()
    assert not leakcheck.leftovers(reactor, before)


def test_leakcheck_finds_and_closes_listening_port() -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Protocol, ServerFactory

    factory = ServerFactory()
    factory.protocol = Protocol
    before = leakcheck.snapshot(reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    found = leakcheck.leftovers(reactor, before)
    assert found.readers == (port,)
    leakcheck.clean_up(reactor, found)
    assert not leakcheck.leftovers(reactor, before).readers
    # Closing completes on the reactor; the autouse check waits for it.


@pytest.fixture
def leak_project(tmp_path: Path) -> Iterator[Path]:
    """
    A throwaway test directory with our conftest and helpers, for running
    pytest on tests that leak.
    """
    here = Path(__file__).parent
    shutil.copy(here / "conftest.py", tmp_path / "conftest.py")
    shutil.copytree(here / "realservers", tmp_path / "realservers", ignore=shutil.ignore_patterns("__pycache__"))
    yield tmp_path


def test_leak_fixture_fails_leaking_tests(leak_project: Path) -> None:
    (leak_project / "test_leaky.py").write_text(
        textwrap.dedent(
            """
            import pytest_twisted  # type: ignore[import-untyped]
            from twisted.internet import defer

            def test_clean():
                pass

            def test_timer_left():
                from twisted.internet import reactor
                reactor.callLater(3600, lambda: None)

            def test_port_left():
                from twisted.internet import reactor
                from twisted.internet.protocol import Factory, Protocol
                reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")

            @pytest_twisted.ensureDeferred
            async def test_short_timer_is_fine():
                from twisted.internet import reactor
                reactor.callLater(0.01, lambda: None)

            @pytest_twisted.ensureDeferred
            async def test_after_leaks_is_clean():
                from twisted.internet import reactor
                from twisted.internet.task import deferLater
                await deferLater(reactor, 0.01, lambda: None)
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "--reactor", "default",
         "-q", "-rA", "-p", "no:cacheprovider", "test_leaky.py"],
        cwd=leak_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert "PASSED test_leaky.py::test_clean" in output, output
    assert "PASSED test_leaky.py::test_short_timer_is_fine" in output, output
    assert "PASSED test_leaky.py::test_after_leaks_is_clean" in output, output
    assert "ERROR test_leaky.py::test_timer_left" in output, output
    assert "ERROR test_leaky.py::test_port_left" in output, output
    assert "delayed call: <DelayedCall" in output, output
    assert "reader: <<class 'twisted.internet.tcp.Port'>" in output, output
    # The leak is found after the test body passed, at teardown: pytest
    # reports the test as passed plus an error, and the run fails.
    assert "5 passed, 2 errors" in output, output
    assert completed.returncode == 1, output
