"""
``login()`` against a real SMTP server: aiosmtpd on 127.0.0.1, running in
its own thread.  PLAIN and LOGIN use aiosmtpd's own implementation with an
authenticator; CRAM-MD5, XOAUTH2, OAUTHBEARER, SCRAM (server side by
scramp) and NTLM (acceptor by pyspnego) are handler methods written here,
independently of the client code.  Every server requires authentication
before MAIL (``auth_required``), so a successful send proves that the
*server* considers the session authenticated.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import scramp
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword, auth_mechanism
from twisted.logger import LogEvent, Logger, formatEvent

from realservers.ports import LOOPBACK, free_port
from tls_peers import guard, make_certs, server_ssl_context
from wiretools import transcript_text
from twisted_smtpconn import Auth, AuthenticationError, Envelope, SMTPConnection, SMTPConnectionError

# aiosmtpd warns that its auth_required without auth_require_tls is unsafe:
# on loopback in these tests it is the point (cleartext AUTH to loopback).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

USERS = {"alice": "Secret-Alice-1", "bob@example.com": "Secret-Bob-2"}
BAD_TOKEN_JSON = json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail.example/"})


def _tls_object(server: Any) -> Any:
    transport = server.transport
    return None if transport is None else transport.get_extra_info("ssl_object")


@dataclass
class Attempt:
    """One AUTH exchange as the server saw it."""

    mechanism: str
    user: str | None
    success: bool
    secure: bool


@dataclass
class AuthHandler:
    """
    An aiosmtpd handler with the mechanisms aiosmtpd lacks, written from
    their RFCs (and scramp/pyspnego for the server side of SCRAM and NTLM).
    """

    tokens: dict[str, str] = field(default_factory=dict)  # access token -> user
    server_cert_pem: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    delivered: list[tuple[str, bool]] = field(default_factory=list)

    def _record(self, server: Any, mechanism: str, user: str | None, success: bool) -> None:
        self.attempts.append(Attempt(mechanism, user, success, _tls_object(server) is not None))

    async def _initial(self, server: Any, args: list[str]) -> Any:
        """The initial response, or the answer to an empty challenge."""
        if len(args) == 2:
            if args[1] == "=":
                return b""
            try:
                return base64.b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 Can't decode base64")
                return MISSING
        return await server.challenge_auth("")

    # -- CRAM-MD5 (RFC 2195) ------------------------------------------------------

    async def auth_CRAM__MD5(self, server: Any, args: list[str]) -> AuthResult:
        challenge = f"<{secrets.token_hex(8)}@aiosmtpd.test>".encode()
        response = await server.challenge_auth(challenge)
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        user, _, digest = response.decode().rpartition(" ")
        password = USERS.get(user)
        ok = password is not None and hmac.compare_digest(
            hmac.new(password.encode(), challenge, "md5").hexdigest(), digest
        )
        self._record(server, "CRAM-MD5", user, ok)
        return AuthResult(success=ok, handled=False, auth_data=user)

    # -- bearer tokens ----------------------------------------------------------------

    async def _bearer(self, server: Any, args: list[str], mechanism: str) -> AuthResult:
        data = await self._initial(server, args)
        if data is MISSING:
            return AuthResult(success=False, handled=True)
        fields: dict[str, str] = {}
        user = None
        if mechanism == "OAUTHBEARER":
            header, _, rest = data.partition(b"\x01")
            parts = header.decode().split(",")
            if parts[0] != "n" or len(parts) != 3:
                return AuthResult(success=False, handled=False, message="501 5.5.2 bad GS2 header")
            if parts[1].startswith("a="):
                user = parts[1][2:].replace("=2C", ",").replace("=3D", "=")
            data = rest
        for pair in data.split(b"\x01"):
            if pair:
                key, _, value = pair.decode().partition("=")
                fields[key] = value
        user = fields.get("user", user)
        token = fields.get("auth", "").removeprefix("Bearer ")
        ok = self.tokens.get(token) == user if user is not None else token in self.tokens
        self._record(server, mechanism, user, ok)
        if ok:
            return AuthResult(success=True, auth_data=user)
        # The error challenge, which the client must acknowledge.
        acknowledgement = await server.challenge_auth(BAD_TOKEN_JSON)
        if acknowledgement is MISSING:
            return AuthResult(success=False, handled=True)
        expected = b"" if mechanism == "XOAUTH2" else b"\x01"
        if acknowledgement != expected:
            return AuthResult(success=False, handled=False, message="501 5.5.2 bad acknowledgement of the error challenge")
        return AuthResult(success=False, handled=False, message="535 5.7.8 Username and Password not accepted")

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
        return await self._bearer(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server: Any, args: list[str]) -> AuthResult:
        return await self._bearer(server, args, "OAUTHBEARER")

    # -- SCRAM (scramp's server) ----------------------------------------------------------

    async def _scram(self, server: Any, args: list[str], name: str) -> AuthResult:
        base = name.removesuffix("-PLUS")
        binding = None
        if name.endswith("-PLUS"):
            if _tls_object(server) is None or self.server_cert_pem is None:
                return AuthResult(success=False, handled=False, message="538 5.7.11 -PLUS needs TLS")
            binding = ("tls-server-end-point", self.server_cert_pem)

        def lookup(user: str) -> Any:
            if user not in USERS:
                raise scramp.ScramException("unknown user", scramp.core.ServerError.UNKNOWN_USER)
            return scramp.ScramMechanism(base).make_auth_info(USERS[user])

        scram = scramp.ScramMechanism(name).make_server(lookup, channel_binding=binding)
        first = await self._initial(server, args)
        if first is MISSING:
            return AuthResult(success=False, handled=True)
        user = None
        try:
            scram.set_client_first(first.decode())
            user = first.decode().split("n=", 1)[1].split(",", 1)[0]
            final = await server.challenge_auth(scram.get_server_first())
            if final is MISSING:
                return AuthResult(success=False, handled=True)
            scram.set_client_final(final.decode())
        except scramp.ScramException:
            self._record(server, name, user, False)
            return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid")
        # Success data goes in a 334 that the client answers with an empty line.
        empty = await server.challenge_auth(scram.get_server_final())
        if empty is MISSING:
            self._record(server, name, user, False)
            return AuthResult(success=False, handled=True)
        self._record(server, name, user, empty == b"")
        return AuthResult(success=empty == b"", handled=False, auth_data=user)

    @auth_mechanism("SCRAM-SHA-1")
    async def auth_scram_sha_1(self, server: Any, args: list[str]) -> AuthResult:
        return await self._scram(server, args, "SCRAM-SHA-1")

    @auth_mechanism("SCRAM-SHA-256")
    async def auth_scram_sha_256(self, server: Any, args: list[str]) -> AuthResult:
        return await self._scram(server, args, "SCRAM-SHA-256")

    @auth_mechanism("SCRAM-SHA-256-PLUS")
    async def auth_scram_sha_256_plus(self, server: Any, args: list[str]) -> AuthResult:
        return await self._scram(server, args, "SCRAM-SHA-256-PLUS")

    # -- NTLM (pyspnego's acceptor) --------------------------------------------------------------

    async def auth_NTLM(self, server: Any, args: list[str]) -> AuthResult:
        import spnego

        acceptor = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
        negotiate = await self._initial(server, args)
        if negotiate is MISSING:
            return AuthResult(success=False, handled=True)
        authenticate = await server.challenge_auth(acceptor.step(negotiate))
        if authenticate is MISSING:
            return AuthResult(success=False, handled=True)
        try:
            acceptor.step(authenticate)
        except spnego.exceptions.SpnegoError:
            self._record(server, "NTLM", None, False)
            return AuthResult(success=False, handled=False, message="535 5.7.8 NTLM authentication failed")
        self._record(server, "NTLM", acceptor.client_principal, True)
        return AuthResult(success=True, auth_data=acceptor.client_principal)

    # -- delivery -------------------------------------------------------------------------------

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.delivered.append((envelope.mail_from, bool(session.authenticated)))
        return "250 2.0.0 queued"


def password_authenticator(handler: AuthHandler) -> Callable[..., AuthResult]:
    """aiosmtpd's authenticator for its own PLAIN and LOGIN."""

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and USERS.get(data.login.decode()) == data.password.decode()
        user = data.login.decode() if isinstance(data, LoginPassword) else None
        handler._record(server, mechanism, user, ok)
        return AuthResult(success=ok, handled=False, auth_data=data)

    return authenticate


