"""Observations, accuracy, drift, retraining and Prometheus metrics over real HTTP."""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx
import pytest

from swarmpilot_predictor.client import PredictorClient, PredictorClientError
from swarmpilot_predictor.identity import ModelIdentity

from .conftest import IDENTITY, make_llm_traces, post_across_sigterm, run_server, trained_in_process
from .conftest import metric_value as _metric


def _shifted(n: int, factor: float, seed: int) -> list[dict]:
    traces = make_llm_traces(n, seed=seed)
    for t in traces:
        t["runtime_ms"] *= factor
    return traces


def test_observe_accuracy_drift_and_metrics(tmp_path):
    key = ModelIdentity.from_parts(IDENTITY).key
    with run_server(tmp_path / "data") as srv, PredictorClient(srv.url) as client:
        client.train({"model": IDENTITY, "traces": make_llm_traces(300), "algorithm": "linear"})
        client.predict_batch(IDENTITY, make_llm_traces(7, seed=1))
        with pytest.raises(PredictorClientError):
            client.predict_single(IDENTITY, {"input_tokens": 5})

        ok = client.observe(IDENTITY, make_llm_traces(150, seed=2))
        assert ok["accepted"] == 150 and ok["drifted"] is False
        acc = client.accuracy(IDENTITY)
        assert acc["observations"] == 150 and acc["version"] == 1
        assert abs(acc["coverage"]["0.5"] - 0.5) < 0.15
        assert set(acc["interval_coverage"]) == {"0.5", "0.8", "0.9"}
        assert len(acc["recent"]["runtime_ms"]) == 150 and len(acc["recent"]["quantile_predictions"][0]) == 8
        assert len(client.accuracy(IDENTITY, recent=5)["recent"]["runtime_ms"]) == 5
        # Runtimes drawn as the training's: their sum is close to the sum of the predicted expects.
        assert acc["expect_observations"] == 150 and 0.9 < acc["expect_ratio"] < 1.1
        recent = acc["recent"]
        assert acc["expect_ratio"] == pytest.approx(sum(recent["runtime_ms"]) / sum(recent["expect"]), rel=1e-12)
        # Beside them, the same figures held out at training time: what the live ones should read.
        held = acc["heldout_at_training"]
        assert 0.97 < held["expect_ratio"] < 1.03 and 0.85 < held["error_ratio"] < 1.15
        # And live: the deviations from the expects against the predicted errors, as at training.
        assert acc["error_observations"] == 150 and 0.75 < acc["error_ratio"] < 1.25
        dev = [y - e for y, e in zip(recent["runtime_ms"], recent["expect"])]
        assert acc["error_ratio"] == pytest.approx((sum(d * d for d in dev) / sum(s * s for s in recent["error"])) ** 0.5,
                                                   rel=1e-9)
        trained = client.get_model(IDENTITY)["metrics"]
        assert held == {k: trained[k] for k in held} and held["mean_abs_coverage_error"] < 0.05
        one = client.predict_single(IDENTITY, {k: v for k, v in make_llm_traces(150, seed=2)[0].items() if k != "runtime_ms"})
        assert recent["expect"][0] == pytest.approx(one.results.expect, rel=1e-9)  # what the serving model answers
        assert recent["error"][0] == pytest.approx(one.results.error, rel=1e-9)
        with pytest.raises(PredictorClientError, match="recent must be at least 0"):
            client.accuracy(IDENTITY, recent=-1)

        shifted = client.observe(IDENTITY, _shifted(300, 1.7, seed=3))
        assert shifted["drifted"] is True
        listed = client.list_models().models[0]
        entry = listed["models"][0]
        assert entry["drifted"] is True and entry["observations"] == 450
        assert listed["drifted"] is True and listed["samples"] == entry["samples"] == 300  # the contract's entry
        assert client.health().drifted_models == [key]

        text = client.metrics()
        assert _metric(text, "predictor_model_drifted", model=key) == 1.0
        assert _metric(text, "predictor_observations_total", model=key) == 450.0
        assert _metric(text, "predictor_predictions_total", model=key, source="model") == 8.0  # a batch of 7, one single
        assert _metric(text, "predictor_training_runs_total", status="success") == 1.0
        assert _metric(text, "predictor_http_requests_total", route="/observe", method="POST", status="200") == 2.0
        # The bare ASGI prediction routes are labelled by their template too, errors by their status.
        batch_route = "/predict/batch/{model_type}/{model_name}/{hardware}/{software_name}/{software_version}"
        assert _metric(text, "predictor_http_requests_total", route=batch_route, method="POST", status="200") == 1.0
        single_route = batch_route.replace("batch", "single")
        assert _metric(text, "predictor_http_requests_total", route=single_route, method="POST", status="422") == 1.0
        assert 0.0 < _metric(text, "predictor_model_coverage_ratio", model=key, level="0.5") < 0.4
        # 150 runtimes as trained, then 300 at 1.7 times: (150 + 300 * 1.7) / 450 = 1.47.
        assert 1.35 < _metric(text, "predictor_model_expect_ratio", model=key) < 1.6
        # Runtimes 1.7 times their expects deviate far more than the predicted errors say.
        assert _metric(text, "predictor_model_error_ratio", model=key) == pytest.approx(
            client.accuracy(IDENTITY)["error_ratio"], rel=1e-9)
        assert _metric(text, "predictor_model_error_ratio", model=key) > 2.0
        assert "predictor_http_request_duration_seconds_bucket" in text

        path = "/models/" + "/".join(quote(v, safe="") for v in IDENTITY.values()) + "/retrain"
        refused = httpx.post(srv.url + path, json={"reason": "drift"})  # a retraining takes no options
        assert refused.status_code == 422 and refused.json()["field"] == "reason"
        decision = client.retrain(IDENTITY)
        assert decision["status"] == "retrained" and decision["to_version"] == 2
        assert _metric(client.metrics(), "predictor_retraining_runs_total", status="retrained") == 1.0
        assert client.accuracy(IDENTITY)["version"] == 2
        listed = client.list_models().models[0]
        assert listed["models"][0]["drifted"] is False and listed["drifted"] is False
        # The gauges describe the serving version 2, which has no observations yet: not version 1's figures,
        # even after version 1's accuracy is asked for.
        assert client.accuracy(IDENTITY, version=1)["observations"] == 450
        text = client.metrics()
        assert _metric(text, "predictor_model_drifted", model=key) == 0.0
        for name, labels in (("predictor_model_coverage_ratio", {"level": "0.5"}),
                             ("predictor_model_interval_coverage_ratio", {"interval": "0.9"}),
                             ("predictor_model_relative_pinball_loss", {}), ("predictor_model_expect_ratio", {}),
                             ("predictor_model_error_ratio", {})):
            with pytest.raises(KeyError):
                _metric(text, name, model=key, **labels)
        client.observe(IDENTITY, _shifted(40, 1.7, seed=4))
        assert 0.3 < _metric(client.metrics(), "predictor_model_coverage_ratio", model=key, level="0.5") < 0.7
        # A version trained by the worker process: the gauges follow it at the next scrape.
        client.train({"model": IDENTITY, "traces": make_llm_traces(300), "algorithm": "linear"})
        with pytest.raises(KeyError):
            _metric(client.metrics(), "predictor_model_coverage_ratio", model=key, level="0.5")
        client.delete_model(IDENTITY)
        text = client.metrics()
        # Every series of the deleted model goes: label sets stay bounded by the live models.
        for name, labels in (("predictor_model_drifted", {}), ("predictor_observations_total", {}),
                             ("predictor_predictions_total", {"source": "model"}),
                             ("predictor_prediction_errors_total", {})):
            with pytest.raises(KeyError):
                _metric(text, name, model=key, **labels)


