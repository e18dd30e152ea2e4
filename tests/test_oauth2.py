"""
:class:`OAuth2TokenProvider` against a real token endpoint: a twisted.web
site on 127.0.0.1 that speaks the refresh-token grant of RFC 6749, and, at
the end, against aiosmtpd's XOAUTH2 handler through ``login()``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from test_auth_aiosmtpd import AuthHandler, Server, make_auth_server  # noqa: F401  (fixture)
from tls_peers import guard
from twisted_smtpconn import Auth, AuthenticationError, SMTPConnection
from twisted_smtpconn._oauth2 import OAuth2Token, OAuth2TokenProvider

CLIENT_SECRET = "client-SECRET-value"
REFRESH_TOKEN = "1//refresh-SECRET-token"

#: A response the endpoint holds back until the test releases it.
HOLD = object()
#: A response whose headers and first bytes are sent, and then nothing.
STALL = object()


class TokenEndpoint(Resource):
    """An OAuth 2.0 token endpoint: scripted responses, recorded requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.responses: list[Any] = []
        self.held: list[Request] = []
        self.issued = 0

    def next_token(self, **extra: Any) -> tuple[int, bytes]:
        self.issued += 1
        body = {"access_token": f"ya29.token-{self.issued}", "expires_in": 3600, "token_type": "Bearer", **extra}
        return 200, json.dumps(body).encode()

    def render_POST(self, request: Request) -> Any:
        args = {key.decode(): [v.decode() for v in values] for key, values in (request.args or {}).items()}
        self.requests.append(
            {
                "args": args,
                "content_type": (request.getHeader(b"content-type") or b"").decode(),
                "accept": (request.getHeader(b"accept") or b"").decode(),
            }
        )
        response = self.responses.pop(0) if self.responses else self.next_token()
        if response is HOLD:
            self.held.append(request)
            return NOT_DONE_YET
        if response is STALL:
            request.setHeader(b"content-type", b"application/json")
            request.write(b'{"access_token": "ya29.')
            self.held.append(request)
            return NOT_DONE_YET
        status, body = response
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return body

    def release(self) -> None:
        """Answer every held request with a new token."""
        held, self.held = self.held, []
        for request in held:
            status, body = self.next_token()
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            request.write(body)
            request.finish()


@pytest_twisted.async_yield_fixture
async def endpoint() -> AsyncIterator[tuple[TokenEndpoint, str]]:
    from twisted.internet import reactor

    resource = TokenEndpoint()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
    yield resource, f"http://127.0.0.1:{port.getHost().port}/token"
    await port.stopListening()


def provider(url: str, **kwargs: Any) -> OAuth2TokenProvider:
    return OAuth2TokenProvider("alice@example.com", "client-id-1", CLIENT_SECRET, REFRESH_TOKEN, url, **kwargs)


# -- refreshing and caching --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_refresh_request_and_observer(endpoint: tuple[TokenEndpoint, str]) -> None:
    server, url = endpoint
    tokens = provider(url)
    seen: list[OAuth2Token] = []
    tokens.on("token", seen.append)
    assert await guard(tokens.get_token(False)) == "ya29.token-1"
    assert server.requests == [
        {
            "args": {
                "grant_type": ["refresh_token"],
                "refresh_token": [REFRESH_TOKEN],
                "client_id": ["client-id-1"],
                "client_secret": [CLIENT_SECRET],
            },
            "content_type": "application/x-www-form-urlencoded",
            "accept": "application/json",
        }
    ]
    assert [(t.user, t.access_token, t.refresh_token) for t in seen] == [
        ("alice@example.com", "ya29.token-1", REFRESH_TOKEN)
    ]
    assert seen[0].expires is not None and tokens.expires == seen[0].expires
    assert "ya29" not in repr(seen[0]) and CLIENT_SECRET not in repr(tokens)


@pytest_twisted.ensureDeferred
async def test_cached_until_renew_is_asked(endpoint: tuple[TokenEndpoint, str]) -> None:
    server, url = endpoint
    tokens = provider(url)
    assert await guard(tokens.get_token(False)) == "ya29.token-1"
    assert await guard(tokens.get_token(False)) == "ya29.token-1"
    assert len(server.requests) == 1
    assert await guard(tokens.get_token(True)) == "ya29.token-2"
    assert len(server.requests) == 2


@pytest_twisted.ensureDeferred
async def test_expiry_with_margin(endpoint: tuple[TokenEndpoint, str]) -> None:
    from twisted.internet import reactor

    server, url = endpoint
    clock = Clock()
    server.responses.append((200, json.dumps({"access_token": "short", "expires_in": 100}).encode()))
    tokens = provider(url, reactor=reactor, clock=clock, expiry_margin=30)
    assert await guard(tokens.get_token(False)) == "short"
    assert tokens.expires == 100.0
    clock.advance(69)
    assert await guard(tokens.get_token(False)) == "short"
    clock.advance(2)  # 71 > 100 - 30
    assert await guard(tokens.get_token(False)) == "ya29.token-1"
    assert len(server.requests) == 2


