"""Hydra's own errors (and a run directory it cannot write) as one line and exit code 2, like every other bad input (README, exit codes).

Hydra prints a composition error (a misspelt key, an unknown config option) in several lines, suggests
``+key=value`` for a typo (which would add the typo as a new key) and exits 1. `one_line` turns such an exception
into one line with a "did you mean" for near misses; train.py asks Hydra to raise instead of printing
(HYDRA_FULL_ERROR) and prints that line. `fast_help` answers ``--help`` from the configs folder alone, before
torch or Hydra is imported, listing the choices a user has (not the schemas and ``_``-prefixed internals).
"""
from __future__ import annotations

import dataclasses
import difflib
import errno
from pathlib import Path

INTERNAL = ("schema_", "_")  # config names that are building blocks, not choices
# a place Hydra (or the run) cannot write: said in one line, not as a traceback
WRITE_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST,
                errno.ENAMETOOLONG)


def _choices(names) -> list[str]:
    return sorted(n for n in names if not n.startswith(INTERNAL))


def did_you_mean(word: str, options, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""


def _key_error(cause) -> str | None:
    """'Key X not in Schema' under `full_key`: the valid keys are the schema's fields. A value of the wrong type
    for a real key (a ValidationError, which carries the same attributes) is said as such."""
    from omegaconf.errors import ValidationError

    full_key = getattr(cause, "full_key", None) or ""
    schema = getattr(cause, "object_type", None)
    if full_key and isinstance(cause, ValidationError):
        return f"{full_key}: {str(cause).strip().splitlines()[0]}"
    if not full_key or not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return None
    parent, _, key = full_key.rpartition(".")
    fields = [f.name for f in dataclasses.fields(schema)]
    hint = did_you_mean(key, fields, f"{parent}." if parent else "") or f" (its settings: {', '.join(fields)})"
    return f"{full_key} is not a setting of {parent or 'the config'}{hint}"


def one_line(exc: BaseException) -> str | None:
    """The message for a Hydra composition / override error, or None for anything else."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(exc, OSError) and exc.filename and exc.errno in WRITE_ERRORS:
        # Hydra making the run directory or its .hydra/ files, train.log: a place that cannot be written
        from dyt.files import fix_hint, os_error
        return f"cannot write {exc.filename}: {os_error(exc)}; {fix_hint(exc, 'run the same command')}"
    if isinstance(exc, MissingConfigException):
        missing = exc.missing_cfg_file or ""
        group, _, name = missing.rpartition("/")
        if exc.options is not None and group:
            options = _choices(exc.options)
            return f"no {group} config {name!r}{did_you_mean(name, options)} (choices: {', '.join(options)})"
        return str(exc).strip().splitlines()[0]
    if isinstance(exc, OverrideParseException):
        reason = str(exc).strip().splitlines()[0]
        if not getattr(exc, "override", None):
            return reason
        return (f"cannot parse the override {exc.override!r}: {reason} (a value holding '=', ',', spaces or brackets, "
                "such as a run directory's name, goes in quotes: key='value')")
    if isinstance(exc, ConfigCompositionException):
        return _key_error(exc.__cause__) or str(exc).strip().splitlines()[0]
    return None


def fast_help(config_dir: Path, script: str = "train.py") -> str:
    """Usage and the choices of every config group, read from the configs folder (no imports)."""
    lines = [f"usage: python {script} [group=option ...] [key=value ...]   (-m: a sweep over comma-separated values)",
             "", "Config groups (group=option):"]
    for group in sorted(p for p in config_dir.iterdir() if p.is_dir() and p.name != "hydra"):
        options = _choices(f.stem for f in group.glob("*.yaml"))
        if options:
            lines.append(f"  {group.name}: {', '.join(options)}")
    lines += ["", f"The composed config and its keys: python {script} --cfg job   (add overrides to see their effect)",
              "Hydra's own options: --hydra-help.   More: README.md (Configuration)."]
    return "\n".join(lines)
