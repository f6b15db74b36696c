"""Checkpoints: atomic, verified, and equal to an uninterrupted run on resume.

- ``Checkpointer`` (checkpointer.py): ``save(step, extra)`` / ``resume(mode)`` for a training run, either format.
- The formats: a single checksummed file ``step_XXXXXXXX.pt`` (single_file.py) or, for sharded runs, a DCP
  directory ``step_XXXXXXXX/`` (dcp.py); what both hold is defined once (contents.py).
- Readers: ``load_checkpoint`` (either format, whole, in the single-file layout) and ``load_latest`` (read.py);
  housekeeping of the checkpoints directory (directory.py); the RNG state (rng.py).
Where checkpoints live and how they are listed is the run directory's (``dyt.rundir``).
"""
from dyt.checkpoint.checkpointer import Checkpointer, Resumed
from dyt.checkpoint.contents import CheckpointMismatch, CorruptCheckpoint, load_model_state
from dyt.checkpoint.directory import remove_leftovers
from dyt.checkpoint.read import load_checkpoint, load_latest
from dyt.checkpoint.single_file import write_checkpoint_file
from dyt.rundir import list_checkpoints

__all__ = ["Checkpointer", "Resumed", "CheckpointMismatch", "CorruptCheckpoint", "load_model_state",
           "remove_leftovers", "load_checkpoint", "load_latest", "write_checkpoint_file", "list_checkpoints"]
