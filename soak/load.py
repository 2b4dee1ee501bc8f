"""The load generator: concurrent uploads of random small videos, a few WatchStatus streams
and listings, until told to stop. The gRPC calls are spread over the `targets` (one grpc.aio
channel to each server directly and one to Envoy's gRPC route): uploader, watcher and lister
`i` use target `i` modulo their number. REST uploads go through Envoy as the old curl clients
send them: `POST /api/upload_video`, a multipart form with its `bucket` field and then the
`file` part (aiohttp, one session, the file streamed from memory).

Every call has a deadline and is timed, so the auditor can tell one that hung past it; each
records the target it went to. Some gRPC uploads are cancelled by the client at a random
moment; some uploads (gRPC and REST) carry an idempotency key and are retried once with the
same key and bytes when they fail for a reason a retry may cure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import grpc
from google.rpc import error_details_pb2, status_pb2

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc

KiB = 1024
MiB = 1024 * KiB
# An ISO-BMFF `ftyp` box, so the server takes the bytes for an MP4.
FTYP = (24).to_bytes(4, "big") + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2"
# Reconnect fast after a server restart (gRPC's default backoff grows to 2 minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
RETRYABLE_NAMES = frozenset(
    c.name
    for c in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    )
)


# REST answers that are not the service's JSON (a connection error, a cut body): their "code".
REST_FAILED = "UNAVAILABLE"
# The gRPC code of each number, as REST error bodies (google.rpc.Status) carry them.
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@dataclass(frozen=True)
class LoadConfig:
    uploaders: int = 6  # gRPC, over the targets in turn
    rest_uploaders: int = 2  # REST, through Envoy
    watchers: int = 3
    min_bytes: int = 2 * KiB
    max_bytes: int = 3 * MiB  # log-uniform between the two: mostly small, some multipart
    min_chunk_bytes: int = 16 * KiB
    max_chunk_bytes: int = 512 * KiB
    upload_deadline_s: float = 20.0
    watch_deadline_s: float = 15.0
    list_deadline_s: float = 5.0
    list_interval_s: float = 2.0
    cancel_rate: float = 0.05  # uploads the client cancels at a random moment
    idempotent_rate: float = 0.3  # uploads with a key, retried once with it


@dataclass
class Call:
    """One RPC as the client saw it."""

    kind: str  # upload | watch | list
    target: str  # where it went: a server's name, `envoy` (gRPC through it) or `rest`
    started: float  # time.monotonic()
    elapsed_s: float
    deadline_s: float
    code: str  # the status code's name, OK on success
    reason: str = ""  # the ErrorInfo reason of a refusal, if any
    event_id: str = ""
    sha256: str = ""  # what the client sent (uploads)
    size_bytes: int = 0
    response_sha256: str = ""
    deduplicated: bool = False
    cancelled_by_client: bool = False
    updates: int = 0  # status updates received (watches)

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def refusal(self) -> str:
        return f"{self.code}/{self.reason}" if self.reason else self.code


@dataclass
class LoadResult:
    calls: list[Call] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    def uploads(self) -> list[Call]:
        return [c for c in self.calls if c.kind == "upload"]

    def accepted_by_target(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for call in self.uploads():
            if call.ok:
                counts[call.target] = counts.get(call.target, 0) + 1
        return dict(sorted(counts.items()))


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a refusal, "" when it carries none (gRPC's own errors)."""
    metadata = cast(tuple[tuple[str, Any], ...], error.trailing_metadata() or ())
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return str(info.reason)
    return ""


def video(rng: random.Random, config: LoadConfig) -> bytes:
    low, high = config.min_bytes.bit_length(), config.max_bytes.bit_length()
    size = min(config.max_bytes, max(config.min_bytes, int(2 ** rng.uniform(low, high))))
    return FTYP + rng.randbytes(size - len(FTYP))


