"""
``twisted_smtpconn.compat`` against twisted.mail itself.

Each test runs the same application code twice, once with
``twisted.mail.smtp`` and once with ``twisted_smtpconn.compat`` (the one
import an application changes), against the same aiosmtpd server, and
compares what the caller sees: the result tuples, the ``deferred``'s value,
the exception classes.  The code is twisted.mail's own client examples
(``docs/mail/examples/sendmail_*.py`` in Twisted) with the host, port and
credentials pointed at the test server.  Delivered bytes are checked at the
server's recorder.

A test that cannot fail is no test: every comparison also asserts the
expected value itself, so that twisted.mail and the drop-in being wrong in
the same way is caught too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from email.mime.text import MIMEText
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_twisted

from realservers.aiosmtpd_peer import AiosmtpdServer
from realservers.ports import free_port
from tls_peers import Certs, guard, make_certs, server_ssl_context

USER, PASSWORD = "alice@example.org", "Alice-Pw-1"


def _implementations() -> dict[str, ModuleType]:
    from twisted.mail import smtp as twisted_mail

    from twisted_smtpconn import compat

    return {"twisted.mail": twisted_mail, "compat": compat}


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=USER if ok else None)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path)


@pytest.fixture
def submission(make_aiosmtpd: Callable[..., AiosmtpdServer], certs: Certs) -> AiosmtpdServer:
    """STARTTLS required before mail, AUTH only over TLS, a private CA."""
    return make_aiosmtpd(  # type: ignore[no-any-return]
        tls_context=server_ssl_context(certs.server),
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
    )


def _collect_aiosmtpd_leftovers(*servers: AiosmtpdServer) -> None:
    """
    aiosmtpd leaves the socket of a failed STARTTLS handshake to the garbage
    collector, which reports it as an unclosed transport whenever it runs.
    Stop the servers and collect now, inside the test that caused it (and
    whose filterwarnings marks expect it), not in whichever test runs next.
    """
    import gc

    for server in servers:
        server.stop()
    gc.collect()


#: The marks for a test that makes aiosmtpd fail a STARTTLS handshake.
_AIOSMTPD_TLS_FAILURE = (
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
)


async def _outcome(d: Any) -> tuple[str, Any]:
    """``("ok", result)`` or ``("error", exception)``."""
    try:
        return "ok", await guard(d)
    except Exception as error:  # noqa: BLE001 - the exception is the result
        return "error", error


# -- sendmail(): twisted.mail's docs/mail/examples ---------------------------------


@pytest_twisted.ensureDeferred
async def test_sendmail_smtp_example(aiosmtpd_server: AiosmtpdServer) -> None:
    """
    ``sendmail_smtp.py``: two recipients, cleartext, no AUTH.  Same result
    tuple from both; the same bytes delivered (an LF-only message, which
    both turn into CRLF).
    """
    from twisted.internet import reactor

    results = {}
    for label, smtp in _implementations().items():
        d = smtp.sendmail(
            aiosmtpd_server.host,
            "alice@example.com",
            ["bob@gmail.com", "charlie@gmail.com"],
            f"Subject: {label}\n\nThis is my super awesome email, sent with Twisted!\n".encode(),
            port=aiosmtpd_server.port,
        )
        results[label] = await guard(d)
        received = await aiosmtpd_server.recorder.when_match(
            lambda m, label=label: f"Subject: {label}".encode() in m.content, reactor
        )
        assert received.rcpt_tos == ("bob@gmail.com", "charlie@gmail.com")
        assert received.content == (
            f"Subject: {label}\r\n\r\nThis is my super awesome email, sent with Twisted!\r\n".encode()
        )
    expected = (2, [(b"bob@gmail.com", 250, b"2.1.5 OK"), (b"charlie@gmail.com", 250, b"2.1.5 OK")])
    assert results["twisted.mail"] == expected
    assert results["compat"] == expected


@pytest_twisted.ensureDeferred
async def test_sendmail_smtp_example_with_its_str_message(aiosmtpd_server: AiosmtpdServer) -> None:
    """
    The example as Twisted ships it passes the message as ``str``: twisted.mail
    on Python 3 refuses that (``bytes(msg)``); the drop-in sends it as UTF-8.
    """
    from twisted.internet import reactor

    smtp = _implementations()
    args = (aiosmtpd_server.host, "alice@example.com", ["bob@gmail.com"])
    text = "Subject: str\n\nThis is my super awesome email, sent with Twisted! \u2713\n"
    with pytest.raises(TypeError):
        smtp["twisted.mail"].sendmail(*args, text, port=aiosmtpd_server.port)
    result = await guard(smtp["compat"].sendmail(*args, text, port=aiosmtpd_server.port))
    assert result == (1, [(b"bob@gmail.com", 250, b"2.1.5 OK")])
    (received,) = await aiosmtpd_server.recorder.when_received(1, reactor)
    assert received.content == text.replace("\n", "\r\n").encode("utf-8")


@pytest_twisted.ensureDeferred
async def test_sendmail_message_example(
    submission: AiosmtpdServer, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    ``sendmail_message.py``: a MIMEText message, STARTTLS and AUTH both
    required.  ``sendmail`` verifies the certificate against ``smtphost``
    with the platform trust store in both implementations; SSL_CERT_FILE
    points that store at the test CA.
    """
    from twisted.internet import reactor

    monkeypatch.setenv("SSL_CERT_FILE", certs.ca_file)
    results = {}
    for label, smtp in _implementations().items():
        me = USER
        to = ["bob@gmail.com", "charlie@gmail.com"]
        message = MIMEText("This is my super awesome email, sent with Twisted!")
        message["Subject"] = f"Twisted is great! ({label})"
        message["From"] = me
        message["To"] = ", ".join(to)
        d = smtp.sendmail(
            "localhost",
            me,
            to,
            message,
            port=submission.port,
            username=me,
            password=PASSWORD,
            requireAuthentication=True,
            requireTransportSecurity=True,
        )
        results[label] = await guard(d)
        received = await submission.recorder.when_match(lambda m, label=label: label.encode() in m.content, reactor)
        assert received.tls and received.authenticated and received.auth_data == USER
        assert received.rcpt_tos == tuple(to)
        assert received.content == message.as_bytes().replace(b"\n", b"\r\n") + b"\r\n"
    expected = (2, [(b"bob@gmail.com", 250, b"2.1.5 OK"), (b"charlie@gmail.com", 250, b"2.1.5 OK")])
    assert results["twisted.mail"] == results["compat"] == expected


