"""Structured configs: the schema of every config group, registered in Hydra's ConfigStore.

Each YAML file in ``configs/`` names its schema in its defaults list (e.g. ``- schema_timm``), so a value of
the wrong type or a misspelt key is an error at composition time, not a silent no-op. Builders receive only
their own sub-config (``cfg.optim``, ``cfg.trainer``, ...).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class NormConfig:
    # a kind of dyt.build_norm: layernorm | rmsnorm | dyt | dyt_hardtanh | dyt_sigmoid | dyt_identity | derf |
    # dyisru | identity (no norm); or the norm a timm model is built with (model.norm_sites, e.g. batchnorm) to keep it
    name: str = "dyt"
    alpha_init: float = 0.5  # alpha0 of the element-wise kinds (dyt, dyt_*, derf, dyisru); ignored by the others
    learn_alpha: bool = True  # false: alpha stays at alpha_init (Table 9's "without alpha": alpha_init=1)


@dataclass
class TimmModelConfig:
    """A timm classifier (ViT, ConvNeXt, ...) built with its LayerNorms, then converted (as the paper's code)."""
    name: str = MISSING  # our config name, used in run names and wandb tags
    family: str = MISSING  # vit | convnext: picks the builder and the task
    arch: str = MISSING  # timm model name
    drop_path: float = 0.0
    global_pool: Optional[str] = None  # the paper's ViTs use 'avg' (then the final norm is timm's fc_norm)
    norm_sites: str = "layernorm"  # the norm timm builds the model with (batchnorm: ResNet / VGG, Table 15)
    patch_size: Optional[int] = None  # ViT only; null keeps the arch's
    kwargs: Dict[str, Any] = field(default_factory=dict)  # other timm constructor args (depth, embed_dim, ...)


@dataclass
class AugmentConfig:
    shift: int = 0  # random translation by up to this many pixels (embedded tensor datasets: digits, fashion_mnist)
    randaugment: Optional[str] = None  # timm RandAugment spec, e.g. 'rand-m9-mstd0.5-inc1'
    hflip: float = 0.0
    random_resized_crop: bool = False
    reprob: float = 0.0  # random erasing probability
    remode: str = "pixel"  # random erasing fill: pixel (per-pixel noise, the paper's recipe) | rand | const
    recount: int = 1  # erased boxes per image
    mixup: float = 0.0  # mixup alpha (0 = off)
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    label_smoothing: float = 0.0


@dataclass
class VisionDataConfig:
    name: str = MISSING
    source: str = MISSING  # digits | fashion_mnist | hf | imagefolder
    root: Optional[str] = None  # local folder (offline alternative to a hub id)
    hub_id: Optional[str] = None  # Hugging Face dataset id for real runs
    train_split: str = "train"
    val_split: str = "test"
    image_column: str = "image"
    label_column: str = "label"
    num_classes: int = MISSING
    in_chans: int = 3
    image_size: int = MISSING  # images are resized to this (square)
    patch_size: int = 16  # the ViT patch size that suits this resolution (model.patch_size defaults to it)
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    fid_ref: Optional[str] = None  # DiT: FID reference statistics (.npz from scripts/fid_stats.py); null = computed


@dataclass
class LatentDataConfig:
    """Pre-extracted VAE latents (scripts/extract_latents.py): what latent DiT trains on (no VAE in the loop)."""
    name: str = MISSING
    source: str = "latents"
    root: Optional[str] = None  # the folder extract_latents.py wrote: <root>/<split>/meta.json, shards, labels
    vae: str = "stabilityai/sd-vae-ft-ema"  # decodes samples (grids, FID): a hub id or a local folder
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = MISSING
    in_chans: int = 4  # latent channels
    image_size: int = 32  # latent side (image side / 8)
    patch_size: int = 2
    num_workers: int = 0
    fid_ref: Optional[str] = None  # FID reference statistics (.npz: scripts/fid_stats.py, or ADM's reference batch)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.05
    decay_1d: bool = False  # also decay 1-D parameters (alpha, norm weights, biases): the released LLaMA code does
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    warmup_steps: int = 0
    warmup_epochs: Optional[float] = None  # when set, replaces warmup_steps
    warmup_shape: str = "linear"  # linear: lr * x | quadratic: lr * (1 - (1 - x)^2), x = step / warmup (LLaMA code)
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    clip_grad: Optional[float] = None  # max global grad norm (null = off)


@dataclass
class TrainerConfig:
    max_steps: Optional[int] = 300  # optimizer steps; when null, `epochs` decides
    epochs: Optional[float] = None
    batch_size: int = 64  # GLOBAL batch (all ranks, all accumulation micro-steps)
    grad_accum: int = 1
    eval_every: int = 100  # optimizer steps between evaluations
    eval_every_epochs: Optional[float] = None  # when set, replaces eval_every (e.g. 1 = every epoch, as the paper)
    ckpt_every: int = 100
    log_every: int = 10
    eval_batch_size: Optional[int] = None  # per rank; null = batch_size / world
    resume: str = "auto"  # auto | never | <path to a checkpoint file>
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile: the whole model under ddp, each block under fsdp / hsdp
    # Parallelism (dyt/distributed.py wrap_model). ddp: a full replica per rank. fsdp: FSDP2, every block then the
    # root sharded over all ranks. hsdp: sharded within a group of hsdp_shard_size ranks (null: one node,
    # LOCAL_WORLD_SIZE), replicated across groups. On one process both train the plain module.
    parallel: str = "ddp"  # ddp | fsdp | hsdp
    hsdp_shard_size: Optional[int] = None
    init: str = "exact"  # fsdp / hsdp: exact (rank 0's CPU build broadcast into the shards: equals a 1-process run)
    #                      | meta (each shard initialised in place: no process ever holds the full model)
    activation_checkpointing: str = "none"  # none | full (every block) | selective (one block in every ac_every)
    ac_every: int = 2  # selective: the released LLaMA code's selective_checkpointing p = 1 / ac_every
    channels_last: bool = False  # image models and batches in channels_last memory (timm's --channels-last)
    ema_decay: Optional[float] = None  # model EMA (timm ModelEmaV3); null = off
    keep_checkpoints: int = 1
    progress: str = "auto"  # auto (a bar on a tty, quiet otherwise) | on | off
    deterministic: bool = False


@dataclass
class LoggerConfig:
    name: str = "none"
    mode: str = "disabled"  # wandb mode: online | offline | disabled
    project: str = "dyt"
    entity: Optional[str] = None
    group: Optional[str] = None  # default: <model>-<data> so LN and DyT runs of one cell share a group
    tags: List[str] = field(default_factory=list)


@dataclass
class LauncherConfig:
    """How many processes run one job (a run, or each point of a -m sweep): configs/launcher/, dyt/launch.py.

    One process per GPU: `nproc` processes on each of `nodes` nodes (world size = nodes x nproc). On one machine,
    nproc > 1 starts a torchrun-style worker group per job; under SLURM (hydra/launcher=dyt_slurm) the job gets
    `nodes` nodes with `nproc` tasks and GPUs each. Not part of a run's name, and may differ when a run resumes.
    """
    nproc: int = 1  # processes (GPUs) per node
    nodes: int = 1  # nodes per job: > 1 only under a cluster launcher (SLURM)


@dataclass
class TrainConfig:
    model: Any = MISSING
    norm: NormConfig = MISSING
    data: Any = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 0
    run_name: str = MISSING
    sweep_name: str = "sweep"
    table: Optional[str] = None  # the paper table a run reproduces (tags the wandb run)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)  # processes per job (configs/launcher/)


def register_configs() -> None:
    """Register the schemas; the YAML files in configs/ extend them by name."""
    cs = ConfigStore.instance()
    cs.store(name="schema_train", node=TrainConfig)
    cs.store(group="model", name="schema_timm", node=TimmModelConfig)
    cs.store(group="norm", name="schema_norm", node=NormConfig)
    cs.store(group="data", name="schema_vision", node=VisionDataConfig)
    cs.store(group="data", name="schema_latents", node=LatentDataConfig)
    cs.store(group="optim", name="schema_optim", node=OptimConfig)
    cs.store(group="trainer", name="schema_trainer", node=TrainerConfig)
    cs.store(group="logger", name="schema_logger", node=LoggerConfig)
    cs.store(group="launcher", name="schema_launcher", node=LauncherConfig)
    # Families register their own model / data schemas (e.g. LLaMA, text corpora) on import.
    from dyt.models import register_model_schemas
    register_model_schemas(cs)


MAX_SUFFIX = 180  # with the run name before it, well under the 255-byte file-name limit


def _suffix(override_dirname: str) -> str:
    """Run-dir suffix from the overrides that define a run (empty when there are none).

    A long one (many overrides) keeps a readable prefix and ends with a hash of the whole, so names stay unique,
    deterministic (the same command resumes) and short enough for the file system; config.yaml has every value.
    """
    if not override_dirname:
        return ""
    suffix = f"_{override_dirname}".replace("/", "-")
    if len(suffix.encode()) <= MAX_SUFFIX:
        return suffix
    digest = hashlib.sha1(suffix.encode()).hexdigest()[:12]
    head = suffix.encode()[: MAX_SUFFIX - len(digest) - 2].decode(errors="ignore")
    return f"{head}..{digest}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf
    if not OmegaConf.has_resolver("dyt.suffix"):
        OmegaConf.register_new_resolver("dyt.suffix", _suffix)


def setup() -> None:
    """Everything Hydra needs before composing our configs (entry points and tests call this once)."""
    register_configs()
    register_resolvers()
