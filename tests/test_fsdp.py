"""FSDP2 / HSDP on CPU (gloo, 2 processes under torchrun) against single-process training, activation
checkpointing, sharded (DCP) checkpoints resumed on 1 and 2 processes, consolidation, meta-device init; and the
pure pieces (block finding, the selective-checkpointing rule, checkpoint listing) without processes."""
import json
import os
import shutil
import sys

import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from conftest import ROOT, TINY, compose, run_script, script
from dyt import distributed as D
from dyt.checkpoint import list_checkpoints, remove_leftovers
from dyt.errors import ConfigError
from dyt.families import build_model, build_task, get_family
from dyt.logging import read_jsonl
from dyt.parallel import block_units, checkpointed_blocks, mixed_precision, wrap_model
from dyt.run import train
from dyt.rundir import read_summary
from dyt.validate import validate
from test_llama_train import LM

CPU = ["trainer.device=cpu", "optim.clip_grad=1.0"]
# 63 val sequences: 32 / 31 per rank at eval batch 1, so the sharded evaluation runs its ranks in lockstep.
LLAMA = [*LM, *CPU, "trainer.eval_batch_size=1", "trainer.ema_decay=0.9", "trainer.keep_checkpoints=2"]
VIT = [*TINY, *CPU, "trainer.batch_size=32", "trainer.grad_accum=2", "optim.lr=3e-3"]
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"


def torchrun(args, run_dir, nproc=2):
    return run_script([TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", str(ROOT / "train.py"), *args,
                       f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)


def train_run(run_dir, overrides):
    """One run of `overrides` into `run_dir` (a call made on every rank under tests/torchrun_calls.py)."""
    train(compose(overrides), run_dir)


def meta_init_check(llama, vit):
    """On every rank of a 2-process group: the FSDP model built with trainer.init=meta holds, gathered, the
    distributions of the exact build (constants equal, random tensors of similar spread, not one shard's draws
    repeated); prints '<family> meta init ok' per family."""
    dist = D.init_distributed("cpu")
    for family, over in (("llama", llama), ("vit", vit)):
        full = {}
        for init in ("exact", "meta"):
            cfg = compose([*over, "trainer.parallel=fsdp", f"trainer.init={init}"])
            par = wrap_model(build_task(cfg, dist).build_model, dist, cfg.trainer, None, seed=cfg.seed,
                             blocks=get_family(cfg.model.family).blocks)
            full[init] = get_model_state_dict(par.model, options=StateDictOptions(full_state_dict=True))
        if dist.rank == 0:
            for k, ex in full["exact"].items():
                me = full["meta"][k].float()
                if ex.numel() == 1 or ex.float().std() == 0:  # constants (norm weights, alpha, biases): the same
                    assert torch.equal(me, ex.float()), k
                    continue
                if ex.numel() < 64:
                    continue
                assert 0.7 < me.std() / ex.std() < 1.4, (k, me.std(), ex.std())  # the same distribution...
                half = len(me) // 2  # ...and not one shard's draws twice
                assert half == 0 or not torch.equal(me[:half], me[len(me) - half:]), k
            print(family, "meta init ok", flush=True)
    D.shutdown()


def held_grad_bytes(model) -> int:
    """Bytes of gradient this rank holds: each parameter's sharded ``.grad``, what FSDP2 keeps of a unit's
    unsharded gradient between micro-batches (``_unsharded_param.grad``, ``unsharded_accumulated_grad``) and, under
    HSDP, its reduce-scattered shard awaiting the replicas' all-reduce."""
    from torch.distributed.fsdp import FSDPModule
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, FSDPModule):
            state = m._get_fsdp_state()
            groups = getattr(state, "_fsdp_param_groups", None) or [state._fsdp_param_group]  # torch 2.6: one
            for g in (g for g in groups if g is not None):  # HSDP: reduce-scattered, awaiting the all-reduce
                partial = getattr(g, "_partial_reduce_output", None)
                if partial is not None:
                    seen.add((partial.data_ptr(), partial.numel() * partial.element_size()))
            for fp in (fp for g in groups if g is not None for fp in g.fsdp_params):
                for grad in (fp.sharded_param.grad, getattr(fp, "unsharded_accumulated_grad", None),
                             getattr(getattr(fp, "_unsharded_param", None), "grad", None)):
                    grad = getattr(grad, "_local_tensor", grad)
                    if grad is not None and grad.numel():
                        seen.add((grad.data_ptr(), grad.numel() * grad.element_size()))
    return sum(n for _, n in seen)


