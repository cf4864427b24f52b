"""Prometheus metrics, one registry per app so that several apps can share a process.

Several workers (``swarmpilot-predictor serve --workers N``) share one port, so a scrape
reaches whichever worker accepts it. With ``PROMETHEUS_MULTIPROC_DIR`` set (``serve``
sets it to a fresh directory when it starts more than one worker) prometheus_client keeps
each worker's counters and histograms in files there, and every scrape adds up all the
workers' (those of workers that died and were replaced included, as counters should).
Values that describe shared state (the models registered, their accuracy from the shared
observation log) are computed by the scraping worker itself, so they agree whichever
worker answers, and a deleted model's series go away in both modes.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import threading
import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest, values)
from prometheus_client.core import GaugeMetricFamily

from .processes import alive
from .settings import multiproc_variable

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TRAINING_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multi-process mode, or None when this process is not in it.

    prometheus_client chooses the mode once, when it is imported, from the environment.
    """
    if values.ValueClass is values.MutexValue:
        return None
    variable = multiproc_variable()
    return os.environ[variable] if variable is not None else None


# (metric, help, labels, key in a rolling accuracy report): the accuracy gauges, per model.
_ACCURACY_GAUGES = (
    ("predictor_model_coverage_ratio", "Rolling fraction of observed runtimes at or below the predicted quantile.",
     ("model", "level"), "coverage"),
    ("predictor_model_interval_coverage_ratio", "Rolling coverage of central intervals.", ("model", "interval"),
     "interval_coverage"),
    ("predictor_model_relative_pinball_loss", "Rolling pinball loss divided by the mean runtime.", ("model",),
     "relative_pinball_loss"),
    ("predictor_model_median_mape_ratio", "Rolling mean absolute percentage error of the median.", ("model",),
     "median_mape"),
    ("predictor_model_expect_ratio", "Rolling sum of observed runtimes over the sum of their predicted expects "
     "(1: unbiased; 1.1: runtimes 10% longer than predicted).", ("model",), "expect_ratio"),
    ("predictor_model_error_ratio", "Rolling root of the summed squared deviations of observed runtimes from their "
     "expects over the root of the summed squared predicted errors (1: errors the deviations' size; 1.3: deviations "
     "30% wider than predicted).", ("model",), "error_ratio"),
    ("predictor_model_drifted", "1 when the drift test (an exact binomial test of each level's coverage over the "
     "rolling window, at PREDICTOR_DRIFT_ALPHA) rejects the model's calibration.", ("model",), "drifted"),
    ("predictor_model_kind_drifted", "1 when the drift test of one kind of run's observations alone (first_run, "
     "repeat: a model that tells first runs from repeats) rejects their calibration: the version's drift "
     "(predictor_model_drifted, which retraining follows) where it has a model for each kind of run, reported "
     "only otherwise.", ("model", "kind"), "drifted_by_kind"),
)


class _AccuracyCollector:
    """The accuracy gauges, from the reports the service last set for each model.

    Computed at collection rather than kept in ``Gauge`` objects: each worker reads them
    from the shared observation log, and prometheus_client cannot remove a labelled
    series in multi-process mode, while a model's levels without observations (after a
    new version) and a deleted model's series must go.
    """

    def __init__(self, metrics: "PredictorMetrics"):
        self._metrics = metrics

    def describe(self):
        return [GaugeMetricFamily(name, doc, labels=labels) for name, doc, labels, _ in _ACCURACY_GAUGES]

    def collect(self):
        with self._metrics._accuracy_lock:
            reports = dict(self._metrics._accuracy_report)
        for name, doc, labels, key in _ACCURACY_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=labels)
            for model, report in sorted(reports.items()):
                value = report.get(key)
                if len(labels) == 2:
                    for sub, v in (value or {}).items():
                        family.add_metric([model, str(sub)], float(v))
                elif key == "drifted":
                    family.add_metric([model], 1.0 if value else 0.0)
                elif value is not None:
                    family.add_metric([model], float(value))
            yield family


