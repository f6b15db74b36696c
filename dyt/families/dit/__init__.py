"""DiT (Table 3): class-conditional diffusion Transformers on pixels or VAE latents, FID from eval.py."""
from __future__ import annotations

from dyt.families.dit.config import DiffusionConfig, DiTModelConfig, fid_arguments
from dyt.family import Evaluation, Family, Shape, indexed, lazy
from dyt.ranges import COUNT


def dit_check(cfg) -> list[str]:
    m, d = cfg.model, cfg.data
    ok = lambda *vals: all(COUNT.accepts(v) for v in vals)  # noqa: E731 - each reported apart when not
    problems = []
    patch = m.get("patch_size") or d.get("patch_size")
    if ok(d.get("image_size"), patch) and d.image_size % patch:
        problems.append(f"data.image_size={d.image_size} is not a multiple of the DiT patch size {patch}; "
                        "set model.patch_size or data.image_size")
    if ok(m.hidden, m.heads) and (m.hidden % m.heads or m.hidden % 4):
        problems.append(f"model.hidden={m.hidden}, model.heads={m.heads}: the width must be a multiple of the "
                        "heads and of 4 (2-D sin-cos positions)")
    steps, sample = m.diffusion.get("steps"), m.diffusion.get("sample_steps")
    if ok(steps, sample) and sample > steps:
        problems.append(f"model.diffusion.sample_steps={sample} > model.diffusion.steps={steps}: sampling "
                        "respaces the training steps, it cannot add steps")
    return problems


def dit_shape(model, cfg) -> Shape:
    b0 = model.blocks[0]
    return Shape(len(model.blocks), b0.attn.qkv.in_features, b0.attn.num_heads, b0.mlp.fc1.out_features,
                 model.x_embedder.num_patches, adaln=True, head_elems=3)


FID = Evaluation("fid", fid_arguments, requested=lambda a: a.fid is not None,
                 run=lazy("dyt.families.dit.evaluate", "fid_from_args"))

FAMILY = Family(
    "dit", lazy("dyt.families.dit.model", "build_dit"), lazy("dyt.families.dit.task", "DiffusionTask"), data_kinds=("images", "latents"), schemas={"schema_dit": DiTModelConfig},
    blocks=lambda m: indexed(m.blocks), shape=dit_shape, check=dit_check,
    # how samples are drawn and looked at (grids, FID), not how the model trains
    resume_keys=("model.diffusion.sampler", "model.diffusion.sample_steps", "model.diffusion.eta",
                 "model.diffusion.cfg_scale", "model.diffusion.grid_*", "data.vae", "data.fid_ref"),
    evals=(FID,))

__all__ = ["FAMILY", "DiTModelConfig", "DiffusionConfig"]
