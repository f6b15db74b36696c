"""Hugging Face export (dyt/export/hf.py, scripts/export_hf.py): a trained tiny LLaMA-DyT / ViT-DyT / GPT-2 DyT or
Derf run becomes a folder transformers loads offline (trust_remote_code) whose logits equal ours; baselines load as
stock classes."""
import json

import pytest
import torch

from conftest import compose, script
from dyt.nn.norms import ElementwiseNorm
from dyt.errors import ConfigError
from dyt.eval.load import load_run
from dyt.export import export_model
from dyt.run import train

transformers = pytest.importorskip("transformers")

STEPS = ["trainer.max_steps=2", "optim.warmup_steps=1", "trainer.eval_every=2", "trainer.ckpt_every=2",
         "trainer.log_every=1"]
LLAMA = ["model=llama_tiny", "data=text_pydoc", "model.dim=32", "model.n_layers=2", "model.n_heads=4",
         "model.n_kv_heads=2", "data.seq_len=16", "data.max_val_tokens=256", "trainer.batch_size=4", "optim=llama",
         *STEPS]
VIT = ["model=vit_pico", "data=digits", "model.kwargs.depth=2", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2",
       "trainer.batch_size=16", *STEPS]
GPT2 = ["model=gpt2_tiny", "data=text_pydoc", "model.n_layer=2", "model.n_embd=32", "data.seq_len=16",
        "data.max_val_tokens=256", "trainer.batch_size=4", *STEPS]


def exported(tmp_path, overrides):
    """(our model from the run's checkpoint, the exported folder) of a 2-step run."""
    run_dir, out = tmp_path / "run", tmp_path / "hf"
    assert train(compose(overrides), run_dir)["status"] == "completed"
    assert script("scripts/export_hf.py").main([str(run_dir), str(out)]) == 0
    with load_run(run_dir, device="cpu", weights=("model",)) as run:
        return run.model(), out


