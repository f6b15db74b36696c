"""The ONE trainer shared by every model family.

A family contributes a `Task` (model, data, loss, evaluation); everything else lives here: step-based loop,
AdamW + warmup/cosine, gradient accumulation and clipping, autocast, EMA, torch.compile, periodic eval,
atomic checkpoints with exact resume, divergence handling, and the run records (metrics.jsonl, summary.json,
wandb). How the model is built, wrapped and sharded (DDP, FSDP2 / HSDP, mixed-precision policy, activation
checkpointing) is `dyt.parallel.wrap_model`; which checkpoint format a run writes follows from it (`dyt.checkpoint`).
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
from dyt.analysis import InputStdProbe, alpha_metrics
from dyt.checkpoint import Checkpointer
from dyt.errors import ConfigError
from dyt.eval import evaluate
from dyt.families import build_task, get_family
from dyt.logging import RunLogger, progress_bar
from dyt.optim import build_optimizer, build_scheduler
from dyt.parallel import wrap_model
from dyt.plan import check_model_fits
from dyt.precision import amp_dtype, autocast
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
        self.task.check_micro_batch(self.micro_batch)
        warmup = (round(cfg.optim.warmup_epochs * self.steps_per_epoch) if cfg.optim.warmup_epochs is not None
                  else cfg.optim.warmup_steps)

        # DDP or FSDP2 (trainer.parallel): `model` has the parameters (optimizer, EMA, checkpoints use it), `net`
        # is what the loss calls; under FSDP the mixed-precision policy replaces autocast (autocast_dtype None).
        self.par = wrap_model(self.task.build_model, self.dist, self.tc, amp_dtype(self.tc.precision, self.device),
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
        self.logger = RunLogger(self.run_dir, cfg, enabled=self.dist.is_main, resume_step=self.step,
                                allowed=get_family(cfg.model.family).resume_keys)
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
        self._agreed_signal = None  # a stop signal any rank got, agreed on by all ranks at the last step

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
        return max(1, round(self.tc.epochs * self.steps_per_epoch))

    def _every(self, steps: int, epochs: float | None) -> int:
        """An interval in optimizer steps, given in steps or (when set) in epochs."""
        return max(1, round(epochs * self.steps_per_epoch)) if epochs is not None else steps

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    # --- checkpoints ----------------------------------------------------------------------------------
    def _resume(self) -> None:
        """The state of the run's checkpoint (by trainer.resume) restored."""
        resumed = self.checkpointer.resume(self.tc.resume)
        if resumed is not None:
            self.step = resumed.step
            self.window.update(resumed.extra.get("window", {}))  # the log window open at the checkpoint (older: none)

    def save(self) -> None:
        self.checkpointer.save(self.step, {"window": dict(self.window)})

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

    def _on_signal(self, signum, frame):
        self._stop_signal = signum  # finish the current step, checkpoint, exit (SLURM preemption, Ctrl-C)

    def fit(self) -> dict:
        """Train to `max_steps`; returns (and writes) the summary. A NaN/Inf loss ends the run as 'diverged'."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
        summary = {"status": "running", "step": self.step, "reason": None, "model": self.cfg.model.name,
                   "norm": self.cfg.norm.name, "data": self.cfg.data.name, "params": self.n_params,
                   "max_steps": self.max_steps, "world_size": self.dist.world_size, **self.last_train}
        start = time.time()
        try:
            summary.update(self._loop(summary))
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

    def _train_step(self, batches) -> tuple[float, float | None, int, dict[str, float]]:
        """One optimizer step over `grad_accum` micro-batches: (mean loss, grad norm, units seen, the means of
        the task's logged loss parts)."""
        tc = self.tc
        self.scheduler.step_update(self.step + 1)
        sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=self.device)}
        units = 0
        for micro in range(tc.grad_accum):
            batch = next(batches)
            last = micro == tc.grad_accum - 1
            with self.par.grad_sync(last), self.autocast():  # gradients reduced on the last micro-batch only
                out = self.task.loss(self.net, batch)
            parts = out if isinstance(out, dict) else {"loss": out}
            self.scaler.scale(parts["loss"] / tc.grad_accum).backward()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / tc.grad_accum
            units += self.task.batch_units(batch)
        # One all-reduce per step: every rank sees the same loss, so all stop together on NaN, and learns whether any
        # rank got a stop signal, so all stop (and checkpoint, a collective) after the same step.
        names = list(sums)
        flags = torch.tensor([1.0 if self._stop_signal else 0.0, float(self._stop_signal or 0)], device=self.device)
        totals = D.all_reduce_sum(torch.cat([torch.stack([sums[k] for k in names]), flags]))
        means = (totals[:len(names)] / self.dist.world_size).tolist()
        got, signum = totals[len(names):].tolist()
        self._agreed_signal = round(signum / got) if got else None
        loss_val, parts = means[0], dict(zip(names[1:], means[1:]))
        if not math.isfinite(loss_val):
            self.optimizer.zero_grad(set_to_none=True)
            return loss_val, None, units, parts
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.clip_grad
        grad_norm = D.scalar(nn.utils.clip_grad_norm_(self.model.parameters(), clip)) if clip else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        self.step += 1
        return loss_val, grad_norm, units, parts

    def _loop(self, summary: dict) -> dict:
        tc = self.tc
        batches = self._batches()
        self.net.train()
        bar = progress_bar(self.max_steps, self.step, tc.progress, self.dist.is_main)
        win = self.window  # restored from the checkpoint on resume: a resumed run logs what the uninterrupted one did
        try:
            while self.step < self.max_steps:
                t0 = time.perf_counter()
                # A logged step records each norm layer's input std (Fig. 8), whatever the norm kind: the same cost
                # for LN and DyT runs (train/probe_ms). A compiled model ignores hooks added after compilation: no
                # std/ metrics under trainer.compile.
                with InputStdProbe(self.model, self._log_step(self.step + 1) and not tc.get("compile")) as probe:
                    loss, grad_norm, units, parts = self._train_step(batches)
                step_time = time.perf_counter() - t0  # data + forward/backward/update; never eval or checkpoint time
                if not math.isfinite(loss):
                    reason = f"non-finite training loss ({loss}) at step {self.step + 1}"
                    self.logger.log(self.step + 1, "train", {"train/loss": loss})
                    if self.dist.is_main:
                        print(f"[dyt] diverged: {reason}", flush=True)
                    return {"status": "diverged", "step": self.step + 1, "reason": reason}
                win.update(loss=win["loss"] + loss, steps=win["steps"] + 1, units=win["units"] + units,
                           time=win["time"] + step_time,
                           parts={k: win["parts"].get(k, 0.0) + v for k, v in parts.items()})
                bar.update(1)
                if self._log_step(self.step):
                    metrics = {"train/loss": win["loss"] / win["steps"], "train/lr": self.optimizer.param_groups[0]["lr"],
                               "train/throughput": win["units"] * self.dist.world_size / max(win["time"], 1e-9),
                               "train/epoch": self.step / self.steps_per_epoch, **alpha_metrics(self.model),
                               **probe.metrics()}
                    metrics.update({f"train/{k}": v / win["steps"] for k, v in win["parts"].items()})
                    if grad_norm is not None:
                        metrics["train/grad_norm"] = grad_norm
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
                stop = self._agreed_signal is not None  # the same on every rank (see _train_step)
                if self.step % tc.ckpt_every == 0 or self.step == self.max_steps or stop:
                    self.save()
                if stop:
                    name = signal.Signals(self._agreed_signal).name
                    return {"status": "interrupted", "step": self.step, "signal": name,
                            "reason": f"signal {name}; resume with the same command"}
            return {"status": "completed", "step": self.step}
        finally:
            bar.close()

    def close(self) -> None:
        D.shutdown()
