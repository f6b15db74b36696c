"""wav2vec 2.0 (Table 5, and the wav2vec rows of Tables 13-14): self-supervised speech pre-training on raw audio,
LayerNorm vs DyT, scored by fairseq's validation loss."""
from __future__ import annotations

from dyt.families.wav2vec2.config import EXTRACTOR_MODES, Wav2Vec2ModelConfig, conv_frames, receptive_field
from dyt.families.wav2vec2.data import AudioDataConfig
from dyt.family import Family, Shape, indexed, lazy
from dyt.nn import NORM_KINDS
from dyt.ranges import COUNT


def w2v_check(cfg) -> list[str]:
    m, d = cfg.model, cfg.data
    ok = lambda *vals: all(COUNT.accepts(v) for v in vals)  # noqa: E731 - each reported apart when not
    problems = []
    if m.get("feature_norm") is not None and m.feature_norm not in NORM_KINDS:
        problems.append(f"model.feature_norm={m.feature_norm}: choose one of {', '.join(NORM_KINDS)} (or null: norm's)")
    if m.extractor_mode not in EXTRACTOR_MODES:
        problems.append(f"model.extractor_mode={m.extractor_mode!r}: choose one of {', '.join(EXTRACTOR_MODES)}")
    layers = [list(c) for c in m.conv_layers]
    if not layers or any(len(c) != 3 or not ok(*c) for c in layers):
        problems.append(f"model.conv_layers={layers}: give [channels, kernel, stride] per layer, each an integer >= 1")
        return problems
    if ok(m.hidden, m.heads) and m.hidden % m.heads:
        problems.append(f"model.hidden={m.hidden} is not a multiple of model.heads={m.heads}")
    if ok(m.final_dim, m.latent_groups) and m.final_dim % m.latent_groups:
        problems.append(f"model.final_dim={m.final_dim} is not a multiple of model.latent_groups={m.latent_groups} "
                        "(each group's code vectors have final_dim / groups entries)")
    if ok(m.conv_pos_groups, m.hidden) and m.hidden % m.conv_pos_groups:
        problems.append(f"model.hidden={m.hidden} is not a multiple of model.conv_pos_groups={m.conv_pos_groups}")
    shortest = d.get("min_sample_size")
    if ok(shortest, m.mask_length):
        field = receptive_field(layers)
        frames = conv_frames(layers, shortest)
        if shortest < field:
            problems.append(f"data.min_sample_size={shortest} is shorter than the feature encoder's receptive field "
                            f"({field} samples): such a crop has no frame")
        elif frames <= m.mask_length + 1:
            problems.append(f"data.min_sample_size={shortest} gives {frames} frames, too few for spans of "
                            f"model.mask_length={m.mask_length} and distractors among the masked frames")
    return problems


def w2v_shape(model, cfg) -> Shape:
    """The encoder layers at the frames of a longest crop (data.max_sample_size: 250k samples -> 780 frames).
    Outside them, per frame: the conv encoder's outputs (each stored for its GELU and the next conv, ~2 copies of
    C x T_i per layer, T_i the layer's frames, most in the first layers) and the fp32 contrastive candidates of
    the masked half of the frames ((1 + negatives) x final_dim, twice for their gradient)."""
    enc, m = model.encoder, model.cfg
    layer = enc.layers[0]
    samples = int(cfg.data.get("max_sample_size") or 250_000)
    layers = model.feature_extractor.layers
    frames = max(1, conv_frames(layers, samples))
    conv = sum(2 * dim * conv_frames(layers[:i + 1], samples) for i, (dim, _, _) in enumerate(layers))
    candidates = 0.5 * frames * (1 + m.num_negatives) * m.final_dim * 2
    hidden = layer.fc1.in_features
    return Shape(len(enc.layers), hidden, layer.self_attn.heads, layer.fc1.out_features, frames,
                 head_elems=(conv + candidates) / (frames * hidden))


FAMILY = Family(
    "wav2vec2", lazy("dyt.families.wav2vec2.model", "build_wav2vec2"), lazy("dyt.families.wav2vec2.task", "Wav2Vec2Task"),
    data_kinds=(AudioDataConfig.KIND,),
    schemas={"schema_wav2vec2": Wav2Vec2ModelConfig}, data_schemas={"schema_audio": AudioDataConfig},
    blocks=lambda m: indexed(m.encoder.layers), shape=w2v_shape, check=w2v_check)

__all__ = ["FAMILY", "Wav2Vec2ModelConfig"]
