"""The sharded format (trainer.parallel=fsdp|hsdp): a DCP directory ``step_XXXXXXXX/``.

Every rank writes its shards into ``step_XXXXXXXX.tmp/`` (torch.distributed.checkpoint: the model, optimizer and
EMA state dicts; during training in a background thread, ``dcp.async_save``), rank 0 adds ``extra.pt`` (the rest:
step, every rank's RNG, scaler, log window) and renames the directory once all ranks are done, so a half-written
step never has a real name. DCP reshards on load: a run saved
on N processes resumes on M (any strategy). ``load_dcp_full`` reads a directory whole on one process, in the
single-file layout (eval.py, consolidation).

torch.distributed.checkpoint is imported inside the functions that use it: it adds ~1.5 s to every process start
and only sharded runs (and readers of their checkpoints) need it.
"""
from __future__ import annotations

import io
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as torch_dist

from dyt import distributed as D
from dyt.checkpoint.contents import TENSOR_STATES, CorruptCheckpoint, check_model_match, first_line
from dyt.checkpoint.directory import prune_checkpoints
from dyt.errors import ConfigError
from dyt.files import fix_hint, fsync_dir, os_error, write_durably
from dyt.distributed import clean_name

EXTRA = "extra.pt"  # in a DCP directory: what is not a model / optimizer / EMA tensor


def _dcp_errors() -> tuple:
    """What a failed DCP read or write raises: CheckpointException (a BaseException gathering every rank's error)."""
    from torch.distributed.checkpoint.api import CheckpointException
    return (Exception, CheckpointException)


