"""The thin training layer on Lightning: no diffusion math lives here.

(This file imports nothing heavy, so the CLI can name training's errors without loading Lightning.)
"""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message is one sentence for the user."""


class StoppedAtOnce(Exception):
    """A second Ctrl-C: training stopped in the middle of a step, without writing a checkpoint for it.
    Not a KeyboardInterrupt, which Lightning turns into a silent exit(1); the message is one sentence."""


def quiet_libraries() -> None:
    """Keep the console to what duolm says: Lightning's start-up notes and tips, and library
    deprecation notices about their own internals, are not for a duolm user."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401 - it sets its loggers' levels when imported; set them after

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    # RL keeps a frozen reference model (in eval mode) beside the policy, on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # RL optimises by hand; its checkpoints hold the state after the step, which is what a resume needs
    warnings.filterwarnings("ignore", message=r".*ModelCheckpoint with manual optimization.*")
    # an RL run without held-out prompts has no validation batches, on purpose
    warnings.filterwarnings("ignore", message=r".*Total length of `DataLoader` across ranks is zero.*")
