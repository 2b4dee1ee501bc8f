"""`python -m soak`: every scenario (or those named), long by default, one line each."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

# gRPC core's own INFO lines (GOAWAY from a server being stopped) are not the soak's report.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from .scenarios import BY_NAME, LONG, SCENARIOS, SHORT, Outcome, Scenario, run
from .topology import Soak


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="default: all")
    parser.add_argument("--short", action="store_true", help="the short runs of `make test`")
    parser.add_argument("--list", action="store_true", help="print the scenarios and exit")
    parser.add_argument("--work", type=Path, help="keep data and logs here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


async def _run_all(chosen: list[Scenario], work: Path, *, short: bool, seed: int) -> int:
    soak = Soak(work, [s.name for s in chosen])
    t0 = time.monotonic()
    await asyncio.to_thread(soak.start)
    print(f"soak: backends and system up in {time.monotonic() - t0:.0f}s (logs in {work / 'logs'})")
    failed = 0
    try:
        for scenario in chosen:
            outcome: Outcome = await run(soak, scenario, pace=SHORT if short else LONG, seed=seed)
            print(outcome.line(), flush=True)
            for violation in outcome.violations:
                print(f"  violation: {violation}", flush=True)
            for known in outcome.known:
                print(f"  known violation (README, Soak): {known}", flush=True)
            failed += bool(outcome.violations or outcome.evidence)
    finally:
        await asyncio.to_thread(soak.stop)
    print(f"soak: {len(chosen) - failed}/{len(chosen)} scenarios clean")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:15s} {scenario.summary}")
        return 0
    unknown = [n for n in args.scenarios if n not in BY_NAME]
    if unknown:
        print(f"unknown scenarios {unknown}; known: {sorted(BY_NAME)}", file=sys.stderr)
        return 2
    chosen = [BY_NAME[n] for n in args.scenarios] or list(SCENARIOS)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run_all(chosen, args.work, short=args.short, seed=args.seed))
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        return asyncio.run(_run_all(chosen, Path(tmp), short=args.short, seed=args.seed))


if __name__ == "__main__":
    sys.exit(main())
