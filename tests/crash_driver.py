"""A server process that reserves budget and then waits to be killed (used by tests/api/test_privacy_api.py).

Until training jobs exist, this drives the reservations from inside a real server process with
the same wiring and ledger code that jobs use: one spend whose data was decrypted, one that never
was. The test SIGKILLs this process between reserve and commit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cleanroom.api.server import Server
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.server.app import build_app
from cleanroom.server.config import build_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--manufacturer", required=True)
    args = parser.parse_args()
    config = build_config(argparse.Namespace(state_dir=args.state_dir, listen="127.0.0.1:0", metrics_listen=""), {})
    app = build_app(config)
    server = Server(app)
    server.start()
    request = SpendRequest(args.dataset, args.manufacturer, "training", "jobs/crash", Privacy.cost(1.5, 1e-7))
    decrypted = app.ledger.reserve(request, actor_id=args.manufacturer)
    app.ledger.mark_decrypted(decrypted.id)
    untouched = app.ledger.reserve(request, actor_id=args.manufacturer)
    Path(args.state_dir, "crash-ready").write_text(f"{decrypted.id} {untouched.id}")
    print("READY", flush=True)
    time.sleep(120)
    sys.exit(1)


if __name__ == "__main__":
    main()
