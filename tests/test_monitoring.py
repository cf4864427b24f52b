"""Observation log, rolling accuracy and the binomial drift test."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import orjson
import pytest

from swarmpilot_predictor.identity import ModelIdentity
from swarmpilot_predictor.monitoring import (MONITOR_LEVELS, AccuracyMonitor, ObservationLog, RollingAccuracy, WindowColumn,
                                             accuracy_of, calibration_test)

from .conftest import clock_checking_at, record_fsyncs, run_with_file_size_limit

IDENT = ModelIdentity("llm", "m", "H100", "vllm", "0.4")


def _lognormal_quantiles(n: int, shift: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Runtimes from LogNormal(log 100 + log shift, 0.3) and the *unshifted* true quantiles."""
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    y = np.exp(np.log(100 * shift) + 0.3 * rng.standard_normal(n))
    q = np.exp(np.log(100) + 0.3 * norm.ppf(np.asarray(MONITOR_LEVELS)))
    return y, np.tile(q, (n, 1))


def test_calibrated_predictions_do_not_drift():
    tracker = RollingAccuracy(window=1000)
    y, q = _lognormal_quantiles(1000)
    tracker.add(y, q)
    report = tracker.report(alpha=1e-3, min_observations=30)
    assert report["drift"]["tested"] and report["drifted"] is False
    for level, cov in report["coverage"].items():
        assert abs(cov - float(level)) < 0.05
    assert abs(report["interval_coverage"]["0.9"] - 0.9) < 0.04


def test_a_shift_is_flagged_once_the_evidence_is_significant():
    y, q = _lognormal_quantiles(400, shift=1.3, seed=1)
    few = RollingAccuracy()
    few.add(y[:10], q[:10])
    # Ten observations are not enough to test, however far off they are.
    assert few.report(1e-3, 30)["drifted"] is False
    many = RollingAccuracy()
    many.add(y, q)
    report = many.report(1e-3, 30)
    assert report["drifted"] is True
    assert report["drift"]["corrected_p_value"] < 1e-3
    assert report["coverage"]["0.5"] < 0.3  # runtimes 30% slower than predicted


