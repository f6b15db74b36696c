"""The plan script (issue 11): parameter counts on meta, the memory arithmetic by hand, the CLI, no allocation."""
from __future__ import annotations

import pytest
import torch

import dyt
from dyt.families import build_model
from dyt.optim import build_optimizer
from dyt.plan import (GIB, compose_with_launcher, count_params, format_plan, layer_activation_bytes, memory,
                      optimizer_bytes_per_param, plan, split_launcher, state_bytes_per_param)
from dyt.paper.schema import RUNNABLE
from dyt.paper.tables import PAPER_TABLES
from conftest import ROOT, compose, run_script

VOCAB = 32000  # configs/data/text_pile.yaml: the LLaMA 2 tokenizer, as the table4_* experiments use


def llama_params(d, L, heads, kv, f, vocab=VOCAB, dyt_norm=True):
    """LLaMA from its architecture: embeddings + output, per layer GQA attention + SwiGLU + 2 norms, final norm.
    DyT adds one alpha per norm site and the embedding scale."""
    hd = d // heads
    layer = 2 * d * d + 2 * d * kv * hd + 3 * d * f + 2 * d
    n = 2 * vocab * d + L * layer + d
    return n + (2 * L + 1 + 1 if dyt_norm else 0)


def vit_params(d=1024, L=24, patch=16, img=224, classes=1000, mlp=4, dyt_norm=True):
    """timm ViT (class token, avg pool + fc_norm): patch conv, cls, positions, blocks, fc_norm, head."""
    tokens = (img // patch) ** 2 + 1
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (mlp * d * d + mlp * d) + (mlp * d * d + d)
    n = 3 * patch * patch * d + d + d + tokens * d + L * block + 2 * d + d * classes + classes
    return n + (2 * L + 1 if dyt_norm else 0)


def dit_params(D=1152, L=28, patch=2, chans=4, classes=1000, mlp=4, dyt_norm=True):
    """DiT (learned sigma, a null class for guidance; fixed sin-cos positions are a buffer, not counted)."""
    out = patch * patch * 2 * chans
    block = (3 * D * D + 3 * D) + (D * D + D) + (mlp * D * D + mlp * D) + (mlp * D * D + D) + (6 * D * D + 6 * D)
    n = (chans * patch * patch * D + D) + (256 * D + D + D * D + D) + (classes + 1) * D + L * block
    n += (2 * D * D + 2 * D) + (D * out + out)
    return n + (2 * L + 1 if dyt_norm else 0)


@pytest.mark.parametrize("cell,expected", [
    ("table4_7b", llama_params(4096, 32, 32, 32, 11008)),
    ("table4_13b", llama_params(5120, 40, 40, 40, 13824)),
    ("table4_34b", llama_params(8192, 48, 64, 8, 22016)),
    ("table4_70b", llama_params(8192, 80, 64, 8, 28672)),
    ("table1_vit_l", vit_params()),
    ("table3_dit_xl2", dit_params()),
])
def test_param_counts_on_meta(cell, expected):
    cfg = compose([f"experiment={cell}"])
    with torch.device("meta"):
        model = dyt.build_model(cfg)
    assert all(p.is_meta for p in model.parameters())
    p = plan(cfg, 8, 8, model=model)
    assert p["params"] == expected
    if cfg.model.family == "llama":
        assert cfg.data.vocab_size == VOCAB
        assert p["non_embedding_params"] == expected - VOCAB * cfg.model.dim
        assert p["tokens_per_step"] == 1024 * 4096


def test_known_published_counts():
    """The formulas above against published totals: LLaMA 2 7B / 13B / 70B and CodeLlama 34B (vocab 32000),
    timm's vit_large_patch16_224, DiT-XL/2 (whose code counts its 256 x 1152 positions as a parameter)."""
    assert llama_params(4096, 32, 32, 32, 11008, dyt_norm=False) == 6_738_415_616
    assert llama_params(5120, 40, 40, 40, 13824, dyt_norm=False) == 13_015_864_320
    assert llama_params(8192, 48, 64, 8, 22016, dyt_norm=False) == 33_743_970_304
    assert llama_params(8192, 80, 64, 8, 28672, dyt_norm=False) == 68_976_648_192
    assert vit_params(dyt_norm=False) == 304_326_632
    assert dit_params(dyt_norm=False) + 256 * 1152 == 675_129_632
    # and the builders agree for the baselines' norms
    cfg = compose(["experiment=table4_7b", "norm=rmsnorm"])
    assert plan(cfg, 1, 8)["params"] == 6_738_415_616


def test_korthikanti_formula():
    """GPT layer (f = 4h, dropout, no flash, 16-bit): s*b*h*(34 + 5*a*s/h) bytes, as the paper."""
    s, b, h, a = 2048, 3, 4096, 32
    got = layer_activation_bytes(s, b, h, a, 4 * h, act_bytes=2, flash=False, dropout=True)
    assert got == pytest.approx(s * b * h * (34 + 5 * a * s / h))
    # ours: flash, no dropout -> 32; SwiGLU with f = 8/3 h -> 2 + 8*8/3 instead of 2 + 16 for the MLP
    assert layer_activation_bytes(s, b, h, a, 4 * h) == s * b * h * 32
    f = 8 * h // 3
    assert layer_activation_bytes(s, b, h, a, f, glu=True) == pytest.approx(s * b * h * (16 + 8 * f / h))


def test_memory_by_hand_7b():
    """7B, AdamW: fp32 params 4 + fp32 grads 4 + moments 8 = 16 B/param ~ 108 GB: not on an 80 GB GPU under DDP,
    whose gradients are views of its buckets (no fifth 4 B/param); FSDP over 64 GPUs: 16 B x N / 64 ~ 1.7 GB."""
    n = llama_params(4096, 32, 32, 32, 11008)
    per = state_bytes_per_param("adamw", ema=False)
    assert per == {"params": 4, "grads": 4, "optimizer": 8, "ema": 0}  # no fp32 master beside fp32 params
    ddp = memory(n, (0, 0), per, "ddp", 8, 8, 0.0)
    assert ddp["total"] == 16 * n and 16 * n > 107e9 > 80 * GIB * 0.9
    assert memory(n, (0, 0), per, "ddp", 1, 1, 0.0)["total"] == 16 * n  # one process: the same
    fsdp = memory(n, (10**8, 2 * 10**8), per, "fsdp", 8, 8, 0.0)
    assert fsdp["params"] + fsdp["grads"] + fsdp["optimizer"] == pytest.approx(16 * n / 64)
    # the root gathered in bf16 + two bf16 copies of the largest block + its fp32 reduce-scatter input
    assert fsdp["gathered"] == 10**8 * 2 + 2 * 10**8 * (2 * 2 + 4)
    assert memory(n, (10**8, 2 * 10**8), per, "fsdp", 8, 8, 0.0, reduce_bytes=2)["gathered"] == 10**8 * 2 + 2 * 10**8 * 6
    assert memory(n, (0, 0), per, "hsdp", 8, 8, 0.0)["total"] == pytest.approx(16 * n / 8)
    assert state_bytes_per_param("sgd")["optimizer"] == 4  # SGD keeps one momentum buffer

    p = plan(compose(["experiment=table4_7b"]), 8, 8, gpu_mem_gib=80)
    assert p["micro_batch"] == 1024 // 64 and p["world"] == 64
    rows = {(r["strategy"], r["ac"]): r for r in p["rows"]}
    assert not any(r["fits"] for (s, _), r in rows.items() if s == "ddp")
    s, b, h, f = 4096, 16, 4096, 11008  # full checkpointing: 32 block inputs + the larger of the LM head and loss
    layer = s * b * h * (16 + 8 * f / h)  # and one block's backward (its recomputed activations + MLP gradients)
    head = s * b * (2 * 2 * h + 8 * VOCAB)
    act = 32 * s * b * h * 2 + max(head, layer + 3 * f * s * b * 2)
    assert rows["fsdp", "full"]["activations"] == pytest.approx(act)
    assert rows["fsdp", "full"]["fits"] and not rows["fsdp", "none"]["fits"]
    assert p["cheapest"]["ac"] == "full"
    text = format_plan(p, markdown=True)
    assert "| strategy | AC |" in text and "| FSDP | full |" in text


def test_muon_state():
    """Muon's fp32 state is one momentum for the blocks' matrices it trains and AdamW's two moments for the rest:
    what the real optimizer holds after a step, and in the plan of GPT-2 124M (12 x 12 d^2 block matrices)."""
    cfg = compose(["model=gpt2_tiny", "data=text_pydoc", "optim=muon"])
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.optim)
    model(torch.randint(0, 256, (2, 16))).float().pow(2).mean().backward()
    opt.step()
    held = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if t.ndim > 0)
    assert held == optimizer_bytes_per_param(model, "muon") * count_params(model, trainable=True)

    p = plan(compose(["experiment=derf_gpt2", "optim=muon"]), 1, 8)
    n, muon = p["params"], 12 * 12 * 768 * 768
    ddp = next(r for r in p["rows"] if r["strategy"] == "ddp")
    assert ddp["optimizer"] == pytest.approx(4 * muon + 8 * (n - muon))
    adamw = next(r for r in plan(compose(["experiment=derf_gpt2"]), 1, 8)["rows"] if r["strategy"] == "ddp")
    assert adamw["optimizer"] == 8 * n and adamw["total"] - ddp["total"] == pytest.approx(4 * muon)


