"""The LLaMA family: architecture, the paper's DyT options (Table 11/12 alphas, embedding scale, no bias),
meta-device construction of the paper's sizes, and converting a Hugging Face Llama's RMSNorms."""
import math

import pytest
import torch
import torch.nn as nn

from conftest import compose
from dyt import DynamicTanh, convert_norms
from dyt.errors import ConfigError
from dyt.families import build_model
from dyt.families.llama.model import table12_alpha

TABLE11 = {"7b": (4096, 32, 0.8, 0.2), "13b": (5120, 40, 0.6, 0.15), "34b": (8192, 48, 0.2, 0.05),
           "70b": (8192, 80, 0.2, 0.05)}
PARAMS_B = {"7b": 6.74, "13b": 13.0, "34b": 33.7, "70b": 69.0}  # LLaMA 2 sizes
TINY = ["model=llama_tiny", "data=text_pydoc", "model.dim=32", "model.n_layers=2", "model.n_heads=4",
        "model.n_kv_heads=2"]


def tiny(*extra, norm="dyt"):
    torch.manual_seed(0)
    return build_model(compose([*TINY, f"norm={norm}", *extra]))


def sites(model):
    return {name: m for name, m in model.named_modules() if name.endswith(("attn_norm", "ffn_norm", "final_norm"))}


@pytest.mark.parametrize("size", list(TABLE11))
def test_paper_sizes_on_meta_match_table11(size):
    width, depth, a_attn, a_other = TABLE11[size]
    cfg = compose([f"experiment=table4_{size}", "norm=dyt"])
    with torch.device("meta"):
        model = build_model(cfg)
    assert cfg.model.dim == width and len(model.layers) == depth and model.vocab_size == 32000
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(PARAMS_B[size], rel=0.01)
    norms = sites(model)
    assert len(norms) == 2 * depth + 1 and all(isinstance(m, DynamicTanh) and m.bias is None for m in norms.values())
    for name, m in norms.items():
        want = a_attn if name.endswith("attn_norm") else a_other
        assert m.alpha_init == want, name
    assert model.embed_scale is not None and model.embed_scale.requires_grad
    # the baseline of the same cell: RMSNorm everywhere, no embedding scale; only norm= differs
    with torch.device("meta"):
        base = build_model(compose([f"experiment=table4_{size}", "norm=rmsnorm"]))
    assert all(isinstance(m, nn.RMSNorm) for m in sites(base).values()) and base.embed_scale is None


def test_table12_rule_by_width():
    assert table12_alpha(1024) == (1.0, 1.0) and table12_alpha(2048) == (1.0, 0.5)
    assert table12_alpha(4096) == (0.8, 0.2) and table12_alpha(8192) == (0.2, 0.05)
    assert table12_alpha(128) == (1.0, 1.0) and table12_alpha(16384) == (0.2, 0.05)  # clamped outside
    attn, other = table12_alpha(5120)  # between rows: log-width interpolation ~ Table 11's 13B (0.6 / 0.15)
    assert attn == pytest.approx(0.6, abs=0.011) and other == pytest.approx(0.15, abs=0.011)
    m = tiny()
    assert {n: s.alpha_init for n, s in sites(m).items() if n.startswith("layers.0")} == \
        {"layers.0.attn_norm": 1.0, "layers.0.ffn_norm": 1.0}


def test_alpha_and_embed_scale_overrides():
    m = tiny("model.alpha_attn=0.3", "model.alpha_ffn=0.07", "model.alpha_final=0.02")
    s = sites(m)
    assert s["layers.1.attn_norm"].alpha.item() == pytest.approx(0.3)
    assert s["layers.1.ffn_norm"].alpha.item() == pytest.approx(0.07)
    assert s["final_norm"].alpha.item() == pytest.approx(0.02)
    assert m.embed_scale.item() == pytest.approx(math.sqrt(32))  # on by default with DyT (the paper's runs)
    assert tiny("model.embed_scale=false").embed_scale is None
    assert tiny("model.embed_scale=true", norm="rmsnorm").embed_scale is not None
    with pytest.raises(ConfigError, match="model.alpha_attn"):
        tiny("norm.alpha_init=0.8")  # the vision knob would be a silent no-op here


@pytest.mark.parametrize("norm,cls", [("rmsnorm", nn.RMSNorm), ("layernorm", nn.LayerNorm), ("dyt", DynamicTanh)])
def test_norm_sites_and_causality(norm, cls):
    m = tiny(norm=norm).eval()
    assert all(isinstance(s, cls) for s in sites(m).values()) and len(sites(m)) == 5
    assert m.layers[0].attn.wk.out_features == 2 * 8  # grouped-query: 2 KV heads of 8
    x = torch.randint(0, 257, (2, 12))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 257
    with torch.no_grad():
        a, b = m(x), m(y)
    assert a.shape == (2, 12, 320)  # vocab 258 (bytes, EOS, BOS) padded to a multiple of 64
    torch.testing.assert_close(a[:, :-1], b[:, :-1])  # a later token never changes earlier logits
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_meta_construction_then_init_weights():
    cfg = compose([*TINY, "norm=dyt", "model.tie_embeddings=true"])
    with torch.device("meta"):
        m = build_model(cfg)
    m.to_empty(device="cpu")
    m.init_weights()
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert m.output.weight is m.tok_embeddings.weight
    assert m.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert m.embed_scale.item() == pytest.approx(math.sqrt(32)) and m.final_norm.alpha.item() == 1.0
    ref = build_model(cfg)
    torch.testing.assert_close(m.inv_freq, ref.inv_freq)
    assert m(torch.randint(0, 257, (1, 8))).isfinite().all()


def test_embed_scale_is_learned():
    m = tiny()
    loss = m(torch.randint(0, 257, (2, 16))).logsumexp(-1).mean()
    loss.backward()
    assert m.embed_scale.grad is not None and m.embed_scale.grad.abs().item() > 0


def test_convert_hf_llama_rmsnorms_to_dyt():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    n_rms = sum(type(m).__name__ == "LlamaRMSNorm" for m in hf.modules())
    # the paper's per-site alpha0 (7B values) as a function of the module path
    alpha = lambda path: 0.8 if path.endswith("input_layernorm") else 0.2  # noqa: E731
    convert_norms(hf, "dyt", alpha_init=alpha)
    dyts = {n: m for n, m in hf.named_modules() if isinstance(m, DynamicTanh)}
    assert n_rms == 5 and len(dyts) == 5 and not any(type(m).__name__ == "LlamaRMSNorm" for m in hf.modules())
    assert all(m.bias is None for m in dyts.values())  # weight * tanh(alpha x): no bias, as the paper's LLaMA
    assert dyts["model.layers.0.input_layernorm"].alpha.item() == pytest.approx(0.8)
    assert dyts["model.layers.1.post_attention_layernorm"].alpha.item() == pytest.approx(0.2)
    assert dyts["model.norm"].alpha.item() == pytest.approx(0.2)
    out = hf(torch.randint(0, 100, (1, 10)), labels=torch.randint(0, 100, (1, 10)))
    out.loss.backward()
    assert torch.isfinite(out.loss) and dyts["model.norm"].alpha.grad is not None
