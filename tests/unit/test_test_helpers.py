"""The test helpers' own guards."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import off_the_event_loop


async def test_a_blocking_helper_refuses_the_event_loop_and_runs_off_it() -> None:
    # A helper that blocks for seconds on the loop the in-process servers share stalls them:
    # the status topic's feed fell out of its liveness window that way.
    with pytest.raises(RuntimeError, match=r"asyncio\.to_thread"):
        off_the_event_loop("starting a relay")
    await asyncio.to_thread(off_the_event_loop, "starting a relay")
