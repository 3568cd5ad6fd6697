"""Property-based requests against every RPC of a real `cleanroom serve` (proof/rpc_fuzz.py), at
`make test`'s size: derandomized hypothesis, so every run sends the same examples. `make fuzz`
sends many more (proof/fuzz.py --examples-per-rpc)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from cleanroom.api.auth import RULES
from proof.fuzz import FAST_EXAMPLES
from proof.rpc_fuzz import Outcome, Rpc, Tally, World, enumerate_rpcs, fuzz_rpc, health, problems
from proof.rpc_world import start_world

RPCS = enumerate_rpcs()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    started = start_world(tmp_path_factory.mktemp("rpc-fuzz"))
    yield started
    started.close()
    log = started.log.read_text(errors="replace")
    assert "unhandled error" not in log, "the server logged an unhandled error (an INTERNAL answer)"


def test_the_fuzzed_rpcs_are_exactly_those_the_auth_rules_name() -> None:
    """Enumerated from the descriptors: an RPC added to a .proto is fuzzed, and must have a rule."""
    assert {rpc.path for rpc in RPCS} == set(RULES)
    assert any(rpc.client_streaming for rpc in RPCS) and any(rpc.server_streaming for rpc in RPCS)


@pytest.mark.parametrize("rpc", RPCS, ids=[rpc.short for rpc in RPCS])
def test_no_fuzzed_request_gets_internal_a_traceback_or_a_server_path(world: World, rpc: Rpc) -> None:
    tally = Tally()
    fuzz_rpc(world, rpc, RULES.get(rpc.path, frozenset()), examples_per_rpc=FAST_EXAMPLES, tally=tally)
    assert sum(tally.codes[rpc.short].values()) >= FAST_EXAMPLES
    assert not health(world)


# ---------------------------------------------------------------- the checks themselves can fail


def _rpc() -> Rpc:
    return next(rpc for rpc in RPCS if rpc.short == "DatasetService/GetDataset")


def _details(reason: str | None) -> tuple[tuple[str, bytes], ...]:
    if reason is None:
        return ()
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="cleanroom.v1"))
    return (("grpc-status-details-bin", status_pb2.Status(code=3, details=[packed]).SerializeToString()),)


FORBIDDEN = ("/srv/state", "Traceback (most recent call last)")


@pytest.mark.parametrize("outcome, expected", [
    (Outcome("INTERNAL", "internal error; quote reference abc", _details("INTERNAL")), "status INTERNAL"),
    (Outcome("UNKNOWN", "Exception calling application: boom"), "status UNKNOWN"),
    (Outcome("DATA_LOSS", "x", _details("INTEGRITY_ERROR")), "status DATA_LOSS"),
    (Outcome("INVALID_ARGUMENT", "bad name"), "no cleanroom ErrorInfo"),
    (Outcome("NOT_FOUND", "no such file /srv/state/blobs/x", _details("NOT_FOUND")), "server path"),
    (Outcome("INVALID_ARGUMENT", "Traceback (most recent call last): ...", _details("BAD_REQUEST")), "traceback"),
    (Outcome("OK", "", (), [b"\x0a\x16datasets/ /srv/state/x"]), "server path"),
    (Outcome("OK", "", (), [b"\xff\xff\xff"]), "is not a cleanroom.v1.Dataset"),
])
def test_a_bad_answer_is_flagged(outcome: Outcome, expected: str) -> None:
    found = problems(outcome, _rpc(), FORBIDDEN)
    assert any(expected in problem for problem in found), found


def test_a_good_answer_is_not_flagged() -> None:
    assert problems(Outcome("NOT_FOUND", "dataset not found", _details("NOT_FOUND")), _rpc(), FORBIDDEN) == []
    assert problems(Outcome("RESOURCE_EXHAUSTED", "Received message larger than max (5 vs. 4)"), _rpc(), FORBIDDEN) == []


def test_a_dead_server_is_flagged(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    world = World("127.0.0.1:1", tmp_path, tmp_path / "log", dead, grpc.insecure_channel("127.0.0.1:1"), {}, {}, [], [])
    assert health(world) == ["the server exited with status 3"]
    world.channel.close()