@dataclass
class Server:
    controller: Controller
    handler: AuthHandler
    port: int


@pytest.fixture
def make_auth_server() -> Iterator[Callable[..., Server]]:
    """
    Start aiosmtpd servers with an :class:`AuthHandler` (the shared
    ``make_aiosmtpd`` fixture has its own handler, and aiosmtpd finds
    custom mechanisms on the handler); keyword arguments go to aiosmtpd's
    SMTP (``authenticator``, ``auth_require_tls``, ``tls_context``, ...).
    Stopped after the test.
    """
    started: list[Controller] = []

    def make(handler: AuthHandler | None = None, **kwargs: Any) -> Server:
        handler = handler or AuthHandler()
        kwargs.setdefault("authenticator", password_authenticator(handler))
        kwargs.setdefault("auth_require_tls", False)
        kwargs.setdefault("auth_required", True)
        for _ in range(5):  # a free port may be taken before we bind it
            port = free_port()
            controller = Controller(handler, hostname=LOOPBACK, port=port, server_hostname="mx.test", **kwargs)
            try:
                controller.start()
            except OSError:
                controller.stop(no_assert=True)
                continue
            started.append(controller)
            return Server(controller, handler, port)
        raise RuntimeError("could not start aiosmtpd on a free port")

    yield make
    for controller in started:
        controller.stop()