class Load:
    """Runs the load until `stop` is set: gRPC calls over `targets` (name: host:port), REST
    uploads to `rest_base` (Envoy's URL); `result.calls` collects every call."""

    def __init__(
        self,
        targets: dict[str, str],
        rest_base: str,
        bucket: str,
        config: LoadConfig,
        *,
        seed: int = 0,
    ) -> None:
        self.targets = targets
        self.rest_base = rest_base
        self.bucket = bucket
        self.config = config
        self.rng = random.Random(f"{seed}-{bucket}")
        self.result = LoadResult()
        self.cancel_rate = config.cancel_rate  # a scenario may raise it while it runs

    async def run(self, stop: asyncio.Event) -> LoadResult:
        self.result.started = time.monotonic()
        cfg = self.config
        async with contextlib.AsyncExitStack() as stack:
            stubs: list[tuple[str, pb_grpc.CheckoutServiceAsyncStub]] = []
            for name, address in self.targets.items():
                channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
                await stack.enter_async_context(channel)
                stubs.append((name, pb_grpc.CheckoutServiceStub(channel)))
            session = aiohttp.ClientSession(self.rest_base)
            await stack.enter_async_context(session)
            async with asyncio.TaskGroup() as group:
                for i in range(cfg.uploaders):
                    grpc_upload = functools.partial(self._upload, stubs[i % len(stubs)])
                    group.create_task(self._uploader(grpc_upload, stop, str(i)))
                for i in range(cfg.rest_uploaders):
                    rest_upload = functools.partial(self._rest_upload, session)
                    group.create_task(self._uploader(rest_upload, stop, f"rest{i}"))
                for i in range(cfg.watchers):
                    group.create_task(self._watcher(stubs[i % len(stubs)], stop))
                group.create_task(self._lister(stubs, stop))
        self.result.ended = time.monotonic()
        return self.result

    # --- uploads -------------------------------------------------------------------------------
    async def _uploader(
        self,
        upload: Callable[[random.Random, bytes, str], Awaitable[Call]],
        stop: asyncio.Event,
        worker: str,
    ) -> None:
        """Uploads through `upload` (gRPC or REST) until `stop`, some with an idempotency key
        and retried once with it after a retriable refusal."""
        rng = random.Random(self.rng.random())
        n = 0
        while not stop.is_set():
            n += 1
            data = video(rng, self.config)
            key = f"{self.bucket}-{worker}-{n}"  # a key of this run's and scenario's only
            idempotent = rng.random() < self.config.idempotent_rate
            call = await upload(rng, data, key if idempotent else "")
            if not call.ok and call.code in RETRYABLE_NAMES:
                # What a polite client does: back off a little before it tries again.
                await _pause(stop, rng.uniform(0.1, 0.4))
                if idempotent:
                    await upload(rng, data, key)

    async def _upload(
        self,
        target: tuple[str, pb_grpc.CheckoutServiceAsyncStub],
        rng: random.Random,
        data: bytes,
        key: str,
    ) -> Call:
        cfg = self.config
        sha256 = hashlib.sha256(data).hexdigest()
        declare = rng.random() < 0.5
        metadata = pb.UploadMetadata(
            filename=f"soak-{sha256[:8]}.mp4",
            content_type="video/mp4",
            bucket=self.bucket,
            size_bytes=len(data) if declare else 0,
            sha256=sha256 if declare else "",
            idempotency_key=key,
        )
        chunk = rng.randint(cfg.min_chunk_bytes, cfg.max_chunk_bytes)
        offsets = range(0, len(data), chunk)
        # A cancelled upload is cancelled by its client in the middle of its stream: after
        # `cut` of its chunks, before the last one (so the server cannot have completed it).
        cut = rng.randrange(len(offsets)) if rng.random() < self.cancel_rate else None

        async def requests() -> AsyncIterator[pb.UploadVideoRequest]:
            yield pb.UploadVideoRequest(metadata=metadata)
            for i, offset in enumerate(offsets):
                if i == cut:
                    call.cancel()
                    return
                yield pb.UploadVideoRequest(chunk=data[offset : offset + chunk])

        name, stub = target
        record = Call(
            kind="upload",
            target=name,
            started=time.monotonic(),
            elapsed_s=0.0,
            deadline_s=cfg.upload_deadline_s,
            code="",
            sha256=sha256,
            size_bytes=len(data),
        )
        record.cancelled_by_client = cut is not None
        call = stub.UploadVideo(requests(), timeout=cfg.upload_deadline_s)
        try:
            response = await call
        except asyncio.CancelledError:
            if not record.cancelled_by_client:
                raise
            record.code = grpc.StatusCode.CANCELLED.name
        except grpc.aio.AioRpcError as error:
            record.code = error.code().name
            record.reason = reason_of(error)
        else:
            record.code = "OK"
            record.event_id = response.event_id
            record.response_sha256 = response.sha256
            record.deduplicated = response.deduplicated
        record.elapsed_s = time.monotonic() - record.started
        self.result.calls.append(record)
        return record

    # --- REST uploads through Envoy ------------------------------------------------------------
    async def _rest_upload(
        self, session: aiohttp.ClientSession, rng: random.Random, data: bytes, key: str
    ) -> Call:
        """One `POST /api/upload_video` as curl -F sends it: the text fields first (so they
        set the metadata: the bucket, sometimes the key and the declared sha256), then the
        file. The answer is the upload's JSON, or a google.rpc.Status JSON with its code."""
        cfg = self.config
        sha256 = hashlib.sha256(data).hexdigest()
        form = aiohttp.FormData()
        form.add_field("bucket", self.bucket)
        if key:
            form.add_field("idempotency_key", key)
        if rng.random() < 0.5:
            form.add_field("sha256", sha256)
        # A file object, not bytes: aiohttp streams it (and warns about large bytes bodies).
        form.add_field(
            "file", io.BytesIO(data), filename=f"soak-{sha256[:8]}.mp4", content_type="video/mp4"
        )
        record = Call(
            kind="upload",
            target="rest",
            started=time.monotonic(),
            elapsed_s=0.0,
            deadline_s=cfg.upload_deadline_s,
            code="",
            sha256=sha256,
            size_bytes=len(data),
        )
        try:
            async with session.post(
                "/api/upload_video",
                data=form,
                timeout=aiohttp.ClientTimeout(total=cfg.upload_deadline_s),
            ) as response:
                body = await response.read()
                status = response.status
            _rest_answer(record, status, body)
        except TimeoutError:
            record.code = grpc.StatusCode.DEADLINE_EXCEEDED.name
            record.reason = "CLIENT_TIMEOUT"
        except aiohttp.ClientError as error:
            record.code = REST_FAILED
            record.reason = f"HTTP_{type(error).__name__}"
        record.elapsed_s = time.monotonic() - record.started
        self.result.calls.append(record)
        return record

    # --- watchers and listings -------------------------------------------------------------------
    async def _watcher(
        self, target: tuple[str, pb_grpc.CheckoutServiceAsyncStub], stop: asyncio.Event
    ) -> None:
        name, stub = target
        deadline = self.config.watch_deadline_s
        while not stop.is_set():
            record = Call(
                kind="watch",
                target=name,
                started=time.monotonic(),
                elapsed_s=0,
                deadline_s=deadline,
                code="",
            )
            stream = stub.WatchStatus(pb.WatchStatusRequest(), timeout=deadline)
            stopper = asyncio.ensure_future(stop.wait())
            try:
                async for _update in _until(stream, stopper):
                    record.updates += 1
                record.code = "OK"
            except grpc.aio.AioRpcError as error:
                record.code = error.code().name
                record.reason = reason_of(error)
            finally:
                stopper.cancel()
                stream.cancel()
            record.elapsed_s = time.monotonic() - record.started
            self.result.calls.append(record)
            if record.code not in {"OK", grpc.StatusCode.DEADLINE_EXCEEDED.name}:
                await _pause(stop, 0.5)

    async def _lister(
        self, stubs: list[tuple[str, pb_grpc.CheckoutServiceAsyncStub]], stop: asyncio.Event
    ) -> None:
        """A listing every `list_interval_s`, over each target in turn."""
        deadline = self.config.list_deadline_s
        n = 0
        while not stop.is_set():
            name, stub = stubs[n % len(stubs)]
            n += 1
            record = Call(
                kind="list",
                target=name,
                started=time.monotonic(),
                elapsed_s=0,
                deadline_s=deadline,
                code="",
            )
            try:
                request = pb.ListStatusesRequest(page_size=50)
                await stub.ListStatuses(request, timeout=deadline)
                record.code = "OK"
            except grpc.aio.AioRpcError as error:
                record.code = error.code().name
                record.reason = reason_of(error)
            record.elapsed_s = time.monotonic() - record.started
            self.result.calls.append(record)
            await _pause(stop, self.config.list_interval_s)


