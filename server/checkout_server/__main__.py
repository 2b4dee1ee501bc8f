"""Entry point (`checkout-server`): settings from the environment, logging, serve until
SIGTERM/SIGINT, then a graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from . import logs
from .app import create_app
from .config import ConfigError, Settings
from .errors import ServiceError

log = logging.getLogger("checkout_server")


async def serve(settings: Settings) -> None:
    app = await create_app(settings)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": settings.shutdown_grace_s})
    await app.stop()


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"checkout-server: configuration error: {exc}")
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except ServiceError as exc:
        log.error("could not start: %s", exc.text)
        sys.exit(1)


if __name__ == "__main__":
    main()
