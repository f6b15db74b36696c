"""Run-level glue shared by train.py and the tests: skip finished runs, train, always clean up."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dyt import distributed as D
from dyt.checkpoint import load_checkpoint, load_model_state
from dyt.errors import ConfigError
from dyt.files import write_json
from dyt.rundir import RunDir, RunLock, check_config_change, read_summary
from dyt.families import build_task, get_family
from dyt.precision import amp_dtype
from dyt.trainer import Trainer, evaluate
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


def run_config(run_dir: Path, overrides: list[str] = ()):
    """A run directory's own config.yaml with `overrides` (key=value) applied; unknown keys are errors."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # YAML syntax, unreadable file
        raise ConfigError(f"{path} is not a valid config ({type(e).__name__}: {_first_line(e)})") from e
    if not isinstance(cfg, DictConfig) or "model" not in cfg or "data" not in cfg:
        raise ConfigError(f"{path} is not a dyt run config (no model / data sections)")
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"override {o!r} is not key=value (e.g. trainer.device=cpu)")
    OmegaConf.set_struct(cfg, True)  # a misspelt key is an error, not a new key nobody reads
    for o in overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o]))
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {o!r} does not apply to this run's config ({_first_line(e)})") from e
    OmegaConf.set_struct(cfg, False)  # readers use .get() for keys that older runs' configs lack
    return cfg


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def run_checkpoint(run_dir: Path, checkpoint: str | None = None) -> Path:
    """`checkpoint` when given, else the run's latest (a file or a DCP directory); one line when there is none."""
    rd = RunDir(run_dir)
    path = Path(checkpoint) if checkpoint else (rd.checkpoints() or [None])[-1]
    if path is None:
        raise ConfigError(f"{run_dir} has no checkpoint in {rd.checkpoints_dir}")
    return path


def evaluate_run(run_dir: str | Path, overrides: list[str] = (), checkpoint: str | None = None) -> dict:
    """Re-evaluate a run's checkpoint (the latest unless `checkpoint`) with its own config + `overrides`.

    A checkpoint is a single file or, from a sharded run (trainer.parallel=fsdp|hsdp), a DCP directory read whole
    on each process; the plain model is evaluated (one process, or DDP-style shards of the val set under torchrun).

    Writes ``eval.json`` into the run directory and returns the metrics (``val/...``, ``val_ema/...``).
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    path = run_checkpoint(run_dir, checkpoint)
    dist = D.init_distributed(cfg.trainer.device)
    try:
        task = build_task(cfg, dist)
        state = load_checkpoint(path, map_location=dist.device, keys=("model", "ema"))  # a file or a DCP directory
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
            write_json(RunDir(run_dir).eval, metrics)
        return metrics
    finally:
        D.shutdown()
