"""PredictorService: training from every trace source, safe paths, grouping, prediction, resolution."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from swarmpilot_predictor.errors import (
    AmbiguousModel,
    InvalidInput,
    ModelNotFound,
    NotFound,
    PredictorError,
    StorageError,
)
from swarmpilot_predictor.identity import IdentityPattern, ModelIdentity
from swarmpilot_predictor.schemas import TrainConfig
from swarmpilot_predictor.service import PredictorService
from swarmpilot_predictor.training import safe_child
from swarmpilot_predictor.traces import TraceTable
from swarmpilot_predictor.settings import PredictorSettings

from .conftest import IDENTITY, autotuned_traces, cold_start_traces, make_llm_traces, refuse_unlink, trained_in_process

PATTERN = IdentityPattern.from_parts(IDENTITY)
PROBE = [{"input_tokens": 500, "output_tokens": 20}, {"input_tokens": 500, "output_tokens": 400}]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[PredictorService]:
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    yield svc
    svc.close()


def config(traces, **kw) -> TrainConfig:
    return TrainConfig.model_validate({"model": IDENTITY, "traces": traces, "algorithm": "linear", **kw})


def predict(service, pattern=PATTERN, traces=PROBE, **kw):
    return service.predict(pattern, traces, **kw)


def write_jsonl_gz(path: Path, traces) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(t) + b"\n" for t in traces)))
    return path


# --------------------------------------------------------------------------- training


def test_train_inline_traces_reports_metrics(service):
    traces = make_llm_traces(300)
    result = service.train(config(traces))
    assert result["status"] == "success"
    assert result["model_key"] == ModelIdentity.from_parts(IDENTITY).key
    assert result["version"] == 1
    assert result["duration_seconds"] > 0
    m = result["metrics"]
    assert m["algorithm"] == "linear"
    assert m["rows_used"] == 300 and m["rows_dropped"] == 0
    for key in ("pinball_loss", "coverage", "interval_coverage", "median_mape"):
        assert key in m, key
    # Held-out coverage of a calibrated model is close to the nominal level.
    assert abs(m["coverage"]["0.5"] - 0.5) < 0.1
    assert 0 < m["median_mape"] < 0.5
    # The model learned that output tokens cost time (runtime ≈ 20 + 0.02·in + 12·out).
    pred = predict(service)
    low, high = pred.quantiles[:, 1]
    assert high > 5 * low
    assert 200 < low < 400 and 3500 < high < 6500  # truth: 270 and 4830


def test_a_run_sent_out_of_order_is_cut_into_stretches_by_its_timestamps(service):
    # Ten stretches of 60 runs, each at its own level; sent shuffled, the timestamps put
    # them back in the order they ran, and the stretches' spread is found as in that order.
    traces = make_llm_traces(600, seed=3)
    levels = np.exp(0.1 * np.array([0.3, -1.2, 0.8, 1.5, -0.4, -0.9, 0.1, 1.1, -1.6, 0.3]))
    for k, t in enumerate(traces):
        t.update(ts=1.7e9 + k, runtime_ms=t["runtime_ms"] * levels[k // 60])
    shuffled = [traces[k] for k in np.random.default_rng(4).permutation(len(traces))]
    in_order = service.train(config(traces))["metrics"]["stretch_levels"]
    sent_shuffled = service.train(config(shuffled))["metrics"]["stretch_levels"]
    # (600 rows: a permutation test decides, and stops once its p-value is plainly below 1e-3)
    assert in_order["p_value"] < 1e-3 and in_order["log_sd"] > 0.05
    assert sent_shuffled == in_order
    without_ts = service.train(config([{k: v for k, v in t.items() if k != "ts"} for t in shuffled]))
    assert without_ts["metrics"]["stretch_levels"]["log_sd"] == 0.0


def test_train_reports_what_it_dropped(service):
    traces = make_llm_traces(200)
    for i, t in enumerate(traces):
        t["const"] = 1
        if i < 5:
            t["runtime_ms"] = -1
        if 10 <= i < 13:
            t["input_tokens"] = None
    data = service.train(config(traces))["metrics"]["data"]
    assert data["rows_total"] == 200 and data["rows_used"] == 195
    assert data["rows_dropped"] == {"target not positive": 5}
    assert data["columns_dropped"] == {"const": "constant"}
    assert data["values_imputed"] == {"input_tokens": 3}


def test_a_model_answers_every_trace_of_its_own_training_file(service, tmp_path):
    # Half the traces carry a word and a number the others lack: neither is required after.
    traces = make_llm_traces(200)
    for i, t in enumerate(traces[::2]):
        t.update(note=["short", "long"][i % 2], queue_depth=float(i % 7))
    data = service.train(config(traces))["metrics"]["data"]
    assert data["values_imputed"] == {"note": 100, "queue_depth": 100}
    path = write_jsonl_gz(tmp_path / "own.jsonl.gz", traces)
    result = service.generate_table(PATTERN, path, 0.9, "own.json")
    assert result["status"] == "successful" and (result["rows"], result["failed"]) == (200, 0)
    pred = predict(service, traces=[{"input_tokens": 50, "output_tokens": 40}, {"input_tokens": 50}])
    assert pred.ok.tolist() == [True, False] and pred.errors[1] == "missing required feature 'output_tokens'"


def test_structured_inline_traces_train_the_same_model(service, tmp_path):
    flat = make_llm_traces(200)
    structured = [
        {"input_feature": [{"param_name": "input_tokens", "val": t["input_tokens"]},
                           {"param_name": "output_tokens", "val": t["output_tokens"]}],
         "model_id": "turbo", "runtime_ms": t["runtime_ms"]}
        for t in flat
    ]
    a = service.train(config(flat))
    b = service.train(config(structured))
    assert (a["version"], b["version"]) == (1, 2)
    meta1, meta2 = (service.registry.get_version(ModelIdentity.from_parts(IDENTITY), v) for v in (1, 2))
    assert meta1.data_hash == meta2.data_hash
    assert [f.name for f in meta2.features.features] == ["input_tokens", "output_tokens"]
    np.testing.assert_array_equal(predict(service, version=1).quantiles, predict(service, version=2).quantiles)


@pytest.mark.parametrize("name", ["traces/llm.jsonl.gz", "llm.csv", "nested/dir/llm.json"])
def test_train_from_a_data_dir_file(service, name):
    traces = make_llm_traces(200)
    path = service.settings.data_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".jsonl.gz"):
        write_jsonl_gz(path, traces)
    elif name.endswith(".csv"):
        lines = ["input_tokens,output_tokens,runtime_ms,task_id"]
        lines += [f"{t['input_tokens']},{t['output_tokens']},{t['runtime_ms']!r},{t['task_id']}" for t in traces]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_bytes(orjson.dumps({"traces": traces}))
    from_file = service.train(config(name))
    inline = service.train(config(traces))
    assert from_file["metrics"]["rows_used"] == 200
    versions = service.registry.versions(ModelIdentity.from_parts(IDENTITY))
    assert versions[0].data_hash == versions[1].data_hash  # the very same rows
    np.testing.assert_array_equal(predict(service, version=1).quantiles, predict(service, version=2).quantiles)
    assert inline["version"] == 2


def test_training_from_uploads_prefers_the_uploaded_file(service, tmp_path):
    upload = write_jsonl_gz(tmp_path / "up" / "0.jsonl.gz", make_llm_traces(120))
    result = service.train(config("mine.jsonl.gz"), uploads={"mine.jsonl.gz": upload})
    assert result["metrics"]["rows_used"] == 120


def test_errors_in_an_upload_name_the_clients_file(service, tmp_path):
    # Uploads are stored under names of the server's; messages name the file as the client sent it.
    stored = tmp_path / "up" / "0.jsonl"
    stored.parent.mkdir()
    stored.write_bytes(orjson.dumps(make_llm_traces(1)[0]) + b"\n{oops\n")
    for source in ("mine.jsonl", "field"):  # by its file name, or by its form field's name
        with pytest.raises(InvalidInput, match=r"^mine\.jsonl: line 2 is not valid JSON") as info:
            service.train(config(source), uploads={"mine.jsonl": stored, "field": stored})
        assert "0.jsonl" not in info.value.message and info.value.field == "traces"


def test_table_errors_name_the_source_not_the_stored_file(service, tmp_path):
    service.train(config(make_llm_traces(60)))
    stored = tmp_path / "upload-0123456789abcdef.json"
    for data in (b'[{"input_tokens": 1, ', b'{"traces": [1', b"{"):
        stored.write_bytes(data)
        with pytest.raises(InvalidInput, match=r"^bad\.json: ") as info:
            service.generate_table(PATTERN, stored, source_name="bad.json")
        assert stored.name not in info.value.message and stored.name not in str(info.value)


def test_a_table_past_its_record_limit_is_a_413_and_no_table(tmp_path):
    # Every worker holds a table it answers from in memory: a 39 MB CSV made a 2.4 GB one.
    from swarmpilot_predictor.errors import PayloadTooLarge

    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", max_table_rows=10_000))
    try:
        svc.train(config(make_llm_traces(60)))
        traces = write_jsonl_gz(tmp_path / "t.jsonl.gz", make_llm_traces(10_000) + make_llm_traces(6_000, seed=1))
        with pytest.raises(PayloadTooLarge, match="more than 10,000 records") as info:
            svc.generate_table(PATTERN, traces, table_name="big.json")
        assert info.value.field == "trace_file"
        assert list(svc.settings.tables_dir.iterdir()) == []
        small = write_jsonl_gz(tmp_path / "s.jsonl.gz", make_llm_traces(10_000))
        assert svc.generate_table(PATTERN, small, table_name="big.json")["rows"] == 10_000
    finally:
        svc.close()


def test_a_tables_folder_gone_under_the_service_is_not_made_again(service, tmp_path):
    # (Deleted, or its volume unmounted: a table written into a folder made again vanishes at the remount.)
    import shutil

    service.train(config(make_llm_traces(60)))
    traces = write_jsonl_gz(tmp_path / "t.jsonl.gz", make_llm_traces(20, seed=1))
    shutil.rmtree(service.settings.tables_dir)
    with pytest.raises(PredictorError, match=r"cannot write lookup table gone.json .*\(No such file or directory\)"):
        service.generate_table(PATTERN, traces, table_name="gone.json")
    assert not service.settings.tables_dir.exists()
    # A table written where the CLI's --output says has its folder made.
    out = tmp_path / "new" / "folder" / "t.json"
    # None of whose traces can be predicted: no table, and no folder left made for it.
    bad = write_jsonl_gz(tmp_path / "bad.jsonl.gz", [{"x": 1}, {"y": 2}])
    with pytest.raises(InvalidInput, match="none of the 2 trace"):
        service.generate_table(PATTERN, bad, out_path=out)
    assert not (tmp_path / "new").exists()
    result = service.generate_table(PATTERN, traces, out_path=out)
    assert result["rows"] == 20 and out.is_file()
    # Not the service's to serve: not read back, and no sidecar for it.
    assert "load_seconds" not in result and not service.tables.index_path(out).exists()


def test_an_empty_batch_totals_zero_from_a_model_and_from_a_table(service):
    from swarmpilot_predictor.lookup import TablePrediction

    service.train(config(make_llm_traces(60), quantiles=[0.5, 0.9]))
    body = service.predict(PATTERN, [], with_total=True).batch_response()
    assert body["results"] == [] and body["summary"]["total"] == 0
    assert (body["expect"], body["error"], body["total_quantiles"], body["total_interval"]) == (0, 0, [0, 0], [0, 0])
    # A batch none of whose traces could be predicted has no total.
    body = service.predict(PATTERN, [{"x": 1}], with_total=True).batch_response()
    assert body["expect"] is None and body["total_quantiles"] is None
    empty = TablePrediction(table="t.json", levels=[0.25, 0.5], confidence_level=0.9, ok=np.zeros(0, dtype=bool),
                            errors=[], items=[], total=None, duration_seconds=0.0)
    body = empty.batch_response()
    assert body["total_quantiles"] == [0, 0] and body["total_interval"] == [0, 0] and body["expect"] == 0


@pytest.mark.parametrize("value, match", [("", "cannot be empty"), (" ", "cannot be blank"),
                                          ("h\n100", r"format characters, got 'h\\n100'"),
                                          ("..", "relative path segment")])
def test_group_values_that_cannot_name_a_model_are_refused(service, value, match):
    traces = make_llm_traces(40)
    traces = [{**t, "hardware": value if i % 2 else "h100"} for i, t in enumerate(traces)]
    with pytest.raises(InvalidInput, match=match) as info:
        service.train(config(traces, group_by=["hardware"]))
    assert info.value.field == "traces" and info.value.status_code == 422
    assert service.registry.identities() == []


def test_a_training_trace_with_two_values_of_a_feature_is_refused_by_name(service):
    traces = make_llm_traces(40)
    traces[7] = {**traces[7], "input_feature": [{"param_name": "input_tokens", "val": traces[7]["input_tokens"] + 1}]}
    with pytest.raises(InvalidInput, match=r"item 7: input_feature\[0\]: 'input_tokens' is given twice") as info:
        service.train(config(traces))
    assert info.value.field == "traces" and info.value.status_code == 422
    assert service.registry.identities() == []


def test_group_values_are_kept_apart_whatever_characters_they_hold(service):
    """Two groups whose values joined with a separator would read the same stay two models."""
    traces = make_llm_traces(120)
    for i, t in enumerate(traces):
        t["hardware"], t["software_version"] = ("a/b", "c") if i % 2 else ("a", "b/c")
    result = service.train(config(traces, group_by=["hardware", "software_version"]))
    keys = sorted(m["identity"]["hardware"] + "|" + m["identity"]["software_version"] for m in result["models"])
    assert keys == ["a/b|c", "a|b/c"]
    assert len(service.registry.identities()) == 2


def test_a_wildcard_group_value_is_refused(service):
    traces = [{**t, "hardware": "*"} for t in make_llm_traces(40)]
    with pytest.raises(InvalidInput, match="hardware '\\*'") as info:
        service.train(config(traces, group_by=["hardware"]))
    assert info.value.field == "traces"
    assert service.registry.identities() == []


@pytest.mark.parametrize("name, match", [
    ("missing.jsonl", "not found"),
    ("notes.txt", r"must be .json, .jsonl \(or .ndjson\) or .csv, optionally .gz"),
    ("bad.jsonl", r"bad\.jsonl: line 2"),
    ("", "non-empty"),
])
def test_bad_trace_files_are_invalid_input(service, name, match):
    (service.settings.data_dir / "notes.txt").write_text("hi")
    (service.settings.data_dir / "bad.jsonl").write_bytes(orjson.dumps(make_llm_traces(1)[0]) + b"\n{oops\n")
    with pytest.raises(InvalidInput, match=match) as info:
        service.train(config(name))
    assert info.value.field == "traces"
    assert info.value.status_code == 422


def test_train_errors_name_the_problem(service):
    with pytest.raises(InvalidInput, match="no traces"):
        service.train(config([]))
    with pytest.raises(InvalidInput, match="only 1 usable trace"):
        service.train(config(make_llm_traces(1)))
    with pytest.raises(InvalidInput, match="target field 'latency'"):
        service.train(config(make_llm_traces(20), target="latency"))
    with pytest.raises(InvalidInput, match="not found in the traces: nope"):
        service.train(config(make_llm_traces(20), features=["nope"]))
    with pytest.raises(InvalidInput, match=r"item 3"):
        service.train(config([*make_llm_traces(3), {"input_feature": "x"}]))
    assert service.registry.identities() == []


def test_unknown_parameters_are_refused_before_the_traces_are_read(service):
    cfg = TrainConfig.model_validate({"model": IDENTITY, "traces": "not/there.jsonl", "params": {"num_leafs": 7}})
    with pytest.raises(InvalidInput, match="params: unknown parameter 'num_leafs'") as info:
        service.train(cfg)
    assert info.value.field == "params"


def test_bad_algorithm_parameters_are_invalid_input(service):
    cfg = TrainConfig.model_validate({"model": IDENTITY, "traces": make_llm_traces(40), "algorithm": "lightgbm",
                                      "params": {"num_leaves": -3}})
    with pytest.raises(InvalidInput, match="LightGBM refuses 'num_leaves'") as info:
        service.train(cfg)
    assert info.value.field == "params"
    assert service.registry.identities() == []


# --------------------------------------------------------------------------- safe paths


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A perfectly good trace file that lies outside the data directory."""
    return write_jsonl_gz(tmp_path / "secret" / "x.jsonl.gz", make_llm_traces(50))


@pytest.mark.parametrize("name", ["../secret/x.jsonl.gz", "traces/../../secret/x.jsonl.gz", "..", "./../secret/x.jsonl.gz"])
def test_dot_dot_paths_are_refused(service, outside, name):
    with pytest.raises(InvalidInput, match="without '..'") as info:
        service.train(config(name))
    assert info.value.field == "traces"
    assert service.registry.identities() == []


def test_absolute_paths_are_refused_even_inside_the_data_dir(service, outside):
    inside = write_jsonl_gz(service.settings.data_dir / "ok.jsonl.gz", make_llm_traces(50))
    for path in (outside, inside):
        with pytest.raises(InvalidInput, match="relative to the data directory"):
            service.train(config(str(path)))
    assert service.registry.identities() == []


