"""Streaming: the blocks are the store's wrap blocks of the same documents, ranks take disjoint
documents, a stream resumes exactly from its saved position, and a CLI run resumes exactly."""
import itertools
import json

import pytest
import torch

from duolm.data.pipeline import build_splits, stream_splits
from duolm.data.streaming import StreamingBlocks, stream_texts
from duolm.data.tokenizers import CharTokenizer

TEXTS = [f"document {i} " + " ".join(["word", "alpha", "beta"][j % 3] for j in range(i * 7 % 40)) for i in range(60)]


def take(stream, n):
    return [ids for ids, _ in itertools.islice(iter(stream), n)]


def test_stream_blocks_are_the_stores_wrap_blocks(tmp_path):
    tok = CharTokenizer()
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    store = build_splits("local", tok, 16, "wrap", str(tmp_path / "c"), num_proc=1,
                         path=str(tmp_path / "d.jsonl"), valid_fraction=0.5)
    # the store's train split is every document but every 2nd; stream exactly those
    train_texts = [t for i, t in enumerate(TEXTS) if i % 2 == 0]
    stream = StreamingBlocks(lambda epoch: iter(train_texts), tok, 16, num_proc=2)
    n = len(store["train"])
    got = torch.stack(take(stream, n))
    assert torch.equal(got, store["train"].ids)
    nxt = take(stream, n + 3)[n:]  # the stream goes on into its next epoch
    assert all(x[0] == tok.bos_id and x[-1] == tok.eos_id for x in nxt)


def test_ranks_take_disjoint_documents_whose_union_is_the_stream():
    tok = CharTokenizer()
    seen = {}
    for rank in range(2):
        s = StreamingBlocks(lambda epoch: iter(TEXTS), tok, 16, rank=rank, world=2)
        seen[rank] = {i for i, _ in itertools.islice(s._documents(0, 0), 30)}
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(60))


@pytest.mark.parametrize("consumed", [0, 1, 7, 23])
def test_a_stream_resumes_exactly_from_its_position(consumed):
    tok = CharTokenizer()

    def texts(epoch):
        return iter(TEXTS if epoch % 2 == 0 else TEXTS[::-1])  # epochs differ, as a shuffled stream's do

    full = StreamingBlocks(texts, tok, 16, rank=1, world=2)
    blocks = take(full, 60)  # past the end of the first epoch for this rank
    resumed = StreamingBlocks(texts, tok, 16, rank=1, world=2, start=full.position(consumed))
    again = take(resumed, 60 - consumed)
    assert all(torch.equal(a, b) for a, b in zip(blocks[consumed:], again))


def test_hf_streaming_path_on_local_files_and_held_out_validation(tmp_path):
    f = tmp_path / "owt.jsonl"
    f.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    tok = CharTokenizer()
    texts = stream_texts("openwebtext", data_files=str(f))
    assert list(texts(0)) == TEXTS
    shuffled = stream_texts("openwebtext", data_files=str(f), seed=3, shuffle_buffer=16)
    assert list(shuffled(0)) == list(shuffled(0)) != TEXTS and sorted(shuffled(0)) == sorted(TEXTS)
    assert list(shuffled(1)) != list(shuffled(0))  # a new order every epoch
    splits = stream_splits("openwebtext", tok, 16, str(tmp_path / "c"), 1, valid_docs=10, data_files=str(f))
    valid = store_texts = build_splits("local", tok, 16, "wrap", str(tmp_path / "c2"), num_proc=1,
                                       path=str(_jsonl(tmp_path / "v.jsonl", TEXTS[:10])),
                                       valid_path=str(_jsonl(tmp_path / "v2.jsonl", TEXTS[:10])))["valid"]
    assert torch.equal(splits["valid"].ids, valid.ids) and store_texts is valid
    train = stream_texts("openwebtext", data_files=str(f), seed=3, shuffle_buffer=16, skip=10)
    for epoch in range(3):  # the held-out documents never reach training, whatever the epoch's order
        assert sorted(train(epoch)) == sorted(TEXTS[10:])
    first = next(iter(splits["train"].blocks_for(0, 1)))[0]
    assert first.shape == (16,) and first[0] == tok.bos_id


def _jsonl(path, texts):
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    return path


def test_an_empty_stream_gets_one_sentence(tmp_path):
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="the stream yielded no text for rank 0 of 1"):
        take(StreamingBlocks(lambda epoch: iter([]), tok, 16), 1)


@pytest.mark.slow
def test_a_streaming_run_resumes_where_the_uninterrupted_one_ends(tmp_path):
    from safetensors.torch import load_file
    from tiny_run import TINY

    from duolm.app.cli import main

    f = _jsonl(tmp_path / "owt.jsonl", TEXTS * 3)
    common = [*TINY, "algo=ar", "data=openwebtext-streaming", f"data.data_files={f}", "data.valid_docs=10",
              "data.shuffle_buffer=8", "data.num_proc=1", "run.checkpoint_every=1", f"data.cache_dir={tmp_path / 'c'}"]
    assert main(["train", *common, f"run.dir={tmp_path / 'a'}", "trainer.max_steps=6"]) == 0
    assert main(["train", *common, f"run.dir={tmp_path / 'b'}", "trainer.max_steps=3"]) == 0
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(ckpt["stream_positions"]) == 1 and ckpt["stream_positions"][0] != [0, 0, 0]
    assert main(["train", *common, f"run.dir={tmp_path / 'b'}", "trainer.max_steps=6"]) == 0
    a, b = (load_file(tmp_path / r / "model" / "model.safetensors") for r in "ab")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
