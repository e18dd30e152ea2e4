"""
Send one message over TLS to a server whose certificate was issued by a
private CA, verifying it against that CA only.

Usage::

    python docs/examples/tls_private_ca.py HOST PORT CA_BUNDLE [starttls|implicit]

``starttls`` (the default) connects in cleartext and requires STARTTLS;
``implicit`` speaks TLS from the first byte (port 465 style).  HOST is the
name the certificate must carry.  Exits 0 when the message was accepted,
and 1 with the error (``ETLS`` and its reason when the certificate is not
trusted) when it was not.
"""

import sys

from twisted.internet import task

from twisted_smtpconn import Envelope, SMTPConnection, SMTPConnectionError


async def main(reactor, host, port, ca_bundle, mode="starttls"):
    conn = SMTPConnection(
        host,
        int(port),
        secure=mode == "implicit",
        require_tls=mode == "starttls",
        tls={"ca_certs": ca_bundle},  # trust this CA instead of the system's
        reactor=reactor,
    )
    try:
        await conn.connect()
        info = await conn.send(
            Envelope("me@example.test", ["you@example.test"]),
            "Subject: private CA\n\nverified TLS\n",
        )
        print(f"sent over TLS (secure={conn.secure}): {info.response}")
    except SMTPConnectionError as error:
        print(f"not sent ({error.code}): {error}", file=sys.stderr)
        raise SystemExit(1)
    finally:
        await conn.quit()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
