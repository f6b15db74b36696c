"""DynamicTanh and build_norm: the formula, gradients, layouts, construction paths and errors."""
import pytest
import torch
import torch.nn as nn

import dyt
from dyt.errors import ConfigError
from dyt.nn import LayerNorm2d, build_norm


def test_forward_is_the_formula():
    torch.manual_seed(0)
    m = dyt.DynamicTanh(16, alpha_init=0.7)
    with torch.no_grad():
        m.weight.normal_(), m.bias.normal_()
    x = torch.randn(3, 5, 16)
    expected = m.weight * torch.tanh(0.7 * x) + m.bias
    torch.testing.assert_close(m(x), expected)
    assert m.alpha.shape == (1,) and m.alpha.item() == pytest.approx(0.7)


def test_defaults_match_the_paper():
    m = dyt.DynamicTanh(8)
    assert m.alpha.item() == 0.5 and torch.all(m.weight == 1) and torch.all(m.bias == 0)
    x = torch.randn(4, 8)
    torch.testing.assert_close(m(x), torch.tanh(0.5 * x))


def test_channels_first_matches_channels_last():
    torch.manual_seed(0)
    cl, cf = dyt.DynamicTanh(6), dyt.DynamicTanh(6, channels_last=False)
    with torch.no_grad():
        for p in (cl.weight, cl.bias):
            p.normal_()
        cf.load_state_dict(cl.state_dict())
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(cf(x), cl(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


@pytest.mark.parametrize("impl", ["auto", "fused"])  # float64 is the reference formula whatever the impl
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_gradcheck_float64(channels_last, affine, bias, impl):
    torch.manual_seed(0)
    m = dyt.DynamicTanh(3, channels_last=channels_last, alpha_init=0.9, elementwise_affine=affine, bias=bias,
                        dtype=torch.float64, impl=impl)
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True) if not channels_last else \
        torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    assert len(names) == 1 + affine + bias  # alpha, weight, bias
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))
    assert torch.autograd.gradcheck(f, (x, *params))


def test_no_affine_and_no_bias_variants():
    x = torch.randn(2, 4)
    plain = dyt.DynamicTanh(4, elementwise_affine=False, alpha_init=2.0)
    assert plain.weight is None and plain.bias is None
    torch.testing.assert_close(plain(x), torch.tanh(2.0 * x))
    nobias = dyt.DynamicTanh(4, bias=False)
    assert nobias.bias is None and set(nobias.state_dict()) == {"alpha", "weight"}


def test_meta_device_then_to_empty_and_reset():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(4, 4), dyt.DynamicTanh(4, alpha_init=0.3))
    assert m[1].alpha.is_meta
    m.to_empty(device="cpu")
    m[1].reset_parameters()
    assert m[1].alpha.item() == pytest.approx(0.3)
    assert torch.all(m[1].weight == 1) and torch.all(m[1].bias == 0)


def test_state_dict_round_trip_and_dtype():
    a = dyt.DynamicTanh(5, alpha_init=0.2, dtype=torch.bfloat16)
    assert a.weight.dtype == torch.bfloat16
    with torch.no_grad():
        a.alpha.fill_(1.7)
    b = dyt.DynamicTanh(5, dtype=torch.bfloat16)
    b.load_state_dict(a.state_dict())
    assert b.alpha.item() == pytest.approx(1.7, rel=1e-2)
    assert set(a.state_dict()) == {"alpha", "weight", "bias"}


def test_torch_compile():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), dyt.DynamicTanh(8))
    x = torch.randn(4, 8)
    eager = m(x)
    compiled = torch.compile(m)
    torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)
    compiled(x).sum().backward()
    assert m[1].alpha.grad is not None


def test_extra_repr_is_readable():
    r = repr(dyt.DynamicTanh(768, channels_last=False, alpha_init=0.8, bias=False))
    assert "(768,)" in r and "channels_last=False" in r and "alpha_init=0.8" in r and "bias=False" in r


def test_build_norm_kinds():
    assert isinstance(build_norm("layernorm", 8), nn.LayerNorm)
    assert isinstance(build_norm("layernorm", 8, channels_last=False), LayerNorm2d)
    assert isinstance(build_norm("rmsnorm", 8), nn.RMSNorm)
    d = build_norm("dyt", 8, alpha_init=0.25, bias=False)
    assert isinstance(d, dyt.DynamicTanh) and d.alpha.item() == 0.25 and d.bias is None
    assert isinstance(build_norm("identity", 8), nn.Identity)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(build_norm("layernorm", 8, channels_last=False)(x),
                               nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), eps=1e-6).permute(0, 3, 1, 2))


def test_build_norm_unknown_kind_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown norm kind 'batchnorm'; choose one of: derf, dyisru, dyt, dyt_hardtanh, dyt_identity, "
                                         r"dyt_sigmoid, identity, layernorm, rmsnorm"):
        build_norm("batchnorm", 8)
