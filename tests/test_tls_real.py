"""
TLS against real peers on 127.0.0.1: aiosmtpd with STARTTLS and with
implicit TLS, and a scripted Twisted server that records every line it
received (to prove that nothing is sent after a failure) and can misbehave
on purpose.  Certificates come from trustme, with a second, unknown CA for
the negative cases.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tls_peers import (
    Certs,
    LogCollector,
    RunningAiosmtpd,
    Script,
    ScriptedServer,
    ServerCreator,
    accept_any_login,
    guard,
    make_certs,
    server_ssl_context,
    start_aiosmtpd,
)
from twisted_smtpconn import Auth, Envelope, SMTPConnection, SMTPConnectionError

MESSAGE = b"Subject: TLS test\r\n\r\nHello over TLS.\r\n"


def envelope() -> Envelope:
    return Envelope("sender@example.test", ["rcpt@example.test"])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def aiosmtpd() -> Iterator[Callable[..., RunningAiosmtpd]]:
    started: list[RunningAiosmtpd] = []

    def start(**kwargs: Any) -> RunningAiosmtpd:
        peer = start_aiosmtpd(**kwargs)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest_twisted.async_yield_fixture
async def scripted(certs: Certs) -> AsyncIterator[Callable[..., tuple[ScriptedServer, int]]]:
    servers: list[ScriptedServer] = []

    def start(leaf: str = "server", maximum_version: int | None = None, **script: Any) -> tuple[ScriptedServer, int]:
        creator = ServerCreator(getattr(certs, leaf), maximum_version=maximum_version)
        server = ScriptedServer(Script(**script), creator)
        servers.append(server)
        return server, server.start()

    yield start
    for server in servers:
        await server.stop()


async def connect_failure(conn: SMTPConnection) -> SMTPConnectionError:
    """
    The SMTPConnectionError ``conn.connect()`` fails with (the test fails if
    it connects), once the connection is gone.
    """
    try:
        result = await guard(conn.connect())
    except SMTPConnectionError as error:
        await guard(conn.when_closed())
        return error
    raise AssertionError(f"expected a failure, got {result!r}")


async def deliver(conn: SMTPConnection) -> None:
    await guard(conn.connect())
    await guard(conn.send(envelope(), MESSAGE))
    await guard(conn.quit())


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- STARTTLS with aiosmtpd ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_starttls_verified_by_host_name(aiosmtpd: Any, certs: Certs) -> None:
    sni: list[str | None] = []
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server, sni_seen=sni))
    conn = SMTPConnection("localhost", peer.port, tls={"ca_certs": certs.ca_file}, name="client.test")
    await guard(conn.connect())
    assert conn.secure is True
    assert "STARTTLS" not in conn.extensions  # the hello over TLS replaced the first
    await guard(conn.send(envelope(), MESSAGE))
    await guard(conn.quit())
    await guard(conn.when_closed())
    assert conn.secure is False
    [delivery] = peer.handler.deliveries
    assert delivery.secure and delivery.content == MESSAGE
    assert peer.handler.ehlos == [("client.test", False), ("client.test", True)]
    assert sni == ["localhost"]


@pytest_twisted.ensureDeferred
async def test_starttls_verified_by_ip_address_without_sni(aiosmtpd: Any, certs: Certs) -> None:
    sni: list[str | None] = []
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server, sni_seen=sni))
    await deliver(SMTPConnection("127.0.0.1", peer.port, tls={"ca_certs": certs.ca_file}, require_tls=True))
    assert peer.handler.deliveries[0].secure
    assert sni == [None]  # RFC 6066: no address in SNI


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
@pytest_twisted.ensureDeferred
async def test_starttls_over_ipv6_literal(aiosmtpd: Any, certs: Certs) -> None:
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server), hostname="::1")
    await deliver(SMTPConnection("::1", peer.port, tls={"ca_certs": certs.ca_file}, require_tls=True))
    assert peer.handler.deliveries[0].secure


@pytest_twisted.ensureDeferred
async def test_servername_is_sent_and_verified(aiosmtpd: Any, certs: Certs) -> None:
    sni: list[str | None] = []
    peer = aiosmtpd(tls_context=server_ssl_context(certs.wrong_name, sni_seen=sni))
    conn = SMTPConnection(
        "127.0.0.1", peer.port, tls={"ca_certs": certs.ca_file, "servername": "wrong-name.example.test"}
    )
    await deliver(conn)
    assert sni == ["wrong-name.example.test"]


@pytest_twisted.ensureDeferred
async def test_auth_offered_only_after_tls(aiosmtpd: Any, certs: Certs) -> None:
    """A server that offers STARTTLS only before TLS and AUTH only after it."""
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server), authenticator=accept_any_login)
    conn = SMTPConnection("localhost", peer.port, tls={"ca_certs": certs.ca_file}, require_tls=True)
    await guard(conn.connect())
    assert "STARTTLS" not in conn.extensions
    assert "PLAIN" in conn.auth_methods
    await guard(conn.login(Auth(user="user", password="secret")))
    await guard(conn.send(envelope(), MESSAGE))
    await guard(conn.quit())
    assert peer.handler.deliveries[0].authenticated


@pytest_twisted.ensureDeferred
async def test_reject_unauthorized_false_accepts_an_unknown_ca_and_warns(aiosmtpd: Any, certs: Certs) -> None:
    log = LogCollector()
    peer = aiosmtpd(tls_context=server_ssl_context(certs.untrusted))
    conn = SMTPConnection(
        "localhost", peer.port, tls={"reject_unauthorized": False}, require_tls=True, logger=log.logger()
    )
    await deliver(conn)
    assert peer.handler.deliveries[0].secure
    assert any("verification is OFF" in text for text in log.warnings())


@pytest_twisted.ensureDeferred
async def test_verification_on_does_not_warn(aiosmtpd: Any, certs: Certs) -> None:
    log = LogCollector()
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server))
    await deliver(SMTPConnection("localhost", peer.port, tls={"ca_certs": certs.ca_file}, logger=log.logger()))
    assert log.warnings() == []


@pytest_twisted.ensureDeferred
async def test_a_caller_creator_is_used(aiosmtpd: Any, certs: Certs) -> None:
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    peer = aiosmtpd(tls_context=server_ssl_context(certs.server))
    creator = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(certs.ca.cert_pem.bytes()))
    await deliver(SMTPConnection("localhost", peer.port, tls=creator, require_tls=True))
    assert peer.handler.deliveries[0].secure


@pytest_twisted.ensureDeferred
async def test_a_caller_creator_that_refuses_is_etls(aiosmtpd: Any, certs: Certs) -> None:
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    peer = aiosmtpd(tls_context=server_ssl_context(certs.untrusted))
    creator = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(certs.ca.cert_pem.bytes()))
    conn = SMTPConnection("localhost", peer.port, tls=creator)
    error = await connect_failure(conn)
    assert error.code == "ETLS"
    assert peer.handler.mails == []


@pytest.mark.parametrize("combined", [False, True], ids=["cert+key", "combined-file"])
@pytest_twisted.ensureDeferred
async def test_client_certificate(aiosmtpd: Any, certs: Certs, combined: bool) -> None:
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server, client_ca=certs.ca))
    tls: dict[str, Any] = {"ca_certs": certs.ca_file}
    if combined:
        tls["client_cert"] = certs.client_combined_file
    else:
        tls.update(client_cert=certs.client_cert_file, client_key=certs.client_key_file)
    await deliver(SMTPConnection("localhost", peer.port, tls=tls, require_tls=True))
    assert peer.handler.deliveries[0].secure


# -- negative cases, each with its code, and nothing sent after the failure -------------------


@pytest.mark.parametrize(
    ("leaf", "words"),
    [("untrusted", "unknown CA"), ("wrong_name", "name mismatch"), ("expired", "expired")],
)
@pytest_twisted.ensureDeferred
async def test_certificate_refused_with_its_reason(aiosmtpd: Any, certs: Certs, leaf: str, words: str) -> None:
    peer = aiosmtpd(tls_context=server_ssl_context(getattr(certs, leaf)))
    conn = SMTPConnection("localhost", peer.port, tls={"ca_certs": certs.ca_file}, name="client.test")
    ends: list[str] = []
    conn.on("end", lambda: ends.append("end"))
    error = await connect_failure(conn)
    assert error.code == "ETLS"
    assert words in str(error)
    assert conn.secure is False
    await guard(conn.when_closed())
    assert ends == ["end"]
    assert peer.handler.mails == [] and peer.handler.ehlos == [("client.test", False)]


@pytest.mark.parametrize(
    ("leaf", "words"),
    [("untrusted", "unknown CA"), ("wrong_name", "name mismatch"), ("expired", "expired")],
)
@pytest_twisted.ensureDeferred
async def test_certificate_refused_nothing_sent_after(scripted: Any, certs: Certs, leaf: str, words: str) -> None:
    server, port = scripted(leaf=leaf)
    conn = SMTPConnection("localhost", port, tls={"ca_certs": certs.ca_file}, name="client.test")
    error = await connect_failure(conn)
    assert error.code == "ETLS" and words in str(error)
    [session] = server.sessions
    assert session.commands() == [b"EHLO client.test", b"STARTTLS"]


@pytest_twisted.ensureDeferred
async def test_default_trust_store_does_not_know_the_test_ca(aiosmtpd: Any, certs: Certs) -> None:
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server))
    error = await connect_failure(SMTPConnection("localhost", peer.port))
    assert error.code == "ETLS" and "unknown CA" in str(error)


@pytest_twisted.ensureDeferred
async def test_tls_required_but_not_offered(aiosmtpd: Any) -> None:
    peer = aiosmtpd()  # no tls_context: aiosmtpd does not offer STARTTLS
    conn = SMTPConnection("127.0.0.1", peer.port, require_tls=True)
    error = await connect_failure(conn)
    assert error.code == "ETLS" and "does not offer STARTTLS" in str(error)
    assert peer.handler.mails == []


@pytest_twisted.ensureDeferred
async def test_tls_required_but_not_offered_nothing_sent_after(scripted: Any) -> None:
    server, port = scripted(ehlo_cleartext=["SIZE 1000", "AUTH PLAIN"])
    error = await connect_failure(SMTPConnection("127.0.0.1", port, require_tls=True, name="c.test"))
    assert error.code == "ETLS"
    assert server.sessions[0].commands() == [b"EHLO c.test"]


@pytest.mark.parametrize("policy", ["require_tls", "default"])
@pytest_twisted.ensureDeferred
async def test_starttls_refused_454(scripted: Any, policy: str) -> None:
    server, port = scripted(starttls_reply=b"454 4.7.0 TLS not available\r\n")
    options = {"require_tls": True} if policy == "require_tls" else {}
    error = await connect_failure(SMTPConnection("127.0.0.1", port, name="c.test", **options))
    assert (error.code, error.response_code) == ("ETLS", 454)
    assert server.sessions[0].commands() == [b"EHLO c.test", b"STARTTLS"]


@pytest_twisted.ensureDeferred
async def test_starttls_refused_454_opportunistic_goes_on(scripted: Any) -> None:
    log = LogCollector()
    server, port = scripted(starttls_reply=b"454 4.7.0 TLS not available\r\n")
    conn = SMTPConnection("127.0.0.1", port, name="c.test", opportunistic_tls=True, logger=log.logger())
    await deliver(conn)
    [session] = server.sessions
    assert session.commands(secure=True) == []
    assert b"MAIL FROM:<sender@example.test>" in [line.split(b" BODY")[0].split(b" SIZE")[0] for line in session.commands()]
    assert any("refused STARTTLS" in text for text in log.warnings())


@pytest_twisted.ensureDeferred
async def test_injected_reply_after_220(scripted: Any) -> None:
    server, port = scripted(starttls_reply=b"220 2.0.0 go ahead\r\n250-evil.test\r\n250 AUTH PLAIN\r\n", start_tls=False)
    conn = SMTPConnection("127.0.0.1", port, name="c.test")
    error = await connect_failure(conn)
    assert error.code == "ETLS" and "injection" in str(error)
    assert server.sessions[0].commands() == [b"EHLO c.test", b"STARTTLS"]


@pytest_twisted.ensureDeferred
async def test_handshake_failure_no_common_version(scripted: Any, certs: Certs) -> None:
    from OpenSSL import SSL

    server, port = scripted(maximum_version=SSL.TLS1_2_VERSION)
    conn = SMTPConnection(
        "localhost", port, tls={"ca_certs": certs.ca_file, "min_version": "TLSv1.3"}, name="c.test"
    )
    error = await connect_failure(conn)
    assert error.code == "ETLS"
    assert "no TLS version in common" in str(error)
    assert server.sessions[0].commands() == [b"EHLO c.test", b"STARTTLS"]


@pytest_twisted.ensureDeferred
async def test_handshake_failure_with_aiosmtpd(aiosmtpd: Any, certs: Certs) -> None:
    # Python's server resets the connection after its alert, so the reason
    # may be lost on the way; the code is ETLS all the same.
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server, maximum_version=ssl.TLSVersion.TLSv1_2))
    conn = SMTPConnection("localhost", peer.port, tls={"ca_certs": certs.ca_file, "min_version": "TLSv1.3"})
    error = await connect_failure(conn)
    assert error.code == "ETLS"
    assert peer.handler.mails == []


@pytest_twisted.ensureDeferred
async def test_min_version_met(aiosmtpd: Any, certs: Certs) -> None:
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server))
    await deliver(SMTPConnection("localhost", peer.port, tls={"ca_certs": certs.ca_file, "min_version": "TLSv1.3"}))


@pytest_twisted.ensureDeferred
async def test_missing_client_certificate_is_etls(aiosmtpd: Any, certs: Certs) -> None:
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server, client_ca=certs.ca))
    conn = SMTPConnection("localhost", peer.port, tls={"ca_certs": certs.ca_file})
    error = await connect_failure(conn)
    assert error.code == "ETLS"
    assert peer.handler.mails == []


@pytest_twisted.ensureDeferred
async def test_opportunistic_reconnects_in_cleartext_after_failed_handshake(aiosmtpd: Any, certs: Certs) -> None:
    log = LogCollector()
    peer = aiosmtpd(tls_context=server_ssl_context(certs.untrusted))
    conn = SMTPConnection(
        "localhost", peer.port, tls={"ca_certs": certs.ca_file}, opportunistic_tls=True, name="client.test",
        logger=log.logger(),
    )
    events: list[str] = []
    for event in ("connect", "error", "end"):
        conn.on(event, lambda *_, event=event: events.append(event))
    await guard(conn.connect())
    assert conn.secure is False
    assert "STARTTLS" in conn.extensions  # the cleartext hello of the second connection
    await guard(conn.send(envelope(), MESSAGE))
    await guard(conn.quit())
    await guard(conn.when_closed())
    assert events == ["connect", "end"]
    assert [d.secure for d in peer.handler.deliveries] == [False]
    assert peer.handler.ehlos == [("client.test", False), ("client.test", False)]
    assert any("reconnecting in cleartext" in text and "unknown CA" in text for text in log.warnings())


# -- implicit TLS with aiosmtpd --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_implicit_tls(aiosmtpd: Any, certs: Certs) -> None:
    peer = aiosmtpd(implicit_context=server_ssl_context(certs.server))
    conn = SMTPConnection("localhost", peer.port, secure=True, tls={"ca_certs": certs.ca_file}, name="client.test")
    await guard(conn.connect())
    assert conn.secure is True
    await guard(conn.send(envelope(), MESSAGE))
    await guard(conn.quit())
    assert peer.handler.deliveries[0].secure
    assert peer.handler.ehlos == [("client.test", True)]


@pytest.mark.parametrize(
    ("leaf", "words"),
    [("untrusted", "unknown CA"), ("wrong_name", "name mismatch"), ("expired", "expired")],
)
@pytest_twisted.ensureDeferred
async def test_implicit_tls_certificate_refused(aiosmtpd: Any, certs: Certs, leaf: str, words: str) -> None:
    peer = aiosmtpd(implicit_context=server_ssl_context(getattr(certs, leaf)))
    conn = SMTPConnection("localhost", peer.port, secure=True, tls={"ca_certs": certs.ca_file})
    error = await connect_failure(conn)
    assert error.code == "ETLS" and words in str(error)
    assert conn.greeting == ""
    assert peer.handler.ehlos == []


@pytest_twisted.ensureDeferred
async def test_implicit_tls_to_a_cleartext_port(aiosmtpd: Any, certs: Certs) -> None:
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server))
    conn = SMTPConnection("localhost", peer.port, secure=True, tls={"ca_certs": certs.ca_file})
    error = await connect_failure(conn)
    assert error.code == "ETLS"
    assert peer.handler.ehlos == []


@pytest_twisted.ensureDeferred
async def test_implicit_tls_through_an_endpoint(aiosmtpd: Any, certs: Certs) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    peer = aiosmtpd(implicit_context=server_ssl_context(certs.server))
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", peer.port)
    await deliver(
        SMTPConnection("localhost", secure=True, endpoint=endpoint, tls={"ca_certs": certs.ca_file})
    )
    assert peer.handler.deliveries[0].secure


@pytest_twisted.ensureDeferred
async def test_starttls_through_an_endpoint(aiosmtpd: Any, certs: Certs) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    peer = aiosmtpd(tls_context=server_ssl_context(certs.server))
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", peer.port)
    await deliver(SMTPConnection("localhost", endpoint=endpoint, require_tls=True, tls={"ca_certs": certs.ca_file}))
    assert peer.handler.deliveries[0].secure


@pytest_twisted.ensureDeferred
async def test_adopted_socket_is_upgraded_before_the_greeting(aiosmtpd: Any, certs: Certs) -> None:
    peer = aiosmtpd(implicit_context=server_ssl_context(certs.server))
    sock = socket.create_connection(("127.0.0.1", peer.port), timeout=10)
    sock.setblocking(False)
    conn = SMTPConnection("localhost", secure=True, connection=sock, tls={"ca_certs": certs.ca_file})
    await guard(conn.connect())
    assert conn.secure is True
    await guard(conn.send(envelope(), MESSAGE))
    await guard(conn.quit())
    assert peer.handler.deliveries[0].secure


@pytest_twisted.ensureDeferred
async def test_adopted_socket_with_starttls(aiosmtpd: Any, certs: Certs) -> None:
    peer = aiosmtpd(tls_context=server_ssl_context(certs.server))
    sock = socket.create_connection(("127.0.0.1", peer.port), timeout=10)
    sock.setblocking(False)
    await deliver(SMTPConnection("localhost", connection=sock, require_tls=True, tls={"ca_certs": certs.ca_file}))
    assert peer.handler.deliveries[0].secure


# -- the scripted server: the hello after TLS, quit without close_notify ------------------------


@pytest_twisted.ensureDeferred
async def test_hello_after_starttls_replaces_the_first(scripted: Any, certs: Certs) -> None:
    server, port = scripted(ehlo_cleartext=["STARTTLS", "SIZE 1000", "AUTH LOGIN"], ehlo_tls=["AUTH PLAIN"])
    conn = SMTPConnection("localhost", port, tls={"ca_certs": certs.ca_file}, name="c.test")
    await guard(conn.connect())
    assert conn.extensions == {"AUTH": "PLAIN"}
    assert conn.auth_methods == ["PLAIN"]
    await guard(conn.login(Auth(user="user", password="secret")))
    await guard(conn.quit())
    [session] = server.sessions
    assert session.commands(secure=False) == [b"EHLO c.test", b"STARTTLS"]
    assert session.commands(secure=True)[0] == b"EHLO c.test"
    assert session.commands(secure=True)[1].startswith(b"AUTH PLAIN")


@pytest_twisted.ensureDeferred
async def test_quit_when_the_peer_drops_after_221_without_close_notify(scripted: Any, certs: Certs) -> None:
    server, port = scripted(on_quit="drop-after-221")
    conn = SMTPConnection("localhost", port, tls={"ca_certs": certs.ca_file}, require_tls=True)
    await guard(conn.connect())
    await guard(conn.send(envelope(), MESSAGE))
    await guard(conn.quit(), 4.0)  # less than quit's own 5 s grace: the drop itself ends it
    assert server.sessions[0].commands(secure=True)[-1] == b"QUIT"
    await guard(conn.when_closed())
    assert conn.secure is False


@pytest_twisted.ensureDeferred
async def test_quit_when_the_peer_drops_without_221_or_close_notify(scripted: Any, certs: Certs) -> None:
    server, port = scripted(on_quit="drop")
    conn = SMTPConnection("localhost", port, tls={"ca_certs": certs.ca_file}, require_tls=True)
    await guard(conn.connect())
    await guard(conn.quit(), 4.0)
    await guard(conn.when_closed())
    assert conn.secure is False


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_quit_when_the_peer_never_answers_close_notify(scripted: Any, certs: Certs) -> None:
    server, port = scripted(on_quit="hang")
    conn = SMTPConnection("localhost", port, tls={"ca_certs": certs.ca_file}, require_tls=True)
    await guard(conn.connect())
    await guard(conn.quit(), 15.0)  # quit's grace period (5 s) ends it
    await guard(conn.when_closed())
    assert conn.secure is False



# -- the documentation's example ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "trusted", "exit_code"),
    [("starttls", True, 0), ("implicit", True, 0), ("starttls", False, 1)],
    ids=["starttls", "implicit", "unknown-ca"],
)
@pytest_twisted.ensureDeferred
async def test_docs_example_private_ca(aiosmtpd: Any, certs: Certs, mode: str, trusted: bool, exit_code: int) -> None:
    import os
    import sys

    from twisted.internet import utils

    context = server_ssl_context(certs.server)
    peer = aiosmtpd(**({"implicit_context": context} if mode == "implicit" else {"tls_context": context}))
    root = Path(__file__).resolve().parent.parent
    script = root / "docs" / "examples" / "tls_private_ca.py"
    bundle = certs.ca_file if trusted else certs.unknown_ca_file
    import twisted_smtpconn

    # The child imports the same twisted_smtpconn as this test (source tree or wheel).
    package_root = str(Path(twisted_smtpconn.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    out, err, code = await guard(
        utils.getProcessOutputAndValue(
            sys.executable, [str(script), "localhost", str(peer.port), bundle, mode], env=env
        )
    )
    assert code == exit_code, (out, err)
    if trusted:
        assert b"sent over TLS (secure=True)" in out
        assert peer.handler.deliveries[0].secure
    else:
        assert b"not sent (ETLS)" in err and b"unknown CA" in err
        assert peer.handler.mails == []
