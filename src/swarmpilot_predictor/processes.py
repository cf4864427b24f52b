"""Whether a process still runs: for job records, version locks, metric files and folders
named after one."""

from __future__ import annotations

import os
from typing import Any


def alive(pid: Any) -> bool:
    """Whether process ``pid`` (of this host and process-id namespace) exists."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large (a damaged record)
        return False
    except PermissionError:  # there, but another user's
        return True
    return True


def started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell it from a later
    process given the same id; None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def still_running(pid: Any, start: str | None) -> bool:
    """Whether process ``pid``, started at ``start`` (see :func:`started`; None: unknown),
    still runs: not merely a later process given the same id."""
    return alive(pid) and (start is None or started(pid) in (None, start))
