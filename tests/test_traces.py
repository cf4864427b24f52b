"""Reading traces: flat and structured objects; JSON, JSONL, CSV files, gzip variants; errors; memory."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pytest

from swarmpilot_predictor.traces import (
    TraceError,
    TraceTable,
    category_text,
    elapsed_times,
    iter_json_array,
    iter_trace_file,
    iter_trace_stream,
    normalize_trace,
    normalize_traces,
    reserved_keys,
    trace_file_format,
)

FLAT = [
    {"input_tokens": 100, "output_tokens": 20, "model": "a", "runtime_ms": 250.5, "task_id": "t0"},
    {"input_tokens": 200, "output_tokens": 40, "model": "b", "runtime_ms": 480.0, "task_id": "t1"},
    {"input_tokens": 300, "output_tokens": 60, "model": "a", "runtime_ms": 731.25, "task_id": "t2"},
]


def structured(trace: dict) -> dict:
    """The scheduler's form of a flat trace."""
    features = [{"param_name": k, "val": v} for k, v in trace.items() if k not in ("runtime_ms", "task_id")]
    return {"input_feature": features, "model_id": "turbo", "runtime_ms": trace["runtime_ms"], "task_id": trace["task_id"]}


def write(path: Path, data: bytes) -> Path:
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def as_json_array(traces) -> bytes:
    return orjson.dumps(traces)


def as_json_object(traces) -> bytes:
    return orjson.dumps({"traces": traces, "source": "bench"})


def as_jsonl(traces) -> bytes:
    return b"\n".join(orjson.dumps(t) for t in traces) + b"\n"


