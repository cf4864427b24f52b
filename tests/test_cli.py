"""The ``swarmpilot-predictor`` command line, run in-process against a data directory."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from swarmpilot_predictor import cli
from swarmpilot_predictor.identity import ModelIdentity

from .conftest import IDENTITY, autotuned_traces, make_llm_traces

KEY = ModelIdentity.from_parts(IDENTITY).key
ENCODED = "llm/Qwen%2FQwen2.5-7B/NVIDIA H100 80GB HBM3/sglang/0.4.0"
runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    # Tables wrap at 80 columns by default; a wide console keeps each row on one line.
    monkeypatch.setattr(cli, "console", Console(width=250))


@pytest.fixture(autouse=True)
def own_environment():
    # `serve` hands its flags to the worker processes through the environment.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def invoke(*args: str, ok: bool = True):
    result = runner.invoke(cli.app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    else:
        assert result.exit_code != 0, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def json_out(result) -> object:
    return orjson.loads(result.stdout)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A live service for the commands that reach one with --url; each test trains the
    version it reads (the newest) first."""
    from .conftest import run_server

    with run_server(tmp_path_factory.mktemp("cli") / "data") as srv:
        yield srv


@pytest.fixture
def trained(tmp_path: Path, data: Path) -> Path:
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"}))
    invoke("train", cfg, "--data-dir", data)
    return data


def test_train_with_a_json_config(tmp_path, data):
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(150), "algorithm": "linear"}))
    result = invoke("train", cfg, "--data-dir", data)
    assert KEY in result.stdout and "linear" in result.stdout and "150" in result.stdout
    assert len(list((data / "models").glob("*/v0001.meta.json"))) == 1
    # training again makes version 2; --json prints the answer as the API gives it
    body = json_out(invoke("train", cfg, "--data-dir", data, "--json"))
    assert body["status"] == "success" and body["model_key"] == KEY and body["version"] == 2
    assert body["metrics"]["algorithm"] == "linear" and 0.8 < body["metrics"]["interval_coverage"]["0.9"] <= 1.0
    # The same data and algorithm: the same held-out figures as the table gave, runtime / expect among them.
    assert "runtime/expect" in result.stdout
    assert f"{body['metrics']['expect_ratio']:.4f}" in result.stdout
    assert len(list((data / "models").glob("*/v0002.meta.json"))) == 1


def test_train_says_which_traces_it_did_not_train_on(tmp_path, data):
    # The table's rows are the rows used: traces in no group, and rows dropped, went unsaid
    # (only --json had rows_in_no_group and metrics.data.rows_dropped).
    traces = make_llm_traces(60)
    for i, t in enumerate(traces):
        if i % 3:
            t["hardware"] = "A100"
        if i % 10 == 1:
            t["runtime_ms"] = None
    cfg = tmp_path / "train.json"
    model = {k: v for k, v in IDENTITY.items() if k != "hardware"}
    cfg.write_text(json.dumps({"model": model, "group_by": ["hardware"], "traces": traces, "algorithm": "empirical"}))
    out = invoke("train", cfg, "--data-dir", data).stdout
    assert "20 trace(s) lack a group_by key: in no group, not trained on" in out
    key = ModelIdentity.from_parts({**model, "hardware": "A100"}).key
    assert f"{key}: 4 of 40 traces not used (target missing or not finite: 4)" in out


def test_train_with_a_yaml_config_and_a_trace_file_next_to_it(tmp_path, data):
    folder = tmp_path / "configs"
    folder.mkdir()
    traces = make_llm_traces(120)
    lines = ["input_tokens,output_tokens,runtime_ms"] + [
        f"{t['input_tokens']},{t['output_tokens']},{t['runtime_ms']}" for t in traces]
    (folder / "traces.csv").write_text("\n".join(lines) + "\n")
    cfg = folder / "train.yaml"
    cfg.write_text(yaml.safe_dump({"config": {"model": IDENTITY, "traces": "traces.csv", "algorithm": "empirical",
                                              "quantiles": [0.5, 0.9]}}))
    invoke("train", cfg, "--data-dir", data)
    models = json_out(invoke("models", "--data-dir", data, "--json"))
    (entry,) = models[0]["models"]
    assert entry["samples"] == 120 and entry["algorithm"] == "empirical" and entry["quantiles"] == [0.5, 0.9]


def test_train_from_a_file_in_the_data_directory(tmp_path, data):
    (data / "traces").mkdir(parents=True)
    (data / "traces" / "llm.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(90)))
    cfg = tmp_path / "train.yml"
    cfg.write_text(f"model: {json.dumps(IDENTITY)}\ntraces: traces/llm.jsonl\nalgorithm: linear\n")
    invoke("train", cfg, "--data-dir", data)
    (entry,) = json_out(invoke("models", "--data-dir", data, "--json"))[0]["models"]
    assert entry["samples"] == 90


@pytest.mark.parametrize("content, suffix, message", [
    ('{"model": ', ".json", "config is neither valid JSON nor YAML"),
    ("model: [unclosed", ".yaml", "config is neither valid JSON nor YAML"),
    ("[1, 2]", ".json", "config must be a JSON or YAML object"),
    # Read as POST /train reads a config: YAML must say what JSON could.
    ("traces: [{x: 1, when: 2024-01-01}]", ".yaml", "config.traces.0.when: a date, which JSON cannot hold"),
    ('{"traces": []}', ".json", "config.model: config needs 'model'"),
    ('{"model": {"model_type": "llm"}, "traces": []}', ".json", "config.model: needs model_name, hardware, software_name, software_version"),
])
def test_train_with_a_bad_config_fails_cleanly(tmp_path, data, content, suffix, message):
    cfg = tmp_path / f"bad{suffix}"
    cfg.write_text(content)
    said = one_error_line(invoke("train", cfg, "--data-dir", data, ok=False))
    assert message in said and "pydantic.dev" not in said


def test_train_refuses_paths_outside_the_data_directory(tmp_path, data):
    outside = tmp_path / "elsewhere" / "t.jsonl"
    outside.parent.mkdir()
    outside.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(50)))
    cfg = tmp_path / "cfgdir" / "train.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": "../../elsewhere/t.jsonl", "algorithm": "linear"}))
    result = invoke("train", cfg, "--data-dir", data, ok=False)
    assert "without '..'" in result.output


def test_train_config_must_exist(tmp_path, data):
    result = runner.invoke(cli.app, ["train", str(tmp_path / "nope.json"), "--data-dir", str(data)])
    assert result.exit_code == 2


@pytest.mark.parametrize("command, name", [(["table", "llm/*/*/*/*"], "TRACE_FILE"), (["train"], "CONFIG")])
@pytest.mark.parametrize("where", [["--url", "http://127.0.0.1:1"], []])
def test_an_empty_file_argument_is_said_to_be_empty_naming_it(tmp_path, command, name, where):
    # As a path "" is ".", the working directory: it was refused as "file '' is a directory".
    result = runner.invoke(cli.app, [*command, "", *where, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{name}': is empty: give a" in result.output and "directory" not in result.output
    # Other paths are refused as before: a usage error that names the argument and the file.
    for path, said in ((str(tmp_path / "nope.jsonl"), "does not exist."), (str(tmp_path), "is a directory.")):
        result = runner.invoke(cli.app, [*command, path, *where, "--data-dir", str(tmp_path)])
        assert result.exit_code == 2 and f"Invalid value for '{name}': file {path!r} {said}" in result.output


def test_models_lists_trained_models(trained):
    entries = json_out(invoke("models", "--data-dir", trained, "--json"))
    assert len(entries) == 1
    group = entries[0]
    assert (group["model_type"], group["model_name"]) == ("llm", "Qwen/Qwen2.5-7B")
    assert group["hardware_types"] == ["NVIDIA H100 80GB HBM3"]
    (entry,) = group["models"]
    assert entry["key"] == KEY and entry["versions"] == [1] and entry["samples"] == 200
    table = invoke("models", "--data-dir", trained).stdout
    assert KEY in table and "linear" in table


def test_models_lists_a_version_whose_metrics_were_edited_by_hand(trained):
    # One meta file's metrics not as training writes them failed the whole table with a
    # traceback: an interval coverage that is no object (AttributeError), a figure written as
    # text that rich read as markup (MarkupError).
    (meta_path,) = (trained / "models").glob("*/v0001.meta.json")
    meta = orjson.loads(meta_path.read_bytes())
    meta["metrics"].update(interval_coverage=[0.9], relative_pinball_loss="[/bold]")
    meta_path.write_bytes(orjson.dumps(meta))
    table = invoke("models", "--data-dir", trained).stdout
    assert KEY in table and "[/bold]" in table


def test_a_model_for_each_kind_of_run_is_named_by_both_families(tmp_path, data):
    traces = tmp_path / "vision.jsonl"
    traces.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in autotuned_traces(40, 600, seed=1)[0]))
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": str(traces)}))
    trained = invoke("train", cfg, "--data-dir", data).stdout
    (entry,) = json_out(invoke("models", "--data-dir", data, "--json"))[0]["models"]
    split = entry["first_run_split"]
    shown = f"{split['repeats']} (repeats) / {split['first_runs']} (first runs)"
    assert shown in trained and shown in invoke("models", "--data-dir", data).stdout


def test_models_on_an_empty_data_directory(data):
    data.mkdir()
    assert json_out(invoke("models", "--data-dir", data, "--json")) == []


def test_reading_a_folder_that_holds_no_models_leaves_it_as_it_was(tmp_path):
    # `models -d .` in a project's own folder left the service's four folders there.
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert json_out(invoke("models", "--data-dir", folder, "--json")) == []
    assert "no models" in invoke("models", "--data-dir", folder).stdout
    trace = json.dumps({"input_tokens": 10, "output_tokens": 5})
    said = one_error_line(invoke("predict", ENCODED, trace, "--data-dir", folder, ok=False))
    assert said == f"error: data directory {folder} holds no models (it has no models folder): train one into it first, or give --url"
    traces = tmp_path / "t.jsonl"
    traces.write_text(trace + "\n")
    assert one_error_line(invoke("table", ENCODED, traces, "--data-dir", folder, ok=False)) == said
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("command, needle", [("predict", "MODEL is model_type/model_name/hardware/software_name/software_version."),
                                             ("table", "MODEL is model_type/model_name/hardware/software_name/software_version."),
                                             ("train", "Training config (JSON or YAML)."),
                                             ("models", "--json ")])
def test_help_at_80_columns_shows_flags_as_flags_and_the_model_s_five_parts_whole(command, needle):
    # typer's panels gave every flag a "<bool>" (as if it took a value) and cut the five
    # parts with "…" at 80 columns. (typer 0.16 to 0.25 left an argument's help out, and
    # wrote "\[required]": typer>=0.26.)
    text = runner.invoke(cli.app, [command, "--help"], terminal_width=80, env={"COLUMNS": "80"}).stdout
    assert needle in text and "<bool>" not in text and "…" not in text and "\\[" not in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_version_is_the_installed_package_s():
    # As /health and /openapi.json report it (the command had no --version: "No such option").
    import subprocess
    import sys
    from importlib.metadata import version

    from swarmpilot_predictor import __version__

    done = subprocess.run([sys.executable, "-m", "swarmpilot_predictor", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"swarmpilot-predictor {__version__}\n", "")
    assert __version__ == version("swarmpilot-predictor")


def test_predict_a_json_trace(trained):
    body = json_out(invoke("predict", "llm/*/*/*/*", '{"input_tokens": 500, "output_tokens": 100}',
                           "--data-dir", trained, "--json", "--quantiles", "0.1,0.5,0.9", "-c", "0.8"))
    assert body["summary"]["success"] == 1 and body["summary"]["confidence_level"] == 0.8
    (r,) = body["results"]
    assert r["quantiles"] == [0.1, 0.5, 0.9]
    q10, q50, q90 = r["quantile_predictions"]
    assert q10 < q50 < q90
    assert 900 < q50 < 1500  # truth: 20 + 10 + 1200 = 1230 ms
    assert r["interval"] == pytest.approx([q10, q90], rel=1e-6)
    assert r["model_info"]["name"] == "Qwen/Qwen2.5-7B"


def test_predict_names_a_model_with_url_encoded_segments(trained):
    body = json_out(invoke("predict", ENCODED, '{"input_tokens": 5, "output_tokens": 5}', "--data-dir", trained, "--json"))
    assert body["results"][0]["status"] == "success"
    assert body["results"][0]["model_info"]["name"] == "Qwen/Qwen2.5-7B"


def test_tables_names_each_table_s_models_by_their_key_as_models_and_predict_take_it(monkeypatch):
    # A part holding a '/' (a Hugging Face model name) is written %2F, as `models` writes the
    # key and MODEL takes it: joined as it is, the name read as six parts, another model's.
    from swarmpilot_predictor.client import PredictorClient

    listed = [{"name": "qwen.json", "size_bytes": 912, "modified_at": 0.0, "rows": 5,
               "identities": [{**IDENTITY, "software_version": None, "model_versions": [1]}]}]
    monkeypatch.setattr(PredictorClient, "list_tables", lambda self: listed)
    out = invoke("tables", "--url", "http://127.0.0.1:9").stdout
    assert "llm/Qwen%2FQwen2.5-7B/NVIDIA H100 80GB HBM3/sglang/*" in out
    assert "Qwen/Qwen2.5" not in out


def test_predict_a_long_json_array_of_traces(trained):
    traces = [{"input_tokens": 10 * i, "output_tokens": 10 + i, "note": "x" * 50} for i in range(1, 8)]
    arg = json.dumps(traces)
    assert len(arg) > 300  # longer than any file name may be
    body = json_out(invoke("predict", "*/*/*/*/*", arg, "--data-dir", trained, "--json"))
    assert body["summary"]["success"] == 7
    assert body["expect"] == pytest.approx(sum(r["expect"] for r in body["results"]))
    assert body["error"] == pytest.approx(sum(r["error"] ** 2 for r in body["results"]) ** 0.5)  # independent tasks
    shared = json_out(invoke("predict", "*/*/*/*/*", arg, "--data-dir", trained, "--json", "--shared-factor"))
    assert shared["expect"] == pytest.approx(body["expect"]) and shared["error"] > body["error"]


def test_predict_says_which_traces_were_running_tasks_and_the_level_they_reached(trained, monkeypatch):
    # A running task's numbers are its time left: its row says so, by the level its elapsed
    # time reached (elapsed_level), in the table and in the tab-separated lines.
    traces = json.dumps([{"input_tokens": 500, "output_tokens": 100, "elapsed_ms": 1000.0},
                         {"input_tokens": 500, "output_tokens": 100}, {"input_tokens": "x", "output_tokens": 1}])
    body = json_out(invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained, "--json", ok=False))
    level = body["results"][0]["elapsed_level"]
    assert 0 < level < 1 and "elapsed_level" not in body["results"][1]
    out = invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained, ok=False).stdout
    assert "reached" in out and f"{level:.3f}" in out
    monkeypatch.setattr(cli, "_TABLE_ROWS_MAX", 1)
    lines = invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained, ok=False).stdout.splitlines()
    assert lines[1].split("\t")[:2] == ["#", "reached"]
    assert lines[2].split("\t")[1] == f"{level:.3f}" and lines[3].split("\t")[1] == ""
    assert lines[4].startswith("2\terror: ")
    # Without a running task, no such column.
    assert "reached" not in invoke("predict", "llm/*/*/*/*", json.dumps(json.loads(traces)[1:2]), "--data-dir", trained).stdout