class _LiveModelsOnly:
    """The workers' counters and histograms (multi-process mode), less the series of deleted models."""

    def __init__(self, path: str, metrics: "PredictorMetrics"):
        from prometheus_client.multiprocess import MultiProcessCollector

        self._inner = MultiProcessCollector(None, path)
        self._metrics = metrics

    def describe(self):
        return []  # the families are whatever the workers' files hold

    def collect(self):
        live = self._metrics._live_models
        for family in self._inner.collect():
            if live is not None:
                family.samples = [s for s in family.samples if "model" not in s.labels or s.labels["model"] in live]
            yield family


class _WorkerProcesses:
    """prometheus_client's ``process_*`` metrics (memory, CPU, open files) of every live
    worker (multi-process mode), each labelled with its ``pid``: its own collector describes
    only the process that answers the scrape, a different worker each time."""

    def __init__(self, path: str):
        self._path = path

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.metrics_core import Metric

        merged: dict[str, Metric] = {}
        for pid in _worker_pids(self._path, live=True):
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                out.samples.extend(s._replace(labels={**s.labels, "pid": str(pid)}) for s in family.samples)
        yield from merged.values()


# prometheus_client's files in a multi-process directory: one per kind of value and process.
_PROCESS_FILE = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db")


def _file_pid(name: str) -> int | None:
    """The process whose values the multi-process file ``name`` holds; None for another file."""
    match = _PROCESS_FILE.fullmatch(name)
    return None if match is None else int(match.group(1))


def _worker_pids(path: str, live: bool) -> list[int]:
    """The workers that count into ``path`` (each keeps a file of its per-process gauges
    there), those alive or those that exited."""
    pids = set()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = _file_pid(os.path.basename(name))
        if pid is not None and alive(pid) == live:
            pids.add(pid)
    return sorted(pids)


# A worker's preload of its models (PREDICTOR_PRELOAD_MODELS) in the multi-process directory:
# "preloading_<pid>" while it loads, "preloaded_<pid>" once done, so that whichever worker a
# readiness probe reaches answers for all of them (each answered for itself: a pod was taken
# in at one worker's 200 while the others loaded).
_PRELOAD_FILE = re.compile(r"(preloading|preloaded)_(\d+)")


def _preload_pid(name: str) -> int | None:
    match = _PRELOAD_FILE.fullmatch(name)
    return None if match is None else int(match.group(2))


def mark_preload(path: str, done: bool) -> None:
    """Say in ``path`` that this worker's preload has begun, or (``done``) ended."""
    own = os.getpid()
    loading, loaded = os.path.join(path, f"preloading_{own}"), os.path.join(path, f"preloaded_{own}")
    try:
        if done:
            try:
                os.replace(loading, loaded)
            except FileNotFoundError:  # (a preload not begun through start_preload)
                open(loaded, "w").close()
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(loaded)  # (an earlier process of this id's)
            open(loading, "w").close()
    except OSError as exc:  # (the directory gone: each worker answers for itself, as without it)
        log.warning("cannot mark this worker's preload in %s: %s", path, exc)


def workers_not_preloaded(path: str, workers: int) -> str | None:
    """Why not every worker of ``path`` has preloaded its models, or None: one alive is still
    loading, or fewer than ``workers`` alive have loaded theirs (one not started yet, or one
    started again in place of one that died). This worker's own preload is not asked here."""
    own = os.getpid()
    try:
        names = os.listdir(path)
    except OSError:
        return None
    done = {own}
    for name in names:
        match = _PRELOAD_FILE.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(2))
        if pid == own or not alive(pid):
            continue
        if match.group(1) == "preloading":
            return f"worker {pid} is loading the latest version of every model (PREDICTOR_PRELOAD_MODELS)"
        done.add(pid)
    if len(done) < workers:
        return (f"{len(done)} of {workers} workers have loaded the latest version of every model "
                "(PREDICTOR_PRELOAD_MODELS)")
    return None