# -- the failures: same classes ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_some_recipients_refused(aiosmtpd_server: AiosmtpdServer) -> None:
    """A refused recipient is in the result, with its code and text, and the send succeeds."""
    outcomes = {}
    for label, smtp in _implementations().items():
        d = smtp.sendmail(
            aiosmtpd_server.host,
            "alice@example.com",
            [b"bob@example.net", b"reject-me@example.net"],
            b"Subject: partial\n\nx\n",
            port=aiosmtpd_server.port,
        )
        outcomes[label] = await _outcome(d)
    kind, result = outcomes["compat"]
    assert kind == "ok"
    assert result[0] == 1
    assert result[1][0] == (b"bob@example.net", 250, b"2.1.5 OK")
    address, code, text = result[1][1]
    assert (address, code) == (b"reject-me@example.net", 550) and text.startswith(b"5.1.1")
    assert outcomes["twisted.mail"] == outcomes["compat"]


@pytest_twisted.ensureDeferred
async def test_every_recipient_refused(aiosmtpd_server: AiosmtpdServer) -> None:
    from twisted.mail.smtp import SMTPDeliveryError

    from twisted_smtpconn import EnvelopeError

    errors = {}
    for label, smtp in _implementations().items():
        d = smtp.sendmail(
            aiosmtpd_server.host,
            "alice@example.com",
            ["reject1@example.net", "reject2@example.net"],
            b"Subject: none\n\nx\n",
            port=aiosmtpd_server.port,
        )
        kind, errors[label] = await _outcome(d)
        assert kind == "error"
        assert isinstance(errors[label], SMTPDeliveryError)
    ours, theirs = errors["compat"], errors["twisted.mail"]
    assert isinstance(ours, EnvelopeError) and ours.error_code == "EENVELOPE"
    assert len(ours.rejected_errors) == 2
    assert ours.code == theirs.code == 550
    assert [(a, c) for a, c, _ in ours.addresses] == [(b"reject1@example.net", 550), (b"reject2@example.net", 550)]
    assert ours.addresses == theirs.addresses
    assert aiosmtpd_server.recorder.messages == ()


