"""Hot-path benchmark: latency, throughput, batch cost, training isolation, cache, loading.

The server runs on one core (taskset -c 0), the load generator on the other
(taskset -c 1). Latency is measured with a raw-socket keep-alive HTTP/1.1 client
(httpx costs ~1 ms a request here, more than the server), throughput with wrk
(Debian package `wrk`) with 16 connections.

    uv run python benchmarks/latency.py [--quick] [--skip-training] [--skip-registry] [--only http,coalesce,metrics,observe,boosted,momenttable,elapsed,queues,deadline,deadlinemany,...]
    uv run python benchmarks/latency.py --baseline /path/to/older/checkout/src --only none  # batches: that code against this
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
from threadpoolctl import threadpool_limits

# The in-process measurements run like the server does: single-threaded BLAS.
threadpool_limits(limits=1, user_api="blas")

IDENT = {"model_type": "llm", "model_name": "bench", "hardware": "H100", "software_name": "vllm", "software_version": "0.6"}
SEG = "/".join(IDENT.values())


def llm_traces(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    inp = rng.integers(16, 4096, n)
    out = rng.integers(8, 1024, n)
    y = (15 + 0.01 * inp + 11.0 * out) * rng.lognormal(0.0, 0.15, n)
    return [{"input_tokens": int(i), "output_tokens": int(o), "runtime_ms": float(r)} for i, o, r in zip(inp, out, y)]


def vision_traces(n: int, seed: int = 0) -> list[dict]:
    """In time order, with timestamps; the first run of a (batch, image) shape is 10x slower."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(1, 65, n)
    image = rng.choice(np.arange(96, 513, 32), n)
    _, first = np.unique(np.column_stack([batch, image]), axis=0, return_index=True)
    cold = np.ones(n)
    cold[first] = 10.0
    y = (2.0 + 0.03 * batch * (image / 224.0) ** 2) * cold * rng.lognormal(0.0, 0.1, n)
    ts = 1.7e9 + np.cumsum(rng.exponential(0.01, n))
    return [{"batch_size": int(b), "image_size": int(s), "ts": float(t), "runtime_ms": float(r)}
            for b, s, t, r in zip(batch, image, ts, y)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > core:
        os.sched_setaffinity(0, {core})


class RawClient:
    """Minimal keep-alive HTTP/1.1 client: the cheapest way to time a server from Python."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.sock.sendall(head + body)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self.buf += self.sock.recv(65536)
        header = bytes(self.buf[:end])
        status = int(header.split(b" ", 2)[1])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        # A bytearray grows in place: appending to bytes copied the answer at every read (a
        # 38 MB answer took 2.9 s to read, 0.8 s so).
        start = end + 4
        while len(self.buf) - start < length:
            self.buf += self.sock.recv(1 << 20)
        answer = bytes(self.buf[start:start + length])
        del self.buf[:start + length]
        return status, answer

    def close(self) -> None:
        self.sock.close()


def timed(client: RawClient, method: str, path: str, body: bytes, n: int, warmup: int = 200) -> np.ndarray:
    for _ in range(warmup):
        status, resp = client.request(method, path, body)
        assert status == 200, resp[:300]
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        client.request(method, path, body)
        out[i] = time.perf_counter() - t0
    return out


def timed_pair(client: RawClient, a: tuple[str, str, bytes], b: tuple[str, str, bytes], n: int,
               warmup: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Time two requests alternately, so that the machine's drifts hit both alike."""
    for _ in range(warmup):
        for req in (a, b):
            status, resp = client.request(*req)
            assert status == 200, resp[:300]
    out = np.empty((2, n))
    for i in range(n):
        for k, req in enumerate((a, b)):
            t0 = time.perf_counter()
            client.request(*req)
            out[k, i] = time.perf_counter() - t0
    return out[0], out[1]


def pct(a: np.ndarray) -> str:
    return f"p50 {np.percentile(a, 50) * 1e3:.3f} ms, p99 {np.percentile(a, 99) * 1e3:.3f} ms"


class Server:
    """The service on a free port, on core 0 (cores 0 and 1 with workers), once it answers
    /health. ``command``: the module and arguments to run instead of uvicorn's (``{port}``
    stands for the port); ``output``: where its output goes."""

    def __init__(self, data_dir: Path, workers: int = 1, env: dict | None = None, command: list[str] | None = None,
                 output=None):
        self.port = free_port()
        command = command or ["uvicorn", "swarmpilot_predictor.api:app_from_env", "--factory", "--host", "127.0.0.1",
                              "--port", "{port}", "--log-level", "warning", "--no-access-log", "--workers", str(workers)]
        cmd = ["taskset", "-c", "0" if workers == 1 else "0-1", sys.executable, "-m",
               *(c.replace("{port}", str(self.port)) for c in command)]
        full_env = {**os.environ, "PREDICTOR_DATA_DIR": str(data_dir), **(env or {})}
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=output, stderr=output)
        deadline = time.monotonic() + 60
        while True:
            try:
                c = RawClient(self.port)
                if c.request("GET", "/health")[0] == 200:
                    c.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def wrk(port: int, path: str, body: bytes | None, seconds: int = 10, connections: int = 16) -> float:
    """Requests per second that wrk sustains: a POST of ``body``, or a GET where it is None.
    A run with any answer other than 2xx or 3xx is an error, not a figure."""
    if not shutil.which("wrk"):
        print(f"(wrk is not installed: the throughput of {path} is not measured, shown as nan)", file=sys.stderr)
        return float("nan")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        if body is not None:
            fh.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(body.decode())}\n")
        script = fh.name
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script,
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    os.unlink(script)
    if "Non-2xx or 3xx responses" in out:
        raise RuntimeError(f"wrk {path}: some answers were errors\n{out}")
    for line in out.splitlines():
        if line.startswith("Requests/sec"):
            return float(line.split()[1])
    raise RuntimeError(out)


def train_model(data_dir: Path, n: int, algorithm: str) -> dict:
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    svc = PredictorService(PredictorSettings(data_dir=data_dir))
    res = svc.train(TrainConfig(model=IDENT, traces=llm_traces(n), algorithm=algorithm))
    svc.close()
    return res


