"""The five strings that name a runtime model, and how they appear on disk and in URLs."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import cut, shown

IDENTITY_KEYS = ("model_type", "model_name", "hardware", "software_name", "software_version")
_IDENTITY_SET = frozenset(IDENTITY_KEYS)
# What true and false name, as training reads them (1 or 0).
BOOLEAN_PART_NAMES = {True: ("true", "1"), False: ("false", "0")}
WILDCARD = "*"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


IDENTITY_PART_MAX = 200
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The joiners that scripts (Persian, Indic) and emoji sequences need; the other invisible
# format characters are refused.
_JOINERS = frozenset("\u200c\u200d")


def has_control_characters(name: str) -> bool:
    """Whether ``name`` holds what no name the service files or lists may hold (model identity
    parts, table names): a control character (C0 or C1), Unicode's line or paragraph
    separator, or an invisible format character.

    A line break in a name splits its row in every listing and log line; a bidirectional
    override makes ``llama\u202e`` plus more display as another model's key, and a zero-width
    space makes two names look the same, on the dashboard and in the CLI's tables alike.
    """
    if name.isascii():
        return _ASCII_CONTROL.search(name) is not None
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c not in _JOINERS for c in name)


def identity_part_problem(value: str) -> str | None:
    """Why ``value`` cannot name an identity part (None if it can): every model must be
    addressable by a URL whose segments are its five parts."""
    if value == "":
        return "an identity part cannot be empty"
    if not value.strip():
        # A client could not tell it from an empty part (ours refuses it as one).
        return "an identity part cannot be blank (only whitespace)"
    if has_control_characters(value):
        return f"an identity part cannot hold control or invisible format characters, got {shown(value)}"
    if len(value) > IDENTITY_PART_MAX:
        # A URL line has a length limit too: a model named by a megabyte could not be deleted.
        return f"an identity part is at most {IDENTITY_PART_MAX} characters, got {len(value):,}"
    if value == WILDCARD:
        return f"'{WILDCARD}' is the wildcard of model URLs and cannot name an identity part"
    if value in (".", ".."):
        # Browsers and HTTP clients resolve dot segments in a path: /models/a/../b is /models/b.
        return f"{shown(value)} is a relative path segment in URLs and cannot name an identity part"
    return None


def names_part(value: object, part: str) -> bool:
    """Whether a trace's identity field ``value`` names the identity part ``part``: the same
    string, or the same number (a version written 2.4 in a trace, "2.4" in the model)."""
    if isinstance(value, str):
        return value == part
    if isinstance(value, bool):  # as training reads it: 1 or 0
        return part.lower() in BOOLEAN_PART_NAMES[value]
    if isinstance(value, (int, float)):
        try:
            return float(part) == float(value)
        except (ValueError, OverflowError):
            return False
    return False


def stated_keys(traces: list) -> frozenset[str]:
    """The identity keys any of these traces (dicts) states."""
    if len(traces) == 1:  # a lone prediction's path: no set built
        t = traces[0]
        return _IDENTITY_SET.intersection(t) if isinstance(t, dict) and not _IDENTITY_SET.isdisjoint(t) else frozenset()
    return _IDENTITY_SET.intersection(_keys_of(traces))


_NAMING_KEYS = _IDENTITY_SET | {"input_feature"}


def names_a_model(traces: list) -> bool:
    """Whether any of these traces states an identity field, also inside SwarmPilot's
    structured form (``input_feature``)."""
    return not _NAMING_KEYS.isdisjoint(_keys_of(traces))


def _keys_of(traces: list) -> set:
    """Every key of these traces (dicts), in one pass in C."""
    try:
        return set().union(*traces)
    except TypeError:  # a trace that is not an object (its error is the prediction's to give)
        return set().union(*(t for t in traces if isinstance(t, dict)))


def identity_conflicts(traces: list, identity: "ModelIdentity") -> list[str | None] | None:
    """Per trace, why the identity fields it states say it belongs to another model than
    ``identity`` (None where they do not); None for all when no trace states any."""
    keys = stated_keys(traces)
    if not keys:
        return None
    out: list[str | None] = [None] * len(traces)
    for key in IDENTITY_KEYS:
        if key not in keys:
            continue
        part = getattr(identity, key)
        for i, t in enumerate(traces):
            v = t.get(key) if isinstance(t, dict) else None
            # A list or an object names nothing (training reads it as not stated).
            if isinstance(v, (str, int, float)) and out[i] is None and not names_part(v, part):
                out[i] = f"the trace's {key} {shown(v)} names another model than {identity.key}"
    return out


def join_key(parts: Sequence[str | None]) -> str:
    """Identity parts as one key: each part's ``%`` and ``/`` percent-encoded, the rest as is,
    joined by ``/``; an unspecified part (None) is ``*``."""
    return "/".join(WILDCARD if p is None else p.replace("%", "%25").replace("/", "%2F") for p in parts)


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    model_type: str
    model_name: str
    hardware: str
    software_name: str
    software_version: str
    # A dictionary key several times per prediction: hash once.
    _hash: int = field(init=False, repr=False, compare=False)
    _key: str = field(init=False, repr=False, compare=False)
    # Computed once, when first asked: the registry asks it of every model after each change.
    _dirname: str | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self.as_tuple()))
        object.__setattr__(self, "_key", join_key(self.as_tuple()))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def from_parts(cls, parts: dict[str, object]) -> "ModelIdentity":
        missing = [k for k in IDENTITY_KEYS if parts.get(k) in (None, "")]
        if missing:
            raise ValueError(f"model identity is missing {', '.join(missing)}")
        return cls(**{k: str(parts[k]) for k in IDENTITY_KEYS})

    def as_dict(self) -> dict[str, str]:
        return dict(zip(IDENTITY_KEYS, self.as_tuple()))

    def as_tuple(self) -> tuple[str, ...]:
        # Spelled out: this runs several times per prediction.
        return (self.model_type, self.model_name, self.hardware, self.software_name, self.software_version)

    @property
    def key(self) -> str:
        """The one string that names this identity, e.g. ``llm/Qwen%2FQwen2.5-7B/A100/vllm/0.4.0``.

        The parts joined by ``/``, each with its ``%`` and ``/`` percent-encoded: joined as
        they are, ``llm/Qwen/Q7/...`` would name two models (``Qwen/Q7`` or ``llm/Qwen``),
        whose metrics, counts and listings would merge. The client, the CLI and the URL
        routes read it back as the same five parts.
        """
        return self._key

    @property
    def dirname(self) -> str:
        """A file-system-safe, collision-free directory name for this identity.

        The readable prefix helps people browsing the data directory; the hash
        keeps two identities that sanitise to the same prefix apart.
        """
        if self._dirname is None:
            readable = "__".join(_SAFE.sub("-", p)[:40] for p in self.as_tuple())
            digest = hashlib.sha256("\x1f".join(self.as_tuple()).encode()).hexdigest()[:12]
            object.__setattr__(self, "_dirname", f"{readable}__{digest}")
        return self._dirname

    def model_info(self) -> dict[str, str]:
        """The seed's ``model_info`` object."""
        return {
            "type": self.model_type,
            "name": self.model_name,
            "hardware": self.hardware,
            "software_name": self.software_name,
            "software_version": self.software_version,
        }


