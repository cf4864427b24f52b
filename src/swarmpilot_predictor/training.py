"""Training: traces in, new model versions in the registry out.

:class:`Trainer` is plain Python, used in-process by the CLI and by
:class:`TrainingJobs`, which runs it in a separate worker process so that training never
holds the serving process's interpreter, nor (at PREDICTOR_TRAINING_PRIORITY's default,
idle) the CPU that predictions want.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .atomic import atomic_write_bytes, read_regular
from .errors import DataDirectoryGone, InvalidInput, NotFound, PredictorError, ServiceStopping, TooBusy, shown, storage_error
from .features import DataReport, FeatureSchema, row_counters
from .identity import BOOLEAN_PART_NAMES, IDENTITY_KEYS, ModelIdentity, identity_part_problem
from .modeling import (QuantileModel, check_params, lightgbm_errors, lightgbm_message, params_not_used,
                       per_feature_param_problem)
from . import request_ids
from .processes import started, still_running
from .registry import MODEL_DIGEST, ModelRegistry, ModelVersion
from .settings import JOBS_FOLDER, LogFormat
from .schemas import TrainConfig, TrainRequest, check_envelope, parse_json_body
from .traces import RUNTIME_RANGE, TRACE_FILE_KINDS, TraceError, TraceTable, dumps_json, trace_file_format
from .workers import (DEFAULT_PRIORITY, START_ALLOWANCE_S, CouldNotStart, Failed, Finished, NotStarted, Outcome, ShutDown,
                      StoppedForAnother, Submitted, TimedOut, WorkerDied, WorkerExecutor, WorkerPool, server_gone,
                      stopped_for_time)

log = logging.getLogger(__name__)
ProgressFn = Callable[[int], None]


def safe_child(root: Path, name: str, what: str = "path") -> Path:
    """``root / name`` if it stays inside ``root``; otherwise an InvalidInput error.

    Requests name files inside the data directory; absolute paths, ``..`` and
    symlinks that lead outside are refused before anything is opened.
    """
    if not name:
        raise InvalidInput(f"{what} must be a non-empty file name", field=what)
    if "\x00" in name:
        raise InvalidInput(f"{what} {shown(name)} holds a NUL character, which no file name can", field=what)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from YAML, say): no file can have this name
        raise InvalidInput(f"{what} {ascii(name)} is not valid Unicode", field=what) from None
    candidate = Path(name)
    if any(len(os.fsencode(part)) > 255 for part in candidate.parts):  # the file system's limit (ENAMETOOLONG)
        raise InvalidInput(f"{what} has a path component longer than 255 bytes", field=what)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise InvalidInput(f"{what} {shown(name)} must be relative to the data directory, without '..'", field=what)
    root_resolved = root.resolve()
    try:
        resolved = (root_resolved / candidate).resolve()
    except (RuntimeError, OSError) as exc:  # a loop of symbolic links (RuntimeError before Python 3.13): a 500 it was
        why = (exc.strerror if isinstance(exc, OSError) and exc.errno != errno.ELOOP and exc.strerror
               else "a loop of symbolic links in the data directory")
        raise InvalidInput(f"{what} {shown(name)} cannot be resolved: {why}", field=what) from None
    if not resolved.is_relative_to(root_resolved):
        raise InvalidInput(f"{what} {shown(name)} leads outside the data directory", field=what)
    return resolved


def _uploaded_names(uploads: dict[str, Path] | None) -> str:
    """What a request uploaded, for a message saying a file it names is not among them:
    each file by its name, which ``traces`` must give (a config written for the CLI names
    a path, "data/traces.jsonl", where the upload's name is "traces.jsonl")."""
    if not uploads:
        return ""
    first: dict[Path, str] = {}
    for name, path in uploads.items():  # a file under its first key, its own name (its part's may follow)
        first.setdefault(path, name)
    names = list(first.values())
    shown_names = ", ".join(shown(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f" (the upload holds {shown_names}: name one of them by its file name)"


class Trainer:
    def __init__(self, data_dir: Path, registry: ModelRegistry):
        self.data_dir = Path(data_dir)
        self.registry = registry

    def read_traces(
        self,
        source: list[dict[str, Any]] | str,
        uploads: dict[str, Path] | None = None,
        progress: ProgressFn | None = None,
    ) -> TraceTable:
        """Traces given inline, as an uploaded file's name, or as a data-directory path."""
        try:
            if isinstance(source, list):
                return TraceTable.from_traces(source, progress=progress)
            if uploads and source in uploads:
                # Messages name the client's file, not the server's temporary one: the upload's
                # file name is its first key (the form field's name may follow).
                path = uploads[source]
                name = next((k for k, p in uploads.items() if p == path), source)
                return TraceTable.from_file(path, progress=progress, source=name)
            path = safe_child(self.data_dir, source, "traces")
            try:
                found = path.is_file()
                folder = not found and path.is_dir()
            except OSError as exc:  # a path too long as a whole, say: is_file only swallows "not there"
                raise InvalidInput(f"traces file {shown(source)} cannot be opened ({exc.strerror})", field="traces") from None
            if folder:
                # (it was said "not found", which it is not)
                raise InvalidInput(f"traces {shown(source)} is a folder of the data directory, not a trace file: "
                                   f"name a file ({TRACE_FILE_KINDS})" + _uploaded_names(uploads), field="traces")
            if not found:
                raise InvalidInput(f"traces file {shown(source)} not found in the data directory "
                                   + ("or the upload" + _uploaded_names(uploads) if uploads else "(no file was uploaded)"),
                                   field="traces")
            if trace_file_format(path.name) is None:
                raise InvalidInput(f"traces file {shown(source)} must be {TRACE_FILE_KINDS}", field="traces")
            return TraceTable.from_file(path, progress=progress)
        except TraceError as exc:
            raise InvalidInput(str(exc), field="traces") from None
        except OSError as exc:  # a file the service may not read (permissions), or one gone meanwhile
            raise InvalidInput(f"traces file {shown(source if isinstance(source, str) else 'traces')} cannot be read "
                               f"({exc.strerror or exc})", field="traces") from None

    def train(self, config: TrainConfig, uploads: dict[str, Path] | None = None,
              progress: ProgressFn | None = None,
              before_commit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Read the traces, train one model (or one per group), store each as a new version.

        ``before_commit`` is called before each version becomes visible, with that version's
        entry of the result plus what makes the result of the versions so far (``of``: how
        many the training stores; ``group_by``, ``rows_in_no_group``, ``duration_seconds``;
        see :func:`train_result`): a job's worker records it, so that versions stored by a
        process killed before it could report are known (:meth:`TrainingJobs._cut_short`).
        """
        t0 = time.perf_counter()
        try:
            check_params(config.params, config.algorithm)  # before a large trace file is read
        except ValueError as exc:
            raise InvalidInput(f"params: {exc}", field="params") from None
        table = self.read_traces(config.traces, uploads, progress)
        if len(table) == 0:
            raise InvalidInput(f"traces file {shown(config.traces)} holds no traces" if isinstance(config.traces, str)
                               else "no traces given (traces is an empty list)", field="traces")
        groups, ungrouped = self._split_groups(table, config)
        counters = row_counters(table) if config.features is None else frozenset()
        # Every group is fitted before any is stored: one that cannot be (too few rows, say)
        # is a 422 that leaves no other group's new version behind, which a retry would repeat.
        # And every group's rows are read before any is fitted: such a group is found in
        # milliseconds, not after the fits of the groups before it (17 s for 30 groups).
        prepared = []
        for identity, part in groups:
            part, foreign = self._own_rows(identity, part, config.group_by or ())
            prepared.append(self._prepare_one(identity, part, config, foreign, counters))
        fitted = [self._fit_one(config, *one) for one in prepared]
        trained: list[ModelVersion] = []

        def committing(meta: ModelVersion) -> None:
            if before_commit is not None:
                # (when it was made and its model's digest: see TrainingJobs._cut_short)
                before_commit({**_entry(meta), "of": len(fitted), "group_by": bool(config.group_by),
                               "rows_in_no_group": ungrouped, "duration_seconds": time.perf_counter() - t0,
                               "created_at": meta.created_at, "model_sha256": meta.extra.get(MODEL_DIGEST)})

        try:
            for meta, model, data in fitted:
                trained.append(self.registry.save(meta, model, training_data=data, before_commit=committing))
        except BaseException:
            # A group that cannot be stored (a full disk, say) takes back the ones stored before
            # it: the error says nothing was stored, and a retry would store them again.
            for stored in trained:
                try:
                    self.registry.delete(stored.identity, stored.version)
                except Exception as exc:  # noqa: BLE001 - the first error is the one to answer
                    log.error("cannot take back %s version %d after a failed group: %s", stored.key, stored.version, exc)
            raise
        return train_result([_entry(m) for m in trained], bool(config.group_by), ungrouped, time.perf_counter() - t0)

    def _split_groups(self, table: TraceTable, config: TrainConfig) -> tuple[list[tuple[ModelIdentity, TraceTable]], int]:
        """One model's rows per group (all rows without ``group_by``), and how many rows
        belong to no group (a group_by key missing)."""
        base = config.model.model_dump() if config.model else {}
        if not config.group_by:
            return [(ModelIdentity.from_parts(base), table)], 0
        missing = [k for k in config.group_by if k not in table.columns]
        if missing:
            raise InvalidInput(f"group_by key(s) not found in the traces: {', '.join(missing)}", field="group_by")
        unset = [k for k in IDENTITY_KEYS if k not in config.group_by and not base.get(k)]
        if unset:
            raise InvalidInput(
                f"identity part(s) {', '.join(unset)} are neither in group_by nor in model", field="group_by"
            )
        keys = np.stack([table.strings(k) for k in config.group_by], axis=1)
        members: dict[tuple[str, ...], list[int]] = {}
        for i, row in enumerate(keys.tolist()):
            if None not in row:  # a trace without every group_by key belongs to no group
                members.setdefault(tuple(row), []).append(i)
        groups = []
        for values in sorted(members):
            rows = np.asarray(members[values], dtype=np.int64)
            for key, value in zip(config.group_by, values):
                problem = identity_part_problem(value)
                if problem is not None:
                    raise InvalidInput(f"traces: item {int(rows[0])} has {key} {shown(value)}: {problem}", field="traces")
            parts = dict(base)
            parts.update(zip(config.group_by, values))
            groups.append((ModelIdentity.from_parts(parts), table.take(rows)))
        if not groups:
            raise InvalidInput("no trace carries every group_by key", field="group_by")
        return groups, len(table) - sum(len(m) for m in members.values())

    @staticmethod
    def _own_rows(identity: ModelIdentity, table: TraceTable,
                  group_by: Sequence[str]) -> tuple[TraceTable, dict[str, int]]:
        """The rows that belong to ``identity``, and how many state another value of each identity key.

        A trace's identity fields say which model it belongs to: one naming other hardware
        (say) is another model's, whatever the config's ``model`` says.
        """
        own = np.ones(len(table), dtype=bool)
        foreign: dict[str, int] = {}
        for key in IDENTITY_KEYS:
            if key in group_by or key not in table.columns:
                continue
            part = getattr(identity, key)
            text = table.strings(key)  # numbers written out, None where not stated
            number = table.numeric(key)  # NaN where not a number
            try:
                part_number = float(part)
            except ValueError:
                part_number = math.nan
            # A number names the part if it is the same number (a version 2.4 in a trace, "2.4" in the
            # model); true and false name "true" or "1", "false" or "0" (see identity.names_part).
            same = np.where(np.isfinite(number), number == part_number, text == part)
            booleans = table.columns[key].boolean_rows()
            if booleans.any():
                same[booleans] = [part.lower() in BOOLEAN_PART_NAMES[v == 1.0] for v in number[booleans].tolist()]
            off = np.not_equal(text, None) & ~same
            if off.any():
                foreign[key] = int((off & own).sum())
                own &= ~off
        if not own.any():
            key = next(iter(foreign))
            raise InvalidInput(f"no trace belongs to {identity.key}: each states another {key} "
                               f"(use group_by to train one model per {key})", field="traces")
        return (table if own.all() else table.take(np.flatnonzero(own))), foreign

    def _prepare_one(self, identity: ModelIdentity, table: TraceTable, config: TrainConfig,
                     foreign: dict[str, int] | None = None, counters: frozenset[str] = frozenset(),
                     ) -> tuple[ModelIdentity, FeatureSchema, np.ndarray, np.ndarray, DataReport]:
        """One model's training rows read from ``table`` and checked, for :meth:`_fit_one`."""
        try:
            schema, X, y, report = FeatureSchema.prepare_training(table, config.target, config.features,
                                                                  first_of_shape=config.first_of_shape,
                                                                  row_counters=counters)
        except TraceError as exc:
            raise InvalidInput(f"{identity.key}: {exc}", field=exc.field or "traces") from None
        for key, n in (foreign or {}).items():
            report.rows_total += n
            report.drop_rows(f"{key} names another model", n)
        if len(y) < 2:
            raise InvalidInput(
                f"{identity.key}: only {len(y)} usable trace(s) with a '{config.target}' in {RUNTIME_RANGE}; "
                "at least 2 are needed",
                field="traces",
            )
        if config.algorithm == "lightgbm" and not schema.kinds:
            dropped = "; ".join(f"{name}: {why}" for name, why in report.columns_dropped.items())
            raise InvalidInput(f"{identity.key}: algorithm 'lightgbm' needs a feature, and none of the traces' "
                               f"columns can be one{f' ({dropped})' if dropped else ''}; 'auto' or 'empirical' "
                               "model the runtimes alone", field="algorithm")
        if (problem := per_feature_param_problem(config.params, schema.column_names, schema.kinds)) is not None:
            raise InvalidInput(f"{identity.key}: params: {problem[1]}", field=f"params.{problem[0]}")
        return identity, schema, X, y, report

    def _fit_one(self, config: TrainConfig, identity: ModelIdentity, schema: FeatureSchema, X: np.ndarray,
                 y: np.ndarray, report: DataReport) -> tuple[ModelVersion, QuantileModel, tuple[np.ndarray, np.ndarray]]:
        """One model fitted on rows :meth:`_prepare_one` read: its metadata, the model and its
        training rows, to store."""
        t0 = time.perf_counter()
        try:
            model = QuantileModel(schema.kinds, schema.n_categories, config.algorithm, params=config.params,
                                  regime_column=schema.regime_column).fit(X, y)
        except (TypeError, ValueError, *lightgbm_errors()) as exc:
            said = lightgbm_message(exc) if isinstance(exc, lightgbm_errors()) else str(exc)
            raise InvalidInput(f"{identity.key}: training failed: {said}", field="params") from None
        metrics = {
            **model.cv_summary(),
            "columns": schema.column_names,
            "rows_used": report.rows_used,
            "rows_dropped": sum(report.rows_dropped.values()),
            "data": report.to_json(),
            "training_seconds": time.perf_counter() - t0,
        }
        if unseen := model.unseen_categories():
            metrics["unseen_categories"] = {schema.column_names[j]: v for j, v in unseen.items()}
        if model.algorithm == "auto" and (unused := params_not_used(config.params, set(model.cv_), len(y))):
            metrics["params_not_used"] = unused
        digest = hashlib.sha256()
        digest.update(",".join(schema.column_names).encode())
        digest.update(np.ascontiguousarray(X).tobytes())
        digest.update(np.ascontiguousarray(y).tobytes())
        meta = ModelVersion(
            identity=identity,
            version=0,
            created_at=time.time(),
            target=config.target,
            features=schema,
            quantiles=list(config.quantiles),
            algorithm=config.algorithm,
            family=model.family_,
            params=dict(config.params),
            data=report.to_json(),
            metrics=metrics,
            data_hash=digest.hexdigest(),
        )
        return meta, model, (X, y)


_ENTRY_KEYS = ("model_key", "version", "identity", "metrics")


def _entry(m: ModelVersion) -> dict[str, Any]:
    return dict(zip(_ENTRY_KEYS, (m.key, m.version, m.identity.as_dict(), m.metrics)))


def train_result(entries: list[dict[str, Any]], group_by: bool, ungrouped: int, duration: float) -> dict[str, Any]:
    """A training's answer from its stored versions' entries (:func:`_entry`): the first
    version, and with ``group_by`` every model's."""
    result: dict[str, Any] = {"status": "success", **entries[0], "duration_seconds": duration}
    if len(entries) > 1 or group_by:
        result["models"] = entries
        # Traces without every group_by key belong to no model: counted, not lost unsaid.
        result["rows_in_no_group"] = ungrouped
    return result


def _log_as_the_service(level: int, log_format: LogFormat) -> None:
    """In the worker process: write this package's log lines to stderr as the service writes its
    (:func:`.logs.stderr_handler`), at the service's ``level``, in its ``log_format``. Without a
    handler Python wrote warnings alone, bare: "cannot write the registry's change log ...", no
    level, no request."""
    from .logs import stderr_handler

    package = logging.getLogger(__package__)
    if not package.handlers:
        package.addHandler(stderr_handler(log_format))
        package.propagate = False
    package.setLevel(level)


def _train_job(data_dir: str, config: dict[str, Any] | None, raw_body: bytes | None,
               uploads: dict[str, str] | None, job_id: str, request_id: str | None = None,
               log_level: int | None = None, log_format: LogFormat = "text") -> dict[str, Any]:
    """Runs in the worker process; errors travel back as data, not as pickled exceptions. Its
    log lines (at the service's ``log_level``, in its ``log_format``) name the request that
    started it."""
    if log_level is not None:
        _log_as_the_service(log_level, log_format)
    with request_ids.working_for(request_id):
        return _run_train_job(data_dir, config, raw_body, uploads, job_id)


def _run_train_job(data_dir: str, config: dict[str, Any] | None, raw_body: bytes | None,
                   uploads: dict[str, str] | None, job_id: str) -> dict[str, Any]:
    landing = landing_note(Path(data_dir) / JOBS_FOLDER, job_id)

    def record_landing(entry: dict[str, Any]) -> None:
        # A line a version, appended before the version is stored (thousands of group_by
        # models would each rewrite a growing file): if it cannot be, nor is the version.
        # It names this process: while it runs, no reader settles the job (see _cut_short).
        # Its own error, raised within the model's store (which would name the model): the
        # folder to fix is the jobs one.
        try:
            landing.parent.mkdir(exist_ok=True)
            with open(landing, "ab") as fh:
                fh.write(dumps_json({**entry, "worker": os.getpid(), "worker_started": started(os.getpid())},
                                    orjson.OPT_SERIALIZE_NUMPY) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise storage_error(exc, f"the record of training job {job_id}", f"in {landing.parent}") from None
        if server_gone():
            # The service is gone (killed: it could not stop this process first): whatever
            # reads the job's record after a restart would find it failed, this version not there.
            raise PredictorError("the service stopped before the job finished")

    def failed(exc: PredictorError, field: str | None) -> dict[str, Any]:
        return {"ok": False, "error": {"status_code": exc.status_code, "message": exc.message, "field": field}}

    try:
        if raw_body is not None:
            try:
                cfg = _parse_train_request(raw_body)
            except PredictorError as exc:  # its field named as in the request already
                return failed(exc, exc.field)
        else:
            cfg = TrainConfig.model_validate(config)
        models = Path(data_dir) / "models"
        if not models.is_dir():  # gone since the job was queued: nothing trained could be stored
            return failed(DataDirectoryGone(f"the models folder {models} is gone (deleted, or its volume "
                                            "unmounted): the model could not be stored"), None)
        registry = ModelRegistry(models, scan=False, create=False)
        trainer = Trainer(Path(data_dir), registry)
        paths = {k: Path(v) for k, v in (uploads or {}).items()}
        result = trainer.train(cfg, paths or None, before_commit=record_landing)
        return {"ok": True, "result": result}
    except PredictorError as exc:
        return failed(exc, _as_in_request(exc.field))
    except MemoryError:
        return {"ok": False, "error": {"status_code": 507, "message": "training ran out of memory"}}


def _as_in_request(field: str | None) -> str | None:
    """A training error's field as the request names it: a config key under ``config``, as
    validation names it (``config.traces`` for a missing trace file as for a malformed list).
    The library and the CLI name the config's own keys."""
    if field and re.split(r"[.\[]", field, maxsplit=1)[0] in TrainConfig.model_fields:
        return "config." + field
    return field


def _parse_train_request(raw: bytes) -> TrainConfig:
    """A JSON training body: the config wrapped in ``config`` (a multipart config part, and
    the CLI's file, may also be YAML, and bare: see ``schemas.config_from_text``)."""
    return parse_json_body(raw, TrainRequest, inspect=_check_train_envelope).config


def _check_train_envelope(data: Any) -> None:
    if isinstance(data, dict) and "config" in data:
        check_envelope(data)
    elif isinstance(data, dict) and ("model" in data or "traces" in data):
        # The config itself, as the client and the CLI take it: over HTTP it comes wrapped.
        # (A group_by config names no model: it was told "group_by: Extra inputs are not permitted".)
        raise InvalidInput("config: Field required: a training body is {\"config\": {\"model\": ..., \"traces\": ...}}, "
                           "the training config wrapped in 'config'", field="config")


_JOB_ID = re.compile(r"[0-9a-f]{16}")
_STATUSES = ("queued", "running", "succeeded", "failed")
# Beside a job's record, a line for each version its worker stores, written before the version
# is (see Trainer.train): a job whose process stopped after storing but before reporting then
# reads succeeded, not failed, after which a client would have trained again.
_LANDING = ".landing"

# The tokens of the TrainingJobs alive in this process (see TrainingJobs._held).
_LIVE_TOKENS: set[str] = set()


def landing_note(records_dir: Path, job_id: str) -> Path:
    return records_dir / f"{job_id}{_LANDING}"


def _failure(status: int, message: str) -> dict[str, Any]:
    """A job's outcome as its worker reports a failure (see :func:`_train_job`)."""
    return {"ok": False, "error": {"status_code": status, "message": message}}


def _answer_caller(done: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Give a job's caller its answer, unless the caller stopped waiting: a synchronous
    /train cancelled by uvicorn's --timeout-graceful-shutdown cancels ``done`` with it, and
    setting it then raised InvalidStateError, logged with a traceback at the service's stop."""
    if not done.set_running_or_notify_cancel():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


@dataclasses.dataclass(eq=False)
class _Job:
    """A training taken: its record (kept up to date, and stored), what its worker is given,
    what to run once it ends, and its caller's answer."""

    id: str
    record: dict[str, Any]
    args: tuple[Any, ...]  # _train_job's
    cleanup: Callable[[], None] | None
    done: Future
    sent: Submitted | None = None  # where it was given last
    # Both on the monotonic clock, as the time limit counts: on the wall clock, a step of an
    # hour forward (NTP, a host's clock set) stopped a 600 s limit's training 2.6 s in.
    started: float | None = None  # when it read "running" (its record's started_at)
    begun_at: float | None = None  # when the watchdog saw that worker begin it

    def working_for(self) -> contextlib.AbstractContextManager[None]:
        """The request that started it, for the log lines written about it outside that request
        (the pool's thread that ends it, the watchdog's): they name it as the request's own do."""
        return request_ids.working_for(self.record.get("request_id"))


class TrainingJobs:
    """Training in one separate worker process, with job records and a time limit.

    The pool starts on first use (spawned, so it does not inherit the server's
    threads or sockets) and is replaced if the worker dies.
    """

    def __init__(self, data_dir: Path, on_success: Callable[[dict[str, Any]], None] | None = None,
                 on_failure: Callable[[dict[str, Any]], None] | None = None, keep: int = 1000,
                 max_pending: int = 16, on_pending: Callable[[int], None] | None = None,
                 priority: str = DEFAULT_PRIORITY, timeout: float = 0.0, log_format: LogFormat = "text"):
        self.data_dir = Path(data_dir)
        self.log_format = log_format  # (its worker's lines are written as the service's)
        # Seconds a training may run (0: no limit); past it its worker is stopped. One
        # training at a time runs: without a limit, one that never ends holds all the others.
        self.timeout = float(timeout)
        self._timed_out: set[str] = set()
        self._watchdog: threading.Thread | None = None
        # Made here, once, as the service's registry makes it; never by a job, which finds a
        # models folder gone since (an unmounted volume) and stores nothing.
        with contextlib.suppress(OSError):  # (a read-only copy: its trainings fail, saying why)
            (self.data_dir / "models").mkdir(parents=True, exist_ok=True)
        self.max_pending = max_pending
        self.on_pending = on_pending  # told how many jobs are queued or running, at each change
        self.on_success = on_success
        self.on_failure = on_failure
        self.keep = keep
        self._workers = WorkerPool("training", priority)
        self._lock = threading.Lock()
        self.jobs: dict[str, dict[str, Any]] = {}
        # Each record is also written to this folder, so that any worker process can answer for
        # it; with this process's id and a token of its own (after a restart the process id may
        # be the same, in a container say, and its records of the last run must read failed).
        self.records_dir = self.data_dir / JOBS_FOLDER
        self._token = uuid.uuid4().hex
        _LIVE_TOKENS.add(self._token)
        # Where this process's records live, also written in them: a copy of the data directory
        # (a backup restored) names another place, so its unfinished jobs read failed there while
        # the process that held them still runs, serving the original.
        self._home = str(self.data_dir.resolve())
        # Unfinished jobs in submission order: the one worker runs them one at a time, in
        # this order, so the first is running and the others are queued. Only the first is
        # given to the worker, the next once it ends: a worker stopped with several in its
        # queue failed them in an order of its own (those not yet handed to its process
        # first), and they were given to the fresh one in that order, the queue's running
        # job's clock running meanwhile (the watchdog then stopped the job running).
        self._pending: list[str] = []
        self._queued: dict[str, _Job] = {}  # the jobs of _pending
        self._sent: set[str] = set()  # those of them given to the worker
        # Places taken in the queue by submissions not in it yet (see _take).
        self._reserved = 0
        # Set when the service stops: the jobs it cuts short read "stopped" (503), not "died" (500).
        self._closing = False
        # Set when it is told to stop (stop_accepting): it finishes what it holds, and takes no
        # new training, which its stop would cut short.
        self._stopping = False
        # Reads whether a version a stopped job was storing is there (see _cut_short).
        self._registry: ModelRegistry | None = None

    @property
    def _pool(self) -> WorkerExecutor | None:
        return self._workers.pool

    def submit(self, config: TrainConfig, uploads: dict[str, Path] | None = None,
               cleanup: Callable[[], None] | None = None) -> tuple[str, Future]:
        """Queue a training; returns the job id and a future of its result dict (or PredictorError)."""
        try:
            payload = config.model_dump(mode="json")
        except ValueError as exc:  # bytes that are not UTF-8, objects JSON has no form for (from YAML, say)
            raise InvalidInput(f"config holds a value that JSON cannot carry: {exc}", field="config") from None
        return self._submit(payload, None, uploads, cleanup)

    def submit_raw(self, body: bytes) -> tuple[str, Future]:
        """Queue a training from a raw ``{"config": ...}`` JSON body, parsed in the worker."""
        return self._submit(None, body, None, None)

    def _submit(self, payload: dict[str, Any] | None, raw: bytes | None, uploads: dict[str, Path] | None,
                cleanup: Callable[[], None] | None) -> tuple[str, Future]:
        job_id = uuid.uuid4().hex[:16]
        # The request that started it (None outside one: the CLI's in-process training), whose
        # id a caller reports: its record names it.
        record: dict[str, Any] = {"job_id": job_id, "status": "queued", "submitted_at": time.time(),
                                  "request_id": request_ids.current.get()}
        self._take(record)
        try:
            self._prune_records()
            # Its worker logs as this process does, and for the request that started it.
            args = (str(self.data_dir), payload, raw, {k: str(v) for k, v in (uploads or {}).items()}, job_id,
                    record["request_id"], logging.getLogger(__package__).getEffectiveLevel(), self.log_format)
            job = _Job(job_id, record, args, cleanup, Future())
        except BaseException:
            with self._lock:
                self._reserved -= 1
                self.jobs.pop(job_id, None)
            raise
        if self._enqueue(job):
            self._start(job)
        self._watch_time()
        return job_id, job.done

    def _take(self, record: dict[str, Any]) -> None:
        """Keep ``record`` among the jobs, or refuse the training (503 while stopping, 429 with
        the queue full)."""
        with self._lock:
            if self._stopping or self._closing:
                # Taken, it would be cut short by the stop under way and read failed after it
                # (a background job after an answer of 202): refused now, it can go elsewhere.
                raise ServiceStopping("the service is stopping: send the training to another instance, or "
                                      "again once this one has restarted")
            if len(self._pending) + self._reserved >= self.max_pending:
                # Each queued job holds its body (up to the upload limit) until it runs. The
                # place is taken here, under the lock that counts them: taken only as the job
                # was queued, after its records were pruned, 17 of 40 trainings sent at once
                # were queued where 2 were allowed.
                n = len(self._pending) + self._reserved
                raise TooBusy(f"{n} training{' is' if n == 1 else 's are'} already queued or running in this worker, "
                              "the most it takes (PREDICTOR_MAX_QUEUED_TRAININGS): retry when one has finished")
            self._reserved += 1
            self.jobs[record["job_id"]] = record
            for old in list(self.jobs)[: max(0, len(self.jobs) - self.keep)]:
                if self.jobs[old]["status"] in ("succeeded", "failed"):
                    del self.jobs[old]

    def _enqueue(self, job: _Job) -> bool:
        """Queue ``job`` in the place :meth:`_take` kept; whether it is first, to be given to
        the worker now."""
        with self._lock:
            self._reserved -= 1
            self._pending.append(job.id)
            self._queued[job.id] = job
            self._pending_changed()
            first = self._pending[0] == job.id
            if first:
                job.record.update(status="running", started_at=time.time())
                job.started = time.monotonic()
            if first or self._closing:
                # (Queued as the service stops, after its stop failed the jobs not given to
                # the worker: given now, it is answered as they were, never run.)
                self._sent.add(job.id)
            self._store(job.record)
            return job.id in self._sent

    def _start(self, job: _Job, resent: bool = False) -> None:
        """Give ``job`` to the worker; it ends in :meth:`_ended`, on the pool's manager thread
        (at once, in this one, if it could not be given)."""
        sent = self._workers.submit(_train_job, *job.args, resent=resent)
        if isinstance(sent, Submitted):
            job.sent, job.begun_at = sent, None
            sent.future.add_done_callback(lambda _: self._ended(job, sent))
        else:
            self._ended(job, sent)

    def _ended(self, job: _Job, sent: Submitted | Outcome) -> None:
        """End ``job`` (or give it to a fresh worker) by what became of its call: whatever
        happens, here, for a job left in the queue held a place for good (past
        PREDICTOR_MAX_QUEUED_TRAININGS such, every training was a 429) and read "running"."""
        with job.working_for():
            try:
                outcome = (self._workers.outcome(sent, timed_out=job.id in self._timed_out)
                           if isinstance(sent, Submitted) else sent)
                out = self._answer(job, outcome)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, never raised in the pool thread
                log.exception("training job %s failed", job.id)
                out = _failure(500, f"training failed: {type(exc).__name__}: {exc}")
            if out is not None:
                self._conclude(job, out)

    def _answer(self, job: _Job, outcome: Outcome) -> dict[str, Any] | None:
        """What ``job`` answers for ``outcome``; None where it was given to a fresh worker."""
        match outcome:
            case Finished(value=out):
                return out
            case Failed(error=exc):
                log.error("training job %s failed", job.id, exc_info=exc)
                return _failure(500, f"training failed: {type(exc).__name__}: {exc}")
            case ShutDown():
                return self._cut_short(job.id, 503, "the service stopped before the job finished")
            case TimedOut():
                return self._cut_short(job.id, 422, stopped_for_time("training", self.timeout, "train on fewer rows or "
                                                                     "groups, or with fewer boosting rounds"))
            case StoppedForAnother() if landing_note(self.records_dir, job.id).exists():
                return self._cut_short(job.id, 503, "the training worker was stopped, for the training before this "
                                                    "one, which ran past PREDICTOR_TRAINING_TIMEOUT_S, just after "
                                                    "this one began: send it again")
            case WorkerDied(message=message):
                return self._cut_short(job.id, 500, message)
            case CouldNotStart(reason=reason):
                log.warning("training job %s: its worker could not be started: %s", job.id, reason)
                return _failure(503, f"the training worker could not be started ({reason}): send the training "
                                     "again, or to another instance")
            case NotStarted() | StoppedForAnother():
                # Never started (queued behind the job that took the worker down, or sent to a
                # worker that had just died idle), or begun just as its worker was stopped for the
                # job before it, with nothing stored: a fresh worker runs it, in its turn. A job
                # queued behind several that die is given again after each: no count of tries
                # limits it (the pool gives up on workers that die before they begin anything).
                self._start(job, resent=True)
                return None
        raise AssertionError(f"unknown outcome {outcome!r}")

    def _conclude(self, job: _Job, out: dict[str, Any]) -> None:
        """End ``job`` with ``out``: its record, its place in the queue, its caller's answer;
        then give the next job to the worker."""
        job.record["finished_at"] = time.time()  # (before the next one's start)
        # Its call, which holds its worker's pool: kept, a stopped pool's queues and semaphore
        # outlived the service's stop, reported as leaked at its exit.
        job.sent = None
        nxt = self._leave_queue(job.id)
        try:
            if job.cleanup is not None:
                job.cleanup()
            if out["ok"]:
                self._succeeded(job, out["result"])
            else:
                self._failed(job, out["error"])
        finally:
            if nxt is not None:
                self._start(nxt)

    def _leave_queue(self, job_id: str) -> _Job | None:
        """Take the ended ``job_id`` out of the queue; the next job, if any, reads running, and
        is returned, to be given to the worker."""
        with self._lock:
            self._timed_out.discard(job_id)  # (marked as it finished on its own)
            self._queued.pop(job_id, None)
            self._sent.discard(job_id)
            if job_id in self._pending:
                self._pending.remove(job_id)
                self._pending_changed()
            # Once the service is stopping, the queued jobs never start: they keep no started_at.
            if not self._pending or self._closing or self._pending[0] in self._sent:
                return None
            nxt = self._queued[self._pending[0]]
            self._sent.add(nxt.id)
            nxt.record.update(status="running", started_at=time.time())
            nxt.started = time.monotonic()
            with nxt.working_for():  # (its lines, not the ending job's)
                self._store(nxt.record)
            return nxt

    def _succeeded(self, job: _Job, result: dict[str, Any]) -> None:
        record = job.record
        record["model_key"] = result["model_key"]
        if self.on_success is not None:
            try:
                self.on_success(result)
            except Exception:  # noqa: BLE001 - the version is stored; the caller still gets its answer
                log.exception("training job %s: indexing the new version failed", job.id)
        record.update(status="succeeded", result=result)
        if self._store(record):
            # Read back from its file when asked: a group_by job's result lists every
            # model (9 MB for 2,000 groups), and a thousand such records were kept here.
            del record["result"]
            landing_note(self.records_dir, job.id).unlink(missing_ok=True)  # the record says it all now
        _answer_caller(job.done, result=result)

    def _failed(self, job: _Job, err: dict[str, Any]) -> None:
        if self.on_failure is not None:
            try:
                self.on_failure(err)
            except Exception:  # noqa: BLE001 - raised, it left the job unanswered and its caller waiting
                log.exception("training job %s: counting its failure failed", job.id)
        job.record.update(status="failed", error=err)
        if self._store(job.record):
            landing_note(self.records_dir, job.id).unlink(missing_ok=True)
        exc = PredictorError(err["message"], err.get("field"))
        exc.status_code = err["status_code"]
        _answer_caller(job.done, error=exc)

    def _watch_time(self) -> None:
        """Start the thread that stops a training running past ``timeout`` (once, if there is one)."""
        if self.timeout <= 0:
            return
        with self._lock:
            if self._watchdog is not None:
                return
            self._watchdog = threading.Thread(target=self._stop_overdue, name="training-timeout", daemon=True)
        self._watchdog.start()

    def _stop_overdue(self) -> None:
        while not self._closing:
            time.sleep(min(0.5, self.timeout / 4) if self.timeout > 0 else 0.5)
            with self._lock:
                job = self._queued[self._pending[0]] if self._pending else None
                overdue = (self.timeout > 0 and job is not None
                           and job.record["status"] == "running" and job.id not in self._timed_out
                           and time.monotonic() - self._clock_start(job) > self.timeout)
                pool = self._pool if overdue else None
                if pool is not None:
                    self._timed_out.add(job.id)
                    pool.stopped_for = job.id
            if pool is not None:
                with job.working_for():
                    log.warning("training job %s ran past %g s (PREDICTOR_TRAINING_TIMEOUT_S): stopping its worker",
                                job.id, self.timeout)
                # The jobs queued behind it never started (but for one that may have, if the
                # overdue job ended just now): a fresh worker takes them, in turn.
                self._stop_pool(pool)

    def _clock_start(self, job: _Job) -> float:
        """When ``job``'s time limit began: when its worker began it, as the watchdog saw (a
        fresh worker's start, its imports among it, took a 1.5 s limit's job that ran 0.6 s);
        until then, :data:`START_ALLOWANCE_S` after it was given to the worker."""
        sent = job.sent
        if job.begun_at is None and sent is not None and sent.pool.ran(sent.number):
            job.begun_at = time.monotonic()
        if job.begun_at is not None:
            return job.begun_at
        return (job.started if job.started is not None else time.monotonic()) + START_ALLOWANCE_S

    def _pending_changed(self) -> None:
        if self.on_pending is not None:
            self.on_pending(len(self._pending))

    def get(self, job_id: str) -> dict[str, Any]:
        """A job's record, whichever worker process took the job."""
        with self._lock:
            record = self.jobs.get(job_id)
        if record is not None:
            if record["status"] == "succeeded" and "result" not in record:
                stored = self._stored(job_id)
                if stored is not None and "result" in stored:
                    return stored
            return dict(record)
        stored = self._stored(job_id, damaged_is_error=True)
        if stored is None:
            raise NotFound(f"no training job {shown(job_id)}", field="job_id")  # quoted cut short: an id may be any length
        return stored

    def _store(self, record: dict[str, Any]) -> bool:
        """Write a job's record to its file; whether it was written."""
        try:
            self.records_dir.mkdir(exist_ok=True)
            atomic_write_bytes(self.records_dir / f"{record['job_id']}.json",
                               dumps_json({**record, "worker_pid": os.getpid(), "worker_token": self._token,
                                           "worker_started": started(os.getpid()), "data_dir": self._home},
                                          orjson.OPT_SERIALIZE_NUMPY))
        except OSError as exc:  # a full disk: this worker still answers for the job
            log.warning("cannot store training job %s's record: %s", record["job_id"], exc)
            return False
        return True

    def _stored(self, job_id: str, damaged_is_error: bool = False) -> dict[str, Any] | None:
        """A job's record as its file holds it; None where there is none (or, without
        ``damaged_is_error``, it cannot be read)."""
        if not _JOB_ID.fullmatch(job_id):  # the id names a file: nothing else reaches the file system
            return None
        path = self.records_dir / f"{job_id}.json"
        try:
            record = orjson.loads(read_regular(path))
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            record, why = None, exc
        else:
            why = f"a JSON {type(record).__name__}, not an object"
            if isinstance(record, dict) and (record.get("job_id") != job_id or record.get("status") not in _STATUSES):
                # (Its job_id names the file it is stored to as it is settled: missing, a 500.)
                why = "not a record of this job: its job_id or status is missing or another"
                record = None
        if not isinstance(record, dict):
            if not damaged_is_error:
                return None
            # Told apart from an unknown id: the job was taken, and what became of it is lost.
            log.warning("training job %s's record %s cannot be read (%s)", job_id, path, why)
            raise NotFound(f"training job {job_id}'s record cannot be read (damaged on disk): what became "
                           "of it is unknown; GET /models tells whether it stored a version", field="job_id")
        held = self._held(record)
        for key in ("worker_pid", "worker_token", "worker_started"):
            record.pop(key, None)
        home = record.pop("data_dir", None)  # (records written before 2026-12-01 name none)
        if record.get("status") in ("queued", "running") and not held:
            # A record copied from another data directory (a backup restored) names a worker
            # that stores into that one, never into this one: settled as it reads now.
            out = self._cut_short(job_id, 503, "the service process that held this job stopped before it finished",
                                  worker_may_run=home in (None, self._home))
            if out.get("storing"):  # its worker, orphaned, is still storing a version it noted
                return record
            if out["ok"]:
                record.update(status="succeeded", result=out["result"], finished_at=out["finished_at"])
            else:
                record.update(status="failed", error=out["error"])
            # Settled once: read again later, a version deleted since would turn it to failed.
            # Its landing note stays until the record is pruned: another reader that read the
            # record before this store settles it again, alike (without the note, as failed).
            self._store(record)
        return record

    def _cut_short(self, job_id: str, status: int, message: str, worker_may_run: bool = False) -> dict[str, Any]:
        """The outcome of a job whose process stopped before it reported: its result where
        every version it was storing is stored, else the failure ``message``, naming the
        versions it had stored, if any; with ``worker_may_run`` (its service is gone, not
        known to have stopped its worker), ``storing`` while the worker that noted a version
        not stored yet still runs."""
        entries: list[dict[str, Any]] = []
        landing = landing_note(self.records_dir, job_id)
        try:
            for line in read_regular(landing).splitlines():
                try:
                    entries.append(orjson.loads(line))
                except orjson.JSONDecodeError:  # the last line, cut short: its version was not stored
                    break
            if self._registry is None:
                self._registry = ModelRegistry(self.data_dir / "models", scan=False, create=False)
            # Asked first: once the worker is known gone, what is stored stays so.
            running = worker_may_run and bool(entries) and still_running(entries[-1].get("worker"),
                                                                         entries[-1].get("worker_started"))
            stored = [e for e in entries if self._stored_as_noted(e)]
            complete = bool(entries) and len(stored) == len(entries) == entries[-1]["of"]
            if running and not complete:
                # Its worker still runs (its service gone, it exits within a second): it may
                # store a version yet, or take back the groups it stored; settled now, the
                # record could say neither.
                return {"ok": False, "storing": True}
            if complete:
                last = entries[-1]
                result = train_result([{k: e[k] for k in _ENTRY_KEYS} for e in entries], last["group_by"],
                                      last["rows_in_no_group"], last["duration_seconds"])
                return {"ok": True, "result": result, "finished_at": landing.stat().st_mtime}
        except (OSError, LookupError, TypeError, ValueError, AttributeError, PredictorError):
            stored = []
        if stored:
            versions = ", ".join(f"{e['model_key']} version {e['version']}" for e in stored)
            message += f"; it had stored {versions}"
        return {"ok": False, "error": {"status_code": status, "message": message}}

    def _stored_as_noted(self, entry: dict[str, Any]) -> bool:
        """Whether the version a job's landing note names is stored, and is the one the job
        made: killed before the meta file was written, the job left its number free, and the
        next training of the model stored its own version under it (the job then read
        succeeded, with that version's number). A note written before 2026-12-03 names
        neither time nor digest: its number alone is checked."""
        identity = ModelIdentity.from_parts(entry["identity"])
        if "created_at" not in entry:
            return self._registry.is_stored(identity, entry["version"])
        return self._registry.is_stored_as(identity, entry["version"], entry["created_at"], entry.get("model_sha256"))

    def _prune_records(self) -> None:
        try:
            files = sorted(self.records_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        for old in files[: max(0, len(files) - self.keep)]:
            if self._unfinished_elsewhere(old):
                continue
            try:
                old.unlink(missing_ok=True)
                landing_note(self.records_dir, old.stem).unlink(missing_ok=True)
            except OSError as exc:  # one that cannot go (a read-only file system) is no reason to refuse a training
                log.warning("cannot prune training job record %s: %s", old.name, exc)

    def _unfinished_elsewhere(self, path: Path) -> bool:
        """Whether the record ``path`` is of a job that a live process (another worker, or
        this one) still holds, queued or running: pruned for its age (a training of hours,
        and a thousand others since), it and its landing note were gone, and the job read
        404 everywhere but in its own process."""
        try:
            record = orjson.loads(read_regular(path))
        except (OSError, orjson.JSONDecodeError):
            return False
        return isinstance(record, dict) and record.get("status") in ("queued", "running") and self._held(record)

    def _held(self, record: dict[str, Any]) -> bool:
        """Whether the job of ``record`` is held by a live process, and the same one: a pid may
        have been given to another process since (another worker after a restart), or to this
        one (PID 1 in a container, restarted: then none of the tokens of the TrainingJobs alive
        in it is the record's); and a process serving this data directory, not the one this
        was copied from (records written before 2026-12-01 name none)."""
        pid = record.get("worker_pid")
        earlier_run = pid == os.getpid() and record.get("worker_token") not in _LIVE_TOKENS
        return (still_running(pid, record.get("worker_started")) and not earlier_run
                and record.get("data_dir") in (None, self._home))

    def stop_accepting(self) -> None:
        """The service has been told to stop: trainings submitted from now on are refused
        (503), those already taken go on until the stop cuts them short."""
        self._stopping = True

    def shutdown(self) -> None:
        """Stop the worker now, for good; a training in progress is abandoned (its version is
        never half-written), and it and the queued jobs read failed with a 503."""
        self._closing = True
        _LIVE_TOKENS.discard(self._token)
        self._workers.close()
        # The jobs queued behind the one the worker had were never given to it.
        with self._lock:
            unsent = [self._queued[j] for j in self._pending if j not in self._sent]
        for job in unsent:
            with job.working_for():
                self._conclude(job, self._cut_short(job.id, 503, "the service stopped before the job finished"))

    def _stop_pool(self, pool: ProcessPoolExecutor | None = None) -> None:
        """Stop ``pool`` (default: the current one); a later job starts a fresh one."""
        self._workers.stop(pool)

