"""The scale model: ``s(x)``, a log-linear model of the size of the residuals.

Its own module because the location families and the model only use it through
:class:`ScaleModel`; its soft floor and bounds are its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..distribution import row_dot
from .design import LogLinearDesign, is_sparse, sparse_lu, sparse_view, wgram, with_intercept
from .stored import stored_finite_numbers


# Residuals a feature-dependent scale needs: on fewer it is the constant one.
SCALE_MIN_ROWS = 30
# A row's scale relative to the average, at most this many e-folds either way: a sane
# range around the average noise.
SCALE_LOG_LIMIT = 2.5
SCALE_RANGE = (math.exp(-SCALE_LOG_LIMIT), math.exp(SCALE_LOG_LIMIT))
# How gradually a linear scale meets its floor (see _soft_floor).
SCALE_FLOOR_SOFTNESS = 0.02


def _soft_floor(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``z`` kept above ``SCALE_RANGE[0]`` smoothly (a softplus), and its derivative.

    Ten times the softness above the floor, it is ``z`` to within 1e-6.
    """
    lo, soft = SCALE_RANGE[0], SCALE_FLOOR_SOFTNESS
    x = (z - lo) / soft
    return lo + soft * np.logaddexp(0.0, x), 0.5 * (1.0 + np.tanh(0.5 * x))


def _soft_floor_value(z: float) -> float:
    """``_soft_floor(z)[0]`` for one float, without numpy (a lone prediction's hot path);
    ``logaddexp(0, x)`` is ``x + log1p(exp(-x))`` for ``x > 0``."""
    lo, soft = SCALE_RANGE[0], SCALE_FLOOR_SOFTNESS
    x = (z - lo) / soft
    return lo + soft * (x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x)))


