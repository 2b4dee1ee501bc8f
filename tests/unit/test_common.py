"""checkout_common, the one implementation the server, the relay and the runner share: the
retry schedule (and the SDK's copy of it), the loop supervisor, the settings rules and the
result-key rule."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import model_validator

from checkout_client.backoff import Backoff as SdkBackoff
from checkout_common.backoff import Backoff, Retries
from checkout_common.result_key import (
    DEFAULT_TEMPLATE,
    check_template,
    result_key,
    result_prefix,
)
from checkout_common.settings import ConfigError, EnvRule, EnvSettings, Flag, Names, Secret
from checkout_common.supervisor import Outage, Supervisor, retry_until, wait_or_stop

pytestmark = pytest.mark.timeout(10)

# --- backoff ----------------------------------------------------------------------------------


def test_the_schedule_doubles_to_its_cap_with_equal_jitter() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.ceiling_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.ceiling_s(0) == 0.5  # before any failure: the first step
    assert backoff.ceiling_s(10_000) == 4.0  # no overflow
    for failures in range(1, 8):
        ceiling = backoff.ceiling_s(failures)
        assert all(ceiling / 2 <= backoff.delay_s(failures) <= ceiling for _ in range(50))


def test_the_schedule_is_immutable_and_refuses_nonsense() -> None:
    backoff = Backoff(0.5, 4.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.max_s = 1.0  # type: ignore[misc]
    for bad in [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)]:
        with pytest.raises(ValueError, match="initial_s"):
            Backoff(*bad)
    with pytest.raises(ValueError, match="multiplier"):
        Backoff(0.5, 4.0, multiplier=0.5)


@pytest.mark.parametrize("schedule", [(0.5, 30.0, 2.0), (0.01, 0.02, 2.0), (1.0, 10.0, 3.0)])
def test_the_sdks_copy_waits_as_the_processes_do(schedule: tuple[float, float, float]) -> None:
    """The SDK keeps a copy (checkout_client.backoff says why): the same ceilings, jittered
    within the same bounds, and the same refusals."""
    ours, sdk = Backoff(*schedule), SdkBackoff(*schedule)
    for failures in range(0, 70):
        assert sdk.ceiling_s(failures) == ours.ceiling_s(failures)
        ceiling = ours.ceiling_s(failures)
        assert all(ceiling / 2 <= sdk.delay_s(failures) <= ceiling for _ in range(20))
    for bad in [(2.0, 1.0), (0.0, 1.0)]:
        with pytest.raises(ValueError, match="initial_s"):
            SdkBackoff(*bad)
    with pytest.raises(ValueError, match="multiplier"):
        SdkBackoff(0.5, 4.0, multiplier=0.5)
    assert [f.name for f in dataclasses.fields(SdkBackoff)] == [
        f.name for f in dataclasses.fields(Backoff)
    ]


def test_retries_count_failures_in_a_row() -> None:
    retries = Retries(Backoff(1.0, 8.0))
    assert [retries.next_delay_s() <= c for c in (1.0, 2.0, 4.0)] == [True] * 3
    assert retries.failures == 3
    retries.reset()
    assert retries.failures == 0
    assert 0.5 <= retries.next_delay_s() <= 1.0


# --- the supervisor ---------------------------------------------------------------------------


class Down(Exception):
    """An outage, as a process's error model would say."""


def outage(exc: Exception) -> Outage | None:
    return Outage(reason="DOWN", text="it is down") if isinstance(exc, Down) else None