def test_predict_with_a_deadline_says_each_tasks_and_the_totals_probability_of_being_done_within_it(trained,
                                                                                                     monkeypatch):
    traces = json.dumps([{"input_tokens": 500, "output_tokens": 100}, {"input_tokens": 500, "output_tokens": 30}])
    plain = json_out(invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained, "--json", "--quantiles", "0.5"))
    assert "total_deadline_probability" not in plain
    median = plain["results"][0]["quantile_predictions"][0]
    body = json_out(invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained, "--json", "--quantiles", "0.5",
                           "--deadline-ms", str(median)))
    first, second = (r["deadline_probability"] for r in body["results"])
    assert first == pytest.approx(0.5, abs=1e-6) and second > first  # (the shorter task)
    total = body["total_deadline_probability"]
    assert total <= first
    heading = f"P(<= {median:.2f} ms)"
    out = invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained, "--quantiles", "0.5",
                 "--deadline-ms", str(median)).stdout
    assert heading in out and "0.500" in out and f"{heading} {total:.3f}" in " ".join(out.split())
    monkeypatch.setattr(cli, "_TABLE_ROWS_MAX", 1)
    lines = invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained, "--quantiles", "0.5",
                   "--deadline-ms", str(median)).stdout.splitlines()
    assert lines[1].split("\t")[-1] == heading and lines[2].split("\t")[-1] == "0.500"
    for bad in ("0", "-5", "nan"):
        result = invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained, "--deadline-ms", bad, ok=False)
        assert "--deadline-ms must be a positive number of milliseconds" in result.output
    # A deadline past any runtime is headed as a number is written, not in 301 digits.
    lines = invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained, "--quantiles", "0.5",
                   "--deadline-ms", "1e300").stdout.splitlines()
    assert lines[1].split("\t")[-1] == "P(<= 1e+300 ms)" and lines[2].split("\t")[-1] == "1.000"


def test_predict_lines_keep_a_message_quoting_a_tab_or_line_break_in_one_cell(tmp_path, data, monkeypatch):
    # A feature's name is a trace's key, tabs and line breaks allowed: a failed trace's message
    # quotes it, and written as it was it split its line into more cells and more lines.
    traces = [{"in\ttokens": t["input_tokens"], "out\ntokens": t["output_tokens"], "runtime_ms": t["runtime_ms"]}
              for t in make_llm_traces(200)]
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": traces, "algorithm": "linear"}))
    invoke("train", cfg, "--data-dir", data)
    monkeypatch.setattr(cli, "_TABLE_ROWS_MAX", 1)
    asked = json.dumps([{"in\ttokens": 100, "out\ntokens": 10}, {"out\ntokens": 10}, {"in\ttokens": 100}])
    lines = invoke("predict", "llm/*/*/*/*", asked, "--data-dir", data, ok=False).stdout.split("\n")
    assert lines[0] == "1/3 predicted" and len(lines[2].split("\t")) == len(lines[1].split("\t"))
    assert lines[3].split("\t") == ["1", "error: missing required feature 'in\\ttokens'"]
    assert lines[4].split("\t") == ["2", "error: missing required feature 'out\\ntokens'"]
    assert lines[5].startswith("total: ") and lines[6:] == [""]  # no line of a message's own
    # In a drawn table too (rich drew a tab as spaces: another name).
    monkeypatch.setattr(cli, "_TABLE_ROWS_MAX", 1_000)
    drawn = invoke("predict", "llm/*/*/*/*", asked, "--data-dir", data, ok=False).stdout
    assert "missing required feature 'in\\ttokens'" in drawn and "missing required feature 'out\\ntokens'" in drawn
    # The messages of the traces a table skipped, on stderr: one line each too.
    (tmp_path / "asked.json").write_text(asked)
    result = invoke("table", "llm/*/*/*/*", tmp_path / "asked.json", "-o", "asked.json", "--data-dir", data, ok=False)
    assert result.stderr.splitlines() == ["  trace 1: missing required feature 'in\\ttokens'",
                                          "  trace 2: missing required feature 'out\\ntokens'"]


def test_predict_prints_runtimes_under_a_millisecond_to_three_significant_digits(tmp_path, data, monkeypatch):
    # A kernel's model: runtimes of about 1e-4 ms. Two decimals printed every number as 0.00.
    traces = [{"x": float(x), "runtime_ms": 1e-4 * (1 + x / 100) * (1 + (x % 7) / 50)} for x in range(1, 201)]
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": traces, "algorithm": "linear"}))
    invoke("train", cfg, "--data-dir", data)
    probe = json.dumps([{"x": 50}, {"x": 150}])
    body = json_out(invoke("predict", "llm/*/*/*/*", probe, "--data-dir", data, "--json", "--quantiles", "0.5,0.9"))
    rows = [[*r["quantile_predictions"], r["expect"], r["error"], *r["interval"]] for r in body["results"]]
    assert all(0 < v < 1e-3 for row in rows for v in row)
    shown = [[f"{v:#.3g}" for v in row] for row in rows]
    table = invoke("predict", "llm/*/*/*/*", probe, "--data-dir", data, "--quantiles", "0.5,0.9").stdout
    cells = [[c.strip() for c in line.split("│")[2:-1]] for line in table.splitlines() if line.startswith("│")]
    assert cells == [[*row[:4], f"{row[4]} - {row[5]}"] for row in shown]
    lo, hi = body["total_interval"]
    assert f"total: mean {body['expect']:#.3g} ms, std {body['error']:#.3g} ms, 0.95 interval {lo:#.3g} - {hi:#.3g} ms" in table
    monkeypatch.setattr(cli, "_TABLE_ROWS_MAX", 1)
    lines = invoke("predict", "llm/*/*/*/*", probe, "--data-dir", data, "--quantiles", "0.5,0.9").stdout.splitlines()
    assert [line.split("\t")[1:] for line in lines[2:4]] == shown


def test_predict_tells_a_task_running_long_from_one_the_model_can_tell_nothing_of(trained, monkeypatch):
    # Far into the tail, and past all the model reaches (elapsed_level 1: every number 0).
    traces = json.dumps([{"input_tokens": 500, "output_tokens": 100, "elapsed_ms": 3000.0},
                         {"input_tokens": 500, "output_tokens": 100, "elapsed_ms": 1e9}])
    body = json_out(invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained, "--json"))
    long_run, stuck = body["results"]
    assert 0.9995 <= long_run["elapsed_level"] < 1 and long_run["expect"] > 0
    assert stuck["elapsed_level"] == 1 and stuck["expect"] == 0
    table = invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained).stdout
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")]
    assert [row[1] for row in rows] == [">0.999", "1.000"]
    monkeypatch.setattr(cli, "_TABLE_ROWS_MAX", 1)
    lines = invoke("predict", "llm/*/*/*/*", traces, "--data-dir", trained).stdout.splitlines()
    assert [line.split("\t")[1] for line in lines[2:4]] == [">0.999", "1.000"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_predict_a_trace_file(tmp_path, trained, suffix):
    traces = [{"input_tokens": 100, "output_tokens": 10}, {"input_tokens": 100, "output_tokens": 300},
              {"input_tokens": 100}]
    path = tmp_path / f"queue{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in traces))
    elif suffix == ".json":
        path.write_bytes(orjson.dumps({"traces": traces}))
    else:
        path.write_text("input_tokens,output_tokens\n100,10\n100,300\n100,\n")
    # One trace failed: the answer is printed, and the exit status says so.
    result = invoke("predict", KEY, path, "--data-dir", trained, "--json", ok=False)
    assert result.exit_code == 1
    body = json_out(result)
    assert [r["status"] for r in body["results"]] == ["success", "success", "error"]
    assert "output_tokens" in body["results"][2]["message"]
    short, long = body["results"][0]["expect"], body["results"][1]["expect"]
    assert long > 10 * short
    assert body["expect"] == pytest.approx(short + long)
    # and as a table
    result = invoke("predict", "llm/*/*/*/*", path, "--data-dir", trained, ok=False)
    out = result.stdout
    assert result.exit_code == 1 and "2/3 predicted" in out and "missing required feature 'output_tokens'" in out


@pytest.mark.parametrize("model, trace, message", [
    ("llm/*/TPU/*/*", '{"input_tokens": 1, "output_tokens": 1}', "no trained model matches llm/*/TPU/*/*"),
    ("llm/only-three/parts", '{"input_tokens": 1}', "MODEL is five parts"),
    # A file's name that is not one says so, not why it is no JSON; so do stdin and a directory.
    ("llm/*/*/*/*", "nosuch.jsonl", "TRACE 'nosuch.jsonl': there is no such file (nor is it a JSON object or array)"),
    ("llm/*/*/*/*", "-", "TRACE '-': traces are not read from stdin"),
    ("llm/*/*/*/*", "/", "TRACE '/' is a directory, not a trace file"),
    # An empty one is no file: it read as "TRACE '' is a directory" (Path("") is ".").
    ("llm/*/*/*/*", "", "TRACE is empty: give a .json, .jsonl or .csv file, or inline JSON"),
    ("llm/*/*/*/*", "  ", "TRACE is empty: give a .json, .jsonl or .csv file, or inline JSON"),
    ("llm/*/*/*/*", "/dev/null", "TRACE '/dev/null' is not a regular file: pipes and devices are not read"),
    ("llm/*/*/*/*", "[1, 2", "neither a file nor a JSON"),
    # Why it is not JSON is said: it read as a mere "not a file nor JSON".
    ("llm/*/*/*/*", '{"input_tokens": 1e400, "output_tokens": 1}', "(as JSON: number is infinity when parsed as double"),
    # A mistyped '//' would widen the match to any value.
    ("llm//*/*/*", '{"input_tokens": 1}', "MODEL's model_name is empty: name it, or write '*' for any"),
    # Said before either way of answering (with --url the client refused them, locally each
    # was a failed row); nothing to predict was "0/0 predicted" and exit 0.
    ("llm/*/*/*/*", "[1, 2]", "trace[0] must be a JSON object of fields, got a number"),
    ("llm/*/*/*/*", "[]", "TRACE is an empty array"),
])
def test_predict_errors_are_reported(trained, model, trace, message):
    result = invoke("predict", model, trace, "--data-dir", trained, ok=False)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())


def test_an_error_names_a_file_with_its_spaces(tmp_path, trained, monkeypatch):
    # The error is one line, but a name it quotes keeps its spaces: 'two  spaces.jsonl' was
    # said as 'two spaces.jsonl', a file that is not there.
    monkeypatch.chdir(tmp_path)
    Path("two  spaces.jsonl").write_text("")
    said = one_error_line(runner.invoke(cli.app, ["predict", "llm/*/*/*/*", "two  spaces.jsonl", "--data-dir", str(trained)]))
    assert said == "error: two  spaces.jsonl: the file holds no traces"
    said = one_error_line(runner.invoke(cli.app, ["predict", "llm/*/*/*/*", "no  such.jsonl", "--data-dir", str(trained)]))
    assert said == "error: TRACE 'no  such.jsonl': there is no such file (nor is it a JSON object or array)"
    # A message of several lines (YAML's) is still one.
    Path("bad.yaml").write_text("model: [\n")
    said = one_error_line(runner.invoke(cli.app, ["train", "bad.yaml", "--data-dir", str(trained)]))
    assert said.startswith("error: bad.yaml: config is neither valid JSON nor YAML: line 2, column 1: expected the node")


def test_many_predictions_print_as_lines_not_a_drawn_table(trained):
    # A drawn table of 100,000 rows took minutes to print (7 s with --json).
    traces = [{"input_tokens": 10 + i, "output_tokens": 5} for i in range(1500)] + [{"input_tokens": 1}]
    result = invoke("predict", "llm/*/*/*/*", json.dumps(traces), "--data-dir", trained, "--quantiles", "0.5,0.9", ok=False)
    out = result.stdout
    lines = out.splitlines()
    assert lines[0] == "1500/1501 predicted" and lines[1] == "#\tp50\tp90\tmean\tstd\t0.95 low\t0.95 high"
    as_json = json_out(invoke("predict", "llm/*/*/*/*", json.dumps(traces[:3]), "--data-dir", trained, "--quantiles", "0.5,0.9",
                              "--json"))
    first = as_json["results"][0]
    values = [*first["quantile_predictions"], first["expect"], first["error"], *first["interval"]]
    assert lines[2] == "\t".join(["0", *(f"{v:.2f}" for v in values)])
    assert lines[1502].startswith("1500\terror: ") and "output_tokens" in lines[1502]
    assert lines[1503].startswith("total: mean ")


