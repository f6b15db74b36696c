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
from dyt.files import fsync_dir, os_error, write_durably

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
        write_durably(digest_tmp, f"{writer.sha.hexdigest()}  {path.name}\n".encode())
        os.replace(digest_tmp, digest_file)
        fsync_dir(path.parent)
    except OSError as e:
        for p in (tmp, digest_tmp):
            p.unlink(missing_ok=True)
        raise ConfigError(f"could not write checkpoint {path}: {os_error(e)}; free space and run the same command "
                          f"to resume") from e
    return path


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


def read_checkpoint_file(path: Path, map_location="cpu") -> dict:
    """A verified single-file checkpoint; CorruptCheckpoint (one line naming the file) when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated / empty / not a torch file / unpicklable objects
        raise CorruptCheckpoint(path, first_line(e)) from e
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CorruptCheckpoint(path, "not a dyt checkpoint: no 'model'/'step' entries")
    return state
