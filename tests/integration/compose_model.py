"""docker-compose.yml as `docker compose` loads it with .env.example (`config --format json`),
read through the composecheck tool (tools/composecheck, compose-go), for the tests that check
its services."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from devstack._install import COMPOSECHECK, install_composecheck
from devstack._paths import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"


def load_model() -> dict[str, Any]:
    """The loaded project: services, secrets, volumes, every variable interpolated."""
    install_composecheck()  # a no-op once `make stack` built it (its stamp matches)
    res = subprocess.run(
        [str(COMPOSECHECK), "-json", str(COMPOSE), str(ENV_EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    loaded: dict[str, Any] = json.loads(res.stdout)
    return loaded
