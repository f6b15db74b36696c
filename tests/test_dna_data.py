"""The shared DNA data (dyt/data/dna.py): the Caduceus repo's character ids, reverse complement, the fasta read
through its .fai index, windows of the bed intervals as hg38_dataset.py cuts them, next-token and masked-LM
samples, and draws seeded per sample (2 ranks see one process's samples)."""
from types import SimpleNamespace

import pytest
import torch

from conftest import compose
from dyt.data import dna
from dyt.data.sampler import SeededSamples
from dyt.distributed import DistInfo
from dyt.errors import ConfigError
from dyt.families import build_task


def data_cfg(root, **kw):
    base = dict(source="synth", root=str(root), fasta=None, bed=None, train_split="train", val_split="valid",
                seq_len=128, interval_len=2**14, add_eos=True, rc_aug=False, mlm=False, mlm_probability=0.15,
                val_limit=1.0, synth_chroms=3, synth_length=2**15, synth_seed=0)
    return SimpleNamespace(**{**base, **kw})


def plain_sequences(fasta_path):
    """name -> the sequence, parsed from the file without an index."""
    seqs, name = {}, None
    for line in open(fasta_path).read().splitlines():
        if line.startswith(">"):
            name = line[1:].split()[0]
            seqs[name] = []
        else:
            seqs[name].append(line)
    return {k: "".join(v) for k, v in seqs.items()}


# --- tokenizer ---------------------------------------------------------------------------------------------------
def test_ids_are_the_caduceus_tokenizer_ids():
    # caduceus/tokenization_caduceus.py: specials 0..6, then A C G T N from 7; upper-cased first; else [UNK]
    assert dna.VOCAB == ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]", "A", "C", "G", "T", "N")
    assert (dna.PAD, dna.MASK, dna.EOS, dna.UNK) == (4, 3, 1, 6)
    assert dna.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]
    assert dna.encode("acgtn").tolist() == [7, 8, 9, 10, 11]
    assert dna.encode("AXR-").tolist() == [7, 6, 6, 6]
    assert dna.padded_vocab_size(8) == 16 and dna.padded_vocab_size(1) == 12


def test_decode_round_trips_and_reverse_complement_is_an_involution():
    seq = "ACGTNNACCGTTA"
    assert dna.decode(dna.encode(seq)) == seq and dna.decode(dna.encode(seq.lower())) == seq
    assert dna.decode(dna.reverse_complement(dna.encode("AACGTN"))) == "NACGTT"
    ids = torch.randint(0, dna.VOCAB_SIZE, (3, 50))  # specials included: they are their own complement
    assert torch.equal(dna.reverse_complement(dna.reverse_complement(ids)), ids)
    assert not torch.equal(dna.reverse_complement(ids), ids)


# --- the genome ----------------------------------------------------------------------------------------------------
def test_fasta_regions_equal_the_plain_file_and_the_index_is_written(tmp_path):
    fasta, bed = dna.write_synthetic_genome(tmp_path, chroms=2, length=1000, interval_len=256, line_width=60)
    plain = plain_sequences(fasta)
    f = dna.Fasta(fasta)
    assert (tmp_path / "genome.fa.fai").read_text().splitlines()[0] == "chr1\t1000\t16\t60\t61"  # samtools' columns
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        name = f"chr{int(torch.randint(1, 3, (), generator=g))}"
        start = int(torch.randint(0, 1000, (), generator=g))
        end = start + int(torch.randint(0, 200, (), generator=g))
        assert f.fetch(name, start, end).decode() == plain[name][start:end]
    assert f.length("chr2") == 1000 and dna.Fasta(fasta).index == f.index  # the written index read back
    assert any(c.islower() for c in plain["chr1"]) and "N" * 50 in plain["chr1"]  # soft-masked bases and a gap


def test_windows_cut_the_intervals_as_the_repo(tmp_path):
    train, val = dna.build_dna_datasets(data_cfg(tmp_path), seed=0)
    plain = plain_sequences(tmp_path / "genome.fa")
    shifts = 2**14 // 128
    assert train.shifts == shifts and len(train) == 2 * 2 * shifts and len(val) == 2 * shifts  # 2 rows a chromosome
    # sample i: window i % shifts of interval i // shifts; the second interval of chr1 starts at 2^14
    assert train.window(shifts + 3) == ("chr1", 2**14 + 3 * 128, 2**14 + 4 * 128)
    assert val.window(0)[0] == "chr3"
    for i in (0, 7, shifts + 5, 3 * shifts + 1):
        chrom, start, end = train.window(i)
        x, y = train[i]
        ids = dna.encode(plain[chrom][start:end])
        full = torch.cat([ids, torch.tensor([dna.EOS])])
        full[full == dna.N] = dna.PAD
        assert x.shape == y.shape == (128,) and torch.equal(x, full[:-1]) and torch.equal(y, full[1:])
        assert y[-1] == dna.EOS


