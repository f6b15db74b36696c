"""The run directory as a truthful record: one layout, one owner at a time, resumed only with the config that
defines it.

- ``RunDir(path)``: where every record lives (``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``eval.json``,
  ``checkpoints/``, ...): the file names of a run directory are spelled here and nowhere else under ``dyt/``.
  ``list_checkpoints`` lists a checkpoints directory (``step_XXXXXXXX.pt`` files and sharded ``step_XXXXXXXX/``
  directories); ``read_summary`` / ``read_eval`` / ``read_config`` read the records, never raising on damage.
- ``RunLock(run_dir)``: an exclusive ``flock`` on ``<run_dir>/.lock`` (rank 0 only); a second process on the same
  directory stops with one line naming the holder. The OS drops the lock when its process dies, so a lock left by a
  killed run is taken over without any clean-up; the run's forked children (data workers) close their inherited
  copy at once, so they never keep a killed run's lock.
- ``check_config_change(run_dir, cfg)``: a resume whose config changed what defines the run is one clear error;
  the settings that may differ on resume (longer training, loader workers, event periods, logging) are returned so
  the change is recorded.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import fnmatch
import json
import os
import re
import socket
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dyt.errors import ConfigError
from dyt.files import fix_hint, os_error, read_json_object, warn

# A checkpoint: a single file step_N.pt, or a sharded (DCP) directory step_N.
CHECKPOINT_NAME = re.compile(r"^step_(\d+)(\.pt)?$")


class RunDir:
    """The layout of one run directory (paths only: creating nothing, reading nothing)::

        config.yaml     the resolved config            metrics.jsonl   one JSON object per log event
        summary.json    status and final metrics       eval.json       eval.py's metrics (lm_eval.json: zero-shot)
        checkpoints/    step_XXXXXXXX.pt (+ .sha256) or step_XXXXXXXX/ (DCP)
        samples/        the task's pictures            fid_samples.png eval.py's FID samples
        train.log       Hydra's log of the run
        .lock           the owner's pid and host       wandb_id        the wandb run continued on resume
    """

    CONFIG, METRICS, SUMMARY, CHECKPOINTS = "config.yaml", "metrics.jsonl", "summary.json", "checkpoints"
    EVAL, LM_EVAL, FID_GRID = "eval.json", "lm_eval.json", "fid_samples.png"
    SAMPLES, LOG, LOCK, WANDB_ID = "samples", "train.log", ".lock", "wandb_id"
    RECORDS = (CONFIG, METRICS, SUMMARY, CHECKPOINTS)  # what makes a directory a run
    EVALS = (EVAL, LM_EVAL)  # metrics measured after training, beside summary.json

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / self.CONFIG)
    metrics = property(lambda self: self.path / self.METRICS)
    summary = property(lambda self: self.path / self.SUMMARY)
    eval = property(lambda self: self.path / self.EVAL)
    lm_eval = property(lambda self: self.path / self.LM_EVAL)
    fid_grid = property(lambda self: self.path / self.FID_GRID)
    checkpoints_dir = property(lambda self: self.path / self.CHECKPOINTS)
    hydra_config = property(lambda self: self.path / ".hydra" / "config.yaml")  # the composed config, as Hydra wrote it
    samples = property(lambda self: self.path / self.SAMPLES)
    log = property(lambda self: self.path / self.LOG)
    lock_file = property(lambda self: self.path / self.LOCK)
    wandb_id = property(lambda self: self.path / self.WANDB_ID)

    def checkpoint(self, step: int, sharded: bool = False) -> Path:
        """Where the checkpoint of `step` goes: a single file, or a DCP directory (`sharded`)."""
        return self.checkpoints_dir / (f"step_{step:08d}" + ("" if sharded else ".pt"))

    def checkpoints(self) -> list[Path]:
        """The run's checkpoints, oldest first."""
        return list_checkpoints(self.checkpoints_dir)

    def is_run(self) -> bool:
        """Whether the directory holds any record of a run (as opposed to an empty directory Hydra made)."""
        return any((self.path / name).exists() for name in self.RECORDS)

    def find_runs(self) -> list["RunDir"]:
        """Every run directory at or under this path (a summary.json beside a config.yaml, or beside Hydra's
        .hydra/config.yaml: a sweep point that failed before it started), in path order."""
        found = [self.summary] if self.summary.exists() else sorted(self.path.rglob(self.SUMMARY))
        return [RunDir(s.parent) for s in found
                if (s.parent / self.CONFIG).exists() or RunDir(s.parent).hydra_config.exists()]


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoints in a checkpoints directory (files ``step_N.pt``, DCP directories ``step_N``), oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if (m := CHECKPOINT_NAME.match(p.name)) and p.is_dir() == (m.group(2) is None)]
    return [p for _, p in sorted(found)]


