from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver import Chrome

from tests.console import browser
from tests.console.harness import ConsoleWorld
from tests.console.hospital_world import build


@pytest.fixture
def console(running) -> Iterator[ConsoleWorld]:
    world = ConsoleWorld(running)
    yield world
    world.stop()


# --- the browser tests' Chromium (tests/console/browser.py): one per module, its start-up is slow


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chrome]:
    with browser.chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this module's screenshots go: docs/console with CLEANROOM_CONSOLE_SCREENSHOTS=docs/console."""
    return browser.screenshot_folder(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture
def hospitals(running, tmp_path):
    """Two hospitals on one server (tests/console/hospital_world.py): North shares a dataset."""
    world = build(running, tmp_path)
    yield world
    world.close()
