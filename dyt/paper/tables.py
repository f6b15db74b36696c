"""The paper's tables as data (arXiv 2503.10622 v1, "Transformers without Normalization"; PAPER.md), and the Derf
follow-up's LN / DyT / Derf rows (arXiv 2512.10938). The one place the repo keeps the paper's numbers.

A cell's `overrides` run it (`python train.py <overrides>`) and its `match` recognises our runs of it by their
resolved config.yaml. A cell that re-uses another table's run (T10's LayerNorm ViT-B is T1's) is that cell.
"""
from __future__ import annotations

from dyt.data.genomic_benchmarks import TASKS
from dyt.paper.suite import SuiteAverage
from dyt.paper.schema import (ALPHA_GRID, BENCHMARK, SPEED, Cell, Grid, Metric, Row, Table, run_cell, run_row,
                              values_of)

TOP1 = Metric("val/top1", True, ema="val_ema/top1", label="top-1 (%)")
FID = Metric("val/fid", False, ema="val_ema/fid", label="FID-50K")  # eval.json (python eval.py <run> --fid 50000)
ZERO_SHOT = Metric("lm_eval/avg", True, label="avg zero-shot score")  # eval.json (eval.py <run> --tasks paper15)
TRAIN_LOSS = Metric("train/loss", False, label="final train loss")
VAL_LOSS = Metric("val/loss", False, label="val loss")
DNA_ACC = Metric("val/top1", True, label="GenomicBenchmarks avg test accuracy (%)")  # the cell aggregates (T6)
SECONDS = Metric("time_s", False, label="time (s)")
# The paper's job sizes (configs/launcher): ImageNet classification 8 nodes x 8 GPUs (DyT README), DiT and the
# torchvision CNN recipe one node of 8, LLaMA 7B/13B 64 x 8 and 34B/70B 128 x 8 (the released LLaMA commands).
IMAGENET, NODE, LLAMA = "slurm_8x8", "node8", {"7b": "slurm_64x8", "13b": "slurm_64x8", "34b": "slurm_128x8",
                                               "70b": "slurm_128x8"}

LN_DYT = {"layernorm": "LayerNorm", "dyt": "DyT"}
MAE_DINO = "MAE / DINO self-supervised pre-training is not implemented (no masked-image or self-distillation task)"
# wav2vec 2.0: Base on 8 x 8 GPUs, Large on 16 x 8 (the DyT repo's wav2vec2 README commands)
W2V_JOBS = {"base": "slurm_8x8", "large": "slurm_16x8"}

T1 = Table("table1", "Supervised classification on ImageNet-1K", (TOP1,), LN_DYT, reference="layernorm", rows=tuple(
    run_row(label, (TOP1,), f"table1_{model}", {"table": "table1", "model.name": model}, {"layernorm": ln, "dyt": dyt},
            IMAGENET)
    for label, model, ln, dyt in (("ViT-B", "vit_b", 82.3, 82.5), ("ViT-L", "vit_l", 83.1, 83.6),
                                  ("ConvNeXt-B", "convnext_b", 83.7, 83.7), ("ConvNeXt-L", "convnext_l", 84.3, 84.4))))

# Table 2 is two runs per cell: the pre-training (the MAE / DINO family's experiment), then the fine-tuning
# (facebookresearch/mae's recipe, configs/experiment/table2_*_ft.yaml) from it: `Cell.pretrain`. The released code
# fine-tunes every pre-trained encoder as a LayerNorm ViT (finetune_norm=released: DyT's weight/bias go into the
# LayerNorms, alpha is dropped; dyt/init_from.py), so the paper's DyT values are such runs; `dyt_pretrain` keeps
# DyT in the fine-tuning (finetune_norm=pretrain), which the paper does not report.
FINETUNED = {"layernorm": "LayerNorm", "dyt": "DyT (fine-tuned as released: LayerNorm)",
             "dyt_pretrain": "DyT (fine-tuned with DyT)"}
