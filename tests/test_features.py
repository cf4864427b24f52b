"""Feature selection, typing, cleaning for training, and encoding for prediction."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from swarmpilot_predictor.features import DataReport, FeatureSchema, FeatureSpec, feature_number
from swarmpilot_predictor.traces import TraceError, TraceTable

from .conftest import cold_start_traces


def prepare(traces, **kw):
    return FeatureSchema.prepare_training(TraceTable.from_traces(traces), **kw)


def base_traces(n=20):
    return [
        {"input_tokens": 10 * (i + 1), "gpu": "h100" if i % 2 else "a100", "runtime_ms": 5.0 + i}
        for i in range(n)
    ]


def test_training_rows_are_taken_in_the_order_their_tasks_ran():
    # Traces gathered from two workers' logs, one after the other: by their timestamps the
    # run interleaves them (the stretches of the run, modeling.model.stretch_levels).
    traces = [{"size": float(i % 5), "ts": 1000.0 + 2 * i + (i >= 10), "runtime_ms": 1.0 + i} for i in range(20)]
    traces = traces[::2] + traces[1::2]
    _, _, y, _ = prepare(traces)
    assert y.tolist() == [1.0 + i for i in range(20)]
    # A file already in order, ties, or a trace without a timestamp: the order given.
    for given in (traces[:10], [{**t, "ts": 5.0} for t in traces], [*traces[:-1], {"size": 1.0, "runtime_ms": 99.0}]):
        _, _, y, _ = prepare(given)
        assert y.tolist() == [t["runtime_ms"] for t in given]


def test_reserved_fields_are_not_features():
    traces = [
        {**t, "task_id": f"t{i}", "req_id": i, "model_id": "turbo", "ts": 1000 + i, "timestamp": 2000 + i,
         "model_type": "llm", "model_name": f"m{i % 2}", "hardware": f"h{i % 3}", "software_name": "vllm",
         "software_version": f"{i % 2}"}
        for i, t in enumerate(base_traces())
    ]
    schema, X, y, report = prepare(traces)
    assert schema.names == ["input_tokens", "gpu"]
    assert X.shape == (20, 2)
    np.testing.assert_array_equal(y, [5.0 + i for i in range(20)])
    assert report.rows_used == 20 and report.rows_dropped == {}


def test_numeric_and_categorical_typing_and_encoding():
    schema, X, y, _ = prepare(base_traces(6))
    num, cat = schema.features
    assert (num.name, num.kind) == ("input_tokens", "numeric")
    assert (cat.name, cat.kind, cat.categories) == ("gpu", "categorical", ("a100", "h100"))
    np.testing.assert_array_equal(X[:, 0], [10, 20, 30, 40, 50, 60])
    np.testing.assert_array_equal(X[:, 1], [0, 1, 0, 1, 0, 1])  # codes index the sorted categories


def test_constant_columns_are_dropped_and_reported():
    traces = [{**t, "const_num": 7, "const_cat": "same", "empty": None} for t in base_traces()]
    schema, X, _, report = prepare(traces)
    assert schema.names == ["input_tokens", "gpu"]
    assert X.shape[1] == 2
    assert report.columns_dropped == {"const_num": "constant", "const_cat": "constant", "empty": "no values"}


def test_a_field_with_a_name_too_long_to_store_is_dropped_or_refused_when_named():
    # A feature's name is stored in the meta file, the metrics and every table record: a key
    # of 23 million characters made a meta file three times that, which the registry skipped.
    long = "k" * 5000
    traces = [{**t, long: i % 4} for i, t in enumerate(base_traces())]
    schema, X, _, report = prepare(traces)
    assert schema.names == ["input_tokens", "gpu"] and X.shape[1] == 2
    assert report.columns_dropped == {"k" * 77 + "...": "a name of 5,000 characters (a feature's is at most 1,024)"}
    assert prepare([{**t, "k" * 1024: i % 4} for i, t in enumerate(base_traces())])[0].names[-1] == "k" * 1024
    with pytest.raises(TraceError, match="a feature's name is at most 1,024 characters, got 5,000") as info:
        prepare(traces, features=["input_tokens", long])
    assert info.value.field == "features" and len(str(info.value)) < 300


def test_two_fields_of_too_long_names_that_begin_alike_are_each_reported():
    # Both were reported under their first 77 characters: one entry, the other dropped unsaid.
    traces = [{**t, "k" * 2000: i % 4, "k" * 3000: i % 3} for i, t in enumerate(base_traces())]
    _, _, _, report = prepare(traces)
    assert report.columns_dropped == {"k" * 77 + "...": "a name of 2,000 characters (a feature's is at most 1,024)",
                                      "k" * 77 + "... (2)": "a name of 3,000 characters (a feature's is at most 1,024)"}


def test_column_constant_apart_from_missing_values_is_dropped():
    # Imputing the gaps with the median makes such a column constant: it carries nothing,
    # and keeping it would make every prediction require it.
    traces = base_traces()
    for i, t in enumerate(traces):
        t["batch"] = 8 if i % 3 else None
    schema, _, _, report = prepare(traces)
    assert "batch" not in schema.names
    assert report.columns_dropped["batch"] == "constant"


def test_a_missing_feature_of_one_learned_value_says_what_to_send():
    # The H100 example's 'phase': 1,461 'clean' and one 'warmup' (read as unseen). Trained
    # without a features list it is a feature, and a trace without it was told only that.
    traces = base_traces(40)
    for i, t in enumerate(traces):
        t["phase"] = "warmup" if i == 5 else "clean"
    schema, _, _, report = prepare(traces)
    assert "phase" in schema.names and report.rare_categories == {"phase": 1}
    probe = [{"input_tokens": 100, "gpu": "h100"}, {"input_tokens": 100, "gpu": "h100", "phase": "clean"}]
    want = ("missing required feature 'phase' (the model learned one value of it, 'clean': state it, "
            "or train with 'features' leaving it out)")
    assert schema.matrix(probe)[1] == [want, None]
    assert schema.row(probe[0])[1] == want
    # A field of a close name is the likelier mistake: it is named instead.
    assert "the trace has 'phases'" in schema.row({**probe[0], "phases": "clean"})[1]
    # A feature of several learned values gets no such line.
    assert schema.row({"input_tokens": 100})[1] == "missing required feature 'gpu'"


def test_an_identifier_like_categorical_column_is_dropped():
    """A value seen once teaches nothing about a runtime (and a one-hot column per row would
    make the linear model's training grow with the cube of the rows)."""
    traces = [{**t, "request": f"r{i}"} for i, t in enumerate(base_traces(40))]
    schema, X, _, report = prepare(traces)
    assert "request" not in schema.names and X.shape[1] == 2
    assert report.columns_dropped["request"].startswith("no value repeats")


def test_a_row_counter_is_dropped_unless_named():
    # The shipped traces number their rows (seq): a model on it needed the counter to predict.
    traces = [{**t, "seq": i, "shuffled": (7 * i) % 40, "sweep": i + 1} for i, t in enumerate(base_traces(40))]
    schema, _, _, report = prepare(traces)
    # A count from 0 is a counter; a sweep of sizes 1, 2, ... (one run each) is a feature.
    assert "seq" not in schema.names and "shuffled" in schema.names and "sweep" in schema.names
    assert report.columns_dropped["seq"] == "a row counter (an index, not a feature)"
    schema, _, _, _ = prepare(traces, features=["input_tokens", "seq"])
    assert schema.names == ["input_tokens", "seq"]


def test_a_row_counter_of_the_whole_file_is_dropped_from_a_part_of_it():
    # A part of the file (a group_by group, a benchmark's random 70%) numbers its rows with
    # gaps: the counter was a feature there, placing each held-out row between its
    # neighbours in time.
    from swarmpilot_predictor.features import row_counters

    traces = [{**t, "seq": i, "sweep": i + 1} for i, t in enumerate(base_traces(60))]
    whole = TraceTable.from_traces(traces)
    assert row_counters(whole) == {"seq"}
    part = TraceTable.from_traces(traces[::2])
    schema, _, _, _ = FeatureSchema.prepare_training(part)
    assert "seq" in schema.names  # alone, the part cannot tell
    schema, _, _, report = FeatureSchema.prepare_training(part, row_counters=row_counters(whole))
    assert "seq" not in schema.names and "sweep" in schema.names
    assert report.columns_dropped["seq"] == "a row counter (an index, not a feature)"


def test_at_most_64_columns_are_features():
    wide = [{**t, **{f"c{j}": (i + j) % 7 for j in range(70)}} for i, t in enumerate(base_traces(40))]
    with pytest.raises(TraceError, match=r"the traces have more than 64 columns that could be features \(the 65th is 'c62'\)"):
        prepare(wide)
    with pytest.raises(TraceError, match="'features' names 65 columns; at most 64"):
        prepare(wide, features=[f"c{j}" for j in range(65)])
    schema, _, _, _ = prepare(wide, features=[f"c{j}" for j in range(64)])
    assert len(schema.names) == 64


def test_only_frequent_categories_are_learned_the_rest_read_as_unseen():
    from swarmpilot_predictor.features import MAX_CATEGORIES

    traces = base_traces(2 * MAX_CATEGORIES + 60)
    for i, t in enumerate(traces):
        # MAX_CATEGORIES + 20 values on two rows each, the last 20 rows on values of their own.
        t["zone"] = f"z{i // 2:04d}" if i < 2 * (MAX_CATEGORIES + 20) else f"once{i}"
    schema, X, _, report = prepare(traces)
    spec = schema.features[schema.names.index("zone")]
    assert len(spec.categories) == MAX_CATEGORIES
    assert report.rare_categories == {"zone": 2 * 20 + 20}
    assert report.to_json()["rare_categories"] == {"zone": 60}
    col = X[:, schema.names.index("zone")]
    assert int(np.isnan(col).sum()) == 60  # as an unseen value reads at prediction
    # Equally frequent values: the first by name are kept, so the choice is reproducible.
    assert spec.categories[0] == "z0000" and spec.categories[-1] == f"z{MAX_CATEGORIES - 1:04d}"


def test_values_first_seen_after_training_are_learned_after_the_known_ones():
    # (A retraining's observations: see observation_matrix.)
    from swarmpilot_predictor.features import MAX_CATEGORIES

    traces = base_traces(6)
    for i, t in enumerate(traces):
        t["zone"] = "ab"[i % 2]
    schema, _, _, _ = prepare(traces)
    j = schema.names.index("zone")
    seen = [{**t, "zone": z} for t, z in zip(base_traces(10), ["d", "c", "d", "c", "b", 7.0, 7, True, None, "e"])]
    X, _ = schema.matrix(seen)
    wider = schema.with_values_seen(seen, X)
    # Values on two rows or more, as training asks (7.0 and 7 are one): "e" and true (once each)
    # and a missing value are not.
    assert wider.features[j].categories == ("a", "b", "7", "c", "d")
    codes = wider.matrix(seen)[0][:, j]
    assert codes[:7].tolist() == [4, 3, 4, 3, 1, 2, 2] and np.isnan(codes[7:]).all()
    # The known values keep their codes; nothing new, the schema itself.
    assert schema.with_values_seen(seen[4:5], X[4:5]) is schema
    many = [{**t, "zone": f"z{i // 2:04d}"} for i, t in enumerate(base_traces(2 * MAX_CATEGORIES))]
    assert len(schema.with_values_seen(many, schema.matrix(many)[0]).features[j].categories) == MAX_CATEGORIES
    # A numeric feature's range spans the values seen.
    tokens = schema.features[0]
    assert (tokens.name, tokens.low, tokens.high) == ("input_tokens", 10, 60)
    wider = schema.with_values_seen(seen, X).features[0]
    assert (wider.low, wider.high) == (10, 100) and schema.with_values_seen(seen[:2], X[:2]) is schema


def test_a_constant_given_other_values_becomes_a_feature_after_the_others():
    # (A retraining's observations: see observation_matrix.) The derived first-run column stays last.
    traces = cold_start_traces()[0]
    for t in traces:
        t.update(k=5, zone="x")
    schema, X, _, _ = prepare(traces)
    assert schema.constants == (("k", 5.0), ("zone", "x")) and schema.history is not None
    seen = [{**t, "k": k, "zone": z} for t, k, z in zip(traces, [5, 6, 7.5, None, "n/a", True],
                                                          ["x", "y", "y", "z", None, "x"])]
    wider = schema.with_values_seen(seen, schema.matrix(seen)[0])
    k, zone = wider.features[-2:]
    assert wider.features[:-2] == schema.features and wider.constants == ()
    # Missing, or a word, a number reads as the constant (as before, where it was answered).
    assert (k.name, k.kind, k.fill, k.low, k.high, k.optional, k.words_missing) == ("k", "numeric", 5.0, 1.0, 7.5, True, True)
    assert (zone.name, zone.kind, zone.categories, zone.optional) == ("zone", "categorical", ("x", "y"), True)
    assert wider.column_names == [*schema.names, "k", "zone", "first_of_shape"]
    # The rows of the old schema read as the constants under the new one.
    rows = schema.widen_rows(X[:3], wider)
    assert rows[:, -3:-1].tolist() == [[5.0, 0.0]] * 3
    assert np.array_equal(rows, wider.matrix(traces[:3])[0])
    # One other value, or one row of each: nothing learned.
    assert schema.with_values_seen(seen[1:2], X[:1]) is schema
    some = [seen[2], seen[3], seen[5]]  # k 7.5, missing and true (1); zones y, z and x
    assert schema.with_values_seen(some, schema.matrix(some)[0]).constants == (("zone", "x"),)


def test_constants_become_features_up_to_as_many_as_a_training_takes(monkeypatch):
    from swarmpilot_predictor import features

    traces = [{**t, "k": 5, "zone": "x"} for t in base_traces(10)]
    schema, _, _, _ = prepare(traces)
    monkeypatch.setattr(features, "MAX_FEATURES", len(schema.features) + 1)
    seen = [{**t, "k": 6, "zone": "y"} for t in traces]
    wider = schema.with_values_seen(seen, schema.matrix(seen)[0])
    assert wider.names == [*schema.names, "k"] and wider.constants == (("zone", "x"),)


def test_missing_numeric_values_are_imputed_with_the_median_and_counted():
    traces = base_traces(10)
    traces[2]["input_tokens"] = None
    del traces[5]["input_tokens"]
    traces[7]["input_tokens"] = None
    schema, X, _, report = prepare(traces)
    present = [10 * (i + 1) for i in range(10) if i not in (2, 5, 7)]
    fill = float(np.median(present))
    assert schema.features[0].fill == fill
    assert report.values_imputed == {"input_tokens": 3}
    assert X[2, 0] == X[5, 0] == X[7, 0] == fill
    assert X[0, 0] == 10


def test_non_positive_and_missing_targets_are_dropped_by_reason():
    traces = base_traces(12)
    traces[0]["runtime_ms"] = 0
    traces[1]["runtime_ms"] = -3.0
    traces[2]["runtime_ms"] = None
    del traces[3]["runtime_ms"]
    traces[4]["runtime_ms"] = math.nan
    traces[5]["runtime_ms"] = math.inf
    traces[6]["runtime_ms"] = 1e308  # finite, but a broken measurement in any unit
    traces[7]["runtime_ms"] = 1e15  # the largest runtime accepted
    traces[8]["runtime_ms"] = 1e-300
    traces[9]["runtime_ms"] = 1e-12  # the smallest
    schema, X, y, report = prepare(traces)
    assert report.rows_total == 12
    assert report.rows_used == 4 == len(y) == X.shape[0]
    assert report.rows_dropped == {"target missing or not finite": 4, "target not positive": 2,
                                   "target outside [1e-12, 1e+15]": 2}
    np.testing.assert_array_equal(y, [1e15, 1e-12, 15.0, 16.0])
    np.testing.assert_array_equal(X[:, 0], [80, 100, 110, 120])


def test_a_boolean_target_is_no_runtime():
    traces = base_traces(12)
    traces[0]["runtime_ms"] = True  # read as a feature, 1; as a measurement, nothing
    traces[1]["runtime_ms"] = False
    schema, X, y, report = prepare(traces)
    assert report.rows_dropped == {"target is a boolean": 2}
    assert report.rows_used == 10 and 1.0 not in y.tolist()


def test_custom_target_field():
    traces = [{"latency": t.pop("runtime_ms"), **t} for t in base_traces()]
    schema, _, y, _ = prepare(traces, target="latency")
    assert "latency" not in schema.names
    assert y[0] == 5.0
    # Beside another target, a measured runtime_ms is no feature unless named.
    both = [{**t, "runtime_ms": 2.0 * t["latency"] + k % 3} for k, t in enumerate(traces)]
    schema, _, _, report = prepare(both, target="latency")
    assert "runtime_ms" not in schema.names and "measured runtime" in report.columns_dropped["runtime_ms"]
    assert "runtime_ms" in prepare(both, target="latency", features=["runtime_ms"])[0].names


def test_missing_target_field_is_an_error():
    with pytest.raises(TraceError, match="target field 'duration'"):
        prepare(base_traces(), target="duration")
    # The traces' own fields are named: a runtime under another name is the likely mistake.
    traces = [{"runtime": t.pop("runtime_ms"), **t} for t in base_traces()]
    fields = ", ".join(repr(f) for f in sorted(traces[0]))
    with pytest.raises(TraceError) as err:
        prepare(traces)
    assert str(err.value) == (f"target field 'runtime_ms' is not present in the traces (they hold {fields}: "
                              "set 'target' to the one that is the runtime)")


def test_words_among_numeric_targets_are_dropped_and_a_column_of_words_is_an_error():
    # One broken measurement ("timeout") among numbers failed the whole training.
    traces = base_traces(5)
    traces[1]["runtime_ms"] = "slow"
    traces[3]["runtime_ms"] = "timeout"
    _, X, y, report = prepare(traces)
    assert len(y) == 3 and report.rows_dropped == {"target is not a number": 2}
    for t in traces:
        t["runtime_ms"] = "fast"
    with pytest.raises(TraceError, match=r"'runtime_ms' has 5 non-numeric value\(s\) and no number"):
        prepare(traces)


def test_a_target_of_words_alone_is_an_error_naming_target():
    # ('target': 'task_id', say) It named 'traces' (a 422 on config.traces over HTTP), whose
    # traces are as they should be: the config's target is what to change.
    traces = base_traces(5)
    for t in traces:
        t["runtime_ms"] = "fast"
    with pytest.raises(TraceError, match="and no number") as err:
        prepare(traces)
    assert err.value.field == "target"


def test_a_target_of_mostly_words_is_an_error_not_a_training_on_the_few_numbers():
    # A spreadsheet's thousands separators ("1,234.5"): the runtimes from 1,000 ms on were
    # words, dropped, and the model trained on the small runtimes left, without a word.
    traces = base_traces(20)
    for i, t in enumerate(traces):
        t["runtime_ms"] = f"{(i + 1) * 600.5:,.1f}"
    with pytest.raises(TraceError) as err:
        prepare(traces)
    assert err.value.field == "target"
    assert str(err.value) == ("target field 'runtime_ms' has 19 values that are no number (such as '1,201.0') "
                              "and 1 numbers: runtimes are plain numbers, without thousands separators or units")
    # As many words as numbers: still read, the words dropped.
    traces = base_traces(4)
    traces[0]["runtime_ms"] = traces[1]["runtime_ms"] = "timeout"
    _, _, y, report = prepare(traces)
    assert len(y) == 2 and report.rows_dropped == {"target is not a number": 2}


def test_numeric_strings_in_the_target_are_read_as_numbers():
    traces = base_traces(5)
    traces[1]["runtime_ms"] = "6.5"
    traces[3]["runtime_ms"] = "-1"
    _, _, y, report = prepare(traces)
    np.testing.assert_array_equal(y, [5.0, 6.5, 7.0, 9.0])
    assert report.rows_dropped == {"target not positive": 1}


def test_explicit_feature_list():
    traces = [{**t, "extra": i * 1.5} for i, t in enumerate(base_traces())]
    schema, X, _, _ = prepare(traces, features=["extra"])
    assert schema.names == ["extra"] and X.shape == (20, 1)
    with pytest.raises(TraceError, match="not found in the traces: nope"):
        prepare(traces, features=["extra", "nope"])
    with pytest.raises(TraceError, match="reserved field.*task_id"):
        prepare([{**t, "task_id": "x"} for t in traces], features=["task_id"])


def test_mixed_column_is_categorical():
    traces = base_traces(6)
    for i, t in enumerate(traces):
        t["mode"] = "fast" if i % 2 else 3
    schema, X, _, _ = prepare(traces)
    spec = schema.features[schema.names.index("mode")]
    assert spec.kind == "categorical" and spec.categories == ("3", "fast")
    np.testing.assert_array_equal(X[:, schema.names.index("mode")], [0, 1, 0, 1, 0, 1])


def test_a_few_words_among_numbers_are_missing_numbers_not_categories():
    # 200 token counts and one "n/a": read as a category, each count was a value of its own,
    # and the column was dropped as an identifier. The words are gaps, filled and counted.
    traces = [{"tokens": 10 * (i + 1), "runtime_ms": 5.0 + i} for i in range(200)]
    traces[7]["tokens"], traces[9]["tokens"] = "n/a", "-"
    schema, X, _, report = prepare(traces)
    (spec,) = schema.features
    assert spec.kind == "numeric" and spec.optional and spec.words_missing
    assert report.words_read_as_missing == {"tokens": 2} and report.values_imputed == {"tokens": 2}
    assert X[7, 0] == X[9, 0] == spec.fill == np.median([10 * (i + 1) for i in range(200) if i not in (7, 9)])
    # A trace's word reads as those rows did, on both paths; a list is still an error.
    X2, errors = schema.matrix([{"tokens": "n/a"}, {"tokens": 55}, {"tokens": [1]}])
    assert errors[:2] == [None, None] and errors[2].startswith("feature 'tokens' must be a number, got list")
    assert X2[0, 0] == spec.fill and schema.row({"tokens": "unknown"}) == ([spec.fill], None)
    assert FeatureSchema.from_json(json.loads(json.dumps(schema.to_json()))).features == schema.features
    # More words than that: a categorical column, as before.
    for i in range(0, 200, 10):
        traces[i]["tokens"] = "n/a"
    assert prepare(traces)[0].features[0].kind == "categorical"


def test_a_number_written_as_a_string_is_that_number():
    # "8" among numbers is 8 in training (not a word read as a gap), and at prediction on
    # every path, as a runtime or a CSV cell is read; it was the column's median, or an error.
    traces = [{"batch": b, "note": "ok" if b % 2 else "n/a", "runtime_ms": 3.0 + b} for b in range(1, 201)]
    for t in traces[:5]:
        t["batch"] = str(t["batch"])
    traces[6]["batch"] = " 7.0 "
    traces[8]["batch"] = "n/a"
    schema, X, _, report = prepare(traces)
    spec = schema.features[schema.names.index("batch")]
    assert spec.kind == "numeric" and spec.words_missing
    assert report.words_read_as_missing == {"batch": 1}
    np.testing.assert_array_equal(X[:7, 0], [1, 2, 3, 4, 5, 6, 7])
    X2, errors = schema.matrix([{"batch": "32", "note": "ok"}, {"batch": "1e3", "note": "ok"}, {"batch": "inf", "note": "ok"}])
    assert errors == [None, None, None] and X2[:, 0].tolist() == [32.0, 1000.0, spec.fill]  # "inf" is no number: a word
    assert schema.row({"batch": "32", "note": "ok"}) == ([32.0, X2[0, 1]], None)
    X3, ok = schema.matrix_from_table(TraceTable.from_traces([{"batch": "32", "note": "ok"}, {"batch": 4, "note": "ok"}]))
    assert ok.all() and X3[:, 0].tolist() == [32.0, 4.0]
    # A model that read no words: a number's text is the number, a word is still an error.
    (clean,) = prepare([{"batch": b, "runtime_ms": 3.0 + b} for b in range(1, 41)])[0].features
    assert not clean.words_missing
    clean_schema = FeatureSchema((clean,))
    assert clean_schema.matrix([{"batch": "32"}, {"batch": "many"}])[1] == [None, "feature 'batch' must be a number, got str 'many'"]
    assert clean_schema.row({"batch": "32"}) == ([32.0], None)
    # Strings alone are a categorical feature, "8" and "16" too, as the contract has it; one
    # JSON number among them makes the column numbers, its strings with it.
    strings = [{"batch": str(b % 4 + 1), "runtime_ms": 3.0 + b % 4} for b in range(40)]
    assert prepare(strings)[0].features[0].kind == "categorical"
    assert prepare(strings)[0].features[0].categories == ("1", "2", "3", "4")
    strings[0]["batch"] = 1
    assert prepare(strings)[0].features[0].kind == "numeric"


def test_a_column_is_typed_by_the_rows_trained_on():
    # Numbers in the rows trained on, words only in others (another group_by group's, or a
    # row without a runtime): a numeric feature, as if those other rows had never been read.
    # It was categorical, so that x = 3, between the values seen, was an unseen category.
    group_a = [{"hardware": "A", "x": [1, 2, 4][i % 3], "runtime_ms": 10.0 * [1, 2, 4][i % 3]} for i in range(60)]
    group_b = [{"hardware": "B", "x": ["fast", "slow"][i % 2], "runtime_ms": 5.0} for i in range(20)]
    table = TraceTable.from_traces(group_a + group_b)
    alone = FeatureSchema.prepare_training(TraceTable.from_traces(group_a))
    for schema, X, y, _ in (FeatureSchema.prepare_training(table.take(np.arange(60))), alone):
        x = schema.features[[f.name for f in schema.features].index("x")]
        assert x.kind == "numeric" and not x.words_missing and x.fill == 2.0
    without_runtime = [{"x": i % 4 + 1, "runtime_ms": 10.0 * (i % 4 + 1)} for i in range(40)] + [{"x": "n/a", "runtime_ms": None}]
    schema, X, _, report = FeatureSchema.prepare_training(TraceTable.from_traces(without_runtime))
    assert [(f.name, f.kind, f.words_missing) for f in schema.features] == [("x", "numeric", False)]
    assert report.rows_used == 40 and report.words_read_as_missing == {}


def test_schema_json_round_trip():
    schema, _, _, _ = prepare(base_traces())
    again = FeatureSchema.from_json(schema.to_json())
    assert again == schema
    assert schema.to_json()[1] == {"name": "gpu", "kind": "categorical", "categories": ["a100", "h100"]}


@pytest.mark.parametrize("span", [[5.0], [2.0, 1.0], ["1", 2.0], [1.0, float("inf")], "1-2"])
def test_a_numeric_feature_keeps_its_training_range_and_a_damaged_one_is_refused(span):
    schema, X, _, _ = prepare(base_traces())
    spec = schema.features[[f.name for f in schema.features].index("input_tokens")]
    column = X[:, [f.name for f in schema.features].index("input_tokens")]
    assert (spec.low, spec.high) == (column.min(), column.max())
    stored = spec.to_json()
    assert stored["range"] == [spec.low, spec.high]
    with pytest.raises(ValueError, match="'range' must be the least and the greatest value"):
        FeatureSpec.from_json({**stored, "range": span})
    assert FeatureSpec.from_json({k: v for k, v in stored.items() if k != "range"}).low is None  # stored before


def test_data_report_to_json():
    r = DataReport(rows_total=3)
    r.drop_rows("x", 0)
    r.drop_rows("y", 2)
    r.drop_rows("y", 1)
    assert r.to_json()["rows_dropped"] == {"y": 3}


# --------------------------------------------------------------------------- prediction side

SCHEMA = FeatureSchema((
    FeatureSpec("input_tokens", "numeric", fill=100.0),
    FeatureSpec("gpu", "categorical", ("a100", "h100")),
))


def test_a_feature_some_training_rows_lacked_may_be_lacked_at_prediction_too():
    # Half the rows carry a note and a load: the model learned what their absence means, so a
    # trace without them (the training file itself, say) is read as those rows were.
    traces = base_traces(20)
    for i, t in enumerate(traces):
        if i % 2:
            t.update(note="x" if i % 4 == 1 else "y", load=float(i))
    schema, X, _, report = prepare(traces)
    assert report.values_imputed == {"note": 10, "load": 10}
    optional = {f.name: f.optional for f in schema.features}
    assert optional == {"input_tokens": False, "gpu": False, "note": True, "load": True}
    fill = schema.features[[f.name for f in schema.features].index("load")].fill
    bare = {"input_tokens": 10, "gpu": "a100"}
    got, errors = schema.matrix([bare, {**bare, "note": None, "load": None}, {**bare, "note": "y", "load": 3.0}])
    assert errors == [None, None, None]
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got[0], X[0])  # as training read its first row, which lacked both
    assert got[0][3] == fill and math.isnan(got[0][2])
    row, error = schema.row(bare)
    assert error is None and np.array_equal(np.array(row), got[0], equal_nan=True)
    from_table, ok = schema.matrix_from_table(TraceTable.from_traces([bare, {**bare, "load": 3.0}]))
    assert ok.all() and np.array_equal(from_table[0], got[0], equal_nan=True)
    # A wrong value is still an error, and so is lacking a feature every training row had.
    _, errors = schema.matrix([{**bare, "load": "heavy"}, {**bare, "load": [1]}, {"gpu": "a100"}])
    assert errors == ["feature 'load' must be a number, got str 'heavy'", "feature 'load' must be a number, got list [1]",
                      "missing required feature 'input_tokens'"]
    assert schema.row({**bare, "load": [1]})[1] == errors[1]
    assert not schema.matrix_from_table(TraceTable.from_traces([{**bare, "load": "heavy"}]))[1].any()
    assert FeatureSchema.from_json(schema.to_json()).features == schema.features


