"""The optimizer and schedule: which parameters are decayed (ours vs the released LLaMA code's), the warmup
shapes (linear vs the released code's quadratic), short runs (one line, no warnings), and the Table 4 recipe's
defaults."""
import logging
import math
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose
from dyt.errors import ConfigError
from dyt.families import build_model
from dyt.optim import build_optimizer, build_scheduler, param_groups, scheduled_lr

TINY_LM = ["model=llama_tiny", "data=text_pydoc", "model.dim=32", "model.n_layers=2", "model.n_heads=4",
           "model.n_kv_heads=2", "norm=dyt"]


def _ids(params):
    return {id(p) for p in params}


def test_decay_1d_moves_alpha_norm_weight_and_embed_scale_into_the_decayed_group():
    torch.manual_seed(0)
    model = build_model(compose(TINY_LM))
    special = {"alpha": model.layers[0].attn_norm.alpha, "norm weight": model.final_norm.weight,
               "embed scale": model.embed_scale}
    every = _ids(p for p in model.parameters() if p.requires_grad)

    decay, no_decay = param_groups(model, 0.1)  # ours: 1-D parameters are not decayed
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(id(p) in _ids(no_decay["params"]) for p in special.values())
    assert all(p.ndim == 2 for p in decay["params"]) and _ids(decay["params"]) | _ids(no_decay["params"]) == every

    decay, no_decay = param_groups(model, 0.1, decay_1d=True)  # released LLaMA code: AdamW(model.parameters(), wd=0.1)
    assert no_decay["params"] == [] and _ids(decay["params"]) == every
    assert all(id(p) in _ids(decay["params"]) for p in special.values())


def test_build_optimizer_reads_decay_1d_from_the_config():
    torch.manual_seed(0)
    model = build_model(compose(TINY_LM))
    alpha = model.layers[1].ffn_norm.alpha
    for optim, decayed in (("optim=adamw", False), ("optim=llama", True)):
        opt = build_optimizer(model, compose([*TINY_LM, optim]).optim)
        decay, no_decay = opt.param_groups
        assert (id(alpha) in _ids(decay["params"])) is decayed
        assert (id(alpha) in _ids(no_decay["params"])) is not decayed


def _lrs(shape, steps, total=47684, warmup=2000, lr=3e-4, min_ratio=0.1, cosine_steps=None):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    cfg = OmegaConf.create({"lr": lr, "min_lr_ratio": min_ratio, "warmup_shape": shape, "cosine_steps": cosine_steps})
    sched = build_scheduler(opt, cfg, total, warmup, verbose=False)
    out = []
    for s in steps:
        sched.step_update(s)
        out.append(opt.param_groups[0]["lr"] / lr)
    return out


def test_warmup_shapes_then_cosine_to_a_tenth():
    steps = [0, 500, 1000, 1500, 2000, 24842, 47684]  # 24842 = 2000 + 45684 / 2: the cosine's midpoint
    # linear: s / 2000; quadratic (released code): 1 - (1 - s/2000)^2 = 0.4375, 0.75, 0.9375 at 500, 1000, 1500
    assert _lrs("linear", steps) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 0.55, 0.1], abs=1e-9)
    assert _lrs("quadratic", steps) == pytest.approx([0.0, 0.4375, 0.75, 0.9375, 1.0, 0.55, 0.1], abs=1e-9)
    # a pure function of the step: asking again, in any order, gives the same values
    assert _lrs("quadratic", steps[::-1]) == pytest.approx([0.1, 0.55, 1.0, 0.9375, 0.75, 0.4375, 0.0], abs=1e-9)


def released_llama_lr(s: int, num_steps: int = 1_000_000, warmup: int = 2000) -> float:
    """jiachenzhu/DyT other_tasks/LLaMA main_training_llama.py's LambdaLR factor at step s (fms-fsdp num_steps)."""
    return min(1 - (1 - min(s, warmup) / warmup) ** 2, 0.1 + 0.45 * (1 + math.cos(min(s, num_steps) / num_steps * math.pi)))


def test_released_cosine_horizon_gives_the_released_lrs():
    # The Table 4 numbers came from a cosine over 1M steps: at 200B tokens (step 47,684) the lr is still ~0.995x.
    steps = [500, 1500, 2000, 10000, 30000, 47684, 999_000, 1_000_000, 1_200_000]
    ours = _lrs("quadratic", steps, total=47684, cosine_steps=1_000_000)
    # ours starts the cosine after the warmup, the released code at step 0: they differ by < 1e-3 (relative)
    assert ours == pytest.approx([released_llama_lr(s) for s in steps], rel=1e-3)
    assert ours[5] == pytest.approx(0.9954, abs=1e-4)
    assert _lrs("quadratic", [47684])[0] == pytest.approx(0.1)  # cosine_steps=null: to 0.1x at the run's end
    cfg = compose(["experiment=table4_7b"])
    assert cfg.optim.cosine_steps == 1_000_000  # the Table 4 default is the released schedule
    assert compose(["experiment=table4_7b", "optim.cosine_steps=null"]).optim.cosine_steps is None  # ours
    with pytest.raises(ConfigError, match="optim.cosine_steps=1000 must be larger than the warmup"):
        _lrs("linear", [0], total=5000, cosine_steps=1000)


def test_unknown_warmup_shape_names_the_choices():
    with pytest.raises(ConfigError, match="optim.warmup_shape 'cubic'.*linear, quadratic"):
        _lrs("cubic", [0])


