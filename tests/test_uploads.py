"""A multipart training's trace files: the names its config may call them by."""

from __future__ import annotations

import pytest

from swarmpilot_predictor.errors import InvalidInput
from swarmpilot_predictor.routes.uploads import UploadedTraceFiles


def test_a_file_is_named_by_its_own_name_or_by_its_part(tmp_path):
    files = UploadedTraceFiles(tmp_path)
    assert files.place("traces", "../../etc/run.jsonl") == ("run.jsonl", tmp_path / "0.jsonl")
    assert files.place("extra", "more.csv.gz") == ("more.csv.gz", tmp_path / "1.csv.gz")
    assert files.by_name("run.jsonl") == {"run.jsonl": tmp_path / "0.jsonl", "more.csv.gz": tmp_path / "1.csv.gz",
                                          "traces": tmp_path / "0.jsonl", "extra": tmp_path / "1.csv.gz"}


def test_a_part_sent_twice_names_no_file_and_a_config_naming_it_is_refused(tmp_path):
    files = UploadedTraceFiles(tmp_path)
    files.place("traces", "a.jsonl")
    files.place("traces", "b.jsonl")
    assert set(files.by_name("a.jsonl")) == {"a.jsonl", "b.jsonl"}  # "traces" would be chance
    with pytest.raises(InvalidInput, match="2 uploaded files were sent as part 'traces'") as err:
        files.by_name("traces")
    assert err.value.field == "config.traces"


def test_a_file_name_comes_before_a_part_of_that_name(tmp_path):
    files = UploadedTraceFiles(tmp_path)
    files.place("b.jsonl", "a.jsonl")
    files.place("other", "b.jsonl")
    assert files.by_name() == {"a.jsonl": tmp_path / "0.jsonl", "b.jsonl": tmp_path / "1.jsonl",
                               "other": tmp_path / "1.jsonl"}


@pytest.mark.parametrize("part, filename, needle", [
    ("second", "a.jsonl", "two uploaded files are named 'a.jsonl'"),
    ("bad", "notes.txt", "uploaded file 'notes.txt' must be"),
])
def test_a_second_file_of_one_name_or_a_file_that_is_no_trace_file_is_refused_naming_its_part(tmp_path, part,
                                                                                                filename, needle):
    files = UploadedTraceFiles(tmp_path)
    files.place("first", "a.jsonl")
    with pytest.raises(InvalidInput, match=needle) as err:
        files.place(part, filename)
    assert err.value.field == part
