"""
The longer, coverage-guided fuzz run (atheris); pytest does not collect it.

The same targets as ``test_fuzz.py``, driven by libFuzzer instead of
hypothesis, for runs of hours rather than seconds::

    pip install atheris
    python tests/fuzz_atheris.py -atheris_runs=1000000          # all targets
    python tests/fuzz_atheris.py -atheris_runs=1000000 -max_len=4096 corpus/

Without atheris, ``--selftest N`` feeds N seeded random inputs through the
same targets (a smoke test of the harness itself)::

    python tests/fuzz_atheris.py --selftest 2000

Every target turns its input into calls of the library and checks the
invariants of the hardening issue; a broken invariant raises
``AssertionError``, which atheris reports as a crash with the input that
caused it.  The expected, documented failures (contract errors,
``TypeError``/``ValueError`` for bad caller values) are not crashes.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]

try:
    import atheris
except ImportError:  # the self-test needs no atheris
    atheris = None


def _imports() -> dict[str, Any]:
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import Logger
    from twisted.python.failure import Failure

    from twisted_smtpconn import DSN, Envelope, SMTPConnectionError
    from twisted_smtpconn._commands import mail_from_command, rcpt_to_command
    from twisted_smtpconn._dotstuff import BodyEncoder
    from twisted_smtpconn._ehlo import auth_mechanisms, parse_ehlo, size_limit
    from twisted_smtpconn._errors import ERROR_CODES, EnvelopeError
    from twisted_smtpconn._logging import WireLog
    from twisted_smtpconn._protocol import MAX_LINE_LENGTH, SMTPClientProtocol
    from twisted_smtpconn._reply import Reply
    from twisted_smtpconn._xtext import utf8_addr_xtext, xtext_decode, xtext_encode
    from wiretools import ClosingTransport, Wire

    return dict(locals())


if atheris is not None:
    with atheris.instrument_imports():
        L = _imports()
else:
    L = _imports()


class Input:
    """The part of atheris's FuzzedDataProvider the targets use (also backed by random bytes)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        piece = self.data[self.pos : self.pos + n]
        self.pos += len(piece)
        return piece

    def rest(self) -> bytes:
        return self.take(len(self.data))

    def text(self, n: int) -> str:
        return self.take(n).decode("utf-8", "replace")

    def chunks(self, data: bytes) -> list[bytes]:
        """``data`` cut where the input says."""
        out, at = [], 0
        while at < len(data):
            size = 1 + self.byte() * (1 + self.byte() % 4)
            out.append(data[at : at + size])
            at += size
        return out


def _protocol() -> tuple[Any, Any]:
    protocol = L["SMTPClientProtocol"](
        clock=L["MemoryReactorClock"](),
        wire_log=L["WireLog"](L["Logger"](observer=lambda e: None), False),
        greeting_timeout=30.0,
        socket_timeout=30.0,
    )
    transport = L["ClosingTransport"]()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def target_reply_stream(inp: Input) -> None:
    """Server bytes, cut anywhere: every waiter resolved once, buffers capped."""
    waiting = 1 + inp.byte() % 6
    data = inp.rest()
    protocol, transport = _protocol()
    waiters = [protocol.wait_greeting()] + [protocol.expect_reply() for _ in range(waiting - 1)]
    results: list[list[Any]] = [[] for _ in waiters]
    for d, out in zip(waiters, results):
        d.addBoth(out.append)
    for piece in Input(data).chunks(data):
        protocol.dataReceived(piece)
        if protocol.failure is None:
            assert len(protocol._buffer) <= L["MAX_LINE_LENGTH"]
    transport.loseConnection()
    for out in results:
        assert len(out) == 1
        value = out[0].value if isinstance(out[0], L["Failure"]) else out[0]
        assert isinstance(value, (L["Reply"], L["SMTPConnectionError"])), repr(value)


def target_ehlo(inp: Input) -> None:
    lines = inp.rest().decode("utf-8", "replace").replace("\r", "").split("\n")
    extensions = L["parse_ehlo"](L["Reply"](250, tuple(["server"] + lines[:200])))
    for key, value in extensions.items():
        assert key == key.upper() and key and "\n" not in value
    limit = L["size_limit"](extensions)
    assert limit is None or 0 < limit < 10**20
    for mechanism in L["auth_mechanisms"](extensions):
        assert 1 <= len(mechanism) <= 20 and mechanism == mechanism.upper()


