"""A record's quantile function, and the answers of a table rendered as the model's.

:func:`quantile_function` reads values at any levels off a record's stored quantiles
(vectorised over records; :func:`quantiles_one` on Python floats for one record), with
the interval's ends merged in as knots (:func:`merge_interval_knots`) and log-slope
tails beyond the stored levels. :func:`choose_knot_levels` picks the further levels a
generated table stores so that those readings follow the model. :class:`TablePrediction`
holds a table's answers.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from ..distribution import TotalReading, interval_levels
from ..schemas import RenderedPredictions

_STD_NORMAL = NormalDist()


def merge_interval_knots(levels: list[float], values: list[float], cl: float, lo: float, hi: float) -> tuple[list[float], list[float]]:
    """A record's stored quantiles plus the ends of its stored central interval, as quantiles
    at (1 - cl) / 2 and (1 + cl) / 2: the interval is a pair of quantiles the model computed,
    so levels near it are interpolated from it rather than extrapolated past the stored ones."""
    knots = dict(zip(levels, values))
    for level, value in zip(interval_levels(cl), (lo, hi)):
        if all(abs(level - q) >= 1e-9 for q in levels):
            knots[level] = value
    L = sorted(knots)
    V, run = [], -math.inf
    for q in L:
        run = max(run, knots[q])
        V.append(run)
    return L, V


def merge_interval_knots_many(levels: np.ndarray, values: np.ndarray, cl: float,
                              interval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_interval_knots` for rows sharing their stored levels and confidence level."""
    extra = [(k, lv) for k, lv in enumerate(interval_levels(cl)) if not np.any(np.abs(levels - lv) < 1e-9)]
    if not extra:
        return levels, values
    L = np.concatenate([levels, [lv for _, lv in extra]])
    V = np.column_stack([values, interval[:, [k for k, _ in extra]]])
    order = np.argsort(L, kind="stable")
    return L[order], np.maximum.accumulate(V[:, order], axis=1)


def quantile_function(levels: np.ndarray, values: np.ndarray, mean: np.ndarray, std: np.ndarray,
                      taus: Sequence[float] | np.ndarray, bend: np.ndarray | None = None) -> np.ndarray:
    """Values at ``taus`` from records that store quantiles at ``levels``: (records, taus).

    Stored levels are answered as stored; levels between two stored ones by
    linear interpolation. Beyond the lowest or the highest stored level the log of
    the quantile goes on along the normal score at the slope of the two outermost
    stored ones (exact for a lognormal, never zero below, never flat above); above,
    no lower than a normal approximation from the record's mean and standard
    deviation either. (With the normal alone above, a right-skewed record's 0.995
    quantile came out at its stored 0.99 one: flat.) Records that cannot carry a
    log slope (one stored level, a quantile not above 0) get the normal
    approximation, floored at 0 below and at the highest stored quantile above.
    The result never decreases along increasing levels.

    ``taus`` is one set of levels for every record, in any order, or (records, k) levels
    of each record's own, increasing along each row (a total's nodes, each task at its
    own stratum of them). ``bend`` (per record, at least 1; 1 where not given) makes the
    interpolation between two stored levels ``lower + (upper - lower) * w ** bend`` for the
    share ``w`` of the way: convex, each stored level still answered as stored (how a total
    brings a right-skewed record's interpolated mean down to its stored one).
    """
    L = np.asarray(levels, dtype=np.float64)
    taus_a = np.asarray(taus, dtype=np.float64)
    shared = taus_a.ndim == 1
    order = np.argsort(taus_a, kind="stable") if shared else None
    t = taus_a[order][None, :] if shared else taus_a  # (1 or records, k), increasing along rows
    at = np.arange(values.shape[0])[:, None]
    # Each level by the first of these that applies to it: as stored; between two stored
    # levels; below the lowest; above the highest.
    i = np.searchsorted(L, t)
    lo, hi = np.clip(i - 1, 0, len(L) - 1), np.clip(i, 0, len(L) - 1)
    near_lo, near_hi = np.abs(L[lo] - t) < 1e-9, np.abs(L[hi] - t) < 1e-9
    exact = near_lo | near_hi
    inner = ~exact & (t > L[0]) & (t < L[-1])
    below = ~exact & ~inner & (t < L[0])
    above = ~exact & ~inner & ~below
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (t - L[lo]) / (L[hi] - L[lo])
        if bend is not None:  # (at least 1: convex; NaN reads as 1, linear)
            bent = np.flatnonzero(np.nan_to_num(bend, nan=1.0) > 1.0)
            if len(bent):
                w = np.array(np.broadcast_to(w, (values.shape[0], t.shape[1])))
                w[bent] = np.clip(w[bent], 0.0, 1.0) ** bend[bent, None]
        out = np.where(exact, values[at, np.where(near_lo, lo, hi)], values[at, lo] * (1 - w) + values[at, hi] * w)
    out = np.array(np.broadcast_to(out, (values.shape[0], t.shape[1])))
    # The tails, on the columns where some record is in one only (the outer levels).
    for side, outer, inner_k in ((below, 0, 1), (above, -1, -2)):
        cols = np.flatnonzero(side.any(axis=0))
        if not len(cols):
            continue
        z = ndtri(np.clip(t[:, cols], _TAIL_REACH, 1.0 - _TAIL_REACH))
        normal = mean[:, None] + std[:, None] * z
        if outer == 0:
            value = np.minimum(values[:, [0]], np.maximum(normal, 0.0))
        else:
            value = np.maximum(values[:, [-1]], normal)
        if len(L) >= 2:
            tail, ok = _log_slope_tail(values, L, outer, inner_k, z)
            value = np.where(ok[:, None], tail if outer == 0 else np.maximum(value, tail), value)
        out[:, cols] = np.where(side[:, cols], value, out[:, cols])
    out = np.maximum.accumulate(out, axis=1)
    if not shared:
        return out
    result = np.empty_like(out)
    result[:, order] = out
    return result


