"""
:class:`OAuth2TokenProvider`: access tokens for XOAUTH2/OAUTHBEARER from an
OAuth 2.0 refresh token, the common case of sending through Gmail or
Microsoft 365 as a user who granted the application access once.

It is a token provider in the sense of ``Auth.xoauth2``: it has a ``user``
and ``get_token(renew)``.  It keeps the access token until shortly before
it expires, refreshes it through the token endpoint (RFC 6749, section 6)
with :class:`twisted.web.client.Agent`, shares one refresh between callers
that ask at the same time, and tells observers about every new token so
that the application can store it (``provider.on("token", store)``), as the
nodemailer's ``xoauth2`` generator did with its ``token`` event.

Its failures are ``EAUTH`` errors (:class:`AuthenticationError`): inside
``login()`` they are what the caller sees, and their text never holds the
client secret, the refresh token or an access token.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from ._errors import AuthenticationError
from ._options import default_reactor

__all__ = ["OAuth2Token", "OAuth2TokenProvider"]

_T = TypeVar("_T")

#: The most bytes of a token endpoint's response that are read.  Real
#: responses are about a kilobyte; a bigger one is refused, not buffered.
MAX_RESPONSE_BYTES = 256 * 1024

#: How much of the endpoint's error description an error message shows.
_MAX_SHOWN = 200


@dataclass(frozen=True)
class OAuth2Token:
    """
    A new access token, as given to ``"token"`` observers.

    :ivar user: the provider's user.
    :ivar access_token: the access token.
    :ivar expires: when it expires, in seconds since the epoch (the
        reactor's clock), or ``None`` when the endpoint did not say.
    :ivar refresh_token: the refresh token to use from now on: the endpoint's
        new one if it rotated it, else the one the provider had.  Store it
        if it changed; the old one may stop working.
    """

    user: str
    access_token: str = field(repr=False)
    expires: float | None
    refresh_token: str = field(repr=False)


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body that is already in memory."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _BoundedBody(Protocol):
    """Collects a response body, refusing more than :data:`MAX_RESPONSE_BYTES`."""

    def __init__(self, finished: Deferred[bytes]) -> None:
        self._finished = finished
        self._parts: list[bytes] = []
        self._size = 0
        self._too_big = False

    def dataReceived(self, data: bytes) -> None:
        if self._too_big:
            return
        self._size += len(data)
        if self._size > MAX_RESPONSE_BYTES:
            self._too_big = True
            self._parts = []
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self._parts.append(data)

    def stop(self) -> None:
        """Stop reading (the wait was cancelled): drop the connection."""
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._finished.called:
            return  # cancelled: nobody waits any more
        if self._too_big:
            self._finished.errback(
                AuthenticationError(f"the token endpoint's response is larger than {MAX_RESPONSE_BYTES} bytes")
            )
        elif isinstance(reason.value, ResponseDone):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(
                AuthenticationError(f"the token endpoint's response was cut off: {reason.getErrorMessage()}")
            )


def _read_body(response: IResponse) -> Deferred[bytes]:
    if response.length is not UNKNOWN_LENGTH and isinstance(response.length, int):
        if response.length > MAX_RESPONSE_BYTES:
            response.deliverBody(Protocol())  # type: ignore[no-untyped-call]  # discard it
            d: Deferred[bytes] = Deferred()
            d.errback(
                AuthenticationError(f"the token endpoint's response is larger than {MAX_RESPONSE_BYTES} bytes")
            )
            return d
    reader: list[_BoundedBody] = []
    finished: Deferred[bytes] = Deferred(lambda _: reader[0].stop() if reader else None)
    reader.append(_BoundedBody(finished))
    response.deliverBody(reader[0])  # type: ignore[no-untyped-call]
    return finished


def _printable(text: str) -> str:
    """Server text for an error message: control characters escaped, cut short."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return shown[:_MAX_SHOWN]


def _is_loopback_host(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_text(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty str")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{what} contains a control character")
    return value


class OAuth2TokenProvider:
    """
    A token provider for ``Auth(xoauth2=...)`` that refreshes access tokens
    through an OAuth 2.0 token endpoint.

    The client credentials are sent in the request body
    (``client_secret_post``), which Google and Microsoft accept.

    :param user: the mailbox to authenticate as (the XOAUTH2 ``user``).
    :param client_id: the application's OAuth client id.
    :param client_secret: the application's client secret.
    :param refresh_token: the user's refresh token.
    :param token_url: the token endpoint, e.g.
        ``https://oauth2.googleapis.com/token``.  It must be ``https``, or
        ``http`` to a loopback host (tests, local proxies): the request
        carries the client secret and the refresh token.
    :param access_token: an access token already at hand, used until it
        expires (or is refused).
    :param expires: when ``access_token`` expires, in seconds since the
        epoch; ``None``: use it until the server refuses it.
    :param reactor: the reactor for the HTTP client and the clock; default
        the global reactor (imported only when needed).
    :param agent: an :class:`~twisted.web.iweb.IAgent` to use instead of a
        new :class:`~twisted.web.client.Agent` (custom TLS, proxies).
    :param clock: the clock for expiry and the timeout; default ``reactor``.
    :param timeout: seconds to wait for the token endpoint.
    :param expiry_margin: a token is renewed this many seconds before it
        expires, so that it does not expire between here and the server.
    """

    def __init__(
        self,
        user: str,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        token_url: str,
        access_token: str | None = None,
        expires: float | None = None,
        *,
        reactor: Any = None,
        agent: Any = None,
        clock: IReactorTime | None = None,
        timeout: float = 30.0,
        expiry_margin: float = 30.0,
    ) -> None:
        self.user = _check_text("user", user)
        self._client_id = _check_text("client_id", client_id)
        self._client_secret = _check_text("client_secret", client_secret)
        self._refresh_token = _check_text("refresh_token", refresh_token)
        if not isinstance(token_url, str):
            raise TypeError("token_url must be a str")
        parts = urlsplit(token_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"token_url must be an https URL, not {token_url!r}")
        if parts.scheme == "http" and not _is_loopback_host(parts.hostname):
            raise ValueError(
                "token_url must use https: the request carries the client secret and the refresh token "
                "(http is accepted only for a loopback host)"
            )
        self._token_url = token_url
        self._access_token = _check_text("access_token", access_token) if access_token is not None else None
        if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))):
            raise TypeError("expires must be a number of seconds since the epoch, or None")
        self._expires = float(expires) if expires is not None else None
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._timeout = float(timeout)
        self._margin = float(expiry_margin)
        if agent is None or clock is None:
            reactor = default_reactor(reactor)
        self._agent = agent if agent is not None else Agent(reactor)  # type: ignore[no-untyped-call]
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._observers: list[Callable[[OAuth2Token], object]] = []
        self._waiting: list[Deferred[str]] | None = None
        self._log = Logger(namespace="twisted_smtpconn.oauth2")

    def __repr__(self) -> str:
        return f"<OAuth2TokenProvider user={self.user!r} token_url={self._token_url!r}>"

    # -- observing ----------------------------------------------------------------

    def on(self, event: str, callback: Callable[[OAuth2Token], object]) -> None:
        """
        Call ``callback`` with an :class:`OAuth2Token` after every refresh
        (event ``"token"``), e.g. to store the tokens.

        An exception in ``callback`` is logged and does not affect the
        refresh or the other observers.
        """
        if event != "token":
            raise ValueError(f"unknown event {event!r}; OAuth2TokenProvider emits 'token'")
        self._observers.append(callback)

    @property
    def expires(self) -> float | None:
        """When the current access token expires (seconds since the epoch), if known."""
        return self._expires

    # -- the provider interface -------------------------------------------------------

    def _valid(self) -> bool:
        if self._access_token is None:
            return False
        return self._expires is None or self._clock.seconds() < self._expires - self._margin

    def get_token(self, renew: bool = False) -> Deferred[str]:
        """
        The current access token, refreshed first if ``renew`` is true or
        it has (nearly) expired.

        Callers asking while a refresh is running share that refresh.

        :returns: a Deferred firing with the access token, or failing with
            :class:`AuthenticationError` (``EAUTH``).
        """
        if not renew and self._waiting is None and self._valid():
            assert self._access_token is not None
            return succeed(self._access_token)
        d: Deferred[str] = Deferred()
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]
        Deferred.fromCoroutine(self._refresh_and_notify())
        return d

    async def _refresh_and_notify(self) -> None:
        failure: AuthenticationError | None = None
        token = ""
        try:
            token = await self._refresh()
        except AuthenticationError as error:
            failure = error
        except Exception as error:
            failure = self._unexpected(error)
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            if failure is not None:
                d.errback(failure)
            else:
                d.callback(token)

    def _unexpected(self, error: Exception) -> AuthenticationError:
        if isinstance(error, (CancelledError, TimeoutError)):
            return AuthenticationError(f"the token endpoint did not answer within {self._timeout:g} s")
        text = error.__class__.__name__
        message = str(error)
        for secret in (self._client_secret, self._refresh_token, self._access_token or ""):
            if secret:
                message = message.replace(secret, "****")
        return AuthenticationError(f"cannot refresh the access token for {self.user}: {text}: {_printable(message)}")

    async def _refresh(self) -> str:
        body = urlencode(
            {
                "grant_type": "refresh_token",
                "refresh_token": self._refresh_token,
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            }
        ).encode("ascii")
        headers = Headers(
            {
                b"Content-Type": [b"application/x-www-form-urlencoded"],
                b"Accept": [b"application/json"],
                b"User-Agent": [b"twisted_smtpconn"],
            }
        )
        request: Deferred[IResponse] = self._agent.request(
            b"POST", self._token_url.encode("ascii"), headers, _BytesProducer(body)
        )
        response = await self._within_timeout(request)
        content = await self._within_timeout(_read_body(response))
        token = self._parse(response.code, content)
        self._publish(token)
        return token.access_token

    async def _within_timeout(self, d: Deferred[_T]) -> _T:
        """
        Wait for ``d``, cancelling it after the timeout.

        Not ``Deferred.addTimeout``: the Agent reports a cancelled request
        as ``ResponseNeverReceived``, which addTimeout does not translate.
        """
        timer = self._clock.callLater(self._timeout, d.cancel)
        try:
            return await d
        except Exception:
            if not timer.active():
                raise AuthenticationError(f"the token endpoint did not answer within {self._timeout:g} s") from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    def _parse(self, status: int, content: bytes) -> OAuth2Token:
        try:
            data = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
        if not 200 <= status < 300:
            reason = f"HTTP {status}"
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                reason += f": {_printable(data['error'])}"
                if isinstance(data.get("error_description"), str):
                    reason += f" ({_printable(data['error_description'])})"
            raise AuthenticationError(
                f"the token endpoint refused to refresh the access token for {self.user}: {reason}"
            )
        if not isinstance(data, dict):
            raise AuthenticationError("the token endpoint's response is not a JSON object")
        access_token = data.get("access_token")
        if not isinstance(access_token, str) or not access_token or any(
            ord(c) < 0x20 or ord(c) == 0x7F for c in access_token
        ):
            raise AuthenticationError("the token endpoint's response holds no usable access_token")
        token_type = data.get("token_type")
        if isinstance(token_type, str) and token_type.lower() != "bearer":
            raise AuthenticationError(f"the token endpoint issued a {_printable(token_type)} token, not a Bearer token")
        expires_in = data.get("expires_in")
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)  # some endpoints send it as a string
        expires = None
        if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
            expires = self._clock.seconds() + float(expires_in)
        refresh_token = data.get("refresh_token")
        if isinstance(refresh_token, str) and refresh_token and refresh_token.isprintable():
            self._refresh_token = refresh_token
        self._access_token = access_token
        self._expires = expires
        return OAuth2Token(self.user, access_token, expires, self._refresh_token)

    def _publish(self, token: OAuth2Token) -> None:
        for observer in list(self._observers):
            try:
                observer(token)
            except Exception:
                self._log.failure("a 'token' observer of {provider!r} failed", provider=self)