async def _connect(server: Server, **options: Any) -> SMTPConnection:
    options.setdefault("ignore_tls", "tls" not in options and not options.get("require_tls"))
    conn = SMTPConnection("127.0.0.1", server.port, name="client.test", **options)
    await guard(conn.connect())
    return conn


async def _send_and_quit(conn: SMTPConnection) -> None:
    info = await guard(conn.send(Envelope("alice@example.com", ["rcpt@example.com"]), b"Subject: hi\r\n\r\nhello\r\n"))
    assert info.accepted == ["rcpt@example.com"]
    await guard(conn.quit())


# -- password mechanisms --------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"])
@pytest_twisted.ensureDeferred
async def test_password_mechanism(make_auth_server: Callable[..., Server], mechanism: str) -> None:
    server = make_auth_server()
    conn = await _connect(server)
    assert mechanism in conn.auth_methods
    await guard(conn.login(Auth(user="alice", password=USERS["alice"], method=mechanism)))
    assert conn.authenticated
    await _send_and_quit(conn)
    assert [(a.mechanism, a.user, a.success) for a in server.handler.attempts] == [(mechanism, "alice", True)]
    assert server.handler.delivered == [("alice@example.com", True)]


@pytest_twisted.ensureDeferred
async def test_strongest_offered_mechanism_is_chosen(make_auth_server: Callable[..., Server]) -> None:
    server = make_auth_server()
    conn = await _connect(server)
    await guard(conn.login({"user": "bob@example.com", "pass": USERS["bob@example.com"]}))
    await _send_and_quit(conn)
    # aiosmtpd offers PLAIN LOGIN CRAM-MD5 SCRAM-SHA-1 SCRAM-SHA-256 (-PLUS only usable on TLS).
    assert [a.mechanism for a in server.handler.attempts] == ["SCRAM-SHA-256"]


