"""Overrides for a seconds-long CLI run on the CPU, shared by the end-to-end tests."""

TINY = ["model.hidden_size=32", "model.cond_dim=16", "model.n_blocks=1", "model.n_heads=2", "model.length=16",
        "loader.global_batch_size=8", "optim.warmup_steps=0", "optim.lr=1e-3", "trainer.val_check_interval=1000",
        "trainer.enable_progress_bar=false", "logging.csv=false", "trainer.limit_val_batches=1",
        "training.ema=0.9", "sampling.num_samples=2", "sampling.steps=4", "eval.max_batches=1"]


def write_corpus(folder):
    """Twelve small text documents: enough for a train and a validation split."""
    folder.mkdir()
    for i in range(12):
        (folder / f"{i}.txt").write_text(" ".join(f"word{j % 7} text{i}" for j in range(60)))
    return folder
