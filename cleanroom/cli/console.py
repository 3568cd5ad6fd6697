"""`cleanroom console`: serve the web console for privacy officers, hospitals and auditors.

The console is a client of the gRPC server named by the global --server (and --tls-ca): it keeps
no data of its own. People sign in with a console login (`cleanroom admin console-login`); each
sees and does exactly what the API allows their principal. Sessions live in this process's memory
and end after --idle-minutes without use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cleanroom.console.config import ConsoleConfig

EPILOG = ("Production: serve HTTPS (--tls-cert/--tls-key) or terminate TLS at the ingress; put single sign-on (OIDC) "
          "in front with an authenticating proxy as README.md describes. Cookies are Secure, HttpOnly and SameSite=Strict.")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    console = sub.add_parser("console", help="serve the web console (officers, hospitals, auditors)", description=__doc__,
                             epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    console.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT", help="where the console listens (default %(default)s)")
    console.add_argument("--idle-minutes", type=float, default=30.0, help="sign a session out after this long unused (default %(default)s)")
    console.add_argument("--tls-cert", type=Path, help="PEM certificate to serve HTTPS directly")
    console.add_argument("--tls-key", type=Path, help="PEM key for --tls-cert")
    console.add_argument("--trust-root", type=Path,
                         help="the pinned trust root (PEM) release pages check receipts against; "
                              "without it they use the server's own root and say it is not pinned")
    console.add_argument("--insecure-cookies", action="store_true",
                         help="drop the cookies' Secure flag (only behind a proxy that cannot do TLS; never on a network)")
    console.set_defaults(handler=run)


def config_of(args: argparse.Namespace) -> ConsoleConfig:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit("--listen must be HOST:PORT, e.g. 127.0.0.1:8443")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    return ConsoleConfig(api=args.server, host=host, port=int(port), idle_minutes=args.idle_minutes,
                         secure_cookies=not args.insecure_cookies, tls_cert=args.tls_cert, tls_key=args.tls_key,
                         api_tls_ca=args.tls_ca, trust_root=args.trust_root)


def run(args: argparse.Namespace) -> int:
    from cleanroom.console.serve import ConsoleServer  # the web stack loads only for this command

    server = ConsoleServer(config_of(args))
    print(f"console for {args.server} on {server.scheme}://{args.listen} (Ctrl-C stops it)", flush=True)
    server.run()
    return 0
