"""`checkout-runner` (or `python -m checkout_runner`): run the runner; `checkout-runner sample
OUT.mp4` writes the demo clip (faces from scikit-image's photos moving over noise) and, with
`--truth`, where each face is in every frame."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from . import logs
from .config import RunnerSettings
from .errors import ConfigError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="checkout-runner", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="consume the relay's topic (the default)")
    sample = commands.add_parser("sample", help="write the demo clip")
    sample.add_argument("out", type=Path, help="the MP4 file to write")
    sample.add_argument("--truth", type=Path, help="also write the faces' boxes here (JSON)")
    sample.add_argument("--seconds", type=float, default=6.0, help="clip length [6]")
    args = parser.parse_args(argv)

    if args.command == "sample":
        from .sample import write_sample

        truth = write_sample(args.out, seconds=args.seconds)
        if args.truth:
            args.truth.write_text(truth.to_json())
        print(f"{args.out}: {truth.summary()}")
        return
    try:
        settings = RunnerSettings.from_env()
    except ConfigError as exc:
        sys.exit(f"checkout-runner: configuration error: {exc}")
    logs.configure(settings.log_level, settings.log_format)
    from .wiring import serve

    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