async def test_a_loop_logs_an_outage_and_a_bug_apart_counts_both_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[str] = []
    supervisor = Supervisor(outage=outage, backoff=Backoff(0.01, 0.02), on_failure=counted.append)
    outcomes: list[Exception] = [Down(), ValueError("bug")]
    done = asyncio.Event()

    async def round_() -> float:
        if outcomes:
            raise outcomes.pop(0)
        done.set()
        return 60.0

    with caplog.at_level(logging.WARNING, logger="checkout_common.supervisor"):
        task = supervisor.spawn("demo", round_)
        await asyncio.wait_for(done.wait(), 5)
        await supervisor.stop()
    assert task.cancelled()
    assert supervisor.failures["demo"] == 2
    assert counted == ["demo", "demo"]
    warning, error = caplog.records
    assert (warning.levelno, warning.exc_info, warning.getMessage()) == (
        logging.WARNING,
        None,
        "demo: it is down",
    )
    assert warning.__dict__["reason"] == "DOWN"
    assert error.levelno == logging.ERROR
    assert error.exc_info is not None


async def test_a_loop_ends_after_its_round_when_stopped_and_when_cancelled_through_a_library() -> (
    None
):
    supervisor = Supervisor(outage=outage)
    stop = asyncio.Event()

    async def stopping() -> float:
        stop.set()
        return 60.0  # the pause ends as soon as `stop` is set

    await asyncio.wait_for(supervisor.run("stopping", stopping, stop), 5)

    busy = asyncio.Event()

    async def swallowing() -> float:
        busy.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("operation cancelled") from None  # as PyMongo's async API does
        return 0.0

    task = supervisor.spawn("swallowing", swallowing)
    await asyncio.wait_for(busy.wait(), 5)
    await asyncio.wait_for(supervisor.stop(), 5)
    assert task.cancelled()
    assert supervisor.failures["swallowing"] == 0  # a stop, not a failure


async def test_retry_until_retries_what_it_is_told_until_done_stopped_or_out_of_time() -> None:
    fast = Backoff(0.001, 0.002)
    attempts = 0

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise Down()

    retriable = lambda exc: isinstance(exc, Down)  # noqa: E731
    assert await retry_until(flaky, what="t", retry_if=retriable, timeout_s=None, backoff=fast)
    assert attempts == 3

    async def broken() -> None:
        raise ValueError("not an outage")

    with pytest.raises(ValueError, match="not an outage"):
        await retry_until(broken, what="t", retry_if=retriable, timeout_s=None, backoff=fast)

    async def down() -> None:
        raise Down()

    with pytest.raises(Down):
        await retry_until(down, what="t", retry_if=retriable, timeout_s=0.01, backoff=fast)

    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    stopped = retry_until(down, what="t", retry_if=retriable, timeout_s=None, stop=stop)
    assert await asyncio.wait_for(stopped, 5) is False


async def test_wait_or_stop_ends_at_the_stop() -> None:
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(wait_or_stop(stop, 60.0), 1)
    await asyncio.wait_for(wait_or_stop(None, 0), 1)


# --- settings ---------------------------------------------------------------------------------


class DemoError(Exception):
    """A process's own ConfigError."""


class Demo(EnvSettings):
    config_error = DemoError

    demo_secure: Flag = False
    """DEMO_SECURE: a flag."""
    demo_password: Secret = "default-secret"
    """DEMO_PASSWORD: a secret."""
    demo_count: int = 3
    """DEMO_COUNT: a number."""
    demo_addr: Annotated[str, EnvRule.KEEP_EMPTY] = "0.0.0.0:1"
    """DEMO_ADDR: set but empty is a value."""
    demo_host: str = "host"
    """DEMO_HOST: blank keeps the default."""
    demo_names: Names = frozenset({"a"})
    """DEMO_NAMES: comma-separated."""

    @model_validator(mode="after")
    def _check(self) -> Demo:
        if self.demo_count > 100:
            raise ValueError("DEMO_COUNT must be at most 100")
        return self


FLAGS = {"1": True, "true": True, " Yes ": True, "ON": True}
FLAGS |= {"0": False, "false": False, "No": False, " off": False}


@pytest.mark.parametrize("value", list(FLAGS))
def test_a_flag_is_one_of_eight_words(value: str) -> None:
    assert Demo.from_env({"DEMO_SECURE": value}).demo_secure is FLAGS[value]


