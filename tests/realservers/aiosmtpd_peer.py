"""
aiosmtpd as an independent SMTP/LMTP peer that records what it received.

The client under test runs on the Twisted reactor in the main thread; the
server runs on its own asyncio loop in a thread started by aiosmtpd's
``Controller``.  The two share nothing but a loopback socket and the
:class:`MessageRecorder`, which is the only object touched from both threads
and is therefore guarded by a lock.

Stock aiosmtpd is adjusted in four places, each for a reason the tests need:

* parameters of MAIL and RCPT are recorded *raw* (as the client wrote them,
  per recipient); stock aiosmtpd upper-cases them, which loses the case of
  ``ENVID``/``ORCPT`` xtext, and flattens all recipients' parameters into one
  list;
* with ``accept_dsn=True`` the server advertises ``DSN`` and accepts ``RET``,
  ``ENVID``, ``NOTIFY`` and ``ORCPT`` (RFC 3461), which stock aiosmtpd answers
  with 555;
* the LMTP server answers DATA with one reply per accepted recipient (RFC
  2033, section 4.2).  Stock ``aiosmtpd.lmtp.LMTP`` writes whatever single
  status line the handler returns, so a client that correctly waits for one
  reply per recipient would hang;
* every server gets its own command-size table: stock aiosmtpd keeps it in a
  class attribute that all servers in the process (and their threads) share.
"""

from __future__ import annotations

import collections
import hashlib
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any, AnyStr, Generic, NoReturn, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime

from .ports import LOOPBACK, free_port

__all__ = [
    "DEFAULT_DATA_SIZE_LIMIT",
    "DEFAULT_SERVER_HOSTNAME",
    "AiosmtpdServer",
    "MessageRecorder",
    "ReceivedMessage",
    "RecordingEnvelope",
    "RecordingHandler",
    "RecordingLMTP",
    "RecordingSMTP",
    "start_aiosmtpd",
]

_T = TypeVar("_T")

#: Host name the fixture servers announce (in the greeting and EHLO reply).
#: Fixed so that aiosmtpd does not call ``socket.getfqdn()``, which can wait
#: on DNS.
DEFAULT_SERVER_HOSTNAME = "aiosmtpd.smtpconn.test"

#: Default ``data_size_limit`` (the SIZE advertised and enforced): aiosmtpd's
#: own default, 32 MiB.
DEFAULT_DATA_SIZE_LIMIT = 2**25


@dataclass(frozen=True)
class ReceivedMessage:
    """
    One message as the server received it, frozen so that a test can keep it
    while the server thread records more.

    :ivar mail_from: the reverse path as aiosmtpd parsed it; ``"<>"`` for the
        null sender.
    :ivar mail_options: the ESMTP parameters of MAIL FROM, exactly as sent
        (case preserved), e.g. ``("BODY=8BITMIME", "ENVID=QQ+2Bid")``.
    :ivar rcpt_tos: the accepted recipients, in RCPT order.
    :ivar rcpt_options: for each entry of ``rcpt_tos``, the ESMTP parameters
        of its RCPT TO, exactly as sent.
    :ivar content: the message after the server removed dot-stuffing and the
        final ``.`` line: bytes exactly as the client meant them, CRLF line
        ends, last line's CRLF included.
    :ivar sha256: hex SHA-256 of ``content``.
    :ivar delivered_to: recipients whose final reply was 2xx (for SMTP all of
        ``rcpt_tos``; for LMTP those not refused after DATA).
    :ivar data_replies: the reply lines the server sent after the final dot
        (one per recipient for LMTP).
    :ivar smtputf8: the client sent the SMTPUTF8 parameter.
    :ivar helo: the name the client gave in EHLO/HELO/LHLO.
    :ivar tls: the connection was TLS (STARTTLS or implicit) when DATA ended.
    :ivar authenticated: the client had authenticated (aiosmtpd's
        ``session.authenticated``).
    :ivar auth_data: what the authenticator returned for the login, if any.
    :ivar peer: the client's address as the server saw it.
    :ivar index: 0 for the first message this recorder saw, then 1, ...
    """

    mail_from: str
    mail_options: tuple[str, ...]
    rcpt_tos: tuple[str, ...]
    rcpt_options: tuple[tuple[str, ...], ...]
    content: bytes
    sha256: str
    delivered_to: tuple[str, ...]
    data_replies: tuple[str, ...]
    smtputf8: bool = False
    helo: str | None = None
    tls: bool = False
    authenticated: bool = False
    auth_data: Any = field(default=None, compare=False)
    peer: Any = field(default=None, compare=False)
    index: int = 0

    def header(self, name: str) -> str | None:
        """
        Return the first header field called ``name`` (unfolded, raw), or
        ``None``.  A convenience for tests that find their message by a
        unique ``Message-ID`` or ``Subject``.
        """
        parsed = BytesHeaderParser(policy=compat32).parsebytes(self.content)
        value = parsed.get(name)
        return None if value is None else str(value)

    def mail_param(self, keyword: str) -> str | bool | None:
        """
        Return the value of a MAIL FROM parameter (``True`` for a keyword
        without ``=value``), or ``None`` when it was not sent.  Keywords
        compare case-insensitively; the value is returned raw.
        """
        return _param(self.mail_options, keyword)

    def rcpt_param(self, recipient: str, keyword: str) -> str | bool | None:
        """
        Return the value of a RCPT TO parameter given for ``recipient``, as
        :meth:`mail_param` does.

        :raises KeyError: when ``recipient`` was not accepted.
        """
        try:
            position = self.rcpt_tos.index(recipient)
        except ValueError:
            raise KeyError(recipient) from None
        return _param(self.rcpt_options[position], keyword)


