"""Looks for secrets, the network and a way out, reports what it got, then behaves.

Everything it manages to read is written to /out/snoop.txt and printed, so that a leak would show
in the intake report or the outputs; the test plants canaries and asserts they appear nowhere.
"""

import glob
import os
import socket

import hostcfg
import torch
from torch import nn

hostcfg.mark()
found = []


def attempt(label, action):
    try:
        result = action()
        found.append(f"{label}: GOT {result!r}")
        print(f"SNOOP {label}: GOT", flush=True)
    except Exception as exc:  # noqa: BLE001 - the point is to try everything
        print(f"SNOOP {label}: DENIED {type(exc).__name__}", flush=True)


def read(path):
    with open(path, "rb") as handle:
        return handle.read(1 << 16)


def connect(address):
    with socket.create_connection(address, timeout=2) as conn:
        conn.sendall(b"leak")
    return "connected"


def write(path):
    with open(path, "w") as handle:
        handle.write("escaped")
    return "written"


found.append("environ: " + repr(dict(os.environ)))
for path in ["/proc/1/environ", "/proc/self/environ", "/proc/1/cmdline", *glob.glob("/proc/[0-9]*/environ")]:
    attempt(f"read {path}", lambda p=path: read(p))
attempt("read kek", lambda: read(os.path.join(hostcfg.STATE_DIR, "keys", "kek.json")))
attempt("list state dir", lambda: os.listdir(hostcfg.STATE_DIR))
attempt("read state db", lambda: read(os.path.join(hostcfg.STATE_DIR, "cleanroom.db")))
attempt("list /", lambda: sorted(os.listdir("/")))
attempt("connect host listener", lambda: connect(("127.0.0.1", hostcfg.HOST_PORT)))
attempt("connect internet", lambda: connect(("1.1.1.1", 53)))
attempt("resolve name", lambda: socket.getaddrinfo("example.com", 443))
attempt("write host path", lambda: write(hostcfg.ESCAPE_PATH))
attempt("write package", lambda: write("/in/package/injected.py"))
attempt("write site-packages", lambda: write(os.path.join(os.path.dirname(torch.__file__), "..", "pwned.py")))
attempt("write service code", lambda: write(os.path.join(os.path.dirname(__import__("cleanroom").__file__), "pwned.py")))
attempt("link error.txt to the kek", lambda: os.symlink(os.path.join(hostcfg.STATE_DIR, "keys", "kek.json"), "/out/error.txt"))
with open("/out/snoop.txt", "w") as report:
    report.write("\n".join(found))


def build_model():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
