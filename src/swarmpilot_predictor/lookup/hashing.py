"""Hashing helpers of the table's indexes, vectorised and on Python scalars.

splitmix64 over feature values' bits (:func:`_mix`, :func:`hash_parts`; :func:`mix_int`
hashes one trace exactly as the vectorised path does), the stable hash of task ids, the
sorted indexes and their probes, and the readers of a query value that is hashed
(:func:`vocab_code`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..features import category_code

_U = np.uint64
_SEED = _U(0x243F6A8885A308D3)
_NAN_BITS = _U(0x7FF8DEADBEEF0001)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised over uint64 arrays (wrapping arithmetic)."""
    h = h + _U(0x9E3779B97F4A7C15)
    h = (h ^ (h >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> _U(27))) * _U(0x94D049BB133111EB)
    return h ^ (h >> _U(31))


def float_bits(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64) + 0.0  # -0.0 -> 0.0
    bits = x.view(np.uint64)
    bits[np.isnan(x)] = _NAN_BITS
    return bits


def code_bits(codes: np.ndarray) -> np.ndarray:
    return np.asarray(codes, dtype=np.int64).view(np.uint64)


def hash_parts(parts: Sequence[np.ndarray], n: int) -> np.ndarray:
    h = np.full(n, _SEED, dtype=np.uint64)
    for p in parts:
        h = _mix(h ^ p)
    return h


MASK = (1 << 64) - 1
SEED_INT = int(_SEED)
NAN_INT = int(_NAN_BITS)
_DOUBLE = struct.Struct("<d")


def mix_int(h: int) -> int:
    """:func:`_mix` on one Python int (the scalar path must hash exactly as the vectorised one)."""
    h = (h + 0x9E3779B97F4A7C15) & MASK
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK
    return h ^ (h >> 31)


def float_int(f: float) -> int:
    f = f + 0.0
    return NAN_INT if f != f else int.from_bytes(_DOUBLE.pack(f), "little")


def vocab_code(vocab: dict[str, int], v: Any) -> int:
    """A categorical query value's code (-2 where no record has it); booleans as the model
    reads them, whichever format made the table (see :func:`~.features.category_code`)."""
    code = category_code(vocab, v)
    return -2 if code is None else code


def probe_one(keys: np.ndarray, rows: np.ndarray, key: int) -> int:
    n = len(keys)
    if n == 0:
        return -1
    pos = int(keys.searchsorted(keys.dtype.type(key)))  # a Python int here would make numpy convert the whole array
    return int(rows[pos]) if pos < n and int(keys[pos]) == key else -1


def str_hash(s: str) -> int:
    """Stable 63-bit hash of a string (task ids), the same in every process."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little") >> 1


def sorted_index(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and, for each, the first row (in table order) holding it."""
    uniq, first = np.unique(keys, return_index=True)
    return uniq, rows[first]


def probe(index_keys: np.ndarray, index_rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row for each key, or -1 (vectorised binary search)."""
    if len(index_keys) == 0 or len(keys) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    pos = np.searchsorted(index_keys, keys)
    pos[pos >= len(index_keys)] = 0
    hit = index_keys[pos] == keys
    return np.where(hit, index_rows[pos], -1)
