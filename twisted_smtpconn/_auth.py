"""
Credentials (:class:`Auth`) and the policy of ``login()``: which SASL
mechanism to use, whether credentials may be sent at all, and the renewal
of a refused OAuth 2.0 token.

The mechanisms themselves are pure state machines in the ``_sasl_*``
modules and the wire dialogue is :mod:`twisted_smtpconn._sasl_exchange`;
this module only decides.  The decisions, in order:

1. ``login()`` on a connection that is already authenticated, or without a
   password or token, fails with ``EAUTH``.
2. The mechanism is ``Auth.method``, else the connection's ``auth_method``,
   else the strongest one the server offers that the credentials allow:
   XOAUTH2 then OAUTHBEARER when a token is given (preferred over a
   password, as in nodemailer's smtp-connection); NTLM when ``domain`` or ``workstation`` is
   given (they mean nothing to any other mechanism); else
   SCRAM-...-PLUS (on TLS) > SCRAM > CRAM-MD5 > PLAIN > LOGIN.  A mechanism
   that was asked for by name must be offered by the server: we never send
   a mechanism the server did not announce.
3. Credentials are never sent over a cleartext connection to a server that
   is not on this machine, unless ``allow_insecure_auth=True``; this holds
   for every mechanism, since even those that hide the password (CRAM-MD5,
   SCRAM) let an eavesdropper guess it offline, and a bearer token is as
   good as a password to whoever reads it.
"""

from __future__ import annotations

import re

import inspect
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ._errors import AuthenticationError
from ._options import ConnectionOptions
from ._protocol import SMTPClientProtocol
from ._sasl import (
    CramMD5Mechanism,
    LoginMechanism,
    OAuthBearerMechanism,
    PlainMechanism,
    SASLMechanism,
    XOAuth2Mechanism,
    check_credential,
)
from ._sasl_exchange import Outcome, run_exchange
from ._sasl_ntlm import NTLMMechanism
from ._sasl_scram import SCRAM_MECHANISMS, ScramMechanism, peer_certificate_der, tls_server_end_point
from ._ehlo import ServerInfo

__all__ = [
    "Auth",
    "TokenProvider",
    "coerce_auth",
    "authenticate",
    "choose_mechanism",
    "connection_is_local",
    "SUPPORTED_MECHANISMS",
    "PASSWORD_PREFERENCE",
    "TOKEN_PREFERENCE",
]

#: Token mechanisms, preferred first.
TOKEN_PREFERENCE = ("XOAUTH2", "OAUTHBEARER")

#: Password mechanisms chosen automatically, strongest first.  NTLM is not
#: here: it is chosen when asked for, or when ``domain``/``workstation`` say
#: that NTLM is meant.
PASSWORD_PREFERENCE = (*SCRAM_MECHANISMS, "CRAM-MD5", "PLAIN", "LOGIN")

#: Every mechanism ``login()`` can speak.
SUPPORTED_MECHANISMS = frozenset((*TOKEN_PREFERENCE, *PASSWORD_PREFERENCE, "NTLM"))


class TokenProvider(Protocol):
    """
    What ``Auth.xoauth2`` may be instead of a token string: an object that
    knows the user and hands out access tokens, renewing on request.

    :class:`twisted_smtpconn._oauth2.OAuth2TokenProvider` is one; any object
    with these two members will do.
    """

    user: str | None

    def get_token(self, renew: bool) -> str | Deferred[str]:
        """
        An access token: the cached one if ``renew`` is false and it is
        still valid, else a new one.  May return the token or a Deferred
        (or any awaitable) for it.
        """


def _check_optional(what: str, value: object) -> str | None:
    if value is None:
        return None
    return check_credential(what, value)


#: A SASL mechanism name (RFC 4422 section 3.1), case-insensitive here.
_SASL_NAME = re.compile(r"[A-Za-z0-9_-]{1,20}")

