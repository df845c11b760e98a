"""app.core.pixels: a call's large arrays cross from a worker to the core in shared memory (the socket carries only
their place), over a real Unix socket between two real connections."""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from threading import Thread

import numpy as np
import pytest

from app.core import pixels
from app.core.pixels import SHARED_KEEP_BYTES, SHARED_MIN_BYTES, PixelReceiver, PixelSender


class CountingConnection:
    """A connection that counts the bytes of each message written to the socket."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.sent: list[int] = []

    def send_bytes(self, data: bytes | memoryview) -> None:
        self.sent.append(len(data))
        self._connection.send_bytes(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._connection, name)


@pytest.fixture
def line(tmp_path: Path) -> Iterator[tuple[PixelSender, PixelReceiver, CountingConnection]]:
    address = str(tmp_path / "core.sock")
    with Listener(address, family="AF_UNIX") as listener:
        accepted: list[Connection] = []
        acceptor = Thread(target=lambda: accepted.append(listener.accept()))
        acceptor.start()
        worker = Client(address, family="AF_UNIX")
        acceptor.join(10)
        counting = CountingConnection(worker)
        sender = PixelSender(counting)  # type: ignore[arg-type]
        receiver = PixelReceiver(accepted[0])
        yield sender, receiver, counting
        worker.close()
        accepted[0].close()


def call(sender: PixelSender, receiver: PixelReceiver, message: object) -> object:
    sender.send(message)
    received = receiver.recv()
    receiver.answered()
    sender.answered()
    return received


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_pixels_cross_in_shared_memory_and_arrive_equal(
    line: tuple[PixelSender, PixelReceiver, CountingConnection],
) -> None:
    sender, receiver, counting = line
    big, small = photo(480, 640), photo(20, 20)
    embedding = np.arange(512, dtype=np.float32)
    method, args, kwargs = call(sender, receiver, ("search", ([big, small],), {"top_k": 5, "vector": embedding}))  # type: ignore[misc]
    (images,) = args
    assert method == "search" and kwargs["top_k"] == 5
    assert np.array_equal(images[0], big) and np.array_equal(images[1], small)
    assert np.array_equal(kwargs["vector"], embedding)
    assert images[0].dtype == np.uint8 and images[0].shape == big.shape
    # The call's message holds the small arrays and the big one's place, not its 0.9 MB.
    assert counting.sent[-1] < 10_000 < big.nbytes
    assert small.nbytes + embedding.nbytes < SHARED_MIN_BYTES


def test_a_larger_call_gets_a_new_buffer_and_earlier_arrays_stay_mapped(
    line: tuple[PixelSender, PixelReceiver, CountingConnection],
) -> None:
    sender, receiver, _ = line
    first = photo(480, 640, seed=1)
    (_, (kept,), _) = call(sender, receiver, ("a", (first,), {}))  # type: ignore[misc]
    size = sender.buffer_bytes
    assert size >= first.nbytes
    larger = [photo(900, 1200, seed=2), photo(960, 1280, seed=3)]  # over the first buffer together
    sender.send(("b", (larger,), {}))
    assert sender.buffer_bytes > size
    (_, (images,), _) = receiver.recv()
    assert all(np.array_equal(a, b) for a, b in zip(images, larger, strict=True))
    # An array kept past its call still reads (the dropped buffer stays mapped while referred to); its values are
    # not promised: the worker writes the buffer again once the call is answered.
    assert kept.shape == first.shape and kept.sum() >= 0


def test_strided_arrays_arrive_as_their_values(line: tuple[PixelSender, PixelReceiver, CountingConnection]) -> None:
    sender, receiver, _ = line
    base = photo(600, 800, seed=4)
    strided = base[::2, ::-1]  # not contiguous
    (_, (got,), _) = call(sender, receiver, ("c", (strided,), {}))  # type: ignore[misc]
    assert np.array_equal(got, strided)


def test_a_buffer_grown_past_the_keep_limit_is_given_up_after_its_call(
    line: tuple[PixelSender, PixelReceiver, CountingConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    sender, receiver, _ = line
    monkeypatch.setattr(pixels, "SHARED_KEEP_BYTES", 8 * 2**20)
    call(sender, receiver, ("d", (photo(480, 640),), {}))
    assert 0 < sender.buffer_bytes <= pixels.SHARED_KEEP_BYTES  # small: kept for the next call
    (_, (got,), _) = call(sender, receiver, ("e", (photo(1500, 2000, seed=5),), {}))  # type: ignore[misc]
    assert sender.buffer_bytes == 0  # 9 MB photo, 18 MB buffer: given up on both ends
    assert np.array_equal(got, photo(1500, 2000, seed=5))
    (_, (again,), _) = call(sender, receiver, ("f", (photo(480, 640, seed=6),), {}))  # type: ignore[misc]
    assert np.array_equal(again, photo(480, 640, seed=6)) and sender.buffer_bytes > 0
    assert SHARED_KEEP_BYTES >= 8 * 2**20  # the default keeps a few large photos' buffers


def test_without_memfd_the_arrays_travel_in_the_message(
    line: tuple[PixelSender, PixelReceiver, CountingConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    sender, receiver, counting = line
    monkeypatch.setattr(pixels, "SHARED_MEMORY", False)
    big = photo(480, 640, seed=8)
    sending = Thread(target=sender.send, args=(("g", (big,), {}),))  # 0.9 MB: more than the socket buffers
    sending.start()
    (_, (got,), _) = receiver.recv()
    sending.join(10)
    assert not sending.is_alive()
    assert np.array_equal(got, big) and counting.sent[-1] > big.nbytes and sender.buffer_bytes == 0