def section_http(args, data_dir: Path) -> None:
    single = orjson.dumps({"trace": {"input_tokens": 512, "output_tokens": 128}})
    batch_traces = llm_traces(1000, seed=7)
    for t in batch_traces:
        del t["runtime_ms"]
    batch = orjson.dumps({"trace": batch_traces})
    n = 1000 if args.quick else 5000
    srv = Server(data_dir, env={"PREDICTOR_CACHE_SIZE": "0"})
    try:
        pin(1)
        c = RawClient(srv.port)
        floor, one = timed_pair(c, ("GET", "/ping", b""), ("POST", f"/predict/single/{SEG}", single), n)
        ratio = np.percentile(one, 50) / np.percentile(floor, 50)
        print(f"| trivial endpoint GET /ping | {pct(floor)} |")
        print(f"| single prediction | {pct(one)} | p50 ratio to trivial: {ratio:.2f} |")
        b = timed(c, "POST", f"/predict/batch/{SEG}", batch, 50 if args.quick else 200, warmup=10)
        print(f"| batch of 1000 traces, end to end | {pct(b)} |")
        for n_tasks, runs in ((10_000, 5 if args.quick else 30), (100_000, 3 if args.quick else 8)):
            many = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in llm_traces(n_tasks, seed=8)]
            big = timed(c, "POST", f"/predict/batch/{SEG}", orjson.dumps({"trace": many}), runs, warmup=2)
            print(f"| batch of {n_tasks:,} traces, end to end | {pct(big)} |")
        c.close()
        secs = 3 if args.quick else 10
        print(f"| throughput, single prediction, 16 connections, {secs} s, 1 worker | {wrk(srv.port, f'/predict/single/{SEG}', single, secs):.0f} req/s |")
        print(f"| throughput, trivial endpoint GET /ping | {wrk(srv.port, '/ping', None, secs):.0f} req/s |")
    finally:
        srv.stop()
    srv = Server(data_dir)  # the default: prediction cache on
    try:
        secs = 3 if args.quick else 10
        # Every request repeats the same trace: after the first, all are cache hits.
        print(f"| throughput, single prediction, cache on and every request a hit, 1 worker | {wrk(srv.port, f'/predict/single/{SEG}', single, secs):.0f} req/s |")
    finally:
        srv.stop()
    # As `serve --workers 2` runs them: counting into prometheus_client's shared files.
    metrics_dir = tempfile.mkdtemp(prefix="latency-metrics-")
    srv = Server(data_dir, workers=2, env={"PREDICTOR_CACHE_SIZE": "0", "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
    try:
        secs = 3 if args.quick else 10
        # Two workers on two cores; wrk shares core 1 with one of them, so this is a floor.
        print(f"| throughput, single prediction, --workers 2 (wrk shares a core) | {wrk(srv.port, f'/predict/single/{SEG}', single, secs):.0f} req/s |")
    finally:
        srv.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def section_batch_breakdown(data_dir: Path) -> None:
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import PredictBatchRequest
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    svc = PredictorService(PredictorSettings(data_dir=data_dir, cache_size=0))
    traces = llm_traces(1000, seed=7)
    for t in traces:
        del t["runtime_ms"]
    raw = orjson.dumps({"trace": traces})
    pattern = IdentityPattern.from_parts(IDENT)
    parse, model, ser = [], [], []
    for _ in range(100):
        t0 = time.perf_counter()
        req = PredictBatchRequest.model_validate(orjson.loads(raw))
        t1 = time.perf_counter()
        pred = svc.predict(pattern, req.trace, req.confidence_level, req.quantiles, with_total=True)
        t2 = time.perf_counter()
        orjson.dumps(pred.batch_response(), option=orjson.OPT_SERIALIZE_NUMPY)
        t3 = time.perf_counter()
        parse.append(t1 - t0)
        model.append(t2 - t1)
        ser.append(t3 - t2)
    for name, v in (("parse + validate", parse), ("modelling (features, distribution, totals)", model), ("build + serialise response", ser)):
        med = statistics.median(v)
        print(f"| batch of 1000, {name} | {med * 1e3:.2f} ms ({med * 1e6 / 1000:.2f} µs per trace) |")
    # A batch asked about its tasks alone ("total_distribution": false): the total's moments only.
    for n in (100, 1000):
        full, lean = [], []
        for _ in range(50):  # alternating, so that the machine's drifts hit both alike
            t0 = time.perf_counter()
            svc.predict(pattern, traces[:n], with_total=True)
            t1 = time.perf_counter()
            svc.predict(pattern, traces[:n], with_total=True, total_distribution=False)
            t2 = time.perf_counter()
            full.append(t1 - t0)
            lean.append(t2 - t1)
        print(f"| batch of {n}, modelling with the total's distribution / its moments only | "
              f"{statistics.median(full) * 1e3:.2f} / {statistics.median(lean) * 1e3:.2f} ms |")
    svc.close()
    # Encoding traces for a model (FeatureSchema.matrix): two numbers and a category.
    from swarmpilot_predictor.features import FeatureSchema, FeatureSpec

    schema = FeatureSchema((FeatureSpec("input_tokens", "numeric", fill=100.0), FeatureSpec("output_tokens", "numeric", fill=100.0),
                            FeatureSpec("gpu", "categorical", ("a100", "h100", "h20"))))
    gpus = np.random.default_rng(7).choice(["a100", "h100", "h20"], 100_000).tolist()
    many = [{**traces[i % len(traces)], "gpu": g} for i, g in enumerate(gpus)]
    took = []
    for _ in range(5):
        t0 = time.perf_counter()
        schema.matrix(many)
        took.append(time.perf_counter() - t0)
    print(f"| 100,000 traces, encoding their features (two numbers, a category) | {min(took) * 1e3:.1f} ms |")


def section_client(data_dir: Path) -> None:
    """A batch of 10,000 traces through the Python client, against the same request sent with
    httpx and read with orjson: what the client adds is parsing its answer into models."""
    import httpx

    from swarmpilot_predictor.client import PredictorClient

    traces = llm_traces(10_000, seed=7)
    for t in traces:
        del t["runtime_ms"]
    body = orjson.dumps({"trace": traces})
    srv = Server(data_dir, env={"PREDICTOR_CACHE_SIZE": "0"})
    try:
        pin(1)
        with PredictorClient(f"http://127.0.0.1:{srv.port}", timeout=120) as client, \
                httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=120) as raw:
            url = f"/predict/batch/{SEG}"
            plain, typed, server = [], [], []
            for i in range(12):  # alternating, so that the machine's drifts hit both alike
                t0 = time.perf_counter()
                answer = orjson.loads(raw.post(url, content=body, headers={"content-type": "application/json"}).content)
                t1 = time.perf_counter()
                got = client.predict_batch(IDENT, traces)
                t2 = time.perf_counter()
                if i >= 2:  # two warm-up rounds
                    plain.append(t1 - t0)
                    typed.append(t2 - t1)
                    server.append(answer["summary"]["duration_seconds"])
            assert got.summary.success == len(traces) == len(got.results)
        rows = (("httpx + orjson.loads", plain), ("PredictorClient.predict_batch", typed),
                ("the server's own duration_seconds", server))
        for name, v in rows:
            med = statistics.median(v)
            print(f"| batch of 10,000 traces, {name} | {med * 1e3:.0f} ms ({med * 1e6 / len(traces):.1f} µs per trace) |")
        print(f"| batch of 10,000 traces, what the client adds to httpx + orjson | "
              f"{(statistics.median(typed) - statistics.median(plain)) * 1e3:.0f} ms |")
        for n, held in _async_client_holds(srv.port, traces).items():
            print(f"| AsyncPredictorClient.predict_batch of {n:,} traces: the caller's event loop held at most | "
                  f"{held * 1e3:.0f} ms at once |")
    finally:
        srv.stop()


def _async_client_holds(port: int, traces: list[dict]) -> dict[int, float]:
    """The longest the caller's event loop went without a turn (a 5 ms ticker's longest gap,
    less its 5 ms) while the asyncio client sent a batch and read its answer, per batch size."""
    import asyncio

    from swarmpilot_predictor.client import AsyncPredictorClient

    many = traces * 10

    async def main() -> dict[int, float]:
        out = {}
        async with AsyncPredictorClient(f"http://127.0.0.1:{port}", timeout=300) as client:
            for n in (10_000, 100_000):
                gaps: list[float] = []
                done = asyncio.Event()

                async def tick() -> None:
                    last = time.perf_counter()
                    while not done.is_set():
                        await asyncio.sleep(0.005)
                        now = time.perf_counter()
                        gaps.append(now - last - 0.005)
                        last = now

                ticker = asyncio.create_task(tick())
                await asyncio.sleep(0.05)
                got = await client.predict_batch(IDENT, many[:n])
                assert len(got.results) == n
                done.set()
                await ticker
                out[n] = max(gaps)
        return out

    return asyncio.run(main())


def section_coalesce(data_dir: Path) -> None:
    """Concurrent single requests: one vectorised batch, or one by one through the single-row path?

    This is what sets ``service.ROW_PATH_MAX_BATCH``.
    """
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.service import ROW_PATH_MAX_BATCH, PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    svc = PredictorService(PredictorSettings(data_dir=data_dir, cache_size=0))
    pattern = IdentityPattern.from_parts(IDENT)
    for k in (2, 4, 8, 12, 16, 32):
        traces = [{"input_tokens": 500 + i, "output_tokens": 100 + i} for i in range(k)]
        ways = {
            "as one batch": lambda: [p.single_response() for p in svc.predict(pattern, traces).split()],
            "one by one": lambda: [svc.predict(pattern, [t]).single_response() for t in traces],
        }
        got = {}
        for name, fn in ways.items():
            for _ in range(50):
                fn()
            best = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(200):
                    fn()
                best.append((time.perf_counter() - t0) / 200 / k)
            got[name] = min(best) * 1e6
        print(f"| {k} concurrent single predictions, per request: as one batch / one by one | "
              f"{got['as one batch']:.1f} / {got['one by one']:.1f} µs | (one by one below {ROW_PATH_MAX_BATCH}) |")
    svc.close()


def section_training_isolation(args, data_dir: Path) -> None:
    single = orjson.dumps({"trace": {"input_tokens": 512, "output_tokens": 128}})
    big = orjson.dumps({"config": {"model": {**IDENT, "software_version": "train-bench"}, "traces": llm_traces(100_000, seed=3)}})
    srv = Server(data_dir, env={"PREDICTOR_CACHE_SIZE": "0"})
    try:
        pin(1)
        c = RawClient(srv.port)
        idle = timed(c, "POST", f"/predict/single/{SEG}", single, 3000)
        done = threading.Event()
        result = {}

        def train():
            t = RawClient(srv.port)
            t0 = time.perf_counter()
            status, body = t.request("POST", "/train", big)
            result["status"], result["seconds"] = status, time.perf_counter() - t0
            done.set()

        th = threading.Thread(target=train)
        th.start()
        time.sleep(0.5)
        busy = []
        while not done.is_set():
            t0 = time.perf_counter()
            c.request("POST", f"/predict/single/{SEG}", single)
            busy.append(time.perf_counter() - t0)
        th.join()
        busy = np.array(busy)
        print(f"| single prediction, idle | {pct(idle)} |")
        print(f"| single prediction while a 100k-row model trains ({result['seconds']:.1f} s, status {result['status']}) | {pct(busy)} | p99 ratio {np.percentile(busy, 99) / np.percentile(idle, 99):.2f} over {len(busy)} requests |")
        c.close()
    finally:
        srv.stop()


def section_cache(data_dir: Path) -> None:
    """Hit against miss, for the benchmark model and for models of the other evaluation paths."""
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    rng = np.random.default_rng(5)
    # A slow mode whose share grows with the input: the shape model's case.
    cold = [{**t, "runtime_ms": t["runtime_ms"] * (8.0 if rng.random() < 0.05 + t["input_tokens"] / 8192 else 1.0)}
            for t in llm_traces(2000, seed=5)]
    svc = PredictorService(PredictorSettings(data_dir=data_dir))
    extra = {
        "lightgbm": svc.train(TrainConfig(model={**IDENT, "software_version": "lgb"}, traces=llm_traces(2000), algorithm="lightgbm")),
        "shape": svc.train(TrainConfig(model={**IDENT, "software_version": "shape"}, traces=cold, algorithm="empirical")),
    }
    svc.close()
    models = [("benchmark model", IDENT)] + [
        (f"{name} ({res['metrics']['algorithm']}, {res['metrics'].get('variant', '')})", {**IDENT, "software_version": v})
        for (name, res), v in zip(extra.items(), ("lgb", "shape"))
    ]
    trace = [{"input_tokens": 512, "output_tokens": 128}]
    for label_model, ident in models:
        pattern = IdentityPattern.from_parts(ident)
        for size, label in ((0, "cache off (miss path)"), (10_000, "cache hit")):
            svc = PredictorService(PredictorSettings(data_dir=data_dir, cache_size=size))
            for _ in range(200):
                svc.predict(pattern, trace)
            t = []
            for _ in range(3000):
                t0 = time.perf_counter()
                svc.predict(pattern, trace).single_response()
                t.append(time.perf_counter() - t0)
            print(f"| in-process single prediction, {label_model}, {label} | median {statistics.median(t) * 1e6:.1f} µs |")
            svc.close()


def section_training_speed(args) -> None:
    cases = [("LLM", llm_traces, 100_000)]
    if not args.quick:
        # The vision case also derives `first_of_shape` from the timestamps.
        cases += [("LLM", llm_traces, 1_000_000), ("vision (with timestamps)", vision_traces, 1_000_000)]
    for kind, make, n in cases:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "traces.jsonl"
            with path.open("wb") as fh:
                for t in make(n, seed=11):
                    fh.write(orjson.dumps(t) + b"\n")
            code = (
                "import resource,time,sys;from pathlib import Path\n"
                "from swarmpilot_predictor.schemas import TrainConfig\n"
                "from swarmpilot_predictor.service import PredictorService\n"
                "from swarmpilot_predictor.settings import PredictorSettings\n"
                f"svc=PredictorService(PredictorSettings(data_dir=Path({tmp!r})/'d'))\n"
                "t0=time.perf_counter()\n"
                f"r=svc.train(TrainConfig(model={IDENT!r},traces={str(path)!r},algorithm='auto'), uploads={{{str(path)!r}: Path({str(path)!r})}})\n"
                "print(time.perf_counter()-t0, r['metrics']['algorithm'], len(r['metrics']['data']['columns_derived']), "
                "int(r['metrics'].get('regime_split', {}).get('split', False)), "
                "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)\n"
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:])
                continue
            secs, algo, derived, split, rss = out.stdout.split()[-5:]
            extra = ", first_of_shape derived" if int(derived) else ""
            extra += ", a model each for first runs and repeats" if int(split) else ""
            print(f"| training {n:,} rows of {kind} traces from JSONL, algorithm auto (chose {algo}{extra}) | "
                  f"{float(secs):.1f} s, peak RSS {float(rss):.0f} MB |")
    if not args.quick:
        # Wide data: every feature is a candidate for the location, the scale and the shape.
        from swarmpilot_predictor.modeling import QuantileModel

        n, p = 50_000, 20
        rng = np.random.default_rng(0)
        X = rng.uniform(1, 100, (n, p))
        y = (10 + X[:, 0]) * np.exp((0.1 + 0.004 * X[:, 1]) * rng.standard_normal(n))
        t0 = time.perf_counter()
        model = QuantileModel(["numeric"] * p, [0] * p).fit(X, y)
        secs = time.perf_counter() - t0
        print(f"| fitting {n:,} rows x {p} numeric features in memory, algorithm auto (chose {model.family_}) | {secs:.1f} s |")


