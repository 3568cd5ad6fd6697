"""Canonical JSON, time and decimal helpers of enclave_sim: one spelling per statement."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave_sim import EnclaveSimError, Reason, canonical_json, decimal_text, format_time, parse_canonical, parse_time

json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


def test_canonical_json_is_sorted_compact_utf8() -> None:
    value = {"b": [1, True, None], "a": {"é": "ü", "A": "x"}, "": 0}
    assert canonical_json(value) == '{"":0,"a":{"A":"x","é":"ü"},"b":[1,true,null]}'.encode()


@given(st.dictionaries(st.text(max_size=8), json_scalars, max_size=8))
def test_canonical_json_ignores_insertion_order(value: dict) -> None:
    reordered = dict(reversed(list(value.items())))
    assert canonical_json(reordered) == canonical_json(value)


@pytest.mark.parametrize("value", [1.5, {"a": [0.0]}, float("nan"), {1: "a"}, {"a": {2}}, b"bytes", Decimal("1.5")])
def test_canonical_json_refuses_values_without_a_canonical_form(value: object) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


def test_tuples_and_lists_encode_alike() -> None:
    assert canonical_json({"a": (1, 2)}) == canonical_json({"a": [1, 2]}) == b'{"a":[1,2]}'


@given(json_values)
def test_parse_canonical_round_trips(value: object) -> None:
    data = canonical_json(value)
    assert canonical_json(parse_canonical(data)) == data


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1}',  # whitespace
        b'{"b":1,"a":2}',  # unsorted
        b'{"a":1,"a":1}',  # duplicate key
        b'{"a":1.0}',  # float
        b'{"a":NaN}',
        b'{"a":"\\u00e9"}',  # escaped where canonical form is raw UTF-8
        b'{"a":"\xff"}',  # not UTF-8
        b'{"a":1',  # truncated
        b'{"a":01}',
    ],
)
def test_parse_canonical_refuses_every_other_spelling(data: bytes) -> None:
    with pytest.raises(EnclaveSimError) as caught:
        parse_canonical(data)
    assert caught.value.reason is Reason.MALFORMED


def test_time_round_trips_in_utc_with_whole_seconds() -> None:
    moment = datetime(2026, 5, 9, 16, 35, 25, 999_999, tzinfo=timezone(timedelta(hours=9)))
    assert format_time(moment) == "2026-05-09T07:35:25Z"
    assert parse_time("2026-05-09T07:35:25Z") == moment.replace(microsecond=0)


@pytest.mark.parametrize("text", ["2026-05-09T07:35:25+00:00", "2026-05-09T07:35:25.1Z", "2026-02-30T00:00:00Z", "2026-05-09 07:35:25Z", 1715240125])
def test_parse_time_refuses_other_forms(text: object) -> None:
    with pytest.raises(EnclaveSimError) as caught:
        parse_time(text)
    assert caught.value.reason is Reason.MALFORMED


def test_format_time_refuses_naive_times() -> None:
    with pytest.raises(ValueError):
        format_time(datetime(2026, 5, 9))


@pytest.mark.parametrize(("value", "text"), [(1e-05, "0.00001"), (0.1, "0.1"), (3, "3"), ("2.50", "2.50"), (Decimal("1E+2"), "100"), (-0.0, "0")])
def test_decimal_text_is_plain_and_stable(value: object, text: str) -> None:
    assert decimal_text(value) == text


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_decimal_text_of_a_float_round_trips_exactly(value: float) -> None:
    assert float(decimal_text(value)) == value


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "abc", True, "-0.5"])
def test_decimal_text_refuses_what_is_not_a_finite_non_negative_number(value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        decimal_text(value)


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(st.integers(), st.text(max_size=12), st.lists(st.booleans(), max_size=3)),
                       max_size=6))
def test_the_one_pass_signed_envelope_is_the_canonical_envelope(fields: dict) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from enclave_sim.signing import envelope_bytes, sign_payload, signed_envelope_bytes

    key = Ed25519PrivateKey.generate()
    payload = {**fields, "type": "report", "simulated": True}
    assert signed_envelope_bytes(key, payload) == envelope_bytes(payload, sign_payload(key, payload))
