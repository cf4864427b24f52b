"""Lookup tables in-process: formats, matching, identity filtering, bad files and names, the CLI."""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from swarmpilot_predictor.errors import AmbiguousModel, InvalidInput, NotFound, StorageError
from swarmpilot_predictor.identity import IdentityPattern
from swarmpilot_predictor.lookup import (
    LookupTable,
    LookupTableStore,
    check_table_name,
    quantile_function,
)
from swarmpilot_predictor.lookup.quantiles import KNOT_MOST, round_significant
from swarmpilot_predictor.schemas import TrainConfig
from swarmpilot_predictor.service import PredictorService
from swarmpilot_predictor.settings import PredictorSettings
from swarmpilot_predictor.traces import TraceError, iter_trace_file

from .conftest import IDENTITY, make_llm_traces, record_fsyncs, refuse_unlink

# The example table of the seed's PREDICTOR_SERVICE.md, verbatim.
SEED_TABLE = """[
  {
    "status": "success",
    "model_type": "gpt-3.5-turbo",
    "quantiles": [0.25, 0.5, 0.75, 0.99],
    "quantile_predictions": [100.0, 150.0, 200.0, 500.0],
    "expect": 150.0,
    "error": 25.0,
    "model_info": {
      "type": "gpt-3.5-turbo",
      "name": "turbo",
      "hardware": "A100",
      "software_name": "vllm",
      "software_version": "0.1.0"
    }
  }
]
"""
SEED = IdentityPattern.from_segments("gpt-3.5-turbo", "turbo", "A100", "vllm", "0.1.0")
PATTERN = IdentityPattern.from_parts(IDENTITY)
INFO = {"type": "llm", "name": "m", "hardware": "h", "software_name": "s", "software_version": "1"}


