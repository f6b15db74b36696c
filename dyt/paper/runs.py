"""Our runs as records the report can match to paper cells: from run directories (summary.json + config.yaml, and
eval.json / lm_eval.json beside them), or from a wandb project (each run's config and summary). The one run finder
of scripts/report.py, for the paper's tables and the sweep view alike."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import yaml

from dyt.logging import read_jsonl
from dyt.rundir import RunDir, read_config, read_summary

# Written by eval.py (FID, lm-eval, re-evaluation) and dyt/families/llama/lm_eval.py beside summary.json.
EVAL_FILES = RunDir.EVALS
TRAIN_LOSS = "train/loss"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _no_curve(metric: str = TRAIN_LOSS) -> list[tuple[int, float]]:
    return []


@dataclass
class Run:
    name: str
    source: str  # the run directory, or the wandb run path
    config: dict  # the resolved config, nested as in config.yaml
    summary: dict  # summary.json with the eval files' metrics
    # (step, value) of a metric over training, `train/loss` by default; read only when plotted
    load_curve: Callable[..., list[tuple[int, float]]] = field(default=_no_curve, repr=False)

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def step(self) -> Optional[int]:
        return self.summary.get("step")

    @property
    def fields(self) -> dict:
        """What a cell's `match` reads: the resolved config and, for a run started from another (fine-tuning),
        ``init_from``: the source it recorded in its summary (dyt.init_from)."""
        source = self.summary.get("init_from")
        return {**self.config, "init_from": source} if isinstance(source, dict) else self.config

    def value(self, metric: str) -> Optional[float]:
        """The run's best value of `metric` (`best/<metric>`), else its last (`<metric>`); None when absent."""
        v = self.summary.get(f"best/{metric}", self.summary.get(metric))
        return float(v) if _number(v) else None


# Run directories -----------------------------------------------------------------------------------------

def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Every run directory (summary.json beside config.yaml) under `paths`, each once, in path order."""
    found: dict[Path, None] = {}
    for p in paths:
        for rd in RunDir(p).find_runs():
            found.setdefault(rd.path.resolve(), None)
    return list(found)


def _events_curve(run_dir: Path) -> Callable[..., list[tuple[int, float]]]:
    def curve(metric: str = TRAIN_LOSS) -> list[tuple[int, float]]:
        return [(e["step"], float(e[metric])) for e in read_jsonl(RunDir(run_dir).metrics) if _number(e.get(metric))]
    return curve


def load_run_dir(run_dir: Path) -> Optional[Run]:
    """A run directory as a Run; None when its summary is unreadable (an unfinished run, resumable)."""
    summary = read_summary(run_dir)
    if summary is None:
        return None
    config = read_config(run_dir) or _hydra_config(run_dir)
    for name in EVAL_FILES:  # metrics the training did not measure (FID, zero-shot); summary.json stays first
        try:
            extra = json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            continue
        for k, v in extra.items() if isinstance(extra, dict) else ():
            if "/" in k and _number(v):
                summary.setdefault(k, v)
    return Run(run_dir.name, str(run_dir), config, summary, _events_curve(run_dir))


def _hydra_config(run_dir: Path) -> dict:
    """What Hydra composed for a point that failed before writing config.yaml (its norm, model...); {} if none."""
    try:
        loaded = yaml.safe_load(RunDir(run_dir).hydra_config.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def load_run_dirs(paths: Iterable[Path]) -> list[Run]:
    return [r for r in map(load_run_dir, find_run_dirs(paths)) if r is not None]


# wandb ---------------------------------------------------------------------------------------------------

def from_wandb_run(api_run) -> Run:
    """A `wandb.apis.public.Run` as a Run: our runs log the resolved config (nested) and, at the end, the summary
    (status, step, best/...); curves come from its history, fetched only when plotted."""
    summary = dict(getattr(api_run.summary, "_json_dict", api_run.summary))
    config = {k: v for k, v in dict(api_run.config).items() if not k.startswith("_")}

    def curve(metric: str = TRAIN_LOSS) -> list[tuple[int, float]]:
        rows = api_run.scan_history(keys=["_step", metric])
        return [(int(r["_step"]), float(r[metric])) for r in rows if _number(r.get(metric))]

    return Run(api_run.name, "/".join(api_run.path), config, summary, curve)


def load_wandb(project: str) -> list[Run]:
    """Every run of `entity/project` (or `project`) except report runs, through the wandb API (needs a login)."""
    import wandb  # optional and slow to import: only for --wandb
    runs = wandb.Api().runs(project)
    return [from_wandb_run(r) for r in runs if getattr(r, "job_type", None) != "report"]
