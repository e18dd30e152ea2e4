"""
Message sources: everything a caller may pass as a message, read as one
asynchronous stream of bounded ``bytes`` chunks.

The API accepts a ``str``, any bytes-like object, a binary file, an iterable
of bytes-like chunks or an async iterable of them.  The protocol should not
care which: :func:`iterate_message` turns each into the same
``AsyncIterator[bytes]`` of non-empty chunks of at most ``chunk_size`` bytes,
so that the encoder's temporaries and the transport's buffer stay a small
multiple of the chunk size however large the message is.

Two kinds of failure are kept apart on purpose:

- a message of a type we cannot read at all is the caller's programming error,
  reported at once as :class:`TypeError` by :func:`check_message` (before any
  command is sent);
- a failure while *reading* the caller's source (a file read error, the
  caller's generator raising, a ``str`` chunk in a bytes stream) can happen
  mid-DATA, and is reported as :class:`~twisted_smtpconn.StreamError`
  (``ESTREAM``) with the original exception as ``__cause__``, so that the
  protocol knows the connection, not the server, is at fault.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from email.message import Message
from typing import Callable, cast

from twisted.internet.defer import CancelledError, Deferred

from ._email import is_email_message, prepare_email
from ._errors import StreamError

__all__ = ["check_message", "iterate_message", "DEFAULT_CHUNK_SIZE"]

#: The default upper bound of a chunk: large enough that per-chunk Python
#: overhead is negligible, small enough to keep memory flat.
DEFAULT_CHUNK_SIZE = 64 * 1024

_ACCEPTED = (
    "str, a bytes-like object, an email.message.Message, a binary file, "
    "or an (async) iterable of bytes-like chunks"
)


def _kind(message: object) -> str:
    """
    Classify ``message``, or raise :class:`TypeError` naming its type.

    The order matters: ``str`` is iterable and buffers such as ``mmap`` have
    ``read``, but both are best read as what they are.
    """
    if isinstance(message, str):
        return "str"
    if is_email_message(message):
        return "email"
    try:
        memoryview(message)  # type: ignore[arg-type]
    except TypeError:
        pass
    else:
        return "buffer"
    read = getattr(message, "read", None)
    if callable(read):
        mode = getattr(message, "mode", None)
        if isinstance(message, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
            raise TypeError(
                f"message is a text-mode file ({type(message).__name__}); open it in binary mode ('rb')"
            )
        return "file"
    if isinstance(message, (Mapping, AbstractSet)):
        # Iterable, but of keys or in no order: never a message's chunks.
        raise TypeError(f"message must be {_ACCEPTED}, not {type(message).__name__}")
    if isinstance(message, AsyncIterable):
        return "async-iterable"
    if isinstance(message, Iterable):
        return "iterable"
    raise TypeError(f"message must be {_ACCEPTED}, not {type(message).__name__}")


def check_message(message: object) -> None:
    """
    Reject, before anything is sent, a message that cannot be read at all.

    Only the container is checked: the chunks of an iterable and the mode of
    a file object without a ``mode`` attribute are checked while reading
    (failing with ``ESTREAM``), since looking at them now would consume them.

    :raises TypeError: naming the type, if ``message`` is none of ``str``, a
        bytes-like object, a binary file object, an iterable or an async
        iterable (``str`` chunks are refused later), or if it is a file
        opened in text mode.
    """
    _kind(message)


def iterate_message(message: object, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
    """
    Read ``message`` as an asynchronous stream of non-empty ``bytes`` chunks.

    A ``str`` is encoded as UTF-8 a slice at a time, a large buffer is sliced
    through a ``memoryview`` (so its memory is not doubled), a file is read
    ``chunk_size`` bytes at a time (its ``read`` may also return a
    ``Deferred``), and iterables' chunks are passed on, sliced when larger
    than ``chunk_size``.  Async iterables are consumed with ``async for``;
    under Twisted their ``__anext__`` may await Deferreds.

    The type is checked now (not at the first iteration), so a wrong type is
    a :class:`TypeError` at the call.

    :param chunk_size: the upper bound of each chunk's length.
    :raises TypeError: as :func:`check_message`.
    :raises ValueError: if ``chunk_size`` is not positive.
    :return: an async iterator whose iteration raises
        :class:`~twisted_smtpconn.StreamError` when reading the caller's
        source fails; cancellation (:class:`~twisted.internet.defer.CancelledError`)
        passes through unchanged.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, not {chunk_size!r}")
    kind = _kind(message)
    if kind == "str":
        return _from_str(cast(str, message), chunk_size)
    if kind == "email":
        # Normally serialised by the transaction, which knows what the server
        # offers (see _delivery); here with the message's own policy.
        return _from_iterable(prepare_email(cast(Message, message)).chunks, chunk_size)
    if kind == "buffer":
        return _from_buffer(message, chunk_size)
    if kind == "file":
        return _from_file(cast(Callable[[int], object], getattr(message, "read")), chunk_size)
    if kind == "async-iterable":
        return _from_async_iterable(cast(AsyncIterable[object], message), chunk_size)
    return _from_iterable(cast(Iterable[object], message), chunk_size)


