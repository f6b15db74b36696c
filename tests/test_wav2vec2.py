"""wav2vec 2.0 (Table 5): sizes against fairseq / transformers, the criterion against an independent computation and
transformers' Wav2Vec2ForPreTraining, masking and distractors as fairseq draws them, the DyT sites of the official
patch, and training runs that resume exactly and split over 2 ranks as 1 process."""
from __future__ import annotations

import math
import os
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import ROOT, compose, killed_and_resumed, run_script
from dyt.logging import read_jsonl

TINY = ["experiment=mini_w2v", "data.synth_utterances=48", "data.synth_val_utterances=8", "trainer.batch_size=4",
        "trainer.log_every=2", "trainer.eval_every=10", "trainer.ckpt_every=5", "optim.warmup_steps=2"]


def build(*overrides, meta=False):
    from dyt.families import build_model
    cfg = compose(list(overrides))
    if meta:
        with torch.device("meta"):
            return build_model(cfg)
    torch.manual_seed(0)
    return build_model(cfg)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --- sizes and norm sites ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, params, layers, hidden, heads, ffn, final_dim, pre_norm", [
    ("base", 95_044_608, 12, 768, 12, 3072, 256, False),
    ("large", 317_380_864, 24, 1024, 16, 4096, 768, True)])
def test_sizes_equal_fairseq_and_transformers(size, params, layers, hidden, heads, ffn, final_dim, pre_norm):
    """fairseq's Base (95.0M) and the DyT repo's Large (317M), counted the same by transformers' model of that
    shape; DyT adds one alpha per converted norm: the feature norm, the encoder's, two per layer."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
    assert count(build(f"model=w2v_{size}", "norm=layernorm", meta=True)) == params
    assert count(build(f"model=w2v_{size}", "norm=dyt", meta=True)) == params + 2 + 2 * layers
    config = Wav2Vec2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=ffn, codevector_dim=final_dim, proj_codevector_dim=final_dim,
                            do_stable_layer_norm=pre_norm, feat_extract_norm="group")
    with torch.device("meta"):
        assert count(Wav2Vec2ForPreTraining(config)) == params


def test_dyt_replaces_exactly_the_patchs_sites():
    """dynamic-tanh.patch: the feature LayerNorm, the encoder's, each layer's self_attn_layer_norm and
    final_layer_norm; the conv encoder's GroupNorm stays. Every norm kind builds and runs."""
    from dyt.nn import DynamicTanh

    def sites(model, cls):
        return sorted(n for n, m in model.named_modules() if type(m) is cls)

    ln, dyt = build("model=w2v_base", "norm=layernorm", meta=True), build("model=w2v_base", "norm=dyt", meta=True)
    expected = sorted(["feature_norm", "encoder.norm"] + [f"encoder.layers.{i}.{s}" for i in range(12)
                                                          for s in ("self_attn_layer_norm", "final_layer_norm")])
    assert sites(ln, nn.LayerNorm) == expected and sites(dyt, DynamicTanh) == expected
    assert sites(dyt, nn.LayerNorm) == [] and sites(dyt, nn.GroupNorm) == sites(ln, nn.GroupNorm) == [
        "feature_extractor.conv_layers.0.1"]
    assert all(m.alpha_init == 0.5 for m in dyt.modules() if isinstance(m, DynamicTanh))
    for kind in ("rmsnorm", "derf", "identity"):
        out = build("model=w2v_tiny", f"norm={kind}")(torch.randn(2, 4000), [1, 2], 2.0)
        assert torch.isfinite(out["logits"][..., 0]).all()


