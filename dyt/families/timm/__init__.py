"""timm classifiers: ViT and ConvNeXt (Table 1), ResNet-50 / VGG19 with BatchNorm (Table 15).

Three families sharing one schema, one builder module and the classification task; they differ in their blocks
(the FSDP / activation-checkpointing units), their planner shape and their own checks.
"""
from __future__ import annotations

from dyt.family import Family, Shape, indexed, lazy
from dyt.ranges import COUNT
from dyt.families.timm.config import TimmModelConfig

MODEL = "dyt.families.timm.model"
ClassificationTask = lazy("dyt.tasks.classification", "ClassificationTask")

SCHEMAS = {"schema_timm": TimmModelConfig}


def vit_check(cfg) -> list[str]:
    m, d = cfg.model, cfg.data
    patch = m.get("patch_size") or d.get("patch_size")
    if COUNT.accepts(d.get("image_size")) and COUNT.accepts(patch) and d.image_size % patch:
        return [f"data.image_size={d.image_size} is not a multiple of the ViT patch size {patch}; "
                "set model.patch_size or data.image_size"]
    return []


def vit_shape(model, cfg) -> Shape:
    b0 = model.blocks[0]
    return Shape(len(model.blocks), model.embed_dim, b0.attn.num_heads, b0.mlp.fc1.out_features,
                 model.patch_embed.num_patches + model.num_prefix_tokens)


def convnext_blocks(model):
    """Every block of every stage (a stage's downsampling layer stays with the root unit)."""
    return [unit for stage in model.stages for unit in indexed(stage.blocks)]


VIT = Family("vit", lazy(MODEL, "build_vit"), ClassificationTask, ("images",), SCHEMAS, blocks=lambda m: indexed(m.blocks),
             shape=vit_shape, check=vit_check, backbone=dict)  # its state dict is already a timm ViT's
CONVNEXT = Family("convnext", lazy(MODEL, "build_convnext"), ClassificationTask, ("images",), SCHEMAS, blocks=convnext_blocks)
CNN = Family("cnn", lazy(MODEL, "build_cnn"), ClassificationTask, ("images",), SCHEMAS)  # BatchNorm CNNs (Table 15): no blocks
FAMILIES = (VIT, CONVNEXT, CNN)