@pytest_twisted.ensureDeferred
async def test_sender_refused(aiosmtpd_server: AiosmtpdServer) -> None:
    from twisted.mail.smtp import SMTPDeliveryError

    from twisted_smtpconn import EnvelopeError

    errors = {}
    for label, smtp in _implementations().items():
        d = smtp.sendmail(
            aiosmtpd_server.host, "bad-sender@example.com", ["bob@example.net"], b"x\n", port=aiosmtpd_server.port
        )
        kind, errors[label] = await _outcome(d)
        assert kind == "error" and isinstance(errors[label], SMTPDeliveryError)
    assert isinstance(errors["compat"], EnvelopeError)
    assert errors["compat"].code == errors["twisted.mail"].code == 553


@pytest_twisted.ensureDeferred
async def test_auth_refused(make_aiosmtpd: Callable[..., AiosmtpdServer]) -> None:
    """Wrong password over loopback (where both may send it in cleartext)."""
    from twisted.mail.smtp import AUTHDeclinedError

    from twisted_smtpconn import AuthenticationError

    server = make_aiosmtpd(authenticator=_authenticator, auth_require_tls=False)
    errors = {}
    for label, smtp in _implementations().items():
        d = smtp.sendmail(
            server.host,
            USER,
            ["bob@example.net"],
            b"x\n",
            port=server.port,
            username=USER,
            password="wrong",
            requireAuthentication=True,
        )
        kind, errors[label] = await _outcome(d)
        assert kind == "error" and isinstance(errors[label], AUTHDeclinedError), errors[label]
    ours = errors["compat"]
    assert isinstance(ours, AuthenticationError) and ours.error_code == "EAUTH"
    assert ours.code == errors["twisted.mail"].code == 535
    assert "wrong" not in str(ours) and b"wrong" not in bytes(ours)
    assert server.recorder.messages == ()


@pytest_twisted.ensureDeferred
async def test_tls_required_but_not_offered(aiosmtpd_server: AiosmtpdServer) -> None:
    from twisted.mail.smtp import TLSRequiredError

    from twisted_smtpconn import TLSError

    errors = {}
    for label, smtp in _implementations().items():
        d = smtp.sendmail(
            aiosmtpd_server.host,
            "alice@example.com",
            ["bob@example.net"],
            b"x\n",
            port=aiosmtpd_server.port,
            requireTransportSecurity=True,
        )
        kind, errors[label] = await _outcome(d)
        assert kind == "error" and isinstance(errors[label], TLSRequiredError), errors[label]
    assert isinstance(errors["compat"], TLSError)
    assert aiosmtpd_server.recorder.messages == ()


@pytest_twisted.ensureDeferred
async def test_connection_refused() -> None:
    from twisted.mail.smtp import SMTPConnectError

    from twisted_smtpconn import ConnectionFailedError

    port = free_port()  # nothing listens there
    errors = {}
    for label, smtp in _implementations().items():
        d = smtp.sendmail("127.0.0.1", "a@example.com", ["b@example.net"], b"x\n", port=port)
        kind, errors[label] = await _outcome(d)
        assert kind == "error" and isinstance(errors[label], SMTPConnectError), errors[label]
    ours = errors["compat"]
    assert isinstance(ours, ConnectionFailedError) and isinstance(ours, ConnectionError)
    assert ours.code == errors["twisted.mail"].code == -1
    assert b"Unable to connect to SMTP server" in ours.resp


# -- ESMTPSenderFactory -----------------------------------------------------------------


