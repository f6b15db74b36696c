"""A cell that averages a suite of tasks (Table 6: the 8 GenomicBenchmarks tasks), each task's number chosen the way
the Caduceus repo's protocol does (slurm_scripts/wrapper_run_genomics.sh + run_genomics_benchmark.sh):

- a run (one task, one setting of the searched hyperparameters, one split seed) counts its test accuracy at its
  best validation epoch: the repo's ``train.cross_validation`` reloads the checkpoint ModelCheckpoint kept for the
  best ``val/accuracy`` (save_top_k 1, the first epoch that reached the maximum) and runs the test set on it
  (train.py, ``if config.train.get("cross_validation")``); ours evaluates the test split at every epoch beside the
  validation part (``val/test_top1``) and reads it at the first epoch of the best ``val/top1``;
- a setting's number is the mean over its split seeds (the repo's 5 seeds, ``train_val_split_seed`` 1..5);
- a task's number is that of the setting with the best mean validation accuracy (our reading: the repo has no
  selection code, and the Caduceus paper's appendix could not be consulted here);
- the cell is the mean of the tasks' numbers, shown only when every task has completed runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Any, Optional

from dyt.paper.match import get_path


@dataclass(frozen=True)
class TaskPick:
    """A task's chosen setting: its mean test and validation accuracy over `seeds` runs."""
    setting: tuple
    test: float
    val: float
    seeds: int


def at_best(run, select: str, report: str) -> Optional[tuple[float, float]]:
    """(best `select`, `report` at the first evaluation where `select` was best) of one run; None without both."""
    chosen = dict(run.load_curve(report))
    scored = [(v, -step) for step, v in run.load_curve(select) if step in chosen]
    if not scored:
        return None
    best, step = max(scored)
    return best, chosen[-step]


@dataclass(frozen=True)
class SuiteAverage:
    """`Cell.aggregate` of a suite cell: the mean over `tasks` (told apart by `task_key`) of each task's test number,
    the runs of a task grouped by the `settings` config paths."""
    task_key: str
    tasks: tuple[str, ...]
    settings: tuple[str, ...]
    select: str = "val/top1"
    report: str = "val/test_top1"

    def picks(self, runs) -> dict[Any, TaskPick]:
        """Each task's chosen setting (tasks without a completed run are absent)."""
        grouped: dict[Any, dict[tuple, list[tuple[float, float]]]] = {}
        for run in runs:
            if run.status != "completed" or (pair := at_best(run, self.select, self.report)) is None:
                continue
            setting = tuple(get_path(run.config, k) for k in self.settings)
            grouped.setdefault(get_path(run.config, self.task_key), {}).setdefault(setting, []).append(pair)
        picks = {}
        for task, by_setting in grouped.items():
            scored = [TaskPick(s, mean(t for _, t in p), mean(v for v, _ in p), len(p)) for s, p in by_setting.items()]
            picks[task] = max(scored, key=lambda pick: pick.val)
        return picks

    def __call__(self, runs) -> Optional[float]:
        picks = self.picks(runs)
        if any(t not in picks for t in self.tasks):
            return None
        return mean(picks[t].test for t in self.tasks)
