"""Structured configs: the schema of every config group, registered in Hydra's ConfigStore.

Each YAML file in ``configs/`` names its schema in its defaults list (e.g. ``- schema_timm``), so a value of
the wrong type or a misspelt key is an error at composition time, not a silent no-op. Builders receive only
their own sub-config (``cfg.optim``, ``cfg.trainer``, ...). A numeric field carries its accepted range
(``dyt.ranges.ranged``), checked by ``dyt.validate``. This module holds the schemas every run shares and the data
kinds; each model family registers its own model schema (``dyt.family``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from dyt.ranges import (ALPHA_INIT, COUNT, FRACTION, NONNEG, NONNEG_INT, OPT_COUNT, OPT_NONNEG, OPT_POSITIVE, POSITIVE,
                        PROB, SEED, MAX_STEPS, OPT_STEPS, Num, NumList, ranged, ranged_list)


@dataclass
class NormConfig:
    # a kind of dyt.build_norm: layernorm | rmsnorm | dyt | dyt_hardtanh | dyt_sigmoid | dyt_identity | derf |
    # dyisru | identity (no norm); fixup | skipinit | sigma_reparam (Table 10's normalization-free methods, ViT / MAE);
    # or the norm a timm model is built with (model.norm_sites, e.g. batchnorm) to keep it
    name: str = "dyt"
    # alpha0 of the element-wise kinds (dyt, dyt_*, derf, dyisru); ignored by the others. "auto": each site's alpha0 =
    # alpha_k / std of its input on the first training batch (dyt.nn.alpha_auto; a new run only)
    alpha_init: Any = ranged(0.5, ALPHA_INIT)
    alpha_k: float = ranged(1.0, Num(0, 100, lo_open=True))  # auto: the std of alpha0 x at every site at init
    learn_alpha: bool = True  # false: alpha stays at alpha_init (Table 9's "without alpha": alpha_init=1)


@dataclass
class AugmentConfig:
    shift: int = ranged(0, NONNEG_INT)  # random translation by up to this many pixels (embedded tensor datasets: digits, fashion_mnist)
    randaugment: Optional[str] = None  # timm RandAugment spec, e.g. 'rand-m9-mstd0.5-inc1'
    hflip: float = ranged(0.0, PROB)
    random_resized_crop: bool = False
    reprob: float = ranged(0.0, PROB)  # random erasing probability
    remode: str = "pixel"  # random erasing fill: pixel (per-pixel noise, the paper's recipe) | rand | const
    recount: int = ranged(1, COUNT)  # erased boxes per image
    mixup: float = ranged(0.0, NONNEG)  # mixup alpha (0 = off)
    cutmix: float = ranged(0.0, NONNEG)  # cutmix alpha (0 = off)
    label_smoothing: float = ranged(0.0, FRACTION)


@dataclass
class VisionDataConfig:
    """Labelled images (configs/data/digits.yaml, cifar10.yaml, imagenet.yaml, ...)."""
    KIND: ClassVar[str] = "images"
    WORDS: ClassVar[tuple[str, str]] = ("an image dataset", "a data config with num_classes, e.g. data=digits")  # (what it is, how to choose one)
    name: str = MISSING
    source: str = MISSING  # digits | fashion_mnist | hf | imagefolder
    root: Optional[str] = None  # local folder (offline alternative to a hub id)
    hub_id: Optional[str] = None  # Hugging Face dataset id for real runs
    train_split: str = "train"
    val_split: str = "test"
    image_column: str = "image"
    label_column: str = "label"
    num_classes: int = ranged(MISSING, COUNT)
    in_chans: int = ranged(3, COUNT)
    image_size: int = ranged(MISSING, COUNT)  # images are resized to this (square)
    patch_size: int = ranged(16, COUNT)  # the ViT patch size that suits this resolution (model.patch_size defaults to it)
    # std 0 is accepted: it gives inf inputs, the way tests/test_trainer.py forces a NaN loss (divergence)
    mean: List[float] = ranged_list(lambda: [0.485, 0.456, 0.406], NumList(Num(), "in_chans"))
    std: List[float] = ranged_list(lambda: [0.229, 0.224, 0.225], NumList(Num(), "in_chans"))
    num_workers: int = ranged(0, NONNEG_INT)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    fid_ref: Optional[str] = None  # DiT: FID reference statistics (.npz from scripts/fid_stats.py); null = computed


@dataclass
class LatentDataConfig:
    """Pre-extracted VAE latents (scripts/extract_latents.py): what latent DiT trains on (no VAE in the loop)."""
    KIND: ClassVar[str] = "latents"
    WORDS: ClassVar[tuple[str, str]] = ("a VAE latent dataset", "data=imagenet256_latents, from scripts/extract_latents.py")  # (what it is, how to choose one)
    name: str = MISSING
    source: str = "latents"
    root: Optional[str] = None  # the folder extract_latents.py wrote: <root>/<split>/meta.json, shards, labels
    vae: str = "stabilityai/sd-vae-ft-ema"  # decodes samples (grids, FID): a hub id or a local folder
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = ranged(MISSING, COUNT)
    in_chans: int = ranged(4, COUNT)  # latent channels
    image_size: int = ranged(32, COUNT)  # latent side (image side / 8)
    patch_size: int = ranged(2, COUNT)
    num_workers: int = ranged(0, NONNEG_INT)
    fid_ref: Optional[str] = None  # FID reference statistics (.npz: scripts/fid_stats.py, or ADM's reference batch)


@dataclass
class TextDataConfig:
    """Schema of configs/data/text_*.yaml (``defaults: [schema_text]``)."""
    KIND: ClassVar[str] = "text"
    WORDS: ClassVar[tuple[str, str]] = ("a text dataset", "a data config with seq_len, e.g. data=text_pydoc")  # (what it is, how to choose one)
    name: str = MISSING  # short, path-safe: part of the run name
    source: str = MISSING  # pydoc | local | hf | shards
    root: Optional[str] = None  # local folder (local, shards)
    hub_id: Optional[str] = None  # Hugging Face dataset id (hf)
    hub_config: Optional[str] = None  # its config name, e.g. FineWeb's 'sample-10BT'
    train_split: str = "train"
    val_split: Optional[str] = None  # null: hold out documents of the train split (val_fraction / val_docs)
    val_fraction: float = ranged(0.05, Num(0, 1, lo_open=True, hi_open=True))  # held-out share of documents (map-style sources)
    val_docs: int = ranged(2000, COUNT)  # held-out leading documents of a stream (streaming, no val_split)
    text_column: str = "text"
    tokenizer: Optional[str] = "bytes"  # bytes | path to tokenizer.json | HF tokenizer name or folder (shards: null = theirs)
    eos_token: Optional[str] = None  # for a bare tokenizer.json: the token put between documents
    add_bos: bool = False  # pack BOS + document + EOS (the released LLaMA code) instead of document + EOS
    bos_token: Optional[str] = None  # for a bare tokenizer.json: the token put before each document (add_bos)
    vocab_size: Optional[int] = ranged(None, OPT_COUNT)  # null = the tokenizer's, rounded up to pad_vocab_multiple
    pad_vocab_multiple: int = ranged(64, COUNT)
    seq_len: int = ranged(256, COUNT)  # tokens per training sequence (the model sees seq_len, predicts seq_len)
    streaming: bool = False  # hf only: stream instead of downloading the whole dataset
    shuffle_buffer: int = ranged(10_000, NONNEG_INT)  # streaming: HF's buffer shuffle (seeded by run seed and pass)
    max_train_tokens: Optional[int] = ranged(None, OPT_COUNT)  # cap on tokenized training text (map-style, shards)
    corpus: Optional[str] = None  # shards: the configs/data/ corpus they are made from (the pretokenize command in errors)
    max_val_tokens: Optional[int] = ranged(2_000_000, OPT_COUNT)
    num_workers: int = ranged(0, NONNEG_INT)  # streaming always uses 0 (one deterministic stream per rank)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd | muon
    lr: float = ranged(1e-3, NONNEG)
    weight_decay: float = ranged(0.05, NONNEG)
    decay_1d: bool = False  # also decay 1-D parameters (alpha, norm weights, biases): the released LLaMA code does
    betas: List[float] = ranged_list(lambda: [0.9, 0.999], NumList(FRACTION, 2))
    eps: float = ranged(1e-8, POSITIVE)
    momentum: float = ranged(0.9, FRACTION)  # sgd, muon
    muon_lr: float = ranged(0.02, NONNEG)  # muon: Muon's lr for the blocks' matrices (optim.lr: AdamW's, the rest)
    muon_adjust_lr: str = "original"  # muon: torch.optim.Muon's adjust_lr_fn (original | match_rms_adamw)
    warmup_steps: int = ranged(0, Num(0, MAX_STEPS, integer=True))
    warmup_epochs: Optional[float] = ranged(None, OPT_NONNEG)  # when set, replaces warmup_steps
    warmup_shape: str = "linear"  # linear: lr * x | quadratic: lr * (1 - (1 - x)^2), x = step / warmup (LLaMA code)
    min_lr_ratio: float = ranged(0.0, PROB)  # cosine decays to lr * min_lr_ratio
    cosine_steps: Optional[int] = ranged(None, OPT_STEPS)  # the cosine ends here (null: at max_steps); LLaMA code: 1M
    clip_grad: Optional[float] = ranged(None, OPT_POSITIVE)  # max global grad norm (null = off)
    # layer-wise lr decay (MAE / BEiT fine-tuning): block i of L gets lr x layer_decay^(L-i); null = off
    layer_decay: Optional[float] = ranged(None, Num(0, 1, lo_open=True, optional=True))


#: trainer.parallel, trainer.activation_checkpointing, trainer.init and trainer.reduce_dtype: the accepted names
#: (dyt.parallel implements them, dyt.validate checks them)
PARALLEL = ("ddp", "fsdp", "hsdp")
AC_MODES = ("none", "full", "selective")
INITS = ("exact", "meta")
REDUCE_DTYPE_NAMES = ("fp32", "bf16")


@dataclass
class TrainerConfig:
    max_steps: Optional[int] = ranged(300, OPT_STEPS)  # optimizer steps; when null, `epochs` decides
    epochs: Optional[float] = ranged(None, Num(0, lo_open=True, optional=True))
    batch_size: int = ranged(64, COUNT)  # GLOBAL batch (all ranks, all accumulation micro-steps)
    grad_accum: int = ranged(1, COUNT)
    eval_every: int = ranged(100, COUNT)  # optimizer steps between evaluations
    eval_every_epochs: Optional[float] = ranged(None, Num(0, lo_open=True, optional=True))  # when set, replaces eval_every (e.g. 1 = every epoch, as the paper)
    ckpt_every: int = ranged(100, COUNT)
    log_every: int = ranged(10, COUNT)
    # Losses, grad norms and the non-finite check stay on the device; the host reads them (one all-reduce, which
    # also agrees on stop signals) only at sync points: log, eval and checkpoint steps, the last step, and every
    # sync_every steps (null: log_every). A NaN/Inf loss or a SIGTERM/SIGUSR1 is acted on at the next sync point.
    sync_every: Optional[int] = ranged(None, OPT_COUNT)
    eval_batch_size: Optional[int] = ranged(None, OPT_COUNT)  # per rank; null = batch_size / world
    resume: str = "auto"  # auto | never | <path to a checkpoint file>
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile: the whole model under ddp, each block under fsdp / hsdp
    # Parallelism (dyt/parallel.py wrap_model). ddp: a full replica per rank. fsdp: FSDP2, every block then the
    # root sharded over all ranks. hsdp: sharded within a group of hsdp_shard_size ranks (null: one node,
    # LOCAL_WORLD_SIZE), replicated across groups. On one process both train the plain module.
    parallel: str = "ddp"  # ddp | fsdp | hsdp
    hsdp_shard_size: Optional[int] = ranged(None, OPT_COUNT)
    # dtype of the gradient reduction across ranks: fp32 | bf16 (the released LLaMA code's fms-fsdp bf16 policy).
    # fsdp / hsdp: the MixedPrecisionPolicy's reduce_dtype; ddp: bf16 all-reduces bf16 copies (bf16_compress_hook)
    reduce_dtype: str = "fp32"
    init: str = "exact"  # fsdp / hsdp: exact (rank 0's CPU build broadcast into the shards: equals a 1-process run)
    #                      | meta (each shard initialised in place: no process ever holds the full model)
    activation_checkpointing: str = "none"  # none | full (every block) | selective (one block in every ac_every)
    ac_every: int = ranged(2, COUNT)  # selective: the released LLaMA code's selective_checkpointing p = 1 / ac_every
    channels_last: bool = False  # image models and batches in channels_last memory (timm's --channels-last)
    ema_decay: Optional[float] = ranged(None, Num(0, 1, hi_open=True, optional=True))  # model EMA (timm ModelEmaV3); null = off
    keep_checkpoints: int = ranged(1, COUNT)
    progress: str = "auto"  # auto (a bar on a tty, else a line every progress_every s) | bar | lines | off
    progress_every: float = ranged(30.0, POSITIVE)  # seconds between progress lines (stdout and train.log)
    deterministic: bool = False
    # Start from another run's weights (fine-tuning, dyt/init_from.py): its run directory (latest checkpoint) or one
    # checkpoint in it, mapped through its family's `backbone`. Ignored once this run has a checkpoint of its own.
    init_from: Optional[str] = None


@dataclass
class LoggerConfig:
    name: str = "none"
    mode: str = "disabled"  # wandb mode: online | offline | disabled (dyt.validate checks it)
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
    nproc: int = ranged(1, COUNT)  # processes (GPUs) per node
    nodes: int = ranged(1, COUNT)  # nodes per job: > 1 only under a cluster launcher (SLURM)


@dataclass
class TrainConfig:
    model: Any = MISSING
    norm: NormConfig = MISSING
    data: Any = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = ranged(0, SEED)  # |seed| <= 2^62 (negative seeds are fine: every use reduces them)
    run_name: str = MISSING
    sweep_name: str = "sweep"
    table: Optional[str] = None  # the paper table a run reproduces (tags the wandb run)
    # A fine-tuning run's norm (needs trainer.init_from; dyt/init_from.py resolves it before anything is built):
    # released = LayerNorm whatever the pre-training used (facebookresearch/mae's main_finetune.py, which the DyT
    # repo's MAE and DINO READMEs send fine-tuning to); pretrain = the pre-training run's own norm section; null = norm=
    finetune_norm: Optional[str] = None
    launcher: LauncherConfig = field(default_factory=LauncherConfig)  # processes per job (configs/launcher/)


def register_configs() -> None:
    """Register the schemas; the YAML files in configs/ extend them by name."""
    cs = ConfigStore.instance()
    cs.store(name="schema_train", node=TrainConfig)
    cs.store(group="norm", name="schema_norm", node=NormConfig)
    cs.store(group="data", name="schema_vision", node=VisionDataConfig)
    cs.store(group="data", name="schema_latents", node=LatentDataConfig)
    cs.store(group="data", name="schema_text", node=TextDataConfig)
    cs.store(group="optim", name="schema_optim", node=OptimConfig)
    cs.store(group="trainer", name="schema_trainer", node=TrainerConfig)
    cs.store(group="logger", name="schema_logger", node=LoggerConfig)
    cs.store(group="launcher", name="schema_launcher", node=LauncherConfig)


MAX_SUFFIX = 180  # with the run name before it, well under the 255-byte file-name limit


def _suffix(override_dirname: str) -> str:
    """Run-dir suffix from the overrides that define a run (empty when there are none).

    A long one (many overrides) keeps a readable prefix and ends with a hash of the whole, so names stay unique,
    deterministic (the same command resumes) and short enough for the file system; config.yaml has every value.
    Quotes a value needed on the command line (a path holding '=') are not part of the name.
    """
    if not override_dirname:
        return ""
    suffix = f"_{override_dirname}".replace("/", "-").replace("'", "").replace('"', "")
    if len(suffix.encode()) <= MAX_SUFFIX:
        return suffix
    digest = hashlib.sha1(suffix.encode()).hexdigest()[:12]
    head = suffix.encode()[: MAX_SUFFIX - len(digest) - 2].decode(errors="ignore")
    return f"{head}..{digest}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("dyt.suffix"):
        OmegaConf.register_new_resolver("dyt.suffix", _suffix)


def register_shared() -> None:
    """The shared schemas and resolvers (``dyt.families.setup`` adds every family's; entry points call that)."""
    register_configs()
    register_resolvers()


#: the shared data schemas, by the kind of data they describe (a family names the kinds it trains on; a family may
#: bring its own: Family.data_schemas)
DATA_SCHEMAS = (VisionDataConfig, LatentDataConfig, TextDataConfig)


def plain_kwargs(kwargs) -> dict:
    """model.kwargs as plain Python values: timm does arithmetic on its lists (a ListConfig is not a tuple of ints)."""
    return OmegaConf.to_container(kwargs, resolve=True) if isinstance(kwargs, DictConfig) else dict(kwargs)
