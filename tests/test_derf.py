"""The Derf follow-up's table (arXiv 2512.10938) with Derf's own settings per cell (zlab-princeton/Derf), and the
DiT init option its DiT-B needs."""
import pytest
import torch

import dyt
from conftest import compose
from dyt.paper.tables import DERF, T6

# Derf's full table (PAPER.md): LayerNorm / DyT / Derf
PAPER = {"ViT-B": (82.3, 82.5, 82.8), "ViT-L": (83.1, 83.6, 83.8), "DiT-B/4": (64.93, 63.94, 63.23),
         "DiT-L/4": (45.91, 45.66, 43.94), "DiT-XL/2": (19.94, 20.83, 18.92), "wav2vec 2.0 Base": (1.95, 1.95, 1.93),
         "wav2vec 2.0 Large": (1.92, 1.91, 1.90), "HyenaDNA": (85.2, 85.2, 85.7), "Caduceus": (86.9, 86.9, 87.3),
         "GPT-2": (2.94, 2.97, 2.94)}


def test_every_row_of_derfs_table_with_its_values():
    assert [r.label for r in DERF.rows] == list(PAPER)
    for row in DERF.rows:
        got = tuple(next(iter(row.cells[n].paper.values())) for n in ("layernorm", "dyt", "derf"))
        assert got == PAPER[row.label], row.label


def derf_cfg(label):
    return compose(list(DERF.cell(label, "derf").overrides))


def test_derf_cells_take_derfs_own_settings():
    """Where Derf's code differs from the DyT paper's recipe (each difference cited in the experiment's yaml)."""
    assert derf_cfg("ViT-B").model.drop_path == 0.15  # ViT/main.py:61 (Table 1: 0.1)
    assert derf_cfg("ViT-L").model.drop_path == 0.5  # ViT/README.md:35 (Table 1: 0.4)
    assert derf_cfg("DiT-XL/2").norm.alpha_init == 1.0  # DiT/train.py:149-152 (Table 3: 0.5)
    assert derf_cfg("DiT-L/4").norm.alpha_init == 0.5 and derf_cfg("DiT-B/4").model.adaln_zero_blocks is True
    base, large = derf_cfg("wav2vec 2.0 Base"), derf_cfg("wav2vec 2.0 Large")  # speech model/dynamic_erf.patch
    assert base.model.layer_norm_first is True and base.trainer.precision == large.trainer.precision == "fp32"
    gpt2 = derf_cfg("GPT-2")
    assert gpt2.model.name == "gpt2_124m" and gpt2.model.alpha_attn == 1.0 and gpt2.norm.name == "derf"
    for label in ("ViT-B", "DiT-XL/2", "GPT-2"):
        assert derf_cfg(label).table == "derf"


def test_dna_rows_share_table6_cells_and_add_a_derf_pretraining():
    for label in ("HyenaDNA", "Caduceus"):
        row = DERF.row(label)
        assert row.cells["layernorm"] is T6.cell(label, "layernorm") and row.cells["dyt"] is T6.cell(label, "dyt")
        derf = row.cells["derf"]
        assert "norm=derf" in derf.pretrain.overrides and derf.match["init_from.norm"] == "derf"


@pytest.mark.parametrize("norm, blocks, final", [("derf", True, False), ("layernorm", True, True),
                                                 ("derf", None, False)])
def test_adaln_zero_blocks_zeroes_only_the_blocks(norm, blocks, final):
    """Derf's DiT-B (DiT/models.py:211-220): every block's adaLN modulation zero-initialised whatever the norm,
    the final layer's (and its linear) only with LayerNorm; null follows model.adaln_zero_init."""
    torch.manual_seed(0)
    flag = "null" if blocks is None else str(blocks).lower()
    m = dyt.build_model(compose(["experiment=dit_pixel", f"norm={norm}", f"model.adaln_zero_blocks={flag}"]))
    zero = lambda layer: bool((layer.weight == 0).all() and (layer.bias == 0).all())  # noqa: E731
    assert all(zero(b.adaLN_modulation[-1]) == bool(blocks) for b in m.blocks)
    assert zero(m.final_layer.adaLN_modulation[-1]) == zero(m.final_layer.linear) == final