FT_NOTE = ("Each cell is a pre-training run, then a fine-tuning run from it (`trainer.init_from`); the column is the "
           "pre-training's norm. As released (the DyT repo sends MAE and DINO fine-tuning to the unpatched "
           "facebookresearch/mae main_finetune.py), a DyT encoder is fine-tuned as a LayerNorm ViT "
           "(`finetune_norm=released`): that reproduces the paper's cells. `finetune_norm=pretrain` keeps DyT.")
# a pre-training experiment, its family, the fine-tuning experiment, what tells its runs apart, and the released
# pre-training job: MAE 8 x 8 GPUs (PRETRAIN.md), DINO B/16 4 x 8, B/8 22 x 8 (the DyT DINO README's commands).
# Every fine-tuning is MAE's FINETUNE.md job: 4 nodes x 8 GPUs x 32 = 1024.
MAE_B = ("table2_mae_vit_b", "mae", "table2_mae_vit_b_ft", {"model.name": "vit_b"}, IMAGENET)
MAE_L = ("table2_mae_vit_l", "mae", "table2_mae_vit_l_ft", {"model.name": "vit_l"}, IMAGENET)
DINO_B16 = ("table2_dino_vit_b16", "dino", "table2_dino_vit_b16_ft", {"model.name": "vit_b", "model.patch_size": None},
            "slurm_4x8")
DINO_B8 = ("table2_dino_vit_b8", "dino", "table2_dino_vit_b8_ft", {"model.name": "vit_b", "model.patch_size": 8},
           "slurm_22x8")
FINETUNE_JOB = "slurm_4x8"


def finetuned(value, stages: tuple, norm: str, finetune_norm: str = "released", tuned: tuple[str, ...] = (),
              table: str = "table2", match: dict | None = None) -> Cell:
    """Pre-train with `norm` (and the `tuned` overrides, tagged `table`), then fine-tune by `finetune_norm`; `match`:
    more keys that tell this cell's runs apart (e.g. the pre-training's lr, ``init_from.lr``)."""
    pretrain, family, finetune, model, job = stages
    pre = Cell(overrides=(f"experiment={pretrain}", f"norm={norm}", *tuned, *((f"table={table}",) if tuned else ())),
               launcher=job)
    # from a LayerNorm pre-training both fine-tuning norms are LayerNorm: either run is the cell's
    how = ("released", "pretrain") if norm == "layernorm" else finetune_norm
    return Cell(paper=values_of((TOP1,), value) if value is not None else {},
                overrides=(f"experiment={finetune}", *(("finetune_norm=pretrain",) if finetune_norm == "pretrain" else ())),
                match={"table": "table2", **model, "finetune_norm": how, "init_from.family": family,
                       "init_from.norm": norm, "init_from.table": table, **(match or {})},
                launcher=FINETUNE_JOB, pretrain=pre)


def finetuned_row(label: str, stages: tuple, ln: float, dyt: float) -> Row:
    return Row(label, {"layernorm": finetuned(ln, stages, "layernorm"), "dyt": finetuned(dyt, stages, "dyt"),
                       "dyt_pretrain": finetuned(None, stages, "dyt", "pretrain")})


T2 = Table("table2", "Self-supervised learning on ImageNet-1K (fine-tuned top-1)", (TOP1,), FINETUNED,
           reference="layernorm", notes=FT_NOTE, rows=(
    finetuned_row("MAE ViT-B", MAE_B, 83.2, 83.2),
    finetuned_row("MAE ViT-L", MAE_L, 85.5, 85.4),
    finetuned_row("DINO ViT-B/16", DINO_B16, 83.2, 83.4),
    finetuned_row("DINO ViT-B/8", DINO_B8, 84.1, 84.5),
))