def record(i: float, info=INFO, features=None, task_id=None, levels=(0.5, 0.9)) -> dict:
    rec = {"status": "success", "model_type": info["type"], "quantiles": list(levels),
           "quantile_predictions": [10.0 * (i + 1) + k for k in range(len(levels))],
           "expect": 10.0 * (i + 1), "error": 1.0 + i, "model_info": info}
    if features is not None:
        rec["features"] = features
    if task_id is not None:
        rec["task_id"] = task_id
    return rec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A service with a small linear model and its traces as a JSONL file."""
    data = tmp_path_factory.mktemp("lookup") / "data"
    service = PredictorService(PredictorSettings(data_dir=data))
    traces = make_llm_traces(300)
    service.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
    path = data / "traces.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(t) for t in traces) + b"\n")
    yield service, traces, path
    service.close()


# --------------------------------------------------------------------------- formats


def test_seed_readme_table_loads_and_answers(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text(SEED_TABLE)
    table = LookupTable.load(path)
    assert table.n_rows == 1 and table.feature_names == []
    pred = table.predict(SEED, [{"input_tokens": 100, "output_tokens": 50}], 0.95, with_total=True)
    res = pred.single_response()["results"]
    assert res["status"] == "success" and res["source"] == "lookup_table" and res["match"] == "random"
    assert res["quantiles"] == [0.25, 0.5, 0.75, 0.99]
    assert res["quantile_predictions"] == [100.0, 150.0, 200.0, 500.0]
    assert res["expect"] == 150.0 and res["error"] == 25.0
    assert res["model_info"]["name"] == "turbo"
    lo, hi = res["interval"]
    assert 0 < lo <= 100.0 and 200.0 < hi <= 500.0
    # The seed's client names only model_type and hardware.
    partial = IdentityPattern.from_segments("gpt-3.5-turbo", "*", "A100", "*", "*")
    assert table.lookup([{}], partial).kinds() == ["random"]
    # The seed's curl examples spell the type gpt-3.5 (its name turbo): what the table holds is named.
    with pytest.raises(NotFound, match="no records for gpt-3.5/turbo/A100/vllm/0.1.0; it holds gpt-3.5-turbo/turbo/A100") as info:
        table.lookup([{}], IdentityPattern.from_segments("gpt-3.5", "turbo", "A100", "vllm", "0.1.0"))
    assert info.value.field == "identity"


@pytest.mark.parametrize("name", ["t.json", "t.csv", "t.json.gz", "t.csv.gz"])
def test_generated_tables_round_trip_to_the_models_answers(trained, name):
    service, traces, path = trained
    result = service.generate_table(PATTERN, path, 0.9, name)
    assert result["status"] == "successful" and result["rows"] == len(traces) and result["failed"] == 0
    assert Path(result["path"]) == service.settings.tables_dir / name
    # Read for serving before the generation answers: parsed, and its sidecar written.
    assert result["load_seconds"] >= 0 and service.tables.index_path(Path(result["path"])).is_file()
    table = service.tables.get(name)
    assert table.n_rows == len(traces)
    assert table.feature_names == ["input_tokens", "output_tokens"]
    model = service.predict(PATTERN, traces, 0.9)
    from_table = service.predict(PATTERN, traces, 0.9, lookup_table=True, lookup_table_name=name)
    assert from_table.ok.all()
    for m, t in zip(model.results(), from_table.results()):
        assert t["match"] == "exact" and t["source"] == "lookup_table"
        assert t["quantiles"] == m["quantiles"]
        np.testing.assert_allclose(t["quantile_predictions"], m["quantile_predictions"], rtol=1e-9)
        np.testing.assert_allclose([t["expect"], t["error"]], [m["expect"], m["error"]], rtol=1e-9)
        # Recorded at the generation's confidence level, so the interval is the model's.
        np.testing.assert_allclose(t["interval"], m["interval"], rtol=1e-9)
        assert t["model_version"] == m["model_version"]


def test_json_records_are_the_seeds_format_plus_features(trained):
    service, traces, path = trained
    service.generate_table(PATTERN, path, 0.95, "fmt.json")
    text = (service.settings.tables_dir / "fmt.json").read_bytes()
    records = orjson.loads(text)
    assert len(records) == len(traces)
    first = records[0]
    for key in ("status", "model_type", "quantiles", "quantile_predictions", "expect", "error", "model_info"):
        assert key in first
    assert first["model_info"]["name"] == IDENTITY["model_name"] and first["model_type"] == "llm"
    assert first["features"] == {"input_tokens": traces[0]["input_tokens"], "output_tokens": traces[0]["output_tokens"]}
    assert first["task_id"] == "t0" and first["confidence_level"] == 0.95
    assert "runtime_ms" not in first["features"]


def test_a_record_holds_its_trace_s_ids_in_one_order_whatever_the_string_hashing(trained, tmp_path):
    # The ids were written in a set's order, which changes with each process's hash seed:
    # the same traces made a table of other bytes from one run to the next.
    from swarmpilot_predictor.lookup.files import _ID_COLUMNS
    from swarmpilot_predictor.traces import ID_KEYS

    service, traces, _ = trained
    ids = {"model_id": "m", "request_id": "q", "req_id": "r", "task_id": "t"}
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps({**t, **ids}) for t in traces[:3]))
    service.generate_table(PATTERN, path, 0.9, "ids.json")
    records = orjson.loads((service.settings.tables_dir / "ids.json").read_bytes())
    assert [list(r)[-4:] for r in records] == [["task_id", "req_id", "request_id", "model_id"]] * 3
    assert set(_ID_COLUMNS) == ID_KEYS  # every id key a trace may carry is written


def test_an_object_or_list_task_id_finds_its_record_in_a_csv_table_as_in_a_json_one(trained, tmp_path):
    # A CSV table writes such an id as its JSON text, which the lookup did not try: the trace
    # found no record by its task_id ("missing required feature"), where a JSON table's did.
    service, traces, _ = trained
    ids = [{"a": [1]}, [1, "x"], {"b": {"c": None}}]
    path = tmp_path / "object-ids.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps({**t, "task_id": i}) for t, i in zip(traces, ids)))
    model = [r["expect"] for r in service.predict(PATTERN, traces[:3], 0.9).results()]
    for name in ("object-ids.csv", "object-ids.json"):
        service.generate_table(PATTERN, path, 0.9, name)
        got = service.predict(PATTERN, [{"task_id": i} for i in ids], 0.9, lookup_table=True,
                              lookup_table_name=name).results()
        assert [(r["match"], r["expect"]) for r in got] == [("task_id", e) for e in model], name


def test_a_number_written_as_a_string_is_stored_as_the_model_read_it(trained, tmp_path):
    # One trace of the file spells its tokens as text: the record stores the number (stored
    # as given, the column turned categorical, and every trace not among its values found no
    # record); a hand-written table with such a string reads it as the number too.
    service, traces, _ = trained
    spelled = [dict(t) for t in traces[:40]]
    spelled[0]["input_tokens"] = str(spelled[0]["input_tokens"])
    path = tmp_path / "spelled.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(t) for t in spelled))
    for name in ("spelled.json", "spelled.csv"):
        service.generate_table(PATTERN, path, 0.9, name)
        table = service.tables.get(name)
        assert table.lookup([{"input_tokens": 1, "output_tokens": 7}]).kinds() == ["nearest"], name
        assert table.lookup([{"input_tokens": spelled[0]["input_tokens"], "output_tokens": spelled[0]["output_tokens"]}]
                            ).kinds() == ["exact"]
    first = orjson.loads((service.settings.tables_dir / "spelled.json").read_bytes())[0]
    assert first["features"]["input_tokens"] == traces[0]["input_tokens"]
    by_hand = LookupTable.from_records([record(0, features={"x": 1}), record(1, features={"x": "12"})])
    assert by_hand.lookup([{"x": 11}]).kinds() == ["nearest"] and by_hand.lookup([{"x": 11}]).rows.tolist() == [1]
    words = LookupTable.from_records([record(0, features={"x": "a1"}), record(1, features={"x": "12"})])
    assert words.lookup([{"x": "12"}]).kinds() == ["exact"] and words.lookup([{"x": 11}]).kinds() == [None]


def test_a_word_the_model_read_as_missing_is_stored_as_missing(tmp_path):
    # A numeric feature whose training read its few words as gaps reads "true" as missing too:
    # the record stores nothing there, not 1 (which a lookup of x = 1 then matched exactly,
    # answering the missing value's prediction).
    traces = [{"x": i % 50, "runtime_ms": 5.0 + i % 50} for i in range(200)]
    for i in (3, 17, 44):
        traces[i]["x"] = "n/a"
    service = PredictorService(PredictorSettings(data_dir=tmp_path / "d"))
    try:
        service.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
        path = tmp_path / "d" / "t.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(t) for t in [{"x": "true"}, {"x": 1}, {"x": "7"}]))
        service.generate_table(PATTERN, path, 0.9, "t.json")
        stored = [r["features"]["x"] for r in orjson.loads((tmp_path / "d" / "tables" / "t.json").read_bytes())]
        assert stored == [None, 1, 7.0]
    finally:
        service.close()


@pytest.mark.parametrize(("feature", "said"), [
    # A CSV table's features are columns beside its own: a feature "status" or "error" made
    # a table that could not be read (a column named twice), "quantile_bits" one that was not
    # a level, and "message" was read as the record's message, not a feature, so that a
    # trace of another message got this one's record as "exact".
    *[(name, f"'{name}' have the name of a CSV table's own column") for name in
      ("message", "status", "error", "quantile_bits", "knot_0.5")],
    # Its header's names are read without the spaces around them (a hand-written "x, gpu"):
    # the table the service wrote for a feature " gpu" read it as "gpu", and every lookup
    # failed with "missing required feature 'gpu'".
    *[(name, r"start or end with whitespace, .*: make a JSON table") for name in (" gpu", "gpu ", "gpu\t")],
])
def test_a_feature_a_csv_table_cannot_hold_makes_a_json_table_only(tmp_path, feature, said):
    rng = np.random.default_rng(3)
    traces = [{"input_tokens": int(rng.integers(10, 500)), feature: ["hot", "cold"][k % 2],
               "runtime_ms": float(rng.uniform(5, 9)) * (3 if k % 2 else 1)} for k in range(80)]
    service = PredictorService(PredictorSettings(data_dir=tmp_path / "d"))
    try:
        service.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
        path = tmp_path / "d" / "t.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(t) for t in traces))
        with pytest.raises(InvalidInput, match=said) as info:
            service.generate_table(PATTERN, path, 0.9, "t.csv")
        assert info.value.field == "format" and not (tmp_path / "d" / "tables" / "t.csv").exists()
        service.generate_table(PATTERN, path, 0.9, "t.json")
        table = service.tables.get("t.json")
        assert table.columns[1].name == feature
        assert table.lookup([{"input_tokens": 100, feature: "cold"}]).kinds() == ["nearest"]
        got = service.predict(PATTERN, traces[:2], 0.9, lookup_table=True, lookup_table_name="t.json").results()
        assert [r["match"] for r in got] == ["exact", "exact"]
    finally:
        service.close()


@pytest.mark.parametrize("blank", ["", " "])
def test_a_blank_category_is_not_written_to_a_csv_table_which_reads_it_as_missing(tmp_path, blank):
    # A CSV table's empty (or blank) cell reads back as a missing value: the record of a trace
    # {"gpu": ""} answered {"gpu": null} as "exact", where the model says "missing required
    # feature", and the trace {"gpu": ""} found no record. The trace is left out and counted.
    rng = np.random.default_rng(3)
    traces = [{"input_tokens": int(rng.integers(10, 500)), "gpu": ["a", "b"][k % 2],
               "runtime_ms": float(rng.uniform(5, 9)) * (3 if k % 2 else 1)} for k in range(80)]
    service = PredictorService(PredictorSettings(data_dir=tmp_path / "d"))
    try:
        service.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
        path = tmp_path / "d" / "t.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps({"input_tokens": 100, "gpu": g}) for g in (blank, "a")))
        got = service.generate_table(PATTERN, path, 0.9, "t.csv")
        assert got["rows"] == 1 and got["failed"] == 1
        assert "which a CSV table reads back as a missing value: make a JSON table" in got["errors"][0]
        asked = [{"input_tokens": 100, "gpu": None}, {"input_tokens": 100, "gpu": "a"}]
        for name in ("t.csv", "t.json"):
            if name == "t.json":  # a JSON table keeps the category, as the model reads it
                assert service.generate_table(PATTERN, path, 0.9, name)["rows"] == 2
                asked[1]["gpu"] = blank
            answers = service.predict(PATTERN, asked, 0.9, lookup_table=True, lookup_table_name=name).results()
            assert answers[0]["message"] == "missing required feature 'gpu'"
            assert answers[1]["match"] == "exact"
    finally:
        service.close()


def test_generation_leaves_out_the_traces_that_name_another_model(trained, tmp_path):
    # As a prediction refuses them and training leaves them out: they were written as this
    # model's records, 0 failed.
    service, traces, _ = trained
    named = [dict(t, hardware="A100" if k % 2 else IDENTITY["hardware"]) for k, t in enumerate(traces[:20])]
    path = tmp_path / "named.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(t) for t in named))
    result = service.generate_table(PATTERN, path, 0.9, "named.json")
    assert result["rows"] == 10 and result["failed"] == 10
    assert "the trace's hardware 'A100' names another model" in result["errors"][0]


def test_csv_has_feature_columns_first_then_predictions(trained):
    service, traces, path = trained
    service.generate_table(PATTERN, path, 0.95, "fmt.csv")
    header = (service.settings.tables_dir / "fmt.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["input_tokens", "output_tokens"]
    assert header[2] == "task_id"
    assert header.index("expect") > header.index("model_type")
    # The stored levels' columns, then the further levels' (knots), each in increasing order.
    quantiles = header.index("quantile_0.25")
    assert header[quantiles:quantiles + 4] == ["quantile_0.25", "quantile_0.5", "quantile_0.75", "quantile_0.99"]
    knots = header[quantiles + 4:]
    assert 0 < len(knots) <= KNOT_MOST and all(k.startswith("knot_") for k in knots)
    assert [float(k[5:]) for k in knots] == sorted(float(k[5:]) for k in knots)


def test_generation_streams_a_json_array_and_counts_failures(trained, tmp_path):
    service, traces, _ = trained
    bad = [{"input_tokens": 5}, {"output_tokens": 5, "input_tokens": "x"}]
    src = tmp_path / "mixed.json.gz"
    with gzip.open(src, "wb") as fh:
        fh.write(orjson.dumps(traces[:50] + bad, option=orjson.OPT_INDENT_2))
    result = service.generate_table(PATTERN, src, 0.95, "mixed.csv")
    assert result["rows"] == 50 and result["failed"] == 2
    assert "output_tokens" in result["errors"][0]
    with pytest.raises(InvalidInput, match="none of the 2"):
        p = tmp_path / "allbad.jsonl"
        p.write_bytes(b"\n".join(orjson.dumps(t) for t in bad))
        service.generate_table(PATTERN, p, 0.95, "allbad.json")
    assert not (service.settings.tables_dir / "allbad.json").exists()
    assert not [p for p in service.settings.tables_dir.iterdir() if p.name.endswith(".tmp")]


def test_generation_rejects_bad_arguments(trained, tmp_path):
    service, _, path = trained
    with pytest.raises(InvalidInput, match="not a path"):
        service.generate_table(PATTERN, path, 0.95, "../escape.json")
    with pytest.raises(InvalidInput, match="format"):
        service.generate_table(PATTERN, path, 0.95, "t.json", "csv")
    # What generation writes is JSON or CSV, and its message says so (not .jsonl, which loads).
    for name in ("t.txt", "t.jsonl"):
        with pytest.raises(InvalidInput, match=r"must end in \.json or \.csv \(optionally \.gz\)"):
            service.generate_table(PATTERN, path, 0.95, name)
    with pytest.raises(InvalidInput, match="confidence_level"):
        service.generate_table(PATTERN, path, 1.5)
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"input_tokens": 1, "output_tokens": 2}\n{"input_tok')
    with pytest.raises(InvalidInput, match="line 2"):
        service.generate_table(PATTERN, broken, 0.95, "broken.json")
    assert not (service.settings.tables_dir / "broken.json").exists()


def test_a_table_name_that_is_a_folder_is_refused_before_the_traces_are_predicted(trained):
    # The rename over the folder failed once every trace was predicted: a 500 "cannot write
    # lookup table dir.json ... (Is a directory)". Now a 422 naming table_name.
    service, _, path = trained
    folder = service.settings.tables_dir / "dir.json"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with pytest.raises(InvalidInput, match="table_name 'dir.json' is a folder in the table directory") as info:
            service.generate_table(PATTERN, path, 0.95, "dir.json")
        assert info.value.field == "table_name" and folder.is_dir() and not any(folder.iterdir())
    finally:
        folder.rmdir()


def test_a_table_name_of_255_bytes_is_written_through_a_temporary_name_that_fits(trained):
    # The temporary file beside it is ".<name>.<random>.tmp": cut to fit, or the write fails.
    service, traces, path = trained
    name = "t" * 250 + ".json"
    result = service.generate_table(PATTERN, path, 0.9, name)
    assert result["status"] == "successful" and result["rows"] == len(traces)
    assert service.tables.get(name).n_rows == len(traces)
    assert not [p for p in service.settings.tables_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_generated_table_s_name_is_synced_in_its_folder(trained, monkeypatch):
    # Its bytes were synced, but not the rename that names them: a power loss could lose it.
    service, traces, path = trained
    fsyncs = record_fsyncs(monkeypatch)
    service.generate_table(PATTERN, path, 0.9, "synced.csv.gz")
    tables = service.settings.tables_dir
    synced = next(i for i, f in enumerate(fsyncs) if f.path == tables and f.names is not None and "synced.csv.gz" in f.names)
    assert fsyncs[synced - 1].path.name.startswith(".synced.csv.gz.") and fsyncs[synced - 1].names is None


def test_default_table_name_comes_from_the_model(trained):
    service, _, path = trained
    result = service.generate_table(PATTERN, path, 0.95, fmt="csv")
    assert result["table_name"].endswith(".csv") and result["table_name"].startswith("llm__")


# --------------------------------------------------------------------------- matching


@pytest.fixture(scope="module")
def mixed_table() -> LookupTable:
    recs = [record(i, features={"x": i, "y": 2 * i, "kind": "a" if i % 2 else "b"}, task_id=f"t{i}") for i in range(200)]
    return LookupTable.from_records(recs, name="mixed.json")


def test_exact_task_id_nearest_and_their_order(mixed_table):
    res = mixed_table.lookup([
        {"x": 5, "y": 10, "kind": "a"},                    # exact
        {"x": 5.0, "y": 10.0, "kind": "a", "extra": 1},    # exact: 5 == 5.0, unknown fields ignored
        {"task_id": "t7"},                                 # no features: by task id
        {"x": 5, "y": 10, "kind": "a", "task_id": "t9"},   # features first
        {"x": 5.3, "y": 10.2, "kind": "a"},                # nearest, same kind
        {"x": 5.3, "y": 10.2, "kind": "b"},                # nearest among kind b
        {"input_feature": [{"param_name": "x", "val": 11}, {"param_name": "y", "val": 22},
                           {"param_name": "kind", "val": "a"}], "model_id": "m"},  # structured form
    ])
    assert res.kinds() == ["exact", "exact", "task_id", "exact", "nearest", "nearest", "exact"]
    assert res.rows.tolist() == [5, 5, 7, 5, 5, 6, 11]
    assert res.distance[4] > 0 and res.distance[0] == 0


def test_categorical_features_must_match_and_errors_name_the_feature(mixed_table):
    res = mixed_table.lookup([{"x": 5, "y": 10, "kind": "zzz"}, {"x": 5, "kind": "a"}, {"x": "five", "y": 1, "kind": "a"}])
    assert res.rows.tolist() == [-1, -1, -1]
    assert "'kind'" in res.errors[0] and "exactly" in res.errors[0]
    assert res.errors[1] == "missing required feature 'y'"
    assert res.errors[2] == "feature 'x' must be a number"




def test_a_missing_feature_names_a_field_spelt_close_to_it():
    recs = [record(i, features={"image_size": i, "color_mode": "rgb" if i % 2 else "gray"}) for i in range(20)]
    table = LookupTable.from_records(recs, name="vision.json")
    hint = ", which the table does not read: a misspelling?)"
    size = "missing required feature 'image_size' (the trace has 'img_size'" + hint
    mode = "missing required feature 'color_mode' (the trace has 'colour_mode'" + hint
    traces = [{"img_size": 3, "color_mode": "rgb"}, {"image_size": 3, "colour_mode": "rgb"},
              {"image_size": 3}, {"image_size": math.nan, "img_size": 3, "color_mode": "rgb"}]
    expected = [size, mode, "missing required feature 'color_mode'",
                "missing required feature 'image_size'"]  # a NaN is stated, not misspelt
    # One trace at a time (small batches) and vectorised (large ones) alike, numeric and categorical.
    assert table.lookup(traces).errors == expected
    assert table.lookup(traces * 10).errors == expected * 10
    # A large batch searches each set of fields once, and at most 64 different sets.
    many = [{"img_size": 3, "color_mode": "rgb", f"other_{k}": 1} for k in range(100)]
    assert table.lookup(many).errors == [size] * 64 + ["missing required feature 'image_size'"] * 36
def test_numbers_and_strings_do_not_mix_up():
    table = LookupTable.from_records([record(0, features={"x": 1, "c": "1"}), record(1, features={"x": 2, "c": 2})])
    # A column holding strings is categorical: numbers there compare as their text; and a
    # numeric column reads a number's text as the number, as the model does.
    assert table.lookup([{"x": 1, "c": 1}, {"x": 2, "c": "2"}, {"x": "1", "c": "1"}]).kinds() == ["exact"] * 3
    assert table.lookup([{"x": "1", "c": "2"}]).kinds() == ["nearest"]
    # What is no finite number stays a word, as for the model: not +inf's nearest record,
    # nor a missing value, nor an OverflowError (a 500).
    for word in ("inf", "1e400", "nan", "9" * 400, "many"):
        res = table.lookup([{"x": word, "c": "2"}])
        assert res.kinds() == [None] and res.errors == ["feature 'x' must be a number"], word


def test_a_word_among_a_columns_numbers_makes_it_categorical_and_the_miss_says_why(tmp_path):
    # A table edited by hand with one typo: the column is categorical (a model's categorical
    # feature may mix 3 and "fast"), so 60 finds no nearest record; the answer says why.
    records = [record(0, features={"batch_size": 1}), record(1, features={"batch_size": 64}),
               record(2, features={"batch_size": "abc"})]
    table = LookupTable.from_records(records)
    assert table.lookup([{"batch_size": 64}]).kinds() == ["exact"]
    res = table.lookup([{"batch_size": 60}])
    assert res.kinds() == [None] and res.errors[0].endswith(
        "(categorical features must match exactly; the table's 'batch_size' is categorical because it holds 'abc' "
        "beside numbers)")
    # Loaded again from its index beside the tables, it still says so.
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "edited.json").write_bytes(orjson.dumps(records))
    for _ in range(2):
        store = LookupTableStore(tmp_path / "tables")
        assert "because it holds 'abc' beside numbers" in store.get("edited.json").lookup([{"batch_size": 60}]).errors[0]
    # Numbers alone (or strings that spell them) stay numeric: 60 gets its nearest record.
    assert LookupTable.from_records(records[:2]).lookup([{"batch_size": 60}]).kinds() == ["nearest"]


def test_values_near_the_float_limit_find_the_farthest_record_on_their_side(mixed_table):
    import warnings

    far = [{"x": 1e308, "y": 1e308, "kind": "a"}, {"x": -1e308, "y": 0, "kind": "b"}, {"x": math.inf, "y": 3, "kind": "a"}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone = [mixed_table.lookup([t]) for t in far]
        batch = mixed_table.lookup(far * 4)  # past SCALAR_MAX: the vectorised path
    assert [r.rows[0] for r in alone] == [199, 0, 199]
    assert batch.rows.tolist() == [199, 0, 199] * 4 and batch.kinds() == ["nearest"] * 12
    # A table whose own values overflow its column statistics still builds and answers.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wild = LookupTable.from_records([record(i, features={"x": v}) for i, v in enumerate([1.0, 1e308, 1e308])])
        assert wild.lookup([{"x": 1.0}, {"x": 2.0}]).rows.tolist() == [0, 0]


def test_scalar_and_vectorised_paths_agree(mixed_table):
    rng = np.random.default_rng(3)
    traces = [{"x": float(rng.uniform(-5, 210)), "y": float(rng.uniform(0, 400)), "kind": str(rng.choice(["a", "b", "c"]))}
              for _ in range(40)]
    traces += [{"x": i, "y": 2 * i, "kind": "a" if i % 2 else "b"} for i in range(0, 200, 17)]
    traces += [{"task_id": "t3"}, {"x": 1}, "not a trace", {"kind": "a", "x": None, "y": 3}]
    batch = mixed_table.lookup(traces)
    singles = [mixed_table.lookup([t]) for t in traces]
    assert batch.rows.tolist() == [s.rows[0] for s in singles]
    assert batch.kinds() == [s.kinds()[0] for s in singles]
    assert batch.errors == [s.errors[0] for s in singles]
    np.testing.assert_allclose(batch.distance, [s.distance[0] for s in singles], equal_nan=True)
    levels = [0.05, 0.5, 0.7, 0.95]
    big = mixed_table.predict(None, traces, 0.8, levels).results()
    small = [mixed_table.predict(None, [t], 0.8, levels).results()[0] for t in traces]
    assert [a["status"] for a in big] == [b["status"] for b in small]
    assert sum(a["status"] == "success" for a in big) == 43  # kind "c" is in no record; "not a trace"
    for a, b in zip(big, small):
        assert a.keys() == b.keys()
        if a["status"] == "success":
            np.testing.assert_allclose(a["quantile_predictions"], b["quantile_predictions"], rtol=1e-12)
            np.testing.assert_allclose(a["interval"], b["interval"], rtol=1e-12)
        else:
            assert a["message"] == b["message"]


def test_a_feature_some_records_lack_is_optional_as_for_the_model():
    # Records lacking "y" come from traces the model answered without it (an optional
    # feature, filled at the mean): a query without it is answered too, at the mean, by
    # both paths. "x" every record has: without it a query fails as the model's would.
    recs = [record(i, features={"x": i, "y": (None if i % 5 == 0 else 2 * i)}) for i in range(200)]
    table = LookupTable.from_records(recs, name="optional.json")
    queries = [{"x": 40}, {"x": 40.4}, {"x": 41.2}, {"y": 10}] * 3  # 12: past the scalar path's size too
    batch = table.lookup(queries)
    singles = [table.lookup([q]) for q in queries]
    assert batch.kinds()[:4] == ["exact", "nearest", "nearest", None]
    assert batch.rows[:2].tolist() == [40, 40]  # the record lacking y, itself at the mean
    assert batch.rows[2] >= 0
    assert batch.errors[3] == "missing required feature 'x'"
    assert batch.rows.tolist() == [s.rows[0] for s in singles]
    assert batch.errors == [s.errors[0] for s in singles]
    np.testing.assert_allclose(batch.distance, [s.distance[0] for s in singles], equal_nan=True)


def test_an_infinite_feature_value_is_a_value_not_a_missing_one(tmp_path):
    # A record's x of 'inf' (a CSV cell) or 1e999 (JSON) was counted missing: x became optional,
    # and a trace without x got a nearest record, where the model says it is missing.
    path = tmp_path / "inf.csv"
    path.write_text("x,expect,error,quantile_0.5\ninf,1,1,1\n2,5,1,5\n")
    json_path = tmp_path / "inf.json"
    json_path.write_text("[" + ",".join(orjson.dumps(record(i, features={"x": x})).decode() for i, x in ((0, 0), (4, 2)))
                         .replace('"x":0', '"x":1e999') + "]")
    for table in (LookupTable.load(path), LookupTable.load(json_path)):
        for queries in ([{}], [{}, {"x": 2}] * 6):  # one by one, and past the scalar path's size
            result = table.lookup(queries)
            assert result.errors[0] == "missing required feature 'x'" and result.kinds()[1::2] == ["exact"] * (len(queries) // 2)


def test_a_feature_no_record_holds_is_never_matched_exactly():
    # Records made from traces that all lacked "y" (an optional feature of the model): a
    # query stating y was "exact" on x alone, whatever its y, though the model answers it
    # otherwise. It is the nearest record now, and one without y is still exact.
    recs = [record(i, features={"x": i, "y": None}) for i in range(50)]
    table = LookupTable.from_records(recs, name="no-y.json")
    assert "y" in table.feature_names
    queries = [{"x": 20}, {"x": 20, "y": 2000}, {"x": 20, "y": 5}, {"x": 20, "y": None}, {"x": 20, "y": ""},
               {"x": 20, "y": math.nan}]
    for batch in (queries, queries * 4):  # the scalar path and the vectorised one
        res = table.lookup(batch)
        # (an empty string or NaN is stated as well: the two paths told them apart)
        assert res.kinds()[:6] == ["exact", "nearest", "nearest", "exact", "nearest", "nearest"]
        assert res.rows[:6].tolist() == [20] * 6
    # In a table of two models, a column none of A's records hold may be B's feature, which
    # A never reads: a trace for A that carries it is still A's exact match (it fell to
    # its task id, another record, after the first form of this rule).
    other = {**INFO, "name": "b"}
    two = LookupTable.from_records([record(i, features={"x": i}, task_id=f"t{i}") for i in range(50)]
                                   + [record(i, info=other, features={"x": i, "y": i}) for i in range(50)], name="two.json")
    query = {"x": 20, "y": 3, "task_id": "t5"}
    for batch in ([query], [query] * 12):
        res = two.lookup(batch, IdentityPattern.from_segments("llm", "m", "h", "s", "1"))
        assert res.kinds()[0] == "exact" and res.rows[0] == 20


def test_a_nearest_record_is_near_on_the_features_its_answers_follow():
    # The answers follow x alone (y is scrambled and moves nothing): with every feature
    # weighted alike, a record 4 times off was picked over one that answers as the trace.
    recs = [record(i, features={"x": i, "y": (37 * i) % 100, "kind": "a"}) for i in range(100)]
    table = LookupTable.from_records(recs, name="relevance.json")
    queries = [{"x": 50.2, "y": (37 * 50) % 100 + 30, "kind": "a"}, {"x": 20.4, "y": 99, "kind": "a"}]
    for batch in (queries, queries * 6):  # the scalar path and the vectorised one
        res = table.lookup(batch)
        assert res.kinds()[:2] == ["nearest", "nearest"]
        # A neighbour in x at most (the slopes are estimated from the records: y's is small,
        # not 0); weighted alike, the y-nearer records were 2 and 7 away (expect 4% and 31% off).
        assert np.abs(res.rows[:2] - [50, 20]).max() <= 1, res.rows[:2]


def test_a_feature_the_answers_follow_up_and_down_keeps_its_weight():
    # U-shaped in x (a slope fit gave it a weight of 0.07, and the nearest records were
    # chosen on w alone: errors of 23% at the median, 83% at the 90th percentile).
    rng = np.random.default_rng(1)
    xw = rng.uniform(0, 100, (400, 2))
    recs = [{**record(0), "features": {"x": x, "w": w}, "expect": 10 + (x - 50) ** 2 + 5 * w,
             "quantile_predictions": [10 + (x - 50) ** 2 + 5 * w] * 2} for x, w in xw.tolist()]
    table = LookupTable.from_records(recs, name="ushape.json")
    queries = rng.uniform(0, 100, (200, 2))
    truth = 10 + (queries[:, 0] - 50) ** 2 + 5 * queries[:, 1]
    got = np.array([r["expect"] for r in table.predict(None, [{"x": x, "w": w} for x, w in queries]).results()])
    err = np.abs(got / truth - 1)
    assert np.median(err) < 0.06 and np.quantile(err, 0.9) < 0.2, (np.median(err), np.quantile(err, 0.9))


@pytest.mark.parametrize("feature, far, mostly_one", [("x", 1e15, False), ("x", 1e5, False), ("w", 1e15, False),
                                                     ("x", 1e15, True)])
def test_one_far_record_does_not_move_the_other_queries_nearest_records(feature, far, mostly_one):
    # A typo's 10^15 in a trace file: the distances were measured in standard deviations,
    # which it set, and every query's records in x lay as near as the next (and the fit
    # that weights the features tilted to it): errors of 55% at the median. Where most
    # records share one value (a batch size of 1), the quartiles tell nothing, and the
    # standard deviation it then fell back to was the far record's again (a review's find).
    rng = np.random.default_rng(3)
    xw = rng.uniform(0, 100, (400, 2))
    if mostly_one:
        xw[:, 0] = np.where(rng.uniform(size=400) < 0.8, 1.0, rng.integers(2, 9, 400))

    def rec(x: float, w: float) -> dict:
        value = 10 + 3 * x + 0.5 * w
        return {**record(0), "features": {"x": x, "w": w}, "expect": value, "quantile_predictions": [value] * 2}

    clean = LookupTable.from_records([rec(x, w) for x, w in xw.tolist()], name="clean.json")
    far_rec = {"x": 50.0, "w": 50.0, feature: far}
    with_far = LookupTable.from_records([rec(x, w) for x, w in xw.tolist()] + [rec(far_rec["x"], far_rec["w"])],
                                        name="far.json")
    queries = [{"x": x, "w": w} for x, w in rng.uniform(0, 100, (200, 2)).tolist()]
    if mostly_one:
        queries = [{"x": float(x), "w": q["w"]} for x, q in zip(xw[:200, 0], queries)]
    assert with_far.lookup(queries[:1]).rows.tolist() == clean.lookup(queries[:1]).rows.tolist()  # the scalar path
    # (One more record moves the features' median and quartiles a little: a near tie may fall the other way.)
    assert np.mean(with_far.lookup(queries).rows == clean.lookup(queries).rows) >= 0.98
    truth = np.array([10 + 3 * q["x"] + 0.5 * q["w"] for q in queries])
    got = np.array([r["expect"] for r in with_far.predict(None, queries).results()])
    assert np.median(np.abs(got / truth - 1)) < 0.02
    # The far record still answers a query as far out as itself.
    assert with_far.lookup([far_rec]).rows.tolist() == [400]


def test_random_fallback_is_seeded_and_spread():
    table = LookupTable.from_records([record(i) for i in range(50)], name="seed-style.json")
    traces = [{"input_tokens": i} for i in range(200)]
    first = table.lookup(traces)
    assert set(first.kinds()) == {"random"}
    assert first.rows.tolist() == table.lookup(traces).rows.tolist()
    assert first.rows.tolist() == LookupTable.from_records([record(i) for i in range(50)]).lookup(traces).rows.tolist()
    assert len(set(first.rows.tolist())) > 30
    assert table.lookup([traces[3]]).rows[0] == first.rows[3]
    reseeded = LookupTable.from_records([record(i) for i in range(50)], seed=1).lookup(traces)
    assert reseeded.rows.tolist() != first.rows.tolist()


def test_identity_filtering():
    other = dict(INFO, hardware="A100")
    recs = [record(i, features={"x": i}) for i in range(10)] + [record(100 + i, info=other, features={"x": i}) for i in range(10)]
    table = LookupTable.from_records(recs, name="two.json")
    h = IdentityPattern.from_segments("llm", "m", "h", "s", "1")
    a100 = IdentityPattern.from_segments("llm", "*", "A100", "*", "*")
    assert table.lookup([{"x": 3}], h).rows.tolist() == [3]
    assert table.lookup([{"x": 3}], a100).rows.tolist() == [13]
    assert table.predict(a100, [{"x": 3}]).results()[0]["model_info"]["hardware"] == "A100"
    with pytest.raises(NotFound, match="has no records for llm/m/T4"):
        table.lookup([{"x": 3}], IdentityPattern.from_segments("llm", "m", "T4", "*", "*"))
    # Records of the two models interleaved (each read against the last record's model first).
    mixed = LookupTable.from_records([r for pair in zip(recs[:10], recs[10:]) for r in pair])
    assert mixed.lookup([{"x": 3}], h).rows.tolist() == [6] and mixed.lookup([{"x": 3}], a100).rows.tolist() == [7]
    assert mixed.row_identity.tolist() == [0, 1] * 10
    # A record that leaves an identity part out matches any value of it.
    loose = LookupTable.from_records([{**record(0), "model_info": {"type": "llm"}}])
    assert loose.lookup([{}], IdentityPattern.from_segments("llm", "x", "y", "z", "w")).kinds() == ["random"]


def test_a_tables_model_whose_part_ends_with_a_space_is_quoted_in_the_not_found_message():
    # A hand-edited "1 ": "has no records for llm/m/h/s/1; it holds llm/m/h/s/1 " read as the
    # model asked for being the one held.
    table = LookupTable.from_records([record(0, info=dict(INFO, software_version="1 ")), record(1, info=dict(INFO, hardware="A100"))])
    with pytest.raises(NotFound) as info:
        table.lookup([{}], IdentityPattern.from_segments("llm", "m", "h", "s", "1"))
    assert info.value.message.endswith("has no records for llm/m/h/s/1; it holds 'llm/m/h/s/1 ', llm/m/A100/s/1")


@pytest.mark.parametrize("copies", [1, 40])  # the scalar path and the vectorised one
def test_identity_fields_in_a_trace_pick_the_tables_identity_as_for_the_model(copies):
    other = dict(INFO, hardware="A100", software_version="2.4")
    recs = [record(i, features={"x": i}) for i in range(10)] + [record(100 + i, info=other, features={"x": i}) for i in range(10)]
    table = LookupTable.from_records(recs, name="two.json")
    loose = IdentityPattern.from_segments("llm", "m", "*", "*", "*")
    a100 = [{"x": 3, "hardware": "A100"}, {"x": 4, "software_version": 2.4}, {"x": 5},
            {"input_feature": [{"param_name": "x", "val": 6}, {"param_name": "hardware", "val": "A100"}]},
            {"x": 3, "model_name": "other"}]
    res = table.lookup(a100 * copies, loose)
    assert res.rows.tolist() == [13, 14, 15, 16, -1] * copies
    assert res.errors[4] == "the trace's model_name 'other' names another model than llm/m/*/*/*"
    got = table.predict(loose, a100 * copies).results()
    assert {r["model_info"]["hardware"] for r in got[:4]} == {"A100"} and got[4]["status"] == "error"
    assert table.lookup([{"x": 3, "hardware": "h"}] * copies, loose).rows.tolist() == [3] * copies
    # One request is answered by one model, as a model's prediction is: traces that name
    # both, or none, are a 409 naming the candidates (they were answered record by record).
    with pytest.raises(AmbiguousModel, match="the traces name different models") as info:
        table.lookup([{"x": 3, "hardware": "A100"}, {"x": 3, "hardware": "h"}] * copies, loose)
    assert info.value.extra["candidates"] == ["llm/m/h/s/1", "llm/m/A100/s/2.4"] and info.value.field == "identity"
    with pytest.raises(AmbiguousModel, match="holds 2 models that match llm/m/\\*/\\*/\\*: llm/m/h/s/1, llm/m/A100") as info:
        table.lookup([{"x": 3}] * copies, loose)
    assert info.value.field == "identity"
    with pytest.raises(NotFound, match="has no records for llm/m/\\*/\\*/\\* with the traces' hardware 'T4'") as info:
        table.lookup([{"x": 3, "hardware": "T4"}] * copies, loose)
    assert info.value.field == "identity"
    # Traces of which only some name a model of the table: that model answers, and the others
    # fail alone (the batch was a 404 saying A100 had no records), as does a trace that cannot
    # be read but names it by its own fields.
    some = [{"x": 3, "hardware": "A100"}, {"x": 5, "hardware": "T4"}, {"hardware": "A100", "input_feature": "no"}]
    res = table.lookup(some * copies, loose)
    assert res.rows.tolist() == [13, -1, -1] * copies
    assert res.errors[1] == "lookup table 'two.json' has no records for the trace's hardware 'T4'"
    assert res.errors[2] == "input_feature must be a list of {param_name, val} objects"
    with pytest.raises(NotFound, match=r"hardware 'g0' and 'g1' and 'g2' and 'g3' and 'g4' and 995 more$"):
        table.lookup([{"x": 3, "hardware": f"g{i}"} for i in range(1000)], loose)
    # A table of one model is answered alike: traces that name none of its models are a 404
    # (they were each that trace's error while the table held one model, a 404 with two),
    # and where some name it, it answers and the others fail alone.
    one = LookupTable.from_records(recs[:10], name="one.json")
    with pytest.raises(NotFound, match="has no records for llm/m/\\*/\\*/\\* with the traces' hardware 'T4'") as info:
        one.lookup([{"x": 3, "hardware": "T4"}, {"x": 4}] * copies, loose)
    assert info.value.field == "identity"
    res = one.lookup([{"x": 3, "hardware": "T4"}, {"x": 4, "hardware": "h"}, {"x": 5}] * copies, loose)
    assert res.rows.tolist() == [-1, 4, 5] * copies
    assert res.errors[0] == "lookup table 'one.json' has no records for the trace's hardware 'T4'"
    # A URL that names the hardware: the trace that states another fails alone.
    res = one.lookup([{"x": 3, "hardware": "T4"}, {"x": 4}] * copies, IdentityPattern.from_segments("llm", "m", "h", "*", "*"))
    assert res.rows.tolist() == [-1, 4] * copies
    assert res.errors[0] == "the trace's hardware 'T4' names another model than llm/m/h/*/*"


def test_a_record_that_leaves_identity_parts_out_answers_beside_the_model_a_request_names():
    # Not several models: the loose records answer for any hardware, as before.
    loose_info = {"type": "llm", "name": "m"}
    recs = [record(i, features={"x": i}) for i in range(10)] + [
        {**record(100 + i, features={"x": i + 0.5}), "model_info": loose_info} for i in range(10)]
    table = LookupTable.from_records(recs, name="loose.json")
    res = table.lookup([{"x": 3}, {"x": 4.5}], IdentityPattern.from_segments("llm", "*", "*", "*", "*"))
    assert res.kinds() == ["exact", "exact"] and res.rows.tolist() == [3, 14]


def test_flat_feature_records_and_jsonl_tables(tmp_path):
    recs = [{**record(i), "input_tokens": i, "runtime_ms": 3.0, "task_id": f"t{i}"} for i in range(5)]
    path = tmp_path / "flat.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in recs))
    table = LookupTable.load(path)
    assert table.feature_names == ["input_tokens"]
    assert table.lookup([{"input_tokens": 3}]).rows.tolist() == [3]


def test_quantiles_at_other_levels_and_totals():
    table = LookupTable.from_records([record(0, levels=(0.25, 0.5, 0.75)), record(1, levels=(0.25, 0.5, 0.75))])
    vals = np.array([[10.0, 11.0, 12.0]])
    q = quantile_function(np.array([0.25, 0.5, 0.75]), vals, np.array([11.0]), np.array([1.0]), [0.5, 0.375, 0.9, 0.01])
    assert q[0, 0] == 11.0 and q[0, 1] == pytest.approx(10.5)
    # Beyond the stored levels, log-linear in the normal score through the two outermost
    # (above: no lower than the normal approximation from the mean and sd, 12.28 here).
    z25, z01, z75, z90 = -0.6744897501960817, -2.3263478740408408, 0.6744897501960817, 1.2815515655446004
    assert q[0, 2] == pytest.approx(12.0 * (12.0 / 11.0) ** ((z90 - z75) / (z75 - 0.0)))
    assert q[0, 2] > 11.0 + z90
    assert q[0, 3] == pytest.approx(10.0 * (11.0 / 10.0) ** ((z01 - z25) / (0.0 - z25)))
    # A right-skewed record: the normal approximation falls below the stored 0.99 quantile,
    # and alone it left every level above flat there.
    skewed = quantile_function(np.array([0.5, 0.9, 0.99]), np.array([[10.0, 20.0, 60.0]]), np.array([14.0]),
                               np.array([9.0]), [0.99, 0.995, 0.999])[0]
    assert skewed[0] == 60.0 and 60.0 < skewed[1] < skewed[2]
    pred = table.predict(None, [{"a": 1}, {"a": 2}, {"a": 3}], 0.9, [0.1, 0.5, 0.9], with_total=True)
    body = pred.batch_response()
    expects = [r["expect"] for r in body["results"]]
    errors = [r["error"] for r in body["results"]]
    assert body["expect"] == pytest.approx(sum(expects))
    assert body["error"] == pytest.approx(math.sqrt(sum(e * e for e in errors)))
    # The total is the sum of the tasks' distributions as their answers read them.
    sums = sampled_sums(table, [{"a": 1}, {"a": 2}, {"a": 3}])
    assert_sum_quantiles(sums, [0.1, 0.5, 0.9], body["total_quantiles"])
    assert_sum_quantiles(sums, [0.05, 0.95], body["total_interval"])
    assert body["source"] == "lookup_table"
    one = table.predict(None, [{"a": 1}], 0.9, with_total=True).batch_response()
    assert one["total_quantiles"] == one["results"][0]["quantile_predictions"]


def sampled_sums(table: LookupTable, traces: list[dict], draws: int = 200_000, seed: int = 0) -> np.ndarray:
    """Sums of independent draws from the distributions of the records ``traces`` find, each
    read off its stored quantiles as its answers are (on a grid of 20,000 levels), its tail
    above the stored levels brought to the record's stored mean, as a total takes them."""
    rows = table.lookup(traces).rows
    grid = (np.arange(20_000) + 0.5) / 20_000
    values = table.task_distributions(rows).quantiles(grid)
    pick = np.random.default_rng(seed).integers(0, len(grid), (draws, len(rows)))
    return values[np.arange(len(rows)), pick].sum(axis=1)


