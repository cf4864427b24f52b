"""Whether a process still runs: for job records, metric files and folders named after one."""

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
