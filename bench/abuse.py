"""An honest client's latency while another client attacks (issue 23), against the same client
with no attack, in the same run.

    python -m bench.abuse [--seconds 60] [--attackers 4] [--attacks stalled watchers ...]

Starts FerretDB, MinIO, the checkout server as a process of its own and Envoy in front of it
(the config `make run` renders), all on free ports. The server runs as in production:
authentication on (one API key for the honest client, one per attacker key), the production
limits (UPLOAD_MAX_CONCURRENT_PER_CLIENT, WATCH_MAX_WATCHERS_PER_CLIENT, ... at their
defaults; bench/_backends.py raises some for the other benchmarks), WAKE_SECRET set so that
it listens for wake-ups.

The honest client (its own key, this process) runs a loop of small calls, each timed on its
own: UploadVideo of a 256 KiB MP4 (its size declared), GetStatus of its event, the first update
of a WatchStatus of that event, and ListStatuses (10 per page). One loop every 1.1 s: its
uploads stay under UPLOAD_RATE_PER_MINUTE (60). A call refused with RESOURCE_EXHAUSTED or
UNAVAILABLE is retried after the server's retry hint (0.5 s without one), as the SDK does, and
timed until it succeeds or `--op-deadline` passes (then it counts as failed, with that time).

The phases, `--seconds` of the honest loop each: no attack (straight to the server, then
through Envoy), then each attack while it runs, stopped and cleaned up before the next (the
honest loop goes where the attack goes: through Envoy for the stream flood, straight to the
server otherwise). Each attack runs in a process of its own (this module with --worker), as
another client would, with `--attackers` API keys; a refused call is retried after its hint,
at most 2 s (1 s without a hint):
- stalled: `--stalled-streams` UploadVideo streams per key that send their metadata (size
  unknown) and one 4 KiB chunk, then nothing;
- watchers: `--watchers` WatchStatus streams (all events) per key, held open;
- flood: through Envoy, `--flood-health` grpc.health.v1 Health/Watch streams (no key) and
  `--flood-watch` WatchStatus streams per key, at most 90 streams per connection;
- wake: `--wake-rate` forged wake-up datagrams per second (the right size and tag, a wrong
  HMAC: each costs the server a hash) to the server's wake-up port (its gRPC port over UDP);
- hoard: `--hoard-concurrency` loops per key opening resumable sessions
  (StartResumableUpload, 64 MiB declared) as fast as they are let; all cancelled after.

Every phase starts from empty status and outbox collections (the honest client's events of the
previous phase deleted): FerretDB reads every status record for a listing, so the phases
compare at the same collection size. The p99 is the nearest-rank 99th percentile of every
call of the phase (about 220 calls at the default 60 s: the third slowest).

Prints one line per phase as it ends, then the tables: calls, p50, p99, the p99 against the
baseline of the same path, what the attacker held and how it was refused (as the attacker saw
it), the CPU of the server and of the attacker's process (cores), the load average; then the
p50/p99 of each call. Everything it started is stopped at the end, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import math
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _proc
from bench._backends import Backends, started
from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.adapters.udp_wake import SIZE as WAKE_SIZE
from checkout_server.adapters.udp_wake import TAG as WAKE_TAG
from checkout_server.auth.keys import entry, new_key
from checkout_server.config import ServerSettings
from checkout_server.upload.admission import GRANULE_BYTES
from devstack import Envoy, free_port
from devstack._paths import REPO_ROOT
from devstack._stack import DESCRIPTOR, OPENAPI
from tests.helpers import mp4_bytes
from tools.render_envoy import Budgets, render_envoy_config

KiB = 1024
MiB = 1024 * KiB
ATTACKS = ("stalled", "watchers", "flood", "wake", "hoard")
HONEST_FILE_BYTES = 256 * KiB
HONEST_CHUNK_BYTES = 64 * KiB
# One honest loop (one upload) per this many seconds: 55 a minute, under UPLOAD_RATE_PER_MINUTE.
HONEST_PERIOD_S = 1.1
STREAMS_PER_CONNECTION = 90  # under Envoy's 100 per connection (streams_per_connection)
ATTACK_RETRY_MAX_S = 2.0
STALLED_METADATA = pb.UploadMetadata(filename="stalled.mp4")  # size unknown
STALLED_CHUNK = mp4_bytes(4 * KiB, seed=5)
IN_PLACE_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 20.0
WORKER_STOP_TIMEOUT_S = 30.0


def default(name: str) -> Any:
    """A server setting's production default."""
    return ServerSettings.model_fields[name].default


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def refusal(exc: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """Why a call failed, and its retry hint: the ErrorInfo reason of the service's error shape
    (Envoy's own answers have it too), else the code (with Envoy's "overflow" marked)."""
    reason, hint = "", None
    for key, value in cast(Iterable[tuple[str, Any]], exc.trailing_metadata() or ()):
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                hint = retry.retry_delay.ToTimedelta().total_seconds()
    if not reason:
        reason = exc.code().name
        if "overflow" in (exc.details() or ""):
            reason += " (Envoy overflow)"
    return reason, hint


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return _proc.cpu_seconds(pid)
    except OSError:
        return 0.0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --- The attacker: a process of its own --------------------------------------------------------


@dataclass
class Tally:
    """What an attack did, as the attacker saw it."""

    attempts: int = 0
    open: int = 0
    max_open: int = 0
    succeeded: int = 0
    sent: int = 0
    dropped: int = 0
    cleaned: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    stopping: bool = False  # the attack's own cancellations are not refusals

    def opened(self) -> None:
        self.attempts += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)

    def closed(self) -> None:
        self.open -= 1

    def refuse(self, exc: grpc.aio.AioRpcError) -> float:
        """Count a refusal; the pause before trying again."""
        reason, hint = refusal(exc)
        if not self.stopping:
            self.refused[reason] += 1
        return min(max(hint if hint is not None else 1.0, 0.05), ATTACK_RETRY_MAX_S)

    def report(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "max_open": self.max_open,
            "succeeded": self.succeeded,
            "sent": self.sent,
            "dropped": self.dropped,
            "cleaned": self.cleaned,
            "refused": dict(self.refused),
        }


