"""
The job a Twisted application such as Buildbot does: an ``EmailMessage``
with text, an HTML alternative and an attachment, To/Cc/Bcc, a non-ASCII
subject and names, sent over STARTTLS with AUTH to a server whose
certificate was issued by a private CA.

Usage::

    python docs/examples/send_email_message.py HOST PORT CA_BUNDLE USER PASSWORD ATTACHMENT

The envelope comes from the headers (From; To, Cc and Bcc), and the Bcc
field is never transmitted.  Exits 0 when the message was accepted, and 1
with the error when it was not.
"""

import sys
from email.message import EmailMessage
from pathlib import Path

from twisted.internet import task

import twisted_smtpconn
from twisted_smtpconn import Auth, SMTPConnectionError


async def main(reactor, host, port, ca_bundle, user, password, attachment):
    msg = EmailMessage()
    msg["From"] = "Büildbot <buildbot@example.test>"
    msg["To"] = "Dev Team <dev@example.test>, Zoë Ärger <zoe@example.test>"
    msg["Cc"] = "qa@example.test"
    msg["Bcc"] = "audit@example.test"
    msg["Subject"] = "Build ✓ succeeded — Grüße"
    msg.set_content("The build succeeded.")
    msg.add_alternative("<p>The build <b>succeeded</b>.</p>", subtype="html")
    msg.add_attachment(Path(attachment).read_bytes(), maintype="application", subtype="gzip", filename="log.gz")
    try:
        info = await twisted_smtpconn.send(
            msg, host=host, port=int(port), auth=Auth(user, password),
            require_tls=True, tls={"ca_certs": ca_bundle}, reactor=reactor,
        )
    except SMTPConnectionError as error:
        print(f"not sent ({error.code}): {error}", file=sys.stderr)
        raise SystemExit(1)
    print(f"accepted for {', '.join(info.accepted)}: {info.response}")


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
