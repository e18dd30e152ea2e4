"""
Proxies: the ``proxy`` URL, the proxy endpoint against byte-exact scripted
proxies, and real messages through real proxies (Dante for SOCKS4a and
SOCKS5, tinyproxy for HTTP CONNECT) to aiosmtpd, in cleartext, with
STARTTLS and with implicit TLS, checked by the bytes that arrived.

The scripted proxies (``adversary.ScriptedServer`` on real loopback
sockets) check every byte the client sends during the handshake and answer
with exactly the bytes a test needs, including what no real proxy sends on
demand: each SOCKS5 refusal code, a reply cut in the middle, silence.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from adversary import Dialogue, Peer, ScriptedServer, ScriptMismatch, within
from realservers.ports import free_port
from tls_peers import Certs, make_certs, server_ssl_context
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted_smtpconn import ConnectionFailedError, Envelope, SMTPConnection, SMTPConnectionError
from twisted_smtpconn._proxy import ProxySettings, parse_proxy, proxy_endpoint

#: Bound on every awaited Deferred: a hang fails the test instead of blocking it.
GUARD = 20.0

SERVER_PORT = 2525
GREETING = b"220 adversary.example ESMTP\r\n"


def reactor() -> Any:
    from twisted.internet import reactor as the_reactor

    return the_reactor


def guard(d: Deferred[Any], seconds: float = GUARD) -> Deferred[Any]:
    return within(d, seconds, reactor())


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def proxied_connection(proxy: str, host: str, port: int, **options: Any) -> SMTPConnection:
    """An SMTPConnection to ``host:port`` through ``proxy`` (the ``proxy=`` keyword)."""
    options.setdefault("connection_timeout", GUARD)
    return SMTPConnection(host, port, proxy=proxy, **options)


def unique_message(note: str = "") -> tuple[str, bytes]:
    """A message with a unique Subject (returned too), to find it at the server."""
    subject = f"proxy test {uuid.uuid4().hex}"
    return subject, (
        f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@smtpconn.test>\r\n\r\n"
        f"Through the proxy{note}.\r\n..a line that needs dot-stuffing\r\n"
    ).encode()


async def wait_for_log(proxy: Any, text: str, seconds: float = 10.0) -> None:
    """Wait (bounded) until the proxy's log shows ``text``: it may write after our hang-up."""
    from twisted.internet.task import deferLater

    for _ in range(int(seconds / 0.05)):
        if text in proxy.log():
            return
        await deferLater(reactor(), 0.05, lambda: None)
    raise AssertionError(f"{proxy.name} never logged {text!r}; its log:\n{proxy.log()[-3000:]}")


async def connect_failure(conn: SMTPConnection) -> SMTPConnectionError:
    """What ``conn.connect()`` fails with (the test fails if it connects)."""
    try:
        result = await guard(conn.connect())
    except SMTPConnectionError as error:
        await guard(conn.when_closed())
        return error
    raise AssertionError(f"expected a failure, got {result!r}")


# -- the proxy URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("socks5://127.0.0.1:1080", ProxySettings("socks5", "127.0.0.1", 1080)),
        ("SOCKS5H://Proxy.Example:1080", ProxySettings("socks5h", "proxy.example", 1080)),
        ("socks5h://user:pa%3Ass%40word@proxy.example:1080/", ProxySettings("socks5h", "proxy.example", 1080, "user", "pa:ss@word")),
        ("socks4a://[::1]:1080", ProxySettings("socks4a", "::1", 1080)),
        ("http://proxy.example:3128", ProxySettings("http", "proxy.example", 3128)),
        ("http://alice:@proxy.example:3128", ProxySettings("http", "proxy.example", 3128, "alice", "")),
        ("http://[2001:db8::1]:65535", ProxySettings("http", "2001:db8::1", 65535)),
    ],
)
def test_parse_accepts(url: str, expected: ProxySettings) -> None:
    assert parse_proxy(url) == expected


def test_parse_none_and_settings_pass() -> None:
    settings = ProxySettings("socks5", "127.0.0.1", 1080)
    assert parse_proxy(None) is None
    assert parse_proxy(settings) is settings


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("socks4://127.0.0.1:1080", "unknown proxy scheme socks4://"),
        ("https://127.0.0.1:1080", "unknown proxy scheme https://"),
        ("127.0.0.1:1080", "the proxy URL has no scheme; start it with one of socks5://, socks5h://"),
        ("alice-secret:pw@127.0.0.1:1080", "the proxy URL has no scheme"),
        ("", "the proxy URL has no scheme"),
        ("://127.0.0.1:1080", "unknown proxy scheme none"),
        ("socks5://127.0.0.1", "has no port"),
        ("socks5://127.0.0.1:0", "not a number from 1 to 65535"),
        ("socks5://127.0.0.1:65536", "not a number from 1 to 65535"),
        ("socks5://127.0.0.1:socks", "not a number from 1 to 65535"),
        ("socks5://:1080", "has no host"),
        ("socks5://[::1:1080", "not a valid URL"),
        ("socks5://[not-an-address]:1080", "IPv6"),
        ("socks5://127.0.0.1:1080/path", "no path, query or fragment"),
        ("http://127.0.0.1:3128?x=1", "no path, query or fragment"),
        ("socks5://127.0.0.1 :1080", "spaces or control characters"),
        ("socks4a://user:secretpw@127.0.0.1:1080", "socks4a:// proxy cannot authenticate"),
        ("socks5://user@127.0.0.1:1080", "needs a password"),
        ("socks5://:secretpw@127.0.0.1:1080", "a password but no user name"),
        ("socks5://user:@127.0.0.1:1080", "1 to 255 bytes"),
        ("socks5://user:" + "p" * 256 + "@127.0.0.1:1080", "1 to 255 bytes"),
        ("http://us%3Aer:secretpw@127.0.0.1:3128", "cannot contain ':'"),
        ("http://user:secret%0Apw@127.0.0.1:3128", "control characters"),
    ],
)
def test_parse_refuses(url: str, complaint: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_proxy(url)
    message = str(caught.value)
    assert complaint in message
    assert "secret" not in message


@pytest.mark.parametrize("value", [b"socks5://127.0.0.1:1080", 1080, ("127.0.0.1", 1080)])
def test_parse_refuses_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="proxy must be a URL string"):
        parse_proxy(value)


