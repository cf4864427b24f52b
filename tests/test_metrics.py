"""Prometheus metrics when several worker processes share one port."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import quote

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarmpilot_predictor.identity import ModelIdentity

WORKER = """
import sys
from swarmpilot_predictor.metrics import PredictorMetrics

m = PredictorMetrics()
assert m.multiprocess_dir is not None
m.count_predictions("llm/a", "model", int(sys.argv[1]), 1)
m.count_predictions("llm/deleted", "model", 5)
m.count_predictions("table:t", "lookup_table", 2)
m.count_predictions("table:gone", "lookup_table", 2)
m.observe_request("/health", "GET", 200, 0.001)
m.models_loaded.set(2)
"""

SCRAPE = """
from swarmpilot_predictor.metrics import PredictorMetrics

m = PredictorMetrics()
m.models_loaded.set(1)
m.set_live_models({"llm/a", "table:t"})
m.set_accuracy("llm/a", 3, {"coverage": {"0.5": 0.5}, "drifted": False})
print(m.render()[0].decode())
"""


def _samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_scrape_counts_every_worker_and_leaves_out_deleted_models(tmp_path):
    # prometheus_client chooses its multi-process mode at import, from the environment
    # (`serve --workers N` sets it): each "worker" here is a process of its own.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in (3, 4):
        subprocess.run([sys.executable, "-c", WORKER, str(n)], env=env, check=True, timeout=60)
    out = subprocess.run([sys.executable, "-c", SCRAPE], env=env, check=True, timeout=60, capture_output=True, text=True)
    got = _samples(out.stdout)
    assert got[("predictor_predictions_total", (("model", "llm/a"), ("source", "model")))] == 7.0
    assert got[("predictor_prediction_errors_total", (("model", "llm/a"),))] == 2.0
    assert got[("predictor_predictions_total", (("model", "table:t"), ("source", "lookup_table")))] == 4.0
    assert got[("predictor_http_requests_total", (("method", "GET"), ("route", "/health"), ("status", "200")))] == 2.0
    # A model no longer in the registry: its shared counters are not scraped.
    assert not any(dict(labels).get("model") in ("llm/deleted", "table:gone") for _, labels in got)
    # Models in memory: the live workers' (the two that exited are dropped), not the dead ones'.
    assert got[("predictor_models_loaded", ())] == 1.0
    assert got[("predictor_model_coverage_ratio", (("level", "0.5"), ("model", "llm/a")))] == 0.5
    assert got[("predictor_model_drifted", (("model", "llm/a"),))] == 0.0
    # Memory, CPU and open files: one series per live worker (here the scraping process
    # only), labelled with its pid; the collector of the process answering would say its own.
    memory = {dict(labels)["pid"]: v for (name, labels), v in got.items() if name == "process_resident_memory_bytes"}
    assert len(memory) == 1 and next(iter(memory.values())) > 1e6
    assert [name for name, labels in got if name == "process_open_fds"] == ["process_open_fds"]


def test_one_process_keeps_its_own_registry_and_removes_a_deleted_model_s_series():
    from swarmpilot_predictor.metrics import PredictorMetrics

    a, b = PredictorMetrics(), PredictorMetrics()
    assert a.multiprocess_dir is None
    a.count_predictions("llm/a", "model", 3)
    a.set_accuracy("llm/a", 1, {"coverage": {"0.9": 0.875}, "relative_pinball_loss": 0.05, "drifted": True,
                                "drifted_by_kind": {"first_run": True, "repeat": False}})
    got = _samples(a.render()[0].decode())
    assert got[("predictor_model_kind_drifted", (("kind", "first_run"), ("model", "llm/a")))] == 1.0
    assert got[("predictor_model_kind_drifted", (("kind", "repeat"), ("model", "llm/a")))] == 0.0
    # Its HELP says what the README's table does: a version with a model for each kind of
    # run drifts with either kind (retraining follows), any other reports the kinds only.
    help_line = next(line for line in a.render()[0].decode().splitlines()
                     if line.startswith("# HELP predictor_model_kind_drifted "))
    assert "where it has a model for each kind of run, reported only otherwise" in help_line
    assert got[("predictor_predictions_total", (("model", "llm/a"), ("source", "model")))] == 3.0
    assert got[("predictor_model_coverage_ratio", (("level", "0.9"), ("model", "llm/a")))] == 0.875
    assert got[("predictor_model_relative_pinball_loss", (("model", "llm/a"),))] == 0.05
    assert got[("predictor_model_drifted", (("model", "llm/a"),))] == 1.0
    assert got[("process_resident_memory_bytes", ())] > 1e6 and got[("process_open_fds", ())] > 0
    assert got[("predictor_trainings_pending", ())] == 0
    assert not any(dict(labels).get("model") for _, labels in _samples(b.render()[0].decode()))
    a.forget_model("llm/a")
    assert not any(dict(labels).get("model") for _, labels in _samples(a.render()[0].decode()))


def test_models_in_memory_are_reported_as_they_load_not_only_at_a_scrape(tmp_path):
    # With several workers a scrape adds up each worker's last value: a worker the scrapes
    # never reach must still have said how many model versions it holds.
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    service = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    try:
        service.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(80), algorithm="linear"))
        fresh = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))  # another worker, nothing loaded
        try:
            fresh.predict(IdentityPattern.from_parts(IDENTITY), [{"input_tokens": 5, "output_tokens": 5}])
            got = _samples(fresh.metrics.render()[0].decode())  # the metrics alone: no scrape-time update
            assert got[("predictor_models_loaded", ())] == 1.0
            # ... and as they leave memory: deleted here, or by another worker and noticed at the
            # next look at the registry (both kept saying 1 until a load or a scrape).
            service.predict(IdentityPattern.from_parts(IDENTITY), [{"input_tokens": 5, "output_tokens": 5}])
            assert _samples(service.metrics.render()[0].decode())[("predictor_models_loaded", ())] == 1.0
            service.delete_model(IdentityPattern.from_parts(IDENTITY))
            assert _samples(service.metrics.render()[0].decode())[("predictor_models_loaded", ())] == 0.0
            fresh.list_models()
            assert _samples(fresh.metrics.render()[0].decode())[("predictor_models_loaded", ())] == 0.0
        finally:
            fresh.close()
    finally:
        service.close()


def test_a_model_deleted_by_another_worker_leaves_this_ones_memory_at_its_next_scrape(tmp_path):
    # Only the deleting worker let go of a model's windows of observations: every other worker
    # a scrape had reached kept them (up to PREDICTOR_ACCURACY_WINDOW each) for good.
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    data = tmp_path / "data"
    deleting = PredictorService(PredictorSettings(data_dir=data))
    other = PredictorService(PredictorSettings(data_dir=data, retrain_in_worker=False))
    try:
        deleting.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(80), algorithm="linear"))
        deleting.observe(IDENTITY, make_llm_traces(40, seed=2))
        other.render_metrics()  # follows the model's log, as every scrape does
        pattern = IdentityPattern.from_parts(IDENTITY)
        identity = other.registry.identities()[0]
        assert other.monitor.followed() == [identity]
        assert len(other.monitor.tracker(identity, 1).y) == 40
        assert other.retrain(pattern)["status"] in {"success", "kept"}  # its lock, its decisions read back
        other.retrainer.decisions.last(identity)
        assert other.retrainer.kept() == {identity}
        deleting.delete_model(pattern)
        assert deleting.monitor.followed() == [] and deleting.retrainer.kept() == set()
        other.render_metrics()
        assert other.monitor.followed() == [] and other.retrainer.kept() == set()
    finally:
        other.close()
        deleting.close()


def test_models_loaded_by_an_observation_or_a_table_are_reported_too(tmp_path):
    # Only the prediction path reported its loads: a worker that loaded a model for an
    # observation said 0 until a scrape reached it, and a scrape of another worker undercounted.
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    data = tmp_path / "data"
    traces = make_llm_traces(80)
    trainer = PredictorService(PredictorSettings(data_dir=data))
    try:
        trainer.train(TrainConfig(model=IDENTITY, traces=traces, algorithm="linear"))
    finally:
        trainer.close()
    (data / "t.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in traces))
    for use in ("observe", "table"):
        worker = PredictorService(PredictorSettings(data_dir=data))  # nothing loaded yet
        try:
            assert _samples(worker.metrics.render()[0].decode()).get(("predictor_models_loaded", ()), 0.0) == 0.0
            if use == "observe":
                worker.observe(IDENTITY, traces[:5])
            else:
                worker.generate_table(IdentityPattern.from_parts(IDENTITY), data / "t.jsonl", table_name="t.json")
            assert _samples(worker.metrics.render()[0].decode())[("predictor_models_loaded", ())] == 1.0, use
        finally:
            worker.close()


def _series(service, name: str) -> dict[str, float]:
    """``name``'s samples by their model label, as a scrape shows them."""
    got = _samples(service.render_metrics()[0].decode())
    return {dict(labels)["model"]: v for (n, labels), v in got.items() if n == name and "model" in dict(labels)}


