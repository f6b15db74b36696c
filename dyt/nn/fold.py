"""Inference folding: each DyT's per-channel affine moves into the Linear layers that read its output.

A pre-norm site computes ``y = w * f(x) + b`` (``f(x) = tanh(alpha x)`` for DyT; any `ElementwiseNorm` kind) and
hands ``y`` only to Linear layers ``W y + c``. Since ``W (w * f + b) + c = (W diag(w)) f + (W b + c)``, folding sets
``W' = W diag(w)`` and ``c' = W b + c`` and drops the norm's affine: at inference the site computes ``f(x)`` only,
one element-wise pass with no multiply-add (what RMSNorm and LayerNorm cannot do: their statistics sit between
``x`` and the affine, so only their affine folds, never the reduction).

Which Linears read which norm is architecture knowledge, written below as site rules for our LLaMA (``attn_norm ->
wq, wk, wv``, ``ffn_norm -> w1, w3``, ``final_norm -> output``), our GPT-2 (``ln_1 -> c_attn``, ``ln_2 -> c_fc``,
``ln_f -> lm_head``) and timm's VisionTransformer (``norm1 -> qkv``,
``norm2 -> fc1``, the final ``norm`` / ``fc_norm`` -> ``head``: token selection and average pooling are linear and
commute with the per-channel affine). A model with any element-wise norm outside its rules (a norm that feeds the
residual stream, attention pooling or a non-Linear layer) is refused whole, naming each such site, before anything
changes.

Tied embeddings: folding the final norm into an output head that shares its weight with the token embedding gives
the head its own folded copy (the embedding keeps the trained weight), so a folded tied model holds one more
vocab x dim matrix.
"""
from __future__ import annotations

import sys

import torch
import torch.nn as nn

from dyt.nn.norms import ElementwiseNorm

__all__ = ["fold_dyt", "fold_sites", "FoldError"]

Sites = dict[str, tuple[str, ...]]  # norm path -> the paths of the Linear layers that are its only consumers


class FoldError(ValueError):
    """A model (or one of its norm sites) that folding cannot handle; the message names the sites."""


def _llama_sites(model: nn.Module) -> Sites:
    sites = {}
    for i in range(len(model.layers)):
        p = f"layers.{i}"
        sites[f"{p}.attn_norm"] = tuple(f"{p}.attn.{n}" for n in ("wq", "wk", "wv"))
        sites[f"{p}.ffn_norm"] = (f"{p}.ffn.w1", f"{p}.ffn.w3")
    sites["final_norm"] = ("output",)
    return sites


def _vit_sites(model: nn.Module) -> Sites:
    sites = {}
    for i in range(len(model.blocks)):
        sites[f"blocks.{i}.norm1"] = (f"blocks.{i}.attn.qkv",)
        sites[f"blocks.{i}.norm2"] = (f"blocks.{i}.mlp.fc1",)
    if getattr(model, "attn_pool", None) is None:  # attention pooling (global_pool='map') reads the final norm
        # the one of norm / fc_norm that is a norm (the other is Identity) feeds the head through pooling and dropout
        final = "fc_norm" if isinstance(model.fc_norm, ElementwiseNorm) else "norm"
        sites[final] = ("head",)
    return sites


def _gpt2_sites(model: nn.Module) -> Sites:
    sites = {}
    for i in range(len(model.transformer.h)):
        p = f"transformer.h.{i}"
        sites[f"{p}.ln_1"] = (f"{p}.attn.c_attn",)  # one fused q/k/v projection
        sites[f"{p}.ln_2"] = (f"{p}.mlp.c_fc",)
    sites["transformer.ln_f"] = ("lm_head",)
    return sites


def _is_timm_vit(model: nn.Module) -> bool:
    vt = sys.modules.get("timm.models.vision_transformer")  # a timm ViT exists only where timm is imported
    return vt is not None and isinstance(model, vt.VisionTransformer)


def _is_our_llama(model: nn.Module) -> bool:
    # dyt.nn never imports a family: our LLaMA is recognised by the attributes its site rules read
    return all(hasattr(model, a) for a in ("layers", "final_norm", "output", "tok_embeddings"))


