"""A run directory -> a Hugging Face `transformers` folder: model.safetensors + config.json (+ remote code for DyT).

Families with a transformers counterpart:

* ``llama``: our LLaMA as transformers' ``LlamaForCausalLM``. RMSNorm runs export as plain Llama (no remote
  code); DyT runs as ``DyTLlamaForCausalLM`` (templates/modeling_llama_dyt.py: Llama's classes with each RMSNorm
  replaced by DyT). Our RoPE rotates interleaved pairs (x[2i], x[2i+1]) where transformers rotates halves
  (x[i], x[i + d/2]): the q/k projection rows are permuted to match (Meta's own LLaMA -> HF conversion). The
  paper's learnable embedding scale multiplies every embedding row, so it is folded into ``embed_tokens``
  (a tied head then gets its own copy of the unscaled matrix).
* ``vit``: our timm VisionTransformer inside transformers' timm wrapper (``TimmWrapperForImageClassification``,
  the same state dict under ``timm_model.``): LayerNorm runs need no remote code; DyT runs use
  templates/modeling_vit_dyt.py (the wrapper with each LayerNorm replaced by DyT, as the paper's code does).
* ``gpt2``: our nanoGPT-style GPT-2 as transformers' ``GPT2LMHeadModel`` (Linear weights transposed into its
  Conv1D layout, zero biases where the run has none, exact GELU). LayerNorm runs export as a stock GPT-2 (no remote
  code); DyT and Derf runs as ``DyTGPT2LMHeadModel`` (templates/modeling_gpt2_dyt.py: GPT-2's classes with each
  LayerNorm replaced, every site's trained alpha (and Derf's shift) in the weights). Derf's patch scales
  ``tok + pos`` by a learnable scalar: it is folded into ``wte`` and ``wpe``, and the head gets the unscaled copy.

DyT folders load with ``AutoModel`` / ``AutoModelForCausalLM`` / ``AutoModelForImageClassification``
``.from_pretrained(folder, trust_remote_code=True)``, offline, without `dyt` installed; their ``model_type``
(``llama_dyt``, ``timm_wrapper_dyt``, ``gpt2_dyt``) makes a load without the remote code fail instead of silently
building the wrong norms. The tokenizer / image preprocessing are not exported (the run's data config describes them).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn as nn

from dyt.config import plain_kwargs
from dyt.errors import ConfigError
from dyt.eval.load import load_run
from dyt.nn.alpha_auto import buildable

TEMPLATES = Path(__file__).parent / "templates"
LAYER_FILE = "dyt_layer.py"


def _norm_kind(cfg, elementwise: tuple[str, ...], baseline: str) -> str:
    """The run's norm kind, refused unless `baseline` or one of the `elementwise` kinds the remote code has."""
    kind = cfg.norm.name
    if kind not in (*elementwise, baseline):
        raise ConfigError(f"export to transformers supports norm={' or norm='.join((baseline, *elementwise))}; "
                          f"this run has norm={kind}")
    return kind