@pytest_twisted.ensureDeferred
async def test_initial_access_token_is_used_until_it_expires(endpoint: tuple[TokenEndpoint, str]) -> None:
    from twisted.internet import reactor

    server, url = endpoint
    clock = Clock()
    clock.advance(1000)
    tokens = provider(url, access_token="given", expires=2000, reactor=reactor, clock=clock)
    assert await guard(tokens.get_token(False)) == "given"
    assert server.requests == []
    clock.advance(1000)
    assert await guard(tokens.get_token(False)) == "ya29.token-1"


@pytest_twisted.ensureDeferred
async def test_rotated_refresh_token_is_used_and_reported(endpoint: tuple[TokenEndpoint, str]) -> None:
    server, url = endpoint
    server.responses.append(server.next_token(refresh_token="1//rotated"))
    tokens = provider(url)
    seen: list[OAuth2Token] = []
    tokens.on("token", seen.append)
    await guard(tokens.get_token(False))
    await guard(tokens.get_token(True))
    assert [r["args"]["refresh_token"] for r in server.requests] == [[REFRESH_TOKEN], ["1//rotated"]]
    assert [t.refresh_token for t in seen] == ["1//rotated", "1//rotated"]


@pytest_twisted.ensureDeferred
async def test_concurrent_callers_share_one_refresh(endpoint: tuple[TokenEndpoint, str]) -> None:
    server, url = endpoint
    server.responses.append(HOLD)
    tokens = provider(url)
    first, second, renewing = tokens.get_token(False), tokens.get_token(False), tokens.get_token(True)
    for _ in range(100):  # bounded: wait until the request reached the endpoint
        if server.held:
            break
        await _tick()
    assert len(server.held) == 1
    server.release()
    assert [await guard(d) for d in (first, second, renewing)] == ["ya29.token-1"] * 3
    assert len(server.requests) == 1


async def _tick() -> None:
    from twisted.internet import reactor

    d: Deferred[None] = Deferred()
    reactor.callLater(0.01, d.callback, None)  # type: ignore[attr-defined]
    await d


# -- failures ------------------------------------------------------------------------------------------


def _no_secret(error: BaseException) -> None:
    for secret in (CLIENT_SECRET, REFRESH_TOKEN):
        assert secret not in str(error) and secret not in repr(error)


@pytest_twisted.ensureDeferred
async def test_endpoint_refusal(endpoint: tuple[TokenEndpoint, str]) -> None:
    server, url = endpoint
    body = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
    server.responses.append((400, json.dumps(body).encode()))
    with pytest.raises(AuthenticationError) as caught:
        await guard(provider(url).get_token(False))
    assert caught.value.code == "EAUTH"
    assert "HTTP 400: invalid_grant (Token has been expired or revoked.)" in str(caught.value)
    _no_secret(caught.value)


