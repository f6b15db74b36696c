"""Diagnostics at every norm site (issue 23): each site's input std, saturated share and output std, as the
trainer logs them, equal an independent computation on a fixed batch; the run's mean saturation reaches
summary.json; `scripts/figures.py sites` and `scripts/probe.py` run on tiny runs."""
import json

import pytest
import torch
import torch.nn as nn

from conftest import TINY, compose, script
from dyt.analysis import SATURATION, InputStdProbe, norm_layers
from dyt.families import BUILTIN, build_model
from dyt.logging import read_jsonl
from dyt.nn import ElementwiseNorm
from dyt.trainer import Trainer

LLAMA = ["model=llama_tiny", "data=text_pydoc", "model.dim=32", "model.n_layers=2", "model.n_heads=2",
         "model.n_kv_heads=1"]  # a family with RMSNorm sites


def expected(layers, forward) -> dict[str, float]:
    """std/, sat/ and out_std/ of every site from our own hooks, over ALL its calls in the forward (DINO's student
    sees the global then the local crops, an RCPS norm each strand): the std of all its inputs (outputs) together;
    saturated means |alpha x| > SATURATION for DyT, |x - mean| / std > SATURATION (each call's own mean and std)
    otherwise."""
    calls = {}

    def hook(name):
        def record(module, args, out):
            x = args[0].detach().double()
            z = module.alpha.double() * x if isinstance(module, ElementwiseNorm) else (x - x.mean()) / x.std()
            calls.setdefault(name, []).append((x.flatten(), (z.abs() > SATURATION).sum().item(),
                                               out.detach().double().flatten()))
        return record
    hooks = [m.register_forward_hook(hook(name)) for name, m in layers]
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
    want = {}
    for name, seen in calls.items():
        x, saturated, out = torch.cat([c[0] for c in seen]), sum(c[1] for c in seen), torch.cat([c[2] for c in seen])
        want.update({f"std/{name}": x.std().item(), f"sat/{name}": saturated / x.numel(),
                     f"out_std/{name}": out.std().item()})
    return want


@pytest.mark.parametrize("overrides", [[*TINY, "norm=dyt", "norm.alpha_init=4.0"], [*TINY, "norm=layernorm"],
                                       [*LLAMA, "norm=dyt", "model.embed_init_std=1.0"], [*LLAMA, "norm=rmsnorm"]],
                         ids=["vit-dyt", "vit-layernorm", "llama-dyt", "llama-rmsnorm"])
def test_site_values_equal_an_independent_computation(overrides):
    cfg = compose(overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    vision = cfg.model.family == "vit"
    x = torch.randn(4, cfg.data.in_chans, cfg.data.image_size, cfg.data.image_size) if vision else \
        torch.randint(0, cfg.model.get("vocab_size") or 256, (2, 32))
    want = expected(norm_layers(model), lambda: model(x))
    with torch.no_grad(), InputStdProbe(model) as probe:
        model(x)
    got = probe.metrics()
    assert got.pop("train/probe_ms") > 0 and len(want) == 3 * len(norm_layers(model)) >= 9
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert any(v > 0 for k, v in got.items() if k.startswith("sat/"))  # the check can tell saturated from not


# Every built-in family at its smallest (each family's own test file's tiny overrides), with DyT and the norm it is
# studied with; cnn is ResNet-50 (BatchNorm sites; VGG-19's 140M-parameter classifier takes seconds to build).
FAMILIES = {
    "vit": ([*TINY], "layernorm"),
    "convnext": (["model=convnext_atto", "data=digits", "data.image_size=32"], "layernorm"),
    "cnn": (["model=resnet50", "data=digits", "data.image_size=32"], "batchnorm"),
    "llama": ([*LLAMA, "data.seq_len=32"], "rmsnorm"),
    "dit": (["experiment=dit_pixel", "model.depth=2", "model.hidden=32", "model.heads=2"], "layernorm"),
    "mae": (["model=mae_pico", "data=digits", "model.hidden=32", "model.depth=2", "model.decoder_hidden=16",
             "model.decoder_depth=1"], "layernorm"),
    "dino": (["model=dino_pico", "data=digits", "data.image_size=16", "model.kwargs.depth=2",
              "model.kwargs.embed_dim=32", "model.crops.global_size=12", "model.crops.local_size=8",
              "model.crops.local_number=2", "model.head.out_dim=64", "model.head.hidden_dim=32",
              "model.head.bottleneck_dim=16"], "layernorm"),
    "wav2vec2": (["experiment=mini_w2v", "data.synth_utterances=8", "data.synth_val_utterances=4"], "layernorm"),
    "hyenadna": (["model=hyenadna_pico", "data=dna_synth", "data.val_limit=0.05"], "layernorm"),
    "caduceus": (["model=caduceus_tiny", "data=dna_synth", "data.mlm=true", "data.seq_len=64",
                  "data.val_limit=0.05"], "rmsnorm"),
    "gpt2": (["model=gpt2_tiny", "data=text_pydoc", "model.n_layer=2", "model.n_embd=32", "model.n_head=2",
              "model.block_size=64", "data.seq_len=32"], "layernorm"),
}
# Each family's site count from its config: per block its pre-norms, plus the final norm(s).
SITES = {
    "vit": lambda m: 2 * m.kwargs.depth + 1,
    "convnext": lambda m: 12 + 1 + 3 + 1,  # convnext_atto: 2+2+6+2 blocks, the stem, 3 downsamples, the head
    "cnn": lambda m: 16 * 3 + 1 + 4,  # resnet50: 3+4+6+3 bottlenecks of 3 BatchNorms, the stem, 4 downsamples
    "llama": lambda m: 2 * m.n_layers + 1,
    "dit": lambda m: 2 * m.depth + 1,  # + the final layer's adaLN norm
    "mae": lambda m: 2 * m.depth + 1 + 2 * m.decoder_depth + 1,  # encoder + decoder
    "dino": lambda m: 2 * (2 * m.kwargs.depth + 1),  # student + teacher
    "wav2vec2": lambda m: 2 * m.depth + 2,  # + the feature norm and the encoder's
    "hyenadna": lambda m: 2 * m.n_layer + 1,
    "caduceus": lambda m: m.n_layer + 1,  # one RCPS norm per block + the final one
    "gpt2": lambda m: 2 * m.n_layer + 1,
}
NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm, ElementwiseNorm)  # what a scan calls a norm


