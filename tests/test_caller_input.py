"""
Bad caller input: every public method and value object given wrong types,
control characters and huge values.

The rule (API.md): a wrong *type* is a :class:`TypeError`, an unusable
*value* a :class:`ValueError` or the documented error code (``EENVELOPE``
for envelope values, ``EAUTH`` for missing credentials, ``EPROTOCOL`` for a
call in the wrong state), raised or failed *before anything is written*.
So every check on a live connection asserts on the wire: nothing was
written for the bad call, and the very next good call still produces the
exact bytes it should (no half-written command was left behind).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from adversary import within
from twisted_smtpconn import (
    DSN,
    Auth,
    Envelope,
    EnvelopeError,
    SMTPConnection,
    SMTPConnectionError,
    SMTPPool,
)
from wiretools import Wire, failure, result

EHLO = (
    b"250-server.example\r\n250-SIZE\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n"
    b"250 AUTH PLAIN LOGIN CRAM-MD5 XOAUTH2\r\n"
)

GOOD = Envelope("a@example.org", ["b@example.org"])
GOOD_LINES = b"MAIL FROM:<a@example.org>\r\n"


def connected(**options: Any) -> Wire:
    wire = Wire(**options)
    wire.connect(EHLO)
    return wire


def still_works(wire: Wire) -> None:
    """The connection is usable and in step: a good send, byte for byte."""
    assert wire.client() == b""
    d = wire.conn.send(GOOD, b"ok")
    assert wire.client() == GOOD_LINES
    wire.server(b"250 ok\r\n")
    assert wire.client() == b"RCPT TO:<b@example.org>\r\n"
    wire.server(b"250 ok\r\n")
    assert wire.client() == b"DATA\r\n"
    wire.server(b"354 go\r\n")
    assert wire.client() == b"ok\r\n.\r\n"
    wire.server(b"250 queued\r\n")
    assert result(d).accepted == ["b@example.org"]


def refused(d: Any) -> BaseException:
    """The exception a call failed with, at once."""
    assert d.called, "a bad call must fail at once, not wait"
    return failure(d)


# -- SMTPConnection(...) ------------------------------------------------------------------

BOOL_OPTIONS = ["secure", "ignore_tls", "require_tls", "opportunistic_tls", "debug", "allow_insecure_auth", "lmtp"]
TIMEOUTS = ["connection_timeout", "greeting_timeout", "socket_timeout"]

CONSTRUCTOR_CASES: list[tuple[dict[str, Any], type[Exception]]] = [
    *[({option: value}, TypeError) for option in BOOL_OPTIONS for value in ("yes", 1, None, 0.0)],
    *[({option: value}, TypeError) for option in TIMEOUTS for value in ("5", None, True, b"5", [5])],
    *[({option: value}, ValueError) for option in TIMEOUTS for value in (math.nan, math.inf, -math.inf, -1, 0, 0.0)],
    ({"host": 5}, TypeError),
    ({"host": b"localhost"}, TypeError),
    ({"host": ""}, TypeError),
    ({"host": "mail.example.com\r\nMAIL FROM:<x>"}, ValueError),
    ({"host": "mail example"}, ValueError),
    ({"host": "mail\x00.example"}, ValueError),
    ({"port": 25.0}, TypeError),
    ({"port": True}, TypeError),
    ({"port": -25}, ValueError),
    ({"port": 2**64}, ValueError),
    ({"name": 5}, TypeError),
    ({"name": "client example"}, ValueError),
    ({"name": "client.example\r\nRSET"}, ValueError),
    ({"name": "bücher.example"}, ValueError),
    ({"name": "a" * 64 + ".example"}, ValueError),
    ({"name": ".".join(["abcdefgh"] * 40)}, ValueError),
    ({"name": "[300.1.1.1]"}, ValueError),
    ({"name": "[IPv6:not-an-address]"}, ValueError),
    ({"local_address": 127}, TypeError),
    ({"local_address": "127.0.0.1\r\n"}, ValueError),
    ({"local_address": "not-an-address"}, ValueError),
    ({"local_address": "localhost"}, ValueError),
    ({"auth_method": 5}, TypeError),
    ({"auth_method": "PLAIN\r\nQUIT"}, ValueError),
    ({"auth_method": "PLAIN LOGIN"}, ValueError),
    ({"logger": "stderr"}, TypeError),
    ({"logger": 1}, TypeError),
    ({"tls": "on"}, TypeError),
    ({"tls": {"verify": False}}, TypeError),
    ({"tls": {"ca_certs": 5}}, TypeError),
    ({"tls": {"servername": "mail.example\r\nX"}}, ValueError),
    ({"tls": {"min_version": "SSLv3"}}, ValueError),
    ({"endpoint": object()}, TypeError),
    ({"endpoint": "tcp:127.0.0.1:25"}, TypeError),
    ({"connection": 3}, TypeError),
    ({"colour": "blue"}, TypeError),
]


@pytest.mark.parametrize(("kwargs", "error"), CONSTRUCTOR_CASES, ids=lambda v: repr(v)[:60])
def test_bad_constructor_options(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error) as raised:
        SMTPConnection(**kwargs)
    # A clear message: it names the option (or the offending key).
    name = next(iter(kwargs))
    shown = str(raised.value)
    assert name in shown or (isinstance(kwargs[name], dict) and any(k in shown for k in kwargs[name])), shown


def test_contradicting_tls_options_are_refused() -> None:
    for kwargs in (
        {"ignore_tls": True, "require_tls": True},
        {"ignore_tls": True, "opportunistic_tls": True},
        {"require_tls": True, "opportunistic_tls": True},
        {"secure": True, "ignore_tls": True},
    ):
        with pytest.raises(ValueError):
            SMTPConnection(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host": "a" * 100_000},
        {"host": "nosuchhost.invalid"},
        pytest.param(
            {"host": "127.0.0.1", "local_address": "192.0.2.123"},
            # Twisted's tcp.Client never closes the socket whose bind()
            # failed (its ResourceWarning is Twisted's, not ours).
            marks=pytest.mark.filterwarnings("ignore::ResourceWarning"),
        ),
    ],
    ids=["huge-host", "unresolvable-host", "foreign-local-address"],
)
@pytest_twisted.ensureDeferred
async def test_values_only_the_network_can_refuse_fail_as_econnection(kwargs: dict[str, Any]) -> None:
    """Accepted at construction, they fail at connect with a contract code."""
    import gc

    from twisted.internet import reactor

    conn = SMTPConnection(port=9, name="client.example", connection_timeout=5.0, **kwargs)
    try:
        await within(conn.connect(), 15.0, reactor)
    except SMTPConnectionError as error:
        assert error.code in ("ECONNECTION", "ETIMEDOUT"), repr(error)
    else:
        raise AssertionError("connected to something that cannot exist")
    await within(conn.when_closed(), 5.0, reactor)
    gc.collect()  # any leaked socket warns now, inside this test


# -- send(envelope, message) --------------------------------------------------------------

ENVELOPE_TYPE_ERRORS: list[object] = [
    None,
    5,
    "a@example.org",
    b"a@example.org",
    ["a@example.org", "b@example.org"],
    {"to": "b@example.org"},  # no "from": not silently the null sender
    {"from": 5, "to": "b@example.org"},
    {"from": b"a@example.org", "to": "b@example.org"},
    {"from": "a@example.org", "to": 5},
    {"from": "a@example.org", "to": b"b@example.org"},
    {"from": "a@example.org", "to": [b"b@example.org"]},
    {"from": "a@example.org", "to": {"b@example.org": 1}},
    {"from": "a@example.org", "to": "b@example.org", "size": "10"},
    {"from": "a@example.org", "to": "b@example.org", "size": 10.0},
    {"from": "a@example.org", "to": "b@example.org", "size": True},
    {"from": "a@example.org", "to": "b@example.org", "use8BitMime": "yes"},
    {"from": "a@example.org", "to": "b@example.org", "smtputf8": 1},
    {"from": "a@example.org", "to": "b@example.org", "dsn": 5},
    {"from": "a@example.org", "to": "b@example.org", "dsn": "SUCCESS"},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"colour": "red"}},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"notify": 5}},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"envid": 5}},
    {"from": "a@example.org", "to": "b@example.org", "colour": "red"},
    {5: "a@example.org"},
]

#: Control characters that may never be in an envelope value.
CONTROLS = ["\r", "\n", "\r\n", "\x00", "\t", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9f"]

ENVELOPE_VALUE_ERRORS: list[dict[str, object]] = [
    *[{"from": f"a{c}@example.org", "to": "b@example.org"} for c in CONTROLS],
    *[{"from": "a@example.org", "to": ["b@example.org", f"c@example.org{c}RSET"]} for c in CONTROLS],
    *[{"from": "a@example.org", "to": "b@example.org", "dsn": {"envid": f"id{c}x"}} for c in CONTROLS],
    *[{"from": "a@example.org", "to": "b@example.org", "dsn": {"orcpt": f"rfc822;b{c}@x.org"}} for c in CONTROLS],
    *[{"from": "a@example.org", "to": "b@example.org", "dsn": {"notify": f"SUCCESS{c}"}} for c in CONTROLS],
    {"from": "a@example.org", "to": "b@example.org\ud800"},
    {"from": "a b@example.org", "to": "b@example.org"},
    {"from": "a@example.org", "to": "<b@example.org> NOTIFY=NEVER"},
    {"from": "a@example.org>", "to": "b@example.org"},
    {"from": "a@example.org", "to": "b@exa<mple.org"},
    {"from": "a@example.org", "to": []},
    {"from": "a@example.org", "to": ""},
    {"from": "a@example.org"},
    {"from": "a@example.org", "to": None},
    {"from": "a" * 65 + "@example.org", "to": "b@example.org"},
    {"from": "a@" + "b" * 300 + ".org", "to": "b@example.org"},
    {"from": "a@example.org", "to": "b@example.org" + "x" * 100_000},
    {"from": "a@example.org", "to": "b@example.org", "size": -1},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"ret": "ALL"}},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"ret": "FULL HDRS"}},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"notify": "NEVER,SUCCESS"}},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"notify": "SOMETIMES"}},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"envid": "x" * 101}},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"envid": "ümlaut"}},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"orcpt": "rfc822;" + "b" * 1000 + "@x.org"}},
    {"from": "a@example.org", "to": "b@example.org", "dsn": {"orcpt": "rfc822;"}},
]


@pytest.mark.parametrize("envelope", ENVELOPE_TYPE_ERRORS, ids=lambda v: repr(v)[:50])
def test_send_with_an_envelope_of_the_wrong_type(envelope: object) -> None:
    wire = connected()
    assert isinstance(refused(wire.conn.send(envelope, b"m")), TypeError)  # type: ignore[arg-type]
    still_works(wire)


@pytest.mark.parametrize("envelope", ENVELOPE_VALUE_ERRORS, ids=lambda v: repr(v)[:50])
def test_send_with_an_unusable_envelope_value(envelope: dict[str, object]) -> None:
    wire = connected()
    error = refused(wire.conn.send(envelope, b"m"))
    assert isinstance(error, EnvelopeError) and error.code == "EENVELOPE", repr(error)
    # The message says what is wrong without echoing raw control characters
    # or an unbounded value.
    text = str(error)
    assert "\r" not in text and "\n" not in text and "\x00" not in text
    assert len(text) < 1000
    still_works(wire)


def test_a_size_too_long_for_the_size_parameter_is_refused_before_sending() -> None:
    """RFC 1870: ``size-value ::= 1*20DIGIT``; a longer number cannot be sent."""
    wire = connected()
    error = refused(wire.conn.send(Envelope("a@example.org", "b@example.org", size=10**20), b"m"))
    assert error.code == "EENVELOPE"
    still_works(wire)
    d = wire.conn.send(Envelope("a@example.org", "b@example.org", size=10**20 - 1), b"m")
    assert wire.client() == b"MAIL FROM:<a@example.org> SIZE=99999999999999999999\r\n"
    wire.server(b"552 5.3.4 too big\r\n")
    assert refused(d).code == "EENVELOPE"


def test_many_recipients_are_many_whole_lines() -> None:
    wire = connected()
    rcpts = [f"r{n}@example.org" for n in range(1000)]
    d = wire.conn.send(Envelope("a@example.org", rcpts), b"m")
    assert wire.client() == GOOD_LINES
    wire.server(b"250 ok\r\n")
    for address in rcpts:
        assert wire.client() == f"RCPT TO:<{address}>\r\n".encode()
        wire.server(b"250 ok\r\n")
    assert wire.client() == b"DATA\r\n"
    wire.server(b"354 go\r\n", b"250 queued\r\n")
    assert result(d).accepted == rcpts


MESSAGE_TYPE_ERRORS: list[object] = [None, 5, 3.5, object(), io.StringIO("text mode"), {"body": b"x"}, {b"a", b"b"}]


@pytest.mark.parametrize("message", MESSAGE_TYPE_ERRORS, ids=lambda v: type(v).__name__)
def test_send_with_a_message_of_the_wrong_type(message: object) -> None:
    wire = connected()
    assert isinstance(refused(wire.conn.send(GOOD, message)), TypeError)
    still_works(wire)


def _raising() -> Iterator[bytes]:
    yield b"Subject: half\r\n\r\nfirst line\r\n"
    raise OSError("the disk went away")


@pytest.mark.parametrize(
    "message",
    [["str chunks are not bytes"], [b"ok", 5], "lone surrogate \ud800", _raising],
    ids=["str-chunks", "int-chunk", "unencodable-str", "raising-generator"],
)
def test_a_message_that_fails_while_read_never_ends_the_data(message: object) -> None:
    """
    Problems only reading can find fail with ``ESTREAM``; the connection is
    dropped *without* the final dot, so the server discards the partial
    message rather than deliver it.
    """
    if callable(message):
        message = message()
    wire = connected()
    d = wire.conn.send(GOOD, message)
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n")
    error = refused(d)
    assert error.code == "ESTREAM"
    written = wire.client()
    assert written.startswith(GOOD_LINES + b"RCPT TO:<b@example.org>\r\nDATA\r\n")
    assert not written.endswith(b".\r\n")
    assert wire.transport.disconnecting


# -- login(auth) ----------------------------------------------------------------------------

AUTH_TYPE_ERRORS: list[object] = [
    None,
    5,
    "user:password",
    [("user", "u"), ("pass", "p")],
    {"user": 5, "pass": "p"},
    {"user": "u", "pass": 5},
    {"user": "u", "pass": b"p"},
    {"user": "u", "password": "p", "pass": "p"},
    {"user": "u", "pass": "p", "colour": "red"},
    {"user": "u", "xoauth2": 5},
    {"user": "u", "pass": "p", "method": 5},
]

AUTH_VALUE_ERRORS: list[object] = [
    *[{"user": f"u{c}x", "pass": "p"} for c in ("\r", "\n", "\x00", "\x01")],
    *[{"user": "u", "pass": f"p{c}x"} for c in ("\r", "\n", "\x00", "\x01")],
    *[{"user": "u", "xoauth2": f"token{c}x"} for c in ("\r", "\n", "\x00", "\x01")],
    {"user": "u", "xoauth2": ""},
]


@pytest.mark.parametrize("auth", AUTH_TYPE_ERRORS, ids=lambda v: repr(v)[:50])
def test_login_with_credentials_of_the_wrong_type(auth: object) -> None:
    wire = connected(allow_insecure_auth=True)
    assert isinstance(refused(wire.conn.login(auth)), TypeError)  # type: ignore[arg-type]
    still_works(wire)


@pytest.mark.parametrize("auth", AUTH_VALUE_ERRORS, ids=lambda v: repr(v)[:50])
def test_login_with_unusable_credentials(auth: object) -> None:
    wire = connected(allow_insecure_auth=True)
    error = refused(wire.conn.login(auth))  # type: ignore[arg-type]
    assert isinstance(error, ValueError) or getattr(error, "code", None) == "EAUTH", repr(error)
    still_works(wire)


@pytest.mark.parametrize(
    "auth",
    [{"user": "u"}, {"pass": "p"}, {}, {"user": "u", "pass": "p", "method": "GSSAPI"}, {"user": "u", "pass": "p", "method": "PLAIN\r\nQUIT"}],
    ids=["no-password", "no-user", "nothing", "unoffered-mechanism", "mechanism-with-crlf"],
)
def test_login_that_cannot_be_attempted_fails_with_eauth_or_value_error(auth: dict[str, str]) -> None:
    wire = connected(allow_insecure_auth=True)
    error = refused(wire.conn.login(auth))
    assert isinstance(error, ValueError) or getattr(error, "code", None) == "EAUTH", repr(error)
    still_works(wire)


#: RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF;
#: RFC 4954 section 4: a SASL response line after 334 at most 12288.
COMMAND_LINE = 512
SASL_LINE = 12288


@pytest.mark.parametrize("mechanism", ["PLAIN", "XOAUTH2"])
def test_huge_credentials_never_make_an_overlong_command_line(mechanism: str) -> None:
    wire = Wire(allow_insecure_auth=True)
    wire.connect(f"250-server.example\r\n250 AUTH {mechanism}\r\n".encode())
    if mechanism == "XOAUTH2":
        d = wire.conn.login({"user": "u", "xoauth2": "t" * 4000})
    else:
        d = wire.conn.login({"user": "u" * 200, "pass": "p" * 600})
    first = wire.client()
    assert first.startswith(b"AUTH ") and len(first) <= COMMAND_LINE
    wire.server(b"334 \r\n")
    response = wire.client()
    assert response.endswith(b"\r\n") and len(response) <= SASL_LINE
    wire.server(b"235 2.7.0 ok\r\n")
    assert result(d) is None


# -- the other methods, and the wrong state -----------------------------------------------


def test_methods_that_take_no_arguments_refuse_them() -> None:
    wire = connected()
    for call in (lambda: wire.conn.reset(1), lambda: wire.conn.quit(True), lambda: wire.conn.connect("x"), lambda: wire.conn.when_closed(5)):  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            call()
    still_works(wire)


@pytest.mark.parametrize(
    ("event", "callback", "error"),
    [("conect", lambda: None, ValueError), (5, lambda: None, ValueError), ("error", "not callable", TypeError), ("end", None, TypeError)],
)
def test_on_with_bad_arguments(event: object, callback: object, error: type[Exception]) -> None:
    wire = connected()
    with pytest.raises(error):
        wire.conn.on(event, callback)  # type: ignore[arg-type]
    still_works(wire)


def test_every_method_in_the_wrong_state_fails_with_eprotocol_at_once() -> None:
    wire = Wire()
    for d in (wire.conn.send(GOOD, b"m"), wire.conn.reset(), wire.conn.login({"user": "u", "pass": "p"})):
        error = refused(d)
        assert isinstance(error, SMTPConnectionError) and error.code == "EPROTOCOL"
    assert wire.client() == b""
    wire.connect(EHLO)
    assert refused(wire.conn.connect()).code == "EPROTOCOL"
    wire.conn.close()
    wire.conn.close()  # twice: still nothing
    for d in (wire.conn.send(GOOD, b"m"), wire.conn.reset(), wire.conn.connect(), wire.conn.login({"user": "u", "pass": "p"})):
        assert refused(d).code == "EPROTOCOL"
    assert result(wire.conn.quit()) is None
    assert result(wire.conn.when_closed()) is None


# -- value objects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Envelope(None, "b@example.org"), TypeError),  # type: ignore[arg-type]
        (lambda: Envelope("a@example.org", None), TypeError),  # type: ignore[arg-type]
        (lambda: Envelope("a@example.org", "b@example.org", size=2**70 * 1.0), TypeError),  # type: ignore[arg-type]
        (lambda: Envelope("a@example.org", "b@example.org", use_8bit_mime=None), TypeError),  # type: ignore[arg-type]
        (lambda: DSN(ret=5), TypeError),  # type: ignore[arg-type]
        (lambda: DSN(notify=[5]), TypeError),  # type: ignore[list-item]
        (lambda: DSN(notify=b"NEVER"), TypeError),  # type: ignore[arg-type]
        (lambda: DSN(orcpt=["b@example.org"]), TypeError),  # type: ignore[arg-type]
        (lambda: Auth(user=5, password="p"), TypeError),  # type: ignore[arg-type]
        (lambda: Auth(user="u", password=b"p"), TypeError),  # type: ignore[arg-type]
        (lambda: Auth(user="u\r\n", password="p"), ValueError),
        (lambda: Auth(user="u", password="p\x00"), ValueError),
    ],
)
def test_value_objects_check_at_construction(build: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        build()


def test_credentials_are_not_in_the_repr_of_auth() -> None:
    auth = Auth(user="someone", password="pa55-w0rd", xoauth2="ya29.tok3n")
    assert "pa55-w0rd" not in repr(auth) and "ya29.tok3n" not in repr(auth)


# -- SMTPPool -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_connections": "5"}, TypeError),
        ({"max_connections": 0}, ValueError),
        ({"max_messages": True}, TypeError),
        ({"max_messages": -1}, ValueError),
        ({"rate_limit": 0}, ValueError),
        ({"rate_limit": 1.5}, ValueError),
        ({"max_retries": -1}, ValueError),
        ({"retry_delay": 0}, ValueError),
        ({"idle_timeout": "30"}, ValueError),
        ({"max_retry_delay": math.nan}, ValueError),
        ({"name": "bad name"}, ValueError),
        ({"socket_timeout": math.inf}, ValueError),
        ({"colour": "red"}, TypeError),
        ({"auth": "user:pass"}, TypeError),
        ({"auth": {"user": "u", "pass": "p\r\n"}}, ValueError),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_pool_options(kwargs: dict[str, Any], error: type[Exception]) -> None:
    from twisted.internet.testing import MemoryReactorClock

    with pytest.raises(error):
        SMTPPool(reactor=MemoryReactorClock(), **kwargs)


def test_pool_send_checks_before_queueing() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from wiretools import AutoEndpoint, AutoServer

    server = AutoServer()
    pool = SMTPPool(endpoint=AutoEndpoint(server), reactor=MemoryReactorClock(), name="client.example")
    assert isinstance(refused(pool.send(None, b"m")), TypeError)  # type: ignore[arg-type]
    assert refused(pool.send({"from": "a@x.org", "to": "b@x.org\r\nRSET"}, b"m")).code == "EENVELOPE"  # type: ignore[union-attr]
    assert isinstance(refused(pool.send(GOOD, 42)), TypeError)
    assert server.connections == 0 and server.commands == []
    assert result(pool.send(GOOD, b"fine")).accepted == ["b@example.org"]
    result(pool.close())
    assert refused(pool.send(GOOD, b"late")).code == "EPROTOCOL"  # type: ignore[union-attr]


@pytest.mark.parametrize("method", ["PLAIN\r\n", "PLAIN\r\nMAIL FROM:<x>", " LOGIN", "", "A" * 21, "CRAM MD5"])
def test_auth_method_must_be_a_sasl_name(method: str) -> None:
    from twisted_smtpconn import Auth

    with pytest.raises(ValueError):
        Auth(user="u", password="p", method=method)
