"""
Adversarial servers on real loopback sockets: each scenario of issue 7 with
its documented outcome, and never a hang.

Every scenario is a script in :mod:`adversary` playing a hostile or broken
server byte for byte on ``127.0.0.1``; the client is the real
:class:`~twisted_smtpconn.SMTPConnection` over TCP.  Every await is bounded
(:func:`adversary.within`), so a client that hangs fails its test.  The
outcomes asserted here are the ones ``docs/security.rst`` documents:

==================================================  ===========================================
server behaviour                                    outcome
==================================================  ===========================================
slow greeting within ``greeting_timeout``           connects
silent greeting                                     ``ETIMEDOUT``
greeting trickled past ``greeting_timeout``         ``ETIMEDOUT`` (a deadline, not inactivity)
greeting 554 / 421 / other                          ``EPROTOCOL`` / ``ECONNECTION`` / ``EPROTOCOL``
non-numeric, malformed, truncated replies           ``EPROTOCOL`` (``ECONNECTION`` if cut by a close)
multi-line reply with mismatched codes              ``EPROTOCOL``
endless line, endless multi-line reply              ``EPROTOCOL``, client hangs up, memory bounded
421 at any step                                     ``ECONNECTION`` with the 421 (QUIT: succeeds)
reset or close at any step (mid-DATA too)           ``ECONNECTION``; ``delivery_unknown`` only
                                                    after the final dot
STARTTLS response injection                         ``ETLS``, nothing sent after ``STARTTLS``
STARTTLS stripped / refused by a MITM               ``ETLS`` with ``require_tls`` (nothing else
                                                    sent); cleartext otherwise, and no password
                                                    in cleartext to a non-loopback host
STARTTLS to a MITM's certificate                    ``ETLS``
huge EHLO list                                      parsed up to the caps, ``EPROTOCOL`` beyond
bogus SIZE parameter                                treated as "no declared limit"
every reply in one-byte writes                      works, byte-exact
replies sent ahead of their commands               ``EPROTOCOL``, nothing more written
final dot never answered                            ``ETIMEDOUT`` with ``delivery_unknown``
==================================================  ===========================================
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from adversary import (
    EHLO_PLAIN,
    STEPS,
    Dialogue,
    Peer,
    Scenario,
    ScriptedServer,
    TLSServerCreator,
    big_message,
    within,
)
from twisted_smtpconn import (
    Auth,
    Envelope,
    SMTPConnection,
    SMTPConnectionError,
)

#: The bound on every await of a test: far above any outcome's real time,
#: far below "hung".
LIMIT = 15.0

ENVELOPE = Envelope("sender@example.org", ["rcpt@example.org"])
MESSAGE = b"Subject: adversarial\r\n\r\nhello\r\n.leading dot\r\n"
MESSAGE_WIRE = b"Subject: adversarial\r\n\r\nhello\r\n..leading dot\r\n.\r\n"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def bounded(d: Deferred[Any] | Awaitable[Any], seconds: float = LIMIT) -> Any:
    """Await ``d`` (a Deferred or a coroutine) with a deadline."""
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)  # type: ignore[arg-type]
    return await within(d, seconds, _reactor())


async def outcome(d: Deferred[Any]) -> Any:
    """The result of ``d``, or the library error it failed with."""
    try:
        return await bounded(d)
    except SMTPConnectionError as error:
        return error


def connection(port: int, **options: Any) -> SMTPConnection:
    options.setdefault("name", "client.example")
    options.setdefault("greeting_timeout", 5.0)
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("connection_timeout", 5.0)
    return SMTPConnection("127.0.0.1", port, **options)


class Session:
    """One scripted server and the client connections made to it."""

    def __init__(self, scenario: Scenario) -> None:
        self.server = ScriptedServer(_reactor(), scenario)
        self.port = self.server.start()
        self.connections: list[SMTPConnection] = []

    def connect_to(self, **options: Any) -> SMTPConnection:
        conn = connection(self.port, **options)
        self.connections.append(conn)
        return conn

    @property
    def peer(self) -> Peer:
        assert self.server.peers, "the client never connected"
        return self.server.peers[0]

    async def close(self) -> None:
        for conn in self.connections:
            conn.close()
            await bounded(conn.when_closed())
        await bounded(self.server.stop())
        assert self.server.errors == [], self.server.errors


async def run(scenario: Scenario, body: Callable[[Session], Awaitable[None]]) -> Session:
    session = Session(scenario)
    try:
        await body(session)
    finally:
        await session.close()
    return session


def assert_closed_with(error: object, code: str, **attributes: object) -> SMTPConnectionError:
    assert isinstance(error, SMTPConnectionError), f"expected an error, got {error!r}"
    assert error.code == code, repr(error)
    for name, value in attributes.items():
        assert getattr(error, name) == value, f"{name}: {getattr(error, name)!r} != {value!r} in {error!r}"
    return error


# -- greetings ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_slow_greeting_within_the_timeout_connects() -> None:
    async def scenario(peer: Peer) -> None:
        await peer.sleep(0.3)
        await Dialogue()(peer)

    async def body(s: Session) -> None:
        conn = s.connect_to(greeting_timeout=5.0)
        assert await bounded(conn.connect()) is conn
        assert conn.greeting == "adversary.example ESMTP"
        await bounded(conn.quit())

    session = await run(scenario, body)
    assert session.peer.received == b"EHLO client.example\r\nQUIT\r\n"


@pytest_twisted.ensureDeferred
async def test_silent_greeting_times_out_and_hangs_up() -> None:
    async def scenario(peer: Peer) -> None:
        await peer.gone()

    async def body(s: Session) -> None:
        conn = s.connect_to(greeting_timeout=1.0)
        assert_closed_with(await outcome(conn.connect()), "ETIMEDOUT")
        await bounded(s.peer.gone())

    session = await run(scenario, body)
    assert session.peer.received == b""


@pytest_twisted.ensureDeferred
async def test_greeting_trickled_past_the_deadline_times_out() -> None:
    """
    ``greeting_timeout`` is "seconds from connect to the 220 greeting"
    (API.md): a server that keeps the socket busy with one byte at a time
    must not stretch it (a slow-loris server would hold the client forever).
    """
    greeting = b"".join(b"220-line %d\r\n" % n for n in range(20)) + b"220 done\r\n"

    async def scenario(peer: Peer) -> None:
        await peer.trickle(greeting, 0.02)  # about 5 s in all, each byte within 0.02 s
        await peer.gone()

    async def body(s: Session) -> None:
        conn = s.connect_to(greeting_timeout=1.0)
        error = assert_closed_with(await outcome(conn.connect()), "ETIMEDOUT")
        assert "greeting" in str(error)

    session = await run(scenario, body)
    assert b"EHLO" not in session.peer.received


@pytest.mark.parametrize(
    ("greeting", "code"),
    [
        (b"554 5.3.2 no SMTP service here\r\n", "EPROTOCOL"),
        (b"421 4.3.2 too busy, try later\r\n", "ECONNECTION"),
        (b"250 this is not a greeting\r\n", "EPROTOCOL"),
        (b"554-5.7.1 multi-line\r\n554 5.7.1 refusal\r\n", "EPROTOCOL"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_greeting_other_than_220(greeting: bytes, code: str) -> None:
    async def scenario(peer: Peer) -> None:
        peer.send(greeting)
        await peer.gone()

    async def body(s: Session) -> None:
        conn = s.connect_to()
        error = assert_closed_with(await outcome(conn.connect()), code, response_code=int(greeting[:3]))
        assert error.response is not None and error.response.startswith(greeting[:3].decode())
        await bounded(conn.when_closed())

    session = await run(scenario, body)
    assert b"EHLO" not in session.peer.received and b"MAIL" not in session.peer.received


# -- malformed replies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (b"hello there\r\n", "EPROTOCOL"),  # not numeric
        (b"25\r\n", "EPROTOCOL"),  # truncated code
        (b"2500 ok\r\n", "EPROTOCOL"),  # fourth character not space or hyphen
        (b"250_ok\r\n", "EPROTOCOL"),
        (b"199 too small\r\n", "EPROTOCOL"),  # outside 200..599
        (b"600 too large\r\n", "EPROTOCOL"),
        (b"\x00\x01\x02\r\n", "EPROTOCOL"),
        (b"\r\n", "EPROTOCOL"),  # an empty line
        (b"250-first\r\n550 second\r\n", "EPROTOCOL"),  # mismatched multi-line codes
        (b"250-first\r\n250-second\r\n251 third\r\n", "EPROTOCOL"),
        (b"25", "ECONNECTION"),  # cut short by a close: never completes
        (b"250-more to come\r\n", "ECONNECTION"),  # unfinished multi-line, then close
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_reply_to_ehlo(reply: bytes, code: str) -> None:
    async def scenario(peer: Peer) -> None:
        peer.send(b"220 adversary.example\r\n")
        await peer.expect_prefix(b"EHLO ")
        peer.send(reply)
        if code == "ECONNECTION":
            peer.close()
        await peer.gone()

    async def body(s: Session) -> None:
        conn = s.connect_to()
        assert_closed_with(await outcome(conn.connect()), code)
        await bounded(conn.when_closed())
        # The connection is gone: no later call can pair with a stray line.
        assert_closed_with(await outcome(conn.send(ENVELOPE, MESSAGE)), "EPROTOCOL")

    session = await run(scenario, body)
    assert session.peer.received == b"EHLO client.example\r\n"


@pytest_twisted.ensureDeferred
async def test_reply_without_line_end_then_silence_times_out() -> None:
    async def scenario(peer: Peer) -> None:
        peer.send(b"220 adversary.example\r\n")
        await peer.expect_prefix(b"EHLO ")
        peer.send(b"250 but no line end")
        await peer.gone()

    async def body(s: Session) -> None:
        conn = s.connect_to(socket_timeout=1.0)
        assert_closed_with(await outcome(conn.connect()), "ETIMEDOUT")

    await run(scenario, body)


@pytest_twisted.ensureDeferred
async def test_control_characters_in_replies_never_reach_error_text_raw() -> None:
    async def scenario(peer: Peer) -> None:
        peer.send(b"220 adversary.example\r\n")
        await peer.expect_prefix(b"EHLO ")
        peer.send(EHLO_PLAIN)
        await peer.expect_prefix(b"MAIL ")
        peer.send(b"550 5.7.1 \x1b[2J\x1b]0;pwned\x07 \xff\xfe go away\r\n")
        await _serve_rset_quit(peer)

    async def body(s: Session) -> None:
        conn = s.connect_to()
        await bounded(conn.connect())
        error = assert_closed_with(await outcome(conn.send(ENVELOPE, MESSAGE)), "EENVELOPE", response_code=550)
        for text in (str(error), repr(error), error.response or ""):
            assert "\x1b" not in text and "\x07" not in text
        assert "\\x1b" in str(error)
        await bounded(conn.quit())

    await run(scenario, body)


async def _serve_rset_quit(peer: Peer) -> None:
    while True:
        line = await peer.read_line()
        if line == b"QUIT":
            peer.send(b"221 bye\r\n")
            peer.close()
            return
        peer.send(b"250 ok\r\n")


# -- endless data: memory stays bounded -------------------------------------------------------

#: How much an endless server may write before giving up: far more than the
#: client may buffer (8 KiB lines, 64 KiB replies), far more than the
#: loopback socket buffers, so that hitting it means the client kept reading.
FLOOD_LIMIT = 256 * 1024 * 1024


@pytest.mark.parametrize(
    ("where", "start", "chunk"),
    [
        ("greeting", b"220-", b"x" * 65536),
        ("greeting", b"", b"220-" + b"y" * 200 + b"\r\n"),
        ("EHLO", b"250-", b"z" * 65536),
        ("EHLO", b"", b"250-" + b"A" * 100 + b"\r\n"),
        ("EHLO", b"", b"250-SHORT\r\n"),
    ],
    ids=["endless-greeting-line", "endless-greeting-reply", "endless-ehlo-line", "endless-ehlo-reply", "endless-short-lines"],
)
@pytest_twisted.ensureDeferred
async def test_endless_server_output_is_cut_off(where: str, start: bytes, chunk: bytes) -> None:
    written: list[int] = []

    async def scenario(peer: Peer) -> None:
        if where == "EHLO":
            peer.send(b"220 adversary.example\r\n")
            await peer.expect_prefix(b"EHLO ")
        peer.send(start)
        written.append(await peer.flood(chunk, FLOOD_LIMIT))

    async def body(s: Session) -> None:
        conn = s.connect_to()
        error = assert_closed_with(await outcome(conn.connect()), "EPROTOCOL")
        assert re.search(r"longer than|more than", str(error)), str(error)
        await bounded(s.peer.gone())

    await run(scenario, body)
    # The client hung up long before the server ran out of patience: it
    # stopped reading at its caps instead of buffering the flood.
    assert written and written[0] < FLOOD_LIMIT


# -- a 421, a reset or a close at every step --------------------------------------------------


async def full_session(conn: SMTPConnection, message: object = MESSAGE) -> dict[str, Any]:
    """connect, send, reset, quit; each step's result or library error."""
    results: dict[str, Any] = {}
    results["connect"] = await outcome(conn.connect())
    if isinstance(results["connect"], SMTPConnectionError):
        return results
    results["send"] = await outcome(conn.send(ENVELOPE, message))
    if isinstance(results["send"], SMTPConnectionError):
        return results
    results["reset"] = await outcome(conn.reset())
    if isinstance(results["reset"], SMTPConnectionError):
        return results
    results["quit"] = await outcome(conn.quit())
    return results


