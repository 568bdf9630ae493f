"""Every model a user can point at, read and written in one place: duolm's own folders
(duolm_format), the papers' and BD3-LM's Lightning and Hugging Face checkpoints (papers), and the
one loader that tells them apart (loading.load_pretrained)."""
from duolm.checkpoints.loading import load_pretrained

__all__ = ["load_pretrained"]
