"""Schema of configs/model/dino_*.yaml (``defaults: [schema_dino]``): the backbone, the DINO head, the multi-crop
augmentation and DINO's loss and schedules. Defaults are main_dino.py's argparse defaults; the paper's commands
(jiachenzhu/DyT other_tasks/DINO/README.md) are the experiment configs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from dyt.ranges import COUNT, FRACTION, NONNEG, NONNEG_INT, OPT_COUNT, POSITIVE, PROB, NumList, ranged, ranged_list


@dataclass
class HeadConfig:
    """DINOHead: an MLP (GELU, no BN), a bottleneck, l2-normalisation and a weight-normalised last layer."""
    out_dim: int = ranged(65536, COUNT)
    hidden_dim: int = ranged(2048, COUNT)
    bottleneck_dim: int = ranged(256, COUNT)
    nlayers: int = ranged(3, COUNT)
    norm_last_layer: bool = True  # the last layer's weight-norm scale g fixed at 1 (not trained)


@dataclass
class CropsConfig:
    """DataAugmentationDINO: 2 global crops + `local_number` local crops of each image."""
    global_size: int = ranged(224, COUNT)
    local_size: int = ranged(96, COUNT)
    local_number: int = ranged(8, NONNEG_INT)
    global_scale: List[float] = ranged_list(lambda: [0.4, 1.0], NumList(PROB, 2))  # RandomResizedCrop scale
    local_scale: List[float] = ranged_list(lambda: [0.05, 0.4], NumList(PROB, 2))
    blur_kernel: Optional[int] = ranged(None, OPT_COUNT)  # Gaussian blur kernel; null = ~10% of the crop, odd


@dataclass
class DINOConfig:
    """The loss, the teacher and the schedules (the epoch-based ones count epochs of the run's steps)."""
    student_temp: float = ranged(0.1, POSITIVE)
    warmup_teacher_temp: float = ranged(0.04, POSITIVE)
    teacher_temp: float = ranged(0.04, POSITIVE)  # reached after warmup_teacher_temp_epochs (linear, per epoch)
    warmup_teacher_temp_epochs: int = ranged(0, NONNEG_INT)
    center_momentum: float = ranged(0.9, FRACTION)
    momentum_teacher: float = ranged(0.996, PROB)  # the teacher's EMA momentum, cosine to 1 at the last step
    weight_decay_end: float = ranged(0.4, NONNEG)  # weight decay cosine from optim.weight_decay to this
    freeze_last_layer: int = ranged(1, NONNEG_INT)  # epochs during which the head's last layer gets no update
    # validation: weighted k-NN on the teacher's cls features (eval_knn.py), against this many training images
    knn_train_samples: int = ranged(10000, NONNEG_INT)  # 0 = no k-NN (val/loss only)
    knn_k: int = ranged(20, COUNT)
    knn_temperature: float = ranged(0.07, POSITIVE)


@dataclass
class DINOModelConfig:
    """Student and teacher: a timm ViT (cls token, final norm, no classifier) + a DINO head each."""
    name: str = MISSING
    family: str = "dino"
    arch: str = MISSING  # timm ViT name (vit_base_patch16_224)
    patch_size: Optional[int] = ranged(None, OPT_COUNT)  # null = the data's patch_size
    drop_path: float = ranged(0.1, FRACTION)  # the student's only (the teacher has none, as main_dino.py)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # other timm constructor args (depth, embed_dim, ...)
    head: HeadConfig = field(default_factory=HeadConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
