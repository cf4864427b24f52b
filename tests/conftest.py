"""Shared fixtures: synthetic traces and a real uvicorn server on a free port."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
IDENTITY = {
    "model_type": "llm",
    "model_name": "Qwen/Qwen2.5-7B",
    "hardware": "NVIDIA H100 80GB HBM3",
    "software_name": "sglang",
    "software_version": "0.4.0",
}


def make_llm_traces(n: int = 400, seed: int = 0) -> list[dict]:
    """LLM-like traces: runtime grows with output tokens, multiplicative noise."""
    rng = np.random.default_rng(seed)
    inp = rng.integers(16, 2048, n)
    out = rng.integers(8, 512, n)
    noise = rng.lognormal(0.0, 0.15, n)
    runtime = (20 + 0.02 * inp + 12.0 * out) * noise
    return [
        {"input_tokens": int(i), "output_tokens": int(o), "runtime_ms": float(r), "task_id": f"t{k}"}
        for k, (i, o, r) in enumerate(zip(inp, out, runtime))
    ]


def cold_start_traces(n: int = 400, seed: int = 0) -> tuple[list[dict], list[bool]]:
    """A vision-like trace in time order, where the first task of each (batch, image) shape
    is ten times slower than its repeats; returns the traces and which ones were first."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, int]] = set()
    traces, firsts = [], []
    for i in range(n):
        batch, image = int(rng.choice([1, 2, 4, 8, 16])), int(rng.choice([224, 320, 448, 512]))
        first = (batch, image) not in seen
        seen.add((batch, image))
        traces.append({"batch_size": batch, "image_size": image, "load": float(rng.uniform()), "ts": 1_000.0 + 0.5 * i,
                       "runtime_ms": 0.01 * batch * image * (10.0 if first else 1.0) * float(rng.lognormal(0, 0.05))})
        firsts.append(first)
    return traces, firsts


def autotuned_traces(n_shapes: int, n: int, seed: int) -> tuple[list[dict], list[bool]]:
    """A vision-like trace in time order, ``n`` runs of ``n_shapes`` (batch, image) shapes,
    where a shape's first run is autotuned: 700 to 1,200 ms whatever the shape, as on the
    H200 (examples/data), and here also as fast as a repeat one time in three; repeats take
    0.003 ms per batch x pixel row, lognormal noise of 5%. Returns the traces and which
    ones were first."""
    rng = np.random.default_rng(seed)
    grid = np.array([(b, i) for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) for i in range(128, 577, 8)])
    batch, image = grid[rng.choice(len(grid), n_shapes, replace=False)].T
    seen: set[int] = set()
    traces, firsts = [], []
    for i, k in enumerate(rng.integers(0, n_shapes, n).tolist()):
        first = k not in seen
        seen.add(k)
        typical = 0.003 * int(batch[k]) * int(image[k]) * float(rng.lognormal(0, 0.05))
        slow = first and rng.random() < 2 / 3
        traces.append({"batch_size": int(batch[k]), "image_size": int(image[k]), "ts": 1_000.0 + 0.5 * i,
                       "runtime_ms": float(rng.uniform(700, 1200)) if slow else typical})
        firsts.append(first)
    return traces, firsts


@pytest.fixture
def llm_traces() -> list[dict]:
    return make_llm_traces()


def clock_checking_at(runtimes, index: int, after: float | None = None):
    """A fixed clock (for ``AccuracyMonitor.clock``) under which observation ``index`` of one
    ``/observe`` batch with these runtimes is a drift checkpoint: which observations are
    checkpoints depends on their time, so a test that needs a tested window at a given
    count must not leave it to the wall clock. The time is after ``after`` (default: now),
    so that the observations are newer than any model trained before."""
    from swarmpilot_predictor.monitoring import drift_checkpoints

    y = np.asarray(runtimes, dtype=np.float64)
    start = int(time.time() if after is None else after) + 1
    now = next(float(t) for t in range(start, start + 10_000)
               if drift_checkpoints(y, np.full(len(y), float(t)), np.arange(len(y)))[index])
    return lambda: now


@contextmanager
def reserved_port() -> Iterator[int]:
    """A free port, held until the block ends: bound, not listening, with ``SO_REUSEADDR``.

    A server started in the block listens on it (uvicorn sets ``SO_REUSEADDR`` too),
    while no other test running in parallel is given it: with a port found free and
    released, two could be, and one's health check could reach the other's server.
    Where nothing is started, nothing answers on it (a connection is refused).
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def port() -> Iterator[int]:
    """A port held for the test (:func:`reserved_port`)."""
    with reserved_port() as held:
        yield held


def file_size_limit(limit: int):
    """A ``preexec_fn`` under which no file grows past ``limit`` bytes: a full disk, without root.

    A write across the limit fails with EFBIG (``SIGXFSZ`` ignored), as one
    fails with ENOSPC on a full file system; the child's children inherit it.
    """

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


def run_with_file_size_limit(code: str, limit: int) -> dict:
    """Run ``code`` in a fresh interpreter under :func:`file_size_limit`; it prints one JSON line."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         preexec_fn=file_size_limit(limit))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    process: subprocess.Popen