def test_symlinks_leading_outside_are_refused(service, outside):
    data = service.settings.data_dir
    (data / "link.jsonl.gz").symlink_to(outside)
    (data / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    for name in ("link.jsonl.gz", "linkdir/x.jsonl.gz"):
        with pytest.raises(InvalidInput, match="leads outside the data directory"):
            service.train(config(name))
    assert service.registry.identities() == []


def test_symlinks_within_the_data_dir_are_fine(service):
    data = service.settings.data_dir
    real = write_jsonl_gz(data / "archive" / "x.jsonl.gz", make_llm_traces(60))
    (data / "current.jsonl.gz").symlink_to(real)
    assert service.train(config("current.jsonl.gz"))["metrics"]["rows_used"] == 60


def test_safe_child(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert safe_child(root, "a/b.json") == (root / "a" / "b.json").resolve()
    for bad in ("/etc/passwd", "../x", "a/../../x", "a\x00b", "", "\ud800.jsonl"):
        with pytest.raises(InvalidInput):
            safe_child(root, bad)
    with pytest.raises(InvalidInput, match=re.escape("'a\\x00b' holds a NUL character")):  # not "must be non-empty"
        safe_child(root, "a\x00b")


# --------------------------------------------------------------------------- group_by


def grouped_traces():
    traces = []
    for k, (name, hw, scale) in enumerate([("llama", "A100", 1.0), ("llama", "H100", 0.5), ("qwen", "H100", 0.8)]):
        for t in make_llm_traces(60 + 20 * k, seed=k):
            traces.append({**t, "model_name": name, "hardware": hw, "runtime_ms": t["runtime_ms"] * scale})
    traces.append({**make_llm_traces(1)[0], "model_name": "orphan"})  # no hardware: belongs to no group
    return traces


def test_a_group_that_cannot_be_stored_takes_back_the_groups_stored_before_it(service):
    # The error says nothing was stored; group A's version stayed, and each retry added one.
    cfg = TrainConfig.model_validate({
        "model": {**IDENTITY, "model_name": "unused", "hardware": "unused"},
        "group_by": ["model_name", "hardware"], "traces": grouped_traces(), "algorithm": "linear",
    })
    blocked = ModelIdentity.from_parts({**IDENTITY, "model_name": "qwen", "hardware": "H100"})
    (service.settings.models_dir / blocked.dirname).parent.mkdir(parents=True, exist_ok=True)
    (service.settings.models_dir / blocked.dirname).write_text("a file where the model's folder goes")
    for _ in range(2):
        with pytest.raises(PredictorError) as err:
            service.train(cfg)
        assert "llm/qwen/H100" in err.value.message and "not stored" in err.value.message
        service.registry.refresh()
        assert service.registry.identities() == []
    (service.settings.models_dir / blocked.dirname).unlink()
    result = service.train(cfg)
    assert sorted(m["version"] for m in result["models"]) == [1, 3, 3]  # numbers once taken back are not given again


def test_group_by_drops_the_files_row_counter_from_every_group(service):
    # Each group's rows number with gaps in the file's counter: it was a feature of each
    # group's model, and a prediction without it was refused as missing a feature.
    traces = [{**t, "seq": i} for i, t in enumerate(grouped_traces()[:-1])]
    result = service.train(TrainConfig.model_validate({
        "model": {**IDENTITY, "model_name": "unused", "hardware": "unused"},
        "group_by": ["model_name", "hardware"], "traces": traces, "algorithm": "linear"}))
    for model in result["models"]:
        assert "seq" not in model["metrics"]["columns"]
        assert model["metrics"]["data"]["columns_dropped"]["seq"] == "a row counter (an index, not a feature)"
    assert predict(service, IdentityPattern(model_name="qwen", hardware="H100"), [{"input_tokens": 50, "output_tokens": 10}]).ok.all()


def test_group_by_trains_one_model_per_group(service):
    cfg = TrainConfig.model_validate({
        "model": {**IDENTITY, "model_name": "unused", "hardware": "unused"},
        "group_by": ["model_name", "hardware"],
        "traces": grouped_traces(),
        "algorithm": "linear",
    })
    result = service.train(cfg)
    keys = {m["model_key"]: m for m in result["models"]}
    assert sorted(keys) == ["llm/llama/A100/sglang/0.4.0", "llm/llama/H100/sglang/0.4.0", "llm/qwen/H100/sglang/0.4.0"]
    assert result["rows_in_no_group"] == 1  # the orphan without hardware, counted
    assert [keys[k]["metrics"]["rows_used"] for k in sorted(keys)] == [60, 80, 100]
    assert keys["llm/qwen/H100/sglang/0.4.0"]["identity"]["model_name"] == "qwen"
    assert "model_name" not in [f.name for f in service.registry.latest(
        ModelIdentity("llm", "llama", "A100", "sglang", "0.4.0")).features.features]
    # Each group learned its own scale: H100 is about half as slow as A100 for llama.
    a100 = predict(service, IdentityPattern(model_name="llama", hardware="A100")).quantiles[:, 1]
    h100 = predict(service, IdentityPattern(model_name="llama", hardware="H100")).quantiles[:, 1]
    assert np.all(h100 < 0.7 * a100) and np.all(h100 > 0.35 * a100)


def test_a_group_that_cannot_be_trained_leaves_no_other_group_stored(service):
    # The 422 used to come after the groups before it were stored: a retry made them again.
    traces = [{**t, "hardware": "A"} for t in make_llm_traces(20)] + [{**make_llm_traces(1)[0], "hardware": "B"}]
    with pytest.raises(InvalidInput, match="llm/Qwen%2FQwen2.5-7B/B/sglang/0.4.0: only 1 usable trace"):
        service.train(config(traces, group_by=["hardware"]))
    assert service.registry.identities() == []


def test_a_group_that_cannot_be_trained_is_found_before_any_group_is_fitted(service, monkeypatch):
    # 30 groups of 40 rows and one of 1 that sorts last took 17.5 s to answer the 422.
    from swarmpilot_predictor.modeling import QuantileModel

    fits = []
    real_fit = QuantileModel.fit
    monkeypatch.setattr(QuantileModel, "fit", lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k))
    traces = [{**t, "hardware": f"gpu{k % 3}"} for k, t in enumerate(make_llm_traces(60))]
    traces.append({**make_llm_traces(1)[0], "hardware": "zz-last"})
    with pytest.raises(InvalidInput, match="zz-last/sglang/0.4.0: only 1 usable trace"):
        service.train(config(traces, group_by=["hardware"]))
    assert fits == [] and service.registry.identities() == []


def test_csv_versions_that_read_alike_as_numbers_are_two_models(service):
    path = service.settings.data_dir / "versions.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{v},{t['input_tokens']},{t['output_tokens']},{t['runtime_ms']!r}"
            for v, t in zip(["2.1", "2.10"] * 30, make_llm_traces(60))]
    path.write_text("software_version,input_tokens,output_tokens,runtime_ms\n" + "\n".join(rows) + "\n")
    result = service.train(config("versions.csv", group_by=["software_version"], algorithm="linear"))
    assert sorted(m["identity"]["software_version"] for m in result["models"]) == ["2.1", "2.10"]
    assert [m["metrics"]["rows_used"] for m in result["models"]] == [30, 30]


# --------------------------------------------------------------------------- identity fields in traces

H100, A100 = IDENTITY, {**IDENTITY, "hardware": "A100"}


def test_training_keeps_only_the_traces_that_belong_to_the_model(service):
    # Half the traces say they ran on an A100, at twice the runtime: they are another model's.
    own = [{**t, "hardware": H100["hardware"], "software_version": "0.4.0"} for t in make_llm_traces(200, seed=1)]
    other = [{**t, "hardware": "A100", "runtime_ms": 2 * t["runtime_ms"]} for t in make_llm_traces(150, seed=2)]
    unstated = make_llm_traces(50, seed=3)
    result = service.train(config(own + other + unstated))
    data = result["metrics"]["data"]
    assert data["rows_total"] == 400 and data["rows_used"] == 250
    assert data["rows_dropped"] == {"hardware names another model": 150}
    with pytest.raises(InvalidInput, match="no trace belongs to .*each states another hardware .*group_by"):
        service.train(config(other))


def test_a_traces_identity_fields_fill_the_urls_wildcards_and_must_agree_with_it(service):
    service.train(config(make_llm_traces(120, seed=4)))
    service.train(TrainConfig.model_validate({"model": A100, "traces": [{**t, "runtime_ms": 2 * t["runtime_ms"]}
                                                                       for t in make_llm_traces(120, seed=5)],
                                              "algorithm": "linear"}))
    anywhere = IdentityPattern.from_parts({**IDENTITY, "hardware": "*"})
    with pytest.raises(AmbiguousModel):
        predict(service, anywhere, PROBE[:1])
    on_a100 = predict(service, anywhere, [{**PROBE[0], "hardware": "A100"}])
    assert on_a100.identity.hardware == "A100" and on_a100.ok.all()
    assert on_a100.quantiles[0, 1] == pytest.approx(predict(service, IdentityPattern.from_parts(A100), PROBE[:1])
                                                    .quantiles[0, 1])
    # A batch whose traces agree is narrowed the same way; one that names another model than
    # the one the URL (or the others) name fails alone.
    batch = predict(service, anywhere, [{**PROBE[0], "hardware": "A100"}, PROBE[1]], with_total=True)
    assert batch.identity.hardware == "A100" and batch.ok.tolist() == [True, True]
    mixed = predict(service, PATTERN, [PROBE[0], {**PROBE[1], "hardware": "A100"}, {**PROBE[1], "model_type": "llm"}])
    assert mixed.ok.tolist() == [True, False, True]
    assert mixed.errors[1] == f"the trace's hardware 'A100' names another model than {ModelIdentity(**H100).key}"
    alone = predict(service, PATTERN, [{**PROBE[0], "hardware": "A100"}])
    assert alone.ok.tolist() == [False] and "names another model" in alone.errors[0]
    structured = {"input_feature": [{"param_name": "input_tokens", "val": 500}, {"param_name": "output_tokens", "val": 20},
                                    {"param_name": "hardware", "val": "A100"}]}
    assert predict(service, PATTERN, [structured]).ok.tolist() == [False]
    # The scheduler's structured form states them too.
    as_structured = {"input_feature": [{"param_name": "input_tokens", "val": 500},
                                       {"param_name": "output_tokens", "val": 20}, {"param_name": "hardware", "val": "A100"}]}
    assert predict(service, anywhere, [as_structured, as_structured]).identity.hardware == "A100"
    with pytest.raises(ModelNotFound, match="with the traces' hardware 'B200'") as missing:
        predict(service, anywhere, [{**PROBE[0], "hardware": "B200"}])
    assert missing.value.field == "identity"
    # Traces that name two models are a conflict naming both, not a model that is missing.
    with pytest.raises(AmbiguousModel, match="the traces name different models") as conflict:
        predict(service, anywhere, [{**PROBE[0], "hardware": "A100"}, {**PROBE[1], "hardware": H100["hardware"]}])
    assert conflict.value.extra["candidates"] == sorted([ModelIdentity(**A100).key, ModelIdentity(**H100).key])
    assert conflict.value.field == "identity"
    # One of them names no model: the model the other names answers, and it fails alone (the
    # whole batch was a 404), as does a trace that cannot be read but names it by its fields.
    some = predict(service, anywhere, [{**PROBE[0], "hardware": "A100"}, {**PROBE[1], "hardware": "B200"},
                                       {"hardware": "A100", "input_feature": "not a list"}])
    assert some.identity.hardware == "A100" and some.ok.tolist() == [True, False, False]
    assert "'B200' names another model" in some.errors[1] and "input_feature must be a list" in some.errors[2]
    # A batch's values are named five at most.
    with pytest.raises(ModelNotFound, match=r"hardware 'g0' and 'g1' and 'g2' and 'g3' and 'g4' and 995 more$"):
        predict(service, anywhere, [{**PROBE[0], "hardware": f"g{i}"} for i in range(1000)])
    # Observations of another model are not this one's evidence.
    seen = service.observe(H100, [{**PROBE[0], "runtime_ms": 90.0}, {**PROBE[0], "hardware": "A100", "runtime_ms": 90.0}])
    assert seen["accepted"] == 1 and "names another model" in seen["rejected"][0]["message"]


def test_a_traces_identity_fields_settle_a_wildcard_that_one_model_matches_as_one_that_several_do(service):
    # With one model stored, a trace naming hardware no model has was that trace's own error
    # (a 422 for a single prediction), and a 404 once a second model was trained: the answer
    # depended on what else the registry held.
    service.train(config(make_llm_traces(120, seed=4)))
    anywhere = IdentityPattern.from_parts({**IDENTITY, "hardware": "*"})
    with pytest.raises(ModelNotFound, match="no trained model matches .* with the traces' hardware 'A100'") as missing:
        predict(service, anywhere, [{**PROBE[0], "hardware": "A100"}])
    assert missing.value.field == "identity" and missing.value.status_code == 404
    assert service.resolve_for(anywhere, [PROBE[0]]) == anywhere  # no identity field: nothing to settle
    with pytest.raises(ModelNotFound, match="with the traces' hardware 'A100'"):
        service.resolve_for(anywhere, [{**PROBE[0], "hardware": "A100"}])
    # Traces of which some name the one model: it answers, the others fail alone.
    some = predict(service, anywhere, [{**PROBE[0], "hardware": H100["hardware"]}, {**PROBE[1], "hardware": "A100"}],
                   with_total=True)
    assert some.identity.hardware == H100["hardware"] and some.ok.tolist() == [True, False]
    assert "'A100' names another model" in some.errors[1]
    assert service.resolve_for(anywhere, [{**PROBE[0], "hardware": H100["hardware"]}]).hardware == H100["hardware"]
    # A URL that names the hardware is answered by that model: the trace fails on its own.
    alone = predict(service, PATTERN, [{**PROBE[0], "hardware": "A100"}])
    assert alone.ok.tolist() == [False] and "names another model" in alone.errors[0]
    # The same answers once a second model matches the wildcard.
    service.train(config(make_llm_traces(120, seed=5), model={**IDENTITY, "hardware": "B200"}))
    with pytest.raises(ModelNotFound, match="with the traces' hardware 'A100'"):
        predict(service, anywhere, [{**PROBE[0], "hardware": "A100"}])


def test_training_and_prediction_read_a_boolean_identity_field_alike(service):
    traces = [{**t, "hardware": True} for t in make_llm_traces(60)]
    result = service.train(TrainConfig.model_validate({"model": {**IDENTITY, "hardware": "true"}, "traces": traces,
                                                       "algorithm": "linear"}))
    assert result["metrics"]["data"]["rows_used"] == 60
    pred = predict(service, IdentityPattern.from_parts({**IDENTITY, "hardware": "true"}), [{**PROBE[0], "hardware": True}])
    assert pred.ok.all()
    with pytest.raises(InvalidInput, match="each states another hardware"):
        service.train(config(traces))  # hardware "NVIDIA H100 80GB HBM3"


def test_a_number_in_a_trace_names_the_version_group_by_named_after_it(service):
    # group_by names a model after the number as training reads it ("2", from 2.0); a trace
    # stating 2.0 or 2 names that model.
    traces = [{**t, "software_version": 2.0 if i % 2 else 3} for i, t in enumerate(make_llm_traces(120))]
    service.train(config(traces, group_by=["software_version"]))
    anywhere = IdentityPattern.from_parts({**IDENTITY, "software_version": "*"})
    assert {i.software_version for i in service.registry.identities()} == {"2", "3"}
    for stated in (2.0, 2, "2"):
        pred = predict(service, anywhere, [{**PROBE[0], "software_version": stated}])
        assert pred.identity.software_version == "2" and pred.ok.all()


def test_group_by_with_a_model_that_gives_only_the_other_parts(service):
    parts = {k: v for k, v in IDENTITY.items() if k not in ("model_name", "hardware")}
    result = service.train(TrainConfig.model_validate({"model": parts, "group_by": ["model_name", "hardware"],
                                                       "traces": grouped_traces(), "algorithm": "linear"}))
    assert sorted(m["model_key"] for m in result["models"]) == [
        "llm/llama/A100/sglang/0.4.0", "llm/llama/H100/sglang/0.4.0", "llm/qwen/H100/sglang/0.4.0"]
    # Without group_by the model names all five parts.
    with pytest.raises(ValidationError, match="model\n.*needs model_name, hardware"):
        TrainConfig.model_validate({"model": parts, "traces": grouped_traces()})


def test_group_by_needs_the_keys_and_the_rest_of_the_identity(service):
    base = {"traces": grouped_traces(), "algorithm": "linear"}
    with pytest.raises(InvalidInput, match="neither in group_by nor in model"):
        service.train(TrainConfig.model_validate({**base, "group_by": ["model_name", "hardware"]}))
    with pytest.raises(InvalidInput, match="software_version are neither in group_by nor in model"):
        service.train(TrainConfig.model_validate({**base, "model": {"model_type": "llm", "software_name": "s"},
                                                  "group_by": ["model_name", "hardware"]}))
    with pytest.raises(InvalidInput, match="group_by key.*software_version"):
        service.train(TrainConfig.model_validate({**base, "model": IDENTITY, "group_by": ["software_version"]}))


# --------------------------------------------------------------------------- prediction and resolution


@pytest.fixture
def two_models(service) -> PredictorService:
    service.train(config(make_llm_traces(150)))
    service.train(TrainConfig.model_validate({
        "model": {**IDENTITY, "model_name": "llama-3-8b", "hardware": "A100"},
        "traces": make_llm_traces(150, seed=1), "algorithm": "empirical",
    }))
    return service


def test_partial_identity_resolves_to_the_single_match(two_models):
    pred = predict(two_models, IdentityPattern(hardware="A100"))
    assert pred.identity.model_name == "llama-3-8b"
    pred = predict(two_models, IdentityPattern(model_type="llm", hardware=IDENTITY["hardware"]))
    assert pred.identity.model_name == IDENTITY["model_name"]


def test_no_match_is_404_naming_the_pattern(two_models):
    with pytest.raises(ModelNotFound, match=r"llm/\*/TPU v5/\*/\*") as info:
        predict(two_models, IdentityPattern(model_type="llm", hardware="TPU v5"))
    assert info.value.status_code == 404


def test_several_matches_are_409_naming_the_candidates(two_models):
    with pytest.raises(AmbiguousModel) as info:
        predict(two_models, IdentityPattern(model_type="llm"))
    err = info.value
    assert err.status_code == 409
    expected = sorted(["llm/llama-3-8b/A100/sglang/0.4.0", ModelIdentity.from_parts(IDENTITY).key])
    assert err.extra["candidates"] == expected
    for key in expected:
        assert key in err.message


