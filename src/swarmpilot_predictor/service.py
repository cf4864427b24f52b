"""The predictor as a plain Python object: training, prediction, discovery.

HTTP routes and the CLI are thin layers over :class:`PredictorService`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import remove_stale_temps
from .cache import PredictionCache
from .distribution import (RemainingDistribution, TaskDistributions, TotalDistribution, TotalReading, interval_levels,
                           levels_reached)
from .errors import (AmbiguousModel, DataDirectoryGone, InvalidInput, ModelNotFound, NotFound, NotReady, PredictorError,
                     StorageError, shown)
from .identity import (IDENTITY_KEYS, IdentityPattern, ModelIdentity, describe_stated, fields_naming_a_model, identity_conflicts,
                       WILDCARD, join_key, named_by_traces, names_a_model, stated_keys)
from .lookup import WRITABLE_FORMATS, LookupTable, LookupTableStore, TablePrediction, generate_table, table_format
from .lookup.names import WRITABLE_TABLE_KINDS
from .lookup.quantiles import KNOT_LIMIT, KNOT_MOST, TableCompletion
from .metrics import TABLE_LABEL, PredictorMetrics, mark_preload, table_label, workers_not_preloaded
from .monitoring import MONITOR_LEVELS, AccuracyMonitor, ObservationLog, accuracy_of, calibration_test
from .registry import LoadedModel, ModelRegistry, ModelVersion
from .retraining import Retrainer
from .schemas import (COMPLETION_DEADLINE_KEY, DEADLINE_KEY, RenderedPredictions, TrainConfig, batch_values_problem,
                      first_run_split, total_fields, total_keys)
from .training import ProgressFn, Trainer, TrainingJobs
from .settings import PredictorSettings
from .traces import (
    DEFAULT_TARGET,
    ELAPSED_KEY,
    RUNTIME_RANGE,
    TraceError,
    elapsed_times,
    is_runtime,
    iter_trace_file,
    normalize_trace,
    normalize_traces,
    number_in_text,
)


log = logging.getLogger(__name__)

# The most observations an accuracy report lists with their predictions (a response of a few MB).
MAX_RECENT = 5000

# Fewer single requests than this are evaluated one by one (plain floats) rather than as
# one vectorised batch: from about this many on, the batch is cheaper (measured in-process).
ROW_PATH_MAX_BATCH = 12
_ONE_OK = np.ones(1, dtype=bool)
_ONE_OK.setflags(write=False)
# Longest feature string and level list a cached prediction may have (see _cache_key).
CACHE_MAX_STRING = 256
CACHE_MAX_LEVELS = 64


# The most deadlines whose probabilities a cached prediction keeps: a scheduler asks a few
# latency objectives again and again; past that many, it starts afresh.
DEADLINES_KEPT = 16


class TaskDeadlines:
    """One task's probabilities of being done within the deadlines asked of its prediction,
    shared by its cache entry and the answers made from it: its distribution is worked out
    when a deadline is first asked (a prediction never asked one never pays for it), and
    each deadline's probability is searched for once."""

    __slots__ = ("distribution", "by_deadline")

    def __init__(self, distribution: TaskDistributions | None = None):
        self.distribution = distribution
        self.by_deadline: dict[float, float] = {}

    def keep(self, deadline_ms: float, probability: float) -> None:
        kept = self.by_deadline
        if len(kept) >= DEADLINES_KEPT:
            # A new dict rather than one emptied: a thread reading the old one meanwhile is unharmed.
            kept = self.by_deadline = {}
        kept[deadline_ms] = probability

    def probability(self, deadline_ms: float, distribution_of: Callable[[], TaskDistributions]) -> float:
        """P(T <= ``deadline_ms``), read off the distribution ``distribution_of()`` makes (once)."""
        got = self.by_deadline.get(deadline_ms)
        if got is None:
            dist = self.distribution
            if dist is None:
                dist = self.distribution = distribution_of()
            got = float(levels_reached(dist, np.array([deadline_ms]))[0])
            self.keep(deadline_ms, got)
        return got


@dataclass
class Prediction(RenderedPredictions):
    """Predictions for a batch of traces, ready to be rendered as the contract's JSON."""

    identity: ModelIdentity
    version: int
    levels: list[float]
    confidence_level: float
    ok: np.ndarray  # bool per trace
    errors: list[str | None]
    quantiles: np.ndarray  # (n_ok, levels)
    mean: np.ndarray
    std: np.ndarray
    interval: np.ndarray  # (n_ok, 2)
    total: dict[str, Any] | None
    duration_seconds: float
    # The features whose value training never saw, by place among the predicted traces, of
    # those that have any (None: none has).
    outside: dict[int, list[str]] | None = None
    # Of running tasks (a trace stating elapsed_ms), by place among the predicted traces, the
    # level of its runtime distribution that time has reached (None: no task is running).
    elapsed_levels: dict[int, float] | None = None
    # Asked with a deadline: it, and each predicted task's probability of being done within it.
    deadline_ms: float | None = None
    deadline_levels: np.ndarray | None = None
    # Rendered results, kept so that a cached prediction is rendered only once.
    rendered: list[dict[str, Any]] | None = dataclasses.field(default=None, repr=False)
    # Of a one-task prediction answered on the single-task path or kept in the cache: what
    # its deadlines' probabilities are read off, shared with the copies made of it.
    deadlines: TaskDeadlines | None = dataclasses.field(default=None, repr=False)

    def results(self) -> list[dict[str, Any]]:
        if self.rendered is None:
            self.rendered = self._render()
        return self.rendered

    def _with(self, **changes: Any) -> "Prediction":
        # A shallow copy: dataclasses.replace costs several times more on the cache-hit path.
        out = object.__new__(Prediction)
        out.__dict__.update(self.__dict__, **changes)
        return out

    def timed(self, seconds: float) -> "Prediction":
        """This prediction as answered again (from the cache) in ``seconds``, with rendered
        results and levels of its own: a caller that changes its answer's dicts or lists
        changes no other caller's, nor the cached entry (rendered once, on the entry)."""
        rendered = self.results()
        return self._with(duration_seconds=seconds, levels=list(self.levels),
                          rendered=[{k: v.copy() if isinstance(v, (list, dict)) else v for k, v in r.items()}
                                    for r in rendered])

    def with_deadline(self, deadline_ms: float, probability: float) -> "Prediction":
        """This one-task answer (the caller's own copy: see :meth:`timed`) with its
        probability of being done within ``deadline_ms``."""
        if self.rendered is not None:
            self.rendered[0]["deadline_probability"] = probability
        return self._with(deadline_ms=deadline_ms, deadline_levels=np.array([probability]))

    def as_queue(self, total_distribution: bool = True) -> "Prediction":
        """This one task's prediction as a batch's: a queue of one totals that task's runtime,
        its distribution (with a shared factor too: there is no other task to share it)."""
        total = {"expect": float(self.mean[0]), "error": float(self.std[0]),
                 "total_quantiles": self.quantiles[0].tolist() if total_distribution else None,
                 "total_interval": self.interval[0].tolist() if total_distribution else None}
        if self.deadline_levels is not None:
            total[DEADLINE_KEY] = float(self.deadline_levels[0]) if total_distribution else None
        return self._with(total=total)

    def split(self) -> list["Prediction"]:
        """One Prediction per trace, each as if that trace had been predicted alone."""
        out = []
        k = 0

        def own(by_place: dict[int, Any] | None) -> dict[int, Any] | None:
            """A by-place annotation (outside, elapsed_levels) of the k-th predicted trace, as its own."""
            return {0: by_place[k]} if by_place and k in by_place else None

        for i, good in enumerate(self.ok.tolist()):
            rows = slice(k, k + 1) if good else slice(k, k)
            out.append(dataclasses.replace(
                self, ok=self.ok[i:i + 1], errors=self.errors[i:i + 1], quantiles=self.quantiles[rows],
                mean=self.mean[rows], std=self.std[rows], interval=self.interval[rows], total=None, rendered=None,
                deadline_levels=None if self.deadline_levels is None else self.deadline_levels[rows],
                outside=own(self.outside) if good else None, elapsed_levels=own(self.elapsed_levels) if good else None,
            ))
            k += good
        return out

    def _render(self) -> list[dict[str, Any]]:
        info = self.identity.model_info()
        out: list[dict[str, Any]] = []
        qs, means, stds, ivs = self.quantiles.tolist(), self.mean.tolist(), self.std.tolist(), self.interval.tolist()
        outside, reached = self.outside, self.elapsed_levels
        deadline = None if self.deadline_levels is None else self.deadline_levels.tolist()
        k = 0
        for good, err in zip(self.ok.tolist(), self.errors):
            if good:
                out.append({
                    "status": "success",
                    "quantiles": self.levels,
                    "quantile_predictions": qs[k],
                    "expect": means[k],
                    "error": stds[k],
                    "interval": ivs[k],
                    "model_info": info,
                    "model_version": self.version,
                })
                if outside is not None and k in outside:
                    out[-1]["outside_training"] = outside[k]
                if reached is not None and k in reached:
                    out[-1]["elapsed_level"] = reached[k]
                if deadline is not None:
                    out[-1]["deadline_probability"] = deadline[k]
                k += 1
            else:
                out.append({"status": "error", "message": err, "model_info": info})
        return out


def predict_on_one_blas_thread() -> None:
    """BLAS on one thread for this process, as everything that predicts runs it.

    Prediction multiplies tiny matrices: a threaded BLAS spends longer waking its threads
    than computing, and sums in another order (a table the CLI made differed from the
    server's in the last digits). Training runs in a process of its own.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _remove_stale_temps_at_start(settings: PredictorSettings) -> None:
    """The temporary files of writes killed midway outside the models and tables folders
    (which their stores tidy): job records, retraining decisions, the registry's stamp."""
    folders = [settings.data_dir, settings.jobs_dir, settings.models_dir]
    try:
        folders += [Path(e.path) for e in os.scandir(settings.observations_dir) if e.is_dir(follow_symlinks=False)]
    except OSError:
        pass
    for folder in folders:
        remove_stale_temps(folder)