def assert_sum_quantiles(sums: np.ndarray, levels: list[float], quantiles: list[float], tol: float = 0.01) -> None:
    """Each quantile holds its level of the sampled sums, to within ``tol`` in probability."""
    got = [float((sums <= q).mean()) for q in quantiles]
    assert np.allclose(got, levels, atol=tol), (levels, got, quantiles)


def slow_mode_traces(share: float, rows: int = 500) -> list[dict]:
    """Runs of batches of 1 to 8 tasks, 10 times slower a ``share`` of the time."""
    rng = np.random.default_rng(1)
    batch = rng.integers(1, 9, rows)
    y = (2 + batch) * np.exp(0.1 * rng.standard_normal(rows)) * np.where(rng.random(rows) < share, 10, 1)
    return [{"batch": int(b), "runtime_ms": float(v)} for b, v in zip(batch, y)]


@pytest.fixture(scope="module")
def slow_mode(tmp_path_factory):
    """A service whose model's runs are 10 times slower 5% of the time (stored levels 0.25,
    0.5, 0.75 and 0.99), with a JSON and a CSV table of its training traces."""
    data = tmp_path_factory.mktemp("slow") / "d"
    traces = slow_mode_traces(0.05)
    service = PredictorService(PredictorSettings(data_dir=data))
    service.train(TrainConfig(model=IDENTITY, traces=traces, quantiles=[0.25, 0.5, 0.75, 0.99]))
    path = data / "traces.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(t) for t in traces))
    results = [service.generate_table(PATTERN, path, table_name=name) for name in ("slow.json", "slow.csv")]
    yield service, results
    service.close()


def test_a_generated_table_answers_levels_it_does_not_store_as_the_model_does(slow_mode):
    # Read off the model's four levels and the interval alone, the slow mode's start (about
    # 0.95) lay between the stored 0.75 and 0.99: a 0.9 quantile came out 4.9 times the
    # model's, and 0.999 ones 80% off on the README's H100 example. Each record also stores
    # the model's quantiles at further levels (knots), chosen where reading off the stored
    # ones would miss the model most.
    service, results = slow_mode
    json_result, csv_result = results
    knots = json_result["knot_levels"]
    assert csv_result["knot_levels"] == knots and 0 < len(knots) <= KNOT_MOST and knots == sorted(set(knots))
    assert not {0.25, 0.5, 0.75, 0.99, 0.025, 0.975} & set(knots) and all(0 < k < 1 for k in knots)
    records = orjson.loads((service.settings.tables_dir / "slow.json").read_bytes())
    assert all(r["knot_levels"] == knots and len(r["knot_predictions"]) == len(knots) for r in records)
    assert all(np.all(np.diff(r["knot_predictions"]) >= 0) for r in records)
    levels = [0.01, 0.1, 0.6, 0.9, 0.93, 0.96, 0.999, 0.9999]
    queue = [{"batch": b} for b in range(1, 9)]
    model = np.array([r["quantile_predictions"] for r in service.predict(PATTERN, queue, 0.95, levels).results()])
    for name in ("slow.json", "slow.csv"):
        answers = service.predict(PATTERN, queue, 0.95, levels, lookup_table=True, lookup_table_name=name).results()
        assert all(a["match"] == "exact" for a in answers)
        off = np.abs(np.array([a["quantile_predictions"] for a in answers]) / model - 1)
        assert np.median(off) < 0.01 and off.max() < 0.08, (name, off.max(axis=0))
    # The one-trace path reads the same knots.
    one = service.predict(PATTERN, queue[:1], 0.95, levels, lookup_table=True, lookup_table_name="slow.json").results()
    np.testing.assert_allclose(one[0]["quantile_predictions"], answers[0]["quantile_predictions"], rtol=1e-6)


def test_a_generation_stores_as_many_knots_as_asked_for(slow_mode):
    service, _ = slow_mode
    path = service.settings.data_dir / "traces.jsonl"
    none = service.generate_table(PATTERN, path, table_name="none.json", knots=0)
    assert none["knot_levels"] == []
    records = orjson.loads((service.settings.tables_dir / "none.json").read_bytes())
    assert not any("knot_levels" in r or "knot_predictions" in r for r in records)
    four = service.generate_table(PATTERN, path, table_name="four.csv", knots=4)
    assert len(four["knot_levels"]) == 4 and service.tables.get("four.csv").knot_levels[0].tolist() == four["knot_levels"]
    for bad in (-1, 65, 2.5, True, "3"):
        with pytest.raises(InvalidInput, match="knots must be a whole number from 0 to 64") as info:
            service.generate_table(PATTERN, path, table_name="bad.json", knots=bad)
        assert info.value.field == "knots"
    assert not (service.settings.tables_dir / "bad.json").exists()
    # Read off the stored levels alone, the 0.9 quantile lies between the stored 0.75 and
    # 0.99 across the slow mode's start: far above the model's, as tables were before.
    queue = [{"batch": 4}]
    model = service.predict(PATTERN, queue, 0.95, [0.9]).results()[0]["quantile_predictions"][0]
    plain, knotted = (service.predict(PATTERN, queue, 0.95, [0.9], lookup_table=True, lookup_table_name=name)
                      .results()[0]["quantile_predictions"][0] for name in ("none.json", "slow.json"))
    assert plain > 2 * model and abs(knotted / model - 1) < 0.05, (plain, knotted, model)


def test_the_cli_tables_knots_default_is_the_services():
    import inspect

    from swarmpilot_predictor import cli
    from swarmpilot_predictor.lookup.quantiles import KNOT_LIMIT

    option = inspect.signature(cli.table_cmd).parameters["knots"].default
    assert (option.default, option.min, option.max) == (KNOT_MOST, 0, KNOT_LIMIT)


def test_a_tables_queue_totals_follow_the_models(slow_mode, tmp_path):
    # A model with a slow mode (here 15% of runs 10x slower) and a table made of it: the
    # table's totals of 2 to 100 of its tasks are within a percent or two of the model's. A
    # normal law from the records' moments put the 2-task median at 29.6 ms for the model's
    # 13.6 and the 10-task 5% quantile at half the model's; the stored quantiles summed as
    # they are interpolated, without the stretch to the model's means, put the 100-task
    # median 8.5% high; read off the model's levels alone, brought to the model's means,
    # the 100-task median was 2.6% low (5% slow), and until the knots' steep steps were
    # integrated exactly, 2.6% low with them.
    traces = slow_mode_traces(0.15)
    service = PredictorService(PredictorSettings(data_dir=tmp_path / "d"))
    try:
        service.train(TrainConfig(model=IDENTITY, traces=traces))
        path = tmp_path / "d" / "traces.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(t) for t in traces))
        service.generate_table(PATTERN, path, table_name="slow.json")
        for case, name in ((service, "slow.json"), (slow_mode[0], "slow.csv")):
            for k in (2, 10, 30, 100):
                queue = [{"batch": t["batch"]} for t in traces[:k]]
                model, table = (case.predict(PATTERN, queue, confidence_level=0.9, quantiles=[0.05, 0.5, 0.95],
                                             with_total=True, lookup_table=lookup,
                                             lookup_table_name=name).batch_response()
                                for lookup in (False, True))
                assert table["source"] == "lookup_table" and table["expect"] == pytest.approx(model["expect"], rel=1e-9)
                ratio = np.array(table["total_quantiles"]) / np.array(model["total_quantiles"])
                assert abs(ratio[1] - 1) < 0.01 and np.all(np.abs(ratio - 1) < 0.03), (name, k, ratio)
    finally:
        service.close()


def test_a_steep_step_between_two_close_levels_is_summed_at_its_own_mean():
    # A record whose quantile function jumps tenfold between two close knots (a slow mode's
    # start) and whose stored mean is the mean of that function as the table reads it: its
    # tasks are summed about as they are, not bent, stretched or given another tail.
    # Integrated on 32 bins, the step hid 5% of the function's mean, which its tail above
    # 0.999 was then scaled 146 times to make up: its 0.9999 quantile went from 131 ms to 1,729.
    rec = {**record(0, levels=(0.5,)), "quantile_predictions": [10.0], "knot_levels": [0.01, 0.1, 0.9, 0.9005, 0.99, 0.999],
           "knot_predictions": [8.0, 9.0, 11.0, 100.0, 110.0, 120.0], "features": {"a": 1}}
    probe = LookupTable.from_records([rec])
    grid = (np.arange(2_000_000) + 0.5) / 2_000_000
    mean = float(probe._quantiles_at(np.array([0]), grid).mean())
    table = LookupTable.from_records([{**rec, "expect": mean, "error": 30.0}])
    tasks = table.task_distributions(np.zeros(100, dtype=np.int64))
    assert abs(float(tasks.stretch[0]) - 1) < 1e-3 and float(tasks.bend[0]) < 1.01, (tasks.stretch[0], tasks.bend[0])
    read = table._quantiles_at(np.array([0]), np.array([0.9995, 0.9999]))[0]
    np.testing.assert_allclose(tasks.quantiles([0.9995, 0.9999])[0], read, rtol=0.02)
    body = table.predict(None, [{"a": 1}] * 100, 0.9, [0.5], with_total=True).batch_response()
    assert body["total_quantiles"][0] == pytest.approx(100 * mean, rel=0.01)


def test_knot_values_are_written_to_seven_significant_digits():
    values = np.array([0.0, 1.23456789, 12345.678901, 1.2345678e9, 3.3e-5, 99999.995, 7.0])
    assert orjson.dumps(round_significant(values).tolist()) == b"[0.0,1.234568,12345.68,1234568000.0,0.000033,100000.0,7.0]"


def test_knots_written_out_of_order_or_at_a_stored_level_are_read_in_order():
    # A writer other than the service's may list knots in any order, one at a stored level
    # (the stored quantile answers there), and values that cross (put in increasing order).
    recs = [{**record(i, levels=(0.5,)), "quantile_predictions": [10.0 + i], "features": {"a": i},
             "knot_levels": [0.9, 0.5, 0.1, 0.2], "knot_predictions": [12.0 + i, 99.0, 9.0 + i, 8.0 + i]}
            for i in range(3)]
    table = LookupTable.from_records(recs)
    assert table.knot_levels[0].tolist() == [0.1, 0.2, 0.9]
    np.testing.assert_allclose(table.knot_values[0], [[8, 9, 12], [9, 10, 13], [10, 11, 14]])
    np.testing.assert_allclose(table._quantiles_at(np.array([1]), np.array([0.1, 0.2, 0.5, 0.9]))[0], [9, 10, 11, 13])
    # Only the records that state an interval are checked against it: the second one's fails.
    stated = [recs[0], {**recs[1], "interval": [1.0, 2.0], "confidence_level": 0.8}, recs[2]]
    with pytest.raises(TraceError, match=r"success record 1: its 'interval' \[1, 2\] contradicts"):
        LookupTable.from_records(stated)
    assert LookupTable.from_records([{**recs[1], "interval": [9.0, 13.0], "confidence_level": 0.8}]).n_rows == 1


def test_records_are_checked_a_block_at_a_time_and_the_first_fault_named(monkeypatch):
    # (A million records' quantile functions are checked 65,536 at a time: here, 4.)
    from swarmpilot_predictor.lookup import table as table_module

    monkeypatch.setattr(table_module, "_CHECK_BLOCK", 4)
    recs = [{**record(i, levels=(0.5,)), "quantile_predictions": [10.0 + i], "features": {"a": i},
             "knot_levels": [0.1, 0.9], "knot_predictions": [9.0 + i, 11.0 + i],
             "interval": [8.0 + i, 12.0 + i], "confidence_level": 0.9} for i in range(10)]
    assert LookupTable.from_records(recs).n_rows == 10
    with pytest.raises(TraceError, match="success record 6: its 'knot_predictions' contradict"):
        LookupTable.from_records([*recs[:6], {**recs[6], "knot_predictions": [20.0, 30.0]}, *recs[7:]])
    skewed = [{**recs[k], "interval": [20.0, 30.0]} if k in (7, 9) else recs[k] for k in range(10)]
    with pytest.raises(TraceError, match=r"success record 7: its 'interval' \[20, 30\] contradicts"):
        LookupTable.from_records(skewed)
    # Records without an interval beside them, in the same block, are not checked against one.
    loose = [{k: v for k, v in r.items() if k not in ("interval", "confidence_level")} if i < 9 else r
             for i, r in enumerate(skewed)]
    with pytest.raises(TraceError, match=r"success record 9: its 'interval' \[20, 30\] contradicts"):
        LookupTable.from_records(loose)


def test_a_csv_column_named_knot_without_a_level_is_a_feature(tmp_path):
    # Tables made before the knots may have a feature so named; only knot_<level> is a knot.
    path = tmp_path / "t.csv"
    path.write_bytes(b"knot_count,knot_2,expect,error,quantile_0.5,knot_0.9\n3,7,10,1,10,12\n4,8,20,2,20,25\n")
    table = LookupTable.load(path)
    assert table.feature_names == ["knot_count", "knot_2"] and table.knot_levels[0].tolist() == [0.9]
    got = table.predict(None, [{"knot_count": 4, "knot_2": 8}], 0.9, [0.9]).results()[0]
    assert got["match"] == "exact" and got["quantile_predictions"] == [25.0]


