"""GPT-2 with Dynamic Tanh (arXiv 2503.10622) or Derf (arXiv 2512.10938) in place of every LayerNorm, on
transformers' own GPT2 classes.

Exported by the `dyt` project (python scripts/export_hf.py) from its nanoGPT-style GPT-2 (Derf's patch of nanoGPT
for the element-wise norms): ``ln_1``, ``ln_2`` and ``ln_f`` become ``config.norm_kind`` (``dyt`` or ``derf``),
one trained alpha per site, read from model.safetensors with the other weights. The patch's learnable scale on
``tok + pos`` is folded into ``wte`` and ``wpe`` (the head then keeps its own unscaled copy: untied). Load with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` (or ``AutoModel`` for hidden states).
"""
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from .dyt_layer import Derf, DyT

LAYERS = {"dyt": DyT, "derf": Derf}


class DyTGPT2Config(GPT2Config):
    """GPT2Config plus ``norm_kind`` (``dyt`` | ``derf``) and ``dyt_alpha``: the alpha0 of the attention / ffn /
    final sites (used only when the model is built from the config alone; a loaded model reads its trained
    alphas from the weights)."""
    model_type = "gpt2_dyt"


def _use_dyt(model: GPT2Model, config) -> None:
    layer = LAYERS[getattr(config, "norm_kind", None) or "dyt"]
    alpha = getattr(config, "dyt_alpha", None) or {"attn": 0.5, "ffn": 0.5, "final": 0.5}
    dim = config.n_embd
    for block in model.h:
        block.ln_1 = layer(dim, alpha["attn"])
        block.ln_2 = layer(dim, alpha["ffn"])
    model.ln_f = layer(dim, alpha["final"])


class DyTGPT2Model(GPT2Model):
    config_class = DyTGPT2Config

    def __init__(self, config):
        super().__init__(config)
        _use_dyt(self, config)


class DyTGPT2LMHeadModel(GPT2LMHeadModel):
    config_class = DyTGPT2Config

    def __init__(self, config):
        super().__init__(config)
        _use_dyt(self.transformer, config)
