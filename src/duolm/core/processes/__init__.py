"""Forward processes of discrete diffusion: absorbing (masked) and uniform-state.

Both implement duolm.contracts.Process, which the losses and samplers are written against.
"""
from duolm.core.processes.absorbing import AbsorbingProcess
from duolm.core.processes.uniform import UniformProcess

__all__ = ["AbsorbingProcess", "UniformProcess"]