def _param(options: Iterable[str], keyword: str) -> str | bool | None:
    for option in options:
        name, equals, value = option.partition("=")
        if name.upper() == keyword.upper():
            return value if equals else True
    return None


@dataclass
class _Waiter(Generic[_T]):
    """
    A Deferred waiting for a condition over the recorded messages.
    """

    condition: Callable[[Sequence[ReceivedMessage]], _T | None]
    deferred: Deferred[_T]
    reactor: IReactorFromThreads


class MessageRecorder:
    """
    Thread-safe list of :class:`ReceivedMessage`, with bounded waits.

    The server thread appends; tests read.  A Twisted test must not block
    the reactor thread (the client it waits for runs there), so it uses
    :meth:`when_received` / :meth:`when_match`, which return Deferreds fired
    on the reactor thread.  Blocking code (``smtplib`` in a plain test) uses
    :meth:`wait_for` / :meth:`wait_for_match`.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._waiters: list[_Waiter[Any]] = []
        self._next_index = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    @property
    def messages(self) -> tuple[ReceivedMessage, ...]:
        """
        Snapshot of everything recorded so far, oldest first.
        """
        with self._lock:
            return tuple(self._messages)

    def clear(self) -> None:
        """
        Forget the messages recorded so far (indexes keep counting).
        """
        with self._lock:
            self._messages.clear()

    def record(self, message: ReceivedMessage) -> ReceivedMessage:
        """
        Append ``message`` (with its ``index`` assigned) and wake waiters.

        Called from the server thread.
        """
        with self._lock:
            stored = _replace_index(message, self._next_index)
            self._next_index += 1
            self._messages.append(stored)
            snapshot = tuple(self._messages)
            ready: list[tuple[_Waiter[Any], Any]] = []
            for waiter in list(self._waiters):
                outcome = waiter.condition(snapshot)
                if outcome is not None:
                    self._waiters.remove(waiter)
                    ready.append((waiter, outcome))
            self._lock.notify_all()
        for waiter, outcome in ready:
            waiter.reactor.callFromThread(_fire, waiter.deferred, outcome)
        return stored

    # -- blocking waits (never from the reactor thread) -------------------

    def wait_for(self, count: int, timeout: float = 10.0) -> tuple[ReceivedMessage, ...]:
        """
        Block until at least ``count`` messages were recorded.

        :return: all messages recorded so far.
        :raises AssertionError: after ``timeout`` seconds.
        """
        return self._wait(_at_least(count), timeout, f"{count} message(s)")

    def wait_for_match(
        self, predicate: Callable[[ReceivedMessage], bool], timeout: float = 10.0
    ) -> ReceivedMessage:
        """
        Block until a recorded message satisfies ``predicate``.

        :return: the first such message.
        :raises AssertionError: after ``timeout`` seconds.
        """
        return self._wait(_first_match(predicate), timeout, "a matching message")

    def _wait(
        self,
        condition: Callable[[Sequence[ReceivedMessage]], _T | None],
        timeout: float,
        what: str,
    ) -> _T:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                outcome = condition(tuple(self._messages))
                if outcome is not None:
                    return outcome
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(self._timeout_text(what, timeout))
                self._lock.wait(remaining)

    # -- Deferred waits (for Twisted tests) --------------------------------

    def when_received(
        self, count: int, reactor: Any, timeout: float = 10.0
    ) -> Deferred[tuple[ReceivedMessage, ...]]:
        """
        Return a Deferred that fires, on the reactor thread, with all
        messages recorded so far once there are at least ``count``.

        :param reactor: the reactor of the test (``IReactorTime`` and
            ``IReactorFromThreads``).
        :param timeout: fail the Deferred with :class:`AssertionError` after
            this many seconds; the timer is cancelled when it fires earlier.
        """
        return self._when(_at_least(count), reactor, timeout, f"{count} message(s)")

    def when_match(
        self,
        predicate: Callable[[ReceivedMessage], bool],
        reactor: Any,
        timeout: float = 10.0,
    ) -> Deferred[ReceivedMessage]:
        """
        Return a Deferred that fires with the first recorded message that
        satisfies ``predicate``, as :meth:`when_received` does.
        """
        return self._when(_first_match(predicate), reactor, timeout, "a matching message")

    def _when(
        self,
        condition: Callable[[Sequence[ReceivedMessage]], _T | None],
        reactor: Any,
        timeout: float,
        what: str,
    ) -> Deferred[_T]:
        assert IReactorTime.providedBy(reactor) and IReactorFromThreads.providedBy(reactor)
        waiter: _Waiter[_T] = _Waiter(condition, Deferred(self._forget), reactor)
        with self._lock:
            outcome = condition(tuple(self._messages))
            if outcome is None:
                self._waiters.append(waiter)
        if outcome is not None:
            waiter.deferred.callback(outcome)
            return waiter.deferred

        def timed_out(result: object, seconds: float) -> NoReturn:
            # Raised inside the Deferred's callback chain: becomes its result.
            raise AssertionError(self._timeout_text(what, seconds))

        waiter.deferred.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
        return waiter.deferred

    def _forget(self, deferred: Deferred[Any]) -> None:
        """
        Canceller: drop the waiter of a cancelled (or timed-out) Deferred.
        """
        with self._lock:
            self._waiters = [w for w in self._waiters if w.deferred is not deferred]

    def _timeout_text(self, what: str, timeout: float) -> str:
        with self._lock:
            seen = [
                f"#{m.index} from {m.mail_from} to {list(m.rcpt_tos)} ({len(m.content)} bytes)"
                for m in self._messages
            ]
        return f"waited {timeout:.1f}s for {what}; recorded so far: {seen or 'nothing'}"


def _fire(deferred: Deferred[Any], outcome: object) -> None:
    if not deferred.called:
        deferred.callback(outcome)


def _at_least(count: int) -> Callable[[Sequence[ReceivedMessage]], tuple[ReceivedMessage, ...] | None]:
    def condition(messages: Sequence[ReceivedMessage]) -> tuple[ReceivedMessage, ...] | None:
        return tuple(messages) if len(messages) >= count else None

    return condition


def _first_match(
    predicate: Callable[[ReceivedMessage], bool],
) -> Callable[[Sequence[ReceivedMessage]], ReceivedMessage | None]:
    def condition(messages: Sequence[ReceivedMessage]) -> ReceivedMessage | None:
        for message in messages:
            if predicate(message):
                return message
        return None

    return condition


def _replace_index(message: ReceivedMessage, index: int) -> ReceivedMessage:
    return replace(message, index=index)


# -- server side ------------------------------------------------------------


class RecordingEnvelope(Envelope):
    """
    aiosmtpd's envelope plus the raw ESMTP parameters, per recipient.
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw_mail_options: tuple[str, ...] = ()
        self.raw_rcpt_options: list[tuple[str, ...]] = []


