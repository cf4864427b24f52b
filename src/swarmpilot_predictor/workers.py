"""The worker processes that train and retrain, apart from the serving process.

Each is spawned on first use (forked, it would inherit the server's threads and sockets),
runs at a CPU priority of :data:`WORKER_PRIORITIES`, counts the jobs it starts (so that a
death fails only the job it was running) and exits once its server is gone.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def spawning() -> Iterator[None]:
    """Block the stop signals in this thread while it may start the worker process.

    The worker inherits the mask: a group stop signal in the second or so before its
    initializer ignores them (the interpreter's start-up) killed it, and answered the
    training in flight 500, "out of memory?". This thread gets them once it unblocks.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# The service that started this training worker (None outside one).
_server_pid: int | None = None


def server_gone() -> bool:
    """In a worker process: whether the service that started it is gone (killed: it could
    not stop this worker first). Outside one, False."""
    return _server_pid is not None and os.getppid() != _server_pid


# Seconds a worker may take to begin a call given to it (a fresh worker's start: its imports
# took 2 s on a loaded machine) before the call's time limit counts from the giving.
START_ALLOWANCE_S = 60.0


def stopped_for_time(what: str, seconds: float, advice: str) -> str:
    """What a training or retraining stopped at PREDICTOR_TRAINING_TIMEOUT_S answers."""
    return (f"the {what} was stopped after {seconds:g} s, the most a training may run "
            f"(PREDICTOR_TRAINING_TIMEOUT_S): {advice}")


# What each PREDICTOR_TRAINING_PRIORITY gives the worker: (Linux scheduling policy, niceness
# added to the server's). SCHED_IDLE runs it only on CPU time nothing else wants, and lets a
# waking server preempt it at once, but on a machine kept busy by other work (at nice 0) it
# gets about 0.3% of a core: a retraining of 6 s alone had not finished after 120 s
# (benchmarks/retraining_load.py --burners 2). SCHED_BATCH shares the CPU by niceness, as
# the normal policy does, but never preempts a task that wakes (the server's requests).
WORKER_PRIORITIES = {"idle": ("SCHED_IDLE", 0), "low": ("SCHED_BATCH", 10), "normal": ("SCHED_BATCH", 0)}
# PREDICTOR_TRAINING_PRIORITY's default, and every worker's where none is given (see settings.py).
DEFAULT_PRIORITY = "low"


def _set_priority(priority: str) -> None:
    policy, nice = WORKER_PRIORITIES[priority]
    try:
        os.sched_setscheduler(0, getattr(os, policy), os.sched_param(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux: niceness alone
        nice = 19 if priority == "idle" else nice
    if nice:
        try:
            os.nice(nice)
        except OSError:  # pragma: no cover
            pass


def _init_worker(server_pid: int | None = None, priority: str = DEFAULT_PRIORITY, jobs_started: Any = None) -> None:
    # A stop signal sent to the whole process group (systemd's stop, Ctrl-C) is the server's
    # to act on: it lets the request in flight finish its training, then stops this worker
    # (TrainingJobs.shutdown). Dying here at once answered that request 500, "out of memory?".
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    # Blocked since the server started this process (see spawning): a signal that came
    # while it imported is pending, and now discarded, being ignored.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    # Predictions first (see WORKER_PRIORITIES).
    _set_priority(priority)
    # A server pinned to one core (taskset) should not pin its training there too:
    # let the worker use any core, where it only takes what others leave idle.
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        except OSError:  # pragma: no cover - restricted by a cgroup or container
            pass
    # If the server dies without shutting the pool down, do not outlive it: also if it died
    # while this process was still importing (its parent is then already init, not the server).
    global _server_pid, _jobs_started
    _server_pid = server_pid
    _jobs_started = jobs_started
    when_parent_dies(lambda: os._exit(0), server_pid)


# In a worker process: the semaphore it counts the jobs it starts on (see WorkerExecutor).
_jobs_started: Any = None


def _run_counted(fn: Callable[..., Any], *args: Any) -> Any:
    _jobs_started.release()
    return fn(*args)


class WorkerExecutor(ProcessPoolExecutor):
    """The pool of one worker process, which knows which of its jobs the worker started.

    A worker that dies fails every job the pool holds, those it never started too: one
    sent to an idle worker killed a moment before (the pool learns of a death only when
    its manager thread wakes) read "the worker process died", though it never ran. The
    worker counts each job it starts on a semaphore (which the pool's own queues use
    already: a shared-memory value needs a file of a page, which a full disk refuses), and
    runs them in the order given: :meth:`ran` tells the job it was running from those it
    can give a fresh worker.
    """

    def __init__(self, priority: str):
        context = multiprocessing.get_context("spawn")
        self._started = context.Semaphore(0)
        self._numbers = itertools.count(1)
        self._numbering = threading.Lock()  # numbers in the order the jobs are queued
        super().__init__(max_workers=1, mp_context=context, initializer=_init_worker,
                         initargs=(os.getpid(), priority, self._started))
        # The job whose time limit this pool was stopped for, if it was: the worker may have
        # started the next job a moment before, which was not what ran too long.
        self.stopped_for: str | None = None
        # The worker processes started, kept here: the pool forgets them as it shuts down.
        self._workers: dict[int, multiprocessing.process.BaseProcess] = {}

    def submit_numbered(self, fn: Callable[..., Any], *args: Any) -> tuple[Future, int]:
        """``submit(fn, *args)``, and the job's number for :meth:`ran` (1, 2, ... in order)."""
        with self._numbering:
            number = next(self._numbers)
            future = self.submit(_run_counted, fn, *args)
            self._workers.update(self._processes or {})  # (started by submit, the pool's first)
            return future, number

    def ran(self, number: int) -> bool:
        """Whether the job numbered ``number`` was the one the worker started last."""
        return self._started.get_value() == number

    def started_none(self) -> bool:
        """Whether the worker has started no job yet."""
        return self._started.get_value() == 0

    def how_it_died(self, wait: float = 1.0) -> str:
        """How the dead worker ended ("killed by SIGKILL", "exited with status 1"), waiting up
        to ``wait`` seconds for it to be gone; "" if it was not."""
        for proc in list({**self._workers, **(self._processes or {})}.values()):
            deadline = time.monotonic() + wait
            proc.join(wait)  # its pipe closes as it exits, a moment before its status is there
            code = proc.exitcode
            # The pool's manager thread joins it too: where that thread's waitpid reaped it
            # first, this one's found no child and left the status unset, which that thread
            # sets a moment later ("its end unknown" for a worker that exited 1).
            while code is None and multiprocessing.connection.wait([proc.sentinel], 0) and time.monotonic() < deadline:
                time.sleep(0.005)
                code = proc.exitcode
            if code is None:
                continue
            if code < 0:
                try:
                    return f"killed by {signal.Signals(-code).name}"
                except ValueError:
                    return f"killed by signal {-code}"
            return f"exited with status {code}"
        return ""

    def death(self, kind: str) -> str:
        """What a job the ``kind`` worker died running answers (and the service logs)."""
        message = (f"the {kind} worker process died ({self.how_it_died() or 'its end unknown'}: out of memory, "
                   "say, or a crash in a native library)")
        log.warning("%s", message)
        return message


@dataclasses.dataclass(frozen=True)
class Submitted:
    """A call given to the worker: the pool it went to, its future there and its number
    (see :meth:`WorkerExecutor.ran`); ``resent``: given again, after a worker lost it
    before it began."""

    pool: WorkerExecutor
    future: Future
    number: int
    resent: bool = False


# What became of a call (see WorkerPool.outcome), one class each, to match on.

@dataclasses.dataclass(frozen=True)
class Finished:
    """The call returned ``value``."""

    value: Any


@dataclasses.dataclass(frozen=True)
class Failed:
    """The call raised ``error``, or its answer could not come back (it could not be pickled)."""

    error: BaseException


@dataclasses.dataclass(frozen=True)
class WorkerDied:
    """The worker died running the call; ``message`` says how (:meth:`WorkerExecutor.death`)."""

    message: str


@dataclasses.dataclass(frozen=True)
class NotStarted:
    """The worker was lost before it began the call (it died running an earlier one, or idle):
    a fresh one may run it, given it again (``resent``)."""


@dataclasses.dataclass(frozen=True)
class TimedOut:
    """The worker was stopped because the call ran past its time limit."""


@dataclasses.dataclass(frozen=True)
class StoppedForAnother:
    """The worker was stopped for the time limit of the call before this one, which it may
    have begun just before."""


@dataclasses.dataclass(frozen=True)
class ShutDown:
    """The pool was closed (the service is stopping) before the call ended."""


@dataclasses.dataclass(frozen=True)
class CouldNotStart:
    """No worker could be started to take the call; ``reason`` says why (``OSError: ...``)."""

    reason: str


Outcome = Finished | Failed | WorkerDied | NotStarted | TimedOut | StoppedForAnother | ShutDown | CouldNotStart


class WorkerPool:
    """One worker process at a CPU priority of WORKER_PRIORITIES (see :func:`_init_worker`), spawned on first use
    (forked, it would inherit the server's threads and sockets): the pool in use
    (``pool``, None until then and once stopped), its stop, and the calls sent to it
    (:meth:`submit`, :meth:`outcome`, :meth:`call`), which the trainings and the
    retrainings share so that both tell the same ends apart the same way.

    ``kind`` names the worker in what a call's failure says ("the training worker ...")."""

    def __init__(self, kind: str, priority: str = DEFAULT_PRIORITY) -> None:
        if priority not in WORKER_PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(WORKER_PRIORITIES)}, not {priority!r}")
        self.kind = kind
        self.priority = priority
        self.pool: WorkerExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: no call is sent from then on."""
        return self._closed

    def get(self) -> WorkerExecutor:
        with self._lock:
            if self._closed:  # a fresh worker now would outlive the service's stop
                raise RuntimeError(f"the {self.kind} worker is stopped for good")
            if self.pool is None:
                self.pool = WorkerExecutor(self.priority)
            return self.pool

    def submit(self, fn: Callable[..., Any], *args: Any, resent: bool = False) -> Submitted | CouldNotStart | ShutDown:
        """Give ``fn(*args)`` to the worker; to a fresh one if the pool in use is broken (its
        idle worker died just now) or was shut down meanwhile (a time limit's stop, a reset
        after a crash)."""
        error: BaseException | None = None
        for _ in range(2):
            if self._closed:
                return ShutDown()
            pool = None
            try:
                pool = self.get()
                with spawning():
                    future, number = pool.submit_numbered(fn, *args)
                return Submitted(pool, future, number, resent)
            except (BrokenProcessPool, RuntimeError) as exc:
                error = exc
                if pool is not None:
                    self.stop(pool)
            except Exception as exc:  # noqa: BLE001 - a spawn refused (EAGAIN, ENOMEM), a full disk's semaphore
                error = exc
                if pool is not None:
                    # Its job is queued already: a later spawn that succeeded would run it,
                    # for a caller told it failed.
                    self.stop(pool)
                break
        return ShutDown() if self._closed else CouldNotStart(f"{type(error).__name__}: {error}")

    def outcome(self, sent: Submitted, timed_out: bool = False) -> Outcome:
        """What became of ``sent``, whose future is done. ``timed_out``: its caller stopped
        the worker for this call's time limit (the training's watchdog)."""
        try:
            return Finished(sent.future.result(timeout=0))
        except (BrokenProcessPool, CancelledError):
            return self._lost(sent, timed_out)
        except Exception as exc:  # noqa: BLE001 - told to the caller, never raised in the pool's thread
            return Failed(exc)

    def _lost(self, sent: Submitted, timed_out: bool) -> Outcome:
        """Why the worker of ``sent`` was lost before it answered (see :meth:`outcome`)."""
        pool = sent.pool
        if self._closed:  # stopped with the service: not dead
            return ShutDown()
        if timed_out:
            return TimedOut()
        if pool.stopped_for is not None:
            return StoppedForAnother()
        if pool.ran(sent.number):
            message = pool.death(self.kind)  # how, read before the stop reaps it
            self._discard(pool)
            return WorkerDied(message)
        if sent.resent and pool.started_none():
            # A second worker lost before it began anything: one that dies as it starts (its
            # imports fail, say) would otherwise be replaced for good, the call never answered.
            reason = f"its process {pool.how_it_died() or 'ended'} before it began the {self.kind}"
            self._discard(pool)
            return CouldNotStart(reason)
        return NotStarted()

    def _discard(self, pool: WorkerExecutor) -> None:
        """Stop ``pool``: from another thread where this is its manager thread, which cannot
        wait for itself (a call's done callback runs there)."""
        if threading.current_thread() is getattr(pool, "_executor_manager_thread", None):
            threading.Thread(target=self.stop, args=(pool,), name=f"{self.kind}-pool-reset", daemon=True).start()
        else:
            self.stop(pool)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 0.0) -> Outcome:
        """``fn(*args)`` run in the worker, waited for: at most ``timeout`` seconds from the
        time the worker begins it (0: no limit; see :meth:`_ended_in_time`), past which the
        worker is stopped (:class:`TimedOut`).
        For a caller that sends one call at a time: one a worker lost before it began is given
        to a fresh worker (given up on, :class:`CouldNotStart`, if that one too is lost
        before it begins anything), so that :class:`NotStarted` never comes back."""
        resent = False
        while True:
            sent = self.submit(fn, *args, resent=resent)
            if not isinstance(sent, Submitted):
                return sent
            if not self._ended_in_time(sent, timeout):
                self.stop(sent.pool)
                return ShutDown() if self._closed else TimedOut()
            outcome = self.outcome(sent)
            if not isinstance(outcome, NotStarted):
                return outcome
            resent = True

    @staticmethod
    def _ended_in_time(sent: Submitted, timeout: float) -> bool:
        """Wait for ``sent`` to end; False where it ran past ``timeout`` seconds (0: no limit)
        from the time its worker began it, as seen within half a second: a fresh worker's
        start, its imports among it, is not the call's (counted, a 2 s limit stopped a
        retraining that runs in 0.6 s, its worker's start taking the rest). A worker that has
        not begun it :data:`START_ALLOWANCE_S` after it was given: the limit counts from then."""
        if not timeout:
            wait([sent.future])
            return True
        given = time.monotonic()
        begun: float | None = None
        while True:
            if begun is None and sent.pool.ran(sent.number):
                begun = time.monotonic()
            left = (begun if begun is not None else given + START_ALLOWANCE_S) + timeout - time.monotonic()
            if left <= 0:
                return False
            done, _ = wait([sent.future], timeout=left if begun is not None else min(left, 0.5, timeout / 4))
            if done:
                return True

    def close(self) -> None:
        """Stop the worker for good: a call under way ends :class:`ShutDown`, and none is sent after."""
        with self._lock:
            self._closed = True
        self.stop()

    def stop(self, pool: ProcessPoolExecutor | None = None) -> None:
        """Stop ``pool`` (default: the one in use) now: its worker is killed, whatever it was
        doing (a version it was storing is never half-written), and its futures fail; the
        next :meth:`get` starts a fresh one."""
        with self._lock:
            if pool is None:
                pool, self.pool = self.pool, None
            elif self.pool is pool:
                self.pool = None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.kill()  # it ignores SIGTERM (see _init_worker)
        for proc in processes:
            proc.join(timeout=5)
        # With its worker gone the pool's manager thread ends at once; then its queues are
        # collected here. uvicorn ends by re-raising SIGTERM, so no exit handler would ever
        # release their semaphores, which the resource tracker then reported as leaked.
        if manager is not None and manager is not threading.current_thread():
            manager.join(timeout=5)
        del pool, manager, processes
        gc.collect()


def when_parent_dies(action: Callable[[], None], parent: int | None = None) -> None:
    """Run ``action`` (in a daemon thread, within a second) once this process's parent is gone:
    ``parent`` (the pid it was started by), else whichever process is its parent now."""
    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        action()

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
