"""Unit tests for dht.ids: the clockwise interval predicates and IdSpace arithmetic.

Pure logic, no I/O. The interval functions are checked exhaustively for small m
against a reference that literally walks the circle clockwise from `a`.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest

from dht.ids import DEFAULT_BITS, IdSpace, in_half_open, in_open

# -- reference model ---------------------------------------------------------------


def walk_arc(a: int, b: int, size: int, include_end: bool) -> set[int]:
    """Points met walking clockwise from a (exclusive) until b; a full lap when a == b."""
    points: set[int] = set()
    y = a
    for _ in range(size):
        y = (y + 1) % size
        if y == b:
            if include_end:
                points.add(y)
            break
        points.add(y)
    return points


@pytest.mark.parametrize("bits", [1, 3, 4])
def test_intervals_match_clockwise_walk_exhaustively(bits: int) -> None:
    size = 1 << bits
    for a, b in itertools.product(range(size), repeat=2):
        open_arc = walk_arc(a, b, size, include_end=False)
        half_arc = walk_arc(a, b, size, include_end=True)
        for x in range(size):
            assert in_open(x, a, b) == (x in open_arc), (x, a, b)
            assert in_half_open(x, a, b) == (x in half_arc), (x, a, b)


def test_reference_model_sanity() -> None:
    # Guards the oracle itself: (6, 2] on 8 points is {7, 0, 1, 2}.
    assert walk_arc(6, 2, 8, include_end=True) == {7, 0, 1, 2}
    assert walk_arc(3, 3, 8, include_end=False) == set(range(8)) - {3}
    assert walk_arc(3, 3, 8, include_end=True) == set(range(8))


# -- interval predicates: hand-picked cases -------------------------------------------


def test_in_open_plain_arc_and_endpoints() -> None:
    assert in_open(5, 3, 9)
    assert not in_open(3, 3, 9)
    assert not in_open(9, 3, 9)
    assert not in_open(10, 3, 9)
    assert not in_open(2, 3, 9)


def test_in_half_open_plain_arc_and_endpoints() -> None:
    assert in_half_open(9, 3, 9)
    assert not in_half_open(3, 3, 9)
    assert in_half_open(4, 3, 9)
    assert not in_half_open(10, 3, 9)


def test_wrap_around_arcs() -> None:
    # (200, 20) on an 8-bit ring passes through 255 and 0.
    assert in_open(255, 200, 20) and in_open(0, 200, 20) and in_open(19, 200, 20)
    assert not in_open(20, 200, 20) and not in_open(200, 200, 20) and not in_open(100, 200, 20)
    assert in_half_open(20, 200, 20) and not in_half_open(200, 200, 20)
    assert not in_half_open(21, 200, 20)


def test_equal_endpoints_cover_the_circle() -> None:
    assert not in_open(7, 7, 7)
    assert in_open(6, 7, 7) and in_open(8, 7, 7) and in_open(0, 7, 7)
    assert in_half_open(7, 7, 7) and in_half_open(0, 7, 7) and in_half_open(8, 7, 7)


@pytest.mark.parametrize("bits", [3, 8, 256])
def test_edges_of_an_m_bit_circle(bits: int) -> None:
    top = (1 << bits) - 1
    assert in_open(0, top, 1)
    assert in_open(top, top - 1, 0)
    assert not in_open(0, top, 0)
    assert in_half_open(0, top, 0)
    assert in_half_open(top, 0, top)
    assert not in_half_open(0, 0, top)
    assert in_open(top, 0, 0) and not in_open(0, 0, 0)
    assert in_half_open(top, top, top)


# -- IdSpace construction ----------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, -1, 257, 1.5, "8", None])
def test_bits_outside_1_to_256_or_not_int_rejected(bits: object) -> None:
    with pytest.raises(ValueError):
        IdSpace(bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [1, 8, 256])
def test_valid_bits_and_size(bits: int) -> None:
    assert IdSpace(bits).size == 2**bits


def test_default_is_256_bits() -> None:
    assert DEFAULT_BITS == 256
    assert IdSpace().bits == 256


# -- hashing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"x", b"10.0.0.1:7000", bytes(range(256))])
@pytest.mark.parametrize("bits", [1, 3, 8, 160, 256])
def test_hash_is_top_bits_of_sha256(bits: int, data: bytes) -> None:
    digest = hashlib.sha256(data).digest()
    full = int.from_bytes(digest, "big")
    expected = full >> (256 - bits)
    value = IdSpace(bits).hash(data)
    assert value == expected
    assert 0 <= value < 2**bits


def test_hash_8_bits_is_first_digest_byte() -> None:
    assert IdSpace(8).hash(b"abc") == hashlib.sha256(b"abc").digest()[0]
    assert IdSpace(256).hash(b"abc") == int(hashlib.sha256(b"abc").hexdigest(), 16)


def test_node_id_hashes_utf8_address() -> None:
    space = IdSpace(16)
    assert space.node_id("127.0.0.1:4000") == space.hash(b"127.0.0.1:4000")
    assert space.node_id("h\u00f6st:1") == space.hash("h\u00f6st:1".encode("utf-8"))
    assert space.node_id("a:1") != space.node_id("a:2")


# -- distance and fingers ------------------------------------------------------------------


def test_distance_is_clockwise() -> None:
    space = IdSpace(8)
    assert space.distance(10, 50) == 40
    assert space.distance(50, 10) == 216
    assert space.distance(250, 4) == 10
    assert space.distance(7, 7) == 0
    assert space.distance(255, 0) == 1


def test_distance_256_bits_wraps() -> None:
    space = IdSpace(256)
    top = 2**256 - 1
    assert space.distance(top, 0) == 1
    assert space.distance(0, top) == top


@pytest.mark.parametrize("bits", [3, 8, 256])
def test_finger_start_adds_power_of_two_mod_size(bits: int) -> None:
    space = IdSpace(bits)
    for node in (0, 1, space.size // 2, space.size - 1):
        for i in range(bits):
            assert space.finger_start(node, i) == (node + 2**i) % space.size


def test_finger_start_concrete_wrap() -> None:
    space = IdSpace(8)
    assert space.finger_start(250, 3) == 2
    assert space.finger_start(10, 7) == 138
    assert IdSpace(256).finger_start(2**256 - 1, 0) == 0


@pytest.mark.parametrize("index", [-1, 8, 9])
def test_finger_start_index_out_of_range(index: int) -> None:
    with pytest.raises(ValueError):
        IdSpace(8).finger_start(10, index)


# -- check / parse_id / key_for / short -----------------------------------------------------


@pytest.mark.parametrize("bits", [3, 8, 256])
def test_check_accepts_range_edges(bits: int) -> None:
    space = IdSpace(bits)
    assert space.check(0) == 0
    assert space.check(space.size - 1) == space.size - 1


@pytest.mark.parametrize("bad", [True, False, -1, 256, 2**300, 1.0, "1", None])
def test_check_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        IdSpace(8).check(bad)  # type: ignore[arg-type]


def test_parse_id_accepts_prefixed_and_bare_hex() -> None:
    space = IdSpace(8)
    assert space.parse_id("0x1f") == 31
    assert space.parse_id("1F") == 31
    assert space.parse_id("ff") == 255
    assert IdSpace(256).parse_id("0x" + "f" * 64) == 2**256 - 1


@pytest.mark.parametrize("bad", ["", "0x", "zz", "-1", "0x-1", "1_0", " 1f", "0x100", "100"])
def test_parse_id_rejects_non_hex_or_out_of_range(bad: str) -> None:
    with pytest.raises(ValueError):
        IdSpace(8).parse_id(bad)


def test_parse_id_rejects_trailing_newline() -> None:
    with pytest.raises(ValueError):
        IdSpace(8).parse_id("ab\n")


def test_key_for_0x_string_is_an_id() -> None:
    assert IdSpace(8).key_for("0x1f") == 31
    assert IdSpace(256).key_for("0x1") == 1


def test_key_for_full_width_hex_is_an_id() -> None:
    assert IdSpace(8).key_for("ab") == 0xAB
    full = "0123456789abcdef" * 4
    assert IdSpace(256).key_for(full) == int(full, 16)


@pytest.mark.parametrize("text", ["a", "abc", "hello", "zz", "", "/videos/cat.mp4"])
def test_key_for_other_strings_are_hashed_8_bits(text: str) -> None:
    space = IdSpace(8)
    assert space.key_for(text) == space.hash(text.encode("utf-8"))


def test_key_for_short_hex_at_256_bits_is_hashed() -> None:
    space = IdSpace(256)
    text = "f" * 63
    assert space.key_for(text) == space.hash(text.encode())
    assert space.key_for(text) != int(text, 16)


def test_key_for_hashes_hex_with_trailing_newline() -> None:
    space = IdSpace(8)
    assert space.key_for("a\n") == space.hash(b"a\n")


def test_short_is_zero_padded_first_8_hex_digits() -> None:
    space = IdSpace(256)
    assert space.short(0) == "00000000"
    assert space.short(1) == "00000000"
    assert space.short(2**256 - 1) == "ffffffff"
    assert space.short((0xDEADBEEF << 224) | 12345) == "deadbeef"


def test_short_small_spaces_use_full_width() -> None:
    assert IdSpace(8).short(10) == "0a"
    assert IdSpace(3).short(5) == "5"
    assert IdSpace(12).short(0x0AB) == "0ab"


def test_key_for_hashes_text_that_only_looks_like_hex() -> None:
    space = IdSpace(8)
    assert space.key_for("0xford") == space.hash(b"0xford")
    assert IdSpace(3).key_for("9") == IdSpace(3).hash(b"9")  # full width, but out of range


def test_bool_is_not_a_bit_count() -> None:
    with pytest.raises(ValueError):
        IdSpace(True)  # type: ignore[arg-type]
