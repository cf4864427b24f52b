"""What a retraining costs the requests served meanwhile.

A real server (uvicorn, on a free port) holds an LLM-like model trained on 2,000 tasks,
runtime = (25 + 0.03 input_tokens + 1.8 output_tokens) ms x LogNormal(0, 0.3), and
``--observations`` observed runtimes 1.3x slower. One client thread sends
``client.queue_waits`` requests back to back (16 queues of 0 to 7 tasks, as a scheduler of
8 instances asks before each placement) for ``--idle`` seconds, then again while
``POST /models/{identity}/retrain`` runs, ``--retrains`` times, each after as many new
observations at the same level: the first stores a version, the later ones mostly keep it. Printed: the
latency of those requests with no retraining running and while one runs, each
retraining's seconds, and the resident memory of the server and its worker processes.

    uv run python benchmarks/retraining_load.py [--observations 5000] [--retrains 3] [--in-process]
        [--clients 1] [--burners 0] [--priority idle|low|normal] [--give-up 600]

``--in-process`` sets ``PREDICTOR_RETRAIN_IN_WORKER=false``: the retraining's fitting then
runs in the serving process, beside the requests. ``--clients`` sends the requests from that
many threads at once; ``--burners`` runs that many processes spinning on the CPU (at the
benchmark's niceness) while the retrainings run, as other work on the machine would;
``--priority`` sets ``PREDICTOR_TRAINING_PRIORITY``. A retraining still running after
``--give-up`` seconds is reported so, and the benchmark moves on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from swarmpilot_predictor.client import PredictorClient, PredictorUnavailableError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scheduler_simulation import IDENT, INSTANCES, draw, latency_row, running_server  # noqa: E402

LEVELS = [0.5, 0.9, 0.99]


def queues(rng: np.random.Generator) -> dict[str, list[dict]]:
    out = {}
    for k in range(INSTANCES):
        ahead, _, _ = draw(int(rng.integers(0, 7)), rng)
        new, _, _ = draw(1, rng)
        if ahead:
            ahead[0]["elapsed_ms"] = float(rng.uniform(0, 300))
        out[f"{k}/wait"], out[f"{k}/done"] = ahead, ahead + new
    return out


def hammer(client: PredictorClient, rng: np.random.Generator, until) -> list[float]:
    """queue_waits requests back to back until ``until()``; their latencies in ms."""
    ms = []
    asks = [queues(rng) for _ in range(50)]
    while not until():
        t0 = time.perf_counter()
        client.queue_waits(IDENT, asks[len(ms) % len(asks)], quantiles=LEVELS)
        ms.append((time.perf_counter() - t0) * 1000)
    return ms


def load(url: str, client: PredictorClient, rng: np.random.Generator, until, clients: int) -> list[float]:
    """``hammer`` from ``clients`` threads at once (``client`` and ``rng`` in this one); all their latencies."""
    seeds = rng.integers(1 << 31, size=clients)[1:]  # drawn here: the threads share no generator

    def another(seed: int) -> list[float]:
        with PredictorClient(url, timeout=600, retries=0) as other:
            return hammer(other, np.random.default_rng(int(seed)), until)

    with ThreadPoolExecutor(max(clients - 1, 1)) as pool:
        others = [pool.submit(another, seed) for seed in seeds]
        return hammer(client, rng, until) + [ms for f in others for ms in f.result()]


def observe(client: PredictorClient, rng: np.random.Generator, n: int) -> None:
    seen, _, runtimes = draw(n, rng)
    for i in range(0, n, 500):
        client.observe(IDENT, [{**t, "runtime_ms": float(r) * 1.3} for t, r in zip(seen[i:i + 500], runtimes[i:i + 500])])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def workers(server: int) -> list[int]:
    """The server's worker processes (multiprocessing's spawned children, not its resource
    tracker), oldest first: the training worker (the model was trained over HTTP), then the
    retraining worker."""
    kids = []
    for task in Path(f"/proc/{server}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    spawned = [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
    return sorted(spawned, key=lambda k: int(Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[19]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--observations", type=int, default=5000)
    ap.add_argument("--retrains", type=int, default=3)
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of requests with no retraining running")
    ap.add_argument("--in-process", action="store_true", help="fit in the serving process (PREDICTOR_RETRAIN_IN_WORKER=false)")
    ap.add_argument("--clients", type=int, default=1, help="client threads sending queue_waits at once")
    ap.add_argument("--burners", type=int, default=0, help="processes spinning on the CPU while retrainings run")
    ap.add_argument("--priority", choices=("idle", "low", "normal"), default="idle",
                    help="PREDICTOR_TRAINING_PRIORITY")
    ap.add_argument("--give-up", type=float, default=600, help="seconds after which a retraining is reported unfinished")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    settings = {"PREDICTOR_AUTO_RETRAIN": "false", "PREDICTOR_RETRAIN_IN_WORKER": "false" if args.in_process else "true",
                "PREDICTOR_TRAINING_PRIORITY": args.priority}
    with (tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "data", settings) as (proc, url),
          PredictorClient(url, timeout=600, retries=0) as client):
        train, _, runtimes = draw(2000, rng)
        client.train({"model": IDENT, "first_of_shape": False,
                      "traces": [{**t, "runtime_ms": float(r)} for t, r in zip(train, runtimes)]})
        observe(client, rng, args.observations)
        hammer(client, rng, lambda t=time.monotonic() + 1: time.monotonic() > t)  # warm
        idle = load(url, client, rng, lambda t=time.monotonic() + args.idle: time.monotonic() > t, args.clients)
        during, decisions = [], []
        for k in range(args.retrains):
            if k:  # a retrained version is retrained on what was observed after it
                observe(client, rng, args.observations)
            done = threading.Event()

            def retrain() -> None:
                with PredictorClient(url, timeout=args.give_up, retries=0) as other:
                    t0 = time.perf_counter()
                    try:
                        d = other.retrain(IDENT)
                    except PredictorUnavailableError:  # the client's timeout: still running
                        d = {"status": f"unfinished after {args.give_up:g} s"}
                    decisions.append((d, time.perf_counter() - t0))
                done.set()

            burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
            try:
                worker = threading.Thread(target=retrain)
                worker.start()
                during += load(url, client, rng, done.is_set, args.clients)
                worker.join()
            finally:
                for b in burners:
                    b.kill()
                    b.wait()
        memory = [("server", rss_mb(proc.pid))] + [(f"{name} worker", rss_mb(k)) for name, k in
                                                   zip(("training", "retraining"), workers(proc.pid))]
    where = ("in the serving process" if args.in_process else
             f"in the retraining worker (the default), PREDICTOR_TRAINING_PRIORITY={args.priority}")
    print(f"Retraining {where}; {args.observations} observations, {os.cpu_count()} CPUs, {args.clients} client "
          f"thread(s), {args.burners} process(es) spinning meanwhile.\n")
    print(f"| queue_waits ({2 * INSTANCES} queues) | requests | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|")
    print(latency_row("no retraining running", idle))
    print(latency_row("while a retraining runs", during))
    print("\n| retraining | status | candidate | seconds (request) |\n|---|---|---|---|")
    for k, (d, s) in enumerate(decisions, 1):
        print(f"| {k} | {d['status']} | {d.get('candidate') or '-'} | {s:.1f} |")
    print("\nResident memory after the retrainings: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in memory) + ".")


if __name__ == "__main__":
    main()
