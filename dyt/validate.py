"""One validation pass over a composed config, before anything is built or trained.

``validate(cfg)`` checks every numeric option against its accepted range (the table ``RULES``, one entry per
numeric field of every schema dataclass), mandatory values, the model family / data kind pairing and the
few cross-field constraints, resolves what can be inferred (an image folder's class count), and raises ONE
``ConfigError`` whose message lists every problem found, e.g.::

    trainer.batch_size=-8: must be an integer >= 1; optim.lr=nan: must be a finite number >= 0

``check_model_fits(cfg, device, world_size)`` estimates a model's training memory from a meta-device build and
stops with one line when it cannot fit. Only the standard library and omegaconf are imported at module level:
torch, timm and datasets are imported by the checks that need them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from dyt.config import (AugmentConfig, NormConfig, OptimConfig, TimmModelConfig, TrainConfig, TrainerConfig,
                        VisionDataConfig)
from dyt.errors import ConfigError
from dyt.parallel import AC_MODES, INITS, PARALLEL


# --- accepted ranges ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Num:
    """An accepted numeric range: ``lo <(=) value <(=) hi``; integers only with `integer`; null with `optional`."""
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False  # value > lo (else >=)
    hi_open: bool = False  # value < hi (else <=)
    integer: bool = False
    optional: bool = False  # null is accepted (the option is off / inferred)

    def accepts(self, v: Any) -> bool:
        if v is None:
            return self.optional
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.integer and not isinstance(v, int)):
            return False
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        fmt = lambda x: f"{x:g}"  # noqa: E731
        if self.lo is not None and self.hi is not None:
            rng = f"in {'(' if self.lo_open else '['}{fmt(self.lo)}, {fmt(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            rng = f"{'>' if self.lo_open else '>='} {fmt(self.lo)}"
        elif self.hi is not None:
            rng = f"{'<' if self.hi_open else '<='} {fmt(self.hi)}"
        else:
            rng = ""
        return f"{kind} {rng}".strip() + (" or null" if self.optional else "")


@dataclass(frozen=True)
class NumList:
    """A list of numbers, each accepted by `item`; `length` = a fixed length, or the name of the sibling key
    that gives it (``in_chans`` for mean/std)."""
    item: Num
    length: Any = None

    def describe(self, n: Optional[int]) -> str:
        each = self.item.describe().removeprefix("a finite number").strip()
        if n is None:
            return f"a list of numbers{', each ' + each if each else ''}"
        tail = (", each " if n > 1 else " ") + each if each else ""
        return f"a list of {n} number{'s' if n != 1 else ''}{tail}"


def _int(lo=None, **kw) -> Num:
    return Num(lo=lo, integer=True, **kw)


COUNT = _int(1)  # sizes, steps, intervals: >= 1
OPT_COUNT = _int(1, optional=True)
NONNEG_INT = _int(0)
POSITIVE = Num(0, lo_open=True)  # eps, alpha0, std: > 0
OPT_POSITIVE = Num(0, lo_open=True, optional=True)
NONNEG = Num(0)
OPT_NONNEG = Num(0, optional=True)
PROB = Num(0, 1)  # probabilities: [0, 1]
FRACTION = Num(0, 1, hi_open=True)  # [0, 1): decays, drop rates, label smoothing


def _schemas():
    from dyt.data.text import TextDataConfig
    from dyt.models.llama import LlamaModelConfig
    return TextDataConfig, LlamaModelConfig


def _rules() -> dict[type, dict[str, Any]]:
    """Every numeric field of every schema -> its accepted range (tests check that no field is left out)."""
    from dyt.config import LatentDataConfig, LauncherConfig
    from dyt.models.dit import DiffusionConfig, DiTModelConfig
    TextDataConfig, LlamaModelConfig = _schemas()
    return {
        DiTModelConfig: {
            "hidden": COUNT, "depth": COUNT, "heads": COUNT, "patch_size": OPT_COUNT, "mlp_ratio": POSITIVE,
            "class_dropout": FRACTION, "norm_eps": POSITIVE},
        DiffusionConfig: {
            "steps": _int(2), "sample_steps": COUNT, "eta": NONNEG, "cfg_scale": NONNEG, "grid_classes": COUNT,
            "grid_per_class": NONNEG_INT, "grid_steps": OPT_COUNT},
        LatentDataConfig: {
            "num_classes": COUNT, "in_chans": COUNT, "image_size": COUNT, "patch_size": COUNT,
            "num_workers": NONNEG_INT},
        TrainConfig: {"seed": _int()},  # any integer (negative seeds are fine: every use reduces them)
        LauncherConfig: {"nproc": COUNT, "nodes": COUNT},
        NormConfig: {"alpha_init": POSITIVE},
        TimmModelConfig: {"drop_path": FRACTION, "patch_size": OPT_COUNT},
        LlamaModelConfig: {
            "dim": COUNT, "n_layers": COUNT, "n_heads": COUNT, "n_kv_heads": OPT_COUNT, "ffn_dim": OPT_COUNT,
            "multiple_of": COUNT, "rope_theta": POSITIVE, "norm_eps": POSITIVE, "init_std": POSITIVE,
            "embed_init_std": OPT_POSITIVE, "max_seq_len": COUNT,
            "alpha_attn": OPT_POSITIVE, "alpha_ffn": OPT_POSITIVE, "alpha_final": OPT_POSITIVE},
        AugmentConfig: {
            "shift": NONNEG_INT, "hflip": PROB, "reprob": PROB, "recount": COUNT, "mixup": NONNEG,
            "cutmix": NONNEG, "label_smoothing": FRACTION},
        VisionDataConfig: {
            "num_classes": COUNT, "in_chans": COUNT, "image_size": COUNT, "patch_size": COUNT,
            # std 0 is accepted: it gives inf inputs, the way tests/test_trainer.py forces a NaN loss (divergence)
            "mean": NumList(Num(), "in_chans"), "std": NumList(Num(), "in_chans"), "num_workers": NONNEG_INT},
        TextDataConfig: {
            "val_fraction": Num(0, 1, lo_open=True, hi_open=True), "val_docs": COUNT, "vocab_size": OPT_COUNT,
            "pad_vocab_multiple": COUNT, "seq_len": COUNT, "shuffle_buffer": NONNEG_INT,
            "max_train_tokens": OPT_COUNT, "max_val_tokens": OPT_COUNT, "num_workers": NONNEG_INT},
        OptimConfig: {
            "lr": NONNEG, "weight_decay": NONNEG, "betas": NumList(FRACTION, 2), "eps": POSITIVE, "momentum": FRACTION,
            "warmup_steps": NONNEG_INT, "warmup_epochs": OPT_NONNEG, "min_lr_ratio": PROB,
            "clip_grad": OPT_POSITIVE},
        TrainerConfig: {
            "max_steps": OPT_COUNT, "epochs": Num(0, lo_open=True, optional=True), "batch_size": COUNT,
            "grad_accum": COUNT, "eval_every": COUNT, "eval_every_epochs": Num(0, lo_open=True, optional=True),
            "ckpt_every": COUNT, "log_every": COUNT, "eval_batch_size": OPT_COUNT,
            "ema_decay": Num(0, 1, hi_open=True, optional=True), "keep_checkpoints": COUNT,
            "hsdp_shard_size": OPT_COUNT, "ac_every": COUNT},
    }


# --- walking the config -------------------------------------------------------------------------------------
def _schema_of(node: DictConfig, rules: dict[type, dict]) -> Optional[type]:
    """The node's schema dataclass; for an untyped node (a saved config.yaml) the schema whose fields cover it."""
    t = OmegaConf.get_type(node)
    if t in rules:
        return t
    if t not in (None, dict):  # a schema without numeric options (logger)
        return None
    from dataclasses import fields
    keys = set(node.keys())
    best = [(len(keys & names), cls) for cls in rules
            for names in [{f.name for f in fields(cls)}] if keys and keys <= names]
    return max(best, key=lambda x: x[0])[1] if best else None