def randomize_norms(model):
    """Each DyT's (Derf's) alpha, weight, bias (and shift) set to its own values."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ElementwiseNorm):
                for p in (m.alpha, m.weight, m.bias, getattr(m, "shift", None)):
                    if p is not None:
                        p.mul_(1 + torch.rand(p.shape, generator=g)).add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("extra", [["model.tie_embeddings=false"], ["model.tie_embeddings=true"]])
def test_exported_llama_dyt_logits_equal_ours(tmp_path, extra):
    ours, out = exported(tmp_path, [*LLAMA, "norm=dyt", *extra])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama_dyt" and config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_llama_dyt.")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(hf).__name__ == "DyTLlamaForCausalLM" and isinstance(hf, transformers.LlamaForCausalLM)
    assert not any(type(m).__name__ == "LlamaRMSNorm" for m in hf.modules())
    tokens = torch.randint(0, ours.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours(tokens), atol=1e-5, rtol=0)
        # AutoModel: the decoder without its head; its last hidden state is our final norm's output
        base = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
        hidden = {}
        ours.final_norm.register_forward_hook(lambda m, i, o: hidden.update(y=o))
        ours(tokens)
        torch.testing.assert_close(base(tokens).last_hidden_state, hidden["y"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides", [[*LLAMA, "norm=dyt"], [*VIT, "norm=dyt"], [*GPT2, "norm=dyt"],
                                       [*GPT2, "norm=derf"]], ids=["llama", "vit", "gpt2-dyt", "gpt2-derf"])
def test_every_norm_parameter_reaches_its_own_site(tmp_path, overrides):
    """Two steps barely move alpha and the affine from their init (equal at every site): set each site's own
    values, export, and a swapped or dropped norm parameter shows in the logits."""
    train(compose(overrides), tmp_path / "run")
    with load_run(tmp_path / "run", device="cpu", weights=("model",)) as run:
        ours, cfg = randomize_norms(run.model()), run.cfg
    export_model(ours, cfg, tmp_path / "hf")
    lm = "vit" not in overrides[0]
    auto = transformers.AutoModelForCausalLM if lm else transformers.AutoModelForImageClassification
    hf = auto.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    x = torch.randint(0, ours.vocab_size, (2, 16)) if lm else torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides, modeling, stock", [
    ([*LLAMA, "norm=rmsnorm"], "modeling_llama_dyt.py", "LlamaForCausalLM"),
    ([*GPT2, "norm=layernorm", "model.bias=false"], "modeling_gpt2_dyt.py", "GPT2LMHeadModel"),
    ([*GPT2, "norm=layernorm", "model.bias=true"], "modeling_gpt2_dyt.py", "GPT2LMHeadModel"),
], ids=["llama-rmsnorm", "gpt2-layernorm", "gpt2-layernorm-bias"])
def test_a_run_without_dyt_exports_as_the_stock_model(tmp_path, overrides, modeling, stock):
    ours, out = exported(tmp_path, overrides)
    assert not (out / modeling).exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()  # no remote code
    assert type(hf) is getattr(transformers, stock)
    tokens = torch.randint(0, ours.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra", [[], ["norm.alpha_init=auto"]], ids=["alpha0", "alpha0-auto"])
def test_exported_vit_dyt_logits_equal_ours(tmp_path, extra):
    ours, out = exported(tmp_path, [*VIT, "norm=dyt", *extra])
    hf = transformers.AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).eval()
    assert type(hf).__name__ == "DyTTimmWrapperForImageClassification"
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in hf.modules())
    images = torch.randn(3, 1, 8, 8)  # digits: 8x8 grey
    with torch.no_grad():
        torch.testing.assert_close(hf(images).logits, ours(images), atol=1e-5, rtol=0)
        base = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
        pooled = ours.forward_head(ours.forward_features(images), pre_logits=True)
        torch.testing.assert_close(base(images).pooler_output, pooled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra", [["norm=dyt", "model.bias=true"], ["norm=derf"],
                                   ["norm=dyt", "model.embed_scale=false"]], ids=["dyt-bias", "derf", "dyt-tied"])
def test_exported_gpt2_dyt_logits_equal_ours(tmp_path, extra):
    """DyT / Derf GPT-2 (Derf's patch: an embedding scale, per-site alpha, norm biases; with or without Linear
    biases; the scale off keeps the head tied) loads as transformers' GPT-2 with every LayerNorm replaced."""
    ours, out = exported(tmp_path, [*GPT2, *extra])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2_dyt"
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_gpt2_dyt.")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(hf).__name__ == "DyTGPT2LMHeadModel" and isinstance(hf, transformers.GPT2LMHeadModel)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in hf.modules())
    assert (hf.lm_head.weight is hf.transformer.wte.weight) == (ours.embed_scale is None)
    tokens = torch.randint(0, ours.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours(tokens), atol=1e-5, rtol=0)
        base = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
        hidden = {}
        ours.transformer.ln_f.register_forward_hook(lambda m, i, o: hidden.update(y=o))
        ours(tokens)
        torch.testing.assert_close(base(tokens).last_hidden_state, hidden["y"], atol=1e-5, rtol=0)


def test_a_gpt2_with_another_norm_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    train(compose([*GPT2, "norm=rmsnorm"]), run_dir)
    with load_run(run_dir, device="cpu", weights=("model",)) as run:
        model, cfg = run.model(), run.cfg
    with pytest.raises(ConfigError, match="norm=layernorm or norm=dyt or norm=derf; this run has norm=rmsnorm"):
        export_model(model, cfg, tmp_path / "hf")


def test_a_family_without_a_counterpart_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(compose(["model=convnext_atto", "data=digits", "data.image_size=32", "trainer.batch_size=4", *STEPS]), run_dir)
    assert script("scripts/export_hf.py").main([str(run_dir), str(tmp_path / "hf")]) == 2
    assert "a convnext run, which has no Hugging Face counterpart" in capsys.readouterr().err
