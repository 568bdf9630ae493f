"""The thin training layer on Lightning: no diffusion math lives here.

(This file imports nothing heavy, so the CLI can name training's errors without loading Lightning.)
"""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message is one sentence for the user."""