def remove_exited_processes_files(path: str) -> int:
    """Remove the files of processes no longer running from the multi-process directory
    ``path``, as a service starts: an earlier run's, whose counts every scrape of this run
    would add to its own (prometheus_client asks for the directory wiped before each run).
    This process's too: it has counted nothing yet, and one of its id is an earlier run's
    (a container's first process has the same id at each start). Returns how many were removed."""
    removed, own = 0, os.getpid()
    try:
        names = os.listdir(path)
    except OSError:
        return 0
    for name in names:
        pid = _file_pid(name) or _preload_pid(name)
        if pid is None or (pid != own and alive(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(path, name))
            removed += 1
    return removed


def _prune_dead_workers(path: str) -> None:
    """Drop the per-process gauges (``models_loaded``) of workers that have exited."""
    from prometheus_client.multiprocess import mark_process_dead

    for pid in _worker_pids(path, live=False):
        with contextlib.suppress(FileNotFoundError):  # another worker's scrape pruned it first
            mark_process_dead(pid, path)


TABLE_LABEL = "table:"  # a lookup table's `model` label: "table:<its name>"


def table_label(name: str) -> str:
    return TABLE_LABEL + name


class PredictorMetrics:
    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir is not None:
            # Made again if it went (a cleaner, a hand): a worker started after that would
            # otherwise fail on its first metric, and be started again, and again.
            os.makedirs(self.multiprocess_dir, exist_ok=True)
        # In multi-process mode the metrics' values live in the shared directory, and the
        # registry they are created in is not the one scraped (that would export them twice).
        r = CollectorRegistry(auto_describe=True)
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
        self.training_duration = Histogram("predictor_training_duration_seconds",
                                           "Duration of the training runs that succeeded.",
                                           buckets=TRAINING_BUCKETS, registry=r)
        self.cache_hits = Counter("predictor_cache_hits_total", "Prediction cache hits.", registry=r)
        self.cache_misses = Counter("predictor_cache_misses_total", "Prediction cache misses.", registry=r)
        # Summed over the live workers: each holds its own model versions in memory.
        self.models_loaded = Gauge("predictor_models_loaded", "Model versions held in memory (all workers).",
                                   registry=r, multiprocess_mode="livesum")
        # Set by the scraping worker just before it collects: the latest value is the registry's.
        self.models_registered = Gauge("predictor_models_registered", "Models in the registry.", registry=r,
                                       multiprocess_mode="mostrecent")
        self.observations = Counter("predictor_observations_total", "Observed runtimes recorded, per model.",
                                    ["model"], registry=r)
        self.trainings_pending = Gauge("predictor_trainings_pending",
                                       "Trainings queued or running, synchronous and background (all workers).",
                                       registry=r, multiprocess_mode="livesum")

        # Labelled children, looked up once: ``labels()`` costs microseconds per call.
        self._children: dict[tuple, tuple] = {}
        # Per model, the rolling accuracy report its gauges show and the version it describes.
        self._accuracy_version: dict[str, int] = {}
        self._accuracy_report: dict[str, dict] = {}
        self._accuracy_lock = threading.Lock()
        # The models that exist, as the service last saw them (None: not known yet); the
        # shared counters of any other model are left out of a multi-process scrape.
        self._live_models: frozenset[str] | None = None

        if self.multiprocess_dir is None:
            self.registry = r
            ProcessCollector(registry=self.registry)
        else:
            self.registry = CollectorRegistry(auto_describe=True)
            self.registry.register(_LiveModelsOnly(self.multiprocess_dir, self))
            self.registry.register(_WorkerProcesses(self.multiprocess_dir))
        self.registry.register(_AccuracyCollector(self))

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
            self._accuracy_version[model] = version
            self._accuracy_report[model] = report

    def forget_model(self, model: str) -> None:
        """Remove every series labelled with a deleted model or table (label sets stay bounded by live ones)."""
        with self._accuracy_lock:
            self._accuracy_version.pop(model, None)
            self._accuracy_report.pop(model, None)
            for key in [k for k in list(self._children) if k[0] == "pred" and k[1] == model]:
                self._children.pop(key, None)
            if self.multiprocess_dir is not None:
                return  # its shared series are left out of scrapes (set_live_models); files cannot drop them
            for counter, labels in ((self.predictions, (model, "model")), (self.predictions, (model, "table_generation")),
                                    (self.predictions, (model, "lookup_table")), (self.prediction_errors, (model,)),
                                    (self.observations, (model,))):
                with contextlib.suppress(KeyError):
                    counter.remove(*labels)

    def zero_shared_counts(self, model: str) -> None:
        """Multi-process mode: bring every worker's counters of ``model`` (a model or a
        ``table:`` label), deleted here, to 0 in the shared files, so that one made again under
        its name counts from 0, as in one process (where its series are removed): the files
        cannot drop a series, so this worker adds the opposite of each series' total over
        every file (the dead workers' too) to its own. Under a lock on the directory, so that
        two workers deleting it at once take it to 0, not below; a count made by another worker
        while this runs (a prediction under way as the model is deleted) stays."""
        if self.multiprocess_dir is None:
            return
        import fcntl

        from prometheus_client.multiprocess import MultiProcessCollector

        counters = {"predictor_predictions_total": self.predictions,
                    "predictor_prediction_errors_total": self.prediction_errors,
                    "predictor_observations_total": self.observations}
        try:
            with open(os.path.join(self.multiprocess_dir, ".deletes.lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                files = glob.glob(os.path.join(self.multiprocess_dir, "counter_*.db"))
                for family in MultiProcessCollector.merge(files, accumulate=True):
                    for sample in family.samples:
                        counter = counters.get(sample.name)
                        if counter is not None and sample.labels.get("model") == model and sample.value:
                            with self._accuracy_lock:  # (as count_predictions makes its children)
                                child = counter.labels(**sample.labels)
                            child._value.inc(-sample.value)  # (Counter.inc takes no negative amount)
        except OSError as exc:  # (the directory gone): its counts are left, as before
            log.warning("counters of %s not brought to 0 in %s: %s", model, self.multiprocess_dir, exc)

    def set_live_models(self, models: set[str]) -> None:
        """The models (and ``table:`` labels) that exist: in multi-process mode, only their counters are scraped."""
        self._live_models = frozenset(models)

    def shared_prediction_counts(self) -> dict[str, int] | None:
        """Traces predicted per model (``source`` model) by every worker, from the shared
        files; None when this process is not in multi-process mode (it counts alone)."""
        if self.multiprocess_dir is None:
            return None
        from prometheus_client.multiprocess import MultiProcessCollector

        counts: dict[str, int] = {}
        for family in MultiProcessCollector.merge(glob.glob(os.path.join(self.multiprocess_dir, "counter_*.db"))):
            for sample in family.samples:
                if sample.name == "predictor_predictions_total" and sample.labels.get("source") == "model":
                    model = sample.labels["model"]
                    counts[model] = counts.get(model, 0) + int(sample.value)
        return counts

    def counted_labels(self) -> set[str]:
        """The models (and lookup tables' ``table:<name>`` labels) with prediction counters in this process."""
        return {k[1] for k in list(self._children) if k[0] == "pred"}

    def accuracy_versions(self) -> dict[str, int]:
        """The models whose accuracy gauges are set, with the version they describe."""
        with self._accuracy_lock:
            return dict(self._accuracy_version)

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess_dir is not None:
            _prune_dead_workers(self.multiprocess_dir)
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
        status = None
        gone = False

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_wrapper():
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            if status is None:
                # No answer went out: a client that left before it (half a body sent, say) is
                # nginx's 499, not a server error; anything else that ended without one is a 500.
                status = CLIENT_CLOSED if gone else 500
            self.metrics.observe_request(_route_label(scope, status), _method_label(scope), status,
                                         time.perf_counter() - start)


CLIENT_CLOSED = 499

# HTTP's own methods; anything else a client sends (h11 passes any token on) is "other", or
# each made-up method would be a new series and a new entry that stays in memory.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def _method_label(scope) -> str:
    method = scope.get("method", "")
    return method if method in _METHODS else "other"


def _route_label(scope, status: int) -> str:
    """The template of the route that answered, or "unmatched".

    FastAPI's own routes leave themselves in the scope; Starlette's plain ones (the API
    docs, the OpenAPI schema) only their endpoint, whose route is looked up: those 200s
    were counted as unmatched. A request answered before routing (a 413 for its body's
    size) is matched here to the route it asked for.
    """
    path = getattr(scope.get("route"), "path", None)
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if path is None and app is not None:
        if endpoint is not None:
            path = next((r.path for r in app.router.routes if getattr(r, "endpoint", None) is endpoint), None)
        elif status not in (404, 405):  # those matched no route: not worth looking again
            from starlette.routing import Match

            path = next((r.path for r in app.router.routes if r.matches(scope)[0] is Match.FULL), None)
    return path or "unmatched"
