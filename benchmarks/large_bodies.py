"""What one large request body costs the service's other requests.

A JSON body is parsed whole, holding Python's interpreter lock: while it is, every other
request on that worker waits, whichever thread the parse runs in. This sends one request
of each kind below to a server on core 0 while a prober on core 1 asks `/ping` every 5 ms,
and prints the request's answer and time, the longest `/ping` wait meanwhile, and how much
the server's peak memory (`VmHWM`) grew.

    uv run python benchmarks/large_bodies.py [--mb 32]

`--mb` is the size of the oversized bodies (default 128 MB); the others are as large as the
service takes: one trace of 1 MB, 100,000 traces in 63 MB. `PREDICTOR_MAX_UPLOAD_MB` is set
to 0 (no limit), so that the bodies meet the routes' own bounds. `--src` runs the server on
another checkout's code (its `src` folder), for a comparison.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import IDENT, SEG, RawClient, Server, llm_traces, pin, train_model  # noqa: E402

MB = 1 << 20


def _probe(port: int, stop, out) -> None:
    """/ping every 5 ms until ``stop`` is set, on core 1; puts the latencies on ``out``."""
    pin(1)
    c = RawClient(port)
    got = []
    while not stop.is_set():
        t0 = time.perf_counter()
        status, _ = c.request("GET", "/ping")
        assert status == 200
        got.append(time.perf_counter() - t0)
        time.sleep(0.005)
    c.close()
    out.put(got)


def _peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _chunks(body: bytes, size: int = 1 << 16):
    for i in range(0, len(body), size):
        yield body[i:i + size]


def one_trace_of(fields: int) -> dict:
    trace = {k: v for k, v in llm_traces(1)[0].items() if k != "runtime_ms"}
    trace.update({f"extra_{i}": float(i) for i in range(fields)})
    return trace


def dense_batch(n: int, target_bytes: int) -> bytes:
    """``n`` traces, each with as many short numeric fields as bring the body near ``target_bytes``:
    the costliest kind of body to parse, a Python object for every few bytes."""
    traces = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in llm_traces(n, seed=5)]
    plain = len(orjson.dumps({"trace": traces}))
    extra = max(0, (target_bytes - plain) // n // len('"x000":0,'))
    for t in traces:
        t.update({f"x{i:03d}": 0 for i in range(extra)})
    return orjson.dumps({"trace": traces})


def dense_observe(traces: list[dict], target_bytes: int) -> bytes:
    """An /observe body of ``traces`` (runtimes measured), as :func:`dense_batch`'s."""
    plain = len(orjson.dumps({"model": IDENT, "traces": traces}))
    extra = max(0, (target_bytes - plain) // len(traces) // len('"x000":0,'))
    return orjson.dumps({"model": IDENT, "traces": [t | {f"x{i:03d}": 0 for i in range(extra)}
                                                    for t in traces]})


def padded_batch(n: int, target_bytes: int) -> bytes:
    """``n`` traces, each with one extra text field that brings the body near ``target_bytes``."""
    traces = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in llm_traces(n, seed=5)]
    plain = len(orjson.dumps({"trace": traces}))
    pad = max(0, (target_bytes - plain) // n - len('"note":"",'))
    for t in traces:
        t["note"] = "x" * pad
    return orjson.dumps({"trace": traces})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=128, help="size of the oversized bodies, in MB")
    ap.add_argument("--src", help="the src folder of another checkout, for the server to run its code")
    args = ap.parse_args()
    big = int(args.mb * MB)
    ctx = mp.get_context("fork")
    under = 64 * MB - MB  # (the most traces a request takes, in a body under the bound of 64 MB)
    single_small = orjson.dumps({"trace": one_trace_of(0)})
    single_at = orjson.dumps({"trace": one_trace_of((MB - 4096) // 24)})  # '"extra_12345":12345.0,' ~24 bytes
    single_big = orjson.dumps({"trace": one_trace_of(big // 24)})
    observed = llm_traces(100_000, seed=6)
    cases = [
        ("/predict/single, one trace", "single", single_small, False),
        ("/predict/single, one trace of 1 MB", "single", single_at, False),
        ("/predict/single, one trace", "single", single_big, False),
        ("the same, chunked (no Content-Length)", "single", single_big, True),
        ("/predict/batch, 100,000 traces of a long text field each", "batch", padded_batch(100_000, under), False),
        ("/predict/batch, 100,000 traces of many numeric fields each", "batch", dense_batch(100_000, under), False),
        ("/predict/batch, 100,000 traces of many numeric fields each", "batch", dense_batch(100_000, big), False),
        ("/observe, 100,000 traces of many numeric fields each", "observe", dense_observe(observed, under), False),
        ("the same, chunked (no Content-Length)", "observe", dense_observe(observed, under), True),
    ]
    paths = {"single": f"/predict/single/{SEG}", "batch": f"/predict/batch/{SEG}", "observe": "/observe"}
    env = {"PREDICTOR_ACCESS_LOG": "false", "PREDICTOR_MAX_UPLOAD_MB": "0"}
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        train_model(data_dir, 2000, "linear")
        srv = Server(data_dir, env=env)
        try:
            print("| request | body | answer | its time | longest /ping wait meanwhile | server's peak memory grew |")
            print("|---|---:|---|---:|---:|---:|")
            with httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=600) as http:
                for label, kind, body, chunked in cases:
                    before = _peak_kb(srv.proc.pid)
                    q, stop = ctx.Queue(), ctx.Event()
                    prober = ctx.Process(target=_probe, args=(srv.port, stop, q))
                    prober.start()
                    time.sleep(0.3)
                    t0 = time.perf_counter()
                    answer = http.post(paths[kind], content=_chunks(body) if chunked else body,
                                       headers={"content-type": "application/json"})
                    took = time.perf_counter() - t0
                    time.sleep(0.3)
                    stop.set()
                    pings = np.array(q.get())
                    prober.join()
                    grew = (_peak_kb(srv.proc.pid) - before) / 1024
                    said = str(answer.status_code) if answer.is_success else (
                        f"{answer.status_code} {answer.json().get('message', '')[:60]}...")
                    print(f"| {label} | {len(body) / MB:.1f} MB | {said} | {took:.2f} s | "
                          f"{pings.max() * 1e3:.0f} ms | {grew:.0f} MB |")
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