def test_launcher_args():
    """launcher.* come out of argv; keys the config's launcher lacks (gpus_per_node: the schema calls it nproc)
    never reach Hydra as such, and the job size is the command line's, else the config's."""
    found, given = split_launcher(["experiment=table4_7b", "launcher.nodes=8", "+launcher.nproc=4", "seed=1"])
    assert found == {"nodes": 8, "nproc": 4} and given == ["launcher.nodes=8", "+launcher.nproc=4"]
    cfg, nodes, gpus = compose_with_launcher(["model=llama_tiny", "data=text_pydoc", "launcher.nodes=2",
                                              "launcher.gpus_per_node=4"])
    assert (nodes, gpus) == (2, 4) and cfg.model.family == "llama"
    if "launcher" in cfg:  # the launcher group (issue 11) checks the values
        assert (cfg.launcher.nodes, cfg.launcher.get("gpus_per_node", cfg.launcher.get("nproc"))) == (2, 4)
    assert compose_with_launcher(["experiment=table4_7b", "launcher=slurm_64x8"])[1:] == (64, 8)  # from the config


def test_cli_prints_table_without_allocating():
    """The CLI as a subprocess, reporting its own peak RSS: a 7B model in bf16 alone would be 13 GB."""
    code = ("import resource, runpy, sys; sys.argv = ['plan.py', 'experiment=table4_7b', 'launcher.nodes=8', "
            "'launcher.gpus_per_node=8']\ntry: runpy.run_path('scripts/plan.py', run_name='__main__')\n"
            "except SystemExit as e: assert not e.code, e.code\n"
            "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = run_script(["python", "-c", code], cwd=ROOT).stdout
    assert "llama_7b" in out and "6.74B parameters" in out and "64 GPUs" in out and "4.19M tokens/step" in out
    assert "FSDP" in out and "HSDP" in out and "cheapest that fits:" in out
    assert int(out.split("maxrss_kb")[-1]) < 3 * 2**20  # KiB: < 3 GiB


# --- the paper's job sizes (issue 18) ---------------------------------------------------------------------
RELEASED = {  # jiachenzhu/DyT other_tasks/LLaMA/README.md: torchrun nodes x 8, batch per GPU, sharding, checkpointing
    "table4_7b": ("slurm_64x8", (64, 8), 2, "hsdp", "none"),
    "table4_13b": ("slurm_64x8", (64, 8), 2, "hsdp", "selective"),
    "table4_34b": ("slurm_128x8", (128, 8), 1, "fsdp", "selective"),
    "table4_70b": ("slurm_128x8", (128, 8), 1, "fsdp", "full"),
}


@pytest.mark.parametrize("experiment", list(RELEASED))
def test_table4_runs_as_released(experiment):
    """Each Table 4 size on its released job: GPUs, sequences per GPU without accumulation, sharding and
    checkpointing (selective = every other block, as selective_checkpointing=0.5)."""
    launcher, size, per_gpu, parallel, ac = RELEASED[experiment]
    cfg, nodes, gpus = compose_with_launcher([f"experiment={experiment}", f"launcher={launcher}"])
    p = plan(cfg, nodes, gpus)
    assert (nodes, gpus) == size and p["micro_batch"] == per_gpu and p["grad_accum"] == 1
    assert p["configured"] == (parallel, ac) and p["ac_every"] == 2
    cell = next(c for t in PAPER_TABLES for _, _, c in t.cells() if c.overrides[:1] == (f"experiment={experiment}",))
    assert cell.launcher == launcher and f"launcher={launcher}" in cell.command and " -m " in cell.command


def _paper_runs() -> dict:
    """Each runnable paper cell's command once: its overrides + its launcher config (and a two-stage cell's
    pre-training, Table 2's, as a run of its own)."""
    runs = {}
    for t in PAPER_TABLES:
        for row, col, cell in t.cells():
            if cell.status == RUNNABLE:
                for stage, name in ((cell.pretrain, "pretrain"), (cell, "")):
                    if stage is not None:
                        argv = (*stage.overrides, *([f"launcher={stage.launcher}"] if stage.launcher else []))
                        runs.setdefault(argv, f"{t.id}/{row.label}/{col}" + (f"/{name}" if name else ""))
    return runs


PAPER_RUNS = _paper_runs()


@pytest.mark.parametrize("argv", list(PAPER_RUNS), ids=list(PAPER_RUNS.values()))
def test_every_paper_run_fits_its_launcher(argv):
    """Every paper cell, composed with its launcher config, fits an 80 GB GPU as configured (sharding and
    checkpointing), per the planner."""
    cfg, nodes, gpus = compose_with_launcher(list(argv))
    p = plan(cfg, nodes, gpus)
    par, ac = p["configured"]
    row = next(r for r in p["rows"] if (r["strategy"], r["ac"]) == (par if p["world"] > 1 else "ddp", ac))
    assert row["fits"], f"{' '.join(argv)}: {row['total'] / GIB:.1f} GiB per GPU"
    assert cfg.trainer.batch_size % (p["world"] * p["grad_accum"]) == 0  # every GPU gets whole samples


def test_every_paper_experiment_is_a_cell_with_a_launcher():
    """Each shipped paper experiment (configs/experiment/table*, derf_*) is run by some cell, and every cell names
    its job size unless the batch fits one GPU."""
    shipped = {f.stem for f in (ROOT / "configs/experiment").glob("*.yaml") if f.stem.startswith(("table", "derf_"))}
    run = {a.split("=", 1)[1] for argv in PAPER_RUNS for a in argv if a.startswith("experiment=")}
    assert shipped <= run, shipped - run
    assert all(any(a.startswith("launcher=") for a in argv) for argv in PAPER_RUNS)
    assert not (ROOT / "configs/launcher/slurm_table4.yaml").exists()  # its 8 x 8 was never the paper's job


def test_cost_estimate():
    """GPU-hours = FLOPs per token (the model's) x tokens / (MFU x peak bf16 FLOP/s), as the plan prints it."""
    cfg, nodes, gpus = compose_with_launcher(["experiment=table4_7b", "launcher=slurm_64x8"])
    p = plan(cfg, nodes, gpus, mfu=0.5)
    c = p["cost"]
    with torch.device("meta"):
        fpt = dyt.build_model(cfg).flops_per_token(4096)
    assert c["tokens"] == 47684 * 1024 * 4096 and c["flops_per_token"] == fpt
    assert c["gpu_hours"]["A100"] == pytest.approx(fpt * c["tokens"] / (0.5 * 312e12) / 3600)
    assert c["wall_hours"]["H100"] == pytest.approx(c["gpu_hours"]["H100"] / 512)
    assert "GPU-hours" in format_plan(p)
