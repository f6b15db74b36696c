"""Atomic, checksummed checkpoints and the RNG state that makes a resumed run equal an uninterrupted one.

A checkpoint ``step_XXXXXXXX.pt`` is written to ``.pt.tmp``, fsynced and renamed (then the directory is fsynced),
so a crash never leaves a half checkpoint under a real name. Its SHA-256 goes to the sidecar
``step_XXXXXXXX.pt.sha256`` (``sha256sum -c`` format) and is verified on load: a checkpoint damaged on disk is
detected even when it still unpickles. Checkpoints written before checksums existed (no sidecar) load as before.
Loading uses ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain containers only.

Sharded runs (trainer.parallel=fsdp|hsdp) write a DCP directory ``step_XXXXXXXX/`` instead: every rank writes its
shards into ``step_XXXXXXXX.tmp/`` (torch.distributed.checkpoint: model, optimizer and EMA state dicts), rank 0 adds
``extra.pt`` (step, every rank's RNG, scaler, log window) and renames the directory once all ranks are done, so a
half-written step never has a real name. DCP reshards on load: a run saved on N processes resumes on M (any
strategy). ``load_checkpoint`` reads both formats into today's single-file layout (eval.py, consolidation).
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from dyt.errors import ConfigError
from dyt.rundir import fsync_dir, os_error, set_aside, warn

_NAME = re.compile(r"^step_(\d+)(\.pt)?$")  # a file step_N.pt, or a DCP directory step_N
_LEFTOVER = re.compile(r"^step_\d+(\.pt(\.sha256)?\.tmp|\.tmp|\.old)$")
EXTRA = "extra.pt"  # in a DCP directory: what is not a model / optimizer / EMA tensor
_CHUNK = 1 << 20


class CheckpointMismatch(ConfigError):
    """An intact checkpoint of another model: never skipped or set aside, always one error."""


class CorruptCheckpoint(ConfigError):
    """A checkpoint file that cannot be trusted: missing, unreadable, checksum mismatch, not a dyt checkpoint."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"checkpoint {path} is corrupt or unreadable ({reason}); delete it or set "
                         f"trainer.resume=never")


def rng_state() -> dict:
    """This process's RNG state as tensors and plain containers (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if (m := _NAME.match(p.name)) and p.is_dir() == (m.group(2) is None)]
    return [p for _, p in sorted(found)]



def checksum_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".sha256")


class _HashingWriter:
    """The file object torch.save writes to: hashes the bytes on the way and keeps the OSError that torch would
    otherwise turn into an opaque RuntimeError."""

    def __init__(self, f):
        self.f, self.sha, self.error = f, hashlib.sha256(), None

    def write(self, data) -> int:
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.sha.update(data)
        return n

    def flush(self) -> None:
        self.f.flush()


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_checkpoint_file(state: dict, path: Path) -> Path:
    """Write `state` to `path` (+ its ``.sha256``) atomically and durably (``.tmp`` then rename, fsyncs).

    A failed write (disk full, I/O error) removes the partial file and is one ConfigError line: a rerun of the
    same command, once the cause is fixed, resumes from the previous checkpoint."""
    path = Path(path)
    tmp, digest_file = path.with_name(path.name + ".tmp"), checksum_path(path)
    digest_tmp = digest_file.with_name(digest_file.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is not None:  # torch wraps the writer's OSError in a RuntimeError
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        # Never a moment with a checkpoint and a checksum that do not belong together: an older file at this name
        # loses its checksum first; a crash between the rename and the checksum leaves an intact, unverified file.
        digest_file.unlink(missing_ok=True)
        os.replace(tmp, path)
        _write_durably(digest_tmp, f"{writer.sha.hexdigest()}  {path.name}\n".encode())
        os.replace(digest_tmp, digest_file)
        fsync_dir(path.parent)
    except OSError as e:
        for p in (tmp, digest_tmp):
            p.unlink(missing_ok=True)
        raise ConfigError(f"could not write checkpoint {path}: {os_error(e)}; free space and run the same command "
                          f"to resume") from e
    return path


def save_checkpoint(state: dict, ckpt_dir: Path, step: int, keep: int = 1) -> Path:
    """Write ``step_<step>.pt`` (+ its ``.sha256``) atomically and durably; keep the newest `keep` checkpoints."""
    path = write_checkpoint_file(state, Path(ckpt_dir) / f"step_{step:08d}.pt")
    prune_checkpoints(ckpt_dir, keep)
    return path


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints (files with their checksums, DCP directories)."""
    for old in list_checkpoints(Path(ckpt_dir))[:-max(1, keep)]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
            checksum_path(old).unlink(missing_ok=True)


