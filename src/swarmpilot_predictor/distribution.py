"""Predicted runtime distributions, vectorised over a batch of tasks.

Every model in this package predicts, per task, a location ``m`` and a scale
``s`` on the log-runtime axis; the runtime is ``exp(m + s * Z)`` where ``Z``
follows one calibrated score distribution shared by all tasks of a model,
stored as a quantile function on a grid. Quantiles at any level follow by
interpolation, so they never cross and are always positive; moments come
from a fixed probability grid, so ``expect`` and ``error`` are the mean and
standard deviation of that distribution rather than summaries of a few quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtri

_MOMENT_GRID = (np.arange(256) + 0.5) / 256
# Below this many tasks the batch total is sampled; above it the central limit
# theorem makes a Cornish-Fisher expansion of the summed cumulants accurate.
_SAMPLED_SUM_MAX_TASKS = 64
_SUM_SAMPLES = 4096


@dataclass(frozen=True)
class ScoreDistribution:
    """Quantile function of the standardised log-residual ``Z`` (levels -> values)."""

    levels: np.ndarray
    values: np.ndarray

    @classmethod
    def from_scores(cls, scores: np.ndarray, max_points: int = 512) -> "ScoreDistribution":
        """Empirical quantile function with conformal plotting positions.

        The i-th smallest of n exchangeable scores is exceeded by a new score with
        probability (n + 1 - i) / (n + 1); placing it at level i / (n + 1) makes
        every level's coverage right on new data, not just on the training rows.
        """
        z = np.sort(np.asarray(scores, dtype=np.float64))
        n = len(z)
        if n == 0:
            raise ValueError("no scores to build a distribution from")
        levels = np.arange(1, n + 1) / (n + 1)
        if n > max_points:
            grid = np.linspace(levels[0], levels[-1], max_points)
            z = np.interp(grid, levels, z)
            levels = grid
        return cls(levels, z)

    def quantile(self, tau: np.ndarray) -> np.ndarray:
        tau = np.clip(np.asarray(tau, dtype=np.float64), 1e-9, 1 - 1e-9)
        p, z = self.levels, self.values
        out = np.interp(tau, p, z)
        if len(p) >= 2:
            # Beyond the observed scores, continue with an exponential tail fitted
            # to the outer part of each side instead of clamping to the extreme.
            hi = tau > p[-1]
            if hi.any():
                k = int(np.searchsorted(p, 1 - 4 * (1 - p[-1])))
                k = min(max(k, 0), len(p) - 2)
                run = np.log(1 - p[k]) - np.log(1 - p[-1])
                slope = max((z[-1] - z[k]) / run, 0.0) if run > 0 else 0.0
                out[hi] = z[-1] + slope * (np.log(1 - p[-1]) - np.log(1 - tau[hi]))
            lo = tau < p[0]
            if lo.any():
                k = int(np.searchsorted(p, 4 * p[0]))
                k = min(max(k, 1), len(p) - 1)
                run = np.log(p[k]) - np.log(p[0])
                slope = max((z[k] - z[0]) / run, 0.0) if run > 0 else 0.0
                out[lo] = z[0] - slope * (np.log(p[0]) - np.log(tau[lo]))
        return out

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

    def __len__(self) -> int:
        return len(self.location)

    def subset(self, rows: np.ndarray) -> "RuntimeDistribution":
        return RuntimeDistribution(self.location[rows], self.scale[rows], self.score)

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        """Runtime at each level, shape (tasks, levels); non-decreasing along levels."""
        levels = np.asarray(levels, dtype=np.float64)
        order = np.argsort(levels)
        z = self.score.quantile(levels[order])
        z = np.maximum.accumulate(z)
        q = np.exp(self.location[:, None] + self.scale[:, None] * z[None, :])
        out = np.empty_like(q)
        out[:, order] = q
        return out

    def interval(self, confidence_level: float) -> np.ndarray:
        """Central interval holding ``confidence_level`` of the mass, shape (tasks, 2)."""
        a = (1.0 - confidence_level) / 2.0
        return self.quantiles([a, 1.0 - a])

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean, variance, and third and fourth central moments per task."""
        zg = self.score.quantile(_MOMENT_GRID)
        scale = self.scale
        if len(scale) and np.all(scale == scale[0]):
            # One shared shape: compute it once and rescale per task.
            e = np.exp(scale[0] * zg)
            mu, c = e.mean(), e - e.mean()
            base = np.array([mu, (c**2).mean(), (c**3).mean(), (c**4).mean()])
            f = np.exp(self.location)
            return base[0] * f, base[1] * f**2, base[2] * f**3, base[3] * f**4
        y = np.exp(self.location[:, None] + scale[:, None] * zg[None, :])
        mean = y.mean(axis=1)
        c = y - mean[:, None]
        c2 = c * c
        return mean, c2.mean(axis=1), (c2 * c).mean(axis=1), (c2 * c2).mean(axis=1)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean, var, _, _ = self.moments()
        return mean, np.sqrt(var)

    # ------------------------------------------------------------------ sums

    def total(self) -> "TotalDistribution":
        """Distribution of the sum of these tasks' runtimes, tasks independent."""
        n = len(self)
        mean, var, m3, m4 = self.moments()
        k1, k2, k3 = mean.sum(), var.sum(), m3.sum()
        k4 = (m4 - 3 * var**2).sum()
        if n == 1:
            return TotalDistribution(k1, k2, self, None)
        if n <= _SAMPLED_SUM_MAX_TASKS:
            # Each task gets the same stratified levels in its own random order:
            # every task's marginal is exact and the tasks are independent.
            rng = np.random.default_rng(20240611)
            u = (np.arange(_SUM_SAMPLES) + 0.5) / _SUM_SAMPLES
            zs = self.score.quantile(u)
            perm = np.argsort(rng.random((n, _SUM_SAMPLES)), axis=1)
            samples = np.exp(self.location[:, None] + self.scale[:, None] * zs[perm]).sum(axis=0)
            samples.sort()
            return TotalDistribution(k1, k2, None, samples)
        return TotalDistribution(k1, k2, None, None, k3=k3, k4=k4)


@dataclass
class TotalDistribution:
    mean: float
    variance: float
    single: RuntimeDistribution | None
    samples: np.ndarray | None
    k3: float = 0.0
    k4: float = 0.0

    @property
    def std(self) -> float:
        return float(np.sqrt(self.variance))

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        levels = np.asarray(levels, dtype=np.float64)
        if self.single is not None:
            return self.single.quantiles(levels)[0]
        if self.samples is not None:
            return np.quantile(self.samples, levels)
        # Cornish-Fisher expansion with skewness and excess kurtosis.
        sd = np.sqrt(self.variance)
        if sd == 0:
            return np.full(len(levels), self.mean)
        g1 = self.k3 / sd**3
        g2 = self.k4 / sd**4
        z = ndtri(np.clip(levels, 1e-9, 1 - 1e-9))
        w = (
            z
            + (z**2 - 1) * g1 / 6
            + (z**3 - 3 * z) * g2 / 24
            - (2 * z**3 - 5 * z) * g1**2 / 36
        )
        order = np.argsort(levels)
        w_sorted = np.maximum.accumulate(w[order])
        out = np.empty_like(w)
        out[order] = np.maximum(self.mean + sd * w_sorted, 0.0)
        return out

    def interval(self, confidence_level: float) -> np.ndarray:
        a = (1.0 - confidence_level) / 2.0
        return self.quantiles([a, 1.0 - a])
