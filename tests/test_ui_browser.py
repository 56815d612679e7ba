"""``swarmbus ui`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) over a finished run and a running one. It checks
what a person sees (status, steps, the send-back, the cost, the graph drawn) and that the
running run's page turns ``approved`` without a reload, and saves screenshots (to
``$SWARMBUS_SCREENSHOTS`` when set, else the test's tmp dir).

Skips, with the line to install the browser, where none is installed; with
``REQUIRE_BROWSER=1`` (``.ci/run``, which installs it) it fails instead."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from _ui_helpers import (
    TRACE_ID,
    agents,
    finish,
    served,
    waiting_at_review,
)

from swarmbus.agents import Swarm

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

INSTALL = "sudo apt-get install chromium chromium-driver"
T = TypeVar("T")


def _browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture
def driver() -> Iterator[Any]:
    found = _browser()
    if found is None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 and no chromium/chromedriver: {INSTALL}",
                        pytrace=False)
        pytest.skip(f"needs headless Chromium and its driver: {INSTALL}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1440,1000", "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("SWARMBUS_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


async def in_browser(fn: Callable[[], T]) -> T:
    """Selenium blocks: its calls run in a worker thread, off the event loop the swarm
    and the page's server run on."""
    return await anyio.to_thread.run_sync(fn)


def wait_for(browser: Any, what: Callable[[Any], Any], timeout_s: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout_s, poll_frequency=0.1).until(what)


def all_seen(browser: Any, css: str) -> list[str]:
    """The visible text of every element ``css`` selects, read in one script (a live
    update may replace an element between two reads)."""
    found = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText.trim());",
        css)
    return [str(t) for t in found]


def seen(browser: Any, css: str) -> str:
    found = all_seen(browser, css)
    return found[0] if found else ""


def graph_drawn(browser: Any) -> bool:
    """Mermaid replaced the graph's text with an SVG naming the workflow's steps (read in
    one script: a live update may replace the element between two reads)."""
    words = browser.execute_script(
        "const svg = document.querySelector('#graph svg');"
        "return svg ? svg.textContent : '';")
    return all(s in str(words) for s in ("design", "implement", "review"))


async def test_a_person_sees_a_finished_and_a_running_run(
    nats_url: str, namespace: str, driver: Any, shots: Path
) -> None:
    await finish(nats_url, namespace, "done1")
    async with waiting_at_review(nats_url, namespace, "live1"), \
            served(nats_url, namespace) as url:
        # the list: both runs, how each stands
        def listed() -> dict[str, list[str]]:
            driver.get(url)
            wait_for(driver, lambda d: len(all_seen(d, "#runs tr[data-run]")) == 2)
            driver.save_screenshot(str(shots / "ui-runs.png"))
            return {run: all_seen(driver, f'tr[data-run="{run}"] td')
                    for run in ("done1", "live1")}

        rows = await in_browser(listed)
        assert rows["done1"][:3] == ["done1", "code-review", "approved"]
        assert rows["done1"][6] == "$0.6250"
        assert rows["live1"][:4] == ["live1", "code-review", "waiting",
                                     "review (no reviewer running)"]

        # the finished run: status, steps, the send-back, cost, trace id, the graph
        def finished() -> dict[str, Any]:
            driver.get(url + "runs/done1")
            wait_for(driver, graph_drawn)
            driver.save_screenshot(str(shots / "ui-run.png"))
            return {"status": seen(driver, "#run-status"),
                    "cost": seen(driver, "#run-cost"),
                    "trace": seen(driver, "#run-trace"),
                    "steps": all_seen(driver, ".entry .title"),
                    "back": all_seen(driver, ".entry.send-back .badge"),
                    "findings": all_seen(driver, ".entry.send-back .findings li")}

        done = await in_browser(finished)
        assert done["status"] == "approved" and done["cost"] == "$0.6250"
        assert done["trace"] == TRACE_ID
        assert done["steps"] == [
            "task submitted", "design -> implement", "implement -> review",
            "review -> implement", "implement -> review", "review -> result: approved"]
        assert done["back"] == ["sent back to implement"]
        assert done["findings"] == ["[critical] → coder · calc.py: add(2, 3) must be 5"]

        # the running run: waiting for a reviewer, then approved, with no reload
        def running() -> str:
            driver.get(url)  # the list in one tab, kept open
            wait_for(driver, lambda d: len(all_seen(d, "#runs tr[data-run]")) == 2)
            driver.execute_script("window.notReloaded = true")
            driver.switch_to.new_window("tab")
            driver.get(url + "runs/live1")
            wait_for(driver, graph_drawn)
            driver.execute_script("window.notReloaded = true")
            return seen(driver, "#run-status")

        assert await in_browser(running) == "waiting"
        assert "step now: review (waiting for reviewer)" in await in_browser(
            lambda: seen(driver, ".run-head"))
        async with Swarm(agents(roles=["reviewer"]), nats=nats_url, namespace=namespace,
                         grace_s=3):

            def turned_approved() -> dict[str, Any]:
                wait_for(driver, lambda d: seen(d, "#run-status") == "approved")
                wait_for(driver, graph_drawn)
                driver.save_screenshot(str(shots / "ui-live.png"))
                page = {"same page": driver.execute_script("return window.notReloaded"),
                        "steps": all_seen(driver, ".entry .title")}
                driver.switch_to.window(driver.window_handles[0])  # the list's tab
                wait_for(driver, lambda d: all_seen(
                    d, 'tr[data-run="live1"] td')[2:4] == ["approved", ""])
                page["list same page"] = driver.execute_script("return window.notReloaded")
                page["rows"] = all_seen(driver, "#runs tr[data-run] td.id")
                return page

            live = await in_browser(turned_approved)
    assert live["same page"] is True and live["list same page"] is True
    assert live["rows"] == ["live1", "done1"]  # replaced in place, not added
    assert live["steps"][-1] == "review -> result: approved"
    for name in ("ui-runs.png", "ui-run.png", "ui-live.png"):
        assert (shots / name).stat().st_size > 10_000, name