class ScaleModel:
    """Model of residual size, relative to its average; constant when there are no features.

    With ``link="log"``, ``log s(x)`` is linear in the log-linear design; with
    ``link="identity"``, ``s(x)`` itself is (noise that grows by a fixed amount
    per unit of load, which a log-linear scale bends into an exponential). Both
    are fitted by maximising the Laplace likelihood of the residuals
    (``|r| / s + log s``, Fisher scoring), which is robust and, unlike a
    regression of ``log |r|``, does not blow up on residuals near zero. The
    scale's level is absorbed by ``Z``: what is kept is how it varies.
    """

    LINKS = ("log", "identity")

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], alpha: float = 2.0, hinges: int = 3,
                 link: str = "log"):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.alpha = alpha
        self.hinges = hinges
        self.link = link

    def fit(self, X: np.ndarray, residuals: np.ndarray, w: np.ndarray | None = None,
            design: LogLinearDesign | None = None) -> "ScaleModel":
        """``design``: this model's design already fitted to ``X`` (the penalties and links
        tried on one fold share it)."""
        a = np.abs(residuals)
        self.design_ = design if design is not None else LogLinearDesign(self.kinds, self.n_categories, self.hinges).fit(X)
        A = self.design_.transform(X, sparse=True)
        self.intercept_, self.coef_ = 0.0, np.zeros(A.shape[1])
        if A.shape[1] == 0 or len(a) < SCALE_MIN_ROWS or not np.any(a > 0):
            return self
        w = np.ones(len(a)) if w is None else np.asarray(w, dtype=np.float64)
        coef = (self._fit_identity if self.link == "identity" else self._fit_log)(A, a, w)
        if np.all(np.isfinite(coef)):
            self.coef_ = coef
        return self

    def _fit_log(self, A, a: np.ndarray, w: np.ndarray) -> np.ndarray:
        A1 = with_intercept(A)
        # The ridge penalty per coefficient, the intercept's none (a vector: as a dense
        # matrix it cost a 2,000-value categorical's fit most of its time in products).
        R = np.full(A1.shape[1], self.alpha)
        R[0] = 0.0
        # Fisher scoring: the expected Hessian is A1' W A1 at every step.
        S1 = sparse_view(A1)
        if S1 is None:
            M, H = A1, (A1 * w[:, None]).T @ A1 + np.diag(R)
            solve = lambda g: np.linalg.solve(H, g)  # noqa: E731
        else:
            # Wide one-hot design: one sparse LU of the (fixed) Fisher matrix for every step.
            import scipy.sparse as sp

            M, solve = S1, sparse_lu(wgram(A1, w, S1, dense=False) + sp.diags(R), symmetric=True)
        b = np.zeros(A1.shape[1])
        b[0] = np.log(max(float((w * a).sum() / w.sum()), 1e-12))
        for _ in range(50):
            eta = np.clip(M @ b, -50, 50)
            g = M.T @ (w * (1.0 - a * np.exp(-eta))) + R * b
            step = solve(g)
            b -= step
            if np.abs(step).max() < 1e-6:
                break
        return b[1:]

    def _fit_identity(self, A, a: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``s = exp(t) floored(1 + A c)``: Fisher scoring on ``(t, c)`` together, halving a
        step that does not lower the penalised deviance.

        The penalty is on ``c``, the relative change per standardised unit, like the log
        link's coefficients near the average scale. The floor is smooth
        (:func:`_soft_floor`): at a hard one the deviance has kinks where rows reach it,
        and the steps stalled there (50 without converging), as they did with the level
        ``t`` and ``c`` updated in turn instead of together. The design is dense: the
        linear link is chosen only for scales of numeric features (see
        ``QuantileModel._scale_design``), a few columns each.
        """
        M = A.toarray() if is_sparse(A) else A

        def deviance(t: float, c: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
            eta, slope = _soft_floor(1.0 + M @ c)
            s = math.exp(t) * eta
            return float((w * (a / s + np.log(s))).sum()) + 0.5 * self.alpha * float(c @ c), eta, slope

        t = math.log(max(float((w * a).sum() / w.sum()), 1e-300))
        c = np.zeros(A.shape[1])
        f, eta, slope = deviance(t, c)
        for _ in range(50):
            u = w * (1.0 - a / (math.exp(t) * eta))  # d deviance / d log s, per row
            v = slope / eta  # d log s / d (A c)
            g = np.concatenate([[u.sum()], M.T @ (u * v) + self.alpha * c])
            # The expected Hessian of the Laplace deviance in log s is w: D' W D, D = [1, A v].
            cross = M.T @ (w * v)
            block = wgram(M, w * v**2) + self.alpha * np.eye(len(c))
            H = np.block([[np.array([[w.sum()]]), cross[None, :]], [cross[:, None], block]])
            step = np.linalg.solve(H, g)
            for _ in range(20):
                t_new, c_new = t - step[0], c - step[1:]
                got = deviance(t_new, c_new)
                if got[0] <= f:
                    break
                step = step / 2
            else:
                break
            t, c = t_new, c_new
            f, eta, slope = got
            if np.abs(step).max() < 1e-6:
                break
        return c

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.is_constant:
            return np.ones(len(X))
        lin = row_dot(self.design_.transform(X, sparse=True), self.coef_)
        # Keep the learned spread within a sane range of the average noise.
        if self.link == "identity":
            return np.minimum(_soft_floor(1.0 + lin)[0], SCALE_RANGE[1])
        return np.exp(np.clip(lin, -SCALE_LOG_LIMIT, SCALE_LOG_LIMIT))

    @property
    def is_constant(self) -> bool:
        got = self.__dict__.get("_constant")
        if got is None or got[0] is not self.coef_:  # asked on every prediction: decided once per fit
            got = self._constant = (self.coef_, not self.coef_.any())
        return got[1]

    def predict_row(self, x: Sequence[float]) -> float:
        """``predict`` for one row, in plain floats."""
        if self.is_constant:
            return 1.0
        lin = self.design_.dot_row(x, self.coef_)
        if self.link == "identity":
            return min(_soft_floor_value(1.0 + lin), SCALE_RANGE[1])
        return math.exp(min(max(lin, -SCALE_LOG_LIMIT), SCALE_LOG_LIMIT))

    def to_json(self) -> dict[str, Any]:
        out = {"alpha": self.alpha, "kinds": self.kinds, "n_categories": self.n_categories,
               "design": self.design_.to_json(), "coef": self.coef_.tolist()}
        if self.link != "log":  # a log-linear scale is stored as before this option
            out["link"] = self.link
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], kinds, n_categories) -> "ScaleModel":
        design = LogLinearDesign.from_json(d["design"])
        link = d.get("link", "log")
        if link not in cls.LINKS:
            raise ValueError(f"scale link must be one of {cls.LINKS}, not {link!r}")
        obj = cls(kinds, n_categories, d["alpha"], design.hinges, link)
        obj.design_ = design
        obj.intercept_ = 0.0
        obj.coef_ = stored_finite_numbers(d["coef"], "coef")
        return obj
