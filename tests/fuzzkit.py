"""Hypothesis strategies for hostile wire input, shared by the fuzz tests.

`wire_values` is anything msgpack can carry, leaning on what breaks parsers:
integers far past 64 bits, NaN and infinities, long strings, deep nesting, maps.
`node_refs_ish` and friends are structure-aware: the right shapes with wrong
parts, so a decoder's every check is reached, not only its first.

The number of examples comes from the Hypothesis profile: "ci" (the default, a
bounded run in the test suite) or "nightly" (`python3 dev.py fuzz`, or
CHORDCDN_FUZZ_PROFILE=nightly).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("CHORDCDN_FUZZ_PROFILE", "ci"))

HUGE_INTEGERS = st.one_of(
    st.integers(),
    st.sampled_from([2**64, 2**64 - 1, -(2**63) - 1, 2**256, 2**256 - 1, 2**320, 10**2000, -(10**2000)]),
    st.integers(min_value=0, max_value=12).map(lambda k: 2 ** (64 * k) + 1),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    HUGE_INTEGERS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=64),
    st.text(min_size=300, max_size=2000),
    st.binary(max_size=64),
    st.sampled_from([b"\x00" * 32, b"\xff" * 32, b"", "sim-1", "127.0.0.1:1", "[::1]:1", "owner", "next"]),
)
wire_values: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=12), children, max_size=6),
    ),
    max_leaves=40,
)


def deeply_nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


NESTING = st.integers(min_value=1, max_value=3000).map(deeply_nested)
ADDRESSES = st.one_of(st.text(max_size=20), st.sampled_from(["127.0.0.1:4000", "", "x" * 300]), wire_values)
IDS = st.one_of(HUGE_INTEGERS, wire_values)
node_refs_ish = st.one_of(
    st.tuples(ADDRESSES, IDS).map(list),
    st.lists(wire_values, max_size=3),
    wire_values,
    NESTING,
)
ref_lists_ish = st.one_of(st.lists(node_refs_ish, max_size=8), wire_values, st.just([["a:1", 1]] * 400))
block_keys_ish = st.one_of(st.binary(min_size=31, max_size=33), st.just(b"\x00" * 32), wire_values)
arguments_ish = st.one_of(
    st.lists(wire_values, max_size=4),
    st.lists(node_refs_ish, max_size=3),
    st.tuples(node_refs_ish, ref_lists_ish).map(list),
    st.tuples(block_keys_ish, st.binary(max_size=128)).map(list),
    st.tuples(st.binary(min_size=14, max_size=66), st.lists(block_keys_ish, max_size=5)).map(list),
    st.tuples(IDS, IDS, IDS).map(list),
    st.tuples(IDS, st.lists(IDS, max_size=20)).map(list),
)