def copy_model_as(files, dst: Path, ident: dict[str, str]) -> None:
    """Store a model's ``files`` as the model ``ident`` in the new folder ``dst``: its meta files
    rewritten with that identity, the others hard-linked (thousands of models in seconds)."""
    dst.mkdir()
    for f in files:
        if f.name.endswith(".meta.json"):
            meta = orjson.loads(f.read_bytes())
            meta["identity"] = ident
            (dst / f.name).write_bytes(orjson.dumps(meta))
        else:
            os.link(f, dst / f.name)


def section_registry(tmp: Path) -> None:
    """Start-up time with thousands of registered models (lazy loading)."""
    data = tmp / "many"
    train_model(data, 300, "linear")
    src = next(p for p in (data / "models").iterdir() if p.is_dir())
    for i in range(3000):
        ident = {**IDENT, "software_version": f"v{i}"}
        from swarmpilot_predictor.identity import ModelIdentity

        copy_model_as(src.iterdir(), data / "models" / ModelIdentity.from_parts(ident).dirname, ident)
    code = (
        "import time;t0=time.perf_counter()\n"
        "from swarmpilot_predictor.api import create_app\n"
        "from swarmpilot_predictor.settings import PredictorSettings\n"
        "t1=time.perf_counter()\n"
        f"app=create_app(PredictorSettings(data_dir={str(data)!r}))\n"
        "t2=time.perf_counter()\n"
        "print(t1-t0, t2-t1, len(app.state.service.registry.identities()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    print(f"| create_app with {out[2]} registered models (imports {float(out[0]):.2f} s excluded) | {float(out[1]) * 1e3:.0f} ms |")

    # Deleting models one by one, with a second registry on the same directory standing for
    # another worker: each change is noticed by every worker at its next request.
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.registry import ModelRegistry
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    svc = PredictorService(PredictorSettings(data_dir=data, cache_size=0))
    other = ModelRegistry(data / "models")
    pattern = IdentityPattern.from_parts(IDENT)
    trace = [{"input_tokens": 512, "output_tokens": 128}]
    svc.predict(pattern, trace)
    # Requests that do not name one model whole: a model not stored (a 404, with its near
    # misses), and a '*' that the trace's identity fields settle.
    from swarmpilot_predictor.errors import ModelNotFound

    unknown = IdentityPattern.from_parts({**IDENT, "software_version": "none"})
    wildcard = IdentityPattern.from_parts({**IDENT, "software_version": None})
    named = [{**trace[0], "software_version": "v2999"}]
    misses, settled = [], []
    for _ in range(200):
        t0 = time.perf_counter()
        try:
            svc.predict(unknown, trace)
        except ModelNotFound:
            pass
        t1 = time.perf_counter()
        svc.predict(wildcard, named)
        t2 = time.perf_counter()
        misses.append(t1 - t0)
        settled.append(t2 - t1)
    print(f"| with 3,000 models: a prediction for a model not stored (404) / one whose '*' the trace settles "
          f"(medians) | {statistics.median(misses) * 1e3:.2f} / {statistics.median(settled) * 1e3:.2f} ms |")
    deletes, nexts, noticed = [], [], []
    for i in range(200):
        t0 = time.perf_counter()
        svc.delete_model(IdentityPattern.from_parts({**IDENT, "software_version": f"v{i}"}))
        t1 = time.perf_counter()
        svc.predict(pattern, trace)
        t2 = time.perf_counter()
        other.maybe_refresh()
        t3 = time.perf_counter()
        deletes.append(t1 - t0)
        nexts.append(t2 - t1)
        noticed.append(t3 - t2)
    assert len(other.identities()) == len(svc.registry.identities()) == 3001 - 200
    print(f"| with 3,000 models, 200 deleted one by one: a delete / this worker's next prediction / another "
          f"worker noticing it (medians) | {statistics.median(deletes) * 1e3:.1f} / {statistics.median(nexts) * 1e3:.2f} "
          f"/ {statistics.median(noticed) * 1e3:.2f} ms |")
    svc.close()


def section_accesslog(data_dir: Path) -> None:
    """A single prediction with uvicorn's line per request and without (`serve --access-log`
    or `--no-access-log`), the servers started alternately, each written to a file."""
    body = orjson.dumps({"trace": {"input_tokens": 512, "output_tokens": 128}})
    got: dict[str, list[float]] = {}
    pin(1)
    for _ in range(2):
        for flag in ("--access-log", "--no-access-log"):
            with tempfile.TemporaryFile() as log:
                srv = Server(data_dir, env={"PREDICTOR_CACHE_SIZE": "0"}, output=log,
                             command=["swarmpilot_predictor", "serve", "--host", "127.0.0.1", "--port", "{port}", flag])
                try:
                    c = RawClient(srv.port)
                    t = timed(c, "POST", f"/predict/single/{SEG}", body, 3000, warmup=500)
                    got.setdefault(flag, []).append(float(np.percentile(t, 50)) * 1e3)
                    c.close()
                finally:
                    srv.stop()
    for flag, p50 in got.items():
        print(f"| single prediction, serve {flag}, p50 of each round | {', '.join(f'{v:.3f}' for v in p50)} ms | |")


def section_preload(tmp: Path) -> None:
    """A LightGBM model's first prediction in a fresh server: loaded on demand, or preloaded."""
    data = tmp / "preload"
    train_model(data, 400, "lightgbm")
    single = orjson.dumps({"trace": {"input_tokens": 512, "output_tokens": 128}})
    for label, env in (("loaded on demand", {}), ("PREDICTOR_PRELOAD_MODELS=true", {"PREDICTOR_PRELOAD_MODELS": "true"})):
        srv = Server(data, env=env)
        try:
            c = RawClient(srv.port)
            deadline = time.monotonic() + 60
            while env and orjson.loads(c.request("GET", "/health")[1])["models_loaded"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                assert c.request("POST", f"/predict/single/{SEG}", single)[0] == 200
                times.append(time.perf_counter() - t0)
            c.close()
            print(f"| first / second prediction of a LightGBM model in a fresh server, {label} | "
                  f"{times[0] * 1e3:.1f} / {times[1] * 1e3:.1f} ms |")
        finally:
            srv.stop()


METRICS_COST = """
import time
from swarmpilot_predictor.metrics import PredictorMetrics

m = PredictorMetrics()
def request():  # what a cached single prediction counts: its request, latency, prediction and cache hit
    m.observe_request("/predict/single/{model_type}/{model_name}/{hardware}/{software_name}/{software_version}",
                      "POST", 200, 0.001)
    m.count_predictions("llm/bench/H100/vllm/0.6", "model", 1)
    m.cache_hits.inc()
request()
n = 200_000
t = time.perf_counter()
for _ in range(n):
    request()
per = (time.perf_counter() - t) / n
t = time.perf_counter()
m.render()
print(per, time.perf_counter() - t)
"""


def section_metrics(tmp: Path) -> None:
    """What counting costs a request in one process, and with several workers' shared files."""
    for label, env in (("one worker", {}), ("several workers (PROMETHEUS_MULTIPROC_DIR)", {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "mp")})):
        if env:
            (tmp / "mp").mkdir(exist_ok=True)
        out = subprocess.run([sys.executable, "-c", METRICS_COST], capture_output=True, text=True, check=True,
                             env={**os.environ, **env}).stdout.split()
        print(f"| metrics of one prediction request, {label} (in-process) | {float(out[0]) * 1e6:.2f} µs | "
              f"a scrape's rendering {float(out[1]) * 1e3:.2f} ms |")


def section_boosted() -> None:
    """What a boosted model's trees cost: padding-bucket runtimes (a step function of two
    features, benchmarks/other_workloads.py), 3,000 of them, where the folds boost for
    about 1,300 rounds, against the same model held to 300 (``num_boost_round``)."""
    from other_workloads import padding_buckets

    from swarmpilot_predictor.modeling import QuantileModel

    traces = padding_buckets(3000, seed=0).traces
    X = np.array([[t["max_seq_len"], t["batch_size"]] for t in traces], dtype=np.float64)
    y = np.array([t["runtime_ms"] for t in traces])
    for params in (None, {"num_boost_round": 300}):
        model = QuantileModel(["numeric"] * 2, [0] * 2, algorithm="lightgbm", params=params).fit(X, y)
        trees = model.location_.booster_.num_trees()
        row, levels = X[5], (0.25, 0.5, 0.75, 0.99)
        single = []
        for _ in range(3000):
            t0 = time.perf_counter()
            model.describe_one(row, levels)
            single.append(time.perf_counter() - t0)
        batch = []
        for _ in range(20):
            t0 = time.perf_counter()
            model.predict_quantiles(X[:1000], levels)
            batch.append(time.perf_counter() - t0)
        size = len(json.dumps(model.to_json())) / 1e6
        cap = "default" if params is None else "num_boost_round 300"
        print(f"| boosted model, {cap}: {trees} trees | one row p50 {np.median(single[100:]) * 1e6:.0f} us, "
              f"1,000 rows {np.median(batch) * 1e3:.1f} ms (quantiles), {size:.2f} MB stored | in-process |", flush=True)


def section_moment_table() -> None:
    """The table of a score distribution's moments per segment and scale, built the first
    time a model with a shape answers a mean or a queue total (then cached), and at the end
    of every training: 199 score levels, 11 knots, each build on a fresh distribution."""
    from scipy.stats import t as student

    from swarmpilot_predictor.distribution import ScoreDistribution

    levels = np.linspace(0.005, 0.995, 199)
    knots = tuple(np.round(np.linspace(0.05, 0.95, 11), 4))
    times = []
    for _ in range(21):
        score = ScoreDistribution(levels, student.ppf(levels, 5.0))
        score.segment_nodes(knots)  # (the nodes are a cache of their own)
        t0 = time.perf_counter()
        score.segment_moment_table(knots)
        times.append(time.perf_counter() - t0)
    print(f"| moment table of a score distribution (11 knots) | median {np.median(times) * 1e3:.1f} ms a build "
          "| in-process |", flush=True)


def section_atoms(data_dir: Path) -> None:
    """Repeated runtimes (atoms) cost a search of every quantile among them: a model of
    20,000 traces whose runtimes are rounded to 50 ms (about 240 heavy atoms), in-process,
    cache off, with its atoms and with them taken away (the same model otherwise)."""
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    svc = PredictorService(PredictorSettings(data_dir=data_dir, cache_size=0))
    base = llm_traces(20_000, seed=7)
    rounded = [{**t, "runtime_ms": round(t["runtime_ms"] / 50) * 50 + 1.0} for t in base]
    probe = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in base[:1000]]
    ident = {**IDENT, "software_version": "atoms"}
    svc.train(TrainConfig(model=ident, traces=rounded, algorithm="linear"))
    pattern = IdentityPattern.from_parts(ident)
    model = svc._serving(pattern)[1].model
    atoms = model.atoms_
    for label, kept in ((f"with its {len(atoms)} atoms", atoms), ("without them", np.array([]))):
        model._set_atoms(kept)
        for _ in range(200):
            svc.predict(pattern, probe[:1])
        single = []
        for i in range(3000):
            t0 = time.perf_counter()
            svc.predict(pattern, [probe[i % 1000]])
            single.append(time.perf_counter() - t0)
        batch = []
        for _ in range(60):
            t0 = time.perf_counter()
            svc.predict(pattern, probe, with_total=True)
            batch.append(time.perf_counter() - t0)
        print(f"| in-process, runtimes rounded to 50 ms, {label}: single prediction | median {statistics.median(single) * 1e6:.1f} µs |")
        print(f"| in-process, runtimes rounded to 50 ms, {label}: batch of 1,000 with its total | median {statistics.median(batch) * 1e3:.2f} ms |")
    svc.close()


