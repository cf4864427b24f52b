"""Shape models: per-task quantile functions of the standardised scores ``Z``.

:class:`ShapeModel` (distribution regression: one ridge logistic regression per knot,
with its Newton / conjugate-gradient solver), :class:`QuantileShapeModel` (linear
quantile regression of the scores), their recalibration map and the helpers that
keep their CDFs increasing; :data:`SHAPE_MODELS` reads either kind back.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..distribution import ScoreDistribution, row_dot
from ..errors import shown
from .design import (LogLinearDesign, categorical_positions, is_sparse, sparse_solve, sparse_view, wgram, wgrams,
                     with_intercept)
from .stored import stored_finite_numbers


# Knots of the shape model: levels of the shared Z where per-task CDFs are modelled.
KNOT_MIN_ROWS = 10
KNOT_LEVELS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


PCG_TOLERANCE = 1e-10  # relative residual of each Newton step's system
PCG_MAX_ITERATIONS = 300


def newton_steps_pcg(S, St, V: np.ndarray, r: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``(S' diag(V[:, k]) S + diag(r)) x_k = G[:, k]`` for every column at once by
    conjugate gradients, preconditioned by the diagonal; returns the solutions and which converged.

    The matrices are never formed: each iteration is two sparse products for all columns.
    Several categorical features of many values fill the matrices in (a block per pair of
    features), and one factorisation per column and Newton step was most of the training
    time: 15 knots of a 1,601-wide system took 0.96 s by Cholesky and 25 ms by 24 iterations
    of this, to 1e-11.
    """
    diag = np.asarray(S.multiply(S).T @ V) + r[:, None]

    def product(P: np.ndarray) -> np.ndarray:
        return np.asarray(St @ (V * (S @ P))) + r[:, None] * P

    X = G / diag
    R = G - product(X)
    Z = R / diag
    P = Z.copy()
    rz = (R * Z).sum(axis=0)
    goal = PCG_TOLERANCE * np.linalg.norm(G, axis=0)
    done = np.linalg.norm(R, axis=0) <= goal
    for _ in range(PCG_MAX_ITERATIONS):
        if done.all():
            break
        HP = product(P)
        curvature = (P * HP).sum(axis=0)
        a = np.where(done, 0.0, rz / np.where(curvature > 0, curvature, 1.0))
        X += a * P
        R -= a * HP
        done |= np.linalg.norm(R, axis=0) <= goal
        Z = R / diag
        new = (R * Z).sum(axis=0)
        P = Z + np.where(rz > 0, new / np.where(rz > 0, rz, 1.0), 0.0) * P
        rz = new
    return X, done