# RFC 3461 parameter checks, each a validator of the raw value.


def _xtext_ok(value: str) -> bool:
    """
    RFC 3461 xtext: printable ASCII except ``+`` and ``=``, or ``+XX`` with
    two upper-case hex digits.
    """
    position = 0
    while position < len(value):
        char = value[position]
        if char == "+":
            digits = value[position + 1 : position + 3]
            if len(digits) != 2 or any(c not in "0123456789ABCDEF" for c in digits):
                return False
            position += 3
            continue
        if not ("!" <= char <= "~") or char == "=":
            return False
        position += 1
    return True


def _ret_ok(value: str) -> bool:
    return value.upper() in {"FULL", "HDRS"}


def _envid_ok(value: str) -> bool:
    return 0 < len(value) <= 100 and _xtext_ok(value)


def _notify_ok(value: str) -> bool:
    items = value.upper().split(",")
    if items == ["NEVER"]:
        return True
    return bool(items) and len(set(items)) == len(items) and set(items) <= {"SUCCESS", "FAILURE", "DELAY"}


def _orcpt_ok(value: str) -> bool:
    addr_type, semicolon, address = value.partition(";")
    return bool(semicolon) and addr_type.replace("-", "").isalnum() and bool(address) and _xtext_ok(address)


_MAIL_DSN: Mapping[str, Callable[[str], bool]] = {"RET": _ret_ok, "ENVID": _envid_ok}
_RCPT_DSN: Mapping[str, Callable[[str], bool]] = {"NOTIFY": _notify_ok, "ORCPT": _orcpt_ok}