def test_output_that_cannot_be_written_is_one_line_of_error(trained):
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "swarmpilot_predictor", "models", "-d", str(trained), "--json"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: No space left on device (writing the output)"


def test_ctrl_c_while_the_command_imports_its_modules_ends_it_quietly():
    # The command's imports (numpy, pydantic, rich) take 2 to 3 s on a loaded machine: Ctrl-C
    # then printed a traceback of numpy's import, and the process died of the signal, not 130
    # as once the command runs. The interrupt here comes as the command imports its schemas.
    import subprocess
    import sys

    interrupt_at_import = """
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "swarmpilot_predictor.schemas":
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, Interrupt())
sys.argv = ["swarmpilot-predictor", "--help"]
from swarmpilot_predictor.cli import main
main()
"""
    done = subprocess.run([sys.executable, "-c", interrupt_at_import], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "")


def test_an_import_of_the_cli_that_fails_leaves_python_its_ctrl_c():
    # The quiet handler is set while the module's imports run: where one failed and the
    # importer went on without the module, the handler stayed, and a later Ctrl-C ended the
    # importer with SystemExit(130), past its own KeyboardInterrupt handling.
    import subprocess
    import sys

    importer = """
import signal, sys
sys.modules["rich.markup"] = None  # an import that fails
try:
    import swarmpilot_predictor.cli
except ImportError:
    pass
print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""
    done = subprocess.run([sys.executable, "-c", importer], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr


def test_a_name_stdout_cannot_encode_is_printed_escaped(tmp_path, data):
    # Under PYTHONIOENCODING=ascii (or a Latin-1 locale) a model on "Grace Hopper ü" ended
    # `models` in a traceback.
    import subprocess
    import sys

    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": {**IDENTITY, "hardware": "GH200 \u00fc"}, "traces": make_llm_traces(100),
                               "algorithm": "linear"}))
    invoke("train", cfg, "--data-dir", data)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run([sys.executable, "-m", "swarmpilot_predictor", "models", "-d", str(data)], env=env,
                          capture_output=True, text=True, encoding="ascii", timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "/GH200 \\xfc/" in done.stdout


def test_a_data_directory_that_is_a_file_is_said_to_be_one(tmp_path):
    path = tmp_path / "passwd"
    path.write_text("root:x:0:0\n")
    for args in (["models"], ["predict", "llm/*/*/*/*", "{}"], ["tables"]):  # tables read it as none
        result = runner.invoke(cli.app, [*args, "--data-dir", str(path)])
        assert one_error_line(result) == f"error: cannot use {path} as the data directory: {path} is a file, not a directory"
    if os.path.exists("/dev/null"):  # nor is a device one
        said = one_error_line(runner.invoke(cli.app, ["tables", "--data-dir", "/dev/null"]))
        assert said == "error: cannot use /dev/null as the data directory: /dev/null is a file, not a directory"
    # A file where its models folder goes: not "no models", nor "it has no models folder".
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "models").write_text("")
    for args in (["models"], ["predict", "llm/*/*/*/*", "{}"]):
        said = one_error_line(runner.invoke(cli.app, [*args, "--data-dir", str(folder)]))
        assert said == f"error: cannot use {folder} as the data directory: {folder / 'models'} is a file, not a directory"
    assert sorted(p.name for p in folder.iterdir()) == ["models"]


def test_a_data_directory_linked_to_nothing_is_said_so_not_called_a_file(tmp_path):
    # Linked to a volume not mounted yet, the data directory (or a folder above it) was
    # "a file, not a directory", which it is not.
    link, target = tmp_path / "data", tmp_path / "volume" / "data"
    link.symlink_to(target)
    for data in (link, link / "inner"):
        said = one_error_line(invoke("serve", "--data-dir", data, "--port", "0", ok=False))
        assert said == (f"error: cannot use {data} as the data directory: {link} is a symbolic link to {target}, "
                        "which does not exist (a volume not mounted?)")
    assert not (tmp_path / "volume").exists()


def test_a_data_folder_that_is_a_loop_of_links_is_said_so_not_called_a_link_to_nothing(tmp_path):
    # A tables folder linked to itself was "a symbolic link to tables, which does not exist
    # (a volume not mounted?)".
    data = tmp_path / "data"
    data.mkdir()
    (data / "tables").symlink_to("tables")
    said = one_error_line(invoke("serve", "--data-dir", data, "--port", "0", ok=False))
    assert said == (f"error: cannot use {data} as the data directory: {data / 'tables'} is a loop of symbolic "
                    "links (a link to tables), not a folder")


def test_models_says_when_there_are_none(data):
    data.mkdir()
    assert invoke("models", "--data-dir", data).stdout.strip() == "no models: train one first (`train CONFIG`)"


def test_predict_an_empty_trace_file_is_an_error(tmp_path, trained):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    result = invoke("predict", "llm/*/*/*/*", str(empty), "--data-dir", trained, ok=False)
    assert result.exit_code == 1 and "the file holds no traces" in result.output


def test_predict_ambiguous_model_names_the_candidates(tmp_path, trained):
    cfg = tmp_path / "other.json"
    cfg.write_text(json.dumps({"model": {**IDENTITY, "hardware": "A100"}, "traces": make_llm_traces(60), "algorithm": "linear"}))
    invoke("train", cfg, "--data-dir", trained)
    result = invoke("predict", "llm/*/*/*/*", '{"input_tokens": 1, "output_tokens": 1}', "--data-dir", trained, ok=False)
    text = " ".join(result.output.split())
    assert "2 models match" in text and "llm/Qwen%2FQwen2.5-7B/A100/sglang/0.4.0" in text and KEY in text


def test_predict_a_broken_trace_file_names_the_line(tmp_path, trained):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"input_tokens": 1, "output_tokens": 2}\n{"input_tokens": \n')
    result = invoke("predict", "llm/*/*/*/*", path, "--data-dir", trained, ok=False)
    assert "broken.jsonl: line 2" in result.output


def test_a_bad_setting_or_an_unusable_data_directory_is_one_clear_line(tmp_path, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    # (serve on any free port: it checks the address first, and 8200 may be taken.)
    for args in (["models", "--data-dir", not_a_dir / "data"], ["serve", "--data-dir", not_a_dir / "data", "--port", "0"]):
        said = " ".join(invoke(*args, ok=False).output.split())  # the error console wraps long lines
        assert f"cannot use {not_a_dir / 'data'} as the data directory" in said
        assert "(Not a directory)" in said and "Traceback" not in said
    monkeypatch.setenv("PREDICTOR_PORT", "eighty")
    said = " ".join(invoke("serve", "--data-dir", tmp_path / "data", ok=False).output.split())
    assert "PREDICTOR_PORT: Input should be a valid integer" in said and "(got 'eighty')" in said
    monkeypatch.delenv("PREDICTOR_PORT")


@pytest.mark.parametrize("variable, value, message", [
    ("PREDICTOR_LOG_LEVEL", "bogus", "must be one of critical, error, warning, info, debug, trace (got 'bogus')"),
    ("PREDICTOR_CACHE_SIZE", "-5", "Input should be greater than or equal to 0 (got '-5')"),
    ("PREDICTOR_MAX_UPLOAD_MB", "-1", "Input should be greater than or equal to 0 (got '-1')"),
    ("PREDICTOR_WORKERS", "0", "Input should be greater than or equal to 1 (got '0')"),
    ("PREDICTOR_MAX_LOADED_MODELS", "0", "Input should be greater than or equal to 1 (got '0')"),
    ("PREDICTOR_PORT", "70000", "Input should be less than or equal to 65535 (got '70000')"),
    ("PREDICTOR_MAX_UPLOAD_MB", "inf", "Input should be a finite number (got 'inf')"),
    ("PREDICTOR_TRAINING_PRIORITY", "urgent", "Input should be 'idle', 'low' or 'normal' (got 'urgent')"),
    ("PREDICTOR_LOG_FORMAT", "xml", "Input should be 'text' or 'json' (got 'xml')"),
    ("PREDICTOR_TRAINING_TIMEOUT_S", "-1", "Input should be greater than or equal to 0 (got '-1')"),
    ("PREDICTOR_TRAINING_TIMEOUT_S", "nan", "Input should be a finite number (got 'nan')"),
    ("PREDICTOR_OBSERVATIONS_MAX_FILE_MB", "inf", "Input should be a finite number (got 'inf')"),
    # Past any count the service could hold: such values started it, and then the answers that
    # carry them failed (a 500: JSON integers stop at 64 bits).
    ("PREDICTOR_CACHE_SIZE", "100000000000000000000",
     "Input should be less than or equal to 1000000000000 (got '100000000000000000000')"),
    ("PREDICTOR_ACCURACY_WINDOW", "100000000000000000000",
     "Input should be less than or equal to 1000000000000 (got '100000000000000000000')"),
    ("PREDICTOR_RETRAIN_MIN_OBSERVATIONS", "10000000000000",
     "Input should be less than or equal to 1000000000000 (got '10000000000000')"),
    ("PREDICTOR_MAX_UPLOAD_MB", "1e20", "Input should be less than or equal to 1000000000 (got '1e20')"),
    # A key is never repeated back: not on the terminal, not in a log.
    ("PREDICTOR_API_KEY", "", "is empty: set a key, or unset the variable to require none"),
    ("PREDICTOR_API_KEY", "too-short-key", "must be at least 16 characters long (a random one: "
                                           "python -c 'import secrets; print(secrets.token_urlsafe(32))')"),
    ("PREDICTOR_API_KEY", "a long secret with spaces", "must be visible ASCII characters, without spaces"),
])
def test_settings_that_make_no_sense_stop_the_service_with_one_line(tmp_path, monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    said = one_error_line(invoke("serve", "--data-dir", tmp_path / "data", ok=False))
    assert said == f"error: {variable}: {message}"


def test_a_drift_minimum_the_window_cannot_reach_stops_the_service(tmp_path, monkeypatch):
    # Drift is tested on the window's observations: with a window of 10 it would never be.
    monkeypatch.setenv("PREDICTOR_ACCURACY_WINDOW", "10")
    monkeypatch.setenv("PREDICTOR_DRIFT_MIN_OBSERVATIONS", "30")
    said = one_error_line(invoke("serve", "--data-dir", tmp_path / "data", ok=False))
    assert said == ("error: PREDICTOR_DRIFT_MIN_OBSERVATIONS: must be at most PREDICTOR_ACCURACY_WINDOW (10): drift "
                    "is tested on the window's observations, and would never be (got '30')")


def test_serve_flags_are_checked_as_the_variables_are(tmp_path, monkeypatch):
    # serve passes its flags to the workers through the environment: keep this test's to itself.
    for name in ("PREDICTOR_HOST", "PREDICTOR_PORT", "PREDICTOR_DATA_DIR", "PREDICTOR_WORKERS", "DEFAULT_LOOKUP_TABLE",
                 "PREDICTOR_LOG_LEVEL"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)
    said = one_error_line(invoke("serve", "--data-dir", tmp_path / "data", "--log-level", "loud", ok=False))
    assert said.startswith("error: --log-level: must be one of") and "(got 'loud')" in said
    monkeypatch.delenv("PREDICTOR_LOG_LEVEL")
    said = one_error_line(invoke("serve", "--data-dir", tmp_path / "data", "--port", "70000", ok=False))
    assert said == "error: --port: Input should be less than or equal to 65535 (got '70000')"
    # A port in use, or a host that does not resolve: one line, before uvicorn logs its own.
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said = one_error_line(invoke("serve", "--data-dir", tmp_path / "fresh", "--host", "127.0.0.1",
                                     "--port", port, ok=False))
        assert said.startswith(f"error: cannot listen on 127.0.0.1:{port} (address already in use)")
        assert not (tmp_path / "fresh").exists()  # a refused start makes no data directory
    said = one_error_line(invoke("serve", "--data-dir", tmp_path / "data", "--host", "no-such-host.invalid", ok=False))
    assert said.startswith("error: --host 'no-such-host.invalid' cannot be resolved")
    monkeypatch.setenv("PREDICTOR_HOST", "no-such-host.invalid")  # named as the variable when it came from one
    said = one_error_line(invoke("serve", "--data-dir", tmp_path / "data", ok=False))
    assert said.startswith("error: PREDICTOR_HOST 'no-such-host.invalid' cannot be resolved")


def test_a_default_table_no_file_could_be_is_refused_at_start_naming_where_it_came_from(tmp_path, monkeypatch):
    # It was logged under DEFAULT_LOOKUP_TABLE, whatever set it, and the service ran without it.
    for name in ("DEFAULT_LOOKUP_TABLE", "PREDICTOR_DEFAULT_LOOKUP_TABLE"):
        monkeypatch.delenv(name, raising=False)
    kinds = "a lookup table is a .json, .jsonl (or .ndjson) or .csv, optionally .gz file"
    said = one_error_line(invoke("serve", "--data-dir", tmp_path / "data", "--default-lookup-table", "../x", ok=False))
    assert said == f"error: --default-lookup-table: 'x': {kinds} (got '../x')"
    monkeypatch.delenv("DEFAULT_LOOKUP_TABLE")  # (serve hands its flags on through the environment)
    monkeypatch.setenv("PREDICTOR_DEFAULT_LOOKUP_TABLE", "table.parquet")
    said = one_error_line(invoke("serve", "--data-dir", tmp_path / "data", ok=False))
    assert said == f"error: PREDICTOR_DEFAULT_LOOKUP_TABLE: 'table.parquet': {kinds} (got 'table.parquet')"
    monkeypatch.setenv("DEFAULT_LOOKUP_TABLE", " ")
    said = one_error_line(invoke("serve", "--data-dir", tmp_path / "data", ok=False))
    assert said.startswith("error: DEFAULT_LOOKUP_TABLE: is empty: name a table file")
    assert not (tmp_path / "data").exists()
    # A table that is not there yet may be generated later: no reason not to start.
    from swarmpilot_predictor.settings import PredictorSettings

    monkeypatch.setenv("DEFAULT_LOOKUP_TABLE", "later.json.gz")
    assert PredictorSettings().default_lookup_table == "later.json.gz"


def test_a_bad_api_key_is_never_printed_by_any_entry_point(tmp_path):
    import subprocess
    import sys

    key = "Zk3p9-real-production-key-0001\r"  # a stray carriage return from a Windows key file
    env = {**os.environ, "PREDICTOR_DATA_DIR": str(tmp_path / "data"), "PREDICTOR_API_KEY": key}
    for command in (["uvicorn", "--factory", "swarmpilot_predictor.api:app_from_env", "--port", "0"],
                    ["src.scheduler.predictor_api"], ["swarmpilot_predictor", "serve", "--port", "0"]):
        done = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True, text=True,
                              timeout=60, cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 1, command
        assert "Zk3p9" not in done.stdout + done.stderr, command
        assert "PREDICTOR_API_KEY: must be visible ASCII characters, without spaces" in done.stderr, command


def test_the_seed_entry_point_says_a_bad_setting_in_one_line(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "PREDICTOR_DATA_DIR": str(tmp_path / "data"), "PREDICTOR_CACHE_SIZE": "-1"}
    done = subprocess.run([sys.executable, "-m", "src.scheduler.predictor_api"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1
    assert done.stderr.strip() == "error: PREDICTOR_CACHE_SIZE: Input should be greater than or equal to 0 (got '-1')"
    # An empty data directory variable is no directory (it read as the working one), and a
    # typo of a few zeros in the workers is no plan to fork that many processes.
    # (Each entry point once: the CLI's command with the one, the seed's with the other.)
    for name, value, said, command in (
            ("PREDICTOR_DATA_DIR", "", "must name a directory; empty, it would be the working", ["swarmpilot_predictor", "models"]),
            ("PREDICTOR_WORKERS", "100000", "less than or equal to 256", ["src.scheduler.predictor_api"])):
        env = {**os.environ, "PREDICTOR_DATA_DIR": str(tmp_path / "data"), name: value}
        done = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True, text=True,
                              timeout=60, cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 1 and done.stderr.startswith(f"error: {name}: ") and said in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_the_seed_entry_point_says_it_runs_one_process_when_asked_for_more(tmp_path, port):
    import subprocess
    import sys

    env = {**os.environ, "PREDICTOR_DATA_DIR": str(tmp_path / "data"), "PREDICTOR_WORKERS": "3",
           "PREDICTOR_HOST": "127.0.0.1", "PREDICTOR_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "src.scheduler.predictor_api"], env=env, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        first = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert first.startswith("warning: PREDICTOR_WORKERS=3 is ignored here: this runs one process")


def one_error_line(result) -> str:
    """The error a failed command printed: one line, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--quantiles", "1.5"], "--quantiles must lie strictly between 0 and 1, got 1.5"),
    (["--quantiles", "0.5,0"], "--quantiles must lie strictly between 0 and 1, got 0"),
    (["--quantiles", "0.5,nan"], "--quantiles must lie strictly between 0 and 1, got nan"),
    (["--quantiles", "abc"], "--quantiles is a comma-separated list of numbers"),
    (["--quantiles", ""], "--quantiles is a comma-separated list of numbers"),
    (["-c", "1.5"], "--confidence-level must lie strictly between 0 and 1, got 1.5"),
    (["-c", "0"], "--confidence-level must lie strictly between 0 and 1, got 0"),
    (["-c", "nan"], "--confidence-level must lie strictly between 0 and 1, got nan"),
])
def test_predict_checks_its_levels_as_the_http_api_does(trained, args, message):
    result = runner.invoke(cli.app, ["predict", "llm/*/*/*/*", '{"input_tokens": 5, "output_tokens": 5}',
                                     "--data-dir", str(trained), *args])
    assert message in one_error_line(result)