def test_prediction_shapes_and_order(service):
    service.train(config(make_llm_traces(200)))
    traces = [PROBE[0], {"input_tokens": 3}, {"input_feature": [{"param_name": "input_tokens", "val": 10},
                                                                  {"param_name": "output_tokens", "val": 300}]}, "junk"]
    pred = predict(service, traces=traces, quantiles=[0.9, 0.1, 0.5], confidence_level=0.8, with_total=True)
    assert pred.ok.tolist() == [True, False, True, False]
    assert pred.errors[1] == "missing required feature 'output_tokens'"
    assert "JSON object" in pred.errors[3]
    body = pred.batch_response()
    assert body["summary"] == {**body["summary"], "total": 4, "success": 2, "failed": 2, "confidence_level": 0.8}
    ok = [r for r in body["results"] if r["status"] == "success"]
    for r in ok:
        # Levels asked in any order are answered in increasing order, with non-decreasing quantiles.
        assert r["quantiles"] == [0.1, 0.5, 0.9]
        at = dict(zip(r["quantiles"], r["quantile_predictions"]))
        assert at[0.1] < at[0.5] < at[0.9]
        # The central 80% interval runs from the 10% to the 90% quantile.
        low, high = r["interval"]
        assert low == pytest.approx(at[0.1], rel=1e-6) and high == pytest.approx(at[0.9], rel=1e-6)
        assert r["expect"] > 0 and r["error"] > 0
    assert body["expect"] == pytest.approx(sum(r["expect"] for r in ok))
    # The variance of the sum of independent tasks (the contract's)...
    assert body["error"] == pytest.approx(np.sqrt(sum(r["error"] ** 2 for r in ok)), rel=1e-6)
    # ... or, asked for, times the model's factor common to all of them, less the part of it
    # that the tasks' own distributions already hold (the squares of their shares of the mean).
    tau = service.registry.load(pred.identity).model.shared_log_sd_
    assert 0 < tau < 0.05
    shares = np.array([r["expect"] for r in ok]) / body["expect"]
    tau *= np.sqrt(1 - shares @ shares)
    shared = predict(service, traces=traces, quantiles=[0.9, 0.1, 0.5], confidence_level=0.8, with_total=True,
                     shared_factor=True).batch_response()
    var = np.exp(tau**2) * sum(r["error"] ** 2 for r in ok) + np.expm1(tau**2) * body["expect"] ** 2
    assert shared["error"] == pytest.approx(np.sqrt(var), rel=1e-6)
    assert body["results"][1] == {"status": "error", "message": "missing required feature 'output_tokens'",
                                  "model_info": ModelIdentity.from_parts(IDENTITY).model_info()}


def test_a_device_training_never_saw_is_answered_among_the_known_ones(service):
    rng = np.random.default_rng(5)
    speed = {"T4": 1.0, "L4": 2.0, "A100": 4.0, "H100": 8.0, "H200": 16.0}
    names = list(speed)
    traces = [{"device": d, "output_tokens": int(o), "runtime_ms": speed[d] * (5 + 0.1 * o) * float(rng.lognormal(0, 0.2))}
              for d, o in zip(rng.choice(names, 500), rng.integers(10, 500, 500))]
    metrics = service.train(config(traces))["metrics"]
    assert set(metrics["unseen_categories"]) == {"device"}
    assert metrics["unseen_categories"]["device"]["log_sd"] == pytest.approx(np.log(2) * np.sqrt(3.0), rel=0.1)
    probe = [{"device": d, "output_tokens": 100} for d in [*names, "B200"]]
    body = predict(service, traces=probe, quantiles=[0.05, 0.5, 0.95]).batch_response()
    known = [r["quantile_predictions"][1] for r in body["results"][:5]]
    low, median, high = body["results"][5]["quantile_predictions"]
    assert median == pytest.approx(known[2], rel=0.1) and low < min(known) and high > max(known)
    assert body["results"][5]["error"] > 3 * body["results"][2]["error"]


def test_an_answer_names_the_features_whose_value_training_never_saw(service):
    traces = make_llm_traces(200)
    for i, t in enumerate(traces):
        t["gpu"] = ["a", "b", "c"][i % 3]
        if i % 10 == 0:
            del t["gpu"]  # training had gaps: a trace may have one too, and is not flagged for it
    service.train(config(traces))
    low, high = min(t["input_tokens"] for t in traces), max(t["input_tokens"] for t in traces)
    probe = [{"input_tokens": low, "output_tokens": 50, "gpu": "a"},  # at the edge: within
             {"input_tokens": high + 1, "output_tokens": 50, "gpu": "a"},
             {"input_tokens": 100, "output_tokens": 50, "gpu": "zz"},
             {"input_tokens": low - 1, "output_tokens": 10**6, "gpu": "zz"},
             {"input_tokens": 100, "output_tokens": 50}]
    want = [None, ["input_tokens"], ["gpu"], ["input_tokens", "output_tokens", "gpu"], None]
    batch = predict(service, traces=probe, with_total=True).batch_response()
    assert [r.get("outside_training") for r in batch["results"]] == want
    # Alone (the single-row path), from the cache, and several at once (coalesced): the same.
    for _ in range(2):
        assert [predict(service, traces=[t]).single_response()["results"].get("outside_training")
                for t in probe] == want
    assert [p.single_response()["results"].get("outside_training") for p in service.predict_each(PATTERN, probe * 4)] \
        == want * 4
    # A model stored before the ranges were kept flags unseen categories only.
    meta_path = next((service.settings.data_dir / "models").glob("*/v0001.meta.json"))
    meta = orjson.loads(meta_path.read_bytes())
    for f in meta["features"]:  # (a list of specs: this model derives no first_of_shape)
        f.pop("range", None)
    meta["extra"].pop("model_sha256", None)
    meta_path.write_bytes(orjson.dumps(meta))
    fresh = PredictorService(service.settings)
    try:
        old = fresh.predict(PATTERN, probe).batch_response()
        assert [r.get("outside_training") for r in old["results"]] == [None, None, ["gpu"], ["gpu"], None]
    finally:
        fresh.close()


def test_an_answer_names_a_field_training_saw_one_value_of_when_a_trace_gives_another(service):
    # Trained where max_tokens was always 512 (dropped as constant: no column reads it), a
    # trace asking 4,096 was answered as any other, saying nothing (a real LLM trace's case).
    traces = [{**t, "max_tokens": 512, "gpu": "H20"} for t in make_llm_traces(200)]
    m = service.train(config(traces))["metrics"]
    assert m["data"]["columns_dropped"] == {"max_tokens": "constant", "gpu": "constant"}
    probe = [{"input_tokens": 100, "output_tokens": 50, "max_tokens": 512, "gpu": "H20"},
             {"input_tokens": 100, "output_tokens": 50, "max_tokens": 4096, "gpu": "H20"},
             {"input_tokens": 100, "output_tokens": 50, "max_tokens": "512", "gpu": "A100"},
             {"input_tokens": 100, "output_tokens": 50}]  # not given: nothing to say
    want = [None, ["max_tokens"], ["gpu"], None]
    batch = predict(service, traces=probe, with_total=True).batch_response()
    assert [r.get("outside_training") for r in batch["results"]] == want
    # The same median whatever max_tokens says (no column reads it), alone and from the cache too.
    assert len({r["quantile_predictions"][1] for r in batch["results"]}) == 1
    for _ in range(2):
        assert [predict(service, traces=[t]).single_response()["results"].get("outside_training")
                for t in probe] == want
    assert [p.single_response()["results"].get("outside_training") for p in service.predict_each(PATTERN, probe)] == want
    # Stored with the version, beside its features (whose form a service older than this reads).
    meta = orjson.loads(next((service.settings.data_dir / "models").glob("*/v0001.meta.json")).read_bytes())
    assert isinstance(meta["features"], list) and meta["constants"] == [["max_tokens", 512.0], ["gpu", "H20"]]
    fresh = PredictorService(service.settings)
    try:
        assert [r.get("outside_training") for r in fresh.predict(PATTERN, probe).batch_response()["results"]] == want
    finally:
        fresh.close()


def test_default_quantiles_come_from_the_training_config(service):
    service.train(config(make_llm_traces(100), quantiles=[0.99, 0.5, 0.5]))
    pred = predict(service)
    assert pred.levels == [0.5, 0.99]  # sorted, deduplicated
    assert pred.quantiles.shape == (2, 2)


def test_versions_and_deletion(service):
    service.train(config(make_llm_traces(100)))
    service.train(config(make_llm_traces(100, seed=5)))
    detail = service.model_detail(IdentityPattern(hardware=IDENTITY["hardware"]))
    assert detail["versions"] == [1, 2] and detail["latest_version"] == 2
    assert [v["version"] for v in detail["version_details"]] == [1, 2]
    assert service.model_detail(PATTERN, 1)["version"] == 1
    with pytest.raises(NotFound):
        service.model_detail(PATTERN, 3)
    with pytest.raises(InvalidInput, match=r"'\*' is not allowed"):
        service.delete_model(IdentityPattern(model_type="llm"))
    assert service.delete_model(PATTERN, 1)["deleted_versions"] == [1]
    assert predict(service).version == 2
    assert service.delete_model(PATTERN)["deleted_versions"] == [2]
    with pytest.raises(ModelNotFound):
        predict(service)


def test_a_delete_that_cannot_remove_the_observations_says_what_was_deleted(service, monkeypatch):
    # A read-only observations folder (which a test cannot mount): the model's versions were
    # deleted, and the answer was a 500 "internal error: PermissionError".
    service.train(config(make_llm_traces(100)))
    service.observe(IDENTITY, make_llm_traces(20, seed=3))
    logs = sorted((service.settings.data_dir / "observations").rglob("obs-*.jsonl"))
    assert len(logs) == 1
    refuse_unlink(monkeypatch, lambda path: path.name.startswith("obs-"))
    with pytest.raises(StorageError, match=r"model .*0\.4\.0 was deleted \(versions 1\), but not its observations "
                                           r".*\(Read-only file system\)") as info:
        service.delete_model(PATTERN)
    assert info.value.status_code == 500
    monkeypatch.undo()
    with pytest.raises(ModelNotFound):
        predict(service)
    assert logs[0].exists()  # left, as the answer says


def test_a_version_the_training_worker_stored_is_indexed_without_rescanning_every_model(tmp_path, monkeypatch):
    # The serving process takes in what its training worker stored from the registry's change
    # log, as any other worker does: re-reading the model's folder alone made its next request
    # rescan every model folder (with 3,000 models, the first prediction after each /train
    # took 99-173 ms, on the event loop).
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    try:
        svc.train(TrainConfig(model={**IDENTITY, "hardware": "A100"}, traces=make_llm_traces(60), algorithm="linear"))
        svc.registry.maybe_refresh()  # (the change log was made by that training: read whole once)
        rescans = []
        real = svc.registry._refresh_all
        monkeypatch.setattr(svc.registry, "_refresh_all", lambda: (rescans.append(1), real())[1])
        _, job = svc.jobs.submit(TrainConfig(model=IDENTITY, traces=make_llm_traces(60), algorithm="linear"))
        assert job.result(timeout=120)["version"] == 1
        assert svc.predict(IdentityPattern.from_parts(IDENTITY), make_llm_traces(1)).ok[0]
        assert [i.hardware for i in svc.registry.identities()] == ["A100", IDENTITY["hardware"]]
        assert rescans == []
    finally:
        svc.close()


def test_a_version_the_training_worker_stored_serves_even_where_the_change_log_s_time_did_not_move(tmp_path, monkeypatch):
    # A file system that keeps file times to the second leaves the change log's time where it
    # was after two changes in one second: the training's answer named a version that this
    # process would not serve until the next change.
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    try:
        svc.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(60), algorithm="linear"))
        svc.registry.maybe_refresh()
        stuck = svc.registry._generation()
        monkeypatch.setattr(svc.registry, "_generation", lambda: stuck)
        _, job = svc.jobs.submit(TrainConfig(model=IDENTITY, traces=make_llm_traces(60, seed=1), algorithm="linear"))
        assert job.result(timeout=120)["version"] == 2
        assert svc.predict(IdentityPattern.from_parts(IDENTITY), make_llm_traces(1)).results()[0]["model_version"] == 2
    finally:
        svc.close()


def test_list_models_and_prediction_counts(two_models):
    predict(two_models, traces=[*PROBE, {"input_tokens": 1}])  # 2 predicted, 1 failed
    entries = {(e["model_type"], e["model_name"]): e for e in two_models.list_models()}
    qwen = entries[("llm", IDENTITY["model_name"])]
    assert qwen["total_predictions"] == 2
    assert qwen["hardware_types"] == [IDENTITY["hardware"]]
    assert qwen["software_versions"] == ["sglang/0.4.0"]
    (model,) = qwen["models"]
    assert model["samples"] == 150 and model["versions"] == [1] and model["algorithm"] == "linear"
    assert [f["name"] for f in model["features"]] == ["input_tokens", "output_tokens"]
    assert entries[("llm", "llama-3-8b")]["total_predictions"] == 0
    health = two_models.health()
    assert health["status"] == "healthy" and health["models_registered"] == 2


def test_a_model_deleted_while_models_are_listed_is_left_out_not_an_error(two_models, monkeypatch):
    # Another request (or worker) deleted it between the listing's snapshot of identities and
    # its description: the whole listing was a 400 "no model ...", and the dashboard empty.
    listed = two_models.registry.identities()
    gone = next(i for i in listed if i.model_name == "llama-3-8b")
    two_models.delete_model(IdentityPattern.from_parts(gone.as_dict()))
    monkeypatch.setattr(two_models.registry, "identities", lambda: listed)  # the snapshot taken before
    entries = two_models.list_models()
    assert [(e["model_name"], len(e["models"])) for e in entries] == [(IDENTITY["model_name"], 1)]
    with pytest.raises(ModelNotFound) as err:  # GET /models/{id} resolved just before the delete
        two_models.describe_model(gone)
    assert err.value.status_code == 404 and err.value.field == "identity"


def test_first_runs_of_an_input_shape_are_predicted_slow_and_repeats_fast(tmp_path):
    traces, _ = cold_start_traces(600)
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=100))
    m = svc.train(config(traces, algorithm="auto"))["metrics"]
    assert m["data"]["columns_derived"] == {"first_of_shape": "first run of its shape (batch_size, image_size) by 'ts'"}
    assert m["columns"] == ["batch_size", "image_size", "load", "first_of_shape"]
    assert 3 not in m.get("features_dropped", [])  # the model kept the flag
    later = traces[-1]["ts"] + 60
    probe = [
        {"batch_size": 8, "image_size": 448, "load": 0.5, "ts": later},  # ran in training: warm
        {"batch_size": 8, "image_size": 448, "load": 0.5},  # no timestamp: after all of training
        {"batch_size": 8, "image_size": 448, "load": 0.5, "ts": 0.0},  # before training began: cold
        {"batch_size": 16, "image_size": 360, "load": 0.5, "ts": later},  # a size that never ran: cold
        {"batch_size": 8, "image_size": 448, "load": 0.5, "first_of_shape": True},  # the caller knows: cold
    ]
    for _ in range(2):  # the second round answers from the cache, which must tell the timestamps apart
        median = np.array([svc.predict(PATTERN, [t], quantiles=[0.5]).quantiles[0, 0] for t in probe])
        assert median[0] == pytest.approx(0.01 * 8 * 448, rel=0.1) and median[1] == median[0]
        assert median[2] == pytest.approx(10 * 0.01 * 8 * 448, rel=0.25)
        assert 5 * 0.01 * 16 * 360 < median[3] < 20 * 0.01 * 16 * 360
        assert median[4] == median[2]
    np.testing.assert_allclose(svc.predict(PATTERN, probe, quantiles=[0.5]).quantiles[:, 0], median, rtol=1e-6)
    bad = svc.predict(PATTERN, [{**probe[0], "first_of_shape": "no"}])
    assert bad.errors == ["'first_of_shape' must be true or false, got 'no'"]
    derived = {"name": "first_of_shape", "kind": "derived", "shape": ["batch_size", "image_size"],
               "timestamp": "ts", "shapes_seen": 20}
    identity = ModelIdentity.from_parts(IDENTITY)
    assert svc.describe_model(identity)["features"][-1] == derived
    # A version's detail summarises the table of shapes instead of listing it.
    assert svc.model_detail(PATTERN, version=1)["features"][-1] == derived
    svc.close()
    again = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    np.testing.assert_allclose(again.predict(PATTERN, probe, quantiles=[0.5]).quantiles[:, 0], median, rtol=1e-9)
    again.close()


def test_autotuned_first_runs_are_answered_by_a_model_of_their_own(tmp_path):
    # A shape's first run takes what the autotuner takes, 700 to 1,200 ms whatever the
    # shape (or as fast as a repeat): the first runs get their own model, chosen on held-out rows.
    traces, _ = autotuned_traces(40, 600, seed=1)
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    m = svc.train(config(traces, algorithm="auto"))["metrics"]
    split = m["regime_split"]
    assert split["split"] is True and split["column"] == 2 and split["rows"][1] == 40
    assert split["pinball_loss"] < split["pooled_pinball_loss"]
    # Model listings name each kind's family beside the model of all rows'.
    entry = svc.describe_model(ModelIdentity.from_parts(IDENTITY))
    assert entry["first_run_split"] == {"repeats": split["models"][0]["algorithm"],
                                        "first_runs": split["models"][1]["algorithm"]}
    assert entry["algorithm"] == m["algorithm"]
    probe = [{"batch_size": 1, "image_size": 128, "first_of_shape": True},
             {"batch_size": 64, "image_size": 576, "first_of_shape": True},
             {"batch_size": 64, "image_size": 576, "first_of_shape": False}]
    median = np.array([svc.predict(PATTERN, [t], quantiles=[0.5]).quantiles[0, 0] for t in probe])  # one at a time
    assert 700 < median[0] < 1200 and 700 < median[1] < 1200  # not scaled by the shape
    assert median[2] == pytest.approx(0.003 * 64 * 576, rel=0.1)
    batch = svc.predict(PATTERN, probe, quantiles=[0.5], with_total=True)
    np.testing.assert_allclose(batch.quantiles[:, 0], median, rtol=1e-6)
    assert batch.total["expect"] == pytest.approx(batch.mean.sum())
    # A lookup table of first runs and repeats holds each one's own answer.
    path = tmp_path / "probe.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(t) for t in probe))
    assert svc.generate_table(PATTERN, path, 0.9, "probe.json")["rows"] == 3
    table = svc.predict(PATTERN, probe, quantiles=[0.5], lookup_table=True, lookup_table_name="probe.json")
    np.testing.assert_allclose([r["quantile_predictions"][0] for r in table.results()], median, rtol=1e-6)
    svc.close()
    again = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    np.testing.assert_array_equal(again.predict(PATTERN, probe, quantiles=[0.5]).quantiles[:, 0],
                                  batch.quantiles[:, 0])
    again.close()