def read_summary(run_dir: str | Path) -> dict | None:
    """A run's summary.json as a dict; None when it is absent or unreadable (truncated, not UTF-8, not a JSON
    object). An unreadable summary means an unfinished run: it resumes from its checkpoints."""
    return read_json_object(RunDir(run_dir).summary)


def read_eval(run_dir: str | Path, name: str = RunDir.EVAL) -> dict:
    """A run's eval.json (or another of ``RunDir.EVALS``); {} when absent or unreadable."""
    return read_json_object(RunDir(run_dir).path / name) or {}


def read_config(run_dir: str | Path) -> dict | None:
    """A run's recorded config.yaml as a plain dict; None when absent or unreadable."""
    try:
        cfg = OmegaConf.load(RunDir(run_dir).config)
        return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else None
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - damaged yaml of any kind
        return None


# Settings that may differ when a run is resumed: they extend the run or change how it is watched, not what it
# computes. Everything else (model, norm, data, optim, seed, batch size, precision, ...) defines the run.
# A family adds its own (Family.resume_keys: e.g. DiT's sampler settings), passed as `allowed`.
ALLOWED_ON_RESUME = (
    "trainer.max_steps", "trainer.epochs",  # extend (or shorten) a run
    "trainer.eval_every", "trainer.eval_every_epochs", "trainer.eval_batch_size", "trainer.ckpt_every",
    "trainer.log_every", "trainer.keep_checkpoints", "trainer.progress", "trainer.resume", "trainer.device",
    "trainer.compile",  # a speed knob: the same math
    # how the same model is spread over the ranks and recomputed (losses equal to ~1e-7; tests/test_fsdp.py)
    "trainer.parallel", "trainer.hsdp_shard_size", "trainer.activation_checkpointing", "trainer.ac_every",
    "data.num_workers", "data.root",  # where the same data lives / how many processes read it
    "logger", "logger.*", "run_name", "sweep_name", "table",  # names and labels
    "launcher", "launcher.*",  # how many processes run it (checkpoints say whether they resume on another size)
)
ABSENT = "<absent>"


# --- one owner per run directory --------------------------------------------------------------------------
class RunDirInUse(ConfigError):
    """Another live process owns the run directory: the caller must not write anything into it."""


class ConfigChanged(ConfigError):
    """A resume with a config that changes what defines the run; the directory's records are left as they are."""


