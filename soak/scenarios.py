"""The scenarios: one fault each, injected while the load runs, then the audit.

A run of one scenario, on the run's system (two servers, three relays and Envoy as processes)
with a bucket of its own: the load for a warm-up, each server's RSS taken as its baseline, the
fault (injected and undone while the load goes on), a tail of load after it, then the auditor.
Each scenario also says how its fault showed (`evidence`): a fault that changed nothing proves
nothing. A server's kill or SIGTERM hits `server-0` only: `server-1` (directly and through
Envoy) must have accepted uploads meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from devstack import ServerProcess, Toxic, bandwidth, latency, limit_data

from .audit import Audit, Stores, audit
from .load import Load, LoadConfig, LoadResult
from .topology import (
    BACKENDS,
    SERVER_DRAIN_S,
    SERVER_GRACE_S,
    SERVER_ORPHAN_AGE_S,
    SERVER_SWEEP_INTERVAL_S,
    Backends,
    Soak,
    System,
    rss_bytes,
)


@dataclass(frozen=True)
class Pace:
    """How long a run takes: the warm-up before the fault, the fault, the load after it, and
    how long the auditor waits for what settles by itself."""

    warmup_s: float
    tail_s: float
    settle_s: float
    long: bool


LONG = Pace(warmup_s=15.0, tail_s=20.0, settle_s=120.0, long=True)
SHORT = Pace(warmup_s=2.0, tail_s=2.0, settle_s=45.0, long=False)
# The short runs (`make test`) share two cores with the rest of the suite: a lighter load.
SHORT_LOAD = LoadConfig(uploaders=3, rest_uploaders=1, watchers=2, max_bytes=1024 * 1024)
# The server the server faults hit, and the one that keeps serving.
VICTIM, SURVIVOR = "server-0", "server-1"


@dataclass
class Context:
    """What a fault acts on, and what it noted (seconds since the load started)."""

    backends: Backends
    system: System
    load: Load
    load_started: float
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    restarted: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (old, new pid)
    phases: list[str] = field(default_factory=list)  # toxics applied, one per backend
    fault_started: float = 0.0
    fault_ended: float = 0.0

    def at(self) -> float:
        return time.monotonic() - self.load_started

    def note(self, what: str) -> None:
        self.notes.append(f"{what} at {self.at():.1f}s")


Inject = Callable[[Context, float], Awaitable[None]]
Evidence = Callable[[Context, LoadResult], str | None]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    inject: Inject
    long_s: float  # how long the fault lasts in `make soak`
    short_s: float  # and in `make test`
    evidence: Evidence
    # Violations this scenario is known to find, by the auditor's wording: still checked and
    # reported (as `known`), not counted against it, until the server is fixed (README).
    known: tuple[str, ...] = ()
    # The least the auditor waits for what settles, whatever the pace's `settle_s`.
    settle_s: float = 0.0


# --- faults ---------------------------------------------------------------------------------


def _process(ctx: Context, name: str) -> ServerProcess:
    """The process a fault acts on: a server (`server-0`, ...), a relay (`relay-0`, ...),
    Envoy or a backend."""
    services = {p.name: p for p in ctx.system.processes}
    backends = {
        "kafka": ctx.backends.broker,
        "minio": ctx.backends.minio,
        "ferretdb": ctx.backends.ferretdb,
    }
    return (services | backends)[name]


TakeDown = Callable[[Context, str, ServerProcess], Awaitable[None]]


def outage(name: str, take_down: TakeDown, *, start_s: float) -> Inject:
    """The one start/stop/restart dance of a process fault: `take_down` the process `name`,
    leave it down for the fault's time, start it again on the same ports (waiting up to
    `start_s` for it), and note its pid before and after for the evidence."""

    async def inject(ctx: Context, down_s: float) -> None:
        process = _process(ctx, name)
        old = process.pid
        await take_down(ctx, name, process)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(process.start, start_s)
        new = process.pid
        assert new is not None
        ctx.restarted[name] = (old or 0, new)
        ctx.note(f"{name} back")

    return inject


async def kill(ctx: Context, name: str, process: ServerProcess) -> None:
    await asyncio.to_thread(process.kill)
    ctx.note(f"{name} killed (SIGKILL)")


async def stop(ctx: Context, name: str, process: ServerProcess) -> None:
    await asyncio.to_thread(process.stop)
    ctx.note(f"{name} stopped")


async def sigterm_server(ctx: Context, name: str, process: ServerProcess) -> None:
    """SIGTERM; a violation unless the server exits 0 within its drain and grace."""
    allowed = SERVER_DRAIN_S + SERVER_GRACE_S + 3  # the drain, the grace, and a loaded machine
    ctx.note(f"{name} sent SIGTERM")
    elapsed, code = await asyncio.to_thread(ctx.system.terminate_server, name, allowed + 10)
    ctx.note(f"{name} exited with {code} after {elapsed:.1f}s")
    if code != 0 or elapsed > allowed:
        ctx.violations.append(
            f"SIGTERM: exit code {code} after {elapsed:.1f}s (drain {SERVER_DRAIN_S:.0f}s,"
            f" grace {SERVER_GRACE_S:.0f}s)"
        )


async def client_cancels(ctx: Context, seconds: float) -> None:
    before, ctx.load.cancel_rate = ctx.load.cancel_rate, 0.5
    ctx.note("half the new uploads cancelled by their client")
    await asyncio.sleep(seconds)
    ctx.load.cancel_rate = before
    ctx.note("cancels back to normal")


def _toxic(make: Callable[[], list[Toxic]], what: str) -> Inject:
    """The toxics of `make` between the system and each backend in turn, for a third of the
    fault's time each."""

    async def inject(ctx: Context, seconds: float) -> None:
        api = ctx.backends.api
        for backend in BACKENDS:
            toxics = make()
            names = [await asyncio.to_thread(api.add_toxic, backend, t) for t in toxics]
            ctx.note(f"{what} to {backend}")
            await asyncio.sleep(seconds / len(BACKENDS))
            for name in names:
                await asyncio.to_thread(api.remove_toxic, backend, name)
            ctx.phases.append(backend)

    return inject


