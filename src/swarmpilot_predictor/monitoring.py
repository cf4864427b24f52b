"""Watching accuracy: durable observations, rolling coverage per model version, drift.

Observations (traces with their measured runtime) are appended to per-model
JSONL files under ``observations/`` with the quantiles the serving model
predicted for them, so accuracy survives restarts and retraining can use them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .errors import writing
from .identity import ModelIdentity
from .modeling import EVAL_LEVELS, pinball_loss
from .traces import is_runtime

log = logging.getLogger(__name__)

MONITOR_LEVELS = EVAL_LEVELS  # 0.05 ... 0.99
# Central intervals formed by symmetric pairs of the monitored levels.
MONITOR_INTERVALS = {"0.5": (0.25, 0.75), "0.8": (0.1, 0.9), "0.9": (0.05, 0.95)}


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
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in q)
        and isinstance(record.get("trace"), dict) and isinstance(record.get("ts"), (int, float))
        and isinstance(record.get("version"), int)
    )


class ObservationLog:
    """Append-only JSONL per model, rotated to bound disk use.

    Each request's records are written with one ``write`` and fsynced, so a
    crash loses at most the request in flight; a torn last line is skipped
    when reading. When the active file passes ``max_file_bytes`` it is
    rotated, and only the newest ``max_files`` files are kept.
    """

    def __init__(self, root: Path, max_file_bytes: int = 8 * 1024 * 1024, max_files: int = 8):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._lock = threading.Lock()

    def _dir(self, identity: ModelIdentity) -> Path:
        return self.root / identity.dirname

    def _files(self, identity: ModelIdentity) -> list[Path]:
        d = self._dir(identity)
        if not d.is_dir():
            return []
        return sorted(d.glob("obs-*.jsonl"))

    def append(self, identity: ModelIdentity, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in records)
        with self._lock, writing(f"the observations of {identity.key}"):
            d = self._dir(identity)
            d.mkdir(parents=True, exist_ok=True)
            files = self._files(identity)
            active = files[-1] if files else d / "obs-000001.jsonl"
            if active.exists() and active.stat().st_size >= self.max_file_bytes:
                active = d / f"obs-{int(active.stem.split('-')[1]) + 1:06d}.jsonl"
            fd = os.open(active, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                # Workers share the file: one append at a time, so that undoing a failed one
                # (truncating back to ``size``) cannot cut another worker's records.
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A crash left half a line: end it so the new records stay readable.
                    data = b"\n" + data
                try:
                    view = memoryview(data)
                    while view:  # a write to a nearly full disk may be short; the next one says why
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, size)  # all of a request's records, or none (truncating needs no space)
                    raise
            finally:
                os.close(fd)
            files = self._files(identity)
            for old in files[: max(0, len(files) - self.max_files)]:
                old.unlink(missing_ok=True)

    def read(self, identity: ModelIdentity, limit: int | None = None) -> list[dict[str, Any]]:
        """Stored observations, oldest first (the newest ``limit`` when given)."""
        out: list[dict[str, Any]] = []
        for path in reversed(self._files(identity)):
            lines = path.read_bytes().splitlines()
            batch = []
            for line in lines:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a line torn by a crash
                if _usable(record):
                    batch.append(record)
            out[:0] = batch
            if limit is not None and len(out) >= limit:
                return out[-limit:]
        return out

    def count(self, identity: ModelIdentity) -> int:
        return sum(len(p.read_bytes().splitlines()) for p in self._files(identity))

    def delete(self, identity: ModelIdentity) -> None:
        for p in self._files(identity):
            p.unlink(missing_ok=True)


@dataclass
class RollingAccuracy:
    """The last ``window`` observations of one model version, with their predicted quantiles."""

    window: int = 1000
    y: deque = field(default_factory=deque)
    q: deque = field(default_factory=deque)
    total: int = 0
    # /health and /models ask for every model's drift on each call: the report (eight
    # binomial tests) is computed once per change of the window, not per request.
    _report: dict[tuple[float, int], dict[str, Any]] = field(default_factory=dict, repr=False)

    def add(self, y: np.ndarray, q: np.ndarray) -> None:
        self._report.clear()
        for yi, qi in zip(y.tolist(), q.tolist()):
            self.y.append(yi)
            self.q.append(qi)
        while len(self.y) > self.window:
            self.y.popleft()
            self.q.popleft()
        self.total += len(y)

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
        y = np.asarray(self.y)
        q = np.asarray(self.q)
        levels = np.asarray(MONITOR_LEVELS)
        below = y[:, None] <= q
        coverage = below.mean(axis=0)
        pin = pinball_loss(y, q, MONITOR_LEVELS)
        idx = {lvl: i for i, lvl in enumerate(MONITOR_LEVELS)}
        out["coverage"] = {f"{t:g}": float(c) for t, c in zip(MONITOR_LEVELS, coverage)}
        out["interval_coverage"] = {
            name: float(((y >= q[:, idx[lo]]) & (y <= q[:, idx[hi]])).mean()) for name, (lo, hi) in MONITOR_INTERVALS.items()
        }
        out["mean_abs_coverage_error"] = float(np.abs(coverage - levels).mean())
        out["pinball_loss"] = float(pin.mean())
        out["relative_pinball_loss"] = float(pin.mean() / y.mean())
        out["median_mape"] = float(np.mean(np.abs(q[:, idx[0.5]] - y) / y))
        # One exact binomial test per level, Bonferroni-corrected: with few
        # observations a large deviation is expected noise, with many it is not.
        from scipy.stats import binomtest  # costs seconds to import: only when testing

        pvalues = {}
        hits = below.sum(axis=0)
        for t, k in zip(MONITOR_LEVELS, hits.tolist()):
            pvalues[f"{t:g}"] = float(binomtest(int(k), n, t).pvalue)
        worst = min(pvalues, key=pvalues.get)
        corrected = min(1.0, pvalues[worst] * len(pvalues))
        tested = n >= min_observations
        drifted = bool(tested and corrected < alpha)
        out["drifted"] = drifted
        out["drift"] = {
            "tested": tested,
            "min_observations": min_observations,
            "alpha": alpha,
            "p_values": pvalues,
            "worst_level": worst,
            "corrected_p_value": corrected,
        }
        return out

    def recent(self, limit: int = 200) -> dict[str, Any]:
        ys = list(self.y)[-limit:]
        qs = list(self.q)[-limit:]
        return {"levels": list(MONITOR_LEVELS), "runtime_ms": ys, "quantile_predictions": qs}


class AccuracyMonitor:
    """Rolling accuracy for every (model, version), rebuilt lazily from the observation log."""

    def __init__(self, log_store: ObservationLog, window: int = 1000, alpha: float = 1e-3, min_observations: int = 30):
        self.log = log_store
        self.window = window
        self.alpha = alpha
        self.min_observations = min_observations
        self._trackers: dict[tuple[ModelIdentity, int], RollingAccuracy] = {}
        self._lock = threading.Lock()

    def tracker(self, identity: ModelIdentity, version: int) -> RollingAccuracy:
        key = (identity, version)
        with self._lock:
            tr = self._trackers.get(key)
            if tr is not None:
                return tr
        tr = RollingAccuracy(self.window)
        records = [r for r in self.log.read(identity) if r.get("version") == version]
        if records:
            tr.add(np.array([r["runtime_ms"] for r in records]), np.array([r["q"] for r in records]))
            tr.total = len(records)
        with self._lock:
            return self._trackers.setdefault(key, tr)

    def record(self, identity: ModelIdentity, version: int, traces: list[dict[str, Any]], y: np.ndarray, q: np.ndarray) -> None:
        now = time.time()
        tracker = self.tracker(identity, version)
        self.log.append(identity, [
            {"ts": now, "version": version, "runtime_ms": yi, "q": qi, "trace": t}
            for t, yi, qi in zip(traces, y.tolist(), q.tolist())
        ])
        with self._lock:
            tracker.add(y, q)

    def report(self, identity: ModelIdentity, version: int) -> dict[str, Any]:
        tracker = self.tracker(identity, version)
        with self._lock:
            return tracker.report(self.alpha, self.min_observations)

    def recent(self, identity: ModelIdentity, version: int, limit: int = 200) -> dict[str, Any]:
        tracker = self.tracker(identity, version)
        with self._lock:
            return tracker.recent(limit)

    def forget(self, identity: ModelIdentity) -> None:
        with self._lock:
            for key in [k for k in self._trackers if k[0] == identity]:
                del self._trackers[key]