def fsdp_memory_check(llama):
    """On every rank of a 2-process group, a sharded tiny LLaMA: the gradient bytes held after a micro-batch that
    is not the step's last, against the rank's shard of the parameters (prints 'grad bytes <held> of <shard>');
    which blocks stay gathered after forward (prints 'reshard after forward <flags>')."""
    dist = D.init_distributed("cpu")
    cfg = compose([*llama, "trainer.parallel=fsdp"])
    task = build_task(cfg, dist)
    par = wrap_model(task.build_model, dist, cfg.trainer, None, blocks=get_family(cfg.model.family).blocks)
    with par.grad_sync(False):
        task.loss(par.net, torch.randint(0, par.model.vocab_size, (2, 17))).backward()
    shard = sum(p.to_local().numel() * p.element_size() for p in par.model.parameters())
    if dist.rank == 0:
        print(f"grad bytes {held_grad_bytes(par.model)} of {shard}", flush=True)
        flags = [(b._get_fsdp_state()._fsdp_param_group.post_forward_mesh_info is not None)
                 for _, _, b in block_units(par.model, get_family(cfg.model.family).blocks)]
        print(f"reshard after forward {flags}", flush=True)
    D.shutdown()


def ddp_bf16_check(llama):
    """On every rank of a 2-process group, DDP with trainer.reduce_dtype=bf16: each rank's own batch, then whether
    every averaged gradient is a bf16 value (prints 'ddp bf16 reduction <bool>'; an fp32 all-reduce's mean is not)."""
    dist = D.init_distributed("cpu")
    cfg = compose([*llama, "trainer.reduce_dtype=bf16"])
    task = build_task(cfg, dist)
    par = wrap_model(task.build_model, dist, cfg.trainer, None)
    torch.manual_seed(dist.rank)
    task.loss(par.net, torch.randint(0, par.model.vocab_size, (2, 17))).backward()
    exact = all(torch.equal(p.grad, p.grad.bfloat16().float()) for p in par.model.parameters())
    # the gradients are views of DDP's buckets (fewer storages than gradients), not a second copy of them
    storages = {p.grad.untyped_storage().data_ptr() for p in par.model.parameters()}
    if dist.rank == 0:
        print(f"ddp bf16 reduction {exact}", flush=True)
        print(f"ddp grads in buckets {len(storages) < len(list(par.model.parameters()))}", flush=True)
    D.shutdown()


def records(run_dir):
    """(step, split, loss, EMA loss) of every logged event."""
    return [(e["step"], e["split"], e.get("train/loss", e.get("val/loss")), e.get("val_ema/loss"))
            for e in read_jsonl(run_dir / "metrics.jsonl")]


def assert_same_training(a, b, rel=1e-5):
    ra, rb = records(a), records(b)
    assert [r[:2] for r in ra] == [r[:2] for r in rb]
    for col in (2, 3):  # the loss, then the EMA's (None where not logged)
        va, vb = ([float("nan") if r[col] is None else r[col] for r in rs] for rs in (ra, rb))
        assert va == pytest.approx(vb, rel=rel, nan_ok=True)