def section_observe(data_dir: Path) -> None:
    """What one ``/observe`` of one measured runtime costs in-process once the model's accuracy
    window (1,000 observations) is full: its prediction, the append to the observation log,
    the rolling accuracy and the drift report that the answer carries."""
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    svc = PredictorService(PredictorSettings(data_dir=data_dir, cache_size=0))
    traces = llm_traces(4000, seed=11)
    for t in traces[:1200]:
        svc.observe(IDENT, [t])
    took = []
    for t in traces[1200:]:
        t0 = time.perf_counter()
        svc.observe(IDENT, [t])
        took.append(time.perf_counter() - t0)
    print(f"| in-process /observe of one runtime, accuracy window full | median {statistics.median(took) * 1e3:.2f} ms, "
          f"p99 {np.percentile(took, 99) * 1e3:.2f} ms |")
    # The same runtimes sent 100 at a time, as a scheduler that batches its reports would.
    more = llm_traces(6000, seed=12)
    took = []
    for k in range(0, len(more), 100):
        t0 = time.perf_counter()
        svc.observe(IDENT, more[k:k + 100])
        took.append(time.perf_counter() - t0)
    print(f"| in-process /observe of 100 runtimes at once | median {statistics.median(took) * 1e3:.2f} ms a request, "
          f"{statistics.median(took) * 1e3 / 100:.3f} ms a runtime |")
    svc.close()