def remove_leftovers(ckpt_dir: Path) -> list[Path]:
    """Remove what a process killed while writing a checkpoint left behind (``.tmp`` files, a checksum without its
    checkpoint); returns the removed paths. Call it on rank 0 before anything else uses the directory."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    removed = []
    for p in ckpt_dir.iterdir():
        orphan = p.name.endswith(".pt.sha256") and _NAME.match(p.name[:-7]) and not p.with_name(p.name[:-7]).exists()
        if _LEFTOVER.match(p.name) or orphan:
            if p.is_dir():  # a DCP step being written (.tmp) or replaced (.old)
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def verify_checkpoint(path: Path) -> None:
    """Raise CorruptCheckpoint when `path` does not match its recorded SHA-256 (no checksum file = accepted)."""
    path, digest_file = Path(path), checksum_path(path)
    try:
        recorded = digest_file.read_bytes()
    except FileNotFoundError:
        return  # written before checksums existed
    except OSError as e:
        raise CorruptCheckpoint(path, f"unreadable checksum file {digest_file.name}: {os_error(e)}") from e
    parts = recorded.split()
    expected = parts[0].decode("ascii", "replace").lower() if parts else ""
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise CorruptCheckpoint(path, f"damaged checksum file {digest_file.name}")
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                sha.update(chunk)
    except OSError as e:
        raise CorruptCheckpoint(path, os_error(e)) from e
    if sha.hexdigest() != expected:
        raise CorruptCheckpoint(path, f"sha256 mismatch: {path.stat().st_size} bytes hash to "
                                      f"{sha.hexdigest()[:12]}..., {digest_file.name} says {expected[:12]}...")


def load_checkpoint(path: Path, map_location="cpu", keys: tuple[str, ...] | None = None) -> dict:
    """A verified checkpoint; CorruptCheckpoint (a ConfigError, one line naming the file) when it cannot be used.

    A DCP directory is read whole on this process into the single-file layout (full tensors; the optimizer state
    indexed like ``optimizer.state_dict()``); `keys` limits that to some entries (e.g. ``("model", "ema")``)."""
    path = Path(path)
    if path.is_dir():
        return load_dcp_full(path, map_location, keys)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated / empty / not a torch file / unpicklable objects
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise CorruptCheckpoint(path, type(e).__name__ + (f": {first[:200]}" if first else "")) from e
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CorruptCheckpoint(path, "not a dyt checkpoint: no 'model'/'step' entries")
    return state


def load_latest(ckpt_dir: Path, map_location="cpu", is_main: bool = True, load=None) -> tuple[dict, Path] | None:
    """The newest intact checkpoint of a run as ``(state, path)``; None when the run has none. `load(path)` reads
    one (default: ``load_checkpoint``; the trainer's restores into its model, any format).

    A damaged newer checkpoint is skipped with a one-line warning and, on the main rank (`is_main`), kept aside
    as ``<name>.corrupt`` so it is never picked (or kept over a good one) again. When no checkpoint is intact,
    CorruptCheckpoint names the newest one and nothing is moved."""
    found = list_checkpoints(Path(ckpt_dir))
    bad: list[CorruptCheckpoint] = []
    for path in reversed(found):
        try:
            state = load(path) if load is not None else load_checkpoint(path, map_location=map_location)
        except CheckpointMismatch:
            raise
        except CorruptCheckpoint as e:
            bad.append(e)
            continue
        except ConfigError as e:  # vanished under us (another rank moved it aside): a bad one like the others
            bad.append(CorruptCheckpoint(path, str(e)))
            continue
        if bad and is_main:
            for e in bad:
                kept = _set_aside(e.path)
                warn(f"checkpoint {e.path} is corrupt ({e.reason}; kept as {kept.name}); resuming from {path} instead")
        return state, path
    if bad:
        more = (f" (and {len(bad) - 1} older checkpoint(s): none is intact)" if len(bad) > 1
                else " (no older checkpoint)")
        e = bad[0]
        raise CorruptCheckpoint(e.path, e.reason + more)
    return None


def _set_aside(path: Path) -> Path:
    if path.is_dir():  # a DCP step: renamed (never over an earlier .corrupt)
        for n in range(10_000):
            dest = path.with_name(f"{path.name}.corrupt" + (f".{n}" if n else ""))
            if not dest.exists():
                os.rename(path, dest)
                return dest
        return path
    try:
        kept = set_aside(path)
    except FileNotFoundError:
        return path
    digest_file = checksum_path(path)
    if digest_file.exists():
        os.replace(digest_file, kept.with_name(kept.name + ".sha256"))
    return kept


def check_model_match(own: dict, saved: dict, path) -> None:
    """CheckpointMismatch (one line) unless `saved` (name -> shape) has exactly the model's entries `own`."""
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    mismatched = [k for k in own if k in saved and tuple(own[k]) != tuple(saved[k])]
    if missing or unexpected or mismatched:
        def head(keys):
            return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
        raise CheckpointMismatch(f"checkpoint {path} does not match the configured model (missing: "
                                 f"{head(missing) or '-'}; unexpected: {head(unexpected) or '-'}; shape mismatch: "
                                 f"{head(mismatched) or '-'})")


def load_model_state(model: torch.nn.Module, state_dict: dict, path) -> None:
    """Strict load with a one-line error when the checkpoint is for another model."""
    check_model_match({k: v.shape for k, v in model.state_dict().items()},
                      {k: v.shape for k, v in state_dict.items()}, path)
    model.load_state_dict(state_dict)


# --- sharded (DCP) checkpoints ----------------------------------------------------------------------------------
_STATES = ("model", "optimizer", "ema")


def _dcp_errors() -> tuple:
    """What a failed DCP read or write raises: CheckpointException (a BaseException gathering every rank's error)."""
    from torch.distributed.checkpoint.api import CheckpointException
    return (Exception, CheckpointException)


def _first_line(e: BaseException) -> str:
    failures = getattr(e, "failures", None)  # DCP's CheckpointException: {rank: the error there}
    if isinstance(failures, dict) and failures:
        rank, inner = next(iter(failures.items()))
        return f"rank {rank}: {_first_line(getattr(inner, 'exception', inner))}"
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return type(e).__name__ + (f": {first[:200]}" if first else "")


def _from_rank0(obj):
    """Rank 0's `obj` on every rank (a collective; a barrier too)."""
    import torch.distributed as torch_dist
    if not torch_dist.is_initialized():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def sharded_states(model, optimizer, ema_module=None) -> dict:
    """The DCP state of a training run: model, optimizer and EMA state dicts keyed by parameter name (sharded
    DTensors under FSDP; plain tensors otherwise)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    states = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema_module is not None:
        states["ema"] = get_model_state_dict(ema_module)
    return states


def save_sharded_checkpoint(states: dict, extra: dict, ckpt_dir: Path, step: int, keep: int = 1,
                            is_main: bool = True) -> Path:
    """Every rank writes its shards of `states` into ``step_<step>.tmp/``; rank 0 adds `extra` (``extra.pt``),
    renames the directory to ``step_<step>`` once all are done, and keeps the newest `keep` checkpoints. A
    collective: every rank calls it; every rank returns only after the rename (or raises the same ConfigError)."""
    import io

    import torch.distributed.checkpoint as dcp
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step_{step:08d}"
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")

    def fail(e: BaseException) -> str:
        return f"could not write checkpoint {final}: {os_error(e) if isinstance(e, OSError) else _first_line(e)}; " \
               "free space and run the same command to resume"
    error = None
    if is_main:
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError as e:
            error = fail(e)
    if (error := _from_rank0(error)) is not None:
        raise ConfigError(error)
    try:
        dcp.save(states, checkpoint_id=str(tmp))  # gathers every rank's write results: all fail or none
    except _dcp_errors() as e:  # CheckpointException wraps the ranks' OSErrors
        raise ConfigError(fail(e)) from e
    if is_main:
        try:
            buf = io.BytesIO()
            torch.save(extra, buf)
            _write_durably(tmp / EXTRA, buf.getvalue())
            fsync_dir(tmp)
            if final.exists():  # the same step written again (a run resumed at it)
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            fsync_dir(ckpt_dir)
            shutil.rmtree(old, ignore_errors=True)
            prune_checkpoints(ckpt_dir, keep)
        except OSError as e:
            error = fail(e)
    if (error := _from_rank0(error)) is not None:  # also the barrier: nobody goes on before the rename
        raise ConfigError(error)
    return final


def _read_extra(path: Path, map_location="cpu") -> dict:
    try:
        extra = torch.load(path / EXTRA, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - missing, truncated, not a torch file
        raise CorruptCheckpoint(path, f"{EXTRA}: {_first_line(e)}") from e
    if not isinstance(extra, dict) or "step" not in extra:
        raise CorruptCheckpoint(path, f"not a dyt checkpoint: no 'step' in {EXTRA}")
    return extra


def _dcp_metadata(path: Path):
    from torch.distributed.checkpoint import FileSystemReader
    try:
        return FileSystemReader(str(path)).read_metadata()
    except _dcp_errors() as e:
        raise CorruptCheckpoint(path, f"DCP metadata: {_first_line(e)}") from e


def _saved_shapes(metadata, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: tuple(md.size) for k, md in metadata.state_dict_metadata.items()
            if k.startswith(prefix + ".") and hasattr(md, "size")}


def _dcp_load(states: dict, path: Path) -> None:
    import torch.distributed as torch_dist
    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process.*")
        try:
            dcp.load(states, checkpoint_id=str(path), no_dist=not torch_dist.is_initialized())
        except _dcp_errors() as e:  # missing / damaged shard files
            raise CorruptCheckpoint(path, _first_line(e)) from e


def _optim_by_name(osd: dict, model, optimizer) -> dict:
    """``optimizer.state_dict()`` (parameters by index) -> keyed by parameter name, as torch's state_dict API wants."""
    from dyt.parallel import clean_name
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
    wanted = [k for k in _STATES if (keys is None or k in keys)
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
        raise CorruptCheckpoint(path, _first_line(e)) from e
    state = {k: v for k, v in state.items() if k in wanted}
    if "optimizer" in state:
        state["optimizer"] = _optim_by_index(state["optimizer"])
    state = _to(state, map_location) if str(map_location) != "cpu" else state
    return {**state, **extra}


def restore_checkpoint(path: Path, model, optimizer, ema_module=None, map_location="cpu") -> dict:
    """Load a checkpoint of either format into `model` / `optimizer` / `ema_module`, plain or sharded (DCP
    reshards: a run saved on N processes resumes on M). Returns the rest (step, rng, scaler, window)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    path = Path(path)
    if path.is_dir():
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
    sharded = any(hasattr(p, "full_tensor") for p in model.parameters())
    state = load_checkpoint(path, map_location="cpu" if sharded else map_location)
    if not sharded:
        load_model_state(model, state["model"], path)
        optimizer.load_state_dict(state["optimizer"])
        if ema_module is not None and "ema" in state:
            ema_module.load_state_dict(state["ema"])
    else:  # a single file (a run started on one process) into shards
        full = StateDictOptions(full_state_dict=True)
        check_model_match({k: v.shape for k, v in get_model_state_dict(model).items()},
                          {k: v.shape for k, v in state["model"].items()}, path)
        set_model_state_dict(model, state["model"], options=full)
        set_optimizer_state_dict(model, optimizer, _optim_by_name(state["optimizer"], model, optimizer), options=full)
        if ema_module is not None and "ema" in state:
            set_model_state_dict(ema_module, state["ema"], options=full)
    return {k: v for k, v in state.items() if k not in _STATES}
