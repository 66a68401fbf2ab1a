"""AggregateCache alone: an LRU of aggregates bounded by entries, with hit/miss/eviction counts."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.application import AggregateCache
from obelisk.domain import Aggregate


class CachedNote(Aggregate):
    """A bare aggregate: the cache never looks inside one."""


class OtherNote(Aggregate):
    """A second aggregate class, to ask for an id cached as something else."""


class SpecialNote(CachedNote):
    """A subclass: asking for its parent class must not serve it."""


def _fill(cache: AggregateCache, *ids: str) -> dict[str, CachedNote]:
    notes = {aggregate_id: CachedNote(aggregate_id) for aggregate_id in ids}
    for note in notes.values():
        cache.put(note)
    return notes


def _ids(cache: AggregateCache, candidates: str) -> list[str]:
    return [aggregate_id for aggregate_id in candidates if aggregate_id in cache]


# -- construction ---------------------------------------------------------------------------


def test_the_default_bound_is_ten_thousand_entries() -> None:
    assert AggregateCache().maxsize == 10_000


def test_a_new_cache_is_empty_with_zero_counters() -> None:
    cache = AggregateCache(4)
    assert len(cache) == 0
    assert (cache.hits, cache.misses, cache.evictions) == (0, 0, 0)


@pytest.mark.parametrize("maxsize", [-1, -10_000])
def test_a_negative_maxsize_raises_value_error(maxsize: int) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        AggregateCache(maxsize)


# -- hits and misses -----------------------------------------------------------------------


def test_get_returns_the_very_instance_that_was_put_and_counts_a_hit() -> None:
    cache = AggregateCache(4)
    note = CachedNote("n-1")
    cache.put(note)
    assert cache.get("n-1", CachedNote) is note
    assert cache.get("n-1", CachedNote) is note
    assert (cache.hits, cache.misses) == (2, 0)


def test_get_of_an_unknown_id_returns_none_and_counts_a_miss() -> None:
    cache = AggregateCache(4)
    assert cache.get("nobody", CachedNote) is None
    assert (cache.hits, cache.misses) == (0, 1)


def test_get_with_another_class_is_a_miss_and_keeps_the_entry() -> None:
    cache = AggregateCache(4)
    note = CachedNote("n-1")
    cache.put(note)
    assert cache.get("n-1", OtherNote) is None
    assert (cache.hits, cache.misses) == (0, 1)
    assert "n-1" in cache
    assert cache.get("n-1", CachedNote) is note


def test_get_matches_the_exact_class_not_a_parent_or_a_subclass() -> None:
    cache = AggregateCache(4)
    special = SpecialNote("n-s")
    plain = CachedNote("n-p")
    cache.put(special)
    cache.put(plain)
    assert cache.get("n-s", CachedNote) is None
    assert cache.get("n-p", SpecialNote) is None
    assert cache.get("n-s", SpecialNote) is special
    assert (cache.hits, cache.misses) == (1, 2)


def test_contains_reports_cached_ids_without_touching_the_counters() -> None:
    cache = AggregateCache(4)
    _fill(cache, "a")
    assert "a" in cache
    assert "b" not in cache
    assert 17 not in cache
    assert (cache.hits, cache.misses, cache.evictions) == (0, 0, 0)


def test_putting_an_id_again_replaces_the_instance_without_growing() -> None:
    cache = AggregateCache(4)
    first = CachedNote("n-1")
    second = CachedNote("n-1")
    cache.put(first)
    cache.put(second)
    assert len(cache) == 1
    assert cache.get("n-1", CachedNote) is second
    assert cache.evictions == 0


# -- the bound and LRU order -----------------------------------------------------------------


def test_the_cache_never_holds_more_than_maxsize_entries() -> None:
    cache = AggregateCache(3)
    _fill(cache, *"abcdefg")
    assert len(cache) == 3
    assert _ids(cache, "abcdefg") == ["e", "f", "g"]
    assert cache.evictions == 4


def test_the_least_recently_put_entry_goes_first() -> None:
    cache = AggregateCache(2)
    _fill(cache, "a", "b", "c")
    assert _ids(cache, "abc") == ["b", "c"]
    assert cache.evictions == 1


def test_a_hit_makes_an_entry_the_most_recently_used() -> None:
    cache = AggregateCache(2)
    notes = _fill(cache, "a", "b")
    assert cache.get("a", CachedNote) is notes["a"]
    _fill(cache, "c")
    assert _ids(cache, "abc") == ["a", "c"]


def test_a_miss_on_the_class_does_not_refresh_the_entry() -> None:
    cache = AggregateCache(2)
    _fill(cache, "a", "b")
    assert cache.get("a", OtherNote) is None
    _fill(cache, "c")
    assert _ids(cache, "abc") == ["b", "c"]


def test_putting_an_existing_id_again_makes_it_the_most_recently_used() -> None:
    cache = AggregateCache(2)
    _fill(cache, "a", "b")
    cache.put(CachedNote("a"))
    _fill(cache, "c")
    assert _ids(cache, "abc") == ["a", "c"]
    assert cache.evictions == 1


def test_a_cache_of_one_keeps_only_the_last_entry() -> None:
    cache = AggregateCache(1)
    notes = _fill(cache, "a", "b")
    assert _ids(cache, "ab") == ["b"]
    assert cache.get("b", CachedNote) is notes["b"]
    assert cache.get("a", CachedNote) is None


# -- evict and clear -------------------------------------------------------------------------


def test_evict_forgets_an_entry_and_counts_it() -> None:
    cache = AggregateCache(4)
    _fill(cache, "a", "b")
    cache.evict("a")
    assert "a" not in cache
    assert "b" in cache
    assert cache.evictions == 1
    assert cache.get("a", CachedNote) is None


def test_evicting_an_absent_id_changes_nothing() -> None:
    cache = AggregateCache(4)
    _fill(cache, "a")
    cache.evict("zzz")
    cache.evict("zzz")
    assert len(cache) == 1
    assert cache.evictions == 0


def test_an_evicted_slot_is_reused_without_evicting_another_entry() -> None:
    cache = AggregateCache(2)
    _fill(cache, "a", "b")
    cache.evict("a")
    _fill(cache, "c")
    assert _ids(cache, "abc") == ["b", "c"]
    assert cache.evictions == 1  # the explicit one only


def test_clear_forgets_every_entry() -> None:
    cache = AggregateCache(4)
    _fill(cache, "a", "b", "c")
    cache.clear()
    assert len(cache) == 0
    assert _ids(cache, "abc") == []
    assert cache.get("a", CachedNote) is None
    _fill(cache, "d")
    assert len(cache) == 1


# -- disabled ----------------------------------------------------------------------------------


def test_a_cache_of_size_zero_stores_nothing() -> None:
    cache = AggregateCache(0)
    note = CachedNote("n-1")
    cache.put(note)
    cache.put(CachedNote("n-2"))
    assert len(cache) == 0
    assert "n-1" not in cache
    assert cache.get("n-1", CachedNote) is None
    assert (cache.hits, cache.misses, cache.evictions) == (0, 1, 0)


# -- against a model ---------------------------------------------------------------------------

_OPS = st.lists(
    st.tuples(st.sampled_from(["put", "get", "get-other", "evict"]), st.sampled_from("abcde")),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(maxsize=st.integers(min_value=0, max_value=4), ops=_OPS)
def test_the_cache_behaves_like_a_reference_lru(maxsize: int, ops: list[tuple[str, str]]) -> None:
    cache = AggregateCache(maxsize)
    model: OrderedDict[str, CachedNote] = OrderedDict()
    hits = misses = evictions = 0
    for op, aggregate_id in ops:
        if op == "put":
            note = CachedNote(aggregate_id)
            cache.put(note)
            if maxsize:
                model[aggregate_id] = note
                model.move_to_end(aggregate_id)
                while len(model) > maxsize:
                    model.popitem(last=False)
                    evictions += 1
        elif op == "get":
            expected = model.get(aggregate_id)
            assert cache.get(aggregate_id, CachedNote) is expected
            if expected is None:
                misses += 1
            else:
                hits += 1
                model.move_to_end(aggregate_id)
        elif op == "get-other":
            assert cache.get(aggregate_id, OtherNote) is None
            misses += 1
        else:
            cache.evict(aggregate_id)
            if model.pop(aggregate_id, None) is not None:
                evictions += 1
        # Membership after every step pins the eviction order: evicting any other entry
        # than the model's least recently used would show here.
        assert len(cache) == len(model) <= maxsize
        assert _ids(cache, "abcde") == sorted(model)
        assert (cache.hits, cache.misses, cache.evictions) == (hits, misses, evictions)
