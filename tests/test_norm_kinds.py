"""Every element-wise norm kind (the ablations' squashing functions, Derf, DyISRU), fixed alpha, and DyT over
BatchNorm: the same formula / gradient / layout / construction checks as DyT, and conversion of real models."""
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import dyt
from dyt.errors import ConfigError
from dyt.nn import ELEMENTWISE_KINDS, NORM_KINDS, ElementwiseNorm, build_norm

KINDS = sorted(ELEMENTWISE_KINDS)


def formula(kind: str, x, alpha, weight=None, bias=None, shift=0.0):
    """Each kind's definition, written from its paper, independently of dyt.nn.norms (channels-last)."""
    a = alpha * x
    y = {"dyt": lambda: torch.tanh(a),
         "dyt_hardtanh": lambda: a.clamp(-1, 1),
         "dyt_sigmoid": lambda: 1 / (1 + torch.exp(-a)),
         "dyt_identity": lambda: a,
         "derf": lambda: torch.erf(a + shift),
         # DyISRU: sqrt(C) x / sqrt(beta + x^2) with beta = C / alpha^2
         "dyisru": lambda: math.sqrt(x.shape[-1]) * x / torch.sqrt(x.shape[-1] / alpha**2 + x * x)}[kind]()
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def randomised(m: ElementwiseNorm) -> ElementwiseNorm:
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name in ("weight", "alpha") else 0.0))
    return m


def test_every_elementwise_kind_is_registered():
    assert ELEMENTWISE_KINDS < set(NORM_KINDS)
    assert set(KINDS) == {"dyt", "dyt_hardtanh", "dyt_sigmoid", "dyt_identity", "derf", "dyisru"}


@pytest.mark.parametrize("kind", KINDS)
def test_forward_is_the_formula(kind):
    torch.manual_seed(0)
    m = randomised(build_norm(kind, 16, alpha_init=0.7))
    assert isinstance(m, ElementwiseNorm) and m.alpha.shape == (1,)
    x = torch.randn(3, 5, 16) * 3
    shift = m.shift if kind == "derf" else 0.0
    torch.testing.assert_close(m(x), formula(kind, x, m.alpha, m.weight, m.bias, shift))


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_alpha_half_unit_affine(kind):
    m = build_norm(kind, 8)
    assert m.alpha.item() == 0.5 and torch.all(m.weight == 1) and torch.all(m.bias == 0)
    x = torch.randn(4, 8)
    torch.testing.assert_close(m(x), formula(kind, x, 0.5))
    if kind == "derf":
        assert m.shift.item() == 0.0 and m.shift.requires_grad


@pytest.mark.parametrize("kind", KINDS)
def test_channels_first_matches_channels_last(kind):
    torch.manual_seed(0)
    cl = randomised(build_norm(kind, 6))
    cf = build_norm(kind, 6, channels_last=False)
    cf.load_state_dict(cl.state_dict())
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(cf(x), cl(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("affine,bias,learn_alpha", [(True, True, True), (True, False, True), (False, False, True),
                                                     (True, True, False)])
def test_gradcheck_float64(kind, channels_last, affine, bias, learn_alpha):
    torch.manual_seed(0)
    m = build_norm(kind, 3, channels_last=channels_last, alpha_init=0.9, learn_alpha=learn_alpha,
                   elementwise_affine=affine, bias=bias, dtype=torch.float64)
    shape = (2, 3, 4, 3) if not channels_last else (2, 4, 3)
    x = torch.randn(*shape, dtype=torch.float64)
    if kind == "dyt_hardtanh":  # keep inputs off the kinks at +-1/alpha, where the derivative does not exist
        x = torch.where((x.abs() * 0.9 - 1).abs() < 0.05, x * 0.5, x)
    x.requires_grad_()
    names = [n for n, _ in m.named_parameters()]
    assert len(names) == learn_alpha + affine + bias + (kind == "derf")  # alpha, weight, bias, shift
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))
    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_alpha_is_a_buffer_that_never_trains(kind):
    m = build_norm(kind, 4, alpha_init=1.0, learn_alpha=False)
    assert "alpha" not in dict(m.named_parameters()) and "alpha" in m.state_dict()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    for _ in range(3):
        m(torch.randn(8, 4)).pow(2).sum().backward()
        opt.step()
    assert m.alpha.item() == 1.0 and not m.alpha.requires_grad
    assert "learn_alpha=False" in repr(m)
    learned = build_norm(kind, 4, alpha_init=1.0)
    opt = torch.optim.AdamW(learned.parameters(), lr=0.1)
    learned(torch.randn(8, 4)).pow(2).sum().backward()
    opt.step()
    assert learned.alpha.item() != 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_meta_device_then_to_empty_and_reset(kind):
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(4, 4), build_norm(kind, 4, alpha_init=0.3))
    assert m[1].alpha.is_meta
    m.to_empty(device="cpu")
    m[1].reset_parameters()
    ref = build_norm(kind, 4, alpha_init=0.3)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m[1].state_dict()[k], v)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_bf16_and_compile(kind):
    a = randomised(build_norm(kind, 5, dtype=torch.bfloat16))
    b = build_norm(kind, 5, dtype=torch.bfloat16)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 5, dtype=torch.bfloat16)
    torch.testing.assert_close(a(x), b(x))
    m = nn.Sequential(nn.Linear(8, 8), build_norm(kind, 8))
    x = torch.randn(4, 8)
    torch.testing.assert_close(torch.compile(m)(x), m(x), rtol=1e-5, atol=1e-5)


