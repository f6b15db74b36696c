"""The DiT family through the shared trainer: run records (loss parts, sample grids), exact resume, per-sample
diffusion draws, guidance, divergence, wandb images, eval.py with FID, and the latent path end to end with a tiny
locally built VAE (no download). eval.py and scripts/extract_latents.py run in this process (their main(argv)):
a fresh interpreter would prove nothing more (test_cli and test_latents run them as commands)."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, compose, run_script, script
from dyt.checkpoint import load_checkpoint
from dyt.data.sampler import SeededSamples
from dyt.distributed import DistInfo
from dyt.errors import ConfigError
from dyt.eval import run_config
from dyt.families import build_task, get_family
from dyt.families.dit.evaluate import chunk_seed
from dyt.families.dit.fid import FeatureStats, InceptionFeatures, frechet_distance, load_stats
from dyt.logging import read_jsonl
from dyt.run import train
from dyt.rundir import check_config_change

DIT = ["experiment=dit_pixel", "model.depth=2", "model.hidden=32", "model.heads=2", "trainer.batch_size=32",
       "trainer.max_steps=12", "trainer.eval_every=6", "trainer.ckpt_every=6", "trainer.log_every=3",
       "model.diffusion.sample_steps=5", "model.diffusion.grid_classes=3", "model.diffusion.grid_per_class=2"]


def run(path, *extra):
    return train(compose([*DIT, *extra]), path)


@pytest.fixture(scope="module")
def dyt_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("dit") / "dyt"
    return d, run(d, "norm=dyt", "trainer.keep_checkpoints=2")


def test_dit_run_records_and_sample_grids(dyt_run):
    d, s = dyt_run
    assert s["status"] == "completed" and s["step"] == 12 and s["metric"] == "val/loss"
    events = read_jsonl(d / "metrics.jsonl")
    train_ev = [e for e in events if e["split"] == "train"]
    val_ev = [e for e in events if e["split"] == "val"]
    assert {"train/loss", "train/mse", "train/vb", "train/throughput", "alpha/blocks.0.norm1",
            "alpha/final_layer.norm_final"} <= set(train_ev[-1])
    for e in train_ev:  # the hybrid loss is its two logged parts
        assert e["train/loss"] == pytest.approx(e["train/mse"] + e["train/vb"], rel=1e-5)
    assert {"val/loss", "val/mse", "val/vb", "val_ema/loss"} <= set(val_ev[-1]) and [e["step"] for e in val_ev] == [6, 12]
    assert s["best/val/loss"] == min(e["val/loss"] for e in val_ev)
    # a grid per evaluation: 3 classes x 2 samples of 8x8 drawn at 64x64 (padding 2), a label column, RGB
    grids = sorted((d / "samples").glob("grid_step*.png"))
    assert [g.name for g in grids] == ["grid_step00000006.png", "grid_step00000012.png"]
    assert np.asarray(Image.open(grids[-1])).shape == (3 * 66 + 2, 56 + 2 * 66 + 2, 3)


def test_dit_loss_falls_for_ln_and_dyt(tmp_path):
    """60 steps on digits: the validation loss (the same draws at every evaluation) drops well below where it
    starts; with lr=0 it stays (measured: LN 1.00 -> 0.22, DyT 1.15 -> 0.23; lr=0 stays at 1.0x)."""
    for norm in ("layernorm", "dyt"):
        s = run(tmp_path / norm, f"norm={norm}", "trainer.max_steps=60", "trainer.eval_every=1",
                "trainer.ckpt_every=60", "model.diffusion.grid_per_class=0", "trainer.ema_decay=null")
        val = [e["val/loss"] for e in read_jsonl(tmp_path / norm / "metrics.jsonl") if e["split"] == "val"]
        assert s["status"] == "completed" and val[-1] < 0.4 * val[0], (norm, val[0], val[-1])
    frozen = run(tmp_path / "lr0", "optim.lr=0", "trainer.max_steps=6", "trainer.eval_every=1",
                 "model.diffusion.grid_per_class=0", "trainer.ema_decay=null")
    val = [e["val/loss"] for e in read_jsonl(tmp_path / "lr0/metrics.jsonl") if e["split"] == "val"]
    assert val[-1] == pytest.approx(val[0], rel=1e-6) and frozen["status"] == "completed"


def test_dit_resume_equals_uninterrupted(dyt_run, tmp_path):
    d, full = dyt_run
    shutil.copytree(d, tmp_path / "cut")
    (tmp_path / "cut/checkpoints/step_00000012.pt").unlink()  # resumes at step 6
    (tmp_path / "cut/summary.json").unlink()
    resumed = run(tmp_path / "cut", "norm=dyt", "trainer.keep_checkpoints=2", "data.num_workers=2")
    assert resumed["train/loss"] == full["train/loss"] and resumed["val/loss"] == full["val/loss"]
    a, b = (np.asarray(Image.open(p / "samples/grid_step00000012.png")) for p in (d, tmp_path / "cut"))
    assert np.array_equal(a, b)  # the fixed-seed grid of the same weights


def test_diffusion_draws_are_per_sample():
    """Timestep, noise and class dropout come with each sample: fixed by (seed, index) for validation, seeded per
    (seed, epoch, index) by the train loader, never by rank or batch."""
    cfg = compose(DIT)
    ranks = [build_task(cfg, DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    single = build_task(cfg, DistInfo())
    b = next(iter(single.train_loader(8, 0, 0)))
    r0, r1 = (next(iter(t.train_loader(4, 0, 0))) for t in ranks)
    for k in range(4):  # rank r holds the single process's samples r, r+2, ...: the same draws
        assert torch.equal(b[k][0::2], r0[k]) and torch.equal(b[k][1::2], r1[k])
    assert len(set(b[2].tolist())) > 4  # timesteps differ between samples
    _, val = single.datasets
    same = lambda a, b: all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b))  # noqa: E731
    assert same(val[3], val[3]) and same(val[3], ranks[1].datasets[1][3])  # fixed per index, whatever the rank
    assert not same(val[3], val[4])
    # class dropout: about 10% of the labels become the null class (10), drawn per sample
    train, _ = single.datasets
    seeded = SeededSamples(train, 0, 0)
    dropped = np.mean([int(seeded[i][1]) == 10 for i in range(len(train))])
    assert 0.07 < dropped < 0.13


def test_guidance_uses_the_null_class(dyt_run):
    d, _ = dyt_run
    task = build_task(compose([*DIT, "norm=dyt"]), DistInfo())
    model = task.build_model().eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([5, 700]), torch.tensor([1, 2])
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 10))
    guided = task.model_fn(model, y, 4.0)(x, t)
    assert torch.allclose(guided[:, :1], uncond[:, :1] + 4.0 * (cond[:, :1] - uncond[:, :1]), atol=1e-5)
    assert torch.allclose(guided[:, 1:], cond[:, 1:])  # the variance channels stay conditional
    assert torch.equal(task.model_fn(model, y, 1.0)(x, t), cond)


def test_dit_divergence_is_recorded(tmp_path):
    s = run(tmp_path / "nan", "data.std=[0.0]")  # inf inputs: the first loss is NaN
    assert s["status"] == "diverged" and s["step"] == 1


def test_dit_wandb_offline_logs_the_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    s = run(tmp_path / "w", "logger=wandb", "trainer.max_steps=6")
    assert s["status"] == "completed"
    [offline] = list((tmp_path / "w/wandb").glob("offline-run-*"))
    assert list(offline.glob("files/media/images/samples/grid_*.png"))


def test_eval_py_fid_writes_eval_json_and_grid(dyt_run, tmp_path, monkeypatch, capsys):
    d, _ = dyt_run
    monkeypatch.setenv("DYT_CACHE", str(tmp_path))
    eval_py = script("eval.py")
    capsys.readouterr()
    assert eval_py.main([str(d), "--fid", "12", "--fid-batch", "6", "--fid-ref-count", "16", "--fid-method", "eigh",
                         "trainer.device=cpu"]) == 0
    ev = json.loads((d / "eval.json").read_text())
    assert ev["fid/samples"] == 12 and ev["fid/weights"] == "ema" and ev["fid/ref_count"] == 16
    assert "val_ema/loss" in ev and "val_ema/fid: " in capsys.readouterr().out and (d / "fid_samples.png").is_file()
    assert "val/fid" not in ev  # the EMA's FID, named like its loss
    # The same number from the pieces: the EMA weights, balanced labels, chunk k seeded by (seed, k), the cached
    # reference statistics of the first 16 validation images.
    task = build_task(run_config(d), DistInfo())
    model = task.build_model()
    model.load_state_dict(load_checkpoint(d / "checkpoints/step_00000012.pt", map_location="cpu")["ema"])
    net, stats = InceptionFeatures(), FeatureStats()
    for k in range(2):
        images = task.generate(model, torch.arange(6 * k, 6 * k + 6) % 10, torch.Generator().manual_seed(chunk_seed(0, k)))
        stats.add(net(images)["pool"])
    [ref] = list((tmp_path / "fid_stats").glob("*.npz"))
    ref = load_stats(ref)
    assert ref["count"] == 16
    assert ev["val_ema/fid"] == pytest.approx(frechet_distance(*stats.mean_cov(), ref["mu"], ref["sigma"], method="eigh"),
                                          rel=1e-6)
    # The raw weights' FID of the same checkpoint joins it in eval.json (it does not replace it)
    assert eval_py.main([str(d), "--fid", "4", "--fid-batch", "4", "--fid-ref-count", "16", "--fid-method", "eigh",
                         "--fid-weights", "raw"]) == 0
    both = json.loads((d / "eval.json").read_text())
    assert both["val_ema/fid"] == ev["val_ema/fid"] and both["val/fid"] != ev["val_ema/fid"]
    assert both["fid/weights"] == "raw" and both["fid/samples"] == 4


def test_latent_dit_end_to_end(tmp_path):
    """Images -> latents (a tiny VAE built here) -> a few DiT steps -> sample grid decoded by the VAE."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c in ("cat", "dog"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"img/{split}/{c}/{i}.png")
    extract_latents = script("scripts/extract_latents.py")
    for split in ("train", "val"):
        assert extract_latents.main(["--vae", str(tmp_path / "vae"), "--root", str(tmp_path / "img"), "--split", split,
                                     "--image-size", "16", "--out", str(tmp_path / "lat"), "--workers", "0",
                                     "--no-progress"]) == 0
    s = train(compose(["experiment=table3_dit_b4", "model.depth=1", "model.hidden=32", "model.heads=2",
                       f"data.root={tmp_path / 'lat'}", f"data.vae={tmp_path / 'vae'}", "data.num_classes=2",
                       "data.image_size=8", "data.num_workers=0", "trainer.batch_size=4", "trainer.max_steps=4",
                       "trainer.eval_every=4", "trainer.ckpt_every=4", "trainer.log_every=2",
                       "model.diffusion.sample_steps=3", "model.diffusion.grid_classes=2",
                       "model.diffusion.grid_per_class=2", "trainer.device=cpu"]), tmp_path / "run")
    assert s["status"] == "completed" and np.isfinite(s["val/loss"])
    grid = np.asarray(Image.open(tmp_path / "run/samples/grid_step00000004.png"))
    # decoded 16x16 RGB images (VAE factor 2) drawn at 64x64, padding 2, a class label column
    assert grid.shape == (2 * 66 + 2, 56 + 2 * 66 + 2, 3)