def test_settings_repr_hides_the_password() -> None:
    settings = parse_proxy("socks5://alice:hunter2hunter2@127.0.0.1:1080")
    assert settings is not None
    assert "hunter2" not in repr(settings)
    assert "password='***'" in repr(settings)
    assert settings.description == "socks5://127.0.0.1:1080"


@pytest.mark.parametrize(
    ("url", "host", "complaint"),
    [
        ("socks4a://127.0.0.1:1080", "::1", "cannot connect to the IPv6 address"),
        ("socks5h://127.0.0.1:1080", ".".join(["a" * 63] * 4), "not a valid domain name"),
        ("socks5h://127.0.0.1:1080", "", "empty"),
        ("http://127.0.0.1:3128", "bad..name", "not a valid domain name"),
    ],
)
def test_endpoint_refuses_targets_the_scheme_cannot_carry(url: str, host: str, complaint: str) -> None:
    settings = parse_proxy(url)
    assert settings is not None
    with pytest.raises(ValueError, match=complaint):
        proxy_endpoint(reactor(), settings, host, 25, timeout=5)


# -- scripted proxies ---------------------------------------------------------------------


class Recording(Protocol):
    """The caller's protocol in endpoint tests: records what it gets."""

    def __init__(self) -> None:
        self.received = b""
        self.made_with: Any = None
        self.lost: Deferred[None] = Deferred()
        self.lost_reason: Failure | None = None
        self.data_arrived: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made_with = self.transport

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.data_arrived.called:
            self.data_arrived.callback(None)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.lost_reason = reason
        self.lost.callback(None)


@pytest_twisted.async_yield_fixture
async def scripted() -> AsyncIterator[Callable[..., ScriptedServer]]:
    """Factory: ``scripted(scenario, interface="127.0.0.1")`` -> a started ScriptedServer."""
    servers: list[ScriptedServer] = []

    def start(scenario: Any, interface: str = "127.0.0.1") -> ScriptedServer:
        server = ScriptedServer(reactor(), scenario)
        server.start(interface)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
        assert not server.errors, server.errors


async def expect_bytes(peer: Peer, expected: bytes) -> None:
    got = await peer.read_at_least(len(expected))
    if got != expected:
        raise ScriptMismatch(f"expected {expected!r}, the client sent {got!r}")


def endpoint_for(server: ScriptedServer, scheme: str, host: str, port: int = SERVER_PORT, userinfo: str = "") -> Any:
    interface = server._port.getHost().host
    proxy_host = f"[{interface}]" if ":" in interface else interface
    settings = parse_proxy(f"{scheme}://{userinfo}{proxy_host}:{server.port}")
    assert settings is not None
    return proxy_endpoint(reactor(), settings, host, port, timeout=GUARD)


async def connect_recording(endpoint: Any) -> Recording:
    protocol = await guard(endpoint.connect(Factory.forProtocol(Recording)))
    assert isinstance(protocol, Recording)
    return protocol


async def connect_error(endpoint: Any) -> ConnectionFailedError:
    try:
        protocol = await guard(endpoint.connect(Factory.forProtocol(Recording)))
    except ConnectionFailedError as error:
        assert error.code == "ECONNECTION"
        return error
    raise AssertionError(f"expected ECONNECTION, got {protocol!r}")


def port_bytes(port: int = SERVER_PORT) -> bytes:
    return port.to_bytes(2, "big")


SOCKS5_OK = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"


async def close_politely(protocol: Recording) -> None:
    protocol.transport.loseConnection()  # type: ignore[union-attr]
    await guard(protocol.lost)


