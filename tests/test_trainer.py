"""The shared trainer in-process on tiny configs: records, exact resume, divergence, EMA/mixup/accumulation,
wandb offline, and the errors a user meets (corrupt or mismatched checkpoints)."""
import collections
import json
import shutil
import signal

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY, compose
from dyt import distributed as D
from dyt.errors import ConfigError
from dyt.logging import read_jsonl
from dyt.eval import evaluate_run
from dyt.run import train
from dyt.rundir import list_checkpoints
from dyt.trainer import Trainer


def run(tmp_path, name, *extra):
    return train(compose([*TINY, *extra]), tmp_path / name)


def test_run_records(tmp_path):
    s = run(tmp_path, "r")
    d = tmp_path / "r"
    assert s["status"] == "completed" and s["step"] == 12 and s["reason"] is None
    assert json.loads((d / "summary.json").read_text())["val/top1"] == s["val/top1"]
    # what decides the exact numbers beyond the config (README: reproducibility across machines)
    assert s["env"]["torch"] == torch.__version__ and s["env"]["threads"] == torch.get_num_threads()
    assert s["env"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and "deterministic" in s["env"]
    events = read_jsonl(d / "metrics.jsonl")
    train_ev = [e for e in events if e["split"] == "train"]
    val_ev = [e for e in events if e["split"] == "val"]
    assert [e["step"] for e in train_ev] == [3, 6, 9, 12] and [e["step"] for e in val_ev] == [6, 12]
    assert {"train/loss", "train/lr", "train/throughput", "train/grad_norm", "alpha/blocks.0.norm1", "alpha/fc_norm"} <= set(train_ev[0])
    assert {"val/loss", "val/top1", "val/top5"} <= set(val_ev[0])
    assert "model:\n  name: vit_pico" in (d / "config.yaml").read_text()
    assert [p.name for p in list_checkpoints(d / "checkpoints")] == ["step_00000012.pt"]
    # evaluating the checkpoint again gives the run's final metrics
    again = evaluate_run(d)
    assert again["val/top1"] == pytest.approx(s["val/top1"]) and again["val/loss"] == pytest.approx(s["val/loss"], rel=1e-5)


# Random augmentation on (a random shift per image, drawn in the data workers) and dropout-like drop path.
AUGMENTED = ["data.augment.shift=1", "model.drop_path=0.1", "trainer.ema_decay=0.9", "trainer.keep_checkpoints=2"]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_equals_uninterrupted(tmp_path, workers):
    full = run(tmp_path, "full", *AUGMENTED, f"data.num_workers={workers}")
    # The same run "killed" after its step-6 checkpoint: drop what came later, then run the same config again.
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    (tmp_path / "cut/checkpoints/step_00000012.pt").unlink()
    (tmp_path / "cut/summary.json").unlink()
    resumed = run(tmp_path, "cut", *AUGMENTED, f"data.num_workers={workers}")
    assert resumed["train/loss"] == full["train/loss"] and resumed["val/loss"] == full["val/loss"]
    for best in ("best/val/top1", "best/val_ema/top1"):  # the bests include the evals before the cut
        assert resumed[best] == full[best]
    steps = [e["step"] for e in read_jsonl(tmp_path / "cut/metrics.jsonl") if e["split"] == "train"]
    assert steps == [3, 6, 9, 12]  # no duplicated events after resuming


def test_completed_run_is_skipped(tmp_path, capsys):
    run(tmp_path, "r")
    mtime = (tmp_path / "r/summary.json").stat().st_mtime
    run(tmp_path, "r")
    assert "already completed" in capsys.readouterr().out
    assert (tmp_path / "r/summary.json").stat().st_mtime == mtime


def test_nan_loss_ends_as_diverged(tmp_path):
    s = run(tmp_path, "nan", "data.std=[0.0]")  # inputs become inf: the first loss is NaN
    assert s["status"] == "diverged" and s["step"] == 1 and "non-finite" in s["reason"]
    assert json.loads((tmp_path / "nan/summary.json").read_text())["status"] == "diverged"


class HostReads(TorchDispatchMode):
    """Counts, per training step, what would stall a GPU: scalar reads of tensors (``.item()``, ``float(t)``:
    ``aten._local_scalar_dense``; ``.tolist()``) and the trainer's all-reduces. A step owns everything from the
    start of its ``_train_step`` to the start of the next one (its sync point: logging, eval, checkpoint). Reads
    that are host-side on a GPU too are not counted: the data pipeline's and the optimizer's step counters."""

    def __init__(self, trainer, monkeypatch):
        super().__init__()
        self.t, self.step, self.paused, self.reads = trainer, 0, False, collections.Counter()
        train_step, batches, tolist, all_reduce = trainer._train_step, trainer._batches, torch.Tensor.tolist, D.all_reduce_sum

        def counted_step(*args):
            self.step = trainer.step + 1
            return train_step(*args)

        def host_batches():
            it = batches()
            while True:
                self.paused = True
                batch = next(it)
                self.paused = False
                yield batch

        def counted(fn):
            def wrapper(*args):
                self.count()
                return fn(*args)
            return wrapper
        monkeypatch.setattr(trainer, "_train_step", counted_step)
        monkeypatch.setattr(trainer, "_batches", host_batches)
        monkeypatch.setattr(torch.Tensor, "tolist", counted(tolist))
        monkeypatch.setattr(D, "all_reduce_sum", counted(all_reduce))

    def count(self):
        if not self.paused:
            self.reads[self.step] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            if not any(args[0] is st.get("step") for st in self.t.optimizer.state.values()):
                self.count()
        return func(*args, **(kwargs or {}))


def test_steps_between_sync_points_read_nothing_back(tmp_path, monkeypatch):
    """Losses, grad norms and the stop-signal agreement stay on the device between sync points (here the log
    steps 3, 6, 9, 12; eval and checkpoints at 6 and 12). LayerNorm: DyT's CPU kernel reads alpha on the host
    (its CUDA kernel does not)."""
    t = Trainer(compose([*TINY, "norm=layernorm", "optim.clip_grad=1.0", "trainer.resume=never"]), tmp_path / "r")
    reads = HostReads(t, monkeypatch)
    with reads:
        assert t.fit()["status"] == "completed"
    assert {s: reads.reads[s] for s in range(1, 13) if s % 3} == dict.fromkeys([1, 2, 4, 5, 7, 8, 10, 11], 0)
    assert all(reads.reads[s] > 0 for s in (3, 6, 9, 12))  # the counter sees the sync points' reads
    t = Trainer(compose([*TINY, "trainer.sync_every=4", "trainer.resume=never"]), tmp_path / "r4")
    assert [s for s in range(1, 13) if t._sync_point(s)] == [3, 4, 6, 8, 9, 12]  # and every 4 steps


def test_nan_is_caught_at_the_next_sync_point_before_any_checkpoint(tmp_path, monkeypatch):
    """A loss that turns NaN at step 3 (finite before): steps 4 and 5 read nothing, the checkpoint step 6 syncs
    first and the run ends as diverged naming step 3, with only the step-2 checkpoint written."""
    t = Trainer(compose([*TINY, "trainer.ckpt_every=2", "trainer.log_every=100", "trainer.eval_every=100",
                         "trainer.sync_every=100", "trainer.keep_checkpoints=5", "trainer.resume=never"]), tmp_path / "r")
    loss = t.task.loss
    monkeypatch.setattr(t.task, "loss", lambda net, batch: loss(net, batch) * (float("nan") if t.step == 2 else 1.0))
    s = t.fit()
    assert s["status"] == "diverged" and s["step"] == 3 and s["reason"].startswith("non-finite training loss (nan) at step 3")
    assert [p.name for p in list_checkpoints(tmp_path / "r/checkpoints")] == ["step_00000002.pt"]
    assert [(e["step"], e["split"]) for e in read_jsonl(tmp_path / "r/metrics.jsonl")] == [(3, "train")]


def test_stop_signal_is_agreed_at_the_next_sync_point(tmp_path, monkeypatch):
    """Under torchrun a SIGTERM is acted on at the next sync point (every rank agrees there): the run checkpoints
    that step and ends as interrupted. (A single process acts at once: tests/test_exits.py.)"""
    t = Trainer(compose([*TINY, "trainer.resume=never"]), tmp_path / "r")
    monkeypatch.setattr(t, "dist", D.DistInfo(world_size=2))  # as a rank of two (its collectives are not called)
    step = t._train_step

    def signalled_step(batches):
        if t.step == 3:
            t._on_signal(signal.SIGTERM, None)
        return step(batches)
    monkeypatch.setattr(t, "_train_step", signalled_step)
    monkeypatch.setattr(D, "all_reduce_sum", lambda x: x * torch.tensor([2.0] * (len(x) - 2) + [1.0, 1.0]))
    s = t.fit()
    assert s["status"] == "interrupted" and s["step"] == 6 and s["signal"] == "SIGTERM"
    assert [p.name for p in list_checkpoints(tmp_path / "r/checkpoints")] == ["step_00000006.pt"]


def test_ema_mixup_smoothing_accumulation(tmp_path):
    s = run(tmp_path, "r", "trainer.ema_decay=0.9", "data.augment.mixup=0.8", "data.augment.cutmix=1.0",
            "data.augment.label_smoothing=0.1", "trainer.grad_accum=2", "trainer.batch_size=32")
    assert s["status"] == "completed" and {"val_ema/top1", "val/top1"} <= set(s)
    assert "ema" in torch.load(list_checkpoints(tmp_path / "r/checkpoints")[-1], weights_only=True)


def test_ema_best_is_summarised_and_eval_every_epochs(tmp_path, capsys):
    """The official trainer reports the best raw AND the best EMA accuracy; both land in summary.json and the
    console line. trainer.eval_every_epochs=0.5 evaluates every half epoch (1438 // 64 = 22 steps per epoch)."""
    s = run(tmp_path, "r", "trainer.ema_decay=0.5", "trainer.eval_every_epochs=0.5", "trainer.max_steps=33",
            "trainer.eval_every=1000")
    val = [e for e in read_jsonl(tmp_path / "r/metrics.jsonl") if e["split"] == "val"]
    assert [e["step"] for e in val] == [11, 22, 33]
    for name in ("val/top1", "val_ema/top1"):
        assert s[f"best/{name}"] == max(e[name] for e in val)
    assert json.loads((tmp_path / "r/summary.json").read_text())["best/val_ema/top1"] == s["best/val_ema/top1"]
    assert f"best/val_ema/top1={s['best/val_ema/top1']:.4g}" in capsys.readouterr().out


def test_mixup_with_an_odd_micro_batch_is_one_clear_error(tmp_path):
    """timm's Mixup pairs samples within a micro-batch: an odd one used to turn mixing off silently."""
    with pytest.raises(ConfigError, match=r"Mixup/CutMix needs an even micro-batch per rank, got 15 "
                                          r"\(trainer.batch_size=30 / \(world_size 1 x trainer.grad_accum 2\)\)"):
        run(tmp_path, "r", "data.augment.mixup=0.8", "trainer.batch_size=30", "trainer.grad_accum=2")
    assert not (tmp_path / "r").exists()


def test_no_weight_decay_on_1d_params(tmp_path):
    t = Trainer(compose([*TINY, "trainer.resume=never"]), tmp_path / "r")
    decay, no_decay = t.optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and any(p is t.model.blocks[0].norm1.alpha for p in no_decay["params"])
    t.close()


def wandb_history_keys(run_file) -> set[str]:
    """The metric names of an offline run's history records. The .wandb file is a LevelDB-style log (a 7-byte
    header, then records of crc32 / length / kind + a protobuf Record, cut into 32 KiB blocks); wandb 0.31 has no
    Python reader of its own."""
    from wandb.proto import wandb_internal_pb2 as pb
    raw, pos, buf, keys = run_file.read_bytes(), 7, b"", set()
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        buf, pos = buf + raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            keys |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
    return keys


def test_wandb_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    s = run(tmp_path, "w", "logger=wandb", "trainer.max_steps=3", "trainer.eval_every=3")
    assert s["status"] == "completed"
    runs = list((tmp_path / "w/wandb").glob("offline-run-*"))
    assert len(runs) == 1 and (tmp_path / "w/wandb_id").read_text() in runs[0].name
    # the same metrics as metrics.jsonl; the norm-site statistics grouped per site (sites/<site>/<stat>)
    keys = wandb_history_keys(next(runs[0].glob("run-*.wandb")))
    logged = {k for e in read_jsonl(tmp_path / "w/metrics.jsonl") for k in e if k not in ("step", "split")}
    assert {"train/loss", "val/top1", "sites/blocks.0.norm1/sat", "sites/blocks.0.norm1/std",
            "sites/blocks.0.norm1/out_std", "sites/blocks.0.norm1/alpha", "sites/fc_norm/alpha"} <= keys
    per_stat = {tuple(k.split("/", 1)) for k in logged if k.split("/")[0] in ("std", "sat", "out_std", "alpha")}
    assert {f"sites/{site}/{stat}" for stat, site in per_stat} <= keys
    assert not {k for k in keys if k.split("/")[0] in ("std", "sat", "out_std", "alpha")}


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    run(tmp_path, "r")
    (tmp_path / "r/checkpoints/step_00000012.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "r/summary.json").unlink()
    with pytest.raises(ConfigError, match=r"checkpoint .*step_00000012.pt is corrupt or unreadable"):
        run(tmp_path, "r")


def test_checkpoint_of_another_model_is_one_clear_error(tmp_path):
    run(tmp_path, "r")
    # (resuming run r itself with another model is refused earlier, as a changed config: see tests/test_faults.py)
    with pytest.raises(ConfigError, match=r"does not match the configured model .*shape mismatch: "):
        run(tmp_path, "other", "model.kwargs.embed_dim=48", f"trainer.resume={tmp_path}/r/checkpoints/step_00000012.pt")


def test_batch_not_divisible_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.batch_size=30 is not divisible by world_size x grad_accum = 1 x 4"):
        run(tmp_path, "r", "trainer.batch_size=30", "trainer.grad_accum=4")


def test_channels_last_trains_like_default_format(tmp_path):
    """trainer.channels_last changes memory layout only: same losses as the default format, layouts as asked."""
    t = Trainer(compose([*TINY, "trainer.channels_last=true", "trainer.resume=never"]), tmp_path / "t")
    assert t.model.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)
    images, _ = next(t._batches())
    assert images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    default, last = run(tmp_path, "nchw"), run(tmp_path, "nhwc", "trainer.channels_last=true")
    assert last["status"] == "completed"
    for key in ("train/loss", "val/loss"):
        assert last[key] == pytest.approx(default[key], rel=1e-4)


def test_resume_after_a_write_cut_short(tmp_path):
    """A process killed mid-append leaves half a line in metrics.jsonl: resuming drops it and goes on."""
    run(tmp_path, "r", "trainer.keep_checkpoints=2")
    (tmp_path / "r/checkpoints/step_00000012.pt").unlink()
    (tmp_path / "r/summary.json").unlink()
    with (tmp_path / "r/metrics.jsonl").open("a") as f:
        f.write('{"step": 13, "split": "tra')
    s = run(tmp_path, "r", "trainer.keep_checkpoints=2")
    assert s["status"] == "completed"
    assert [e["step"] for e in read_jsonl(tmp_path / "r/metrics.jsonl") if e["split"] == "train"] == [3, 6, 9, 12]


def test_resumed_records_equal_uninterrupted_ones(tmp_path):
    """Cut between two log events (checkpoint at step 5, logs every 3): the log window open at the cut travels in
    the checkpoint, so metrics.jsonl and summary.json match the uninterrupted run's line for line (timings aside)."""
    args = ["trainer.ckpt_every=5", "trainer.keep_checkpoints=3", *AUGMENTED[:2]]
    full = run(tmp_path, "full", *args)
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for step in (10, 12):
        (tmp_path / f"cut/checkpoints/step_{step:08d}.pt").unlink()
    (tmp_path / "cut/summary.json").unlink()
    resumed = run(tmp_path, "cut", *args)

    def untimed(events):
        return [{k: v for k, v in e.items() if k not in ("train/throughput", "val/time_s", "train/tflops", "train/probe_ms")}
                for e in events]
    assert untimed(read_jsonl(tmp_path / "cut/metrics.jsonl")) == untimed(read_jsonl(tmp_path / "full/metrics.jsonl"))
    timing = ("wall_time_s", "val/time_s")
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in full.items() if k not in timing}