# --- evidence --------------------------------------------------------------------------------


def _during_fault(ctx: Context, load: LoadResult, *, ok: bool) -> list[str]:
    """Outcomes of the uploads that were under way at some moment of the fault."""
    start, end = ctx.load_started + ctx.fault_started, ctx.load_started + ctx.fault_ended
    return [
        c.refusal
        for c in load.uploads()
        if c.started <= end and c.started + c.elapsed_s >= start and c.ok == ok
    ]


def restarted(name: str, *, under_way: str) -> Evidence:
    """`name` was restarted (a new pid), and uploads were under way meanwhile that were
    `refused`, `accepted` or either (`any`)."""

    def evidence(ctx: Context, load: LoadResult) -> str | None:
        old, new = ctx.restarted.get(name, (0, 0))
        if not old or not new or old == new:
            return f"{name} was not restarted ({old} -> {new})"
        refused = _during_fault(ctx, load, ok=False)
        accepted = _during_fault(ctx, load, ok=True)
        seen = {"refused": refused, "accepted": accepted, "any": refused + accepted}[under_way]
        if not seen:
            return f"no upload under way during the fault was {under_way}"
        return None

    return evidence


def served_meanwhile(name: str, *, under_way: str) -> Evidence:
    """As `restarted(name, ...)`, and uploads begun while `name` was down were accepted by
    the other server directly and through Envoy (its gRPC route or REST): Envoy routed
    around it."""
    was_restarted = restarted(name, under_way=under_way)

    def evidence(ctx: Context, load: LoadResult) -> str | None:
        if (missing := was_restarted(ctx, load)) is not None:
            return missing
        start, end = ctx.load_started + ctx.fault_started, ctx.load_started + ctx.fault_ended
        begun = [c for c in load.uploads() if start <= c.started <= end and c.ok]
        direct = [c for c in begun if c.target == SURVIVOR]
        through_envoy = [c for c in begun if c.target in {"envoy", "rest"}]
        if not direct or not through_envoy:
            return (
                f"while {name} was down, {len(direct)} uploads begun were accepted by"
                f" {SURVIVOR} directly and {len(through_envoy)} through Envoy (both must be > 0)"
            )
        return None

    return evidence


