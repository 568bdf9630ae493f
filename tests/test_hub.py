"""The Hub without a network: the model card, `duolm push` against a stub upload, and loading by hub id
from a local snapshot."""
import hashlib
import json

import pytest
from tiny_run import TINY

import duolm
from duolm.app import hub
from duolm.app.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_module):
    """A `duolm train` model folder (3 steps): the weights, config.json and the metrics a card reads."""
    tmp = tmp_path_factory.mktemp("hub")
    args = TINY + ["data=local", f"data.path={corpus_module}", f"data.cache_dir={tmp / 'cache'}", f"run.dir={tmp / 'run'}"]
    assert main(["train", "trainer.max_steps=3", *args]) == 0
    return tmp / "run" / "model"


@pytest.fixture(scope="module")
def corpus_module(tmp_path_factory):
    from tiny_run import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs")


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_training_leaves_what_a_model_card_reports(trained):
    metrics = json.loads((trained / hub.METRICS_FILE).read_text())
    assert metrics["train"]["steps"] == 3 and metrics["train"]["train_seconds"] > 0
    assert metrics["validation"]["nll"] > 0 and metrics["sampler"]["steps"] == 4 and metrics["data"] == "local"


def test_push_uploads_the_model_with_its_card_and_leaves_the_folder_alone(trained, monkeypatch, capsys):
    before = _digest(trained)
    calls = []

    def upload(folder, repo_id, *, private, message):
        calls.append({"files": sorted(p.name for p in folder.iterdir()), "repo": repo_id, "private": private,
                      "card": (folder / "README.md").read_text(), "message": message})
        return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(hub, "_upload", upload)
    assert main(["push", f"eval.checkpoint_path={trained}", "hub.repo=me/duo-tiny", "hub.private=true"]) == 0
    assert "pushed" in capsys.readouterr().out
    (call,) = calls
    assert call["repo"] == "me/duo-tiny" and call["private"] is True
    assert call["files"] == ["README.md", "config.json", "metrics.json", "model.safetensors"]
    card = call["card"]
    for needle in ("algo | duo", "data | local", "M parameters", "training steps | 3", "training time |",
                   "validation NELBO |", "bits/char", "ancestral, 4 steps", 'duolm.load("me/duo-tiny")',
                   "eval.checkpoint_path=me/duo-tiny"):
        assert needle in card, needle
    assert _digest(trained) == before  # staged elsewhere: the user's folder is untouched


def test_a_failed_upload_and_a_bad_repository_get_one_sentence(trained, monkeypatch, capsys):
    def offline(folder, repo_id, **_):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(hub, "_upload", offline)
    assert main(["push", f"eval.checkpoint_path={trained}", "hub.repo=me/duo-tiny"]) == 1
    err = capsys.readouterr().err
    assert "could not push to the Hugging Face Hub repository me/duo-tiny (ConnectionError" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["push", f"eval.checkpoint_path={trained}", "hub.repo=not a repo"]) == 1
    assert "hub.repo must be a Hugging Face repository id" in capsys.readouterr().err
    assert main(["push", f"eval.checkpoint_path={trained}"]) == 1
    assert "needs hub.repo=<owner/name>" in capsys.readouterr().err


def test_a_hub_id_loads_from_its_snapshot_and_offline_gets_one_sentence(trained, tmp_path, monkeypatch):
    snapshot = hub.stage(trained, "me/duo-tiny", tmp_path)  # what the repository holds after a push
    import huggingface_hub

    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append(repo_id)
        return str(snapshot)

    from duolm.io import hub_access

    monkeypatch.setattr(hub_access, "_reachable", True)  # the Hub answers; the download is the stand-in
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    m = duolm.load("me/duo-tiny", device="cpu")
    assert asked == ["me/duo-tiny"] and len(m.generate(n=1, steps=2).texts) == 1

    def unreachable(repo_id, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(FileNotFoundError, match="neither a local path nor a reachable Hugging Face Hub model") as err:
        duolm.load("me/duo-tiny")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(hub_access, "_reachable", False)  # no network: one sentence that says so
    with pytest.raises(hub_access.HubUnreachable, match="Hub could not be reached .* the model me/duo-tiny") as err:
        duolm.load("me/duo-tiny")
    assert "\n" not in str(err.value) and "pass its folder" in str(err.value)


def test_a_card_names_the_base_model_and_its_licence():
    from duolm.app.hub import model_card

    config = {"algo": {"name": "mdlm", "T": 0, "time_conditioning": False}, "length": 128,
              "noise": {"type": "log-linear", "eps": 1e-3}, "tokenizer": {"type": "hf", "name": "smollm2"},
              "model": {"type": "hf", "pretrained": "smollm2", "hf_config": {"model_type": "llama"}, "vocab_size": 49153,
                        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}}}
    card = model_card(config, None, repo_id="me/smol-mdlm", parameters=139_400_000)
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "license: apache-2.0" in card
    assert "LoRA r = 16 adapters: loading needs the base" in card
    other = model_card({**config, "model": {**config["model"], "pretrained": "org/some-lm", "lora": None}}, None,
                       repo_id="me/x", parameters=1)
    assert "base_model: org/some-lm" in other and "license:" not in other and "the base model's (see its card)" in other