# Lock descriptors this process holds. A flock belongs to the open file description, which a forked child shares:
# a DataLoader worker would keep a SIGKILLed run's lock until it noticed its parent's death (~5 s), and the re-run
# (a SLURM requeue, a retry) would be refused. Every child forked by Python closes them first thing.
_HELD_FDS: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD_FDS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def _alive(pid: str) -> bool:
    """Whether a process with this pid runs on this host (a zombie does not: it holds nothing any more)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):  # PermissionError: someone else's live process
        return True
    try:
        state = Path(f"/proc/{int(pid)}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class RunLock:
    """Exclusive ownership of a run directory while a run writes it::

        with RunLock(run_dir):
            ...

    ``<run_dir>/.lock`` holds ``<pid> <host>`` of the owner. ``enabled=None`` takes the lock on rank 0 only (the
    ``RANK`` environment variable of torchrun; no variable = a single process, which is rank 0). A directory that
    the lock itself created and that is still empty when it is released is removed again.

    The lock is not inherited: children forked by Python close it (``os.register_at_fork``), children started by
    exec never get it (Python's descriptors are close-on-exec). Should a dead owner's descendants still hold it (a
    fork from C code), acquiring waits up to `wait_orphans` seconds for them, then says so without calling the dead
    process the holder.
    """

    def __init__(self, run_dir: str | Path, enabled: bool | None = None, wait_orphans: float = 10.0):
        self.run_dir = Path(run_dir)
        self.path = RunDir(run_dir).lock_file
        self.enabled = os.environ.get("RANK", "0") == "0" if enabled is None else enabled
        self.wait_orphans = wait_orphans
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "RunLock":
        if not self.enabled or self._fd is not None:
            return self
        self._created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only parent or run directory: before any work is done
            raise ConfigError(f"cannot write into run directory {self.run_dir}: {os_error(e)}; "
                              f"{fix_hint(e, 'run the same command')}") from e
        checkpoints = self.run_dir / RunDir.CHECKPOINTS
        if checkpoints.exists() and not checkpoints.is_dir():
            os.close(fd)
            raise ConfigError(f"{checkpoints} is a file, not the run's checkpoints folder: move it away and run the "
                              "same command")
        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # e.g. ENOLCK: no locks on this fs
                    os.close(fd)
                    warn(f"cannot lock {self.path} ({os_error(e)}); make sure no other process uses {self.run_dir}")
                    return self
            pid, host = self._holder(fd)
            if host != socket.gethostname() or _alive(pid):
                os.close(fd)
                raise RunDirInUse(f"run directory {self.run_dir} is in use by pid {pid} on {host}; wait for it or "
                                  f"use another hydra.run.dir")
            # The recorded owner is dead, yet the lock is held: by processes it left behind, which exit soon.
            deadline = deadline or time.monotonic() + self.wait_orphans
            if time.monotonic() > deadline:
                os.close(fd)
                raise RunDirInUse(f"run directory {self.run_dir} is still locked by processes left behind by pid "
                                  f"{pid}, which is no longer running (find them with `fuser {self.path}`); wait for "
                                  f"them to exit or use another hydra.run.dir")
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    @staticmethod
    def _holder(fd: int) -> tuple[str, str]:
        for _ in range(20):  # the holder writes its pid right after taking the lock
            parts = os.pread(fd, 512, 0).decode(errors="replace").split()
            if len(parts) >= 2:
                return parts[0], parts[1]
            time.sleep(0.025)
        return "?", "?"

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD_FDS.discard(fd)
        try:
            if self._created and [p.name for p in self.run_dir.iterdir()] == [self.path.name]:
                self.path.unlink()  # nothing was recorded: leave no empty run directory behind
                self.run_dir.rmdir()
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --- the config that defines a run ------------------------------------------------------------------------
def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _allowed(key: str, extra: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in (*ALLOWED_ON_RESUME, *extra))


def _schema_field(cfg: DictConfig, key: str) -> bool:
    """Whether `key` is a field of a structured-config section (so a code update, not the user, added or removed
    it), as opposed to a key of a free-form mapping such as ``model.kwargs``."""
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node))


def _same(a, b) -> bool:
    if a is ABSENT or b is ABSENT or isinstance(a, bool) or isinstance(b, bool):
        return a is b or (type(a) is type(b) and a == b)
    return a == b  # 1 == 1.0: a float field recorded as 1.0 and given as 1 is the same setting


def _fmt(v) -> str:
    return v if v is ABSENT else json.dumps(v)


def differences(run_dir: str | Path, cfg) -> dict[str, tuple]:
    """``{key: (the run's value, cfg's value)}`` for every key where `cfg` differs from the run's config.yaml
    (``ABSENT`` for a missing key); {} when the run has no readable config.yaml."""
    old = read_config(RunDir(run_dir).path)
    if old is None:
        return {}
    old, new = _flatten(old), _flatten(OmegaConf.to_container(cfg, resolve=True))
    keys = [*old, *(k for k in new if k not in old)]
    return {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in keys
            if not _same(old.get(k, ABSENT), new.get(k, ABSENT))}


def check_config_change(run_dir: str | Path, cfg, allowed: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Compare `cfg` (the config about to resume `run_dir`) with the run's own config.yaml.

    Raises ConfigChanged (a ConfigError) listing ``key: old -> new`` for every change to what defines the run.
    Returns the allowed changes (``{key: (old, new)}``, ``"<absent>"`` for a missing key), which the run records
    as an event. A fresh run (``trainer.resume=never``, no checkpoint yet, or no config.yaml) returns ``{}``.
    `allowed`: more key patterns (fnmatch) that may change on resume, beside ``ALLOWED_ON_RESUME``.
    """
    if cfg.trainer.resume == "never" or not RunDir(run_dir).checkpoints():
        return {}
    changed, accepted = [], {}
    for key, (a, b) in differences(run_dir, cfg).items():
        if _allowed(key, allowed) or ((a is ABSENT or b is ABSENT) and _schema_field(cfg, key)):
            accepted[key] = (a, b)
        else:
            changed.append(f"{key}: {_fmt(a)} -> {_fmt(b)}")
    if changed:
        raise ConfigChanged(f"run directory {run_dir} holds a run with another config ({'; '.join(changed)}); "
                            f"resume it with its own settings, start it over with trainer.resume=never, or use "
                            f"another hydra.run.dir")
    return accepted


def describe_changes(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in changes.items())