def cancelled_by_clients(ctx: Context, load: LoadResult) -> str | None:
    cancelled = [c for c in load.uploads() if c.cancelled_by_client and c.code == "CANCELLED"]
    return None if len(cancelled) >= 2 else f"only {len(cancelled)} uploads were cancelled"


def every_backend(ctx: Context, load: LoadResult) -> str | None:
    if ctx.phases != list(BACKENDS):
        return f"toxics applied to {ctx.phases}, not to each of {list(BACKENDS)}"
    if not _during_fault(ctx, load, ok=True) and not _during_fault(ctx, load, ok=False):
        return "no upload was under way during the toxics"
    return None


# --- the list ----------------------------------------------------------------------------------

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "kill-server",
        "kill -9 of one server under load (the other and Envoy serve on); restarted",
        outage(VICTIM, kill, start_s=90),
        long_s=2.0,
        short_s=0.0,
        evidence=served_meanwhile(VICTIM, under_way="refused"),
        # A kill between an object's completion and its outbox insert leaves the object
        # without an event; the sweeper removes it once it is SERVER_ORPHAN_AGE_S old.
        settle_s=SERVER_ORPHAN_AGE_S + SERVER_SWEEP_INTERVAL_S + 20,
    ),
    Scenario(
        "kill-relay",
        "kill -9 of one of the three relays; the others take its leases over; restarted",
        outage("relay-0", kill, start_s=90),
        long_s=10.0,
        short_s=0.0,
        evidence=restarted("relay-0", under_way="accepted"),
    ),
    Scenario(
        "kafka-down",
        "Kafka stopped (30 s; short: 3 s) and started again; uploads go on, events wait",
        outage("kafka", stop, start_s=180),
        long_s=30.0,
        short_s=3.0,
        evidence=restarted("kafka", under_way="accepted"),
    ),
    Scenario(
        "minio-down",
        "MinIO stopped (10 s; short: 2 s) and started again",
        outage("minio", stop, start_s=180),
        long_s=10.0,
        short_s=2.0,
        evidence=restarted("minio", under_way="any"),
    ),
    Scenario(
        "ferretdb-down",
        "FerretDB (and its PostgreSQL) stopped (10 s; short: 2 s) and started again",
        outage("ferretdb", stop, start_s=180),
        long_s=10.0,
        short_s=2.0,
        evidence=restarted("ferretdb", under_way="any"),
    ),
    Scenario(
        "sigterm-server",
        "SIGTERM of one server under load: it exits 0 within drain and grace; restarted",
        outage(VICTIM, sigterm_server, start_s=90),
        long_s=0.0,
        short_s=0.0,
        evidence=served_meanwhile(VICTIM, under_way="refused"),
    ),
    Scenario(
        "client-cancels",
        "half the uploads cancelled by their client at a random moment (20 s; short: 3 s)",
        client_cancels,
        long_s=20.0,
        short_s=3.0,
        evidence=cancelled_by_clients,
    ),
    Scenario(
        "net-latency",
        "toxiproxy: 300 ms ± 100 ms latency between the system and each backend in turn",
        _toxic(lambda: [latency(300, jitter_ms=100)], "latency"),
        long_s=30.0,
        short_s=3.0,
        evidence=every_backend,
    ),
    Scenario(
        "net-cut",
        "toxiproxy: connections to each backend in turn cut after 64 KiB sent, mid-stream",
        _toxic(lambda: [limit_data(64 * 1024)], "cuts"),
        long_s=30.0,
        short_s=3.0,
        evidence=every_backend,
    ),
    Scenario(
        "net-slow",
        "toxiproxy: a 128 KB/s link, both ways, between the system and each backend in turn",
        _toxic(
            lambda: [bandwidth(128, stream="upstream"), bandwidth(128, stream="downstream")],
            "a slow link",
        ),
        long_s=30.0,
        short_s=3.0,
        evidence=every_backend,
    ),
)
BY_NAME = {s.name: s for s in SCENARIOS}


