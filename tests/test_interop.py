"""
The core against real, independent servers on 127.0.0.1: aiosmtpd (asyncio,
in its own thread) and a private Postfix that relays to an aiosmtpd
recorder.  Every test checks the delivered bytes, not only reply codes.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted

from twisted_smtpconn import DSN, Envelope, MessageError, SMTPConnection, SendInfo

#: Guard on every await: a hang fails the test instead of blocking CI.
LIMIT = 30


def normalised(message: bytes) -> bytes:
    """What the server must end up with: CRLF line ends and a final CRLF."""
    text = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return text if text.endswith(b"\r\n") else text + b"\r\n"


def tricky_message(tag: str, size: int = 0) -> bytes:
    """Dots at line starts, bare LF and CR, 8-bit bytes, and optional bulk."""
    head = (
        f"From: a@example.test\nTo: b@example.test\nSubject: {tag}\n"
        f"Message-ID: <{tag}@example.test>\n\n"
    ).encode()
    body = b".starts with a dot\n..two dots\n.\nbare CR\rline\r\n8bit: \xc3\xa4\xc3\xb6\n"
    bulk = b"".join(b"%07d line of filler text to make the message bigger\n" % n for n in range(size // 56))
    return head + body + bulk + b"last line without newline"


async def connect(reactor: Any, host: str, port: int, **options: Any) -> SMTPConnection:
    conn = SMTPConnection(host, port, reactor=reactor, name="client.example.test", **options)
    await conn.connect().addTimeout(LIMIT, reactor)
    return conn


async def send(reactor: Any, conn: SMTPConnection, envelope: Envelope, message: object) -> SendInfo:
    info: SendInfo = await conn.send(envelope, message).addTimeout(LIMIT, reactor)
    return info


async def close(reactor: Any, conn: SMTPConnection) -> None:
    await conn.quit().addTimeout(LIMIT, reactor)


# -- aiosmtpd ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_aiosmtpd_delivers_exact_bytes(aiosmtpd_server: Any) -> None:
    from twisted.internet import reactor

    message = tricky_message("exact", size=300_000)
    conn = await connect(reactor, aiosmtpd_server.host, aiosmtpd_server.port)
    try:
        info = await send(reactor, conn, Envelope("a@example.test", ["b@example.test"]), message)
    finally:
        await close(reactor, conn)
    [received] = aiosmtpd_server.recorder.wait_for(1)
    expected = normalised(message)
    assert received.sha256 == hashlib.sha256(expected).hexdigest()
    assert received.content == expected
    assert info.message_size == len(expected)
    assert info.accepted == ["b@example.test"]
    assert info.response.startswith("250")
    assert received.helo == "client.example.test"


@pytest_twisted.ensureDeferred
async def test_aiosmtpd_streams_every_source_kind(aiosmtpd_server: Any, tmp_path: Any) -> None:
    from twisted.internet import reactor, task

    message = tricky_message("kinds", size=200_000)
    path = tmp_path / "message.eml"
    path.write_bytes(message)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(message), 4093):
            yield message[start : start + 4093]

    async def async_chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(message), 7001):
            await task.deferLater(reactor, 0, lambda: None)
            yield message[start : start + 7001]

    conn = await connect(reactor, aiosmtpd_server.host, aiosmtpd_server.port)
    try:
        with path.open("rb") as file:
            sources: list[object] = [message, message.decode("utf-8"), file, chunks(), async_chunks()]
            for source in sources:
                await send(reactor, conn, Envelope("a@example.test", ["b@example.test"]), source)
    finally:
        await close(reactor, conn)
    received = aiosmtpd_server.recorder.wait_for(5)
    assert {m.sha256 for m in received} == {hashlib.sha256(normalised(message)).hexdigest()}


@pytest_twisted.ensureDeferred
async def test_aiosmtpd_partial_rejection(aiosmtpd_server: Any) -> None:
    from twisted.internet import reactor

    conn = await connect(reactor, aiosmtpd_server.host, aiosmtpd_server.port)
    try:
        info = await send(
            reactor,
            conn,
            Envelope("a@example.test", ["ok@example.test", "reject-me@example.test", "tempfail@example.test"]),
            b"Subject: partial\n\nhi\n",
        )
    finally:
        await close(reactor, conn)
    assert info.accepted == ["ok@example.test"]
    assert info.rejected == ["reject-me@example.test", "tempfail@example.test"]
    assert [e.response_code for e in info.rejected_errors] == [550, 451]
    assert [e.enhanced_status for e in info.rejected_errors] == ["5.1.1", "4.3.0"]
    [received] = aiosmtpd_server.recorder.wait_for(1)
    assert received.rcpt_tos == ("ok@example.test",)


@pytest_twisted.ensureDeferred
async def test_aiosmtpd_all_rejected_then_connection_still_usable(aiosmtpd_server: Any) -> None:
    from twisted.internet import reactor

    conn = await connect(reactor, aiosmtpd_server.host, aiosmtpd_server.port)
    try:
        with pytest.raises(Exception) as caught:
            await send(reactor, conn, Envelope("a@example.test", ["reject1@example.test", "reject2@example.test"]), b"x")
        error = caught.value
        assert getattr(error, "code", None) == "EENVELOPE"
        assert [e.recipient for e in error.rejected_errors] == ["reject1@example.test", "reject2@example.test"]
        info = await send(reactor, conn, Envelope("a@example.test", ["fine@example.test"]), b"after\n")
        assert info.accepted == ["fine@example.test"]
    finally:
        await close(reactor, conn)
    [received] = aiosmtpd_server.recorder.wait_for(1)
    assert received.content == b"after\r\n"


@pytest_twisted.ensureDeferred
async def test_aiosmtpd_size_limit(make_aiosmtpd: Any) -> None:
    from twisted.internet import reactor

    server = make_aiosmtpd(data_size_limit=10_000)
    conn = await connect(reactor, server.host, server.port)
    try:
        assert conn.extensions["SIZE"] == "10000"
        with pytest.raises(MessageError):
            await send(reactor, conn, Envelope("a@example.test", ["b@example.test"], size=20_000), b"x" * 20_000)
        # Without a declared size the server itself refuses at the end.
        with pytest.raises(MessageError) as caught:
            await send(reactor, conn, Envelope("a@example.test", ["b@example.test"]), (b"y" * 70 + b"\n") * 300)
        assert caught.value.response_code == 552
        info = await send(reactor, conn, Envelope("a@example.test", ["b@example.test"], size=5), b"small")
        assert info.accepted == ["b@example.test"]
    finally:
        await close(reactor, conn)
    [received] = server.recorder.wait_for(1)
    assert received.content == b"small\r\n"
    assert received.mail_param("SIZE") == "5"


@pytest_twisted.ensureDeferred
async def test_aiosmtpd_8bitmime_smtputf8_and_null_sender(aiosmtpd_server: Any) -> None:
    from twisted.internet import reactor

    conn = await connect(reactor, aiosmtpd_server.host, aiosmtpd_server.port)
    try:
        await send(reactor, conn, Envelope("", ["b@example.test"], use_8bit_mime=True), "Subject: ä\n\nöü\n")
        await send(reactor, conn, Envelope("jörg@bücher.example", ["ünï@example.test"]), b"utf8\n")
    finally:
        await close(reactor, conn)
    first, second = aiosmtpd_server.recorder.wait_for(2)
    assert first.mail_from == "<>"
    assert first.mail_param("BODY") == "8BITMIME"
    assert first.content == "Subject: ä\r\n\r\nöü\r\n".encode()
    assert second.smtputf8
    assert second.mail_from == "jörg@bücher.example"
    assert second.rcpt_tos == ("ünï@example.test",)


@pytest_twisted.ensureDeferred
async def test_aiosmtpd_dsn_parameters(aiosmtpd_dsn_server: Any) -> None:
    from twisted.internet import reactor

    server = aiosmtpd_dsn_server
    conn = await connect(reactor, server.host, server.port)
    try:
        await send(
            reactor,
            conn,
            Envelope(
                "a@example.test",
                ["b@example.test"],
                dsn=DSN(ret="HDRS", envid="env+id=1", notify=["SUCCESS", "DELAY"], orcpt="b@example.test"),
            ),
            b"dsn\n",
        )
    finally:
        await close(reactor, conn)
    [received] = server.recorder.wait_for(1)
    assert received.mail_param("RET") == "HDRS"
    assert received.mail_param("ENVID") == "env+2Bid+3D1"
    assert received.rcpt_param("b@example.test", "NOTIFY") == "SUCCESS,DELAY"
    assert received.rcpt_param("b@example.test", "ORCPT") == "rfc822;b@example.test"


@pytest_twisted.ensureDeferred
async def test_aiosmtpd_lmtp_per_recipient_replies(aiosmtpd_lmtp: Any) -> None:
    from twisted.internet import reactor

    server = aiosmtpd_lmtp
    conn = await connect(reactor, server.host, server.port, lmtp=True)
    try:
        info = await send(
            reactor,
            conn,
            Envelope("a@example.test", ["one@example.test", "lmtpfail@example.test", "reject@example.test"]),
            b"lmtp body\n",
        )
    finally:
        await close(reactor, conn)
    assert info.accepted == ["one@example.test"]
    assert info.rejected == ["reject@example.test", "lmtpfail@example.test"]
    assert info.rejected_errors[1].code == "EMESSAGE"
    [received] = server.recorder.wait_for(1)
    assert received.delivered_to == ("one@example.test",)
    assert received.content == b"lmtp body\r\n"


@pytest_twisted.ensureDeferred
async def test_aiosmtpd_many_sends_on_one_connection(aiosmtpd_server: Any) -> None:
    from twisted.internet import reactor

    conn = await connect(reactor, aiosmtpd_server.host, aiosmtpd_server.port)
    messages = [tricky_message(f"many-{n}", size=n * 97) for n in range(60)]
    try:
        # Queued all at once: they must run in call order, one at a time.
        results = [conn.send(Envelope("a@example.test", [f"r{n}@example.test"]), m) for n, m in enumerate(messages)]
        for d in results:
            await d.addTimeout(LIMIT, reactor)
    finally:
        await close(reactor, conn)
    received = aiosmtpd_server.recorder.wait_for(60)
    assert [m.rcpt_tos for m in received] == [(f"r{n}@example.test",) for n in range(60)]
    assert [m.content for m in received] == [normalised(m) for m in messages]


@pytest_twisted.ensureDeferred
async def test_aiosmtpd_ipv6_literal(make_aiosmtpd: Any) -> None:
    import socket

    from twisted.internet import reactor

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = make_aiosmtpd(host="::1")
    except (OSError, RuntimeError) as error:
        pytest.skip(f"cannot listen on ::1: {error}")
    conn = await connect(reactor, "::1", server.port)
    try:
        await send(reactor, conn, Envelope("a@example.test", ["b@example.test"]), b"v6\n")
    finally:
        await close(reactor, conn)
    [received] = server.recorder.wait_for(1)
    assert received.content == b"v6\r\n"


@pytest_twisted.ensureDeferred
async def test_default_name_is_an_fqdn_or_address_literal(aiosmtpd_server: Any) -> None:
    from twisted.internet import reactor

    conn = SMTPConnection(aiosmtpd_server.host, aiosmtpd_server.port, reactor=reactor)
    await conn.connect().addTimeout(LIMIT, reactor)
    try:
        await send(reactor, conn, Envelope("a@example.test", ["b@example.test"]), b"name\n")
    finally:
        await close(reactor, conn)
    [received] = aiosmtpd_server.recorder.wait_for(1)
    helo = received.helo or ""
    assert helo == "[127.0.0.1]" or ("." in helo and " " not in helo)


@pytest_twisted.ensureDeferred
async def test_adopted_socket(aiosmtpd_server: Any) -> None:
    import socket

    from twisted.internet import reactor

    sock = socket.create_connection((aiosmtpd_server.host, aiosmtpd_server.port), timeout=5)
    sock.setblocking(False)
    conn = SMTPConnection(connection=sock, reactor=reactor, name="adopted.example.test")
    await conn.connect().addTimeout(LIMIT, reactor)
    try:
        await send(reactor, conn, Envelope("a@example.test", ["b@example.test"]), b"adopted\n")
    finally:
        await close(reactor, conn)
    [received] = aiosmtpd_server.recorder.wait_for(1)
    assert received.helo == "adopted.example.test"


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_econnection() -> None:
    import socket

    from twisted.internet import reactor

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = SMTPConnection("127.0.0.1", port, reactor=reactor, name="c.example.test")
    ends: list[str] = []
    conn.on("end", lambda: ends.append("end"))
    with pytest.raises(ConnectionError) as caught:
        await conn.connect().addTimeout(LIMIT, reactor)
    assert getattr(caught.value, "code", None) == "ECONNECTION"
    assert ends == ["end"]


# -- Postfix ------------------------------------------------------------------------


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_postfix_delivers_exact_bytes(postfix_server: Any) -> None:
    from twisted.internet import reactor

    tag = f"pf-exact-{os.getpid()}"
    message = tricky_message(tag, size=500_000)
    conn = await connect(reactor, postfix_server.host, postfix_server.port)
    try:
        assert "PIPELINING" in conn.extensions
        info = await send(reactor, conn, Envelope("a@example.test", ["b@example.test"], use_8bit_mime=True), message)
    finally:
        await close(reactor, conn)
    assert info.response.startswith("250")
    received = await postfix_server.recorder.when_match(
        lambda m: m.header("Subject") == tag, reactor, timeout=LIMIT
    )
    assert postfix_server.strip_received(received.content) == normalised(message)
    assert received.mail_param("BODY") == "8BITMIME"


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_postfix_partial_rejection_and_dsn(postfix_server: Any) -> None:
    from twisted.internet import reactor

    tag = f"pf-partial-{os.getpid()}"
    conn = await connect(reactor, postfix_server.host, postfix_server.port)
    try:
        info = await send(
            reactor,
            conn,
            Envelope(
                "a@example.test",
                ["ok@example.test", "reject-x@example.test"],
                dsn={"ret": "HDRS", "envid": "pf+1", "notify": "FAILURE,DELAY", "orcpt": "ok@example.test"},
            ),
            f"Subject: {tag}\n\nbody\n".encode(),
        )
    finally:
        await close(reactor, conn)
    assert info.accepted == ["ok@example.test"]
    assert info.rejected == ["reject-x@example.test"]
    assert info.rejected_errors[0].response_code == 550
    received = await postfix_server.recorder.when_match(
        lambda m: m.header("Subject") == tag, reactor, timeout=LIMIT
    )
    assert received.rcpt_tos == ("ok@example.test",)
    # Postfix passed our DSN parameters on to the next hop.
    assert received.mail_param("RET") == "HDRS"
    assert received.mail_param("ENVID") == "pf+2B1"
    assert received.rcpt_param("ok@example.test", "NOTIFY") == "FAILURE,DELAY"


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_postfix_size_limit_checked_before_data(postfix_server: Any) -> None:
    from twisted.internet import reactor

    conn = await connect(reactor, postfix_server.host, postfix_server.port)
    try:
        limit = int(conn.extensions["SIZE"])
        assert limit == postfix_server.postfix.message_size_limit
        with pytest.raises(MessageError) as caught:
            await send(reactor, conn, Envelope("a@example.test", ["b@example.test"], size=limit + 1), b"x")
        assert caught.value.response_code is None  # refused locally, nothing sent
        info = await send(reactor, conn, Envelope("a@example.test", ["b@example.test"], size=100), b"ok\n")
        assert info.accepted == ["b@example.test"]
    finally:
        await close(reactor, conn)


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_postfix_many_sends_on_one_connection(postfix_server: Any) -> None:
    from twisted.internet import reactor

    tag = f"pf-many-{os.getpid()}"
    messages = {f"{tag}-{n}": tricky_message(f"{tag}-{n}", size=n * 211) for n in range(40)}
    conn = await connect(reactor, postfix_server.host, postfix_server.port)
    try:
        for subject, message in messages.items():
            await send(reactor, conn, Envelope("a@example.test", ["b@example.test"]), io.BytesIO(message))
    finally:
        await close(reactor, conn)
    for subject, message in messages.items():
        received = await postfix_server.recorder.when_match(
            lambda m, s=subject: m.header("Subject") == s, reactor, timeout=LIMIT
        )
        assert postfix_server.strip_received(received.content) == normalised(message)
