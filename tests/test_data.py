import json

import pytest
import torch

from duolm.data import corpora
from duolm.data.pipeline import build_splits
from duolm.data.sampler import ResumableSampler
from duolm.data.statistics import unigram_entropy_bits
from duolm.data.store import SplitWriter, open_store
from duolm.data.tokenizers import CharTokenizer, load_tokenizer


def test_char_tokenizer_is_text8_style_and_round_trips():
    tok = CharTokenizer()
    assert tok.vocab_size == 28 and tok.eos_id == 27
    assert tok.normalize("Hello,  World!\n42 times") == "hello world times"
    assert tok.decode(tok.encode("Hello, World")) == "hello world"


def test_gpt2_tokenizer_loads_offline_from_the_package():
    tok = load_tokenizer("gpt2")
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    ids = tok.encode("Hello world, this is GPT-2.")
    assert ids[:2] == [15496, 995]  # the published GPT-2 ids of "Hello" and " world"
    assert tok.decode(ids) == "Hello world, this is GPT-2."


def store_blocks(tmp_path, docs, length, mode, bos, eos, vocab_size, pad=None):
    """(ids, valid) of every block of a one-split store written from `docs`."""
    import json

    w = SplitWriter(tmp_path / "s" / "train", mode=mode, length=length, bos=bos, eos=eos, vocab_size=vocab_size)
    w.add(docs)
    meta = {"version": 2, "key": "k", "splits": {"train": w.close()}}
    (tmp_path / "s" / "meta.json").write_text(json.dumps(meta))
    split = open_store(tmp_path / "s", key="k", mode=mode, length=length, bos=bos, eos=eos, pad=pad)["train"]
    return split.ids, split.valid


def test_wrap_frames_every_block_with_bos_and_eos(tmp_path):
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    x, v = store_blocks(tmp_path, docs, length=6, mode="wrap", bos=0, eos=10, vocab_size=11)
    # stream: 0 1 2 3 10 0 4 5 10 0 6 7 8 9 10 -> chunks of 4, framed
    assert x.tolist() == [[0, 0, 1, 2, 3, 10], [0, 10, 0, 4, 5, 10], [0, 10, 0, 6, 7, 10]]
    assert v.all()


def test_pad_and_pack_blocks(tmp_path):
    docs = [[1, 2], [3, 4, 5, 6, 7, 8], [9]]
    x, v = store_blocks(tmp_path / "pad", docs, length=5, mode="pad", bos=0, eos=10, pad=11, vocab_size=12)
    assert x.tolist() == [[0, 1, 2, 10, 11], [0, 3, 4, 5, 10], [0, 9, 10, 11, 11]]
    assert v.sum(-1).tolist() == [4, 5, 3]
    x, v = store_blocks(tmp_path / "pack", [[1, 2], [3], [4, 5, 6]], length=8, mode="pack", bos=0, eos=10, pad=11,
                        vocab_size=12)
    assert x.tolist() == [[0, 1, 2, 10, 0, 3, 10, 11], [0, 4, 5, 6, 10, 11, 11, 11]]


def test_bad_data_gets_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        store_blocks(tmp_path / "a", [[1, 99]], length=4, mode="wrap", bos=0, eos=1, vocab_size=10)
    with pytest.raises(ValueError, match="cannot fill one block"):
        store_blocks(tmp_path / "b", [[1, 2]], length=64, mode="wrap", bos=0, eos=1, vocab_size=10)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        corpora.read_local(empty)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        corpora.read_local(tmp_path / "blank.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        corpora.read_local(tmp_path / "bad.jsonl")
    (tmp_path / "bad.ids").write_text("1 2 3\n4 x 6\n")
    with pytest.raises(ValueError, match="bad.ids:2"):
        corpora.read_local(tmp_path / "bad.ids")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpora.read_local(tmp_path / "nope")


def _write_corpus(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(20):
        (folder / f"{i:02d}.txt").write_text(f"document number {i} says hello to the world. " * 5)
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps({"text": f"line {i} of text " * 4})
                                                    for i in range(20)))
    (tmp_path / "seqs.ids").write_text("\n".join(" ".join(str((i + j) % 20) for j in range(30)) for i in range(20)))
    return folder


@pytest.mark.parametrize("fmt", ["folder", "jsonl", "ids"])
def test_local_corpora_in_all_formats_and_the_cache(tmp_path, fmt):
    folder = _write_corpus(tmp_path)
    path = {"folder": folder, "jsonl": tmp_path / "texts.jsonl", "ids": tmp_path / "seqs.ids"}[fmt]
    tok = CharTokenizer()
    cache = tmp_path / "cache"
    splits = build_splits("local", tok, 16, "wrap", str(cache), path=str(path), valid_fraction=0.1)
    assert splits["train"].ids.shape[1] == 16 and len(splits["valid"]) > 0
    assert (splits["train"].ids[:, 0] == tok.bos_id).all() and (splits["train"].ids[:, -1] == tok.eos_id).all()
    assert len([d for d in cache.iterdir() if d.is_dir() and not d.name.startswith(".")]) == 1  # one store
    again = build_splits("local", tok, 16, "wrap", str(cache), path=str(path), valid_fraction=0.1)
    assert torch.equal(again["train"].ids, splits["train"].ids)


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    (tmp_path / "big.ids").write_text("1 2 3 400\n")
    with pytest.raises(ValueError, match="token id 400, outside the vocabulary"):
        build_splits("local", CharTokenizer(), 4, "wrap", None, path=str(tmp_path / "big.ids"))