T3 = Table("table3", "Diffusion Transformers on ImageNet 256 (FID-50K, lower is better)", (FID,), LN_DYT,
           reference="layernorm", notes="Runs need `data.root=<imagenet256 latents>`; FID: "
           "`python eval.py <run dir> --fid 50000 --fid-ref VIRTUAL_imagenet256_labeled.npz` (writes eval.json).",
           rows=tuple(
    run_row(label, (FID,), f"table3_{model}", {"table": "table3", "model.name": model}, {"layernorm": ln, "dyt": dyt},
            NODE)
    for label, model, ln, dyt in (("DiT-B/4", "dit_b4", 64.9, 63.9), ("DiT-L/4", "dit_l4", 45.9, 45.7),
                                  ("DiT-XL/2", "dit_xl2", 19.9, 20.8))))

_LLAMA = (ZERO_SHOT, TRAIN_LOSS)
T4 = Table("table4", "LLaMA pre-training on The Pile (avg zero-shot score over 15 lm-eval tasks / final train loss)",
           _LLAMA, {"rmsnorm": "RMSNorm", "dyt": "DyT"}, reference="rmsnorm",
           notes="Zero-shot score: `python eval.py <run dir> --tasks paper15` (writes eval.json).", rows=tuple(
    run_row(size, _LLAMA, f"table4_{size.lower()}", {"table": "table4", "model.name": f"llama_{size.lower()}"}, values,
            LLAMA[size.lower()])
    for size, values in (("7B", {"rmsnorm": (0.513, 1.59), "dyt": (0.513, 1.60)}),
                         ("13B", {"rmsnorm": (0.529, 1.53), "dyt": (0.529, 1.54)}),
                         ("34B", {"rmsnorm": (0.536, 1.50), "dyt": (0.536, 1.50)}),
                         ("70B", {"rmsnorm": (0.549, 1.45), "dyt": (0.549, 1.45)}))))

T5 = Table("table5", "wav2vec 2.0 pre-training on LibriSpeech (val loss)", (VAL_LOSS,), LN_DYT, reference="layernorm",
           rows=tuple(run_row(f"wav2vec 2.0 {size.title()}", (VAL_LOSS,), f"table5_w2v_{size}",
                              {"table": "table5", "model.name": f"w2v_{size}"}, values, W2V_JOBS[size])
                      for size, values in (("base", {"layernorm": 1.95, "dyt": 1.95}),
                                           ("large", {"layernorm": 1.92, "dyt": 1.91}))))

# Table 6 is a pre-training run (the DNA family's experiment, the Caduceus repo's run_pretrain_*.sh on one node of 8
# GPUs), then the GenomicBenchmarks protocol from it (configs/experiment/table6_*_ft.yaml: one -m sweep of 8 tasks x
# the repo's lr / batch / rc_aug grid x 5 split seeds, one GPU each). The DyT patch converts the model in the repo's
# train.py, which pre-training and fine-tuning share: the fine-tuning keeps the pre-training's norm
# (finetune_norm=pretrain). The cell is dyt.paper.suite's average: per task, the test accuracy at the best
# validation epoch, averaged over the seeds, of the setting with the best mean validation accuracy; then the mean
# over the 8 tasks.
GB_TASKS = tuple(TASKS)
GB_SUITE = SuiteAverage("data.task", GB_TASKS, ("optim.lr", "trainer.batch_size", "data.rc_aug"))
T6_NOTE = ("Each cell: a pre-training run, then `python train.py -m experiment=table6_<model>_ft "
           "trainer.init_from=<its dir> data.root=<GenomicBenchmarks folder>` (8 tasks x the Caduceus repo's lr / "
           "batch / rc_aug grid x 5 split seeds). Ours = mean over the 8 tasks of the test accuracy at the best "
           "validation epoch, averaged over the seeds, of the setting with the best mean validation accuracy "
           "(dyt/paper/suite.py). The released patch converts in the repo's shared train.py, so fine-tuning keeps "
           "the pre-training's norm.")


