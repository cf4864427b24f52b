"""The HTTP API over real HTTP: a uvicorn server on a free port, driven with httpx."""

from __future__ import annotations

import asyncio
import gzip
import math
import socket
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import numpy as np
import orjson
import pytest
import yaml

from swarmpilot_predictor.identity import ModelIdentity

from .conftest import IDENTITY, LiveServer, broken_server, make_llm_traces, metric_value, run_server, trained_in_process

KEY = ModelIdentity.from_parts(IDENTITY).key
# The identity as URL segments: a space and a slash inside segments, percent-encoded.
SEGMENTS = "llm/Qwen%2FQwen2.5-7B/NVIDIA%20H100%2080GB%20HBM3/sglang/0.4.0"
TRACE = {"input_tokens": 500, "output_tokens": 100}  # truth: about 20 + 10 + 1200 = 1230 ms


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[LiveServer]:
    with run_server(tmp_path_factory.mktemp("api") / "data") as server:
        yield server


@pytest.fixture(scope="module")
def http(srv) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def trained(http) -> dict:
    """The main model, trained once over JSON; the answer is checked in a test below."""
    r = http.post("/train", json={"config": {"model": IDENTITY, "traces": make_llm_traces(300), "algorithm": "linear"}})
    assert r.status_code == 200, r.text
    return r.json()


def ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, f"{r.status_code}: {r.text}"
    return r.json()


def failed(r: httpx.Response, status: int, *needles: str) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    body = r.json()
    assert body["status"] == "error" and isinstance(body["message"], str)
    for needle in needles:
        assert needle in body["message"], f"{needle!r} not in {body['message']!r}"
    return body


def train_json(http, identity: dict, n: int = 120, seed: int = 0, **kw) -> dict:
    return ok(http.post("/train", json={"config": {"model": identity, "traces": make_llm_traces(n, seed),
                                                   "algorithm": "linear", **kw}}))


def ident(model_type: str, **kw) -> dict:
    """An identity apart from the main model's, so that wildcards over it stay unambiguous."""
    return {**IDENTITY, "model_type": model_type, "model_name": f"{model_type}-m", "hardware": f"{model_type}-hw", **kw}


def nondecreasing(values) -> bool:
    return all(a <= b for a, b in zip(values, values[1:]))


# --------------------------------------------------------------------------- discovery and training


def test_health(http):
    body = ok(http.get("/health"))
    assert body["status"] == "healthy" and body["service"] == "predictor"
    assert body["mode"] in ("default", "lookup_table")
    assert isinstance(body["version"], str) and body["version"]
    assert isinstance(body["lookup_predictor_loaded"], bool)


def test_train_json_answer(trained):
    assert trained["status"] == "success"
    assert trained["model_key"] == KEY
    assert trained["duration_seconds"] > 0
    m = trained["metrics"]
    assert m["rows_used"] == 300 and m["rows_dropped"] == 0
    assert m["pinball_loss"] > 0 and 0 < m["median_mape"] < 0.5
    assert set(m["coverage"]) >= {"0.5", "0.9"}
    assert abs(m["interval_coverage"]["0.9"] - 0.9) < 0.08
    # Runs of one level throughout: ten stretches of 30 tell no level of their own.
    assert m["stretch_levels"]["stretches"] == 10 and m["stretch_levels"]["p_value"] > 1e-3
    assert m["stretch_levels"]["log_sd"] == 0.0 and m["shared_log_sd"] < 0.02


def _train_on_a_run_whose_level_moved(http, name: str, n: int, seed: int, factor: float):
    """A linear model trained on ``n`` LLM traces whose second half ran ``factor`` times the
    first: its identity, the traces and the training's metrics."""
    traces = make_llm_traces(n, seed=seed)
    for t in traces[n // 2:]:
        t["runtime_ms"] *= factor
    model = ident(name)
    m = ok(http.post("/train", json={"config": {"model": model, "traces": traces, "algorithm": "linear"}}))["metrics"]
    return model, traces, m


def test_a_run_whose_level_moved_gives_long_queues_that_share_it(http):
    # The second half of the run 20% slower than the first: a scheduler's queue runs in a
    # stretch of its own, at a level the model cannot know, and its total shares it.
    model, traces, m = _train_on_a_run_whose_level_moved(http, "stretches", 600, seed=8, factor=1.2)
    levels = m["stretch_levels"]
    # (600 rows: the permutation test decides, none of its 2,000 permutations as far apart)
    assert levels["stretches"] == 10 and levels["p_value"] == pytest.approx(1 / 2001)
    # Five stretches at one level and five at 1.2 times it: a log sd of log(1.2) / 2 * sqrt(10 / 9).
    assert levels["log_sd"] == pytest.approx(math.log(1.2) / 2 * math.sqrt(10 / 9), rel=0.2)
    assert m["shared_log_sd"] == pytest.approx(levels["log_sd"], rel=0.1)
    queue = [{"input_tokens": t["input_tokens"], "output_tokens": t["output_tokens"]} for t in traces[:200]]
    body = {"trace": queue, "quantiles": [0.05, 0.95]}
    alone = ok(http.post(f"/predict/batch/{'/'.join(model.values())}", json=body))
    shared = ok(http.post(f"/predict/batch/{'/'.join(model.values())}", json=body | {"shared_factor": True}))
    lo, hi = shared["total_quantiles"]
    assert hi / lo > 1.2 > alone["total_quantiles"][1] / alone["total_quantiles"][0]


def test_a_run_whose_unit_changed_halfway_trains_a_model_that_answers(http):
    # The second half of the file a billion times the first (seconds, then nanoseconds):
    # the stretches' spread measured a log sd of 10.9, over the 10 a stored model may hold,
    # and the stored model answered every prediction with a 500 ("cannot be loaded").
    model, traces, m = _train_on_a_run_whose_level_moved(http, "unitswitch", 300, seed=9, factor=1e9)
    url = "/".join(model.values())
    single = ok(http.post(f"/predict/single/{url}", json={"trace": {"input_tokens": 100, "output_tokens": 50}}))
    assert nondecreasing(single["results"]["quantile_predictions"]) and math.isfinite(single["results"]["expect"])
    queue = [{"input_tokens": t["input_tokens"], "output_tokens": t["output_tokens"]} for t in traces[:50]]
    batch = ok(http.post(f"/predict/batch/{url}", json={"trace": queue, "shared_factor": True}))
    assert all(math.isfinite(v) for v in batch["total_quantiles"]) and nondecreasing(batch["total_quantiles"])
    assert m["stretch_levels"]["log_sd"] > 10 and m["shared_log_sd"] == 10.0


def multipart_train(http, config_name: str, config_bytes: bytes, files: dict[str, bytes]) -> httpx.Response:
    parts = [("config", (config_name, config_bytes, "application/octet-stream"))]
    parts += [(f"file{i}", (name, data, "application/octet-stream")) for i, (name, data) in enumerate(files.items())]
    return http.post("/train", files=parts)


def csv_bytes(traces) -> bytes:
    lines = ["task_id,input_tokens,output_tokens,runtime_ms"]
    lines += [f"{t['task_id']},{t['input_tokens']},{t['output_tokens']},{t['runtime_ms']}" for t in traces]
    return ("\n".join(lines) + "\n").encode()


def jsonl_bytes(traces) -> bytes:
    return b"".join(orjson.dumps(t) + b"\n" for t in traces)


@pytest.mark.parametrize("config_format, trace_name", [
    ("json", "llm.jsonl"),
    ("yaml", "llm.csv"),
    ("yaml", "llm.jsonl.gz"),
    ("json", "llm.json.gz"),
])
def test_train_multipart_with_an_uploaded_trace_file(http, config_format, trace_name):
    traces = make_llm_traces(150, seed=3)
    data = {".jsonl": jsonl_bytes, ".csv": csv_bytes, ".json": orjson.dumps}[
        "." + trace_name.split(".")[1]](traces)
    if trace_name.endswith(".gz"):
        data = gzip.compress(data)
    model_type = f"mp-{config_format}-{trace_name.replace('.', '-')}"
    config = {"model": ident(model_type), "traces": trace_name, "algorithm": "empirical", "quantiles": [0.5, 0.9]}
    raw = orjson.dumps(config) if config_format == "json" else yaml.safe_dump(config).encode()
    body = ok(multipart_train(http, f"config.{config_format}", raw, {trace_name: data}))
    assert body["status"] == "success"
    assert body["model_key"] == ModelIdentity.from_parts(ident(model_type)).key
    assert body["metrics"]["rows_used"] == 150
    detail = ok(http.get(f"/models/{model_type}/*/*/*/*"))["model"]
    assert detail["quantiles"] == [0.5, 0.9] and detail["algorithm"] == "empirical"


def test_train_from_a_csv_file_in_the_schedulers_structured_form(http):
    # The contract's "everywhere a trace is": a CSV's input_feature cells hold the JSON list.
    traces = make_llm_traces(150, seed=3)
    lines = ["input_feature,model_id,runtime_ms"]
    for t in traces:
        pairs = orjson.dumps([{"param_name": k, "val": t[k]} for k in ("input_tokens", "output_tokens")]).decode()
        lines.append('"' + pairs.replace('"', '""') + f'",turbo,{t["runtime_ms"]}')
    config = {"model": ident("structured-csv"), "traces": "s.csv", "algorithm": "linear"}
    body = ok(multipart_train(http, "c.json", orjson.dumps(config), {"s.csv": ("\n".join(lines) + "\n").encode()}))
    assert body["metrics"]["rows_used"] == 150
    detail = ok(http.get("/models/structured-csv/*/*/*/*"))["model"]
    assert sorted(f["name"] for f in detail["features"]) == ["input_tokens", "output_tokens"]

def test_train_with_the_power_law_family_and_predict_from_it(http):
    identity = ident("power")
    body = train_json(http, identity, n=200, algorithm="power")
    assert body["metrics"]["algorithm"] == "power" and list(body["metrics"]["cv_scores"]) == ["power"]
    path = ModelIdentity.from_parts(identity).key
    res = ok(http.post(f"/predict/single/{path}", json={"trace": TRACE}))["results"]
    assert res["quantile_predictions"][1] == pytest.approx(1230, rel=0.1)  # the median
    assert nondecreasing(res["quantile_predictions"])
    failed(http.post("/train", json={"config": {"model": identity, "traces": make_llm_traces(50), "algorithm": "spline"}}),
           422, "algorithm")
    # Boosted trees need a feature to split on; these traces have only their runtimes.
    alone = [{"runtime_ms": t["runtime_ms"]} for t in make_llm_traces(50)]
    body = failed(http.post("/train", json={"config": {"model": identity, "traces": alone, "algorithm": "lightgbm"}}),
                  422, "'lightgbm' needs a feature")
    assert body["field"] == "config.algorithm"


def test_a_training_error_names_the_config_key_at_fault(http):
    traces = make_llm_traces(40)
    body = failed(http.post("/train", json={"config": {"model": ident("named"), "traces": traces,
                                                      "features": ["input_tokens", "nope"]}}), 422, "nope")
    assert body["field"] == "config.features"
    body = failed(http.post("/train", json={"config": {"model": ident("named"), "traces": traces, "target": "latency"}}),
                  422, "'latency'")
    assert body["field"] == "config.target"
    # Traces that are not JSON objects are named in the request's terms, not pydantic's union branches.
    body = failed(http.post("/train", json={"config": {"model": ident("named"), "traces": [1, 2]}}),
                  422, "trace 0 must be a JSON object")
    assert body["field"] == "config.traces" and "list[" not in body["message"]
    body = failed(http.post("/train", json={"config": {"model": ident("named"), "traces": 5}}),
                  422, "a list of traces", "or the name of a trace file")
    assert body["field"] == "config.traces"
    # The config unwrapped, as the client and the CLI take it: the message shows the wrapping.
    body = failed(http.post("/train", json={"model": ident("named"), "traces": traces}), 422,
                  'a training body is {"config": {"model": ..., "traces": ...}}')
    assert body["field"] == "config"
    ok(http.get("/models"))
    failed(http.get("/models/named/*/*/*/*"), 404)


def test_train_multipart_config_as_a_form_field_naming_the_upload_by_its_field(http):
    config = {"model": ident("mp-field"), "traces": "tracefile", "algorithm": "linear"}
    r = http.post("/train", data={"config": orjson.dumps(config).decode()},
                  files={"tracefile": ("whatever.jsonl", jsonl_bytes(make_llm_traces(80)), "application/x-ndjson")})
    assert ok(r)["metrics"]["rows_used"] == 80


def test_train_from_a_file_in_the_data_directory(srv, http):
    folder = srv.data_dir / "traces"
    folder.mkdir(exist_ok=True)
    (folder / "dd.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(make_llm_traces(90))))
    body = ok(http.post("/train", json={"config": {"model": ident("datadir"), "traces": "traces/dd.jsonl.gz",
                                                   "algorithm": "linear"}}))
    assert body["metrics"]["rows_used"] == 90


def test_train_group_by_over_http(http):
    traces = [{**t, "hardware": "A100" if i % 2 else "H100"} for i, t in enumerate(make_llm_traces(160))]
    body = ok(http.post("/train", json={"config": {"model": ident("grouped"), "group_by": ["hardware"],
                                                   "traces": traces, "algorithm": "linear"}}))
    assert sorted(m["model_key"] for m in body["models"]) == [
        "grouped/grouped-m/A100/sglang/0.4.0", "grouped/grouped-m/H100/sglang/0.4.0"]
    assert [m["metrics"]["rows_used"] for m in body["models"]] == [80, 80]
    # Its answer's rows_in_no_group (the traces lacking a group_by key) was not in the schema's TrainResult.
    spec = ok(http.get("/openapi.json"))
    assert body["rows_in_no_group"] == 0 and _unnamed(body, {"$ref": "#/components/schemas/TrainResult"}, spec) == []
    # now 'grouped/*/*/*/*' is ambiguous and names both
    err = failed(http.post("/predict/single/grouped/*/*/*/*", json={"trace": TRACE}), 409, "A100", "H100")
    assert len(err["candidates"]) == 2 and err["field"] == "identity"
    # A trace that says its hardware picks the model; one that contradicts the URL is refused.
    single = ok(http.post("/predict/single/grouped/*/*/*/*", json={"trace": {**TRACE, "hardware": "A100"}}))
    assert single["results"]["model_info"]["hardware"] == "A100"
    failed(http.post("/predict/single/grouped/grouped-m/H100/sglang/0.4.0", json={"trace": {**TRACE, "hardware": "A100"}}),
           422, "trace: the trace's hardware 'A100' names another model than grouped/grouped-m/H100/sglang/0.4.0")
    batch = ok(http.post("/predict/batch/grouped/*/*/*/*", json={"trace": [{**TRACE, "hardware": "H100"}, TRACE]}))
    assert [r["model_info"]["hardware"] for r in batch["results"]] == ["H100", "H100"]
    err = failed(http.post("/predict/batch/grouped/*/*/*/*", json={"trace": [{**TRACE, "hardware": "H100"},
                                                                          {**TRACE, "hardware": "A100"}]}),
                 409, "the traces name different models")
    assert err["candidates"] == ["grouped/grouped-m/A100/sglang/0.4.0", "grouped/grouped-m/H100/sglang/0.4.0"]
    assert err["field"] == "identity"
    # Settled by the traces, a miss is named as the URL's would be: the models one part away.
    err = failed(http.post("/predict/single/grouped/*/*/*/*", json={"trace": {**TRACE, "hardware": "B200"}}), 404,
                 "no trained model matches grouped/*/*/*/* with the traces' hardware 'B200'; did you mean "
                 "grouped/grouped-m/A100/sglang/0.4.0, grouped/grouped-m/H100/sglang/0.4.0?")
    assert err["field"] == "identity" and len(err["candidates"]) == 2
    err = failed(http.post("/predict/batch/grouped/*/*/*/*", json={"trace": [{**TRACE, "hardware": "B200"},
                                                                          {**TRACE, "hardware": "T4"}]}), 404)
    assert "did you mean" not in err["message"] and "candidates" not in err  # which of the two values is meant?
    # None matching: the models one named part away are named (a typo, another version).
    err = failed(http.post("/predict/single/grouped/grouped-m/*/sglang/0.5.0", json={"trace": TRACE}), 404,
                 "no trained model matches grouped/grouped-m/*/sglang/0.5.0; did you mean "
                 "grouped/grouped-m/A100/sglang/0.4.0, grouped/grouped-m/H100/sglang/0.4.0?")
    assert err["candidates"] == ["grouped/grouped-m/A100/sglang/0.4.0", "grouped/grouped-m/H100/sglang/0.4.0"]
    err = failed(http.get("/models/grouped/grouped-x/A100/sglang/0.4.0"), 404, "did you mean grouped/grouped-m/A100/sglang/0.4.0?")
    assert err["candidates"] == ["grouped/grouped-m/A100/sglang/0.4.0"] and err["field"] == "identity"
    err = failed(http.get("/models/grouped/grouped-x/A100/vllm/0.4.0"), 404)  # two parts away: not a near miss
    assert "did you mean" not in err["message"] and "candidates" not in err

    # Requests arriving together are evaluated together; each still gets its own answer.
    async def together():
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=60) as client:
            return await asyncio.gather(*[
                client.post("/predict/single/grouped/*/*/*/*", json={"trace": {**TRACE, "hardware": hw}})
                for hw in ("B200", "A100", "B200", "H100", "B200", "A100")])

    answers = asyncio.run(together())
    assert [r.status_code for r in answers] == [404, 200, 404, 200, 404, 200]
    assert "with the traces' hardware 'B200'" in answers[0].json()["message"]
    assert [r.json()["results"]["model_info"]["hardware"] for r in answers[1::2]] == ["A100", "H100", "A100"]


def test_models_listing(http, trained):
    body = ok(http.get("/models"))
    assert body["status"] == "success"
    entry = next(m for m in body["models"] if m["model_type"] == "llm")
    assert entry["model_name"] == "Qwen/Qwen2.5-7B"
    assert entry["hardware_types"] == ["NVIDIA H100 80GB HBM3"]
    assert entry["software_versions"] == ["sglang/0.4.0"]
    assert isinstance(entry["total_predictions"], int)
    (model,) = entry["models"]
    assert model["key"] == KEY and model["versions"] == [1] and model["samples"] == 300
    assert model["metrics"]["rows_used"] == 300


def test_models_listing_keeps_software_stacks_with_a_slash_apart(http):
    # software vllm/cuda at 0.4 and vllm at cuda/0.4 are two stacks: joined as they are, both
    # read "vllm/cuda/0.4", and the listing showed one.
    stacks = [("vllm/cuda", "0.4"), ("vllm", "cuda/0.4"), ("v%2F", "1")]
    models = [{"model_type": "stacks", "model_name": "stacked", "hardware": "stack-gpu", "software_name": software_name,
               "software_version": software_version} for software_name, software_version in stacks]
    for model in models:
        ok(http.post("/train", json={"config": {"model": model, "traces": make_llm_traces(60), "algorithm": "linear"}}))
    entry = next(m for m in ok(http.get("/models"))["models"] if m["model_type"] == "stacks")
    assert entry["software_versions"] == ["v%252F/1", "vllm%2Fcuda/0.4", "vllm/cuda%2F0.4"]
    assert len(entry["models"]) == 3
    for model in models:  # (the module's other tests ask for '*' parts the three would match)
        ok(http.delete("/models/" + "/".join(quote(model[k], safe="") for k in IDENTITY)))


@pytest.mark.parametrize("path", [SEGMENTS, "llm/*/*/*/*", "*/Qwen%2FQwen2.5-7B/*/*/*", "llm/*/NVIDIA%20H100%2080GB%20HBM3/*/*"])
def test_model_detail_with_encoded_segments_and_wildcards(http, trained, path):
    model = ok(http.get(f"/models/{path}"))["model"]
    assert model["key"] == KEY
    assert model["model_name"] == "Qwen/Qwen2.5-7B" and model["hardware"] == "NVIDIA H100 80GB HBM3"
    assert [v["version"] for v in model["version_details"]] == [1]


def test_model_version_detail(http, trained):
    meta = ok(http.get(f"/models/{SEGMENTS}/versions/1"))["model"]
    assert meta["version"] == 1 and meta["identity"] == IDENTITY
    assert [f["name"] for f in meta["features"]] == ["input_tokens", "output_tokens"]
    failed(http.get(f"/models/{SEGMENTS}/versions/9"), 404, "no version 9")
    assert http.get(f"/models/{SEGMENTS}/versions/latest").status_code == 422
    # Written otherwise than in digits, a number is refused, not read as the version it rounds to.
    # A URL's parameter is named by its name, whatever the check that refuses it.
    for loose in ("1.0", "%201", "1%20", "+1", "1e0", "%C2%B9"):
        assert failed(http.get(f"/models/{SEGMENTS}/versions/{loose}"), 422, "version: ")["field"] == "version"
        assert failed(http.delete(f"/models/{SEGMENTS}/versions/{loose}"), 422, "version: ")["field"] == "version"
        assert failed(http.get(f"/models/{SEGMENTS}/accuracy?version={loose}"), 422, "version: ")["field"] == "version"
        assert failed(http.get(f"/models/{SEGMENTS}/accuracy?recent={loose}"), 422, "recent: ")["field"] == "recent"
    for bad in ("abc", "-"):  # not a number: refused by the route's declared type
        assert failed(http.get(f"/models/{SEGMENTS}/accuracy?recent={bad}"), 422, "recent: ")["field"] == "recent"
    assert failed(http.get(f"/models/{SEGMENTS}/accuracy?recent=5001"), 422, "recent must be")["field"] == "recent"
    assert failed(http.post("/train?background=maybe", json={}), 422, "background: ")["field"] == "background"
    failed(http.delete(f"/models/{SEGMENTS}/versions/1.0"), 422, "version: must be a whole number, written in digits, got '1.0'")
    # Versions count from 1, as a prediction's `version` does: 0 or -1 is a 422 on the field
    # (it was a 404, "has no version -1", beside the 422 for 1.0).
    for below in ("0", "-1"):
        assert failed(http.get(f"/models/{SEGMENTS}/versions/{below}"), 422, "greater than or equal to 1")["field"] == "version"
        assert failed(http.delete(f"/models/{SEGMENTS}/versions/{below}"), 422, "greater than or equal to 1")["field"] == "version"
        assert failed(http.get(f"/models/{SEGMENTS}/accuracy?version={below}"), 422, "greater than or equal to 1")["field"] == "version"
    assert ok(http.get(f"/models/{SEGMENTS}/versions/01"))["model"]["version"] == 1
    # A query a route does not read is not its to refuse.
    assert ok(http.get(f"/models/{SEGMENTS}/versions/1?version=latest&recent=all"))["model"]["version"] == 1
    assert ok(http.get(f"/models/{SEGMENTS}/accuracy?version=1&recent=0"))["recent"]["runtime_ms"] == []


def test_a_route_that_acts_refuses_a_query_parameter_or_body_it_does_not_take(http, trained):
    # Ignored, each was answered as if it had not been sent: every version deleted, the latest
    # version's prediction, a training the client waited for.
    versions = ok(http.get(f"/models/{SEGMENTS}"))["model"]["versions"]
    body = failed(http.delete(f"/models/{SEGMENTS}?version=1"), 422, "query parameter 'version' is not one this route takes (it takes none)")
    assert body["field"] == "version"
    assert ok(http.get(f"/models/{SEGMENTS}"))["model"]["versions"] == versions
    for kind, body in (("single", {"trace": TRACE}), ("batch", {"trace": [TRACE]}), ("queues", {"queues": {"a": [TRACE]}})):
        assert failed(http.post(f"/predict/{kind}/{SEGMENTS}?version=1", json=body), 422, "'version'")["field"] == "version"
    assert failed(http.post("/train?backgroud=true", json={}), 422,
                  "query parameter 'backgroud' is not one this route takes (it takes 'background')")["field"] == "backgroud"
    assert failed(http.get(f"/models/{SEGMENTS}/accuracy?verison=1"), 422, "it takes 'version', 'recent'")["field"] == "verison"
    for r in (http.post("/observe?x=1", json={}), http.post("/cache/clear?x=1"), http.post(f"/models/{SEGMENTS}/retrain?x=1"),
              http.delete(f"/models/{SEGMENTS}/versions/99?x=1"), http.delete("/tables/none.json?x=1")):
        assert failed(r, 422, "query parameter 'x' is not one this route takes")["field"] == "x"
    # A table's generation answers in its own shape ("failed", with "path"), as its other failures do.
    table_failed(http.post(f"/predict/table/{SEGMENTS}?x=1", files={"trace_file": ("t.jsonl", b"{}")}), 422, "x",
                 "query parameter 'x' is not one this route takes")
    # One with no name is named as it came there too (its "field" was left out: fuzz_api.py, seed 21).
    table_failed(http.post(f"/predict/table/{SEGMENTS}?=&&=", files={"trace_file": ("t.jsonl", b"{}")}), 422, "",
                 "query parameter '' is not one this route takes (it takes none)")
    # Nor is a body ignored where a route takes none ({} or nothing).
    body = failed(http.request("DELETE", f"/models/{SEGMENTS}", json={"version": 1}), 422, "Extra inputs are not permitted")
    assert body["field"] == "version"
    assert ok(http.get(f"/models/{SEGMENTS}"))["model"]["versions"] == versions
    assert failed(http.request("DELETE", f"/models/{SEGMENTS}/versions/99", json=[1]), 422)["field"] == "body"
    assert failed(http.request("DELETE", "/tables/none.json", content=b"none"), 422, "not valid JSON")["field"] == "body"
    assert failed(http.post("/cache/clear", json={"all": True}), 422)["field"] == "all"
    assert ok(http.post("/cache/clear", json={}))["status"] == "success"
    # A parameter with no name is named as it came; a read that takes none ignores any (probes add their own).
    assert failed(http.get(f"/models/{SEGMENTS}/accuracy?=&="), 422, "query parameter ''")["field"] == ""
    assert ok(http.get("/health?_=1"))["status"] == "healthy"
    assert ok(http.post(f"/predict/single/{SEGMENTS}", json={"trace": TRACE}))["results"]["model_version"] == versions[-1]


def test_versions_and_deletion(http):
    who = ident("deltest", model_name="org/name v1")
    path = "deltest/org%2Fname%20v1/deltest-hw/sglang/0.4.0"
    for seed in range(3):
        assert train_json(http, who, seed=seed)["version"] == seed + 1
    assert ok(http.get(f"/models/{path}"))["model"]["versions"] == [1, 2, 3]
    failed(http.delete("/models/deltest/*/*/*/*"), 422, "full identity")
    body = ok(http.delete(f"/models/{path}/versions/2"))
    assert body["deleted_versions"] == [2] and body["model_key"] == "deltest/org%2Fname v1/deltest-hw/sglang/0.4.0"
    assert ok(http.get(f"/models/{path}"))["model"]["versions"] == [1, 3]
    failed(http.get(f"/models/{path}/versions/2"), 404)
    failed(http.delete(f"/models/{path}/versions/2"), 404)
    pred = ok(http.post(f"/predict/single/{path}", json={"trace": TRACE}))
    assert pred["results"]["model_version"] == 3
    assert ok(http.delete(f"/models/{path}"))["deleted_versions"] == [1, 3]
    failed(http.get(f"/models/{path}"), 404)
    failed(http.post(f"/predict/single/{path}", json={"trace": TRACE}), 404)
    assert all(m["model_type"] != "deltest" for m in ok(http.get("/models"))["models"])


def test_a_model_whose_observations_folder_is_a_file_is_deleted_with_a_200(http, srv, trained):
    # A file put by hand where the model's observations folder goes: the DELETE deleted the
    # model's versions, then answered "internal error: NotADirectoryError" (500).
    who = ident("obsfile")
    path = "obsfile/obsfile-m/obsfile-hw/sglang/0.4.0"
    train_json(http, who)
    (srv.data_dir / "observations" / ModelIdentity.from_parts(who).dirname).write_bytes(b"not a folder")
    assert ok(http.delete(f"/models/{path}"))["deleted_versions"] == [1]
    failed(http.get(f"/models/{path}"), 404)
    assert ok(http.post(f"/predict/single/{SEGMENTS}", json={"trace": TRACE}))["results"]["status"] == "success"


# --------------------------------------------------------------------------- prediction


@pytest.mark.parametrize("path", [SEGMENTS, "llm/*/*/*/*", "*/*/NVIDIA%20H100%2080GB%20HBM3/*/*", "llm/Qwen%2FQwen2.5-7B/*/*/*"])
def test_predict_single(http, trained, path):
    body = ok(http.post(f"/predict/single/{path}", json={"trace": TRACE}))
    s = body["summary"]
    assert (s["total"], s["success"], s["failed"], s["confidence_level"]) == (1, 1, 0, 0.95)
    assert s["duration_seconds"] >= 0
    r = body["results"]
    assert r["status"] == "success"
    assert r["quantiles"] == [0.25, 0.5, 0.75, 0.99]  # the defaults of training
    q = r["quantile_predictions"]
    assert len(q) == 4 and nondecreasing(q) and q[0] < q[-1]
    assert 900 < q[1] < 1600
    assert q[0] < r["expect"] < q[-1] and r["error"] > 0
    low, high = r["interval"]
    assert low < q[1] < high
    assert r["model_info"] == {"type": "llm", "name": "Qwen/Qwen2.5-7B", "hardware": "NVIDIA H100 80GB HBM3",
                               "software_name": "sglang", "software_version": "0.4.0"}


def test_predict_single_structured_trace_equals_flat(http, trained):
    structured = {"input_feature": [{"param_name": k, "val": v} for k, v in TRACE.items()], "model_id": "turbo"}
    a = ok(http.post(f"/predict/single/{SEGMENTS}", json={"trace": TRACE}))["results"]
    b = ok(http.post(f"/predict/single/{SEGMENTS}", json={"trace": structured}))["results"]
    assert a["quantile_predictions"] == b["quantile_predictions"]


def test_custom_quantiles_and_the_interval_of_the_confidence_level(http, trained):
    levels = [0.01, 0.05, 0.1, 0.5, 0.9, 0.95, 0.99]
    r = ok(http.post(f"/predict/single/{SEGMENTS}",
                     json={"trace": TRACE, "quantiles": levels, "confidence_level": 0.9}))["results"]
    assert r["quantiles"] == levels
    q = dict(zip(levels, r["quantile_predictions"]))
    assert nondecreasing(r["quantile_predictions"]) and q[0.01] < q[0.99]
    # the central 90% interval runs from the 5% to the 95% quantile
    assert r["interval"] == pytest.approx([q[0.05], q[0.95]], rel=1e-6)
    r80 = ok(http.post(f"/predict/single/{SEGMENTS}", json={"trace": TRACE, "confidence_level": 0.8,
                                                            "quantiles": [0.1, 0.9]}))
    assert r80["summary"]["confidence_level"] == 0.8
    assert r80["results"]["interval"] == pytest.approx([q[0.1], q[0.9]], rel=1e-6)
    # a wider level gives a wider interval
    r99 = ok(http.post(f"/predict/single/{SEGMENTS}", json={"trace": TRACE, "confidence_level": 0.99}))["results"]
    assert r99["interval"][0] < q[0.05] and r99["interval"][1] > q[0.95]


def test_expect_is_the_mean_not_the_average_of_the_quantiles(http, trained):
    r = ok(http.post(f"/predict/single/{SEGMENTS}", json={"trace": TRACE, "quantiles": [0.5, 0.99]}))["results"]
    assert r["expect"] != pytest.approx(sum(r["quantile_predictions"]) / 2, rel=1e-3)
    assert r["expect"] == pytest.approx(r["quantile_predictions"][0], rel=0.2)


def test_predict_batch_totals(http, trained):
    traces = [{"input_tokens": 100 * i, "output_tokens": 20 * i} for i in range(1, 9)]
    body = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": traces, "quantiles": [0.1, 0.5, 0.9],
                                                            "confidence_level": 0.8}))
    s = body["summary"]
    assert (s["total"], s["success"], s["failed"]) == (8, 8, 0)
    results = body["results"]
    assert [r["status"] for r in results] == ["success"] * 8
    medians = [r["quantile_predictions"][1] for r in results]
    assert nondecreasing(medians)  # larger tasks, longer runtimes, in order
    assert body["expect"] == pytest.approx(sum(r["expect"] for r in results), rel=1e-9)
    # Independent tasks: their variances add up.
    assert body["error"] == pytest.approx(math.sqrt(sum(r["error"] ** 2 for r in results)), rel=1e-6)
    tq = body["total_quantiles"]
    assert len(tq) == 3 and tq[0] < tq[1] < tq[2]
    # The total's median lies near its mean; its spread is less than the sum of spreads.
    assert tq[1] == pytest.approx(body["expect"], rel=0.1)
    assert tq[2] - tq[0] < sum(r["quantile_predictions"][2] - r["quantile_predictions"][0] for r in results)
    low, high = body["total_interval"]
    assert low == pytest.approx(tq[0], rel=1e-3) and high == pytest.approx(tq[2], rel=1e-3)
    # Asked for, the model's factor common to all of them (README, Modelling) widens the total.
    shared = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": traces, "quantiles": [0.1, 0.5, 0.9],
                                                              "confidence_level": 0.8, "shared_factor": True}))
    shares = [r["expect"] / body["expect"] for r in results]  # the factor, less what the tasks hold of it
    tau = trained["metrics"]["shared_log_sd"] * math.sqrt(1 - sum(w * w for w in shares))
    var = math.exp(tau**2) * sum(r["error"] ** 2 for r in results) + math.expm1(tau**2) * body["expect"] ** 2
    assert shared["error"] == pytest.approx(math.sqrt(var), rel=1e-6) and shared["error"] > body["error"]
    assert shared["expect"] == pytest.approx(body["expect"], rel=1e-9) and shared["results"] == results
    assert shared["total_quantiles"][0] < tq[0] and shared["total_quantiles"][2] > tq[2]