def test_accuracy_gauges_are_there_after_a_restart(tmp_path):
    # An alert on predictor_model_drifted must not go silent after a deploy until someone
    # observes the model again.
    key = ModelIdentity.from_parts(IDENTITY).key
    quiet = {**IDENTITY, "model_name": "never-observed"}
    trained_in_process(tmp_path / "data", {"model": IDENTITY, "traces": make_llm_traces(300), "algorithm": "linear"},
                              {"model": quiet, "traces": make_llm_traces(100), "algorithm": "linear"})
    with run_server(tmp_path / "data") as srv, PredictorClient(srv.url) as client:
        assert client.observe(IDENTITY, _shifted(300, 1.7, seed=3))["drifted"] is True
        assert _metric(client.metrics(), "predictor_model_drifted", model=ModelIdentity.from_parts(quiet).key) == 0.0
    with run_server(tmp_path / "data") as srv, PredictorClient(srv.url) as client:
        text = client.metrics()
        assert _metric(text, "predictor_model_drifted", model=key) == 1.0
        # A model never observed reads 0 after the restart as before it.
        assert _metric(text, "predictor_model_drifted", model=ModelIdentity.from_parts(quiet).key) == 0.0
        assert 0.0 < _metric(text, "predictor_model_coverage_ratio", model=key, level="0.5") < 0.4
        # Its runtimes were 1.7 times the training's, read back from the log after the restart.
        assert 1.55 < _metric(text, "predictor_model_expect_ratio", model=key) < 1.85
        # ?recent=0 asks for no recent observations, not for the whole window.
        path = "/".join(quote(part, safe="") for part in IDENTITY.values())
        r = httpx.get(f"{srv.url}/models/{path}/accuracy", params={"recent": 0})
        assert r.status_code == 200 and r.json()["recent"]["runtime_ms"] == []
        # Past the limit, or below 0: named, not quietly capped.
        for recent in (-1, 5001):
            r = httpx.get(f"{srv.url}/models/{path}/accuracy", params={"recent": recent})
            assert r.status_code == 422 and r.json()["field"] == "recent", r.text
            assert r.json()["message"] == f"recent must be between 0 and 5,000, got {recent}"
        with pytest.raises(PredictorClientError, match="recent must be between 0 and 5,000, got 5001"):
            client.accuracy(IDENTITY, recent=5001)
        assert len(client.accuracy(IDENTITY, recent=5000)["recent"]["runtime_ms"]) > 0
        # A repeated parameter: the last one won, and an invalid first one was not seen.
        r = httpx.get(f"{srv.url}/models/{path}/accuracy?recent=x&recent=1")
        assert r.status_code == 422 and r.json()["field"] == "recent" and "more than once" in r.json()["message"]