def test_a_table_total_is_the_sum_of_its_tasks_distributions():
    # Two tasks of a right-skewed record (a rare slow run): a normal law from the records'
    # moments put the queue's 5% point below 0 (floored at either task's own 5% quantile,
    # 3.7 ms). The sum is of the records' distributions, each read off its stored quantiles
    # and brought to its stored mean (12 ms, where the interpolated quantiles' is 23.7): the
    # tail above 0.95 flat, and the interpolation between the stored levels bent, so that
    # most of the mass between the median and the 0.95 quantile lies near the median, as
    # the mean says. (Stretched whole by 12 / 23.7, the stored quantiles were halved: the
    # sum's median came out near 20, its 0.95 quantile below one task's stored 60.)
    skewed = {**record(0, levels=(0.05, 0.5, 0.95)), "quantile_predictions": [3.7, 5.0, 60.0], "expect": 12.0,
              "error": 20.0}
    table = LookupTable.from_records([skewed, {**skewed, "features": {"a": 2}}])
    traces = [{"a": 1}, {"a": 1}]
    body = table.predict(None, traces, 0.9, [0.05, 0.5, 0.95], with_total=True).batch_response()
    assert body["expect"] == 24.0 and body["error"] == pytest.approx(math.sqrt(2) * 20.0)  # the records' moments
    sums = sampled_sums(table, traces)
    assert_sum_quantiles(sums, [0.05, 0.5, 0.95], body["total_quantiles"])
    assert_sum_quantiles(sums, [0.05, 0.95], body["total_interval"])
    assert 10.0 < body["total_quantiles"][1] < 13.0
    tasks = table.task_distributions(table.lookup(traces).rows)
    assert float(tasks.tail_scale[0]) == 0.0 and float(tasks.bend[0]) > 2.0 and abs(float(tasks.stretch[0]) - 1) < 0.01
    # The queue takes at least as long as each of its tasks: never below one task's quantile.
    assert body["total_interval"][0] >= 3.7 and body["total_quantiles"][2] >= 60.0


def test_a_table_total_is_never_below_one_of_its_tasks_answers_between_the_stored_levels():
    # A record of a model with a rare slow mode: asked between its stored 0.75 quantile and
    # its interval's 0.95 end, its answer is read off the straight line between them (1,795
    # ms at 0.9), while the total sums its distribution bent toward the stored mean (420 ms):
    # two tasks totalled 839 ms at 0.9 and 3,287 at 0.999, under the first task's own answers.
    def slow(x: int, scale: float) -> dict:
        return {**record(0, levels=(0.25, 0.5, 0.75, 0.99)), "features": {"x": x},
                "quantile_predictions": [scale * v for v in (200.0, 250.3, 764.0, 3217.1)],
                "expect": 420.0 * scale, "error": 700.0 * scale,
                "interval": [160.0 * scale, 2139.2 * scale], "confidence_level": 0.9}

    table = LookupTable.from_records([slow(1, 1.0), slow(2, 0.1)])
    levels = [0.5, 0.9, 0.95, 0.99, 0.999]
    body = table.predict(None, [{"x": 1}, {"x": 2}], 0.9, levels, with_total=True).batch_response()
    first = body["results"][0]
    assert first["quantile_predictions"][1] > 1700.0  # the straight line's 0.9 point
    assert all(t >= q for t, q in zip(body["total_quantiles"], first["quantile_predictions"])), body["total_quantiles"]
    assert body["total_interval"][1] >= first["interval"][1]
    assert body["total_quantiles"][0] > first["quantile_predictions"][0]  # the median: the sum's own
    # Without levels of its own, a queue of records of different stored levels is answered
    # at the first's, and bounded by the answers at those levels only.
    other = {**record(5, levels=(0.5, 0.9)), "features": {"x": 3}}
    mixed = LookupTable.from_records([slow(1, 1.0), other])
    body = mixed.predict(None, [{"x": 1}, {"x": 3}], 0.9, None, with_total=True).batch_response()
    assert len(body["total_quantiles"]) == 4 and body["total_quantiles"][3] >= 3217.1


def test_a_records_extrapolated_tail_takes_the_difference_to_its_mean_not_its_body():
    # A warm run of a model with a rare first-run mode: its two outermost stored levels, the
    # interval's 0.975 end and the 0.99 quantile, straddle that mode's start (8.3 and 58.5 ms),
    # and the tail extrapolated through them reaches 84,641 ms at 0.9999. Stretched whole to
    # the stored mean (5.5 ms), the body shrank 18 times: two tasks totalled a median of
    # 4.7 ms, below the sum of their 5% quantiles. Now the tail takes the difference.
    warm = {**record(0, levels=(0.25, 0.5, 0.75, 0.99)), "quantile_predictions": [4.0, 4.4, 5.0, 58.5],
            "expect": 5.5, "error": 5.0, "interval": [3.5, 8.3], "confidence_level": 0.95}
    table = LookupTable.from_records([warm, {**warm, "features": {"a": 2}}])
    traces = [{"a": 1}, {"a": 1}]
    assert table._quantiles_at(table.lookup(traces[:1]).rows, np.array([0.9999]))[0, 0] > 80_000
    body = table.predict(None, traces, 0.9, [0.05, 0.5, 0.95], with_total=True).batch_response()
    five = body["results"][0]["quantile_predictions"][0]
    assert body["total_quantiles"][0] >= 2 * five * 0.99 and 8.3 < body["total_quantiles"][1] < 10.0
    sums = sampled_sums(table, traces)
    assert_sum_quantiles(sums, [0.05, 0.5, 0.95], body["total_quantiles"])
    # Brought to the mean, the tasks' stored quantiles are about kept: the tail above 0.99 made
    # flat, and what the interpolated body holds above the mean (3%) stretched away.
    tasks = table.task_distributions(table.lookup(traces).rows)
    assert float(tasks.tail_scale[0]) == 0.0 and 0.96 < float(tasks.stretch[0]) <= 1.0
    np.testing.assert_allclose(tasks.quantiles([0.25, 0.5, 0.75, 0.975, 0.99])[0], [4.0, 4.4, 5.0, 8.3, 58.5], rtol=0.04)


# --------------------------------------------------------------------------- bad files and names


@pytest.mark.parametrize("name", ["../x.json", "/etc/x.json", "a/b.json", "a\\b.json", ".hidden.json", "x.txt", "",
                                  "x\x00.json", ".json", "..", "x.json\n"])
def test_table_names_are_file_names(name):
    with pytest.raises(InvalidInput):
        check_table_name(name)


@pytest.mark.parametrize("name", ["t.json", "T-1 (copy).csv", "t.jsonl", "t.json.gz", "préd.json"])
def test_good_table_names(name):
    assert check_table_name(name) == name


BAD_FILES = {
    "truncated-lines.json": (b'[\n{"status":"success","quantiles":[0.5],"quantile_predictions":[1],"expect":1,"error":0},\n{"status":"succ',
                             r"line 3: not valid JSON \(unexpected end of data at column 16\); the file may be truncated$"),
    "unclosed.json": (b'[\n{"status":"success","quantiles":[0.5],"quantile_predictions":[1],"expect":1,"error":0},\n',
                      "truncated"),
    "truncated-pretty.json": (SEED_TABLE.encode()[:200], "truncated"),
    "not-array.json": (b'{"records": []}', "JSON array"),
    "empty.json": (b"", "empty"),
    "garbage.json": (b"\x00\x01\x02 not json", "JSON array"),
    "garbage-in-array.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0}, nope]', "item 1"),
    "missing-fields.json": (b'[{"status": "success", "quantiles": [0.5]}]', "quantile_predictions"),
    "bad-levels.json": (b'[{"quantiles": [1.5], "quantile_predictions": [1], "expect": 1, "error": 0}]', "strictly between"),
    "string-expect.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": "1", "error": 0}]', "'expect'"),
    "no-success.json": (b'[{"status": "error"}]', "no successful"),
    "short-row.csv": (b"x,expect,error,quantile_0.5\n1,2,3,4\n5,6\n", "line 3"),
    "no-quantiles.csv": (b"x,expect,error\n1,2,3\n", "quantile_"),
    "repeated-column.csv": (b"x,expect,error,quantile_0.5,x\n1,2,3,4,5\n", "names column 'x' twice"),
    "bad-number.csv": (b"x,expect,error,quantile_0.5\n1,two,3,4\n", "line 2"),
    # read leniently, the quote took the last row into its cell: two records, not a word
    "unclosed-quote.csv": (b'expect,error,quantile_0.5,x\n2,3,4,1\n2,3,4,"a\n2,3,4,b\n',
                           "line 3: a quoted cell that starts there is never closed"),
    "after-quote.csv": (b'expect,error,quantile_0.5,x\n2,3,4,1\n2,3,4,"a" \n', "line 3: not valid CSV"),
    "bad.json.gz": (b"\x1f\x8b\x08\x00garbage", "cannot read"),
    "records.json": (b"[1, 2]", "record 0"),
    # Hand-edited records a model could never have written.
    "reversed-interval.json": (b'[{"quantiles": [0.25, 0.5], "quantile_predictions": [10, 15], "expect": 15, "error": 1,'
                               b' "interval": [20, 8], "confidence_level": 0.9}]', "'interval'"),
    "wild-confidence.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                             b' "interval": [0.5, 2], "confidence_level": 5}]', "'confidence_level'"),
    "negative-quantile.json": (b'[{"quantiles": [0.25, 0.5], "quantile_predictions": [-3, 1], "expect": 1, "error": 0}]',
                               "negative runtime"),
    # JSON numbers have no limit; a float has (pretty-printed, so that Python's json reads it).
    "huge-expect.json": (b'[\n  {"quantiles": [0.5], "quantile_predictions": [1], "expect": 1' + b"0" * 400
                         + b', "error": 0}\n]', "too large"),
    "huge-quantile.json": (b'[\n  {"quantiles": [0.5], "quantile_predictions": [1' + b"0" * 400
                           + b'], "expect": 1, "error": 0}\n]', "too large"),
    "huge-interval.json": (b'[\n  {"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                           b' "interval": [0.5, 1' + b"0" * 400 + b'], "confidence_level": 0.9}\n]', "too large"),
    # Floats, but past any runtime: the totals' squares overflowed into nulls in a 200.
    "1e160-expect.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1e160, "error": 0}]',
                          "record 0: 'expect' must be a number from 0 to 1e\\+100 ms"),
    "1e160-error.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 1e160}]', "'error'"),
    "1e160-quantile.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1e160], "expect": 1, "error": 0}]',
                            "runtime over 1e\\+100 ms"),
    "1e160-interval.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                            b' "interval": [0.5, 1e160], "confidence_level": 0.9}]', "'interval'"),
    # A field that is there is what it says (left out, it is not read: a seed table has no interval).
    "word-interval.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                           b' "interval": "x", "confidence_level": 0.9}]', "'interval' must be \\[low, high\\]"),
    "one-end-interval.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                              b' "interval": [1]}]', "'interval' must be"),
    "word-confidence.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                             b' "interval": [0.5, 2], "confidence_level": "x"}]', "'confidence_level' must be a number"),
    "word-version.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                          b' "model_version": "x"}]', "'model_version' must be a whole number"),
    "negative-version.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                              b' "model_version": -1}]', "'model_version' must be a whole number"),
    "fractional-version.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                                b' "model_version": 1.5}]', "'model_version' must be a whole number"),
    "word-model-info.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                             b' "model_info": "x"}]', "'model_info' must be an object"),
    # Read as its text, a list named a model no request could name ("['a']/m/*/*/*").
    "list-model-type.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                             b' "model_info": {"type": ["a"], "name": "m"}}]',
                             "record 0: the model's 'type' must be a string or a number, got list"),
    # The further levels a record stores (knots) are checked as its stored quantiles are.
    "knot-lengths.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                          b' "knot_levels": [0.1, 0.9], "knot_predictions": [1]}]',
                          "'knot_levels' and 'knot_predictions' must be lists of the same length"),
    "knot-levels-alone.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                               b' "knot_levels": [0.1]}]', "'knot_levels' and 'knot_predictions' must be lists"),
    "knot-words.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                        b' "knot_levels": [0.9], "knot_predictions": ["x"]}]', "'knot_predictions' must hold numbers"),
    "knot-level-words.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                              b' "knot_levels": ["x"], "knot_predictions": [2]}]', "'knot_levels' must hold numbers"),
    "knot-bad-level.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                            b' "knot_levels": [1.5], "knot_predictions": [2]}]',
                            "'knot_levels' must be distinct levels strictly between 0 and 1"),
    "knot-negative.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                           b' "knot_levels": [0.1], "knot_predictions": [-1]}]', "knot_predictions hold a negative runtime"),
    "knot-1e160.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0,'
                        b' "knot_levels": [0.9], "knot_predictions": [1e160]}]', "knot_predictions hold a runtime over"),
    # The first record that holds a runtime out of range is named, as the file places it.
    "second-negative.json": (b'[{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0},\n'
                             b'{"status": "error"},\n'
                             b'{"quantiles": [0.5], "quantile_predictions": [-2], "expect": 1, "error": 0},\n'
                             b'{"quantiles": [0.5], "quantile_predictions": [1e160], "expect": 1, "error": 0}]',
                             r"second-negative\.json: record 2: its quantile_predictions hold a negative runtime$"),
    "second-interval.jsonl": (b'{"quantiles": [0.5], "quantile_predictions": [1], "expect": 1, "error": 0}\n\n'
                              b'{"status": "error"}\n'
                              b'{"quantiles": [0.5], "quantile_predictions": [9], "expect": 9, "error": 1,'
                              b' "interval": [1, 2], "confidence_level": 0.9}\n',
                              r"second-interval\.jsonl: line 4: its 'interval' \[1, 2\] contradicts"),
    "second-knot-over.csv": (b"x,expect,error,quantile_0.5,knot_0.9\n1,2,3,4,5\n2,2,3,4,1e160\n3,2,3,4,-1\n",
                             r"second-knot-over\.csv: line 3: its knot_predictions hold a runtime over 1e\+100 ms$"),
    "knot-contradicts.json": (b'[{"quantiles": [0.5], "quantile_predictions": [10], "expect": 10, "error": 1,'
                              b' "knot_levels": [0.9], "knot_predictions": [5]}]',
                              "record 0: its 'knot_predictions' contradict its 'quantile_predictions'"),
    "knot-contradicts-interval.json": (b'[{"quantiles": [0.5], "quantile_predictions": [10], "expect": 10, "error": 1,'
                                       b' "interval": [5, 20], "confidence_level": 0.9,'
                                       b' "knot_levels": [0.99], "knot_predictions": [15]}]',
                                       "record 0: its 'interval' \\[5, 20\\] contradicts"),
    "knot-bad-number.csv": (b"x,expect,error,quantile_0.5,knot_0.9\n1,2,3,4,five\n", "line 2"),
}


def test_a_whole_version_written_as_a_decimal_is_that_version(tmp_path):
    path = tmp_path / "t.json"
    path.write_bytes(orjson.dumps([{**record(0, features={"x": 1}), "model_version": 3.0}]))
    table = LookupTable.load(path)
    assert table.predict(None, [{"x": 1}], 0.9).results()[0]["model_version"] == 3


def test_a_csv_tables_whole_version_written_as_a_decimal_is_that_version(tmp_path):
    # As a JSON table's 3.0 (pandas writes a column of whole numbers with an empty cell so):
    # a CSV table's was refused as "a prediction column is not a number", which 3.0 is.
    path = tmp_path / "t.csv"
    header = "x,status,model_version,expect,error,quantile_0.5\n"
    path.write_text(header + "1,success,3.0,10,1,10\n2,success,,20,1,20\n")
    table = LookupTable.load(path)
    assert [r.get("model_version") for r in table.predict(None, [{"x": 1}, {"x": 2}], 0.9).results()] == [3, None]
    path.write_text(header + "1,success,1.5,10,1,10\n")
    with pytest.raises(TraceError, match="line 2: 'model_version' must be a whole number, 0 or more"):
        LookupTable.load(path)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_version_of_thousands_of_digits_does_not_fit_in_64_bits_in_the_services_words(tmp_path, fmt):
    # A CSV table's cell of 5,000 digits said Python's "a prediction column is not a number
    # (Exceeds the limit (4300 digits) ... use sys.set_int_max_str_digits() ...)"; a JSON
    # table's, "must be a whole number, 0 or more", which it is.
    digits = "1" * 5000
    path = tmp_path / f"t.{fmt}"
    path.write_text(f"x,model_version,expect,error,quantile_0.5\n1,{digits},10,1,10\n" if fmt == "csv" else
                    '[{"quantiles": [0.5], "quantile_predictions": [10], "expect": 10, "error": 1, '
                    f'"model_version": {digits}, "features": {{"x": 1}}}}]')
    where = "line 2" if fmt == "csv" else "record 0"
    with pytest.raises(TraceError, match=rf"^t\.{fmt}: {where}: 'model_version' does not fit in 64 bits \(a number past "
                       r"the float range\)$"):
        LookupTable.load(path)


def test_a_csv_tables_task_id_of_thousands_of_digits_is_kept_as_its_digits(tmp_path):
    # More digits than Python reads an integer from (4,300): the load ended in Python's
    # ValueError ("Exceeds the limit ... sys.set_int_max_str_digits()").
    digits = "1" * 5000
    path = tmp_path / "t.csv"
    path.write_text(f"x,task_id,expect,error,quantile_0.5\n1,{digits},10,1,10\n2,t,20,1,20\n")
    assert LookupTable.load(path).lookup([{"task_id": digits}, {"task_id": "t"}]).rows.tolist() == [0, 1]


def test_a_table_at_its_largest_runtimes_answers_numbers_throughout():
    # 1e100 ms is what a table may hold (past 1e154 the totals' squares overflowed into nulls).
    big = 1e100
    recs = [{"status": "success", "model_type": "llm", "quantiles": [0.25, 0.5, 0.9],
             "quantile_predictions": [0.5 * big, 0.8 * big, big], "expect": 0.7 * big, "error": 0.3 * big,
             "model_info": INFO, "features": {"x": i}} for i in range(3)]
    table = LookupTable.from_records(recs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow on the way is a RuntimeWarning
        for n in (1, 3, 3000):  # the one-trace and the vectorised paths; short and long totals
            body = table.predict(None, [{"x": i % 3} for i in range(n)], 0.9, [0.001, 0.5, 0.999],
                                 with_total=True).batch_response()
            values = [body["expect"], body["error"], *body["total_quantiles"], *body["total_interval"]]
            for r in body["results"][:3]:
                values += [r["expect"], r["error"], *r["quantile_predictions"], *r["interval"]]
            assert all(isinstance(v, float) and 0 < v < math.inf for v in values), values
            assert body["expect"] == pytest.approx(n * 0.7 * big)
            assert body["total_quantiles"][0] < body["total_quantiles"][1] < body["total_quantiles"][2]


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_table_files_give_clear_errors(tmp_path, name):
    content, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TraceError, match=expected) as info:
        LookupTable.load(path)
    assert name in str(info.value)


def test_truncated_gzip_table(tmp_path):
    path = tmp_path / "cut.json.gz"
    path.write_bytes(gzip.compress(SEED_TABLE.encode())[:-12])
    with pytest.raises(TraceError, match="cut.json.gz"):
        LookupTable.load(path)


# --------------------------------------------------------------------------- the store


