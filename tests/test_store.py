"""The token store gives exactly the blocks of the in-memory builder it replaced, in all three
modes, on the built-in corpus and on local corpora, with one or two tokenizer processes; a
damaged store is named and rebuilt; a failed build leaves nothing behind."""
import json

import in_memory_blocks as oracle
import numpy as np
import pytest
import torch

from duolm.app.fields import config_message
from duolm.data.pipeline import build_splits, load_documents
from duolm.data.tokenizers import CharTokenizer, load_tokenizer


def in_memory(source, tok, length, mode, **kwargs):
    docs, are_ids = load_documents(source, **kwargs)
    out = {}
    for split, items in docs.items():
        ids = list(items) if are_ids else [tok.encode(t) for t in items]
        if mode == "wrap":
            out[split] = oracle.wrap_blocks(ids, length, tok.bos_id, tok.eos_id, tok.vocab_size)
        elif mode == "pad":
            out[split] = oracle.pad_blocks(ids, length, tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size)
        else:
            out[split] = oracle.pack_blocks(ids, length, tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size)
    return out


def assert_same_blocks(store, memory):
    assert set(store) == set(memory)
    for split, (ids, valid) in memory.items():
        s = store[split]
        assert len(s) == ids.shape[0], split
        torch.testing.assert_close(s.ids, ids, rtol=0, atol=0)
        torch.testing.assert_close(s.valid, valid, rtol=0, atol=0)
        i = len(s) // 2
        got = s.block(i)
        assert torch.equal(got[0], ids[i]) and torch.equal(got[1], valid[i])


@pytest.mark.parametrize("mode", ["wrap", "pad", "pack"])
def test_the_builtin_corpus_gives_the_in_memory_blocks(tmp_path, mode):
    tok = CharTokenizer()
    store = build_splits("bigtxt", tok, 64, mode, str(tmp_path), num_proc=2)
    assert_same_blocks(store, in_memory("bigtxt", tok, 64, mode))


def _local_corpora(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "the", "of", "dog", "runs", ",", "."]
    for i in range(40):
        n = int(rng.integers(0, 60))  # some documents are empty, some short, some long
        (folder / f"{i:03d}.txt").write_text(" ".join(rng.choice(words, n)))
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words, int(k)))})
                                                    for k in rng.integers(1, 50, 50)))
    (tmp_path / "book.txt").write_text("\n\n".join(" ".join(rng.choice(words, int(k)))
                                                   for k in rng.integers(0, 80, 30)) + "\n\n\n trailing")
    (tmp_path / "seqs.ids").write_text("\n".join(" ".join(str(x) for x in rng.integers(0, 27, int(k)))
                                                 for k in rng.integers(1, 40, 30)))
    return {"dir": folder, "jsonl": tmp_path / "texts.jsonl", "text_file": tmp_path / "book.txt",
            "ids": tmp_path / "seqs.ids"}


@pytest.mark.parametrize("mode", ["wrap", "pad", "pack"])
@pytest.mark.parametrize("fmt", ["dir", "jsonl", "text_file", "ids"])
def test_local_corpora_give_the_in_memory_blocks(tmp_path, mode, fmt):
    path = _local_corpora(tmp_path)[fmt]
    tok = CharTokenizer()
    for num_proc in (1, 2):
        store = build_splits("local", tok, 16, mode, str(tmp_path / f"cache{num_proc}"), num_proc=num_proc,
                             path=str(path), valid_fraction=0.1)
        assert_same_blocks(store, in_memory("local", tok, 16, mode, path=str(path), valid_fraction=0.1))


def test_gpt2_store_is_two_bytes_per_token_and_matches(tmp_path):
    tok = load_tokenizer("gpt2")
    path = _local_corpora(tmp_path)["jsonl"]
    store = build_splits("local", tok, 32, "wrap", str(tmp_path / "c"), num_proc=2, path=str(path))
    assert_same_blocks(store, in_memory("local", tok, 32, "wrap", path=str(path)))
    train = store["train"]
    assert train.meta["dtype"] == "uint16"
    assert (train.directory / "tokens.bin").stat().st_size == 2 * train.meta["n_tokens"]


def test_a_damaged_store_is_named_and_rebuilt(tmp_path, capsys):
    tok = CharTokenizer()
    first = build_splits("bigtxt", tok, 64, "wrap", str(tmp_path))
    expected = first["valid"].ids
    tokens = first["train"].directory / "tokens.bin"
    with open(tokens, "r+b") as f:
        f.truncate(tokens.stat().st_size // 2)
    again = build_splits("bigtxt", tok, 64, "wrap", str(tmp_path))
    err = capsys.readouterr().err
    assert "tokens.bin" in err and "rebuilding it" in err and "\n" == err[-1] and err.count("\n") == 1
    assert torch.equal(again["valid"].ids, expected) and len(again["train"]) == len(first["train"])


def test_a_failed_build_leaves_nothing_that_is_taken_for_a_store(tmp_path, monkeypatch):
    from duolm.data import store as store_mod

    tok = CharTokenizer()
    real = store_mod.SplitWriter.add_flat
    calls = {"n": 0}

    def dying(self, flat, lengths):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a killed build
        return real(self, flat, lengths)

    monkeypatch.setattr(store_mod.SplitWriter, "add_flat", dying)
    with pytest.raises(KeyboardInterrupt):
        build_splits("bigtxt", tok, 64, "wrap", str(tmp_path))
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == []  # no store, no temporary folder
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(store_mod.SplitWriter, "add_flat", real)
    assert len(build_splits("bigtxt", tok, 64, "wrap", str(tmp_path))["train"]) > 0


def test_a_store_for_another_tokenizer_or_length_is_never_reused(tmp_path):
    tok = CharTokenizer()
    a = build_splits("bigtxt", tok, 64, "wrap", str(tmp_path))
    b = build_splits("bigtxt", tok, 32, "wrap", str(tmp_path))
    c = build_splits("bigtxt", CharTokenizer("abcdefghijklmnopqrstuvwxyz ."), 64, "wrap", str(tmp_path))
    assert len({a["train"].directory.parent, b["train"].directory.parent, c["train"].directory.parent}) == 3
    assert b["train"].ids.shape[1] == 32


def test_splits_pickle_without_their_memory_maps(tmp_path):
    import pickle

    split = build_splits("bigtxt", CharTokenizer(), 64, "wrap", str(tmp_path))["valid"]
    split.block(0)  # opens the maps
    blob = pickle.dumps(split)
    assert len(blob) < 10_000  # the maps are reopened in the receiving process, not copied
    assert torch.equal(pickle.loads(blob).block(3)[0], split.block(3)[0])


def test_a_full_disk_gets_one_sentence_and_leaves_no_partial_store(tmp_path, monkeypatch):
    import errno

    from duolm.data import store as store_mod

    def full(self, flat, lengths):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.SplitWriter, "add_flat", full)
    with pytest.raises(ValueError) as err:
        build_splits("bigtxt", CharTokenizer(), 64, "wrap", str(tmp_path))
    msg = config_message(err.value)  # the sentence a user of the command reads
    assert msg.startswith("data.cache_dir: cannot write the token store") and "No space left" in msg
    assert "\n" not in msg and [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_data_command_builds_the_store_once(tmp_path, corpus, capsys):
    from duolm.app.cli import main

    args = ["data", "data=local", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'c'}", "model.length=16"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["splits"]["train"]["blocks"] > 0 and first["splits"]["train"]["dtype"] == "uint16"
    assert main(args) == 0  # maps the same store
    assert json.loads(capsys.readouterr().out)["store"] == first["store"]