def test_a_first_run_flag_the_traces_carry_gets_a_model_for_each_kind_of_run_too(tmp_path):
    # A scheduler that knows which runs were first sends the flag itself (no timestamps):
    # it was an ordinary feature, and the model of all rows gave repeats the tail of the
    # first runs (a real vision trace: q0.999 of a 5 ms repeat 3 s, its mean above its q0.99).
    traces, firsts = autotuned_traces(40, 600, seed=1)
    own = [{"batch_size": t["batch_size"], "image_size": t["image_size"], "first_of_shape": f,
            "runtime_ms": t["runtime_ms"]} for t, f in zip(traces, firsts)]
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    m = svc.train(config(own, algorithm="auto"))["metrics"]
    assert m["data"]["columns_not_derived"]["first_of_shape"] == "the traces hold a 'first_of_shape' feature of their own"
    split = m["regime_split"]
    assert split["split"] is True and split["column"] == 2 and split["rows"][1] == 40
    probe = [{"batch_size": 1, "image_size": 128, "first_of_shape": True},
             {"batch_size": 64, "image_size": 576, "first_of_shape": False}]
    q = svc.predict(PATTERN, probe, quantiles=[0.5, 0.99, 0.999]).quantiles
    assert 700 < q[0, 0] < 1200
    assert q[1, 0] == pytest.approx(0.003 * 64 * 576, rel=0.1) and q[1, 2] < 2 * q[1, 0]  # a repeat's own tail
    # Read as a stated flag is: 1 or 0, true or false; not stated, a repeat (as a lookup table
    # made from the model reads it); anything else an error naming the field.
    asked = [{"batch_size": 64, "image_size": 576}, {"batch_size": 64, "image_size": 576, "first_of_shape": 0.51}]
    got = svc.predict(PATTERN, asked, quantiles=[0.5])
    assert got.quantiles[0, 0] == q[1, 0]
    assert got.errors[1] == "'first_of_shape' must be true or false, got 0.51"
    assert predict(svc, traces=[asked[1]]).errors == [got.errors[1]]  # alone too
    path = tmp_path / "probe.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(t) for t in [*probe, asked[0]]))
    svc.generate_table(PATTERN, path, 0.9, "own.json")
    table = svc.predict(PATTERN, [*probe, asked[0]], quantiles=[0.5], lookup_table=True, lookup_table_name="own.json")
    np.testing.assert_allclose([r["quantile_predictions"][0] for r in table.results()], [*q[:, 0], q[1, 0]], rtol=1e-6)
    svc.close()
    again = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    np.testing.assert_array_equal(again.predict(PATTERN, probe, quantiles=[0.5, 0.99, 0.999]).quantiles, q)
    again.close()


def test_a_restarted_service_predicts_identically(two_models):
    before = predict(two_models).quantiles
    again = PredictorService(PredictorSettings(data_dir=two_models.settings.data_dir))
    np.testing.assert_array_equal(predict(again).quantiles, before)
    assert [i.key for i in again.registry.identities()] == [i.key for i in two_models.registry.identities()]


def test_upload_temp_dirs_and_stray_files_do_not_disturb_start_up(tmp_path):
    data = tmp_path / "data"
    first = PredictorService(PredictorSettings(data_dir=data))
    first.train(config(make_llm_traces(80)))
    (data / "upload-abc123").mkdir()
    (data / "models" / "README").write_text("not a model")
    os.makedirs(data / "models" / "half-written", exist_ok=True)
    again = PredictorService(PredictorSettings(data_dir=data))
    assert [i.key for i in again.registry.identities()] == [ModelIdentity.from_parts(IDENTITY).key]


@pytest.mark.parametrize("n", [4, 30])  # below and above ROW_PATH_MAX_BATCH
def test_predict_each_matches_one_by_one_with_and_without_cache(tmp_path, n):
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import ROW_PATH_MAX_BATCH
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    assert n != ROW_PATH_MAX_BATCH
    traces = [{"input_tokens": 11 * i + 3, "output_tokens": i + 1} for i in range(n)] + [{"input_tokens": 1}]
    for cache_size in (0, 100):
        svc = PredictorService(PredictorSettings(data_dir=tmp_path / f"d{cache_size}", cache_size=cache_size))
        svc.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(150), algorithm="linear"))
        pattern = IdentityPattern.from_parts(IDENTITY)
        svc.predict(pattern, [traces[3]])  # one of them already cached
        each = svc.predict_each(pattern, traces)
        for trace, pred in zip(traces, each):
            alone = svc.predict(pattern, [trace]).single_response()["results"]
            got = pred.single_response()["results"]
            assert got["status"] == alone["status"]
            if got["status"] == "success":
                # Same numbers up to rounding: summation order, and a one-row batch takes the
        # exact moment formula where a batch interpolates a table (1e-7 apart).
                for key in ("quantile_predictions", "interval", "expect", "error"):
                    assert got[key] == pytest.approx(alone[key], rel=1e-6)
        assert each[-1].ok.tolist() == [False] and "output_tokens" in each[-1].errors[0]
        svc.close()


def test_predict_each_looks_each_trace_up_in_the_cache_once(tmp_path):
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=100))
    svc.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(150), algorithm="linear"))
    pattern = IdentityPattern.from_parts(IDENTITY)
    traces = [{"input_tokens": 11 * i + 3, "output_tokens": i + 1} for i in range(30)]
    svc.predict_each(pattern, traces[:29])
    before = svc.cache_stats()
    svc.predict_each(pattern, traces)  # 29 cached, one new
    after = svc.cache_stats()
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (29, 1)
    svc.close()


def test_the_cache_keeps_only_small_entries(tmp_path):
    # Bounded by entries, the cache must not hold a 5 MB category (a valid, unseen one) per entry.
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    traces = [{**t, "zone": "ab"[i % 2]} for i, t in enumerate(make_llm_traces(150))]
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=100))
    svc.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
    pattern = IdentityPattern.from_parts(IDENTITY)
    svc.predict(pattern, [{"input_tokens": 10, "output_tokens": 5, "zone": "a"}])
    assert svc.cache_stats()["entries"] == 1
    huge = svc.predict(pattern, [{"input_tokens": 10, "output_tokens": 5, "zone": "z" * 300}])
    many = svc.predict(pattern, [{"input_tokens": 10, "output_tokens": 5, "zone": "a"}], 0.9,
                       [k / 100 for k in range(1, 100)])
    assert huge.ok.tolist() == many.ok.tolist() == [True]
    assert svc.cache_stats()["entries"] == 1
    svc.close()


def test_the_cache_tells_a_boolean_from_the_number_one(tmp_path):
    # True == 1 in Python, with one hash: whichever was asked first answered for the other,
    # though a model that learned the words true/false (from CSV) reads JSON's true as
    # "true" and the number 1 as an unseen category.
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    traces = [{**t, "flag": ["true", "false"][i % 2], "runtime_ms": t["runtime_ms"] * (2 if i % 2 == 0 else 1)}
              for i, t in enumerate(make_llm_traces(300))]
    pattern = IdentityPattern.from_parts(IDENTITY)
    medians = {}
    for cache_size in (0, 100):
        svc = PredictorService(PredictorSettings(data_dir=tmp_path / f"d{cache_size}", cache_size=cache_size))
        svc.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
        for order in ([1, True, 0, False], [True, 1, False, 0]):
            svc.clear_cache()
            for v in order:
                got = svc.predict(pattern, [{"input_tokens": 500, "output_tokens": 50, "flag": v}], quantiles=[0.5])
                medians.setdefault(repr(v), set()).add(round(float(got.quantiles[0, 0]), 6))
        svc.close()
    assert all(len(answers) == 1 for answers in medians.values()), medians
    assert medians["True"] != medians["1"] and medians["False"] != medians["0"]


@pytest.mark.parametrize("algorithm", ["empirical", "linear", "power", "lightgbm"])
def test_a_lone_trace_gets_the_same_answer_as_inside_a_batch(tmp_path, algorithm):
    # A single trace takes the model's plain-float path (LightGBM: the vectorised one);
    # a batch takes the vectorised path. Both must describe the same distribution.
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=0))
    svc.train(config(make_llm_traces(300), algorithm=algorithm))
    for trace in PROBE:
        alone = svc.predict(PATTERN, [trace], 0.9, [0.05, 0.5, 0.99, 0.7])
        batch = svc.predict(PATTERN, [trace, {"input_tokens": 5, "output_tokens": 900}], 0.9, [0.05, 0.5, 0.99, 0.7])
        np.testing.assert_allclose(alone.quantiles[0], batch.quantiles[0], rtol=1e-9)
        np.testing.assert_allclose(alone.interval[0], batch.interval[0], rtol=1e-9)
        assert alone.mean[0] == pytest.approx(batch.mean[0], rel=1e-6)
        assert alone.std[0] == pytest.approx(batch.std[0], rel=1e-6)
        assert alone.single_response()["results"]["quantiles"] == [0.05, 0.5, 0.7, 0.99]  # in increasing order
    bad = svc.predict(PATTERN, [{"input_tokens": "many"}])
    assert bad.ok.tolist() == [False] and "input_tokens" in bad.errors[0]
    svc.close()


def test_workers_on_one_data_directory_see_each_others_changes(tmp_path):
    # Two workers (two services on one data directory), each changing the registry in turn.
    a = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    b = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    other = IdentityPattern.from_parts({**IDENTITY, "model_name": "other"})
    try:
        b.train(config(make_llm_traces(100)))
        a.train(config(make_llm_traces(100), model={**IDENTITY, "model_name": "other"}))
        # A's own change does not hide B's earlier one.
        assert predict(a).ok.all() and predict(a, other).ok.all()
        assert sorted(i.model_name for i in a.registry.identities()) == [IDENTITY["model_name"], "other"]
        # A deletion by one worker is seen by the other's every route, not only by predictions.
        assert predict(b, other).ok.all()  # B has resolved it, and keeps that answer
        a.delete_model(other)
        for ask in (lambda: b.model_detail(other), lambda: b.accuracy(other), lambda: b.retrain(other),
                    lambda: predict(b, other)):
            with pytest.raises(ModelNotFound):
                ask()
    finally:
        a.close()
        b.close()


def test_observations_may_carry_integers_beyond_64_bits(service):
    """Such a number is read as a float, as for a prediction, and stored as one."""
    service.train(config(make_llm_traces(80)))
    trace = {**make_llm_traces(1)[0], "note": 2**70}
    trace["input_tokens"] = 2**64 + 7  # a feature too
    answer = service.observe(IDENTITY, [trace])
    assert answer["accepted"] == 1
    (stored,) = [r for r in service.monitor.log.read(ModelIdentity.from_parts(IDENTITY))]
    assert stored["trace"]["note"] == float(2**70) and stored["trace"]["input_tokens"] == float(2**64 + 7)


def test_health_counts_what_other_workers_trained(tmp_path):
    a = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    b = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    assert b.health()["models_registered"] == 0
    a.train(config(make_llm_traces(60)))
    assert b.health()["models_registered"] == 1
    a.close()
    b.close()


def test_one_unreadable_observation_log_does_not_fail_the_metrics(tmp_path):
    # Every scrape reads each model's log: one that cannot be read is left out, not a 500.
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    settings = PredictorSettings(data_dir=tmp_path / "data")
    svc = PredictorService(settings)
    svc.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(100), algorithm="linear"))
    svc.observe(IDENTITY, make_llm_traces(5, seed=1))
    svc.close()
    (folder,) = [p for p in settings.observations_dir.iterdir() if p.is_dir()]
    loop = folder / "obs-000009.jsonl"
    loop.symlink_to(loop.name)  # a link to itself: ELOOP on open
    fresh = PredictorService(settings)
    body, _ = fresh.render_metrics()
    assert b"predictor_models_registered 1.0" in body
    fresh.close()


def test_preload_loads_the_newest_models_first_up_to_the_memory_limit(tmp_path):
    from swarmpilot_predictor.settings import PredictorSettings

    data = tmp_path / "data"
    trainer = PredictorService(PredictorSettings(data_dir=data))
    try:
        for hw in ("A", "B", "C"):
            trainer.train(TrainConfig(model={**IDENTITY, "hardware": hw}, traces=make_llm_traces(60), algorithm="linear"))
    finally:
        trainer.close()
    fresh = PredictorService(PredictorSettings(data_dir=data, max_loaded_models=2))
    try:
        assert fresh.registry.loaded_count == 0  # start-up reads only the meta files
        assert fresh.preload() == 2
        # The two trained last, the newest last to be evicted.
        assert [identity.hardware for identity, _ in fresh.registry._loaded] == ["B", "C"]
        assert fresh.health()["models_loaded"] == 2
    finally:
        fresh.close()
    busy = PredictorService(PredictorSettings(data_dir=data, max_loaded_models=2))
    try:
        # What a request loaded before the preload got to it stays: only the free room is filled.
        busy.predict(IdentityPattern.from_parts({**IDENTITY, "hardware": "A"}), [{"input_tokens": 5, "output_tokens": 5}])
        assert busy.preload() == 1
        assert [identity.hardware for identity, _ in busy.registry._loaded] == ["A", "C"]
    finally:
        busy.close()


def service_to_preload(tmp_path: Path) -> PredictorService:
    """A fresh service with PREDICTOR_PRELOAD_MODELS on, of a data directory of two models."""
    from swarmpilot_predictor.settings import PredictorSettings

    data = trained_in_process(tmp_path / "data", *({"model": {**IDENTITY, "hardware": hw}, "algorithm": "linear",
                                                     "traces": make_llm_traces(60)} for hw in ("A", "B")))
    return PredictorService(PredictorSettings(data_dir=data, preload_models=True))


@contextmanager
def preload_held_at_a_load(fresh: PredictorService, monkeypatch, first_unreadable: bool = False) -> Iterator[None]:
    """``fresh``'s preload started and held, for the block, as it loads a model (the second,
    where ``first_unreadable``: the first's file cannot be read); let go, and ended, after it."""
    import threading

    from swarmpilot_predictor.errors import ModelUnreadable

    go_on, loading = threading.Event(), threading.Event()
    real_load, calls = fresh.registry.load, []

    def held_load(*args, **kwargs):
        calls.append(args)
        if first_unreadable and len(calls) == 1:
            raise ModelUnreadable("damaged")
        loading.set()
        assert go_on.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(fresh.registry, "load", held_load)
    thread = fresh.start_preload()
    assert loading.wait(30)
    try:
        yield
    finally:
        go_on.set()
        thread.join(30)


def test_the_service_is_not_ready_while_it_preloads_its_models(tmp_path, monkeypatch):

    from swarmpilot_predictor.errors import NotReady

    fresh = service_to_preload(tmp_path)
    try:
        assert fresh.readiness() == {"status": "ready", "models_loaded": 0}  # no preload begun: ready
        with preload_held_at_a_load(fresh, monkeypatch):
            with pytest.raises(NotReady) as caught:
                fresh.readiness()
            assert caught.value.status_code == 503 and caught.value.headers == {"Retry-After": "1"}
            assert caught.value.message == ("loading the latest version of every model (PREDICTOR_PRELOAD_MODELS): "
                                            "0 of 2 loaded; /ping answers for liveness meanwhile")
        assert fresh.readiness() == {"status": "ready", "models_loaded": 2}
    finally:
        fresh.close()


def test_a_preload_counts_as_loaded_only_the_models_it_loaded(tmp_path, monkeypatch):
    # A model whose file could not be read was counted among those loaded: "1 of 2 loaded"
    # while none was.

    from swarmpilot_predictor.errors import NotReady

    fresh = service_to_preload(tmp_path)
    try:
        with preload_held_at_a_load(fresh, monkeypatch, first_unreadable=True):
            with pytest.raises(NotReady) as caught:
                fresh.readiness()
            assert "0 of 2 loaded (1 could not be)" in caught.value.message
        assert fresh.readiness() == {"status": "ready", "models_loaded": 1}
    finally:
        fresh.close()


@pytest.mark.parametrize("seen", [False, True])  # the deletion seen in this process's index before the load, or not
def test_a_version_deleted_by_another_process_while_the_preload_lists_it_is_left_without_a_warning(
        tmp_path, monkeypatch, caplog, seen):
    # A worker started again (after a crash, an out-of-memory kill) preloads while another
    # deletes versions: the version it chose, gone when it came to load it, was logged as a
    # WARNING ("preloading ...: model ... has no version 2: it was deleted"), as a fault; the
    # model's version serving now is loaded instead.
    import logging

    from swarmpilot_predictor.settings import PredictorSettings

    data = trained_in_process(tmp_path / "data", *({"model": IDENTITY, "algorithm": "linear",
                                                     "traces": make_llm_traces(60, seed=seed)} for seed in (1, 2)))
    fresh = PredictorService(PredictorSettings(data_dir=data, preload_models=True))
    other = PredictorService(PredictorSettings(data_dir=data))
    real_load = fresh.registry.load

    def load_after_a_deletion(identity, version=None, *args, **kwargs):
        if version == 2:
            other.delete_model(IdentityPattern.from_parts(IDENTITY), 2)
            if seen:
                fresh.registry.refresh()
        return real_load(identity, version, *args, **kwargs)

    monkeypatch.setattr(fresh.registry, "load", load_after_a_deletion)
    try:
        with caplog.at_level(logging.INFO, logger="swarmpilot_predictor"):
            assert fresh.preload() == 1
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert [version for _, version in fresh.registry._loaded] == [1]
        assert fresh.readiness() == {"status": "ready", "models_loaded": 1}
    finally:
        fresh.close()
        other.close()


def test_with_several_workers_ready_waits_for_every_workers_preload(tmp_path):
    # A probe reaches one worker of serve --workers N: each answered for itself, and a pod was
    # taken in at the first worker's 200 while the others still loaded their models.
    import subprocess
    import sys

    from swarmpilot_predictor.errors import NotReady
    from swarmpilot_predictor.settings import PredictorSettings

    shared = tmp_path / "metrics"  # the workers' multi-process directory
    shared.mkdir()
    data = trained_in_process(tmp_path / "data", {"model": IDENTITY, "algorithm": "linear",
                                                  "traces": make_llm_traces(60)})
    fresh = PredictorService(PredictorSettings(data_dir=data, preload_models=True, workers=2))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the other worker
    try:
        fresh.metrics.multiprocess_dir = str(shared)
        fresh.start_preload().join(30)
        with pytest.raises(NotReady) as caught:  # the other has not begun yet
            fresh.readiness()
        assert caught.value.message.startswith("1 of 2 workers have loaded the latest version of every model")
        (shared / f"preloading_{other.pid}").touch()
        with pytest.raises(NotReady) as caught:
            fresh.readiness()
        assert caught.value.message.startswith(f"worker {other.pid} is loading the latest version of every model")
        (shared / f"preloading_{other.pid}").rename(shared / f"preloaded_{other.pid}")
        assert fresh.readiness() == {"status": "ready", "models_loaded": 1}
        other.kill()
        other.wait()  # (a worker that died: one started in its place loads its models again)
        with pytest.raises(NotReady):
            fresh.readiness()
    finally:
        other.kill()
        other.wait()
        fresh.close()