@dataclass(frozen=True, slots=True)
class IdentityPattern:
    """A possibly partial identity: ``None`` (or ``*`` in a URL) matches anything."""

    model_type: str | None = None
    model_name: str | None = None
    hardware: str | None = None
    software_name: str | None = None
    software_version: str | None = None

    @classmethod
    def from_segments(cls, *segments: str) -> "IdentityPattern":
        return cls(*(None if s in (WILDCARD, "") else s for s in segments))

    @classmethod
    def from_parts(cls, parts: dict[str, object]) -> "IdentityPattern":
        return cls(**{k: (None if parts.get(k) in (None, "", WILDCARD) else str(parts[k])) for k in IDENTITY_KEYS})

    def matches(self, identity: ModelIdentity) -> bool:
        return all(
            want is None or want == getattr(identity, k)
            for k, want in zip(IDENTITY_KEYS, self.as_tuple())
        )

    def as_tuple(self) -> tuple[str | None, ...]:
        return (self.model_type, self.model_name, self.hardware, self.software_name, self.software_version)

    def is_complete(self) -> bool:
        return all(v is not None for v in self.as_tuple())

    def describe(self) -> str:
        """The pattern for a message, each part cut short (a request's path may be long)."""
        return join_key(tuple(None if p is None else cut(p) for p in self.as_tuple()))

    def stated_by(self, traces: list) -> dict[str, list[object]]:
        """For each part this pattern leaves unspecified, the distinct values the traces state
        for it (strings, numbers and booleans; a list or an object names nothing)."""
        out: dict[str, list[object]] = {}
        for key in stated_keys(traces):
            if getattr(self, key) is not None:
                continue
            values: list[object] = []
            seen: set[tuple[type, object]] = set()  # (a scan of the values found: 20,000 traces took 10 s)
            for t in traces:
                v = t.get(key) if isinstance(t, dict) else None
                if isinstance(v, (str, int, float)) and (kv := (type(v), v)) not in seen:
                    seen.add(kv)
                    values.append(v)
            if values:
                out[key] = values
        return out


C = TypeVar("C")


def named_by_traces(stated: dict[str, list[object]], candidates: Sequence[C],
                    parts: Callable[[C], tuple[str | None, ...]]) -> tuple[list[C], list[C]]:
    """Of ``candidates`` (models, or a lookup table's identities; ``parts`` gives their five
    parts), those that every value in ``stated`` (:meth:`IdentityPattern.stated_by`) names,
    and those that some value of each stated part names. A part a candidate leaves out
    (None: a table's record that answers for any value of it) is named by any value."""
    cols = [(IDENTITY_KEYS.index(key), values) for key, values in stated.items()]

    def naming(candidate: C, test: Callable[..., bool]) -> bool:
        have = parts(candidate)
        return all(have[j] is None or test(names_part(v, have[j]) for v in values) for j, values in cols)

    return [c for c in candidates if naming(c, all)], [c for c in candidates if naming(c, any)]


def describe_stated(stated: dict[str, list[object]], most: int = 5) -> str:
    """:meth:`IdentityPattern.stated_by`'s values for a message (``hardware 'A100' and
    'T4'``), at most ``most`` of each part's: a batch may state thousands."""
    return ", ".join(f"{key} {' and '.join(map(shown, values[:most]))}"
                     + (f" and {len(values) - most} more" if len(values) > most else "")
                     for key, values in stated.items())


def fields_naming_a_model(trace: object) -> dict[str, object]:
    """What of a trace that could not be read still names its model: its own fields, beside
    SwarmPilot's structured form (anything but an object names nothing)."""
    return {k: v for k, v in trace.items() if k != "input_feature"} if isinstance(trace, dict) else {}
