"""Background training jobs, the prediction cache and several workers, over real HTTP."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson

from swarmpilot_predictor.client import PredictorClient, identity_segments
from swarmpilot_predictor.identity import ModelIdentity

from .conftest import IDENTITY, make_llm_traces, metric_value, run_server

SEG = "/".join(httpx.URL("http://x/" + "/".join(v.replace("/", "%2F") for v in IDENTITY.values())).raw_path.decode().split("/")[1:])


def test_background_training_returns_202_and_a_job_to_poll(tmp_path):
    with run_server(tmp_path / "data") as srv, httpx.Client(base_url=srv.url) as http:
        r = http.post("/train?background=true", json={"config": {"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"}})
        assert r.status_code == 202
        job = r.json()
        assert job["status"] == "accepted" and job["status_url"] == f"/train/jobs/{job['job_id']}"
        deadline = time.monotonic() + 60
        while (state := http.get(job["status_url"]).json())["status"] != "succeeded":
            assert state["status"] in ("queued", "running"), state
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert state["result"]["version"] == 1 and state["model_key"] == ModelIdentity.from_parts(IDENTITY).key
        # While it trained, and after, predictions answer.
        p = http.post(f"/predict/single/{SEG}", json={"trace": {"input_tokens": 10, "output_tokens": 20}})
        assert p.status_code == 200
        bad = http.post("/train?background=true", json={"config": {"model": IDENTITY, "traces": "../etc/passwd"}})
        assert bad.status_code == 202
        while (state := http.get(bad.json()["status_url"]).json())["status"] not in ("failed", "succeeded"):
            time.sleep(0.1)
        assert state["status"] == "failed" and state["error"]["status_code"] == 422
        unknown = http.get("/train/jobs/unknown")
        assert unknown.status_code == 404 and unknown.json()["field"] == "job_id"
        long_id = http.get("/train/jobs/" + "x" * 5000)  # the message quotes it cut short
        assert long_id.status_code == 404 and len(long_id.json()["message"]) < 200


def test_cache_hits_misses_clear_and_invalidation_on_a_new_version(tmp_path):
    trace = {"input_tokens": 100, "output_tokens": 50}
    with run_server(tmp_path / "data") as srv, PredictorClient(srv.url) as client, httpx.Client(base_url=srv.url) as http:
        client.train({"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"})
        first = client.predict_single(IDENTITY, trace)
        second = client.predict_single(IDENTITY, trace)
        assert first.results.quantile_predictions == second.results.quantile_predictions
        stats = http.get("/cache/stats").json()
        assert stats["hits"] == 1 and stats["misses"] == 1 and stats["entries"] == 1
        # Another level set or confidence is another entry.
        client.predict_single(IDENTITY, trace, quantiles=[0.9])
        assert http.get("/cache/stats").json()["misses"] == 2
        narrow = client.predict_single(IDENTITY, trace, confidence_level=0.5).results.interval
        wide = client.predict_single(IDENTITY, trace, confidence_level=0.99).results.interval
        assert http.get("/cache/stats").json()["misses"] == 4
        assert wide[0] < narrow[0] < narrow[1] < wide[1]
        # Levels asked in any order are answered in increasing order.
        raw = http.post(f"/predict/single/{'/'.join(identity_segments(IDENTITY))}",
                        json={"trace": trace, "quantiles": [0.9, 0.1, 0.5, 0.5]}).json()["results"]
        assert raw["quantiles"] == [0.1, 0.5, 0.5, 0.9]
        q10, q50, q50_again, q90 = raw["quantile_predictions"]
        assert q10 < q50 == q50_again < q90
        # A new version drops the model's entries: the answer comes from v2.
        client.train({"model": IDENTITY, "traces": [{**t, "runtime_ms": t["runtime_ms"] * 3} for t in make_llm_traces(200)], "algorithm": "linear"})
        third = client.predict_single(IDENTITY, trace)
        assert third.results.model_version == 2
        assert third.results.quantile_predictions[1] > 2 * first.results.quantile_predictions[1]
        # (The version in the key alone would answer v2 too, keeping v1's five entries.)
        assert http.get("/cache/stats").json()["entries"] == 1
        assert http.post("/cache/clear").json()["cleared"] == 1
        assert http.get("/cache/stats").json()["entries"] == 0
        # A delete drops the model's entries too.
        client.predict_single(IDENTITY, trace)
        assert http.get("/cache/stats").json()["entries"] == 1
        client.delete_model(IDENTITY)
        assert http.get("/cache/stats").json()["entries"] == 0
        metrics = client.metrics()
        assert "predictor_cache_hits_total 1.0" in metrics


def test_two_workers_share_the_data_directory(tmp_path):
    args = [sys.executable, "-m", "swarmpilot_predictor", "serve", "--host", "127.0.0.1", "--port", "{port}",
            "--workers", "2", "--log-level", "warning"]
    with run_server(tmp_path / "data", args=args) as srv:
        with PredictorClient(srv.url) as client:
            client.train({"model": IDENTITY, "traces": make_llm_traces(150), "algorithm": "linear"})
            # New connections land on either worker; every one must know the new model.
            for _ in range(12):
                with PredictorClient(srv.url) as fresh:
                    r = fresh.predict_single(IDENTITY, {"input_tokens": 5, "output_tokens": 5})
                    assert r.results.status == "success" and r.results.model_version == 1
            client.train({"model": IDENTITY, "traces": make_llm_traces(150, seed=2), "algorithm": "linear"})
            versions = set()
            for _ in range(12):
                with PredictorClient(srv.url) as fresh:
                    versions.add(fresh.predict_single(IDENTITY, {"input_tokens": 5, "output_tokens": 5}).results.model_version)
            assert versions == {2}
            # Whichever worker takes a scrape, it counts every worker's predictions.
            key = ModelIdentity.from_parts(IDENTITY).key
            # The workers' metric files: in one folder of this run's, in memory where there is
            # /dev/shm (mmap'd files on a full data disk killed the workers), else in the data dir.
            from swarmpilot_predictor.cli import MEMORY_METRICS_ROOT

            shm = MEMORY_METRICS_ROOT / f"swarmpilot-predictor-metrics-{os.getuid()}"
            if shm.is_dir():
                ours = list(shm.glob(f"*-{srv.process.pid}-*"))
                assert not (tmp_path / "data" / ".metrics").exists()
            else:
                ours = list((tmp_path / "data" / ".metrics").iterdir())
            assert len(ours) == 1 and any(f.suffix == ".db" for f in ours[0].iterdir())
            for _ in range(8):
                with PredictorClient(srv.url) as fresh:
                    assert metric_value(fresh.metrics(), "predictor_predictions_total", model=key, source="model") == 24.0
                    # And so does /models (the seed's total_predictions).
                    entry = next(m for m in fresh.list_models_raw() if m["model_type"] == IDENTITY["model_type"])
                    assert entry["total_predictions"] == 24
                    assert fresh.get_model(IDENTITY)["total_predictions"] == 24
            # A background job's record, and /health, are the same from either worker.
            job = client.train_background({"model": {**IDENTITY, "hardware": "A100"}, "traces": make_llm_traces(80),
                                           "algorithm": "linear"})
            assert client.wait_for_job(job["job_id"], timeout=120).version == 1
            for _ in range(8):
                with PredictorClient(srv.url) as fresh:
                    assert fresh.train_job(job["job_id"])["status"] == "succeeded"
                    assert fresh.health().models_registered == 2
        # The supervisor killed outright: its workers stop too, and leave the port free.
        import signal
        import socket

        srv.process.send_signal(signal.SIGKILL)
        port = int(srv.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the workers outlived their supervisor"
            time.sleep(0.2)


def test_concurrent_single_predictions_are_batched_but_answered_as_if_alone(tmp_path):
    import asyncio

    from swarmpilot_predictor.client import AsyncPredictorClient, PredictorClientError

    traces = [{"input_tokens": 50 * i + 7, "output_tokens": 3 * i + 1} for i in range(24)]
    levels = [None, [0.1, 0.9]]
    with run_server(tmp_path / "data", extra_env={"PREDICTOR_CACHE_SIZE": "0"}) as srv:
        with PredictorClient(srv.url) as client:
            client.train({"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"})
            alone = [client.predict_single(IDENTITY, t, quantiles=levels[i % 2]).results for i, t in enumerate(traces)]

        async def together():
            async with AsyncPredictorClient(srv.url) as ac:
                calls = [ac.predict_single(IDENTITY, t, quantiles=levels[i % 2]) for i, t in enumerate(traces)]
                calls.append(ac.predict_single(IDENTITY, {"input_tokens": 5}))  # fails alone, in the same turn
                return await asyncio.gather(*calls, return_exceptions=True)

        answers = asyncio.run(together())
    import pytest

    for one, many in zip(alone, answers[:-1]):
        assert many.results.quantiles == one.quantiles
        # Same numbers up to rounding: summation order, and a one-row batch takes the
        # exact moment formula where a batch interpolates a table (1e-7 apart).
        assert many.results.quantile_predictions == pytest.approx(one.quantile_predictions, rel=1e-6)
        assert many.results.expect == pytest.approx(one.expect, rel=1e-6)
        assert many.results.interval == pytest.approx(one.interval, rel=1e-6)
    assert isinstance(answers[-1], PredictorClientError) and answers[-1].status_code == 422
    assert "output_tokens" in answers[-1].message


def test_a_batch_of_over_a_megabyte_is_answered_as_a_small_one(tmp_path):
    # Parsed, predicted and written off the event loop, a few at a time: the same answer.
    from concurrent.futures import ThreadPoolExecutor

    from urllib.parse import quote

    path = "/".join(quote(part, safe="") for part in IDENTITY.values())
    with run_server(tmp_path / "data") as srv, PredictorClient(srv.url) as client:
        client.train({"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"})
        traces = [{"input_tokens": 10 + i % 500, "output_tokens": 5 + i % 300} for i in range(30_000)]
        small = httpx.post(f"{srv.url}/predict/batch/{path}", json={"trace": traces[:5]}, timeout=60).json()

        def big(_):
            r = httpx.post(f"{srv.url}/predict/batch/{path}", json={"trace": traces}, timeout=120)
            assert r.status_code == 200 and len(r.request.content) > 1 << 20
            return r.json()

        with ThreadPoolExecutor(3) as pool:  # more than run at once: one waits its turn
            answers = list(pool.map(big, range(3)))
        for body in answers:
            assert body["summary"]["success"] == 30_000 and len(body["results"]) == 30_000
            assert body["results"][:5] == small["results"]
            assert body["expect"] == answers[0]["expect"] > 0
        assert httpx.get(f"{srv.url}/ping").status_code == 200


@contextmanager
def _one_batch_thread(tmp_path) -> Iterator[tuple[Any, PredictorClient, str, bytes]]:
    """A server with one batch thread and no cache, a trained model, its batch URL and the
    body of a batch of 100,000 traces (long enough to hold that thread a while)."""
    from urllib.parse import quote

    with run_server(tmp_path / "data", {"PREDICTOR_BATCH_THREADS": "1", "PREDICTOR_CACHE_SIZE": "0"}) as srv, \
            PredictorClient(srv.url) as client:
        client.train({"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"})
        url = f"{srv.url}/predict/batch/" + "/".join(quote(part, safe="") for part in IDENTITY.values())
        body = orjson.dumps({"trace": [{"input_tokens": 10 + i % 500, "output_tokens": 5 + i % 300}
                                       for i in range(100_000)]})
        yield srv, client, url, body


def _predicted(client: PredictorClient) -> float:
    try:
        return metric_value(client.metrics(), "predictor_predictions_total",
                            model=ModelIdentity.from_parts(IDENTITY).key, source="model")
    except KeyError:  # none predicted
        return 0.0


def test_a_batch_whose_client_left_while_it_waited_its_turn_is_not_predicted(tmp_path):
    # A scheduler's own timeout: eight abandoned 100,000-trace batches were all predicted,
    # and the one still waiting took 14 s instead of 3.
    import threading

    with _one_batch_thread(tmp_path) as (srv, client, url, body):
        running = [threading.Thread(target=lambda: httpx.post(url, content=body, timeout=120)) for _ in range(3)]
        for thread in running:
            thread.start()
        time.sleep(0.3)  # one holds the one batch thread now, and the others wait (about 2 s in all)
        traces = orjson.loads(body)["trace"]
        for n in (500, 5_000):  # waiting their turn behind them, then abandoned
            try:
                httpx.post(url, json={"trace": traces[:n]}, timeout=0.2)
            except httpx.TimeoutException:
                pass
            else:
                raise AssertionError("answered before the long batches ended: nothing was waiting")
        for thread in running:
            thread.join()
        time.sleep(0.5)
        assert _predicted(client) == 300_000
        # The thread is free again, and a batch whose client stays is answered.
        assert len(client.predict_batch(IDENTITY, traces[:50]).results) == 50


def test_large_batches_whose_clients_left_while_they_waited_are_not_predicted(tmp_path):
    # Over a megabyte, a batch waits for one of two places before its turn for a thread: it
    # was not watched there, and eight abandoned ones of 100,000 traces were all predicted.
    # (One batch thread: the second batch to hold a place waits for the first to end, which
    # takes longer than its client waits on any machine.)
    import threading

    with _one_batch_thread(tmp_path) as (srv, client, url, body):
        def abandon() -> None:
            try:
                httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=0.5)
            except httpx.TimeoutException:
                pass

        clients = [threading.Thread(target=abandon) for _ in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        predicted = -1.0
        while (now := _predicted(client)) != predicted:  # until the server is idle again
            predicted = now
            time.sleep(1.5)
        assert predicted <= 200_000  # the one that started at once, and one more at most


# The service's observe and evaluate, wrapped to count how many of those of over 1,000 traces
# run at once (written to a file of the data directory at each change) and to take half a second each.
_COUNTING_SERVER = """
import pathlib, sys, threading, time, uvicorn
from swarmpilot_predictor.api import app_from_env
app = app_from_env()
service = app.state.service
lock, running, most = threading.Lock(), [0], [0]
out = pathlib.Path(service.settings.data_dir) / "most_at_once"

