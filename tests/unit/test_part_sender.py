"""The part sender that UploadVideo and resumable writes share: parts in order, one in flight,
exact or chunk-sized boundaries, errors, and the hashing beside a part's upload."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from checkout_server.upload.memory import MemoryBudget, StreamMemory
from checkout_server.upload.part_sender import Part, PartSender, write_hashing

pytestmark = pytest.mark.timeout(10)


class Store:
    """Records the parts it gets; each waits for `gate` when one is set."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self.running = 0
        self.most_running = 0
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None

    async def __call__(self, part: Part) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            self.parts.append(part)
        finally:
            self.running -= 1


async def test_exact_parts_are_cut_at_the_boundaries() -> None:
    store = Store()
    parts = PartSender(store, part_bytes=4, offset=8, exact=True)
    for chunk in (b"abc", b"defgh", b"ij"):
        await parts.add(chunk)
    await parts.flush()
    await parts.wait()
    assert [(p.offset, b"".join(p.chunks), p.size_bytes) for p in store.parts] == [
        (8, b"abcd", 4),
        (12, b"efgh", 4),
        (16, b"ij", 2),
    ]
    assert store.parts[0].chunks == [b"abc", b"d"]  # kept as received but for the cut
    assert parts.end == 18


async def test_chunk_sized_parts_end_with_the_chunk_that_fills_them() -> None:
    store = Store()
    parts = PartSender(store, part_bytes=4)
    for chunk in (b"abc", b"defgh", b"ij"):
        await parts.add(chunk)
    await parts.wait()
    last = parts.take()
    assert [p.chunks for p in store.parts] == [[b"abc", b"defgh"]]
    assert (last.offset, last.chunks, last.size_bytes) == (8, [b"ij"], 2)
    assert parts.end == 10


async def test_one_part_in_flight() -> None:
    store = Store()
    store.gate = asyncio.Event()
    parts = PartSender(store, part_bytes=2, exact=True)
    await parts.add(b"ab")  # sent
    adding = asyncio.create_task(parts.add(b"cd"))  # waits for the one in flight
    await asyncio.sleep(0.01)
    assert not adding.done()
    assert store.running == 1
    store.gate.set()
    await adding
    await parts.wait()
    assert store.most_running == 1
    assert [p.offset for p in store.parts] == [0, 2]


async def test_chunks_are_held_in_the_streams_memory_until_their_part_is_stored() -> None:
    budget = MemoryBudget(100)
    memory = StreamMemory(budget, granule_bytes=2, wait_s=0.05, busy=MemoryError)
    store = Store()
    store.gate = asyncio.Event()
    parts = PartSender(store, part_bytes=4, exact=True, memory=memory)
    await parts.add(b"a")
    assert budget.used_bytes == 2  # one granule for one byte
    await parts.add(b"bcdef")  # a part in flight, "ef" collected
    assert budget.used_bytes == 6
    store.gate.set()
    await parts.wait()  # stored: its 4 bytes were given back as it ended
    assert budget.used_bytes == 2
    await memory.close()
    assert budget.used_bytes == 0


async def test_a_chunk_the_memory_refuses_is_not_collected() -> None:
    budget = MemoryBudget(4)
    memory = StreamMemory(budget, granule_bytes=2, wait_s=0.01, busy=MemoryError)
    assert await budget.reserve(2)  # another stream's
    parts = PartSender(Store(), part_bytes=8, memory=memory)
    await parts.add(b"ab")
    with pytest.raises(MemoryError):
        await parts.add(b"cd")
    assert parts.end == 2
    assert budget.used_bytes == 4


async def test_a_failed_part_is_raised() -> None:
    store = Store()
    store.fail = RuntimeError("storage down")
    parts = PartSender(store, part_bytes=2)
    await parts.add(b"ab")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        parts.raise_if_failed()
    parts = PartSender(store, part_bytes=2)
    await parts.add(b"ab")
    with pytest.raises(RuntimeError):
        await parts.add(b"cd")


async def test_stop_cancels_and_settle_lets_finish() -> None:
    store = Store()
    store.gate = asyncio.Event()
    parts = PartSender(store, part_bytes=2)
    await parts.add(b"ab")
    await parts.stop()
    assert store.parts == []
    assert store.running == 0

    await parts.add(b"cd")
    settling = asyncio.create_task(parts.settle(5))
    await asyncio.sleep(0.01)
    store.gate.set()
    await settling
    assert [p.offset for p in store.parts] == [2]

    store.gate = asyncio.Event()  # never set: settle gives up after its grace
    await parts.add(b"ef")
    await parts.settle(0.01)
    await asyncio.sleep(0)
    assert store.running == 0
    assert len(store.parts) == 1


@pytest.mark.parametrize("size", [10, 2 * 1024 * 1024])  # on the loop, in a worker thread
async def test_write_hashing_hashes_beside_the_write(size: int) -> None:
    digest = hashlib.sha256()
    chunks = [b"x" * (size // 2), b"y" * (size - size // 2)]

    async def write() -> str:
        return "etag"

    part = Part(offset=0, chunks=chunks, size_bytes=size)
    assert await write_hashing(digest, part, write()) == "etag"
    assert digest.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()

    async def fails() -> str:
        raise RuntimeError("gone")

    with pytest.raises(RuntimeError):
        await write_hashing(hashlib.sha256(), part, fails())
    assert await write_hashing(None, part, write()) == "etag"
