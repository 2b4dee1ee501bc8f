"""The commit point of an upload is the insert of its outbox message: a client that goes away
(or a deadline that passes) after it must not take the object away from its event.

Found by the soak's auditor (`python -m soak net-cut`): an upload cancelled by its client
while its event was being written left the event (published by the relay) without its
object; the client's retry with the same idempotency key was then answered with that event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
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


# The longest a held insert waits for the test to release it: a bound for a test that fails
# before it does, not a wait of a guessed length.
HOLD_LIMIT_S = 30


class HeldAfterCommit:
    """A decorator of the real Outbox port whose `add` writes the event, signals `committed`
    and then holds (a slow reply, or the status record's insert) until the test sets
    `release`. `handler` is the task of the upload that called `add`: the test sees there
    when the server has cancelled it."""

    def __init__(self, inner: Outbox) -> None:
        self._inner = inner
        self.committed = asyncio.Event()
        self.release = asyncio.Event()
        self.handler: asyncio.Task[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add(self, event: OutboxEvent) -> Coroutine[Any, Any, None]:
        # Not a coroutine function: this line runs in the caller's task (the pipeline runs
        # the coroutine in a task of its own, shielded from the caller's cancellation).
        self.handler = asyncio.current_task()
        return self._add(event)

    async def _add(self, event: OutboxEvent) -> None:
        await self._inner.add(event)
        self.committed.set()
        await self._held()

    async def _held(self) -> None:
        await asyncio.wait_for(self.release.wait(), HOLD_LIMIT_S)

    async def server_cancelled(self) -> bool:
        """The server has cancelled the upload's handler (its client or its deadline)."""
        return self.handler is not None and self.handler.cancelling() > 0


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
    slow = HeldAfterCommit(app.pipeline._outbox)
    app.pipeline._outbox = slow
    data = mp4_bytes(300_000, seed=7)
    call = stub.UploadVideo(messages(data, key="cancelled-after-commit"), timeout=30)
    await asyncio.wait_for(slow.committed.wait(), 20)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The event is written and the server has cancelled the upload: only now may its
    # insert return.
    await wait_until(slow.server_cancelled, what="the server to cancel the upload")
    slow.release.set()
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

    class HeldInsert(HeldAfterCommit):
        async def _add(self, event: OutboxEvent) -> None:
            self.committed.set()  # here: the insert is under way
            await self._held()
            await self._inner.add(event)

    slow = HeldInsert(app.pipeline._outbox)
    app.pipeline._outbox = slow
    data = mp4_bytes(300_000, seed=8)
    call = stub.UploadVideo(messages(data), timeout=30)
    await asyncio.wait_for(slow.committed.wait(), 20)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The insert goes on only once the server has cancelled the upload.
    await wait_until(slow.server_cancelled, what="the server to cancel the upload")
    slow.release.set()
    await settled(app)
    (event,) = [doc async for doc in outbox_collection.find({})]
    key = f"input/{event['_id']}.mp4"
    assert await object_keys(s3, bucket) == [key]
    assert await object_sha256(s3, bucket, key) == (len(data), sha256_hex(data))


# The upload's deadline: what it takes to store 200 kB and insert its event, with a wide
# margin for a loaded machine. The insert holds until the deadline has passed (the client
# sees DEADLINE_EXCEEDED and the server cancels the upload), however early it came.
DEADLINE_S = 10.0


async def test_a_deadline_after_the_commit_keeps_the_object(
    app: App,
    stub: pb_grpc.CheckoutServiceAsyncStub,
    s3: Minio,
    bucket: str,
    outbox_collection: AsyncCollection[Document],
) -> None:
    slow = HeldAfterCommit(app.pipeline._outbox)
    app.pipeline._outbox = slow
    data = mp4_bytes(200_000, seed=9)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.UploadVideo(messages(data), timeout=DEADLINE_S)
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert slow.committed.is_set()  # the deadline passed after the commit, while it held
    await wait_until(slow.server_cancelled, what="the server to cancel the upload")
    slow.release.set()
    await settled(app)
    (event,) = [doc async for doc in outbox_collection.find({})]
    assert await object_keys(s3, bucket) == [f"input/{event['_id']}.mp4"]