def _is_our_gpt2(model: nn.Module) -> bool:
    # nanoGPT's layout: transformer.{wte, h, ln_f} and a lm_head
    t = getattr(model, "transformer", None)
    return isinstance(t, nn.ModuleDict) and all(k in t for k in ("wte", "h", "ln_f")) and hasattr(model, "lm_head")


def fold_sites(model: nn.Module) -> Sites:
    """The site rules of this model's architecture (our LLaMA, our GPT-2 or a timm ViT); FoldError for any other."""
    if _is_timm_vit(model):
        return _vit_sites(model)
    if _is_our_llama(model):
        return _llama_sites(model)
    if _is_our_gpt2(model):
        return _gpt2_sites(model)
    raise FoldError(f"no folding rules for a {type(model).__name__}: fold_dyt knows our LLaMA, our GPT-2 and timm's "
                    "VisionTransformer (dyt/nn/fold.py)")


def _affine(norm: nn.Module) -> bool:
    return isinstance(norm, ElementwiseNorm) and (norm.weight is not None or norm.bias is not None)


def _problems(model: nn.Module, sites: Sites) -> list[str]:
    """Why each element-wise site with an affine cannot be folded (empty: all can)."""
    out = []
    for path, norm in model.named_modules():
        if not _affine(norm):
            continue
        if path not in sites:
            out.append(f"{path}: its output goes to a module other than a Linear (or to the residual stream)")
            continue
        if not norm.channels_last or len(norm.normalized_shape) != 1:
            out.append(f"{path}: a channels-first or multi-dim norm (folding needs a (..., C) input)")
            continue
        for lin_path in sites[path]:
            try:
                lin = model.get_submodule(lin_path)
            except AttributeError:  # a variant of the architecture without that layer (e.g. separate q / k / v)
                lin = None
            if not isinstance(lin, nn.Linear) or lin.in_features != norm.normalized_shape[0]:
                what = "missing" if lin is None else f"a {type(lin).__name__}"
                out.append(f"{path}: its consumer {lin_path} is {what}, not a Linear over its "
                           f"{norm.normalized_shape[0]} channels")
    return out


@torch.no_grad()
def _fold_into(norm: ElementwiseNorm, lin: nn.Linear) -> None:
    W = lin.weight.double()
    w = norm.weight.double() if norm.weight is not None else None
    bias = lin.bias.double() if lin.bias is not None else None
    if norm.bias is not None:
        shift = W @ norm.bias.double()
        bias = shift if bias is None else bias + shift
    new_w = W * w if w is not None else W
    # fresh Parameters: a weight tied to another module (the LM head to the embedding) is untied, the other keeps its own
    lin.weight = nn.Parameter(new_w.to(lin.weight.dtype), requires_grad=lin.weight.requires_grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias.to(lin.weight.dtype), requires_grad=lin.weight.requires_grad)


@torch.no_grad()
def fold_dyt(model: nn.Module) -> nn.Module:
    """Fold every element-wise norm's affine (DyT's ``weight``/``bias``; Derf, DyISRU, ... alike) into the Linear
    layers that consume it, IN PLACE, and return the model (``copy.deepcopy`` first to keep the original).

    Afterwards each folded norm has ``weight = bias = None`` and computes ``f(x)`` only (``tanh(alpha x)`` for
    DyT, through the same fused kernels); outputs equal the unfolded model's up to rounding. Already-folded sites
    are skipped (folding twice changes nothing). Raises FoldError, changing nothing, when any element-wise site
    with an affine cannot be folded. For inference: the folded model trains, but no longer as the original did.
    """
    sites = fold_sites(model)
    problems = _problems(model, sites)
    if problems:
        raise FoldError(f"cannot fold {type(model).__name__}: " + "; ".join(problems))
    for path, consumers in sites.items():
        norm = model.get_submodule(path)
        if not _affine(norm):  # LayerNorm / RMSNorm (nothing to fold without their statistics), or already folded
            continue
        for lin_path in consumers:
            _fold_into(norm, model.get_submodule(lin_path))
        norm.weight, norm.bias, norm.elementwise_affine = None, None, False
    return model
