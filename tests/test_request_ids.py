"""Request ids: each answer's X-Request-ID, and the service's log lines that name it."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from swarmpilot_predictor.client import PredictorClient, PredictorClientError
from swarmpilot_predictor.request_ids import MAX_LENGTH, RequestIdFilter, current, request_id_of
from swarmpilot_predictor.workers import START_ALLOWANCE_S

from .conftest import IDENTITY, broken_server, make_llm_traces, run_server, train_beside_an_unwritable_change_log

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("given", ["sched-42", "a" * MAX_LENGTH, "00-4bf92f3577b34da6-00f067aa0ba902b7-01", "x/y:z=1"])
def test_a_callers_id_of_printable_ascii_is_kept(given):
    assert request_id_of([(b"host", b"x"), (b"x-request-id", given.encode())]) == given


@pytest.mark.parametrize("given", [b"", b"two words", b"a" * (MAX_LENGTH + 1), "caf\u00e9".encode(), b"line\nbreak",
                                   b"tab\there"])
def test_an_id_of_another_form_is_replaced_by_a_new_one(given):
    made = request_id_of([(b"x-request-id", given)])
    assert GENERATED.fullmatch(made)


def test_a_request_without_an_id_gets_a_new_one_each_time():
    ids = {request_id_of([(b"host", b"x")]) for _ in range(100)}
    assert len(ids) == 100 and all(GENERATED.fullmatch(i) for i in ids)


def test_the_filter_names_the_request_being_worked_on_and_nothing_outside_one():
    record = logging.LogRecord("swarmpilot_predictor.api", logging.ERROR, __file__, 1, "boom", (), None)
    RequestIdFilter().filter(record)
    assert (record.request_id, record.request_tag) == ("-", "")
    token = current.set("sched-42")
    try:
        RequestIdFilter().filter(record)
    finally:
        current.reset(token)
    assert (record.request_id, record.request_tag) == ("sched-42", " (request sched-42)")


def test_every_answer_carries_its_request_id(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        made = [http.get("/ping").headers["x-request-id"] for _ in range(3)]
        assert len(set(made)) == 3 and all(GENERATED.fullmatch(i) for i in made)
        assert http.get("/ping", headers={"X-Request-ID": "sched-42"}).headers["x-request-id"] == "sched-42"
        assert GENERATED.fullmatch(http.get("/ping", headers={"X-Request-ID": "two words"}).headers["x-request-id"])
        # Errors too: a 404 from a route, a 404 from the router, a 422 from a lean prediction route.
        for method, path, body in (("GET", "/models/a/b/c/d/e", None), ("GET", "/nowhere", None),
                                   ("POST", "/predict/single/a/b/c/d/e", b"{")):
            answer = http.request(method, path, content=body, headers={"x-request-id": f"req-{path[1:6]}"})
            assert answer.status_code in (404, 422)
            assert answer.headers["x-request-id"] == f"req-{path[1:6]}"
        assert http.post("/observe", content=b"x", headers={"x-request-id": "r1"}).headers.get_list("x-request-id") \
            == ["r1"]


def test_a_body_refused_for_its_size_is_answered_with_its_id(tmp_path):
    # Refused by a middleware before any route runs (a 413 naming `body`).
    with run_server(tmp_path / "data", extra_env={"PREDICTOR_MAX_UPLOAD_MB": "0.001"}) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as http:
        answer = http.post("/observe", content=b"[" + b"1," * 1000 + b"1]", headers={"x-request-id": "big-1"})
    assert answer.status_code == 413 and answer.headers.get_list("x-request-id") == ["big-1"]


def test_the_client_error_names_the_request_id(server):
    with PredictorClient(server.url) as client:
        with pytest.raises(PredictorClientError) as caught:
            client.get_model({"model_type": "a", "model_name": "b", "hardware": "c", "software_name": "d",
                              "software_version": "e"})
    assert caught.value.status_code == 404 and GENERATED.fullmatch(caught.value.request_id)


def test_a_500_and_its_logged_traceback_name_one_request_id(tmp_path):
    with run_server(tmp_path / "data", args=broken_server()) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            answer = http.get("/cache/stats", headers={"x-request-id": "sched-500"})
            made = http.get("/cache/stats").headers["x-request-id"]
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "sched-500"
    assert "unexpected error on GET /cache/stats (request sched-500)\nTraceback" in log
    assert GENERATED.fullmatch(made) and f"unexpected error on GET /cache/stats (request {made})\n" in log


def test_uvicorns_own_traceback_of_a_500_names_the_request_too(tmp_path):
    # Under serve's logging a 500 is logged twice: the service's line and traceback, then
    # uvicorn's "Exception in ASGI application" and its own traceback of the error Starlette
    # raised on to it. That second one named no request: grepping the log for a caller's id
    # found one of the two, and the other read as a failure of its own.
    with run_server(tmp_path / "data", args=broken_server(log_level="info", log_config=True)) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            answer = http.get("/cache/stats", headers={"x-request-id": "sched-500"})
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "sched-500"
    assert "unexpected error on GET /cache/stats (request sched-500)\nTraceback" in log
    assert "Exception in ASGI application (request sched-500)\nTraceback" in log, log
    # Outside a request uvicorn's lines are as they were.
    assert re.search(r"Application startup complete\.\n", log), log


@pytest.mark.parametrize("entry", [["-m", "swarmpilot_predictor", "serve"], ["-m", "src.scheduler.predictor_api"]],
                         ids=["serve", "seed"])
def test_each_access_line_ends_with_its_request_id(tmp_path, port, entry):
    env = {"PREDICTOR_PORT": str(port), "PREDICTOR_HOST": "127.0.0.1", "PREDICTOR_ACCESS_LOG": "true"}
    with run_server(tmp_path / "data", extra_env=env, args=[sys.executable, *entry], port=port) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            http.get("/ping", headers={"x-request-id": "acc-1"})
            made = http.get("/nowhere").headers["x-request-id"]
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    assert '"GET /ping HTTP/1.1" 200 OK (request acc-1)\n' in log, log
    assert f'"GET /nowhere HTTP/1.1" 404 Not Found (request {made})\n' in log, log


def test_a_training_jobs_record_names_the_request_that_started_it(server):
    # A caller reports the id of its POST /train; its job's record said nothing of it, and the
    # job's failure could not be traced back to the request the caller knows.
    body = {"config": {"model": IDENTITY, "traces": []}}  # fails in the worker: no traces
    with httpx.Client(base_url=server.url, timeout=60) as http, PredictorClient(server.url) as client:
        given = http.post("/train?background=true", json=body, headers={"x-request-id": "sched-train-1"})
        made = http.post("/train?background=true", json=body)
        assert given.status_code == made.status_code == 202 and GENERATED.fullmatch(made.headers["x-request-id"])
        for answer in (given, made):
            with pytest.raises(PredictorClientError, match="no traces given"):
                client.wait_for_job(answer.json()["job_id"])
            assert client.train_job(answer.json()["job_id"])["request_id"] == answer.headers["x-request-id"]
        # Its GET is another request, with an id of its own.
        polled = http.get(f"/train/jobs/{given.json()['job_id']}", headers={"x-request-id": "poll-1"})
        assert polled.headers["x-request-id"] == "poll-1" and polled.json()["request_id"] == "sched-train-1"


def _slow_training() -> dict:
    """A training of a hundred groups, each chosen among the families by cross-validation:
    tens of seconds, past a limit of one."""
    grouped = [{**t, "hardware": f"h{i % 100}"} for i, t in enumerate(make_llm_traces(4000))]
    return {"config": {"model": {k: v for k, v in IDENTITY.items() if k != "hardware"}, "group_by": ["hardware"],
                       "traces": grouped, "algorithm": "auto"}}


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _training_worker(server_pid: int) -> int:
    """The process of the server's training worker (started by its first training)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == server_pid and \
                    b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                return int(stat.parent.name)
        except (OSError, ValueError):
            continue
    raise AssertionError("no training worker")