def test_every_builtin_family_is_covered():
    assert set(FAMILIES) == set(SITES) == {f.name for f in BUILTIN}


@pytest.mark.parametrize("family,norm", [(f, n) for f, (_, base) in FAMILIES.items() for n in ("dyt", base)])
def test_every_family_logs_its_sites_values_through_its_task(family, norm, tmp_path):
    """Through the family's real task and data: its first training micro-batch's loss, once under our own hooks
    (`expected`) and once under the trainer's probe, from the same RNG state (losses draw masks and noise), give the
    same values at every site (a later micro-batch's loss is not recorded: each family's loss calls its model's
    forward, where the probe stops); and the sites are every norm module of the model (a scan by type), each of
    which ran."""
    overrides, _ = FAMILIES[family]
    t = Trainer(compose([*overrides, f"norm={norm}", "trainer.batch_size=4", "trainer.resume=never",
                         "logger=none"]), tmp_path / "run")
    try:
        batches = t._batches()
        batch, later = next(batches), next(batches)
        sites = norm_layers(t.model)
        scanned = [m for m in t.model.modules() if isinstance(m, NORM_TYPES)]
        assert [m for _, m in sites] == scanned and len(sites) == SITES[family](t.cfg.model)
        torch.manual_seed(1)
        want = expected(sites, lambda: t.task.loss(t.net, batch))
        torch.manual_seed(1)
        with InputStdProbe(t.model) as probe:
            t.task.loss(t.net, batch)
            t.task.loss(t.net, later)
        got = probe.metrics()
    finally:
        t.close()
    assert got.pop("train/probe_ms") > 0 and len(want) == 3 * len(sites)  # every site ran
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("norm", ["dyt", "layernorm"])
def test_runs_log_site_diagnostics_and_keep_the_mean_saturation(vit_runs, norm):
    events = [e for e in read_jsonl(vit_runs / norm / "metrics.jsonl") if e["split"] == "train"]
    assert [e["step"] for e in events] == [3, 4]
    for e in events:
        sites = {k.removeprefix("std/") for k in e if k.startswith("std/")}
        assert len(sites) == 5 and sites == {k.removeprefix("sat/") for k in e if k.startswith("sat/")} == \
            {k.removeprefix("out_std/") for k in e if k.startswith("out_std/")}
        sats = [e[f"sat/{n}"] for n in sites]
        assert all(0 <= s <= 1 for s in sats) and e["train/saturation"] == pytest.approx(sum(sats) / len(sats))
    summary = json.loads((vit_runs / norm / "summary.json").read_text())
    assert summary["train/saturation"] == events[-1]["train/saturation"]


@pytest.mark.parametrize("norm", ["dyt", "layernorm"])
def test_sites_figure(vit_runs, norm, tmp_path, capsys):
    figures = script("scripts/figures.py")
    assert figures.main(["sites", str(vit_runs / norm)]) == 0
    png = vit_runs / norm / "figures" / "sites.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in capsys.readouterr().out
    (tmp_path / "metrics.jsonl").write_text("")  # a run dir without the metrics: an error naming what is missing
    assert figures.main(["sites", str(tmp_path)]) == 2 and "no sat/ metrics" in capsys.readouterr().err


def test_probe_script_gives_a_verdict_at_tiny_n(tmp_path, capsys):
    """scripts/probe.py trains the config's norm and DyT for N steps on the embedded digits and states the verdict
    with the paper's accuracy; the cut-off decides it (saturation above it: HELP; below 0 always, 1 never)."""
    probe = script("scripts/probe.py")
    args = ["--steps", "3", "--out", str(tmp_path), *TINY, "norm=layernorm"]
    assert probe.main(["--cutoff", "-1", *args]) == 0
    out = capsys.readouterr().out
    assert "mean saturation at the last logged step: layernorm" in out and "predicted to HELP" in out
    assert "75% raw in-sample accuracy" in out
    assert (tmp_path / "layernorm" / "summary.json").is_file() and (tmp_path / "dyt" / "summary.json").is_file()
    assert probe.main(["--cutoff", "1", *args]) == 0 and "predicted to HURT" in capsys.readouterr().out


def test_report_shows_a_cells_mean_saturation_beside_its_runs():
    from types import SimpleNamespace
    from dyt.paper.render import saturation
    run = lambda **summary: SimpleNamespace(summary=summary, config={})  # noqa: E731
    assert saturation(SimpleNamespace(runs=[run(**{"train/saturation": 0.2}), run(**{"train/saturation": 0.4}),
                                            run()])) == "sat 0.30"  # a run from before the diagnostics: left out
    assert saturation(SimpleNamespace(runs=[run()])) == ""