def _take_dsn(
    tokens: Sequence[str], checks: Mapping[str, Callable[[str], bool]]
) -> tuple[str | None, list[str]]:
    """
    Split DSN parameters off ``tokens``.

    :return: ``(error reply or None, the tokens that are not DSN parameters)``.
    """
    seen: set[str] = set()
    others: list[str] = []
    for token in tokens:
        keyword, equals, value = token.partition("=")
        check = checks.get(keyword.upper())
        if check is None:
            others.append(token)
            continue
        if keyword.upper() in seen:
            return f"501 5.5.4 Duplicate {keyword.upper()} parameter", others
        seen.add(keyword.upper())
        if not equals or not check(value):
            return f"501 5.5.4 Bad {keyword.upper()} parameter value", others
    return None, others


class RecordingSMTP(SMTP):
    """
    aiosmtpd's SMTP server, recording raw parameters and optionally
    speaking DSN.

    :param handler: the aiosmtpd handler (normally a :class:`RecordingHandler`).
    :param accept_dsn: advertise DSN and accept its parameters.
    :param extra_ehlo: further EHLO keywords to advertise (e.g.
        ``"PIPELINING"``); the server does not implement anything for them.
    :param line_length_limit: longest line accepted, CRLF included
        (aiosmtpd's default is RFC 5321's 1000 plus a stuffed dot).  The
        relay recorder behind Postfix raises it so that tests can check that
        long lines arrive unchanged.
    :param kwargs: passed to :class:`aiosmtpd.smtp.SMTP`.
    """

    def __init__(
        self,
        handler: Any,
        *,
        accept_dsn: bool = False,
        extra_ehlo: Sequence[str] = (),
        line_length_limit: int = SMTP.line_length_limit,
        **kwargs: Any,
    ) -> None:
        # Read by SMTP.__init__ to size its StreamReader, so set it first.
        self.line_length_limit = line_length_limit
        super().__init__(handler, **kwargs)
        self.accept_dsn = accept_dsn
        self.extra_ehlo_keywords: tuple[str, ...] = (("DSN",) if accept_dsn else ()) + tuple(extra_ehlo)
        # One table per server instead of aiosmtpd's class-level one.
        limits: collections.defaultdict[str, int] = collections.defaultdict(
            lambda: SMTP.command_size_limit
        )
        if accept_dsn:
            # RFC 3461 section 5: RET+ENVID add up to 110 octets to MAIL,
            # NOTIFY+ORCPT up to 500 to RCPT.
            limits["MAIL"] += 110
            limits["RCPT"] += 500
        self.command_size_limits = limits

    def _create_envelope(self) -> Envelope:
        return RecordingEnvelope()

    def _split_params(self, keyword: str, arg: str | None) -> tuple[str, list[str]] | None:
        """
        Split ``FROM:<a> P1 P2`` into ``("FROM:<a> ", ["P1", "P2"])``.

        :return: ``None`` when aiosmtpd itself should report the syntax error.
        """
        if arg is None:
            return None
        stripped = self._strip_command_keyword(keyword, arg)
        if stripped is None:
            return None
        address, rest = self._getaddr(stripped)
        if address is None or rest is None or not stripped.endswith(rest):
            return None
        head = keyword + stripped[: len(stripped) - len(rest)]
        return head, rest.split()

    async def smtp_MAIL(self, arg: str | None) -> None:
        split = self._split_params("FROM:", arg)
        if split is None:
            await super().smtp_MAIL(arg)
            return
        head, tokens = split
        forwarded = await self._without_dsn(tokens, _MAIL_DSN)
        if forwarded is None:
            return
        envelope = self.envelope
        had_sender = envelope is not None and envelope.mail_from is not None
        await super().smtp_MAIL(_join(head, forwarded))
        if isinstance(envelope, RecordingEnvelope) and not had_sender and envelope.mail_from is not None:
            envelope.raw_mail_options = tuple(tokens)

    async def smtp_RCPT(self, arg: str | None) -> None:
        split = self._split_params("TO:", arg)
        if split is None:
            await super().smtp_RCPT(arg)
            return
        head, tokens = split
        forwarded = await self._without_dsn(tokens, _RCPT_DSN)
        if forwarded is None:
            return
        envelope = self.envelope
        before = len(envelope.rcpt_tos) if envelope is not None else 0
        await super().smtp_RCPT(_join(head, forwarded))
        if isinstance(envelope, RecordingEnvelope) and len(envelope.rcpt_tos) > before:
            envelope.raw_rcpt_options.append(tuple(tokens))

    async def _without_dsn(
        self, tokens: list[str], checks: Mapping[str, Callable[[str], bool]]
    ) -> list[str] | None:
        """
        Return the tokens aiosmtpd should see, or ``None`` after replying
        with a syntax error.  DSN parameters are only removed in an EHLO
        session of a DSN server; otherwise aiosmtpd rejects them as usual.
        """
        session = self.session
        if not self.accept_dsn or session is None or not session.extended_smtp:
            return tokens
        error, others = _take_dsn(tokens, checks)
        if error is not None:
            await self.push(error)
            return None
        return others