def section_store(data_dir: Path) -> None:
    """Storing a version in the registry (its model, training data and meta files, each written
    under a temporary name, fsynced and renamed, and their folder fsynced after each rename):
    the disk's part of a training's answer."""
    from swarmpilot_predictor.identity import ModelIdentity
    from swarmpilot_predictor.registry import ModelRegistry

    loaded = ModelRegistry(data_dir / "models").load(ModelIdentity.from_parts(IDENT))
    X = np.zeros((2000, len(loaded.meta.features.features)))
    y = np.ones(2000)
    for with_data in (False, True):
        reg = ModelRegistry(data_dir.parent / f"store-{with_data}")
        took = []
        for _ in range(60):
            meta = dataclasses.replace(loaded.meta, extra=dict(loaded.meta.extra))
            t0 = time.perf_counter()
            reg.save(meta, loaded.model, training_data=(X, y) if with_data else None)
            took.append(time.perf_counter() - t0)
        print(f"| a version stored{' with 2,000 training rows' if with_data else ''} (60 in a row) | median "
              f"{statistics.median(took) * 1e3:.2f} ms, p90 {np.percentile(took, 90) * 1e3:.2f} ms |")


def section_request_ids() -> None:
    """What giving each request its id costs: ``RequestIdMiddleware`` over a bare ASGI app that
    answers at once, against that app alone, in-process (the middleware's own share of a
    request, without the server's noise around it)."""
    import asyncio

    from swarmpilot_predictor.request_ids import RequestIdMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message):
        pass

    async def receive():
        return {"type": "http.request", "body": b""}

    headers = [(b"host", b"127.0.0.1:8200"), (b"accept", b"*/*"), (b"content-type", b"application/json"),
               (b"content-length", b"60")]

    async def per_request(asgi, extra, n=100_000) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await asgi({"type": "http", "method": "POST", "path": "/x", "headers": headers + extra}, receive, send)
        return (time.perf_counter() - t0) / n * 1e6

    async def rounds():
        wrapped = RequestIdMiddleware(app)
        out = {"bare": [], "made": [], "given": []}
        for _ in range(5):
            out["bare"].append(await per_request(app, []))
            out["made"].append(await per_request(wrapped, []))
            out["given"].append(await per_request(wrapped, [(b"x-request-id", b"sched-42-0001")]))
        return {k: statistics.median(v) for k, v in out.items()}

    m = asyncio.run(rounds())
    print(f"| a request's id (median of 5 rounds of 100,000, in-process) | the middleware adds "
          f"{m['made'] - m['bare']:.2f} µs with an id it makes, {m['given'] - m['bare']:.2f} µs with the caller's "
          f"(bare app {m['bare']:.2f} µs) | |")


