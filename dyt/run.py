"""Run-level glue shared by train.py and the tests: skip finished runs, train, always clean up."""
from __future__ import annotations

from pathlib import Path

from dyt.families import get_family
from dyt.rundir import RunLock, check_config_change, read_summary
from dyt.trainer import Trainer
from dyt.validate import validate

FINISHED = ("completed", "diverged")


def train(cfg, run_dir: str | Path) -> dict:
    """Train the run in `run_dir` to completion (resuming it if it has checkpoints); returns its summary.

    A finished run (summary.json says 'completed' or 'diverged') is not trained again, so re-running a sweep
    only resumes the unfinished ones.
    """
    validate(cfg)  # every bad value, mandatory key or model/data mismatch: one ConfigError before anything runs
    with RunLock(run_dir):  # one process per run directory (rank 0 holds it); a second one stops with one line
        summary = read_summary(run_dir) if cfg.trainer.resume == "auto" else None  # None: absent or damaged
        if summary is not None and summary.get("status") in FINISHED:
            print(f"[dyt] {run_dir} already {summary['status']}; skipping (trainer.resume=never to train again)",
                  flush=True)
            return summary
        check_config_change(run_dir, cfg, get_family(cfg.model.family).resume_keys)  # resuming with another definition of the run: one line, before building
        trainer = Trainer(cfg, run_dir)
        try:
            summary = trainer.fit()
        finally:
            trainer.close()
    print(f"[dyt] {summary['status']} at step {summary['step']}: "
          + ", ".join(f"{k}={v:.4g}" for k, v in summary.items() if k.startswith(("val/", "val_ema/", "best/")) and not k.endswith("time_s") and isinstance(v, float)),
          flush=True)
    return summary