def test_sigmoid_is_the_plain_logistic_and_hardtanh_clips():
    x = torch.tensor([-100.0, 0.0, 100.0])
    torch.testing.assert_close(build_norm("dyt_sigmoid", 3, alpha_init=1.0)(x), torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(build_norm("dyt_hardtanh", 3, alpha_init=1.0)(x), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(build_norm("dyt_identity", 3, alpha_init=2.0)(x), 2 * x)


def test_dyisru_is_rmsnorm_for_a_one_hot_input_and_linear_near_zero():
    """The property that makes it RMSNorm's element-wise counterpart: a lone large channel maps to sqrt(C)."""
    c = 64
    m = build_norm("dyisru", c, alpha_init=0.5)
    x = torch.zeros(c)
    x[3] = 1e4
    rms = F.rms_norm(x, (c,))
    assert m(x)[3].item() == pytest.approx(rms[3].item(), rel=1e-4) and rms[3].item() == pytest.approx(math.sqrt(c))
    small = torch.full((c,), 1e-3)
    torch.testing.assert_close(m(small), 0.5 * small, rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch,kwargs,replace", [
    ("vit_tiny_patch16_224", {"global_pool": "avg", "img_size": 32, "patch_size": 8}, ("layernorm",)),
    ("convnext_atto", {}, ("layernorm",)),
    ("resnet18", {}, ("batchnorm",)),
])
def test_converts_timm_models(kind, arch, kwargs, replace):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=5, **kwargs).eval()
    n_norms = sum(dyt.nn.convert.norm_family(m) in replace for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    dyt.convert_norms(model, kind=kind, alpha_init=0.4, replace=replace)
    layers = [m for m in model.modules() if isinstance(m, ElementwiseNorm)]
    assert n_norms > 0 and len(layers) == n_norms
    assert not any(dyt.nn.convert.norm_family(m) in replace for m in model.modules())
    assert all(type(m) is type(build_norm(kind, 2)) and m.alpha.item() == pytest.approx(0.4) for m in layers)
    if replace == ("batchnorm",) or arch.startswith("convnext"):
        assert any(not m.channels_last for m in layers)  # NCHW sites stay channels-first
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(m.alpha.grad is not None for m in layers)


@pytest.mark.parametrize("kind", KINDS)
def test_converts_a_hugging_face_llama(kind):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    dyt.convert_norms(hf, kind, alpha_init=0.8)
    layers = [m for m in hf.modules() if isinstance(m, ElementwiseNorm)]
    assert len(layers) == 3 and all(m.bias is None for m in layers)  # RMSNorm has no bias: neither has its replacement
    out = hf(torch.randint(0, 50, (1, 6)), labels=torch.randint(0, 50, (1, 6)))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(m.alpha.grad is not None for m in layers)


def test_batchnorm_conversion_keeps_affine_device_dtype_and_batchnormact_activation():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.LayerNorm(4)).to(torch.bfloat16)
    dyt.convert_norms(model, replace=("batchnorm",))
    assert isinstance(model[1], dyt.DynamicTanh) and model[1].weight is None and not model[1].channels_last
    assert model[1].alpha.dtype == torch.bfloat16 and isinstance(model[2], nn.LayerNorm)  # only what was asked
    bn_act = timm.layers.BatchNormAct2d(4, act_layer=nn.ReLU)
    converted = dyt.convert_norms(nn.Sequential(bn_act), replace=("batchnorm",))[0]
    assert isinstance(converted, nn.Sequential) and isinstance(converted[-1], nn.ReLU)
    assert (converted(torch.randn(2, 4, 3, 3)) >= 0).all()
    with pytest.raises(ValueError, match="choose from: layernorm, rmsnorm, batchnorm"):
        dyt.convert_norms(model, replace=("groupnorm",))


@pytest.mark.parametrize("overrides,kind,count", [
    (["model=resnet50", "norm=dyt"], dyt.DynamicTanh, 53),
    (["model=resnet50", "norm=batchnorm"], nn.BatchNorm2d, 53),
    (["model=vgg19", "norm=dyt"], dyt.DynamicTanh, 16),
])
def test_cnn_family_configs(compose_cfg, overrides, kind, count):
    cfg = compose_cfg(overrides + ["data=imagenet"])
    with torch.device("meta"):
        model = dyt.build_model(cfg)
    assert sum(isinstance(m, kind) for m in model.modules()) == count
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) or kind is nn.BatchNorm2d


def test_table9_config_fixes_alpha_in_every_family(compose_cfg):
    for overrides in (["experiment=table9_vit_b", "norm=dyt_sigmoid"],
                      ["experiment=lm_pydoc", "norm=dyt_hardtanh", "norm.learn_alpha=false"],
                      ["experiment=dit_pixel", "norm=derf", "norm.learn_alpha=false"]):
        cfg = compose_cfg(overrides)
        with torch.device("meta"):
            layers = [m for m in dyt.build_model(cfg).modules() if isinstance(m, ElementwiseNorm)]
        assert layers and all(not m.learn_alpha and type(m) is type(build_norm(cfg.norm.name, 2)) for m in layers)


def test_unknown_norm_is_one_clear_error(compose_cfg):
    from dyt.validate import validate
    with pytest.raises(ConfigError, match="norm=batchnorm: unknown norm for vit_pico; choose one of: derf, dyisru, dyt"):
        validate(compose_cfg(["norm=batchnorm"]))
    validate(compose_cfg(["model=resnet50", "norm=batchnorm", "data=fashion_mnist"]))  # the CNNs' own norm
