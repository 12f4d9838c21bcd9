"""Unit tests for edge.memcache.ByteLRU: byte accounting, recency order, eviction,
refusal of oversize entries and the zero budget. Pure logic, no I/O."""

from __future__ import annotations

import pytest

from edge.memcache import ByteLRU, Entry


def filled(budget: int, sizes: dict[str, int]) -> ByteLRU[str, bytes]:
    cache: ByteLRU[str, bytes] = ByteLRU(budget)
    for key, size in sizes.items():
        assert cache.put(key, b"x" * size, size)
    return cache


def present(cache: ByteLRU[str, bytes], candidates: str | list[str]) -> list[str]:
    return [key for key in candidates if key in cache]


# -- byte accounting ------------------------------------------------------------------


def test_bytes_used_is_exact_after_puts_replacements_and_pops() -> None:
    cache = filled(100, {"a": 10, "b": 20, "c": 30})
    assert cache.bytes_used == 60
    assert cache.put("b", b"y" * 5, 5)  # replacement shrinks
    assert cache.bytes_used == 45
    assert cache.put("a", b"z" * 40, 40)  # replacement grows, still fits
    assert cache.bytes_used == 75
    assert cache.pop("c") == Entry(b"x" * 30, 30)
    assert cache.bytes_used == 45
    assert cache.pop("c") is None
    assert cache.bytes_used == 45
    assert len(cache) == 2
    assert cache.evictions == 0


def test_size_is_the_callers_word_not_len_of_value() -> None:
    cache: ByteLRU[str, tuple[dict[str, str], bytes]] = ByteLRU(1_000)
    assert cache.put("/a", ({"etag": "1"}, b"body"), 300)
    assert cache.bytes_used == 300
    entry = cache.get("/a")
    assert entry is not None and entry.value == ({"etag": "1"}, b"body") and entry.size == 300


def test_zero_size_entries_fit_a_full_cache() -> None:
    cache = filled(10, {"a": 10})
    assert cache.put("empty", b"", 0)
    assert cache.bytes_used == 10 and len(cache) == 2 and cache.evictions == 0


def test_replacing_a_key_that_fills_the_budget_does_not_evict_others_first() -> None:
    cache = filled(30, {"a": 10, "b": 20})
    assert cache.put("b", b"", 20)
    assert "a" in cache and cache.evictions == 0 and cache.bytes_used == 30


# -- recency and eviction ---------------------------------------------------------------


def test_eviction_drops_least_recently_used_first() -> None:
    cache = filled(30, {"a": 10, "b": 10, "c": 10})
    assert cache.put("d", b"", 10)
    assert present(cache, "abcd") == ["b", "c", "d"]
    assert cache.evictions == 1


def test_get_makes_an_entry_most_recent() -> None:
    cache = filled(30, {"a": 10, "b": 10, "c": 10})
    assert cache.get("a") is not None
    assert cache.put("d", b"", 10)
    assert "a" in cache and "b" not in cache
    assert cache.get("missing") is None


def test_contains_does_not_touch_recency() -> None:
    cache = filled(20, {"a": 10, "b": 10})
    assert "a" in cache
    cache.put("c", b"", 10)
    assert "a" not in cache and "b" in cache


def test_replacement_makes_an_entry_most_recent() -> None:
    cache = filled(30, {"a": 10, "b": 10, "c": 10})
    assert cache.put("a", b"new", 10)
    assert cache.put("d", b"", 10)
    assert "a" in cache and "b" not in cache


def test_a_large_put_evicts_as_many_entries_as_needed_in_order() -> None:
    cache = filled(100, {"a": 30, "b": 30, "c": 30})
    cache.get("a")  # order now b, c, a
    assert cache.put("big", b"", 65)
    assert present(cache, ["b", "c", "a", "big"]) == ["a", "big"]
    assert cache.evictions == 2
    assert cache.bytes_used == 95


def test_eviction_counter_accumulates_and_excludes_pops() -> None:
    cache: ByteLRU[str, bytes] = ByteLRU(50)
    for i in range(20):
        assert cache.put(f"k{i}", b"", 10)
    cache.pop("k19")
    assert len(cache) == 4
    assert cache.evictions == 15
    assert cache.bytes_used == 40


# -- refusals -------------------------------------------------------------------------


def test_oversize_put_is_refused_and_stores_nothing() -> None:
    cache = filled(100, {"a": 40, "b": 40})
    assert not cache.put("huge", b"", 101)
    assert "huge" not in cache
    assert cache.bytes_used == 80 and cache.evictions == 0 and len(cache) == 2


def test_exactly_budget_sized_put_fits() -> None:
    cache = filled(100, {"a": 40})
    assert cache.put("full", b"", 100)
    assert present(cache, ["a", "full"]) == ["full"]
    assert cache.bytes_used == 100


def test_refused_replacement_drops_the_stale_entry() -> None:
    cache = filled(100, {"a": 40, "b": 40})
    assert not cache.put("a", b"", 500)
    assert cache.get("a") is None
    assert "b" in cache and cache.bytes_used == 40


def test_zero_budget_stores_nothing() -> None:
    cache: ByteLRU[str, bytes] = ByteLRU(0)
    assert cache.budget == 0
    assert not cache.put("a", b"abc", 3)
    assert not cache.put("empty", b"", 0)
    assert len(cache) == 0 and cache.bytes_used == 0 and cache.evictions == 0


def test_negative_budget_raises() -> None:
    with pytest.raises(ValueError, match="budget_bytes must be >= 0"):
        ByteLRU(-1)


def test_negative_size_raises_and_leaves_cache_intact() -> None:
    cache = filled(100, {"a": 40})
    with pytest.raises(ValueError, match="size must be >= 0"):
        cache.put("b", b"", -5)
    assert cache.bytes_used == 40 and len(cache) == 1
