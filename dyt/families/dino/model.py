"""DINO's student and teacher: a timm ViT backbone + DINOHead each, and the loss with its centre, in one module.

The backbone is timm's VisionTransformer with the cls token, the final norm and no classifier (``num_classes=0``,
token pooling): DINO's own ``vision_transformer.py`` ViT up to three details, none of which changes the parameter
count: (1) for the 96-px local crops DINO interpolates the position embedding (bicubic, ``scale_factor`` with a
0.1 offset, no antialiasing), timm's ``dynamic_img_size`` resamples it (bicubic to the exact grid, antialiased);
(2) DINO initialises the cls token with trunc_normal(0.02), timm with normal(1e-6); (3) DINO's attention is
explicit softmax(QK^T)V, timm's is SDPA (the same function). DyT replaces every LayerNorm of both backbones (the
official patch's ``convert_ln_to_dyt`` on student and teacher, before the heads are added; the head has none).

Under DDP and FSDP2 the whole DINO step (teacher on the global crops, student on all crops, loss) is this module's
forward, so a sharded root's parameters (the teacher's, the heads') are gathered for it like any other.
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from dyt.errors import ConfigError
from dyt.families.dino.loss import DINOLoss
from dyt.config import plain_kwargs
from dyt.nn.convert import apply_norm


class DINOHead(nn.Module):
    """MLP (Linear-GELU x nlayers-1, then to the bottleneck), l2-normalise, weight-normalised last layer without
    bias (vision_transformer.py DINOHead, use_bn=False). `norm_last_layer`: its scale g stays 1."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            self.mlp = nn.Sequential(*layers, nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp.apply(self._init)
        # original0 = g (out_dim, 1), original1 = v (out_dim, bottleneck_dim)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class MultiCrop(nn.Module):
    """Backbone + head over a list of crops: consecutive crops of one size go through the backbone together
    (utils.MultiCropWrapper), the head sees every crop's cls feature; output rows are crop-major."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        feats, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            feats.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(feats))


class DINO(nn.Module):
    """`student` (trained), `teacher` (its EMA: no gradients, no optimizer state) and `criterion` (the centre).

    ``forward(crops, teacher_temp)``: the training loss (the centre moves); ``update_center=False`` for
    validation; ``forward(knn_images=x)``: the teacher backbone's l2-normalised cls features (k-NN)."""

    def __init__(self, student: MultiCrop, teacher: MultiCrop, criterion: DINOLoss):
        super().__init__()
        self.student, self.teacher, self.criterion = student, teacher, criterion
        teacher.load_state_dict(student.state_dict())  # main_dino.py: the teacher starts as the student
        teacher.requires_grad_(False)

    def forward(self, crops: list[torch.Tensor] | None = None, teacher_temp: float = 0.04,
                update_center: bool = True, knn_images: torch.Tensor | None = None) -> torch.Tensor:
        if knn_images is not None:
            with torch.no_grad():
                return F.normalize(self.teacher.backbone(knn_images).float(), dim=-1, p=2)
        with torch.no_grad():  # only the 2 global views pass through the teacher
            teacher_out = self.teacher(crops[:2])
        return self.criterion(self.student(crops), teacher_out, teacher_temp, update_center)

    def student_last_layer(self) -> list[nn.Parameter]:
        """The parameters main_dino's cancel_gradients_last_layer freezes (names containing "last_layer")."""
        return [p for n, p in self.student.named_parameters() if "last_layer" in n]


def _backbone(model_cfg, norm_cfg, data_cfg, drop_path: float) -> nn.Module:
    if model_cfg.arch not in timm.list_models("vit_*"):
        raise ConfigError(f"unknown timm ViT {model_cfg.arch!r} (model.arch); see timm.list_models('vit_*')")
    c = model_cfg.crops
    patch = model_cfg.patch_size or data_cfg.patch_size
    for what, size in (("global_size", c.global_size), ("local_size", c.local_size)):
        if size % patch:
            raise ConfigError(f"model.crops.{what}={size} is not a multiple of the patch size {patch}")
    vit = timm.create_model(model_cfg.arch, pretrained=False, num_classes=0, global_pool="token",
                            img_size=c.global_size, patch_size=patch, in_chans=data_cfg.in_chans,
                            dynamic_img_size=True, drop_path_rate=drop_path, **plain_kwargs(model_cfg.kwargs))
    return apply_norm(vit, {"norm_sites": "layernorm"}, norm_cfg)


def build_dino(model_cfg, norm_cfg, data_cfg) -> DINO:
    """Student and teacher backbones (the teacher without drop path), DyT-converted when asked, + heads."""
    h, d = model_cfg.head, model_cfg.dino

    def net(drop_path: float) -> MultiCrop:
        backbone = _backbone(model_cfg, norm_cfg, data_cfg, drop_path)
        return MultiCrop(backbone, DINOHead(backbone.embed_dim, h.out_dim, h.hidden_dim, h.bottleneck_dim,
                                            h.nlayers, h.norm_last_layer))
    student, teacher = net(model_cfg.drop_path), net(0.0)
    return DINO(student, teacher, DINOLoss(h.out_dim, 2 + model_cfg.crops.local_number, d.student_temp,
                                           d.center_momentum))
