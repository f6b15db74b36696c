"""wav2vec 2.0 pre-training: batches of audio crops, fairseq's criterion, its validation loss.

A batch is ``{"source": float [B, S] waveforms, "seed": int64 [B]}`` (`dyt.families.wav2vec2.data`); each sample's
seed decides its span mask, its distractors and its Gumbel noise (`masking`), so the draws follow the sample, not
the process that trains on it. The quantizer's temperature is a function of the step (fairseq's set_num_updates).

What is optimised and logged, per micro-batch: the criterion's sum / S / ln 2 (`loss.in_bits`), i.e. fairseq's
logged ``loss`` in bits per masked frame. fairseq instead back-propagates the sum and divides the gradients by the
S of all GPUs together (and its loss is in nats): our gradient is the mean over micro-batches (and ranks) of each
one's per-frame loss, over ln 2 -- the same when every micro-batch has the same S, and a constant factor that Adam
cancels (but for its eps). ``val/loss`` sums over the whole validation split before dividing, as fairseq's valid
loss does: the number Table 5 reports.
"""
from __future__ import annotations

import torch

from dyt.families.wav2vec2.data import audio_train_loader, audio_val_loader, build_audio_datasets
from dyt.families.wav2vec2.loss import PARTS, in_bits, loss_sums
from dyt.families.wav2vec2.quantizer import annealed_temperature
from dyt.tasks.base import Task


class Wav2Vec2Task(Task):
    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        self.step = 0  # the update being taken (on_step_start): the quantizer's temperature follows it

    def build_datasets(self):
        return build_audio_datasets(self.cfg.data, int(self.cfg.seed))

    def train_loader(self, micro_batch: int, epoch: int, start_batch: int):
        """Length-grouped micro-batches of crops (the data module's: fairseq's sort, a fixed micro-batch)."""
        train, _ = self.datasets
        return audio_train_loader(train, self.cfg.data, micro_batch, self.dist.rank, self.dist.world_size,
                                  int(self.cfg.seed), epoch, start_batch)

    def val_loader(self, batch: int):
        _, val = self.datasets
        return audio_val_loader(val, self.cfg.data, batch, self.dist.rank, self.dist.world_size)

    def to_device(self, batch, device):
        return {"source": batch["source"].to(device, non_blocking=True), "seed": batch["seed"]}  # seeds stay on the CPU

    def batch_units(self, batch) -> int:
        return len(batch["seed"])

    def on_step_start(self, step, optimizer) -> None:
        self.step = step

    def temperature(self) -> float:
        start, end, decay = self.cfg.model.latent_temp
        return annealed_temperature(self.step, start, end, decay)

    def _sums(self, model, batch) -> tuple[dict, dict]:
        out = model(batch["source"], batch["seed"].tolist(), self.temperature())
        return out, loss_sums(out, self.cfg.model.loss_weights)

    def loss(self, model, batch):
        out, sums = self._sums(model, batch)
        size = sums["sample_size"]
        parts = {k: in_bits(sums[k], size) for k in PARTS}  # "loss" is optimised, the rest logged as train/<name>
        parts.update(accuracy=sums["correct"] / size, prob_perplexity=out["prob_perplexity"].detach(),
                     code_perplexity=out["code_perplexity"], temp=torch.tensor(self.temperature(), device=size.device))
        return parts

    @torch.no_grad()
    def eval_step(self, model, batch):
        out, sums = self._sums(model, batch)
        sums = {k: v.detach().float() for k, v in sums.items()}
        one = torch.ones((), device=sums["loss"].device)
        # fairseq averages its logged perplexities over batches
        return {**sums, "prob_perplexity": out["prob_perplexity"].float(), "code_perplexity": out["code_perplexity"],
                "batches": one}

    def eval_metrics(self, sums):
        size = max(sums["sample_size"], 1)
        metrics = {k: in_bits(sums[k], size) for k in PARTS}
        metrics["accuracy"] = sums["correct"] / max(sums["count"], 1)
        for k in ("prob_perplexity", "code_perplexity"):
            metrics[k] = sums[k] / max(sums["batches"], 1)
        return metrics

    def summary_metric(self):
        return "val/loss", "min"