def test_matrix_encodes_traces():
    X, errors = SCHEMA.matrix([{"input_tokens": 5, "gpu": "h100"}, {"input_tokens": 7.5, "gpu": "a100", "junk": [1]}])
    assert errors == [None, None]
    np.testing.assert_array_equal(X, [[5, 1], [7.5, 0]])


def test_matrix_missing_feature_names_it():
    X, errors = SCHEMA.matrix([{"gpu": "h100"}, {"input_tokens": 3}, {"input_tokens": 4, "gpu": "a100"}])
    assert errors[0] == "missing required feature 'input_tokens'"
    assert errors[1] == "missing required feature 'gpu'"
    assert errors[2] is None
    np.testing.assert_array_equal(X[2], [4, 0])


def test_a_missing_feature_names_a_field_spelt_close_to_it():
    _, errors = SCHEMA.matrix([{"input_token": 5, "gpu": "h100"}, {"input_tokens": 5, "GPU": "h100"},
                               {"inputtokens": 5, "gpu": "h100", "runtime_ms": 3.0},
                               {"output_tokens": 5, "gpu": "h100"}, {"gpu": "h100", "input_tokens_x": None}])
    hint = " which the model does not read: a misspelling?)"
    assert errors[0] == "missing required feature 'input_tokens' (the trace has 'input_token'," + hint
    assert errors[2] == "missing required feature 'input_tokens' (the trace has 'inputtokens'," + hint
    # Case differs too much in a short name; another feature's name is not a misspelling of this one.
    assert errors[1] == "missing required feature 'gpu'"
    assert errors[3] == "missing required feature 'input_tokens'"
    assert errors[4] == "missing required feature 'input_tokens' (the trace has 'input_tokens_x'," + hint
    # A batch searches each set of fields once, and at most 64 different sets.
    many = [{"input_token": 5, "gpu": "h100", f"other_{k}": 1} for k in range(100)] + [{"input_token": 5, "gpu": "h100"}] * 3
    _, errors_many = SCHEMA.matrix(many)
    assert errors_many[:64] == [errors[0]] * 64
    assert errors_many[64:100] == ["missing required feature 'input_tokens'"] * 36
    assert errors_many[100:] == ["missing required feature 'input_tokens'"] * 3  # (a 65th set of fields)
    _, errors_same = SCHEMA.matrix([{"input_token": 5, "gpu": "h100"}] * 100)
    assert errors_same == [errors[0]] * 100
    # The one-trace path says the same.
    assert [SCHEMA.row(t)[1] for t in ({"input_token": 5, "gpu": "h100"}, {"input_tokens": 5, "gpu_": "h"})] == [
        errors[0], "missing required feature 'gpu' (the trace has 'gpu_'," + hint]