def counted(work):
    def run(model, traces, *args):
        if len(traces) <= 1000:
            return work(model, traces, *args)
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            out.write_text(str(most[0]))
        try:
            time.sleep(0.5)
            return work(model, traces, *args)
        finally:
            with lock:
                running[0] -= 1
    return run

service.observe = counted(service.observe)
service.evaluate = counted(service.evaluate)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def test_large_observations_and_evaluations_take_turns_with_large_batches(tmp_path):
    # Each holds its traces and their distributions in memory while it is worked on (100,000
    # observed traces peaked 490 MB): any number at once, they made the server's memory grow
    # with them, where large batches wait for one of two turns.
    import threading

    data = tmp_path / "data"
    with run_server(data, args=[sys.executable, "-c", _COUNTING_SERVER, "{port}"]) as srv:
        with PredictorClient(srv.url, timeout=120) as client:
            client.train({"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"})
            measured = make_llm_traces(20_000, seed=7)  # a body of about 1.5 MB each
            assert len(orjson.dumps({"traces": measured})) > 1 << 20
            calls = [lambda: client.observe(IDENTITY, measured) for _ in range(3)]
            calls += [lambda: client.evaluate(IDENTITY, measured) for _ in range(3)]
            answers: list[Any] = []
            threads = [threading.Thread(target=lambda call=call: answers.append((call(), time.monotonic())))
                       for call in calls]
            for thread in threads:
                thread.start()
            time.sleep(0.2)
            small = client.observe(IDENTITY, measured[:10])  # under a megabyte: no turn to wait for
            small_done = time.monotonic()
            for thread in threads:
                thread.join()
        assert small["accepted"] == 10 and len(answers) == 6
        assert sorted(a["accepted"] if isinstance(a, dict) else a.evaluated for a, _ in answers) == [20_000] * 6
        assert (data / "most_at_once").read_text() == "2"  # two large ones at a time
        assert small_done < max(done for _, done in answers)  # not queued behind them


