"""
Tests of message sources: which messages are accepted, how each is cut into
bounded chunks, and how read failures become ESTREAM errors.
"""

from __future__ import annotations

import array
import io
import mmap
import tracemalloc
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure

from twisted_smtpconn._errors import StreamError
from twisted_smtpconn._source import check_message, iterate_message

T = TypeVar("T")


async def _collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


async def _drain(chunks: AsyncIterator[bytes]) -> int:
    """Read every chunk and drop it at once, as the producer does."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
    return total


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """
    Run a coroutine over a source that never waits: it finishes
    synchronously, so no reactor is needed.
    """
    results: list[T | Failure] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results, "a synchronous source must not wait"
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


def collect_now(message: object, chunk_size: int = 64 * 1024) -> list[bytes]:
    return run_now(_collect(iterate_message(message, chunk_size=chunk_size)))


def stream_error(message: object, chunk_size: int = 64 * 1024) -> StreamError:
    with pytest.raises(StreamError) as info:
        collect_now(message, chunk_size)
    assert info.value.code == "ESTREAM"
    return info.value


def assert_well_cut(chunks: list[bytes], chunk_size: int) -> None:
    assert all(type(chunk) is bytes for chunk in chunks)
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)


# -- check_message ----------------------------------------------------------------


def test_accepted_types(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(b"Subject: x\r\n\r\nbody\r\n")

    async def agen() -> AsyncIterator[bytes]:
        yield b"x"

    with path.open("rb") as binary, path.open("r+b") as raw:
        for message in [
            "text",
            b"bytes",
            bytearray(b"ba"),
            memoryview(b"mv"),
            array.array("B", b"arr"),
            io.BytesIO(b"file"),
            binary,
            raw,
            [b"a", b"b"],
            (chunk for chunk in [b"a"]),
            agen(),
        ]:
            check_message(message)


@pytest.mark.parametrize("message", [None, 42, 1.5, object(), True])
def test_unusable_types_are_type_errors_naming_the_type(message: object) -> None:
    with pytest.raises(TypeError, match=type(message).__name__):
        check_message(message)
    with pytest.raises(TypeError, match=type(message).__name__):
        iterate_message(message)


def test_text_files_are_type_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_text("hello\n")
    with path.open("r") as text:
        with pytest.raises(TypeError, match="TextIOWrapper"):
            check_message(text)
    with pytest.raises(TypeError, match="binary mode"):
        check_message(io.StringIO("hello"))

    class TextModeFile:
        mode = "r"

        def read(self, size: int = -1) -> str:
            return "x"

    with pytest.raises(TypeError, match="TextModeFile"):
        check_message(TextModeFile())


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        iterate_message(b"x", chunk_size=0)


# -- in-memory messages ---------------------------------------------------------------


def test_str_is_utf8_in_bounded_chunks() -> None:
    text = "Grüße, 世界! \U0001f600 " * 50
    chunks = collect_now(text, chunk_size=7)
    assert_well_cut(chunks, 7)
    assert b"".join(chunks) == text.encode("utf-8")


def test_str_with_lone_surrogate_is_a_stream_error() -> None:
    error = stream_error("ok \udc80 not ok")
    assert isinstance(error.__cause__, UnicodeEncodeError)


def test_small_bytes_is_passed_on_uncopied() -> None:
    message = b"Subject: x\r\n\r\nhi\r\n"
    [chunk] = collect_now(message)
    assert chunk is message


def test_empty_messages_give_no_chunks() -> None:
    for message in ["", b"", bytearray(), [], [b"", b""], io.BytesIO(b"")]:
        assert collect_now(message) == []


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_large_buffers_are_sliced(kind: type) -> None:
    data = bytes(range(256)) * 1000
    chunks = collect_now(kind(data), chunk_size=1000)
    assert_well_cut(chunks, 1000)
    assert b"".join(chunks) == data


def test_non_byte_buffers_are_read_as_their_bytes() -> None:
    words = array.array("I", range(1000))
    chunks = collect_now(words, chunk_size=999)
    assert_well_cut(chunks, 999)
    assert b"".join(chunks) == words.tobytes()


def test_mmap_is_read_as_a_buffer(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(b"0123456789" * 100)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        chunks = collect_now(mapped, chunk_size=300)
        assert_well_cut(chunks, 300)
        assert b"".join(chunks) == b"0123456789" * 100


def _peak_while_reading(message: object) -> int:
    """Peak traced memory while reading ``message`` chunk by chunk, discarding chunks."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        assert run_now(_drain(iterate_message(message))) > 0
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    return peak