#: Which operation a fault at each step fails.
FAILED_OPERATION = {
    "greeting": "connect",
    "EHLO": "connect",
    "MAIL": "send",
    "RCPT": "send",
    "DATA": "send",
    "body": "send",
    "dot": "send",
    "RSET": "reset",
    "QUIT": None,  # the server went first: what quit() wanted anyway
}


@pytest.mark.parametrize("step", [s for s in STEPS if s != "body"])
@pytest_twisted.ensureDeferred
async def test_421_at_every_step(step: str) -> None:
    dialogue = Dialogue(fault_at=step, fault="421")

    async def body(s: Session) -> None:
        conn = s.connect_to()
        results = await full_session(conn)
        failed = FAILED_OPERATION[step]
        if failed is None:
            assert results["quit"] is None
        else:
            error = assert_closed_with(results[failed], "ECONNECTION", response_code=421)
            assert error.enhanced_status == "4.3.2"
            assert error.delivery_unknown is False
        await bounded(conn.when_closed())
        assert_closed_with(await outcome(conn.send(ENVELOPE, MESSAGE)), "EPROTOCOL")

    await run(dialogue, body)
    assert dialogue.faulted


@pytest_twisted.ensureDeferred
async def test_nothing_is_sent_after_a_421_to_rcpt() -> None:
    """
    RFC 5321 3.8: after a 421 the server closes the channel; the client
    says nothing more and reports the 421 itself (not the loss that follows).
    """
    dialogue = Dialogue(fault_at="RCPT", fault="421")

    async def body(s: Session) -> None:
        conn = s.connect_to()
        await bounded(conn.connect())
        envelope = Envelope("sender@example.org", ["one@example.org", "two@example.org"])
        assert_closed_with(await outcome(conn.send(envelope, MESSAGE)), "ECONNECTION", response_code=421)
        await bounded(s.peer.gone())

    session = await run(dialogue, body)
    assert b"two@example.org" not in session.peer.received