class Runs:
    """The module's runs under one folder: the single-process references and what the torchrun group made."""

    def __init__(self, root, group):
        self.root, self.group = root, group

    def __truediv__(self, name):
        """The run `name`; a 2-process run the group did not finish fails the test with the group's output."""
        run = name.split("/")[0]
        assert (self.root / run / "summary.json").exists(), \
            f"{run}: not made\n{self.group.stdout[-3000:]}\n{self.group.stderr[-3000:]}"
        return self.root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny LLaMA (DyT, EMA, clipping) and ViT (gradient accumulation) runs on one process, here, and their 2-process
    variants in ONE torchrun group (tests/torchrun_calls.py: starting a group costs more than these runs); the FSDP
    LLaMA's DCP checkpoints at steps 3 and 6 serve the resume and consolidation tests."""
    root = tmp_path_factory.mktemp("fsdp")
    train(compose(LLAMA), root / "llama_single")
    train(compose(VIT), root / "vit_single")
    calls = [("test_fsdp", "train_run", [str(root / name), overrides]) for name, overrides in (
        ("llama_fsdp", [*LLAMA, "trainer.parallel=fsdp"]),
        ("vit_fsdp", [*VIT, "trainer.parallel=fsdp"]),  # with gradient accumulation (no sync, then sync)
        ("llama_ac", [*LLAMA, "trainer.parallel=fsdp", "trainer.activation_checkpointing=full"]),
        # HSDP as 2 replicas of 1 shard (gradients all-reduced across replicas) with every other block recomputed
        ("vit_hsdp", [*VIT, "trainer.parallel=hsdp", "trainer.hsdp_shard_size=1",
                      "trainer.activation_checkpointing=selective", "trainer.ac_every=2"]))]
    calls += [("test_fsdp", "fsdp_memory_check", [LLAMA]), ("test_fsdp", "ddp_bf16_check", [LLAMA])]
    calls.append(("test_fsdp", "meta_init_check", [LM, [a for a in TINY if a.startswith("model.")]]))
    (root / "calls.json").write_text(json.dumps(calls))
    group = run_script([TORCHRUN, "--standalone", "--nproc_per_node=2", str(ROOT / "tests/torchrun_calls.py"),
                        str(root / "calls.json")], cwd=root, timeout=600, check=False)
    return Runs(root, group)


# --- (a) and (b): 2-process FSDP equals 1-process training ---------------------------------------------------
@pytest.mark.slow
def test_fsdp_llama_matches_single_process(runs):
    assert read_summary(runs / "llama_fsdp")["world_size"] == 2
    assert [p.name for p in list_checkpoints(runs / "llama_fsdp/checkpoints")] == ["step_00000003", "step_00000006"]
    assert_same_training(runs / "llama_single", runs / "llama_fsdp")

    def logged_alphas(run):
        return [(k, v) for e in read_jsonl(run / "metrics.jsonl") for k, v in e.items() if k.startswith("alpha/")]
    alphas, single = logged_alphas(runs / "llama_fsdp"), logged_alphas(runs / "llama_single")
    assert [k for k, _ in alphas] == [k for k, _ in single] and "alpha/layers.0.attn_norm" in dict(alphas)
    assert [v for _, v in alphas] == pytest.approx([v for _, v in single], rel=1e-5)


@pytest.mark.slow
def test_fsdp_vit_matches_single_process(runs):
    assert_same_training(runs / "vit_single", runs / "vit_fsdp")


@pytest.mark.slow
def test_fsdp_llama_activation_checkpointing_matches(runs):
    assert_same_training(runs / "llama_single", runs / "llama_ac")


@pytest.mark.slow
def test_hsdp_vit_selective_checkpointing_matches(runs):
    """HSDP as 2 replicas of 1 shard (gradients all-reduced across replicas) with every other block recomputed."""
    assert_same_training(runs / "vit_single", runs / "vit_hsdp")


