"""Files that survive a crash, and one-line reports when they do not: the ground floor under the run directory,
its records and its checkpoints (stdlib only).

- ``write_text_atomic`` / ``write_json``: a temporary name, fsync, rename, fsync of the directory: a crash never
  leaves a half-written file under the real name, and a failed write (disk full) leaves no temporary file.
- ``write_durably``: bytes written and fsynced in place (for files that are renamed into place by their caller).
- ``set_aside``: a damaged file is kept next to the record as ``<name>.corrupt[.N]``, never overwritten.
- ``read_json_object``: a JSON object file, or None when it is absent or damaged (never an exception).
"""
from __future__ import annotations

import json
import errno
import os
import shutil
import sys
from pathlib import Path

from dyt.errors import ConfigError


def warn(message: str) -> None:
    """A one-line warning on stderr (callers print only on rank 0)."""
    print(f"[dyt] warning: {message}", file=sys.stderr, flush=True)


def os_error(e: OSError) -> str:
    """``[Errno 28] No space left on device`` (without the file name, which the caller's message gives)."""
    return f"[Errno {e.errno}] {e.strerror}" if e.errno is not None and e.strerror else f"{type(e).__name__}: {e}"


def fix_hint(e: OSError, then: str = "run the same command to resume") -> str:
    """What to do about a failed write: free space for a full disk, permissions for a read-only place."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space and {then}"
    if e.errno == errno.ENAMETOOLONG:
        return f"use a shorter run_name / sweep_name (or fewer overrides) and {then}"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make it writable (or choose another hydra.run.dir) and {then}"
    return f"fix the cause and {then}"


def fsync_dir(path: Path) -> None:
    """Make a rename / creation / deletion in directory `path` durable (no-op where directories cannot be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary(path: Path) -> Path:
    """The name ``write_text_atomic`` writes `path` under before renaming it (a kill may leave it behind)."""
    path = Path(path)
    return path.with_suffix(path.suffix + ".tmp")


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it (the caller renames it into place)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary name, fsync, rename, fsync the directory: a crash never leaves a half-written file,
    and a failed write (disk full) leaves no temporary file behind."""
    path = Path(path)
    tmp = temporary(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, obj: dict) -> None:
    """`obj` as indented JSON, atomically (``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json_object(path: Path) -> dict | None:
    """The JSON object in `path`; None when it is absent or unreadable (truncated, not UTF-8, not an object)."""
    try:
        obj = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def set_aside(path: Path, copy: bool = False) -> Path:
    """Keep a damaged file as ``<name>.corrupt`` (then ``.corrupt.1``, ``.corrupt.2``...: an earlier one is never
    overwritten). Moves the file, or copies it with ``copy=True`` (the caller then rewrites `path`)."""
    path = Path(path)
    for n in range(10_000):
        dest = path.with_name(f"{path.name}.corrupt" + (f".{n}" if n else ""))
        try:
            if copy:
                with open(path, "rb") as src, open(dest, "xb") as dst:
                    shutil.copyfileobj(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
            else:
                os.link(path, dest)  # fails if dest exists: never overwrites
                os.unlink(path)
        except FileExistsError:
            continue
        fsync_dir(path.parent)
        return dest
    raise ConfigError(f"too many damaged copies of {path} kept next to it; remove some")
