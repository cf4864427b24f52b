"""Runtime-distribution models: location families, a scale model and conformal calibration.

A :class:`QuantileModel` predicts ``log(runtime) = m(x) + s(x) * Z``:

* ``m`` comes from one of several *location families* (empirical, robust linear
  on log features, LightGBM), chosen per model by cross-validated pinball loss;
* ``s`` is a log-linear model of the size of the cross-validated residuals, so
  that noise may grow or shrink with the features (heteroscedasticity);
* ``Z`` is the empirical distribution of the out-of-fold standardised residuals,
  which makes each level's coverage match its nominal level on new data
  (cross-conformal calibration: every row is used to fit and to calibrate).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .distribution import RuntimeDistribution, ScoreDistribution

EVAL_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
ALGORITHMS = ("auto", "empirical", "linear", "lightgbm")


# --------------------------------------------------------------------------- metrics


def pinball_loss(y: np.ndarray, q: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Mean pinball loss per level; ``q`` has shape (rows, levels)."""
    levels_arr = np.asarray(levels)[None, :]
    diff = y[:, None] - q
    return np.maximum(levels_arr * diff, (levels_arr - 1) * diff).mean(axis=0)


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


def _lvl(t: float) -> str:
    return f"{t:g}"


# --------------------------------------------------------------------------- design matrices