def _join(head: str, tokens: Sequence[str]) -> str:
    return (head.rstrip() + " " + " ".join(tokens)) if tokens else head.rstrip()


class RecordingLMTP(RecordingSMTP, LMTP):
    """
    aiosmtpd's LMTP server made to answer DATA once per recipient.

    The handler returns one line per recipient; replies that aiosmtpd
    produces itself after the data (``552 Too much mail data``, ``500 Line
    too long``) are single lines, and are repeated here once per recipient,
    as RFC 2033 requires.  Replies to a DATA command that is refused before
    354 stay single, as the RFC also requires.
    """

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._lmtp_recipients = 0
        self._lmtp_in_data = False

    async def smtp_DATA(self, arg: str) -> None:
        self._lmtp_recipients = len(self.envelope.rcpt_tos) if self.envelope is not None else 0
        self._lmtp_in_data = False
        try:
            await super().smtp_DATA(arg)
        finally:
            self._lmtp_recipients = 0
            self._lmtp_in_data = False

    async def push(self, status: AnyStr) -> None:
        if self._lmtp_recipients:
            text = status.decode("utf-8", "surrogateescape") if isinstance(status, bytes) else status
            if self._lmtp_in_data:
                recipients, self._lmtp_recipients = self._lmtp_recipients, 0
                if "\r\n" not in text and recipients > 1:
                    await super().push("\r\n".join([text] * recipients))
                    return
            elif text.startswith("354"):
                self._lmtp_in_data = True
        await super().push(status)