@pytest_twisted.ensureDeferred
async def test_socks5_hands_the_same_transport_and_passes_bytes_after_the_reply(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\x00")
        await expect_bytes(peer, b"\x05\x01\x00\x01\xc0\x00\x02\x07" + port_bytes())
        peer.send(SOCKS5_OK + GREETING)  # the server's first words in the same segment
        await expect_bytes(peer, b"EHLO tunnel\r\n")
        peer.send(b"250 ok\r\n")
        await peer.gone()

    server = scripted(proxy)
    protocol = await connect_recording(endpoint_for(server, "socks5", "192.0.2.7"))
    assert protocol.received == GREETING
    assert protocol.made_with is protocol.transport
    assert type(protocol.transport).__name__ == "Client"  # the TCP transport itself, not a wrapper
    protocol.transport.write(b"EHLO tunnel\r\n")  # type: ignore[union-attr]
    protocol.data_arrived = Deferred()
    await guard(protocol.data_arrived)
    assert protocol.received == GREETING + b"250 ok\r\n"
    await close_politely(protocol)


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        (1, "general SOCKS server failure"),
        (2, "connection not allowed by ruleset"),
        (3, "network unreachable"),
        (4, "host unreachable"),
        (5, "connection refused"),
        (6, "TTL expired"),
        (7, "command not supported"),
        (8, "address type not supported"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_socks5_refusal_codes(scripted: Any, code: int, meaning: str) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\x00")
        await expect_bytes(peer, b"\x05\x01\x00\x01\x7f\x00\x00\x01" + port_bytes())
        peer.send(b"\x05" + bytes([code]) + b"\x00\x01\x00\x00\x00\x00\x00\x00")
        await peer.gone()  # the client hangs up after a refusal

    server = scripted(proxy)
    error = await connect_error(endpoint_for(server, "socks5", "127.0.0.1"))
    assert str(error) == (
        f"the socks5://127.0.0.1:{server.port} proxy refused to connect to 127.0.0.1:{SERVER_PORT}: "
        f"reply {code:#04x}, {meaning}"
    )
    await guard(server.finished())


@pytest_twisted.ensureDeferred
async def test_socks5_refusal_reaches_the_connection_as_econnection(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\x00")
        await peer.read_at_least(1)
        peer.send(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
        await peer.gone()

    server = scripted(proxy)
    conn = proxied_connection(f"socks5h://127.0.0.1:{server.port}", "mail.example.test", SERVER_PORT)
    error = await connect_failure(conn)
    assert isinstance(error, ConnectionFailedError) and error.code == "ECONNECTION"
    assert "refused to connect to mail.example.test:2525: reply 0x05, connection refused" in str(error)


@pytest_twisted.ensureDeferred
async def test_socks5_username_password(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x02\x00\x02")
        peer.send(b"\x05\x02")
        await expect_bytes(peer, b"\x01\x05alice\x0bp@ss:w\xc3\xb6rd!")
        peer.send(b"\x01\x00")
        await expect_bytes(peer, b"\x05\x01\x00\x03\x11mail.example.test" + port_bytes())
        peer.send(SOCKS5_OK + GREETING)
        await peer.gone()

    server = scripted(proxy)
    endpoint = endpoint_for(server, "socks5h", "mail.example.test", userinfo="alice:p%40ss%3Aw%C3%B6rd%21@")
    protocol = await connect_recording(endpoint)
    assert protocol.received == GREETING
    await close_politely(protocol)


@pytest_twisted.ensureDeferred
async def test_socks5_credentials_refused(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x02\x00\x02")
        peer.send(b"\x05\x02")
        await expect_bytes(peer, b"\x01\x05alice\x0dhunter2secret")
        peer.send(b"\x01\x01")
        await peer.gone()

    server = scripted(proxy)
    conn = proxied_connection(f"socks5://alice:hunter2secret@127.0.0.1:{server.port}", "127.0.0.1", SERVER_PORT)
    error = await connect_failure(conn)
    assert error.code == "ECONNECTION"
    assert str(error) == (
        f"the socks5://127.0.0.1:{server.port} proxy refused the user name and password (RFC 1929 status 0x01)"
    )
    assert "hunter2" not in repr(error)


@pytest_twisted.ensureDeferred
async def test_socks5_no_acceptable_method(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\xff")
        await peer.gone()

    server = scripted(proxy)
    error = await connect_error(endpoint_for(server, "socks5", "127.0.0.1"))
    assert "accepts no offered authentication method (offered no authentication; it chose none of them" in str(
        error
    )


@pytest_twisted.ensureDeferred
async def test_socks5_proxy_asking_for_a_password_it_was_not_offered(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\x02")
        await peer.gone()

    server = scripted(proxy)
    error = await connect_error(endpoint_for(server, "socks5", "127.0.0.1"))
    assert "it chose username/password instead" in str(error)


@pytest_twisted.ensureDeferred
async def test_socks5h_sends_the_name(scripted: Any) -> None:
    name = "mail.xn--bcher-kva.example"  # bücher, as the A-label the name goes out as

    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\x00")
        await expect_bytes(peer, b"\x05\x01\x00\x03" + bytes([len(name)]) + name.encode() + port_bytes())
        peer.send(SOCKS5_OK)
        await peer.gone()

    server = scripted(proxy)
    protocol = await connect_recording(endpoint_for(server, "socks5h", "mail.bücher.example"))
    assert protocol.received == b""
    await close_politely(protocol)


@pytest_twisted.ensureDeferred
async def test_socks5_resolves_locally_and_sends_the_address(scripted: Any) -> None:
    requests: list[bytes] = []

    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\x00")
        requests.append(await peer.read_at_least(10))
        peer.send(SOCKS5_OK)
        await peer.gone()

    server = scripted(proxy)
    protocol = await connect_recording(endpoint_for(server, "socks5", "localhost"))
    await close_politely(protocol)
    [request] = requests
    # "localhost" resolves here, and its IPv4 address is preferred.
    assert request == b"\x05\x01\x00\x01\x7f\x00\x00\x01" + port_bytes()


@pytest_twisted.ensureDeferred
async def test_socks5_name_that_does_not_resolve(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        raise ScriptMismatch("the client should not connect to the proxy at all")

    server = scripted(proxy)
    error = await connect_error(endpoint_for(server, "socks5", "no-such-host.invalid"))
    assert str(error).startswith(
        f"could not resolve no-such-host.invalid to connect to it through the socks5://127.0.0.1:{server.port} proxy"
    )
    assert server.peers == []


@pytest_twisted.ensureDeferred
async def test_socks5_ipv6_target_and_a_reply_in_single_bytes(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        await peer.send_bytewise(b"\x05\x00")
        await expect_bytes(peer, b"\x05\x01\x00\x04" + b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x25" + port_bytes())
        # A bound address given as a name (atyp 3), byte by byte, then the greeting.
        await peer.send_bytewise(b"\x05\x00\x00\x03\x05relay\x04\x38" + GREETING[:5])
        peer.send(GREETING[5:])
        await peer.gone()

    server = scripted(proxy)
    protocol = await connect_recording(endpoint_for(server, "socks5", "2001:db8::25"))
    while protocol.received != GREETING:
        protocol.data_arrived = Deferred()
        await guard(protocol.data_arrived)
    await close_politely(protocol)


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
@pytest_twisted.ensureDeferred
async def test_proxy_on_ipv6_loopback(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\x00")
        await expect_bytes(peer, b"\x05\x01\x00\x04" + b"\x00" * 15 + b"\x01" + port_bytes())
        peer.send(b"\x05\x00\x00\x04" + b"\x00" * 15 + b"\x01\x04\x38" + GREETING)  # bound to [::1]:1080
        await peer.gone()

    server = scripted(proxy, interface="::1")
    protocol = await connect_recording(endpoint_for(server, "socks5", "::1"))
    assert protocol.received == GREETING
    assert protocol.transport.getPeer().host == "::1"  # type: ignore[union-attr]
    await close_politely(protocol)


@pytest_twisted.ensureDeferred
async def test_socks5_reply_that_is_not_socks5(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await peer.gone()

    server = scripted(proxy)
    error = await connect_error(endpoint_for(server, "socks5", "127.0.0.1"))
    assert "sent a reply that is not SOCKS5: b'HT'" in str(error)


@pytest_twisted.ensureDeferred
async def test_socks5_reply_with_an_unknown_address_type(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\x00")
        await peer.read_at_least(10)
        peer.send(b"\x05\x00\x00\x07\x00\x00")
        await peer.gone()

    server = scripted(proxy)
    error = await connect_error(endpoint_for(server, "socks5", "127.0.0.1"))
    assert "sent a reply that is not SOCKS5: b'\\x05\\x00\\x00\\x07\\x00\\x00'" in str(error)


@pytest_twisted.ensureDeferred
async def test_socks4_reply_that_is_not_socks4(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await peer.read_at_least(9)
        peer.send(b"\x05\x00\x00\x01\x00\x00\x00\x00")
        await peer.gone()

    server = scripted(proxy)
    error = await connect_error(endpoint_for(server, "socks4a", "127.0.0.1"))
    assert "sent a reply that is not SOCKS4" in str(error)


@pytest_twisted.ensureDeferred
async def test_factory_that_declines(scripted: Any) -> None:
    class Declining(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\x00")
        await peer.read_at_least(10)
        peer.send(SOCKS5_OK)
        await peer.gone()

    server = scripted(proxy)
    with pytest.raises(ConnectionFailedError, match="protocol factory declined the connection"):
        await guard(endpoint_for(server, "socks5", "127.0.0.1").connect(Declining()))
    await guard(server.peers[0].gone(), 5.0)


@pytest_twisted.ensureDeferred
async def test_socks4a_sends_the_name(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x04\x01" + port_bytes() + b"\x00\x00\x00\xff\x00mail.example.test\x00")
        peer.send(b"\x00\x5a\x00\x00\x00\x00\x00\x00" + GREETING)
        await peer.gone()

    server = scripted(proxy)
    protocol = await connect_recording(endpoint_for(server, "socks4a", "mail.example.test"))
    assert protocol.received == GREETING
    await close_politely(protocol)


@pytest_twisted.ensureDeferred
async def test_socks4a_with_an_ipv4_address_is_plain_socks4(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x04\x01" + port_bytes() + b"\xc0\x00\x02\x07\x00")
        peer.send(b"\x00\x5b\x00\x00\x00\x00\x00\x00")
        await peer.gone()

    server = scripted(proxy)
    error = await connect_error(endpoint_for(server, "socks4a", "192.0.2.7"))
    assert str(error) == (
        f"the socks4a://127.0.0.1:{server.port} proxy refused to connect to 192.0.2.7:{SERVER_PORT}: "
        "reply 0x5b, request rejected or failed"
    )


CONNECT_REQUEST = b"CONNECT mail.example.test:2525 HTTP/1.1\r\nHost: mail.example.test:2525\r\n"


@pytest_twisted.ensureDeferred
async def test_http_connect_200(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, CONNECT_REQUEST + b"\r\n")
        peer.send(b"HTTP/1.1 200 Connection established\r\nVia: 1.1 scripted\r\n\r\n" + GREETING)
        await peer.gone()

    server = scripted(proxy)
    protocol = await connect_recording(endpoint_for(server, "http", "mail.example.test"))
    assert protocol.received == GREETING
    await close_politely(protocol)


@pytest_twisted.ensureDeferred
async def test_http_connect_with_basic_credentials_and_a_100_first(scripted: Any) -> None:
    expected_auth = b"Proxy-Authorization: Basic " + base64.b64encode("alice:pä:ss".encode()) + b"\r\n"

    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, CONNECT_REQUEST + expected_auth + b"\r\n")
        await peer.send_bytewise(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
        await peer.gone()

    server = scripted(proxy)
    protocol = await connect_recording(endpoint_for(server, "http", "mail.example.test", userinfo="alice:p%C3%A4:ss@"))
    assert protocol.received == b""
    await close_politely(protocol)


@pytest_twisted.ensureDeferred
async def test_http_connect_to_an_ipv6_address(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"CONNECT [2001:db8::25]:2525 HTTP/1.1\r\nHost: [2001:db8::25]:2525\r\n\r\n")
        peer.send(b"HTTP/1.0 200 OK\r\n\r\n")
        await peer.gone()

    server = scripted(proxy)
    protocol = await connect_recording(endpoint_for(server, "http", "2001:db8::25"))
    await close_politely(protocol)


@pytest.mark.parametrize(
    ("reply", "status_line"),
    [
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\n"
            b"Content-Length: 5\r\n\r\nnope!",
            "HTTP/1.1 407 Proxy Authentication Required",
        ),
        (b"HTTP/1.0 502 Bad Gateway\r\n\r\n<html>upstream down</html>", "HTTP/1.0 502 Bad Gateway"),
        (b"HTTP/1.1 403 \r\n\r\n", "HTTP/1.1 403"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_http_connect_refused(scripted: Any, reply: bytes, status_line: str) -> None:
    async def proxy(peer: Peer) -> None:
        await peer.read_until(b"\r\n\r\n")
        peer.send(reply)
        await peer.gone()

    server = scripted(proxy)
    conn = proxied_connection(f"http://alice:hunter2secret@127.0.0.1:{server.port}", "mail.example.test", SERVER_PORT)
    error = await connect_failure(conn)
    assert isinstance(error, ConnectionFailedError)
    assert str(error) == (
        f"the http://127.0.0.1:{server.port} proxy refused CONNECT mail.example.test:{SERVER_PORT}: {status_line}"
    )
    assert "hunter2" not in repr(error) and "YWxpY2U" not in repr(error)


@pytest_twisted.ensureDeferred
async def test_http_reply_that_is_not_http(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await peer.read_until(b"\r\n\r\n")
        peer.send(b"\x05\x00garbage\r\n\r\n")
        await peer.gone()

    server = scripted(proxy)
    error = await connect_error(endpoint_for(server, "http", "mail.example.test"))
    assert "proxy sent a reply that is not valid HTTP" in str(error)


@pytest.mark.parametrize(
    ("scheme", "partial"),
    [("socks5", b"\x05\x00\x05\x00\x00\x01\x7f"), ("socks4a", b"\x00\x5a\x00"), ("http", b"HTTP/1.1 200 OK\r\n")],
)
@pytest_twisted.ensureDeferred
async def test_proxy_closing_mid_handshake(scripted: Any, scheme: str, partial: bytes) -> None:
    async def proxy(peer: Peer) -> None:
        await peer.read_at_least(3)
        peer.send(partial)
        if scheme == "socks5":
            await peer.read_at_least(10)
        peer.close()

    server = scripted(proxy)
    error = await connect_error(endpoint_for(server, scheme, "127.0.0.1"))
    assert str(error).startswith(
        f"the {scheme}://127.0.0.1:{server.port} proxy closed the connection before the tunnel was up"
    )


@pytest.mark.parametrize("scheme", ["socks5", "socks4a", "http"])
@pytest_twisted.ensureDeferred
async def test_cancel_while_the_proxy_says_nothing(scripted: Any, scheme: str) -> None:
    arrived: Deferred[None] = Deferred()

    async def proxy(peer: Peer) -> None:
        await peer.read_at_least(3)
        arrived.callback(None)
        await peer.gone()

    server = scripted(proxy)
    d = endpoint_for(server, scheme, "127.0.0.1").connect(Factory.forProtocol(Recording))
    await guard(arrived)
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    # Dropped at once: the proxy sees the connection go without any reply.
    await guard(server.peers[0].gone(), 5.0)
    assert server.peers[0].sent == b""
    # The autouse leak check then proves that nothing is left in the reactor.


@pytest_twisted.ensureDeferred
async def test_connection_timeout_through_a_silent_proxy(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await peer.gone()

    server = scripted(proxy)
    conn = proxied_connection(f"socks5://127.0.0.1:{server.port}", "127.0.0.1", SERVER_PORT, connection_timeout=0.5)
    error = await connect_failure(conn)
    assert error.code == "ETIMEDOUT"
    await guard(server.peers[0].gone(), 5.0)


@pytest_twisted.ensureDeferred
async def test_cancel_before_tcp_to_the_proxy_is_up(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        await peer.gone()

    server = scripted(proxy)
    d = endpoint_for(server, "socks5", "127.0.0.1").connect(Factory.forProtocol(Recording))
    d.cancel()  # at once: the TCP connection attempt is still pending
    with pytest.raises(CancelledError):
        await d
    for peer in server.peers:  # if the kernel completed it already, it is dropped
        await guard(peer.gone(), 5.0)


@pytest_twisted.ensureDeferred
async def test_cancel_while_resolving_the_name(scripted: Any) -> None:
    async def proxy(peer: Peer) -> None:
        raise ScriptMismatch("a cancelled attempt connected to the proxy")

    server = scripted(proxy)
    d = endpoint_for(server, "socks5", "localhost").connect(Factory.forProtocol(Recording))
    d.cancel()  # the name is being resolved in a thread
    with pytest.raises(CancelledError):
        await d
    # The resolution still finishes (a resolver thread cannot be stopped);
    # what it finds must not start a connection.  "localhost" resolves from
    # /etc/hosts well within this pause.
    from twisted.internet.task import deferLater

    await deferLater(reactor(), 0.5, lambda: None)
    assert server.peers == []


def test_repr_of_the_endpoint_hides_credentials() -> None:
    settings = parse_proxy("http://alice:hunter2secret@127.0.0.1:3128")
    assert settings is not None
    endpoint = proxy_endpoint(reactor(), settings, "mail.example.test", 587, timeout=5)
    assert repr(endpoint) == "<proxy endpoint to mail.example.test:587 through http://127.0.0.1:3128>"


@pytest_twisted.ensureDeferred
async def test_proxy_that_is_not_listening() -> None:
    port = free_port()
    conn = proxied_connection(f"http://127.0.0.1:{port}", "127.0.0.1", SERVER_PORT)
    error = await connect_failure(conn)
    assert error.code == "ECONNECTION"
    assert str(error).startswith(f"could not connect to the http://127.0.0.1:{port} proxy: Connection was refused")


@pytest_twisted.ensureDeferred
async def test_endpoint_connects_twice(scripted: Any) -> None:
    dialogue = Dialogue()

    async def proxy(peer: Peer) -> None:
        await expect_bytes(peer, b"\x05\x01\x00")
        peer.send(b"\x05\x00")
        await peer.read_at_least(10)
        peer.send(SOCKS5_OK)
        await dialogue(peer)

    server = scripted(proxy)
    endpoint = endpoint_for(server, "socks5", "127.0.0.1")
    for _ in range(2):
        conn = SMTPConnection("127.0.0.1", SERVER_PORT, endpoint=endpoint, name="client.test")
        await guard(conn.connect())
        info = await guard(conn.send(Envelope("a@example.test", ["b@example.test"]), b"Subject: x\r\n\r\nhi\r\n"))
        assert info.accepted == ["b@example.test"]
        await guard(conn.quit())
    assert dialogue.messages == [b"Subject: x\r\n\r\nhi\r\n.\r\n"] * 2


# -- real proxies: Dante and tinyproxy, to aiosmtpd ------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("proxy-tls")))


async def deliver_through(proxy: str, server: Any, *, host: str = "127.0.0.1", **options: Any) -> Any:
    """Send one unique message through ``proxy`` to ``server``; return what arrived."""
    subject, message = unique_message(f" {proxy.split('://')[0]}")
    conn = proxied_connection(proxy, host, server.port, name="client.test", **options)
    await guard(conn.connect())
    info = await guard(conn.send(Envelope("sender@example.test", ["rcpt@example.test"]), message))
    assert info.accepted == ["rcpt@example.test"]
    secure = conn.secure
    await guard(conn.quit())
    delivered = await server.recorder.when_match(lambda m: m.header("Subject") == subject, reactor(), timeout=GUARD)
    assert delivered.sha256 == hashlib.sha256(message).hexdigest()
    assert delivered.content == message
    assert delivered.tls == secure
    return delivered


@pytest.mark.parametrize(
    ("scheme", "host"),
    [
        ("socks5", "localhost"),  # resolved here, the address goes to Dante
        ("socks5h", "localhost"),  # Dante resolves it
        ("socks4a", "127.0.0.1"),  # an address: plain SOCKS4, which Dante speaks
    ],
)
@pytest_twisted.ensureDeferred
async def test_dante_plain(dante_proxy: Any, aiosmtpd_server: Any, scheme: str, host: str) -> None:
    delivered = await deliver_through(dante_proxy.url(scheme), aiosmtpd_server, host=host)
    assert not delivered.tls
    # Dante's log shows the tunnel to the server's port.
    await wait_for_log(dante_proxy, f"127.0.0.1.{aiosmtpd_server.port}")


@pytest_twisted.ensureDeferred
async def test_dante_starttls_verified_through_the_tunnel(dante_proxy: Any, make_aiosmtpd: Any, certs: Certs) -> None:
    server = make_aiosmtpd(tls_context=server_ssl_context(certs.server), require_starttls=True)
    delivered = await deliver_through(
        dante_proxy.url("socks5h"), server, host="localhost", tls={"ca_certs": certs.ca_file}, require_tls=True
    )
    assert delivered.tls


@pytest_twisted.ensureDeferred
async def test_dante_implicit_tls(dante_proxy: Any, make_aiosmtpd: Any, certs: Certs) -> None:
    server = make_aiosmtpd(ssl_context=server_ssl_context(certs.server))
    delivered = await deliver_through(
        dante_proxy.url("socks5"), server, host="127.0.0.1", secure=True, tls={"ca_certs": certs.ca_file}
    )
    assert delivered.tls


@pytest_twisted.ensureDeferred
async def test_dante_untrusted_certificate_fails_end_to_end(dante_proxy: Any, make_aiosmtpd: Any, certs: Certs) -> None:
    # The proxy cannot stand in for the server: the certificate the client
    # checks is the server's own, and a wrong one fails as it would directly.
    server = make_aiosmtpd(tls_context=server_ssl_context(certs.untrusted))
    conn = proxied_connection(
        dante_proxy.url("socks5h"), "localhost", server.port, tls={"ca_certs": certs.ca_file}, require_tls=True
    )
    error = await connect_failure(conn)
    assert error.code == "ETLS"
    assert server.messages == ()


@pytest_twisted.ensureDeferred
async def test_dante_username_password(dante_auth_proxy: Any, make_aiosmtpd: Any, certs: Certs) -> None:
    server = make_aiosmtpd(tls_context=server_ssl_context(certs.server))
    delivered = await deliver_through(
        dante_auth_proxy.url("socks5h"), server, host="localhost", tls={"ca_certs": certs.ca_file}, require_tls=True
    )
    assert delivered.tls
    user = dante_auth_proxy.credentials[0]
    await wait_for_log(dante_auth_proxy, f"username%{user}@")


@pytest_twisted.ensureDeferred
async def test_dante_wrong_password(dante_auth_proxy: Any, aiosmtpd_server: Any) -> None:
    user = dante_auth_proxy.credentials[0]
    proxy = dante_auth_proxy.url("socks5", (user, "not-the-password"))
    error = await connect_failure(proxied_connection(proxy, "127.0.0.1", aiosmtpd_server.port))
    assert error.code == "ECONNECTION"
    assert str(error) == (
        f"the socks5://127.0.0.1:{dante_auth_proxy.port} proxy refused the user name and password "
        "(RFC 1929 status 0x01)"
    )
    assert "not-the-password" not in repr(error)


@pytest_twisted.ensureDeferred
async def test_dante_without_credentials_where_they_are_required(dante_auth_proxy: Any) -> None:
    proxy = f"socks5://127.0.0.1:{dante_auth_proxy.port}"
    error = await connect_failure(proxied_connection(proxy, "127.0.0.1", free_port()))
    assert error.code == "ECONNECTION"
    assert "accepts no offered authentication method (offered no authentication; it chose none of them" in str(
        error
    )


@pytest_twisted.ensureDeferred
async def test_dante_refuses_socks4a_names(dante_proxy: Any, aiosmtpd_server: Any) -> None:
    # Dante speaks SOCKS4 but not the 4a extension: it takes the request for
    # the address 0.0.0.255, which no rule allows, and says so.
    error = await connect_failure(proxied_connection(dante_proxy.url("socks4a"), "localhost", aiosmtpd_server.port))
    assert error.code == "ECONNECTION"
    assert str(error) == (
        f"the socks4a://127.0.0.1:{dante_proxy.port} proxy refused to connect to localhost:{aiosmtpd_server.port}: "
        "reply 0x5b, request rejected or failed"
    )


@pytest_twisted.ensureDeferred
async def test_dante_block_rule(dante_proxy: Any) -> None:
    port = dante_proxy.blocked_port
    error = await connect_failure(proxied_connection(dante_proxy.url("socks5"), "127.0.0.1", port))
    assert error.code == "ECONNECTION"
    assert str(error) == (
        f"the socks5://127.0.0.1:{dante_proxy.port} proxy refused to connect to 127.0.0.1:{port}: "
        "reply 0x02, connection not allowed by ruleset"
    )


@pytest_twisted.ensureDeferred
async def test_dante_server_not_listening(dante_proxy: Any) -> None:
    port = free_port()
    error = await connect_failure(proxied_connection(dante_proxy.url("socks5h"), "localhost", port))
    assert error.code == "ECONNECTION"
    assert f"refused to connect to localhost:{port}: reply 0x05, connection refused" in str(error)


@pytest_twisted.ensureDeferred
async def test_tinyproxy_plain_and_starttls(make_tinyproxy: Any, make_aiosmtpd: Any, certs: Certs) -> None:
    plain = make_aiosmtpd()
    tls = make_aiosmtpd(tls_context=server_ssl_context(certs.server))
    proxy = make_tinyproxy(connect_ports=[plain.port, tls.port])
    delivered = await deliver_through(proxy.url("http"), plain, host="127.0.0.1", ignore_tls=True)
    assert not delivered.tls
    delivered = await deliver_through(
        proxy.url("http"), tls, host="localhost", tls={"ca_certs": certs.ca_file}, require_tls=True
    )
    assert delivered.tls
    await wait_for_log(proxy, f"CONNECT 127.0.0.1:{plain.port} HTTP/1.1")
    await wait_for_log(proxy, f"CONNECT localhost:{tls.port} HTTP/1.1")


@pytest_twisted.ensureDeferred
async def test_tinyproxy_implicit_tls_with_basic_auth(make_tinyproxy: Any, make_aiosmtpd: Any, certs: Certs) -> None:
    server = make_aiosmtpd(ssl_context=server_ssl_context(certs.server))
    proxy = make_tinyproxy(connect_ports=[server.port], basic_auth=("mailer", "tunnel-pass"))
    delivered = await deliver_through(
        proxy.url("http"), server, host="localhost", secure=True, tls={"ca_certs": certs.ca_file}
    )
    assert delivered.tls


@pytest.mark.parametrize(
    ("credentials", "status_line"),
    [
        (None, "HTTP/1.0 407 Proxy Authentication Required"),
        # tinyproxy answers wrong credentials with 401, not 407; quoted as it is.
        (("mailer", "wrong-pass"), "HTTP/1.0 401 Unauthorized"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_tinyproxy_refuses_credentials(
    make_tinyproxy: Any, aiosmtpd_server: Any, credentials: tuple[str, str] | None, status_line: str
) -> None:
    proxy = make_tinyproxy(connect_ports=[aiosmtpd_server.port], basic_auth=("mailer", "tunnel-pass"))
    url = proxy.url("http", credentials) if credentials else f"http://127.0.0.1:{proxy.port}"
    error = await connect_failure(proxied_connection(url, "127.0.0.1", aiosmtpd_server.port))
    assert error.code == "ECONNECTION"
    assert str(error) == (
        f"the http://127.0.0.1:{proxy.port} proxy refused CONNECT 127.0.0.1:{aiosmtpd_server.port}: {status_line}"
    )
    assert "wrong-pass" not in repr(error)
    assert aiosmtpd_server.messages == ()


@pytest_twisted.ensureDeferred
async def test_tinyproxy_port_not_allowed(make_tinyproxy: Any, aiosmtpd_server: Any) -> None:
    proxy = make_tinyproxy(connect_ports=[free_port()])
    error = await connect_failure(proxied_connection(proxy.url("http"), "127.0.0.1", aiosmtpd_server.port))
    assert error.code == "ECONNECTION"
    assert str(error) == (
        f"the http://127.0.0.1:{proxy.port} proxy refused CONNECT 127.0.0.1:{aiosmtpd_server.port}: "
        "HTTP/1.1 403 Access violation"
    )
    assert aiosmtpd_server.messages == ()


# -- the proxy= keyword ----------------------------------------------------------------


def test_proxy_keyword_is_checked_at_construction() -> None:
    from twisted.internet.testing import MemoryReactorClock

    clock = MemoryReactorClock()
    with pytest.raises(ValueError, match="without endpoint or connection"):
        SMTPConnection("mail.example", 25, proxy="socks5://127.0.0.1:1080", endpoint=object.__new__(_Endpoint), reactor=clock)
    with pytest.raises(ValueError):
        SMTPConnection("mail.example", 25, proxy="ftp://127.0.0.1:21", reactor=clock)
    with pytest.raises(TypeError):
        SMTPConnection("mail.example", 25, proxy=1080, reactor=clock)  # type: ignore[arg-type]
    conn = SMTPConnection("mail.example", 25, proxy="http://user:s3cretpw@127.0.0.1:3128", reactor=clock)
    assert "s3cretpw" not in repr(conn._options)  # type: ignore[attr-defined]


class _Endpoint:
    def connect(self, factory: Any) -> Any:  # pragma: no cover - never connected
        raise AssertionError("not used")


def test_password_auth_through_a_proxy_to_a_remote_host_needs_tls() -> None:
    """A proxy on loopback does not make the server local: cleartext AUTH is refused."""
    from twisted.internet.testing import MemoryReactorClock

    from twisted_smtpconn._auth import connection_is_local

    conn = SMTPConnection("mail.example", 25, proxy="socks5://127.0.0.1:1080", reactor=MemoryReactorClock())

    class _Peer:
        def getPeer(self) -> Any:
            from twisted.internet.address import IPv4Address

            return IPv4Address("TCP", "127.0.0.1", 1080)

    assert not connection_is_local(conn._options, _Peer())  # type: ignore[attr-defined]


# -- smtpsend --proxy ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("front_end", ["python -m", "twistd"])
async def test_smtpsend_proxy_flag(
    front_end: str, dante_proxy: Any, make_tinyproxy: Any, aiosmtpd_server: Any, tmp_path: Any
) -> None:
    """``--proxy`` through the real proxies: the message arrives, Dante logs the tunnel."""
    from clitools import run

    tinyproxy = make_tinyproxy(connect_ports=[aiosmtpd_server.port])
    for number, proxy in enumerate([dante_proxy.url("socks5h"), tinyproxy.url("http")]):
        subject = f"through proxy {number}"
        result = await run(
            front_end,
            ["--host", "localhost", "--port", str(aiosmtpd_server.port), "--proxy", proxy,
             "--from", "a@example.org", "--to", "b@example.org", "--subject", subject, "--body", "tunnelled"],
            tmp_path,
        )
        assert result.code == 0, result
        assert any(subject.encode() in message.content for message in aiosmtpd_server.messages)
    await wait_for_log(dante_proxy, f"127.0.0.1.{aiosmtpd_server.port}")
