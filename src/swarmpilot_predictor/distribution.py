"""Predicted runtime distributions, vectorised over a batch of tasks.

Every model in this package predicts, per task, a location ``m`` and a scale
``s`` on the log-runtime axis; the runtime is ``exp(m + s * Z)``. ``Z`` follows
a calibrated *score distribution* shared by all tasks of a model, stored as a
quantile function ``Q`` on a grid, optionally reshaped per task:

* without a shape model every task's ``Z`` has the quantile function ``Q``;
* with one, each task carries its own CDF values ``F_i(c_k)`` at a few knots
  ``c_k = Q(l_k)``; task ``i``'s quantile function is ``Q(phi_i(tau))`` where
  ``phi_i`` is the piecewise-linear map through ``(F_i(c_k), l_k)`` (and (0, 0),
  (1, 1)). Between two knots a task's ``Z`` is distributed like the shared
  ``Z`` between them, only the mass of each segment changes. That is how a
  task's chance of landing in a slow mode (a cold start, an aborted request)
  can depend on its features.

Quantiles at any level follow by interpolation, so they never cross and are
always positive. Moments are exact sums over the segments (precomputed
per segment, so a batch costs O(tasks x knots)), so ``expect`` and ``error``
are the mean and standard deviation of that distribution rather than summaries
of a few quantiles: of the distribution over the observed scores' range (the
mass beyond the most extreme score sits on it; the extrapolated tail gives
quantiles, not moments), capped at the log bounds as the quantiles are. Batch
totals are the distribution of the sum of independent tasks: an exact
convolution on a grid (FFT) of the tasks that matter most, plus a shifted-gamma
approximation for the sum of the many small ones.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import gammainc, ndtr, ndtri  # scipy.special: loaded by the service anyway

# Batch totals: up to this many tasks (all of a queue this short; of a longer one those
# with the largest variance, if each has at least _EXACT_SUM_MIN_SHARE of the total
# variance) are convolved exactly
# on a grid of _SUM_GRID cells, each discretised with _SUM_ATOMS nodes.
_EXACT_SUM_MAX_TASKS = 128
_EXACT_SUM_MIN_SHARE = 0.005
_SUM_GRID = 2048
# The grid grows (to at most this many cells) to reach the far tail of one task: no mass
# of the sum's far tail wraps around into its low end. Past that, cells widen up to 4x.
_SUM_GRID_MAX = 8192
_WRAP_MASS = 1e-5
# A total whose 1% quantile lies within this many cells of 0 is found again below its
# median on a fine grid of _LOW_END_GRID cells.
_LOW_END_CELLS = 64
_LOW_END_GRID = 2048
_LOW_END_PASSES = 4
_SUM_ATOMS = 512
_SUM_NODES: tuple[np.ndarray, np.ndarray] | None = None
# With a shared factor, the widest tasks (at most this many) bound the low end of the sum.
_BOUND_TASKS = 8
_BOUND_LEVELS: np.ndarray | None = None
# Lower bounds of a total's quantiles with the shared factor: shares of a level's budget
# (-log(1 - p)) left to the factor, the rest to one task.
_FLOOR_FACTOR_SHARES = np.array([0.02, 0.1, 0.3, 0.7, 0.9])
# Moment quadrature: about this many probability nodes in all, split over segments.
_MOMENT_NODES = 2048
# Heteroscedastic moments: segment tables on a log-scale grid with this step.
_LOG_SCALE_STEP = 0.02
_EPS = 1e-9
# Log-runtimes a quantile may take when nothing narrower is known: exp stays finite.
LOG_BOUNDS = (-700.0, 700.0)


# The outer scores a tail's slope is estimated from, at the least (when there are as many).
_TAIL_POINTS = 8


def _robust_slope(x: np.ndarray, z: np.ndarray) -> float:
    """Siegel's repeated-median slope of |z| on |x|: for each point the median of its
    slopes to the others, then the median of those. Half the points can be outliers."""
    if len(x) < 2:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.abs(z[:, None] - z[None, :]) / np.abs(x[:, None] - x[None, :])
    np.fill_diagonal(slopes, np.nan)
    return float(np.median(np.nanmedian(slopes, axis=1)))


@dataclass(frozen=True, eq=False)
class ScoreDistribution:
    """Quantile function of the standardised log-residual ``Z`` (levels -> values)."""

    levels: np.ndarray
    values: np.ndarray
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_scores(cls, scores: np.ndarray, max_points: int = 512) -> "ScoreDistribution":
        """Empirical quantile function with conformal plotting positions.

        The i-th smallest of n exchangeable scores is exceeded by a new score with
        probability (n + 1 - i) / (n + 1); placing it at level i / (n + 1) makes
        every level's coverage right on new data, not just on the training rows.
        """
        z = np.sort(np.asarray(scores, dtype=np.float64))
        z = z[np.isfinite(z)]
        n = len(z)
        if n == 0:
            raise ValueError("no scores to build a distribution from")
        levels = np.arange(1, n + 1) / (n + 1)
        if n > max_points:
            # Keep the extreme order statistics, thin the middle.
            grid = np.unique(np.concatenate([levels[:8], np.linspace(levels[0], levels[-1], max_points - 16), levels[-8:]]))
            z = np.interp(grid, levels, z)
            levels = grid
        return cls(levels, z)

    def quantile(self, tau: np.ndarray) -> np.ndarray:
        tau = np.clip(np.asarray(tau, dtype=np.float64), 1e-12, 1 - 1e-12)
        p, z = self.levels, self.values
        out = np.interp(tau, p, z)
        if len(p) >= 2:
            # Beyond the observed scores, continue with an exponential tail fitted
            # to the outer part of each side instead of clamping to the extreme.
            slope_lo, slope_hi = self._tail_slopes()
            hi = tau > p[-1]
            if hi.any():
                out[hi] = z[-1] + slope_hi * (np.log(1 - p[-1]) - np.log(1 - tau[hi]))
            lo = tau < p[0]
            if lo.any():
                out[lo] = z[0] - slope_lo * (np.log(p[0]) - np.log(tau[lo]))
        return out

    def quantile_at(self, levels: tuple[float, ...]) -> np.ndarray:
        """``quantile`` for a small tuple of levels, cached: requests reuse a few level sets."""
        key = ("q", levels)
        got = self._cache.get(key)
        if got is None:
            got = self.quantile(np.asarray(levels, dtype=np.float64))
            got.setflags(write=False)
            if len(self._cache) < 256:
                self._cache[key] = got
        return got

    def _memo(self, key: Any, compute: Callable[[], Any], limit: int | None = 256) -> Any:
        """``compute()``, kept under ``key`` while the cache holds fewer than ``limit`` entries (None: always)."""
        got = self._cache.get(key)
        if got is None:
            got = compute()
            if limit is None or len(self._cache) < limit:
                self._cache[key] = got
        return got

    def quantile_one(self, tau: float) -> float:
        """``quantile`` of one level, in plain floats."""
        p, z = self._memo("lists", lambda: (self.levels.tolist(), self.values.tolist()))
        if len(p) < 2:
            return z[0]
        tau = min(max(tau, 1e-12), 1 - 1e-12)
        if tau > p[-1]:
            return z[-1] + self._tail_slopes()[1] * (math.log(1 - p[-1]) - math.log(1 - tau))
        if tau < p[0]:
            return z[0] - self._tail_slopes()[0] * (math.log(p[0]) - math.log(tau))
        k = min(bisect.bisect_right(p, tau), len(p) - 1)  # levels are strictly increasing
        p0, p1 = p[k - 1], p[k]
        return z[k - 1] + (tau - p0) / (p1 - p0) * (z[k] - z[k - 1])

    def quantile_list(self, levels: tuple[float, ...]) -> list[float]:
        """``quantile_at`` as a list of floats (cached)."""
        return self._memo(("qlist", levels), lambda: self.quantile_at(levels).tolist())

    def _tail_slopes(self) -> tuple[float, float]:
        """Slopes of the exponential tails beyond the extreme scores, per unit of log tail probability.

        Each is a repeated-median slope (robust to outliers) through the outer
        scores: those within four times the extreme's tail probability, and at least
        ``_TAIL_POINTS`` of them. A secant through the extreme score alone carried
        every level beyond one far outlier among a few dozen runs to the runtime
        cap; the median follows the other outer scores, ties included.
        """
        got = self._cache.get("tails")
        if got is None:
            p, z = self.levels, self.values
            n = len(p)
            k = max(min(int(np.searchsorted(p, 1 - 4 * (1 - p[-1]))), n - _TAIL_POINTS), 0)
            hi = _robust_slope(-np.log1p(-p[k:]), z[k:])
            k = min(max(int(np.searchsorted(p, 4 * p[0], side="right")), _TAIL_POINTS), n)
            lo = _robust_slope(-np.log(p[:k]), z[:k])
            got = self._cache["tails"] = (lo, hi)
        return got

    # ------------------------------------------------------------------ moments

    def center(self) -> float:
        got = self._cache.get("center")
        if got is None:
            got = self._cache["center"] = float(np.interp(0.5, self.levels, self.values))
        return got

    def segment_nodes(self, knots: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Quadrature nodes on the probability axis for the segments between knots.

        Returns ``(z, weight, segment)``: node values of ``Z``, their probability
        mass, and the index of the segment (0 .. len(knots)) they belong to. Each
        segment is cut into equal-probability bins; the outermost bins are cut
        again geometrically so that the tails' contribution is not lost.
        """
        key = ("nodes", knots)
        got = self._cache.get(key)
        if got is not None:
            return got
        edges = np.concatenate([[0.0], np.asarray(knots, dtype=np.float64), [1.0]])
        per = max(8, _MOMENT_NODES // (len(edges) - 1))
        us, ws, segs = [], [], []
        for k in range(len(edges) - 1):
            a, b = edges[k], edges[k + 1]
            e = np.linspace(a, b, per + 1)
            parts = [e]
            if a == 0.0:
                first = e[1]
                parts.append(first * 4.0 ** -np.arange(1, 12))
            if b == 1.0:
                last = 1 - e[-2]
                parts.append(1 - last * 4.0 ** -np.arange(1, 12))
            e = np.unique(np.concatenate(parts))
            e[0], e[-1] = a, b
            us.append((e[:-1] + e[1:]) / 2)
            ws.append(np.diff(e))
            segs.append(np.full(len(e) - 1, k))
        u = np.concatenate(us)
        # Moments use the scores as observed: the mass beyond the most extreme score
        # sits on it. An extrapolated tail may hold quantiles, not mean and variance,
        # where a 1-in-a-million value would otherwise dominate: integrated (to the
        # 100x cap), it made a task's sd 1.14x the true one under lognormal noise of
        # sigma 1 and 8x under Pareto(2.5) noise, and long queues' totals too wide
        # (README, Modelling).
        u = np.clip(u, self.levels[0], self.levels[-1])
        got = (self.quantile(u), np.concatenate(ws), np.concatenate(segs))
        self._cache[key] = got
        return got

    def segment_moments(self, knots: tuple[float, ...], scale: float) -> np.ndarray:
        """Per segment, the mass-weighted sums of ``D**j`` (j = 1..4), ``D = exp(s (Z - z0)) - 1``.

        Shape (segments, 4); dividing by a segment's mass gives its conditional moments.
        Cached: a homoscedastic model asks for the same scale on every prediction.
        """
        key = ("moments", knots, scale)
        got = self._cache.get(key)
        if got is not None:
            return got
        z, w, seg = self.segment_nodes(knots)
        d = np.expm1(scale * (z - self.center()))
        powers = np.stack([d, d * d, d * d * d, (d * d) * (d * d)], axis=1) * w[:, None]
        out = np.zeros((len(knots) + 1, 4))
        np.add.at(out, seg, powers)
        if len(self._cache) < 64:
            self._cache[key] = out
        return out

    def central_factors(self, scale: float) -> tuple[float, float, float, float]:
        """Mean of ``D`` and central moments 2..4 of ``1 + D`` for the unshaped ``Z`` (cached)."""
        key = ("central", scale)
        got = self._cache.get(key)
        if got is None:
            raw = self.segment_moments((), scale)[0]
            mu = raw[0]
            c2 = max(raw[1] - mu**2, 0.0)
            c3 = raw[2] - 3 * mu * raw[1] + 2 * mu**3
            c4 = max(raw[3] - 4 * mu * raw[2] + 6 * mu**2 * raw[1] - 3 * mu**4, 0.0)
            got = (float(mu), float(c2), float(c3), float(c4))
            if len(self._cache) < 256:
                self._cache[key] = got
        return got

    def segment_moment_table(self, knots: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``segment_moments / s**j`` on a grid of ``log s``: (grid, table[grid, segment, j])."""
        key = ("table", knots)
        got = self._cache.get(key)
        if got is None:
            grid = np.arange(-3.0, 3.0 + _LOG_SCALE_STEP / 2, _LOG_SCALE_STEP)
            z, w, seg = self.segment_nodes(knots)
            s = np.exp(grid)[:, None]
            d = np.expm1(s * (z - self.center())[None, :]) / s  # (grid, nodes), ~ Z - z0 for small s
            table = np.zeros((len(grid), len(knots) + 1, 4))
            for j in range(4):
                contrib = d ** (j + 1) * w[None, :]
                for k in range(len(knots) + 1):
                    table[:, k, j] = contrib[:, seg == k].sum(axis=1)
            got = self._cache[key] = (grid, table)
        return got

    def segment_moments_list(self, knots: tuple[float, ...], scale: float) -> list[list[float]]:
        """``segment_moments`` as nested lists [j][segment] (cached alongside)."""
        return self._memo(("moments_list", knots, scale), lambda: self.segment_moments(knots, scale).T.tolist(), 64)

    def segment_moment_table_list(self, knots: tuple[float, ...]) -> tuple[float, list[list[list[float]]]]:
        """``segment_moment_table`` as (first grid point, nested lists [grid][j][segment])."""

        def compute():
            grid, table = self.segment_moment_table(knots)
            return float(grid[0]), table.transpose(0, 2, 1).tolist()

        return self._memo(("table_list", knots), compute, limit=None)

    def to_json(self) -> dict[str, Any]:
        return {"levels": self.levels.tolist(), "values": self.values.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ScoreDistribution":
        return cls(np.asarray(d["levels"], dtype=np.float64), np.asarray(d["values"], dtype=np.float64))


@dataclass
class RuntimeDistribution:
    """The predicted runtime distributions of a batch of tasks (in ms)."""

    location: np.ndarray  # m, per task, log-ms
    scale: np.ndarray  # s, per task
    score: ScoreDistribution
    knots: tuple[float, ...] | None = None  # levels l_k of the shared Z where tasks' CDFs are given
    cdf: np.ndarray | None = None  # (tasks, knots): F_i(Q(l_k)), strictly increasing along knots
    # Quantiles are kept within these log-runtimes (the model's: 100x beyond its training
    # extremes), so that a far tail extrapolated from a few wild rows stays finite and sane.
    log_bounds: tuple[float, float] = LOG_BOUNDS
    # The model's own uncertainty about the level of every runtime (log sd of a factor common
    # to all tasks): nothing for one task, whose calibration holds it, but a queue's tasks
    # share it, so it does not average out of their total.
    shared_log_sd: float = 0.0
    _moments: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.location)

    def subset(self, rows: np.ndarray) -> "RuntimeDistribution":
        return RuntimeDistribution(self.location[rows], self.scale[rows], self.score, self.knots,
                                   None if self.cdf is None else self.cdf[rows], self.log_bounds, self.shared_log_sd)

    # ------------------------------------------------------------------ quantiles

    def score_quantiles(self, levels: np.ndarray) -> np.ndarray:
        """Quantiles of each task's ``Z`` at sorted ``levels``: (tasks, levels)."""
        levels = np.asarray(levels, dtype=np.float64)
        if self.cdf is None:
            return np.broadcast_to(self.score.quantile(levels), (len(self), len(levels)))
        F = self.cdf
        n = len(F)
        lk = np.asarray(self.knots)
        Fp = np.concatenate([np.zeros((n, 1)), F, np.ones((n, 1))], axis=1)
        lp = np.concatenate([[0.0], lk, [1.0]])
        rows = np.arange(n)[:, None]
        idx = (F[:, None, :] < levels[None, :, None]).sum(axis=2)  # (n, levels): segment index
        f0 = Fp[rows, idx]
        f1 = Fp[rows, idx + 1]
        frac = (levels[None, :] - f0) / np.maximum(f1 - f0, 1e-300)
        u = lp[idx] + np.clip(frac, 0.0, 1.0) * (lp[idx + 1] - lp[idx])
        return self.score.quantile(u.ravel()).reshape(n, len(levels))

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        """Runtime at each level, shape (tasks, levels); non-decreasing along levels."""
        if self.cdf is None and len(levels) <= 64:
            # One shared shape: Z's quantiles are the same for every task (and monotone in
            # the level, so no sorting is needed); only location and scale vary.
            z = self.score.quantile_at(tuple(float(v) for v in levels))
            return np.exp(np.clip(self.location[:, None] + self.scale[:, None] * z[None, :], *self.log_bounds))
        levels = np.asarray(levels, dtype=np.float64)
        order = np.argsort(levels)
        z = self.score_quantiles(levels[order])
        z = np.maximum.accumulate(z, axis=1)
        q = np.exp(np.clip(self.location[:, None] + self.scale[:, None] * z, *self.log_bounds))
        out = np.empty_like(q)
        out[:, order] = q
        return out

    def interval(self, confidence_level: float) -> np.ndarray:
        """Central interval holding ``confidence_level`` of the mass, shape (tasks, 2)."""
        a = (1.0 - confidence_level) / 2.0
        return self.quantiles([a, 1.0 - a])

    # ------------------------------------------------------------------ moments

    def _segment_masses(self) -> np.ndarray:
        if self.cdf is None:
            return np.ones((len(self), 1))
        n = len(self)
        Fp = np.concatenate([np.zeros((n, 1)), self.cdf, np.ones((n, 1))], axis=1)
        return np.diff(Fp, axis=1)

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean, variance, and third and fourth central moments per task."""
        if self._moments is None:
            self._moments = self._compute_moments()
        return self._moments

    def _compute_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        moments = self._uncapped_moments()
        capped = self._capped_rows()
        if capped.any():
            # Quantiles stop at the log bounds: so do the moments of these tasks.
            for out, got in zip(moments, self.subset(capped)._capped_moments()):
                out[capped] = got
        return moments

    def _capped_rows(self) -> np.ndarray:
        """Tasks whose moments the log bounds change: their moment nodes (the observed
        scores' range) reach past the upper bound, or more than a thousandth of their mass
        lies below the lower one. Less than that below a floor 100x under the fastest
        training runtime moves the mean by under a thousandth of it, and a low score that
        reaches past the floor is common (one outlier among the training residuals) while
        the exact moments cost a quadrature per task."""
        z_low, z1 = _capping_scores(self.score)
        lo, hi = self.log_bounds
        m, s = self.location, self.scale
        return (m + s * z1 > hi) | (m + s * z_low < lo)

    def _capped_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Moments by direct quadrature over the moment nodes, runtimes clipped to the log bounds."""
        knots = self.knots if self.cdf is not None else ()
        z, w, seg = self.score.segment_nodes(knots)
        lk = np.concatenate([[0.0], np.asarray(knots, dtype=np.float64), [1.0]])
        weights = (self._segment_masses() / np.diff(lk)[None, :])[:, seg] * w[None, :]  # (n, nodes)
        x = np.exp(np.clip(self.location[:, None] + self.scale[:, None] * z[None, :], *self.log_bounds))
        mean = np.einsum("nk,nk->n", weights, x)
        d = x - mean[:, None]
        d2 = d * d
        return (mean, np.einsum("nk,nk->n", weights, d2), np.einsum("nk,nk->n", weights, d2 * d),
                np.einsum("nk,nk->n", weights, d2 * d2))

    def _uncapped_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n = len(self)
        s = self.scale
        if n and self.cdf is None and s.min() == s.max():
            # Shared shape and scale: the moments of exp(s (Z - z0)) are constants of the model.
            mu, c2, c3, c4 = self.score.central_factors(float(s[0]))
            base = np.exp(self.location + s * self.score.center())
            return base * (1 + mu), base**2 * c2, base**3 * c3, base**4 * c4
        knots = self.knots if self.cdf is not None else ()
        lk = np.concatenate([[0.0], np.asarray(knots, dtype=np.float64), [1.0]])
        global_mass = np.diff(lk)
        weights = self._segment_masses() / global_mass[None, :]  # (n, segments)
        s = self.scale
        if n == 0:
            e = np.zeros(0)
            return e, e, e, e
        if np.all(s == s[0]):
            per_seg = self.score.segment_moments(knots, float(s[0]))  # (segments, 4)
            raw = weights @ per_seg  # raw moments of D, (n, 4)
        else:
            grid, table = self.score.segment_moment_table(knots)
            t = (np.log(np.maximum(s, 1e-12)) - grid[0]) / _LOG_SCALE_STEP
            i0 = np.clip(np.floor(t).astype(np.int64), 0, len(grid) - 2)
            f = np.clip(t - i0, 0.0, 1.0)[:, None, None]
            tab = table[i0] * (1 - f) + table[i0 + 1] * f  # (n, segments, 4)
            raw = np.einsum("ns,nsj->nj", weights, tab) * (s[:, None] ** np.arange(1, 5)[None, :])
        mu = raw[:, 0]
        c2 = np.maximum(raw[:, 1] - mu**2, 0.0)
        c3 = raw[:, 2] - 3 * mu * raw[:, 1] + 2 * mu**3
        c4 = np.maximum(raw[:, 3] - 4 * mu * raw[:, 2] + 6 * mu**2 * raw[:, 1] - 3 * mu**4, 0.0)
        base = np.exp(self.location + s * self.score.center())
        return base * (1 + mu), base**2 * c2, base**3 * c3, base**4 * c4

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean, var, _, _ = self.moments()
        return mean, np.sqrt(var)

    # ------------------------------------------------------------------ sums

    def total(self) -> "TotalDistribution":
        """Distribution of the sum of these tasks' runtimes, tasks independent.

        Tasks that carry a noticeable share of the variance (at most
        ``_EXACT_SUM_MAX_TASKS`` of them, those with the largest variance) are
        each discretised and convolved exactly (FFT on a grid spanning the
        total's likely range); the many small ones, whose sum the central limit
        theorem makes smooth, enter as one shifted gamma distribution with their
        summed mean, variance and third cumulant. Mean and variance are the exact
        sums of the tasks' moments.

        The sum is then multiplied by the model's shared factor (``shared_log_sd``):
        a lognormal of mean 1, independent of the tasks' own noise. The model's error
        about the level of every runtime is one error for the whole queue; summed over
        many tasks, the tasks' own noise averages out and it does not.
        """
        n = len(self)
        mean, var, m3, _ = self.moments()
        k1, k2 = float(mean.sum()), float(var.sum())
        if n == 1:
            return TotalDistribution(k1, k2, self)
        if n == 0 or k2 <= 0 or not np.isfinite(k2):
            return TotalDistribution(k1, max(k2, 0.0), None, np.array([k1]), np.ones(1))
        order = np.argsort(var)[::-1][:_EXACT_SUM_MAX_TASKS]
        # A queue short enough is convolved whole: a few small tasks with a rare slow mode
        # summed by moments (a shifted gamma) put a 20-task total's median 10% off, and a
        # 100-task total of tasks 200x slower 0.5% of the time 0.47 off in probability
        # (128 whole take up to ~35 ms here, 256 up to ~45: the longer, the slower; 1000 took 60).
        exact = order if n <= _EXACT_SUM_MAX_TASKS else order[var[order] >= _EXACT_SUM_MIN_SHARE * k2]
        small = np.ones(n, dtype=bool)
        small[exact] = False
        rest = (float(mean[small].sum()), float(var[small].sum()), float(m3[small].sum())) if small.any() else None
        edges, at_edges, cells = self.subset(exact)._convolve(rest, float(np.sqrt(k2)))
        tau = self.shared_log_sd
        if tau > 0:
            # S is at least each task: the widest tasks' CDFs bound S's where the grid is coarse.
            widest = (exact if len(exact) else order)[:_BOUND_TASKS]
            bound = self.subset(widest).quantiles(_bound_levels())
            edges, at_edges = _times_shared_factor(edges, at_edges, tau, bound, cells)
            k2 = math.exp(tau * tau) * k2 + math.expm1(tau * tau) * k1 * k1  # Var(MS), E[M] = 1
            return TotalDistribution(k1, k2, edges=edges, edge_cdf=at_edges, tasks=self, shared_log_sd=tau)
        return TotalDistribution(k1, k2, edges=edges, edge_cdf=at_edges, tasks=self)

    def _convolve(self, rest: tuple[float, float, float] | None, sd: float) -> tuple[np.ndarray, np.ndarray, int]:
        """The CDF of the sum of these tasks (and of ``rest``): increasing values, the CDF at
        them (linear in between), and the number of cells of the grid it was found on.

        Circular convolution on an even grid of cells of ``32 sd / _SUM_GRID`` spanning
        [mean - 8 sd, mean + 24 sd] of the total, or further up to reach the largest value
        of any task plus the others' typical sum (then with more cells, up to
        ``_SUM_GRID_MAX``, and wider ones, up to 4x, where more than ``_WRAP_MASS`` would
        lie beyond): every value is put in the cell of its residue, so tasks need not fit
        the window one by one, only their sum does.

        A task's values are rounded to cells after a shift of the task's own (a fraction
        of a cell) that puts its median on a cell; the sum of the shifts and of the
        rounding's mean errors then moves the whole grid. So the sum's mean is exact
        however narrow the tasks are next to a cell, and a narrow task's rounding does not
        add up over the tasks: neither does it blur the total, as splitting each value's
        mass between two cells would.
        """
        G = _SUM_GRID
        u, wu = _sum_nodes()
        # The window is placed about the mean of the sum as discretised (the tasks' far tails included).
        mean = 0.0 if rest is None else rest[0]
        floor = 0.0 if rest is None else rest[0] - 8.0 * math.sqrt(max(rest[1], 0.0))
        reach = 0.0
        if len(self):
            z = self.score_quantiles(u)  # (tasks, nodes), non-decreasing along nodes: tails included
            x = np.exp(np.clip(self.location[:, None] + self.scale[:, None] * z, *self.log_bounds))
            node_mean = x @ wu
            mean += float(node_mean.sum())
            floor += float(x[:, 0].sum())
            reach = float((x[:, -1] - node_mean).max())  # the furthest one task lies above its mean
            # ``sd`` comes from the moments, which leave out tails extrapolated past the
            # observed scores; the nodes do not. Where such a tail is heavy, their mean lies
            # many moment ``sd`` above most of the sum's mass, which would wrap around: the
            # window is sized on the nodes' spread. It need not start below the sum of the
            # tasks' lowest values, where the sum's mass starts.
            node_var = float((((x - node_mean[:, None]) ** 2) @ wu).sum())
            sd = max(sd, math.sqrt(node_var + (0.0 if rest is None else max(rest[1], 0.0))))
        h = 32.0 * sd / G
        top = mean + 24.0 * sd + max(reach - 16.0 * sd, 0.0) * (1 - 1e-9)
        low = max(mean - 8.0 * sd, floor) if len(self) else mean - 8.0 * sd
        span = top - low

        def wraps(width: float) -> bool:
            # Whether more than _WRAP_MASS would wrap around a window this wide (one task
            # far up, the others typical): only then is the window worth its cost (the FFT's
            # grows with it: a 50-task total took 3x longer on 8192 cells than on 2048).
            above = low + width - 8.0 * sd - mean + node_mean  # per task
            return float(((x > above[:, None]) * wu).sum()) > _WRAP_MASS

        if G * h < span and len(self):
            while G * h < span and G < _SUM_GRID_MAX and wraps(G * h):
                G *= 2
            # Still short of a task's farthest values: wider cells (up to 4x), unless the mass
            # that would wrap around is negligible.
            for widen in (1.0, 2.0, 4.0):
                if widen == 4.0 or not wraps(G * h * widen):
                    h *= widen
                    break
        rows = len(self) + (rest is not None)
        pmf = np.zeros((rows, G))
        shift = 0.0  # in cells: a sum of labels j stands for the value (j + shift) * h
        if len(self):
            t = np.minimum(x / h, 1e300)
            mid = t[:, int(np.searchsorted(u, 0.5))]
            offset = mid - np.floor(mid)  # each task's shift: its median falls on a cell
            t -= offset[:, None]
            cell = np.rint(t)
            # Rounding's mean error per task; none where a value's cell number is beyond exact floats.
            err = np.where(t < 2.0**50, cell - t, 0.0) @ wu
            shift += float(offset.sum() - err.sum())
            # The residue is taken in floating point (exact): a far-tail value's cell
            # number may not fit an integer.
            idx = np.mod(cell, G).astype(np.int64)
            flat = (np.arange(len(x))[:, None] * G + idx).ravel()
            pmf[: len(x)] = np.bincount(flat, weights=np.broadcast_to(wu, x.shape).ravel(), minlength=len(x) * G).reshape(len(x), G)
        if rest is not None:
            r_mean, r_var, r_m3 = rest
            r_sd = float(np.sqrt(max(r_var, 0.0)))
            offset = r_mean / h - math.floor(r_mean / h)
            first = int(np.floor((r_mean - 8.0 * r_sd) / h - offset)) - 1
            cells = first + np.arange(min(G, int(32.0 * r_sd / h) + 3))
            at = (np.concatenate([cells, [cells[-1] + 1]]) - 0.5 + offset) * h
            mass = np.diff(_shifted_gamma_cdf(at, r_mean, r_var, r_m3))
            if mass.sum() > 0:
                shift += offset - (float(mass @ cells) / float(mass.sum()) + offset - r_mean / h)
            np.add.at(pmf[-1], np.mod(cells, G), mass)
        if rows == 1:
            total = pmf[0]
        else:
            total = np.fft.irfft(np.prod(np.fft.rfft(pmf, axis=1), axis=0), n=G)
        # Cell j holds the labels j + (any multiple of G); unwrap into the window.
        k0 = int(np.floor(low / h - shift))
        total = np.maximum(np.roll(total, -(k0 % G)), 0.0)
        cdf = np.cumsum(total)
        cdf /= cdf[-1]
        # Mass is spread evenly within each cell: the CDF is linear between cell edges.
        edges = (k0 + np.arange(G + 1) - 0.5 + shift) * h
        c = np.concatenate([[0.0], cdf])
        # Where the total's low quantiles lie within a few cells of 0 (one task's spread
        # dwarfs the others'), they are found again on a fine grid up to past the median;
        # and again on a finer one while that grid is still too coarse for them (a tail
        # spanning decades: one 1000x outlier among thirty runs).
        cell = h
        for _ in range(_LOW_END_PASSES):
            p01, median = np.interp([0.01, 0.5], c + np.arange(len(c)) * 1e-15, edges)
            if not (len(self) and p01 < _LOW_END_CELLS * cell and -4.0 * cell < median < edges[-1]):
                break
            limit = float(median + 4.0 * cell) / 0.95
            if cell < h and limit > 0.5 * cell * _LOW_END_GRID:
                break  # no finer than the last pass
            low_x, low_c = self._low_end(x, wu, rest, limit)
            cell = limit / _LOW_END_GRID
            keep = edges > low_x[-1]
            edges = np.concatenate([low_x, edges[keep]])
            c = np.concatenate([low_c, np.maximum(c[keep], low_c[-1])])
        return edges, c, G

    def _low_end(self, x: np.ndarray, wu: np.ndarray, rest: tuple[float, float, float] | None,
                 limit: float) -> tuple[np.ndarray, np.ndarray]:
        """The CDF of the sum of these tasks (values ``x`` at nodes ``u``, weights ``wu``) and of
        ``rest`` below ``limit``: values from 0 and the CDF at them (linear in between).

        Runtimes are positive, so the sum is below ``limit`` only if every part is: each
        part's mass below ``limit`` on a fine grid, convolved pairwise and cut to the grid
        after each step, is the sum's exactly there. A value's mass is split between its
        two cells (its mean kept) rather than rounded: on this fine a grid it blurs little.
        """
        G = _LOW_END_GRID
        h = limit / G
        t = x / h
        inside = t < G - 1
        cell = np.floor(np.where(inside, t, 0.0)).astype(np.int64)
        frac = np.where(inside, t, 0.0) - cell
        w = np.broadcast_to(wu, x.shape) * inside
        n = len(x)
        pmf = np.zeros((n + (rest is not None), G + 1))
        base = (np.arange(n)[:, None] * (G + 1))
        pmf[:n] = (np.bincount((base + cell).ravel(), weights=(w * (1.0 - frac)).ravel(), minlength=n * (G + 1))
                   + np.bincount((base + cell + 1).ravel(), weights=(w * frac).ravel(), minlength=n * (G + 1))
                   ).reshape(n, G + 1)
        if rest is not None:
            at = (np.arange(G + 1) + 0.5) * h
            pmf[-1] = np.diff(_shifted_gamma_cdf(at, *rest), prepend=0.0)
        pmf = pmf[:, :G]
        while len(pmf) > 1:
            odd = pmf[-1:] if len(pmf) % 2 else None
            pairs = pmf[: len(pmf) // 2 * 2]
            f = np.fft.rfft(pairs, 2 * G, axis=1)
            pmf = np.maximum(np.fft.irfft(f[0::2] * f[1::2], 2 * G, axis=1)[:, :G], 0.0)
            if odd is not None:
                pmf = np.concatenate([pmf, odd])
        # Mass at j h stands for [j - 1/2, j + 1/2) h; kept below 0.95 limit, clear of the cut.
        keep = int(0.95 * G)
        return (np.arange(keep + 1) - 0.5).clip(0.0) * h, np.concatenate([[0.0], np.cumsum(pmf[0, :keep])])


def describe_one(
    location: float,
    scale: float,
    score: ScoreDistribution,
    levels: tuple[float, ...],
    constant_scale: bool,
    knots: tuple[float, ...] | None = None,
    cdf: list[float] | None = None,
    log_bounds: tuple[float, float] = LOG_BOUNDS,
) -> tuple[list[float], float, float]:
    """One task's quantiles at ``levels``, mean and standard deviation, in plain floats.

    The same distribution as a one-row :class:`RuntimeDistribution`, without its
    dozens of numpy calls on length-one arrays (a lone prediction's latency).
    ``constant_scale`` says the model's scale never varies, so the moment
    factors of that one scale are cached; otherwise they are interpolated in
    ``log s`` as a batch does.
    """
    if cdf is None:
        z = score.quantile_list(levels)
    else:
        z = _shaped_score_quantiles(score, levels, knots, cdf)
    lo, hi = log_bounds
    q = [math.exp(min(max(location + scale * v, lo), hi)) for v in z]
    z_low, z_high = _capping_scores(score)
    if location + scale * z_high > hi or location + scale * z_low < lo:  # as RuntimeDistribution._capped_rows
        # Clipped by the log bounds (far outside the training range): moments of the clipped runtime.
        one = RuntimeDistribution(np.array([location]), np.array([scale]), score, knots if cdf is not None else None,
                                  None if cdf is None else np.array([cdf], dtype=np.float64), log_bounds)
        mean, std = one.mean_std()
        return q, float(mean[0]), float(std[0])
    base = math.exp(location + scale * score.center())
    if cdf is None and constant_scale:
        mu, c2, _, _ = score.central_factors(scale)
        return q, base * (1 + mu), base * math.sqrt(c2)
    seg_knots = knots if cdf is not None else ()
    if cdf is None:
        weights = [1.0]
    else:
        bounds = [0.0, *cdf, 1.0]
        edges = [0.0, *seg_knots, 1.0]
        weights = [(bounds[k + 1] - bounds[k]) / (edges[k + 1] - edges[k]) for k in range(len(edges) - 1)]
    if constant_scale:
        cols = score.segment_moments_list(seg_knots, scale)  # [j][segment]
        raw1, raw2 = (sum(map(float.__mul__, weights, cols[j])) for j in (0, 1))
    else:
        grid0, table = score.segment_moment_table_list(seg_knots)  # [grid][j][segment]
        t = (math.log(max(scale, 1e-12)) - grid0) / _LOG_SCALE_STEP
        i0 = min(max(math.floor(t), 0), len(table) - 2)
        f = min(max(t - i0, 0.0), 1.0)
        lo, hi = table[i0], table[i0 + 1]
        raw1, raw2 = (
            ((1 - f) * sum(map(float.__mul__, weights, lo[j])) + f * sum(map(float.__mul__, weights, hi[j])))
            * scale ** (j + 1)
            for j in (0, 1)
        )
    mu = raw1
    c2 = max(raw2 - mu * mu, 0.0)
    return q, base * (1 + mu), base * math.sqrt(c2)


def _shaped_score_quantiles(score: ScoreDistribution, levels: tuple[float, ...], knots: tuple[float, ...],
                            cdf: list[float]) -> list[float]:
    """``RuntimeDistribution.score_quantiles`` for one task (made non-decreasing as ``quantiles`` does)."""
    F = cdf
    Fp = [0.0, *F, 1.0]
    lp = [0.0, *knots, 1.0]
    order = sorted(range(len(levels)), key=levels.__getitem__)
    u = []
    for i in order:
        tau = levels[i]
        k = bisect.bisect_left(F, tau)  # segment: the number of knots with F < tau
        f0, f1 = Fp[k], Fp[k + 1]
        frac = min(max((tau - f0) / max(f1 - f0, 1e-300), 0.0), 1.0)
        u.append(lp[k] + frac * (lp[k + 1] - lp[k]))
    zs = [score.quantile_one(v) for v in u]
    out = [0.0] * len(levels)
    top = -math.inf
    for i, v in zip(order, zs):
        top = max(top, v)
        out[i] = top
    return out


def _capping_scores(score: ScoreDistribution) -> tuple[float, float]:
    """The scores whose runtimes, past a log bound, make a task's moments those of the clipped
    runtime: its score at the level 0.001, and its highest observed score."""
    return score.quantile_list((1e-3,))[0], float(score.values[-1])


def _sum_nodes() -> tuple[np.ndarray, np.ndarray]:
    """Probability nodes and weights for discretising one task: equal bins, finer tails."""
    global _SUM_NODES
    if _SUM_NODES is None:
        e = np.linspace(0.0, 1.0, _SUM_ATOMS + 1)
        tail = e[1] * 4.0 ** -np.arange(1, 8)
        e = np.unique(np.concatenate([e, tail, 1 - tail]))
        _SUM_NODES = ((e[:-1] + e[1:]) / 2, np.diff(e))
    return _SUM_NODES


def _bound_levels() -> np.ndarray:
    global _BOUND_LEVELS
    if _BOUND_LEVELS is None:
        _BOUND_LEVELS = np.unique(np.concatenate([np.geomspace(1e-9, 0.01, 64), np.linspace(0.01, 0.99, 385),
                                                  1 - np.geomspace(0.01, 1e-9, 64)]))
    return _BOUND_LEVELS


def _times_shared_factor(edges: np.ndarray, c: np.ndarray, tau: float, bound: np.ndarray | None = None,
                         cells: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The CDF of ``M S`` at increasing values, from that of ``S`` (``c`` at ``edges``, linear
    in between; found on a grid of ``cells`` cells), ``log M ~ N(-tau^2 / 2, tau^2)``
    independent of ``S``.

    ``bound`` holds some tasks' quantiles at :func:`_bound_levels` (one row each):
    ``S`` is at least each of them, so its CDF is at most theirs, which resolves the
    low end of a total that the even grid's cells are too wide for, and its far tail
    beyond the grid (the log grid reaches the tasks' quantiles at 1 - 1e-9).

    On a log scale the factor adds a normal variable: ``log S``'s mass, laid on an
    even grid of log values, is blurred by a normal kernel (one full convolution, so
    no mass is lost off either end). The result stays on that log grid, where its
    resolution is relative: a wide factor's long right tail needs no more cells.
    """
    G = len(edges) - 1 if cells is None else cells
    # Runtimes are positive: the log grid starts where the total's mass does (any mass
    # below a billionth of its top is put there).
    lo = float(np.interp(1e-12, c, edges)) if c[1] < 1e-12 else float(edges[0])
    lo = max(lo, edges[-1] * 1e-9, 1e-300)
    # Cells fine enough for S's shape on a log scale, or for the kernel if it is far wider
    # (S's detail is then blurred away): 2G + 1 values over S's span, a kernel of at most
    # 1201; then on, up to 2G more, to the bounding tasks' far tail (any mass past it is
    # put on the last value).
    span = math.log(edges[-1]) - math.log(lo)
    du = max(span / (2 * G), tau / 100) if span > 0 else tau / 100
    if bound is not None:
        span = max(span, min(math.log(max(float(bound.max()), 1e-300)) - math.log(lo), span + 2 * G * du))
    u = math.log(lo) + du * np.arange(int(math.ceil(span / du)) + 1)
    F = np.interp(np.exp(u), edges, c, left=0.0, right=1.0)
    if bound is not None:
        levels = _bound_levels()
        for row in np.log(np.maximum(bound, 1e-300)):
            F = np.minimum(F, np.interp(u, row, levels, left=0.0, right=1.0))
    F[-1] = 1.0
    mass = np.diff(F, prepend=0.0)
    half = int(math.ceil(6.0 * tau / du))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * du / tau) ** 2)
    size = len(mass) + len(kernel) - 1
    nfft = 1 << (size - 1).bit_length()
    blurred = np.fft.irfft(np.fft.rfft(mass, nfft) * np.fft.rfft(kernel / kernel.sum(), nfft), nfft)[:size]
    blurred = np.maximum(blurred, 0.0)  # length len(u) + 2 half
    F = np.cumsum(blurred)
    F /= F[-1]
    at = np.exp(u[0] - half * du - tau * tau / 2 + du * np.arange(len(F)))  # E[M] = 1
    return np.concatenate([[0.0], at]), np.concatenate([[0.0], F])


def _shifted_gamma_cdf(x: np.ndarray, mean: float, var: float, m3: float) -> np.ndarray:
    """CDF of the shifted gamma with this mean, variance and third central moment (normal if unskewed)."""
    sd = np.sqrt(max(var, 0.0))
    if sd == 0:
        return (x >= mean).astype(np.float64)
    skew = m3 / sd**3
    if skew < 1e-3:
        return ndtr((x - mean) / sd)
    k = 4.0 / skew**2
    theta = sd * skew / 2.0
    return gammainc(k, np.maximum(x - (mean - k * theta), 0.0) / theta)


@dataclass
class TotalDistribution:
    """The distribution of a batch's total runtime: exact mean and variance, and a CDF on a grid."""

    mean: float
    variance: float
    single: RuntimeDistribution | None = None
    grid: np.ndarray | None = None  # values, evenly spaced
    cdf: np.ndarray | None = None  # P(total <= grid[k] + step / 2)
    tasks: RuntimeDistribution | None = None  # the tasks summed: their quantiles bound the total's
    # Or the CDF at increasing values (piecewise linear between them), with the shared factor.
    edges: np.ndarray | None = None
    edge_cdf: np.ndarray | None = None
    shared_log_sd: float = 0.0
    _floor_parts: tuple | None = field(default=None, init=False, repr=False)

    @property
    def std(self) -> float:
        return float(np.sqrt(self.variance))

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        levels = np.asarray(levels, dtype=np.float64)
        if self.single is not None:
            return self.single.quantiles(levels)[0]
        if self.edges is not None:
            xs, cs = self.edges, self.edge_cdf
        else:
            assert self.grid is not None and self.cdf is not None
            g, c = self.grid, self.cdf
            if len(g) == 1:
                return np.full(len(levels), float(g[0]))
            h = g[1] - g[0]
            # Mass is spread evenly within each grid cell: the CDF is linear between cell edges.
            xs = np.concatenate([[g[0] - h / 2], g + h / 2])
            cs = np.concatenate([[0.0], c])
        cs = cs + np.arange(len(cs)) * 1e-15  # strictly increasing for interpolation
        out = np.maximum(np.interp(np.clip(levels, 0.0, 1.0) * cs[-1], cs, xs), 0.0)
        if self.tasks is not None:
            # Below one grid cell (one task whose spread dwarfs the others' sets the cell
            # size) and beyond the grid's far end, a bound that holds for any tasks does better.
            out = np.maximum(out, self._floor(levels))
        return out

    def _floor(self, levels: np.ndarray) -> np.ndarray:
        """A lower bound on the total's quantile at each level, from the tasks' own quantiles.

        The total is ``M (X_1 + ... + X_n)``, all independent and positive (``M = 1``
        without the shared factor). If ``M > q_M(a0)`` and ``X_c >= q_c(a)`` for one task
        ``c``, the total exceeds ``q_M(a0) (q_c(a) + sum of the others' least values)``;
        that happens with probability at least ``(1 - a0) (1 - a)``. Where this is
        ``1 - p``, the total's ``p``-quantile is at least that value. Without the factor
        ``a = p``: the total's quantile is never below any task's. With it, every task
        with ``1 - a0 = 1 - a``, and the largest tasks (by mean and variance) with a few
        other splits of the level: the one that suits the top levels leaves ``M`` near 1.
        """
        tasks = self.tasks
        assert tasks is not None
        tau = self.shared_log_sd
        p = np.clip(levels, 0.0, 1.0)
        if self._floor_parts is None:
            least = tasks.quantiles([1e-12])[:, 0]  # the quantile function stops there
            cand = None
            if tau > 0:
                mean, var = tasks.moments()[:2]
                k = min(_BOUND_TASKS, len(tasks))
                top = np.concatenate([np.argpartition(mean, -k)[-k:], np.argpartition(var, -k)[-k:]])
                cand = np.unique(top)
                cand = (tasks.subset(cand), least[cand])
            self._floor_parts = (least, float(least.sum()), cand)
        least, sum_least, cand = self._floor_parts
        if tau <= 0:
            return (tasks.quantiles(p) - least[:, None]).max(axis=0) + sum_least
        budget = -np.log1p(-np.minimum(p, 1.0 - 1e-15))  # -log(1 - p)
        shares = np.concatenate([[0.5], _FLOOR_FACTOR_SHARES])  # of the budget, M's
        a = -np.expm1(-budget[:, None] * (1.0 - shares)[None, :])  # (L, F): the level of task c
        a0 = -np.expm1(-budget[:, None] * shares[None, :])  # and of M
        gain = np.empty(a.shape)
        gain[:, 0] = (tasks.quantiles(a[:, 0]) - least[:, None]).max(axis=0)
        sub, sub_least = cand
        gain[:, 1:] = (sub.quantiles(a[:, 1:].ravel()).reshape(len(sub), len(p), -1) - sub_least[:, None, None]).max(axis=0)
        value = (gain + sum_least) * np.exp(tau * ndtri(a0) - tau * tau / 2)
        return value.max(axis=1)

    def interval(self, confidence_level: float) -> np.ndarray:
        a = (1.0 - confidence_level) / 2.0
        return self.quantiles([a, 1.0 - a])
