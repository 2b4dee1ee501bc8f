"""Entry point (`checkout-relay`): settings from the environment, logging, relay until
SIGTERM/SIGINT, then a graceful stop (finish and mark the batch in flight, flush the
producer, release the leases)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from .. import logs
from ..config import ConfigError, Settings
from ..errors import ServiceError
from .app import create_relay

log = logging.getLogger("checkout_server.relay")


async def serve(settings: Settings) -> None:
    app = await create_relay(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.run(stop)


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"checkout-relay: configuration error: {exc}")
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        sys.exit(f"checkout-relay: configuration error: {exc}")
    except ServiceError as exc:
        log.error("could not start: %s", exc.text)
        sys.exit(1)


if __name__ == "__main__":
    main()