def test_table_checks_its_confidence_level(tmp_path, trained):
    path = tmp_path / "t.jsonl"
    path.write_bytes(orjson.dumps({"input_tokens": 5, "output_tokens": 5}) + b"\n")
    result = runner.invoke(cli.app, ["table", "llm/*/*/*/*", str(path), "--data-dir", str(trained), "-c", "2"])
    assert "--confidence-level must lie strictly between 0 and 1, got 2" in one_error_line(result)


def test_table_refuses_a_pipe_or_a_device_as_predict_does(tmp_path, trained):
    # exists=True let them through: `table MODEL <(zcat t.jsonl.gz)` said "unsupported trace
    # file '63'", and a named pipe t.jsonl was read to its end to count its lines, then opened
    # again to be read, with no one writing: the command hung.
    fifo = tmp_path / "t.jsonl"
    os.mkfifo(fifo)
    for trace_file in ("/dev/null", str(fifo)):
        for where in (["--data-dir", str(trained)], ["--url", "http://127.0.0.1:1"]):
            result = runner.invoke(cli.app, ["table", "llm/*/*/*/*", trace_file, *where])
            assert (f"TRACE_FILE {trace_file!r} is not a regular file: pipes and devices are not read"
                    in one_error_line(result))


@pytest.mark.parametrize("command", ["predict", "models", "train"])
def test_an_unreachable_service_is_one_line(tmp_path, command):
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(20), "algorithm": "linear"}))
    args = {"predict": ["llm/*/*/*/*", '{"input_tokens": 5}'], "models": [], "train": [str(cfg)]}[command]
    result = runner.invoke(cli.app, [command, *args, "--url", "http://127.0.0.1:1"])
    assert "cannot reach the predictor at http://127.0.0.1:1" in one_error_line(result)


def test_train_over_http_sends_a_yaml_config_s_integer_past_64_bits_as_a_json_config_s(tmp_path, monkeypatch):
    # YAML keeps every digit of an id column's 2**70, where a JSON config reads it as a float:
    # the client refused the config ("config.traces[0].id ... cannot be sent as JSON"), which
    # trains offline.
    from swarmpilot_predictor.client import PredictorClient, PredictorClientError

    traces = [{**t, "id": 2**70 + i} for i, t in enumerate(make_llm_traces(20))]
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"model": IDENTITY, "traces": traces, "algorithm": "linear"}))
    sent = []

    def send(self, req):
        sent.append(orjson.loads(self._kwargs(req)["content"]))
        raise PredictorClientError("answered", 503)

    monkeypatch.setattr(PredictorClient, "_send", send)
    result = runner.invoke(cli.app, ["train", str(cfg), "--url", "http://127.0.0.1:1"])
    assert one_error_line(result) == "error: 503: answered"
    assert [t["id"] for t in sent[0]["config"]["traces"][:2]] == [float(2**70), float(2**70 + 1)]


def test_a_key_the_client_refuses_is_named_by_the_variable_that_gave_it(monkeypatch):
    # The CLI takes the key from PREDICTOR_API_KEY alone; its errors named the client's
    # arguments instead ("api_key must be ...", "api_key and a user and password in base_url").
    monkeypatch.setenv("PREDICTOR_API_KEY", "a key with spaces in it")
    said = one_error_line(runner.invoke(cli.app, ["models", "--url", "http://127.0.0.1:1"]))
    assert said.startswith("error: PREDICTOR_API_KEY must be a non-empty string of visible ASCII characters")
    assert "spaces in it" not in said
    monkeypatch.setenv("PREDICTOR_API_KEY", "Zk3p9-real-production-key-0001")
    said = one_error_line(runner.invoke(cli.app, ["models", "--url", "http://user:s3cret@127.0.0.1:1"]))
    assert said == ("error: PREDICTOR_API_KEY is set, and --url http://user:***@127.0.0.1:1 holds a user and "
                    "password: both are sent as the Authorization header; unset PREDICTOR_API_KEY, or leave "
                    "them out of --url")


def test_what_the_client_refuses_before_sending_is_one_line(tmp_path):
    result = runner.invoke(cli.app, ["predict", "vision/ /*/*/*", "{}", "--url", "http://127.0.0.1:1"])
    assert "model_name" in one_error_line(result) and result.exit_code == 1


@pytest.mark.parametrize("command", ["predict", "models", "table", "tables"])
def test_a_mistyped_data_directory_is_an_error_not_an_empty_one(tmp_path, command):
    missing = tmp_path / "typo"
    traces = tmp_path / "t.jsonl"
    traces.write_bytes(orjson.dumps({"input_tokens": 1, "output_tokens": 2}))
    args = {"predict": ["llm/*/*/*/*", str(traces)], "models": [], "table": ["llm/*/*/*/*", str(traces)],
            "tables": []}[command]
    result = runner.invoke(cli.app, [command, *args, "--data-dir", str(missing)])
    assert f"data directory {missing} does not exist" in one_error_line(result)
    assert not missing.exists()


def test_a_trace_file_that_cannot_be_read_is_one_line(tmp_path, trained, monkeypatch):
    # Unreadable for the user (a test run as root reads any file: the error is injected).
    from swarmpilot_predictor import traces as traces_module

    path = tmp_path / "t.jsonl"
    path.write_bytes(orjson.dumps({"input_tokens": 1, "output_tokens": 2}))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(traces_module, "open_trace_file", refuse)
    result = runner.invoke(cli.app, ["predict", "llm/*/*/*/*", str(path), "--data-dir", str(trained)])
    assert "t.jsonl: cannot read it (Permission denied)" in one_error_line(result)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"model": IDENTITY, "traces": "t.jsonl", "algorithm": "linear"}))
    result = runner.invoke(cli.app, ["train", str(cfg), "--data-dir", str(trained)])
    assert "traces file 't.jsonl' cannot be read (Permission denied)" in one_error_line(result)


def test_arguments_that_are_not_utf8_are_one_line_over_http_too(tmp_path):
    # Bytes of another encoding reach Python as lone surrogates: no URL or form can carry them.
    result = runner.invoke(cli.app, ["predict", "vision/\udcff/*/*/*", "{}", "--url", "http://127.0.0.1:1"])
    assert "model_name '\\udcff' is not valid Unicode" in one_error_line(result)
    result = runner.invoke(cli.app, ["models", "--url", "http://127.0.0.1:1/\udcff"])
    assert "which is not UTF-8 text" in one_error_line(result)
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"input_tokens": 1, "output_tokens": 1}\n')
    result = runner.invoke(cli.app, ["table", "llm/*/*/*/*", str(trace), "--url", "http://127.0.0.1:1", "-o", "\udcff.json"])
    assert "--output '\\udcff.json' is not a valid file name (it holds a lone surrogate)" in one_error_line(result)


def test_table_output_names_that_no_request_could_name_are_refused_offline(tmp_path, trained):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"input_tokens": 1, "output_tokens": 1}\n')
    # Written as tables/t\udcff.json, listed by /tables, but no request could name it to use or delete it.
    result = runner.invoke(cli.app, ["table", "llm/*/*/*/*", str(trace), "--data-dir", str(trained), "-o", "t\udcff.json"])
    assert "is not a valid file name" in one_error_line(result) and result.exit_code == 1
    assert not (trained / "tables").exists() or not list((trained / "tables").glob("t*.json"))
    # A directory is no table file: said so, not that its name lacks .json or .csv.
    result = runner.invoke(cli.app, ["table", "llm/*/*/*/*", str(trace), "--data-dir", str(trained), "-o", str(tmp_path)])
    assert f"--output '{tmp_path}' is a directory" in one_error_line(result)
    result = runner.invoke(cli.app, ["table", "llm/*/*/*/*", str(trace), "--data-dir", str(trained),
                                     "-o", str(trace / "x.csv")])  # a folder on the path that is a file
    assert one_error_line(result) == f"error: --output '{trace / 'x.csv'}': cannot write it ({trace} is not a directory)"
    out = invoke("table", "llm/*/*/*/*", trace, "--data-dir", trained, "-o", "one.json").stdout
    assert out.startswith("wrote 1 record to ") and "records" not in out
    assert re.search(r"in \d+\.\ds, read for serving in \d+\.\ds\n", out)


def test_train_names_a_trace_file_missing_next_to_its_config(tmp_path, data):
    # '..' is fine relative to the config: the file is what is missing, not a rule broken.
    folder = tmp_path / "cfg"
    folder.mkdir()
    cfg = folder / "x.yaml"
    cfg.write_text(yaml.safe_dump({"model": IDENTITY, "traces": "../nosuch.jsonl", "algorithm": "linear"}))
    result = runner.invoke(cli.app, ["train", str(cfg), "--data-dir", str(data)])
    line = one_error_line(result)
    assert f"there is no file '{folder / '../nosuch.jsonl'}' (next to the config)" in line
    (tmp_path / "nosuch.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(60)))
    invoke("train", cfg, "--data-dir", data)  # there now


def test_train_with_url_says_where_it_looked_for_a_missing_trace_file(tmp_path, server):
    # Not next to the config, the name goes as a path in the service's data directory; the
    # service's answer spoke of "the upload" where nothing was uploaded.
    cfg = tmp_path / "x.yaml"
    cfg.write_text(yaml.safe_dump({"model": IDENTITY, "traces": "nothere.jsonl", "algorithm": "linear"}))
    line = one_error_line(runner.invoke(cli.app, ["train", str(cfg), "--url", server.url]))
    assert f"422: {cfg}: traces file 'nothere.jsonl' not found in the data directory (no file was uploaded)" in line
    assert f"there is no file '{tmp_path / 'nothere.jsonl'}' next to the config either, to upload" in line


def test_an_error_answer_of_the_service_is_one_line(tmp_path, server):
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(60), "algorithm": "linear"}))
    body = json_out(invoke("train", cfg, "--url", server.url, "--json"))
    assert body["model_key"] == KEY and body["metrics"]["algorithm"] == "linear" and body["metrics"]["rows_used"] == 60
    # The answer as the service sent it, as offline: no "models": null it never sent.
    offline = json_out(invoke("train", cfg, "--data-dir", tmp_path / "offline", "--json"))
    assert sorted(body) == sorted(offline) == ["duration_seconds", "identity", "metrics", "model_key", "status", "version"]
    result = runner.invoke(cli.app, ["predict", "llm/*/TPU/*/*", '{"input_tokens": 5}', "--url", server.url])
    assert "404: no trained model matches llm/*/TPU/*/*" in one_error_line(result)
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(60), "algorithm": "linear",
                               "params": {"num_leaves": 7}}))
    result = runner.invoke(cli.app, ["train", str(cfg), "--url", server.url])
    assert "'num_leaves' is a LightGBM parameter" in one_error_line(result)
    # A config that does not validate is named after the file's path, as offline.
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(60), "features": ["input_tokens"] * 2}))
    for where in (["--url", server.url], ["--data-dir", str(tmp_path / "offline")]):
        result = runner.invoke(cli.app, ["train", str(cfg), *where])
        assert f"{cfg}: config.features: features names 'input_tokens' more than once" in one_error_line(result), where