def test_the_lines_about_a_job_whose_worker_died_name_the_request_that_started_it(tmp_path):
    # They were written by the worker pool's thread, outside any request: "the training worker
    # process died (killed by SIGKILL ...)" named none, where the caller's 500 named its own.
    with run_server(tmp_path / "data") as srv:
        with PredictorClient(srv.url) as client, httpx.Client(base_url=srv.url, timeout=60) as http:
            client.train({"model": IDENTITY, "traces": make_llm_traces(60), "algorithm": "linear"})  # its worker
            worker = _training_worker(srv.process.pid)
            ticks = _cpu_ticks(worker)
            job_id = http.post("/train?background=true", json=_slow_training(),
                               headers={"x-request-id": "sched-died"}).json()["job_id"]
            # Training it: 0.3 s of its CPU (at its low priority, on a loaded machine, many
            # seconds). Killed before it began the job, the worker would not have died running
            # it: the job would go to a fresh worker.
            deadline = time.monotonic() + 300
            while _cpu_ticks(worker) < ticks + 30:
                assert time.monotonic() < deadline, "the training worker never began the job"
                time.sleep(0.05)
            os.kill(worker, signal.SIGKILL)  # say, the kernel's out-of-memory killer
            with pytest.raises(PredictorClientError) as caught:
                client.wait_for_job(job_id, timeout=300)
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    assert caught.value.status_code == 500 and "the training worker process died" in caught.value.message
    assert re.search(r"WARNING:  the training worker process died \(killed by SIGKILL: .*\) \(request sched-died\)\n",
                     log), log