def _in_seconds(traces: list[dict]) -> list[dict]:
    """The traces measured in another unit, under another target name."""
    return [{**{k: v for k, v in t.items() if k != "runtime_ms"}, "latency_s": t["runtime_ms"] / 1000} for t in traces]


def test_observe_bad_input_is_a_clear_4xx(tmp_path):
    other = {**IDENTITY, "model_name": "latency-target"}
    trained_in_process(tmp_path / "data", {"model": IDENTITY, "traces": make_llm_traces(100), "algorithm": "linear"},
                              {"model": other, "algorithm": "linear", "target": "latency_s",
                               "traces": _in_seconds(make_llm_traces(100))})
    with run_server(tmp_path / "data") as srv, PredictorClient(srv.url) as client:
        with pytest.raises(PredictorClientError) as none_usable:
            client.observe(IDENTITY, [{"input_tokens": 1, "output_tokens": 2}])
        assert none_usable.value.status_code == 422 and "runtime_ms" in none_usable.value.message
        with pytest.raises(PredictorClientError) as unknown:
            client.observe({**IDENTITY, "hardware": "nope"}, make_llm_traces(3))
        assert unknown.value.status_code == 404
        # A partial identity: the client refuses it before sending, the service as well.
        partial_identity = {k: v for k, v in IDENTITY.items() if k != "hardware"}
        with pytest.raises(PredictorClientError) as partial:
            client.observe(partial_identity, make_llm_traces(3))
        assert partial.value.status_code is None and partial.value.field == "model.hardware"
        r = httpx.post(f"{srv.url}/observe", json={"model": partial_identity, "traces": make_llm_traces(3)})
        assert r.status_code == 422 and r.json()["field"] == "model.hardware"
        # A model trained on another target reads its observations there: a runtime_ms beside
        # it is not taken for it (its unit may differ), and the message says so.
        with pytest.raises(PredictorClientError) as other_target:
            client.observe(other, make_llm_traces(3))
        assert other_target.value.status_code == 422
        assert "missing measured 'latency_s'" in other_target.value.message
        assert "trained on the target 'latency_s'" in other_target.value.message
        assert client.observe(other, _in_seconds(make_llm_traces(3, seed=2)))["accepted"] == 3