def test_series_follow_the_models_and_tables_that_exist(tmp_path):
    """Two models whose parts joined by '/' read the same keep their own series; a deleted
    table's and model's series and counts go; traces no cache entry can hold are no misses."""
    import orjson

    from swarmpilot_predictor.identity import IdentityPattern, ModelIdentity
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    service = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    try:
        a = {**IDENTITY, "model_type": "llm", "model_name": "Qwen/Q7"}
        b = {**IDENTITY, "model_type": "llm/Qwen", "model_name": "Q7"}
        probe = [{"input_tokens": 50, "output_tokens": 5}]
        for parts, n in ((a, 3), (b, 5)):
            service.train(TrainConfig(model=parts, traces=make_llm_traces(80), algorithm="linear"))
            for _ in range(n):
                service.predict(IdentityPattern.from_parts(parts), probe)
        key_a, key_b = ModelIdentity.from_parts(a).key, ModelIdentity.from_parts(b).key
        assert _series(service, "predictor_predictions_total") == {key_a: 3.0, key_b: 5.0}
        assert service.describe_model(ModelIdentity.from_parts(a))["total_predictions"] == 3

        # A table's series live as long as the table.
        source = tmp_path / "queue.jsonl"
        source.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in make_llm_traces(20)))
        service.generate_table(IdentityPattern.from_parts(a), source, table_name="t.json")
        service.predict(IdentityPattern(), probe * 2, lookup_table=True, lookup_table_name="t.json")
        assert _series(service, "predictor_predictions_total")["table:t.json"] == 2.0
        service.tables.delete("t.json")
        assert "table:t.json" not in _series(service, "predictor_predictions_total")

        # A deleted model's count does not come back with a model trained again under its name.
        service.delete_model(IdentityPattern.from_parts(a))
        service.train(TrainConfig(model=a, traces=make_llm_traces(80), algorithm="linear"))
        assert service.describe_model(ModelIdentity.from_parts(a))["total_predictions"] == 0
        assert _series(service, "predictor_predictions_total") == {key_b: 5.0}

        # Coalesced single requests (12 and more are evaluated together): a trace whose
        # category is too long to cache is neither a hit nor a miss, as on its own.
        c = {**IDENTITY, "model_name": "with-a-category"}
        traces = make_llm_traces(80)
        for i, t in enumerate(traces):
            t["region"] = "eu" if i % 2 else "us"
        service.train(TrainConfig(model=c, traces=traces, algorithm="linear"))
        misses, stats = service.metrics.cache_misses._value.get(), service.cache.stats()["misses"]
        long_value = [{"input_tokens": 50, "output_tokens": 5, "region": "x" * 300}] * 12
        assert all(p.ok.all() for p in service.predict_each(IdentityPattern.from_parts(c), long_value))
        assert service.metrics.cache_misses._value.get() == misses and service.cache.stats()["misses"] == stats
        service.predict_each(IdentityPattern.from_parts(c),
                             [{"input_tokens": i, "output_tokens": 5, "region": "eu"} for i in range(1, 13)])
        assert service.metrics.cache_misses._value.get() == misses + 12 == service.cache.stats()["misses"] - stats + misses
    finally:
        service.close()