# Past 1e154 ms a queue's total overflows (its sum of squares): a table of 1e160 ms answered
# nulls in a 200. The bound is far above any runtime a model predicts: 1e17 ms at most
# (training takes up to 1e15 ms, and a model's quantiles stay within 100x its extremes).
# A tail read past the stored levels goes no higher either: two close stored levels far
# apart in value (0.5 and 0.5000001 at 1 and 2 ms) made a slope whose tail overflowed, and
# every answer of the record was a 500.
MAX_TABLE_RUNTIME = 1e100


def _log_slope_tail(values: np.ndarray, L: np.ndarray, outer: int, inner: int, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each record's values at normal scores ``z`` beyond its stored levels: the log of the
    quantile along the normal score through the stored levels ``outer`` (the outermost) and
    ``inner``, (records, levels); and where that holds (both quantiles above 0), per record."""
    v_out, v_in = values[:, outer], values[:, inner]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        slope = np.log(v_out / v_in) / (ndtri(L[outer]) - ndtri(L[inner]))
        tail = np.minimum(v_out[:, None] * np.exp(slope[:, None] * (z - ndtri(L[outer]))), MAX_TABLE_RUNTIME)
    return tail, (v_out > 0) & (v_in > 0)


# The tails are read at levels within [this, 1 - this]: a level of 0 or 1 (an interval of
# confidence 1 - 1e-16, whose upper end rounds to 1) has an infinite normal score.
_TAIL_REACH = 1e-12


def _log_slope_one(L: list[float], V: list[float], outer: int, inner: int, t: float) -> float | None:
    """:func:`_log_slope_tail` for one record, on Python floats (None where it does not hold)."""
    if V[outer] <= 0 or V[inner] <= 0:
        return None
    inv = _STD_NORMAL.inv_cdf
    z_out = inv(L[outer])
    power = math.log(V[outer] / V[inner]) / (z_out - inv(L[inner])) * (inv(t) - z_out)
    return min(V[outer] * math.exp(min(power, 700.0)), MAX_TABLE_RUNTIME)  # (math.exp raises past 709)


def quantiles_one(L: list[float], V: list[float], mu: float, sd: float, taus: Sequence[float]) -> list[float]:
    """:func:`quantile_function` for one record, on Python floats."""
    out = []
    inv = _STD_NORMAL.inv_cdf
    for t in taus:
        i = bisect_left(L, t)
        if i < len(L) and abs(L[i] - t) < 1e-9:
            out.append(V[i])
        elif i > 0 and abs(L[i - 1] - t) < 1e-9:
            out.append(V[i - 1])
        elif L[0] < t < L[-1]:
            w = (t - L[i - 1]) / (L[i] - L[i - 1])
            out.append(V[i - 1] * (1 - w) + V[i] * w)
        elif t < L[0]:
            t = max(t, _TAIL_REACH)  # (a level of 0, or 1 below: a confidence level of 1 - 1e-16 rounds to them)
            tail = _log_slope_one(L, V, 0, 1, t) if len(L) >= 2 else None
            out.append(min(V[0], max(mu + sd * inv(t), 0.0)) if tail is None else tail)
        else:
            t = min(t, 1.0 - _TAIL_REACH)
            tail = _log_slope_one(L, V, -1, -2, t) if len(L) >= 2 else None
            out.append(max(V[-1], mu + sd * inv(t), -math.inf if tail is None else tail))
    order = sorted(range(len(taus)), key=lambda k: taus[k])
    run = -math.inf
    for k in order:
        run = out[k] = max(run, out[k])
    return out


# The levels a generated table's records may store beyond the model's (``knot_levels``):
# even in normal score from 1e-4 to 1 - 1e-4 and in steps of 0.005, so that a mode's
# start (a jump of the quantile function) is bracketed to within a few thousandths.
KNOT_CANDIDATES = np.unique(np.round(np.concatenate([ndtr(np.linspace(-3.72, 3.72, 241)), np.arange(1, 200) * 0.005]), 6))
# What a candidate's miss counts for in the choice: the fourth root of its distance from the
# nearer end. Counted alike, a model with first-run tails spent 17 of its 24 knots above
# 0.98 and none between 0.0001 and 0.82 (the records' 90th percentile of the miss, over
# levels from 0.003 to 0.9999: 1.09% on average, 0.94% so; on a slow mode 1.25% and 1.00%).
KNOT_WEIGHTS = np.minimum(KNOT_CANDIDATES, 1.0 - KNOT_CANDIDATES) ** 0.25
# At most this many knots; fewer where the answers between them are already this close to
# the model's (the mean relative difference over the sampled records, at every candidate).
KNOT_MOST = 24
# The most a table generation may ask for (``knots``).
KNOT_LIMIT = 64
KNOT_TOLERANCE = 0.002
# Records the choice is made on (evenly spaced among the first chunk's).
KNOT_SAMPLE = 512


def choose_knot_levels(dist: Any, levels: Sequence[float], confidence_level: float, most: int = KNOT_MOST,
                       tolerance: float = KNOT_TOLERANCE, sample: int = KNOT_SAMPLE) -> list[float]:
    """The further levels a table's records store, beside ``levels`` and the interval's ends:
    greedily, the candidate where a record read off the knots so far (as its answers are,
    :func:`quantile_function`) is furthest from the model's distribution ``dist``, relatively
    and on average over a sample of its tasks, weighted by :data:`KNOT_WEIGHTS`; until
    ``most`` are chosen or none is off by ``tolerance``.

    Read off the model's levels alone, a table answered a 0.9 quantile of 1,667 ms where the
    model answers 364 (a slow mode that starts between its stored 0.75 and 0.99), and the
    H100 example's 0.999 quantiles 80% off at the median record.
    """
    n = len(dist)
    if n == 0 or most <= 0:
        return []
    d = dist.subset(np.unique(np.linspace(0, n - 1, min(n, sample)).astype(np.int64)))
    mean, std = d.mean_std()
    truth = d.quantiles(KNOT_CANDIDATES)
    base = np.array(sorted(set(map(float, levels)) | set(interval_levels(confidence_level))))
    base_values = d.quantiles(base)
    chosen: list[int] = []
    free = np.ones(len(KNOT_CANDIDATES), dtype=bool)
    free &= np.abs(KNOT_CANDIDATES[:, None] - base[None, :]).min(axis=1) >= 1e-9
    scale = np.maximum(truth, 1e-300)
    for _ in range(most):
        L = np.concatenate([base, KNOT_CANDIDATES[chosen]])
        order = np.argsort(L)
        V = np.concatenate([base_values, truth[:, chosen]], axis=1)[:, order]
        off = (np.abs(quantile_function(L[order], V, mean, std, KNOT_CANDIDATES) - truth) / scale).mean(axis=0)
        off[~free] = 0.0
        if off.max() < tolerance:
            break
        k = int(np.argmax(off * KNOT_WEIGHTS))
        chosen.append(k)
        free[k] = False
    return sorted(float(KNOT_CANDIDATES[k]) for k in chosen)


def round_significant(values: np.ndarray, digits: int = 7) -> np.ndarray:
    """``values`` (at least 0) to ``digits`` significant digits: a knot's value needs no more
    (the table's interpolation between knots is far coarser) and is written in half the bytes."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        exp = np.where(v > 0, digits - 1 - np.floor(np.log10(np.where(v > 0, v, 1.0))), 0)
    exp = np.minimum(exp, 300).astype(np.int64)  # (10 ** 308 is the float limit: under 1e-294 ms, fewer digits)
    out = v.copy()
    up, down = exp >= 0, exp < 0
    # Divided (or multiplied) by an exact power of ten, the rounded integer gives the double
    # nearest the short decimal, which JSON then writes as that decimal.
    out[up] = np.round(v[up] * 10.0 ** exp[up]) / 10.0 ** exp[up]
    out[down] = np.round(v[down] / 10.0 ** -exp[down]) * 10.0 ** -exp[down]
    return out


@dataclass
class TableCompletion:
    """When each task of a queue answered by a table is done: what its answer reads of the
    totals of its first 1, 2, ... tasks found, their means and standard deviations (the
    records'), and the bounds the tasks' own answers put on them (``completion_answers``)."""

    readings: list[TotalReading]
    expect: np.ndarray
    error: np.ndarray
    bounds: tuple[np.ndarray, np.ndarray]
    deadline_bound: np.ndarray | None


@dataclass
class TablePrediction(RenderedPredictions):
    """Answers from a lookup table, rendered like the model's :class:`~.service.Prediction`."""

    table: str
    levels: list[float] | None
    confidence_level: float
    ok: np.ndarray
    errors: list[str | None]
    items: list[dict[str, Any]]
    total: dict[str, Any] | None
    duration_seconds: float
    source: str = "lookup_table"
    deadline_ms: float | None = None
    completion: TableCompletion | None = None

    def results(self) -> list[dict[str, Any]]:
        return self.items

    def batch_extra(self) -> dict[str, Any]:
        return {"source": "lookup_table", "table": self.table}