def test_store_caches_reloads_and_remembers_failures(tmp_path):
    store = LookupTableStore(tmp_path / "tables", max_loaded=2)
    path = store.root / "p.json"
    path.write_text(SEED_TABLE)
    first = store.get("p.json")
    assert store.get("p.json") is first and store.loaded_count == 1
    path.write_bytes(orjson.dumps([record(i) for i in range(3)]))
    second = store.get("p.json")
    assert second is not first and second.n_rows == 3
    path.write_bytes(b"[\n{")
    for _ in range(2):
        with pytest.raises(InvalidInput, match="cannot be read"):
            store.get("p.json")
    listed = store.list()[0]
    # The copy of the file before is not served: not listed as loaded, nor its records.
    assert "cannot be read" in listed["error"] and listed["loaded"] is False and "rows" not in listed
    with pytest.raises(NotFound, match="available: p.json"):
        store.get("nope.json")
    with pytest.raises(InvalidInput):
        store.get("../p.json")
    with pytest.raises(InvalidInput, match="no default"):
        store.get(None)
    for i in range(3):
        (store.root / f"t{i}.json").write_text(SEED_TABLE)
        store.get(f"t{i}.json")
    assert store.loaded_count == 2
    assert [e["name"] for e in store.list()] == ["p.json", "t0.json", "t1.json", "t2.json"]
    assert store.delete("t0.json") == {"status": "success", "deleted": "t0.json"}
    with pytest.raises(NotFound):
        store.delete("t0.json")


def test_a_table_deleted_between_its_fingerprint_and_its_parse_is_not_found(tmp_path, monkeypatch):
    # A DELETE in that window (another worker's): the parse cannot open the file, which is
    # gone, not damaged: a 404, not a 500 nor the 422 of a table that cannot be read.
    from swarmpilot_predictor.lookup import store as store_module

    store = LookupTableStore(tmp_path / "tables")
    path = store.root / "p.json"
    path.write_text(SEED_TABLE)
    parse = store_module.LookupTable.load

    def deleted_first(p, *args, **kwargs):
        Path(p).unlink()
        return parse(p, *args, **kwargs)

    monkeypatch.setattr(store_module.LookupTable, "load", staticmethod(deleted_first))
    with pytest.raises(NotFound, match="it was deleted"):
        store.get("p.json")


def test_default_table_from_a_path_and_bad_defaults(tmp_path):
    outside = tmp_path / "predictions.json"
    outside.write_text(SEED_TABLE)
    store = LookupTableStore(tmp_path / "tables", default=str(outside))
    assert store.default_table is not None and store.default_name == "predictions.json"
    assert store.get(None) is store.default_table and store.get("predictions.json") is store.default_table
    assert [e["default"] for e in store.list()] == [True]
    with pytest.raises(Exception, match="outside the table directory"):
        store.delete("predictions.json")
    # A table generated under that name could never be reached: refused.
    with pytest.raises(InvalidInput, match="choose another name"):
        store.output_path("predictions.json")
    (tmp_path / "cut.json").write_text(SEED_TABLE[:100])
    bad = LookupTableStore(tmp_path / "tables2", default=str(tmp_path / "cut.json"))
    assert bad.default_table is None and "truncated" in bad.default_error
    missing = LookupTableStore(tmp_path / "tables3", default="nothere.json")
    assert missing.default_table is None and "no such file" in missing.default_error
    # A bare name is looked up in the table directory.
    (tmp_path / "tables4").mkdir()
    (tmp_path / "tables4" / "in.json").write_text(SEED_TABLE)
    inside = LookupTableStore(tmp_path / "tables4", default="in.json")
    assert inside.default_table is not None
    inside.delete("in.json")
    assert inside.default_table is None and inside.loaded_count == 0


def _without_hanging_on(fifo: Path, call: Callable[[], Any], what: str) -> Any:
    """What ``call`` returns, asserting that it does not hang on opening ``fifo`` (which waits
    for a writer): run in a thread given 10 s, the hung open let go after."""
    import threading

    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(call()), daemon=True)
    worker.start()
    worker.join(10)
    try:
        assert not worker.is_alive(), f"{what} hung on the FIFO"
    finally:
        if worker.is_alive():  # (let the hung open go: a writer, gone at once)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    return out[0]


def test_a_default_table_that_is_a_fifo_is_not_read(tmp_path):
    # DEFAULT_LOOKUP_TABLE naming a FIFO hung the start for ever (the table's fingerprint
    # opened it, waiting for a writer). Now it is a default that cannot be read.
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    store = _without_hanging_on(fifo, lambda: LookupTableStore(tmp_path / "tables", default=str(fifo)), "the start")
    assert store.default_table is None and "fifo.json: not a regular file" in store.default_error
    with pytest.raises(InvalidInput, match="not a regular file"):
        store.get(None)


def test_a_default_table_generated_later_or_again_is_served(tmp_path):
    root = tmp_path / "tables"
    store = LookupTableStore(root, default="later.json")
    assert store.default_table is None and "no such file" in store.default_error
    with pytest.raises(InvalidInput, match="no default lookup table is loaded"):
        store.get(None)
    # Generated after the start: the first lookup that needs it loads it.
    (root / "later.json").write_text(SEED_TABLE)
    assert store.get(None).n_rows == 1 and store.default_state() == ("later.json", True, None)
    store.delete("later.json")
    assert store.default_state()[1] is False
    (root / "later.json").write_text(SEED_TABLE)  # generated again
    assert store.get(None).n_rows == 1
    # Replaced by a file that cannot be read: the copy loaded before serves, and says why.
    (root / "later.json").write_text("[{")
    os.utime(root / "later.json", ns=(1, 1))  # another version, whatever the clock's resolution
    assert store.get(None).n_rows == 1
    name, loaded, error = store.default_state()
    assert (name, loaded) == ("later.json", True) and error.endswith("; serving the copy loaded before")
    (root / "later.json").write_text(SEED_TABLE)
    assert store.get(None).n_rows == 1 and store.default_state() == ("later.json", True, None)
    # Deleted by another worker (the file went away under this one): no longer served.
    (root / "later.json").unlink()
    with pytest.raises(InvalidInput, match="no such file"):
        store.get(None)


def test_service_health_and_lookup_requests(tmp_path):
    (tmp_path / "p.json").write_text(SEED_TABLE)
    service = PredictorService(PredictorSettings(data_dir=tmp_path / "d", default_lookup_table=str(tmp_path / "p.json")))
    try:
        health = service.health()
        assert health["mode"] == "lookup_table" and health["lookup_predictor_loaded"] is True
        assert health["lookup_table"] == "p.json"
        pred = service.predict(SEED, [{"x": 1}], lookup_table=True)
        assert pred.single_response()["results"]["source"] == "lookup_table"
        # Without lookup_table the model answers (and there is none here).
        with pytest.raises(Exception, match="no trained model"):
            service.predict(SEED, [{"x": 1}], lookup_table_name="p.json")
    finally:
        service.close()


def test_a_tables_records_say_when_another_model_version_serves(tmp_path):
    """A table is a snapshot of one version: once another serves (retrained, or the model
    deleted), its answers and its listing say so; the seed's records, made by no model of
    this registry, say nothing, nor does another service of a table made here."""
    (tmp_path / "d" / "tables").mkdir(parents=True)
    (tmp_path / "d" / "tables" / "seed.json").write_text(SEED_TABLE)
    service = PredictorService(PredictorSettings(data_dir=tmp_path / "d"))
    try:
        traces = make_llm_traces(120)
        service.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
        path = tmp_path / "d" / "traces.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(t) for t in traces) + b"\n")
        service.generate_table(PATTERN, path, table_name="t.json")
        task = {k: v for k, v in traces[0].items() if k != "runtime_ms"}

        def answer() -> dict:
            return service.predict(PATTERN, [task], lookup_table=True, lookup_table_name="t.json").single_response()["results"]

        def listed() -> dict:
            (entry,) = [t for t in service.list_tables()["tables"] if t["name"] == "t.json"]
            (ident,) = entry["identities"]
            return ident

        assert answer()["model_version"] == 1 and answer()["stale"] is False
        assert listed()["model_versions"] == [1] and listed()["serving_version"] == 1 and listed()["stale"] is False
        service.train(TrainConfig(model=IDENTITY, traces=[{**t, "runtime_ms": 3 * t["runtime_ms"]} for t in traces],
                                  algorithm="linear"))
        assert answer()["model_version"] == 1 and answer()["stale"] is True
        assert listed()["serving_version"] == 2 and listed()["stale"] is True
        service.delete_model(PATTERN)
        assert answer()["stale"] is True
        assert listed()["serving_version"] is None and listed()["stale"] is True
        seed = service.predict(SEED, [{"x": 1}], lookup_table=True, lookup_table_name="seed.json").single_response()
        assert "stale" not in seed["results"]
        service.predict(SEED, [{"x": 1}], lookup_table=True, lookup_table_name="seed.json")  # loaded: listed in full
        (entry,) = [t for t in service.list_tables()["tables"] if t["name"] == "seed.json"]
        # Listed with every key an entry has, null: a client reads each entry alike.
        assert entry["identities"][0]["model_versions"] == []
        assert entry["identities"][0]["stale"] is None and entry["identities"][0]["serving_version"] is None
    finally:
        service.close()
    # The same table served by another service (a lookup-only one, say), which never held
    # that model: whether its records are stale is not for that service to say.
    (tmp_path / "e" / "tables").mkdir(parents=True)
    (tmp_path / "e" / "tables" / "t.json").write_bytes((tmp_path / "d" / "tables" / "t.json").read_bytes())
    other = PredictorService(PredictorSettings(data_dir=tmp_path / "e"))
    try:
        result = other.predict(PATTERN, [task], lookup_table=True, lookup_table_name="t.json").single_response()["results"]
        assert result["model_version"] == 1 and "stale" not in result
        (entry,) = [t for t in other.list_tables()["tables"] if t["name"] == "t.json"]
        (ident,) = entry["identities"]
        assert ident["model_versions"] == [1] and ident["serving_version"] is None and ident["stale"] is None
    finally:
        other.close()
    # Nor where that service holds versions of the same model, but never held the table's:
    # its versions are numbered on their own (the table here names version 3).
    (tmp_path / "e" / "tables" / "t3.json").write_bytes(
        (tmp_path / "e" / "tables" / "t.json").read_bytes().replace(b'"model_version":1,', b'"model_version":3,'))
    other = PredictorService(PredictorSettings(data_dir=tmp_path / "e"))
    try:
        for _ in range(2):
            other.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
        result = other.predict(PATTERN, [task], lookup_table=True, lookup_table_name="t3.json").single_response()["results"]
        assert result["model_version"] == 3 and "stale" not in result
        (entry,) = [t for t in other.list_tables()["tables"] if t["name"] == "t3.json"]
        (ident,) = entry["identities"]
        assert ident["model_versions"] == [3] and ident["serving_version"] == 2 and ident["stale"] is None
        # One it held: stored and not serving, or deleted, is stale; the serving one is not.
        other.delete_model(PATTERN, version=2)
        (tmp_path / "e" / "tables" / "t1.json").write_bytes((tmp_path / "e" / "tables" / "t.json").read_bytes())
        (tmp_path / "e" / "tables" / "t2.json").write_bytes(
            (tmp_path / "e" / "tables" / "t.json").read_bytes().replace(b'"model_version":1,', b'"model_version":2,'))
        for name, stale in (("t1.json", False), ("t2.json", True), ("t3.json", None)):
            got = other.predict(PATTERN, [task], lookup_table=True, lookup_table_name=name).single_response()["results"]
            assert got.get("stale") is stale, name
    finally:
        other.close()


# --------------------------------------------------------------------------- CLI


def test_cli_table_command(trained, tmp_path):
    from swarmpilot_predictor.cli import app

    service, traces, path = trained
    runner = CliRunner()
    model = "llm/Qwen%2FQwen2.5-7B/NVIDIA H100 80GB HBM3/sglang/0.4.0"
    out = runner.invoke(app, ["table", model, str(path), "--output", "cli.csv", "--data-dir", str(service.settings.data_dir)])
    assert out.exit_code == 0, out.output
    assert f"wrote {len(traces)} records" in out.output
    assert LookupTable.load(service.settings.tables_dir / "cli.csv").n_rows == len(traces)
    dest = tmp_path / "elsewhere" / "t.json"
    out = runner.invoke(app, ["table", model, str(path), "-o", str(dest), "-d", str(service.settings.data_dir), "--json",
                              "--knots", "2"])
    assert out.exit_code == 0, out.output
    assert orjson.loads(out.stdout)["path"] == str(dest) and dest.is_file()
    assert len(orjson.loads(out.stdout)["knot_levels"]) == 2 and len(orjson.loads(dest.read_bytes())[0]["knot_predictions"]) == 2
    out = runner.invoke(app, ["table", model, str(path), "-o", str(dest), "-d", str(service.settings.data_dir), "--knots", "65"])
    assert out.exit_code == 2 and "'--knots'" in out.output and "64" in out.output
    out = runner.invoke(app, ["table", "llm/*/*/*/nope", str(path), "-d", str(service.settings.data_dir)])
    assert out.exit_code == 1 and "no trained model" in out.output


def test_valid_json_in_an_unusual_layout_still_loads(tmp_path):
    recs = [record(i, features={"x": i}) for i in range(3)]
    # Looks like one record a line at first, then a record spread over lines.
    text = "[\n" + orjson.dumps(recs[0]).decode() + ",\n" + orjson.dumps(recs[1], option=orjson.OPT_INDENT_2).decode() \
        + ",\n" + orjson.dumps(recs[2]).decode() + "\n]"
    path = tmp_path / "odd.json"
    path.write_text(text)
    assert LookupTable.load(path).n_rows == 3


def test_model_info_parts_a_record_leaves_out_come_from_the_request():
    table = LookupTable.from_records([{**record(0), "model_info": {"type": "llm", "hardware": "A100"}}])
    res = table.predict(IdentityPattern.from_segments("llm", "m7", "*", "*", "*"), [{}]).results()[0]
    assert res["model_info"] == {"type": "llm", "name": "m7", "hardware": "A100", "software_name": "*", "software_version": "*"}


# --------------------------------------------------------------------------- parsed-table sidecars


def test_a_table_deleted_while_its_first_lookup_writes_the_sidecar_leaves_no_sidecar(tmp_path, monkeypatch):
    # The delete, between the first lookup's look at the file and the sidecar's rename, found
    # no sidecar to delete; the rename then put one there for good (2.2 MB for 20,000 rows).
    from swarmpilot_predictor.lookup import store as store_module

    root = tmp_path / "tables"
    root.mkdir()
    (root / "m.json").write_bytes(orjson.dumps([record(i, features={"x": i}) for i in range(50)]))
    tables = LookupTableStore(root)
    real_save = store_module.save_index

    def deleted_meanwhile(table, dest, source):
        assert tables.delete("m.json")["deleted"] == "m.json"
        real_save(table, dest, source)

    monkeypatch.setattr(store_module, "save_index", deleted_meanwhile)
    tables.get("m.json")  # (answers the table it parsed)
    assert not list((root / ".index").iterdir())


def test_a_table_deleted_while_it_is_parsed_is_not_warned_of_as_a_sidecar_that_cannot_be_written(
        tmp_path, monkeypatch, caplog):
    # Its sidecar is not wanted: the warning said "cannot write its sidecar ...: No such file or directory".
    root = tmp_path / "tables"
    root.mkdir()
    (root / "m.json").write_bytes(orjson.dumps([record(i, features={"x": i}) for i in range(20)]))
    tables = LookupTableStore(root)
    parse = LookupTable.load

    def deleted_meanwhile(path, name=None, seed=0):
        table = parse(path, name=name, seed=seed)
        os.unlink(path)
        return table

    monkeypatch.setattr(LookupTable, "load", deleted_meanwhile)
    with caplog.at_level("DEBUG", logger="swarmpilot_predictor.lookup"):
        assert tables.get("m.json").n_rows == 20  # (answers the table it parsed)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "m.json" in r.getMessage()]
    assert said == [("DEBUG", "lookup table m.json was deleted while it was parsed: no sidecar written")]
    assert not list(root.glob(".index/*"))


def test_a_table_is_parsed_once_then_loaded_from_its_sidecar(tmp_path):
    from swarmpilot_predictor.lookup import load_index

    root = tmp_path / "tables"
    root.mkdir()
    recs = [record(i, features={"x": i, "y": 2 * i, "kind": "a" if i % 2 else "b"}, task_id=f"t{i}") for i in range(200)]
    for i, rec in enumerate(recs):  # the further levels a generated table's records store
        rec["knot_levels"], rec["knot_predictions"] = [0.1, 0.99], [5.0 * (i + 1), 20.0 * (i + 1) + 5]
    recs += [record(i, info=dict(INFO, hardware="A100"), levels=(0.1, 0.5, 0.99)) for i in range(5)]  # another identity
    (root / "m.json").write_bytes(orjson.dumps(recs))
    first = LookupTableStore(root)
    parsed = first.get("m.json")
    sidecar = first.index_path(root / "m.json")
    assert sidecar.is_file() and sidecar.parent.name == ".index"
    assert first.names() == ["m.json"]  # the sidecar is not a table

    # A new store (a restarted service) loads the sidecar: same table, same answers.
    again = LookupTableStore(root).get("m.json")
    assert again is not parsed and again.describe() | {"index_seconds": 0} == parsed.describe() | {"index_seconds": 0}
    traces = [{"x": 5, "y": 10, "kind": "a"}, {"x": 5.3, "y": 10.2, "kind": "b"}, {"task_id": "t7"}, {"x": "bad"}]
    for pattern in (IdentityPattern(hardware="h"), IdentityPattern(hardware="A100")):
        want = parsed.predict(pattern, traces, 0.9, [0.1, 0.5, 0.9]).results()
        assert again.predict(pattern, traces, 0.9, [0.1, 0.5, 0.9]).results() == want
    # Read off the record's knot at 0.1 (x 5's: 30 ms; its stored levels are 0.5 and 0.9).
    assert again.predict(IdentityPattern(hardware="h"), traces[:1], 0.9, [0.1]).results()[0]["quantile_predictions"] == [30.0]
    with pytest.raises(AmbiguousModel, match="holds 2 models"):  # the table's two models, as the parsed one
        again.predict(None, traces)
    # It really came from the sidecar: with a wrong source signature it is refused.
    assert load_index(sidecar, root / "m.json", "m.json", ("not", "this", "file")) is None
    # A table deleted or renamed by hand leaves its sidecar: the next start removes it, and
    # keeps the others' (an audit found 22 sidecars beside 4 tables).
    (root / "gone.json").write_bytes(orjson.dumps(recs[:3]))
    assert LookupTableStore(root).get("gone.json").n_rows == 3
    orphan = first.index_path(root / "gone.json")
    assert orphan.is_file()
    (root / "gone.json").unlink()
    LookupTableStore(root)
    assert not orphan.exists() and sidecar.is_file()