def broken_server(log_level: str = "warning", quiet: bool = False, log_config: bool = False,
                  method: str = "cache_stats", log_format: str = "text") -> list[str]:
    """``run_server``'s args for the service with a bug on one route (the service's ``method``
    raises KeyError: ``GET /cache/stats`` a 500), under uvicorn at ``log_level``; ``quiet``: no log at all (each
    500's traceback would fill the test's unread pipe); ``log_config``: the entry points'
    logging (``logs.uvicorn_log_config``) in ``log_format`` (the service's own lines are in
    ``PREDICTOR_LOG_FORMAT``'s)."""
    script = "\n".join([
        "import logging, sys, uvicorn",
        "from swarmpilot_predictor.api import app_from_env",
        "from swarmpilot_predictor.logs import uvicorn_log_config",
        "app = app_from_env()",
        "logging.disable(logging.CRITICAL)" if quiet else "",
        "def broken(*args, **kwargs):",
        "    raise KeyError('models')",
        f"app.state.service.{method} = broken",
        f"uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level={log_level!r}"
        + (f", log_config=uvicorn_log_config({log_format!r}))" if log_config else ")"),
    ])
    return [sys.executable, "-c", script, "{port}"]


@contextmanager
def run_server(data_dir: Path, extra_env: dict[str, str] | None = None, args: list[str] | None = None,
               preexec_fn=None, port: int | None = None) -> Iterator[LiveServer]:
    """Start ``uvicorn`` with the app factory on a free port (or ``port``, one the test holds:
    a server restarted where its clients look); stop it on exit."""
    with ExitStack() as stack:
        port = port or stack.enter_context(reserved_port())
        env = {**os.environ, "PREDICTOR_DATA_DIR": str(data_dir), **(extra_env or {})}
        cmd = args or [sys.executable, "-m", "uvicorn", "swarmpilot_predictor.api:app_from_env", "--factory",
                       "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        cmd = [c.replace("{port}", str(port)) for c in cmd]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=preexec_fn)
        stack.callback(_stop, proc)
        url = f"http://127.0.0.1:{port}"
        # A start takes 2 to 4 s; beside other work on a 2-core machine, up to ten times that.
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 60 s")
            time.sleep(0.1)
        yield LiveServer(url, data_dir, proc)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# The seed example's model: its client names models by type, with the hardware in the metadata.
SEED_IDENTITY = {"model_type": "gpt-3.5-turbo", "model_name": "turbo", "hardware": "A100",
                 "software_name": "vllm", "software_version": "0.1.0"}


@contextmanager
def serve_trained(data_dir: Path, models: list[tuple[dict[str, str], int]]) -> Iterator[LiveServer]:
    """A real server with a linear model trained on 300 LLM traces (of ``seed``) per ``(identity, seed)``."""
    from swarmpilot_predictor.client import PredictorClient

    with run_server(data_dir) as srv:
        with PredictorClient(srv.url) as client:
            for identity, seed in models:
                client.train({"model": identity, "traces": make_llm_traces(300, seed=seed), "algorithm": "linear"})
        yield srv


def train_beside_an_unwritable_change_log(data: Path, request_id: str, **server) -> tuple[httpx.Response, str, Path]:
    """A training (``POST /train`` with ``request_id``) on a server of ``data`` (``server``:
    run_server's options) whose registry's change log cannot be written, so that the training
    worker storing the version logs a warning: the answer, the server's log and the log's path."""
    changes = data / "models" / ".changes"
    with run_server(data, **server) as srv:
        changes.mkdir()  # the worker storing the version cannot write it
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            answer = http.post("/train", json={"config": {"model": IDENTITY, "traces": make_llm_traces(60),
                                                          "algorithm": "linear"}}, headers={"x-request-id": request_id})
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    return answer, log, changes


def trained_in_process(data_dir: Path, *configs: dict) -> Path:
    """``data_dir`` with a model trained on each training config, here, as another process
    of the service would before a server starts on it: for tests of what follows a
    training, the server's training worker (a second to start) is no part of what they test."""
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    service = PredictorService(PredictorSettings(data_dir=data_dir))
    try:
        for config in configs:
            service.train(TrainConfig.model_validate(config))
    finally:
        service.close()
    return data_dir


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with run_server(tmp_path / "data") as srv:
        yield srv


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name} {labels} not in metrics")


def post_across_sigterm(server: LiveServer, target: str, body: bytes) -> tuple[bytes, bytes]:
    """POST ``body`` to ``target`` as an upload the server holds when told to stop: the head and
    100 bytes, then SIGTERM, the rest once the server listens no more. (Its handler has run by
    then; the server reads its connections in the order they came, and answered one after it.)
    Returns the answer's head and payload."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
        assert httpx.get(server.url + "/health", timeout=30).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the server still listens after SIGTERM"
            time.sleep(0.02)
        sock.sendall(body[100:])
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return head, payload


def refuse_unlink(monkeypatch, refused: Callable[[Path], bool]) -> None:
    """Make ``Path.unlink`` fail as a read-only file system does (which a test cannot mount)
    for the paths ``refused`` picks; the others are unlinked as usual."""
    import errno

    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if refused(self):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)


@dataclass
class Fsync:
    """One ``os.fsync`` call: what it synced, and, for a folder, the names in it then."""

    path: Path
    names: frozenset[str] | None  # None: a file


def record_fsyncs(monkeypatch) -> list[Fsync]:
    """The ``os.fsync`` calls made from now on in this process, in order (each still syncs):
    what a power loss would keep cannot be observed by a test, only what was asked for."""
    import stat

    calls: list[Fsync] = []
    real_fsync = os.fsync

    def fsync(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        names = frozenset(os.listdir(path)) if stat.S_ISDIR(os.fstat(fd).st_mode) else None
        calls.append(Fsync(path, names))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def wait_until_dead(pid: int) -> None:
    """Return once process ``pid`` has ended (a zombie, or reaped), not once its parent knows."""
    while True:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except OSError:  # reaped: gone
            return
