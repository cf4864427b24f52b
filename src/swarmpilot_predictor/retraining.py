"""Online retraining from observed runtimes.

A model that drifted, or that has gathered enough new observations, is
retrained on its training data plus the observations, weighted toward recent
ones. The newest observations are held out: a candidate becomes a new version
only if it beats the serving model on them. Observations may cover only part of
what the model was trained on (one batch size, say): a candidate fitted on
observations alone that would forget the inputs no one observed is fitted again
with the stored training rows there (see :func:`uncovered_rows`, :func:`_follows`).
After a decision that leaves the serving version in place, automatic retraining
waits for new evidence (:meth:`Retrainer.backoff_step`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from .atomic import atomic_write_bytes, file_stamp, open_regular, read_regular
from .errors import ModelNotFound, PredictorError, ServiceStopping, VersionConflict, writing
from .features import FIRST_OF_SHAPE, FeatureSchema, gross_outliers
from .identity import ModelIdentity
from .modeling import SELECTION_SE, QuantileModel, clearly_lower, pinball_losses
from .modeling.stored import finite_number
from .monitoring import MONITOR_LEVELS, AccuracyMonitor, ObservationLog, WarnedOnce, refuse_linked_folder
from .registry import LoadedModel, ModelRegistry, ModelVersion
from .traces import dumps_json, read_json_lines
from .workers import (DEFAULT_PRIORITY, CouldNotStart, Failed, Finished, ShutDown, TimedOut, WorkerDied, WorkerPool, server_gone,
                      stopped_for_time)

log = logging.getLogger(__name__)


def observation_matrix(features: FeatureSchema, records: list[dict[str, Any]]) -> tuple[FeatureSchema, np.ndarray, np.ndarray]:
    """The usable observations as (schema for the next version, X, y), oldest first.

    The next version knows the observations' values as its training's (see
    :meth:`FeatureSchema.with_values_seen`): a categorical feature's values first seen
    among them, on as many rows as training asks of a value, are learned (read as the
    unknown level, the new devices of a fleet were one category to every later version);
    a numeric feature's range spans them (the version fitted on them flagged them
    ``outside_training``); a field training saw one value of that they vary is a feature
    (no version read it: batches of 8 were answered as training's batches of 1).

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
    kept = [t for t, k in zip(traces, keep) if k]
    if (wider := features.with_values_seen(kept, X)) is not features:
        if wider.n_categories != features.n_categories:  # (a range alone encodes nothing anew)
            X = wider.matrix(kept)[0]
        features = wider
    if features.history is not None:
        order = features.history.order_of(kept)
        observed_at = np.array([r["ts"] for r in records], dtype=np.float64)[keep]
        observed_at = features.history.seconds_in_unit(observed_at)  # (the service's clock, in seconds)
        history, flags = features.history.extend(X[:, :-1], np.where(np.isnan(order), observed_at, order))
        stated = np.array([t.get(FIRST_OF_SHAPE) is not None for t in kept], dtype=bool)
        X[:, -1] = np.where(stated, X[:, -1], flags)
        features = dataclasses.replace(features, history=history)
    return features, X, y


# A level shift is taken as found when the two sides' means differ by this many standard
# errors (a two-sample t statistic), each side holding at least SHIFT_MIN_ROWS observations.
SHIFT_MIN_T = 5.0
SHIFT_MIN_ROWS = 20


def level_shift(r: np.ndarray) -> int | None:
    """Where the mean of ``r`` (log runtimes over the serving model's medians, oldest first)
    moved at one point: the first index after it, or None without a clear single shift.

    The split with the largest two-sample t statistic (one pass of cumulative sums), kept
    if that exceeds ``SHIFT_MIN_T``.
    """
    n = len(r)
    if n < 2 * SHIFT_MIN_ROWS or not np.all(np.isfinite(r)):
        return None
    k = np.arange(SHIFT_MIN_ROWS, n - SHIFT_MIN_ROWS + 1)
    c1, c2 = np.cumsum(r), np.cumsum(r * r)
    s1, q1 = c1[k - 1], c2[k - 1]
    s2, q2 = c1[-1] - s1, c2[-1] - q1
    m1, m2 = s1 / k, s2 / (n - k)
    within = np.maximum((q1 - k * m1 * m1) + (q2 - (n - k) * m2 * m2), 0.0) / (n - 2)
    # A spread no smaller than rounding's: the means of identical values differ in their last
    # bits, and over no spread at all (runtimes timed to the millisecond, all the same, against
    # one median) that read as a shift of 1e14 standard errors, at a place of rounding's choosing.
    floor = max((1e-9 * float(np.abs(r).max())) ** 2, 1e-300)
    t = np.abs(m2 - m1) / np.sqrt(np.maximum(within, floor) * (1.0 / k + 1.0 / (n - k)))
    best = int(np.argmax(t))
    return int(k[best]) if t[best] > SHIFT_MIN_T else None


# A stored training row counts as covered by the observations when one lies within this
# many of the training data's standard deviations (Euclidean, over the numeric columns;
# categories must match), or within the observations' own spacing if that is smaller.
COVER_RADIUS = 0.25


def uncovered_rows(train_X: np.ndarray, obs_X: np.ndarray, kinds: list[str],
                   serving: QuantileModel | None = None, train_median: np.ndarray | None = None) -> np.ndarray:
    """Which rows of ``train_X`` lie where no row of ``obs_X`` is: a boolean mask.

    Numeric columns are scaled by the training rows' standard deviation; a category
    code difference is at least 1, so rows of other categories never cover each
    other. The radius is the observations' own spacing (twice the 90th percentile of
    the distance from each to its nearest other one), at most :data:`COVER_RADIUS`:
    observations that all share a batch size cover exactly that batch size, ones spread
    over a continuous feature cover the stretch between them. With ``serving``, a row
    whose median there is more than :data:`COVER_RATIO` times its nearest observation's
    (either way) is not covered by it: where the runtime jumps (requests of 480 output
    tokens and more 3 times slower), observations just short of the jump say nothing of
    the rows past it (they counted as covered, and a retraining forgot the jump).
    ``train_median``: the serving model's medians of ``train_X``, where already known.
    """
    from scipy.spatial import cKDTree

    if len(train_X) == 0 or len(obs_X) == 0:
        return np.ones(len(train_X), dtype=bool)
    if train_X.shape[1] == 0:
        return np.zeros(len(train_X), dtype=bool)  # no features: every observation is where every row is
    scale = np.ones(train_X.shape[1])
    for j, kind in enumerate(kinds):
        if kind == "numeric":
            sd = float(np.std(train_X[:, j]))
            scale[j] = 1.0 / sd if np.isfinite(sd) and sd > 0 else 1.0
    A = np.nan_to_num(train_X, nan=-1.0) * scale
    B = np.nan_to_num(obs_X, nan=-1.0) * scale
    tree = cKDTree(B)
    radius = 0.0
    if len(B) >= 2:
        spacing, _ = tree.query(B, k=2, distance_upper_bound=COVER_RADIUS)
        radius = min(COVER_RADIUS, 2.0 * float(np.quantile(np.minimum(spacing[:, 1], COVER_RADIUS), 0.9)))
    radius += 1e-9  # identical rows always cover each other
    distance, nearest = tree.query(A, k=1, distance_upper_bound=radius)
    covered = distance <= radius
    if serving is not None and covered.any():
        rows = np.flatnonzero(covered)
        with np.errstate(divide="ignore", invalid="ignore"):
            at_rows = (serving.predict_quantiles(train_X[rows], [0.5])[:, 0] if train_median is None
                       else train_median[rows])
            ratio = np.log(at_rows / serving.predict_quantiles(obs_X[nearest[rows]], [0.5])[:, 0])
        covered[rows] = np.abs(np.nan_to_num(ratio, nan=np.inf)) <= math.log(COVER_RATIO)
    return ~covered


# A training row near an observation is covered by it only where the serving model's
# medians at the two are within this factor of each other (see uncovered_rows).
COVER_RATIO = 1.25

# A candidate fitted on observations alone may serve only if, where nothing was
# observed, it departs from the serving model as it does on the observations (a shift
# seen everywhere it was looked at), to within this factor for 90% of those rows.
FOLLOW_TOLERANCE = 1.5


def _run_kinds(X: np.ndarray, flag_column: int | None) -> tuple[np.ndarray, ...]:
    """The rows of ``X`` of each kind of run (repeats, first runs), where the models have a
    first-run flag (column ``flag_column``: derived, or the traces' own); else all of them,
    as one kind."""
    if flag_column is None:
        return (np.ones(len(X), dtype=bool),)
    first = X[:, flag_column] > 0.5
    return ~first, first


def _changes_by_kind(on_obs: np.ndarray, obs_X: np.ndarray, unseen_X: np.ndarray,
                     flag_column: int | None) -> Iterator[tuple[np.ndarray, float]]:
    """For each kind of run among ``unseen_X`` (one kind without ``flag_column``): its rows,
    and the change of log median the candidate made on the observations of that kind
    (``on_obs``; of all of them, where none of its kind was observed)."""
    learned_all = float(np.median(on_obs))
    for seen, unseen in zip(_run_kinds(obs_X, flag_column), _run_kinds(unseen_X, flag_column)):
        if unseen.any():
            yield unseen, float(np.median(on_obs[seen])) if seen.any() else learned_all


def _follows(candidate: QuantileModel, serving: QuantileModel, obs_X: np.ndarray, unseen_X: np.ndarray,
             flag_column: int | None = None) -> bool:
    """Whether ``candidate`` changes the median on ``unseen_X`` as it does on ``obs_X``.

    A model fitted on one batch size's observations predicts that batch size's runtime
    for every batch size: it does not follow. One fitted after a uniform 1.5x slowdown
    predicts 1.5x the serving model's runtimes on unobserved inputs too: it does. With
    ``flag_column`` (the models' first-run flag), each kind of run is judged
    on its own, against the change on the observations of its kind (or of all, where
    none was observed): a candidate fitted on recent observations, none of them a first
    run, predicted the training data's first runs as repeats (864 ms to 5 ms), and passed
    as following, the first runs a few percent of the rows.
    """
    def log_ratio(X: np.ndarray) -> np.ndarray:
        r = _median_log_ratio(candidate, serving, X)
        return np.where(np.isfinite(r), r, np.inf)

    on_obs, on_unseen = log_ratio(obs_X), log_ratio(unseen_X)
    if not np.isfinite(np.median(on_obs)):
        return False
    return all(np.isfinite(learned)
               and float(np.quantile(np.abs(on_unseen[rows] - learned), 0.9)) <= np.log(FOLLOW_TOLERANCE)
               for rows, learned in _changes_by_kind(on_obs, obs_X, unseen_X, flag_column))


def _median_log_ratio(candidate: QuantileModel, serving: QuantileModel, X: np.ndarray) -> np.ndarray:
    """log(candidate's median / serving model's median) on the rows ``X`` (NaN or infinite
    where a median is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(candidate.predict_quantiles(X, [0.5])[:, 0] / serving.predict_quantiles(X, [0.5])[:, 0])


def _keeps_or_follows(candidate: QuantileModel, serving: QuantileModel, obs_X: np.ndarray, unseen_X: np.ndarray,
                      flag_column: int | None = None) -> bool:
    """Whether, where nothing was observed, ``candidate`` keeps the serving model's median or
    changes it as it does on the observations, to within :data:`FOLLOW_TOLERANCE`, for 90%
    of those rows: a candidate fitted with the training rows there may do either, not
    something of its own (a third of the rows' runtimes where they were not observed).
    With ``flag_column``, each kind of run on its own, as :func:`_follows` judges them."""
    r = _median_log_ratio(candidate, serving, unseen_X)
    on_obs = _median_log_ratio(candidate, serving, obs_X)
    if not (np.isfinite(np.median(on_obs)) and np.isfinite(r).all()):
        return False
    return all(np.isfinite(learned)
               and float(np.quantile(np.minimum(np.abs(r[rows]), np.abs(r[rows] - learned)), 0.9))
               <= np.log(FOLLOW_TOLERANCE)
               for rows, learned in _changes_by_kind(on_obs, obs_X, unseen_X, flag_column))


# A retrained version's metadata ("extra") notes the newest observation it was fitted on.
OBSERVED_THROUGH = "observed_through"

# Observations held out to judge candidates: the newest quarter, at least this many.
MIN_HOLDOUT = 10


class DecisionLog:
    """Each model's retraining decisions, oldest first, shared by the worker processes.

    One JSONL file per model beside its observations. An append holds the file's lock
    exclusively; once the file holds ``2 * keep`` decisions it is replaced by one of the
    newest ``keep`` (an appender that waited on the old file sees that and writes to the
    new one). The same directory holds the lock that lets one process at a time retrain
    the model.
    """

    FILE = "retraining.jsonl"
    LOCK = "retraining.lock"

    def __init__(self, root: Path, keep: int = 100):
        self.root = Path(root)
        self.keep = keep
        self._last: dict[ModelIdentity, tuple[tuple[int, int, int], dict[int | None, dict[str, Any]]]] = {}
        # The retraining locks this process holds (see exclusive): the open lock file of each model,
        # by the thread holding it (a model deleted, trained again and retrained while a retraining
        # of the deleted one runs: each has its own).
        self._held: dict[tuple[ModelIdentity, int], int] = {}
        self._unreadable = WarnedOnce(log)  # decision files that could not be looked at

    def _path(self, identity: ModelIdentity, name: str = FILE) -> Path:
        return self.root / identity.dirname / name

    def append(self, identity: ModelIdentity, decision: dict[str, Any]) -> None:
        path = self._path(identity)
        line = dumps_json(decision) + b"\n"
        with writing(f"the retraining decisions of {identity.key}"):
            path.parent.mkdir(exist_ok=True)  # (not the observations folder: see ModelRegistry.save)
            refuse_linked_folder(path.parent, f"the retraining decisions of {identity.key}")
            while True:
                fd = open_regular(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    try:
                        current = os.stat(path).st_ino == os.fstat(fd).st_ino
                    except FileNotFoundError:
                        current = False
                    if not current:  # cut (or deleted) while this append waited
                        continue
                    size = os.fstat(fd).st_size
                    data = line if not size or os.pread(fd, 1, size - 1) == b"\n" else b"\n" + line
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    content = os.pread(fd, size + len(data), 0)
                    if content.count(b"\n") >= 2 * self.keep:
                        atomic_write_bytes(path, b"".join(kept + b"\n" for kept in content.splitlines()[-self.keep:]))
                    return
                finally:
                    os.close(fd)

    def read(self, identity: ModelIdentity, limit: int | None = None) -> list[dict[str, Any]]:
        """The stored decisions, oldest first (the newest ``limit`` when given); lines that are
        not a decision (torn by a crash, edited by hand) are skipped. Their folder, the model's
        observations', is not read through where it is a symbolic link (see refuse_linked_folder):
        /accuracy answered the decisions of a file wherever it led, outside the data directory."""
        path = self._path(identity)
        if path.parent.is_symlink():  # (ObservationLog warns of the folder once)
            return []
        try:
            data = read_regular(path)
        except FileNotFoundError:
            return []
        except OSError as exc:  # not a regular file (a FIFO, a device): no decisions to read
            log.warning("cannot read the retraining decisions of %s: %s", identity.key, exc)
            return []
        out = read_json_lines(data, lambda r: isinstance(r, dict) and isinstance(r.get("status"), str)
                              and isinstance(r.get("from_version"), int))
        return out if limit is None else out[-limit:]

    def last(self, identity: ModelIdentity, from_version: int | None = None) -> dict[str, Any] | None:
        """The newest decision (about ``from_version``, when given); read again only when the
        file changed (it is asked on every observation)."""
        try:
            stamp = file_stamp(self._path(identity))
        except FileNotFoundError:
            return None
        except OSError as exc:
            # A link loop in its place: no decision to read, as read() finds (every /observe
            # of the model, with PREDICTOR_AUTO_RETRAIN, was a 500 after its observations were
            # stored, so that a client's retry counted them twice). Said once, not per /observe.
            self._unreadable.warn(identity, exc, "cannot read the retraining decisions of %s: %s", identity.key, exc)
            return None
        self._unreadable.read_again(identity)
        cached = self._last.get(identity)
        if cached is None or cached[0] != stamp:
            newest: dict[int | None, dict[str, Any]] = {}
            for d in self.read(identity):  # at most 2 * keep of them
                newest[d["from_version"]] = newest[None] = d
            cached = self._last[identity] = (stamp, newest)
        return cached[1].get(from_version)

    def delete(self, identity: ModelIdentity) -> None:
        """Delete the model's decisions and its retraining lock (their folder, the model's
        observations', goes with those: :meth:`ObservationLog.delete`). A retraining of the
        deleted model that holds the lock keeps it until it ends (a lock on the unlinked
        file), and can store nothing then: the deleted model's numbers are never given again."""
        if self._path(identity).parent.is_symlink():  # nothing deleted through it (see refuse_linked_folder)
            self.forget(identity)
            return
        for path in (self._path(identity), self._path(identity, self.LOCK)):
            try:
                path.unlink(missing_ok=True)
            except NotADirectoryError:
                # A file in their folder's place (put there by hand) holds neither: the model's
                # versions were deleted by then, and its DELETE answered a 500 saying only
                # "internal error: NotADirectoryError".
                pass
        self.forget(identity)

    def forget(self, identity: ModelIdentity) -> None:
        """Let go of the newest decisions of ``identity`` kept in memory (its file stays)."""
        self._last.pop(identity, None)
        self._unreadable.read_again(identity)

    def kept(self) -> set[ModelIdentity]:
        return set(self._last) | self._unreadable.keys()

    @contextmanager
    def exclusive(self, identity: ModelIdentity, wait: bool = True) -> Iterator[bool]:
        """Held while a process retrains the model: one at a time, across worker processes.
        Without ``wait``, it yields False at once if another holds it."""
        path = self._path(identity, self.LOCK)
        with writing(f"the retraining lock of {identity.key}"):
            path.parent.mkdir(exist_ok=True)  # (not the observations folder: see ModelRegistry.save)
            refuse_linked_folder(path.parent, f"the retraining lock of {identity.key}")
            fd = open_regular(path, os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            self._held[identity, threading.get_ident()] = fd
            try:
                yield True
            finally:
                self._held.pop((identity, threading.get_ident()), None)
        finally:
            os.close(fd)

    def lock_removed(self, identity: ModelIdentity) -> bool | None:
        """Whether the retraining lock this thread holds for ``identity`` was removed since it
        was taken: the model was deleted (:meth:`delete`), not only some of its versions. None
        where this thread holds none."""
        fd = self._held.get((identity, threading.get_ident()))
        if fd is None:
            return None
        try:
            st, held = os.stat(self._path(identity, self.LOCK)), os.fstat(fd)
        except OSError:  # gone (or what is there cannot be looked at): not the lock it took
            return True
        return (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino)


def _recency_weights(n: int) -> np.ndarray:
    """The weights of ``n`` observations, oldest first."""
    # Linear ramp: the newest observation counts three times the oldest.
    return np.linspace(1.0, 3.0, n) if n else np.zeros(0)


class _AsServing:
    """The serving model asked about rows its successor's schema encoded (see
    :func:`observation_matrix`), as it answered them: the values of a categorical feature
    first seen among the observations, coded past its own, are unseen values to it, and the
    fields promoted from its constants are no columns of its."""

    def __init__(self, model: QuantileModel, serving: FeatureSchema, successor: FeatureSchema):
        self.model = model
        n = len(serving.features)
        self.known = [(j, k) for j, (k, wider) in enumerate(zip(serving.n_categories[:n], successor.n_categories))
                      if wider > k]
        self.added = np.arange(n, len(successor.features))

    def predict_quantiles(self, X: np.ndarray, levels: Sequence[float]) -> np.ndarray:
        X = np.delete(X, self.added, axis=1)  # (a copy)
        for j, k in self.known:
            X[X[:, j] >= k, j] = np.nan
        return self.model.predict_quantiles(X, levels)


@dataclasses.dataclass
class _Observations:
    """The observations a retraining uses, oldest first: its candidates are fitted on the
    older ones and judged on the newest ``held_out``."""

    records: list[dict[str, Any]]  # those after the version's cutoff, the newest max_observations
    features: FeatureSchema  # the new version's (see observation_matrix)
    X: np.ndarray  # the usable ones, gross outliers dropped
    y: np.ndarray
    held_out: int
    ratio: np.ndarray  # log runtimes over the serving model's medians
    holdout_shift: int | None  # where the level moved, where every observation since would be held out
    serving: QuantileModel | _AsServing  # the serving model, asked about these rows

    @property
    def fit_rows(self) -> tuple[np.ndarray, np.ndarray]:
        return self.X[:-self.held_out], self.y[:-self.held_out]

    @property
    def held_rows(self) -> tuple[np.ndarray, np.ndarray]:
        return self.X[-self.held_out:], self.y[-self.held_out:]

    def heldout_loss(self, model: QuantileModel) -> np.ndarray:
        """``model``'s loss on each held-out observation."""
        # Pinball loss of log runtimes, per held-out row: in milliseconds one observation
        # far outside the training range (a batch of 100,000 that took 3 ms) outweighed a
        # clear drift on every other row.
        hold_X, hold_y = self.held_rows
        levels = list(MONITOR_LEVELS)
        q = model.predict_quantiles(hold_X, levels)
        return pinball_losses(np.log(hold_y), np.log(np.maximum(q, 1e-300)), levels).mean(axis=1)


@dataclasses.dataclass
class _Candidates:
    """A retraining's candidates by name, fitted on the older observations and scored on the held-out ones."""

    observed: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # each one's observations (X, y, weights)
    remembers: dict[str, str]  # the stored training rows each keeps: "all", "none" or "uncovered"
    unseen_of: dict[str, np.ndarray]  # a candidate's uncovered training rows
    row_losses: dict[str, np.ndarray]  # per held-out row, the serving model's ("current") too
    scores: dict[str, float]  # their means
    training: tuple[np.ndarray, np.ndarray] | None  # the stored training rows (X, y)
    flag_column: int | None  # the models' first-run flag, if any (each kind of run judged apart)


@dataclasses.dataclass
class _Winner:
    """The candidate chosen to serve, refitted with the held-out observations too."""

    name: str
    model: QuantileModel
    X: np.ndarray  # the rows it was refitted on (stored with the new version)
    y: np.ndarray
    fitted_at: float  # time.perf_counter() as its refit began


@dataclasses.dataclass(frozen=True)
class _Deadline:
    """When a retraining fitted in a thread of this process must stop: a thread cannot be
    stopped from outside, so the retraining looks before each fit (and before it stores its
    version) and stops there; it may run past the limit by one fit, and stores nothing then."""

    at: float  # time.monotonic()
    seconds: float  # the limit

    @classmethod
    def after(cls, seconds: float) -> _Deadline:
        """``seconds`` from now (0: never)."""
        return cls(time.monotonic() + seconds if seconds > 0 else math.inf, seconds)

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise RetrainingTimedOut.after(self.seconds)


class Retrainer:
    def __init__(
        self,
        registry: ModelRegistry,
        monitor: AccuracyMonitor,
        enabled: bool = False,
        min_new_observations: int = 200,
        holdout_fraction: float = 0.25,
        training_weight: float = 0.25,
        on_decision: Callable[[dict[str, Any]], None] | None = None,
        max_observations: int = 20_000,
        on_new_version: Callable[[ModelIdentity], Any] | None = None,
        in_worker: bool = False,
        worker_priority: str = DEFAULT_PRIORITY,
        timeout: float = 0.0,
    ):
        """``in_worker``: fit in a separate worker process (:class:`RetrainingWorker`,
        at ``worker_priority``, see ``workers.WORKER_PRIORITIES``), not in this one's threads,
        where the candidates' fits took the CPU and the GIL from the requests served meanwhile.
        ``timeout``: the seconds a retraining may run (0: no limit). The worker is stopped
        there; a thread cannot be, so one fitted in this process stops at its next fit
        after the limit (:class:`_Deadline`), storing nothing."""
        self.on_decision = on_decision
        self.on_new_version = on_new_version  # told of each version a retraining stores
        self.registry = registry
        self.monitor = monitor
        self.decisions = DecisionLog(monitor.log.root)
        self.enabled = enabled
        self.min_new_observations = min_new_observations
        self.holdout_fraction = holdout_fraction
        self.training_weight = training_weight
        self.max_observations = max_observations
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain")
        self.timeout = float(timeout)
        self.worker = RetrainingWorker(self.worker_config(), worker_priority, self.timeout) if in_worker else None
        # Called just before a retraining stores its version (a worker's: whether its service still runs).
        self.before_save: Callable[[], None] | None = None
        self._running: dict[ModelIdentity, Future] = {}
        self._model_locks: dict[ModelIdentity, threading.Lock] = {}
        self._lock = threading.Lock()
        # Set by shutdown (SIGTERM): an /observe still held by the stopping server schedules nothing.
        self._stopped = False

    def backoff_step(self, observations: int, drifted: bool) -> int:
        """New observations to wait for after a try at ``observations`` left the version serving.

        Without drift, another ``min_new_observations``. With drift, as many as a retraining
        holds out (a quarter, at least 10), so that the next try is judged on observations
        the last one never saw; at most ``min_new_observations``.
        """
        if not drifted:
            return self.min_new_observations
        return min(self.min_new_observations, max(MIN_HOLDOUT, int(observations * self.holdout_fraction)))

    def due(self, identity: ModelIdentity, version: int) -> str | None:
        """Why this model should be retrained now, or None.

        A version that a retraining left serving (kept, skipped or failed) is retried only
        once enough new observations arrived (:meth:`backoff_step`), or when drift appears
        where the last try saw none.
        """
        report = self.monitor.report(identity, version)
        drifted = bool(report.get("drifted"))
        # By any worker, about this version: a later one about an older version (a worker's
        # retraining that found this one stored meanwhile) must not lift this one's wait.
        last = self.decisions.last(identity, version)
        waiting = None if last is None else last.get("next_try")
        if isinstance(waiting, dict) and not (drifted and not waiting.get("drifted_then")):
            after, more = waiting.get("after"), waiting.get("more")
            if finite_number(after) and finite_number(more):
                # Counted from the newest observation the decision saw: a count to reach, in
                # the numbering of the process that decided, was out of reach of one restarted
                # after the log rotated (which counts only what is left of it).
                if self.monitor.count_since(identity, version, after, int(more)) < more:
                    return None
            elif report["observations"] < waiting.get("observations", 0):  # a decision stored before 2026-12-01
                return None
        if drifted:
            return "drift"
        if report["observations"] >= self.min_new_observations:
            return "new observations"
        return None

    def maybe_schedule(self, identity: ModelIdentity, version: int) -> Future | None:
        """Retrain ``version`` in the background if it still serves and is due.

        ``version`` is the one that answered a request; a request answered by an older
        version than the one that now serves (here or in another worker) says nothing of the
        newer one, which must not be retrained on the older one's evidence.
        """
        if not self.enabled:
            return None
        try:  # (the caller noticed other workers' changes just before)
            if self.registry.latest(identity).version != version:
                return None
        except ModelNotFound:
            return None
        reason = self.due(identity, version)
        if reason is None:
            return None
        with self._lock:
            if self._stopped:
                # Its observations are recorded: a 500 here made a client send them again, to
                # be counted twice; the model is still due at the next start.
                return None
            running = self._running.get(identity)
            if running is not None and not running.done():
                return running
            future = self._executor.submit(self.retrain, identity, reason, version)
            self._running[identity] = future
            return future

    def forget(self, identity: ModelIdentity) -> None:
        """Let go of what this retrainer keeps of ``identity`` (its lock, its last scheduled
        retraining, its newest decisions): for a deleted model, so that they do not keep an
        entry for every model ever retrained. Safe while a retraining of it runs."""
        # The lock is dropped even while held: the retraining under way keeps its own reference
        # and releases it as it ends. Kept until then, the entry would stay for good where the
        # model is never asked again, the growth this is for. A retraining asked meanwhile makes
        # a lock of its own instead of answering "under way" at once; it is still kept from
        # running beside the first by what holds across processes (the decision log's file lock,
        # the one retraining worker), and where the model was deleted the two cannot land over
        # each other: the deleted model's numbers are never given again (the registry's
        # tombstones), and a version is stored only as its parent's successor (``after``).
        with self._lock:
            self._model_locks.pop(identity, None)
            self._running.pop(identity, None)
        self.decisions.forget(identity)

    def kept(self) -> set[ModelIdentity]:
        """The models this retrainer keeps anything of in memory (see :meth:`forget`)."""
        with self._lock:
            held = self._model_locks.keys() | self._running.keys()
        return held | self.decisions.kept()

    def shutdown(self) -> None:
        with self._lock:  # (one being scheduled is submitted first, and then cancelled or stopped)
            self._stopped = True
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.worker is not None:
            self.worker.shutdown()

    def worker_config(self) -> dict[str, Any]:
        """What a worker process needs to build this retrainer's twin (see :func:`_retrain_job`)."""
        log_store = self.monitor.log
        return {
            "models": str(self.registry.root),
            "observations": str(log_store.root), "max_file_bytes": log_store.max_file_bytes,
            "max_files": log_store.max_files, "window": self.monitor.window, "alpha": self.monitor.alpha,
            "min_observations": self.monitor.min_observations, "min_new_observations": self.min_new_observations,
            "holdout_fraction": self.holdout_fraction, "training_weight": self.training_weight,
            "max_observations": self.max_observations,
        }

    # ------------------------------------------------------------------ the work

    def retrain(self, identity: ModelIdentity, reason: str = "requested", version: int | None = None) -> dict[str, Any]:
        """Retrain ``identity``'s serving version (``version``, if given, must be it), one
        retraining of a model at a time.

        Asked while another retraining of the model is under way (in any worker process),
        it answers ``skipped`` at once, as it does when a newer version was stored since it
        was asked (by another worker, say): the version it was asked about no longer serves.
        """
        asked = self.registry.latest(identity).version if version is None else version
        with self._lock:
            model_lock = self._model_locks.setdefault(identity, threading.Lock())
        decision: dict[str, Any] = {"model_key": identity.key, "reason": reason, "from_version": asked, "at": time.time()}
        # A retraining already under way answers the ones asked meanwhile: they do not wait for
        # it (each waiting request held one of the server's threads, and /observe waited behind them).
        # Such an answer is no decision: neither logged nor counted (an automatic attempt in a
        # worker that does not hold the model's lock counted one on every /observe).
        if not model_lock.acquire(blocking=False):
            decision.update(status="skipped", message="a retraining of this model is under way")
            return decision
        try:
            if self.worker is not None:
                return self._retrain_in_worker(identity, asked, decision)
            with self.decisions.exclusive(identity, wait=False) as mine:
                if not mine:
                    decision.update(status="skipped", message="a retraining of this model is under way in another "
                                                              "worker process")
                    return decision
                return self._retrain_serving(identity, asked, decision)
        finally:
            model_lock.release()

    def _retrain_serving(self, identity: ModelIdentity, asked: int, decision: dict[str, Any]) -> dict[str, Any]:
        """``retrain``, with this process's and the file's lock held."""
        self.registry.maybe_refresh()
        serving = self.registry.latest(identity).version
        decision["from_version"] = serving
        if serving != asked:
            decision.update(from_version=asked, status="skipped",
                            message=f"version {serving} was stored meanwhile and serves now")
            return self._done(identity, decision)
        seen = self.monitor.report(identity, serving)
        newest = self.monitor.newest_observed(identity, serving)
        t0 = time.perf_counter()
        try:
            self._retrain(identity, decision, _Deadline.after(self.timeout))
        except BaseException as exc:
            decision["status"] = "failed"
            decision.setdefault("message", exc.message if isinstance(exc, PredictorError) else repr(exc))
            raise
        finally:
            if decision.get("status") != "retrained":
                self._wait_after(decision, seen, newest)
            decision.setdefault("seconds", time.perf_counter() - t0)  # a kept or failed one's too
            self._done(identity, decision)
        return decision

    def _wait_after(self, decision: dict[str, Any], seen: dict[str, Any], newest: Any) -> None:
        """The version still serves: the next automatic try waits for enough new evidence,
        observations logged after the newest this one saw (``seen``: its accuracy report)."""
        n, drifted = int(seen["observations"]), bool(seen.get("drifted"))
        step = self.backoff_step(n, drifted)
        if drifted and "shift" in decision:
            # It held out fewer, those since the shift: as many more make the next try's
            # (a quarter of 2,450 left a version kept after a shift serving 612 more slow runtimes).
            step = min(step, max(MIN_HOLDOUT, int(decision["shift"]["held_out"])))
        decision["next_try"] = {"observations": n + step, "drifted_then": drifted}
        if newest is not None:
            decision["next_try"].update(after=newest, more=step)

    def _retrain_in_worker(self, identity: ModelIdentity, asked: int, decision: dict[str, Any]) -> dict[str, Any]:
        """``retrain`` in the worker process, with this process's lock of the model held; the
        worker's decisions are counted here (the worker logged them)."""
        assert self.worker is not None
        seen = self.monitor.report(identity, asked)
        newest = self.monitor.newest_observed(identity, asked)
        t0 = time.perf_counter()
        try:
            out = self.worker.run(identity, decision["reason"], asked)
        except WorkerLost as exc:
            if exc.stopping:
                raise ServiceStopping("the service stopped before the retraining finished") from None
            self.registry.maybe_refresh()
            last = self.decisions.last(identity, asked)
            if last is not None and last.get("at", -math.inf) >= decision["at"]:
                # It died after logging its decision: that decision answers.
                self._counted(last)
                if last.get("status") == "retrained":
                    self._stored_by_worker(identity)
                return last
            # It logged nothing: the decision is this process's to log, with the wait after it
            # (a worker killed for its memory at each try would otherwise be tried at each /observe).
            decision.update(status="failed", message=exc.message, seconds=time.perf_counter() - t0)
            try:
                serving = self.registry.latest(identity).version
            except ModelNotFound:
                serving = asked
            if serving != asked:  # it had stored its version: served, if not described
                decision["message"] += f"; version {serving} was stored meanwhile and serves now"
                self._stored_by_worker(identity)
            else:
                self._wait_after(decision, seen, newest)
            self._done(identity, decision)
            raise
        for name, level, text, trace in out["log"]:  # its lines, in this process's log (the worker has none)
            logger = logging.getLogger(name)
            if logger.isEnabledFor(level):
                # A traceback as the record's own (a JSON line's "exception", not in its message).
                record = logger.makeRecord(name, level, __file__, 0, "%s", (text,), None)
                record.exc_text = trace
                logger.handle(record)
        for made in out["decisions"]:
            self._counted(made)
        if out["error"] is not None:
            error = PredictorError(out["error"]["message"], out["error"]["field"])
            error.status_code = out["error"]["status_code"]
            raise error
        decision = out["decision"]
        if decision["status"] == "retrained":
            self._stored_by_worker(identity)
        return decision

    def _stored_by_worker(self, identity: ModelIdentity) -> None:
        """What storing a version does in this process, for a version the worker stored: it
        serves from the next request on, the older versions' cache entries go, and the
        newest versions alone are kept (``on_new_version``)."""
        self.registry.maybe_refresh()
        if self.registry.on_change is not None:
            self.registry.on_change(identity)
        if self.on_new_version is not None:
            self.on_new_version(identity)

    def _retrain(self, identity: ModelIdentity, decision: dict[str, Any], deadline: _Deadline) -> None:
        """Fill ``decision`` in about its ``from_version``: kept, skipped or retrained (the new
        version stored); past ``deadline``, raise :class:`RetrainingTimedOut` before the next fit or the store."""
        t0 = time.perf_counter()
        # The version asked about and found serving, not whichever serves by now: a version
        # stored meanwhile (a training) was retrained in its place, unasked, and its decision
        # carried the asked version's wait (see _store, which answers skipped then).
        current = self.registry.load(identity, decision["from_version"])
        obs = self._observations(identity, current, decision)
        if obs is None:
            return
        candidates = self._candidates(identity, current, obs, decision, deadline)
        winner = self._choose(identity, current, obs, candidates, decision, deadline)
        if winner is not None:
            deadline.check()
            self._store(identity, current.meta, obs, winner, t0, decision)

    def _observations(self, identity: ModelIdentity, current: LoadedModel,
                      decision: dict[str, Any]) -> _Observations | None:
        """The observations to retrain ``current`` on and how many of them to hold out; None
        where they are too few (``decision`` says so)."""
        meta = current.meta
        # A retrained version was fitted on the observations up to its cutoff, and stores
        # them among its training rows: counting them again would weigh them twice, and
        # holding them out would judge the version on rows it was fitted on. A trained
        # version is judged on what came after its training: observations made of older
        # versions describe the world its training traces replaced.
        through = meta.extra.get(OBSERVED_THROUGH)
        if not isinstance(through, (int, float)) or isinstance(through, bool):
            through = meta.created_at
        # And every observation of this version (or a later one), however it is stamped: each
        # came after it was stored, and a clock set back since (or a version stored on a host
        # whose clock was ahead) stamped them all earlier than its creation: a drifted model
        # was skipped with "too few observations (0)" until the clock caught up again.
        records = [r for r in self.monitor.log.read(identity, after=through, version=meta.version)
                   if r["ts"] > through or r["version"] >= meta.version]
        if len(records) > self.max_observations:
            # Each candidate is fitted on them: 100,000 observations took 45 s to 140 s a
            # retraining, the newest 20,000 about 7 s.
            decision["older_observations_left_out"] = len(records) - self.max_observations
            records = records[-self.max_observations:]
        decision.update(from_version=meta.version, observations=len(records))
        features, X_obs, y_obs = observation_matrix(meta.features, records)
        serving = (current.model if features.n_categories == meta.features.n_categories
                   else _AsServing(current.model, meta.features, features))
        gross = gross_outliers(X_obs, y_obs, features.kinds)
        if gross.any():  # dropped as training drops them (a hung request, say)
            decision["gross_outliers_dropped"] = int(gross.sum())
            X_obs, y_obs = X_obs[~gross], y_obs[~gross]
        n_hold = max(MIN_HOLDOUT, int(len(y_obs) * self.holdout_fraction))
        # The runtimes' level against the serving model, oldest first (the medians once for all).
        ratio = np.log(y_obs) - np.log(serving.predict_quantiles(X_obs, [0.5])[:, 0]) if len(y_obs) else y_obs
        shift_all = level_shift(ratio)
        moved = shift_all is not None and shift_all >= len(y_obs) - n_hold
        if moved:
            # Every observation since the level moved would be held out, and no candidate fitted
            # on what is older could learn the new level: a drifted serving version then took a
            # candidate a hair better on the old level's rows, and the drift stayed (a scheduler
            # simulation: 2,600 observations, the newest 107 1.35x slower, the new version's
            # median covered 16% of runtimes). The newest half of them is held out instead.
            n_hold = max(MIN_HOLDOUT, (len(y_obs) - shift_all) // 2)
            decision["shift"] = {"observations_since": int(len(y_obs) - shift_all), "held_out": int(n_hold)}
        if len(y_obs) < n_hold + 20:
            decision.update(status="skipped", message=f"too few observations ({len(y_obs)}) to retrain and validate")
            return None
        return _Observations(records, features, X_obs, y_obs, n_hold, ratio, shift_all if moved else None, serving)

    @staticmethod
    def _candidate_observations(obs: _Observations,
                                training: bool) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each candidate's observations (X, y, weights) among those fitted on, by its name;
        with ``training``, one fitted on the stored training rows too."""
        fit_X, fit_y = obs.fit_rows
        observed: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
            "observations": (fit_X, fit_y, _recency_weights(len(fit_y))),
        }
        n_recent = len(fit_y) // 2
        if n_recent >= 20:
            # After an abrupt shift only the newest observations describe the present.
            observed["recent observations"] = (fit_X[-n_recent:], fit_y[-n_recent:], np.ones(n_recent))
        # Where the runtimes' level against the serving model clearly moved at one point, the
        # observations since then: the newest half alone still mixed in the old level when the
        # shift was less than half the observations ago (after 1,000 observations and 500 at
        # 1.5x, fresh runtimes came out 1.185 times the new version's medians).
        # (Where the holdout was moved, the rows since the shift fitted on are too few for a
        # shift to be found among them: it is where all the observations show it.)
        start = obs.holdout_shift if obs.holdout_shift is not None else level_shift(obs.ratio[:len(fit_y)])
        if start is not None and start < len(fit_y) and len(fit_y) - start != n_recent:
            observed["since the shift"] = (fit_X[start:], fit_y[start:], np.ones(len(fit_y) - start))
        if training:
            observed["training+observations"] = observed["observations"]
        return observed

    def _with_training(self, training: tuple[np.ndarray, np.ndarray], X: np.ndarray, y: np.ndarray, w: np.ndarray,
                       keep: np.ndarray, weight: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``X``, ``y`` and their weights ``w`` after the stored training rows ``keep`` (of ``training``)."""
        # All training rows beside the observations count ``training_weight`` each (where
        # both are, the observations say the present); the rows where no observation is
        # (``weight``) count as an observation does: they alone tell the fit of that region.
        X0, y0 = training
        return (np.vstack([X0[keep], X]), np.concatenate([y0[keep], y]),
                np.concatenate([np.full(int(keep.sum()), self.training_weight if weight is None else weight), w]))

    def _candidates(self, identity: ModelIdentity, current: LoadedModel, obs: _Observations,
                    decision: dict[str, Any], deadline: _Deadline) -> _Candidates:
        """The candidates fitted on the older observations, and their and the serving model's
        losses on the held-out ones (in ``decision``, with the candidates dropped)."""
        meta = current.meta
        stored = self.registry.training_data(identity, meta.version)
        X0, y0 = stored if stored is not None and len(stored[1]) else (None, None)
        if X0 is not None:  # as the new version's schema reads them (observation_matrix)
            X0 = meta.features.widen_rows(X0, obs.features)
        training = None if X0 is None else (X0, y0)
        kinds = obs.features.kinds
        # Derived or stated by the traces, the flag is a column of its own: judged pooled, first
        # runs of a model of stated flags were forgotten as those of a derived one were.
        flag_column = obs.features.regime_column
        observed = self._candidate_observations(obs, training is not None)
        row_losses = {"current": obs.heldout_loss(obs.serving)}
        # Stored training rows in each candidate: all of them, none, or (``"uncovered"``) those
        # the candidate's observations do not cover.
        training_rows: dict[str, int] = {}
        remembers: dict[str, str] = {}
        unseen_of: dict[str, np.ndarray] = {}  # a candidate's uncovered training rows
        x0_median: np.ndarray | None = None  # the serving model's medians of the training rows
        for name, (X, y, w) in observed.items():
            deadline.check()
            if name == "training+observations":
                remembers[name] = "all"
                X, y, w = self._with_training(training, X, y, w, np.ones(len(y0), dtype=bool))
                model = self._new_model(meta, obs.features).fit(X, y, sample_weight=w)
                training_rows[name] = len(y0)
            else:
                remembers[name] = "none"
                model = self._new_model(meta, obs.features).fit(X, y, sample_weight=w)
                training_rows[name] = 0
                if X0 is not None:
                    if x0_median is None:  # once per retraining, for every candidate
                        x0_median = obs.serving.predict_quantiles(X0, [0.5])[:, 0]
                    unseen = uncovered_rows(X0, X, kinds, obs.serving, x0_median)
                    if unseen.any() and not _follows(model, obs.serving, X, X0[unseen], flag_column):
                        # Fitted on the observations alone it would forget what no one observed:
                        # the training rows there stay.
                        remembers[name] = "uncovered"
                        deadline.check()
                        model = self._new_model(meta, obs.features).fit(
                            *self._with_training(training, X, y, w, unseen, float(w.mean())))
                        training_rows[name] = int(unseen.sum())
                        unseen_of[name] = unseen
                        if not _keeps_or_follows(model, obs.serving, X, X0[unseen], flag_column):
                            # Even so it makes something of its own of what no one observed.
                            decision.setdefault("candidates_dropped", {})[name] = (
                                "departs from the serving model where nothing was observed")
                            del training_rows[name]
                            continue
            row_losses[name] = obs.heldout_loss(model)
        scores = {name: float(v.mean()) for name, v in row_losses.items()}
        decision["heldout_log_pinball"] = scores
        decision["heldout_rows"] = int(obs.held_out)
        decision["training_rows"] = training_rows
        return _Candidates(observed, remembers, unseen_of, row_losses, scores, training, flag_column)

    def _choose(self, identity: ModelIdentity, current: LoadedModel, obs: _Observations, candidates: _Candidates,
                decision: dict[str, Any], deadline: _Deadline) -> _Winner | None:
        """The candidate to serve, refitted; None where the serving version stays (``decision`` says why)."""
        scores, row_losses = candidates.scores, candidates.row_losses
        best = min(scores, key=scores.get)
        if best == "current":
            decision.update(status="kept", message="no candidate beat the serving model on recent observations"
                            if len(row_losses) > 1 else "every candidate was dropped (candidates_dropped)")
            return None
        # The best of several candidates on the same held-out rows beats the serving model by
        # chance more often than one does: the margin grows with their number, so that the
        # best of k passes by chance as rarely as one candidate passes the one-standard-error
        # rule (on an unchanging stream 7 of 30 retrainings stored a version, 4 of them worse
        # on fresh runtimes, with the plain rule and up to four candidates: benchmarks/retraining.py --churn).
        margin = float(ndtri(1.0 - ndtr(-SELECTION_SE) / max(len(row_losses) - 1, 1)))
        if (not clearly_lower(row_losses[best] - row_losses["current"], margin)
                and not self.monitor.report(identity, current.meta.version).get("drifted")):
            # Any candidate beats the serving model on some draw of a few dozen held-out rows:
            # on a stream that had not changed, a version every few hundred observations (16
            # versions from 3,000 runtimes, each kept on disk), each better than the last by
            # 0.1% on 28 rows. Unless the drift test says the serving model is off, a new
            # version must beat it by more than one standard error of the paired per-row
            # difference (the one-standard-error rule, as in modelling). Not when it is: on
            # a 60-request LLM trace whose runtimes rose 1.5x, the first tries hold out 10 to
            # 20 rows, and waiting for the margin left coverage at 0 for three chunks more.
            decision.update(status="kept", candidate=best,
                            message=f"the best candidate ({best}) was not better than the serving model on recent "
                                    "observations by more than a standard error (and no drift is detected)")
            return None
        return self._refit(identity, current, obs, candidates, best, margin, decision, deadline)

    def _refit(self, identity: ModelIdentity, current: LoadedModel, obs: _Observations, candidates: _Candidates,
               best: str, margin: float, decision: dict[str, Any], deadline: _Deadline) -> _Winner | None:
        """``best`` refitted with the held-out observations too, or the next best that beats the
        serving model by ``margin`` (or at all, under drift); None where none may serve."""
        meta, scores, row_losses = current.meta, candidates.scores, candidates.row_losses
        remembers, unseen_of, training = candidates.remembers, candidates.unseen_of, candidates.training
        hold_X, hold_y = obs.held_rows
        # The winner is refitted with the held-out rows too before it serves. Refitted, one
        # that keeps only the uncovered training rows may make something of its own of them
        # after all: then the next best that beats the serving model as clearly is refitted
        # (a drifted model kept serving at a held-out loss of 0.146 beside candidates at 0.045
        # and 0.065, the best, at 0.032, having failed this check).
        drifted = None
        for name in sorted((n for n in scores if n != "current" and scores[n] < scores["current"]), key=scores.get):
            if name != best and not clearly_lower(row_losses[name] - row_losses["current"], margin):
                if drifted is None:
                    drifted = bool(self.monitor.report(identity, meta.version).get("drifted"))
                if not drifted:
                    break
            X, y, w = candidates.observed[name]
            X = np.vstack([X, hold_X])
            y = np.concatenate([y, hold_y])
            w = np.concatenate([w, np.full(len(hold_y), w[-1] if len(w) else 1.0)])
            if remembers[name] == "all":
                X, y, w = self._with_training(training, X, y, w, np.ones(len(training[1]), dtype=bool))
            elif remembers[name] == "uncovered":
                observed_X = X
                X, y, w = self._with_training(training, X, y, w, unseen_of[name], float(w.mean()))
            deadline.check()
            t_fit = time.perf_counter()
            model = self._new_model(meta, obs.features).fit(X, y, sample_weight=w)
            if remembers[name] == "uncovered" and not _keeps_or_follows(model, obs.serving, observed_X,
                                                                       training[0][unseen_of[name]],
                                                                       candidates.flag_column):
                decision.setdefault("candidates_dropped", {})[name] = (
                    "refitted with the held-out observations, departs from the serving model where nothing "
                    "was observed")
                continue
            return _Winner(name, model, X, y, t_fit)
        decision.update(status="kept", candidate=best,
                        message=f"the best candidate ({best}), refitted with the held-out observations, departs "
                                "from the serving model where nothing was observed, and no other beat the "
                                "serving model as clearly")
        return None

    def _store(self, identity: ModelIdentity, meta: ModelVersion, obs: _Observations, winner: _Winner, t0: float,
               decision: dict[str, Any]) -> None:
        """Store ``winner`` as the version after ``meta`` (retrained), unless another version
        serves by now (skipped)."""
        best, model, y = winner.name, winner.model, winner.y
        # The new version's own held-out figures (on the rows it was fitted on), not its parent's.
        metrics = {**model.cv_summary(), "rows_used": int(len(y)), "rows_dropped": 0,
                   "training_seconds": time.perf_counter() - winner.fitted_at,
                   "retrain": {k: v for k, v in decision.items() if k != "at"}}
        if "columns" in meta.metrics:
            metrics["columns"] = obs.features.column_names
        if unseen := model.unseen_categories():  # as a training's: how a value it never saw is answered
            metrics["unseen_categories"] = {obs.features.column_names[j]: v for j, v in unseen.items()}
        new_meta = ModelVersion(
            identity=identity, version=0, created_at=time.time(), target=meta.target, features=obs.features,
            quantiles=meta.quantiles, algorithm=meta.algorithm, family=model.family_, params=meta.params,
            data={**meta.data, "rows_used": int(len(y)), "observations_used": int(len(obs.y))},
            metrics=metrics,
            data_hash=meta.data_hash, extra={"retrained_from": meta.version, "candidate": best,
                                             OBSERVED_THROUGH: max(r["ts"] for r in obs.records)},
        )
        self.registry.maybe_refresh()
        serving = self.registry.latest(identity).version
        if serving != meta.version:  # another worker stored a version while this one fitted
            decision.update(status="skipped", candidate=best,
                            message=f"version {serving} was stored meanwhile and serves now")
            return
        decision["candidate"] = best  # a full disk, say, fails the save: the decision names what failed
        if self.before_save is not None:
            self.before_save()
        try:
            # Only as the successor of the version it was built from: a training may have taken
            # the next number and still be writing its files, which `latest` above cannot see.
            saved = self.registry.save(new_meta, model, training_data=(winner.X, winner.y), after=meta.version)
        except VersionConflict as exc:
            decision.update(status="skipped", message=f"{exc.message}: it serves, not this retraining")
            return
        decision.update(status="retrained", to_version=saved.version, seconds=time.perf_counter() - t0)
        if self.on_new_version is not None:
            self.on_new_version(identity)

    @staticmethod
    def _new_model(meta: ModelVersion, features: FeatureSchema) -> QuantileModel:
        """A model of ``meta``'s algorithm, for rows ``features`` encodes (the new version's)."""
        return QuantileModel(features.kinds, features.n_categories, meta.algorithm, params=meta.params,
                             regime_column=features.regime_column)

    def _counted(self, decision: dict[str, Any]) -> dict[str, Any]:
        """Tell ``on_decision`` (the Prometheus counter); every decision passes here once, and
        every one is logged (:meth:`_done`), so that the counter and the log agree."""
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision

    def _done(self, identity: ModelIdentity, decision: dict[str, Any]) -> dict[str, Any]:
        self.registry.maybe_refresh()
        stored = {v.version for v in self.registry.versions(identity)}
        # The model deleted, not only the version retrained (PREDICTOR_KEEP_VERSIONS deletes it as
        # a training stores a newer one: that retraining's decision was neither logged nor counted).
        model_deleted = not stored or self.decisions.lock_removed(identity) is not False
        if decision["from_version"] not in stored and decision.get("to_version") not in stored and model_deleted:
            # Deleted meanwhile, its decisions with it; the identity may have been trained
            # again since, under new version numbers that this decision says nothing about.
            # Nor is it counted, nor an error (it failed with "no model" where the delete
            # came first): an ordinary delete raised a false alarm.
            log.info("retraining %s ended after its model was deleted: no decision", identity.key)
            return decision
        if decision["status"] == "failed":
            log.error("retraining %s failed: %s", identity.key, decision["message"])
        else:
            log.info("retraining %s: %s", identity.key, decision["status"])
        self._counted(decision)
        try:  # a background retraining answers no one: its decisions are how it is seen
            self.decisions.append(identity, decision)
        except PredictorError as exc:
            log.warning("cannot store a retraining decision of %s: %s", identity.key, exc.message)
        return decision


class WorkerLost(PredictorError):
    """The retraining worker's answer never came: it died, was stopped, could not be started,
    or its answer could not be read."""

    status_code = 500

    def __init__(self, message: str, stopping: bool = False):
        super().__init__(message)
        self.stopping = stopping


class WorkerNotStarted(WorkerLost):
    """No retraining worker could be started (a spawn refused under load): a 503, as a
    training's is, logged as a failed try that waits as any does."""

    status_code = 503


class RetrainingTimedOut(WorkerLost):
    """The retraining ran past the time limit, and was stopped (its worker, as a training's
    is, or at its next fit in a thread of the serving process)."""

    status_code = 422

    @classmethod
    def after(cls, seconds: float) -> RetrainingTimedOut:
        return cls(stopped_for_time("retraining", seconds,
                                    "retrain on fewer observations (PREDICTOR_RETRAIN_MAX_OBSERVATIONS)"))


class RetrainingWorker:
    """Retrainings run in one separate worker process (at PREDICTOR_TRAINING_PRIORITY), one at
    a time: spawned on first use, as the training worker is (:class:`WorkerPool`), and replaced if it dies.

    Its registry, observation log and decision log are the service's folders, read and
    written as another worker process of the service would; its retrainer is built once
    and kept, so that each retraining reads on from where the last one read.
    """

    def __init__(self, config: dict[str, Any], priority: str = DEFAULT_PRIORITY, timeout: float = 0.0):
        self.config = config
        # Seconds a retraining may take, from the time the worker begins it (0: no limit; see
        # WorkerPool.call): one that never ends would hold every later retraining of every model.
        self.timeout = float(timeout)
        self._workers = WorkerPool("retraining", priority)
        self._job_lock = threading.Lock()

    def run(self, identity: ModelIdentity, reason: str, version: int) -> dict[str, Any]:
        """Retrain ``version`` of ``identity`` in the worker and wait for it: ``decision``
        (``retrain``'s answer), ``decisions`` (those it logged), ``error`` (where it raised,
        as ``status_code``, ``message`` and ``field``; else None) and ``log``, its log lines
        (logger name, level, text). Raises :class:`WorkerLost` where no answer came back."""
        # One job in the pool at a time, so that a worker that dies was running the job that
        # learns of it: one queued behind it, never started, failed with it (and waited, as
        # after a failed try, for new evidence it did not need).
        with self._job_lock:
            outcome = self._workers.call(_retrain_job, self.config, identity.as_dict(), reason, version,
                                         timeout=self.timeout)
        match outcome:
            case Finished(value=out):
                return out
            case TimedOut():
                log.warning("a retraining of %s ran past %g s (PREDICTOR_TRAINING_TIMEOUT_S): its worker was stopped",
                            identity.key, self.timeout)
                raise RetrainingTimedOut.after(self.timeout)
            case ShutDown():
                raise WorkerLost("the service is stopping", stopping=True)
            case WorkerDied(message=message):
                raise WorkerLost(message)
            case CouldNotStart(reason=why):
                raise WorkerNotStarted(f"the retraining worker could not be started ({why}): retry later")
            case Failed(error=exc):
                raise WorkerLost(f"retraining failed: {type(exc).__name__}: {exc}")
        raise AssertionError(f"unexpected outcome {outcome!r}")  # (call gives a fresh worker what was not started)

    @property
    def pool(self) -> ProcessPoolExecutor | None:
        """The worker's pool (None before the first retraining and once stopped)."""
        return self._workers.pool

    def shutdown(self) -> None:
        """Stop the worker now; a retraining under way is abandoned, storing nothing."""
        self._workers.close()


class _KeptLog(logging.Handler):
    """A worker's log lines, kept for its service to log: the worker has no log of its own
    (the service's decisions were never seen in its log otherwise)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, int, str, str | None]] = []  # logger, level, message, traceback

    def emit(self, record: logging.LogRecord) -> None:
        trace = "".join(traceback.format_exception(*record.exc_info)).rstrip() if record.exc_info else None
        self.lines.append((record.name, record.levelno, record.getMessage(), trace))


# The retrainer of this retraining worker process, and its kept log, made by its first job.
_worker_retrainer: Retrainer | None = None
_worker_log: _KeptLog | None = None


def _orphaned() -> None:
    """Refuse to store a version once the service that asked for it is gone (it was killed:
    it could not stop this process first); the version would serve a restarted service with
    no decision that says where it came from."""
    if server_gone():
        raise PredictorError("the service stopped before the retraining finished")


def _retrain_job(config: dict[str, Any], identity: dict[str, str], reason: str, version: int) -> dict[str, Any]:
    """Runs in the retraining worker; errors travel back as data, not as pickled exceptions."""
    global _worker_retrainer, _worker_log
    if _worker_log is None:
        _worker_log = _KeptLog()
        package = logging.getLogger(__name__.rsplit(".", 1)[0])
        package.addHandler(_worker_log)
        package.setLevel(logging.DEBUG)  # the service's own level filters the lines it logs
        package.propagate = False
    _worker_log.lines = []
    made: list[dict[str, Any]] = []
    model = ModelIdentity.from_parts(identity)
    out: dict[str, Any] = {"decision": None, "decisions": made, "error": None, "log": _worker_log.lines}
    try:
        if _worker_retrainer is None:
            monitor = AccuracyMonitor(
                ObservationLog(Path(config["observations"]), config["max_file_bytes"], config["max_files"], create=False),
                config["window"], config["alpha"], config["min_observations"],
            )
            # Nor made nor tidied: the service made its folder and tidies it; one gone under
            # it is not made again here, empty (see ModelRegistry). One model loaded at a
            # time: the service holds its models; this process, the one it retrains.
            registry = ModelRegistry(Path(config["models"]), 1, scan=False, create=False)
            _worker_retrainer = Retrainer(
                registry, monitor, min_new_observations=config["min_new_observations"],
                holdout_fraction=config["holdout_fraction"], training_weight=config["training_weight"],
                max_observations=config["max_observations"],
            )
            _worker_retrainer.before_save = _orphaned
        retrainer = _worker_retrainer
        retrainer.on_decision = made.append
        try:
            out["decision"] = retrainer.retrain(model, reason, version)
        finally:
            retrainer.on_decision = None
            # Read again from the log by the next job: the service may delete the model meanwhile.
            retrainer.monitor.forget(model)
            retrainer.forget(model)  # (one job at a time here: none runs beside it)
    except PredictorError as exc:
        out["error"] = {"status_code": exc.status_code, "message": exc.message, "field": exc.field}
    except Exception as exc:  # noqa: BLE001 - as a 500 in the service, with what it was
        log.exception("retraining %s failed", model.key)
        out["error"] = {"status_code": 500, "message": f"retraining failed: {type(exc).__name__}: {exc}", "field": None}
    return out
