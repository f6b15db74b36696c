"""Dynamic Tanh (arXiv 2503.10622) and Derf, the layers that replace LayerNorm / RMSNorm in this exported model.

Shipped inside the model folder by the `dyt` project's exporter (python scripts/export_hf.py), so the folder loads
with `trust_remote_code=True` and needs no `dyt` install. Its parameters (`alpha`, `weight`, `bias`) are the
trained ones, read from model.safetensors.
"""
import torch
import torch.nn as nn


class DyT(nn.Module):
    """``weight * tanh(alpha * x) + bias`` over the last dim; one scalar ``alpha``, no statistics."""

    def __init__(self, dim: int, alpha_init: float = 0.5, bias: bool = True):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.alpha * x) * self.weight
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, bias={self.bias is not None}"


class Derf(nn.Module):
    """Derf (arXiv 2512.10938): ``weight * erf(alpha * x + shift) + bias``; scalars ``alpha`` and ``shift``."""

    def __init__(self, dim: int, alpha_init: float = 0.5, bias: bool = True):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))
        self.shift = nn.Parameter(torch.zeros(1))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.erf(self.alpha * x + self.shift) * self.weight
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, bias={self.bias is not None}"
