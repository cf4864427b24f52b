"""Watching accuracy: durable observations, rolling coverage per model version, drift.

Observations (traces with their measured runtime) are appended to per-model
JSONL files under ``observations/`` with the quantiles the serving model
predicted for them, so accuracy survives restarts and retraining can use them.
Every worker process follows the same files: what one worker observes counts in
the accuracy, drift and retraining of all of them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterable

import numpy as np
import orjson
from scipy.special import gammaln  # scipy.special: loaded by the service anyway

from .atomic import NotRegularFile, make_folder, open_regular, read_regular, regular_file_fd, sync_folder
from .errors import StorageError, writing
from .identity import ModelIdentity
from .modeling import EVAL_LEVELS, error_ratio, pinball_loss
from .traces import MAX_RUNTIME, MIN_RUNTIME, dumps_json, is_runtime, read_json_lines

log = logging.getLogger(__name__)

MONITOR_LEVELS = EVAL_LEVELS  # 0.05 ... 0.99
# Central intervals formed by symmetric pairs of the monitored levels.
MONITOR_INTERVALS = {"0.5": (0.25, 0.75), "0.8": (0.1, 0.9), "0.9": (0.05, 0.95)}

# The clock ticks runtimes may be recorded to, coarsest first (ms).
CLOCK_TICKS = tuple(m * 10.0 ** k for k in range(3, -4, -1) for m in (5.0, 2.0, 1.0))
# A window of fewer observations is not taken to be on a clock's ticks: three runtimes of
# 2000 ms and 3000 ms would read as a clock of a second.
MIN_TICK_OBSERVATIONS = 20
# A quantile within this share of the tick of an observed runtime on the tick is taken as
# that value: a model of runtimes on the ticks answers a value that many runs take (3 ms)
# a hair below or above it (2.997 ms, 3.004 ms), so whether it covers those runs is a tie.
TIE_TICKS = 0.05


def clock_tick(y: np.ndarray) -> float | None:
    """The coarsest of :data:`CLOCK_TICKS` that every runtime of ``y`` is a whole number of,
    at least one, or None: runtimes not on a clock's ticks (or fewer than
    :data:`MIN_TICK_OBSERVATIONS`).

    A runtime under half a tick is none of it: read as 0 ticks (1e-12 ms is 2e-16 of a 5 s
    tick), a window of such runtimes was on a 5,000 ms clock, each quantile under 250 ms
    tied with them, and their coverage read as each level's, however far off.

    A runtime is a whole number of ticks within rounding: a billionth of its count of ticks,
    at most a thousandth of a tick. (A billionth of any count: every runtime of a million ms
    or more, off any clock, was a whole number of 0.001 or 0.002 ms, and of 1e10 ms of 20 ms.)"""
    y = np.asarray(y, dtype=np.float64)

    def whole(tick: float) -> bool:
        ticks = y / tick
        counted = np.rint(ticks)
        return bool(np.all((counted >= 1) & (np.abs(ticks - counted) <= 1e-9 * np.clip(ticks, 1.0, 1e6))))

    # Every tick is a whole number of the finest: runtimes off it (a clock's continuous
    # readings, the common case) are told in one pass, not one per tick.
    if len(y) < MIN_TICK_OBSERVATIONS or not whole(CLOCK_TICKS[-1]):
        return None
    return next(tick for tick in CLOCK_TICKS if whole(tick))


def _hair(tick: float | None) -> float:
    """How near a runtime on the clock's ``tick`` a quantile ties with it (0: no clock)."""
    return 0.0 if tick is None else TIE_TICKS * tick


def covered(y: np.ndarray, q: np.ndarray, tick: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Whether each quantile (``q``: observations by levels) surely covers its observation,
    and whether it may: the two differ only where the runtimes are on a clock's ``tick``
    and a quantile lies within :data:`TIE_TICKS` of a tick of its runtime (a tie)."""
    hair = _hair(tick)
    y = np.asarray(y, dtype=np.float64)[:, None]
    return y + hair <= q, y - hair <= q


def tie_broken_coverage(y: np.ndarray, q: np.ndarray, tick: float | None) -> np.ndarray:
    """The coverage of each monitored level (``q``: observations by levels), as near the
    level as breaking the ties allows: between the share surely covered and the share that
    may be (see :func:`covered`)."""
    sure, maybe = covered(y, q, tick)
    return np.clip(np.asarray(MONITOR_LEVELS, dtype=np.float64), sure.mean(axis=0), maybe.mean(axis=0))


def coverage_p_value(sure: int, maybe: int, n: int, level: float) -> float:
    """The binomial test of a level's coverage where ``sure`` of ``n`` observations are
    covered for sure and ``maybe`` may be (ties): a coverage is off only where no way of
    breaking the ties makes it the level's, tested at the count nearest it."""
    if sure > level * n:
        return binomial_test(sure, n, level)
    if maybe < level * n:
        return binomial_test(maybe, n, level)
    return 1.0


def _is_quantile(v: Any) -> bool:
    """A runtime a model may answer: within 100 times the runtimes training accepts (101 times:
    the bound itself comes back rounded, 9.999999999999987e-15 for 1e-14)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and MIN_RUNTIME / 101 <= v <= MAX_RUNTIME * 101


def _usable(record: Any) -> bool:
    """Whether a line of the log is an observation as :meth:`AccuracyMonitor.record` writes it.

    Anything else (a log edited by hand, or written before /observe checked the runtime's
    range) is skipped rather than allowed to break accuracy reports and retraining.
    """
    if not isinstance(record, dict):
        return False
    q = record.get("q")
    return (
        is_runtime(record.get("runtime_ms"))
        and isinstance(q, list) and len(q) == len(MONITOR_LEVELS)
        # Runtimes, non-decreasing, as a model answers (quantiles of 1e308 made the pinball
        # loss 8.8e306; decreasing ones were counted as coverage).
        and all(_is_quantile(v) for v in q) and all(a <= b for a, b in zip(q, q[1:]))
        # JSON's true is neither a time nor a version, though Python reads it as 1.
        and isinstance(record.get("trace"), dict) and type(record.get("ts")) in (int, float)
        and type(v := record.get("version")) is int and v >= 1
        # Its place in its /observe batch (logs written before it was stored have none).
        and (type(i := record.get("i", 0)) is int and 0 <= i < 2**62)
    )


def _expect(record: dict[str, Any]) -> float:
    """An observation's predicted mean, NaN where its record holds none (a log written
    before it was stored) or one no model answers: the observation counts all the same."""
    e = record.get("e")
    return float(e) if _is_quantile(e) else math.nan


def _error(record: dict[str, Any]) -> float:
    """An observation's predicted standard deviation, NaN where its record holds none (a
    log written before it was stored) or one no model answers."""
    s = record.get("s")
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) and 0 <= s <= MAX_RUNTIME * 101 else math.nan


# A model's log files are numbered from 1, six digits at least (obs-000001.jsonl): in order of
# their numbers, not of their names, or obs-1000000 would pass for older than obs-999999.
_LOG_FILE = re.compile(r"obs-([0-9]{1,18})\.jsonl")


def _first_run(record: dict[str, Any]) -> float:
    """Whether the model took the observation for its shape's first run (1 or 0; NaN: not stored)."""
    v = record.get("f")
    return float(v) if v.__class__ in (int, float) and v in (0, 1) else math.nan