class RecordingHandler:
    """
    aiosmtpd handler: applies the test rejection rules and records every
    message whose data was received.

    Rules (local parts compare case-insensitively):

    * sender local part ``bad-sender`` -> ``553 5.7.1`` at MAIL;
    * recipient local part starting with ``reject`` -> ``550 5.1.1`` at RCPT;
    * recipient local part starting with ``tempfail`` -> ``451 4.3.0`` at RCPT;
    * (LMTP only) recipient local part starting with ``lmtpfail`` is accepted
      at RCPT and refused after DATA with ``550 5.2.2 mailbox full``.
    """

    def __init__(self, recorder: MessageRecorder) -> None:
        self.recorder = recorder

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # With a handle_EHLO hook aiosmtpd leaves recording the name to us.
        session.host_name = hostname
        extra = getattr(server, "extra_ehlo_keywords", ())
        return responses[:-1] + [f"250-{keyword}" for keyword in extra] + responses[-1:]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if _local_part(address) == "bad-sender":
            return f"553 5.7.1 <{address}>: Sender address rejected by test rule"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        local = _local_part(address)
        if local.startswith("reject"):
            return f"550 5.1.1 <{address}>: Recipient address rejected by test rule"
        if local.startswith("tempfail"):
            return f"451 4.3.0 <{address}>: Temporary failure by test rule, try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        recipients = tuple(envelope.rcpt_tos)
        if isinstance(server, LMTP):
            replies = tuple(
                f"550 5.2.2 <{rcpt}>: mailbox full"
                if _local_part(rcpt).startswith("lmtpfail")
                else f"250 2.0.0 <{rcpt}> delivered"
                for rcpt in recipients
            )
            delivered = tuple(r for r, reply in zip(recipients, replies) if reply.startswith("2"))
        else:
            replies = ("250 2.0.0 OK: queued",)
            delivered = recipients
        if isinstance(envelope, RecordingEnvelope):
            mail_options = envelope.raw_mail_options
            rcpt_options = tuple(envelope.raw_rcpt_options)
        else:
            mail_options = tuple(envelope.mail_options)
            rcpt_options = tuple(() for _ in recipients)
        transport = server.transport
        implicit_tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        stored = self.recorder.record(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                mail_options=mail_options,
                rcpt_tos=recipients,
                rcpt_options=rcpt_options,
                content=bytes(content),
                sha256=hashlib.sha256(content).hexdigest(),
                delivered_to=delivered,
                data_replies=replies,
                smtputf8=bool(envelope.smtp_utf8),
                helo=session.host_name,
                tls=session.ssl is not None or implicit_tls,
                authenticated=bool(session.authenticated),
                auth_data=session.auth_data,
                peer=session.peer,
            )
        )
        if not isinstance(server, LMTP):
            return f"250 2.0.0 OK: queued as {stored.index}"
        return "\r\n".join(replies)


def _local_part(address: str) -> str:
    local, _, _ = address.rpartition("@")
    return (local or address).strip('"').lower()


