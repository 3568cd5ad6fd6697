"""The console's settings: where the API is, where to listen, how long an idle session lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConsoleConfig:
    api: str = "127.0.0.1:50051"        # the gRPC server (host:port)
    host: str = "127.0.0.1"
    port: int = 8443                     # 0: any free port (tests)
    idle_minutes: float = 30.0           # a session unused this long is signed out
    # Secure cookies are only sent over HTTPS; browsers treat http://127.0.0.1 and localhost as
    # secure, so the default works locally too. Off only behind a proxy that cannot do TLS.
    secure_cookies: bool = True
    tls_cert: Path | None = None         # serve HTTPS directly (else terminate TLS at the ingress)
    tls_key: Path | None = None
    api_tls_ca: str | None = None        # the API's CA when it serves TLS
    trust_root: Path | None = None       # the pinned root for receipt checks (`cleanroom trust pin`)
