"""Prometheus metrics on an injected registry, served on their own port.

Label values come from small fixed sets (method names, outcome enums, dataset ids): never a
manufacturer identity, never a data value, nothing that depends on the data. Budget gauges are
read from the ledger at scrape time, so they are right after a restart too.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cleanroom import __version__
from cleanroom.sandbox import backends

log = logging.getLogger(__name__)

RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
# Training jobs run for minutes to hours: the default buckets stop at 10 s.
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
JOB_KINDS = ("training", "evaluation", "statistics")
JOB_OUTCOMES = ("released", "failed", "cancelled", "rejected")
AUTH_FAILURES = ("unknown", "revoked", "expired")
NOTIFY_CHANNELS = ("email", "webhook")
SANDBOX_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class BudgetSnapshot:
    dataset_id: str
    cap_epsilon: float
    spent_epsilon: float
    reserved_epsilon: float


class Metrics:
    """Every metric the service exports. Tests and dashboards read the names from here."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Gauge("cleanroom_build_info", "Build of the running service (always 1).", ["version", "python"], registry=r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.rpc_requests = Counter("cleanroom_rpc_requests_total", "RPCs handled, by method and gRPC status code.", ["method", "code"], registry=r)
        self.rpc_duration = Histogram("cleanroom_rpc_duration_seconds", "RPC handling time.", ["method"], buckets=RPC_BUCKETS, registry=r)
        self.upload_bytes = Counter("cleanroom_upload_bytes_total", "Dataset bytes received by finished uploads.", registry=r)
        self.upload_rows = Counter("cleanroom_upload_rows_total", "Dataset rows stored by uploads.", registry=r)
        self.uploads = Counter("cleanroom_uploads_total", "Dataset uploads by outcome.", ["outcome"], registry=r)
        self.jobs_submitted = Counter("cleanroom_jobs_submitted_total", "DP jobs submitted.", ["kind"], registry=r)
        self.jobs_finished = Counter("cleanroom_jobs_finished_total", "DP jobs finished, by outcome.", ["kind", "outcome"], registry=r)
        self.job_duration = Histogram("cleanroom_job_duration_seconds", "DP job wall time.", ["kind"], buckets=JOB_BUCKETS, registry=r)
        self.jobs_queued = Gauge("cleanroom_jobs_queued", "DP jobs waiting for a worker.", ["kind"], registry=r)
        self.jobs_running = Gauge("cleanroom_jobs_running", "DP jobs running now.", ["kind"], registry=r)
        self.intake_submissions = Counter("cleanroom_intake_submissions_total", "Model packages submitted, by outcome.", ["outcome"], registry=r)
        self.intake_rejections = Counter("cleanroom_intake_rejections_total", "Model packages rejected, by reason code.", ["reason"], registry=r)
        self.sandbox_starts = Counter("cleanroom_sandbox_starts_total", "Sandboxes started.", ["backend", "purpose"], registry=r)
        self.sandbox_failures = Counter("cleanroom_sandbox_failures_total", "Sandboxes that could not start.", ["backend", "purpose"], registry=r)
        self.sandbox_kills = Counter("cleanroom_sandbox_kills_total", "Sandboxes killed at a limit.", ["backend", "limit"], registry=r)
        self.sandbox_duration = Histogram("cleanroom_sandbox_duration_seconds", "Sandbox wall time.", ["purpose"], buckets=SANDBOX_BUCKETS, registry=r)
        self.stats_queries = Counter("cleanroom_stats_queries_total", "DP statistics queries, by kind and outcome.", ["kind", "outcome"], registry=r)
        self.broker_decisions = Counter("cleanroom_key_broker_decisions_total", "Key-broker decisions, by decision and reason.", ["decision", "reason"], registry=r)
        self.reservations = Counter("cleanroom_ledger_reservations_total", "Budget reservations, by outcome.", ["outcome"], registry=r)
        # Never a token, a principal or an address in a label: only why the token failed.
        self.auth_failures = Counter("cleanroom_auth_failures_total", "Calls whose bearer token failed, by why (unknown, revoked, expired).",
                                     ["reason"], registry=r)
        self.auth_rate_limited = Counter("cleanroom_auth_rate_limited_total",
                                         "Calls refused because their source address failed authentication too often.", registry=r)
        # Officer notifications (cleanroom/notifications): by channel, email or webhook.
        self.notifications_sent = Counter("cleanroom_notifications_sent_total", "Officer notifications delivered, by channel.",
                                          ["channel"], registry=r)
        self.notifications_failed = Counter("cleanroom_notifications_failed_total",
                                            "Officer notification deliveries that failed (each retried try counts), by channel.",
                                            ["channel"], registry=r)
        self.notifications_abandoned = Counter("cleanroom_notifications_abandoned_total",
                                               "Officer notifications given up after their last retry, by channel.", ["channel"], registry=r)
        self._start_known_series()

    def _start_known_series(self) -> None:
        """Known label sets start at 0, so the first event shows as an increase, not a new series."""
        for kind in JOB_KINDS:
            self.jobs_queued.labels(kind).set(0)
            self.jobs_running.labels(kind).set(0)
            self.jobs_submitted.labels(kind)
            for outcome in JOB_OUTCOMES:
                self.jobs_finished.labels(kind, outcome)
        for outcome in ("stored", "rejected"):
            self.uploads.labels(outcome)
        for outcome in ("reserved", "exhausted"):
            self.reservations.labels(outcome)
        for reason in AUTH_FAILURES:
            self.auth_failures.labels(reason)
        for outcome in ("accepted", "rejected"):
            self.intake_submissions.labels(outcome)
        for channel in NOTIFY_CHANNELS:
            for counter in (self.notifications_sent, self.notifications_failed, self.notifications_abandoned):
                counter.labels(channel)
        for backend in backends.names():  # the registry's (sandbox/backends.py)
            for limit in ("wall_time", "memory", "output_too_large"):
                self.sandbox_kills.labels(backend, limit)

    def watch_budgets(self, snapshot: Callable[[], list[BudgetSnapshot]]) -> None:
        self.registry.register(_BudgetCollector(snapshot))

    def serve(self, address: str) -> int:
        """Starts the /metrics HTTP endpoint on host:port (port 0 picks one); returns the port."""
        host, _, port = address.rpartition(":")
        try:
            server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        except (OSError, ValueError) as error:
            raise SystemExit(f"cannot serve metrics on {address}: {error}") from None
        bound = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        self._http = server
        return bound

    def stop(self) -> None:
        if getattr(self, "_http", None) is not None:
            self._http.shutdown()
            self._http.server_close()


class _BudgetCollector(Collector):
    """ε cap, spent and remaining per dataset (the dataset-wide budget), read at scrape time."""

    def __init__(self, snapshot: Callable[[], list[BudgetSnapshot]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cap = GaugeMetricFamily("cleanroom_privacy_epsilon_cap", "Dataset-wide ε cap.", labels=["dataset"])
        spent = GaugeMetricFamily("cleanroom_privacy_epsilon_spent", "ε committed on the dataset-wide budget.", labels=["dataset"])
        remaining = GaugeMetricFamily("cleanroom_privacy_epsilon_remaining", "ε neither spent nor reserved.", labels=["dataset"])
        try:
            rows = self._snapshot()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database blinked
            log.warning("budget gauges unavailable for this scrape", exc_info=True)
            rows = []
        for row in rows:
            cap.add_metric([row.dataset_id], row.cap_epsilon)
            spent.add_metric([row.dataset_id], row.spent_epsilon)
            remaining.add_metric([row.dataset_id], row.cap_epsilon - row.spent_epsilon - row.reserved_epsilon)
        yield from (cap, spent, remaining)

    def describe(self) -> list[GaugeMetricFamily]:
        return []