def test_matrix_wrong_types_name_the_feature():
    _, errors = SCHEMA.matrix([
        {"input_tokens": "many", "gpu": "h100"},
        {"input_tokens": [5], "gpu": "h100"},
        {"input_tokens": {"v": 1}, "gpu": "h100"},
        {"input_tokens": math.nan, "gpu": "h100"},
    ])
    assert errors[0] == "feature 'input_tokens' must be a number, got str 'many'"
    assert errors[1].startswith("feature 'input_tokens' must be a number, got list")
    assert errors[2].startswith("feature 'input_tokens' must be a number, got dict")
    assert errors[3] == "feature 'input_tokens' must be a finite number, got nan"


def test_a_list_or_an_object_is_no_category_and_names_the_feature():
    # Training reads such a value as missing; a prediction that sends one has a bug to hear about.
    traces = [{"input_tokens": 5, "gpu": ["h100"]}, {"input_tokens": 5, "gpu": {"name": "h100"}},
              {"input_tokens": 5, "gpu": True}, {"input_tokens": 5, "gpu": 3}]
    X, errors = SCHEMA.matrix(traces)
    assert errors[0] == "feature 'gpu' must be a text or a number, got list ['h100']"
    assert errors[1] == "feature 'gpu' must be a text or a number, got dict {'name': 'h100'}"
    assert errors[2:] == [None, None]  # a boolean or a number is a category (unseen here)
    assert [SCHEMA.row(t)[1] for t in traces] == errors


