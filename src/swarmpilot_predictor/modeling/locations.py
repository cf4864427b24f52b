"""Location families: the models of ``m(x)``, the median of log-runtime.

``empirical``, ``linear`` (with regime flags), ``power`` and ``lightgbm`` (with the
checks of a stored booster's text, its single-row predictor and the LightGBM
parameter helpers its fit uses), and :data:`FAMILIES` naming them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import re
import threading
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..distribution import row_dot
from ..errors import shown
from .design import (LEVEL_MIN_ROWS, UNUSED, Factoriser, LogLinearDesign, categorical_positions, design_matrix, dual_cost,
                     gcv_alpha, gcv_choice, infinite_as_missing, is_sparse, numeric_positions, ridge_regression, slog, sparse_view,
                     wgram)
from .stored import standardisation, stored_finite_numbers, stored_kinds, stored_number

log = logging.getLogger(__name__)


# Numeric features with at most this many distinct values (each on LEVEL_MIN_ROWS rows
# or more) get per-value indicator columns in the linear location model's design.
MAX_LEVELS = 12


class LocationModel:
    """Predicts the location ``m(x)`` of log-runtime; subclasses are the families."""

    name: ClassVar[str]
    min_rows: ClassVar[int] = 1

    def fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> "LocationModel":
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_row(self, x: Sequence[float]) -> float | None:
        """``predict`` for one row in plain floats; None where a family has no such path."""
        return None

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


class EmpiricalLocation(LocationModel):
    """No features: the runtime distribution is that of the training runtimes."""

    name = "empirical"

    def fit(self, X, y, w=None):
        # The mean of the middle half, not the median: with runtimes in two modes of about
        # equal share the median jumps from one mode to the other between folds, the held-out
        # scores then span both gaps, and predictions reached 100x beyond every run.
        lo, hi = np.quantile(y, [0.25, 0.75])
        middle = y[(y >= lo) & (y <= hi)]
        # Equal middle values: exactly that value (a float mean of them may be one ulp off,
        # and the scores of a constant runtime then not exactly 0).
        self.location_ = float(lo) if lo == hi or not len(middle) else float(middle.mean())
        return self

    def predict(self, X):
        return np.full(len(X), self.location_)

    def predict_row(self, x):
        return self.location_

    def to_json(self):
        return {"location": self.location_}

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        obj = cls()
        obj.location_ = float(d["location"])
        return obj


MAX_REGIME_FLAGS = 2


def regime_flags(X: np.ndarray, kinds: Sequence[str]) -> list[tuple[int, float]]:
    """Numeric features that take only the values 0 and 1, each on at least
    :data:`LEVEL_MIN_ROWS` rows (``first_of_shape``, a boolean): (column, share of ones).

    At most :data:`MAX_REGIME_FLAGS`, the most evenly split, and none unless another
    numeric feature is there to have slopes: each flag copies the other features' design
    columns (40 flags beside 20 features made a linear fit take 311 s instead of 9).
    """
    numeric = numeric_positions(kinds)
    flags = []
    for j in numeric:
        col = X[:, j][np.isfinite(X[:, j])]
        if len(col) and bool(np.isin(col, (0.0, 1.0)).all()):
            ones = int((col == 1.0).sum())
            if min(ones, len(col) - ones) >= LEVEL_MIN_ROWS:
                flags.append((j, ones / len(col)))
    if len(flags) == len(numeric):
        return []
    flags.sort(key=lambda f: abs(f[1] - 0.5))
    return sorted(flags[:MAX_REGIME_FLAGS])


def _flag_values(col: np.ndarray, share: float) -> np.ndarray:
    """A flag's 0/1 values; a missing or other value sits at the training share of ones, as its main column does."""
    return np.where((col == 0.0) | (col == 1.0), col, share)


# The linear location reads its residuals' scale corrected for the fit's degrees of freedom
# df (by 1/sqrt(1 - df/n), at most 1/sqrt(DOF_CORRECTION_FLOOR)) where the fit has at least
# DOF_CORRECTED_FROM_ROWS rows (where the cross-validation's folds change from ten to five)
# and spends at least DOF_CORRECTED_FROM_SHARE of them. On tens of rows GCV's penalty
# leaves 80-95% of them as degrees of freedom too, and there the correction did harm
# (benchmarks/small_data.py --sizes 20,40,80: 0.945 -> 0.953 of the best baseline, where
# the aggressive weights are what those fits want). Under a quarter, the scale read at most
# 13% short, it changed no figure of benchmarks/accuracy.py but by tipping near-ties
# between families on one split (the fits of its sets spend at most 14%).
DOF_CORRECTED_FROM_ROWS = 100
DOF_CORRECTED_FROM_SHARE = 0.25
DOF_CORRECTION_FLOOR = 0.05


def dof_inflation(n: int, df: float) -> float:
    """The factor by which the residuals of a fit of ``df`` degrees of freedom on ``n``
    rows read the noise's scale short, where the linear location corrects for it; else 1."""
    if n < DOF_CORRECTED_FROM_ROWS or df < DOF_CORRECTED_FROM_SHARE * n:
        return 1.0
    return 1.0 / math.sqrt(max(1.0 - df / n, DOF_CORRECTION_FLOOR))


def _robust_sd(r: np.ndarray) -> float:
    """The median absolute deviation of ``r``, scaled to a normal's standard deviation."""
    return float(np.median(np.abs(r - np.median(r)))) * 1.4826