def test_a_model_s_table_generation_series_go_with_the_model_whoever_deletes_it(tmp_path):
    # Counted under the model but not as its predictions are, they stayed in this worker's
    # scrapes for good where it had not seen the model in one before another deleted it.
    from swarmpilot_predictor.identity import IdentityPattern, ModelIdentity
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    data = tmp_path / "data"
    deleting, other = PredictorService(PredictorSettings(data_dir=data)), PredictorService(PredictorSettings(data_dir=data))
    try:
        deleting.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(80), algorithm="linear"))
        source = tmp_path / "queue.jsonl"
        traces = [*make_llm_traces(10, seed=1), {"input_tokens": "many", "output_tokens": 5}]
        source.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in traces))
        pattern, key = IdentityPattern.from_parts(IDENTITY), ModelIdentity.from_parts(IDENTITY).key
        assert other.generate_table(pattern, source, table_name="t.json")["failed"] == 1
        counted = _samples(other.metrics.render()[0].decode())  # (no scrape: it would look at the models)
        assert counted[("predictor_predictions_total", (("model", key), ("source", "table_generation")))] == 10.0
        assert counted[("predictor_prediction_errors_total", (("model", key),))] == 1.0
        deleting.delete_model(pattern)
        assert _series(other, "predictor_predictions_total") == {}
        assert _series(other, "predictor_prediction_errors_total") == {}
    finally:
        other.close()
        deleting.close()


