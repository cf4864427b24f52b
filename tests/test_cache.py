"""PredictionCache: LRU bound, hit/miss counts, invalidation per model."""

from swarmpilot_predictor.cache import PredictionCache


def test_lru_bound_and_counts():
    cache = PredictionCache(max_entries=2)
    cache.put(("m", 1, (1,)), "a")
    cache.put(("m", 1, (2,)), "b")
    assert cache.get(("m", 1, (1,))) == "a"  # now most recently used
    cache.put(("m", 1, (3,)), "c")  # evicts (2,)
    assert cache.get(("m", 1, (2,))) is None
    assert cache.get(("m", 1, (3,))) == "c"
    stats = cache.stats()
    assert stats["entries"] == 2 and stats["hits"] == 2 and stats["misses"] == 1
    assert abs(stats["hit_rate"] - 2 / 3) < 1e-12


def test_invalidate_one_model_keeps_the_others():
    cache = PredictionCache()
    cache.put(("m1", 1, (1,)), "a")
    cache.put(("m1", 2, (1,)), "b")
    cache.put(("m2", 1, (1,)), "c")
    assert cache.invalidate("m1") == 2
    assert cache.get(("m2", 1, (1,))) == "c"
    assert cache.clear() == 1
    assert cache.stats() == {"enabled": True, "entries": 0, "max_entries": 10_000, "hits": 0, "misses": 0, "hit_rate": 0.0}


def test_size_zero_disables():
    cache = PredictionCache(0)
    cache.put(("m", 1), "a")
    assert not cache.enabled and cache.get(("m", 1)) is None