def test_matrix_result_of_a_trace_does_not_depend_on_the_rest_of_the_batch():
    alone = SCHEMA.matrix([{"input_tokens": "100 tokens", "gpu": "h100"}])[1]
    batched = SCHEMA.matrix([{"input_tokens": "100 tokens", "gpu": "h100"}, {"input_tokens": "x", "gpu": "h100"}])[1]
    assert alone[0] == batched[0]
    assert alone[0] is not None and "input_tokens" in alone[0]


def test_a_batch_of_plain_values_is_encoded_as_each_value_alone():
    # Plain numbers and texts take a path of their own (converted and looked up in C): the
    # same values, each alone or beside a value of another kind, encode the same.
    traces = [{"input_tokens": v, "gpu": g} for v, g in
              [(5, "h100"), (7.5, "a100"), (2**70, "tpu"), (10**400, "true"), (-0.0, "h100"), (math.inf, "a100")]]
    X, errors = SCHEMA.matrix(traces)
    for t, x, e in zip(traces, X, errors):
        alone = SCHEMA.matrix([t, {"input_tokens": True, "gpu": 7}])  # a boolean and a number: the general rule
        np.testing.assert_array_equal(x, alone[0][0])
        assert e == alone[1][0] == SCHEMA.row(t)[1]
    assert X[2, 0] == 2.0**70 and errors[5] == "feature 'input_tokens' must be a finite number, got inf"
    assert errors[3].startswith("feature 'input_tokens' must be a finite number, got 1000")  # past the float range
    assert math.isnan(X[2, 1]) and math.isnan(X[3, 1])  # unseen categories
    # Numbers all in the float range (the integer past it above sent its column the general way).
    plain = [5, 7.5, 2**53 + 1, 2**70, -0.0, 10**308]
    X, errors = SCHEMA.matrix([{"input_tokens": v, "gpu": "h100"} for v in plain])
    want = np.array([feature_number(v) for v in plain])
    assert errors == [None] * 6 and X[:, 0].tolist() == want.tolist()
    assert np.signbit(X[:, 0]).tolist() == np.signbit(want).tolist() == [False] * 4 + [True, False]