# --- the criterion ----------------------------------------------------------------------------------------------
def to_transformers(model):
    """Our tiny model's weights in transformers' Wav2Vec2ForPreTraining of the same shape (eval mode)."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
    m = model.cfg
    config = Wav2Vec2Config(
        hidden_size=m.hidden, num_hidden_layers=m.depth, num_attention_heads=m.heads, intermediate_size=m.ffn,
        conv_dim=[c[0] for c in m.conv_layers], conv_kernel=[c[1] for c in m.conv_layers],
        conv_stride=[c[2] for c in m.conv_layers], num_conv_pos_embeddings=m.conv_pos,
        num_conv_pos_embedding_groups=m.conv_pos_groups, num_codevectors_per_group=m.latent_vars,
        num_codevector_groups=m.latent_groups, codevector_dim=m.final_dim, proj_codevector_dim=m.final_dim,
        num_negatives=m.num_negatives, feat_extract_norm="group", do_stable_layer_norm=m.layer_norm_first,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0, final_dropout=0.0, layerdrop=0.0, layer_norm_eps=m.norm_eps)
    names = {"feature_norm.": "wav2vec2.feature_projection.layer_norm.",
             "post_extract_proj.": "wav2vec2.feature_projection.projection.", "mask_emb": "wav2vec2.masked_spec_embed",
             "encoder.pos_conv.conv.": "wav2vec2.encoder.pos_conv_embed.conv.", "encoder.norm.": "wav2vec2.encoder.layer_norm.",
             ".self_attn.": ".attention.", ".self_attn_layer_norm.": ".layer_norm.", ".fc1.": ".feed_forward.intermediate_dense.",
             ".fc2.": ".feed_forward.output_dense.", "quantizer.vars": "quantizer.codevectors", "final_proj.": "project_hid."}
    state = {}
    for k, v in model.state_dict().items():
        k = k.replace("feature_extractor.conv_layers.", "wav2vec2.feature_extractor.conv_layers.")
        k = k.replace(".0.weight", ".conv.weight").replace("conv_layers.0.1.", "conv_layers.0.layer_norm.")
        k = k.replace("encoder.layers.", "wav2vec2.encoder.layers.") if k.startswith("encoder.layers.") else k
        for a, b in names.items():
            k = k.replace(a, b)
        state[k] = v
    hf = Wav2Vec2ForPreTraining(config).eval()
    hf.load_state_dict(state, strict=True)
    return hf


def test_loss_equals_the_formula_and_transformers():
    """On a fixed batch (eval mode: no dropout, argmax codes), with transformers given our mask and distractors:
    its contrastive loss is ours; the diversity term is computed here from transformers' quantizer logits
    (fairseq's soft perplexity; transformers' own eval diversity uses the argmax codes, = our code perplexity),
    the feature penalty from its conv encoder; our loss = their sum, and val/loss = loss / S / ln 2."""
    from dyt.families.wav2vec2.loss import in_bits, loss_sums
    model = build("model=w2v_tiny", "norm=layernorm").eval()
    x = torch.randn(3, 6000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x, [11, 12, 13], 2.0)
        sums = loss_sums(out, [0.1, 10.0])
        hf = to_transformers(model)
        mask, negs = out["mask"], out["negatives"]
        b, t = mask.shape
        positions = torch.stack([row.nonzero().flatten() for row in mask])  # [B, M]: the masked frames
        sampled = torch.zeros(b, t, negs.shape[-1], dtype=torch.long)
        for i in range(b):
            sampled[i, positions[i]] = i * t + positions[i][negs[i]]
        ref = hf(x, mask_time_indices=mask, sampled_negative_indices=sampled)
        size = int(mask.sum())
        gv = model.cfg.latent_vars * model.cfg.latent_groups
        # the formula, from transformers' modules
        conv = hf.wav2vec2.feature_extractor(x)
        penalty = conv.float().pow(2).mean()
        normed = hf.wav2vec2.feature_projection.layer_norm(conv.transpose(1, 2))[mask]
        probs = torch.softmax(hf.quantizer.weight_proj(normed).view(size, model.cfg.latent_groups, -1), -1).mean(0)
        soft_ppl = torch.exp(-(probs * torch.log(probs + 1e-7)).sum(-1)).sum()
        formula = ref.contrastive_loss + 0.1 * (gv - soft_ppl) / gv * size + 10 * penalty * size
    assert sums["sample_size"] == size == 3 * out["logits"].shape[1]
    assert float(sums["contrastive"]) == pytest.approx(float(ref.contrastive_loss), rel=1e-5)
    assert float(ref.diversity_loss) == pytest.approx(float((gv - out["code_perplexity"]) / gv * size), rel=1e-5)
    assert float(sums["loss"]) == pytest.approx(float(formula), rel=1e-5)
    assert float(in_bits(sums["loss"], sums["sample_size"])) == pytest.approx(float(formula) / size / math.log(2), rel=1e-5)


def test_training_quantizer_is_gumbel_softmax_with_the_samples_noise():
    """In training the quantizer is F.gumbel_softmax(hard=True) (value and gradient) with noise from the given
    generator instead of the global RNG."""
    from dyt.families.wav2vec2.masking import gumbel_noise
    from dyt.families.wav2vec2.quantizer import GumbelQuantizer
    torch.manual_seed(0)
    q = GumbelQuantizer(8, 5, 2, 6)
    x = torch.randn(1, 7, 8, requires_grad=True)
    ours = q(x, 0.7, gumbel_noise([torch.Generator().manual_seed(3)], (7, 2, 5)))["x"]
    (ours * torch.arange(6.0)).sum().backward()
    g_ours, x.grad = x.grad.clone(), None
    torch.manual_seed(3)
    onehot = F.gumbel_softmax(q.weight_proj(x).view(7, 2, 5), tau=0.7, hard=True)
    ref = torch.einsum("ngv,gvd->ngd", onehot, q.vars.view(2, 5, 3)).reshape(1, 7, 6)
    (ref * torch.arange(6.0)).sum().backward()
    assert torch.allclose(ours, ref) and torch.allclose(x.grad, g_ours, atol=1e-6)


# --- masking and distractors ------------------------------------------------------------------------------------
def fairseq_mask(rng, b, t, prob=0.65, length=10, min_masks=2):
    """fairseq's compute_mask_indices (static, overlap allowed, no padding, require_same_masks), written anew."""
    num = max(min_masks, int(prob * t / length + rng.random()))
    min_len = length if t - length > num else t - num - 1
    rows = []
    for _ in range(b):
        starts = rng.choice(t - min_len, num, replace=False)
        idx = np.asarray([s + o for s in starts for o in range(length)])
        rows.append(np.unique(idx[idx < t]))
    keep = min(len(r) for r in rows)
    mask = np.zeros((b, t), bool)
    for i, r in enumerate(rows):
        mask[i, rng.choice(r, keep, replace=False) if len(r) > keep else r] = True
    return mask