def test_a_batch_asked_about_its_tasks_alone_skips_the_totals_distribution(http, trained):
    traces = [{"input_tokens": 100 * (k + 1), "output_tokens": 10 * (k + 1)} for k in range(20)]
    for options in ({}, {"shared_factor": True}, {"lookup_table": False, "confidence_level": 0.8}):
        full = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": traces, **options}))
        lean = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": traces, "total_distribution": False, **options}))
        assert lean["total_quantiles"] is None and lean["total_interval"] is None
        assert lean["expect"] == pytest.approx(full["expect"], rel=1e-12)
        assert lean["error"] == pytest.approx(full["error"], rel=1e-12)
        assert lean["results"] == full["results"] and lean["quantiles"] == full["quantiles"]
    empty = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": [], "total_distribution": False}))
    assert (empty["expect"], empty["total_quantiles"], empty["total_interval"]) == (0.0, None, None)
    r = http.post(f"/predict/batch/{SEGMENTS}", json={"trace": traces, "total_distribution": "no"})
    assert r.status_code == 422 and "total_distribution" in r.text


def test_predict_batch_one_bad_trace_does_not_fail_the_others(http, trained):
    traces = [TRACE, {"input_tokens": 5}, {"input_tokens": "many", "output_tokens": 3}, TRACE]
    body = ok(http.post("/predict/batch/llm/*/*/*/*", json={"trace": traces}))
    assert body["summary"]["total"] == 4 and body["summary"]["success"] == 2 and body["summary"]["failed"] == 2
    r = body["results"]
    assert [x["status"] for x in r] == ["success", "error", "error", "success"]
    assert "output_tokens" in r[1]["message"]
    assert "input_tokens" in r[2]["message"]
    assert r[0]["quantile_predictions"] == r[3]["quantile_predictions"]
    assert body["expect"] == pytest.approx(r[0]["expect"] + r[3]["expect"])


def test_predict_batch_with_no_predictable_trace(http, trained):
    body = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": [{"input_tokens": 1}]}))
    assert body["summary"]["failed"] == 1 and body["expect"] is None
    body = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": []}))
    assert body["summary"]["total"] == 0 and body["results"] == []


def test_an_empty_queue_totals_zero(http, trained):
    # A scheduler asks about idle instances too: an empty queue drains at once.
    body = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": [], "quantiles": [0.5, 0.9], "confidence_level": 0.8}))
    assert body["summary"] == {**body["summary"], "total": 0, "success": 0, "failed": 0}
    assert body["expect"] == 0 and body["error"] == 0
    assert body["quantiles"] == [0.5, 0.9] and body["total_quantiles"] == [0, 0] and body["total_interval"] == [0, 0]
    # With the model's default levels.
    body = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": []}))
    assert body["total_quantiles"] == [0] * len(body["quantiles"]) and body["expect"] == 0


# --------------------------------------------------------------------------- bad input: a clear 4xx, never a 500


@pytest.fixture(scope="module")
def ambiguous(http, trained):
    train_json(http, ident("twin", hardware="A100"))
    train_json(http, ident("twin", hardware="H100"))


SINGLE = f"/predict/single/{SEGMENTS}"
BATCH = f"/predict/batch/{SEGMENTS}"


