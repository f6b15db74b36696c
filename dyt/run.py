"""Run-level glue shared by train.py and the tests: skip finished runs, train, always clean up."""
from __future__ import annotations

import os
from pathlib import Path

from dyt.families import get_family
from dyt.files import warn
from dyt.init_from import resolve_norm
from dyt.logging import read_jsonl
from dyt.rundir import (ABSENT, CHECKPOINT_NAME, RunDir, RunLock, check_config_change, describe_changes, differences,
                        list_checkpoints, read_summary)
from dyt.validate import validate

FINISHED = ("completed", "diverged")


_NOT_RESULTS = ("trainer.resume", "trainer.progress", "trainer.keep_checkpoints", "data.num_workers")


def _skip_line(run_dir, summary: dict, cfg) -> str:
    """Why a finished run is not trained again, naming the settings this command changes that run names leave out
    (trainer.parallel, precision...): a strategy comparison must not silently compare a run with itself."""
    # a setting newer than the run, left at null (off), is what the run did: not a difference
    changed = {k: (a, b) for k, (a, b) in differences(run_dir, cfg).items()
               if k.split(".")[0] in ("trainer", "optim", "model", "norm", "data") and k not in _NOT_RESULTS
               and not (a is ABSENT and b is None)}
    line = f"[dyt] {run_dir} already {summary['status']}; skipping"
    if not changed:
        return line + " (trainer.resume=never to train it again)"
    return (f"{line}. It ran with other settings than this command's ({describe_changes(changed)}): to train "
            "these settings beside it add run_name=<a new name>, in its place trainer.resume=never")


def _finished_on_record(run_dir, summary: dict, cfg) -> bool:
    """Whether the run's own records agree that it finished where summary.json says: a completed run's newest
    checkpoint is at that step (the trainer checkpoints its last step; with none kept, metrics.jsonl logged it),
    a diverged run logged the step. Otherwise the summary is not trusted and the run resumes, saying why. A run
    completed before a larger trainer.max_steps trains on to it."""
    rd, step, status = RunDir(run_dir), summary.get("step"), summary.get("status")
    found = list_checkpoints(rd.checkpoints_dir)
    newest = int(CHECKPOINT_NAME.match(found[-1].name).group(1)) if found else None
    logged = any(e.get("step") == step for e in read_jsonl(rd.metrics))
    target = cfg.trainer.get("max_steps")
    if status == "completed" and newest is not None and newest != step:
        why = f"its newest checkpoint is at step {newest}"
    elif not logged and (status != "completed" or newest is None):
        why = f"metrics.jsonl has no event at step {step}"
    elif status == "completed" and isinstance(step, int) and target is not None and target > step:
        print(f"[dyt] {run_dir} completed at step {step}; training on to trainer.max_steps={target}", flush=True)
        return False
    else:
        return True
    warn(f"{rd.summary} says {status} at step {step}, but {why}: not trusted; resuming the run")
    return False


def finished(run_dir, cfg) -> dict | None:
    """The summary of a run that is done (and not to be trained again: trainer.resume=auto, its records agree),
    said in one line; None when it is to be trained (or resumed)."""
    summary = read_summary(run_dir) if cfg.trainer.resume == "auto" else None  # None: absent or damaged
    if summary is not None and summary.get("status") in FINISHED and _finished_on_record(run_dir, summary, cfg):
        print(_skip_line(run_dir, summary, cfg), flush=True)
        return summary
    return None


def train(cfg, run_dir: str | Path) -> dict:
    """Train the run in `run_dir` to completion (resuming it if it has checkpoints); returns its summary.

    A finished run (summary.json says 'completed' or 'diverged') is not trained again, so re-running a sweep
    only resumes the unfinished ones.
    """
    resolve_norm(cfg, run_dir)  # finetune_norm: the fine-tuning run's norm, decided before anything is checked or built
    validate(cfg)  # every bad value, mandatory key or model/data mismatch: one ConfigError before anything runs
    with RunLock(run_dir):  # one process per run directory (rank 0 holds it); a second one stops with one line
        if (summary := finished(run_dir, cfg)) is not None:
            return summary
        check_config_change(run_dir, cfg, get_family(cfg.model.family).resume_keys)  # resuming with another definition of the run: one line, before building
        from dyt.trainer import Trainer  # here: a refused config never imports the model code (timm)
        trainer = Trainer(cfg, run_dir)
        try:
            summary = trainer.fit()
        finally:
            trainer.close()
    if int(os.environ.get("RANK", "0")) == 0:  # once per run, not once per rank
        shown = {k: v for k, v in summary.items() if k.startswith(("val/", "val_ema/", "best/"))
                 and not k.endswith("time_s") and isinstance(v, float)}
        print(f"[dyt] {summary['status']} at step {summary['step']}: "
              + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()), flush=True)
    return summary