def logistic_ridge(A: np.ndarray, T: np.ndarray, alpha: float, w: np.ndarray | None = None, iters: int = 30) -> np.ndarray:
    """Independent ridge logistic regressions of each column of ``T`` on ``A``.

    Newton's method for all columns at once, with step halving per column so
    that it cannot diverge on (nearly) separable data. Returns coefficients,
    shape (1 + features, columns); row 0 is the (almost unpenalised) intercept.
    """
    n, d = A.shape
    K = T.shape[1]
    A1 = with_intercept(A)
    D = d + 1
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    sw = w.sum()
    p0 = np.clip((T * w[:, None]).sum(axis=0) / sw, 1e-4, 1 - 1e-4)
    B = np.zeros((D, K))
    B[0] = np.log(p0 / (1 - p0))
    if d == 0 or K == 0:
        return B
    r = np.full(D, float(alpha))
    r[0] = 1e-6
    # Outer products of the rows, to form every column's Hessian in one product.
    outer = (A1[:, :, None] * A1[:, None, :]).reshape(n, D * D) if n * D * D <= 4_000_000 and not is_sparse(A1) else None
    S1 = None if outer is not None else sparse_view(A1)
    S1t = None  # its transpose, made for the first Newton step
    M = A1 if S1 is None else S1  # the products below through the sparse view where there is one

    def losses(eta: np.ndarray, b: np.ndarray) -> np.ndarray:
        # Penalised negative log-likelihood per column: log(1 + e^eta) - t * eta.
        return (w[:, None] * (np.logaddexp(0.0, eta) - T * eta)).sum(axis=0) + 0.5 * (r[:, None] * b * b).sum(axis=0)

    eta = M @ B
    cur = losses(eta, B)
    active = np.ones(K, dtype=bool)
    for _ in range(iters):
        P = 0.5 * (1.0 + np.tanh(0.5 * eta))  # sigmoid, overflow-free
        G = M.T @ (w[:, None] * (P - T)) + r[:, None] * B
        V = w[:, None] * P * (1 - P)
        # Hessians (the bulk of the work: rows x D^2 per column) only for the columns still moving.
        live = np.flatnonzero(active)
        step = np.zeros((D, K))
        if S1 is not None:
            # A wide one-hot design: every knot's step by conjugate gradients through the
            # sparse design, all knots at once; a knot whose step did not converge (never
            # seen) is solved directly.
            if S1t is None:
                S1t = S1.T.tocsr()
            found, converged = newton_steps_pcg(S1, S1t, V[:, live], r, G[:, live])
            step[:, live] = found
            for k in live[~converged]:
                step[:, k] = sparse_solve(wgram(A1, V[:, k], S1, dense=False), r, G[:, k])
        else:
            if outer is not None:
                H = (V[:, live].T @ outer).reshape(len(live), D, D)
            else:
                H = wgrams(A1, V[:, live])
            H += np.diag(r)[None, :, :]
            step[:, live] = np.linalg.solve(H, G[:, live].T[:, :, None])[:, :, 0].T
        size = np.ones(K)
        accepted = np.zeros(K, dtype=bool)
        gain = np.zeros(K)
        for _ in range(20):
            nb = B - size[None, :] * step
            neta = M @ nb
            new = losses(neta, nb)
            ok = (new <= cur + 1e-12) & ~accepted
            B[:, ok], eta[:, ok] = nb[:, ok], neta[:, ok]
            gain = np.where(ok, cur - new, gain)
            cur = np.where(ok, new, cur)
            accepted |= ok
            if accepted.all():
                break
            size = np.where(accepted, size, size * 0.5)
        # A column has converged once its step no longer improves the loss.
        active &= accepted & (gain > 1e-9 * np.maximum(1.0, np.abs(cur)))
        if not active.any():
            break
    return B