def _log_number(name: str) -> int:
    return int(_LOG_FILE.fullmatch(name).group(1))


def _log_names(names: Iterable[str]) -> list[str]:
    """The log files among ``names``, oldest first."""
    return sorted(filter(_LOG_FILE.fullmatch, names), key=_log_number)


def refuse_linked_folder(d: Path, what: str) -> None:
    """Raise :class:`StorageError` where ``d``, a model's folder of observations, is a symbolic
    link: written through, it appended to (and a delete of the model removed) files wherever
    the link led, outside the data directory. ``what``: what could not be stored."""
    if d.is_symlink():
        raise StorageError(f"{what} cannot be stored: their folder {d.name} in the data directory is a symbolic "
                           "link, which the service does not follow")


def _parse(data: bytes) -> list[dict[str, Any]]:
    return _whole_appends(read_json_lines(data, _usable))


_STAMPED = b'{"ts":'


def _lines_after(data: bytes, after: float, version: int | None = None) -> bytes:
    """The lines of ``data`` less those stamped at or before ``after`` (``{"ts":<time>,`` first,
    as :meth:`ObservationLog.append` stamps them), unparsed; with ``version``, less only
    those of an older version (:func:`_of_version`).

    A retraining reads the observations after its version's cutoff; the rest of the log,
    parsed whole into records, held 26 MB per 8 MB of log at the peak (192,000 records at the
    default rotation, 8 files of 8 MB) in the retraining worker, which its memory then kept.
    One append's records share one stamp, so an append is left out whole or kept whole
    (see :func:`_whole_appends`)."""
    if _STAMPED not in data:
        return data
    kept = []
    for line in data.split(b"\n"):
        if line.startswith(_STAMPED):
            end = line.find(b",", len(_STAMPED))
            try:
                if end > 0 and float(line[len(_STAMPED):end]) <= after and not _of_version(line, version):
                    continue
            except ValueError:  # not a number there: parsed, and judged, as any line is
                pass
        kept.append(line)
    return b"\n".join(kept)


_VERSION_KEY = b',"version":'


def _of_version(line: bytes, version: int | None) -> bool:
    """Whether a stamped line may be an observation of ``version`` or a later one (kept to be
    parsed and judged; False without ``version``). Its version comes right after its stamp
    and its place in its batch (``{"ts":<time>,"i":<i>,"version":<n>,``, as
    :meth:`AccuracyMonitor.record` writes it); a line that does not say it there is kept."""
    if version is None:
        return False
    start = line.find(_VERSION_KEY, 0, 96)
    if start < 0:
        return True
    start += len(_VERSION_KEY)
    end = line.find(b",", start, start + 24)
    try:
        return int(line[start:end]) >= version
    except ValueError:
        return True