def gb_suite(value, family: str, norm: str) -> Cell:
    """Pre-train `family` with `norm` (experiment=table6_<family>), then the GenomicBenchmarks sweep from it."""
    pre = Cell(overrides=(f"experiment=table6_{family}", f"norm={norm}"), launcher=NODE)
    return Cell(paper=values_of((DNA_ACC,), value), overrides=(f"experiment=table6_{family}_ft",), sweep=True,
                launcher="default",  # run_genomics_benchmark.sh: one GPU per run
                match={"table": "table6", "model.family": family, "finetune_norm": "pretrain", "data.task": GB_TASKS,
                       "init_from.family": family, "init_from.norm": norm},
                pretrain=pre, aggregate=GB_SUITE)


T6 = Table("table6", "DNA sequence modelling (GenomicBenchmarks avg accuracy)", (DNA_ACC,), LN_DYT,
           reference="layernorm", notes=T6_NOTE, rows=tuple(
    Row(label, {norm: gb_suite(v, family, norm) for norm, v in values.items()})
    for label, family, values in (("HyenaDNA", "hyenadna", {"layernorm": 85.2, "dyt": 85.2}),
                                  ("Caduceus", "caduceus", {"layernorm": 86.9, "dyt": 86.9}))))

# T7 is measured by benchmark scripts, not train runs: the cells carry their command.
_BENCH_LAYERS = "python scripts/bench/norms.py --dtypes bf16"  # one layer at a time, not the 7B's sum
_BENCH_MODEL = ("python scripts/bench/models.py --models llama_7b --norms rmsnorm dyt --seq-len 4096 --batch 1 "
                "--amp bf16 --modes eager")


def _bench(value: float, command: str) -> Cell:
    return Cell(paper=values_of((SECONDS,), value), status=BENCHMARK, command_text=command)


# forward only, as the paper: its rows are rmsnorm and dyt; the script adds folded DyT (dyt.nn.fold) beside them
_INFER_MODEL = "python scripts/bench/inference.py --model llama_7b --seq-len 4096 --passes 100 --dtype bf16"
T7 = Table("table7", "LLaMA 7B speed: 100 passes of one 4096-token sequence, BF16, eager (s)", (SECONDS,),
           {"rmsnorm": "RMSNorm", "dyt": "DyT"}, reference="rmsnorm", kind=SPEED,
           notes="Our benchmarks report their own units (ms per layer call; tokens/s per training step) in "
                 "docs/BENCHMARKS.md; the inference benchmark also times DyT folded into its Linears (dyt.nn.fold). "
                 "The paper's later version: with the norm layers compiled, RMSNorm and DyT "
                 "take the same time.", rows=(
    Row("inference, norm layers", {"rmsnorm": _bench(2.1, _BENCH_LAYERS), "dyt": _bench(1.0, _BENCH_LAYERS)}),
    Row("inference, model", {"rmsnorm": _bench(14.1, _INFER_MODEL), "dyt": _bench(13.0, _INFER_MODEL)}),
    Row("training, norm layers", {"rmsnorm": _bench(8.3, _BENCH_LAYERS), "dyt": _bench(4.8, _BENCH_LAYERS)}),
    Row("training, model", {"rmsnorm": _bench(42.6, _BENCH_MODEL), "dyt": _bench(39.1, _BENCH_MODEL)}),
))

SQUASH = {"dyt_identity": "identity", "dyt": "tanh", "dyt_hardtanh": "hardtanh", "dyt_sigmoid": "sigmoid"}
# tanh with alpha on ViT-B is exactly Table 1's DyT run (table8_vit_b is table1_vit_b): either table's run counts.
_T8_VIT_B = Row("ViT-B", {
    norm: run_cell((TOP1,), v, "table8_vit_b", {"table": ("table8", "table1") if norm == "dyt" else "table8",
                                               "model.name": "vit_b"}, norm, IMAGENET)
    for norm, v in {"dyt_identity": "diverged", "dyt": 82.5, "dyt_hardtanh": 82.2, "dyt_sigmoid": 81.6}.items()},
    (TOP1,))
