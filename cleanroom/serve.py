"""Server-side entry points used by the CLI: run the server, bootstrap the first admin."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping

from cleanroom import logs
from cleanroom.app import build_app, recover
from cleanroom.config import build_config
from cleanroom.domain.identity import Role
from cleanroom.server import selfcheck
from cleanroom.storage import repos

SWITCH_INTERVAL_SECONDS = 0.001


def run_server(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from cleanroom.api.server import serve_forever

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
    app = build_app(config)
    recover(app)
    serve_forever(app)
    return 0


def bootstrap_admin(args: argparse.Namespace, env: Mapping[str, str], display_name: str) -> str:
    """Creates an admin straight in the database: whoever can read the state directory is trusted."""
    app = build_app(build_config(args, env))
    try:
        with app.db.transaction() as session:
            existing = repos.count_admins(session)
        if existing:
            logging.getLogger(__name__).warning("%d admin(s) already exist; creating another", existing)
        _principal, token = app.principals.create(display_name, Role.ADMIN, actor="local-bootstrap")
        return token
    finally:
        app.close()