class ShapeModel:
    """Distribution regression for ``Z``: ``P(Z <= Q(l_k) | x) = sigmoid(a_k + b_k . phi(x))``.

    ``phi`` are the log-linear design features; every knot ``l_k`` has its own
    ridge logistic regression. Predicted CDF values are made increasing along
    the knots, then mapped through the recalibration (the CDF of out-of-fold PIT
    values), so that on new data they are calibrated.
    """

    MAX_ROWS: ClassVar[int] = 10_000
    kind: ClassVar[str] = "logistic"
    # Whether it may also read a LightGBM location (QuantileModel's shape_location).
    reads_location: ClassVar[bool] = True

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], alpha: float = 10.0, hinges: int = 3):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.alpha = alpha
        self.hinges = hinges
        self.recal_: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def knots_for(n: int) -> tuple[float, ...]:
        # Every knot needs enough rows on its rarer side for its regression to mean something.
        return tuple(t for t in KNOT_LEVELS if min(t, 1 - t) * n >= KNOT_MIN_ROWS)

    def fit(self, X: np.ndarray, z: np.ndarray, score: ScoreDistribution, w: np.ndarray | None = None,
            random_state: int = 0) -> "ShapeModel":
        n = len(z)
        if n > self.MAX_ROWS:
            rows = np.random.default_rng(random_state).choice(n, self.MAX_ROWS, replace=False)
            X, z, w = X[rows], z[rows], None if w is None else w[rows]
        self.knots_ = self.knots_for(len(z))
        self.design_ = LogLinearDesign(self.kinds, self.n_categories, self.hinges).fit(X)
        if not self.knots_:
            self.coef_ = np.zeros((1 + self.design_.transform(X[:1]).shape[1], 0))
            return self
        self.coef_ = self._coefficients(self.design_.transform(X, sparse=True), z, score, w)
        return self

    def _coefficients(self, A, z: np.ndarray, score: ScoreDistribution, w: np.ndarray | None) -> np.ndarray:
        """(1 + columns, knots): each knot's ridge logistic regression of ``Z <= Q(l_k)``."""
        c = score.quantile(np.asarray(self.knots_))
        T = (z[:, None] <= c[None, :]).astype(np.float64)
        return logistic_ridge(A, T, self.alpha, w)

    def raw_cdf(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated CDF at the knots, (rows, knots), increasing along knots."""
        from scipy.special import expit

        A = self.design_.transform(X, sparse=True)
        F = expit(self.coef_[0][None, :] + row_dot(A, self.coef_[1:]))
        return increasing(F)

    def cdf(self, X: np.ndarray) -> np.ndarray:
        return self._recalibrate(self.raw_cdf(X))

    def cdf_row(self, x: Sequence[float]) -> list[float]:
        """``cdf`` of one row at the knots, in plain floats (one small matrix product in numpy)."""
        eta = (self.coef_[0] + np.array(self.design_.row(x)) @ self.coef_[1:]).tolist()
        F = _increasing_row([_expit(e) for e in eta])
        if self.recal_ is None:
            return F
        return _increasing_row([_interp1(v, *self._recal_lists()) for v in F])

    def _recal_lists(self) -> tuple[list[float], list[float]]:
        """The recalibration map in plain floats, converted once per map."""
        got = self.__dict__.get("_recal_cache")
        if got is None or got[0] is not self.recal_:
            got = self._recal_cache = (self.recal_, self.recal_[0].tolist(), self.recal_[1].tolist())
        return got[1], got[2]

    def _recalibrate(self, F: np.ndarray) -> np.ndarray:
        if self.recal_ is not None:
            F = increasing(np.interp(F, *self.recal_))
        return F

    def pit(self, F: np.ndarray, z: np.ndarray, score: ScoreDistribution) -> np.ndarray:
        """Probability integral transform of scores ``z`` under the rows' distributions ``F``."""
        u = np.interp(z, score.values, score.levels, left=0.0, right=1.0)
        lk = np.concatenate([[0.0], self.knots_, [1.0]])
        n = len(z)
        Fp = np.concatenate([np.zeros((n, 1)), F, np.ones((n, 1))], axis=1)
        idx = np.clip(np.searchsorted(lk, u, side="right") - 1, 0, len(lk) - 2)
        rows = np.arange(n)
        frac = (u - lk[idx]) / (lk[idx + 1] - lk[idx])
        return Fp[rows, idx] + frac * (Fp[rows, idx + 1] - Fp[rows, idx])

    def set_recalibration(self, pits: np.ndarray) -> None:
        self.recal_ = recalibration_map(pits)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "alpha": self.alpha,
            "hinges": self.hinges,
            "knots": list(self.knots_),
            "design": self.design_.to_json(),
            "coef": self.coef_.tolist(),
            "recalibration": None if self.recal_ is None else [self.recal_[0].tolist(), self.recal_[1].tolist()],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], kinds, n_categories) -> "ShapeModel":
        obj = cls(kinds, n_categories, d["alpha"], int(d.get("hinges", 0)))
        obj.knots_ = tuple(float(t) for t in d["knots"])
        obj.design_ = LogLinearDesign.from_json(d["design"])
        obj.coef_ = stored_finite_numbers(d["coef"], "coef", ndim=2).reshape(-1, len(obj.knots_))
        rc = d.get("recalibration")
        obj.recal_ = None if rc is None else (stored_finite_numbers(rc[0], "recalibration"), stored_finite_numbers(rc[1], "recalibration"))
        return obj