class LinearLocation(LocationModel):
    """Robust ridge regression of log-runtime on log features (Huber, then Tukey's bisquare, by reweighting).

    The ridge penalty is chosen by generalised cross-validation unless ``alpha``
    is given: the design's columns (log, raw, hinges) are strongly collinear, and
    a fixed penalty either biases the fit (it was measured at 2-8% on a trace set
    with four distinct frame counts) or fails to tame useless features.

    A 0/1 feature that splits the rows into two regimes (a shape's first run, which
    costs a fixed ~60 ms of kernel selection whatever the batch, against repeats that
    grow with it) also gets the other numeric features' columns times the flag, so each
    regime has its own slopes; with one slope shared by both, the size features hurt
    the fit more than they helped and were dropped, and every repeat was predicted
    the same 4.4 ms whatever its batch. The ridge penalty shrinks unneeded ones.
    """

    name = "linear"
    min_rows = 8

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], alpha: float | None = None, huber_delta: float = 1.0,
                 redescend: bool = True, max_levels: int = MAX_LEVELS, hinges: int = 3, regimes: bool = True):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.alpha = alpha
        self.huber_delta = huber_delta
        self.redescend = redescend
        self.max_levels = max_levels
        self.hinges = hinges
        self.regimes = regimes

    def _interacting(self) -> np.ndarray:
        """The numeric design columns a flag multiplies: those of the features that are not flags."""
        num = self.design_._num
        flagged = {j for j, _ in self.flags_}
        return np.array([c for c, o in enumerate(self.design_._owners().tolist()) if num[o] not in flagged], dtype=np.int64)

    def _split(self, coef: np.ndarray, width: int) -> None:
        """Main-effect coefficients, and per flag its slopes as a full-width vector (for ``dot_row``)."""
        self.coef_ = coef
        self.main_ = coef[:width]
        keep = self._interacting() if self.flags_ else np.zeros(0, dtype=np.int64)
        self.flag_coefs_ = []
        for i in range(len(self.flags_)):
            c = np.zeros(width)
            c[keep] = coef[width + i * len(keep): width + (i + 1) * len(keep)]
            self.flag_coefs_.append(c)

    def fit(self, X, y, w=None):
        self.design_ = LogLinearDesign(self.kinds, self.n_categories, hinges=self.hinges, levels=self.max_levels).fit(X)
        A = self.design_.transform(X, sparse=True)
        width = A.shape[1]
        self.flags_ = regime_flags(X, self.kinds) if self.regimes else []
        if self.flags_:
            keep = self._interacting()
            if len(keep):
                flagged = [(A[:, keep].toarray() if is_sparse(A) else A[:, keep]) * _flag_values(X[:, j], share)[:, None]
                           for j, share in self.flags_]
                if is_sparse(A):
                    import scipy.sparse as sp

                    A = sp.hstack([A] + flagged, format="csr")
                else:
                    A = np.concatenate([A] + flagged, axis=1)
            else:
                self.flags_ = []
        base_w = np.ones(len(y)) if w is None else w
        weights = base_w
        S = sparse_view(A)
        if self.alpha is not None:  # a penalty set in the params: its fit as it comes
            alpha, df = self.alpha, 0.0
        else:
            alpha, df = gcv_choice(A, y, base_w, S)
        self.alpha_ = float(alpha)
        # In-sample residuals of a fit of df degrees of freedom hold about 1 - df/n of the
        # noise's variance, so their spread reads the noise short: to 0.39 of it on a fold
        # of sixteen 100-value features (1,600 rows, df 1,360), and the weights below then
        # dropped good rows (13.6% of them on one fold without outliers).
        inflate = dof_inflation(len(y), df)
        factorise = Factoriser()
        for it in range(4 + 4 * self.redescend):
            b, coef = ridge_regression(A, y, alpha, weights, S, factorise)
            r = y - b - (A @ coef if S is None else S @ coef)
            mad = _robust_sd(r) * inflate + 1e-9
            if it < 4:
                # Huber weights tame the aborted-request and cold-start outliers ...
                scaled = np.abs(r) / (self.huber_delta * mad)
                weights = base_w * np.minimum(1.0, 1.0 / np.maximum(scaled, 1e-12))
            else:
                # ... and Tukey's bisquare then ignores them: they belong to Z's tails.
                t = r / (4.685 * mad)
                weights = base_w * np.where(np.abs(t) < 1, (1 - t * t) ** 2, 0.0)
                if weights.sum() < 0.5 * base_w.sum():
                    break
        self.intercept_ = b
        self._split(coef, width)
        return self

    def predict(self, X):
        A = self.design_.transform(X, sparse=True)
        out = self.intercept_ + row_dot(A, self.main_)
        for (j, share), c in zip(self.flags_, self.flag_coefs_):
            out += _flag_values(X[:, j], share) * row_dot(A, c)
        return out

    def predict_row(self, x):
        out = self.intercept_ + self.design_.dot_row(x, self.main_)
        for (j, share), c in zip(self.flags_, self.flag_coefs_):
            v = x[j]
            b = v if v == 0.0 or v == 1.0 else share
            if b:
                out += b * self.design_.dot_row(x, c)
        return out

    def to_json(self):
        return {
            "alpha": self.alpha_,
            "huber_delta": self.huber_delta,
            "redescend": self.redescend,
            "design": self.design_.to_json(),
            "intercept": self.intercept_,
            "coef": self.coef_.tolist(),
            "flags": [[j, share] for j, share in self.flags_],
        }

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        obj = cls(kinds, n_categories, d["alpha"], d["huber_delta"], bool(d.get("redescend", False)))
        obj.alpha_ = float(d["alpha"])
        obj.design_ = LogLinearDesign.from_json(d["design"])
        obj.hinges = obj.design_.hinges
        obj.intercept_ = stored_number(d["intercept"], "intercept")
        # Stored before regime flags: none, and the coefficients are the main effects.
        obj.flags_ = [(int(j), float(share)) for j, share in d.get("flags", [])]
        obj.regimes = bool(obj.flags_)
        obj._split(stored_finite_numbers(d["coef"], "coef"), obj.design_.width)
        return obj


def bounded_step(solve, g: np.ndarray, start: float, bounds: tuple[float, float]) -> np.ndarray:
    """The Levenberg-Marquardt step ``D^-1 g`` (``solve`` solves with ``D``), its first
    parameter (the log overhead, at ``start``) held at a bound it would cross.

    Held there, the other parameters solve ``D[1:, 1:] s = g[1:] - D[1:, 0] s0`` (a
    clipped full step would not descend, and the fit stalls). That is the full step plus
    the multiple of ``D^-1 e0`` that moves its first entry to the bound, so that one
    factorisation of ``D`` serves both: a second one, of ``D[1:, 1:]``, doubled the cost of
    every step of a wide design where the overhead sat at its bound (most of them).
    """
    step = solve(g)
    if bounds[0] < start + step[0] < bounds[1]:
        return step
    held = min(max(start + step[0], bounds[0]), bounds[1]) - start
    first = np.zeros(len(g))
    first[0] = 1.0
    toward = solve(first)
    if not toward[0] > 0:  # (D^-1)[0, 0] of a positive definite D is positive
        raise RuntimeError("the overhead's direction is singular")
    step += (held - step[0]) / toward[0] * toward
    step[0] = held
    return step


