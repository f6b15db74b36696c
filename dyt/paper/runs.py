"""Our runs as records the report can match to paper cells: from run directories (summary.json + config.yaml, and
eval.json / lm_eval.json beside them), or from a wandb project (each run's config and summary)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from dyt.logging import read_jsonl
from dyt.rundir import RunDir, read_summary

# Written by eval.py (FID, lm-eval, re-evaluation) and dyt/lm_eval.py beside summary.json.
EVAL_FILES = RunDir.EVALS
MISSING = object()  # a config path the run does not have


@dataclass
class Run:
    name: str
    source: str  # the run directory, or the wandb run path
    config: dict  # the resolved config, nested as in config.yaml
    summary: dict  # summary.json with the eval files' metrics
    load_curve: Callable[[], list[tuple[int, float]]] = field(default=lambda: [], repr=False)  # (step, train/loss)

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def step(self) -> Optional[int]:
        return self.summary.get("step")

    def value(self, metric: str) -> Optional[float]:
        """The run's best value of `metric` (`best/<metric>`), else its last (`<metric>`); None when absent."""
        v = self.summary.get(f"best/{metric}", self.summary.get(metric))
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


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


# Run directories -----------------------------------------------------------------------------------------

def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Every run directory (summary.json beside config.yaml) under `paths`, each once, in path order."""
    found: dict[Path, None] = {}
    for p in paths:
        for rd in RunDir(p).find_runs():
            found.setdefault(rd.path.resolve(), None)
    return list(found)


def _train_curve(metrics: Path) -> list[tuple[int, float]]:
    return [(e["step"], float(e["train/loss"])) for e in read_jsonl(metrics)
            if e.get("split") == "train" and isinstance(e.get("train/loss"), (int, float))]


def load_run_dir(run_dir: Path) -> Optional[Run]:
    """A run directory as a Run; None when its summary is unreadable (an unfinished run, resumable)."""
    import yaml
    summary = read_summary(run_dir)
    if summary is None:
        return None
    config = yaml.safe_load(RunDir(run_dir).config.read_text()) or {}
    for name in EVAL_FILES:  # metrics the training did not measure (FID, zero-shot); summary.json stays first
        try:
            extra = json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            continue
        for k, v in extra.items() if isinstance(extra, dict) else ():
            if "/" in k and isinstance(v, (int, float)):
                summary.setdefault(k, v)
    return Run(run_dir.name, str(run_dir), config, summary, lambda: _train_curve(RunDir(run_dir).metrics))


def load_run_dirs(paths: Iterable[Path]) -> list[Run]:
    return [r for r in map(load_run_dir, find_run_dirs(paths)) if r is not None]


# wandb ---------------------------------------------------------------------------------------------------

def from_wandb_run(api_run) -> Run:
    """A `wandb.apis.public.Run` as a Run: our runs log the resolved config (nested) and, at the end, the summary
    (status, step, best/...); the training-loss curve comes from its history, fetched only when plotted."""
    summary = dict(getattr(api_run.summary, "_json_dict", api_run.summary))
    config = {k: v for k, v in dict(api_run.config).items() if not k.startswith("_")}

    def curve() -> list[tuple[int, float]]:
        rows = api_run.scan_history(keys=["_step", "train/loss"])
        return [(int(r["_step"]), float(r["train/loss"])) for r in rows
                if isinstance(r.get("train/loss"), (int, float))]

    return Run(api_run.name, "/".join(api_run.path), config, summary, curve)


def load_wandb(project: str) -> list[Run]:
    """Every run of `entity/project` (or `project`) except report runs, through the wandb API (needs a login)."""
    import wandb
    runs = wandb.Api().runs(project)
    return [from_wandb_run(r) for r in runs if getattr(r, "job_type", None) != "report"]