def test_masks_have_fairseqs_masked_fraction_and_follow_the_seeds():
    from dyt.families.wav2vec2.masking import span_mask
    rng = np.random.default_rng(0)
    for t in (780, 49):  # a Base crop of 250k samples; a 1 s crop
        ref = np.mean([fairseq_mask(rng, 4, t).mean() for _ in range(300)])
        ours = np.mean([span_mask([torch.Generator().manual_seed(4 * k + i) for i in range(4)], t, 0.65, 10).float()
                        .mean().item() for k in range(300)])
        assert ours == pytest.approx(ref, abs=0.01), (t, ours, ref)
    one = span_mask([torch.Generator().manual_seed(s) for s in (5, 6)], 200, 0.65, 10)
    assert torch.equal(one, span_mask([torch.Generator().manual_seed(s) for s in (5, 6)], 200, 0.65, 10))
    assert not torch.equal(one, span_mask([torch.Generator().manual_seed(s) for s in (5, 7)], 200, 0.65, 10))
    assert (one.sum(1) == one.sum(1)[0]).all()  # every row masks as many frames (fairseq's require_same_masks)


def test_distractors_are_other_masked_frames_of_the_same_sample():
    from dyt.families.wav2vec2.masking import negative_indices
    negs = negative_indices([torch.Generator().manual_seed(s) for s in (1, 2)], 30, 100)
    assert negs.shape == (2, 30, 100) and negs.min() >= 0 and negs.max() <= 29
    assert not (negs == torch.arange(30).view(1, 30, 1)).any()  # never the position itself
    assert len(negs[0].unique()) == 30  # all the others are drawn


