"""How a run is recognised as a paper cell: a cell's `match` (resolved-config path -> value) against the run's
resolved config. The one recogniser, for the report's tables and the sweep view alike."""
from __future__ import annotations

from typing import Any, Mapping

MISSING = object()  # a config path the run does not have
# trained from scratch: no trainer.init_from (null, or a run older than the setting). Cells whose own runs are
# from scratch say so, so a fine-tuning run of the same model and norm is not counted there.
FROM_SCRATCH = {"trainer.init_from": (None, MISSING)}


def get_path(config: Mapping, path: str) -> Any:
    """`config["model"]["name"]` for "model.name"; MISSING when a part is absent."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def same_value(value: Any, expected: Any) -> bool:
    if isinstance(expected, tuple):  # any of
        return any(same_value(value, e) for e in expected)
    if isinstance(expected, bool) or isinstance(value, bool):
        return value is expected
    if isinstance(expected, (int, float)) and isinstance(value, (int, float)):
        return abs(value - expected) <= 1e-9 * max(1.0, abs(expected))
    return value == expected


def matches(config: Mapping, match: Mapping[str, Any]) -> bool:
    return bool(match) and all(same_value(get_path(config, k), v) for k, v in match.items())