# The service's evaluate and observe, each large one (over 1,000 traces) taking two seconds
# and counted, in a file of the data directory, once it is worked on.
_SLOW_LARGE_SERVER = """
import pathlib, sys, threading, time, uvicorn
from swarmpilot_predictor.api import app_from_env
app = app_from_env()
service = app.state.service
lock = threading.Lock()
out = pathlib.Path(service.settings.data_dir)

def slowed(work, name):
    def run(model, traces, *args):
        if len(traces) > 1000:
            with lock:
                path = out / name
                path.write_text(str(int(path.read_text() if path.exists() else 0) + 1))
            time.sleep(2.0)
        return work(model, traces, *args)
    return run

service.evaluate = slowed(service.evaluate, "evaluated")
service.observe = slowed(service.observe, "observed")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _sent_whole_then_left(url: str, path: str, body: bytes) -> None:
    """POST ``body`` to ``path`` whole, then leave without the answer (a client's own timeout)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.3)
        sock.settimeout(0)
        try:
            assert not sock.recv(1), "answered while both turns were held"
        except BlockingIOError:
            pass  # no answer yet: it waits for its turn


def test_a_large_evaluation_whose_client_left_while_it_waited_its_turn_is_not_worked(tmp_path):
    # An evaluation records nothing, and the clients send it again where no answer came (it is
    # idempotent): abandoned while they waited for one of the two turns, each was worked on
    # anyway, holding a turn that large batches wait for. An observation is recorded though
    # its client left: it changes state, and its client's error says it may have been.
    import threading

    data = tmp_path / "data"
    with run_server(data, args=[sys.executable, "-c", _SLOW_LARGE_SERVER, "{port}"]) as srv:
        with PredictorClient(srv.url, timeout=120) as client:
            client.train({"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"})
        measured = make_llm_traces(20_000, seed=7)
        evaluate = orjson.dumps({"traces": measured})
        assert len(evaluate) > 1 << 20
        path = f"/models/{SEG}/evaluate"
        holding = [threading.Thread(target=lambda: httpx.post(srv.url + path, content=evaluate, timeout=120,
                                                              headers={"content-type": "application/json"}))
                   for _ in range(2)]
        for thread in holding:
            thread.start()
        deadline = time.monotonic() + 30
        while not (data / "evaluated").exists() or (data / "evaluated").read_text() != "2":
            assert time.monotonic() < deadline  # both turns held, for two seconds
            time.sleep(0.02)
        _sent_whole_then_left(srv.url, path, evaluate)
        _sent_whole_then_left(srv.url, path, evaluate)
        _sent_whole_then_left(srv.url, "/observe", orjson.dumps({"model": IDENTITY, "traces": measured}))
        for thread in holding:
            thread.join()
        with PredictorClient(srv.url, timeout=120) as client:
            while client.accuracy(IDENTITY)["observations"] != 20_000:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert (data / "evaluated").read_text() == "2"  # the two whose clients stayed
        assert (data / "observed").read_text() == "1"