def test_serve_counts_from_zero_in_a_metrics_directory_an_earlier_run_left_files_in(tmp_path):
    # prometheus_client adds up every file in the directory: an operator's, not wiped between
    # runs, made a restarted service's first scrape say the run before's 3 trainings.
    import httpx

    from .conftest import run_server

    metrics = tmp_path / "metrics"
    earlier = "from swarmpilot_predictor.metrics import PredictorMetrics\n" \
              "PredictorMetrics().training_runs.labels('success').inc(3)"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    subprocess.run([sys.executable, "-c", earlier], env=env, check=True, timeout=60)  # an earlier run's worker
    left = len(os.listdir(metrics))
    args = [sys.executable, "-m", "swarmpilot_predictor", "serve", "--host", "127.0.0.1", "--port", "{port}",
            "--workers", "1", "--log-level", "warning"]
    with run_server(tmp_path / "data", extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics)}, args=args) as srv:
        text = httpx.get(srv.url + "/metrics", timeout=30).text
        assert 'predictor_http_requests_total{method="GET",route="/health",status="200"}' in text  # this run's
        assert "predictor_training_runs_total{" not in text
        srv.process.terminate()
        said = srv.process.communicate(timeout=30)[0].decode()
    assert f"removed {left} metric file(s) of processes no longer running from PROMETHEUS_MULTIPROC_DIR" in said
    # A file of the starting process's own id is an earlier run's too (a container's first
    # process has the same id at each start); a running process's is left alone.
    from swarmpilot_predictor.metrics import remove_exited_processes_files

    for pid in (os.getpid(), os.getppid()):
        (metrics / f"counter_{pid}.db").write_bytes(b"")
    before = len(os.listdir(metrics))  # (and the stopped server's)
    assert remove_exited_processes_files(str(metrics)) == before - 1
    assert os.listdir(metrics) == [f"counter_{os.getppid()}.db"]


def test_the_training_duration_histogram_times_the_trainings_that_succeeded_as_its_help_says(tmp_path):
    import pytest

    from swarmpilot_predictor.errors import PredictorError
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    service = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    try:
        result = service.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(80), algorithm="linear"))
        with pytest.raises(PredictorError):
            service.train(TrainConfig(model=IDENTITY, traces=[{"input_tokens": 1, "runtime_ms": -1}] * 5))
        text = service.metrics.render()[0].decode()
    finally:
        service.close()
    got = _samples(text)
    assert got[("predictor_training_runs_total", (("status", "success"),))] == 1.0
    assert got[("predictor_training_runs_total", (("status", "error"),))] == 1.0
    assert got[("predictor_training_duration_seconds_count", ())] == 1.0
    assert got[("predictor_training_duration_seconds_sum", ())] == result["duration_seconds"]
    assert "# HELP predictor_training_duration_seconds Duration of the training runs that succeeded." in text


def test_a_model_whose_last_version_is_deleted_starts_counting_again_from_zero(tmp_path):
    # Its counts stayed until a scrape noticed it gone: trained again before one, it started at 5.
    from swarmpilot_predictor.identity import IdentityPattern, ModelIdentity
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    from .conftest import IDENTITY, make_llm_traces

    service = PredictorService(PredictorSettings(data_dir=tmp_path / "data"))
    try:
        pattern, identity = IdentityPattern.from_parts(IDENTITY), ModelIdentity.from_parts(IDENTITY)
        for version in (1, 2):
            service.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(80), algorithm="linear"))
            assert service.describe_model(identity)["total_predictions"] == 0
            assert not any(n == "predictor_predictions_total" for n, _ in _samples(service.metrics.render()[0].decode()))
            for _ in range(5):
                service.predict(pattern, [{"input_tokens": 50, "output_tokens": 5}])
            assert service.describe_model(identity)["total_predictions"] == 5
            assert service.delete_model(pattern, version=version)["deleted_versions"] == [version]
    finally:
        service.close()


def _model_counts(text: str, key: str) -> dict[str, float]:
    """The per-model counters' values for ``key`` in a scrape, by name (a source's after a ':')."""
    out = {}
    for (name, labels), value in _samples(text).items():
        labels = dict(labels)
        if labels.get("model") == key and name.endswith("_total"):
            out[name + (":" + labels["source"] if "source" in labels else "")] = value
    return out


