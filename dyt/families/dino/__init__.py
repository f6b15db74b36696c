"""DINO (Table 2): self-distillation pre-training of a ViT, student and EMA teacher, multi-crop; the teacher's
backbone seeds a fine-tuning run (``trainer.init_from``)."""
from __future__ import annotations

from typing import Any, Mapping

from dyt.families.dino.config import CropsConfig, DINOConfig, DINOModelConfig, HeadConfig
from dyt.distributed import clean_name
from dyt.family import Family, Shape, indexed, lazy
from dyt.ranges import COUNT

TEACHER_BACKBONE = "teacher.backbone."


def dino_check(cfg) -> list[str]:
    m, d = cfg.model, cfg.data
    patch = m.get("patch_size") or d.get("patch_size")
    if not COUNT.accepts(patch):
        return []
    return [f"model.crops.{k}={m.crops[k]} is not a multiple of the ViT patch size {patch}; set model.patch_size or "
            f"model.crops.{k}" for k in ("global_size", "local_size") if COUNT.accepts(m.crops[k]) and m.crops[k] % patch]


def dino_shape(model, cfg) -> Shape:
    """The student's blocks over every crop of a sample: `seq` is the tokens of 2 global + n local crops (each
    crop's attention is separate, which the flash formula's s*h terms count exactly). The teacher runs under
    no_grad (it keeps no activations) and the head's activations per crop (MLP, bottleneck, out_dim logits with
    their fp32 softmax / log-softmax) enter as `head_elems`."""
    student, c, h = model.student.backbone, cfg.model.crops, cfg.model.head
    patch = student.patch_embed.patch_size[0]
    tokens = lambda size: (size // patch) ** 2 + student.num_prefix_tokens  # noqa: E731
    ncrops = 2 + c.local_number
    seq = 2 * tokens(c.global_size) + c.local_number * tokens(c.local_size)
    head = ncrops * (h.hidden_dim * (h.nlayers - 1) * 2 + h.bottleneck_dim + 3 * h.out_dim)
    b0 = student.blocks[0]
    return Shape(len(student.blocks), student.embed_dim, b0.attn.num_heads, b0.mlp.fc1.out_features, seq,
                 head_elems=head / (seq * student.embed_dim))


def teacher_backbone(state_dict: Mapping[str, Any]) -> dict:
    """The teacher's backbone as a timm ViT state dict: DINO's released backbones are the teacher's
    (eval_knn.py / eval_linear.py load ``--checkpoint_key teacher``)."""
    out = {}
    for name, value in state_dict.items():
        name = clean_name(name)
        if name.startswith(TEACHER_BACKBONE):
            out[name[len(TEACHER_BACKBONE):]] = value
    return out


FAMILY = Family("dino", lazy("dyt.families.dino.model", "build_dino"), lazy("dyt.families.dino.task", "DINOTask"), data_kinds=("images",), schemas={"schema_dino": DINOModelConfig},
                blocks=lambda m: indexed(m.student.backbone.blocks), shape=dino_shape, check=dino_check,
                resume_keys=("model.dino.knn_*",), backbone=teacher_backbone)

__all__ = ["FAMILY", "CropsConfig", "DINOConfig", "DINOModelConfig", "HeadConfig"]
