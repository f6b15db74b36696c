"""Progress of long work, visible wherever it runs: a tqdm bar on a terminal; elsewhere (nohup, a pipe, CI, SLURM's
output file) one line every `every` seconds -- done / total, rate, ETA and the caller's own numbers (loss, lr) --
on stdout and, when given, appended to a log file (a run's train.log). Training, FID sampling, Inception passes,
lm-eval, pretokenizing and latent extraction all report through `Progress`.

Modes (``trainer.progress`` for training, ``--progress`` for the scripts): ``auto`` (a bar on a terminal, lines
otherwise, nothing under pytest), ``bar``, ``lines``, ``off``.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

MODES = ("auto", "bar", "lines", "off")
LEGACY = {"on": "bar"}  # trainer.progress=on from before the line mode


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def resolve(mode: str) -> str:
    mode = LEGACY.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"unknown progress mode {mode!r}; choose one of: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if os.environ.get("PYTEST_CURRENT_TEST"):  # quiet tests (a test of the lines clears it)
        return "off"
    return "bar" if sys.stderr.isatty() else "lines"


class Progress:
    """``update(n)`` as work is done, ``set_postfix({...})`` for the numbers shown beside it, ``close()``."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0, mode: str = "auto",
                 enabled: bool = True, every: float = 30.0, log_file: str | Path | None = None):
        self.mode = resolve(mode) if enabled else "off"
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n = self.start = initial
        self.t0 = self.last = time.monotonic()
        self.postfix: dict = {}
        self.log_file = Path(log_file) if log_file else None
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines" and time.monotonic() - self.last >= self.every:
            self.emit()

    def set_postfix(self, values: dict) -> None:
        self.postfix = dict(values)
        if self.bar is not None:
            self.bar.set_postfix(values)

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = (self.n - self.start) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n:,}/{self.total:,} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total else \
            f"{self.n:,} {self.unit}"
        parts = [f"[{self.desc}] {done}", f"{rate:,.3g} {self.unit}/s", f"elapsed {_duration(elapsed)}"]
        if self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return " | ".join(parts)

    def emit(self) -> None:
        self.last = time.monotonic()
        line = self.line()
        print(line, flush=True)
        if self.log_file is not None:
            try:
                with open(self.log_file, "a") as f:
                    f.write(line + "\n")
            except OSError:
                pass  # a progress line is never worth stopping the work for

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines":
            self.emit()  # where it ended

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_iter(iterable, total: int | None, desc: str, unit: str = "it", mode: str = "auto",
                  enabled: bool = True, every: float = 30.0):
    """`iterable`, reporting one unit per item."""
    with Progress(total, desc, unit, mode=mode, enabled=enabled, every=every) as p:
        for item in iterable:
            yield item
            p.update(1)