@pytest.mark.parametrize("fault", ["reset", "close"])
@pytest.mark.parametrize("step", STEPS)
@pytest_twisted.ensureDeferred
async def test_connection_cut_at_every_step(step: str, fault: str) -> None:
    """
    A reset (RST) or a close (FIN) at each step, mid-DATA included: the
    operation fails with ``ECONNECTION``, and only a cut after the final dot
    is marked ``delivery_unknown`` (the server may have the message).
    """
    dialogue = Dialogue(fault_at=step, fault=fault, body_bytes=4096)
    message: object = big_message(24 * 1024 * 1024) if step == "body" else MESSAGE

    async def body(s: Session) -> None:
        conn = s.connect_to()
        results = await full_session(conn, message)
        failed = FAILED_OPERATION[step]
        if failed is None:
            assert results["quit"] is None
        else:
            error = assert_closed_with(results[failed], "ECONNECTION")
            assert error.delivery_unknown is (step == "dot")
        await bounded(conn.when_closed())

    await run(dialogue, body)
    assert dialogue.faulted
    if step == "dot":
        assert dialogue.messages == [MESSAGE_WIRE]
    elif step == "body":
        assert dialogue.messages == []


@pytest.mark.parametrize("step", ["MAIL", "RCPT", "DATA", "body", "RSET"])
@pytest_twisted.ensureDeferred
async def test_silence_at_a_step_times_out(step: str) -> None:
    dialogue = Dialogue(fault_at=step, fault="silence", body_bytes=4096)
    # Larger than every buffer on the way: the server that stops reading
    # stops the client mid-DATA, before the final dot.
    message: object = big_message(24 * 1024 * 1024) if step == "body" else MESSAGE

    async def body(s: Session) -> None:
        conn = s.connect_to(socket_timeout=1.0)
        results = await full_session(conn, message)
        error = assert_closed_with(results[FAILED_OPERATION[step]], "ETIMEDOUT")
        assert error.delivery_unknown is False
        await bounded(conn.when_closed())

    await run(dialogue, body)


