"""Reading checkpoints of either format: one whole (``load_checkpoint``: eval.py, consolidation), or the newest
intact one of a run (``load_latest``: resuming, with a damaged newer one set aside)."""
from __future__ import annotations

from pathlib import Path

from dyt.checkpoint.contents import CheckpointMismatch, CorruptCheckpoint
from dyt.checkpoint.dcp import load_dcp_full
from dyt.checkpoint.directory import set_aside_checkpoint
from dyt.checkpoint.single_file import read_checkpoint_file
from dyt.errors import ConfigError
from dyt.files import warn
from dyt.rundir import list_checkpoints


def load_checkpoint(path: Path, map_location="cpu", keys: tuple[str, ...] | None = None) -> dict:
    """A verified checkpoint; CorruptCheckpoint (a ConfigError, one line naming the file) when it cannot be used.

    A DCP directory is read whole on this process into the single-file layout (full tensors; the optimizer state
    indexed like ``optimizer.state_dict()``); `keys` limits that to some entries (e.g. ``("model", "ema")``)."""
    path = Path(path)
    if path.is_dir():
        return load_dcp_full(path, map_location, keys)
    return read_checkpoint_file(path, map_location)


def load_latest(ckpt_dir: Path, map_location="cpu", is_main: bool = True, load=None) -> tuple[dict, Path] | None:
    """The newest intact checkpoint of a run as ``(state, path)``; None when the run has none. `load(path)` reads
    one (default: ``load_checkpoint``; the Checkpointer's restores into its model, any format).

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
                kept = set_aside_checkpoint(e.path)
                warn(f"checkpoint {e.path} is corrupt ({e.reason}; kept as {kept.name}); resuming from {path} instead")
        return state, path
    if bad:
        more = (f" (and {len(bad) - 1} older checkpoint(s): none is intact)" if len(bad) > 1
                else " (no older checkpoint)")
        e = bad[0]
        raise CorruptCheckpoint(e.path, e.reason + more)
    return None
