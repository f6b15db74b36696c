"""Run records: metrics.jsonl (always), summary.json, wandb (optional, rank 0 only), and the progress bar.

The files are the source of truth for comparison tables; wandb mirrors the same metric names.
"""
from __future__ import annotations

import json
import math
import os
import sys
import uuid
from pathlib import Path

from omegaconf import OmegaConf


def _clean(v):
    v = float(v)
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/Inf


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The events of a metrics.jsonl; a last line cut short by a killed process is dropped."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines[:-1]]
    try:
        events += [json.loads(lines[-1])] if lines else []
    except json.JSONDecodeError:
        pass
    return events


class RunLogger:
    """Writes log events of one run. Non-main ranks get an inert logger."""

    def __init__(self, run_dir: Path, cfg, enabled: bool, resume_step: int = 0):
        self.run_dir, self.cfg, self.enabled = Path(run_dir), cfg, enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.wandb = None
        self.events: list[dict] = []  # events kept from before a resume (main rank)
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        # Drop events a killed run logged after its last checkpoint: the resumed run logs them again.
        self.events = [e for e in read_jsonl(self.metrics_path) if e.get("step", 0) <= resume_step]
        write_text_atomic(self.metrics_path, "".join(json.dumps(e) + "\n" for e in self.events))
        self._init_wandb()

    def _init_wandb(self) -> None:
        lc = self.cfg.logger
        if lc.mode == "disabled":
            return
        import wandb

        id_file = self.run_dir / "wandb_id"  # one wandb run per run dir, continued on resume
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        m, n, d = self.cfg.model.name, self.cfg.norm.name, self.cfg.data.name
        tags = [f"model:{m}", f"norm:{n}", f"data:{d}", *lc.tags] + ([f"table:{self.cfg.table}"] if self.cfg.table else [])
        self.wandb = wandb.init(
            project=lc.project, entity=lc.entity, group=lc.group or f"{m}-{d}", name=self.run_dir.name,
            tags=tags, id=run_id, resume="allow", mode=lc.mode, dir=str(self.run_dir),
            config=OmegaConf.to_container(self.cfg, resolve=True), job_type=n,
        )

    def log(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        event = {"step": step, "split": split, **{k: _clean(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(event) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        summary = {k: (_clean(v) if isinstance(v, float) else v) for k, v in summary.items()}
        write_json(self.run_dir / "summary.json", summary)
        if self.wandb is not None:
            self.wandb.summary.update(summary)

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None


def progress_bar(total: int, initial: int, mode: str, enabled: bool):
    """tqdm on a terminal; quiet under pytest or when stderr is not a tty (unless trainer.progress=on)."""
    from tqdm.auto import tqdm

    show = {"on": True, "off": False}.get(mode, sys.stderr.isatty() and "PYTEST_CURRENT_TEST" not in os.environ)
    return tqdm(total=total, initial=initial, disable=not (enabled and show), dynamic_ncols=True, unit="step")
