"""Property-based requests against every RPC of a running server (`cleanroom serve`, a real process).

The RPCs come from the generated service descriptors (cleanroom/v1/*_pb2), so a new RPC is fuzzed
without anyone listing it; tests/proof/test_rpc_fuzz.py holds that list equal to api/auth.py's
RULES. Each example is one call (or one client stream) as a principal of a role the RPC allows,
now and then with no token, a garbage token or another role, carrying a request drawn by
proof/rpc_strategies.py. Whatever comes back must satisfy `problems`: never INTERNAL, UNKNOWN or
DATA_LOSS; no traceback and no server path (state directory, repository, virtualenv) in a message,
detail or answer; every error the service raises carries its google.rpc ErrorInfo; and the server
is still alive and SERVING afterwards.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import cleanroom.v1
from cleanroom.domain.identity import Role
from proof import rpc_strategies as rs

ROOT = Path(__file__).resolve().parent.parent
BAD_CODES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages")
STREAM_READ_SECONDS = 5.0     # server-streaming calls (WatchJob follows a job until it ends) are cut here
CALL_SECONDS = 120.0          # generous: a bound for a hung call, never reached by a healthy one
GARBAGE_TOKENS = ("crt_not_a_token", "Bearer", "x" * 5000, "crt_" + "0" * 64, "' OR 1=1 --")


@dataclass(frozen=True)
class Rpc:
    path: str                   # "/cleanroom.v1.DatasetService/GetDataset"
    input: Descriptor
    output: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def short(self) -> str:     # "DatasetService/GetDataset"
        return self.path.rsplit(".", 1)[-1]

    @property
    def group(self) -> str:
        return self.short.split("/")[0]


def enumerate_rpcs() -> list[Rpc]:
    """Every RPC of every service in the generated cleanroom/v1 modules."""
    found = []
    for module_info in pkgutil.iter_modules(cleanroom.v1.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"cleanroom.v1.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            found += [Rpc(f"/{service.full_name}/{m.name}", m.input_type, m.output_type, m.client_streaming,
                          m.server_streaming) for m in service.methods]
    return sorted(found, key=lambda r: r.path)


# ---------------------------------------------------------------- the server and its inhabitants


@dataclass
class World:
    """A running server with one principal per role, a shared dataset and names of real things."""

    address: str
    state: Path
    log: Path
    server: subprocess.Popen[bytes]
    channel: grpc.Channel
    tokens: dict[Role, str]
    names: dict[str, str]            # dataset, spare, maker, organisation, feature, pending, model, job
    upload: list[Message]            # a valid upload stream (metadata, chunk, trailer)
    package: list[Message]           # a model submission refused before phase A (its entrypoint is absent)

    def forbidden(self) -> tuple[str, ...]:
        """Text no caller may ever see: server paths and traceback markers."""
        return (str(self.state), str(ROOT), sys.prefix, *TRACEBACK_MARKERS)

    def close(self) -> None:
        self.channel.close()
        self.server.kill()
        self.server.wait()


# ---------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    caller: str                     # a role's value, "none" or "garbage"
    token: str | None
    payload: bytes | list[bytes]    # one request, or a client stream's messages
    kind: str                       # "noise", "near", "raw" or "valid"
    request_id: str | None = None   # an x-request-id header (the guard logs and echoes it)

    def __repr__(self) -> str:      # what hypothesis prints for a falsifying example: short
        shown = self.payload if isinstance(self.payload, bytes) else b"|".join(self.payload)
        return f"Example(caller={self.caller!r}, kind={self.kind!r}, payload={shown[:300]!r}, bytes={len(shown)})"


def _caller(world: World, allowed: frozenset[Role]) -> st.SearchStrategy[tuple[str, str | None]]:
    """Mostly a role the RPC allows; sometimes nobody, a garbage token, or a role it refuses."""
    others = sorted((r for r in world.tokens if r not in allowed), key=lambda r: r.value)
    choices = [r for r in sorted(allowed, key=lambda r: r.value) if r in world.tokens] * 3 + others[:1]
    roles = st.sampled_from(choices).map(lambda r: (r.value, world.tokens[r]))
    garbage = st.one_of(st.sampled_from(GARBAGE_TOKENS), st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                                                                 max_size=80)).map(lambda t: ("garbage", t))
    # 8 in 10 as a role (one of them possibly refused), 1 with no token, 1 with garbage
    return st.integers(0, 9).flatmap(lambda i: roles if i < 8 else st.just(("none", None)) if i == 8 else garbage)


def _payload(world: World, rpc: Rpc, baselines: dict[str, Callable[[World], Message]]) -> st.SearchStrategy[tuple[str, Any]]:
    noise = rs.messages(rpc.input).map(lambda m: ("noise", m.SerializeToString()))
    base = baselines.get(rpc.short)
    if base is None:                 # an RPC nobody wrote a valid request for yet: noise and raw bytes
        return st.one_of(noise, rs.raw_bytes(b"").map(lambda b: ("raw", b)))
    valid = st.builds(lambda: ("valid", base(world).SerializeToString()))   # odd callers on the good path
    near = st.builds(lambda: base(world)).flatmap(rs.mutated).map(lambda m: ("near", m.SerializeToString()))
    raw = st.builds(lambda: base(world).SerializeToString()).flatmap(rs.raw_bytes).map(lambda b: ("raw", b))
    return st.one_of(near, noise, raw, valid)


def _stream_payload(world: World, rpc: Rpc, valid: list[Message]) -> st.SearchStrategy[tuple[str, Any]]:
    noise = st.lists(rs.messages(rpc.input), max_size=6).map(lambda ms: ("noise", [m.SerializeToString() for m in ms]))
    raw = st.lists(rs.raw_bytes(valid[0].SerializeToString()), min_size=1, max_size=4).map(lambda bs: ("raw", bs))
    return st.one_of(_near_stream(valid), noise, raw, _near_stream(valid))


def _near_stream(valid: list[Message]) -> st.SearchStrategy[tuple[str, list[bytes]]]:
    """A valid client stream with one thing wrong: one message mutated, dropped, repeated or moved,
    or one more message after the trailer."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[str, list[bytes]]:
        messages = [m.SerializeToString() for m in valid]
        at = draw(st.integers(0, len(messages) - 1))
        how = draw(st.sampled_from(("mutate", "mutate", "drop", "repeat", "swap", "append")))
        if how == "mutate":
            messages[at] = draw(rs.mutated(valid[at])).SerializeToString()
        elif how == "drop":
            del messages[at]
        elif how == "repeat":
            messages.insert(at, messages[at])
        elif how == "swap":
            other = draw(st.integers(0, len(messages) - 1))
            messages[at], messages[other] = messages[other], messages[at]
        else:
            messages.append(draw(rs.messages(valid[at].DESCRIPTOR)).SerializeToString())
        return "near", messages

    return build()


