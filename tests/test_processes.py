"""Whether a process recorded in a job, lock or metrics file still runs."""

from __future__ import annotations

import os
import subprocess
import sys

from swarmpilot_predictor.processes import alive, boot_id, pid_space, started, still_running


def test_this_process_is_alive_and_a_finished_one_is_not():
    assert alive(os.getpid())
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert not alive(done.pid)


def test_damaged_records_are_no_process():
    for pid in (None, "123", 1.5, 0, -1, True, 2**80):
        assert not alive(pid), pid


def test_a_later_process_given_the_same_id_is_not_the_recorded_one():
    me = os.getpid()
    start = started(me)
    assert start is not None and start.isdigit()
    assert still_running(me, start) and still_running(me, None)
    assert not still_running(me, str(int(start) + 1))  # the id, but another start
    assert started(2**22 + 12345) is None


def test_the_pid_space_names_this_host_safely():
    host, namespace = pid_space()
    assert host and all(c.isalnum() or c in "._" for c in host)
    assert namespace is None or namespace > 0
    assert boot_id() is None or len(boot_id()) >= 8
