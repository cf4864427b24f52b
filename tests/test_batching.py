"""The single-prediction batcher: requests of one event-loop turn evaluated together, each
with the answer it would have had alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from .conftest import IDENTITY, make_llm_traces


def test_single_request_batcher_answers_the_first_at_once_and_batches_the_rest(tmp_path):
    from swarmpilot_predictor.batching import SingleRequestBatcher
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    class RecordingService(PredictorService):
        """The real service, noting how many traces each evaluation got."""

        calls: list[tuple[str, int]] = []

        def predict(self, pattern, traces, *args, **kwargs):
            self.calls.append(("predict", len(traces)))
            return super().predict(pattern, traces, *args, **kwargs)

        def predict_each(self, pattern, traces, *args, **kwargs):
            self.calls.append(("predict_each", len(traces)))
            return super().predict_each(pattern, traces, *args, **kwargs)

    svc = RecordingService(PredictorSettings(data_dir=tmp_path / "data", cache_size=0))
    svc.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(150), algorithm="linear"))
    pattern = IdentityPattern.from_parts(IDENTITY)
    traces = [{"input_tokens": 10 * i + 1, "output_tokens": i + 1} for i in range(6)]

    async def scenario():
        batcher = SingleRequestBatcher(svc)
        alone = await batcher.predict(pattern, traces[0], 0.95, None)
        await asyncio.sleep(0)  # a later loop turn: a lone request again
        svc.calls.clear()
        together = await asyncio.gather(*(batcher.predict(pattern, t, 0.95, None) for t in traces))
        return alone, together

    alone, together = asyncio.run(scenario())
    # The first of the turn is evaluated at once; the five others in one batch.
    assert svc.calls[0] == ("predict", 1)
    assert ("predict_each", 5) in svc.calls
    for trace, pred in zip(traces, together):
        want = svc.predict(pattern, [trace])
        assert pred.quantiles[0] == pytest.approx(want.quantiles[0], rel=1e-9)
    assert alone.quantiles[0] == pytest.approx(together[0].quantiles[0], rel=1e-12)
    svc.close()


def test_one_request_s_unexpected_failure_is_not_its_batch_neighbours(tmp_path):
    # Single predictions of one event-loop turn are evaluated together; an exception
    # that escapes for one of them (a bug, say) fails that request alone.
    from swarmpilot_predictor.batching import SingleRequestBatcher
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    service = PredictorService(PredictorSettings(data_dir=tmp_path / "data", cache_size=0))
    try:
        service.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(150), algorithm="linear"))
        real = service.predict_each

        def predict_each(pattern, traces, *args):
            if any("boom" in t for t in traces):
                raise RuntimeError("boom")
            return real(pattern, traces, *args)

        service.predict_each = predict_each
        batcher = SingleRequestBatcher(service)
        pattern = IdentityPattern.from_parts(IDENTITY)
        traces = [{"input_tokens": 10 * i + 1, "output_tokens": i + 1} for i in range(6)]
        traces[3]["boom"] = 1

        async def together():
            return await asyncio.gather(*(batcher.predict(pattern, t, 0.9, None) for t in traces), return_exceptions=True)

        answers = asyncio.run(together())
        assert isinstance(answers[3], RuntimeError)
        for i in (0, 1, 2, 4, 5):
            want = service.predict(pattern, [traces[i]], 0.9).quantiles[0]
            assert np.allclose(answers[i].quantiles[0], want, rtol=1e-6)
    finally:
        service.close()


def test_a_single_request_is_answered_by_the_version_or_the_model_it_names(tmp_path):
    # The one-trace route's dispatch: a version asked for by number is evaluated alone, a
    # pattern that matches two models is resolved by the trace's identity fields, and a
    # model not yet in memory is loaded first.
    from swarmpilot_predictor.batching import SingleRequestBatcher
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import PredictSingleRequest, TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    other = {**IDENTITY, "hardware": "A100"}
    settings = PredictorSettings(data_dir=tmp_path / "data", cache_size=0)
    trainer = PredictorService(settings)
    try:
        trainer.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(150), algorithm="linear"))
        trainer.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(150, seed=1), algorithm="linear"))
        trainer.train(TrainConfig(model=other, traces=[{**t, "runtime_ms": 9 * t["runtime_ms"]}
                                                       for t in make_llm_traces(150, seed=2)], algorithm="linear"))
    finally:
        trainer.close()
    service = PredictorService(settings)  # a fresh process: no model in memory yet
    try:
        batcher = SingleRequestBatcher(service)
        trace = {"input_tokens": 300, "output_tokens": 40}
        exact = IdentityPattern.from_parts(IDENTITY)
        assert service.is_cold(exact)
        wildcard = IdentityPattern.from_parts({**IDENTITY, "hardware": "*"})

        async def answers():
            first = await batcher.answer(exact, PredictSingleRequest(trace=trace, version=1))
            named = await batcher.answer(wildcard, PredictSingleRequest(trace={**trace, "hardware": "A100"}))
            latest = await batcher.answer(exact, PredictSingleRequest(trace=trace))
            return first, named, latest

        first, named, latest = asyncio.run(answers())
        assert first.quantiles[0] == pytest.approx(service.predict(exact, [trace], version=1).quantiles[0], rel=1e-12)
        assert latest.quantiles[0] == pytest.approx(service.predict(exact, [trace]).quantiles[0], rel=1e-12)
        assert not np.allclose(first.quantiles[0], latest.quantiles[0])  # two versions, two answers
        on_a100 = service.predict(IdentityPattern.from_parts(other), [trace]).quantiles[0]
        assert named.quantiles[0] == pytest.approx(on_a100, rel=1e-12)
        assert not service.is_cold(exact)
    finally:
        service.close()


def test_single_requests_with_a_deadline_are_evaluated_together_by_deadline(tmp_path):
    # A deadline no longer sends a request off alone: requests of one turn with the same
    # options and deadline are evaluated together, each with the answer it has alone.
    from swarmpilot_predictor.batching import SingleRequestBatcher
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import PredictSingleRequest, TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    class RecordingService(PredictorService):
        calls: list[tuple[str, int, float | None]] = []

        def predict(self, pattern, traces, *args, **kwargs):
            self.calls.append(("predict", len(traces), kwargs.get("deadline_ms")))
            return super().predict(pattern, traces, *args, **kwargs)

        def predict_each(self, pattern, traces, *args, **kwargs):
            self.calls.append(("predict_each", len(traces), args[2] if len(args) > 2 else kwargs.get("deadline_ms")))
            return super().predict_each(pattern, traces, *args, **kwargs)

    svc = RecordingService(PredictorSettings(data_dir=tmp_path / "data", cache_size=0))
    try:
        svc.train(TrainConfig(model=IDENTITY, traces=make_llm_traces(150), algorithm="linear"))
        pattern = IdentityPattern.from_parts(IDENTITY)
        traces = [{"input_tokens": 10 * i + 1, "output_tokens": 40 * i + 1} for i in range(6)]
        deadlines = [2000.0, 2000.0, 2000.0, 3000.0, 3000.0, None]

        async def together():
            batcher = SingleRequestBatcher(svc)
            return await asyncio.gather(*(batcher.answer(pattern, PredictSingleRequest(trace=t, deadline_ms=d))
                                          for t, d in zip(traces, deadlines)))

        answers = asyncio.run(together())
        # The first at once; the others in one evaluation for each deadline (and none).
        assert svc.calls[0] == ("predict", 1, 2000.0)
        assert {d: n for kind, n, d in svc.calls if kind == "predict_each"} == {2000.0: 2, 3000.0: 2, None: 1}
        assert len(svc.calls) == 4
        svc.calls.clear()
        for trace, deadline, pred in zip(traces, deadlines, answers):
            want = svc.predict(pattern, [trace], deadline_ms=deadline).single_response()["results"]
            assert pred.single_response()["results"] == want
        assert "deadline_probability" not in answers[-1].results()[0]
        assert 0.0 < answers[3].results()[0]["deadline_probability"] < 1.0
    finally:
        svc.close()
