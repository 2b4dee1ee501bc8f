"""What the project's own install files promise (issue 23): every pip install takes hashed
pins or our own packages with no index, and the server's image turns authentication on."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from checkout_server.config import ServerSettings
from checkout_server.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
MAKEFILE = REPO_ROOT / "Makefile"


def commands(text: str) -> list[list[str]]:
    """The shell commands of a Dockerfile or Makefile: lines joined at their backslashes,
    split at `&&`, each as its words."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        for command in line.split("&&"):
            words = shlex.split(command.strip().removeprefix("RUN "), comments=True)
            if words:
                found.append(words)
    return found


def pip_installs(text: str) -> list[list[str]]:
    installs = []
    for words in commands(text):
        if "pip" in words and "install" in words:
            installs.append(words[words.index("install") + 1 :])
    return installs


@pytest.mark.parametrize("path", [DOCKERFILE, MAKEFILE], ids=lambda p: p.name)
def test_every_pip_install_takes_hashed_pins_or_our_own_packages_with_no_index(
    path: Path,
) -> None:
    installs = pip_installs(path.read_text())
    assert len(installs) >= 3  # pip itself, the third-party lock, our own packages
    for arguments in installs:
        hashed = "--require-hashes" in arguments
        ours = "--no-index" in arguments and "--no-deps" in arguments
        assert hashed or ours, arguments


def test_the_server_image_turns_authentication_on_and_so_needs_a_keys_file() -> None:
    env: dict[str, str] = {}
    stage = DOCKERFILE.read_text().partition(" AS app\n")[2].partition("\nFROM ")[0]
    for words in commands(stage):
        if words[0] == "ENV":
            env.update(dict(word.split("=", 1) for word in words[1:]))
    assert env["AUTH_ENABLED"] == "true"
    assert env["GRPC_ADDR"].startswith("0.0.0.0:")
    # Started without AUTH_KEYS_FILE, the image stops rather than serve without keys.
    with pytest.raises(ConfigError, match="AUTH_KEYS_FILE"):
        ServerSettings.from_env(env)
