"""The GPU readiness script's CPU smoke mode: the real training layer, the store and sampling, at toy size."""
import pytest


def test_gpu_benchmark_smoke_mode_runs_the_real_path_on_a_cpu(tmp_path):
    from benchmarks.gpu import main

    out = main(["--smoke", "--out", str(tmp_path / "gpu.json")])
    train = out["train"][0]
    assert out["device"] == "cpu" and train["steps"] == 3 and train["tokens_per_second"] > 0
    assert train["median_step_seconds"] > 0 and train["model_tflops"] > 0
    assert out["sample"]["steps"] == 8 and out["sample"]["tokens_per_second"] > 0
    assert (tmp_path / "gpu.json").exists()


def test_gpu_benchmark_refuses_to_run_without_cuda_unless_smoke():
    import torch

    from benchmarks.gpu import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="needs CUDA"):
        main([])