def test_with_url_the_api_key_comes_from_the_environment(tmp_path, monkeypatch):
    from .conftest import run_server

    key = "cli-key-0123456789abcdef"
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(60), "algorithm": "linear"}))
    with run_server(tmp_path / "data", {"PREDICTOR_API_KEY": key}) as srv:
        monkeypatch.delenv("PREDICTOR_API_KEY", raising=False)
        result = runner.invoke(cli.app, ["train", str(cfg), "--url", srv.url])
        said = one_error_line(result)
        assert said.startswith("error: 401: this route changes the service's state and needs its API key")
        # A CLI user sends no header of their own: what to set is said.
        assert said.endswith("(PREDICTOR_API_KEY is not set here: the CLI sends it as the key)")
        monkeypatch.setenv("PREDICTOR_API_KEY", "not-the-" + key)
        said = one_error_line(runner.invoke(cli.app, ["train", str(cfg), "--url", srv.url]))
        assert said == "error: 401: the API key sent is not this service's (the CLI sent PREDICTOR_API_KEY)"
        assert key not in said
        monkeypatch.setenv("PREDICTOR_API_KEY", key)
        invoke("train", cfg, "--url", srv.url)
        monkeypatch.delenv("PREDICTOR_API_KEY")  # reading needs no key
        assert [m["model_name"] for m in json_out(invoke("models", "--json", "--url", srv.url))] == [IDENTITY["model_name"]]


def test_a_setting_beside_a_wrapped_config_is_refused_not_ignored(tmp_path, data):
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"config": {"model": IDENTITY, "traces": make_llm_traces(60)}, "algorithm": "linear"}))
    said = one_error_line(invoke("train", cfg, "--data-dir", data, ok=False))
    assert "'algorithm': not allowed beside 'config'" in said
    assert not (data / "models").exists() or not any((data / "models").iterdir())


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, data):
    cfg = tmp_path / "train.json"
    cfg.write_bytes(b'{"model": "\xff\xfe"}')
    result = runner.invoke(cli.app, ["train", str(cfg), "--data-dir", str(data)])
    assert f"{cfg}: not a valid JSON or YAML config (not UTF-8 text" in one_error_line(result)


def test_a_config_with_a_byte_order_mark_is_read(tmp_path, data):
    cfg = tmp_path / "train.json"
    cfg.write_bytes(b"\xef\xbb\xbf" + json.dumps({"model": IDENTITY, "traces": make_llm_traces(60),
                                                    "algorithm": "linear"}).encode())
    invoke("train", cfg, "--data-dir", data)


def test_messages_with_brackets_are_printed_as_they_are(trained):
    result = runner.invoke(cli.app, ["predict", "llm/*/[bold]TPU/*/*", '{"input_tokens": 5}',
                                     "--data-dir", str(trained)])
    assert "no trained model matches llm/*/[bold]TPU/*/*" in one_error_line(result)


def test_names_and_messages_are_printed_as_they_are_not_as_markup(tmp_path, data):
    # Brackets are rich markup: 'llama[fp16]' showed as 'llama', and '[/x]' crashed the table.
    identity = {**IDENTITY, "model_name": "llama[fp16]", "software_version": "cat[/x]"}
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": identity, "traces": make_llm_traces(60), "algorithm": "linear"}))
    key = ModelIdentity.from_parts(identity).key
    assert key in invoke("train", cfg, "--data-dir", data).stdout
    assert key in invoke("models", "--data-dir", data).stdout
    result = invoke("predict", "llm/*/*/*/*", '{"input_tokens": "[/]", "output_tokens": 3}', "--data-dir", data, ok=False)
    assert result.exit_code == 1 and "'[/]'" in result.stdout


def test_serve_with_workers_gets_a_fresh_metrics_directory_and_sweeps_dead_ones(tmp_path):
    # Several workers count into files of one directory in the data directory, fresh per run
    # (prometheus_client requires it); a supervisor killed outright leaves its directory,
    # which the next one removes, if a process id means the same to both: not another
    # host's, nor another process-id namespace's (a container of the same host name).
    import re
    import socket
    import subprocess
    import sys

    here = f"{re.sub(r'[^A-Za-z0-9._]', '_', socket.gethostname())}-{os.stat('/proc/self/ns/pid').st_ino}"
    root = tmp_path / ".metrics"
    root.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = root / f"{here}-{gone.pid}-abc"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"x")
    running = root / f"{here}-{os.getpid()}-def"
    running.mkdir()
    elsewhere = [root / f"otherhost-1-{gone.pid}-ghi", root / f"{here.rsplit('-', 1)[0]}-1-{gone.pid}-jkl"]
    for d in elsewhere:
        d.mkdir()
    fresh = Path(cli._fresh_metrics_dir(tmp_path, memory=None))
    assert fresh.parent == root and fresh.is_dir() and not any(fresh.iterdir())
    assert fresh.name.startswith(f"{here}-{os.getpid()}-")
    assert not stale.exists() and running.exists() and all(d.exists() for d in elsewhere)


def test_the_workers_metrics_go_in_memory_where_the_system_has_it(tmp_path):
    # prometheus_client writes them through mmap: with the data disk full, both workers died
    # of SIGBUS touching a page of their files, and so did every worker started in their place.
    memory = tmp_path / "shm"
    memory.mkdir()
    fresh = Path(cli._fresh_metrics_dir(tmp_path / "data", memory=memory))
    mine = memory / f"swarmpilot-predictor-metrics-{os.getuid()}"
    assert fresh.parent == mine and fresh.is_dir() and mine.stat().st_mode & 0o777 == 0o700
    assert not (tmp_path / "data" / ".metrics").exists()
    # A folder of that name this user may not trust (others may write it): the data directory.
    mine.chmod(0o777)
    (tmp_path / "data").mkdir()
    assert Path(cli._fresh_metrics_dir(tmp_path / "data", memory=memory)).parent == tmp_path / "data" / ".metrics"
    assert cli.MEMORY_METRICS_ROOT == Path("/dev/shm")


def _clean_serve_env(monkeypatch):
    from swarmpilot_predictor.api import SUPERVISOR_ENV

    for name in ("PREDICTOR_HOST", "PREDICTOR_PORT", "PREDICTOR_DATA_DIR", "PREDICTOR_WORKERS", "PREDICTOR_LOG_LEVEL",
                 SUPERVISOR_ENV, "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.setenv(name, "x")  # restored (removed) after the test: serve sets them for its workers
        monkeypatch.delenv(name)


def test_serve_says_in_one_line_what_keeps_it_from_starting(tmp_path, monkeypatch, port):
    _clean_serve_env(monkeypatch)
    monkeypatch.setattr(cli, "MEMORY_METRICS_ROOT", None)  # a system without /dev/shm
    data = tmp_path / "data"
    data.mkdir()
    (data / ".metrics").write_text("a file where the metrics directory goes")
    args = ["serve", "--data-dir", data, "--host", "127.0.0.1", "--port", port]
    said = one_error_line(invoke(*args, "--workers", "2", ok=False))
    assert said.startswith(f"error: cannot create a directory for the workers' metrics in {data / '.metrics'}")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(blocker))
    said = one_error_line(invoke(*args, ok=False))
    assert said.startswith(f"error: PROMETHEUS_MULTIPROC_DIR: cannot make '{blocker}' a directory")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    # prometheus_client's older, lower-case name is checked too (it was a 143-line traceback).
    monkeypatch.setenv("prometheus_multiproc_dir", str(blocker))
    said = one_error_line(invoke(*args, ok=False))
    assert said.startswith(f"error: prometheus_multiproc_dir: cannot make '{blocker}' a directory")
    monkeypatch.delenv("prometheus_multiproc_dir")
    # An address this machine does not have (TEST-NET-1): one line, not uvicorn's six.
    said = one_error_line(invoke("serve", "--data-dir", data, "--host", "192.0.2.1", "--port", port, ok=False))
    assert said.startswith("error: cannot listen on 192.0.2.1:") and "is not an address of this machine" in said


def test_the_seed_entry_point_says_a_data_directory_it_cannot_make_in_one_line(tmp_path):
    import subprocess
    import sys

    from .conftest import REPO_ROOT

    (tmp_path / "afile").write_text("")
    env = {**os.environ, "PREDICTOR_DATA_DIR": str(tmp_path / "afile" / "sub")}
    done = subprocess.run([sys.executable, "-m", "src.scheduler.predictor_api"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot use") and "afile" in lines[0]


def test_offline_commands_count_nothing_into_a_services_metrics_directory(tmp_path):
    # A shell that exported the running service's PROMETHEUS_MULTIPROC_DIR: an offline
    # train or predict is no worker of it, and its counts must not show in its /metrics.
    # (A fresh process: prometheus_client reads the variable once, when first imported.)
    import subprocess
    import sys

    shared = tmp_path / "service-metrics"
    shared.mkdir()
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(150), "algorithm": "linear"}))
    traces = tmp_path / "traces.json"
    traces.write_text(json.dumps(make_llm_traces(3, seed=1)))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # (A directory of the service's, where counts would land; a file, where writing them would fail.)
    for metrics_dir, commands in ((shared, (["train", cfg], ["predict", ENCODED, traces])),
                                  (blocker, (["predict", ENCODED, traces],))):
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        for args in commands:
            done = subprocess.run([sys.executable, "-m", "swarmpilot_predictor", *map(str, args),
                                   "--data-dir", str(tmp_path / "data")], env=env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr
            assert "Traceback" not in done.stderr
    assert list(shared.iterdir()) == []


def test_an_empty_data_directory_flag_is_refused_not_read_as_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["models"], ["predict", ENCODED, "[{}]"], ["serve", "--port", "0"]):
        said = one_error_line(invoke(*args, "--data-dir", "", ok=False))
        assert said.startswith("error: --data-dir: must name a directory"), said
    assert list(tmp_path.iterdir()) == []


def test_a_data_directory_with_a_stray_line_break_or_space_is_refused_not_made_anew(tmp_path, monkeypatch):
    # A value from a file or a template with its line break ('/srv/data\n') started the
    # service on a new, empty directory of that name beside the real one: every model gone.
    monkeypatch.chdir(tmp_path)
    for value in ("data\n", " data", "data ", "da\tta"):
        monkeypatch.setenv("PREDICTOR_DATA_DIR", value)
        said = one_error_line(invoke("models", ok=False))
        assert said.startswith("error: PREDICTOR_DATA_DIR: must not begin or end with whitespace nor hold a control "
                               "character"), said
        monkeypatch.delenv("PREDICTOR_DATA_DIR")
        said = one_error_line(invoke("models", "--data-dir", value, ok=False))
        assert said.startswith("error: --data-dir: must not begin or end with whitespace"), said
    assert list(tmp_path.iterdir()) == []


def test_an_empty_host_is_refused_not_bound_to_every_interface(tmp_path):
    # Empty, uvicorn listened on every IPv4 and IPv6 interface ("Uvicorn running on
    # http://:8200"), wider than the default 0.0.0.0, and said nothing of it.
    import subprocess
    import sys

    from pydantic import ValidationError

    from swarmpilot_predictor.settings import PredictorSettings, settings_problem

    with pytest.raises(ValidationError) as err:
        PredictorSettings(host="", data_dir=tmp_path / "data")
    assert settings_problem(err.value).startswith("PREDICTOR_HOST: is empty: name the address to bind")
    base = {k: v for k, v in os.environ.items() if k.upper() != "PREDICTOR_HOST"}
    for args, env, name in ((["--host", ""], {}, "--host"), ([], {"PREDICTOR_HOST": " "}, "PREDICTOR_HOST")):
        done = subprocess.run([sys.executable, "-m", "swarmpilot_predictor", "serve", "--port", "0",
                               "--data-dir", str(tmp_path / "data"), *args], env={**base, **env},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith(f"error: {name}: is empty: name the address to bind"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_predict_over_http_prints_the_services_answer_as_offline_does(tmp_path, server):
    # --json is the raw answer: through the client it gained nulls (a success's "message",
    # a failure's quantiles), so the two outputs of one prediction differed.
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(100), "algorithm": "linear"}))
    invoke("train", cfg, "--url", server.url)
    traces = '[{"input_tokens": 100, "output_tokens": 20}, {"input_tokens": 7}]'
    outputs = []
    for where in (["--url", server.url], ["--data-dir", server.data_dir]):
        body = json_out(invoke("predict", ENCODED, traces, "--json", *where, ok=False))
        body["summary"].pop("duration_seconds")
        outputs.append(body)
    assert outputs[0] == outputs[1]
    assert "message" not in outputs[0]["results"][0] and "quantiles" not in outputs[0]["results"][1]


