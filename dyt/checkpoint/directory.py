"""Housekeeping of a run's checkpoints directory, for both formats: keeping the newest few, removing what a
killed write left behind, and setting a damaged checkpoint aside so it is never picked again."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from dyt.checkpoint.single_file import checksum_path
from dyt.files import set_aside
from dyt.rundir import CHECKPOINT_NAME, list_checkpoints

# The temporary names the writers use: a file (and its checksum) being written, a DCP step being written (.tmp)
# or replaced (.old).
_LEFTOVER = re.compile(r"^step_\d+(\.pt(\.sha256)?\.tmp|\.tmp|\.old)$")


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
        orphan = (p.name.endswith(".pt.sha256") and CHECKPOINT_NAME.match(p.name[:-7])
                  and not p.with_name(p.name[:-7]).exists())
        if _LEFTOVER.match(p.name) or orphan:
            if p.is_dir():  # a DCP step being written (.tmp) or replaced (.old)
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def set_aside_checkpoint(path: Path) -> Path:
    """Keep a damaged checkpoint as ``<name>.corrupt[.N]`` (a file with its checksum, or a DCP directory)."""
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