class _RecordingController(Controller):
    """
    aiosmtpd Controller that builds our server classes.
    """

    def __init__(
        self,
        handler: RecordingHandler,
        *,
        server_class: type[RecordingSMTP],
        server_options: Mapping[str, Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._server_class = server_class
        self._server_options = dict(server_options)

    def factory(self) -> RecordingSMTP:
        return self._server_class(self.handler, **self._server_options, **self.SMTP_kwargs)


@dataclass(frozen=True)
class AiosmtpdServer:
    """
    A running aiosmtpd peer.

    :ivar host: address it listens on.
    :ivar port: port it listens on.
    :ivar recorder: what it received.
    :ivar lmtp: it speaks LMTP.
    :ivar implicit_tls: TLS from the first byte (``ssl_context`` was given).
    :ivar controller: aiosmtpd's controller (for anything not wrapped here).
    """

    host: str
    port: int
    recorder: MessageRecorder = field(compare=False)
    lmtp: bool
    implicit_tls: bool
    controller: Controller = field(compare=False, repr=False)

    @property
    def messages(self) -> tuple[ReceivedMessage, ...]:
        """Shortcut for ``recorder.messages``."""
        return self.recorder.messages

    def stop(self) -> None:
        """
        Stop the server and join its thread; safe to call twice.
        """
        if self.controller._thread is not None:
            self.controller.stop()


def start_aiosmtpd(
    *,
    lmtp: bool = False,
    accept_dsn: bool = False,
    extra_ehlo: Sequence[str] = (),
    line_length_limit: int = SMTP.line_length_limit,
    host: str = LOOPBACK,
    recorder: MessageRecorder | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str = DEFAULT_SERVER_HOSTNAME,
    data_size_limit: int | None = DEFAULT_DATA_SIZE_LIMIT,
    decode_data: bool = False,
    enable_SMTPUTF8: bool = True,
    attempts: int = 5,
    **smtp_options: Any,
) -> AiosmtpdServer:
    """
    Start an aiosmtpd SMTP (or LMTP) server on a free loopback port.

    :param lmtp: speak LMTP (``LHLO``, one DATA reply per recipient).
    :param accept_dsn: advertise DSN and accept RET/ENVID/NOTIFY/ORCPT.
    :param extra_ehlo: extra EHLO keywords to advertise.
    :param line_length_limit: longest accepted line, CRLF included (default
        1001, aiosmtpd's RFC 5321 limit).
    :param host: listening address (``"::1"`` works where IPv6 does).
    :param recorder: record into this recorder (default: a new one).
    :param ssl_context: server context for implicit TLS (aiosmtpd
        Controller's ``ssl_context``).
    :param server_hostname: name in the greeting and EHLO reply.
    :param data_size_limit: SIZE limit (``None``: no limit, no SIZE).
    :param decode_data: aiosmtpd's ``decode_data``; keep ``False`` so that
        8BITMIME is advertised and content stays bytes.
    :param enable_SMTPUTF8: advertise SMTPUTF8.
    :param attempts: how many free ports to try if binding loses a race.
    :param smtp_options: passed to :class:`aiosmtpd.smtp.SMTP` unchanged:
        ``tls_context``, ``require_starttls``, ``authenticator``,
        ``auth_required``, ``auth_require_tls``, ``auth_exclude_mechanism``,
        ``timeout``, ``command_call_limit``, ...
    :return: the running server; call :meth:`AiosmtpdServer.stop`.
    """
    recorder = recorder if recorder is not None else MessageRecorder()
    handler = RecordingHandler(recorder)
    server_class: type[RecordingSMTP] = RecordingLMTP if lmtp else RecordingSMTP
    last_error: BaseException | None = None
    for _ in range(max(attempts, 1)):
        port = free_port(host)
        controller = _RecordingController(
            handler,
            server_class=server_class,
            server_options={
                "accept_dsn": accept_dsn,
                "extra_ehlo": tuple(extra_ehlo),
                "line_length_limit": line_length_limit,
            },
            hostname=host,
            port=port,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            data_size_limit=data_size_limit,
            decode_data=decode_data,
            enable_SMTPUTF8=enable_SMTPUTF8,
            **smtp_options,
        )
        try:
            controller.start()
        except OSError as error:  # lost the race for the port: try another
            last_error = error
            _discard(controller)
            continue
        except BaseException:
            _discard(controller)
            raise
        return AiosmtpdServer(
            host=host,
            port=port,
            recorder=recorder,
            lmtp=lmtp,
            implicit_tls=ssl_context is not None,
            controller=controller,
        )
    raise RuntimeError(f"could not start aiosmtpd on {host} after {attempts} attempts") from last_error


def _discard(controller: Controller) -> None:
    """
    Clean up after a failed ``start()``: join the thread, close the loop
    (an unclosed loop warns at garbage collection).
    """
    try:
        controller.stop(no_assert=True)
    except Exception:
        pass
    loop = controller.loop
    if not loop.is_running() and not loop.is_closed():
        loop.close()
