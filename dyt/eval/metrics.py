"""Re-evaluating a run with its task's own validation metrics (top-1 / top-5, loss, perplexity), raw and EMA."""
from __future__ import annotations

from pathlib import Path

from dyt.eval.load import load_run
from dyt.eval.loop import evaluate
from dyt.files import write_json
from dyt.rundir import RunDir

PREFIXES = {"model": "val", "ema": "val_ema"}  # as the trainer logs them


def evaluate_run(run_dir: str | Path, overrides: list[str] = (), checkpoint: str | None = None,
                 save: bool = True) -> dict:
    """Re-evaluate a run's checkpoint (the latest unless `checkpoint`) with its own config + `overrides`.

    A checkpoint is a single file or, from a sharded run (trainer.parallel=fsdp|hsdp), a DCP directory. One process
    evaluates the whole model; under torchrun each rank takes a shard of the val set, and a sharded run's model is
    sharded as in training (its DCP checkpoint read shard by shard, every rank's forwards in lockstep).

    Writes ``eval.json`` into the run directory (unless not `save`: eval.py writes it after printing) and returns the
    metrics (``val/...``, ``val_ema/...``).
    """
    with load_run(run_dir, overrides, checkpoint, shard=True) as run:
        tc = run.cfg.trainer
        bs = tc.eval_batch_size or max(1, tc.batch_size // run.dist.world_size)
        metrics = {"step": run.step, "checkpoint": str(run.checkpoint)}
        for weights in run.weights:
            values = evaluate(run.task, run.model(weights), run.dist.device, bs, None if run.sharded else run.dtype,
                              lockstep=run.sharded)
            metrics.update({f"{PREFIXES[weights]}/{k}": v for k, v in values.items()})
        if save and run.dist.is_main:
            write_json(RunDir(run_dir).eval, metrics)
        return metrics
