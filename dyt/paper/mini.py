"""The CPU mini-suite as data (scripts/mini_suite.sh): each mini table miniaturises a paper table on Fashion-MNIST or
pydoc text with tiny models.

It has no paper values of its own: a row shows the values of the paper row it mirrors (`paper_ref`), so the report
puts our LN -> DyT delta beside the paper's, and `claim` says in words what the paper found. Every mini run is
tagged `table: mini`; a run is recognised by its family, norm and whether alpha is learned, not by model name.
"""
from __future__ import annotations

from dataclasses import replace

from dyt.paper.match import FROM_SCRATCH, MISSING
from dyt.paper.schema import ALPHA_GRID, Cell, Grid, Row, Table
from dyt.paper.suite import SuiteAverage
from dyt.paper.tables import DNA_ACC, FINETUNED, LN_DYT, SQUASH, T1, T2, T5, T6, T8, T9, TOP1, VAL_LOSS

MINI = "mini"  # the `table` of every mini-suite run (configs/experiment/_mini_vision.yaml, mini_llama_alpha.yaml)


def _mini_cell(experiment: str, family: str, norm: str, learn_alpha: bool, paper: Cell) -> Cell:
    return Cell(paper=paper.paper, overrides=(f"experiment={experiment}", f"norm={norm}"),
                match={"table": MINI, "model.family": family, "norm.name": norm, **FROM_SCRATCH,
                       **({"norm.learn_alpha": learn_alpha} if norm.startswith("dyt") else {})})


MINI_T1 = Table("mini_t1", "Mini Table 1: LayerNorm vs DyT on Fashion-MNIST", (TOP1,),
                {"layernorm": "LayerNorm", "dyt": "DyT"}, reference="layernorm", paper_table="table1",
                claim="DyT matches LayerNorm: within about half a point on every model (T1: ViT-B +0.2, ViT-L +0.5, "
                      "ConvNeXt-B 0.0, ConvNeXt-L +0.1).", rows=tuple(
    Row(label, {norm: _mini_cell(experiment, family, norm, True, T1.cell(ref, norm)) for norm in ("layernorm", "dyt")},
        paper_ref=f"T1 {ref}")
    for label, experiment, family, ref in (("ViT", "mini_vit", "vit", "ViT-B"),
                                           ("ConvNeXt", "mini_convnext", "convnext", "ConvNeXt-B"))))

MINI_T8 = Table("mini_t8", "Mini Table 8: squashing functions with alpha, on Fashion-MNIST", (TOP1,), SQUASH,
                reference="dyt", paper_table="table8",
                claim="identity diverges; tanh is best, hardtanh and sigmoid a little worse (T8 ViT-S: tanh 80.3, "
                      "hardtanh 79.9, sigmoid 79.6; ViT-B: 82.5, 82.2, 81.6).", rows=(
    Row("ViT", {norm: _mini_cell("mini_vit", "vit", norm, True, T8.cell("ViT-B", norm)) for norm in SQUASH},
        paper_ref="T8 ViT-B"),
))


def _mini_t9_row(norm: str) -> Row:
    """With alpha: the mini_t8 run; without: mini_vit_fixed_alpha. T9 has no identity row: its paper value is T8's."""
    with_alpha = T9.cell(SQUASH[norm], "with_alpha") if norm != "dyt_identity" else T8.cell("ViT-B", norm)
    without = T9.cell(SQUASH[norm], "without_alpha") if norm != "dyt_identity" else Cell()
    return Row(SQUASH[norm], {"with_alpha": replace(MINI_T8.cell("ViT", norm), paper=with_alpha.paper),
                              "without_alpha": _mini_cell("mini_vit_fixed_alpha", "vit", norm, False, without)},
               paper_ref="T9 ViT-B" if norm != "dyt_identity" else "T8 ViT-B")


MINI_T9 = Table("mini_t9", "Mini Table 9: squashing functions without alpha (fixed at 1), on Fashion-MNIST", (TOP1,),
                dict(T9.columns), reference="with_alpha", paper_table="table9",
                claim="alpha helps: without it each function loses 0.9 to 1.5 points (T9 ViT-B: tanh 82.5 -> 81.1, "
                      "hardtanh 82.2 -> 80.7, sigmoid 81.6 -> 80.7).", rows=tuple(_mini_t9_row(n) for n in SQUASH))

# Widths are the suite's choice (scripts/mini_suite.sh: 32 and 128): every width among the runs becomes a row. The
# mini grid uses one alpha0 for every site (alpha_ffn = alpha_attn), so its points lie on the diagonal.
MINI_T12 = Table("mini_t12", "Mini Table 12: best alpha0 by width, tiny LLaMA on pydoc text", (VAL_LOSS,),
                 {"best": "best alpha0 (attention / other)"}, rows=(), kind=ALPHA_GRID, paper_table="table12",
                 grid=Grid("model.dim", {"table": MINI, "model.family": "llama", "norm.name": "dyt"},
                           "python train.py -m experiment=mini_llama_alpha model.dim=<width> (scripts/mini_suite.sh)",
                           "width", "model.n_layers",
                           baseline={"table": MINI, "model.family": "llama", "norm.name": "rmsnorm"}),
                 claim="the best alpha0 shrinks as the model gets wider, whatever the depth (T12: 1024 -> 1.0/1.0, "
                       "2048 -> 1.0/0.5, 4096 -> 0.8/0.2, 8192 -> 0.2/0.05).")