def _fmt(v: Any) -> str:
    if isinstance(v, (ListConfig, list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "null" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _check_node(node: DictConfig, prefix: str, rules: dict, problems: list[str]) -> None:
    cls = _schema_of(node, rules)
    for key, rule in (rules.get(cls, {}) if cls else {}).items():
        if key not in node or OmegaConf.is_missing(node, key):
            continue  # missing mandatory values are reported once, by _missing
        try:
            v = node[key]
        except Exception as e:  # a broken interpolation
            problems.append(f"{prefix}{key}: {str(e).splitlines()[0]}")
            continue
        if isinstance(rule, NumList):
            n = rule.length if isinstance(rule.length, int) else node.get(rule.length) if rule.length else None
            if isinstance(rule.length, str) and not rules[cls].get(rule.length, COUNT).accepts(n):
                n = None  # the sibling that gives the length is itself wrong (and reported)
            ok = (isinstance(v, (ListConfig, list)) and all(rule.item.accepts(x) for x in v)
                  and (not isinstance(n, int) or len(v) == n))
            if not ok:
                what = rule.describe(n if isinstance(n, int) else None)
                why = f" ({rule.length}={n})" if isinstance(rule.length, str) else ""
                problems.append(f"{prefix}{key}={_fmt(v)}: must be {what}{why}")
        elif not rule.accepts(v):
            problems.append(f"{prefix}{key}={_fmt(v)}: must be {rule.describe()}")
    for key in node.keys():  # nested schemas (data.augment)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _check_node(node[key], f"{prefix}{key}.", rules, problems)


def _missing(cfg: DictConfig, skip: set[str]) -> list[str]:
    return [f"{k}=???: must be set ({k}=...)" for k in sorted(OmegaConf.missing_keys(cfg)) if k not in skip]


# --- family / data pairing ----------------------------------------------------------------------------------
def _choice(cfg, group: str) -> str:
    """`group=<config name>` as the user typed it (Hydra's choice), else `group.name=<name>`."""
    try:
        from hydra.core.hydra_config import HydraConfig
        return f"{group}={HydraConfig.get().runtime.choices[group]}"
    except Exception:
        return f"{group}.name={cfg[group].get('name')}"


def data_kind(data: DictConfig) -> Optional[str]:
    """'classification' (an image dataset: its schema has num_classes) or 'language' (text: seq_len)."""
    TextDataConfig, _ = _schemas()
    t = OmegaConf.get_type(data)
    if t is VisionDataConfig or (t is not TextDataConfig and "num_classes" in data):
        return "classification"
    if t is TextDataConfig or "seq_len" in data:
        return "language"
    return None


TASK_DATA = {"classification": "classification", "diffusion": "classification", "language": "language"}  # task -> data kind
KIND_WORDS = {"classification": ("an image dataset", "a data config with num_classes, e.g. data=digits"),
              "language": ("a text dataset", "a data config with seq_len, e.g. data=text_pydoc")}


def _pairing(cfg) -> Optional[str]:
    from dyt.models import FAMILIES
    if OmegaConf.is_missing(cfg.model, "family"):
        return None  # reported by _missing
    family = cfg.model.get("family")
    if family not in FAMILIES:
        return f"model.family={family}: unknown model family; choose one of: {', '.join(sorted(FAMILIES))}"
    need, have = TASK_DATA.get(FAMILIES[family].task), data_kind(cfg.data)
    if have is None or have == need or need not in KIND_WORDS:
        return None
    return (f"{_choice(cfg, 'model')} (family {family}) needs {KIND_WORDS[need][0]} ({KIND_WORDS[need][1]}); "
            f"{_choice(cfg, 'data')} is {KIND_WORDS[have][0]}")


def _cross_checks(cfg, problems: list[str]) -> None:
    """Constraints between keys (each reported only when its keys passed their own ranges)."""
    t, m, d = cfg.trainer, cfg.model, cfg.data
    if t.get("max_steps", 0) is None and t.get("epochs", 0) is None:
        problems.append("trainer.max_steps=null and trainer.epochs=null: set one of them (the run's length)")
    _parallel_checks(t, problems)
    family = m.get("family")
    _norm_check(cfg.norm.get("name"), m, problems)
    ok = lambda *vals: all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in vals)  # noqa: E731
    if family == "vit" and data_kind(d) == "classification" and not OmegaConf.is_missing(d, "image_size"):
        patch = m.get("patch_size") or d.get("patch_size")
        if ok(d.image_size, patch) and d.image_size % patch:
            problems.append(f"data.image_size={d.image_size} is not a multiple of the ViT patch size {patch}; "
                            "set model.patch_size or data.image_size")
    if family == "dit" and data_kind(d) == "classification" and not OmegaConf.is_missing(d, "image_size"):
        patch = m.get("patch_size") or d.get("patch_size")
        if ok(d.image_size, patch) and d.image_size % patch:
            problems.append(f"data.image_size={d.image_size} is not a multiple of the DiT patch size {patch}; "
                            "set model.patch_size or data.image_size")
        if ok(m.hidden, m.heads) and (m.hidden % m.heads or m.hidden % 4):
            problems.append(f"model.hidden={m.hidden}, model.heads={m.heads}: the width must be a multiple of the "
                            "heads and of 4 (2-D sin-cos positions)")
        steps, sample = m.diffusion.get("steps"), m.diffusion.get("sample_steps")
        if ok(steps, sample) and sample > steps:
            problems.append(f"model.diffusion.sample_steps={sample} > model.diffusion.steps={steps}: sampling "
                            "respaces the training steps, it cannot add steps")
    if family == "llama" and not any(OmegaConf.is_missing(m, k) for k in ("dim", "n_heads")):
        kv = m.get("n_kv_heads") or m.n_heads
        if ok(m.dim, m.n_heads, kv) and (m.dim % m.n_heads or m.n_heads % kv):
            problems.append(f"model.dim={m.dim}, model.n_heads={m.n_heads}, model.n_kv_heads={kv}: dim must be a "
                            "multiple of n_heads and n_heads a multiple of n_kv_heads")


def _norm_check(name: str, m, problems: list[str]) -> None:
    """norm= names a kind of build_norm, or the norm a timm model is built with (kept: the baseline)."""
    from dyt.nn import NORM_KINDS
    native = m.get("norm_sites") if "norm_sites" in m else None
    if name not in NORM_KINDS and name != native:
        kinds = sorted(NORM_KINDS) + ([native] if native and native not in NORM_KINDS else [])
        problems.append(f"norm={name}: unknown norm for {m.get('name')}; choose one of: {', '.join(kinds)}")


def _parallel_checks(t, problems: list[str]) -> None:
    """trainer.parallel / init / activation_checkpointing: known names, and combinations that can run."""
    choices = {"parallel": PARALLEL, "init": INITS, "activation_checkpointing": AC_MODES}
    bad = False
    for key, names in choices.items():
        if key in t and t.get(key) not in names:
            problems.append(f"trainer.{key}={t.get(key)}: unknown; choose one of: {', '.join(names)}")
            bad = True
    if bad:
        return
    sharded = t.get("parallel", "ddp") != "ddp"
    if t.get("init", "exact") == "meta" and not sharded:
        problems.append("trainer.init=meta: only a sharded model (trainer.parallel=fsdp|hsdp) is initialised on "
                        "the meta device; use trainer.init=exact or set trainer.parallel")
    if sharded and t.get("precision") == "fp16":
        problems.append(f"trainer.precision=fp16 with trainer.parallel={t.parallel}: FSDP's mixed precision needs "
                        "bf16 (fp16 would need a sharded gradient scaler); use trainer.precision=bf16")


# --- data that can be resolved from disk --------------------------------------------------------------------
def image_folder_classes(root: Path, split: str) -> list[str]:
    """Class names of an image folder laid out as root/<split>/<class>/<image> (or root/<class>/<image>):
    the sub-folders holding at least one file, sorted (Hugging Face's imagefolder labels them 0..n-1)."""
    base = root / split if (root / split).is_dir() else root
    return sorted(p.name for p in base.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and any(f.is_file() for f in p.rglob("*")))


def _saved_classes(root: Path, split: str, column: str) -> Optional[list[str]]:
    """ClassLabel names of a `save_to_disk` copy, from its dataset_info.json (no data read)."""
    import json
    info = root / split / "dataset_info.json"
    try:
        feature = json.loads(info.read_text())["features"][column]
    except Exception:
        return None
    return list(feature["names"]) if feature.get("_type") == "ClassLabel" and "names" in feature else None


def resolve_data(cfg, problems: list[str]) -> None:
    """Sets a missing data.num_classes from a local dataset's classes; checks an explicit one against them."""
    d = cfg.data
    if data_kind(d) != "classification":
        return
    missing = OmegaConf.is_missing(d, "num_classes")
    root = Path(d.root) if d.get("root") and not OmegaConf.is_missing(d, "root") else None
    if root is None or not root.exists():
        if root is not None:  # the data builders name what they expected there (Fashion-MNIST files, ...)
            if missing:
                problems.append(f"data.root={root}: does not exist (data.num_classes is counted from it)")
        elif d.get("source") == "imagefolder":
            problems.append(f"data.root=null: must be set to a local image folder (data.root=<folder> laid out as "
                            f"<folder>/{d.train_split}/<class>/<image>; data.num_classes is then counted from it)")
        elif missing:
            problems.append("data.num_classes=???: must be set (data.num_classes=...), or set data.root to a "
                            "local dataset to count its classes")
        return
    classes, where = None, ""
    if (root / "dataset_dict.json").exists():
        classes = _saved_classes(root, d.train_split, d.label_column)
        where = f"the {d.label_column!r} ClassLabel of {root / d.train_split}"
    elif d.source == "imagefolder":
        if not root.is_dir():
            problems.append(f"data.root={root}: not a folder (expected {root}/{d.train_split}/<class>/<image>)")
            return
        classes = image_folder_classes(root, d.train_split)
        base = root / d.train_split if (root / d.train_split).is_dir() else root
        where = f"the class folders of {base}"
        if len(classes) < 2:
            found = f"1 class folder ({classes[0]})" if classes else "no class folder holding images"
            problems.append(f"data.root={root}: {base} has {found}; image classification needs at least 2 classes, "
                            f"laid out as {root}/{d.train_split}/<class>/<image>")
            return
    if classes is None:
        if missing:
            problems.append("data.num_classes=???: must be set (data.num_classes=...)")
        return
    if missing:
        with read_write(d), open_dict(d):
            d.num_classes = len(classes)
    elif isinstance(d.num_classes, int) and d.num_classes < len(classes):
        problems.append(f"data.num_classes={d.num_classes} but data.root={root} has {len(classes)} classes ({where}); "
                        f"set data.num_classes={len(classes)} or leave it unset (???) to infer it")


# --- the pass -----------------------------------------------------------------------------------------------
def validate(cfg) -> None:
    """Check a composed config before a run starts; raise one ConfigError listing every problem.

    Sets ``cfg.data.num_classes`` when it is missing and the data are a local image folder (or a saved
    dataset with a ClassLabel column).
    """
    problems: list[str] = []
    pairing = _pairing(cfg)
    if pairing:
        problems.append(pairing)
    else:
        resolve_data(cfg, problems)
    skip = {"data.num_classes"} if any(p.startswith(("data.num_classes", "data.root")) for p in problems) else set()
    problems += _missing(cfg, skip)
    n_range = len(problems)
    _check_node(cfg, "", _rules(), problems)
    if not pairing and len(problems) == n_range:
        _cross_checks(cfg, problems)
    if problems:
        raise ConfigError("; ".join(problems))


# --- memory -------------------------------------------------------------------------------------------------
GiB = 2**30


def _bytes(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


def _count(n: float) -> str:
    return next(f"{n / d:.3g}{u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1, "")) if n >= d or d == 1)


def _cgroup_available() -> Optional[int]:
    """Memory left under this process's cgroup (v2) limit, if it has one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_memory(device) -> tuple[int, str]:
    """(bytes available for a new model on `device`, a description): free GPU memory on CUDA; MemAvailable (and
    the cgroup limit) on CPU."""
    import torch
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"is free on GPU {device}"
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            import psutil
            avail = int(psutil.virtual_memory().available)
        except ImportError:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = _cgroup_available()
    return (min(avail, cgroup) if cgroup is not None else avail), "of CPU memory is available"


def training_bytes(cfg) -> tuple[int, int]:
    """(parameters, bytes one rank needs to train them) from a meta-device build: weights, gradients and AdamW's
    two moments (4 copies of the parameters, fp32 master weights under autocast), plus one for an EMA.
    Activations are not counted: the estimate is a lower bound."""
    import torch

    from dyt.models import build_model
    with torch.device("meta"):
        model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    copies = 4 + (1 if cfg.trainer.get("ema_decay") else 0)
    return n, param_bytes * copies


def check_model_fits(cfg, device, world_size: int = 1) -> None:
    """Stop with one line when training this model cannot fit in `device`'s memory.

    Each rank holds a full replica (DDP), so `world_size` does not shrink the per-rank need; on CPU the ranks
    of one machine (LOCAL_WORLD_SIZE) share its memory.
    """
    import torch
    device = torch.device(device)
    n, need = training_bytes(cfg)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    total = need * max(1, local)
    avail, where = available_memory(device)
    if total <= avail:
        return
    per_param = need // max(n, 1)
    ema = ", an EMA copy" if cfg.trainer.get("ema_decay") else ""
    ranks = f", x {local} ranks on this machine" if local > 1 else ""
    raise ConfigError(
        f"model {cfg.model.get('name')} needs about {_bytes(total)} to train ({_count(n)} parameters x "
        f"{per_param} bytes: fp32 weights, gradients, AdamW's two moments{ema}{ranks}; activations not counted) "
        f"but only {_bytes(avail)} {where} (world size {world_size}, a full copy per rank); use a smaller "
        "model (model=...), shard it with FSDP over more ranks, or a device with more memory")