T8 = Table("table8", "Squashing functions, with alpha (ImageNet-1K top-1)", (TOP1,), SQUASH, reference="dyt", rows=(
    run_row("ViT-S", (TOP1,), "table8_vit_s", {"table": "table8", "model.name": "vit_s"},
            {"dyt_identity": "diverged", "dyt": 80.3, "dyt_hardtanh": 79.9, "dyt_sigmoid": 79.6}, IMAGENET),
    _T8_VIT_B,
))


def _no_alpha(value: float, norm: str) -> Cell:
    return Cell(paper=values_of((TOP1,), value), overrides=("experiment=table9_vit_b", f"norm={norm}"),
                match={"table": "table9", "model.name": "vit_b", "norm.name": norm, "norm.learn_alpha": False},
                launcher=IMAGENET)


T9 = Table("table9", "ViT-B without alpha (alpha fixed at 1; ImageNet-1K top-1)", (TOP1,),
           {"with_alpha": "with alpha (Table 8)", "without_alpha": "without alpha"}, reference="with_alpha", rows=tuple(
    Row(SQUASH[norm], {"with_alpha": T8.cell("ViT-B", norm), "without_alpha": _no_alpha(value, norm)})
    for norm, value in (("dyt", 81.1), ("dyt_hardtanh", 80.7), ("dyt_sigmoid", 80.7))))

TUNED_LR = Cell(paper=values_of((TOP1,), 82.8), overrides=("experiment=table13_vit_b", "norm=dyt"),
                match={"table": "table13", "model.name": "vit_b", "norm.name": "dyt"}, launcher=IMAGENET)
TUNED_ALPHA = Cell(paper=values_of((TOP1,), 82.6), overrides=("experiment=table14_vit_b", "norm=dyt"),
                   match={"table": "table14", "model.name": "vit_b", "norm.name": "dyt"}, launcher=IMAGENET)

def _tuned_table(table_id: str, title: str, tuned: str, notes: str, rows) -> Table:
    """T13 / T14: LayerNorm, DyT with the LayerNorm recipe, DyT tuned."""
    return Table(table_id, title, (TOP1,), {**LN_DYT, "dyt_tuned": tuned}, tuple(rows), reference="layernorm",
                 notes=notes)


def _vit_b_row(tuned: Cell) -> Row:
    return Row("ViT-B", {"layernorm": T1.cell("ViT-B", "layernorm"), "dyt": T1.cell("ViT-B", "dyt"), "dyt_tuned": tuned})


def _mae_row(label: str, stages: tuple, tuned: Cell) -> Row:
    """LayerNorm and DyT are Table 2's cells; the tuned DyT pre-training is its own run, fine-tuned as released."""
    t2 = T2.row(label)
    return Row(label, {"layernorm": t2.cells["layernorm"], "dyt": t2.cells["dyt"], "dyt_tuned": tuned})


def _w2v_row(size: str, table_id: str, value: float) -> Row:
    """LayerNorm and DyT are Table 5's cells; the tuned DyT run is table<N>_w2v_<size>."""
    label = f"wav2vec 2.0 {size.title()}"
    tuned = Cell(paper=values_of((VAL_LOSS,), value), overrides=(f"experiment={table_id}_w2v_{size}", "norm=dyt"),
                 match={"table": table_id, "model.name": f"w2v_{size}", "norm.name": "dyt"}, launcher=W2V_JOBS[size])
    return Row(label, {"layernorm": T5.cell(label, "layernorm"), "dyt": T5.cell(label, "dyt"), "dyt_tuned": tuned},
               (VAL_LOSS,))


# MAE's tuned pre-training lr: 3.2e-3 (the recipe's: blr 1.5e-4 x 4096 / 256 = 2.4e-3)
T13 = _tuned_table("table13", "Learning-rate tuning for DyT", "DyT, tuned lr",
                   "Tuned lr: ViT-B 6e-3 (recipe 4e-3), MAE ViT-B/L 3.2e-3 (the pre-training's; recipe 2.4e-3), "
                   "wav2vec 2.0 Base 6e-4. " + FT_NOTE, (
    _vit_b_row(TUNED_LR),
    _mae_row("MAE ViT-B", MAE_B, finetuned(83.7, MAE_B, "dyt", tuned=("optim.lr=3.2e-3",), table="table13")),
    _mae_row("MAE ViT-L", MAE_L, finetuned(85.8, MAE_L, "dyt", tuned=("optim.lr=3.2e-3",), table="table13")),
    _w2v_row("base", "table13", 1.94)))