def _fit_overhead_power(B: np.ndarray, y: np.ndarray, w: np.ndarray, th: np.ndarray, f_scale: float,
                        ridge: float, bounds: tuple[float, float], iters: int = 60, S=None) -> tuple[np.ndarray, float]:
    """Fit ``y ~ logaddexp(th[0], th[1] + B th[2:])`` by Levenberg-Marquardt on a soft-L1 loss.

    Iteratively reweighted Gauss-Newton (each row's weight ``1 / sqrt(1 + (r / f_scale)^2)``
    bounds the pull of slow modes and aborted requests), with a ridge ``ridge * n *
    f_scale^2`` on ``th[2:]`` (in the noise's units, so that it stays light whatever the
    noise) and ``th[0]`` (the log overhead) kept within ``bounds``. Returns the
    parameters and the objective. A few numpy products per step: a whole PowerLocation fit
    on a thousand rows took 3.5 ms here (LinearLocation's 6 ms), where scipy's
    ``least_squares`` spent most of its time in its own overhead.

    Those weights over-state the loss's curvature, so that the fit converges only
    linearly, and on a wide design stops at ``iters`` steps short of the optimum: on 1,600
    rows of sixteen 100-value features (1,602 parameters) it still gained 3e-7 of the
    objective per step after 60. That stop regularises. Newton steps with the loss's own
    curvature, once reweighting slowed, reached the optimum in 47 factorisations instead
    of 117, but a model of 1,000 such rows then scored a relative pinball loss of 0.304 on
    1,000 new ones instead of 0.269 (benchmarks/README.md), so they are not taken.
    """
    n, d = B.shape
    alpha = ridge * n * f_scale**2
    sw = float(w.sum())

    def objective(t: np.ndarray) -> tuple[float, np.ndarray]:
        r = y - np.logaddexp(t[0], t[1] + B @ t[2:])
        loss = 2.0 * f_scale**2 * float(w @ (np.sqrt(1.0 + (r / f_scale) ** 2) - 1.0))
        return loss / sw * n + alpha * float(t[2:] @ t[2:]), r

    obj, r = objective(th)
    factorise = Factoriser()
    # Fewer rows than parameters (a wide design on few rows): each step solves through the
    # n-square matrix of the dual instead of the (d + 2)-square one (_dual_step_solver),
    # where that is cheaper, as GCV's kernel matrix is (design._sparse_gcv).
    dual = S is not None and dual_cost(n, d) < d**3
    squares = S.multiply(S).T.tocsr() if dual else None  # for the diagonal of B' V B
    lam = 1e-3
    penalty = np.zeros(d + 2)
    penalty[2:] = alpha
    for _ in range(iters):
        eta = th[1] + B @ th[2:]
        p = np.exp(th[0] - np.logaddexp(th[0], eta))  # the overhead's share of the runtime
        v = w / np.sqrt(1.0 + (r / f_scale) ** 2) * (n / sw)
        if S is None:
            J = np.empty((n, d + 2))
            J[:, 0] = p
            J[:, 1] = 1.0 - p
            J[:, 2:] = (1.0 - p)[:, None] * B
            Jv = J * v[:, None]
            H = Jv.T @ J + np.diag(penalty)
            g = Jv.T @ r - penalty * th
        else:
            # J = [p, 1-p, (1-p) B] with B sparse: the B block of J'VJ is B' diag(v (1-p)^2) B.
            # Built sparse: a dense (d + 2)-square H, and finding its non-zeros again, took
            # most of a fit's time with a 2,000-value categorical.
            import scipy.sparse as sp

            q = 1.0 - p
            J2 = np.column_stack([p, q])
            side = (S.T @ (J2 * (v * q)[:, None])).T
            H2 = J2.T @ (J2 * v[:, None])
            if dual:
                H = None
                Jb = sp.diags(q) @ S
                diagonal = np.concatenate([np.diag(H2), np.asarray(squares @ (v * q * q)).ravel()]) + penalty
            else:
                H = sp.bmat([[H2, side], [side.T, wgram(B, v * q * q, S, dense=False)]], format="csc")
                H = (H + sp.diags(penalty, format="csc")).tocsc()
                H.eliminate_zeros()
                H.sort_indices()
            g = np.concatenate([J2.T @ (v * r), S.T @ (v * q * r)]) - penalty * th
        if H is not None:
            diagonal = np.diag(H) if S is None else H.diagonal()
        for _ in range(20):
            damping = lam * (diagonal + 1e-12)
            try:
                if dual:
                    solve = _dual_step_solver(H2, side, Jb, v, damping[:2], alpha + damping[2:])
                elif S is None:
                    # A few columns: numpy's solve (3 us for 3 parameters, a scipy factorisation 37).
                    solve = functools.partial(np.linalg.solve, H + np.diag(damping))
                else:
                    # A sparse H is symmetric but for rounding (each pair summed in its own order).
                    solve = factorise(H + sp.diags(damping, format="csc"), symmetric=True)
                step = bounded_step(solve, g, th[0], bounds)
            except (np.linalg.LinAlgError, RuntimeError):
                step = np.zeros_like(th)
            new = th + step
            new_obj, new_r = objective(new)
            if np.isfinite(new_obj) and new_obj <= obj:
                break
            lam *= 4.0
        else:
            return th, obj
        # Converged when a step no longer lowers the loss noticeably: along a flat valley
        # (an overhead too small to matter drifting lower) the fit no longer changes.
        done = obj - new_obj <= 1e-7 * max(obj, 1e-300) or float(np.abs(new - th).max()) < 1e-7
        th, obj, r = new, new_obj, new_r
        lam = max(lam / 3.0, 1e-9)
        if done:
            break
    return th, obj


def _dual_step_solver(H2: np.ndarray, side: np.ndarray, Jb, v: np.ndarray, damp2: np.ndarray, diag_b: np.ndarray):
    """The solve function of the Levenberg-Marquardt matrix ``D = [[H2 + diag(damp2), side],
    [side', Jb' V Jb + diag(diag_b)]]`` through the n-square matrix ``I + C C'``, ``C =
    V^1/2 Jb diag(diag_b)^-1/2`` (Woodbury), for ``n`` rows under the ``d`` columns of ``Jb``.

    The overhead's and the intercept's two columns are eliminated apart (a 2-square Schur
    complement): unpenalised, their damping alone can be ~1e-9, where every other
    column's diagonal holds at least the ridge."""
    import scipy.linalg as sl
    import scipy.sparse as sp

    scale = 1.0 / np.sqrt(diag_b)
    C = (sp.diags(np.sqrt(v)) @ Jb @ sp.diags(scale)).tocsr()
    M = np.asarray((C @ C.T).todense())
    M[np.diag_indices_from(M)] += 1.0
    factor = sl.cho_factor(M, check_finite=False)

    def inner(x: np.ndarray) -> np.ndarray:  # (Jb' V Jb + diag(diag_b))^-1 x
        s = scale if x.ndim == 1 else scale[:, None]
        y = s * x
        return s * (y - C.T @ sl.cho_solve(factor, C @ y, check_finite=False))

    across = inner(side.T)
    schur = H2 + np.diag(damp2) - side @ across

    def solve(g: np.ndarray) -> np.ndarray:
        head = np.linalg.solve(schur, g[:2] - side @ inner(g[2:]))
        return np.concatenate([head, inner(g[2:] - side.T @ head)])

    return solve