# Iterations of the quantile regression's MM algorithm, and its smoothing floor relative
# to the scores' spread (see quantile_regression).
QR_ITERATIONS = 100
QR_MIN_SMOOTHING = 1e-6
QR_TOLERANCE = 1e-4  # a level is done when no coefficient moves more than this (relative)
# Rows a shape by quantile regression is fitted on, at most (a random subsample above).
QR_MAX_ROWS = 5_000
# Columns of the design above which no shape is fitted by quantile regression: its
# per-level Gram matrices grow with the square of the width, and on the few hundred rows
# where it pays off, a wide design only follows the noise.
QR_MAX_WIDTH = 32


def quantile_regression(A: np.ndarray, y: np.ndarray, levels: Sequence[float], w: np.ndarray | None = None) -> np.ndarray:
    """Linear quantile regression of ``y`` on ``A`` (with an intercept) at every level at once.

    Returns coefficients (1 + columns, levels), the intercepts in row 0. Each level
    minimises the (weighted) pinball loss by majorization-minimization (Hunter and
    Lange, 2000): every step is a weighted least squares whose weights 1/(eps + |r|)
    majorize the absolute residual, with eps shrinking geometrically to a floor. All
    levels step together; the loss is within a fraction of a percent of the exact
    linear program's (HiGHS), at a small fraction of its time on thousands of rows.
    """
    n, p = A.shape
    A1 = np.column_stack([np.ones(n), A])
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    t = np.asarray(levels, dtype=np.float64)
    G0 = (A1 * w[:, None]).T @ A1
    # A whisper of ridge keeps one-hot columns that sum to the intercept solvable.
    R = 1e-8 * max(float(np.trace(G0)) / (p + 1), 1e-300) * np.eye(p + 1)
    R[0, 0] = 0.0
    b = np.linalg.solve(G0 + R, A1.T @ (w * y))
    r = y - A1 @ b
    B = np.repeat(b[:, None], len(t), axis=1)
    B[0] += np.quantile(r, t)
    # (Equal scores, a constant runtime's, have no spread: a floor keeps the weights finite.)
    spread = max(float(np.median(np.abs(r - np.median(r)))), 1e-9 * (1.0 + float(np.abs(y).max())))
    eps, floor = 0.1 * spread, QR_MIN_SMOOTHING * spread
    Aw = A1.T @ w
    # Every level's Gram matrix in one product: the rows' outer products, weighted per level.
    outer = (A1[:, :, None] * A1[:, None, :]).reshape(n, -1)
    active = np.arange(len(t))
    for _ in range(QR_ITERATIONS):
        # The middle levels settle in a few dozen steps, the extreme ones (few rows on
        # their far side) take longer: each level steps until its coefficients stand still.
        Ba, ta = B[:, active], t[active]
        Wt = w[:, None] / (eps + np.abs(y[:, None] - A1 @ Ba))
        G = (Wt.T @ outer).reshape(len(active), p + 1, p + 1) + R[None]
        rhs = A1.T @ (Wt * y[:, None]) + (2 * ta - 1)[None, :] * Aw[:, None]
        try:
            new = np.linalg.solve(G, rhs.T[..., None])[..., 0].T
        except np.linalg.LinAlgError:  # weights piled on fewer rows than columns
            new = (np.linalg.pinv(G) @ rhs.T[..., None])[..., 0].T
        if not np.all(np.isfinite(new)):
            break
        B[:, active] = new
        if eps <= floor:
            moved = np.abs(new - Ba).max(axis=0) > QR_TOLERANCE * (1.0 + np.abs(new).max(axis=0))
            active = active[moved]
            if not len(active):
                break
        eps = max(eps * 0.5, floor)
    return B


