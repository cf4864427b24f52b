"""Scoring of quantile predictions: the pinball loss and the per-level metrics.

These are what models are compared on and what monitoring and the benchmarks report;
they depend on nothing else in the package, so they sit apart from the models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


EVAL_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def pinball_losses(y: np.ndarray, q: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Pinball loss of every row at every level, (rows, levels); ``q`` has shape (rows, levels)."""
    levels_arr = np.asarray(levels)[None, :]
    diff = y[:, None] - q
    return np.maximum(levels_arr * diff, (levels_arr - 1) * diff)


def pinball_loss(y: np.ndarray, q: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Mean pinball loss per level; ``q`` has shape (rows, levels)."""
    return pinball_losses(y, q, levels).mean(axis=0)


def quantile_metrics(y: np.ndarray, q: np.ndarray, levels: Sequence[float]) -> dict[str, Any]:
    """Held-out quality of quantile predictions ``q`` (rows x levels) against ``y``."""
    levels = list(levels)
    pin = pinball_loss(y, q, levels)
    coverage = (y[:, None] <= q).mean(axis=0)
    out: dict[str, Any] = {
        "pinball_loss": float(pin.mean()),
        "relative_pinball_loss": float(pin.mean() / y.mean()),
        "pinball_loss_per_level": {_lvl(t): float(v) for t, v in zip(levels, pin)},
        "coverage": {_lvl(t): float(c) for t, c in zip(levels, coverage)},
        "mean_abs_coverage_error": float(np.abs(coverage - np.asarray(levels)).mean()),
        "rows": int(len(y)),
    }
    # Central intervals formed by symmetric pairs of levels, e.g. 0.05/0.95 -> "0.9".
    intervals = {}
    for i, lo in enumerate(levels):
        for j, hi in enumerate(levels):
            if lo < 0.5 and abs(lo + hi - 1.0) < 1e-9:
                inside = (y >= q[:, i]) & (y <= q[:, j])
                intervals[_lvl(round(hi - lo, 6))] = float(inside.mean())
    if intervals:
        out["interval_coverage"] = intervals
    if 0.5 in levels:
        med = q[:, levels.index(0.5)]
        out["median_mape"] = float(np.mean(np.abs(med - y) / y))
    return out


def moment_metrics(y: np.ndarray, expect: np.ndarray, error: np.ndarray) -> dict[str, float]:
    """Held-out quality of predicted means ``expect`` and standard deviations ``error``, as a
    queue's total reads them: its mean is a sum of expects, its variance (tasks independent)
    a sum of squared errors.

    ``expect_ratio`` is the sum of the runtimes over the sum of their expects (1: unbiased;
    1.1: a queue of such tasks takes 10% longer than its expect), as monitoring measures it
    on observations; ``error_ratio`` (:func:`error_ratio`; absent where it is not defined)
    compares the deviations from the expects with the errors."""
    out = {"expect_ratio": float(y.sum() / expect.sum())}
    ratio = error_ratio(y, expect, error)
    if ratio is not None:
        out["error_ratio"] = ratio
    return out


def error_ratio(y: np.ndarray, expect: np.ndarray, error: np.ndarray) -> float | None:
    """The root of the summed squared deviations of ``y`` from ``expect`` over the root of the
    summed squared ``error``s (1: the errors are the deviations' size; 1.2: deviations 20%
    wider than stated, a total's interval too narrow).

    Sizes under a billionth of the runtimes' mean count as that (an error of 0 would make
    any deviation an infinite ratio, which JSON cannot carry: errors of 0 against runtimes
    that vary read about a billion times their spread). None where the deviations and the
    errors are both that small: runtimes that never vary, whose deviations are rounding,
    leave nothing to compare."""
    floor = len(y) * (1e-9 * float(np.abs(y).mean())) ** 2
    dev2 = float(((y - expect) ** 2).sum())
    err2 = float((error * error).sum())
    if not (dev2 > floor or err2 > floor):
        return None
    return math.sqrt(dev2 / max(err2, floor))


def _lvl(t: float) -> str:
    return f"{t:g}"