async def _factory_send(
    smtp: ModuleType, server: AiosmtpdServer, body: bytes, *, connect_ssl: Any = None, **options: Any
) -> tuple[str, Any]:
    """The factory as applications use it: their Deferred, their connectTCP."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    result: Deferred[Any] = Deferred()
    options.setdefault("requireAuthentication", False)
    factory = smtp.ESMTPSenderFactory(
        options.pop("username", None),
        options.pop("password", None),
        "alice@example.com",
        ["bob@example.net"],
        BytesIO(body),
        result,
        **options,
    )
    if connect_ssl is not None:
        reactor.connectSSL(server.host, server.port, factory, connect_ssl)
    else:
        reactor.connectTCP(server.host, server.port, factory)
    return await _outcome(result)


@pytest_twisted.ensureDeferred
async def test_factory_with_verified_tls_and_auth(submission: AiosmtpdServer, certs: Certs) -> None:
    """
    ``contextFactory=optionsForClientTLS(...)`` (a connection creator) is
    used as it is by both; the ``deferred`` fires with ``(numOk, addresses)``.
    """
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    trust = Certificate.loadPEM(certs.ca.cert_pem.bytes())
    outcomes = {}
    for label, smtp in _implementations().items():
        outcomes[label] = await _factory_send(
            smtp,
            submission,
            f"Subject: {label}\n\n.leading dot\n".encode(),
            username=USER.encode(),
            password=PASSWORD.encode(),
            contextFactory=optionsForClientTLS("localhost", trustRoot=trust),
            requireAuthentication=True,
            requireTransportSecurity=True,
        )
        received = await submission.recorder.when_match(lambda m, label=label: label.encode() in m.content, reactor)
        assert received.tls and received.authenticated
        assert received.content == f"Subject: {label}\r\n\r\n.leading dot\r\n".encode()
    assert outcomes["compat"] == ("ok", (1, [(b"bob@example.net", 250, b"2.1.5 OK")]))
    assert outcomes["twisted.mail"] == outcomes["compat"]


@pytest_twisted.ensureDeferred
async def test_factory_tls_dict_and_crlf_message(submission: AiosmtpdServer, certs: Certs) -> None:
    """
    The drop-in also takes this library's TLS settings as ``contextFactory``
    and sends a CRLF message whose first line starts with a dot intact, where
    twisted.mail's per-chunk replace doubles the CR and leaves that dot
    unstuffed (the server then drops it).
    """
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    body = b".first line\r\nSubject: crlf\r\n\r\n..two dots\r\n"
    smtp = _implementations()
    ours = await _factory_send(
        smtp["compat"], submission, body, username=USER, password=PASSWORD,
        contextFactory={"ca_certs": certs.ca_file}, hostname="localhost",
    )
    assert ours == ("ok", (1, [(b"bob@example.net", 250, b"2.1.5 OK")]))
    (received,) = await submission.recorder.when_received(1, reactor)
    assert received.content == body
    theirs = await _factory_send(
        smtp["twisted.mail"], submission, body, username=USER.encode(), password=PASSWORD.encode(),
        contextFactory=optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(certs.ca.cert_pem.bytes())),
    )
    assert theirs[0] == "ok"
    _, mangled = await submission.recorder.when_received(2, reactor)
    assert mangled.content != body and b"\r\r\n" in mangled.content


@_AIOSMTPD_TLS_FAILURE[0]
@_AIOSMTPD_TLS_FAILURE[1]
@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_refused_where_twisted_mail_accepted_it(
    make_aiosmtpd: Callable[..., AiosmtpdServer], certs: Certs
) -> None:
    """
    The security difference.  A server presenting a certificate from an
    unknown CA: twisted.mail with a plain ``ClientContextFactory`` sends the
    password and the message to it; the drop-in refuses before AUTH, and
    sends only when the caller turns verification off explicitly.
    """
    from twisted.internet import reactor
    from twisted.internet.ssl import ClientContextFactory
    from twisted.mail.smtp import SMTPClientError

    from twisted_smtpconn import TLSError

    impostor = make_aiosmtpd(
        tls_context=server_ssl_context(certs.untrusted), require_starttls=True,
        authenticator=_authenticator, auth_require_tls=True,
    )
    smtp = _implementations()
    # twisted.mail's factory wants bytes credentials (as Buildbot gives them).
    options = {
        "username": USER.encode(), "password": PASSWORD.encode(), "requireAuthentication": True, "hostname": "localhost"
    }
    theirs = await _factory_send(
        smtp["twisted.mail"], impostor, b"Subject: theirs\n\nx\n", contextFactory=ClientContextFactory(), **options
    )
    assert theirs == ("ok", (1, [(b"bob@example.net", 250, b"2.1.5 OK")]))
    (delivered,) = await impostor.recorder.when_received(1, reactor)
    assert delivered.authenticated  # the impostor got the password

    kind, error = await _factory_send(
        smtp["compat"], impostor, b"Subject: ours\n\nx\n", contextFactory=ClientContextFactory(), **options
    )
    assert kind == "error"
    assert isinstance(error, SMTPClientError) and isinstance(error, TLSError), error
    assert impostor.recorder.messages == (delivered,)

    kept = await _factory_send(
        smtp["compat"], impostor, b"Subject: opted out\n\nx\n", contextFactory={"reject_unauthorized": False}, **options
    )
    assert kept == ("ok", (1, [(b"bob@example.net", 250, b"2.1.5 OK")]))
    await impostor.recorder.when_received(2, reactor)
    _collect_aiosmtpd_leftovers(impostor)


@pytest_twisted.ensureDeferred
async def test_factory_over_connect_ssl(make_aiosmtpd: Callable[..., AiosmtpdServer], certs: Certs) -> None:
    """
    ``reactor.connectSSL`` (implicit TLS made by the application): the
    drop-in runs over the TLS transport it is given, without STARTTLS.
    """
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    # aiosmtpd counts only STARTTLS as TLS for auth_require_tls.
    server = make_aiosmtpd(
        ssl_context=server_ssl_context(certs.server), authenticator=_authenticator, auth_require_tls=False
    )
    creator = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(certs.ca.cert_pem.bytes()))
    outcome = await _factory_send(
        _implementations()["compat"], server, b"Subject: smtps\n\nx\n", connect_ssl=creator,
        username=USER, password=PASSWORD, requireAuthentication=True, requireTransportSecurity=True,
    )
    assert outcome == ("ok", (1, [(b"bob@example.net", 250, b"2.1.5 OK")]))
    (received,) = await server.recorder.when_received(1, reactor)
    assert received.tls and received.authenticated
    assert received.content == b"Subject: smtps\r\n\r\nx\r\n"


def test_error_classes_are_twisted_mails_and_ours() -> None:
    from twisted.mail import _except
    from twisted.mail import smtp as tm

    import twisted_smtpconn as lib
    from twisted_smtpconn import compat

    pairs = [
        (compat.SMTPConnectError, tm.SMTPConnectError, lib.ConnectionFailedError),
        (compat.SMTPTimeoutError, tm.SMTPTimeoutError, lib.SMTPTimeoutError),
        (compat.SMTPProtocolError, tm.SMTPProtocolError, lib.ProtocolError),
        (compat.SMTPTLSError, _except.SMTPTLSError, lib.TLSError),
        (compat.TLSRequiredError, tm.TLSRequiredError, lib.TLSError),
        (compat.AUTHRequiredError, tm.AUTHRequiredError, lib.AuthenticationError),
        (compat.AUTHDeclinedError, tm.AUTHDeclinedError, lib.AuthenticationError),
        (compat.RecipientsRefusedError, tm.SMTPDeliveryError, lib.EnvelopeError),
        (compat.SenderRefusedError, tm.SMTPDeliveryError, lib.EnvelopeError),
        (compat.MessageRefusedError, tm.SMTPDeliveryError, lib.MessageError),
        (compat.MessageReadError, tm.SMTPClientError, lib.StreamError),
    ]
    for ours, theirs, library in pairs:
        assert issubclass(ours, theirs) and issubclass(ours, library), ours
    error = compat.SMTPTimeoutError(lib.SMTPTimeoutError("no reply within 5 s"))
    assert isinstance(error, TimeoutError) and error.retry and error.isFatal
    assert error.code == -1 and error.error_code == "ETIMEDOUT" and error.is_transient


# -- retries, cancellation, endpoints ---------------------------------------------------


class _Busy:
    """Answers ``421`` and hangs up, as a server that is too busy for now."""

    @staticmethod
    def protocol() -> Any:
        from twisted.internet.protocol import Protocol

        class Busy(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"421 4.3.2 too busy, try again\r\n")
                self.transport.loseConnection()

        return Busy()


def _busy_once_then(target: AiosmtpdServer) -> tuple[Any, list[str]]:
    """A listener whose first connection is refused with 421; later ones are forwarded to ``target``."""
    from twisted.internet.protocol import ServerFactory
    from twisted.protocols.portforward import ProxyFactory

    seen: list[str] = []
    forward = ProxyFactory(target.host, target.port)

    class BusyOnce(ServerFactory):
        def buildProtocol(self, addr: Any) -> Any:
            seen.append("busy" if not seen else "forwarded")
            if seen[-1] == "busy":
                return _Busy.protocol()
            return forward.buildProtocol(addr)

    return BusyOnce(), seen


@pytest_twisted.ensureDeferred
async def test_a_busy_server_is_retried_as_twisted_mail_does(aiosmtpd_server: AiosmtpdServer) -> None:
    """
    A 421 greeting: twisted.mail reconnects (``retries``); so does the
    drop-in, rewinding the message file, and the second attempt delivers.
    """
    from twisted.internet import reactor

    results = {}
    for label, smtp in _implementations().items():
        factory, seen = _busy_once_then(aiosmtpd_server)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        try:
            d = smtp.sendmail("127.0.0.1", "a@example.com", ["b@example.net"], f"Subject: {label}\n\nx\n".encode(),
                              port=port.getHost().port)
            results[label] = await guard(d)
        finally:
            await port.stopListening()
        assert seen == ["busy", "forwarded"]
        received = await aiosmtpd_server.recorder.when_match(
            lambda m, label=label: label.encode() in m.content, reactor
        )
        assert received.content == f"Subject: {label}\r\n\r\nx\r\n".encode()
    assert results["twisted.mail"] == results["compat"] == (1, [(b"b@example.net", 250, b"2.1.5 OK")])


@pytest_twisted.ensureDeferred
async def test_every_recipient_refused_for_now_is_not_retried(aiosmtpd_server: AiosmtpdServer) -> None:
    """4xx at RCPT is a refusal of the transaction: reported at once, by both."""
    from twisted.mail.smtp import SMTPDeliveryError

    for label, smtp in _implementations().items():
        kind, error = await _outcome(
            smtp.sendmail(aiosmtpd_server.host, "a@example.com", ["tempfail@example.net"], b"x\n",
                          port=aiosmtpd_server.port)
        )
        assert kind == "error" and isinstance(error, SMTPDeliveryError) and error.code == 451, (label, error)


@pytest_twisted.ensureDeferred
async def test_cancel_stops_and_disconnects() -> None:
    """A server that never greets: cancelling sendmail's Deferred drops the connection, in both."""
    from twisted.internet import reactor
    from twisted.internet.defer import CancelledError, Deferred
    from twisted.internet.protocol import Protocol, ServerFactory

    events: list[Deferred[None]] = []

    class Silent(Protocol):
        def connectionMade(self) -> None:
            self.lost: Deferred[None] = Deferred()
            events.append(self.lost)
            connected.callback(None)

        def connectionLost(self, reason: Any = None) -> None:
            self.lost.callback(None)

    port = reactor.listenTCP(0, ServerFactory.forProtocol(Silent), interface="127.0.0.1")
    try:
        for label, smtp in _implementations().items():
            connected: Deferred[None] = Deferred()
            d = smtp.sendmail("127.0.0.1", "a@example.com", ["b@example.net"], b"x\n", port=port.getHost().port)
            await guard(connected)
            d.cancel()
            kind, error = await _outcome(d)
            assert kind == "error" and isinstance(error, CancelledError), (label, error)
            await guard(events[-1])  # the client hung up
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_factory_through_an_endpoint(aiosmtpd_server: AiosmtpdServer) -> None:
    """``endpoint.connect(factory)`` works as ``connectTCP`` does (without retries: no connector)."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from twisted_smtpconn import compat

    result: Deferred[Any] = Deferred()
    factory = compat.ESMTPSenderFactory(
        None, None, "a@example.com", "b@example.net", BytesIO(b"Subject: endpoint\n\nx\n"), result,
        requireAuthentication=False, requireTransportSecurity=False,
    )
    await guard(TCP4ClientEndpoint(reactor, aiosmtpd_server.host, aiosmtpd_server.port).connect(factory))
    assert await guard(result) == (1, [(b"b@example.net", 250, b"2.1.5 OK")])
    (received,) = await aiosmtpd_server.recorder.when_received(1, reactor)
    assert received.content == b"Subject: endpoint\r\n\r\nx\r\n"


# -- Postfix: PIPELINING ---------------------------------------------------------------


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_same_results_from_postfix_with_pipelining(postfix_server: Any) -> None:
    """
    Postfix offers PIPELINING: the drop-in sends MAIL, both RCPTs and DATA in
    one write, twisted.mail one at a time; the per-recipient results are
    still the same, in the order given, and the message arrives once each.
    """
    from twisted.internet import reactor

    results = {}
    for label, smtp in _implementations().items():
        marker = f"pipelining-{label}-{os.getpid()}"
        d = smtp.sendmail(
            postfix_server.host,
            "alice@example.com",
            [b"bob@example.net", b"reject-me@example.net", b"carol@example.net"],
            f"Subject: {marker}\n\nx\n".encode(),
            port=postfix_server.port,
        )
        results[label] = await guard(d)
        received = await guard(
            postfix_server.recorder.when_match(lambda m, marker=marker: marker.encode() in m.content, reactor,
                                               timeout=20.0)
        )
        assert sorted(received.rcpt_tos) == ["bob@example.net", "carol@example.net"]
    number, addresses = results["compat"]
    assert number == 2
    assert [(a, c) for a, c, _ in addresses] == [
        (b"bob@example.net", 250), (b"reject-me@example.net", 550), (b"carol@example.net", 250)
    ]
    assert addresses[0][2].startswith(b"2.1.5") and addresses[1][2].startswith(b"5.1.1")
    assert results["twisted.mail"] == results["compat"]


@pytest_twisted.ensureDeferred
async def test_timeout_of_a_silent_server() -> None:
    """``timeout=`` with a server that never greets: SMTPTimeoutError from both (no retries left)."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol, ServerFactory
    from twisted.mail.smtp import SMTPTimeoutError

    from twisted_smtpconn import SMTPTimeoutError as LibraryTimeout

    port = reactor.listenTCP(0, ServerFactory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        for label, smtp in _implementations().items():
            result: Deferred[Any] = Deferred()
            factory = smtp.ESMTPSenderFactory(
                None, None, "a@example.com", ["b@example.net"], BytesIO(b"x\n"), result,
                retries=0, timeout=0.5, requireAuthentication=False, requireTransportSecurity=False,
            )
            reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
            kind, error = await _outcome(result)
            assert kind == "error" and isinstance(error, SMTPTimeoutError), (label, error)
            if label == "compat":
                assert isinstance(error, LibraryTimeout) and isinstance(error, TimeoutError)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_auth_required_but_not_offered(aiosmtpd_server: AiosmtpdServer) -> None:
    from twisted.mail.smtp import AUTHRequiredError

    for label, smtp in _implementations().items():
        kind, error = await _outcome(
            smtp.sendmail(aiosmtpd_server.host, "a@example.com", ["b@example.net"], b"x\n", port=aiosmtpd_server.port,
                          username="a", password="pw", requireAuthentication=True)
        )
        assert kind == "error" and isinstance(error, AUTHRequiredError), (label, error)
    assert aiosmtpd_server.recorder.messages == ()


@pytest_twisted.ensureDeferred
async def test_duplicate_recipients_and_address_objects(aiosmtpd_server: AiosmtpdServer) -> None:
    """twisted.mail sends one RCPT per entry, duplicates too, and takes its ``Address`` objects."""
    from twisted.mail.smtp import Address

    results = {}
    for label, smtp in _implementations().items():
        results[label] = await guard(
            smtp.sendmail(aiosmtpd_server.host, Address(b"<alice@example.com>"), [b"b@example.net", "b@example.net"],
                          f"Subject: {label}\n\nx\n".encode(), port=aiosmtpd_server.port)
        )
    assert results["twisted.mail"] == results["compat"]
    assert results["compat"][1] == [(b"b@example.net", 250, b"2.1.5 OK")] * 2


@pytest_twisted.ensureDeferred
async def test_cancel_before_the_connection_is_made() -> None:
    from twisted.internet.defer import CancelledError

    port = free_port()
    for label, smtp in _implementations().items():
        d = smtp.sendmail("127.0.0.1", "a@example.com", ["b@example.net"], b"x\n", port=port)
        d.cancel()
        kind, error = await _outcome(d)
        assert kind == "error" and isinstance(error, CancelledError), (label, error)


@_AIOSMTPD_TLS_FAILURE[0]
@_AIOSMTPD_TLS_FAILURE[1]
@pytest_twisted.ensureDeferred
async def test_certificate_options_keep_their_ca_and_gain_a_name_check(
    make_aiosmtpd: Callable[..., AiosmtpdServer], certs: Certs
) -> None:
    """
    ``CertificateOptions(verify=True, caCerts=[...])``: twisted.mail checked
    the chain only, so a certificate of the right CA for another name was
    accepted.  The drop-in keeps the caller's CA (the right server still
    works) and checks the name too (the other one is refused).
    """
    from OpenSSL import crypto
    from twisted.internet import reactor
    from twisted.internet.ssl import CertificateOptions
    from twisted.mail.smtp import SMTPClientError

    from twisted_smtpconn import TLSError

    ca = crypto.load_certificate(crypto.FILETYPE_PEM, certs.ca.cert_pem.bytes())
    smtp = _implementations()
    options = {"hostname": "localhost", "requireTransportSecurity": True}

    right = make_aiosmtpd(tls_context=server_ssl_context(certs.server), require_starttls=True)
    ours = await _factory_send(smtp["compat"], right, b"Subject: kept\n\nx\n",
                               contextFactory=CertificateOptions(verify=True, caCerts=[ca]), **options)
    assert ours == ("ok", (1, [(b"bob@example.net", 250, b"2.1.5 OK")]))
    (received,) = await right.recorder.when_received(1, reactor)
    assert received.tls

    other_name = make_aiosmtpd(tls_context=server_ssl_context(certs.wrong_name), require_starttls=True)
    theirs = await _factory_send(smtp["twisted.mail"], other_name, b"Subject: theirs\n\nx\n",
                                 contextFactory=CertificateOptions(verify=True, caCerts=[ca]), **options)
    assert theirs == ("ok", (1, [(b"bob@example.net", 250, b"2.1.5 OK")]))
    kind, error = await _factory_send(smtp["compat"], other_name, b"Subject: ours\n\nx\n",
                                      contextFactory=CertificateOptions(verify=True, caCerts=[ca]), **options)
    assert kind == "error" and isinstance(error, SMTPClientError) and isinstance(error, TLSError), error
    assert [m.content for m in other_name.recorder.messages] == [b"Subject: theirs\r\n\r\nx\r\n"]
    _collect_aiosmtpd_leftovers(right, other_name)


@pytest_twisted.ensureDeferred
async def test_message_refused(make_aiosmtpd: Callable[..., AiosmtpdServer]) -> None:
    """A message over the server's limit, refused after DATA: SMTPDeliveryError with the RCPT results."""
    from twisted.mail.smtp import SMTPDeliveryError

    from twisted_smtpconn import MessageError

    server = make_aiosmtpd(data_size_limit=1000)
    big = b"Subject: big\n\n" + (b"x" * 70 + b"\n") * 40
    errors = {}
    for label, smtp in _implementations().items():
        kind, errors[label] = await _outcome(
            smtp.sendmail(server.host, "a@example.com", ["b@example.net"], big, port=server.port)
        )
        assert kind == "error" and isinstance(errors[label], SMTPDeliveryError), (label, errors[label])
    ours, theirs = errors["compat"], errors["twisted.mail"]
    assert isinstance(ours, MessageError) and ours.code == theirs.code == 552
    assert ours.addresses == theirs.addresses == [(b"b@example.net", 250, b"2.1.5 OK")]
    assert server.recorder.messages == ()


@pytest_twisted.ensureDeferred
async def test_connect_ssl_without_checks_is_named_in_the_log(
    make_aiosmtpd: Callable[..., AiosmtpdServer], certs: Certs
) -> None:
    """
    ``connectSSL`` with a ``ClientContextFactory`` (Buildbot's ``useSmtps``):
    the handshake is the application's, done before the drop-in runs, so it
    cannot be checked afterwards; the drop-in sends, as twisted.mail did, and
    says so in the log.  With a verifying context it says nothing.
    """
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, ClientContextFactory, optionsForClientTLS
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher

    server = make_aiosmtpd(ssl_context=server_ssl_context(certs.untrusted))
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        outcome = await _factory_send(
            _implementations()["compat"], server, b"Subject: smtps\n\nx\n", connect_ssl=ClientContextFactory(),
            requireTransportSecurity=True,
        )
        warnings = [formatEvent(e) for e in events if e.get("log_namespace") == "twisted_smtpconn.compat"]
        assert outcome == ("ok", (1, [(b"bob@example.net", 250, b"2.1.5 OK")]))
        assert len(warnings) == 1 and "does not check the server's certificate" in warnings[0]

        good = make_aiosmtpd(ssl_context=server_ssl_context(certs.server))
        events.clear()
        creator = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(certs.ca.cert_pem.bytes()))
        outcome = await _factory_send(
            _implementations()["compat"], good, b"Subject: smtps\n\nx\n", connect_ssl=creator,
            requireTransportSecurity=True,
        )
        assert outcome[0] == "ok"
        assert [e for e in events if e.get("log_namespace") == "twisted_smtpconn.compat"] == []
    finally:
        globalLogPublisher.removeObserver(events.append)
    await server.recorder.when_received(1, reactor)