def test_temperature_anneals_with_the_step():
    from dyt.families.wav2vec2.quantizer import annealed_temperature
    assert annealed_temperature(0, 2.0, 0.5, 0.999995) == 2.0
    assert annealed_temperature(100_000, 2.0, 0.5, 0.999995) == pytest.approx(2.0 * 0.999995 ** 100_000)
    assert annealed_temperature(400_000, 2.0, 0.5, 0.999995) == 0.5


# --- training runs --------------------------------------------------------------------------------------------
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    """With layerdrop and dropout on (global RNGs), masks, distractors, Gumbel noise drawn per sample, and 2 data
    workers."""
    overrides = [*TINY, "norm=dyt", "trainer.max_steps=20", "model.encoder_layerdrop=0.3", "model.dropout=0.1",
                 "data.num_workers=2"]  # the per-sample seeds come the same from data workers
    a, b = killed_and_resumed(tmp_path, overrides, step=5, timeout=300)
    assert a["status"] == b["status"] == "completed"
    assert a["train/loss"] == b["train/loss"] and a["val/loss"] == b["val/loss"]
    wa, wb = (torch.load(d / "checkpoints/step_00000020.pt", weights_only=True)["model"]
              for d in (tmp_path / "killed", tmp_path / "straight"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_two_ranks_equal_one_process(tmp_path):
    """2 gloo ranks (DDP) train on the micro-batches one process takes with grad_accum 2, and evaluate its batches
    (eval_batch_size is per rank): the same losses."""
    from dyt.run import train
    steps = ["trainer.max_steps=6", "trainer.eval_every=6", "trainer.ckpt_every=6", "trainer.eval_batch_size=2"]
    train(compose([*TINY, *steps, "norm=dyt", "trainer.grad_accum=2"]), tmp_path / "one")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    run_script([torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *TINY, *steps, "norm=dyt",
                f"hydra.run.dir={tmp_path}/two"], cwd=tmp_path)
    losses = [[(e["step"], e.get("train/loss", e.get("val/loss"))) for e in read_jsonl(tmp_path / d / "metrics.jsonl")]
              for d in ("one", "two")]
    assert [s for s, _ in losses[1]] == [s for s, _ in losses[0]]
    assert [v for _, v in losses[1]] == pytest.approx([v for _, v in losses[0]], rel=1e-5)


def test_bad_configs_are_clear_errors():
    from dyt.errors import ConfigError
    from dyt.validate import validate
    with pytest.raises(ConfigError, match="shorter than the feature encoder's receptive field"):
        validate(compose(["model=w2v_base", "data=speech_synth", "data.min_sample_size=300"]))
    with pytest.raises(ConfigError, match="is not a multiple of model.heads"):
        validate(compose(["model=w2v_tiny", "data=speech_synth", "model.heads=3"]))


def test_paper_cells_run_the_recipes():
    """Table 5's cells run table5_w2v_<size> on the paper's jobs; Tables 13 / 14 reuse them beside the tuned run."""
    from dyt.paper import TABLES
    base = TABLES["table5"].cell("wav2vec 2.0 Base", "dyt")
    assert base.overrides == ("experiment=table5_w2v_base", "norm=dyt") and base.launcher == "slurm_8x8"
    assert TABLES["table5"].cell("wav2vec 2.0 Large", "layernorm").launcher == "slurm_16x8"
    assert TABLES["table13"].cell("wav2vec 2.0 Base", "dyt") is base
    tuned = TABLES["table14"].cell("wav2vec 2.0 Large", "dyt_tuned")
    assert tuned.paper == {"val/loss": 1.90} and compose(list(tuned.overrides)).norm.alpha_init == 1.0
    assert compose(list(TABLES["table13"].cell("wav2vec 2.0 Base", "dyt_tuned").overrides)).optim.lr == 6e-4
    assert TABLES["derf"].cell("wav2vec 2.0 Base", "derf").paper == {"val/loss": 1.93}
