"""Inference folding (dyt/nn/fold.py): DyT's affine moved into the Linears that read it changes no output, leaves
the norms computing tanh(alpha x) only, and a site that cannot be folded is refused before anything changes."""
import copy

import pytest
import torch
import torch.nn as nn

from conftest import compose
from dyt import DynamicTanh
from dyt.families import build_model
from dyt.nn.fold import FoldError, fold_dyt

LLAMA = ["model=llama_tiny", "data=text_pydoc", "model.dim=32", "model.n_layers=2", "model.n_heads=4",
         "model.n_kv_heads=2"]
GPT2 = ["model=gpt2_tiny", "data=text_pydoc", "model.n_layer=2", "model.n_embd=32"]
VIT = ["model=vit_pico", "data=cifar10", "model.kwargs.depth=2", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2"]


def built(overrides):
    torch.manual_seed(0)
    return build_model(compose(overrides)).eval()


def randomize_affines(model):
    """Trained-looking norms: weights, biases and alphas away from their init, so a wrong fold shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DynamicTanh):
                m.alpha.mul_(1 + torch.rand(1, generator=g))
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    return model


def check_folded(model, inputs):
    randomize_affines(model)
    want = model(inputs)
    folded = fold_dyt(copy.deepcopy(model))
    dyts = [m for m in folded.modules() if isinstance(m, DynamicTanh)]
    assert dyts and all(m.weight is None and m.bias is None for m in dyts)  # tanh(alpha x) only
    torch.testing.assert_close(folded(inputs), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fold_dyt(folded)(inputs), want, atol=1e-5, rtol=1e-5)  # a second fold is a no-op
    return folded


def test_folded_llama_equals_unfolded():
    model = built([*LLAMA, "norm=dyt"])
    folded = check_folded(model, torch.randint(0, model.vocab_size, (2, 12)))
    # the head took the final norm's weight; q/k/v their norm's
    assert not torch.equal(folded.output.weight, model.output.weight)


def test_folded_llama_with_tied_embeddings_unties_the_head():
    model = built([*LLAMA, "norm=dyt", "model.tie_embeddings=true"])
    tokens = torch.randint(0, model.vocab_size, (2, 12))
    folded = check_folded(model, tokens)
    assert folded.output.weight is not folded.tok_embeddings.weight
    torch.testing.assert_close(folded.tok_embeddings.weight, model.tok_embeddings.weight)  # the embedding is kept


@pytest.mark.parametrize("bias", ["false", "true"])
def test_folded_gpt2_equals_unfolded_and_unties_the_head(bias):
    """ln_1 -> c_attn, ln_2 -> c_fc, ln_f -> the tied lm_head (which gets its own folded copy); with and without
    the Linears' own biases (the norm's bias then creates one)."""
    model = built([*GPT2, "norm=dyt", f"model.bias={bias}"])
    folded = check_folded(model, torch.randint(0, model.vocab_size, (2, 12)))
    assert folded.lm_head.weight is not folded.transformer.wte.weight
    torch.testing.assert_close(folded.transformer.wte.weight, model.transformer.wte.weight)  # the embedding is kept


def test_folded_vit_equals_unfolded():
    model = built([*VIT, "norm=dyt"])
    check_folded(model, torch.randn(2, 3, 32, 32))


def test_folded_vit_with_token_pooling_equals_unfolded():
    model = built([*VIT, "norm=dyt", "model.global_pool=token"])  # the final norm, then the class token, then the head
    assert isinstance(model.norm, DynamicTanh)
    check_folded(model, torch.randn(2, 3, 32, 32))


def test_baseline_norms_are_left_alone():
    model = built([*LLAMA, "norm=rmsnorm"])
    tokens = torch.randint(0, model.vocab_size, (1, 8))
    want = model(tokens)
    torch.testing.assert_close(fold_dyt(model)(tokens), want, rtol=0, atol=0)


def test_a_site_that_cannot_be_folded_is_refused_and_nothing_changes():
    model = built([*VIT, "norm=dyt", "model.global_pool=map"])  # attention pooling reads the final norm
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(FoldError, match=r"attn_pool\.norm: its output goes to a module other than a Linear"):
        fold_dyt(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused whole: no site folded


def test_an_unknown_architecture_is_refused():
    with pytest.raises(FoldError, match="no folding rules for a Sequential"):
        fold_dyt(nn.Sequential(DynamicTanh(8), nn.GELU(), nn.Linear(8, 8)))


def test_a_headless_vit_keeps_its_final_norm_and_is_refused():
    model = built([*VIT, "norm=dyt"])
    model.reset_classifier(0)  # a feature extractor: the final norm feeds no Linear
    with pytest.raises(FoldError, match=r"fc_norm: its consumer head is a Identity, not a Linear over its 32 channels"):
        fold_dyt(model)