def channels(target: str, count: int) -> list[grpc.aio.Channel]:
    """`count` channels, each its own connection (no shared subchannel)."""
    own = [("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.insecure_channel(target, options=own) for _ in range(count)]


async def hold(tally: Tally, open_call: Callable[[], Any]) -> None:
    """One attacker's slot: open a stream, hold it until it ends, count its refusal, pause as
    told, open the next; forever (until cancelled, which cancels the stream)."""
    while True:
        call = open_call()
        tally.opened()
        pause = 1.0
        try:
            if hasattr(call, "__aiter__"):  # a watch: read until it ends
                async for _ in call:
                    pass
            else:  # a stalled upload: metadata (size unknown), one small chunk, then nothing
                await call.write(pb.UploadVideoRequest(metadata=STALLED_METADATA))
                await call.write(pb.UploadVideoRequest(chunk=STALLED_CHUNK))
                await call
        except grpc.aio.AioRpcError as exc:
            pause = tally.refuse(exc)
        finally:
            tally.closed()
            if not call.done():
                call.cancel()
        await asyncio.sleep(pause)


def slots(spec: dict[str, Any]) -> list[Callable[[], Any]]:
    """The stream openers of a stream-holding attack, one per slot."""
    keys: list[str] = spec["keys"]
    openers: list[Callable[[], Any]] = []

    def spread(target: str, count: int) -> list[Any]:
        return channels(target, max(1, math.ceil(count / STREAMS_PER_CONNECTION)))

    if spec["attack"] == "stalled":
        for key in keys:
            (channel,) = channels(spec["target"], 1)
            stub = pb_grpc.CheckoutServiceStub(channel)
            openers += [functools.partial(stub.UploadVideo, metadata=bearer(key))] * spec["streams"]
    elif spec["attack"] == "watchers":
        for key in keys:
            pool = spread(spec["target"], spec["streams"])
            for i in range(spec["streams"]):
                stub = pb_grpc.CheckoutServiceStub(pool[i % len(pool)])
                openers.append(
                    functools.partial(
                        stub.WatchStatus, pb.WatchStatusRequest(), metadata=bearer(key)
                    )
                )
    elif spec["attack"] == "flood":
        pool = spread(spec["envoy"], spec["health"])
        for i in range(spec["health"]):
            health = health_pb2_grpc.HealthStub(pool[i % len(pool)])
            openers.append(functools.partial(health.Watch, health_pb2.HealthCheckRequest()))
        for key in keys:
            pool = spread(spec["envoy"], spec["streams"])
            for i in range(spec["streams"]):
                stub = pb_grpc.CheckoutServiceStub(pool[i % len(pool)])
                openers.append(
                    functools.partial(
                        stub.WatchStatus, pb.WatchStatusRequest(), metadata=bearer(key)
                    )
                )
    return openers


async def wake_flood(spec: dict[str, Any], tally: Tally) -> None:
    """Forged wake-ups at `rate` a second: the right size and tag, a random HMAC."""
    forged = [WAKE_TAG + secrets.token_bytes(WAKE_SIZE - len(WAKE_TAG)) for _ in range(256)]
    address = (spec["wake_host"], spec["wake_port"])
    rate: int = spec["rate"]
    batch = max(1, rate // 200)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        due = time.monotonic()
        i = 0
        while True:
            for _ in range(batch):
                try:
                    sock.sendto(forged[i & 255], address)
                    tally.sent += 1
                except (BlockingIOError, ConnectionRefusedError):
                    tally.dropped += 1
                i += 1
            due += batch / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))


async def hoard(spec: dict[str, Any], tally: Tally, sessions: list[tuple[str, str]]) -> None:
    """Resumable sessions opened back to back by `concurrency` loops per key, pausing only as
    long as a refusal's hint says (at most 2 s)."""
    (channel,) = channels(spec["target"], 1)
    stub = pb_grpc.CheckoutServiceStub(channel)
    request = pb.StartResumableUploadRequest(
        metadata=pb.UploadMetadata(filename="hoard.mp4", size_bytes=64 * MiB)
    )

    async def loop(key: str) -> None:
        while True:
            tally.attempts += 1
            try:
                started = await stub.StartResumableUpload(request, metadata=bearer(key), timeout=10)
            except grpc.aio.AioRpcError as exc:
                await asyncio.sleep(tally.refuse(exc))
                continue
            tally.succeeded += 1
            sessions.append((key, started.upload_id))

    await asyncio.gather(*(loop(key) for key in spec["keys"] for _ in range(spec["concurrency"])))


async def cancel_sessions(
    spec: dict[str, Any], tally: Tally, sessions: list[tuple[str, str]]
) -> None:
    """Cancel every session the hoard opened, 16 at a time, each within 5 s."""
    gate = asyncio.Semaphore(16)
    async with grpc.aio.insecure_channel(spec["target"]) as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)

        async def cancel(key: str, upload_id: str) -> None:
            async with gate:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.CancelUpload(
                        pb.CancelUploadRequest(upload_id=upload_id), metadata=bearer(key), timeout=5
                    )
                    tally.cleaned += 1

        await asyncio.gather(*(cancel(key, upload_id) for key, upload_id in sessions))


