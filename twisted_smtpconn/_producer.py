"""
Streaming the message body to the transport with back-pressure.

A Twisted transport never refuses a ``write``: it buffers whatever it is
given.  Writing a 1 GB message in a loop would therefore hold 1 GB in the
transport's buffer while the kernel trickles it out.  The transport's way to
say "enough for now" is the producer protocol: a registered push producer is
told ``pauseProducing()`` when the buffer passes its high-water mark and
``resumeProducing()`` once it drained, and ``stopProducing()`` when the
connection is gone.  :class:`BodyProducer` turns those three calls into the
suspension points of one ``async`` loop, so memory stays a small multiple of
the chunk size however large the message is.

Like ``twisted.web.client.FileBodyProducer``, it owns nothing but the loop:
the source (:func:`~twisted_smtpconn._source.iterate_message`) and the codec
(:class:`~twisted_smtpconn._dotstuff.BodyEncoder`) are composed by the caller,
here with :func:`encoded`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from ._dotstuff import BodyEncoder
from ._errors import ConnectionFailedError

__all__ = ["BodyProducer", "encoded"]


@implementer(IPushProducer)
class BodyProducer:
    """
    Writes an async stream of byte pieces to an ``IConsumer`` (a Twisted
    transport), pausing whenever the consumer asks (``pauseProducing``) so
    memory stays bounded however large the message.

    One producer writes one stream: :meth:`write_all` may be called once.
    """

    def __init__(self, consumer: IConsumer) -> None:
        self._consumer = consumer
        self._paused = False
        self._stopped = False
        self._started = False
        # Fired by resumeProducing/stopProducing while the loop waits.
        self._wakeup: Deferred[None] | None = None
        # The wait for the source's next piece, cancelled by stopProducing.
        self._pending: Deferred[tuple[bool, bytes]] | None = None

    @property
    def paused(self) -> bool:
        """Whether the consumer asked us to pause and has not resumed us yet."""
        return self._paused

    async def write_all(self, pieces: AsyncIterator[bytes]) -> int:
        """
        Write every piece of ``pieces`` to the consumer, respecting pauses.

        The producer is registered as a streaming producer for the duration
        and unregistered on every exit path, so the transport is left ready
        for the next message (or the final reply).

        :param pieces: the wire bytes, typically :func:`encoded` output.
        :return: the number of bytes written.
        :raises ConnectionFailedError: if the consumer called
            ``stopProducing`` (the connection closed) before the stream ended.
        :raises Exception: whatever ``pieces`` raised, unchanged.
        :raises RuntimeError: if called a second time.
        """
        if self._started:
            raise RuntimeError("BodyProducer.write_all() may be called only once")
        self._started = True
        # A transport that is already disconnected calls stopProducing() from
        # inside registerProducer (without registering us); the first check
        # in the loop turns that into the usual error.
        self._consumer.registerProducer(self, True)
        written = 0
        try:
            self._check_stopped()
            while True:
                more, piece = await self._next_piece(pieces)
                if not more:
                    break
                # Wait here, with the next piece in hand, rather than right
                # after a write: the last piece then needs no resume, and a
                # failing source is reported at once even while paused.
                while self._paused and not self._stopped:
                    self._wakeup = Deferred()
                    await self._wakeup
                self._check_stopped()
                if piece:
                    # May pause us at once (the transport's buffer is full).
                    self._consumer.write(piece)
                    written += len(piece)
            # Gone before the end: what was written may never have left.
            self._check_stopped()
        except BaseException:
            await _close_quietly(pieces)
            raise
        finally:
            self._wakeup = None
            self._consumer.unregisterProducer()
        return written

    async def _next_piece(self, pieces: AsyncIterator[bytes]) -> tuple[bool, bytes]:
        """
        ``(True, piece)``, or ``(False, b"")`` at the end of ``pieces``.

        Awaited so that :meth:`stopProducing` can interrupt it: a source that
        stalls (a caller's generator waiting for something that never comes)
        must not outlive the connection.  The wait is cancelled, which tells
        the source nobody waits for it any more, and the usual error follows.
        """
        step = Deferred.fromCoroutine(_next_of(pieces))
        if step.called:
            return await step
        self._pending = step
        try:
            return await step
        except CancelledError:
            self._check_stopped()
            raise
        finally:
            self._pending = None

    def _check_stopped(self) -> None:
        if self._stopped:
            raise ConnectionFailedError("connection closed while sending the message")

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.callback(None)

    # -- IPushProducer ----------------------------------------------------------

    def pauseProducing(self) -> None:
        """The consumer's buffer is full: write nothing until resumed."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The consumer's buffer drained: go on writing."""
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        """The consumer is gone: end the loop at its next step with an error."""
        self._stopped = True
        self._paused = False
        self._wake()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()


async def _next_of(pieces: AsyncIterator[bytes]) -> tuple[bool, bytes]:
    """One step of ``pieces``; the end is a value, not an exception to carry."""
    try:
        return True, await anext(pieces)
    except StopAsyncIteration:
        return False, b""


async def _close_quietly(pieces: AsyncIterator[bytes]) -> None:
    """
    Finalise an abandoned async generator now rather than at garbage
    collection, so that its ``finally`` blocks run while the error that
    ended the write is reported.  A failure while closing must not hide that
    error, so it is dropped.
    """
    aclose = getattr(pieces, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # noqa: S110 -- the original error is the one to report
        pass


async def encoded(chunks: AsyncIterator[bytes], encoder: BodyEncoder) -> AsyncIterator[bytes]:
    """
    Encode a stream of message chunks for the wire.

    :return: ``encoder.encode()`` of each chunk (empty results, such as a
        held-back CR, are skipped), then ``encoder.finish()``.
    """
    try:
        async for chunk in chunks:
            out = encoder.encode(chunk)
            if out:
                yield out
    except BaseException:
        await _close_quietly(chunks)
        raise
    tail = encoder.finish()
    if tail:
        yield tail
