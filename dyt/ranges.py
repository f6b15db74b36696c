"""Accepted ranges of numeric config fields, kept beside the fields they constrain::

    lr: float = ranged(1e-3, NONNEG)
    betas: List[float] = ranged_list(lambda: [0.9, 0.999], NumList(FRACTION, 2))

``range_of(field)`` reads a field's rule back; ``dyt.validate`` checks every schema's fields with it, whatever
module (a family's folder, a test) declares the schema. Standard library only: any schema module can import it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

KEY = "dyt.range"  # the dataclass field metadata key


@dataclass(frozen=True)
class Num:
    """An accepted numeric range: ``lo <(=) value <(=) hi``; integers only with `integer`; null with `optional`."""
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False  # value > lo (else >=)
    hi_open: bool = False  # value < hi (else <=)
    integer: bool = False
    optional: bool = False  # null is accepted (the option is off / inferred)
    words: tuple = ()  # strings accepted besides numbers (norm.alpha_init: "auto")

    def accepts(self, v: Any) -> bool:
        if v is None:
            return self.optional
        if isinstance(v, str):
            return v in self.words
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
        return (f"{kind} {rng}".strip() + "".join(f' or "{w}"' for w in self.words)
                + (" or null" if self.optional else ""))


@dataclass(frozen=True)
class NumList:
    """A list of numbers, each accepted by `item`; `length` = a fixed length, or the name of the sibling key
    that gives it (``in_chans`` for mean/std). `item` may itself be a NumList of a fixed length: a list of lists
    (wav2vec 2.0's conv layers, [channels, kernel, stride] each)."""
    item: "Num | NumList"
    length: Any = None

    def accepts(self, v: Any, n: Optional[int] = None) -> bool:
        """`v` is a list of `n` items (any number when None), each accepted by `item`."""
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
            return False
        inner = (lambda x: self.item.accepts(x, self.item.length)) if isinstance(self.item, NumList) else self.item.accepts
        return (n is None or len(v) == n) and all(inner(x) for x in v)

    def describe(self, n: Optional[int]) -> str:
        if isinstance(self.item, NumList):
            count = "" if n is None else f"{n} "
            return f"a list of {count}lists, each {self.item.describe(self.item.length)}"
        each = self.item.describe().removeprefix("a finite number").strip()
        if n is None:
            return f"a list of numbers{', each ' + each if each else ''}"
        tail = (", each " if n > 1 else " ") + each if each else ""
        return f"a list of {n} number{'s' if n != 1 else ''}{tail}"


def integer(lo=None, **kw) -> Num:
    return Num(lo=lo, integer=True, **kw)


SEED = integer(-(2**62), hi=2**62)  # torch's generators take 64 bits; seed + rank and the seed mixes stay inside
COUNT = integer(1)  # sizes, steps, intervals: >= 1
OPT_COUNT = integer(1, optional=True)
MAX_STEPS = 10**9  # no real run takes more optimizer steps (Table 4: 47,684); more is a typo that would train forever
STEPS = integer(1, hi=MAX_STEPS)
OPT_STEPS = integer(1, hi=MAX_STEPS, optional=True)
NONNEG_INT = integer(0)
POSITIVE = Num(0, lo_open=True)  # eps, alpha0, std: > 0
ALPHA_INIT = Num(0, lo_open=True, words=("auto",))  # alpha0 > 0, or "auto" (dyt.nn.alpha_auto)
OPT_POSITIVE = Num(0, lo_open=True, optional=True)
NONNEG = Num(0)
OPT_NONNEG = Num(0, optional=True)
PROB = Num(0, 1)  # probabilities: [0, 1]
FRACTION = Num(0, 1, hi_open=True)  # [0, 1): decays, drop rates, label smoothing


def ranged(default: Any, rule: Num | NumList):
    """A dataclass field with a default and its accepted range."""
    return dataclasses.field(default=default, metadata={KEY: rule})


def ranged_list(factory: Callable[[], list], rule: NumList):
    """A list-valued dataclass field (a default factory) with its accepted range."""
    return dataclasses.field(default_factory=factory, metadata={KEY: rule})


def range_of(f: dataclasses.Field) -> Num | NumList | None:
    return f.metadata.get(KEY)


def rules(schema: type) -> dict[str, Num | NumList]:
    """``{field name: rule}`` of a schema dataclass (fields without a rule are not numeric options)."""
    return {f.name: r for f in dataclasses.fields(schema) if (r := range_of(f)) is not None}