@pytest.mark.parametrize(
    "status, body, text",
    [
        (200, b"<html>not json</html>", "not a JSON object"),
        (200, b'{"expires_in": 3600}', "no usable access_token"),
        (200, b'{"access_token": "x", "token_type": "mac"}', "not a Bearer token"),
        (500, b"oops", "HTTP 500"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_unusable_responses(endpoint: tuple[TokenEndpoint, str], status: int, body: bytes, text: str) -> None:
    server, url = endpoint
    server.responses.append((status, body))
    tokens = provider(url)
    with pytest.raises(AuthenticationError, match=text) as caught:
        await guard(tokens.get_token(False))
    _no_secret(caught.value)
    # A failed refresh does not poison the provider: the next call tries again.
    assert await guard(tokens.get_token(False)) == "ya29.token-1"


@pytest_twisted.ensureDeferred
async def test_unreachable_endpoint() -> None:
    from tls_peers import free_port

    with pytest.raises(AuthenticationError, match="cannot refresh the access token") as caught:
        await guard(provider(f"http://127.0.0.1:{free_port()}/token").get_token(False))
    _no_secret(caught.value)


@pytest_twisted.ensureDeferred
async def test_endpoint_that_never_answers(endpoint: tuple[TokenEndpoint, str]) -> None:
    from twisted.internet import reactor

    server, url = endpoint
    server.responses.append(HOLD)
    clock = Clock()
    tokens = provider(url, reactor=reactor, clock=clock, timeout=10)
    d = tokens.get_token(False)
    for _ in range(100):
        if server.held:
            break
        await _tick()
    clock.advance(11)
    with pytest.raises(AuthenticationError, match="did not answer within 10 s"):
        await guard(d)
    server.release()  # the server side of the abandoned request


@pytest_twisted.ensureDeferred
async def test_body_that_stalls(endpoint: tuple[TokenEndpoint, str]) -> None:
    from twisted.internet import reactor

    server, url = endpoint
    server.responses.append(STALL)
    clock = Clock()
    tokens = provider(url, reactor=reactor, clock=clock, timeout=10)
    d = tokens.get_token(False)
    for _ in range(100):
        if server.held:
            break
        await _tick()
    for _ in range(5):  # let the headers reach the client
        await _tick()
    clock.advance(11)
    with pytest.raises(AuthenticationError, match="did not answer within 10 s"):
        await guard(d)
    server.held.clear()


@pytest_twisted.ensureDeferred
async def test_oversized_response_is_refused(endpoint: tuple[TokenEndpoint, str]) -> None:
    server, url = endpoint
    server.responses.append((200, json.dumps({"access_token": "x" * 300_000}).encode()))
    with pytest.raises(AuthenticationError, match="larger than"):
        await guard(provider(url).get_token(False))


@pytest_twisted.ensureDeferred
async def test_failing_observer_is_logged_and_ignored(endpoint: tuple[TokenEndpoint, str]) -> None:
    _, url = endpoint
    events: list[LogEvent] = []
    tokens = provider(url)
    seen: list[str] = []

    def broken(token: OAuth2Token) -> None:
        raise RuntimeError("database down")

    tokens.on("token", broken)
    tokens.on("token", lambda token: seen.append(token.access_token))
    globalLogPublisher.addObserver(events.append)
    try:
        assert await guard(tokens.get_token(False)) == "ya29.token-1"
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert seen == ["ya29.token-1"]
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)


def test_construction_checks() -> None:
    with pytest.raises(ValueError, match="https"):
        provider("http://oauth2.example.com/token", agent=object(), clock=Clock())
    with pytest.raises(ValueError):
        provider("ftp://127.0.0.1/token", agent=object(), clock=Clock())
    with pytest.raises(TypeError):
        OAuth2TokenProvider("u", "c", "", "r", "https://x.example/token", agent=object(), clock=Clock())
    with pytest.raises(ValueError, match="unknown event"):
        provider("https://oauth2.example.com/token", agent=object(), clock=Clock()).on("refresh", print)
    provider("https://oauth2.example.com/token", agent=object(), clock=Clock())


# -- through login() ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest_twisted.ensureDeferred
async def test_login_renews_a_stale_token_through_the_endpoint(
    endpoint: tuple[TokenEndpoint, str], make_auth_server: Callable[..., Server]
) -> None:
    server, url = endpoint
    smtp = make_auth_server(AuthHandler(tokens={"ya29.token-1": "alice@example.com"}))
    tokens = provider(url, access_token="ya29.stale")
    stored: list[str] = []
    tokens.on("token", lambda token: stored.append(token.access_token))
    conn = SMTPConnection("127.0.0.1", smtp.port, ignore_tls=True, name="client.test")
    await guard(conn.connect())
    await guard(conn.login(Auth(xoauth2=tokens)))
    await guard(conn.quit())
    assert [(a.mechanism, a.success) for a in smtp.handler.attempts] == [("XOAUTH2", False), ("XOAUTH2", True)]
    assert len(server.requests) == 1
    assert stored == ["ya29.token-1"]


# -- the documentation's example ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest_twisted.ensureDeferred
async def test_docs_example_login_oauth2(
    endpoint: tuple[TokenEndpoint, str],
    make_auth_server: Callable[..., Server],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/examples/login_oauth2.py, run as written, against local servers."""
    import importlib.util
    from pathlib import Path

    import twisted_smtpconn
    from tls_peers import make_certs, server_ssl_context
    from twisted.internet import reactor

    if not hasattr(twisted_smtpconn, "OAuth2TokenProvider"):
        pytest.skip("OAuth2TokenProvider is not exported from twisted_smtpconn yet")
    path = Path(__file__).resolve().parent.parent / "docs" / "examples" / "login_oauth2.py"
    spec = importlib.util.spec_from_file_location("login_oauth2_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    server, url = endpoint
    certs = make_certs(tmp_path)
    smtp = make_auth_server(
        AuthHandler(tokens={"ya29.token-1": "alice@example.com"}),
        tls_context=server_ssl_context(certs.server),
        auth_require_tls=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", certs.ca_file)  # the example trusts the platform store
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client-id-1")
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("OAUTH_REFRESH_TOKEN", REFRESH_TOKEN)
    await guard(Deferred.fromCoroutine(example.main(reactor, "alice@example.com", "localhost", str(smtp.port), url)))
    out = capsys.readouterr().out
    assert "new access token for alice@example.com" in out
    assert "accepted by ['alice@example.com']" in out
    assert [(a.mechanism, a.success, a.secure) for a in smtp.handler.attempts] == [("XOAUTH2", True, True)]
    assert len(server.requests) == 1
