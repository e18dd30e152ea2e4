"""
Send one message with twisted_smtpconn, then quit.

Usage::

    python docs/examples/send_one.py [HOST [PORT]]

HOST defaults to ``localhost`` and PORT to 25.  The connection upgrades with
STARTTLS when the server offers it (and fails with ``ETLS`` if the server's
certificate is not trusted); no password is sent.  Prints the server's reply
and exits 0 when the message was accepted; prints the error and exits 1 when
it was not.
"""

import sys

from twisted.internet import task

from twisted_smtpconn import Envelope, SMTPConnection, SMTPConnectionError


async def main(reactor, host="localhost", port="25"):
    conn = SMTPConnection(host, int(port), reactor=reactor)
    try:
        await conn.connect()
        info = await conn.send(
            Envelope("me@example.test", ["you@example.test"]),
            "Subject: hi\n\nhello\n",  # LF is fine: it is sent as CRLF
        )
        print(f"accepted by {info.accepted}: {info.response}")
    except SMTPConnectionError as error:
        print(f"not sent ({error.code}): {error}", file=sys.stderr)
        raise SystemExit(1)
    finally:
        await conn.quit()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