def test_large_bytes_and_str_are_not_copied_whole() -> None:
    size = 32 * 1024 * 1024
    assert _peak_while_reading(b"x" * size) < 1024 * 1024
    assert _peak_while_reading(bytearray(size)) < 1024 * 1024
    assert _peak_while_reading("é" * (size // 2)) < 2 * 1024 * 1024


# -- files --------------------------------------------------------------------------


def test_file_is_read_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    data = bytes(range(256)) * 4000
    path.write_bytes(data)
    with path.open("rb") as f:
        chunks = collect_now(f, chunk_size=4096)
    assert_well_cut(chunks, 4096)
    assert b"".join(chunks) == data


def test_file_read_error_is_a_stream_error() -> None:
    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.reads = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            self.reads += 1
            if self.reads > 2:
                raise OSError(5, "disk on fire")
            return b"x" * 10

    error = stream_error(Failing())
    assert isinstance(error.__cause__, OSError)
    assert "disk on fire" in str(error)


def test_file_returning_str_is_a_stream_error() -> None:
    class Sneaky:
        """A text file that does not say so."""

        def read(self, size: int = -1) -> str:
            return "text"

    check_message(Sneaky())
    error = stream_error(Sneaky())
    assert isinstance(error.__cause__, TypeError)
    assert "binary mode" in str(error)


def test_non_blocking_file_without_data_is_a_stream_error() -> None:
    class NotReady:
        def read(self, size: int = -1) -> None:
            return None

    assert "None" in str(stream_error(NotReady()))


def test_file_whose_read_returns_deferreds() -> None:
    class DeferredFile:
        def __init__(self) -> None:
            self.parts = [b"ab", b"cd"]

        def read(self, size: int = -1) -> Deferred[bytes]:
            return succeed(self.parts.pop(0) if self.parts else b"")

    assert collect_now(DeferredFile()) == [b"ab", b"cd"]


# -- synchronous iterables ------------------------------------------------------------------


def test_iterable_chunks_are_passed_on_and_big_ones_cut() -> None:
    chunks = collect_now([b"ab", b"", bytearray(b"cd"), memoryview(b"ef"), b"x" * 25], chunk_size=10)
    assert_well_cut(chunks, 10)
    assert chunks[:3] == [b"ab", b"cd", b"ef"]
    assert b"".join(chunks) == b"abcdef" + b"x" * 25


def test_reused_buffer_chunks_are_copied() -> None:
    """A generator that refills one bytearray: each chunk is taken as it was when yielded."""

    def refill() -> Iterator[bytearray]:
        buffer = bytearray(3)
        for value in b"abc":
            buffer[:] = bytes([value]) * 3
            yield buffer

    assert collect_now(refill()) == [b"aaa", b"bbb", b"ccc"]


def test_iterator_raising_is_a_stream_error() -> None:
    def broken() -> Iterator[bytes]:
        yield b"first"
        raise ValueError("generator broke")

    error = stream_error(broken())
    assert isinstance(error.__cause__, ValueError)
    assert "generator broke" in str(error)


@pytest.mark.parametrize("bad", ["text", 42, None])
def test_chunk_of_wrong_type_is_a_stream_error(bad: object) -> None:
    error = stream_error([b"ok", bad])
    assert isinstance(error.__cause__, TypeError)
    assert type(bad).__name__ in str(error)


# -- async iterables -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_async_iterable_awaiting_the_reactor() -> None:
    from twisted.internet import reactor, task

    async def slow() -> AsyncIterator[bytes]:
        for index in range(5):
            chunk = await task.deferLater(reactor, 0, lambda i=index: b"%d" % i * 30)
            yield chunk

    chunks = await _collect(iterate_message(slow(), chunk_size=20))
    assert_well_cut(chunks, 20)
    assert b"".join(chunks) == b"".join(b"%d" % i * 30 for i in range(5))


@pytest_twisted.ensureDeferred
async def test_async_iterable_raising_is_a_stream_error() -> None:
    from twisted.internet import reactor, task

    async def broken() -> AsyncIterator[bytes]:
        yield b"first"
        await task.deferLater(reactor, 0, lambda: None)
        raise ConnectionResetError("upstream went away")

    chunks = iterate_message(broken())
    assert await chunks.__anext__() == b"first"
    with pytest.raises(StreamError) as info:
        await chunks.__anext__()
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert "upstream went away" in str(info.value)


def test_async_chunk_of_wrong_type_is_a_stream_error() -> None:
    async def wrong() -> AsyncIterator[object]:
        yield "text"

    assert isinstance(stream_error(wrong()).__cause__, TypeError)


def test_cancellation_passes_through_unchanged() -> None:
    """Cancelling a send that waits on the caller's source is not a stream failure."""
    waiting: Deferred[bytes] = Deferred()

    async def stalled() -> AsyncIterator[bytes]:
        yield await waiting

    reading = Deferred.fromCoroutine(_collect(iterate_message(stalled())))
    reading.cancel()
    failures: list[Any] = []
    reading.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
    assert not failures[0].check(StreamError)


# -- properties ----------------------------------------------------------------------


@given(data=st.binary(max_size=2000), chunk_size=st.integers(min_value=1, max_value=300))
def test_bytes_round_trip(data: bytes, chunk_size: int) -> None:
    chunks = collect_now(data, chunk_size)
    assert_well_cut(chunks, chunk_size)
    assert b"".join(chunks) == data


@given(text=st.text(max_size=500), chunk_size=st.integers(min_value=1, max_value=64))
def test_text_round_trip(text: str, chunk_size: int) -> None:
    text = text.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
    chunks = collect_now(text, chunk_size)
    assert_well_cut(chunks, chunk_size)
    assert b"".join(chunks) == text.encode("utf-8")


@given(
    parts=st.lists(st.binary(max_size=100), max_size=20),
    chunk_size=st.integers(min_value=1, max_value=50),
)
def test_iterable_round_trip(parts: list[bytes], chunk_size: int) -> None:
    chunks = collect_now(iter(parts), chunk_size)
    assert_well_cut(chunks, chunk_size)
    assert b"".join(chunks) == b"".join(parts)
