"""dyt: a framework for studying normalization-free Transformers (Dynamic Tanh vs LayerNorm/RMSNorm)."""
from dyt.nn import DynamicTanh, build_norm, convert_norms

__all__ = ["DynamicTanh", "build_norm", "convert_norms", "build_model"]
__version__ = "0.1.0"


def build_model(cfg):
    """The model for a composed config (``cfg.model``, ``cfg.norm``), without data; see dyt.families."""
    from dyt.families import build_model as _build  # the registry imports every family: only when asked
    return _build(cfg)
