"""Readers of a stored model's JSON: checked numbers, arrays, column kinds, standardisations and atoms.

Every fitted part (design, location families, scale, shape, the model) reads its own
stored fields through these, so they sit below all of them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..distribution import MAX_ATOMS
from ..errors import shown


def finite_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def stored_number(v: Any, what: str) -> float:
    """A stored finite number (``float()`` reads the string "NaN" as one)."""
    if not finite_number(v):
        raise ValueError(f"{what} is {shown(v)}, not a finite number")
    return float(v)


def stored_numbers(values: Any, what: str, ndim: int = 1) -> np.ndarray:
    """A stored array of numbers, as floats; a null (NaN, as orjson writes it) reads as NaN.

    numpy alone reads the strings "NaN" or "1e9" as numbers: a damaged file was served.
    """
    a = np.asarray(values)
    if a.dtype == object:  # nulls, or integers beyond 64 bits, among the numbers
        flat = a.ravel().tolist()
        if not all(v is None or type(v) in (int, float) for v in flat):
            raise ValueError(f"{what} holds values that are not numbers")
        a = np.array([np.nan if v is None else v for v in flat], dtype=np.float64).reshape(a.shape)
    elif a.size and a.dtype.kind not in "iuf":
        raise ValueError(f"{what} holds values that are not numbers")
    if a.size and a.ndim != ndim:
        raise ValueError(f"{what} is not {'a list' if ndim == 1 else 'a table'} of numbers")
    return a.astype(np.float64)


def stored_finite_numbers(values: Any, what: str, ndim: int = 1) -> np.ndarray:
    """``stored_numbers`` that must all be finite: a fitted coefficient is never null (a null
    one made every location NaN, which is answered as the middle of the training runtimes:
    a damaged model served one runtime whatever the task)."""
    a = stored_numbers(values, what, ndim)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} holds a value that is not a finite number")
    return a


def stored_kinds(kinds: Any, n_categories: Any) -> list[str]:
    """A stored design's column kinds, checked against its category counts."""
    if not (isinstance(kinds, list) and all(k in ("numeric", "categorical", "unused") for k in kinds)):
        raise ValueError(f"kinds is {shown(kinds)}, not a list of numeric, categorical and unused")
    if not (isinstance(n_categories, list) and len(n_categories) == len(kinds)
            and all(type(n) is int and n >= 0 for n in n_categories)):
        raise ValueError(f"n_categories is {shown(n_categories)}, not a count of categories per column")
    return kinds


def standardisation(d: dict[str, Any], width: int) -> tuple[np.ndarray, np.ndarray]:
    """A stored design's centres and spreads, ``width`` of each, the spreads positive (one
    of 0 divided by zero; a negative one turned every effect round).

    A null (NaN) is a statistic that overflowed in a model stored before 2026-11-28, for a
    feature near the float limit: read as training now writes it (centre 0, the largest
    spread), a column about zero."""
    center, spread = stored_numbers(d["center"], "center"), stored_numbers(d["spread"], "spread")
    if not len(center) == len(spread) == width:
        raise ValueError(f"center and spread hold {len(center)} and {len(spread)} values for {width} columns")
    overflowed = np.isnan(center) | np.isnan(spread)
    if overflowed.any():
        center = np.where(overflowed, 0.0, center)
        spread = np.where(overflowed, np.finfo(np.float64).max, spread)
    if not (np.all(np.isfinite(center)) and np.all(spread > 0) and np.all(np.isfinite(spread))):
        raise ValueError("center must be finite and spread positive")
    return center, spread


def atoms_from_json(values: Any) -> np.ndarray:
    # Numbers only: numpy would read true as 1.0 and "3" as 3.0, and serve a damaged file.
    if not (isinstance(values, list) and len(values) <= MAX_ATOMS
            and all(type(v) in (int, float) for v in values)):
        raise ValueError(f"atoms must be a list of at most {MAX_ATOMS} numbers")
    atoms = np.asarray(values, dtype=np.float64)
    if not (np.all(np.isfinite(atoms)) and np.all(atoms > 0) and np.all(np.diff(atoms) > 0)):
        raise ValueError("atoms must be increasing positive runtimes")
    return atoms


def stretch_levels_from_json(d: Any) -> dict[str, Any] | None:
    """A stored model's test of its runtimes' level across stretches of the run (null: none
    was made, as in a model stored before it): reported, never read for an answer."""
    if d is None:
        return None
    if not (isinstance(d, dict) and set(d) == {"stretches", "p_value", "log_sd"}
            and type(d["stretches"]) is int and d["stretches"] > 1
            and finite_number(d["p_value"]) and 0 <= d["p_value"] <= 1
            and finite_number(d["log_sd"]) and d["log_sd"] >= 0):
        raise ValueError(f"stretch_levels is {shown(d)}, not the stretches, p_value and log_sd of a test of the level")
    return {"stretches": d["stretches"], "p_value": float(d["p_value"]), "log_sd": float(d["log_sd"])}
