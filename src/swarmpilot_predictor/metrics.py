"""Prometheus metrics, one registry per app so that several apps can share a process."""

from __future__ import annotations

import contextlib
import threading
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TRAINING_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class PredictorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("predictor_http_requests_total", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("predictor_http_request_duration_seconds", "HTTP request latency by route.",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("predictor_predictions_total", "Traces predicted, per model.",
                                   ["model", "source"], registry=r)
        self.prediction_errors = Counter("predictor_prediction_errors_total", "Traces that could not be predicted, per model.",
                                         ["model"], registry=r)
        self.training_runs = Counter("predictor_training_runs_total", "Training runs by outcome.", ["status"], registry=r)
        self.retraining_runs = Counter("predictor_retraining_runs_total",
                                       "Retraining decisions by outcome (retrained, kept, skipped, failed).",
                                       ["status"], registry=r)
        self.training_duration = Histogram("predictor_training_duration_seconds", "Training duration.",
                                           buckets=TRAINING_BUCKETS, registry=r)
        self.cache_hits = Counter("predictor_cache_hits_total", "Prediction cache hits.", registry=r)
        self.cache_misses = Counter("predictor_cache_misses_total", "Prediction cache misses.", registry=r)
        self.models_loaded = Gauge("predictor_models_loaded", "Models held in memory.", registry=r)
        self.models_registered = Gauge("predictor_models_registered", "Models in the registry.", registry=r)
        self.observations = Counter("predictor_observations_total", "Observed runtimes recorded, per model.",
                                    ["model"], registry=r)
        self.coverage = Gauge("predictor_model_coverage_ratio", "Rolling fraction of observed runtimes at or below the predicted quantile.",
                              ["model", "level"], registry=r)
        self.interval_coverage = Gauge("predictor_model_interval_coverage_ratio", "Rolling coverage of central intervals.",
                                       ["model", "interval"], registry=r)
        self.pinball = Gauge("predictor_model_relative_pinball_loss", "Rolling pinball loss divided by the mean runtime.",
                             ["model"], registry=r)
        self.median_mape = Gauge("predictor_model_median_mape_ratio", "Rolling mean absolute percentage error of the median.",
                                 ["model"], registry=r)
        self.drifted = Gauge("predictor_model_drifted", "1 when the model's coverage left its tolerance band.",
                             ["model"], registry=r)

        # Labelled children, looked up once: ``labels()`` costs microseconds per call.
        self._children: dict[tuple, tuple] = {}
        # Per model, the accuracy series set and the version they describe.
        self._accuracy: dict[str, list[tuple[Gauge, tuple[str, ...]]]] = {}
        self._accuracy_version: dict[str, int] = {}
        self._accuracy_report: dict[str, dict] = {}
        self._accuracy_lock = threading.Lock()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = ("req", route, method, status)
        got = self._children.get(key)
        if got is None:
            got = self._children[key] = (self.requests.labels(route, method, str(status)), self.latency.labels(route, method))
        got[0].inc()
        got[1].observe(seconds)

    def count_predictions(self, model: str, source: str, n_ok: int, n_failed: int = 0) -> None:
        key = ("pred", model, source)
        got = self._children.get(key)
        if got is None:
            with self._accuracy_lock:  # not while forget_model removes this model's series
                got = self._children[key] = (self.predictions.labels(model, source),
                                             self.prediction_errors.labels(model))
        got[0].inc(n_ok)
        if n_failed:
            got[1].inc(n_failed)

    def set_accuracy(self, model: str, version: int, report: dict) -> None:
        """Describe ``model`` by the rolling accuracy ``report`` of its serving ``version``.

        Every value of the model's accuracy gauges is replaced: levels the report
        has no value for (no observations yet, say after a new version) disappear
        instead of showing the previous version's figures.
        """
        with self._accuracy_lock:
            if self._accuracy_version.get(model) == version and self._accuracy_report.get(model) is report:
                return  # reports are cached while their window is unchanged: nothing new to set
            self._set_accuracy(model, version, report)

    def _set_accuracy(self, model: str, version: int, report: dict) -> None:
        self._clear_accuracy(model)
        series = self._accuracy[model] = [(self.drifted, (model,))]
        for level, value in (report.get("coverage") or {}).items():
            self.coverage.labels(model, level).set(value)
            series.append((self.coverage, (model, level)))
        for name, value in (report.get("interval_coverage") or {}).items():
            self.interval_coverage.labels(model, name).set(value)
            series.append((self.interval_coverage, (model, name)))
        for gauge, key in ((self.pinball, "relative_pinball_loss"), (self.median_mape, "median_mape")):
            if report.get(key) is not None:
                gauge.labels(model).set(report[key])
                series.append((gauge, (model,)))
        self.drifted.labels(model).set(1.0 if report.get("drifted") else 0.0)
        self._accuracy_version[model] = version
        self._accuracy_report[model] = report

    def clear_accuracy(self, model: str) -> None:
        with self._accuracy_lock:
            self._clear_accuracy(model)

    def _clear_accuracy(self, model: str) -> None:
        for gauge, labels in self._accuracy.pop(model, ()):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        self._accuracy_version.pop(model, None)
        self._accuracy_report.pop(model, None)

    def forget_model(self, model: str) -> None:
        """Remove every series labelled with a deleted model (label sets stay bounded by live models)."""
        with self._accuracy_lock:
            self._clear_accuracy(model)
            for key in [k for k in list(self._children) if k[0] == "pred" and k[1] == model]:
                self._children.pop(key, None)
            for counter, labels in ((self.predictions, (model, "model")), (self.predictions, (model, "table_generation")),
                                    (self.prediction_errors, (model,)), (self.observations, (model,))):
                with contextlib.suppress(KeyError):
                    counter.remove(*labels)

    def counted_models(self) -> set[str]:
        """The models with prediction counters in this process (lookup tables' ``table:`` labels aside)."""
        return {k[1] for k in list(self._children) if k[0] == "pred" and not k[1].startswith("table:")}

    def accuracy_versions(self) -> dict[str, int]:
        """The models whose accuracy gauges are set, with the version they describe."""
        with self._accuracy_lock:
            return dict(self._accuracy_version)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Times every HTTP request and labels it by route template, not raw path (bounded cardinality)."""

    def __init__(self, app, metrics: PredictorMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(path, scope.get("method", ""), status, time.perf_counter() - start)
