"""The console application: every area's routes, the static files, the security headers."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cleanroom.console.config import ConsoleConfig
from cleanroom.console.pages import AREAS
from cleanroom.console.security import SecurityHeaders
from cleanroom.console.sessions import SessionStore
from cleanroom.console.web import Console, render

STATIC = Path(__file__).parent / "static"


def build_console(config: ConsoleConfig) -> tuple[Starlette, Console]:
    console = Console(config, SessionStore(config.idle_minutes * 60))
    routes: list[Route | Mount] = [route for area in AREAS for route in area.routes(console)]
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))

    async def not_found(request: Request, exc: Exception) -> Response:
        return render(console, request, "error.html", status=404, title="Not found",
                      message="There is nothing here, or it is not visible to you.")

    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)], exception_handlers={404: not_found})
    return app, console