def section_windows() -> None:
    """What the accuracy windows hold in memory, per observation kept (every worker keeps a
    window of up to ``PREDICTOR_ACCURACY_WINDOW`` observations per observed model version),
    and the time of adding a batch of 10 observations and of a report on a full window."""
    import tracemalloc

    from swarmpilot_predictor.monitoring import MONITOR_LEVELS, RollingAccuracy

    rng = np.random.default_rng(0)
    n, versions = 1000, 100
    y = rng.lognormal(3.0, 0.3, (versions, n))
    q = np.tile(np.exp(3.0 + 0.3 * np.linspace(-2, 2, len(MONITOR_LEVELS))), (n, 1))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    windows = []
    for v in range(versions):
        w = RollingAccuracy(window=n)
        for k in range(0, n, 10):  # as /observe batches of 10 add them
            w.add(y[v, k:k + 10], q[k:k + 10], expect=y[v, k:k + 10], error=y[v, k:k + 10] / 4,
                  first_run=np.zeros(10))
        windows.append(w)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    w = windows[0]
    adds, reports = [], []
    for k in range(300):
        t0 = time.perf_counter()
        w.add(y[1, :10], q[:10], expect=y[1, :10], error=y[1, :10] / 4, first_run=np.zeros(10))
        t1 = time.perf_counter()
        w.report(0.01, 100)
        reports.append(time.perf_counter() - t1)
        adds.append(t1 - t0)
    print(f"| accuracy windows: memory per observation kept ({versions} versions x {n:,} observations) | "
          f"{held / (versions * n):.0f} bytes |")
    print(f"| a full window: adding 10 observations / its report after them (medians of 300) | "
          f"{statistics.median(adds) * 1e3:.3f} / {statistics.median(reports) * 1e3:.3f} ms |")


def section_first_observe(data_dir: Path) -> None:
    """The first ``/observe`` a freshly started server answers, against the next ones (three
    servers in turn, each on a copy of the data directory without observations): the first
    one's drift report loaded what it needed on the request (scipy.stats: over a second)."""
    first, later = [], []
    for k in range(3):
        copy = data_dir.parent / f"first-observe-{k}"
        shutil.copytree(data_dir / "models", copy / "models")
        srv = Server(copy, env={"PREDICTOR_ACCESS_LOG": "false"})
        try:
            c = RawClient(srv.port)
            traces = llm_traces(60, seed=40 + k)
            for i in range(0, 60, 10):
                body = orjson.dumps({"model": IDENT, "traces": traces[i:i + 10]})
                t0 = time.perf_counter()
                status, resp = c.request("POST", "/observe", body)
                assert status == 200, resp[:300]
                (first if i == 0 else later).append(time.perf_counter() - t0)
            c.close()
        finally:
            srv.stop()
    print(f"| the first /observe (10 runtimes) of a fresh server | {', '.join(f'{t * 1e3:.1f}' for t in first)} ms "
          f"(3 servers); the next ones median {statistics.median(later) * 1e3:.1f} ms |")


def section_elapsed(data_dir: Path) -> None:
    """What a running task's time left costs in-process against its whole runtime: one task
    alone, and a queue of 100 whose first task is running (with its total)."""
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    svc = PredictorService(PredictorSettings(data_dir=data_dir, cache_size=0))
    pattern = IdentityPattern.from_parts(IDENT)
    queue = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in llm_traces(100, seed=13)]
    whole_one, running_one = [queue[0]], [{**queue[0], "elapsed_ms": 100.0}]
    running_queue = [running_one[0], *queue[1:]]
    for label, traces, total in (("one task, whole runtime", whole_one, False),
                                 ("one task running (elapsed_ms), time left", running_one, False),
                                 ("queue of 100 with its total, none running", queue, True),
                                 ("queue of 100 with its total, the first running", running_queue, True)):
        for _ in range(50):
            svc.predict(pattern, traces, with_total=total)
        took = []
        for _ in range(500):
            t0 = time.perf_counter()
            svc.predict(pattern, traces, with_total=total)
            took.append(time.perf_counter() - t0)
        print(f"| in-process prediction: {label} | median {statistics.median(took) * 1e3:.3f} ms, "
              f"p99 {np.percentile(took, 99) * 1e3:.3f} ms |")
    svc.close()


def section_deadline(data_dir: Path) -> None:
    """What a deadline's probability (deadline_ms) adds to a prediction: in-process, one task
    (with a deadline below its least runtime, 2000 ms, and one at its median, whose search
    takes every pass) and a queue of 100 with its total, with and without it (no cache
    either way); over HTTP, in turn, one task's request without one, with 2000 ms, with its
    median and with a deadline new to the task each time (the service's cache on: the plain
    request is a cache hit, and so, from the first on, are the deadlines asked again), and
    a trace new to the cache each time, without a deadline and with one."""
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    svc = PredictorService(PredictorSettings(data_dir=data_dir, cache_size=0))
    pattern = IdentityPattern.from_parts(IDENT)
    queue = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in llm_traces(100, seed=17)]
    median = float(svc.predict(pattern, queue[:1], quantiles=[0.5]).quantiles[0, 0])
    for label, traces, total, deadlines in (("one task", queue[:1], False, (None, 2000.0, median)),
                                            ("queue of 100 with its total", queue, True, (None, 2000.0))):
        for deadline in deadlines:
            for _ in range(50):
                svc.predict(pattern, traces, with_total=total, deadline_ms=deadline)
            took = []
            for _ in range(500):
                t0 = time.perf_counter()
                svc.predict(pattern, traces, with_total=total, deadline_ms=deadline)
                took.append(time.perf_counter() - t0)
            said = ("without a deadline" if deadline is None else "with deadline_ms 2000" if deadline == 2000.0
                    else f"with deadline_ms at its median ({median:.0f})")
            print(f"| in-process prediction: {label}, {said} | median {statistics.median(took) * 1e3:.3f} ms, "
                  f"p99 {np.percentile(took, 99) * 1e3:.3f} ms |")
    svc.close()
    srv = Server(data_dir, env={"PREDICTOR_ACCESS_LOG": "false"})
    try:
        c = RawClient(srv.port)
        trace = queue[0]
        path = f"/predict/single/{SEG}"
        asked = {
            "without a deadline (a cache hit)": lambda i: {"trace": trace},
            "with deadline_ms 2000": lambda i: {"trace": trace, "deadline_ms": 2000.0},
            "with deadline_ms at its median": lambda i: {"trace": trace, "deadline_ms": median},
            # More deadlines than an entry keeps: each one's probability searched for afresh.
            "with a deadline new to it each time": lambda i: {"trace": trace, "deadline_ms": median * (0.5 + i / 4000)},
            # A trace new to the cache each time (its output_tokens, within the training range).
            "of a new trace, without a deadline (a cache miss)":
                lambda i: {"trace": {**trace, "output_tokens": 300 + (i + 200) / 16}},
            "of a new trace, with deadline_ms at its median (a cache miss)":
                lambda i: {"trace": {**trace, "output_tokens": 500 + (i + 200) / 16}, "deadline_ms": median},
        }
        n = 2000
        took = {label: np.empty(n) for label in asked}
        for i in range(-200, n):  # in turn, so that the machine's drifts hit them alike
            for label, body in asked.items():
                data = orjson.dumps(body(i))
                t0 = time.perf_counter()
                status, resp = c.request("POST", path, data)
                if i >= 0:
                    took[label][i] = time.perf_counter() - t0
                assert status == 200, resp[:300]
        c.close()
        for label, a in took.items():
            print(f"| HTTP single prediction, {label} | {pct(a)} |")
    finally:
        srv.stop()