@pytest.mark.parametrize("path, content, status, field, needles", [
    (SINGLE, b'{"trace": {"input_tokens": 1', 422, 'body', ["not valid JSON"]),
    (SINGLE, b"", 422, 'body', ["not valid JSON"]),
    # NaN and the infinities are no JSON numbers: refused, the field named (it was "body", at a column).
    (SINGLE, b'{"trace": {"input_tokens": NaN, "output_tokens": 1}}', 422, 'trace.input_tokens',
     ["trace.input_tokens: NaN is not a number JSON allows"]),
    (SINGLE, b'{"trace": {"input_tokens": Infinity, "output_tokens": 1}}', 422, 'trace.input_tokens', ["Infinity is not"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "confidence_level": NaN}', 422, 'confidence_level', ["NaN"]),
    (BATCH, b'{"trace": [{"input_tokens": 1, "output_tokens": 1}, {"input_tokens": 2, "output_tokens": -Infinity}]}',
     422, 'trace[1].output_tokens', ["trace[1].output_tokens: -Infinity is not a number JSON allows"]),
    (BATCH, b'{"trace": [{"input_tokens": NaN, "output_tokens": 1}', 422, 'body', ["not valid JSON"]),  # and truncated
    # Numbers past a double's range: the field named too (it was "body", "number is infinity").
    (SINGLE, b'{"trace": {"input_tokens": 1e999, "output_tokens": 1}}', 422, 'trace.input_tokens',
     ["trace.input_tokens: 1e999 is beyond the largest number a double holds"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "confidence_level": -1E+400}', 422, 'confidence_level',
     ["confidence_level: -1E+400 is beyond"]),
    (BATCH, b'{"trace": [{"input_tokens": 1, "output_tokens": 1}, {"input_tokens": 1' + b'0' * 400 + b', "output_tokens": 1}]}',
     422, 'trace[1].input_tokens', ["trace[1].input_tokens: 10000000000000000000... (401 characters) is beyond"]),
    # Past Python's int() limit of 4,300 digits too (it was "body" still).
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 9' + b'9' * 5000 + b'}}', 422, 'trace.output_tokens',
     ["trace.output_tokens: 99999999999999999999... (5001 characters) is beyond"]),
    (SINGLE, b'[1, 2]', 422, 'body', ["body: Input should be an object"]),
    (SINGLE, b'{"trace": "input_tokens=5"}', 422, 'trace', ["trace"]),
    (SINGLE, b'{"traces": {"input_tokens": 5}}', 422, 'trace', ["trace"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "confidence_level": "high"}', 422, 'confidence_level', ["confidence_level"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "confidence_level": 0}', 422, 'confidence_level', ["confidence_level"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "confidence_level": 1}', 422, 'confidence_level', ["confidence_level"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "confidence_level": 1.5}', 422, 'confidence_level', ["confidence_level"]),
    # Strict types: a string or a boolean is a mistake to name, not a value to guess at.
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "confidence_level": "0.9"}', 422, 'confidence_level', ["confidence_level"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "confidence_level": true}', 422, 'confidence_level', ["confidence_level", "number"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "quantiles": ["0.5"]}', 422, 'quantiles.0', ["quantiles"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "lookup_table": "yes"}', 422, 'lookup_table', ["lookup_table"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "quantiles": [0, 0.5]}', 422, 'quantiles', ["quantiles"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "quantiles": [0.5, 1]}', 422, 'quantiles', ["quantiles"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "quantiles": [-0.1]}', 422, 'quantiles', ["quantiles"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "quantiles": []}', 422, 'quantiles', ["quantiles"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "quantiles": ["a"]}', 422, 'quantiles.0', ["quantiles"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "quantiles": 0.5}', 422, 'quantiles', ["quantiles"]),
    (SINGLE, b'{"trace": {"input_tokens": 1}}', 422, 'trace', ["output_tokens"]),
    (SINGLE, b'{"trace": {"input_tokens": "lots", "output_tokens": 1}}', 422, 'trace', ["input_tokens"]),
    (SINGLE, b'{"trace": {"input_tokens": [1], "output_tokens": 1}}', 422, 'trace', ["input_tokens"]),
    (SINGLE, b'{"trace": {"input_feature": "x"}}', 422, 'trace', ["input_feature"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1, "input_feature": [{"param_name": "input_tokens", '
             b'"val": 5}]}}', 422, 'trace', ["'input_tokens' is given twice, as 1 and as 5"]),
    (SINGLE, b'{"trace": {"input_tokens": 1, "output_tokens": 1}, "surprise": 1}', 422, 'surprise', ["surprise"]),
    (BATCH, b'{"trace": {"input_tokens": 1}}', 422, 'trace', ["trace"]),
    (BATCH, b'{"trace": [1, 2]}', 422, 'trace.0', ["trace"]),
    (BATCH, b'{"trace": [], "confidence_level": 0}', 422, 'confidence_level', ["confidence_level"]),
    (BATCH, b'{"trace": [{"input_tokens": 1, "output_tokens": 1}], "quantiles": [1.5]}', 422, 'quantiles', ["quantiles"]),
    (BATCH, b'{"trace": [{"input_tokens": 1, "output_tokens": 1}], "shared_factor": "yes"}', 422, 'shared_factor', ["shared_factor"]),
    (BATCH, b'{"trace": [{"input_tokens": 1, "output_tokens": 1}], "lookup_table": true, "shared_factor": true}', 422, 'shared_factor', ["shared_factor needs a model"]),
    ("/predict/single/llm/*/TPU/*/*", b'{"trace": {"input_tokens": 1}}', 404, "identity", ["llm/*/TPU/*/*"]),
    ("/predict/batch/nothing/a/b/c/d", b'{"trace": []}', 404, "identity", ["nothing/a/b/c/d"]),
    ("/predict/single/twin/*/*/*/*", b'{"trace": {"input_tokens": 1}}', 409, "identity", ["twin/twin-m/A100/sglang/0.4.0",
                                                                            "twin/twin-m/H100/sglang/0.4.0"]),
    ("/predict/batch/twin/*/*/*/*", b'{"trace": []}', 409, "identity", ["A100", "H100"]),
    # A malformed trace still names its model: its own error, not the pattern's ambiguity.
    ("/predict/single/twin/*/*/*/*", b'{"trace": {"hardware": "A100", "input_feature": "x"}}', 422, 'trace', ["input_feature"]),
])
def test_bad_prediction_requests(http, ambiguous, path, content, status, field, needles):
    r = http.post(path, content=content, headers={"content-type": "application/json"})
    body = failed(r, status, *needles)
    assert body.get("field") == field
    if status == 409:
        assert len(body["candidates"]) == 2


def test_a_request_with_several_mistakes_names_them_all_and_the_first_as_its_field(http, trained):
    body = failed(http.post(SINGLE, json={"trace": {"input_tokens": 1, "output_tokens": 1},
                                          "confidence_level": 2, "quantiles": [1.5], "lookup_table": "yes"}), 422)
    named = [part.split(":")[0] for part in body["message"].split("; ")]
    assert sorted(named) == ["confidence_level", "lookup_table", "quantiles"]
    assert body["field"] == named[0]


def test_a_malformed_trace_naming_its_model_fails_alone_in_its_batch(http, ambiguous):
    # Only the malformed trace says which of the two models the batch is for.
    body = ok(http.post("/predict/batch/twin/*/*/*/*", json={"trace": [
        {"input_tokens": 3, "output_tokens": 5},
        {"hardware": "A100", "input_feature": "x"}]}))
    good, bad = body["results"]
    assert good["status"] == "success" and good["model_info"]["hardware"] == "A100"
    assert bad["status"] == "error" and "input_feature" in bad["message"]


def test_missing_feature_in_single_is_422_naming_it(http, trained):
    body = failed(http.post(SINGLE, json={"trace": {"input_tokens": 3, "other": 1}}), 422,
                  "missing required feature 'output_tokens'")
    assert body["field"] == "trace"
    # A field spelt close to it is named: the likely mistake.
    body = failed(http.post(SINGLE, json={"trace": {"input_tokens": 3, "output_token": 1}}), 422)
    assert body["message"] == ("trace: missing required feature 'output_tokens' (the trace has 'output_token', "
                               "which the model does not read: a misspelling?)"), body


def test_an_unknown_request_key_is_refused_not_ignored(http, trained):
    # A misspelt option would otherwise be answered as if it had not been sent.
    body = failed(http.post(SINGLE, json={"trace": TRACE, "confidence": 0.5}), 422, "Extra inputs are not permitted")
    assert body["field"] == "confidence"
    body = failed(http.post("/train", json={"config": {"model": IDENTITY, "traces": make_llm_traces(20), "algoritm": "linear"}}),
                  422, "Extra inputs")
    assert body["field"] == "config.algoritm"


def test_too_few_segments(http, trained):
    r = http.post("/predict/single/llm/Qwen", json={"trace": TRACE})
    assert r.status_code in (404, 405)
    r = http.get("/models/llm/a/b")
    assert r.status_code in (404, 405)


@pytest.mark.parametrize("config, needles", [
    ({"model": IDENTITY, "traces": "../etc/passwd"}, ["without '..'"]),
    ({"model": IDENTITY, "traces": "traces/../../../x.jsonl"}, ["without '..'"]),
    ({"model": IDENTITY, "traces": "/etc/passwd"}, ["relative to the data directory"]),
    ({"model": IDENTITY, "traces": "nope.jsonl"}, ["not found"]),
    ({"model": IDENTITY, "traces": "a" * 300 + ".jsonl"}, ["longer than 255 bytes"]),
    ({"model": IDENTITY, "traces": "/".join(["d" * 200] * 25) + ".jsonl"}, ["cannot be opened (File name too long)"]),
    ({"model": IDENTITY, "traces": []}, ["no traces"]),
    ({"model": IDENTITY, "traces": [{"runtime_ms": 5, "x": 1}]}, ["at least 2"]),
    ({"model": IDENTITY, "traces": [{"x": 1}, {"x": 2}]}, ["runtime_ms"]),
    ({"model": IDENTITY, "traces": [{"x": 1, "runtime_ms": "slow"}, {"x": 2, "runtime_ms": 2}]}, ["runtime_ms"]),
    ({"model": IDENTITY, "traces": "x", "algorithm": "magic"}, ["algorithm"]),
    ({"model": IDENTITY, "traces": "x", "quantiles": [0.5, 1.0]}, ["quantiles"]),
    ({"model": IDENTITY, "traces": "x", "quantiles": ["0.5"]}, ["quantiles.0", "valid number"]),
    ({"model": IDENTITY, "traces": "x", "first_of_shape": "yes"}, ["first_of_shape", "valid boolean"]),
    ({"model": {"model_type": "llm"}, "traces": "x"}, ["model_name"]),
    ({"traces": "x"}, ["model"]),
    ({"model": IDENTITY, "traces": "x", "group_by": ["gpu"]}, ["group_by"]),
    ({"model": IDENTITY, "traces": "x", "group_by": ["hardware", "hardware"]}, ["group_by", "more than once"]),
    ({"model": IDENTITY, "traces": make_llm_traces(40), "features": ["input_tokens", "input_tokens"]},
     ["features", "'input_tokens' more than once"]),
    ({"model": IDENTITY, "traces": 5}, ["traces"]),
    ({"model": IDENTITY, "traces": make_llm_traces(40), "algorithm": "lightgbm", "params": {"num_leaves": -3}},
     ["LightGBM refuses 'num_leaves'", "num_leaves) > (1)"]),
    ({"model": IDENTITY, "traces": make_llm_traces(40), "algorithm": "lightgbm", "params": {"num_boost_round": "x"}},
     ["'num_boost_round' must be a whole number in [1, 10000], got 'x'"]),
    ({"model": IDENTITY, "traces": make_llm_traces(40), "params": {"bogus_param": 1}}, ["unknown parameter 'bogus_param'"]),
    ({"model": IDENTITY, "traces": make_llm_traces(40), "algorithm": "linear", "params": {"num_leaves": 7}},
     ["'num_leaves' is a LightGBM parameter; algorithm 'linear' does not use LightGBM"]),
    ({"model": IDENTITY, "traces": make_llm_traces(40), "params": {"forcedsplits_filename": "/etc/passwd"}},
     ["'forcedsplits_filename' is a LightGBM parameter that a training request cannot set"]),
])
def test_bad_training_requests(http, config, needles):
    body = failed(http.post("/train", json={"config": config}), 422, *needles)
    # Named as in the request, whether validation or training found it.
    assert body["field"].startswith("config.")


def test_bad_training_bodies(http):
    failed(http.post("/train", content=b'{"config": {"model": ', headers={"content-type": "application/json"}), 422,
           "not valid JSON")
    failed(http.post("/train", json={"model": IDENTITY, "traces": []}), 422, "config")
    failed(http.post("/train", content=b'{"config": {"model": 1, "traces": [], "quantiles": [Infinity]}}',
                     headers={"content-type": "application/json"}), 422)
    # A setting beside the config, not in it: ignored, it trained with the default algorithm.
    beside = {"config": {"model": ident("beside"), "traces": make_llm_traces(40)}, "algorithm": "linear"}
    assert failed(http.post("/train", json=beside), 422, "'algorithm': not allowed beside 'config'")["field"] == "algorithm"
    assert failed(multipart_train(http, "c.json", orjson.dumps(beside), {}), 422,
                  "'algorithm': not allowed beside 'config'")["field"] == "algorithm"
    assert all(m["model_type"] != "beside" for m in ok(http.get("/models"))["models"])


def test_bad_multipart_training_requests(http):
    traces = jsonl_bytes(make_llm_traces(20))
    good = orjson.dumps({"model": IDENTITY, "traces": "t.jsonl"})
    # no config part
    failed(http.post("/train", files={"t": ("t.jsonl", traces, "x")}), 422, "config")
    # config neither JSON nor YAML (nor an object)
    failed(multipart_train(http, "c.yaml", b"model: [unclosed", {"t.jsonl": traces}), 422, "config")
    failed(multipart_train(http, "c.yaml", b"- just\n- a list\n", {"t.jsonl": traces}), 422, "config")
    # an upload that is no trace file
    failed(multipart_train(http, "c.json", good, {"t.exe": b"MZ"}), 422, "t.exe")
    # a broken upload names the line
    failed(multipart_train(http, "c.json", good, {"t.jsonl": traces + b"{broken\n"}), 422, "line 21")
    # a truncated gzip upload
    gz = gzip.compress(traces * 20)
    failed(multipart_train(http, "c.json", orjson.dumps({"model": IDENTITY, "traces": "t.jsonl.gz"}),
                           {"t.jsonl.gz": gz[: len(gz) // 2]}), 422, "cannot read")
    # the config names a path outside the data directory rather than the upload
    failed(multipart_train(http, "c.json", orjson.dumps({"model": IDENTITY, "traces": "../t.jsonl"}),
                           {"t.jsonl": traces}), 422, "without '..'")
    # two parts that could both be what the config names (the last one won, silently)
    failed(http.post("/train", files=[("config", ("c.json", good, "x")), ("a", ("t.jsonl", traces, "x")),
                                      ("b", ("t.jsonl", b"garbage", "x"))]), 422, "two uploaded files are named 't.jsonl'")
    # a part named like another part's file: the file's name comes first (both were "two files named")
    swapped = orjson.dumps({"model": ident("mp-swap"), "traces": "t.jsonl", "algorithm": "linear"})
    assert ok(http.post("/train", files=[("config", ("c.json", swapped, "x")), ("t.jsonl", ("u.jsonl", b"garbage", "x")),
                                         ("b", ("t.jsonl", traces, "x"))]))["metrics"]["rows_used"] > 0
    # two files sent as one part, which the config names (the first one won, silently)
    by_part = orjson.dumps({"model": IDENTITY, "traces": "trace_file"})
    failed(http.post("/train", files=[("config", ("c.json", by_part, "x")), ("trace_file", ("t.jsonl", traces, "x")),
                                      ("trace_file", ("u.jsonl", traces, "x"))]), 422, "name one of them by its file name")
    failed(http.post("/train", files=[("config", ("c.json", good, "x")), ("config", ("d.json", good, "x")),
                                      ("t", ("t.jsonl", traces, "x"))]), 422, "one 'config' part")
    # a setting beside the config was ignored without a word
    failed(http.post("/train", files=[("config", ("c.json", good, "x")), ("t", ("t.jsonl", traces, "x"))],
                     data={"algorithm": "linear"}), 422, "'algorithm' is not read")


def test_unknown_model_endpoints(http, trained):
    # Each 404 names what the request got wrong: the identity in the path, the version, or
    # an observation's model.
    for r in (http.get("/models/none/a/b/c/d"), http.get("/models/none/a/b/c/d/versions/1"),
              http.delete("/models/none/a/b/c/d"), http.delete("/models/none/a/b/c/d/versions/1"),
              http.get("/models/none/a/b/c/d/accuracy")):
        assert failed(r, 404, "none/a/b/c/d")["field"] == "identity", r.text
    for r in (http.get(f"/models/{SEGMENTS}/versions/99"), http.delete(f"/models/{SEGMENTS}/versions/99"),
              http.get(f"/models/{SEGMENTS}/accuracy", params={"version": 99})):
        assert failed(r, 404, "has no version 99")["field"] == "version", r.text
    r = http.post("/observe", json={"model": {**IDENTITY, "hardware": "TPU"}, "traces": [{**TRACE, "runtime_ms": 5.0}]})
    # An observation's model one part off is named, as a prediction's URL names it.
    err = failed(r, 404, f"no model {ModelIdentity.from_parts({**IDENTITY, 'hardware': 'TPU'}).key}; ")
    assert err["field"] == "model" and err["candidates"] == [KEY], err
    assert err["message"].endswith(f"; did you mean {KEY}?"), err
    r = http.post("/observe", json={"model": {**IDENTITY, "hardware": "TPU", "model_name": "other"},
                                    "traces": [{**TRACE, "runtime_ms": 5.0}]})
    assert "candidates" not in failed(r, 404, "no model")  # two parts off: not a near miss


# --------------------------------------------------------------------------- restarts and the seed's commands


def _prediction_answers(url: str) -> list[dict]:
    answers = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for path, body in [
            (f"/predict/single/{SEGMENTS}", {"trace": TRACE, "quantiles": [0.05, 0.5, 0.95]}),
            ("/predict/batch/llm/*/*/*/*", {"trace": [TRACE, {"input_tokens": 7, "output_tokens": 300}, {}],
                                             "confidence_level": 0.9}),
        ]:
            answer = ok(c.post(path, json=body))
            answer["summary"].pop("duration_seconds")
            answers.append(answer)
        models = ok(c.get("/models"))["models"]
        for group in models:
            group.pop("total_predictions")
            for m in group["models"]:
                m.pop("total_predictions")
        answers.append(models)
        answers.append(ok(c.get(f"/models/{SEGMENTS}/versions/1")))
    return answers


def test_seed_commands_serve_and_a_restart_answers_identically(tmp_path):
    data = tmp_path / "data"
    env = {"PREDICTOR_HOST": "127.0.0.1"}
    # 1. The seed's `python -m src.scheduler.predictor_api`, port from PREDICTOR_PORT.
    cmd = ["env", "PREDICTOR_PORT={port}", sys.executable, "-m", "src.scheduler.predictor_api"]
    with run_server(data, extra_env=env, args=cmd) as first:
        health = ok(httpx.get(first.url + "/health"))
        assert health["status"] == "healthy" and health["service"] == "predictor"
        ok(httpx.post(first.url + "/train", timeout=60, json={"config": {
            "model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"}}))
        before = _prediction_answers(first.url)
    # 2. The seed's `uvicorn src.scheduler.predictor_api:app`, on the same data directory.
    cmd = [sys.executable, "-m", "uvicorn", "src.scheduler.predictor_api:app", "--host", "127.0.0.1",
           "--port", "{port}", "--log-level", "warning"]
    with run_server(data, extra_env=env, args=cmd) as second:
        assert ok(httpx.get(second.url + "/health"))["models_registered"] == 1
        after = _prediction_answers(second.url)
    assert after == before
    assert before[1]["results"][2]["status"] == "error"
    assert np.all(np.diff(before[0]["results"]["quantile_predictions"]) > 0)


def test_fastapi_native_telemetry_is_opt_in(tmp_path):
    from swarmpilot_predictor.api import create_app
    from swarmpilot_predictor.settings import PredictorSettings

    off = create_app(PredictorSettings(data_dir=tmp_path / "a"))
    on = create_app(PredictorSettings(data_dir=tmp_path / "b", opentelemetry=True))
    # FastAPI keeps its telemetry switches here; off, it skips its per-request check.
    assert not any(off._telemetry[k] for k in ("tracing", "metrics", "logs"))
    assert all(on._telemetry[k] for k in ("tracing", "metrics", "logs"))
    assert not off._native_telemetry.enabled()


def test_compressed_request_bodies_get_a_415_naming_the_encoding(http):
    # Read as JSON, a gzip body was "not valid UTF-8: surrogates not allowed".
    body = gzip.compress(orjson.dumps({"trace": TRACE}))
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    failed(http.post(f"/predict/single/{SEGMENTS}", content=body, headers=headers), 415, "Content-Encoding 'gzip'",
           "uncompressed")
    # (a table's form: a JSON body it does not read, refused for its type first)
    form = {"content-type": "multipart/form-data; boundary=x", "content-encoding": "gzip"}
    table_failed(http.post(f"/predict/table/{SEGMENTS}", content=body, headers=form), 415, "body", "Content-Encoding")
    # A DELETE reads its body too (none, or {}): a gzipped {} was that same "surrogates" 422.
    for path in (f"/models/{SEGMENTS}/versions/999", "/tables/none.json"):
        failed(http.request("DELETE", path, content=gzip.compress(b"{}"), headers=headers), 415,
               "Content-Encoding 'gzip'", "uncompressed")
    plain = http.post(f"/predict/single/{SEGMENTS}", content=orjson.dumps({"trace": TRACE, "unknown": 1}),
                      headers={"content-type": "application/json", "content-encoding": "identity"})
    failed(plain, 422, "unknown")  # read, as without the header
    assert http.get("/health", headers={"content-encoding": "gzip"}).status_code == 200  # no body to read


def test_request_bodies_over_the_limit_get_a_413(tmp_path):
    big = orjson.dumps({"trace": [TRACE] * 2000})  # about 80 kB
    with run_server(tmp_path / "data", extra_env={"PREDICTOR_MAX_UPLOAD_MB": "0.05"}) as server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            ok(http.post("/train", json={"config": {"model": IDENTITY, "traces": make_llm_traces(60), "algorithm": "linear"}}))
            small = ok(http.post(f"/predict/batch/{SEGMENTS}", content=orjson.dumps({"trace": [TRACE] * 10})))
            assert small["summary"]["success"] == 10
            declared = http.post(f"/predict/batch/{SEGMENTS}", content=big)
            assert declared.status_code == 413
            assert declared.json()["field"] == "body" and "PREDICTOR_MAX_UPLOAD_MB" in declared.json()["message"]

            def chunks():  # no Content-Length: counted as it arrives
                for i in range(0, len(big), 8192):
                    yield big[i:i + 8192]

            streamed = http.post(f"/predict/batch/{SEGMENTS}", content=chunks())
            assert streamed.status_code == 413 and streamed.json()["field"] == "body"
            upload = http.post("/train", files={"traces": ("t.jsonl", b"\n".join([orjson.dumps(TRACE)] * 3000))},
                               data={"config": orjson.dumps({"model": IDENTITY}).decode()})
            failed(upload, 413, "PREDICTOR_MAX_UPLOAD_MB", "larger than 0.05 MB")
            # A lookup table's upload answers in that route's own shape, declared or streamed.
            table_file = {"trace_file": ("t.jsonl", b"\n".join([orjson.dumps(TRACE)] * 3000))}
            table_failed(http.post(f"/predict/table/{SEGMENTS}", files=table_file), 413, "body", "larger than 0.05 MB")
            form = httpx.Request("POST", "/", files=table_file)
            form.read()

            def form_chunks():
                for i in range(0, len(form.content), 8192):
                    yield form.content[i:i + 8192]

            streamed_table = http.post(f"/predict/table/{SEGMENTS}", content=form_chunks(),
                                       headers={"content-type": form.headers["content-type"]})
            table_failed(streamed_table, 413, "body", "larger than 0.05 MB")
            # The spaces after a length are none of it (uvicorn's parser hands them on): declared
            # "600000000 ", an upload passed the limit uncounted, and a 3.7 MB form made a table.
            for length in ("600000000 ", "600000000\t", "600000000 \t "):
                answer = answer_to_declared_body(http, "POST", f"/predict/table/{SEGMENTS}", length)
                assert answer.startswith("HTTP/1.1 413") and "larger than 0.05 MB" in answer, answer
            assert http.get("/health").json()["models_registered"] == 1  # the server is fine
            # Answered before routing, they are counted under the routes they asked for.
            text = http.get("/metrics").text
            batch = "/predict/batch/{model_type}/{model_name}/{hardware}/{software_name}/{software_version}"
            assert metric_value(text, "predictor_http_requests_total", route=batch, status="413") == 2.0
            assert metric_value(text, "predictor_http_requests_total", route="/train", status="413") == 1.0
            assert 'route="unmatched",status="413"' not in text


def answer_to_declared_body(http, method: str, path: str, length: int | str) -> str:
    """The whole answer (status line, headers, body) to a request that declares a body of
    ``length`` bytes (its ``Content-Length`` as written, where a string) and sends none of it:
    one refused unread."""
    url = httpx.URL(str(http.base_url))
    with socket.create_connection((url.host, url.port)) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {length}\r\n\r\n".encode())
        s.settimeout(30)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
            chunk = s.recv(65536)  # the headers and the body may come in separate segments
            assert chunk, answer
            answer += chunk
    return answer.decode()


def test_a_length_of_many_leading_zeros_is_read_as_its_number(http, trained):
    # uvicorn's httptools parser takes any number of leading zeros, and Python reads no number
    # of more than 4,300 digits: 5,000 zeros and a 5 were a 500 (a ValueError and its traceback
    # in the log), on any route, before any key was asked for.
    zeros = "0" * 5000
    url = httpx.URL(str(http.base_url))
    for method, path, status in [("POST", f"/predict/single/{SEGMENTS}", 422), ("POST", "/observe", 422),
                                 ("GET", "/ping", 200)]:
        with socket.create_connection((url.host, url.port), timeout=30) as s:
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {zeros}5\r\n\r\nhello".encode())  # read as 5 bytes: not JSON
            answer = s.recv(65536)
        assert answer.startswith(f"HTTP/1.1 {status}".encode()), (path, answer[:300])
    answer = answer_to_declared_body(http, "POST", f"/predict/single/{SEGMENTS}", f"{zeros}{2 * 1024 * 1024}")
    assert answer.startswith("HTTP/1.1 413") and "at most 1,048,576 bytes" in answer
    answer = answer_to_declared_body(http, "POST", "/observe", zeros + str(2**64 - 1))  # (the most httptools takes)
    assert answer.startswith("HTTP/1.1 413") and "PREDICTOR_MAX_UPLOAD_MB" in answer
    assert 'status="500"' not in http.get("/metrics").text


def test_a_body_that_expects_100_continue_and_is_refused_unread_closes_the_connection(http, trained):
    # The client waits for "100 Continue" before it sends the body; refused first (its length,
    # its encoding), it sent none, and uvicorn kept the connection waiting for those bytes: a
    # next request sent on it was read as that body, and never answered.
    url = httpx.URL(str(http.base_url))
    single = f"/predict/single/{SEGMENTS}"
    body = orjson.dumps({"trace": TRACE})

    def head(path: str, length: int, more: bytes = b"") -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\nExpect: 100-continue\r\n").encode() + more + b"\r\n"

    def read_until_closed(s: socket.socket) -> bytes:
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer

    for path, length, more, status in [(single, 2 * 1024 * 1024, b"", 413), ("/observe", 2**40, b"", 413),
                                       ("/observe", 100, b"Content-Encoding: gzip\r\n", 415)]:
        with socket.create_connection((url.host, url.port), timeout=3) as s:
            s.sendall(head(path, length, more))
            # (closed at once, not at the keep-alive timeout's end: a recv past 3 s would raise)
            answer = read_until_closed(s)
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()) and b"100 Continue" not in answer, answer[:300]
        assert answer.lower().count(b"\r\nconnection: close\r\n") == 1, answer[:300]
    # Asked for, the body comes after "100 Continue", and the connection carries the next request.
    with socket.create_connection((url.host, url.port), timeout=30) as s:
        s.sendall(head(single, len(body)))
        assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body + b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = read_until_closed(s)
    assert answers.startswith(b"HTTP/1.1 200 ") and answers.count(b"HTTP/1.1 200 ") == 2, answers[:300]
    assert answers.lower().count(b"connection: close") == 1 and answers.endswith(b'{"status":"ok"}')
    # Refused unread without the expectation, the body is on its way: read away, not cut off.
    answer = answer_to_declared_body(http, "POST", single, 2 * 1024 * 1024)
    assert answer.startswith("HTTP/1.1 413") and "connection: close" not in answer.lower()


def test_an_expect_100_continue_without_a_body_keeps_the_connection(http):
    # A request with neither Content-Length nor Transfer-Encoding has no body (RFC 9112, 6.3):
    # nothing is waited for, and its connection carries the next request. It was closed, and
    # a request sent next on it (pipelined) was dropped unanswered.
    url = httpx.URL(str(http.base_url))
    with socket.create_connection((url.host, url.port), timeout=30) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n"
                  b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = b""
        while chunk := s.recv(65536):
            answers += chunk
    assert answers.count(b"HTTP/1.1 200 ") == 2, answers[:600]
    assert answers.lower().count(b"connection: close") == 1, answers[:600]


def test_a_chunked_body_is_counted_whatever_length_it_declares(tmp_path):
    # h11 (uvicorn --http h11) takes a request with both Transfer-Encoding: chunked and a
    # Content-Length, and reads the chunks (RFC 9112): its declared 100 bytes let a 3.7 MB form
    # past PREDICTOR_MAX_UPLOAD_MB=1 uncounted, and a small body declaring 2 MB was refused.
    args = [sys.executable, "-m", "uvicorn", "swarmpilot_predictor.api:app_from_env", "--factory", "--http", "h11",
            "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
    form = httpx.Request("POST", "/", files={"trace_file": ("t.jsonl", b"\n".join([orjson.dumps(TRACE)] * 3000))})
    form.read()

    def sent(path: str, body: bytes, declared: int, content_type: str) -> str:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in _pieces(body, 8192)) + b"0\r\n\r\n"
        with socket.create_connection((url.host, url.port), timeout=30) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: "
                      f"{declared}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + chunks)
            answer = b""
            while not answer.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, answer
                answer += chunk
        return answer.decode()

    with run_server(tmp_path / "data", {"PREDICTOR_MAX_UPLOAD_MB": "0.05"}, args=args) as srv:
        url = httpx.URL(srv.url)
        answer = sent(f"/predict/table/{SEGMENTS}", form.content, 100, form.headers["content-type"])
        assert answer.startswith("HTTP/1.1 413") and "larger than 0.05 MB" in answer, answer[:300]
        answer = sent(f"/predict/single/{SEGMENTS}", orjson.dumps({"trace": TRACE}), 2 * 1024 * 1024,
                      "application/json")
        assert answer.startswith("HTTP/1.1 404") and "no trained model" in answer, answer[:300]  # read, not refused


def test_a_json_training_body_is_at_most_64_mb(http):
    # Its traces are parsed whole into Python objects (a 138 MB body of 4 million traces took
    # 3.6 GB across the service and its worker), where a trace file is read as a stream.
    limit = 64 * 1024 * 1024
    answer = answer_to_declared_body(http, "POST", "/train", limit + 1)  # declared: refused unread
    assert answer.startswith("HTTP/1.1 413") and '"field":"body"' in answer
    assert "a JSON training body is at most 67,108,864 bytes: send the traces as a trace file" in answer
    piece = b" " * (1024 * 1024)

    def chunks():  # no Content-Length: counted as it arrives
        yield from [piece] * 64
        yield b"{}"

    failed(http.post("/train", content=chunks(), headers={"content-type": "application/json"}), 413,
           "a JSON training body is at most 67,108,864 bytes")
    # At the limit it is read and parsed, as before.
    at_limit = orjson.dumps({"config": {"model": IDENTITY, "traces": []}})
    failed(http.post("/train", content=at_limit + b" " * (limit - len(at_limit)),
                     headers={"content-type": "application/json"}), 422, "traces")


def _pieces(body: bytes, size: int = 65536):
    for i in range(0, len(body), size):
        yield body[i:i + size]


def test_a_single_prediction_body_is_at_most_1_mb(http, trained):
    # Parsed whole on the event loop: one body of 136.5 MB (a trace of 5.6 million fields) held
    # every other request 8.3 s (benchmarks/large_bodies.py), a 256 MB one 29.7 s.
    limit = 1024 * 1024
    path = f"/predict/single/{SEGMENTS}"
    message = "a single prediction's body is at most 1,048,576 bytes: it holds one trace"
    answer = answer_to_declared_body(http, "POST", path, limit + 1)
    assert answer.startswith("HTTP/1.1 413") and '"field":"body"' in answer and message in answer
    assert answer_to_declared_body(http, "POST", path, f"{limit + 1} ").startswith("HTTP/1.1 413")  # (its space too)
    at_limit = orjson.dumps({"trace": TRACE})
    at_limit += b" " * (limit - len(at_limit))
    whole = ok(http.post(path, content=at_limit))["results"]
    assert whole["expect"] == pytest.approx(1230, rel=0.2)
    failed(http.post(path, content=at_limit + b" "), 413, message)
    failed(http.post(path, content=_pieces(at_limit + b" ")), 413, message)  # chunked: counted as it arrives
    assert ok(http.post(path, content=_pieces(at_limit)))["results"] == whole
    # A trace of many fields is refused before it is parsed, the service unharmed.
    wide = orjson.dumps({"trace": {**TRACE, **{f"extra_{i}": i for i in range(100_000)}}})
    failed(http.post(path, content=wide), 413, message)
    failed(http.post(path, content=_pieces(wide)), 413, message)
    assert ok(http.post(path, json={"trace": TRACE}))["results"] == whole
    # What the client goes on sending is dropped, and its connection serves its next request
    # (README, Request bodies).
    url = httpx.URL(str(http.base_url))
    with socket.create_connection((url.host, url.port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(wide)}\r\n\r\n".encode() + wide
                  + b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = b""
        while not answers.endswith(b'{"status":"ok"}'):
            chunk = s.recv(65536)
            assert chunk, answers
            answers += chunk
    assert answers.startswith(b"HTTP/1.1 413") and b"HTTP/1.1 200 OK" in answers


@pytest.mark.parametrize("route, what", [
    (f"/predict/batch/{SEGMENTS}", "a batch's body is at most 67,108,864 bytes: split the traces over several batches"),
    (f"/predict/queues/{SEGMENTS}", "a queues request's body is at most 67,108,864 bytes: split the queues over several requests"),
    ("/observe", "an /observe body is at most 67,108,864 bytes: split the traces over several requests"),
])
def test_a_body_of_many_traces_is_at_most_64_mb(http, trained, route, what):
    limit = 64 * 1024 * 1024
    answer = answer_to_declared_body(http, "POST", route, limit + 1)
    assert answer.startswith("HTTP/1.1 413") and '"field":"body"' in answer and what in answer
    body = orjson.dumps({"model": IDENTITY, "traces": [{**TRACE, "runtime_ms": 1200.0}]} if route == "/observe" else
                        {"queues": {"a": [TRACE]}} if "queues" in route else {"trace": [TRACE]})
    padded = body + b" " * (limit - len(body))
    answer = ok(http.post(route, content=_pieces(padded)))  # at the bound: read and answered
    assert (answer["accepted"] if route == "/observe" else answer["queues"]["a"]["tasks"] if "queues" in route
            else answer["summary"]["success"]) == 1
    failed(http.post(route, content=_pieces(padded + b" ")), 413, what)


def test_a_route_without_options_reads_at_most_64_kb(http, trained):
    message = "the body of a route that takes no options is at most 65,536 bytes: send none, or {}"
    path = f"/models/{SEGMENTS}/retrain"
    answer = answer_to_declared_body(http, "POST", path, 65537)
    assert answer.startswith("HTTP/1.1 413") and message in answer
    failed(http.post(path, content=_pieces(b"{}" + b" " * 65535)), 413, message)
    failed(http.post("/cache/clear", content=b" " * 65537), 413, message)
    failed(http.request("DELETE", f"/models/{SEGMENTS}", content=b" " * 65537), 413, message)
    assert ok(http.get(f"/models/{SEGMENTS}"))["model"]["latest_version"] >= 1  # not deleted


def test_bodies_over_their_bounds_are_counted_under_their_routes(http, trained):
    single = "/predict/single/{model_type}/{model_name}/{hardware}/{software_name}/{software_version}"
    before = metric_value(http.get("/metrics").text, "predictor_http_requests_total", route=single, status="413") \
        if f'route="{single}",status="413"' in http.get("/metrics").text else 0.0
    failed(http.post(f"/predict/single/{SEGMENTS}", content=b" " * (1024 * 1024 + 1)), 413, "at most 1,048,576")
    text = http.get("/metrics").text
    assert metric_value(text, "predictor_http_requests_total", route=single, status="413") == before + 1
    assert 'status="500"' not in text


def test_a_client_that_leaves_before_the_answer_is_no_server_error(http, trained):
    """Counted as nginx's 499 (client closed request): a 500 would set off error alerts."""
    url = httpx.URL(str(http.base_url))
    for _ in range(3):
        with socket.create_connection((url.host, url.port)) as s:
            s.sendall(f"POST /predict/single/{SEGMENTS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 1000\r\n\r\n{\"trace\":".encode())
            time.sleep(0.05)
    single = "/predict/single/{model_type}/{model_name}/{hardware}/{software_name}/{software_version}"
    deadline = time.monotonic() + 10
    while True:  # the server notices each departure on its own time
        text = http.get("/metrics").text
        try:
            if metric_value(text, "predictor_http_requests_total", route=single, status="499") == 3.0:
                break
        except KeyError:
            pass
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert 'status="500"' not in text


def test_an_upload_limit_under_a_byte_is_a_byte_not_no_limit():
    # PREDICTOR_MAX_UPLOAD_MB=0.0000001 rounded down to 0 bytes, which means no limit.
    from swarmpilot_predictor.api import BodySizeLimitMiddleware
    from swarmpilot_predictor.routes.uploads import upload_bytes

    assert upload_bytes(1e-7) == 1 and upload_bytes(0) == 0 and upload_bytes(1.5) == 3 * 2**19
    assert BodySizeLimitMiddleware(None, max_mb=1e-7).max_bytes == 1


def test_a_client_that_leaves_while_sending_its_body_is_no_logged_error(tmp_path):
    # /observe, /train and uploads read their bodies in the route: a departure there reached
    # the catch-all handler, which logged two tracebacks per request as a server error.
    # At uvicorn's info level it is an info line (which no one saw: the service's loggers
    # had no handler, and Python shows warnings only).
    command = [sys.executable, "-m", "uvicorn", "swarmpilot_predictor.api:app_from_env", "--factory",
               "--host", "127.0.0.1", "--port", "{port}", "--log-level", "info"]
    with run_server(tmp_path / "data", args=command) as srv:
        url = httpx.URL(srv.url)
        part = ('--xyz\r\nContent-Disposition: form-data; name="trace_file"; filename="t.jsonl"\r\n\r\n'
                '{"input_tokens": 1}\n')
        routes = {"/observe": ("application/json", '{"x":'), "/train": ("application/json", '{"x":'),
                  f"/predict/table/{SEGMENTS}": ("multipart/form-data; boundary=xyz", part),
                  # The prediction routes read their bodies themselves (routes/lean.py).
                  f"/predict/single/{SEGMENTS}": ("application/json", '{"trace":'),
                  f"/predict/batch/{SEGMENTS}": ("application/json", '{"trace":')}
        for path, (ctype, start) in routes.items():
            with socket.create_connection((url.host, url.port)) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                          f"Content-Length: 100000\r\n\r\n{start}".encode())
                time.sleep(0.05)
        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(srv.url + "/metrics").text
            counted = sum(line.endswith(" 1.0") for line in text.splitlines()
                          if line.startswith("predictor_http_requests_total{") and 'status="499"' in line)
            if counted == 5:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
        assert 'status="500"' not in text
        srv.process.terminate()
        out = srv.process.stdout.read().decode()
    assert "Traceback" not in out and "unexpected error" not in out, out
    for path in ("/observe", "/train", "/predict/table/llm/", "/predict/single/llm/", "/predict/batch/llm/"):
        assert f"INFO:     client left during POST {path}" in out, out
    assert out.count(" before its body was read (request ") == 5  # each line names its request


def test_random_malformed_requests_never_get_a_server_error(http, trained):
    # A seeded fuzz of every endpoint that takes input: wrong types, absurd numbers
    # (1e308 runtimes and features), odd names and paths. Every answer is a 2xx or a
    # 4xx with a JSON message, and the stored model answers exactly as before.
    import random

    before = ok(http.post(f"/predict/single/{SEGMENTS}", json={"trace": TRACE}))["results"]["quantile_predictions"]
    table = http.post(f"/predict/table/{SEGMENTS}", data={"table_name": "fuzz.json"},
                      files={"trace_file": ("t.jsonl", b"\n".join(orjson.dumps(t) for t in make_llm_traces(30)))})
    assert table.status_code == 200, table.text
    rng = random.Random(7)
    wild = [None, True, 0, -1, 1e308, -1e308, 5e-324, 2**70, "", "x", "1e999", "../../etc/passwd", "*", [], {}, [1, 2], 0.5]

    def value(depth: int = 0):
        if depth < 2 and rng.random() < 0.2:
            return {rng.choice(["input_tokens", "output_tokens", "x"]): value(depth + 1) for _ in range(rng.randrange(3))}
        return rng.choice(wild) if rng.random() < 0.6 else rng.uniform(0, 2000)

    def trace():
        return {"input_tokens": value(), "output_tokens": value(), **({"runtime_ms": value()} if rng.random() < 0.5 else {})}

    def body():
        b = {k: value() for k in ("quantiles", "confidence_level", "lookup_table") if rng.random() < 0.3}
        if rng.random() < 0.3:
            b.update(lookup_table=True, lookup_table_name=rng.choice(["fuzz.json", "fuzz.json", "nope.json", "../x.json"]))
        b["trace"] = trace() if rng.random() < 0.5 else [trace() for _ in range(rng.choice([1, 3, 12]))]
        return b

    requests = [
        lambda: http.post(f"/predict/single/{SEGMENTS}", json=body()),
        lambda: http.post(f"/predict/batch/{SEGMENTS}", json=body()),
        lambda: http.post("/observe", json={"model": rng.choice([IDENTITY, value(), {**IDENTITY, "hardware": value()}]),
                                            "traces": [trace() for _ in range(rng.randrange(1, 4))]}),
        lambda: http.post("/train", json={"config": {"model": rng.choice([value(), {**IDENTITY, "model_name": value()}]),
                                                     "traces": rng.choice([value(), [value()]])}}),
        lambda: http.get(f"/models/{SEGMENTS}/versions/{rng.choice(['0', '-1', 'x', '99999999999999999999'])}"),
        lambda: http.get(f"/models/{SEGMENTS}/accuracy", params={"version": rng.choice(["x", "-3", "1e3", "7"])}),
        lambda: http.get("/tables/" + rng.choice(["..", "%2E%2E%2Fx", "a%00b.json", ".hidden.json", "nope.json"])),
        lambda: http.post(f"/predict/table/{SEGMENTS}", data={
            "confidence_level": rng.choice(["0.9", "x", "2", ""]), "table_name": rng.choice(["t.json", "../t.json", "a/b.json", "t"]),
            "format": rng.choice(["json", "csv", "xml"])},
            files={"trace_file": ("t.csv", rng.choice([b"input_tokens,output_tokens\n1,2\n", b"\x00\x01", b'"' + b"x" * 200_000]))}),
        lambda: http.post("/predict/single/" + "/".join(rng.choice(["*", "%2F", "..", "x" * 300, "llm"]) for _ in range(5)),
                          content=rng.choice([b"{", b"[]", b'{"trace": {}}', b"null", b'{"trace": NaN}'])),
    ]
    for _ in range(300):
        r = rng.choice(requests)()
        assert r.status_code < 500, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
        if r.status_code >= 400:
            assert isinstance(r.json().get("message"), str) and "Traceback" not in r.text, f"{r.request.url}: {r.text[:300]}"
    after = ok(http.post(f"/predict/single/{SEGMENTS}", json={"trace": TRACE}))["results"]["quantile_predictions"]
    assert after == before


def test_unknown_paths_and_methods_answer_in_the_error_format(http):
    body = failed(http.get("/no/such/thing"), 404, "no endpoint GET /no/such/thing")
    assert (body["status"], body["field"]) == ("error", "path")
    r = http.delete("/health")
    assert failed(r, 405, "method DELETE is not allowed on /health")["field"] == "method"
    assert "GET" in r.headers["allow"]
    # A trailing slash is no redirect to follow (a bodiless 307 before).
    failed(http.post(f"/predict/single/{SEGMENTS}/", json={"trace": TRACE}), 404, "no endpoint POST /predict/single/")


def test_a_405_allows_every_method_the_path_takes(http, trained):
    # RFC 9110: a 405's Allow lists the path's methods. Starlette named the first route's
    # alone: GET for a model's and a table's paths, whose DELETE it left out, and never HEAD.
    cases = {("DELETE", "/health"): "GET, HEAD", ("POST", f"/models/{SEGMENTS}"): "DELETE, GET, HEAD",
             ("PUT", "/tables/t.json"): "DELETE, GET, HEAD", ("GET", f"/predict/single/{SEGMENTS}"): "POST",
             ("HEAD", "/train"): "POST", ("PATCH", f"/models/{SEGMENTS}/versions/1"): "DELETE, GET, HEAD"}
    for (method, path), allow in cases.items():
        r = http.request(method, path)
        assert (r.status_code, r.headers["allow"]) == (405, allow), (method, path)


def test_made_up_methods_share_one_metrics_label(tmp_path):
    # h11 (uvicorn --http h11) hands any token on as the method: one series each would grow
    # the exposition, and the process's memory, without bound.
    args = [sys.executable, "-m", "uvicorn", "swarmpilot_predictor.api:app_from_env", "--factory", "--http", "h11",
            "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
    with run_server(tmp_path / "data", args=args) as srv, httpx.Client(base_url=srv.url) as http:
        for i in range(5):
            assert http.request(f"M{i:05d}", "/health").status_code == 405
        text = http.get("/metrics").text
    assert "M00000" not in text and "M00004" not in text
    assert metric_value(text, "predictor_http_requests_total", method="other", route="/health", status="405") == 5


def test_head_answers_like_get_without_a_body(http, trained):
    # Load balancers probe with HEAD: the status and headers of the GET, no body.
    for path in ("/health", "/ping", "/models", f"/models/{SEGMENTS}", "/dashboard"):
        get, head = http.get(path), http.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
    assert http.head("/models/llm/nope/gpu/sw/1").status_code == 404
    r = http.head("/train")
    assert r.status_code == 405 and r.content == b"" and "POST" in r.headers["allow"]
    assert http.head("/docs").status_code == http.get("/openapi.json").status_code == 200
    text = http.get("/metrics").text
    assert '{method="HEAD",route="/health",status="200"}' in text
    # Starlette's plain routes (the docs, the schema) by their templates too, not "unmatched".
    assert '{method="HEAD",route="/docs",status="200"}' in text
    assert '{method="GET",route="/openapi.json",status="200"}' in text
    assert 'route="unmatched",status="200"' not in text


# --------------------------------------------------------------------------- YAML configs, wildcards, file names, forms


_YAML_MODEL = ('model: {model_type: yaml, model_name: m, hardware: h, software_name: s, software_version: "1"}\n')


@pytest.mark.parametrize("yaml_text, field", [
    # Strings YAML may hold but Unicode does not (a lone surrogate), wherever they are.
    ('traces: "\\ud800.jsonl"\n', "config.traces"),
    ('traces: t.jsonl\nfeatures: ["\\ud800"]\n', "config.features.0"),
    ('traces: t.jsonl\ntarget: "\\ud800"\n', "config.target"),
    ('traces: t.jsonl\nparams: {"\\ud800": 1}\n', "config.params"),
    ('traces: [{x: 1, runtime_ms: 2, c: "\\ud800"}, {x: 2, runtime_ms: 3, c: b}]\n', "config.traces.0.c"),
    ('traces: [{x: 1, runtime_ms: 2}, {x: 2, runtime_ms: 3, "\\udcff": 1}]\n', "config.traces.1"),
    # Values JSON has no form for.
    ('traces: [{x: 1, runtime_ms: 2, b: !!binary /w==}, {x: 2, runtime_ms: 3, b: !!binary /w==}]\n', "config.traces.0.b"),
    ('traces: [{x: 1, runtime_ms: 2, d: 2024-01-01}, {x: 2, runtime_ms: 3, d: 2024-01-02}]\n', "config.traces.0.d"),
    ('traces: [{x: 1, runtime_ms: 2, t: 2024-01-01 10:00:00}, {x: 2, runtime_ms: 3}]\n', "config.traces.0.t"),
    ('traces: [{x: 1, runtime_ms: 2, s: !!set {a, b}}, {x: 2, runtime_ms: 3}]\n', "config.traces.0.s"),
    ('traces: [{1: 1, runtime_ms: 2}, {1: 2, runtime_ms: 3}]\n', "config.traces.0"),
    ('traces: [{x: .nan, runtime_ms: 2}, {x: 2, runtime_ms: 3}]\n', "config.traces.0.x"),
    ('traces: t.jsonl\nquantiles: [.inf]\n', "config.quantiles.0"),
    ('traces: t.jsonl\nparams: {alpha: .nan}\n', "config.params.alpha"),
])
def test_yaml_configs_json_could_not_hold_are_422_naming_the_path(http, yaml_text, field):
    traces = jsonl_bytes(make_llm_traces(20))
    r = multipart_train(http, "c.yaml", (_YAML_MODEL + yaml_text).encode(), {"t.jsonl": traces})
    body = failed(r, 422, field)
    assert body["field"] == field
    # The same config behind a "config:" key names the same path.
    wrapped = "config:\n" + "".join("  " + line + "\n" for line in (_YAML_MODEL + yaml_text).splitlines())
    assert failed(multipart_train(http, "c.yaml", wrapped.encode(), {"t.jsonl": traces}), 422)["field"] == field


def test_a_yaml_syntax_error_says_where_in_one_line(http):
    body = failed(multipart_train(http, "c.yaml", b"model: [a, b\ntraces: t.jsonl\n", {}), 422,
                  "line 2, column 7: expected ',' or ']', but got ':' (while parsing a flow sequence at line 1, column 8)")
    assert body["field"] == "config" and "\n" not in body["message"] and "unicode string" not in body["message"]


def test_yaml_aliases_cannot_expand_a_config_without_bound(http):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for name, prev in zip("bcdefgh", "abcdefg"):
        bomb += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
    failed(multipart_train(http, "c.yaml", bomb.encode(), {}), 422, "aliases")


def test_error_answers_escape_what_utf8_cannot_encode():
    from swarmpilot_predictor.routes.common import error_response

    body = orjson.loads(error_response(422, "features: '\ud800' not found", "features.\udcff", extra=["\ud800"]).body)
    assert body["message"] == "features: '\\ud800' not found" and body["field"] == "features.\\udcff"
    assert body["extra"] == ["\\ud800"]


@pytest.mark.parametrize("part", ["model_type", "model_name", "hardware", "software_name", "software_version"])
def test_a_wildcard_cannot_name_an_identity_part_at_training(http, part):
    # '*' (or %2A) in a URL leaves a part unspecified: a model named '*' could never be addressed.
    body = failed(http.post("/train", json={"config": {"model": {**ident("star"), part: "*"},
                                                      "traces": make_llm_traces(40)}}), 422, f"config.model.{part}")
    assert body["field"] == f"config.model.{part}"
    config = yaml.safe_dump({"model": {**ident("star"), part: "*"}, "traces": "t.jsonl"}).encode()
    body = failed(multipart_train(http, "c.yaml", config, {"t.jsonl": jsonl_bytes(make_llm_traces(20))}), 422, part)
    assert body["field"] == f"config.model.{part}"


def test_a_training_body_that_spells_nan_names_the_trace_and_field(http):
    body = b'{"config": {"model": {"model_type": "llm", "model_name": "n", "hardware": "h", "software_name": "s", ' \
           b'"software_version": "1"}, "traces": [{"x": 1, "runtime_ms": 2.0}, {"x": 2, "runtime_ms": NaN}]}}'
    got = failed(http.post("/train", content=body, headers={"content-type": "application/json"}), 422,
                 "config.traces[1].runtime_ms: NaN is not a number JSON allows")
    assert got["field"] == "config.traces[1].runtime_ms"


def test_an_unquoted_yaml_version_is_refused_with_the_way_out(http):
    # software_version: 1.10 is the number 1.1 once YAML has read it: taken as text it would
    # have named version "1.1"; pydantic's "Input should be a valid string" did not say why.
    config = b"model: {model_type: llm, model_name: y, hardware: h, software_name: s, software_version: 1.10}\n" \
             b"traces: t.jsonl\n"
    body = failed(multipart_train(http, "c.yaml", config, {"t.jsonl": jsonl_bytes(make_llm_traces(20))}), 422,
                  'got the number 1.1: quote it ("1.10", not 1.10')
    assert body["field"] == "config.model.software_version"
    body = failed(http.post("/train", json={"config": {"model": {**ident("y"), "hardware": True},
                                                      "traces": make_llm_traces(20)}}), 422, "got true: quote it")
    assert body["field"] == "config.model.hardware"


@pytest.mark.parametrize("value", [" ", "H100\n"])
def test_a_blank_part_or_a_control_character_cannot_name_a_model(http, value):
    # A client cannot tell a blank part from an empty one, nor list a name holding a line break.
    body = failed(http.post("/train", json={"config": {"model": {**ident("blank"), "hardware": value},
                                                      "traces": make_llm_traces(40)}}), 422, "hardware")
    assert body["field"] == "config.model.hardware"
    traces = [{**t, "hardware": value if i % 2 else "A100"} for i, t in enumerate(make_llm_traces(60))]
    body = failed(http.post("/train", json={"config": {"model": ident("blank"), "group_by": ["hardware"],
                                                      "traces": traces}}), 422, "hardware")
    assert body["field"] == "config.traces"
    assert not [m for m in http.get("/models").json()["models"] if m["model_type"] == "blank"]


def test_a_wildcard_group_value_cannot_name_a_model(http):
    traces = [{**t, "hardware": "*" if i % 2 else "A100"} for i, t in enumerate(make_llm_traces(60))]
    body = failed(http.post("/train", json={"config": {"model": ident("stargroup"), "group_by": ["hardware"],
                                                      "traces": traces}}),
                  422, "hardware", "'*'")
    assert body["field"] == "config.traces"
    # Names with a star inside are plain names.
    ok(http.post("/train", json={"config": {"model": ident("stargroup", model_name="a*b"), "traces": make_llm_traces(40),
                                            "algorithm": "linear"}}))
    ok(http.get("/models/stargroup/a%2Ab/*/*/*"))


def test_training_errors_name_the_uploaded_file_not_the_servers_copy(http):
    config = orjson.dumps({"model": ident("names"), "traces": "s1.json"})
    body = failed(multipart_train(http, "c.json", config, {"s1.json": b'[{"x": 1, "runtime_ms": 2}, {"x": '}), 422,
                  "s1.json: item 1: not valid JSON", "truncated")
    assert "0.json" not in body["message"]
    # Named by its form field, the upload is still called by its file name.
    r = http.post("/train", files=[("config", ("c.json", orjson.dumps({"model": ident("names"), "traces": "f"}), "x")),
                                   ("f", ("mine.jsonl", b'{"x": 1, "runtime_ms": 2}\n{broken\n', "x"))])
    body = failed(r, 422, "mine.jsonl: line 2")
    assert "0.jsonl" not in body["message"]
    # A config written for the CLI names a path; the upload is named by its file name, which the message gives.
    r = http.post("/train", files=[("config", ("c.json", orjson.dumps({"model": ident("names"), "traces": "data/mine.jsonl"}), "x")),
                                   ("trace_file", ("mine.jsonl", jsonl_bytes(make_llm_traces(20)), "x")),
                                   ("more", ("other.csv", b"x,runtime_ms\n1,2\n", "x"))])
    body = failed(r, 422, "traces file 'data/mine.jsonl' not found in the data directory or the upload "
                          "(the upload holds 'mine.jsonl', 'other.csv': name one of them by its file name)")
    assert body["field"] == "config.traces"


def table_failed(r: httpx.Response, status: int, field: str, *needles: str) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    body = r.json()
    assert body["status"] == "failed" and body["path"] is None and body["field"] == field, body
    for needle in needles:
        assert needle in body["message"], f"{needle!r} not in {body['message']!r}"
    return body


def test_table_errors_name_the_uploaded_file(http, trained):
    for name, data, needle in [("bad.json", b'[{"input_tokens": 1, ', "bad.json: "),
                               ("bad.json", b'{"traces": [1', "bad.json: "),
                               ("bad.jsonl", b'{"input_tokens": 1}\n{oops\n', "bad.jsonl: line 2"),
                               ("bad.json.gz", gzip.compress(b"[" * 50)[:20], "bad.json.gz")]:
        r = http.post(f"/predict/table/{SEGMENTS}", files={"trace_file": (name, data, "x")})
        body = table_failed(r, 422, "trace_file", needle)
        assert "upload-" not in body["message"] and "traces." not in body["message"], body["message"]


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_table_form_errors_keep_the_tables_answer_format(http, trained):
    url = f"/predict/table/{SEGMENTS}"
    traces = jsonl_bytes(make_llm_traces(5))
    # No boundary in the content type.
    r = http.post(url, content=_multipart([("trace_file", "t.jsonl", traces)]),
                  headers={"content-type": "multipart/form-data"})
    table_failed(r, 400, "body", "boundary")
    form = {"content-type": "multipart/form-data; boundary=XyZ"}
    # More fields than the form has.
    fields = [(f"f{i}", None, b"1") for i in range(17)]
    table_failed(http.post(url, content=_multipart([*fields, ("trace_file", "t.jsonl", traces)]), headers=form),
                 400, "body", "fields")
    # Two files.
    two = [("trace_file", "t.jsonl", traces), ("other", "u.jsonl", traces)]
    table_failed(http.post(url, content=_multipart(two), headers=form), 400, "trace_file", "files")
    # A form field over 64 KB.
    big = [("table_name", None, b"x" * (65 * 1024)), ("trace_file", "t.jsonl", traces)]
    table_failed(http.post(url, content=_multipart(big), headers=form), 413, "body", "64KB")
    # Training's form errors are in the service's error format, with a field.
    body = failed(http.post("/train", content=_multipart([("config", None, b"{}")]),
                            headers={"content-type": "multipart/form-data"}), 400, "boundary")
    assert body["field"] == "body"
    # A body cut short before the closing boundary lost its last part without a word: the
    # table went under the default name, over the model's own table.
    cut = _multipart([("trace_file", "t.jsonl", traces), ("table_name", None, b"mine.csv")]).removesuffix(b"--XyZ--\r\n")
    table_failed(http.post(url, content=cut, headers=form), 400, "body", "cut short")
    config = orjson.dumps({"model": ident("cut"), "traces": "t.jsonl", "algorithm": "linear"})
    cut = _multipart([("config", "c.json", config), ("t", "t.jsonl", jsonl_bytes(make_llm_traces(40)))])
    failed(http.post("/train", content=cut[: -len(b"--XyZ--\r\n")], headers=form), 400, "cut short")
    # Media types are case-insensitive: the same form as "Multipart/Form-Data" was read as JSON.
    ok(http.post("/train", content=cut, headers={"content-type": "Multipart/Form-Data; boundary=XyZ"}))
    # A part without a name is named, as "".
    assert failed(http.post("/train", content=_multipart([("config", "c.json", config), ("", None, b"x")]),
                            headers=form), 422)["field"] == ""
    # Past 64 trace files the form is refused as a whole ("files" named no part sent).
    files = [(f"t{i}", f"t{i}.jsonl", traces) for i in range(65)]
    assert failed(http.post("/train", content=_multipart([("config", "c.json", config), *files]), headers=form),
                  400, "Maximum number of files is 64")["field"] == "body"


def test_upload_folders_left_by_a_killed_server_are_removed_at_start(tmp_path):
    import os
    import time

    data = tmp_path / "data"
    old, fresh = data / "upload-left-behind", data / "upload-in-flight"
    # Dated two days ahead (a host whose clock was ahead, or this one's set back since): its
    # age was negative, and it stayed, start after start, until the clock caught up.
    ahead, near = data / "upload-from-ahead", data / "upload-an-hour-ahead"
    for folder in (old, fresh, ahead, near):
        folder.mkdir(parents=True)
        (folder / "traces.jsonl").write_text("{}\n")
    for folder, seconds in ((old, -2 * 86400), (ahead, 2 * 86400), (near, 3600)):
        os.utime(folder, (time.time() + seconds, time.time() + seconds))
    with run_server(data):
        assert not old.exists() and not ahead.exists()
        assert fresh.exists() and near.exists()  # another worker's request may still be reading it


def test_a_value_nested_a_thousand_deep_or_ten_megabytes_long_is_a_short_422(http, trained):
    # Error messages quote what was sent, cut short: quoted whole, a deep list raised a
    # RecursionError (a 500) and a long string made a 20 MB error body.
    seg = SEGMENTS
    deep = b"[" * 1000 + b"1" + b"]" * 1000
    r = http.post(f"/predict/single/{seg}", content=b'{"trace": {"input_tokens": ' + deep + b', "output_tokens": 5}}',
                  headers={"content-type": "application/json"})
    body = failed(r, 422, "input_tokens", "must be a number")
    assert len(r.content) < 2000 and "[[[[...]]]]" in body["message"]
    r = http.post(f"/predict/batch/{seg}", json={"trace": [{"input_tokens": "x" * 10_000_000, "output_tokens": 5}]})
    assert r.status_code in (200, 422) and len(r.content) < 5000
    assert "xxx..." in r.text
    r = http.post("/train", content=b'{"config": {"model": ' + orjson.dumps(ident("deep")) + b', "traces": '
                  + orjson.dumps(make_llm_traces(60)) + b', "algorithm": "lightgbm", "params": {"alpha": ' + deep + b'}}}',
                  headers={"content-type": "application/json"})
    failed(r, 422, "alpha")
    assert len(r.content) < 2000


def test_a_number_of_more_digits_than_python_reads_is_infinite_not_a_server_error(http, trained):
    """Python reads an integer from at most 4300 digits, and int() raised past that: a 500 on
    every route that reads a number from a string. Such a number lies far past the float
    range, so it is read as infinite, as one of 400 digits is: refused where a finite number
    belongs, naming the field, and in a batch, a queue or an observation by itself."""
    digits = "1" * 5000
    body = failed(http.post(SINGLE, json={"trace": {**TRACE, "input_tokens": digits}}), 422, "input_tokens")
    assert body["field"] == "trace"
    results = ok(http.post(BATCH, json={"trace": [TRACE, {**TRACE, "output_tokens": f" -{digits} "}]}))["results"]
    assert [r["status"] for r in results] == ["success", "error"] and "output_tokens" in results[1]["message"]
    queue = ok(http.post(f"/predict/queues/{SEGMENTS}", json={"queues": {"a": [{**TRACE, "input_tokens": digits}, TRACE]}}))
    assert (queue["queues"]["a"]["tasks"], queue["queues"]["a"]["errors"][0]["index"]) == (1, 0)
    observed = ok(http.post("/observe", json={"model": IDENTITY, "traces": [
        {**TRACE, "runtime_ms": 1230.0}, {**TRACE, "runtime_ms": digits}, {**TRACE, "input_tokens": digits, "runtime_ms": 1.0}]}))
    assert [r["index"] for r in observed["rejected"]] == [1, 2] and "runtime_ms" in observed["rejected"][0]["message"]
    # Training copes with such a value as with any non-finite one: a runtime's trace is
    # dropped, a feature's value imputed, and the request succeeds.
    traces = make_llm_traces(120, seed=5)
    traces[0] = {**traces[0], "runtime_ms": digits}
    traces[1] = {**traces[1], "input_tokens": digits}
    answer = ok(http.post("/train", json={"config": {"model": ident("digits"), "traces": traces, "algorithm": "linear"}}))
    data = answer["metrics"]["data"]
    assert (data["rows_used"], data["rows_dropped"], data["values_imputed"]) == (
        119, {"target missing or not finite": 1}, {"input_tokens": 1}), data
    # A trace file's cell (CSV) and value (JSON) too, and a table's confidence level.
    header, rows = csv_bytes(make_llm_traces(60)).split(b"\n", 1)
    files = {"t": ("t.csv", header + b"\nx," + digits.encode() + b",5,100\ny,5,5," + digits.encode() + b"\n" + rows, "text/csv")}
    config = orjson.dumps({"model": ident("digits-csv"), "traces": "t.csv", "algorithm": "linear"})
    assert ok(http.post("/train", files={"config": ("c.json", config, "application/json"), **files}))["metrics"]["rows_used"] == 61
    table = http.post(f"/predict/table/{SEGMENTS}", files={"trace_file": ("t.jsonl", b'{"input_tokens": ' + digits.encode() + b', "output_tokens": 5}\n{"input_tokens": 5, "output_tokens": 5}\n', "x")})
    assert table.status_code == 200 and table.json()["status"] == "successful", table.text
    table_failed(http.post(f"/predict/table/{SEGMENTS}", data={"confidence_level": digits},
                           files={"trace_file": ("t.jsonl", b'{"input_tokens": 5, "output_tokens": 5}\n', "x")}),
                 422, "confidence_level")
    # A YAML config's integer that long is named as such, without Python's advice to its operator.
    body = failed(http.post("/train", files={"config": ("c.yaml", f"model: {digits}\n".encode(), "x")}), 422, "4300 digits")
    assert body["field"] == "config" and "sys." not in body["message"]


def test_names_and_errors_a_request_sends_by_the_thousand_are_quoted_short(http, trained):
    # A megabyte-long key, feature, parameter or identity part, and 100,000 wrong items: each
    # was repeated whole (3 MB, 2 MB, 80 KB, 10 MB answers).
    long = "k" * 1_000_000
    cases = [
        (http.post(f"/predict/single/{SEGMENTS}", json={"trace": TRACE, long: 1}), 422),
        (http.post(f"/predict/batch/{SEGMENTS}", json={"trace": [1] * 100_000}), 422),
        (http.get("/models/" + "/".join(["m" * 8000] * 5)), 404),
        (http.post(f"/predict/batch/{'x' * 8000}/*/*/*/*", json={"trace": [TRACE]}), 404),
        (http.get("/no-such-endpoint/" + "p" * 30_000), 404),
    ]
    config = {"model": ident("long"), "traces": make_llm_traces(60)}
    for change in ({"target": long}, {"features": [long]}, {"params": {long: 1}, "algorithm": "lightgbm"},
                   {"group_by": [long], "model": None}, {long: 1}):
        cases.append((http.post("/train", json={"config": {**config, **change}}), 422))
    cases.append((http.post("/train", json={"config": config, long: 1}), 422))
    for r, status in cases:
        assert r.status_code == status, r.text[:300]
        assert len(r.content) < 2000, (r.status_code, r.text[:300])
        body = r.json()
        assert "kkkkk..." in body["message"] + body.get("field", "") or status == 404 or "trace" in body["message"]
        assert len(body.get("field", "")) <= 100
    many = cases[1][0].json()
    assert many["field"] == "trace.0" and many["message"].endswith("; and 99994 more")
    assert many["message"].count("Input should be a valid dictionary") == 6


@pytest.mark.parametrize("value, needle", [("L" * 201, "at most 200 characters"), ("L" * 1_000_000, "got 1,000,000")])
def test_a_group_value_that_no_url_could_address_cannot_name_a_model(http, value, needle):
    # A model named by a megabyte could never be asked for or deleted: a URL line has a limit.
    traces = [{**t, "hardware": value if i % 2 else "A100"} for i, t in enumerate(make_llm_traces(60))]
    body = failed(http.post("/train", json={"config": {"model": ident("badgroup"), "group_by": ["hardware"],
                                                      "traces": traces}}), 422, "hardware", needle)
    assert body["field"] == "config.traces" and len(body["message"]) < 400
    failed(http.post("/train", json={"config": {"model": {**IDENTITY, "hardware": value}, "traces": make_llm_traces(40)}}),
           422, "config.model.hardware")


def test_a_batch_answer_is_bounded_and_a_long_batch_matches_the_short_one(http, trained):
    many = [{"input_tokens": 10 + i, "output_tokens": 1 + i % 50} for i in range(5001)]
    levels = [round(0.005 * k, 3) for k in range(1, 200)] + [0.999]
    body = failed(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": many, "quantiles": levels}), 422,
                  "5,001 traces at 200 quantile levels", "1,000,000")
    assert body["field"] == "trace"
    # Without named levels, a batch is answered at the model's (or table's) own: up to 200.
    wide = ident("widelevels")
    ok(http.post("/train", json={"config": {"model": wide, "traces": make_llm_traces(80), "algorithm": "linear",
                                            "quantiles": levels}}))
    wide_path = ModelIdentity.from_parts(wide).key
    body = failed(http.post(f"/predict/batch/{wide_path}", json={"trace": many}), 422, "5,001 traces at 200")
    assert body["field"] == "trace"
    table = http.post(f"/predict/table/{wide_path}", files={"trace_file": ("t.jsonl", jsonl_bytes(many[:50]))},
                      data={"table_name": "wide.json"})
    assert table.status_code == 200, table.text
    body = failed(http.post(f"/predict/batch/{wide_path}", json={"trace": many, "lookup_table": True,
                                                                 "lookup_table_name": "wide.json"}), 422, "5,001 traces at 200")
    assert body["field"] == "trace"
    # Under the bound: 1,001 traces (predicted off the event loop) answer as a one-trace batch does.
    long = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": many[:1001], "quantiles": [0.5, 0.9]}))
    one = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": many[1000:1001], "quantiles": [0.5, 0.9]}))
    assert len(long["results"]) == 1001
    assert long["results"][1000]["quantile_predictions"] == pytest.approx(one["results"][0]["quantile_predictions"], rel=1e-9)


def test_a_multipart_config_part_over_64_mb_is_a_413(http):
    big = b'{"model": {}, "pad": "' + b"x" * (64 * 1024 * 1024) + b'"}'
    r = http.post("/train", files={"config": ("config.json", big, "application/json")})
    body = failed(r, 413, "config", "trace files")
    assert body["field"] == "config"
    # As a text field, the config may be as large (it was cut at 8 MB, a 413 naming the body),
    # and past that it is the same 413 naming it.
    trace_file = {"files": ("t.jsonl", b'{"runtime_ms": 1}\n', "application/x-ndjson")}
    text = '{"model": {}, "pad": "' + "x" * (12 * 1024 * 1024) + '"}'
    r = http.post("/train", data={"config": text}, files=trace_file)
    assert r.status_code == 422 and r.json()["field"].startswith("config"), r.text[:300]
    r = http.post("/train", data={"config": big.decode()}, files=trace_file)
    assert r.status_code == 413 and r.json()["field"] == "config", r.text[:300]


def test_a_multipart_config_part_not_in_utf8_is_a_422_not_a_model_named_with_a_replacement_character(http):
    # Saved in Latin-1 (a Windows editor's default): it trained "GH200 \ufffd", the byte read as U+FFFD.
    config = ("model:\n  model_type: llm\n  model_name: latin1\n  hardware: GH200 \xfc\n  software_name: s\n"
              "  software_version: '1'\ntraces: t.jsonl\nalgorithm: empirical\n").encode("latin-1")
    traces = "".join(orjson.dumps(t).decode() + "\n" for t in make_llm_traces(20)).encode()
    body = failed(http.post("/train", files={"config": ("c.yaml", config), "trace_file": ("t.jsonl", traces)}),
                  422, "not UTF-8", "byte 64")
    assert body["field"] == "config"
    assert not any(m["model_name"] == "latin1" for m in ok(http.get("/models"))["models"])


def test_limits_of_a_small_service_gzip_expansion_and_the_training_queue(tmp_path):
    # A gzip upload may expand no further than a plain upload may be large, and a worker
    # holds at most PREDICTOR_MAX_QUEUED_TRAININGS trainings (queued ones keep their bodies).
    env = {"PREDICTOR_MAX_UPLOAD_MB": "1", "PREDICTOR_MAX_QUEUED_TRAININGS": "1"}
    with run_server(tmp_path / "data", extra_env=env) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        traces = make_llm_traces(120)
        plain = jsonl_bytes(traces)
        ok(client.post("/train", files={"config": ("c.json", orjson.dumps({"model": IDENTITY, "traces": "t.jsonl.gz",
                                                                          "algorithm": "linear"})),
                                        "files": ("t.jsonl.gz", gzip.compress(plain))}))
        bomb = gzip.compress(plain * (2 * 1024 * 1024 // len(plain) + 1))
        assert len(bomb) < 1024 * 1024
        r = client.post("/train", files={"config": ("c.json", orjson.dumps({"model": IDENTITY, "traces": "t.jsonl.gz"})),
                                         "files": ("t.jsonl.gz", bomb)})
        body = failed(r, 413, "t.jsonl.gz", "expands to more than 1 MB")
        assert body["field"] == "files"
        r = client.post(f"/predict/table/{SEGMENTS}", files={"trace_file": ("t.jsonl.gz", bomb)},
                        data={"table_name": "bomb.json"})
        assert r.status_code == 413 and "expands to more than 1 MB" in r.json()["message"]
        assert not (server.data_dir / "tables" / "bomb.json").exists()
        # The queue: one training at a time in this worker; another while it runs is a 429.
        slow = {"config": {"model": {**IDENTITY, "hardware": "Q"}, "traces": make_llm_traces(3000), "algorithm": "auto"}}
        first = client.post("/train?background=true", json=slow)
        assert first.status_code == 202
        second = client.post("/train?background=true", json=slow)
        failed(second, 429, "1 training is already queued or running", "PREDICTOR_MAX_QUEUED_TRAININGS")
        assert second.headers["retry-after"] == "10"
        job = first.json()["status_url"]
        deadline = time.monotonic() + 120
        while client.get(job).json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.post("/train?background=true", json=slow).status_code == 202  # room again
        # background=true&background=false trained in the foreground
        r = client.post("/train?background=true&background=false", json=slow)
        assert r.status_code == 422 and r.json()["field"] == "background"


def test_a_service_started_with_preload_loads_its_models_before_any_request(tmp_path):
    data = trained_in_process(tmp_path / "data", *({"model": {**IDENTITY, "hardware": hw}, "traces": make_llm_traces(60),
                                                    "algorithm": "linear"} for hw in ("A", "B")))
    with run_server(data) as first, httpx.Client(base_url=first.url, timeout=60) as client:
        health = client.get("/health").json()
        assert health["models_registered"] == 2 and health["models_loaded"] == 0  # lazily, by default
    with run_server(data, extra_env={"PREDICTOR_PRELOAD_MODELS": "true"}) as second, \
            httpx.Client(base_url=second.url, timeout=60) as client:
        deadline = time.monotonic() + 30
        while (health := client.get("/health").json())["models_loaded"] < 2:
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
        assert health["models_registered"] == 2 and health["models_loaded"] == 2


# The app of PREDICTOR_* settings, its registry's loading made to take a second a model.
_SLOW_LOADING_SERVER = """
import sys, time, uvicorn
from swarmpilot_predictor.api import app_from_env
app = app_from_env()
registry = app.state.service.registry
real_load = registry.load
def slow_load(*args, **kwargs):
    time.sleep(1.0)
    return real_load(*args, **kwargs)
registry.load = slow_load
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def test_ready_answers_503_until_the_preloaded_models_are_in_memory(tmp_path):
    # A readiness probe on /health let traffic in while the models loaded, each first
    # prediction waiting for its model (1.6 s for a LightGBM one).
    data = trained_in_process(tmp_path / "data", *({"model": {**IDENTITY, "hardware": hw}, "traces": make_llm_traces(60),
                                                    "algorithm": "linear"} for hw in ("A", "B")))
    with run_server(data) as lazy, httpx.Client(base_url=lazy.url, timeout=60) as client:
        assert ok(client.get("/ready")) == {"status": "ready", "models_loaded": 0}  # nothing to wait for
    from swarmpilot_predictor.client import AsyncPredictorClient, PredictorClient, PredictorClientError, Ready

    # One server for the raw answers and the clients' (a second one to start and preload
    # took 5 s of the test's 12.5): the loading takes 2 s, its first answers come within it.
    args = [sys.executable, "-c", _SLOW_LOADING_SERVER, "{port}"]
    with run_server(data, extra_env={"PREDICTOR_PRELOAD_MODELS": "true"}, args=args) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as client, PredictorClient(srv.url) as sync_client:
        warming = client.get("/ready")
        assert warming.status_code == 503 and warming.headers["retry-after"] == "1"
        assert "(PREDICTOR_PRELOAD_MODELS)" in warming.json()["message"] and " of 2 loaded" in warming.json()["message"]
        # Through the client: the 503 is an error saying why, then the typed answer.
        with pytest.raises(PredictorClientError) as caught:
            sync_client.ready()
        assert caught.value.status_code == 503 and caught.value.retry_after == 1.0
        assert "of 2 loaded" in caught.value.message
        assert ok(client.get("/ping")) == {"status": "ok"} and ok(client.get("/health"))["status"] == "healthy"
        deadline = time.monotonic() + 30
        while (answer := client.get("/ready")).status_code == 503:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        assert ok(answer) == {"status": "ready", "models_loaded": 2}
        assert client.head("/ready").status_code == 200
        typed = sync_client.ready()
        assert isinstance(typed, Ready) and typed.models_loaded == 2

        async def ready_async() -> Ready:
            async with AsyncPredictorClient(srv.url) as async_client:
                return await async_client.ready()

        assert asyncio.run(ready_async()) == typed


def test_an_unexpected_error_is_a_500_that_closes_its_connection_and_says_so(tmp_path):
    with run_server(tmp_path / "data", args=broken_server(log_level="critical", quiet=True)) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /cache/stats HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        # The server closes the connection after a 500 (uvicorn does): the answer says so,
        # so that a client's pool does not reuse it (the header was missing).
        assert head.startswith(b"HTTP/1.1 500") and b"connection: close" in head.lower()
        assert orjson.loads(body) == {"status": "error", "message": "internal error: KeyError",
                                      "detail": "internal error: KeyError"}
        with httpx.Client(base_url=srv.url) as client:
            for _ in range(20):
                assert client.get("/cache/stats").status_code == 500
                assert client.get("/ping").status_code == 200


MODEL_ROUTE = "/models/" + "/".join(v.replace("/", "%2F") for v in IDENTITY.values())


@pytest.mark.parametrize("verb, route, method, status", [
    ("GET", "/health", "health", 200), ("GET", "/models", "list_models", 200), ("GET", "/metrics", "render_metrics", 200),
    ("GET", MODEL_ROUTE, "model_detail", 200), ("GET", MODEL_ROUTE + "/versions/1", "model_detail", 200),
    ("GET", MODEL_ROUTE + "/accuracy", "accuracy", 200), ("GET", "/tables", "list_tables", 200),
    # Writes unlink files and fsync; a job's record is read from disk, a new one written.
    ("DELETE", MODEL_ROUTE, "delete_model", 200), ("DELETE", MODEL_ROUTE + "/versions/1", "delete_model", 200),
    ("DELETE", "/tables/t.json", "delete_table", 404), ("GET", "/train/jobs/0123456789abcdef", "jobs.get", 404),
    ("POST", "/train?background=true", "jobs.submit_raw", 202)])
def test_a_slow_report_or_write_does_not_hold_the_other_requests(tmp_path, verb, route, method, status):
    # These routes read observation logs and run drift tests, or write to disk: a first
    # /health after a restart with a full log took 3.9 s, and /ping waited for it. A request
    # held until /ping has been answered shows that it is worked on off the event loop.
    from swarmpilot_predictor.api import create_app
    from swarmpilot_predictor.settings import PredictorSettings

    from swarmpilot_predictor.schemas import TrainConfig

    app = create_app(PredictorSettings(data_dir=tmp_path / "data"))
    service, release = app.state.service, threading.Event()
    service.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(60), algorithm="linear"))
    owner, _, name = (service, "", method) if "." not in method else (getattr(service, method.split(".")[0]), ".",
                                                                      method.split(".")[1])
    real = getattr(owner, name)

    def held(*args):
        release.wait(10)
        return real(*args)

    setattr(owner, name, held)
    body = orjson.dumps({"config": {"model": IDENTITY, "traces": make_llm_traces(30), "algorithm": "linear"}})

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://predictor") as client:
            report = asyncio.create_task(client.request(verb, route, content=body if verb == "POST" else None))
            await asyncio.sleep(0.05)  # the request is under way
            ping = await client.get("/ping")
            answered_first = not report.done()
            release.set()
            return ping, answered_first, await report

    try:
        ping, answered_first, report = asyncio.run(scenario())
    finally:
        service.close()
    assert ping.status_code == 200 and answered_first
    assert report.status_code == status, report.text


def test_long_identity_paths_are_not_kept_in_the_path_cache():
    # Any path with identity segments was cached before a model was looked up: 4,096 paths
    # of 60 KB, each a 404, held 470 MB in every worker.
    from swarmpilot_predictor.routes.common import identity_from, pattern_of

    pattern_of.cache_clear()
    short = identity_from({"path": "/models/llm/m/h/s/1"}, 1)
    long_path = "/models/llm/" + "m" * 60_000 + "/h/s/1"
    pattern = identity_from({"path": long_path}, 1)
    assert pattern_of.cache_info().currsize == 1
    assert short.as_tuple()[1] == "m" and pattern.as_tuple()[1] == "m" * 60_000


# --------------------------------------------------------------------------- the API key

API_KEY = "test-key-" + "0123456789abcdef"


def test_a_background_trainings_status_url_is_under_uvicorns_root_path(tmp_path):
    # Behind a gateway that serves the service under /predictor (uvicorn --root-path /predictor),
    # status_url was /train/jobs/<id>: followed there, it left the service's prefix.
    args = [sys.executable, "-m", "uvicorn", "swarmpilot_predictor.api:app_from_env", "--factory", "--host",
            "127.0.0.1", "--port", "{port}", "--log-level", "warning", "--root-path", "/predictor"]
    config = {"config": {"model": IDENTITY, "traces": make_llm_traces(100), "algorithm": "linear"}}
    with run_server(tmp_path / "data", args=args) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        accepted = http.post("/train?background=true", json=config)  # as the gateway forwards it: prefix stripped
        assert accepted.status_code == 202, accepted.text
        job_id, status_url = accepted.json()["job_id"], accepted.json()["status_url"]
        assert status_url == f"/predictor/train/jobs/{job_id}"
        deadline = time.monotonic() + 60
        while (job := ok(http.get(status_url.removeprefix("/predictor"))))["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded" and job["job_id"] == job_id


def test_a_table_generation_refused_before_its_route_answers_in_its_shape_under_a_root_path(tmp_path):
    # Mounted under a proxy's prefix, the path the check read held it: the general shape came back.
    from swarmpilot_predictor.api import create_app
    from swarmpilot_predictor.settings import PredictorSettings

    app = create_app(PredictorSettings(data_dir=tmp_path / "data", api_key=API_KEY))
    table = {"trace_file": ("t.jsonl", b'{"input_tokens": 1, "output_tokens": 1}\n')}

    async def scenario(root: str) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, root_path=root)
        async with httpx.AsyncClient(transport=transport, base_url="http://predictor") as http:
            return [await http.post(f"{root}/predict/table/{SEGMENTS}", files=table),
                    await http.post(f"{root}/predict/table/{SEGMENTS}?x=1", files=table,
                                    headers={"authorization": f"Bearer {API_KEY}"}),
                    await http.post(f"{root}/train", json={})]

    for root in ("", "/api"):
        keyless, unknown, train = asyncio.run(scenario(root))
        table_failed(keyless, 401, "authorization", "API key")
        table_failed(unknown, 422, "x", "query parameter 'x'")
        failed(train, 401, "API key")  # other routes: the general shape


def test_a_compressed_body_without_the_key_is_a_401_and_one_no_route_reads_is_not_a_415(tmp_path):
    # The 415 for a Content-Encoding was answered before the route ran: a request without the
    # key learnt of its body's encoding rather than that it needs the key (documented as the
    # 401), and a path no route serves, or a method a path does not take, read "send the body
    # uncompressed" rather than its 404 or 405. Now it is answered as the route reads the body.
    from swarmpilot_predictor.api import create_app
    from swarmpilot_predictor.settings import PredictorSettings

    body, gz = gzip.compress(b"{}"), {"content-type": "application/json", "content-encoding": "gzip"}
    key = {"authorization": f"Bearer {API_KEY}"}
    form = {"content-type": "multipart/form-data; boundary=x", "content-encoding": "gzip"}
    app = create_app(PredictorSettings(data_dir=tmp_path / "data", api_key=API_KEY))

    async def answers() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://predictor") as http:
            sent = [("/cache/clear", gz), ("/observe", {**gz, "authorization": "Bearer wrong"}),
                    (f"/predict/table/{SEGMENTS}", form), ("/nope", gz), ("/ping", gz),
                    # With the key, or on a route that needs none, the body is refused unread as before.
                    ("/cache/clear", {**gz, **key}), ("/observe", {**gz, **key}),
                    (f"/predict/single/{SEGMENTS}", {**gz, **key}), (f"/predict/table/{SEGMENTS}", {**form, **key})]
            return [await http.post(path, content=body, headers=headers) for path, headers in sent]

    no_key, wrong_key, table_no_key, nowhere, not_posted, *keyed, table_keyed = asyncio.run(answers())
    failed(no_key, 401, "API key")
    failed(wrong_key, 401, "not this")
    table_failed(table_no_key, 401, "authorization")
    failed(nowhere, 404, "no endpoint")
    failed(not_posted, 405, "method POST")
    for r in keyed:
        assert failed(r, 415, "Content-Encoding 'gzip'", "uncompressed")["field"] == "body"
    table_failed(table_keyed, 415, "body", "Content-Encoding 'gzip'")


def test_with_an_api_key_the_routes_that_change_state_need_it_and_the_others_do_not(tmp_path):
    def refused(r: httpx.Response, challenge: str) -> None:
        if r.request.url.path.startswith("/predict/table/"):  # in the shape of that route's own failures
            table_failed(r, 401, "authorization", "API key")
        else:
            failed(r, 401, "API key")
        assert r.json()["field"] == "authorization" and r.headers["www-authenticate"] == challenge

    keyed = {"authorization": f"Bearer {API_KEY}"}
    table = {"trace_file": ("traces.jsonl", b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(20, seed=3)))}
    observed = [{**t, "runtime_ms": t["runtime_ms"] * 1.1} for t in make_llm_traces(40, seed=4)]
    train_body = {"config": {"model": IDENTITY, "traces": make_llm_traces(120), "algorithm": "linear"}}
    # Each route that changes state, as (method, path, request arguments).
    writes = [("POST", "/train", {"json": train_body}),
              ("POST", "/observe", {"json": {"model": IDENTITY, "traces": observed}}),
              ("POST", f"/models/{SEGMENTS}/retrain", {}),
              ("POST", f"/predict/table/{SEGMENTS}", {"files": table, "data": {"table_name": "t.json"}}),
              ("DELETE", "/tables/t.json", {}),
              ("POST", "/cache/clear", {}),
              ("DELETE", f"/models/{SEGMENTS}/versions/1", {}),
              ("DELETE", f"/models/{SEGMENTS}", {})]
    with run_server(tmp_path / "data", {"PREDICTOR_API_KEY": API_KEY}) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as http:
        for method, path, kwargs in writes:
            refused(http.request(method, path, **kwargs), "Bearer")
            refused(http.request(method, path, headers={"authorization": "Bearer " + API_KEY[:-1] + "x"}, **kwargs),
                    'Bearer error="invalid_token"')
            refused(http.request(method, path, headers={"authorization": "Basic " + API_KEY}, **kwargs), "Bearer")
            if path == "/train":
                assert ok(http.get("/models"))["models"] == []  # refused, nothing was trained
                ok(http.request(method, path, headers=keyed, **kwargs))
                ok(http.request(method, path, headers=keyed, **kwargs))  # version 2, for the deletions below
            elif path != "/train":
                ok(http.request(method, path, headers=keyed, **kwargs))
            if path.startswith("/predict/table/"):
                assert [t["name"] for t in ok(http.get("/tables"))["tables"]] == ["t.json"]
            if path == "/observe":  # what is read stays open to all: predictions, discovery, reports
                pred = ok(http.post(f"/predict/single/{SEGMENTS}", json={"trace": TRACE}))["results"]
                assert pred["model_version"] == 2 and 900 < pred["expect"] < 1600
                batch = ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": [TRACE, TRACE]}))
                assert batch["expect"] == pytest.approx(2 * pred["expect"])
                assert ok(http.get(f"/models/{SEGMENTS}/accuracy"))["observations"] == 40
                # An evaluation records nothing: a read, open too.
                assert ok(http.post(f"/models/{SEGMENTS}/evaluate", json={"traces": observed}))["evaluated"] == 40
                for path_read in ("/health", "/ping", "/models", f"/models/{SEGMENTS}", "/cache/stats", "/tables",
                                  "/metrics", "/dashboard", "/docs", "/openapi.json"):
                    assert http.get(path_read).status_code == 200, path_read
        assert ok(http.get("/models"))["models"] == [] and ok(http.get("/tables"))["tables"] == []
        # The key is asked before the body is read: a request that announces 100 MB and sends
        # none of it is answered at once, not held until the body arrives.
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /train HTTP/1.1\r\nhost: predictor\r\ncontent-type: application/json\r\n"
                         b"content-length: 100000000\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 401 ")
        # /docs shows which routes ask for the key.
        spec = ok(http.get("/openapi.json"))
        secured = sorted((m.upper(), p) for p, ops in spec["paths"].items() for m, op in ops.items() if op.get("security"))
        assert len(secured) == len(writes) and spec["components"]["securitySchemes"]["PREDICTOR_API_KEY"]["scheme"] == "bearer"


def test_the_openapi_schema_names_every_field_of_the_health_and_training_answers(http, trained):
    # /docs left out fields the answers hold and the README documents.
    schemas = ok(http.get("/openapi.json"))["components"]["schemas"]
    health = set(schemas["HealthResponse"]["properties"])
    assert set(ok(http.get("/health"))) <= health and {"lookup_table", "lookup_table_error"} <= health
    assert "identity" in trained and set(trained) <= set(schemas["TrainResult"]["properties"])
    # A /models entry was any object: the fields the contract names (model_type, model_name,
    # total_predictions, hardware_types, software_versions, drifted) were in no schema.
    spec = ok(http.get("/openapi.json"))
    entry = schemas["ModelsResponse"]["properties"]["models"]["items"]
    assert {"model_type", "model_name", "total_predictions", "hardware_types", "software_versions",
            "drifted"} <= set(entry["required"])
    listing = ok(http.get("/models"))
    assert listing["models"] and _schema_problems(listing, {"$ref": "#/components/schemas/ModelsResponse"}, spec) == []
    assert _unnamed(listing, {"$ref": "#/components/schemas/ModelsResponse"}, spec) == []


def test_the_openapi_schema_says_what_a_503_of_ready_means(http):
    # Its one documented error was the 5XX of every route: an internal error, a damaged model
    # file, the data directory gone or the service stopping, not the models still loading.
    spec = ok(http.get("/openapi.json"))
    responses = spec["paths"]["/ready"]["get"]["responses"]
    assert "PREDICTOR_PRELOAD_MODELS" in responses["503"]["description"]
    # Nor did it declare the Retry-After header that a 503 of /ready and a 429 of /train carry
    # (see test_ready_answers_503_until_the_preloaded_models_are_in_memory and the 429 above).
    for answer in (responses["503"], spec["paths"]["/train"]["post"]["responses"]["429"]):
        assert answer["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    assert "data directory" in responses["503"]["description"]
    assert responses["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


def test_the_openapi_schema_documents_the_multipart_forms(http):
    # The routes read their forms themselves: /docs showed /predict/table with no body at all
    # (no way to send its trace file) and /train as JSON only.
    paths = ok(http.get("/openapi.json"))["paths"]
    table = paths["/predict/table/{model_type}/{model_name}/{hardware}/{software_name}/{software_version}"]["post"]
    form = table["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"trace_file", "confidence_level", "table_name", "format", "knots"}
    assert form["required"] == ["trace_file"] and form["properties"]["trace_file"]["format"] == "binary"
    assert form["properties"]["knots"]["default"] == 24 and form["properties"]["format"]["enum"] == ["json", "csv"]
    train = paths["/train"]["post"]["requestBody"]["content"]
    assert set(train) == {"application/json", "multipart/form-data"}
    assert train["multipart/form-data"]["schema"]["required"] == ["config"]
    # Its trace files were additionalProperties alone, which /docs does not show: its form had
    # no way to send one. A form of the parts it names trains.
    trace_file = train["multipart/form-data"]["schema"]["properties"]["trace_file"]
    assert trace_file["format"] == "binary"
    config = {"config": {"model": ident("form"), "traces": "trace_file", "algorithm": "linear"}}
    traces = b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(120, seed=3))
    trained = ok(http.post("/train", files={"config": ("c.json", orjson.dumps(config)), "trace_file": ("t.jsonl", traces)}))
    assert trained["version"] == 1
    ok(http.delete(f"/models/{'/'.join(quote(part, safe='') for part in ident('form').values())}"))


def test_the_openapi_schema_declares_every_path_parameter(http):
    # The identity and a table's name are read from the raw path, so FastAPI declared none of
    # them: invalid OpenAPI (a template's parameters must be declared), and /docs sent
    # "{model_type}" as it is.
    import re

    paths = ok(http.get("/openapi.json"))["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            declared = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            assert declared == re.findall(r"{(\w+)}", path), (method, path)
    accuracy = paths["/models/{model_type}/{model_name}/{hardware}/{software_name}/{software_version}/accuracy"]
    assert [p["name"] for p in accuracy["get"]["parameters"]] == [
        "model_type", "model_name", "hardware", "software_name", "software_version", "version", "recent"]
    assert paths["/tables/{name}"]["delete"]["parameters"][0]["required"] is True
    # An identity part was described as "URL-encoded (NVIDIA%20H100%2080GB%20HBM3, Qwen%2FQwen2.5-7B)":
    # given so to /docs (or a generated client), which encode a value themselves, it was sent
    # as NVIDIA%2520H100... and matched no model.
    part = accuracy["get"]["parameters"][2]["description"]
    assert "%20" not in part and "NVIDIA H100 80GB HBM3" in part and "Qwen/Qwen2.5-7B" in part
    # A job's id is read from the path too: no identity part (it was described as one).
    [job_id] = paths["/train/jobs/{job_id}"]["get"]["parameters"]
    assert job_id["name"] == "job_id" and "identity" not in job_id["description"]
    assert "training job" in job_id["description"]


def test_a_prediction_bodys_fields_are_checked_and_named_in_their_order_since_the_answer_source_was_shared(http):
    # The answer source (lookup_table, lookup_table_name, version) shared with the evaluation
    # (AnswerSource) came first in the prediction bodies: a body wrong in confidence_level
    # (or quantiles) and in lookup_table or version was named for the latter ("field":
    # "lookup_table"), its errors listed in another order, and the OpenAPI schema's
    # properties reordered. They are the order of the bodies before it again.
    order = ["confidence_level", "quantiles", "lookup_table", "lookup_table_name", "version", "deadline_ms"]
    paths = ok(http.get("/openapi.json"))["paths"]
    for kind, base, own in (("single", {"trace": TRACE}, ["trace"]),
                            ("batch", {"trace": [TRACE]}, ["shared_factor", "total_distribution", "trace"]),
                            ("queues", {"queues": {"a": [TRACE]}}, ["shared_factor", "completion_times", "queues"])):
        url = f"/predict/{kind}/{SEGMENTS}"
        for wrong, first, then in (({"lookup_table": "yes", "confidence_level": 2}, "confidence_level", "lookup_table"),
                                   ({"version": 0, "confidence_level": "0.9"}, "confidence_level", "version"),
                                   ({"version": 0, "quantiles": [2]}, "quantiles", "version"),
                                   ({"lookup_table": True, "version": 3, "quantiles": "x"}, "quantiles", "version"),
                                   ({"lookup_table": False, "lookup_table_name": "t.json", "confidence_level": 1},
                                    "confidence_level", "lookup_table_name"),
                                   ({"deadline_ms": -1, "lookup_table_name": ""}, "lookup_table_name", "deadline_ms")):
            body = failed(http.post(url, json={**base, **wrong}), 422)
            assert body["field"] == first, (kind, wrong, body)
            assert body["message"].startswith(f"{first}: ") and f"; {then}: " in body["message"], (kind, body)
        schema = paths[f"/predict/{kind}/{{model_type}}/{{model_name}}/{{hardware}}/{{software_name}}/{{software_version}}"]
        properties = schema["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert list(properties) == order + own, kind
    # The evaluation's traces come before its answer source, as they came before its version.
    evaluate = f"/models/{SEGMENTS}/evaluate"
    assert failed(http.post(evaluate, json={"version": 0, "traces": []}), 422)["field"] == "traces"
    schema = paths["/models/{model_type}/{model_name}/{hardware}/{software_name}/{software_version}/evaluate"]
    properties = schema["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert list(properties) == ["traces", "lookup_table", "lookup_table_name", "version"]


def test_the_openapi_schema_bounds_the_accuracy_recent_as_the_service_does(http, trained):
    # It said any integer: /docs' or a generated client's ?recent=10000 followed the schema and
    # was a 422 ("recent must be between 0 and 5,000").
    paths = ok(http.get("/openapi.json"))["paths"]
    accuracy = paths["/models/{model_type}/{model_name}/{hardware}/{software_name}/{software_version}/accuracy"]["get"]
    recent = next(p["schema"] for p in accuracy["parameters"] if p["name"] == "recent")
    low, high = recent["minimum"], recent["maximum"]
    assert (low, high, recent["default"]) == (0, 5000, 200)
    for inside in (low, high):
        assert "recent" in ok(http.get(f"/models/{SEGMENTS}/accuracy?recent={inside}"))
    for outside in (low - 1, high + 1):
        assert failed(http.get(f"/models/{SEGMENTS}/accuracy?recent={outside}"), 422, "recent must be")["field"] == "recent"


def test_every_model_s_accuracy_in_one_answer_is_each_model_s_own(http, trained):
    # The dashboard asked for each model's accuracy on its own, one request a model (1,003
    # requests for 1,000 models): one answer holds every model's, as its own route answers it.
    train_json(http, ident("everyone"))
    ok(http.post("/observe", json={"model": IDENTITY, "traces": [{**TRACE, "runtime_ms": 1200.0}] * 3}))
    listed = [m for g in ok(http.get("/models"))["models"] for m in g["models"]]
    everyone = ok(http.get("/models/accuracy?recent=2"))["models"]
    assert sorted(a["model_key"] for a in everyone) == sorted(m["key"] for m in listed) and len(listed) >= 2
    for m in listed:
        path = "/".join(quote(m[k], safe="") for k in IDENTITY)
        own = ok(http.get(f"/models/{path}/accuracy?recent=2"))
        assert next(a for a in everyone if a["model_key"] == m["key"]) == {
            k: v for k, v in own.items() if k not in ("status", "retraining")}
    assert len(next(a for a in everyone if a["model_key"] == KEY)["recent"]["runtime_ms"]) == 2
    assert ok(http.get("/models/accuracy"))["models"][0]["recent"]["levels"]  # (200 by default)
    for outside in (-1, 5001):
        assert failed(http.get(f"/models/accuracy?recent={outside}"), 422, "recent must be")["field"] == "recent"
    assert failed(http.get("/models/accuracy?recnt=2"), 422)["field"] == "recnt"


def _schema_problems(value, schema: dict, spec: dict, at: str = "") -> list[str]:
    """Where ``value`` breaks ``schema``: the JSON Schema (2020-12) that FastAPI and pydantic
    write, enough of it to check answers against /openapi.json with no validator installed."""
    if "$ref" in schema:
        _, _, name = schema["$ref"].rpartition("/")
        return _schema_problems(value, spec["components"]["schemas"][name], spec, at)
    if "anyOf" in schema:
        tries = [_schema_problems(value, option, spec, at) for option in schema["anyOf"]]
        return [] if [] in tries else [f"{at}: {value!r:.80} is none of anyOf"]
    if "const" in schema and value != schema["const"]:
        return [f"{at}: {value!r:.80} is not {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r:.80} is not one of {schema['enum']}"]
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
             "integer": int, "number": (int, float)}
    kind = schema.get("type")
    if kind is not None and (not isinstance(value, kinds[kind]) or (kind in ("integer", "number")
                                                                    and isinstance(value, bool))):
        return [f"{at}: {value!r:.80} is not of type {kind}"]
    problems = []
    bounds = {"minItems": (list, len, "<"), "maxItems": (list, len, ">"), "minLength": (str, len, "<"),
              "maxLength": (str, len, ">"), "minProperties": (dict, len, "<"), "maxProperties": (dict, len, ">"),
              "minimum": ((int, float), float, "<"), "maximum": ((int, float), float, ">"),
              "exclusiveMinimum": ((int, float), float, "<="), "exclusiveMaximum": ((int, float), float, ">=")}
    for keyword, (kind, measure, beyond) in bounds.items():
        if keyword in schema and isinstance(value, kind) and not isinstance(value, bool):
            size, limit = measure(value), schema[keyword]
            if {"<": size < limit, ">": size > limit, "<=": size <= limit, ">=": size >= limit}[beyond]:
                problems.append(f"{at}: {value!r:.80} breaks {keyword} {limit}")
    if isinstance(value, dict):
        problems += [f"{at}: {name!r} is required" for name in schema.get("required", []) if name not in value]
        if "propertyNames" in schema:
            problems += [p for name in value for p in _schema_problems(name, schema["propertyNames"], spec, f"{at} name")]
        properties, others = schema.get("properties", {}), schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                problems += _schema_problems(item, properties[name], spec, f"{at}.{name}")
            elif others is False:
                problems.append(f"{at}: {name!r} is not a property")
            elif isinstance(others, dict):
                problems += _schema_problems(item, others, spec, f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += _schema_problems(item, schema["items"], spec, f"{at}[{i}]")
    if isinstance(value, list) and schema.get("uniqueItems") and len(set(map(repr, value))) < len(value):
        problems.append(f"{at}: {value!r:.80} breaks uniqueItems")
    return problems


def _undocumented(r: httpx.Response, spec: dict) -> list[str]:
    """How the answer ``r`` differs from what ``spec`` (/openapi.json) says of its route: a status
    code it does not list (nor its range, ``4XX``), a media type, a body its schema refuses."""
    import re

    method, path = r.request.method.lower(), r.request.url.raw_path.decode().split("?")[0]
    where = f"{method.upper()} {path} -> {r.status_code}"
    for template, operations in spec["paths"].items():
        if re.fullmatch(re.sub(r"{\w+}", "[^/]+", template), path) and method in operations:
            responses = operations[method]["responses"]
            break
    else:
        return [f"{where}: no such operation"]
    key = next((k for k in (str(r.status_code), f"{r.status_code // 100}XX", "default") if k in responses), None)
    if key is None:
        return [f"{where}: not among {sorted(responses)}"]
    media = r.headers.get("content-type", "").split(";")[0]
    content = responses[key].get("content", {})
    if media not in content:
        return [f"{where}: {media} is not among {sorted(content)}"]
    if media != "application/json":
        return []
    return [f"{where}: {problem}" for problem in _schema_problems(r.json(), content[media]["schema"], spec)]


def test_every_answer_is_the_one_the_openapi_schema_documents(http, trained):
    # Errors were documented nowhere but a 422 in FastAPI's own shape ({"detail": [{"loc", ...}]}),
    # which the service never sends: a 404, a 409 or a 413 was not in the schema at all, nor a
    # 202 of ?background=true; /metrics was said to answer JSON, and a CSV table too.
    spec = ok(http.get("/openapi.json"))
    trace = {"trace": TRACE}
    table = {"trace_file": ("t.jsonl", b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(20, seed=5)))}
    observed = {"model": IDENTITY, "traces": [{**TRACE, "runtime_ms": 1200.0}, {"input_tokens": 3}]}
    other = ident("openapi")
    train_json(http, other)
    answers = [
        http.get("/health"), http.get("/ping"), http.get("/cache/stats"), http.post("/cache/clear"),
        http.post("/cache/clear", json={"x": 1}), http.get("/models"), http.get(f"/models/{SEGMENTS}"),
        http.get("/models/*/*/*/*/*"), http.get("/models/llm/nope/x/y/z"), http.get(f"/models/{SEGMENTS}/versions/1"),
        http.get(f"/models/{SEGMENTS}/versions/99"), http.get(f"/models/{SEGMENTS}/versions/0"),
        http.post(f"/predict/single/{SEGMENTS}", json=trace),
        http.post(f"/predict/single/{SEGMENTS}", json={"trace": {**TRACE, "elapsed_ms": 5.0}}),
        http.post(f"/predict/single/{SEGMENTS}", json={"trace": {"input_tokens": 3}}),
        http.post(f"/predict/single/{SEGMENTS}", content=b"{", headers={"content-type": "application/json"}),
        http.post(f"/predict/single/{SEGMENTS}", json={**trace, "version": 99}),
        http.post("/predict/single/*/*/*/*/*", json=trace),
        http.post(f"/predict/single/{SEGMENTS}", content=b"{}", headers={"content-encoding": "gzip"}),
        http.post(f"/predict/batch/{SEGMENTS}", json={"trace": [TRACE, {"input_tokens": 3}], "quantiles": [0.5, 0.9]}),
        http.post(f"/predict/batch/{SEGMENTS}", json={"trace": []}),
        http.post(f"/predict/batch/{SEGMENTS}", json={"trace": [{"input_tokens": 3}]}),
        http.post(f"/predict/batch/{SEGMENTS}", json={"trace": [TRACE], "total_distribution": False}),
        http.post(f"/predict/queues/{SEGMENTS}", json={"queues": {"a": [TRACE], "b": [], "c": [{"x": 1}]}}),
        http.post(f"/predict/queues/{SEGMENTS}", json={"queues": {}}),
        http.post("/observe", json=observed), http.post("/observe", json={**observed, "traces": [{"x": 1}]}),
        http.post("/observe", json={**observed, "model": other | {"model_name": "nope"}}),
        http.get(f"/models/{SEGMENTS}/accuracy"), http.get(f"/models/{SEGMENTS}/accuracy?recent=-1"),
        http.get("/models/accuracy"), http.get("/models/accuracy?recent=-1"),
        http.post(f"/models/{SEGMENTS}/retrain", json={"x": 1}),
        http.post("/train?background=true", json={"config": {}}), http.post("/train", json={"config": {}}),
        http.post("/train", headers={"content-type": "multipart/form-data"}, content=b"junk"),
        http.get("/train/jobs/nope"),
        http.post(f"/predict/table/{SEGMENTS}", files=table, data={"table_name": "o.json"}),
        http.post(f"/predict/table/{SEGMENTS}", files=table, data={"table_name": "o.csv", "format": "csv"}),
        http.post(f"/predict/table/{SEGMENTS}", files=table, data={"confidence_level": "2"}),
        http.post("/predict/table/*/*/*/*/*", files=table),
        http.post(f"/predict/single/{SEGMENTS}", json={**trace, "lookup_table": True, "lookup_table_name": "o.json"}),
        http.post(f"/predict/single/{SEGMENTS}", json={**trace, "lookup_table": True, "lookup_table_name": "x.json"}),
        http.get("/tables"), http.get("/tables/o.json"), http.get("/tables/o.csv"), http.get("/tables/x.txt"),
        http.delete("/tables/o.csv"), http.delete("/tables/o.csv"), http.get("/metrics"), http.get("/dashboard"),
        http.delete(f"/models/{'/'.join(other.values())}/versions/9"), http.delete("/models/*/*/*/*/*"),
        http.delete(f"/models/{'/'.join(other.values())}"),
    ]
    job = next(r for r in answers if r.status_code == 202).json()["job_id"]
    answers.append(http.get(f"/train/jobs/{job}"))
    answers.append(http.post(f"/models/{SEGMENTS}/retrain"))
    assert {r.status_code for r in answers} >= {200, 202, 400, 404, 409, 415, 422}
    assert [problem for r in answers for problem in _undocumented(r, spec)] == []
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def _unnamed(value, schema: dict, spec: dict, at: str = "") -> list[str]:
    """The fields ``value`` (an answer) holds that ``schema`` (of /openapi.json) does not name,
    at any depth: a generated client gives them untyped, and the Python client's models too."""
    if "$ref" in schema:
        return _unnamed(value, spec["components"]["schemas"][schema["$ref"].rpartition("/")[2]], spec, at)
    if "anyOf" in schema:
        return [p for option in schema["anyOf"] if option.get("type") != "null" or value is None
                for p in _unnamed(value, option, spec, at)]
    found = []
    if isinstance(value, dict) and schema.get("type") == "object":
        properties, others = schema.get("properties", {}), schema.get("additionalProperties")
        for name, item in value.items():
            if name in properties:
                found += _unnamed(item, properties[name], spec, f"{at}.{name}")
            elif isinstance(others, dict):
                found += _unnamed(item, others, spec, f"{at}.{name}")
            elif properties:  # (an object of any fields, dict[str, Any], names none)
                found.append(f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        found += [p for i, item in enumerate(value) for p in _unnamed(item, schema["items"], spec, f"{at}[{i}]")]
    return found


def _answer_schema(spec: dict, route: str) -> dict:
    operation = next(ops["post"] for path, ops in spec["paths"].items() if path.startswith(f"/{route}/"))
    return operation["responses"]["200"]["content"]["application/json"]["schema"]


def test_the_openapi_schema_names_every_field_of_a_lookup_tables_answers(http, trained):
    # A table's answers held fields the schema (and the client's models) did not name, which the
    # README documents: each result's table, match, distance and stale, a batch's and a queue
    # answer's source and table, a batch's total_method.
    spec = ok(http.get("/openapi.json"))
    traces = make_llm_traces(10, seed=9)
    table = {"trace_file": ("t.jsonl", b"".join(orjson.dumps(t) + b"\n" for t in traces))}
    ok(http.post(f"/predict/table/{SEGMENTS}", files=table, data={"table_name": "named.json"}))
    source = {"lookup_table": True, "lookup_table_name": "named.json"}
    answers = {
        "predict/single": ok(http.post(SINGLE, json={"trace": TRACE, **source})),
        "predict/batch": ok(http.post(BATCH, json={"trace": [traces[0], TRACE, {"x": "y"}], **source})),
        "predict/queues": ok(http.post(f"/predict/queues/{SEGMENTS}", json={"queues": {"a": [TRACE, traces[1]]},
                                                                           "completion_times": True, **source})),
    }
    ok(http.delete("/tables/named.json"))
    assert {r["match"] for r in answers["predict/batch"]["results"][:2]} == {"exact", "nearest"}
    assert answers["predict/batch"]["total_method"] == "convolution" and answers["predict/queues"]["table"] == "named.json"
    assert {route: _unnamed(answer, _answer_schema(spec, route), spec) for route, answer in answers.items()} == {
        route: [] for route in answers}
    for route, answer in answers.items():
        assert _schema_problems(answer, _answer_schema(spec, route), spec) == []


def test_the_openapi_schema_documents_the_409_of_a_training_whose_model_is_deleted_meanwhile(http):
    # A training whose model is deleted while it stores its version answers 409 (the registry's
    # VersionConflict, see test_registry's test_a_delete_while_a_retraining_stores_its_version_wins;
    # the README: "its writer gets a 409"), which /openapi.json did not list among /train's answers.
    responses = ok(http.get("/openapi.json"))["paths"]["/train"]["post"]["responses"]
    assert "deleted while this training stored its version" in responses["409"]["description"]


def test_every_operation_id_is_named_after_what_it_does(http):
    # The three prediction routes' were their documenting wrapper's name ("documented_predict_single_
    # _model_type_..."), and so were a generated client's functions and request models.
    spec = ok(http.get("/openapi.json"))
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(set(ids)) == len(ids) and not [i for i in ids if i.startswith("documented")]
    predictions = {path.split("/")[2]: ops["post"]["operationId"] for path, ops in spec["paths"].items()
                   if path.startswith("/predict/")}
    assert all(operation_id.startswith(f"predict_{kind}_predict_{kind}_") for kind, operation_id in predictions.items())
    assert sorted(predictions) == ["batch", "queues", "single", "table"]


def test_a_request_body_is_refused_where_the_openapi_schema_says_and_only_there(http, trained):
    # The bounds the service checks were not in the schema: quantile levels (0 to 1, 1 to 200 of
    # them), a queue's name (1 to 200 characters), a blank lookup_table_name or table_name. A
    # generated client's request that followed the schema was a 422.
    spec = ok(http.get("/openapi.json"))
    paths = spec["paths"]

    def body_schema(route: str) -> dict:
        operation = next(ops["post"] for path, ops in paths.items() if path.startswith(f"/{route}/"))
        return operation["requestBody"]["content"]["application/json"]["schema"]

    single, queues = body_schema("predict/single"), body_schema("predict/queues")
    train = spec["components"]["schemas"]["TrainConfig"]
    cases = [(single, "predict/single", {"trace": TRACE, **extra}) for extra in (
        {"quantiles": [0.5, 0.9]}, {"quantiles": [0.1] * 200}, {"quantiles": []}, {"quantiles": [0.5, 1.0]},
        {"quantiles": [0.0]}, {"quantiles": [0.1] * 201}, {"lookup_table": True, "lookup_table_name": ""})]
    cases += [(queues, "predict/queues", {"queues": {name: [TRACE]}}) for name in ("a", "q" * 200, "", "q" * 201)]
    answers = [(schema, body, http.post(f"/{route}/{SEGMENTS}", json=body)) for schema, route, body in cases]
    for schema, body, r in answers:
        problems = _schema_problems(body, schema, spec)
        assert (r.status_code == 422) == bool(problems), (body, r.status_code, r.text[:200], problems)
    assert [r.status_code for _, _, r in answers].count(422) == 7
    for levels in ([], [1.5], [0.5] * 201):
        assert _schema_problems({"traces": "t.jsonl", "quantiles": levels}, train, spec)
    # Nor were a config's: traces empty, group_by empty, naming a key twice or one not of the
    # identity, features naming one twice.
    refused = [{"traces": []}, {"traces": ""}, {"traces": "t.jsonl", "group_by": []},
               {"traces": "t.jsonl", "group_by": ["hardware", "hardware"]}, {"traces": "t.jsonl", "group_by": ["gpu"]},
               {"traces": "t.jsonl", "features": ["input_tokens", "input_tokens"]}]
    for config in refused:
        assert _schema_problems(config, train, spec), config
        answer = http.post("/train", json={"config": {"model": IDENTITY, **config}})
        assert answer.status_code == 422 and answer.json()["field"].startswith("config."), (config, answer.text)
    assert _schema_problems({"traces": [TRACE], "group_by": ["hardware"], "features": ["input_tokens"]}, train, spec) == []
    table = next(ops["post"] for path, ops in paths.items() if path.startswith("/predict/table/"))
    form = table["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert _schema_problems("", form["properties"]["table_name"], spec)
    refused = http.post(f"/predict/table/{SEGMENTS}", files={"trace_file": ("t.jsonl", orjson.dumps(TRACE))},
                        data={"table_name": ""})
    assert refused.status_code == 422


def test_a_deadline_is_refused_where_the_openapi_schema_says_and_its_answers_are_named_there(http, trained):
    spec = ok(http.get("/openapi.json"))
    ops = {route: next(o["post"] for path, o in spec["paths"].items() if path.startswith(f"/predict/{route}/"))
           for route in ("single", "batch", "queues")}
    schema = ops["single"]["requestBody"]["content"]["application/json"]["schema"]
    for deadline, refused in ((1500.0, False), (1, False), (None, False), (0, True), (-2.5, True), ("5", True),
                              (True, True)):
        body = {"trace": TRACE, "deadline_ms": deadline}
        r = http.post(SINGLE, json=body)
        assert (r.status_code == 422) == refused == bool(_schema_problems(body, schema, spec)), (deadline, r.text)
        if refused:
            assert r.json()["field"] == "deadline_ms"
    answers = {"single": ok(http.post(SINGLE, json={"trace": TRACE, "deadline_ms": 1500.0})),
               "batch": ok(http.post(f"/predict/batch/{SEGMENTS}", json={"trace": [TRACE, TRACE], "deadline_ms": 1500.0})),
               "queues": ok(http.post(f"/predict/queues/{SEGMENTS}", json={"queues": {"a": [TRACE], "idle": []},
                                                                            "deadline_ms": 1500.0}))}
    assert 0 < answers["single"]["results"]["deadline_probability"] < 1
    assert answers["batch"]["total_deadline_probability"] <= answers["batch"]["results"][0]["deadline_probability"]
    assert answers["queues"]["queues"]["idle"]["total_deadline_probability"] == 1.0
    for route, answer in answers.items():
        response = ops[route]["responses"]["200"]["content"]["application/json"]["schema"]
        assert _schema_problems(answer, response, spec) == []
    schemas = spec["components"]["schemas"]
    assert "deadline_probability" in schemas["PredictionResult"]["properties"]
    assert "total_deadline_probability" in schemas["BatchPredictionResponse"]["properties"]
    assert "total_deadline_probability" in schemas["QueueTotal"]["properties"]


def test_a_single_prediction_with_a_deadline_is_a_cache_hit_of_the_answer_without_one(http, trained):
    trace = {"input_tokens": 1777, "output_tokens": 333}  # this test's own: its cache entry is made here
    plain = ok(http.post(SINGLE, json={"trace": trace}))["results"]
    deadline = plain["quantile_predictions"][1]
    beside = ok(http.post(BATCH, json={"trace": [trace, TRACE], "deadline_ms": deadline}))["results"][0]
    before = ok(http.get("/cache/stats"))
    answers = [ok(http.post(SINGLE, json={"trace": trace, "deadline_ms": deadline}))["results"] for _ in range(2)]
    after = ok(http.get("/cache/stats"))
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (2, 0)
    assert after["entries"] == before["entries"]
    # The quantiles of the answer without a deadline, the probability of the batch's answer.
    for got in answers:
        assert got == {**plain, "deadline_probability": beside["deadline_probability"]}
    assert got["deadline_probability"] == pytest.approx(plain["quantiles"][1], abs=1e-6)
    assert ok(http.post(SINGLE, json={"trace": trace}))["results"] == plain


def test_the_openapi_schema_names_every_field_of_an_accuracy_a_retraining_a_table_and_a_job(http):
    # Fields the README documents were in the answers only, not the schema: an accuracy's
    # coverage, pinball loss, ratios and window; a retraining's candidate and its losses; a
    # generated table's rows added, errors and levels; a job's model_key. A generated client
    # gave them as untyped extras.
    spec = ok(http.get("/openapi.json"))
    schemas = spec["components"]["schemas"]
    model = ident("fields")
    train_json(http, model)
    segments = "/".join(quote(part, safe="") for part in model.values())
    observed = [{**t, "runtime_ms": t["runtime_ms"] * 1.3} for t in make_llm_traces(60, seed=7)]
    ok(http.post("/observe", json={"model": model, "traces": observed}))
    accepted = http.post("/train?background=true", json={"config": {"model": ident("fields", software_version="2"),
                                                                     "traces": make_llm_traces(120), "algorithm": "linear"}})
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    table = {"trace_file": ("t.jsonl", b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(20, seed=5)))}
    answers = {"AccuracyResponse": ok(http.get(f"/models/{segments}/accuracy")),
               "RetrainDecision": ok(http.post(f"/models/{segments}/retrain")),
               "TableResult": ok(http.post(f"/predict/table/{segments}", files=table, data={"table_name": "fields.json"})),
               "TrainJob": _job_done(http, job["job_id"])}
    unnamed = {name: sorted(set(answer) - set(schemas[name]["properties"])) for name, answer in answers.items()}
    assert unnamed == {name: [] for name in answers}
    assert "coverage" in answers["AccuracyResponse"] and "candidate" in answers["RetrainDecision"]
    assert answers["TrainJob"]["status"] == "succeeded" and "model_key" in answers["TrainJob"]
    for name, answer in answers.items():
        assert _schema_problems(answer, {"$ref": f"#/components/schemas/{name}"}, spec) == []
    ok(http.delete("/tables/fields.json"))
    for stored in (model, ident("fields", software_version="2")):
        ok(http.delete(f"/models/{'/'.join(quote(part, safe='') for part in stored.values())}"))


def _job_done(http, job_id: str) -> dict:
    for _ in range(600):
        job = ok(http.get(f"/train/jobs/{job_id}"))
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']}")


def test_the_openapi_schema_describes_every_json_answer(http):
    # Thirteen operations' answers were documented as any JSON at all ({}): /observe's, a job's,
    # the tables', an accuracy report's... (their bodies are checked against it in the test above).
    spec = ok(http.get("/openapi.json"))
    blank = [(method.upper(), path) for path, operations in spec["paths"].items()
             for method, operation in operations.items() for answer in operation["responses"].values()
             if answer["content"].get("application/json", {"schema": None})["schema"] == {}]
    assert blank == []
    job = spec["components"]["schemas"]["TrainJob"]
    assert job["required"] == ["job_id", "status", "submitted_at"]
    assert job["properties"]["status"]["enum"] == ["queued", "running", "succeeded", "failed"]


def test_no_field_of_the_openapi_schema_is_typed_null_alone(http):
    # TableFailure's path was {"type": "null"}: valid JSON Schema, but openapi-generator's python
    # client stopped on it ("Codegen Property not yet supported in getPydanticType").
    spec = ok(http.get("/openapi.json"))
    null_alone = [(name, field) for name, schema in spec["components"]["schemas"].items()
                  for field, prop in schema.get("properties", {}).items() if prop.get("type") == "null"]
    assert null_alone == []
    failure = spec["components"]["schemas"]["TableFailure"]
    assert "path" in failure["required"] and {"type": "null"} in failure["properties"]["path"]["anyOf"]


def test_every_reference_in_the_openapi_schema_leads_to_a_schema_it_holds(http):
    # /train's and /observe's bodies (which the routes read themselves) named TrainConfig,
    # ModelPartsBody and ModelIdentityBody among the components, which held none of them.
    import re

    text = http.get("/openapi.json").text
    spec = orjson.loads(text)
    named = set(re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', text))
    assert {"TrainConfig", "ModelPartsBody", "ModelIdentityBody", "ErrorResponse"} <= named
    assert named <= set(spec["components"]["schemas"]) and "$defs" not in text
    headers = set(re.findall(r'"\$ref":"#/components/headers/([^"]+)"', text))
    assert headers == {"X-Request-ID"} and headers <= set(spec["components"]["headers"])
    assert not re.findall(r'"\$ref":"(?!#/components/(schemas|headers)/)', text)


def test_the_openapi_schema_documents_the_401_of_every_route_that_needs_the_key(tmp_path):
    from swarmpilot_predictor.api import create_app
    from swarmpilot_predictor.settings import PredictorSettings

    app = create_app(PredictorSettings(data_dir=tmp_path / "data", api_key=API_KEY))

    async def scenario() -> tuple[dict, list[httpx.Response]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://predictor") as http:
            spec = (await http.get("/openapi.json")).json()
            secured = [(m, p) for p, ops in spec["paths"].items() for m, op in ops.items() if op.get("security")]
            return spec, [await http.request(m, p.replace("{version}", "1").replace("{name}", "t.json"))
                          for m, p in secured]

    spec, refused = asyncio.run(scenario())
    assert len(refused) == 8 and {r.status_code for r in refused} == {401}
    assert [problem for r in refused for problem in _undocumented(r, spec)] == []
    assert all(r.headers["www-authenticate"] == "Bearer" for r in refused)
    secured = [op["responses"] for ops in spec["paths"].values() for op in ops.values() if op.get("security")]
    assert all("WWW-Authenticate" in responses["401"]["headers"] for responses in secured)


def test_the_openapi_schema_documents_the_413_of_every_route_sent_too_large_a_body(tmp_path):
    # A body over PREDICTOR_MAX_UPLOAD_MB is a 413 on any route, those that read none too (GET
    # /health, /models, /tables...), whose documented answers did not list it.
    from swarmpilot_predictor.api import create_app
    from swarmpilot_predictor.settings import PredictorSettings

    app = create_app(PredictorSettings(data_dir=tmp_path / "data", max_upload_mb=0.001))
    unlimited = create_app(PredictorSettings(data_dir=tmp_path / "other", max_upload_mb=0))

    async def scenario() -> tuple[dict, list[httpx.Response], dict]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://predictor") as http:
            spec = (await http.get("/openapi.json")).json()
            reads = [p.replace("{version}", "1").replace("{name}", "t.json").replace("{job_id}", "j")
                     for p, ops in spec["paths"].items() if "get" in ops]
            refused = [await http.request("GET", p, content=b"x" * 2000) for p in reads]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=unlimited), base_url="http://predictor") as http:
            return spec, refused, (await http.get("/openapi.json")).json()

    spec, refused, without_limit = asyncio.run(scenario())
    assert len(refused) == 14 and {r.status_code for r in refused} == {413}
    assert [problem for r in refused for problem in _undocumented(r, spec)] == []
    assert "413" not in without_limit["paths"]["/health"]["get"]["responses"]


def test_without_an_api_key_no_route_asks_for_one(http):
    spec = ok(http.get("/openapi.json"))
    assert "securitySchemes" not in spec.get("components", {})
    assert not [p for p, ops in spec["paths"].items() for op in ops.values() if op.get("security")]


def test_a_service_keeps_the_newest_versions_it_is_told_to(tmp_path):
    # Trainings run in the training worker process; the service deletes the oldest versions
    # once it hears of the new one, background jobs included.
    from swarmpilot_predictor.client import PredictorClient

    with run_server(tmp_path / "data", extra_env={"PREDICTOR_KEEP_VERSIONS": "2"}) as server, \
            PredictorClient(server.url) as client:
        for seed in range(3):
            client.train({"model": IDENTITY, "traces": make_llm_traces(120, seed=seed), "algorithm": "linear"})
        job = client.train_background({"model": IDENTITY, "traces": make_llm_traces(120, seed=9), "algorithm": "linear"})
        assert client.wait_for_job(job["job_id"]).version == 4
        assert client.get_model(IDENTITY)["versions"] == [3, 4]
        from swarmpilot_predictor.client import PredictorClientError

        with pytest.raises(PredictorClientError) as gone:
            client.get_model(IDENTITY, version=2)
        assert gone.value.status_code == 404


def test_a_data_directory_that_goes_away_is_a_503_naming_it_until_it_is_back(tmp_path):
    # Deleted, or its volume unmounted, under a running service: every request was a 500
    # "internal error: FileNotFoundError" with two tracebacks, and /health said healthy.
    import shutil

    from swarmpilot_predictor.client import PredictorClient, PredictorClientError

    data, aside = tmp_path / "data", tmp_path / "aside"
    task = {"input_tokens": 100, "output_tokens": 50}
    with run_server(data) as server, PredictorClient(server.url, retries=0) as client:
        client.train({"model": IDENTITY, "traces": make_llm_traces(120), "algorithm": "linear"})
        before = client.predict_single(IDENTITY, task).results.quantile_predictions
        shutil.move(data, aside)
        traces = make_llm_traces(120, seed=1)
        for call in (client.health, client.list_models, client.list_tables, lambda: client.predict_single(IDENTITY, task),
                     # Nor is anything written: a training stored version 1 in folders made again.
                     lambda: client.train({"model": IDENTITY, "traces": traces, "algorithm": "linear"}),
                     lambda: client.train_background({"model": IDENTITY, "traces": traces, "algorithm": "linear"}),
                     lambda: client.observe(IDENTITY, traces),
                     lambda: client.generate_table(IDENTITY, b'{"input_tokens": 1, "output_tokens": 2}\n')):
            with pytest.raises(PredictorClientError) as err:
                call()
            assert err.value.status_code == 503, err.value.message
            assert err.value.message.startswith(f"the data directory's folder {data} is gone (deleted, or its volume")
        assert not data.exists()
        shutil.move(aside, data)
        assert client.health().status == "healthy"
        assert client.predict_single(IDENTITY, task).results.quantile_predictions == before
        assert client.get_model(IDENTITY)["versions"] == [1]
        # Job records are an operator's to clear: their folder gone is no outage.
        shutil.rmtree(data / "jobs")
        assert client.health().status == "healthy"
        assert client.train({"model": IDENTITY, "traces": traces, "algorithm": "linear"}).version == 2


def test_a_write_whose_folder_went_while_its_body_came_is_the_503(tmp_path):
    # The observations folder went while the body was sent: the outage's 503, whichever step
    # finds it (the route's check, or a write that fails after it: a 500 StorageError once),
    # and the folder is not made again.
    import shutil

    data = tmp_path / "data"
    traces = make_llm_traces(50, seed=3)
    sent = orjson.dumps({"model": IDENTITY, "traces": traces})

    def body():
        yield sent[:100]
        shutil.rmtree(data / "observations")
        yield sent[100:]

    trained_in_process(data, {"model": IDENTITY, "traces": make_llm_traces(120), "algorithm": "linear"})
    with run_server(data) as server:
        r = httpx.post(f"{server.url}/observe", content=body(), timeout=60, headers={"content-type": "application/json"})
        assert r.status_code == 503, r.text
        assert r.json()["message"].startswith(f"the data directory's folder {data / 'observations'} is gone")
        assert not (data / "observations").exists()


def test_what_a_gone_data_directory_holds_is_unknown_not_absent(tmp_path):
    # A table this process had not loaded yet, a job another process held: both were 404s
    # while the directory was gone, which a client reads as for good (wait_for_job gave up).
    import shutil

    from swarmpilot_predictor.client import PredictorClient, PredictorClientError

    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    data, aside = tmp_path / "data", tmp_path / "aside"
    task = {"input_tokens": 1, "output_tokens": 2}
    earlier = PredictorService(PredictorSettings(data_dir=data))  # another process, before the server's start
    try:
        earlier.train(TrainConfig.model_validate({"model": IDENTITY, "traces": make_llm_traces(120), "algorithm": "linear"}))
        (tmp_path / "t.jsonl").write_bytes(b'{"input_tokens": 1, "output_tokens": 2}\n')
        earlier.generate_table(IdentityPattern.from_parts(IDENTITY), tmp_path / "t.jsonl", table_name="t1.json")
        job_id, done = earlier.jobs.submit(TrainConfig.model_validate(
            {"model": IDENTITY, "traces": make_llm_traces(120, seed=1), "algorithm": "linear"}))
        done.result(timeout=120)
        job = {"job_id": job_id}
    finally:
        earlier.close()
    with run_server(data) as server, PredictorClient(server.url, retries=0) as client:
        shutil.move(data, aside)
        for call in (lambda: client.predict_single(IDENTITY, task, lookup_table_name="t1.json"),
                     lambda: client.train_job(job["job_id"]), lambda: client.download_table("t1.json")):
            with pytest.raises(PredictorClientError) as err:
                call()
            assert err.value.status_code == 503, err.value.message
            assert err.value.message.startswith(f"the data directory's folder {data} is gone")
        shutil.move(aside, data)
        assert client.train_job(job["job_id"])["status"] == "succeeded"
        assert client.predict_single(IDENTITY, task, lookup_table_name="t1.json").results.source == "lookup_table"
        with pytest.raises(PredictorClientError) as err:  # what is not there is a 404 again
            client.train_job("0123456789abcdef")
        assert err.value.status_code == 404


def test_a_gzip_upload_past_the_limit_is_refused_quoting_the_limit_as_set(tmp_path):
    # The expansion check quoted the limit from its bytes (0.0500002 MB for 0.05), where the
    # request body's 413 quotes the setting.
    from swarmpilot_predictor.errors import PredictorError
    from swarmpilot_predictor.routes.uploads import _check_expanded_size

    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"input_tokens": 1}\n' * 5000))  # 100,000 bytes expanded
    with pytest.raises(PredictorError) as err:
        _check_expanded_size(path, "t.jsonl.gz", "trace_file", 0.05)  # 52,429 bytes
    assert err.value.status_code == 413 and err.value.field == "trace_file"
    assert "expands to more than 0.05 MB (PREDICTOR_MAX_UPLOAD_MB" in err.value.message
    _check_expanded_size(path, "t.jsonl.gz", "trace_file", 0.1)  # 104,858 bytes: within


def test_a_background_training_of_a_config_that_does_not_validate(http):
    # JSON is validated in the worker: accepted, then the job's error names the field. A
    # multipart config is read before the answer: refused at once.
    r = http.post("/train?background=true", json={"config": {"model": ident("nobody")}})
    assert r.status_code == 202
    job = r.json()["status_url"]
    deadline = time.monotonic() + 60
    while (record := http.get(job).json())["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert record["status"] == "failed"
    assert record["error"]["status_code"] == 422 and record["error"]["field"] == "config.traces"
    r = http.post("/train?background=true", files={"config": ("c.json", orjson.dumps({"model": ident("nobody")}), "x")})
    assert failed(r, 422)["field"] == "config.traces"


def test_evaluate_scores_the_serving_version_over_http(http, trained):
    fresh = make_llm_traces(600, seed=31)
    answer = ok(http.post(f"/models/{SEGMENTS}/evaluate", json={"traces": [*fresh, {"input_tokens": 5}]}))
    assert answer["status"] == "success" and answer["evaluated"] == 600 and answer["version"] >= 1
    assert answer["rejected"] == [{"index": 600, "message": "missing measured 'runtime_ms'"}]
    assert abs(answer["interval_coverage"]["0.9"] - 0.9) < 0.05 and answer["calibration"]["corrected_p_value"] > 1e-4
    slower = [{**t, "runtime_ms": t["runtime_ms"] * 1.5} for t in fresh]
    assert ok(http.post(f"/models/{SEGMENTS}/evaluate", json={"traces": slower}))["calibration"]["corrected_p_value"] < 1e-9
    # Recorded nothing: the accuracy has no observation of these.
    observed = ok(http.get(f"/models/{SEGMENTS}/accuracy"))["observations"]
    ok(http.post(f"/models/{SEGMENTS}/evaluate", json={"traces": fresh}))
    assert ok(http.get(f"/models/{SEGMENTS}/accuracy"))["observations"] == observed


def test_evaluate_refuses_what_it_cannot_score_naming_the_field(http, trained):
    path = f"/models/{SEGMENTS}/evaluate"
    failed(http.post(path, json={"traces": []}), 422, "traces")
    failed(http.post(path, json={"traces": [{"input_tokens": 1}]}), 422, "no usable observation")
    failed(http.post(path, json={"traces": make_llm_traces(5), "version": 1.0}), 422, "version")
    failed(http.post(path, json={"traces": make_llm_traces(5), "version": 0}), 422, "version")
    assert failed(http.post(path, json={"traces": make_llm_traces(5), "version": 999}), 404, "no version 999")["field"] == "version"
    failed(http.post(path, json={"traces": make_llm_traces(5), "lookup_table": True}), 422, "lookup_table")
    failed(http.post(path + "?version=1", json={"traces": make_llm_traces(5)}), 422, "version")
    assert failed(http.post("/models/llm/none/x/y/z/evaluate", json={"traces": make_llm_traces(5)}), 404)["field"] == "identity"
    schema = ok(http.get("/openapi.json"))["paths"]["/models/{model_type}/{model_name}/{hardware}/{software_name}/"
                                                    "{software_version}/evaluate"]["post"]
    assert "traces" in str(schema["requestBody"]) and "200" in schema["responses"]


def test_the_app_factory_says_a_data_directory_it_cannot_make_in_one_line(tmp_path, monkeypatch, capsys):
    # `uvicorn --factory swarmpilot_predictor.api:app_from_env` (the command of a --log-config)
    # printed a StorageError's traceback where `serve` and the seed's entry point say one line.
    from swarmpilot_predictor.api import app_from_env

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PREDICTOR_DATA_DIR", str(tmp_path / "file" / "data"))
    with pytest.raises(SystemExit) as stopped:
        app_from_env()
    assert stopped.value.code == 1
    said = capsys.readouterr().err
    assert said == f"error: cannot use {tmp_path / 'file' / 'data'} as the data directory: cannot create " \
                   f"{tmp_path / 'file' / 'data'} (Not a directory)\n"