def examples(world: World, rpc: Rpc, allowed: frozenset[Role], baselines: dict[str, Callable[[World], Message]],
             streams: dict[str, list[Message]]) -> st.SearchStrategy[Example]:
    payloads = _stream_payload(world, rpc, streams[rpc.short]) if rpc.short in streams else _payload(world, rpc, baselines)
    request_ids = st.one_of(st.none(), st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=300))
    return st.builds(lambda who, what, rid: Example(who[0], who[1], what[1], what[0], rid), _caller(world, allowed), payloads,
                     request_ids)


# ---------------------------------------------------------------- calls and what they must satisfy


@dataclass
class Outcome:
    code: str
    details: str
    trailers: tuple[tuple[str, Any], ...] = ()
    responses: list[bytes] = field(default_factory=list)


def send(world: World, rpc: Rpc, example: Example) -> Outcome:
    metadata = (("authorization", f"Bearer {example.token}"),) if example.token is not None else ()
    metadata += (("x-request-id", example.request_id),) if example.request_id is not None else ()
    raw: Callable[[bytes], bytes] = lambda b: b  # noqa: E731 - bytes in, bytes out: the checks parse them
    kinds = {(False, False): world.channel.unary_unary, (False, True): world.channel.unary_stream,
             (True, False): world.channel.stream_unary, (True, True): world.channel.stream_stream}
    callable_ = kinds[(rpc.client_streaming, rpc.server_streaming)](rpc.path, request_serializer=raw, response_deserializer=raw)
    request = iter(example.payload) if rpc.client_streaming else example.payload
    timeout = STREAM_READ_SECONDS if rpc.server_streaming else CALL_SECONDS
    try:
        if rpc.server_streaming:
            call = callable_(request, metadata=metadata, timeout=timeout)
            responses = list(call)
            return Outcome("OK", "", tuple(call.trailing_metadata() or ()), responses)
        response, call = callable_.with_call(request, metadata=metadata, timeout=timeout)
        return Outcome("OK", "", tuple(call.trailing_metadata() or ()), [response])
    except grpc.RpcError as error:
        return Outcome(error.code().name, error.details() or "", tuple(error.trailing_metadata() or ()))