def test_the_line_about_a_job_stopped_for_its_time_names_the_request_that_started_it(tmp_path):
    with run_server(tmp_path / "data", extra_env={"PREDICTOR_TRAINING_TIMEOUT_S": "1"}) as srv:
        with PredictorClient(srv.url) as client, httpx.Client(base_url=srv.url, timeout=60) as http:
            job_id = http.post("/train?background=true", json=_slow_training(),
                               headers={"x-request-id": "sched-slow"}).json()["job_id"]
            # The limit counts from the time the fresh worker begins the job, which may take it
            # up to START_ALLOWANCE_S (60 s) on a loaded machine: the wait allows for that.
            with pytest.raises(PredictorClientError) as caught:
                client.wait_for_job(job_id, timeout=START_ALLOWANCE_S + 120)
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    assert caught.value.status_code == 422
    assert (f"WARNING:  training job {job_id} ran past 1 s (PREDICTOR_TRAINING_TIMEOUT_S): stopping its worker "
            "(request sched-slow)\n") in log, log


def test_the_training_workers_lines_name_the_request_that_started_its_job(tmp_path):
    # The worker process had no handler of its own: Python wrote its warnings bare, with no
    # level and no request ("cannot write the registry's change log ...; every worker rescans").
    answer, log, changes = train_beside_an_unwritable_change_log(tmp_path / "data", "sched-log-1")
    assert answer.status_code == 200 and answer.json()["version"] == 1
    assert (f"WARNING:  cannot write the registry's change log {changes} ([Errno 21] Is a directory: '{changes}'); "
            "every worker rescans (request sched-log-1)\n") in log, log


def test_the_seeds_training_worker_builds_no_service_of_its_own(tmp_path, port):
    # Spawned, the worker ran the seed's module again as its main module's stand-in: it built
    # a second service (its registry's lines named no request) and warned again of each
    # misspelt variable, once a worker.
    env = {"PREDICTOR_PORT": str(port), "PREDICTOR_HOST": "127.0.0.1", "PREDICTOR_APIKEY": "k" * 20}
    answer, log, _ = train_beside_an_unwritable_change_log(
        tmp_path / "data", "seed-log-1", extra_env=env, args=[sys.executable, "-m", "src.scheduler.predictor_api"],
        port=port)
    assert answer.status_code == 200 and answer.json()["version"] == 1
    assert log.count("'PREDICTOR_APIKEY' is not a setting of this service") == 1, log
    about_changes = [line for line in log.splitlines() if "change log" in line]
    assert about_changes and all(line.endswith(" (request seed-log-1)") for line in about_changes), log


def test_a_failed_jobs_error_names_the_request_that_started_it(tmp_path, port):
    # wait_for_job's error named no request (None): the one whose lines tell of the training
    # is the POST that started it, not one of the polls.
    env = {"PREDICTOR_PORT": str(port), "PREDICTOR_HOST": "127.0.0.1", "PREDICTOR_ACCESS_LOG": "true"}
    with run_server(tmp_path / "data", extra_env=env, args=[sys.executable, "-m", "swarmpilot_predictor", "serve"],
                    port=port) as srv:
        with PredictorClient(srv.url) as client:
            job_id = client.train_background({"model": IDENTITY, "traces": []})["job_id"]  # fails: no traces
            with pytest.raises(PredictorClientError) as caught:
                client.wait_for_job(job_id)
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    started_by = caught.value.request_id
    assert caught.value.status_code == 422 and GENERATED.fullmatch(started_by)
    assert f'"POST /train?background=true HTTP/1.1" 202 Accepted (request {started_by})\n' in log, log