def as_csv(traces) -> bytes:
    """CSV of the traces, SwarmPilot's structured form as its JSON text in a cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(traces[0]))
    writer.writeheader()
    writer.writerows({k: orjson.dumps(v).decode() if isinstance(v, list) else v for k, v in t.items()} for t in traces)
    return buf.getvalue().encode()


# --------------------------------------------------------------------------- normalize_trace


def test_flat_trace_is_returned_unchanged():
    t = dict(FLAT[0])
    assert normalize_trace(t) == FLAT[0]


def test_structured_trace_becomes_flat():
    obj = {
        "input_feature": [{"param_name": "input_tokens", "val": 100}, {"param_name": "prompt", "val": "hi"}],
        "model_id": "turbo",
        "runtime_ms": 12.5,
    }
    assert normalize_trace(obj) == {"input_tokens": 100, "prompt": "hi", "model_id": "turbo", "runtime_ms": 12.5}


def test_model_id_is_reserved_not_a_feature():
    keys = reserved_keys()
    for k in ("model_id", "task_id", "req_id", "ts", "timestamp", "runtime_ms", "model_type", "model_name",
              "hardware", "software_name", "software_version"):
        assert k in keys
    assert "input_tokens" not in keys
    assert "latency" in reserved_keys("latency") and "runtime_ms" not in reserved_keys("latency")
    assert "elapsed_ms" in keys  # a prediction's time already run, never a feature


def test_elapsed_times_read_a_running_tasks_milliseconds_and_name_a_bad_value():
    assert elapsed_times([{"x": 1}, {"x": 2, "elapsed_ms": None}]) == (None, None)
    elapsed, errors = elapsed_times([{"x": 1}, {"elapsed_ms": 250}, {"elapsed_ms": 0.5}, {"elapsed_ms": 0},
                                     {"elapsed_ms": -1}, {"elapsed_ms": "9"}, {"elapsed_ms": True},
                                     {"elapsed_ms": float("nan")}, {"elapsed_ms": 10**400}, {"elapsed_ms": 2e15}])
    assert elapsed.tolist() == [0.0, 250.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert errors[:4] == [None] * 4
    for bad, shown in zip(errors[4:], ["-1", "'9'", "True", "nan", "1000000", "2000000000000000.0"]):
        assert bad.startswith("elapsed_ms must be the milliseconds the task has already run, a number in [0, 1e+15]")
        assert shown in bad


@pytest.mark.parametrize(
    "bad, match",
    [
        ([1, 2], "JSON object"),
        ("trace", "JSON object"),
        ({"input_feature": {"param_name": "x"}}, "input_feature must be a list"),
        ({"input_feature": [{"val": 3}]}, r"input_feature\[0\]"),
        ({"input_feature": [{"param_name": "a", "val": 1}, 7]}, r"input_feature\[1\]"),
        ({"input_feature": [{"param_name": 5, "val": 1}]}, r"input_feature\[0\]\.param_name must be a text, got 5"),
        # Two values of one feature: which one was meant is not for the reader to guess.
        ({"batch_size": 8, "input_feature": [{"param_name": "batch_size", "val": 16}]},
         r"^input_feature\[0\]: 'batch_size' is given twice, as 8 and as 16$"),
        ({"input_feature": [{"param_name": "a", "val": 1}, {"param_name": "b", "val": 2}, {"param_name": "a", "val": "x"}]},
         r"^input_feature\[2\]: 'a' is given twice, as 1 and as 'x'$"),
    ],
)
def test_malformed_traces_raise_trace_error(bad, match):
    with pytest.raises(TraceError, match=match):
        normalize_trace(bad)


def test_a_feature_given_twice_with_one_value_is_read_once():
    trace = {"batch_size": 8, "input_feature": [{"param_name": "batch_size", "val": 8}, {"param_name": "image", "val": 224},
                                                {"param_name": "image", "val": 224}]}
    assert normalize_trace(trace) == {"batch_size": 8, "image": 224}
    # A null is a missing value, not a second one: the other is read.
    assert normalize_trace({"batch_size": None, "input_feature": [{"param_name": "batch_size", "val": 8}]}) == {"batch_size": 8}
    assert normalize_trace({"batch_size": 8, "input_feature": [{"param_name": "batch_size", "val": None}]}) == {"batch_size": 8}


def test_a_batch_of_traces_is_normalised_trace_by_trace_whatever_its_mix():
    flat = [{"a": 1}, {"b": 2}]
    # Plain traces all: the batch itself comes back, none with an error.
    out, errors = normalize_traces(flat)
    assert out is flat and errors == [None, None]
    assert normalize_traces(iter(flat)) == (flat, [None, None]) and normalize_traces([]) == ([], [])
    # One structured trace, or one that is no object, and each is read (or refused) alone.
    mixed = [{"a": 1}, {"input_feature": [{"param_name": "a", "val": 3}], "model_id": "m"}, 5,
             {"input_feature": "no"}]
    out, errors = normalize_traces(mixed)
    assert out == [{"a": 1}, {"a": 3, "model_id": "m"}, {}, {}]
    assert errors[:2] == [None, None]
    assert errors[2] == "a trace must be a JSON object, got int"
    assert errors[3].startswith("input_feature must be a list")


# --------------------------------------------------------------------------- files

FORMATS = {
    ".json": as_json_array,
    ".jsonl": as_jsonl,
    ".ndjson": as_jsonl,
    ".csv": as_csv,
}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("suffix", list(FORMATS))
def test_flat_trace_files_in_every_format(tmp_path, suffix, gz):
    path = write(tmp_path / f"traces{suffix}{'.gz' if gz else ''}", FORMATS[suffix](FLAT))
    rows = list(iter_trace_file(path))
    assert rows == FLAT  # CSV numbers come back as int/float, strings stay strings


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_json_object_with_traces_array(tmp_path, gz):
    path = write(tmp_path / f"t.json{'.gz' if gz else ''}", as_json_object(FLAT))
    assert list(iter_trace_file(path)) == FLAT


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_structured_trace_files(tmp_path, suffix, gz):
    data = [structured(t) for t in FLAT]
    path = write(tmp_path / f"s{suffix}{'.gz' if gz else ''}", FORMATS[suffix](data))
    rows = list(iter_trace_file(path))
    assert rows == [{**t, "model_id": "turbo"} for t in FLAT]


def test_a_csv_cell_of_the_structured_form_is_its_json_list(tmp_path):
    # It was left as text, and the file refused ("input_feature must be a list", at "item 0").
    path = tmp_path / "s.csv"
    path.write_text('input_feature,runtime_ms\n"[{""param_name"": ""x"", ""val"": ""a""}]",3\n,4\n')
    assert list(iter_trace_file(path)) == [{"x": "a", "runtime_ms": 3}, {"runtime_ms": 4}]  # an empty cell: none
    # A file of both forms: a row's empty cell is a missing value, not a second value.
    path.write_text('x,runtime_ms,input_feature\n5,3,\n,4,"[{""param_name"": ""x"", ""val"": 7}]"\n')
    assert list(iter_trace_file(path)) == [{"x": 5, "runtime_ms": 3}, {"x": 7, "runtime_ms": 4}]
    path.write_text('input_feature,runtime_ms\n"[{""param_name"": ""x"", ""val"": 1}]",3\nx=5,4\n')
    with pytest.raises(TraceError, match=r"^s\.csv: line 3: input_feature must be a list of \{param_name, val\} objects$"):
        list(iter_trace_file(path))


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_a_utf8_byte_order_mark_is_skipped(tmp_path, suffix, gz):
    # Spreadsheet programs write one at the start of a CSV file; before, its first column was lost.
    path = write(tmp_path / f"bom{suffix}{'.gz' if gz else ''}", BOM + FORMATS[suffix](FLAT))
    assert list(iter_trace_file(path)) == FLAT
    table = TraceTable.from_file(path)
    assert list(table.columns)[0] == "input_tokens"
    np.testing.assert_array_equal(table.numeric("input_tokens"), [100, 200, 300])
    # A stream handed over without a file (an upload) is read the same way.
    fmt = "jsonl" if suffix == ".jsonl" else suffix[1:]
    assert list(iter_trace_stream(io.BytesIO(BOM + FORMATS[suffix](FLAT)), fmt)) == FLAT


def test_a_byte_order_mark_only_at_the_start_is_skipped(tmp_path):
    path = write(tmp_path / "t.csv", BOM + b"a,b\n" + BOM + b"1,2\n")  # one inside the data is kept
    assert list(iter_trace_file(path)) == [{"a": "\ufeff1", "b": 2}]
    assert list(iter_trace_file(write(tmp_path / "short.csv", BOM[:2]))) == []  # too short to be one: no crash


def test_upper_case_suffix_is_recognised(tmp_path):
    path = write(tmp_path / "TRACES.JSONL.GZ", as_jsonl(FLAT))
    assert list(iter_trace_file(path)) == FLAT


def test_csv_empty_cells_are_missing_and_numbers_are_typed(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c,runtime_ms\n1,2.5,x,10\n,3.0,,20\n")
    rows = list(iter_trace_file(path))
    assert rows == [{"a": 1, "b": 2.5, "c": "x", "runtime_ms": 10}, {"a": None, "b": 3.0, "c": None, "runtime_ms": 20}]
    assert isinstance(rows[0]["a"], int) and isinstance(rows[0]["b"], float)


def test_csv_with_a_repeated_column_or_surplus_cells_is_refused_naming_it(tmp_path):
    # csv.DictReader would keep the last of two same-named columns and drop surplus cells unsaid.
    with pytest.raises(TraceError, match=r"dup\.csv: the CSV header names column 'batch_size' twice"):
        list(iter_trace_file(write(tmp_path / "dup.csv", b"batch_size,seq_len,batch_size\n1,256,64\n")))
    with pytest.raises(TraceError, match=r"wide\.csv: line 4 has 3 fields where the header has 2"):
        # The line in the file, past a quoted cell that spans two.
        list(iter_trace_file(write(tmp_path / "wide.csv", b'a,runtime_ms\n"x\ny",2\n3,4,5\n')))


def test_csv_with_a_quote_never_closed_is_refused_naming_its_line(tmp_path):
    # Read leniently, the quoted cell took every row after it: 203 rows trained on 2.
    rows = b"".join(b"%d,20\n" % i for i in range(200))
    with pytest.raises(TraceError, match=r"q\.csv: line 3: a quoted cell that starts there is never closed"):
        list(iter_trace_file(write(tmp_path / "q.csv", b'a,runtime_ms\n1,2\n"x,3\n' + rows)))
    with pytest.raises(TraceError, match=r"j\.csv: line 2: not valid CSV \(',' expected after '\"'\)"):
        list(iter_trace_file(write(tmp_path / "j.csv", b'a,runtime_ms\n"x"y,3\n' + rows)))
    # A quoted cell may span lines; the rows after it are read.
    assert len(list(iter_trace_file(write(tmp_path / "ok.csv", b'a,runtime_ms\n"x\ny",3\n' + rows)))) == 201


def test_csv_as_spreadsheets_and_pandas_write_it(tmp_path):
    # Trailing empty columns (and cells), an unnamed index column, a short row: no field is
    # made of a column without a name, and a cell a row lacks is a missing value.
    path = write(tmp_path / "sheet.csv", b",a,runtime_ms,,\n0,1,10,,\n1,2,20\n2,3\n")
    assert list(iter_trace_file(path)) == [{"a": 1, "runtime_ms": 10}, {"a": 2, "runtime_ms": 20},
                                           {"a": 3, "runtime_ms": None}]


def test_csv_with_spaces_after_its_commas(tmp_path):
    # A common hand-written layout: the target was the field " runtime_ms" (training found
    # no "runtime_ms"), and the GPU the category " a100", which no request names.
    path = write(tmp_path / "spaced.csv",
                 b'batch_size , gpu,  note, runtime_ms\n1, a100, "x, y", 3.5\n2,\th100, , 4.5\n  ,a100,x,5.5\n')
    assert list(iter_trace_file(path)) == [
        {"batch_size": 1, "gpu": "a100", "note": "x, y", "runtime_ms": 3.5},  # a quoted cell after the space too
        {"batch_size": 2, "gpu": "\th100", "note": None, "runtime_ms": 4.5},  # only spaces are skipped; a blank cell is missing
        {"batch_size": None, "gpu": "a100", "note": "x", "runtime_ms": 5.5},  # at the start of a line too
    ]
    # Another separator (a spreadsheet's ';' where the comma is the decimal sign) is named.
    with pytest.raises(TraceError, match=r"semi\.csv: the CSV header is one column, 'a;runtime_ms': its fields must "
                                         r"be separated by commas, not ';'"):
        list(iter_trace_file(write(tmp_path / "semi.csv", b"a;runtime_ms\n1;2,5\n")))
    # Two names that differ only in their spaces are one name, named twice.
    with pytest.raises(TraceError, match=r"twice\.csv: the CSV header names column 'a' twice"):
        list(iter_trace_file(write(tmp_path / "twice.csv", b"a, a ,runtime_ms\n1,2,3\n")))


def test_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n" + as_jsonl(FLAT[:1]) + b"   \n\n" + as_jsonl(FLAT[1:]))
    assert list(iter_trace_file(path)) == FLAT


def test_lines_are_read_across_blocks_and_numbered_as_in_the_file(monkeypatch):
    from swarmpilot_predictor import traces

    monkeypatch.setattr(traces, "_LINES_BLOCK", 7)  # lines longer than a block, blocks of blank lines
    data = b"\xef\xbb\xbf" + b'{"a": 1}\r\n' + b"\n" * 30 + b'  \t \n{"a": 22222222222}\n\n{"b": 3}'
    assert list(traces.content_lines(io.BytesIO(data))) == [
        (1, b'{"a": 1}\r'), (33, b'{"a": 22222222222}'), (35, b'{"b": 3}')]
    assert list(traces.content_lines(io.BytesIO(b""))) == []
    assert list(traces.content_lines(io.BytesIO(b"\n \n"))) == []
    with pytest.raises(TraceError, match=r"<upload>: line 35 is not valid JSON"):
        list(traces.iter_trace_stream(io.BytesIO(data[:-2] + b"\n{oops"), "jsonl"))


def test_a_gzip_of_blank_lines_is_read_in_a_moment(tmp_path):
    # 19 KB holding 20 million blank lines: read line by line, 11 s of the training worker.
    path = tmp_path / "blank.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n" * (20 << 20)))
    assert len(path.read_bytes()) < 30_000
    assert list(iter_trace_file(path)) == []


def test_unsupported_suffix_is_refused(tmp_path):
    path = tmp_path / "traces.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(TraceError, match="unsupported trace file"):
        list(iter_trace_file(path))


@pytest.mark.parametrize("name, stem_required, expected", [
    ("t.json", False, ("json", ".json", False)),
    ("T.NDJSON.GZ", False, ("jsonl", ".ndjson", True)),
    ("t.csv.gz", True, ("csv", ".csv", True)),
    (".jsonl", False, ("jsonl", ".jsonl", False)),
    (".jsonl", True, None),  # a table's name must be longer than its suffix
    (".csv.gz", True, None),
    ("t.parquet", False, None),
    ("t.json.gz.gz", False, None),
])
def test_trace_file_format(name, stem_required, expected):
    assert trace_file_format(name, stem_required=stem_required) == expected


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(as_jsonl(FLAT[:2]) + b'{"input_tokens": 5, "runtime_ms": \n' + as_jsonl(FLAT[2:]))
    with pytest.raises(TraceError, match=r"bad\.jsonl: line 3 is not valid JSON \(unexpected end of data at column 35\)$"):
        list(iter_trace_file(path))  # (the column within the line: not orjson's "line 1" of the line alone)


@pytest.mark.parametrize(("name", "content", "said"), [
    # Excel's "Unicode text" and PowerShell's `>` write UTF-16: each was "line 1 is not valid
    # JSON (str is not valid UTF-8: surrogates not allowed ...)" or a codec's error.
    ("t.jsonl", "utf-16", r"the file is UTF-16 text \(it starts with a UTF-16 byte order mark\); save it as UTF-8$"),
    ("t.csv", "utf-16", r"the file is UTF-16 text \(it starts with a UTF-16 byte order mark\)"),
    ("t.json", "utf-32", r"the file is UTF-32 text"),
    ("t.jsonl", "utf-16-le", r"the file reads as UTF-16 text without a byte order mark; save it as UTF-8$"),
    ("t.jsonl", "utf-16-be", r"the file reads as UTF-16 text without a byte order mark"),
    ("t.jsonl", "latin-1", r"line 2: byte 0xe9 at column 33 is not UTF-8 text \(is the file latin-1 or Windows-1252\?\)"),
    ("t.csv", "latin-1", r"t\.csv: byte 0xe9 is not UTF-8 text \(is the file latin-1"),
    ("t.jsonl", "gzip", r"t\.jsonl: the file is gzip-compressed; name it with \.gz at the end$"),
    ("t.jsonl.gz", "gzip", r"t\.jsonl\.gz: the file is gzip-compressed twice; decompress it once more$"),
])
def test_a_file_in_another_encoding_is_named_so(tmp_path, name, content, said):
    text = ('runtime_ms,name\n1.5,a\n2.5,caf\u00e9\n' if name.startswith("t.csv") else
            '[{"runtime_ms": 1.5, "name": "caf\u00e9"}]' if name == "t.json" else
            '{"runtime_ms": 1.5, "name": "a"}\n{"runtime_ms": 2.5, "name": "caf\u00e9"}\n')
    data = gzip.compress(text.encode()) if content == "gzip" else text.encode(content)
    if name.endswith(".gz"):  # (around what is already gzip, a second compression)
        data = gzip.compress(data)
    (tmp_path / name).write_bytes(data)
    with pytest.raises(TraceError, match=said):
        list(iter_trace_file(tmp_path / name))


@pytest.mark.parametrize("text", [
    '[{"runtime_ms": 1.5, "name": "caf\u00e9"}]',  # read by the incremental decoder
    '[\n{"runtime_ms": 1.5, "name": "a"},\n{"runtime_ms": 2.5, "name": "caf\u00e9"}\n]\n',  # one record a line
    '{"traces": [{"runtime_ms": 1.5, "name": "caf\u00e9"}]}',
])
def test_a_json_file_in_latin1_names_the_byte(tmp_path, text):
    # Said for .jsonl and .csv files; a .json file's was the codec's error, "it may be truncated".
    (tmp_path / "t.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(TraceError, match=r"^t\.json: byte 0xe9 is not UTF-8 text \(is the file latin-1 or "
                                         r"Windows-1252\?\); save it as UTF-8$"):
        list(iter_trace_file(tmp_path / "t.json"))


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_a_jsonl_line_that_spells_nan_says_so(tmp_path, token):
    # Python's json writes them by default; the line was "unexpected character ... at column 35".
    path = tmp_path / "nan.jsonl"
    path.write_bytes(as_jsonl(FLAT[:2]) + b'{"input_tokens": 5, "runtime_ms": ' + token.encode() + b"}\n")
    with pytest.raises(TraceError, match=rf"nan\.jsonl: line 3 is not valid JSON \({token} is not a JSON value: write null"):
        list(iter_trace_file(path))


def test_jsonl_line_that_is_not_an_object_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(as_jsonl(FLAT[:1]) + b"[1, 2]\n")
    with pytest.raises(TraceError, match=r"bad\.jsonl: line 2: .*JSON object"):
        list(iter_trace_file(path))


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_bytes(as_json_array(FLAT)[:-10])
    with pytest.raises(TraceError, match=r"broken\.json: item 2: not valid JSON \(.*; the file is truncated\)"):
        list(iter_trace_file(path))


@pytest.mark.parametrize(("data", "message"), [
    (b'[{"a": 1}, {"a": 2},]', r"item 2: not valid JSON \(Expecting value; malformed\)"),
    (b'[{"a": 1}, {"a": 2,}]', r"item 1: not valid JSON \(Expecting property name.*; malformed\)"),
    (b'[{"a": 1},,{"a": 2}]', r"item 1: not valid JSON \(Expecting value; malformed\)"),
    (b'[{"a": 1}, {"a": 2},', r"item 2: not valid JSON \(Expecting value; the file is truncated\)"),
])
def test_a_stray_comma_at_the_end_of_a_json_file_is_not_called_a_truncation(tmp_path, data, message):
    # A trailing comma near the file's end was "the file is truncated", which it is not
    # (a lookup table edited by hand: its message says the same).
    with pytest.raises(TraceError, match=r"^doc\.json: " + message):
        list(iter_trace_file(write(tmp_path / "doc.json", data)))


def test_json_of_the_wrong_shape_is_refused(tmp_path):
    path = tmp_path / "shape.json"
    path.write_bytes(orjson.dumps({"rows": FLAT}))
    with pytest.raises(TraceError, match=r"shape\.json: .*array"):
        list(iter_trace_file(path))


def test_streamed_arrays_in_any_layout():
    items = [{"i": i, "s": "x" * (i % 7), "nested": {"a": [i, None, True]}} for i in range(30_000)]
    for option in (0, orjson.OPT_INDENT_2):
        data = orjson.dumps(items, option=option)
        assert list(iter_json_array(io.BytesIO(data), "t")) == items  # > 1 MB: crosses read chunks
    lines = b"[\n" + b",\n".join(orjson.dumps(x) for x in items[:5]) + b"\n]\n"
    assert list(iter_json_array(io.BytesIO(lines), "t")) == items[:5]
    assert list(iter_json_array(io.BytesIO(b" [ ] "), "t")) == []
    with pytest.raises(TraceError, match="after the closing"):
        list(iter_json_array(io.BytesIO(b"[1] 2"), "t"))


def test_an_objects_traces_array_is_streamed_in_any_layout(tmp_path):
    items = [{"i": i, "s": "x" * (i % 7), "nested": {"a": [i, None, True]}} for i in range(30_000)]
    doc = {"meta": {"traces": 1, "list": [[1], {"x": "}"}]}, "traces": items, "after": "]}"}
    for option in (0, orjson.OPT_INDENT_2):
        path = write(tmp_path / "doc.json", orjson.dumps(doc, option=option))  # > 1 MB: crosses read chunks
        assert list(iter_trace_file(path)) == items
    for data, expected in ((b' { "traces" : [ ] } ', []), (b'{"traces": [{"a": 1}]}\n', [{"a": 1}])):
        assert list(iter_trace_file(write(tmp_path / "small.json", data))) == expected


def test_numbers_cut_by_the_readers_chunks_are_read_whole(tmp_path):
    # The decoder reads a megabyte at a time; a number that the chunk's end cuts ("1234|5678")
    # is read whole, not as a shorter number followed by a stray digit.
    numbers = list(range(10**7, 10**7 + 200_000))  # 1.8 MB of numbers: chunk ends fall inside some
    assert list(iter_json_array(io.BytesIO(b"[" + b", ".join(b"%d" % v for v in numbers) + b"]"), "t")) == numbers
    head = b'{"pad": "' + b"x" * (2**20 - len(b'{"pad": "", "n": ') - 3) + b'", "n": '
    doc = head + b'12345678, "traces": [{"a": 1}]}'
    assert doc.index(b"12345678") == 2**20 - 3
    assert list(iter_trace_file(write(tmp_path / "cut.json", doc))) == [{"a": 1}]


@pytest.mark.parametrize(("data", "message"), [
    (b'{"traces": [{"a": 1}], "traces": [{"a": 2}]}', r"the object has two 'traces' members"),
    (b'{"traces": {"a": 1}}', r"a \.json trace file holds an array or an object with a 'traces' array$"),
    (b'{"rows": [{"a": 1}]}', r"a \.json trace file holds an array or an object with a 'traces' array$"),
    (b'{}', r"a \.json trace file holds an array or an object with a 'traces' array$"),
    (b'{"traces": [{"a": 1}, {"a": 2}', r"ends after item 1 before the closing '\]'; the file is truncated"),
    (b'{"traces": [{"a": 1}, {"a": ', r"item 1: not valid JSON \(.*; the file is truncated\)"),
    (b'{"traces": [{"a": 1}]', r"malformed object: expected ',' or '\}' after member 'traces' \(the file is truncated\)"),
    (b'{"traces": [{"a": 1}]} []', r"unexpected data after the closing '\}'"),
    (b'{"traces": [{"a": 1}] "more": 1}', r"malformed object: expected ',' or '\}' after member 'traces' \(found '\"'\)"),
    (b'{traces: []}', r"malformed object: expected a member name, found 't'"),
    (b'{"traces" []}', r"malformed object: expected ':' after the member name 'traces'"),
    (b'{"traces": [{"a": NaN}]}', r"item 0: .*NaN"),
])
def test_a_malformed_object_of_traces_names_the_problem(tmp_path, data, message):
    with pytest.raises(TraceError, match=r"^doc\.json: " + message):
        list(iter_trace_file(write(tmp_path / "doc.json", data)))


def test_trace_file_reader_handles_every_format(tmp_path):
    traces = [{"a": 1, "b": "x"}, {"input_feature": [{"param_name": "a", "val": 2}], "model_id": "m"}]
    (tmp_path / "t.json").write_bytes(orjson.dumps(traces))
    (tmp_path / "w.json").write_bytes(orjson.dumps({"traces": traces}))
    (tmp_path / "t.csv").write_text("a,b\n1,x\n2,\n")
    expected = [{"a": 1, "b": "x"}, {"a": 2, "model_id": "m"}]
    assert list(iter_trace_file(tmp_path / "t.json")) == expected
    assert list(iter_trace_file(tmp_path / "w.json")) == expected
    assert list(iter_trace_file(tmp_path / "t.csv")) == [{"a": 1, "b": "x"}, {"a": 2, "b": None}]


def test_json_item_that_is_not_an_object_names_the_item(tmp_path):
    path = tmp_path / "items.json"
    path.write_bytes(orjson.dumps([FLAT[0], FLAT[1], "oops"]))
    with pytest.raises(TraceError, match=r"items\.json: item 2"):
        list(iter_trace_file(path))


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz", ".csv.gz"])
def test_truncated_gzip_raises_trace_error_naming_the_file(tmp_path, suffix):
    rows = [dict(FLAT[0], task_id=f"t{i}", input_tokens=i) for i in range(2000)]
    fmt = {".jsonl.gz": as_jsonl, ".json.gz": as_json_array, ".csv.gz": as_csv}[suffix]
    whole = gzip.compress(fmt(rows))
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TraceError, match=rf"cut{suffix.replace('.', '[.]')}: cannot read the file .*truncated"):
        list(iter_trace_file(path))


@pytest.mark.parametrize("content", [b"", b"\x1f\x8bzzzz", b"\x1f"], ids=["empty", "bad-header", "cut-header"])
@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz", ".csv.gz"])
def test_not_gzip_at_all_raises_trace_error(tmp_path, suffix, content):
    path = tmp_path / f"fake{suffix}"
    path.write_bytes(content or as_jsonl(FLAT))
    # Said as it is, not "the file is empty" (which its bytes read as text were).
    with pytest.raises(TraceError, match=rf"^client{suffix.replace('.', '[.]')}: not a valid gzip file"):
        list(iter_trace_file(path, source=f"client{suffix}"))


def test_binary_garbage_in_csv_raises_trace_error(tmp_path):
    path = tmp_path / "garbage.csv"
    path.write_bytes(b"a,b\n\xff\xfe\xfa,1\n")
    with pytest.raises(TraceError, match=r"garbage\.csv"):
        list(iter_trace_file(path))


def test_a_csv_cell_past_the_csv_modules_default_limit_is_read_as_from_json(tmp_path):
    # The csv module refuses cells over 131,072 characters by default: the whole file was a 422.
    path = tmp_path / "huge.csv"
    path.write_bytes(b'prompt,runtime_ms\n"' + b"x" * 200_000 + b'",3\n')
    assert list(iter_trace_file(path)) == [{"prompt": "x" * 200_000, "runtime_ms": 3}]


def test_csv_identity_cells_are_text_and_a_row_of_commas_is_blank(tmp_path):
    # As numbers, versions "2.1" and "2.10" (hardware "007" and "7") named one model.
    path = write(tmp_path / "ids.csv", b"software_version,hardware,bs,runtime_ms\n2.1,007,1,10\n2.10,7,2,20\n,,,\n"
                                       b",H100,3,30\n")
    assert list(iter_trace_file(path)) == [
        {"software_version": "2.1", "hardware": "007", "bs": 1, "runtime_ms": 10},
        {"software_version": "2.10", "hardware": "7", "bs": 2, "runtime_ms": 20},
        {"software_version": None, "hardware": "H100", "bs": 3, "runtime_ms": 30}]


def test_iter_trace_stream_default_source_name():
    with pytest.raises(TraceError, match=r"<upload>: line 1"):
        list(iter_trace_stream(io.BytesIO(b"{nope}\n"), "jsonl"))


# --------------------------------------------------------------------------- TraceTable


def test_table_columns_in_first_seen_order_with_padding():
    traces = [{"a": 1, "b": "x"}, {"c": 2.5}, {"a": 3, "c": 4}]
    table = TraceTable.from_traces(traces)
    assert list(table.columns) == ["a", "b", "c"]
    assert len(table) == 3
    np.testing.assert_array_equal(table.numeric("a"), [1.0, math.nan, 3.0])
    np.testing.assert_array_equal(table.numeric("c"), [math.nan, 2.5, 4.0])
    assert table.strings("b").tolist() == ["x", None, None]
    assert table.columns["b"].is_categorical and not table.columns["a"].is_categorical


def test_table_mixed_column_is_categorical_with_numbers_as_strings():
    table = TraceTable.from_traces([{"v": "gpu"}, {"v": 2.0}, {"v": 2.5}, {"v": None}, {"v": True}])
    col = table.columns["v"]
    assert col.is_categorical
    assert table.strings("v").tolist() == ["gpu", "2", "2.5", None, "1"]


def test_integers_past_the_float_range_are_infinite(tmp_path):
    # The CSV reader keeps every digit of an integer; no float can hold these: as numbers
    # they are infinite (a missing feature value, a runtime training drops), never a crash.
    huge = "9" * 400
    path = tmp_path / "t.csv"
    path.write_text(f"zone,size,runtime_ms\ngpu,-{huge},1.5\n{huge},2,{huge}\n7,3,3.5\n")
    table = TraceTable.from_file(path)
    assert table.strings("zone").tolist() == ["gpu", None, "7"]
    np.testing.assert_array_equal(table.numeric("size"), [-math.inf, 2.0, 3.0])
    np.testing.assert_array_equal(table.numeric("runtime_ms"), [1.5, math.inf, 3.5])
    assert category_text(int(huge)) == huge and category_text(7.0) == "7"


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_integers_past_the_float_range_in_json_files_are_infinite_too(tmp_path, suffix):
    # orjson refuses them ("number is infinity when parsed as double"): the whole file was
    # refused, where the same traces as CSV, as a request's list or as a lookup table read.
    rows = [{"x": 10**400 if i == 0 else i, "runtime_ms": 1.0 + i} for i in range(4)]
    path = tmp_path / f"t{suffix}"
    path.write_text(json.dumps(rows) if suffix == ".json" else "\n".join(map(json.dumps, rows)))
    np.testing.assert_array_equal(TraceTable.from_file(path).numeric("x"), [math.inf, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(TraceTable.from_traces(rows).numeric("x"), [math.inf, 1.0, 2.0, 3.0])
    path.write_text('[{"x": NaN, "y": 1' + "0" * 400 + "}]" if suffix == ".json" else '{"x": NaN, "y": 1' + "0" * 400 + "}")
    with pytest.raises(TraceError, match="not valid JSON"):  # still not JSON
        TraceTable.from_file(path)
    if suffix == ".json":  # in each of the array reader's layouts: a record a line, and pretty-printed
        for text, item in (('[\n{"x": 1, "y": 2},\n{"x": NaN, "y": 3}\n]\n', 1), ('[\n  {\n    "x": NaN\n  }\n]', 0)):
            path.write_text(text)
            with pytest.raises(TraceError, match=rf"t\.json: item {item}: not valid JSON \(NaN is not a JSON value: write null for a missing value\)"):
                TraceTable.from_file(path)


def test_a_csv_cell_is_a_number_as_python_reads_one_in_ascii_without_underscores(tmp_path):
    # "1_000" and other scripts' digits were numbers in a CSV file and words in a JSON one.
    path = tmp_path / "t.csv"
    path.write_text("a,runtime_ms\n1_000,1\n\u0661\u0662,2\n 12 ,3\nnan,4\ninf,5\n-1.5e3,6\n", encoding="utf-8")
    values = [row["a"] for row in iter_trace_file(path)]
    assert values[:3] == ["1_000", "\u0661\u0662", 12] and math.isnan(values[3]) and values[4:] == [math.inf, -1500.0]


def test_table_booleans_and_unusual_values():
    table = TraceTable.from_traces([{"flag": True, "obj": {"x": 1}}, {"flag": False, "obj": [1, 2]}])
    np.testing.assert_array_equal(table.numeric("flag"), [1.0, 0.0])
    assert np.isnan(table.numeric("obj")).all()  # objects and lists are missing values


def test_table_accepts_structured_traces():
    table = TraceTable.from_traces([structured(t) for t in FLAT])
    assert set(table.columns) == {"input_tokens", "output_tokens", "model", "model_id", "runtime_ms", "task_id"}
    np.testing.assert_array_equal(table.numeric("input_tokens"), [100, 200, 300])


def test_table_reports_bad_inline_trace_position():
    with pytest.raises(TraceError, match=r"item 1"):
        TraceTable.from_traces([FLAT[0], 5])


def test_table_take_selects_rows():
    table = TraceTable.from_traces(FLAT)
    part = table.take(np.array([0, 2]))
    assert len(part) == 2
    np.testing.assert_array_equal(part.numeric("input_tokens"), [100, 300])
    assert part.strings("model").tolist() == ["a", "a"]


def test_table_progress_counts_every_row():
    seen = []
    TraceTable.from_traces(({"a": i} for i in range(20000)), progress=seen.append)
    assert sum(seen) == 20000


def test_table_from_file_matches_inline(tmp_path):
    path = write(tmp_path / "t.csv.gz", as_csv(FLAT))
    a, b = TraceTable.from_file(path), TraceTable.from_traces(FLAT)
    assert list(a.columns) == list(b.columns)
    for name in a.columns:
        assert a.strings(name).tolist() == b.strings(name).tolist()


@pytest.mark.parametrize("layout", ["jsonl", "json array, a record a line", "json array, indented",
                                    "json object with a traces array"])
def test_a_large_trace_file_is_read_in_bounded_memory(tmp_path, layout):
    n = 100_000
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 4000, n).tolist(), rng.integers(1, 800, n).tolist()
    records = [
        b'{"task_id":"task-%d","input_tokens":%d,"output_tokens":%d,"gpu":"%s","runtime_ms":%r}'
        % (i, x, y, b"h100" if i % 2 else b"a100", x * 0.01 + y * 9.5)
        for i, (x, y) in enumerate(zip(a, b))
    ]
    if layout == "jsonl":
        path = write(tmp_path / "big.jsonl", b"\n".join(records) + b"\n")
    elif layout == "json array, a record a line":  # what the table writer and most dumps produce
        path = write(tmp_path / "big.json", b"[\n" + b",\n".join(records) + b"\n]\n")
    elif layout == "json array, indented":  # read by the incremental decoder: loaded whole before
        path = write(tmp_path / "big.json", b"[\n  " + b",\n  ".join(r.replace(b",", b", ") for r in records) + b"\n]")
    else:  # loaded whole before 2026-12-01
        path = write(tmp_path / "big.json", b'{"source": {"host": "n1"}, "traces": [' + b",".join(records) + b"]}")
    del records
    size_mb = path.stat().st_size / 2**20
    tracemalloc.start()
    try:
        table = TraceTable.from_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table) == n
    np.testing.assert_array_equal(table.numeric("input_tokens")[:3], a[:3])
    assert table.strings("gpu")[:2].tolist() == ["a100", "h100"]
    peak_mb = peak / 2**20
    # Holding the rows as a list of dicts alone costs about 35 MB here (18 MB per 50k rows);
    # the columnar table must stay below that (17 to 21 MB, by layout), and far below the
    # 150 MB budget.
    assert peak_mb < 30, f"peak {peak_mb:.0f} MB for a {size_mb:.0f} MB file"


def _dense_reference(traces, name):
    """What a column should read as, from the dicts themselves."""
    values = [t.get(name) for t in traces]
    numbers = [float(v) if isinstance(v, (int, float)) else math.nan for v in values]
    strings = [v if isinstance(v, str) else category_text(v) if isinstance(v, (int, float)) else None
               for v in values]
    return np.array(numbers), strings, [isinstance(v, bool) for v in values]


def test_sparse_and_dense_columns_read_the_same():
    # Fields held by every row, most rows, a few rows and one row, mixing numbers, words,
    # booleans and nulls: each read back as the traces say, and again after take().
    rng = np.random.default_rng(3)
    choices = [1, 2.5, "fast", True, False, None, 7]
    traces = []
    for i in range(3000):
        t = {"runtime_ms": float(i + 1), "dense": i % 5}
        if rng.random() < 0.9:
            t["mostly"] = choices[rng.integers(len(choices))]
        if rng.random() < 0.01:
            t["rare"] = choices[rng.integers(len(choices))]
        if i % 700 == 0:
            t["late_then_often" if i < 1400 else "tail"] = "x" if i % 1400 else 3
        if i >= 2000:
            t["late_then_often"] = float(i)
        if i == 1234:
            t["once"] = "only"
        traces.append(t)
    table = TraceTable.from_traces(traces)
    assert table.columns["rare"].at_rows is not None and table.columns["dense"].at_rows is None
    rows = np.sort(rng.choice(3000, size=1100, replace=False))
    few = np.array([3, 700, 1234, 1400, 2001, 2500, 2999])  # fewer rows than a sparse column's values
    assert len(table.columns["rare"].at_rows) > len(few)
    for tab, ref in ((table, traces), (table.take(rows), [traces[i] for i in rows]),
                     (table.take(few), [traces[i] for i in few]), (table.take(rows).take(np.arange(0, 1100, 3)),
                                                                   [traces[i] for i in rows[::3]])):
        assert len(tab) == len(ref)
        for name in ("runtime_ms", "dense", "mostly", "rare", "late_then_often", "tail", "once"):
            numbers, strings, booleans = _dense_reference(ref, name)
            col = tab.columns[name]
            np.testing.assert_array_equal(tab.numeric(name), numbers, err_msg=name)
            assert tab.strings(name).tolist() == strings, name
            assert col.boolean_rows().tolist() == booleans, name
            assert col.missing_rows().tolist() == [not isinstance(t.get(name), (int, float, str)) for t in ref], name
            codes = col.code_array()
            assert [(list(col.vocab)[c] if c >= 0 else None) for c in codes] == [
                t.get(name) if isinstance(t.get(name), str) else None for t in ref], name


def test_sparse_traces_cost_their_values_not_rows_times_fields(monkeypatch):
    # Each field was a column of every row: 12,000 rows with a field each, 400 KB of JSONL,
    # took 1.4 GB; then such files were refused. Now each column costs what it holds.
    from swarmpilot_predictor import traces as traces_module

    tracemalloc.start()
    try:
        table = TraceTable.from_traces({"runtime_ms": 1.0, f"field_{i}": i} for i in range(12_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table.columns) == 12_001 and table.n_rows == 12_000
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MB"  # the dense table alone: 1,100 MB
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(table.numeric("field_77"))), [77])
    # A group_by file of 100 models, each with 10 feature names of its own: each group's
    # table holds its own fields' values.
    mixed = [{"runtime_ms": 1.0, "model_name": f"m{i % 100}", **{f"m{i % 100}_{j}": j for j in range(10)}}
             for i in range(4000)]
    grouped = TraceTable.from_traces(mixed)
    assert len(grouped.columns) == 1002
    group = grouped.take(np.arange(7, 4000, 100))
    assert np.isfinite(group.numeric("m7_3")).all() and not np.isfinite(group.numeric("m8_3")).any()
    monkeypatch.setattr(traces_module, "MAX_TRACE_VALUES", 3 * 8192)
    with pytest.raises(TraceError, match="the first 8,192 traces hold 32,768 values, more than 24,576"):
        TraceTable.from_traces({"runtime_ms": 1.0, "a": 1, "b": 2, "c": 3} for _ in range(10_000))
    assert TraceTable.from_traces({"runtime_ms": 1.0, "a": 1, "b": 2} for _ in range(8_000)).n_rows == 8_000
    monkeypatch.setattr(traces_module, "MAX_TRACE_FIELDS", 100)
    with pytest.raises(TraceError, match="item 99: the traces name more than 100 different fields"):
        TraceTable.from_traces({"runtime_ms": 1.0, f"field_{i}": i} for i in range(200))


def test_a_trace_file_read_in_part_leaves_no_file_to_the_collector(tmp_path):
    # A reader stopped after its first trace (a header check, a preview) closes the file
    # with the reader; the CSV reader's text layer was left to the collector.
    import gc
    import warnings

    for name, text in (("t.csv", "a,runtime_ms\n1,2\n3,4\n"), ("t.jsonl", '{"a": 1, "runtime_ms": 2}\n' * 2)):
        path = tmp_path / name
        path.write_text(text)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traces = iter_trace_file(path)
            assert next(traces) == {"a": 1, "runtime_ms": 2}
            traces.close()
            del traces
            gc.collect()
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_a_number_of_a_numeric_subclass_is_an_elapsed_time():
    # As a feature's value is (numpy's float64 is a float): in-process callers pass them.
    elapsed, errors = elapsed_times([{"elapsed_ms": np.float64(250.0)}, {"elapsed_ms": 3}])
    assert errors == [None, None] and elapsed.tolist() == [250.0, 3.0]


@pytest.mark.parametrize("layout", ["indented", "object", "jsonl_wide"])
def test_a_lone_surrogate_escape_is_refused_in_every_json_layout(tmp_path, layout):
    # Python's parser (an indented array, an object's 'traces', a JSONL line with an integer
    # past the float range) read "\ud800" as a lone surrogate, which orjson refuses: a
    # category or a feature named with one trained, and storing its model was a 500.
    rows = [{"gpu": "a" if i % 2 else "\U0001F600", "runtime_ms": 10 + i} for i in range(4)]
    text = json.dumps(rows, indent=2)  # (the emoji as a pair of escapes: one character, read)
    assert [t["gpu"] for t in iter_trace_file(write(tmp_path / "ok.json", text.encode()))] == ["\U0001F600", "a"] * 2
    bad = text.replace('"gpu": "a"', '"g\\ud800": "a"', 1)
    if layout == "indented":
        path = write(tmp_path / "t.json", bad.encode())
    elif layout == "object":
        path = write(tmp_path / "t.json", b'{"traces": ' + bad.encode() + b"}")
    else:
        lines = [json.dumps(r) for r in rows]
        lines[1] = lines[1].replace('"gpu": "a"', '"big": ' + "9" * 400 + ', "gpu": "\\udc80"')
        path = write(tmp_path / "t.jsonl", "\n".join(lines).encode())
    with pytest.raises(TraceError, match=r"(item|line) [12]\b.* not valid JSON \(a lone surrogate \('\\u"):
        TraceTable.from_file(path)


def test_an_identity_key_keeps_every_digit_of_an_integer_a_float_cannot_hold():
    # A build number as a version: it named the model after the float's digits, 20251208123456790528.
    table = TraceTable.from_traces([{"software_version": 20251208123456789012, "x": 20251208123456789012},
                                    {"software_version": 2, "x": 1}, {"software_version": 2.5, "x": 1},
                                    {"software_version": -(2**53) - 1, "x": 1}, {"software_version": 10**400}])
    assert table.strings("software_version").tolist() == ["20251208123456789012", "2", "2.5", "-9007199254740993", None]
    assert table.strings("x").tolist()[0] == "20251208123456790528"  # a feature's number is a float, as before
