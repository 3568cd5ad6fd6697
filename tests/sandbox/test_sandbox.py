"""Both sandbox backends, end to end: real Python runs inside and every limit is exercised for real.

A backend that does not work on this host fails the test (tests/tools.py: unless the run opted out).
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cleanroom.sandbox import Outcome, SandboxPolicy, SandboxRequest, backends, layout
from cleanroom.sandbox.layout import code_dir
from tests import tools

PY = layout.python()  # the venv's interpreter, at layout.py's neutral path inside
POLICY = SandboxPolicy(wall_seconds=60, memory_bytes=2 << 30, max_output_bytes=64 << 20)
BACKENDS = {b.name: b.local for b in backends.BACKENDS if b.local is not None}  # every backend on this host


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def launcher(request: pytest.FixtureRequest):
    backend = BACKENDS[request.param](backends.Placement())
    ok, why = backend.available()
    if not ok:
        tools.missing(request.param, f"does not work here: {why}")
    return backend


def run_py(launcher, tmp_path: Path, code: str, policy: SandboxPolicy = POLICY, **request_kw):
    out = tmp_path / f"out-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    request = SandboxRequest(argv=(PY, "-c", textwrap.dedent(code)), output_dir=out, **request_kw)
    return launcher.run(request, policy), out


def test_hello_world(launcher, tmp_path):
    result, out = run_py(launcher, tmp_path, """
        import sys
        print("hello from", sys.prefix)
        open("/out/result.txt", "w").write("written inside")
    """)
    assert result.outcome is Outcome.EXITED and result.exit_code == 0 and result.ok, result.stderr
    assert result.stdout.startswith(b"hello from ")
    assert result.backend == launcher.name and result.backend_reason
    assert (out / "result.txt").read_text() == "written inside"


def test_bare_python3_and_stdin(launcher, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    request = SandboxRequest(argv=("python3", "-c", "import sys; print(sys.stdin.read().upper())"), stdin=b"abc", output_dir=out)
    result = launcher.run(request, POLICY)
    assert result.ok and result.stdout == b"ABC\n", result.stderr


def test_concurrent_runs_do_not_collide(launcher, tmp_path):
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda i: run_py(launcher, tmp_path, f"open('/out/n', 'w').write('{i}')"), range(4)))
    assert all(result.ok for result, _ in runs)
    assert [(out / "n").read_text() for _, out in runs] == ["0", "1", "2", "3"]


def test_torch_imports_inside(launcher, tmp_path, record_property):
    started = time.monotonic()
    result, _ = run_py(launcher, tmp_path, """
        import time
        t = time.monotonic()
        import torch
        print(float(torch.ones(2).sum()), round(time.monotonic() - t, 2))
    """, SandboxPolicy(wall_seconds=120))
    assert result.ok, result.stderr
    total, in_sandbox = time.monotonic() - started, float(result.stdout.split()[1])
    record_property("torch_import_seconds", in_sandbox)
    print(f"{launcher.name}: import torch {in_sandbox:.2f}s inside, {total:.2f}s end to end")
    assert result.stdout.split()[0] == b"2.0"


def test_environment_is_only_what_the_request_names(launcher, tmp_path, monkeypatch):
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("CLEANROOM_CANARY", canary)
    result, _ = run_py(launcher, tmp_path, """
        import json, os
        def environ(path):
            try:
                return open(path, "rb").read().decode()
            except OSError as exc:
                return "unreadable: %s" % exc.errno
        print(json.dumps({"os": dict(os.environ), "self": environ("/proc/self/environ"), "pid1": environ("/proc/1/environ")}))
    """, env={"JOB": "42"})
    assert result.ok, result.stderr
    assert canary.encode() not in result.stdout + result.stderr
    seen = json.loads(result.stdout)
    expected = set(layout.sandbox_env(SandboxRequest(argv=("true",), env={"JOB": "42"})))
    if launcher.name == "bwrap":  # no procfs there (bwrap.py: its mountinfo would name host paths)
        assert seen["self"] == "unreadable: 2"
    else:
        real = dict(item.split("=", 1) for item in seen["self"].split("\0") if item)
        assert set(real) == expected and real["JOB"] == "42" and real["HOME"] == "/tmp"
    # Python itself adds LC_CTYPE to os.environ when coercing the C locale (PEP 538).
    assert set(seen["os"]) - {"LC_CTYPE"} == expected
    assert "CLEANROOM" not in seen["pid1"]


def test_state_directory_and_home_are_invisible(launcher, tmp_path):
    canary = f"kek-canary-{uuid.uuid4().hex}"
    repo = code_dir().parent
    states = [tmp_path / "state", Path("/root") / f".cleanroom-canary-{uuid.uuid4().hex[:8]}",
              repo / f".state-canary-{uuid.uuid4().hex[:8]}"]
    try:
        for state in states:
            (state / "keys").mkdir(parents=True)
            (state / "keys" / "kek.json").write_text(json.dumps({"kek": canary}))
        guarded = type(launcher)(deny=[s for s in states])
        result, _ = run_py(guarded, tmp_path, f"""
            import os
            for state in {[str(s) for s in states]!r} + ["/root/.bash_history", "{repo}/.git", "{repo}/README.md"]:
                try:
                    print(state, "LEAKED", open(state + "/keys/kek.json").read() if "canary" in state else os.listdir(state))
                except OSError as exc:
                    print(state, "hidden", exc.errno)
            for top in ("/root", "/work", "/tmp", "/etc", "/out", "/home", "/var"):
                for folder, dirs, files in os.walk(top):
                    dirs[:] = [d for d in dirs if d not in (".venv", "versions")]  # the interpreter: big, read-only
                    for name in files:
                        if name == "kek.json":
                            print("FOUND", os.path.join(folder, name))
            print("repo holds", sorted(os.listdir("{repo}")) if os.path.exists("{repo}") else "nothing")
        """)
        assert result.ok, result.stderr
        assert canary.encode() not in result.stdout + result.stderr
        assert b"LEAKED" not in result.stdout and b"FOUND" not in result.stdout
        assert b"repo holds nothing" in result.stdout  # the code is at layout.NEUTRAL_SRC
        # Asking for the state directory as an input, or as the output, is refused outright.
        refused, _ = run_py(guarded, tmp_path, "pass", inputs={"state": states[0]})
        assert refused.outcome is Outcome.LAUNCH_FAILED
    finally:
        for state in states:
            (state / "keys" / "kek.json").unlink(missing_ok=True)
            (state / "keys").rmdir()
            state.rmdir()


def test_no_network(launcher, tmp_path):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    abstract = f"\0cleanroom-test-{uuid.uuid4().hex}"
    unix_server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_server.bind(abstract)
    unix_server.listen()
    try:
        result, _ = run_py(launcher, tmp_path, f"""
            import socket
            for family, address in ((socket.AF_INET, ("127.0.0.1", {server.getsockname()[1]})),
                                    (socket.AF_INET, ("1.1.1.1", 53)), (socket.AF_UNIX, {abstract!r})):
                s = socket.socket(family, socket.SOCK_STREAM)
                s.settimeout(3)
                try:
                    s.connect(address)
                    print("CONNECTED", address)
                except OSError as exc:
                    print("refused", type(exc).__name__)
        """)
    finally:
        server.close()
        unix_server.close()
    assert result.ok, result.stderr
    assert b"CONNECTED" not in result.stdout and result.stdout.count(b"refused") == 3


def test_only_out_and_tmp_are_writable(launcher, tmp_path):
    targets = ["/usr/x", "/x", f"{code_dir()}/x", f"{sys.prefix}/x", "/etc/passwd", "/in/x", "/proc/x",
               f"{layout.NEUTRAL_SRC}/cleanroom/x", f"{layout.NEUTRAL_VENV}/x", f"{layout.NEUTRAL_VENV}/lib/x", f"{layout.NEUTRAL_PYTHON}/x"]
    if launcher.name == "bwrap":  # gVisor's /dev is its own in-memory tmpfs and stays writable
        targets.append("/dev/x")
    result, out = run_py(launcher, tmp_path, f"""
        for path in {targets!r}:
            try:
                open(path, "a").write("x")
                print("WROTE", path)
            except OSError as exc:
                print("denied", path, exc.errno)
        open("/out/ok", "w").write("ok")
        open("/tmp/ok", "w").write("ok")
        open("/dev/shm/ok", "w").write("ok")
        open("/dev/null", "w").write("ok")
    """)
    assert result.ok, result.stderr
    assert b"WROTE" not in result.stdout and result.stdout.count(b"denied") == len(targets)
    assert (out / "ok").read_text() == "ok"
    assert not (code_dir() / "x").exists() and not Path(sys.prefix, "x").exists()


def test_output_keeps_only_plain_files(launcher, tmp_path):
    result, out = run_py(launcher, tmp_path, """
        import os
        os.makedirs("/out/sub")
        open("/out/sub/data", "w").write("ok")
        os.chmod("/out/sub/data", 0o4755)
        os.symlink("/etc/passwd", "/out/link")
        os.mkfifo("/out/fifo")
    """)
    assert result.ok, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["sub"]
    assert (out / "sub" / "data").stat().st_mode & 0o7777 == 0o755


def test_markers_never_reach_the_host(launcher, tmp_path):
    marker = f"{uuid.uuid4().hex}-escaped"
    host_paths = [Path("/tmp") / marker, code_dir().parent / marker, code_dir() / marker, Path("/root") / marker]
    result, _ = run_py(launcher, tmp_path, f"""
        for path in {[str(p) for p in host_paths]!r}:
            try:
                open(path, "w").write("escaped")
            except OSError:
                pass
    """)
    assert result.ok, result.stderr
    assert not any(p.exists() for p in host_paths)


def test_fork_bomb_is_contained(launcher, tmp_path):
    policy = SandboxPolicy(max_processes=32, wall_seconds=20)
    counted, _ = run_py(launcher, tmp_path, """
        import os, time
        n = 0
        while n < 500:
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
        print(n)
    """, policy)
    assert counted.outcome is Outcome.EXITED, counted.stderr
    assert int(counted.stdout) < 32  # the parent counts too
    started = time.monotonic()
    bomb, _ = run_py(launcher, tmp_path, """
        import os, time
        for _ in range(12):  # 4096 processes if nothing stopped it
            try:
                os.fork()
            except OSError:
                pass
        time.sleep(60)
    """, SandboxPolicy(max_processes=32, wall_seconds=3))
    assert bomb.outcome is Outcome.WALL_TIME and time.monotonic() - started < 13
    assert subprocess.run(["true"], timeout=10).returncode == 0  # the host still forks


def test_memory_bomb(launcher, tmp_path):
    result, _ = run_py(launcher, tmp_path, """
        chunks = []
        while True:
            chunks.append(bytearray(10 << 30))
    """, SandboxPolicy(memory_bytes=1 << 30, wall_seconds=30))
    assert result.outcome is Outcome.MEMORY, (result.exit_code, result.stderr)


def test_memory_spread_over_processes_is_oom_killed(launcher, tmp_path):
    """Each child stays under RLIMIT_AS; together they pass the cgroup limit and the kernel kills."""
    result, _ = run_py(launcher, tmp_path, """
        import os, time
        kids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                block = bytearray(600 << 20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(2)
                os._exit(0)
            kids.append(pid)
        print([os.waitpid(k, 0)[1] for k in kids])
    """, SandboxPolicy(memory_bytes=1 << 30, tmpfs_bytes=64 << 20, wall_seconds=30))
    assert result.outcome is Outcome.MEMORY, (result.exit_code, result.stdout, result.stderr)


def test_infinite_loop_hits_the_wall_clock(launcher, tmp_path):
    started = time.monotonic()
    result, _ = run_py(launcher, tmp_path, "while True: pass", SandboxPolicy(wall_seconds=3))
    assert result.outcome is Outcome.WALL_TIME
    assert time.monotonic() - started < 3 + 5


def test_dangerous_syscalls_are_refused(launcher, tmp_path):
    result, _ = run_py(launcher, tmp_path, """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def errno_of(rc):
            return ctypes.get_errno() if rc == -1 else 0
        print(errno_of(libc.unshare(0x10000000)), errno_of(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
              errno_of(libc.ptrace(0, 0, None, None)), errno_of(libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)))
    """)
    assert result.ok, result.stderr
    unshare, mount, ptrace, clone_userns = (int(v) for v in result.stdout.split())
    assert mount == errno.EPERM
    if launcher.name == "bwrap":  # the seccomp filter; gVisor is its own kernel and has none of ours
        assert (unshare, ptrace, clone_userns) == (errno.EPERM, errno.EPERM, errno.EPERM)


def test_output_too_large(launcher, tmp_path):
    policy = SandboxPolicy(max_output_bytes=1 << 20, wall_seconds=30)
    after, _ = run_py(launcher, tmp_path, "open('/out/big', 'wb').write(b'x' * (3 << 20))", policy)
    assert after.outcome is Outcome.OUTPUT_TOO_LARGE
    started = time.monotonic()  # a writer that never stops is killed while running, not at the wall
    during, _ = run_py(launcher, tmp_path, """
        import itertools
        for i in itertools.count():
            open("/out/f%d" % i, "wb").write(b"x" * (256 << 10))
    """, policy)
    assert during.outcome is Outcome.OUTPUT_TOO_LARGE and time.monotonic() - started < 15


def test_inputs_are_readable_not_writable(launcher, tmp_path):
    data, package = tmp_path / "data.csv", tmp_path / "package"
    data.write_text("a,b\n1,2\n")
    package.mkdir()
    (package / "model.py").write_text("X = 1\n")
    result, _ = run_py(launcher, tmp_path, """
        print(open("/in/data").read().splitlines()[1], open("/in/package/model.py").read().strip())
        for path in ("/in/data", "/in/package/model.py", "/in/package/new.py"):
            try:
                open(path, "a").write("x")
                print("WROTE", path)
            except OSError:
                print("read-only")
    """, inputs={"data": data, "package": package})
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == [b"1,2 X = 1", b"read-only", b"read-only", b"read-only"]
    assert data.read_text() == "a,b\n1,2\n" and sorted(p.name for p in package.iterdir()) == ["model.py"]


def test_logs_are_truncated(launcher, tmp_path):
    result, _ = run_py(launcher, tmp_path, "import sys; sys.stdout.write('x' * 300000); sys.stderr.write('y' * 300000)",
                       SandboxPolicy(max_log_bytes=1000))
    assert result.ok and result.stdout == b"x" * 1000 and result.stderr == b"y" * 1000


def test_file_size_limit(launcher, tmp_path):
    result, _ = run_py(launcher, tmp_path, """
        import errno
        for path in ("/out/f", "/tmp/f"):
            try:
                open(path, "wb").write(b"x" * (2 << 20))
            except OSError as exc:
                print(exc.errno == errno.EFBIG)
    """, SandboxPolicy(max_file_bytes=1 << 20))
    assert result.ok and result.stdout == b"True\nTrue\n", result.stderr


def test_cpu_limit(launcher, tmp_path):
    result, _ = run_py(launcher, tmp_path, "while True: pass", SandboxPolicy(cpu_seconds=1, wall_seconds=4))
    if launcher.name == "bwrap":
        assert result.outcome is Outcome.EXITED and result.exit_code == 128 + 24  # SIGXCPU
    else:  # gVisor (ptrace platform, this release) does not enforce RLIMIT_CPU: the wall clock does
        assert result.outcome is Outcome.WALL_TIME or result.exit_code == 128 + 24


def test_launch_failure_is_reported(launcher, tmp_path):
    broken = type(launcher)(binary="/nonexistent/sandbox-binary")
    result, _ = run_py(broken, tmp_path, "pass")
    assert result.outcome is Outcome.LAUNCH_FAILED and not result.ok
    assert broken.available()[0] is False
    bad_name, _ = run_py(launcher, tmp_path, "pass", inputs={"../etc": tmp_path})
    assert bad_name.outcome is Outcome.LAUNCH_FAILED
