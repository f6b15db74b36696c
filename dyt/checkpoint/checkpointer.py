"""The one object that saves and resumes a training run's checkpoints, whatever their format.

The format follows from how the model is spread over the ranks: a sharded model (FSDP / HSDP) writes a DCP
directory from every rank, anything else a single checksummed file from rank 0. Either format resumes into either
kind of model (a run started on one process resumes sharded, and back), so the trainer never asks which it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dyt import distributed as D
from dyt.checkpoint.contents import TENSOR_STATES, load_model_state
from dyt.checkpoint.dcp import restore_dcp, restore_full_into_shards, sharded_states, start_sharded_save
from dyt.checkpoint.directory import prune_checkpoints, remove_leftovers
from dyt.checkpoint.read import load_latest
from dyt.checkpoint.rng import rng_state, set_rng_state
from dyt.checkpoint.single_file import read_checkpoint_file, write_checkpoint_file
from dyt.rundir import RunDir

POSITION = ("step", "rng", "scaler")  # besides TENSOR_STATES, what the Checkpointer itself records


@dataclass
class Resumed:
    """Where a run resumed: the checkpoint, its step, and what the caller saved with it (``save(step, extra)``)."""
    path: Path
    step: int
    extra: dict = field(default_factory=dict)


class Checkpointer:
    """Saves and restores what a checkpoint holds (``contents.py``): the model, optimizer and EMA state dicts,
    the step, every rank's RNG state, the gradient scaler, and the caller's `extra` (the trainer's log window).

    `par`: the model as trained (``dyt.distributed.Parallel``: ``model``, ``sharded``); `ema`: timm's EMA wrapper
    (its ``module`` is saved) or None; `scaler`: a GradScaler or None; `keep`: how many checkpoints stay.

    A sharded checkpoint is written in the background (`background`): ``save`` returns once the shards are copied
    to CPU memory, and the checkpoint gets its real name (``flush``, a collective) at the next ``save`` or
    ``flush``; the trainer flushes at every sync point and before it returns. A single file is written at once."""

    def __init__(self, run_dir: str | Path | RunDir, par, optimizer, ema=None, scaler=None, *, dist: D.DistInfo,
                 keep: int = 1, background: bool = True):
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.model, self.sharded = par.model, par.sharded
        self.optimizer, self.ema, self.scaler = optimizer, ema, scaler
        self.dist, self.keep = dist, keep
        self.pending = None  # a sharded checkpoint still being written (dcp.PendingSave): named by `flush`
        # Sharded checkpoints are written in the background (dcp.async_save) over a gloo group of their own: DCP's
        # thread must not interleave its collectives with the training's (and async_save needs a CPU backend).
        self.async_group = None
        if self.sharded and self.dist.enabled and background:
            import torch.distributed as torch_dist
            self.async_group = torch_dist.new_group(backend="gloo")

    @property
    def _ema_module(self):
        return self.ema.module if self.ema is not None else None

    def flush(self) -> Path | None:
        """Wait for the checkpoint being written, then give it its real name (a collective: every rank calls it).
        Returns its path, None when none was being written."""
        pending, self.pending = self.pending, None
        return pending.finish() if pending is not None else None

    def save(self, step: int, extra: dict | None = None) -> Path | None:
        """Checkpoint `step` (a collective: every rank calls it); keeps the newest `keep`. Returns the path (None on
        ranks that write nothing); a sharded one is named by the next ``flush``."""
        self.flush()
        extra = extra or {}
        if reserved := [k for k in extra if k in (*TENSOR_STATES, *POSITION)]:
            raise ValueError(f"extra checkpoint entries {reserved} would replace what the Checkpointer records")
        rngs = D.all_gather_object(rng_state())  # every rank's RNG, so each resumes its own stream
        position = {"step": step, "rng": rngs, **({"scaler": self.scaler.state_dict()} if self.scaler else {}), **extra}
        path = self.run_dir.checkpoint(step, sharded=self.sharded)
        if self.sharded:  # every rank writes its shards (DCP directory)
            states = sharded_states(self.model, self.optimizer, self._ema_module)
            self.pending = start_sharded_save(states, position, path, keep=self.keep, is_main=self.dist.is_main,
                                              async_group=self.async_group)
            if self.async_group is None:
                self.flush()
            return path
        if not self.dist.is_main:
            return None
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), **position}
        if self._ema_module is not None:
            state["ema"] = self._ema_module.state_dict()
        write_checkpoint_file(state, path)
        prune_checkpoints(self.run_dir.checkpoints_dir, self.keep)
        return path

    def resume(self, mode: str) -> Resumed | None:
        """Restore the run's state by `mode` (``trainer.resume``): ``auto`` the newest intact checkpoint (a damaged
        newer one is set aside with a warning), ``never`` none, else the checkpoint at that path. Every rank calls
        it; None when nothing was restored. What a killed write left behind is removed first, whatever the mode."""
        if self.dist.is_main:
            remove_leftovers(self.run_dir.checkpoints_dir)  # partial files of a run killed while writing
        if mode == "never":
            return None
        D.barrier()  # leftovers gone before any rank lists the checkpoints
        if mode == "auto":
            found = load_latest(self.run_dir.checkpoints_dir, is_main=self.dist.is_main, load=self._restore)
            if found is None:
                return None
            state, path = found
        else:
            path = Path(mode)
            state = self._restore(path)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng", [])
        if len(rngs) == self.dist.world_size:  # another world size: each rank keeps its freshly seeded streams
            set_rng_state(rngs[self.dist.rank])
        step = int(state["step"])
        if self.dist.is_main:
            print(f"[dyt] resumed from {path} at step {step}", flush=True)
        return Resumed(path, step, {k: v for k, v in state.items() if k not in POSITION})

    def _restore(self, path: Path) -> dict:
        """A checkpoint of either format into this model, optimizer and EMA; returns the rest of it."""
        path = Path(path)
        if path.is_dir():
            return restore_dcp(path, self.model, self.optimizer, self._ema_module)
        state = read_checkpoint_file(path, map_location="cpu" if self.sharded else self.dist.device)
        if self.sharded:  # a single file (a run started on one process) into shards
            restore_full_into_shards(state, path, self.model, self.optimizer, self._ema_module)
        else:
            load_model_state(self.model, state["model"], path)
            self.optimizer.load_state_dict(state["optimizer"])
            if self._ema_module is not None and "ema" in state:
                self._ema_module.load_state_dict(state["ema"])
        return {k: v for k, v in state.items() if k not in TENSOR_STATES}
