"""A finished (or running) run, loaded once for every evaluation: its config (with checked overrides), its family,
a checkpoint and the process environment. FID, lm-eval and the task's own metrics all start here."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dyt import distributed as D
from dyt.checkpoint import load_checkpoint, load_model_state
from dyt.checkpoint.dcp import dcp_contents, restore_model_shards
from dyt.config import LoggerConfig, NormConfig, OptimConfig, TrainerConfig
from dyt.errors import ConfigError
from dyt.family import Family, get_family
from dyt.hydra_errors import did_you_mean
from dyt.precision import amp_dtype
from dyt.ranges import Num, rules
from dyt.rundir import RunDir

SHARED = {"trainer": TrainerConfig, "optim": OptimConfig, "norm": NormConfig, "logger": LoggerConfig}  # checked overrides

WEIGHTS = ("model", "ema")  # the raw weights and their EMA, as a checkpoint holds them
IN_SHARDS = None  # the value of a weights entry that stays in the DCP directory (read shard by shard, `model`)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def run_config(run_dir: str | Path, overrides: list[str] = ()) -> DictConfig:
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
        key = o.split("=", 1)[0]
        if isinstance(OmegaConf.select(cfg, key, default=None), DictConfig):  # model=llama_tiny on a ViT run
            raise ConfigError(f"override {o!r}: {key} is a section of the run's config; evaluation uses the run's "
                              f"own {key} (override one of its settings, {key}.<name>=...)")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o]))
        except OmegaConfBaseException as e:
            parent, _, name = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            hint = did_you_mean(name, list(node), f"{parent}." if parent else "") if isinstance(node, DictConfig) else ""
            raise ConfigError(f"override {o!r} does not apply to this run's config ({_first_line(e)}){hint}") from e
        section, _, name = key.partition(".")
        rule = rules(SHARED[section]).get(name) if section in SHARED else None
        if isinstance(rule, Num) and not rule.accepts(OmegaConf.select(cfg, key)):  # e.g. eval_batch_size=0
            raise ConfigError(f"{o}: must be {rule.describe()}")
    OmegaConf.set_struct(cfg, False)  # readers use .get() for keys that older runs' configs lack
    return cfg


def run_checkpoint(run_dir: str | Path, checkpoint: str | None = None) -> Path:
    """`checkpoint` when given, else the run's latest (a file or a DCP directory); one line when there is none."""
    rd = RunDir(run_dir)
    path = Path(checkpoint) if checkpoint else (rd.checkpoints() or [None])[-1]
    if path is None:
        raise ConfigError(f"{run_dir} has no checkpoint in {rd.checkpoints_dir}")
    return path


@dataclass
class LoadedRun:
    """A run's config, family, checkpoint (model / EMA weights and step) and processes. A context manager: the
    process group (under torchrun) is shut down on exit when load_run started it (eval.py keeps one group for all
    its evaluations).

    `sharded`: the model is evaluated as the run trained it, FSDP2-sharded over the processes (load_run's `shard`):
    every forward is then a collective, which the caller runs on every rank in lockstep."""
    run_dir: Path
    cfg: DictConfig
    family: Family
    checkpoint: Path
    state: dict = field(repr=False)
    dist: D.DistInfo
    sharded: bool = False
    owns_group: bool = True

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def weights(self) -> list[str]:
        """The weights the checkpoint holds: "model" (raw), then "ema" when the run kept one."""
        return [k for k in WEIGHTS if k in self.state]

    @property
    def dtype(self) -> torch.dtype | None:
        return amp_dtype(self.cfg.trainer.precision, self.dist.device)

    @cached_property
    def task(self):
        return self.family.task(self.cfg, self.dist)

    def model(self, weights: str = "model") -> nn.Module:
        """The family's model with these weights, on this process's device, in eval mode: whole, or sharded
        (`sharded`) by the run's own trainer.parallel / trainer.init (what fit its training fits here), without
        activation checkpointing or compilation; a DCP checkpoint is read shard by shard."""
        if weights not in self.state:
            raise ConfigError(f"{self.checkpoint} holds no {weights!r} weights (it has: {', '.join(self.weights)})")
        if not self.sharded:
            model = self.task.build_model().to(self.dist.device)
            load_model_state(model, self.state[weights], self.checkpoint)
            return model.eval()
        tc = {**self.cfg.trainer, "activation_checkpointing": "none", "compile": False}
        from dyt.parallel import wrap_model  # here: run_config (read while validating) imports no FSDP
        model = wrap_model(self.task.build_model, self.dist, tc, self.dtype, seed=self.cfg.seed,
                           blocks=self.family.blocks).model
        restore_model_shards(self.checkpoint, model, weights, self.state[weights])
        return model.eval()

    def __enter__(self) -> "LoadedRun":
        return self

    def __exit__(self, *exc) -> None:
        if self.owns_group:
            D.shutdown()


def load_run(run_dir: str | Path, overrides: list[str] = (), checkpoint: str | None = None,
             device: str | None = None, weights: tuple[str, ...] = WEIGHTS, shard: bool = False) -> LoadedRun:
    """Load a run directory: its config + `overrides` (checked), the latest checkpoint unless `checkpoint` (a file,
    or a DCP directory read whole), the `weights` it holds. Under torchrun every rank loads it (init_distributed).

    `shard`: a run with trainer.parallel=fsdp|hsdp, under more than one process, is evaluated sharded as it was
    trained (LoadedRun.sharded): no process holds the whole model, and a DCP checkpoint is not read here."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    family = get_family(cfg.model.family)
    path = run_checkpoint(run_dir, checkpoint)
    owns_group = not torch_dist.is_initialized()
    dist = D.init_distributed(device or cfg.trainer.device)
    sharded = shard and dist.enabled and cfg.trainer.get("parallel", "ddp") != "ddp"
    try:
        if sharded and path.is_dir():
            extra, saved = dcp_contents(path)
            state = {**extra, **{k: IN_SHARDS for k in weights if k in saved}}
        else:  # whole (+ step, rng, ...); a sharded model takes its part of the full tensors from CPU memory
            state = load_checkpoint(path, map_location="cpu" if sharded else dist.device, keys=weights)
    except BaseException:
        if owns_group:
            D.shutdown()
        raise
    return LoadedRun(run_dir, cfg, family, path, state, dist, sharded, owns_group)