@pytest.mark.parametrize("value", ["maybe", "2", "tru", "-1", "enabled"])
def test_any_other_flag_value_is_refused_not_taken_for_false(value: str) -> None:
    with pytest.raises(DemoError, match=r"DEMO_SECURE must be true or false, got"):
        Demo.from_env({"DEMO_SECURE": value})


def test_blank_keeps_the_default_unless_empty_is_a_value() -> None:
    settings = Demo.from_env({"DEMO_HOST": "  ", "DEMO_COUNT": "", "DEMO_ADDR": ""})
    assert (settings.demo_host, settings.demo_count, settings.demo_addr) == ("host", 3, "")
    assert Demo.from_env({}).demo_addr == "0.0.0.0:1"
    assert Demo.from_env({"DEMO_HOST": " other "}).demo_host == "other"
    assert Demo.from_env({"DEMO_NAMES": "x, y,,"}).demo_names == frozenset({"x", "y"})


def test_a_secret_file_wins_and_a_secret_is_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(" from-file\n")
    env = {"DEMO_PASSWORD": "plain", "DEMO_PASSWORD_FILE": str(path)}
    settings = Demo.from_env(env)
    assert settings.demo_password == "from-file"
    assert "from-file" not in repr(settings)
    with pytest.raises(DemoError, match="DEMO_PASSWORD_FILE: cannot read"):
        Demo.from_env({"DEMO_PASSWORD_FILE": str(tmp_path / "missing")})
    # Not a secret: a _FILE variable means nothing.
    assert Demo.from_env({"DEMO_HOST_FILE": str(path)}).demo_host == "host"


def test_every_problem_is_told_at_once_each_naming_its_variable() -> None:
    with pytest.raises(DemoError) as caught:
        Demo.from_env({"DEMO_COUNT": "many", "DEMO_SECURE": "maybe"})
    assert str(caught.value) == (
        "DEMO_SECURE must be true or false, got 'maybe'; DEMO_COUNT must be an integer, got 'many'"
    )
    with pytest.raises(DemoError, match=r"^DEMO_COUNT must be at most 100$"):
        Demo.from_env({"DEMO_COUNT": "101"})
    with pytest.raises(DemoError, match="DEMO_COUNT"):
        Demo().replace(demo_count=101)


def test_settings_built_in_code_never_read_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEMO_COUNT", "7")
    assert Demo().demo_count == 3
    assert Demo.from_env().demo_count == 7


def test_the_default_error_is_a_value_error() -> None:
    class Plain(EnvSettings):
        plain_on: Flag = False
        """PLAIN_ON: a flag."""

    with pytest.raises(ConfigError, match="PLAIN_ON") as caught:
        Plain.from_env({"PLAIN_ON": "maybe"})
    assert isinstance(caught.value, ValueError)


# --- the result key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "taken"),
    [
        (DEFAULT_TEMPLATE, True),
        ("results/{event_id}.json", True),
        ("a/b/{video_id}-{event_id}.json", True),
        ("{video_id}.json", False),  # no folder: the server's cleanup and listing need one
        ("output/result.json", False),  # no id: every result at one key
        ("output/{video_id}/{nope}.json", False),
        ("output/{video_id}.json{", False),
        ("output/{0}.json", False),
    ],
)
def test_a_result_key_template_needs_a_folder_and_an_id(template: str, taken: bool) -> None:
    if taken:
        assert check_template(template) == template
    else:
        with pytest.raises(ValueError, match="RESULT_KEY_TEMPLATE"):
            check_template(template)


def test_the_key_and_its_folder() -> None:
    template = "results/{video_id}/{event_id}.json"
    assert result_key(template, video_id="v", event_id="e") == "results/v/e.json"
    assert result_prefix(template) == "results/"
    assert result_prefix(DEFAULT_TEMPLATE) == "output/"
    assert result_prefix("a/b/{video_id}.json") == "a/b/"
