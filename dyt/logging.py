"""Run records: metrics.jsonl (always), summary.json, wandb (optional, rank 0 only), and the progress bar.

The files are the source of truth for comparison tables; wandb mirrors the same metrics (the norm-site statistics
grouped per site: `wandb_name`). Where each file lives is ``dyt.rundir.RunDir``'s; rewrites are atomic and durable
(``dyt.files``). Damaged records never stop a run: what is readable is kept (every line of metrics.jsonl that parses
as a JSON object, in order), the damaged file is kept aside as ``<name>.corrupt[.N]``, and one warning line says so.
A damaged summary.json makes the run unfinished: it resumes from its checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import sys
import uuid
from pathlib import Path

from omegaconf import OmegaConf

from dyt.errors import ConfigError
from dyt.files import fix_hint, os_error, set_aside, temporary, warn, write_json, write_text_atomic
from dyt.rundir import RunDir, check_config_change, describe_changes, read_config, read_summary

_DECODER = json.JSONDecoder()

# The per-norm-site statistics (dyt.analysis, dyt.nn.alpha_auto): ``<stat>/<site>`` in metrics.jsonl.
SITE_STATS = ("std", "sat", "out_std", "alpha", "alpha0")


def wandb_name(name: str) -> str:
    """The name a metric gets in wandb. wandb makes a panel section of a name's first ``/`` segment, which would put
    each statistic of every site in one section; site statistics go to ``sites/<site>/<stat>`` instead, so a site's
    panels sit together (and each site is its own section under the workspace's "group by all segments")."""
    stat, _, site = name.partition("/")
    return f"sites/{site}/{stat}" if site and stat in SITE_STATS else name


def _clean(v):
    v = float(v)
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/Inf


def _parse_line(raw: bytes):
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _salvage(raw: bytes) -> list[dict]:
    """The complete log events inside a damaged line (e.g. a cut line that the next event was appended to)."""
    text = raw.decode("utf-8", "replace")
    found, i = [], 0
    while (i := text.find("{", i)) >= 0:
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except (ValueError, RecursionError):
            i += 1
            continue
        if isinstance(obj, dict) and "step" in obj and "split" in obj and "\ufffd" not in text[i:end]:
            found.append(obj)
            i = end
        else:
            i += 1
    return found


def scan_jsonl(data: bytes) -> tuple[list[dict], int]:
    """(every readable JSON object, in order; the number of damaged lines).

    A last line cut short (no newline, the start of an object) is what a killed process leaves: dropped, and not
    counted as damage. Any other line that is not a JSON object counts; the complete events inside it are kept."""
    lines = data.split(b"\n")
    objects, damaged = [], 0
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        obj = _parse_line(raw)
        if obj is not None:
            objects.append(obj)
            continue
        salvaged = _salvage(raw)
        objects += salvaged
        cut_tail = i == len(lines) - 1 and raw.lstrip().startswith(b"{") and _is_utf8(raw)
        damaged += not (cut_tail and not salvaged)
    return objects, damaged


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_jsonl(path: Path) -> list[dict]:
    """The events of a metrics.jsonl: every line that is a JSON object, in order (a damaged line is skipped; a last
    line cut short by a killed process is dropped). No side effects (RunLogger keeps a damaged file aside)."""
    try:
        return scan_jsonl(Path(path).read_bytes())[0]
    except FileNotFoundError:
        return []


def _is_event(e: dict) -> bool:
    return isinstance(e.get("step"), int) and not isinstance(e.get("step"), bool) and isinstance(e.get("split"), str)


class RunLogger:
    """Writes log events of one run. Non-main ranks get an inert logger."""

    def __init__(self, run_dir: Path, cfg, enabled: bool, resume_step: int = 0, allowed: tuple[str, ...] = (),
                 checkpoint_records: list[dict] | None = None):
        """`resume_step` > 0: the run resumed from its checkpoint at that step. Its config is checked against the
        run's config.yaml first (ConfigChanged, before anything is written); allowed changes are recorded as a
        ``{"split": "config", "changed": {key: {"old", "new"}}}`` event. `allowed`: the family's keys that may
        change on resume too (``Family.resume_keys``). `checkpoint_records`: the events the checkpoint holds
        (``records()`` when it was saved): what metrics.jsonl lost of them is restored, with a warning."""
        self.rd, self.cfg, self.enabled = RunDir(run_dir), cfg, enabled
        self.wandb = None
        self.events: list[dict] = []  # well-formed events kept from before a resume (main rank)
        self._records: list[dict] = []  # every event so far (main rank): saved with each checkpoint
        if not enabled:
            return
        changes = check_config_change(self.rd.path, cfg, allowed) if resume_step > 0 else {}
        self.rd.path.mkdir(parents=True, exist_ok=True)
        for path in (self.rd.config, self.rd.metrics, self.rd.summary):  # a write cut short by a kill
            temporary(path).unlink(missing_ok=True)
        self._keep_aside_if_damaged(self.rd.summary, read_summary(self.rd.path) is None,
                                    "a JSON object", "the run is treated as unfinished")
        self._keep_aside_if_damaged(self.rd.config, read_config(self.rd.path) is None, "readable YAML",
                                    "it is written again")
        write_text_atomic(self.rd.config, OmegaConf.to_yaml(cfg, resolve=True))
        # Drop events a killed run logged after its last checkpoint: the resumed run logs them again.
        kept = self._recover_metrics()
        kept = [e for e in kept if not isinstance(e.get("step"), (int, float)) or e["step"] <= resume_step]
        if checkpoint_records:
            kept = self._restore_from_checkpoint(kept, checkpoint_records, resume_step)
        if changes:
            kept.append({"step": resume_step, "split": "config",
                         "changed": {k: {"old": a, "new": b} for k, (a, b) in changes.items()}})
            print(f"[dyt] resuming {self.rd.path} at step {resume_step} with changed settings: "
                  f"{describe_changes(changes)}", flush=True)
        write_text_atomic(self.rd.metrics, "".join(json.dumps(e) + "\n" for e in kept))
        self.events = [e for e in kept if _is_event(e)]
        self._records = list(kept)
        self._init_wandb()

    def _restore_from_checkpoint(self, kept: list[dict], records: list[dict], step: int) -> list[dict]:
        """The checkpoint's events, then those of `kept` it lacks; a warning names what metrics.jsonl had lost."""
        key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
        have, saved = {key(e) for e in kept}, {key(e) for e in records}
        lost = [e for e in records if key(e) not in have]
        if lost:
            steps = sorted({e.get("step") for e in lost if isinstance(e.get("step"), int)})
            span = f"steps {steps[0]}..{steps[-1]}" if len(steps) > 1 else f"step {steps[0]}" if steps else "no step"
            warn(f"{self.rd.metrics} lacked {len(lost)} event(s) of the checkpoint at step {step} ({span}); "
                 "restored from the checkpoint")
        return list(records) + [e for e in kept if key(e) not in saved]

    def records(self) -> list[dict]:
        """Every event of the run so far, as metrics.jsonl holds them (saved with each checkpoint)."""
        return list(self._records)

    def sync(self) -> None:
        """metrics.jsonl on disk (fsync): called before a checkpoint, so the records are as durable as it is."""
        if not self.enabled or not self.rd.metrics.exists():
            return
        try:
            with self.rd.metrics.open("a") as f:
                os.fsync(f.fileno())
        except OSError as e:
            raise ConfigError(f"could not sync {self.rd.metrics}: {os_error(e)}; {fix_hint(e)}") from e

    @staticmethod
    def _keep_aside_if_damaged(path: Path, unreadable: bool, what: str, consequence: str) -> None:
        if unreadable and path.exists():
            kept = set_aside(path)
            warn(f"{path} is corrupt (not {what}); {consequence} (the damaged file is kept as {kept.name})")

    def _recover_metrics(self) -> list[dict]:
        """Every readable object of metrics.jsonl; a damaged file is copied aside first (never overwritten)."""
        try:
            data = self.rd.metrics.read_bytes()
        except FileNotFoundError:
            return []
        objects, damaged = scan_jsonl(data)
        if damaged:
            kept = set_aside(self.rd.metrics, copy=True)
            warn(f"{self.rd.metrics} has {damaged} damaged line(s); its {len(objects)} readable events are kept "
                 f"and the damaged file is kept as {kept.name}")
        return objects

    def _init_wandb(self) -> None:
        lc = self.cfg.logger
        if lc.mode == "disabled":
            return
        import wandb

        id_file = self.rd.wandb_id  # one wandb run per run dir, continued on resume
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        m, n, d = self.cfg.model.name, self.cfg.norm.name, self.cfg.data.name
        tags = [f"model:{m}", f"norm:{n}", f"data:{d}", *lc.tags] + ([f"table:{self.cfg.table}"] if self.cfg.table else [])
        try:
            self.wandb = wandb.init(
                project=lc.project, entity=lc.entity, group=lc.group or f"{m}-{d}", name=self.rd.path.name,
                tags=tags, id=run_id, resume="allow", mode=lc.mode, dir=str(self.rd.path),
                config=OmegaConf.to_container(self.cfg, resolve=True), job_type=n,
            )
        except wandb.errors.UsageError as e:  # no login (online mode without an API key), bad entity/project
            raise ConfigError(f"logger=wandb (mode {lc.mode}) could not start: {str(e).splitlines()[0]}; run `wandb "
                              "login` (or set WANDB_API_KEY), or use logger.mode=offline") from e

    def log(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        event = {"step": step, "split": split, **{k: _clean(v) for k, v in metrics.items()}}
        self._records.append(event)
        try:
            with self.rd.metrics.open("a") as f:
                f.write(json.dumps(event) + "\n")
        except OSError as e:  # a line cut short by a full disk is dropped on resume, like a killed write
            raise ConfigError(f"could not append to {self.rd.metrics}: {os_error(e)}; {fix_hint(e)}") from e
        if self.wandb is not None:
            self.wandb.log({wandb_name(k): v for k, v in metrics.items()}, step=step)

    def image(self, step: int, name: str, image, caption: str = "") -> Path | None:
        """An HxWx3 uint8 image: ``<run dir>/<name>_step<step>.png`` (e.g. samples/grid) and a wandb image."""
        if not self.enabled:
            return None
        path = save_png(self.rd.path / f"{name}_step{step:08d}.png", image)
        if self.wandb is not None:
            import wandb
            self.wandb.log({name: wandb.Image(image, caption=caption or path.name)}, step=step)
        return path

    def summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        summary = {k: (_clean(v) if isinstance(v, float) else v) for k, v in summary.items()}
        path = self.rd.summary
        try:
            write_json(path, summary)
        except OSError as e:  # say why in one line; the error that ended the run (if any) is the one raised
            print(f"[dyt] error: could not write {path} (status {summary.get('status')!r}): {os_error(e)}",
                  file=sys.stderr, flush=True)
        if self.wandb is not None:
            self.wandb.summary.update(summary)

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None


def save_png(path: Path, image) -> Path:
    """Write an HxWx3 (or HxW) uint8 array as a PNG, atomically (a temporary name, then rename)."""
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)
    return path