def section_deadline_many(data_dir: Path) -> None:
    """What a deadline adds to requests of many tasks or queues, in-process (the service's
    cache off), three runs of each, alternately with and without it, medians: 1,000 queues
    of 10 tasks with a deadline past every queue's far tail; 10,000 queues of one task; and
    from a lookup table of 2,000 records, a batch of 100,000 tasks and 2,000 queues of one."""
    import gzip

    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    svc = PredictorService(PredictorSettings(data_dir=data_dir, cache_size=0))
    pattern = IdentityPattern.from_parts(IDENT)
    tasks = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in llm_traces(2000, seed=21)]
    path = data_dir / "deadline_records.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(t) + b"\n" for t in tasks)))
    svc.generate_table(pattern, path, 0.9, "deadline_records.json")
    table = {"lookup_table": True, "lookup_table_name": "deadline_records.json"}
    tens = {f"q{i}": tasks[(10 * i) % 1990:(10 * i) % 1990 + 10] for i in range(1000)}
    cases = [
        ("1,000 queues of 10 tasks, deadline past every tail", 1e9,
         lambda d: svc.predict_queues(pattern, tens, deadline_ms=d)),
        ("10,000 queues of one task", 20_000.0,
         lambda d: svc.predict_queues(pattern, {f"q{i}": [tasks[i % 2000]] for i in range(10_000)}, deadline_ms=d)),
        ("table: a batch of 100,000 tasks of 2,000 records", 20_000.0,
         lambda d: svc.predict(pattern, tasks * 50, with_total=True, deadline_ms=d, **table).batch_response()),
        ("table: 2,000 queues of one task", 20_000.0,
         lambda d: svc.predict_queues(pattern, {f"q{i}": [t] for i, t in enumerate(tasks)}, deadline_ms=d, **table)),
    ]
    for label, deadline, ask in cases:
        took: dict[float | None, list[float]] = {None: [], deadline: []}
        for _ in range(3):
            for d in (None, deadline):
                t0 = time.perf_counter()
                ask(d)
                took[d].append(time.perf_counter() - t0)
        print(f"| in-process: {label} | median {statistics.median(took[deadline]):.3f} s with deadline_ms, "
              f"{statistics.median(took[None]):.3f} s without |")
    svc.close()


def section_queues(data_dir: Path) -> None:
    """A scheduler's placement question over HTTP: the waits of 16 instances' queues (10
    tasks each, the first running), as 16 batch requests one after the other and as one
    request to /predict/queues, alternately."""
    srv = Server(data_dir, env={"PREDICTOR_CACHE_SIZE": "0", "PREDICTOR_ACCESS_LOG": "false"})
    try:
        c = RawClient(srv.port)
        traces = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in llm_traces(160, seed=21)]
        queues = {f"gpu-{i}": [{**traces[10 * i], "elapsed_ms": 500.0}, *traces[10 * i + 1:10 * i + 10]] for i in range(16)}
        levels = [0.5, 0.9]
        batches = [orjson.dumps({"trace": q, "quantiles": levels, "confidence_level": 0.9}) for q in queues.values()]
        one = orjson.dumps({"queues": queues, "quantiles": levels, "confidence_level": 0.9})
        answer = orjson.loads(c.request("POST", f"/predict/queues/{SEG}", one)[1])["queues"]
        for body, name in zip(batches, queues):  # the same waits either way
            alone = orjson.loads(c.request("POST", f"/predict/batch/{SEG}", body)[1])
            assert abs(alone["total_quantiles"][1] / answer[name]["total_quantiles"][1] - 1) < 1e-9
        each, once = [], []
        for _ in range(100):
            t0 = time.perf_counter()
            for body in batches:
                status, _ = c.request("POST", f"/predict/batch/{SEG}", body)
                assert status == 200
            each.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            status, _ = c.request("POST", f"/predict/queues/{SEG}", one)
            assert status == 200
            once.append(time.perf_counter() - t0)
        c.close()
        print(f"| 16 queues' waits (10 tasks each, the first running): 16 batch requests | {pct(np.array(each))} |")
        print(f"| the same 16 waits: one /predict/queues request | {pct(np.array(once))} |")
    finally:
        srv.stop()


def section_queues_in_process(data_dir: Path) -> None:
    """A queues request's cost in-process, with each task's quantiles worked out once for
    the request (``TaskDistributions.for_totals``, as the service does) and, interleaved,
    once per queue a task is in (the same call made to return the tasks as they are, as
    before 2026-12-02): 40 requests of each kind, six rounds, medians. The scheduler's
    shape: 8 instances' waits (a running task, then up to 6 queued) and completion times
    (the same and a new task), each task in two queues; then 16 queues of 10 tasks, the
    first running, each task in one; then 16 queues of 10 traces of the H100 vision example
    (``examples/data``), its model trained with ``algorithm: auto`` (slow modes: a queue's
    tasks split probability bins), none running; then 1,000 queues of 10 tasks, the first
    running (2 requests of each kind, four rounds)."""
    from swarmpilot_predictor import distribution
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    svc = PredictorService(PredictorSettings(data_dir=data_dir, cache_size=0))
    pattern = IdentityPattern.from_parts(IDENT)
    vision_rows = [json.loads(line) for line in (Path(__file__).parent.parent / "examples/data/h100_resnet50_vision.jsonl").open()]
    vision = {**IDENT, "model_type": "vision", "model_name": "resnet50"}
    svc.train(TrainConfig.model_validate({"model": vision, "traces": vision_rows, "features": ["batch_size", "image_size"]}))
    vision_pool = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in vision_rows]
    rng = np.random.default_rng(31)
    pool = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in llm_traces(4000, seed=31)]

    def tasks(n: int) -> list[dict]:
        return [dict(pool[i]) for i in rng.integers(0, len(pool), n)]

    def instances() -> dict[str, list[dict]]:
        out = {}
        for k in range(8):
            ahead = tasks(int(rng.integers(0, 7)))
            if ahead:
                ahead[0]["elapsed_ms"] = float(rng.uniform(0, 300))
            out[f"{k}/wait"], out[f"{k}/done"] = ahead, ahead + tasks(1)
        return out

    def sixteen() -> dict[str, list[dict]]:
        return {f"gpu-{k}": [{**q[0], "elapsed_ms": 500.0}, *q[1:]] for k, q in enumerate(tasks(10) for _ in range(16))}

    def sixteen_vision() -> dict[str, list[dict]]:
        return {f"gpu-{k}": [dict(vision_pool[i]) for i in rng.integers(0, len(vision_pool), 10)] for k in range(16)}

    def thousand() -> dict[str, list[dict]]:
        return {f"gpu-{k}": [{**q[0], "elapsed_ms": 500.0}, *q[1:]] for k, q in enumerate(tasks(10) for _ in range(1000))}

    remembering = distribution.TaskDistributions.for_totals
    try:
        for label, make, model, requests, rounds in (
                ("8 instances' wait and completion (16 queues, 0 to 7 tasks)", instances, pattern, 40, 6),
                ("16 queues of 10 tasks, the first running", sixteen, pattern, 40, 6),
                ("the H100 vision example's model, 16 queues of 10 tasks", sixteen_vision, IdentityPattern.from_parts(vision), 40, 6),
                ("1,000 queues of 10 tasks, the first running", thousand, pattern, 2, 4)):
            asks = [make() for _ in range(requests)]
            took: dict[bool, list[float]] = {True: [], False: []}
            for rnd in range(rounds):
                for once in (True, False) if rnd % 2 else (False, True):
                    distribution.TaskDistributions.for_totals = remembering if once else (lambda self, levels, subsets=(): self)
                    for queues in asks:
                        t0 = time.perf_counter()
                        svc.predict_queues(model, queues, quantiles=[0.5, 0.9, 0.99])
                        took[once].append(time.perf_counter() - t0)
            print(f"| in-process /predict/queues, {label}: each task's quantiles once a request / once a queue | "
                  f"median {statistics.median(took[True]) * 1e3:.2f} / {statistics.median(took[False]) * 1e3:.2f} ms |")
    finally:
        distribution.TaskDistributions.for_totals = remembering
        svc.close()


