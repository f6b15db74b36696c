"""DINO (Table 2): sizes on meta, the loss / clipping / schedules against independent computations and the
official code (facebookresearch/dino, when its mirror is on disk), the teacher EMA, multi-crop draws, DyT
conversion, the backbone handed to fine-tuning, and exact resume after kill -9 with data workers."""
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from conftest import compose, killed_and_resumed
from dyt.data.sampler import SeededSamples
from dyt.families import build_model, get_family
from dyt.families.dino.data import dino_datasets
from dyt.families.dino.loss import DINOLoss, cosine_schedule, teacher_temperature
from dyt.families.dino.task import clip_per_parameter, ema_update
from dyt.nn import DynamicTanh
from dyt.validate import validate

MIRROR = Path("/work/.mirror/facebookresearch+dino/repo")
# a DINO of a few seconds: 2-block ViTs of width 32 on 16-px digits, 12-px global and 8-px local crops
PICO = ["model=dino_pico", "data=digits", "data.image_size=16", "model.kwargs.depth=2", "model.kwargs.embed_dim=32",
        "model.crops.global_size=12", "model.crops.local_size=8", "model.crops.local_number=2",
        "model.head.out_dim=64", "model.head.hidden_dim=32", "model.head.bottleneck_dim=16",
        "model.dino.knn_train_samples=200", "optim.clip_grad=0.3", "optim.warmup_steps=2"]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """facebookresearch/dino's main_dino.py and utils.py, imported from the mirror (git show into a folder)."""
    if not (MIRROR / "HEAD").exists() and not (MIRROR / ".git").exists():
        pytest.skip(f"no mirror of facebookresearch/dino at {MIRROR} (fetch github:facebookresearch/dino)")
    d = tmp_path_factory.mktemp("dino_official")
    for f in ("main_dino.py", "utils.py", "vision_transformer.py"):
        text = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{f}"], capture_output=True, text=True,
                              check=True).stdout
        (d / f).write_text(text)
    sys.path.insert(0, str(d))
    try:
        yield importlib.import_module("main_dino"), importlib.import_module("utils")
    finally:
        sys.path.remove(str(d))


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo group of one process: the official DINOLoss all-reduces its centre."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# --- sizes ---------------------------------------------------------------------------------------------------
def vit_params(d=768, depth=12, mlp=3072, patch=16, chans=3, tokens=197) -> int:
    """DINO's vision_transformer.py ViT (qkv bias, cls token, final norm, no classifier), counted by hand."""
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    return chans * patch * patch * d + d + d + tokens * d + depth * block + 2 * d


def head_params(d=768, hidden=2048, bottleneck=256, out=65536) -> int:
    """DINOHead(use_bn=False, nlayers=3): 3 Linear layers + weight_norm(Linear(bottleneck, out, bias=False))'s g, v."""
    return (d * hidden + hidden) + (hidden * hidden + hidden) + (hidden * bottleneck + bottleneck) + out + bottleneck * out


@pytest.mark.parametrize("norm,alphas", [("layernorm", 0), ("dyt", 25)])  # DyT: one alpha per converted norm
@pytest.mark.parametrize("model,patch,tokens", [("dino_vit_b16", 16, 197), ("dino_vit_b8", 8, 785)])
def test_paper_sizes_on_meta_equal_the_official_count(model, patch, tokens, norm, alphas):
    cfg = compose([f"model={model}", "data=imagenet", f"norm={norm}"])
    with torch.device("meta"):
        m = build_model(cfg)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(m.student.backbone) == vit_params(patch=patch, tokens=tokens) + alphas  # LN B/16: 85,798,656
    assert count(m.student.head) == head_params()  # 23,138,560
    assert count(m.teacher) == count(m.student)
    assert not any(p.requires_grad for p in m.teacher.parameters())
    assert m.criterion.center.shape == (1, 65536)