@dataclass(frozen=True)
class Auth:
    """
    Credentials for ``login()``.

    :ivar user: the user name (also the XOAUTH2 user when a token string is
        given).
    :ivar password: the password, for the password mechanisms.
    :ivar xoauth2: an OAuth 2.0 access token, or a token provider (an object
        with ``user`` and ``get_token(renew)``); preferred over ``password``.
    :ivar domain: the Windows domain, for NTLM.
    :ivar workstation: the workstation name, for NTLM.
    :ivar method: the SASL mechanism to use (upper-cased), overriding the
        connection's ``auth_method`` and the automatic choice.

    The password and the token never appear in the repr.  Values that
    could break the framing of a SASL response (NUL, CR, LF, ``\\x01``)
    are refused here, where the caller wrote them, with a message that does
    not show them.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    xoauth2: Any = field(default=None, repr=False)
    domain: str | None = None
    workstation: str | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        _check_optional("user name", self.user)
        _check_optional("password", self.password)
        _check_optional("domain", self.domain)
        _check_optional("workstation", self.workstation)
        if isinstance(self.xoauth2, str):
            check_credential("xoauth2 access token", self.xoauth2)
            if not self.xoauth2:
                raise ValueError("the xoauth2 access token is empty")
        elif self.xoauth2 is not None and not callable(getattr(self.xoauth2, "get_token", None)):
            raise TypeError(
                "xoauth2 must be an access token (str) or a token provider with get_token(renew), "
                f"not {type(self.xoauth2).__name__}"
            )
        if self.method is not None:
            if not isinstance(self.method, str):
                raise TypeError("method must be a SASL mechanism name (str)")
            if not _SASL_NAME.fullmatch(self.method):
                # RFC 4422 section 3.1: 1-20 of A-Z, 0-9, "-" and "_".
                raise ValueError(f"method must be a SASL mechanism name, not {self.method!r}")
            object.__setattr__(self, "method", self.method.upper())

    @property
    def display_user(self) -> str:
        """The user name for log lines."""
        return self.user or getattr(self.xoauth2, "user", None) or "(unknown)"


_SEED_KEYS = {"user": "user", "pass": "password", "password": "password", "xoauth2": "xoauth2",
              "domain": "domain", "workstation": "workstation", "method": "method"}


def coerce_auth(value: Auth | Mapping[str, Any]) -> Auth:
    """
    Accept an :class:`Auth` or nodemailer's mapping (``user``, ``pass``,
    ``xoauth2``, ``domain``, ``workstation``; also ``password`` and
    ``method``).

    :raises TypeError: another type, or a mapping with unknown keys.
    :raises ValueError: a credential :class:`Auth` refuses.
    """
    if isinstance(value, Auth):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - set(_SEED_KEYS)
        if unknown:
            raise TypeError(f"unknown auth key(s) {sorted(map(str, unknown))}")
        if "pass" in value and "password" in value:
            raise TypeError("give either 'pass' or 'password', not both")
        return Auth(**{_SEED_KEYS[k]: v for k, v in value.items()})
    raise TypeError(f"auth must be an Auth or a mapping, not {type(value).__name__}")


# -- choosing -----------------------------------------------------------------------


def _offered_text(offered: Sequence[str]) -> str:
    return " ".join(offered) if offered else "no AUTH mechanism at all"


def _requirement(name: str, auth: Auth, channel_binding: bool) -> str | None:
    """Why ``auth`` cannot be used with mechanism ``name``, or ``None`` if it can."""
    if name in TOKEN_PREFERENCE:
        if auth.xoauth2 is None:
            return f"{name} needs an OAuth 2.0 access token (xoauth2)"
        return None
    if auth.password is None:
        return f"{name} needs a password"
    if auth.user is None:
        return f"{name} needs a user name"
    if name.endswith("-PLUS") and not channel_binding:
        return f"{name} needs TLS channel binding (a TLS connection with a server certificate)"
    return None


def choose_mechanism(
    auth: Auth,
    offered: Sequence[str],
    *,
    requested: str | None = None,
    channel_binding: bool = False,
    secure: bool = False,
) -> str:
    """
    The mechanism to authenticate with (rules in the module docstring).

    :param offered: the mechanisms the server offered, upper-case.
    :param requested: ``Auth.method`` or the connection's ``auth_method``.
    :param channel_binding: whether -PLUS mechanisms can be used.
    :param secure: whether the connection is TLS (only for the hint in the
        error when the server offers no mechanism).
    :raises AuthenticationError: no mechanism fits; the message names what
        the server offers.
    """
    offered = [name.upper() for name in offered]
    if requested is not None:
        requested = requested.upper()
        if requested not in SUPPORTED_MECHANISMS:
            raise AuthenticationError(
                f"unsupported authentication mechanism {requested}; supported: "
                f"{' '.join(sorted(SUPPORTED_MECHANISMS))} (the server offers {_offered_text(offered)})"
            )
        if requested not in offered:
            raise AuthenticationError(
                f"the server does not offer the requested mechanism {requested}; "
                f"it offers {_offered_text(offered)}"
            )
        problem = _requirement(requested, auth, channel_binding)
        if problem is not None:
            raise AuthenticationError(f"cannot use the requested mechanism: {problem}")
        return requested

    candidates: list[str] = []
    if auth.xoauth2 is not None:
        candidates.extend(TOKEN_PREFERENCE)
    if auth.password is not None and auth.user is not None:
        if (auth.domain is not None or auth.workstation is not None) and "NTLM" in offered:
            candidates.append("NTLM")
        candidates.extend(PASSWORD_PREFERENCE)
    for name in candidates:
        if name in offered and _requirement(name, auth, channel_binding) is None:
            return name

    if auth.password is not None and auth.user is None and auth.xoauth2 is None:
        raise AuthenticationError("a password was given without a user name")
    hint = "" if offered or secure else " (many servers offer AUTH only after STARTTLS)"
    allowed = "an OAuth 2.0 token" if auth.xoauth2 is not None else "a password"
    if auth.xoauth2 is not None and auth.password is not None:
        allowed = "an OAuth 2.0 token or a password"
    raise AuthenticationError(
        f"no usable authentication mechanism: the server offers {_offered_text(offered)}{hint}; "
        f"the credentials given ({allowed}) need one of "
        f"{' '.join(name for name in dict.fromkeys(candidates))}"
    )


# -- where the credentials go ----------------------------------------------------------


def _is_loopback_name(host: str) -> bool:
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_loopback_address(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def connection_is_local(options: ConnectionOptions, transport: Any) -> bool:
    """
    Whether the server is on this machine, so that cleartext never leaves it.

    The transport's peer decides: a loopback address or a UNIX socket.  When
    a custom ``endpoint`` or a ``proxy`` is used the peer may be a proxy
    that relays to ``host`` elsewhere, so ``host`` must name loopback as
    well.
    """
    peer = None
    if transport is not None:
        try:
            peer = transport.getPeer()
        except Exception:
            peer = None
    if isinstance(peer, UNIXAddress):
        peer_local = True
    elif isinstance(peer, (IPv4Address, IPv6Address)):
        peer_local = _is_loopback_address(peer.host)
    else:
        peer_local = False
    if not peer_local:
        return False
    return (options.endpoint is None and options.proxy is None) or _is_loopback_name(options.host)


# -- the exchange ------------------------------------------------------------------------


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every non-trivial secret in it replaced."""
    for secret in secrets:
        if len(secret) >= 3:
            text = text.replace(secret, "****")
    return text


