"""A scheduler end to end: tasks placed by predicted queue waits, runtimes observed, a drift, retraining.

A discrete-event simulation of 8 instances serving LLM-like tasks whose runtimes have a
known distribution, runtime = (25 + 0.03 input_tokens + 1.8 output_tokens) ms x
LogNormal(0, 0.3), against the real server (uvicorn, on a free port, automatic retraining
on), trained on 2,000 such tasks. Each arriving task is placed by one
``client.queue_waits`` request that asks, for every instance, the wait (its running task
with ``elapsed_ms``, then its queue) and the completion time (the same and the new task),
and goes to the lowest p90 completion time; FIFO per instance. Finished tasks are reported
10 at a time with ``client.observe``. Arrivals are Poisson at 65% of the instances'
capacity (``--load``); from the arrival at ``--onset`` of the run on, every runtime is
``--drift`` times longer (88% of capacity at the defaults).

Printed: the calibration of the predicted waits and completion times per phase and
serving version (before the drift; after it, under the version serving when it began;
under each later version), the retraining decisions, when the drift was flagged, and the
latencies of the requests. Wait coverage counts the tasks that found their instance busy
(an idle instance's wait is 0, right by construction); a task that arrived after the onset
behind tasks from before it is in no phase.

    uv run python benchmarks/scheduler_simulation.py [--seed 7] [--arrivals 6000] [--drift 1.35] [--onset 0.4] [--load 0.65]
    uv run python benchmarks/scheduler_simulation.py --hang 0.3 [--hang-ms 120000] [--ignore-stuck] --drift 1 --arrivals 3000

With ``--hang``, the task instance 0 starts first from that fraction of the arrivals on
hangs: it runs ``--hang-ms`` (simulated) instead of its runtime. Once it has run past every
runtime the model knows, its time left counts 0 in its queue's wait, and the queue's
``QueueWaitEstimate`` names it ``stuck``: the placement then leaves that instance out
(``--ignore-stuck`` places as before 2026-12-07, by the p90 alone). Printed too: the tasks
placed on the hung instance while its task hung, and what they waited.

Two things make runs of one seed differ: retraining runs in the background (in the
server's retraining worker process) while the simulated clock goes on without waiting for
it, so where each new version begins depends on this machine's speed (the simulation runs several times faster than real time:
a retraining's seconds are more tasks here than they would be in service); and the drift
test's checkpoints are picked by a hash that includes each observation's time.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import NormalDist

import numpy as np

from swarmpilot_predictor.client import PredictorClient

ROOT = Path(__file__).resolve().parent.parent
IDENT = {"model_type": "llm", "model_name": "synth-7b", "hardware": "H100", "software_name": "vllm",
         "software_version": "0.6.0"}
SIGMA = 0.3
INSTANCES = 8
LEVELS = [0.5, 0.9, 0.99]
OBSERVE_EVERY = 10
SERVER_ENV = {
    "PREDICTOR_AUTO_RETRAIN": "true",
    # Half the default window: the drift test and the coverage gauges turn over to the new
    # level after 500 slow runtimes rather than 1,000.
    "PREDICTOR_ACCURACY_WINDOW": "500",
    # The default (200) retrains an unchanging stream every 200 observations; the point
    # here is what the drift's retraining does, so the stream retrains without drift rarely.
    "PREDICTOR_RETRAIN_MIN_OBSERVATIONS": "1000",
}


def draw(n: int, rng: np.random.Generator) -> tuple[list[dict], np.ndarray, np.ndarray]:
    inp, out = rng.integers(32, 2049, n), rng.integers(16, 513, n)
    typical = 25 + 0.03 * inp + 1.8 * out
    traces = [{"input_tokens": int(i), "output_tokens": int(o)} for i, o in zip(inp, out)]
    return traces, typical, typical * rng.lognormal(0.0, SIGMA, n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, log, settings: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """The real server on a free port, on ``data_dir``, with ``settings`` (default: this
    simulation's ``SERVER_ENV``); its output to ``log``."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "swarmpilot_predictor.api:app_from_env", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    env = {**os.environ, "PREDICTOR_DATA_DIR": str(data_dir), **(SERVER_ENV if settings is None else settings)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with PredictorClient(url, retries=0) as probe:
        while not probe.is_available():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
    return proc, url


@contextmanager
def running_server(data_dir: Path, settings: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """:func:`start_server` on ``data_dir``, its output to a log beside it (the tail printed
    where the block fails), stopped at the end."""
    log_path = data_dir.parent / "server.log"
    log = open(log_path, "wb")
    proc = None
    try:
        proc, url = start_server(data_dir, log, settings)
        yield proc, url
    except BaseException:
        log.flush()
        sys.stderr.write(log_path.read_text()[-3000:])
        raise
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


class Simulation:
    def __init__(self, client: PredictorClient, args: argparse.Namespace):
        self.client = client
        rng = np.random.default_rng(args.seed)
        n = args.arrivals
        self.onset = int(n * args.onset)
        self.traces, _, base = draw(n, rng)
        self.runtime = base * np.where(np.arange(n) >= self.onset, args.drift, 1.0)
        self.rate = args.load * INSTANCES / base[:self.onset].mean()  # arrivals per ms, on the clean runtimes
        self.arrival = np.cumsum(rng.exponential(1 / self.rate, n))
        self.start, self.end = np.full(n, np.nan), np.full(n, np.nan)
        self.queue = [deque() for _ in range(INSTANCES)]
        self.running: list[int | None] = [None] * INSTANCES
        # (time, 0 for a completion and 1 for an arrival, so that an instance freed at the
        # instant a task arrives is free for it; the instance or the task)
        self.events: list[tuple[float, int, int]] = [(t, 1, i) for i, t in enumerate(self.arrival)]
        heapq.heapify(self.events)
        self.pending: list[int] = []
        self.observed = 0
        # (wall clock when sent, observations the service then holds, simulated ms)
        self.observe_log: list[tuple[float, int, float]] = []
        self.first_slow: int | None = None  # the observation count at which the first slow runtime was sent
        self.flagged: tuple[int, float] | None = None
        self.early_flags = 0
        self.version_seen: dict[int, int] = {}  # version -> observations sent when it first answered
        self.latency: dict[str, list[tuple[float, float]]] = {"queue_waits": [], "observe": []}  # (sent, seconds)
        # Per task, what its placement was told, for the phase tables.
        self.version = np.zeros(n, dtype=int)
        self.ahead = np.zeros(n, dtype=int)
        self.mixed = np.zeros(n, dtype=bool)
        self.wait_q, self.done_q = np.zeros((n, 3)), np.zeros((n, 3))
        self.wait_e, self.done_e = np.zeros(n), np.zeros(n)
        # --hang: instance 0's task that hangs, from when to when (simulated ms), and the
        # tasks placed on instance 0 meanwhile, each with whether its wait named the task stuck.
        self.hang_from = float(self.arrival[int(n * args.hang)]) if args.hang is not None else math.inf
        self.hang_ms = args.hang_ms
        self.ignore_stuck = args.ignore_stuck
        self.hung: tuple[int, float, float] | None = None  # (task, start, end)
        self.placed_on_hung: list[tuple[int, bool]] = []
        self.stuck_seen: float | None = None  # when a wait first named the hung task stuck

    def timed(self, name: str, fn, *a, **kw):
        sent, t0 = time.time(), time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            self.latency[name].append((sent, time.perf_counter() - t0))

    def begin(self, k: int, now: float) -> None:
        if self.queue[k]:
            i = self.queue[k].popleft()
            self.running[k], self.start[i] = i, now
            if k == 0 and self.hung is None and now >= self.hang_from:
                self.runtime[i] = self.hang_ms
                self.hung = (i, now, now + self.hang_ms)
            heapq.heappush(self.events, (now + self.runtime[i], 0, k))
        else:
            self.running[k] = None

    def flush(self, now: float) -> None:
        if not self.pending:
            return
        batch = [{**self.traces[i], "runtime_ms": float(self.runtime[i])} for i in self.pending]
        slow = [j for j, i in enumerate(self.pending) if i >= self.onset]
        if slow and self.first_slow is None:
            self.first_slow = self.observed + slow[0] + 1
        answer = self.timed("observe", self.client.observe, IDENT, batch)
        self.observed += len(batch)
        self.observe_log.append((self.latency["observe"][-1][0], self.observed, now))
        if answer.get("drifted"):
            if self.first_slow is None:
                self.early_flags += 1
            elif self.flagged is None:
                self.flagged = (self.observed, now)
        self.pending.clear()

    def arrive(self, i: int, now: float) -> None:
        queues, ahead_ids = {}, []
        for k in range(INSTANCES):
            r = self.running[k]
            ahead = [] if r is None else [{**self.traces[r], "elapsed_ms": now - self.start[r]}]
            ahead += [self.traces[j] for j in self.queue[k]]
            queues[f"{k}/wait"], queues[f"{k}/done"] = ahead, ahead + [self.traces[i]]
            ahead_ids.append(([] if r is None else [r]) + list(self.queue[k]))
        w = self.timed("queue_waits", self.client.queue_waits, IDENT, queues, quantiles=LEVELS)
        # An instance whose running task is past every runtime the model knows is left out:
        # that task counts 0 in its wait, which then says too little.
        k = min(range(INSTANCES), key=lambda k: math.inf if w[f"{k}/done"].stuck and not self.ignore_stuck
                else w[f"{k}/done"].quantile(0.9))
        wait, done = w[f"{k}/wait"], w[f"{k}/done"]
        if self.hung is not None and self.hung[1] <= now < self.hung[2]:
            if w["0/done"].stuck and self.stuck_seen is None:
                self.stuck_seen = now
            if k == 0:
                self.placed_on_hung.append((i, bool(w["0/done"].stuck)))
        self.version[i] = done.model_version
        self.version_seen.setdefault(done.model_version, self.observed)
        self.ahead[i] = len(ahead_ids[k])
        # A slow task behind clean ones waits partly at the old level: neither phase's.
        self.mixed[i] = i >= self.onset and any(j < self.onset for j in ahead_ids[k])
        self.wait_q[i], self.wait_e[i] = wait.quantile_predictions, wait.expect
        self.done_q[i], self.done_e[i] = done.quantile_predictions, done.expect
        self.queue[k].append(i)
        if self.running[k] is None:
            self.begin(k, now)

    def run(self) -> None:
        while self.events:
            now, kind, x = heapq.heappop(self.events)
            if kind == 1:
                self.arrive(x, now)
                continue
            i = self.running[x]
            self.end[i] = now
            self.pending.append(i)
            if len(self.pending) >= OBSERVE_EVERY:
                self.flush(now)
            self.begin(x, now)
        self.flush(float(self.end.max()))


def phase_table(sim: Simulation) -> None:
    wait_real, done_real = sim.start - sim.arrival, sim.end - sim.arrival
    idx = np.arange(len(sim.version))
    post = (idx >= sim.onset) & ~sim.mixed
    serving = sim.version[sim.onset] if sim.onset < len(idx) else None
    phases = [("before the drift", idx < sim.onset)]
    for v in sorted(set(sim.version[post].tolist())):
        label = f"after, version {v}" + (" (serving at the onset)" if v == serving else "")
        phases.append((label, post & (sim.version == v)))
    print("| phase | versions | tasks | waited (queue not empty) | wait ≤ p50 | ≤ p90 | ≤ p99 | wait: realised / "
          "predicted expect | completion ≤ p50 | ≤ p90 | ≤ p99 | completion: realised / predicted expect |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, sel in phases:
        queued = sel & (sim.ahead > 0)
        if not sel.any():
            continue
        versions = ",".join(map(str, sorted(set(sim.version[sel].tolist()))))
        cells = [label, versions, str(sel.sum()), str(queued.sum())]
        for real, q, e, rows in ((wait_real, sim.wait_q, sim.wait_e, queued), (done_real, sim.done_q, sim.done_e, sel)):
            if not rows.any():
                cells += ["-"] * 4
                continue
            cells += [f"{np.mean(real[rows] <= q[rows, j]):.3f}" for j in range(3)]
            cells.append(f"{real[rows].sum() / e[rows].sum():.3f}")
        print("| " + " | ".join(cells) + " |")
    print(f"\n{int(sim.mixed.sum())} tasks that arrived after the onset behind tasks from before it are in no "
          "phase.")


def hang_table(sim: Simulation) -> None:
    """What the hung task of instance 0 did to the tasks placed behind it, and to all."""
    if sim.hung is None:
        print("\nNo task hung (instance 0 started none after the hang's arrival).")
        return
    task, start, end = sim.hung
    placed = np.array([i for i, _ in sim.placed_on_hung], dtype=int)
    after = np.array([i for i, stuck in sim.placed_on_hung if stuck], dtype=int)
    wait, done = sim.start - sim.arrival, sim.end - sim.arrival
    others = np.setdiff1d(np.arange(len(sim.arrival)), np.append(placed, task))
    seen = "never" if sim.stuck_seen is None else f"after it had run {(sim.stuck_seen - start) / 1000:.1f} s"
    print(f"\nTask {task} hung on instance 0 from {start / 1000:.1f} s to {end / 1000:.1f} s (simulated); its "
          f"instance's wait named it stuck {seen}; placement "
          f"{'by p90 alone (--ignore-stuck)' if sim.ignore_stuck else 'leaving out a stuck instance'}.\n")
    print("| tasks placed on the hung instance while it hung | of them once its task was named stuck | "
          "their mean wait s | their longest wait s | the other tasks' completion p50 / p99 s |")
    print("|---|---|---|---|---|")
    mean = f"{wait[placed].mean() / 1000:.1f}" if len(placed) else "-"
    most = f"{wait[placed].max() / 1000:.1f}" if len(placed) else "-"
    p50, p99 = np.percentile(done[others], [50, 99]) / 1000
    print(f"| {len(placed)} | {len(after)} | {mean} | {most} | {p50:.2f} / {p99:.2f} |")


def decisions_table(sim: Simulation, data_dir: Path) -> list[dict]:
    # From the data directory: the accuracy answer lists only the newest five decisions.
    decisions = [json.loads(line) for f in sorted(data_dir.glob("observations/*/retraining.jsonl"))
                 for line in f.read_text().splitlines() if line.strip()]
    sent = [t for t, _, _ in sim.observe_log]
    print("| begun at observation | reason | status | candidate | from → to version | observations used "
          "(held out) | seconds | new version first answered after observation |")
    print("|---|---|---|---|---|---|---|---|")
    for d in sorted(decisions, key=lambda d: d["at"]):
        # An /observe begins a retraining before it answers: it is the last one sent before.
        k = bisect_right(sent, d["at"])
        at = sim.observe_log[k - 1][1] if k else 0
        to = d.get("to_version")
        seen = sim.version_seen.get(to, "-") if to else "-"
        seconds = f"{d['seconds']:.1f}" if "seconds" in d else "-"
        print(f"| {at} | {d.get('reason')} | {d['status']} | {d.get('candidate') or '-'} | {d['from_version']} → "
              f"{to or '-'} | {d.get('observations', '-')} ({d.get('heldout_rows', '-')}) | {seconds} | {seen} |")
    return decisions


def latency_table(sim: Simulation, decisions: list[dict]) -> None:
    # The requests served while a retraining fitted its candidates, apart
    # (only a decision that stored a version says how long it took).
    busy = [(d["at"], d["at"] + d["seconds"]) for d in decisions if "seconds" in d]
    print("| request | count | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|")
    for name, what in (("queue_waits", f"{2 * INSTANCES} queues"), ("observe", f"{OBSERVE_EVERY} runtimes")):
        during = np.array([any(a <= t <= b for a, b in busy) for t, _ in sim.latency[name]], dtype=bool)
        ms = np.array([dt for _, dt in sim.latency[name]]) * 1000
        rows = [(f"{name} ({what})", ms)]
        if during.any():
            rows += [(f"{name}, while a retraining that stored a version ran", ms[during]),
                     (f"{name}, otherwise", ms[~during])]
        for label, a in rows:
            if len(a):
                print(latency_row(label, a))


def latency_row(label: str, ms) -> str:
    """A latency table's row: the count, p50, p90, p99 and the most, in ms."""
    a = np.asarray(ms)
    return f"| {label} | {len(a)} | " + " | ".join(f"{np.percentile(a, p):.1f}" for p in (50, 90, 99)) + f" | {a.max():.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--arrivals", type=int, default=6000)
    ap.add_argument("--drift", type=float, default=1.35, help="runtime factor from the onset on")
    ap.add_argument("--onset", type=float, default=0.4, help="the drift begins at this fraction of the arrivals")
    ap.add_argument("--load", type=float, default=0.65, help="arrival rate over the instances' capacity, before the drift")
    ap.add_argument("--hang", type=float, default=None,
                    help="instance 0's first task started from this fraction of the arrivals on hangs")
    ap.add_argument("--hang-ms", type=float, default=120_000.0, help="how long the hung task runs (simulated ms)")
    ap.add_argument("--ignore-stuck", action="store_true",
                    help="place by the p90 alone, also on an instance whose running task is stuck")
    args = ap.parse_args()
    if args.hang is not None and not 0 <= args.hang < 1:
        ap.error(f"--hang must be a fraction of the arrivals in [0, 1), got {args.hang}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        with running_server(data_dir) as (_, url), PredictorClient(url, timeout=120, retries=0) as client:
            rng = np.random.default_rng(args.seed + 1000)
            train, _, runtimes = draw(2000, rng)
            result = client.train({"model": IDENT, "first_of_shape": False,
                                   "traces": [{**t, "runtime_ms": float(r)} for t, r in zip(train, runtimes)]})
            fresh, typical, fresh_rt = draw(1000, rng)
            answer = client.predict_batch(IDENT, fresh, quantiles=LEVELS)
            q = np.array([r.quantile_predictions for r in answer.results])
            sim = Simulation(client, args)
            sim.run()
        truth = typical[:, None] * np.exp(SIGMA * np.array([NormalDist().inv_cdf(p) for p in LEVELS]))
        print(f"{args.arrivals} arrivals at {sim.rate * 1000:.2f}/s on {INSTANCES} instances (load {args.load}), "
              f"seed {args.seed}; runtimes x{args.drift} from arrival {sim.onset} (simulated "
              f"{sim.arrival[sim.onset] / 1000:.0f} s of {sim.end.max() / 1000:.0f} s).")
        print(f"Version {result.version} ({result.metrics.get('algorithm')}, 2,000 tasks), on 1,000 fresh tasks: "
              f"runtime ≤ p50 / p90 / p99 {' / '.join(f'{np.mean(fresh_rt <= q[:, j]):.3f}' for j in range(3))}; "
              f"predicted / true quantile, median: "
              f"{' / '.join(f'{np.median(q[:, j] / truth[:, j]):.3f}' for j in range(3))}.\n")
        phase_table(sim)
        if args.hang is not None:
            hang_table(sim)
        print("\nRetraining decisions (observations counted from the start of the run):\n")
        decisions = decisions_table(sim, data_dir)
    if sim.flagged:
        print(f"\nThe first slow runtime was observation {sim.first_slow}; drift was flagged in the answer to the "
              f"/observe that brought the count to {sim.flagged[0]} ({sim.flagged[0] - sim.first_slow} observations, "
              f"{(sim.flagged[1] - sim.arrival[sim.onset]) / 1000:.1f} simulated s after the onset); "
              f"flags before any slow runtime: {sim.early_flags}.\n")
    else:
        print(f"\nDrift was never flagged; flags before any slow runtime: {sim.early_flags}.\n")
    latency_table(sim, decisions)
    print(f"\nWall time {time.perf_counter() - t0:.0f} s.")


if __name__ == "__main__":
    main()