def test_matrix_booleans_are_numbers_and_unseen_categories_are_not_errors():
    X, errors = SCHEMA.matrix([{"input_tokens": True, "gpu": "tpu"}, {"input_tokens": 1, "gpu": 7}])
    assert errors == [None, None]
    assert X[0, 0] == 1.0 and math.isnan(X[0, 1]) and math.isnan(X[1, 1])


def test_matrix_from_table_flags_incomplete_rows():
    table = TraceTable.from_traces([{"input_tokens": 1, "gpu": "a100"}, {"gpu": "h100"}, {"input_tokens": 3}])
    X, ok = SCHEMA.matrix_from_table(table)
    assert ok.tolist() == [True, False, False]
    np.testing.assert_array_equal(X[0], [1, 0])
    assert X[1, 0] == 100.0  # filled, but flagged


# --------------------------------------------------------------------------- first run of a shape


def without(traces, *keys):
    return [{k: v for k, v in t.items() if k not in keys} for t in traces]


def test_a_first_run_flag_the_traces_state_is_the_models_first_run_column(tmp_path):
    # In a CSV file the flag is a word: it was a category, and no model for each kind of run was fitted.
    from swarmpilot_predictor.traces import iter_trace_file

    path = tmp_path / "own.csv"
    path.write_text("batch_size,first_of_shape,runtime_ms\n" + "".join(
        f"{b},{'true' if i < 4 else 'False'},{(60.0 if i < 4 else 1.0) * b}\n" for i, b in enumerate((1, 2, 4, 8) * 10)))
    schema, X, _, report = FeatureSchema.prepare_training(TraceTable.from_traces(list(iter_trace_file(path))))
    assert schema.names == ["batch_size", "first_of_shape"] and schema.regime_column == schema.stated_flag_column == 1
    assert X[:, 1].tolist() == [1.0] * 4 + [0.0] * 36
    # Other values make an ordinary feature, as before.
    other = [{"batch_size": b, "first_of_shape": b % 3, "runtime_ms": 1.0 + b} for b in range(40)]
    assert FeatureSchema.prepare_training(TraceTable.from_traces(other))[0].regime_column is None


def test_fields_dropped_as_constant_are_kept_with_their_value():
    traces = [{"batch_size": b, "max_tokens": 512, "gpu": "H20", "runtime_ms": 1.0 + b} for b in (1, 2, 4, 8) * 10]
    schema, X, _, report = prepare(traces)
    assert schema.names == ["batch_size"] and X.shape[1] == 1
    assert schema.constants == (("max_tokens", 512.0), ("gpu", "H20"))
    # Stored beside the features, whose form stays as a service older than them reads it.
    stored, constants = schema.to_json(), schema.constants_json()
    assert isinstance(stored, list) and constants == [["max_tokens", 512.0], ["gpu", "H20"]]
    assert FeatureSchema.from_json(json.loads(json.dumps(stored)), json.loads(json.dumps(constants))) == schema
    assert FeatureSchema.from_json(stored).constants == ()
    for bad in ([["gpu"]], [["gpu", None]], [["batch_size", 1]], [["gpu", "a"], ["gpu", "b"]], "gpu", [[1, 2]]):
        with pytest.raises(ValueError, match="constants"):
            FeatureSchema.from_json(stored, bad)
    # A flag stated alike on every training trace is no field of the model's: a cold start's
    # "first_of_shape": true is taken at its word, not named as unseen.
    flagged = [{**t, "first_of_shape": False, "ts": float(i)} for i, t in enumerate(traces)]
    schema, X, _, _ = prepare(flagged)
    assert schema.constants == (("max_tokens", 512.0), ("gpu", "H20"))
    cold = [{"batch_size": 2, "ts": 100.0, "first_of_shape": True}]
    X, errors = schema.matrix(cold)
    assert errors == [None] and schema.outside_training(X, cold) is None
    # A boolean's word is the number a numeric feature reads it as.
    streaming = [{"x": i % 3, "streaming": True, "runtime_ms": 1.0 + i % 3} for i in range(30)]
    schema, X, _, _ = prepare(streaming)
    probe = [{"x": 1, "streaming": v} for v in (True, "true", 1, False, "no")]
    assert schema.outside_training(schema.matrix(probe)[0], probe) == {3: ["streaming"], 4: ["streaming"]}


def test_timestamps_and_repeated_shapes_derive_the_first_run_of_each_shape():
    traces, firsts = cold_start_traces()
    schema, X, y, report = prepare(traces)
    assert schema.names == ["batch_size", "image_size", "load"]
    assert schema.column_names == ["batch_size", "image_size", "load", "first_of_shape"]
    assert schema.kinds == ["numeric"] * 4 and schema.n_categories == [0] * 4
    # The measured `load` is not part of a shape.
    assert [schema.names[j] for j in schema.history.key] == ["batch_size", "image_size"]
    np.testing.assert_array_equal(X[:, -1], np.array(firsts, dtype=float))
    assert report.columns_derived == {"first_of_shape": "first run of its shape (batch_size, image_size) by 'ts'"}
    assert report.to_json()["columns_derived"] == report.columns_derived


def test_a_trace_is_a_first_run_when_no_older_training_trace_had_its_shape():
    traces = cold_start_traces()[0]
    schema, X, _, _ = prepare(traces)
    first_ts = min(t["ts"] for t in traces if (t["batch_size"], t["image_size"]) == (8, 448))
    probe = [
        {"batch_size": 8, "image_size": 448, "load": 0.5, "ts": first_ts + 10},  # ran before: a repeat
        {"batch_size": 8, "image_size": 448, "load": 0.5, "ts": first_ts},  # that very first run
        {"batch_size": 8, "image_size": 448, "load": 0.5, "ts": first_ts - 10},  # before it ever ran
        {"batch_size": 8, "image_size": 448, "load": 0.5},  # no timestamp: after all training
        {"batch_size": 3, "image_size": 448, "load": 0.5},  # a shape training never saw
        {"batch_size": 3, "image_size": 448, "load": 0.5, "ts": "yesterday"},  # not a number: no timestamp
    ]
    want = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    Xp, errors = schema.matrix(probe)
    assert errors == [None] * len(probe)
    np.testing.assert_array_equal(Xp[:, -1], want)
    assert [schema.row(t)[0][-1] for t in probe] == want
    Xt, ok = schema.matrix_from_table(TraceTable.from_traces(probe[:3]))
    np.testing.assert_array_equal(Xt[:, -1], want[:3])
    # Training read 'ts'; a trace that names its time 'timestamp' is read the same way.
    renamed = [{**{k: v for k, v in t.items() if k != "ts"}, "timestamp": t["ts"]} for t in probe[:3]]
    np.testing.assert_array_equal(schema.matrix(renamed)[0][:, -1], want[:3])
    assert [schema.row(t)[0][-1] for t in renamed] == want[:3]
    np.testing.assert_array_equal(schema.matrix_from_table(TraceTable.from_traces(renamed))[0][:, -1], want[:3])
    # A training field that is there but no number gives way to the other name, on every path.
    both = [{**t, "ts": "n/a"} for t in renamed]
    np.testing.assert_array_equal(schema.matrix(both)[0][:, -1], want[:3])
    assert [schema.row(t)[0][-1] for t in both] == want[:3]
    # A time past the float range is later than any training trace (not a crash).
    assert schema.row({**probe[0], "ts": 10**400})[0][-1] == 0.0
    # A boolean is no time: `true` read as the time 1, before every training trace, and made
    # the trace a first run. It fails that trace, naming the field, unless the trace states
    # its flag (which needs no time).
    untimed = {k: v for k, v in probe[0].items() if k != "ts"}
    flagged = [{**untimed, "ts": True}, {**untimed, "timestamp": False}, {**untimed, "ts": True, "first_of_shape": 0}]
    Xb, errors = schema.matrix(flagged)
    assert errors[0] == "'ts' must be a number, when the task starts (as training read 'ts'), got true"
    assert errors[1] == "'timestamp' must be a number, when the task starts (as training read 'ts'), got false"
    assert errors[2] is None and Xb[2, -1] == 0.0
    assert [schema.row(t)[1] for t in flagged] == errors
    # The training rows get the same answer as any trace would.
    np.testing.assert_array_equal(schema.matrix(traces)[0], X)


def test_prediction_fields_name_every_timestamp_a_prediction_may_read():
    schema, _, _, _ = prepare(cold_start_traces()[0])
    assert schema.history.order_field == "ts"
    # The prediction cache keys on these: a trace timed by 'timestamp' alone must not share a key.
    assert set(schema.prediction_fields) == {"batch_size", "image_size", "load", "ts", "timestamp", "first_of_shape"}
    assert schema.history.timestamp_fields == ("ts", "timestamp")
    no_history, _, _, _ = prepare(without(cold_start_traces()[0], "ts"))
    assert no_history.history is None and no_history.prediction_fields == ("batch_size", "image_size", "load")


