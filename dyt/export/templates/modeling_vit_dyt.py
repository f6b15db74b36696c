"""A timm Vision Transformer with Dynamic Tanh (arXiv 2503.10622) in place of every LayerNorm, on transformers'
own timm wrapper (TimmWrapperModel / TimmWrapperForImageClassification; needs `timm` installed).

Exported by the `dyt` project (python scripts/export_hf.py): the model is built as the paper's code builds it
(``timm.create_model`` with the config's ``architecture`` and ``model_args``, then each LayerNorm becomes DyT),
its weights (alphas included) read from model.safetensors. Load with
``AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)`` (or ``AutoModel`` for the
pooled features).
"""
import torch.nn as nn
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperModel

from .dyt_layer import DyT


class DyTTimmWrapperConfig(TimmWrapperConfig):
    """TimmWrapperConfig plus ``dyt_alpha``: alpha0 of every site (used only when built from the config alone)."""
    model_type = "timm_wrapper_dyt"


def _use_dyt(model: nn.Module, config) -> None:
    alpha = getattr(config, "dyt_alpha", None) or 0.5
    norms = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    for path, norm in norms:
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                DyT(norm.normalized_shape[0], alpha, bias=norm.bias is not None))


class DyTTimmWrapperModel(TimmWrapperModel):
    config_class = DyTTimmWrapperConfig

    def __init__(self, config):
        super().__init__(config)
        _use_dyt(self.timm_model, config)


class DyTTimmWrapperForImageClassification(TimmWrapperForImageClassification):
    config_class = DyTTimmWrapperConfig

    def __init__(self, config):
        super().__init__(config)
        _use_dyt(self.timm_model, config)
