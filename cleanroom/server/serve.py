"""Server-side entry points used by the CLI: run the server, bootstrap the first admin, collect unreferenced blobs.

Nothing in cleanroom.server imports cleanroom.api (the servicers import the server's types and
helpers, never the other way round), so `run_server` is handed the function that serves gRPC
(cleanroom.api.server.serve_forever) by its caller, the CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping

from cleanroom.domain.identity import Role
from cleanroom.observability import logs
from cleanroom.server import selfcheck
from cleanroom.server.app import App, build_app, recover
from cleanroom.server.config import build_config
from cleanroom.storage import principal_repo
from cleanroom.storage.identity import StorageIdentityError

SWITCH_INTERVAL_SECONDS = 0.001


def run_server(args: argparse.Namespace, env: Mapping[str, str], *, serve: Callable[[App], None]) -> int:
    """`cleanroom serve`: configuration, self-check, app, recovery, then `serve(app)` until a signal."""
    config = build_config(args, env)
    logs.configure(config.log_level)
    try:
        passed = selfcheck.require_passing(selfcheck.run_checks(config))
    except selfcheck.StartupRefused as refused:
        print(f"cleanroom serve: {refused}", file=sys.stderr)
        return 2
    for check in passed:
        logging.getLogger(__name__).info("self-check %s: %s: %s", check.status, check.name, check.detail)
    # Many short calls share one interpreter: a thread whose I/O finished should get the GIL back
    # within a millisecond, not after the default 5 ms of another thread's Python.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        app = build_app(config)
    except StorageIdentityError as refused:  # the self-check passed, but a peer or operator changed the pair since
        print(f"cleanroom serve: refusing to start: storage identity: {refused}", file=sys.stderr)
        return 2
    recover(app)
    serve(app)
    return 0


def bootstrap_admin(args: argparse.Namespace, env: Mapping[str, str], display_name: str) -> str:
    """Creates an admin straight in the database: whoever can read the state directory is trusted."""
    app = build_app(build_config(args, env))
    try:
        with app.db.transaction() as session:
            existing = principal_repo.count_admins(session)
        if existing:
            logging.getLogger(__name__).warning("%d admin(s) already exist; creating another", existing)
        _principal, token = app.principals.create(display_name, Role.ADMIN, actor="local-bootstrap")
        return token
    finally:
        app.close()


def collect_garbage(args: argparse.Namespace, env: Mapping[str, str], *, delete: bool, min_age_s: float) -> int:
    """`cleanroom admin gc`: lists (and with `delete`, removes) blobs no row references, after the
    storage identity check; refuses without touching anything when that check fails."""
    from cleanroom.storage import gc, identity
    from cleanroom.storage.db import Database, migrate

    config = build_config(args, env)
    logs.configure(config.log_level)
    try:
        identity.check(config.database_url, config.blob_dir)  # before anything creates a database
        db = Database(config.database_url)
        try:
            migrate(db.engine)
            pair = identity.ensure(db, config.blob_dir)
            report = gc.collect(db, config.blob_dir, pair, delete=delete, min_age_s=min_age_s)
        finally:
            db.dispose()
    except StorageIdentityError as refused:
        print(f"cleanroom admin gc: refusing: storage identity: {refused}", file=sys.stderr)
        return 2
    for blob_id, size in report.unreferenced:
        print(f"{'removed' if blob_id in report.removed else 'unreferenced'}  {blob_id}  {size} bytes")
    for blob_id in report.too_recent:
        print(f"skipped (younger than {min_age_s:g} s)  {blob_id}")
    total = sum(size for _, size in report.unreferenced)
    verb = "removed" if delete else "would remove (re-run with --yes)"
    print(f"{len(report.unreferenced)} unreferenced blobs, {total} bytes: {verb}; "
          f"{report.referenced} referenced blobs kept", file=sys.stderr)
    return 0
