"""Whether a process still runs: for job records, version locks, metric files and folders
named after one."""

from __future__ import annotations

import os
import re
import socket
from typing import Any


def alive(pid: Any) -> bool:
    """Whether process ``pid`` (of this host and process-id namespace) exists."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:  # a damaged record's true is no pid 1
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


def pid_space() -> tuple[str, int | None]:
    """Where a process id means what it means here: this host's name (made file-name safe)
    and its process-id namespace (None where it cannot be read). Containers of one host
    name have process ids of their own, and a data directory may be shared by hosts."""
    try:
        namespace: int | None = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux
        namespace = None
    return re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname()), namespace


def boot_id() -> str | None:
    """This boot of this machine (Linux), to tell hosts of one name apart; None where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip() or None
    except OSError:
        return None
