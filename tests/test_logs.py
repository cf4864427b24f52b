"""Log lines as JSON (PREDICTOR_LOG_FORMAT=json): one object a line, uvicorn's and the
service's alike, each naming the request it was written for."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import httpx
import pytest

from swarmpilot_predictor.logs import JsonFormatter, stderr_handler
from swarmpilot_predictor.request_ids import RequestIdFilter, current

from .conftest import REPO_ROOT, broken_server, run_server, train_beside_an_unwritable_change_log


def entries(log: str) -> list[dict]:
    """Every line of ``log`` read as a JSON object (a line that is not one fails the test)."""
    out = []
    for line in log.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}\n{log}")
    return out


def formatted(name: str, msg: str, args: tuple = (), exc_info=None, request_id: str | None = None) -> dict:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, exc_info)
    token = current.set(request_id)
    try:
        RequestIdFilter().filter(record)
    finally:
        current.reset(token)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


def test_a_record_is_one_json_line_with_its_request():
    entry = formatted("swarmpilot_predictor.service", "cannot read %s\nsecond line", ("x.json",), request_id="sched-7")
    assert entry["message"] == "cannot read x.json\nsecond line" and entry["request_id"] == "sched-7"
    assert entry["level"] == "WARNING" and entry["logger"] == "swarmpilot_predictor.service"
    assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-12-07T09:40:25.075Z")
    assert isinstance(entry["pid"], int) and "exception" not in entry
    assert formatted("x", "outside a request")["request_id"] is None
    # An id of "-" is a request's own, not the filter's "outside a request".
    assert formatted("x", "m", request_id="-")["request_id"] == "-"


def test_uvicorns_access_line_gives_its_parts_as_fields():
    entry = formatted("uvicorn.access", '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5", "GET", "/ping?x=1", "1.1", 200),
                      request_id="acc-1")
    assert entry["message"] == '127.0.0.1:5 - "GET /ping?x=1 HTTP/1.1" 200'
    assert (entry["client"], entry["method"], entry["path"], entry["http_version"], entry["status"],
            entry["request_id"]) == ("127.0.0.1:5", "GET", "/ping?x=1", "1.1", 200, "acc-1")


def test_a_traceback_and_an_unencodable_character_stay_inside_the_line():
    try:
        raise KeyError("models")
    except KeyError:
        entry = formatted("x", "unexpected error on GET /p\udcff", exc_info=sys.exc_info())
    assert entry["message"] == "unexpected error on GET /p\udcff"
    assert entry["exception"].startswith("Traceback (most recent call last):") and "KeyError: 'models'" in entry["exception"]


def test_the_handler_writes_text_unless_told_json(capsys):
    log = logging.getLogger("swarmpilot_predictor.test_logs")
    log.propagate = False
    try:
        for fmt in ("text", "json"):
            handler = stderr_handler(fmt)
            log.addHandler(handler)
            log.warning("disk %s", "full")
            log.removeHandler(handler)
    finally:
        log.propagate = True
    text, as_json = capsys.readouterr().err.splitlines()
    assert text == "WARNING:  disk full"
    assert json.loads(as_json)["message"] == "disk full"


@pytest.mark.parametrize("entry", [["-m", "swarmpilot_predictor", "serve", "--log-format", "json"],
                                   ["-m", "swarmpilot_predictor", "serve", "--workers", "2"],
                                   ["-m", "src.scheduler.predictor_api"]],
                         ids=["serve", "serve-workers", "seed"])
def test_every_line_the_service_writes_is_json(tmp_path, port, entry):
    env = {"PREDICTOR_PORT": str(port), "PREDICTOR_HOST": "127.0.0.1", "PREDICTOR_ACCESS_LOG": "true",
           "PREDICTOR_NOT_A_SETTING": "1"}
    if "--log-format" not in entry:
        env["PREDICTOR_LOG_FORMAT"] = "JSON"  # (any case, as the level)
    # The lines written before logging is set up were text: serve's of the metric files an
    # earlier run left in the operator's directory, the seed's of the workers it does not run.
    if "serve" in entry:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        (tmp_path / "metrics").mkdir()
        (tmp_path / "metrics" / f"counter_{gone}.db").write_bytes(b"")
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    else:
        env["PREDICTOR_WORKERS"] = "2"
    with run_server(tmp_path / "data", extra_env=env, args=[sys.executable, *entry], port=port) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            http.get("/ping", headers={"x-request-id": "json-1"})
            made = http.get("/nowhere").headers["x-request-id"]
            # Answered before the app sees it, its line written outside the request's work.
            refused = http.get("/ping", headers={"x-big": "a" * 70_000})
            assert refused.status_code == 431
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    lines = entries(log)
    access = {e["request_id"]: e for e in lines if e["logger"] == "uvicorn.access"}
    assert (access["json-1"]["method"], access["json-1"]["path"], access["json-1"]["status"]) == ("GET", "/ping", 200)
    assert access[made]["status"] == 404 and access[made]["path"] == "/nowhere"
    assert any(e["logger"] == "uvicorn.error" and e["message"] == "Application startup complete." for e in lines), log
    unknown = [e for e in lines if "'PREDICTOR_NOT_A_SETTING' is not a setting" in e["message"]]
    assert len(unknown) == 1 and unknown[0]["level"] == "WARNING", log  # said once, with several workers too
    assert unknown[0]["logger"].startswith("swarmpilot_predictor")
    (too_long,) = [e for e in lines if "answered 431" in e["message"]]
    assert too_long["request_id"] == refused.headers["x-request-id"] and too_long["level"] == "WARNING", log
    said = "metric file(s) of processes no longer running" if "serve" in entry else "PREDICTOR_WORKERS=2 is ignored here"
    assert [e["level"] for e in lines if said in e["message"]] == ["WARNING"], log


@pytest.mark.parametrize("entry", [["-m", "swarmpilot_predictor", "serve", "--log-format", "json"],
                                   ["-m", "src.scheduler.predictor_api"]], ids=["serve", "seed"])
def test_a_start_refused_is_a_json_line_too(tmp_path, entry):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "PREDICTOR_DATA_DIR": str(tmp_path / "data"), "PREDICTOR_HOST": "127.0.0.1",
               "PREDICTOR_PORT": str(taken.getsockname()[1]), "PREDICTOR_LOG_FORMAT": "json"}
        done = subprocess.run([sys.executable, *entry], env=env, capture_output=True, text=True, timeout=60,
                              cwd=REPO_ROOT)
    assert done.returncode == 1
    (line,) = entries(done.stderr)
    assert line["level"] == "ERROR" and "address already in use" in line["message"], done.stderr


def test_a_500_is_logged_as_json_with_its_traceback_and_request(tmp_path):
    args = broken_server(log_level="info", log_config=True, log_format="json")
    with run_server(tmp_path / "data", args=args, extra_env={"PREDICTOR_LOG_FORMAT": "json"}) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            assert http.get("/cache/stats", headers={"x-request-id": "sched-500"}).status_code == 500
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    failed = [e for e in entries(log) if e.get("exception")]
    # The service's line and uvicorn's "Exception in ASGI application", each with its traceback.
    assert {e["message"] for e in failed} == {"unexpected error on GET /cache/stats",
                                              "Exception in ASGI application"}, log
    assert all(e["request_id"] == "sched-500" and "KeyError: 'models'" in e["exception"] and e["level"] == "ERROR"
               for e in failed), log


def test_the_training_workers_lines_are_json_too(tmp_path):
    answer, log, changes = train_beside_an_unwritable_change_log(
        tmp_path / "data", "sched-json-1", extra_env={"PREDICTOR_LOG_FORMAT": "json"})
    assert answer.status_code == 200 and answer.json()["version"] == 1
    worker = [e for e in entries(log) if "cannot write the registry's change log" in e["message"]]
    assert worker and all(e["request_id"] == "sched-json-1" and e["level"] == "WARNING" for e in worker), log
    assert worker[0]["message"] == (f"cannot write the registry's change log {changes} ([Errno 21] Is a directory: "
                                    f"'{changes}'); every worker rescans")


def _retraining_fails_unexpectedly(config, identity, reason, version):
    """The retraining worker's job, with a bug in the retraining: its worker logs the traceback."""
    from swarmpilot_predictor import retraining

    def broken(*args, **kwargs):
        raise KeyError("models")

    retraining.Retrainer.retrain = broken
    return retraining._retrain_job(config, identity, reason, version)


