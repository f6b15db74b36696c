"""Pre-tokenized shards, the Table 4 data path (issue 18, defect 3): scripts/pretokenize.py gives the same shards
with any number of workers and after a kill (never rewriting a finished shard), its manifest is checked by the run
that reads it, Table 4 trains from shards and says how to make them, a resume at a late step is a seek, and a
streamed resume says what it costs."""
import json
import re

import numpy as np
import pytest
import torch

from conftest import compose, script
from dyt.data import shards as S
from dyt.data import text as T
from dyt.data.sampler import ShardedSampler
from dyt.data.tokenizers import ByteTokenizer
from dyt.distributed import DistInfo
from dyt.errors import ConfigError
from dyt.tasks.language import LanguageTask
from dyt.trainer import Trainer

pretokenize = script("scripts/pretokenize.py")
SMALL = ["--part-bytes", "40000", "--shard-tokens", "15000"]  # several parts, several shards in each


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The embedded pydoc documents as a local folder of train/ and val/ .txt files."""
    root = tmp_path_factory.mktemp("texts")
    docs = T.pydoc_documents()
    for split, part in (("train", docs[:70]), ("val", docs[70:])):
        (root / split).mkdir()
        for i, d in enumerate(part):
            (root / split / f"{i:03d}.txt").write_text(d)
    return root


def meta_of(out):
    return json.loads((out / "meta.json").read_text())


def shard_bytes(out):
    return {e["file"]: (out / e["file"]).read_bytes() for entries in meta_of(out)["shards"].values() for e in entries}


def test_workers_and_a_resumed_kill_give_the_same_shards(corpus, tmp_path, monkeypatch):
    local = ["--data", "text_local", *SMALL, f"data.root={corpus}"]
    assert pretokenize.main([*local, "--out", str(tmp_path / "one"), "--workers", "1"]) == 0
    one = meta_of(tmp_path / "one")
    assert one["parts"]["train"] >= 4 and len(one["shards"]["train"]) > one["parts"]["train"]
    assert one["tokenizer"] == "bytes" and one["vocab_sha256"] and one["completed"] and one["dtype"] == "uint16"

    real, written = S.write_durably, []

    def killed_during_the_fifth_shard(path, data):
        if len(written) == 4:
            path.write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt
        written.append(path)
        real(path, data)
    monkeypatch.setattr(S, "write_durably", killed_during_the_fifth_shard)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        pretokenize.main([*local, "--out", str(cut), "--workers", "1"])
    monkeypatch.undo()
    assert not (cut / "meta.json").exists() and len(list(cut.glob("*.tmp"))) == 1
    with pytest.raises(ConfigError, match=f"^data.root={cut} holds no finished token shards .* run the same command"):
        T.build_text_datasets(compose(["model=llama_tiny", "data=text_shards", f"data.root={cut}"]).data)
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cut.glob("*.bin")}
    assert len(finished) == 4

    assert pretokenize.main([*local, "--out", str(cut), "--workers", "2"]) == 0  # the rerun, in parallel
    assert {n: (cut / n).stat().st_ino for n in finished} == {n: v[0] for n, v in finished.items()}
    assert {n: (cut / n).stat().st_mtime_ns for n in finished} == {n: v[1] for n, v in finished.items()}
    assert not list(cut.glob("*.tmp"))
    assert pretokenize.main([*local, "--out", str(tmp_path / "three"), "--workers", "3"]) == 0
    for out in (cut, tmp_path / "three"):
        assert meta_of(out)["shards"] == one["shards"] and shard_bytes(out) == shard_bytes(tmp_path / "one")
    # the same documents as reading the folder directly, in the same order
    direct_train, direct_val = T.build_text_datasets(compose(["model=llama_tiny", "data=text_local",
                                                              f"data.root={corpus}"]).data)
    train, val = S.load_shards(cut, "train"), S.load_shards(cut, "val")
    np.testing.assert_array_equal(np.concatenate(train), direct_train.shards[0])
    np.testing.assert_array_equal(np.concatenate(val), direct_val.shards[0])
    with pytest.raises(ConfigError, match="holds shards written with other settings \\(shard_tokens\\)"):
        pretokenize.main([*local, "--out", str(cut), "--shard-tokens", "999"])


def test_a_hub_stream_is_cut_by_its_data_files(tmp_path, monkeypatch, capsys):
    import datasets
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "")  # progress as off a terminal (quiet in the other tests)
    docs = [f"document {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(60)]
    monkeypatch.setattr(T, "hf_dataset", lambda cfg, split, streaming: datasets.Dataset.from_dict(
        {"text": docs}).to_iterable_dataset(num_shards=4))
    over = ["data.tokenizer=bytes", "data.vocab_size=null", "data.val_docs=5", "data.add_bos=true"]
    out = tmp_path / "hub"
    assert pretokenize.main(["--data", "text_fineweb", "--out", str(out), "--workers", "2", "--shard-tokens", "300",
                             "--max-train-tokens", "2000", *over]) == 0
    meta = meta_of(out)
    assert meta["parts"] == {"train": 4, "val": 1} and meta["tokens"]["train"] == 2000
    tok = ByteTokenizer()
    packed = lambda ds: np.concatenate([T.document_ids(tok, d, True) for d in ds])  # noqa: E731
    np.testing.assert_array_equal(np.concatenate(S.load_shards(out, "val")), packed(docs[:5]))
    np.testing.assert_array_equal(np.concatenate(S.load_shards(out, "train")), packed(docs[5:])[:2000])
    # off a terminal the progress is lines (one every 30 s, and the last one)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "tok/s" in ln]
    progress = r"^\[pretokenize\] [\d,]+/2,002,000 tok \(\d+%\) \| [\d.,e+]+ tok/s \| elapsed \dm\d\ds"
    assert lines and all(re.match(progress, ln) for ln in lines)


def test_table4_trains_from_shards_and_says_how_to_make_them(tmp_path):
    cfg = compose(["experiment=table4_7b"])
    assert cfg.data.source == "shards" and cfg.data.add_bos and cfg.data.vocab_size == 32000
    with pytest.raises(ConfigError, match=r"^data.root is not set: this run trains from pre-tokenized shards; make "
                       r"them once with `python scripts/pretokenize.py --data text_pile --out <folder> "
                       r"--max-train-tokens 2e\+11 data.add_bos=true` \(200B tokens, 400 GB as uint16; ~.* h .*"
                       r"and add data.root=<that folder>$"):
        T.build_text_datasets(cfg.data)
    with pytest.raises(ConfigError, match=f"^data.root={tmp_path} holds no finished token shards .*make them with "
                                          f"`python scripts/pretokenize.py --data text_pile --out {tmp_path} "):
        T.build_text_datasets(compose(["experiment=table4_7b", f"data.root={tmp_path}"]).data)


def test_the_manifest_must_match_the_run(corpus, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = {"<unk>": 0, "</s>": 1, "<s>": 2, **{w: i + 3 for i, w in enumerate("the a of to and is in".split())}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "words.json"))
    (tmp_path / "same.json").write_bytes((tmp_path / "words.json").read_bytes())
    out = tmp_path / "shards"
    assert pretokenize.main(["--data", "text_local", "--out", str(out), f"data.root={corpus}",
                             f"data.tokenizer={tmp_path / 'words.json'}", "--max-train-tokens", "2000"]) == 0
    shards = ["model=llama_tiny", "data=text_shards", f"data.root={out}", "data.seq_len=32"]
    T.build_text_datasets(compose([*shards, f"data.tokenizer={tmp_path / 'same.json'}"]).data)  # same vocabulary
    with pytest.raises(ConfigError, match=r"^the shards at data.root=.* were written with tokenizer '.*words.json', "
                                          r"whose vocabulary differs from data.tokenizer='bytes'"):
        T.build_text_datasets(compose([*shards, "data.tokenizer=bytes"]).data)
    with pytest.raises(ConfigError, match="packed with add_bos=False but data.add_bos=True"):
        T.build_text_datasets(compose([*shards, "data.add_bos=true"]).data)
    with pytest.raises(ConfigError, match=r"data.vocab_size=8 is smaller than the tokenizer's vocabulary \(10"):
        T.build_text_datasets(compose([*shards, "data.vocab_size=8"]).data)
    first = meta_of(out)["shards"]["train"][0]["file"]
    with open(out / first, "ab") as f:
        f.write(b"\0\0")
    size = meta_of(out)["shards"]["train"][0]["bytes"]
    with pytest.raises(ConfigError, match=f"^token shard {out / first} is {size + 2} bytes, meta.json says {size};"):
        T.build_text_datasets(compose(shards).data)


def _task(cfg, rank=0, world=1):
    return LanguageTask(cfg, DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu")))


@pytest.fixture(scope="module")
def pydoc_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("pydoc_shards")
    assert pretokenize.main(["--data", "text_pydoc", "--out", str(out), "--shard-tokens", "40000", "--workers", "1",
                             "data.add_bos=true"]) == 0
    return out


def test_a_table4_style_run_resumes_at_a_late_step_with_a_seek(pydoc_shards, tmp_path, monkeypatch):
    """Done means (issue 18): a resume at step 10^5 reads only its first batch's sequences (no tokenizing, no reads
    of what came before) and gets the tokens an uninterrupted run sees at that step, read here from the files."""
    cfg = compose(["experiment=table4_7b", "model=llama_tiny", f"data.root={pydoc_shards}", "data.tokenizer=bytes",
                   "data.vocab_size=null", "data.seq_len=32", "trainer.batch_size=8", "trainer.grad_accum=2"])
    first = Trainer(cfg, tmp_path / "run")
    first.step = 10**5
    first.save()
    reads, encodes = [], []
    get_item, encode = T.PackedSequences.__getitem__, ByteTokenizer.encode
    monkeypatch.setattr(T.PackedSequences, "__getitem__", lambda self, i: reads.append(i) or get_item(self, i))
    monkeypatch.setattr(ByteTokenizer, "encode", lambda self, text: encodes.append(1) or encode(self, text))
    resumed = Trainer(cfg, tmp_path / "run")
    assert resumed.step == 10**5 and resumed.micro_batch == 4
    batch = next(resumed._batches())
    assert len(reads) == 4 and encodes == []

    L, meta = 32, meta_of(pydoc_shards)
    sequences = [(e["file"], j) for e in meta["shards"]["train"] for j in range((e["tokens"] - 1) // L)]
    epoch, start = divmod(10**5 * 2, len(sequences) // 4)  # micro-batches consumed; micro-batches per epoch
    assert epoch > 10
    order = list(ShardedSampler(len(sequences), seed=cfg.seed, epoch=epoch))  # the uninterrupted epoch's order
    want = [np.fromfile(pydoc_shards / f, dtype=np.uint16)[j * L: j * L + L + 1]
            for f, j in (sequences[i] for i in order[start * 4: start * 4 + 4])]
    torch.testing.assert_close(batch, torch.from_numpy(np.stack(want).astype(np.int64)))


def test_ranks_read_shards_as_one_process_does(pydoc_shards):
    """Two ranks with micro-batch 2 hold the global batch one process with micro-batch 4 reads, at any position;
    validation sequences are dealt to the ranks, each once."""
    cfg = compose(["model=llama_tiny", "data=text_shards", f"data.root={pydoc_shards}", "data.seq_len=32",
                   "data.add_bos=true"])
    one, ranks = _task(cfg), [_task(cfg, r, 2) for r in (0, 1)]
    assert one.batches_per_epoch(4) == ranks[0].batches_per_epoch(2)
    whole = next(iter(one.train_loader(4, epoch=7, start_batch=1234)))
    for r, task in enumerate(ranks):
        torch.testing.assert_close(next(iter(task.train_loader(2, epoch=7, start_batch=1234))), whole[r::2])
    val = torch.cat(list(one.val_loader(4)))
    dealt = torch.cat([torch.cat(list(t.val_loader(2))) for t in ranks])
    assert len(dealt) == len(val) == len(one.datasets[1])
    assert sorted(map(tuple, dealt.tolist())) == sorted(map(tuple, val.tolist()))


def test_a_long_streamed_resume_warns_with_its_cost(monkeypatch, capsys):
    import datasets
    docs = [f"document {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(40)]
    monkeypatch.setattr(T, "hf_dataset", lambda cfg, split, streaming: datasets.Dataset.from_dict(
        {"text": docs}).to_iterable_dataset())
    monkeypatch.setattr(T, "TOKENIZE_RATE", 1.0)  # a rate that makes 300 s of re-tokenizing 300 tokens
    cfg = compose(["model=llama_tiny", "data=text_fineweb", "data.tokenizer=bytes", "data.vocab_size=null",
                   "data.seq_len=16", "data.val_docs=5", "data.shuffle_buffer=8"]).data
    next(iter(T.StreamingPacked(cfg, ByteTokenizer(), seed=0, rank=0, world=2, start=9)))  # 18 x 16 tokens
    assert capsys.readouterr().err == ""
    next(iter(T.StreamingPacked(cfg, ByteTokenizer(), seed=0, rank=0, world=2, start=10)))  # 20 x 16 tokens
    err = capsys.readouterr().err
    assert err.startswith("[dyt] warning: resuming a streamed corpus re-reads and re-tokenizes the 3.2e-07B tokens")
    assert "(~0.1 h at ~0.0M tokens/s)" in err and "pre-tokenize once with `python scripts/pretokenize.py" in err