def test_a_sidecar_of_format_7_is_parsed_again(tmp_path, caplog):
    """Sidecars of format 7 were written under two other rules for a numeric feature's unit
    (2026-12-06, 18:46 to 19:51): the standard deviation where the middle half is one value,
    and until 19:32 the centre kept as 'mean'. An upgraded service reused the first (its
    nearest records were not those of the same table parsed) and warned of the second as
    unreadable. Both are parsed again, without a word."""
    root = tmp_path / "tables"
    root.mkdir()
    rng = np.random.default_rng(3)
    # Four records in five of batch 1: the interquartile range of batch is empty.
    batch = [1 if rng.random() < 0.8 else int(rng.choice([2, 4, 8])) for _ in range(200)]
    recs = [record(i, features={"batch": b, "tokens": int(rng.integers(8, 512))}) for i, b in enumerate(batch)]
    (root / "m.json").write_bytes(orjson.dumps(recs))
    store = LookupTableStore(root)
    fresh = store.get("m.json")
    sidecar = store.index_path(root / "m.json")
    queries = [{"batch": b, "tokens": t} for b in (1, 2, 3, 5, 6, 8) for t in range(10, 520, 25)]
    want = fresh.predict(None, queries, 0.9, [0.5]).results()
    with np.load(sidecar, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = orjson.loads(arrays["meta"].tobytes())
    for old in ("stale unit", "mean"):
        columns = [dict(c) for c in meta["columns"]]
        for c in columns:
            if c["name"] == "batch":  # the unit a service of 19:32 to 19:51 kept
                c["scale"] = float(np.std(np.array(batch, dtype=np.float64)))
            if old == "mean":  # and the name one of 18:46 to 19:32 kept the centre under
                c["mean"] = c.pop("centre")
        arrays["meta"] = np.frombuffer(orjson.dumps({**meta, "format": 7, "columns": columns}), dtype=np.uint8)
        with open(sidecar, "wb") as fh:
            np.savez(fh, **arrays)
        caplog.clear()
        with caplog.at_level("WARNING", logger="swarmpilot_predictor.lookup"):
            again = LookupTableStore(root).get("m.json")
        assert again.predict(None, queries, 0.9, [0.5]).results() == want, old
        assert "sidecar" not in caplog.text, old
    # and the sidecar written in their place is of this version's format, and read as such
    assert LookupTableStore(root).get("m.json").predict(None, queries, 0.9, [0.5]).results() == want


def test_a_table_opened_for_download_is_read_whole_as_it_was(tmp_path):
    """A download reads the file it opened: the table renamed over (regenerated) or deleted
    meanwhile is still sent whole, as it was, never cut or mixed with the new one."""
    store = LookupTableStore(tmp_path / "tables")
    path = store.root / "t.json"
    old = orjson.dumps([record(i, features={"x": i}) for i in range(200)])
    path.write_bytes(old)
    fh, size = store.open_table("t.json")
    with fh:
        replacement = path.with_name("new.tmp")
        replacement.write_bytes(orjson.dumps([record(0, features={"x": 0})]))
        os.replace(replacement, path)
        assert size == len(old) and fh.read() == old
    current = path.read_bytes()
    fh, size = store.open_table("t.json")
    path.unlink()
    with fh:
        assert size == len(current) and fh.read() == current
    with pytest.raises(NotFound):
        store.open_table("t.json")
    os.mkfifo(store.root / "fifo.json")
    with pytest.raises(NotFound):
        store.open_table("fifo.json")


def test_stale_or_damaged_sidecars_are_ignored_and_rewritten(tmp_path):
    import os

    root = tmp_path / "tables"
    root.mkdir()
    path = root / "s.json"
    path.write_bytes(orjson.dumps([record(i) for i in range(4)]))
    store = LookupTableStore(root)
    assert store.get("s.json").n_rows == 4
    sidecar = store.index_path(path)
    # Rewritten in place with the same size and modification time: the content digest notices.
    st = path.stat()
    edited = orjson.dumps([record(i) for i in range(4)]).replace(b'"expect":10.0', b'"expect":19.0', 1)
    path.write_bytes(edited)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    fresh = LookupTableStore(root).get("s.json")
    assert fresh.expect.tolist() == [19.0, 20.0, 30.0, 40.0]
    # A damaged sidecar (or one holding pickled objects) is not trusted: the table is parsed again.
    sidecar.write_bytes(b"PK\x03\x04 not a zip")
    assert LookupTableStore(root).get("s.json").n_rows == 4
    np.savez(sidecar, meta=np.array([{"format": 1}], dtype=object))
    assert LookupTableStore(root).get("s.json").n_rows == 4
    # Deleting the table deletes its sidecar.
    assert sidecar.is_file()
    LookupTableStore(root).delete("s.json")
    assert not sidecar.exists()


def test_a_fifo_or_a_link_in_a_sidecars_place_is_not_read_and_is_replaced(tmp_path):
    # A FIFO named like a table's sidecar hung every lookup of that table (its open waited
    # for a writer). Now it is a sidecar that cannot be read: the table is parsed, and its
    # sidecar written in that place.
    store = LookupTableStore(tmp_path / "tables")
    (store.root / "p.json").write_text(SEED_TABLE)
    (store.root / "q.json").write_text(SEED_TABLE)
    fifo, link = store.index_path(store.root / "p.json"), store.index_path(store.root / "q.json")
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    link.symlink_to(store.root / "p.json")
    rows = _without_hanging_on(fifo, lambda: [store.get(n).n_rows for n in ("p.json", "q.json")], "the lookup")
    assert rows == [1, 1]
    assert fifo.is_file() and not fifo.is_symlink() and link.is_file() and not link.is_symlink()


# --------------------------------------------------------------------------- values at the edges


def test_a_model_version_beyond_64_bits_is_a_clear_error(tmp_path):
    root = tmp_path / "tables"
    root.mkdir()
    (root / "v.json").write_bytes(orjson.dumps([record(0), {**record(1), "model_version": 2**63}]))
    with pytest.raises(TraceError, match=r"v\.json: record 1: 'model_version'"):
        LookupTable.load(root / "v.json")
    (root / "v.csv").write_text("x,model_version,expect,error,quantile_0.5\n1,3,2,1,2\n2,9223372036854775808,2,1,2\n")
    with pytest.raises(TraceError, match=r"v\.csv: line 3: 'model_version'"):
        LookupTable.load(root / "v.csv")
    # The largest version that fits still loads and is answered as it is.
    (root / "ok.json").write_bytes(orjson.dumps([{**record(0, features={"x": 1}), "model_version": 2**63 - 1}]))
    assert LookupTable.load(root / "ok.json").predict(None, [{"x": 1}]).results()[0]["model_version"] == 2**63 - 1
    store = LookupTableStore(root, default="v.json")  # a bad default must not stop the service starting
    assert store.default_table is None and "record 1" in store.default_error
    with pytest.raises(InvalidInput, match="v.csv: line 3"):
        store.get("v.csv")


def test_tables_with_integers_beyond_float_range_load(tmp_path):
    import json

    path = tmp_path / "wide.csv"
    path.write_text(f"x,expect,error,quantile_0.5\n1,2,1,2\n{'9' * 400},3,1,3\n")
    table = LookupTable.load(path)
    assert table.columns[0].values.tolist() == [1.0, math.inf]
    assert table.lookup([{"x": 1}, {"x": 2}]).rows.tolist() == [0, 0]
    # Python's json (a pretty-printed table) keeps every digit too, in ids and categorical features.
    huge = 10**400
    recs = [record(0, features={"x": 1, "c": huge}, task_id=huge), record(1, features={"x": 2, "c": "b"}, task_id="t1")]
    (tmp_path / "wide.json").write_text(json.dumps(recs, indent=2))
    table = LookupTable.load(tmp_path / "wide.json")
    assert table.lookup([{"x": 1, "c": str(huge)}, {"task_id": "t1"}]).kinds() == ["exact", "task_id"]
    # Past the digits Python reads an integer from (4300), as far past the float range: infinite.
    digits = "1" * 5000
    text = json.dumps([record(0, features={"x": 1}), record(1, features={"x": 2})], indent=2)
    (tmp_path / "digits.json").write_text(text.replace('"x": 2', f'"x": {digits}'))
    assert LookupTable.load(tmp_path / "digits.json").columns[0].values.tolist() == [1.0, math.inf]
    (tmp_path / "digits.csv").write_text(f"x,expect,error,quantile_0.5\n1,2,1,2\n{digits},3,1,3\n")
    assert LookupTable.load(tmp_path / "digits.csv").columns[0].values.tolist() == [1.0, math.inf]
    (tmp_path / "digits-traces.json").write_text('[\n{"x": ' + digits + ', "y": "' + digits + '"},\n{"x": -' + digits + "}\n]")
    assert list(iter_trace_file(tmp_path / "digits-traces.json")) == [{"x": math.inf, "y": digits}, {"x": -math.inf}]


def test_a_table_whose_sidecar_cannot_be_written_is_still_served(tmp_path, caplog):
    root = tmp_path / "tables"
    root.mkdir()
    recs = [record(0, features={"kind": "\ud800", "x": 1}), record(1, features={"kind": "b", "x": 2})]
    # Python's json writes (and reads) a lone surrogate as an escape; orjson cannot write it to the sidecar.
    import json

    (root / "s.json").write_text(json.dumps(recs, indent=2))
    store = LookupTableStore(root)
    with caplog.at_level("WARNING", logger="swarmpilot_predictor.lookup"):
        table = store.get("s.json")
    assert table.lookup([{"kind": "\ud800", "x": 1}, {"kind": "b", "x": 2}]).rows.tolist() == [0, 1]
    assert not store.index_path(root / "s.json").exists()
    assert "cannot write its sidecar" in caplog.text
    assert store.get("s.json") is table
    assert LookupTableStore(root).get("s.json").n_rows == 2


@pytest.mark.parametrize("text", ["[" * 5000, "[\n" + '{"a": ' + "[" * 5000, '[{"quantiles": ' + "[" * 5000 + "]" * 5000 + "}]"])
def test_deeply_nested_json_is_a_clear_error(tmp_path, text):
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(TraceError, match=r"deep\.json: item 0: .*nested") as info:
        LookupTable.load(path)
    assert "deep.json" in str(info.value)
    with pytest.raises(TraceError, match=r"deep\.json: item 0: .*nested"):
        list(iter_trace_file(path))


def test_deeply_nested_trace_file_fails_generation_cleanly(trained, tmp_path):
    service, _, _ = trained
    path = tmp_path / "deep.json"
    path.write_text("[" * 5000)
    with pytest.raises(InvalidInput, match="nested"):
        service.generate_table(PATTERN, path, 0.95, "deep-out.json")
    assert not (service.settings.tables_dir / "deep-out.json").exists()


def test_trace_files_with_records_over_several_lines_are_read_whole(trained, tmp_path):
    service, traces, _ = trained
    some = traces[:6]
    # One record a line at first (the fast path), then a record laid over several lines.
    text = "[\n" + ",\n".join(orjson.dumps(t).decode() for t in some[:3]) + ",\n" \
        + orjson.dumps(some[3], option=orjson.OPT_INDENT_2).decode() + ",\n" \
        + ",\n".join(orjson.dumps(t).decode() for t in some[4:]) + "\n]\n"
    path = tmp_path / "odd-traces.json"
    path.write_text(text)
    assert list(iter_trace_file(path)) == some  # each trace once, in order
    result = service.generate_table(PATTERN, path, 0.95, "odd.json")
    assert result["rows"] == 6 and result["failed"] == 0
    assert [r["task_id"] for r in orjson.loads((service.settings.tables_dir / "odd.json").read_bytes())] == \
        [t["task_id"] for t in some]
    # A file that is truncated still fails, naming the place.
    path.write_text(text[:-40])
    with pytest.raises(TraceError, match="odd-traces.json"):
        list(iter_trace_file(path))


def _csv_cells(path: Path) -> list[list[str | float]]:
    """A CSV table's cells, those that spell a number as that number (however it is spelt)."""
    import csv

    from swarmpilot_predictor.traces import finite_number_in_text

    with path.open(newline="") as fh:
        return [[x if (x := finite_number_in_text(c)) is not None else c for c in row] for row in csv.reader(fh)]


def test_csv_tables_write_their_predicted_numbers_in_one_pass(trained, tmp_path, monkeypatch):
    """A chunk's numbers are written by orjson, the other cells by the csv module around a
    marker cell; the table reads as the one written cell by cell, and a trace that holds the
    marker (never, but for a test) sends its chunk the cell-by-cell way."""
    from swarmpilot_predictor.lookup import files

    service, traces, _ = trained
    rows = [{**t, "task_id": f"t{k}", "input_tokens": t["input_tokens"] * 1e-9 if k == 0 else t["input_tokens"]}
            for k, t in enumerate(traces)]
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(t) for t in rows))
    marked_writes = []
    write_marked = files.CsvTableWriter.write_marked
    monkeypatch.setattr(files.CsvTableWriter, "write_marked",
                        lambda self, r, t: marked_writes.append(write_marked(self, r, t)) or marked_writes[-1])
    fast = service.generate_table(PATTERN, path, 0.9, "fast.csv")
    assert marked_writes == [[]]  # the one chunk, written in one pass
    monkeypatch.setattr(files._RecordValues, "csv_numbers", lambda self, cl: None)
    slow = service.generate_table(PATTERN, path, 0.9, "slow.csv")
    monkeypatch.undo()
    assert fast["rows"] == slow["rows"] == len(rows) and fast["knot_levels"] == slow["knot_levels"]
    cells = _csv_cells(service.settings.tables_dir / "fast.csv")
    assert cells == _csv_cells(service.settings.tables_dir / "slow.csv")
    assert len(cells) == len(rows) + 1 and cells[1][cells[0].index("status")] == "success"
    # The marker in a trace: that chunk is written cell by cell, the same table.
    import uuid

    fixed = uuid.UUID(int=12345)
    monkeypatch.setattr(files.uuid, "uuid4", lambda: fixed)
    rows[7]["task_id"] = "M" + fixed.hex
    path.write_bytes(b"\n".join(orjson.dumps(t) for t in rows))
    monkeypatch.setattr(files.CsvTableWriter, "write_marked",
                        lambda self, r, t: marked_writes.append(write_marked(self, r, t)) or marked_writes[-1])
    marked = service.generate_table(PATTERN, path, 0.9, "marked.csv")
    assert marked["rows"] == len(rows) and marked["failed"] == 0 and marked_writes[-1] is None
    got = _csv_cells(service.settings.tables_dir / "marked.csv")
    assert got[8][cells[0].index("task_id")] == "M" + fixed.hex
    assert got[:8] == cells[:8] and got[9:] == cells[9:]
    table = service.tables.get("marked.csv")
    assert table.lookup([{"task_id": "M" + fixed.hex}]).rows.tolist() == [7]