@pytest_twisted.ensureDeferred
async def test_final_dot_never_answered() -> None:
    """
    The whole message, final dot included, went out and the server never
    answers: ``ETIMEDOUT`` after ``socket_timeout``, marked
    ``delivery_unknown`` -- the server has the message and may deliver it,
    so it must not be retried (RFC 1047).
    """
    dialogue = Dialogue(fault_at="dot", fault="silence")

    async def body(s: Session) -> None:
        conn = s.connect_to(socket_timeout=1.0)
        await bounded(conn.connect())
        error = assert_closed_with(await outcome(conn.send(ENVELOPE, MESSAGE)), "ETIMEDOUT")
        assert error.delivery_unknown is True
        await bounded(s.peer.gone())
        await bounded(conn.when_closed())

    await run(dialogue, body)
    assert dialogue.messages == [MESSAGE_WIRE]


@pytest_twisted.ensureDeferred
async def test_stalled_message_source_does_not_outlive_the_connection() -> None:
    """
    The caller's async message source stalls mid-DATA; the server goes
    silent.  The socket timeout must end the send (``ETIMEDOUT``), not leave
    it waiting on the source forever.
    """
    never: Deferred[None] = Deferred()

    async def stalling() -> AsyncIterator[bytes]:
        yield b"Subject: stalls\r\n\r\nfirst line\r\n"
        await never
        yield b"never sent\r\n"

    dialogue = Dialogue(fault_at="body", fault="silence", body_bytes=10)

    async def body(s: Session) -> None:
        conn = s.connect_to(socket_timeout=1.0)
        await bounded(conn.connect())
        error = assert_closed_with(await outcome(conn.send(ENVELOPE, stalling())), "ETIMEDOUT")
        assert error.delivery_unknown is False
        await bounded(conn.when_closed())

    await run(dialogue, body)
    assert never.called  # cancelled: the source was told nobody waits for it


