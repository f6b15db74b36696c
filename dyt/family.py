"""A model family is the unit of extension: one `Family` knows everything the shared code asks about it.

The trainer, ``dyt.validate``, ``dyt.plan``, the parallel wrapper, the run directory's resume check and ``eval.py``
ask the family; none of them names one. A family lives in its own folder (``dyt/families/<name>/``) and is added
with one line in ``dyt/families/__init__.py`` (or, outside the package, one ``register_family`` call)::

    register_family(Family(name="mlp", build=build_mlp, task=ClassificationTask, data_kinds=("images",),
                           schemas={"mlp": MLPConfig}))

Built on torchtitan's model spec, adapted to our tasks. Only the standard library, torch and Hydra's ConfigStore
are imported here: a family's folder imports this module, never the other way round.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch.nn as nn
from hydra.core.config_store import ConfigStore

from dyt.errors import ConfigError

#: ``(container, index, block)`` of each repeated block: the units of FSDP sharding and activation checkpointing
Blocks = list[tuple[nn.Module, int, nn.Module]]


def indexed(container: nn.Module) -> Blocks:
    """The blocks of one nn.ModuleList / nn.Sequential as ``(container, index, block)``."""
    return [(container, i, b) for i, b in enumerate(container)]


@dataclass
class Shape:
    """What the planner's activation formula needs of a Transformer (per sample: `seq` tokens of width `hidden`)."""
    layers: int
    hidden: int
    heads: int
    ffn: int
    seq: int
    glu: bool = False  # SwiGLU MLP (LLaMA)
    adaln: bool = False  # adaLN modulation and gates (DiT)
    kv_ratio: float = 1.0  # K/V heads / heads as SDPA sees them
    head_elems: float = 0.0  # activations outside the blocks, in s*h elements per sample
    head_bytes_per_token: float = 0.0  # LM loss: fp32 log-softmax output + its gradient (8 x vocab)
    tokens: bool = False  # a step is counted in tokens (language models), else in samples
    embedding_params: int = 0  # reported apart (an LM's "non-embedding parameters")


@dataclass(frozen=True)
class Evaluation:
    """An evaluation ``eval.py`` offers for a family's runs, beyond its task's own validation metrics.

    `add_arguments` adds its command-line options (to an argument group), `requested` says whether the parsed
    arguments ask for it, `run(run_dir, args, overrides, checkpoint)` returns its metrics."""
    name: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    requested: Callable[[argparse.Namespace], bool]
    run: Callable[..., dict]


@dataclass(frozen=True)
class Family:
    name: str  # the value of model.family
    build: Callable[[Any, Any, Any], nn.Module]  # (model_cfg, norm_cfg, data_cfg) -> the model
    task: Callable[[Any, Any], Any]  # (cfg, dist) -> a dyt.tasks.base.Task: a Task subclass, or a function that picks
    # one (by the data kind: pre-training vs fine-tuning on labels)
    data_kinds: tuple[str, ...]  # the KIND of each data schema it trains on (dyt.config.DATA_SCHEMAS or its own)
    schemas: Mapping[str, type] = field(default_factory=dict)  # its model schemas by config name (schema_llama)
    # data schemas of its own by config name (schema_audio): a dataclass with ``KIND`` (a new data kind) and
    # ``WORDS`` = (what it is, how to choose one) for the pairing error, as dyt.config's shared data schemas have
    data_schemas: Mapping[str, type] = field(default_factory=dict)
    blocks: Optional[Callable[[nn.Module], Blocks]] = None  # None: no repeated blocks (no FSDP / AC)
    shape: Optional[Callable[[nn.Module, Any], Shape]] = None  # (meta model, cfg) -> Shape; None: no activation model
    check: Optional[Callable[[Any], list[str]]] = None  # constraints between fields of a composed config
    resume_keys: tuple[str, ...] = ()  # key patterns that may change when a run resumes (how samples are drawn)
    evals: tuple[Evaluation, ...] = ()
    # a pre-training family's weights as a timm ViT's state dict (MAE's encoder, DINO's teacher backbone): what
    # another run's ``trainer.init_from`` loads from its checkpoints. None: its runs cannot seed a fine-tuning.
    backbone: Optional[Callable[[Mapping[str, Any]], dict]] = None


def lazy(module: str, name: str) -> Callable:
    """``module.name``, imported at its first call. A family's registry line names its builder, task and
    evaluations so: registering every family then imports no model code (timm and torchvision cost ~4 s of CPU
    per process), and a mistyped config is refused in the time it takes to import torch."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    call.__qualname__ = call.__name__ = f"{module}.{name}"
    return call


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make `family` known to every shared module and its schemas to Hydra (``defaults: [<schema name>]``)."""
    cs = ConfigStore.instance()
    for group, named in (("model", family.schemas), ("data", family.data_schemas)):
        for name, schema in named.items():
            if not dataclasses.is_dataclass(schema):
                raise TypeError(f"family {family.name}: schema {name} is not a dataclass")
            if group == "data" and not (hasattr(schema, "KIND") and hasattr(schema, "WORDS")):
                raise TypeError(f"family {family.name}: data schema {name} needs the class attributes KIND and WORDS")
            cs.store(group=group, name=name, node=schema)
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; choose one of: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def families() -> dict[str, Family]:
    """Every registered family by name."""
    return dict(_FAMILIES)


def family_data_schemas() -> list[type]:
    """The data schemas the registered families brought (each once)."""
    return list(dict.fromkeys(s for f in _FAMILIES.values() for s in f.data_schemas.values()))