@pytest_twisted.ensureDeferred
async def test_auth_method_option_is_obeyed(make_auth_server: Callable[..., Server]) -> None:
    server = make_auth_server()
    conn = await _connect(server, auth_method="login")
    await guard(conn.login(Auth(user="alice", password=USERS["alice"])))
    await guard(conn.quit())
    assert [a.mechanism for a in server.handler.attempts] == ["LOGIN"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"])
@pytest_twisted.ensureDeferred
async def test_wrong_password(make_auth_server: Callable[..., Server], mechanism: str) -> None:
    server = make_auth_server()
    conn = await _connect(server)
    with pytest.raises(AuthenticationError) as caught:
        await guard(conn.login(Auth(user="alice", password="not-the-password", method=mechanism)))
    error = caught.value
    assert error.code == "EAUTH"
    assert error.response_code == 535 and error.enhanced_status == "5.7.8"
    assert error.response is not None and error.response.startswith("535 5.7.8")
    assert "not-the-password" not in str(error)
    assert not conn.authenticated
    # The connection survives a refusal: the right password works on it.
    await guard(conn.login(Auth(user="alice", password=USERS["alice"], method=mechanism)))
    await _send_and_quit(conn)
    assert [a.success for a in server.handler.attempts] == [False, True]


@pytest_twisted.ensureDeferred
async def test_requested_mechanism_the_server_lacks(make_auth_server: Callable[..., Server]) -> None:
    server = make_auth_server(auth_exclude_mechanism=["LOGIN"])
    conn = await _connect(server)
    assert "LOGIN" not in conn.auth_methods
    with pytest.raises(AuthenticationError) as caught:
        await guard(conn.login(Auth(user="alice", password=USERS["alice"], method="LOGIN")))
    assert " ".join(conn.auth_methods) in str(caught.value)
    assert server.handler.attempts == []
    await guard(conn.quit())


@pytest_twisted.ensureDeferred
async def test_cleartext_refused_through_a_relaying_endpoint(make_auth_server: Callable[..., Server]) -> None:
    """The peer is loopback, but the endpoint may relay anywhere: host decides."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    server = make_auth_server()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
    conn = SMTPConnection("mail.example.com", 25, endpoint=endpoint, ignore_tls=True, name="client.test")
    await guard(conn.connect())
    with pytest.raises(AuthenticationError, match="cleartext"):
        await guard(conn.login(Auth(user="alice", password=USERS["alice"])))
    assert server.handler.attempts == []
    await guard(conn.quit())

    allowed = SMTPConnection(
        "mail.example.com", 25, endpoint=endpoint, ignore_tls=True, name="client.test", allow_insecure_auth=True
    )
    await guard(allowed.connect())
    await guard(allowed.login(Auth(user="alice", password=USERS["alice"], method="PLAIN")))
    await _send_and_quit(allowed)


# -- tokens ------------------------------------------------------------------------------------------


class Provider:
    """An application's token provider (the library's own is tested in test_oauth2)."""

    def __init__(self, user: str, *tokens: str) -> None:
        self.user = user
        self.tokens = list(tokens)
        self.calls: list[bool] = []

    def get_token(self, renew: bool) -> str:
        self.calls.append(renew)
        return self.tokens.pop(0)


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
@pytest_twisted.ensureDeferred
async def test_token_mechanisms(make_auth_server: Callable[..., Server], mechanism: str) -> None:
    server = make_auth_server(AuthHandler(tokens={"ya29.good": "bob@example.com"}))
    conn = await _connect(server)
    await guard(conn.login(Auth(user="bob@example.com", xoauth2="ya29.good", password="unused", method=mechanism)))
    await _send_and_quit(conn)
    assert [(a.mechanism, a.user, a.success) for a in server.handler.attempts] == [
        (mechanism, "bob@example.com", True)
    ]


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
@pytest_twisted.ensureDeferred
async def test_refused_token_is_renewed_once(make_auth_server: Callable[..., Server], mechanism: str) -> None:
    server = make_auth_server(AuthHandler(tokens={"ya29.fresh": "bob@example.com"}))
    provider = Provider("bob@example.com", "ya29.expired", "ya29.fresh", "ya29.unused")
    conn = await _connect(server, auth_method=mechanism)
    await guard(conn.login(Auth(xoauth2=provider)))
    await _send_and_quit(conn)
    assert provider.calls == [False, True]
    assert [a.success for a in server.handler.attempts] == [False, True]


@pytest_twisted.ensureDeferred
async def test_renewed_token_refused_too(make_auth_server: Callable[..., Server]) -> None:
    server = make_auth_server(AuthHandler(tokens={}))
    provider = Provider("bob@example.com", "ya29.bad-1", "ya29.bad-2", "ya29.unused")
    conn = await _connect(server)
    with pytest.raises(AuthenticationError) as caught:
        await guard(conn.login(Auth(xoauth2=provider)))
    assert caught.value.response_code == 535
    assert "status 401" in str(caught.value)
    assert provider.calls == [False, True]
    assert [a.success for a in server.handler.attempts] == [False, False]
    await guard(conn.quit())


@pytest_twisted.ensureDeferred
async def test_provider_failure(make_auth_server: Callable[..., Server]) -> None:
    server = make_auth_server(AuthHandler(tokens={"ya29.good": "bob@example.com"}))

    class Broken:
        user = "bob@example.com"

        def get_token(self, renew: bool) -> str:
            raise OSError("token store unavailable")

    conn = await _connect(server)
    with pytest.raises(AuthenticationError, match="token store unavailable"):
        await guard(conn.login(Auth(xoauth2=Broken())))
    assert server.handler.attempts == []
    await guard(conn.quit())


# -- NTLM ------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ntlm(make_auth_server: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    users = tmp_path / "ntlm-users"
    users.write_text("EXAMPLE:alice:Secret-Alice-1\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))
    server = make_auth_server()
    conn = await _connect(server)
    await guard(conn.login({"user": "alice", "pass": "Secret-Alice-1", "domain": "EXAMPLE", "workstation": "W1"}))
    await _send_and_quit(conn)
    assert [(a.mechanism, a.user, a.success) for a in server.handler.attempts] == [("NTLM", "EXAMPLE\\alice", True)]


# -- over TLS: SCRAM-SHA-256-PLUS --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_scram_plus_over_starttls(make_auth_server: Callable[..., Server], tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    handler = AuthHandler(server_cert_pem=certs.server.cert_chain_pems[0].bytes().decode())
    server = make_auth_server(handler, tls_context=server_ssl_context(certs.server), auth_require_tls=True)
    conn = SMTPConnection("localhost", server.port, require_tls=True, tls={"ca_certs": certs.ca_file}, name="client.test")
    await guard(conn.connect())
    assert conn.secure
    assert "SCRAM-SHA-256-PLUS" in conn.auth_methods
    await guard(conn.login(Auth(user="alice", password=USERS["alice"])))
    await _send_and_quit(conn)
    assert [(a.mechanism, a.success, a.secure) for a in handler.attempts] == [("SCRAM-SHA-256-PLUS", True, True)]


@pytest_twisted.ensureDeferred
async def test_scram_plus_binding_mismatch_is_refused(make_auth_server: Callable[..., Server], tmp_path: Path) -> None:
    """A server whose binding differs from the certificate we saw (a relay) fails."""
    certs = make_certs(tmp_path)
    handler = AuthHandler(server_cert_pem=certs.wrong_name.cert_chain_pems[0].bytes().decode())
    server = make_auth_server(handler, tls_context=server_ssl_context(certs.server), auth_require_tls=True)
    conn = SMTPConnection("localhost", server.port, require_tls=True, tls={"ca_certs": certs.ca_file}, name="client.test")
    await guard(conn.connect())
    with pytest.raises(AuthenticationError) as caught:
        await guard(conn.login(Auth(user="alice", password=USERS["alice"])))
    assert caught.value.response_code == 535
    assert [(a.mechanism, a.success) for a in handler.attempts] == [("SCRAM-SHA-256-PLUS", False)]
    await guard(conn.quit())


# -- logs ----------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_secret_in_logs_against_a_real_server(make_auth_server: Callable[..., Server]) -> None:
    password, old_token, new_token = USERS["alice"], "ya29.OLD-secret", "ya29.NEW-secret"
    server = make_auth_server(AuthHandler(tokens={new_token: "alice"}))
    events: list[LogEvent] = []
    errors: list[SMTPConnectionError] = []
    logger = Logger(observer=events.append)
    for method in ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"):
        conn = await _connect(server, logger=logger, debug=True)
        try:
            await guard(conn.login(Auth(user="alice", password=password + "x", method=method)))
        except SMTPConnectionError as error:
            errors.append(error)
        await guard(conn.login(Auth(user="alice", password=password, method=method)))
        await guard(conn.quit())
    conn = await _connect(server, logger=logger, debug=True)
    await guard(conn.login(Auth(xoauth2=Provider("alice", old_token, new_token))))
    await _send_and_quit(conn)

    assert len(errors) == 4
    texts = [transcript_text(formatEvent(event)) for event in events] + [repr(event) for event in events]
    texts += [str(error) for error in errors] + [repr(error) for error in errors]
    assert "C: AUTH PLAIN ****" in texts and "C: AUTH XOAUTH2 ****" in texts
    forms = []
    for secret in (password, password + "x", old_token, new_token):
        forms += [secret, base64.b64encode(secret.encode()).decode()]
    forms.append(base64.b64encode(f"\0alice\0{password}".encode()).decode())
    for secret in forms:
        assert not [text for text in texts if secret in text], secret
