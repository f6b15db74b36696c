"""The GPT-2 family (nanoGPT's model): parameter counts and logits against transformers' GPT2LMHeadModel, the norm
sites that norm= swaps (Derf's patch of nanoGPT), training through the shared language-model task, and
experiment=derf_gpt2."""
import pytest
import torch
import torch.nn as nn

import dyt
from conftest import compose
from dyt.logging import read_jsonl
from dyt.nn import Derf, DynamicTanh
from dyt.run import train
from dyt.validate import validate

transformers = pytest.importorskip("transformers")

# GPT-2's own layout (biases, vocab 50257): transformers' GPT2Config with the same shape is the same model
HF_LAYOUT = ["data=text_openwebtext", "norm=layernorm", "model.bias=true", "data.vocab_size=50257"]
SIZES = {"gpt2_124m": (12, 12, 768), "gpt2_350m": (24, 16, 1024), "gpt2_774m": (36, 20, 1280)}
TINY = ["model=gpt2_tiny", "data=text_pydoc", "model.n_layer=2", "model.n_embd=32", "model.n_head=2",
        "model.block_size=64", "data.seq_len=32"]


def meta_model(overrides):
    with torch.device("meta"):
        return dyt.build_model(compose(overrides))


def hf_config(n_layer, n_head, n_embd, **kw):
    return transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, **kw)


@pytest.mark.parametrize("model", list(SIZES))
def test_parameter_count_equals_transformers_gpt2(model):
    ours = meta_model([f"model={model}", *HF_LAYOUT])
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(hf_config(*SIZES[model]))
    assert ours.num_params(non_embedding=False) == sum(p.numel() for p in hf.parameters())


def test_gpt2_124m_has_nanogpts_parameter_count():
    """nanoGPT's training config (bias=False, vocab 50304) prints "number of parameters: 123.59M" (non-embedding:
    all but the positions; the token embedding is the tied LM head); with GPT-2's layout 124.44M in all."""
    ours = meta_model(["model=gpt2_124m", "data=text_openwebtext", "norm=layernorm"])
    assert ours.vocab_size == 50304
    assert round(ours.num_params() / 1e6, 2) == 123.59
    assert ours.num_params(non_embedding=False) - ours.num_params() == 1024 * 768
    assert round(meta_model(["model=gpt2_124m", *HF_LAYOUT]).num_params(non_embedding=False) / 1e6, 2) == 124.44


def to_transformers(model) -> dict:
    """Our state dict in transformers' names: the same names (nanoGPT's), its Conv1D weights (in, out) transposed."""
    sd = model.state_dict()
    return {k: v.t() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v for k, v in sd.items()}