@pytest.mark.parametrize("workers", [2, 1])
def test_a_model_deleted_and_trained_again_counts_from_zero_with_several_workers_too(tmp_path, workers):
    # With several workers the shared files cannot drop a series: a deleted model's series were
    # left out of scrapes, but came back with a model trained again under its name, which then
    # read 20 predictions and 7 observations it never made (and /models' total_predictions 20),
    # where one worker started it at 0.
    import httpx

    from .conftest import IDENTITY, make_llm_traces, run_server, trained_in_process

    model = {**IDENTITY, "model_name": "alpha"}
    key, path = ModelIdentity.from_parts(model).key, "/".join(quote(model[k], safe="") for k in IDENTITY)
    data = trained_in_process(tmp_path / "data", {"model": model, "traces": make_llm_traces(100), "algorithm": "linear"})
    args = [sys.executable, "-m", "swarmpilot_predictor", "serve", "--host", "127.0.0.1", "--port", "{port}",
            "--workers", str(workers), "--log-level", "warning"]
    probe = {"trace": {"input_tokens": 100, "output_tokens": 10}}

    def fresh(method: str, url: str, **kw) -> httpx.Response:  # (a new connection: any worker answers)
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            r = http.request(method, url, **kw)
        assert r.status_code == 200, r.text
        return r

    def scraped() -> list[dict[str, float]]:  # what six scrapes (both workers) say of the model
        return [_model_counts(fresh("GET", "/metrics").text, key) for _ in range(6)]

    with run_server(data, args=args) as srv:
        for _ in range(20):
            fresh("POST", f"/predict/single/{path}", json=probe)
        fresh("POST", "/observe", json={"model": model, "traces": [{**probe["trace"], "runtime_ms": 150.0}] * 7})
        assert scraped() == [{"predictor_predictions_total:model": 20.0, "predictor_prediction_errors_total": 0.0,
                              "predictor_observations_total": 7.0}] * 6
        fresh("DELETE", f"/models/{path}")
        assert scraped() == [{}] * 6
        fresh("POST", "/train", json={"config": {"model": model, "traces": make_llm_traces(100), "algorithm": "linear"}})
        for _ in range(3):
            fresh("POST", f"/predict/single/{path}", json=probe)
        for counts in scraped():
            assert counts["predictor_predictions_total:model"] == 3.0
            assert counts.get("predictor_observations_total", 0.0) == 0.0
        listed = [fresh("GET", "/models").json()["models"][0]["models"][0]["total_predictions"] for _ in range(4)]
        assert listed == [3] * 4


@pytest.mark.parametrize("workers", [2, 1])
def test_a_table_deleted_and_made_again_counts_from_zero(tmp_path, workers):
    # "A table's series go when it is deleted, as a model's do": they went from the scrapes, but
    # a table made again under its name took up the deleted one's 10 lookups (with one worker
    # where no scrape came between the delete and the new table; with several, always).
    import httpx

    from .conftest import IDENTITY, make_llm_traces, run_server, trained_in_process

    path = "/".join(quote(IDENTITY[k], safe="") for k in IDENTITY)
    data = trained_in_process(tmp_path / "data", {"model": IDENTITY, "traces": make_llm_traces(100), "algorithm": "linear"})
    args = [sys.executable, "-m", "swarmpilot_predictor", "serve", "--host", "127.0.0.1", "--port", "{port}",
            "--workers", str(workers), "--log-level", "warning"]
    queue = b"".join(orjson.dumps({k: v for k, v in t.items() if k != "runtime_ms"}) + b"\n" for t in make_llm_traces(20))
    lookup = {"trace": {"input_tokens": 100, "output_tokens": 10}, "lookup_table": True, "lookup_table_name": "t.json"}

    def fresh(method: str, url: str, **kw) -> httpx.Response:  # (a new connection: any worker answers)
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            r = http.request(method, url, **kw)
        assert r.status_code == 200, r.text
        return r

    def looked_up() -> list[float]:  # what six scrapes (both workers) say of the table's lookups
        return [_model_counts(fresh("GET", "/metrics").text, "table:t.json").get(
            "predictor_predictions_total:lookup_table", 0.0) for _ in range(6)]

    with run_server(data, args=args) as srv:
        fresh("POST", f"/predict/table/{path}", files={"trace_file": ("q.jsonl", queue)}, data={"table_name": "t.json"})
        for _ in range(10):
            fresh("POST", f"/predict/single/{path}", json=lookup)
        assert looked_up() == [10.0] * 6
        fresh("DELETE", "/tables/t.json")
        fresh("POST", f"/predict/table/{path}", files={"trace_file": ("q.jsonl", queue)}, data={"table_name": "t.json"})
        assert looked_up() == [0.0] * 6
        for _ in range(2):
            fresh("POST", f"/predict/single/{path}", json=lookup)
        assert looked_up() == [2.0] * 6
