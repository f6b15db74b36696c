from dyt.nn.convert import convert_norms, is_norm
from dyt.nn.norms import (ELEMENTWISE_KINDS, NORM_FREE, NORM_KINDS, Derf, DyISRU, DynamicSquash, DynamicTanh,
                          ElementwiseNorm, LayerNorm2d, RMSNorm2d, build_norm)

__all__ = ["DynamicTanh", "DynamicSquash", "Derf", "DyISRU", "ElementwiseNorm", "LayerNorm2d", "RMSNorm2d",
           "build_norm", "convert_norms", "is_norm", "NORM_KINDS", "ELEMENTWISE_KINDS", "NORM_FREE"]