def test_what_killed_writes_left_is_removed_at_start_once_old(tmp_path):
    # A job record, a retraining decision log or the registry's stamp, written aside and
    # renamed into place: a kill -9 between the two leaves the temporary file.
    settings = PredictorSettings(data_dir=tmp_path)
    settings.ensure_dirs()
    assert settings.jobs_dir == tmp_path / "jobs" and settings.jobs_dir.is_dir()  # made with the others
    (settings.observations_dir / "some-model").mkdir()
    old = [tmp_path / ".generation.abcd1234.tmp", tmp_path / "jobs" / ".0123.json.abcd1234.tmp",
           settings.observations_dir / "some-model" / ".decisions.jsonl.abcd1234.tmp"]
    fresh = tmp_path / "jobs" / ".4567.json.efgh5678.tmp"
    for p in [*old, fresh]:
        p.write_text("{")
    for p in old:
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    PredictorService(settings).close()
    assert not any(p.exists() for p in old) and fresh.exists()


def test_a_cold_model_can_be_loaded_before_the_prediction_that_needs_it(tmp_path):
    # The HTTP routes predict on the event loop: a model not yet in memory is loaded in a
    # thread first (is_cold, then load_if_cold), so that its load does not hold the loop.
    trained = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    trained.train(config(make_llm_traces(150)))
    trained.close()
    fresh = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    try:
        pattern = IdentityPattern.from_parts(IDENTITY)
        assert fresh.is_cold(pattern) and fresh.registry.loaded_count == 0
        assert fresh.load_if_cold(pattern) is True
        assert not fresh.is_cold(pattern) and fresh.registry.loaded_count == 1
        assert fresh.predict(pattern, [{"input_tokens": 10, "output_tokens": 5}]).ok.all()
        # A pattern that names no model is not "cold": its error is the prediction's to give.
        nothing = IdentityPattern.from_parts({**IDENTITY, "hardware": "TPU"})
        assert fresh.is_cold(nothing) is False and fresh.load_if_cold(nothing) is False
    finally:
        fresh.close()


def test_a_few_huge_outliers_neither_set_the_mean_nor_erase_the_features(tmp_path):
    # The contract's "a few huge outliers": one hung request (1e7 ms) among 400 runs of
    # 10 to 300 ms put the means 150 times the medians; with three, cross-validation in
    # milliseconds chose the model that ignores every feature (one median for every request).
    traces = make_llm_traces(400)
    for i in (3, 150, 377):
        traces[i]["runtime_ms"] = 1e7
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    try:
        result = svc.train(config(traces))
        assert result["metrics"]["algorithm"] != "empirical"
        assert sum(result["metrics"]["data"]["rows_dropped"].values()) == 3
        assert "1,000 times" in next(iter(result["metrics"]["data"]["rows_dropped"]))
        small, large = svc.predict(PATTERN, [{"input_tokens": 100, "output_tokens": 20},
                                             {"input_tokens": 1500, "output_tokens": 400}], quantiles=[0.5]).results()
        assert large["quantile_predictions"][0] > 3 * small["quantile_predictions"][0]
        for r in (small, large):
            assert r["expect"] < 1.5 * r["quantile_predictions"][0]
    finally:
        svc.close()


def test_booleans_read_alike_from_json_and_csv_whichever_trained_the_model(tmp_path):
    # CSV holds no types: its `true` is text, a category, where JSON's `true` is the number 1.
    # A model fitted on one read the other's as an error ("must be a number, got str 'true'")
    # or as a category it never saw, without a word.
    rng = np.random.default_rng(5)
    rows = [(int(b), bool(s)) for b, s in zip(rng.integers(1, 64, 300), rng.random(300) < 0.5)]
    runtime = [float((2 + b) * (5.0 if s else 1.0) * rng.lognormal(0, 0.05)) for b, s in rows]
    as_json = [{"batch_size": b, "stream": s, "runtime_ms": r} for (b, s), r in zip(rows, runtime)]
    as_csv = "batch_size,stream,runtime_ms\n" + "".join(f"{b},{'true' if s else 'false'},{r}\n"
                                                          for (b, s), r in zip(rows, runtime))
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.csv").write_text(as_csv)
    svc = PredictorService(PredictorSettings(data_dir=data))
    try:
        json_model = IdentityPattern.from_parts({**IDENTITY, "model_name": "json"})
        csv_model = IdentityPattern.from_parts({**IDENTITY, "model_name": "csv"})
        svc.train(config(as_json, model={**IDENTITY, "model_name": "json"}))
        svc.train(TrainConfig(model={**IDENTITY, "model_name": "csv"}, traces="t.csv"))
        assert svc.registry.latest(svc._resolve(csv_model)).features.features[1].kind == "categorical"
        tasks = {"json": [{"batch_size": 10, "stream": True}, {"batch_size": 10, "stream": False}],
                 "csv": [{"batch_size": 10, "stream": "true"}, {"batch_size": 10, "stream": "false"}]}
        for pattern in (json_model, csv_model):
            answers = {kind: [r["quantile_predictions"][0] for r in svc.predict(pattern, t, quantiles=[0.5]).results()]
                       for kind, t in tasks.items()}
            assert answers["json"] == pytest.approx(answers["csv"], rel=1e-12)
            assert answers["json"][0] > 3 * answers["json"][1]
            # and from trace files, as a lookup table's generation reads them
            for name, body in (("q.csv", "batch_size,stream\n10,true\n10,false\n"),
                               ("q.jsonl", '{"batch_size": 10, "stream": true}\n{"batch_size": 10, "stream": false}\n')):
                (data / name).write_text(body)
                table = f"{pattern.as_tuple()[1]}-{name}.json"
                made = svc.generate_table(pattern, data / name, 0.9, table)
                assert made["failed"] == 0 and made["rows"] == 2
                for asked in tasks.values():  # either format's booleans, whichever made the table
                    stored = svc.predict(pattern, asked, quantiles=[0.5], lookup_table=True,
                                         lookup_table_name=table).results()
                    assert [r["match"] for r in stored] == ["exact", "exact"], stored
                    assert [r["quantile_predictions"][0] for r in stored] == pytest.approx(answers["json"], rel=1e-9)
        # A whole trace table encodes as the traces do (the benchmarks' path).
        for pattern in (json_model, csv_model):
            schema = svc.registry.latest(svc._resolve(pattern)).features
            for table in (TraceTable.from_traces(tasks["json"]), TraceTable.from_traces(tasks["csv"])):
                X, ok = schema.matrix_from_table(table)
                assert ok.all()
                np.testing.assert_array_equal(X, schema.matrix(tasks["json"])[0])
    finally:
        svc.close()


def test_every_file_of_the_data_directory_is_its_owners_alone(service):
    # Models, tables, observations (users' traces), retraining decisions and their lock,
    # tombstones: readable by the service's user only, whatever the umask.
    previous = os.umask(0o022)
    try:
        traces = make_llm_traces(120)
        service.train(config(traces))
        service.train(config(traces))
        service.delete_model(PATTERN, version=1)  # a tombstone
        service.observe(IDENTITY, make_llm_traces(60, seed=3))
        service.retrain(PATTERN)  # a decision, under the retraining lock
        src = service.settings.data_dir / "t.jsonl"
        src.write_bytes(b"\n".join(orjson.dumps(t) for t in traces[:10]))
        service.generate_table(PATTERN, src, 0.9, "t.json")
        src.unlink()
    finally:
        os.umask(previous)
    files = [p for p in service.settings.data_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"v0001.deleted", "retraining.jsonl", "t.json"} <= names and any(n.startswith("obs-") for n in names)
    assert [(str(p), oct(p.stat().st_mode & 0o777)) for p in files if p.stat().st_mode & 0o077] == []


def test_a_damaged_observation_log_costs_only_its_own_model(service):
    # A FIFO where a model's log file is: an observation of it fails at once (it hung, holding
    # the log's lock, and with it every model's observations and then the server). A file or
    # a link loop where its folder is: /health and /models go on (they were 500s).
    import threading

    other = {**IDENTITY, "model_name": "other"}
    traces = make_llm_traces(120)
    service.train(config(traces))
    service.train(config(traces, model=other))
    service.observe(IDENTITY, make_llm_traces(5, seed=1))
    log_dir = service.settings.data_dir / "observations" / ModelIdentity.from_parts(IDENTITY).dirname
    (log_file,) = log_dir.glob("obs-*.jsonl")
    log_file.unlink()
    os.mkfifo(log_file)
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(_raised(service.observe, IDENTITY, make_llm_traces(200, seed=2))))
    worker.start()
    worker.join(20)
    assert not worker.is_alive() and isinstance(outcome[0], PredictorError) and outcome[0].status_code == 500
    assert "NotRegularFile" in outcome[0].message
    assert service.observe(other, make_llm_traces(5, seed=3))["accepted"] == 5  # the other model's log
    shutil.rmtree(log_dir)
    for damage in ("file", "loop"):
        if damage == "file":
            log_dir.write_text("not a folder")
        else:
            log_dir.symlink_to(log_dir)
        assert service.health()["status"] == "healthy"
        listed = {m["model_name"]: m for m in service.list_models() for m in m["models"]}
        assert set(listed) == {IDENTITY["model_name"], "other"}
        assert service.accuracy(PATTERN)["observations"] == 5  # what this worker had read, and no 500
        log_dir.unlink()


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    return None


@pytest.mark.parametrize("algorithm", ["linear", "lightgbm"])
def test_a_batch_of_one_is_that_task_and_its_total_is_the_task(service, algorithm):
    # A queue of one totals its task: answered through the single-row path (a third of the
    # cost of the vectorised path and the total's machinery), from the cache too.
    service.train(config(make_llm_traces(300), algorithm=algorithm))
    task = [{"input_tokens": 300, "output_tokens": 80}]
    single = service.predict(PATTERN, task).results()[0]
    hits = service.cache.stats()["hits"]
    for shared in (False, True):
        batch = service.predict(PATTERN, task, with_total=True, shared_factor=shared).batch_response()
        assert batch["results"] == [single]
        assert batch["total_quantiles"] == single["quantile_predictions"] and batch["total_interval"] == single["interval"]
        assert (batch["expect"], batch["error"]) == (single["expect"], single["error"])
        assert batch["summary"]["success"] == 1
    assert service.cache.stats()["hits"] == hits + 2
    lean = service.predict(PATTERN, task, with_total=True, total_distribution=False).batch_response(False)
    assert (lean["expect"], lean["error"], lean["total_quantiles"]) == (single["expect"], single["error"], None)
    # A trace that cannot be predicted: the batch's error, and no total, as before.
    bad = service.predict(PATTERN, [{"input_tokens": "many"}], with_total=True).batch_response()
    assert bad["results"][0]["status"] == "error" and bad["total_quantiles"] is None


# --------------------------------------------------------------------------- running tasks


def test_a_running_task_is_answered_by_its_time_left(service):
    traces = [{**t, "elapsed_ms": 1.0} for t in make_llm_traces(300)]  # a field training does not learn
    service.train(config(traces))
    assert [f["name"] for f in service.model_detail(PATTERN)["features"]] == ["input_tokens", "output_tokens"]
    task = {"input_tokens": 500, "output_tokens": 200}  # about 2,430 ms
    levels = [0.1, 0.5, 0.9]
    whole = predict(service, traces=[task], quantiles=levels).results()[0]
    # Not started (0, or none): the whole runtime, as before (in the batch path's last digit).
    started = predict(service, traces=[{**task, "elapsed_ms": 0}], quantiles=levels).results()[0]
    assert started.keys() == whole.keys()
    assert started["quantile_predictions"] == pytest.approx(whole["quantile_predictions"], rel=1e-12)
    for elapsed in (1000.0, 2500.0, 3500.0):
        left = predict(service, traces=[{**task, "elapsed_ms": elapsed}], quantiles=levels).results()[0]
        p = left["elapsed_level"]
        assert 0 < p < 1 and "elapsed_level" not in whole
        # The runtime given that it is past `elapsed`: its quantiles at levels p + tau (1 - p), less elapsed.
        given = predict(service, traces=[task], quantiles=[p + t * (1 - p) for t in levels]).results()[0]
        np.testing.assert_allclose(np.array(left["quantile_predictions"]) + elapsed, given["quantile_predictions"],
                                   rtol=1e-6)
        assert 0 < left["expect"] < whole["expect"] and left["error"] > 0
        assert left["interval"][0] < left["quantile_predictions"][1] < left["interval"][1]
    assert predict(service, traces=[{**task, "elapsed_ms": 1000.0}]).results()[0]["elapsed_level"] < 0.01
    # A batch's total is of what is left: the running task's time left and the others' runtimes.
    queue = [{**task, "elapsed_ms": 2500.0}, task, task]
    batch = predict(service, traces=queue, quantiles=levels, with_total=True)
    body = batch.batch_response()
    assert body["expect"] == pytest.approx(sum(r["expect"] for r in body["results"]), rel=1e-9)
    full = predict(service, traces=[task] * 3, quantiles=levels, with_total=True).batch_response()
    assert all(a < b for a, b in zip(body["total_quantiles"], full["total_quantiles"]))
    assert body["total_quantiles"][1] == pytest.approx(2 * whole["quantile_predictions"][1]
                                                       + body["results"][0]["quantile_predictions"][1], rel=0.1)
    # predict_each (concurrent single requests) answers each as alone.
    each = service.predict_each(PATTERN, queue * 5, quantiles=levels)
    alone = [predict(service, traces=[t], quantiles=levels).results()[0] for t in queue]
    for got, want in zip([e.results()[0] for e in each[:3]], alone):
        assert got.keys() == want.keys() and got["expect"] == pytest.approx(want["expect"], rel=1e-12)


def test_a_cached_answer_is_never_a_running_tasks(tmp_path):
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=100))
    try:
        svc.train(config(make_llm_traces(200)))
        task = {"input_tokens": 500, "output_tokens": 200}
        whole = svc.predict(PATTERN, [task]).results()[0]
        left = svc.predict(PATTERN, [{**task, "elapsed_ms": 2000.0}]).results()[0]
        assert left["expect"] < whole["expect"] - 1500
        assert svc.predict(PATTERN, [task]).results()[0] == whole
        assert svc.predict(PATTERN, [{**task, "elapsed_ms": 2100.0}]).results()[0]["expect"] < left["expect"]
    finally:
        svc.close()


def test_a_bad_elapsed_time_fails_its_trace_and_a_table_answers_a_running_task(service, tmp_path):
    service.train(config(make_llm_traces(200)))
    task = {"input_tokens": 500, "output_tokens": 200}
    pred = predict(service, traces=[task, {**task, "elapsed_ms": -5}, {**task, "elapsed_ms": "soon"}], with_total=True)
    assert pred.ok.tolist() == [True, False, False]
    assert all(e.startswith("elapsed_ms must be the milliseconds the task has already run") for e in pred.errors[1:])
    assert "-5" in pred.errors[1] and "'soon'" in pred.errors[2]
    # A lookup table answers a running task from its record's distribution, as the model does from its own.
    service.generate_table(PATTERN, write_jsonl_gz(tmp_path / "t.jsonl.gz", [task]), table_name="t.json")
    running = {**task, "elapsed_ms": 2600.0}
    queue = [running, task, {**task, "elapsed_ms": -5}]
    table = predict(service, traces=queue, with_total=True, lookup_table=True, lookup_table_name="t.json")
    model = predict(service, traces=queue, with_total=True)
    assert table.ok.tolist() == model.ok.tolist() == [True, True, False]
    assert table.errors[2] == model.errors[2]
    got, want = table.results()[0], model.results()[0]
    assert got["elapsed_level"] == pytest.approx(want["elapsed_level"], abs=0.02)
    # Read off the record's stored levels and knots (its distribution as the table's totals
    # sum it), the time left is close to the model's, though a small difference of large
    # runtimes (the whole runtime is about 2,430 ms). Read off the four stored levels alone,
    # as tables were until 2026-12-06, its mean was 396 ms where the model's is 325, its
    # median 314 where the model's is 207, and its 0.99 quantile (the whole runtime's 0.997,
    # past the highest stored level) 1,110 ms against 1,518.
    whole_expect = table.results()[1]["expect"]
    assert abs(got["expect"] - want["expect"]) < 0.01 * whole_expect and got["expect"] < 0.2 * whole_expect
    assert got["quantiles"] == want["quantiles"] == [0.25, 0.5, 0.75, 0.99]
    for a, b, off in zip(got["quantile_predictions"], want["quantile_predictions"], [0.01, 0.01, 0.01, 0.03]):
        assert abs(a - b) < off * whole_expect, (got["quantile_predictions"], want["quantile_predictions"])
    assert "elapsed_level" not in table.results()[1]
    body = table.batch_response()
    assert body["expect"] == pytest.approx(got["expect"] + table.results()[1]["expect"], rel=1e-9)
    assert body["total_quantiles"] == pytest.approx(model.batch_response()["total_quantiles"], rel=0.05)
    # Not started, a table answers the whole runtime.
    whole = predict(service, traces=[{**task, "elapsed_ms": 0}], lookup_table=True, lookup_table_name="t.json")
    assert whole.results()[0]["expect"] == table.results()[1]["expect"] and "elapsed_level" not in whole.results()[0]


def test_a_running_tasks_time_left_is_never_negative(service, tmp_path):
    # A runtime that never varies: the model stores a mean an ulp under it, and a table's
    # record keeps that mean. Run exactly that long, the table read the task as not yet at
    # its least runtime and answered its mean less the time run: -8.9e-16 ms.
    service.train(config([{"x": float(i % 50), "runtime_ms": 5.0} for i in range(300)], algorithm="auto"))
    task = {"x": 7.0}
    service.generate_table(PATTERN, write_jsonl_gz(tmp_path / "t.jsonl.gz", [task]), table_name="t.json")
    for elapsed in (4.999999, 5.0, 5.000001):
        for source in ({}, {"lookup_table": True, "lookup_table_name": "t.json"}):
            pred = predict(service, traces=[{**task, "elapsed_ms": elapsed}, task], quantiles=[0.01, 0.5, 0.99],
                           with_total=True, **source)
            got = pred.results()[0]
            assert got["expect"] >= 0 and got["error"] >= 0, (elapsed, source, got)
            assert min(got["quantile_predictions"]) >= 0 and got["interval"][0] >= 0
            assert pred.batch_response()["expect"] >= pred.results()[1]["expect"]
            if elapsed == 5.0:
                assert got["expect"] == 0.0


# --------------------------------------------------------------------------- several queues


