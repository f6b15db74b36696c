"""What a model family brings to the shared trainer: model, data, loss and evaluation. Never a loop.

A family names its Task subclass (``dyt.family.Family.task``); tasks shared by several families live beside this
module (classification), a family's own task in its folder."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from dyt.data.sampler import SeededSamples, ShardedSampler, draws_randomly
from dyt.distributed import DistInfo
from dyt.family import get_family


class Task:
    """Base task. Subclasses implement `build_datasets`, `loss`, `eval_step` and `eval_metrics`.

    Evaluation is split so the trainer can reduce across ranks: `eval_step` returns per-batch SUMS (tensors),
    the trainer adds them over batches and all-reduces, `eval_metrics` turns the totals into metrics.
    """

    #: what throughput counts: "samples" (images/s) or "tokens" (tokens/s)
    throughput_unit = "samples"

    def __init__(self, cfg, dist: DistInfo):
        self.cfg, self.dist = cfg, dist
        self._datasets: tuple[Dataset, Dataset] | None = None
        # getattr: configs saved by older runs have no such key
        self.channels_last = bool(getattr(cfg.trainer, "channels_last", False))

    # --- model and data -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from dyt.nn.alpha_auto import buildable  # dyt.nn: model code, imported once a model is built
        cfg = self.cfg
        model = get_family(cfg.model.family).build(cfg.model, buildable(cfg.norm), cfg.data)  # auto: the trainer sets alpha0
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    @property
    def datasets(self) -> tuple[Dataset, Dataset]:
        if self._datasets is None:
            self._datasets = self.build_datasets()
        return self._datasets

    def collate(self, batch):
        return torch.utils.data.default_collate(batch)

    def num_workers(self) -> int:
        return int(getattr(self.cfg.data, "num_workers", 0))

    def train_loader(self, micro_batch: int, epoch: int, start_batch: int) -> DataLoader:
        """This rank's batches of one epoch, starting at batch ``start_batch`` (resume)."""
        train, _ = self.datasets
        sampler = ShardedSampler(len(train), self.dist.rank, self.dist.world_size, seed=self.cfg.seed,
                                 epoch=epoch, start=start_batch * micro_batch)
        # Augmentation draws are seeded per sample (SeededSamples), so workers' own seeds do not matter; the
        # private generator only keeps the iterator from consuming the global RNG (exact resume).
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)
        data = SeededSamples(train, self.cfg.seed, epoch) if draws_randomly(train) else train
        return DataLoader(data, batch_size=micro_batch, sampler=sampler,
                          drop_last=True, generator=g,
                          num_workers=self.num_workers(), collate_fn=self.collate,
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)

    def check_micro_batch(self, micro_batch: int) -> None:
        """Raise a ConfigError when this task cannot train on per-rank micro-batches of this size."""

    def batches_per_epoch(self, micro_batch: int) -> int:
        train, _ = self.datasets
        return len(train) // self.dist.world_size // micro_batch

    def val_loader(self, batch: int) -> DataLoader:
        _, val = self.datasets
        sampler = ShardedSampler(len(val), self.dist.rank, self.dist.world_size, shuffle=False, drop_last=False)
        return DataLoader(val, batch_size=batch, sampler=sampler, num_workers=self.num_workers(),
                          collate_fn=self.collate)

    # --- steps ----------------------------------------------------------------------------------------
    def to_device(self, batch, device: torch.device):
        return [self._to_device(t, device) if torch.is_tensor(t) else t for t in batch]

    def _to_device(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        channels_last = self.channels_last and t.dim() == 4  # image batches only
        return t.to(device, non_blocking=True,
                    memory_format=torch.channels_last if channels_last else torch.preserve_format)

    def batch_units(self, batch) -> int:
        """Samples (or tokens) in a batch, for throughput."""
        return len(batch[0])

    def loss(self, model: nn.Module, batch) -> torch.Tensor | dict[str, torch.Tensor]:
        """The training loss, or a dict whose "loss" is optimised and whose other entries (e.g. DiT's mse and
        vb parts) are logged as ``train/<name>``."""
        raise NotImplementedError

    # --- hooks into the trainer's step (dyt.trainer.Trainer._train_step calls them in this order) -------------
    # The defaults are the plain step. `step` is the 0-based index of the optimizer step being taken; whatever a
    # hook changes must follow from the step (or live in the model's buffers) so that a resumed run equals the
    # uninterrupted one. `model` is the module holding the parameters (never the DDP wrapper; FSDP2: DTensors).
    def configure_steps(self, steps_per_epoch: int, max_steps: int) -> None:
        """Once, before the first step: the run's length, for schedules of the step (DINO's are in epochs)."""
        self.steps_per_epoch, self.max_steps = steps_per_epoch, max_steps

    def on_step_start(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Before the forward, after the trainer set the learning rate: other per-step schedules (DINO: weight
        decay, teacher temperature)."""

    def clip_gradients(self, model: nn.Module, clip: float) -> torch.Tensor:
        """After the gradients are unscaled, when ``optim.clip_grad`` is set: clip them, return a norm to log
        (on the device). Default: the global norm (DINO: each parameter on its own)."""
        return nn.utils.clip_grad_norm_(model.parameters(), clip)

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        """After clipping, before the optimizer: change the gradients (DINO drops its head's last layer's in the
        first epochs)."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """After the update (under no_grad): DINO's teacher EMA. Runs before the trainer's own EMA, if any."""

    def eval_step(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def train_metrics(self, units_per_s: float) -> dict[str, float]:
        """Extra train metrics from the measured throughput (e.g. the LM task's MFU)."""
        return {}

    def visualize(self, model: nn.Module) -> dict:
        """Images to look at after an evaluation (name -> HxWx3 uint8 array), e.g. DiT's sample grid."""
        return {}

    def summary_metric(self) -> tuple[str, str]:
        """(metric name, 'max'|'min') that best describes a run, e.g. ('val/top1', 'max')."""
        return "val/loss", "min"

    def summary_fields(self) -> dict:
        """Facts about the run's data for summary.json (e.g. the LM task's training tokens)."""
        return {}
