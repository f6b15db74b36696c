"""Shipping trained models: Hugging Face `transformers` folders (`hf`); inference folding is dyt.nn.fold."""
from dyt.export.hf import export_model, export_run

__all__ = ["export_model", "export_run"]
