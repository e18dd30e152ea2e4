"""
The command-line options of ``smtpsend``, shared by ``twistd smtpsend`` and
``python -m twisted_smtpconn``.

Parsing checks everything that can be checked without touching the file
system or the network, so that a bad invocation fails at once with a
one-line message (exit status 64).  Options that may also come from a
script file default to ``None`` here, so that the merge with the script
(:mod:`._settings`) can tell "not given" from "given as the default".
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

__all__ = [
    "SendOptions",
    "DSN_NOTIFY_VALUES",
    "DSN_RET_VALUES",
    "MAX_CONNECTIONS",
    "MAX_RETRIES",
    "parse_rate",
]

#: Upper bound for ``--connections``: a sanity limit, not a tuning hint.
MAX_CONNECTIONS = 100

#: Upper bound for ``--retries``: the pool's back-off doubles up to a
#: minute, so more than this only makes a run hang on a server that stays
#: unhappy.
MAX_RETRIES = 10

DSN_NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
DSN_RET_VALUES = frozenset({"FULL", "HDRS"})


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, not {port}")
    return port


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"must be a positive number of seconds, not {value}")
    return seconds


def _connections(value: str) -> int:
    count = int(value)
    if not 1 <= count <= MAX_CONNECTIONS:
        raise ValueError(f"must be 1-{MAX_CONNECTIONS}, not {count}")
    return count


def _max_messages(value: str) -> int:
    count = int(value)
    if count < 1:
        raise ValueError(f"must be at least 1, not {count}")
    return count


def _retries(value: str) -> int:
    count = int(value)
    if not 0 <= count <= MAX_RETRIES:
        raise ValueError(f"must be 0-{MAX_RETRIES}, not {count}")
    return count


def parse_rate(value: str) -> tuple[int, float]:
    """
    ``LIMIT/SECONDS`` (or ``LIMIT``, per second) as ``(limit, seconds)``.

    :raises ValueError: with a message fit for a usage error.
    """
    limit_text, _, seconds_text = value.partition("/")
    try:
        limit = int(limit_text)
        seconds = float(seconds_text) if seconds_text else 1.0
    except ValueError:
        raise ValueError(f"rate must be LIMIT/SECONDS, e.g. 10/1 or 600/60, not {value!r}") from None
    if limit < 1 or not 0 < seconds < float("inf"):
        raise ValueError(f"rate needs a positive LIMIT and SECONDS, not {value!r}")
    return limit, seconds


def _dsn_ret(value: str) -> str:
    ret = value.upper()
    if ret not in DSN_RET_VALUES:
        raise ValueError("must be FULL or HDRS")
    return ret


def check_notify(values: list[str]) -> list[str]:
    """
    Validate DSN NOTIFY keywords (upper-cased); NEVER must stand alone.

    :raises ValueError: with a message fit for a usage error.
    """
    upper = [v.strip().upper() for v in values if v.strip()]
    unknown = [v for v in upper if v not in DSN_NOTIFY_VALUES]
    if unknown or not upper:
        raise ValueError(f"DSN NOTIFY takes NEVER, SUCCESS, FAILURE, DELAY; got {values!r}")
    if "NEVER" in upper and len(upper) > 1:
        raise ValueError("DSN NOTIFY=NEVER cannot be combined with other values")
    return upper


def _dsn_notify(value: str) -> list[str]:
    return check_notify(value.split(","))


class SendOptions(usage.Options):
    """
    Options of ``smtpsend``.

    After parsing, ``self["to"]`` is the list of ``--to`` addresses and
    ``self["password-file"]``/``self["password-env"]`` say where the
    password is; it is read later, never from argv.
    """

    synopsis = "Usage: python -m twisted_smtpconn [options]"
    longdesc = (
        "Send mail through twisted_smtpconn.  With no --host (and no host in "
        "the script), a local capture server is started on 127.0.0.1 and the "
        "messages go to it through STARTTLS and AUTH, then land in a Maildir "
        "whose path is printed.  Exit status: 0 all accepted, 64 usage, "
        "65 message/envelope refused, 69 server refused or unavailable, "
        "75 temporary failure."
    )

    optParameters: list[list[Any]] = [
        # Where to connect (default: the embedded capture server).
        ["host", None, None, "SMTP server host name or address (default: embedded server)."],
        ["port", None, None, "Server port (default 465 with --secure, else 25).", _port],
        ["name", None, None, "EHLO/LHLO name (default: this host's name)."],
        ["local-address", None, None, "Local address to connect from."],
        ["connection-timeout", None, None, "Seconds to connect (default 120).", _seconds],
        ["greeting-timeout", None, None, "Seconds to wait for the greeting (default 30).", _seconds],
        ["socket-timeout", None, None, "Seconds of inactivity allowed (default 600).", _seconds],
        ["ca-certs", None, None, "PEM file of CA certificates to trust."],
        ["tls-servername", None, None, "Name to verify the certificate against (default: host)."],
        # Authentication.
        ["user", None, None, "AUTH user name."],
        ["password-file", None, None, "Read the AUTH password from this file."],
        ["password-env", None, None, "Read the AUTH password from this environment variable."],
        ["auth-method", None, None, "Preferred SASL mechanism (e.g. PLAIN)."],
        # What to send.
        ["from", None, None, "Envelope sender (and From: of --subject/--body messages)."],
        ["message", None, None, "Send this RFC 5322 file ('-' for standard input)."],
        ["subject", None, None, "Build a message with this subject."],
        ["body", None, None, "Build a message with this body text."],
        ["script", None, None, "JSON or TOML script of connection settings and messages."],
        ["spool", None, None, "Send every *.eml file of this directory."],
        ["dsn-ret", None, None, "DSN RET: FULL or HDRS.", _dsn_ret],
        ["dsn-notify", None, None, "DSN NOTIFY: NEVER or a comma list of SUCCESS,FAILURE,DELAY.", _dsn_notify],
        ["dsn-envid", None, None, "DSN ENVID."],
        # How.
        ["connections", None, 1, f"Parallel connections (1-{MAX_CONNECTIONS}).", _connections],
        ["max-messages-per-connection", None, None,
         "Messages over one connection before it is replaced (default 100).", _max_messages],
        ["rate", None, None, "Start at most LIMIT messages per SECONDS, e.g. 10/1 (default: no limit).", parse_rate],
        ["retries", None, None,
         f"Retries of a message that failed before the server had it, 0-{MAX_RETRIES} (default 0).", _retries],
        ["report", None, None, "Write one JSON line per message to this file."],
        ["maildir", None, None, "Maildir of the embedded server (default: a new temporary one)."],
    ]
    optFlags: list[list[Any]] = [
        ["secure", None, "TLS from the first byte (implicit TLS)."],
        ["require-tls", None, "Fail unless STARTTLS succeeds."],
        ["ignore-tls", None, "Never use STARTTLS."],
        ["opportunistic-tls", None, "Try STARTTLS; on failure go on in cleartext."],
        ["insecure", None, "Do not verify the server certificate."],
        ["allow-insecure-auth", None, "Allow a password over cleartext to a non-loopback host."],
        ["lmtp", None, "Speak LMTP instead of SMTP."],
        ["8bitmime", None, "Send BODY=8BITMIME when offered."],
        ["debug", None, "Log every SMTP line (credentials redacted)."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["to"] = []

    def opt_to(self, address: str) -> None:
        """Envelope recipient (may be repeated)."""
        self["to"].append(address)

    def opt_password(self, value: str) -> None:
        """Refused: use --password-file or --password-env."""
        raise usage.UsageError(
            "passwords are not taken from the command line (other users can read it); "
            "use --password-file FILE or --password-env VARIABLE"
        )

    def postOptions(self) -> None:
        composed = self["subject"] is not None or self["body"] is not None
        sources = [
            name
            for name, given in (
                ("--message", self["message"] is not None),
                ("--subject/--body", composed),
                ("--script", self["script"] is not None),
                ("--spool", self["spool"] is not None),
            )
            if given
        ]
        if len(sources) > 1:
            raise usage.UsageError(f"choose one of {', '.join(sources)}")
        if not sources:
            raise usage.UsageError(
                "nothing to send: give --subject/--body, --message FILE, --script FILE or --spool DIR"
            )
        if composed and not self["to"]:
            raise usage.UsageError("--subject/--body need at least one --to")
        if self["password-file"] is not None and self["password-env"] is not None:
            raise usage.UsageError("give --password-file or --password-env, not both")
        if self["ignore-tls"] and (self["require-tls"] or self["opportunistic-tls"]):
            raise usage.UsageError("--ignore-tls contradicts --require-tls/--opportunistic-tls")
        if self["secure"] and self["ignore-tls"]:
            raise usage.UsageError("--secure contradicts --ignore-tls")
        if self["insecure"] and self["ca-certs"] is not None:
            raise usage.UsageError("--insecure contradicts --ca-certs")
        if self["maildir"] is not None and self["host"] is not None:
            raise usage.UsageError("--maildir is for the embedded server; it contradicts --host")
        for address in self["to"]:
            if not address.strip():
                raise usage.UsageError("--to needs an address")