def test_a_window_past_the_chromosome_end_is_shifted_back(tmp_path):
    fasta, _ = dna.write_synthetic_genome(tmp_path, chroms=2, length=1000, interval_len=512)
    ds = dna.GenomeWindows(dna.Fasta(fasta), [("chr1", 700)], data_cfg(tmp_path, interval_len=512))
    assert ds.window(0) == ("chr1", 700, 828) and ds.window(2) == ("chr1", 872, 1000)  # 956..1084 moved back
    short = dna.GenomeWindows(dna.Fasta(fasta), [("chr1", 0)], data_cfg(tmp_path, seq_len=2048, interval_len=2048))
    x, _ = short[0]  # a chromosome shorter than a window: left-padded
    assert x.shape == (2048,) and (x[:1048] == dna.PAD).all() and (x[1048:] != dna.PAD).any()


def test_n_becomes_pad_and_is_ignored(tmp_path):
    train, _ = dna.build_dna_datasets(data_cfg(tmp_path), seed=0)
    plain = plain_sequences(tmp_path / "genome.fa")
    gap = plain["chr1"].index("N" * 50)
    i = gap // 128
    x, y = train[i]
    assert (x == dna.PAD).sum() > 0 and not (x == dna.N).any() and not (y == dna.N).any()


# --- draws ----------------------------------------------------------------------------------------------------------
def test_rc_aug_replaces_about_half_the_windows_by_their_reverse_complement(tmp_path):
    plain_ds, _ = dna.build_dna_datasets(data_cfg(tmp_path), seed=0)
    rc_ds, rc_val = dna.build_dna_datasets(data_cfg(tmp_path, rc_aug=True, add_eos=False), seed=0)
    seeded = SeededSamples(rc_ds, 0, 0)
    flipped = 0
    for i in range(0, 400, 4):
        window = dna.encode(plain_ds.fasta.fetch(*plain_ds.window(i)))
        window[window == dna.N] = dna.PAD
        x, y = seeded[i]
        seq = torch.cat([x, y[-1:]])
        rc = dna.reverse_complement(window)
        rc[rc == dna.N] = dna.PAD
        assert torch.equal(seq, window) or torch.equal(seq, rc)
        flipped += torch.equal(seq, rc) and not torch.equal(rc, window)
        assert torch.equal(seeded[i][0], x)  # a pure function of (seed, epoch, index)
    assert 30 <= flipped <= 70
    assert torch.equal(rc_val[3][0], rc_val[3][0])  # validation: fixed draws per sample


def test_masked_lm_samples_follow_the_repo(tmp_path):
    ids = dna.encode("ACGT" * 5000)
    g = torch.Generator().manual_seed(0)
    x, y = dna.masked_lm_sample(ids, 0.15, add_eos=True, generator=g)
    assert x.shape == y.shape == ids.shape  # the EOS appended is dropped again
    picked = y != dna.PAD
    assert 0.14 < picked.float().mean() < 0.16 and torch.equal(y[picked], ids[picked])
    masked = (x == dna.MASK) & picked
    assert 0.77 < masked.sum() / picked.sum() < 0.83
    assert torch.equal(x[~picked], ids[~picked])
    _, val = dna.build_dna_datasets(data_cfg(tmp_path, mlm=True), seed=0)
    assert torch.equal(val[5][0], val[5][0]) and (val[5][1] != dna.PAD).any()


def test_two_ranks_see_the_samples_of_one_process(tmp_path):
    cfg = compose(["model=hyenadna_pico", "data=dna_synth", f"data.root={tmp_path}"])
    single = build_task(cfg, DistInfo())
    ranks = [build_task(cfg, DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    b = next(iter(single.train_loader(8, 1, 0)))
    r0, r1 = (next(iter(t.train_loader(4, 1, 0))) for t in ranks)
    for k in range(2):
        assert torch.equal(b[k][0::2], r0[k]) and torch.equal(b[k][1::2], r1[k])


def test_bad_dna_configs_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="must divide data.interval_len"):
        dna.build_dna_datasets(data_cfg(tmp_path, seq_len=100), seed=0)
    with pytest.raises(ConfigError, match="needs data.fasta"):
        dna.build_dna_datasets(data_cfg(tmp_path, source="fasta"), seed=0)
    with pytest.raises(ConfigError, match="no rows of split 'test'"):
        dna.build_dna_datasets(data_cfg(tmp_path, val_split="test"), seed=0)