async def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one attack until SIGTERM (or SIGINT), then stop it, clean up, and report."""
    tally = Tally()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sessions: list[tuple[str, str]] = []
    if spec["attack"] in ("stalled", "watchers", "flood"):
        tasks = [asyncio.create_task(hold(tally, opener)) for opener in slots(spec)]
    elif spec["attack"] == "wake":
        tasks = [asyncio.create_task(wake_flood(spec, tally))]
    else:
        tasks = [asyncio.create_task(hoard(spec, tally, sessions))]
    started = time.monotonic()
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    await stop.wait()
    seconds = time.monotonic() - started
    tally.stopping = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if sessions:  # bounded: the report comes in any case (`cleaned` says how many)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                cancel_sessions(spec, tally, sessions), WORKER_STOP_TIMEOUT_S / 2
            )
    return tally.report() | {"seconds": seconds}


def worker_main() -> None:
    spec = json.loads(sys.stdin.readline())
    report = asyncio.run(worker(spec))
    print(json.dumps(report), flush=True)


# --- The bench: servers, the honest client, the phases -----------------------------------------


class Attacker:
    """An attack's worker process: started, ready, stopped with its report."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, spec: dict[str, Any]) -> Attacker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.abuse",
            "--worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
            start_new_session=True,  # a terminal's Ctrl-C reaches it through stop() only
        )
        assert process.stdin is not None
        process.stdin.write(json.dumps(spec).encode() + b"\n")
        await process.stdin.drain()
        process.stdin.close()
        return cls(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def ready(self) -> None:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), IN_PLACE_TIMEOUT_S)
        if line.strip() != b"ready":
            raise RuntimeError(f"the attacker did not start: {line!r}")

    async def stop(self) -> dict[str, Any]:
        """SIGTERM, then its report (SIGKILL after WORKER_STOP_TIMEOUT_S: no report)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        assert self.process.stdout is not None
        try:
            out = await asyncio.wait_for(self.process.stdout.read(), WORKER_STOP_TIMEOUT_S)
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            self.kill()
            await self.process.wait()
            return {}
        lines = out.decode().strip().splitlines()
        return json.loads(lines[-1]) if lines else {}

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class Sample:
    op: str
    ms: float
    ok: bool
    met: list[str]


class Honest:
    """The honest client: its own key, one channel straight to the server, one through Envoy."""

    def __init__(self, key: str, deadline_s: float) -> None:
        self.metadata = bearer(key)
        self.deadline_s = deadline_s
        self.data = mp4_bytes(HONEST_FILE_BYTES, seed=23)
        self.event_id = ""

    async def timed(self, op: str, call: Callable[[float], Awaitable[Any]]) -> Sample:
        """One call, retried after RESOURCE_EXHAUSTED or UNAVAILABLE as the SDK would (after
        the hint, or 0.5 s), timed until it succeeds or the deadline passes."""
        began = time.perf_counter()
        give_up = began + self.deadline_s
        met: list[str] = []
        while True:
            try:
                await call(give_up - time.perf_counter())
            except grpc.aio.AioRpcError as exc:
                reason, hint = refusal(exc)
                met.append(reason)
                pause = hint if hint is not None else 0.5
                retriable = exc.code() in (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.UNAVAILABLE,
                )
                if retriable and time.perf_counter() + pause < give_up:
                    await asyncio.sleep(pause)
                    continue
                return Sample(op, (time.perf_counter() - began) * 1000, False, met)
            return Sample(op, (time.perf_counter() - began) * 1000, True, met)

    async def loop_once(self, stub: Any) -> list[Sample]:
        async def upload(left: float) -> None:
            messages = [
                pb.UploadVideoRequest(
                    metadata=pb.UploadMetadata(filename="honest.mp4", size_bytes=len(self.data))
                )
            ] + [
                pb.UploadVideoRequest(chunk=self.data[i : i + HONEST_CHUNK_BYTES])
                for i in range(0, len(self.data), HONEST_CHUNK_BYTES)
            ]
            reply = await stub.UploadVideo(iter(messages), metadata=self.metadata, timeout=left)
            self.event_id = reply.event_id

        async def get(left: float) -> None:
            request = pb.GetStatusRequest(event_id=self.event_id)
            await stub.GetStatus(request, metadata=self.metadata, timeout=left)

        async def watch(left: float) -> None:
            request = pb.WatchStatusRequest(event_id=self.event_id)
            call = stub.WatchStatus(request, metadata=self.metadata, timeout=left)
            try:
                await call.read()
            finally:
                call.cancel()

        async def listing(left: float) -> None:
            request = pb.ListStatusesRequest(page_size=10)
            await stub.ListStatuses(request, metadata=self.metadata, timeout=left)

        samples = [await self.timed("UploadVideo", upload)]
        if self.event_id:  # this upload's event, or the last of this phase when it failed
            samples.append(await self.timed("GetStatus", get))
            samples.append(await self.timed("WatchStatus", watch))
        samples.append(await self.timed("ListStatuses", listing))
        return samples

    async def run(self, stub: Any, seconds: float) -> list[Sample]:
        self.event_id = ""  # the events of earlier phases are gone
        samples: list[Sample] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.monotonic()
            samples += await self.loop_once(stub)
            await asyncio.sleep(max(0.0, began + HONEST_PERIOD_S - time.monotonic()))
        return samples


@dataclass(frozen=True)
class Phase:
    name: str
    path: str  # "direct" or "Envoy"
    attack: str | None = None


@dataclass
class Result:
    phase: Phase
    samples: list[Sample]
    report: dict[str, Any]
    server_cores: float
    attacker_cores: float
    envoy_cores: float
    load: str
    in_place: str
    settled: str
    counters: dict[str, float]  # what changed while the honest loop ran
    gauges: dict[str, float]  # the server's and Envoy's counters as it ended
    seconds: float  # how long the honest loop ran
    udp_drops: int  # UDP datagrams the kernel dropped meanwhile

    @property
    def latencies(self) -> list[float]:
        return [s.ms for s in self.samples]

    def p(self, q: float, op: str | None = None) -> float:
        return percentile([s.ms for s in self.samples if op is None or s.op == op], q)


PHASES = (
    Phase("no attack", "direct"),
    Phase("no attack, through Envoy", "Envoy"),
    Phase("stalled uploads", "direct", "stalled"),
    Phase("many watchers", "direct", "watchers"),
    Phase("stream flood through Envoy", "Envoy", "flood"),
    Phase("wake-up flood", "direct", "wake"),
    Phase("resumable session hoarding", "direct", "hoard"),
)


@dataclass
class Stack:
    backends: Backends
    envoy: Envoy
    envoy_port: int
    envoy_admin_port: int
    metrics_port: int

    @property
    def server_target(self) -> str:
        return f"127.0.0.1:{self.backends.server.port}"

    @property
    def envoy_target(self) -> str:
        return f"127.0.0.1:{self.envoy_port}"


@contextlib.contextmanager
def envoy_in_front(work: Path, server_port: int) -> Iterator[tuple[Envoy, int, int]]:
    """Envoy with the config `make run` renders (Budgets' defaults), in front of the server."""
    port, admin_port = free_port(), free_port()
    config = render_envoy_config(
        work / "envoy.yaml",
        listen_port=port,
        admin_port=admin_port,
        upstream_port=server_port,
        descriptor=DESCRIPTOR,
        openapi=OPENAPI,
        budgets=Budgets(),
    )
    envoy = Envoy(
        config_path=config,
        admin_port=admin_port,
        cwd=REPO_ROOT,
        log_path=work / "envoy.log",
        log_level="warning",
    )
    try:
        envoy.start(60)
        yield envoy, port, admin_port
    finally:
        envoy.stop()


class Counters:
    """The server's metrics and Envoy's stats, read over HTTP."""

    ENVOY = re.compile(r"overflow|rate_limited|upstream_rq_active$")

    def __init__(self, session: aiohttp.ClientSession, stack: Stack) -> None:
        self.session = session
        self.stack = stack

    async def read(self) -> dict[str, float]:
        values: dict[str, float] = {}
        timeout = aiohttp.ClientTimeout(total=10)
        url = f"http://127.0.0.1:{self.stack.metrics_port}/metrics"
        async with self.session.get(url, timeout=timeout) as reply:
            for line in (await reply.text()).splitlines():
                name, _, value = line.rpartition(" ")
                if name and not line.startswith("#"):
                    with contextlib.suppress(ValueError):
                        values[name] = float(value)
        url = f"http://127.0.0.1:{self.stack.envoy_admin_port}/stats"
        async with self.session.get(url, timeout=timeout) as reply:
            for line in (await reply.text()).splitlines():
                name, _, value = line.partition(": ")
                if self.ENVOY.search(name) and value.strip().isdigit():
                    values[f"envoy {name}"] = float(value)
        return values

    async def value(self, name: str) -> float:
        return (await self.read()).get(name, 0.0)

    async def wait(self, check: Callable[[dict[str, float]], bool], timeout_s: float) -> bool:
        """Poll until `check` holds (True) or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check(await self.read()):
                return True
            await asyncio.sleep(0.25)
        return False


def in_place_check(attack: str, args: argparse.Namespace) -> Callable[[dict[str, float]], bool]:
    """When an attack holds what it can: the server's view."""
    per_client = default("upload_max_concurrent_per_client")
    watchers_per_client = default("watch_max_watchers_per_client")
    if attack == "stalled":  # each stream holds a granule for its one chunk
        held = min(args.stalled_streams, per_client) * args.attackers * GRANULE_BYTES
        want = min(default("upload_memory_budget_bytes"), held)
        return lambda m: m.get("checkout_upload_memory_budget_bytes_used", 0) >= want
    if attack == "watchers":
        want = min(min(args.watchers, watchers_per_client) * args.attackers, 4096)
        return lambda m: m.get("checkout_watchers", 0) >= want
    if attack == "flood":
        budget = Budgets().watch_requests
        want = min(budget, min(args.flood_watch, watchers_per_client) * args.attackers)
        return lambda m: m.get("checkout_watchers", 0) >= want
    if attack == "wake":
        return lambda m: m.get("checkout_wake_ups_refused_total", 0) > 0
    return lambda m: (
        m.get('checkout_uploads_refused_total{reason="TOO_MANY_UPLOAD_SESSIONS"}', 0) > 0
    )


def settled(m: dict[str, float]) -> bool:
    """Nothing of an attack left on the server: no upload streaming, no memory reserved, no
    watcher."""
    return (
        m.get("checkout_uploads_in_flight", 0) == 0
        and m.get("checkout_upload_memory_budget_bytes_used", 0) == 0
        and m.get("checkout_watchers", 0) == 0
    )


def spec_of(attack: str, args: argparse.Namespace, stack: Stack, keys: list[str]) -> dict[str, Any]:
    return {
        "attack": attack,
        "target": stack.server_target,
        "envoy": stack.envoy_target,
        "keys": keys,
        "streams": {"stalled": args.stalled_streams, "watchers": args.watchers}.get(
            attack, args.flood_watch
        ),
        "health": args.flood_health,
        "wake_host": "127.0.0.1",
        "wake_port": stack.backends.server.port,
        "rate": args.wake_rate,
        "concurrency": args.hoard_concurrency,
    }


async def clear_events(uri: str) -> None:
    """Empty the status records and outbox messages (only the honest client makes events)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        database = client[default("mongo_db")]
        await database[default("mongo_status_collection")].delete_many({})
        await database[default("mongo_outbox_collection")].delete_many({})
    finally:
        await client.close()


async def run_phase(
    phase: Phase,
    args: argparse.Namespace,
    stack: Stack,
    counters: Counters,
    honest: Honest,
    stubs: dict[str, Any],
    attacker_keys: list[str],
) -> Result:
    await clear_events(stack.backends.ferretdb.uri)
    attacker: Attacker | None = None
    in_place = ""
    try:
        if phase.attack:
            attacker = await Attacker.start(spec_of(phase.attack, args, stack, attacker_keys))
            await attacker.ready()
            began = time.monotonic()
            held = await counters.wait(in_place_check(phase.attack, args), IN_PLACE_TIMEOUT_S)
            in_place = (
                f"{'in place' if held else 'NOT in place'} after {time.monotonic() - began:.1f} s"
            )
        pids = {
            "server": stack.backends.server_pid,
            "attacker": attacker.pid if attacker else None,
            "envoy": stack.envoy.pid,
        }
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        counted = await counters.read()
        drops = udp_receive_drops()
        began = time.monotonic()
        samples = await honest.run(stubs[phase.path], args.seconds)
        wall = time.monotonic() - began
        drops = udp_receive_drops() - drops
        cores = {name: (cpu_seconds(pid) - before[name]) / wall for name, pid in pids.items()}
        after = await counters.read()
        phase_load = load()
        report = await attacker.stop() if attacker else {}
        attacker = None
    finally:
        if attacker is not None:  # cancelled or failed: stop it all the same
            await attacker.stop()
    began = time.monotonic()
    clean = await counters.wait(settled, SETTLE_TIMEOUT_S)
    settle = f"{'settled' if clean else 'NOT settled'} in {time.monotonic() - began:.1f} s"
    changed = {
        name: after[name] - counted.get(name, 0.0)
        for name in after
        if ("refused" in name or "overflow" in name or "rate_limited" in name)
        and after[name] != counted.get(name, 0.0)
    }
    return Result(
        phase,
        samples,
        report,
        cores["server"],
        cores["attacker"],
        cores["envoy"],
        phase_load,
        in_place,
        settle,
        changed,
        after,
        wall,
        drops,
    )


def attack_text(result: Result) -> str:
    """What the attacker held (the server's and Envoy's view as the honest loop ended) and how
    it was refused (its own view)."""
    report, gauges, attack = result.report, result.gauges, result.phase.attack
    if not attack:
        return ""
    parts = []
    if attack == "stalled":
        used = gauges.get("checkout_upload_memory_budget_bytes_used", 0) / MiB
        budget = default("upload_memory_budget_bytes") / MiB
        streaming = gauges.get("checkout_uploads_in_flight", 0)
        parts.append(f"{streaming:.0f} uploads open, {used:.0f} of {budget:.0f} MiB reserved")
    elif attack == "watchers":
        parts.append(f"{gauges.get('checkout_watchers', 0):.0f} watchers held")
    elif attack == "flood":
        watches = gauges.get("envoy cluster.checkout_watches.upstream_rq_active", 0)
        public = gauges.get("envoy cluster.checkout_public.upstream_rq_active", 0)
        parts.append(f"Envoy holds {watches:.0f} WatchStatus, {public:.0f} Health/Watch")
    elif attack == "wake":
        sent = report.get("sent", 0) / (report.get("seconds") or 1)
        counted = result.counters.get("checkout_wake_ups_refused_total", 0) / result.seconds
        parts.append(
            f"{sent:,.0f}/s sent, {counted:,.0f}/s counted refused by the server,"
            f" {result.udp_drops / result.seconds:,.0f}/s dropped by the kernel (full buffer)"
        )
    elif attack == "hoard":
        parts.append(
            f"{report.get('succeeded', 0)} sessions opened (all cancelled after:"
            f" {report.get('cleaned', 0)})"
        )
    refused = sorted(report.get("refused", {}).items(), key=lambda kv: -kv[1])
    if attack != "wake":
        parts += [f"{reason} {count:,}" for reason, count in refused] or ["none refused"]
    return "; ".join(parts)


def udp_receive_drops() -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (all sockets)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = [line for line in lines if line[0] == "Udp:"][:2]
    return int(values[names.index("RcvbufErrors")])


def tables(results: list[Result]) -> list[str]:
    baselines = {r.phase.path: r.p(99) for r in results if not r.phase.attack}
    lines = [
        "| phase | path | honest calls (failed) | p50 ms | p99 ms | p99 / no attack |"
        " the attacker: held; refused (as it saw it) | server CPU | attacker CPU | load 1 min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        failed = sum(not s.ok for s in r.samples)
        base = baselines.get(r.phase.path)
        ratio = f"{r.p(99) / base:.2f}" if base and r.phase.attack else ""
        lines.append(
            f"| {r.phase.name} | {r.phase.path} | {len(r.samples)} ({failed}) | {r.p(50):.1f} |"
            f" {r.p(99):.1f} | {ratio} | {attack_text(r)} | {r.server_cores:.2f} |"
            f" {r.attacker_cores:.2f} | {r.load.split()[0]} |"
        )
    ops = ("UploadVideo", "GetStatus", "WatchStatus", "ListStatuses")
    lines += [
        "",
        "| phase | " + " | ".join(f"{op} p50 / p99 ms" for op in ops) + " | refusals the honest"
        " client met |",
        "| --- | " + " | ".join("---" for _ in ops) + " | --- |",
    ]
    for r in results:
        met = collections.Counter(reason for s in r.samples for reason in s.met)
        cells = [f"{r.p(50, op):.1f} / {r.p(99, op):.1f}" for op in ops]
        lines.append(
            f"| {r.phase.name} | "
            + " | ".join(cells)
            + f" | {', '.join(f'{k} {v}' for k, v in met.most_common()) or 'none'} |"
        )
    return lines


async def measure(args: argparse.Namespace, stack: Stack, keys: dict[str, str]) -> list[Result]:
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM as Ctrl-C: the attack stopped and cleaned up, then every server.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    attacker_keys = [keys[f"attacker-{i}"] for i in range(1, args.attackers + 1)]
    honest = Honest(keys["honest"], args.op_deadline)
    results: list[Result] = []
    async with (
        aiohttp.ClientSession() as session,
        grpc.aio.insecure_channel(stack.server_target) as direct,
        grpc.aio.insecure_channel(stack.envoy_target) as through_envoy,
    ):
        counters = Counters(session, stack)
        stubs = {
            "direct": pb_grpc.CheckoutServiceStub(direct),
            "Envoy": pb_grpc.CheckoutServiceStub(through_envoy),
        }
        # Warm both paths (connections, the first upload's imports and buckets) unmeasured.
        for stub in stubs.values():
            await honest.loop_once(stub)
        for phase in PHASES:
            if phase.attack and phase.attack not in args.attacks:
                continue
            result = await run_phase(phase, args, stack, counters, honest, stubs, attacker_keys)
            results.append(result)
            print(
                f"{phase.name} ({phase.path}): {len(result.samples)} calls, p50"
                f" {result.p(50):.1f} ms, p99 {result.p(99):.1f} ms; {result.in_place};"
                f" {result.settled}; server CPU {result.server_cores:.2f}, attacker"
                f" {result.attacker_cores:.2f}, Envoy {result.envoy_cores:.2f} cores; load"
                f" {result.load}",
                flush=True,
            )
            if result.phase.attack:
                print(f"  attacker: {json.dumps(result.report)}", flush=True)
            if result.counters:
                changes = ", ".join(f"{k} +{v:,.0f}" for k, v in sorted(result.counters.items()))
                print(f"  counted meanwhile: {changes}", flush=True)
    return results


def write_keys(path: Path, attackers: int) -> dict[str, str]:
    names = ["honest", *(f"attacker-{i}" for i in range(1, attackers + 1))]
    keys = {name: new_key() for name in names}
    path.write_text("".join(entry(name, "uploader", key) for name, key in keys.items()))
    return keys


def run(args: argparse.Namespace) -> None:
    began, load_before = datetime.now(UTC), load()
    print(f"{began:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores; load average {load_before}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stops the servers started
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as folder:
        work = Path(folder)
        keys = write_keys(work / "api-keys.toml", args.attackers)
        metrics_port = free_port()
        env = {
            "AUTH_ENABLED": "true",
            "AUTH_KEYS_FILE": str(work / "api-keys.toml"),
            "WAKE_SECRET": secrets.token_hex(16),
            "METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            # The production limits (bench/_backends.py raises these two for other benches).
            "UPLOAD_MAX_CONCURRENT_PER_CLIENT": str(default("upload_max_concurrent_per_client")),
            "WATCH_MAX_WATCHERS_PER_CLIENT": str(default("watch_max_watchers_per_client")),
        }
        with (
            started(work, env) as backends,
            envoy_in_front(work, backends.server.port) as (envoy, port, admin_port),
        ):
            stack = Stack(backends, envoy, port, admin_port, metrics_port)
            results = asyncio.run(measure(args, stack, keys))
    minutes = (datetime.now(UTC) - began).total_seconds() / 60
    print()
    print(
        f"`python -m bench.abuse {' '.join(sys.argv[1:])}`".replace(" `", "`")
        + f", {began:%Y-%m-%d %H:%M} UTC, {minutes:.1f} min; load average {load_before} at"
        f" the start, {load()} at the end ({os.cpu_count()} cores)"
    )
    print()
    print("\n".join(tables(results)))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.abuse", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="the honest loop per phase (default 60)"
    )
    parser.add_argument(
        "--attackers", type=int, default=4, help="the attacker's API keys (default 4)"
    )
    parser.add_argument(
        "--attacks",
        nargs="+",
        choices=ATTACKS,
        default=list(ATTACKS),
        help="which attacks (default: all, in this order)",
    )
    parser.add_argument(
        "--op-deadline",
        type=float,
        default=10.0,
        help="an honest call (with its retries) fails after this many seconds (default 10)",
    )
    parser.add_argument(
        "--stalled-streams", type=int, default=12, help="stalled uploads per key (default 12)"
    )
    parser.add_argument(
        "--watchers", type=int, default=320, help="WatchStatus streams per key (default 320)"
    )
    parser.add_argument(
        "--flood-health",
        type=int,
        default=300,
        help="Health/Watch streams through Envoy (default 300)",
    )
    parser.add_argument(
        "--flood-watch",
        type=int,
        default=200,
        help="WatchStatus streams per key through Envoy (default 200)",
    )
    parser.add_argument(
        "--wake-rate", type=int, default=50_000, help="forged wake-ups per second (default 50000)"
    )
    parser.add_argument(
        "--hoard-concurrency",
        type=int,
        default=4,
        help="StartResumableUpload loops per key (default 4)",
    )
    args = parser.parse_args()
    if args.worker:
        worker_main()
        return
    if args.attackers < 1 or args.seconds <= 0:
        parser.error("--attackers must be at least 1 and --seconds positive")
    try:
        run(args)
    except KeyboardInterrupt:
        print("interrupted: the attack and every server stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