def _whole_millisecond_stream(n: int, shift: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Runtimes of about 3 ms timed to whole milliseconds (``shift`` times slower), and a
    model's quantiles of the unshifted ones, each a hair off the value it stands for, as a
    model of such runtimes answers (2.997 ms, 3.004 ms)."""
    rng = np.random.default_rng(seed)
    levels = np.asarray(MONITOR_LEVELS)
    truth = np.quantile(np.round(3.0 * rng.lognormal(0.0, 0.15, 200_000)), levels, method="inverted_cdf")
    q = truth + np.where(levels < 0.5, -0.003, 0.004)
    y = np.round(shift * 3.0 * rng.lognormal(0.0, 0.15, n))
    return y, np.tile(q, (n, 1))


def test_runtimes_on_a_clocks_ticks_tie_with_quantiles_a_hair_off_them_and_do_not_drift():
    # Read strictly (2.997 < 3), the quantiles below the runs' 3 ms cover next to none of
    # them, those above all: a stationary stream was called drifted (p 4e-46 through HTTP).
    y, q = _whole_millisecond_stream(1000)
    assert list(np.unique(np.round(q[0] - np.round(q[0]), 6))) == [-0.003, 0.004]
    tracker = RollingAccuracy(window=1000)
    tracker.add(y, q)
    report = tracker.report(1e-3, 30)
    assert report["clock_tick_ms"] == 1.0
    assert report["drift"]["tested"] and report["drifted"] is False
    assert report["drift"]["corrected_p_value"] == 1.0  # each level's coverage is where a tie-break puts it
    assert report["coverage"] == {f"{t:g}": t for t in MONITOR_LEVELS}
    strictly = (y[:, None] <= q).mean(axis=0)
    assert strictly[MONITOR_LEVELS.index(0.25)] < 0.15 and strictly[MONITOR_LEVELS.index(0.5)] > 0.8  # as it read before


def test_a_shift_of_whole_millisecond_runtimes_by_more_than_the_tie_is_still_flagged():
    for shift in (1.2, 3.0):
        y, q = _whole_millisecond_stream(1000, shift=shift, seed=1)
        tracker = RollingAccuracy(window=1000)
        tracker.add(y, q)
        report = tracker.report(1e-3, 30)
        assert report["drifted"] is True and report["drift"]["corrected_p_value"] < 1e-20
        assert report["coverage"]["0.5"] < 0.45


def test_the_clock_tick_is_the_coarsest_every_runtime_is_a_whole_number_of():
    from swarmpilot_predictor.monitoring import clock_tick

    rng = np.random.default_rng(0)
    runtimes = rng.lognormal(np.log(300.0), 0.5, 200)
    assert clock_tick(runtimes) is None
    assert clock_tick(np.round(runtimes)) == 1.0
    assert clock_tick(np.round(runtimes / 50) * 50) == 50.0
    assert clock_tick(np.round(runtimes, 1)) == 0.1  # 0.1 * 3 is 0.30000000000000004
    assert clock_tick(np.round(runtimes[:19])) is None  # too few to tell
    assert clock_tick(np.append(np.round(runtimes), 12.5)) == 0.5


def test_long_runtimes_off_any_clock_are_on_no_clock_and_whole_ones_still_are():
    # Read as a whole number of ticks within a billionth of the count: every runtime of a
    # million ms or more was within that of a whole number of 0.001 or 0.002 ms (1e10 ms: of
    # 20 ms), and the accuracy answer gave a clock_tick_ms for runtimes on no clock.
    from swarmpilot_predictor.monitoring import clock_tick

    rng = np.random.default_rng(0)
    for scale in (1e6, 3e6, 1e8, 1e10):
        runtimes = rng.uniform(1.0, 2.0, 40) * scale
        assert clock_tick(runtimes) is None, scale
        assert clock_tick(np.round(runtimes)) == 1.0, scale
        assert clock_tick(np.round(runtimes / 50) * 50) == 50.0, scale
    assert clock_tick(np.round(rng.uniform(1.0, 2.0, 40) * 1e6, 3)) == 0.001
    tracker = RollingAccuracy(window=100)
    runtimes = rng.uniform(1.0, 2.0, 40) * 3e6
    tracker.add(runtimes, np.tile(np.linspace(2e6, 8e6, len(MONITOR_LEVELS)), (40, 1)))
    assert "clock_tick_ms" not in tracker.report(1e-3, 20)


def test_runtimes_under_a_tick_are_on_no_clock():
    # 1e-12 ms is 2e-16 of a 5 s tick: read as a whole number of it (0), every runtime of a
    # window of such was on a 5,000 ms clock, every quantile under 250 ms tied with it, and
    # the coverage of runtimes below every quantile read as each level's (drift hidden).
    from swarmpilot_predictor.monitoring import clock_tick

    assert clock_tick(np.full(20, 1e-12)) is None
    assert clock_tick(np.full(20, 1e-6)) is None
    assert clock_tick(np.append(np.full(19, 3.0), 1e-12)) is None
    assert clock_tick(np.full(20, 0.001)) == 0.001  # one tick of the finest clock
    q = np.tile(np.linspace(3.0, 6.0, len(MONITOR_LEVELS)), (20, 1))
    tracker = RollingAccuracy(window=100)
    tracker.add(np.full(20, 1e-12), q)
    report = tracker.report(1e-3, 20)
    assert "clock_tick_ms" not in report
    assert report["coverage"] == {f"{t:g}": 1.0 for t in MONITOR_LEVELS}
    assert report["drift"]["corrected_p_value"] < 1e-9  # (it read 1.0)


def test_a_report_gives_its_windows_figures():
    # A runtime equal to its predicted quantile is covered by it (whole-millisecond runtimes
    # often are); the figures are those of the window, computed here by hand.
    levels = np.asarray(MONITOR_LEVELS)
    q = np.tile(np.linspace(50.0, 150.0, len(levels)), (4, 1))
    median = q[0, list(MONITOR_LEVELS).index(0.5)]
    y = np.array([median, median, 200.0, 25.0])
    tracker = RollingAccuracy(window=1000)
    tracker.add(y, q)
    report = tracker.report(1e-3, 30)
    below = (y[:, None] <= q).mean(axis=0)
    assert report["coverage"]["0.5"] == 0.75
    assert report["coverage"] == {f"{t:g}": float(c) for t, c in zip(MONITOR_LEVELS, below)}
    assert report["mean_abs_coverage_error"] == pytest.approx(np.abs(below - levels).mean(), rel=1e-12)
    diff = y[:, None] - q
    pinball = np.maximum(levels * diff, (levels - 1) * diff).mean()
    assert report["pinball_loss"] == pytest.approx(pinball, rel=1e-12)
    assert report["relative_pinball_loss"] == pytest.approx(pinball / y.mean(), rel=1e-12)
    assert report["median_mape"] == pytest.approx(np.mean(np.abs(median - y) / y), rel=1e-12)
    assert report["interval_coverage"]["0.9"] == 0.5  # the two runs on the median


def test_a_report_gives_the_observed_runtimes_sum_over_the_expects(tmp_path):
    # A queue's wait is a sum of expects: the report says how far the runtimes' sum is from
    # theirs, over the observations whose expect is known (a log written before expects
    # were stored has none, and its observations count in the other figures all the same).
    levels = np.asarray(MONITOR_LEVELS)
    q = np.tile(np.linspace(50.0, 150.0, len(levels)), (4, 1))
    y = np.array([100.0, 120.0, 90.0, 300.0])
    tracker = RollingAccuracy(window=1000)
    tracker.add(y[:1], q[:1])  # no expect known
    assert "expect_ratio" not in tracker.report(1e-3, 30)
    tracker.add(y[1:], q[1:], expect=np.array([100.0, 100.0, np.nan]))
    report = tracker.report(1e-3, 30)
    assert report["expect_ratio"] == pytest.approx((120.0 + 90.0) / 200.0, rel=1e-12)
    assert report["expect_observations"] == 2 and report["window"] == 4
    assert tracker.recent()["expect"] == [None, 100.0, 100.0, None]
    # Stored with each observation and read back, by another process or after a restart;
    # an expect no model answers (a log edited by hand) is not known, the observation counts.
    log = ObservationLog(tmp_path)
    AccuracyMonitor(log).record(IDENT, 1, [{"x": 1}] * 3, y[1:], q[1:], expect=np.array([100.0, 100.0, 250.0]))
    log.append(IDENT, [{"ts": 2e9, "runtime_ms": 80.0, "version": 1, "q": q[0].tolist(), "e": -1.0, "trace": {}}])
    fresh = AccuracyMonitor(ObservationLog(tmp_path)).report(IDENT, 1)
    assert fresh["observations"] == 4 and fresh["expect_observations"] == 3
    assert fresh["expect_ratio"] == pytest.approx((120.0 + 90.0 + 300.0) / 450.0, rel=1e-12)
    # The window's: older observations leave it, and the figure with them.
    small = RollingAccuracy(window=2)
    small.add(y, q, expect=np.array([1000.0, 1000.0, 100.0, 100.0]))
    assert small.report(1e-3, 30)["expect_ratio"] == pytest.approx(390.0 / 200.0, rel=1e-12)



def test_the_rolling_error_ratio_compares_deviations_from_the_expects_with_the_errors(tmp_path):
    # A queue's total has the sum of its tasks' squared errors for variance: the report says
    # how the runtimes' squared deviations from their expects compare, where both are known.
    levels = np.asarray(MONITOR_LEVELS)
    q = np.tile(np.linspace(50.0, 150.0, len(levels)), (4, 1))
    y = np.array([120.0, 90.0, 300.0, 100.0])
    tracker = RollingAccuracy(window=1000)
    tracker.add(y[:1], q[:1], expect=np.array([100.0]))  # an expect, no error: not in the ratio
    assert "error_ratio" not in tracker.report(1e-3, 30)
    tracker.add(y[1:], q[1:], expect=np.array([100.0, 250.0, np.nan]), error=np.array([5.0, 10.0, 10.0]))
    report = tracker.report(1e-3, 30)
    assert report["error_ratio"] == pytest.approx(np.sqrt((10.0**2 + 50.0**2) / (5.0**2 + 10.0**2)), rel=1e-12)
    assert report["error_observations"] == 2 and report["expect_observations"] == 3
    assert tracker.recent()["error"] == [None, 5.0, 10.0, 10.0]
    constant = RollingAccuracy(window=1000)  # errors of 0 (runtimes that never varied): no ratio
    constant.add(y[:2], q[:2], expect=y[:2] * (1 + 1e-15), error=np.zeros(2))
    assert "error_ratio" not in constant.report(1e-3, 30) and "expect_ratio" in constant.report(1e-3, 30)
    # Errors of 0 against runtimes that do vary: as wrong as errors can be, a finite ratio all the same.
    constant.add(np.array([100.0, 200.0]), q[:2], expect=np.array([150.0, 150.0]), error=np.zeros(2))
    assert constant.report(1e-3, 30)["error_ratio"] > 1e8
    # Stored with each observation: another process reads the same; a negative one is not known.
    log = ObservationLog(tmp_path)
    AccuracyMonitor(log).record(IDENT, 1, [{"x": 1}] * 2, y[1:3], q[1:3], expect=np.array([100.0, 250.0]),
                                error=np.array([5.0, 10.0]))
    log.append(IDENT, [{"ts": 2e9, "runtime_ms": 80.0, "version": 1, "q": q[0].tolist(), "e": 90.0, "s": -1.0,
                        "trace": {}}])
    fresh = AccuracyMonitor(ObservationLog(tmp_path)).report(IDENT, 1)
    assert fresh["error_observations"] == 2 and fresh["expect_observations"] == 3
    assert fresh["error_ratio"] == pytest.approx(report["error_ratio"], rel=1e-12)


def test_drift_is_tested_on_enough_observations_at_a_corrected_level():
    y, q = _lognormal_quantiles(400, shift=1.3, seed=1)
    tracker = RollingAccuracy()
    tracker.add(y, q)
    drift = tracker.report(1e-3, 30)["drift"]
    assert drift["tested"] is True
    # Bonferroni over the levels: the worst level's p-value times their number.
    assert drift["corrected_p_value"] == min(1.0, len(MONITOR_LEVELS) * drift["p_values"][drift["worst_level"]])
    # However far off, a window smaller than min_observations is not tested nor called drifted.
    checked = drift["checked_window"]
    assert tracker.report(1e-3, checked)["drift"]["tested"] is True
    fewer = tracker.report(1e-3, checked + 1)
    assert fewer["drift"]["tested"] is False and fewer["drifted"] is False
    # The test counts a runtime on its quantile as covered, as the coverage does.
    from scipy.stats import binomtest

    y, q = _lognormal_quantiles(400, seed=2)
    at = list(MONITOR_LEVELS).index(0.75)
    y[::3] = q[0, at]
    tied = RollingAccuracy()
    tied.add(y, q)
    drift = tied.report(1e-3, 30)["drift"]
    n = drift["checked_window"]
    assert drift["p_values"]["0.75"] == pytest.approx(binomtest(int((y[:n] <= q[:n, at]).sum()), n, 0.75).pvalue, rel=1e-9)


def test_the_binomial_test_is_scipys_without_its_import():
    # scipy.stats took over a second to import, in the first /observe after each start.
    from scipy.stats import binomtest

    from swarmpilot_predictor.monitoring import binomial_test

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 30, 31, 200, 1000, 5000):
        for p in MONITOR_LEVELS:
            for k in {0, n, int(n * p), int(n * p) + 1, *rng.integers(0, n + 1, 6).tolist()}:
                assert binomial_test(k, n, p) == pytest.approx(binomtest(k, n, p).pvalue, rel=1e-9, abs=1e-300), (k, n, p)
    assert binomial_test(3, 4, 0.75) == 1.0  # the expected count itself


def test_looking_often_at_a_calibrated_stream_raises_no_false_alarm():
    """The drift test runs at checkpoints, at a level corrected for the checks a window brings:
    looked at after every ten observations, these calibrated streams were called drifted
    (after 540 and 190 observations) when every look was a test at alpha."""
    from scipy.stats import norm

    q = np.exp(np.log(100) + 0.3 * norm.ppf(np.asarray(MONITOR_LEVELS)))
    for seed in (7, 10):
        y = np.exp(np.log(100) + 0.3 * np.random.default_rng(seed).standard_normal(3000))
        tracker = RollingAccuracy(window=1000)
        for i in range(0, 3000, 10):
            tracker.add(y[i:i + 10], np.tile(q, (10, 1)))
            report = tracker.report(1e-3, 30)
            assert report["drifted"] is False, (seed, i)
        assert report["drift"]["alpha_per_check"] == 1e-5 and report["drift"]["checked_at"] > 2900


def test_the_drift_decision_depends_on_the_observations_not_on_looks_or_batches():
    y, q = _lognormal_quantiles(437, shift=1.15, seed=3)
    answers = []
    for batch, look in ((1, True), (7, True), (100, False), (437, False)):
        tracker = RollingAccuracy(window=200)
        for i in range(0, len(y), batch):
            tracker.add(y[i:i + batch], q[i:i + batch])
            if look:
                tracker.report(1e-3, 30)
        report = tracker.report(1e-3, 30)
        answers.append((report["drifted"], report["drift"]["checked_at"], report["drift"]["p_values"]))
    assert answers[0][1] > 400 and all(a == answers[0] for a in answers)


def test_two_processes_that_read_different_parts_of_a_rotated_log_decide_the_same():
    # One worker read the whole log, another only its newest files: their windows end alike,
    # and so do their checkpoints (picked by each observation's time and place in its batch).
    y, q = _lognormal_quantiles(1500, shift=1.0, seed=4)
    y[1100:] *= 1.12
    ts = np.repeat(np.arange(150, dtype=np.float64), 10)  # one /observe of 10 per second
    index = np.tile(np.arange(10), 150)
    whole, newest = RollingAccuracy(window=300), RollingAccuracy(window=300)
    for i in range(0, 1500, 10):
        whole.add(y[i:i + 10], q[i:i + 10], ts[i:i + 10], index[i:i + 10])
        if i >= 400:
            newest.add(y[i:i + 10], q[i:i + 10], ts[i:i + 10], index[i:i + 10])
        if i >= 700:
            a, b = whole.report(1e-3, 30), newest.report(1e-3, 30)
            assert a["drifted"] == b["drifted"] and a["drift"]["p_values"] == b["drift"]["p_values"]
            assert a["drift"]["checked_at"] - b["drift"]["checked_at"] == 400
    assert whole.report(1e-3, 30)["drifted"] is True


def test_a_small_deviation_on_few_observations_is_not_drift():
    # 40 observations with coverage a little off: well within binomial noise.
    y, q = _lognormal_quantiles(40, shift=1.05, seed=2)
    tracker = RollingAccuracy()
    tracker.add(y, q)
    assert tracker.report(1e-3, 30)["drifted"] is False


def test_window_keeps_the_newest_observations():
    tracker = RollingAccuracy(window=50)
    y, q = _lognormal_quantiles(120)
    tracker.add(y, q)
    assert len(tracker.y) == 50 and tracker.total == 120
    assert list(tracker.y) == y[-50:].tolist()


def test_an_append_whose_folder_a_delete_removes_meanwhile_is_recorded_not_an_error(tmp_path, monkeypatch):
    # The delete of the model removes its folder: between the append's mkdir and its open,
    # the open failed ("No such file or directory"), a 500 where the delete answers 404.
    log_store = ObservationLog(tmp_path)
    folder = log_store._dir(IDENT)
    real_files = ObservationLog._files
    removed = []

    def racing(self, identity):
        if not removed:
            folder.rmdir()  # as the delete does, just after the append made it
            removed.append(True)
        return real_files(self, identity)

    monkeypatch.setattr(ObservationLog, "_files", racing)
    log_store.append(IDENT, [{"ts": 1.0, "runtime_ms": 5.0, "version": 1, "q": [1.0] * 8, "trace": {"x": 1}}])
    assert removed and len(log_store.read(IDENT)) == 1
    log_store.delete(IDENT)
    assert not folder.exists()


def test_a_window_column_keeps_the_newest_values_in_order_as_a_deque_would():
    # Numpy ring buffers where deques of Python floats and lists held 485 bytes an observation.
    from collections import deque

    rng = np.random.default_rng(4)
    for size in (1, 7, 100):
        flat, rows = WindowColumn(size), WindowColumn(size, 3)
        want_flat, want_rows = deque(maxlen=size), deque(maxlen=size)
        for _ in range(60):
            batch = rng.normal(size=(int(rng.integers(0, 2 * size + 3)), 3))
            flat.extend(batch[:, 0])
            rows.extend(batch)
            want_flat.extend(batch[:, 0].tolist())
            want_rows.extend(batch.tolist())
            assert len(flat) == len(want_flat) and flat.values().tolist() == list(want_flat)
            assert np.asarray(rows).tolist() == list(want_rows) and len(rows) == len(want_rows)
            if want_flat:
                assert flat[-1] == want_flat[-1] and flat[0] == want_flat[0]
        assert len(flat._data) <= size  # it grew to its size, no further
    with pytest.raises(IndexError):
        WindowColumn(5)[-1]


def test_a_window_column_made_an_array_is_a_copy_the_next_values_leave_alone():
    # np.array() asks for a copy (copy=True): it was the ring buffer itself, which the next
    # observations wrote over ([1, 2, 3] read [9, 9, 3]); np.asarray may still have a view.
    column = WindowColumn(4)
    column.extend([1.0, 2.0, 3.0])
    copied, typed = np.array(column), np.array(column, dtype=np.float32)
    column.extend([9.0, 9.0, 9.0])
    assert copied.tolist() == [1.0, 2.0, 3.0] and typed.tolist() == [1.0, 2.0, 3.0]
    assert np.asarray(column).tolist() == [3.0, 9.0, 9.0, 9.0]


def test_a_new_log_s_name_is_synced_with_its_first_records_and_not_after(tmp_path, monkeypatch):
    # Each append is fsynced; a new log file's name (and a new folder's) must be too, or a
    # power loss drops the records with it.
    log_store = ObservationLog(tmp_path, max_file_bytes=400)
    record = {"ts": 1.0, "runtime_ms": 5.0, "version": 1, "q": [1.0] * 8, "trace": {"x": 1}}
    fsyncs = record_fsyncs(monkeypatch)
    log_store.append(IDENT, [record])
    folder = tmp_path / IDENT.dirname
    assert [(f.path, f.names) for f in fsyncs] == [
        (tmp_path, frozenset({IDENT.dirname})), (folder / "obs-000001.jsonl", None), (folder, frozenset({"obs-000001.jsonl"}))]
    fsyncs.clear()
    log_store.append(IDENT, [record])
    assert [f.path for f in fsyncs] == [folder / "obs-000001.jsonl"]
    fsyncs.clear()
    log_store.append(IDENT, [record] * 4)  # past 400 bytes: the next append opens a new file
    log_store.append(IDENT, [record])
    assert [f.path for f in fsyncs][-2:] == [folder / "obs-000002.jsonl", folder]


def test_a_new_log_whose_model_is_deleted_while_it_is_written_is_appended_as_before(tmp_path, monkeypatch):
    # A delete of the model (another worker's) between the new log's opening and its
    # folder's sync removed the folder: the sync's FileNotFoundError made the /observe a 500
    # ("cannot write the observations ... (No such file or directory)"), where the caller,
    # finding the model gone, answers that it was deleted (see ObservationLog.append).
    import os

    log_store = ObservationLog(tmp_path)
    record = {"ts": 1.0, "runtime_ms": 5.0, "version": 1, "q": [1.0] * 8, "trace": {"x": 1}}
    real_fsync = os.fsync

    def fsync(fd):
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".jsonl"):
            log_store.delete(IDENT)  # what the deleting worker does, meanwhile

    monkeypatch.setattr(os, "fsync", fsync)
    appended = log_store.append(IDENT, [record])
    assert appended is not None and appended.name == "obs-000001.jsonl"
    assert not (tmp_path / IDENT.dirname).exists()


def test_observation_log_survives_a_torn_line_and_rotates(tmp_path):
    log = ObservationLog(tmp_path, max_file_bytes=2000, max_files=3)
    for i in range(100):
        log.append(IDENT, [{"ts": float(i), "runtime_ms": float(i + 1), "version": 1, "q": [1.0] * 8, "trace": {"x": i}}])
    files = sorted((tmp_path / IDENT.dirname).glob("obs-*.jsonl"))
    assert len(files) == 3  # older files were dropped to bound disk use
    assert sum(f.stat().st_size for f in files) < 3 * 2000 + 200
    records = log.read(IDENT)
    assert [r["runtime_ms"] for r in records] == sorted(r["runtime_ms"] for r in records)
    assert records[-1]["runtime_ms"] == 100.0 and len(records) < 100
    # A crash mid-write leaves half a line: it is skipped, the rest is read.
    with open(files[-1], "ab") as fh:
        fh.write(b"{\"runtime_ms\": 7, \"vers")
    assert log.read(IDENT)[-1]["runtime_ms"] == 100.0
    assert [r["runtime_ms"] for r in log.read(IDENT, limit=2)] == [99.0, 100.0]


def test_a_read_after_a_cutoff_parses_only_the_lines_after_it(tmp_path, monkeypatch):
    # A retraining reads the observations after its version's cutoff: the whole log, parsed
    # into records (26 MB per 8 MB of log), was what the retraining worker's memory kept.
    from swarmpilot_predictor import monitoring

    times = iter(float(t) for t in range(1, 100))
    log = ObservationLog(tmp_path)
    monitor = AccuracyMonitor(log, clock=lambda: next(times))
    q = np.tile(np.linspace(50.0, 150.0, len(MONITOR_LEVELS)), (3, 1))
    for k in range(6):  # stamped 1 to 6, three records an append
        monitor.record(IDENT, 1, [{"x": k}] * 3, np.full(3, 100.0 + k), q)
    path = next((tmp_path / IDENT.dirname).glob("obs-*.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    with open(path, "wb") as fh:  # an append cut short after the cutoff, and lines not stamped first
        fh.writelines(lines[:-1])
        fh.write(b'{"runtime_ms":80.0,"version":1,"q":' + orjson.dumps(q[0].tolist()) + b',"trace":{},"ts":5.5}\n')
        fh.write(b'{"ts":true,"runtime_ms":81.0,"version":1,"q":' + orjson.dumps(q[0].tolist()) + b',"trace":{}}\n')
        fh.write(lines[-1][:40])
    parsed = []
    real = monitoring.read_json_lines
    monkeypatch.setattr(monitoring, "read_json_lines", lambda data, keep: parsed.append(data) or real(data, keep))
    everything = log.read(IDENT)
    for cutoff in (0.0, 2.0, 4.5, 6.0, 99.0):
        parsed.clear()
        after = log.read(IDENT, after=cutoff)
        assert [r for r in after if r["ts"] > cutoff] == [r for r in everything if r["ts"] > cutoff]
        assert (b'{"ts":2.0,' in parsed[0]) == (cutoff < 2) and (b'{"ts":5.0,' in parsed[0]) == (cutoff < 5)
    # (A stamp of JSON's true is no time: that line is no observation.)
    assert [r["runtime_ms"] for r in log.read(IDENT, after=4.0)] == [104.0] * 3 + [80.0]


def test_an_observations_folder_gone_is_not_made_again(tmp_path):
    # (Deleted, or its volume unmounted: observations logged in a folder made again vanish at the remount.)
    from swarmpilot_predictor.errors import PredictorError

    log = ObservationLog(tmp_path / "observations")
    (tmp_path / "observations").rmdir()
    with pytest.raises(PredictorError, match=r"\(No such file or directory\)"):
        log.append(IDENT, [{"ts": 1.0, "runtime_ms": 1.0, "version": 1, "q": [1.0] * 8, "trace": {}}])
    assert not (tmp_path / "observations").exists()


def test_a_log_folder_that_was_away_is_read_on_from_where_it_was(tmp_path):
    # Unmounted, moved away and back, restored: while it could not be listed its files were
    # forgotten, and read again from their start once back: every look counted them once more.
    root = tmp_path / "observations"
    a = AccuracyMonitor(ObservationLog(root))
    b = AccuracyMonitor(ObservationLog(root))
    y, q = _lognormal_quantiles(41, seed=7)
    a.record(IDENT, 1, [{"x": 1}] * 40, y[:40], q[:40])
    assert b.report(IDENT, 1)["observations"] == 40  # each has read the log
    for _ in range(3):
        root.rename(tmp_path / "away")
        assert a.report(IDENT, 1)["observations"] == b.report(IDENT, 1)["observations"] == 40
        (tmp_path / "away").rename(root)
        assert a.report(IDENT, 1)["observations"] == b.report(IDENT, 1)["observations"] == 40
    b.record(IDENT, 1, [{"x": 1}], y[40:], q[40:])
    assert a.report(IDENT, 1)["observations"] == b.report(IDENT, 1)["observations"] == 41
    assert list(a.tracker(IDENT, 1).y) == y.tolist()


def test_the_log_rotates_past_file_999999_in_order_of_numbers(tmp_path):
    # Sorted by name, obs-1000000 came before obs-999999: every append then went to it,
    # unbounded, and readers took the newest file for the oldest.
    log = ObservationLog(tmp_path, max_file_bytes=300, max_files=2)
    monitor = AccuracyMonitor(log)
    y, q = _lognormal_quantiles(30, seed=8)
    monitor.record(IDENT, 1, [{"x": 0}], y[:1], q[:1])
    d = tmp_path / IDENT.dirname
    (d / "obs-000001.jsonl").rename(d / "obs-999999.jsonl")  # a long-lived log's active file
    for i in range(1, 30):
        monitor.record(IDENT, 1, [{"x": i}], y[i:i + 1], q[i:i + 1])
    names = sorted(p.name for p in d.glob("obs-*.jsonl"))
    assert len(names) == 2 and all(p.stat().st_size < 600 for p in d.glob("obs-*.jsonl"))
    assert "obs-999999.jsonl" not in names  # rotated away, as the oldest
    kept = [r["runtime_ms"] for r in log.read(IDENT)]
    assert kept == y[30 - len(kept):].tolist() and kept[-1] == y[29]
    assert [r["runtime_ms"] for r in log.read(IDENT, limit=2)] == y[28:30].tolist()
    fresh = AccuracyMonitor(ObservationLog(tmp_path, max_file_bytes=300, max_files=2))
    assert list(fresh.tracker(IDENT, 1).y) == kept


APPEND_MORE = """
import json
from swarmpilot_predictor.errors import PredictorError
from swarmpilot_predictor.identity import ModelIdentity
from swarmpilot_predictor.monitoring import ObservationLog
records = [{{"ts": 9.0, "runtime_ms": 50.0 + i, "version": 1, "q": [1.0] * 8, "trace": {{"x": i}}}} for i in range(20)]
try:
    ObservationLog({root!r}).append(ModelIdentity.from_parts({ident!r}), records)
    print(json.dumps({{"stored": True}}))
except PredictorError as exc:
    print(json.dumps({{"status": exc.status_code, "message": exc.message}}))
"""


def test_observations_that_do_not_fit_on_disk_are_not_half_stored(tmp_path):
    log = ObservationLog(tmp_path)
    log.append(IDENT, [{"ts": 1.0, "runtime_ms": 10.0 + i, "version": 1, "q": [1.0] * 8, "trace": {"x": i}} for i in range(3)])
    (active,) = (tmp_path / IDENT.dirname).glob("obs-*.jsonl")
    size = active.stat().st_size
    # Room for a few of the 20 new records: a short write, then a failing one.
    got = run_with_file_size_limit(APPEND_MORE.format(root=str(tmp_path), ident=IDENT.as_dict()), limit=size + 500)
    assert got["status"] == 507 and "the observations of" in got["message"]
    assert active.stat().st_size == size  # none of the request's records stayed
    assert [r["runtime_ms"] for r in log.read(IDENT)] == [10.0, 11.0, 12.0]
    log.append(IDENT, [{"ts": 2.0, "runtime_ms": 99.0, "version": 1, "q": [1.0] * 8, "trace": {"x": 0}}])
    assert [r["runtime_ms"] for r in ObservationLog(tmp_path).read(IDENT)] == [10.0, 11.0, 12.0, 99.0]


def test_workers_append_to_the_shared_log_one_at_a_time(tmp_path):
    # Another worker (another open file) holding the log's lock: this append waits for it,
    # so a failed append undone by truncation can never cut the other's records.
    import fcntl
    import threading

    log = ObservationLog(tmp_path)
    record = {"ts": 1.0, "runtime_ms": 10.0, "version": 1, "q": [1.0] * 8, "trace": {"x": 1}}
    log.append(IDENT, [record])
    (active,) = (tmp_path / IDENT.dirname).glob("obs-*.jsonl")
    with open(active, "ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        writer = threading.Thread(target=log.append, args=(IDENT, [{**record, "runtime_ms": 20.0}]))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive()  # waiting for the lock
        other.write(orjson.dumps({**record, "runtime_ms": 15.0}) + b"\n")
        other.flush()
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    writer.join(5)
    assert [r["runtime_ms"] for r in log.read(IDENT)] == [10.0, 15.0, 20.0]


def test_an_observation_is_stamped_once_the_log_is_its_own(tmp_path):
    # Stamped before waiting for the file, a record could land after one stamped later (by
    # another worker meanwhile), and a retraining that had read that one would skip it.
    import fcntl
    import threading

    log = ObservationLog(tmp_path)
    record = {"runtime_ms": 10.0, "version": 1, "q": [1.0] * 8, "trace": {"x": 1}}
    log.append(IDENT, [{**record, "ts": 1.0}])
    (active,) = (tmp_path / IDENT.dirname).glob("obs-*.jsonl")
    stamped: list[float] = []

    def stamp() -> float:
        stamped.append(3.0)
        return 3.0

    waiting = [dict(record), {**record, "runtime_ms": 30.0}]
    with open(active, "ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        writer = threading.Thread(target=log.append, args=(IDENT, waiting), kwargs={"stamp": stamp})
        writer.start()
        writer.join(0.3)
        assert writer.is_alive() and stamped == []  # waiting for the file, not yet stamped
        other.write(orjson.dumps({**record, "ts": 2.0, "runtime_ms": 20.0}) + b"\n")
        other.flush()
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    writer.join(5)
    read = log.read(IDENT)
    assert [(r["ts"], r["runtime_ms"]) for r in read] == [(1.0, 10.0), (2.0, 20.0), (3.0, 10.0), (3.0, 30.0)]
    assert [r["ts"] for r in waiting] == [3.0, 3.0]  # the caller's records carry their time too


def test_the_monitor_stamps_its_observations_under_the_log_lock(tmp_path):
    import fcntl

    seen: list[bool] = []

    def clock() -> float:
        # Another process trying the log's lock: held by the append that asks the time.
        (active,) = (tmp_path / IDENT.dirname).glob("obs-*.jsonl")
        with open(active, "ab") as other:
            try:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append(False)
            except BlockingIOError:
                seen.append(True)
        return 1_700_000_000.0

    monitor = AccuracyMonitor(ObservationLog(tmp_path), clock=clock)
    y, q = _lognormal_quantiles(3)
    monitor.record(IDENT, 1, [{"x": 1}] * 3, y, q)
    assert seen == [True]
    assert [r["ts"] for r in monitor.log.read(IDENT)] == [1_700_000_000.0] * 3


def test_every_process_counts_alike_what_came_after_a_batch(tmp_path):
    # The retraining wait counts the observations after the batch stamped t, by place in the
    # log. A clock that stamps later batches alike (a coarse one) must not make the process
    # that cached the count see more than one that counts afresh (10 against 0).
    clock = lambda: 1000.0  # noqa: E731
    y, q = _lognormal_quantiles(5)
    deciding = AccuracyMonitor(ObservationLog(tmp_path), clock=clock)
    deciding.record(IDENT, 1, [{"x": 1}] * 5, y, q)
    t = deciding.newest_observed(IDENT, 1)
    assert deciding.count_since(IDENT, 1, t, 5) == 0
    for _ in range(2):
        deciding.record(IDENT, 1, [{"x": 1}] * 5, y, q)
    counts = [deciding.count_since(IDENT, 1, t, 5), AccuracyMonitor(ObservationLog(tmp_path), clock=clock).count_since(IDENT, 1, t, 5),
              AccuracyMonitor(ObservationLog(tmp_path), window=3, clock=clock).count_since(IDENT, 1, t, 5)]
    assert counts == [0, 0, 0]
    # Stamped apart, each counts the ten that came after.
    stamps = iter([2000.0, 2001.0, 2002.0])
    apart = AccuracyMonitor(ObservationLog(tmp_path / "apart"), clock=lambda: next(stamps))
    for _ in range(3):
        apart.record(IDENT, 1, [{"x": 1}] * 5, y, q)
    fresh = [AccuracyMonitor(ObservationLog(tmp_path / "apart"), window=w).count_since(IDENT, 1, 2000.0, 20) for w in (1000, 3)]
    assert apart.count_since(IDENT, 1, 2000.0, 20) == 10 and fresh == [10, 10]


def test_lines_that_are_not_observations_are_skipped(tmp_path):
    # Say, a log edited by hand, or written before /observe checked the runtime's range.
    monitor = AccuracyMonitor(ObservationLog(tmp_path))
    y, q = _lognormal_quantiles(40)
    monitor.record(IDENT, 1, [{"x": 1}] * 40, y, q)
    good = {"ts": 1.0, "version": 1, "runtime_ms": 100.0, "q": q[0].tolist(), "trace": {"x": 1}}
    bad = [[1, 2], {**good, "runtime_ms": 1e308}, {**good, "runtime_ms": "100"}, {**good, "q": [1.0, 2.0]},
           {**good, "q": None}, {**good, "trace": "x"}, {key: v for key, v in good.items() if key != "ts"},
           # Quantiles no model answers: a pinball loss of 8.8e306, coverage of reversed levels.
           {**good, "q": [1e308] * len(good["q"])}, {**good, "q": good["q"][::-1]}, {**good, "q": [None] * len(good["q"])},
           # JSON's true is no version (Python reads it as 1) and no time; versions count from 1.
           {**good, "version": True}, {**good, "ts": True}, {**good, "version": 0}, {**good, "version": -3}]
    with open(next((tmp_path / IDENT.dirname).glob("obs-*.jsonl")), "ab") as fh:
        fh.write(b"".join(orjson.dumps(b) + b"\n" for b in bad))
    records = ObservationLog(tmp_path).read(IDENT)
    assert len(records) == 40 and max(r["runtime_ms"] for r in records) == y.max()
    assert AccuracyMonitor(ObservationLog(tmp_path)).report(IDENT, 1)["observations"] == 40


def test_a_model_s_quantiles_at_its_runtime_bounds_are_read_back(tmp_path):
    # A model trained down to the least runtime answers 1e-14 (100x under it) as
    # 9.999999999999987e-15: its observation was counted, then skipped after a restart.
    monitor = AccuracyMonitor(ObservationLog(tmp_path))
    q = np.array([[9.999999999999987e-15] * 4 + [1e-12, 2e-12, 1e17 * (1 + 1e-15), 1e17 * (1 + 1e-15)]])
    monitor.record(IDENT, 1, [{"x": 1}], np.array([1e-12]), q)
    assert len(ObservationLog(tmp_path).read(IDENT)) == 1


def test_monitor_rebuilds_accuracy_from_the_log(tmp_path):
    y, q = _lognormal_quantiles(200, shift=1.5)
    # (The last observation a drift checkpoint, not left to the wall clock.)
    monitor = AccuracyMonitor(ObservationLog(tmp_path), min_observations=30, clock=clock_checking_at(y, 199))
    monitor.record(IDENT, 1, [{"x": 1}] * 200, y, q)
    before = monitor.report(IDENT, 1)
    assert before["drifted"] is True and before["observations"] == 200
    # A new process (restart) reads the same accuracy back from disk.
    again = AccuracyMonitor(ObservationLog(tmp_path), min_observations=30).report(IDENT, 1)
    assert again["coverage"] == before["coverage"] and again["drifted"] is True
    # Other versions are tracked separately.
    assert AccuracyMonitor(ObservationLog(tmp_path)).report(IDENT, 2)["observations"] == 0


APPEND_ELSEWHERE = """
import json
from swarmpilot_predictor.identity import ModelIdentity
from swarmpilot_predictor.monitoring import ObservationLog
records = [{{"ts": 9.0, "runtime_ms": {runtime!r}, "version": 1, "q": {q!r}, "trace": {{"x": i}}}} for i in range({n})]
ObservationLog({root!r}).append(ModelIdentity.from_parts({ident!r}), records)
print(json.dumps({{"stored": {n}}}))
"""


def test_every_worker_sees_every_workers_observations(tmp_path):
    # Two workers (processes) on one data directory: what either observes counts for both,
    # however long each has followed the model.
    slow, q_slow = _lognormal_quantiles(100, shift=4.0, seed=4)
    a = AccuracyMonitor(ObservationLog(tmp_path), min_observations=30)
    # Under this clock b's last observation is a drift checkpoint: a tested window of 110.
    b = AccuracyMonitor(ObservationLog(tmp_path), min_observations=30, clock=clock_checking_at(slow, 99))
    y, q = _lognormal_quantiles(10, seed=3)
    a.record(IDENT, 1, [{"x": 1}] * 10, y, q)
    assert a.report(IDENT, 1)["observations"] == b.report(IDENT, 1)["observations"] == 10
    b.record(IDENT, 1, [{"x": 1}] * 100, slow, q_slow)
    ra, rb = a.report(IDENT, 1), b.report(IDENT, 1)
    assert ra["observations"] == rb["observations"] == 110
    assert ra["drifted"] is True and rb["drifted"] is True and ra["coverage"] == rb["coverage"]
    assert a.recent(IDENT, 1) == b.recent(IDENT, 1)
    # A separate process appending: picked up at the next look, by both.
    got = run_with_file_size_limit(APPEND_ELSEWHERE.format(root=str(tmp_path), ident=IDENT.as_dict(), n=5,
                                                           runtime=100.0, q=q[0].tolist()), limit=1 << 30)
    assert got["stored"] == 5
    assert a.report(IDENT, 1)["observations"] == b.report(IDENT, 1)["observations"] == 115
    a.record(IDENT, 1, [{"x": 1}] * 3, y[:3], q[:3])  # its own, after the other's: each counted once
    assert a.report(IDENT, 1)["observations"] == b.report(IDENT, 1)["observations"] == 118
    assert list(a.tracker(IDENT, 1).y) == list(b.tracker(IDENT, 1).y)


def test_a_model_never_observed_is_reported_without_keeping_anything_of_it(tmp_path):
    # /health, /models and /metrics ask every worker about every model: one never observed
    # (no folder in the log) keeps no state (a window of six deques: 16 MB for 2,500 models),
    # and is read from its start once another worker observes it.
    a = AccuracyMonitor(ObservationLog(tmp_path), min_observations=30)
    b = AccuracyMonitor(ObservationLog(tmp_path), min_observations=30)
    for _ in range(2):
        report = b.report(IDENT, 1)
        assert report["observations"] == 0 and report["window"] == 0 and report["drifted"] is False
        assert b.recent(IDENT, 1, 5)["runtime_ms"] == []
    assert b.followed() == []
    y, q = _lognormal_quantiles(10, seed=3)
    a.record(IDENT, 1, [{"x": 1}] * 10, y, q)
    assert b.report(IDENT, 1)["observations"] == 10 and b.followed() == [IDENT]
    assert b.recent(IDENT, 1)["runtime_ms"] == y.tolist()
    assert b.report(IDENT, 2)["observations"] == 0  # another version of an observed model


def test_workers_follow_the_log_through_rotation_and_torn_lines(tmp_path):
    a = AccuracyMonitor(ObservationLog(tmp_path, max_file_bytes=3000, max_files=3))
    b = AccuracyMonitor(ObservationLog(tmp_path, max_file_bytes=3000, max_files=3))
    y, q = _lognormal_quantiles(80, seed=5)
    for i in range(40):  # each looks after every append of the other's: nothing is rotated away unseen
        (a if i % 2 else b).record(IDENT, 1, [{"x": i}], y[i:i + 1], q[i:i + 1])
        assert a.report(IDENT, 1)["observations"] == b.report(IDENT, 1)["observations"] == i + 1
    assert len(list((tmp_path / IDENT.dirname).glob("obs-*.jsonl"))) == 3
    assert list(a.tracker(IDENT, 1).y) == list(b.tracker(IDENT, 1).y) == y[:40].tolist()
    # A worker that crashed mid-write left half a line: never counted, and the next append reads on.
    active = sorted((tmp_path / IDENT.dirname).glob("obs-*.jsonl"))[-1]
    with open(active, "ab") as fh:
        fh.write(b'{"ts": 1.0, "version": 1, "runtime_ms": 5')
    assert a.report(IDENT, 1)["observations"] == 40
    b.record(IDENT, 1, [{"x": 1}] * 2, y[40:42], q[40:42])
    assert a.report(IDENT, 1)["observations"] == b.report(IDENT, 1)["observations"] == 42
    assert list(a.tracker(IDENT, 1).y)[-2:] == y[40:42].tolist()
    # Versions are told apart in the shared files too.
    a.record(IDENT, 2, [{"x": 1}] * 4, y[:4], q[:4])
    assert b.report(IDENT, 2)["observations"] == 4 and b.report(IDENT, 1)["observations"] == 42


def test_a_request_s_observations_cut_short_by_a_crash_are_never_counted(tmp_path):
    # kill -9 during a large /observe's write: the kernel stops the write at a page, and the log
    # held the request's first 11,219 of 50,000 observations as whole lines, which a restart
    # counted, and a client retrying the unanswered request then counted twice.
    y, q = _lognormal_quantiles(300, seed=6)
    monitor = AccuracyMonitor(ObservationLog(tmp_path))
    monitor.record(IDENT, 1, [{"x": 1}] * 100, y[:100], q[:100])
    active = sorted((tmp_path / IDENT.dirname).glob("obs-*.jsonl"))[-1]
    whole = active.stat().st_size
    monitor.record(IDENT, 1, [{"x": 2}] * 100, y[100:200], q[100:200])
    lines = active.read_bytes()[whole:].splitlines(keepends=True)
    for kept in (lines[:40], lines[:40] + [lines[40][:25]]):  # cut at a line's end, or within one
        with open(active, "r+b") as fh:
            fh.truncate(whole)
            fh.seek(whole)
            fh.write(b"".join(kept))
        assert AccuracyMonitor(ObservationLog(tmp_path)).report(IDENT, 1)["observations"] == 100
        assert len(ObservationLog(tmp_path).read(IDENT)) == 100
    # The next request's observations count, however that crash left the log.
    reader = AccuracyMonitor(ObservationLog(tmp_path))
    assert reader.report(IDENT, 1)["observations"] == 100
    AccuracyMonitor(ObservationLog(tmp_path)).record(IDENT, 1, [{"x": 3}] * 100, y[200:], q[200:])
    assert reader.report(IDENT, 1)["observations"] == 200
    assert list(reader.tracker(IDENT, 1).y) == y[:100].tolist() + y[200:].tolist()
    assert [r["trace"]["x"] for r in ObservationLog(tmp_path).read(IDENT)] == [1] * 100 + [3] * 100
    # A log written before requests were counted (records without "n") reads as it did.
    with open(active, "ab") as fh:
        fh.write(b"".join(orjson.dumps({"ts": 5.0, "runtime_ms": 100.0, "version": 1, "q": q[0].tolist(), "trace": {},
                                        "i": i}) + b"\n" for i in range(3)))
    assert reader.report(IDENT, 1)["observations"] == 203


def test_an_observation_log_that_keeps_no_file_is_refused(tmp_path, monkeypatch):
    import pytest
    from pydantic import ValidationError
    from typer.testing import CliRunner

    from swarmpilot_predictor import cli
    from swarmpilot_predictor.settings import PredictorSettings

    for bad in (0, -1):
        with pytest.raises(ValidationError, match="observations_max_files"):
            PredictorSettings(data_dir=tmp_path, observations_max_files=bad)
    with pytest.raises(ValidationError, match="observations_max_file_mb"):
        PredictorSettings(data_dir=tmp_path, observations_max_file_mb=0)
    with pytest.raises(ValueError, match="at least one file"):
        ObservationLog(tmp_path, max_files=0)
    # At startup: one line naming the variable, not a service that deletes what it accepts.
    monkeypatch.setenv("PREDICTOR_OBSERVATIONS_MAX_FILES", "0")
    result = CliRunner().invoke(cli.app, ["serve", "--data-dir", str(tmp_path / "data")])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in said
    assert "PREDICTOR_OBSERVATIONS_MAX_FILES: Input should be greater than or equal to 1 (got '0')" in said


def test_a_log_file_made_again_under_its_old_inode_number_is_read_from_its_start(tmp_path):
    # The model deleted (its log with it), trained and observed again: the new obs-000001.jsonl
    # may get the old file's inode number (ext4 gives it again), and another worker's cursor
    # (inode, offset) then read on from the old offset, missing the new file's first records.
    a = AccuracyMonitor(ObservationLog(tmp_path))
    b = AccuracyMonitor(ObservationLog(tmp_path))
    y, q = _lognormal_quantiles(30, seed=6)
    a.record(IDENT, 1, [{"x": 1}] * 20, y[:20], q[:20])
    assert b.report(IDENT, 1)["observations"] == 20
    old = b._followed[IDENT].cursor["obs-000001.jsonl"]
    a.log.delete(IDENT)
    a.forget(IDENT)
    a.record(IDENT, 2, [{"x": 1}] * 30, y, q)
    new = (tmp_path / IDENT.dirname / "obs-000001.jsonl").stat()
    assert new.st_size > old[1]
    # As if the inode number were given again: the cursor names the new file's number.
    b._followed[IDENT].cursor["obs-000001.jsonl"] = (new.st_ino, old[1], old[2])
    b._followed[IDENT].listed_key = None
    assert b.report(IDENT, 2)["observations"] == a.report(IDENT, 2)["observations"] == 30


def test_first_runs_off_among_calibrated_repeats_are_flagged_by_their_own_test():
    # 31 first runs in 1,000 twice as slow as predicted: all of them pooled, the drift test
    # reads 0.972 of them below the 0.99 quantile (p 1.4e-5 corrected, short of the 1e-5 a
    # check needs); the first runs alone, none of them below their median.
    y, q = _lognormal_quantiles(1000, seed=11)
    first = np.zeros(1000)
    first[::33] = 1.0
    y = np.where(first == 1.0, 2.0 * y, y)
    tracker = RollingAccuracy(window=1000)
    tracker.add(y, q, first_run=first)
    report = tracker.report(1e-3, 30)
    drift = report["drift"]
    # Reported, not acted on: ``drifted`` (retraining's cue) is the pooled test's.
    assert report["drifted"] is False and drift["corrected_p_value"] > drift["alpha_per_check"]
    assert report["drifted_by_kind"] == {"first_run": True, "repeat": False}
    kinds = drift["by_kind"]
    assert kinds["first_run"]["checked_window"] + kinds["repeat"]["checked_window"] == drift["checked_window"]
    assert kinds["first_run"]["checked_window"] == 31 and kinds["first_run"]["tested"] is True
    # Bonferroni over both kinds' levels.
    for got in kinds.values():
        assert got["corrected_p_value"] == min(1.0, 2 * len(MONITOR_LEVELS) * got["p_values"][got["worst_level"]])
    assert kinds["first_run"]["corrected_p_value"] < 1e-20
    # A kind with too few observations is not tested, and not counted in the other's correction.
    few = tracker.report(1e-3, 32)
    assert few["drifted_by_kind"] == {"first_run": False, "repeat": False} and few["drift"]["by_kind"]["first_run"]["tested"] is False
    repeat = few["drift"]["by_kind"]["repeat"]
    assert repeat["corrected_p_value"] == min(1.0, len(MONITOR_LEVELS) * repeat["p_values"][repeat["worst_level"]])
    # Calibrated runs of both kinds: neither flagged.
    y, _ = _lognormal_quantiles(1000, seed=12)
    calibrated = RollingAccuracy(window=1000)
    calibrated.add(y, q, first_run=first)
    assert calibrated.report(1e-3, 30)["drifted_by_kind"] == {"first_run": False, "repeat": False}
    # A model that does not tell them apart: no kinds in the report.
    plain = RollingAccuracy(window=1000)
    plain.add(y, q)
    assert "by_kind" not in plain.report(1e-3, 30)["drift"] and "drifted_by_kind" not in plain.report(1e-3, 30)


def test_a_version_with_a_model_per_kind_of_run_drifts_with_either_kind(tmp_path):
    # The observations above, made of a version with a model for each kind of run (each
    # calibrated on its own kind): its first runs' drift is its own, and decides.
    y, q = _lognormal_quantiles(1000, seed=11)
    first = np.zeros(1000)
    first[::33] = 1.0
    # 1.7 times slower: the first runs' own test drifts by a factor of 1e9 past its level, the
    # pooled one stays 1,000 times above it, wherever the checkpoint falls (it hangs on the
    # observations' times). At 2 times the pooled test drifted on 3 of 12 tries.
    y = np.where(first == 1.0, 1.7 * y, y)
    # The last observation a checkpoint: left to the wall clock, one time in about 300 the
    # last checkpoint fell where too few first runs were in, and nothing was tested.
    clock = clock_checking_at(y, len(y) - 1)
    monitor = AccuracyMonitor(ObservationLog(tmp_path), window=1000, clock=clock)
    monitor.record(IDENT, 1, [{"x": 1}] * 1000, y, q, first_run=first, kinds_apart=True)
    report = monitor.report(IDENT, 1)
    drift = report["drift"]
    assert report["drifted"] is True and drift["kinds_decide"] is True and drift["worst_kind"] == "first_run"
    # Bonferroni over every test run: all the runs and both kinds, eight levels each.
    worst = drift["by_kind"]["first_run"]["p_values"][drift["worst_level"]]
    assert drift["corrected_p_value"] == min(1.0, 3 * len(MONITOR_LEVELS) * worst)
    # Read back from the log (another worker, a restart): the same decision.
    assert AccuracyMonitor(ObservationLog(tmp_path), window=1000).report(IDENT, 1)["drifted"] is True
    # The same observations of one model for both kinds: reported, not decided on.
    other = AccuracyMonitor(ObservationLog(tmp_path / "other"), window=1000, clock=clock)
    other.record(IDENT, 1, [{"x": 1}] * 1000, y, q, first_run=first)
    assert other.report(IDENT, 1)["drifted"] is False and other.report(IDENT, 1)["drift"]["kinds_decide"] is False
    assert other.report(IDENT, 1)["drifted_by_kind"]["first_run"] is True


def test_an_observation_is_a_first_run_or_a_repeat_as_its_prediction_would_be(tmp_path):
    # README, POST /observe: its own first_of_shape, else its ts; without either, a first
    # run only of a shape training never ran.
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, cold_start_traces

    traces, firsts = cold_start_traces(400, seed=4)
    pattern = IdentityPattern.from_parts(IDENTITY)
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", retrain_in_worker=False))
    try:
        svc.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))

        def counts() -> tuple[int, int]:
            kinds = svc.accuracy(pattern)["by_kind"]
            return kinds["first_run"]["observations"], kinds["repeat"]["observations"]

        svc.observe(IDENTITY, traces)  # with their ts: the first runs they were
        assert sum(firsts) == 20 and counts() == (20, 380)
        svc.observe(IDENTITY, [{k: v for k, v in t.items() if k != "ts"} for t in traces])
        assert counts() == (20, 780)  # without: every shape ran in training, all repeats
        unseen = {"batch_size": 32, "image_size": 224, "load": 0.5, "runtime_ms": 700.0}
        svc.observe(IDENTITY, [unseen])
        assert counts() == (21, 780)
        svc.observe(IDENTITY, [{**traces[-1], "first_of_shape": True}, {**traces[0], "first_of_shape": False}])
        assert counts() == (22, 781)  # a stated flag over the ts
    finally:
        svc.close()


def test_an_observations_time_as_a_date_is_read_in_the_unit_of_the_models_timestamps(tmp_path):
    # Trained on milliseconds since the epoch, the same traces observed with their 'ts' as ISO
    # dates and times (seconds) were all first runs: (400, 0), the repeats' accuracy unknown.
    from datetime import datetime, timezone

    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, cold_start_traces

    traces, firsts = cold_start_traces(400, seed=4)
    epoch = 1_795_835_266.0
    pattern = IdentityPattern.from_parts(IDENTITY)
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", retrain_in_worker=False))
    try:
        svc.train(TrainConfig(model=IDENTITY, traces=[{**t, "ts": (epoch + t["ts"]) * 1e3} for t in traces],
                              algorithm="linear"))
        svc.observe(IDENTITY, [{**t, "ts": datetime.fromtimestamp(epoch + t["ts"], tz=timezone.utc).isoformat()}
                               for t in traces])
        kinds = svc.accuracy(pattern)["by_kind"]
        assert (kinds["first_run"]["observations"], kinds["repeat"]["observations"]) == (sum(firsts), 400 - sum(firsts))
    finally:
        svc.close()


def test_first_runs_and_repeats_are_scored_apart_where_the_model_tells_them(tmp_path):
    # Scored apart, and each kind with enough observations tested apart too (below: too few).
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, cold_start_traces

    traces, firsts = cold_start_traces(400, seed=4)
    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", retrain_in_worker=False))
    try:
        svc.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
        later, later_firsts = cold_start_traces(400, seed=5)
        observed = [{**{k: v for k, v in t.items() if k != "ts"}, "first_of_shape": first,
                     "runtime_ms": t["runtime_ms"] * (2.0 if first else 1.0)} for t, first in zip(later, later_firsts)]
        svc.observe(IDENTITY, observed)
        pattern = IdentityPattern.from_parts(IDENTITY)
        kinds = svc.accuracy(pattern)["by_kind"]
        assert kinds["first_run"]["observations"] == sum(later_firsts) and kinds["repeat"]["observations"] == 400 - sum(later_firsts)
        assert kinds["first_run"]["median_ratio"] == pytest.approx(2.0, rel=0.1)
        assert kinds["repeat"]["median_ratio"] == pytest.approx(1.0, rel=0.05)
        assert kinds["first_run"]["coverage"]["0.5"] < 0.2 and 0.3 < kinds["repeat"]["coverage"]["0.5"] < 0.7
        # Each kind tested on its own where it has enough observations: not the 20 first runs here.
        report = svc.accuracy(pattern)
        assert report["drift"]["by_kind"]["first_run"]["checked_window"] == 20 == sum(later_firsts)
        assert report["drift"]["by_kind"]["first_run"]["tested"] is False and report["drift"]["by_kind"]["repeat"]["tested"] is True
        assert report["drifted_by_kind"] == {"first_run": False, "repeat": False}
        # Read back from the log, as another worker or a restarted service reads it.
        again = PredictorService(svc.settings)
        try:
            assert again.accuracy(pattern)["by_kind"] == kinds
        finally:
            again.close()
        # A model without the first-run column has no kinds to tell.
        plain = {**IDENTITY, "model_name": "plain"}
        svc.train(TrainConfig(model=plain, traces=[{k: v for k, v in t.items() if k != "ts"} for t in traces],
                              algorithm="linear"))
        svc.observe(plain, observed)
        assert "by_kind" not in svc.accuracy(IdentityPattern.from_parts(plain))
    finally:
        svc.close()


def test_an_append_read_by_another_thread_and_rotated_away_before_its_own_look_counts_once(tmp_path, monkeypatch):
    # Between a thread's append and its own look, another thread of the process read the
    # append from the file, another worker's append rotated that file away, and another look
    # forgot the file: the appending thread then added its records from memory a second time.
    mine = AccuracyMonitor(ObservationLog(tmp_path, max_file_bytes=1, max_files=1))
    other = AccuracyMonitor(ObservationLog(tmp_path, max_file_bytes=1, max_files=1))
    y, q = _lognormal_quantiles(2)
    real_sync = AccuracyMonitor._sync
    raced = []

    def racing(self, state, own=None, own_records=None):
        if own is not None and not raced:
            raced.append(True)
            real_sync(self, state)  # another thread's look
            other.record(IDENT, 1, [{"x": 2}], y[1:], q[1:])  # rotates the file away
            real_sync(self, state)  # and another look
        return real_sync(self, state, own, own_records)

    monkeypatch.setattr(AccuracyMonitor, "_sync", racing)
    mine.record(IDENT, 1, [{"x": 1}], y[:1], q[:1])
    monkeypatch.setattr(AccuracyMonitor, "_sync", real_sync)
    assert raced and mine.report(IDENT, 1)["observations"] == 2
    assert list(mine.tracker(IDENT, 1).y) == y.tolist()


def test_the_calibration_test_passes_runtimes_drawn_from_their_quantiles_and_fails_others():
    rng = np.random.default_rng(5)
    levels = np.asarray(MONITOR_LEVELS)
    scale = rng.uniform(50, 500, 4000)
    q = scale[:, None] * np.exp(np.array([NormalDist().inv_cdf(t) for t in levels]) * 0.3)
    y = scale * np.exp(rng.normal(0, 0.3, 4000))
    calibrated = calibration_test(y, q)
    assert set(calibrated["p_values"]) == {f"{t:g}" for t in MONITOR_LEVELS}
    assert calibrated["corrected_p_value"] > 0.01
    assert calibrated["corrected_p_value"] == min(1.0, 8 * calibrated["p_values"][calibrated["worst_level"]])
    slow = calibration_test(y * 1.2, q)  # a fifth slower than predicted: the median covers about 27%
    assert slow["corrected_p_value"] < 1e-12 and slow["worst_level"] in ("0.25", "0.5", "0.75")
    # The accuracy of the same observations is the rolling window's, for a window that holds them all.
    window = RollingAccuracy(window=4000)
    window.add(y, q)
    nan = np.full(len(y), np.nan)
    assert accuracy_of(y, q, nan, nan, nan) == {k: v for k, v in window.report(1e-3, 30).items()
                                                if k in accuracy_of(y, q, nan, nan, nan)}


def test_an_accuracy_answer_s_figures_and_recent_are_of_the_same_observations(tmp_path, monkeypatch):
    # The report and the recent observations were taken in two looks at the log: an /observe
    # appended between them (by another thread or worker) was listed in recent, not counted
    # in the figures (observations 5, recent 6 runtimes).
    import threading

    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    svc = PredictorService(PredictorSettings(data_dir=tmp_path / "data", retrain_in_worker=False))
    try:
        svc.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(60), algorithm="linear"))
        svc.observe(IDENTITY, make_llm_traces(5, seed=1))
        appended, asking = threading.Event(), threading.current_thread()
        real_append, real_report = svc.monitor.log.append, RollingAccuracy.report

        def append(*args, **kwargs):
            try:
                return real_append(*args, **kwargs)
            finally:
                appended.set()

        def report(self, *args):
            if threading.current_thread() is asking and not appended.is_set():
                # Another request's observation is appended while this answer is made.
                threading.Thread(target=svc.observe, args=(IDENTITY, make_llm_traces(1, seed=2)), daemon=True).start()
                appended.wait(10)
            return real_report(self, *args)

        monkeypatch.setattr(svc.monitor.log, "append", append)
        monkeypatch.setattr(RollingAccuracy, "report", report)
        answer = svc.accuracy(IdentityPattern.from_parts(IDENTITY))
        assert appended.is_set()
        assert len(answer["recent"]["runtime_ms"]) == answer["window"] == answer["observations"] == 5
    finally:
        svc.close()