def test_several_queues_are_answered_as_their_batches(service):
    service.train(config(make_llm_traces(300)))
    service.train(config(make_llm_traces(300, seed=9)))  # version 2 serves; version 1 may be asked for
    queued = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in make_llm_traces(12, seed=4)]
    queues = {
        "gpu-0": [{**queued[0], "elapsed_ms": 800.0}, *queued[1:4]],  # its first task running
        "gpu-1": queued[4:10],
        "gpu-2": [queued[10], {"input_tokens": "many"}, queued[11]],  # one task not predictable
        "idle": [],
        "broken": [{"output_tokens": 5}],
        "one": queued[3:4],  # a batch of one is answered by the single-row path
    }
    for kw in ({}, {"shared_factor": True}, {"version": 1}):
        got = service.predict_queues(PATTERN, queues, 0.9, [0.9, 0.5], **kw)
        assert list(got["queues"]) == list(queues) and got["quantiles"] == [0.5, 0.9]
        assert got["model_version"] == kw.get("version", 2)
        for name in ("gpu-0", "gpu-1", "gpu-2", "one"):
            batch = service.predict(PATTERN, queues[name], 0.9, [0.5, 0.9], with_total=True, **kw).batch_response()
            answer = got["queues"][name]
            assert answer["expect"] == pytest.approx(batch["expect"], rel=1e-12)
            assert answer["error"] == pytest.approx(batch["error"], rel=1e-12)
            np.testing.assert_allclose(answer["total_quantiles"] + answer["total_interval"],
                                       batch["total_quantiles"] + batch["total_interval"], rtol=1e-12)
            assert answer["tasks"] == batch["summary"]["success"] and answer["failed"] == batch["summary"]["failed"]
    # Past 16 running tasks in one request, whose levels reached are searched for on coarser
    # grids than a queue's few: the same bits all the same (they had been an ulp apart, which
    # the shared factor made 1e-10 of a total).
    elapsed = np.random.default_rng(3).uniform(50, 1500, 40)
    many = {f"gpu-{k}": [{**queued[k % 12], "elapsed_ms": float(elapsed[k])}, *queued[(k + 1) % 12:(k + 1) % 12 + 3]]
            for k in range(40)}
    keys = ("expect", "error", "total_quantiles", "total_interval")
    got_many = service.predict_queues(PATTERN, many, 0.9, [0.5, 0.9, 0.99], shared_factor=True)["queues"]
    for name, queue in many.items():
        batch = service.predict(PATTERN, queue, 0.9, [0.5, 0.9, 0.99], with_total=True, shared_factor=True).batch_response()
        assert [got_many[name][k] for k in keys] == [batch[k] for k in keys], name
    # The running task counts by its time left: the queue waits less than with it not started.
    started = service.predict_queues(PATTERN, {"a": queues["gpu-0"], "b": queued[0:4]}, 0.9, [0.5])["queues"]
    assert started["a"]["expect"] < started["b"]["expect"] - 700
    # A task that cannot be predicted is named by its place in its queue; the others are summed.
    assert got["queues"]["gpu-2"]["errors"] == [{"index": 1, "message": "feature 'input_tokens' must be a number, got str 'many'"}]
    assert got["queues"]["idle"] == {"tasks": 0, "failed": 0, "errors": [], "running": [], "expect": 0.0,
                                     "error": 0.0, "total_quantiles": [0.0, 0.0], "total_interval": [0.0, 0.0]}
    # Each running task is named by its place in its queue, with the level its batch answers;
    # one run past every runtime its model reaches (stuck) is at 1, and waits 0 in its total.
    stuck = {"a": [queued[1], {**queued[0], "elapsed_ms": 3000.0}, queued[2], {**queued[3], "elapsed_ms": 1e9}],
             "b": [queued[1], queued[2]]}
    answer = service.predict_queues(PATTERN, stuck, 0.9, [0.5])["queues"]
    levels = [r.get("elapsed_level") for r in service.predict(PATTERN, stuck["a"], 0.9, [0.5]).batch_response()["results"]]
    assert answer["a"]["running"] == [{"index": 1, "elapsed_level": levels[1]}, {"index": 3, "elapsed_level": 1.0}]
    assert 0.0 < levels[1] < 1.0 and levels[3] == 1.0 and answer["b"]["running"] == []
    assert answer["a"]["expect"] - answer["b"]["expect"] < service.predict(
        PATTERN, [{**queued[0], "elapsed_ms": 3000.0}], 0.9, [0.5]).batch_response()["results"][0]["expect"] + 1e-6
    assert [got_many[name]["running"] for name in ("gpu-0", "gpu-7")] == [
        [{"index": 0, "elapsed_level": service.predict(PATTERN, many[name], 0.9, [0.5]).batch_response()
          ["results"][0]["elapsed_level"]}] for name in ("gpu-0", "gpu-7")]
    broken = got["queues"]["broken"]
    assert broken["tasks"] == 0 and broken["failed"] == 1 and "input_tokens" in broken["errors"][0]["message"]
    assert broken["expect"] is None and broken["total_quantiles"] is None
    assert got["summary"] == {**got["summary"], "queues": 6, "total": 15, "success": 13, "failed": 2}
    # At the model's own levels where none are asked for; a model not stored is a 404.
    assert service.predict_queues(PATTERN, {"a": queued[:2]})["quantiles"] == service.registry.latest(
        ModelIdentity.from_parts(IDENTITY)).quantiles
    with pytest.raises(ModelNotFound):
        service.predict_queues(IdentityPattern.from_parts({**IDENTITY, "model_name": "other"}), {"a": queued[:2]})
    with pytest.raises(NotFound, match="no version 7") as err:
        service.predict_queues(PATTERN, {"a": queued[:2]}, version=7)
    assert err.value.field == "version"
    # A value per queue and level, at the model's own levels too: at most 1,000,000 of them.
    with pytest.raises(InvalidInput, match=r"^10,000 queues at 101 quantile levels is more than 1,000,000") as err:
        service.predict_queues(PATTERN, {f"q{i}": [] for i in range(10_000)}, quantiles=np.linspace(0.005, 0.995, 101).tolist())
    assert err.value.field == "queues" and str(err.value).endswith("send fewer queues per request or fewer levels")


def test_several_queues_hold_one_group_of_tasks_worked_out_at_a_time(service, monkeypatch):
    # What is worked out for a group of queues' tasks (9 kB a task or more) is let go before
    # the next group's: the totals, kept until the answer was made, held every group's
    # (10,000 queues of 10 tasks took 1.2 GB in a request of 3 MB, where 2,000 took 0.25 GB).
    import weakref

    from swarmpilot_predictor import distribution
    from swarmpilot_predictor.distribution import TaskDistributions

    service.train(config(make_llm_traces(300)))
    queued = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in make_llm_traces(40, seed=4)]
    queues = {f"q{i}": queued[i % 30:i % 30 + 10] for i in range(40)}
    expected = service.predict_queues(PATTERN, queues, 0.9, [0.5, 0.9])["queues"]
    monkeypatch.setattr(distribution, "_BATCH_NODES_MAX_TASKS", 20)  # two queues a group
    groups: list[weakref.ref] = []
    most_alive = 0
    real = TaskDistributions.for_totals

    def counted(self, levels, rows=()):
        nonlocal most_alive
        most_alive = max(most_alive, sum(ref() is not None for ref in groups))
        worked = real(self, levels, rows)
        groups.append(weakref.ref(worked.batch))  # the group's discretised tasks, as its subsets share them
        return worked

    monkeypatch.setattr(TaskDistributions, "for_totals", counted)
    got = service.predict_queues(PATTERN, queues, 0.9, [0.5, 0.9])["queues"]
    assert len(groups) == 20 and most_alive <= 1
    assert got == expected


def _queued_in_a_table(service, tmp_path) -> list[dict]:
    """Eight tasks of a model trained at levels 0.25, 0.5 and 0.9, in the table queued.json."""
    service.train(config(make_llm_traces(300), quantiles=[0.25, 0.5, 0.9]))
    queued = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in make_llm_traces(8, seed=4)]
    path = tmp_path / "queued.jsonl"
    path.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in queued))
    service.generate_table(PATTERN, path, 0.9, "queued.json")
    return queued


def test_several_queues_are_answered_from_a_lookup_table_as_their_batches(service, tmp_path):
    queued = _queued_in_a_table(service, tmp_path)
    queues = {"gpu-0": [{**queued[0], "elapsed_ms": 3000.0}, *queued[1:4]], "gpu-1": queued[4:],
              "gpu-2": [queued[0], {"task_id": "nowhere"}], "idle": []}
    for levels in ([0.9, 0.5], None):  # none named: the table's own
        got = service.predict_queues(PATTERN, queues, 0.9, levels, lookup_table=True, lookup_table_name="queued.json")
        assert (got["source"], got["table"], got["model_key"]) == ("lookup_table", "queued.json", None)
        assert got["quantiles"] == ([0.5, 0.9] if levels else [0.25, 0.5, 0.9])
        for name in ("gpu-0", "gpu-1", "gpu-2"):
            batch = service.predict(PATTERN, queues[name], 0.9, got["quantiles"], with_total=True, lookup_table=True,
                                    lookup_table_name="queued.json").batch_response()
            answer = got["queues"][name]
            assert [answer[k] for k in ("expect", "error", "total_quantiles", "total_interval")] == [
                batch[k] for k in ("expect", "error", "total_quantiles", "total_interval")]
            assert (answer["tasks"], answer["failed"]) == (batch["summary"]["success"], batch["summary"]["failed"])
        assert got["queues"]["gpu-2"]["errors"][0]["index"] == 1
        assert got["queues"]["idle"]["total_quantiles"] == [0.0] * len(got["quantiles"])
        # A running task's level, as its batch from the table answers it.
        level = service.predict(PATTERN, queues["gpu-0"][:1], 0.9, got["quantiles"], lookup_table=True,
                                lookup_table_name="queued.json").batch_response()["results"][0]["elapsed_level"]
        assert got["queues"]["gpu-0"]["running"] == [{"index": 0, "elapsed_level": level}] and 0.0 < level < 1.0
        assert got["queues"]["gpu-1"]["running"] == got["queues"]["idle"]["running"] == []
    with pytest.raises(InvalidInput, match="shared_factor needs a model") as err:
        service.predict_queues(PATTERN, queues, lookup_table=True, lookup_table_name="queued.json", shared_factor=True)
    assert err.value.field == "shared_factor"


def _completion_of_prefixes(service, queue, kept, **kw):
    """Each task's completion as the wait of a queue of it and the tasks ahead of it (``kept``: those predicted)."""
    prefixes = {f"p{i}": [queue[j] for j in kept[:k + 1]] for k, i in enumerate(kept)}
    return service.predict_queues(PATTERN, prefixes, 0.9, [0.5, 0.9, 0.99], **kw)["queues"]


@pytest.mark.parametrize("shared", [False, True])
def test_each_queued_task_says_when_it_is_done(service, shared):
    service.train(config(make_llm_traces(300)))
    queued = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in make_llm_traces(24, seed=4)]
    queues = {"gpu-0": [{**queued[0], "elapsed_ms": 800.0}, *queued[1:8]],  # its first task running
              "gpu-1": [queued[8], {"input_tokens": "many"}, *queued[9:20]],  # its second cannot be predicted
              "idle": [], "broken": [{"output_tokens": 5}], "one": queued[20:21]}
    deadline = 4000.0
    got = service.predict_queues(PATTERN, queues, 0.9, [0.99, 0.5, 0.9], shared_factor=shared, deadline_ms=deadline,
                                 completion_times=True)["queues"]
    plain = service.predict_queues(PATTERN, queues, 0.9, [0.5, 0.9, 0.99], shared_factor=shared, deadline_ms=deadline)["queues"]
    keys = ("expect", "error", "total_quantiles", "total_interval", "total_deadline_probability")
    for name in queues:  # the queues' own answers as without completion times
        assert {k: v for k, v in got[name].items() if k != "completion"} == plain[name]
    assert got["idle"]["completion"] == [] and got["broken"]["completion"] == []
    for name, kept in (("gpu-0", list(range(8))), ("gpu-1", [0, *range(2, 13)]), ("one", [0])):
        completion = got[name]["completion"]
        assert [c["index"] for c in completion] == kept  # the task not predicted has none, nor counts
        # The last task is done when the queue drains: its completion is the queue's total, to the bit.
        last = completion[-1]
        assert [last[k] for k in ("expect", "error", "quantiles", "interval", "deadline_probability")] == [
            got[name][k] for k in keys]
        # Each is the wait of a queue of it and those ahead of it, up to the grids' rounding.
        alone = _completion_of_prefixes(service, queues[name], kept, shared_factor=shared, deadline_ms=deadline)
        for c, k in zip(completion, kept):
            want = alone[f"p{k}"]
            assert c["expect"] == pytest.approx(want["expect"], rel=1e-12)
            assert c["error"] == pytest.approx(want["error"], rel=1e-12)
            np.testing.assert_allclose(c["quantiles"] + c["interval"], want["total_quantiles"] + want["total_interval"],
                                       rtol=3e-3)
            assert c["deadline_probability"] == pytest.approx(want["total_deadline_probability"], abs=3e-3)
        # A task is never done before the one ahead of it.
        q = np.array([c["quantiles"] + c["interval"] for c in completion])
        assert (np.diff(q, axis=0) >= 0).all() and (np.diff([c["expect"] for c in completion]) > 0).all()
        assert (np.diff([c["deadline_probability"] for c in completion]) <= 0).all()
    # The first task's completion is its own runtime (a running one's: its time left).
    first = service.predict(PATTERN, queues["gpu-0"][:1], 0.9, [0.5, 0.9, 0.99], deadline_ms=deadline).batch_response()["results"][0]
    c0 = got["gpu-0"]["completion"][0]
    np.testing.assert_allclose(c0["quantiles"] + c0["interval"], first["quantile_predictions"] + first["interval"], rtol=1e-12)
    assert c0["deadline_probability"] == pytest.approx(first["deadline_probability"], abs=1e-12)


def test_completion_times_are_bounded_and_not_answered_unasked(service):
    service.train(config(make_llm_traces(300)))
    queued = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in make_llm_traces(3, seed=4)]
    assert "completion" not in service.predict_queues(PATTERN, {"a": queued})["queues"]["a"]
    # Queues that are all empty have none to say (the API fuzzer's: a 500).
    empty = service.predict_queues(PATTERN, {"a": [], "b": []}, completion_times=True)["queues"]
    assert empty["a"]["completion"] == empty["b"]["completion"] == [] and empty["a"]["expect"] == 0.0
    with pytest.raises(InvalidInput, match=r"^completion_times answers at most 10,000 traces in all, got 10,002") as err:
        service.predict_queues(PATTERN, {"a": queued[:1] * 5001, "b": queued[:1] * 5001}, completion_times=True)
    assert err.value.field == "queues" and str(err.value).endswith("send fewer traces per request (fewer queues, or shorter ones)")
    # A value per task and level, at the model's own levels too: at most 1,000,000 of them.
    with pytest.raises(InvalidInput, match=r"^10,000 traces at 101 quantile levels is more than 1,000,000") as err:
        service.predict_queues(PATTERN, {"a": queued[:1] * 10_000}, quantiles=np.linspace(0.005, 0.995, 101).tolist(),
                               completion_times=True)
    assert err.value.field == "queues" and str(err.value).endswith("send fewer traces per request or fewer levels")


def test_a_lookup_table_says_when_each_queued_task_is_done(service, tmp_path):
    queued = _queued_in_a_table(service, tmp_path)
    queues = {"gpu-0": [{**queued[0], "elapsed_ms": 3000.0}, *queued[1:6]], "gpu-1": [queued[6], {"task_id": "nowhere"}, queued[7]],
              "idle": []}
    table = {"lookup_table": True, "lookup_table_name": "queued.json"}
    for levels in ([0.9, 0.5], None):  # none named: the table's own
        got = service.predict_queues(PATTERN, queues, 0.9, levels, deadline_ms=5000.0, completion_times=True, **table)
        keys = ("expect", "error", "total_quantiles", "total_interval", "total_deadline_probability")
        for name, kept in (("gpu-0", list(range(6))), ("gpu-1", [0, 2])):
            answer = got["queues"][name]
            completion = answer["completion"]
            assert [c["index"] for c in completion] == kept
            assert [completion[-1][k] for k in ("expect", "error", "quantiles", "interval", "deadline_probability")] == [
                answer[k] for k in keys]
            # The first task's completion is its answer from the table.
            first = service.predict(PATTERN, queues[name][:1], 0.9, got["quantiles"], deadline_ms=5000.0,
                                    **table).batch_response()["results"][0]
            np.testing.assert_allclose(completion[0]["quantiles"] + completion[0]["interval"],
                                       first["quantile_predictions"] + first["interval"], rtol=1e-9)
            prefixes = service.predict_queues(PATTERN, {f"p{k}": [queues[name][j] for j in kept[:i + 1]]
                                                        for i, k in enumerate(kept)}, 0.9, got["quantiles"],
                                              deadline_ms=5000.0, **table)["queues"]
            for c, k in zip(completion, kept):
                want = prefixes[f"p{k}"]
                assert c["expect"] == pytest.approx(want["expect"], rel=1e-12)
                np.testing.assert_allclose(c["quantiles"] + c["interval"], want["total_quantiles"] + want["total_interval"],
                                           rtol=3e-3)
                assert c["deadline_probability"] == pytest.approx(want["total_deadline_probability"], abs=3e-3)
            assert (np.diff([c["quantiles"] for c in completion], axis=0) >= 0).all()
        assert got["queues"]["idle"]["completion"] == []


def test_coalesced_predictions_answered_from_the_cache_report_their_own_time(service):
    # A hit kept the duration of the request that filled the entry; the one-trace path
    # reported its own.
    service.train(config(make_llm_traces(80), algorithm="linear"))
    pattern = IdentityPattern.from_parts(IDENTITY)
    traces = [{"input_tokens": 100 + i, "output_tokens": 20} for i in range(20)]
    first = service.predict_each(pattern, traces)
    started = time.perf_counter()
    again = service.predict_each(pattern, traces)
    took = time.perf_counter() - started
    assert service.cache.stats()["hits"] >= 20
    for a, b in zip(first, again):
        assert np.array_equal(a.quantiles, b.quantiles)
        assert b.duration_seconds != a.duration_seconds and 0 <= b.duration_seconds <= took
    from swarmpilot_predictor.errors import PredictorError

    with pytest.raises(TypeError):  # one dict shared by every error: read-only
        PredictorError("x").headers["Retry-After"] = "1"