def test_dyt_converts_every_layernorm_of_student_and_teacher():
    with torch.device("meta"):
        m = build_model(compose(["model=dino_vit_b16", "data=imagenet", "norm=dyt"]))
        ln = build_model(compose(["model=dino_vit_b16", "data=imagenet", "norm=layernorm"]))
    for net in ("student", "teacher"):
        dyt = [n for n, mod in getattr(m, net).named_modules() if isinstance(mod, DynamicTanh)]
        assert len(dyt) == 2 * 12 + 1  # norm1, norm2 per block + the final norm
        assert not any(isinstance(mod, nn.LayerNorm) for mod in getattr(m, net).modules())
        assert all(mod.alpha_init == 0.5 for mod in getattr(m, net).modules() if isinstance(mod, DynamicTanh))
        assert sum(isinstance(mod, nn.LayerNorm) for mod in getattr(ln, net).modules()) == 25


# --- the loss ----------------------------------------------------------------------------------------------------
def reference_loss(student, teacher, center, ncrops, temp, student_temp=0.1):
    """The DINO objective written out sample by sample in float64: mean over (global view g, other view v) of the
    batch mean of -sum_k p_g[k] log q_v[k]."""
    b = len(teacher) // 2
    s, t, c = student.double(), teacher.double(), center.double()
    terms = []
    for g in range(2):
        for v in range(ncrops):
            if v == g:
                continue
            per_sample = []
            for i in range(b):
                p = torch.exp((t[g * b + i] - c[0]) / temp)
                p = p / p.sum()
                logits = s[v * b + i] / student_temp
                log_q = logits - torch.log(torch.exp(logits - logits.max()).sum()) - logits.max()
                per_sample.append(-(p * log_q).sum())
            terms.append(torch.stack(per_sample).mean())
    return torch.stack(terms).mean()