def target_xtext(inp: Input) -> None:
    text = inp.rest().decode("utf-8", "replace")
    try:
        decoded = L["xtext_decode"](text)
    except ValueError:
        decoded = None
    if decoded is not None:
        assert L["xtext_decode"](L["xtext_encode"](decoded)) == decoded
    for encoded in (L["xtext_encode"](text), L["utf8_addr_xtext"](text)):
        assert all("!" <= c <= "~" for c in encoded) and "=" not in encoded


def target_dotstuff(inp: Input) -> None:
    message = inp.rest()
    whole = L["BodyEncoder"]()
    expected = whole.encode(message) + whole.finish()
    cut = L["BodyEncoder"]()
    got = b"".join(cut.encode(piece) for piece in Input(message[::-1]).chunks(message)) + cut.finish()
    assert got == expected
    # A DATA reader ends exactly at our terminator.
    assert (b"\r\n" + got).find(b"\r\n.\r\n") == len(got) - 3


def target_commands(inp: Input) -> None:
    fields = [inp.text(inp.byte() % 48) for _ in range(6)]
    mail_from, rcpt, envid, orcpt, notify, ret = fields
    try:
        dsn = L["DSN"](ret=ret or None, envid=envid or None, notify=notify or None, orcpt=orcpt or None)
        envelope = L["Envelope"](mail_from, [rcpt], size=inp.byte() * 1000, dsn=dsn)
    except (TypeError, ValueError, L["EnvelopeError"]):
        return
    extensions = {"SIZE": "", "DSN": "", "SMTPUTF8": "", "8BITMIME": ""}
    for render in (
        lambda: L["mail_from_command"](envelope, extensions),
        lambda: L["rcpt_to_command"](envelope.rcpt_to[0], envelope.dsn, extensions, smtputf8=True),
    ):
        line = render()
        assert b"\r" not in line and b"\n" not in line and b"\x00" not in line, line


def target_transaction(inp: Input) -> None:
    """A whole send against arbitrary server bytes: it ends, with a contract outcome."""
    pipelining = inp.byte() & 1
    wire = L["Wire"]()
    wire.connect(b"250-server\r\n250 PIPELINING\r\n" if pipelining else b"250 server\r\n")
    d = wire.conn.send(L["Envelope"]("a@example.org", ["b@example.org", "c@example.org"]), b"body\r\n")
    out: list[Any] = []
    d.addBoth(out.append)
    for piece in inp.chunks(inp.rest())[:64]:
        if out:
            break
        wire.client()
        wire.server(piece)
    if not out:
        wire.drop()
    assert out, "the send did not end"
    if isinstance(out[0], L["Failure"]):
        error = out[0].value
        assert isinstance(error, L["SMTPConnectionError"]), repr(error)
        assert error.code in L["ERROR_CODES"]
    wire.conn.close()


TARGETS: list[Callable[[Input], None]] = [
    target_reply_stream,
    target_ehlo,
    target_xtext,
    target_dotstuff,
    target_commands,
    target_transaction,
]


def TestOneInput(data: bytes) -> None:  # noqa: N802 -- atheris's name
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](Input(data[1:]))


def selftest(runs: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    alphabet = [b"250", b"-", b" ", b"\r\n", b"\n", b".", b"\r", b"354", b"550", b"421", b"+", b"=", b"<", b">", b"@"]
    for _ in range(runs):
        parts = [rng.choice(alphabet) if rng.random() < 0.6 else rng.randbytes(rng.randint(0, 8)) for _ in range(rng.randint(0, 60))]
        TestOneInput(bytes([rng.randrange(256)]) + b"".join(parts))
    print(f"selftest: {runs} inputs, {len(TARGETS)} targets, no invariant broken")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--selftest":
        selftest(int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
    elif atheris is None:
        sys.exit("atheris is not installed (pip install atheris); or run with --selftest N")
    else:
        atheris.Setup(sys.argv, TestOneInput)
        atheris.Fuzz()
