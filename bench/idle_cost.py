"""What `make run`'s stack costs doing nothing (issue 25's idle target: under 3 % of a core for
ours plus the database load we cause), at a given number of stored events.

    python -m bench.idle_cost [--events 100000] [--seconds 60] [--no-status-topic]

Starts the stack with the detection runner (devstack's LocalStack) on free ports, writes
`--events` status records straight into the collection as earlier uploads over the last 30
days leave them (most `sent`, a tenth `ready`, so nine in ten wait for a result no runner will
write), brings PostgreSQL's statistics up to date as autovacuum would, waits 30 s (`--settle`)
for the start-up work to pass, then reads the CPU each process used over `--seconds` from
/proc (a process with its children: PostgreSQL's backends count to it). "Ours and the
database" is FerretDB, PostgreSQL, the server, the relay and the runner; Kafka and MinIO are
printed beside. `--no-status-topic` runs the same stack without STATUS_TOPIC, the peer that
shows what reading the status topic costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import tree_cpu_seconds
from bench.status_latency import store_events
from devstack._stack import LocalStack, StackPorts

OURS = ("ferretdb", "postgresql", "server", "relay", "runner")
SETTLE_S = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="stored events (100,000)")
    parser.add_argument(
        "--settle", type=float, default=SETTLE_S, help="seconds before measuring (30)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="measured idle time (60)")
    parser.add_argument("--no-status-topic", action="store_true", help="STATUS_TOPIC empty")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a server setting"
    )
    args = parser.parse_args()
    env = {"LOG_LEVEL": "WARNING", **dict(e.split("=", 1) for e in args.env)}
    if args.no_status_topic:
        env["STATUS_TOPIC"] = ""
    with tempfile.TemporaryDirectory(prefix="idle-cost-") as tmp:
        stack = LocalStack(Path(tmp) / "stack", StackPorts.free(), app_env=env, with_runner=True)
        try:
            stack.start()
            asyncio.run(store_events(stack.ferretdb.uri, args.events))
            if stack.ferretdb.postgres is not None:
                # What autovacuum does within a minute of a bulk load: until then PostgreSQL
                # plans without statistics (and scans rather than use the equality indexes).
                stack.ferretdb.postgres.run_sql("ANALYZE")
            time.sleep(args.settle)  # the measured span starts once start-up work has passed
            processes = {
                "ferretdb": stack.ferretdb,
                "postgresql": stack.ferretdb.postgres,
                "server": stack.server,
                "relay": stack.relay,
                "runner": stack.runner,
                "kafka": stack.kafka,
                "minio": stack.minio,
            }
            pids = {n: p.pid for n, p in processes.items() if p is not None and p.pid}
            before = {n: tree_cpu_seconds(pid) for n, pid in pids.items()}
            started = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - started
            used = {
                n: (tree_cpu_seconds(pid) - before[n]) / elapsed * 100 for n, pid in pids.items()
            }
        finally:
            stack.stop()
    ours = sum(v for n, v in used.items() if n in OURS)
    topic = "without" if args.no_status_topic else "with"
    print(f"{args.events:,} stored events, {topic} the status topic, idle {elapsed:.0f} s:")
    print(f"  ours and the database: {ours:.2f} % of a core (target: under 3 %)")
    print("  " + ", ".join(f"{n} {v:.2f} %" for n, v in used.items()))


if __name__ == "__main__":
    main()