def test_cached_predictions_tell_traces_apart_by_their_fallback_timestamp(tmp_path):
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY

    service = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    try:
        service.train(TrainConfig(model=IDENTITY, traces=cold_start_traces()[0], algorithm="linear"))
        pattern = IdentityPattern.from_parts(IDENTITY)
        assert service.cache.enabled
        shape = {"batch_size": 8, "image_size": 448, "load": 0.5}
        # Training read 'ts'; these are timed by 'timestamp': before the shape ever ran, then long after.
        early = service.predict(pattern, [{**shape, "timestamp": 0}]).quantiles
        late = service.predict(pattern, [{**shape, "timestamp": 2e9}]).quantiles
        assert late[0, 1] < early[0, 1] / 3  # a repeat, not a cold first run
        np.testing.assert_array_equal(late, service.predict(pattern, [{**shape, "ts": 2e9}]).quantiles)
        np.testing.assert_array_equal(early, service.predict(pattern, [{**shape, "timestamp": 0}]).quantiles)
        # The batched path (cache lookups per trace) agrees.
        each = service.predict_each(pattern, [{**shape, "timestamp": t} for t in (0, 2e9)] * 20)
        assert [p.quantiles[0, 1] for p in each[:2]] == [early[0, 1], late[0, 1]]
    finally:
        service.close()


def test_the_shape_history_survives_the_json_round_trip():
    schema, X, _, _ = prepare(cold_start_traces()[0])
    again = FeatureSchema.from_json(schema.to_json())
    assert again.column_names == schema.column_names
    assert again.history.key == schema.history.key and again.history.order_field == "ts"
    probe = [{"batch_size": b, "image_size": s, "load": 0.1, **({"ts": ts} if ts else {})}
             for b in (1, 8, 3) for s in (224, 500) for ts in (None, 1_000.0, 1_100.0)]
    np.testing.assert_array_equal(again.matrix(probe)[0], schema.matrix(probe)[0])
    # A schema stored before shape histories existed (a plain list) still loads.
    assert FeatureSchema.from_json(schema.to_json()["features"]).history is None
    # A damaged history that still parses is refused here, not at its first prediction.
    d = schema.to_json()
    cut = {**d, "first_of_shape": {**d["first_of_shape"], "first_seen": d["first_of_shape"]["first_seen"][:-1]}}
    with pytest.raises(ValueError, match="'first_seen' holds"):
        FeatureSchema.from_json(cut)
    twice = {**d, "first_of_shape": {**d["first_of_shape"], "shape": d["first_of_shape"]["shape"] * 2}}
    with pytest.raises(ValueError, match="distinct features"):
        FeatureSchema.from_json(twice)


@pytest.mark.parametrize("case, why_not", [
    ("no timestamps", "the traces have no timestamp (ts or timestamp)"),
    ("a missing timestamp", "some traces' 'ts' is missing or not a number"),
    ("every shape once", "400 first runs and 0 repeats: at least 10 of each are needed"),
    ("no repeated field", "no feature repeats as an input shape does (a category, a whole-number size)"),
    ("turned off", "turned off by the config ('first_of_shape': false)"),
    # The flags stated in the traces, but the config's features leave them out.
    ("stated, not listed", "the traces have no timestamp (ts or timestamp); they state 'first_of_shape', which is "
                           "not among the config's features: list it there to use it"),
])
def test_no_first_of_shape_column_where_it_could_not_tell_anything(case, why_not):
    traces = cold_start_traces()[0]
    if case == "no timestamps":
        traces = without(traces, "ts")
    elif case == "a missing timestamp":
        del traces[7]["ts"]
    elif case == "every shape once":
        for i, t in enumerate(traces):
            t["batch_size"], t["image_size"] = i // 20, i % 20
    elif case == "no repeated field":
        traces = without(traces, "batch_size", "image_size")
    elif case == "stated, not listed":
        traces = [{**t, "first_of_shape": first} for t, first in zip(without(traces, "ts"), cold_start_traces()[1])]
    features = ["batch_size", "image_size", "load"] if case == "stated, not listed" else None
    schema, X, _, report = prepare(traces, first_of_shape=case != "turned off", features=features)
    assert schema.history is None and "first_of_shape" not in schema.column_names
    assert X.shape[1] == len(schema.names) and report.columns_derived == {}
    assert report.to_json()["columns_not_derived"] == {"first_of_shape": why_not}  # the metrics say why


def test_rows_that_ran_after_training_extend_the_history():
    traces = cold_start_traces()[0]
    schema, _, _, _ = prepare(traces)
    end = traces[-1]["ts"]
    later = [{"batch_size": 3, "image_size": 224, "load": 0.1, "ts": end + 1},  # a new shape...
             {"batch_size": 8, "image_size": 448, "load": 0.2, "ts": end + 2},  # a known one
             {"batch_size": 3, "image_size": 224, "load": 0.3, "ts": end + 3}]  # ...and its repeat
    X, _ = schema.matrix(later)
    np.testing.assert_array_equal(X[:, -1], [1.0, 0.0, 1.0])  # the old history knows neither run of the new shape
    history, flags = schema.history.extend(X[:, :-1], np.array([t["ts"] for t in later]))
    np.testing.assert_array_equal(flags, [1.0, 0.0, 0.0])
    assert len(history.shapes) == len(schema.history.shapes) + 1
    extended = FeatureSchema(schema.features, history)
    probe = [{"batch_size": 3, "image_size": 224, "load": 0.5, "ts": ts} for ts in (end, end + 1, end + 5)]
    np.testing.assert_array_equal(extended.matrix(probe)[0][:, -1], [1.0, 1.0, 0.0])
    # The shapes training saw keep the time they first ran.
    np.testing.assert_array_equal(extended.matrix(traces)[0], schema.matrix(traces)[0])


def test_shape_features_are_categories_counts_and_few_valued_numbers():
    rng = np.random.default_rng(5)
    n = 140
    traces = [{"batch_size": int(rng.integers(1, 65)),  # 64 sizes over 140 rows: still a shape
               "image_size": int(rng.choice([224, 448])), "scale": float(rng.choice([0.5, 1.0, 1.5])),
               "precision": str(rng.choice(["fp16", "bf16"])), "seq": i, "load": float(rng.uniform()),
               "ts": float(i), "runtime_ms": 1.0 + float(rng.uniform())} for i in range(n)]
    schema, _, _, _ = prepare(traces)
    assert schema.history is not None
    assert [schema.names[j] for j in schema.history.key] == ["batch_size", "image_size", "scale", "precision"]


def test_a_many_valued_count_that_shapes_nothing_is_left_out_of_the_shape():
    # As in a padded text batch: the kernels see (batch, padded length), not the real tokens.
    traces, firsts = cold_start_traces()
    rng = np.random.default_rng(3)
    for t in traces:
        t["tokens"] = int(rng.integers(1, 100_000))  # whole numbers, nearly all distinct
    schema, X, _, report = prepare(traces)
    assert [schema.names[j] for j in schema.history.key] == ["batch_size", "image_size"]
    np.testing.assert_array_equal(X[:, -1], np.array(firsts, dtype=float))
    assert report.columns_derived == {"first_of_shape": "first run of its shape (batch_size, image_size) by 'ts'"}
    # Fewer values (150 over 400 rows): the full key gives a usable flag, yet the key
    # without the count explains clearly more, and wins.
    for t in traces:
        t["tokens"] = int(rng.integers(1, 151))
    schema, X, _, _ = prepare(traces)
    assert schema.history is not None and "tokens" not in [schema.names[j] for j in schema.history.key]
    # A count with few values is a size like any other, and stays in the key.
    for t in traces:
        t["tokens"] = int(rng.integers(0, 3)) * 100 + t["batch_size"]
    schema, _, _, _ = prepare(traces)
    assert "tokens" in [schema.names[j] for j in schema.history.key]


def test_the_shape_is_found_among_several_many_valued_features():
    # seq_len shapes the kernels (first runs 10x slower), tokens does not; both are many-valued.
    rng = np.random.default_rng(2)
    seen, traces = set(), []
    for i in range(2000):
        b, length, tokens = int(rng.choice([1, 2])), int(rng.integers(1, 701)), int(rng.integers(1, 521))
        first = (b, length) not in seen
        seen.add((b, length))
        traces.append({"batch_size": b, "seq_len": length, "tokens": tokens, "ts": float(i),
                       "runtime_ms": b * length * (10.0 if first else 1.0) * float(rng.lognormal(0, 0.05))})
    schema, _, _, report = prepare(traces)
    assert report.columns_derived == {"first_of_shape": "first run of its shape (batch_size, seq_len) by 'ts'"}


def test_a_smaller_shape_needs_evidence():
    # The full key never repeats; without the count, the flag of a batch size's first run
    # explains nothing of these runtimes, so no column is derived.
    rng = np.random.default_rng(0)
    traces = [{"batch_size": int(rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128])),
               "req_tokens": int(rng.integers(1, 3000)), "ts": float(i), "runtime_ms": 0.0} for i in range(400)]
    for t in traces:
        t["runtime_ms"] = t["batch_size"] * float(rng.lognormal(0, 0.3))
    schema, _, _, report = prepare(traces)
    assert schema.history is None
    assert report.columns_not_derived["first_of_shape"].endswith(
        "; no shape without req_tokens had a flag that explained enough of the runtime")