def test_generation_writes_integers_beyond_64_bits(trained, tmp_path):
    service, traces, _ = trained
    big = 2**70 + 1
    rows = [dict(t) for t in traces[:5]]
    rows[0]["task_id"] = big  # the CSV and Python json readers give arbitrary-size integers
    rows[4]["task_id"] = 2**60 + 1  # within 64 bits, past a float's exact integers
    rows[1]["input_tokens"] = 2**64 + 7
    rows[2]["task_id"] = 10**400
    rows[3]["task_id"] = "\ud800"  # no Unicode text: no JSON nor CSV table could hold it
    import json

    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows, indent=1))
    # Refused as the same trace on one line of a JSONL file is (until 2026-12-08, in this
    # indented layout, it was left out of the table as a trace that could not be written).
    with pytest.raises(InvalidInput, match="big.json: item 3: not valid JSON [(]a lone surrogate"):
        service.generate_table(PATTERN, path, 0.95, "big.json")
    del rows[3]
    path.write_text(json.dumps(rows, indent=1))
    result = service.generate_table(PATTERN, path, 0.95, "big.json")
    assert result["rows"] == 4 and result["failed"] == 0 and result["errors"] == []
    written = orjson.loads((service.settings.tables_dir / "big.json").read_bytes())
    assert written[0]["task_id"] == float(big) and written[1]["features"]["input_tokens"] == float(2**64 + 7)
    assert written[2]["task_id"] == str(10**400)
    table = service.tables.get("big.json")
    # The traces the table was made from find their records (API requests read such numbers as floats).
    res = table.lookup([{"task_id": float(big)}, {"input_tokens": float(2**64 + 7), "output_tokens": rows[1]["output_tokens"]}])
    assert res.kinds() == ["task_id", "exact"] and res.rows.tolist() == [0, 1]
    # A CSV table keeps every digit.
    result = service.generate_table(PATTERN, path, 0.95, "big.csv")
    assert result["rows"] == 4 and result["failed"] == 0
    lines = (service.settings.tables_dir / "big.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[1].split(",")[2] == str(big) and lines[3].split(",")[2] == str(10**400)
    # Read back, an integer id beyond 64 bits is what a request carries (orjson reads it as the
    # nearest float): the trace finds its record, as from the JSON table (it did not). A long
    # integer id is found whether the request spells it as a number or as digits, in both.
    csv_table, json_table = service.tables.get("big.csv"), service.tables.get("big.json")
    for table in (csv_table, json_table):
        for query, row in ((float(big), 0), (str(big), 0), (str(10**400), 2), (2**60 + 1, 3), (str(2**60 + 1), 3)):
            found = table.lookup([{"task_id": query}])
            assert found.rows.tolist() == [row] and found.kinds() == ["task_id"], (table.name, query)
            assert table.predict(None, [{"task_id": query}]).items[0]["match"] == "task_id"  # the one-trace path
        queries = [(float(big), 0), (str(big), 0), (str(10**400), 2), (2**60 + 1, 3), (str(2**60 + 1), 3)] * 10
        many = table.lookup([{"task_id": q} for q, _ in queries])  # the path of many traces at once
        assert many.rows.tolist() == [row for _, row in queries] and set(many.kinds()) == {"task_id"}


def test_a_csv_table_answers_the_categorical_traces_it_was_made_from(tmp_path):
    rng = np.random.default_rng(1)
    traces = [{"input_tokens": int(rng.integers(10, 500)), "zone": str(k % 3), "task_id": f"z{k}",
               "runtime_ms": 5.0 + k % 3 + float(rng.uniform())} for k in range(60)]
    service = PredictorService(PredictorSettings(data_dir=tmp_path / "d"))
    try:
        service.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
        src = tmp_path / "zones.jsonl"
        src.write_bytes(b"\n".join(orjson.dumps(t) for t in traces))
        service.generate_table(PATTERN, src, 0.9, "zones.csv")
        service.generate_table(PATTERN, src, 0.9, "zones.json")
        queries = [{k: v for k, v in t.items() if k != "task_id"} for t in traces]
        for batch in (queries[:3], queries):  # the per-trace and the vectorised paths
            from_csv = service.tables.get("zones.csv").lookup(batch)
            from_json = service.tables.get("zones.json").lookup(batch)
            assert from_json.kinds() == ["exact"] * len(batch)
            assert from_csv.kinds() == ["exact"] * len(batch) and from_csv.rows.tolist() == from_json.rows.tolist()
        csv_table = service.tables.get("zones.csv")
        near = [{"input_tokens": 1000, "zone": "2"}] * 9 + [{"input_tokens": 1000, "zone": "two"}]
        res = csv_table.lookup(near)
        assert res.kinds()[:9] == ["nearest"] * 9 and res.errors[9] == "feature 'zone' must be a number"
        assert csv_table.lookup([near[0]]).rows.tolist() == res.rows[:1].tolist()
        # A number's text is the number in a table of any format, as the model reads it.
        json_table = LookupTable.from_records([record(0, features={"x": 1})])
        assert json_table.lookup([{"x": "1"}]).kinds() == ["exact"]
        assert json_table.lookup([{"x": "one"}]).errors == ["feature 'x' must be a number"]
    finally:
        service.close()


def test_a_csv_table_keeps_a_category_that_starts_with_a_space(tmp_path):
    # The reader skips spaces after a comma (a hand-written table's ", "): a category " a100"
    # written bare read back as "a100", whose traces that record then answered (at half the
    # model's runtime), while the traces of " a100" found no record.
    rng = np.random.default_rng(2)
    gpus = [" a100", "a100", "h100"]
    traces = [{"gpu": gpus[k % 3], "runtime_ms": (10.0, 20.0, 40.0)[k % 3] * float(rng.lognormal(0, 0.05))}
              for k in range(90)]
    service = PredictorService(PredictorSettings(data_dir=tmp_path / "d"))
    try:
        service.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
        src = tmp_path / "gpus.jsonl"
        src.write_bytes(b"\n".join(orjson.dumps({"gpu": g}) for g in gpus))
        service.generate_table(PATTERN, src, 0.9, "gpus.csv")
        queries = [{"gpu": g} for g in gpus]
        model = service.predict(PATTERN, queries, quantiles=[0.5])
        table = service.predict(PATTERN, queries, quantiles=[0.5], lookup_table=True, lookup_table_name="gpus.csv")
        assert [r.get("match") for r in table.results()] == ["exact"] * 3
        assert [r["quantile_predictions"] for r in table.results()] == [r["quantile_predictions"] for r in model.results()]
        assert service.tables.get("gpus.csv").lookup(queries).rows.tolist() == [0, 1, 2]
    finally:
        service.close()


# --------------------------------------------------------------------------- deleting, and the default under load


def test_a_table_deleted_by_another_worker_is_let_go_here_too(tmp_path):
    # The worker that did not serve the DELETE kept the parsed table (870 MB for 5 million
    # records) until eight others pushed it out.
    root = tmp_path / "tables"
    root.mkdir()
    for name in ("a.json", "b.json"):
        (root / name).write_bytes(orjson.dumps([record(i) for i in range(3)]))
    here, there = LookupTableStore(root), LookupTableStore(root)
    assert here.get("a.json").n_rows == here.get("b.json").n_rows == 3 and here.loaded_count == 2
    there.delete("a.json")
    with pytest.raises(NotFound):
        here.get("a.json")
    assert here.loaded_count == 1
    there.delete("b.json")
    assert here.list() == [] and here.loaded_count == 0


def test_long_table_names_get_short_sidecars_and_delete_cleanly(tmp_path):
    root = tmp_path / "tables"
    root.mkdir()
    name = "t" * 245 + ".json"  # a legal file name; its sidecar would not be with the whole name in it
    (root / name).write_bytes(orjson.dumps([record(i) for i in range(3)]))
    store = LookupTableStore(root)
    assert store.get(name).n_rows == 3
    sidecar = store.index_path(root / name)
    assert sidecar.is_file() and len(sidecar.name.encode()) == 200 + len(".0123456789ab.npz")
    assert store.index_path(root / ("t" * 244 + "u.json")) != sidecar  # names with the same start stay apart
    assert store.delete(name) == {"status": "success", "deleted": name}
    assert not sidecar.exists() and store.loaded_count == 0
    # A multi-byte name is cut on a character boundary.
    wide = "é" * 120 + ".json"
    (root / wide).write_bytes(orjson.dumps([record(0)]))
    assert store.get(wide).n_rows == 1 and store.index_path(root / wide).is_file()
    with pytest.raises(InvalidInput, match="255 bytes"):
        check_table_name("é" * 126 + ".json")
    with pytest.raises(InvalidInput, match="lone surrogate"):
        check_table_name("\ud800.json")


def test_a_csv_table_as_a_spreadsheet_saves_it(tmp_path):
    # A byte order mark, CRLF line ends, empty cells past the header and an empty row.
    text = ("x,expect,error,quantile_0.5,quantile_0.9\r\n1,10,1,10,12,,\r\n,,,,\r\n2,20,2,20,23\r\n")
    path = tmp_path / "sheet.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    table = LookupTable.load(path)
    assert table.feature_names == ["x"] and table.n_rows == 2
    assert table.lookup([{"x": 2}]).rows.tolist() == [1]
    bom_json = tmp_path / "bom.json"
    bom_json.write_bytes(b"\xef\xbb\xbf" + orjson.dumps([record(0, features={"x": 1})]))
    assert LookupTable.load(bom_json).n_rows == 1


def test_a_table_saved_as_utf16_says_so(tmp_path):
    # As a spreadsheet's "Unicode text" writes it; it was a codec's or orjson's words about a byte.
    text = "x,expect,error,quantile_0.5,quantile_0.9\n1,10,1,10,12\n"
    path = tmp_path / "sheet.csv"
    path.write_bytes(text.encode("utf-16"))
    with pytest.raises(TraceError, match=r"sheet\.csv: the file is UTF-16 text .*; save it as UTF-8$"):
        LookupTable.load(path)


@pytest.mark.parametrize(("name", "text", "said"), [
    ("sheet.csv", "x,expect,error,quantile_0.5,quantile_0.9\ncaf\u00e9,10,1,10,12\n", "byte 0xe9"),
    ("t.jsonl", '{"x": "caf\u00e9", "expect": 10, "error": 1, "quantiles": [0.5, 0.9], "quantile_predictions": [10, 12]}\n',
     "line 1: byte 0xe9 at column 11"),
    ("t.json", '[{"x": "caf\u00e9", "expect": 10, "error": 1, "quantiles": [0.5, 0.9], "quantile_predictions": [10, 12]}]',
     "byte 0xe9"),
])
def test_a_table_saved_as_latin1_names_the_byte(tmp_path, name, text, said):
    # Read the same way as trace files: it was the codec's words ("it may be truncated"), or
    # orjson's about surrogates.
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(TraceError, match=rf"^{re.escape(name)}: {said} is not UTF-8 text \(is the file latin-1 or "
                                         r"Windows-1252\?\); save it as UTF-8$"):
        LookupTable.load(path)


def test_a_csv_table_with_spaces_after_its_commas(tmp_path):
    path = tmp_path / "spaced.csv"
    path.write_text("x, gpu, expect, error, quantile_0.5, quantile_0.9\n1, a100, 10, 1, 10, 12\n2, h100, 20, 2, 20, 23\n")
    table = LookupTable.load(path)
    assert table.feature_names == ["x", "gpu"] and table.n_rows == 2
    assert table.lookup([{"x": 2, "gpu": "h100"}]).kinds() == ["exact"]


def test_loading_the_default_table_holds_up_no_other_request(tmp_path, monkeypatch):
    # A million-row default table parses for seconds: /health (on the event loop), the
    # table list and the other tables' lookups must not wait for it.
    import threading

    root = tmp_path / "tables"
    root.mkdir()
    (root / "default.json").write_bytes(orjson.dumps([record(i, features={"x": i}) for i in range(3)]))
    (root / "other.json").write_bytes(orjson.dumps([record(i, features={"x": i}) for i in range(2)]))
    store = LookupTableStore(root, default="default.json")
    assert store.get("other.json").n_rows == 2
    (root / "default.json").write_bytes(orjson.dumps([record(i, features={"x": i}) for i in range(4)]))
    started, release = threading.Event(), threading.Event()
    real_load = store._load

    def slow_load(path, name, signature):
        if name == "default.json":
            started.set()
            release.wait(10)
        return real_load(path, name, signature)

    monkeypatch.setattr(store, "_load", slow_load)
    loading = threading.Thread(target=store.get, args=(None,))
    loading.start()
    try:
        assert started.wait(10)
        answers = []
        reader = threading.Thread(target=lambda: answers.append((store.default_state(), store.get("other.json").n_rows)))
        reader.start()
        reader.join(2)
        assert answers == [(("default.json", True, None), 2)], "waited for the default table's load"
    finally:
        release.set()
        loading.join(10)
    assert store.get(None).n_rows == 4


def test_what_a_killed_generation_left_is_removed_at_start_once_old(tmp_path):
    import os
    import time

    root = tmp_path / "tables"
    (root / ".index").mkdir(parents=True)
    old, sidecar, fresh = root / ".t.json.abcd1234.tmp", root / ".index" / ".t.npz.abcd1234.tmp", root / ".u.json.x.tmp"
    for p in (old, sidecar, fresh):
        p.write_bytes(b"[")
    for p in (old, sidecar):
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    LookupTableStore(root)
    assert not old.exists() and not sidecar.exists()
    assert fresh.exists()  # it may be a generation at work in another process


def test_deleting_a_symlinked_table_removes_its_sidecar_and_tolerates_a_stuck_one(tmp_path):
    root = tmp_path / "tables"
    root.mkdir()
    (tmp_path / "real.json").write_bytes(orjson.dumps([record(i) for i in range(2)]))
    (root / "link.json").symlink_to(tmp_path / "real.json")
    store = LookupTableStore(root)
    assert store.get("link.json").n_rows == 2
    sidecar = store.index_path(root / "link.json")
    assert sidecar.is_file()
    store.delete("link.json")
    assert not sidecar.exists() and (tmp_path / "real.json").is_file() and store.loaded_count == 0
    # A sidecar that cannot be removed does not fail the deletion, nor keep the table cached.
    (root / "p.json").write_text(SEED_TABLE)
    assert store.get("p.json").n_rows == 1
    stuck = store.index_path(root / "p.json")
    stuck.unlink()
    stuck.mkdir()
    (stuck / "x").write_text("")
    assert store.delete("p.json") == {"status": "success", "deleted": "p.json"}
    assert store.loaded_count == 0 and not (root / "p.json").exists()
    with pytest.raises(NotFound):
        store.get("p.json")


def test_a_table_the_file_system_will_not_delete_is_a_clear_error_and_still_served(tmp_path, monkeypatch):
    # A read-only table directory (which a test cannot mount): the delete was a 500 "internal
    # error: PermissionError".
    root = tmp_path / "tables"
    root.mkdir()
    (root / "p.json").write_text(SEED_TABLE)
    store = LookupTableStore(root)
    assert store.get("p.json").n_rows == 1
    refuse_unlink(monkeypatch, lambda path: path.name == "p.json")
    with pytest.raises(StorageError, match=r"cannot delete lookup table 'p.json' in .*tables \(Read-only file system\): "
                                           "it was not deleted") as info:
        store.delete("p.json")
    assert info.value.status_code == 500
    monkeypatch.undo()
    assert store.names() == ["p.json"] and store.get("p.json").n_rows == 1


def test_a_table_linked_to_a_file_outside_the_data_directory_is_not_served(tmp_path):
    # The table directory's parent is the data directory: a link there to any file the service
    # could read was served whole by GET /tables/{name}, and read as a table.
    data = tmp_path / "data"
    root = data / "tables"
    root.mkdir(parents=True)
    (tmp_path / "secret.json").write_bytes(orjson.dumps([record(0)]))
    (root / "secret.json").symlink_to(tmp_path / "secret.json")
    (data / "archive.json").write_bytes(orjson.dumps([record(i) for i in range(3)]))
    (root / "archived.json").symlink_to(data / "archive.json")  # inside the data directory: fine
    store = LookupTableStore(root)
    assert store.names() == ["archived.json"] and store.get("archived.json").n_rows == 3
    for read in (store.get, store.open_table, store.path_of):
        with pytest.raises(InvalidInput, match="'secret.json' is a symbolic link that leads outside the data directory"):
            read("secret.json")
    assert store.delete("secret.json") == {"status": "success", "deleted": "secret.json"}  # the link only
    assert (tmp_path / "secret.json").is_file() and store.names() == ["archived.json"]


def test_a_loop_of_symbolic_links_in_the_table_folder_is_a_table_that_cannot_be_read(tmp_path):
    # l1.json -> l2.json -> l1.json: GET /tables, GET /tables/l1.json and a lookup of it were
    # each a 500 "internal error: OSError" (ELOOP), and with a sidecar folder the service did
    # not start. Now it is not listed, naming it is the 422 of a table that cannot be read,
    # and deleting it removes the link.
    root = tmp_path / "tables"
    (root / ".index").mkdir(parents=True)
    (root / ".index" / "gone.json.0123456789ab.npz").write_bytes(b"")
    (root / "l1.json").symlink_to("l2.json")
    (root / "l2.json").symlink_to("l1.json")
    (root / "p.json").write_text(SEED_TABLE)
    store = LookupTableStore(root, default="l1.json")
    assert store.default_table is None and [e["name"] for e in store.list()] == ["p.json"]
    assert store.names() == ["p.json"] and store.loaded_count == 0
    for read in (store.get, store.open_table):
        with pytest.raises(InvalidInput, match="cannot be read: 'l1.json' is a loop of symbolic links") as info:
            read("l1.json")
        assert info.value.status_code == 422
    assert store.delete("l1.json") == {"status": "success", "deleted": "l1.json"}
    assert not os.path.lexists(root / "l1.json") and store.get("p.json").n_rows == 1


def test_a_table_directory_that_is_itself_a_link_serves_its_tables(tmp_path):
    # tables/ on a larger disk: its files, and links among them, are the data directory's.
    (tmp_path / "bigdisk" / "tables").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    root = tmp_path / "data" / "tables"
    root.symlink_to(tmp_path / "bigdisk" / "tables", target_is_directory=True)
    (root / "t.json").write_bytes(orjson.dumps([record(i) for i in range(3)]))
    (root / "latest.json").symlink_to(root / "t.json")
    store = LookupTableStore(root)
    assert store.names() == ["latest.json", "t.json"]
    assert store.get("t.json").n_rows == store.get("latest.json").n_rows == 3


def test_the_default_table_under_concurrent_deletes_and_rewrites(tmp_path):
    import threading
    import time

    root = tmp_path / "tables"
    root.mkdir()
    path = root / "d.json"
    versions = [orjson.dumps([record(i) for i in range(n)]) for n in (1, 2, 3)]
    path.write_bytes(versions[0])
    store = LookupTableStore(root, default="d.json")
    stop = threading.Event()
    unexpected: list[BaseException] = []
    answered = [0]

    def read():
        while not stop.is_set():
            for name in (None, "d.json"):
                try:
                    table = store.get(name)
                    assert table.n_rows in (1, 2, 3)
                    answered[0] += 1
                except (InvalidInput, NotFound):
                    pass  # no default loaded just now, or the file is gone: the documented answers
                except BaseException as exc:  # noqa: BLE001 - anything else is the bug
                    unexpected.append(exc)
                    return

    def write():
        k = 0
        while not stop.is_set():
            k += 1
            try:
                if k % 3 == 0:
                    store.delete("d.json")
                    path.write_bytes(versions[k % 3])
                    store.load_default("d.json")
                elif k % 3 == 1:
                    path.unlink(missing_ok=True)
                    path.write_bytes(versions[k % 3])  # written in place: readers may see it half-written
                else:
                    path.write_bytes(versions[k % 3])
            except NotFound:
                pass
            except BaseException as exc:  # noqa: BLE001
                unexpected.append(exc)
                return

    threads = [threading.Thread(target=read) for _ in range(4)] + [threading.Thread(target=write)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert unexpected == []
    assert answered[0] > 0


def test_a_tail_past_two_close_stored_levels_far_apart_stays_within_a_tables_runtimes():
    # Levels 0.5 and 0.5000001 at 1 and 2 ms: the log slope between them is huge, and its
    # tail overflowed: an OverflowError on one trace, a ValueError in a batch's total, each a 500.
    rec = {**record(0, features={"x": 1}), "quantiles": [0.5, 0.5000001], "quantile_predictions": [1.0, 2.0],
           "expect": 1.5, "error": 0.5}
    table = LookupTable.from_records([rec])
    one = table.predict(None, [{"x": 1}], 0.9, [0.5, 0.999]).results()[0]
    assert one["quantile_predictions"] == [1.0, 1e100] and one["interval"][1] == 1e100
    batch = table.predict(None, [{"x": 1}] * 200, 0.9, [0.5, 0.999], True).batch_response()
    assert all(math.isfinite(v) for v in batch["total_quantiles"] + batch["total_interval"])
    assert batch["results"][0]["quantile_predictions"] == [1.0, 1e100]


def test_lower_levels_than_stored_follow_a_lognormal_and_never_reach_zero():
    """A record of a wide lognormal: the normal approximation from its mean and sd put
    the 0.01 quantile at 0; the log-linear tail recovers the lognormal's own value."""
    from scipy.stats import lognorm

    dist = lognorm(s=1.0, scale=50.0)
    levels = [0.25, 0.5, 0.75, 0.99]
    rec = {"status": "success", "model_type": "llm", "quantiles": levels,
           "quantile_predictions": dist.ppf(levels).tolist(), "expect": float(dist.mean()), "error": float(dist.std()),
           "model_info": INFO, "features": {"x": 1}}
    table = LookupTable.from_records([rec])
    for batch in ([{"x": 1}], [{"x": 1}] * 40):  # the one-trace and the vectorised paths
        got = table.predict(None, batch, 0.9, [0.001, 0.01, 0.1]).results()[0]["quantile_predictions"]
        np.testing.assert_allclose(got, dist.ppf([0.001, 0.01, 0.1]), rtol=1e-9)


@pytest.mark.parametrize("batch", [1, 40])
def test_levels_near_the_stored_interval_come_from_it(batch):
    """The stored interval is a pair of quantiles the model computed: asked at its levels a
    table answers them, and nearby levels are interpolated from them, so an answer's
    quantiles agree with its own interval."""
    levels = [0.25, 0.5, 0.75, 0.99]
    rec = {"status": "success", "model_type": "llm", "quantiles": levels, "quantile_predictions": [20.0, 22.0, 25.0, 60.0],
           "expect": 24.0, "error": 9.0, "interval": [12.0, 40.0], "confidence_level": 0.9,
           "model_info": INFO, "features": {"x": 1}}
    table = LookupTable.from_records([rec])
    res = table.predict(None, [{"x": 1}] * batch, 0.9, [0.05, 0.15, 0.5, 0.9, 0.95]).results()[0]
    assert res["interval"] == [12.0, 40.0]
    np.testing.assert_allclose(res["quantile_predictions"], [12.0, 12.0 + 8.0 * 0.5, 22.0, 25.0 + 15.0 * 0.75, 40.0])
    # At another confidence level the interval is read off the same knots.
    other = table.predict(None, [{"x": 1}] * batch, 0.8).results()[0]
    np.testing.assert_allclose(other["interval"], [12.0 + 8.0 * 0.25, 25.0 + 15.0 * 0.75])


def _trained_on_cold_starts(tmp_path_factory, **config) -> Path:
    from .conftest import cold_start_traces, trained_in_process

    return trained_in_process(tmp_path_factory.mktemp("cold_starts") / "data",
                              {"model": IDENTITY, "traces": cold_start_traces(400)[0], **config})


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory) -> Path:
    """A data folder whose model of ``cold_start_traces(400)`` reads the shape alone (batch
    and image size), trained once: the tests below each serve a copy (:func:`serving_a_copy`)."""
    return _trained_on_cold_starts(tmp_path_factory, features=["batch_size", "image_size"])


@pytest.fixture(scope="module")
def every_feature_model(tmp_path_factory) -> Path:
    """As :func:`shapes_model`, the model reading every feature of the traces (their load too)."""
    return _trained_on_cold_starts(tmp_path_factory)


def serving_a_copy(data: Path, tmp_path: Path) -> PredictorService:
    """A service of a copy of the data folder ``data``: the tables a test makes are its own."""
    shutil.copytree(data, tmp_path / "data")
    return PredictorService(PredictorSettings(data_dir=tmp_path / "data"))


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_tables_of_a_model_with_first_runs_tell_first_runs_from_repeats(shapes_model, tmp_path, fmt):
    """The table stores the first-run flag each record was predicted with and matches on it;
    a trace that does not state it is a repeat run, as for the model on a shape it has seen."""
    from .conftest import cold_start_traces

    traces, _ = cold_start_traces(400)
    service = serving_a_copy(shapes_model, tmp_path)
    try:
        src = tmp_path / "traces.jsonl"
        src.write_bytes(b"\n".join(orjson.dumps(t) for t in traces))
        name = f"shapes.{fmt}"
        service.generate_table(PATTERN, src, 0.9, name)
        table = service.tables.get(name)
        assert table.feature_names == ["batch_size", "image_size", "first_of_shape"]
        shape = {"batch_size": 8, "image_size": 448}
        queries = [shape, {**shape, "first_of_shape": False}, {**shape, "first_of_shape": True}]
        model = service.predict(PATTERN, queries, 0.9).results()
        for batch in (queries, queries * 20):
            got = service.predict(PATTERN, batch, 0.9, lookup_table=True, lookup_table_name=name).results()[:3]
            for m, t in zip(model, got):
                assert t["match"] == "exact"
                np.testing.assert_allclose(t["quantile_predictions"], m["quantile_predictions"], rtol=1e-9)
        assert got[2]["quantile_predictions"][1] > 5 * got[0]["quantile_predictions"][1]
        # A stated flag is true or false, as for the model: 2 or 0.5 fail that trace.
        bad = [{**shape, "first_of_shape": 2}, {**shape, "first_of_shape": 0.5}, shape, {**shape, "first_of_shape": "true"}]
        for batch in (bad, bad * 20):
            got = service.predict(PATTERN, batch, 0.9, lookup_table=True, lookup_table_name=name)
            assert got.ok[:4].tolist() == [False, False, True, False]
            assert "'first_of_shape' must be true or false, got 2" in got.errors[0]
            assert got.errors[3] == "'first_of_shape' must be true or false, got 'true'"  # as the model says
    finally:
        service.close()


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_shape_the_table_holds_only_as_a_first_run_is_answered_as_the_model_answers_a_repeat(shapes_model, tmp_path, fmt):
    """A table made from each shape's first run (its timestamp says so) also stores the repeat
    the model answers when neither a flag nor a timestamp is stated, for the shapes the model
    ran in training: a scheduler's trace that states neither gets the model's answer."""
    from .conftest import cold_start_traces

    traces, _ = cold_start_traces(400)
    service = serving_a_copy(shapes_model, tmp_path)
    try:
        firsts: dict[tuple, dict] = {}
        for t in sorted(traces, key=lambda t: t["ts"]):
            firsts.setdefault((t["batch_size"], t["image_size"]), t)
        src = tmp_path / "firsts.jsonl"
        src.write_bytes(b"\n".join(orjson.dumps({**t, "task_id": f"t{i}"}) for i, t in enumerate(firsts.values())))
        name = f"firsts.{fmt}"
        answer = service.generate_table(PATTERN, src, 0.9, name)
        assert answer["repeats_added"] == len(firsts) and answer["rows"] == 2 * len(firsts)
        # A task id names the trace's own record, never an added repeat.
        got = service.predict(PATTERN, [{"task_id": "t3", "batch_size": 999, "image_size": 1}], 0.9,
                              lookup_table=True, lookup_table_name=name).results()[0]
        assert got["match"] == "task_id"
        want = service.predict(PATTERN, [{**list(firsts.values())[3], "first_of_shape": True}], 0.9).results()[0]
        np.testing.assert_allclose(got["quantile_predictions"], want["quantile_predictions"], rtol=1e-9)
        shapes = [{"batch_size": b, "image_size": i} for b, i in firsts]
        for stated in ({}, {"first_of_shape": True}, {"first_of_shape": False}):
            queries = [{**s, **stated} for s in shapes]
            model = service.predict(PATTERN, queries, 0.9).results()
            got = service.predict(PATTERN, queries, 0.9, lookup_table=True, lookup_table_name=name).results()
            for m, t in zip(model, got):
                assert t["match"] == "exact"
                np.testing.assert_allclose(t["quantile_predictions"], m["quantile_predictions"], rtol=1e-9)
        # Generated again from the same traces: a repeat is stored once per row of features.
        twice = tmp_path / "twice.jsonl"
        twice.write_bytes(src.read_bytes() + b"\n" + src.read_bytes())
        assert service.generate_table(PATTERN, twice, 0.9, f"twice.{fmt}")["repeats_added"] == len(firsts)
    finally:
        service.close()


def test_a_table_answers_its_own_traces_of_shapes_its_model_never_saw(shapes_model, tmp_path):
    """Made from traces without timestamps, a table holds first runs of the shapes the model
    never saw, as the model answers them: a trace that does not state first_of_shape finds
    that record, and a new shape near one of them is answered by the nearest first run."""
    service = serving_a_copy(shapes_model, tmp_path)
    try:
        queries = [{"batch_size": b, "image_size": i} for b in (8, 64) for i in (224, 640)]  # 64 and 640 are new
        src = tmp_path / "queries.jsonl"
        src.write_bytes(b"\n".join(orjson.dumps(q) for q in queries))
        service.generate_table(PATTERN, src, 0.9, "new.json")
        model = service.predict(PATTERN, queries, 0.9).results()
        for batch in (queries, queries * 20):
            got = service.predict(PATTERN, batch, 0.9, lookup_table=True, lookup_table_name="new.json").results()
            for m, t in zip(model, got):
                assert t["match"] == "exact"
                np.testing.assert_allclose(t["quantile_predictions"], m["quantile_predictions"], rtol=1e-9)
        near = [{"batch_size": 60, "image_size": 640}] * 2
        for batch in (near[:1], near * 20):
            t = service.predict(PATTERN, batch, 0.9, lookup_table=True, lookup_table_name="new.json").results()[0]
            assert t["match"] == "nearest"
            np.testing.assert_allclose(t["quantile_predictions"], model[3]["quantile_predictions"], rtol=1e-9)
    finally:
        service.close()


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_shape_the_model_never_saw_is_answered_as_a_first_run_as_by_the_model(every_feature_model, tmp_path, fmt):
    """The table records which features make a shape: a trace of a shape no repeat record has
    (so the model never saw it) is a first run, the nearest first run answers it; a seen
    shape with other features (its load) is a repeat. The nearest of the other kind never
    answers: a batch of 8 at 256 px got a repeat's 18 ms where the model says 206 ms."""
    from .conftest import cold_start_traces

    traces, _ = cold_start_traces(400)
    service = serving_a_copy(every_feature_model, tmp_path)
    try:
        src = tmp_path / "traces.jsonl"
        src.write_bytes(b"\n".join(orjson.dumps(t) for t in traces))
        name = f"shapes.{fmt}"
        service.generate_table(PATTERN, src, 0.9, name)
        if fmt == "json":
            assert orjson.loads((tmp_path / "data" / "tables" / name).read_bytes())[0]["shape_features"] == [
                "batch_size", "image_size"]
        queries = [{"batch_size": 8, "image_size": 256, "load": 0.5},   # a new shape
                   {"batch_size": 3, "image_size": 224, "load": 0.5},   # a new shape
                   {"batch_size": 8, "image_size": 224, "load": 0.123},  # a seen one, a load no trace had
                   {"batch_size": 8, "image_size": 256, "load": 0.5, "first_of_shape": False}]
        model = [r["quantile_predictions"][1] for r in service.predict(PATTERN, queries, 0.9).results()]
        assert model[0] > 5 * model[3]  # a first run of the shape, against its repeat
        for batch in (queries, queries * 5):  # the scalar path and the vectorised one
            got = service.predict(PATTERN, batch, 0.9, lookup_table=True, lookup_table_name=name).results()[:4]
            assert [t["match"] for t in got] == ["nearest"] * 4
            table = [t["quantile_predictions"][1] for t in got]
            for m, t in zip(model, table):
                assert 0.6 < t / m < 1.6, (model, table)
        # A table of an older version, which does not say which features make a shape, answers
        # on: a seen shape's repeat exactly; elsewhere the nearer of a repeat and a first run.
        if fmt == "json":
            old = [{k: v for k, v in r.items() if k != "shape_features"}
                   for r in orjson.loads((tmp_path / "data" / "tables" / name).read_bytes())]
            (tmp_path / "data" / "tables" / "old.json").write_bytes(orjson.dumps(old))
            exact = {k: traces[5][k] for k in ("batch_size", "image_size", "load")}
            got = service.predict(PATTERN, [exact, queries[2]], 0.9, lookup_table=True,
                                  lookup_table_name="old.json").results()
            want = service.predict(PATTERN, [exact], 0.9).results()[0]
            assert got[0]["match"] == "exact"
            np.testing.assert_allclose(got[0]["quantile_predictions"], want["quantile_predictions"], rtol=1e-9)
            assert 0.6 < got[1]["quantile_predictions"][1] / model[2] < 1.6
    finally:
        service.close()


def test_a_table_of_repeats_only_answers_a_new_shape_with_its_nearest_repeat(every_feature_model, tmp_path):
    """Made from traces of shapes the model saw, without timestamps, a table holds repeats
    only: a new shape, a first run for the model, gets the nearest repeat, not an error."""
    from .conftest import cold_start_traces

    traces, _ = cold_start_traces(400)
    service = serving_a_copy(every_feature_model, tmp_path)
    try:
        src = tmp_path / "repeats.jsonl"
        src.write_bytes(b"\n".join(orjson.dumps({k: v for k, v in t.items() if k != "ts"}) for t in traces[:60]))
        service.generate_table(PATTERN, src, 0.9, "repeats.json")
        table = service.tables.get("repeats.json")
        flag = table.feature_names.index("first_of_shape")
        assert (table.columns[flag].values == 0.0).all()
        new = [{"batch_size": 8, "image_size": 256, "load": 0.5}, {"batch_size": 3, "image_size": 224, "load": 0.5}]
        for batch in (new, new * 5):
            got = service.predict(PATTERN, batch, 0.9, lookup_table=True, lookup_table_name="repeats.json")
            assert got.ok.all(), got.errors
            assert {r["match"] for r in got.results()} == {"nearest"}
            # and says so: a repeat's answer for a first run is ten times too short
            assert all(r["kind_mismatch"] is True for r in got.results())
        seen = {k: traces[0][k] for k in ("batch_size", "image_size", "load")}
        assert "kind_mismatch" not in service.predict(PATTERN, [seen], 0.9, lookup_table=True,
                                                      lookup_table_name="repeats.json").results()[0]
    finally:
        service.close()


def test_crossing_quantiles_are_rearranged_and_an_interval_that_contradicts_them_is_refused():
    # A seed model fitted one level at a time may store quantiles that cross: they are put
    # in increasing order (they used to be flattened to their running maximum, [12, 12, 12]).
    crossing = {**record(0, features={"x": 1}, levels=(0.25, 0.5, 0.75)), "quantile_predictions": [12.0, 9.0, 11.0]}
    table = LookupTable.from_records([crossing], name="crossing.json")
    answer = table.predict(None, [{"x": 1}], 0.95, None, False).results()[0]
    assert answer["quantile_predictions"] == [9.0, 11.0, 12.0]
    named = table.predict(None, [{"x": 1}], 0.95, [0.25, 0.5, 0.75], False).results()[0]
    assert named["quantile_predictions"] == pytest.approx([9.0, 11.0, 12.0])
    # An interval whose ends contradict the stored quantiles: damaged. It was answered with
    # a median below the interval's low end, and other values when the levels were named.
    damaged = {**record(0, features={"x": 1}, levels=(0.25, 0.5, 0.75, 0.99)), "quantile_predictions": [5, 4, 3, 2],
               "interval": [651.9, 1167.3], "confidence_level": 0.95}
    with pytest.raises(TraceError, match=r"decr.json: success record 0: its 'interval' \[651.9, 1167.3\] contradicts"):
        LookupTable.from_records([damaged], name="decr.json")
    # Ends that agree with the quantiles (as generation writes them) load, rounding included.
    fine = {**damaged, "quantile_predictions": [700.0, 880.0, 990.0, 1200.0], "interval": [651.9, 1167.3 * (1 + 1e-9)]}
    assert LookupTable.from_records([fine], name="fine.json").predict(None, [{"x": 1}], 0.95, None, False).results()[0][
        "interval"] == pytest.approx([651.9, 1167.3])


def test_a_confidence_level_whose_interval_end_rounds_to_1_is_answered():
    # 1 - 1e-16 lies strictly between 0 and 1, but (1 + c) / 2 rounds to 1.0: the per-trace
    # path's normal score of 1 raised StatisticsError (a 500); both paths now read the tails
    # at 1 - 1e-12 at the most, and answer finite ends.
    table = LookupTable.from_records([record(0, levels=(0.25, 0.5, 0.75)), record(1, levels=(0.25, 0.5, 0.75))])
    c = 0.9999999999999999
    for n in (1, 9):  # the per-trace path and the vectorised one
        body = table.predict(None, [{"a": 1}] * n, c, [0.5], with_total=True).batch_response()
        low, high = body["results"][0]["interval"]
        assert 0 < low < body["results"][0]["quantile_predictions"][0] < high < math.inf
        assert all(math.isfinite(v) for v in body["total_interval"])


def test_a_record_without_a_stored_error_still_spreads_its_queues_total():
    # Quantiles of 10 and 20 ms at 0.5 and 0.9, but an error of 0 (a hand-written record):
    # the sum, which sizes its grid by the variances, put all its mass at the mean (2 and 10
    # tasks totalled 24 and 120 ms at every level). The quantiles' own variance stands in.
    rec = {**record(0, levels=(0.5, 0.9)), "quantile_predictions": [10.0, 20.0], "expect": 12.0, "error": 0.0}
    table = LookupTable.from_records([rec, {**rec, "features": {"a": 2}}])
    for n in (2, 10):
        body = table.predict(None, [{"a": 1}] * n, 0.9, [0.05, 0.5, 0.95], with_total=True).batch_response()
        low, mid, high = body["total_quantiles"]
        assert low < mid < high and high - low > 0.5 * mid
        assert body["error"] == 0.0  # the records' own moments, as stored


# --------------------------------------------------------------------------- running tasks


def test_a_table_whose_model_learned_elapsed_ms_reads_it_as_that_feature(tmp_path: Path):
    import json

    # A model stored before elapsed_ms was reserved, that learned it, made this table: as the
    # model does (README), the table reads it as a feature and answers whole runtimes.
    def record(elapsed: float, median: float) -> dict:
        return {"status": "success", "quantiles": [0.25, 0.5, 0.75], "quantile_predictions": [median * 0.9, median, median * 1.1],
                "expect": median, "error": median * 0.1, "model_type": "llm",
                "model_info": {"type": "llm", "name": "m", "hardware": "h", "software_name": "s", "software_version": "1"},
                "features": {"input_tokens": 500, "elapsed_ms": elapsed}}

    path = tmp_path / "legacy.json"
    path.write_text(json.dumps([record(0.0, 1000.0), record(500.0, 3000.0)]))
    table = LookupTable.load(path)
    got = table.predict(None, [{"input_tokens": 500, "elapsed_ms": 500.0}]).items[0]
    assert got["status"] == "success" and got["match"] == "exact"
    assert got["expect"] == 3000.0 and "elapsed_level" not in got


def test_a_tables_running_tasks_are_answered_together_not_one_by_one(tmp_path: Path, monkeypatch):
    import json

    from swarmpilot_predictor.distribution import RemainingDistribution

    # 10,000 running tasks took 13.4 s on the table path (the model's: 0.5 s): a Python loop
    # that took a one-task subset of the distributions and its quantiles per running task.
    def record(tokens: int) -> dict:
        m = 10.0 * tokens
        return {"status": "success", "quantiles": [0.25, 0.5, 0.75, 0.99], "expect": m, "error": 0.2 * m,
                "quantile_predictions": [0.85 * m, m, 1.15 * m, 1.6 * m], "model_type": "llm",
                "model_info": {"type": "llm", "name": "m", "hardware": "h", "software_name": "s", "software_version": "1"},
                "features": {"input_tokens": tokens}}

    path = tmp_path / "t.json"
    path.write_text(json.dumps([record(t) for t in range(100, 600, 10)]))
    table = LookupTable.load(path)
    traces = [{"input_tokens": 100 + 10 * (i % 50), "elapsed_ms": 500.0 + i} for i in range(300)]
    alone = [table.predict(None, [t]).items[0] for t in traces[:5]]
    calls = []
    subset = RemainingDistribution.subset
    monkeypatch.setattr(RemainingDistribution, "subset", lambda self, rows: calls.append(len(rows)) or subset(self, rows))
    got = table.predict(None, traces, with_total=True).items
    assert len(calls) <= 2  # one set of levels: its running tasks at once
    for a, b in zip(got, alone):
        np.testing.assert_allclose(a["quantile_predictions"] + a["interval"], b["quantile_predictions"] + b["interval"],
                                   rtol=1e-9)
        assert a["elapsed_level"] == pytest.approx(b["elapsed_level"], abs=1e-9)


def _one_record(expect: float) -> dict:
    """A table's record whose levels 0.25 to 0.99 lie at 850 to 1,600 ms, stored with
    ``expect`` as its mean (the model's, which need not be the interpolated levels' own)."""
    return {"status": "success", "quantiles": [0.25, 0.5, 0.75, 0.99], "expect": expect, "error": 200.0,
            "quantile_predictions": [850.0, 1000.0, 1150.0, 1600.0], "model_type": "llm",
            "model_info": {"type": "llm", "name": "m", "hardware": "h", "software_name": "s", "software_version": "1"},
            "features": {"input_tokens": 100}}


def test_a_running_tasks_error_from_a_table_starts_from_the_stored_one(tmp_path: Path):
    import json

    # The stored error is the model's, the time left's quadrature runs over the record's few
    # stored quantiles: without bringing one to the other a task's error jumped from 200 to
    # 227 ms as it started (and 250 to 221 for a record of six levels).
    rec = _one_record(expect=1000.0)
    path = tmp_path / "t.json"
    path.write_text(json.dumps([rec]))
    table = LookupTable.load(path)

    def answer(elapsed: float) -> dict:
        return table.predict(None, [{"input_tokens": 100, "elapsed_ms": elapsed}]).items[0]

    started = answer(425.0)
    assert 0 < started["elapsed_level"] < 0.001
    assert started["expect"] + 425.0 == pytest.approx(1000.0, rel=0.001)
    assert started["error"] == pytest.approx(200.0, rel=0.005)
    # Further on, the spread left shrinks, and never jumps back up.
    errors = [answer(e)["error"] for e in (425.0, 849.0, 851.0, 900.0, 1100.0, 1400.0)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 0.75 * 200.0


def test_a_tables_running_task_past_its_highest_stored_level_is_not_stuck(tmp_path: Path):
    # The stored mean (the model's) is below the interpolated body's, so the distribution a
    # total sums has its tail above the 0.99 level flattened onto the stored 0.99 quantile. A
    # running task's time left was read off it: run 1,601 ms, past that quantile, a task was
    # answered stuck (elapsed_level 1, nothing left), where the record's own answer has 0.66%
    # of its runtimes beyond 1,650 ms; and run 1,590 ms, all of its time left was 10 ms.
    rec = _one_record(expect=980.0)
    table = LookupTable.from_records([rec])
    whole = table.predict(None, [{"input_tokens": 100}], 0.9, [0.99, 0.999], deadline_ms=1601.0).items[0]
    assert whole["quantile_predictions"][1] > 1800.0

    def running(elapsed: float, deadline: float | None = None) -> dict:
        return table.predict(None, [{"input_tokens": 100, "elapsed_ms": elapsed}], 0.9, [0.5, 0.9],
                             deadline_ms=deadline).items[0]

    past = running(1601.0)
    assert past["elapsed_level"] == pytest.approx(whole["deadline_probability"], abs=1e-6)
    assert past["elapsed_level"] < 1.0 and past["expect"] > 50.0 and past["quantile_predictions"][0] > 50.0
    # Its probability of being done by its own 0.9 quantile is 0.9 (it was 1, the tail an atom).
    assert running(1601.0, past["quantile_predictions"][1])["deadline_probability"] == pytest.approx(0.9, abs=1e-4)
    assert running(1590.0)["quantile_predictions"][1] > 200.0
    # Started, its mean is still the stored one less the time run.
    assert running(425.0)["expect"] + 425.0 == pytest.approx(980.0, rel=0.001)


def test_a_tables_running_task_past_its_highest_stored_level_keeps_its_records_tail(tmp_path: Path):
    # The stored mean (the model's) is above what the interpolated levels make, so the
    # distribution a total sums scales its tail above the 0.99 level up (7.5 times) to carry
    # it. A running task's time left was read off it: run 1,650 ms (its record's answer's
    # 0.9934 level), its median time left was 616 ms and its 0.9 quantile 1,988, past the
    # answer's 0.99999 quantile; it is now what the answer's own tail leaves, about 80 ms.
    rec = _one_record(expect=1040.0)
    table = LookupTable.from_records([rec])
    reached = table.predict(None, [{"input_tokens": 100}], 0.9, [0.5], deadline_ms=1650.0).items[0]["deadline_probability"]
    # The record's answer, given that the runtime is past 1,650 ms: its levels in what is left.
    given = table.predict(None, [{"input_tokens": 100}], 0.9, [reached + t * (1 - reached) for t in (0.5, 0.9)]).items[0]
    left = table.predict(None, [{"input_tokens": 100, "elapsed_ms": 1650.0}], 0.9, [0.5, 0.9]).items[0]
    np.testing.assert_allclose(np.array(left["quantile_predictions"]) + 1650.0, given["quantile_predictions"], rtol=0.01)
    assert left["expect"] < 150.0 and left["elapsed_level"] == pytest.approx(reached, abs=0.001)
    # Started, its mean is still the stored one less the time run.
    started = table.predict(None, [{"input_tokens": 100, "elapsed_ms": 425.0}], 0.9, [0.5]).items[0]
    assert started["expect"] + 425.0 == pytest.approx(1040.0, rel=0.001)


def test_a_tables_queued_tasks_are_summed_alike_beside_a_running_one(tmp_path: Path):
    # A running task's time left keeps its record's tail as extrapolated; the tasks queued
    # beside it are summed as any total sums them: a stuck task (nothing left) adds nothing.
    rec = _one_record(expect=1040.0)
    table = LookupTable.from_records([rec])
    queued = [{"input_tokens": 100}] * 3
    alone = table.predict(None, queued, 0.9, [0.05, 0.5, 0.95], with_total=True).total
    stuck = {"input_tokens": 100, "elapsed_ms": 1e9}
    beside = table.predict(None, [stuck, *queued], 0.9, [0.05, 0.5, 0.95], with_total=True)
    assert beside.items[0]["elapsed_level"] == 1.0
    np.testing.assert_allclose(beside.total["total_quantiles"], alone["total_quantiles"], rtol=0.002)
    assert beside.total["expect"] == pytest.approx(alone["expect"], rel=1e-12)
