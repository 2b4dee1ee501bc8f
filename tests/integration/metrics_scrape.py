"""`GET /metrics` of a process under test (server, relay or runner), parsed by
prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# Loopback only: no proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def metrics_text(port: int) -> str:
    """The exposition text on 127.0.0.1:`port` (blocking: call it in a thread)."""
    with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def samples_of(text: str) -> dict[str, float]:
    """Every sample: `name`, or `name{k="v",...}` with the labels sorted, -> value."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


async def scrape(port: int) -> dict[str, float]:
    """`samples_of` the metrics on `port`, fetched off the event loop."""
    return samples_of(await asyncio.to_thread(metrics_text, port))
