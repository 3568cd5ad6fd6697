"""(placeholder: built in this session)"""

from __future__ import annotations

from starlette.routing import Route

from cleanroom.console.web import Console


def routes(console: Console) -> list[Route]:
    return []