class LogLinearDesign:
    """Features for linear models: log and standardised values, one-hot categories."""

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int]):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)

    def fit(self, X: np.ndarray) -> "LogLinearDesign":
        num = [j for j, k in enumerate(self.kinds) if k == "numeric"]
        Xn = X[:, num]
        L = np.sign(Xn) * np.log1p(np.abs(Xn))
        self.center_ = np.concatenate([L.mean(axis=0), Xn.mean(axis=0)]) if num else np.zeros(0)
        spread = np.concatenate([L.std(axis=0), Xn.std(axis=0)]) if num else np.zeros(0)
        self.spread_ = np.where(spread > 0, spread, 1.0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        num = [j for j, k in enumerate(self.kinds) if k == "numeric"]
        parts = []
        if num:
            Xn = X[:, num]
            L = np.sign(Xn) * np.log1p(np.abs(Xn))
            parts.append((np.concatenate([L, Xn], axis=1) - self.center_) / self.spread_)
        for j, (kind, k) in enumerate(zip(self.kinds, self.n_categories)):
            if kind == "categorical" and k > 0:
                codes = X[:, j]
                parts.append((codes[:, None] == np.arange(k)[None, :]).astype(np.float64))
        if not parts:
            return np.zeros((len(X), 0))
        return np.concatenate(parts, axis=1)

    def to_json(self) -> dict[str, Any]:
        return {
            "kinds": self.kinds,
            "n_categories": self.n_categories,
            "center": self.center_.tolist(),
            "spread": self.spread_.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LogLinearDesign":
        obj = cls(d["kinds"], d["n_categories"])
        obj.center_ = np.asarray(d["center"], dtype=np.float64)
        obj.spread_ = np.asarray(d["spread"], dtype=np.float64)
        return obj


def _ridge(A: np.ndarray, y: np.ndarray, alpha: float, w: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Weighted ridge regression with an unpenalised intercept."""
    w = np.ones(len(y)) if w is None else w
    sw = w.sum()
    a_mean = (A * w[:, None]).sum(axis=0) / sw
    y_mean = float((y * w).sum() / sw)
    Ac = A - a_mean
    yc = y - y_mean
    Aw = Ac * w[:, None]
    gram = Ac.T @ Aw + alpha * sw / len(y) * np.eye(A.shape[1])
    coef = np.linalg.solve(gram, Aw.T @ yc)
    return y_mean - float(a_mean @ coef), coef


# --------------------------------------------------------------------------- location families


class LocationModel:
    """Predicts the location ``m(x)`` of log-runtime; subclasses are the families."""

    name: ClassVar[str]
    min_rows: ClassVar[int] = 1

    def fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> "LocationModel":
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


class EmpiricalLocation(LocationModel):
    """No features: the runtime distribution is that of the training runtimes."""

    name = "empirical"

    def fit(self, X, y, w=None):
        self.location_ = float(np.median(y))
        return self

    def predict(self, X):
        return np.full(len(X), self.location_)

    def to_json(self):
        return {"location": self.location_}

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        obj = cls()
        obj.location_ = float(d["location"])
        return obj


class LinearLocation(LocationModel):
    """Robust (Huber, by reweighting) ridge regression of log-runtime on log features."""

    name = "linear"
    min_rows = 8

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], alpha: float = 1.0, huber_delta: float = 1.0):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.alpha = alpha
        self.huber_delta = huber_delta

    def fit(self, X, y, w=None):
        self.design_ = LogLinearDesign(self.kinds, self.n_categories).fit(X)
        A = self.design_.transform(X)
        base_w = np.ones(len(y)) if w is None else w
        weights = base_w
        for _ in range(4):
            b, coef = _ridge(A, y, self.alpha, weights)
            r = y - b - A @ coef
            mad = np.median(np.abs(r - np.median(r))) * 1.4826 + 1e-9
            # Huber weights tame the aborted-request and cold-start outliers.
            scaled = np.abs(r) / (self.huber_delta * mad)
            weights = base_w * np.minimum(1.0, 1.0 / np.maximum(scaled, 1e-12))
        self.intercept_, self.coef_ = b, coef
        return self

    def predict(self, X):
        return self.intercept_ + self.design_.transform(X) @ self.coef_

    def to_json(self):
        return {
            "alpha": self.alpha,
            "huber_delta": self.huber_delta,
            "design": self.design_.to_json(),
            "intercept": self.intercept_,
            "coef": self.coef_.tolist(),
        }

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        obj = cls(kinds, n_categories, d["alpha"], d["huber_delta"])
        obj.design_ = LogLinearDesign.from_json(d["design"])
        obj.intercept_ = float(d["intercept"])
        obj.coef_ = np.asarray(d["coef"], dtype=np.float64)
        return obj


class LightGBMLocation(LocationModel):
    """Gradient-boosted trees on log-runtime: captures interactions and steps."""

    name = "lightgbm"
    min_rows = 50
    DEFAULT_PARAMS: ClassVar[dict[str, Any]] = {
        "objective": "huber",
        "alpha": 1.0,
        "learning_rate": 0.08,
        "num_leaves": 15,
        "min_data_in_leaf": 10,
        "lambda_l2": 1.0,
        "verbosity": -1,
        "deterministic": True,
        "seed": 0,
    }

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], num_boost_round: int = 300, params: dict[str, Any] | None = None):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.num_boost_round = num_boost_round
        self.params = {**self.DEFAULT_PARAMS, **(params or {})}

    def _dataset(self, X, y, w=None):
        import lightgbm as lgb

        cats = [j for j, k in enumerate(self.kinds) if k == "categorical"]
        return lgb.Dataset(X, y, weight=w, categorical_feature=cats or "auto", free_raw_data=True,
                           params={"verbosity": -1, "min_data_in_bin": 1})

    def fit(self, X, y, w=None, valid: tuple[np.ndarray, np.ndarray] | None = None):
        import lightgbm as lgb

        params = {**self.params, "min_data_in_leaf": min(self.params["min_data_in_leaf"], max(2, len(y) // 10))}
        if "num_threads" not in params:
            # OpenMP's default thread count is far slower than one thread on small data.
            params["num_threads"] = 1 if len(y) < 50_000 else (os.cpu_count() or 1)
        train = self._dataset(X, y, w)
        if valid is not None:
            vset = lgb.Dataset(valid[0], valid[1], reference=train)
            booster = lgb.train(params, train, self.num_boost_round, valid_sets=[vset],
                                callbacks=[lgb.early_stopping(30, verbose=False)])
            self.best_iteration_ = booster.best_iteration or self.num_boost_round
        else:
            booster = lgb.train(params, train, self.num_boost_round)
            self.best_iteration_ = self.num_boost_round
        self.booster_ = booster
        return self

    def predict(self, X):
        return self.booster_.predict(X, num_iteration=self.best_iteration_)

    def to_json(self):
        return {
            "num_boost_round": self.num_boost_round,
            "best_iteration": self.best_iteration_,
            "params": self.params,
            "booster": self.booster_.model_to_string(num_iteration=self.best_iteration_),
        }

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        import lightgbm as lgb

        obj = cls(kinds, n_categories, d["num_boost_round"], d["params"])
        obj.best_iteration_ = int(d["best_iteration"])
        # LightGBM's own text format: parsing it runs no code, unlike pickle.
        obj.booster_ = lgb.Booster(model_str=d["booster"])
        return obj


FAMILIES: dict[str, type[LocationModel]] = {
    cls.name: cls for cls in (EmpiricalLocation, LinearLocation, LightGBMLocation)
}


class ScaleModel:
    """Log-linear model of residual size; constant when there are no features."""

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], alpha: float = 10.0):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.alpha = alpha

    def fit(self, X: np.ndarray, residuals: np.ndarray, w: np.ndarray | None = None) -> "ScaleModel":
        a = np.abs(residuals)
        floor = max(float(np.median(a)) * 0.05, 1e-6)
        target = np.log(a + floor)
        self.design_ = LogLinearDesign(self.kinds, self.n_categories).fit(X)
        A = self.design_.transform(X)
        if A.shape[1] == 0 or len(a) < 30:
            self.intercept_, self.coef_ = 0.0, np.zeros(A.shape[1])
        else:
            b, coef = _ridge(A, target, self.alpha * len(a) / 100.0, w)
            self.intercept_, self.coef_ = 0.0, coef
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if not np.any(self.coef_):
            return np.ones(len(X))
        lin = self.design_.transform(X) @ self.coef_
        # Keep the learned spread within a sane range of the average noise.
        return np.exp(np.clip(lin, -2.5, 2.5))

    def to_json(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "kinds": self.kinds, "n_categories": self.n_categories,
                "design": self.design_.to_json(), "coef": self.coef_.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any], kinds, n_categories) -> "ScaleModel":
        obj = cls(kinds, n_categories, d["alpha"])
        obj.design_ = LogLinearDesign.from_json(d["design"])
        obj.intercept_ = 0.0
        obj.coef_ = np.asarray(d["coef"], dtype=np.float64)
        return obj


# --------------------------------------------------------------------------- the model


class QuantileModel:
    """Calibrated runtime distribution model with a scikit-learn-like interface.

    Parameters are set in ``__init__``; ``fit`` learns ``family_``, ``location_``,
    ``scale_``, ``score_`` and ``cv_`` (cross-validated metrics per family tried).
    """

    def __init__(
        self,
        kinds: Sequence[str] = (),
        n_categories: Sequence[int] = (),
        algorithm: str = "auto",
        n_folds: int = 5,
        params: dict[str, Any] | None = None,
        random_state: int = 0,
    ):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.algorithm = algorithm
        self.n_folds = n_folds
        self.params = dict(params or {})
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting

    def _make(self, family: str) -> LocationModel:
        if family == "empirical":
            return EmpiricalLocation()
        if family == "linear":
            return LinearLocation(self.kinds, self.n_categories, **{k: v for k, v in self.params.items() if k in ("alpha", "huber_delta")})
        lgb_params = {k: v for k, v in self.params.items() if k not in ("alpha", "huber_delta", "num_boost_round")}
        return LightGBMLocation(self.kinds, self.n_categories, int(self.params.get("num_boost_round", 300)), lgb_params)

    def candidate_families(self, n_rows: int) -> list[str]:
        if self.algorithm != "auto":
            return [self.algorithm]
        families = ["empirical"]
        if self.kinds:
            families += [f for f in ("linear", "lightgbm") if n_rows >= FAMILIES[f].min_rows]
        return families

    def _folds(self, n: int) -> np.ndarray:
        k = self.n_folds if n < 20000 else 3
        k = max(2, min(k, n // 2))
        rng = np.random.default_rng(self.random_state)
        return rng.permutation(n) % k

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "QuantileModel":
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if len(y) < 2:
            raise ValueError("at least 2 rows with a positive runtime are needed to train")
        ylog = np.log(y)
        fold = self._folds(len(y))
        n_folds = int(fold.max()) + 1
        families = self.candidate_families(len(y))
        self.cv_: dict[str, dict[str, Any]] = {}
        best: tuple[float, str, np.ndarray, ScaleModel, dict] | None = None
        for family in families:
            t0 = time.perf_counter()
            oof = np.empty(len(y))
            iters = []
            for k in range(n_folds):
                tr, te = fold != k, fold == k
                model = self._make(family)
                w = None if sample_weight is None else sample_weight[tr]
                if isinstance(model, LightGBMLocation):
                    model.fit(X[tr], ylog[tr], w, valid=(X[te], ylog[te]))
                    iters.append(model.best_iteration_)
                else:
                    model.fit(X[tr], ylog[tr], w)
                oof[te] = model.predict(X[te])
            resid = ylog - oof
            metrics = None
            for hetero in ((False, True) if family != "empirical" and self.kinds else (False,)):
                # Constant and feature-dependent noise compete on the same held-out loss.
                scale = ScaleModel(self.kinds if hetero else [], self.n_categories if hetero else [])
                scale.fit(X if hetero else X[:, :0], resid, sample_weight)
                s = scale.predict(X if hetero else X[:, :0])
                scores = resid / s
                cand = self._heldout_metrics(y, oof, s, scores, fold, n_folds)
                cand["heteroscedastic"] = hetero
                if metrics is None or cand["pinball_loss"] < metrics["pinball_loss"]:
                    metrics, chosen = cand, (scores, scale)
            metrics["seconds"] = time.perf_counter() - t0
            if iters:
                metrics["best_iteration"] = int(np.mean(iters))
            self.cv_[family] = metrics
            if best is None or metrics["pinball_loss"] < best[0]:
                best = (metrics["pinball_loss"], family, chosen[0], chosen[1], {"iters": iters})
        assert best is not None
        _, family, scores, scale, extra = best
        final = self._make(family)
        if isinstance(final, LightGBMLocation) and extra["iters"]:
            # Train the final booster as long as the folds found useful, a bit more for the extra data.
            final.num_boost_round = max(10, int(np.mean(extra["iters"]) * 1.1))
        final.fit(X, ylog, sample_weight)
        self.family_ = family
        self.location_ = final
        self.scale_ = scale
        self.score_ = ScoreDistribution.from_scores(scores)
        return self

    @staticmethod
    def _heldout_metrics(y, oof, s, scores, fold, n_folds) -> dict[str, Any]:
        # Each fold is calibrated only with the other folds' scores, so these
        # metrics are measured on rows that neither fitted nor calibrated the model.
        q = np.empty((len(y), len(EVAL_LEVELS)))
        for k in range(n_folds):
            te = fold == k
            z = ScoreDistribution.from_scores(scores[~te]).quantile(np.asarray(EVAL_LEVELS))
            q[te] = np.exp(oof[te, None] + s[te, None] * z[None, :])
        return quantile_metrics(y, q, EVAL_LEVELS)

    # ------------------------------------------------------------------ prediction

    def predict_distribution(self, X: np.ndarray) -> RuntimeDistribution:
        X = np.asarray(X, dtype=np.float64)
        m = self.location_.predict(X)
        s = self.scale_.predict(X if self.scale_.kinds else X[:, :0])
        return RuntimeDistribution(np.asarray(m, dtype=np.float64), np.asarray(s, dtype=np.float64), self.score_)

    def predict_quantiles(self, X: np.ndarray, levels: Sequence[float]) -> np.ndarray:
        return self.predict_distribution(X).quantiles(levels)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Median runtime, for scikit-learn-style use."""
        return self.predict_quantiles(X, [0.5])[:, 0]

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "algorithm": self.algorithm,
            "n_folds": self.n_folds,
            "params": self.params,
            "random_state": self.random_state,
            "kinds": self.kinds,
            "n_categories": self.n_categories,
            "family": self.family_,
            "location": self.location_.to_json(),
            "scale": self.scale_.to_json(),
            "score": self.score_.to_json(),
            "cv": self.cv_,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "QuantileModel":
        if d.get("format") != 1:
            raise ValueError(f"unsupported model format {d.get('format')!r}")
        obj = cls(d["kinds"], d["n_categories"], d["algorithm"], d["n_folds"], d["params"], d["random_state"])
        obj.family_ = d["family"]
        obj.location_ = FAMILIES[obj.family_].from_json(d["location"], obj.kinds, obj.n_categories)
        obj.scale_ = ScaleModel.from_json(d["scale"], d["scale"]["kinds"], d["scale"]["n_categories"])
        obj.score_ = ScoreDistribution.from_json(d["score"])
        obj.cv_ = d.get("cv", {})
        return obj
