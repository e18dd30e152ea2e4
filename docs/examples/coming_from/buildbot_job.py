"""
The job of the "Coming from twisted.mail / smtplib / aiosmtplib" page, the
one a Twisted application such as Buildbot does: an ``EmailMessage`` with a
text and an HTML body, an attachment, To, Cc and Bcc, non-ASCII names and
subject, sent over STARTTLS with AUTH to a server whose certificate comes
from a private CA.

Every ``job_*.py`` next to this file sends :func:`build_message` with a
different client; only their ``send`` functions differ.  Each is run as::

    python job_NAME.py HOST PORT CA_BUNDLE USER PASSWORD

and prints what the server accepted.
"""

import sys
from email.headerregistry import Address
from email.message import EmailMessage

#: The attachment: a build log, with a line that starts with a dot.
LOG = b"running tests\n.hidden file found\nFAILED test_resume\n"


def build_message():
    message = EmailMessage()
    message["Subject"] = "Build #7 of résumé-tests: ✗ failed"
    message["From"] = Address("Büildbot", "buildbot", "example.org")
    message["To"] = Address("Zoë Developer", "zoe", "example.net")
    message["Cc"] = Address("QA Team", "qa", "example.net")
    message["Bcc"] = "audit@example.net"
    message.set_content("The build failed.\n.A line that starts with a dot.\n")
    message.add_alternative("<p>The build <b>failed</b>.</p>\n", subtype="html")
    message.add_attachment(LOG, maintype="text", subtype="plain", filename="stdio.log")
    return message


def arguments():
    """HOST PORT CA_BUNDLE USER PASSWORD from the command line."""
    host, port, ca_file, user, password = sys.argv[1:6]
    return host, int(port), ca_file, user, password
