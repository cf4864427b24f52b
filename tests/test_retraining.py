"""Online retraining: a new version only when it beats the serving model on recent observations."""

from __future__ import annotations

import numpy as np
import pytest

from swarmpilot_predictor.features import FeatureSchema
from swarmpilot_predictor.identity import IdentityPattern
from swarmpilot_predictor.retraining import observation_matrix
from swarmpilot_predictor.schemas import TrainConfig
from swarmpilot_predictor.service import PredictorService
from swarmpilot_predictor.settings import PredictorSettings
from swarmpilot_predictor.traces import TraceTable

from .conftest import IDENTITY, cold_start_traces, make_llm_traces, run_with_file_size_limit


def _service(tmp_path, **kw) -> PredictorService:
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", **kw))
    svc.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(300), algorithm="linear"))
    return svc


def _shifted(n: int, factor: float, seed: int) -> list[dict]:
    traces = make_llm_traces(n, seed=seed)
    for t in traces:
        t["runtime_ms"] *= factor
    return traces


def test_shift_retrains_and_recovers_coverage(tmp_path):
    svc = _service(tmp_path)
    pattern = IdentityPattern.from_parts(IDENTITY)
    result = svc.observe(IDENTITY, _shifted(200, 1.6, seed=10))
    assert result["drifted"] is True and result["accepted"] == 200
    decision = svc.retrain(pattern)
    assert decision["status"] == "retrained" and decision["to_version"] == 2
    assert decision["heldout_pinball"][decision["candidate"]] < decision["heldout_pinball"]["current"]
    # The new version is calibrated to the shifted regime.
    svc.observe(IDENTITY, _shifted(300, 1.6, seed=11))
    acc = svc.accuracy(pattern)
    assert acc["version"] == 2 and acc["drifted"] is False
    assert 0.84 <= acc["interval_coverage"]["0.9"] <= 0.96


RETRAIN = """
import json
from pathlib import Path
from swarmpilot_predictor.errors import PredictorError
from swarmpilot_predictor.identity import IdentityPattern
from swarmpilot_predictor.service import PredictorService
from swarmpilot_predictor.settings import PredictorSettings
svc = PredictorService(PredictorSettings(data_dir=Path({data!r})))
pattern = IdentityPattern.from_parts({identity!r})
try:
    out = svc.retrain(pattern)
except PredictorError as exc:
    out = {{"status": exc.status_code, "message": exc.message}}
out["decisions"] = svc.accuracy(pattern)["retraining"]
print(json.dumps(out))
"""


def test_a_retraining_that_cannot_be_stored_says_so(tmp_path):
    svc = _service(tmp_path)
    svc.observe(IDENTITY, _shifted(200, 1.6, seed=10))
    # A "full disk": the new version's model file cannot be written.
    got = run_with_file_size_limit(RETRAIN.format(data=str(tmp_path / "data"), identity=IDENTITY), limit=8192)
    assert got["status"] == 507 and got["message"].startswith("no room to write model")
    (decision,) = got["decisions"]
    assert decision["status"] == "failed" and decision["message"] == got["message"]
    assert decision["heldout_pinball"][decision["candidate"]] < decision["heldout_pinball"]["current"]
    pattern = IdentityPattern.from_parts(IDENTITY)
    assert [v.version for v in svc.registry.versions(svc.registry.resolve(pattern))] == [1]
    assert svc.retrain(pattern)["to_version"] == 2  # with room again


