"""Config composition: every model x norm builds, the Table 1 recipes, and typos that must fail."""
import pytest
import torch
from omegaconf import OmegaConf
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

import dyt
from conftest import ROOT, compose

VISION_MODELS = sorted(p.stem for p in (ROOT / "configs/model").glob("*.yaml") if p.stem.startswith(("vit", "convnext")))


@pytest.mark.parametrize("model", VISION_MODELS)
def test_every_vision_model_builds_on_meta(model):
    for norm in ("layernorm", "rmsnorm", "dyt"):
        cfg = compose([f"model={model}", f"norm={norm}", "data=imagenet"])
        with torch.device("meta"):
            m = dyt.build_model(cfg)
        n_dyt = sum(isinstance(x, dyt.DynamicTanh) for x in m.modules())
        n_ln = sum(isinstance(x, torch.nn.LayerNorm) for x in m.modules())
        assert (n_dyt > 0) == (norm == "dyt") and (n_ln > 0) == (norm == "layernorm")
        assert next(m.parameters()).is_meta


def test_paper_sizes_on_meta():
    sizes = {"vit_b": 86.6e6, "vit_l": 304.3e6, "convnext_b": 88.6e6, "convnext_l": 197.8e6}
    for name, params in sizes.items():
        with torch.device("meta"):
            m = dyt.build_model(compose([f"model={name}", "data=imagenet"]))
        assert sum(p.numel() for p in m.parameters()) == pytest.approx(params, rel=0.01)


@pytest.mark.parametrize("cell,model,drop_path,beta2", [
    ("vit_b", "vit_base_patch16_224", 0.1, 0.999), ("vit_l", "vit_large_patch16_224", 0.4, 0.95),
    ("convnext_b", "convnext_base", 0.5, 0.999), ("convnext_l", "convnext_large", 0.5, 0.999)])
def test_table1_recipes(cell, model, drop_path, beta2):
    ln, dy = (compose([f"experiment=table1_{cell}", f"norm={n}"]) for n in ("layernorm", "dyt"))
    for cfg in (ln, dy):
        assert cfg.model.arch == model and cfg.model.drop_path == drop_path and cfg.data.name == "imagenet"
        assert cfg.trainer.epochs == 300 and cfg.trainer.max_steps is None and cfg.trainer.batch_size == 4096
        assert cfg.optim.lr == 4e-3 and cfg.optim.weight_decay == 0.05 and cfg.optim.warmup_epochs == 20
        assert list(cfg.optim.betas) == [0.9, beta2]
        assert cfg.trainer.ema_decay == 0.9999 and cfg.trainer.precision == "fp32"
        a = cfg.data.augment
        assert (a.mixup, a.cutmix, a.label_smoothing, a.randaugment, a.reprob) == (0.8, 1.0, 0.1, "rand-m9-mstd0.5-inc1", 0.25)
        assert cfg.table == "table1"
    if model.startswith("vit"):
        assert ln.model.global_pool == dy.model.global_pool == "avg"
    # The two runs of a cell differ only by the norm.
    ln, dy = (OmegaConf.to_container(c) for c in (ln, dy))
    assert ln.pop("norm") != dy.pop("norm") and ln == dy


def test_default_job():
    cfg = compose()
    assert (cfg.model.name, cfg.norm.name, cfg.data.name, cfg.norm.alpha_init) == ("vit_pico", "dyt", "digits", 0.5)


def test_misspelt_override_fails():
    with pytest.raises(ConfigCompositionException, match="max_stpes"):
        compose(["trainer.max_stpes=5"])


def test_wrong_type_fails():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["trainer.max_steps=many"])
    assert isinstance(e.value.__cause__, (ValidationError, ConfigKeyError)) or "max_steps" in str(e.value)


@pytest.mark.parametrize("group,value", [("model", "vit_huge"), ("norm", "groupnorm"), ("data", "mnist")])
def test_unknown_choice_names_the_options(group, value):
    with pytest.raises(ConfigCompositionException, match=rf"(?s)Could not find '{group}/{value}'.*Available options"):
        compose([f"{group}={value}"])


def test_list_valued_timm_kwargs_reach_timm_as_plain_lists():
    """model.kwargs from YAML are OmegaConf nodes; timm needs plain lists (ConvNeXt splits by its dims)."""
    cfg = compose(["experiment=mini_convnext", "norm=dyt"])
    assert list(cfg.model.kwargs.dims) == [24, 48, 96, 192]
    model = dyt.build_model(cfg)
    assert [s.blocks[0].conv_dw.in_channels for s in model.stages] == [24, 48, 96, 192]
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