def test_an_observations_folder_that_is_a_symbolic_link_is_neither_written_nor_deleted_through(tmp_path):
    # Followed, /observe appended to a file wherever the link led, outside the data directory,
    # and deleting the model removed the files there; /accuracy (a read open without the API
    # key) answered the retraining decisions of a file there.
    decision = b'{"status":"kept","from_version":1,"at":1.0,"message":"not the service\'s"}\n'
    other = {**IDENTITY, "model_name": "unlinked"}
    trained_in_process(tmp_path / "data", {"model": IDENTITY, "traces": make_llm_traces(100), "algorithm": "linear"},
                       {"model": other, "traces": make_llm_traces(100), "algorithm": "linear"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "obs-000001.jsonl").write_bytes(b"not the service's\n")
    (elsewhere / "retraining.jsonl").write_bytes(decision)
    folder = tmp_path / "data" / "observations" / ModelIdentity.from_parts(IDENTITY).dirname
    folder.parent.mkdir(exist_ok=True)
    folder.symlink_to(elsewhere, target_is_directory=True)
    path = "/".join(quote(IDENTITY[k], safe="") for k in ("model_type", "model_name", "hardware", "software_name",
                                                          "software_version"))
    with run_server(tmp_path / "data") as srv, PredictorClient(srv.url) as client:
        with pytest.raises(PredictorClientError) as refused:
            client.observe(IDENTITY, make_llm_traces(5, seed=1))
        assert refused.value.status_code == 500
        assert "is a symbolic link, which the service does not follow" in refused.value.message
        assert ModelIdentity.from_parts(IDENTITY).key in refused.value.message
        accuracy = client.accuracy(IDENTITY)
        assert accuracy["observations"] == 0 and accuracy["retraining"] == []
        assert httpx.post(f"{srv.url}/models/{path}/retrain", timeout=60).status_code == 500
        assert client.observe(other, make_llm_traces(5, seed=1))["accepted"] == 5
        assert client.delete_model(IDENTITY)["deleted_versions"] == [1]
    assert (elsewhere / "obs-000001.jsonl").read_bytes() == b"not the service's\n"
    assert (elsewhere / "retraining.jsonl").read_bytes() == decision
    assert sorted(p.name for p in elsewhere.iterdir()) == ["obs-000001.jsonl", "retraining.jsonl"]


def test_a_link_loop_named_like_an_observation_log_is_skipped_not_a_500_on_every_look(tmp_path):
    # A symbolic link to itself where a log file goes: /health, /models and /accuracy, which
    # look at the model's log each time, were a 500 "internal error: OSError" for as long as
    # it stayed (a readiness probe took the instance out). What is not a regular file named
    # like a log is skipped (an append to it is a 500 naming its model, as one to a FIFO is).
    trained_in_process(tmp_path / "data", {"model": IDENTITY, "traces": make_llm_traces(100), "algorithm": "linear"})
    key = ModelIdentity.from_parts(IDENTITY).key
    folder = tmp_path / "data" / "observations" / ModelIdentity.from_parts(IDENTITY).dirname
    with run_server(tmp_path / "data") as srv, PredictorClient(srv.url) as client:
        assert client.observe(IDENTITY, make_llm_traces(30, seed=1))["accepted"] == 30
        loop = folder / "obs-000002.jsonl"
        loop.symlink_to(loop)
        for look in range(2):
            health = httpx.get(f"{srv.url}/health", timeout=30)
            assert health.status_code == 200 and health.json()["models_registered"] == 1
            models = httpx.get(f"{srv.url}/models", timeout=30)
            assert models.status_code == 200 and models.json()["models"][0]["models"][0]["observations"] == 30
            accuracy = client.accuracy(IDENTITY, recent=0)
            assert accuracy["observations"] == 30 and accuracy["window"] == 30
            assert _metric(client.metrics(), "predictor_model_drifted", model=key) == 0.0
        with pytest.raises(PredictorClientError) as refused:
            client.observe(IDENTITY, make_llm_traces(3, seed=2))
        assert refused.value.status_code == 500 and key in refused.value.message
        assert client.retrain(IDENTITY)["observations"] == 30  # a retraining reads them as ever
        loop.unlink()  # gone: the log is written and read on
        assert client.observe(IDENTITY, make_llm_traces(3, seed=3))["accepted"] == 3
        assert client.accuracy(IDENTITY, recent=0)["observations"] == 33


def test_a_link_loop_in_place_of_the_retraining_decisions_fails_no_observe(tmp_path):
    # With automatic retraining every /observe looks for the model's last decision: a link
    # loop in retraining.jsonl's place made each one a 500 "internal error: OSError", after
    # its observations were stored, so that a client sending them again counted them twice.
    env = {"PREDICTOR_AUTO_RETRAIN": "1", "PREDICTOR_RETRAIN_MIN_OBSERVATIONS": "100000"}
    trained_in_process(tmp_path / "data", {"model": IDENTITY, "traces": make_llm_traces(100), "algorithm": "linear"})
    folder = tmp_path / "data" / "observations" / ModelIdentity.from_parts(IDENTITY).dirname
    with run_server(tmp_path / "data", extra_env=env) as srv, PredictorClient(srv.url) as client:
        assert client.observe(IDENTITY, make_llm_traces(5, seed=1))["accepted"] == 5
        (folder / "retraining.jsonl").symlink_to(folder / "retraining.jsonl")
        for k in range(2):
            answer = client.observe(IDENTITY, make_llm_traces(3, seed=2 + k))
            assert answer["accepted"] == 3 and answer["retraining_scheduled"] is False
        accuracy = client.accuracy(IDENTITY, recent=0)
        assert accuracy["observations"] == 11 and accuracy["retraining"] == []


def test_auto_retrain_recovers_after_a_shift(tmp_path):
    env = {"PREDICTOR_AUTO_RETRAIN": "1", "PREDICTOR_RETRAIN_MIN_OBSERVATIONS": "100000"}
    trained_in_process(tmp_path / "data", {"model": IDENTITY, "traces": make_llm_traces(300), "algorithm": "linear"})
    with run_server(tmp_path / "data", extra_env=env) as srv, PredictorClient(srv.url) as client:
        assert client.health().model_dump().get("auto_retrain") is True
        result = client.observe(IDENTITY, _shifted(200, 2.0, seed=5))
        assert result["drifted"] is True and result["retraining_scheduled"] is True
        deadline = time.monotonic() + 60
        while client.get_model(IDENTITY)["latest_version"] < 2:
            assert time.monotonic() < deadline, "retraining did not produce a new version"
            time.sleep(0.2)
        client.observe(IDENTITY, _shifted(300, 2.0, seed=6))
        acc = client.accuracy(IDENTITY)
        assert acc["version"] == 2 and acc["drifted"] is False
        assert 0.84 <= acc["interval_coverage"]["0.9"] <= 0.96


def test_an_observation_whose_upload_ends_after_sigterm_is_recorded_and_schedules_no_retraining(tmp_path):
    # An /observe the stopping server still holds (its body still being received) that makes
    # a retraining due: the retrainer was shut down at the signal, and scheduling one there
    # answered a 500 after the observations were recorded (a client's retry counted them twice).
    import orjson

    env = {"PREDICTOR_AUTO_RETRAIN": "1", "PREDICTOR_RETRAIN_MIN_OBSERVATIONS": "50"}
    trained_in_process(tmp_path / "data", {"model": IDENTITY, "traces": make_llm_traces(300), "algorithm": "linear"})
    body = orjson.dumps({"model": IDENTITY, "traces": make_llm_traces(60, seed=5)})
    with run_server(tmp_path / "data", extra_env=env) as srv:
        head, payload = post_across_sigterm(srv, "/observe", body)
        assert head.startswith(b"HTTP/1.1 200"), head + payload
        result = orjson.loads(payload)
        assert result["accepted"] == 60 and result["retraining_scheduled"] is False
        assert srv.process.wait(timeout=30) is not None
    # Recorded once, nothing decided: the model is still due, and the next start's first
    # /observe of it schedules the retraining.
    with run_server(tmp_path / "data", extra_env=env) as srv, PredictorClient(srv.url) as client:
        accuracy = client.accuracy(IDENTITY, recent=0)
        assert accuracy["observations"] == 60 and accuracy["retraining"] == []
        assert client.observe(IDENTITY, make_llm_traces(1, seed=6))["retraining_scheduled"] is True
