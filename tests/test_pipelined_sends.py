"""
Consecutive sends on one connection with PIPELINING: the next envelope
follows the previous message's final dot without waiting for its reply
(RFC 2920 allows message content as the first "command" of a group), and
each send still gets exactly its own outcome.

Byte-exact on a fake wire.  What makes it safe, and what each test pins:
the final reply ends the server's transaction whatever it says, so nothing
needs to be sent between two messages (no RSET after a refused message);
replies pair with commands in the order sent; a failure of the connection
fails both sends, and only the one whose dot was sent is "delivery
unknown"; only a queued *send* is let through early.
"""

from __future__ import annotations

from twisted_smtpconn import ConnectionFailedError, Envelope, MessageError
from wiretools import Wire, failure, pending, result

EHLO_PIPELINING = b"250-server.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
ENVELOPE_1 = Envelope("a@x.org", ["one@x.org"])
ENVELOPE_2 = Envelope("a@x.org", ["two@x.org"])
GROUP_1 = b"MAIL FROM:<a@x.org>\r\nRCPT TO:<one@x.org>\r\nDATA\r\n"
GROUP_2 = b"MAIL FROM:<a@x.org>\r\nRCPT TO:<two@x.org>\r\nDATA\r\n"


def connected(ehlo: bytes = EHLO_PIPELINING, **options: object) -> Wire:
    wire = Wire(**options)
    wire.connect(ehlo)
    return wire