def _trained_models(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The models a training result stored a version of: a group_by training's, or its one."""
    return result.get("models") or [{"identity": result["identity"]}]


def _written_format(name: str, fmt: str | None) -> str:
    """The format a table named ``name`` is written in: its suffix's, which must be writable
    and agree with ``fmt`` where that is given."""
    name_fmt = table_format(name)
    if name_fmt not in WRITABLE_FORMATS:
        raise InvalidInput(f"table_name {shown(name)} must end in {WRITABLE_TABLE_KINDS}", field="table_name")
    if fmt is not None and fmt != name_fmt:
        raise InvalidInput(f"format {shown(fmt)} does not match the table name {shown(name)}", field="format")
    return name_fmt


@dataclass(frozen=True)
class Measured:
    """Traces with measured runtimes against what a model version predicts for them."""

    traces: list[dict[str, Any]]  # as sent, flattened
    y: np.ndarray  # the usable rows' runtimes
    rows: np.ndarray  # the places of the usable traces
    errors: list[str | None]  # why each other trace is not (None: usable)
    dist: TaskDistributions  # the usable rows' distributions
    q: np.ndarray  # their quantiles at MONITOR_LEVELS
    first_run: np.ndarray | None  # the first-run flag each was predicted with (None: no such column)

    def rejected(self) -> list[dict[str, Any]]:
        return _rejected(self.errors)


class PredictorService:
    def __init__(self, settings: PredictorSettings):
        self.settings = settings
        settings.ensure_dirs()
        _remove_stale_temps_at_start(settings)
        self.registry = ModelRegistry(settings.models_dir, settings.max_loaded_models)
        self.trainer = Trainer(settings.data_dir, self.registry)
        self.jobs = TrainingJobs(settings.data_dir, on_success=self._trained_in_worker,
                                 on_failure=lambda error: self.metrics.training_runs.labels("error").inc(),
                                 max_pending=settings.max_queued_trainings,
                                 on_pending=lambda n: self.metrics.trainings_pending.set(n),
                                 priority=settings.training_priority, timeout=settings.training_timeout_s,
                                 log_format=settings.log_format)
        self.prediction_counts: Counter[ModelIdentity] = Counter()
        self._loaded_reported = -1  # the model versions in memory as the metrics last said
        # While the background preload runs: (models loaded so far, models that could not be,
        # models to load; None while they are listed). None otherwise: the service is ready.
        self._preload_progress: tuple[int, int, int | None] | None = None
        self._closed = False
        self._count_lock = threading.Lock()
        self.metrics = PredictorMetrics()
        self.cache = PredictionCache(settings.cache_size)
        self.registry.on_change = self.cache.invalidate
        self.registry.on_loaded_change = self._report_loaded
        self.observations = ObservationLog(
            settings.observations_dir,
            max_file_bytes=int(settings.observations_max_file_mb * 1024 * 1024),
            max_files=settings.observations_max_files,
        )
        self.monitor = AccuracyMonitor(
            self.observations, settings.accuracy_window, settings.drift_alpha, settings.drift_min_observations
        )
        self.retrainer = Retrainer(
            self.registry, self.monitor, settings.auto_retrain, settings.retrain_min_observations,
            on_decision=lambda decision: self.metrics.retraining_runs.labels(decision["status"]).inc(),
            on_new_version=self.keep_newest_versions,
            max_observations=settings.retrain_max_observations, in_worker=settings.retrain_in_worker,
            worker_priority=settings.training_priority, timeout=settings.training_timeout_s,
        )
        # Lookup tables; DEFAULT_LOOKUP_TABLE is loaded now (a bad file is logged and reported by /health).
        self.tables = LookupTableStore(settings.tables_dir, default=settings.default_lookup_table)

    def startup_report(self) -> tuple[str, list[str]]:
        """What an operator reads as the service starts: the data directory served, what it
        holds and whether writes need a key (info); each folder it cannot write in (warnings)."""
        settings = self.settings
        models = len(self.registry.identities())
        tables = len(self.tables.names())
        key = ("routes that change state need the API key" if settings.api_key is not None else
               "no API key is set (PREDICTOR_API_KEY): every route is open")
        summary = (f"serving the data directory {settings.data_dir.resolve()} ({models} model{'s' * (models != 1)}, "
                   f"{tables} lookup table{'s' * (tables != 1)}); {key}; automatic retraining "
                   f"{'on' if settings.auto_retrain else 'off'}")
        return summary, settings.unwritable_dirs()

    def close(self) -> None:
        self._closed = True
        self.retrainer.shutdown()
        self.jobs.shutdown()

    def start_preload(self) -> threading.Thread:
        """:meth:`preload` in a thread of its own, the service answering meanwhile; until it
        ends, :meth:`readiness` says the service is not ready."""
        self._preload_progress = (0, 0, None)
        if self.metrics.multiprocess_dir is not None:  # several workers: each /ready answers for all
            mark_preload(self.metrics.multiprocess_dir, done=False)
        thread = threading.Thread(target=self.preload, name="preload-models", daemon=True)
        thread.start()
        return thread

    def readiness(self) -> dict[str, Any]:
        """Whether the service is ready for traffic: its data directory there, and the models it
        preloads (``PREDICTOR_PRELOAD_MODELS``) loaded. A 503 (NotReady, DataDirectoryGone) otherwise."""
        gone = self.data_dir_gone()
        if gone is not None:
            raise gone
        progress = self._preload_progress
        if progress is not None:
            loaded, failed, planned = progress
            raise NotReady("loading the latest version of every model (PREDICTOR_PRELOAD_MODELS): "
                           + (f"{loaded} of {planned} loaded" if planned is not None else "listing them")
                           + (f" ({failed} could not be)" if failed else "")
                           + "; /ping answers for liveness meanwhile")
        if self.settings.preload_models and self.metrics.multiprocess_dir is not None:
            others = workers_not_preloaded(self.metrics.multiprocess_dir, self.settings.workers)
            if others is not None:  # a probe reaches one worker: it answers for them all
                raise NotReady(others + "; /ping answers for liveness meanwhile")
        return {"status": "ready", "models_loaded": self.registry.loaded_count}

    def preload(self) -> int:
        """Load the latest version of the most recently trained models, as many as there is
        room for in ``max_loaded_models``; returns how many were loaded. A model that cannot
        be loaded is logged and skipped (its requests will answer why)."""
        try:
            return self._preload()
        finally:
            self._preload_progress = None  # ready, however it ended
            if self.metrics.multiprocess_dir is not None:
                mark_preload(self.metrics.multiprocess_dir, done=True)

    def _preload(self) -> int:
        latest = []
        for identity in self.registry.identities():
            try:
                latest.append(self.registry.latest(identity))
            except ModelNotFound:  # deleted meanwhile
                continue
        # Only into free room (what requests loaded meanwhile stays), and the newest last,
        # so that it is the last to be evicted.
        room = max(self.settings.max_loaded_models - self.registry.loaded_count, 0)
        latest.sort(key=lambda meta: meta.created_at, reverse=True)
        chosen = [m for m in latest if not self.registry.is_loaded(m.identity, m.version)][:room]
        loaded = failed = 0
        for meta in reversed(chosen):
            if self._closed:
                break
            # (Those that could not be loaded are not counted as loaded: they are said apart.)
            self._preload_progress = (loaded, failed, len(chosen))
            try:
                try:
                    self.registry.load(meta.identity, meta.version)
                except (ModelNotFound, NotFound):  # (NotFound: gone from this process's index too)
                    # Deleted by another process since the listing (a worker started again
                    # while a client deletes versions): the version serving now, if any, is
                    # loaded instead, without a word. (Logged as a warning, it read as a fault.)
                    self.registry.load(meta.identity)
                loaded += 1
            except ModelNotFound:  # the whole model deleted meanwhile: nothing to load
                continue
            except PredictorError as exc:
                failed += 1
                log.warning("preloading %s: %s", meta.identity.key, exc.message)
        self._report_loaded()
        log.info("preloaded %d model(s)", loaded)
        return loaded

    # ------------------------------------------------------------------ training

    def train(self, config: TrainConfig, uploads: dict[str, Path] | None = None,
              progress: ProgressFn | None = None) -> dict[str, Any]:
        """Train in this process (the CLI and tests); the HTTP API uses :attr:`jobs` instead."""
        try:
            result = self.trainer.train(config, uploads, progress)
        except Exception:
            self.metrics.training_runs.labels("error").inc()
            raise
        self._trained(result)
        return result

    def _trained_in_worker(self, result: dict[str, Any]) -> None:
        # The worker wrote new versions to disk: index them here (the folders its change log
        # names, as any other worker does; re-reading each model's folder alone made the next
        # request rescan every folder, 110-270 ms with 3,000 models), drop stale cache entries.
        self.registry.maybe_refresh()
        for entry in _trained_models(result):
            identity = ModelIdentity.from_parts(entry["identity"])
            version = entry.get("version", result.get("version"))
            if version is not None and all(v.version != version for v in self.registry.versions(identity)):
                # Not among what the change log told: its time did not move (a file system that
                # keeps file times to the second, two trainings in one): what this process
                # answered stored, it serves.
                self.registry.refresh_identity(identity)
            self.cache.invalidate(identity)
        self._trained(result)

    def _trained(self, result: dict[str, Any]) -> None:
        self.metrics.training_runs.labels("success").inc()
        self.metrics.training_duration.observe(result["duration_seconds"])
        for entry in _trained_models(result):
            self.keep_newest_versions(ModelIdentity.from_parts(entry["identity"]))

    def keep_newest_versions(self, identity: ModelIdentity) -> list[int]:
        """Delete the versions of ``identity`` older than its ``PREDICTOR_KEEP_VERSIONS``
        newest (none where it is 0); returns those deleted. Called as each version is stored:
        a retraining every few hundred observations otherwise adds versions without end."""
        keep = self.settings.keep_versions
        if not keep:
            return []
        self.registry.maybe_refresh()
        deleted = []
        for meta in self.registry.versions(identity)[:-keep]:
            try:
                deleted += self.registry.delete(identity, meta.version)
            except (ModelNotFound, NotFound):
                continue  # deleted meanwhile (another worker pruned it, or a request): the version, or the model
            except (PredictorError, OSError) as exc:  # the new version is stored; the old stays, for now
                log.warning("cannot delete version %d of %s (PREDICTOR_KEEP_VERSIONS): %s", meta.version,
                            identity.key, getattr(exc, "message", exc))
        if deleted:
            log.info("deleted version(s) %s of %s, keeping the newest %d (PREDICTOR_KEEP_VERSIONS)",
                     ", ".join(map(str, deleted)), identity.key, keep)
        return deleted

    # ------------------------------------------------------------------ prediction

    def predict(
        self,
        pattern: IdentityPattern,
        traces: Sequence[dict[str, Any]],
        confidence_level: float = 0.95,
        quantiles: Sequence[float] | None = None,
        with_total: bool = False,
        version: int | None = None,
        lookup_table: bool = False,
        lookup_table_name: str | None = None,
        shared_factor: bool = False,
        total_distribution: bool = True,
        deadline_ms: float | None = None,
    ) -> Prediction | TablePrediction:
        if lookup_table:
            # Answered from a pre-computed table (no model needed); without a name, the default table.
            pred = predict_from_table(self.tables, lookup_table_name, pattern, traces, confidence_level, quantiles,
                                      with_total, shared_factor, staleness=self._staleness, deadline_ms=deadline_ms)
            n_ok = int(pred.ok.sum())
            self.metrics.count_predictions(table_label(pred.table), "lookup_table", n_ok, len(pred.errors) - n_ok)
            return pred
        t0 = time.perf_counter()
        identity, loaded = self._serving(pattern, version, traces)
        if with_total and not quantiles:  # answered at the model's default levels
            _check_batch_values(len(traces), len(loaded.meta.quantiles))
        return self._predict_with(identity, loaded, traces, confidence_level, quantiles, with_total, t0,
                                  shared_factor=shared_factor, total_distribution=total_distribution,
                                  deadline_ms=deadline_ms)

    def _serving_version(self, parts: tuple[str | None, ...]) -> int | None:
        """The version of the model named by ``parts`` that serves now; None where none is stored."""
        self.registry.maybe_refresh()  # a version another worker stored makes a table's records stale
        try:
            return self.registry.latest(ModelIdentity(*parts)).version  # type: ignore[arg-type]
        except ModelNotFound:
            return None

    def _staleness(self, parts: tuple[str | None, ...], version: int) -> bool | None:
        """Whether records made by ``version`` of the model ``parts`` are stale (see :meth:`_stale`)."""
        return self._stale(parts, version, self._serving_version(parts))

    def _stale(self, parts: tuple[str | None, ...], version: int, serving: int | None) -> bool | None:
        """Whether records made by ``version`` are stale when ``serving`` serves (None: none
        does): another version serves, or that one was deleted here; None where this
        registry never held it (a table made by another service, whose versions are numbered
        on their own: not for this one to say)."""
        if serving == version:
            return False
        identity = ModelIdentity(*parts)  # type: ignore[arg-type]
        if self.registry.was_deleted(identity, version) or (serving is not None and self.registry.is_stored(identity, version)):
            return True
        return None

    def list_tables(self) -> dict[str, Any]:
        """The lookup tables, and the default table's name (None where none is loaded); for each
        model a loaded table holds records of, whether a version other than the one that made
        them serves now (or none: the model was deleted)."""
        tables = self.tables.list()
        for entry in tables:
            for ident in entry.get("identities", ()):
                parts = tuple(ident[k] for k in IDENTITY_KEYS)
                if None in parts or not ident["model_versions"]:
                    # The seed's records: no model of this registry made them. The keys are
                    # there all the same (null), so that a client can read every entry alike.
                    ident["serving_version"] = ident["stale"] = None
                    continue
                ident["serving_version"] = serving = self._serving_version(parts)
                each = [self._stale(parts, v, serving) for v in ident["model_versions"]]
                # Stale if any of its versions is; unknown (null) if none is and one is unknown.
                ident["stale"] = True if True in each else None if None in each else False
        default_name, default_loaded, _ = self.tables.default_state()
        return {"status": "success", "tables": tables, "default": default_name if default_loaded else None}

    def delete_table(self, name: str) -> dict[str, Any]:
        """Delete the lookup table file ``name`` (and its parsed sidecar), and its series in the
        metrics: a table made again under its name counts from 0 (it took up the deleted one's
        counts where no scrape came between, and with several workers whatever came)."""
        answer = self.tables.delete(name)
        self.metrics.forget_model(table_label(name))
        self.metrics.zero_shared_counts(table_label(name))
        return answer

    def _serving(self, pattern: IdentityPattern, version: int | None = None,
                 traces: Sequence[Any] | None = None) -> tuple[ModelIdentity, LoadedModel]:
        """The model ``pattern`` names (its latest version unless ``version``), after noticing
        other workers' changes; where it leaves parts to ``*``, the one the traces' identity
        fields name (:meth:`_resolve_with`)."""
        identity = self._resolve_with(pattern, traces)
        try:
            return identity, self.registry.load(identity, version)
        except NotFound as exc:
            if version is None:
                raise
            raise NotFound(exc.message, field="version") from None

    def _report_loaded(self) -> None:
        """Set the model versions in memory in the metrics when their number changed: kept
        current as models load (for a prediction, an observation, a retraining, a table) and
        are evicted, not only when this worker takes a scrape (with several workers a scrape
        adds up every worker's last value; models an observation loaded went uncounted)."""
        # Under the lock: loading threads and a scrape interleaved could leave the older count set.
        with self._count_lock:
            count = self.registry.loaded_count
            if count != self._loaded_reported:
                self._loaded_reported = count
                self.metrics.models_loaded.set(count)

    def _resolve_with(self, pattern: IdentityPattern, traces: Sequence[Any] | None) -> ModelIdentity:
        """The model ``pattern`` names; where it leaves parts to ``*``, the one of its matches
        that the traces' identity fields name, however many match: a trace naming hardware
        no model has is a 404 whether one model matches or two (it was a 422, that trace's
        own error, while one did)."""
        try:
            identity = self._resolve(pattern)
        except AmbiguousModel:
            named = self._named_by_traces(pattern, traces or ())
            if named is None:
                raise
            return named
        return self._named_by_traces(pattern, traces or ()) or identity

    def resolve_for(self, pattern: IdentityPattern, traces: Sequence[Any]) -> IdentityPattern:
        """``pattern``, or the full identity of the model its matches that the traces'
        identity fields name (for requests answered by pattern, such as coalesced single
        predictions). A 404 or 409 naming the traces' values is that request's answer, alone
        or not; other errors are left to the prediction."""
        try:
            self._resolve(pattern)
        except AmbiguousModel:
            pass
        except PredictorError:
            return pattern  # the prediction gives it
        identity = self._named_by_traces(pattern, traces)
        return pattern if identity is None else IdentityPattern.from_parts(identity.as_dict())

    def _named_by_traces(self, pattern: IdentityPattern, traces: Sequence[Any]) -> ModelIdentity | None:
        """Among the models ``pattern`` matches, the one whose unspecified parts every trace
        stating them names (None if the traces state none of those parts)."""
        # Most requests name the model whole, or send traces that name none: no trace is read.
        if pattern.is_complete() or not names_a_model(traces if isinstance(traces, list) else list(traces)):
            return None
        flat = []
        for t in traces:
            try:
                flat.append(normalize_trace(t))
            except TraceError:
                # Its own fields still name its model; its error is the prediction's to give.
                flat.append(fields_naming_a_model(t))
        stated = pattern.stated_by(flat)
        if not stated:
            return None
        self.registry.maybe_refresh()
        if all(len(values) == 1 and isinstance(values[0], str) for values in stated.values()):
            # One name for each part: the model the pattern names with them, a look-up (a pass
            # over every model's parts took 28 ms a request with 3,000 models).
            parts = dict(zip(IDENTITY_KEYS, pattern.as_tuple()))
            parts.update((key, values[0]) for key, values in stated.items())
            matches = named = sorted(self.registry.matching(IdentityPattern(**parts)), key=lambda i: i.key)
        else:
            candidates = sorted(self.registry.matching(pattern), key=lambda i: i.key)
            matches, named = named_by_traces(stated, candidates, ModelIdentity.as_tuple)
        said = describe_stated(stated)
        if not matches:
            # Traces that disagree may each name a model: one request is answered by one model.
            if len(named) > 1:
                keys = [i.key for i in named]
                raise AmbiguousModel(f"the traces name different models of {pattern.describe()} (their {said}): "
                                     f"{', '.join(keys)}; send each model's traces in a request of its own",
                                     field="identity", extra={"candidates": keys})
            if named:  # the one model some traces name; those that name no model fail on their own
                return named[0]
            near = self._near_misses_stated(pattern, stated)
            raise ModelNotFound(f"no trained model matches {pattern.describe()} with the traces' {said}"
                                + (f"; did you mean {', '.join(near)}?" if near else ""),
                                field="identity", extra={"candidates": near} if near else None)
        if len(matches) > 1:
            names = [m.key for m in matches]
            raise AmbiguousModel(f"{len(matches)} models match {pattern.describe()} with the traces' {said}: "
                                 f"{', '.join(names)}; specify more of the identity", field="identity",
                                 extra={"candidates": names})
        return matches[0]

    def _near_misses_stated(self, pattern: IdentityPattern, stated: dict[str, list[object]]) -> list[str]:
        """The models one part away from ``pattern`` with the parts the traces state, where
        they state one value of each (as a URL naming those parts would be answered)."""
        if any(len(values) != 1 for values in stated.values()):
            return []
        parts = dict(zip(IDENTITY_KEYS, pattern.as_tuple()))
        parts.update((key, values[0]) for key, values in stated.items())
        return self.registry.near_misses(tuple(parts[key] for key in IDENTITY_KEYS))

    def load_if_cold(self, pattern: IdentityPattern) -> bool:
        """Load the serving model ``pattern`` names if it is not in memory; whether it was.

        For the HTTP routes, which predict on the event loop: a model's first load (the
        LightGBM import, the file parsed) took 1.5 s, and every other request of the
        worker, liveness probes included, waited for it. They call this in a thread when
        :meth:`is_cold` says so. Errors (no such model) are left to the prediction.
        """
        try:
            identity = self._resolve(pattern)
            self.registry.load(identity)
        except PredictorError:
            return False
        return True

    def is_cold(self, pattern: IdentityPattern) -> bool:
        """Whether predicting from ``pattern`` would load its model first (cheap: a lookup)."""
        try:
            # The registry's cached answer: the prediction that follows looks for changes itself.
            identity = self.registry.resolve(pattern)
            return not self.registry.is_loaded(identity, self.registry.latest(identity).version)
        except PredictorError:
            return False

    def _resolve(self, pattern: IdentityPattern) -> ModelIdentity:
        """The one model ``pattern`` names, as the registry stands now (another worker may have changed it)."""
        self.registry.maybe_refresh()  # one stat() unless another process changed something
        return self.registry.resolve(pattern)

    def _predict_with(self, identity: ModelIdentity, loaded: LoadedModel, traces: Sequence[dict[str, Any]],
                      confidence_level: float, quantiles: Sequence[float] | None, with_total: bool,
                      t0: float, cached: bool = True, shared_factor: bool = False,
                      total_distribution: bool = True, deadline_ms: float | None = None) -> Prediction:
        levels = requested_levels(quantiles, loaded.meta.quantiles)
        cache_key = None
        # One trace, alone or a batch of one (whose total is that task: no convolution, and the
        # single-row path, at a third of the cost), with a deadline or without: the entry it is
        # cached under is its answer without one, and a deadline's probability is read off its
        # distribution, kept with that entry (TaskDeadlines).
        lone = len(traces) == 1
        if lone:  # a trace that names another model: its error comes from the batch path
            conflict = identity_conflicts(list(traces), identity)
            lone = conflict is None or conflict[0] is None
        if cached and self.cache.enabled and lone:
            cache_key = self._cache_key(identity, loaded.meta, traces[0], levels, confidence_level)
            if cache_key is not None:
                hit = self.cache.get(cache_key)
                if hit is not None:
                    self.metrics.cache_hits.inc()
                    self._count(identity, 1, 0)
                    hit = self._with_deadline(loaded, traces[0], hit.timed(0.0), deadline_ms, t0)
                    return hit.as_queue(total_distribution) if with_total else hit
                self.metrics.cache_misses.inc()
        if lone:
            prediction = self._predict_one(identity, loaded, traces[0], levels, confidence_level, t0)
            if prediction is not None:
                if cache_key is not None:
                    prediction = self._kept(cache_key, prediction)
                prediction = self._with_deadline(loaded, traces[0], prediction, deadline_ms, t0)
                return prediction.as_queue(total_distribution) if with_total else prediction
        errors, ok, dist, outside, reached = self._distributions(identity, loaded, traces)
        rows = np.flatnonzero(ok)
        # The interval's two levels ride along with the requested ones: one evaluation.
        both = dist.quantiles([*levels, *interval_levels(confidence_level)])
        q, interval = both[:, : len(levels)], both[:, len(levels):]
        mean, std = dist.mean_std()
        total = None
        if with_total and len(rows) and not total_distribution:
            k1, k2 = dist.total_moments(shared_factor)
            total = {"expect": k1, "error": math.sqrt(k2), "total_quantiles": None, "total_interval": None}
        elif with_total and len(rows):
            total = _total_answer(dist.total(shared_factor), levels, confidence_level, deadline_ms)
        deadline_levels = None
        if deadline_ms is not None:
            deadline_levels = levels_reached(dist, np.full(len(rows), float(deadline_ms))) if len(rows) else np.zeros(0)
        self._count(identity, len(rows), len(errors) - len(rows))
        prediction = Prediction(
            identity=identity,
            version=loaded.meta.version,
            levels=levels,
            confidence_level=confidence_level,
            ok=ok,
            errors=errors,
            quantiles=q,
            mean=mean,
            std=std,
            interval=interval,
            total=total,
            duration_seconds=time.perf_counter() - t0,
            outside=outside,
            elapsed_levels=reached,
            deadline_ms=deadline_ms,
            deadline_levels=deadline_levels,
        )
        if cache_key is not None and ok.all():
            prediction = self._kept(cache_key, prediction, TaskDeadlines(dist))
        return prediction

    def _kept(self, key: Any, prediction: Prediction, deadlines: TaskDeadlines | None = None) -> Prediction:
        """``prediction`` (of one task) put in the cache under ``key`` as it answers without a
        deadline, so that requests with one and without share the entry; ``deadlines`` (by
        default the prediction's own) keeps what its deadlines' probabilities are read off,
        and its own deadline's where it has one. The caller's own copy of it back (see
        :meth:`Prediction.timed`: what the caller changes never reaches the entry)."""
        deadlines = deadlines or prediction.deadlines or TaskDeadlines()
        entry = prediction
        if prediction.deadline_ms is not None:
            deadlines.keep(float(prediction.deadline_ms), float(prediction.deadline_levels[0]))
            entry = prediction._with(deadline_ms=None, deadline_levels=None, rendered=None)
        entry.deadlines = deadlines
        self.cache.put(key, entry)
        return prediction.timed(prediction.duration_seconds)

    def _with_deadline(self, loaded: LoadedModel, trace: Any, prediction: Prediction, deadline_ms: float | None,
                       t0: float) -> Prediction:
        """A one-task answer of the single-task path or the cache (the caller's own copy),
        timed from ``t0``, with its probability of being done within ``deadline_ms`` where one
        is asked: read off the trace's distribution as the batch path makes it (the same bits)."""
        if deadline_ms is None:
            prediction.duration_seconds = time.perf_counter() - t0
            return prediction
        deadlines = prediction.deadlines or TaskDeadlines()
        probability = deadlines.probability(float(deadline_ms), lambda: self._task_distribution(loaded, trace))
        return prediction.with_deadline(deadline_ms, probability)._with(duration_seconds=time.perf_counter() - t0)

    @staticmethod
    def _task_distribution(loaded: LoadedModel, trace: Any) -> TaskDistributions:
        """The distribution :meth:`_distributions` makes of one trace that it predicts and
        that states no elapsed time (as the single-task path's and the cache's do): the same
        encoding and model call, without the checks such a trace has passed (12 µs of 49)."""
        flat, _ = normalize_traces([trace])
        X, _ = loaded.meta.features.matrix(flat)
        return loaded.model.predict_distribution(X)

    def _distributions(self, identity: ModelIdentity, loaded: LoadedModel, traces: Sequence[dict[str, Any]]
                       ) -> tuple[list[str | None], np.ndarray, TaskDistributions, dict[int, list[str]] | None,
                                  dict[int, float] | None]:
        """The traces' distributions, all at once: each trace's error (None: predicted), which
        were predicted, their distributions (a running task's time left), and, by place among
        those, the features outside training and the levels running tasks have reached."""
        flat, pre_errors = normalize_traces(traces)
        conflicts = identity_conflicts(flat, identity)  # a trace whose identity fields name another model
        if conflicts is not None:
            pre_errors = [p or c for p, c in zip(pre_errors, conflicts)]
        X, errors = loaded.meta.features.matrix(flat)
        if pre_errors.count(None) < len(pre_errors):
            errors = [p or e for p, e in zip(pre_errors, errors)]
        elapsed, elapsed_errors = elapsed_times(flat, loaded.meta.features.names)
        if elapsed_errors is not None:
            errors = [e or p for e, p in zip(errors, elapsed_errors)]
        # (The common batch, with no error, is told in C.)
        ok = np.ones(len(errors), dtype=bool) if errors.count(None) == len(errors) else \
            np.array([e is None for e in errors], dtype=bool)
        rows = np.flatnonzero(ok)
        Xok = X[rows] if len(rows) < len(X) else X
        outside = loaded.meta.features.outside_training(Xok, flat if len(rows) == len(X) else [flat[i] for i in rows])
        dist = loaded.model.predict_distribution(Xok)
        reached = None
        if elapsed is not None and (elapsed[rows] > 0).any():
            dist = RemainingDistribution.of(dist, elapsed[rows])
            reached = {int(i): float(dist.reached[i]) for i in np.flatnonzero(dist.elapsed > 0)}
        return errors, ok, dist, outside, reached

    def _predict_one(self, identity: ModelIdentity, loaded: LoadedModel, trace: Any, levels: list[float],
                     confidence_level: float, t0: float) -> Prediction | None:
        """One well-formed trace, evaluated in plain floats (the model's single-row path).

        None sends the caller down the vectorised path: a trace with an error
        (whose message that path writes) or a model family without a
        single-row path.
        """
        try:
            flat = normalize_trace(trace)
        except TraceError:
            return None
        if flat is not trace and (identity_conflicts([flat], identity) or [None])[0] is not None:
            return None  # identity fields inside a structured trace's input_feature
        if flat.get(ELAPSED_KEY) is not None:
            return None  # a running task: its time left
        x, error = loaded.meta.features.row(flat)
        if error is not None:
            return None
        got = loaded.model.describe_one(x, (*levels, *interval_levels(confidence_level)))
        if got is None:
            return None
        q, mean, std = got
        outside = loaded.meta.features.outside_training_row(x, flat)
        k = len(levels)
        # One array, viewed as the four fields: each numpy allocation costs a µs here.
        values = np.array([[*q, mean, std]])
        self._count(identity, 1, 0)
        return Prediction(
            identity=identity,
            version=loaded.meta.version,
            levels=levels,
            confidence_level=confidence_level,
            ok=_ONE_OK,
            errors=[None],
            quantiles=values[:, :k],
            mean=values[:, k + 2],
            std=values[:, k + 3],
            interval=values[:, k:k + 2],
            total=None,
            duration_seconds=time.perf_counter() - t0,
            outside={0: outside} if outside else None,
        )

    def predict_each(self, pattern: IdentityPattern, traces: Sequence[dict[str, Any]], confidence_level: float = 0.95,
                     quantiles: Sequence[float] | None = None, deadline_ms: float | None = None) -> list[Prediction]:
        """Several single-trace requests with the same options, evaluated as one vectorised batch.

        Below :data:`ROW_PATH_MAX_BATCH` traces they are answered one by one
        (each through the model's single-row path): measured, that is cheaper
        than a small batch.
        """
        identity, loaded = self._serving(pattern)  # once for all of them
        if len(traces) < ROW_PATH_MAX_BATCH:
            return [self._predict_with(identity, loaded, [t], confidence_level, quantiles, False, time.perf_counter(),
                                       deadline_ms=deadline_ms) for t in traces]
        if not self.cache.enabled:
            return self._predict_with(identity, loaded, traces, confidence_level, quantiles, False,
                                      time.perf_counter(), deadline_ms=deadline_ms).split()
        # Cached traces are answered from the cache, the others evaluated together.
        t0 = time.perf_counter()
        meta = loaded.meta
        levels = requested_levels(quantiles, meta.quantiles)
        out: list[Prediction | None] = [None] * len(traces)
        # A trace stating identity fields is checked against the model on the way: never from the cache.
        keys = [None if stated_keys([t]) else self._cache_key(identity, meta, t, levels, confidence_level)
                for t in traces]
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if key is not None else None
            if hit is not None:
                # Its own time, as on the one-trace path, not that of the request that filled the entry.
                out[i] = hit.timed(time.perf_counter() - t0)
        self.metrics.cache_hits.inc(sum(p is not None for p in out))
        misses = [i for i, p in enumerate(out) if p is None]
        if deadline_ms is not None and len(misses) < len(traces):
            self._with_deadlines(identity, loaded, traces, out, float(deadline_ms))
        if misses:
            # Traces no cache entry can hold were never looked up: neither hits nor misses,
            # as on the one-trace path and in /cache/stats.
            self.metrics.cache_misses.inc(sum(keys[i] is not None for i in misses))
            fresh = self._predict_with(identity, loaded, [traces[i] for i in misses], confidence_level, quantiles,
                                       False, time.perf_counter(), cached=False,  # looked up above
                                       deadline_ms=deadline_ms).split()
            for i, pred in zip(misses, fresh):
                out[i] = pred
                if keys[i] is not None and pred.ok[0]:
                    out[i] = self._kept(keys[i], pred)
        n_hits = len(traces) - len(misses)
        if n_hits:
            self._count(identity, n_hits, 0)
        return out  # type: ignore[return-value]

    def _with_deadlines(self, identity: ModelIdentity, loaded: LoadedModel, traces: Sequence[Any],
                       answers: list[Prediction | None], deadline_ms: float) -> None:
        """``answers`` from the cache (None: not cached), each given its probability of being
        done within ``deadline_ms``: those their entries have not found yet, searched for at
        once on their traces' distributions (the same bits as one at a time)."""
        t0 = time.perf_counter()
        found: dict[int, float] = {}
        unread = []
        for i, pred in enumerate(answers):
            if pred is not None:
                got = pred.deadlines.by_deadline.get(deadline_ms) if pred.deadlines is not None else None
                if got is None:
                    unread.append(i)
                else:
                    found[i] = got
        if unread:
            _, ok, dist, _, _ = self._distributions(identity, loaded, [traces[i] for i in unread])
            predicted = [unread[k] for k in np.flatnonzero(ok).tolist()]  # (all: each was predicted to be cached)
            for i, p in zip(predicted, levels_reached(dist, np.full(len(predicted), deadline_ms)).tolist()):
                found[i] = p
                if answers[i].deadlines is not None:  # (shared with the entry)
                    answers[i].deadlines.keep(deadline_ms, p)
        took = time.perf_counter() - t0
        for i, p in found.items():
            pred = answers[i]
            answers[i] = pred.with_deadline(deadline_ms, p)._with(duration_seconds=pred.duration_seconds + took)

    @staticmethod
    def _cache_key(identity: ModelIdentity, meta: ModelVersion, trace: Any, levels: list[float], confidence: float):
        if not isinstance(trace, dict) or "input_feature" in trace or trace.get(ELAPSED_KEY) is not None:
            return None  # (a running task's time left is answered afresh: its elapsed time changes)
        values = tuple(trace.get(name) for name in meta.features.prediction_fields)
        # Only plain scalars make a key; anything else takes the normal path. The cache is
        # bounded by entries, so an entry must be small: long strings (an unseen category
        # of 5 MB is a valid prediction) and long level lists are answered, not kept.
        if not all(v is None or isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= CACHE_MAX_STRING)
                   for v in values) or len(levels) > CACHE_MAX_LEVELS:
            return None
        # True == 1 with one hash, but a model may read them apart (a category learned as the
        # word "true"): a boolean keys as itself.
        if any(isinstance(v, bool) for v in values):
            values = tuple((bool, v) if isinstance(v, bool) else v for v in values)
        return (identity, meta.version, values, tuple(levels), confidence)

    def predict_queues(self, pattern: IdentityPattern, queues: dict[str, Sequence[dict[str, Any]]],
                       confidence_level: float = 0.95, quantiles: Sequence[float] | None = None,
                       shared_factor: bool = False, version: int | None = None, lookup_table: bool = False,
                       lookup_table_name: str | None = None, deadline_ms: float | None = None,
                       completion_times: bool = False) -> dict[str, Any]:
        """The wait of each of several queues of one model's tasks (a scheduler's instances):
        each queue's total as a batch of its traces answers it, all traces predicted at once
        (with ``lookup_table``, a table's records answer, a queue at a time).

        A queue's ``tasks`` counts its traces predicted, ``failed`` the others, listed in
        ``errors`` by their place in the queue; its total is over the tasks predicted (an
        empty queue's is 0; one none of whose tasks could be predicted has none: null).

        With ``completion_times``, each queue also says when each of its tasks predicted is
        done, the queue run in its order: the total of that task and those predicted ahead
        of it (``completion``, :func:`completion_answers`)."""
        if completion_times:
            _check_completion_traces(queues, quantiles)
        if lookup_table:
            return self._table_queues(pattern, queues, confidence_level, quantiles, shared_factor, lookup_table_name,
                                      deadline_ms, completion_times)
        names = list(queues)
        traces = [t for name in names for t in queues[name]]
        t0 = time.perf_counter()
        identity, loaded = self._serving(pattern, version, traces)
        levels = requested_levels(quantiles, loaded.meta.quantiles)
        _check_queue_values(len(names), len(levels))
        if completion_times:
            _check_completion_traces(queues, levels)
        errors: list[str | None] = []
        ok = np.zeros(0, dtype=bool)
        ends = np.cumsum([len(queues[name]) for name in names]).tolist()
        starts = [end - len(queues[name]) for name, end in zip(names, ends)]
        totals: dict[int, dict[str, Any]] = {}  # of each queue with a task predicted
        completion: dict[int, list[dict[str, Any]]] = {}  # of the same, where asked
        running: dict[int, list[dict[str, Any]]] = {}  # of each queue with a task running
        if traces:
            errors, ok, dist, _, reached = self._distributions(identity, loaded, traces)
            running = _running_by_queue(reached, np.flatnonzero(ok), starts, ends)
            place = np.cumsum(ok) - 1  # a predicted trace's place among the distributions
            summed = [k for k, (start, end) in enumerate(zip(starts, ends)) if ok[start:end].any()]
            rows = [place[starts[k] + np.flatnonzero(ok[starts[k]:ends[k]])] for k in summed]
            read = [*levels, *interval_levels(confidence_level)]
            if completion_times:
                # The last task's completion is the queue's total, to the last bit: worked out
                # once (as a total apart too, 1,000 queues of 10 tasks took 15% longer).
                readings = dist.subset_prefix_totals(rows, read, shared_factor,
                                                     read=lambda total: TotalReading.of(total, read, deadline_ms))
                got = [_reading_answer(done[-1], len(levels), deadline_ms) for done in readings]
                completion = {k: completion_answers(done, np.flatnonzero(ok[starts[k]:ends[k]]), len(levels))
                              for k, done in zip(summed, readings)}
            else:
                # Each total read as it is made: kept, each held its group's work (10,000 queues: 1.2 GB).
                # A queue of one task totals that task: their deadline's probabilities are searched
                # for all of them at once, below (one search a queue: 10,000 such queues took 2.6 s
                # with a deadline, 0.40 without).
                got = dist.subset_totals(
                    rows, read, shared_factor,
                    read=lambda total: _total_answer(total, levels, confidence_level,
                                                     deadline_ms if total.single is None else None))
                if deadline_ms is not None:
                    ones = [k for k, r in enumerate(rows) if len(r) == 1]
                    if ones:
                        alone = np.array([rows[k][0] for k in ones], dtype=np.int64)
                        reached = levels_reached(dist.subset(alone), np.full(len(ones), float(deadline_ms))).tolist()
                        for k, p in zip(ones, reached):
                            got[k][DEADLINE_KEY] = p
            totals = dict(zip(summed, got))
        answers: dict[str, Any] = {}
        for k, (name, start, end) in enumerate(zip(names, starts, ends)):
            answers[name] = _queue_answer(ok[start:end], errors[start:end], totals.get(k), len(levels), deadline_ms,
                                          running.get(k, []), completion.get(k, []) if completion_times else None)
        n_ok = int(ok.sum())
        self._count(identity, n_ok, len(traces) - n_ok)
        return {"status": "success", "model_key": identity.key, "model_version": loaded.meta.version,
                "quantiles": levels, "confidence_level": confidence_level, "queues": answers,
                "summary": {"queues": len(names), "total": len(traces), "success": n_ok, "failed": len(traces) - n_ok,
                            "duration_seconds": time.perf_counter() - t0}}

    def _table_queues(self, pattern: IdentityPattern, queues: dict[str, Sequence[dict[str, Any]]],
                      confidence_level: float, quantiles: Sequence[float] | None, shared_factor: bool,
                      lookup_table_name: str | None, deadline_ms: float | None = None,
                      completion_times: bool = False) -> dict[str, Any]:
        """:meth:`predict_queues` from a lookup table (the default one without a name): each
        queue as a batch of it answers, at the levels asked for or the table's first records'."""
        t0 = time.perf_counter()
        table = _answering_table(self.tables, lookup_table_name, shared_factor)
        levels = requested_levels(quantiles, table.levelset_lists[0] if table.levelset_lists else [])
        _check_queue_values(len(queues), len(levels))
        if completion_times:
            _check_completion_traces(queues, levels)
        answers: dict[str, Any] = {}
        n, n_ok = 0, 0
        record_levels: dict[int, float] | None = None
        if deadline_ms is not None:
            # Each record's probability searched once for all queues (a search a queue: 2,000
            # queues of one task took 1.5 s with a deadline, 0.12 without).
            try:
                record_levels = table.deadline_levels_of(pattern, [t for ts in queues.values() for t in ts],
                                                         float(deadline_ms))
            except PredictorError:
                pass  # (a queue's own lookup says what is wrong)
        for name, traces in queues.items():  # a loop over queues: each a batch of its own
            pred = table.predict(pattern, traces, confidence_level, levels or None, True, staleness=self._staleness,
                                 deadline_ms=deadline_ms, record_levels=record_levels, completion=completion_times)
            completion = None
            if completion_times:
                completion = [] if pred.completion is None else completion_answers(
                    pred.completion.readings, np.flatnonzero(pred.ok), len(pred.levels or ()), pred.completion)
            answers[name] = _queue_answer(pred.ok, pred.errors, pred.total, len(levels), deadline_ms,
                                          [{"index": i, "elapsed_level": r["elapsed_level"]}
                                           for i, r in enumerate(pred.items) if "elapsed_level" in r], completion)
            n, n_ok = n + len(traces), n_ok + int(pred.ok.sum())
        self.metrics.count_predictions(table_label(table.name), "lookup_table", n_ok, n - n_ok)
        return {"status": "success", "model_key": None, "model_version": None, "source": "lookup_table",
                "table": table.name, "quantiles": levels, "confidence_level": confidence_level, "queues": answers,
                "summary": {"queues": len(queues), "total": n, "success": n_ok, "failed": n - n_ok,
                            "duration_seconds": time.perf_counter() - t0}}

    def _count(self, identity: ModelIdentity, n_ok: int, n_failed: int) -> None:
        with self._count_lock:
            self.prediction_counts[identity] += n_ok
        self.metrics.count_predictions(identity.key, "model", n_ok, n_failed)

    # ------------------------------------------------------------------ lookup tables

    def generate_table(
        self,
        pattern: IdentityPattern,
        trace_file: Path,
        confidence_level: float = 0.95,
        table_name: str | None = None,
        fmt: str | None = None,
        progress: ProgressFn | None = None,
        source_name: str | None = None,
        out_path: Path | None = None,
        knots: int = KNOT_MOST,
    ) -> dict[str, Any]:
        """Predict every trace of ``trace_file`` with the latest model and write a lookup table.

        The table goes into the table directory under ``table_name`` (a file
        name; default: the model's directory name), or to ``out_path`` (CLI only). Each
        record also stores the model's quantiles at up to ``knots`` further levels.
        """
        if not 0.0 < confidence_level < 1.0:
            raise InvalidInput("confidence_level must lie strictly between 0 and 1", field="confidence_level")
        if isinstance(knots, bool) or not isinstance(knots, int) or not 0 <= knots <= KNOT_LIMIT:
            raise InvalidInput(f"knots must be a whole number from 0 to {KNOT_LIMIT}, got {shown(knots)}", field="knots")
        if table_name is not None and not table_name.strip():
            raise InvalidInput("table_name must be a non-empty file name (leave it out for the model's default name)",
                               field="table_name")
        if fmt is not None and fmt not in WRITABLE_FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(WRITABLE_FORMATS)}, got {shown(fmt)}", field="format")
        # A name given is checked before the model is looked up: its error does not depend on
        # which models the service holds, and no folder is made for a table refused.
        own_path = out_path is not None
        if not own_path and table_name is not None:
            out_path = self.tables.output_path(table_name)
        name_fmt = _written_format(out_path.name, fmt) if out_path is not None else None
        self.registry.maybe_refresh()
        identity = self.registry.resolve(pattern)
        loaded = self.registry.load(identity)
        if out_path is None:
            # A model type that starts with '.' must not make a hidden file (refused as a name).
            out_path = self.tables.output_path(f"{identity.dirname.lstrip('.')}.{fmt or 'json'}")
            name_fmt = _written_format(out_path.name, fmt)
        made: list[Path] = []  # the CLI's --output folders made here, the deepest first
        if own_path:
            parent = out_path.parent
            while not parent.exists() and parent != parent.parent:
                made.append(parent)
                parent = parent.parent
            out_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = generate_table(
                traces=iter_trace_file(trace_file, source_name),
                schema=loaded.meta.features,
                model=loaded.model,
                levels=loaded.meta.quantiles,
                model_info=identity.model_info(),
                model_version=loaded.meta.version,
                out_path=out_path,
                fmt=name_fmt,
                confidence_level=confidence_level,
                progress=progress,
                max_rows=self.settings.max_table_rows,
                knots=knots,
            )
        finally:
            if made and not out_path.exists():  # no table written (no trace predicted): no folder left for it
                for folder in made:
                    with contextlib.suppress(OSError):  # (something else put there meanwhile stays)
                        folder.rmdir()
        result["model_key"] = identity.key
        # Traces, counted as the other sources count them: not the repeat records added beside
        # first runs, and those that failed are errors, as a batch's are; through
        # count_predictions, so that a scrape knows this process counted under the model and
        # its series go with it however it goes (they stayed where another process deleted it
        # before a scrape here had seen it).
        self.metrics.count_predictions(identity.key, "table_generation", result["rows"] - result["repeats_added"],
                                       result["failed"])
        if not own_path:
            result["load_seconds"] = self._ready_to_serve(out_path.name)
        return result

    def _ready_to_serve(self, name: str) -> float | None:
        """Read a table just written as lookups will (its parsed columns kept in memory and
        in its sidecar): a million records take about 15 s to parse, which the first lookup
        paid otherwise, and which a scheduler's request may not wait for. The seconds it
        took; None if it could not be read (logged: lookups name the fault)."""
        t0 = time.perf_counter()
        try:
            self.tables.get(name, field="table_name")
        except (PredictorError, OSError) as exc:  # deleted meanwhile by another request, say
            log.warning("lookup table %s was written but could not be read back for serving: %s", name, exc)
            return None
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ discovery

    def data_dir_gone(self) -> DataDirectoryGone | None:
        """The error to answer while a folder of the data directory is gone, or None."""
        missing = self.settings.missing_dir()
        if missing is None:
            return None
        return DataDirectoryGone(f"the data directory's folder {missing} is gone (deleted, or its volume unmounted): "
                                 "the service cannot read or store models, tables or observations until it is back")

    def health(self) -> dict[str, Any]:
        gone = self.data_dir_gone()
        if gone is not None:  # a probe's 503: what it serves from memory would soon fail too
            raise gone
        self.registry.maybe_refresh()  # what other workers trained or deleted counts too
        identities = self.registry.identities()
        default_name, default_loaded, default_error = self.tables.default_state()
        return {
            "status": "healthy",
            "service": "predictor",
            "version": __version__,
            "mode": "lookup_table" if default_loaded else "default",
            "lookup_predictor_loaded": self.tables.loaded_count > 0,
            "lookup_table": default_name if default_loaded else None,
            **({"lookup_table_error": default_error} if default_error else {}),
            "models_registered": len(identities),
            "models_loaded": self.registry.loaded_count,
            "drifted_models": [i.key for i in identities if self.is_drifted(i)],
            "auto_retrain": self.retrainer.enabled,
        }

    def list_models(self) -> list[dict[str, Any]]:
        """The seed's per-(type, name) entries, each listing its concrete models."""
        self.registry.maybe_refresh()  # one stat() unless another process changed something
        grouped: dict[tuple[str, str], list[ModelIdentity]] = {}
        for identity in self.registry.identities():
            grouped.setdefault((identity.model_type, identity.model_name), []).append(identity)
        out = []
        shared = self.metrics.shared_prediction_counts()
        for (mtype, mname), listed in grouped.items():
            entries, identities = [], []
            for identity in listed:
                try:
                    entries.append(self.describe_model(identity, shared))
                except ModelNotFound:  # deleted since it was listed (another request, another worker)
                    continue
                identities.append(identity)
            if not entries:
                continue
            out.append({
                "model_type": mtype,
                "model_name": mname,
                "total_predictions": sum(e["total_predictions"] for e in entries),
                "hardware_types": sorted({i.hardware for i in identities}),
                # Joined as a key's parts are ('%' and '/' in a part percent-encoded): joined as
                # they are, software vllm/cuda at 0.4 and vllm at cuda/0.4 were one entry.
                "software_versions": sorted({join_key((i.software_name, i.software_version)) for i in identities}),
                # The contract gives each entry a boolean drifted: whether any of its models drifted.
                "drifted": any(e["drifted"] for e in entries),
                "samples": sum(e["samples"] or 0 for e in entries),
                "models": entries,
            })
        return out

    def describe_model(self, identity: ModelIdentity, shared: dict[str, int] | None = None) -> dict[str, Any]:
        """One model's entry of ``/models``; ``shared``: every worker's prediction counts, when
        several share the metric files (otherwise this process's own count)."""
        versions = self.registry.versions(identity)
        if not versions:  # deleted since it was resolved
            raise ModelNotFound(f"no model {identity.key}: it was deleted", field="identity")
        latest = versions[-1]
        return {
            "key": identity.key,
            **identity.as_dict(),
            "latest_version": latest.version,
            "versions": [v.version for v in versions],
            "total_predictions": self.prediction_counts[identity] if shared is None else shared.get(identity.key, 0),
            "samples": latest.data.get("rows_used"),
            "algorithm": latest.family,
            "features": latest.features.describe(),
            "quantiles": latest.quantiles,
            "created_at": latest.created_at,
            "metrics": _headline_metrics(latest.metrics),
            **({"first_run_split": split} if (split := first_run_split(latest.metrics)) else {}),
            "drifted": self.is_drifted(identity),
            "observations": self.monitor.report(identity, latest.version)["observations"],
        }

    def model_detail(self, pattern: IdentityPattern, version: int | None = None) -> dict[str, Any]:
        identity = self._resolve(pattern)
        if version is not None:
            return self.registry.get_version(identity, version).public_json(detail=True)
        detail = self.describe_model(identity, self.metrics.shared_prediction_counts())
        detail["version_details"] = [v.public_json() for v in self.registry.versions(identity)]
        return detail

    def delete_model(self, pattern: IdentityPattern, version: int | None = None) -> dict[str, Any]:
        if not pattern.is_complete():
            # Never a wildcard here; but a model an older service stored (before 2026-11-28) with
            # a part named '*' has no other name: that model, if stored, is deleted.
            starred = ModelIdentity(*(WILDCARD if part is None else part for part in pattern.as_tuple()))
            self.registry.maybe_refresh()
            if not self.registry.versions(starred):
                raise InvalidInput("deleting needs the full identity; '*' is not allowed here", field="identity")
            pattern = IdentityPattern(*starred.as_tuple())
        identity = self._resolve(pattern)
        deleted = self.registry.delete(identity, version)
        if version is None:
            left: OSError | None = None
            try:
                self.retrainer.decisions.delete(identity)  # first: the observations' delete takes their folder
                self.observations.delete(identity)
            except OSError as exc:  # a read-only observations folder, say: the versions are gone all the same
                left = exc
            self.monitor.forget(identity)
            self.retrainer.forget(identity)
            self._forget_counts(identity)
            if left is not None:
                # Said as the registry says a delete it could not finish (it was a 500 "internal
                # error: PermissionError", the versions deleted all the same).
                raise StorageError(f"model {identity.key} was deleted (versions {', '.join(map(str, deleted))}), but "
                                   f"not its observations and retraining decisions in {self.observations.root} "
                                   f"({left.strerror or type(left).__name__})") from left
        elif not self.registry.versions(identity):
            # Its last version: the model is gone, and so are its counts, as at its delete (a
            # model trained again after it started at 5 predictions, or at 0 where a scrape came between).
            self._forget_counts(identity)
        return {"status": "success", "model_key": identity.key, "deleted_versions": deleted}

    def _forget_counts(self, identity: ModelIdentity) -> None:
        """A deleted model's series in the metrics and its count of predictions in ``/models``."""
        self.metrics.forget_model(identity.key)
        self.metrics.zero_shared_counts(identity.key)
        with self._count_lock:
            self.prediction_counts.pop(identity, None)


    # ------------------------------------------------------------------ observations

    def _measured(self, identity: ModelIdentity, loaded: LoadedModel, traces: Sequence[dict[str, Any]]) -> Measured:
        """Traces with measured runtimes against what ``loaded`` predicts for them; an
        InvalidInput on ``traces`` where no trace is usable."""
        target = loaded.meta.target
        flat, errors = normalize_traces(traces)
        conflicts = identity_conflicts(flat, identity)  # measured on another model: not this one's evidence
        if conflicts is not None:
            errors = [e or c for e, c in zip(errors, conflicts)]
        X, feat_errors = loaded.meta.features.matrix(flat)
        y = _measured_runtimes(flat, target, errors)
        errors = [e or f for e, f in zip(errors, feat_errors)]
        rows = _usable_rows(errors)
        dist = loaded.model.predict_distribution(X[rows])
        flag = loaded.meta.features.regime_column
        return Measured(flat, y[rows], rows, errors, dist, dist.quantiles(list(MONITOR_LEVELS)),
                        X[rows, flag] if flag is not None else None)

    def observe(self, model: dict[str, str], traces: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Record measured runtimes; compare them with what the serving model predicts."""
        identity = ModelIdentity.from_parts(model)
        self.registry.maybe_refresh()
        try:
            loaded = self.registry.load(identity)
        except ModelNotFound as exc:
            raise ModelNotFound(exc.message, field="model", extra=exc.extra) from None
        measured = self._measured(identity, loaded, traces)
        version = loaded.meta.version
        self.monitor.record(identity, version, [measured.traces[i] for i in measured.rows], measured.y, measured.q,
                            *measured.dist.mean_std(), measured.first_run,
                            kinds_apart=first_run_split(loaded.meta.metrics) is not None)
        self.registry.maybe_refresh()
        stored = [v.version for v in self.registry.versions(identity)]
        if not stored:
            # Deleted (by another worker) while these were recorded: its observations go with
            # it, these too. (The delete removes the model before its observations, so one of
            # the two always sees the other.)
            self.observations.delete(identity)
            self.monitor.forget(identity)
            raise ModelNotFound(f"no model {identity.key}: it was deleted", field="model")
        # Versions deleted since (PREDICTOR_KEEP_VERSIONS, by any worker) leave their windows here.
        self.monitor.forget_deleted_versions(identity, stored)
        self.metrics.observations.labels(identity.key).inc(len(measured.rows))
        report = self.monitor.report(identity, version)
        self.metrics.set_accuracy(identity.key, version, report)
        scheduled = self.retrainer.maybe_schedule(identity, version)
        return {
            "status": "success",
            "model_key": identity.key,
            "model_version": version,
            "accepted": int(len(measured.rows)),
            "rejected": measured.rejected(),
            "drifted": report["drifted"],
            "retraining_scheduled": scheduled is not None,
        }

    def accuracy(self, pattern: IdentityPattern, version: int | None = None, recent: int = 200) -> dict[str, Any]:
        _check_recent(recent)
        identity = self._resolve(pattern)
        meta = self.registry.get_version(identity, version)
        serving = meta.version == self.registry.latest(identity).version
        return {"status": "success", **self._accuracy_of(identity, meta, recent, serving),
                "retraining": self.retrainer.decisions.read(identity, 5)}

    def accuracies(self, recent: int = 200) -> dict[str, Any]:
        """Every model's rolling accuracy (of its serving version), as ``accuracy`` answers it for
        one model less its retraining decisions, in one pass over what the service holds: the
        dashboard's one request for all its models (it made one a model). A model deleted
        meanwhile, or whose observations cannot be read, is left out (its own route says why)."""
        _check_recent(recent)
        self.registry.maybe_refresh()
        out = []
        for identity in self.registry.identities():
            try:
                out.append(self._accuracy_of(identity, self.registry.latest(identity), recent, serving=True))
            except ModelNotFound:  # deleted since it was listed
                continue
            except OSError as exc:  # one unreadable log must not fail every model's
                log.warning("accuracy of %s not listed: %s", identity.key, exc)
                continue
        return {"status": "success", "models": out}

    def _accuracy_of(self, identity: ModelIdentity, meta: ModelVersion, recent: int, serving: bool) -> dict[str, Any]:
        """One version's accuracy as ``accuracy`` answers it, less its status and retraining
        decisions; the gauges describe the serving version (``serving``)."""
        report, window = self.monitor.report_and_recent(identity, meta.version, recent)
        if serving:
            self.metrics.set_accuracy(identity.key, meta.version, report)
        return {"model_key": identity.key, "version": meta.version, **report,
                "heldout_at_training": _headline_metrics(meta.metrics), "recent": window}

    def evaluate(self, pattern: IdentityPattern, traces: Sequence[dict[str, Any]], version: int | None = None,
                 lookup_table: bool = False, lookup_table_name: str | None = None) -> dict[str, Any]:
        """How well a model version (the serving one unless ``version``), or a lookup table
        (``lookup_table``: the default table, or ``lookup_table_name``), predicts traces with
        measured runtimes, recording nothing: the accuracy ``/observe`` would track for them,
        each level's coverage tested at once (:func:`~.monitoring.calibration_test`), beside
        the version's held-out accuracy at training. For a trace set the model never saw (a
        new instance, hardware or software version) before it serves it."""
        if lookup_table:
            return evaluate_table(self.tables, lookup_table_name, pattern, traces)
        # A '*' the traces' identity fields settle, as in a prediction.
        identity = self._resolve(self.resolve_for(pattern, traces))
        loaded = self.registry.load(identity, version)
        measured = self._measured(identity, loaded, traces)
        mean, std = measured.dist.mean_std()
        return _evaluation({"model_key": identity.key, "version": loaded.meta.version}, measured.errors, measured.y,
                           measured.q, mean, std, measured.first_run, _headline_metrics(loaded.meta.metrics))

    def is_drifted(self, identity: ModelIdentity) -> bool:
        try:
            serving = self.registry.latest(identity).version
        except ModelNotFound:  # deleted meanwhile
            return False
        return bool(self.monitor.report(identity, serving)["drifted"])

    def retrain(self, pattern: IdentityPattern) -> dict[str, Any]:
        identity = self._resolve(pattern)
        return self.retrainer.retrain(identity, reason="requested")

    def cache_stats(self) -> dict[str, Any]:
        return {"status": "success", **self.cache.stats()}

    def clear_cache(self) -> dict[str, Any]:
        return {"status": "success", "cleared": self.cache.clear()}

    def render_metrics(self) -> tuple[bytes, str]:
        self.registry.maybe_refresh()
        self._report_loaded()
        self.metrics.models_registered.set(len(self.registry.identities()))
        self._sync_accuracy_gauges()
        return self.metrics.render()

    def _sync_accuracy_gauges(self) -> None:
        """Accuracy gauges describe each model's serving version from the shared observation log.

        Every registered model is looked at, not only those this process saw observed:
        after a restart, or in a worker that another one's observations bypassed, the
        gauges (``predictor_model_drifted`` above all) would otherwise be missing.
        Reports are cached while nothing new was observed, so a scrape mostly stats files.
        """
        described = self.metrics.accuracy_versions()
        live: set[str] = set()
        registered = self.registry.identities()
        # A model deleted through another worker: what this one keeps of it in memory (each
        # version's window of observations, the retrainer's lock and decisions) goes here,
        # as its series do below; the deleting worker let go of its own at the delete.
        for identity in {*self.monitor.followed(), *self.retrainer.kept()} - set(registered):
            self.monitor.forget(identity)
            self.retrainer.forget(identity)
        for identity in registered:
            try:
                serving = self.registry.latest(identity).version
            except ModelNotFound:  # deleted meanwhile
                continue
            live.add(identity.key)
            # A worker that serves no /observe still reads the others' observations: the windows
            # of versions deleted since go here.
            self.monitor.forget_deleted_versions(identity, [v.version for v in self.registry.versions(identity)])
            try:
                report = self.monitor.report(identity, serving)
            except OSError as exc:  # one unreadable log must not fail the whole scrape
                log.warning("accuracy of %s not reported: %s", identity.key, exc)
                continue
            # Every model is described, one without observations as not drifted (a new version's
            # figures, none yet, replace its predecessor's): the same in every process, before a
            # restart and after (a model never observed had the gauge only where it was trained).
            self.metrics.set_accuracy(identity.key, serving, report)
        # Lookup tables count predictions under "table:<name>": a deleted one's series go too.
        try:
            live |= {table_label(name) for name in self.tables.served_names()}
        except OSError as exc:  # an unlistable tables folder: its series stay, and the scrape answers
            log.warning("lookup tables not listed for the metrics: %s", exc)
            live |= {label for label in self.metrics.counted_labels() if label.startswith(TABLE_LABEL)}
        # Models (and tables) deleted by any process: their series go here too (counters included).
        for key in (described.keys() | self.metrics.counted_labels()) - live:
            self.metrics.forget_model(key)
        with self._count_lock:
            for identity in [i for i in self.prediction_counts if i.key not in live]:
                del self.prediction_counts[identity]
        self.metrics.set_live_models(live)


def _measured_runtimes(flat: Sequence[dict[str, Any]], target: str, errors: list[str | None]) -> np.ndarray:
    """Each trace's measured runtime under ``target`` (NaN where it has none), the error of
    each that has none, or no usable one, set in ``errors`` where it holds none yet."""
    y = np.full(len(flat), np.nan)
    for i, t in enumerate(flat):
        v = t.get(target)
        number = number_in_text(v) if isinstance(v, str) else v  # "12.5" is a number, as in training
        if is_runtime(number):
            y[i] = number
        elif errors[i] is None:
            errors[i] = (f"'{target}' must be a number in {RUNTIME_RANGE}" if v is not None
                         else f"missing measured '{target}'" + (
                             f" (the model was trained on the target '{target}': a '{DEFAULT_TARGET}' is not "
                             "read as it, its unit may differ)" if target != DEFAULT_TARGET and DEFAULT_TARGET in t
                             else ""))
    return y


def _usable_rows(errors: list[str | None]) -> np.ndarray:
    """The places of the traces without an error; an InvalidInput on ``traces`` where there is none."""
    rows = np.flatnonzero([e is None for e in errors])
    if len(rows) == 0:
        more = f"; and {len(errors) - 5:,} more" if len(errors) > 5 else ""
        raise InvalidInput("no usable observation: " + "; ".join(
            f"traces[{i}]: {e}" for i, e in enumerate(errors[:5])) + more, field="traces")
    return rows


def _headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("pinball_loss", "relative_pinball_loss", "mean_abs_coverage_error", "interval_coverage", "median_mape",
            "expect_ratio", "error_ratio", "rows_used", "rows_dropped")
    return {k: metrics[k] for k in keys if k in metrics}


def _check_recent(recent: int) -> None:
    """How many recent observations an accuracy answer may list: a number past the window is
    a mistake to name, not to cap."""
    if not 0 <= recent <= MAX_RECENT:
        raise InvalidInput(f"recent must be between 0 and {MAX_RECENT:,}, got {recent}", field="recent")


def _total_answer(total: TotalDistribution, levels: list[float], confidence_level: float,
                  deadline_ms: float | None = None) -> dict[str, Any]:
    """A batch's (a queue's) total as its answer gives it: its quantiles and central interval
    read off in one evaluation (each evaluation bounds the total by its tasks' quantiles), and
    with ``deadline_ms`` the probability that it is within that."""
    return _reading_answer(TotalReading.of(total, [*levels, *interval_levels(confidence_level)], deadline_ms),
                           len(levels), deadline_ms)


def _reading_answer(read: TotalReading, n_levels: int, deadline_ms: float | None = None) -> dict[str, Any]:
    """:func:`_total_answer` of a total already read (at the answer's ``n_levels`` levels and
    its interval's two, and at ``deadline_ms`` where given)."""
    both = read.quantiles.tolist()
    out = {"expect": read.mean, "error": read.std, "total_quantiles": both[:n_levels],
           "total_interval": both[n_levels:]}
    if deadline_ms is not None:
        out[DEADLINE_KEY] = read.deadline_probability
    return out


_TABLE_SHARED_FACTOR = ("shared_factor needs a model: a lookup table's records hold each task's own distribution, "
                        "not the model's shared factor")


def _queue_answer(ok: np.ndarray, errors: Sequence[str | None], total: dict[str, Any] | None,
                  n_levels: int, deadline_ms: float | None = None,
                  running: list[dict[str, Any]] | None = None,
                  completion: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One queue's part of :meth:`PredictorService.predict_queues`: its tasks predicted
    (``ok``), the others' ``errors`` by their place in it, its ``total`` (None where no
    task was predicted: an empty queue's is 0, another's unknown), its ``running``
    tasks' places and levels reached, and, where asked, its tasks' ``completion``."""
    failed = [{"index": i, "message": errors[i]} for i in np.flatnonzero(~ok).tolist()]
    fields = total_fields(total, len(ok), n_levels, deadline_ms)  # (a table's total says its method too: not here)
    out = {"tasks": int(ok.sum()), "failed": len(failed), "errors": failed, "running": running or [],
           **{k: fields[k] for k in total_keys(deadline_ms)}}
    if completion is not None:
        out["completion"] = completion
    return out


def completion_answers(readings: Sequence[TotalReading], places: np.ndarray, n_levels: int,
                       table: TableCompletion | None = None) -> list[dict[str, Any]]:
    """When each task of a queue is done: ``readings`` of the totals of the queue's first 1,
    2, ... tasks predicted (``TaskDistributions.prefix_totals``) at the answer's ``n_levels``
    levels and its interval's two, each named by its task's place in the queue (``places``).

    A task is never done before the one ahead of it, so no quantile of a task's completion
    is above the next task's, nor its probability of being done by a deadline below it:
    the totals are found on grids of their own, whose rounding may differ (by up to 1.3% on
    the example models: README, "Completion times"), and with the shared factor the first,
    a task alone, is left without it; each answer is brought to the next one's where it is
    past it (the last, the queue's own total, as it is). From a lookup ``table``, its bounds are put on each total
    first, and the means and standard deviations are its records' (as its queue total's)."""
    both = np.array([r.quantiles for r in readings]).reshape(len(readings), -1)
    if table is not None:
        both = np.maximum(both, np.concatenate(table.bounds, axis=1))
        moments = zip(table.expect.tolist(), table.error.tolist())
    else:
        moments = ((r.mean, r.std) for r in readings)
    both = np.minimum.accumulate(both[::-1], axis=0)[::-1]
    out = [{"index": place, "expect": mean, "error": sd, "quantiles": row[:n_levels], "interval": row[n_levels:]}
           for place, (mean, sd), row in zip(places.tolist(), moments, both.tolist())]
    if readings and readings[0].deadline_probability is not None:
        reached = np.array([r.deadline_probability for r in readings], dtype=np.float64)
        if table is not None and table.deadline_bound is not None:
            reached = np.minimum(reached, table.deadline_bound)
        for item, p in zip(out, np.maximum.accumulate(reached[::-1])[::-1].tolist()):
            item[COMPLETION_DEADLINE_KEY] = p
    return out


# With completion times, the most traces in all of a request's queues: each task's completion is
# a total of its own (a queue of 1,000 tasks took 0.40 to 0.69 s: benchmarks/queue_totals.py
# --completion; one of 10,000 of the H100 vision model 3.9 s, peaking 396 MB, 21 s with the
# shared factor: README).
MAX_COMPLETION_TRACES = 10_000


def _check_completion_traces(queues: dict[str, Sequence[Any]], levels: Sequence[float] | None) -> None:
    """Whether ``queues`` are few enough tasks for their completion times, at ``levels``
    (None: not known yet): a 422 naming ``queues`` where they are not."""
    n = sum(map(len, queues.values()))
    if n > MAX_COMPLETION_TRACES:
        raise InvalidInput(f"completion_times answers at most {MAX_COMPLETION_TRACES:,} traces in all, got {n:,}; "
                           "send fewer traces per request (fewer queues, or shorter ones)", field="queues")
    problem = batch_values_problem(n, len(levels), "traces", per="request") if levels else None
    if problem:
        raise InvalidInput(problem, field="queues")


def _running_by_queue(reached: dict[int, float] | None, predicted: np.ndarray, starts: list[int],
                      ends: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The running tasks of each queue (by the queue's number), each by its place in its queue
    with the level of its runtime distribution that its time run has reached (``reached``, by
    place among the tasks ``predicted``, the traces' places in all the queues' traces)."""
    out: dict[int, list[dict[str, Any]]] = {}
    if not reached:
        return out
    # (A loop over the running tasks alone: an instance runs one task, or a few.)
    places = np.fromiter(reached, dtype=np.int64, count=len(reached))
    traces = predicted[places]
    queues = np.searchsorted(np.asarray(ends), traces, side="right")
    for place, trace, k in zip(places.tolist(), traces.tolist(), queues.tolist()):
        out.setdefault(k, []).append({"index": trace - starts[k], "elapsed_level": reached[place]})
    return out


def requested_levels(quantiles: Sequence[float] | None, default: Sequence[float]) -> list[float]:
    """The levels a prediction answers: those asked for, in ascending order, else ``default``'s."""
    return sorted(map(float, quantiles)) if quantiles else list(default)


def _check_queue_values(n_queues: int, n_levels: int) -> None:
    """As :func:`_check_batch_values`, of several queues' totals (a value per queue and level)."""
    problem = batch_values_problem(n_queues, n_levels, "queues")
    if problem:
        raise InvalidInput(problem, field="queues")


def _answering_table(tables: LookupTableStore, name: str | None, shared_factor: bool) -> LookupTable:
    """The table ``name`` of ``tables`` (the default one without a name) that is to answer;
    a 422 where the factor only a model has is asked for beside it."""
    if shared_factor:
        raise InvalidInput(_TABLE_SHARED_FACTOR, field="shared_factor")
    return tables.get(name)


def predict_from_table(tables: LookupTableStore, name: str | None, pattern: IdentityPattern,
                       traces: Sequence[Any], confidence_level: float = 0.95,
                       quantiles: Sequence[float] | None = None, with_total: bool = False,
                       shared_factor: bool = False,
                       staleness: Callable[[tuple[str | None, ...], int], bool | None] | None = None,
                       deadline_ms: float | None = None) -> TablePrediction:
    """:meth:`PredictorService.predict` from the lookup table ``name`` of ``tables`` (the
    default one without a name): the service's, or the CLI's of a data directory that
    holds tables and no model (the seed's tables need none)."""
    table = _answering_table(tables, name, shared_factor)
    if with_total and not quantiles:  # answered at the table's levels
        _check_batch_values(len(traces), max((len(ls) for ls in table.levelsets), default=0))
    return table.predict(pattern, traces, confidence_level, quantiles, with_total, staleness=staleness,
                         deadline_ms=deadline_ms)


def evaluate_table(tables: LookupTableStore, name: str | None, pattern: IdentityPattern,
                   traces: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:meth:`PredictorService.evaluate` of the lookup table ``name`` of ``tables`` (the default
    one without a name): each trace's answer from the table scored against its measured
    runtime, under ``runtime_ms`` (a table knows no model's target). The service's, or the
    CLI's of a data directory that holds tables and no model.

    A running trace's ``elapsed_ms`` is not read (unless the table holds it as a feature): its
    measured runtime is the whole run's, scored against the record's whole distribution, as a
    model's evaluation scores it. Read, the table answered the time left and the runtimes fell
    above nearly every level (a coverage of 0.003 at 0.5 where the model's was 0.49).
    """
    table = _answering_table(tables, name, False)
    asked = traces if ELAPSED_KEY in table.feature_names else _whole_runs(traces)
    # Each trace's record, and the records' quantiles read as a prediction reads them
    # (:meth:`LookupTable.predict`'s), as arrays: a prediction's answer of a dict a trace, its
    # values in lists, made and read back, took most of 0.9 s of 100,000 traces.
    found = table.lookup(asked, pattern)
    flat, errors = normalize_traces(traces)
    errors = [e or (None if row >= 0 else found.errors[i] or "no answer from the table")
              for i, (e, row) in enumerate(zip(errors, found.rows.tolist()))]
    y = _measured_runtimes(flat, DEFAULT_TARGET, errors)
    rows = _usable_rows(errors)
    records = found.rows[rows].astype(np.int64)
    q = table._quantiles_at(records, np.asarray(MONITOR_LEVELS, dtype=np.float64))
    mean = np.asarray(table.expect[records], dtype=np.float64)
    std = np.asarray(table.error[records], dtype=np.float64)
    return _evaluation({"model_key": None, "version": None, "source": "lookup_table", "table": table.name},
                       errors, y[rows], q, mean, std, None, {})


def _evaluation(scored: dict[str, Any], errors: list[str | None], y: np.ndarray, q: np.ndarray, mean: np.ndarray,
                std: np.ndarray, first_run: np.ndarray | None, heldout: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's answer, of a model version or a lookup table (``scored`` says which):
    the usable traces' runtimes ``y`` against their quantiles at MONITOR_LEVELS ``q`` and
    moments, each trace's error (None: scored), and ``heldout``, the figures to compare with."""
    flags = first_run if first_run is not None else np.full(len(y), np.nan)
    return {
        "status": "success",
        **scored,
        "evaluated": int(len(y)),
        "rejected": _rejected(errors),
        "levels": list(MONITOR_LEVELS),
        **accuracy_of(y, q, mean, std, flags),
        "calibration": calibration_test(y, q),
        "heldout_at_training": heldout,
    }


def _rejected(errors: list[str | None]) -> list[dict[str, Any]]:
    """The traces not used, each by its place and why."""
    return [{"index": i, "message": e} for i, e in enumerate(errors) if e is not None]


def _whole_runs(traces: Sequence[Any]) -> Sequence[Any]:
    """``traces`` without their ``elapsed_ms`` (a field of theirs, or an ``input_feature``
    item of SwarmPilot's structured form): each as a task not yet started. The traces
    themselves where none states one."""
    def stated(t: Any) -> bool:
        return isinstance(t, dict) and (ELAPSED_KEY in t or "input_feature" in t)

    if not any(map(stated, traces)):
        return traces
    out = []
    for t in traces:
        if stated(t):
            t = {k: v for k, v in t.items() if k != ELAPSED_KEY}
            items = t.get("input_feature")
            if isinstance(items, list):
                t["input_feature"] = [item for item in items
                                      if not (isinstance(item, dict) and item.get("param_name") == ELAPSED_KEY)]
        out.append(t)
    return out


def _check_batch_values(n_traces: int, n_levels: int) -> None:
    problem = batch_values_problem(n_traces, n_levels)
    if problem:
        raise InvalidInput(problem, field="trace")