def test_logits_equal_transformers_on_the_same_weights():
    torch.manual_seed(0)
    cfg = compose([*TINY, "norm=layernorm", "model.bias=true"])
    ours = dyt.build_model(cfg).eval()
    for p in ours.parameters():  # every weight non-trivial (zero biases and unit norms would hide a mapping error)
        nn.init.normal_(p, std=0.1)
    hf = transformers.GPT2LMHeadModel(hf_config(2, 2, 32, n_positions=64, vocab_size=ours.vocab_size,
                                                activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                                                attn_pdrop=0.0)).eval()
    missing, unexpected = hf.load_state_dict(to_transformers(ours), strict=False)
    assert not unexpected and all(not k.endswith(("weight", "bias")) or "lm_head" in k for k in missing), missing
    tokens = torch.randint(0, ours.vocab_size, (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)


def sites(model, kind):
    return {n for n, m in model.named_modules() if isinstance(m, kind)}


@pytest.mark.parametrize("norm, kind", [("dyt", DynamicTanh), ("derf", Derf)])
def test_dyt_and_derf_take_exactly_the_layernorm_sites(norm, kind):
    ln = dyt.build_model(compose([*TINY, "norm=layernorm"]))
    el = dyt.build_model(compose([*TINY, f"norm={norm}", "model.alpha_attn=0.7", "model.alpha_ffn=0.3",
                                  "model.alpha_final=0.9"]))
    assert sites(el, kind) == sites(ln, nn.LayerNorm) == {"transformer.h.0.ln_1", "transformer.h.0.ln_2",
                                                        "transformer.h.1.ln_1", "transformer.h.1.ln_2",
                                                        "transformer.ln_f"}
    other = lambda m: {n: type(x) for n, x in m.named_modules() if not isinstance(x, (nn.LayerNorm, kind))}  # noqa: E731
    assert other(el) == other(ln)
    # Derf's patch: alpha0 per site kind, a bias at every site (nanoGPT's bias=False leaves LayerNorm without one),
    # and (tok + pos) x a learnable scalar initialised to sqrt(n_embd)
    assert [el.get_submodule(n).alpha.item() for n in ("transformer.h.1.ln_1", "transformer.h.1.ln_2",
                                                       "transformer.ln_f")] == pytest.approx([0.7, 0.3, 0.9])
    assert el.transformer.ln_f.bias is not None and ln.transformer.ln_f.bias is None
    assert ln.embed_scale is None and el.embed_scale.item() == pytest.approx(32 ** 0.5)
    assert el.lm_head.weight is el.transformer.wte.weight


def test_meta_build_then_init_equals_a_direct_build():
    """The FSDP path: built on meta, materialised, initialised: nanoGPT's init, the LM head tied again."""
    cfg = compose([*TINY, "norm=derf"])
    with torch.device("meta"):
        m = dyt.build_model(cfg)
    m.to_empty(device="cpu")
    m.init_weights()
    assert m.lm_head.weight is m.transformer.wte.weight
    std = lambda name: float(m.get_parameter(name).std())  # noqa: E731
    assert std("transformer.h.0.attn.c_proj.weight") < 0.6 * std("transformer.h.0.attn.c_attn.weight")  # 1/sqrt(4)
    assert m.embed_scale.item() == pytest.approx(32 ** 0.5) and m.transformer.ln_f.alpha.item() == 0.5


def test_init_stds():
    """model.init_std sets the Linears (c_proj / sqrt(2 n_layer)) and, unless model.embed_init_std, the embeddings."""
    torch.manual_seed(0)
    m = dyt.build_model(compose([*TINY, "model.n_embd=128", "model.init_std=0.1", "model.embed_init_std=0.01"]))
    std = lambda name: float(m.get_parameter(name).std())  # noqa: E731
    assert std("transformer.h.0.mlp.c_fc.weight") == pytest.approx(0.1, rel=0.05)
    assert std("transformer.h.0.mlp.c_proj.weight") == pytest.approx(0.1 / 2, rel=0.05)  # 2 blocks: / sqrt(4)
    assert std("transformer.wte.weight") == pytest.approx(0.01, rel=0.05) == std("transformer.wpe.weight")
    m = dyt.build_model(compose([*TINY, "model.n_embd=128", "model.init_std=0.1", "model.embed_init_std=null"]))
    assert std("transformer.wte.weight") == pytest.approx(0.1, rel=0.05)


def test_trains_on_the_embedded_text(tmp_path):
    """Through the shared trainer and language-model task: the train loss falls well below its start."""
    s = train(compose([*TINY, "norm=layernorm", "trainer.max_steps=40", "trainer.batch_size=8",
                       "trainer.eval_every=40", "trainer.ckpt_every=40", "trainer.log_every=1", "optim=adamw",
                       "optim.lr=3e-3", "optim.warmup_steps=5", "data.max_val_tokens=2048"]), tmp_path / "r")
    losses = [e["train/loss"] for e in read_jsonl(tmp_path / "r/metrics.jsonl") if e["split"] == "train"]
    assert s["status"] == "completed" and losses[-1] < losses[0] - 1.5, losses


def test_a_sequence_longer_than_the_positions_is_refused():
    with pytest.raises(dyt.errors.ConfigError, match="data.seq_len=128 is longer than model.block_size=64"):
        validate(compose([*TINY, "data.seq_len=128"]))


@pytest.mark.parametrize("norm", ["layernorm", "dyt", "derf"])
def test_derf_gpt2_composes_and_validates(norm):
    """nanoGPT's config/train_gpt2.py through Derf's patches: the recipe, the alpha0 of train_derf.patch."""
    cfg = compose(["experiment=derf_gpt2", f"norm={norm}", "data.root=/data/owt_gpt2"])
    validate(cfg)
    assert (cfg.model.name, cfg.data.seq_len, cfg.trainer.batch_size, cfg.trainer.max_steps) == \
        ("gpt2_124m", 1024, 480, 600000)
    assert (cfg.optim.lr, list(cfg.optim.betas), cfg.optim.weight_decay, cfg.optim.decay_1d, cfg.optim.warmup_steps,
            cfg.optim.min_lr_ratio) == (6e-4, [0.9, 0.95], 0.1, False, 2000, 0.1)
    assert (cfg.model.alpha_attn, cfg.model.alpha_ffn, cfg.model.alpha_final) == (1.0, 1.0, 1.0)
    model = meta_model(["experiment=derf_gpt2", f"norm={norm}"])
    assert model.vocab_size == 50304 and (model.embed_scale is not None) == (norm != "layernorm")
    assert (model.transformer.ln_f.bias is not None) == (norm != "layernorm")