def test_next_envelope_follows_the_final_dot() -> None:
    wire = connected()
    d1 = wire.conn.send(ENVELOPE_1, b"first")
    d2 = wire.conn.send(ENVELOPE_2, b"second")
    assert wire.client() == GROUP_1
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    # The second envelope goes right after the first message's dot.
    assert wire.client() == b"first\r\n.\r\n" + GROUP_2
    assert pending(d1) and pending(d2)
    wire.server(b"250 first queued\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert result(d1).response == "250 first queued"
    assert wire.client() == b"second\r\n.\r\n"
    assert pending(d2)
    wire.server(b"250 second queued\r\n")
    info = result(d2)
    assert info.accepted == ["two@x.org"] and info.response == "250 second queued"


def test_a_chain_of_queued_sends() -> None:
    wire = connected()
    ds = [wire.conn.send(Envelope("a@x.org", [f"r{n}@x.org"]), b"m%d" % n) for n in range(4)]
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    for n in range(1, 4):
        group = b"MAIL FROM:<a@x.org>\r\nRCPT TO:<r%d@x.org>\r\nDATA\r\n" % n
        assert wire.client() == b"m%d\r\n.\r\n" % (n - 1) + group
        wire.server(b"250 done %d\r\n250 ok\r\n250 ok\r\n354 go\r\n" % (n - 1))
        assert result(ds[n - 1]).response == "250 done %d" % (n - 1)
    assert wire.client() == b"m3\r\n.\r\n"
    wire.server(b"250 done 3\r\n")
    assert result(ds[3]).response == "250 done 3"


def test_a_refused_message_leaves_the_next_untouched() -> None:
    wire = connected()
    d1 = wire.conn.send(ENVELOPE_1, b"spam")
    d2 = wire.conn.send(ENVELOPE_2, b"ham")
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert wire.client().endswith(GROUP_2)
    wire.server(b"554 5.7.1 spam\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    err = failure(d1)
    assert isinstance(err, MessageError) and err.response_code == 554
    # No RSET: the final reply already ended the first transaction.
    assert wire.client() == b"ham\r\n.\r\n"
    wire.server(b"250 ok\r\n")
    assert result(d2).accepted == ["two@x.org"]


def test_a_refused_second_envelope_after_the_dot() -> None:
    wire = connected()
    d1 = wire.conn.send(ENVELOPE_1, b"first")
    d2 = wire.conn.send(ENVELOPE_2, b"second")
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    wire.client()
    wire.server(b"250 first queued\r\n250 ok\r\n550 5.1.1 no two\r\n554 5.5.1 no valid recipients\r\n")
    assert result(d1).response == "250 first queued"
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    assert failure(d2).code == "EENVELOPE"


def test_421_as_the_final_reply_fails_both_and_only_the_first_was_sent() -> None:
    wire = connected()
    d1 = wire.conn.send(ENVELOPE_1, b"first")
    d2 = wire.conn.send(ENVELOPE_2, b"second")
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    wire.client()
    wire.server(b"421 4.3.2 shutting down\r\n")
    err1 = failure(d1)
    assert isinstance(err1, ConnectionFailedError) and err1.response_code == 421
    err2 = failure(d2)
    assert isinstance(err2, ConnectionFailedError) and not err2.delivery_unknown
    assert wire.transport.disconnecting
    assert b"second" not in wire.client()


def test_drop_before_the_final_reply() -> None:
    wire = connected()
    d1 = wire.conn.send(ENVELOPE_1, b"first")
    d2 = wire.conn.send(ENVELOPE_2, b"second")
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    wire.client()
    wire.drop()
    err1 = failure(d1)
    assert isinstance(err1, ConnectionFailedError) and err1.delivery_unknown
    err2 = failure(d2)
    assert isinstance(err2, ConnectionFailedError) and not err2.delivery_unknown


def test_without_pipelining_the_next_envelope_waits() -> None:
    wire = connected(b"250-server.example\r\n250 8BITMIME\r\n")
    d1 = wire.conn.send(ENVELOPE_1, b"first")
    d2 = wire.conn.send(ENVELOPE_2, b"second")
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n")
    assert wire.client().endswith(b"DATA\r\nfirst\r\n.\r\n")
    wire.server(b"250 first\r\n")
    assert result(d1).response == "250 first"
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\n"
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 second\r\n")
    assert result(d2).response == "250 second"


def test_reset_and_quit_wait_for_the_final_reply() -> None:
    wire = connected()
    d1 = wire.conn.send(ENVELOPE_1, b"first")
    d_reset = wire.conn.reset()
    d_quit = wire.conn.quit()
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert wire.client() == b"first\r\n.\r\n"
    wire.server(b"250 first\r\n")
    assert result(d1).response == "250 first"
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    assert result(d_reset) is None
    assert wire.client() == b"QUIT\r\n"
    wire.server(b"221 bye\r\n")
    assert result(d_quit) is None


def test_a_send_behind_a_reset_is_not_let_through() -> None:
    wire = connected()
    d1 = wire.conn.send(ENVELOPE_1, b"first")
    wire.conn.reset()
    wire.conn.send(ENVELOPE_2, b"second")
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert wire.client() == b"first\r\n.\r\n"
    wire.server(b"250 first\r\n")
    result(d1)
    assert wire.client() == b"RSET\r\n"


def test_a_send_made_after_the_dot_goes_at_once() -> None:
    """
    Called while the running send only awaits its final reply, a send goes
    out at once, exactly as if it had been queued before the dot.
    """
    wire = connected()
    d1 = wire.conn.send(ENVELOPE_1, b"first")
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert wire.client().endswith(b"first\r\n.\r\n")
    d2 = wire.conn.send(ENVELOPE_2, b"second")
    assert wire.client() == GROUP_2
    assert pending(d1)
    wire.server(b"250 first\r\n")
    assert result(d1).response == "250 first"
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert wire.client() == b"second\r\n.\r\n"
    wire.server(b"250 second\r\n")
    assert result(d2).response == "250 second"


def test_a_reset_made_after_the_dot_waits_for_the_reply() -> None:
    wire = connected()
    d1 = wire.conn.send(ENVELOPE_1, b"first")
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    wire.client()
    d2 = wire.conn.reset()
    assert wire.client() == b""
    wire.server(b"250 first\r\n")
    assert result(d1).response == "250 first"
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    assert result(d2) is None


def test_lmtp_replies_per_recipient_then_the_next_envelope() -> None:
    wire = Wire(lmtp=True)
    d = wire.conn.connect()
    wire.server(b"220 lmtp\r\n", b"250-lmtp.example\r\n250 PIPELINING\r\n")
    result(d)
    wire.client()
    d1 = wire.conn.send(Envelope("a@x.org", ["r1@x.org", "r2@x.org"]), b"first")
    d2 = wire.conn.send(ENVELOPE_2, b"second")
    wire.client()
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n")
    assert wire.client() == b"first\r\n.\r\n" + GROUP_2
    wire.server(b"250 r1 ok\r\n")
    assert pending(d1)
    wire.server(b"550 r2 full\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n")
    info = result(d1)
    assert info.accepted == ["r1@x.org"] and info.rejected == ["r2@x.org"]
    assert wire.client() == b"second\r\n.\r\n"
    wire.server(b"250 two ok\r\n")
    assert result(d2).accepted == ["two@x.org"]


def test_bdat_transactions_do_not_overlap() -> None:
    """After LAST a refused chunk would still need RSET, so BDAT waits for its replies."""
    wire = connected(b"250-server.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    d1 = wire.conn.send(ENVELOPE_1, b"first")
    d2 = wire.conn.send(ENVELOPE_2, b"second")
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\nRCPT TO:<one@x.org>\r\nBDAT 7 LAST\r\nfirst\r\n"
    wire.server(b"250 ok\r\n250 ok\r\n")
    assert wire.client() == b""
    wire.server(b"250 first\r\n")
    assert result(d1).response == "250 first"
    assert wire.client().startswith(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<two@x.org>\r\nBDAT 8 LAST")
    wire.server(b"250 ok\r\n250 ok\r\n250 second\r\n")
    assert result(d2).response == "250 second"


# -- the one-write path for small messages ----------------------------------------------------


def test_small_and_streamed_messages_give_the_same_bytes() -> None:
    """A message up to one chunk is written at once; one byte more streams; both encode alike."""
    from twisted_smtpconn._source import DEFAULT_CHUNK_SIZE

    line = b".dotted line\nbare lf\r\n"
    for size in (DEFAULT_CHUNK_SIZE - 1, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE + 1):
        message = (line * (size // len(line) + 1))[:size]
        wire = connected()
        d = wire.conn.send(ENVELOPE_1, message)
        wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        body = wire.client()[len(GROUP_1) :]
        normalised = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if not normalised.endswith(b"\r\n"):
            normalised += b"\r\n"
        stuffed = (b"\r\n" + normalised).replace(b"\r\n.", b"\r\n..")[2:]
        assert body == stuffed + b".\r\n"
        wire.server(b"250 ok\r\n")
        assert result(d).message_size == len(normalised)


def test_small_str_message_is_utf8() -> None:
    wire = connected()
    d = wire.conn.send(ENVELOPE_1, "Subject: h\u00e9\n\n.caf\u00e9")
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert wire.client().endswith("Subject: h\u00e9\r\n\r\n..caf\u00e9\r\n.\r\n".encode())
    wire.server(b"250 ok\r\n")
    result(d)


def test_unencodable_str_still_fails_with_estream() -> None:
    wire = connected()
    d = wire.conn.send(ENVELOPE_1, "lone surrogate \ud800")
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert failure(d).code == "ESTREAM"
