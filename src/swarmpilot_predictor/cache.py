"""An LRU cache of predictions, keyed by model version, features, levels and confidence."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class PredictionCache:
    """Bounded LRU; a key includes the model version, so a new version never sees old entries.

    Entries of a model whose versions changed (a new one trained, one deleted) are dropped
    eagerly by :meth:`invalidate`, the serving version's too, so that stale ones do not
    crowd out live ones.
    """

    def __init__(self, max_entries: int = 10_000):
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def invalidate(self, model: Hashable | None = None) -> int:
        """Drop every entry, or every entry of one model, whichever its version: those whose
        key is a tuple beginning with ``model`` (the service's begin with the model's
        ``ModelIdentity``, not its key string). Returns how many."""
        with self._lock:
            if model is None:
                n = len(self._data)
                self._data.clear()
                return n
            doomed = [k for k in self._data if isinstance(k, tuple) and k and k[0] == model]
            for k in doomed:
                del self._data[k]
            return len(doomed)

    def clear(self) -> int:
        n = self.invalidate()
        with self._lock:
            self.hits = self.misses = 0
        return n

    def stats(self) -> dict[str, Any]:
        with self._lock:
            total = self.hits + self.misses
            return {
                "enabled": self.enabled,
                "entries": len(self._data),
                "max_entries": self.max_entries,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": (self.hits / total) if total else 0.0,
            }
