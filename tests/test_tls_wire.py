"""
The TLS policies byte by byte: a StringTransport that records ``startTLS``
stands in for the socket, the test plays the server and decides when the
handshake completes or fails.  What the client wrote is compared exactly,
so "nothing is sent after the failure" means exactly that.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from tls_peers import LogCollector
from twisted_smtpconn import Envelope, SMTPConnection, SMTPConnectionError
from twisted_smtpconn._tls_creator import ClientCreator
from wiretools import ClosingTransport

GREETING = b"220 mx.example.test ESMTP\r\n"
EHLO = b"EHLO client.example\r\n"
EHLO_WITH_STARTTLS = b"250-mx.example.test\r\n250-SIZE 1000\r\n250-AUTH LOGIN\r\n250 STARTTLS\r\n"
EHLO_WITHOUT_STARTTLS = b"250-mx.example.test\r\n250-SIZE 1000\r\n250 AUTH LOGIN\r\n"
EHLO_OVER_TLS = b"250-mx.example.test\r\n250-SIZE 2000\r\n250-AUTH PLAIN XOAUTH2\r\n250 8BITMIME\r\n"


class TLSTransport(ClosingTransport):
    """A ClosingTransport that can "start TLS": it records the creator."""

    def __init__(self) -> None:
        super().__init__()
        self.creator: Any = None
        self.written_before_tls = b""

    def startTLS(self, creator: Any) -> None:
        self.creator = creator
        self.written_before_tls = self.value()


class Endpoint:
    """An endpoint giving each connection a fresh transport."""

    def __init__(self, transport_class: type[ClosingTransport]) -> None:
        self._transport_class = transport_class
        self.connections: list[tuple[Any, Any]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        transport = self._transport_class()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


class TLSWire:
    """One SMTPConnection on a fake wire whose transport can start TLS."""

    def __init__(self, transport_class: type[ClosingTransport] = TLSTransport, **options: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = Endpoint(transport_class)
        self.log = LogCollector()
        options.setdefault("name", "client.example")
        self.conn = SMTPConnection(
            "mx.example.test", endpoint=self.endpoint, reactor=self.reactor, logger=self.log.logger(), **options
        )
        self.events: list[str] = []
        for event in ("connect", "error", "end"):
            self.conn.on(event, lambda *args, event=event: self.events.append(event))

    @property
    def protocol(self) -> Any:
        return self.endpoint.connections[-1][0]

    @property
    def transport(self) -> Any:
        return self.endpoint.connections[-1][1]

    def server(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def client(self) -> bytes:
        value: bytes = self.transport.value()
        self.transport.clear()
        return value

    def handshake_done(self) -> None:
        self.protocol.handshakeCompleted()

    def handshake_fails(self, reason: str = "certificate verify failed") -> None:
        self.transport.disconnecting = True
        self.protocol.connectionLost(Failure(SSL.Error([("SSL routines", "", reason)])))

    def up_to_starttls(self) -> Deferred[Any]:
        d = self.conn.connect()
        self.server(GREETING)
        assert self.client() == EHLO
        self.server(EHLO_WITH_STARTTLS)
        assert self.client() == b"STARTTLS\r\n"
        return d


class Outcome:
    """The result of a Deferred that fired synchronously."""

    def __init__(self, d: Deferred[Any]) -> None:
        self.results: list[Any] = []
        d.addBoth(self.results.append)

    @property
    def fired(self) -> bool:
        return bool(self.results)

    def error(self) -> SMTPConnectionError:
        assert self.fired, "the Deferred has not fired"
        result = self.results[0]
        assert isinstance(result, Failure), f"expected a failure, got {result!r}"
        assert isinstance(result.value, SMTPConnectionError), result
        return result.value

    def value(self) -> Any:
        assert self.fired, "the Deferred has not fired"
        result = self.results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result


# -- the successful upgrade --------------------------------------------------------


def test_starttls_upgrade_replaces_what_cleartext_said() -> None:
    wire = TLSWire()
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"220 2.0.0 go ahead\r\n")
    # The handshake has started, with a verifying creator for the host.
    creator = wire.transport.creator
    assert isinstance(creator, ClientCreator)
    assert creator.server_name == "mx.example.test" and creator.verify
    assert wire.conn.secure is False
    assert wire.client() == b""  # nothing until the handshake completes
    wire.handshake_done()
    assert wire.client() == EHLO
    wire.server(EHLO_OVER_TLS)
    assert outcome.value() is wire.conn
    assert wire.conn.secure is True
    # Replaced, not merged: no STARTTLS, no AUTH LOGIN, SIZE from the new EHLO.
    assert wire.conn.extensions == {"SIZE": "2000", "AUTH": "PLAIN XOAUTH2", "8BITMIME": ""}
    assert wire.conn.auth_methods == ["PLAIN", "XOAUTH2"]
    assert wire.events == ["connect"]


def test_servername_is_what_the_creator_checks() -> None:
    wire = TLSWire(tls={"servername": "smtp.example.test"})
    wire.up_to_starttls()
    wire.server(b"220 go ahead\r\n")
    assert wire.transport.creator.server_name == "smtp.example.test"


def test_a_given_creator_is_used_as_is() -> None:
    from twisted.internet.ssl import optionsForClientTLS

    creator = optionsForClientTLS("mx.example.test")
    wire = TLSWire(tls=creator)
    wire.up_to_starttls()
    wire.server(b"220 go ahead\r\n")
    assert wire.transport.creator is creator


def test_ignore_tls_never_sends_starttls() -> None:
    wire = TLSWire(ignore_tls=True)
    outcome = Outcome(wire.conn.connect())
    wire.server(GREETING)
    assert wire.client() == EHLO
    wire.server(EHLO_WITH_STARTTLS)
    assert outcome.value() is wire.conn
    assert wire.client() == b""
    assert wire.transport.creator is None
    assert wire.conn.secure is False
    assert "STARTTLS" in wire.conn.extensions


def test_default_goes_on_in_cleartext_when_not_offered() -> None:
    wire = TLSWire()
    outcome = Outcome(wire.conn.connect())
    wire.server(GREETING)
    assert wire.client() == EHLO
    wire.server(EHLO_WITHOUT_STARTTLS)
    assert outcome.value() is wire.conn
    assert wire.client() == b""
    assert wire.conn.secure is False


# -- negative cases: each with its code and nothing sent after the failure ----------------


def test_require_tls_not_offered_is_etls_before_anything_else() -> None:
    wire = TLSWire(require_tls=True)
    outcome = Outcome(wire.conn.connect())
    wire.server(GREETING)
    assert wire.client() == EHLO
    wire.server(EHLO_WITHOUT_STARTTLS)
    error = outcome.error()
    assert error.code == "ETLS"
    assert "does not offer STARTTLS" in str(error)
    assert wire.client() == b""  # no MAIL, no AUTH, not even QUIT
    assert wire.transport.aborted
    assert wire.conn.secure is False
    assert wire.events == ["end"]


@pytest.mark.parametrize("policy", [{"require_tls": True}, {}])
def test_starttls_refused_is_etls(policy: dict[str, bool]) -> None:
    wire = TLSWire(**policy)
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"454 4.7.0 TLS not available due to temporary reason\r\n")
    error = outcome.error()
    assert error.code == "ETLS"
    assert error.response_code == 454 and error.command == "STARTTLS"
    assert error.enhanced_status == "4.7.0"
    assert wire.client() == b""
    assert wire.transport.creator is None
    assert wire.conn.secure is False


def test_starttls_refused_opportunistic_goes_on_in_cleartext() -> None:
    wire = TLSWire(opportunistic_tls=True)
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"454 4.7.0 TLS not available\r\n")
    assert outcome.value() is wire.conn
    assert wire.conn.secure is False
    assert len(wire.endpoint.connections) == 1  # same connection, no reconnect
    assert any("refused STARTTLS" in text and "454" in text for text in wire.log.warnings())
    # The connection is usable in cleartext.
    sent = Outcome(wire.conn.send(Envelope("a@example.test", ["b@example.test"]), b"hi\r\n"))
    assert wire.client().startswith(b"MAIL FROM:<a@example.test>")
    assert not sent.fired


def test_421_to_starttls_is_econnection() -> None:
    wire = TLSWire(require_tls=True)
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"421 4.3.2 shutting down\r\n")
    assert outcome.error().code == "ECONNECTION"
    assert wire.client() == b""


def test_injected_bytes_after_220_are_etls_and_never_read() -> None:
    wire = TLSWire()
    outcome = Outcome(wire.up_to_starttls())
    # A man in the middle appends a fake EHLO reply to the 220 in cleartext.
    wire.server(b"220 2.0.0 go ahead\r\n250-evil.example\r\n250 AUTH PLAIN\r\n")
    error = outcome.error()
    assert error.code == "ETLS"
    assert "injection" in str(error)
    assert wire.transport.creator is None  # TLS never started
    assert wire.client() == b""
    assert "PLAIN" not in wire.conn.extensions.get("AUTH", "")
    assert wire.conn.secure is False


def test_injected_partial_line_after_220_is_etls_too() -> None:
    wire = TLSWire()
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"220 go ahead\r\n250 AUTH")
    assert outcome.error().code == "ETLS"
    assert wire.client() == b""


@given(
    injected=st.binary(min_size=1, max_size=200),
    policy=st.sampled_from([{}, {"require_tls": True}, {"opportunistic_tls": True}]),
)
def test_any_bytes_after_220_are_etls_whatever_the_policy(injected: bytes, policy: dict[str, bool]) -> None:
    wire = TLSWire(**policy)
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"220 2.0.0 go ahead\r\n" + injected)
    error = outcome.error()
    assert error.code == "ETLS" and "injection" in str(error)
    assert wire.transport.creator is None
    assert wire.client() == b""
    assert len(wire.endpoint.connections) == 1  # an attack is never "retried in cleartext"


@pytest.mark.parametrize("policy", [{}, {"require_tls": True}])
def test_handshake_failure_is_etls(policy: dict[str, bool]) -> None:
    wire = TLSWire(**policy)
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"220 go ahead\r\n")
    wire.handshake_fails("sslv3 alert handshake failure")
    error = outcome.error()
    assert error.code == "ETLS"
    assert "refused the handshake" in str(error)
    assert wire.client() == b""
    assert len(wire.endpoint.connections) == 1
    assert wire.conn.secure is False
    assert wire.events == ["end"]


def test_server_closing_during_handshake_is_etls() -> None:
    from twisted.internet.error import ConnectionLost

    wire = TLSWire()
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"220 go ahead\r\n")
    wire.transport.disconnecting = True
    wire.protocol.connectionLost(Failure(ConnectionLost()))
    error = outcome.error()
    assert error.code == "ETLS"
    assert "handshake" in str(error)


def test_handshake_failure_opportunistic_reconnects_in_cleartext() -> None:
    wire = TLSWire(opportunistic_tls=True)
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"220 go ahead\r\n")
    first_transport = wire.transport
    wire.handshake_fails("tlsv1 alert protocol version")
    # A second connection, which never tries STARTTLS.
    assert len(wire.endpoint.connections) == 2
    assert first_transport.value() == b""  # nothing more on the failed one
    assert not outcome.fired
    wire.server(GREETING)
    assert wire.client() == EHLO
    wire.server(EHLO_WITH_STARTTLS)
    assert outcome.value() is wire.conn
    assert wire.client() == b""
    assert wire.transport.creator is None
    assert wire.conn.secure is False
    assert wire.conn.extensions["SIZE"] == "1000"
    assert wire.events == ["connect"]  # no "end" for the abandoned transport
    assert any("reconnecting in cleartext" in text for text in wire.log.warnings())


def test_opportunistic_reconnects_only_once() -> None:
    wire = TLSWire(opportunistic_tls=True)
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"220 go ahead\r\n")
    wire.handshake_fails()
    wire.server(GREETING)
    wire.client()
    wire.transport.disconnecting = True
    wire.protocol.connectionLost(Failure(SSL.Error([("SSL routines", "", "decryption failed")])))
    assert outcome.error().code == "ETLS"
    assert len(wire.endpoint.connections) == 2


def test_transport_without_starttls_is_etls() -> None:
    wire = TLSWire(transport_class=ClosingTransport)
    outcome = Outcome(wire.up_to_starttls())
    wire.server(b"220 go ahead\r\n")
    error = outcome.error()
    assert error.code == "ETLS" and "startTLS" in str(error)


def test_unloadable_ca_bundle_is_etls_before_starttls(tmp_path: Any) -> None:
    bundle = tmp_path / "empty.pem"
    bundle.write_text("no certificates here\n")
    wire = TLSWire(tls={"ca_certs": str(bundle)}, opportunistic_tls=True)
    outcome = Outcome(wire.conn.connect())
    wire.server(GREETING)
    wire.server(EHLO_WITH_STARTTLS)
    error = outcome.error()
    assert error.code == "ETLS" and "ca_certs" in str(error)
    # A configuration error is not a failed handshake: no STARTTLS, no fallback.
    assert wire.client() == EHLO
    assert len(wire.endpoint.connections) == 1


# -- implicit TLS -------------------------------------------------------------------


def test_implicit_tls_starts_before_the_greeting() -> None:
    wire = TLSWire(secure=True)
    outcome = Outcome(wire.conn.connect())
    assert isinstance(wire.transport.creator, ClientCreator)
    assert wire.transport.written_before_tls == b""
    assert wire.conn.secure is False
    wire.handshake_done()
    wire.server(GREETING)
    assert wire.client() == EHLO
    wire.server(EHLO_WITH_STARTTLS)
    assert outcome.value() is wire.conn
    assert wire.client() == b""  # no STARTTLS over implicit TLS
    assert wire.conn.secure is True


def test_implicit_tls_failure_is_etls() -> None:
    wire = TLSWire(secure=True)
    outcome = Outcome(wire.conn.connect())
    wire.handshake_fails("wrong version number")
    error = outcome.error()
    assert error.code == "ETLS"
    assert "did not answer with TLS" in str(error)
    assert wire.client() == b""


def test_implicit_tls_handshake_is_bounded_by_connection_timeout() -> None:
    wire = TLSWire(secure=True, connection_timeout=5.0, greeting_timeout=60.0)
    outcome = Outcome(wire.conn.connect())
    wire.reactor.advance(5.0)
    error = outcome.error()
    assert error.code == "ETIMEDOUT"
    assert "TLS handshake" in str(error)
    assert wire.transport.aborted
    assert not wire.reactor.getDelayedCalls()


def test_secure_is_false_once_closed() -> None:
    wire = TLSWire(secure=True)
    outcome = Outcome(wire.conn.connect())
    wire.handshake_done()
    wire.server(GREETING)
    wire.server(EHLO_WITHOUT_STARTTLS)
    assert outcome.value().secure is True
    wire.conn.close()
    assert wire.conn.secure is False
