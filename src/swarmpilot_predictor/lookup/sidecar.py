"""Parsed-table sidecars: a table's parsed columns kept in an ``.npz`` file beside it.

:func:`save_index` writes one and :func:`load_index` reads it back (None where it is
missing, of another version or another file, or damaged), so a big table is parsed once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import orjson

from ..atomic import atomic_file, regular_file_fd
from .table import FeatureColumn, LookupTable

# The package's logger: records keep the name they had before the split (swarmpilot_predictor.lookup).
log = logging.getLogger(__package__)

# Version of the sidecar layout, or of what parsing makes of a table (2: crossing quantiles
# rearranged, intervals checked; 3: the shape features, the flag a partition key; 4: numeric
# strings beside numbers read as numbers; 5: runtimes over 1e100 ms and malformed intervals,
# confidence levels, versions and model_info refused; 6: the records' knots, knot_levels
# and knot_predictions; 7: numeric features centred on their median, scaled by their
# interquartile range; 8: where that range is empty, by a wider central range, not the
# standard deviation that services of 2026-12-06 from 18:46 to 19:51 kept in sidecars of
# format 7, until 19:32 with the centre as 'mean'); a sidecar of another version is
# ignored and rewritten (a table parsed under older rules is parsed again).
INDEX_FORMAT = 8
# Bytes of the table's name kept in its sidecar's name (see LookupTableStore.index_path).
SIDECAR_NAME_BYTES = 200


def save_index(table: LookupTable, dest: Path, source_signature: tuple) -> None:
    """Write ``table``'s parsed columns to ``dest`` (``.npz``, no pickle), tagged with its file's signature.

    Parsing dominates loading a big table (a million JSON records take 15 s or
    more; building the indexes from the columns takes a fraction of a second),
    so the columns are kept beside the table directory for the next load.
    """
    meta = {
        "format": INDEX_FORMAT,
        "source": list(source_signature),
        "table_format": table.format,
        "skipped": table.skipped,
        "identities": [list(i) for i in table.identities],
        "levelsets": len(table.levelsets),
        "columns": [{"name": c.name, "kind": c.kind, "vocab": c.vocab, "centre": c.centre, "scale": c.scale,
                     "word_among_numbers": c.word_among_numbers} for c in table.columns],
        "task_hashes": table.task_hashes is not None,
        "shape_features": {str(g): list(v) for g, v in table.shape_features.items()},
    }
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(orjson.dumps(meta), dtype=np.uint8),
        "row_identity": table.row_identity, "row_levelset": table.row_levelset, "row_position": table.row_position,
        "expect": table.expect, "error": table.error, "interval": table.interval,
        "confidence": table.confidence, "versions": table.versions,
    }
    for s, (levels, values) in enumerate(zip(table.levelsets, table.values)):
        arrays[f"levels_{s}"], arrays[f"values_{s}"] = levels, values
        arrays[f"knot_levels_{s}"], arrays[f"knot_values_{s}"] = table.knot_levels[s], table.knot_values[s]
    for j, column in enumerate(table.columns):
        arrays[f"column_{j}"] = column.values
    if table.task_hashes is not None:
        arrays["task_hashes"] = table.task_hashes
    dest.parent.mkdir(exist_ok=True)  # not the tables folder: one gone (an unmounted volume) is not made again
    with atomic_file(dest) as fh:
        np.savez(fh, **arrays)


def load_index(src: Path, path: Path, name: str, source_signature: tuple, seed: int = 0) -> LookupTable | None:
    """The table saved by :func:`save_index`, or None if the sidecar is missing, stale or unreadable."""
    try:
        # Opened here: np.load left its own file open when the archive was damaged. As a regular
        # file, not a link (the service writes its sidecars itself): a FIFO named like one hung
        # every lookup of its table.
        with regular_file_fd(src, follow_links=False) as fd, os.fdopen(fd, "rb", closefd=False) as fh, \
                np.load(fh, allow_pickle=False) as z:
            meta = orjson.loads(z["meta"].tobytes())
            if meta.get("format") != INDEX_FORMAT or tuple(meta.get("source", ())) != tuple(source_signature):
                return None
            columns = [
                FeatureColumn(c["name"], c["kind"], z[f"column_{j}"], vocab={k: int(v) for k, v in c["vocab"].items()},
                              centre=float(c["centre"]), scale=float(c["scale"]),
                              word_among_numbers=c.get("word_among_numbers"))
                for j, c in enumerate(meta["columns"])
            ]
            levelsets = [z[f"levels_{s}"] for s in range(meta["levelsets"])]
            values = [z[f"values_{s}"] for s in range(meta["levelsets"])]
            knot_levels = [z[f"knot_levels_{s}"] for s in range(meta["levelsets"])]
            knot_values = [z[f"knot_values_{s}"] for s in range(meta["levelsets"])]
            return LookupTable(
                name=name,
                identities=[tuple(i) for i in meta["identities"]],
                row_identity=z["row_identity"], levelsets=levelsets, row_levelset=z["row_levelset"],
                row_position=z["row_position"], values=values, expect=z["expect"], error=z["error"],
                interval=z["interval"], confidence=z["confidence"], versions=z["versions"], columns=columns,
                task_hashes=z["task_hashes"] if meta["task_hashes"] else None, skipped=int(meta["skipped"]),
                path=path, fmt=meta["table_format"], seed=seed,
                shape_features={int(g): tuple(v) for g, v in meta["shape_features"].items()},
                knot_levels=knot_levels, knot_values=knot_values,
            )
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any damage to a cache file means: parse the table again
        log.warning("ignoring unreadable lookup-table sidecar %s: %s", src, exc)
        return None
