"""Lookup tables over real HTTP: generation, prediction, listing, download, deletion, bad input, clients."""

from __future__ import annotations

import asyncio
import itertools
import gzip
from urllib.parse import quote

import httpx
import orjson
import pytest

from swarmpilot_predictor.client import AsyncPredictorClient, PredictorClient, PredictorClientError
from swarmpilot_predictor.identity import ModelIdentity

from .conftest import IDENTITY, make_llm_traces, metric_value, run_server
from .test_lookup import SEED_TABLE

SEGMENTS = "llm/Qwen%2FQwen2.5-7B/NVIDIA%20H100%2080GB%20HBM3/sglang/0.4.0"
SEED_PATH = "gpt-3.5-turbo/turbo/A100/vllm/0.1.0"
TRACES = make_llm_traces(200, seed=5)


def jsonl(traces) -> bytes:
    return b"\n".join(orjson.dumps(t) for t in traces) + b"\n"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One server with a trained model and a JSON table generated from TRACES over HTTP."""
    data = tmp_path_factory.mktemp("lookup_api") / "data"
    with run_server(data) as srv:
        with PredictorClient(srv.url) as client:
            client.train({"model": IDENTITY, "traces": make_llm_traces(300), "algorithm": "linear"})
        r = httpx.post(f"{srv.url}/predict/table/{SEGMENTS}", files={"trace_file": ("traces.jsonl", jsonl(TRACES))},
                       data={"confidence_level": "0.9", "table_name": "gen.json"}, timeout=60)
        assert r.status_code == 200, r.text
        yield srv, r.json()


def test_generation_answer_and_file(live):
    srv, body = live
    assert body["status"] == "successful" and body["rows"] == len(TRACES) and body["table_name"] == "gen.json"
    assert body["path"] == str((srv.data_dir / "tables" / "gen.json").resolve()) or body["path"].endswith("tables/gen.json")
    records = orjson.loads((srv.data_dir / "tables" / "gen.json").read_bytes())
    assert len(records) == len(TRACES) and records[0]["features"]["output_tokens"] == TRACES[0]["output_tokens"]


def test_single_and_batch_predictions_from_the_table(live):
    srv, _ = live
    url = srv.url
    model = httpx.post(f"{url}/predict/single/{SEGMENTS}", json={"trace": TRACES[3], "confidence_level": 0.9}).json()
    r = httpx.post(f"{url}/predict/single/{SEGMENTS}",
                   json={"trace": TRACES[3], "confidence_level": 0.9, "lookup_table": True, "lookup_table_name": "gen.json"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res["source"] == "lookup_table" and res["match"] == "exact" and res["table"] == "gen.json"
    assert res["quantile_predictions"] == pytest.approx(model["results"]["quantile_predictions"], rel=1e-9)
    assert res["interval"] == pytest.approx(model["results"]["interval"], rel=1e-9)
    assert "source" not in model["results"] or model["results"]["source"] != "lookup_table"

    near = {"input_tokens": TRACES[3]["input_tokens"] + 0.5, "output_tokens": TRACES[3]["output_tokens"]}
    batch = [TRACES[0], near, {"task_id": "t7"}, {"input_tokens": 5}]
    r = httpx.post(f"{url}/predict/batch/{SEGMENTS}",
                   json={"trace": batch, "lookup_table": True, "lookup_table_name": "gen.json", "quantiles": [0.5, 0.9]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x.get("match") for x in body["results"]] == ["exact", "nearest", "task_id", None]
    assert body["results"][3]["status"] == "error" and "output_tokens" in body["results"][3]["message"]
    assert body["summary"] == {**body["summary"], "total": 4, "success": 3, "failed": 1}
    assert body["quantiles"] == [0.5, 0.9] and len(body["total_quantiles"]) == 2
    assert body["expect"] == pytest.approx(sum(x["expect"] for x in body["results"][:3]))
    assert body["source"] == "lookup_table"
    assert body["total_method"] == "convolution"  # (what tables answered before said "normal approximation")
    lean = httpx.post(f"{url}/predict/batch/{SEGMENTS}", json={
        "trace": batch, "lookup_table": True, "lookup_table_name": "gen.json", "quantiles": [0.5, 0.9],
        "total_distribution": False}).json()
    assert (lean["total_quantiles"], lean["total_interval"]) == (None, None)
    assert lean["total_method"] == "convolution"  # as before, without a distribution too
    assert (lean["expect"], lean["error"], lean["results"]) == (body["expect"], body["error"], body["results"])

    # A trace the table cannot answer on the single endpoint: 422 naming the feature.
    r = httpx.post(f"{url}/predict/single/{SEGMENTS}",
                   json={"trace": {"input_tokens": 5}, "lookup_table": True, "lookup_table_name": "gen.json"})
    assert r.status_code == 422 and "output_tokens" in r.json()["message"]


def test_identity_filtering_over_http(live):
    srv, _ = live
    wildcard = "llm/*/*/*/*"
    r = httpx.post(f"{srv.url}/predict/single/{wildcard}",
                   json={"trace": TRACES[0], "lookup_table": True, "lookup_table_name": "gen.json"})
    assert r.status_code == 200 and r.json()["results"]["model_info"]["name"] == "Qwen/Qwen2.5-7B"
    r = httpx.post(f"{srv.url}/predict/single/llm/other/A100/vllm/1",
                   json={"trace": TRACES[0], "lookup_table": True, "lookup_table_name": "gen.json"})
    assert r.status_code == 404 and "no records for llm/other/A100/vllm/1" in r.json()["message"]



def test_a_star_that_matches_two_models_of_a_table_is_a_409_naming_them(live):
    # As for the models: one request, one model. Answered record by record, a queue's
    # total summed A100 tasks of 150 ms and H100 tasks of 2 ms.
    srv, _ = live

    def rec(hardware: str, q: list[float]) -> dict:
        return {"status": "success", "model_type": "gpt-3.5-turbo", "quantiles": [0.25, 0.5, 0.75, 0.99],
                "quantile_predictions": q, "expect": q[1], "error": 1.0,
                "model_info": {"type": "gpt-3.5-turbo", "name": "turbo", "hardware": hardware,
                               "software_name": "vllm", "software_version": "0.1.0"}}

    (srv.data_dir / "tables" / "two-gpus.json").write_bytes(
        orjson.dumps([rec("A100", [100.0, 150.0, 200.0, 500.0]), rec("H100", [1.0, 2.0, 3.0, 4.0])]))
    lookup = {"lookup_table": True, "lookup_table_name": "two-gpus.json"}
    r = httpx.post(f"{srv.url}/predict/batch/gpt-3.5-turbo/*/*/*/*", json={"trace": [{"input_tokens": i} for i in range(10)], **lookup})
    assert r.status_code == 409, r.text
    assert r.json()["candidates"] == ["gpt-3.5-turbo/turbo/A100/vllm/0.1.0", "gpt-3.5-turbo/turbo/H100/vllm/0.1.0"]
    with PredictorClient(srv.url) as client:
        with pytest.raises(PredictorClientError, match="holds 2 models that match gpt-3.5-turbo/\\*") as info:
            client.predict_single(["gpt-3.5-turbo", None, None, None, None], {"input_tokens": 1}, lookup_table=True,
                                  lookup_table_name="two-gpus.json")
        assert info.value.status_code == 409
        # A URL that names the hardware: one model, answered.
        got = client.predict_single(["gpt-3.5-turbo", None, "H100", None, None], {"input_tokens": 1}, lookup_table=True,
                                    lookup_table_name="two-gpus.json")
        assert got.results.quantile_predictions == [1.0, 2.0, 3.0, 4.0]
        # Traces that name the hardware pick the model; traces that name both are a 409.
        one = client.predict_batch(["gpt-3.5-turbo", None, None, None, None], [{"hardware": "A100"}] * 3,
                                   lookup_table=True, lookup_table_name="two-gpus.json")
        assert one.expect == 450.0
        with pytest.raises(PredictorClientError, match="the traces name different models") as info:
            client.predict_batch(["gpt-3.5-turbo", None, None, None, None], [{"hardware": "A100"}, {"hardware": "H100"}],
                                 lookup_table=True, lookup_table_name="two-gpus.json")
        assert info.value.status_code == 409

def test_csv_generation_list_download_delete(live):
    srv, _ = live
    gz = gzip.compress(orjson.dumps(TRACES[:50]))
    r = httpx.post(f"{srv.url}/predict/table/{SEGMENTS}", files={"trace_file": ("t.json.gz", gz)},
                   data={"confidence_level": "0.95", "format": "csv"})
    assert r.status_code == 200, r.text
    name, r_knots = r.json()["table_name"], r.json()["knot_levels"]
    assert name.endswith(".csv") and r.json()["rows"] == 50 and 0 < len(r_knots) <= 24
    listing = httpx.get(f"{srv.url}/tables").json()
    assert listing["status"] == "success" and listing["default"] is None
    entry = {t["name"]: t for t in listing["tables"]}[name]
    assert entry["format"] == "csv" and entry["size_bytes"] > 0
    down = httpx.get(f"{srv.url}/tables/{name}")
    assert down.status_code == 200 and down.headers["content-type"].startswith("text/csv")
    assert down.content == (srv.data_dir / "tables" / name).read_bytes()
    assert down.headers["content-length"] == str(len(down.content))
    assert down.headers["content-disposition"] == f'attachment; filename="{name}"'
    head = httpx.head(f"{srv.url}/tables/{name}")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(down.content))
    r = httpx.post(f"{srv.url}/predict/single/{SEGMENTS}",
                   json={"trace": TRACES[10], "lookup_table": True, "lookup_table_name": name})
    assert r.json()["results"]["match"] == "exact"
    # Loaded now, the listing says which levels its records store, and their knots.
    entry = {t["name"]: t for t in httpx.get(f"{srv.url}/tables").json()["tables"]}[name]
    assert entry["quantiles"] == [[0.25, 0.5, 0.75, 0.99]] and entry["knot_levels"] == [r_knots]
    assert httpx.delete(f"{srv.url}/tables/{name}").json() == {"status": "success", "deleted": name}
    assert httpx.get(f"{srv.url}/tables/{name}").status_code == 404
    r = httpx.post(f"{srv.url}/predict/single/{SEGMENTS}",
                   json={"trace": TRACES[10], "lookup_table": True, "lookup_table_name": name})
    assert r.status_code == 404 and "not found" in r.json()["message"] and r.json()["field"] == "lookup_table_name"
    assert httpx.get(f"{srv.url}/tables/{name}").json()["field"] == "name"
    again = httpx.delete(f"{srv.url}/tables/{name}")  # a 404 naming the field, as GET's
    assert again.status_code == 404 and again.json()["field"] == "name" and "not found" in again.json()["message"]


def test_bad_names_files_and_requests(live):
    srv, _ = live
    url = srv.url
    for bad in ("..%2F..%2Fetc%2Fpasswd.json", "%2Fetc%2Fx.json", ".hidden.json", "x.txt"):
        r = httpx.get(f"{url}/tables/{bad}")
        assert r.status_code == 422, (bad, r.text)
        assert httpx.delete(f"{url}/tables/{bad}").status_code == 422
    r = httpx.post(f"{url}/predict/single/{SEGMENTS}",
                   json={"trace": TRACES[0], "lookup_table": True, "lookup_table_name": "../models/x.json"})
    assert r.status_code == 422 and r.json()["field"] == "lookup_table_name"
    r = httpx.post(f"{url}/predict/single/{SEGMENTS}", json={"trace": TRACES[0], "lookup_table": True})
    assert r.status_code == 422 and "no default lookup table" in r.json()["message"]

    # A truncated table: a clear error, and the service keeps serving.
    (srv.data_dir / "tables" / "cut.json").write_bytes((srv.data_dir / "tables" / "gen.json").read_bytes()[:5000])
    for _ in range(2):
        r = httpx.post(f"{url}/predict/single/{SEGMENTS}",
                       json={"trace": TRACES[0], "lookup_table": True, "lookup_table_name": "cut.json"})
        assert r.status_code == 422 and "cut.json" in r.json()["message"] and "truncated" in r.json()["message"]
    assert httpx.get(f"{url}/health").json()["status"] == "healthy"
    assert "error" in {t["name"]: t for t in httpx.get(f"{url}/tables").json()["tables"]}["cut.json"]

    # Generation failures answer status "failed" with the error's HTTP status.
    r = httpx.post(f"{url}/predict/table/llm/none/x/y/z", files={"trace_file": ("t.jsonl", jsonl(TRACES[:3]))})
    assert r.status_code == 404 and r.json()["status"] == "failed" and "message" in r.json()
    r = httpx.post(f"{url}/predict/table/{SEGMENTS}", data={"confidence_level": "0.9"})
    assert r.status_code == 422 and r.json()["status"] == "failed"
    r = httpx.post(f"{url}/predict/table/{SEGMENTS}", files={"trace_file": ("t.jsonl", jsonl(TRACES[:3]))},
                   data={"confidence_level": "1.5"})
    assert r.status_code == 422 and r.json()["field"] == "confidence_level"
    r = httpx.post(f"{url}/predict/table/{SEGMENTS}", files={"trace_file": ("t.exe", b"MZ")})
    assert r.status_code == 422 and r.json()["field"] == "trace_file"
    # Refused before the route runs (a query parameter it does not take), in its own shape
    # all the same (it was {"status": "error"}, without "path").
    r = httpx.post(f"{url}/predict/table/{SEGMENTS}?version=1", files={"trace_file": ("t.jsonl", jsonl(TRACES[:3]))})
    assert r.status_code == 422 and r.json()["field"] == "version"
    assert r.json()["status"] == "failed" and r.json()["path"] is None, r.text
    r = httpx.post(f"{url}/predict/table/{SEGMENTS}", files={"trace_file": ("t.jsonl", b'{"input_tokens": 1,')})
    assert r.status_code == 422 and "line 1" in r.json()["message"]
    r = httpx.post(f"{url}/predict/table/{SEGMENTS}", files={"trace_file": ("t.jsonl", jsonl(TRACES[:3]))},
                   data={"table_name": "../../escape.json"})
    assert r.status_code == 422 and r.json()["status"] == "failed"
    # A misspelt field was ignored (the table made at the default level); a blank level or a
    # field given twice is refused; a .gz upload that is not gzip says so (it was "empty").
    before = {t["name"] for t in httpx.get(f"{url}/tables").json()["tables"]}
    for data, field in (({"confidence": "0.5"}, "confidence"), ({"tabel_name": "x.json"}, "tabel_name"),
                        ({"confidence_level": ""}, "confidence_level"),
                        # Numbers as a trace's are read: Python's float() took these as 0.5 and 0.9.
                        ({"confidence_level": "0.5_0"}, "confidence_level"),
                        ({"confidence_level": "\u0660.\u0669"}, "confidence_level"),
                        ({"table_name": ["a.json", "b.json"]}, "table_name"),
                        # How many further levels (knots) each record stores: 0 to 64.
                        ({"knots": "-1"}, "knots"), ({"knots": "65"}, "knots"), ({"knots": "2.5"}, "knots"),
                        ({"knots": ""}, "knots"), ({"knots": "\u0663"}, "knots"), ({"knots": "9" * 5000}, "knots"),
                        # A blank format was the default's, where a blank level or knots is refused.
                        ({"format": ""}, "format"), ({"format": "  "}, "format")):
        r = httpx.post(f"{url}/predict/table/{SEGMENTS}", files={"trace_file": ("t.jsonl", jsonl(TRACES[:3]))}, data=data)
        assert r.status_code == 422 and r.json()["field"] == field and r.json()["status"] == "failed", r.text
    assert {t["name"] for t in httpx.get(f"{url}/tables").json()["tables"]} == before
    r = httpx.post(f"{url}/predict/table/{SEGMENTS}", files={"trace_file": ("t.json.gz", b"\x1f\x8bzzzz")})
    assert r.status_code == 422 and r.json()["message"].startswith("t.json.gz: not a valid gzip file"), r.text
    assert not list(srv.data_dir.glob("upload-*"))
    assert httpx.get(f"{url}/health").json()["status"] == "healthy"


def test_clients_cover_the_table_endpoints(live, tmp_path):
    srv, _ = live
    src = tmp_path / "traces.csv"
    src.write_text("input_tokens,output_tokens,task_id\n" + "".join(
        f"{t['input_tokens']},{t['output_tokens']},{t['task_id']}\n" for t in TRACES[:20]))
    with PredictorClient(srv.url) as client:
        result = client.generate_table(IDENTITY, src, 0.8, table_name="client.json", knots=3)
        assert result["status"] == "successful" and result["rows"] == 20 and 0 < len(result["knot_levels"]) <= 3
        assert result["load_seconds"] >= 0  # read for serving before the answer
        assert "client.json" in {t["name"] for t in client.list_tables()}
        data = client.download_table("client.json", tmp_path / "copy.json")
        assert (tmp_path / "copy.json").read_bytes() == data and len(orjson.loads(data)) == 20
        answer = client.predict_single(IDENTITY, TRACES[4], lookup_table_name="client.json")
        assert answer.results.source == "lookup_table"
        with pytest.raises(PredictorClientError) as info:
            client.download_table("../x.json")
        assert info.value.status_code == 422
        assert client.delete_table("client.json")["deleted"] == "client.json"
        with pytest.raises(PredictorClientError) as info:
            client.delete_table("client.json")
        assert info.value.status_code == 404

    async def run():
        async with AsyncPredictorClient(srv.url) as aclient:
            res = await aclient.generate_table(IDENTITY, jsonl(TRACES[:10]), table_name="async.csv", filename="t.jsonl",
                                               knots=0)
            names = {t["name"] for t in await aclient.list_tables()}
            data = await aclient.download_table("async.csv")
            await aclient.delete_table("async.csv")
            return res, names, data

    res, names, data = asyncio.run(run())
    assert res["rows"] == 10 and "async.csv" in names and data.startswith(b"input_tokens,output_tokens")
    assert res["knot_levels"] == [] and b"knot_" not in data.split(b"\n")[0]  # knots=0: none, as tables were before


def test_a_generation_counts_its_traces_and_their_failures_in_the_metrics(tmp_path):
    # The repeat records added beside first runs were counted as traces predicted (78 for
    # 60 traces here), and the traces that could not be predicted as no error at all.
    from .conftest import cold_start_traces, trained_in_process

    vision = {**IDENTITY, "model_type": "vision"}
    data = trained_in_process(tmp_path / "data", {"model": vision, "traces": cold_start_traces(400)[0]})
    later = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in cold_start_traces(60, seed=3)[0]]
    later += [{"batch_size": 2}] * 4  # no image_size: not predicted
    path = "/".join(quote(vision[k], safe="") for k in IDENTITY)
    with run_server(data) as srv:
        r = httpx.post(f"{srv.url}/predict/table/{path}", files={"trace_file": ("later.jsonl", jsonl(later))},
                       data={"table_name": "later.json"}, timeout=60)
        assert r.status_code == 200, r.text
        assert (r.json()["rows"], r.json()["repeats_added"], r.json()["failed"]) == (78, 18, 4)
        text = httpx.get(f"{srv.url}/metrics").text
    key = ModelIdentity.from_parts(vision).key
    assert metric_value(text, "predictor_predictions_total", model=key, source="table_generation") == 60
    assert metric_value(text, "predictor_prediction_errors_total", model=key) == 4


def test_default_lookup_table_at_start(tmp_path):
    seed = tmp_path / "predictions.json"
    seed.write_text(SEED_TABLE)
    with run_server(tmp_path / "data", extra_env={"DEFAULT_LOOKUP_TABLE": str(seed)}) as srv:
        health = httpx.get(f"{srv.url}/health").json()
        assert health["mode"] == "lookup_table" and health["lookup_predictor_loaded"] is True
        assert health["lookup_table"] == "predictions.json"
        # The seed README's request shape, against the table's own identity.
        for extra in ({}, {"lookup_table_name": "predictions.json"}):
            r = httpx.post(f"{srv.url}/predict/single/{SEED_PATH}",
                           json={"trace": {"input_tokens": 100}, "confidence_level": 0.95, "lookup_table": True, **extra})
            assert r.status_code == 200, r.text
            res = r.json()["results"]
            assert res["quantile_predictions"] == [100.0, 150.0, 200.0, 500.0] and res["match"] == "random"
        # The seed's client names only model_type and hardware.
        with PredictorClient(srv.url) as client:
            answer = client.predict_single(("gpt-3.5-turbo", None, "A100", None, None), {"input_tokens": 1},
                                           lookup_table_name="predictions.json")
            assert answer.results.expect == 150.0
            # lookup_table=True alone asks for the default table.
            answer = client.predict_single(("gpt-3.5-turbo", None, "A100", None, None), {"input_tokens": 1},
                                           lookup_table=True)
            assert answer.results.expect == 150.0 and answer.results.match == "random"
            assert [t["name"] for t in client.list_tables() if t["default"]] == ["predictions.json"]
            assert client.download_table("predictions.json") == seed.read_bytes()
        # Loaded from outside the table directory, it is not deleted: a 400, which /openapi.json
        # did not list among the route's answers (404, 413, 415, 422 and 5XX).
        r = httpx.delete(f"{srv.url}/tables/predictions.json")
        assert r.status_code == 400 and r.json()["field"] == "name" and seed.exists()
        spec = httpx.get(f"{srv.url}/openapi.json").json()
        assert "DEFAULT_LOOKUP_TABLE" in spec["paths"]["/tables/{name}"]["delete"]["responses"]["400"]["description"]


def test_health_and_metrics_let_go_of_a_default_table_whose_file_is_gone(tmp_path):
    # Deleted by another worker (or by hand): lookups of it were refused, while /health said
    # "lookup_table" and /metrics kept its series until a lookup in this worker noticed.
    tables = tmp_path / "data" / "tables"
    tables.mkdir(parents=True)
    (tables / "d.json").write_text(SEED_TABLE)
    with run_server(tmp_path / "data", extra_env={"DEFAULT_LOOKUP_TABLE": "d.json"}) as srv:
        r = httpx.post(f"{srv.url}/predict/single/{SEED_PATH}", json={"trace": {"input_tokens": 1}, "lookup_table": True})
        assert r.status_code == 200
        assert metric_value(httpx.get(f"{srv.url}/metrics").text, "predictor_predictions_total", model="table:d.json") == 1
        (tables / "d.json").unlink()
        health = httpx.get(f"{srv.url}/health").json()
        assert (health["mode"], health["lookup_table"], health["lookup_predictor_loaded"]) == ("default", None, False)
        assert health["lookup_table_error"].endswith("d.json': no such file")
        assert 'model="table:d.json"' not in httpx.get(f"{srv.url}/metrics").text
        r = httpx.post(f"{srv.url}/predict/single/{SEED_PATH}", json={"trace": {"input_tokens": 1}, "lookup_table": True})
        assert r.status_code == 422 and "no default lookup table is loaded" in r.json()["message"]


def test_health_lets_go_of_a_named_table_whose_file_is_gone(tmp_path):
    # Deleted by another worker (or by hand), the only table still counted as loaded here:
    # lookup_predictor_loaded stayed true until a lookup or /tables in this worker noticed.
    tables = tmp_path / "data" / "tables"
    tables.mkdir(parents=True)
    (tables / "t.json").write_text(SEED_TABLE)
    with run_server(tmp_path / "data") as srv:
        assert httpx.get(f"{srv.url}/health").json()["lookup_predictor_loaded"] is False
        r = httpx.post(f"{srv.url}/predict/single/{SEED_PATH}",
                       json={"trace": {"input_tokens": 1}, "lookup_table": True, "lookup_table_name": "t.json"})
        assert r.status_code == 200
        assert httpx.get(f"{srv.url}/health").json()["lookup_predictor_loaded"] is True
        (tables / "t.json").unlink()
        assert httpx.get(f"{srv.url}/health").json()["lookup_predictor_loaded"] is False


def test_bad_default_lookup_table_leaves_the_service_running(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text(SEED_TABLE[:120])
    with run_server(tmp_path / "data", extra_env={"DEFAULT_LOOKUP_TABLE": str(bad)}) as srv:
        health = httpx.get(f"{srv.url}/health").json()
        assert health["status"] == "healthy" and health["mode"] == "default"
        assert health["lookup_predictor_loaded"] is False and "broken.json" in health["lookup_table_error"]
        r = httpx.post(f"{srv.url}/predict/single/{SEED_PATH}", json={"trace": {}, "lookup_table": True})
        assert r.status_code == 422 and "truncated" in r.json()["message"]


def test_tables_and_trace_files_at_the_edges_answer_4xx_or_serve(live):
    import json

    srv, _ = live
    url, tables = srv.url, srv.data_dir / "tables"
    rec = {"status": "success", "quantiles": [0.5], "quantile_predictions": [3.0], "expect": 3.0, "error": 1.0,
           "model_info": {"type": "llm"}}
    (tables / "ver.json").write_bytes(orjson.dumps([{**rec, "model_version": 2**63}]))
    (tables / "sur.json").write_text(json.dumps([{**rec, "features": {"zone": "\ud800"}},
                                                 {**rec, "expect": 4.0, "features": {"zone": "a"}}], indent=2))
    r = httpx.post(f"{url}/predict/single/llm/*/*/*/*", json={"trace": {}, "lookup_table": True, "lookup_table_name": "ver.json"})
    assert r.status_code == 422 and "ver.json: record 0: 'model_version'" in r.json()["message"]
    # Its sidecar cannot be written (orjson refuses the lone surrogate), the table is served anyway.
    r = httpx.post(f"{url}/predict/single/llm/*/*/*/*", json={"trace": {"zone": "a"}, "lookup_table": True, "lookup_table_name": "sur.json"})
    assert r.status_code == 200 and r.json()["results"]["expect"] == 4.0
    r = httpx.post(f"{url}/predict/table/{SEGMENTS}", files={"trace_file": ("deep.json", b"[" * 5000)})
    assert r.status_code == 422 and r.json()["status"] == "failed" and "nested too deeply" in r.json()["message"]
    assert httpx.delete(f"{url}/tables/{'t' * 245}.json").status_code == 404
    assert httpx.get(f"{url}/health").json()["status"] == "healthy"


def test_table_names_levels_and_values_at_the_edges(live):
    srv, _ = live
    with PredictorClient(srv.url) as client:
        # A blank name names no table: refused, where it used to fall back to (and overwrite)
        # the model's default table.
        for blank in ("", "  "):
            with pytest.raises(PredictorClientError) as err:
                client.generate_table(IDENTITY, jsonl(TRACES[:3]), table_name=blank)
            assert err.value.status_code == 422 and err.value.field == "table_name"
        # Nor is " gen.json" gen.json: generation read it so (replacing that table), where the
        # other routes did not find it.
        before = (srv.data_dir / "tables" / "gen.json").read_bytes()
        with pytest.raises(PredictorClientError) as err:
            client.generate_table(IDENTITY, jsonl(TRACES[:3]), table_name=" gen.json")
        assert (err.value.status_code, err.value.field) == (422, "table_name")
        assert err.value.message == "table_name ' gen.json' must not begin or end with white space"
        assert (srv.data_dir / "tables" / "gen.json").read_bytes() == before
        with pytest.raises(PredictorClientError) as err:
            client.predict_single(IDENTITY, TRACES[0], lookup_table_name="gen.json ")
        assert (err.value.status_code, err.value.field) == (422, "lookup_table_name")
        # NaN is refused before sending, as it is in a JSON body (the form carried "nan").
        with pytest.raises(ValueError) as err:
            client.generate_table(IDENTITY, jsonl(TRACES[:3]), confidence_level=float("nan"))
        assert err.value.field == "confidence_level"
        # A model type that starts with '.' gets a default table name that is not a hidden file.
        hidden = {**IDENTITY, "model_type": ".hidden"}
        client.train({"model": hidden, "traces": make_llm_traces(60), "algorithm": "linear"})
        made = client.generate_table(hidden, jsonl(TRACES[:3]))
        assert made["status"] == "successful" and made["table_name"].startswith("hidden__")
        assert (srv.data_dir / "tables" / made["table_name"]).is_file()
        client.delete_model(hidden)
        # A table's name without "lookup_table": true had no effect (the model answered): refused.
        for path, trace in (("single", TRACES[0]), ("batch", [TRACES[0]])):
            for body in ({"trace": trace, "lookup_table_name": "gen.json"},
                         {"trace": trace, "lookup_table": False, "lookup_table_name": "gen.json"}):
                r = httpx.post(f"{srv.url}/predict/{path}/{SEGMENTS}", json=body)
                assert r.status_code == 422 and r.json()["field"] == "lookup_table_name", r.text
                assert "'lookup_table' is false" in r.json()["message"]
        # An empty queue answered from a table totals 0 at the table's levels, as the model's does.
        empty = client.predict_batch(IDENTITY, [], lookup_table_name="gen.json")
        levels = orjson.loads((srv.data_dir / "tables" / "gen.json").read_bytes())[0]["quantiles"]
        assert empty.quantiles == levels and empty.total_quantiles == [0.0] * len(levels)
        assert empty.expect == 0.0 and empty.total_interval == [0.0, 0.0]
        # A batch none of whose traces is found names those levels too, with null totals, as
        # the model's does (it named none).
        r = httpx.post(f"{srv.url}/predict/batch/{SEGMENTS}",
                       json={"trace": [{"input_tokens": 1}, {"nope": 2}], "lookup_table": True,
                             "lookup_table_name": "gen.json"}).json()
        model = httpx.post(f"{srv.url}/predict/batch/{SEGMENTS}", json={"trace": [{"input_tokens": 1}]}).json()
        assert r["summary"]["success"] == 0 and r["quantiles"] == levels and r["total_quantiles"] is None
        assert model["summary"]["success"] == 0 and model["quantiles"] and model["total_quantiles"] is None


def test_a_head_of_a_table_reads_none_of_it(tmp_path):
    # A HEAD was served as the GET with its body dropped: a load balancer's probe read a
    # table of gigabytes whole each time.
    from swarmpilot_predictor.api import create_app
    from swarmpilot_predictor.settings import PredictorSettings

    app = create_app(PredictorSettings(data_dir=tmp_path / "data"))
    tables = tmp_path / "data" / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    (tables / "big.jsonl").write_bytes(b'{"x": 1}\n' * 300_000)  # 2.7 MB
    store, read = app.state.service.tables, []
    real_open = store.open_table

    def counted(name):
        fh, size = real_open(name)
        real_read = fh.read

        class Counted:
            def read(self, n=-1):
                chunk = real_read(n)
                read.append(len(chunk))
                return chunk

            def close(self):
                fh.close()

        return Counted(), size

    store.open_table = counted

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://predictor") as client:
            return await client.head("/tables/big.jsonl"), await client.get("/tables/big.jsonl")

    head, get = asyncio.run(scenario())
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "2700000"
    assert head.headers["content-disposition"] == get.headers["content-disposition"] == 'attachment; filename="big.jsonl"'
    assert head.headers["content-type"] == get.headers["content-type"]
    assert len(get.content) == 2_700_000 and sum(read) == 2_700_000  # the GET's reads alone
    # Read (and sent) 64 kB at a time, as Starlette's FileResponse does: a client that reads
    # slowly holds about two chunks, and 300 of them held 580 MB with chunks of 1 MB.
    assert max(read) == 1 << 16 and len(read) == 43
    app.state.service.close()


def test_a_sidecar_folder_that_is_a_symbolic_link_is_neither_written_nor_cleaned_through(tmp_path):
    # tables/.index linked elsewhere: the start's clean-up removed every .npz file (and every
    # stale ".*.tmp") wherever it led, outside the data directory, and loads wrote sidecars there.
    import os
    import time

    tables = tmp_path / "data" / "tables"
    tables.mkdir(parents=True)
    (tables / "t.json").write_text(SEED_TABLE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "experiment.npz").write_bytes(b"not the service's")
    (elsewhere / ".draft.tmp").write_bytes(b"nor this")
    an_hour_ago = time.time() - 3600
    os.utime(elsewhere / ".draft.tmp", (an_hour_ago, an_hour_ago))
    (tables / ".index").symlink_to(elsewhere, target_is_directory=True)
    with run_server(tmp_path / "data") as srv, PredictorClient(srv.url) as client:
        for _ in range(2):  # loaded (parsed: no sidecar), then from the cache
            answer = client.predict_single(("gpt-3.5-turbo", None, "A100", None, None), {"input_tokens": 1},
                                           lookup_table_name="t.json")
            assert answer.results.expect == 150.0
        assert client.delete_table("t.json") == {"status": "success", "deleted": "t.json"}
    assert sorted(p.name for p in elsewhere.iterdir()) == [".draft.tmp", "experiment.npz"]
    assert (elsewhere / "experiment.npz").read_bytes() == b"not the service's"


def test_a_tables_answers_are_evaluated_as_the_models_are(live):
    # TRACES carry their runtimes, and the table holds a record of each: scored as the model is.
    srv, _ = live
    path = f"{srv.url}/models/{SEGMENTS}/evaluate"
    model = httpx.post(path, json={"traces": TRACES}, timeout=60).json()
    table = httpx.post(path, json={"traces": TRACES, "lookup_table": True, "lookup_table_name": "gen.json"}, timeout=60)
    assert table.status_code == 200, table.text
    table = table.json()
    assert (table["source"], table["table"], table["model_key"], table["version"]) == ("lookup_table", "gen.json",
                                                                                        None, None)
    assert table["evaluated"] == model["evaluated"] == 200 and table["heldout_at_training"] == {}
    # Read off each record's stored levels and knots, interpolated: a runtime or two of 200 on
    # the other side of a level.
    assert table["coverage"] == pytest.approx(model["coverage"], abs=0.021)
    assert table["relative_pinball_loss"] == pytest.approx(model["relative_pinball_loss"], rel=0.02)
    bad = httpx.post(path, json={"traces": TRACES, "lookup_table": True, "version": 1}, timeout=60)
    assert bad.status_code == 422 and bad.json()["field"] == "version"
    missing = httpx.post(path, json={"traces": TRACES, "lookup_table": True, "lookup_table_name": "no.json"}, timeout=60)
    assert missing.status_code == 404 and missing.json()["field"] == "lookup_table_name"
    with PredictorClient(srv.url) as client:
        answer = client.evaluate(IDENTITY, TRACES, lookup_table_name="gen.json")
        assert answer.source == "lookup_table" and answer.coverage == table["coverage"]
        with pytest.raises(PredictorClientError) as caught:  # refused before sending
            client.evaluate(IDENTITY, TRACES, lookup_table_name="gen.json", lookup_table=False)
        assert caught.value.field == "lookup_table_name"

    async def evaluated():
        async with AsyncPredictorClient(srv.url) as client:
            return await client.evaluate(IDENTITY, TRACES, lookup_table_name="gen.json")

    assert asyncio.run(evaluated()) == answer


@pytest.mark.parametrize("n", [3, 8, 20, 60])
def test_a_tables_last_completion_time_is_its_queues_total_to_the_bit(live, n):
    # The completions' means and spreads were running sums, the total's numpy's pairwise sum:
    # from 8 tasks on, the last task's expect and error could differ from the queue's in their
    # last bits, where the README promises the queue's total to the last bit.
    srv, _ = live
    queue = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in TRACES[:n]]
    queue[0] = {**queue[0], "elapsed_ms": 50.0}  # a running task counts by its time left, in both
    with PredictorClient(srv.url) as client:
        wait = client.queue_wait(IDENTITY, queue, quantiles=[0.5, 0.9], lookup_table_name="gen.json",
                                 deadline_ms=20_000.0, completion_times=True)
        plain = client.queue_wait(IDENTITY, queue, quantiles=[0.5, 0.9], lookup_table_name="gen.json",
                                  deadline_ms=20_000.0)
        each = client.predict_batch(IDENTITY, queue, lookup_table_name="gen.json").results
    assert wait.completion is not None and [c.index for c in wait.completion] == list(range(n))
    last = wait.completion[-1]
    assert (last.expect, last.error, last.quantiles, last.interval, last.deadline_probability) == (
        wait.expect, wait.error, wait.quantile_predictions, wait.interval, wait.deadline_probability)
    assert (wait.expect, wait.error) == (plain.expect, plain.error)
    # Each task's completion is still the sum of its own and those ahead of it.
    assert [c.expect for c in wait.completion] == pytest.approx(list(itertools.accumulate(r.expect for r in each)),
                                                                rel=1e-12)


def test_a_tables_first_completion_time_is_its_tasks_own_answer(live):
    # The first task's completion was read off its distribution as a total sums it, whose
    # probability of a deadline stops at the record's highest knot level (0.99984), where the
    # task's own answer (and its queue's, alone) read up to 1 for a deadline past the task.
    srv, _ = live
    queue = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in TRACES[:4]]
    options = {"quantiles": [0.5, 0.9], "lookup_table_name": "gen.json", "confidence_level": 0.9}
    with PredictorClient(srv.url) as client:
        p90 = client.predict_batch(IDENTITY, queue[:1], **options).results[0].quantile_predictions[-1]
        for factor in (1.1, 1.3, 1.5, 2.0, 10.0):
            own = client.predict_batch(IDENTITY, queue[:1], deadline_ms=factor * p90, **options).results[0]
            for n in (1, 4):
                wait = client.queue_wait(IDENTITY, queue[:n], deadline_ms=factor * p90, completion_times=True, **options)
                first = wait.completion[0]
                assert (first.expect, first.error, first.quantiles, first.interval, first.deadline_probability) == (
                    own.expect, own.error, own.quantile_predictions, own.interval, own.deadline_probability)
                # A task is never done by the deadline more surely than the one ahead of it.
                assert all(a.deadline_probability >= b.deadline_probability
                           for a, b in zip(wait.completion, wait.completion[1:]))
                if n == 1:  # a queue of that task alone: its completion is its total, to the bit
                    assert (first.quantiles, first.interval, first.deadline_probability) == (
                        wait.quantile_predictions, wait.interval, wait.deadline_probability)
