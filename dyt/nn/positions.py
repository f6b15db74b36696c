"""Fixed 2-D sin-cos position embeddings, shared by the families that use them (DiT, MAE)."""
from __future__ import annotations

import numpy as np

from dyt.errors import ConfigError


def sincos_pos_embed(dim: int, grid: int) -> np.ndarray:
    """(grid*grid, dim) fixed 2-D sin-cos positions (MAE / DiT): half the channels encode the row, half the column."""
    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    if dim % 4:
        raise ConfigError(f"DiT width {dim} must be a multiple of 4 (2-D sin-cos position embedding)")
    w, h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    return np.concatenate([one_axis(dim // 2, w), one_axis(dim // 2, h)], axis=1)