class QuantileShapeModel(ShapeModel):
    """The shape of ``Z`` by linear quantile regression: ``Q(l_k | x) = a_k + b_k . phi(x)``.

    Where :class:`ShapeModel` regresses the probability below each knot, this
    regresses each knot level's quantile (monotone after sorting) on the same
    log-linear design, without a penalty: the per-level linear quantile regression on
    the log scale, around the location, with a level of its own for each feature's
    slope. On a few hundred rows of a mixture whose shape moves with a feature (each
    model's runtimes over accelerators it does not see), it follows the mixtures that
    the penalised logistic fits smooth away. A row's CDF at the knots is read off its
    quantile curve: between the curve's levels along the pooled scores' distribution,
    beyond them towards 0 and 1 in proportion, then recalibrated as the other shape is.
    """

    MAX_ROWS: ClassVar[int] = QR_MAX_ROWS
    kind: ClassVar[str] = "quantile"
    # A slope on the held-out location the folds fit it on is not one on the final location
    # it is served with, and the folds do not see that (README, Modelling).
    reads_location: ClassVar[bool] = False

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], alpha: float = 0.0, hinges: int = 0):
        super().__init__(kinds, n_categories, alpha, hinges)

    @staticmethod
    def fits(kinds: Sequence[str], n_categories: Sequence[int]) -> bool:
        """Whether the design (no hinges) is narrow enough for this shape (:data:`QR_MAX_WIDTH`)."""
        width = 2 * sum(k == "numeric" for k in kinds) + sum(k for _, k in categorical_positions(kinds, n_categories))
        return 0 < width <= QR_MAX_WIDTH

    def fit(self, X, z, score, w=None, random_state=0):
        self.attach(score)
        return super().fit(X, z, score, w, random_state)

    def _coefficients(self, A, z, score, w):
        """(1 + columns, knots): each knot level's linear quantile regression of ``Z``."""
        return quantile_regression(A if isinstance(A, np.ndarray) else A.toarray(), z, self.knots_, w)

    def attach(self, score: ScoreDistribution) -> None:
        """The pooled scores this shape reads its knots against (the model's ``score_``)."""
        self.score_ = score
        self._score_lists = (score.values.tolist(), score.levels.tolist())  # for cdf_row

    def _from_quantiles(self, Qz: np.ndarray) -> np.ndarray:
        """CDF at the knots, (rows, knots), of rows whose quantiles at the knot levels are ``Qz``."""
        Qz = np.sort(Qz, axis=-1)
        n, K = Qz.shape
        # Each quantile's level among the pooled scores, then the piecewise-linear map
        # from pooled level to the row's level through (0, 0), (u_k, l_k), (1, 1).
        u = np.interp(Qz, self.score_.values, self.score_.levels)
        u = np.maximum.accumulate(u + np.arange(K) * 1e-9, axis=-1)
        U = np.concatenate([np.zeros((n, 1)), u, np.ones((n, 1))], axis=1)
        T = np.concatenate([[0.0], self.knots_, [1.0]])
        rows = np.arange(n)
        F = np.empty((n, K))
        for k, lv in enumerate(self.knots_):
            j = np.clip((U <= lv).sum(axis=1) - 1, 0, K)
            u0, u1 = U[rows, j], U[rows, j + 1]
            F[:, k] = T[j] + (lv - u0) / np.maximum(u1 - u0, 1e-12) * (T[j + 1] - T[j])
        return increasing(F)

    def raw_cdf(self, X: np.ndarray) -> np.ndarray:
        A = self.design_.transform(X, sparse=True)
        return self._from_quantiles(self.coef_[0][None, :] + row_dot(A, self.coef_[1:]))

    def cdf_row(self, x: Sequence[float]) -> list[float]:
        """``cdf`` of one row, in plain floats: ``_from_quantiles`` step by step."""
        Qz = sorted((self.coef_[0] + np.array(self.design_.row(x)) @ self.coef_[1:]).tolist())
        values, levels = self._score_lists
        U, top = [0.0], 0.0
        for k, v in enumerate(Qz):
            top = max(_interp1(v, values, levels) + k * 1e-9, top)
            U.append(top)
        U.append(1.0)
        T = [0.0, *self.knots_, 1.0]
        F = _increasing_row([_interp1(lv, U, T) for lv in self.knots_])
        if self.recal_ is None:
            return F
        return _increasing_row([_interp1(v, *self._recal_lists()) for v in F])


