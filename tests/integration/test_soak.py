"""The short version of every soak scenario (`make soak` runs the long ones): two servers,
three relays and Envoy in front of both servers as real processes, FerretDB, MinIO and Kafka
behind toxiproxy, a load of gRPC uploads (to each server and through Envoy), REST uploads
through Envoy, watchers and listings, one fault while it runs, then the auditor against the
backends.

Each asserts that the auditor found no violation and that the fault really happened during
the load and showed (uploads refused, a process restarted, toxics applied to each backend;
with one server down, the other accepting uploads directly and through Envoy).
The backends and the system are the module's own (the scenarios stop and start them); each
scenario uploads into a bucket of its own, which its audit looks at.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from soak.scenarios import SCENARIOS, SHORT, Scenario, run
from soak.topology import Soak

# Each scenario takes 15-30 s on a loaded 2-core machine (kafka-down up to a minute: the
# broker's restart); the first also waits for the backends.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Soak]:
    started = Soak(tmp_path_factory.mktemp("soak"), [s.name for s in SCENARIOS])
    started.start()
    yield started
    started.stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_scenario_short(soak: Soak, scenario: Scenario) -> None:
    outcome = await run(soak, scenario, pace=SHORT)
    print(outcome.line())
    ctx, load = outcome.context, outcome.load
    assert not outcome.violations, f"{outcome.line()}: {outcome.violations}"
    # The fault began after the load had run a while and ended before the load did.
    assert load.started < ctx.load_started + ctx.fault_started
    assert ctx.load_started + ctx.fault_ended < load.ended
    assert outcome.evidence is None, outcome.line()
    assert outcome.audit.accepted > 0
    # Every route of the load took uploads: each server directly, Envoy's gRPC route, REST.
    assert set(load.accepted_by_target()) == {"server-0", "server-1", "envoy", "rest"}
    assert outcome.audit.kafka_events == outcome.audit.events > 0
