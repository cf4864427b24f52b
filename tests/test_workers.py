"""The worker processes that train and retrain (see also test_training and test_retraining,
which run jobs in them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor, wait

from swarmpilot_predictor.workers import (CouldNotStart, Failed, Finished, NotStarted, ShutDown, Submitted, TimedOut,
                                          WorkerDied, WorkerPool, when_parent_dies)

from .conftest import wait_until_dead


def test_a_worker_whose_server_died_before_it_began_watching_still_exits():
    # The training worker imports for a second or more before it watches its server: a
    # server killed meanwhile left it running on (its parent then init, not the server),
    # and it stored the version nobody was told of. It watches the pid it was started by.
    server = subprocess.Popen([sys.executable, "-c", "pass"])
    server.wait()
    gone = threading.Event()
    when_parent_dies(gone.set, parent=server.pid)
    assert gone.wait(5)
    alive = threading.Event()
    when_parent_dies(alive.set)  # this process's own parent, alive throughout
    assert not alive.wait(1.5)


# What became of a call to the worker, as the trainings and the retrainings both read it
# (WorkerPool.outcome and .call): each told apart on a real worker process.

def _answers(value):
    return value


def _raises(message):
    raise ValueError(message)


def _dies():
    os._exit(1)  # as the kernel's out-of-memory killer would end it: no answer


def _sleeps():
    time.sleep(60)


def _worker_pool() -> WorkerPool:
    return WorkerPool("test", "normal")  # (idle: next to nothing of a busy machine's CPU)


def test_a_call_that_returns_raises_or_kills_its_worker_is_told_apart_and_a_fresh_worker_follows():
    workers = _worker_pool()
    try:
        assert workers.call(_answers, 42) == Finished(42)
        (first,) = workers.pool._processes
        failed = workers.call(_raises, "bad row")
        assert isinstance(failed, Failed) and isinstance(failed.error, ValueError) and str(failed.error) == "bad row"
        died = workers.call(_dies)
        assert isinstance(died, WorkerDied) and died.message.startswith(
            "the test worker process died (exited with status 1: out of memory, say,")
        assert workers.pool is None  # the dead worker's pool is let go
        assert workers.call(_answers, 7) == Finished(7)
        assert list(workers.pool._processes) != [first]
    finally:
        workers.close()


def test_a_call_queued_behind_one_that_kills_the_worker_did_not_start_and_runs_on_a_fresh_one():
    # The trainings queue behind each other: the one queued read "the worker process died"
    # though it never ran; it is given to a fresh worker, in its turn.
    workers = _worker_pool()
    try:
        dying, queued = workers.submit(_dies), workers.submit(_answers, "queued")
        assert isinstance(dying, Submitted) and isinstance(queued, Submitted)
        wait([dying.future, queued.future], timeout=60)
        assert isinstance(workers.outcome(dying), WorkerDied)
        assert workers.outcome(queued) == NotStarted()
        again = workers.submit(_answers, "queued", resent=True)
        assert isinstance(again, Submitted) and again.pool is not queued.pool
        assert again.future.result(timeout=60) == "queued" and workers.outcome(again) == Finished("queued")
    finally:
        workers.close()


def test_a_call_sent_to_a_worker_that_died_idle_or_to_a_pool_shut_down_runs_on_a_fresh_one():
    workers = _worker_pool()
    try:
        assert workers.call(_answers, 1) == Finished(1)
        (pid,) = workers.pool._processes
        os.kill(pid, signal.SIGKILL)
        wait_until_dead(pid)
        assert workers.call(_answers, 2) == Finished(2)
        # Shut down between a caller's taking it and its call (a time limit's stop, a reset):
        # the retrainings read "the service is stopping", a 503, and logged nothing.
        workers.pool.shutdown(wait=False)
        assert workers.call(_answers, 3) == Finished(3)
    finally:
        workers.close()


def test_a_call_past_its_time_limit_is_timed_out_and_its_worker_stopped():
    workers = _worker_pool()
    try:
        assert workers.call(_answers, 1) == Finished(1)  # started before the limit counts
        (pid,) = workers.pool._processes
        t0 = time.monotonic()
        assert workers.call(_sleeps, timeout=1.0) == TimedOut()
        assert time.monotonic() - t0 < 10
        wait_until_dead(pid)
        assert workers.pool is None
        assert workers.call(_answers, 2) == Finished(2)
    finally:
        workers.close()


def test_a_call_when_the_pool_is_closed_or_under_way_as_it_closes_is_shut_down_not_dead():
    workers = _worker_pool()
    with ThreadPoolExecutor(1) as waiting:
        under_way = waiting.submit(workers.call, _sleeps)
        deadline = time.monotonic() + 60
        while workers.pool is None or not workers.pool.ran(1):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (pid,) = workers.pool._processes
        workers.close()
        assert under_way.result(timeout=30) == ShutDown()
    wait_until_dead(pid)
    assert workers.call(_answers, 1) == ShutDown()  # and no worker is started for it
    assert workers.pool is None


def test_a_worker_that_dies_before_it_begins_twice_could_not_be_started():
    # Each worker dies as it reads the call (its function's module cannot be imported
    # there): given to fresh workers for good, the call was never answered.
    module = types.ModuleType("swarmpilot_test_module_only_here")
    exec("def answer():\n    return 42\n", module.__dict__)
    sys.modules[module.__name__] = module
    workers = _worker_pool()
    try:
        outcome = workers.call(module.answer)
        assert isinstance(outcome, CouldNotStart)
        assert outcome.reason == "its process exited with status 1 before it began the test"
        assert workers.pool is None
    finally:
        del sys.modules[module.__name__]
        workers.close()
