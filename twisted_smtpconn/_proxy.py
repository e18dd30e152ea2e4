"""
Connecting through a proxy: SOCKS5, SOCKS5 with remote name resolution,
SOCKS4a and HTTP CONNECT.

The ``proxy`` option is a URL (:func:`parse_proxy` checks it once, at
construction).  :func:`proxy_endpoint` turns it into an ordinary Twisted
client endpoint, so the rest of the library connects through a proxy exactly
as it connects directly: the endpoint opens TCP to the proxy, runs the
proxy's handshake, and only then builds the caller's protocol and gives it
the *same* TCP transport.  From then on the proxy relays bytes and nothing
else, so STARTTLS and implicit TLS, which the library starts on the
connected transport, run end to end between this client and the SMTP
server; the proxy sees only ciphertext.

The wire formats are not parsed here: ``socksio`` encodes and decodes the
SOCKS messages (RFC 1928, RFC 1929 and the SOCKS4a extension) and ``h11``
speaks HTTP/1.1 for CONNECT.  This module only decides how many bytes make
one SOCKS message (``socksio`` expects whole messages), drives the
exchanges, and turns a refusal into :class:`ConnectionFailedError` naming
the proxy and its reply.

Credentials from the URL go on the wire to the proxy and nowhere else: they
are absent from every error message, from :func:`repr` of the settings, and
from the proxy's description used in errors.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Protocol as TypingProtocol
from urllib.parse import unquote, urlsplit

import h11
import idna
from socksio import (
    ProtocolError as SOCKSProtocolError,
    SOCKS4ARequest,
    SOCKS4Command,
    SOCKS4Connection,
    SOCKS4Reply,
    SOCKS4ReplyCode,
    SOCKS4Request,
    SOCKS5AuthMethod,
    SOCKS5AuthMethodsRequest,
    SOCKS5AuthReply,
    SOCKS5Command,
    SOCKS5CommandRequest,
    SOCKS5Connection,
    SOCKS5Reply,
    SOCKS5ReplyCode,
    SOCKS5UsernamePasswordRequest,
)
from socksio.socks5 import SOCKS5UsernamePasswordReply
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionDone, TimeoutError as TCPTimeout
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ._errors import ConnectionFailedError

__all__ = ["ProxySettings", "parse_proxy", "proxy_endpoint", "PROXY_SCHEMES"]

#: The URL schemes the ``proxy`` option accepts, and what each one means.
PROXY_SCHEMES: dict[str, str] = {
    "socks5": "SOCKS5, the server's name resolved by this client",
    "socks5h": "SOCKS5, the server's name resolved by the proxy",
    "socks4a": "SOCKS4a, the server's name resolved by the proxy",
    "http": "HTTP CONNECT",
}

#: RFC 1929 length fields are one octet, and zero is not a valid length.
_SOCKS5_CREDENTIAL_MAX = 255

#: RFC 1928 section 6, for the error messages.
_SOCKS5_REPLY_MEANINGS: dict[SOCKS5ReplyCode, str] = {
    SOCKS5ReplyCode.SUCCEEDED: "succeeded",
    SOCKS5ReplyCode.GENERAL_SERVER_FAILURE: "general SOCKS server failure",
    SOCKS5ReplyCode.CONNECTION_NOT_ALLOWED_BY_RULESET: "connection not allowed by ruleset",
    SOCKS5ReplyCode.NETWORK_UNREACHABLE: "network unreachable",
    SOCKS5ReplyCode.HOST_UNREACHABLE: "host unreachable",
    SOCKS5ReplyCode.CONNECTION_REFUSED: "connection refused",
    SOCKS5ReplyCode.TTL_EXPIRED: "TTL expired",
    SOCKS5ReplyCode.COMMAND_NOT_SUPPORTED: "command not supported",
    SOCKS5ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}

#: The SOCKS4 protocol description, for the error messages.
_SOCKS4_REPLY_MEANINGS: dict[SOCKS4ReplyCode, str] = {
    SOCKS4ReplyCode.REQUEST_GRANTED: "request granted",
    SOCKS4ReplyCode.REQUEST_REJECTED_OR_FAILED: "request rejected or failed",
    SOCKS4ReplyCode.CONNECTION_FAILED: "request rejected: the proxy cannot reach the client's identd",
    SOCKS4ReplyCode.AUTHENTICATION_FAILED: "request rejected: identd reports a different user id",
}

_METHOD_NAMES: dict[SOCKS5AuthMethod, str] = {
    SOCKS5AuthMethod.NO_AUTH_REQUIRED: "no authentication",
    SOCKS5AuthMethod.GSSAPI: "GSSAPI",
    SOCKS5AuthMethod.USERNAME_PASSWORD: "username/password",
    SOCKS5AuthMethod.NO_ACCEPTABLE_METHODS: "no acceptable methods",
}


# -- the option ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProxySettings:
    """
    A checked ``proxy`` option.

    :ivar scheme: one of :data:`PROXY_SCHEMES` (lower case).
    :ivar host: the proxy's host name or IP address (an IPv6 address
        without brackets).
    :ivar port: the proxy's TCP port.
    :ivar username: for SOCKS5 (RFC 1929) or HTTP Basic, else ``None``.
    :ivar password: goes with ``username``; never shown by :func:`repr`.
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        # Written out (rather than repr=False on the field alone) so that a
        # reader of a log sees that a password is set without seeing it.
        password = None if self.password is None else "***"
        return (
            f"ProxySettings(scheme={self.scheme!r}, host={self.host!r}, port={self.port!r}, "
            f"username={self.username!r}, password={password!r})"
        )

    @property
    def address(self) -> str:
        """``host:port`` with an IPv6 address in brackets."""
        return _host_port(self.host, self.port)

    @property
    def description(self) -> str:
        """What errors call this proxy: its URL without credentials."""
        return f"{self.scheme}://{self.address}"

    @property
    def resolves_remotely(self) -> bool:
        """Whether the proxy, not this client, resolves the server's name."""
        return self.scheme != "socks5"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_proxy(value: object) -> ProxySettings | None:
    """
    Check the ``proxy`` option and return it as :class:`ProxySettings`.

    Accepted: ``None`` (no proxy), a :class:`ProxySettings`, or a URL string
    ``SCHEME://[USER:PASSWORD@]HOST:PORT`` with a scheme of
    :data:`PROXY_SCHEMES`; an IPv6 host goes in brackets.  The user name and
    password are percent-decoded, so reserved characters can be written as
    ``%40`` (``@``), ``%3A`` (``:``) and so on.

    :raises TypeError: for anything that is not ``None``, a string or
        :class:`ProxySettings`.
    :raises ValueError: for an unknown scheme, a missing host or port, a
        port out of range, a path, query or fragment, or credentials the
        scheme cannot carry.  The message never repeats the credentials.
    """
    if value is None or isinstance(value, ProxySettings):
        return value
    if not isinstance(value, str):
        raise TypeError(f"proxy must be a URL string such as 'socks5://host:1080', not {type(value).__name__}")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in value):
        raise ValueError("the proxy URL contains spaces or control characters")
    known = ", ".join(f"{name}://" for name in PROXY_SCHEMES)
    if "://" not in value:
        # Without it, urlsplit would take "user:password@host" for a scheme
        # and a path, and an error quoting that "scheme" would show the user.
        raise ValueError(f"the proxy URL has no scheme; start it with one of {known}")
    try:
        parts = urlsplit(value)
    except ValueError as error:
        # urlsplit's own messages say what is wrong ("Invalid IPv6 URL")
        # without repeating the URL.
        raise ValueError(f"the proxy URL is not a valid URL: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES:
        shown = f"{scheme}://" if scheme else "none"
        raise ValueError(f"unknown proxy scheme {shown}; use one of {known}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"a {scheme}:// proxy URL has a host and a port only (no path, query or fragment)")
    host = parts.hostname
    if not host:
        raise ValueError(f"the {scheme}:// proxy URL has no host")
    if "[" in parts.netloc.rpartition("@")[2]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"the {scheme}:// proxy URL has an invalid IPv6 address in brackets") from None
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the {scheme}:// proxy URL has a port that is not a number from 1 to 65535") from None
    if port is None:
        raise ValueError(f"the {scheme}:// proxy URL has no port (for example {scheme}://{_host_port(host, 1080)})")
    if not 1 <= port <= 65535:
        raise ValueError(f"the {scheme}:// proxy URL has a port that is not a number from 1 to 65535")
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    _check_credentials(scheme, username, password)
    return ProxySettings(scheme=scheme, host=host, port=port, username=username, password=password)


def _check_credentials(scheme: str, username: str | None, password: str | None) -> None:
    if username is None and password is None:
        return
    if scheme == "socks4a":
        raise ValueError("a socks4a:// proxy cannot authenticate: remove the user name and password from the URL")
    if not username:
        raise ValueError(f"the {scheme}:// proxy URL has a password but no user name")
    if scheme in ("socks5", "socks5h"):
        if password is None:
            raise ValueError(f"a {scheme}:// proxy user name needs a password (user:password@)")
        for what, text in (("user name", username), ("password", password)):
            size = len(text.encode("utf-8"))
            if not 1 <= size <= _SOCKS5_CREDENTIAL_MAX:
                raise ValueError(
                    f"the {scheme}:// proxy {what} must be 1 to {_SOCKS5_CREDENTIAL_MAX} bytes long in UTF-8"
                )
    if scheme == "http" and ":" in username:
        # RFC 7617: the user-id of Basic authentication cannot contain a colon.
        raise ValueError("an http:// proxy user name cannot contain ':' (HTTP Basic authentication)")
    for text in (username, password or ""):
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
            raise ValueError(f"the {scheme}:// proxy credentials contain control characters")


# -- the endpoint -------------------------------------------------------------------


def proxy_endpoint(
    reactor: Any,
    settings: ProxySettings,
    host: str,
    port: int,
    *,
    timeout: float,
    bind_address: tuple[str, int] | None = None,
) -> IStreamClientEndpoint:
    """
    An endpoint that connects to ``host:port`` through the proxy.

    ``connect(factory)`` opens TCP to the proxy (a :class:`HostnameEndpoint`
    with ``timeout`` and ``bind_address``), runs the proxy's handshake, then
    builds the factory's protocol and hands it the proxy connection's own
    transport, so that ``transport.startTLS`` works through the tunnel.
    Bytes the server sent right behind the proxy's reply go to that
    protocol.  The Deferred fires with the protocol; it fails with
    :class:`ConnectionFailedError` when the proxy refuses or breaks off the
    handshake (the message names the proxy and quotes its reply), and with
    the :class:`HostnameEndpoint`'s timeout error when TCP to the proxy
    times out.  Cancelling it drops the connection to the proxy at once.

    The endpoint can be connected any number of times.

    :param reactor: provides TCP, time and (for ``socks5://``) the name
        resolver.
    :param settings: from :func:`parse_proxy`.
    :param host: the SMTP server's name or IP address (IPv6 without
        brackets); with ``socks5://`` this client resolves it and sends the
        address, with the other schemes the proxy gets the name.
    :param port: the SMTP server's port.
    :param timeout: seconds for TCP to the proxy.
    :param bind_address: local ``(address, port)`` to connect from.
    :raises ValueError: when the scheme cannot carry this target (an IPv6
        address through SOCKS4a) or ``host`` is not a valid name.
    """
    target = _target_name(settings, host)
    return _ProxyEndpoint(reactor, settings, target, port, timeout=timeout, bind_address=bind_address)


def _target_name(settings: ProxySettings, host: str) -> str:
    """
    The server's address as it goes to the proxy: an IP literal unchanged,
    a name in its IDNA (A-label) form, since none of these protocols carry
    anything but ASCII names.
    """
    if not host:
        raise ValueError("the server's host name is empty")
    literal = _ip_literal(host)
    if literal is not None:
        if literal.version == 6 and settings.scheme == "socks4a":
            raise ValueError(f"a socks4a:// proxy cannot connect to the IPv6 address {host}")
        return literal.compressed
    try:
        name = idna.encode(host.rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(f"the server's host name {host!r} is not a valid domain name: {error}") from None
    # idna refuses names over 253 octets, so every name that gets here also
    # fits SOCKS5's one-octet length field.
    return name


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@implementer(IStreamClientEndpoint)
class _ProxyEndpoint:
    """See :func:`proxy_endpoint`."""

    def __init__(
        self,
        reactor: Any,
        settings: ProxySettings,
        host: str,
        port: int,
        *,
        timeout: float,
        bind_address: tuple[str, int] | None,
    ) -> None:
        self._reactor = reactor
        self._settings = settings
        self._host = host
        self._port = port
        self._timeout = timeout
        self._bind_address = bind_address

    def __repr__(self) -> str:
        return f"<proxy endpoint to {_host_port(self._host, self._port)} through {self._settings.description}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return _Attempt(self, protocolFactory).start()


class _Attempt:
    """
    One ``connect`` call: resolve (``socks5://`` with a name), connect to
    the proxy, shake hands, hand over.  Holds whatever cancelling must stop.
    """

    def __init__(self, endpoint: _ProxyEndpoint, factory: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self._settings = endpoint._settings
        self._factory = factory
        self._result: Deferred[IProtocol] = Deferred(self._cancel)
        self._pending: Deferred[Any] | None = None
        self._handshake: _Handshake | None = None
        self._cancelled = False

    def start(self) -> Deferred[IProtocol]:
        endpoint = self._endpoint
        if self._settings.resolves_remotely or _ip_literal(endpoint._host) is not None:
            self._connect_to_proxy(endpoint._host)
        else:
            self._pending = _resolve(endpoint._reactor, endpoint._host, endpoint._port)
            self._pending.addCallbacks(self._connect_to_proxy, self._resolution_failed)
        return self._result

    def _resolution_failed(self, failure: Failure) -> None:
        self._pending = None
        if isinstance(failure.value, CancelledError):
            return
        self._fail(
            ConnectionFailedError(
                f"could not resolve {self._endpoint._host} to connect to it through the "
                f"{self._settings.description} proxy: {failure.getErrorMessage()}"
            )
        )

    def _connect_to_proxy(self, target: str) -> None:
        self._pending = None
        if self._result.called:
            return  # cancelled while the name was being resolved
        endpoint = self._endpoint
        negotiation = _negotiation_for(self._settings, target, endpoint._port)
        tcp = HostnameEndpoint(
            endpoint._reactor,
            self._settings.host,
            self._settings.port,
            timeout=endpoint._timeout,
            bindAddress=endpoint._bind_address,
        )
        connecting = tcp.connect(_HandshakeFactory(self, negotiation))
        self._pending = connecting
        connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, handshake: _Handshake) -> None:
        self._pending = None
        self._handshake = handshake

    def _connect_failed(self, failure: Failure) -> None:
        self._pending = None
        if isinstance(failure.value, CancelledError):
            return
        if isinstance(failure.value, TCPTimeout):
            # A timeout stays a timeout, so that the caller reports ETIMEDOUT.
            self._fail(failure)
            return
        self._fail(
            ConnectionFailedError(
                f"could not connect to the {self._settings.description} proxy: {failure.getErrorMessage()}"
            )
        )

    def _cancel(self, result: Deferred[IProtocol]) -> None:
        # Deferred fails with CancelledError after this returns; our job is
        # to leave no connection attempt and no open socket behind, and to
        # keep whatever stopping them fails with from taking its place.
        self._cancelled = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            handshake.abort()

    def _fail(self, reason: Exception | Failure) -> None:
        if not self._result.called and not self._cancelled:
            self._result.errback(reason)

    # -- called by the handshake protocol -----------------------------------------------

    def hand_over(self, handshake: _Handshake, leftover: bytes) -> None:
        """The tunnel is up: give its transport to the caller's protocol."""
        self._handshake = None
        transport: Any = handshake.transport
        if self._result.called:
            transport.abortConnection()
            return
        protocol = self._factory.buildProtocol(transport.getPeer())
        if protocol is None:
            transport.abortConnection()
            self._fail(ConnectionFailedError("the connection's protocol factory declined the connection"))
            return
        # The reactor calls whatever transport.protocol is for every later
        # read and for connectionLost; from here on that is the caller's.
        transport.protocol = protocol
        protocol.makeConnection(transport)
        if leftover:
            protocol.dataReceived(leftover)
        self._result.callback(protocol)

    def handshake_failed(self, error: ConnectionFailedError) -> None:
        self._handshake = None
        self._fail(error)


def _resolve(reactor: Any, host: str, port: int) -> Deferred[str]:
    """
    Resolve ``host`` with the reactor's resolver and fire with one address,
    as a string: the first IPv4 address, else the first IPv6 address.

    One address, because a SOCKS5 request carries one (there is no trying
    the next address as a direct connection would); IPv4 first, because a
    proxy without IPv6 connectivity is common and one without IPv4 is not.

    :raises LookupError: through the Deferred, when there is no address.
    """
    done: Deferred[str] = Deferred()
    addresses: list[str] = []

    @implementer(IResolutionReceiver)
    class _Receiver:
        def resolutionBegan(self, resolution: IHostResolution) -> None:
            pass

        def addressResolved(self, address: IAddress) -> None:
            addresses.append(address.host)  # type: ignore[attr-defined]

        def resolutionComplete(self) -> None:
            if done.called:
                return  # cancelled meanwhile
            if addresses:
                ipv4 = [address for address in addresses if ":" not in address]
                done.callback((ipv4 or addresses)[0])
            else:
                done.errback(LookupError(f"no address found for {host}"))

    reactor.nameResolver.resolveHostName(_Receiver(), host, portNumber=port)
    return done


# -- the handshakes -----------------------------------------------------------------


class _Refused(Exception):
    """The proxy said no, or said something that is not its protocol."""


class _Negotiation(TypingProtocol):
    """One proxy handshake, without I/O."""

    def start(self) -> bytes:
        """The bytes to send once TCP to the proxy is up."""

    def receive(self, data: bytes) -> tuple[bytes, bytes | None]:
        """
        Take bytes from the proxy.

        :return: ``(to_send, leftover)``: bytes to write to the proxy, and,
            once the tunnel is up, what came after the proxy's reply (else
            ``None``).
        :raises _Refused: with a message quoting the proxy's reply.
        """


def _negotiation_for(settings: ProxySettings, target: str, port: int) -> _Negotiation:
    if settings.scheme in ("socks5", "socks5h"):
        return _SOCKS5(settings, target, port)
    if settings.scheme == "socks4a":
        return _SOCKS4a(target, port)
    return _HTTPConnect(settings, target, port)


class _SOCKS5:
    """
    RFC 1928 CONNECT, with RFC 1929 username/password when configured.

    ``socksio`` decodes a message only when given all of it and nothing
    more, so :meth:`_take` cuts the received bytes at message boundaries; the
    lengths come from the fixed layouts of RFC 1928 and RFC 1929.
    """

    def __init__(self, settings: ProxySettings, target: str, port: int) -> None:
        self._settings = settings
        self._target = target
        self._port = port
        self._connection = SOCKS5Connection()
        self._buffer = b""
        self._stage = "method"

    def start(self) -> bytes:
        methods = [SOCKS5AuthMethod.NO_AUTH_REQUIRED]
        if self._settings.username is not None:
            methods.append(SOCKS5AuthMethod.USERNAME_PASSWORD)
        self._offered = methods
        self._connection.send(SOCKS5AuthMethodsRequest(methods))
        return self._connection.data_to_send()

    def _take(self) -> bytes | None:
        """The next whole message from the buffer, or ``None`` for "need more"."""
        buffer = self._buffer
        if self._stage in ("method", "auth"):
            size = 2
        else:
            if len(buffer) < 5:
                return None
            address_type = buffer[3]
            if address_type == 0x01:
                size = 4 + 4 + 2
            elif address_type == 0x04:
                size = 4 + 16 + 2
            elif address_type == 0x03:
                size = 4 + 1 + buffer[4] + 2
            else:
                size = len(buffer)  # let socksio say what is wrong with it
        if len(buffer) < size:
            return None
        self._buffer = buffer[size:]
        return buffer[:size]

    def receive(self, data: bytes) -> tuple[bytes, bytes | None]:
        self._buffer += data
        to_send = b""
        while True:
            message = self._take()
            if message is None:
                return to_send, None
            try:
                reply = self._connection.receive_data(message)
            except SOCKSProtocolError:
                raise _Refused(f"sent a reply that is not SOCKS5: {message[:32]!r}") from None
            if isinstance(reply, SOCKS5AuthReply):
                to_send += self._method_chosen(reply.method, message)
            elif isinstance(reply, SOCKS5UsernamePasswordReply):
                if not reply.success:
                    raise _Refused(
                        f"refused the user name and password (RFC 1929 status {message[1]:#04x})"
                    )
                to_send += self._request()
            else:
                assert isinstance(reply, SOCKS5Reply)
                code = reply.reply_code
                if code != SOCKS5ReplyCode.SUCCEEDED:
                    raise _Refused(
                        f"refused to connect to {_host_port(self._target, self._port)}: "
                        f"reply {code.value[0]:#04x}, {_SOCKS5_REPLY_MEANINGS[code]}"
                    )
                return to_send, self._buffer

    def _method_chosen(self, method: SOCKS5AuthMethod, message: bytes) -> bytes:
        if method not in self._offered:
            offered = ", ".join(_METHOD_NAMES[m] for m in self._offered)
            chosen = (
                "none of them"
                if method == SOCKS5AuthMethod.NO_ACCEPTABLE_METHODS
                else f"{_METHOD_NAMES[method]} instead"
            )
            raise _Refused(
                f"accepts no offered authentication method (offered {offered}; it chose {chosen}, "
                f"reply {message[1]:#04x})"
            )
        if method == SOCKS5AuthMethod.USERNAME_PASSWORD:
            self._stage = "auth"
            username = (self._settings.username or "").encode("utf-8")
            password = (self._settings.password or "").encode("utf-8")
            self._connection.send(SOCKS5UsernamePasswordRequest(username, password))
            return self._connection.data_to_send()
        return self._request()

    def _request(self) -> bytes:
        self._stage = "request"
        self._connection.send(SOCKS5CommandRequest.from_address(SOCKS5Command.CONNECT, (self._target, self._port)))
        return self._connection.data_to_send()


#: A SOCKS4 reply is always 8 bytes.
_SOCKS4_REPLY_SIZE = 8


class _SOCKS4a:
    """
    SOCKS4a CONNECT: the server's name goes to the proxy, which resolves
    it; an IPv4 address goes as plain SOCKS4.  The user id is empty (SOCKS4
    has no passwords; identd checks are the proxy's business).
    """

    def __init__(self, target: str, port: int) -> None:
        self._target = target
        self._port = port
        self._connection = SOCKS4Connection(user_id=b"")
        self._buffer = b""

    def start(self) -> bytes:
        request: SOCKS4Request | SOCKS4ARequest
        literal = _ip_literal(self._target)
        if literal is not None:
            request = SOCKS4Request.from_address(SOCKS4Command.CONNECT, (self._target, self._port), user_id=b"")
        else:
            request = SOCKS4ARequest.from_address(SOCKS4Command.CONNECT, (self._target, self._port), user_id=b"")
        self._connection.send(request)
        return self._connection.data_to_send()

    def receive(self, data: bytes) -> tuple[bytes, bytes | None]:
        self._buffer += data
        if len(self._buffer) < _SOCKS4_REPLY_SIZE:
            return b"", None
        message, leftover = self._buffer[:_SOCKS4_REPLY_SIZE], self._buffer[_SOCKS4_REPLY_SIZE:]
        try:
            reply: SOCKS4Reply = self._connection.receive_data(message)
        except SOCKSProtocolError:
            raise _Refused(f"sent a reply that is not SOCKS4: {message!r}") from None
        if reply.reply_code != SOCKS4ReplyCode.REQUEST_GRANTED:
            raise _Refused(
                f"refused to connect to {_host_port(self._target, self._port)}: "
                f"reply {reply.reply_code.value[0]:#04x}, {_SOCKS4_REPLY_MEANINGS[reply.reply_code]}"
            )
        return b"", leftover


class _HTTPConnect:
    """
    ``CONNECT host:port HTTP/1.1`` (RFC 9110 section 9.3.6), with
    ``Proxy-Authorization: Basic`` when credentials are configured.  Any 2xx
    opens the tunnel; anything else is a refusal quoted by its status line.
    """

    def __init__(self, settings: ProxySettings, target: str, port: int) -> None:
        self._authority = _host_port(target, port)
        self._settings = settings
        self._connection = h11.Connection(our_role=h11.CLIENT)

    def start(self) -> bytes:
        headers = [("Host", self._authority)]
        if self._settings.username is not None:
            pair = f"{self._settings.username}:{self._settings.password or ''}".encode()
            headers.append(("Proxy-Authorization", "Basic " + base64.b64encode(pair).decode("ascii")))
        request = h11.Request(method="CONNECT", target=self._authority, headers=headers)
        return self._connection.send(request) or b""

    def receive(self, data: bytes) -> tuple[bytes, bytes | None]:
        self._connection.receive_data(data)
        while True:
            try:
                event = self._connection.next_event()
            except h11.RemoteProtocolError as error:
                raise _Refused(f"sent a reply that is not valid HTTP: {error}") from None
            if event is h11.NEED_DATA:
                return b"", None
            if isinstance(event, h11.InformationalResponse):
                continue  # 1xx: the real answer follows
            if isinstance(event, h11.Response):
                if not 200 <= event.status_code < 300:
                    raise _Refused(f"refused CONNECT {self._authority}: {_status_line(event)}")
                continue  # h11 now pauses: the rest is the tunnel's
            if event is h11.PAUSED:
                leftover, _closed = self._connection.trailing_data
                return b"", leftover
            raise _Refused(f"sent an unexpected HTTP event {type(event).__name__}")


def _status_line(response: h11.Response) -> str:
    reason = response.reason.decode("latin-1")
    return f"HTTP/{response.http_version.decode('ascii')} {response.status_code} {reason}".rstrip()


class _HandshakeFactory(Factory):
    """Builds the one :class:`_Handshake` of an attempt."""

    #: One line per proxy connection in the log would bury the SMTP lines.
    noisy = False

    def __init__(self, attempt: _Attempt, negotiation: _Negotiation) -> None:
        self._attempt = attempt
        self._negotiation = negotiation

    def buildProtocol(self, addr: IAddress | None) -> _Handshake:
        return _Handshake(self._attempt, self._negotiation)


class _Handshake(Protocol):
    """
    Speaks to the proxy until the tunnel is up, then steps aside: the
    attempt gives the transport to the caller's protocol.
    """

    def __init__(self, attempt: _Attempt, negotiation: _Negotiation) -> None:
        self._attempt = attempt
        self._negotiation = negotiation
        self._done = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._negotiation.start())

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        assert self.transport is not None
        try:
            to_send, leftover = self._negotiation.receive(data)
        except _Refused as refusal:
            # Closed before the caller hears of it: whatever the caller does
            # next, this connection is already on its way out.
            self._done = True
            self.transport.loseConnection()
            self._attempt.handshake_failed(self._refusal(str(refusal)))
            return
        if to_send:
            self.transport.write(to_send)
        if leftover is not None:
            self._done = True
            self._attempt.hand_over(self, leftover)

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # type: ignore[assignment]
        if self._done:
            return
        self._done = True
        self._attempt.handshake_failed(
            self._refusal(f"closed the connection before the tunnel was up ({reason.getErrorMessage()})")
        )

    def abort(self) -> None:
        """Drop the connection to the proxy now (the attempt was cancelled)."""
        self._done = True
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _refusal(self, what: str) -> ConnectionFailedError:
        settings = self._attempt._settings
        return ConnectionFailedError(f"the {settings.description} proxy {what}")

