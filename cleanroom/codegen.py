"""Generates the Python stubs for proto/cleanroom/v1 into cleanroom/v1.

The stubs are not committed: `make` regenerates them whenever a .proto changes, so they cannot
drift from the protos. `python -m cleanroom.codegen --check` compares fresh output with the tree.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "cleanroom" / "v1").glob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    bin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "cleanroom" / "v1"
        stale = [
            f.name
            for f in sorted(fresh.iterdir())
            if not (ROOT / "cleanroom" / "v1" / f.name).exists()
            or not filecmp.cmp(f, ROOT / "cleanroom" / "v1" / f.name, shallow=False)
        ]
    if stale:
        print("stubs differ from the protos: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the generated stubs are stale")
    if parser.parse_args().check:
        return check()
    generate(ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
