"""The commit point of an upload is the insert of its outbox message: a client that goes away
(or a deadline that passes) after it must not take the object away from its event.

Found by the soak's auditor (`python -m soak net-cut`): an upload cancelled by its client
while its event was being written left the event (published by the relay) without its
object; the client's retry with the same idempotency key was then answered with that event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.domain import OutboxEvent
from checkout_server.outbox.document import Document
from checkout_server.ports import Outbox
from checkout_server.wiring.server import App
from tests.helpers import mp4_bytes, sha256_hex
from tests.integration.storage_checks import object_keys, object_sha256, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class SlowAfterCommit:
    """A decorator of the real Outbox port whose `add` writes the event and then takes
    `delay_s` more (a slow reply, or the status record's insert), signalling `committed`."""

    def __init__(self, inner: Outbox, delay_s: float) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self.committed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def add(self, event: OutboxEvent) -> None:
        await self._inner.add(event)
        self.committed.set()
        await asyncio.sleep(self._delay_s)


async def settled(app: App) -> None:
    """Wait until the server has finished with the upload, its cleanups included."""

    async def idle() -> bool:
        return app.pipeline.in_flight == 0

    await wait_until(idle, timeout_s=20, what="the upload's handler finished")
    await app.pipeline.drain_cleanups(timeout_s=10)


def messages(data: bytes, key: str = "") -> Iterator[pb.UploadVideoRequest]:
    meta = pb.UploadMetadata(filename="clip.mp4", idempotency_key=key)
    yield pb.UploadVideoRequest(metadata=meta)
    yield pb.UploadVideoRequest(chunk=data)


async def test_a_client_cancel_after_the_commit_keeps_the_object_with_its_event(
    app: App,
    stub: pb_grpc.CheckoutServiceAsyncStub,
    s3: Minio,
    bucket: str,
    outbox_collection: AsyncCollection[Document],
) -> None:
    slow = SlowAfterCommit(app.pipeline._outbox, delay_s=1.0)
    app.pipeline._outbox = slow
    data = mp4_bytes(300_000, seed=7)
    call = stub.UploadVideo(messages(data, key="cancelled-after-commit"), timeout=30)
    await asyncio.wait_for(slow.committed.wait(), 20)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    (event,) = [doc async for doc in outbox_collection.find({})]
    key = f"input/{event['_id']}.mp4"
    # What the cleanup of a cancelled upload would have done by now, it must not do.
    await settled(app)
    assert await object_keys(s3, bucket) == [key]
    assert await object_sha256(s3, bucket, key) == (len(data), sha256_hex(data))
    # The client's retry with its key is answered with that event, whose object is there.
    app.pipeline._outbox = slow._inner
    again = await stub.UploadVideo(messages(data, key="cancelled-after-commit"), timeout=30)
    assert (again.event_id, again.deduplicated) == (event["_id"], True)
    assert await object_keys(s3, bucket) == [key]


async def test_a_client_cancel_during_the_insert_waits_for_it_and_keeps_both(
    app: App,
    stub: pb_grpc.CheckoutServiceAsyncStub,
    s3: Minio,
    bucket: str,
    outbox_collection: AsyncCollection[Document],
) -> None:
    """Cancelled while its event is being written (a slow database), an upload cannot know
    whether the insert happened: it waits for it, and keeps the object with the event it
    wrote, rather than remove an object its event may already point at."""

    class SlowInsert(SlowAfterCommit):
        async def add(self, event: OutboxEvent) -> None:
            self.committed.set()  # here: the insert is under way
            await asyncio.sleep(self._delay_s)
            await self._inner.add(event)

    slow = SlowInsert(app.pipeline._outbox, delay_s=2.0)
    app.pipeline._outbox = slow
    data = mp4_bytes(300_000, seed=8)
    call = stub.UploadVideo(messages(data), timeout=30)
    await asyncio.wait_for(slow.committed.wait(), 20)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await settled(app)
    (event,) = [doc async for doc in outbox_collection.find({})]
    key = f"input/{event['_id']}.mp4"
    assert await object_keys(s3, bucket) == [key]
    assert await object_sha256(s3, bucket, key) == (len(data), sha256_hex(data))


async def test_a_deadline_after_the_commit_keeps_the_object(
    app: App,
    stub: pb_grpc.CheckoutServiceAsyncStub,
    s3: Minio,
    bucket: str,
    outbox_collection: AsyncCollection[Document],
) -> None:
    slow = SlowAfterCommit(app.pipeline._outbox, delay_s=3.0)
    app.pipeline._outbox = slow
    data = mp4_bytes(200_000, seed=9)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.UploadVideo(messages(data), timeout=1.5)
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert slow.committed.is_set()
    await settled(app)
    (event,) = [doc async for doc in outbox_collection.find({})]
    assert await object_keys(s3, bucket) == [f"input/{event['_id']}.mp4"]
