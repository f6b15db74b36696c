"""One validation pass over a composed config, before anything is built or trained.

``validate(cfg)`` checks every numeric option against the accepted range declared beside its schema field
(``dyt.ranges.ranged``: the shared schemas in ``dyt.config``, each family's in its folder), mandatory values, that
the model's family trains on this kind of data, and the constraints between fields (shared ones here, a family's
own in ``Family.check``); it resolves what can be inferred (an image folder's class count) and raises ONE
``ConfigError`` whose message lists every problem found, e.g.::

    trainer.batch_size=-8: must be an integer >= 1; optim.lr=nan: must be a finite number >= 0

No family is named here: everything family-specific comes from its ``dyt.family.Family``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from dyt.config import (AC_MODES, DATA_SCHEMAS, INITS, PARALLEL, REDUCE_DTYPE_NAMES, LauncherConfig, LoggerConfig,
                        NormConfig, OptimConfig, TrainConfig, TrainerConfig)
from dyt.data.vision import image_folder_classes
from dyt.errors import ConfigError
from dyt.family import Family, families, family_data_schemas, get_family
from dyt.hydra_errors import did_you_mean
from dyt.nn import NORM_FREE, NORM_KINDS
from dyt.progress import LEGACY as LEGACY_PROGRESS
from dyt.progress import MODES as PROGRESS_MODES
from dyt.ranges import COUNT, NumList, rules

SHARED_SCHEMAS = (TrainConfig, NormConfig, OptimConfig, TrainerConfig, LoggerConfig, LauncherConfig, *DATA_SCHEMAS)


def schemas() -> list[type]:
    """Every schema dataclass a config can hold: the shared ones, every registered family's, and the schemas
    nested in their fields (data.augment, model.diffusion)."""
    found: list[type] = []
    todo = [*SHARED_SCHEMAS, *(s for f in families().values() for s in f.schemas.values()), *family_data_schemas()]
    while todo:
        cls = todo.pop(0)
        if cls in found:
            continue
        found.append(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                todo.append(type(default))
    return found


# --- walking the config -------------------------------------------------------------------------------------
def schema_of(node: DictConfig, candidates: Optional[list[type]] = None) -> Optional[type]:
    """The node's schema dataclass; for an untyped node (a saved config.yaml) the schema whose fields cover it."""
    t = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(t):
        return t
    keys = set(node.keys())
    best = [(len(keys & names), cls) for cls in (candidates or schemas())
            for names in [{f.name for f in dataclasses.fields(cls)}] if keys and keys <= names]
    return max(best, key=lambda x: x[0])[1] if best else None