T14 = _tuned_table("table14", "alpha0 tuning for DyT", "DyT, alpha0 = 1.0",
                   "Tuned alpha0 = 1.0 for all three (recipe 0.5); MAE's is the pre-training's. " + FT_NOTE, (
    _vit_b_row(TUNED_ALPHA),
    _mae_row("MAE ViT-B", MAE_B, finetuned(83.4, MAE_B, "dyt", tuned=("norm.alpha_init=1.0",), table="table14")),
    _w2v_row("large", "table14", 1.90)))

# Table 10's lr per method. The paper tuned them ("Fixup and SkipInit require significantly lower learning rates to
# prevent training divergence ... we conduct a simple learning rate search for all methods", v1 Sec. 6) but prints
# none: its appendix lists only LN's and DyT's (Table 12 here: T13). These are OURS, not the paper's: sigmaReparam
# the recipe's 4e-3, Fixup and SkipInit 4x lower. A cell recognises its lr (runs of an lr search stay apart).
T10_LR = {"fixup": 1e-3, "skipinit": 1e-3, "sigma_reparam": 4e-3}
# MAE pre-training, on the same rule from its recipe's 2.4e-3: sigmaReparam the recipe's, Fixup / SkipInit 4x lower
T10_MAE_LR = {"fixup": 6e-4, "skipinit": 6e-4, "sigma_reparam": 2.4e-3}
_T10_METHODS = {"fixup": "Fixup", "skipinit": "SkipInit", "sigma_reparam": "sigmaReparam"}


def _norm_free(model: str, kind: str, value: float) -> Cell:
    lr = T10_LR[kind]
    return Cell(paper=values_of((TOP1,), value), overrides=(f"experiment=table10_{model}", f"norm={kind}",
                                                             f"optim.lr={lr:g}"),
                match={"table": "table10", "model.name": model, "norm.name": kind, "optim.lr": lr}, launcher=IMAGENET)


def _mae_norm_free(stages: tuple, kind: str, value: float) -> Cell:
    """MAE pre-training with the method at its lr, then fine-tuning WITH the method (finetune_norm=pretrain): no
    code of these was released, and a LayerNorm fine-tuning would drop what they learned (Fixup's and SkipInit's
    branch scalars, sigmaReparam's gammas)."""
    lr = T10_MAE_LR[kind]
    return finetuned(value, stages, kind, "pretrain", tuned=(f"optim.lr={lr:g}",), table="table10",
                     match={"init_from.lr": lr})


T10 = Table("table10", "DyT against other normalization-free methods (ImageNet-1K top-1)", (TOP1,),
            {"layernorm": "LayerNorm", **_T10_METHODS, "dyt": "DyT"}, reference="layernorm",
            notes="DyT's ViT-B and MAE values are with its tuned lr (Table 13); LayerNorm and DyT ViT-L are Table "
                  "1's runs, MAE LayerNorm Table 2's. Fixup / SkipInit / sigmaReparam run at OUR lrs (ViT 1e-3 / "
                  "1e-3 / 4e-3, MAE pre-training 6e-4 / 6e-4 / 2.4e-3): the paper tuned them but does not publish "
                  "them. Their MAE encoders are fine-tuned with the method itself (finetune_norm=pretrain).",
            rows=(
    Row("ViT-B", {"layernorm": T1.cell("ViT-B", "layernorm"),
                  **{k: _norm_free("vit_b", k, v) for k, v in zip(_T10_METHODS, (77.2, 74.1, 82.5))},
                  "dyt": TUNED_LR}),
    Row("ViT-L", {"layernorm": T1.cell("ViT-L", "layernorm"),
                  **{k: _norm_free("vit_l", k, v) for k, v in zip(_T10_METHODS, (78.1, 75.6, 83.0))},
                  "dyt": T1.cell("ViT-L", "dyt")}),
    *(Row(label, {"layernorm": T2.cell(label, "layernorm"),
                  **{k: _mae_norm_free(stages, k, v) for k, v in zip(_T10_METHODS, others)},
                  "dyt": T13.cell(label, "dyt_tuned")})
      for label, stages, others in (("MAE ViT-B", MAE_B, (73.7, 73.1, 83.2)), ("MAE ViT-L", MAE_L, (74.1, 74.0, 85.4)))),
))


