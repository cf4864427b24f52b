"""What writing the log lines as JSON (PREDICTOR_LOG_FORMAT=json) costs against text.

In-process: formatting one uvicorn access record, with its request id, by each format's
formatter. Over HTTP: a cached single prediction's latency with the access log on, the
server (`swarmpilot-predictor serve`, on core 0, its log to /dev/null) in one format and then
the other, twice, alternately, so that the machine's drifts hit both alike.

    uv run python benchmarks/log_format.py
"""

from __future__ import annotations

import logging
import logging.config
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import SEG, RawClient, Server, llm_traces, pct, timed, train_model  # noqa: E402

from swarmpilot_predictor.logs import uvicorn_log_config  # noqa: E402
from swarmpilot_predictor.request_ids import RequestIdFilter, current  # noqa: E402


def access_formatter(log_format: str) -> logging.Formatter:
    """The formatter of the access lines that `serve` writes in ``log_format``."""
    spec = dict(uvicorn_log_config(log_format)["formatters"]["access"])
    factory = spec.pop("()")
    return (logging.config.BaseConfigurator({}).resolve(factory) if isinstance(factory, str) else factory)(**spec)


def format_cost() -> None:
    record_args = ("127.0.0.1:45508", "POST", f"/predict/single/{SEG}", "1.1", 200)
    formatters = {fmt: access_formatter(fmt) for fmt in ("text", "json")}
    token = current.set("sched-42")
    try:
        for name, formatter in formatters.items():
            took = []
            for _ in range(20):
                record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                           record_args, None)
                t0 = time.perf_counter()
                for _ in range(1000):
                    RequestIdFilter().filter(record)
                    formatter.format(record)
                took.append((time.perf_counter() - t0) / 1000)
            print(f"| formatting an access record, {name} | median {np.median(took) * 1e6:.2f} µs |")
    finally:
        current.reset(token)


def http_cost(data_dir: Path) -> None:
    trace = {k: v for k, v in llm_traces(1, seed=3)[0].items() if k != "runtime_ms"}
    body = orjson.dumps({"trace": trace})
    got: dict[str, list[np.ndarray]] = {"text": [], "json": []}
    for _ in range(2):
        for fmt in ("text", "json"):
            srv = Server(data_dir, command=["swarmpilot_predictor", "serve", "--host", "127.0.0.1", "--port", "{port}",
                                            "--access-log", "--log-format", fmt],
                         output=subprocess.DEVNULL)
            try:
                c = RawClient(srv.port)
                got[fmt].append(timed(c, "POST", f"/predict/single/{SEG}", body, 3000, warmup=500))
                c.close()
            finally:
                srv.stop()
    for fmt, runs in got.items():
        print(f"| HTTP single prediction (a cache hit), access log as {fmt} | "
              + "; ".join(pct(r) for r in runs) + " |")


def main() -> None:
    print("| measurement | result |\n|---|---|")
    format_cost()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        train_model(data_dir, 2000, "linear")
        http_cost(data_dir)


if __name__ == "__main__":
    main()