def test_concurrent_retrain_requests_make_one_new_version(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    svc = _service(tmp_path)
    svc.observe(IDENTITY, _shifted(200, 1.6, seed=10))
    pattern = IdentityPattern.from_parts(IDENTITY)
    with ThreadPoolExecutor(3) as pool:
        decisions = list(pool.map(lambda _: svc.retrain(pattern), range(3)))
    assert sorted(d["status"] for d in decisions) == ["retrained", "skipped", "skipped"]
    assert all("version 2 was stored meanwhile" in d["message"] for d in decisions if d["status"] == "skipped")
    assert [v.version for v in svc.registry.versions(svc.registry.resolve(pattern))] == [1, 2]


def test_no_shift_keeps_the_serving_model(tmp_path):
    svc = _service(tmp_path)
    svc.observe(IDENTITY, make_llm_traces(120, seed=20))
    decision = svc.retrain(IdentityPattern.from_parts(IDENTITY))
    assert decision["status"] in ("kept", "retrained")
    if decision["status"] == "kept":
        assert [v.version for v in svc.registry.versions(svc.registry.resolve(IdentityPattern.from_parts(IDENTITY)))] == [1]


def test_auto_retrain_runs_in_the_background(tmp_path):
    svc = _service(tmp_path, auto_retrain=True, retrain_min_observations=10_000)
    result = svc.observe(IDENTITY, _shifted(200, 2.0, seed=30))
    assert result["retraining_scheduled"] is True
    identity = svc.registry.resolve(IdentityPattern.from_parts(IDENTITY))
    svc.retrainer._running[identity].result(timeout=60)
    assert [v.version for v in svc.registry.versions(identity)] == [1, 2]
    assert svc.registry.latest(identity).extra["retrained_from"] == 1
    svc.close()


def test_observe_rejects_traces_without_runtime_or_features(tmp_path):
    svc = _service(tmp_path)
    good = make_llm_traces(5, seed=40)
    bad = [{"input_tokens": 10, "output_tokens": 5}, {"input_tokens": 10, "runtime_ms": 50.0}, {**good[0], "runtime_ms": -1},
           {**good[0], "runtime_ms": 1e308}, {**good[0], "runtime_ms": 1e-300}]
    result = svc.observe(IDENTITY, good + bad)
    assert result["accepted"] == 5
    messages = {r["index"]: r["message"] for r in result["rejected"]}
    assert "runtime_ms" in messages[5] and "output_tokens" in messages[6]
    assert messages[7] == messages[8] == messages[9] == "'runtime_ms' must be a number in [1e-12, 1e+15]"
    assert np.isclose(svc.monitor.report(svc.registry.identities()[0], 1)["observations"], 5)


def test_retraining_learns_which_new_shapes_have_run(tmp_path):
    # Trained before batch size 16 ever ran; then it runs, its first runs slow, and the
    # whole instance gets 1.5x slower, so a retrain is due.
    traces, _ = cold_start_traces(700, seed=3)
    before = [t for t in traces[:400] if t["batch_size"] != 16]
    after = [{**t, "runtime_ms": 1.5 * t["runtime_ms"]} for t in traces[400:]]
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    svc.train(TrainConfig(model=IDENTITY, traces=before, algorithm="linear"))
    pattern = IdentityPattern.from_parts(IDENTITY)
    probe = [{"batch_size": 16, "image_size": 448, "load": 0.5}]
    cold = svc.predict(pattern, probe, quantiles=[0.5]).quantiles[0, 0]
    assert cold > 5 * 0.01 * 16 * 448  # never ran in training: a first run
    svc.observe(IDENTITY, after)
    decision = svc.retrain(pattern)
    assert decision["status"] == "retrained", decision
    identity = svc.registry.resolve(pattern)
    latest = svc.registry.latest(identity)
    assert len(latest.features.history.shapes) == len(svc.registry.get_version(identity, 1).features.history.shapes) + 4
    warm = svc.predict(pattern, probe, quantiles=[0.5]).quantiles[0, 0]
    assert warm == pytest.approx(1.5 * 0.01 * 16 * 448, rel=0.2)
    svc.close()


def test_observations_extend_the_history_unless_they_state_their_first_runs():
    traces, _ = cold_start_traces(300, seed=4)
    schema = FeatureSchema.prepare_training(TraceTable.from_traces(traces))[0]
    end = traces[-1]["ts"]
    new, old = {"batch_size": 3, "image_size": 224, "load": 0.1}, {"batch_size": 8, "image_size": 448, "load": 0.1}
    records = [
        {"ts": end + 100, "runtime_ms": 70.0, "trace": {**new, "ts": end + 1}},  # first run of a new shape
        {"ts": end + 100, "runtime_ms": 7.0, "trace": {**new, "ts": end + 2}},  # its repeat
        {"ts": end + 103, "runtime_ms": 7.0, "trace": dict(new)},  # placed by when it was observed: a repeat
        {"ts": end + 104, "runtime_ms": 40.0, "trace": {**old, "first_of_shape": True}},  # stated: a fresh instance
        {"ts": end + 105, "runtime_ms": 4.0, "trace": {"batch_size": 8}},  # unusable: left out
    ]
    features, X, y = observation_matrix(schema, records)
    np.testing.assert_array_equal(X[:, -1], [1.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(y, [70.0, 7.0, 7.0, 40.0])
    assert len(features.history.shapes) == len(schema.history.shapes) + 1
    # The next version knows the new shape ran at end + 1.
    probe = [{**new, "ts": end}, {**new, "ts": end + 5}, dict(new)]
    np.testing.assert_array_equal(features.matrix(probe)[0][:, -1], [1.0, 0.0, 0.0])