def _whole_appends(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` less those of an append cut short by a crash.

    An append's first record says how many it holds (``n``; see :meth:`AccuracyMonitor.record`).
    One write to a regular file is not atomic against a kill: the kernel stops it at a page,
    and the log kept the first 11,219 of a request's 50,000 observations as whole lines,
    counted after the restart (and again when the client retried the unanswered request).
    Readers wait for appends under way (see :meth:`ObservationLog.read_span`), so an append
    whose last record is missing is one that will never end: it is skipped whole. Records
    logged before appends were counted have no ``n`` and are read as they are.
    """
    out: list[dict[str, Any]] = []
    append: list[dict[str, Any]] | None = None
    size = last = 0
    for r in records:
        n, i = r.get("n"), r.get("i", 0)
        if append is not None and (n is not None or i <= last):
            append = None  # another append began: the open one was cut short
        if append is None:
            if type(n) is int and n > 1 and i == 0:
                append, size, last = [r], n, i
            else:
                out.append(r)
            continue
        append.append(r)
        last = i
        if i >= size - 1:
            out += append
            append = None
    return out


@dataclass(frozen=True)
class Appended:
    """Where one append's records went: bytes ``start`` to ``end`` of file ``name`` (inode ``inode``)."""

    name: str
    inode: int
    start: int
    end: int


class WarnedOnce:
    """Warnings that something cannot be read (a folder, a file), each said once with its
    reason rather than at every look (/health and /models look at every model), until it is
    read again: a later failure is then said again."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._why: dict[Any, str] = {}  # what could not be read, and why

    def warn(self, key: Any, exc: OSError, message: str, *args: Any) -> None:
        """Say ``message`` (with ``args``) about ``key``, unless it was said for the same reason."""
        if self._why.get(key) != str(exc):
            self._why[key] = str(exc)
            self.logger.warning(message, *args)

    def read_again(self, key: Any) -> None:
        """``key`` could be read: a later failure is said again."""
        if self._why:
            self._why.pop(key, None)

    def keys(self) -> set[Any]:
        return set(self._why)


class ObservationLog:
    """Append-only JSONL per model, rotated to bound disk use.

    Each request's records are written with one ``write`` and fsynced, so a
    crash loses at most the request in flight (its records are read back whole or
    not at all, see _whole_appends); a torn last line is skipped
    when reading. When the active file passes ``max_file_bytes`` it is
    rotated, and only the newest ``max_files`` files are kept.
    """

    def __init__(self, root: Path, max_file_bytes: int = 8 * 1024 * 1024, max_files: int = 8, create: bool = True):
        """``create``: make ``root`` where it is not there (not a retraining worker's, which
        reads the service's: a folder gone under the service is not made again, empty)."""
        if max_files < 1:  # none would delete each observation right after storing it
            raise ValueError(f"the observation log keeps at least one file (max_files={max_files})")
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self._unlistable = WarnedOnce(log)  # folders that could not be listed
        self._unreadable = WarnedOnce(log)  # log files that could not be looked at

    def _dir(self, identity: ModelIdentity) -> Path:
        return self.root / identity.dirname

    def _files(self, identity: ModelIdentity) -> list[Path]:
        d = self._dir(identity)
        if d.is_symlink():  # not read, nor deleted, through (see refuse_linked_folder)
            self.cannot_list(d, OSError(errno.ELOOP, "it is a symbolic link, which the service does not follow"))
            return []
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):  # none logged yet, or deleted meanwhile
            return []
        except OSError as exc:  # a link loop, no permission: read as none (an append says why)
            self.cannot_list(d, exc)
            return []
        self.listed(d)
        return [d / name for name in _log_names(names)]

    def cannot_list(self, d: Path | str, exc: OSError) -> None:
        """Warn that the observations folder ``d`` cannot be listed (a file or a link loop in
        its place, no permission): once, not at every look, until it is listed again. Its
        model is shown without observations; /health and /models go on for every model."""
        self._unlistable.warn(str(d), exc, "cannot list the observations folder %s (%s): its model is shown "
                              "without observations", d, exc)

    def listed(self, d: Path | str) -> None:
        """The folder ``d`` was listed: a later failure to list it is said again."""
        self._unlistable.read_again(str(d))

    def cannot_read(self, path: Path | str, exc: OSError) -> None:
        """Warn that ``path``, named like a log file, cannot be looked at (a link loop in its
        place): it is skipped, as what is not a regular file is, and said once, not at every
        look (/health and /models look at every model's log), until it is read again."""
        self._unreadable.warn(str(path), exc, "skipping %s: %s", path, exc)

    def read_again(self, path: Path | str) -> None:
        """``path`` could be looked at: a later failure is said again."""
        self._unreadable.read_again(str(path))

    def append(self, identity: ModelIdentity, records: list[dict[str, Any]],
               stamp: Callable[[], float] | None = None) -> "Appended | None":
        """Store ``records`` (all or none); where they went, for :class:`AccuracyMonitor`.

        With ``stamp``, each record's ``ts`` is its time once the file is this append's
        alone: the log is then in time order across threads and worker processes. (A time
        taken before waiting for the file let a record stamped earlier land after one
        stamped later; a retraining that had read the later one skips what is older than it,
        and would never have counted the earlier one.)
        """
        if not records:
            return None
        bodies = [dumps_json(r, orjson.OPT_SERIALIZE_NUMPY) for r in records]
        with self._lock, writing(f"the observations of {identity.key}"):
            d = self._dir(identity)
            for attempt in range(3):
                make_folder(d)  # (not the observations folder: see ModelRegistry.save)
                refuse_linked_folder(d, f"the observations of {identity.key}")
                files = self._files(identity)
                active = files[-1] if files else d / "obs-000001.jsonl"
                if active.exists() and active.stat().st_size >= self.max_file_bytes:
                    active = d / f"obs-{_log_number(active.name) + 1:06d}.jsonl"
                try:
                    fd = open_regular(active, os.O_RDWR | os.O_CREAT | os.O_APPEND)
                    break
                except FileNotFoundError:
                    # The folder removed meanwhile, by a delete of the model: made again here,
                    # these are recorded, and the caller, finding the model gone, deletes them.
                    if attempt == 2:
                        raise
            try:
                # Workers share the file: one append at a time, so that undoing a failed one
                # (truncating back to ``size``) cannot cut another worker's records.
                fcntl.flock(fd, fcntl.LOCK_EX)
                if stamp is None:
                    data = b"".join(b + b"\n" for b in bodies)
                else:
                    now = stamp()
                    head = b'{"ts":' + dumps_json(now) + b","
                    data = b"".join(head + b[1:] + b"\n" for b in bodies)  # every record has keys
                    for r in records:
                        r["ts"] = now
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A crash left half a line: end it so the new records stay readable.
                    data = b"\n" + data
                try:
                    view = memoryview(data)
                    while view:  # a write to a nearly full disk may be short; the next one says why
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                    if not size:
                        sync_folder(d)  # a new log's name, or its records would go with it at a power loss
                except OSError:
                    os.ftruncate(fd, size)  # all of a request's records, or none (truncating needs no space)
                    raise
                appended = Appended(active.name, os.fstat(fd).st_ino, size, size + len(data))
            finally:
                os.close(fd)
            files = self._files(identity)
            for old in files[: max(0, len(files) - self.max_files)]:
                old.unlink(missing_ok=True)
        return appended

    def read_span(self, path: Path | str, inode: int, start: int, stop: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """The observations in bytes ``start`` to ``stop`` (the end) of ``path``, and where they end.

        Only whole lines are read: the returned offset is just past the last newline, so a
        record being written is read by the next call. Appends (which hold the lock
        exclusively) are waited for, so an append undone for want of disk space is never
        seen half-written. A file that is no longer ``inode`` gives nothing.
        """
        try:
            with regular_file_fd(path) as fd:
                fcntl.flock(fd, fcntl.LOCK_SH)
                st = os.fstat(fd)
                end = st.st_size if stop is None else min(stop, st.st_size)
                if st.st_ino != inode or end <= start:
                    return [], start
                data = os.pread(fd, end - start, start)
        except (FileNotFoundError, NotRegularFile):
            return [], start
        cut = data.rfind(b"\n") + 1
        return _parse(data[:cut]), start + cut

    def read(self, identity: ModelIdentity, limit: int | None = None, after: float | None = None,
             version: int | None = None) -> list[dict[str, Any]]:
        """Stored observations, oldest first (the newest ``limit`` when given); with ``after``,
        those stamped at or before it may be left out (the caller drops them): they are
        passed over unparsed where their line says its time first, as stamped ones do. With
        ``version`` too, those of that version or a later one are read however they are stamped."""
        out: list[dict[str, Any]] = []
        for path in reversed(self._files(identity)):
            try:
                data = read_regular(path)
                batch = _parse(data if after is None else _lines_after(data, after, version))
            except FileNotFoundError:  # rotated away by another worker meanwhile
                continue
            except OSError as exc:  # not a regular file (a FIFO, a device): not an observation log
                log.warning("skipping %s: %s", path, exc)
                continue
            out[:0] = batch
            if limit is not None and len(out) >= limit:
                return out[-limit:]
        return out

    def delete(self, identity: ModelIdentity) -> None:
        """Delete the model's observations, and their folder where nothing else is left in
        it (where the whole model is deleted, its retraining decisions and lock go first)."""
        for p in self._files(identity):
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty, or gone
            self._dir(identity).rmdir()


# The drift test runs at one observation in DRIFT_CHECK_EVERY of a version, not at every look
# (a request, a scrape), so that how often the accuracy is looked at changes nothing.
DRIFT_CHECK_EVERY = 10
# The kinds of run a model with the derived first-run column tells apart, and each one's flag.
RUN_KINDS = (("first_run", 1.0), ("repeat", 0.0))


def drift_checkpoints(y: np.ndarray, ts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Which observations are checkpoints of the drift test: one in ``DRIFT_CHECK_EVERY``,
    picked by a hash of the observation's runtime, time and place in its ``/observe``
    batch, not by its place in the log, so that every process picks the same ones
    whichever of a rotated log's files it read."""
    with np.errstate(over="ignore"):
        h = (np.asarray(y, dtype=np.float64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.asarray(ts, dtype=np.float64).view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
             ^ np.asarray(index, dtype=np.uint64) * np.uint64(0x94D049BB133111EB))
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return h % np.uint64(DRIFT_CHECK_EVERY) == 0


class WindowColumn:
    """The newest ``size`` values of one column of a window (floats, or rows of ``width``
    floats), oldest first, in a numpy ring buffer that grows to ``size`` as values come.

    Deques of Python floats and lists held 485 bytes an observation (a list of eight float
    objects for its quantiles alone): every worker keeps a window per observed model version.
    """

    __slots__ = ("size", "_data", "_start", "_len")

    def __init__(self, size: int, width: int | None = None):
        self.size = size
        self._data = np.empty((min(size, 16),) if width is None else (min(size, 16), width))
        self._start = 0  # where the oldest value is
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        return iter(self.values())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        # (np.asarray: a view where the values lie in order; np.array, copy=True: a copy, never
        # an array that the next observations write over)
        out = self.values() if dtype is None else self.values().astype(dtype)
        return out.copy() if copy else out

    def __getitem__(self, i: int) -> float:
        if not -self._len <= i < self._len:
            raise IndexError("window index out of range")
        return float(self._data[(self._start + i % self._len) % len(self._data)])

    def values(self) -> np.ndarray:
        """The values, oldest first (a view where they lie in order, else a copy)."""
        end = self._start + self._len
        if end <= len(self._data):
            return self._data[self._start:end]
        return np.concatenate((self._data[self._start:], self._data[:end - len(self._data)]))

    def extend(self, values: Any) -> None:
        v = np.asarray(values, dtype=np.float64).reshape((-1, *self._data.shape[1:]))[-self.size:]
        if not len(v):
            return
        need = self._len + len(v)
        if need > len(self._data) and len(self._data) < self.size:
            grown = np.empty((min(self.size, max(need, 2 * len(self._data))), *self._data.shape[1:]))
            grown[:self._len] = self.values()
            self._data, self._start = grown, 0
        cap = len(self._data)
        at = (self._start + self._len + np.arange(len(v))) % cap
        self._data[at] = v
        self._start = (self._start + max(0, need - cap)) % cap
        self._len = min(cap, need)


@dataclass
class RollingAccuracy:
    """The last ``window`` observations of one model version, with their predicted quantiles.

    Drift is decided at checkpoints (:func:`drift_checkpoints`, one observation in
    ``DRIFT_CHECK_EVERY``): the window as it stood at the last one, tested at ``alpha``
    times ``DRIFT_CHECK_EVERY / window`` (a Bonferroni correction over the checks a window's
    worth of observations brings, on average). A calibrated model then raises a false alarm
    with probability about ``alpha`` per ``window`` observations at most, however often its
    accuracy is looked at: tested at ``alpha`` on every look, 7 of 200 calibrated streams of
    3,000 observations, looked at every ten, were called drifted at some look. The decision
    is a function of the observations alone: a restarted service, or another worker,
    reading them in other batches (or only the newest of the log's files), decides the same.
    """

    window: int = 1000
    # Each keeps the newest ``window`` of its own (one value per observation, in step).
    y: WindowColumn = field(init=False)
    q: WindowColumn = field(init=False)  # a row of quantiles at MONITOR_LEVELS each
    e: WindowColumn = field(init=False)  # the predicted expect of each (NaN: not stored, an older log's)
    s: WindowColumn = field(init=False)  # and its predicted error (NaN: not stored)
    ts: WindowColumn = field(init=False)  # when each was stamped (0: not known)
    # Whether each was its shape's first run, as the model took it (NaN: a model without the
    # first-run column, or an older log's record).
    f: WindowColumn = field(init=False)
    # Whether the version has a model for each kind of run, each calibrated on its own kind:
    # then a kind's drift is the version's (see _compute_report).
    kinds_apart: bool = False
    total: int = 0
    # How many observations came after the batch stamped with each of a few times asked
    # about (count_since): a retraining's wait counts from the newest observation it saw.
    _since: dict[float, int] = field(default_factory=dict, repr=False)
    # The window as it stood at the last checkpoint: (observations then, hits per level, its size,
    # and the hits and size of each kind of run in it); the report's binomial tests are run on it.
    # Hits are counted twice (rows): those surely covered, and those that may be (see covered).
    _checkpoint: tuple[int, np.ndarray, int, dict[str, tuple[np.ndarray, int]]] | None = field(default=None, repr=False)
    # /health and /models ask for every model's drift on each call: the report (eight
    # binomial tests) is computed once per change of the window, not per request.
    _report: dict[tuple[float, int], dict[str, Any]] = field(default_factory=dict, repr=False)
    # The binomial tests' p-values at the last checkpoint: they change only there, and were
    # three quarters of an /observe request's time when run on every one (3.7 ms a report).
    # Keyed by kind of run (None: every observation).
    _pvalues: tuple[tuple, dict[str | None, dict[str, float]]] | None = field(default=None, repr=False)

    def add(self, y: np.ndarray, q: np.ndarray, ts: np.ndarray | None = None, index: np.ndarray | None = None,
            expect: np.ndarray | None = None, error: np.ndarray | None = None,
            first_run: np.ndarray | None = None, kinds_apart: bool = False) -> None:
        """Observations ``y`` with their predicted quantiles ``q``, the times they were
        observed ``ts`` and their places in their ``/observe`` batches ``index`` (without
        them, their positions in this tracker's stream stand in), their predicted
        means ``expect`` and standard deviations ``error``, and whether each was taken for its
        shape's first run ``first_run`` (NaN, or none: not known); ``kinds_apart``: they were
        predicted by a model for each kind of run."""
        self._report.clear()
        self.kinds_apart = self.kinds_apart or kinds_apart
        y = np.asarray(y, dtype=np.float64)
        if ts is None or index is None:
            ts = np.zeros(len(y))
            index = np.arange(self.total, self.total + len(y))
        unknown = np.full(len(y), math.nan)
        # In the order _extend takes them: runtimes, quantiles, stamps, expects, errors, first runs.
        columns = (y, np.asarray(q, dtype=np.float64).reshape(len(y), len(MONITOR_LEVELS)),
                   np.asarray(ts, dtype=np.float64),
                   unknown if expect is None else np.asarray(expect, dtype=np.float64),
                   unknown if error is None else np.asarray(error, dtype=np.float64),
                   unknown if first_run is None else np.asarray(first_run, dtype=np.float64))
        for t in self._since:  # after the last observation stamped t, in the log's order
            again = np.flatnonzero(ts == t)  # (a coarse clock may stamp a later batch alike)
            self._since[t] = len(y) - 1 - int(again[-1]) if len(again) else self._since[t] + len(y)
        # The last checkpoint of this batch: the window is counted there, then the rest added.
        marks = np.flatnonzero(drift_checkpoints(y, ts, index))
        cut = int(marks[-1]) + 1 if len(marks) else 0
        self._extend(*(c[:cut] for c in columns))
        if cut:
            y_w = np.asarray(self.y)
            sure, maybe = covered(y_w, np.asarray(self.q), clock_tick(y_w))
            hits = np.stack([sure, maybe])  # (2, observations, levels)
            flags = np.asarray(self.f)
            kinds = {kind: (hits[:, flags == value].sum(axis=1), int((flags == value).sum()))
                     for kind, value in RUN_KINDS if (flags == value).any()}
            self._checkpoint = (self.total, hits.sum(axis=1), len(self.y), kinds)
        self._extend(*(c[cut:] for c in columns))

    def __post_init__(self) -> None:
        for name in ("y", "e", "s", "ts", "f"):
            setattr(self, name, WindowColumn(self.window))
        self.q = WindowColumn(self.window, len(MONITOR_LEVELS))

    def _extend(self, ys: np.ndarray, qs: np.ndarray, ts: np.ndarray, es: np.ndarray, ss: np.ndarray,
                fs: np.ndarray) -> None:
        for column, values in ((self.y, ys), (self.q, qs), (self.ts, ts), (self.e, es), (self.s, ss), (self.f, fs)):
            column.extend(values)
        self.total += len(ys)

    @property
    def newest_ts(self) -> float | None:
        """The stamp of the newest observation, in the log's order (None: none yet, or not
        known): with the observations stamped alike (one ``/observe``), it marks a place in
        the log that every process finds, whatever the clock did since."""
        return self.ts[-1] if len(self.ts) and self.ts[-1] > 0 else None

    def count_since(self, t: float, enough: int) -> int | None:
        """How many of this version's observations come after the last one stamped ``t`` in
        the log's order (by place, not by time: a clock set back does not hold them off),
        or any number of at least ``enough`` where there are that many; None where telling
        needs observations older than the window (:meth:`AccuracyMonitor.count_since` reads
        them from the log)."""
        if t in self._since:
            return self._since[t]
        stamped = np.flatnonzero(np.asarray(self.ts) == t)
        if len(stamped):
            return self.remember_since(t, len(self.ts) - 1 - int(stamped[-1]))
        if self.total == len(self.ts):
            # Never in what this process read: rotated away before, so all of it came after.
            return self.remember_since(t, self.total)
        # Out of the window: the whole window came after it, and maybe more before it.
        return len(self.ts) if len(self.ts) >= enough else None

    def remember_since(self, t: float, count: int) -> int:
        """Note that ``count`` observations came after the batch stamped ``t``; later ones
        are added as they come."""
        while len(self._since) >= 4:  # the times of the last few decisions: older ones are done with
            self._since.pop(next(iter(self._since)))
        self._since[t] = count
        return count

    def report(self, alpha: float, min_observations: int) -> dict[str, Any]:
        key = (alpha, min_observations)
        if key not in self._report:
            self._report[key] = self._compute_report(alpha, min_observations)
        return self._report[key]

    def _compute_report(self, alpha: float, min_observations: int) -> dict[str, Any]:
        n = len(self.y)
        out: dict[str, Any] = {"observations": self.total, "window": n, "levels": list(MONITOR_LEVELS)}
        if n == 0:
            out.update(drifted=False, drift={"tested": False, "reason": "no observations yet"})
            return out
        out.update(self._accuracy())
        out.update(self._drift(alpha, min_observations))
        return out

    def _accuracy(self) -> dict[str, Any]:
        return accuracy_of(np.asarray(self.y), np.asarray(self.q), np.asarray(self.e), np.asarray(self.s),
                           np.asarray(self.f))

    def _drift(self, alpha: float, min_observations: int) -> dict[str, Any]:
        """The drift test's answer at the last checkpoint: ``drifted``, ``drift`` (its p-values,
        each kind of run's where the window holds both) and ``drifted_by_kind``."""
        out: dict[str, Any] = {}
        per_check = alpha * min(1.0, DRIFT_CHECK_EVERY / self.window)
        if self._checkpoint is None:
            out["drifted"] = False
            out["drift"] = {"tested": False, "reason": f"no checkpoint yet (the drift test runs at one "
                                                       f"observation in {DRIFT_CHECK_EVERY})",
                            "min_observations": min_observations, "alpha": alpha, "alpha_per_check": per_check}
            return out
        at, hits, n_checked, kinds = self._checkpoint
        # One exact binomial test per level, Bonferroni-corrected: with few
        # observations a large deviation is expected noise, with many it is not.
        if self._pvalues is None or self._pvalues[0] is not self._checkpoint:
            groups: dict[str | None, tuple[np.ndarray, int]] = {None: (hits, n_checked), **kinds}
            self._pvalues = (self._checkpoint, {
                group: {f"{t:g}": coverage_p_value(int(k), int(m), n, t)
                        for t, k, m in zip(MONITOR_LEVELS, h[0].tolist(), h[1].tolist())}
                for group, (h, n) in groups.items()})
        tests = self._pvalues[1]
        _, worst, p = _worst_test(tests, [None])
        corrected = min(1.0, p * len(MONITOR_LEVELS))
        tested = n_checked >= min_observations
        out["drifted"] = bool(tested and corrected < per_check)
        out["drift"] = {
            "tested": tested,
            "checked_at": at,
            "checked_window": n_checked,
            "min_observations": min_observations,
            "alpha": alpha,
            "alpha_per_check": per_check,
            "p_values": dict(tests[None]),
            "worst_level": worst,
            "corrected_p_value": corrected,
        }
        if kinds:
            # Each kind of run with enough observations is tested on its own too (Bonferroni
            # over both kinds' levels): first runs a few percent of the stream, twice as slow
            # as predicted, read as calibrated among all the runs.
            by_kind: dict[str, Any] = {}
            tested_kinds = [kind for kind, (_, n) in kinds.items() if n >= min_observations]
            for kind, (_, n) in kinds.items():
                _, own_worst, own_p = _worst_test(tests, [kind])
                own_corrected = min(1.0, own_p * len(MONITOR_LEVELS) * max(len(tested_kinds), 1))
                by_kind[kind] = {"tested": n >= min_observations, "checked_window": n, "p_values": dict(tests[kind]),
                                 "worst_level": own_worst, "corrected_p_value": own_corrected,
                                 "drifted": bool(n >= min_observations and own_corrected < per_check)}
            out["drift"]["by_kind"] = by_kind
            out["drifted_by_kind"] = {kind: got["drifted"] for kind, got in by_kind.items()}
            out["drift"]["kinds_decide"] = self.kinds_apart
            if self.kinds_apart and tested:
                # A model for each kind, each calibrated on its own kind: one that is off is the
                # version's drift, which a retraining (refitting that kind's model on what was
                # observed) can mend. Decided on every test run, Bonferroni over all of them.
                decided_on = [None, *tested_kinds]
                worst_kind, level, p = _worst_test(tests, decided_on)
                corrected = min(1.0, p * len(MONITOR_LEVELS) * len(decided_on))
                out["drifted"] = corrected < per_check
                out["drift"].update(corrected_p_value=corrected, worst_kind=worst_kind, worst_level=level)
            # Otherwise reported, not acted on: one model for both kinds is calibrated on them
            # together, and can be off for one kind from its training on, which a retraining
            # would not mend (and would run again for at every new batch of observations).
        return out

    def recent(self, limit: int = 200) -> dict[str, Any]:
        start = max(len(self.y) - max(limit, 0), 0)  # [-0:] would be the whole window
        ys = self.y.values()[start:].tolist()
        qs = self.q.values()[start:].tolist()
        es = [None if v != v else v for v in self.e.values()[start:].tolist()]
        ss = [None if v != v else v for v in self.s.values()[start:].tolist()]
        return {"levels": list(MONITOR_LEVELS), "runtime_ms": ys, "quantile_predictions": qs, "expect": es, "error": ss}


def accuracy_of(y: np.ndarray, q: np.ndarray, e: np.ndarray, sd: np.ndarray, flags: np.ndarray) -> dict[str, Any]:
    """The accuracy of observed runtimes ``y`` against their predicted quantiles ``q`` (at
    MONITOR_LEVELS), expects ``e`` and errors ``sd`` (NaN: not known) and first-run flags
    ``flags`` (NaN: not known): coverage, interval coverage, pinball loss and median error;
    how the sum of what ran compares with the expects and their errors; each kind of run's."""
    out: dict[str, Any] = {}
    levels = np.asarray(MONITOR_LEVELS)
    tick = clock_tick(y)
    coverage = tie_broken_coverage(y, q, tick)
    pin = pinball_loss(y, q, MONITOR_LEVELS)
    idx = {lvl: i for i, lvl in enumerate(MONITOR_LEVELS)}
    out["coverage"] = {f"{t:g}": float(c) for t, c in zip(MONITOR_LEVELS, coverage)}
    out["interval_coverage"] = {
        name: _interval_coverage(y, q[:, idx[lo]], q[:, idx[hi]], tick, float(name))
        for name, (lo, hi) in MONITOR_INTERVALS.items()
    }
    if tick is not None:
        out["clock_tick_ms"] = tick
    out["mean_abs_coverage_error"] = float(np.abs(coverage - levels).mean())
    out["pinball_loss"] = float(pin.mean())
    out["relative_pinball_loss"] = float(pin.mean() / y.mean())
    out["median_mape"] = float(np.mean(np.abs(q[:, idx[0.5]] - y) / y))
    known = ~np.isnan(e)
    if known.any():
        # A queue's wait is a sum of expects: how far the sum of what ran is from it.
        out["expect_ratio"] = float(y[known].sum() / e[known].sum())
        out["expect_observations"] = int(known.sum())
    both = known & ~np.isnan(sd)
    # Its variance is a sum of squared errors: how the deviations from the expects compare.
    if both.any() and (ratio := error_ratio(y[both], e[both], sd[both])) is not None:
        out["error_ratio"] = ratio
        out["error_observations"] = int(both.sum())
    if (~np.isnan(flags)).any():
        out["by_kind"] = {kind: _kind_accuracy(y[flags == value], q[flags == value], tick)
                          for kind, value in RUN_KINDS}
    return out


def calibration_test(y: np.ndarray, q: np.ndarray) -> dict[str, Any]:
    """Whether runtimes ``y`` are consistent with their predicted quantiles ``q`` (at
    MONITOR_LEVELS), all at once: each level's exact binomial test of its coverage (ties at a
    clock's tick broken toward the level, see :func:`covered`), the worst, and its p-value
    Bonferroni-corrected over the levels. The drift test's, on one set of observations
    rather than a rolling window."""
    sure, maybe = covered(y, q, clock_tick(y))
    n = len(y)
    p_values = {f"{t:g}": coverage_p_value(int(k), int(m), n, t)
                for t, k, m in zip(MONITOR_LEVELS, sure.sum(axis=0).tolist(), maybe.sum(axis=0).tolist())}
    worst = min(p_values, key=p_values.__getitem__)
    return {"p_values": p_values, "worst_level": worst,
            "corrected_p_value": min(1.0, p_values[worst] * len(MONITOR_LEVELS))}


def _worst_test(pvalues: dict[str | None, dict[str, float]], groups: list[str | None]) -> tuple[str | None, str, float]:
    """The smallest of ``groups``' p-values (each group's per level; the group None: every
    observation): its group, level and value, the first of equals."""
    return min(((group, level, p) for group in groups for level, p in pvalues[group].items()), key=lambda t: t[2])


def _interval_coverage(y: np.ndarray, low: np.ndarray, high: np.ndarray, tick: float | None, size: float) -> float:
    """The share of ``y`` within [``low``, ``high``], as near ``size`` as breaking ties allows
    (see :func:`covered`)."""
    hair = _hair(tick)
    sure = ((y - hair >= low) & (y + hair <= high)).mean()
    maybe = ((y + hair >= low) & (y - hair <= high)).mean()
    return float(np.clip(size, sure, maybe))


def _kind_accuracy(y: np.ndarray, q: np.ndarray, tick: float | None) -> dict[str, Any]:
    """The accuracy of the observations of one kind of run (first runs, or repeats), with
    ties at the window's clock ``tick`` (see :func:`covered`)."""
    out: dict[str, Any] = {"observations": int(len(y))}
    if len(y):
        coverage = tie_broken_coverage(y, q, tick)
        out["coverage"] = {f"{t:g}": float(c) for t, c in zip(MONITOR_LEVELS, coverage)}
        out["mean_abs_coverage_error"] = float(np.abs(coverage - np.asarray(MONITOR_LEVELS)).mean())
        # How many times its predicted median a run of this kind took, at the median.
        out["median_ratio"] = float(np.median(y / q[:, MONITOR_LEVELS.index(0.5)]))
    return out


def binomial_test(k: int, n: int, p: float) -> float:
    """The two-sided p-value of ``k`` successes in ``n`` trials of probability ``p``: the
    probability of every count no more likely than ``k`` (as ``scipy.stats.binomtest``
    reckons it, likelihoods within a relative 1e-7 counted equal). Summed over the ``n + 1``
    counts: scipy.stats took 1.2 to 1.8 s to import, in the first /observe after each start,
    which held other requests meanwhile (a scheduler simulation's waits up to 209 ms)."""
    if n <= 0 or k == p * n:
        return 1.0
    x = np.arange(n + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = (gammaln(n + 1.0) - gammaln(x + 1.0) - gammaln(n - x + 1.0)
                   + np.where(x > 0, x * np.log(p), 0.0) + np.where(x < n, (n - x) * np.log1p(-p), 0.0))
    pmf = np.exp(log_pmf)
    return float(min(1.0, pmf[pmf <= pmf[k] * (1 + 1e-7)].sum()))


@dataclass
class _Followed:
    """One model's observation log as this process has read it so far."""

    # file name -> (inode, bytes read, its first bytes): a file deleted and made again (the
    # model deleted, then trained and observed again) may get the old one's inode number.
    cursor: dict[str, tuple[int, int, bytes]] = field(default_factory=dict)
    trackers: dict[int, RollingAccuracy] = field(default_factory=dict)  # version -> its accuracy
    lock: threading.Lock = field(default_factory=threading.Lock)
    directory: str = ""
    # The log's files (name, path), listed when the directory's (inode, mtime) was ``listed_key``.
    files: list[tuple[str, str]] = field(default_factory=list)
    listed_key: tuple[int, int] | None = None
    # Files rotated away since they were read: file name -> (inode, bytes read), the newest few.
    # An append of this process's whose file another thread read and then saw rotated away
    # before the appending thread's own look is known read here, not added a second time.
    gone: dict[str, tuple[int, int]] = field(default_factory=dict)


# Files rotated away whose read extent a model's state keeps (see _Followed.gone): an append's
# file is rotated away before its own look only where this many files were made meanwhile.
_GONE_KEPT = 16

# The first bytes of a log file that tell it from another file of its name and inode
# number: its first record's time stamp among them.
_HEAD_BYTES = 64


def _head(path: str, size: int) -> bytes:
    """The first ``size`` bytes of ``path`` (nothing if it cannot be read)."""
    try:
        with regular_file_fd(path) as fd:
            return os.pread(fd, size, 0)
    except OSError:
        return b""


# A directory listed this soon after it changed may change again within the same
# timestamp tick, unnoticed: it is listed again at the next look.
_RACY_NS = 2_000_000_000


class AccuracyMonitor:
    """Rolling accuracy for every (model, version), following the observation log.

    The log is shared by every worker process: on each look at a model's accuracy the
    monitor stats its files (one ``stat`` per file) and reads only what was appended
    since, by any process, so all workers report the same observations and drift. Its
    own appends are counted from memory, not read back.
    """

    def __init__(self, log_store: ObservationLog, window: int = 1000, alpha: float = 1e-3, min_observations: int = 30,
                 clock: Callable[[], float] = time.time):
        self.log = log_store
        # Stamps each observation; the time picks the drift checkpoints, so a fixed clock
        # makes which observations are checked reproducible.
        self.clock = clock
        self.window = window
        self.alpha = alpha
        self.min_observations = min_observations
        self._followed: dict[ModelIdentity, _Followed] = {}
        self._lock = threading.Lock()
        # What a model never observed reports: /health, /models and /metrics ask about every
        # model, and each one's state (a window of six columns, its log's cursor) was kept in
        # every worker, observed or not (16 MB for 2,500 models never observed, and a lstat
        # and a stat of its folder at each look).
        self._unobserved = RollingAccuracy(window)

    def _state(self, identity: ModelIdentity) -> _Followed:
        with self._lock:
            state = self._followed.get(identity)
            if state is None:
                state = self._followed[identity] = _Followed(directory=str(self.log._dir(identity)))
            return state

    def _observed_state(self, identity: ModelIdentity) -> _Followed | None:
        """``identity``'s state, or None for a model this process does not follow whose
        observations folder is not there: nothing to read, so nothing is kept (a folder made
        later is read from its start)."""
        with self._lock:
            state = self._followed.get(identity)
        if state is None and not os.path.lexists(os.path.join(self.log.root, identity.dirname)):
            return None
        return state or self._state(identity)

    def _tracker(self, state: _Followed, version: int) -> RollingAccuracy:
        tr = state.trackers.get(version)
        if tr is None:
            tr = state.trackers[version] = RollingAccuracy(self.window)
        return tr

    def _add(self, state: _Followed, records: list[dict[str, Any]]) -> None:
        by_version: dict[int, list[dict[str, Any]]] = {}
        for r in records:
            by_version.setdefault(r["version"], []).append(r)
        for version, rs in by_version.items():
            self._tracker(state, version).add(np.array([r["runtime_ms"] for r in rs], dtype=np.float64),
                                              np.array([r["q"] for r in rs], dtype=np.float64),
                                              np.array([r["ts"] for r in rs], dtype=np.float64),
                                              np.array([r.get("i", 0) for r in rs], dtype=np.int64),
                                              np.array([_expect(r) for r in rs], dtype=np.float64),
                                              np.array([_error(r) for r in rs], dtype=np.float64),
                                              np.array([_first_run(r) for r in rs], dtype=np.float64),
                                              kinds_apart=any(r.get("k") == 1 for r in rs))

    def _sync(self, state: _Followed, own: Appended | None = None,
              own_records: list[dict[str, Any]] | None = None) -> None:
        """Take in what was appended to ``state``'s model's log since the last look (``state.lock`` held).

        ``own`` is this process's append just made, whose records (``own_records``) are
        added from memory in their place in the file.
        """
        if own is not None:
            inode, offset, _ = state.cursor.get(own.name, (*state.gone.get(own.name, (None, 0)), b""))
            if inode == own.inode and offset > own.start:  # another thread's look read them from the file
                own = None
        seen = set()
        listed_key = state.listed_key
        listed = self._list(state)
        files = state.files
        # Where the folder changed (a file made or removed), a file that kept its name and
        # inode number may still be another: its first bytes say.
        relisted = listed_key is None or state.listed_key != listed_key
        for name, path in files:
            try:
                st = os.stat(path)
            except FileNotFoundError:  # rotated away meanwhile
                continue
            except OSError as exc:
                # A link loop named like a log file: /health, /models and /accuracy were a 500
                # "internal error: OSError" for as long as it stayed. Not a log: skipped.
                self.log.cannot_read(path, exc)
                continue
            self.log.read_again(path)
            seen.add(name)
            inode, offset, head = state.cursor.get(name, (st.st_ino, 0, b""))
            if inode != st.st_ino or st.st_size < offset or (relisted and head and _head(path, len(head)) != head):
                inode, offset, head = st.st_ino, 0, b""  # a new file under an old name
            if own is not None and own.name == name and own.inode == inode:
                if own.start > offset:  # another worker's records first
                    self._add(state, self.log.read_span(path, inode, offset, own.start)[0])
                self._add(state, own_records)
                offset, own = own.end, None
            if st.st_size > offset:
                records, offset = self.log.read_span(path, inode, offset)
                self._add(state, records)
            if offset and not head:
                head = _head(path, min(offset, _HEAD_BYTES))
            state.cursor[name] = (inode, offset, head)
        if listed:
            for name in [n for n in state.cursor if n not in seen]:
                inode, offset, _ = state.cursor.pop(name)
                state.gone[name] = (inode, offset)
                while len(state.gone) > _GONE_KEPT:
                    state.gone.pop(next(iter(state.gone)))
        else:  # the folder gone (the model deleted): a file made again under a known name is another
            state.gone.clear()
        if own is not None and own_records is not None:  # its file was rotated away before this look
            self._add(state, own_records)

    def _list(self, state: _Followed) -> bool:
        """Bring ``state.files``, the log's files (name, path) oldest first, up to date: the
        folder is listed again only when it changed. False where it could not be listed
        (gone, or unreadable): then none are known, and what has been read of them is kept,
        so that a folder back again (remounted, restored) is read on from where it was,
        not counted twice."""
        try:
            if os.path.islink(state.directory):  # not read through (see refuse_linked_folder)
                raise OSError(errno.ELOOP, "it is a symbolic link, which the service does not follow")
            st = os.stat(state.directory)
            key = (st.st_ino, st.st_mtime_ns)
            if key != state.listed_key:
                listed_at = time.time_ns()
                names = _log_names(os.listdir(state.directory))
                state.files = [(n, os.path.join(state.directory, n)) for n in names]
                state.listed_key = key if listed_at - st.st_mtime_ns > _RACY_NS else None
        except FileNotFoundError:
            state.files, state.listed_key = [], None
            return False
        except OSError as exc:  # not a folder (a file, a link loop, no permission)
            self.log.cannot_list(state.directory, exc)
            state.files, state.listed_key = [], None
            return False
        self.log.listed(state.directory)
        return True

    def tracker(self, identity: ModelIdentity, version: int) -> RollingAccuracy:
        """``version``'s accuracy, up to date with every worker's observations."""
        state = self._state(identity)
        with state.lock:
            self._sync(state)
            return self._tracker(state, version)

    def record(self, identity: ModelIdentity, version: int, traces: list[dict[str, Any]], y: np.ndarray, q: np.ndarray,
               expect: np.ndarray | None = None, error: np.ndarray | None = None,
               first_run: np.ndarray | None = None, kinds_apart: bool = False) -> None:
        """Store the observations ``y`` of ``version`` with their predicted quantiles ``q``
        (at ``MONITOR_LEVELS``), means ``expect``, standard deviations ``error`` and whether
        the model took each for its shape's first run ``first_run`` (where known), and count
        them; ``kinds_apart``: the version has a model for each kind of run (its drift is
        decided on each kind too, see :class:`RollingAccuracy`)."""
        records = [{"i": i, "version": version, "runtime_ms": yi, "q": qi, "trace": t, **({"k": 1} if kinds_apart else {})}
                   for i, (t, yi, qi) in enumerate(zip(traces, y.tolist(), q.tolist()))]
        if records:
            records[0]["n"] = len(records)  # read back only whole (see _whole_appends)
        flags = None if first_run is None else first_run.astype(np.int64)
        for key, values in (("e", expect), ("s", error), ("f", flags)):
            if values is not None:
                for r, v in zip(records, values.tolist()):
                    r[key] = v
        appended = self.log.append(identity, records, stamp=self.clock)  # each gets its "ts"
        if appended is None:
            return
        state = self._state(identity)
        with state.lock:
            self._sync(state, appended, records)

    def report(self, identity: ModelIdentity, version: int) -> dict[str, Any]:
        state = self._observed_state(identity)
        if state is None:
            return self._unobserved.report(self.alpha, self.min_observations)
        with state.lock:
            self._sync(state)
            return self._tracker(state, version).report(self.alpha, self.min_observations)

    def newest_observed(self, identity: ModelIdentity, version: int) -> float | None:
        """The stamp of ``version``'s newest observation in the log, by any worker
        (:attr:`RollingAccuracy.newest_ts`)."""
        return self.tracker(identity, version).newest_ts

    def count_since(self, identity: ModelIdentity, version: int, t: float, enough: int) -> int:
        """How many observations of ``version``, by any worker, come after the last one
        stamped ``t`` (:meth:`RollingAccuracy.count_since`), or any number of at least
        ``enough`` where there are that many.

        Counted from a place in the log, not as a difference of totals: a process's total
        counts only what it read, which after a restart is only what rotation left of it.
        """
        state = self._state(identity)
        with state.lock:
            self._sync(state)
            tracker = self._tracker(state, version)
            count = tracker.count_since(t, enough)
            if count is not None:
                return count
            # Past the window (a wait longer than it): read from the log, oldest file first,
            # as far as this process has followed it; what comes later is added as it is taken in.
            count = 0
            for name in _log_names(state.cursor):
                inode, offset, _ = state.cursor[name]
                records, _ = self.log.read_span(os.path.join(state.directory, name), inode, 0, offset)
                for r in records:
                    if r["version"] == version:
                        count = 0 if r["ts"] == t else count + 1
            return tracker.remember_since(t, count)

    def recent(self, identity: ModelIdentity, version: int, limit: int = 200) -> dict[str, Any]:
        return self.report_and_recent(identity, version, limit)[1]

    def report_and_recent(self, identity: ModelIdentity, version: int,
                          limit: int = 200) -> tuple[dict[str, Any], dict[str, Any]]:
        """``version``'s report and its ``limit`` newest observations (:meth:`RollingAccuracy.recent`)
        of one look at the log: taken in two, observations appended between them (by any
        worker) were listed in ``recent`` and not counted in the report's figures."""
        state = self._observed_state(identity)
        if state is None:
            return self._unobserved.report(self.alpha, self.min_observations), self._unobserved.recent(limit)
        with state.lock:
            self._sync(state)
            tracker = self._tracker(state, version)
            return tracker.report(self.alpha, self.min_observations), tracker.recent(limit)

    def forget(self, identity: ModelIdentity) -> None:
        with self._lock:
            self._followed.pop(identity, None)

    def followed(self) -> list[ModelIdentity]:
        """The models whose observations this process holds in memory."""
        with self._lock:
            return list(self._followed)

    def forget_deleted_versions(self, identity: ModelIdentity, stored: Collection[int]) -> None:
        """Let go of the accuracy of ``identity``'s versions that were deleted: those older than
        its newest ``stored`` version and not among them. Each held up to ``window``
        observations until the whole model was deleted, and with PREDICTOR_KEEP_VERSIONS and
        automatic retraining one is deleted every few hundred observations. (Numbers are never
        given twice, so one below the newest that is not stored is gone for good; a newer one,
        stored by another worker since ``stored`` was read, is kept.)"""
        if not stored:
            return
        with self._lock:
            state = self._followed.get(identity)
        if state is None:
            return
        kept = set(stored)
        newest = max(kept)
        with state.lock:
            for version in [v for v in state.trackers if v < newest and v not in kept]:
                del state.trackers[version]
