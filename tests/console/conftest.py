from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.console.harness import ConsoleWorld


@pytest.fixture
def console(running) -> Iterator[ConsoleWorld]:
    world = ConsoleWorld(running)
    yield world
    world.stop()