# alpha0 grids: the paper gives the best (attention, other = FFN and final) alpha0 of each model / width.
_T11_CMD = "python train.py -m experiment=table11_alpha model=<llama model>"
# A size's released sharding and checkpointing (table4_<size>.yaml) where the recipe's (HSDP, every other block)
# does not fit an 80 GB GPU: scripts/plan.py, tests/test_plan.py.
SHARDING = {"7b": (), "13b": (), "34b": ("trainer.parallel=fsdp",),
            "70b": ("trainer.parallel=fsdp", "trainer.activation_checkpointing=full")}
# The paper picks each best alpha0 by training loss after 30B tokens (experiment=table11_alpha / table12_alpha).
T11 = Table("table11", "LLaMA alpha0 per model size (best attention / other alpha0, by final train loss)", (TRAIN_LOSS,),
            {"best": "best alpha0 (attention / other)"}, kind=ALPHA_GRID,
            grid=Grid("model.name", {"table": "table11"}, _T11_CMD, "model"), rows=tuple(
    Row(size, {"best": Cell(overrides=("experiment=table11_alpha", f"model=llama_{size.lower()}", *SHARDING[size.lower()]),
                            sweep=True,
                            match={"table": "table11", "model.name": f"llama_{size.lower()}"}, best_alpha=best,
                            launcher=LLAMA[size.lower()])})
    for size, best in (("7B", (0.8, 0.2)), ("13B", (0.6, 0.15)), ("34B", (0.2, 0.05)), ("70B", (0.2, 0.05)))))

_T12_CMD = "python train.py -m experiment=table12_alpha model=<llama model of that width>"
T12 = Table("table12", "LLaMA alpha0 by width (best attention / other alpha0, by final train loss; depth 8..64 agrees)",
            (TRAIN_LOSS,), {"best": "best alpha0 (attention / other)"}, kind=ALPHA_GRID,
            grid=Grid("model.dim", {"table": "table12"}, _T12_CMD, "width", "model.n_layers"), rows=tuple(
    Row(str(width), {"best": Cell(overrides=("experiment=table12_alpha", f"model={model}", *sharding), sweep=True,
                                  match={"table": "table12", "model.dim": width}, best_alpha=best,
                                  launcher=launcher)})
    # The paper gives no job size for these sweeps: with the Table 4 recipe (1024 x 4096 tokens per step, no
    # accumulation), the smallest of our launchers that fits 80 GB per the planner (tests/test_plan.py).
    for width, model, best, sharding, launcher in (
        (1024, "llama_350m", (1.0, 1.0), (), "slurm_8x8"), (2048, "llama_1b", (1.0, 0.5), (), "slurm_64x8"),
        (4096, "llama_7b", (0.8, 0.2), (), "slurm_64x8"),
        (8192, "llama_34b", (0.2, 0.05), ("trainer.parallel=fsdp", "trainer.activation_checkpointing=full"),
         "slurm_128x8"))))

T15 = Table("table15", "DyT replacing BatchNorm in CNNs (ImageNet-1K top-1)", (TOP1,),
            {"batchnorm": "BatchNorm", "dyt": "DyT"}, reference="batchnorm", rows=(
    run_row("ResNet-50", (TOP1,), "table15_resnet50", {"table": "table15", "model.name": "resnet50"},
            {"batchnorm": 76.2, "dyt": 68.9}, NODE),
    run_row("VGG19", (TOP1,), "table15_vgg19", {"table": "table15", "model.name": "vgg19"},
            {"batchnorm": 72.7, "dyt": 71.0}, NODE),
))


