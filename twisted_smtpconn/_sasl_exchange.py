"""
The AUTH dialogue of RFC 4954 on the wire, for any
:class:`~twisted_smtpconn._sasl.SASLMechanism`.

This is the only code that sends SASL data, so the redaction rule lives
here once: the AUTH line is logged and reported as ``AUTH <MECH> ****`` when
it carries an initial response, and every continuation line as ``****``
(user names included: in LOGIN the first line *is* the user name, and a
partial rule is one bug away from logging the next line too).  Server
challenges are logged as received: they carry the server's nonces and
prompts, never our secrets.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._commands import redact_auth_command
from ._errors import AuthenticationError, ProtocolError, SMTPConnectionError
from ._protocol import SMTPClientProtocol
from ._reply import Reply
from ._sasl import SASLMechanism, decode_challenge, encode_response

__all__ = ["Outcome", "run_exchange", "REDACTED", "MAX_ROUNDS"]

#: What the transcript shows in place of a SASL response.
REDACTED = "****"

#: The most ``334`` challenges one exchange may have.  No mechanism we
#: speak needs more than three; a server that keeps challenging is broken or
#: hostile, and the loop must end.
MAX_ROUNDS = 8

#: The line that cancels an exchange (RFC 4954, section 4).
_CANCEL = b"*"


@dataclass(frozen=True)
class Outcome:
    """
    How an exchange ended.

    :ivar reply: the server's final reply (``235`` on success).
    :ivar command: the AUTH command as reported in errors (redacted).
    """

    reply: Reply
    command: str

    @property
    def accepted(self) -> bool:
        """Whether the server accepted the credentials."""
        return self.reply.is_positive


async def _cancel(
    protocol: SMTPClientProtocol, mechanism: SASLMechanism, command: str, error: SMTPConnectionError
) -> SMTPConnectionError:
    """
    Send ``*`` so that the server ends the exchange (normally with 501) and
    the connection stays usable; return ``error`` with the server's answer.
    """
    reply = await protocol.send_command(_CANCEL, log_as="*")
    if reply.is_intermediate:
        # The server still waits for SASL data: whatever we send next would
        # be read as a response.  There is no way back into step.
        failure = ProtocolError.from_reply(
            f"the server did not end the cancelled {mechanism.name} exchange", reply, command
        )
        protocol.abort(failure)
        return failure
    return AuthenticationError.from_reply(
        f"{mechanism.name} authentication was abandoned: {error.message}", reply, command
    )


#: Longest command line without its CRLF (RFC 5321 section 4.5.3.1.4: 512
#: octets with it).
_MAX_COMMAND_LINE = 510


async def run_exchange(protocol: SMTPClientProtocol, mechanism: SASLMechanism) -> Outcome:
    """
    Run one AUTH exchange to its final reply.

    A refusal by the server is *returned* (the caller decides between
    retrying with a renewed token and failing); everything else that ends
    the exchange early is raised.

    :raises AuthenticationError: the mechanism could not go on (bad
        challenge, mutual authentication failed); the exchange was cancelled
        with ``*`` first, so the connection is still usable -- except when
        the server had already accepted us without proving itself (SCRAM),
        in which case the connection is closed: we would be talking to a
        server that may be an impostor.
    :raises ConnectionFailedError: the server answered 421 (the protocol ends
        the connection on it).
    :raises ProtocolError: the server's reply fits no AUTH dialogue (a code
        other than 2xx, 334, 4xx, 5xx), or it did not end an exchange we
        cancelled; the connection is closed.
    """
    initial = mechanism.initial_response()
    line = b"AUTH " + mechanism.name.encode("ascii")
    deferred_initial: bytes | None = None
    if initial is not None:
        # An empty initial response is "=", to tell it apart from none.
        encoded = encode_response(initial) or b"="
        if len(line) + 1 + len(encoded) <= _MAX_COMMAND_LINE:
            line += b" " + encoded
        else:
            # RFC 4954 section 4: a response that would make the command
            # line too long waits for the server's empty 334 challenge.
            deferred_initial = encoded
    command = redact_auth_command(line)
    reply = await protocol.send_command(line, log_as=command)
    rounds = 0
    while reply.code == 334:
        rounds += 1
        if deferred_initial is not None:
            response_line, deferred_initial = deferred_initial, None
            reply = await protocol.send_command(response_line, log_as=REDACTED)
            continue
        try:
            if rounds > MAX_ROUNDS:
                raise AuthenticationError(f"the server sent more than {MAX_ROUNDS} challenges")
            try:
                challenge = decode_challenge(reply.text)
            except ValueError:
                if mechanism.strict_challenges:
                    raise AuthenticationError("the server's challenge is not base64") from None
                challenge = b""
            response = mechanism.respond(challenge)
        except AuthenticationError as error:
            raise await _cancel(protocol, mechanism, command, error) from None
        reply = await protocol.send_command(encode_response(response), log_as=REDACTED)
    if reply.is_positive:
        try:
            mechanism.finish()
        except AuthenticationError as error:
            failure = AuthenticationError.from_reply(error.message, reply, command)
            protocol.abort(failure)
            raise failure from None
    elif not (reply.is_transient or reply.is_permanent):
        raise ProtocolError.from_reply(f"unexpected reply to {mechanism.name} authentication", reply, command)
    return Outcome(reply, command)