@pytest.mark.parametrize("n", [1, 13])
def test_a_callers_changes_to_its_answer_never_reach_the_cache(service, n):
    # The answer's rendered dicts and lists were the cached entry's own: a caller that
    # changed them (or the levels) changed every later answer from the cache.
    service.train(config(make_llm_traces(150)))
    traces = [{"input_tokens": 100 + i, "output_tokens": 20} for i in range(n)]
    want = [service.predict_each(PATTERN, [t])[0].results()[0] for t in traces]
    want = [{k: v.copy() if isinstance(v, (list, dict)) else v for k, v in r.items()} for r in want]
    for answer in ([predict(service, traces=[t]) for t in traces], service.predict_each(PATTERN, traces),
                   [predict(service, traces=[t]) for t in traces]):
        for pred, expected in zip(answer, want):
            assert pred.results()[0] == expected
            pred.levels.append(0.999)
            result = pred.results()[0]
            result["expect"] = -1.0
            result["quantiles"].append(0.999)
            result["quantile_predictions"][0] = -1.0
            result["interval"].clear()
            result["model_info"]["name"] = "changed"
    for t, expected in zip(traces, want):
        again = predict(service, traces=[t])
        assert again.results()[0] == expected and again.levels == expected["quantiles"]


# --------------------------------------------------------------------------- deadlines


def test_a_deadline_gives_each_task_and_the_total_its_probability_of_being_done_within_it(service):
    service.train(config(make_llm_traces(300)))
    levels = [0.1, 0.5, 0.9]
    plain = predict(service, quantiles=levels, with_total=True).batch_response()
    assert "deadline_probability" not in plain["results"][0] and "total_deadline_probability" not in plain
    short, long = (r["quantile_predictions"] for r in plain["results"])
    # At a task's own quantile, its probability is that quantile's level: the two agree.
    for deadline, task, level in ((short[1], 0, 0.5), (long[2], 1, 0.9), (long[0], 1, 0.1)):
        body = predict(service, quantiles=levels, with_total=True, deadline_ms=deadline).batch_response()
        assert body["results"][task]["deadline_probability"] == pytest.approx(level, abs=1e-6)
        # The quantiles are those asked without a deadline.
        np.testing.assert_allclose([r["quantile_predictions"] for r in body["results"]], [short, long], rtol=1e-12)
        # The total is never below either task: it is no likelier to be done than either.
        assert body["total_deadline_probability"] <= min(r["deadline_probability"] for r in body["results"])
        # One task asked alone answers what the batch said of it, and so does its total.
        alone = predict(service, traces=PROBE[task:task + 1], quantiles=levels, deadline_ms=deadline).single_response()
        assert alone["results"]["deadline_probability"] == body["results"][task]["deadline_probability"]
        queue = predict(service, traces=PROBE[task:task + 1], with_total=True, deadline_ms=deadline).batch_response()
        assert queue["total_deadline_probability"] == alone["results"]["deadline_probability"]
    for shared in (False, True):
        total = predict(service, quantiles=levels, with_total=True, shared_factor=shared).batch_response()["total_quantiles"]
        for q, level in zip(total, levels):
            body = predict(service, with_total=True, shared_factor=shared, deadline_ms=q).batch_response()
            assert body["total_deadline_probability"] == pytest.approx(level, abs=1e-5)
    # Asked about its tasks only, a batch has no total's distribution to say it from.
    body = predict(service, with_total=True, total_distribution=False, deadline_ms=short[1]).batch_response(False)
    assert body["total_deadline_probability"] is None
    assert body["results"][0]["deadline_probability"] == pytest.approx(0.5, abs=1e-6)
    # An empty batch is done at once; one of which no task was predicted is unknown.
    assert predict(service, traces=[], with_total=True, deadline_ms=1.0).batch_response()["total_deadline_probability"] == 1.0
    failed = predict(service, traces=[{"x": 1}], with_total=True, deadline_ms=1.0).batch_response()
    assert failed["total_deadline_probability"] is None and "deadline_probability" not in failed["results"][0]
    # Far past a task's tail it is done for sure, before its least runtime not at all.
    body = predict(service, with_total=True, deadline_ms=1e9).batch_response()
    assert [r["deadline_probability"] for r in body["results"]] == [1.0, 1.0] and body["total_deadline_probability"] == 1.0
    body = predict(service, with_total=True, deadline_ms=1e-3).batch_response()
    assert [r["deadline_probability"] for r in body["results"]] == [0.0, 0.0] and body["total_deadline_probability"] == 0.0


def test_a_running_tasks_deadline_probability_is_of_its_time_left(service):
    service.train(config(make_llm_traces(300)))
    running = [{**PROBE[1], "elapsed_ms": 1000.0}]
    left = predict(service, traces=running, quantiles=[0.5, 0.9]).single_response()["results"]["quantile_predictions"]
    for q, level in zip(left, (0.5, 0.9)):
        got = predict(service, traces=running, quantiles=[0.5, 0.9], deadline_ms=q).single_response()["results"]
        assert got["deadline_probability"] == pytest.approx(level, abs=1e-6) and got["elapsed_level"] > 0
    # A task run past every level its model reaches (stuck: elapsed_level 1) has nothing left
    # that the model can tell, 0 at every level: "done" within any deadline, as the README warns,
    # and it adds nothing to its queue's total.
    stuck = {**PROBE[1], "elapsed_ms": 1e9}
    body = predict(service, traces=[stuck, PROBE[0]], with_total=True, deadline_ms=5e-324).batch_response()
    assert body["results"][0]["elapsed_level"] == 1.0 and body["results"][0]["deadline_probability"] == 1.0
    deadline = predict(service, traces=PROBE[:1], quantiles=[0.5]).single_response()["results"]["quantile_predictions"][0]
    body = predict(service, traces=[stuck, PROBE[0]], with_total=True, deadline_ms=deadline).batch_response()
    assert body["results"][1]["deadline_probability"] == pytest.approx(0.5, abs=1e-6)
    assert body["total_deadline_probability"] == pytest.approx(0.5, abs=1e-3)  # (summed on a grid)


def test_each_queue_says_its_probability_of_draining_within_a_deadline(service):
    service.train(config(make_llm_traces(300)))
    queues = {"a": PROBE, "idle": [], "broken": [{"x": 1}], "one": PROBE[1:]}
    deadline = predict(service, with_total=True, quantiles=[0.7]).batch_response()["total_quantiles"][0]
    answer = service.predict_queues(PATTERN, queues, deadline_ms=deadline)["queues"]
    assert answer["a"]["total_deadline_probability"] == pytest.approx(0.7, abs=1e-5)
    assert answer["idle"]["total_deadline_probability"] == 1.0 and answer["broken"]["total_deadline_probability"] is None
    single = predict(service, traces=PROBE[1:], deadline_ms=deadline).single_response()["results"]
    assert answer["one"]["total_deadline_probability"] == single["deadline_probability"]
    assert "total_deadline_probability" not in service.predict_queues(PATTERN, queues)["queues"]["a"]


def test_a_lookup_table_answers_a_deadline_from_its_records(service, tmp_path):
    service.train(config(make_llm_traces(300)))
    path = write_jsonl_gz(tmp_path / "probe.jsonl.gz", PROBE)
    service.generate_table(PATTERN, path, 0.9, "probe.json")
    levels = [0.25, 0.5, 0.9]
    plain = predict(service, quantiles=levels, with_total=True, lookup_table=True,
                    lookup_table_name="probe.json").batch_response()
    for task in (0, 1):
        for q, level in zip(plain["results"][task]["quantile_predictions"], levels):
            body = predict(service, quantiles=levels, with_total=True, lookup_table=True, lookup_table_name="probe.json",
                           deadline_ms=q).batch_response()
            assert body["results"][task]["deadline_probability"] == pytest.approx(level, abs=1e-4)
            assert body["total_deadline_probability"] <= min(r["deadline_probability"] for r in body["results"])
    for q, level in zip(plain["total_quantiles"], levels):
        body = predict(service, with_total=True, lookup_table=True, lookup_table_name="probe.json",
                       deadline_ms=q).batch_response()
        assert body["total_deadline_probability"] == pytest.approx(level, abs=1e-4)
    queues = service.predict_queues(PATTERN, {"q": PROBE}, lookup_table=True, lookup_table_name="probe.json",
                                    deadline_ms=plain["total_quantiles"][1])
    assert queues["queues"]["q"]["total_deadline_probability"] == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("knots", [0, None])
def test_a_lookup_table_tasks_deadline_probability_agrees_with_its_answers_quantiles(service, tmp_path, knots):
    # A record of a skewed empirical model, whose distribution as totals sum it is brought to
    # the stored mean (bent between its stored levels): its answer's quantiles are not.
    tiny = [{"x": 1, "runtime_ms": v} for v in (100.0, 100.0, 120.0, 200.0, 200.0)]
    service.train(config(tiny, algorithm="empirical"))
    path = write_jsonl_gz(tmp_path / "one.jsonl.gz", [{"x": 1}])
    service.generate_table(PATTERN, path, 0.9, "one.json", **({} if knots is None else {"knots": knots}))
    table = {"lookup_table": True, "lookup_table_name": "one.json"}
    levels = [0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 0.9]
    answer = predict(service, traces=[{"x": 1}], quantiles=levels, **table).single_response()["results"]
    running = {"x": 1, "elapsed_ms": 50.0}
    for q, level in zip(answer["quantile_predictions"], levels):
        body = predict(service, traces=[{"x": 1}, running], with_total=True, deadline_ms=q, **table).batch_response()
        assert body["results"][0]["deadline_probability"] == pytest.approx(level, abs=1e-6)
        one = predict(service, traces=[{"x": 1}], with_total=True, deadline_ms=q, **table).batch_response()
        assert one["results"][0]["deadline_probability"] == one["total_deadline_probability"]
        assert one["total_deadline_probability"] == pytest.approx(level, abs=1e-6)


def test_a_lookup_tables_deadline_is_searched_once_a_record_not_once_a_task(service, tmp_path):
    service.train(config(make_llm_traces(300)))
    path = write_jsonl_gz(tmp_path / "probe.jsonl.gz", PROBE)
    service.generate_table(PATTERN, path, 0.9, "probe.json")
    table = service.tables.get("probe.json")
    rows_read: list[int] = []
    read = table._quantiles_at

    def counted(rows, taus, bend=None):
        rows_read.append(len(rows))
        return read(rows, taus, bend)

    table._quantiles_at = counted
    traces = PROBE * 500  # 1,000 tasks of two records
    options = {"lookup_table": True, "lookup_table_name": "probe.json"}
    alone = [predict(service, traces=[t], deadline_ms=3000.0, **options).single_response()["results"]["deadline_probability"]
             for t in PROBE]
    rows_read.clear()
    plain = predict(service, traces=traces, **options).batch_response()
    without = sum(rows_read)
    rows_read.clear()
    body = predict(service, traces=traces, deadline_ms=3000.0, **options).batch_response()
    assert [r["quantile_predictions"] for r in body["results"]] == [r["quantile_predictions"] for r in plain["results"]]
    assert [r["deadline_probability"] for r in body["results"]] == alone * 500
    # Each of the two records searched in 3 passes (the tasks were: 7 passes of 1,000 rows).
    assert sum(rows_read) - without <= 2 * 7, rows_read


@pytest.mark.parametrize("algorithm", ["linear", "lightgbm"])
def test_a_single_prediction_with_a_deadline_answers_as_one_without_and_as_its_batch(tmp_path, algorithm):
    # A lone task's deadline is read beside its single-task answer: its quantiles are those of
    # the same request without a deadline, its probability the batch's, to the last bit, with
    # the cache or without, worked out or read from the entry.
    levels = [0.1, 0.5, 0.9]
    for cache_size in (0, 100):
        svc = PredictorService(PredictorSettings(data_dir=tmp_path / f"d{cache_size}", cache_size=cache_size))
        svc.train(config(make_llm_traces(300), algorithm=algorithm))
        for trace in PROBE:
            plain = svc.predict(PATTERN, [trace], quantiles=levels).single_response()["results"]
            own = plain["quantile_predictions"]
            for deadline in (*own, own[1] * 1.01, 1e-3, 1e9):
                beside = svc.predict(PATTERN, [trace, PROBE[0]], quantiles=levels, with_total=True,
                                     deadline_ms=deadline).batch_response()["results"][0]
                for _ in range(2):
                    alone = svc.predict(PATTERN, [trace], quantiles=levels, deadline_ms=deadline).single_response()
                    assert alone["results"] == {**plain, "deadline_probability": beside["deadline_probability"]}
                    np.testing.assert_allclose(own, beside["quantile_predictions"], rtol=1e-9)
                    queue = svc.predict(PATTERN, [trace], quantiles=levels, with_total=True,
                                        deadline_ms=deadline).batch_response()
                    assert queue["total_deadline_probability"] == beside["deadline_probability"]
                    assert queue["total_quantiles"] == own
            for deadline, level in zip(own, levels):
                got = svc.predict(PATTERN, [trace], quantiles=levels, deadline_ms=deadline).results()[0]
                assert got["deadline_probability"] == pytest.approx(level, abs=1e-6)
        svc.close()


def test_a_deadline_is_read_off_the_cached_prediction_of_its_trace(tmp_path, monkeypatch):
    from swarmpilot_predictor import distribution

    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=100))
    svc.train(config(make_llm_traces(300)))
    model = svc.registry.load(ModelIdentity.from_parts(IDENTITY)).model
    trace = PROBE[1]
    plain = svc.predict(PATTERN, [trace]).single_response()["results"]
    middle = len(plain["quantiles"]) // 2
    deadline = plain["quantile_predictions"][middle]
    made = []
    monkeypatch.setattr(model, "predict_distribution", lambda X, own=model.predict_distribution: made.append(len(X)) or own(X))
    searches = count_searches(monkeypatch, distribution, "_levels_at")
    before = svc.cache_stats()
    first = svc.predict(PATTERN, [trace], deadline_ms=deadline).single_response()["results"]
    first["deadline_probability"] = -1.0  # the caller's own answer: the entry is not changed
    again = svc.predict(PATTERN, [trace], deadline_ms=deadline).single_response()["results"]
    later = svc.predict(PATTERN, [trace], deadline_ms=deadline * 1.5).single_response()["results"]
    after = svc.cache_stats()
    # Hits of the entry the request without a deadline made: its trace's distribution worked
    # out once, each deadline searched for once.
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"], after["entries"]) == (3, 0, 1)
    assert made == [1] and searches == [1, 1]
    assert again == {**plain, "deadline_probability": again["deadline_probability"]}
    assert again["deadline_probability"] == pytest.approx(plain["quantiles"][middle], abs=1e-6)
    assert again["deadline_probability"] < later["deadline_probability"] < 1.0
    assert svc.predict(PATTERN, [trace]).single_response()["results"] == plain
    # A request with a deadline fills the entry that one without then reads, and the other way round.
    svc.clear_cache()
    assert svc.predict(PATTERN, [trace], deadline_ms=deadline).single_response()["results"] == again
    assert svc.predict(PATTERN, [trace]).single_response()["results"] == plain
    assert (svc.cache_stats()["hits"], svc.cache_stats()["misses"], svc.cache_stats()["entries"]) == (1, 1, 1)
    svc.close()


def test_a_model_without_a_single_row_path_keeps_its_deadline_answer_as_one_without(tmp_path, monkeypatch):
    # The batch path answers a lone trace where the model has no single-row path: its entry
    # holds the answer without the deadline, and the distribution it was read off.
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=100))
    svc.train(config(make_llm_traces(300)))
    model = svc.registry.load(ModelIdentity.from_parts(IDENTITY)).model
    monkeypatch.setattr(model, "describe_one", lambda x, levels: None)
    trace = PROBE[1]
    for deadline in (5000.0, 5000.0, 7000.0):
        beside = svc.predict(PATTERN, [trace, PROBE[0]], with_total=True, deadline_ms=deadline).batch_response()
        alone = svc.predict(PATTERN, [trace], deadline_ms=deadline).single_response()["results"]
        assert alone["deadline_probability"] == beside["results"][0]["deadline_probability"]
        np.testing.assert_allclose(alone["quantile_predictions"], beside["results"][0]["quantile_predictions"], rtol=1e-12)
    stats = svc.cache_stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (2, 1, 1)
    plain = svc.predict(PATTERN, [trace]).single_response()["results"]
    assert "deadline_probability" not in plain and plain == {k: v for k, v in alone.items() if k != "deadline_probability"}
    svc.close()


def test_a_cached_deadline_answer_is_of_the_version_that_serves(tmp_path):
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=100))
    svc.train(config(make_llm_traces(300)))
    trace, deadline = PROBE[1], 5000.0

    def alone(**kw):
        return svc.predict(PATTERN, [trace], deadline_ms=deadline, **kw).single_response()["results"]

    def beside(**kw):
        return svc.predict(PATTERN, [trace, PROBE[0]], with_total=True, deadline_ms=deadline,
                           **kw).batch_response()["results"][0]["deadline_probability"]

    first = alone()
    # Retrained meanwhile on runs twice as long: the new version answers, not the old one's entry.
    svc.train(config([{**t, "runtime_ms": 2 * t["runtime_ms"]} for t in make_llm_traces(300)]))
    second = alone()
    assert (first["model_version"], second["model_version"]) == (1, 2)
    assert second["deadline_probability"] == beside() < first["deadline_probability"]
    for _ in range(2):  # the first version, asked by number: its own answer, worked out or read from its entry
        assert alone(version=1) == first and first["deadline_probability"] == beside(version=1)
    assert alone() == second
    svc.close()


def test_a_running_tasks_single_deadline_is_its_batch_answer_and_is_not_cached(tmp_path):
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=100))
    svc.train(config(make_llm_traces(300)))
    running = {**PROBE[1], "elapsed_ms": 1000.0}
    for deadline in (2000.0, 5000.0):
        alone = svc.predict(PATTERN, [running], deadline_ms=deadline).single_response()["results"]
        beside = svc.predict(PATTERN, [running, PROBE[0]], with_total=True, deadline_ms=deadline).batch_response()
        assert alone == beside["results"][0] and alone["elapsed_level"] > 0  # its time left's
    assert svc.cache_stats()["entries"] == 0  # (its elapsed time changes: answered afresh)
    svc.close()