def _derf_row(label: str, metric: Metric, model: str, values: dict, launcher: str, paper_table: str | None = None,
              experiment: str | None = None) -> Row:
    """Runs of `experiment` (default derf_<model>: Derf's own settings, in its yaml); LayerNorm and DyT also count
    the DyT paper table's runs of the model (`paper_table`), the values the Derf paper quotes for them."""
    match = {"table": ("derf", paper_table) if paper_table else "derf", "model.name": model}
    return Row(label, {norm: run_cell((metric,), v, experiment or f"derf_{model}", match, norm, launcher)
                       for norm, v in values.items()},
               (metric,))


def _derf_dna_row(label: str, family: str, derf: float) -> Row:
    """LayerNorm and DyT are Table 6's cells (the Derf paper quotes its values); Derf is the same protocol after a
    pre-training with norm=derf (zlab-princeton/Derf, DNA model/dynamic_erf.patch: alpha0 0.5, shift 0)."""
    t6 = T6.row(label)
    return Row(label, {**t6.cells, "derf": gb_suite(derf, family, "derf")}, (DNA_ACC,))


DERF = Table("derf", "Derf follow-up (arXiv 2512.10938): LayerNorm / DyT / Derf", (TOP1,),
             {**LN_DYT, "derf": "Derf"}, reference="layernorm",
             notes="Derf(x) = weight * erf(alpha * x + s) + bias. Each derf_<model> experiment carries Derf's own "
                   "settings (zlab-princeton/Derf): ViT drop path 0.15 / 0.5, DiT-XL alpha0 1.0, DiT-B's blocks "
                   "keep adaLN zero-init, wav2vec 2.0 in fp32 (Base pre-norm), GPT-2 as its nanoGPT patch (alpha0 1.0, a bias per site, an embedding "
                   "scale); LayerNorm and DyT cells also count Table 1 / 3 / 6 runs (the values it quotes). "
                   "Caduceus: Derf's patch gives every converted RMSNorm site a bias; ours has none.",
             rows=(
    _derf_row("ViT-B", TOP1, "vit_b", {"layernorm": 82.3, "dyt": 82.5, "derf": 82.8}, IMAGENET, "table1"),
    _derf_row("ViT-L", TOP1, "vit_l", {"layernorm": 83.1, "dyt": 83.6, "derf": 83.8}, IMAGENET, "table1"),
    _derf_row("DiT-B/4", FID, "dit_b4", {"layernorm": 64.93, "dyt": 63.94, "derf": 63.23}, NODE, "table3"),
    _derf_row("DiT-L/4", FID, "dit_l4", {"layernorm": 45.91, "dyt": 45.66, "derf": 43.94}, NODE, "table3"),
    _derf_row("DiT-XL/2", FID, "dit_xl2", {"layernorm": 19.94, "dyt": 20.83, "derf": 18.92}, NODE, "table3"),
    _derf_row("wav2vec 2.0 Base", VAL_LOSS, "w2v_base", {"layernorm": 1.95, "dyt": 1.95, "derf": 1.93},
              W2V_JOBS["base"], "table5"),
    _derf_row("wav2vec 2.0 Large", VAL_LOSS, "w2v_large", {"layernorm": 1.92, "dyt": 1.91, "derf": 1.90},
              W2V_JOBS["large"], "table5"),
    _derf_dna_row("HyenaDNA", "hyenadna", 85.7),
    _derf_dna_row("Caduceus", "caduceus", 87.3),
    # nanoGPT's job: one node of 8 GPUs (config/train_gpt2.py)
    _derf_row("GPT-2", VAL_LOSS, "gpt2_124m", {"layernorm": 2.94, "dyt": 2.97, "derf": 2.94}, NODE,
              experiment="derf_gpt2"),
))

PAPER_TABLES = (T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14, T15, DERF)
