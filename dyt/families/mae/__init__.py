"""MAE (Table 2's pre-training, and the MAE rows of Tables 10, 13, 14): masked-autoencoder pre-training of a
ViT. Its runs seed fine-tuning runs through `backbone` (the encoder as a timm ViT state dict)."""
from __future__ import annotations

import math
from typing import Any, Mapping

from dyt.families.mae.config import MAEModelConfig
from dyt.family import Family, Shape, indexed, lazy
from dyt.ranges import COUNT

# augmentation the pre-training never uses (official: crop + flip only); set, it would be silently ignored
UNUSED_AUGMENT = ("randaugment", "reprob", "mixup", "cutmix", "label_smoothing")


def mae_check(cfg) -> list[str]:
    m, d = cfg.model, cfg.data
    ok = lambda *vals: all(COUNT.accepts(v) for v in vals)  # noqa: E731 - each reported apart when not
    problems = []
    patch = m.get("patch_size") or d.get("patch_size")
    if ok(d.get("image_size"), patch):
        if d.image_size % patch:
            problems.append(f"data.image_size={d.image_size} is not a multiple of the MAE patch size {patch}; "
                            "set model.patch_size or data.image_size")
        elif int((d.image_size // patch) ** 2 * (1 - m.mask_ratio)) < 1:
            problems.append(f"model.mask_ratio={m.mask_ratio} hides every one of the {(d.image_size // patch) ** 2} "
                            "patches; lower it")
    for key, width, heads in (("model.hidden", m.hidden, m.heads),
                              ("model.decoder_hidden", m.decoder_hidden, m.decoder_heads)):
        if ok(width, heads) and (width % heads or width % 4):
            problems.append(f"{key}={width}: must be a multiple of its heads ({heads}) and of 4 "
                            "(2-D sin-cos positions)")
    augment = d.get("augment") or {}
    used = [f"data.augment.{k}" for k in UNUSED_AUGMENT if augment.get(k)]
    if used:
        problems.append(f"{', '.join(used)}: MAE pre-training augments with a random-resized crop and a flip only; "
                        "unset them")
    return problems


def mae_blocks(model):
    """Encoder blocks, then decoder blocks: the FSDP units and the activation-checkpointing choices."""
    return indexed(model.blocks) + indexed(model.decoder_blocks)


def mae_shape(model, cfg) -> Shape:
    """The planner's formula is one stack of equal layers, each linear in tokens x width (flash attention: no
    tokens^2 term) with the same MLP ratio. MAE has two stacks: the encoder on the visible patches only (+ cls)
    and the decoder on every patch (+ cls). They are given as one stack of encoder + decoder layers at the
    encoder's width whose token count makes the sum equal, rounded up (B/16: 83 tokens for 12 x 50 + 8 x 197 x
    512/768)."""
    enc, dec = model.blocks[0], model.decoder_blocks[0]
    h_e, h_d = enc.attn.qkv.in_features, dec.attn.qkv.in_features
    n_e, n_d = len(model.blocks), len(model.decoder_blocks)
    s_e, s_d = 1 + model.num_visible(), 1 + model.num_patches
    layers = n_e + n_d
    seq = math.ceil((n_e * s_e * h_e + n_d * s_d * h_d) / (layers * h_e))
    # outside the blocks: the predicted patches, the target and their squared difference (fp32), per sample
    pixels = model.num_patches * model.decoder_pred.out_features
    return Shape(layers, h_e, enc.attn.num_heads, enc.mlp.fc1.out_features, seq, head_elems=3 * pixels / (seq * h_e))


def mae_backbone(state: Mapping[str, Any]) -> dict:
    """The encoder as a timm ``vit_*_patch16`` state dict: the names are already timm's (patch_embed, cls_token,
    pos_embed with its fixed sin-cos values, blocks.*, norm.*); the decoder and the mask token are dropped."""
    return {k: v for k, v in state.items() if not k.startswith("decoder_") and k != "mask_token"}


FAMILY = Family(
    "mae", lazy("dyt.families.mae.model", "build_mae"), lazy("dyt.families.mae.task", "MAETask"), data_kinds=("images",), schemas={"schema_mae": MAEModelConfig},
    blocks=mae_blocks, shape=mae_shape, check=mae_check,
    resume_keys=("model.vis_images",),  # how reconstructions are looked at, not how the model trains
    backbone=mae_backbone)

__all__ = ["FAMILY", "MAEModelConfig"]