# --- one run ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: Scenario
    audit: Audit
    context: Context
    load: LoadResult
    evidence: str | None  # why the fault did not show, or None
    took_s: float = 0.0  # the whole run, start to stop

    @property
    def found(self) -> list[str]:
        return [*self.context.violations, *self.audit.violations]

    @property
    def violations(self) -> list[str]:
        """What the auditor found, but the scenario's known violations."""
        return [v for v in self.found if not v.startswith(self.scenario.known)]

    @property
    def known(self) -> list[str]:
        return [v for v in self.found if v.startswith(self.scenario.known)]

    def line(self) -> str:
        a = self.audit
        refused = ", ".join(f"{k} {v}" for k, v in sorted(a.refused.items())) or "none"
        routes = ", ".join(f"{k} {v}" for k, v in self.load.accepted_by_target().items())
        rss = ", ".join(
            f"{name} {a.rss_baseline[name] / 2**20:.0f}->{a.rss_after.get(name, 0) / 2**20:.0f}"
            for name in a.rss_baseline
        )
        return (
            f"soak {self.scenario.name}: uploads accepted {a.accepted} ({routes}),"
            f" refused {{{refused}}},"
            f" events in Kafka {a.kafka_events}/{a.events}, duplicates {a.duplicates},"
            f" violations {len(self.violations)}"
            + (f" (known, not counted: {'; '.join(self.known)})" if self.known else "")
            + f" | rss {rss} MiB"
            f" | {self.took_s:.0f}s"
            f" | {'; '.join(self.context.notes)}"
            + (f" | NO EVIDENCE: {self.evidence}" if self.evidence else "")
        )


async def run(
    soak: Soak,
    scenario: Scenario,
    *,
    pace: Pace,
    config: LoadConfig | None = None,
    seed: int = 0,
) -> Outcome:
    t0 = time.monotonic()
    backends, system = soak.backends, soak.system
    bucket = soak.namespace.bucket(scenario.name)
    try:
        await asyncio.to_thread(_ready, system)
        if config is None:
            config = LoadConfig() if pace.long else SHORT_LOAD
        load = Load(system.targets, system.rest_base, bucket, config, seed=seed)
        stop = asyncio.Event()
        running = asyncio.create_task(load.run(stop))
        ctx = Context(backends, system, load, load_started=time.monotonic())
        await _wait_or_fail(running, pace.warmup_s)
        baseline = await asyncio.to_thread(_rss, system)
        ctx.fault_started = ctx.at()
        await scenario.inject(ctx, scenario.long_s if pace.long else scenario.short_s)
        ctx.fault_ended = ctx.at()
        await _wait_or_fail(running, pace.tail_s)
        stop.set()
        result = await running

        async def rss() -> dict[str, int]:
            return await asyncio.to_thread(_rss, system)

        report = await audit(
            result,
            soak.namespace,
            bucket,
            Stores(backends.mongo_uri, backends.minio_endpoint, backends.kafka_bootstrap),
            settle_s=max(pace.settle_s, scenario.settle_s),
            rss=rss,
            rss_baseline=baseline,
        )
        outcome = Outcome(scenario, report, ctx, result, scenario.evidence(ctx, result))
    finally:
        await asyncio.to_thread(backends.api.reset)
    outcome.took_s = time.monotonic() - t0
    return outcome


def _ready(system: System) -> None:
    """Every process of the system running (a scenario before may have failed midway)."""
    for process in system.processes:
        if not process.running:
            process.start(90)


def _rss(system: System) -> dict[str, int]:
    """Each server's RSS, by name."""
    return {s.name: rss_bytes(system.server_pid(s.name)) for s in system.servers}


async def _wait_or_fail(task: asyncio.Task[LoadResult], seconds: float) -> None:
    """Let the load run for `seconds`; raise at once if it failed."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        task.result()
        raise RuntimeError("the load stopped by itself")