def shape_from_json(d: dict[str, Any], kinds, n_categories, score: ScoreDistribution) -> ShapeModel:
    """The shape model ``to_json`` wrote, of either kind (one stored without a kind is logistic)."""
    if not isinstance(d, dict):
        raise ValueError(f"the shape model is {shown(d)}, not an object")
    kind = d.get("kind", ShapeModel.kind)
    cls = next((c for c in SHAPE_MODELS.values() if c.kind == kind), None)
    if cls is None:
        raise ValueError(f"the shape model's kind is {shown(kind)}, not "
                         + " or ".join(c.kind for c in SHAPE_MODELS.values()))
    shape = cls.from_json(d, kinds, n_categories)
    if isinstance(shape, QuantileShapeModel):
        shape.attach(score)
    return shape


def increasing(F: np.ndarray) -> np.ndarray:
    """Clip into (0, 1) and make strictly increasing along the last axis."""
    k = F.shape[-1]
    F = np.clip(F, 1e-6, 1 - 1e-6 - k * 1e-9)
    return np.maximum.accumulate(F, axis=-1) + np.arange(k) * 1e-9


def _increasing_row(F: list[float]) -> list[float]:
    """``increasing`` of one row of plain floats."""
    k = len(F)
    hi = 1 - 1e-6 - k * 1e-9
    out = []
    top = -math.inf
    for i, v in enumerate(F):
        if v < 1e-6:
            v = 1e-6
        elif v > hi:
            v = hi
        if v > top:
            top = v
        out.append(top + i * 1e-9)
    return out


def _expit(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def _interp1(v: float, xs: list[float], ys: list[float]) -> float:
    """``np.interp`` of one value (xs increasing)."""
    if v <= xs[0]:
        return ys[0]
    if v >= xs[-1]:
        return ys[-1]
    k = bisect.bisect_right(xs, v)
    x0, x1 = xs[k - 1], xs[k]
    return ys[k - 1] + (v - x0) / (x1 - x0) * (ys[k] - ys[k - 1]) if x1 > x0 else ys[k]


def recalibration_map(pits: np.ndarray, max_points: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The CDF of PIT values, with conformal plotting positions, as (x, y) knots for ``np.interp``."""
    v = np.sort(np.clip(pits, 0.0, 1.0))
    n = len(v)
    lv = np.arange(1, n + 1) / (n + 1)
    if n > max_points:
        grid = np.linspace(lv[0], lv[-1], max_points)
        v = np.interp(grid, lv, v)
        lv = grid
    x = np.concatenate([[0.0], v, [1.0]])
    y = np.concatenate([[0.0], lv, [1.0]])
    # Ties (several equal PIT values) would make the map a step; spread them.
    x = np.maximum.accumulate(x + np.arange(len(x)) * 1e-12)
    return x, y


# A candidate's ``shaped``: False, True (ShapeModel) or this (QuantileShapeModel).
QUANTILE_SHAPE = QuantileShapeModel.kind
SHAPE_MODELS: dict[bool | str, type[ShapeModel]] = {True: ShapeModel, QUANTILE_SHAPE: QuantileShapeModel}
SHAPE_SUFFIX = {False: "", True: "+shape", QUANTILE_SHAPE: "+quantiles"}
