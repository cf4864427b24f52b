"""ModelIdentity / IdentityPattern: construction, keys, directory names, matching."""

from __future__ import annotations

import re

import pytest

from swarmpilot_predictor.identity import (
    IDENTITY_KEYS,
    WILDCARD,
    IdentityPattern,
    ModelIdentity,
    has_control_characters,
)

PARTS = {
    "model_type": "llm",
    "model_name": "Qwen/Qwen2.5-7B",
    "hardware": "NVIDIA H100 80GB HBM3",
    "software_name": "sglang",
    "software_version": "0.4.0",
}


def test_from_parts_round_trips_through_as_dict():
    ident = ModelIdentity.from_parts(PARTS)
    assert ident.as_dict() == PARTS
    assert ident.as_tuple() == tuple(PARTS[k] for k in IDENTITY_KEYS)
    assert ident.key == "llm/Qwen%2FQwen2.5-7B/NVIDIA H100 80GB HBM3/sglang/0.4.0"


def test_keys_name_one_identity_each_and_read_back_as_its_parts():
    """Joined as they are, these would share the key llm/Qwen/Q7/A100/vllm/1 (and their
    metrics series and counts)."""
    from swarmpilot_predictor.client import identity_parts

    a = ModelIdentity("llm", "Qwen/Q7", "A100", "vllm", "1")
    b = ModelIdentity("llm/Qwen", "Q7", "A100", "vllm", "1")
    c = ModelIdentity("llm", "Qwen%2FQ7", "A100", "vllm", "1")  # a literal '%2F' in a name
    assert len({a.key, b.key, c.key}) == 3
    assert a.key == "llm/Qwen%2FQ7/A100/vllm/1" and c.key == "llm/Qwen%252FQ7/A100/vllm/1"
    for ident in (a, b, c, ModelIdentity.from_parts(PARTS)):
        assert identity_parts(ident.key) == list(ident.as_tuple())
        assert IdentityPattern(*ident.as_tuple()).describe() == ident.key


def test_from_parts_stringifies_and_ignores_extra_keys():
    ident = ModelIdentity.from_parts({**PARTS, "software_version": 4, "input_tokens": 10})
    assert ident.software_version == "4"
    assert "input_tokens" not in ident.as_dict()


@pytest.mark.parametrize("missing", ["model_type", "hardware", "software_version"])
def test_from_parts_names_missing_parts(missing):
    parts = dict(PARTS)
    parts[missing] = ""
    with pytest.raises(ValueError, match=missing):
        ModelIdentity.from_parts(parts)
    del parts[missing]
    with pytest.raises(ValueError, match=missing):
        ModelIdentity.from_parts(parts)


def test_identity_is_hashable_and_compares_by_value():
    a = ModelIdentity.from_parts(PARTS)
    b = ModelIdentity(*a.as_tuple())
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1


def test_model_info_uses_seed_field_names():
    info = ModelIdentity.from_parts(PARTS).model_info()
    assert info == {
        "type": "llm",
        "name": "Qwen/Qwen2.5-7B",
        "hardware": "NVIDIA H100 80GB HBM3",
        "software_name": "sglang",
        "software_version": "0.4.0",
    }


def test_dirname_is_filesystem_safe():
    name = ModelIdentity.from_parts({**PARTS, "model_name": "../../etc/passwd", "hardware": "a\\b:c*?<>|"}).dirname
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
    assert "/" not in name
    assert not name.startswith(".")


def test_dirname_keeps_distinct_identities_apart():
    # Both sanitise to the same readable prefix; the hash must separate them.
    a = ModelIdentity.from_parts({**PARTS, "model_name": "Qwen/Qwen2.5-7B"})
    b = ModelIdentity.from_parts({**PARTS, "model_name": "Qwen Qwen2.5-7B"})
    assert a.dirname.rsplit("__", 1)[0] == b.dirname.rsplit("__", 1)[0]
    assert a.dirname != b.dirname
    # and it is stable (the registry finds models by it after a restart)
    assert a.dirname == ModelIdentity.from_parts(dict(a.as_dict())).dirname