def test_the_retraining_workers_traceback_is_the_relayed_lines_exception(tmp_path, monkeypatch):
    # Relayed by the service as the retraining ends, its traceback was part of the message:
    # a JSON line with a traceback in "message" and no "exception".
    import io

    from swarmpilot_predictor import retraining
    from swarmpilot_predictor.errors import PredictorError
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    package = logging.getLogger("swarmpilot_predictor")
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", retrain_in_worker=True))
    try:
        svc.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(300), algorithm="linear"))
        svc.observe(IDENTITY, make_llm_traces(60, seed=5))
        monkeypatch.setattr(retraining, "_retrain_job", _retraining_fails_unexpectedly)
        with pytest.raises(PredictorError):
            svc.retrain(IdentityPattern.from_parts(IDENTITY))
    finally:
        svc.close()
        package.removeHandler(handler)
        package.setLevel(level)
    (failed,) = [e for e in entries(out.getvalue()) if e["message"].startswith("retraining ")
                 and e["message"].endswith(" failed")]
    assert failed["level"] == "ERROR" and "\n" not in failed["message"], failed
    assert failed["exception"].startswith("Traceback (most recent call last):") and "KeyError: 'models'" in failed["exception"]


def test_the_readmes_log_config_for_a_uvicorn_command_writes_every_line_as_json(tmp_path):
    # With a --log-config of uvicorn's loggers alone, the service's own lines follow
    # PREDICTOR_LOG_FORMAT (they stay text without it), as the README now says.
    readme = (REPO_ROOT / "README.md").read_text()
    config = readme.split("cat > log.json <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    (tmp_path / "log.json").write_text(config)
    args = [sys.executable, "-m", "uvicorn", "swarmpilot_predictor.api:app_from_env", "--factory", "--host",
            "127.0.0.1", "--port", "{port}", "--log-config", str(tmp_path / "log.json")]
    with run_server(tmp_path / "data", args=args,
                    extra_env={"PREDICTOR_LOG_FORMAT": "json", "PREDICTOR_NOT_A_SETTING": "1"}) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            http.get("/ping", headers={"x-request-id": "cfg-1"})
        srv.process.terminate()
        log = srv.process.stdout.read().decode()
    lines = entries(log)
    assert [e["status"] for e in lines if e["request_id"] == "cfg-1" and e["logger"] == "uvicorn.access"] == [200], log
    assert any("'PREDICTOR_NOT_A_SETTING' is not a setting" in e["message"] for e in lines), log