@pytest.mark.slow
def test_dit_torchrun_two_processes_match_single_process(tmp_path):
    """Each sample's timestep, noise and label dropout come with it from the loader: 2 ranks (gloo) see exactly
    the draws of one process (trained here), so every logged loss agrees to float reduction order."""
    common = [*DIT, "trainer.max_steps=6", "trainer.eval_every=3", "data.num_workers=2", "trainer.device=cpu"]
    train(compose(common), tmp_path / "single")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    run_script([torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *common,
                f"hydra.run.dir={tmp_path}/ddp"], cwd=tmp_path)
    assert json.loads((tmp_path / "ddp/summary.json").read_text())["world_size"] == 2
    losses = [[(e["step"], e.get("train/loss", e.get("val/loss"))) for e in read_jsonl(d / "metrics.jsonl")]
              for d in (tmp_path / "single", tmp_path / "ddp")]
    assert [s for s, _ in losses[1]] == [s for s, _ in losses[0]]
    assert [v for _, v in losses[1]] == pytest.approx([v for _, v in losses[0]], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "ddp/samples").iterdir()) == ["grid_step00000003.png", "grid_step00000006.png"]


@pytest.mark.slow
def test_dit_multirun_ln_vs_dyt_and_rerun_skips(tmp_path):
    args = ["python", str(ROOT / "train.py"), "-m", *DIT, "trainer.max_steps=3", "trainer.eval_every=3",
            "norm=layernorm,dyt", f"hydra.sweep.dir={tmp_path}/sweep"]
    run_script(args, cwd=tmp_path)
    runs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert [json.loads((p / "summary.json").read_text())["norm"] for p in runs] == ["dyt", "layernorm"]
    again = run_script(args, cwd=tmp_path)
    assert again.stdout.count("already completed; skipping") == 2


def test_sampling_settings_may_change_on_resume_training_settings_may_not(dyt_run):
    """How samples are drawn (grids, FID) does not define a run: it may change when resuming, and does not
    name the run directory; the model and the diffusion it trains on do."""
    d, _ = dyt_run
    dit = get_family("dit").resume_keys  # the DiT family's own keys that may change on resume
    changes = check_config_change(d, compose([*DIT, "norm=dyt", "trainer.keep_checkpoints=2",
                                              "model.diffusion.sample_steps=50", "model.diffusion.cfg_scale=2.0",
                                              "model.diffusion.grid_per_class=4"]), dit)
    assert set(changes) == {"model.diffusion.sample_steps", "model.diffusion.cfg_scale", "model.diffusion.grid_per_class"}
    for bad in ("model.diffusion.steps=500", "model.class_dropout=0.2", "model.adaln_zero_init=true"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            check_config_change(d, compose([*DIT, "norm=dyt", "trainer.keep_checkpoints=2", bad]), dit)