def test_a_trace_may_state_whether_it_is_a_first_run():
    # A scheduler knows what each instance has run; what a trace states wins over the history.
    schema, _, _, _ = prepare(cold_start_traces()[0])
    seen = {"batch_size": 8, "image_size": 448, "load": 0.5}
    unseen = {"batch_size": 3, "image_size": 448, "load": 0.5}
    probe = [{**seen, "first_of_shape": True}, {**unseen, "first_of_shape": False}, {**seen, "first_of_shape": 0},
             {**unseen, "first_of_shape": 1.0}, {**seen, "first_of_shape": None}]
    X, errors = schema.matrix(probe)
    assert errors == [None] * 5
    np.testing.assert_array_equal(X[:, -1], [1.0, 0.0, 0.0, 1.0, 0.0])
    assert [schema.row(t)[0][-1] for t in probe] == [1.0, 0.0, 0.0, 1.0, 0.0]
    for bad in ("yes", 2, [True]):
        message = f"'first_of_shape' must be true or false, got {bad!r}"
        assert schema.matrix([{**seen, "first_of_shape": bad}])[1] == [message]
        assert schema.row({**seen, "first_of_shape": bad})[1] == message
    # A whole table reads the same flags, and masks out the rows whose flag is not one.
    Xt, ok = schema.matrix_from_table(TraceTable.from_traces(probe))
    np.testing.assert_array_equal(Xt[:, -1], X[:, -1])
    assert ok.all()
    bad_rows = [{**seen, "first_of_shape": "yes"}, {**seen, "first_of_shape": 2}, {**seen, "first_of_shape": True}]
    assert schema.matrix_from_table(TraceTable.from_traces(bad_rows))[1].tolist() == [False, False, True]


def test_batch_flags_match_the_row_path_on_many_shapes():
    from swarmpilot_predictor.features import ShapeHistory

    rng = np.random.default_rng(11)
    X = np.column_stack([rng.integers(0, 30, 3000), rng.choice([224.0, 448.0, 512.0], 3000),
                         rng.choice([0.0, 1.0, np.nan], 3000)]).astype(float)  # the last one categorical codes
    history = ShapeHistory.learn(X, np.arange(3000.0), [0, 1, 2], "ts")
    # Queries: seen shapes, unseen combinations of seen values, and unseen values.
    Q = np.column_stack([rng.integers(-2, 33, 4000), rng.choice([224.0, 300.0, 448.0, 512.0], 4000),
                         rng.choice([0.0, 1.0, 2.0, np.nan], 4000)]).astype(float)
    order = np.where(rng.random(4000) < 0.3, np.nan, rng.uniform(-10, 3010, 4000))
    want = [history.flag_row(q.tolist(), t) for q, t in zip(Q, order)]
    np.testing.assert_array_equal(history.flags(Q, order), want)
    assert 0.2 < np.mean(want) < 0.8  # both answers well represented


