"""Language modeling (LLaMA, GPT-2): next-token cross-entropy on packed sequences; val loss, perplexity, MFU."""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dyt.data.text import StreamingPacked, build_text_datasets, unigram_loss
from dyt.data.tokenizers import load_tokenizer, vocab_size
from dyt.errors import ConfigError
from dyt.tasks.base import Task

# Dense bf16 peak FLOP/s by GPU name (no sparsity), for MFU. Override with $DYT_PEAK_FLOPS (e.g. for a CPU).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L4": 121e12,
             "4090": 165e12, "V100": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if os.environ.get("DYT_PEAK_FLOPS"):
        return float(os.environ["DYT_PEAK_FLOPS"])
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_BF16.items() if k in name), None)
    return None


class LanguageTask(Task):
    throughput_unit = "tokens"

    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        if self.channels_last:
            raise ConfigError("trainer.channels_last is a memory format for image models; a language model has "
                              "no 4-D activations (drop the override)")
        self.seq_len = cfg.data.seq_len
        self.streaming = cfg.data.source == "hf" and cfg.data.streaming
        self._flops_per_token = None
        self._unigram = None

    def build_model(self):
        model = super().build_model()
        if hasattr(model, "flops_per_token"):
            self._flops_per_token = model.flops_per_token(self.seq_len)
        return model

    def build_datasets(self):
        return build_text_datasets(self.cfg.data)

    # --- data: batches are (B, L+1) token tensors -------------------------------------------------------
    def train_loader(self, micro_batch, epoch, start_batch):
        if not self.streaming:
            return super().train_loader(micro_batch, epoch, start_batch)
        # One endless deterministic stream per rank (epoch stays 0, see batches_per_epoch): exact resume by skip.
        stream = StreamingPacked(self.cfg.data, load_tokenizer(self.cfg.data), self.cfg.seed, self.dist.rank,
                                 self.dist.world_size, start_batch * micro_batch)
        return DataLoader(stream, batch_size=micro_batch, num_workers=0)

    def batches_per_epoch(self, micro_batch):
        if self.streaming:
            return 2**62 // micro_batch  # a stream has no epochs; the position is a sequence count
        return super().batches_per_epoch(micro_batch)

    def to_device(self, batch, device):
        return batch.to(device, non_blocking=True)

    def batch_units(self, batch):
        return batch.shape[0] * (batch.shape[1] - 1)

    # --- loss and evaluation ----------------------------------------------------------------------------
    def loss(self, model, batch):
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())

    @torch.no_grad()
    def eval_step(self, model, batch):
        logits = model(batch[:, :-1]).float()
        targets = batch[:, 1:]
        return {"nll": F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"),
                "tokens": torch.tensor(targets.numel(), device=batch.device, dtype=torch.float64)}

    def eval_metrics(self, sums):
        loss = sums["nll"] / max(sums["tokens"], 1)
        out = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bpt": loss / math.log(2)}
        u = self.unigram_baseline()
        if u is not None:
            out["unigram_loss"] = u  # what a model that ignores context would reach
        return out

    def unigram_baseline(self, limit: int = 10_000_000) -> float | None:
        """Val loss of the train set's unigram distribution (computed once, on up to `limit` tokens)."""
        if self._unigram is None:
            train, val = self.datasets
            if train is None:
                return None
            self._unigram = unigram_loss(train.tokens(limit), val.tokens(limit)[1:], vocab_size(self.cfg.data))
        return self._unigram

    def train_metrics(self, units_per_s):
        if not self._flops_per_token:
            return {}
        flops = units_per_s * self._flops_per_token  # all ranks together
        out = {"train/tflops": flops / 1e12}
        peak = peak_flops(self.dist.device)
        if peak:
            out["train/mfu"] = flops / (peak * self.dist.world_size)
        return out

    def summary_metric(self):
        return "val/loss", "min"

    def summary_fields(self):
        """The training split's size in tokens (after data.max_train_tokens): the T of a run's tokens per parameter
        in the token-budget study (arXiv 2604.23434 varies the dataset, not the steps). A stream has no size."""
        train = None if self.streaming else self.datasets[0]
        return {"train_tokens": train.num_tokens()} if train is not None else {}
