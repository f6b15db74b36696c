"""Atomic checkpoints and the RNG state that makes a resumed run equal an uninterrupted one.

Files are written to a temporary name and renamed, so a crash mid-write never leaves a half checkpoint under
a real name. Loading uses ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain containers only.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from dyt.errors import ConfigError

_NAME = re.compile(r"^step_(\d+)\.pt$")


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
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict, ckpt_dir: Path, step: int, keep: int = 1) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic on POSIX
    for old in list_checkpoints(ckpt_dir)[:-max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    if not Path(path).is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated / not a torch file / unpicklable objects
        raise ConfigError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); delete it or set trainer.resume=never") from e
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise ConfigError(f"checkpoint {path} is not a dyt checkpoint (no 'model'/'step' entries)")
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict, path) -> None:
    """Strict load with a one-line error when the checkpoint is for another model."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or mismatched:
        def head(keys):
            return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
        raise ConfigError(f"checkpoint {path} does not match the configured model (missing: {head(missing) or '-'}; "
                          f"unexpected: {head(unexpected) or '-'}; shape mismatch: {head(mismatched) or '-'})")
    model.load_state_dict(state_dict)