def _loop_requests(port: int, method: str, path: str, body: bytes, until: float, every: float, core: int,
                   out) -> None:
    """In a process of its own on ``core``: ``method path`` every ``every`` seconds (or back to
    back, where 0) until ``until``; puts the latencies on ``out``."""
    pin(core)
    c = RawClient(port)
    got = []
    while time.monotonic() < until:
        t0 = time.perf_counter()
        status, resp = c.request(method, path, body)
        assert status == 200, resp[:300]
        got.append(time.perf_counter() - t0)
        if every:
            time.sleep(every)
    c.close()
    out.put(got)


def _load_threads(port: int, path: str, body: bytes, until: float, clients: int, core: int, out) -> None:
    """In a process of its own: ``clients`` threads, each posting ``body`` back to back until ``until``."""
    pin(core)
    counts = []

    def one() -> None:
        c = RawClient(port)
        n = 0
        while time.monotonic() < until:
            status, resp = c.request("POST", path, body)
            assert status == 200, resp[:300]
            n += 1
        c.close()
        counts.append(n)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(sum(counts))


def section_loop(args, data_dir: Path) -> None:
    """What batches cost the other requests: /ping while one client loops batches back to
    back, and /health while many clients do (the server on core 0, the clients on core 1)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    secs = 3 if args.quick else 8
    srv = Server(data_dir, env={"PREDICTOR_CACHE_SIZE": "0"})
    try:
        def run(loaders: list[tuple], probe: tuple) -> tuple[np.ndarray, list]:
            until = time.monotonic() + secs
            q_probe, q_load = ctx.Queue(), ctx.Queue()
            procs = [ctx.Process(target=_loop_requests, args=(srv.port, *probe, until, 0.005, 1, q_probe))]
            procs += [ctx.Process(target=fn, args=(srv.port, *a, until, *rest, q_load)) for fn, a, rest in loaders]
            for p in procs:
                p.start()
            probed = np.array(q_probe.get())
            loads = [q_load.get() for _ in loaders]
            for p in procs:
                p.join()
            return probed, loads

        idle, _ = run([], ("GET", "/ping", b""))
        print(f"| /ping, idle | {pct(idle)} |")
        for n in (100, 1000):
            traces = llm_traces(n, seed=11)
            for t in traces:
                del t["runtime_ms"]
            body = orjson.dumps({"trace": traces})
            ping, loads = run([(_loop_requests, ("POST", f"/predict/batch/{SEG}", body), (0.0, 1))],
                              ("GET", "/ping", b""))
            print(f"| /ping while one client posts batches of {n} traces back to back | {pct(ping)} | "
                  f"each batch {pct(np.array(loads[0]))} |")
        traces = llm_traces(5000, seed=12)
        for t in traces:
            del t["runtime_ms"]
        body = orjson.dumps({"trace": traces})
        clients = 24 if args.quick else 60
        health, loads = run([(_load_threads, (f"/predict/batch/{SEG}", body), (clients, 1))], ("GET", "/health", b""))
        print(f"| /health while {clients} clients post batches of 5,000 traces back to back | {pct(health)}, "
              f"worst {health.max() * 1e3:.0f} ms | {loads[0]} batches in {secs} s |")
    finally:
        srv.stop()


def section_versus(args, data_dir: Path) -> None:
    """Batches of 1 to 100,000 traces end to end, against a server running the code at
    ``--baseline`` (a checkout's ``src``, put first on its PYTHONPATH) and this code's,
    one server at a time, alternately: the machine's drifts hit both alike."""
    bodies = {n: orjson.dumps({"trace": [{k: v for k, v in t.items() if k != "runtime_ms"}
                                         for t in llm_traces(n, seed=8)]})
              for n in (1, 1000, 10_000, 100_000)}
    runs = {1: 400, 1000: 100, 10_000: 20, 100_000: 5}
    got: dict[tuple[str, int], list[float]] = {}
    pin(1)
    for _ in range(2):
        for name, env in (("baseline", {"PYTHONPATH": str(Path(args.baseline).resolve())}), ("this code", {})):
            srv = Server(data_dir, env={"PREDICTOR_CACHE_SIZE": "0", **env})
            try:
                c = RawClient(srv.port)
                for n, body in bodies.items():
                    t = timed(c, "POST", f"/predict/batch/{SEG}", body, runs[n], warmup=2 if n > 1000 else 20)
                    got.setdefault((name, n), []).append(np.percentile(t, 50) * 1e3)
                c.close()
            finally:
                srv.stop()
    for n in bodies:
        said = "; ".join(f"{name} {', '.join(f'{v:.2f}' for v in got[(name, n)])} ms" for name in ("baseline", "this code"))
        print(f"| batch of {n:,} traces, end to end, p50 of each round | {said} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--algorithm", default="auto")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-registry", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated sections: http,loop,batch,client,cache,coalesce,isolation,training,registry,metrics,preload,accesslog,atoms,observe,boosted,momenttable,elapsed,queues,firstobserve,store,windows,requestids,deadline,deadlinemany")
    ap.add_argument("--baseline", help="the src folder of another checkout: batches against its code and this (section versus)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))

    def want(name: str, skip: bool = False) -> bool:
        return name in only if only else not skip
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        res = train_model(data_dir, 2000, args.algorithm)
        print(f"model: 2,000 synthetic LLM traces, algorithm {args.algorithm} -> {res['metrics']['algorithm']}\n")
        print("| measurement | result | |\n|---|---|---|")
        if args.baseline:
            section_versus(args, data_dir)
        if want("http"):
            section_http(args, data_dir)
        if want("loop"):
            section_loop(args, data_dir)
        if want("batch"):
            section_batch_breakdown(data_dir)
        if want("cache"):
            section_cache(data_dir)
        if want("client"):
            section_client(data_dir)
        if want("coalesce"):
            section_coalesce(data_dir)
        if want("isolation", args.skip_training):
            section_training_isolation(args, data_dir)
        if want("training", args.skip_training):
            section_training_speed(args)
        if want("registry", args.skip_registry):
            section_registry(Path(tmp))
        if want("metrics"):
            section_metrics(Path(tmp))
        if want("preload"):
            section_preload(Path(tmp))
        if want("accesslog"):
            section_accesslog(data_dir)
        if want("atoms"):
            section_atoms(data_dir)
        if want("boosted"):
            section_boosted()
        if want("momenttable"):
            section_moment_table()
        if want("observe"):
            section_observe(data_dir)
        if want("elapsed"):
            section_elapsed(data_dir)
        if want("windows"):
            section_windows()
        if want("requestids"):
            section_request_ids()
        if want("store"):
            section_store(data_dir)
        if want("firstobserve"):
            section_first_observe(data_dir)
        if want("deadline"):
            section_deadline(data_dir)
        if want("deadlinemany"):
            section_deadline_many(data_dir)
        if want("queues"):
            section_queues(data_dir)
            section_queues_in_process(data_dir)
    print(f"\n(maxrss of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