def test_dirname_separator_cannot_be_forged():
    # Moving text between parts must change the identity's directory.
    a = ModelIdentity("a", "b_c", "h", "s", "1")
    b = ModelIdentity("a_b", "c", "h", "s", "1")
    assert a.dirname != b.dirname


def test_pattern_from_segments_treats_wildcard_and_empty_as_unspecified():
    p = IdentityPattern.from_segments("llm", WILDCARD, "A100", "", "0.4.0")
    assert p.as_tuple() == ("llm", None, "A100", None, "0.4.0")
    assert not p.is_complete()
    assert p.describe() == "llm/*/A100/*/0.4.0"


def test_pattern_from_parts():
    p = IdentityPattern.from_parts({"model_type": "llm", "hardware": "*", "software_name": None})
    assert p.as_tuple() == ("llm", None, None, None, None)
    full = IdentityPattern.from_parts(PARTS)
    assert full.is_complete()
    assert full.describe() == ModelIdentity.from_parts(PARTS).key


def test_pattern_matching():
    ident = ModelIdentity.from_parts(PARTS)
    assert IdentityPattern().matches(ident)
    assert IdentityPattern(model_type="llm", hardware="NVIDIA H100 80GB HBM3").matches(ident)
    assert IdentityPattern.from_parts(PARTS).matches(ident)
    assert not IdentityPattern(model_type="llm", hardware="A100").matches(ident)
    assert not IdentityPattern(model_name="Qwen").matches(ident)  # no prefix matching
    assert not IdentityPattern(model_type="LLM").matches(ident)  # case-sensitive


def test_a_traces_identity_field_names_a_part_as_the_same_string_or_number():
    from swarmpilot_predictor.identity import names_part

    assert names_part("A100", "A100") and not names_part("a100", "A100")
    assert names_part(2.4, "2.4") and names_part(2, "2.0") and not names_part("2", "2.0")
    assert not names_part(2.4, "2.4.1") and not names_part(["A100"], "A100")
    assert names_part(True, "true") and names_part(True, "1") and names_part(False, "0") and not names_part(True, "0")


def test_only_scalars_in_a_trace_name_a_model():
    from swarmpilot_predictor.identity import ModelIdentity, identity_conflicts

    model = ModelIdentity("llm", "m", "A100", "vllm", "2.0")
    traces = [{"hardware": ["B200"]}, {"hardware": {"x": 1}}, {"hardware": "B200"}, {"software_version": 2}, {}]
    assert identity_conflicts(traces, model) == [None, None, "the trace's hardware 'B200' names another model than "
                                                 "llm/m/A100/vllm/2.0", None, None]


def test_a_pattern_collects_what_the_traces_state_for_its_open_parts():
    pattern = IdentityPattern.from_segments("llm", "*", "*", "sglang", "*")
    traces = [{"hardware": "A100", "model_name": "x"}, {"hardware": "A100", "model_name": "y"}, {"x": 1}, "junk"]
    assert pattern.stated_by(traces) == {"hardware": ["A100"], "model_name": ["x", "y"]}
    assert IdentityPattern.from_segments("llm", "q", "H100", "s", "1").stated_by(traces) == {}  # nothing left open
    assert pattern.stated_by([{"software_version": 2}, {"software_version": 2}, {"software_version": "2"}]) == {
        "software_version": [2, "2"]}
    assert pattern.stated_by([{"hardware": ["A100"]}, {"hardware": True}]) == {"hardware": [True]}


def test_names_that_would_display_as_other_names_hold_control_characters():
    # Line breaks (C0, C1 and Unicode's) split a listing's row; a bidirectional override or
    # a zero-width space makes a key display as another's. Joiners belong to scripts and emoji.
    for bad in ("a\nb", "a\x7f", "a\x85b", "a\u2028b", "a\u2029b", "llama\u202e2.1", "a\u2066b", "h\u200b100",
                "\ufeffh100", "a\u00adb"):
        assert has_control_characters(bad), repr(bad)
    for good in ("H100 SXM", "NVIDIA H100 80GB HBM3", "Qwen/Qwen2.5-7B", "\u00a0A100", "модель", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0645",
                 "\U0001f468\u200d\U0001f4bb", "版本"):
        assert not has_control_characters(good), repr(good)