def _refused(
    outcome: Outcome, name: str, user: str, mechanism: SASLMechanism, after_renewal: bool = False
) -> AuthenticationError:
    """The ``EAUTH`` error for a refusal, with the server's reply and error challenge."""
    message = f"the server refused {name} authentication for {user}"
    if after_renewal:
        message += " (also with a renewed token)"
    if mechanism.server_error:
        message += f" (server's error: {mechanism.server_error})"
    return AuthenticationError.from_reply(message, outcome.reply, outcome.command)


async def _get_token(provider: Any, renew: bool, secrets: Sequence[str]) -> str:
    """Ask a token provider for a token; every failure becomes ``EAUTH``."""
    try:
        result = provider.get_token(renew)
        if isinstance(result, Deferred) or inspect.isawaitable(result):
            result = await result
    except AuthenticationError:
        raise
    except Exception as error:
        detail = _scrub(str(error), secrets)
        raise AuthenticationError(
            f"the token provider failed to {'renew' if renew else 'supply'} an access token: "
            f"{type(error).__name__}{': ' + detail if detail else ''}"
        ) from None
    if not isinstance(result, str) or not result:
        raise AuthenticationError(
            f"the token provider returned {type(result).__name__ if result != '' else 'an empty str'} "
            "instead of an access token"
        )
    try:
        check_credential("access token", result)
    except ValueError as error:
        raise AuthenticationError(f"the token provider returned an unusable token: {error}") from None
    return result


def _token_mechanism(name: str, user: str | None, token: str, options: ConnectionOptions) -> SASLMechanism:
    if name == "XOAUTH2":
        assert user is not None  # _token_login checked
        return XOAuth2Mechanism(user, token)
    return OAuthBearerMechanism(user, token, host=options.host, port=options.port)