def test_the_openapi_schema_declares_the_header_on_every_answer(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        spec = http.get("/openapi.json").json()
    responses = [(path, code, response) for path, operations in spec["paths"].items()
                 for operation in operations.values() for code, response in operation["responses"].items()]
    assert len(responses) > 100
    assert [(path, code) for path, code, response in responses
            if response.get("headers", {}).get("X-Request-ID") != {"$ref": "#/components/headers/X-Request-ID"}] == []
    assert spec["components"]["headers"]["X-Request-ID"]["schema"] == {"type": "string", "minLength": 1,
                                                                         "maxLength": MAX_LENGTH}


def _gateway(answer: bytes, ids: list[str]):
    """A server on a free port that answers each request with ``answer`` (a gateway's own
    page, without the service's X-Request-ID; b"": none) and closes its connection, noting
    the id each was sent with in ``ids``."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                    head += chunk
                ids.extend(line.split(":", 1)[1].strip() for line in head.decode("latin-1").split("\r\n")
                           if line.lower().startswith("x-request-id:"))
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_a_call_that_gets_no_answer_names_the_id_it_was_sent_with_on_every_try():
    import asyncio

    from swarmpilot_predictor.client import AsyncPredictorClient, PredictorUnavailableError

    ids: list[str] = []
    listener = _gateway(b"", ids)  # each connection closed without an answer: the retries come back
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with PredictorClient(url, retries=2, backoff=0.01) as client, pytest.raises(PredictorUnavailableError) as sync:
            client.health()

        async def call() -> None:
            async with AsyncPredictorClient(url, retries=2, backoff=0.01) as client:
                await client.health()

        with pytest.raises(PredictorUnavailableError) as in_async:
            asyncio.run(call())
    finally:
        listener.close()
    first, second = sync.value.request_id, in_async.value.request_id
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second) and first != second
    assert ids == [first] * 3 + [second] * 3  # a GET is tried again, under the same id


def test_the_service_logs_the_id_the_client_sent(tmp_path):
    with run_server(tmp_path / "data", args=broken_server()) as srv:
        with PredictorClient(srv.url) as client, pytest.raises(PredictorClientError) as caught:
            client.cache_stats()
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    assert caught.value.status_code == 500 and GENERATED.fullmatch(caught.value.request_id)
    assert f"unexpected error on GET /cache/stats (request {caught.value.request_id})\n" in log


def test_an_app_called_in_the_callers_task_leaves_no_id_behind(tmp_path):
    import asyncio

    from swarmpilot_predictor.api import create_app
    from swarmpilot_predictor.settings import PredictorSettings

    app = create_app(PredictorSettings(data_dir=tmp_path / "data"))

    async def scenario() -> tuple[str, str | None]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://predictor") as http:
            answer = await http.get("/ping", headers={"x-request-id": "in-task"})
        return answer.headers["x-request-id"], current.get()

    assert asyncio.run(scenario()) == ("in-task", None)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/html\r\nContent-Length: 21\r\nConnection: close\r\n\r\n"
    b"<h1>504 timeout</h1>\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 15\r\nConnection: close\r\n\r\n<h1>sign in</h1"],
    ids=["504", "200-page"])
def test_a_gateways_answer_without_the_id_names_the_one_the_call_was_sent_with(answer):
    # A gateway that gave up on the service (its 504), or a sign-in page, does not echo the
    # id: the error named none (request_id None), while the service may have logged the
    # request under the id the client sent.
    ids: list[str] = []
    listener = _gateway(answer, ids)
    try:
        with PredictorClient(f"http://127.0.0.1:{listener.getsockname()[1]}", retries=0) as client, \
                pytest.raises(PredictorClientError) as caught:
            client.health()
    finally:
        listener.close()
    assert caught.value.status_code in (504, 200)
    assert ids and caught.value.request_id == ids[0] and GENERATED.fullmatch(ids[0])


def test_a_path_cannot_write_a_log_line_of_its_own(tmp_path):
    # A path's %0A arrives decoded: the client-left and 500 lines quoted it as it came, and
    # any client (no API key needed to predict) began a line of its choosing, a request id
    # of its choosing at its end ("ERROR:    forged ... (request a36a...)").
    import socket
    import time

    forged = "/llm/a%0AERROR:%20%20%20%20forged%20(request%20sched-42)/H100/vllm/1"
    with run_server(tmp_path / "data", args=broken_server(log_level="info", method="model_detail")) as srv:
        url = httpx.URL(srv.url)
        with socket.create_connection((url.host, url.port)) as s:
            s.sendall(f"POST /predict/single{forged} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      'Content-Length: 1000\r\n\r\n{"trace":'.encode())
            time.sleep(0.2)
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            assert http.get(f"/models{forged}").status_code == 500
            deadline = time.monotonic() + 30  # (the departure is noticed as the server reads next)
            while 'status="499"' not in http.get("/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    assert "forged" in log and not any(line.startswith("ERROR:    forged") for line in log.splitlines()), log
    assert "client left during POST /predict/single/llm/a\\nERROR:    forged (request sched-42)/H100/vllm/1 before" in log
    # The 500's line names the path as sent: it read '/models/llm/aERROR:    forged ...', the
    # line break dropped (Starlette's request.url drops line breaks and tabs), another path.
    assert "ERROR:    unexpected error on GET /models/llm/a\\nERROR:    forged (request sched-42)/H100/vllm/1 (request " \
        in log, log