def test_short_run_one_line_no_warnings(capsys, recwarn, caplog):
    caplog.set_level(logging.WARNING)
    # warmup 2000 >= a 4-step run: warmup becomes 0 (a tenth of the run), said once, in our own line
    # (cosine over all 4 steps: 0.1 + 0.45 * (1 + cos(pi / 4)) at step 1, 0.1 at step 4)
    assert _lrs("quadratic", [1, 4], total=4, warmup=2000, lr=1.0) == pytest.approx([0.1 + 0.45 * (1 + 2 ** -0.5), 0.1])
    assert capsys.readouterr().out == ""  # verbose=False: silent
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    build_scheduler(opt, OmegaConf.create({"lr": 1.0, "min_lr_ratio": 0.1, "warmup_shape": "linear"}), 4, 2000)
    out = capsys.readouterr().out.splitlines()
    assert out == ["[dyt] warmup of 2000 steps >= the run's 4 steps; warming up over 0 steps instead"]
    # one cosine step after the warmup (timm would log "will have no effect" for t_initial = 1): lr, then lr_min
    assert _lrs("linear", [1, 2, 3], total=3, warmup=2, lr=1.0) == pytest.approx([0.5, 1.0, 0.1])
    assert _lrs("linear", [1], total=1, warmup=0, lr=1.0) == pytest.approx([0.1])
    assert len(recwarn) == 0 and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _lrs("quadratic", [1], total=5, warmup=30)


def test_table4_recipe_defaults_are_the_released_code():
    cfg = compose(["experiment=table4_7b"])
    assert cfg.optim.decay_1d is True and cfg.optim.warmup_shape == "quadratic" and cfg.data.add_bos is True
    assert cfg.optim.weight_decay == 0.1 and cfg.optim.warmup_steps == 2000 and cfg.optim.min_lr_ratio == 0.1
    for name in ("table11_alpha", "table12_alpha"):
        c = compose([f"experiment={name}"])
        assert c.optim.decay_1d and c.optim.warmup_shape == "quadratic" and c.data.add_bos
    ours = compose(["experiment=table4_7b", "optim.decay_1d=false", "optim.warmup_shape=linear", "data.add_bos=false"])
    assert not ours.optim.decay_1d and ours.optim.warmup_shape == "linear" and not ours.data.add_bos
    plain = compose(["model=llama_tiny", "data=text_pydoc"])  # outside the LLaMA recipe: our defaults
    assert not plain.optim.decay_1d and plain.optim.warmup_shape == "linear" and not plain.data.add_bos


def test_sgd_recipe_of_the_cnns_decays_every_parameter_with_momentum():
    cfg = compose(["experiment=table15_resnet50", "norm=dyt", "model=resnet50", "data=fashion_mnist"])
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.optim)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 0.1
    decayed = _ids(opt.param_groups[0]["params"])
    assert opt.param_groups[0]["weight_decay"] == 1e-4 and decayed == _ids(model.parameters())  # alpha too
    with pytest.raises(ConfigError, match="unknown optim.name 'lamb'; choose one of: adamw, sgd"):
        build_optimizer(model, OmegaConf.merge(cfg.optim, {"name": "lamb"}))


def _mae_lr_scale(name: str, depth: int, decay: float) -> float:
    """facebookresearch/mae util/lr_decay.py, restated: layer 0 = cls_token, pos_embed, patch_embed; block i =
    layer i + 1; anything else (fc_norm, head) = layer depth + 1; scale = decay ** (depth + 1 - layer)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        layer = 0
    elif name.startswith("blocks."):
        layer = int(name.split(".")[1]) + 1
    else:
        layer = depth + 1
    return decay ** (depth + 1 - layer)


@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_layer_decay_scales_each_layer_as_mae_does_and_the_schedule_keeps_the_scales(norm):
    cfg = compose(["model.kwargs.depth=3", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2", f"norm={norm}",
                   "optim.layer_decay=0.5", "optim.weight_decay=0.05"])
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.optim)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert set(map(id, names.values())) == set(group_of)  # every parameter is in exactly one group
    for name, p in names.items():
        g = group_of[id(p)]
        assert g["lr_scale"] == _mae_lr_scale(name, 3, 0.5), name
        no_decay = p.ndim <= 1 or name in ("cls_token", "pos_embed")  # MAE: 1-D and no_weight_decay() names
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert group_of[id(names["blocks.0.attn.qkv.weight"])]["lr_scale"] == 0.125  # 0.5 ** (3 + 1 - 1)
    sched = build_scheduler(opt, cfg.optim, total_steps=100, warmup_steps=10, verbose=False)
    for step in (5, 50, 100):  # warmup, cosine, its end (min lr): each group at the scheduled lr times its scale
        sched.step_update(step)
        lr = scheduled_lr(opt)
        assert all(math.isclose(g["lr"], lr * g["lr_scale"]) for g in opt.param_groups)
    assert math.isclose(lr, cfg.optim.lr * cfg.optim.min_lr_ratio)


def test_layer_decay_needs_a_model_that_names_its_layers():
    model = build_model(compose(TINY_LM))  # our LLaMA: no timm group_matcher()
    with pytest.raises(ConfigError, match="optim.layer_decay: .* does not say which layer"):
        build_optimizer(model, compose([*TINY_LM, "optim.layer_decay=0.65"]).optim)