def test_a_csv_nan_or_inf_is_sent_over_http_as_a_missing_value_not_an_error_for_every_trace(tmp_path, server):
    # CSV reads `nan` and `inf` as numbers JSON cannot carry: the client refused the whole batch
    # ("traces[1].runtime_ms is nan, which JSON cannot carry"), where offline each trace is
    # predicted, or scored, or not, on its own, and a column the model does not use is no matter.
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(100), "algorithm": "linear"}))
    invoke("train", cfg, "--url", server.url)
    traces = tmp_path / "t.csv"
    # (and one past 64 bits, which CSV keeps whole, where JSON files read it as a float)
    traces.write_text("input_tokens,output_tokens,runtime_ms,note,id\n100,20,nan,nan,1\nnan,20,50,x,2\n"
                      "7,5,20,inf,123456789012345678901234567890\n")
    bodies = []
    for where in (["--url", server.url], ["--data-dir", server.data_dir]):
        body = json_out(invoke("predict", ENCODED, traces, "--json", *where, ok=False))
        assert [r["status"] for r in body["results"]] == ["success", "error", "success"]
        bodies.append(body)
        scored = json_out(invoke("evaluate", ENCODED, traces, "--json", *where, ok=False))
        assert scored["evaluated"] == 1 and [r["index"] for r in scored["rejected"]] == [0, 1]
    assert bodies[0]["total_quantiles"] == bodies[1]["total_quantiles"]


def test_a_table_missing_traces_it_could_not_predict_exits_1_and_is_written(tmp_path, server):
    # As predict: exit status 0 with 30 of 31 traces left out read as success to a script.
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(100), "algorithm": "linear"}))
    invoke("train", cfg, "--url", server.url)
    traces = tmp_path / "t.jsonl"
    traces.write_bytes(b"".join(orjson.dumps({"input_tokens": f"x{i}", "output_tokens": 5}) + b"\n" for i in range(3))
                       + orjson.dumps({"input_tokens": 7, "output_tokens": 5}) + b"\n")
    for name, where in (("remote.json", ["--url", server.url]), ("offline.json", ["--data-dir", server.data_dir])):
        result = invoke("table", ENCODED, traces, "-o", name, *where, ok=False)
        assert result.exit_code == 1 and "wrote 1 record to " in result.stdout, result.output
        assert "(3 traces could not be predicted)" in result.stdout
        result = invoke("table", ENCODED, traces, "-o", name, *where, "--json", ok=False)
        assert result.exit_code == 1 and json_out(result)["failed"] == 3 and json_out(result)["rows"] == 1
        assert (server.data_dir / "tables" / name).exists()


def test_predict_answers_from_a_lookup_table_offline_and_over_http(tmp_path, server):
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(100), "algorithm": "linear"}))
    invoke("train", cfg, "--url", server.url)
    traces = tmp_path / "t.jsonl"
    traces.write_bytes(b"".join(orjson.dumps({"input_tokens": 100 * i, "output_tokens": 50}) + b"\n" for i in range(1, 6)))
    invoke("table", ENCODED, traces, "-o", "asked.json", "--url", server.url)
    asked = '[{"input_tokens": 200, "output_tokens": 50}, {"input_tokens": 330, "output_tokens": 50}]'
    sent = httpx.post(f"{server.url}/predict/batch/{ENCODED}", json={
        "trace": orjson.loads(asked), "lookup_table": True, "lookup_table_name": "asked.json"}).json()
    for where in (["--url", server.url], ["--data-dir", server.data_dir]):
        body = json_out(invoke("predict", ENCODED, asked, "--lookup-table", "asked.json", *where, "--json"))
        assert [r["match"] for r in body["results"]] == ["exact", "nearest"]
        assert [r["quantile_predictions"] for r in body["results"]] == [r["quantile_predictions"] for r in sent["results"]]
        assert body["total_quantiles"] == pytest.approx(sent["total_quantiles"])
        out = invoke("predict", ENCODED, asked, "--lookup-table", "asked.json", *where).stdout
        assert "2/2 predicted from lookup table asked.json" in out and "nearest" in out
        # Its errors name the flags.
        result = invoke("predict", ENCODED, asked, "--lookup-table", "../asked.json", *where, ok=False)
        assert "--lookup-table '../asked.json' must be a file name" in one_error_line(result)
        result = invoke("predict", ENCODED, asked, "--lookup-table", "asked.json", "--shared-factor", *where, ok=False)
        assert "--shared-factor needs a model" in one_error_line(result)
        # And the tables there: the service's as GET /tables lists them; offline, the folder's files.
        listed = {t["name"]: t for t in json_out(invoke("tables", *where, "--json"))}
        assert listed["asked.json"]["size_bytes"] == (server.data_dir / "tables" / "asked.json").stat().st_size
        out = invoke("tables", *where).stdout
        assert "asked.json" in out and "KB" in out
    # The service generated it, so holds it: its records and model are known.
    assert {t["name"]: t for t in httpx.get(f"{server.url}/tables").json()["tables"]}["asked.json"]["rows"] == 5
    assert "llm/" in invoke("tables", "--url", server.url).stdout
    empty = tmp_path / "empty"
    (empty / "models").mkdir(parents=True)
    assert invoke("tables", "--data-dir", empty).stdout.startswith("no lookup tables")
    # A data directory of tables alone (the seed's need no model) lists and answers them, and
    # nothing is made in it; offline the default table is not parsed to list the files.
    alone = tmp_path / "alone"
    (alone / "tables").mkdir(parents=True)
    (alone / "tables" / "asked.json").write_bytes((server.data_dir / "tables" / "asked.json").read_bytes())
    assert [t["name"] for t in json_out(invoke("tables", "--data-dir", alone, "--json"))] == ["asked.json"]
    body = json_out(invoke("predict", ENCODED, asked, "--lookup-table", "asked.json", "--data-dir", alone, "--json"))
    assert [r["quantile_predictions"] for r in body["results"]] == [r["quantile_predictions"] for r in sent["results"]]
    result = invoke("predict", ENCODED, asked, "--data-dir", alone, ok=False)  # the model is asked: there is none
    assert "holds no models" in one_error_line(result)
    assert sorted(p.name for p in alone.iterdir()) == ["tables"]
    many = tmp_path / "many.jsonl"  # over 1,000: tab-separated lines, the match among them
    many.write_bytes(b"".join(orjson.dumps({"input_tokens": 200, "output_tokens": 50}) + b"\n" for _ in range(1001)))
    lines = invoke("predict", ENCODED, many, "--lookup-table", "asked.json", "--data-dir", alone).stdout.splitlines()
    assert lines[0] == "1001/1001 predicted from lookup table asked.json"
    assert lines[1].split("\t")[:2] == ["#", "match"] and lines[2].split("\t")[:2] == ["0", "exact"]


def test_a_table_made_offline_is_the_one_the_service_makes(tmp_path, server):
    # Offline, BLAS ran on every core; the server runs it on one: the last digits differed.
    traces = tmp_path / "t.jsonl"
    traces.write_bytes(b"".join(orjson.dumps({k: v for k, v in t.items() if k != "runtime_ms"}) + b"\n"
                                for t in make_llm_traces(3000, seed=4)))
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(300), "algorithm": "auto"}))
    invoke("train", cfg, "--url", server.url)
    invoke("table", ENCODED, traces, "-o", "served.csv", "--url", server.url)
    offline = tmp_path / "out" / "offline.csv"
    invoke("table", ENCODED, traces, "-o", offline, "--data-dir", server.data_dir)
    assert offline.read_bytes() == (server.data_dir / "tables" / "served.csv").read_bytes()
    # A file of the user's own gets the mode the umask gives a new file, not 0600.
    assert offline.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("command", [["models"], ["predict", "llm/*/*/*/*", "{}"]])