def _error_info(trailers: tuple[tuple[str, Any], ...]) -> error_details_pb2.ErrorInfo | None:
    for key, value in trailers:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return None


def _grpc_own(outcome: Outcome, rpc: Rpc) -> bool:
    """Statuses gRPC itself gives (no service code ran to attach details): a message over the size
    limit, or a server-streaming read cut at our own deadline."""
    if outcome.code == "RESOURCE_EXHAUSTED" and "larger than max" in outcome.details:
        return True
    return outcome.code == "DEADLINE_EXCEEDED" and rpc.server_streaming


def problems(outcome: Outcome, rpc: Rpc, forbidden: tuple[str, ...]) -> list[str]:
    """What is wrong with one answer (empty: nothing)."""
    found = []
    if outcome.code in BAD_CODES:
        found.append(f"status {outcome.code}: {outcome.details[:200]!r}")
    texts = [outcome.details, *(str(v) for _, v in outcome.trailers)]
    if outcome.code == "OK":
        texts += list(_answers(outcome, rpc, found))
    elif not _grpc_own(outcome, rpc):
        info = _error_info(outcome.trailers)
        if info is None or info.domain != "cleanroom.v1" or not info.reason:
            found.append(f"status {outcome.code} carries no cleanroom ErrorInfo detail: {outcome.details[:200]!r}")
    for text in texts:
        leaked = [marker for marker in forbidden if marker and marker in text]
        if leaked:
            found.append(f"a server path or traceback ({leaked[0]!r}) reached the caller: {text[:300]!r}")
    return found


def _answers(outcome: Outcome, rpc: Rpc, found: list[str]) -> Iterator[str]:
    cls = rs.message_class(rpc.output)
    for data in outcome.responses:
        try:
            yield text_format.MessageToString(cls.FromString(data), as_utf8=True)
        except DecodeError:
            found.append(f"an answer is not a {rpc.output.full_name}")


def health(world: World) -> list[str]:
    if world.server.poll() is not None:
        return [f"the server exited with status {world.server.returncode}"]
    try:
        answer = health_pb2_grpc.HealthStub(world.channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_SECONDS)
    except grpc.RpcError as error:
        return [f"the health check failed: {error.code().name}"]
    return [] if answer.status == health_pb2.HealthCheckResponse.SERVING else [f"the server is {answer.status}"]


# ---------------------------------------------------------------- the run


@dataclass
class Tally:
    """Examples sent and statuses seen, by RPC (for PROOF.md)."""

    codes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    kinds: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def record(self, rpc: Rpc, example: Example, outcome: Outcome) -> None:
        self.codes[rpc.short][outcome.code] += 1
        self.kinds[rpc.short][example.kind] += 1


def fuzz_rpc(world: World, rpc: Rpc, allowed: frozenset[Role], *, examples_per_rpc: int, tally: Tally,
             seed: int | None = None, baselines: dict[str, Callable[[World], Message]] | None = None,
             streams: dict[str, list[Message]] | None = None) -> None:
    """Sends `examples_per_rpc` drawn examples; AssertionError (with hypothesis's smallest failing
    example) on the first problem. `seed` None: derandomized, the same examples on every run."""
    from proof.rpc_world import BASELINES, stream_baselines

    strategy = examples(world, rpc, allowed, baselines or BASELINES, streams or stream_baselines(world))

    @settings(max_examples=examples_per_rpc, deadline=None, database=None, derandomize=seed is None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(example: Example) -> None:
        outcome = send(world, rpc, example)
        tally.record(rpc, example, outcome)
        found = problems(outcome, rpc, world.forbidden()) + health(world)
        assert not found, f"{rpc.short}: " + "; ".join(found)

    (hypothesis_seed(seed)(one) if seed is not None else one)()


def fresh_id() -> str:
    return uuid.uuid4().hex
