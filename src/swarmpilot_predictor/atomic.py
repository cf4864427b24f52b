"""Files that readers see whole: the old content or the new, never half of either, and kept
across a power loss once written; and reads that only take regular files."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


# ".<name>.<8 random characters>.tmp" stays within the file system's 255 bytes a name.
_TEMP_NAME_BYTES = 255 - len("..12345678.tmp")


def link_loop(path: Path | str) -> bool:
    """Whether ``path`` is a loop of symbolic links (``l1.json -> l2.json -> l1.json``, or
    ``tables -> tables``): following it fails with ELOOP."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def file_stamp(path: Path | str) -> tuple[int, int, int]:
    """What changes when a file is edited or replaced: its modification time, size and inode
    (``OSError`` where it cannot be looked at). A lookup table's sidecar stores it, in this
    order, to tell whether the file it was parsed from is still the same."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s directory, named after it (hidden, cut to fit a
    name of up to 255 bytes): an open descriptor and its path, as ``tempfile.mkstemp``."""
    stem = os.fsencode(path.name)[:_TEMP_NAME_BYTES].decode("utf-8", "ignore")
    return tempfile.mkstemp(dir=path.parent, prefix=f".{stem}.", suffix=".tmp")


def sync_folder(path: Path | str) -> None:
    """Make the names in folder ``path`` (a file renamed into it, a file or folder made in it)
    survive a power loss or a kernel crash: a file's fsync keeps its bytes, not the name that
    leads to them, so a rename could be lost, or land before the file it names was whole
    on disk. A process killed after the rename needs none of this; a machine that stopped does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError:
        return  # a folder that may be written (-wx) but not read: nothing more can be done for it
    except FileNotFoundError:
        # Removed since the name was made in it (a model's folder, by a delete in another
        # process): nothing of it to keep. Raised, a write that had succeeded failed (an
        # /observe's records, their model deleted meanwhile, read as a 500).
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems (network and FUSE ones) cannot sync a folder and say so (EINVAL):
        # names there are as durable as that file system makes them.
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def make_folder(path: Path) -> None:
    """``path.mkdir(exist_ok=True)`` (not its parents), the parent synced when the folder was
    made, so that the files synced in it are not lost with its name (see :func:`sync_folder`)."""
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    sync_folder(path.parent)


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file to write; on a clean exit it replaces ``path`` in one rename.

    It is written beside ``path`` (same file system) and synced before the
    rename, and its folder after it (see :func:`sync_folder`); on an error the
    temporary file is removed and ``path`` is untouched.
    """
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    with atomic_file(path) as fh:
        fh.write(data)


class NotRegularFile(OSError):
    """A path that is not a regular file (after symlinks) where one was expected."""


@contextmanager
def regular_file_fd(path: Path | str, follow_links: bool = True) -> Iterator[int]:
    """A read-only descriptor of ``path``, which must be a regular file (after symlinks).

    Opened without blocking and checked before anything is read: a FIFO in the data
    directory hung the start-up forever, and a link to ``/dev/zero`` was read until memory
    ran out. Raises ``NotRegularFile``, or another ``OSError`` (``FileNotFoundError`` when
    there is nothing there). Without ``follow_links``, a symbolic link is refused (``OSError``
    ELOOP): a file the service writes itself is never one.
    """
    try:
        fd = open_regular(path, os.O_RDONLY if follow_links else os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise NotRegularFile(f"{path} is a symbolic link") from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def open_regular(path: Path | str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """:func:`regular_file_fd`'s descriptor, for a caller that closes it itself (a download
    streamed after the request's handler returned); with ``flags``, opened for writing too
    (``os.O_RDWR | os.O_CREAT | os.O_APPEND``, a log's appends: a FIFO in a log's place took
    the bytes of an append, and the next one, the pipe full, hung holding the log's lock)."""
    fd = os.open(path, flags | os.O_NONBLOCK, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path | str, limit: int = -1, follow_links: bool = True) -> bytes:
    """The bytes of ``path`` (at most ``limit``), which must be a regular file (see
    :func:`regular_file_fd`)."""
    with regular_file_fd(path, follow_links) as fd, os.fdopen(fd, "rb", closefd=False) as fh:
        return fh.read(limit)


# A temporary file not written for this long is a killed writer's: writers write on and on
# (a million-row table streams in chunks that take well under a second each).
STALE_TEMP_SECONDS = 600


def remove_stale_temps(directory: Path, older_than: float = STALE_TEMP_SECONDS) -> int:
    """Remove the temporary files that :func:`temp_beside` made in ``directory`` and that
    have not been written for ``older_than`` seconds: a writer killed midway (a kill -9
    while a version or a table was stored) left them, and nothing else would. Returns
    how many went; a file that cannot be removed is left. One dated more than
    ``older_than`` in the future goes too (a host's clock ahead, or this one's set back: it
    stayed, start after start, until the clock caught up with it)."""
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for e in entries:
        if not (e.name.startswith(".") and e.name.endswith(".tmp")):
            continue
        try:
            if e.is_file(follow_symlinks=False) and abs(now - e.stat(follow_symlinks=False).st_mtime) > older_than:
                os.unlink(e.path)
                removed += 1
        except OSError:
            continue
    return removed
