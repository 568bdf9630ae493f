"""The GPU readiness script's CPU smoke mode: the real training layer, the store and sampling, at toy size."""
import json

import pytest


def test_gpu_benchmark_smoke_mode_runs_the_real_path_on_a_cpu(tmp_path):
    from benchmarks.gpu import main

    out = main(["--smoke", "--out", str(tmp_path / "gpu.json")])
    train = out["train"][0]
    assert out["device"] == "cpu" and train["steps"] == 3 and train["tokens_per_second"] > 0
    assert train["median_step_seconds"] > 0 and train["model_tflops"] > 0
    assert out["sample"]["steps"] == 8 and out["sample"]["tokens_per_second"] > 0
    unet = out["unet"]
    assert unet["train_images_per_second"] > 0 and unet["sample_images_per_second"] > 0 and unet["loss"] > 0
    full, lora = out["adapted"]
    assert full["lora_r"] == 0 and lora["lora_r"] == 16 and full["tokens_per_second"] > 0 and lora["tokens_per_second"] > 0
    long = out["long_generation"]
    assert {r["name"] for r in long["rows"]} >= {"AR, KV cache", "mdlm, blocks of 16, 8 steps, cache"}
    assert all(r["tokens_per_second"] > 0 for r in long["rows"]) and long["blocks time per token over AR at 8 steps"] > 0
    dg = out["diffusion_gemma"]  # duolm's EB-sampler and transformers' generate() draw the same tokens
    assert dg["identical"] and dg["duolm_tokens_per_s"] > 0 and dg["transformers_tokens_per_s"] > 0
    assert (tmp_path / "gpu.json").exists()


def test_gpu_benchmark_refuses_to_run_without_cuda_unless_smoke():
    import torch

    from benchmarks.gpu import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="needs CUDA"):
        main([])


def test_image_benchmark_smoke_mode_trains_samples_and_scores_both_models(tmp_path):
    """benchmarks/images.py --smoke: Duo and MDLM (the papers' gray-level mask and the mask embedding)
    trained through the training layer on digits, sampled class-conditionally by ancestral and every
    Psi setting, scored, tabled, plotted; --resume reuses what a killed run finished."""
    import json

    from benchmarks.images import MODELS, PSI_MODES, main

    out = main(["--smoke", "--out", str(tmp_path / "res"), "--work", str(tmp_path / "work")])
    assert set(out["models"]) == set(MODELS) and all(m["steps"] == 2 for m in out["models"].values())
    samplers = {(r["algo"], r["sampler"]) for r in out["results"]}
    assert samplers == {(a, s) for a in MODELS for s in ("ancestral", *PSI_MODES)}
    from duolm.checkpoints.loading import from_pretrained

    embedded = from_pretrained(out["models"]["mdlm_mask_embedding"]["model_dir"])
    assert embedded.config["model"]["mask_input"] == "embedding" and hasattr(embedded.backbone, "mask_embedding")
    again = main(["--smoke", "--resume", "--models", "mdlm", "--out", str(tmp_path / "res2"), "--work",
                  str(tmp_path / "work")])
    assert again["models"]["mdlm"] == out["models"]["mdlm"]  # reused, not retrained
    assert again["results"] == [r for r in out["results"] if r["algo"] == "mdlm"]
    assert all(r["classifier_fid"] > 0 and 0 <= r["classifier_accuracy"] <= 1 for r in out["results"])
    assert out["real_validation_images"]["classifier_accuracy"] > 0.5  # the classifier works on real digits
    for name in ("images.json", "images.md", "images.png"):
        assert (tmp_path / "res" / name).exists()
    assert json.loads((tmp_path / "res" / "images.json").read_text())["mode"] == "smoke"
    assert list((tmp_path / "res").glob("*.png"))[0].stat().st_size > 0


def test_block_quality_smoke_mode_trains_samples_and_scores_every_setting(tmp_path):
    from benchmarks.block_quality import main

    out = main(["--smoke", "--out", str(tmp_path)])
    models = {r["model"] for r in out["samples"]}
    assert models == {"mdlm, blocks of 16", "mdlm, whole sequence", "duo_base, blocks of 16", "duo_base, whole sequence"}
    for r in out["samples"]:  # equal calls: the budget, whatever the block size
        assert r["calls_per_token"] == pytest.approx(r["budget"] / 64) and r["nll"] > 0
    assert {r["cache"] for r in out["approximate_cache"]} == {"none", "prefix", "dual"}
    assert (tmp_path / "block_quality.md").exists()


@pytest.mark.slow
def test_adaptation_benchmark_smoke_mode_runs_adaptation_baseline_and_sft(tmp_path):
    """benchmarks/adaptation.py --smoke on a 1-layer Llama in SmolLM2's vocabulary: a pretrained
    run, its from-scratch baseline and the SFT run, each in its own process, into one JSON."""
    from benchmarks.adaptation import main

    out = main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "a.json"),
                "--only", "MDLM, pretrained;MDLM, random init;SFT"])
    assert [r["name"] for r in out["runs"]] == ["MDLM, pretrained", "MDLM, random init"]
    for r in out["runs"]:
        assert [v["step"] for v in r["validation"]] == [0, 1, 2] and all(v["nelbo"] > 0 for v in r["validation"])
        assert set(r["samples"]) == {"8_steps", "64_steps"} and r["samples"]["8_steps"]["judge_ppl"] > 1
    sft = out["sft"]
    assert sft["response_nelbo_before"] > 0 and sft["response_nelbo_after"] > 0 and len(sft["replies"]) == 3
    assert "| MDLM, random init |" in out["markdown"]


@pytest.mark.slow
def test_reasoning_benchmark_quick_mode_is_resumable(tmp_path):
    """The planning experiment's quick mode: SFT, accuracies and RL for each method; a rerun finds every
    stage in its JSON and redoes none."""
    from benchmarks.reasoning import main

    out, work = tmp_path / "r.json", tmp_path / "work"
    assert main(["--quick", "--tasks", "sudoku4", "--out", str(out), "--work", str(work)]) == 0
    first = json.loads(out.read_text())
    assert set(first["rows"]) == {"sudoku4/ar", "sudoku4/mdlm", "sudoku4/duo"}
    for row in first["rows"].values():
        for stage in ("sft", "rl"):
            accs = row[stage]["accuracy"]
            assert accs and all(0 <= a["accuracy"] <= 1 and a["n"] == 16 for a in accs)
        assert len(row["rl"]["reward_curve"]) == 2
    assert {a["predictor"] for a in first["rows"]["sudoku4/duo"]["sft"]["accuracy"]} == {"ancestral", "confidence"}
    assert main(["--quick", "--tasks", "sudoku4", "--out", str(out), "--work", str(work)]) == 0
    again = json.loads(out.read_text())
    assert again["rows"] == first["rows"] and again["minutes_this_run"] < 0.5