class PowerLocation(LocationModel):
    """A fixed overhead plus a power law of the features: ``runtime = a + exp(c0 + B c)``.

    The physical model of most inference runtimes: a launch, scheduling and I/O
    overhead, then work that grows as a power of the batch size, the pixels, the
    tokens or the frames (``B``: the log of each numeric feature, or ``log1p``
    with its sign where the training values are not all positive, standardised;
    one-hot columns per categorical, which scale the work). Its log,
    ``logaddexp(log a, c0 + B c)``, is fitted to log-runtime by robust (soft-L1)
    nonlinear least squares with a light ridge on ``c``. Where it holds it needs
    a parameter per feature and one for the overhead, where the hinged
    log-linear design needs several per feature to bend the same curve: in
    benchmarks/accuracy.py's many-seeds study, on 140 training rows of the
    vision-like ``bimodal`` set, the service's expected loss went from 0.999 to
    0.962 times the best baseline's once this family was a candidate (the true
    quantiles': 0.946).
    """

    name = "power"
    min_rows = 8
    # Ridge on the work's coefficients, per training row and in the noise's units: it
    # only settles collinear columns (a categorical's one-hot columns next to the intercept).
    RIDGE = 1e-3

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int]):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self._row_plan: tuple | None = None

    # -- design
    def _logs(self, Xn: np.ndarray) -> np.ndarray:
        """Per numeric feature: log, floored at half the smallest training value, or signed log1p."""
        floor = np.asarray(self.floor_)
        pos = floor > 0
        out = slog(Xn)
        if pos.any():
            with np.errstate(invalid="ignore"):
                out[:, pos] = np.log(np.maximum(Xn[:, pos], floor[pos]))
        return out

    def _design(self, X: np.ndarray, sparse: bool = True):
        num = numeric_positions(self.kinds)
        Z = np.zeros((len(X), 0))
        if num:
            Z = (self._logs(infinite_as_missing(X[:, num])) - self.center_) / self.spread_
            Z[~np.isfinite(Z)] = 0.0  # a missing value sits at the training mean
        return design_matrix(Z, X, categorical_positions(self.kinds, self.n_categories), sparse)

    # -- fitting
    def fit(self, X, y, w=None):
        num = numeric_positions(self.kinds)
        Xn = X[:, num]
        floor = []
        for j in range(Xn.shape[1]):
            col = Xn[:, j][np.isfinite(Xn[:, j])]
            floor.append(float(col.min()) / 2 if len(col) and col.min() > 0 else 0.0)
        self.floor_ = floor
        L = self._logs(Xn) if num else np.zeros((len(X), 0))
        self.center_ = np.nanmean(L, axis=0) if num else np.zeros(0)
        spread = np.nanstd(L, axis=0) if num else np.zeros(0)
        self.spread_ = np.where(spread > 0, spread, 1.0)
        B = self._design(X)
        w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
        # Start from the log-linear fit, its runtimes split evenly between an overhead
        # (half the fastest runtimes) and the work.
        S = sparse_view(B)
        factorise = Factoriser()
        c0, c = ridge_regression(B, y, self.RIDGE, w, S, factorise)
        # The soft-L1 loss's scale (the ridge's unit too) is the noise's, read from residuals.
        # Those of a light penalty understate it where the design has about as many columns
        # as rows, which that fit interpolates: then the fit whose penalty generalised
        # cross-validation chooses leaves the larger ones. On sixteen 100-value features and
        # 1,600 rows (noise 0.25) the light penalty's read 0.033, the chosen penalty's 0.106,
        # and the power fit's held-out error of log runtime went from 1.26 to 0.88.
        g0, g = ridge_regression(B, y, gcv_alpha(B, y, w, S), w, S, factorise)
        f_scale = max(_robust_sd(y - c0 - B @ c), _robust_sd(y - g0 - B @ g), 1e-6)
        bounds = (float(y.min()) - 12.0, float(y.max()))
        start = np.concatenate([[float(np.quantile(y, 0.05)) + math.log(0.5), c0 + math.log(0.5)], c])
        th, _ = _fit_overhead_power(B, y, w, start, f_scale, self.RIDGE, bounds, S=S)
        self.log_overhead_, self.intercept_, self.coef_ = float(th[0]), float(th[1]), np.asarray(th[2:])
        self._row_plan = None
        return self

    # -- prediction
    def predict(self, X):
        return np.logaddexp(self.log_overhead_, self.intercept_ + row_dot(self._design(X), self.coef_))

    def predict_row(self, x):
        if self._row_plan is None:
            self._row_plan = self._make_row_plan()
        eta, numeric, cats = self._row_plan
        for j, floor, center, weight in numeric:
            v = x[j]
            if not math.isfinite(v):  # missing (or infinite, as in _design): the training mean
                continue
            lg = math.log(max(v, floor)) if floor > 0 else math.copysign(math.log1p(abs(v)), v)
            eta += weight * (lg - center)
        for j, weights in cats:
            code = x[j]
            if 0 <= code < len(weights) and code == int(code):  # 1.5 is no category, as in _design
                eta += weights[int(code)]
        a = self.log_overhead_
        return max(a, eta) + math.log1p(math.exp(-abs(a - eta)))

    def _make_row_plan(self) -> tuple:
        """What predict_row needs, as plain floats: made once per fit."""
        num = numeric_positions(self.kinds)
        coef = self.coef_.tolist()
        numeric = [(j, float(f), float(m), coef[i] / float(sd))
                   for i, (j, f, m, sd) in enumerate(zip(num, self.floor_, self.center_, self.spread_))]
        cats, col = [], len(num)
        for j, k in categorical_positions(self.kinds, self.n_categories):
            cats.append((j, coef[col:col + k]))
            col += k
        return self.intercept_, numeric, cats

    def to_json(self):
        # Its own kinds: features the backward elimination dropped are marked unused there.
        return {"kinds": self.kinds, "n_categories": self.n_categories,
                "floor": list(self.floor_), "center": self.center_.tolist(), "spread": self.spread_.tolist(),
                "log_overhead": self.log_overhead_, "intercept": self.intercept_, "coef": self.coef_.tolist()}

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        obj = cls(stored_kinds(d["kinds"], d["n_categories"]), d["n_categories"])
        p = len(numeric_positions(obj.kinds))
        obj.floor_ = stored_finite_numbers(d["floor"], "floor").tolist()
        if len(obj.floor_) != p:
            raise ValueError(f"floor holds {len(obj.floor_)} values for {p} numeric features")
        obj.center_, obj.spread_ = standardisation(d, p)
        obj.log_overhead_ = stored_number(d["log_overhead"], "log_overhead")
        obj.intercept_ = stored_number(d["intercept"], "intercept")
        obj.coef_ = stored_finite_numbers(d["coef"], "coef")
        return obj


