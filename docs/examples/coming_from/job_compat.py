"""
The twisted.mail job with one import changed: ``twisted_smtpconn.compat``.
"""

from email.utils import getaddresses
from io import BytesIO
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import react
from twisted_smtpconn.compat import ESMTPSenderFactory

from buildbot_job import arguments, build_message


def send(reactor, message, host, port, ca_file, user, password):
    sender = getaddresses([message["From"]])[0][1]
    fields = message.get_all("To", []) + message.get_all("Cc", []) + message.get_all("Bcc", [])
    recipients = [address for _, address in getaddresses(fields)]
    del message["Bcc"]
    trust = Certificate.loadPEM(Path(ca_file).read_bytes())
    result = Deferred()
    factory = ESMTPSenderFactory(
        user.encode(), password.encode(), sender, recipients, BytesIO(message.as_bytes()), result,
        contextFactory=optionsForClientTLS(host, trustRoot=trust),
    )
    reactor.connectTCP(host, port, factory)
    return result


if __name__ == "__main__":
    react(lambda reactor: send(reactor, build_message(), *arguments()).addCallback(print))