# --- (c) DCP checkpoints: resume on 1 and on 2 processes --------------------------------------------------------
@pytest.mark.slow
def test_sharded_run_resumes_on_one_and_two_processes(runs, tmp_path, capsys):
    full = runs / "llama_fsdp"
    for n in (1, 2):
        shutil.copytree(full, tmp_path / f"cut{n}")
        (tmp_path / f"cut{n}/summary.json").unlink()
    # cut1: the last step damaged on disk (a shard file cut short): skipped with a warning, kept aside
    shard = tmp_path / "cut1/checkpoints/step_00000006/__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    # cut2: the job died while writing the last step: only its .tmp directory exists, never picked up
    ckpts = tmp_path / "cut2/checkpoints"
    (ckpts / "step_00000006").rename(ckpts / "step_00000006.tmp")
    assert [p.name for p in list_checkpoints(ckpts)] == ["step_00000003"]
    train(compose([*LLAMA, "trainer.parallel=fsdp"]), tmp_path / "cut1")  # one process: the plain module
    captured = capsys.readouterr()
    assert f"resumed from {tmp_path}/cut1/checkpoints/step_00000003 at step 3" in captured.out
    assert "step_00000006 is corrupt (rank 0: " in captured.err
    out = torchrun([*LLAMA, "trainer.parallel=fsdp"], tmp_path / "cut2").stdout  # train.py itself under torchrun
    assert f"resumed from {tmp_path}/cut2/checkpoints/step_00000003 at step 3" in out
    for n in (1, 2):
        cut = tmp_path / f"cut{n}"
        assert not (cut / "checkpoints/step_00000006.tmp").exists()  # removed on resume
        assert_same_training(full, cut)
        s, f = read_summary(cut), read_summary(full)
        assert s["status"] == "completed" and s["world_size"] == n
        for k in ("train/loss", "val/loss", "val_ema/loss", "best/val/loss"):
            assert s[k] == pytest.approx(f[k], rel=1e-5)
    # one process continues with single files, two with DCP directories
    assert [p.name for p in list_checkpoints(tmp_path / "cut1/checkpoints")] == ["step_00000003", "step_00000006.pt"]
    assert (tmp_path / "cut1/checkpoints/step_00000006.corrupt").is_dir()
    assert [p.name for p in list_checkpoints(tmp_path / "cut2/checkpoints")] == ["step_00000003", "step_00000006"]


