"""The web console in a real browser: Debian's Chromium driven by Playwright, against the whole
stack (Envoy serving the console and the API, the server, the relay, the runner). Each test
saves a screenshot of the pages it saw in build/screenshots (docs/console.md shows them).

Playwright is given Chromium's path and never downloads a browser (`make install` installs
Debian's chromium with apt)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    FilePayload,
    Page,
    Route,
    async_playwright,
    expect,
)

from checkout_runner.sample import Truth, write_sample
from checkout_server.auth.keys import entry, new_key
from checkout_server.config import ServerSettings
from devstack._install import CHROMIUM
from devstack._paths import REPO_ROOT
from devstack._stack import LocalStack, StackPorts
from tests.helpers import has_cyrillic, mp4_bytes
from tests.integration.apps import started_app
from tests.integration.envoy_front import async_envoy_front

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SCREENSHOTS = REPO_ROOT / "build" / "screenshots"
# What the machine's closed network needs (docs/testing.md): no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MiB = 1024 * 1024
PART = 8 * MiB  # the server's default UPLOAD_PART_BYTES: what one PATCH of the console sends
PATIENCE_MS = 120_000  # the runner's time for the clip, on a loaded machine


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """`make run`'s stack, with the detection runner, on free ports."""
    stack = LocalStack(
        tmp_path_factory.mktemp("console-stack"),
        StackPorts.free(),
        app_env={"LOG_FORMAT": "json"},
        with_runner=True,
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    """The demo clip (`make sample`): 6 s, two faces from second 1 to 5."""
    path = tmp_path_factory.mktemp("clips") / "sample.mp4"
    return path, write_sample(path, seconds=6.0)


@pytest.fixture
def junk(tmp_path: Path) -> Path:
    """20 MiB that start like an MP4 and are noise after: three parts, and a video the runner
    cannot decode."""
    path = tmp_path / "junk.mp4"
    path.write_bytes(mp4_bytes(20 * MiB + 123))
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: `make install` installs it (root, apt)"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


WRITES = "**/api/uploads/*?offset=*"  # the console's PATCHes
OFFSET = re.compile(r"[?&]offset=(\d+)")


def offsets(urls: list[str]) -> list[int]:
    """The `offset` of each write's URL (PATCH /api/uploads/{id}?offset=N)."""
    return [int(match[1]) for url in urls if (match := OFFSET.search(url))]


class Held:
    """Holds the console's writes from `PART` on (a slow link, paused at a part boundary),
    until released; records every write's offset."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.holding = asyncio.Event()
        self.released = asyncio.Event()

    async def route(self, route: Route) -> None:
        (offset,) = offsets([route.request.url])
        self.offsets.append(offset)
        if offset >= PART and not self.released.is_set():
            self.holding.set()
            await self.released.wait()
            with contextlib.suppress(Exception):  # the page may have given it up meanwhile
                await route.abort()
            return
        await route.continue_()


async def upload_held_at_a_part(stack: LocalStack, page: Page, path: Path) -> Held:
    """The upload page with `path` chosen, its writes held from the second part on; returns
    once the first part is stored and the second is held."""
    held = Held()
    await page.route(WRITES, held.route)
    await page.goto(f"http://127.0.0.1:{stack.ports.rest}/#/upload")
    await page.locator("#file").set_input_files(path)
    await asyncio.wait_for(held.holding.wait(), 30)
    await expect(page.locator("#uploads li")).to_have_attribute("data-persisted", str(PART))
    return held


def record_writes(page: Page) -> list[str]:
    """The URLs of the page's writes (PATCH) from now on."""
    writes: list[str] = []
    page.on("request", lambda r: writes.append(r.url) if r.method == "PATCH" else None)
    return writes


async def test_a_dropped_clip_goes_live_from_new_to_ready_and_its_faces_are_boxed(
    console_stack: LocalStack, browser: Browser, clip: tuple[Path, Truth]
) -> None:
    path, truth = clip
    url = f"http://127.0.0.1:{console_stack.ports.rest}/"
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    operations, uploads = await context.new_page(), await context.new_page()
    await operations.goto(url)
    await expect(operations.locator("#live")).to_have_attribute("data-state", "live")

    await uploads.goto(url + "#/upload")
    await uploads.locator("#file").set_input_files(path)
    done = uploads.locator("#uploads li[data-state=done]")
    await expect(done).to_have_count(1, timeout=30_000)
    event_id = await done.locator("a.event").inner_text()
    await screenshot(uploads, "upload")

    # The table that was open before the upload shows it, then sees it become ready.
    row = operations.locator(f"tr[data-event='{event_id}']")
    await expect(row).to_have_count(1, timeout=30_000)
    await expect(row.locator(".chip")).to_have_attribute(
        "data-status", "ready", timeout=PATIENCE_MS
    )
    await screenshot(operations, "operations")

    await uploads.locator("a.event").click()
    await expect(uploads.locator("#event-status .chip")).to_have_attribute(
        "data-status", "ready", timeout=PATIENCE_MS
    )
    await expect(uploads.locator("#detections li")).not_to_have_count(0)
    await expect(uploads.locator("#result-json")).to_have_attribute("href", re.compile("^blob:"))
    video = uploads.locator("#video")
    await expect(video).to_have_js_property("readyState", 4, timeout=30_000)

    # A sampled frame with both faces: the overlay draws its two boxes where the runner found
    # them (the runner's own tests check those against the clip's truth).
    result = await uploads.evaluate(
        "async id => (await (await fetch('/api/result_video/' + id)).json()).prediction",
        event_id,
    )
    frame = next(f for f in result["frames"] if len(f["detections"]) == 2)
    assert len(truth.frames[frame["index"]]) == 2, frame
    await video.evaluate("(v, t) => { v.currentTime = t; }", frame["timestamp_s"])
    overlay = uploads.locator("#overlay")
    await expect(overlay).to_have_attribute("data-frame", str(frame["index"]), timeout=10_000)
    await expect(overlay).to_have_attribute("data-boxes", "2")
    for detection in frame["detections"]:
        box = detection["box"]
        # The box's left edge, half-way down: the line is a few pixels wide, and red.
        x, y = round(box["x1"]), round((box["y1"] + box["y2"]) / 2)
        pixel = await overlay.evaluate(
            "(c, [x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data)",
            [x, y],
        )
        red, green, _, alpha = pixel
        assert alpha > 200, f"no box line at ({x}, {y}) in frame {frame['index']}: {pixel}"
        assert red > 200, pixel
        assert green < 100, pixel
    await expect(video).to_have_js_property("seeking", False)
    await screenshot(uploads, "event")
    await context.close()


async def test_an_upload_paused_at_a_part_resumes_from_the_stored_offset_and_a_failure_shows(
    console_stack: LocalStack, page: Page, junk: Path
) -> None:
    held = await upload_held_at_a_part(console_stack, page, junk)
    item = page.locator("#uploads li")

    await item.locator("button.pause").click()
    await expect(item).to_have_attribute("data-state", "paused")
    await screenshot(page, "upload-paused")
    held.released.set()
    await page.unroute(WRITES)
    writes = record_writes(page)
    await item.locator("button.resume").click()
    await expect(item).to_have_attribute("data-state", "done", timeout=30_000)
    # Going on from the stored part: nothing before it sent again.
    assert offsets(writes) == [PART, 2 * PART], writes

    # The runner cannot decode noise: the page says why, with the reason code.
    await item.locator("a.event").click()
    await expect(page.locator("#event-status .chip")).to_have_attribute(
        "data-status", "failed", timeout=PATIENCE_MS
    )
    await expect(page.locator("#failure-reason")).to_have_text("VIDEO_UNDECODABLE")
    description = await page.locator("#failure-description").inner_text()
    assert has_cyrillic(description), description
    await expect(page.locator("#failure-message")).to_contain_text("InvalidDataError")
    await screenshot(page, "event-failed")


async def test_an_upload_cut_by_the_network_is_retried_from_the_stored_offset(
    console_stack: LocalStack, page: Page, junk: Path
) -> None:
    held = await upload_held_at_a_part(console_stack, page, junk)
    item = page.locator("#uploads li")

    held.released.set()  # the held write fails as a cut connection does
    await expect(item).to_have_attribute("data-state", "failed")
    await expect(item.locator(".state")).to_contain_text("UNAVAILABLE")
    await page.unroute(WRITES)
    writes = record_writes(page)
    await item.locator("button.retry").click()
    await expect(item).to_have_attribute("data-state", "done", timeout=30_000)
    assert offsets(writes) == [PART, 2 * PART], writes


async def test_a_reload_mid_upload_goes_on_from_the_persisted_offset(
    console_stack: LocalStack, page: Page, junk: Path
) -> None:
    held = await upload_held_at_a_part(console_stack, page, junk)

    await page.reload()
    held.released.set()
    await page.unroute(WRITES)
    unfinished = page.locator("#unfinished li")
    await expect(unfinished).to_have_attribute("data-name", junk.name)
    await expect(unfinished).to_contain_text("8.0 MiB")
    await screenshot(page, "upload-unfinished")

    writes = record_writes(page)
    await page.locator("#file").set_input_files(junk)
    item = page.locator("#uploads li")
    await expect(item).to_have_attribute("data-resumed", "true")
    await expect(item).to_have_attribute("data-state", "done", timeout=30_000)
    assert offsets(writes) == [PART, 2 * PART], writes
    await expect(page.locator("#unfinished li")).to_have_count(0)


async def test_with_authentication_on_a_missing_key_is_refused_and_a_reader_cannot_upload(
    settings: ServerSettings, browser: Browser, tmp_path: Path
) -> None:
    reader = new_key()
    keys = tmp_path / "api-keys.toml"
    keys.write_text(entry("dashboard", "reader", reader))
    async with (
        started_app(settings, auth_enabled=True, auth_keys_file=str(keys)) as app,
        async_envoy_front(tmp_path, [app.port]) as front,
    ):
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(front.url + "/")
        await expect(page.locator("#error")).to_contain_text("UNAUTHENTICATED")
        await screenshot(page, "auth-missing-key")

        await page.locator("#api-key").fill(reader)
        await page.locator("#key-form button").click()
        await expect(page.locator("#summary")).to_contain_text("страница 1")
        await expect(page.locator("#error")).to_be_empty()

        await page.goto(front.url + "/#/upload")
        await page.locator("#file").set_input_files(
            files=FilePayload(name="a.mp4", mimeType="video/mp4", buffer=mp4_bytes(1024))
        )
        await expect(page.locator("#uploads li .state")).to_contain_text("PERMISSION_DENIED")
        await context.close()