def _token_traces(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    inp, out = rng.integers(16, 2048, n), rng.integers(4, 512, n)
    y = (5 + 0.02 * inp + 0.3 * out) * rng.lognormal(0, 0.1, n)
    return [{"input_tokens": int(a), "output_tokens": int(b), "model": "m" if i % 2 else "n", "runtime_ms": float(c)}
            for i, (a, b, c) in enumerate(zip(inp, out, y))]


GROSS = "runtime over 1,000 times (or under 1/1,000 of) what its features predict"


def test_a_few_gross_outliers_are_dropped_and_said():
    # A request that hung (1e7 ms among runs of 10 to 300 ms), one whose clock slipped (1e-5 ms).
    traces = _token_traces(400)
    for i in (3, 150, 377):
        traces[i]["runtime_ms"] = 1e7
    traces[200]["runtime_ms"] = 1e-5
    _, X, y, report = prepare(traces)
    assert report.rows_dropped == {GROSS: 4} and report.rows_used == 396 == len(y) == len(X)
    assert y.max() < 1e4 and y.min() > 1


def test_real_modes_far_from_the_rest_are_not_outliers():
    traces = _token_traces(400)
    for t in traces[:60]:                 # a mode 300x slower (first runs, say): 15% of the rows
        t["runtime_ms"] *= 300
    for t in traces[60:64]:               # 1% at 500x: a heavy tail, not an outlier
        t["runtime_ms"] *= 500
    for t in traces[64:80]:               # aborted after 2% of their runtime
        t["runtime_ms"] *= 0.02
    assert prepare(traces)[3].rows_dropped == {}
    many = _token_traces(400)
    for t in many[:10]:                   # 2.5% at 1e7 ms: a mode of their own, kept
        t["runtime_ms"] = 1e7
    assert prepare(many)[3].rows_dropped == {}
    few = _token_traces(19)               # too few rows to say what rows like it take
    few[0]["runtime_ms"] = 1e7
    assert prepare(few)[3].rows_dropped == {}


def test_boolean_words_read_as_training_read_the_column():
    # A numeric column with a few words among its numbers reads them as gaps in training:
    # "true" there is a gap at prediction too (not 1, which training never saw for it).
    traces = [{"retries": i % 8, "runtime_ms": 10.0 + i % 8} for i in range(200)]
    for t in traces[:4]:
        t["retries"] = "true"
    schema, *_ = prepare(traces)
    spec = schema.features[0]
    assert spec.words_missing
    for value in ("true", "n/a"):
        row, error = schema.row({"retries": value})
        assert error is None and row[0] == spec.fill
        np.testing.assert_array_equal(schema.matrix([{"retries": value}] * 3)[0][:, 0], spec.fill)
    # A categorical column learned from JSON booleans among words takes the word true as true.
    mixed = [{"mode": [True, False, "auto"][i % 3], "runtime_ms": 10.0 + i % 3} for i in range(60)]
    schema, *_ = prepare(mixed)
    assert schema.features[0].categories == ("0", "1", "auto")
    for word, want in (("true", True), ("FALSE", False), ("auto", "auto")):
        single, error = schema.row({"mode": word})
        assert error is None and single == schema.row({"mode": want})[0]
        np.testing.assert_array_equal(schema.matrix([{"mode": word}] * 2)[0][:, 0], single[0])
        X, ok = schema.matrix_from_table(TraceTable.from_traces([{"mode": word}, {"mode": want}]))
        assert ok.all() and X[0, 0] == X[1, 0] == single[0]
    # A word in another spelling than the one learned is still that boolean.
    words = [{"mode": ["true", "false"][i % 2], "runtime_ms": 10.0 + i % 2} for i in range(40)]
    schema, *_ = prepare(words)
    assert schema.row({"mode": "True"})[0] == schema.row({"mode": "true"})[0] == schema.row({"mode": True})[0]
    # A numeric column trained on numbers alone reads a boolean word as the number it stands for.
    schema, *_ = prepare([{"retries": i % 8, "runtime_ms": 10.0 + i % 8} for i in range(200)])
    for word, want in (("true", 1.0), ("False", 0.0), (True, 1.0)):
        row, error = schema.row({"retries": word})
        assert error is None and row[0] == want
        X, errors = schema.matrix([{"retries": word}, {"retries": 3}])
        assert X[:, 0].tolist() == [want, 3.0] and not any(errors)


def test_a_flag_explains_none_of_constant_runtimes():
    # np.var of equal values' logs is a rounding residue (1e-30), not 0: a flag on every
    # third row "explained" 22% of it, and so could choose the shape key.
    from swarmpilot_predictor.features import _share_explained

    for value, n in ((123.4, 37), (0.3, 100), (55.5, 1000)):
        values = np.log(np.full(n, value))
        flags = (np.arange(n) % 3 == 0).astype(float)
        assert _share_explained(values, flags) == 0.0
    values = np.log(np.where(np.arange(90) % 3 == 0, 40.0, 4.0))  # a first run 10x slower: all of it
    assert _share_explained(values, (np.arange(90) % 3 == 0).astype(float)) == pytest.approx(1.0)


@pytest.mark.parametrize("spelling", ["pandas csv", "iso json", "number as text"])
def test_timestamps_written_as_dates_or_numbers_in_text_order_the_rows_and_derive_first_runs(tmp_path, spelling):
    # pandas writes a datetime column as "2026-11-28 03:07:46.500000000" in CSV (and ISO text
    # in JSON with date_format="iso"): such a 'ts' was no number, so the rows kept the file's
    # order and no first_of_shape was derived, said only as "missing or not a number".
    from datetime import datetime, timezone
    traces, firsts = cold_start_traces()
    epoch = 1_795_835_266.0

    def spelt(t: float) -> str:
        when = datetime.fromtimestamp(epoch + t, tz=timezone.utc)
        if spelling == "pandas csv":
            return when.strftime("%Y-%m-%d %H:%M:%S.%f") + "000"
        if spelling == "iso json":
            return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return f"{epoch + t:.3f}"

    shuffled = [traces[i] for i in np.random.default_rng(1).permutation(len(traces))]
    path = tmp_path / "t.csv"
    path.write_text("ts,batch_size,image_size,load,runtime_ms\n" + "".join(
        f"{spelt(t['ts'])},{t['batch_size']},{t['image_size']},{t['load']!r},{t['runtime_ms']!r}\n" for t in shuffled))
    schema, X, y, report = FeatureSchema.prepare_training(TraceTable.from_file(path))
    assert report.columns_derived.get("first_of_shape", "").endswith("by 'ts'"), report.columns_not_derived
    numbers, Xn, yn, _ = FeatureSchema.prepare_training(
        TraceTable.from_traces([{**t, "ts": epoch + t["ts"]} for t in shuffled]))
    np.testing.assert_array_equal(y, yn)  # rows in the order the tasks ran
    np.testing.assert_array_equal(X[:, -1], Xn[:, -1])
    assert X[:, -1].sum() == sum(firsts)
    # A prediction's timestamp is read alike: before a shape's first run, a first run.
    probe = {"batch_size": traces[0]["batch_size"], "image_size": traces[0]["image_size"], "load": 0.5}
    assert schema.matrix([{**probe, "ts": spelt(traces[0]["ts"] - 1)}])[0][0, -1] == 1.0
    assert schema.matrix([{**probe, "ts": spelt(traces[-1]["ts"])}])[0][0, -1] == 0.0


def test_a_unix_time_in_another_unit_or_as_a_date_is_read_as_the_same_instant():
    # Numbers were read in any unit and an ISO date and time in seconds: a model trained on
    # milliseconds since the epoch took a prediction's ISO 'ts' (or seconds) for a time before
    # all its training, a first run (a median 10x a repeat's), and a file of both, or of two
    # loggers' seconds and milliseconds, was ordered and flagged at random.
    from datetime import datetime, timezone
    traces, firsts = cold_start_traces()
    epoch = 1_795_835_266.0

    def iso(t: float) -> str:
        return datetime.fromtimestamp(epoch + t, tz=timezone.utc).isoformat()

    ms = FeatureSchema.prepare_training(TraceTable.from_traces([{**t, "ts": (epoch + t["ts"]) * 1e3} for t in traces]))
    assert ms[1][:, -1].sum() == sum(firsts)
    mixes = {"ms and dates": lambda i, t: (epoch + t) * 1e3 if i % 2 else iso(t),
             "seconds and ms": lambda i, t: (epoch + t) * (1e3 if i % 3 == 0 else 1.0),
             "microseconds as text": lambda i, t: f"{(epoch + t) * 1e6:.0f}"}
    for name, spelt in mixes.items():
        schema, X, y, _ = FeatureSchema.prepare_training(
            TraceTable.from_traces([{**t, "ts": spelt(i, t["ts"])} for i, t in enumerate(traces)]))
        np.testing.assert_array_equal(y, ms[2], err_msg=name)  # rows in the order the tasks ran
        np.testing.assert_array_equal(X[:, -1], ms[1][:, -1], err_msg=name)
        assert X[:, -1].sum() == sum(firsts), name
    # A prediction's time in any of them, against the model of milliseconds.
    probe = {"batch_size": traces[0]["batch_size"], "image_size": traces[0]["image_size"], "load": 0.5}
    before, after = traces[0]["ts"] - 1, traces[-1]["ts"] + 1
    for t, first in ((before, 1.0), (after, 0.0)):
        spellings = [iso(t), (epoch + t) * 1e3, epoch + t, f"{epoch + t}", (epoch + t) * 1e6, (epoch + t) * 1e9]
        X = ms[0].matrix([{**probe, "ts": v} for v in spellings])[0]
        np.testing.assert_array_equal(X[:, -1], first, err_msg=str(t))
        assert all(ms[0].history.flag_row(ms[0].matrix([{**probe, "ts": v}])[0][0, :-1], ms[0].history.time_of(
            {"ts": v})) == first for v in spellings)
        table = TraceTable.from_traces([{**probe, "ts": v} for v in spellings])
        np.testing.assert_array_equal(ms[0].history.order_of_table(table), (epoch + t) * 1e3)


def test_a_trace_logged_in_a_leap_second_has_its_time():
    # datetime cannot hold 23:59:60: one trace logged in the leap second of 2016-12-31 had no
    # time, and no first_of_shape was derived for the whole file ("not a number nor an ISO
    # 8601 date and time ('2016-12-31T23:59:60Z')").
    from datetime import datetime, timezone
    traces, firsts = cold_start_traces()
    epoch = 1_483_228_800.0 - traces[-1]["ts"]  # the last one at 2017-01-01T00:00:00 by a Unix clock

    def iso(t: float) -> str:
        return datetime.fromtimestamp(epoch + t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    spelt = [{**t, "ts": iso(t["ts"])} for t in traces[:-1]] + [{**traces[-1], "ts": "2016-12-31T23:59:60Z"}]
    assert spelt[-2]["ts"] == "2016-12-31T23:59:59.500000Z"
    schema, X, y, report = FeatureSchema.prepare_training(TraceTable.from_traces(spelt))
    assert report.columns_derived.get("first_of_shape", "").endswith("by 'ts'"), report.columns_not_derived
    _, Xn, _, _ = FeatureSchema.prepare_training(TraceTable.from_traces([{**t, "ts": epoch + t["ts"]} for t in traces]))
    np.testing.assert_array_equal(X[:, -1], Xn[:, -1])
    assert X[:, -1].sum() == sum(firsts)
    # In a prediction too, and with a fraction or an offset: the second after 23:59:59.
    probe = {"batch_size": 64, "image_size": 96, "load": 0.5}  # a shape that never ran: its time decides nothing
    for leap, seconds in (("2016-12-31T23:59:60.25Z", 1_483_228_800.25), ("2017-01-01 05:29:60+05:30", 1_483_228_800.0),
                          ("2016-12-31T23:59:60", 1_483_228_800.0)):
        assert schema.history.time_of({**probe, "ts": leap}) == seconds, leap
    assert np.isnan(schema.history.time_of({**probe, "ts": "2016-12-31T23:59:61Z"}))


def test_a_timestamp_that_is_no_number_nor_a_date_is_named_in_why_no_first_runs_were_derived():
    traces = cold_start_traces()[0]
    traces[7]["ts"] = "yesterday"
    _, _, _, report = FeatureSchema.prepare_training(TraceTable.from_traces(traces))
    assert report.columns_not_derived["first_of_shape"] == (
        "some traces' 'ts' is missing or not a number nor an ISO 8601 date and time ('yesterday')")


def test_a_list_or_an_object_is_no_feature_value_in_training_as_at_prediction():
    # A list among a feature's numbers was read as a gap (filled, counted in values_imputed), and
    # the model then refused those traces of its own training file ("must be a number, got list");
    # a column of objects alone was dropped as having "no values".
    traces = base_traces(20)
    for i, t in enumerate(traces):
        t["meta"] = {"host": "a"} if i % 5 else None
    schema, X, _, report = prepare(traces)
    assert [s.name for s in schema.features] == ["input_tokens", "gpu"]
    assert report.columns_dropped["meta"].startswith("a list or an object wherever it has a value (16 row(s))")
    assert schema.matrix(traces)[1] == [None] * 20
    # Beside numbers, a few lists: neither the column nor the rows are dropped on a guess.
    for i, t in enumerate(traces):
        t["shape"] = [224, 224] if i % 4 == 0 else i % 3
    with pytest.raises(TraceError, match="'shape' holds a list or an object on 5 training row.*beside numbers") as err:
        prepare(traces)
    assert err.value.field == "traces"
    with pytest.raises(TraceError, match="'shape' holds a list or an object on 5 training row") as err:
        prepare(traces, features=["input_tokens", "shape"])
    assert err.value.field == "features"
    assert prepare(traces, features=["input_tokens", "gpu"])[0].names == ["input_tokens", "gpu"]
    # Only rows trained on count: a group of group_by (here the odd rows) holding none trains.
    table = TraceTable.from_traces(traces).take(np.arange(1, 20, 2))
    schema, *_ = FeatureSchema.prepare_training(table, features=["input_tokens", "shape"])
    assert [s.name for s in schema.features] == ["input_tokens", "shape"]
    table = TraceTable.from_traces(traces).take(np.arange(0, 20, 2))  # (the even rows: all five lists)
    with pytest.raises(TraceError, match="on 5 training row"):
        FeatureSchema.prepare_training(table, features=["input_tokens", "shape"])


def test_a_boolean_timestamp_is_no_time_in_training_as_at_prediction():
    # 'ts': true was read as the time 1: its trace went first in the run's order and was taken
    # for a first run of its shape (a prediction refuses such a 'ts', naming it).
    traces, _ = cold_start_traces(200)
    traces[150]["ts"] = True
    schema, X, y, report = prepare(traces)
    assert schema.history is None and "first_of_shape" not in report.columns_derived
    assert report.columns_not_derived["first_of_shape"] == "some traces' 'ts' is true or false, which is no time"
    assert y.tolist() == [t["runtime_ms"] for t in traces]  # in the order given, as without a timestamp on each
