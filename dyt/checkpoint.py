"""Atomic, checksummed checkpoints and the RNG state that makes a resumed run equal an uninterrupted one.

A checkpoint ``step_XXXXXXXX.pt`` is written to ``.pt.tmp``, fsynced and renamed (then the directory is fsynced),
so a crash never leaves a half checkpoint under a real name. Its SHA-256 goes to the sidecar
``step_XXXXXXXX.pt.sha256`` (``sha256sum -c`` format) and is verified on load: a checkpoint damaged on disk is
detected even when it still unpickles. Checkpoints written before checksums existed (no sidecar) load as before.
Loading uses ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain containers only.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from dyt.errors import ConfigError
from dyt.rundir import fsync_dir, os_error, set_aside, warn

_NAME = re.compile(r"^step_(\d+)\.pt$")
_LEFTOVER = re.compile(r"^step_\d+\.pt(\.sha256)?\.tmp$")
_CHUNK = 1 << 20


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
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
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


def save_checkpoint(state: dict, ckpt_dir: Path, step: int, keep: int = 1) -> Path:
    """Write ``step_<step>.pt`` (+ its ``.sha256``) atomically and durably; keep the newest `keep` checkpoints.

    A failed write (disk full, I/O error) removes the partial file and is one ConfigError line: a rerun of the
    same command, once the cause is fixed, resumes from the previous checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / f"step_{step:08d}.pt"
    tmp, digest_file = path.with_name(path.name + ".tmp"), checksum_path(path)
    digest_tmp = digest_file.with_name(digest_file.name + ".tmp")
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
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
        fsync_dir(ckpt_dir)
    except OSError as e:
        for p in (tmp, digest_tmp):
            p.unlink(missing_ok=True)
        raise ConfigError(f"could not write checkpoint {path}: {os_error(e)}; free space and run the same command "
                          f"to resume") from e
    for old in list_checkpoints(ckpt_dir)[:-max(1, keep)]:
        old.unlink(missing_ok=True)
        checksum_path(old).unlink(missing_ok=True)
    return path


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


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """A verified checkpoint; CorruptCheckpoint (a ConfigError, one line naming the file) when it cannot be used."""
    path = Path(path)
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


def load_latest(ckpt_dir: Path, map_location="cpu", is_main: bool = True) -> tuple[dict, Path] | None:
    """The newest intact checkpoint of a run as ``(state, path)``; None when the run has none.

    A damaged newer checkpoint is skipped with a one-line warning and, on the main rank (`is_main`), kept aside
    as ``<name>.corrupt`` so it is never picked (or kept over a good one) again. When no checkpoint is intact,
    CorruptCheckpoint names the newest one and nothing is moved."""
    found = list_checkpoints(Path(ckpt_dir))
    bad: list[CorruptCheckpoint] = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path, map_location=map_location)
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
    try:
        kept = set_aside(path)
    except FileNotFoundError:
        return path
    digest_file = checksum_path(path)
    if digest_file.exists():
        os.replace(digest_file, kept.with_name(kept.name + ".sha256"))
    return kept


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
