"""dyt: a framework for studying normalization-free Transformers (Dynamic Tanh vs LayerNorm/RMSNorm)."""
__all__ = ["DynamicTanh", "build_norm", "convert_norms", "build_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # `import dyt` stays light (no torch): a script's --help and its argument errors answer before heavy imports
    if name in ("DynamicTanh", "build_norm", "convert_norms"):
        import dyt.nn
        return getattr(dyt.nn, name)
    raise AttributeError(f"module 'dyt' has no attribute {name!r}")


def build_model(cfg):
    """The model for a composed config (``cfg.model``, ``cfg.norm``), without data; see dyt.families."""
    from dyt.families import build_model as _build  # the registry imports every family: only when asked
    return _build(cfg)