@pytest.mark.parametrize("cache_size", [0, 100])
def test_single_requests_with_a_deadline_evaluated_together_answer_as_their_batch(tmp_path, monkeypatch, cache_size):
    from swarmpilot_predictor import distribution
    from swarmpilot_predictor.service import ROW_PATH_MAX_BATCH

    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=cache_size))
    svc.train(config(make_llm_traces(300)))
    traces = [{"input_tokens": 11 * i + 3, "output_tokens": 20 * i + 1} for i in range(ROW_PATH_MAX_BATCH + 8)]
    traces.append({"input_tokens": 1})  # no output_tokens: its own error
    deadline = 2500.0
    svc.predict(PATTERN, traces[:1])  # cached without the deadline
    svc.predict(PATTERN, traces[1:2], deadline_ms=deadline)  # and with it
    searches = count_searches(monkeypatch, distribution, "_levels_at")
    each = svc.predict_each(PATTERN, traces, deadline_ms=deadline)
    # With the cache: the entry that lacks the deadline's probability searched, then the 18
    # traces not cached, each all at once; without, the 20 traces all at once.
    assert searches == ([1, 18] if cache_size else [20])
    batch = svc.predict(PATTERN, traces, deadline_ms=deadline).batch_response()["results"]
    for got, want in zip(each, batch):
        got = got.single_response()["results"]
        assert got.get("deadline_probability") == want.get("deadline_probability") and got["status"] == want["status"]
        if got["status"] == "success":
            np.testing.assert_allclose(got["quantile_predictions"], want["quantile_predictions"], rtol=1e-6)
    assert 0.1 < batch[10]["deadline_probability"] < 0.9 and "deadline_probability" not in batch[-1]
    if cache_size:  # asked again: all read from their entries, none searched
        searches.clear()
        again = svc.predict_each(PATTERN, traces, deadline_ms=deadline)
        assert searches == [] and [p.results() for p in again] == [p.results() for p in each]
    svc.close()


def count_searches(monkeypatch, module, name: str) -> list[int]:
    """The sizes of the searches ``module.name`` makes from here on (the values of each call)."""
    sizes: list[int] = []
    search = getattr(module, name)

    def counted(quantiles, values):
        sizes.append(len(values))
        return search(quantiles, values)

    monkeypatch.setattr(module, name, counted)
    return sizes


@pytest.mark.parametrize("shared", [False, True])
def test_queues_of_one_task_have_their_deadline_searched_all_at_once(service, monkeypatch, shared):
    from swarmpilot_predictor import distribution

    service.train(config(make_llm_traces(300)))
    tasks = [{"input_tokens": 100 + 50 * i, "output_tokens": 10 + 40 * i} for i in range(12)]
    tasks[3] = {**tasks[3], "elapsed_ms": 200.0}  # running: its time left
    queues = {f"gpu-{i}": [t] for i, t in enumerate(tasks)}
    queues["two"], queues["broken"] = tasks[:2], [{"x": 1}, tasks[5]]
    deadline = 2000.0
    searches = count_searches(monkeypatch, distribution, "_levels_at")
    answer = service.predict_queues(PATTERN, queues, shared_factor=shared, deadline_ms=deadline)["queues"]
    # The running task's level reached, then the 13 queues of one predicted task in one search
    # (there was one search a queue).
    assert searches == [1, 13], searches
    monkeypatch.undo()
    for name, queue in queues.items():  # each as its own batch answers it, to the last bit
        own = predict(service, traces=queue, with_total=True, shared_factor=shared, deadline_ms=deadline).batch_response()
        assert answer[name]["total_deadline_probability"] == own["total_deadline_probability"], name
    assert 0.0 < answer["gpu-5"]["total_deadline_probability"] < 1.0


def test_a_lookup_tables_queues_search_each_records_deadline_once_in_all(service, tmp_path, monkeypatch):
    from swarmpilot_predictor.lookup import table as table_module

    service.train(config(make_llm_traces(300)))
    tasks = [{"input_tokens": 100 + 50 * i, "output_tokens": 10 + 40 * i} for i in range(12)]
    path = write_jsonl_gz(tmp_path / "tasks.jsonl.gz", tasks)
    service.generate_table(PATTERN, path, 0.9, "tasks.json")
    queues = {f"gpu-{i}": [t] for i, t in enumerate(tasks)}
    queues["two"], queues["running"] = tasks[:2], [{**tasks[4], "elapsed_ms": 200.0}, tasks[6]]
    queues["broken"], queues["idle"] = [{"input_tokens": "x"}, tasks[5]], []
    options = {"lookup_table": True, "lookup_table_name": "tasks.json"}
    searches = count_searches(monkeypatch, table_module, "levels_of_rows")  # the records' own searches
    answer = service.predict_queues(PATTERN, queues, deadline_ms=2000.0, **options)["queues"]
    # The 12 records in one search (there was one search a queue: 16).
    assert searches == [12], searches
    monkeypatch.undo()
    for name, queue in queues.items():  # each as its own batch answers it
        own = predict(service, traces=queue, with_total=True, deadline_ms=2000.0, **options).batch_response()
        assert answer[name]["total_deadline_probability"] == own["total_deadline_probability"], name
    assert 0.0 < answer["gpu-5"]["total_deadline_probability"] < 1.0


def test_only_without_the_shared_factor_is_a_total_never_likelier_done_than_a_task(service):
    # A factor below 1 takes a total below its largest task's own quantiles (README, Modelling),
    # and its probability of a deadline above that task's: the README says so.
    traces = make_llm_traces(400)
    for i, t in enumerate(traces):  # a level that moves between stretches of the run: a shared factor
        t["runtime_ms"] *= 1.5 if (i // 40) % 2 else 0.7
        t["ts"] = float(i)
    assert service.train(config(traces))["metrics"]["shared_log_sd"] > 0.3
    batch = [{"input_tokens": 500, "output_tokens": 500}, {"input_tokens": 16, "output_tokens": 8}]
    gaps = {}
    for shared in (False, True):
        gaps[shared] = []
        for deadline in np.linspace(3000.0, 9000.0, 13):
            body = predict(service, traces=batch, with_total=True, shared_factor=shared,
                           deadline_ms=float(deadline)).batch_response()
            gaps[shared].append(body["total_deadline_probability"] - min(r["deadline_probability"] for r in body["results"]))
    assert max(gaps[False]) <= 1e-9
    assert max(gaps[True]) > 0.005


# --------------------------------------------------------------------------- evaluation


def test_evaluate_scores_a_version_on_measured_traces_and_records_nothing(service):
    service.train(config(make_llm_traces(400)))
    fresh = make_llm_traces(3000, seed=21)  # the training's distribution: calibrated
    answer = service.evaluate(PATTERN, fresh)
    assert answer["version"] == 1 and answer["evaluated"] == 3000 and answer["rejected"] == []
    for level, got in answer["coverage"].items():
        assert abs(got - float(level)) < 0.03, answer["coverage"]
    assert abs(answer["interval_coverage"]["0.9"] - 0.9) < 0.03
    assert answer["expect_ratio"] == pytest.approx(1.0, abs=0.03)
    assert answer["calibration"]["corrected_p_value"] > 1e-3
    assert answer["relative_pinball_loss"] == pytest.approx(
        answer["heldout_at_training"]["relative_pinball_loss"], rel=0.25)
    # Nothing recorded: no observation, no drift, nothing counted.
    assert service.accuracy(PATTERN)["observations"] == 0
    assert not (service.settings.data_dir / "observations").exists() or not any(
        (service.settings.data_dir / "observations").rglob("*.jsonl"))
    assert "predictor_observations_total{" not in service.render_metrics()[0].decode()


def test_evaluate_tells_runtimes_that_are_not_those_predicted(service):
    service.train(config(make_llm_traces(400)))
    slower = [{**t, "runtime_ms": t["runtime_ms"] * 1.5} for t in make_llm_traces(1000, seed=22)]
    answer = service.evaluate(PATTERN, slower)
    assert answer["coverage"]["0.5"] < 0.1 and answer["expect_ratio"] == pytest.approx(1.5, rel=0.05)
    assert answer["calibration"]["corrected_p_value"] < 1e-12
    assert answer["calibration"]["p_values"][answer["calibration"]["worst_level"]] < 1e-12


def _figures(answer: dict) -> list[float]:
    """Every figure of an evaluation's accuracy and calibration (NaN would be written as null)."""
    return [*answer["coverage"].values(), *answer["interval_coverage"].values(), answer["mean_abs_coverage_error"],
            answer["pinball_loss"], answer["relative_pinball_loss"], answer["median_mape"], answer["expect_ratio"],
            answer["error_ratio"], *answer["calibration"]["p_values"].values(), answer["calibration"]["corrected_p_value"]]


@pytest.mark.parametrize("runtime", [1e-12, 1e-6, 4.0, 1e12, 1e15])
def test_evaluate_answers_finite_figures_for_one_trace_identical_runtimes_and_runtimes_far_off(service, runtime):
    service.train(config(make_llm_traces(200)))
    trace = {k: v for k, v in make_llm_traces(1, seed=26)[0].items() if k != "runtime_ms"}
    for n in (1, 20, 200):
        answer = service.evaluate(PATTERN, [{**trace, "runtime_ms": runtime}] * n)
        figures = _figures(answer)
        assert answer["evaluated"] == n and all(np.isfinite(figures)) and min(figures) >= 0, answer
        assert all(0 <= answer[key][k] <= 1 for key in ("coverage", "interval_coverage") for k in answer[key])
        if runtime not in (4.0,):  # every runtime below every quantile, or above: so scored
            covered = 1.0 if runtime < 1 else 0.0
            assert answer["coverage"] == {level: covered for level in answer["coverage"]}, answer
            if n >= 20:
                assert answer["calibration"]["corrected_p_value"] < 1e-6, answer
            # 1e-12 ms is on no clock: read as 0 ticks of 5 s, each quantile under 250 ms tied
            # with it, and the coverage read as each level's (the test's p-values 1).
            assert "clock_tick_ms" not in answer or runtime >= 1


def test_evaluate_names_the_traces_it_could_not_score(service):
    service.train(config(make_llm_traces(200)))
    traces = [*make_llm_traces(50, seed=23), {"input_tokens": 10, "output_tokens": 10},
              {**make_llm_traces(1, seed=24)[0], "hardware": "A100"}]
    answer = service.evaluate(PATTERN, traces)
    assert answer["evaluated"] == 50
    assert [r["index"] for r in answer["rejected"]] == [50, 51]
    assert answer["rejected"][0]["message"] == "missing measured 'runtime_ms'"
    with pytest.raises(InvalidInput) as caught:
        service.evaluate(PATTERN, [{"input_tokens": 10, "output_tokens": 10}])
    assert caught.value.field == "traces" and "missing measured 'runtime_ms'" in caught.value.message


def test_evaluate_scores_the_version_asked_for(service):
    service.train(config(make_llm_traces(300)))
    service.train(config([{**t, "runtime_ms": t["runtime_ms"] * 2} for t in make_llm_traces(300, seed=1)]))
    doubled = [{**t, "runtime_ms": t["runtime_ms"] * 2} for t in make_llm_traces(800, seed=25)]
    serving, first = service.evaluate(PATTERN, doubled), service.evaluate(PATTERN, doubled, version=1)
    assert (serving["version"], first["version"]) == (2, 1)
    assert abs(serving["coverage"]["0.5"] - 0.5) < 0.06 and first["coverage"]["0.5"] < 0.05
    wildcard = service.evaluate(IdentityPattern.from_parts({**IDENTITY, "hardware": "*"}), doubled)
    assert wildcard["model_key"] == serving["model_key"] and wildcard["coverage"] == serving["coverage"]
    with pytest.raises(NotFound) as caught:
        service.evaluate(PATTERN, doubled, version=3)
    assert caught.value.field == "version"


def test_evaluate_settles_a_star_by_the_traces_identity_fields_as_a_prediction_does(service):
    service.train(config(make_llm_traces(200)))
    service.train(TrainConfig.model_validate({"model": {**IDENTITY, "hardware": "A100"}, "algorithm": "linear",
                                              "traces": make_llm_traces(200, seed=2)}))
    anywhere = IdentityPattern.from_parts({**IDENTITY, "hardware": "*"})
    measured = [{**t, "hardware": "A100"} for t in make_llm_traces(40, seed=26)]
    assert service.evaluate(anywhere, measured)["model_key"] == ModelIdentity.from_parts(
        {**IDENTITY, "hardware": "A100"}).key
    with pytest.raises(AmbiguousModel):  # traces that name none: the '*' matches two models
        service.evaluate(anywhere, make_llm_traces(40, seed=26))


def test_evaluate_scores_a_lookup_tables_answers_as_it_scores_the_model(service, tmp_path):
    # A service that answers from a table (the seed's mode) is checked on measured traces too.
    service.train(config(make_llm_traces(400)))
    measured = make_llm_traces(600, seed=27)
    shapes = [{k: t[k] for k in ("input_tokens", "output_tokens")} for t in measured]
    service.generate_table(PATTERN, write_jsonl_gz(tmp_path / "shapes.jsonl.gz", shapes), table_name="t.json")
    model = service.evaluate(PATTERN, measured)
    table = service.evaluate(PATTERN, [*measured, {"input_tokens": 1, "output_tokens": 1, "runtime_ms": 5.0},
                                       {**shapes[0]}], lookup_table=True, lookup_table_name="t.json")
    assert (table["source"], table["table"], table["model_key"], table["version"]) == ("lookup_table", "t.json", None, None)
    assert table["evaluated"] == 601 and [r["index"] for r in table["rejected"]] == [601]
    assert table["rejected"][0]["message"] == "missing measured 'runtime_ms'"
    # Each of the 600 traces has its own record, made by the model: the same accuracy to rounding
    # (the one shape the table does not hold is answered by its nearest record).
    for level, got in model["coverage"].items():
        assert abs(table["coverage"][level] - got) <= 0.01, (level, table["coverage"], model["coverage"])
    assert table["relative_pinball_loss"] == pytest.approx(model["relative_pinball_loss"], rel=0.05)
    assert table["calibration"]["corrected_p_value"] > 1e-3 and table["heldout_at_training"] == {}
    with pytest.raises(InvalidInput) as caught:  # no runtimes at all
        service.evaluate(PATTERN, shapes[:3], lookup_table=True, lookup_table_name="t.json")
    assert caught.value.field == "traces"
    with pytest.raises(NotFound) as caught:
        service.evaluate(PATTERN, measured, lookup_table=True, lookup_table_name="none.json")
    assert caught.value.field == "lookup_table_name"


def test_evaluate_scores_a_running_traces_whole_runtime_from_a_table_as_from_the_model(service, tmp_path):
    # A trace with elapsed_ms (a running task's, sent back with its runtime once done): the
    # table answered its time left, scored against the whole runtime, and the runtimes fell
    # above nearly every level (coverage 0.003 at 0.5, the model's 0.49). The model's
    # evaluation reads no elapsed_ms; nor does the table's now.
    service.train(config(make_llm_traces(400)))
    measured = make_llm_traces(300, seed=27)
    shapes = [{k: t[k] for k in ("input_tokens", "output_tokens")} for t in measured]
    service.generate_table(PATTERN, write_jsonl_gz(tmp_path / "shapes.jsonl.gz", shapes), table_name="t.json")
    whole = service.evaluate(PATTERN, measured, lookup_table=True, lookup_table_name="t.json")
    running = [{**t, "elapsed_ms": t["runtime_ms"] / 2} for t in measured]
    model = service.evaluate(PATTERN, running)
    table = service.evaluate(PATTERN, running, lookup_table=True, lookup_table_name="t.json")
    assert table["evaluated"] == 300 and table["coverage"] == whole["coverage"]
    for level, got in model["coverage"].items():
        assert abs(table["coverage"][level] - got) <= 0.01, (level, table["coverage"], model["coverage"])
    # In SwarmPilot's structured form too, and an elapsed_ms that is no number fails no trace,
    # as for the model.
    structured = [{"input_feature": [{"param_name": k, "val": v} for k, v in t.items() if k != "runtime_ms"],
                   "runtime_ms": t["runtime_ms"]} for t in running[:-1]]
    table = service.evaluate(PATTERN, [*structured, {**measured[-1], "elapsed_ms": "soon"}],
                             lookup_table=True, lookup_table_name="t.json")
    assert table["evaluated"] == 300 and table["rejected"] == [] and table["coverage"] == whole["coverage"]
    assert service.evaluate(PATTERN, [{**measured[-1], "elapsed_ms": "soon"}])["evaluated"] == 1


def test_evaluate_reads_a_tables_records_as_arrays_with_the_answers_a_prediction_gives(service, tmp_path, monkeypatch):
    # The evaluation of 100,000 traces took 1.0 s from a table against 0.15 s from the model:
    # most of it a prediction's answer of a dict a trace, its values in lists, made and read
    # back. It reads the records' quantiles as arrays (0.26 s), the same to the last bit.
    from swarmpilot_predictor.lookup.table import LookupTable
    from swarmpilot_predictor.monitoring import MONITOR_LEVELS

    service.train(config(make_llm_traces(400)))
    shapes = [{k: t[k] for k in ("input_tokens", "output_tokens")} for t in make_llm_traces(300, seed=27)]
    service.generate_table(PATTERN, write_jsonl_gz(tmp_path / "shapes.jsonl.gz", shapes), table_name="t.json")
    for n in (3, 300):  # (a prediction of up to 8 records reads them one at a time)
        measured = make_llm_traces(n, seed=28)
        items = service.predict(PATTERN, measured, quantiles=list(MONITOR_LEVELS), lookup_table=True,
                                lookup_table_name="t.json").items
        with monkeypatch.context() as m:
            m.setattr(LookupTable, "_rendered", lambda *a, **k: pytest.fail("a prediction's answers were rendered"))
            table = service.evaluate(PATTERN, measured, lookup_table=True, lookup_table_name="t.json")
        y = np.array([t["runtime_ms"] for t in measured])
        q = np.array([item["quantile_predictions"] for item in items])
        assert table["coverage"] == {str(level): float(np.mean(y <= q[:, k])) for k, level in enumerate(MONITOR_LEVELS)}
        assert table["expect_ratio"] == pytest.approx(y.sum() / sum(item["expect"] for item in items), rel=1e-12)


def test_a_model_an_older_service_stored_with_a_star_part_can_still_be_deleted(service):
    # Before 2026-11-28 a training could name a part '*', the URL wildcard: the model was
    # listed and served, but every delete of it was "'*' is not allowed here", for good.
    from .test_registry import fit

    starred = ModelIdentity("llm", "*", "H100", "vllm", "0.4")
    service.registry.save(*fit(starred)[:2])
    service.registry.save(*fit(ModelIdentity("llm", "other", "H100", "vllm", "0.4"))[:2])
    pattern = IdentityPattern(model_type="llm", hardware="H100", software_name="vllm", software_version="0.4")
    assert service.delete_model(pattern, 1) == {"status": "success", "model_key": starred.key, "deleted_versions": [1]}
    service.registry.save(*fit(starred, seed=1)[:2])
    assert service.delete_model(pattern)["deleted_versions"] == [2]
    assert [i.model_name for i in service.registry.identities()] == ["other"]
    with pytest.raises(InvalidInput, match=r"'\*' is not allowed"):  # a wildcard still: nothing is named '*' now
        service.delete_model(pattern)
