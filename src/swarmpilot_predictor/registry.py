"""Versioned, crash-safe storage of trained models in the data directory.

Layout: ``models/<identity dir>/v0001.model.json`` holds the fitted model and
``v0001.meta.json`` its metadata. The meta file is written last, so a version
exists exactly when its meta file does: a crash mid-write leaves stray files,
which start-up ignores and removes (temporary files once old, a version's files
without a meta file or a lock at once). Everything is JSON (LightGBM
boosters in their own text format inside it), so loading runs no code.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import orjson

from .atomic import (NotRegularFile, atomic_file, atomic_write_bytes, file_stamp, make_folder, read_regular,
                     regular_file_fd, remove_stale_temps, temp_beside)
from .errors import (AmbiguousModel, DataDirectoryGone, InvalidInput, ModelNotFound, ModelUnreadable, NotFound,
                     PayloadTooLarge, StorageError, VersionConflict, json_kind, writing)
from .features import CONSTANTS, FeatureSchema
from .identity import IdentityPattern, ModelIdentity, names_part
from .modeling import QuantileModel
from .processes import boot_id, pid_space, started, still_running
from .schemas import regime_split_problem

log = logging.getLogger(__name__)
_META = re.compile(r"^v(\d{4,})\.meta\.json$")
# A version's metadata is kilobytes (a megabyte or so with a large table of shapes); a file
# of gigabytes there took 4 GB and 20 s at every scan.
MAX_META_BYTES = 64 * 1024 * 1024
# The change log (models/.changes) names the folder of every change, so that a worker that
# notices one re-reads those folders, not all of them: with 2,000 models each change cost
# every worker's next request a full rescan (80-100 ms), and deleting them all took 120 s.
# Past this size a new log is made (a new first line), which costs each worker one full rescan.
MAX_CHANGE_LOG_BYTES = 1 << 20
_VERSION_FILE = re.compile(r"^v(\d{4,})\.(.+)$")  # any file of a version: meta, model, data, lock, tombstone
# Far past any version number the service gives (one a training or retraining): a file
# numbered past it is litter, and numbered the next version after it (a number past 64 bits
# cannot be written in JSON: every training of the model failed with a 500).
MAX_VERSION = 10**12
# Far past the rows any training holds: /models sums each version's count over models, and
# two counts of 2**63, each one JSON can carry, made a sum it cannot (orjson: a 500).
MAX_ROWS = 10**12


# The key in a version's ``extra`` under which the SHA-256 of its model file is kept.
MODEL_DIGEST = "model_sha256"

@dataclass
class ModelVersion:
    """Metadata of one stored version; the fitted model itself is loaded lazily."""

    identity: ModelIdentity
    version: int
    created_at: float
    target: str
    features: FeatureSchema
    quantiles: list[float]
    algorithm: str
    family: str
    params: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]
    data_hash: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.identity.key

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        out = self._json(self.features.to_json())
        if self.features.constants:
            # Beside the features, not in them: a service older than these (2026-12-01) reads
            # the features' form as it knows it, and ignores this key.
            out[CONSTANTS] = self.features.constants_json()
        return out

    def public_json(self, detail: bool = False) -> dict[str, Any]:
        """What the API shows: the stored form with the features described (a shape
        history summarised, not listed); with ``detail``, their categories and fills too."""
        return self._json(self.features.describe(detail))

    def _json(self, features: Any) -> dict[str, Any]:
        return {
            "identity": self.identity.as_dict(),
            "version": self.version,
            "created_at": self.created_at,
            "target": self.target,
            "features": features,
            "quantiles": self.quantiles,
            "algorithm": self.algorithm,
            "family": self.family,
            "params": self.params,
            "data": self.data,
            "metrics": self.metrics,
            "data_hash": self.data_hash,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, d: Any) -> "ModelVersion":
        """The stored form read back; ValueError naming the first field that is missing or of the wrong type.

        A meta file damaged on disk may still parse as JSON: every field is checked
        here, so that it cannot fail later, in a listing or a prediction of any model.
        """
        if not isinstance(d, dict):
            raise ValueError(f"metadata must be a JSON object, got {json_kind(d)}")
        for name in ("identity", "version", "created_at", "target", "features", "quantiles", "algorithm", "family"):
            if name not in d:
                raise ValueError(f"metadata lacks '{name}'")
        identity = d["identity"]
        if not isinstance(identity, dict) or not all(isinstance(v, str) for v in identity.values()):
            raise ValueError(f"'identity' must be an object of strings, got {json_kind(identity)}")
        version = d["version"]
        if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= MAX_VERSION:
            raise ValueError(f"'version' must be a whole number up to {MAX_VERSION:,}, got {version!r}")
        created_at = d["created_at"]
        if not _is_number(created_at) or not math.isfinite(created_at):
            raise ValueError(f"'created_at' must be a number, got {created_at!r}")
        for name in ("target", "algorithm", "family"):
            if not isinstance(d[name], str) or not d[name]:
                raise ValueError(f"'{name}' must be a non-empty string, got {d[name]!r}")
        quantiles = d["quantiles"]
        if (not isinstance(quantiles, list) or not quantiles
                or not all(_is_number(q) and 0.0 < q < 1.0 for q in quantiles)):
            raise ValueError("'quantiles' must be a non-empty list of numbers between 0 and 1")
        optional: dict[str, Any] = {}
        for name in ("params", "data", "metrics", "extra"):
            value = d.get(name, {})
            if not isinstance(value, dict):
                raise ValueError(f"'{name}' must be an object, got {json_kind(value)}")
            optional[name] = value
        rows = optional["data"].get("rows_used")
        if rows is not None and not (isinstance(rows, int) and not isinstance(rows, bool) and 0 <= rows <= MAX_ROWS):
            # Summed over models in /models: one damaged file would fail every listing.
            raise ValueError(f"'data.rows_used' must be a whole number up to {MAX_ROWS:,}, got {json_kind(rows)}")
        if (problem := regime_split_problem(optional["metrics"])) is not None:
            raise ValueError(problem)  # read by every listing too
        data_hash = d.get("data_hash", "")
        if not isinstance(data_hash, str):
            raise ValueError(f"'data_hash' must be a string, got {json_kind(data_hash)}")
        try:
            features = FeatureSchema.from_json(d["features"], d.get(CONSTANTS, []))
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
            raise ValueError(f"'features' is malformed ({type(exc).__name__}: {exc})") from None
        return cls(
            identity=ModelIdentity.from_parts(identity),
            version=version,
            created_at=float(created_at),
            target=d["target"],
            features=features,
            # Training writes them increasing, once each; a file that holds them otherwise
            # (edited by hand) had its answers' quantiles served in its order.
            quantiles=sorted({float(q) for q in quantiles}),
            algorithm=d["algorithm"],
            family=d["family"],
            data_hash=data_hash,
            **optional,
        )


@dataclass
class LoadedModel:
    meta: ModelVersion
    model: QuantileModel


# A version's lock older than this is a writer's that was killed: storing a version takes
# seconds (a 200,000-row model's training data about one). A lock names its writer: one
# whose process this process can see is gone is stale at once. One dated this much in the
# future is stale too (a host's clock ahead, or this one's set back: such a lock of a killed
# writer held retraining off with a VersionConflict until the clock caught up with it).
STALE_LOCK_SECONDS = 600


# Where a process id means this process's ids: the host, its boot and the pid namespace
# (containers that share a host name, run with --network host say, do not share process ids;
# "-" where one cannot be read, and then no lock is judged abandoned).
_HOST, _NAMESPACE = pid_space()
_PID_SPACE = (_HOST, boot_id() or "-", "-" if _NAMESPACE is None else str(_NAMESPACE))


def _lock_owner() -> bytes:
    return " ".join([*_PID_SPACE, str(os.getpid()), started(os.getpid()) or "-"]).encode()


def _create_lock(lock: Path) -> None:
    """Create ``lock`` naming this process, or raise FileExistsError if it exists.

    It appears with its owner already in it (written aside, then linked into place: a
    kill between creating it and writing it would leave a lock that names no one, which
    holds retraining off until it ages out). Where links cannot be made, it is created
    exclusively and written after.
    """
    try:
        fd, tmp = temp_beside(lock)
    except OSError:
        tmp = None
    if tmp is not None:
        try:
            try:
                os.write(fd, _lock_owner())
            finally:
                os.close(fd)
            os.link(tmp, lock)
            return
        except FileExistsError:
            raise
        except OSError:  # a full disk, or a file system without hard links
            pass
        finally:
            Path(tmp).unlink(missing_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, _lock_owner())
    except OSError:  # a full disk: the empty lock still holds the number, and ages out
        pass
    finally:
        os.close(fd)


def _deleted_meanwhile(meta_path: str) -> bool:
    """Whether a version's meta file, listed by a scan, is gone since (another worker's
    DELETE, or the versions PREDICTOR_KEEP_VERSIONS lets go): gone, not damaged, and nothing
    to warn of (two workers under load warned of it, benchmarks/fuzz_api.py --concurrent)."""
    if os.path.lexists(meta_path):
        return False
    log.debug("model version %s was deleted while its folder was read", meta_path)
    return True


def _remove_orphans(model_dir: Path) -> None:
    """Remove the model and training-data files of versions that have neither a meta file nor
    a lock: a writer holds its lock from before its first file until its meta file is
    written, so these were left by one killed midway (or a delete that could not finish),
    and no one ever served them. A tombstone keeps their numbers from being given again."""
    try:
        kinds: dict[int, set[str]] = {}
        for e in os.scandir(model_dir):
            if m := _VERSION_FILE.match(e.name):
                kinds.setdefault(int(m.group(1)), set()).add(m.group(2))
        for v, have in kinds.items():
            if not have & {"model.json", "data.npz"} or have & {"meta.json", "lock"}:
                continue
            # Again, lock first: a listing made while a writer finished may hold neither (its
            # meta file written after the listing passed, its lock removed before it came).
            if (model_dir / _lock_file(v)).exists() or (model_dir / _meta_file(v)).exists():
                continue
            log.warning("%s: removing the files of version %d, which a writer killed midway left", model_dir, v)
            os.close(os.open(model_dir / _tombstone_file(v), os.O_CREAT | os.O_WRONLY, 0o600))
            for name in (_model_file(v), _data_file(v)):
                (model_dir / name).unlink(missing_ok=True)
    except OSError as exc:  # litter only: it stays
        log.warning("%s: cannot remove what killed writers left (%s)", model_dir, exc)


def _claimed_versions(model_dir: Path, low: float = 0, high: float = math.inf) -> Iterator[int]:
    """The version numbers strictly between ``low`` and ``high``, in order, that are stored
    (their meta file is there) or being written (their lock is, recent and its writer alive).

    What a writer killed midway leaves (a lock older than :data:`STALE_LOCK_SECONDS` or whose
    writer is gone, a model file without its meta) and deleted versions (a tombstone) do not
    count: they would hold every later retraining off for good, and no delete need stop them.
    """
    files: dict[int, dict[str, os.DirEntry]] = {}
    try:
        with os.scandir(model_dir) as entries:
            for e in entries:
                m = _VERSION_FILE.match(e.name)
                if m and low < int(m.group(1)) < high:
                    files.setdefault(int(m.group(1)), {})[m.group(2)] = e
    except FileNotFoundError:
        return
    now = time.time()
    for number, kinds in sorted(files.items()):
        if "deleted" in kinds:
            continue
        if "meta.json" in kinds:
            yield number
            continue
        lock = kinds.get("lock")
        try:
            if lock is not None and abs(now - lock.stat().st_mtime) < STALE_LOCK_SECONDS and not _lock_abandoned(lock):
                yield number
        except FileNotFoundError:  # let go of just now: its meta file is there, or it failed
            if (model_dir / _meta_file(number)).exists():
                yield number


def _lock_abandoned(lock: os.DirEntry | Path) -> bool:
    """Whether a version's lock names a writer of this process's host, boot and pid
    namespace that no longer runs (killed while storing). A lock of anywhere else, or
    one that names no writer, is left to age."""
    if "-" in _PID_SPACE:  # where these cannot be read, no process can be judged gone
        return False
    try:
        *space, pid, start = read_regular(getattr(lock, "path", lock), limit=512).decode().split()
        return tuple(space) == _PID_SPACE and not still_running(int(pid), None if start == "-" else start)
    except (OSError, ValueError, UnicodeDecodeError):
        return False


class ModelRegistry:
    """All models of one data directory: index of metadata, LRU of loaded models."""

    def __init__(self, root: Path, max_loaded: int = 256, scan: bool = True, create: bool = True):
        """``create``: make ``root`` (and its parents) where it is not there; a training
        worker's registry, which stores into the service's, does not (a models folder gone
        under the service is not made again, empty, for a version to be numbered 1 there)."""
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.max_loaded = max_loaded
        self._lock = threading.RLock()
        # One re-read of the disk at a time (taken before _lock): two request threads catching
        # up at once, the slower applied an older scan of a folder after the newer one, and
        # recorded a place in the change log past it, so the worker kept it.
        self._rescan_lock = threading.RLock()
        self._index: dict[ModelIdentity, dict[int, ModelVersion]] = {}
        self._loaded: OrderedDict[tuple[ModelIdentity, int], LoadedModel] = OrderedDict()
        # A lock per version being loaded: its other askers wait for it (see load).
        self._loading: dict[tuple[ModelIdentity, int], threading.RLock] = {}
        # Versions whose file failed to load, by the file's state then and the answer: asked
        # again with the file as it was, the same answer, without reading and hashing it again
        # or logging the error once more (a request logged it twice, every request re-read it).
        self._unreadable: dict[tuple[ModelIdentity, int], tuple[tuple[Any, Any], str]] = {}
        self._generation_file = self.root / ".generation"
        self._generation_path = os.fspath(self._generation_file)
        self._seen_generation: int | None = None
        self._change_log = os.fspath(self.root / ".changes")
        # Where this process has read the change log to: the log (its first line) and the offset.
        self._log_read: tuple[bytes, int] | None = None
        self._resolved: dict[tuple[str | None, ...], ModelIdentity] = {}
        # Per set of parts a pattern names (a bit mask over the five), the stored models by
        # their values there, made when first asked for after each change of the index: a
        # pattern with '*' parts, or the near misses of one that matches no model, are a
        # look-up, not a pass over every model (with 3,000 models a 404 took 15 ms of the
        # event loop, and /ping waited behind each).
        self._by_parts: dict[int, dict[tuple[str, ...], list[ModelIdentity]]] = {}
        # The serving (latest) version per identity, asked for on every prediction.
        self._latest: dict[ModelIdentity, ModelVersion] = {}
        self._epoch = 0
        # Called with an identity after this process saved or deleted one of its versions.
        self.on_change: Callable[[ModelIdentity], None] | None = None
        # Called when versions enter memory (loaded, saved) or leave it (evicted, deleted here
        # or by another process, noticed at a refresh): the service keeps its loaded-models
        # gauge current whatever loaded them (a prediction, an observation, a retraining).
        self.on_loaded_change: Callable[[], None] | None = None
        # A training worker only writes: it never needs the index.
        # Per metadata file: its modification time and what it held (None: it is damaged).
        self._meta_cache: dict[str, tuple[int, ModelVersion | None]] = {}
        if scan:
            self._tidy()
            self.refresh()

    def _tidy(self) -> None:
        """What writers killed midway left (at start): their temporary files, and the locks
        of this host's writers that no longer run (which would hold retraining off)."""
        try:
            dirs = [e.path for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for d in dirs:
            remove_stale_temps(Path(d))
            try:
                locks = [e for e in os.scandir(d) if e.name.endswith(".lock") and _VERSION_FILE.match(e.name)]
            except OSError:
                continue
            for lock in locks:
                if _lock_abandoned(lock):
                    log.warning("removing %s: the writer that held it stopped", lock.path)
                    Path(lock.path).unlink(missing_ok=True)
            _remove_orphans(Path(d))

    # ------------------------------------------------------------------ index

    def _generation(self) -> int:
        try:
            # os.stat on a str: pathlib's stat() costs several µs more on every prediction.
            return os.stat(self._generation_path).st_mtime_ns
        except FileNotFoundError:
            return 0

    def _bump_generation(self, model_dir: Path) -> None:
        # The change log first, then the time: a worker that sees the new time finds the line.
        self._log_change(model_dir.name)
        # Every change sets one file's time, so other workers notice it with one stat().
        # Setting a time needs no free space: a change stored on a nearly full disk is announced.
        now = time.time_ns()
        try:
            os.utime(self._generation_path, ns=(now, now))
        except (FileNotFoundError, PermissionError):  # not there yet, or another user's: replace it
            atomic_write_bytes(self._generation_file, b"")
        # The time this process set is not marked as seen, so the next maybe_refresh() re-reads
        # the folders logged since (this one's among them): another worker's change stamped
        # between a read of the time and this one would otherwise pass for this process's own,
        # and stay unseen until the next change.

    def _log_change(self, folder: str, again: bool = True) -> None:
        """Append a change's folder to the change log (one write, so lines never interleave).

        The log opens with a line of its own, drawn at random when it is made: a reader that
        finds another one knows it was made afresh (an inode number may be given again)."""
        line = (folder + "\n").encode()
        try:
            try:
                fd = os.open(self._change_log, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
            except FileNotFoundError:
                self._new_change_log()
                fd = os.open(self._change_log, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise NotRegularFile(f"{self._change_log} is not a regular file")
                if os.write(fd, line) != len(line):
                    # Cut short (a full disk): the next line would be glued to it, and the
                    # reader would take the two folders for one that is neither.
                    raise OSError(errno.ENOSPC, "the line was cut short")
                written = os.fstat(fd)
            finally:
                os.close(fd)
            if written.st_ino != os.stat(self._change_log).st_ino and again:
                # Made afresh by another writer after this one opened it: said there too.
                self._log_change(folder, again=False)
            elif written.st_size > MAX_CHANGE_LOG_BYTES:
                self._new_change_log()  # every reader rescans once
        except OSError as exc:
            # Not said (a full disk, say): no reader may trust the log, so it goes, and every
            # worker rescans in full at its next request, as they all did before the log.
            log.warning("cannot write the registry's change log %s (%s); every worker rescans", self._change_log, exc)
            try:
                os.unlink(self._change_log)
            except FileNotFoundError:
                pass
            except OSError as exc2:
                log.error("cannot remove the registry's change log %s (%s): changes may go unseen until a restart",
                          self._change_log, exc2)

    def _new_change_log(self) -> None:
        atomic_write_bytes(Path(self._change_log), os.urandom(8).hex().encode() + b"\n")

    def _read_change_log(self, since: tuple[bytes, int] | None) -> tuple[tuple[bytes, int] | None, bytes | None]:
        """The change log's first line and size now, and what it holds past ``since``'s offset
        if it is the log ``since`` was read from (None otherwise, and where there is none)."""
        try:
            with regular_file_fd(self._change_log) as fd:
                size = os.fstat(fd).st_size
                head = os.pread(fd, min(size, 64), 0)
                token = head[: head.find(b"\n") + 1]
                if not token:
                    return None, None  # being made, or damaged: not a log to read
                now = (token, size)
                if since is None or since[0] != token or size < since[1]:
                    return now, None
                return now, os.pread(fd, size - since[1], since[1])
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            log.warning("cannot read the registry's change log %s (%s): rescanning", self._change_log, exc)
            return None, None

    def _catch_up(self) -> None:
        """Re-read the folders the change log names since this process last read it; the
        whole registry where the log cannot say (none, made afresh, unreadable, or naming
        what is no model folder)."""
        with self._rescan_lock:
            generation = self._generation()
            if generation == self._seen_generation:
                return  # another thread caught up while this one waited
            read = self._log_read
            _, tail = self._read_change_log(read)
            if tail is None or read is None:
                self.refresh()
                return
            end = tail.rfind(b"\n") + 1  # a line being written is read next time, whole
            folders = {name for name in tail[:end].decode("utf-8", "replace").split("\n") if name}
            if not self._refresh_folders(folders, generation, (read[0], read[1] + end)):
                self.refresh()

    def _refresh_folders(self, folders: set[str], generation: int, read: tuple[bytes, int]) -> bool:
        """Re-read ``folders``; False (nothing done) where one is no model folder: a model's
        folder stays when its versions are deleted, so the log is damaged."""
        seen: dict[str, tuple[int, ModelVersion | None]] = {}
        found: list[ModelVersion] = []
        for name in folders:
            model_dir = self.root / name
            if "/" in name or name in ("", ".", "..") or model_dir.is_symlink() or not model_dir.is_dir():
                log.warning("the registry's change log names %r, which is no model folder: rescanning", name)
                return False
            try:
                found += self._scan_dir(model_dir, seen)
            except OSError as exc:
                log.warning("skipping model folder %s that cannot be read: %s", model_dir, exc)

        def apply() -> None:
            for identity in [i for i in self._index if i.dirname in folders]:
                del self._index[identity]
            for meta in found:
                self._index.setdefault(meta.identity, {})[meta.version] = meta
            # The metadata read of those folders' deleted versions goes with them: kept, each
            # version a retraining stored and PREDICTOR_KEEP_VERSIONS then deleted stayed in
            # memory in every process that follows the change log (the retraining worker, a
            # server between trainings), one ModelVersion more per retraining, for good.
            prefixes = tuple(os.fspath(self.root / name) + os.sep for name in folders)
            for path in [p for p in self._meta_cache if p.startswith(prefixes) and p not in seen]:
                del self._meta_cache[path]
            self._meta_cache.update(seen)

        self._apply_scan(apply, generation, read)
        return True

    def refresh(self) -> None:
        """Re-read the index from disk (other processes may have written new versions).

        Meta files are parsed again only when their modification time changed,
        so a rescan of a large registry costs directory listings, not JSON parsing.
        """
        with self._rescan_lock:
            self._refresh_all()

    def _refresh_all(self) -> None:
        generation = self._generation()
        log_state, _ = self._read_change_log(None)  # before the scan: what is logged after it is read next time
        index: dict[ModelIdentity, dict[int, ModelVersion]] = {}
        seen: dict[str, tuple[int, ModelVersion | None]] = {}
        for model_dir in os.scandir(self.root):
            try:
                if not model_dir.is_dir(follow_symlinks=False):
                    if model_dir.is_symlink():
                        log.warning("skipping model folder %s: it is a symbolic link, and models are read and "
                                    "written only inside the data directory", model_dir.path)
                    continue
                metas = self._scan_dir(Path(model_dir.path), seen)
            except OSError as exc:  # one folder that cannot be listed (permissions, a symlink loop) costs its own models
                log.warning("skipping model folder %s that cannot be read: %s", model_dir.path, exc)
                continue
            for meta in metas:
                index.setdefault(meta.identity, {})[meta.version] = meta

        def apply() -> None:
            self._meta_cache = seen
            self._index = index

        self._apply_scan(apply, generation, log_state)

    def _apply_scan(self, apply: Callable[[], None], generation: int, read: tuple[bytes, int] | None) -> None:
        """Put a re-read of the disk into the index (``apply``, under the lock), as seen up to
        ``generation`` and the change log up to ``read``, and let go of loaded versions the
        index no longer holds."""
        with self._lock:
            apply()
            self._index_changed()
            self._seen_generation = generation
            self._log_read = read
            gone = [key for key in self._loaded if key[1] not in self._index.get(key[0], {})]
            for key in gone:
                del self._loaded[key]
        if gone and self.on_loaded_change is not None:
            self.on_loaded_change()

    def refresh_identity(self, identity: ModelIdentity) -> None:
        """Re-read one model's versions (after a training worker wrote them)."""
        with self._rescan_lock:
            self._refresh_identity(identity)

    def _refresh_identity(self, identity: ModelIdentity) -> None:
        seen: dict[str, tuple[int, ModelVersion | None]] = {}
        model_dir = self.root / identity.dirname
        try:
            metas = self._scan_dir(model_dir, seen) if model_dir.is_dir() and not model_dir.is_symlink() else []
        except OSError as exc:
            log.warning("cannot read model folder %s: %s", model_dir, exc)
            metas = []
        with self._lock:
            self._meta_cache.update(seen)
            versions = {m.version: m for m in metas if m.identity == identity}
            if versions:
                self._index[identity] = versions
            else:
                self._index.pop(identity, None)
            self._index_changed()
            # The next maybe_refresh() rescans everything: other models may have changed as
            # well, and a request thread may have indexed a newer version of this one (stored
            # by another worker) between this scan and this lock, which the scan above lacks
            # (and read the change log past it).
            self._seen_generation = None
            self._log_read = None

    def _scan_dir(self, model_dir: Path, seen: dict[str, tuple[int, ModelVersion | None]]) -> list[ModelVersion]:
        out = []
        for entry in os.scandir(model_dir):
            if not _META.match(entry.name):
                continue
            mtime = None
            try:
                mtime = entry.stat().st_mtime_ns
                cached = self._meta_cache.get(entry.path)
                if cached is not None and cached[0] == mtime:
                    meta = cached[1]
                    if meta is None:  # the file that could not be read at the last scan, unchanged: said then
                        seen[entry.path] = cached
                        continue
                else:
                    # (Not through a link: the service writes its files itself, and a link to a
                    # file elsewhere, read as a version, was served.)
                    raw = read_regular(entry.path, MAX_META_BYTES + 1, follow_links=False)
                    if len(raw) > MAX_META_BYTES:
                        raise ValueError(f"it holds more than {MAX_META_BYTES:,} bytes")
                    meta = ModelVersion.from_json(orjson.loads(raw))
                    if meta.version != int(_META.match(entry.name).group(1)):
                        raise ValueError(f"it holds version {meta.version}")
                    if meta.identity.dirname != model_dir.name:
                        # A copy in another model's folder: read as that model's version, it
                        # made the model it names answer 404 ("deleted") for every prediction.
                        raise ValueError(f"it names the model {meta.identity.key}, whose folder is "
                                         f"{meta.identity.dirname}")
            except FileNotFoundError:
                if not _deleted_meanwhile(entry.path):
                    log.warning("skipping unreadable model metadata %s: a link to nothing", entry.path)
                continue
            except Exception as exc:  # one damaged file costs its own version, never the scan
                log.warning("skipping unreadable model metadata %s: %s", entry.path, exc)
                if mtime is not None and (not isinstance(exc, OSError) or isinstance(exc, NotRegularFile)):
                    # Damaged: not read again, nor said again, until it changes. (A file that
                    # could not be opened, for want of descriptors or permission, is tried
                    # again: that may pass without the file changing.)
                    seen[entry.path] = (mtime, None)
                continue
            if not (model_dir / _model_file(meta.version)).exists():
                if _deleted_meanwhile(entry.path):  # (a delete removes the meta file, then the model file)
                    continue
                # Still listed: loading it answers a 500 naming the missing file (and DELETE can
                # remove it), rather than an older version serving as if it were the latest.
                log.error("%s: its model file %s is missing", entry.path, _model_file(meta.version))
            seen[entry.path] = (mtime, meta)
            out.append(meta)
        return out

    def maybe_refresh(self) -> None:
        """Re-read what some process changed since the last scan, if anything: the folders
        the change log names (the whole registry where it cannot say)."""
        if self._generation() != self._seen_generation:
            self._catch_up()

    def identities(self) -> list[ModelIdentity]:
        with self._lock:
            return sorted(self._index, key=lambda i: i.as_tuple())

    def versions(self, identity: ModelIdentity) -> list[ModelVersion]:
        with self._lock:
            return [v for _, v in sorted(self._index.get(identity, {}).items())]

    def _index_changed(self) -> None:
        """Forget what was derived from the index (call with the lock held)."""
        self._resolved.clear()
        self._latest.clear()
        self._by_parts.clear()
        self._epoch += 1

    def latest(self, identity: ModelIdentity) -> ModelVersion:
        meta = self._latest.get(identity)
        if meta is not None:
            return meta
        epoch = self._epoch
        versions = self.versions(identity)
        if not versions:
            near = self.near_misses(identity.as_tuple())
            raise ModelNotFound(f"no model {identity.key}" + (f"; did you mean {', '.join(near)}?" if near else ""),
                                field="identity", extra={"candidates": near} if near else None)
        with self._lock:
            if self._epoch == epoch:  # not if the index changed meanwhile (a retrainer thread saving)
                self._latest[identity] = versions[-1]
        return versions[-1]

    def get_version(self, identity: ModelIdentity, version: int | None = None) -> ModelVersion:
        if version is None:
            return self.latest(identity)
        with self._lock:
            meta = self._index.get(identity, {}).get(version)
        if meta is None:
            raise NotFound(f"model {identity.key} has no version {version}", field="version")
        return meta

    def resolve(self, pattern: IdentityPattern) -> ModelIdentity:
        """The one stored identity matching ``pattern`` (``*`` parts match anything)."""
        key = pattern.as_tuple()
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        self.maybe_refresh()  # another worker may have trained it a moment ago
        with self._lock:
            if pattern.is_complete():  # one look-up, not a pass over every model
                whole = ModelIdentity(*key)
                matches = [whole] if whole in self._index else []
            else:
                matches = list(self._models_matching(key))
        if not matches:
            near = self.near_misses(key)
            said = f"; did you mean {', '.join(near)}?" if near else ""
            raise ModelNotFound(f"no trained model matches {pattern.describe()}{said}", field="identity",
                                extra={"candidates": near} if near else None)
        if len(matches) > 1:
            names = sorted(m.key for m in matches)
            raise AmbiguousModel(
                f"{len(matches)} models match {pattern.describe()}: {', '.join(names)}; specify more of the identity",
                field="identity", extra={"candidates": names},
            )
        with self._lock:
            if len(self._resolved) > 10_000:
                self._resolved.clear()
            self._resolved[key] = matches[0]
        return matches[0]

    def near_misses(self, key: tuple[object, ...], most: int = 5) -> list[str]:
        """The keys of the stored models that a pattern matching none misses by one part it
        names (a typo in the model's name, another software version): at most ``most``, none
        where more are (a pattern that names one part, a model type no model has). A part may
        be a trace's value (a version stated as the number 2.4), compared as a trace names it."""
        named = [(j, part) for j, part in enumerate(key) if part is not None]
        if len(named) < 2:
            return []
        with self._lock:
            if not all(isinstance(part, str) for _, part in named):  # a trace's number or boolean
                near = [i.key for i in self._index
                        if sum(not names_part(part, i.as_tuple()[j]) for j, part in named) == 1]
                return sorted(near) if len(near) <= most else []
            near = []
            for j, part in named:
                # The models that have every other part named, and another one here.
                others = tuple(None if k == j else p for k, p in enumerate(key))
                for identity in self._models_matching(others):
                    if identity.as_tuple()[j] != part:
                        near.append(identity.key)
                        if len(near) > most:
                            return []
        return sorted(near)

    def matching(self, pattern: IdentityPattern) -> list[ModelIdentity]:
        """The stored models ``pattern`` matches (``*`` parts match anything), in no set order."""
        key = pattern.as_tuple()
        with self._lock:
            return list(self._models_matching(key))

    def _models_matching(self, key: tuple[str | None, ...]) -> Sequence[ModelIdentity]:
        """The stored models that the parts ``key`` names (not None) match, looked up in a table
        of the models by their values of those parts, made once per set of parts after each
        change of the index (call with the lock held; the list is the table's: do not change it)."""
        named = [j for j, part in enumerate(key) if part is not None]
        mask = sum(1 << j for j in named)
        table = self._by_parts.get(mask)
        if table is None:
            table = self._by_parts[mask] = {}
            for identity in self._index:
                parts = identity.as_tuple()
                table.setdefault(tuple(parts[j] for j in named), []).append(identity)
        return table.get(tuple(key[j] for j in named), ())

    # ------------------------------------------------------------------ load / save

    def is_loaded(self, identity: ModelIdentity, version: int) -> bool:
        with self._lock:
            return (identity, version) in self._loaded

    def load(self, identity: ModelIdentity, version: int | None = None, _again: bool = True) -> LoadedModel:
        meta = self.get_version(identity, version)
        key = (identity, meta.version)
        with self._lock:
            hit = self._loaded.get(key)
            if hit is not None:
                self._loaded.move_to_end(key)
                return hit
            # One load per version however many ask at once: each first prediction parsed the
            # same file, and every one of them waited for all those reads.
            turn = self._loading.setdefault(key, threading.RLock())
        with turn:
            try:
                with self._lock:
                    hit = self._loaded.get(key)
                if hit is not None:  # loaded by the caller this one waited for
                    return hit
                return self._read_model(identity, meta, version, _again)
            finally:
                with self._lock:
                    if self._loading.get(key) is turn:
                        del self._loading[key]

    def _read_model(self, identity: ModelIdentity, meta: ModelVersion, version: int | None,
                    _again: bool) -> LoadedModel:
        key = (identity, meta.version)
        path = self.root / identity.dirname / _model_file(meta.version)
        digest = meta.extra.get(MODEL_DIGEST)
        try:
            state = (file_stamp(path), digest)
        except OSError:  # (gone: its failure is keyed so too)
            state = (None, digest)
        with self._lock:
            failed = self._unreadable.get(key)
        # (Its meta file gone, it was deleted since: that is said below.)
        if failed is not None and failed[0] == state and (path.parent / _meta_file(meta.version)).exists():
            raise ModelUnreadable(failed[1])
        try:
            raw = read_regular(path, follow_links=False)
            if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
                raise ValueError("the file does not match the SHA-256 digest its meta file holds")
            model = QuantileModel.from_json(orjson.loads(raw))
            if len(model.kinds) != len(meta.features.column_names):
                # The meta file's features and the model's columns are one design: one edited
                # without the other failed predictions with LightGBM's or numpy's errors.
                raise ValueError(f"the model has {len(model.kinds)} columns, its meta file lists "
                                 f"{len(meta.features.column_names)}")
            if model.regimes_ is not None and model.regime_column != meta.features.regime_column:
                raise ValueError(f"the model answers first runs by column {model.regime_column}, its meta file's "
                                 f"first_of_shape column is {meta.features.regime_column}")
            # A file that parses but lost or gained an array element must fail here, naming the
            # file, not at prediction time. Checked with a digest too: it is no signature (it lies
            # beside the file), and a file edited with its digest recomputed was served as it was.
            model.check_loaded(meta.features.probe_row())
        except Exception as exc:  # any failure to rebuild the model from its file
            if not (path.parent / _meta_file(meta.version)).exists():
                # Deleted by another process since this one's index was read: gone, not damaged.
                self.refresh()
                if version is None and _again:
                    return self.load(identity, None, _again=False)  # the version that serves now, if any
                raise ModelNotFound(f"model {identity.key} has no version {meta.version}: it was deleted",
                                    field="version" if version is not None else "identity") from None
            log.error("cannot load %s version %d from %s: %r", identity.key, meta.version, path, exc)
            message = (f"model {identity.key} version {meta.version} cannot be loaded: its file {path.name} is "
                       f"missing or damaged ({type(exc).__name__}); retrain the model or delete this version")
            with self._lock:
                self._unreadable[key] = (state, message)
            raise ModelUnreadable(message) from None
        loaded = LoadedModel(meta, model)
        with self._lock:
            self._unreadable.pop(key, None)
            self._loaded[key] = loaded
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
        if self.on_loaded_change is not None:
            self.on_loaded_change()
        return loaded

    def save(self, meta: ModelVersion, model: QuantileModel,
             training_data: tuple[np.ndarray, np.ndarray] | None = None, after: int | None = None,
             before_commit: Callable[[ModelVersion], None] | None = None) -> ModelVersion:
        """Store ``model`` as the next version of ``meta.identity``; returns the stored meta.

        ``training_data`` (the encoded X and y) is kept beside the model so that
        online retraining can combine it with observations later.

        With ``after``, only as the successor of that version: if any other version
        above it is stored or being stored (by any process), nothing is written and
        :class:`VersionConflict` is raised. A retraining built from version ``after``
        must not land over a training that took its number first but is still
        writing its files, which the newest stored version does not show yet.

        ``before_commit`` is called with the meta (its version set) once every file but the
        meta file is written, just before the version becomes visible; if it raises, nothing
        is stored.
        """
        with writing(f"model {meta.identity.key}"):
            model_dir = self._model_folder(meta.identity)
            version = self._claim_version(model_dir, meta.identity, after)
            meta.version = version
            try:
                self._write_version(model_dir, meta, model, training_data, after, before_commit)
            except BaseException:
                # A version that could not be written whole is not left half there (nor its space taken).
                (model_dir / _model_file(version)).unlink(missing_ok=True)
                (model_dir / _data_file(version)).unlink(missing_ok=True)
                raise
            finally:
                (model_dir / _lock_file(version)).unlink(missing_ok=True)
        self._bump_generation(model_dir)
        with self._lock:
            self._index_changed()
            self._index.setdefault(meta.identity, {})[version] = meta
        if self.on_change is not None:
            self.on_change(meta.identity)
        with self._lock:
            self._loaded[(meta.identity, version)] = LoadedModel(meta, model)
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
        if self.on_loaded_change is not None:
            self.on_loaded_change()
        return meta

    def _model_folder(self, identity: ModelIdentity) -> Path:
        """The folder of ``identity``'s versions, made if need be (in an existing models folder)."""
        model_dir = self.root / identity.dirname
        # Not its parents: a models folder gone under the service (a volume unmounted) is
        # not made again, empty, for a version to be numbered 1 there.
        try:
            make_folder(model_dir)
        except FileNotFoundError:
            if self.root.is_dir():
                raise
            raise DataDirectoryGone(f"model {identity.key} cannot be stored: the models folder {self.root} "
                                    "is gone (deleted, or its volume unmounted)") from None
        if model_dir.is_symlink():
            # Written through, it stored (and a delete removed) files wherever the link led.
            raise StorageError(f"model {identity.key} cannot be stored: its folder {model_dir.name} in the "
                               "data directory is a symbolic link, which the service does not follow")
        return model_dir

    def _claim_version(self, model_dir: Path, identity: ModelIdentity, after: int | None) -> int:
        """The next version's number, claimed (its lock file made) for ``identity``: with
        ``after``, only if no version above that one is stored or being stored."""
        version = self._reserve_version(model_dir)
        if after is not None:
            newer = next(_claimed_versions(model_dir, after, version), None)
            if newer is not None:
                (model_dir / _lock_file(version)).unlink(missing_ok=True)
                raise VersionConflict(f"version {newer} of {identity.key} was stored (or is being stored) "
                                      f"after version {after}")
        other = self._other_identity_in(model_dir, identity)
        if other is not None:
            (model_dir / _lock_file(version)).unlink(missing_ok=True)
            raise InvalidInput(f"model {identity.key} cannot be stored: its directory {model_dir.name} holds "
                               f"the model {other.key}, whose name hashes alike (a part holding the character "
                               "\\x1f); change a part of the name", field="model")
        return version

    def _write_version(self, model_dir: Path, meta: ModelVersion, model: QuantileModel,
                       training_data: tuple[np.ndarray, np.ndarray] | None, after: int | None,
                       before_commit: Callable[[ModelVersion], None] | None) -> None:
        """Write the claimed version ``meta.version``'s files, its meta file last (it exists once
        that is there, complete)."""
        version = meta.version
        body = orjson.dumps(model.to_json(), option=orjson.OPT_SERIALIZE_NUMPY)
        atomic_write_bytes(model_dir / _model_file(version), body)
        # Any change to the model file on disk (a bad copy, a hand edit) is then found at load.
        meta.extra[MODEL_DIGEST] = hashlib.sha256(body).hexdigest()
        if training_data is not None:
            with atomic_file(model_dir / _data_file(version)) as fh:
                np.savez_compressed(fh, X=np.asarray(training_data[0], dtype=np.float64),
                                    y=np.asarray(training_data[1], dtype=np.float64))
        # Not if the model was deleted meanwhile (a delete tombstones versions being written,
        # then removes their meta files), nor the version it was built from: a retraining
        # that was storing its version must not bring back a deleted model.
        self._refuse_if_deleted(model_dir, meta.identity, version, after)
        meta_body = orjson.dumps(meta.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        if len(meta_body) > MAX_META_BYTES:
            # Written, it was a version the index skips unread: a training answered its
            # number, and the previous version went on serving.
            raise PayloadTooLarge(f"model {meta.identity.key} cannot be stored: its metadata would take "
                                  f"{len(meta_body):,} bytes, over the {MAX_META_BYTES:,} a model's meta file "
                                  "may hold (what its traces' fields are named, and which were dropped, "
                                  "is part of it)")
        if before_commit is not None:
            before_commit(meta)
        atomic_write_bytes(model_dir / _meta_file(version), meta_body)
        try:
            self._refuse_if_deleted(model_dir, meta.identity, version, None)
        except VersionConflict:
            (model_dir / _meta_file(version)).unlink(missing_ok=True)  # the delete came between: it wins
            raise

    @staticmethod
    def _refuse_if_deleted(model_dir: Path, identity: ModelIdentity, version: int, after: int | None) -> None:
        """Raise :class:`VersionConflict` if ``version`` (being written) or ``after`` (the
        version it was built from) was deleted: each has its tombstone."""
        if (model_dir / _tombstone_file(version)).exists():
            raise VersionConflict(f"{identity.key} was deleted while this version was stored: it is not stored")
        if after is not None and (model_dir / _tombstone_file(after)).exists():
            raise VersionConflict(f"version {after} of {identity.key}, which this version was built from, was deleted "
                                  "meanwhile: it is not stored")

    def _reserve_version(self, model_dir: Path) -> int:
        # An exclusive lock file per number keeps concurrent workers from colliding; a deleted
        # version's tombstone keeps its number from being given again.
        taken = [int(m.group(1)) for e in os.scandir(model_dir) if (m := _VERSION_FILE.match(e.name))]
        version = max((n for n in taken if n <= MAX_VERSION), default=0) + 1
        while True:
            lock = model_dir / _lock_file(version)
            try:
                _create_lock(lock)
            except FileExistsError:
                version += 1
                continue
            # The scan above may be old: another writer may have stored this number (and let go
            # of its lock) since. Its files say so; writing on would overwrite its version.
            prefix = f"v{version:04d}."
            with os.scandir(model_dir) as entries:  # (any() stops early: closed here, not by the collector)
                taken = any(e.name.startswith(prefix) and e.name != lock.name for e in entries)
            if taken:
                lock.unlink(missing_ok=True)
                version += 1
                continue
            return version

    def _other_identity_in(self, model_dir: Path, identity: ModelIdentity) -> ModelIdentity | None:
        """Another identity whose versions are stored in ``model_dir``: two identities whose
        parts hold the separator of the directory name's hash (``('a\\x1fb', 'c')`` and
        ``('a', 'b\\x1fc')``) share it, and one's delete would delete the other's logs."""
        return next((m.identity for m in self._scan_dir(model_dir, {}) if m.identity != identity), None)

    def training_data(self, identity: ModelIdentity, version: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The encoded training rows of a version, if they were stored and are readable (no pickle allowed)."""
        path = self.root / identity.dirname / _data_file(version)
        if not path.exists():
            return None
        try:
            # Opened as every read of the data directory is: a FIFO in its place hung the
            # retraining, and with it every later one (they run one at a time).
            with regular_file_fd(path) as fd, os.fdopen(fd, "rb", closefd=False) as fh, \
                    np.load(fh, allow_pickle=False) as data:
                return data["X"], data["y"]
        except FileNotFoundError:  # deleted since it was looked for (the version, by another worker): no damage
            return None
        except Exception as exc:  # damaged on disk: retraining goes on with the observations alone
            log.warning("ignoring the unreadable training rows of %s version %d (%s): %r", identity.key, version, path, exc)
            return None

    def delete(self, identity: ModelIdentity, version: int | None = None) -> list[int]:
        """Delete one version, or every version when ``version`` is None."""
        model_dir = self.root / identity.dirname
        targets = [m.version for m in self.versions(identity)] if version is None else [self.get_version(identity, version).version]
        if not targets:
            raise ModelNotFound(f"no model {identity.key}", field="identity")
        stored = list(targets)  # what the answer names: those being written were never stored
        if version is None:
            # And the versions being written now (a retraining storing its version, another
            # worker's training): their tombstones stop them from landing (see save).
            targets = sorted(set(targets) | set(_claimed_versions(model_dir)))
        deleted: list[int] = []
        failure: OSError | None = None
        for v in targets:
            # A tombstone first: a number is never given twice, since another worker may still
            # serve (and have cached predictions of) the deleted version under it.
            try:
                os.close(os.open(model_dir / _tombstone_file(v), os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as exc:
                log.warning("%s version %d: cannot leave a tombstone (%s); its number may be reused", identity.key, v, exc)
            # Meta next: once it is gone the version no longer exists for anyone.
            try:
                (model_dir / _meta_file(v)).unlink(missing_ok=True)
            except OSError as exc:  # a read-only file system, say: this version and the rest stay
                failure = exc
                break
            deleted.append(v)
            for leftover in (_model_file(v), _data_file(v)):
                try:
                    (model_dir / leftover).unlink(missing_ok=True)
                except OSError as exc:  # the version is gone all the same; the file is only litter
                    log.warning("%s version %d: cannot remove %s (%s)", identity.key, v, leftover, exc)
        if version is None and failure is None:
            _remove_orphans(model_dir)  # and what writers killed midway left of other numbers
        if deleted:
            with self._lock:
                versions = self._index.get(identity, {})
                for v in deleted:
                    versions.pop(v, None)
                    self._loaded.pop((identity, v), None)
                if not versions:
                    self._index.pop(identity, None)
                self._index_changed()
            self._bump_generation(model_dir)
            if self.on_change is not None:
                self.on_change(identity)
            if self.on_loaded_change is not None:
                self.on_loaded_change()
        if failure is not None:
            done = ("nothing was deleted" if not deleted else f"version {deleted[0]} was deleted" if len(deleted) == 1
                    else f"versions {', '.join(map(str, deleted))} were deleted")
            raise StorageError(f"cannot delete version {targets[len(deleted)]} of {identity.key} in the data directory "
                               f"({failure.strerror or type(failure).__name__}): {done}") from failure
        return stored

    def is_stored(self, identity: ModelIdentity, version: int) -> bool:
        """Whether ``version`` of ``identity`` is stored now, whatever this process's index
        says (another process may have written it since): its meta file is there."""
        try:
            return (self.root / identity.dirname / _meta_file(version)).is_file()
        except (OSError, ValueError):  # a version number past what a file name holds
            return False

    def is_stored_as(self, identity: ModelIdentity, version: int, created_at: Any, digest: Any) -> bool:
        """Whether ``version`` of ``identity`` is stored now as the version made at
        ``created_at`` whose model file has that ``digest``: a writer killed before its meta
        file was written leaves its number free, and another training may since have
        stored its own version under it."""
        try:
            stored = orjson.loads(read_regular(self.root / identity.dirname / _meta_file(version)))
        except (OSError, ValueError):  # not there (a number past what a file name holds), or damaged
            return False
        extra = stored.get("extra") if isinstance(stored, dict) else None
        return (stored.get("created_at") == created_at and isinstance(extra, dict)
                and extra.get(MODEL_DIGEST) == digest)

    def was_deleted(self, identity: ModelIdentity, version: int) -> bool:
        """Whether ``version`` of ``identity`` was stored here and deleted since (its tombstone
        stays: a number is never given twice)."""
        try:
            return (self.root / identity.dirname / _tombstone_file(version)).exists()
        except (OSError, ValueError):  # a version number past what a file name holds
            return False

    @property
    def loaded_count(self) -> int:
        return len(self._loaded)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _model_file(version: int) -> str:
    return f"v{version:04d}.model.json"


def _data_file(version: int) -> str:
    return f"v{version:04d}.data.npz"


def _meta_file(version: int) -> str:
    return f"v{version:04d}.meta.json"


def _lock_file(version: int) -> str:
    """Held while the version is being written (and reserves its number)."""
    return f"v{version:04d}.lock"


def _tombstone_file(version: int) -> str:
    """Left where a deleted version was: its number is never given again."""
    return f"v{version:04d}.deleted"
