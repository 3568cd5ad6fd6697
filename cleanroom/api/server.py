"""The gRPC server: guard interceptor, servicers, health checking, reflection, TLS, graceful stop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cleanroom.api import reflection
from cleanroom.api.audit_export_servicers import SigningAuditServicer
from cleanroom.api.dataset_servicers import DatasetServicer
from cleanroom.api.guard import GuardInterceptor
from cleanroom.api.identity_servicers import AdminServicer, IdentityServicer
from cleanroom.api.job_servicers import JobServicer
from cleanroom.api.model_servicers import AttestationServicer, ModelServicer
from cleanroom.api.privacy_servicers import PrivacyServicer
from cleanroom.api.release_servicers import ReleaseServicer
from cleanroom.api.stats_servicers import StatsServicer
from cleanroom.attestation.audit_export import AuditExportSigner
from cleanroom.identity.ratelimit import FailureLimiter
from cleanroom.server.config import ServerConfig
from cleanroom.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    releases_pb2,
    releases_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
)

if TYPE_CHECKING:
    from cleanroom.server.app import App  # built by the composition root (server/app.py), which never imports api

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 << 20  # upload chunks are at most 1 MiB; leave room for framing

SERVICE_NAMES = (
    identity_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
    datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
    privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name,
    privacy_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["AttestationService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    stats_pb2.DESCRIPTOR.services_by_name["StatsService"].full_name,
    releases_pb2.DESCRIPTOR.services_by_name["ReleaseService"].full_name,
)


class Server:
    def __init__(self, app: App, *, auth_clock: Callable[[], float] = time.monotonic) -> None:
        """`auth_clock`: the failed-authentication limiter's clock (tests move it instead of sleeping)."""
        self.app = app
        config = app.config
        self.auth_limiter = FailureLimiter(config.auth_failure_limit, config.auth_failure_window, clock=auth_clock)
        guard = GuardInterceptor(app.principals.check, self._observe, limiter=self.auth_limiter, on_auth_failure=self._auth_failed)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
            interceptors=[guard],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._health = health.HealthServicer()
        self.metrics_port = 0
        self._register(app)
        self.port = self._bind(config)

    def _observe(self, method: str, code: str, seconds: float) -> None:
        self.app.metrics.rpc_requests.labels(method, code).inc()
        self.app.metrics.rpc_duration.labels(method).observe(seconds)

    def _auth_failed(self, reason: str) -> None:
        if reason == "rate_limited":
            self.app.metrics.auth_rate_limited.inc()
        else:
            self.app.metrics.auth_failures.labels(reason).inc()

    def _register(self, app: App) -> None:
        identity_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(app.principals, app.keys, app.idempotency), self._grpc
        )
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(app.principals), self._grpc)
        datasets_pb2_grpc.add_DatasetServiceServicer_to_server(
            DatasetServicer(app.datasets, app.idempotency), self._grpc
        )
        privacy_pb2_grpc.add_PrivacyServiceServicer_to_server(
            PrivacyServicer(app.budgets, app.approvals, app.ledger, app.idempotency), self._grpc
        )
        privacy_pb2_grpc.add_AuditServiceServicer_to_server(
            SigningAuditServicer(app.audit, AuditExportSigner(app.db, app.audit, app.enclave.attestation_key)), self._grpc
        )
        models_pb2_grpc.add_AttestationServiceServicer_to_server(AttestationServicer(app.enclave), self._grpc)
        models_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(app.models, app.idempotency), self._grpc)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(app.jobs, app.idempotency), self._grpc)
        stats_pb2_grpc.add_StatsServiceServicer_to_server(StatsServicer(app.stats, app.answered_idempotency), self._grpc)
        releases_pb2_grpc.add_ReleaseServiceServicer_to_server(ReleaseServicer(app.releases), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable((*SERVICE_NAMES, health.SERVICE_NAME), self._grpc)  # v1 and v1alpha

    def _bind(self, config: ServerConfig) -> int:
        if not config.tls_enabled:
            return self._grpc.add_insecure_port(config.listen)
        credentials = grpc.ssl_server_credentials(
            [(_read(config.tls_key), _read(config.tls_cert))],
            root_certificates=_read(config.tls_client_ca) if config.tls_client_ca else None,
            require_client_auth=config.tls_client_ca is not None,
        )
        return self._grpc.add_secure_port(config.listen, credentials)

    def start(self) -> None:
        self._grpc.start()
        if self.app.config.metrics_listen:
            self.metrics_port = self.app.metrics.serve(self.app.config.metrics_listen)
        self.app.runner.start()
        if self.app.notifier is not None:
            self.app.notifier.start()  # nothing when no notification channel is configured
        for name in ("", *SERVICE_NAMES):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.app.config.port_file:  # renamed into place: a reader never sees it half written
            partial = self.app.config.port_file.with_name(self.app.config.port_file.name + ".partial")
            partial.write_text(str(self.port))
            os.replace(partial, self.app.config.port_file)
        log.info("serving on port %d (%s)", self.port, "TLS" if self.app.config.tls_enabled else "plaintext")

    def stop(self, grace: float | None = None) -> None:
        """Stops taking calls, lets in-flight ones finish within the grace period, then closes."""
        self._health.enter_graceful_shutdown()
        self._grpc.stop(self.app.config.grace_seconds if grace is None else grace).wait()
        self.app.runner.stop()
        self.app.metrics.stop()
        self.app.close()

    def wait(self) -> None:
        self._grpc.wait_for_termination()


def _read(path: Path | None) -> bytes:
    assert path is not None
    return path.read_bytes()


def serve_forever(app: App) -> None:
    server = Server(app)
    server.start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping gracefully", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    server.stop()
