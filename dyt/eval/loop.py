"""The validation loop, shared by the trainer's periodic evaluations and the evaluation of a finished run."""
from __future__ import annotations

import torch
import torch.nn as nn

from dyt import distributed as D
from dyt.errors import ConfigError
from dyt.precision import autocast


@torch.no_grad()
def evaluate(task, model: nn.Module, device: torch.device, batch_size: int, dtype: torch.dtype | None = None,
             lockstep: bool = False) -> dict:
    """The task's metrics on its validation set, summed over this rank's shard and all-reduced across ranks.

    `lockstep` (a sharded model, whose every forward is a collective): ranks run the same number of forwards; a
    rank whose shard ended (shards differ by at most one sample) repeats its first batch and discards the result."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    batches, spare = iter(task.val_loader(batch_size)), None
    while True:
        batch = next(batches, None)
        if lockstep and not D.any_rank(batch is not None, device):
            break
        if batch is None and not lockstep:
            break
        if batch is None:
            if spare is None:
                raise ConfigError("the validation set has fewer samples than processes: a sharded model cannot be "
                                  "evaluated (every rank runs each forward); use fewer processes or a larger val split")
            with autocast(device, dtype):
                task.eval_step(model, spare)  # keeps the other ranks' forwards company
            continue
        batch = task.to_device(batch, device)
        spare = batch if spare is None and lockstep else spare
        with autocast(device, dtype):
            out = task.eval_step(model, batch)
        for k, v in out.items():
            sums[k] = sums.get(k, 0) + v.detach().double()
    keys = sorted(sums)
    totals = D.all_reduce_sum(torch.stack([sums[k] for k in keys]) if keys else torch.zeros(0, device=device))
    model.train(was_training)
    return task.eval_metrics({k: v.item() for k, v in zip(keys, totals)})
