"""The ONE trainer shared by every model family.

A family contributes a `Task` (model, data, loss, evaluation); everything else lives here: step-based loop,
AdamW + warmup/cosine, gradient accumulation and clipping, autocast, EMA, torch.compile, periodic eval,
atomic checkpoints with exact resume, divergence handling, and the run records (metrics.jsonl, summary.json,
wandb). How the model is built, wrapped and sharded (DDP, FSDP2 / HSDP, mixed-precision policy, activation
checkpointing) is `dyt.parallel.wrap_model`; which checkpoint format a run writes follows from it (`dyt.checkpoint`).

A step reads nothing back from the device: losses and grad norms stay there until a sync point (`_sync_point`:
log, eval and checkpoint steps, the last step, every ``trainer.sync_every`` steps), where one all-reduce brings
them to the host with the ranks' stop signals. A NaN/Inf loss ends the run as 'diverged' at the next sync point,
naming its step; since checkpoints and evaluations are sync points, neither ever sees weights updated with it.
"""
from __future__ import annotations

import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dyt import distributed as D
from dyt.analysis import InputStdProbe, alpha_metrics, mean_saturation
from dyt.checkpoint import Checkpointer
from dyt.environment import environment
from dyt.errors import ConfigError
from dyt.eval import evaluate
from dyt.families import build_task, get_family
from dyt.init_from import InitFrom
from dyt.nn.alpha_auto import is_auto, probe_alpha0, set_alpha0
from dyt.logging import RunLogger
from dyt.optim import build_optimizer, build_scheduler, scheduled_lr
from dyt.parallel import wrap_model
from dyt.plan import check_model_fits
from dyt.precision import amp_dtype, autocast
from dyt.progress import Progress
from dyt.ranges import MAX_STEPS
from dyt.rundir import RunDir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg, run_dir: str | Path):
        self.cfg, self.tc = cfg, cfg.trainer
        self.run_dir = Path(run_dir)
        self.dist = D.init_distributed(self.tc.device)
        self.device = self.dist.device
        if self.tc.get("parallel", "ddp") == "ddp" or not self.dist.enabled:  # a full replica per rank (FSDP: a shard)
            check_model_fits(cfg, self.device, self.dist.world_size)  # one line, not an allocator crash mid-build
        seed_everything(cfg.seed + self.dist.rank)
        if self.tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.task = build_task(cfg, self.dist)
        self.micro_batch = self._micro_batch()
        self.bpe = self.task.batches_per_epoch(self.micro_batch)
        if self.bpe < self.tc.grad_accum:
            raise ConfigError(f"the training set gives {self.bpe} micro-batches of {self.micro_batch} per rank per "
                              f"epoch, fewer than trainer.grad_accum={self.tc.grad_accum}; lower trainer.batch_size")
        self.steps_per_epoch = self.bpe // self.tc.grad_accum
        self.max_steps = self._max_steps()
        self.eval_every = self._every(self.tc.eval_every, self.tc.eval_every_epochs)
        self.task.configure_steps(self.steps_per_epoch, self.max_steps)
        self.task.check_micro_batch(self.micro_batch)
        warmup = (round(cfg.optim.warmup_epochs * self.steps_per_epoch) if cfg.optim.warmup_epochs is not None
                  else cfg.optim.warmup_steps)

        # trainer.init_from: the model starts from another run's weights, loaded into the CPU build before it is
        # wrapped (None: no source, or this run resumes from its own checkpoint)
        self.init_from = InitFrom.for_run(cfg, self.run_dir, verbose=self.dist.is_main, sharded_meta_init=(
            self.dist.enabled and self.tc.get("parallel", "ddp") != "ddp" and self.tc.get("init", "exact") == "meta"))
        build = self.init_from.wrap(self.task.build_model) if self.init_from else self.task.build_model
        # DDP or FSDP2 (trainer.parallel): `model` has the parameters (optimizer, EMA, checkpoints use it), `net`
        # is what the loss calls; under FSDP the mixed-precision policy replaces autocast (autocast_dtype None).
        self.par = wrap_model(build, self.dist, self.tc, amp_dtype(self.tc.precision, self.device),
                              seed=cfg.seed, blocks=get_family(cfg.model.family).blocks)
        self.model, self.net, self.amp_dtype = self.par.model, self.par.net, self.par.autocast_dtype
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.max_steps, warmup, verbose=self.dist.is_main)
        self.ema = self.par.ema(self.tc.ema_decay) if self.tc.ema_decay else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.last_val: dict[str, float] = {}

        self.step = 0
        self.window = self._empty_window()
        self.checkpointer = Checkpointer(self.run_dir, self.par, self.optimizer, self.ema, self.scaler, dist=self.dist,
                                         keep=self.tc.keep_checkpoints)
        self._resume()
        # what the run started from (summary.json's init_from): recorded in its checkpoints, so a resumed run keeps it
        self.init_record = (self.resumed.extra.get("init_from") if self.resumed
                            else self.init_from.record if self.init_from else None)
        # norm.alpha_init=auto: alpha0 per site from the first micro-batch, for a new run only (a resumed run has its
        # alpha in the checkpoint; trainer.init_from brings the source's); recorded in the first metrics row
        self.alpha0 = (self._auto_alpha0() if is_auto(cfg.norm) and self.resumed is None
                       and not self.tc.get("init_from") else {})
        self.logger = RunLogger(self.run_dir, cfg, enabled=self.dist.is_main, resume_step=self.step,
                                allowed=get_family(cfg.model.family).resume_keys,
                                checkpoint_records=self.resumed.extra.get("records") if self.resumed else None)
        # Every evaluation of the summary metric, of the raw model and of its EMA (the official trainer reports
        # both maxima); a resumed run's history starts with its earlier evaluations.
        best_name, self.best_mode = self.task.summary_metric()
        self.best_names = [best_name] + ([best_name.replace("val/", "val_ema/", 1)] if self.ema is not None else [])
        self.val_history = {k: [e[k] for e in self.logger.events if e["split"] == "val" and k in e]
                            for k in self.best_names}
        # The last metrics logged before a resume: a run resumed at its final step reports them in its summary.
        last = {sp: next((e for e in reversed(self.logger.events) if e["split"] == sp), {}) for sp in ("train", "val")}
        self.last_val = {k: v for k, v in last["val"].items() if k not in ("step", "split")}
        self.last_train = {k: v for k, v in last["train"].items() if k == "train/loss"}
        self._stop_signal = None  # set by this process's signal handler
        # On the device until the next sync point (`_sync`): every step's losses since the last one ([loss, parts...]
        # of this rank) and the last step's grad norm.
        self.pending: list[torch.Tensor] = []
        self.loss_names: list[str] = ["loss"]
        self.grad_norm: torch.Tensor | None = None
        self.sync_every = self.tc.get("sync_every") or self.tc.log_every

    # --- setup helpers --------------------------------------------------------------------------------
    def _micro_batch(self) -> int:
        per_step = self.dist.world_size * self.tc.grad_accum
        if self.tc.batch_size % per_step:
            raise ConfigError(f"trainer.batch_size={self.tc.batch_size} is not divisible by world_size x grad_accum "
                              f"= {self.dist.world_size} x {self.tc.grad_accum}")
        return self.tc.batch_size // per_step

    def _max_steps(self) -> int:
        if self.tc.max_steps is not None:
            return int(self.tc.max_steps)
        if self.tc.epochs is None:
            raise ConfigError("set trainer.max_steps or trainer.epochs")
        steps = max(1, round(self.tc.epochs * self.steps_per_epoch))
        if steps > MAX_STEPS:  # a typo (epochs=1e12) would train forever
            raise ConfigError(f"trainer.epochs={self.tc.epochs} is {steps:.3g} steps of {self.steps_per_epoch} per epoch, "
                              f"more than {MAX_STEPS:.0e}; is it a typo?")
        return steps

    def _every(self, steps: int, epochs: float | None) -> int:
        """An interval in optimizer steps, given in steps or (when set) in epochs."""
        return max(1, round(epochs * self.steps_per_epoch)) if epochs is not None else steps

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    # --- checkpoints ----------------------------------------------------------------------------------
    def _resume(self) -> None:
        """The state of the run's checkpoint (by trainer.resume) restored."""
        resumed = self.resumed = self.checkpointer.resume(self.tc.resume)
        if resumed is not None:
            self.step = resumed.step
            self.window.update(resumed.extra.get("window", {}))  # the log window open at the checkpoint (older: none)

    def save(self) -> None:
        # the records go with the checkpoint (and metrics.jsonl to disk first): a resume restores what the file lost
        self.logger.sync()
        extra = {"window": dict(self.window), "records": self.logger.records()}
        self.checkpointer.save(self.step, {**extra, **({"init_from": self.init_record} if self.init_record else {})})

    def _auto_alpha0(self) -> dict[str, float]:
        """One probe forward (no grad) on the first training micro-batch, the RNG states kept so the run's draws
        (dropout, mixup) stay those of a run without it; sets and returns each site's alpha0 (dyt.nn.alpha_auto),
        on the model and its EMA. After wrap_model: a meta-initialised FSDP model is materialised by then."""
        batch = next(self._batches())
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), self.autocast():
            alphas = probe_alpha0(self.model, lambda: self.task.loss(self.net, batch), self.cfg.norm.alpha_k)
        for model in [self.model] + ([self.ema.module] if self.ema is not None else []):
            set_alpha0(model, alphas)
        if self.dist.is_main and alphas:
            values = list(alphas.values())
            print(f"[dyt] norm.alpha_init=auto (k={self.cfg.norm.alpha_k:g}): alpha0 of {len(values)} sites in "
                  f"[{min(values):.3g}, {max(values):.3g}], mean {sum(values) / len(values):.3g}", flush=True)
        return alphas

    # --- data -----------------------------------------------------------------------------------------
    def _batches(self):
        """Micro-batches from the run's data position onward, across epochs."""
        consumed = self.step * self.tc.grad_accum
        epoch, start = divmod(consumed, self.bpe)
        while True:
            for batch in self.task.train_loader(self.micro_batch, epoch, start):
                yield self.task.to_device(batch, self.device)
            epoch, start = epoch + 1, 0

    # --- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        bs = self.tc.eval_batch_size or max(1, self.tc.batch_size // self.dist.world_size)
        return evaluate(self.task, model, self.device, bs, self.amp_dtype, lockstep=self.par.sharded)

    def _eval_and_log(self) -> dict[str, float]:
        # The raw module, not DDP: ranks may hold one eval batch more than others, and DDP's forward
        # (buffer broadcast) is a collective that would then wait forever. A sharded module's forward is a
        # collective too: `evaluate` then runs the ranks in lockstep.
        start = time.perf_counter()
        metrics = {f"val/{k}": v for k, v in self.evaluate(self.model).items()}
        if self.ema is not None:
            metrics.update({f"val_ema/{k}": v for k, v in self.evaluate(self.ema.module).items()})
        if self.dist.is_main or self.par.sharded:  # the task's pictures (DiT's sample grid), from the EMA when kept
            with self.autocast():  # (a sharded model samples on every rank: each forward is a collective)
                images = self.task.visualize(self.ema.module if self.ema is not None else self.model)
            for name, image in (images if self.dist.is_main else {}).items():
                self.logger.image(self.step, f"{RunDir.SAMPLES}/{name}", image, caption=f"{self.run_dir.name} step {self.step}")
        metrics["val/time_s"] = time.perf_counter() - start  # kept out of train/throughput
        self.logger.log(self.step, "val", metrics)
        return metrics

    # --- the loop -------------------------------------------------------------------------------------
    @staticmethod
    def _empty_window() -> dict:
        """Sums over the steps since the last train log event (its loss is their mean)."""
        return {"loss": 0.0, "steps": 0, "units": 0, "time": 0.0, "parts": {}}

    def _log_step(self, step: int) -> bool:
        return step % self.tc.log_every == 0 or step == self.max_steps

    def _sync_point(self, step: int) -> bool:
        """Whether the host reads the device's losses after `step` (`_sync`): before anything that needs them or
        must not see a diverged model (logging, evaluation, a checkpoint), at the end, and every `sync_every`
        steps. A single process also syncs at once after a stop signal (there is nobody to agree with)."""
        return (self._log_step(step) or step % self.eval_every == 0 or step % self.tc.ckpt_every == 0
                or step % self.sync_every == 0 or (self._stop_signal is not None and not self.dist.enabled))

    def _on_signal(self, signum, frame):
        self._stop_signal = signum  # checkpoint and exit at the next sync point (SLURM preemption, Ctrl-C)

    def fit(self) -> dict:
        """Train to `max_steps`; returns (and writes) the summary. A NaN/Inf loss ends the run as 'diverged'."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
        summary = {"status": "running", "step": self.step, "reason": None, "model": self.cfg.model.name,
                   "norm": self.cfg.norm.name, "data": self.cfg.data.name, "params": self.n_params,
                   "max_steps": self.max_steps, "world_size": self.dist.world_size, **self.last_train,
                   "env": environment(self.device)}  # what decides the exact numbers beyond the config
        summary.update(self.task.summary_fields())
        if self.init_record:
            summary["init_from"] = self.init_record
        if is_auto(self.cfg.norm):
            summary.update(alpha_init="auto", alpha_k=self.cfg.norm.alpha_k)
        start = time.time()
        try:
            summary.update(self._loop(summary))
            self.checkpointer.flush()  # the last checkpoint, if still being written, named before the summary
        except Exception as e:
            summary.update(status="failed", step=self.step, reason=f"{type(e).__name__}: {e}")
            self.logger.summary(summary)
            self.logger.finish(exit_code=1)
            raise
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        summary["wall_time_s"] = round(time.time() - start, 2)
        summary["metric"] = self.best_names[0]
        for name, history in self.val_history.items():
            if history:
                summary[f"best/{name}"] = (max if self.best_mode == "max" else min)(history)
        summary.update(self.last_val)
        self.logger.summary(summary)
        self.logger.finish(exit_code=0 if summary["status"] == "completed" else 1)
        return summary

    def _train_step(self, batches) -> int:
        """One optimizer step over `grad_accum` micro-batches, without reading anything back from the device: its
        mean loss (and the task's logged loss parts) joins `pending`, its grad norm is `grad_norm`. Returns the
        units (samples, tokens) seen."""
        tc = self.tc
        self.scheduler.step_update(self.step + 1)
        self.task.on_step_start(self.step, self.optimizer)  # the task's hooks: dyt.tasks.base.Task
        sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=self.device)}
        units = 0
        for micro in range(tc.grad_accum):
            batch = next(batches)
            with self.par.grad_sync(micro == tc.grad_accum - 1), self.autocast():
                out = self.task.loss(self.net, batch)
            parts = out if isinstance(out, dict) else {"loss": out}
            self.scaler.scale(parts["loss"] / tc.grad_accum).backward()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / tc.grad_accum
            units += self.task.batch_units(batch)
        self.loss_names = list(sums)
        self.pending.append(torch.stack(list(sums.values())))
        # A non-finite loss is not checked here (that would be a sync): its update goes through, and the run ends
        # as diverged at the next sync point, before any checkpoint, evaluation or log of the damaged weights.
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.clip_grad
        self.grad_norm = self.task.clip_gradients(self.model, clip) if clip else None
        self.task.before_optimizer_step(self.model, self.step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.task.after_optimizer_step(self.model, self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        self.step += 1
        return units

    def _sync(self) -> tuple[list[list[float]], int | None]:
        """A sync point: ONE all-reduce carries every step's losses since the last sync point (summed over ranks)
        and which stop signal any rank got, and ONE read brings them to the host. Returns each of those steps'
        mean [loss, parts...] over the ranks (so every rank sees the same values and stops together on a NaN)
        and the agreed stop signal (None: none)."""
        k = len(self.loss_names)
        losses = torch.stack(self.pending).flatten() if self.pending else torch.zeros(0, device=self.device)
        self.pending = []
        flags = torch.tensor([1.0 if self._stop_signal else 0.0, float(self._stop_signal or 0)], device=self.device)
        totals = D.all_reduce_sum(torch.cat([losses, flags]))
        values = torch.cat([totals[:-2] / self.dist.world_size, totals[-2:]]).tolist()
        got, signum = values[-2:]
        return [values[i:i + k] for i in range(0, len(values) - 2, k)], (round(signum / got) if got else None)

    def _loop(self, summary: dict) -> dict:
        tc = self.tc
        batches = self._batches()
        self.net.train()
        # a bar on a terminal, else a line every trainer.progress_every seconds on stdout and in train.log
        bar = Progress(self.max_steps, "train", "step", initial=self.step, mode=tc.progress, enabled=self.dist.is_main,
                       every=tc.get("progress_every", 30.0), log_file=self.run_dir / RunDir.LOG)
        win = self.window  # restored from the checkpoint on resume: a resumed run logs what the uninterrupted one did
        try:
            while self.step < self.max_steps:
                t0 = time.perf_counter()
                # A logged step records each norm site's input std (Fig. 8), saturation and output std, whatever the
                # norm kind: the same cost for LN and DyT runs (train/probe_ms). A compiled model ignores hooks added
                # after compilation: no std/ sat/ out_std/ metrics under trainer.compile.
                with InputStdProbe(self.model, self._log_step(self.step + 1) and not tc.get("compile")) as probe:
                    units = self._train_step(batches)
                win.update(steps=win["steps"] + 1, units=win["units"] + units)
                sync = self._sync_point(self.step)
                losses, signum = self._sync() if sync else ([], None)
                # data + forward/backward/update (the GPU's queue drained at a sync point); never eval or
                # checkpoint time
                win["time"] += time.perf_counter() - t0
                if sync:
                    self.checkpointer.flush()  # a checkpoint written in the background gets its name
                for step, (loss, *parts) in enumerate(losses, start=self.step - len(losses) + 1):
                    if not math.isfinite(loss):
                        reason = f"non-finite training loss ({loss}) at step {step}"
                        if self.resumed is not None:  # a damaged checkpoint shows first as a divergence: say which
                            reason += (f", {step - self.resumed.step} step(s) after this process resumed from "
                                       f"{self.resumed.path}")
                        self.logger.log(step, "train", {"train/loss": loss})
                        if self.dist.is_main:
                            print(f"[dyt] diverged: {reason}", flush=True)
                        return {"status": "diverged", "step": step, "reason": reason}
                    win.update(loss=win["loss"] + loss,
                               parts={n: win["parts"].get(n, 0.0) + v for n, v in zip(self.loss_names[1:], parts)})
                bar.update(1)
                if self._log_step(self.step):
                    metrics = {"train/loss": win["loss"] / win["steps"], "train/lr": scheduled_lr(self.optimizer),
                               "train/throughput": win["units"] * self.dist.world_size / max(win["time"], 1e-9),
                               "train/epoch": self.step / self.steps_per_epoch, **alpha_metrics(self.model),
                               **probe.metrics()}
                    if self.alpha0:  # norm.alpha_init=auto: what the probe set, once
                        metrics.update({f"alpha0/{n}": v for n, v in self.alpha0.items()})
                        self.alpha0 = {}
                    metrics.update({f"train/{k}": v / win["steps"] for k, v in win["parts"].items()})
                    if (saturation := mean_saturation(metrics)) is not None:
                        metrics["train/saturation"] = summary["train/saturation"] = saturation  # the latest, in summary
                    if self.grad_norm is not None:
                        metrics["train/grad_norm"] = D.scalar(self.grad_norm)
                    metrics.update(self.task.train_metrics(metrics["train/throughput"]))
                    self.logger.log(self.step, "train", metrics)
                    bar.set_postfix({"loss": f"{metrics['train/loss']:.4f}", "lr": f"{metrics['train/lr']:.2e}",
                                     f"{self.task.throughput_unit}/s": f"{metrics['train/throughput']:.0f}"})
                    summary["train/loss"] = metrics["train/loss"]
                    win.update(self._empty_window())
                if self.step % self.eval_every == 0 or self.step == self.max_steps:
                    self.last_val = self._eval_and_log()
                    for name, history in self.val_history.items():
                        history.append(self.last_val[name])
                stop = signum is not None  # agreed at the sync point: the same on every rank
                if self.step % tc.ckpt_every == 0 or self.step == self.max_steps or stop:
                    self.save()
                if stop:
                    name = signal.Signals(signum).name
                    return {"status": "interrupted", "step": self.step, "signal": name,
                            "reason": f"signal {name}; resume with the same command"}
            return {"status": "completed", "step": self.step}
        finally:
            bar.close()

    def close(self) -> None:
        D.shutdown()