def test_builtin_corpus_is_split_by_document_and_beats_nothing_yet(tmp_path):
    docs = corpora.builtin_bigtxt()
    assert len(docs["train"]) > 20 * len(docs["valid"]) * 0.9 and len(docs["valid"]) > 10
    assert not set(docs["train"]) & set(docs["valid"])
    tok = CharTokenizer()
    bits = unigram_entropy_bits(build_splits("bigtxt", tok, 128, "wrap", str(tmp_path))["valid"], tok.vocab_size)
    assert 3.9 < bits < 4.3  # English letters and spaces


def test_resumable_sampler_restarts_where_it_stopped_and_shards():
    s = ResumableSampler(10, seed=3)
    it = iter(s)
    first = [next(it) for _ in range(25)]
    assert sorted(first[:10]) == list(range(10))  # an epoch is a permutation
    s2 = ResumableSampler(10, seed=3)
    s2.start = 7
    it2 = iter(s2)
    assert [next(it2) for _ in range(18)] == first[7:]
    shards = [ResumableSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    its = [iter(sh) for sh in shards]
    inter = [next(its[j % 2]) for j in range(20)]
    assert inter == first[:20]


@pytest.mark.parametrize("name,fn", [("openwebtext", corpora.hf_openwebtext), ("lm1b", corpora.hf_lm1b),
                                     ("wikitext103", corpora.hf_wikitext103)])
def test_hf_loaders_on_local_files_in_the_same_format(tmp_path, name, fn):
    if name == "openwebtext":
        f = tmp_path / "owt.jsonl"
        f.write_text("\n".join(json.dumps({"text": f"web page {i}"}) for i in range(30)))
        out = fn(data_files=str(f), holdout=5)
        assert len(out["valid"]) == 5 and out["valid"][-1] == "web page 29" and len(out["train"]) == 25
    elif name == "lm1b":
        for split in ("train", "test"):
            (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": f"{split} sentence {i} ."})
                                                               for i in range(8)))
        out = fn(data_files={"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")})
        assert out["valid"][0] == "test sentence 0."  # detokenized, as the papers do
    else:
        rows = [" = Alpha = \n", " text a \n", " = = Section = = \n", " more a \n", " = Beta = \n", " text b \n"]
        for split in ("train", "validation"):
            (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": r}) for r in rows))
        out = fn(data_files={"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "validation.jsonl")})
        assert len(out["train"]) == 2 and "Section" in out["train"][0] and out["train"][1].startswith("= Beta")  # detokenized


def test_text8_loader_splits_90_5_5(tmp_path):
    f = tmp_path / "text8"
    f.write_text("abcdefghij" * 1000)
    out = corpora.hf_text8(data_files=str(f))
    assert sum(map(len, out["train"])) == 9000 and sum(map(len, out["valid"])) == 500


def test_each_hub_dataset_is_named_in_one_table():
    """The hub ids, configs and splits of the text sources live in duolm.data.sources only: no
    other library or application file names them, so a reader cannot drift from its row."""
    from pathlib import Path

    import duolm
    from duolm.data.sources import STREAMS, TEXT_SOURCES, TRAINING_SETS, ZERO_SHOT

    named = {s.hub_id for s in TEXT_SOURCES.values() if s.hub_id not in TEXT_SOURCES} | \
        {s.config for s in TEXT_SOURCES.values() if s.config and s.config != "default"}
    root = Path(duolm.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "sources.py":
            continue
        text = path.read_text()
        assert not [n for n in named if f'"{n}"' in text], path
    assert set(TRAINING_SETS) | set(STREAMS) | set(ZERO_SHOT) == set(TEXT_SOURCES)
    assert not set(TRAINING_SETS) & set(ZERO_SHOT)


def test_data_files_from_the_command_line_read_local_files_of_a_hub_set(tmp_path):
    """`data.data_files={train: a.jsonl, validation: b.jsonl}` on the command line is an omegaconf
    mapping; HF datasets took it for a list of its keys ('Unable to find .../train')."""
    from duolm.app.config import compose_components
    from duolm.app.data_settings import load_data

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"the cat sat on mat {i}."}) + "\n" for i in range(40)))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": f"a dog ran {i}."}) + "\n" for i in range(5)))
    cfg, _ = compose_components(["data=lm1b", "data.tokenizer=char", f"data.cache_dir={tmp_path / 'cache'}",
                                 f"data.data_files={{train: {tmp_path / 'a.jsonl'}, validation: {tmp_path / 'b.jsonl'}}}",
                                 "model.length=32"])
    _, splits = load_data(cfg)
    assert splits["train"].meta["n_docs"] == 40 and splits["valid"].meta["n_docs"] == 5