# Boosting rounds at most: the folds' validation loss (early stopping, 30 rounds of
# patience) picks how many are used. At 300, the cap stopped the folds of sets with
# step-like costs (padding buckets, per-hardware speeds) while their loss still fell,
# and the spread learned from those folds' residuals was too wide for the final model.
MAX_BOOST_ROUNDS = 2000
# A round counts as an improvement for early stopping only where it brings the held-out loss
# (LightGBM's metric of the objective, on log-runtime) more than this below the best counted
# so far, not below the round before: the folds stop once 30 rounds together lower it by no
# more (a steady 2e-10 a round, 6e-9 in 30, boosts on). It is the whole Huber loss of predictions
# whose root-mean-square error is 1e-4 in log-runtime, 0.01% of the runtimes: what is left
# to gain is worth no more than that to any quantile served. On runtimes that are an exact
# function of the features (a constant-time kernel on a coarse clock, a cached lookup) the
# folds otherwise went on finding gains of 1e-11 a round and less up to the 2,000-round cap (a
# two-valued runtime on 100,000 rows took minutes to train, see README "Performance").
MIN_ROUND_GAIN = 0.5 * 1e-4 ** 2


class LightGBMLocation(LocationModel):
    """Gradient-boosted trees on log-runtime: captures interactions and steps.

    By default the trees boost from the robust linear fit (``linear_base``):
    they learn what the log-linear model misses, and beyond the training range
    the prediction keeps the linear trend instead of going flat. The loss is
    Huber with a delta of 1.345 robust standard deviations of the linear fit's
    residuals (within [0.05, 1]): squared loss for the ordinary noise, absolute
    loss beyond, so that a slow minority mode (cold starts) or aborted requests
    do not drag the location; they go to the score distribution instead.
    """

    name = "lightgbm"
    # Below this many rows, boosted trees fit the noise, and picking them by the lowest
    # cross-validated loss among a dozen candidates is mostly luck: at 140 training rows,
    # over the eight seeds of the many-seeds study in benchmarks/accuracy.py, `auto` with
    # them lost up to 4% to the linear family alone and gained at most 0.2%.
    min_rows = 200
    _stored_text: str | None = None  # the booster's text as a model file gave it (from_json)
    DEFAULT_PARAMS: ClassVar[dict[str, Any]] = {
        "objective": "huber",
        "learning_rate": 0.08,
        "num_leaves": 15,
        "min_data_in_leaf": 10,
        "lambda_l2": 1.0,
        "verbosity": -1,
        "deterministic": True,
        "seed": 0,
    }

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], num_boost_round: int = MAX_BOOST_ROUNDS,
                 params: dict[str, Any] | None = None, linear_base: bool = True, base_regimes: bool = False):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.num_boost_round = num_boost_round
        self.params = {**self.DEFAULT_PARAMS, **(params or {})}
        self.linear_base = linear_base
        self.base_regimes = base_regimes
        self.base_: LinearLocation | None = None

    def _dataset(self, X, y, w=None, init=None, reference=None):
        import lightgbm as lgb

        unused = [j for j, k in enumerate(self.kinds) if k == UNUSED]
        if unused:
            # A constant column: no tree splits on it, so predictions need no masking.
            X = X.copy()
            X[:, unused] = 0.0
        cats = [j for j, k in enumerate(self.kinds) if k == "categorical"]
        return lgb.Dataset(X, y, weight=w, init_score=init, reference=reference, categorical_feature=cats or "auto",
                           free_raw_data=True, params={"verbosity": -1, "min_data_in_bin": 1})

    def _base(self, X) -> np.ndarray | None:
        return None if self.base_ is None else self.base_.predict(X)

    def fit(self, X, y, w=None, valid: tuple[np.ndarray, np.ndarray] | None = None):
        import lightgbm as lgb

        params = {**self.params, "min_data_in_leaf": min(self.params["min_data_in_leaf"], max(2, len(y) // 10))}
        if self.linear_base:
            self.base_ = LinearLocation(self.kinds, self.n_categories, regimes=self.base_regimes).fit(X, y, w)
            params["boost_from_average"] = False
        init = self._base(X)
        if params.get("objective") == "huber" and "alpha" not in params:
            if init is None:
                params["alpha"] = 0.5
            else:
                r = y - init
                mad = _robust_sd(r)
                params["alpha"] = float(np.clip(1.345 * mad, 0.05, 1.0))
        check_interaction_constraints(params.get("interaction_constraints"), X.shape[1])
        # The threads are the service's (a model stored when a request could set them keeps
        # its parameter, unused); OpenMP's default is far slower than one thread on small data.
        aliases = lightgbm_aliases()
        params = {k: v for k, v in params.items() if aliases.get(k, k) != "num_threads"}
        self.params_used_ = dict(params)
        params["num_threads"] = 1 if len(y) < 50_000 else (os.cpu_count() or 1)
        train = self._dataset(X, y, w, init)
        if valid is not None:
            vset = self._dataset(valid[0], valid[1], init=self._base(valid[0]), reference=train)
            evals: dict[str, Any] = {}
            # Kept for training on (boost_to): LightGBM would otherwise cut the booster at the
            # best round on ``valid``, the rows this fold's fit then scores.
            booster = lgb.train(params, train, self.num_boost_round, valid_sets=[vset], keep_training_booster=True,
                                callbacks=[lgb.early_stopping(30, verbose=False, min_delta=MIN_ROUND_GAIN),
                                           lgb.record_evaluation(evals)])
            self.best_iteration_ = booster.best_iteration or self.num_boost_round
            curve = next(iter(evals.get("valid_0", {}).values()), [])
            self.valid_curve_ = np.asarray(curve, dtype=np.float64)
        else:
            booster = lgb.train(params, train, self.num_boost_round)
            self.best_iteration_ = self.num_boost_round
        self.booster_ = booster
        return self

    def boost_to(self, rounds: int) -> None:
        """Predict with ``rounds`` trees, boosting on where a fit with ``valid`` stopped
        sooner (until no split is left to make)."""
        while self.booster_.current_iteration() < rounds and not self.booster_.update():
            pass
        self.best_iteration_ = rounds

    def predict(self, X):
        # One thread: OpenMP's start-up costs milliseconds, far more than a batch's trees.
        threads = 1 if len(X) < 20_000 else 0
        out = self.booster_.predict(X, num_iteration=self.best_iteration_, num_threads=threads)
        base = self._base(X)
        return out if base is None else out + base

    def predict_row(self, x):
        fast = self.__dict__.get("_row_predictor")
        if fast is None:
            fast = self._row_predictor = _LightGBMRowPredictor(self.booster_, self.best_iteration_)
        out = fast(x)
        return out if self.base_ is None else out + self.base_.predict_row(x)

    def to_json(self):
        # A loaded booster is written back as it was read (LightGBM parsed it without its
        # tree_sizes line and settings, see _booster_text, and would write it without them).
        booster = self._stored_text or self.booster_.model_to_string(num_iteration=self.best_iteration_)
        return {
            "num_boost_round": self.num_boost_round,
            "best_iteration": self.best_iteration_,
            "params": self.params,
            "params_used": self.params_used_,
            "linear_base": None if self.base_ is None else self.base_.to_json(),
            "booster": booster,
            # Checked before LightGBM parses the text again (see _booster_text).
            "booster_sha256": hashlib.sha256(booster.encode()).hexdigest(),
        }

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        import lightgbm as lgb

        base = d.get("linear_base")
        obj = cls(kinds, n_categories, d["num_boost_round"], d["params"], linear_base=base is not None)
        obj.best_iteration_ = int(d["best_iteration"])
        obj.params_used_ = d.get("params_used", d["params"])
        obj.base_ = None if base is None else LinearLocation.from_json(base, kinds, n_categories)
        obj.base_regimes = obj.base_ is not None and bool(obj.base_.flags_)
        # LightGBM's own text format: parsing it runs no code, unlike pickle. But LightGBM
        # aborts the whole process on some damaged texts, so the text is checked first.
        text, checked = _booster_text(d["booster"], d.get("booster_sha256"))
        obj.booster_ = lgb.Booster(model_str=text)
        if obj.booster_.num_trees() != checked:
            raise ValueError(f"the LightGBM booster text is damaged: {checked} trees written, "
                             f"{obj.booster_.num_trees()} read")
        obj._stored_text = d["booster"]
        return obj


_TREE_SIZES = re.compile(r"^tree_sizes=([^\n]*)\n", re.MULTILINE)
_TREE_HEADER = re.compile(rb"^Tree=\d+\n", re.MULTILINE)


def _booster_text(text: Any, digest: Any) -> tuple[str, int]:
    """A LightGBM booster text that is safe to hand to LightGBM, and how many trees it holds.

    LightGBM cuts the text into trees by the lengths on its ``tree_sizes=`` line and
    parses them in parallel; where a length no longer matches (a character lost or
    added), a parse error inside that parallel region terminates the process instead
    of raising. A text saved with its SHA-256 digest must match it exactly. Then (and
    for one saved before the digest was stored) its tree lengths must match its
    ``tree_sizes`` line, and it is parsed without that line: tree by tree, where
    LightGBM's errors are ordinary exceptions. A digest catches damage, not a file
    rewritten whole with its digests (by hand, or by another tool): such a file aborted
    the server on its first prediction. Raises ValueError for a damaged text.
    """
    if not isinstance(text, str):
        raise ValueError(f"the LightGBM booster must be text, got {type(text).__name__}")
    raw = text.encode()
    trees = len(_TREE_HEADER.findall(raw))
    if digest is not None and (not isinstance(digest, str) or hashlib.sha256(raw).hexdigest() != digest):
        raise ValueError("the LightGBM booster text does not match its SHA-256 digest: the file is damaged")
    check_trees(text)
    m = _TREE_SIZES.search(text)
    if m is None:
        return _through_trees(text), trees
    try:
        sizes = [int(v) for v in m.group(1).split()]
    except ValueError:
        raise ValueError("the LightGBM booster text is damaged: its tree_sizes line is not a list of numbers") from None
    if len(sizes) != trees:
        raise ValueError(f"the LightGBM booster text is damaged: it holds {trees} trees, its tree_sizes line {len(sizes)}")
    if trees:
        pos = _TREE_HEADER.search(raw).start()
        for k, size in enumerate(sizes):
            if not raw.startswith(b"Tree=%d\n" % k, pos):
                raise ValueError(f"the LightGBM booster text is damaged: tree {k} is not where its tree_sizes line "
                                 "puts it")
            pos += size
        if not raw.startswith(b"end of trees", pos):
            raise ValueError("the LightGBM booster text is damaged: its trees do not end where its tree_sizes line "
                             "says")
    return _through_trees(text[: m.start()] + text[m.end():]), trees


_MAX_FEATURE_IDX = re.compile(r"^max_feature_idx=(-?\d+)$", re.MULTILINE)
# The objectives LightGBM writes for the regression ones the service fits with (its aliases
# are written by these names; "sqrt" may follow, for reg_sqrt).
_STORED_OBJECTIVES = frozenset({"regression", "regression_l1", "huber", "fair", "quantile", "mape"})


def _header_values(head: str, key: str) -> list[str]:
    return [line[len(key) + 1:].strip() for line in head.split("\n") if line.startswith(key + "=")]


def _check_one_output(head: str) -> None:
    """Raise ValueError unless a booster's header describes one regression output per row.

    LightGBM sizes a prediction's output by ``num_tree_per_iteration`` (and a multiclass
    objective's by its own ``num_class``) and trusts both: a text rewritten with its digests
    to ``num_tree_per_iteration=0`` killed the server with SIGFPE at its first prediction,
    ``=100`` or ``objective=multiclass num_class:3`` corrupted its heap (SIGABRT or SIGSEGV at
    a batch prediction), and ``=2`` served other runtimes without a word.
    """
    classes = _header_values(head, "num_class")
    if classes != ["1"]:
        raise ValueError(f"the LightGBM booster text is damaged: its num_class lines are {shown(classes)}, "
                         "not one line of 1")
    per_iteration = _header_values(head, "num_tree_per_iteration")
    if per_iteration not in ([], ["1"]):  # (left out, LightGBM takes num_class)
        raise ValueError("the LightGBM booster text is damaged: its num_tree_per_iteration lines are "
                         f"{shown(per_iteration)}, not one line of 1")
    objectives = _header_values(head, "objective")
    if len(objectives) > 1 or (objectives and objectives[0].split(" ")[0] not in _STORED_OBJECTIVES):
        raise ValueError(f"the LightGBM booster text is damaged: its objective lines are {shown(objectives)}, "
                         "not one regression objective")


def check_trees(text: str) -> None:
    """Raise ValueError unless every tree of a booster text is one LightGBM can walk.

    LightGBM's parser takes a tree's arrays as they are: a child index past the tree, a
    split on a feature past the model's, or a child pointing back up (a cycle) were read
    far out of bounds (the server died of SIGSEGV, or served a runtime from whatever lay
    there) or walked for ever (each prediction spun a core; then the routes behind the
    registry's lock hung, and SIGTERM with them). A digest does not catch a file rewritten
    whole with its digests. So each tree must be a binary tree as LightGBM grows one: every
    internal node but the root the child of exactly one node numbered below it, every leaf
    the child of exactly one, features, categorical splits and linear leaves within range.
    """
    if "\r" in text:
        # LightGBM ends a line at a carriage return too, and writes none: "x=1\rnum_class=3"
        # is one line to the checks here, two to LightGBM.
        raise ValueError("the LightGBM booster text is damaged: it holds a carriage return")
    end = text.find("end of trees")
    # (Cut at each "\nTree=": its number ends the line; str.split is 10 times a regex's speed.)
    head, *blocks = ("\n" + text[:end if end >= 0 else len(text)]).split("\nTree=")
    # Read as LightGBM reads them, or stricter: what the two read differently (the first of two
    # max_feature_idx lines or the last, a line after LightGBM stops reading a tree, a line
    # without "=" that LightGBM joins to the next) let a damaged tree through the check.
    found = _MAX_FEATURE_IDX.findall(head)
    if len(found) != 1:
        raise ValueError(f"the LightGBM booster text is damaged: it has {len(found)} max_feature_idx lines, not one")
    n_features = int(found[0]) + 1
    _check_one_output(head)
    trees = []
    for k, block in enumerate(blocks):
        try:
            trees.append(tree_fields(block))
        except ValueError as exc:
            raise ValueError(f"the LightGBM booster text is damaged: tree {k}: {exc}") from None
    with contextlib.suppress(ValueError, KeyError, IndexError, OverflowError):
        if trees_walkable(trees, n_features):
            return
    # Damaged, or so the check of all at once says: tree by tree, to say which and why (all at
    # once, 2,000 trees of 63 leaves, an 11.7 MB text, are checked in about 0.2 s, LightGBM's
    # own parse 0.06 s; tree by tree 0.55 s). Where that finds nothing, the two checks differ
    # (a linear tree with no feature in any leaf did): the tree-by-tree one, simpler, decides.
    for k, fields in enumerate(trees):
        try:
            _check_tree(fields, n_features)
        except (ValueError, KeyError, IndexError, OverflowError) as exc:
            raise ValueError(f"the LightGBM booster text is damaged: tree {k}: {exc}") from None
    log.warning("the check of all LightGBM trees at once refused a booster that each tree's check accepts")


# LightGBM reads a tree's lines up to its first empty one, at most this many.
_TREE_LINES = 22


def tree_fields(block: str) -> dict[str, str]:
    """A tree's ``key=value`` lines (after its ``Tree=k`` line), as LightGBM reads them; a
    ValueError where LightGBM would read them otherwise than they look."""
    lines = block.splitlines()[1:]
    fields: dict[str, str] = {}
    for i, line in enumerate(lines):
        if not line:
            if any(lines[i + 1:]):
                raise ValueError("it has lines after its end (an empty line)")
            break
        if i == _TREE_LINES:
            raise ValueError(f"it has more than {_TREE_LINES} lines")
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"line {i + 2} is not key=value")
        if key in fields:
            raise ValueError(f"it has two {key} lines")
        fields[key] = value
    return fields


def trees_walkable(trees: list[dict[str, str]], n_features: int) -> bool:
    """What :func:`_check_tree` checks, for every tree at once: True where all pass."""
    if not trees:
        return True
    leaves = np.array([int(t["num_leaves"]) for t in trees])
    n_cat = np.array([int(t.get("num_cat", "0")) for t in trees])
    linear = np.array([t.get("is_linear", "0").strip() not in ("0", "") for t in trees])
    inner = leaves - 1

    def column(name: str, dtype: type, sizes: np.ndarray, finite: bool = True) -> np.ndarray | None:
        parts = [t.get(name, "") for t in trees]
        if not np.array_equal([len(p.split()) for p in parts], sizes):
            return None
        joined = " ".join(p for p in parts if p.strip())
        if not joined:
            got = np.empty(0, dtype=np.float64 if dtype is float else np.int64)  # (fromstring reads " " as one 0)
        else:
            with warnings.catch_warnings():
                # numpy's text parser (8 times np.array's speed on strings) stops at a word it
                # cannot read, with a warning: then fewer values than words come back.
                warnings.simplefilter("ignore", DeprecationWarning)
                got = np.fromstring(joined, dtype=np.float64 if dtype is float else np.int64, sep=" ")
        if len(got) != sizes.sum():
            return None
        return None if dtype is float and finite and not np.all(np.isfinite(got)) else got

    if np.any(leaves < 1) or np.any(n_cat < 0):
        return False
    got = [column("leaf_value", float, leaves), column("split_feature", int, inner), column("decision_type", int, inner),
           column("threshold", float, inner, finite=False), column("left_child", int, inner),
           column("right_child", int, inner)]
    if any(g is None for g in got):
        return False
    _, feature, decision, threshold, left, right = got
    if np.any((feature < 0) | (feature >= n_features)) or np.any((decision < 0) | (decision > 15)
                                                                     | (((decision >> 2) & 3) > 2)):
        return False
    tree = np.repeat(np.arange(len(trees)), inner)
    start = np.cumsum(inner) - inner
    node = np.arange(len(tree)) - start[tree]
    children, nodes, of = np.concatenate([left, right]), np.concatenate([node, node]), np.concatenate([tree, tree])
    internal = children >= 0
    split = inner > 0
    leaf_start = np.cumsum(leaves) - leaves
    if not (np.all(children[internal] > nodes[internal]) and np.all(children[internal] < inner[of[internal]])
            and np.all(~children[~internal] < leaves[of[~internal]])
            and internal.sum() == np.maximum(inner - 1, 0).sum() and (~internal).sum() == leaves[split].sum()
            and np.bincount(start[of[internal]] + children[internal], minlength=1).max(initial=0) <= 1
            and np.bincount(leaf_start[of[~internal]] + ~children[~internal], minlength=1).max(initial=0) <= 1):
        return False
    categorical = (decision & 1) == 1
    if categorical.any() or n_cat.any():
        bounds = column("cat_boundaries", int, np.where(n_cat > 0, n_cat + 1, 0))
        words = column("cat_threshold", int, np.array([len(t.get("cat_threshold", "").split()) for t in trees]))
        if bounds is None or words is None or np.any(words < 0):
            return False
        with_cat = np.flatnonzero(n_cat > 0)
        first = np.cumsum(n_cat[with_cat] + 1) - (n_cat[with_cat] + 1)
        last = first + n_cat[with_cat]
        steps = np.diff(bounds)
        steps[last[:-1]] = 0  # (between trees)
        counts = np.array([len(trees[k].get("cat_threshold", "").split()) for k in with_cat])
        cat = threshold[categorical]
        if not (np.all(bounds[first] == 0) and np.all(steps >= 0) and np.array_equal(bounds[last], counts)
                and np.all((cat >= 0) & (cat < n_cat[tree[categorical]]) & (cat == np.floor(cat)))):
            return False
    if linear.any():
        counts = column("num_features", int, np.where(linear, leaves, 0))
        if counts is None or np.any(counts < 0):
            return False
        per_tree = np.zeros(len(trees), dtype=np.int64)
        per_tree[linear] = np.add.reduceat(counts, np.cumsum(leaves[linear]) - leaves[linear]) if counts.size else 0
        used = column("leaf_features", int, per_tree)
        if (used is None or column("leaf_coeff", float, per_tree) is None
                or column("leaf_const", float, np.where(linear, leaves, 0)) is None or np.any((used < 0) | (used >= n_features))):
            return False
    return True


def _check_tree(fields: dict[str, str], n_features: int) -> None:
    def array(name: str, dtype: type, size: int | None, finite: bool = True) -> np.ndarray:
        got = np.array(fields.get(name, "").split(), dtype=dtype)
        if size is not None and len(got) != size:
            raise ValueError(f"{name} holds {len(got)} values, not {size}")
        if dtype is float and finite and not np.all(np.isfinite(got)):
            raise ValueError(f"{name} holds a value that is not a finite number")
        return got

    leaves, n_cat = int(fields["num_leaves"]), int(fields.get("num_cat", "0"))
    if leaves < 1 or n_cat < 0:
        raise ValueError(f"num_leaves {leaves}, num_cat {n_cat}")
    array("leaf_value", float, leaves)
    inner = leaves - 1
    feature = array("split_feature", int, inner)
    decision = array("decision_type", int, inner)
    threshold = array("threshold", float, inner, finite=False)  # (compared with, never read as a runtime)
    left, right = array("left_child", int, inner), array("right_child", int, inner)
    if np.any((feature < 0) | (feature >= n_features)):
        raise ValueError(f"a split on a feature outside the model's {n_features}")
    if np.any((decision < 0) | (decision > 15) | (((decision >> 2) & 3) > 2)):
        raise ValueError("a decision_type LightGBM does not know")
    children = np.concatenate([left, right])
    nodes = np.concatenate([np.arange(inner), np.arange(inner)])
    internal = children >= 0
    # Each internal node but the root is the child of one node numbered below it (so every
    # node is reached from the root, and no walk returns), and each leaf (~child) of one.
    if inner and not (np.array_equal(np.sort(children[internal]), np.arange(1, inner))
            and np.all(children[internal] > nodes[internal])
            and np.array_equal(np.sort(~children[~internal]), np.arange(leaves))):
        raise ValueError("its children do not make a tree")
    categorical = (decision & 1) == 1
    if categorical.any() or n_cat:
        bounds = array("cat_boundaries", int, n_cat + 1)
        words = array("cat_threshold", int, None)
        cat = threshold[categorical]
        if not (bounds[0] == 0 and np.all(np.diff(bounds) >= 0) and bounds[-1] == len(words) and np.all(words >= 0)
                and np.all((cat >= 0) & (cat < n_cat) & (cat == np.floor(cat)))):
            raise ValueError("its categorical splits do not match its cat_boundaries")
    if fields.get("is_linear", "0").strip() not in ("0", ""):
        counts = array("num_features", int, leaves)
        if np.any(counts < 0):
            raise ValueError("a linear leaf of fewer than 0 features")
        used = array("leaf_features", int, int(counts.sum()))
        array("leaf_coeff", float, int(counts.sum()))
        array("leaf_const", float, leaves)
        if np.any((used < 0) | (used >= n_features)):
            raise ValueError(f"a linear leaf reads a feature outside the model's {n_features}")


def _through_trees(text: str) -> str:
    """A booster text up to its ``end of trees`` line: the settings after it (feature
    importances, parameters) are not needed to predict, and LightGBM's parser crashed
    the process on a cut in them where nothing had checked them (no digest)."""
    end = text.find("end of trees")
    return text if end < 0 else text[:end] + "end of trees\n"


class _LightGBMRowPredictor:
    """One row through LightGBM's single-row C API (``LGBM_BoosterPredictForMatSingleRowFast``).

    ``Booster.predict`` spends 50-90 µs of set-up on every call, even for one
    row; the fast API does that set-up once, here, and then scores a row in a
    few µs. The Python package does not expose it, so it is called through the
    same ctypes handle to the library that the package itself uses.
    """

    _PREDICT_NORMAL = 0
    _DTYPE_FLOAT64 = 1

    def __init__(self, booster: Any, num_iteration: int):
        import ctypes

        from lightgbm.basic import _LIB, _safe_call

        self._lib, self._safe_call = _LIB, _safe_call
        self._booster = booster  # keeps the booster (and its handle) alive as long as this
        ncol = booster.num_feature()
        self._config = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(self._PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(num_iteration),
            ctypes.c_int(self._DTYPE_FLOAT64), ctypes.c_int32(ncol), ctypes.c_char_p(b"num_threads=1"),
            ctypes.byref(self._config)))
        self._row = (ctypes.c_double * ncol)()
        self._out = ctypes.c_double()
        self._out_len = ctypes.c_int64()
        self._args = (self._config, self._row, ctypes.byref(self._out_len), ctypes.byref(self._out))
        # The handle holds one row buffer: one caller at a time.
        self._lock = threading.Lock()

    def __call__(self, x: Sequence[float]) -> float:
        with self._lock:
            self._row[:] = x
            self._safe_call(self._lib.LGBM_BoosterPredictForMatSingleRowFast(*self._args))
            return self._out.value

    def __del__(self) -> None:
        config = getattr(self, "_config", None)
        if config is not None and config.value:
            with contextlib.suppress(Exception):  # the library may be gone at interpreter exit
                self._lib.LGBM_FastConfigFree(config)


FAMILIES: dict[str, type[LocationModel]] = {
    cls.name: cls for cls in (EmpiricalLocation, LinearLocation, PowerLocation, LightGBMLocation)
}


def check_interaction_constraints(groups: Any, n_features: int) -> None:
    """LightGBM aborts the process on a feature number beyond the data's: refused here instead."""
    if groups is None:
        return
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise ValueError(f"'interaction_constraints' must be a list of lists of feature numbers, got {shown(groups)}")
    for g in groups:
        for i in g:
            if isinstance(i, bool) or not isinstance(i, (int, float)) or i != int(i) or not 0 <= i < n_features:
                raise ValueError(f"'interaction_constraints' names feature {shown(i)}; the model has {n_features} "
                                 f"feature column(s), numbered 0 to {n_features - 1}")


def lightgbm_aliases() -> dict[str, str]:
    """Every LightGBM parameter name and alias, mapped to its canonical name."""
    global _LGB_ALIASES
    if _LGB_ALIASES is None:
        from lightgbm.basic import _ConfigAliases  # the library's own table (from its C API)

        table = _ConfigAliases._get_all_param_aliases()
        _LGB_ALIASES = {alias: name for name, aliases in table.items() for alias in (name, *aliases)}
    return _LGB_ALIASES


_LGB_ALIASES: dict[str, str] | None = None
