"""Running the console: uvicorn on the configured address, and a sweep that ends idle sessions."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import uvicorn
from starlette.concurrency import run_in_threadpool

from cleanroom.console.app import build_console
from cleanroom.console.config import ConsoleConfig
from cleanroom.console.web import Console, end_session_token

SWEEP_SECONDS = 60.0


class ConsoleServer:
    """The console in a uvicorn server; `start()` in a thread (tests, the demo) or `run()` in the foreground."""

    def __init__(self, config: ConsoleConfig) -> None:
        self.app, self.console = build_console(config)
        self.app.router.lifespan_context = self._lifespan
        ssl = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)} if config.tls_cert and config.tls_key else {}
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=config.host, port=config.port, log_level="warning",
                                                     access_log=False, proxy_headers=False, server_header=False, **ssl))  # type: ignore[arg-type]
        self._thread: threading.Thread | None = None
        self.scheme = "https" if ssl else "http"

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: object) -> AsyncIterator[None]:
        sweep = asyncio.create_task(_sweep(self.console))
        try:
            yield
        finally:
            sweep.cancel()

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.console.config.host}:{self.port}"

    def run(self) -> None:
        self._server.run()

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._server.run, name="console", daemon=True)
        self._thread.start()
        started = threading.Event()
        for _ in range(int(timeout / 0.05)):
            if self._server.started:
                started.set()
                break
            if not self._thread.is_alive():
                break
            started.wait(0.05)
        if not started.is_set():
            raise RuntimeError("the console did not start (is its port free?)")

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


async def _sweep(console: Console) -> None:
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        for session in console.sessions.expired():
            await run_in_threadpool(end_session_token, console, session)
