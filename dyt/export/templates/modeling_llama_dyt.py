"""LLaMA with Dynamic Tanh (arXiv 2503.10622) in place of every RMSNorm, on transformers' own Llama classes.

Exported by the `dyt` project (python scripts/export_hf.py). The paper's LLaMA specifics are carried by the
weights: DyT without bias (``weight * tanh(alpha x)``) at the attention, MLP and final norms, one trained alpha
per site; the learnable embedding scale is folded into ``embed_tokens``. Load with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` (or ``AutoModel`` for hidden states).
"""
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from .dyt_layer import DyT


class DyTLlamaConfig(LlamaConfig):
    """LlamaConfig plus ``dyt_alpha``: the alpha0 of the attention / ffn / final sites (used only when the model
    is built from the config alone; a loaded model takes its trained alphas from the weights)."""
    model_type = "llama_dyt"


def _use_dyt(model: LlamaModel, config) -> None:
    alpha = getattr(config, "dyt_alpha", None) or {"attn": 0.5, "ffn": 0.5, "final": 0.5}
    for layer in model.layers:
        layer.input_layernorm = DyT(config.hidden_size, alpha["attn"], bias=False)
        layer.post_attention_layernorm = DyT(config.hidden_size, alpha["ffn"], bias=False)
    model.norm = DyT(config.hidden_size, alpha["final"], bias=False)


class DyTLlamaModel(LlamaModel):
    config_class = DyTLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        _use_dyt(self, config)


class DyTLlamaForCausalLM(LlamaForCausalLM):
    config_class = DyTLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        _use_dyt(self.model, config)
