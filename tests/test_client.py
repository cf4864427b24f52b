"""The Python clients against a real server: typed answers, the seed's API, failures."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import orjson
import pytest

from swarmpilot_predictor.client import (
    AsyncPredictorClient,
    EvaluationResponse,
    InvalidRequestError,
    JobTimeoutError,
    PredictorClient,
    PredictorClientError,
    PredictorUnavailableError,
    QueueWaitEstimate,
)
from swarmpilot_predictor.identity import ModelIdentity
from swarmpilot_predictor.schemas import BatchPredictionResponse, SinglePredictionResponse, TrainResult

from .conftest import (IDENTITY, REPO_ROOT, SEED_IDENTITY, file_size_limit, make_llm_traces, run_server,
                       serve_trained)

KEY = ModelIdentity.from_parts(IDENTITY).key
@pytest.fixture(scope="module")
def trained_server(tmp_path_factory):
    with serve_trained(tmp_path_factory.mktemp("client") / "data", [(IDENTITY, 0), (SEED_IDENTITY, 1)]) as srv:
        yield srv


def test_the_module_exports_the_clients_their_errors_and_the_types_they_take_and_answer():
    # Type checkers (pyright, mypy --strict) take from a typed package only the names a module
    # exports: "TrainResult" is not exported from module "swarmpilot_predictor.client".
    import swarmpilot_predictor.client as client_module

    names: dict = {}
    exec("from swarmpilot_predictor.client import *", names)
    for name in ("PredictorClient", "AsyncPredictorClient", "PredictorClientError", "PredictorUnavailableError",
                 "InvalidRequestError", "JobTimeoutError", "QueueWaitEstimate", "IdentityLike", "ModelIdentity",
                 "HealthResponse", "ModelsResponse", "TrainResult", "SinglePredictionResponse",
                 "BatchPredictionResponse", "PredictionResult", "EvaluationResponse", "RunningTask", "CompletionTime"):
        assert names[name] is getattr(client_module, name)
    assert names["TrainResult"] is TrainResult and names["ModelIdentity"] is ModelIdentity
    # ... and not the modules and helpers it uses (a star import took numpy as np, httpx, os, ...)
    assert not {"np", "httpx", "os", "orjson", "BaseModel", "identity_parts"} & names.keys()

def _load_example(name: str):
    # By path: a dependency installs an unrelated top-level package called `examples`.
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_typed_answers_for_every_prediction_endpoint(trained_server):
    with PredictorClient(trained_server.url) as client:
        assert client.health().status == "healthy" and client.ping() == {"status": "ok"}
        models = client.list_models()
        assert {m["model_type"] for m in models.models} == {"llm", "gpt-3.5-turbo"}
        single = client.predict_single(IDENTITY, {"input_tokens": 100, "output_tokens": 50}, quantiles=[0.1, 0.5, 0.9])
        assert isinstance(single, SinglePredictionResponse)
        q = single.results.quantile_predictions
        assert single.results.quantiles == [0.1, 0.5, 0.9] and q[0] < q[1] < q[2]
        # Truth at these features is about 20 + 2 + 600 = 622 ms.
        assert 500 < q[1] < 750
        batch = client.predict_batch(IDENTITY, [{"input_tokens": 100, "output_tokens": 50}] * 3)
        assert isinstance(batch, BatchPredictionResponse)
        assert batch.summary.success == 3
        assert batch.expect == pytest.approx(3 * batch.results[0].expect, rel=1e-9)
        lean = client.predict_batch(IDENTITY, [{"input_tokens": 100, "output_tokens": 50}] * 3, total_distribution=False)
        assert lean.total_quantiles is None and lean.total_interval is None and len(batch.total_quantiles) == 4
        assert (lean.expect, lean.error, lean.results) == (batch.expect, batch.error, batch.results)
        detail = client.get_model(IDENTITY)
        assert detail["key"] == KEY


def test_a_large_batch_answer_is_read_whole_and_leaves_the_collector_as_it_was(trained_server):
    import gc

    traces = [{"input_tokens": 100 + i % 900, "output_tokens": 50 + i % 200} for i in range(6000)]
    with PredictorClient(trained_server.url, timeout=120) as client:
        raw = client._http.post("/predict/batch/" + "/".join(quote(v, safe="") for v in IDENTITY.values()),
                               json={"trace": traces})
        assert len(raw.content) > (1 << 20)  # parsed with the cyclic collector paused
        expected = orjson.loads(raw.content)
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            try:
                batch = client.predict_batch(IDENTITY, traces)
                assert gc.isenabled() is enabled
            finally:
                gc.enable()
            assert batch.summary.success == 6000 and batch.total_quantiles == expected["total_quantiles"]
            assert [r.model_dump(exclude_unset=True) for r in batch.results] == expected["results"]


def test_numpy_numbers_are_sent_as_json_numbers(trained_server):
    # Schedulers hold features and levels in numpy arrays.
    levels = np.array([0.1, 0.5, 0.9])
    traces = [{"input_tokens": np.int64(100), "output_tokens": np.float32(50.0)}]
    with PredictorClient(trained_server.url) as client:
        got = client.predict_batch(IDENTITY, traces, quantiles=list(levels))
        plain = client.predict_batch(IDENTITY, [{"input_tokens": 100, "output_tokens": 50.0}], quantiles=[0.1, 0.5, 0.9])
    assert got.results[0].quantile_predictions == plain.results[0].quantile_predictions
    # A column slice of a matrix is not contiguous: orjson takes it only through .tolist().
    from swarmpilot_predictor.client import _dumps

    column = np.array([[0.1, 7.0], [0.5, 7.0], [0.9, 7.0]])[:, 0]
    assert not column.flags.c_contiguous
    assert _dumps({"levels": column, "n": np.int32(3)}) == b'{"levels":[0.1,0.5,0.9],"n":3}'


def test_queue_wait_and_instance_choice(trained_server):
    example = _load_example("scheduler_queue_wait")
    Instance, choose_instance = example.Instance, example.choose_instance

    with PredictorClient(trained_server.url) as client:
        queue = [{"input_tokens": 200, "output_tokens": 100}] * 5
        est = client.queue_wait(IDENTITY, queue, quantiles=[0.5, 0.9, 0.99])
        assert isinstance(est, QueueWaitEstimate)
        one = client.predict_single(IDENTITY, queue[0]).results
        assert est.tasks == 5
        assert est.expect == pytest.approx(5 * one.expect, rel=1e-9)
        # Independent tasks: the total's variance grows like n (its spread like sqrt(n), not n).
        assert est.error == pytest.approx(np.sqrt(5) * one.error, rel=1e-6)
        assert est.quantile(0.5) < est.quantile(0.9) < est.quantile(0.99)
        # Asked for, the model's factor common to them all widens it (README, Modelling).
        tau = client.get_model(IDENTITY, version=client.get_model(IDENTITY)["latest_version"])["metrics"]["shared_log_sd"]
        assert 0 < tau < 0.05
        shared = client.queue_wait(IDENTITY, queue, quantiles=[0.5, 0.9, 0.99], shared_factor=True)
        tau *= np.sqrt(1 - 1 / 5)  # five tasks alike: each holds a fifth of the factor's part already
        var = np.exp(tau**2) * 5 * one.error**2 + np.expm1(tau**2) * (5 * one.expect) ** 2
        assert shared.expect == pytest.approx(est.expect, rel=1e-9)
        assert shared.error == pytest.approx(np.sqrt(var), rel=1e-6) and shared.error > est.error
        assert shared.quantile(0.99) > est.quantile(0.99)
        busy = Instance("busy", IDENTITY, queue)
        idle = Instance("idle", IDENTITY, [])
        best, scores = choose_instance(client, [busy, idle], {"input_tokens": 10, "output_tokens": 10})
        assert best.name == "idle" and scores["idle"] < scores["busy"]
        # The chance to be done within an objective: the busy instance's p90 is the line.
        chances = example.chances_within(client, [busy, idle], {"input_tokens": 10, "output_tokens": 10},
                                         scores["busy"])
        assert chances["busy"] == pytest.approx(0.9, abs=1e-5) and chances["idle"] > 0.999999
        # An instance whose running task is past all the model knows (stuck) is not chosen,
        # though its wait, counting that task 0, is the shortest; its chance is 0.
        hung = Instance("hung", IDENTITY, [], running=dict(queue[0]), started=time.monotonic() - 1e6)
        best, scores = choose_instance(client, [busy, hung], {"input_tokens": 10, "output_tokens": 10})
        assert best.name == "busy" and scores["hung"] == float("inf")
        # With every instance stuck none is chosen (the first was, behind its hung task).
        hung_too = Instance("hung-too", IDENTITY, queue, running=dict(queue[0]), started=time.monotonic() - 1e6)
        assert choose_instance(client, [hung, hung_too], {"input_tokens": 10, "output_tokens": 10}) == (
            None, {"hung": float("inf"), "hung-too": float("inf")})
        assert example.chances_within(client, [hung], {"input_tokens": 10, "output_tokens": 10}, 1e9) == {"hung": 0.0}
        # The queued tasks likely to miss an objective: those whose completion passes it at their median.
        line = client.queue_wait(IDENTITY, queue[:3], quantiles=[0.5]).quantile(0.5)
        assert example.tasks_at_risk(client, busy, line * 0.99) == [2, 3, 4]
        assert example.tasks_at_risk(client, busy, line * 0.99, below=0.0) == []
        # A task that cannot be predicted would be left out of the wait: an error, unless asked for.
        broken = [*queue, {"input_tokens": 10}]
        with pytest.raises(PredictorClientError, match=r"1 of 6 queued tasks .*trace\[5\]: .*output_tokens"):
            client.queue_wait(IDENTITY, broken)
        part = client.queue_wait(IDENTITY, broken, quantiles=[0.5, 0.9, 0.99], partial=True)
        assert (part.tasks, part.failed) == (5, 1) and part.expect == pytest.approx(est.expect, rel=1e-9)
        # The version that answered, and a lookup table's wait, as predict_batch gives it.
        assert est.model_version == client.get_model(IDENTITY)["latest_version"]
        client.generate_table(IDENTITY, b'{"input_tokens": 200, "output_tokens": 100}\n', table_name="wait.json")
        table = client.predict_batch(IDENTITY, queue, 0.9, [0.5, 0.9, 0.99], lookup_table_name="wait.json")
        for waited in (client.queue_wait(IDENTITY, queue, lookup_table_name="wait.json"),
                       asyncio.run(_async_queue_wait(trained_server.url, queue, "wait.json"))):
            assert (waited.expect, waited.quantile_predictions) == (table.expect, table.total_quantiles)
        assert client.queue_wait(IDENTITY, []).model_version is None


def test_several_queues_waits_in_one_request_through_both_clients(trained_server):
    queues = {"gpu-0": [{"input_tokens": 500, "output_tokens": 400, "elapsed_ms": 1000.0},
                        *[{"input_tokens": 200, "output_tokens": 100}] * 3],
              "gpu-1": [{"input_tokens": 100, "output_tokens": 50}] * 6, "gpu-2": []}
    with PredictorClient(trained_server.url) as client:
        waits = client.queue_waits(IDENTITY, queues, quantiles=[0.5, 0.9], shared_factor=True)
        assert list(waits) == list(queues)
        for name, traces in queues.items():  # each as its own queue_wait answers it
            alone = client.queue_wait(IDENTITY, traces, quantiles=[0.5, 0.9], shared_factor=True)
            got, want = waits[name].model_dump(), alone.model_dump()
            for key in ("quantile_predictions", "interval", "expect", "error"):
                assert got.pop(key) == pytest.approx(want.pop(key), rel=1e-12)
            assert got == want
        assert waits["gpu-2"].expect == 0 and waits["gpu-0"].tasks == 4
        # A running task past every runtime its model reaches counts 0: the wait names it stuck.
        stuck = {"gpu-3": [*queues["gpu-1"][:2], {**queues["gpu-0"][0], "elapsed_ms": 1e9}], "gpu-0": queues["gpu-0"]}
        for got in (client.queue_waits(IDENTITY, stuck), {name: client.queue_wait(IDENTITY, t) for name, t in stuck.items()}):
            assert (got["gpu-3"].stuck, got["gpu-0"].stuck, got["gpu-3"].tasks) == ([2], [], 3)
            assert [(r.index, r.elapsed_level) for r in got["gpu-3"].running] == [(2, 1.0)]
            assert [r.index for r in got["gpu-0"].running] == [0] and 0 < got["gpu-0"].running[0].elapsed_level < 1
            assert got["gpu-3"].expect == pytest.approx(client.queue_wait(IDENTITY, stuck["gpu-3"][:2]).expect, rel=1e-9)
        # A task that cannot be predicted is named by queue and place, unless partial waits are asked for.
        broken = {**queues, "gpu-1": [*queues["gpu-1"], {"input_tokens": 10}]}
        with pytest.raises(PredictorClientError, match=r"1 of 11 queued tasks .*queue 'gpu-1' trace\[6\]: .*output_tokens"):
            client.queue_waits(IDENTITY, broken)
        part = client.queue_waits(IDENTITY, broken, quantiles=[0.5, 0.9], partial=True)
        assert (part["gpu-1"].tasks, part["gpu-1"].failed) == (6, 1)
        assert part["gpu-1"].expect == pytest.approx(waits["gpu-1"].expect, rel=1e-9)
        # A queue none of whose tasks could be predicted says why by its own tasks' errors.
        with pytest.raises(PredictorClientError, match=r"no task of queue 'x' could be predicted: trace\[0\]: .*"
                                                       r"output_tokens[^;]*$"):
            client.queue_waits(IDENTITY, {**broken, "x": [{"input_tokens": 10}]}, partial=True)
        # Mistakes are named before sending, or by the service's 422.
        with pytest.raises(InvalidRequestError, match="queues must be a mapping") as err:
            client.queue_waits(IDENTITY, [queues["gpu-1"]])
        assert err.value.field == "queues"
        with pytest.raises(InvalidRequestError, match=r"queues\.gpu-1 must be a list of traces"):
            client.queue_waits(IDENTITY, {"gpu-1": 5})
        for body, field in (({}, "queues"), ({"a": [{"input_tokens": 1, "output_tokens": 1}]}, "quantiles")):
            with pytest.raises(PredictorClientError) as err:
                client.queue_waits(IDENTITY, body, quantiles=[1.5] if field == "quantiles" else [0.5])
            assert err.value.status_code == 422 and err.value.field == field
        # A lookup table answers them as it answers each queue's own wait.
        client.generate_table(IDENTITY, b'{"input_tokens": 200, "output_tokens": 100}\n{"input_tokens": 100, '
                                        b'"output_tokens": 50}\n', table_name="queues.json")
        tabled = {"gpu-1": queues["gpu-1"], "gpu-3": queues["gpu-0"][1:]}
        from_table = client.queue_waits(IDENTITY, tabled, quantiles=[0.5, 0.9], lookup_table_name="queues.json")
        for name, traces in tabled.items():
            alone = client.queue_wait(IDENTITY, traces, quantiles=[0.5, 0.9], lookup_table_name="queues.json")
            assert from_table[name].model_dump() == {**alone.model_dump(), "model_version": None}
        with pytest.raises(PredictorClientError) as err:
            client.queue_waits(IDENTITY, tabled, lookup_table_name="queues.json", version=1)
        assert err.value.status_code == 422 and err.value.field == "version"

    async def both() -> dict:
        async with AsyncPredictorClient(trained_server.url) as client:
            return await client.queue_waits(IDENTITY, queues, quantiles=[0.5, 0.9], shared_factor=True)

    assert asyncio.run(both()) == waits


def test_when_each_queued_task_is_done_through_both_clients(trained_server):
    # A scheduler asks when each task it queued on an instance will be done (each request's
    # own latency objective), not only when the queue drains.
    queues = {"gpu-0": [{"input_tokens": 500, "output_tokens": 400, "elapsed_ms": 1000.0},
                        *[{"input_tokens": 200, "output_tokens": 100}] * 3, {"input_tokens": 900, "output_tokens": 50}],
              "gpu-1": [], "gpu-2": [{"input_tokens": 100, "output_tokens": 50}]}
    with PredictorClient(trained_server.url) as client:
        waits = client.queue_waits(IDENTITY, queues, quantiles=[0.5, 0.9], deadline_ms=5000.0, completion_times=True)
        done = waits["gpu-0"].completion
        assert [c.index for c in done] == [0, 1, 2, 3, 4] and waits["gpu-1"].completion == []
        assert (done[-1].expect, done[-1].error, done[-1].quantiles, done[-1].interval, done[-1].deadline_probability) == (
            waits["gpu-0"].expect, waits["gpu-0"].error, waits["gpu-0"].quantile_predictions, waits["gpu-0"].interval,
            waits["gpu-0"].deadline_probability)
        # Each task is done when the queue of it and those ahead of it would drain.
        for c in done:
            ahead = client.queue_wait(IDENTITY, queues["gpu-0"][:c.index + 1], quantiles=[0.5, 0.9], deadline_ms=5000.0)
            assert c.expect == pytest.approx(ahead.expect, rel=1e-9)
            np.testing.assert_allclose(c.quantiles, ahead.quantile_predictions, rtol=3e-3)
            assert c.deadline_probability == pytest.approx(ahead.deadline_probability, abs=3e-3)
        assert [c.deadline_probability for c in done] == sorted((c.deadline_probability for c in done), reverse=True)
        # One queue's, through queue_wait; none where not asked for.
        alone = client.queue_wait(IDENTITY, queues["gpu-0"], quantiles=[0.5, 0.9], deadline_ms=5000.0,
                                  completion_times=True)
        assert alone.completion == done and client.queue_waits(IDENTITY, queues)["gpu-0"].completion is None
        # Asked in any other form, the service names the field.
        r = httpx.post(f"{trained_server.url}/predict/queues/{'/'.join(quote(v, safe='') for v in IDENTITY.values())}",
                       json={"queues": queues, "completion_times": "yes"})
        assert r.status_code == 422 and r.json()["field"] == "completion_times"

    async def both() -> dict:
        async with AsyncPredictorClient(trained_server.url) as client:
            return (await client.queue_waits(IDENTITY, queues, quantiles=[0.5, 0.9], deadline_ms=5000.0,
                                             completion_times=True),
                    await client.queue_wait(IDENTITY, queues["gpu-0"], quantiles=[0.5, 0.9], deadline_ms=5000.0,
                                            completion_times=True))

    assert asyncio.run(both()) == (waits, alone)


def test_a_queue_asked_for_its_completion_times_is_refused_as_any_queue(trained_server):
    # queue_wait asks for completion times as the one queue of a queues request: its
    # refusals named that queue ('queue', which the caller never named) and its traces
    # "queues['queue'][1]", where the same call without them says "trace[1]".
    task = {"input_tokens": 200, "output_tokens": 100}
    cases = ([task, {"output_tokens": 5}], [{"output_tokens": 5}], [task, 5], "not traces")

    def refusals(wait) -> list:
        out = []
        for traces in cases:
            with pytest.raises(PredictorClientError) as err:
                wait(traces)
            out.append((type(err.value), str(err.value), getattr(err.value, "field", None)))
        return out

    with PredictorClient(trained_server.url) as client:
        plain = refusals(lambda traces: client.queue_wait(IDENTITY, traces))
        assert refusals(lambda traces: client.queue_wait(IDENTITY, traces, completion_times=True)) == plain
        assert all("'queue'" not in message for _, message, _ in plain), plain
        kept = client.queue_wait(IDENTITY, cases[0], partial=True, completion_times=True)
        assert kept.failed == 1 and [c.index for c in kept.completion] == [0]

    async def both() -> list:
        async with AsyncPredictorClient(trained_server.url) as client:
            out = []
            for traces in cases:
                with pytest.raises(PredictorClientError) as err:
                    await client.queue_wait(IDENTITY, traces, completion_times=True)
                out.append((type(err.value), str(err.value), getattr(err.value, "field", None)))
            return out

    assert asyncio.run(both()) == plain


def test_a_deadline_through_both_clients(trained_server):
    # A scheduler asks how likely a task, or a queue, is done within its SLO.
    task = {"input_tokens": 200, "output_tokens": 100}
    queue = [task, {"input_tokens": 100, "output_tokens": 50}]
    with PredictorClient(trained_server.url) as client:
        median = client.predict_single(IDENTITY, task, quantiles=[0.5]).results.quantile_predictions[0]
        one = client.predict_single(IDENTITY, task, deadline_ms=median).results
        assert one.deadline_probability == pytest.approx(0.5, abs=1e-6)
        batch = client.predict_batch(IDENTITY, queue, quantiles=[0.5, 0.9], deadline_ms=median)
        assert batch.results[0].deadline_probability == one.deadline_probability
        assert batch.total_deadline_probability <= min(r.deadline_probability for r in batch.results)
        slo = batch.total_quantiles[1]  # the queue's own 0.9 quantile
        wait = client.queue_wait(IDENTITY, queue, quantiles=[0.5, 0.9], deadline_ms=slo)
        assert wait.deadline_ms == slo and wait.deadline_probability == pytest.approx(0.9, abs=1e-5)
        waits = client.queue_waits(IDENTITY, {"gpu-0": queue, "idle": []}, quantiles=[0.5, 0.9], deadline_ms=slo)
        assert waits["gpu-0"].deadline_probability == pytest.approx(wait.deadline_probability, rel=1e-9)
        assert waits["idle"].deadline_probability == 1.0
        # Without one, none is asked for or answered.
        assert client.queue_wait(IDENTITY, queue).deadline_probability is None
        assert client.predict_single(IDENTITY, task).results.deadline_probability is None
        # A deadline that is no number is refused before sending; one the service refuses is its 422.
        for bad in ("100", True, [100]):
            with pytest.raises(InvalidRequestError, match="deadline_ms must be a number of milliseconds") as err:
                client.predict_single(IDENTITY, task, deadline_ms=bad)
            assert err.value.field == "deadline_ms"
        for bad in (0, -1.5):
            with pytest.raises(PredictorClientError) as err:
                client.predict_batch(IDENTITY, queue, deadline_ms=bad)
            assert (err.value.status_code, err.value.field) == (422, "deadline_ms")
            assert "greater than 0" in err.value.message

    async def both() -> tuple:
        async with AsyncPredictorClient(trained_server.url) as client:
            single = await client.predict_single(IDENTITY, task, deadline_ms=median)
            waited = await client.queue_waits(IDENTITY, {"gpu-0": queue, "idle": []}, quantiles=[0.5, 0.9],
                                              deadline_ms=slo)
            return single.results.deadline_probability, waited

    assert asyncio.run(both()) == (one.deadline_probability, waits)


def test_evaluate_through_both_clients(trained_server):
    # A scheduler checks a model on its own instance's measured traces before trusting it.
    measured = make_llm_traces(300, seed=41)
    with PredictorClient(trained_server.url) as client:
        answer = client.evaluate(IDENTITY, measured)
        assert isinstance(answer, EvaluationResponse) and answer.evaluated == 300 and answer.rejected == []
        assert abs(answer.interval_coverage["0.9"] - 0.9) < 0.06 and answer.model_key == KEY
        assert client.evaluate(IDENTITY, measured, version=1).version == 1
        slower = client.evaluate(IDENTITY, [{**t, "runtime_ms": t["runtime_ms"] * 2} for t in measured])
        assert slower.coverage["0.5"] < 0.05 and slower.calibration["corrected_p_value"] < 1e-9
        for bad in (1.5, "1", True):  # refused before sending
            with pytest.raises(InvalidRequestError) as err:
                client.evaluate(IDENTITY, measured, version=bad)
            assert err.value.field == "version"
        for bad, status in ((0, 422), (99, 404)):  # the service's answers
            with pytest.raises(PredictorClientError) as err:
                client.evaluate(IDENTITY, measured, version=bad)
            assert (err.value.status_code, err.value.field) == (status, "version")

    async def evaluated() -> EvaluationResponse:
        async with AsyncPredictorClient(trained_server.url) as client:
            return await client.evaluate(IDENTITY, measured)

    assert asyncio.run(evaluated()) == answer


def test_a_prediction_may_name_the_stored_version_that_answers(trained_server):
    # A rollback or a comparison needed a delete: any stored version now answers when named.
    ident = {**IDENTITY, "software_version": "versions"}
    task = {"input_tokens": 200, "output_tokens": 100}
    slow = [{**t, "runtime_ms": 3 * t["runtime_ms"]} for t in make_llm_traces(120, seed=5)]
    with PredictorClient(trained_server.url) as client:
        client.train({"model": ident, "traces": make_llm_traces(120, seed=5), "algorithm": "linear"})
        first = client.predict_single(ident, task, quantiles=[0.5]).results.quantile_predictions[0]
        assert client.train({"model": ident, "traces": slow, "algorithm": "linear"}).version == 2
        latest = client.predict_single(ident, task, quantiles=[0.5]).results
        old = client.predict_single(ident, task, quantiles=[0.5], version=1).results
        assert (latest.model_version, old.model_version) == (2, 1)
        assert old.quantile_predictions[0] == first and latest.quantile_predictions[0] > 2 * first
        batch = client.predict_batch(ident, [task] * 3, quantiles=[0.5], version=1)
        assert [r.quantile_predictions[0] for r in batch.results] == pytest.approx([first] * 3, rel=1e-12)
        waited = client.queue_wait(ident, [task] * 3, version=1)
        assert waited.model_version == 1 and waited.expect == pytest.approx(batch.expect)
        assert asyncio.run(_async_single(trained_server.url, ident, task, 1)) == first
        # A version that is no integer is refused before sending, as get_model's is (None: no status).
        for kw, status in (({"version": 9}, 404), ({"version": 0}, 422), ({"version": "1"}, None), ({"version": True}, None),
                           ({"version": 1.0}, None), ({"version": 1, "lookup_table": True}, 422)):
            with pytest.raises(PredictorClientError) as err:
                client.predict_single(ident, task, **kw)
            assert (err.value.status_code, err.value.field) == (status, "version"), err.value.message
        with pytest.raises(PredictorClientError, match="has no version 9") as err:
            client.predict_batch(ident, [task], version=9)
        assert err.value.field == "version"
        client.delete_model(ident)  # the module's server is shared: leave it as found


async def _async_single(url: str, ident: dict, task: dict, version: int) -> float:
    async with AsyncPredictorClient(url) as client:
        return (await client.predict_single(ident, task, quantiles=[0.5], version=version)).results.quantile_predictions[0]


async def _async_queue_wait(url: str, queue: list[dict], table: str) -> QueueWaitEstimate:
    async with AsyncPredictorClient(url) as client:
        return await client.queue_wait(IDENTITY, queue, lookup_table_name=table)


def test_errors_carry_status_and_message(trained_server):
    with PredictorClient(trained_server.url) as client:
        with pytest.raises(PredictorClientError) as nf:
            client.predict_single(("nope", None, None, None, None), {"input_tokens": 1, "output_tokens": 1})
        assert nf.value.status_code == 404 and "nope" in nf.value.message
        with pytest.raises(PredictorClientError) as bad:
            client.predict_single(IDENTITY, {"input_tokens": 1})
        assert bad.value.status_code == 422 and "output_tokens" in bad.value.message
        with pytest.raises(PredictorClientError) as conf:
            client.predict_single(IDENTITY, {"input_tokens": 1, "output_tokens": 1}, confidence_level=1.0)
        assert conf.value.status_code == 422 and conf.value.field == "confidence_level"
        with pytest.raises(PredictorClientError) as amb:
            client.predict_single((None, None, None, None, None), {"input_tokens": 1, "output_tokens": 1})
        assert amb.value.status_code == 409


def test_train_with_files_and_delete(trained_server, tmp_path):
    path = tmp_path / "traces.jsonl"
    import orjson

    path.write_bytes(b"\n".join(orjson.dumps(t) for t in make_llm_traces(120, seed=3)))
    ident = {**IDENTITY, "software_version": "9.9"}
    with PredictorClient(trained_server.url) as client:
        result = client.train({"model": ident, "traces": "traces.jsonl", "algorithm": "linear"}, files={"traces.jsonl": path})
        assert isinstance(result, TrainResult) and result.version == 1
        assert result.metrics["rows_used"] == 120
        deleted = client.delete_model(ident)
        assert deleted["deleted_versions"] == [1]
        with pytest.raises(PredictorClientError) as gone:
            client.get_model(ident)
        assert gone.value.status_code == 404


def test_both_clients_send_the_api_key_the_service_asks_for(tmp_path):
    key = "client-key-0123456789abcdef"
    ident = {**IDENTITY, "software_version": "keyed"}
    with run_server(tmp_path / "data", {"PREDICTOR_API_KEY": key}) as srv:
        with PredictorClient(srv.url) as anonymous:
            with pytest.raises(PredictorClientError) as refused:
                anonymous.train({"model": ident, "traces": make_llm_traces(100), "algorithm": "linear"})
            assert refused.value.status_code == 401 and refused.value.field == "authorization"
        with PredictorClient(srv.url, api_key=key + "x") as wrong:
            with pytest.raises(PredictorClientError, match="not this service's") as refused:
                wrong.train({"model": ident, "traces": make_llm_traces(100), "algorithm": "linear"})
            assert refused.value.status_code == 401
        with PredictorClient(srv.url, api_key=key) as client:
            assert client.train({"model": ident, "traces": make_llm_traces(100), "algorithm": "linear"}).version == 1

        async def async_calls():
            async with AsyncPredictorClient(srv.url, api_key=key) as keyed, AsyncPredictorClient(srv.url) as anonymous:
                expect = (await anonymous.predict_single(ident, make_llm_traces(1)[0])).results.expect
                with pytest.raises(PredictorClientError) as refused:
                    await anonymous.delete_model(ident)
                deleted = await keyed.delete_model(ident)
                return expect, refused.value.status_code, deleted["deleted_versions"]

        expect, status, deleted = asyncio.run(async_calls())
        assert expect > 0 and status == 401 and deleted == [1]
    for bad in ("", "two words", "ключ-0123456789abcdef", 12345678901234567):
        with pytest.raises(ValueError, match="api_key must be") as said:
            PredictorClient("http://127.0.0.1:1", api_key=bad)
        assert str(bad) not in str(said.value) or bad == ""


def test_an_api_key_beside_a_password_in_the_base_url_is_refused_naming_it(port):
    # httpx sends a URL's user:password as the Authorization header in place of the key's:
    # the service answered 401 "send the header 'Authorization: Bearer ...'" to a client given the key.
    key = "client-key-0123456789abcdef"
    for make in (PredictorClient, AsyncPredictorClient):
        with pytest.raises(InvalidRequestError, match="api_key and a user and password") as err:
            make(f"http://user:s3cret@127.0.0.1:{port}", api_key=key)
        assert err.value.field == "api_key" and key not in err.value.message and "s3cret" not in err.value.message
        make(f"http://user:s3cret@127.0.0.1:{port}")  # a proxy's basic auth alone is the URL's to send


def test_errors_never_quote_a_password_in_the_base_url(port):
    # A proxy's basic auth in the URL (http://user:password@host): "cannot reach the
    # predictor at http://user:s3cret@..." put the password in every log of the error.
    url = f"http://user:s3cret@127.0.0.1:{port}/pre"
    with PredictorClient(url, retries=0) as client, pytest.raises(PredictorUnavailableError) as sync_err:
        client.ping()

    async def ping() -> None:
        async with AsyncPredictorClient(url, retries=0) as client:
            await client.ping()

    with pytest.raises(PredictorUnavailableError) as async_err:
        asyncio.run(ping())
    for err in (sync_err, async_err):
        assert err.value.message == (f"cannot reach the predictor at http://user:***@127.0.0.1:{port}/pre: "
                                     "ConnectError: [Errno 111] Connection refused")
    with pytest.raises(InvalidRequestError) as refused:
        PredictorClient("http://user:s3cret@127.0.0.1:99999")
    assert refused.value.field == "base_url" and "'http://user:***@127.0.0.1:99999'" in refused.value.message


def test_the_walk_through_vision_model_knows_first_runs(trained_server):
    # The README's walk-through: the shipped ResNet-50 trace and config, uploaded together.
    import orjson

    config = orjson.loads((REPO_ROOT / "examples" / "train_vision.json").read_bytes())["config"]
    ident = {**config["model"], "software_version": "walk-through"}
    trace_file = REPO_ROOT / "examples" / "data" / "h100_resnet50_vision.jsonl"
    with PredictorClient(trained_server.url) as client:
        result = client.train({**config, "model": ident}, files={config["traces"]: trace_file})
        assert result.metrics["data"]["columns_derived"] == {
            "first_of_shape": "first run of its shape (batch_size, image_size) by 'ts'"}
        task = {"batch_size": 8, "image_size": 224}  # a shape the trace ran
        warm = client.predict_single(ident, task, quantiles=[0.5]).results.quantile_predictions[0]
        first = client.predict_single(ident, {**task, "first_of_shape": True}, quantiles=[0.5]).results.quantile_predictions[0]
        before = client.predict_single(ident, {**task, "ts": 0}, quantiles=[0.5]).results.quantile_predictions[0]
        assert before == first  # before the trace began, the shape had not run either
        # In the trace a repeat takes about 4.4 ms and a shape's first run about 60 ms.
        assert 3.5 < warm < 6 and 45 < first < 80
        derived = client.get_model(ident)["features"][-1]
        assert derived["name"] == "first_of_shape" and derived["kind"] == "derived"
        assert derived["shape"] == ["batch_size", "image_size"] and derived["timestamp"] == "ts"
        client.delete_model(ident)


def test_the_seeds_metadata_names_a_version_by_a_number_as_a_trace_does(trained_server):
    # The seed's metadata is a trace: 2 and 2.0 name version "2" there (README, Traces);
    # 2.0 was sent as the URL's segment "2.0" and found no model.
    ident = {**IDENTITY, "model_name": "numbered", "software_version": "2"}
    trace = {"input_tokens": 300, "output_tokens": 120}
    with PredictorClient(trained_server.url) as client:
        client.train({"model": ident, "traces": make_llm_traces(120, seed=5), "algorithm": "linear"})
        try:
            want = client.predict_single(ident, trace, quantiles=[0.5]).results.quantile_predictions[0]
            for version in (2, 2.0, np.float64(2.0), "2"):
                metadata = {"model_name": "numbered", "hardware": ident["hardware"], "software_version": version,
                            **trace}
                assert client.get_median_prediction(ident["model_type"], metadata) == want, version

            async def seed_median(version):
                async with AsyncPredictorClient(trained_server.url) as async_client:
                    return await async_client.get_median_prediction(
                        ident["model_type"], {"model_name": "numbered", "software_version": version, **trace})

            assert asyncio.run(seed_median(2.0)) == want
            with pytest.raises(PredictorClientError) as err:  # a number that names no version: the service says so
                client.get_median_prediction(ident["model_type"],
                                             {"model_name": "numbered", "software_version": 2.5, **trace})
            assert err.value.status_code == 404 and "2.5" in str(err.value)
        finally:
            client.delete_model(ident)


def test_async_client_matches_sync(trained_server):
    trace = {"input_tokens": 300, "output_tokens": 120}

    async def run():
        async with AsyncPredictorClient(trained_server.url) as client:
            assert await client.is_available() and await client.ping() == {"status": "ok"}
            single, batch, median = await asyncio.gather(
                client.predict_single(IDENTITY, trace),
                client.predict_batch(IDENTITY, [trace, trace]),
                client.get_median_prediction("gpt-3.5-turbo", {"hardware": "A100", **trace}),
            )
            with pytest.raises(PredictorClientError) as err:
                await client.predict_single(IDENTITY, {"input_tokens": 1})
            return single, batch, median, err.value.status_code

    single, batch, median, code = asyncio.run(run())
    with PredictorClient(trained_server.url) as client:
        assert client.predict_single(IDENTITY, trace).results.quantile_predictions == single.results.quantile_predictions
        assert client.get_median_prediction("gpt-3.5-turbo", {"hardware": "A100", **trace}) == median
    assert batch.summary.success == 2 and code == 422


def test_the_async_client_writes_a_long_batch_off_the_event_loop_and_answers_as_the_sync_one(trained_server,
                                                                                              monkeypatch):
    import threading

    import swarmpilot_predictor.client as client_module

    writers: list[threading.Thread] = []
    original = client_module._dumps

    def recording(body, root=""):
        writers.append(threading.current_thread())
        return original(body, root)

    monkeypatch.setattr(client_module, "_dumps", recording)
    traces = [{"input_tokens": 10 + i % 700, "output_tokens": 1 + i % 400} for i in range(2_500)]

    async def run():
        async with AsyncPredictorClient(trained_server.url) as client:
            return threading.current_thread(), await client.predict_batch(IDENTITY, traces), \
                await client.predict_batch(IDENTITY, traces[:10])

    loop_thread, long, short = asyncio.run(run())
    assert [t is loop_thread for t in writers] == [False, True]  # the long batch's body in a thread
    with PredictorClient(trained_server.url) as client:
        sync = client.predict_batch(IDENTITY, traces)
    assert sync.results == long.results and sync.total_quantiles == long.total_quantiles
    assert sync.expect == long.expect and sync.error == long.error
    assert long.results[:10] == short.results


def test_an_answer_past_the_training_range_says_so_through_both_clients(trained_server):
    trace = {"input_tokens": 300, "output_tokens": 100_000}  # training saw 8 to 511 output tokens

    async def run():
        async with AsyncPredictorClient(trained_server.url) as client:
            return await client.predict_single(IDENTITY, trace)

    with PredictorClient(trained_server.url) as client:
        single = client.predict_single(IDENTITY, trace)
        batch = client.predict_batch(IDENTITY, [trace, {"input_tokens": 300, "output_tokens": 100}])
    assert single.results.outside_training == ["output_tokens"] == asyncio.run(run()).results.outside_training
    assert [r.outside_training for r in batch.results] == [["output_tokens"], None]


def test_nan_and_infinity_are_refused_before_sending(trained_server):
    # orjson writes NaN as null, which the service would read as a missing feature:
    # both clients refuse such a request, naming the value's place, and send nothing.
    import httpx

    sent = []

    def record(request):
        sent.append(request)
        return httpx.Response(500)

    good = {"input_tokens": 100, "output_tokens": 50}
    cases = [
        (lambda c: c.predict_single(IDENTITY, {"input_tokens": float("nan"), "output_tokens": 5}), "trace.input_tokens"),
        (lambda c: c.predict_batch(IDENTITY, [good, {**good, "output_tokens": np.float32("inf")}]), "trace[1].output_tokens"),
        (lambda c: c.queue_wait(IDENTITY, [good, good, {**good, "input_tokens": -np.inf}]), "trace[2].input_tokens"),
        (lambda c: c.predict_single(IDENTITY, good, quantiles=np.array([0.5, np.nan])), "quantiles[1]"),
        (lambda c: c.queue_waits(IDENTITY, {"a": [good]}, deadline_ms=np.float64("nan")), "deadline_ms"),
        # The seed's predict names its metadata's places as the caller does (trace.input_tokens
        # until 2026-12-08, the request body's name), and a queue's as the body does.
        (lambda c: c.predict(model_type="llm", metadata={**good, "input_tokens": float("inf")}), "metadata.input_tokens"),
        (lambda c: c.queue_waits(IDENTITY, {"gpu-0": [good, {**good, "output_tokens": math.nan}]}),
         "queues.gpu-0[1].output_tokens"),
        (lambda c: c.observe(IDENTITY, [{**good, "runtime_ms": float("nan")}]), "traces[0].runtime_ms"),
        (lambda c: c.train({"model": IDENTITY, "traces": [{"x": float("nan"), "runtime_ms": 1}]}), "config.traces[0].x"),
        (lambda c: c.train({"model": IDENTITY, "traces": [{"x": float("nan")}], "target": "x"}, files={"t.jsonl": b""}),
         "config.traces[0].x"),
        (lambda c: c.predict_single(IDENTITY, {**good, "note": "\ud800"}), "trace.note"),  # no JSON text holds it
        # ... nor a key: named escaped, so that the error can be printed and logged
        (lambda c: c.predict_single(IDENTITY, {**good, "\ud800": 1}), "trace.\\ud800"),
    ]
    with PredictorClient(trained_server.url, transport=httpx.MockTransport(record)) as client:
        for call, field in cases:
            with pytest.raises(InvalidRequestError) as err:
                call(client)
            assert isinstance(err.value, ValueError) and isinstance(err.value, PredictorClientError)
            assert err.value.field == field and err.value.message.startswith(f"{field} is ")
            assert err.value.status_code is None
            str(err.value).encode("utf-8")  # printable

    async def run():
        async with AsyncPredictorClient(trained_server.url, transport=httpx.MockTransport(record)) as client:
            with pytest.raises(InvalidRequestError) as err:
                await client.predict_batch(IDENTITY, [good, {**good, "output_tokens": np.float32("inf")}])
            return err.value.field

    assert asyncio.run(run()) == "trace[1].output_tokens"
    # A path segment "." or ".." would be resolved away, reaching another endpoint:
    # download_table(".") read the table list as if it were the table.
    with PredictorClient(trained_server.url, transport=httpx.MockTransport(record)) as client:
        for call, field in [(lambda c: c.download_table("."), "name"), (lambda c: c.delete_table(".."), "name"),
                            (lambda c: c.train_job(".."), "job_id"),
                            (lambda c: c.predict_single(("vision", "..", "*", "*", "*"), good), "identity.model_name"),
                            (lambda c: c.get_model(("vision", "\udcff", "*", "*", "*")), "identity.model_name"),
                            (lambda c: c.predict("vision", {"model_name": ".."}), "metadata.model_name")]:
            with pytest.raises(InvalidRequestError) as err:
                call(client)
            assert err.value.field == field
    assert sent == []
    # A None is a missing value and is sent as null, as before.
    with PredictorClient(trained_server.url) as client:
        with pytest.raises(PredictorClientError) as err:
            client.predict_single(IDENTITY, {"input_tokens": None, "output_tokens": 5})
        assert err.value.status_code == 422 and "input_tokens" in err.value.message


def test_a_waits_quantile_is_read_at_the_level_asked_for_even_far_in_a_tail(trained_server):
    # Levels the service answers apart: a bare tolerance of 1e-12 read 5e-13 as 1e-13, and
    # 1 - 1e-13 as 1 - 5e-13.
    queue = [{"input_tokens": 500, "output_tokens": 200}] * 2
    with PredictorClient(trained_server.url) as client:
        low = client.queue_wait(IDENTITY, queue, quantiles=[1e-13, 5e-13, 0.5])
        high = client.queue_wait(IDENTITY, queue, quantiles=[1 - 5e-13, 1 - 1e-13])
    assert low.quantile_predictions[0] < low.quantile_predictions[1]
    assert [low.quantile(q) for q in (1e-13, 5e-13, 0.5)] == low.quantile_predictions
    assert [high.quantile(q) for q in (1 - 5e-13, 1 - 1e-13)] == high.quantile_predictions
    # A level between two, or next to one, was not asked for.
    for level in (3e-13, 1e-13 + 1e-16, 1 - 3e-13):
        with pytest.raises(KeyError):
            (high if level > 0.5 else low).quantile(level)
    # Nor is a level no float holds (an OverflowError was raised), nor a NaN.
    for level in (10**400, -(10**400), math.nan):
        with pytest.raises(KeyError, match="was not requested"):
            low.quantile(level)
    # Rounding is no other level: 0.5 computed, or 1 - 5e-13 written another way.
    assert low.quantile(0.1 * 5) == low.quantile(0.5)
    assert high.quantile(1 - 0.5e-12) == high.quantile_predictions[0]


def test_the_wait_of_an_empty_queue_is_zero(trained_server):
    with PredictorClient(trained_server.url) as client:
        est = client.queue_wait(IDENTITY, [], quantiles=[0.5, 0.9])
        batch = client.predict_batch(IDENTITY, [])
    assert est.tasks == 0 and est.failed == 0 and est.expect == 0 and est.error == 0
    assert est.quantiles == [0.5, 0.9] and est.quantile_predictions == [0, 0] and est.interval == [0, 0]
    assert est.quantile(0.9) == 0
    assert batch.expect == 0 and batch.total_quantiles == [0] * len(batch.quantiles)

    async def run():
        async with AsyncPredictorClient(trained_server.url) as client:
            return await client.queue_wait(IDENTITY, [], quantiles=[0.99])

    assert asyncio.run(run()).quantile_predictions == [0]


def test_server_down_retries_then_raises_one_clear_error(port):  # nothing listens on it
    with PredictorClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.01) as client:
        assert client.is_available() is False
        with pytest.raises(PredictorUnavailableError) as err:
            client.list_models()
        assert f"127.0.0.1:{port}" in err.value.message

    async def run():
        async with AsyncPredictorClient(f"http://127.0.0.1:{port}", retries=1, backoff=0.01) as client:
            assert await client.is_available() is False
            with pytest.raises(PredictorUnavailableError):
                await client.health()

    asyncio.run(run())


def test_timeout_raises_unavailable():
    # A server that accepts connections and never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        with PredictorClient(f"http://127.0.0.1:{port}", timeout=0.5, retries=0) as client:
            with pytest.raises(PredictorUnavailableError) as err:
                client.health()
            assert "timed out" in err.value.message and "carried out" not in err.value.message
            assert client.is_available() is False
            # A call that is not repeated was sent: the service may still carry it out.
            with pytest.raises(PredictorUnavailableError) as err:
                client.observe(IDENTITY, [{"input_tokens": 1, "output_tokens": 1, "runtime_ms": 5.0}])
            assert "timed out after 0.5s" in err.value.message and "may still be carried out" in err.value.message
            # A background training answers once queued: the client's timeout holds, not a training's 30 minutes.
            started = time.monotonic()
            with pytest.raises(PredictorUnavailableError):
                client.train_background({"model": IDENTITY, "traces": make_llm_traces(5)})
            assert time.monotonic() - started < 5
    finally:
        stop.set()
        t.join()
        for c in accepted:
            c.close()
        listener.close()


def test_a_request_that_could_not_be_written_whole_is_said_not_carried_out():
    # A server that accepts and never reads: a 40 MB upload fills the socket's buffers, and
    # the write times out. The service holds part of the request, which it cannot act on;
    # the client said "it was sent, and may still be carried out; check before sending it again".
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    upload = b'{"input_tokens": 1, "output_tokens": 1, "runtime_ms": 5.0}\n' * 700_000
    config = {"model": IDENTITY, "traces": "runs.jsonl"}
    try:
        with PredictorClient(url, timeout=0.5, retries=0) as client:
            with pytest.raises(PredictorUnavailableError) as sync_err:
                client.train(config, files={"runs.jsonl": upload})

        async def send():
            async with AsyncPredictorClient(url, timeout=0.5, retries=0) as client:
                await client.train(config, files={"runs.jsonl": upload})

        thread.join()
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
        thread.start()
        with pytest.raises(PredictorUnavailableError) as async_err:
            asyncio.run(send())
    finally:
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()
    for err in (sync_err, async_err):
        assert "timed out after 0.5s (WriteTimeout)" in err.value.message
        assert "it was not sent whole, so the service has not carried it out" in err.value.message
        assert "may still be carried out" not in err.value.message


def test_an_idle_connection_is_dropped_before_the_server_would_drop_it():
    # uvicorn closes a connection idle for 5 s; httpx kept one 5 s, and a call sent on it as
    # the server closed it was lost (observe: 4 of 240 calls failed, never having arrived).
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    connections = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keeps connections open

        def setup(self):
            connections.append(self.client_address)
            super().setup()

        def do_GET(self):
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    async def async_calls(paused: threading.Event):
        async with AsyncPredictorClient(url) as client:
            await client.ping()
            await client.ping()
            paused.set()
            await asyncio.sleep(3)
            await client.ping()

    try:
        with PredictorClient(url) as client:
            client.ping()
            client.ping()
            assert len(connections) == 1  # one connection for calls in quick succession
            # The async client pauses meanwhile, in a thread of its own: one wait for both.
            paused = threading.Event()
            other = threading.Thread(target=lambda: asyncio.run(async_calls(paused)))
            other.start()
            assert paused.wait(10) and len(connections) == 2  # its own connection
            time.sleep(3)  # well under the server's 5 s
            client.ping()
            other.join()
        assert len(connections) == 4  # after a pause, each client a fresh one
    finally:
        server.shutdown()
        server.server_close()


def test_a_request_the_server_may_have_carried_out_says_so_when_the_connection_drops():
    # A training or observations sent, then the connection dropped before an answer: not
    # retried (it may have been acted on), and the error does not invite a blind retry.
    import httpx

    calls = []

    def drop(request):
        calls.append(request.url.path)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response", request=request)

    with PredictorClient("http://127.0.0.1:9", retries=2, transport=httpx.MockTransport(drop)) as client:
        with pytest.raises(PredictorUnavailableError) as err:
            client.observe(IDENTITY, [{"input_tokens": 1, "output_tokens": 1, "runtime_ms": 5.0}])
        assert calls == ["/observe"]
        assert "was sent" in err.value.message and "may have been carried out" in err.value.message
        with pytest.raises(PredictorUnavailableError) as err:
            client.health()  # a read is repeated, then reported as unreachable
        assert calls.count("/health") == 3 and "cannot reach the predictor" in err.value.message


def test_a_dropped_connection_names_its_cause_even_when_httpx_gives_none():
    import httpx

    def drop(request):
        raise httpx.ReadError("", request=request)  # what a server killed mid-answer gave

    with PredictorClient("http://127.0.0.1:9", retries=0, transport=httpx.MockTransport(drop)) as client:
        with pytest.raises(PredictorUnavailableError) as err:
            client.health()
        assert err.value.message.endswith("cannot reach the predictor at http://127.0.0.1:9: ReadError")
        with pytest.raises(PredictorUnavailableError) as err:
            client.observe(IDENTITY, [{"input_tokens": 1, "output_tokens": 1, "runtime_ms": 5.0}])
        assert "before an answer (ReadError)" in err.value.message


def test_the_async_client_reads_upload_files_off_the_event_loop(tmp_path, trained_server, monkeypatch):
    """A 200 MB trace file held every other task of the loop for 0.2 s while it was read."""
    import threading

    readers: list[threading.Thread] = []
    original = Path.read_bytes

    def recording(self):
        readers.append(threading.current_thread())
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", recording)
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(80)))
    ident = {**IDENTITY, "software_version": "off-loop"}

    async def run():
        async with AsyncPredictorClient(trained_server.url) as client:
            loop_thread = threading.current_thread()
            trained = await client.train({"model": ident, "traces": "t.jsonl", "algorithm": "linear"}, files={"t.jsonl": path})
            table = await client.generate_table(ident, path, table_name="off-loop.json")
            return loop_thread, trained, table

    loop_thread, trained, table = asyncio.run(run())
    assert trained.version == 1 and table["status"] == "successful"
    assert len(readers) == 2 and all(t is not loop_thread for t in readers)

    ident = {**IDENTITY, "software_version": "bg"}
    with PredictorClient(trained_server.url) as client:
        job = client.train_background({"model": ident, "traces": make_llm_traces(100, seed=9), "algorithm": "linear"})
        assert job["status"] == "accepted"
        result = client.wait_for_job(job["job_id"], timeout=60)
        assert result.model_key == ModelIdentity.from_parts(ident).key and result.version == 1
        assert client.train_job(job["job_id"])["status"] == "succeeded"
        bad = client.train_background({"model": ident, "traces": "/etc/passwd"})
        with pytest.raises(PredictorClientError) as err:
            client.wait_for_job(bad["job_id"], timeout=60)
        assert err.value.status_code == 422 and err.value.field == "config.traces"
        client.clear_cache()
        client.predict_single(ident, {"input_tokens": 3, "output_tokens": 4})
        client.predict_single(ident, {"input_tokens": 3, "output_tokens": 4})
        stats = client.cache_stats()
        assert stats["hits"] >= 1 and stats["entries"] >= 1
        client.delete_model(ident)

    async def run():
        async with AsyncPredictorClient(trained_server.url) as client:
            job = await client.train_background({"model": ident, "traces": make_llm_traces(100, seed=9), "algorithm": "linear"})
            return await client.wait_for_job(job["job_id"], timeout=60), await client.cache_stats()

    result, stats = asyncio.run(run())
    assert result.version == 2 and stats["enabled"] is True  # version 1 was deleted: its number is not given again


def test_waiting_for_a_job_outlasts_a_restart_of_the_service(tmp_path, port):
    # A scheduler waiting on a background training while the service restarts: the job's
    # record outlives it, but wait_for_job gave up once one poll's retries (0.3 s here) were
    # refused, its 60 s notwithstanding.
    from concurrent.futures import ThreadPoolExecutor

    data, url = tmp_path / "data", f"http://127.0.0.1:{port}"
    config = {"model": IDENTITY, "traces": make_llm_traces(100, seed=9), "algorithm": "linear"}
    with run_server(data, port=port), PredictorClient(url) as client:
        job_id = client.train_background(config)["job_id"]
        assert client.wait_for_job(job_id, timeout=60).version == 1

    def wait_sync():
        with PredictorClient(url, retries=2, backoff=0.1) as client:
            return client.wait_for_job(job_id, timeout=60, poll=0.1)

    async def wait_async():
        async with AsyncPredictorClient(url, retries=2, backoff=0.1) as client:
            return await client.wait_for_job(job_id, timeout=60, poll=0.1)

    with ThreadPoolExecutor(2) as pool:
        waits = [pool.submit(wait_sync), pool.submit(asyncio.run, wait_async())]
        time.sleep(1.0)  # refused meanwhile, poll after poll
        assert not any(w.done() for w in waits), [w.exception() for w in waits if w.done()]
        with run_server(data, port=port):
            results = [w.result(timeout=60) for w in waits]
    assert [r.version for r in results] == [1, 1]
    # A service that does not come back within the wait's time: the poll's own error, then.
    t0 = time.monotonic()
    with PredictorClient(url, retries=0) as client, pytest.raises(PredictorUnavailableError):
        client.wait_for_job(job_id, timeout=1.0, poll=0.1)
    assert 1.0 <= time.monotonic() - t0 < 10


def test_a_full_disk_is_a_507_that_stores_nothing(tmp_path):
    data = tmp_path / "data"
    with run_server(data) as srv, PredictorClient(srv.url) as client:
        client.train({"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"})
    task = {"input_tokens": 100, "output_tokens": 50}
    # The same data directory on a "full disk": no file may grow past 2 KiB.
    with run_server(data, preexec_fn=file_size_limit(2048)) as srv, PredictorClient(srv.url) as client:
        versions = client.get_model(IDENTITY)["versions"]
        with pytest.raises(PredictorClientError) as err:
            client.train({"model": IDENTITY, "traces": make_llm_traces(200, seed=1), "algorithm": "linear"})
        assert err.value.status_code == 507
        assert err.value.message.startswith(f"no room to write model {KEY} in the data directory")
        with pytest.raises(PredictorClientError) as err:
            client.observe(IDENTITY, make_llm_traces(50, seed=2))
        assert err.value.status_code == 507 and f"the observations of {KEY}" in err.value.message
        traces = b"".join(orjson.dumps({"input_tokens": 10 * i, "output_tokens": 50}) + b"\n" for i in range(1, 21))
        with pytest.raises(PredictorClientError) as err:
            client.generate_table(IDENTITY, traces, filename="queue.jsonl", table_name="queue.json")
        assert err.value.status_code == 507 and "lookup table queue.json" in err.value.message
        # An upload over 1 MB is spooled to the temporary directory first: a 507 there too.
        big = b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(20000, seed=3))
        assert len(big) > 1 << 20
        with pytest.raises(PredictorClientError) as err:
            client.train({"model": IDENTITY, "traces": "big.jsonl", "algorithm": "linear"}, files={"big.jsonl": big})
        assert err.value.status_code == 507 and "in the temporary directory" in err.value.message
        # Nothing changed, and predictions are still served.
        assert client.get_model(IDENTITY)["versions"] == versions
        assert client.accuracy(IDENTITY)["observations"] == 0
        assert client.list_tables() == []
        assert client.predict_single(IDENTITY, task).results.model_version == 1
    leftovers = [p for p in data.rglob("*") if p.name.startswith("upload-") or p.suffix in (".tmp", ".lock")]
    assert leftovers == []


class RawServer:
    """A real TCP server that reads each request whole, counts it, then answers ``reply``
    and closes (``b""``: closes without answering; ``None``: never answers)."""

    def __init__(self, reply: bytes | None):
        self.reply = reply
        self.requests: list[bytes] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._listener.accept()[0]
            except OSError:
                continue
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append(head.split(b"\r\n")[0])
            if self.reply is None:
                self._open.append(conn)
                continue
            conn.sendall(self.reply)
            conn.close()

    def __enter__(self) -> "RawServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._open:
            conn.close()
        self._listener.close()


def test_a_call_in_flight_when_its_client_is_closed_says_so_not_that_the_connection_dropped():
    # The server holds the requests unanswered; the client is closed from another thread or
    # task. Both said "POST /observe was sent ... but the connection dropped before an answer
    # (ReadError)", a PredictorUnavailableError: the service taken for down, for the client's own close.
    trace = {"input_tokens": 1, "output_tokens": 1, "runtime_ms": 5.0}
    with RawServer(None) as srv:
        for call, sent in ((lambda c: c.observe(IDENTITY, [trace]), "POST /observe"),
                           (lambda c: c.health(), "GET /health")):
            client = PredictorClient(srv.url, timeout=1, retries=3, backoff=0.01)
            errors = []

            def send():
                try:
                    call(client)
                except Exception as exc:  # noqa: BLE001 - what the caller sees
                    errors.append(exc)

            thread = threading.Thread(target=send)
            thread.start()
            while len(srv.requests) < 1:
                time.sleep(0.01)
            client.close()
            thread.join()  # (when its wait ends: a blocking read is not woken by the close)

            async def run():
                client = AsyncPredictorClient(srv.url, timeout=30, retries=3, backoff=0.01)
                task = asyncio.create_task(call(client))
                while len(srv.requests) < 2:
                    await asyncio.sleep(0.01)
                await client.aclose()
                with pytest.raises(InvalidRequestError) as err:
                    await asyncio.wait_for(task, 5)  # at once, not after its 30 s
                return err.value

            async_err = asyncio.run(run())
            for err, name in ((errors[0], "PredictorClient"), (async_err, "AsyncPredictorClient")):
                assert isinstance(err, InvalidRequestError), err
                assert f"this {name} was closed" in err.message and f"while {sent} was in flight" in err.message
                assert ("may have been carried out" in err.message) == sent.startswith("POST")
            srv.requests.clear()


def test_a_dropped_connection_repeats_only_requests_that_may_be_repeated():
    # The server read the request, then closed without answering (a worker that died
    # mid-request): a prediction is sent again, an observation or a training is not,
    # since the handler may already have stored it.
    trace = {"input_tokens": 1, "runtime_ms": 2}
    with RawServer(b"") as srv, PredictorClient(srv.url, retries=3, backoff=0.01) as client:
        with pytest.raises(PredictorUnavailableError):
            client.observe(IDENTITY, [trace])
        assert len(srv.requests) == 1
        with pytest.raises(PredictorUnavailableError):
            client.train({"model": IDENTITY, "traces": [trace]})
        assert len(srv.requests) == 2
        with pytest.raises(PredictorUnavailableError):
            client.predict_single(IDENTITY, trace)
        assert len(srv.requests) == 2 + 4
        assert srv.requests[-1].startswith(b"POST /predict/single/")

    async def run():
        async with AsyncPredictorClient(srv.url, retries=2, backoff=0.01) as client:
            with pytest.raises(PredictorUnavailableError):
                await client.retrain(IDENTITY)
            with pytest.raises(PredictorUnavailableError):
                await client.health()

    with RawServer(b"") as srv:
        asyncio.run(run())
        assert [r.split(b" ")[0] for r in srv.requests] == [b"POST", b"GET", b"GET", b"GET"]


def test_an_answer_that_is_not_the_services_is_a_client_error():
    # A proxy's page with a 200: an error naming the request, not None or a pydantic error.
    # (connection: close, as the server closes: the client must not send again on it.)
    page = b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\ncontent-length: 15\r\n\r\n<html>hi</html>"
    wrong = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 12\r\n\r\n{"ok": true}'
    for reply in (page, wrong):
        with RawServer(reply) as srv, PredictorClient(srv.url, retries=0) as client:
            calls = [lambda: client.predict_single(IDENTITY, {"input_tokens": 1}), client.cache_stats,
                     lambda: client.get_model(IDENTITY), client.list_tables, lambda: client.wait_for_job("abc", timeout=1),
                     lambda: client.generate_table(IDENTITY, b'{"input_tokens": 1}\n'),
                     lambda: client.download_table("t.json"), client.metrics]
            if reply is wrong:
                # {"ok": true} is a fine cache_stats answer, and a JSON table file or metrics text is not checked.
                calls = [calls[0], calls[2], calls[3], calls[4], calls[5]]
            for call in calls:
                with pytest.raises(PredictorClientError) as err:
                    call()
                assert not isinstance(err.value, PredictorUnavailableError)
                assert "unexpected" in err.value.message, err.value.message


def test_a_job_record_of_an_unexpected_shape_is_a_client_error():
    # A failed job whose error is text (a proxy's, an older service's), and a running one
    # without its id: PredictorClientError from both clients, not AttributeError or KeyError.
    def answer(record: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: " + str(len(record)).encode() + b"\r\n\r\n" + record)

    cases = [(b'{"status": "failed", "error": "worker crashed"}', PredictorClientError, "training failed: worker crashed"),
             (b'{"status": "failed", "error": {"message": null, "status_code": true}}', PredictorClientError, "training failed"),
             (b'{"status": "failed", "error": {"message": "x", "status_code": "500"}}', PredictorClientError, "x"),
             (b'{"status": "running"}', JobTimeoutError, "training job abc still running"),
             (b'{"status": "running", "request_id": "sched-9"}', JobTimeoutError, "training job abc still running")]
    for record, kind, message in cases:
        with RawServer(answer(record)) as srv:
            with PredictorClient(srv.url, retries=0) as client, pytest.raises(kind) as err:
                client.wait_for_job("abc", timeout=0, poll=0.01)
            assert type(err.value) is kind and err.value.message.startswith(message) and err.value.status_code is None
            # A job still running names the request that started it, as a failed one does.
            assert err.value.request_id == ("sched-9" if b"sched-9" in record else err.value.request_id)

            async def run():
                async with AsyncPredictorClient(srv.url, retries=0) as client:
                    return await client.wait_for_job("abc", timeout=0, poll=0.01)

            with pytest.raises(kind) as err:
                asyncio.run(run())
            assert type(err.value) is kind and err.value.message.startswith(message) and err.value.status_code is None
            assert err.value.request_id == ("sched-9" if b"sched-9" in record else err.value.request_id)


def test_a_calls_own_timeout_is_the_one_waited_and_reported():
    with RawServer(None) as srv, PredictorClient(srv.url, timeout=5, retries=0) as client:
        started = time.monotonic()
        with pytest.raises(PredictorUnavailableError) as err:
            client.generate_table(IDENTITY, b'{"input_tokens": 1}\n', timeout=0.3)
        assert time.monotonic() - started < 2
        assert "timed out after 0.3s" in err.value.message and "/predict/table/" in err.value.message


def test_a_requested_retraining_waits_as_long_as_a_training_not_the_clients_timeout():
    # POST .../retrain answers when the retraining is done: on 20,000 observations that took
    # over 30 s on a 2-core machine, and the client's default 30 s read timeout gave up on a
    # retraining that then stored its version. It waits at least as long as a synchronous
    # /train does, in both clients; a longer timeout of the client's own holds.
    import httpx

    waited: list[tuple[str, float | None]] = []

    def answer(request):
        waited.append((request.url.path, request.extensions["timeout"]["read"]))
        return httpx.Response(200, json={"model_key": "m", "status": "skipped"})

    with PredictorClient("http://127.0.0.1:9", timeout=30, transport=httpx.MockTransport(answer)) as client:
        client.retrain(IDENTITY)
        client.cache_stats()
    with PredictorClient("http://127.0.0.1:9", timeout=4000, transport=httpx.MockTransport(answer)) as client:
        client.retrain(IDENTITY)

    async def through_the_async_client():
        async with AsyncPredictorClient("http://127.0.0.1:9", timeout=30,
                                        transport=httpx.MockTransport(answer)) as client:
            await client.retrain(IDENTITY)

    asyncio.run(through_the_async_client())
    assert [t for _, t in waited] == [1800.0, 30, 4000, 1800.0]
    assert waited[0][0].endswith("/retrain") and waited[1][0] == "/cache/stats"


def test_only_the_wait_for_a_long_calls_answer_is_long_connecting_keeps_the_clients_timeout():
    # train, retrain and generate_table wait 30 (10) minutes for their answer; connecting to a
    # host that drops connections waited as long (a train() with retries=3 hung two hours).
    import httpx

    waited: list[dict] = []

    def answer(request):
        waited.append(request.extensions["timeout"])
        raise httpx.ConnectTimeout("timed out", request=request)

    calls = [lambda c: c.train({"model": IDENTITY, "traces": make_llm_traces(5)}), lambda c: c.retrain(IDENTITY),
             lambda c: c.generate_table(IDENTITY, b'{"input_tokens": 1}\n')]
    with PredictorClient("http://127.0.0.1:9", timeout=2, retries=1, backoff=0,
                         transport=httpx.MockTransport(answer)) as client:
        for call in calls:
            with pytest.raises(PredictorUnavailableError) as err:
                call(client)
            assert "timed out after 2s (ConnectTimeout)" in err.value.message

    async def through_the_async_client():
        async with AsyncPredictorClient("http://127.0.0.1:9", timeout=2, retries=0,
                                        transport=httpx.MockTransport(answer)) as client:
            with pytest.raises(PredictorUnavailableError) as err:
                await client.train({"model": IDENTITY, "traces": make_llm_traces(5)})
            assert "timed out after 2s (ConnectTimeout)" in err.value.message

    asyncio.run(through_the_async_client())
    assert len(waited) == 3 * 2 + 1
    assert all(t["connect"] == t["pool"] == t["write"] == 2 for t in waited)
    assert [t["read"] for t in waited] == [1800.0] * 4 + [600.0] * 2 + [1800.0]


def assert_refused_by_both_clients(url: str, cases) -> None:
    """Each ``(call, field)``: an InvalidRequestError naming ``field`` from both clients, nothing sent."""
    import httpx

    sent: list = []
    with PredictorClient(url, transport=httpx.MockTransport(sent.append)) as client:
        for call, field in cases:
            with pytest.raises(InvalidRequestError) as err:
                call(client)
            assert err.value.field == field, (field, err.value.message)

    async def refused_by_the_async_client():
        async with AsyncPredictorClient(url, transport=httpx.MockTransport(sent.append)) as client:
            for call, field in cases:
                with pytest.raises(InvalidRequestError) as err:
                    await call(client)
                assert err.value.field == field, (field, err.value.message)

    asyncio.run(refused_by_the_async_client())
    assert sent == []


def test_requests_of_the_wrong_shape_are_refused_naming_the_field(trained_server):
    import decimal

    import httpx

    sent = []
    good = {"input_tokens": 100, "output_tokens": 50}
    cases = [
        (lambda c: c.predict_batch(IDENTITY, good), "trace"),  # one trace, not a list of them
        (lambda c: c.predict_single(IDENTITY, [good]), "trace"),
        (lambda c: c.predict_batch(IDENTITY, [good, 7]), "trace[1]"),
        (lambda c: c.predict_single(IDENTITY, good, quantiles="0.5"), "quantiles"),
        (lambda c: c.predict_single(IDENTITY, good, quantiles=0.5), "quantiles"),
        (lambda c: c.predict_single(IDENTITY, {**good, "input_tokens": decimal.Decimal("1.5")}), "trace.input_tokens"),
        (lambda c: c.predict_batch(IDENTITY, [good, {**good, "output_tokens": {1, 2}}]), "trace[1].output_tokens"),
        (lambda c: c.predict_single(IDENTITY, {**good, "input_tokens": 2**70}), "trace.input_tokens"),
        (lambda c: c.observe(IDENTITY, {"runtime_ms": 3}), "traces"),
        (lambda c: c.get_model(IDENTITY, 1.9), "version"),
        (lambda c: c.predict_single(("llm", {"a": 1}, "*", "*", "*"), good), "identity.model_name"),
        (lambda c: c.predict_single({**IDENTITY, "hardware": True}, good), "identity.hardware"),
        (lambda c: c.accuracy(IDENTITY, version="2"), "version"),
        (lambda c: c.train({"model": IDENTITY}, files=["traces.jsonl"]), "files"),
        (lambda c: c.train({"model": IDENTITY}, files={"traces.jsonl": 7}), "files['traces.jsonl']"),
        (lambda c: c.train_background([("model", IDENTITY)]), "config"),
        # A table's name with lookup_table=False: the service refuses it (the model would
        # answer); the client asked the table.
        (lambda c: c.predict_single(IDENTITY, good, lookup_table_name="t.json", lookup_table=False), "lookup_table_name"),
        (lambda c: c.queue_wait(IDENTITY, [good], lookup_table_name="t.json", lookup_table=False), "lookup_table_name"),
        (lambda c: c.predict_batch(IDENTITY, [good], lookup_table_name="t.json", lookup_table=np.False_), "lookup_table_name"),
        (lambda c: c.predict_batch(IDENTITY, [good], lookup_table_name="t.json", lookup_table=0), "lookup_table"),
        (lambda c: c.predict_single(IDENTITY, good, lookup_table="no"), "lookup_table"),
        # The other yes-or-no options too: "no" was sent as true, or taken so.
        (lambda c: c.predict_batch(IDENTITY, [good], shared_factor="no"), "shared_factor"),
        (lambda c: c.predict_batch(IDENTITY, [good], total_distribution=0), "total_distribution"),
        (lambda c: c.queue_waits(IDENTITY, {"a": [good]}, shared_factor=1), "shared_factor"),
        (lambda c: c.queue_waits(IDENTITY, {"a": [good]}, completion_times="no"), "completion_times"),
        (lambda c: c.queue_waits(IDENTITY, {"a": [good]}, partial="no"), "partial"),
        (lambda c: c.queue_wait(IDENTITY, [good], completion_times="no"), "completion_times"),
        (lambda c: c.queue_wait(IDENTITY, [good], partial=None), "partial"),
        # A table generation's form fields are text: True was sent as "True", b"x.json" as a name.
        (lambda c: c.generate_table(IDENTITY, b'{"input_tokens": 1}', confidence_level=True), "confidence_level"),
        (lambda c: c.generate_table(IDENTITY, b'{"input_tokens": 1}', confidence_level="0.9"), "confidence_level"),
        (lambda c: c.generate_table(IDENTITY, b'{"input_tokens": 1}', table_name=5), "table_name"),
        (lambda c: c.generate_table(IDENTITY, b'{"input_tokens": 1}', table_name=b"x.json"), "table_name"),
        (lambda c: c.generate_table(IDENTITY, b'{"input_tokens": 1}', format=1), "format"),
        # Longer than any name the service holds: httpx's InvalidURL past 65,536 characters.
        # (Named as an identity's other faults are: identity.model_name, not model_name, until 2026-12-08.)
        (lambda c: c.predict_single(("llm", "m" * 70_000, "*", "*", "*"), good), "identity.model_name"),
        (lambda c: c.download_table("t" * 70_000 + ".json"), "name"),
        (lambda c: c.train_job("j" * 70_000), "job_id"),
        # The seed's methods: metadata of another kind was an AttributeError.
        (lambda c: c.predict("llm", None), "metadata"),
        (lambda c: c.get_median_prediction("llm", [("hardware", "A100")]), "metadata"),
        (lambda c: c.get_prediction_range("llm", "hardware=A100"), "metadata"),
        # A part given in the seed's metadata is named there; identity.hardware until 2026-12-08.
        (lambda c: c.predict("llm", {"hardware": ""}), "metadata.hardware"),
        (lambda c: c.predict("llm", {"model_name": ["m"]}), "metadata.model_name"),
        # A queue's places as the body's and the service's: queues['gpu-0'][1] until 2026-12-08,
        # where a value in it was queues.gpu-0[1].input_tokens.
        (lambda c: c.queue_waits(IDENTITY, {"gpu-0": [good, 5]}), "queues.gpu-0[1]"),
        (lambda c: c.queue_waits(IDENTITY, {"gpu-0": 5}), "queues.gpu-0"),
    ]
    # The same errors from both clients (a list of files was an AttributeError in the async
    # one, read before the check).
    assert_refused_by_both_clients(trained_server.url, cases)
    with PredictorClient(trained_server.url) as client, pytest.raises(InvalidRequestError) as err:
        client.predict_single(IDENTITY, {**good, "input_tokens": 2**70})
    assert "is an int (1180591620717411303424)" in err.value.message
    # What orjson writes is sent, a null beside it or not (a datetime, a UUID).
    import datetime
    import uuid

    def answer(request):
        sent.append(orjson.loads(request.content))
        return httpx.Response(422, json={"message": "no"})

    with PredictorClient(trained_server.url, transport=httpx.MockTransport(answer)) as client:
        for extra in ({}, {"missing": None}):
            with pytest.raises(PredictorClientError):
                client.predict_single(IDENTITY, {"at": datetime.datetime(2024, 1, 1), "id": uuid.UUID(int=1), **extra})
    assert [t["trace"]["at"] for t in sent] == ["2024-01-01T00:00:00"] * 2


def test_identities_in_every_accepted_form(trained_server):
    with PredictorClient(trained_server.url) as client:
        served = client.predict_single(IDENTITY, {"input_tokens": 100, "output_tokens": 50})
        info = served.results.model_info
        # A prediction's model_info (object or dict) names the model it came from.
        for identity in (info, info.model_dump(), tuple(IDENTITY.values())):
            again = client.predict_single(identity, {"input_tokens": 100, "output_tokens": 50})
            assert again.results.quantile_predictions == served.results.quantile_predictions
        seed_model = client.predict_single(SEED_IDENTITY, {"input_tokens": 100, "output_tokens": 50})
        by_path = client.predict_single("/".join(SEED_IDENTITY.values()), {"input_tokens": 100, "output_tokens": 50})
        assert by_path.results.quantile_predictions == seed_model.results.quantile_predictions
        # The string form's segments are URL-encoded as in the API and the CLI: a name may hold a slash.
        encoded = "/".join(quote(v, safe="") for v in IDENTITY.values())
        assert "%2F" in encoded
        by_encoded = client.predict_single(encoded, {"input_tokens": 100, "output_tokens": 50})
        assert by_encoded.results.quantile_predictions == served.results.quantile_predictions
        # A misspelt key is an error, not a '*' that matches whatever model is there.
        with pytest.raises(ValueError, match="modelname"):
            client.predict_single({**{k: v for k, v in IDENTITY.items() if k != "model_name"}, "modelname": "x"},
                                  {"input_tokens": 1})
        with pytest.raises(ValueError, match="model_name is empty"):
            client.predict_single({**IDENTITY, "model_name": ""}, {"input_tokens": 1})
        # observe takes the same forms, and needs the whole identity.
        assert client.observe(tuple(IDENTITY.values()), [{"input_tokens": 100, "output_tokens": 50, "runtime_ms": 600}])["accepted"] == 1
        with pytest.raises(ValueError, match="hardware"):
            client.observe({**IDENTITY, "hardware": None}, [{"input_tokens": 1, "runtime_ms": 2}])


def test_the_async_client_has_every_method_of_the_sync_one():
    import inspect

    def public(cls):
        return {n: f for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}

    sync, aio = public(PredictorClient), public(AsyncPredictorClient)
    assert set(sync) - {"close"} == set(aio) - {"aclose"}
    for name, fn in sync.items():
        if name == "close":
            continue
        assert inspect.iscoroutinefunction(aio[name]), name
        assert inspect.signature(fn) == inspect.signature(aio[name]), name


def test_the_async_client_queues_what_its_connections_cannot_carry(trained_server):
    # A thousand concurrent calls: each waits in the client for one of its connections and
    # then has its whole timeout (left to httpx's pool, most timed out waiting: PoolTimeout).
    async def many():
        async with AsyncPredictorClient(trained_server.url, timeout=5, retries=0) as ac:  # 100 connections
            return await asyncio.gather(*(ac.predict_single(IDENTITY, {"input_tokens": 10 + i % 7, "output_tokens": 5})
                                          for i in range(1000)), return_exceptions=True)

    answers = asyncio.run(many())
    failures = [a for a in answers if isinstance(a, Exception)]
    assert not failures, failures[:3]
    assert {a.results.status for a in answers} == {"success"}
    with pytest.raises(ValueError, match="max_connections"):
        AsyncPredictorClient(trained_server.url, max_connections=0)


def test_both_clients_take_their_connection_options_by_name_alike():
    # The async client's max_connections sat before api_key: one positional call set the
    # key on one client and failed on the other. Past backoff, both take names only.
    import inspect

    for make in (PredictorClient, AsyncPredictorClient):
        params = inspect.signature(make).parameters
        assert [p for p, v in params.items() if v.kind is v.POSITIONAL_OR_KEYWORD] == \
            ["base_url", "timeout", "retries", "backoff"]
        with pytest.raises(TypeError):
            make("http://127.0.0.1:9", 30, 3, 0.1, None, "abcdefghijklmnop1234")
        client = make("http://127.0.0.1:9", api_key="abcdefghijklmnop1234")
        assert client._http.headers["Authorization"] == "Bearer abcdefghijklmnop1234"
        asyncio.run(client.aclose()) if isinstance(client, AsyncPredictorClient) else client.close()


def test_both_clients_take_a_timeout_of_none_and_say_so_in_their_hints(server):
    # None (no limit) is a timeout both clients take, as the README says; their hints said
    # float alone, so a type checker refused PredictorClient(url, timeout=None).
    import typing

    for make in (PredictorClient, AsyncPredictorClient):
        assert typing.get_type_hints(make.__init__)["timeout"] == float | None
    with PredictorClient(server.url, timeout=None) as client:
        assert client.ping() == {"status": "ok"}

    async def ping() -> dict:
        async with AsyncPredictorClient(server.url, timeout=None) as client:
            return await client.ping()

    assert asyncio.run(ping()) == {"status": "ok"}


def test_a_subclass_of_either_client_is_typed_as_itself_in_its_with_block(server):
    # __enter__ was hinted "PredictorClient": `with Mine(url) as c: c.own_method()` was a
    # type checker's error, where httpx's own clients give the subclass.
    import typing

    assert typing.get_type_hints(PredictorClient.__enter__)["return"] is typing.Self
    assert typing.get_type_hints(AsyncPredictorClient.__aenter__)["return"] is typing.Self

    class Mine(PredictorClient):
        def status(self) -> str:
            return self.ping()["status"]

    class AsyncMine(AsyncPredictorClient):
        async def status(self) -> str:
            return (await self.ping())["status"]

    with Mine(server.url) as client:
        assert client.status() == "ok"

    async def status() -> str:
        async with AsyncMine(server.url) as client:
            return await client.status()

    assert asyncio.run(status()) == "ok"


@pytest.mark.parametrize("setting, value", [("backoff", -1), ("backoff", float("nan")), ("backoff", float("inf")),
                                            ("retries", -1), ("retries", 1.5), ("retries", True),
                                            ("timeout", 0), ("timeout", -2.0), ("timeout", "30")])
def test_a_client_refuses_settings_it_could_not_keep_naming_them(port, setting, value):
    # A negative pause raised time.sleep's ValueError at the first retry, not the service's
    # unavailability: now neither client is made.
    for make in (PredictorClient, AsyncPredictorClient):
        with pytest.raises(InvalidRequestError, match=f"^{setting} must be") as err:
            make(f"http://127.0.0.1:{port}", **{setting: value})
        assert err.value.field == setting
    with PredictorClient(f"http://127.0.0.1:{port}", retries=2, backoff=0, timeout=None) as client:
        with pytest.raises(PredictorUnavailableError):
            client.list_models()


def test_numpy_numbers_are_numbers_for_the_clients_settings_and_their_calls_options():
    # A numpy number is a number wherever the client takes one (a trace's value, deadline_ms,
    # recent, max_connections), but its settings and these options refused one in words that
    # said it was none: "retries must be a whole number of at least 0, got np.int64(2)".
    for make in (PredictorClient, AsyncPredictorClient):
        client = make("http://127.0.0.1:9", timeout=np.int64(5), retries=np.int64(2), backoff=np.float32(0.5))
        assert (client.timeout, client.retries, client.backoff) == (5, 2, 0.5)
        assert [type(v) for v in (client.timeout, client.retries, client.backoff)] == [int, int, float]
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path.startswith("/train/jobs/"):
            return httpx.Response(200, json={"status": "running"})
        return httpx.Response(200, json={"status": "successful", "table_name": "t.json", "rows": 1})

    with PredictorClient("http://127.0.0.1:9", transport=httpx.MockTransport(answer)) as client:
        client.generate_table(IDENTITY, b'{"input_tokens": 5}\n', knots=np.int64(4), timeout=np.float32(60))
        assert b'name="knots"\r\n\r\n4\r\n' in sent[-1].read()
        assert sent[-1].extensions["timeout"]["read"] == 60.0
        with pytest.raises(JobTimeoutError):
            client.wait_for_job("j", timeout=np.int64(0), poll=np.float32(0.01))


def test_a_trace_file_whose_name_is_not_utf8_is_uploaded_under_its_name_escaped(tmp_path):
    # A Latin-1 file name (b"caf\xe9.jsonl"), as Python reads it, holds a lone surrogate:
    # httpx raised its UnicodeEncodeError writing the upload's header, a traceback, where the
    # file is fine to send and the service reads it by its suffix alone.
    import os

    path = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.jsonl"))
    path.write_bytes(b'{"input_tokens": 5}\n')
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.read())
        return httpx.Response(200, json={"status": "successful", "table_name": "t.json", "rows": 1})

    with PredictorClient("http://127.0.0.1:9", transport=httpx.MockTransport(answer)) as client:
        assert client.generate_table(IDENTITY, path)["rows"] == 1
        head, _, body = sent[-1].partition(b'filename="caf')
        assert body.startswith((b'\\udce9.jsonl"', b'\\\\udce9.jsonl"')) and b'{"input_tokens": 5}' in body  # (httpx doubles a \\)
        with pytest.raises(InvalidRequestError) as err:
            client.train({"model": IDENTITY, "traces": "a.jsonl"}, files={"caf\udce9.jsonl": b"{}"})
        assert err.value.field == "files['caf\\udce9.jsonl']"


def test_an_identity_part_may_be_a_numpy_number_as_it_may_be_a_python_one():
    # A version read from a numpy array or a DataFrame (np.int64(2), np.float32(2.5)) was refused
    # as "must be a string (or None for any)", where 2 and 2.5 name the versions "2" and "2.5".
    paths = []

    def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"status": "error", "message": "no model"})

    with PredictorClient("http://127.0.0.1:9", transport=httpx.MockTransport(answer)) as client:
        for version in (np.int64(2), np.float32(2.5), np.float64(2.5)):
            with pytest.raises(PredictorClientError) as err:  # (the service's answer: it was sent)
                client.predict_single(("llm", "m", None, None, version), {"input_tokens": 5})
            assert err.value.status_code == 404
        with pytest.raises(PredictorClientError) as err:
            client.observe(("llm", "m", "h", "s", np.int64(3)), [{"input_tokens": 5, "runtime_ms": 1.0}])
        assert err.value.status_code == 404
        with pytest.raises(InvalidRequestError) as err:
            client.predict_single(("llm", "m", None, None, np.bool_(True)), {"input_tokens": 5})
        assert err.value.field == "identity.software_version"
    assert paths[:3] == ["/predict/single/llm/m/*/*/2", "/predict/single/llm/m/*/*/2.5", "/predict/single/llm/m/*/*/2.5"]


def test_a_feature_named_by_a_numpy_string_is_sent_under_its_name():
    # dict(zip(np.array(names), row)) keys a trace by np.str_, a str that orjson takes only as a
    # value: the request was refused as "the request body is a dict ..., which cannot be sent as
    # JSON (Dict key must be str)", naming no field, for a name that is text.
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(request.read()))
        return httpx.Response(404, json={"status": "error", "message": "no model"})

    names = np.array(["input_tokens", "output_tokens"])
    with PredictorClient("http://127.0.0.1:9", transport=httpx.MockTransport(answer)) as client:
        for call in (lambda: client.predict_single(IDENTITY, dict(zip(names, [5, 7]))),
                     lambda: client.predict_batch(IDENTITY, [{"nested": {names[0]: 1}, names[1]: 2}])):
            with pytest.raises(PredictorClientError) as err:
                call()
            assert err.value.status_code == 404  # sent, and answered
        with pytest.raises(InvalidRequestError) as err:  # a key that is no text is still refused, named
            client.predict_single(IDENTITY, {names[0]: 5, 3: 1})
        assert err.value.field == "trace.3"
    assert sent[0]["trace"] == {"input_tokens": 5, "output_tokens": 7}
    assert sent[1]["trace"] == [{"nested": {"input_tokens": 1}, "output_tokens": 2}]


def test_a_trace_that_holds_itself_is_refused_not_searched_forever():
    # orjson refuses a container that holds itself ("Recursion limit reached"); the client's
    # search for what it could not write then walked the cycle forever, and the call hung.
    trace: dict = {"input_tokens": 5}
    trace["self"] = trace
    tags: list = ["a"]
    tags.append(tags)
    batch = [{"input_tokens": 5}, {"input_tokens": 5, "tags": tags}]
    shared = {"input_tokens": 5}
    with PredictorClient("http://127.0.0.1:9") as client:
        for call in (lambda: client.predict_single(IDENTITY, trace), lambda: client.predict_batch(IDENTITY, batch),
                     lambda: client.predict_batch(IDENTITY, [{names: 1 for names in np.array(["a"])}, trace])):
            with pytest.raises(InvalidRequestError, match="cannot be sent as JSON .*Recursion limit reached"):
                call()
        # The same trace twice is no cycle: it is sent (here, to no service: unavailable).
        with pytest.raises(PredictorUnavailableError):
            client.predict_batch(IDENTITY, [shared, shared])


@pytest.mark.parametrize("option", ["table_name", "format", "filename"])
def test_generate_table_refuses_a_form_field_holding_a_lone_surrogate_naming_it(option):
    # A name listed from a Latin-1 folder holds one: httpx raised its UnicodeEncodeError
    # writing the form, a traceback, where every other text the client sends is refused so.
    def answer(request: httpx.Request) -> httpx.Response:
        raise AssertionError("sent")

    with PredictorClient("http://127.0.0.1:9", transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(InvalidRequestError) as err:
            client.generate_table(IDENTITY, b'{"input_tokens": 5}\n', **{option: "caf\udce9.json"})
    assert err.value.field == option and "lone surrogate" in err.value.message


def test_a_timeout_longer_than_the_platform_can_wait_is_no_limit_in_both_clients(port):
    # sys.maxsize, "forever": the blocking client raised OverflowError ("timestamp too large to
    # convert to C _PyTime_t") at its first call, where the async one waited; past about 9.2e9 s
    # no clock here can time a wait. Now each waits as long as it can (31 years), alike.
    import sys

    for timeout in (sys.maxsize, 1e12, 10**400):
        with PredictorClient(f"http://127.0.0.1:{port}", timeout=timeout, retries=0) as client:
            with pytest.raises(PredictorUnavailableError, match=r"\[Errno 111\] Connection refused"):
                client.ping()

        async def ping():
            async with AsyncPredictorClient(f"http://127.0.0.1:{port}", timeout=timeout, retries=0) as client:
                await client.ping()

        with pytest.raises(PredictorUnavailableError, match=r"\[Errno 111\] Connection refused"):
            asyncio.run(ping())

    def job(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/predict/table/"):
            return httpx.Response(422, json={"status": "error", "message": "no traces"})
        return httpx.Response(200, json={"status": "failed", "error": {"message": "it failed", "status_code": 422}})

    with PredictorClient("http://127.0.0.1:9", transport=httpx.MockTransport(job)) as client:
        with pytest.raises(PredictorClientError, match="it failed"):
            client.wait_for_job("j", timeout=10**400)
        with pytest.raises(PredictorClientError, match="^422"):  # (the service's answer: sent)
            client.generate_table(IDENTITY, b'{"input_tokens": 5}\n', timeout=sys.maxsize)


def test_both_clients_say_why_a_connection_was_refused_alike(port):  # nothing listens on it
    # The async client's own text was "All connection attempts failed".
    with PredictorClient(f"http://127.0.0.1:{port}", retries=0) as client:
        with pytest.raises(PredictorUnavailableError) as sync_err:
            client.health()

    async def ask():
        async with AsyncPredictorClient(f"http://127.0.0.1:{port}", retries=0) as client:
            await client.health()

    with pytest.raises(PredictorUnavailableError) as async_err:
        asyncio.run(ask())
    assert sync_err.value.message == async_err.value.message
    assert sync_err.value.message.endswith(f"127.0.0.1:{port}: ConnectError: [Errno 111] Connection refused")


def test_a_tls_failure_is_said_in_tls_words_not_as_a_system_error(server):
    # https:// to the plain-HTTP service: ssl.SSLError is an OSError whose errno is OpenSSL's
    # code (1), and both clients said "[Errno 1] Operation not permitted".
    url = server.url.replace("http://", "https://")
    with PredictorClient(url, retries=0) as client:
        with pytest.raises(PredictorUnavailableError) as sync_err:
            client.health()

    async def ask():
        async with AsyncPredictorClient(url, retries=0) as client:
            await client.health()

    with pytest.raises(PredictorUnavailableError) as async_err:
        asyncio.run(ask())
    assert sync_err.value.message == async_err.value.message
    assert "[SSL: WRONG_VERSION_NUMBER] wrong version number" in sync_err.value.message
    assert "Errno" not in sync_err.value.message


def test_an_error_page_that_is_not_the_predictors_is_said_short_by_both_clients():
    import httpx

    page = "<html><body><h1>502 Bad Gateway</h1>" + "x" * 5000 + "</body></html>"

    def proxy(request):
        return httpx.Response(502, text=page, headers={"content-type": "text/html"})

    with PredictorClient("http://127.0.0.1:9", retries=0, transport=httpx.MockTransport(proxy)) as client:
        with pytest.raises(PredictorClientError) as sync_err:
            client.list_models()

    async def ask():
        async with AsyncPredictorClient("http://127.0.0.1:9", retries=0, transport=httpx.MockTransport(proxy)) as client:
            await client.list_models()

    with pytest.raises(PredictorClientError) as async_err:
        asyncio.run(ask())
    for err in (sync_err, async_err):
        assert err.value.status_code == 502 and err.value.field is None
        assert err.value.message.startswith("502 Bad Gateway from GET /models, not in the predictor's form: '<html>")
        assert len(err.value.message) < 300


def test_trace_bytes_sent_without_a_file_name_are_named_by_what_they_hold(trained_server):
    import gzip

    tasks = [{"input_tokens": 10 * i, "output_tokens": 50} for i in range(1, 6)]
    lines = b"".join(orjson.dumps(t) + b"\n" for t in tasks)
    csv = b"input_tokens,output_tokens\n" + b"".join(b"%d,50\n" % t["input_tokens"] for t in tasks)
    long_tasks = [{**t, "note": "x" * 70_000} for t in tasks]
    long_lines = b"".join(orjson.dumps(t) + b"\n" for t in long_tasks)
    forms = {
        "array": (orjson.dumps(tasks), "traces.json"),
        "traces object": (orjson.dumps({"traces": tasks}), "traces.json"),
        "pretty object": (orjson.dumps({"traces": tasks}, option=orjson.OPT_INDENT_2), "traces.json"),
        "lines": (lines, "traces.jsonl"),
        "gzipped lines": (gzip.compress(lines), "traces.jsonl.gz"),
        "gzipped array": (gzip.compress(orjson.dumps(tasks)), "traces.json.gz"),
        "csv with a byte order mark": (b"\xef\xbb\xbf" + csv, "traces.csv"),
        "lines after a byte order mark": (b"\xef\xbb\xbf" + lines, "traces.jsonl"),
        # A line longer than what is first read to tell the form (64 KiB) is read whole.
        "long lines": (long_lines, "traces.jsonl"),
        "gzipped long lines": (gzip.compress(long_lines), "traces.jsonl.gz"),
        "traces object on one long line": (orjson.dumps({"traces": long_tasks}), "traces.json"),
    }
    from swarmpilot_predictor.client import _trace_file_name

    assert {form: _trace_file_name(data) for form, (data, _) in forms.items()} == {
        form: name for form, (_, name) in forms.items()}
    with PredictorClient(trained_server.url) as client:
        medians = set()
        for i, (data, _) in enumerate(forms.values()):
            table = client.generate_table(IDENTITY, data, table_name=f"named-{i}.json")
            assert table["rows"] == 5
            answer = client.predict_batch(IDENTITY, tasks, lookup_table_name=f"named-{i}.json")
            medians.add(tuple(r.quantile_predictions[1] for r in answer.results))
        assert len(medians) == 1  # the same five tasks, whatever the form
        # A name given is the one the service reads (and its error names).
        with pytest.raises(PredictorClientError) as err:
            client.generate_table(IDENTITY, orjson.dumps(tasks), filename="mine.jsonl")
        assert err.value.status_code == 422 and err.value.message.startswith("mine.jsonl: line 1")


def test_naming_gzipped_bytes_decompresses_their_first_line_only():
    # Each megabyte of gzip was inflated whole: this one to 50 MB, to read a 9-byte line.
    import gzip
    import tracemalloc

    from swarmpilot_predictor.client import _trace_file_name

    data = gzip.compress(b'{"a": 1}\n' + b"x" * 50_000_000)
    tracemalloc.start()
    try:
        assert _trace_file_name(data) == "traces.jsonl.gz"
        assert tracemalloc.get_traced_memory()[1] < 5_000_000
    finally:
        tracemalloc.stop()


def test_a_config_in_its_envelope_trains_with_or_without_files(trained_server, tmp_path):
    traces = make_llm_traces(120, seed=4)
    ident = {**IDENTITY, "software_version": "envelope"}
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(t) for t in traces))
    with PredictorClient(trained_server.url) as client:
        inline = client.train({"config": {"model": ident, "traces": traces, "algorithm": "linear"}})
        from_file = client.train({"config": {"model": ident, "traces": "t.jsonl", "algorithm": "linear"}},
                                 files={"t.jsonl": path})
        assert (inline.version, from_file.version) == (1, 2)
        assert inline.metrics["rows_used"] == from_file.metrics["rows_used"] == 120
        # A setting beside the envelope is refused, as in a config file, not dropped.
        for files in (None, {"t.jsonl": path}):
            with pytest.raises(PredictorClientError) as err:
                client.train({"config": {"model": ident, "traces": "t.jsonl"}, "algorithm": "linear"}, files=files)
            assert err.value.status_code == 422 and err.value.field == "algorithm"
        client.delete_model(ident)


def test_an_answer_that_fails_validation_names_where(trained_server):
    import httpx

    tasks = [{"input_tokens": 10 * i, "output_tokens": 50} for i in range(1, 61)]
    from swarmpilot_predictor.client import identity_segments

    path = "/predict/batch/" + "/".join(identity_segments(IDENTITY))
    body = orjson.loads(httpx.post(trained_server.url + path, json={"trace": tasks}).content)
    body["results"][57]["quantile_predictions"][0] = "fast"  # past the first 200 characters the error quotes

    def answer(request):
        return httpx.Response(200, content=orjson.dumps(body), headers={"content-type": "application/json"})

    with PredictorClient("http://127.0.0.1:9", retries=0, transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(PredictorClientError) as err:
            client.predict_batch(IDENTITY, tasks)
    assert err.value.status_code == 200
    assert "BatchPredictionResponse: results.57.quantile_predictions.0: Input should be a valid number" in err.value.message


def test_retries_wait_longer_each_time_up_to_a_bound():
    from swarmpilot_predictor.client import MAX_BACKOFF

    client = PredictorClient(backoff=0.1)
    try:
        assert [client._pause(a) for a in range(4)] == [0.1, 0.2, 0.4, 0.8]
        assert client._pause(20) == client._pause(10_000) == MAX_BACKOFF
    finally:
        client.close()


def test_a_backoff_past_the_float_range_pauses_the_longest_pause_in_both_clients():
    # A backoff of 10 ** 400 (finite, at least 0: taken) raised OverflowError at the first
    # retry ("int too large to convert to float"), where the service's unavailability was due.
    from swarmpilot_predictor.client import MAX_BACKOFF

    for make in (PredictorClient, AsyncPredictorClient):
        client = make("http://127.0.0.1:9", backoff=10**400)
        assert [client._pause(a) for a in (0, 1, 100)] == [MAX_BACKOFF] * 3
        asyncio.run(client.aclose()) if isinstance(client, AsyncPredictorClient) else client.close()


def test_an_error_carries_the_wait_the_service_asks_for():
    # A 429 (as many trainings queued as a worker takes) says when to try again.
    import httpx

    def busy(request):
        return httpx.Response(429, json={"status": "error", "message": "busy"}, headers={"Retry-After": "10"})

    def plain(request):
        return httpx.Response(422, json={"status": "error", "message": "no", "field": "x"})

    async def ask(handler):
        async with AsyncPredictorClient("http://127.0.0.1:9", transport=httpx.MockTransport(handler)) as client:
            await client.train({"model": IDENTITY, "traces": []})

    for handler, wait in ((busy, 10.0), (plain, None)):
        with PredictorClient("http://127.0.0.1:9", transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(PredictorClientError) as err:
                client.train({"model": IDENTITY, "traces": []})
        with pytest.raises(PredictorClientError) as async_err:
            asyncio.run(ask(handler))
        assert err.value.retry_after == async_err.value.retry_after == wait
    import pickle

    assert pickle.loads(pickle.dumps(err.value)).retry_after is None


def test_a_running_tasks_time_left_counts_in_the_wait_through_both_clients(trained_server):
    example = _load_example("scheduler_queue_wait")
    queue = [{"input_tokens": 200, "output_tokens": 100}] * 3
    running = {"input_tokens": 500, "output_tokens": 400}  # about 4,830 ms
    late = {**running, "elapsed_ms": 4000.0}
    with PredictorClient(trained_server.url) as client:
        whole, left = client.predict_single(IDENTITY, running).results, client.predict_single(IDENTITY, late).results
        assert whole.elapsed_level is None and 0.01 < left.elapsed_level < 0.5
        assert 0 < left.quantile_predictions[0] < left.quantile_predictions[-1] < whole.quantile_predictions[-1] - 3000
        full, waited = client.queue_wait(IDENTITY, [running, *queue]), client.queue_wait(IDENTITY, [late, *queue])
        assert waited.expect == pytest.approx(full.expect - whole.expect + left.expect, rel=1e-9)
        assert waited.quantile(0.5) < full.quantile(0.5) - 3000
        with pytest.raises(PredictorClientError, match=r"422: trace: elapsed_ms must be the milliseconds .* got -1"):
            client.predict_single(IDENTITY, {**running, "elapsed_ms": -1})
        # The example scheduler states the running task's time so far.
        busy = example.Instance("busy", IDENTITY, queue, running=running, started=time.monotonic() - 4.0)
        stated = busy.tasks_left()
        assert stated[1:] == queue and 4000 <= stated[0]["elapsed_ms"] < 60_000
        best, scores = example.choose_instance(client, [busy, example.Instance("idle", IDENTITY)], queue[0])
        assert best.name == "idle" and scores["busy"] > client.queue_wait(IDENTITY, [*stated, queue[0]]).quantile(0.9) - 1000

    async def both() -> tuple:
        async with AsyncPredictorClient(trained_server.url) as client:
            return (await client.predict_single(IDENTITY, late)).results, await client.queue_wait(IDENTITY, [late, *queue])

    got_left, got_wait = asyncio.run(both())
    assert got_left == left and got_wait.quantile_predictions == waited.quantile_predictions


def test_a_base_url_with_a_query_is_refused_and_a_trailing_slash_is_not(server):
    # httpx appends each request's path after a base URL's query: with "?x=1" every call
    # went to GET / (a 404 "no endpoint GET /" for health, ping, everything).
    for url in (server.url + "?x=1", server.url + "/?x=1", server.url + "/?"):
        for make in (PredictorClient, AsyncPredictorClient):
            with pytest.raises(InvalidRequestError, match="has a query") as err:
                make(url)
            assert err.value.field == "base_url"
    with PredictorClient(server.url + "/") as client:
        assert client.ping() == {"status": "ok"} and client.health().status == "healthy"

    async def ping() -> dict:
        async with AsyncPredictorClient(server.url + "/") as client:
            return await client.ping()

    assert asyncio.run(ping()) == {"status": "ok"}


def test_arguments_the_client_cannot_use_are_refused_naming_them(trained_server, tmp_path):
    # Each was an httpx, OS or type error (or a request to ".../None", or a poll without pause).
    for url in ("http://[::1", "http://localhost:abc", "http://localhost:99999", "http://", "localhost:8200",
                "ftp://host", None):
        for make in (PredictorClient, AsyncPredictorClient):
            with pytest.raises(InvalidRequestError) as err:
                make(url)
            assert err.value.field == "base_url", err.value.message
    for setting, value in (("api_key", "two words"), ("api_key", 7), ("max_connections", None),
                           ("max_connections", "5"), ("max_connections", 0)):
        with pytest.raises(InvalidRequestError) as err:
            (AsyncPredictorClient if setting == "max_connections" else PredictorClient)(trained_server.url,
                                                                                        **{setting: value})
        assert err.value.field == setting and "two words" not in err.value.message
    cases = [
        (lambda c: c.get_model(None), "identity"),
        (lambda c: c.predict_single(42, {"input_tokens": 1}), "identity"),
        (lambda c: c.observe(None, [{"input_tokens": 1, "runtime_ms": 2}]), "identity"),
        (lambda c: c.get_model(("llm", "m")), "identity"),
        (lambda c: c.get_model({**IDENTITY, "model_name": " "}), "identity.model_name"),
        (lambda c: c.get_model({**IDENTITY, "hw": "x"}), "identity.hw"),
        (lambda c: c.predict_batch(IDENTITY, [{"input_tokens": 1}], version="1"), "version"),
        (lambda c: c.queue_wait(IDENTITY, [{"input_tokens": 1}], version=1.5), "version"),
        (lambda c: c.queue_waits(IDENTITY, {"a": [{"input_tokens": 1}]}, version=True), "version"),
        (lambda c: c.generate_table(IDENTITY, b"{}\n", timeout=-1), "timeout"),
        (lambda c: c.generate_table(IDENTITY, b"{}\n", timeout=float("nan")), "timeout"),
        (lambda c: c.generate_table(IDENTITY, None), "trace_file"),
        (lambda c: c.generate_table(IDENTITY, 123), "trace_file"),
        (lambda c: c.wait_for_job("abc", poll=-1), "poll"),
        (lambda c: c.wait_for_job("abc", poll=float("nan")), "poll"),
        (lambda c: c.wait_for_job("abc", timeout=float("nan")), "timeout"),
        (lambda c: c.train_job(None), "job_id"),
        (lambda c: c.download_table(None), "name"),
        (lambda c: c.delete_table(""), "name"),
        (lambda c: c.download_table("t.json", dest=123), "dest"),
    ]
    assert_refused_by_both_clients(trained_server.url, cases)
    # A file the client cannot read is the OSError that open() raises, naming it.
    with PredictorClient(trained_server.url) as client, pytest.raises(FileNotFoundError) as err:
        client.train({"model": IDENTITY, "traces": "runs.jsonl"}, files={"runs.jsonl": tmp_path / "absent.jsonl"})
    assert err.value.filename == str(tmp_path / "absent.jsonl")


def test_a_closed_client_and_an_async_client_in_a_second_event_loop_say_so(trained_server):
    client = PredictorClient(trained_server.url)
    assert client.ping() == {"status": "ok"}
    client.close()
    with pytest.raises(InvalidRequestError, match="closed"):
        client.ping()
    aclient = AsyncPredictorClient(trained_server.url)
    assert asyncio.run(aclient.ping()) == {"status": "ok"}
    # Its connections belong to the first loop: httpx failed at random ("Event loop is closed").
    with pytest.raises(InvalidRequestError, match="another event loop"):
        asyncio.run(aclient.ping())

    async def closed():
        async with AsyncPredictorClient(trained_server.url) as c:
            pass
        await c.ping()

    with pytest.raises(InvalidRequestError, match="closed"):
        asyncio.run(closed())


def test_a_client_closed_while_a_call_waits_to_retry_says_it_is_closed(port):  # nothing listens on it
    # close() from another thread (aclose() from another task) while a call pauses between
    # tries: the next try raised httpx's RuntimeError, not the closed client's error.
    client = PredictorClient(f"http://127.0.0.1:{port}", retries=3, backoff=0.5)
    raised: list[BaseException] = []

    def call():
        try:
            client.health()
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.2)
    client.close()
    worker.join()
    assert isinstance(raised[0], InvalidRequestError) and "closed" in str(raised[0])

    async def through_the_async_client():
        async with AsyncPredictorClient(f"http://127.0.0.1:{port}", retries=3, backoff=0.5) as client:
            task = asyncio.create_task(client.health())
            await asyncio.sleep(0.2)
            await client.aclose()
            with pytest.raises(InvalidRequestError, match="closed"):
                await task

    asyncio.run(through_the_async_client())


def test_calls_waiting_for_their_turn_when_the_async_client_is_closed_say_it_is_closed():
    # Past max_connections, calls wait in the client for a turn; aclose() meanwhile made each
    # raise httpx's RuntimeError ("Cannot send a request, as the client has been closed").
    with socket.socket() as silent:  # accepts, never answers: the first call holds the one turn
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)

        async def closed_while_queued():
            client = AsyncPredictorClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=2, retries=0,
                                          max_connections=1)
            calls = [asyncio.create_task(client.ping()) for _ in range(3)]
            await asyncio.sleep(0.2)
            await client.aclose()
            return await asyncio.gather(*calls, return_exceptions=True)

        first, *queued = asyncio.run(closed_while_queued())
    assert [type(exc) for exc in queued] == [InvalidRequestError, InvalidRequestError]
    assert all("AsyncPredictorClient is closed" in str(exc) for exc in queued)


def test_answers_of_the_wrong_kind_are_client_errors_not_values():
    import httpx

    replies = {
        "/tables/t.json": httpx.Response(204),
        "/tables/moved.json": httpx.Response(307, headers={"location": "http://elsewhere/t.json"}),
        "/cache/stats": httpx.Response(200, json=[1, 2]),
        "/observe": httpx.Response(200, json="ok"),
        "/tables": httpx.Response(200, json={"tables": {"a": 1}}),
        # A body whose encoding is broken: the request did reach the service.
        "/cache/clear": httpx.Response(200, stream=httpx.ByteStream(b"not gzip"), headers={"content-encoding": "gzip"}),
    }
    with PredictorClient("http://127.0.0.1:9", retries=0,
                         transport=httpx.MockTransport(lambda r: replies[r.url.path])) as client:
        for call, said in ((lambda: client.download_table("t.json"), "204"),
                           (lambda: client.download_table("moved.json"), "a redirect to 'http://elsewhere/t.json'"),
                           (client.cache_stats, "not a JSON object"),
                           (lambda: client.observe(IDENTITY, [{"input_tokens": 1, "runtime_ms": 2}]), "not a JSON object"),
                           (client.list_tables, "not a JSON array"),
                           (client.clear_cache, "could not be decoded")):
            with pytest.raises(PredictorClientError) as err:
                call()
            assert type(err.value) is PredictorClientError and said in err.value.message, err.value.message
        assert "may have carried it out" in err.value.message  # clear_cache is not repeated


def test_a_queue_of_many_failed_tasks_is_said_in_a_bounded_message(trained_server):
    with PredictorClient(trained_server.url) as client:
        with pytest.raises(PredictorClientError) as err:
            client.queue_wait(IDENTITY, [{"input_tokens": "many"}] * 3000)
    assert err.value.message.startswith("no task in the queue could be predicted: trace[0]: ")
    assert err.value.message.endswith("; ...") and len(err.value.message) < 2000


def test_the_readmes_client_example_runs_as_written(tmp_path, monkeypatch):
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Python client\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'PredictorClient("http://localhost:8200"' in code
    monkeypatch.chdir(REPO_ROOT)  # its paths are the repository's
    with run_server(tmp_path / "data") as srv:
        scope: dict = {}
        exec(compile(code.replace("http://localhost:8200", srv.url), "README.md", "exec"), scope)
    waits, wait = scope["waits"], scope["wait"]
    assert list(waits) == ["gpu-0", "gpu-1"] and waits["gpu-1"].tasks == 0 and waits["gpu-1"].expect == 0
    assert waits["gpu-0"].tasks == 46 and waits["gpu-0"].expect == pytest.approx(wait.expect, rel=1e-9)
    assert wait.quantile(0.5) < wait.quantile(0.9) < wait.quantile(0.99)
    done = scope["done"]
    assert [task.index for task in done.completion] == list(range(46))
    assert done.completion[-1].quantiles == done.quantile_predictions and done.expect == pytest.approx(wait.expect, rel=1e-9)


def test_the_readme_names_every_model_the_clients_answer_with():
    # It named six, and said "the other methods return the JSON as a dict": ready() answers a
    # Ready, evaluate() an EvaluationResponse and the seed's predict() a PredictionResult.
    import inspect
    import re
    import typing

    from pydantic import BaseModel

    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    said = re.search(r"Answers are the package's pydantic models \(([^)]*)\)", readme)
    assert said is not None
    for client in (PredictorClient, AsyncPredictorClient):
        answered = set()
        for name, method in inspect.getmembers(client, callable):
            returns = typing.get_type_hints(method).get("return") if not name.startswith("_") else None
            if isinstance(returns, type) and issubclass(returns, BaseModel):
                answered.add(returns.__name__)
        assert set(re.findall(r"`([A-Z]\w+)`", said.group(1))) == answered


def test_every_public_method_of_both_clients_says_what_it_does():
    # help() on a method showed its signature alone for 17 of the blocking client's and
    # every one of the async client's.
    import inspect

    for client in (PredictorClient, AsyncPredictorClient):
        methods = {name: m for name, m in inspect.getmembers(client, callable) if not name.startswith("_")}
        assert {name for name, m in methods.items() if not inspect.getdoc(m)} == set()
    for name in ("predict_single", "queue_wait", "train", "observe", "get_prediction_range"):
        assert getattr(AsyncPredictorClient, name).__doc__ == getattr(PredictorClient, name).__doc__


def test_a_refused_base_url_never_quotes_its_password(port):
    # A password with a '/', '?' or '#' not percent-encoded ends the host part where urlsplit
    # looks (no password found), and an unclosed '[' is urlsplit's ValueError: the refusal
    # quoted the URL whole, password and all, and httpx's "Invalid port: 's3c'" a piece of it.
    for url, shown in ((f"http://user:s3c/ret@127.0.0.1:{port}", f"'http://user:***@127.0.0.1:{port}'"),
                       (f"http://user:s3c?ret@127.0.0.1:{port}", f"'http://user:***@127.0.0.1:{port}'"),
                       (f"http://user:s3c#ret@127.0.0.1:{port}/pre", f"'http://user:***@127.0.0.1:{port}/pre'"),
                       ("http://user:s3cret@[::1:8200", "'http://user:***@[::1:8200'")):
        for make in (PredictorClient, AsyncPredictorClient):
            with pytest.raises(InvalidRequestError) as refused:
                make(url)
            message = refused.value.message
            assert refused.value.field == "base_url" and f"base_url {shown} is not the URL" in message, message
            assert "s3c" not in message and "ret@" not in message, message
    with pytest.raises(InvalidRequestError) as refused:
        PredictorClient(f"http://user:s3c/ret@127.0.0.1:{port}")
    assert refused.value.message.endswith("a '/', '?', '#' or '@' in a password must be percent-encoded)")
    with pytest.raises(InvalidRequestError) as refused:  # a port misread with no password: httpx's words kept
        PredictorClient("http://user@localhost:abc")
    assert refused.value.message.endswith("Invalid port: 'abc'")
    # The same password percent-encoded is a URL the client takes, and errors show it as ***.
    with PredictorClient(f"http://user:s3c%2Fret@127.0.0.1:{port}", retries=0) as client, \
            pytest.raises(PredictorUnavailableError) as err:
        client.ping()
    assert err.value.message.startswith(f"cannot reach the predictor at http://user:***@127.0.0.1:{port}:")


def test_a_base_url_whose_host_is_no_domain_name_is_refused_naming_it():
    # "xn--a-" raised idna's IDNAError from the constructor; a label over 63 characters or an
    # empty one was taken, and every call raised UnicodeError ("encoding with 'idna' codec failed").
    for url, said in (("http://xn--invalid-.com:8200", "A-label must not end with a hyphen"),
                      ("http://" + "a" * 64 + ".example:8200", "label empty or too long"),
                      ("http://a..b:8200", "label empty or too long")):
        for make in (PredictorClient, AsyncPredictorClient):
            with pytest.raises(InvalidRequestError) as refused:
                make(url)
            assert refused.value.field == "base_url"
            assert refused.value.message.endswith(f"its host is not a valid domain name ({said})"), refused.value.message
    host = "a" * 63  # the longest label, an IPv6 address and a trailing dot are names all the same
    for url in (f"http://{host}.example:8200", "http://[::1]:8200", "http://localhost.:8200"):
        PredictorClient(url).close()
    # Bytes of another encoding in its path or password (lone surrogates, as Python reads
    # them) are no host's fault, and not quoted: they were said to be the host's.
    for url in ("http://127.0.0.1:1/\udcff", "http://user:pa\udcffss@127.0.0.1:1"):
        with pytest.raises(InvalidRequestError) as refused:
            PredictorClient(url)
        assert refused.value.field == "base_url" and refused.value.message.endswith(
            ": it holds a lone surrogate (bytes of another encoding), which is not UTF-8 text")
    assert refused.value.message.startswith("base_url 'http://user:***@127.0.0.1:1' is not the URL")


def test_a_deadline_too_large_for_a_double_is_refused_before_sending_naming_it():
    # No server listens: the client refuses it itself, as it refuses a deadline that is no number.
    task = {"input_tokens": 200, "output_tokens": 100}
    with PredictorClient("http://127.0.0.1:9") as client:
        for ask in (lambda: client.predict_single(IDENTITY, task, deadline_ms=10**400),
                    lambda: client.queue_waits(IDENTITY, {"gpu-0": [task]}, deadline_ms=-(10**400))):
            with pytest.raises(InvalidRequestError, match="beyond the largest number a double holds") as err:
                ask()
            assert err.value.field == "deadline_ms"

    async def refused() -> InvalidRequestError:
        async with AsyncPredictorClient("http://127.0.0.1:9") as client:
            with pytest.raises(InvalidRequestError) as err:
                await client.queue_wait(IDENTITY, [task], deadline_ms=10**400)
            return err.value

    assert asyncio.run(refused()).field == "deadline_ms"


@pytest.mark.parametrize("call", ["observe", "evaluate", "predict_batch"])
def test_the_async_client_checks_a_long_list_of_traces_off_its_event_loop(call, monkeypatch):
    # Every value of every trace is looked at: 100,000 observations held the loop (its other
    # coroutines) while they were, as a batch's had until it was moved off it.
    import swarmpilot_predictor.client as client_module

    import inspect

    threads: list[str] = []
    static = isinstance(inspect.getattr_static(client_module._Calls, call), staticmethod)
    build = getattr(client_module._Calls, call)

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return build(*args, **kwargs)

    monkeypatch.setattr(client_module._Calls, call, staticmethod(recorded) if static else recorded)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"status": "error", "message": "no model"})

    async def ask(n: int) -> None:
        traces = [{"input_tokens": 5, "output_tokens": 7, "runtime_ms": 3.0}] * n
        async with AsyncPredictorClient("http://127.0.0.1:9", transport=httpx.MockTransport(answer)) as client:
            with pytest.raises(PredictorClientError):
                await getattr(client, call)(IDENTITY, traces)

    asyncio.run(ask(10))
    asyncio.run(ask(5_000))
    assert threads[0] == "MainThread" and threads[1] != "MainThread"


def test_a_number_names_the_identity_part_a_traces_number_trained_in_every_call_of_both_clients(trained_server,
                                                                                                    tmp_path):
    # Training names a trace's number as training reads it (traces.category_text): a
    # software_version 2.0 trains the model "2", 2.5 the model "2.5". A number given as an
    # identity part was sent as its str(), the URL segment "2.0", which names no model.
    base = {**IDENTITY, "model_name": "versioned-by-number"}
    traces = [{**t, "software_version": 2.0 if i % 2 else 2.5}
              for i, t in enumerate(make_llm_traces(240, seed=7))]
    config = {"model": {k: v for k, v in base.items() if k != "software_version"}, "group_by": ["software_version"],
              "traces": traces, "algorithm": "linear"}
    trace = {"input_tokens": 300, "output_tokens": 120}
    measured = [{**trace, "runtime_ms": 1500.0}]
    table = tmp_path / "t.jsonl"
    table.write_bytes(orjson.dumps(trace) + b"\n")

    def parts(version):
        return (base["model_type"], base["model_name"], base["hardware"], base["software_name"], version)

    with PredictorClient(trained_server.url) as client:
        trained = client.train(config)
        assert sorted(m["identity"]["software_version"] for m in trained.models) == ["2", "2.5"]
        try:
            for version, named in ((2.0, "2"), (2, "2"), (np.float64(2.0), "2"), (np.float32(2.0), "2"),
                                   (np.int64(2), "2"), (-0.0 + 2.5, "2.5"), (np.float32(2.5), "2.5")):
                ident = parts(version)
                want = client.predict_single(parts(named), trace, quantiles=[0.5]).results.quantile_predictions
                assert client.get_model(ident)["software_version"] == named, version
                assert client.predict_single(ident, trace, quantiles=[0.5]).results.quantile_predictions == want
                assert client.predict_batch(ident, [trace], quantiles=[0.5]).results[0].quantile_predictions == want
                assert client.queue_wait(ident, [trace], quantiles=[0.5]).quantile_predictions == want
                assert client.queue_wait(ident, [trace], quantiles=[0.5],
                                         completion_times=True).quantile_predictions == want
                assert client.queue_waits(ident, {"a": [trace]}, quantiles=[0.5])["a"].quantile_predictions == want
                assert client.evaluate(ident, measured).evaluated == 1
                assert client.observe(ident, measured)["model_key"].endswith("/" + named)
                assert client.accuracy(ident, recent=1)["observations"] >= 1
                assert client.generate_table(ident, table, table_name=f"v{named}.json")["rows"] == 1
                assert client.retrain(ident)["model_key"].endswith("/" + named)

            async def through_the_async_client():
                async with AsyncPredictorClient(trained_server.url) as async_client:
                    ident = parts(2.0)
                    assert (await async_client.get_model(ident))["software_version"] == "2"
                    single = await async_client.predict_single(ident, trace, quantiles=[0.5])
                    assert (await async_client.queue_wait(ident, [trace], quantiles=[0.5])).tasks == 1
                    assert (await async_client.observe(ident, measured))["accepted"] == 1
                    assert (await async_client.evaluate(ident, measured)).evaluated == 1
                    return single.results.quantile_predictions

            assert asyncio.run(through_the_async_client()) == client.predict_single(
                parts("2"), trace, quantiles=[0.5]).results.quantile_predictions
        finally:
            for named in ("2", "2.5"):
                with contextlib.suppress(PredictorClientError):  # (not written where a call failed)
                    client.delete_table(f"v{named}.json")
            assert client.delete_model(parts(2.0))["status"] == "success"
            assert client.delete_model(parts(np.float32(2.5)))["status"] == "success"


def test_an_identity_part_that_is_no_finite_number_is_refused_naming_it_by_both_clients(port):
    # Nothing listens on the port: a request sent would be a PredictorUnavailableError. A NaN
    # was sent as the segment "nan", an infinity as "inf" and 10 ** 400 as its 401 digits:
    # none names a model that traces trained (a trace's NaN is a missing value).
    url = f"http://127.0.0.1:{port}"
    bad = (math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"), 10**400)
    trace = {"input_tokens": 5}
    with PredictorClient(url, retries=0) as client:
        for value in bad:
            for call in (lambda ident: client.predict_single(ident, trace), lambda ident: client.get_model(ident),
                         lambda ident: client.observe(ident, [{**trace, "runtime_ms": 1.0}]),
                         lambda ident: client.queue_wait(ident, [trace])):
                with pytest.raises(InvalidRequestError) as err:
                    call(("llm", "m", "h", "s", value))
                assert err.value.field == "identity.software_version" and "names no model" in str(err.value), value

    async def refused(value):
        async with AsyncPredictorClient(url, retries=0) as client:
            with pytest.raises(InvalidRequestError) as err:
                await client.predict_batch({**IDENTITY, "hardware": value}, [trace])
            return err.value.field

    assert [asyncio.run(refused(value)) for value in bad] == ["identity.hardware"] * len(bad)


def test_a_set_of_parts_is_no_identity_for_either_client(port):
    # A set holds its parts in no order: a set of the five strings was sent in its own order
    # (".../0.4.0/NVIDIA H100 80GB HBM3/llm/sglang"), which names another model or none.
    url = f"http://127.0.0.1:{port}"  # nothing listens: a request sent would be a PredictorUnavailableError
    for ident in (set(IDENTITY.values()), frozenset(IDENTITY.values())):
        with PredictorClient(url, retries=0) as client:
            with pytest.raises(InvalidRequestError) as err:
                client.predict_single(ident, {"input_tokens": 5})
            assert err.value.field == "identity" and "five parts" in str(err.value)

        async def refused(ident=ident):
            async with AsyncPredictorClient(url, retries=0) as client:
                with pytest.raises(InvalidRequestError) as err:
                    await client.get_model(ident)
                return err.value.field

        assert asyncio.run(refused()) == "identity"


def test_a_tables_confidence_level_past_the_float_range_is_refused_naming_it_as_a_predictions_is(port):
    # A prediction's JSON body refuses 10 ** 400 naming confidence_level; generate_table, whose
    # form carries it as text, raised OverflowError ("int too large to convert to float").
    url = f"http://127.0.0.1:{port}"  # nothing listens: a request sent would be a PredictorUnavailableError
    for level in (10**400, -(10**400), math.nan):
        with PredictorClient(url, retries=0) as client:
            with pytest.raises(InvalidRequestError) as err:
                client.generate_table(IDENTITY, b'{"input_tokens": 5}\n', confidence_level=level)
            assert err.value.field == "confidence_level"
            with pytest.raises(InvalidRequestError) as err:
                client.predict_single(IDENTITY, {"input_tokens": 5}, confidence_level=level)
            assert err.value.field == "confidence_level"

        async def refused(level=level):
            async with AsyncPredictorClient(url, retries=0) as client:
                with pytest.raises(InvalidRequestError) as err:
                    await client.generate_table(IDENTITY, b'{"input_tokens": 5}\n', confidence_level=level)
                return err.value.field

        assert asyncio.run(refused()) == "confidence_level"


def test_the_packages_identity_types_are_checked_as_every_other_form_is(port):
    # ModelIdentity and IdentityPattern are dataclasses that take what they are given: their
    # parts went out unchecked, an empty one as an empty segment ("/predict/single/llm//*/*/*",
    # which no route matches) and a pattern's number as its str() (2.5 in float32 as "2.5", but
    # 2.0 as "2.0", naming no model).
    from swarmpilot_predictor.client import identity_segments
    from swarmpilot_predictor.identity import IdentityPattern

    assert identity_segments(IdentityPattern("llm", software_version=2.0))[1:] == ["*", "*", "*", "2"]
    assert identity_segments(IdentityPattern("llm", software_version=np.float32(2.5)))[1:] == ["*", "*", "*", "2.5"]
    assert identity_segments(IdentityPattern("llm", "Qwen/Q", "*")) == ["llm", "Qwen%2FQ", "*", "*", "*"]
    url = f"http://127.0.0.1:{port}"  # nothing listens: a request sent would be a PredictorUnavailableError
    for ident, field in ((IdentityPattern("llm", ""), "identity.model_name"),
                         (ModelIdentity("llm", "m", " ", "s", "1"), "identity.hardware"),
                         (IdentityPattern("llm", software_version=math.nan), "identity.software_version")):
        with PredictorClient(url, retries=0) as client:
            with pytest.raises(InvalidRequestError) as err:
                client.predict_single(ident, {"input_tokens": 5})
            assert err.value.field == field

        async def refused(ident=ident):
            async with AsyncPredictorClient(url, retries=0) as client:
                with pytest.raises(InvalidRequestError) as err:
                    await client.get_model(ident)
                return err.value.field

        assert asyncio.run(refused()) == field


def _nested(depth: int) -> list:
    """A list of lists ``depth`` deep."""
    top = []
    inner = top
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return top


def test_a_value_nested_deeper_than_json_is_written_is_refused_naming_its_place_by_both_clients(port):
    # orjson writes 254 levels: a trace's value deeper was "the request body is a dict (...)",
    # naming no field, and one a thousand deep a RecursionError from the message's repr(), as
    # was a trace that is such a list.
    url = f"http://127.0.0.1:{port}"  # nothing listens: a request sent is a PredictorUnavailableError
    with PredictorClient(url, retries=0) as client:
        for depth in (300, 5000):
            with pytest.raises(InvalidRequestError) as err:
                client.predict_single(IDENTITY, {"input_tokens": 5, "shape": _nested(depth)})
            assert err.value.field.startswith("trace.shape[0][0]") and len(err.value.field) <= 80
            assert "nested more than 254 levels deep" in str(err.value)
        with pytest.raises(InvalidRequestError) as err:
            client.predict_single(IDENTITY, _nested(5000))
        assert err.value.field == "trace"
        with pytest.raises(PredictorUnavailableError):  # as deep as JSON goes: sent
            client.predict_single(IDENTITY, {"input_tokens": 5, "shape": _nested(252)})

    async def refused():
        async with AsyncPredictorClient(url, retries=0) as client:
            with pytest.raises(InvalidRequestError) as err:
                await client.predict_batch(IDENTITY, [{"input_tokens": 5}, {"shape": _nested(5000)}])
            return err.value.field

    assert asyncio.run(refused()).startswith("trace[1].shape[0][0]")


def test_a_file_given_as_an_empty_path_is_refused_naming_it_by_both_clients(port, tmp_path, monkeypatch):
    # As a path "" is ".", the working directory: it was read, or written, as that, an
    # IsADirectoryError naming '.' ("[Errno 21] Is a directory: '.'").
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{port}"  # nothing listens: a request sent would be a PredictorUnavailableError
    config = {"model": IDENTITY, "traces": "t.jsonl"}
    with PredictorClient(url, retries=0) as client:
        for call, field in ((lambda: client.generate_table(IDENTITY, ""), "trace_file"),
                            (lambda: client.train(config, files={"t.jsonl": ""}), "files['t.jsonl']"),
                            (lambda: client.train_background(config, files={"t.jsonl": ""}), "files['t.jsonl']"),
                            (lambda: client.download_table("t.json", dest=""), "dest")):
            with pytest.raises(InvalidRequestError) as err:
                call()
            assert err.value.field == field and "empty path" in str(err.value)

    async def refused():
        async with AsyncPredictorClient(url, retries=0) as client:
            fields = []
            for call in (lambda: client.generate_table(IDENTITY, ""), lambda: client.train(config, files={"t.jsonl": ""}),
                         lambda: client.download_table("t.json", dest="")):
                with pytest.raises(InvalidRequestError) as err:
                    await call()
                fields.append(err.value.field)
            return fields

    assert asyncio.run(refused()) == ["trace_file", "files['t.jsonl']", "dest"]


def test_a_model_info_carrying_a_field_of_a_newer_service_still_names_its_model(trained_server):
    # Answers may carry more fields than the client knows (the contract), and a model_info
    # object keeps them: passed back as an identity, each extra one was refused as an unknown
    # identity key. (A mapping's unknown key is still refused: it may be a misspelt part.)
    from swarmpilot_predictor.client import ModelInfo

    trace = {"input_tokens": 100, "output_tokens": 50}
    with PredictorClient(trained_server.url) as client:
        served = client.predict_single(IDENTITY, trace)
        info = ModelInfo.model_validate({**served.results.model_info.model_dump(), "model_version": 1})
        assert client.predict_single(info, trace).results.quantile_predictions == served.results.quantile_predictions
        with pytest.raises(InvalidRequestError) as err:
            client.predict_single(info.model_dump(), trace)
        assert err.value.field == "identity.model_version"

    async def through_the_async_client():
        async with AsyncPredictorClient(trained_server.url) as client:
            return (await client.predict_single(info, trace)).results.quantile_predictions

    assert asyncio.run(through_the_async_client()) == served.results.quantile_predictions


@pytest.mark.parametrize("value", [math.nan, 10**30, "\ud800"])
def test_queue_wait_names_a_traces_unsendable_value_alike_with_and_without_completion_times(port, value):
    # With completion_times, queue_wait asks its traces as the one queue of a queues request,
    # named "queue" there: a NaN in its third trace was "queues.queue[2].input_tokens", a queue
    # its caller never named, where without it is "trace[2].input_tokens".
    url = f"http://127.0.0.1:{port}"  # nothing listens: a request sent would be a PredictorUnavailableError
    traces = [{"input_tokens": 5}, {"input_tokens": 6}, {"input_tokens": value}]
    fields = []
    with PredictorClient(url, retries=0) as client:
        for completion_times in (False, True):
            with pytest.raises(InvalidRequestError) as err:
                client.queue_wait(IDENTITY, traces, completion_times=completion_times)
            fields.append(err.value.field)
            assert str(err.value).startswith("trace[2].input_tokens is ")

    async def refused():
        async with AsyncPredictorClient(url, retries=0) as client:
            with pytest.raises(InvalidRequestError) as err:
                await client.queue_wait(IDENTITY, traces, completion_times=True)
            return err.value.field

    assert fields + [asyncio.run(refused())] == ["trace[2].input_tokens"] * 3


def test_every_models_accuracy_is_each_models_own_through_both_clients(trained_server):
    with PredictorClient(trained_server.url) as client:
        client.observe(IDENTITY, [{"input_tokens": 500, "output_tokens": 100, "runtime_ms": 1500.0}] * 3)
        own = client.accuracy(IDENTITY, recent=2)
        every = client.accuracies(recent=2)
        with pytest.raises(InvalidRequestError) as err:
            client.accuracies(recent=-1)
        assert err.value.field == "recent"

    async def from_async() -> list[dict]:
        async with AsyncPredictorClient(trained_server.url) as client:
            return await client.accuracies(recent=2)

    (entry,) = [a for a in every if a["model_key"] == own["model_key"]]
    assert entry == {k: v for k, v in own.items() if k not in ("status", "retraining")}
    assert own["observations"] >= 3 and entry["recent"]["runtime_ms"] == [1500.0, 1500.0]
    assert asyncio.run(from_async()) == every
