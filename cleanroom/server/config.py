"""Server configuration: typed, frozen, built once at start-up from flags and the environment.

Every setting has a flag and an environment variable; a flag wins over the variable, the variable
over the default. Nothing reads the environment anywhere else.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cleanroom.notifications import settings as notifications
from cleanroom.sandbox import backends
from cleanroom.storage.db import default_url


@dataclass(frozen=True)
class Setting:
    flag: str
    env: str
    default: str | None
    help: str


SETTINGS = (
    Setting("--state-dir", "CLEANROOM_STATE_DIR", ".state", "directory for the database, keys and encrypted blobs"),
    Setting("--listen", "CLEANROOM_LISTEN", "127.0.0.1:50051", "gRPC listen address (port 0 picks a free port)"),
    Setting("--database-url", "CLEANROOM_DATABASE_URL", None, "SQLAlchemy URL; default: SQLite file in the state directory"),
    Setting("--tls-cert", "CLEANROOM_TLS_CERT", None, "PEM server certificate; enables TLS"),
    Setting("--tls-key", "CLEANROOM_TLS_KEY", None, "PEM private key of the server certificate"),
    Setting("--tls-client-ca", "CLEANROOM_TLS_CLIENT_CA", None, "PEM CA bundle; enables mutual TLS (client certificates required)"),
    Setting("--max-upload-bytes", "CLEANROOM_MAX_UPLOAD_BYTES", str(4 << 30), "largest dataset file accepted, in bytes"),
    Setting("--k-anonymity", "CLEANROOM_K_ANONYMITY", "5", "default k for the k-anonymity check at intake"),
    Setting("--workers", "CLEANROOM_WORKERS", "16", "gRPC handler threads"),
    Setting("--grace-seconds", "CLEANROOM_GRACE_SECONDS", "10", "how long SIGTERM waits for in-flight calls"),
    Setting("--metrics-listen", "CLEANROOM_METRICS_LISTEN", "127.0.0.1:9464", "Prometheus /metrics address; empty disables"),
    Setting("--sandbox", "CLEANROOM_SANDBOX", "auto",
            f"sandbox backend: auto (gVisor for model intake, else bubblewrap; bubblewrap for data work), "
            f"{', '.join(f'{b.name} ({b.title})' for b in backends.BACKENDS)}"),
    Setting("--worker-image", "CLEANROOM_WORKER_IMAGE", "cleanroom:0.1.0", "container image of worker Jobs (kubernetes backend)"),
    Setting("--worker-namespace", "CLEANROOM_WORKER_NAMESPACE", "cleanroom-workers", "namespace of worker Jobs (kubernetes backend)"),
    Setting("--job-volume", "CLEANROOM_JOB_VOLUME", "/var/lib/cleanroom/jobs", "shared volume for worker inputs and outputs (kubernetes backend)"),
    Setting("--work-dir", "CLEANROOM_WORK_DIR", None, "scratch space for intake (never inside the state directory, which no sandbox may see); default: the system temp dir"),
    Setting("--job-workers", "CLEANROOM_JOB_WORKERS", "1", "DP jobs run at the same time"),
    Setting("--job-timeout", "CLEANROOM_JOB_TIMEOUT", "3600", "wall-clock limit of one DP job, in seconds"),
    Setting("--stats-idle", "CLEANROOM_STATS_IDLE", "300",
            "seconds a warm statistics worker keeps a dataset decrypted after its last query"),
    Setting("--stats-allowance", "CLEANROOM_STATS_ALLOWANCE", "64",
            "auto-approved statistics queries one ledger reservation may pay for (at most a quarter of the dataset budget left)"),
    Setting("--stats-allowance-idle", "CLEANROOM_STATS_ALLOWANCE_IDLE", "2",
            "seconds after its last query that a statistics allowance is closed and its unused budget refunded"),
    Setting("--lease-seconds", "CLEANROOM_LEASE_SECONDS", "30",
            "server lease expiry: a replica silent this long is dead and its work in flight (jobs, reservations, uploads) is recovered by a peer; heartbeat every sixth of it"),
    Setting("--auth-failure-limit", "CLEANROOM_AUTH_FAILURE_LIMIT", "50",
            "failed authentications from one source address within the window after which every call from it is refused "
            "(RESOURCE_EXHAUSTED with RetryInfo) until the window passes; counted per replica"),
    Setting("--auth-failure-window", "CLEANROOM_AUTH_FAILURE_WINDOW", "60", "seconds the failed-authentication limit counts over"),
    *(Setting(*flag) for flag in notifications.FLAGS),  # officer notifications: email, webhook (notifications/settings.py)
    Setting("--port-file", "CLEANROOM_PORT_FILE", None, "write the bound port here once serving (for scripts)"),
    Setting("--log-level", "CLEANROOM_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
)


@dataclass(frozen=True)
class ServerConfig:
    state_dir: Path
    listen: str = "127.0.0.1:50051"
    database_url: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_upload_bytes: int = 4 << 30
    k_anonymity: int = 5
    workers: int = 16
    grace_seconds: float = 10.0
    port_file: Path | None = None
    log_level: str = "INFO"
    metrics_listen: str = ""
    sandbox: str = "auto"
    worker_image: str = "cleanroom:0.1.0"
    worker_namespace: str = "cleanroom-workers"
    job_volume: Path = Path("/var/lib/cleanroom/jobs")
    work_dir: Path = Path(tempfile.gettempdir()) / "cleanroom-work"
    job_workers: int = 1
    job_timeout: float = 3600.0
    stats_idle: float = 300.0
    stats_allowance: int = 64
    stats_allowance_idle: float = 2.0
    lease_seconds: float = 30.0
    auth_failure_limit: int = 50
    auth_failure_window: float = 60.0
    notify: notifications.NotifySettings = notifications.NotifySettings()  # off: no SMTP host, no webhook URL

    @property
    def blob_dir(self) -> Path:
        return self.state_dir / "blobs"

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for setting in SETTINGS:
        default = f" (default: {setting.default})" if setting.default else ""
        parser.add_argument(setting.flag, default=None, help=f"{setting.help}; env {setting.env}{default}")


def _raw(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for setting in SETTINGS:
        key = setting.flag.lstrip("-").replace("-", "_")
        flag_value = getattr(args, key, None)
        values[key] = flag_value if flag_value is not None else env.get(setting.env, setting.default)
    return values


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser().resolve() if value else None


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> ServerConfig:
    raw = _raw(args, env)
    state_dir = Path(raw["state_dir"] or ".state").expanduser().resolve()
    config = ServerConfig(
        state_dir=state_dir,
        listen=raw["listen"] or "127.0.0.1:50051",
        database_url=raw["database_url"] or default_url(state_dir),
        tls_cert=_path(raw["tls_cert"]),
        tls_key=_path(raw["tls_key"]),
        tls_client_ca=_path(raw["tls_client_ca"]),
        max_upload_bytes=int(raw["max_upload_bytes"] or 0),
        k_anonymity=int(raw["k_anonymity"] or 5),
        workers=int(raw["workers"] or 16),
        grace_seconds=float(raw["grace_seconds"] or 10),
        port_file=_path(raw["port_file"]),
        log_level=(raw["log_level"] or "INFO").upper(),
        metrics_listen=raw["metrics_listen"] or "",
        sandbox=raw["sandbox"] or "auto",
        worker_image=raw["worker_image"] or "cleanroom:0.1.0",
        worker_namespace=raw["worker_namespace"] or "cleanroom-workers",
        job_volume=Path(raw["job_volume"] or "/var/lib/cleanroom/jobs"),
        work_dir=_path(raw["work_dir"]) or Path(tempfile.gettempdir()) / "cleanroom-work",
        job_workers=int(raw["job_workers"] or 1),
        job_timeout=float(raw["job_timeout"] or 3600),
        stats_idle=float(raw["stats_idle"] or 300),
        stats_allowance=int(raw["stats_allowance"] or 64),
        stats_allowance_idle=float(raw["stats_allowance_idle"] or 2),
        lease_seconds=float(raw["lease_seconds"] or 30),
        auth_failure_limit=int(raw["auth_failure_limit"] or 50),
        auth_failure_window=float(raw["auth_failure_window"] or 60),
        notify=notifications.from_raw(raw, env),
    )
    _check(config)
    return config


def _check(config: ServerConfig) -> None:
    if (config.tls_cert is None) != (config.tls_key is None):
        raise SystemExit("--tls-cert and --tls-key go together")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise SystemExit("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if config.max_upload_bytes <= 0 or config.workers <= 0:
        raise SystemExit("--max-upload-bytes and --workers must be positive")
    if config.work_dir.is_relative_to(config.state_dir):
        raise SystemExit("--work-dir must not be inside the state directory: sandboxes may never see it")
    if config.sandbox not in backends.preferences():
        *first, last = backends.preferences()
        raise SystemExit(f"--sandbox must be {', '.join(first)} or {last}")
    if not 1 <= config.stats_allowance <= 10_000 or not 0 < config.stats_allowance_idle <= 3600:
        raise SystemExit("--stats-allowance must be 1 to 10000 queries and --stats-allowance-idle 0 to 3600 seconds")
    if not 0.5 <= config.lease_seconds <= 3600:
        raise SystemExit("--lease-seconds must be 0.5 to 3600 seconds")
    if not 1 <= config.auth_failure_limit <= 1_000_000 or not 0 < config.auth_failure_window <= 86_400:
        raise SystemExit("--auth-failure-limit must be 1 to 1000000 and --auth-failure-window 0 to 86400 seconds")
    if not 2 <= config.k_anonymity <= 1000:
        raise SystemExit("--k-anonymity must be between 2 and 1000")