def logits(ncrops=6, b=5, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(ncrops * b, dim, generator=g) * 3, torch.randn(2 * b, dim, generator=g) * 3


def test_loss_equals_an_independent_computation_and_moves_the_center():
    student, teacher = logits()
    loss = DINOLoss(32, 6, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.randn(1, 32, generator=torch.Generator().manual_seed(1)))
    center = loss.center.clone()
    ours = loss(student, teacher, teacher_temp=0.05)
    assert abs(ours.item() - reference_loss(student, teacher, center, 6, 0.05).item()) < 1e-5
    torch.testing.assert_close(loss.center, 0.9 * center + 0.1 * teacher.mean(dim=0, keepdim=True))
    before = loss.center.clone()
    loss(student, teacher, teacher_temp=0.05, update_center=False)  # validation: the centre stays
    assert torch.equal(loss.center, before)


def test_loss_equals_the_official_dino_loss(official, one_process_group):
    main_dino, _ = official
    ref = main_dino.DINOLoss(32, 6, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3,
                             nepochs=10)
    ours = DINOLoss(32, 6)
    diffs = []
    for epoch in range(5):  # the centre evolves identically over several calls; the temperature schedule too
        student, teacher = logits(seed=epoch)
        temp = teacher_temperature(epoch, 0.04, 0.07, 3)
        assert temp == pytest.approx(float(ref.teacher_temp_schedule[epoch]), abs=1e-15)
        a, b = ours(student, teacher, temp), ref(student, teacher, epoch)
        diffs.append((a - b).abs().item())
        torch.testing.assert_close(ours.center, ref.center, rtol=0, atol=1e-7)
    print(f"max |ours - official DINOLoss| over 5 calls: {max(diffs):.3g}")
    assert max(diffs) < 1e-6


def test_schedules_equal_the_official_cosine_scheduler(official):
    _, utils = official
    epochs, per_epoch = 7, 5
    total = epochs * per_epoch
    cases = [((3e-3, 2e-6), dict(warmup_epochs=2)), ((0.04, 0.4), {}), ((0.996, 1.0), {})]  # lr, wd, momentum
    for (base, final), kw in cases:
        ref = utils.cosine_scheduler(base, final, epochs, per_epoch, **kw)
        warmup = kw.get("warmup_epochs", 0) * per_epoch
        ours = [cosine_schedule(base, final, it, total, warmup) for it in range(total)]
        assert max(abs(a - b) for a, b in zip(ours, ref)) < 1e-15


# --- clipping and the teacher ----------------------------------------------------------------------------------
def with_grads(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    for i, p in enumerate(m.parameters()):
        p.grad = torch.randn_like(p) * (0.01 if i % 2 else 10.0)  # some above the clip, some below
    return m


def test_per_parameter_clipping_equals_the_official_clip_gradients(official):
    _, utils = official
    ours, ref = with_grads(), with_grads()
    norm = clip_per_parameter(ours.parameters(), 0.3)
    norms = utils.clip_gradients(ref, 0.3)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert norm.item() == pytest.approx(math.sqrt(sum(n * n for n in norms)), rel=1e-6)


def test_per_parameter_clipping_clips_each_gradient_on_its_own():
    m = with_grads()
    before = [p.grad.norm().item() for p in m.parameters()]
    clip_per_parameter(m.parameters(), 0.3)
    for b, p in zip(before, m.parameters()):
        assert p.grad.norm().item() == pytest.approx(min(b, 0.3 * b / (b + 1e-6)), rel=1e-5)


def test_teacher_ema_update_is_the_formula():
    m = build_model(compose(PICO))
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(torch.randn_like(p))
    teacher = [p.clone() for p in m.teacher.parameters()]
    student = [p.clone() for p in m.student.parameters()]
    momentum = cosine_schedule(0.996, 1.0, 3, 10)
    ema_update(m.teacher, m.student, momentum)
    for t_new, t, s in zip(m.teacher.parameters(), teacher, student):
        torch.testing.assert_close(t_new, momentum * t + (1 - momentum) * s, rtol=0, atol=1e-7)


def test_teacher_starts_as_the_student_without_drop_path():
    m = build_model(compose(PICO))
    for (n, t), s in zip(m.teacher.state_dict().items(), m.student.state_dict().values()):
        assert torch.equal(t, s), n
    assert m.student.backbone.blocks[-1].drop_path1.drop_prob > 0
    assert isinstance(m.teacher.backbone.blocks[-1].drop_path1, nn.Identity)


# --- data ------------------------------------------------------------------------------------------------------
def test_multi_crop_draw_is_a_pure_function_of_seed_epoch_and_index():
    cfg = compose(PICO)
    train, val, _ = dino_datasets(cfg)
    sizes = [c.shape[-1] for c in train[0][0]]
    assert sizes == [12, 12, 8, 8]
    a = SeededSamples(train, 0, 3)
    first = a[5][0]
    torch.rand(7)  # the global RNG moves in between: no effect
    a[9]
    assert all(torch.equal(x, y) for x, y in zip(first, a[5][0]))
    assert not torch.equal(SeededSamples(train, 0, 4)[5][0][0], first[0])  # another epoch, other crops
    assert not torch.equal(SeededSamples(train, 1, 3)[5][0][0], first[0])  # another seed
    # two data workers give the main process's crops
    loader = lambda workers: DataLoader(a, batch_size=4, num_workers=workers)  # noqa: E731
    for b0, b2 in zip(loader(0), loader(2)):
        assert all(torch.equal(x, y) for x, y in zip(b0[0], b2[0]))
    # validation crops are fixed per sample
    assert all(torch.equal(x, y) for x, y in zip(val[3][0], val[3][0]))


# --- the family's seams --------------------------------------------------------------------------------------------
def test_backbone_is_the_teacher_as_a_timm_vit_state_dict():
    cfg = compose(PICO + ["norm=dyt"])
    m = build_model(cfg)
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)  # the student moves away: the backbone must be the teacher's
    sd = get_family("dino").backbone(m.state_dict())
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=12, patch_size=4, in_chans=1,
                            embed_dim=32, depth=2, num_heads=2)
    from dyt.nn import convert_norms
    convert_norms(vit, kind="dyt")
    vit.load_state_dict(sd, strict=True)
    for k, v in m.teacher.backbone.state_dict().items():
        assert torch.equal(sd[k], v)


@pytest.mark.parametrize("experiment,lr,batch,epochs,clip,warm", [
    ("table2_dino_vit_b16", 7.5e-4 * 1024 / 256, 1024, 400, 0.3, 0.04),
    ("table2_dino_vit_b8", 5e-4 * 1056 / 256, 1056, 300, 3.0, 0.03)])
