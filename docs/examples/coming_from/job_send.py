"""The job with this library's one-call ``send``."""

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

import twisted_smtpconn
from buildbot_job import arguments, build_message


async def send(reactor, message, host, port, ca_file, user, password):
    auth = twisted_smtpconn.Auth(user=user, password=password)
    return await twisted_smtpconn.send(
        message, host=host, port=port, auth=auth, tls={"ca_certs": ca_file}, require_tls=True, reactor=reactor
    )


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(send(reactor, build_message(), *arguments())).addCallback(print))
