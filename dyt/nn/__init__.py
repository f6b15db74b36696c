from dyt.nn.convert import convert_norms, is_norm
from dyt.nn.norms import NORM_KINDS, DynamicTanh, LayerNorm2d, RMSNorm2d, build_norm

__all__ = ["DynamicTanh", "LayerNorm2d", "RMSNorm2d", "build_norm", "convert_norms", "is_norm", "NORM_KINDS"]