def _fmt(v: Any) -> str:
    if isinstance(v, (ListConfig, list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "null" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _check_node(node: DictConfig, prefix: str, problems: list[str]) -> None:
    cls = schema_of(node)
    own = rules(cls) if cls else {}
    if cls is not None and dataclasses.is_dataclass(cls):  # a key forced in with ++key= / +key= is a typo, not a setting
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in node.keys():
            if key not in fields:
                where = prefix.rstrip(".") or "the config"
                problems.append(f"{prefix}{key} is not a setting of {where}{did_you_mean(str(key), fields, prefix)}")
    for key, rule in own.items():
        if key not in node or OmegaConf.is_missing(node, key):
            continue  # missing mandatory values are reported once, by _missing
        try:
            v = node[key]
        except Exception as e:  # a broken interpolation
            problems.append(f"{prefix}{key}: {str(e).splitlines()[0]}")
            continue
        if isinstance(rule, NumList):
            n = rule.length if isinstance(rule.length, int) else node.get(rule.length) if rule.length else None
            if isinstance(rule.length, str) and not own.get(rule.length, COUNT).accepts(n):
                n = None  # the sibling that gives the length is itself wrong (and reported)
            if not rule.accepts(v, n if isinstance(n, int) else None):
                what = rule.describe(n if isinstance(n, int) else None)
                why = f" ({rule.length}={n})" if isinstance(rule.length, str) else ""
                problems.append(f"{prefix}{key}={_fmt(v)}: must be {what}{why}")
        elif not rule.accepts(v):
            problems.append(f"{prefix}{key}={_fmt(v)}: must be {rule.describe()}")
    for key in node.keys():  # nested schemas (data.augment)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _check_node(node[key], f"{prefix}{key}.", problems)


def _missing(cfg: DictConfig, skip: set[str]) -> list[str]:
    return [f"{k}=???: must be set ({k}=...)" for k in sorted(OmegaConf.missing_keys(cfg)) if k not in skip]


# --- family / data pairing ----------------------------------------------------------------------------------
def _choice(cfg, group: str) -> str:
    """`group=<config name>` as the user typed it (Hydra's choice), else `group.name=<name>`."""
    try:
        return f"{group}={HydraConfig.get().runtime.choices[group]}"
    except Exception:
        return f"{group}.name={cfg[group].get('name')}"


def data_schemas() -> list[type]:
    """Every data schema: the shared ones and those the families brought."""
    return [*DATA_SCHEMAS, *family_data_schemas()]


def data_kind(data: DictConfig) -> Optional[str]:
    """The KIND of the data config's schema (images | latents | text | a family's own), or None when no data
    schema fits it."""
    cls = schema_of(data, data_schemas())
    return getattr(cls, "KIND", None)


def kind_words(kind: str) -> tuple[str, str]:
    """(what a data kind is, how to choose one): the words of a pairing error."""
    return next(s.WORDS for s in data_schemas() if s.KIND == kind)


def _pairing(cfg) -> Optional[str]:
    if OmegaConf.is_missing(cfg.model, "family"):
        return None  # reported by _missing
    name = cfg.model.get("family")
    try:
        family = get_family(name)
    except ConfigError:
        return f"model.family={name}: unknown model family; choose one of: {', '.join(sorted(families()))}"
    have = data_kind(cfg.data)
    if have is None or have in family.data_kinds:
        return None
    need = family.data_kinds[0]
    (need_what, need_how), (have_what, _) = kind_words(need), kind_words(have)
    return (f"{_choice(cfg, 'model')} (family {name}) needs {need_what} ({need_how}); "
            f"{_choice(cfg, 'data')} is {have_what}")


NAMED_KEYS = ("run_name", "sweep_name", "model.name", "norm.name", "data.name")  # they name run directories


def _name_checks(cfg, problems: list[str]) -> None:
    """Names that become folder names stay one folder inside runs/ / multirun/: no '/', no '..', not too long."""
    for key in NAMED_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str):
            continue
        if "/" in value or "\\" in value or value in (".", "..") or value.startswith(".."):
            problems.append(f"{key}={value}: a name, not a path (it becomes a folder inside runs/ or multirun/)")
        elif len(value.encode()) > 120:
            problems.append(f"{key}: {len(value.encode())} bytes long; at most 120 (it becomes a folder name)")


def _cross_checks(cfg, problems: list[str]) -> None:
    """Constraints between keys (each reported only when its keys passed their own ranges): the shared ones, then
    the family's own (``Family.check``)."""
    t, m = cfg.trainer, cfg.model
    if t.get("max_steps", 0) is None and t.get("epochs", 0) is None:
        problems.append("trainer.max_steps=null and trainer.epochs=null: set one of them (the run's length)")
    _parallel_checks(t, problems)
    _progress_check(t, problems)
    _logger_check(cfg.get("logger"), problems)
    _norm_check(cfg.norm.get("name"), m, problems)
    _sigma_reparam_check(cfg.norm.get("name"), t, problems)
    if cfg.optim.get("name") == "muon" and t.get("parallel", "ddp") != "ddp":
        # Newton-Schulz orthogonalises a whole matrix; an FSDP shard is a slice of one (not implemented here)
        problems.append(f"optim=muon with trainer.parallel={t.parallel}: Muon needs each weight matrix whole; "
                        "use trainer.parallel=ddp")
    family: Family = get_family(m.family)
    if family.check is not None:
        problems += family.check(cfg)


def _norm_check(name: str, m, problems: list[str]) -> None:
    """norm= names a kind of build_norm, a normalization-free method (NORM_FREE), or the norm a timm model is built
    with (kept: the baseline)."""
    native = m.get("norm_sites") if "norm_sites" in m else None
    if name not in NORM_KINDS and name not in NORM_FREE and name != native:
        kinds = sorted(NORM_KINDS) + sorted(NORM_FREE) + ([native] if native and native not in NORM_KINDS else [])
        problems.append(f"norm={name}: unknown norm for {m.get('name')}; choose one of: {', '.join(kinds)}")


def _sigma_reparam_check(name: str, t, problems: list[str]) -> None:
    """sigmaReparam's gamma and power-iteration vector come from the built weights, and each training forward
    stores one power step: no in-place shard initialisation, no recomputed forward."""
    if name != "sigma_reparam":
        return
    if t.get("init", "exact") == "meta":
        problems.append("norm=sigma_reparam with trainer.init=meta: its gamma and power-iteration vector come from "
                        "the initial weights, which shards initialised in place never hold; use trainer.init=exact")
    if t.get("activation_checkpointing", "none") != "none":
        problems.append("norm=sigma_reparam with trainer.activation_checkpointing: the recomputed forward would take "
                        "a second power-iteration step; use trainer.activation_checkpointing=none")


LOGGER_MODES = ("online", "offline", "disabled")  # wandb's


def _logger_check(lg, problems: list[str]) -> None:
    if lg is not None and lg.get("mode", "disabled") not in LOGGER_MODES:
        problems.append(f"logger.mode={lg.get('mode')}: unknown; choose one of: {', '.join(LOGGER_MODES)}")


def _progress_check(t, problems: list[str]) -> None:
    if t.get("progress", "auto") not in (*PROGRESS_MODES, *LEGACY_PROGRESS):
        problems.append(f"trainer.progress={t.get('progress')}: unknown; choose one of: {', '.join(PROGRESS_MODES)}")


def _parallel_checks(t, problems: list[str]) -> None:
    """trainer.parallel / init / activation_checkpointing / reduce_dtype: known names, and combinations that can run."""
    choices = {"parallel": PARALLEL, "init": INITS, "activation_checkpointing": AC_MODES,
               "reduce_dtype": REDUCE_DTYPE_NAMES}
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
def _saved_classes(root: Path, split: str, column: str) -> Optional[list[str]]:
    """ClassLabel names of a `save_to_disk` copy, from its dataset_info.json (no data read)."""
    info = root / split / "dataset_info.json"
    try:
        feature = json.loads(info.read_text())["features"][column]
    except Exception:
        return None
    return list(feature["names"]) if feature.get("_type") == "ClassLabel" and "names" in feature else None


def resolve_data(cfg, problems: list[str]) -> None:
    """Sets a missing data.num_classes from a local dataset's classes; checks an explicit one against them."""
    d = cfg.data
    if data_kind(d) not in ("images", "latents"):
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
    _name_checks(cfg, problems)
    n_range = len(problems)
    _check_node(cfg, "", problems)
    if not pairing and len(problems) == n_range:
        _cross_checks(cfg, problems)
    if problems:
        raise ConfigError("; ".join(problems))
