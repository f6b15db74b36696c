"""What a checkpoint holds, and the two ways it can be unusable (damaged, or of another model).

Every checkpoint, in either format, holds the state dicts ``TENSOR_STATES`` (``model``, ``optimizer``, ``ema``
when the run keeps one) and the run's position ``step``, ``rng`` (every rank's RNG state), ``scaler`` and
``window`` (the log window open at the checkpoint). A single file holds them all in one dict; a DCP directory
holds the state dicts as shards and the rest in ``extra.pt``. ``Checkpointer`` (checkpointer.py) writes and
restores them; nothing else decides what goes in.
"""
from __future__ import annotations

from pathlib import Path

import torch

from dyt.errors import ConfigError

TENSOR_STATES = ("model", "optimizer", "ema")  # state dicts (sharded under FSDP); the rest is the run's position


class CheckpointMismatch(ConfigError):
    """An intact checkpoint of another model: never skipped or set aside, always one error."""


class CorruptCheckpoint(ConfigError):
    """A checkpoint file that cannot be trusted: missing, unreadable, checksum mismatch, not a dyt checkpoint."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"checkpoint {path} is corrupt or unreadable ({reason}); delete it or set "
                         f"trainer.resume=never")


def first_line(e: BaseException) -> str:
    """``ErrorType: its first line`` (at most 200 characters); DCP's CheckpointException names the failed rank."""
    failures = getattr(e, "failures", None)  # DCP's CheckpointException: {rank: the error there}
    if isinstance(failures, dict) and failures:
        rank, inner = next(iter(failures.items()))
        return f"rank {rank}: {first_line(getattr(inner, 'exception', inner))}"
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return type(e).__name__ + (f": {first[:200]}" if first else "")


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
