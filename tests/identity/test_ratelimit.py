"""The failed-authentication limiter on a clock the test moves: N failures within the window block a
source until the oldest leaves it, other sources are untouched, memory stays bounded."""

from __future__ import annotations

import pytest

from cleanroom.identity.ratelimit import FailureLimiter, source_of


class Clock:
    def __init__(self) -> None:
        self.at = 1000.0

    def __call__(self) -> float:
        return self.at


def test_n_failures_within_the_window_block_until_the_oldest_leaves_it() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, 60, clock=clock)
    for _ in range(3):
        assert limiter.blocked("ipv4:10.0.0.1") is None
        limiter.failed("ipv4:10.0.0.1")
        clock.at += 10
    assert limiter.blocked("ipv4:10.0.0.1") == pytest.approx(30)  # the first failure, at 1000, leaves at 1060; now 1030
    assert limiter.blocked("ipv4:10.0.0.2") is None
    clock.at = 1060  # the first failure has left the window: two remain, below the limit
    assert limiter.blocked("ipv4:10.0.0.1") is None
    limiter.failed("ipv4:10.0.0.1")
    assert limiter.blocked("ipv4:10.0.0.1") == pytest.approx(10)  # failures at 1010, 1020, 1060: blocked until 1070
    clock.at = 1200
    assert limiter.blocked("ipv4:10.0.0.1") is None and limiter.tracked() == 0


def test_failures_spread_wider_than_the_window_never_block() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, 60, clock=clock)
    for _ in range(100):
        limiter.failed("ipv4:10.0.0.1")
        assert limiter.blocked("ipv4:10.0.0.1") is None
        clock.at += 30.01  # at most two failures within any 60 s


def test_memory_is_bounded_by_forgetting_the_least_recently_failing_sources() -> None:
    clock = Clock()
    limiter = FailureLimiter(1, 60, clock=clock, max_sources=100)
    for n in range(1000):
        limiter.failed(f"ipv4:10.0.{n // 256}.{n % 256}")
    assert limiter.tracked() == 100
    assert limiter.blocked("ipv4:10.0.3.231") is not None  # the latest is remembered
    assert limiter.blocked("ipv4:10.0.0.0") is None        # the oldest was forgotten


def test_the_source_is_the_address_without_the_port() -> None:
    assert source_of("ipv4:127.0.0.1:51234") == source_of("ipv4:127.0.0.1:40000") == "ipv4:127.0.0.1"
    assert source_of("ipv6:[::1]:51234") == "ipv6:::1"
    assert source_of("unix:/tmp/socket") == "unix:/tmp/socket"


def test_a_limit_below_one_or_an_empty_window_is_refused() -> None:
    with pytest.raises(ValueError):
        FailureLimiter(0, 60)
    with pytest.raises(ValueError):
        FailureLimiter(3, 0)
