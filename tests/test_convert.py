"""convert_norms on real timm models, torch and Hugging Face-style RMSNorms, and what it must leave alone."""
import pytest
import timm
import torch
import torch.nn as nn

import dyt
from dyt.nn import is_norm


def dyts(model):
    return [m for m in model.modules() if isinstance(m, dyt.DynamicTanh)]


@pytest.mark.parametrize("arch,kwargs", [
    ("vit_tiny_patch16_224", {"global_pool": "avg", "img_size": 32, "patch_size": 8}),
    ("convnext_atto", {}),
    ("convnext_tiny", {}),
    ("swin_tiny_patch4_window7_224", {}),
    ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}),
])
def test_timm_models_have_no_norm_left_and_same_shapes(arch, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=7, **kwargs).eval()
    size = 224 if arch.startswith("swin") else 32
    x = torch.randn(2, 3, size, size)
    n_norms = sum(is_norm(m) for m in model.modules())
    shape = model(x).shape
    assert dyt.convert_norms(model) is model
    assert not any(isinstance(m, nn.LayerNorm) or is_norm(m) for m in model.modules())
    assert len(dyts(model)) == n_norms
    assert model(x).shape == shape


def test_vit_structure_matches_the_paper_code():
    """global_pool='avg': the final norm is fc_norm (DyT) and `norm` is Identity; all DyT channels-last with bias."""
    model = dyt.convert_norms(timm.create_model("vit_base_patch16_224", pretrained=False, global_pool="avg"))
    assert isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, dyt.DynamicTanh)
    layers = dyts(model)
    assert len(layers) == 2 * 12 + 1
    assert all(m.channels_last and m.bias is not None and m.normalized_shape == (768,) and m.alpha_init == 0.5
               for m in layers)


def test_convnext_channels_first_sites():
    """ConvNeXt-T: stem + 3 downsample LayerNorm2d -> channels-first; block norms + head norm per timm's layout."""
    ref = timm.create_model("convnext_tiny", pretrained=False)
    first = {n for n, m in ref.named_modules() if isinstance(m, timm.layers.LayerNorm2d)}
    model = dyt.convert_norms(ref)
    got_first = {n for n, m in model.named_modules() if isinstance(m, dyt.DynamicTanh) and not m.channels_last}
    assert got_first == first and "stem.1" in first and "stages.1.downsample.0" in first
    assert len(dyts(model)) == 1 + 3 + 18 + 1  # stem, downsamples, blocks (3+3+9+3), head


def test_keeps_device_dtype_and_alpha():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).to(torch.bfloat16)
    dyt.convert_norms(model, alpha_init=0.8)
    assert model[1].weight.dtype == torch.bfloat16 and model[1].alpha.item() == pytest.approx(0.8, rel=1e-2)
    with torch.device("meta"):
        meta = dyt.convert_norms(nn.Sequential(nn.LayerNorm(4)))
    assert meta[0].alpha.is_meta


def test_leaves_batchnorm_and_groupnorm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.LayerNorm(4))
    dyt.convert_norms(model)
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[2], nn.GroupNorm)
    assert isinstance(model[3], dyt.DynamicTanh)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in dyt.convert_norms(timm.create_model("resnet18")).modules()) == 20


class LlamaRMSNorm(nn.Module):
    """The shape of Hugging Face's per-architecture RMSNorm classes."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def test_rmsnorms_become_dyt_without_bias():
    model = nn.ModuleDict({"a": nn.RMSNorm(8), "b": LlamaRMSNorm(8), "c": nn.LayerNorm(8, bias=False)})
    dyt.convert_norms(model, alpha_init=lambda path: {"a": 0.8, "b": 0.2}.get(path, 0.5))
    assert all(isinstance(m, dyt.DynamicTanh) and m.bias is None for m in model.values())
    assert [m.alpha.item() for m in model.values()] == pytest.approx([0.8, 0.2, 0.5])


def test_other_kinds_and_a_bare_norm():
    model = dyt.convert_norms(timm.create_model("convnext_atto"), kind="rmsnorm")
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    assert isinstance(dyt.convert_norms(nn.LayerNorm(3)), dyt.DynamicTanh)