def _stream_error(error: BaseException, what: str = "reading the message failed") -> StreamError:
    """The ``ESTREAM`` error for ``error``; the caller raises it ``from error``."""
    return StreamError(f"{what}: {type(error).__name__}: {error}")


def _slices(data: bytes, size: int) -> Iterator[bytes]:
    """
    Cut ``data`` into pieces of at most ``size`` bytes.

    Each piece is copied out of a ``memoryview`` only when it is needed, so
    slicing a large message costs one chunk of extra memory, not a second
    copy of the message.
    """
    if len(data) <= size:
        if data:
            yield data
        return
    with memoryview(data) as view:
        for start in range(0, len(view), size):
            yield view[start : start + size].tobytes()


def _to_bytes(chunk: object) -> bytes:
    """
    One chunk from the caller's stream as ``bytes``.

    A mutable chunk (``bytearray``, ``memoryview``) is copied at once, since
    a caller may reuse its buffer for the next chunk while we still send
    this one.

    :raises StreamError: if the chunk is not bytes-like.
    """
    if isinstance(chunk, bytes):
        return chunk
    try:
        if isinstance(chunk, str):
            raise TypeError("message chunks must be bytes-like, not str (encode the text first)")
        try:
            view = memoryview(chunk)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"message chunks must be bytes-like, not {type(chunk).__name__}") from None
    except TypeError as error:
        raise _stream_error(error, "the message stream produced an unusable chunk") from error
    with view:
        return view.tobytes()


async def _from_str(text: str, size: int) -> AsyncIterator[bytes]:
    # Encode a slice at a time: encoding the whole text at once would hold a
    # second full copy of the message.  A slice of ``size`` characters is up
    # to 4 * size bytes of UTF-8, so each encoded slice is cut again.
    for start in range(0, len(text), size):
        try:
            data = text[start : start + size].encode("utf-8")
        except UnicodeEncodeError as error:
            raise _stream_error(error, "the message text cannot be encoded as UTF-8") from error
        for piece in _slices(data, size):
            yield piece


async def _from_buffer(message: object, size: int) -> AsyncIterator[bytes]:
    if isinstance(message, bytes):
        for piece in _slices(message, size):
            yield piece
        return
    with memoryview(message) as view:  # type: ignore[arg-type]
        if view.c_contiguous:
            flat = view.cast("B")
        else:
            flat = memoryview(view.tobytes())
        with flat:
            for start in range(0, len(flat), size):
                yield flat[start : start + size].tobytes()


async def _from_file(read: Callable[[int], object], size: int) -> AsyncIterator[bytes]:
    while True:
        try:
            data = read(size)
            if isinstance(data, Deferred):
                data = await data
        except CancelledError:
            raise
        except Exception as error:
            raise _stream_error(error) from error
        if data is None:
            # What a non-blocking raw file returns when no data is ready:
            # there is nothing to wait on, so this source cannot be streamed.
            raise StreamError("reading the message failed: the file returned None (is it non-blocking?)")
        if isinstance(data, str):
            wrong = TypeError("the message file returned str; open it in binary mode ('rb')")
            raise _stream_error(wrong) from wrong
        piece = _to_bytes(data)
        if not piece:
            return
        for part in _slices(piece, size):
            yield part


async def _from_iterable(chunks: Iterable[object], size: int) -> AsyncIterator[bytes]:
    try:
        iterator = iter(chunks)
    except Exception as error:
        raise _stream_error(error) from error
    while True:
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        except Exception as error:
            raise _stream_error(error) from error
        for piece in _slices(_to_bytes(chunk), size):
            yield piece


async def _from_async_iterable(chunks: AsyncIterable[object], size: int) -> AsyncIterator[bytes]:
    try:
        iterator = aiter(chunks)
    except Exception as error:
        raise _stream_error(error) from error
    while True:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except CancelledError:
            raise
        except Exception as error:
            raise _stream_error(error) from error
        for piece in _slices(_to_bytes(chunk), size):
            yield piece