# -- STARTTLS: injection, stripping, a MITM's certificate -------------------------------------


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    trustme = pytest.importorskip("trustme")

    directory: Path = tmp_path_factory.mktemp("adversarial-tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("mail.example.com", "127.0.0.1", "localhost")
    mitm_ca = trustme.CA()
    mitm_leaf = mitm_ca.issue_cert("mail.example.com", "127.0.0.1", "localhost")
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))

    def options(cert: Any) -> TLSServerCreator:
        path = directory / f"server-{id(cert)}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        return TLSServerCreator(str(path))

    return {"ca_certs": str(ca_path), "server": options(leaf), "mitm": options(mitm_leaf)}


EHLO_STARTTLS = b"250-adversary.example\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"
EHLO_STRIPPED = b"250-adversary.example\r\n250 AUTH PLAIN LOGIN\r\n"


def tls_connection(s: Session, **options: Any) -> SMTPConnection:
    """A client that believes it talks to mail.example.com (a name, not loopback)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint

    options.setdefault("name", "client.example")
    options.setdefault("greeting_timeout", 5.0)
    options.setdefault("socket_timeout", 5.0)
    endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", s.port, timeout=5)
    conn = SMTPConnection("mail.example.com", 25, endpoint=endpoint, **options)
    s.connections.append(conn)
    return conn


def starttls_server(context: Any, after_tls_ehlo: bytes = b"250-adversary.example\r\n250 AUTH LOGIN\r\n") -> Scenario:
    async def scenario(peer: Peer) -> None:
        peer.send(b"220 adversary.example\r\n")
        await peer.expect_prefix(b"EHLO ")
        peer.send(EHLO_STARTTLS)
        await peer.expect(b"STARTTLS")
        peer.send(b"220 2.0.0 ready\r\n")
        peer.start_tls(context)
        await peer.expect_prefix(b"EHLO ")
        peer.send(after_tls_ehlo)
        await _serve_rset_quit(peer)

    return scenario


@pytest_twisted.ensureDeferred
async def test_starttls_forgets_what_cleartext_said(tls_material: dict[str, Any]) -> None:
    async def body(s: Session) -> None:
        conn = tls_connection(s, tls={"ca_certs": tls_material["ca_certs"]})
        await bounded(conn.connect())
        assert conn.secure is True
        # Only the hello over TLS counts: PLAIN and STARTTLS were cleartext claims.
        assert conn.auth_methods == ["LOGIN"]
        assert "STARTTLS" not in conn.extensions
        await bounded(conn.quit())

    await run(starttls_server(tls_material["server"]), body)


@pytest.mark.parametrize(
    "injected",
    [
        b"250-injected.example\r\n250 AUTH PLAIN\r\n",
        b"250 ok\r\n",
        b"5",  # even a fragment of a line
    ],
)
@pytest_twisted.ensureDeferred
async def test_starttls_response_injection(tls_material: dict[str, Any], injected: bytes) -> None:
    """
    Bytes after the 220 to STARTTLS, in the same cleartext read, were put
    there by somebody on the path: ``ETLS``, and not one byte more is sent.
    """

    async def scenario(peer: Peer) -> None:
        peer.send(b"220 adversary.example\r\n")
        await peer.expect_prefix(b"EHLO ")
        peer.send(EHLO_STARTTLS)
        await peer.expect(b"STARTTLS")
        peer.send(b"220 2.0.0 ready\r\n" + injected)
        await peer.gone()

    async def body(s: Session) -> None:
        conn = tls_connection(s, tls={"ca_certs": tls_material["ca_certs"]})
        assert_closed_with(await outcome(conn.connect()), "ETLS")
        await bounded(s.peer.gone())

    session = await run(scenario, body)
    assert session.peer.received == b"EHLO client.example\r\nSTARTTLS\r\n"


@pytest.mark.parametrize(
    ("mitm_ehlo", "mitm_starttls_reply"),
    [(EHLO_STRIPPED, None), (EHLO_STARTTLS, b"454 4.7.0 TLS not available\r\n")],
    ids=["stripped-from-ehlo", "refused"],
)
@pytest_twisted.ensureDeferred
async def test_starttls_stripping_with_require_tls(
    tls_material: dict[str, Any], mitm_ehlo: bytes, mitm_starttls_reply: bytes | None
) -> None:
    async def scenario(peer: Peer) -> None:
        peer.send(b"220 adversary.example\r\n")
        await peer.expect_prefix(b"EHLO ")
        peer.send(mitm_ehlo)
        if mitm_starttls_reply is not None:
            await peer.expect(b"STARTTLS")
            peer.send(mitm_starttls_reply)
        await _serve_rset_quit(peer)

    async def body(s: Session) -> None:
        conn = tls_connection(s, require_tls=True, tls={"ca_certs": tls_material["ca_certs"]})
        assert_closed_with(await outcome(conn.connect()), "ETLS")
        await bounded(conn.when_closed())
        assert_closed_with(await outcome(conn.login(Auth(user="u", password="hunter2"))), "EPROTOCOL")

    session = await run(scenario, body)
    received = bytes(session.peer.received)
    assert b"MAIL" not in received and b"AUTH" not in received and b"hunter2" not in received


@pytest_twisted.ensureDeferred
async def test_stripped_starttls_never_sends_a_password_in_cleartext(tls_material: dict[str, Any]) -> None:
    """
    Without ``require_tls`` a stripped STARTTLS leaves the session in
    cleartext (as the seed does), but a password is not sent in cleartext
    to a host that is not loopback unless ``allow_insecure_auth``.
    """

    async def scenario(peer: Peer) -> None:
        peer.send(b"220 adversary.example\r\n")
        await peer.expect_prefix(b"EHLO ")
        peer.send(EHLO_STRIPPED)
        await _serve_rset_quit(peer)

    async def body(s: Session) -> None:
        conn = tls_connection(s, tls={"ca_certs": tls_material["ca_certs"]})
        await bounded(conn.connect())
        assert conn.secure is False
        error = assert_closed_with(await outcome(conn.login(Auth(user="u", password="hunter2"))), "EAUTH")
        assert "hunter2" not in str(error) + repr(error)
        await bounded(conn.quit())

    session = await run(scenario, body)
    received = bytes(session.peer.received)
    assert b"AUTH" not in received
    assert b"hunter2" not in received and b"aHVudGVyMg" not in received


@pytest_twisted.ensureDeferred
async def test_starttls_to_a_mitm_certificate(tls_material: dict[str, Any]) -> None:
    async def body(s: Session) -> None:
        conn = tls_connection(s, tls={"ca_certs": tls_material["ca_certs"]})
        assert_closed_with(await outcome(conn.connect()), "ETLS")
        assert conn.secure is False

    session = await run(starttls_server(tls_material["mitm"]), body)
    # Nothing but the hello and STARTTLS in cleartext, and no second EHLO.
    assert session.peer.received.startswith(b"EHLO client.example\r\nSTARTTLS\r\n")
    assert session.peer.received.count(b"EHLO") == 1


# -- what the server says about itself ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_huge_ehlo_list_within_the_caps() -> None:
    lines = [b"250-adversary.example"] + [b"250-X-EXT-%04d param%d" % (n, n) for n in range(900)] + [b"250 SIZE 1000"]
    ehlo = b"\r\n".join(lines) + b"\r\n"

    async def body(s: Session) -> None:
        conn = s.connect_to()
        await bounded(conn.connect())
        assert len(conn.extensions) == 901
        assert conn.extensions["X-EXT-0899"] == "param899"
        assert conn.extensions["SIZE"] == "1000"
        await bounded(conn.quit())

    await run(Dialogue(ehlo=ehlo), body)


@pytest.mark.parametrize("count", [1500, 20000])
@pytest_twisted.ensureDeferred
async def test_huge_ehlo_list_beyond_the_caps(count: int) -> None:
    ehlo = b"".join(b"250-X-EXT-%05d\r\n" % n for n in range(count)) + b"250 END\r\n"

    async def body(s: Session) -> None:
        conn = s.connect_to()
        assert_closed_with(await outcome(conn.connect()), "EPROTOCOL")

    await run(Dialogue(ehlo=ehlo), body)


@pytest.mark.parametrize(
    "size",
    [b"SIZE abc", b"SIZE -5", b"SIZE 1e9", b"SIZE 99999999999999999999999999999999", b"SIZE", b"SIZE 0", b"SIZE \xff\xfe"],
)
@pytest_twisted.ensureDeferred
async def test_bogus_size_is_no_declared_limit(size: bytes) -> None:
    ehlo = b"250-adversary.example\r\n250 " + size + b"\r\n"
    dialogue = Dialogue(ehlo=ehlo)

    async def body(s: Session) -> None:
        conn = s.connect_to()
        await bounded(conn.connect())
        info = await bounded(conn.send(Envelope("a@example.org", ["b@example.org"], size=5000), MESSAGE))
        assert info.accepted == ["b@example.org"]
        await bounded(conn.quit())

    session = await run(dialogue, body)
    assert b"MAIL FROM:<a@example.org> SIZE=5000\r\n" in session.peer.received
    assert dialogue.messages == [MESSAGE_WIRE]


# -- timing of replies ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_reply_in_one_byte_writes() -> None:
    async def scenario(peer: Peer) -> None:
        async def say(data: bytes) -> None:
            await peer.send_bytewise(data, 0.001)

        await say(b"220-adversary.example\r\n220 ESMTP\r\n")
        await peer.expect(b"EHLO client.example")
        await say(b"250-adversary.example\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n")
        await peer.expect(b"MAIL FROM:<sender@example.org>")
        await say(b"250 2.1.0 ok\r\n")
        await peer.expect(b"RCPT TO:<rcpt@example.org>")
        await say(b"250 2.1.5 ok\r\n")
        await peer.expect(b"DATA")
        await say(b"354 go\r\n")
        if await peer.read_message() != MESSAGE_WIRE:
            raise AssertionError("message differs")
        await say(b"250 2.0.0 queued as ONEBYTE\r\n")
        await peer.expect(b"QUIT")
        await say(b"221 bye\r\n")
        peer.close()

    async def body(s: Session) -> None:
        conn = s.connect_to()
        await bounded(conn.connect())
        assert conn.greeting == "adversary.example\nESMTP"
        assert conn.extensions == {"SIZE": "1000000", "8BITMIME": ""}
        info = await bounded(conn.send(ENVELOPE, MESSAGE))
        assert info.response == "250 2.0.0 queued as ONEBYTE"
        await bounded(conn.quit())

    session = await run(scenario, body)
    assert session.peer.received == (
        b"EHLO client.example\r\nMAIL FROM:<sender@example.org>\r\nRCPT TO:<rcpt@example.org>\r\n"
        b"DATA\r\n" + MESSAGE_WIRE + b"QUIT\r\n"
    )

@pytest_twisted.ensureDeferred
async def test_a_reply_ahead_of_its_command_is_a_protocol_error() -> None:
    """
    A server that answers ahead of the command, here the EHLO reply in the
    same read as the greeting: nobody waited for that reply when it came, so
    the dialogue is out of step (a later reply would pair with the wrong
    command).  ``EPROTOCOL``, and nothing is written: not even EHLO.
    """

    async def scenario(peer: Peer) -> None:
        peer.send(b"220 adversary.example\r\n" + EHLO_PLAIN)
        await peer.gone()

    async def body(s: Session) -> None:
        conn = s.connect_to()
        assert_closed_with(await outcome(conn.connect()), "EPROTOCOL", response_code=250)

    session = await run(scenario, body)
    assert session.peer.received == b""


@pytest_twisted.ensureDeferred
async def test_a_final_reply_ahead_of_the_message_is_a_protocol_error() -> None:
    """
    The final reply sent with the 354, before the message: ``EPROTOCOL``
    and not one byte of the message is written, so nothing half-sent can be
    taken for delivered.
    """

    async def scenario(peer: Peer) -> None:
        peer.send(b"220 adversary.example\r\n")
        await peer.expect(b"EHLO client.example")
        peer.send(EHLO_PLAIN)
        await peer.expect(b"MAIL FROM:<sender@example.org>")
        peer.send(b"250 2.1.0 ok\r\n")
        await peer.expect(b"RCPT TO:<rcpt@example.org>")
        peer.send(b"250 2.1.5 ok\r\n")
        await peer.expect(b"DATA")
        peer.send(b"354 go\r\n250 2.0.0 queued ahead of the message\r\n")
        await peer.gone()

    async def body(s: Session) -> None:
        conn = s.connect_to()
        await bounded(conn.connect())
        error = assert_closed_with(await outcome(conn.send(ENVELOPE, MESSAGE)), "EPROTOCOL", response_code=250)
        assert not error.delivery_unknown

    session = await run(scenario, body)
    assert session.peer.received.endswith(b"DATA\r\n")



@pytest_twisted.ensureDeferred
async def test_a_reply_too_many_fails_the_idle_connection() -> None:
    """
    A reply that arrives while no command waits for one (here: the EHLO
    reply sent twice, the second time a while later) answers nothing: ``EPROTOCOL`` on
    the idle connection, reported as ``"error"`` then ``"end"``, and it
    never pairs with a later command.
    """

    async def scenario(peer: Peer) -> None:
        peer.send(b"220 adversary.example\r\n")
        await peer.expect(b"EHLO client.example")
        peer.send(EHLO_PLAIN)
        await peer.sleep(0.3)
        peer.send(EHLO_PLAIN)
        await peer.gone()

    async def body(s: Session) -> None:
        conn = s.connect_to()
        events: list[tuple[str, tuple[Any, ...]]] = []
        for name in ("error", "end"):
            conn.on(name, lambda *args, name=name: events.append((name, args)))
        await bounded(conn.connect())
        await bounded(conn.when_closed())
        assert [name for name, _ in events] == ["error", "end"]
        assert_closed_with(events[0][1][0], "EPROTOCOL", response_code=250)
        assert_closed_with(await outcome(conn.send(ENVELOPE, MESSAGE)), "EPROTOCOL")

    session = await run(scenario, body)
    assert session.peer.received == b"EHLO client.example\r\n"
