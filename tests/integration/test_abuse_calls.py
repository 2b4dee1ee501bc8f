"""The calls whose cost a client chooses are rated per client (issue 23), against the real
server, MinIO and FerretDB: a client past LIST_RATE_PER_MINUTE or REQUEST_RATE_PER_MINUTE is
refused with a retry hint while another client lists and re-requests; a refused CreateRequest
makes no event. A client past RESULT_CHECK_RATE_PER_S has its lookups answered from the status
records while another client's lookups still check storage.

The rates are small here (settings of the test's server) to keep the test quick.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app
from tests.helpers import error_details, has_cyrillic, mp4_bytes, retry_delay_s, wait_until
from tests.integration import curl
from tests.integration.envoy_front import async_envoy_front
from tests.integration.keyed import bearer, keyed_app, uploader_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

if TYPE_CHECKING:  # the async stub type exists only in the generated type stubs
    Stub = pb_grpc.CheckoutServiceAsyncStub

LISTS = 5
REQUESTS = 2
CHECKS = 1  # RESULT_CHECK_RATE_PER_S


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    return uploader_keys(tmp_path, "attacker", "honest")


@pytest.fixture
async def rated(settings: ServerSettings, keys: dict[str, str]) -> AsyncIterator[App]:
    async with keyed_app(
        settings,
        keys,
        list_rate_per_minute=LISTS,
        request_rate_per_minute=REQUESTS,
        result_check_rate_per_s=CHECKS,
    ) as app:
        yield app


async def refused(call: Any) -> tuple[str, float]:
    """(reason, retry hint) of a call refused RESOURCE_EXHAUSTED with a Russian message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code, reason, message = error_details(caught.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
    assert has_cyrillic(message), message
    return reason, retry_delay_s(caught.value)


async def upload(stub: Stub, key: str) -> pb.UploadVideoResponse:
    messages = [
        pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="v.mp4")),
        pb.UploadVideoRequest(chunk=mp4_bytes(5000)),
    ]
    response: pb.UploadVideoResponse = await stub.UploadVideo(
        iter(messages), metadata=bearer(key), timeout=20
    )
    return response


async def test_a_client_past_its_call_rates_is_refused_while_another_calls(
    rated: App,
    keys: dict[str, str],
    outbox_collection: AsyncCollection[dict[str, Any]],
) -> None:
    attacker, honest = bearer(keys["attacker"]), bearer(keys["honest"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rated.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        mine = await upload(stub, keys["attacker"])
        theirs = await upload(stub, keys["honest"])

        for _ in range(LISTS):
            await stub.ListStatuses(pb.ListStatusesRequest(), metadata=attacker)
        reason, hint = await refused(stub.ListStatuses(pb.ListStatusesRequest(), metadata=attacker))
        assert reason == "LIST_RATE_LIMITED"
        assert 0 < hint <= 60

        again = pb.CreateRequestRequest(video_id=mine.video_id)
        for _ in range(REQUESTS):
            await stub.CreateRequest(again, metadata=attacker)
        events_before = await outbox_collection.count_documents({})
        reason, hint = await refused(stub.CreateRequest(again, metadata=attacker))
        assert reason == "REQUEST_RATE_LIMITED"
        assert 0 < hint <= 60
        assert await outbox_collection.count_documents({}) == events_before  # nothing made

        # The other client is not affected: it lists and re-requests at once.
        listed = await stub.ListStatuses(pb.ListStatusesRequest(), metadata=honest, timeout=10)
        assert {op.event_id for op in listed.operations} == {theirs.event_id}
        made = await stub.CreateRequest(
            pb.CreateRequestRequest(video_id=theirs.video_id), metadata=honest, timeout=10
        )
        assert made.status == "ok"
    assert rated.rates.refusals == {"LIST_RATE_LIMITED": 1, "REQUEST_RATE_LIMITED": 1}


async def test_a_client_past_its_storage_checks_is_answered_from_the_records(
    rated: App, keys: dict[str, str], s3: Minio, bucket: str
) -> None:
    """A runner that only writes the result JSON: each client's lookups of waiting events check
    storage CHECKS times a second, and past that are answered from the record (not refused),
    while another client's lookups still find their results at once."""
    attacker, honest = bearer(keys["attacker"]), bearer(keys["honest"])

    async def status(stub: Stub, event_id: str, key: tuple[tuple[str, str]]) -> str:
        answer = await stub.GetStatus(pb.GetStatusRequest(event_id=event_id), metadata=key)
        return str(answer.operation.status)

    async def write_result(video_id: str) -> None:
        body = b'{"objects": []}'
        await s3.put_object(
            bucket, f"output/{video_id}.json", io.BytesIO(body), len(body), "application/json"
        )

    async with grpc.aio.insecure_channel(f"127.0.0.1:{rated.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        mine = await upload(stub, keys["attacker"])
        theirs = await upload(stub, keys["honest"])

        for _ in range(CHECKS + 5):  # the first CHECKS check storage, the rest are answered
            assert await status(stub, mine.event_id, attacker) == "new"
        skipped = rated.rates.result_checks_skipped
        assert skipped == 5
        await write_result(mine.video_id)
        await write_result(theirs.video_id)

        # Within the same second: the attacker's lookup is answered from its record, the
        # other client's checks storage and finds its result.
        assert await status(stub, mine.event_id, attacker) == "new"
        assert rated.rates.result_checks_skipped == skipped + 1
        assert await status(stub, theirs.event_id, honest) == "ready"

        # A second on, the attacker's lookups check storage again.
        async def attackers_ready() -> bool:
            return await status(stub, mine.event_id, attacker) == "ready"

        await wait_until(attackers_ready, timeout_s=10, what="the attacker's result found")


@pytest.fixture
async def behind_envoy(settings: ServerSettings) -> AsyncIterator[App]:
    """Authentication off, Envoy (on 127.0.0.1) trusted to name the REST clients."""
    app = await create_app(
        settings.replace(list_rate_per_minute=LISTS, trusted_proxies=frozenset({"127.0.0.1"}))
    )
    await app.start()
    yield app
    await app.stop(grace_s=1.0)


async def test_rest_clients_behind_one_envoy_each_have_their_own_rate(
    behind_envoy: App, tmp_path: Path
) -> None:
    """Without keys the client is its address: the one Envoy appends to x-forwarded-for, so
    two REST clients (curl from 127.0.0.2 and 127.0.0.3) do not share one count, and a
    client's own x-forwarded-for does not make it another."""
    async with async_envoy_front(tmp_path, [behind_envoy.port]) as front:
        listing = f"{front.url}/api/status/all"

        async def status_from(source: str, *headers: str) -> int:
            status, _ = await curl.answer("--interface", source, *headers, listing, timeout_s=30)
            return status

        for _ in range(LISTS):
            assert await status_from("127.0.0.2") == 200
        # The same client claiming to forward for someone else: still itself, refused.
        forged = await status_from("127.0.0.2", "-H", "X-Forwarded-For: 198.51.100.7")
        status, body = await curl.answer("--interface", "127.0.0.2", listing, timeout_s=30)
        assert (forged, status) == (429, 429)
        assert body["details"][0]["reason"] == "LIST_RATE_LIMITED"
        # Another client behind the same Envoy is not affected.
        assert await status_from("127.0.0.3") == 200
    assert behind_envoy.rates.refusals == {"LIST_RATE_LIMITED": 2}