def _mini_finetuned(pretrain: str, family: str, norm: str, finetune_norm: str, paper: Cell) -> Cell:
    """Pre-train with `experiment=<pretrain> norm=<norm>`, then `experiment=mini_finetune` from that run."""
    how = ("released", "pretrain") if norm == "layernorm" else finetune_norm  # from LN both fine-tune with LN
    return Cell(paper=paper.paper, overrides=("experiment=mini_finetune", f"finetune_norm={finetune_norm}"),
                match={"table": MINI, "model.family": "vit", "finetune_norm": how, "init_from.family": family,
                       "init_from.norm": norm},
                pretrain=Cell(overrides=(f"experiment={pretrain}", f"norm={norm}")))


MINI_T2 = Table("mini_t2", "Mini Table 2: self-supervised pre-training, then fine-tuning, on Fashion-MNIST", (TOP1,),
                FINETUNED, reference="layernorm", paper_table="table2",
                claim="DyT matches LayerNorm after MAE and DINO pre-training (T2: MAE ViT-B 83.2 -> 83.2, ViT-L 85.5 "
                      "-> 85.4; DINO ViT-B/16 83.2 -> 83.4, B/8 84.1 -> 84.5), the DyT encoders fine-tuned as "
                      "released (as LayerNorm ViTs).", rows=tuple(
    Row(label, {col: _mini_finetuned(pretrain, family, "layernorm" if col == "layernorm" else "dyt",
                                     "pretrain" if col == "dyt_pretrain" else "released", T2.cell(ref, col))
                for col in FINETUNED}, paper_ref=f"T2 {ref}")
    for label, pretrain, family, ref in (("MAE", "mini_mae", "mae", "MAE ViT-B"), ("DINO", "mini_dino", "dino",
                                                                                 "DINO ViT-B/16"))))



#: Mini Table 5's columns: the norm, and DyT everywhere but after the feature encoder (model.feature_norm=layernorm:
#: the released patch calls a DyT there that it never builds, so the paper's runs may have kept LayerNorm there)
W2V_COLUMNS = {**LN_DYT, "dyt_feature_ln": "DyT, LayerNorm after the feature encoder"}


def _mini_w2v(column: str) -> Cell:
    norm, feature = ("dyt", "layernorm") if column == "dyt_feature_ln" else (column, None)
    return Cell(paper=T5.cell("wav2vec 2.0 Base", norm).paper,
                overrides=("experiment=mini_w2v", f"norm={norm}", *([f"model.feature_norm={feature}"] if feature else [])),
                match={"table": MINI, "model.family": "wav2vec2", "norm.name": norm,
                       "model.feature_norm": (feature,) if feature else (None, MISSING), **FROM_SCRATCH})


MINI_T5 = Table("mini_t5", "Mini Table 5: wav2vec 2.0 pre-training on synthetic speech (val loss, bits)", (VAL_LOSS,),
                W2V_COLUMNS, reference="layernorm", paper_table="table5",
                claim="DyT matches LayerNorm in speech pre-training (T5 val loss: wav2vec 2.0 Base 1.95 -> 1.95, "
                      "Large 1.92 -> 1.91).",
                rows=(Row("wav2vec 2.0", {col: _mini_w2v(col) for col in W2V_COLUMNS}, paper_ref="T5 wav2vec 2.0 Base"),))


#: Mini Table 6's columns: the pre-training's norm, and DyT put in only at fine-tuning (a LayerNorm pre-training,
#: its norms converted to DyT with LayerNorm's weights: what the released HyenaDNA path does, whose fine-tuning loads
#: the LayerNorm checkpoint LongSafari/hyenadna-tiny-1k-seqlen into the converted model)
DNA_COLUMNS = {**LN_DYT, "dyt_ft": "DyT at fine-tuning only (LayerNorm pre-training, as the released HyenaDNA path)"}


def _mini_dna(column: str) -> Cell:
    """Pre-train with `experiment=mini_dna norm=<norm>`, then the 5-seed `experiment=mini_dna_ft` sweep from it;
    the number is Table 6's: the test accuracy at the best validation epoch, averaged over the seeds."""
    pre, ft = ("layernorm", "dyt") if column == "dyt_ft" else (column, column)
    extra = ("finetune_norm=null", "norm=dyt") if column == "dyt_ft" else ()
    return Cell(paper=T6.cell("HyenaDNA", ft).paper, overrides=("experiment=mini_dna_ft", *extra), sweep=True,
                match={"table": MINI, "model.family": "hyenadna", "data.task": "synth",
                       # the pre-training's norm (resolved when the run starts), or norm=dyt put in at fine-tuning
                       **({"finetune_norm": None, "norm.name": ft} if column == "dyt_ft" else {"finetune_norm": "pretrain"}),
                       "init_from.family": "hyenadna", "init_from.norm": pre},
                pretrain=Cell(overrides=("experiment=mini_dna", f"norm={pre}")),
                aggregate=SuiteAverage("data.task", ("synth",), ()))


MINI_T6 = Table("mini_t6", "Mini Table 6: HyenaDNA pre-trained on a synthetic genome, then classifying planted motifs",
                (DNA_ACC,), DNA_COLUMNS, reference="layernorm", paper_table="table6",
                claim="DyT matches LayerNorm on DNA: the GenomicBenchmarks average is unchanged (T6: HyenaDNA 85.2 "
                      "-> 85.2, Caduceus 86.9 -> 86.9).",
                rows=(Row("HyenaDNA", {col: _mini_dna(col) for col in DNA_COLUMNS}, paper_ref="T6 HyenaDNA"),))

MINI_TABLES = (MINI_T1, MINI_T2, MINI_T5, MINI_T6, MINI_T8, MINI_T9, MINI_T12)
