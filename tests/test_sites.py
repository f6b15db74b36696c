"""Diagnostics at every norm site (issue 23): each site's input std, saturated share and output std, as the
trainer logs them, equal an independent computation on a fixed batch; the run's mean saturation reaches
summary.json; `scripts/figures.py sites` and `scripts/probe.py` run on tiny runs."""
import json

import pytest
import torch

from conftest import TINY, compose, script
from dyt.analysis import SATURATION, InputStdProbe, norm_layers
from dyt.families import build_model
from dyt.logging import read_jsonl
from dyt.nn import ElementwiseNorm

LLAMA = ["model=llama_tiny", "data=text_pydoc", "model.dim=32", "model.n_layers=2", "model.n_heads=2",
         "model.n_kv_heads=1"]  # a family with RMSNorm sites


def expected(layers, forward) -> dict[str, float]:
    """std/, sat/ and out_std/ of every site from our own hooks on its first call: saturated means
    |alpha x| > SATURATION for DyT, |x - mean| / std > SATURATION (the input's own mean and std) otherwise."""
    want = {}

    def hook(name):
        def record(module, args, out):
            if f"std/{name}" in want:
                return
            x = args[0].detach().double()
            z = module.alpha.double() * x if isinstance(module, ElementwiseNorm) else (x - x.mean()) / x.std()
            want.update({f"std/{name}": x.std().item(), f"sat/{name}": (z.abs() > SATURATION).double().mean().item(),
                         f"out_std/{name}": out.detach().double().std().item()})
        return record
    hooks = [m.register_forward_hook(hook(name)) for name, m in layers]
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
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
    with the paper's accuracy; the cut-off decides it (a cut-off of 0 always predicts HELP, above 1 never)."""
    probe = script("scripts/probe.py")
    args = ["--steps", "3", "--out", str(tmp_path), *TINY, "norm=layernorm"]
    assert probe.main(["--cutoff", "0", *args]) == 0
    out = capsys.readouterr().out
    assert "mean saturation at the last logged step: layernorm" in out and "predicted to HELP" in out
    assert "75% raw in-sample accuracy" in out
    assert (tmp_path / "layernorm" / "summary.json").is_file() and (tmp_path / "dyt" / "summary.json").is_file()
    assert probe.main(["--cutoff", "1.01", *args]) == 0 and "predicted to HURT" in capsys.readouterr().out


def test_report_shows_a_cells_mean_saturation_beside_its_runs():
    from types import SimpleNamespace
    from dyt.paper.render import saturation
    run = lambda **summary: SimpleNamespace(summary=summary, config={})  # noqa: E731
    assert saturation(SimpleNamespace(runs=[run(**{"train/saturation": 0.2}), run(**{"train/saturation": 0.4}),
                                            run()])) == "sat 0.30"  # a run from before the diagnostics: left out
    assert saturation(SimpleNamespace(runs=[run()])) == ""