def test_an_empty_url_is_refused_not_read_as_the_data_directory(tmp_path, command):
    result = runner.invoke(cli.app, [*command, "--url", " ", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--url" in result.output and "is empty" in result.output


@pytest.mark.parametrize("where", [["--url", "http://127.0.0.1:1"], []])
def test_a_blank_identity_part_is_the_same_error_offline_and_over_http(tmp_path, where):
    result = runner.invoke(cli.app, ["predict", " /*/*/*/*", "{}", "--data-dir", str(tmp_path), *where])
    assert "MODEL's model_type is empty: name it, or write '*' for any" in one_error_line(result)


def test_piped_output_keeps_whole_lines(trained):
    # Not a terminal: a table's model keys were cut to 80 columns with "…".
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "swarmpilot_predictor", "models", "--data-dir", str(trained)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert KEY in done.stdout and "…" not in done.stdout


def _start_log(command: list[str], env: dict[str, str], port: int, workers: int) -> list[str]:
    """What a service started with ``command`` logs until its ``workers`` have started."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", *command, "--port", str(port)], env=env, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum("startup complete" in line for line in lines) < workers:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()
    return lines


@pytest.mark.parametrize("workers", [1, 2])
def test_the_start_log_says_what_is_served_and_what_is_wrong(tmp_path, port, workers):
    # A misspelt variable was ignored without a word: PREDICTOR_APIKEY left every route open.
    # A folder the service cannot write in (here one on /proc) passed the start and failed
    # the first training after its work.
    data = tmp_path / "data"
    data.mkdir()
    (data / "jobs").symlink_to("/proc/self/fdinfo")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PREDICTOR_", "PROMETHEUS_"))}
    env.update(PREDICTOR_APIKEY="k" * 20, PREDICTOR_DATA_DIR=str(data), PREDICTOR_HOST="127.0.0.1",
               PREDICTOR_URL="http://elsewhere")
    command = (["uvicorn", "swarmpilot_predictor.api:app_from_env", "--factory", "--host", "127.0.0.1"] if workers == 1
               else ["swarmpilot_predictor", "serve", "--workers", "2"])
    lines = _start_log(command, env, port, workers)
    warned = [line for line in lines if "is not a setting" in line]
    # Once, however many workers; PREDICTOR_URL is the examples' and not warned about.
    assert warned == ["WARNING:  'PREDICTOR_APIKEY' is not a setting of this service "
                      "(did you mean PREDICTOR_API_KEY?): it is ignored"], lines
    served = [line for line in lines if "serving the data directory" in line]
    assert served == [f"INFO:     serving the data directory {data} (0 models, 0 lookup tables); no API key is set "
                      "(PREDICTOR_API_KEY): every route is open; automatic retraining off"] * workers, lines
    unwritable = [line for line in lines if "is not writable" in line]
    assert len(unwritable) == workers and all(line.startswith(f"WARNING:  {data / 'jobs'} is not writable (")
                                              and line.endswith("): trainings will fail") for line in unwritable)


def test_the_seed_entry_point_warns_of_a_misspelt_variable_too(tmp_path, port):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PREDICTOR_", "PROMETHEUS_"))}
    env.update(PREDICTOR_APIKEY="k" * 20, PREDICTOR_DATA_DIR=str(tmp_path / "data"), PREDICTOR_HOST="127.0.0.1",
               PREDICTOR_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "src.scheduler.predictor_api"], env=env, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    lines = []
    try:
        while "startup complete" not in (line := proc.stderr.readline()) and line:
            lines.append(line)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert any("'PREDICTOR_APIKEY' is not a setting of this service (did you mean PREDICTOR_API_KEY?)" in line
               for line in lines), lines


def test_a_data_directory_whose_jobs_folder_cannot_be_made_is_still_served(tmp_path):
    # A read-only copy an older service wrote before its first training has no jobs/: it was
    # served, and is (its trainings would fail, and the start log says so).
    from swarmpilot_predictor.settings import PredictorSettings, startup_problem

    data = tmp_path / "data"
    data.mkdir()
    (data / "jobs").write_text("not a folder")
    settings = PredictorSettings(data_dir=data)
    assert startup_problem(settings) is None and settings.missing_dir() is None
    problems = settings.unwritable_dirs()
    assert len(problems) == 1 and problems[0].startswith(f"{data / 'jobs'} is not writable (")
    assert not [p for p in data.rglob(".write-check-*")]  # the probes leave nothing behind


# (The variable alone, and the flag over it: the flag sets the variable, as serve's other flags do.)
@pytest.mark.parametrize("flag, env, logged", [(None, {"PREDICTOR_ACCESS_LOG": "false"}, False),
                                               ("--access-log", {"PREDICTOR_ACCESS_LOG": "false"}, True)])
def test_serve_writes_a_line_per_request_unless_told_not_to(tmp_path, port, flag, env, logged):
    # At high request rates uvicorn's access log took about half a single prediction's time.
    import subprocess
    import sys
    import time

    import httpx

    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("PREDICTOR_")}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "swarmpilot_predictor", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), "--data-dir", str(tmp_path / "data"), *([flag] if flag else [])],
                                env={**base, **env}, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                    time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = log.read_text()
    assert "startup complete" in text
    assert ('"GET /ping HTTP/1.1" 200' in text) is logged, text


def test_a_closed_stdout_drops_the_output_without_a_traceback(trained):
    import subprocess
    import sys

    for extra in ("", " --json"):  # rich's console, and a plain write
        done = subprocess.run(["sh", "-c", f'"{sys.executable}" -m swarmpilot_predictor models -d "{trained}"{extra} >&-'],
                              capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_messages_name_the_flag_that_gave_the_value(tmp_path, trained, server):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"input_tokens": 1, "output_tokens": 1}\n')
    for where in (["--data-dir", str(trained)], ["--url", server.url]):
        # Said before the model is looked up: the service holds none that matches.
        result = runner.invoke(cli.app, ["table", "nomodel/*/*/*/*", str(trace), *where, "-o", "foo.txt"])
        assert "--output 'foo.txt' must end in .json or .csv" in one_error_line(result), where
    # A path of one's own that is refused makes no folder for it.
    result = runner.invoke(cli.app, ["table", "llm/*/*/*/*", str(trace), "-d", str(trained),
                                     "-o", str(tmp_path / "new" / "foo.txt")])
    assert "--output 'foo.txt' must end in .json or .csv" in one_error_line(result)
    assert not (tmp_path / "new").exists()
    for url, said in (("http://", "it names no host"), ("http://localhost:99999", "its port 99999 is not between"),
                      ("localhost:8200", "its scheme is not http or https")):
        result = runner.invoke(cli.app, ["models", "--url", url])
        assert one_error_line(result).startswith(f"error: --url {url!r} is not the URL of a service"), url
        assert said in one_error_line(result)


def test_a_confidence_level_is_labelled_as_given(trained):
    out = invoke("predict", "llm/*/*/*/*", '{"input_tokens": 100, "output_tokens": 50}', "--data-dir", trained,
                 "-c", "0.999999999999", "--quantiles", "0.5,0.9999999").stdout
    assert "0.999999999999 interval" in out and "p99.99999 " in out  # ":g" said "1 interval" and "p100"


def test_training_on_an_empty_trace_file_names_it(tmp_path, data):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"model": IDENTITY, "traces": "empty.jsonl", "algorithm": "linear"}))
    result = runner.invoke(cli.app, ["train", str(cfg), "--data-dir", str(data)])
    assert one_error_line(result) == "error: traces file 'empty.jsonl' holds no traces"


def test_interrupting_a_training_over_http_says_the_service_may_finish_it(tmp_path, monkeypatch):
    from swarmpilot_predictor.client import PredictorClient

    def interrupted(self, *args, **kwargs):  # Ctrl-C while the service trains
        raise KeyboardInterrupt

    monkeypatch.setattr(PredictorClient, "train", interrupted)
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(20), "algorithm": "linear"}))
    result = runner.invoke(cli.app, ["train", str(cfg), "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 130 and result.output.startswith("error: interrupted: the service may still finish "
                                                                "this training and store its version")


def test_interrupting_a_table_over_http_says_the_service_may_write_it(tmp_path, monkeypatch):
    # It ended quietly with 130, while the service went on and wrote the table.
    from swarmpilot_predictor.client import PredictorClient

    def interrupted(self, *args, **kwargs):  # Ctrl-C while the service predicts the file
        raise KeyboardInterrupt

    monkeypatch.setattr(PredictorClient, "generate_table", interrupted)
    (tmp_path / "traces.jsonl").write_bytes(b'{"input_tokens": 1}\n')
    result = runner.invoke(cli.app, ["table", "llm/m/h/s/v", str(tmp_path / "traces.jsonl"),
                                     "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 130 and result.output == (
        "error: interrupted: the service may still write this table (see `tables --url http://127.0.0.1:1`)\n")


def test_a_password_in_the_url_is_not_printed(tmp_path, monkeypatch):
    # The client's errors said it as ***; the CLI's own hints quoted --url as typed.
    from swarmpilot_predictor.client import PredictorClient

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PredictorClient, "generate_table", interrupted)
    (tmp_path / "traces.jsonl").write_bytes(b'{"input_tokens": 1}\n')
    result = runner.invoke(cli.app, ["table", "llm/m/h/s/v", str(tmp_path / "traces.jsonl"),
                                     "--url", "http://ops:s3cret@127.0.0.1:1"])
    assert result.exit_code == 130 and "s3cret" not in result.output
    assert "(see `tables --url http://ops:***@127.0.0.1:1`)" in result.output


def test_either_name_of_the_metrics_directory_variable_is_the_operators(monkeypatch):
    # prometheus_client reads both names: `serve --workers` set a fresh directory of its own
    # over an operator's lower-case one, which the start-up check had just approved.
    from swarmpilot_predictor.settings import multiproc_variable

    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        monkeypatch.delenv(name, raising=False)
    assert multiproc_variable() is None
    monkeypatch.setenv("prometheus_multiproc_dir", "/tmp/m")
    assert multiproc_variable() == "prometheus_multiproc_dir"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/n")
    assert multiproc_variable() == "PROMETHEUS_MULTIPROC_DIR"  # the name prometheus_client reads first


def test_every_option_of_every_command_says_what_it_is():
    # --confidence-level had no help text in `predict` or `table`.
    import typer

    group = typer.main.get_command(cli.app)
    missing = [f"{name} {param.opts[0]}" for name, command in group.commands.items() for param in command.params
               if param.opts[0].startswith("-") and not param.help]
    assert missing == []
    assert len(group.commands) >= 5


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize("args", [[], ["--json"]])
def test_a_reader_that_stops_early_ends_the_command_quietly_as_sigpipe_would(trained, tmp_path, args, unbuffered):
    # `predict ... | head -1` ended with status 1 and no word, read as a failed prediction;
    # under PYTHONUNBUFFERED (many container images) a JSON answer cut off went unnoticed.
    import signal
    import subprocess
    import sys

    traces = tmp_path / "many.jsonl"
    traces.write_bytes(b"".join(orjson.dumps({"input_tokens": 10 + i, "output_tokens": 1 + i % 50}) + b"\n"
                                for i in range(20_000)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | ({"PYTHONUNBUFFERED": "1"} if unbuffered else {})
    proc = subprocess.Popen([sys.executable, "-m", "swarmpilot_predictor", "predict", ENCODED, str(traces), "-d", str(trained),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert first.strip() and err == b""


def _raw_exchange(port: int, head: bytes, *more: bytes) -> bytes:
    """Send ``head`` (then each of ``more`` in a read of its own) on a new connection to the
    server at ``port``, and read its answer to the end, the connection closed."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head)
        for part in more:  # each in its own read, as a client sending them apart has them read
            time.sleep(0.2)
            s.sendall(part)
        s.settimeout(30)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("entry", ["serve", "seed"])
def test_serve_refuses_a_request_whose_headers_pass_64_kb(tmp_path, entry):
    # uvicorn's httptools protocol took headers of any length, gathering them on the event
    # loop: one 100 MB header held it 4.4 s (every other request waited) and peaked 196 MB.
    # The seed's `python -m src.scheduler.predictor_api` bounds them too.
    import sys

    from .conftest import run_server

    def ask(head: bytes, *more: bytes) -> bytes:
        return _raw_exchange(port, head, *more)

    serve = [sys.executable, "-m", "swarmpilot_predictor", "serve", "--host", "127.0.0.1", "--port", "{port}",
             "--log-level", "warning"]
    if entry == "seed":
        serve = ["env", "PREDICTOR_PORT={port}", "PREDICTOR_HOST=127.0.0.1", sys.executable, "-m", "src.scheduler.predictor_api"]
    with run_server(tmp_path / "data", args=serve) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        long = ask(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        assert long.startswith(b"HTTP/1.1 431 ") and long.endswith(b"Request line and headers longer than 64 kB.")
        # Its id, as every answer of the service has, is the one its line in the log names.
        (long_id,) = re.findall(rb"\r\nx-request-id: ([0-9a-f]{32})\r\n", long)
        many = ask(b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"X-A: a\r\n" * 10_000 + b"\r\n")
        assert many.startswith(b"HTTP/1.1 431 ")
        path = ask(b"GET /models?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert path.startswith(b"HTTP/1.1 431 ")
        fine = ask(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n")
        assert fine.startswith(b"HTTP/1.1 200 ") and fine.endswith(b'{"status":"ok"}')
        # Bodies are not counted, not even where the headers' last bytes come in one read with a
        # body's first 200 kB, nor those of the requests that follow on a kept-alive connection.
        body = orjson.dumps({"trace": [{"x": "a" * 200_000}]})
        together = ask(b"POST /predict/batch/llm/m/H/s/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert together.startswith(b"HTTP/1.1 404 ")
        with httpx.Client(base_url=srv.url) as client:
            for _ in range(3):
                r = client.post("/predict/batch/llm/m/H/s/1", json={"trace": [{"x": "a" * 100_000}]})
                assert r.status_code == 404 and "no trained model" in r.json()["message"]
            # Answered before the service, the three 431s are not in /metrics: each is in the log.
            statuses = [line.split('status="')[1][:3] for line in client.get("/metrics").text.splitlines()
                        if line.startswith("predictor_http_requests_total{")]
            assert "431" not in statuses and "404" in statuses
        srv.process.terminate()
        said = srv.process.communicate(timeout=30)[0].decode()
    assert len(re.findall(r"Request line and headers longer than 64 kB received: answered 431 \(request [0-9a-f]{32}\)\.",
                          said)) == 3
    assert f"answered 431 (request {long_id.decode()})." in said


def test_serve_refuses_a_chunked_body_whose_trailers_pass_64_kb(tmp_path):
    # A chunked body's trailers are headers too, after its last chunk, and httptools gathers
    # them as it gathers the others: a 100 MB trailer, on any route and without the API key,
    # held the event loop 5.3 s and peaked 310 MB, the 64 kB bound on headers notwithstanding.
    import sys

    from .conftest import run_server

    def ask(head: bytes, *more: bytes) -> bytes:
        return _raw_exchange(port, head, *more)

    serve = [sys.executable, "-m", "swarmpilot_predictor", "serve", "--host", "127.0.0.1", "--port", "{port}",
             "--log-level", "warning"]
    # (a body's first chunk, and the service waits for the rest before it answers)
    chunked = (b"POST /predict/batch/llm/m/H/s/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")
    with run_server(tmp_path / "data", args=serve) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        # (not the read they begin in: the bound is passed by at most a read, up to 256 kB)
        long = ask(chunked, b"0\r\nX-T: " + b"a" * 40_000, b"a" * 40_000, b"\r\n\r\n")
        assert long.startswith(b"HTTP/1.1 431 ") and long.endswith(b"Request line and headers longer than 64 kB.")
        many = ask(chunked, b"0\r\n" + b"X-A: a\r\n" * 5_000, b"X-A: a\r\n" * 5_000, b"\r\n")
        assert many.startswith(b"HTTP/1.1 431 ")
        # (and a request's headers after another's answer on a kept-alive connection)
        again = ask(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000)
        assert again.startswith(b"HTTP/1.1 200 ") and again.endswith(b"Request line and headers longer than 64 kB.")
        short = ask(chunked, b"0\r\nX-T: " + b"a" * 1_000, b"\r\n\r\n")
        assert short.startswith(b"HTTP/1.1 422 ") and b"trace" in short
        # A chunked body is not counted, however it is cut up: chunks of a byte, the last one's
        # header read apart from its size, and a body of 20 MB, on one kept-alive connection.
        tiny = b"".join(b"1\r\n" + bytes([c]) + b"\r\n" for c in orjson.dumps({"trace": [{"x": "a" * 30_000}]}))
        post = b"POST /predict/batch/llm/m/H/s/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        last = post.replace(b"Host: x", b"Host: x\r\nConnection: close")
        twice = ask(post, tiny[:len(tiny) // 2], tiny[len(tiny) // 2:] + b"0\r\n", b"\r\n" + last + tiny + b"0\r\n\r\n")
        # (a 431 as a status line: the answers' random request ids, in hex, may hold the digits 431)
        assert twice.count(b"HTTP/1.1 404 ") == 2 and b"HTTP/1.1 431" not in twice
        body = orjson.dumps({"trace": [{"x": "a" * 20_000_000}]})
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            for _ in range(2):
                r = client.post("/predict/batch/llm/m/H/s/1", headers={"Content-Type": "application/json"},
                                content=(body[k:k + 70_000] for k in range(0, len(body), 70_000)))
                assert r.status_code == 404 and "no trained model" in r.json()["message"]


def test_a_431_for_a_chunked_body_s_trailers_carries_the_request_s_own_id(tmp_path):
    # Its trailers come after its headers, which the service has read and named the request
    # by: the 431 carried an id made for it (9c1e...), and the log named the one request by
    # two ids, the caller's on its client-left line ("(request sched-7)"), that one on the 431's.
    import sys

    from .conftest import run_server

    serve = [sys.executable, "-m", "swarmpilot_predictor", "serve", "--host", "127.0.0.1", "--port", "{port}",
             "--log-level", "info"]
    with run_server(tmp_path / "data", args=serve) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        answers = []
        for given in (b"X-Request-ID: sched-7\r\n", b""):
            head = (b"POST /predict/batch/llm/m/H/s/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + given
                    + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")
            answers.append(_raw_exchange(port, head, b"0\r\nX-T: " + b"a" * 40_000, b"a" * 40_000, b"\r\n\r\n"))
        srv.process.terminate()
        said = srv.process.communicate(timeout=30)[0].decode()
    ids = [re.findall(rb"\r\nx-request-id: ([!-~]+)\r\n", answer) for answer in answers]
    assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers) and ids[0] == [b"sched-7"], answers
    made = ids[1][0].decode()
    assert re.fullmatch("[0-9a-f]{32}", made)
    for rid in ("sched-7", made):
        assert f"answered 431 (request {rid})." in said, said
        assert f"client left during POST /predict/batch/llm/m/H/s/1 before its body was read (request {rid})" in said


def test_evaluate_prints_each_levels_coverage_and_the_figures_held_out_at_training(tmp_path, trained):
    measured = tmp_path / "measured.jsonl"
    measured.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(500, seed=51)))
    out = invoke("evaluate", "llm/*/*/*/*", measured, "--data-dir", trained).output
    assert f"{KEY} version 1: 500 traces scored\n" in out
    body = json_out(invoke("evaluate", "llm/*/*/*/*", measured, "--data-dir", trained, "--json"))
    for level, got in body["coverage"].items():  # a row per level: its coverage and p-value
        assert re.search(rf"│ {re.escape(level)} +│ {got:.3f} +│ {body['calibration']['p_values'][level]:.3g} +│", out), out
    assert f"relative pinball loss: {body['relative_pinball_loss']:.4f} (held out at training: " \
           f"{body['heldout_at_training']['relative_pinball_loss']:.4f})" in out
    # The intervals' coverage and the expects' ratio beside the held-out figures too, as README says.
    held = body["heldout_at_training"]
    assert ("central intervals' coverage: " + ", ".join(f"{float(s):.0%} {c:.3f}" for s, c in body["interval_coverage"].items())
            + " (held out at training: " + ", ".join(f"{float(s):.0%} {held['interval_coverage'][s]:.3f}"
                                                     for s in body["interval_coverage"]) + ")\n") in out, out
    assert f"runtimes' sum / expects' sum: {body['expect_ratio']:.3f} (held out at training: {held['expect_ratio']:.3f})\n" in out
    assert f"coverage test: worst level {body['calibration']['worst_level']}, p-value " \
           f"{body['calibration']['corrected_p_value']:.3g} (corrected over 8 levels" in out
    # Nothing recorded: the model has no observation.
    assert json_out(invoke("models", "--data-dir", trained, "--json"))[0]["models"][0]["observations"] == 0


def test_evaluate_exits_1_naming_the_traces_it_could_not_score(tmp_path, trained):
    traces = [*make_llm_traces(40, seed=52), {"input_tokens": 3, "output_tokens": 4}]
    result = invoke("evaluate", "llm/*/*/*/*", json.dumps(traces), "--data-dir", trained, ok=False)
    assert result.exit_code == 1 and f"{KEY} version 1: 40 traces scored, 1 not" in result.output
    assert "trace[40]: missing measured 'runtime_ms'" in result.output
    line = one_error_line(runner.invoke(cli.app, ["evaluate", "llm/*/*/*/*", '{"input_tokens": 3}', "-d", str(trained)]))
    assert line == "error: no usable observation: traces[0]: missing measured 'runtime_ms'"
    line = one_error_line(runner.invoke(cli.app, ["evaluate", "llm/*/*/*/*", json.dumps(traces[:5]), "-d", str(trained),
                                                  "--model-version", "4"]))
    assert line == f"error: model {KEY} has no version 4"


def test_evaluate_with_url_answers_as_offline(tmp_path, trained, server):
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"}))
    version = json_out(invoke("train", cfg, "--url", server.url, "--json"))["version"]
    measured = json.dumps(make_llm_traces(200, seed=53))
    remote = json_out(invoke("evaluate", "llm/*/*/*/*", measured, "--url", server.url, "--json",
                             "--model-version", version))
    offline = json_out(invoke("evaluate", "llm/*/*/*/*", measured, "--data-dir", trained, "--json"))
    assert remote["version"] == version and remote["evaluated"] == offline["evaluated"] == 200
    assert remote["coverage"] == offline["coverage"] and remote["calibration"] == offline["calibration"]
    line = one_error_line(runner.invoke(cli.app, ["evaluate", "llm/*/*/*/*", measured, "--url", server.url,
                                                  "--model-version", "999"]))
    assert line == f"error: 404: model {KEY} has no version 999"


def test_evaluate_a_csv_runtime_of_nan_or_inf_is_the_same_error_offline_and_with_url(tmp_path, trained, server):
    # Sent as null (JSON has no NaN), it was "missing measured 'runtime_ms'" with --url, where
    # offline said "'runtime_ms' must be a number in [1e-12, 1e+15]".
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": IDENTITY, "traces": make_llm_traces(200), "algorithm": "linear"}))
    version = json_out(invoke("train", cfg, "--url", server.url, "--json"))["version"]
    measured = tmp_path / "measured.csv"
    rows = [(t["input_tokens"], t["output_tokens"], t["runtime_ms"]) for t in make_llm_traces(20, seed=55)]
    rows += [(100, 50, "nan"), (100, 50, "inf"), (100, 50, "-inf")]
    measured.write_text("input_tokens,output_tokens,runtime_ms\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    remote = json_out(invoke("evaluate", "llm/*/*/*/*", measured, "--url", server.url, "--json", "--model-version",
                             version, ok=False))
    offline = json_out(invoke("evaluate", "llm/*/*/*/*", measured, "--data-dir", trained, "--json", ok=False))
    said = [(r["index"], r["message"]) for r in offline["rejected"]]
    assert said == [(i, "'runtime_ms' must be a number in [1e-12, 1e+15]") for i in (20, 21, 22)]
    assert [(r["index"], r["message"]) for r in remote["rejected"]] == said


def test_evaluate_scores_a_lookup_table_offline_with_or_without_a_model(tmp_path, trained):
    measured = make_llm_traces(300, seed=54)
    shapes = tmp_path / "shapes.jsonl"
    shapes.write_bytes(b"".join(orjson.dumps({k: t[k] for k in ("input_tokens", "output_tokens")}) + b"\n"
                                for t in measured))
    invoke("table", "llm/*/*/*/*", shapes, "-o", "t.json", "--data-dir", trained)
    traces = json.dumps(measured)
    with_model = json_out(invoke("evaluate", "llm/*/*/*/*", traces, "-d", trained, "--lookup-table", "t.json", "--json"))
    assert (with_model["source"], with_model["table"], with_model["evaluated"]) == ("lookup_table", "t.json", 300)
    out = invoke("evaluate", "llm/*/*/*/*", traces, "-d", trained, "--lookup-table", "t.json").output
    assert "lookup table t.json: 300 traces scored\n" in out and "held out at training" not in out
    # A data directory of the table alone (the seed's need no model) scores it the same.
    alone = tmp_path / "alone"
    (alone / "tables").mkdir(parents=True)
    (alone / "tables" / "t.json").write_bytes((trained / "tables" / "t.json").read_bytes())
    body = json_out(invoke("evaluate", "llm/*/*/*/*", traces, "-d", alone, "--lookup-table", "t.json", "--json"))
    assert body["coverage"] == with_model["coverage"] and body["calibration"] == with_model["calibration"]
    line = one_error_line(runner.invoke(cli.app, ["evaluate", "llm/*/*/*/*", traces, "-d", str(trained),
                                                  "--lookup-table", "t.json", "--model-version", "1"]))
    assert line.startswith("error: --model-version names a model's version, but --lookup-table")


def test_evaluate_a_version_past_64_bits_is_the_same_error_offline_and_over_http(tmp_path, server):
    # Offline it was "has no version N"; with --url the client's "--model-version is an int
    # (N), which cannot be sent as JSON": said before any model is looked up, alike.
    data = tmp_path / "data"
    data.mkdir()
    trace = '{"input_tokens": 3, "output_tokens": 4, "runtime_ms": 5}'
    for where in (["--data-dir", str(data)], ["--url", server.url]):
        result = runner.invoke(cli.app, ["evaluate", "llm/*/*/*/*", trace, *where, "--model-version", str(10**20)])
        assert one_error_line(result) == (f"error: --model-version {10**20} is past any version a model can have "
                                          f"(at most {2**64 - 1})"), where


def test_table_a_trace_file_of_no_trace_format_is_the_same_error_offline_and_over_http(tmp_path, server):
    # With --url it was uploaded and the service's answer named its multipart part:
    # "422: trace_file 'h.txt' must be ...", not TRACE_FILE, and not as offline said it.
    data = tmp_path / "data"
    data.mkdir()
    trace = tmp_path / "h.txt"
    trace.write_text('{"input_tokens": 3, "output_tokens": 4}\n')
    for where in (["--data-dir", str(data)], ["--url", server.url]):
        result = runner.invoke(cli.app, ["table", "llm/*/*/*/*", str(trace), *where])
        assert one_error_line(result) == (f"error: unsupported trace file {str(trace)!r}: expected .json, .jsonl "
                                          "(or .ndjson) or .csv, optionally .gz"), where


@pytest.mark.parametrize("where", [["--url", "http://127.0.0.1:1"], []])
@pytest.mark.parametrize("model, part", [("llm/../*/*/*", "model_name is '..'"), ("llm/*/*/%2E/*", "software_name is '.'")])
def test_a_dot_identity_part_is_the_same_error_offline_and_over_http(tmp_path, where, model, part):
    # Offline it was "no trained model matches", with --url the client's
    # "identity.model_name '..' cannot be sent in a URL" (its field, not MODEL's part).
    result = runner.invoke(cli.app, ["predict", model, "{}", "--data-dir", str(tmp_path), *where])
    assert one_error_line(result) == (f"error: MODEL's {part}, which no model's can be ('.' and '..' are resolved "
                                      "away in URLs)")


@pytest.mark.parametrize("where", [["--url", "http://127.0.0.1:1"], []])
@pytest.mark.parametrize("part, problem", [("a" * 5000, "an identity part is at most 200 characters, got 5,000"),
                                           ("a%09b", r"an identity part cannot hold control or invisible format characters, got 'a\tb'")])
def test_an_identity_part_no_model_can_have_is_the_same_error_offline_and_over_http(tmp_path, where, part, problem):
    # Offline it was "no trained model matches", with --url (a long one) the client's
    # "identity.model_name is 5,000 characters long": its field, not MODEL's part.
    result = runner.invoke(cli.app, ["predict", f"llm/{part}/*/*/*", "{}", "--data-dir", str(tmp_path), *where])
    assert one_error_line(result) == f"error: MODEL's model_name names no model: {problem}"


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_more_traces_than_one_request_carries_are_said_in_the_cli_s_terms(tmp_path, command):
    # The service's answer named its field: "422: trace: List should have at most 100000 items
    # after validation, not 100001". Said before anything is sent (no service at this URL).
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(b'{"input_tokens": 3, "output_tokens": 4, "runtime_ms": 5}\n' * 100_001)
    result = runner.invoke(cli.app, [command, "llm/*/*/*/*", str(trace), "--url", "http://127.0.0.1:1"])
    assert one_error_line(result) == ("error: TRACE holds 100,001 traces: with --url they are sent in one request, "
                                      "at most 100,000 (the service's limit); split them, or leave --url out")


@pytest.mark.parametrize("listed, problem", [([{"name": "t.json", "size_bytes": 9}], "KeyError: 'modified_at'"),
                                             ([1], "AttributeError: 'int' object has no attribute 'get'")])
def test_tables_over_http_says_an_answer_not_in_the_service_s_form_in_one_line(monkeypatch, listed, problem):
    # Another server's answer at --url (a list of tables lacking a field): a traceback.
    from swarmpilot_predictor.client import PredictorClient

    monkeypatch.setattr(PredictorClient, "list_tables", lambda self: listed)
    result = runner.invoke(cli.app, ["tables", "--url", "http://127.0.0.1:9"])
    assert one_error_line(result) == ("error: unexpected answer from GET /tables at http://127.0.0.1:9: its table [0] "
                                      f"is not in the predictor's form ({problem})")


@pytest.mark.parametrize("where", [["--url", "http://127.0.0.1:1"], []])
def test_an_identity_part_that_is_not_utf8_is_the_same_error_offline_and_over_http(tmp_path, where):
    # Offline it was "no trained model matches vision/\udcff/...", with --url the client's
    # "identity.model_name '\udcff' is not valid Unicode" (its field, not MODEL's part).
    result = runner.invoke(cli.app, ["predict", "vision/\udcff/*/*/*", "{}", "--data-dir", str(tmp_path), *where])
    assert one_error_line(result) == ("error: MODEL's model_name '\\udcff' is not valid Unicode (it holds a lone "
                                      "surrogate): no model's can be")


@pytest.mark.parametrize("where", [["--url", "http://127.0.0.1:1"], []])
@pytest.mark.parametrize("command, flag", [(["predict", "llm/*/*/*/*", "{}"], "--lookup-table"),
                                           (["evaluate", "llm/*/*/*/*", "{}"], "--lookup-table"),
                                           (["table", "llm/*/*/*/*", "TRACE"], "--output")])
def test_a_table_name_that_is_not_utf8_is_the_same_error_offline_and_over_http(tmp_path, where, command, flag):
    # With --url the client said it in its own terms: "--lookup-table is a str ('\udcff.csv'),
    # which cannot be sent as JSON", "--output '\udcff.csv' is not valid Unicode".
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"input_tokens": 1, "output_tokens": 1}\n')
    args = [str(trace) if a == "TRACE" else a for a in command]
    result = runner.invoke(cli.app, [*args, flag, "\udcff.csv", "--data-dir", str(tmp_path), *where])
    assert one_error_line(result) == f"error: {flag} '\\udcff.csv' is not a valid file name (it holds a lone surrogate)"


@pytest.mark.parametrize("listed, problem", [([{"models": [{"versions": [1]}]}], "KeyError: 'key'"),
                                             ([{"model_type": "llm"}], "KeyError: 'models'")])
def test_models_over_http_says_an_answer_not_in_the_service_s_form_in_one_line(monkeypatch, listed, problem):
    # Another server's answer at --url (a model lacking its key): a traceback.
    from swarmpilot_predictor.client import PredictorClient

    monkeypatch.setattr(PredictorClient, "list_models_raw", lambda self: listed)
    result = runner.invoke(cli.app, ["models", "--url", "http://127.0.0.1:9"])
    assert one_error_line(result) == ("error: unexpected answer from GET /models at http://127.0.0.1:9: its entry [0] "
                                      f"is not in the predictor's form ({problem})")


def test_table_over_http_says_an_answer_not_in_the_service_s_form_in_one_line(monkeypatch, tmp_path):
    # Another server's answer at --url, holding what the client requires but no path: a traceback.
    from swarmpilot_predictor.client import PredictorClient

    monkeypatch.setattr(PredictorClient, "generate_table",
                        lambda self, *a, **k: {"status": "success", "table_name": "t.csv", "rows": 3})
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"input_tokens": 1, "output_tokens": 1}\n')
    result = runner.invoke(cli.app, ["table", "llm/*/*/*/*", str(trace), "--url", "http://127.0.0.1:9"])
    assert one_error_line(result) == ("error: unexpected answer from POST /predict/table at http://127.0.0.1:9: "
                                      "not in the predictor's form (KeyError: 'path')")