def sharded_states(model, optimizer, ema_module=None) -> dict:
    """The DCP state of a training run: model, optimizer and EMA state dicts keyed by parameter name (sharded
    DTensors under FSDP; plain tensors otherwise)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    states = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema_module is not None:
        states["ema"] = get_model_state_dict(ema_module)
    return states


class PendingSave:
    """A DCP checkpoint being written: `finish()` (a collective) waits for the shards, then rank 0 adds
    ``extra.pt``, renames ``<final>.tmp/`` to `final` and prunes; until then the checkpoint has no real name."""

    def __init__(self, written, extra: dict, final: Path, keep: int, is_main: bool):
        self.written, self.extra, self.final, self.keep, self.is_main = written, extra, final, keep, is_main

    def _fail(self, e: BaseException) -> str:
        if isinstance(e, OSError):
            return f"could not write checkpoint {self.final}: {os_error(e)}; {fix_hint(e)}"
        return f"could not write checkpoint {self.final}: {first_line(e)}; fix the cause and run the same command to resume"

    def wait(self) -> None:
        """The shards of this rank written (async_save's future); no collective."""
        if self.written is not None:
            written, self.written = self.written, None
            try:
                written.result()  # DCP gathers every rank's write results: all fail or none
            except _dcp_errors() as e:  # CheckpointException wraps the ranks' OSErrors
                raise ConfigError(self._fail(e)) from e

    def finish(self) -> Path:
        self.wait()
        final, error = self.final, None
        tmp, old, ckpt_dir = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old"), final.parent
        if self.is_main:
            try:
                buf = io.BytesIO()
                torch.save(self.extra, buf)
                write_durably(tmp / EXTRA, buf.getvalue())
                fsync_dir(tmp)
                if final.exists():  # the same step written again (a run resumed at it)
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(final, old)
                os.replace(tmp, final)
                fsync_dir(ckpt_dir)
                shutil.rmtree(old, ignore_errors=True)
                prune_checkpoints(ckpt_dir, self.keep)
            except OSError as e:
                error = self._fail(e)
        if (error := D.broadcast_object(error)) is not None:  # also the barrier: nobody goes on before the rename
            raise ConfigError(error)
        return final


def start_sharded_save(states: dict, extra: dict, final: Path, keep: int = 1, is_main: bool = True,
                       async_group=None) -> PendingSave:
    """Every rank starts writing its shards of `states` into ``<final>.tmp/`` (a collective); the returned
    PendingSave's ``finish()`` names the checkpoint. With `async_group` (a gloo process group: DCP's background
    thread must not share the training's collectives) the shards are first copied to CPU memory, then written
    by ``dcp.async_save`` in a thread while training goes on; without it (or where torch has no async_save),
    ``dcp.save`` writes them before this returns."""
    import torch.distributed.checkpoint as dcp
    final = Path(final)
    pending = PendingSave(None, extra, final, keep, is_main)
    tmp = final.with_name(final.name + ".tmp")
    error = None
    if is_main:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError as e:
            error = pending._fail(e)
    if (error := D.broadcast_object(error)) is not None:  # rank 0's outcome on every rank (and a barrier)
        raise ConfigError(error)
    try:
        if async_group is not None and hasattr(dcp, "async_save"):
            # The writer stages (copies) the state to CPU before returning: training may then change the weights.
            pending.written = dcp.async_save(states, storage_writer=dcp.FileSystemWriter(str(tmp)),
                                             process_group=async_group)
            pending.written = getattr(pending.written, "upload_completion", pending.written)  # newer torch
        else:
            dcp.save(states, checkpoint_id=str(tmp))
    except _dcp_errors() as e:
        raise ConfigError(pending._fail(e)) from e
    return pending


def save_sharded_checkpoint(states: dict, extra: dict, final: Path, keep: int = 1, is_main: bool = True) -> Path:
    """Every rank writes its shards of `states` into ``<final>.tmp/``; rank 0 adds `extra` (``extra.pt``), renames
    the directory to `final` once all are done, and keeps the newest `keep` checkpoints beside it. A collective:
    every rank calls it; every rank returns only after the rename (or raises the same ConfigError)."""
    return start_sharded_save(states, extra, final, keep, is_main).finish()


def _read_extra(path: Path, map_location="cpu") -> dict:
    try:
        extra = torch.load(path / EXTRA, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - missing, truncated, not a torch file
        raise CorruptCheckpoint(path, f"{EXTRA}: {first_line(e)}") from e
    if not isinstance(extra, dict) or "step" not in extra:
        raise CorruptCheckpoint(path, f"not a dyt checkpoint: no 'step' in {EXTRA}")
    return extra


def _dcp_metadata(path: Path):
    from torch.distributed.checkpoint import FileSystemReader
    try:
        return FileSystemReader(str(path)).read_metadata()
    except _dcp_errors() as e:
        raise CorruptCheckpoint(path, f"DCP metadata: {first_line(e)}") from e


def _saved_shapes(metadata, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: tuple(md.size) for k, md in metadata.state_dict_metadata.items()
            if k.startswith(prefix + ".") and hasattr(md, "size")}


def _dcp_load(states: dict, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process.*")
        try:
            dcp.load(states, checkpoint_id=str(path), no_dist=not torch_dist.is_initialized())
        except _dcp_errors() as e:  # missing / damaged shard files
            raise CorruptCheckpoint(path, first_line(e)) from e


def _optim_by_name(osd: dict, model, optimizer) -> dict:
    """``optimizer.state_dict()`` (parameters by index) -> keyed by parameter name, as torch's state_dict API wants."""
    name_of = {id(p): clean_name(n) for n, p in model.named_parameters()}
    names = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    return {"state": {names[int(i)]: s for i, s in osd["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in osd["param_groups"]]}


def _optim_by_index(osd: dict) -> dict:
    """Keyed by parameter name (DCP) -> ``optimizer.state_dict()``'s layout (parameters by index)."""
    names = [n for g in osd["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    groups, k = [], 0
    for g in osd["param_groups"]:
        groups.append({**g, "params": list(range(k, k + len(g["params"])))})
        k += len(g["params"])
    return {"state": {index[n]: s for n, s in osd.get("state", {}).items()}, "param_groups": groups}


def _to(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def load_dcp_full(path: Path, map_location="cpu", keys: tuple[str, ...] | None = None) -> dict:
    """A DCP checkpoint directory read whole on this process (no process group needed), in the single-file layout."""
    path = Path(path)
    extra = _read_extra(path)
    metadata = _dcp_metadata(path)
    wanted = [k for k in TENSOR_STATES if (keys is None or k in keys)
              and any(n.startswith(k + ".") for n in metadata.state_dict_metadata)]
    try:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
        state: dict = {}
        _load_state_dict(state, storage_reader=FileSystemReader(str(path)),
                         planner=_EmptyStateDictLoadPlanner(keys=set(wanted)), no_dist=True)
    except (ImportError, TypeError):  # private helpers moved: the public converter, through a temporary file
        import tempfile

        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
        with tempfile.TemporaryDirectory() as d:
            dcp_to_torch_save(str(path), f"{d}/full.pt")
            state = torch.load(f"{d}/full.pt", weights_only=True)
    except _dcp_errors() as e:
        raise CorruptCheckpoint(path, first_line(e)) from e
    state = {k: v for k, v in state.items() if k in wanted}
    if "optimizer" in state:
        state["optimizer"] = _optim_by_index(state["optimizer"])
    state = _to(state, map_location) if str(map_location) != "cpu" else state
    return {**state, **extra}


def restore_dcp(path: Path, model, optimizer, ema_module=None) -> dict:
    """A DCP directory into `model` / `optimizer` / `ema_module`, plain or sharded (DCP reshards: a run saved on N
    processes resumes on M). Returns the rest (``extra.pt``: step, rng, scaler, window)."""
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)
    path = Path(path)
    extra = _read_extra(path)
    metadata = _dcp_metadata(path)
    template = get_model_state_dict(model)
    check_model_match({k: v.shape for k, v in template.items()}, _saved_shapes(metadata, "model"), path)
    states = sharded_states(model, optimizer, ema_module if _saved_shapes(metadata, "ema") else None)
    _dcp_load(states, path)
    set_model_state_dict(model, states["model"])
    set_optimizer_state_dict(model, optimizer, states["optimizer"])
    if "ema" in states:
        set_model_state_dict(ema_module, states["ema"])
    return extra


def dcp_contents(path: Path) -> tuple[dict, set[str]]:
    """A DCP directory's ``extra.pt`` (step, ...) and which tensor states it holds ("model", "ema", ...), without
    reading any tensor."""
    path = Path(path)
    extra = _read_extra(path)
    names = _dcp_metadata(path).state_dict_metadata
    return extra, {k for k in TENSOR_STATES if any(n.startswith(k + ".") for n in names)}


def restore_model_shards(path: Path, model, key: str = "model", full: dict | None = None) -> None:
    """Weights into a sharded (FSDP2) model for evaluation: `full` tensors (a single-file checkpoint, whole on this
    process), or else entry `key` of the DCP directory `path`, each rank reading only its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
    path = Path(path)
    template = get_model_state_dict(model)
    if full is not None:
        check_model_match({k: v.shape for k, v in template.items()}, {k: v.shape for k, v in full.items()}, path)
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True))
        return
    check_model_match({k: v.shape for k, v in template.items()}, _saved_shapes(_dcp_metadata(path), key), path)
    states = {key: template}
    _dcp_load(states, path)
    set_model_state_dict(model, states[key])


def restore_full_into_shards(state: dict, path: Path, model, optimizer, ema_module=None) -> None:
    """A single-file checkpoint's full tensors (a run started on one process) into a sharded model."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    full = StateDictOptions(full_state_dict=True)
    check_model_match({k: v.shape for k, v in get_model_state_dict(model).items()},
                      {k: v.shape for k, v in state["model"].items()}, path)
    set_model_state_dict(model, state["model"], options=full)
    set_optimizer_state_dict(model, optimizer, _optim_by_name(state["optimizer"], model, optimizer), options=full)
    if ema_module is not None and "ema" in state:
        set_model_state_dict(ema_module, state["ema"], options=full)