def test_table2_experiments_are_the_dyt_readme_commands(experiment, lr, batch, epochs, clip, warm):
    cfg = compose([f"experiment={experiment}", "norm=dyt"])
    validate(cfg)
    o, t, d = cfg.optim, cfg.trainer, cfg.model.dino
    assert o.lr == pytest.approx(lr) and o.lr * o.min_lr_ratio == pytest.approx(2e-6)
    assert (t.batch_size, t.epochs, o.clip_grad, o.warmup_epochs, o.weight_decay) == (batch, epochs, clip, 10, 0.04)
    assert (d.warmup_teacher_temp, d.teacher_temp, d.warmup_teacher_temp_epochs, d.momentum_teacher,
            d.weight_decay_end, d.freeze_last_layer) == (warm, 0.07, 50, 0.996, 0.4, 3)
    c = cfg.model.crops
    assert (c.local_number, list(c.global_scale), list(c.local_scale)) == (10, [0.25, 1.0], [0.05, 0.25])
    assert (cfg.model.head.out_dim, cfg.model.drop_path, t.precision) == (65536, 0.1, "fp32")


def test_planner_counts_every_student_crop():
    from dyt.plan import plan
    cfg = compose(["experiment=table2_dino_vit_b16", "norm=layernorm"])
    p = plan(cfg, nodes=4, gpus_per_node=8)
    assert p["seq"] == 2 * 197 + 10 * 37 and p["layers"] == 12
    # gradients and optimizer state for the student only (the teacher and the fixed g of the last layer have none)
    student = 85_798_656 + 23_138_560 - 65536  # backbone + head - the norm_last_layer scale g
    ddp = next(r for r in p["rows"] if r["strategy"] == "ddp" and r["ac"] == "none")
    assert p["trainable"] == student and ddp["grads"] == 4 * student and ddp["optimizer"] == 8 * student
    assert ddp["params"] == 4 * p["params"] and p["params"] == 2 * (85_798_656 + 23_138_560)


# --- training ------------------------------------------------------------------------------------------------------
RESUME = [*PICO, "trainer.batch_size=96", "trainer.max_steps=20", "trainer.ckpt_every=5", "trainer.eval_every=10",
          "trainer.log_every=5", "data.num_workers=2", "model.dino.freeze_last_layer=1",
          "model.dino.warmup_teacher_temp_epochs=2", "model.dino.teacher_temp=0.07"]


def summary(d):
    return json.loads((d / "summary.json").read_text())


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    """kill -9 mid-run (14 steps an epoch: the schedules, the last-layer freeze and the centre all cross the kill)."""
    a, b = killed_and_resumed(tmp_path, RESUME)
    assert a["status"] == b["status"] == "completed"
    for k in ("train/loss", "val/loss", "val/knn_top1"):
        assert a[k] == b[k], k
    ca, cb = (torch.load(sorted((tmp_path / run / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)
              for run in ("killed", "straight"))
    for k, v in cb["model"].items():  # the teacher and the centre too
        assert torch.equal(ca["model"][k], v), k


def test_the_trainer_runs_the_task_hooks(tmp_path):
    """Through the trainer's step: the decayed group's weight decay follows the schedule, the last layer is frozen
    in the first epoch while the rest trains, and the teacher follows the student (EMA)."""
    from dyt.trainer import Trainer
    cfg = compose([*PICO, "trainer.max_steps=3", "trainer.batch_size=16", "trainer.eval_every=100",
                   "trainer.ckpt_every=100", "model.dino.knn_train_samples=0", "model.dino.freeze_last_layer=1"])
    t = Trainer(cfg, tmp_path / "run")
    start = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    now = t.model.state_dict()
    last = "student.head.last_layer.parametrizations.weight.original1"
    assert torch.equal(now[last], start[last])  # frozen: epoch 0 < freeze_last_layer
    assert not torch.equal(now["student.head.mlp.0.weight"], start["student.head.mlp.0.weight"])
    assert not torch.equal(now["teacher.backbone.blocks.0.attn.qkv.weight"], start["teacher.backbone.blocks.0.attn.qkv.weight"])
    assert t.optimizer.param_groups[0]["weight_decay"] == cosine_schedule(0.05, 0.4, 2, 3)  # optim.weight_decay 0.05
    assert t.optimizer.param_groups[1]["weight_decay"] == 0.0
    assert not torch.equal(now["criterion.center"], start["criterion.center"])
