"""Online retraining from observed runtimes.

A model that drifted, or that has gathered enough new observations, is
retrained on its training data plus the observations, weighted toward recent
ones. The newest observations are held out: a candidate becomes a new version
only if it beats the serving model on them.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .errors import PredictorError
from .features import FIRST_OF_SHAPE, FeatureSchema
from .identity import ModelIdentity
from .modeling import QuantileModel, pinball_loss
from .monitoring import MONITOR_LEVELS, AccuracyMonitor
from .registry import ModelRegistry, ModelVersion

log = logging.getLogger(__name__)


def observation_matrix(features: FeatureSchema, records: list[dict[str, Any]]) -> tuple[FeatureSchema, np.ndarray, np.ndarray]:
    """The usable observations as (schema for the next version, X, y), oldest first.

    With a shape history, shapes first seen among the observations are warm from then
    on: the returned schema's history includes them. Observations without a timestamp
    of their own are placed by when they were observed; one that stated whether it was
    a first run keeps what it stated.
    """
    traces = [r["trace"] for r in records]
    X, errors = features.matrix(traces)
    keep = np.array([e is None for e in errors], dtype=bool)
    X = X[keep]
    y = np.array([r["runtime_ms"] for r in records], dtype=np.float64)[keep]
    if features.history is not None:
        kept = [t for t, k in zip(traces, keep) if k]
        order = features.history.order_of(kept)
        observed_at = np.array([r["ts"] for r in records], dtype=np.float64)[keep]
        history, flags = features.history.extend(X[:, :-1], np.where(np.isnan(order), observed_at, order))
        stated = np.array([t.get(FIRST_OF_SHAPE) is not None for t in kept], dtype=bool)
        X[:, -1] = np.where(stated, X[:, -1], flags)
        features = FeatureSchema(features.features, history)
    return features, X, y


class Retrainer:
    def __init__(
        self,
        registry: ModelRegistry,
        monitor: AccuracyMonitor,
        enabled: bool = False,
        min_new_observations: int = 200,
        holdout_fraction: float = 0.25,
        training_weight: float = 0.25,
    ):
        self.registry = registry
        self.monitor = monitor
        self.enabled = enabled
        self.min_new_observations = min_new_observations
        self.holdout_fraction = holdout_fraction
        self.training_weight = training_weight
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain")
        self._running: dict[ModelIdentity, Future] = {}
        self._model_locks: dict[ModelIdentity, threading.Lock] = {}
        self._lock = threading.Lock()
        self.history: list[dict[str, Any]] = []

    def due(self, identity: ModelIdentity, version: int) -> str | None:
        """Why this model should be retrained now, or None."""
        report = self.monitor.report(identity, version)
        if report.get("drifted"):
            return "drift"
        if report["observations"] >= self.min_new_observations:
            return "new observations"
        return None

    def maybe_schedule(self, identity: ModelIdentity, version: int) -> Future | None:
        if not self.enabled:
            return None
        reason = self.due(identity, version)
        if reason is None:
            return None
        with self._lock:
            running = self._running.get(identity)
            if running is not None and not running.done():
                return running
            future = self._executor.submit(self.retrain, identity, reason)
            self._running[identity] = future
            return future

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the work

    def retrain(self, identity: ModelIdentity, reason: str = "requested") -> dict[str, Any]:
        """Retrain ``identity``'s serving version, one retraining of a model at a time.

        A retraining that waited for another one of the same model (or that finds a newer
        version stored meanwhile, by another worker say) has nothing left to do: the
        version it was asked about no longer serves.
        """
        asked = self.registry.latest(identity).version
        with self._lock:
            model_lock = self._model_locks.setdefault(identity, threading.Lock())
        with model_lock:
            self.registry.maybe_refresh()
            serving = self.registry.latest(identity).version
            if serving != asked:
                return self._done({"model_key": identity.key, "reason": reason, "from_version": asked,
                                   "at": time.time(), "status": "skipped",
                                   "message": f"version {serving} was stored meanwhile and serves now"})
            return self._retrain(identity, reason)

    def _retrain(self, identity: ModelIdentity, reason: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        current = self.registry.load(identity)
        meta = current.meta
        records = self.monitor.log.read(identity)
        decision: dict[str, Any] = {"model_key": identity.key, "reason": reason, "from_version": meta.version,
                                    "observations": len(records), "at": time.time()}
        features, X_obs, y_obs = observation_matrix(meta.features, records)
        n_hold = max(10, int(len(y_obs) * self.holdout_fraction))
        if len(y_obs) < n_hold + 20:
            decision.update(status="skipped", message=f"too few observations ({len(y_obs)}) to retrain and validate")
            return self._done(decision)
        fit_X, fit_y = X_obs[:-n_hold], y_obs[:-n_hold]
        hold_X, hold_y = X_obs[-n_hold:], y_obs[-n_hold:]
        stored = self.registry.training_data(identity, meta.version)

        def weights(n: int) -> np.ndarray:
            # Linear ramp: the newest observation counts three times the oldest.
            return np.linspace(1.0, 3.0, n) if n else np.zeros(0)

        candidates: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
            "observations": (fit_X, fit_y, weights(len(fit_y))),
        }
        n_recent = len(fit_y) // 2
        if n_recent >= 20:
            # After an abrupt shift only the newest observations describe the present.
            candidates["recent observations"] = (fit_X[-n_recent:], fit_y[-n_recent:], np.ones(n_recent))
        if stored is not None and len(stored[1]):
            X0, y0 = stored
            candidates["training+observations"] = (
                np.vstack([X0, fit_X]), np.concatenate([y0, fit_y]),
                np.concatenate([np.full(len(y0), self.training_weight), weights(len(fit_y))]),
            )
        levels = list(MONITOR_LEVELS)
        scores = {"current": float(pinball_loss(hold_y, current.model.predict_quantiles(hold_X, levels), levels).mean())}
        for name, (X, y, w) in candidates.items():
            model = self._new_model(meta).fit(X, y, sample_weight=w)
            scores[name] = float(pinball_loss(hold_y, model.predict_quantiles(hold_X, levels), levels).mean())
        best = min(scores, key=scores.get)
        decision["heldout_pinball"] = scores
        decision["heldout_rows"] = int(n_hold)
        if best == "current":
            decision.update(status="kept", message="no candidate beat the serving model on recent observations")
            return self._done(decision)
        # The winner is refitted with the held-out rows too before it serves.
        X, y, w = candidates[best]
        X = np.vstack([X, hold_X])
        y = np.concatenate([y, hold_y])
        w = np.concatenate([w, np.full(len(hold_y), w[-1] if len(w) else 1.0)])
        model = self._new_model(meta).fit(X, y, sample_weight=w)
        new_meta = ModelVersion(
            identity=identity, version=0, created_at=time.time(), target=meta.target, features=features,
            quantiles=meta.quantiles, algorithm=meta.algorithm, family=model.family_, params=meta.params,
            data={**meta.data, "rows_used": int(len(y)), "observations_used": int(len(y_obs))},
            metrics={**meta.metrics, "algorithm": model.family_, "shared_log_sd": model.shared_log_sd_,
                     "retrain": {k: v for k, v in decision.items() if k != "at"},
                     "cv_scores": {f: {"pinball_loss": m["pinball_loss"]} for f, m in model.cv_.items()}},
            data_hash=meta.data_hash, extra={"retrained_from": meta.version, "candidate": best},
        )
        self.registry.maybe_refresh()
        serving = self.registry.latest(identity).version
        if serving != meta.version:  # another worker stored a version while this one fitted
            decision.update(status="skipped", candidate=best,
                            message=f"version {serving} was stored meanwhile and serves now")
            return self._done(decision)
        try:
            saved = self.registry.save(new_meta, model, training_data=(X, y))
        except PredictorError as exc:  # a full disk, say: in the decisions too, since a background retraining answers no one
            decision.update(status="failed", candidate=best, message=exc.message)
            self._done(decision)
            raise
        decision.update(status="retrained", candidate=best, to_version=saved.version)
        decision["seconds"] = time.perf_counter() - t0
        return self._done(decision)

    @staticmethod
    def _new_model(meta: ModelVersion) -> QuantileModel:
        return QuantileModel(meta.features.kinds, meta.features.n_categories, meta.algorithm, params=meta.params)

    def _done(self, decision: dict[str, Any]) -> dict[str, Any]:
        if decision["status"] == "failed":
            log.error("retraining %s failed: %s", decision["model_key"], decision["message"])
        else:
            log.info("retraining %s: %s", decision["model_key"], decision["status"])
        self.history.append(decision)
        del self.history[:-100]
        return decision