def _rest_answer(record: Call, status: int, body: bytes) -> None:
    """Fill `record` in from a REST upload's answer: 200 with the upload's JSON, or an error
    status with a google.rpc.Status JSON (the code's number, an ErrorInfo's reason)."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        record.code = REST_FAILED
        record.reason = f"HTTP_{status}_NOT_JSON"
        return
    if status == 200:
        record.code = "OK"
        record.event_id = str(answer.get("event_id", ""))
        record.response_sha256 = str(answer.get("sha256", ""))
        record.deduplicated = bool(answer.get("deduplicated", False))
        return
    record.code = CODE_NAMES.get(answer.get("code"), f"HTTP_{status}")
    for detail in answer.get("details") or ():
        if isinstance(detail, dict) and detail.get("reason"):
            record.reason = str(detail["reason"])
            break


async def _until(
    stream: grpc.aio.UnaryStreamCall[pb.WatchStatusRequest, pb.StatusUpdate],
    stopper: asyncio.Future[Any],
) -> AsyncIterator[pb.StatusUpdate]:
    """The stream's updates until it ends or `stopper` is done (then it just stops)."""
    updates = aiter(stream)
    while True:
        step = asyncio.ensure_future(anext(updates))
        await asyncio.wait({step, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not step.done():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await step
            return
        try:
            yield step.result()
        except StopAsyncIteration:
            return


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
