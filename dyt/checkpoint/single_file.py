"""The single-file format (one process, DDP): ``step_XXXXXXXX.pt``, atomic and checksummed.

The file is written to ``.pt.tmp``, fsynced and renamed (then the directory is fsynced), so a crash never leaves a
half checkpoint under a real name. Its SHA-256 goes to the sidecar ``step_XXXXXXXX.pt.sha256`` (``sha256sum -c``
format) and is verified on load: a checkpoint damaged on disk is detected even when it still unpickles.
Checkpoints written before checksums existed (no sidecar) load as before. Loading uses
``torch.load(weights_only=True)``: a checkpoint holds tensors and plain containers only.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from dyt.checkpoint.contents import CorruptCheckpoint, first_line
from dyt.errors import ConfigError
from dyt.files import fix_hint, fsync_dir, os_error, warn, write_durably

_CHUNK = 1 << 20


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


FORMAT = 2  # 2: the checksum file is written before the checkpoint is renamed into place (1: after it, or none)


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
                torch.save({**state, "format": FORMAT}, writer)
            except RuntimeError:
                if writer.error is not None:  # torch wraps the writer's OSError in a RuntimeError
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        # The checksum is in place before the checkpoint gets its name: a checkpoint of this format (FORMAT) is
        # never without one, so a missing checksum file is damage, not a crash window (a crash after the
        # checksum's rename leaves a checksum without its file, which directory.py clears as an orphan).
        write_durably(digest_tmp, f"{writer.sha.hexdigest()}  {path.name}\n".encode())
        os.replace(digest_tmp, digest_file)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        for p in (tmp, digest_tmp):
            try:
                p.unlink(missing_ok=True)
            except OSError:  # the folder itself is the problem (a file, read-only): nothing was written there
                pass
        raise ConfigError(f"could not write checkpoint {path}: {os_error(e)}; {fix_hint(e)}") from e
    return path


def verify_checkpoint(path: Path) -> bool:
    """Raise CorruptCheckpoint when `path` does not match its recorded SHA-256; False when it has no checksum file
    (whether that is allowed depends on the checkpoint's format: `read_checkpoint_file`)."""
    path, digest_file = Path(path), checksum_path(path)
    try:
        recorded = digest_file.read_bytes()
    except FileNotFoundError:
        return False
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
    return True


def read_checkpoint_file(path: Path, map_location="cpu") -> dict:
    """A verified single-file checkpoint; CorruptCheckpoint (one line naming the file) when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    verified = verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated / empty / not a torch file / unpicklable objects
        raise CorruptCheckpoint(path, first_line(e)) from e
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CorruptCheckpoint(path, "not a dyt checkpoint: no 'model'/'step' entries")
    if not verified:
        if state.get("format", 1) >= FORMAT:  # written with its checksum first: the checksum file was lost
            raise CorruptCheckpoint(path, f"its checksum file {checksum_path(path).name} is missing, and this "
                                          "format is never trusted without it")
        warn(f"checkpoint {path} has no checksum (written by an older version): loaded unverified")
    return state
