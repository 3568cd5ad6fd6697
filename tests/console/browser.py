"""A real Chromium, Debian's, driven by Selenium against a real console: start it, sign in through
the real forms, run axe in the page, take screenshots, check the layout at a width.

Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver explicitly, so it never asks
Selenium Manager for a browser (and SE_OFFLINE keeps that manager off the network should it run).
axe-core comes pinned from tests/node/package-lock.json (`make test` runs npm ci there).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium.webdriver import Chrome, ChromeOptions
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests import tools
from tests.console.harness import PASSWORD, ConsoleWorld
from tests.paths import REPO_ROOT

CHROMIUM, CHROMEDRIVER = tools.BROWSER_BINARIES
AXE = REPO_ROOT / "tests" / "node" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS_ENV = "CLEANROOM_CONSOLE_SCREENSHOTS"  # e.g. docs/console: where the README's pictures come from
DESKTOP = (1280, 900)
TABLET = (820, 1180)
# What axe checks: WCAG 2.0, 2.1 and 2.2, levels A and AA; what fails a test: serious and critical
AXE_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa")
AXE_FAILING = ("serious", "critical")
SCREENSHOT_MAX_HEIGHT = 2400  # a long page (the audit log) is pictured to this height
WAIT_SECONDS = 60  # generous: the suite shares a small, busy machine


def start_chromium() -> Chrome:
    """A headless Chromium at the desktop size. Fails (never skips) when it is missing, unless the
    run opted out of the browser (CLEANROOM_TEST_WITHOUT=browser)."""
    tools.check_present("browser")
    os.environ.setdefault("SE_OFFLINE", "true")
    options = ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking",
                     "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=en-GB",
                     f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(argument)
    try:
        driver = Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except Exception as error:  # noqa: BLE001 - whatever keeps Chromium from starting is a missing tool
        tools.missing("browser", f"did not start ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
    driver.set_page_load_timeout(WAIT_SECONDS)
    return driver


class Browser:
    """One Chromium in front of one console, and the person currently signed in to it."""

    def __init__(self, driver: Chrome, world: ConsoleWorld) -> None:
        self.driver, self.world = driver, world
        self.base = f"http://127.0.0.1:{world.server.port}"

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return url.removeprefix(self.base)

    def sign_in(self, principal_id: str) -> None:
        """Through the real forms, typed as a person would (keys only): the one-time code, then a new password."""
        self.driver.delete_all_cookies()
        username, code = self.world.login_for(principal_id)
        self.open("/sign-in")
        self.find("#username").send_keys(username)
        self.find("input[name=method][value=code]").send_keys(Keys.SPACE)
        self.find("#secret").send_keys(code + Keys.ENTER)
        self.wait_for_path("/set-password")
        self.find("#new_password").send_keys(PASSWORD)
        self.find("#again").send_keys(PASSWORD + Keys.ENTER)
        self.wait_until(lambda _: not self.path.startswith("/set-password"))

    def find(self, css: str) -> WebElement:
        return WebDriverWait(self.driver, WAIT_SECONDS).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))

    def find_all(self, css: str) -> list[WebElement]:
        found: list[WebElement] = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found

    def button(self, words: str) -> WebElement:
        """The visible button whose text contains `words` (case-insensitive)."""
        for element in self.find_all("button, input[type=submit]"):
            text = element.text or element.get_attribute("value") or ""
            if words.lower() in text.lower() and element.is_displayed():
                return element
        raise AssertionError(f"no button saying {words!r} on {self.path}: {self.text()[:400]}")

    def click_and_wait(self, element: WebElement) -> None:
        old = self.driver.find_element(By.TAG_NAME, "html")
        element.click()
        WebDriverWait(self.driver, WAIT_SECONDS).until(expected_conditions.staleness_of(old))

    def wait_for_path(self, prefix: str) -> None:
        self.wait_until(lambda _: self.path.startswith(prefix))

    def wait_until(self, condition: Any) -> None:
        WebDriverWait(self.driver, WAIT_SECONDS).until(condition)

    def text(self) -> str:
        body: str = self.driver.find_element(By.TAG_NAME, "body").text
        return body

    def heading(self) -> str:
        return self.find("h1").text

    def resize(self, size: tuple[int, int]) -> None:
        self.driver.set_window_size(*size)

    def horizontal_overflow(self) -> int:
        """How many CSS pixels the page is wider than the window (0: no horizontal scroll)."""
        overflow: int = self.driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        return overflow


@contextmanager
def chromium() -> Iterator[Chrome]:
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def axe(driver: Chrome) -> list[dict[str, Any]]:
    """axe-core's serious and critical WCAG 2.x A/AA violations on the current page (axe injected
    from tests/node; a missing axe fails unless node was opted out)."""
    if not AXE.is_file():
        tools.missing("node", f"axe-core is not installed at {AXE.relative_to(REPO_ROOT)} (npm ci --prefix tests/node)")
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    driver.set_script_timeout(WAIT_SECONDS)
    results: list[dict[str, Any]] | dict[str, str] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}, resultTypes: ['violations']})"
        ".then(r => done(r.violations), e => done({error: String(e)}));", list(AXE_TAGS))
    assert isinstance(results, list), results  # axe itself failed
    return [v for v in results if v.get("impact") in AXE_FAILING]


def describe(violations: list[dict[str, Any]]) -> str:
    """One line per violation and the first few offending elements: what a failing test prints."""
    lines = []
    for violation in violations:
        targets = [", ".join(node.get("target", [])) for node in violation.get("nodes", [])[:3]]
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at {targets}")
    return "\n".join(lines)


def screenshot_folder(fallback: Path) -> Path:
    """docs/console (or wherever CLEANROOM_CONSOLE_SCREENSHOTS says), else the test's own tmp folder."""
    chosen = os.environ.get(SCREENSHOTS_ENV)
    folder = Path(chosen) if chosen else fallback
    if not folder.is_absolute():
        folder = REPO_ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver: Chrome, folder: Path, name: str) -> Path:
    """The whole page (not just the window, up to SCREENSHOT_MAX_HEIGHT) as folder/name.png."""
    assert re.fullmatch(r"[a-z0-9-]+", name), name
    width = driver.execute_script("return document.documentElement.clientWidth")
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    before = driver.get_window_size()
    driver.set_window_size(before["width"], min(SCREENSHOT_MAX_HEIGHT, max(before["height"], int(height) + (before["height"] - driver.execute_script("return window.innerHeight")))))
    try:
        path = folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), path
    finally:
        driver.set_window_size(before["width"], before["height"])
    assert width  # the page rendered
    return path