# --- (d) consolidation: DCP directory -> one file that eval.py reads ----------------------------------------------
@pytest.mark.slow
def test_consolidated_checkpoint_evaluates_like_the_run(runs, tmp_path, capsys):
    """The consolidation script and eval.py run in this process (their main(argv)): one process, no group."""
    run = runs / "llama_fsdp"
    out = tmp_path / "final.pt"
    assert script("scripts/consolidate_checkpoint.py").main([str(run), "--out", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert state["step"] == 6 and {"model", "optimizer", "ema", "rng"} <= set(state)
    assert (tmp_path / "final.pt.sha256").is_file()
    # the layout of a single-process checkpoint: optimizer state by parameter index
    single = torch.load(runs / "llama_single/checkpoints/step_00000006.pt", weights_only=True)
    assert set(state["model"]) == set(single["model"])
    assert set(state["optimizer"]["state"]) == set(single["optimizer"]["state"])
    for k, v in single["model"].items():
        torch.testing.assert_close(state["model"][k], v, rtol=1e-4, atol=1e-6)
    summary = read_summary(run)
    eval_py = script("eval.py")
    for ckpt in ([], ["--checkpoint", str(out)]):  # the DCP directory itself, then the consolidated file
        capsys.readouterr()
        assert eval_py.main([str(run), *ckpt]) == 0
        text = capsys.readouterr().out
        metrics = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        assert float(metrics["val/loss"]) == pytest.approx(summary["val/loss"], rel=1e-4)
        assert float(metrics["val_ema/loss"]) == pytest.approx(summary["val_ema/loss"], rel=1e-4)


# --- meta-device materialisation ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_meta_init_materialises_distinct_shards(runs):
    """trainer.init=meta: no process builds the full model; each shard draws its own values (on the CPU DTensor's
    random ops would repeat one shard's draws on every rank), with the distributions of the real build
    (meta_init_check, called in the module's torchrun group)."""
    out = runs.group.stdout
    assert "llama meta init ok" in out and "vit meta init ok" in out, out[-3000:] + runs.group.stderr[-3000:]
    assert runs.group.returncode == 0, runs.group.stderr[-3000:]  # the last call: every rank of the group ended well


# --- what a rank holds ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_accumulation_keeps_only_sharded_gradients(runs):
    """Between micro-batches (gradient accumulation) a rank holds its shard of the gradients, not every unit's
    unsharded gradient (what FSDP2 keeps when the reduce-scatter is skipped: twice this on 2 ranks)."""
    import re
    held, shard = map(int, re.search(r"grad bytes (\d+) of (\d+)", runs.group.stdout).groups())
    assert held <= shard, (held, shard)


@pytest.mark.slow
def test_last_block_stays_gathered_after_forward(runs):
    """Backward needs the last block's parameters at once: it is not resharded after forward (torchtitan)."""
    assert "reshard after forward [True, False]" in runs.group.stdout, runs.group.stdout[-3000:]


@pytest.mark.slow
def test_ddp_reduces_in_bf16_when_asked(runs):
    assert "ddp bf16 reduction True" in runs.group.stdout, runs.group.stdout[-3000:]


@pytest.mark.slow
def test_ddp_gradients_are_views_of_its_buckets(runs):
    """DDP keeps one copy of the gradients (gradient_as_bucket_view), which the planner counts as such."""
    assert "ddp grads in buckets True" in runs.group.stdout, runs.group.stdout[-3000:]


# --- the pieces, no processes -------------------------------------------------------------------------------------
def test_selective_checkpointing_follows_the_released_llama_rule():
    assert checkpointed_blocks(6, "selective", 2) == [True, False, True, False, True, False]
    assert checkpointed_blocks(6, "selective", 3) == [False, True, False, False, True, False]  # fms-fsdp p=1/3
    assert checkpointed_blocks(3, "selective", 1) == [True] * 3 == checkpointed_blocks(3, "full", 5)
    assert checkpointed_blocks(3, "none", 2) == [False] * 3


@pytest.mark.parametrize("overrides,count", [
    (["model.kwargs.depth=3", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2"], 3),  # ViT blocks
    (["model=convnext_atto", "data.image_size=32"], 2 + 2 + 6 + 2),  # ConvNeXt: the blocks of its 4 stages
    (["model=llama_tiny", "data=text_pydoc"], 4),  # LLaMA layers
    (["model=dit_tiny"], None),  # DiT blocks
])
def test_every_family_has_its_blocks_found(overrides, count):
    cfg = compose(overrides)
    with torch.device("meta"):
        model = build_model(cfg)
    blocks = block_units(model, get_family(cfg.model.family).blocks)
    assert len(blocks) == (count if count is not None else cfg.model.depth)
    assert all(container[i] is block for container, i, block in blocks)


def test_dcp_directories_are_listed_and_half_written_ones_removed(tmp_path):
    d = tmp_path / "checkpoints"
    (d / "step_00000002").mkdir(parents=True)  # a DCP step
    (d / "step_00000003.pt").write_bytes(b"x")  # a single file
    (d / "step_00000004.tmp").mkdir()  # being written
    (d / "step_00000001.old").mkdir()  # replaced by a re-save of its step
    (d / "step_00000005").write_bytes(b"x")  # neither format
    assert [p.name for p in list_checkpoints(d)] == ["step_00000002", "step_00000003.pt"]
    assert sorted(p.name for p in remove_leftovers(d)) == ["step_00000001.old", "step_00000004.tmp"]
    assert sorted(p.name for p in d.iterdir()) == ["step_00000002", "step_00000003.pt", "step_00000005"]


@pytest.mark.parametrize("args,message", [
    (["trainer.parallel=zero3"], "trainer.parallel=zero3: unknown; choose one of: ddp, fsdp, hsdp"),
    (["trainer.activation_checkpointing=some"], "choose one of: none, full, selective"),
    (["trainer.init=meta"], "trainer.init=meta: only a sharded model"),
    (["trainer.parallel=fsdp", "trainer.precision=fp16"], "use trainer.precision=bf16"),
    (["trainer.ac_every=0"], "trainer.ac_every=0: must be an integer >= 1"),
    (["trainer.reduce_dtype=fp16"], "trainer.reduce_dtype=fp16: unknown; choose one of: fp32, bf16"),
])
def test_bad_parallel_settings_are_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(compose(args))


@pytest.mark.parametrize("param,reduce,expected", [
    (torch.bfloat16, "fp32", torch.float32), (torch.bfloat16, "bf16", torch.bfloat16),
    (None, "fp32", None), (None, "bf16", torch.bfloat16)])  # None: gradients reduced in their own dtype (fp32)
def test_reduce_dtype_is_the_mixed_precision_policy(param, reduce, expected):
    policy = mixed_precision(param, compose([f"trainer.reduce_dtype={reduce}"]).trainer)
    assert policy.param_dtype == param and policy.reduce_dtype == expected


def test_llama_recipe_reduces_in_bf16_as_released():
    """fms-fsdp's bfSixteen policy (the released LLaMA code): parameters, reductions and buffers in bf16."""
    t = compose(["experiment=table4_7b"]).trainer
    assert (t.precision, t.reduce_dtype) == ("bf16", "bf16")