def _rope_halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q/k projection reordered per head from interleaved pairs (2i, 2i+1) to halves (i, i + d/2)."""
    return w.view(heads, -1, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def _llama(model: nn.Module, cfg):
    """(config, state dict, remote-code module or None) of transformers' Llama for our LLaMA."""
    import transformers
    kind = _norm_kind(cfg, ("dyt",), "rmsnorm")
    c = model.cfg
    heads, kv = c.n_heads, c.n_kv_heads or c.n_heads
    ours = model.state_dict()
    embed = ours["tok_embeddings.weight"]
    if model.embed_scale is not None:
        embed = embed * model.embed_scale.detach()
    state = {"model.embed_tokens.weight": embed, "model.norm.weight": ours["final_norm.weight"],
             "lm_head.weight": ours["output.weight"]}
    for i in range(c.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        state[dst + "self_attn.q_proj.weight"] = _rope_halves(ours[src + "attn.wq.weight"], heads)
        state[dst + "self_attn.k_proj.weight"] = _rope_halves(ours[src + "attn.wk.weight"], kv)
        for theirs, mine in (("self_attn.v_proj", "attn.wv"), ("self_attn.o_proj", "attn.wo"),
                             ("mlp.gate_proj", "ffn.w1"), ("mlp.up_proj", "ffn.w3"), ("mlp.down_proj", "ffn.w2")):
            state[f"{dst}{theirs}.weight"] = ours[f"{src}{mine}.weight"]
        for theirs, mine in (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")):
            for p in ("alpha", "weight") if kind == "dyt" else ("weight",):
                state[f"{dst}{theirs}.{p}"] = ours[f"{src}{mine}.{p}"]
    if kind == "dyt":
        state["model.norm.alpha"] = ours["final_norm.alpha"]
    args = dict(vocab_size=model.vocab_size, hidden_size=c.dim, intermediate_size=model.layers[0].ffn.w1.out_features,
                num_hidden_layers=c.n_layers, num_attention_heads=heads, num_key_value_heads=kv,
                head_dim=c.dim // heads, rms_norm_eps=c.norm_eps, rope_theta=float(c.rope_theta),
                max_position_embeddings=int(c.max_seq_len), attention_bias=False, mlp_bias=False,
                # an embedding scale makes embed_tokens differ from the (unscaled) tied head: untie
                tie_word_embeddings=bool(c.tie_embeddings) and model.embed_scale is None,
                bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if kind == "rmsnorm":
        return transformers.LlamaConfig(**args), state, None, "LlamaForCausalLM"
    from dyt.export.templates.modeling_llama_dyt import DyTLlamaConfig
    config = DyTLlamaConfig(**args, dyt_alpha=dict(model.alphas))
    config.auto_map = {"AutoConfig": "modeling_llama_dyt.DyTLlamaConfig",
                       "AutoModel": "modeling_llama_dyt.DyTLlamaModel",
                       "AutoModelForCausalLM": "modeling_llama_dyt.DyTLlamaForCausalLM"}
    return config, state, "modeling_llama_dyt.py", "DyTLlamaForCausalLM"


def _vit(model: nn.Module, cfg):
    """(config, state dict, remote-code module or None) of transformers' timm wrapper for our timm ViT."""
    import transformers
    kind = _norm_kind(cfg, ("dyt",), cfg.model.get("norm_sites", "layernorm"))
    m, d = cfg.model, cfg.data
    model_args = {"img_size": int(d.image_size), "patch_size": int(m.patch_size or d.patch_size),
                  "in_chans": int(d.in_chans), **plain_kwargs(m.kwargs)}
    if m.global_pool is not None:
        model_args["global_pool"] = m.global_pool
    state = {f"timm_model.{k}": v for k, v in model.state_dict().items()}
    args = dict(architecture=m.arch, model_args=model_args, num_labels=int(d.num_classes))
    if kind != "dyt":
        return transformers.TimmWrapperConfig(**args), state, None, "TimmWrapperForImageClassification"
    from dyt.export.templates.modeling_vit_dyt import DyTTimmWrapperConfig
    config = DyTTimmWrapperConfig(**args, dyt_alpha=float(buildable(cfg.norm).alpha_init))  # the weights bring the trained alpha
    config.auto_map = {"AutoConfig": "modeling_vit_dyt.DyTTimmWrapperConfig",
                       "AutoModel": "modeling_vit_dyt.DyTTimmWrapperModel",
                       "AutoModelForImageClassification": "modeling_vit_dyt.DyTTimmWrapperForImageClassification"}
    return config, state, "modeling_vit_dyt.py", "DyTTimmWrapperForImageClassification"


GPT2_NORM_PARAMS = {"layernorm": ("weight", "bias"), "dyt": ("alpha", "weight", "bias"),
                    "derf": ("alpha", "shift", "weight", "bias")}


def _gpt2(model: nn.Module, cfg):
    """(config, state dict, remote-code module or None) of transformers' GPT2LMHeadModel for our GPT-2."""
    import transformers
    kind = _norm_kind(cfg, ("dyt", "derf"), "layernorm")
    c = model.cfg
    ours = model.state_dict()
    wte, wpe = ours["transformer.wte.weight"], ours["transformer.wpe.weight"]
    if model.embed_scale is not None:  # (wte + wpe) * s = s wte + s wpe; the head keeps the unscaled matrix
        wte, wpe = wte * model.embed_scale.detach(), wpe * model.embed_scale.detach()
    state = {"transformer.wte.weight": wte, "transformer.wpe.weight": wpe, "lm_head.weight": ours["lm_head.weight"]}
    # transformers' GPT-2 always has biases (Linears and norms): a run without them exports zeros
    for name in [f"h.{i}.{site}" for i in range(c.n_layer) for site in ("ln_1", "ln_2")] + ["ln_f"]:
        for p in GPT2_NORM_PARAMS[kind]:
            v = ours.get(f"transformer.{name}.{p}")
            state[f"transformer.{name}.{p}"] = v if v is not None else torch.zeros(c.n_embd)  # bias=False
    for i in range(c.n_layer):
        for lin in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            linear = model.transformer.h[i].get_submodule(lin)
            key = f"transformer.h.{i}.{lin}"
            state[key + ".weight"] = linear.weight.detach().t()  # transformers' Conv1D holds (in, out)
            state[key + ".bias"] = (linear.bias.detach() if linear.bias is not None
                                    else torch.zeros(linear.out_features))
    args = dict(vocab_size=model.vocab_size, n_positions=int(c.block_size), n_embd=c.n_embd, n_layer=c.n_layer,
                n_head=c.n_head, n_inner=4 * c.n_embd, activation_function="gelu",  # exact GELU, as nanoGPT
                layer_norm_epsilon=float(c.norm_eps), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                tie_word_embeddings=model.embed_scale is None, bos_token_id=None, eos_token_id=None)
    if kind == "layernorm":
        return transformers.GPT2Config(**args), state, None, "GPT2LMHeadModel"
    from dyt.export.templates.modeling_gpt2_dyt import DyTGPT2Config
    alpha0 = float(buildable(cfg.norm).get("alpha_init", 0.5))  # auto: the weights bring alpha
    alphas = {site: float(a) if a is not None else alpha0
              for site, a in (("attn", c.alpha_attn), ("ffn", c.alpha_ffn), ("final", c.alpha_final))}
    config = DyTGPT2Config(**args, norm_kind=kind, dyt_alpha=alphas)
    config.auto_map = {"AutoConfig": "modeling_gpt2_dyt.DyTGPT2Config",
                       "AutoModel": "modeling_gpt2_dyt.DyTGPT2Model",
                       "AutoModelForCausalLM": "modeling_gpt2_dyt.DyTGPT2LMHeadModel"}
    return config, state, "modeling_gpt2_dyt.py", "DyTGPT2LMHeadModel"


EXPORTERS = {"llama": _llama, "vit": _vit, "gpt2": _gpt2}


def export_model(model: nn.Module, cfg, out_dir: str | Path) -> Path:
    """Write `model` (built from the run config `cfg`, its weights loaded) as a transformers folder."""
    family = cfg.model.family
    if family not in EXPORTERS:
        raise ConfigError(f"a {family} run has no Hugging Face counterpart to export to; exportable families: "
                          f"{', '.join(EXPORTERS)}")
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise ConfigError("export needs transformers and safetensors (pip install transformers)") from e
    config, state, remote, architecture = EXPORTERS[family](model, cfg)
    config.architectures = [architecture]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    # contiguous fp32 copies: safetensors refuses shared or strided storage (a tied head, a permuted view)
    save_file({k: v.detach().float().contiguous().clone() for k, v in state.items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    if remote:
        for name in (remote, LAYER_FILE):
            shutil.copyfile(TEMPLATES / name, out / name)
    return out


def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str | None = None,
               weights: str = "model") -> Path:
    """Export a run's checkpoint (the latest unless `checkpoint`; its raw or `ema` weights) to `out_dir`."""
    with load_run(run_dir, checkpoint=checkpoint, device="cpu", weights=(weights,)) as run:
        if run.family.name not in EXPORTERS:
            raise ConfigError(f"{run_dir} is a {run.family.name} run, which has no Hugging Face counterpart; "
                              f"exportable families: {', '.join(EXPORTERS)}")
        return export_model(run.model(weights), run.cfg, out_dir)
