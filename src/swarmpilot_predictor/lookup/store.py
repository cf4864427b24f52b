"""The table directory: :class:`LookupTableStore` and the file signatures it checks.

Names, the default table, loading through the sidecars (:mod:`.sidecar`), the bounded
cache of loaded tables, listing, deleting and the paths generation writes to.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..atomic import NotRegularFile, file_stamp, link_loop, open_regular, regular_file_fd, remove_stale_temps
from ..errors import InvalidInput, NotFound, PredictorError, StorageError, shown
from ..identity import IDENTITY_KEYS
from ..traces import TRACE_FILE_KINDS, TraceError
from .names import check_table_name, table_format
from .sidecar import SIDECAR_NAME_BYTES, load_index, save_index
from .table import LookupTable

# The package's logger: records keep the name they had before the split (swarmpilot_predictor.lookup).
log = logging.getLogger(__package__)

@dataclass
class _Cached:
    signature: tuple
    table: LookupTable


class LookupTableStore:
    """Tables in the table directory, plus the one ``DEFAULT_LOOKUP_TABLE`` names.

    Loaded tables are cached (at most ``max_loaded``, least recently used
    evicted; the default table is pinned) and reloaded when their file changes.
    A table that cannot be read answers with an error naming the file and the
    place, and the failure is remembered until the file changes. Parsed
    columns are kept in sidecars under ``.index/`` (see :func:`save_index`), so
    a big table is parsed once, not at every start.
    """

    def __init__(self, root: Path, default: str | None = None, max_loaded: int = 8):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self._sidecars_linked():
            log.warning("lookup tables: their sidecar folder %s is a symbolic link, which the service does not follow: "
                        "tables are parsed at each load, and nothing there is written or deleted", self.root / ".index")
        for d in (self.root, self.root / ".index"):  # what a generation or sidecar killed midway left
            if d == self.root or not self._sidecars_linked():
                remove_stale_temps(d)
        self.max_loaded = max_loaded
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._failed: dict[str, tuple[tuple, str]] = {}
        self._name_locks: dict[str, threading.Lock] = {}
        self.default_name: str | None = None
        self.default_path: Path | None = None
        self.default_table: LookupTable | None = None
        self.default_signature: tuple | None = None
        self.default_error: str | None = None
        self._default_loading = threading.Lock()
        self._default_epoch = 0  # counts deletes of the default: a load begun before one is not served
        if default:
            self.load_default(default)
        self._remove_orphan_sidecars()

    def _sidecars_linked(self) -> bool:
        """Whether the sidecar folder (``.index``) is a symbolic link: it is then neither read,
        written nor deleted through (the start's clean-up removed every ``.npz`` and stale
        temporary file wherever it led, outside the data directory). The table directory itself
        may be one (to a larger disk): its ``.index`` is the service's own folder inside it."""
        return (self.root / ".index").is_symlink()

    def _remove_orphan_sidecars(self) -> None:
        """Remove the sidecars of table files gone (deleted by hand, or renamed): each path a
        table ever had kept one, for ever. A sidecar of a table made meanwhile by another
        worker may go too; it is only written again at that table's next load."""
        index_dir = self.root / ".index"
        if self._sidecars_linked():
            return
        try:
            sidecars = [e for e in os.scandir(index_dir) if e.name.endswith(".npz") and e.is_file(follow_symlinks=False)]
        except OSError:
            return
        keep = {self.index_path(self.root / name).name for name in self.names()}
        if self.default_path is not None:
            keep.add(self.index_path(self.default_path).name)
        for entry in sidecars:
            if entry.name not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    # ------------------------------------------------------------------ default table

    def load_default(self, spec: str) -> None:
        """Load the table ``DEFAULT_LOOKUP_TABLE`` names: a path, or a name in the table directory.

        A table that cannot be loaded is logged and reported by ``/health``; the
        service keeps running without it.
        """
        path = Path(spec).expanduser()
        if not path.is_absolute() and ((self.root / spec).is_file() or (not path.exists() and path.name == spec)):
            # A bare name is a table of the table directory, also one generated only later.
            path = self.root / spec
        resolved = path.resolve() if path.exists() else path
        table: LookupTable | None = None
        signature: tuple | None = None
        error: str | None = None
        try:
            if table_format(path.name) is None:
                raise TraceError(f"{path.name}: a lookup table is a {TRACE_FILE_KINDS} file")
            signature = file_stamp(path)
            table = self._load(path, path.name, signature)
            log.info("default lookup table %s loaded: %d records", path, table.n_rows)
        except FileNotFoundError:
            error = f"DEFAULT_LOOKUP_TABLE {spec!r}: no such file"
        except (TraceError, OSError, ValueError) as exc:
            error = f"DEFAULT_LOOKUP_TABLE {spec!r}: {exc}"
        if error:
            table = signature = None
            log.error("%s; serving without a default lookup table", error)
        with self._lock:  # readers see the old default or the new one, never parts of both
            self.default_name, self.default_path = path.name, resolved
            self.default_table, self.default_signature, self.default_error = table, signature, error

    @property
    def loaded_count(self) -> int:
        """The tables held in memory that can still serve: those whose file is gone (deleted
        by another worker, or by hand) are let go first (a stat each, of at most
        ``max_loaded`` and the default), or ``/health``'s ``lookup_predictor_loaded`` stayed
        true with no table left, until a lookup or ``/tables`` in this worker noticed."""
        self._let_go_of_default_if_gone()
        with self._lock:
            held = list(self._cache)
        for name in held:
            try:
                os.stat(self.root / name)
            except FileNotFoundError:
                self._forget(name)
            except OSError:
                pass  # not to be looked at: kept, as a lookup would keep it
        with self._lock:
            return len(self._cache) + (1 if self.default_table is not None else 0)

    # ------------------------------------------------------------------ access

    def path_of(self, name: str, field: str = "name") -> Path:
        """The file behind a table name (the default table may live outside the directory)."""
        check_table_name(name, field)
        if name == self.default_name and self.default_path is not None and self.default_path.is_file():
            return self.default_path
        path = self.root / name
        if not path.is_file():
            if link_loop(path):  # as a table that cannot be read, not a 500 nor "not found"
                raise InvalidInput(f"lookup table cannot be read: {shown(name)} is a loop of symbolic links",
                                   field=field)
            raise NotFound(f"lookup table {shown(name)} not found; available: {', '.join(self.names()) or 'none'}",
                           field=field)
        if path.is_symlink() and not self._inside(path):
            raise InvalidInput(f"lookup table {shown(name)} is a symbolic link that leads outside the data directory",
                               field=field)
        return path

    def _inside(self, link: Path) -> bool:
        """Whether a table file that is a link leads into the data directory (the table
        directory's parent) or the table directory (itself a link, to a larger disk, say):
        a link there to any file the service could read served it."""
        target = link.resolve()
        return target.is_relative_to(self.root.parent.resolve()) or target.is_relative_to(self.root.resolve())

    def open_table(self, name: str) -> tuple[IO[bytes], int]:
        """The table file behind ``name``, opened, and its size: a download reads what it opened,
        whole, even if the table is regenerated (renamed over) or deleted meanwhile."""
        path = self.path_of(name)
        try:
            # Checked as every read of the data directory is: a FIFO put in its place since
            # path_of looked must not hang the open.
            fd = open_regular(path)
        except FileNotFoundError:
            raise NotFound(f"lookup table {shown(name)} not found: it was deleted", field="name") from None
        except NotRegularFile:
            raise NotFound(f"lookup table {shown(name)} is not a regular file", field="name") from None
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), os.fstat(fd).st_size

    def get(self, name: str | None, field: str = "lookup_table_name") -> LookupTable:
        if name is None:
            default = self._default_current()
            if default is not None:
                return default
            detail = f" ({self.default_error})" if self.default_error else ""
            raise InvalidInput(f"lookup_table_name is required: no default lookup table is loaded{detail}", field=field)
        check_table_name(name, field)
        if name == self.default_name:
            default = self._default_current()
            if default is not None:
                return default
        try:
            path = self.path_of(name, field)
            signature = file_stamp(path)
        except (NotFound, FileNotFoundError) as exc:  # (deleted since path_of looked)
            # Deleted, maybe by another worker: what this one holds of it goes too.
            self._forget(name)
            if isinstance(exc, NotFound):
                raise
            raise NotFound(f"lookup table {shown(name)} not found", field=field) from None
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit.signature == signature:
                self._cache.move_to_end(name)
                return hit.table
            failed = self._failed.get(name)
            if failed is not None and failed[0] == signature:
                raise InvalidInput(failed[1], field=field)
            name_lock = self._name_locks.setdefault(name, threading.Lock())
        with name_lock:
            with self._lock:
                hit = self._cache.get(name)
                if hit is not None and hit.signature == signature:
                    return hit.table
            try:
                table = self._load(path, name, signature)
            except TraceError as exc:
                if not os.path.lexists(path):  # deleted while it was read: gone, not damaged
                    raise NotFound(f"lookup table {shown(name)} not found: it was deleted", field=field) from None
                message = f"lookup table cannot be read: {exc}"
                with self._lock:
                    self._failed[name] = (signature, message)
                raise InvalidInput(message, field=field) from None
            with self._lock:
                self._failed.pop(name, None)
                self._cache[name] = _Cached(signature, table)
                self._cache.move_to_end(name)
                while len(self._cache) > self.max_loaded:
                    self._cache.popitem(last=False)
            return table

    def _default_current(self) -> LookupTable | None:
        """The default table as its file is now; None when there is none to serve.

        A file that appeared since (the table generated after the service started, or
        again after a delete) is loaded, one that changed is reloaded (a bad new
        version keeps the loaded one), and one that went away (deleted, maybe by
        another worker) is no longer served. The default's fields are read together
        under the lock, once: another thread may change them at any moment.
        """
        with self._lock:
            table, path, known = self.default_table, self.default_path, self.default_signature
        if path is None:
            return None
        try:
            signature = file_stamp(path)
        except FileNotFoundError:
            self._let_go_of_default(table, path)
            return None
        except OSError:
            return table
        if signature == known:  # loaded, or failed to load, at this version of the file
            return table
        # Parsed outside the store's lock (a million rows take seconds): /health, /tables and
        # the other tables' lookups read under it. One thread loads; the others wait here.
        with self._default_loading:
            with self._lock:
                if self.default_table is not table or self.default_signature != known:
                    return self.default_table  # another thread got there first: its answer is current
                epoch = self._default_epoch
            loaded, error = None, None
            try:
                loaded = self._load(path, self.default_name or path.name, signature)
                log.info("default lookup table %s loaded: %d records", path, loaded.n_rows)
            except (TraceError, OSError) as exc:  # OSError: replaced or deleted again while it was read
                error = f"DEFAULT_LOOKUP_TABLE {str(path)!r}: {exc}"
                log.error("default lookup table %s cannot be read%s: %s", path,
                          ", keeping the loaded one" if table is not None else "", exc)
            with self._lock:
                if self._default_epoch != epoch:  # deleted while it was read: not served
                    return self.default_table
                if loaded is not None:
                    self.default_table, self.default_error = loaded, None
                elif table is None:
                    self.default_error = error
                else:  # served still, from the copy loaded before: /health says why not the file's
                    self.default_error = f"{error}; serving the copy loaded before"
                self.default_signature = signature
                return self.default_table

    def _let_go_of_default(self, table: LookupTable | None, path: Path) -> None:
        """The default ``table``, loaded from ``path``, whose file is gone: no longer served."""
        if table is not None:
            with self._lock:
                if self.default_table is table:
                    self.default_table = self.default_signature = None
                    self.default_error = f"DEFAULT_LOOKUP_TABLE {str(path)!r}: no such file"

    def default_state(self) -> tuple[str | None, bool, str | None]:
        """``(name, loaded, error)`` of the default table, read together.

        Nothing is loaded here: ``/health`` answers at once, and a table file that
        appeared or changed is loaded by the first lookup that needs it. A default whose
        file is gone (deleted by another worker, or by hand) is let go here, at the cost of
        a stat: ``/health`` went on saying ``mode: "lookup_table"`` while every lookup of
        it was a 422, until a lookup in this worker noticed.
        """
        self._let_go_of_default_if_gone()
        with self._lock:
            return self.default_name, self.default_table is not None, self.default_error

    def _let_go_of_default_if_gone(self) -> None:
        """Let go of the default table if its file is gone (a stat; nothing is loaded)."""
        with self._lock:
            table, path = self.default_table, self.default_path
        if table is None or path is None:
            return
        try:
            os.stat(path)
        except FileNotFoundError:
            self._let_go_of_default(table, path)
        except OSError:
            pass  # not to be looked at: a lookup serves the copy loaded, as it would

    # ------------------------------------------------------------------ loading through the sidecar

    def index_path(self, path: Path) -> Path:
        """Where the parsed columns of the table file ``path`` are kept (one sidecar per file path)."""
        try:
            target = path.resolve()
        except (RuntimeError, OSError):  # a loop of symbolic links (RuntimeError before Python 3.13)
            target = Path(os.path.abspath(path))
        digest = hashlib.sha256(os.fsencode(target)).hexdigest()[:12]
        # The digest tells files apart; the name is only for people, so it is cut to leave room
        # for the digest within the file system's 255 bytes.
        short = os.fsencode(path.name)[:SIDECAR_NAME_BYTES].decode("utf-8", "ignore")
        return self.root / ".index" / f"{short}.{digest}.npz"

    def _load(self, path: Path, name: str, signature: tuple) -> LookupTable:
        # The sidecar must match the file's stat signature and the bytes at both of its ends:
        # a file rewritten in place with the same size and time is still noticed. Taken first,
        # as the file is opened as a regular file: a DEFAULT_LOOKUP_TABLE naming a FIFO hung
        # the start for ever, and a link to /dev/zero was read until memory ran out.
        try:
            source = (*signature, _fingerprint(path))
        except NotRegularFile:
            raise TraceError(f"{name}: not a regular file (a FIFO or a device, say), which is not read") from None
        except OSError as exc:  # deleted or replaced since its signature was taken
            raise TraceError(f"{name}: cannot open ({exc.strerror or exc})") from None
        if self._sidecars_linked():
            return LookupTable.load(path, name=name)
        index = self.index_path(path)
        table = load_index(index, path, name, source)
        if table is not None:
            return table
        table = LookupTable.load(path, name=name)
        try:
            if (*file_stamp(path), _fingerprint(path)) == source:  # not if the file changed while it was parsed
                save_index(table, index, source)
                # A delete of the table between that look and the sidecar's rename found no
                # sidecar to delete: this one would stay for good (2.2 MB for 20,000 rows).
                # Deleted after the rename, the delete removes it itself.
                if not path.exists():
                    index.unlink(missing_ok=True)
        except FileNotFoundError as exc:
            if os.path.lexists(path):
                log.warning("lookup table %s: cannot write its sidecar %s: %s", name, index, exc)
            else:  # deleted while it was parsed: no sidecar is wanted (it was a warning, "cannot write its sidecar")
                log.debug("lookup table %s was deleted while it was parsed: no sidecar written", name)
        except Exception as exc:  # noqa: BLE001 - the sidecar only saves time: the parsed table is served regardless
            log.warning("lookup table %s: cannot write its sidecar %s: %s", name, index, exc)
        return table

    # ------------------------------------------------------------------ listing, deleting, writing

    def names(self) -> list[str]:
        out = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith(".") or not table_format(entry.name):
                continue
            try:
                is_file = entry.is_file()
            except OSError:  # a loop of symbolic links: no table to list (naming it says why)
                continue
            if is_file and (not entry.is_symlink() or self._inside(Path(entry.path))):
                out.append(entry.name)
        return out

    def served_names(self) -> list[str]:
        """The names a prediction can ask for now: the tables' files, then the default table's."""
        self._let_go_of_default_if_gone()  # (its series in /metrics go with it)
        names = self.names()
        if self.default_name and self.default_table is not None and self.default_name not in names:
            names.append(self.default_name)
        return names

    def _forget(self, name: str) -> None:
        with self._lock:
            self._cache.pop(name, None)
            self._failed.pop(name, None)

    def list(self) -> list[dict[str, Any]]:
        out = []
        names = self.served_names()
        with self._lock:
            gone = [name for name in self._cache if name not in names]
        for name in gone:  # deleted by another worker: not held here either
            self._forget(name)
        for name in names:
            try:
                path = self.path_of(name)
                st = path.stat()
                signature = file_stamp(path)
            except (PredictorError, OSError):
                continue
            with self._lock:
                cached = self._cache.get(name)
            # A copy of a file since replaced is not served (the next lookup reads the file again):
            # not loaded. (The default table's copy serves until a new version reads.)
            table = self.default_table if name == self.default_name and self.default_table is not None else (
                cached.table if cached is not None and cached.signature == signature else None)
            entry: dict[str, Any] = {
                "name": name,
                "format": table_format(name),
                "size_bytes": st.st_size,
                "modified_at": st.st_mtime,
                "default": name == self.default_name and self.default_table is not None,
                "loaded": table is not None,
            }
            if table is not None:
                entry["rows"] = table.n_rows
                entry["features"] = table.feature_names
                # The levels its records store (a set per kind of record), and their knots.
                entry["quantiles"] = [levels.tolist() for levels in table.levelsets]
                entry["knot_levels"] = [knots.tolist() for knots in table.knot_levels]
                entry["identities"] = [{**dict(zip(IDENTITY_KEYS, g.identity)), "model_versions": table.versions_of(g)}
                                       for g in table.groups]
            with self._lock:
                failed = self._failed.get(name)
            if failed is not None and failed[0] == signature:
                entry["error"] = failed[1]
            out.append(entry)
        return out

    def delete(self, name: str) -> dict[str, Any]:
        check_table_name(name, "name")
        if name == self.default_name and self.default_path is not None:
            inside = self.default_path.parent.resolve() == self.root.resolve()
            if not inside and self.default_path.exists():
                raise PredictorError(
                    f"lookup table {name!r} is the default table, loaded from {self.default_path} outside the table "
                    "directory; it is not deleted (unset DEFAULT_LOOKUP_TABLE instead)",
                    field="name",
                )
        path = self.root / name
        # A loop of symbolic links has no target, nor sidecar: the link goes, as a table link's delete removes the link.
        looped = link_loop(path)
        if not looped and not path.is_file():
            if name == self.default_name and self.default_table is not None:
                self._forget_default()
                return {"status": "success", "deleted": name}
            raise NotFound(f"lookup table {shown(name)} not found", field="name")
        index = None if looped else self.index_path(path)  # before the unlink: a symlink's sidecar is named after its target
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"lookup table {shown(name)} not found", field="name") from None
        except OSError as exc:  # a read-only table directory, say: the table stays (a 500 "internal error" until 2026-12-06)
            raise StorageError(f"cannot delete lookup table {shown(name)} in {self.root} "
                               f"({exc.strerror or type(exc).__name__}): it was not deleted") from exc
        finally:
            self._forget(name)
        try:
            if index is not None and not self._sidecars_linked():
                index.unlink(missing_ok=True)
        except OSError as exc:  # the table is gone; a sidecar left behind is only disk space
            log.warning("lookup table %s deleted, but not its sidecar %s: %s", name, index, exc)
        if name == self.default_name:
            self._forget_default()
        return {"status": "success", "deleted": name}

    def _forget_default(self) -> None:
        with self._lock:
            self._default_epoch += 1
            self.default_table = None
            self.default_signature = None
            self.default_error = f"DEFAULT_LOOKUP_TABLE {self.default_name!r}: deleted"

    def output_path(self, name: str) -> Path:
        check_table_name(name, "table_name", writing=True)
        if name == self.default_name and self.default_path is not None \
                and self.default_path.parent.resolve() != self.root.resolve():
            # Requests by that name reach the default table: a file written here could never be used.
            raise InvalidInput(f"table_name {name!r} is the name of the default table, loaded from "
                               f"{self.default_path} outside the table directory; choose another name",
                               field="table_name")
        path = self.root / name
        if path.is_dir():  # checked before the traces are predicted: the rename over it failed, a 500
            raise InvalidInput(f"table_name {shown(name)} is a folder in the table directory, not a table: "
                               "choose another name", field="table_name")
        return path


def _fingerprint(path: Path, span: int = 1 << 16) -> str:
    """A digest of the first and last ``span`` bytes of a file (cheap even for a gigabyte)."""
    h = hashlib.sha256()
    with regular_file_fd(path) as fd, os.fdopen(fd, "rb", closefd=False) as fh:
        h.update(fh.read(span))
        size = fh.seek(0, os.SEEK_END)
        if size > span:
            fh.seek(max(span, size - span))
            h.update(fh.read(span))
    return h.hexdigest()
