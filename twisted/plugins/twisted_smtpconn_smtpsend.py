"""
twistd dropins of twisted_smtpconn: ``smtpsend`` and ``smtpsink``.

Cheap to import on purpose: twistd imports every dropin to list its
subcommands, so this file names the modules and nothing else.  There is
no ``__init__.py`` in ``twisted/`` or ``twisted/plugins/``: this directory
is merged into Twisted's own ``twisted.plugins`` package.
"""

from twisted.application.service import ServiceMaker

# ServiceMaker is not annotated.
smtpsend = ServiceMaker(  # type: ignore[no-untyped-call]
    "twisted_smtpconn smtpsend",
    "twisted_smtpconn._cli._twistd",
    "Send mail through twisted_smtpconn (default: to an embedded capture server).",
    "smtpsend",
)

smtpsink = ServiceMaker(  # type: ignore[no-untyped-call]
    "twisted_smtpconn smtpsink",
    "twisted_smtpconn._sink._twistd",
    "Run a local ESMTP capture server that writes to a Maildir.",
    "smtpsink",
)