async def _token_login(
    protocol: SMTPClientProtocol, name: str, auth: Auth, options: ConnectionOptions, log: Logger
) -> None:
    """XOAUTH2/OAUTHBEARER, with one renewal when a provider's token is refused."""
    provider = None if isinstance(auth.xoauth2, str) else auth.xoauth2
    user = auth.user
    if user is None and provider is not None:
        provider_user = getattr(provider, "user", None)
        user = provider_user if isinstance(provider_user, str) and provider_user else None
    if user is not None:
        try:
            check_credential("user name", user)
        except ValueError as error:
            raise AuthenticationError(f"the token provider's user is unusable: {error}") from None
    if name == "XOAUTH2" and user is None:
        raise AuthenticationError("XOAUTH2 needs a user name: set Auth.user or the provider's user")
    secrets = [s for s in (auth.password,) if s]
    if provider is None:
        token: str = auth.xoauth2
    else:
        token = await _get_token(provider, False, secrets)
    mechanism = _token_mechanism(name, user, token, options)
    outcome = await run_exchange(protocol, mechanism)
    if outcome.accepted:
        return
    if provider is None:
        raise _refused(outcome, name, user or "(token's user)", mechanism)
    log.info(
        "the server refused the access token for {user} ({response}); asking the provider for a new one",
        user=user or "(token's user)",
        response=str(outcome.reply),
    )
    token = await _get_token(provider, True, [*secrets, token])
    mechanism = _token_mechanism(name, user, token, options)
    outcome = await run_exchange(protocol, mechanism)
    if not outcome.accepted:
        raise _refused(outcome, name, user or "(token's user)", mechanism, after_renewal=True)


def _password_mechanism(
    name: str, auth: Auth, *, channel_binding: bytes | None, offered: Sequence[str]
) -> SASLMechanism:
    user, password = auth.user, auth.password
    assert user is not None and password is not None  # choose_mechanism checked
    if name == "PLAIN":
        return PlainMechanism(user, password)
    if name == "LOGIN":
        return LoginMechanism(user, password)
    if name == "CRAM-MD5":
        return CramMD5Mechanism(user, password)
    if name == "NTLM":
        return NTLMMechanism(user, password, domain=auth.domain, workstation=auth.workstation)
    return ScramMechanism(
        name,
        user,
        password,
        channel_binding=channel_binding,
        server_offers_plus=f"{name}-PLUS" in offered,
    )


async def authenticate(
    protocol: SMTPClientProtocol,
    auth: Auth,
    *,
    server: ServerInfo,
    options: ConnectionOptions,
    secure: bool,
    already: bool,
    log: Logger,
) -> None:
    """
    Authenticate on ``protocol`` with ``auth``.

    :param server: what the server said in its (last) EHLO.
    :param secure: whether the connection is TLS now.
    :param already: whether this connection has authenticated before.
    :raises AuthenticationError: ``EAUTH`` for every refusal and every
        reason not to try (see the module docstring); it carries the
        server's reply when there was one.
    :raises SMTPConnectionError: a failure of the connection itself
        (``ECONNECTION`` for a 421, ``EPROTOCOL``...), which closes it.
    """
    if already:
        raise AuthenticationError("already authenticated on this connection; SMTP allows one AUTH per session")
    if auth.password is None and auth.xoauth2 is None:
        raise AuthenticationError("no credentials: give a user and a password, or an OAuth 2.0 token (xoauth2)")
    transport = protocol.transport
    binding = None
    if secure:
        der = peer_certificate_der(transport)
        binding = tls_server_end_point(der) if der is not None else None
    name = choose_mechanism(
        auth,
        server.auth_methods,
        requested=auth.method or options.auth_method,
        channel_binding=binding is not None,
        secure=secure,
    )
    if not secure and not options.allow_insecure_auth and not connection_is_local(options, transport):
        raise AuthenticationError(
            f"refusing to send credentials to {options.host} over a cleartext connection: "
            "use TLS (secure=True, or STARTTLS, which require_tls=True makes mandatory), "
            "or pass allow_insecure_auth=True to SMTPConnection to accept the risk"
        )
    log.info("authenticating as {user} with {mechanism}", user=auth.display_user, mechanism=name)
    if name in TOKEN_PREFERENCE:
        await _token_login(protocol, name, auth, options, log)
        return
    mechanism = _password_mechanism(name, auth, channel_binding=binding, offered=server.auth_methods)
    outcome = await run_exchange(protocol, mechanism)
    if not outcome.accepted:
        raise _refused(outcome, name, auth.user or "(unknown)", mechanism)

