"""Run-level glue shared by train.py and the tests: skip finished runs, train, always clean up."""
from __future__ import annotations

import json
from pathlib import Path

from dyt.trainer import Trainer

FINISHED = ("completed", "diverged")


def train(cfg, run_dir: str | Path) -> dict:
    """Train the run in `run_dir` to completion (resuming it if it has checkpoints); returns its summary.

    A finished run (summary.json says 'completed' or 'diverged') is not trained again, so re-running a sweep
    only resumes the unfinished ones.
    """
    done = Path(run_dir) / "summary.json"
    if cfg.trainer.resume == "auto" and done.exists():
        summary = json.loads(done.read_text())
        if summary.get("status") in FINISHED:
            print(f"[dyt] {run_dir} already {summary['status']}; skipping (trainer.resume=never to train again)",
                  flush=True)
            return summary
    trainer = Trainer(cfg, run_dir)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    print(f"[dyt] {summary['status']} at step {summary['step']}: "
          + ", ".join(f"{k}={v:.4g}" for k, v in summary.items() if k.startswith(("val/", "val_ema/", "best/")) and isinstance(v, float)),
          flush=True)
    return summary


def evaluate_run(run_dir: str | Path, overrides: list[str] = (), checkpoint: str | None = None) -> dict:
    """Re-evaluate a run's checkpoint (the latest unless `checkpoint`) with its own config + `overrides`.

    Writes ``eval.json`` into the run directory and returns the metrics (``val/...``, ``val_ema/...``).
    """
    import torch
    from omegaconf import OmegaConf

    from dyt import distributed as D
    from dyt.checkpoint import list_checkpoints, load_checkpoint, load_model_state
    from dyt.errors import ConfigError
    from dyt.logging import write_json
    from dyt.tasks import build_task
    from dyt.trainer import amp_dtype, evaluate

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = OmegaConf.merge(OmegaConf.load(run_dir / "config.yaml"), OmegaConf.from_dotlist(list(overrides)))
    path = Path(checkpoint) if checkpoint else (list_checkpoints(run_dir / "checkpoints") or [None])[-1]
    if path is None:
        raise ConfigError(f"{run_dir} has no checkpoint in {run_dir / 'checkpoints'}")
    dist = D.init_distributed(cfg.trainer.device)
    try:
        task = build_task(cfg, dist)
        state = load_checkpoint(path, map_location=dist.device)
        dtype = amp_dtype(cfg.trainer.precision, dist.device)
        bs = cfg.trainer.eval_batch_size or max(1, cfg.trainer.batch_size // dist.world_size)
        metrics = {"step": int(state["step"]), "checkpoint": str(path)}
        for prefix, key in (("val", "model"), ("val_ema", "ema")):
            if key not in state:
                continue
            model = task.build_model().to(dist.device)
            load_model_state(model, state[key], path)
            metrics.update({f"{prefix}/{k}": v for k, v in evaluate(task, model, dist.device, bs, dtype).items()})
        if dist.is_main:
            write_json(run_dir / "eval.json", metrics)
        return metrics
    finally:
        D.shutdown()
